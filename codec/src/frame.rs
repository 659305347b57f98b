//! The gRPC message framing: each message is a 1-byte compressed flag, a 4-byte big-endian
//! length, then the payload (`doc/PROTOCOL-HTTP2.md`, "Length-Prefixed-Message").
//!
//! [`Encoder`] produces one framed message as a single [`Bytes`]; [`Deframer`] reassembles
//! messages from DATA chunks of any size without copying them: a message within one chunk is a
//! view of it, and one that spans chunks is the [`Segments`] it arrived in (or one buffer,
//! copied once, for a caller that wants it so).
//! The declared length is checked against the receive limit as soon as the 5-byte prefix is
//! read, before any payload is buffered or allocated.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{
    codec::Codec,
    compression::{self, Compressor},
    frame_pool::FramePool,
    segments::Segments,
    Status,
};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 5;

/// The default limit on a received message (after decompression): 4 MiB.
pub const DEFAULT_MAX_RECV_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The default limit on a sent message: unlimited, as in grpc-go and the C-core (the wire
/// format caps it at 4 GiB − 1).
pub const DEFAULT_MAX_SEND_MESSAGE_SIZE: usize = u32::MAX as usize;

/// Encodes messages into framed [`Bytes`], reusing one buffer across messages.
#[derive(Debug)]
pub struct Encoder {
    buf: BytesMut,
    scratch: BytesMut,
    compressor: Option<Arc<dyn Compressor>>,
    max_message_size: usize,
    /// Where a large frame's buffer comes from and goes back to, if anywhere.
    pool: Option<FramePool>,
}

impl Encoder {
    /// An encoder that compresses with `compressor` (when a message asks for it) and rejects
    /// messages larger than `max_message_size`.
    pub fn new(compressor: Option<Arc<dyn Compressor>>, max_message_size: usize) -> Encoder {
        Encoder {
            buf: BytesMut::new(),
            scratch: BytesMut::new(),
            compressor,
            max_message_size,
            pool: None,
        }
    }

    /// Encodes large frames into `pool`'s buffers, and gives their buffers back to it once
    /// sent (see [`FramePool`]).
    pub fn with_pool(mut self, pool: FramePool) -> Encoder {
        self.pool = Some(pool);
        self
    }

    /// The compressor in use, if any: its name is the call's `grpc-encoding`.
    pub fn compressor(&self) -> Option<&Arc<dyn Compressor>> {
        self.compressor.as_ref()
    }

    /// Encodes one message. It is compressed when `compress` is set (the call has a send
    /// compression), the encoder has a compressor, and the codec's
    /// [`Codec::compress`] agrees for this message.
    ///
    /// A message over the send limit is `RESOURCE_EXHAUSTED`; a codec failure is passed on.
    pub fn encode<C: Codec>(
        &mut self,
        codec: &C,
        item: C::Encode,
        compress: bool,
    ) -> Result<Bytes, Status> {
        self.append(codec, item, compress)?;
        Ok(self.take())
    }

    /// Encodes one message after those already pending, so that several messages can go out
    /// in one write (see [`take`](Self::take)). Errors as [`encode`](Self::encode); on error
    /// the pending messages are kept and this one is dropped.
    pub fn append<C: Codec>(
        &mut self,
        codec: &C,
        item: C::Encode,
        compress: bool,
    ) -> Result<(), Status> {
        let compress = compress && codec.compress(&item);
        let start = self.buf.len();
        let body = start + HEADER_LEN;
        let len = HEADER_LEN + codec.encoded_len(&item);
        if let Some(pool) = &self.pool {
            if len >= FramePool::MIN_POOLED && self.buf.capacity() - start < len {
                if let Some(buffer) = pool.take(start + len) {
                    let pending = std::mem::replace(&mut self.buf, buffer);
                    self.buf.extend_from_slice(&pending);
                }
            }
        }
        self.buf.reserve(len);
        self.buf.put_bytes(0, HEADER_LEN);
        codec
            .encode(item, &mut self.buf)
            .inspect_err(|_| self.buf.truncate(start))?;
        let len = self.buf.len() - body;
        if len > self.max_message_size.min(u32::MAX as usize) {
            self.buf.truncate(start);
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is larger than the send limit ({} bytes)",
                self.max_message_size
            )));
        }
        let mut flag = 0u8;
        if let (true, Some(compressor)) = (compress, &self.compressor) {
            self.scratch.clear();
            if let Err(e) = compressor.compress(&self.buf[body..], &mut self.scratch) {
                self.buf.truncate(start);
                return Err(Status::internal(format!("compression failed: {e}")));
            }
            self.buf.truncate(body);
            self.buf.extend_from_slice(&self.scratch);
            flag = 1;
        }
        let len = (self.buf.len() - body) as u32;
        self.buf[start] = flag;
        self.buf[start + 1..body].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Bytes of encoded messages not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes every pending message as one buffer. The buffer moves out whole: a frame
    /// allocated at its final size becomes `Bytes` with no further allocation.
    pub fn take(&mut self) -> Bytes {
        let frame = std::mem::take(&mut self.buf);
        match &self.pool {
            Some(pool) => pool.freeze(frame),
            None => frame.freeze(),
        }
    }
}

