//! The gRPC interop test programs (`doc/interop-test-descriptions.md`) on anygrpc:
//! [`server`] implements `grpc.testing.TestService`, [`client`] runs the cases against any
//! server. Both binaries take the reference implementations' flags.

pub mod client;
pub mod flags;
pub mod server;

use std::marker::PhantomData;

use anygrpc::{Codec, Status};
use bytes::{Bytes, BytesMut};

/// Generated code for the `grpc.testing` protos.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/grpc.testing.rs"));
}

/// A protobuf codec that exposes per-message compression: it sends `(message, compress)` and
/// receives `(message, arrived_compressed)`, so the cases can compress exactly the messages
/// they must and check what the peer did.
pub struct Flagged<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Flagged<E, D> {
    /// The codec.
    pub const fn new() -> Self {
        Flagged(PhantomData)
    }
}

impl<E, D> Default for Flagged<E, D> {
    fn default() -> Self {
        Flagged::new()
    }
}

impl<E, D> Clone for Flagged<E, D> {
    fn clone(&self) -> Self {
        Flagged::new()
    }
}

impl<E, D> Codec for Flagged<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = (E, bool);
    type Decode = (D, bool);

    fn encode(&self, item: (E, bool), dst: &mut BytesMut) -> Result<(), Status> {
        item.0
            .encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }

    fn encoded_len(&self, item: &(E, bool)) -> usize {
        item.0.encoded_len()
    }

    fn decode(&self, src: Bytes) -> Result<(D, bool), Status> {
        self.decode_message(src, false)
    }

    fn decode_message(&self, src: Bytes, compressed: bool) -> Result<(D, bool), Status> {
        D::decode(src)
            .map(|m| (m, compressed))
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }

    fn compress(&self, item: &(E, bool)) -> bool {
        item.1
    }
}

/// A payload of `size` zero bytes.
pub fn zeros(size: i32) -> pb::Payload {
    pb::Payload {
        r#type: pb::PayloadType::Compressable as i32,
        body: vec![0; size.max(0) as usize],
    }
}

/// Reads a file named on the command line.
pub fn read_file(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))
}

/// The standard interop test CA and server certificate every gRPC implementation's interop
/// programs use (grpc/grpc's `src/core/tsi/test_creds`), built into the binaries: the client
/// trusts the CA with `--use_test_ca`, and the server presents the certificate by default.
pub mod certs {
    /// The interop test CA (`testca`).
    pub const CA: &[u8] = include_bytes!("../certs/ca.pem");
    /// The server certificate: `*.test.google.fr` (the suite's host override),
    /// `waterzooi.test.google.be`, `*.test.youtube.com` and 192.168.1.3; it expires
    /// 2030-03-16.
    pub const SERVER_CERT: &[u8] = include_bytes!("../certs/server1.pem");
    /// Its private key.
    pub const SERVER_KEY: &[u8] = include_bytes!("../certs/server1.key");
}
