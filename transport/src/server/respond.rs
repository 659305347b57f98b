//! The second half of a server call: the handler raced against the client's cancellation
//! and the deadline, then the response sent under the same watch.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use anygrpc_codec::{
    codec::BytesCodec,
    compression,
    frame::Encoder,
    headers::{self, GRPC_ACCEPT_ENCODING, GRPC_ENCODING},
    Code, Codec,
};
use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use h2::{server::SendResponse, SendStream};
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode};

use super::ServerShared;
use crate::{
    cancel::CancelOnDrop,
    channelz::CallTally,
    limits::{poll_cut, Bounded, Cut, Deadline, Uncancelled},
    metrics::{Measure, Traffic},
    middleware::Messages,
    send::{append_ready, send_message, Gathered},
    Response, ResponseStream, Status,
};

/// What a handler produced.
pub(super) enum Body<T> {
    One(T),
    Stream(ResponseStream<T>),
    /// Messages already encoded (a call through middleware).
    Encoded(Messages),
}

/// Ends a call with a status and no messages, in a single HEADERS frame.
pub(super) fn trailers_only(
    respond: &mut SendResponse<Bytes>,
    status: &Status,
    accept_encoding: Option<HeaderValue>,
) {
    let mut response = http::Response::new(());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, headers::CONTENT_TYPE_GRPC);
    if let Some(accept) = accept_encoding {
        headers.insert(GRPC_ACCEPT_ENCODING, accept);
    }
    status.write_trailers(headers);
    if let Err(err) = respond.send_response(response, true) {
        tracing::debug!(error = %err, "could not send status");
    }
}

/// Ends a gRPC call with `status` in a Trailers-Only response, and its count with the status's
/// code.
pub(super) fn fail(
    respond: &mut SendResponse<Bytes>,
    tally: &mut CallTally,
    status: &Status,
    accept_encoding: Option<HeaderValue>,
) {
    tally.end(status.code());
    trailers_only(respond, status, accept_encoding);
}

/// What is left of a call once its request is handed to the handler.
pub(super) struct Responder {
    pub(super) shared: Arc<ServerShared>,
    pub(super) respond: SendResponse<Bytes>,
    /// The deadline, which watches the handler and then the response.
    pub(super) deadline: Deadline,
    pub(super) accept_encoding: Option<HeaderValue>,
    pub(super) tally: CallTally,
    /// Cancels the call's context (the calls its handler made under it) when the call ends.
    pub(super) ends_context: CancelOnDrop,
}

impl Responder {
    /// Runs the handler's future `work`, then sends its response, racing both against the
    /// client's cancellation and the deadline. On cancellation the handler's future is
    /// dropped, which is how the handler observes it.
    pub(super) fn run<C, W>(self, codec: C, work: W) -> impl Future<Output = ()> + Send
    where
        C: Codec,
        W: Future<Output = Result<Response<Body<C::Encode>>, Status>> + Send,
    {
        Run::Handling {
            work,
            responder: self,
            codec,
            respond: Responder::respond::<C>,
        }
    }

