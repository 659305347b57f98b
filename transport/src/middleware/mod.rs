//! Middleware: code that wraps a whole call, on either side, the way grpc-go's interceptors
//! wrap a handler or an invoker and grpc-java's wrap a `ClientCall` or a `ServerCall`.
//!
//! A [`Middleware`] is given the [`Call`] (its [`CallHead`] and its request [`Messages`]) and
//! the [`Next`] step, and returns the call's response: usually it changes the call, runs
//! `next`, and changes what comes back. So one middleware sees, and may change, the request
//! head, every request message, the response's header metadata, every response message, the
//! trailers and the status. It may also end the call without calling `next` (an
//! authorization check, a cache), or call `next` more than once on the client (a retry with a
//! fresh token). It works the same for all four kinds of call; [`CallKind`] says which.
//!
//! Messages are the encoded bytes the codec makes and reads: a middleware that needs the
//! typed value decodes it (`HelloRequest::decode(bytes)`), and one that only counts, times or
//! logs never pays for that.
//!
//! # Order
//!
//! Both builders take [`middleware`](crate::server::Server::middleware) (and the head-only
//! [`interceptor`](crate::server::Server::interceptor) and
//! [`async_interceptor`](crate::server::Server::async_interceptor), which are middleware too)
//! in one list, and run them in the order added: the first added is the outermost. It sees the
//! call first and its response last. On a client the chain wraps the whole call: the service
//! config's timeout, retries and hedging happen inside it, under the deadline it sees. On a
//! server it runs once the call is routed, racing the client's cancellation and the deadline
//! as the handler does.
//!
//! # Cost
//!
//! With no middleware a call takes its direct path and pays nothing for this module. With
//! one, each call's chain is a boxed future, each response message is encoded to its own
//! buffer before it is framed, and a streaming side's messages go through one boxed stream.
//!
//! [`CallHead`]: crate::interceptor::CallHead

mod messages;

use std::{sync::Arc, time::Instant};

use anygrpc_codec::Codec;
use anygrpc_rt::{Address, BoxFuture};
use bytes::{Bytes, BytesMut};

pub use self::messages::Messages;
use crate::{cancel::CancelToken, MetadataMap, Response, Status};

/// What the call returns to a middleware: the response's header metadata, its messages (whose
/// end carries the trailers and the status), or the status of a call that failed before it
/// had a response.
pub type Reply = Result<Response<Messages>, Status>;

/// Code that wraps every call of a channel or a server; see the [module docs](self).
pub trait Middleware: Send + Sync + 'static {
    /// Handles `call`: usually by running `next.run(call)` and returning what it returns,
    /// changed as the middleware wants.
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply>;
}

/// The kind of a call: which of its sides carry a stream of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// One request message, one response message.
    Unary,
    /// A stream of requests, one response message.
    ClientStreaming,
    /// One request message, a stream of responses.
    ServerStreaming,
    /// Streams both ways.
    BidiStreaming,
}

impl CallKind {
    /// Whether the client sends a stream of messages.
    pub fn client_streams(self) -> bool {
        matches!(self, CallKind::ClientStreaming | CallKind::BidiStreaming)
    }

    /// Whether the server answers with a stream of messages.
    pub fn server_streams(self) -> bool {
        matches!(self, CallKind::ServerStreaming | CallKind::BidiStreaming)
    }
}

/// What a middleware (and an interceptor) sees of a call's head. A client middleware that
/// runs a call again clones the head (and keeps the request messages) before it runs `next`.
#[derive(Debug, Clone)]
pub struct CallHead {
    pub(crate) path: http::uri::PathAndQuery,
    pub(crate) kind: CallKind,
    pub(crate) metadata: MetadataMap,
    pub(crate) extensions: http::Extensions,
    pub(crate) deadline: Option<Instant>,
    pub(crate) remote_addr: Option<Address>,
    /// Server: the `:authority` the client called.
    pub(crate) authority: Option<http::uri::Authority>,
    /// Client: the call options of its request that travel through the chain untouched.
    pub(crate) client: ClientOptions,
}

