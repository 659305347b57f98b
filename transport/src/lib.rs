//! anygrpc: a complete gRPC implementation on `h2` that runs on any async runtime.
//!
//! - [`Channel`] is the client: it resolves a target, connects lazily, reconnects with
//!   backoff, and carries unary, server-streaming, client-streaming and bidirectional calls.
//! - [`Server`] serves generated (or hand-written) [`Service`](server::Service)s over TCP or
//!   Unix sockets, with TLS optional.
//! - Calls carry [`Request`] / [`Response`] values with [`MetadataMap`] metadata; streams are
//!   [`Streaming`]; every failure is a [`Status`].
//!
//! Nothing here depends on a particular executor: sockets, timers and task spawning come from
//! an [`rt::Runtime`]. The default one (async-io) needs no tokio runtime and works from any
//! executor or a plain blocking `block_on`; enable the `tokio` feature to run on tokio.
//!
//! Stubs are generated at build time by the `anygrpc-build` crate.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

// Generated code inside this crate (channelz) names it `anygrpc`, as it does elsewhere.
extern crate self as anygrpc;

mod cancel;
pub mod channelz;
pub mod client;
mod connection;
mod context;
pub mod credentials;
#[cfg(feature = "dynamic")]
pub mod dynamic;
pub mod error_details;
pub mod health;
pub mod interceptor;
mod limits;
pub mod metrics;
pub mod middleware;
pub mod orca;
pub mod reflection;
mod request;
mod send;
pub mod server;
mod settings;
mod streaming;
mod sync;
#[cfg(feature = "tls")]
pub mod tls;

#[doc(hidden)]
pub mod codegen;

pub use anygrpc_codec::{
    codec::{self, BytesCodec},
    compression, Code, Codec, MetadataMap, ProstCodec, Status,
};
/// The `bytes` crate anygrpc's messages and [`compression::Compressor`]s are written in,
/// re-exported so a custom codec or compressor needs no version of its own to match.
///
/// ```
/// use anygrpc::{bytes::BytesMut, compression::Compressor};
///
/// /// An encoding that sends messages as they are.
/// #[derive(Debug)]
/// struct Stored;
///
/// impl Compressor for Stored {
///     fn name(&self) -> &'static str {
///         "x-stored"
///     }
///     fn compress(&self, src: &[u8], dst: &mut BytesMut) -> std::io::Result<()> {
///         dst.extend_from_slice(src);
///         Ok(())
///     }
///     fn decompress(&self, src: &[u8], dst: &mut BytesMut, limit: usize) -> std::io::Result<()> {
///         dst.extend_from_slice(&src[..src.len().min(limit + 1)]);
///         Ok(())
///     }
/// }
/// # let mut out = BytesMut::new();
/// # Stored.compress(b"hi", &mut out).unwrap();
/// # assert_eq!(&out[..], b"hi");
/// ```
pub use bytes;
pub use client::Channel;
pub use context::CallContext;
pub use request::{IntoRequest, IntoStreamingRequest, Request, Response};
pub use server::Server;
pub use streaming::Streaming;

/// Metadata helpers: keys, values and limits.
pub mod metadata {
    pub use anygrpc_codec::metadata::{
        check_binary_values, is_reserved, validate_key, InvalidMetadata, MetadataMap,
        MetadataValue, DEFAULT_MAX_HEADER_LIST_SIZE, RETRY_PUSHBACK,
    };
}

/// The runtime layer: the [`Runtime`](rt::Runtime) trait and the runtimes that ship.
pub mod rt {
    #[cfg(feature = "tokio")]
    pub use anygrpc_rt::TokioRuntime;
    #[cfg(feature = "async-io")]
    pub use anygrpc_rt::{block_on, AsyncIoRuntime};
    pub use anygrpc_rt::{
        box_io, default_runtime, spawn_blocking, Address, BoxFuture, BoxIo, Io, Listener, ReadBuf,
        Runtime, Sleep, TcpOptions,
    };
}

/// Load balancing: connectivity states, the connection backoff's settings, the policy and picker
/// traits for custom policies, ORCA load reports, and the built-in policies' builders.
///
/// The retry engine and the subchannel state machine the channel runs are not here: they are
/// the channel's own, configured through the service config.
pub mod lb {
    pub use anygrpc_codec::BackoffConfig;
    pub use anygrpc_lb::{
        flatten_endpoints, graceful_switch, least_request, orca, outlier_detection, pick_first,
        priority, ring_hash, round_robin, weighted_round_robin, weighted_target, CallEnd,
        CallObserver, ChannelControl, ConnectivityState, Endpoint, FixedPicker, LbMetric, LbPolicy,
        LbPolicyBuilder, OrcaLoadReport, Pick, PickInfo, Picker, PolicyConfig, PolicyRegistry,
        SubchannelId,
    };
}

/// Name resolution: target parsing and the resolver traits for custom schemes.
pub mod resolver {
    pub use anygrpc_resolver::*;
}

/// A server's stream of response messages.
pub type ResponseStream<T> =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<T, Status>> + Send + 'static>>;