    /// Sends a handler's response: the head, the messages, the trailers.
    async fn respond<C: Codec>(self, codec: C, response: Response<Body<C::Encode>>) {
        let Responder {
            shared,
            mut respond,
            deadline,
            accept_encoding,
            mut tally,
            // Held to the end of the response: the call's context ends with it.
            ends_context: _ends_context,
        } = self;
        let encoding = response
            .compression()
            .or(shared.call.send_compression)
            .filter(|name| compression::accepts(accept_encoding.as_ref(), name));
        let compressor = encoding.and_then(|name| shared.call.compression.get(name).cloned());
        let (metadata, body, trailers) = response.into_parts();
        let mut head = http::Response::new(());
        let headers = head.headers_mut();
        *headers = metadata.into_headers();
        headers.insert(CONTENT_TYPE, headers::CONTENT_TYPE_GRPC);
        if let Some(compressor) = &compressor {
            headers.insert(GRPC_ENCODING, HeaderValue::from_static(compressor.name()));
        }
        headers.insert(
            GRPC_ACCEPT_ENCODING,
            shared.call.compression.accept_encoding().clone(),
        );
        *head.status_mut() = StatusCode::OK;
        let send = match respond.send_response(head, false) {
            Ok(send) => send,
            Err(err) => {
                tracing::debug!(error = %err, "could not send response headers");
                return;
            }
        };
        let compress = compressor.is_some();
        let mut out = Out {
            send,
            deadline,
            traffic: tally.measure().and_then(Measure::traffic).cloned(),
        };
        let mut encoder = Encoder::new(compressor, shared.call.max_send_message_size)
            .with_pool(shared.call.frame_pool.clone());
        let status = match body {
            Body::One(message) => match encoder.encode(&codec, message, compress) {
                Ok(frame) => match out.send(frame).await {
                    Ok(()) => Ok(()),
                    Err(cut) => return finish(&mut out.send, cut, &mut tally),
                },
                Err(status) => Err(status),
            },
            Body::Stream(mut messages) => {
                let sent = send_all(&codec, &mut messages, &mut encoder, compress, &mut out);
                match sent.await {
                    Ok(status) => status,
                    Err(cut) => return finish(&mut out.send, cut, &mut tally),
                }
            }
            Body::Encoded(mut messages) => {
                let sent = send_all(&BytesCodec, &mut messages, &mut encoder, compress, &mut out);
                match sent.await {
                    Ok(status) => status,
                    Err(cut) => return finish(&mut out.send, cut, &mut tally),
                }
            }
        };
        let code = status.as_ref().map_or_else(Status::code, |()| Code::Ok);
        let trailer_map = match status {
            Ok(()) => Status::ok_trailers(trailers),
            Err(status) => {
                let mut map = HeaderMap::new();
                status.write_trailers(&mut map);
                map
            }
        };
        // Counted before the client can hear the status.
        tally.end(code);
        if let Err(err) = out.send.send_trailers(trailer_map) {
            tracing::debug!(error = %err, "could not send trailers");
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's task once its request is handed over (see [`Responder::run`]).
    ///
    /// A state machine written out rather than an `async fn`: an `async fn` keeps a slot for
    /// each argument for its whole life, so the handler's future (often the largest part of a
    /// call's task) would be stored twice, once as the argument and once pinned. Here it is
    /// stored once, and dropped the moment it is done.
    #[project = RunProj]
    #[project_replace = RunTaken]
    enum Run<W, C, F, S> {
        Handling {
            #[pin]
            work: W,
            responder: Responder,
            codec: C,
            respond: F,
        },
        Responding {
            #[pin]
            send: S,
        },
        Done,
    }
}

impl<W, C, F, S> Future for Run<W, C, F, S>
where
    C: Codec,
    W: Future<Output = Result<Response<Body<C::Encode>>, Status>>,
    F: FnOnce(Responder, C, Response<Body<C::Encode>>) -> S,
    S: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let outcome = match self.as_mut().project() {
                RunProj::Handling {
                    work, responder, ..
                } => match work.poll(cx) {
                    Poll::Ready(done) => Ok(done),
                    Poll::Pending => Err(ready!(poll_cut(
                        &mut responder.deadline,
                        &mut responder.respond,
                        cx
                    ))),
                },
                RunProj::Responding { send } => {
                    ready!(send.poll(cx));
                    self.set(Run::Done);
                    return Poll::Ready(());
                }
                RunProj::Done => return Poll::Ready(()),
            };
            // The handler's future is dropped here, whatever became of it.
            let RunTaken::Handling {
                mut responder,
                codec,
                respond,
                ..
            } = self.as_mut().project_replace(Run::Done)
            else {
                return Poll::Ready(());
            };
            let status = match outcome {
                Err(Cut::Cancelled) => return Poll::Ready(()),
                Err(Cut::DeadlineExceeded) => Status::deadline_exceeded("deadline exceeded"),
                Ok(Err(status)) => status,
                Ok(Ok(response)) => {
                    let send = respond(responder, codec, response);
                    self.set(Run::Responding { send });
                    continue;
                }
            };
            fail(&mut responder.respond, &mut responder.tally, &status, None);
            return Poll::Ready(());
        }
    }
}

/// Where a response's messages go: the stream, under the deadline, counted if measured.
struct Out {
    send: SendStream<Bytes>,
    deadline: Deadline,
    traffic: Option<Arc<Traffic>>,
}

impl Out {
    /// Sends one frame, giving up at the deadline or when the client cancels.
    async fn send(&mut self, frame: Bytes) -> Result<(), Cut> {
        if let Some(traffic) = &self.traffic {
            traffic.sent_frames(&frame);
        }
        let sending = send_message(&mut self.send, frame, false);
        match Bounded::new(sending, &mut self.deadline, Uncancelled).await {
            Ok(Ok(())) => Ok(()),
            // The stream was reset: the client cancelled.
            Ok(Err(_)) => Err(Cut::Cancelled),
            Err(cut) => Err(cut),
        }
    }
}

/// Sends a stream of response messages, each frame carrying every message ready at once;
/// `Ok` with the status the stream ended with, `Err` when the call was cut.
async fn send_all<C, S>(
    codec: &C,
    messages: &mut S,
    encoder: &mut Encoder,
    compress: bool,
    out: &mut Out,
) -> Result<Result<(), Status>, Cut>
where
    C: Codec,
    S: Stream<Item = Result<C::Encode, Status>> + Unpin,
{
    loop {
        let next = Bounded::new(messages.next(), &mut out.deadline, &mut out.send);
        let first = match next.await? {
            Some(Ok(message)) => message,
            None => return Ok(Ok(())),
            Some(Err(status)) => return Ok(Err(status)),
        };
        if let Err(status) = encoder.append(codec, first, compress) {
            return Ok(Err(status));
        }
        let gathered = append_ready(encoder, codec, compress, messages);
        out.send(encoder.take()).await?;
        match gathered {
            Gathered::More => {}
            Gathered::End => return Ok(Ok(())),
            Gathered::Fail(status) => return Ok(Err(status)),
        }
    }
}

/// Ends a call whose response was under way: on deadline, the status goes in the trailers; on
/// cancellation there is nobody to tell.
fn finish(send: &mut SendStream<Bytes>, cut: Cut, tally: &mut CallTally) {
    if let Cut::DeadlineExceeded = cut {
        tally.end(Code::DeadlineExceeded);
        let mut trailers = HeaderMap::new();
        Status::deadline_exceeded("deadline exceeded").write_trailers(&mut trailers);
        if send.send_trailers(trailers).is_err() {
            send.send_reset(h2::Reason::CANCEL);
        }
    }
}
