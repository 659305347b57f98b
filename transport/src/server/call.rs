//! One server call: header checks, routing, interceptors, and the driver that runs a handler
//! against the client's cancellation and the deadline.

use std::{fmt, future::Future, pin::Pin, sync::Arc, task::Poll, time::Instant};

use anygrpc_codec::{
    compression::{self, Compressor},
    frame::Encoder,
    headers::{self, Rejection, GRPC_ACCEPT_ENCODING, GRPC_ENCODING},
    Code, Codec,
};
use anygrpc_rt::{Address, BoxFuture, Sleep};
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::poll_fn;
use h2::{server::SendResponse, RecvStream, SendStream};
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode};
use tracing::Instrument;

use super::{split_path, ServerShared};
use crate::{
    channelz::{CallCounters, CallTally},
    interceptor::{self, CallHead},
    metrics::Measure,
    send::{append_ready, send_message, Gathered},
    MetadataMap, Request, Response, ResponseStream, Status, Streaming,
};

/// A call routed to a [`Service`](super::Service), not yet handled.
///
/// Generated code hands it to one of [`unary`](Self::unary),
/// [`server_streaming`](Self::server_streaming), [`client_streaming`](Self::client_streaming)
/// or [`streaming`](Self::streaming) with the method's handler.
pub struct ServerCall {
    shared: Arc<ServerShared>,
    path: http::uri::PathAndQuery,
    body: RecvStream,
    respond: SendResponse<Bytes>,
    metadata: MetadataMap,
    extensions: http::Extensions,
    deadline: Option<Instant>,
    remote_addr: Address,
    decompressor: Option<Arc<dyn Compressor>>,
    accept_encoding: Option<HeaderValue>,
    tally: CallTally,
}

impl fmt::Debug for ServerCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCall")
            .field("remote_addr", &self.remote_addr)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// What a handler produced.
enum Body<T> {
    One(T),
    Stream(ResponseStream<T>),
}

enum Outcome<T> {
    Done(Result<T, Status>),
    Cancelled,
    DeadlineExceeded,
}

/// Checks and routes one HTTP/2 stream, on the connection's task. Returns the call's task,
/// or `None` when the call was answered already (bad headers, unknown service or encoding).
///
/// Without interceptors the task is the service's own future, so a call costs no allocation
/// beyond what the service and the runtime make.
/// A request extension on calls that a client retried or hedged: how many attempts it made
/// before this one (`grpc-previous-rpc-attempts`, gRFC A6). Read it with
/// `request.extensions().get::<PreviousAttempts>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousAttempts(pub u32);

