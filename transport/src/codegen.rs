//! Items generated code refers to. Not a stable API for hand-written code.

pub use futures_core::future::BoxFuture;
pub use http::uri::PathAndQuery;
pub use std::{future::Future, sync::Arc};

pub use crate::{
    client::Grpc,
    server::{ServerCall, Service},
    Channel, Codec, IntoRequest, IntoStreamingRequest, ProstCodec, Request, Response,
    ResponseStream, Status, Streaming,
};
