use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use anygrpc_codec::{
    compression::{CompressionRegistry, Compressor},
    frame::Deframer,
    headers::{self, GRPC_ENCODING, GRPC_RETRY_PUSHBACK_MS},
    Code, Codec, Segments,
};
use futures_core::Stream;
use futures_util::future::poll_fn;

use crate::{
    channelz::CallTally,
    limits::{poll_cut, Deadline},
    metrics::Traffic,
    MetadataMap, Status,
};

/// Decodes one message; implemented for every [`Codec`] so `Streaming` needs no codec type
/// parameter.
pub(crate) trait Decode<T>: Send {
    fn decode(&self, message: Segments, compressed: bool) -> Result<T, Status>;
}

impl<C: Codec> Decode<C::Decode> for C {
    fn decode(&self, message: Segments, compressed: bool) -> Result<C::Decode, Status> {
        Codec::decode_segments(self, message, compressed)
    }
}

/// A failure recorded by the task sending a client's request stream, reported to the caller
/// in place of the stream reset it causes.
pub(crate) type LocalError = Arc<Mutex<Option<Status>>>;

/// What only the client side of a stream has.
#[derive(Default)]
pub(crate) struct ClientSide {
    pub(crate) deadline: Deadline,
    pub(crate) cancel: Option<crate::client::Cancelled>,
    /// Dropped when the response stream ends or is dropped: stops sending requests.
    pub(crate) request: Option<crate::client::RequestHold>,
    pub(crate) local_error: Option<LocalError>,
    pub(crate) tracking: CallTracking,
}

/// What a client call holds until it ends: where its load report goes, the retry throttle its
/// success feeds, and the guard that keeps its channel out of IDLE.
#[derive(Default)]
pub(crate) struct CallTracking {
    pub(crate) load_report: Option<LoadReporter>,
    pub(crate) throttle: Option<Arc<anygrpc_lb::Throttle>>,
    /// Held for its `Drop`: the call has ended when this goes.
    pub(crate) _active: Option<crate::client::ActiveCall>,
    /// The attempt in its subchannel's and connection's channelz counts.
    pub(crate) channelz: Option<CallTally>,
}

impl CallTracking {
    /// Where the attempt's message bytes are counted, if it is measured.
    pub(crate) fn traffic(&self) -> Option<Arc<Traffic>> {
        self.channelz.as_ref()?.measure()?.traffic().cloned()
    }
}

/// Hands the ORCA load report in a call's trailers to the load-balancing policy that asked
/// for it (weighted round robin).
pub(crate) struct LoadReporter {
    pub(crate) sink: Arc<dyn anygrpc_lb::LoadReportSink>,
    pub(crate) runtime: Arc<dyn anygrpc_rt::Runtime>,
}

impl LoadReporter {
    fn report(&self, trailers: &http::HeaderMap) {
        let report = trailers
            .get(anygrpc_lb::orca::LOAD_REPORT_TRAILER)
            .and_then(|v| anygrpc_codec::metadata::decode_binary(v.as_bytes()).ok())
            .and_then(|bytes| anygrpc_lb::orca::decode_report(&bytes));
        if let Some(report) = report {
            self.sink.load_report(&report, self.runtime.now());
        }
    }
}

/// A client's response head, not yet received.
pub(crate) struct PendingHead {
    pub(crate) response: h2::client::ResponseFuture,
    pub(crate) compression: Arc<CompressionRegistry>,
}

/// A client call that makes its attempts in a task of its own (a bidi call under a retry
/// policy) hands over the response stream of the attempt it commits to.
pub(crate) type Committing<T> = futures_channel::oneshot::Receiver<Result<Streaming<T>, Status>>;

enum State<T> {
    /// Client: waiting for the call to commit to an attempt.
    Committing(Committing<T>),
    /// Client: waiting for the response head.
    Head(PendingHead),
    Data,
    Trailers,
    Done,
}

