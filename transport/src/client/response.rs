//! The response side of a client call: the client's [`Side`] of an attempt's receive stream
//! (its response head, the call's limits, what it holds and reports until the call ends), and
//! a unary response read from it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use anygrpc_codec::{
    compression::CompressionRegistry,
    headers::{self, GRPC_ENCODING, GRPC_RETRY_PUSHBACK_MS},
    Code, Codec,
};

use super::{
    idle::ActiveCall,
    prepared::Prepared,
    sender::{LocalError, RequestHold},
    CancelToken, Cancelled, Grpc,
};
use crate::{
    channelz::CallTally,
    limits::{poll_cut, Deadline},
    metrics::Traffic,
    streaming::{status_from_h2, Head, Side},
    Response, Status, Streaming,
};

/// What a client call holds until it ends: the policy's observer of its pick, the retry
/// throttle its success feeds, and the guard that keeps its channel out of IDLE.
#[derive(Default)]
pub(crate) struct CallTracking {
    pub(crate) observation: Option<Observation>,
    pub(crate) throttle: Option<Arc<anygrpc_lb::Throttle>>,
    /// Held for its `Drop`: the call has ended when this goes.
    pub(crate) _active: Option<ActiveCall>,
    /// The attempt in its subchannel's and connection's channelz counts.
    pub(crate) channelz: Option<CallTally>,
}

impl CallTracking {
    /// Where the attempt's message bytes are counted, if it is measured.
    pub(crate) fn traffic(&self) -> Option<Arc<Traffic>> {
        self.channelz.as_ref()?.measure()?.traffic().cloned()
    }
}

/// Tells the load-balancing policy's [`CallObserver`](anygrpc_lb::CallObserver) how the
/// attempt it picked for ended: once, at the end, or `CANCELLED` if the attempt is dropped
/// before (abandoned, or its stream never opened).
pub(crate) struct Observation {
    observer: Option<Arc<dyn anygrpc_lb::CallObserver>>,
    runtime: Arc<dyn anygrpc_rt::Runtime>,
}

impl Observation {
    pub(crate) fn new(
        observer: Arc<dyn anygrpc_lb::CallObserver>,
        runtime: Arc<dyn anygrpc_rt::Runtime>,
    ) -> Observation {
        Observation {
            observer: Some(observer),
            runtime,
        }
    }

    fn end(&mut self, code: Code, trailers: Option<&http::HeaderMap>) {
        if let Some(observer) = self.observer.take() {
            observer.call_ended(&anygrpc_lb::CallEnd::new(
                code,
                self.runtime.now(),
                trailers,
            ));
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.end(Code::Cancelled, None);
    }
}

/// How a client call's stream failed before its response head, for the retry driver.
#[derive(Debug, Default)]
pub(crate) struct AttemptEnd {
    /// The server's `grpc-retry-pushback-ms`.
    pub(crate) pushback: Option<http::HeaderValue>,
    /// Refused before the server's application saw it: RST_STREAM(REFUSED_STREAM), or a
    /// GOAWAY(NO_ERROR) that excluded it. (h2 hides the GOAWAY's last stream id, and a
    /// processed stream cut off when that connection closes fails the same way; a server that
    /// sent NO_ERROR promised to finish those, so they are taken as refused too.)
    pub(crate) refused: bool,
}

/// The client's side of an attempt's receive stream.
pub(crate) struct ClientSide {
    /// The response head, until it arrives.
    response: Option<h2::client::ResponseFuture>,
    compression: Arc<CompressionRegistry>,
    deadline: Deadline,
    cancel: Option<Cancelled>,
    /// Dropped when the call ends: stops sending requests.
    request: Option<RequestHold>,
    local_error: Option<LocalError>,
    tracking: CallTracking,
    /// How the attempt ended, once it has.
    end: AttemptEnd,
}

impl ClientSide {
    /// The side of a stream whose response head `response` brings, with no limits of its own
    /// and nothing to track or report.
    pub(crate) fn new(
        response: h2::client::ResponseFuture,
        compression: Arc<CompressionRegistry>,
    ) -> ClientSide {
        ClientSide {
            response: Some(response),
            compression,
            deadline: Deadline::default(),
            cancel: None,
            request: None,
            local_error: None,
            tracking: CallTracking::default(),
            end: AttemptEnd::default(),
        }
    }

    /// Keeps the call sending its requests until it ends.
    pub(super) fn hold_request(&mut self, hold: RequestHold) {
        self.request = Some(hold);
    }

