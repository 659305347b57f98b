//! The call settings a channel and a server share: middleware, compression, and the message
//! and header limits. They are declared once here, with their defaults, and the two builders
//! get the same setters (same names, same types) from [`call_setters`].

use std::sync::Arc;

use anygrpc_codec::{
    compression::CompressionRegistry,
    frame::{DEFAULT_MAX_RECV_MESSAGE_SIZE, DEFAULT_MAX_SEND_MESSAGE_SIZE},
    frame_pool::FramePool,
    metadata::DEFAULT_MAX_HEADER_LIST_SIZE,
};

use crate::{middleware::Middleware, Status};

/// What every call of a channel or a server is made with.
pub(crate) struct CallSettings {
    /// Wraps every call, the first outermost (interceptors among it).
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    /// The algorithms the side can decode and use.
    pub(crate) compression: Arc<CompressionRegistry>,
    /// What the side's messages are compressed with, if anything.
    pub(crate) send_compression: Option<&'static str>,
    /// The largest message received, after decompression.
    pub(crate) max_recv_message_size: usize,
    /// The largest message sent.
    pub(crate) max_send_message_size: usize,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, advertised to the peer.
    pub(crate) max_header_list_size: u32,
    /// The buffers of the side's large sent frames, kept for its next ones.
    pub(crate) frame_pool: FramePool,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            middleware: Vec::new(),
            compression: Arc::new(CompressionRegistry::default()),
            send_compression: None,
            max_recv_message_size: DEFAULT_MAX_RECV_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_SEND_MESSAGE_SIZE,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE as u32,
            frame_pool: FramePool::default(),
        }
    }
}

impl CallSettings {
    /// Refuses a send compression that the registry cannot make.
    pub(crate) fn check(&self) -> Result<(), Status> {
        match self.send_compression {
            Some(encoding) if self.compression.get(encoding).is_none() => {
                Err(Status::invalid_argument(format!(
                    "send compression {encoding:?} is not in the compression registry"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The setters of [`CallSettings`], for a builder that holds them in a field named `call`.
macro_rules! call_setters {
    () => {
        /// Adds a middleware that wraps every call (see [`middleware`](crate::middleware)).
        /// Middleware and interceptors run in the order added, the first outermost.
        pub fn middleware(mut self, middleware: impl $crate::middleware::Middleware) -> Self {
            self.call.middleware.push(::std::sync::Arc::new(middleware));
            self
        }

        /// Adds an interceptor: a middleware that sees only the call's head (to add or check
        /// metadata, or to refuse the call), run where it was added among the middleware: a
        /// channel's before the request is sent, a server's before the handler.
        pub fn interceptor(self, interceptor: impl $crate::interceptor::Interceptor) -> Self {
            self.middleware($crate::interceptor::Head(interceptor))
        }

        /// Adds an async interceptor (see [`interceptor`](Self::interceptor)).
        pub fn async_interceptor(
            self,
            interceptor: impl $crate::interceptor::AsyncInterceptor,
        ) -> Self {
            self.middleware($crate::interceptor::AsyncHead(interceptor))
        }

        /// The compression algorithms this side can decode and use. Default: gzip, deflate.
        pub fn compression_registry(
            mut self,
            registry: $crate::compression::CompressionRegistry,
        ) -> Self {
            self.call.compression = ::std::sync::Arc::new(registry);
            self
        }

        /// Compresses the messages this side sends with `encoding` (e.g. `"gzip"`), which
        /// must be in the [registry](Self::compression_registry). A server compresses only
        /// for a client that accepts the encoding. Default: none.
        pub fn send_compression(mut self, encoding: &'static str) -> Self {
            self.call.send_compression = Some(encoding);
            self
        }

        /// The largest message received (a channel's responses, a server's requests), after
        /// decompression. Default 4 MiB; a larger one fails the call with
        /// `RESOURCE_EXHAUSTED`.
        pub fn max_recv_message_size(mut self, bytes: usize) -> Self {
            self.call.max_recv_message_size = bytes;
            self
        }

        /// The largest message sent (a channel's requests, a server's responses); a larger
        /// one fails the call with `RESOURCE_EXHAUSTED`. Default: unlimited (4 GiB − 1, the
        /// wire's limit).
        pub fn max_send_message_size(mut self, bytes: usize) -> Self {
            self.call.max_send_message_size = bytes;
            self
        }

        /// `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest header list (metadata included)
        /// accepted from the peer. A channel also refuses to send request metadata larger
        /// than this. Default 16 KiB.
        pub fn max_header_list_size(mut self, bytes: u32) -> Self {
            self.call.max_header_list_size = bytes;
            self
        }

        /// How many bytes of sent frames' buffers this side keeps for its next messages, for
        /// frames of 64 KiB and more: a large message is then encoded into memory already
        /// mapped, not into fresh pages that fault in one by one. Shared by all its calls.
        /// Default 16 MiB; 0 keeps none.
        pub fn frame_pool_limit(mut self, bytes: usize) -> Self {
            self.call.frame_pool = ::anygrpc_codec::frame_pool::FramePool::new(bytes);
            self
        }
    };
}

pub(crate) use call_setters;
