//! One server call, up to its handler: header checks, routing, interceptors, and the request
//! handed to the method's handler (`respond.rs` runs it and answers).

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Instant,
};

use anygrpc_codec::{
    codec::BytesCodec,
    compression::Compressor,
    headers::{self, Rejection},
    timeout, Codec,
};
use anygrpc_rt::{Address, BoxFuture};
use bytes::Bytes;
use futures_util::{future::Either, FutureExt};
use h2::{server::SendResponse, RecvStream};
use http::HeaderValue;
use tracing::Instrument;

use super::{
    chain::Handler,
    respond::{fail, trailers_only, Body, Responder},
    split_path, ServerShared,
};
use crate::{
    cancel::{CancelOnDrop, CancelToken},
    channelz::{CallCounters, CallTally},
    limits::Deadline,
    metrics::Measure,
    middleware::{self, Call, CallHead, CallKind, ClientOptions, Messages},
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
    authority: Option<http::uri::Authority>,
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

/// A request extension on calls that a client retried or hedged: how many attempts it made
/// before this one (`grpc-previous-rpc-attempts`, gRFC A6). Read it with
/// `request.extensions().get::<PreviousAttempts>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousAttempts(pub u32);

/// Checks and routes one HTTP/2 stream, on the connection's task. Returns the call's task,
/// or `None` when the call was answered already (bad headers, unknown service or encoding).
///
/// The task is the service's own future, so a call costs no allocation beyond what the
/// service and the runtime make (and, if the server has middleware, its chain).
pub(super) fn accept(
    shared: &Arc<ServerShared>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    remote_addr: &Address,
    extensions: &http::Extensions,
    streams: &Arc<CallCounters>,
) -> Option<BoxFuture<'static, ()>> {
    let (parts, body) = request.into_parts();
    let info = match headers::validate_request(&parts.method, parts.headers) {
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
    let decompressor = match shared.call.compression.resolve(info.encoding.as_ref()) {
        Ok(d) => d,
        Err(name) => {
            let status = Status::unimplemented(format!(
                "grpc-encoding {:?} is not supported",
                String::from_utf8_lossy(name)
            ));
            let accept = shared.call.compression.accept_encoding().clone();
            fail(&mut respond, &mut tally, &status, Some(accept));
            return None;
        }
    };
    let deadline = info
        .timeout
        .map(|t| timeout::deadline(shared.runtime.now(), t));
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let method_at = path.path().len() - method.len();
    let mut extensions = extensions.clone();
    if let Some(previous) = info.previous_attempts {
        extensions.insert(PreviousAttempts(previous));
    }
    let call = ServerCall {
        shared: shared.clone(),
        path,
        body,
        respond,
        metadata: info.metadata,
        extensions,
        deadline,
        remote_addr: remote_addr.clone(),
        authority: parts.uri.authority().cloned(),
        decompressor,
        accept_encoding: info.accept_encoding,
        tally,
    };
    let span = tracing::debug_span!("grpc.server.call", method = call.path.path());
    let path = call.path.clone();
    let task = service.call(&path.path()[method_at..], call);
    // With no subscriber that wants the span, the task goes as it is: no wrapper, no box.
    match span.is_disabled() {
        true => Some(task),
        false => Some(Box::pin(task.instrument(span))),
    }
}

impl ServerCall {
    /// Splits into the request's messages (decoded with `codec`), its head, the token its end
    /// cancels, and what sends the response.
    fn into_parts<C: Codec>(
        self,
        codec: C,
        kind: CallKind,
    ) -> (Streaming<C::Decode>, CallHead, CancelToken, Responder) {
        let (ends_context, ended) = CancelOnDrop::new();
        let mut requests = Streaming::messages(
            self.body,
            codec,
            self.decompressor,
            self.shared.call.max_recv_message_size,
        );
        requests.count_traffic(self.tally.measure().and_then(Measure::traffic).cloned());
        requests.join_in(&self.shared.call.frame_pool);
        let head = CallHead {
            path: self.path,
            kind,
            metadata: self.metadata,
            extensions: self.extensions,
            deadline: self.deadline,
            remote_addr: Some(self.remote_addr),
            authority: self.authority,
            client: ClientOptions::default(),
        };
        let responder = Responder {
            ends_context,
            deadline: Deadline::new(&*self.shared.runtime, self.deadline),
            shared: self.shared,
            respond: self.respond,
            accept_encoding: self.accept_encoding,
            tally: self.tally,
        };
        (requests, head, ended, responder)
    }

    /// Handles a unary method: reads the one request message, runs `handler`, sends its
    /// response.
    pub fn unary<C, F, Fut>(self, codec: C, handler: F) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<C::Encode>, Status>> + Send,
    {
        self.single_request(codec, handler, Body::One, CallKind::Unary)
    }

    /// Handles a server-streaming method.
    pub fn server_streaming<C, F, Fut>(
        self,
        codec: C,
        handler: F,
    ) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<ResponseStream<C::Encode>>, Status>> + Send,
    {
        self.single_request(codec, handler, Body::Stream, CallKind::ServerStreaming)
    }

    /// Handles a client-streaming method.
    pub fn client_streaming<C, F, Fut>(
        self,
        codec: C,
        handler: F,
    ) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<C::Encode>, Status>> + Send,
    {
        self.request_stream(codec, handler, Body::One, CallKind::ClientStreaming)
    }

    /// Handles a bidirectional-streaming method.
    pub fn streaming<C, F, Fut>(self, codec: C, handler: F) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<ResponseStream<C::Encode>>, Status>> + Send,
    {
        self.request_stream(codec, handler, Body::Stream, CallKind::BidiStreaming)
    }

    // These build the call's task without `async fn` layers of their own: each layer would
    // keep its arguments (the whole `ServerCall`) beside the future it starts, and move that
    // future into place once more when first polled.

    /// Methods with one request message: read it, then run the handler.
    fn single_request<C, F, Fut, R>(
        self,
        codec: C,
        handler: F,
        body: fn(R) -> Body<C::Encode>,
        kind: CallKind,
    ) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<C::Decode>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        let read_then_handle = |mut request: Request<Streaming<C::Decode>>| async move {
            let message = request.get_mut().single("request").await?;
            handler(request.map(|_| message)).await
        };
        self.request_stream(codec, read_then_handle, body, kind)
    }

    /// Methods with a request stream: the handler reads it. Through the server's middleware
    /// if it has any.
    fn request_stream<C, F, Fut, R>(
        self,
        codec: C,
        handler: F,
        body: fn(R) -> Body<C::Encode>,
        kind: CallKind,
    ) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        if !self.shared.call.middleware.is_empty() {
            return Either::Right(self.through_chain(codec, handler, body, kind));
        }
        let (requests, head, ended, responder) = self.into_parts(codec.clone(), kind);
        let request = Request::from_server_parts(
            requests,
            head.metadata,
            head.extensions,
            head.deadline.map(|d| (d, responder.shared.runtime.clone())),
            head.remote_addr,
            head.authority,
            ended,
        );
        let work = handler(request).map(move |result| result.map(|r| r.map(body)));
        Either::Left(responder.run(codec, work))
    }

    /// The call handed to the server's middleware, with the handler at the chain's end.
    fn through_chain<C, F, Fut, R>(
        self,
        codec: C,
        handler: F,
        body: fn(R) -> Body<C::Encode>,
        kind: CallKind,
    ) -> impl Future<Output = ()> + Send
    where
        C: Codec + Clone,
        F: FnOnce(Request<Streaming<C::Decode>>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        let (requests, head, ended, responder) = self.into_parts(BytesCodec, kind);
        let shared = responder.shared.clone();
        let handler = Handler {
            codec,
            handler: Mutex::new(Some(handler)),
            body,
            ended,
            clock: shared.runtime.clone(),
            _future: PhantomData,
        };
        let work = async move {
            let call = Call::new(head, Messages::wire(requests));
            let reply = middleware::run(&shared.call.middleware, &handler, call).await;
            reply.map(|response| response.map(Body::Encoded))
        };
        responder.run(BytesCodec, work)
    }

    /// Ends the call with `UNIMPLEMENTED` (an unknown method of a known service).
    pub async fn unimplemented(mut self) {
        let status = Status::unimplemented(format!("unknown method {}", self.path.path()));
        fail(&mut self.respond, &mut self.tally, &status, None);
    }
}