/// One framed message as received, its payload in one buffer ([`Bytes`]) or in the pieces it
/// arrived in ([`Segments`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<D = Bytes> {
    /// The compressed flag: how the message arrived.
    pub compressed: bool,
    /// The payload: from [`Deframer::next_frame`] as on the wire, from
    /// [`Deframer::next_message`] decompressed.
    pub data: D,
}

impl Frame<Segments> {
    /// The frame with its payload in one buffer (see [`Segments::into_bytes`]).
    pub fn joined(self) -> Frame {
        Frame {
            compressed: self.compressed,
            data: self.data.into_bytes(),
        }
    }
}

/// Reassembles framed messages from DATA chunks.
#[derive(Debug)]
pub struct Deframer {
    /// The received bytes not yet taken as messages.
    buffered: Segments,
    header: Option<(bool, usize)>,
    max_message_size: usize,
    /// Where a large message spread over several chunks is joined, when it is.
    pool: Option<FramePool>,
    /// A large message being copied into one of the pool's free buffers as its chunks arrive.
    joining: Option<BytesMut>,
}

impl Deframer {
    /// A deframer that rejects messages larger than `max_message_size`.
    pub fn new(max_message_size: usize) -> Deframer {
        Deframer {
            buffered: Segments::default(),
            header: None,
            max_message_size,
            pool: None,
            joining: None,
        }
    }

    /// Joins large messages that arrive in several chunks in buffers from `pool` (each such
    /// copy otherwise maps fresh memory, and its pages fault in on first touch). A message
    /// whose length is known while the pool has a free buffer that holds it is copied into
    /// that buffer chunk by chunk as it arrives, as the reads of the rest go on; one that
    /// arrives whole, or finds no free buffer, is joined when a codec needs it in one buffer
    /// ([`Segments`]). Only free buffers are taken early, so a peer that declares large
    /// messages and sends nothing makes the deframer allocate nothing.
    pub fn set_pool(&mut self, pool: FramePool) {
        self.pool = Some(pool);
    }

    /// Adds received bytes.
    pub fn push(&mut self, mut chunk: Bytes) {
        if let (Some(joined), Some((_, len))) = (self.joining.as_mut(), self.header) {
            let n = (len - joined.len()).min(chunk.len());
            joined.extend_from_slice(&chunk.split_to(n));
        }
        self.buffered.push(chunk);
    }

    /// Whether no partial message is buffered: at end of stream, anything left is a truncated
    /// message.
    pub fn is_empty(&self) -> bool {
        !self.buffered.has_remaining() && self.header.is_none()
    }

