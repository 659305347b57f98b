//! The gRPC wire layer, with no IO.
//!
//! Everything a gRPC peer parses or produces on the wire lives here as plain functions and
//! small state machines: [`Code`] and [`Status`], [`MetadataMap`], the `grpc-timeout` and
//! `grpc-message` encodings, the 5-byte length-prefixed [`frame`] format (and the
//! [`frame_pool`] that keeps large frames' buffers for reuse), [`compression`], the
//! [`Codec`] trait with its prost implementation, the request/response [`headers`] rules, and
//! the connection-level pieces h2 keeps to itself: HTTP/2 [`frames`] seen on the byte stream
//! [`keepalive`] (pings, and a server's ping policing), a server connection's [`lifetime`]
//! (idle and age limits) and the [`bdp`] flow-control window, on time passed in. Beside them sit
//! the two values every layer above shares: a connection's [`Address`] and the
//! connection-[`backoff`] schedule.
//! Bytes go in, values or a [`Status`] come out; nothing here reads a clock, touches a socket
//! or spawns a task, so every function can be fuzzed and tested directly.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod address;
pub mod backoff;
pub mod bdp;
mod code;
pub mod codec;
pub mod compression;
pub mod dns;
pub mod frame;
pub mod frame_pool;
pub mod frames;
pub mod headers;
pub mod http_connect;
pub mod keepalive;
pub mod lifetime;
pub mod message;
pub mod metadata;
mod names;
pub mod segments;
mod status;
pub mod timeout;

pub use address::{Address, Endpoint};
pub use backoff::{Backoff, BackoffConfig};
pub use code::Code;
pub use codec::{Codec, ProstCodec};
pub use metadata::MetadataMap;
pub use segments::Segments;
pub use status::Status;
