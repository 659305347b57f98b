//! One subchannel's connection: connect (TCP or UDS, then TLS), HTTP/2 handshake, backoff
//! after failures, and loss detection, driven by the sans-IO [`lb::Subchannel`] state machine.
//! Every state change is reported to the channel's [`Core`], which tells the policy.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use anygrpc_lb::{self as lb, BackoffConfig, ConnectivityState, SubchannelId};
use anygrpc_rt::{Address, BoxIo, H2Io, Runtime, TcpOptions};
use bytes::Bytes;
use futures_util::future::FutureExt;
use h2::client::SendRequest;

use super::core::Core;
use crate::{with_deadline, Status};

/// HTTP/2 and socket settings of a channel's connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub(crate) initial_stream_window_size: u32,
    pub(crate) initial_connection_window_size: u32,
    pub(crate) max_header_list_size: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) tcp_nodelay: bool,
    pub(crate) backoff: BackoffConfig,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConnector>,
}

struct Slot {
    machine: lb::Subchannel,
    send: Option<SendRequest<Bytes>>,
    /// Counts connections, so reports about an old one are ignored.
    generation: u64,
}

/// A connection to one address.
pub(crate) struct Subchannel {
    pub(crate) id: SubchannelId,
    address: Address,
    core: Weak<Core>,
    runtime: Arc<dyn Runtime>,
    settings: Arc<ConnSettings>,
    slot: Mutex<Slot>,
}

impl std::fmt::Debug for Subchannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subchannel")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Subchannel {
    pub(crate) fn new(
        id: SubchannelId,
        address: Address,
        core: Weak<Core>,
        runtime: Arc<dyn Runtime>,
        settings: Arc<ConnSettings>,
    ) -> Subchannel {
        Subchannel {
            id,
            address,
            core,
            runtime,
            slot: Mutex::new(Slot {
                machine: lb::Subchannel::new(settings.backoff, fastrand::u64(..)),
                send: None,
                generation: 0,
            }),
            settings,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection to send a call on, if READY, with its generation.
    pub(crate) fn ready(&self) -> Option<(SendRequest<Bytes>, u64)> {
        let slot = self.slot();
        slot.send.clone().map(|send| (send, slot.generation))
    }

    fn report(&self, state: ConnectivityState, status: Option<Status>) {
        if let Some(core) = self.core.upgrade() {
            core.subchannel_state(self.id, state, status);
        }
    }

    /// Starts connecting if IDLE.
    pub(crate) fn connect(self: &Arc<Self>) {
        let (attempt, generation) = {
            let mut slot = self.slot();
            let Some(attempt) = slot.machine.request_connection(self.runtime.now()) else {
                return;
            };
            slot.generation += 1;
            (attempt, slot.generation)
        };
        self.report(ConnectivityState::Connecting, None);
        let this = self.clone();
        self.runtime.spawn(Box::pin(async move {
            this.attempt(generation, attempt.deadline).await;
        }));
    }

    /// Shuts down: no more attempts or reports; a live connection is left to its streams.
    pub(crate) fn shutdown(&self) {
        let mut slot = self.slot();
        slot.machine.shutdown();
        slot.send = None;
        slot.generation += 1;
    }

    async fn attempt(self: Arc<Self>, generation: u64, deadline: Instant) {
        let result = match with_deadline(&*self.runtime, Some(deadline), self.establish()).await {
            Ok(result) => result,
            Err(_) => Err(Status::unavailable(format!(
                "timed out connecting to {}",
                self.address
            ))),
        };
        match result {
            Ok((send, driver)) => {
                {
                    let mut slot = self.slot();
                    if slot.generation != generation {
                        return;
                    }
                    slot.machine.connected();
                    slot.send = Some(send);
                }
                let this = Arc::downgrade(&self);
                self.runtime.spawn(Box::pin(async move {
                    driver.await;
                    if let Some(this) = this.upgrade() {
                        this.closed(generation);
                    }
                }));
                self.report(ConnectivityState::Ready, None);
            }
            Err(status) => {
                tracing::debug!(address = %self.address, %status, "connection attempt failed");
                let retry_at = {
                    let mut slot = self.slot();
                    if slot.generation != generation {
                        return;
                    }
                    slot.machine.connect_failed(self.runtime.now());
                    slot.machine.poll_timeout()
                };
                self.report(ConnectivityState::TransientFailure, Some(status));
                if let Some(retry_at) = retry_at {
                    self.runtime.sleep_until(retry_at).await;
                    let idle = {
                        let mut slot = self.slot();
                        slot.machine.handle_timeout(self.runtime.now());
                        slot.generation == generation
                            && slot.machine.state() == ConnectivityState::Idle
                    };
                    if idle {
                        self.report(ConnectivityState::Idle, None);
                    }
                }
            }
        }
    }

    /// The connection of `generation` ended, or a call found it refusing new streams
    /// (GOAWAY): stop handing it out and report IDLE. Streams on it carry on to their end.
    pub(crate) fn closed(&self, generation: u64) {
        {
            let mut slot = self.slot();
            if slot.generation != generation || slot.send.is_none() {
                return;
            }
            slot.send = None;
            slot.machine.disconnected();
        }
        self.report(ConnectivityState::Idle, None);
    }

    async fn establish(&self) -> Result<(SendRequest<Bytes>, Driver), Status> {
        let address = &self.address;
        let io: BoxIo = match address {
            Address::Tcp(addr) => {
                let options = TcpOptions::default().with_nodelay(self.settings.tcp_nodelay);
                self.runtime.connect_tcp(*addr, options).await
            }
            Address::Unix(path) => self.runtime.connect_unix(path.clone()).await,
        }
        .map_err(|e| Status::unavailable(format!("failed to connect to {address}: {e}")))?;
        #[cfg(feature = "tls")]
        let io = match &self.settings.tls {
            Some(tls) => tls.connect(io).await?,
            None => io,
        };
        let s = &self.settings;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(s.initial_stream_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_header_list_size(s.max_header_list_size)
            .max_frame_size(s.max_frame_size)
            // h2 limits the framing overhead of small DATA frames it buffers; peers that stream
            // small messages (grpc-go, the C-core) legitimately send many, so allow as much
            // overhead as the connection window allows data.
            .data_frame_budget(s.initial_connection_window_size as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(H2Io::new(io))
            .await
            .map_err(|e| {
                Status::unavailable(format!("HTTP/2 handshake with {address} failed: {e}"))
            })?;
        let driver = connection.map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
        Ok((send, Box::pin(driver)))
    }
}

/// The future that runs an HTTP/2 connection until it closes.
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
