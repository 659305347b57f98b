//! Whether a channel is in use, for its idle timer (`doc/connectivity-semantics-and-api.md`)
//! and for a close that waits for its calls: the calls in flight, and when it was last used.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use anygrpc_rt::Runtime;

/// A channel's calls in flight, and when it was last used: a call ended or it left IDLE
/// (nanoseconds since `created`).
pub(super) struct Activity {
    runtime: Arc<dyn Runtime>,
    created: Instant,
    active_calls: AtomicUsize,
    last_activity: AtomicU64,
    /// The channel is closing: the end of the last call wakes `drained`.
    closing: AtomicBool,
    drained: Mutex<Option<Waker>>,
}

/// Keeps a channel out of IDLE while a call is in flight.
pub(crate) struct ActiveCall(Arc<Activity>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        // Only the end of the last call in flight matters to the idle timer (while calls are
        // in flight it does not look at the time), and it is recorded before the count can
        // reach zero.
        self.0.touch();
        // Sequentially consistent with `close` and `poll_drained`: either this sees the
        // channel closing, or the closer sees the count this leaves.
        let last = self.0.active_calls.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && self.0.closing.load(Ordering::SeqCst) {
            if let Some(waker) = crate::sync::lock(&self.0.drained).take() {
                waker.wake();
            }
        }
    }
}

impl Activity {
    /// An unused channel, created now.
    pub(super) fn new(runtime: Arc<dyn Runtime>) -> Arc<Activity> {
        Arc::new(Activity {
            created: runtime.now(),
            runtime,
            active_calls: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            drained: Mutex::new(None),
        })
    }

    /// Records activity now (a call ended, or the channel left IDLE).
    pub(super) fn touch(&self) {
        let nanos = self
            .runtime
            .now()
            .saturating_duration_since(self.created)
            .as_nanos();
        self.last_activity
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A call is starting: the channel stays out of IDLE until the returned guard drops.
    pub(super) fn call_started(self: &Arc<Self>) -> ActiveCall {
        self.active_calls.fetch_add(1, Ordering::Relaxed);
        ActiveCall(self.clone())
    }

    /// Whether a call is in flight.
    pub(super) fn in_use(&self) -> bool {
        self.active_calls.load(Ordering::Acquire) > 0
    }

    /// The channel is closing: from now on the end of its last call wakes
    /// [`poll_drained`](Self::poll_drained).
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Ready once no call is in flight (after [`close`](Self::close)).
    pub(super) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        *crate::sync::lock(&self.drained) = Some(cx.waker().clone());
        match self.active_calls.load(Ordering::SeqCst) {
            0 => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }

    /// When the channel may go IDLE, if no call starts before then.
    pub(super) fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_use() {
            return self.runtime.now() + timeout;
        }
        let last = Duration::from_nanos(self.last_activity.load(Ordering::Relaxed));
        self.created + last + timeout
    }
}
