//! The standard health service, `grpc.health.v1.Health` (`doc/health-checking.md`), and the
//! client side of health checking (gRFC A17).
//!
//! A server adds [`HealthServer`] and sets each service's status through its
//! [`HealthReporter`]; `Check` answers with the status now, `Watch` streams it and every
//! change, `List` (gRFC A90) gives every service's. On shutdown, [`HealthReporter::shutdown`] turns every service NOT_SERVING so that
//! clients move away before connections close.
//!
//! An application asks a server itself with a [`HealthClient`].
//!
//! A channel built with
//! [`health_check_service_name`](crate::client::ChannelBuilder::health_check_service_name)
//! watches that service on every connection whose policy asks for it (`round_robin`,
//! `weighted_round_robin`): the subchannel counts as READY only while the backend says
//! SERVING. A backend without the health service (`UNIMPLEMENTED`) is taken as healthy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    task::{Poll, Waker},
};

use crate::{
    server::{ServerCall, Service},
    ProstCodec, Response, ResponseStream, Status,
};

mod client;

pub use client::HealthClient;
pub(crate) use client::{next_health, Health};

/// The health service's name.
pub const SERVICE_NAME: &str = "grpc.health.v1.Health";

/// The `Watch` method's path.
pub(crate) const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// The `Check` method's path.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// The `List` method's path (gRFC A90).
const LIST_PATH: &str = "/grpc.health.v1.Health/List";

