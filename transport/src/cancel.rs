//! Cancelling calls from outside: the client's equivalent of cancelling a Go context.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll, Waker},
};

/// Makes a linked pair: [`Canceller::cancel`] ends every call given the [`CancelToken`] with
/// `CANCELLED`, sending RST_STREAM(CANCEL) to the server.
///
/// Dropping a call's future cancels it too, but then nobody sees a status; use a token when
/// the code that awaits the call must learn that it was cancelled.
///
/// ```
/// let (canceller, token) = anygrpc::client::cancellation();
/// let mut request = anygrpc::Request::new(());
/// request.set_cancel_token(token);
/// // ... start the call elsewhere, then:
/// canceller.cancel();
/// ```
pub fn cancellation() -> (Canceller, CancelToken) {
    let (source, token) = CancelToken::new();
    (Canceller(source), token)
}

/// What a canceller and its tokens share: whether it has cancelled, and the futures waiting
/// for it to. One allocation per pair, and none more until a future waits.
#[derive(Debug, Default)]
struct Source {
    state: AtomicU8,
    waiting: Mutex<Waiting>,
}

const PENDING: u8 = 0;
const CANCELLED: u8 = 1;
/// The canceller was dropped without cancelling: it never will.
const ABANDONED: u8 = 2;

/// The wakers of futures waiting on a source, each in its own slot; a slot is freed when its
/// future is dropped, so there are never more than the futures alive.
#[derive(Debug, Default)]
struct Waiting {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Source {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Ends the source with `state` (unless it has ended) and wakes every waiting future.
    fn end(&self, state: u8) {
        if self
            .state
            .compare_exchange(PENDING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let mut waiting = self.waiting();
            if waiting.slots.is_empty() {
                return;
            }
            // Woken with the lock let go: a waker may poll its future at once.
            let woken: Vec<Waker> = waiting.slots.iter_mut().flat_map(Option::take).collect();
            drop(waiting);
            woken.into_iter().for_each(Waker::wake);
        }
    }

