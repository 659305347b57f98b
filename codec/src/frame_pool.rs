//! Large frame buffers, kept for the next large message.
//!
//! A framed message goes to h2 as one [`Bytes`], and h2 drops it once written. For a large
//! message that buffer is a fresh allocation of the message's size, and the allocator hands
//! such memory back to the kernel soon after it is freed, so the next one is mapped afresh and
//! every page of it faults in on first touch: for a 1 MiB echo, a few hundred microseconds of
//! page faults per call, as much as the copies themselves. A [`FramePool`] keeps the buffers
//! of frames of at least [`FramePool::MIN_POOLED`] bytes when h2 lets go of them, up to a
//! limit of bytes, and the next large frame is encoded into one of them.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

/// Buffers of sent frames, returned when the last view of a frame is dropped and reused by
/// the next large frame. Clones share one pool; a channel's or a server's encoders all use
/// theirs.
#[derive(Debug, Clone)]
pub struct FramePool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The most bytes of free buffers kept; fixed when the pool is made.
    limit: usize,
    free: Mutex<Free>,
}

#[derive(Debug)]
struct Free {
    buffers: Vec<BytesMut>,
    /// The capacity of `buffers`, summed.
    bytes: usize,
}

impl FramePool {
    /// The smallest frame whose buffer is kept. Below it an allocation is cheap and is
    /// served from memory the allocator keeps anyway.
    pub const MIN_POOLED: usize = 64 * 1024;

    /// The default limit: 16 MiB, enough for a few calls' large messages in flight.
    pub const DEFAULT_LIMIT: usize = 16 * 1024 * 1024;

    /// A pool that keeps at most `limit` bytes of free buffers; 0 keeps none.
    pub fn new(limit: usize) -> FramePool {
        FramePool {
            shared: Arc::new(Shared {
                limit,
                free: Mutex::new(Free {
                    buffers: Vec::new(),
                    bytes: 0,
                }),
            }),
        }
    }

    /// The most bytes of free buffers it keeps.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Bytes held in free buffers now.
    pub fn held(&self) -> usize {
        self.free().bytes
    }

    /// The smallest free buffer that holds `len` bytes, emptied, if there is one.
    pub(crate) fn take(&self, len: usize) -> Option<BytesMut> {
        let mut free = self.free();
        let (i, _) = free
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())?;
        let buffer = free.buffers.swap_remove(i);
        free.bytes -= buffer.capacity();
        Some(buffer)
    }

    /// `frame` as `Bytes`; a buffer of at least [`MIN_POOLED`](Self::MIN_POOLED) bytes comes
    /// back to the pool when the last view of it is dropped.
    pub(crate) fn freeze(&self, frame: BytesMut) -> Bytes {
        if frame.capacity() < Self::MIN_POOLED || frame.capacity() > self.limit() {
            return frame.freeze();
        }
        Bytes::from_owner(Returning {
            frame,
            pool: self.clone(),
        })
    }

    fn put(&self, mut buffer: BytesMut) {
        let mut free = self.free();
        if free.bytes + buffer.capacity() <= self.shared.limit {
            buffer.clear();
            free.bytes += buffer.capacity();
            free.buffers.push(buffer);
        }
    }

    /// The free list. A panic cannot leave it inconsistent (each change is one push or
    /// remove with its count), so a poisoned lock is used as it is.
    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.shared
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for FramePool {
    fn default() -> Self {
        FramePool::new(FramePool::DEFAULT_LIMIT)
    }
}

/// A frame's buffer that goes back to its pool when dropped.
struct Returning {
    frame: BytesMut,
    pool: FramePool,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, byte: u8) -> BytesMut {
        let mut frame = BytesMut::with_capacity(len);
        frame.resize(len, byte);
        frame
    }

    #[test]
    fn a_large_frame_comes_back_when_its_last_view_is_dropped() {
        let pool = FramePool::new(1 << 20);
        let bytes = pool.freeze(frame(100_000, 1));
        let pointer = bytes.as_ptr();
        let tail = bytes.slice(50_000..);
        drop(bytes);
        assert_eq!(pool.held(), 0, "a view of the frame is still alive");
        assert_eq!(tail[0], 1);
        drop(tail);
        assert_eq!(pool.held(), 100_000);
        let reused = pool.take(90_000).expect("the frame's buffer");
        assert_eq!(reused.as_ptr(), pointer);
        assert!(reused.is_empty(), "a reused buffer starts empty");
        assert_eq!(pool.held(), 0);
        assert!(pool.take(1).is_none());
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken() {
        let pool = FramePool::new(1 << 20);
        drop(pool.freeze(frame(300_000, 0)));
        drop(pool.freeze(frame(100_000, 0)));
        drop(pool.freeze(frame(200_000, 0)));
        assert_eq!(pool.take(150_000).unwrap().capacity(), 200_000);
        assert!(pool.take(400_000).is_none());
        assert_eq!(pool.held(), 400_000);
    }

    #[test]
    fn small_frames_are_not_kept() {
        let pool = FramePool::new(1 << 20);
        drop(pool.freeze(frame(FramePool::MIN_POOLED - 1, 0)));
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit() {
        let pool = FramePool::new(250_000);
        let frames: Vec<Bytes> = (0..3).map(|_| pool.freeze(frame(100_000, 0))).collect();
        drop(frames);
        assert_eq!(pool.held(), 200_000);
        drop(pool.freeze(frame(300_000, 0)));
        assert_eq!(pool.held(), 200_000, "a buffer over the limit is let go");

        let none = FramePool::new(0);
        drop(none.freeze(frame(100_000, 0)));
        assert_eq!(none.held(), 0);
    }
}