pub(super) fn accept(
    shared: &Arc<ServerShared>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    remote_addr: &Address,
    extensions: &http::Extensions,
    streams: &Arc<CallCounters>,
) -> Option<BoxFuture<'static, ()>> {
    let (parts, body) = request.into_parts();
    let info = match headers::validate_request(&parts.method, &parts.headers) {
        Ok(info) => info,
        Err(Rejection::Http(status, why)) => {
            tracing::debug!(%status, why, "rejected a non-gRPC request");
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            let _ = respond.send_response(response, true);
            return None;
        }
        Err(Rejection::Grpc(status)) => {
            trailers_only(&mut respond, &status, None);
            return None;
        }
    };
    // A gRPC call from here on: the early answers below count as failed calls.
    let split = split_path(parts.uri.path());
    let service = split.and_then(|(service, _)| shared.services.get(service));
    let measure = shared.metrics.as_ref().map(|metrics| {
        let registered = split
            .zip(service)
            .is_some_and(|((_, method), service)| service.has_method(method));
        metrics.server_call(parts.uri.path(), registered)
    });
    let mut tally = shared.channelz.calls.start(Some(streams)).measured(measure);
    let Some((service_name, method)) = split else {
        let status = Status::unimplemented(format!("malformed method path {:?}", parts.uri.path()));
        fail(&mut respond, &mut tally, &status, None);
        return None;
    };
    let Some(service) = service.cloned() else {
        let status = Status::unimplemented(format!("unknown service {service_name}"));
        fail(&mut respond, &mut tally, &status, None);
        return None;
    };
    let decompressor = match shared.compression.resolve(parts.headers.get(GRPC_ENCODING)) {
        Ok(d) => d,
        Err(name) => {
            let status = Status::unimplemented(format!(
                "grpc-encoding {:?} is not supported",
                String::from_utf8_lossy(name)
            ));
            let accept = shared.compression.accept_encoding().clone();
            fail(&mut respond, &mut tally, &status, Some(accept));
            return None;
        }
    };
    let deadline = info.timeout.map(|t| {
        let now = shared.runtime.now();
        now.checked_add(t)
            .unwrap_or(now + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
    });
    let accept_encoding = parts.headers.get(GRPC_ACCEPT_ENCODING).cloned();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let method_at = path.path().len() - method.len();
    let mut extensions = extensions.clone();
    if let Some(previous) = parts
        .headers
        .get("grpc-previous-rpc-attempts")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        extensions.insert(PreviousAttempts(previous));
    }
    let call = ServerCall {
        shared: shared.clone(),
        path,
        body,
        respond,
        metadata: MetadataMap::from_header_map(parts.headers),
        extensions,
        deadline,
        remote_addr: remote_addr.clone(),
        decompressor,
        accept_encoding,
        tally,
    };
    let span = tracing::debug_span!("grpc.server.call", method = call.path.path());
    let task = if shared.interceptors.is_empty() {
        let path = call.path.clone();
        service.call(&path.path()[method_at..], call)
    } else {
        Box::pin(async move {
            if let Some(call) = call.intercept().await {
                let path = call.path.clone();
                service.call(&path.path()[method_at..], call).await;
            }
        })
    };
    // With no subscriber that wants the span, the task goes as it is: no wrapper, no box.
    match span.is_disabled() {
        true => Some(task),
        false => Some(Box::pin(task.instrument(span))),
    }
}