/// The most services `List` answers with; more is `RESOURCE_EXHAUSTED` (gRFC A90).
pub const MAX_LISTED_SERVICES: usize = 100;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about; empty for the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// A [`ServingStatus`].
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthListRequest` (gRFC A90): no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthListRequest {}

/// `grpc.health.v1.HealthListResponse` (gRFC A90).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthListResponse {
    /// Every registered service (`""` for the server as a whole) and its status.
    #[prost(map = "string, message", tag = "1")]
    pub statuses: HashMap<String, HealthCheckResponse>,
}

/// A service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    /// Not known.
    Unknown = 0,
    /// Serving requests.
    Serving = 1,
    /// Not serving: clients should send calls elsewhere.
    NotServing = 2,
    /// `Watch` only: the service is not registered (yet).
    ServiceUnknown = 3,
}

#[derive(Default)]
struct Statuses {
    statuses: HashMap<String, ServingStatus>,
    shutting_down: bool,
    watchers: Vec<(String, Weak<Mutex<WatchSlot>>)>,
}

/// What a `Watch` stream has yet to send: only the latest status, so a slow watcher holds one
/// value, not a queue.
#[derive(Default)]
struct WatchSlot {
    pending: Option<ServingStatus>,
    last_sent: Option<ServingStatus>,
    waker: Option<Waker>,
}

/// Sets the statuses a [`HealthServer`] reports. Cheap to clone.
#[derive(Clone, Default)]
pub struct HealthReporter {
    state: Arc<Mutex<Statuses>>,
}

impl std::fmt::Debug for HealthReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthReporter")
            .field("statuses", &self.lock().statuses)
            .finish()
    }
}

/// The `grpc.health.v1.Health` service; add it to a server.
#[derive(Clone)]
pub struct HealthServer {
    reporter: HealthReporter,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer").finish_non_exhaustive()
    }
}

/// A health service whose server as a whole (service `""`) is SERVING, and the reporter that
/// sets its statuses.
pub fn health_service() -> (HealthReporter, HealthServer) {
    let reporter = HealthReporter::default();
    reporter.set_status("", ServingStatus::Serving);
    let server = HealthServer {
        reporter: reporter.clone(),
    };
    (reporter, server)
}

impl HealthReporter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Statuses> {
        crate::sync::lock(&self.state)
    }

    /// Sets a service's status (`""` is the server as a whole) and tells its watchers.
    /// Ignored after [`shutdown`](Self::shutdown) until [`resume`](Self::resume).
    pub fn set_status(&self, service: &str, status: ServingStatus) {
        let mut state = self.lock();
        if state.shutting_down {
            return;
        }
        state.statuses.insert(service.to_owned(), status);
        notify(&mut state, Some(service));
    }

    /// Marks a service SERVING.
    pub fn set_serving(&self, service: &str) {
        self.set_status(service, ServingStatus::Serving);
    }

    /// Marks a service NOT_SERVING.
    pub fn set_not_serving(&self, service: &str) {
        self.set_status(service, ServingStatus::NotServing);
    }

    /// Forgets a service: `Check` answers NOT_FOUND, `Watch` SERVICE_UNKNOWN.
    pub fn clear(&self, service: &str) {
        let mut state = self.lock();
        state.statuses.remove(service);
        notify(&mut state, Some(service));
    }

    /// The server is going away: every service is NOT_SERVING, and later updates are ignored
    /// until [`resume`](Self::resume).
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        for status in state.statuses.values_mut() {
            *status = ServingStatus::NotServing;
        }
        notify(&mut state, None);
    }

    /// Undoes [`shutdown`](Self::shutdown): every service is SERVING again.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.shutting_down = false;
        for status in state.statuses.values_mut() {
            *status = ServingStatus::Serving;
        }
        notify(&mut state, None);
    }

    /// A service's status, `None` if it is not registered.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.lock().statuses.get(service).copied()
    }

    /// Every registered service's status, as `List` answers; `RESOURCE_EXHAUSTED` beyond
    /// [`MAX_LISTED_SERVICES`].
    fn list(&self) -> Result<HealthListResponse, Status> {
        let state = self.lock();
        if state.statuses.len() > MAX_LISTED_SERVICES {
            return Err(Status::resource_exhausted(format!(
                "{} services: List answers with at most {MAX_LISTED_SERVICES}",
                state.statuses.len()
            )));
        }
        let statuses = state
            .statuses
            .iter()
            .map(|(name, status)| {
                let status = *status as i32;
                (name.clone(), HealthCheckResponse { status })
            })
            .collect();
        Ok(HealthListResponse { statuses })
    }
}

/// Wakes the watchers of `service` (all, for `None`), dropping those whose stream ended.
fn notify(state: &mut Statuses, service: Option<&str>) {
    let Statuses {
        statuses, watchers, ..
    } = state;
    watchers.retain(|(name, slot)| {
        let Some(slot) = slot.upgrade() else {
            return false;
        };
        if service.is_none_or(|s| s == name) {
            let status = statuses
                .get(name)
                .copied()
                .unwrap_or(ServingStatus::ServiceUnknown);
            let mut slot = crate::sync::lock(&slot);
            if slot.last_sent != Some(status) {
                slot.pending = Some(status);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        true
    });
}

impl HealthServer {
    /// The reporter that sets this service's statuses.
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }

    fn watch(&self, service: String) -> ResponseStream<HealthCheckResponse> {
        let slot = Arc::new(Mutex::new(WatchSlot::default()));
        {
            let mut state = self.reporter.lock();
            let status = state
                .statuses
                .get(&service)
                .copied()
                .unwrap_or(ServingStatus::ServiceUnknown);
            crate::sync::lock(&slot).pending = Some(status);
            state.watchers.push((service, Arc::downgrade(&slot)));
        }
        Box::pin(futures_util::stream::poll_fn(move |cx| {
            let mut slot = crate::sync::lock(&slot);
            match slot.pending.take() {
                Some(status) => {
                    slot.last_sent = Some(status);
                    Poll::Ready(Some(Ok(HealthCheckResponse {
                        status: status as i32,
                    })))
                }
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }))
    }
}

type HealthCodec = ProstCodec<HealthCheckResponse, HealthCheckRequest>;

impl Service for HealthServer {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn has_method(&self, method: &str) -> bool {
        matches!(method, "Check" | "Watch" | "List")
    }

    fn call(&self, method: &str, call: ServerCall) -> crate::rt::BoxFuture<'static, ()> {
        let this = self.clone();
        match method {
            "Check" => Box::pin(call.unary(HealthCodec::new(), move |request| async move {
                let service = request.into_inner().service;
                match this.reporter.status(&service) {
                    Some(status) => Ok(Response::new(HealthCheckResponse {
                        status: status as i32,
                    })),
                    None => Err(Status::not_found(format!("unknown service {service:?}"))),
                }
            })),
            "List" => Box::pin(call.unary(
                ProstCodec::<HealthListResponse, HealthListRequest>::new(),
                move |_| async move { this.reporter.list().map(Response::new) },
            )),
            "Watch" => Box::pin(call.server_streaming(
                HealthCodec::new(),
                move |request| async move {
                    Ok(Response::new(this.watch(request.into_inner().service)))
                },
            )),
            _ => Box::pin(call.unimplemented()),
        }
    }

    /// Every service turns NOT_SERVING, so that health-checking clients move their calls
    /// elsewhere before the connections go away.
    fn shutting_down(&self) {
        self.reporter.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn poll_next(stream: &mut ResponseStream<HealthCheckResponse>) -> Poll<Option<ServingStatus>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        stream
            .poll_next_unpin(&mut cx)
            .map(|item| item.map(|r| ServingStatus::try_from(r.unwrap().status).unwrap()))
    }

    #[test]
    fn watch_sends_the_current_status_then_only_changes() {
        let (reporter, server) = health_service();
        let mut watch = server.watch("svc".to_owned());
        assert_eq!(
            poll_next(&mut watch),
            Poll::Ready(Some(ServingStatus::ServiceUnknown))
        );
        assert_eq!(poll_next(&mut watch), Poll::Pending);
        reporter.set_serving("svc");
        reporter.set_not_serving("svc");
        reporter.set_serving("svc");
        // Changes coalesce: a watcher that was not reading sees only the latest.
        assert_eq!(
            poll_next(&mut watch),
            Poll::Ready(Some(ServingStatus::Serving))
        );
        reporter.set_serving("svc");
        reporter.set_serving("other");
        assert_eq!(
            poll_next(&mut watch),
            Poll::Pending,
            "no change, nothing sent"
        );
        reporter.shutdown();
        assert_eq!(
            poll_next(&mut watch),
            Poll::Ready(Some(ServingStatus::NotServing))
        );
        reporter.set_serving("svc");
        assert_eq!(reporter.status("svc"), Some(ServingStatus::NotServing));
        assert_eq!(reporter.status(""), Some(ServingStatus::NotServing));
        reporter.resume();
        assert_eq!(
            poll_next(&mut watch),
            Poll::Ready(Some(ServingStatus::Serving))
        );
        drop(watch);
        reporter.set_not_serving("svc");
        assert!(
            reporter.lock().watchers.is_empty(),
            "ended watches are dropped"
        );
    }
}
