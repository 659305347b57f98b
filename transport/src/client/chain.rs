//! A client call through the channel's middleware: the request encoded and handed to the
//! chain, and at the chain's end the call on the wire (service config, retries, attempts),
//! made again for each time a middleware runs it. The reply is decoded for the caller.

use anygrpc_codec::{timeout, Codec};
use anygrpc_rt::BoxFuture;
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt;
use http::uri::PathAndQuery;

use super::Grpc;
use crate::{
    middleware::{
        self, encode, Call, CallHead, CallKind, ClientOptions, Endpoint, Messages, Reply,
    },
    MetadataMap, Request, Response, Status, Streaming,
};

/// The codec of a call at the chain's end: its messages are encoded already, and a request
/// message a middleware failed is that status, which ends the call.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Result<Bytes, Status>;
    type Decode = Bytes;

    fn encode(&self, item: Result<Bytes, Status>, dst: &mut BytesMut) -> Result<(), Status> {
        dst.extend_from_slice(&item?);
        Ok(())
    }

    fn encoded_len(&self, item: &Result<Bytes, Status>) -> usize {
        item.as_ref().map_or(0, Bytes::len)
    }

    fn decode(&self, src: Bytes) -> Result<Bytes, Status> {
        Ok(src)
    }
}

/// The call on the wire, at the end of a channel's chain.
struct Wire<'a> {
    grpc: &'a Grpc,
}

impl Endpoint for Wire<'_> {
    fn call(&self, call: Call) -> BoxFuture<'_, Reply> {
        Box::pin(async move {
            let (head, mut messages) = call.into_parts();
            let path = head.path.clone();
            let grpc = self.grpc;
            match head.kind {
                CallKind::Unary => {
                    let message = messages.single("request").await?;
                    let request = request_of(head, Ok(message));
                    let response = grpc.unary_direct(path, Encoded, request).await?;
                    Ok(response.map(Messages::one))
                }
                CallKind::ServerStreaming => {
                    let message = messages.single("request").await?;
                    let request = request_of(head, Ok(message));
                    let response = grpc.server_streaming_direct(path, Encoded, request).await?;
                    Ok(response.map(Messages::wire))
                }
                CallKind::ClientStreaming => {
                    let request = request_of(head, messages);
                    let response = grpc.client_streaming_direct(path, Encoded, request).await?;
                    Ok(response.map(Messages::one))
                }
                CallKind::BidiStreaming => {
                    let request = request_of(head, messages);
                    let response = grpc.streaming_direct(path, Encoded, request).await?;
                    Ok(response.map(Messages::wire))
                }
            }
        })
    }
}

/// The request a head describes, for the call on the wire.
fn request_of<T>(head: CallHead, message: T) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = head.metadata;
    *request.extensions_mut() = head.extensions;
    request.set_deadline(head.deadline);
    let ClientOptions {
        cancel,
        wait_for_ready,
        credentials,
    } = head.client;
    if let Some(credentials) = credentials {
        request.set_call_credentials(credentials);
    }
    if let Some(cancel) = cancel {
        request.set_cancel_token(cancel);
    }
    if let Some(wait) = wait_for_ready {
        request.set_wait_for_ready(wait);
    }
    request
}

impl Grpc {
    /// Whether calls go through the channel's middleware.
    pub(super) fn has_middleware(&self) -> bool {
        !self.channel.inner.call.middleware.is_empty()
    }

    /// The head of a call of `kind` to `path` made with `request`, and its message. The
    /// deadline is the request's timeout from now, or its context's if that comes first.
    fn head<T>(&self, path: PathAndQuery, kind: CallKind, request: Request<T>) -> (CallHead, T) {
        let mut request = request;
        let own = request
            .timeout()
            .map(|t| timeout::deadline(self.runtime().now(), t));
        let deadline = match (own, request.deadline()) {
            (Some(own), Some(context)) => Some(own.min(context)),
            (own, context) => own.or(context),
        };
        let client = ClientOptions {
            cancel: request.take_cancel_token(),
            wait_for_ready: request.wait_for_ready(),
            credentials: request.take_call_credentials(),
        };
        let head = CallHead {
            path,
            kind,
            metadata: std::mem::take(request.metadata_mut()),
            extensions: std::mem::take(request.extensions_mut()),
            deadline,
            remote_addr: None,
            authority: None,
            client,
        };
        (head, request.into_inner())
    }

