//! The retry buffer: what a call under a retry or hedging policy holds of its request until
//! it commits to an attempt (gRFC A6), within its own limit and its channel's.

use super::Channel;

/// Request bytes a call holds in its channel's retry buffer until it commits; given back
/// when dropped.
pub(super) struct Buffered {
    pub(super) channel: Channel,
    pub(super) bytes: usize,
}

impl Buffered {
    pub(super) fn new(channel: &Channel) -> Buffered {
        Buffered {
            channel: channel.clone(),
            bytes: 0,
        }
    }

    /// Holds `bytes` more if the call's and the channel's limits allow.
    pub(super) fn grow(&mut self, bytes: usize) -> bool {
        let inner = &self.channel.inner;
        let total = self.bytes.saturating_add(bytes);
        if total > inner.retry_buffer_per_call || !inner.retry_budget.try_reserve(bytes) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.channel.inner.retry_budget.release(self.bytes);
    }
}
