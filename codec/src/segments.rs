//! A received message in the pieces it arrived in.
//!
//! HTTP/2 carries a message in DATA frames of at most 16 KiB by default, so a large message
//! arrives in many chunks. Joining them into one buffer costs a copy of the whole message and
//! a fresh allocation of its size (for a large one, freshly mapped pages, each faulted in on
//! first touch) only to have the codec copy the bytes again into the decoded value. A codec
//! that reads any [`Buf`] (prost does) decodes [`Segments`] where they lie instead.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame_pool::FramePool;

/// A message's bytes as a sequence of chunks, read through [`Buf`].
///
/// One chunk is the common case and allocates nothing; [`into_bytes`](Self::into_bytes) then
/// hands it back without a copy.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    first: Bytes,
    rest: VecDeque<Bytes>,
    remaining: usize,
    /// Where a copy that joins chunks takes its buffer, if it is large (see
    /// [`Deframer::set_pool`](crate::frame::Deframer::set_pool)).
    pool: Option<FramePool>,
}

impl Segments {
    /// The message held in one buffer.
    pub fn single(bytes: Bytes) -> Segments {
        Segments {
            remaining: bytes.len(),
            first: bytes,
            rest: VecDeque::new(),
            pool: None,
        }
    }

    /// Joins the chunks of copies of `pool`'s size or more into buffers from `pool`.
    pub(crate) fn set_pool(&mut self, pool: FramePool) {
        self.pool = Some(pool);
    }

    /// A buffer for a copy of `len` bytes: the pool's for a large one, if it has one free.
    fn buffer(&self, len: usize) -> BytesMut {
        match &self.pool {
            Some(pool) if len >= FramePool::MIN_POOLED => pool.take(len),
            _ => None,
        }
        .unwrap_or_else(|| BytesMut::with_capacity(len))
    }

    /// A copy made in [`buffer`](Self::buffer), frozen: a pooled buffer goes back to the pool
    /// when its last view is dropped.
    fn frozen(&self, copy: BytesMut) -> Bytes {
        match &self.pool {
            Some(pool) => pool.freeze(copy),
            None => copy.freeze(),
        }
    }

    /// Appends a chunk after those held.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.remaining += chunk.len();
        if self.first.is_empty() {
            self.first = chunk;
        } else {
            self.rest.push_back(chunk);
        }
    }

    /// Splits off the first `len` bytes, as views of the chunks they lie in.
    ///
    /// # Panics
    ///
    /// If fewer than `len` bytes are held, as `Bytes::split_to` does.
    pub fn split_to(&mut self, len: usize) -> Segments {
        assert!(
            len <= self.remaining,
            "split_to past the end of the segments"
        );
        let mut out = Segments::default();
        let mut need = len;
        while need > 0 {
            let n = need.min(self.first.len());
            out.push(if n == self.first.len() {
                std::mem::take(&mut self.first)
            } else {
                self.first.split_to(n)
            });
            need -= n;
            self.remaining -= n;
            if self.first.is_empty() {
                self.first = self.rest.pop_front().unwrap_or_default();
            }
        }
        out
    }

    /// How many chunks hold the bytes.
    pub fn chunk_count(&self) -> usize {
        usize::from(!self.first.is_empty()) + self.rest.len()
    }

    /// The bytes in one buffer: the chunk itself when there is one, else a copy of them all.
    pub fn into_bytes(mut self) -> Bytes {
        if self.rest.is_empty() {
            return self.first;
        }
        let mut all = self.buffer(self.remaining);
        all.extend_from_slice(&self.first);
        for chunk in self.rest.drain(..) {
            all.extend_from_slice(&chunk);
        }
        self.frozen(all)
    }
}

impl Buf for Segments {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        &self.first
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.remaining,
            "advance past the end of the segments"
        );
        self.remaining -= cnt;
        while cnt > 0 {
            let n = cnt.min(self.first.len());
            self.first.advance(n);
            cnt -= n;
            if self.first.is_empty() {
                self.first = self.rest.pop_front().unwrap_or_default();
            }
        }
    }

    /// Zero-copy when the `len` bytes lie within the current chunk (a `bytes` field of a
    /// message in one chunk stays a view of the received buffer).
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if len <= self.first.len() {
            let out = self.first.split_to(len);
            self.remaining -= len;
            if self.first.is_empty() {
                self.first = self.rest.pop_front().unwrap_or_default();
            }
            return out;
        }
        assert!(
            len <= self.remaining,
            "copy_to_bytes past the end of the segments"
        );
        let mut out = self.buffer(len);
        out.extend_from_slice(&self.first);
        let mut need = len - self.first.len();
        self.advance(self.first.len());
        while need > 0 {
            let n = need.min(self.first.len());
            out.extend_from_slice(&self.first[..n]);
            self.advance(n);
            need -= n;
        }
        self.frozen(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(parts: &[&'static [u8]]) -> Segments {
        let mut s = Segments::default();
        for part in parts {
            s.push(Bytes::from_static(part));
        }
        s
    }

    #[test]
    fn reads_across_chunks() {
        let mut s = segments(&[b"ab", b"", b"cde", b"f"]);
        assert_eq!((s.remaining(), s.chunk_count()), (6, 3));
        assert_eq!(s.chunk(), b"ab");
        s.advance(3);
        assert_eq!((s.chunk(), s.remaining()), (&b"de"[..], 3));
        assert_eq!(s.copy_to_bytes(3), Bytes::from_static(b"def"));
        assert_eq!((s.remaining(), s.chunk()), (0, &b""[..]));
    }

    #[test]
    fn split_to_takes_views_of_whole_and_partial_chunks() {
        let mut s = segments(&[b"abc", b"de", b"fgh"]);
        let head = s.split_to(6);
        assert_eq!((head.chunk_count(), head.remaining()), (3, 6));
        assert_eq!(head.into_bytes(), Bytes::from_static(b"abcdef"));
        assert_eq!((s.chunk(), s.remaining()), (&b"gh"[..], 2));
        assert_eq!(s.split_to(0).remaining(), 0);
        assert_eq!(s.split_to(2).into_bytes(), Bytes::from_static(b"gh"));
        assert_eq!(s.chunk_count(), 0);
    }

    #[test]
    fn copy_to_bytes_within_a_chunk_is_a_view() {
        let first = Bytes::from_static(b"abcdef");
        let mut s = Segments::single(first.clone());
        s.push(Bytes::from_static(b"gh"));
        let view = s.copy_to_bytes(4);
        assert_eq!(view.as_ptr(), first.as_ptr());
        assert_eq!(s.copy_to_bytes(4), Bytes::from_static(b"efgh"));
        assert_eq!(s.remaining(), 0);
    }

    #[test]
    fn into_bytes_joins_or_hands_back() {
        let one = Bytes::from_static(b"xyz");
        assert_eq!(
            Segments::single(one.clone()).into_bytes().as_ptr(),
            one.as_ptr()
        );
        assert_eq!(
            segments(&[b"x", b"yz"]).into_bytes(),
            Bytes::from_static(b"xyz")
        );
        assert!(Segments::default().into_bytes().is_empty());
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn advancing_past_the_end_panics_as_bytes_does() {
        segments(&[b"ab"]).advance(3);
    }
}