/// Ends a call with a status and no messages, in a single HEADERS frame.
fn trailers_only(
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
fn fail(
    respond: &mut SendResponse<Bytes>,
    tally: &mut CallTally,
    status: &Status,
    accept_encoding: Option<HeaderValue>,
) {
    tally.end(status.code());
    trailers_only(respond, status, accept_encoding);
}

/// What is left of a call once its request is handed to the handler.
struct Responder {
    shared: Arc<ServerShared>,
    respond: SendResponse<Bytes>,
    deadline: Option<Instant>,
    accept_encoding: Option<HeaderValue>,
    tally: CallTally,
}

impl ServerCall {
    /// Splits into the request (with its message stream) and what sends the response.
    fn split<C: Codec>(self, codec: C) -> (Request<Streaming<C::Decode>>, Responder) {
        let mut requests = Streaming::server(
            self.body,
            codec,
            self.decompressor,
            self.shared.max_recv_message_size,
        );
        requests.count_traffic(self.tally.measure().and_then(Measure::traffic).cloned());
        let request = Request::from_server_parts(
            requests,
            self.metadata,
            self.extensions,
            self.deadline.map(|d| (d, self.shared.runtime.clone())),
            Some(self.remote_addr),
        );
        let responder = Responder {
            shared: self.shared,
            respond: self.respond,
            deadline: self.deadline,
            accept_encoding: self.accept_encoding,
            tally: self.tally,
        };
        (request, responder)
    }

    /// Handles a unary method: reads the one request message, runs `handler`, sends its
    /// response.
    pub async fn unary<C, F, Fut>(self, codec: C, handler: F)
    where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<C::Encode>, Status>> + Send,
    {
        self.single_request(codec, handler, Body::One).await;
    }

    /// Handles a server-streaming method.
    pub async fn server_streaming<C, F, Fut>(self, codec: C, handler: F)
    where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<ResponseStream<C::Encode>>, Status>> + Send,
    {
        self.single_request(codec, handler, Body::Stream).await;
    }

    /// Handles a client-streaming method.
    pub async fn client_streaming<C, F, Fut>(self, codec: C, handler: F)
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<C::Encode>, Status>> + Send,
    {
        self.request_stream(codec, handler, Body::One).await;
    }

    /// Handles a bidirectional-streaming method.
    pub async fn streaming<C, F, Fut>(self, codec: C, handler: F)
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<ResponseStream<C::Encode>>, Status>> + Send,
    {
        self.request_stream(codec, handler, Body::Stream).await;
    }

    /// Methods with one request message: read it, then run the handler.
    async fn single_request<C, F, Fut, R>(
        self,
        codec: C,
        handler: F,
        body: fn(R) -> Body<C::Encode>,
    ) where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        let read_then_handle = |mut request: Request<Streaming<C::Decode>>| async move {
            let message = request.get_mut().single("request").await?;
            handler(request.map(|_| message)).await
        };
        self.request_stream(codec, read_then_handle, body).await;
    }

    /// Methods with a request stream: the handler reads it.
    async fn request_stream<C, F, Fut, R>(
        self,
        codec: C,
        handler: F,
        body: fn(R) -> Body<C::Encode>,
    ) where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        let (request, responder) = self.split(codec.clone());
        let work = async move { handler(request).await.map(|r| r.map(body)) };
        responder.run(codec, work).await;
    }

    /// Runs the server's interceptors; `None` when one rejected the call (it is answered).
    async fn intercept(mut self) -> Option<ServerCall> {
        let mut head = CallHead {
            path: self.path,
            metadata: self.metadata,
            extensions: self.extensions,
            deadline: self.deadline,
            remote_addr: Some(self.remote_addr.clone()),
        };
        // Interceptors may wait (an auth lookup, a slow backend's delay): a client that
        // cancels, or a deadline that passes, ends them as it would end the handler.
        let verdict = {
            let mut run = std::pin::pin!(interceptor::run(&self.shared.interceptors, &mut head));
            let respond = &mut self.respond;
            let mut sleep = self.deadline.map(|d| self.shared.runtime.sleep_until(d));
            poll_fn(|cx| {
                if respond.poll_reset(cx).is_ready() {
                    return Poll::Ready(Err(None));
                }
                if expired(&mut sleep, cx) {
                    let status = Status::deadline_exceeded("deadline exceeded in an interceptor");
                    return Poll::Ready(Err(Some(status)));
                }
                run.as_mut().poll(cx).map(|verdict| verdict.map_err(Some))
            })
            .await
        };
        match verdict {
            Ok(()) => {}
            Err(None) => return None,
            Err(Some(status)) => {
                fail(&mut self.respond, &mut self.tally, &status, None);
                return None;
            }
        }
        self.path = head.path;
        self.metadata = head.metadata;
        self.extensions = head.extensions;
        Some(self)
    }

    /// Ends the call with `UNIMPLEMENTED` (an unknown method of a known service).
    pub async fn unimplemented(mut self) {
        let status = Status::unimplemented(format!("unknown method {}", self.path.path()));
        fail(&mut self.respond, &mut self.tally, &status, None);
    }
}