    /// The waiting futures' slots. A panic cannot leave them inconsistent (each change is
    /// one slot), so a poisoned lock is used as it is.
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready once cancelled; otherwise keeps `cx`'s waker in `slot` (taking a slot on first
    /// use). An abandoned source stays pending.
    fn poll(&self, slot: &mut Option<usize>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state() == CANCELLED {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting();
        match *slot {
            Some(i) => match &mut waiting.slots[i] {
                Some(kept) if kept.will_wake(cx.waker()) => {}
                kept => *kept = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let i = match waiting.free.pop() {
                    Some(i) => {
                        waiting.slots[i] = waker;
                        i
                    }
                    None => {
                        waiting.slots.push(waker);
                        waiting.slots.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
        drop(waiting);
        // Cancelled while the waker went in: `end` may have taken the wakers before it.
        match self.state() {
            CANCELLED => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }

    fn release(&self, slot: usize) {
        let mut waiting = self.waiting();
        waiting.slots[slot] = None;
        waiting.free.push(slot);
    }
}

/// Cancels the calls holding its [`CancelToken`]. Dropping it without calling
/// [`cancel`](Self::cancel) cancels nothing.
#[derive(Debug)]
pub struct Canceller(Arc<Source>);

impl Canceller {
    /// Cancels every call holding the token.
    pub fn cancel(self) {
        self.0.end(CANCELLED);
    }
}

impl Drop for Canceller {
    fn drop(&mut self) {
        self.0.end(ABANDONED);
    }
}

/// A [`Canceller`] that cancels when dropped: a server call's, whose end (however it comes)
/// ends the calls made under its context.
#[derive(Debug)]
pub(crate) struct CancelOnDrop(Arc<Source>);

impl CancelOnDrop {
    /// A guard, and the token it cancels when dropped.
    pub(crate) fn new() -> (CancelOnDrop, CancelToken) {
        let (source, token) = CancelToken::new();
        (CancelOnDrop(source), token)
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.end(CANCELLED);
    }
}

/// What a call holds to learn of its cancellation; clone it to cancel several calls together.
/// A token made with [`or`](Self::or) is cancelled by either canceller.
#[derive(Clone)]
pub struct CancelToken {
    first: Arc<Source>,
    /// The other sources of a token made with [`or`](Self::or).
    rest: Option<Arc<[Arc<Source>]>>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// A token of a new source, and the source, for what cancels it.
    fn new() -> (Arc<Source>, CancelToken) {
        let source = Arc::new(Source::default());
        let token = CancelToken {
            first: source.clone(),
            rest: None,
        };
        (source, token)
    }

    /// A token cancelled by either of two, if there is one.
    pub(crate) fn either(a: Option<CancelToken>, b: Option<CancelToken>) -> Option<CancelToken> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.or(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a [`Canceller`] of the token has cancelled it.
    pub fn is_cancelled(&self) -> bool {
        self.sources().any(|source| source.state() == CANCELLED)
    }

    /// Completes when the call is cancelled; never, if every canceller is dropped unused.
    pub fn cancelled(&self) -> Cancelled {
        let waiter = |source: &Arc<Source>| (source.clone(), None);
        Cancelled {
            first: waiter(&self.first),
            rest: self.rest_sources().map(waiter).collect(),
        }
    }

    /// A token cancelled when this one or `other` is: a call's own token and the one of
    /// the context it is made under.
    pub fn or(self, other: CancelToken) -> CancelToken {
        let rest = self
            .rest_sources()
            .chain(other.sources())
            .cloned()
            .collect();
        CancelToken {
            first: self.first,
            rest: Some(rest),
        }
    }

    fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        std::iter::once(&self.first).chain(self.rest_sources())
    }

    fn rest_sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.rest.iter().flat_map(|rest| rest.iter())
    }
}

/// The future of [`CancelToken::cancelled`].
#[derive(Debug)]
pub struct Cancelled {
    /// Each source, with the slot its waker is kept in once it has waited.
    first: (Arc<Source>, Option<usize>),
    rest: Vec<(Arc<Source>, Option<usize>)>,
}

impl Cancelled {
    fn waiters(&mut self) -> impl Iterator<Item = &mut (Arc<Source>, Option<usize>)> {
        std::iter::once(&mut self.first).chain(self.rest.iter_mut())
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut cancelled = false;
        for (source, slot) in self.waiters() {
            if source.state() != ABANDONED && source.poll(slot, cx).is_ready() {
                cancelled = true;
            }
        }
        match cancelled {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        for (source, slot) in self.waiters() {
            if let Some(slot) = slot.take() {
                source.release(slot);
            }
        }
    }
}

/// A client's call is cancelled through its token, if it has one.
impl crate::limits::Cancellation for Option<Cancelled> {
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Some(cancelled) => Pin::new(cancelled).poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn cancel_and_drop() {
        let mut cx = Context::from_waker(Waker::noop());
        let (canceller, token) = cancellation();
        let mut waiting = token.cancelled();
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert!(!token.is_cancelled());
        canceller.cancel();
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
        assert!(token.is_cancelled());
        assert!(Pin::new(&mut token.clone().cancelled())
            .poll(&mut cx)
            .is_ready());

        let (canceller, token) = cancellation();
        drop(canceller);
        let mut never = token.cancelled();
        assert!(Pin::new(&mut never).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut never).poll(&mut cx).is_pending());
        assert!(!token.is_cancelled());
    }

    #[test]
    fn a_combined_token_is_cancelled_by_either_canceller() {
        let mut cx = Context::from_waker(Waker::noop());
        for which in 0..2 {
            let (first, a) = cancellation();
            let (second, b) = cancellation();
            let either = a.or(b);
            let mut waiting = either.cancelled();
            assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
            match which {
                0 => {
                    drop(first);
                    second.cancel();
                }
                _ => {
                    first.cancel();
                    drop(second);
                }
            }
            assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
            assert!(either.is_cancelled());
        }
    }

    #[test]
    fn a_source_keeps_a_slot_per_live_waiting_future() {
        let mut cx = Context::from_waker(Waker::noop());
        let (canceller, token) = cancellation();
        for _ in 0..1000 {
            let mut waiting = token.cancelled();
            assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        }
        assert_eq!(
            token.first.waiting().slots.len(),
            1,
            "freed slots are reused"
        );
        let mut a = token.cancelled();
        let mut b = token.cancelled();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert_eq!(token.first.waiting().slots.len(), 2);
        canceller.cancel();
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut b).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_guard_cancels_when_dropped() {
        let (guard, token) = CancelOnDrop::new();
        assert!(!token.is_cancelled());
        drop(guard);
        assert!(token.is_cancelled());
    }
}
