use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use anygrpc_codec::{compression::Compressor, frame::Deframer, Codec};
use anygrpc_rt::Sleep;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::poll_fn;

use crate::{MetadataMap, Status};

/// Decodes one message; implemented for every [`Codec`] so `Streaming` needs no codec type
/// parameter.
pub(crate) trait Decode<T>: Send {
    fn decode(&self, bytes: Bytes, compressed: bool) -> Result<T, Status>;
}

impl<C: Codec> Decode<C::Decode> for C {
    fn decode(&self, bytes: Bytes, compressed: bool) -> Result<C::Decode, Status> {
        Codec::decode_message(self, bytes, compressed)
    }
}

/// A failure recorded by the task sending a client's request stream, reported to the caller
/// in place of the stream reset it causes.
pub(crate) type LocalError = Arc<Mutex<Option<Status>>>;

/// What only the client side of a stream has.
pub(crate) struct ClientSide {
    pub(crate) deadline: Option<Pin<Box<dyn Sleep>>>,
    pub(crate) deadline_at: Option<std::time::Instant>,
    pub(crate) cancel: Option<crate::client::Cancelled>,
    /// Dropped when the response stream ends or is dropped: stops the request-sending task.
    pub(crate) cancel_sender: Option<futures_channel::oneshot::Sender<()>>,
    pub(crate) local_error: Option<LocalError>,
}

enum State {
    Data,
    Trailers,
    Done,
}

/// A stream of received messages: a server's responses on the client, or a client's
/// requests in a server handler.
///
/// Yields each message as it completes; ends with `None` after a successful end of stream, or
/// yields the call's error status once and then ends. On the client, a non-OK status in the
/// trailers is that error, and [`trailers`](Self::trailers) gives the trailing metadata of a
/// successful call.
pub struct Streaming<T> {
    recv: Option<h2::RecvStream>,
    deframer: Deframer,
    compressor: Option<Arc<dyn Compressor>>,
    decoder: Box<dyn Decode<T>>,
    state: State,
    client: Option<ClientSide>,
    trailers: Option<MetadataMap>,
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
    pub(crate) fn new<C>(
        recv: h2::RecvStream,
        codec: C,
        compressor: Option<Arc<dyn Compressor>>,
        max_message_size: usize,
        client: Option<ClientSide>,
    ) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming {
            recv: Some(recv),
            deframer: Deframer::new(max_message_size),
            compressor,
            decoder: Box::new(codec),
            state: State::Data,
            client,
            trailers: None,
        }
    }

    /// A stream that already ended successfully with these trailers (a trailers-only response).
    pub(crate) fn finished<C>(codec: C, trailers: MetadataMap) -> Streaming<T>
    where
        C: Codec<Decode = T>,
    {
        Streaming {
            recv: None,
            deframer: Deframer::new(0),
            compressor: None,
            decoder: Box::new(codec),
            state: State::Done,
            client: None,
            trailers: Some(trailers),
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

    /// Client: reads (and discards) any remaining messages and returns the trailing metadata of
    /// a successful call; the call's error status otherwise. Server: always `Ok(None)` once the
    /// client's stream ended.
    pub async fn trailers(&mut self) -> Result<Option<MetadataMap>, Status> {
        while self.message().await?.is_some() {}
        Ok(self.trailers.take())
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<T, Status>>> {
        self.state = State::Done;
        self.recv = None;
        if let Some(client) = &mut self.client {
            client.cancel_sender = None;
            client.deadline = None;
            client.cancel = None;
        }
        Poll::Ready(Some(Err(status)))
    }

    fn deadline_passed(&self) -> bool {
        self.client
            .as_ref()
            .and_then(|c| c.deadline_at)
            .is_some_and(|at| std::time::Instant::now() >= at)
    }

    /// Maps a stream error, preferring a failure the request-sending task recorded.
    fn stream_error(&self, err: &h2::Error) -> Status {
        if let Some(status) = self
            .client
            .as_ref()
            .and_then(|c| c.local_error.as_ref())
            .and_then(|e| e.lock().ok()?.take())
        {
            return status;
        }
        crate::status_from_h2(err, self.deadline_passed())
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        loop {
            match self.deframer.next_message(self.compressor.as_deref()) {
                Ok(Some(frame)) => {
                    return match self.decoder.decode(frame.data, frame.compressed) {
                        Ok(message) => Poll::Ready(Some(Ok(message))),
                        Err(status) => self.fail(status),
                    }
                }
                Ok(None) => {}
                Err(status) => return self.fail(status),
            }
            if let Some(client) = self.client.as_mut() {
                if client
                    .deadline
                    .as_mut()
                    .is_some_and(|s| s.as_mut().poll(cx).is_ready())
                {
                    return self.fail(Status::deadline_exceeded("deadline exceeded"));
                }
                if client
                    .cancel
                    .as_mut()
                    .is_some_and(|c| std::future::Future::poll(Pin::new(c), cx).is_ready())
                {
                    return self.fail(Status::cancelled("call cancelled by the client"));
                }
            }
            let Some(recv) = self.recv.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Data => match ready!(recv.poll_data(cx)) {
                    Some(Ok(chunk)) => {
                        let _ = recv.flow_control().release_capacity(chunk.len());
                        self.deframer.push(chunk);
                    }
                    Some(Err(err)) => {
                        let status = self.stream_error(&err);
                        return self.fail(status);
                    }
                    None => {
                        if !self.deframer.is_empty() {
                            return self
                                .fail(Status::internal("stream ended in the middle of a message"));
                        }
                        if self.client.is_none() {
                            self.state = State::Done;
                            self.recv = None;
                            return Poll::Ready(None);
                        }
                        self.state = State::Trailers;
                    }
                },
                State::Trailers => {
                    let trailers = match ready!(recv.poll_trailers(cx)) {
                        Ok(Some(trailers)) => trailers,
                        Ok(None) => {
                            return self.fail(Status::internal(
                                "server closed the stream without sending trailers",
                            ))
                        }
                        Err(err) => {
                            let status = self.stream_error(&err);
                            return self.fail(status);
                        }
                    };
                    let status = Status::from_trailers(&trailers)
                        .unwrap_or_else(|| Status::internal("trailers have no grpc-status"));
                    if !status.is_ok() {
                        return self.fail(status);
                    }
                    self.state = State::Done;
                    self.recv = None;
                    self.trailers = Some(MetadataMap::from_header_map(trailers));
                    if let Some(client) = &mut self.client {
                        client.deadline = None;
                        client.cancel = None;
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_message(cx)
    }
}
