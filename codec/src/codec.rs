//! Message serialization: the [`Codec`] trait and its protobuf implementation.

use std::{fmt, marker::PhantomData};

use bytes::{Bytes, BytesMut};

use crate::{Segments, Status};

/// Turns messages into bytes and back.
///
/// A codec is shared by all calls of a method, so it takes `&self`; keep per-call state out of
/// it. Encoding appends to a buffer the framer owns, so a message is serialized straight into
/// the frame that carries it.
pub trait Codec: Send + Sync + 'static {
    /// The type sent.
    type Encode: Send + 'static;
    /// The type received.
    type Decode: Send + 'static;

    /// Appends the serialized form of `item` to `dst`.
    fn encode(&self, item: Self::Encode, dst: &mut BytesMut) -> Result<(), Status>;

    /// The serialized size of `item`, if cheaply known, so the framer can allocate a frame
    /// once, at its final size. The default, 0, means unknown (the buffer grows as needed).
    fn encoded_len(&self, item: &Self::Encode) -> usize {
        let _ = item;
        0
    }

    /// Parses one received message. A malformed message is `INTERNAL`.
    fn decode(&self, src: Bytes) -> Result<Self::Decode, Status>;

    /// Parses one received message, told whether it arrived compressed (its flag on the
    /// wire). The default ignores the flag; a codec over a wrapper type can pass it on (the
    /// interop tests check that peers compress exactly the messages they were asked to).
    fn decode_message(&self, src: Bytes, compressed: bool) -> Result<Self::Decode, Status> {
        let _ = compressed;
        self.decode(src)
    }

    /// Parses one received message from the chunks it arrived in. The default joins them
    /// (a copy only when there are several) and calls [`decode_message`](Self::decode_message);
    /// a codec that reads any [`Buf`](bytes::Buf) decodes them where they lie, saving a copy
    /// of every message larger than a DATA frame.
    fn decode_segments(&self, src: Segments, compressed: bool) -> Result<Self::Decode, Status> {
        self.decode_message(src.into_bytes(), compressed)
    }

    /// Per-message compression: whether `item` should be compressed when the call has a send
    /// compression. The default compresses every message; a codec over a wrapper type can
    /// decide message by message (already-compressed media, tiny messages).
    fn compress(&self, item: &Self::Encode) -> bool {
        let _ = item;
        true
    }
}

/// The protobuf codec, using prost.
pub struct ProstCodec<E, D> {
    _types: PhantomData<fn(E) -> D>,
}

impl<E, D> ProstCodec<E, D> {
    /// A codec sending `E` and receiving `D`.
    pub const fn new() -> Self {
        ProstCodec {
            _types: PhantomData,
        }
    }
}

impl<E, D> Default for ProstCodec<E, D> {
    fn default() -> Self {
        ProstCodec::new()
    }
}

impl<E, D> Clone for ProstCodec<E, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E, D> Copy for ProstCodec<E, D> {}

impl<E, D> fmt::Debug for ProstCodec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProstCodec")
    }
}

impl<E, D> Codec for ProstCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;

    fn encode(&self, item: E, dst: &mut BytesMut) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("failed to encode message: {e}")))
    }

    fn encoded_len(&self, item: &E) -> usize {
        item.encoded_len()
    }

    fn decode(&self, src: Bytes) -> Result<D, Status> {
        prost_decode(src)
    }

    fn decode_segments(&self, src: Segments, _: bool) -> Result<D, Status> {
        prost_decode(src)
    }
}

fn prost_decode<D: prost::Message + Default>(src: impl bytes::Buf) -> Result<D, Status> {
    D::decode(src).map_err(|e| Status::internal(format!("failed to decode message: {e}")))
}

/// A codec that passes raw bytes through, for proxies and dynamic calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;

    fn encode(&self, item: Bytes, dst: &mut BytesMut) -> Result<(), Status> {
        dst.extend_from_slice(&item);
        Ok(())
    }

    fn encoded_len(&self, item: &Bytes) -> usize {
        item.len()
    }

    fn decode(&self, src: Bytes) -> Result<Bytes, Status> {
        Ok(src)
    }
}