    /// How the attempt ended (see [`AttemptEnd`]).
    pub(super) fn attempt_end(&mut self) -> AttemptEnd {
        std::mem::take(&mut self.end)
    }
}

impl Side for ClientSide {
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Status>> {
        let Some(response) = self.response.as_mut() else {
            return Poll::Ready(Err(Status::internal("the response head was taken")));
        };
        let result = ready!(Pin::new(response).poll(cx));
        self.response = None;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                self.end.refused = err.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (err.is_go_away()
                        && err.is_remote()
                        && err.reason() == Some(h2::Reason::NO_ERROR));
                return Poll::Ready(Err(self.error(cx, &err)));
            }
        };
        let (parts, body) = response.into_parts();
        if let Some(status) = headers::check_response(parts.status, &parts.headers)? {
            return Poll::Ready(Ok(Head::TrailersOnly(status, parts.headers)));
        }
        let compressor = match self.compression.resolve(parts.headers.get(GRPC_ENCODING)) {
            Ok(compressor) => compressor,
            Err(name) => {
                return Poll::Ready(Err(Status::internal(format!(
                "server sent messages with grpc-encoding {:?}, which this client does not support",
                String::from_utf8_lossy(name)
            ))))
            }
        };
        Poll::Ready(Ok(Head::Messages {
            headers: parts.headers,
            body,
            compressor,
        }))
    }

    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Option<Status> {
        match poll_cut(&mut self.deadline, &mut self.cancel, cx) {
            Poll::Ready(cut) => Some(cut.client_status()),
            Poll::Pending => None,
        }
    }

    /// Prefers a failure the request-sending task recorded to the stream reset it caused.
    fn error(&mut self, cx: &mut Context<'_>, err: &h2::Error) -> Status {
        if let Some(status) = self
            .local_error
            .as_ref()
            .and_then(|e| e.lock().ok()?.take())
        {
            return status;
        }
        // The deadline's own timer says whether it has passed, on the runtime's clock.
        status_from_h2(err, self.deadline.poll_passed(cx))
    }

    /// Tells the policy's observer how the attempt ended, keeps a failed call's pushback for
    /// the retry driver, feeds the throttle a success, and ends the attempt's count; the
    /// request task and the channel's activity guard go.
    fn ended(&mut self, code: Code, trailers: Option<&mut http::HeaderMap>) {
        let tracking = &mut self.tracking;
        if let Some(observation) = tracking.observation.as_mut() {
            observation.end(code, trailers.as_deref());
        }
        if let Some(trailers) = trailers {
            if code != Code::Ok {
                self.end.pushback = trailers.remove(&GRPC_RETRY_PUSHBACK_MS);
            }
        }
        if code == Code::Ok {
            if let Some(throttle) = &tracking.throttle {
                throttle.record_success();
            }
        }
        if let Some(tally) = tracking.channelz.as_mut() {
            tally.end(code);
        }
        self.tracking = CallTracking::default();
        self.request = None;
        self.response = None;
        self.deadline = Deadline::default();
        self.cancel = None;
        self.local_error = None;
    }
}

impl Grpc {
    /// The response stream of an opened attempt; its head is received on first use. With
    /// `stream_limits` it enforces the call's deadline and cancellation; `local_error` is
    /// where the attempt's request task records why it reset the stream.
    pub(super) fn attempt_response<C: Codec + Clone>(
        &self,
        call: &Prepared,
        response: h2::client::ResponseFuture,
        tracking: CallTracking,
        codec: &C,
        stream_limits: bool,
        local_error: Option<LocalError>,
    ) -> Streaming<C::Decode> {
        let (deadline, cancel) = match stream_limits {
            true => (call.deadline, call.cancel.as_ref()),
            false => (None, None),
        };
        let traffic = tracking.traffic();
        let side = ClientSide {
            deadline: Deadline::new(&**self.runtime(), deadline),
            cancel: cancel.map(CancelToken::cancelled),
            tracking,
            local_error,
            ..ClientSide::new(response, self.channel.inner.call.compression.clone())
        };
        let mut streaming =
            Streaming::with_side(Box::new(side), codec.clone(), call.max_recv_message_size);
        streaming.count_traffic(traffic);
        streaming.join_in(&self.channel.inner.call.frame_pool);
        streaming
    }
}

/// Reads exactly one message and the trailers: the response of a call that committed to
/// `streaming`'s attempt.
pub(super) async fn single_response<T>(
    streaming: &mut Streaming<T>,
) -> Result<Response<T>, Status> {
    let metadata = streaming.take_headers();
    let message = streaming.single("response").await?;
    let trailers = streaming.trailers().await?.unwrap_or_default();
    Ok(Response::from_parts(metadata, message, trailers))
}