    /// Runs the chain on `head` and `messages`, under the call's deadline and cancellation
    /// (a middleware that waits, for a token say, waits within them).
    async fn through_chain(&self, head: CallHead, messages: Messages) -> Reply {
        let deadline = head.deadline;
        let cancel = head.client.cancel.clone();
        let wire = Wire { grpc: self };
        let chain = &self.channel.inner.call.middleware;
        let run = middleware::run(chain, &wire, Call::new(head, messages));
        self.bounded(deadline, cancel.as_ref(), run).await?
    }

    /// A unary call through the chain.
    pub(super) fn unary_chained<'a, C: Codec + Clone>(
        &'a self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> BoxFuture<'a, Result<Response<C::Decode>, Status>> {
        Box::pin(async move {
            let (head, message) = self.head(path, CallKind::Unary, request);
            let messages = Messages::one(encode(&codec, message)?);
            let reply = self.through_chain(head, messages).await?;
            single(reply, &codec).await
        })
    }

    /// A server-streaming call through the chain.
    pub(super) fn server_streaming_chained<'a, C: Codec + Clone>(
        &'a self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> BoxFuture<'a, Result<Response<Streaming<C::Decode>>, Status>> {
        Box::pin(async move {
            let (head, message) = self.head(path, CallKind::ServerStreaming, request);
            let messages = Messages::one(encode(&codec, message)?);
            let reply = self.through_chain(head, messages).await?;
            Ok(stream(reply, codec))
        })
    }

    /// A client-streaming call through the chain.
    pub(super) fn client_streaming_chained<'a, C, S>(
        &'a self,
        path: PathAndQuery,
        codec: C,
        request: Request<S>,
    ) -> BoxFuture<'a, Result<Response<C::Decode>, Status>>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        Box::pin(async move {
            let (head, messages) = self.head(path, CallKind::ClientStreaming, request);
            let reply = self.through_chain(head, encoded(&codec, messages)).await?;
            single(reply, &codec).await
        })
    }

    /// A bidirectional-streaming call through the chain.
    pub(super) fn streaming_chained<'a, C, S>(
        &'a self,
        path: PathAndQuery,
        codec: C,
        request: Request<S>,
    ) -> BoxFuture<'a, Result<Response<Streaming<C::Decode>>, Status>>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        Box::pin(async move {
            let (head, messages) = self.head(path, CallKind::BidiStreaming, request);
            let reply = self.through_chain(head, encoded(&codec, messages)).await?;
            Ok(stream(reply, codec))
        })
    }
}

/// A caller's request stream, encoded message by message as the call sends it.
fn encoded<C, S>(codec: &C, messages: S) -> Messages
where
    C: Codec + Clone,
    S: Stream<Item = C::Encode> + Send + 'static,
{
    let codec = codec.clone();
    Messages::from_stream(messages.map(move |message| encode(&codec, message)))
}

/// A reply's one message, decoded, with the reply's metadata; trailers the messages ended
/// with join the reply's.
async fn single<C: Codec>(
    reply: Response<Messages>,
    codec: &C,
) -> Result<Response<C::Decode>, Status> {
    let (metadata, mut messages, mut trailers) = reply.into_parts();
    let message = codec.decode_message(messages.single("response").await?, false)?;
    if let Some(ended) = messages.trailers() {
        trailers.extend_missing(&ended);
    }
    Ok(Response::from_parts(metadata, message, trailers))
}

/// A reply's messages as the caller's stream, decoded as they are read; its trailers are
/// those the messages end with.
fn stream<C: Codec>(reply: Response<Messages>, codec: C) -> Response<Streaming<C::Decode>> {
    let (metadata, messages, _) = reply.into_parts();
    Response::from_parts(
        metadata,
        Streaming::relay(Box::new(messages), codec),
        MetadataMap::new(),
    )
}