/// A client request's options that middleware does not see but the call needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientOptions {
    pub(crate) cancel: Option<CancelToken>,
    pub(crate) wait_for_ready: Option<bool>,
    pub(crate) credentials: Option<Arc<dyn crate::credentials::CallCredentials>>,
}

impl CallHead {
    /// The method path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        self.path.path()
    }

    /// Which of the call's sides stream.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// The call's metadata: client, what will be sent; server, what was received.
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Mutable metadata.
    pub fn metadata_mut(&mut self) -> &mut MetadataMap {
        &mut self.metadata
    }

    /// Server: values for the handler to find in [`Request::extensions`](crate::Request).
    /// Client: the request's extensions.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Mutable extensions.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// The call's deadline, if any. On a client it is the request's timeout (from when the
    /// call started) or its context's deadline, whichever comes first; the method's service
    /// config may shorten it further inside the chain.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Client: makes the call end by `deadline` (or keeps no deadline, with `None`).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Server: the peer's address.
    pub fn remote_addr(&self) -> Option<&Address> {
        self.remote_addr.as_ref()
    }

    /// Server: the `:authority` the client called.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(http::uri::Authority::as_str)
    }
}

/// A call as middleware sees it: its head and its request messages.
#[derive(Debug)]
pub struct Call {
    head: CallHead,
    messages: Messages,
}

impl Call {
    pub(crate) fn new(head: CallHead, messages: Messages) -> Call {
        Call { head, messages }
    }

    /// The call's head.
    pub fn head(&self) -> &CallHead {
        &self.head
    }

    /// The call's head, to change.
    pub fn head_mut(&mut self) -> &mut CallHead {
        &mut self.head
    }

    /// The method path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The call's request messages (on the server, read from the client as they arrive).
    pub fn messages_mut(&mut self) -> &mut Messages {
        &mut self.messages
    }

    /// Replaces the request messages with `f` of them (for example
    /// [`Messages::inspect`]).
    pub fn map_messages(self, f: impl FnOnce(Messages) -> Messages) -> Call {
        Call {
            head: self.head,
            messages: f(self.messages),
        }
    }

    /// Splits into the head and the messages.
    pub fn into_parts(self) -> (CallHead, Messages) {
        (self.head, self.messages)
    }

    /// A call from a head and messages (a client middleware that read the request messages
    /// and calls `next` with them again).
    pub fn from_parts(head: CallHead, messages: Messages) -> Call {
        Call { head, messages }
    }
}

/// The rest of the chain after a middleware: the next middleware, or the call itself.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    endpoint: &'a dyn Endpoint,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("middleware_left", &self.rest.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Next<'a> {
    /// Runs the rest of the chain on `call`. A client middleware may run it more than once
    /// (each run is a new call to the server); on a server the handler runs at most once, and
    /// a second run is `INTERNAL`.
    pub fn run(self, call: Call) -> BoxFuture<'a, Reply> {
        match self.rest.split_first() {
            Some((first, rest)) => first.call(
                call,
                Next {
                    rest,
                    endpoint: self.endpoint,
                },
            ),
            None => self.endpoint.call(call),
        }
    }
}

/// The end of a chain: the handler (server) or the call on the wire (client).
pub(crate) trait Endpoint: Send + Sync {
    fn call(&self, call: Call) -> BoxFuture<'_, Reply>;
}

/// Runs `call` through `chain` to `endpoint`.
pub(crate) fn run<'a>(
    chain: &'a [Arc<dyn Middleware>],
    endpoint: &'a dyn Endpoint,
    call: Call,
) -> BoxFuture<'a, Reply> {
    Next {
        rest: chain,
        endpoint,
    }
    .run(call)
}

/// One message, encoded into a buffer of its own.
pub(crate) fn encode<C: Codec>(codec: &C, message: C::Encode) -> Result<Bytes, Status> {
    let mut buf = BytesMut::with_capacity(codec.encoded_len(&message));
    codec.encode(message, &mut buf)?;
    Ok(buf.freeze())
}