/// A stream of received messages: a server's responses on the client, or a client's
/// requests in a server handler.
///
/// Yields each message as it completes; ends with `None` after a successful end of stream, or
/// yields the call's error status once and then ends. On the client, a non-OK status in the
/// trailers is that error, [`headers`](Self::headers) gives the response's header metadata
/// and [`trailers`](Self::trailers) the trailing metadata of a successful call.
pub struct Streaming<T> {
    state: State<T>,
    recv: Option<h2::RecvStream>,
    deframer: Deframer,
    compressor: Option<Arc<dyn Compressor>>,
    decoder: Box<dyn Decode<T>>,
    client: Option<ClientSide>,
    headers: MetadataMap,
    trailers: Option<MetadataMap>,
    attempt_end: AttemptEnd,
    /// Client: the call in its channel's channelz counts, ended with the stream.
    call: Option<CallTally>,
    /// Where received message bytes are counted, if the call is measured.
    traffic: Option<Arc<Traffic>>,
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

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("client", &self.client.is_some())
            .field("done", &matches!(self.state, State::Done))
            .finish()
    }
}

impl<T> Streaming<T> {
    /// A server's stream of request messages.
    pub(crate) fn server<C>(
        recv: h2::RecvStream,
        codec: C,
        compressor: Option<Arc<dyn Compressor>>,
        max_message_size: usize,
    ) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming {
            state: State::Data,
            recv: Some(recv),
            deframer: Deframer::new(max_message_size),
            compressor,
            decoder: Box::new(codec),
            client: None,
            headers: MetadataMap::new(),
            trailers: None,
            attempt_end: AttemptEnd::default(),
            call: None,
            traffic: None,
        }
    }

    /// A client's stream of responses, starting with the response head.
    pub(crate) fn client<C>(
        head: PendingHead,
        codec: C,
        max_message_size: usize,
        client: ClientSide,
    ) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming {
            state: State::Head(head),
            recv: None,
            deframer: Deframer::new(max_message_size),
            compressor: None,
            decoder: Box::new(codec),
            client: Some(client),
            headers: MetadataMap::new(),
            trailers: None,
            attempt_end: AttemptEnd::default(),
            call: None,
            traffic: None,
        }
    }

    /// A client's stream of responses from the attempt a call will commit to.
    pub(crate) fn committing<C>(committing: Committing<T>, codec: C) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming {
            state: State::Committing(committing),
            recv: None,
            deframer: Deframer::new(0),
            compressor: None,
            decoder: Box::new(codec),
            client: None,
            headers: MetadataMap::new(),
            trailers: None,
            attempt_end: AttemptEnd::default(),
            call: None,
            traffic: None,
        }
    }

    /// Client: ends the call's channelz count with this stream.
    pub(crate) fn count_call(&mut self, call: CallTally) {
        self.call = Some(call);
    }

    /// Counts received message bytes in `traffic` (a measured attempt's or server call's).
    pub(crate) fn count_traffic(&mut self, traffic: Option<Arc<Traffic>>) {
        self.traffic = traffic;
    }

    /// Keeps the call sending its requests for as long as this stream is.
    pub(crate) fn hold_request(&mut self, hold: crate::client::RequestHold) {
        if let Some(client) = self.client.as_mut() {
            client.request = Some(hold);
        }
    }

    /// The next message; `Ok(None)` at a successful end of stream.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        match poll_fn(|cx| self.poll_message(cx)).await {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Reads the only message of a unary side of a call: a missing or second message is
    /// `INTERNAL` (a cardinality violation); `side` names it in the error.
    pub(crate) async fn single(&mut self, side: &str) -> Result<T, Status> {
        let message = self.message().await?.ok_or_else(|| {
            Status::internal(format!("the {side} stream ended without a message"))
        })?;
        if self.message().await?.is_some() {
            return Err(Status::internal(format!(
                "more than one {side} message for a unary {side}"
            )));
        }
        Ok(message)
    }

    /// Client: the response's header metadata, waiting for the response head if it has not
    /// arrived. (A bidi call returns before the server answers, so its header metadata is
    /// read here rather than from the [`Response`](crate::Response).) Server: empty.
    pub async fn headers(&mut self) -> Result<&MetadataMap, Status> {
        poll_fn(|cx| self.poll_head(cx)).await?;
        Ok(&self.headers)
    }

    /// How the stream failed before its response head (see [`AttemptEnd`]).
    pub(crate) fn attempt_end(&mut self) -> AttemptEnd {
        std::mem::take(&mut self.attempt_end)
    }

    pub(crate) fn take_headers(&mut self) -> MetadataMap {
        std::mem::take(&mut self.headers)
    }

    /// Client: reads (and discards) any remaining messages and returns the trailing metadata of
    /// a successful call; the call's error status otherwise. Server: always `Ok(None)` once the
    /// client's stream ended.
    pub async fn trailers(&mut self) -> Result<Option<MetadataMap>, Status> {
        while self.message().await?.is_some() {}
        Ok(self.trailers.take())
    }

    /// Ends the stream with `status` (see [`finish`](Self::finish); an open stream is reset).
    fn fail(&mut self, status: Status) -> Status {
        self.end_tallies(status.code());
        self.finish();
        status
    }

    /// Client: the attempt and the call ended with `code`.
    fn end_tallies(&mut self, code: Code) {
        let attempt = self
            .client
            .as_mut()
            .and_then(|c| c.tracking.channelz.as_mut());
        for tally in attempt.into_iter().chain(self.call.as_mut()) {
            tally.end(code);
        }
    }

    /// Ends the stream: drops the HTTP/2 stream and stops the request-sending task.
    fn finish(&mut self) {
        self.state = State::Done;
        self.recv = None;
        self.client = None;
        self.call = None;
    }

    /// Client: the call ended with `status` in `trailers` (or a Trailers-Only head). Hands the
    /// load report they carry to the policy that wants it, then ends the stream, keeping the
    /// trailing metadata of a successful call.
    fn end(&mut self, status: Status, mut trailers: http::HeaderMap) -> Result<(), Status> {
        let client = self.client.as_ref();
        if let Some(reporter) = client.and_then(|c| c.tracking.load_report.as_ref()) {
            reporter.report(&trailers);
        }
        if !status.is_ok() {
            self.attempt_end.pushback = trailers.remove(&GRPC_RETRY_PUSHBACK_MS);
            return Err(self.fail(status));
        }
        if let Some(throttle) = client.and_then(|c| c.tracking.throttle.as_ref()) {
            throttle.record_success();
        }
        self.end_tallies(Code::Ok);
        self.finish();
        self.trailers = Some(MetadataMap::from_header_map(trailers));
        Ok(())
    }

    /// Maps a stream error, preferring a failure the request-sending task recorded.
    fn stream_error(&mut self, cx: &mut Context<'_>, err: &h2::Error) -> Status {
        let client = self.client.as_mut();
        if let Some(status) = client
            .as_ref()
            .and_then(|c| c.local_error.as_ref())
            .and_then(|e| e.lock().ok()?.take())
        {
            return status;
        }
        // The deadline's own timer says whether it has passed, on the runtime's clock.
        let deadline_passed = client.is_some_and(|c| c.deadline.poll_passed(cx));
        status_from_h2(err, deadline_passed)
    }

    /// The client's deadline or cancellation, if either has fired.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Option<Status> {
        let client = self.client.as_mut()?;
        match poll_cut(&mut client.deadline, &mut client.cancel, cx) {
            Poll::Ready(cut) => Some(cut.client_status()),
            Poll::Pending => None,
        }
    }

    /// Client: receives and checks the response head. Ready(Ok) once it has arrived (or on
    /// the server, at once).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        if let State::Committing(committing) = &mut self.state {
            match ready!(Pin::new(committing).poll(cx)) {
                Ok(Ok(committed)) => {
                    let call = self.call.take();
                    *self = committed;
                    self.call = call;
                }
                Ok(Err(status)) => return Poll::Ready(Err(self.fail(status))),
                Err(_) => {
                    let status = Status::cancelled("the call's attempts were stopped");
                    return Poll::Ready(Err(self.fail(status)));
                }
            }
        }
        if !matches!(self.state, State::Head(_)) {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = self.poll_limits(cx) {
            return Poll::Ready(Err(self.fail(status)));
        }
        let State::Head(head) = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(&mut head.response).poll(cx));
        let compression = head.compression.clone();
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                self.attempt_end.refused = err.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (err.is_go_away()
                        && err.is_remote()
                        && err.reason() == Some(h2::Reason::NO_ERROR));
                let status = self.stream_error(cx, &err);
                return Poll::Ready(Err(self.fail(status)));
            }
        };
        let (parts, body) = response.into_parts();
        match headers::check_response(parts.status, &parts.headers) {
            Err(status) => return Poll::Ready(Err(self.fail(status))),
            // Trailers-Only: the call ends here, with no messages.
            Ok(Some(status)) => return Poll::Ready(self.end(status, parts.headers)),
            Ok(None) => {}
        }
        match compression.resolve(parts.headers.get(GRPC_ENCODING)) {
            Ok(compressor) => self.compressor = compressor,
            Err(name) => {
                let status = Status::internal(format!(
                    "server sent messages with grpc-encoding {:?}, which this client does not support",
                    String::from_utf8_lossy(name)
                ));
                return Poll::Ready(Err(self.fail(status)));
            }
        }
        self.headers = MetadataMap::from_header_map(parts.headers);
        self.recv = Some(body);
        self.state = State::Data;
        Poll::Ready(Ok(()))
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        loop {
            match self
                .deframer
                .next_message_segments(self.compressor.as_deref())
            {
                Ok(Some(frame)) => {
                    if let Some(traffic) = &self.traffic {
                        traffic.received_message();
                    }
                    return match self.decoder.decode(frame.data, frame.compressed) {
                        Ok(message) => Poll::Ready(Some(Ok(message))),
                        Err(status) => Poll::Ready(Some(Err(self.fail(status)))),
                    };
                }
                Ok(None) => {}
                Err(status) => return Poll::Ready(Some(Err(self.fail(status)))),
            }
            if matches!(self.state, State::Done) {
                return Poll::Ready(None);
            }
            if let Some(status) = self.poll_limits(cx) {
                return Poll::Ready(Some(Err(self.fail(status))));
            }
            if let State::Committing(_) | State::Head(_) = self.state {
                if let Err(status) = ready!(self.poll_head(cx)) {
                    return Poll::Ready(Some(Err(status)));
                }
                continue;
            }
            let Some(recv) = self.recv.as_mut() else {
                return Poll::Ready(None);
            };
            if let State::Data = self.state {
                match ready!(recv.poll_data(cx)) {
                    Some(Ok(chunk)) => {
                        let _ = recv.flow_control().release_capacity(chunk.len());
                        if let Some(traffic) = &self.traffic {
                            traffic.received(chunk.len());
                        }
                        self.deframer.push(chunk);
                    }
                    Some(Err(err)) => {
                        let status = self.stream_error(cx, &err);
                        return Poll::Ready(Some(Err(self.fail(status))));
                    }
                    None => {
                        if !self.deframer.is_empty() {
                            let status =
                                Status::internal("stream ended in the middle of a message");
                            return Poll::Ready(Some(Err(self.fail(status))));
                        }
                        if self.client.is_none() {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        self.state = State::Trailers;
                    }
                }
                continue;
            }
            let trailers = match ready!(recv.poll_trailers(cx)) {
                Ok(Some(trailers)) => trailers,
                Ok(None) => {
                    let status =
                        Status::internal("server closed the stream without sending trailers");
                    return Poll::Ready(Some(Err(self.fail(status))));
                }
                Err(err) => {
                    let status = self.stream_error(cx, &err);
                    return Poll::Ready(Some(Err(self.fail(status))));
                }
            };
            let status = Status::from_trailers(&trailers)
                .unwrap_or_else(|| Status::internal("trailers have no grpc-status"));
            return Poll::Ready(self.end(status, trailers).err().map(Err));
        }
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}

/// Maps an `h2` error to the status a call reports, following the spec's RST_STREAM table;
/// connection-level failures (IO errors, GOAWAY with an error) are `UNAVAILABLE`.
pub(crate) fn status_from_h2(err: &h2::Error, deadline_passed: bool) -> Status {
    if err.is_go_away() || err.is_io() {
        return Status::unavailable(format!("connection closed: {err}"));
    }
    if let Some(reason) = err.reason() {
        return Status::from_h2_reason(u32::from(reason), deadline_passed);
    }
    Status::internal(format!("HTTP/2 error: {err}"))
}