impl Responder {
    /// Runs the handler, then sends the response, racing both against the client's
    /// cancellation and the deadline. On cancellation the handler's future is dropped, which
    /// is how the handler observes it.
    async fn run<C, W>(self, codec: C, work: W)
    where
        C: Codec,
        W: Future<Output = Result<Response<Body<C::Encode>>, Status>> + Send,
    {
        let Responder {
            shared,
            mut respond,
            deadline,
            accept_encoding,
            mut tally,
        } = self;
        let mut sleep = deadline.map(|d| shared.runtime.sleep_until(d));
        // The handler's future lives only in this block: once the call is cancelled or past
        // its deadline, it is dropped.
        let outcome = {
            let mut work = std::pin::pin!(work);
            poll_fn(|cx| {
                if respond.poll_reset(cx).is_ready() {
                    return Poll::Ready(Outcome::Cancelled);
                }
                if expired(&mut sleep, cx) {
                    return Poll::Ready(Outcome::DeadlineExceeded);
                }
                work.as_mut().poll(cx).map(Outcome::Done)
            })
            .await
        };
        let response = match outcome {
            Outcome::Cancelled => return,
            Outcome::DeadlineExceeded => {
                let status = Status::deadline_exceeded("deadline exceeded");
                return fail(&mut respond, &mut tally, &status, None);
            }
            Outcome::Done(Err(status)) => return fail(&mut respond, &mut tally, &status, None),
            Outcome::Done(Ok(response)) => response,
        };
        let traffic = tally.measure().and_then(Measure::traffic);
        let count_sent = |frame: &Bytes| {
            if let Some(traffic) = traffic {
                traffic.sent_frames(frame);
            }
        };

        let encoding = response
            .compression()
            .or(shared.send_compression)
            .filter(|name| compression::accepts(accept_encoding.as_ref(), name));
        let compressor = encoding.and_then(|name| shared.compression.get(name).cloned());
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
            shared.compression.accept_encoding().clone(),
        );
        *head.status_mut() = StatusCode::OK;
        let mut send = match respond.send_response(head, false) {
            Ok(send) => send,
            Err(err) => {
                tracing::debug!(error = %err, "could not send response headers");
                return;
            }
        };
        let compress = compressor.is_some();
        let mut encoder = Encoder::new(compressor, shared.max_send_message_size);
        let status = match body {
            Body::One(message) => match encoder.encode(&codec, message, compress) {
                Ok(frame) => {
                    count_sent(&frame);
                    match send_before(&mut sleep, &mut send, frame).await {
                        Ok(()) => Ok(()),
                        Err(outcome) => return finish(&mut send, outcome, &mut tally),
                    }
                }
                Err(status) => Err(status),
            },
            Body::Stream(mut messages) => loop {
                let next = poll_fn(|cx| {
                    if send.poll_reset(cx).is_ready() {
                        return Poll::Ready(Outcome::Cancelled);
                    }
                    if expired(&mut sleep, cx) {
                        return Poll::Ready(Outcome::DeadlineExceeded);
                    }
                    Pin::new(&mut messages)
                        .poll_next(cx)
                        .map(|m| Outcome::Done(m.transpose()))
                })
                .await;
                let first = match next {
                    Outcome::Done(Ok(Some(message))) => message,
                    Outcome::Done(Ok(None)) => break Ok(()),
                    Outcome::Done(Err(status)) => break Err(status),
                    other => return finish(&mut send, other, &mut tally),
                };
                if let Err(status) = encoder.append(&codec, first, compress) {
                    break Err(status);
                }
                let gathered = append_ready(&mut encoder, &codec, compress, &mut messages);
                let frame = encoder.take();
                count_sent(&frame);
                if let Err(outcome) = send_before(&mut sleep, &mut send, frame).await {
                    return finish(&mut send, outcome, &mut tally);
                }
                match gathered {
                    Gathered::More => {}
                    Gathered::End => break Ok(()),
                    Gathered::Fail(status) => break Err(status),
                }
            },
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
        match send.send_trailers(trailer_map) {
            Ok(()) => tally.end(code),
            Err(err) => tracing::debug!(error = %err, "could not send trailers"),
        }
    }
}

fn expired(sleep: &mut Option<Pin<Box<dyn Sleep>>>, cx: &mut std::task::Context<'_>) -> bool {
    sleep
        .as_mut()
        .is_some_and(|s| s.as_mut().poll(cx).is_ready())
}

/// Sends one message, giving up at the deadline or when the client cancels.
async fn send_before(
    sleep: &mut Option<Pin<Box<dyn Sleep>>>,
    send: &mut SendStream<Bytes>,
    frame: Bytes,
) -> Result<(), Outcome<()>> {
    let mut sending = std::pin::pin!(send_message(send, frame, false));
    poll_fn(|cx| {
        if expired(sleep, cx) {
            return Poll::Ready(Err(Outcome::DeadlineExceeded));
        }
        sending.as_mut().poll(cx).map_err(|_| Outcome::Cancelled)
    })
    .await
}

/// Ends a call whose response was under way: on deadline, the status goes in the trailers; on
/// cancellation there is nobody to tell.
fn finish<T>(send: &mut SendStream<Bytes>, outcome: Outcome<T>, tally: &mut CallTally) {
    if let Outcome::DeadlineExceeded = outcome {
        tally.end(Code::DeadlineExceeded);
        let mut trailers = HeaderMap::new();
        Status::deadline_exceeded("deadline exceeded").write_trailers(&mut trailers);
        if send.send_trailers(trailers).is_err() {
            send.send_reset(h2::Reason::CANCEL);
        }
    }
}
