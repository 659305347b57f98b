//! The receive stream both sides read messages from: deframing, decompression, decoding,
//! the trailers, and the limits a side puts on it. It knows nothing about clients: a client's
//! response head, deadline and reporting come in through [`Side`].

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use anygrpc_codec::{
    compression::Compressor, frame::Deframer, frame_pool::FramePool, Code, Codec, Segments,
};
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::poll_fn;

use crate::{
    channelz::CallTally, metadata::check_binary_values, metrics::Traffic, sync::Exclusive,
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

/// What one side of a call adds to its receive stream. A server's stream of requests has no
/// side: it is the messages up to the end of the HTTP/2 stream. A client's stream of
/// responses has the client's (`client/response.rs`): the response head it waits for, the
/// call's deadline and cancellation, and what the call's end reports.
pub(crate) trait Side: Any + Send {
    /// The response head: Ready once it has arrived and been checked.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Status>>;

    /// A limit of the call (its deadline, its cancellation) that has fired, if any.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Option<Status>;

    /// The status the call ends with when its HTTP/2 stream fails with `err`.
    fn error(&mut self, cx: &mut Context<'_>, err: &h2::Error) -> Status;

    /// The call ended with `code`, and these trailers if the peer sent them: the side reports
    /// what it reports and lets go of what it held for the call.
    fn ended(&mut self, code: Code, trailers: Option<&mut http::HeaderMap>);
}

/// Messages that reach a `Streaming` already received and read by someone else (a
/// middleware's [`Messages`](crate::middleware::Messages)): the stream decodes them.
pub(crate) trait Relay: Send {
    /// The next encoded message; `None` after a good end.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>>;

    /// After a good end: the trailing metadata the messages ended with, if they have any.
    fn take_trailers(&mut self) -> Option<MetadataMap>;

    /// The header metadata the messages came with, if they have any (waiting for it).
    fn poll_headers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<MetadataMap>, Status>>;
}

/// A response head, received and checked.
pub(crate) enum Head {
    /// Messages follow on `body`, compressed with `compressor` when they say so.
    Messages {
        headers: http::HeaderMap,
        body: h2::RecvStream,
        compressor: Option<Arc<dyn Compressor>>,
    },
    /// Trailers-Only: the call ended in its head, with this status.
    TrailersOnly(Status, http::HeaderMap),
}

/// A stream that another task hands over once it exists: the response stream of the attempt
/// a client call commits to, when its attempts run in a task of their own (a bidi call under
/// a retry policy).
pub(crate) type Committing<T> = futures_channel::oneshot::Receiver<Result<Streaming<T>, Status>>;

enum State<T> {
    /// Waiting for the stream another task hands over.
    Committing(Committing<T>),
    /// Waiting for the side's response head.
    Head,
    Data,
    /// The data has ended; the side's peer ends the call with trailers.
    Trailers,
    /// Decoding what a relay hands on.
    Relay(Exclusive<Box<dyn Relay>>),
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
    decoder: Exclusive<Box<dyn Decode<T>>>,
    /// The side's part, if the stream has a side. Kept after the call ends (told so), for
    /// what the side may read of how it ended.
    side: Option<Exclusive<Box<dyn Side>>>,
    headers: MetadataMap,
    trailers: Option<MetadataMap>,
    /// The call in its channelz counts and metrics, ended with the stream.
    call: Option<CallTally>,
    /// Where received message bytes are counted, if the call is measured.
    traffic: Option<Arc<Traffic>>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("side", &self.side.is_some())
            .field("done", &matches!(self.state, State::Done))
            .finish()
    }
}

impl<T> Streaming<T> {
    fn new(state: State<T>, decoder: Box<dyn Decode<T>>, max_message_size: usize) -> Self {
        Streaming {
            state,
            recv: None,
            deframer: Deframer::new(max_message_size),
            compressor: None,
            decoder: Exclusive::new(decoder),
            side: None,
            headers: MetadataMap::new(),
            trailers: None,
            call: None,
            traffic: None,
        }
    }

    /// The messages of `recv`, with no side: a server's stream of requests.
    pub(crate) fn messages<C>(
        recv: h2::RecvStream,
        codec: C,
        compressor: Option<Arc<dyn Compressor>>,
        max_message_size: usize,
    ) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        let mut streaming = Streaming::new(State::Data, Box::new(codec), max_message_size);
        streaming.recv = Some(recv);
        streaming.compressor = compressor;
        streaming
    }

    /// A stream that starts with `side`'s response head.
    pub(crate) fn with_side<C>(side: Box<dyn Side>, codec: C, max_message_size: usize) -> Self
    where
        C: Codec<Decode = T>,
    {
        let mut streaming = Streaming::new(State::Head, Box::new(codec), max_message_size);
        streaming.side = Some(Exclusive::new(side));
        streaming
    }

    /// The stream `committing` hands over.
    pub(crate) fn committing<C>(committing: Committing<T>, codec: C) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming::new(State::Committing(committing), Box::new(codec), 0)
    }

    /// The messages `relay` hands on, decoded with `codec`.
    pub(crate) fn relay<C>(relay: Box<dyn Relay>, codec: C) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming::new(State::Relay(Exclusive::new(relay)), Box::new(codec), 0)
    }

    /// The stream's side, if it is an `S`.
    pub(crate) fn side_mut<S: Side>(&mut self) -> Option<&mut S> {
        let side: &mut dyn Any = &mut **self.side.as_mut()?.get_mut();
        side.downcast_mut()
    }

    /// Ends `call` (its channelz count and metrics) with the stream.
    pub(crate) fn count_call(&mut self, call: CallTally) {
        self.call = Some(call);
    }

    /// Joins large messages that arrived in several chunks in buffers from `pool`, when the
    /// codec needs them in one.
    pub(crate) fn join_in(&mut self, pool: &FramePool) {
        self.deframer.set_pool(pool.clone());
    }

    /// Counts received message bytes in `traffic` (a measured attempt's or server call's).
    pub(crate) fn count_traffic(&mut self, traffic: Option<Arc<Traffic>>) {
        self.traffic = traffic;
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
        poll_fn(|cx| self.poll_headers(cx).map_ok(drop)).await?;
        Ok(&self.headers)
    }

    /// [`headers`](Self::headers), polled.
    pub(crate) fn poll_headers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<&MetadataMap, Status>> {
        ready!(self.poll_head(cx))?;
        if let State::Relay(relay) = &mut self.state {
            if let Some(headers) = ready!(relay.get_mut().poll_headers(cx))? {
                self.headers = headers;
            }
        }
        Poll::Ready(Ok(&self.headers))
    }

    /// After a good end, the trailing metadata (taken).
    pub(crate) fn take_trailers(&mut self) -> Option<MetadataMap> {
        self.trailers.take()
    }

    pub(crate) fn take_headers(&mut self) -> MetadataMap {
        std::mem::take(&mut self.headers)
    }

    /// The header metadata received so far.
    pub(crate) fn header_map(&self) -> &MetadataMap {
        &self.headers
    }

    /// Client: reads (and discards) any remaining messages and returns the trailing metadata of
    /// a successful call; the call's error status otherwise. Server: always `Ok(None)` once the
    /// client's stream ended.
    pub async fn trailers(&mut self) -> Result<Option<MetadataMap>, Status> {
        while self.message().await?.is_some() {}
        Ok(self.trailers.take())
    }

    /// Ends the stream with `status` (an open HTTP/2 stream is reset).
    fn fail(&mut self, status: Status) -> Status {
        self.close(status.code(), None);
        status
    }

    /// Ends the stream: tells the side the call ended with `code` (and `trailers`), ends the
    /// call's count, and drops the HTTP/2 stream.
    fn close(&mut self, code: Code, trailers: Option<&mut http::HeaderMap>) {
        if let Some(side) = self.side.as_mut() {
            side.get_mut().ended(code, trailers);
        }
        if let Some(mut call) = self.call.take() {
            call.end(code);
        }
        self.state = State::Done;
        self.recv = None;
    }

    /// The call ended with `status` in `trailers` (or a Trailers-Only head), keeping the
    /// trailing metadata of a successful call.
    fn end(&mut self, status: Status, mut trailers: http::HeaderMap) -> Result<(), Status> {
        let status = match check_binary_values(&trailers) {
            Ok(()) => status,
            Err(malformed) => Status::internal(malformed.to_string()),
        };
        self.close(status.code(), Some(&mut trailers));
        if !status.is_ok() {
            return Err(status);
        }
        self.trailers = Some(MetadataMap::from_header_map(trailers));
        Ok(())
    }

    /// The status for a stream error: the side's, or the spec's mapping of it.
    fn stream_error(&mut self, cx: &mut Context<'_>, err: &h2::Error) -> Status {
        match self.side.as_mut() {
            Some(side) => side.get_mut().error(cx, err),
            None => status_from_h2(err, false),
        }
    }

    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Option<Status> {
        self.side.as_mut()?.get_mut().poll_limits(cx)
    }

    /// Receives the stream another task hands over and the side's response head. Ready(Ok)
    /// once the messages can be read (at once without a side).
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
        if !matches!(self.state, State::Head) {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = self.poll_limits(cx) {
            return Poll::Ready(Err(self.fail(status)));
        }
        let Some(side) = self.side.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match ready!(side.get_mut().poll_head(cx)) {
            Ok(Head::Messages {
                headers,
                body,
                compressor,
            }) => {
                if let Err(malformed) = check_binary_values(&headers) {
                    let status = Status::internal(malformed.to_string());
                    return Poll::Ready(Err(self.fail(status)));
                }
                self.headers = MetadataMap::from_header_map(headers);
                self.recv = Some(body);
                self.compressor = compressor;
                self.state = State::Data;
                Poll::Ready(Ok(()))
            }
            Ok(Head::TrailersOnly(status, trailers)) => Poll::Ready(self.end(status, trailers)),
            Err(status) => Poll::Ready(Err(self.fail(status))),
        }
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        if let State::Relay(relay) = &mut self.state {
            let relay = relay.get_mut();
            let status = match ready!(relay.poll_message(cx)) {
                Some(Ok(message)) => match self
                    .decoder
                    .get_mut()
                    .decode(Segments::single(message), false)
                {
                    Ok(message) => return Poll::Ready(Some(Ok(message))),
                    Err(status) => status,
                },
                Some(Err(status)) => status,
                None => {
                    self.trailers = relay.take_trailers();
                    self.close(Code::Ok, None);
                    return Poll::Ready(None);
                }
            };
            return Poll::Ready(Some(Err(self.fail(status))));
        }
        loop {
            match self
                .deframer
                .next_message_segments(self.compressor.as_deref())
            {
                Ok(Some(frame)) => {
                    if let Some(traffic) = &self.traffic {
                        traffic.received_message();
                    }
                    return match self.decoder.get_mut().decode(frame.data, frame.compressed) {
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
            if let State::Committing(_) | State::Head = self.state {
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
                        if self.side.is_none() {
                            self.close(Code::Ok, None);
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

#[cfg(test)]
mod sync_tests {
    /// A handler may hold `&Request<Streaming<T>>` across an `.await` in a `Send` future.
    #[test]
    fn a_stream_and_its_request_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::Streaming<Vec<u8>>>();
        send_sync::<crate::Request<super::Streaming<Vec<u8>>>>();
    }
}
