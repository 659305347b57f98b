use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_core::Stream;

use crate::{
    client::CancelToken,
    credentials::CallCredentials,
    rt::{Address, Runtime},
    CallContext, MetadataMap, Status,
};

/// A call's request: a message (or a stream of them) plus metadata and call options.
///
/// On the client, set metadata and a timeout before sending. On the server, a handler reads
/// the client's metadata, the call's deadline and the peer address here.
#[derive(Debug)]
pub struct Request<T> {
    metadata: MetadataMap,
    message: T,
    extensions: http::Extensions,
    timeout: Option<Duration>,
    /// Server: the call's deadline. Client: the deadline of the context it is made under.
    deadline: Option<Instant>,
    /// Server: the runtime whose clock the deadline is on (set with a deadline).
    clock: Option<Arc<dyn Runtime>>,
    remote_addr: Option<Address>,
    /// Server: the `:authority` the call was made to.
    authority: Option<http::uri::Authority>,
    cancel: Option<CancelToken>,
    /// Server: cancelled when the call ends, for its context. Client: the token of the
    /// context it is made under.
    context_cancel: Option<CancelToken>,
    /// `None` until set: the method's service config decides.
    wait_for_ready: Option<bool>,
    /// Client: sent beside the channel's call credentials.
    call_credentials: Option<Arc<dyn CallCredentials>>,
}

impl<T> Request<T> {
    /// A request with no metadata and no timeout.
    pub fn new(message: T) -> Request<T> {
        Request {
            metadata: MetadataMap::new(),
            message,
            extensions: http::Extensions::new(),
            timeout: None,
            deadline: None,
            clock: None,
            remote_addr: None,
            authority: None,
            cancel: None,
            context_cancel: None,
            wait_for_ready: None,
            call_credentials: None,
        }
    }

    /// The custom metadata (sent as headers).
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Mutable custom metadata.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.metadata
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// Values that interceptors attach for handlers (server) or that travel with the call.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Mutable extensions.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// Client: fail the call with `DEADLINE_EXCEEDED` if it has not finished within `timeout`;
    /// the server is told through `grpc-timeout`.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// Client: end the call with `CANCELLED` when the token's
    /// [`Canceller`](crate::client::Canceller) cancels it.
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = Some(token);
    }

    /// Client: wait-for-ready. Without it (the default, unless the method's service config
    /// says `waitForReady`) a call fails fast with `UNAVAILABLE` while the channel is in
    /// TRANSIENT_FAILURE; with it, the call waits for a connection until its deadline. Set
    /// either way, it overrides the service config.
    pub fn set_wait_for_ready(&mut self, wait: bool) {
        self.wait_for_ready = Some(wait);
    }

    /// Whether the call waits for the channel to be ready (client side), as set on the
    /// request; `None` if not set.
    pub fn wait_for_ready(&self) -> Option<bool> {
        self.wait_for_ready
    }

    /// Client: call credentials this call sends, after the channel's (see
    /// [`credentials`](crate::credentials)). Credentials that require transport security end
    /// the call `UNAUTHENTICATED` on a plaintext channel unless it allows them.
    pub fn set_call_credentials(&mut self, credentials: Arc<dyn CallCredentials>) {
        self.call_credentials = Some(credentials);
    }

    /// The call's own credentials, taken for the call.
    pub(crate) fn take_call_credentials(&mut self) -> Option<Arc<dyn CallCredentials>> {
        self.call_credentials.take()
    }

    /// Client: bounds the call by `deadline`, as a context's deadline does.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The call's cancellation: its own token, its context's, or either.
    pub(crate) fn take_cancel_token(&mut self) -> Option<CancelToken> {
        CancelToken::either(self.cancel.take(), self.context_cancel.take())
    }

    /// Server: this call's context, for the calls its handler makes: the call's deadline and
    /// its cancellation (the call's end, however it comes), with no metadata. See
    /// [`CallContext`].
    pub fn context(&self) -> CallContext {
        CallContext::of_call(self.deadline, self.context_cancel.clone())
    }

    /// Client: makes the call under `context`: it ends by the context's deadline (or its own
    /// timeout, whichever comes first), is cancelled with the context, and carries the
    /// context's metadata for the keys it does not set itself.
    pub fn set_context(&mut self, context: &CallContext) {
        self.deadline = context.deadline();
        self.context_cancel = context.cancel_token().cloned();
        self.metadata.extend_missing(context.metadata());
    }

    /// The timeout set on this request (client side).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Server: the instant the call's deadline passes, from the client's `grpc-timeout`.
    /// Client: the deadline of the [context](Self::set_context) the call is made under.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Server: the time left until the deadline (zero once it passed). Calls the handler
    /// makes get it, and the call's cancellation, from [`context`](Self::context).
    pub fn remaining(&self) -> Option<Duration> {
        let now = self
            .clock
            .as_ref()
            .map_or_else(Instant::now, |clock| clock.now());
        self.deadline.map(|d| d.saturating_duration_since(now))
    }

    /// Server: the peer's address.
    pub fn remote_addr(&self) -> Option<&Address> {
        self.remote_addr.as_ref()
    }

    /// Server: the `:authority` the client called (the host it dialled, or the channel's
    /// override), as grpc-go's handlers read it from the incoming metadata.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(http::uri::Authority::as_str)
    }

    /// Replaces the message, keeping metadata and options.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Request<U> {
        Request {
            metadata: self.metadata,
            message: f(self.message),
            extensions: self.extensions,
            timeout: self.timeout,
            deadline: self.deadline,
            clock: self.clock,
            remote_addr: self.remote_addr,
            authority: self.authority,
            cancel: self.cancel,
            context_cancel: self.context_cancel,
            wait_for_ready: self.wait_for_ready,
            call_credentials: self.call_credentials,
        }
    }

    pub(crate) fn from_server_parts(
        message: T,
        metadata: MetadataMap,
        extensions: http::Extensions,
        deadline: Option<(Instant, Arc<dyn Runtime>)>,
        remote_addr: Option<Address>,
        authority: Option<http::uri::Authority>,
        ended: CancelToken,
    ) -> Request<T> {
        let (deadline, clock) = deadline.unzip();
        Request {
            metadata,
            message,
            extensions,
            timeout: None,
            deadline,
            clock,
            remote_addr,
            authority,
            cancel: None,
            context_cancel: Some(ended),
            wait_for_ready: None,
            call_credentials: None,
        }
    }
}

