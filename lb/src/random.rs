//! [`Random`]: a lock-free random sequence a shared picker draws from on every pick.

use std::sync::atomic::{AtomicU64, Ordering};

/// A SplitMix64 sequence: one atomic add per draw, so pickers shared by many callers take
/// no lock, and a seeded one repeats its draws in tests.
#[derive(Debug)]
pub(crate) struct Random(AtomicU64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Random {
    /// A sequence from `seed`.
    pub(crate) fn new(seed: u64) -> Random {
        Random(AtomicU64::new(seed))
    }

    /// The next draw.
    pub(crate) fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A draw in `0..n` (n > 0).
    pub(crate) fn below(&self, n: u64) -> u64 {
        self.next() % n
    }
}