    /// The next complete frame, if one is buffered.
    ///
    /// A flag other than 0 or 1 is `INTERNAL`; a declared length over the limit is
    /// `RESOURCE_EXHAUSTED`. After an error the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Status> {
        Ok(self.next_frame_segments()?.map(Frame::joined))
    }

    /// [`next_frame`](Self::next_frame), the payload in the chunks it arrived in.
    pub fn next_frame_segments(&mut self) -> Result<Option<Frame<Segments>>, Status> {
        let (compressed, len) = match self.header {
            Some(header) => header,
            None => {
                if self.buffered.remaining() < HEADER_LEN {
                    return Ok(None);
                }
                let mut prefix = [0u8; HEADER_LEN];
                self.buffered.copy_to_slice(&mut prefix);
                let compressed = match prefix[0] {
                    0 => false,
                    1 => true,
                    flag => {
                        return Err(Status::internal(format!(
                            "invalid message compression flag {flag} (must be 0 or 1)"
                        )))
                    }
                };
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                if len > self.max_message_size {
                    return Err(Status::resource_exhausted(format!(
                        "received message of {len} bytes is larger than the limit ({} bytes)",
                        self.max_message_size
                    )));
                }
                self.header = Some((compressed, len));
                (compressed, len)
            }
        };
        if let Some(pool) = self.pool.as_ref() {
            if self.joining.is_none()
                && len >= FramePool::MIN_POOLED
                && self.buffered.remaining() < len
            {
                // What has arrived is all this message's: copy it now, the rest as it comes.
                if let Some(mut joined) = pool.take(len) {
                    while self.buffered.has_remaining() {
                        let chunk = self.buffered.chunk();
                        let n = chunk.len();
                        joined.extend_from_slice(chunk);
                        self.buffered.advance(n);
                    }
                    self.joining = Some(joined);
                }
            }
            if let Some(joined) = self.joining.take_if(|joined| joined.len() == len) {
                self.header = None;
                let data = Segments::single(pool.freeze(joined));
                return Ok(Some(Frame { compressed, data }));
            }
        }
        if self.joining.is_some() || self.buffered.remaining() < len {
            return Ok(None);
        }
        self.header = None;
        let mut data = self.buffered.split_to(len);
        if let Some(pool) = self.pool.as_ref().filter(|_| len >= FramePool::MIN_POOLED) {
            if data.chunk_count() > 1 {
                data.set_pool(pool.clone());
            }
        }
        Ok(Some(Frame { compressed, data }))
    }

    /// The next complete message, decompressed with `compressor` when its flag says so.
    ///
    /// A compressed message on a call with no `grpc-encoding` is `INTERNAL`; decompression is
    /// bounded by the same limit as the wire size.
    pub fn next_message(
        &mut self,
        compressor: Option<&dyn Compressor>,
    ) -> Result<Option<Frame>, Status> {
        Ok(self.next_message_segments(compressor)?.map(Frame::joined))
    }

    /// [`next_message`](Self::next_message), the payload of an uncompressed message in the
    /// chunks it arrived in (a decompressed one is always one buffer).
    pub fn next_message_segments(
        &mut self,
        compressor: Option<&dyn Compressor>,
    ) -> Result<Option<Frame<Segments>>, Status> {
        let Some(frame) = self.next_frame_segments()? else {
            return Ok(None);
        };
        if !frame.compressed {
            return Ok(Some(frame));
        }
        let Some(compressor) = compressor else {
            return Err(Status::internal(
                "compressed message received but the call has no grpc-encoding",
            ));
        };
        let mut out = BytesMut::new();
        let wire = frame.data.into_bytes();
        compression::decompress(compressor, &wire, &mut out, self.max_message_size)?;
        Ok(Some(Frame {
            compressed: true,
            data: Segments::single(out.freeze()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec::BytesCodec as Raw, compression::Gzip, Code};

    fn frames(messages: &[&[u8]]) -> Bytes {
        let mut enc = Encoder::new(None, usize::MAX);
        let mut all = BytesMut::new();
        for m in messages {
            all.extend_from_slice(&enc.encode(&Raw, Bytes::copy_from_slice(m), false).unwrap());
        }
        all.freeze()
    }

    #[test]
    fn reassembles_across_every_chunk_boundary() {
        let messages: [&[u8]; 4] = [b"hello", b"", b"world!", &[7u8; 300]];
        let wire = frames(&messages);
        for chunk in 1..=wire.len() {
            let mut d = Deframer::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(Bytes::copy_from_slice(piece));
                while let Some(m) = d.next_message(None).unwrap() {
                    assert!(!m.compressed);
                    got.push(m.data);
                }
            }
            assert!(d.is_empty());
            let expected: Vec<Bytes> = messages.iter().map(|m| Bytes::copy_from_slice(m)).collect();
            assert_eq!(got, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_message_over_many_chunks_is_handed_over_in_them() {
        let body = vec![9u8; 1000];
        let wire = frames(&[&body, b"next"]);
        let mut d = Deframer::new(4096);
        for piece in wire.chunks(100) {
            d.push(Bytes::copy_from_slice(piece));
        }
        let first = d.next_message_segments(None).unwrap().unwrap();
        // 1000 bytes from offset 5 of 100-byte chunks: 95, 9 x 100, then 5.
        assert_eq!(first.data.chunk_count(), 11);
        assert_eq!(first.data.into_bytes(), body);
        let next = d.next_message_segments(None).unwrap().unwrap();
        assert_eq!(next.data.into_bytes(), Bytes::from_static(b"next"));
        assert!(d.is_empty());
    }

    #[test]
    fn single_chunk_messages_are_zero_copy() {
        let wire = frames(&[b"abcdef"]);
        let mut d = Deframer::new(1024);
        d.push(wire.clone());
        let m = d.next_message(None).unwrap().unwrap();
        assert_eq!(m.data.as_ptr(), wire[HEADER_LEN..].as_ptr());
    }

    #[test]
    fn length_checked_before_payload_arrives() {
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(d.next_frame().unwrap_err().code(), Code::ResourceExhausted);
    }

    #[test]
    fn rejects_bad_flags() {
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[2, 0, 0, 0, 0]));
        assert_eq!(d.next_frame().unwrap_err().code(), Code::Internal);
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(d.next_message(None).unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn partial_message_is_not_empty() {
        let mut d = Deframer::new(10);
        d.push(Bytes::from_static(&[0, 0, 0]));
        assert!(d.next_frame().unwrap().is_none());
        assert!(!d.is_empty());
    }

    #[test]
    fn compressed_round_trip_and_send_limit() {
        let mut enc = Encoder::new(Some(Arc::new(Gzip::default())), 100);
        let wire = enc
            .encode(&Raw, Bytes::from(vec![b'a'; 100]), true)
            .unwrap();
        assert_eq!(wire[0], 1);
        let mut d = Deframer::new(100);
        d.push(wire);
        let message = d.next_message(Some(&Gzip::default())).unwrap().unwrap();
        assert!(message.compressed);
        assert_eq!(message.data, vec![b'a'; 100]);
        let err = enc
            .encode(&Raw, Bytes::from(vec![0; 101]), true)
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let plain = enc.encode(&Raw, Bytes::from_static(b"x"), false).unwrap();
        assert_eq!(&plain[..], &[0, 0, 0, 0, 1, b'x']);
    }

    /// Compresses only messages that start with `z`.
    #[derive(Debug, Clone, Copy)]
    struct Picky;

    impl Codec for Picky {
        type Encode = Bytes;
        type Decode = Bytes;
        fn encode(&self, item: Bytes, dst: &mut BytesMut) -> Result<(), Status> {
            Raw.encode(item, dst)
        }
        fn decode(&self, src: Bytes) -> Result<Bytes, Status> {
            Raw.decode(src)
        }
        fn compress(&self, item: &Bytes) -> bool {
            item.first() == Some(&b'z')
        }
    }

    #[test]
    fn appended_messages_go_out_together() {
        let mut enc = Encoder::new(Some(Arc::new(Gzip::default())), 10);
        enc.append(&Raw, Bytes::from_static(b"one"), false).unwrap();
        enc.append(&Raw, Bytes::from_static(b"two"), true).unwrap();
        let err = enc
            .append(&Raw, Bytes::from(vec![0; 11]), false)
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            enc.pending() > 0,
            "a rejected message leaves the others pending"
        );
        let mut d = Deframer::new(100);
        d.push(enc.take());
        assert_eq!(enc.pending(), 0);
        assert_eq!(
            &d.next_message(Some(&Gzip::default()))
                .unwrap()
                .unwrap()
                .data[..],
            b"one"
        );
        let two = d.next_message(Some(&Gzip::default())).unwrap().unwrap();
        assert_eq!((&two.data[..], two.compressed), (&b"two"[..], true));
        assert!(d.next_message(None).unwrap().is_none());
    }

    #[test]
    fn a_large_frame_is_encoded_into_a_pooled_buffer_and_given_back() {
        let pool = FramePool::new(1 << 20);
        let mut enc = Encoder::new(None, usize::MAX).with_pool(pool.clone());
        let first = enc
            .encode(&Raw, Bytes::from(vec![1; 100_000]), false)
            .unwrap();
        let pointer = first.as_ptr();
        drop(first);
        assert!(pool.held() >= 100_005);
        enc.append(&Raw, Bytes::from_static(b"small"), false)
            .unwrap();
        enc.append(&Raw, Bytes::from(vec![2; 90_000]), false)
            .unwrap();
        let both = enc.take();
        assert_eq!(
            both.as_ptr(),
            pointer,
            "the pooled buffer holds both messages"
        );
        assert_eq!(pool.held(), 0);
        let mut d = Deframer::new(1 << 20);
        d.push(both.clone());
        assert_eq!(&d.next_message(None).unwrap().unwrap().data[..], b"small");
        assert_eq!(d.next_message(None).unwrap().unwrap().data, vec![2; 90_000]);
        drop((both, d));
        assert!(
            pool.held() >= 100_005,
            "back once the deframer's views are gone"
        );
    }

    #[test]
    fn codec_decides_compression_per_message() {
        let mut enc = Encoder::new(Some(Arc::new(Gzip::default())), usize::MAX);
        let zipped = enc
            .encode(&Picky, Bytes::from_static(b"zzzz"), true)
            .unwrap();
        let plain = enc
            .encode(&Picky, Bytes::from_static(b"aaaa"), true)
            .unwrap();
        let off = enc
            .encode(&Picky, Bytes::from_static(b"zzzz"), false)
            .unwrap();
        assert_eq!((zipped[0], plain[0], off[0]), (1, 0, 0));
        let mut d = Deframer::new(100);
        for wire in [zipped, plain, off] {
            d.push(wire);
        }
        for (data, compressed) in [(&b"zzzz"[..], true), (b"aaaa", false), (b"zzzz", false)] {
            let message = d.next_message(Some(&Gzip::default())).unwrap().unwrap();
            assert_eq!((&message.data[..], message.compressed), (data, compressed));
        }
    }

    /// A pool holding one free buffer of `capacity` bytes.
    fn pool_with_one(capacity: usize) -> FramePool {
        let pool = FramePool::default();
        drop(pool.freeze(BytesMut::with_capacity(capacity)));
        assert_eq!(pool.held(), capacity);
        pool
    }

    /// `message` framed, cut into chunks of `chunk` bytes.
    fn chunks(message: &[u8], chunk: usize) -> Vec<Bytes> {
        frames(&[message])
            .chunks(chunk)
            .map(Bytes::copy_from_slice)
            .collect()
    }

    #[test]
    fn a_large_message_is_joined_in_a_free_buffer_as_it_arrives() {
        let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let pool = pool_with_one(256 * 1024);
        let mut d = Deframer::new(usize::MAX);
        d.set_pool(pool.clone());
        let mut parts = chunks(&message, 16 * 1024).into_iter();
        d.push(parts.next().unwrap());
        assert!(d.next_message_segments(None).unwrap().is_none());
        assert_eq!(pool.held(), 0, "the free buffer is being filled");
        for part in parts {
            assert!(!d.is_empty());
            d.push(part);
        }
        let frame = d.next_message_segments(None).unwrap().unwrap();
        assert_eq!(frame.data.chunk_count(), 1);
        assert_eq!(frame.data.into_bytes(), message);
        assert_eq!(pool.held(), 256 * 1024, "the buffer went back once dropped");
        assert!(d.is_empty());
    }

    #[test]
    fn bytes_after_a_joined_message_start_the_next() {
        let first: Vec<u8> = vec![7; 100_000];
        let mut wire = frames(&[&first, b"next"]).to_vec();
        let tail = wire.split_off(70_000);
        let pool = pool_with_one(128 * 1024);
        let mut d = Deframer::new(usize::MAX);
        d.set_pool(pool);
        d.push(Bytes::from(wire));
        assert!(d.next_message_segments(None).unwrap().is_none());
        d.push(Bytes::from(tail));
        let one = d.next_message_segments(None).unwrap().unwrap();
        assert_eq!(one.data.into_bytes(), first);
        let two = d.next_message_segments(None).unwrap().unwrap();
        assert_eq!(two.data.into_bytes(), &b"next"[..]);
        assert!(d.is_empty());
    }

    #[test]
    fn without_a_free_buffer_a_message_is_joined_when_read_and_its_buffer_kept() {
        let message = vec![3u8; 100_000];
        let pool = FramePool::default();
        let mut d = Deframer::new(usize::MAX);
        d.set_pool(pool.clone());
        for part in chunks(&message, 16 * 1024) {
            d.push(part);
            assert_eq!(pool.held(), 0, "a declared length allocates nothing");
        }
        let mut frame = d.next_message_segments(None).unwrap().unwrap();
        assert!(frame.data.chunk_count() > 1);
        let joined = frame.data.copy_to_bytes(message.len());
        assert_eq!(joined, message);
        drop(joined);
        assert!(
            pool.held() >= message.len(),
            "the join's buffer is kept for the next"
        );
    }

    #[test]
    fn a_declared_large_message_that_never_comes_takes_nothing_and_is_truncated() {
        let pool = FramePool::default();
        let mut d = Deframer::new(usize::MAX);
        d.set_pool(pool.clone());
        d.push(Bytes::from_static(&[0, 0, 0x10, 0, 0]));
        assert!(d.next_message_segments(None).unwrap().is_none());
        assert_eq!(pool.held(), 0);
        assert!(
            !d.is_empty(),
            "a partial message at end of stream is truncation"
        );
    }
}