/// A call's response: a message (or stream), plus headers and trailers metadata.
#[derive(Debug)]
pub struct Response<T> {
    metadata: MetadataMap,
    message: T,
    trailers: MetadataMap,
    extensions: http::Extensions,
    compression: Option<&'static str>,
}

impl<T> Response<T> {
    /// A response with no metadata.
    pub fn new(message: T) -> Response<T> {
        Response {
            metadata: MetadataMap::new(),
            message,
            trailers: MetadataMap::new(),
            extensions: http::Extensions::new(),
            compression: None,
        }
    }

    /// The header metadata.
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Mutable header metadata (server: sent with the response headers).
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.metadata
    }

    /// The trailing metadata: on the client, what the server sent after a unary or
    /// client-streaming response (for streams, see [`Streaming::trailers`](crate::Streaming)); on
    /// the server, what to send in the trailers of a successful call.
    pub fn trailers(&self) -> &MetadataMap {
        &self.trailers
    }

    /// Mutable trailing metadata.
    pub fn trailers_mut(&mut self) -> &mut MetadataMap {
        &mut self.trailers
    }

    /// Server: compress this call's response messages with `encoding` (e.g. `"gzip"`) if the
    /// client accepts it; overrides the server's default.
    pub fn set_compression(&mut self, encoding: Option<&'static str>) {
        self.compression = encoding;
    }

    pub(crate) fn compression(&self) -> Option<&'static str> {
        self.compression
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// Extensions.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Splits into header metadata, message and trailers.
    pub fn into_parts(self) -> (MetadataMap, T, MetadataMap) {
        (self.metadata, self.message, self.trailers)
    }

    /// Builds a response from its parts.
    pub fn from_parts(metadata: MetadataMap, message: T, trailers: MetadataMap) -> Response<T> {
        Response {
            metadata,
            message,
            trailers,
            extensions: http::Extensions::new(),
            compression: None,
        }
    }

    /// Replaces the message, keeping metadata.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Response<U> {
        Response {
            metadata: self.metadata,
            message: f(self.message),
            trailers: self.trailers,
            extensions: self.extensions,
            compression: self.compression,
        }
    }

    /// [`map`](Self::map) with a function that may fail.
    pub(crate) fn try_map<U>(
        self,
        f: impl FnOnce(T) -> Result<U, Status>,
    ) -> Result<Response<U>, Status> {
        Ok(Response {
            metadata: self.metadata,
            message: f(self.message)?,
            trailers: self.trailers,
            extensions: self.extensions,
            compression: self.compression,
        })
    }
}

/// A message or a [`Request`] around one: what unary and server-streaming calls accept.
pub trait IntoRequest<T> {
    /// Wraps the value in a request if it is not one already.
    fn into_request(self) -> Request<T>;
}

impl<T> IntoRequest<T> for T {
    fn into_request(self) -> Request<T> {
        Request::new(self)
    }
}

impl<T> IntoRequest<T> for Request<T> {
    fn into_request(self) -> Request<T> {
        self
    }
}

/// A stream of messages or a [`Request`] around one: what client-streaming and bidi calls
/// accept.
pub trait IntoStreamingRequest {
    /// The stream.
    type Stream: Stream<Item = Self::Message> + Send + 'static;
    /// The message type.
    type Message;

    /// Wraps the stream in a request if it is not one already.
    fn into_streaming_request(self) -> Request<Self::Stream>;
}

impl<S: Stream + Send + 'static> IntoStreamingRequest for S {
    type Stream = S;
    type Message = S::Item;

    fn into_streaming_request(self) -> Request<S> {
        Request::new(self)
    }
}

impl<S: Stream + Send + 'static> IntoStreamingRequest for Request<S> {
    type Stream = S;
    type Message = S::Item;

    fn into_streaming_request(self) -> Request<S> {
        self
    }
}
