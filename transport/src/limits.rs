//! What ends a call's work before it finishes: its deadline and its cancellation.
//!
//! Every part of a call races the same two limits: a client's attempts and its response
//! stream, a server's interceptors, handler and response, a connection's handshake. The race
//! is written once, in [`poll_cut`]: the work's own result first (a result that is ready wins
//! over a limit that fired at the same time), then the deadline, then the cancellation.
//! [`Bounded`] is that race as a future; the state machines that hold their limits beside other
//! state (the server's `Run`, the receive stream) call [`poll_cut`] between their own steps.

use std::{
    borrow::BorrowMut,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use anygrpc_codec::Status;
use anygrpc_rt::{Runtime, Sleep};
use bytes::Buf;

/// A call's deadline, as a timer on the runtime's clock; none when the call has no deadline.
pub(crate) struct Deadline(Option<Pin<Box<dyn Sleep>>>);

impl Deadline {
    /// A timer for `at`, or no deadline.
    pub(crate) fn new(runtime: &dyn Runtime, at: Option<Instant>) -> Deadline {
        Deadline(at.map(|at| runtime.sleep_until(at)))
    }

    /// Whether the deadline has passed; if not, `cx` is woken when it does.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.0
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// No deadline.
impl Default for Deadline {
    fn default() -> Deadline {
        Deadline(None)
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Deadline").field(&self.0.is_some()).finish()
    }
}

/// What tells a call's work that whoever waits for it has gone.
pub(crate) trait Cancellation {
    /// Ready once the call is cancelled; if not, `cx` is woken when it is.
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// Work that nobody cancels (a connection's handshake: only its deadline ends it).
#[derive(Debug)]
pub(crate) struct Uncancelled;

impl Cancellation for Uncancelled {
    fn poll_cancelled(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// A server's call is cancelled when the client resets its stream.
impl<B: Buf> Cancellation for h2::server::SendResponse<B> {
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reset(cx).map(|_| ())
    }
}

/// A server's response is cancelled when the client resets its stream.
impl<B: Buf> Cancellation for h2::SendStream<B> {
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reset(cx).map(|_| ())
    }
}

impl<C: Cancellation + ?Sized> Cancellation for &mut C {
    fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        (**self).poll_cancelled(cx)
    }
}

/// Which limit ended the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The deadline passed.
    DeadlineExceeded,
    /// The call was cancelled.
    Cancelled,
}

impl Cut {
    /// The status a client's call ends with (a server's cancelled call has nobody to tell).
    pub(crate) fn client_status(self) -> Status {
        match self {
            Cut::DeadlineExceeded => Status::deadline_exceeded("deadline exceeded"),
            Cut::Cancelled => Status::cancelled("call cancelled by the client"),
        }
    }
}

/// The limit that has fired, if one has: the deadline first, then the cancellation.
pub(crate) fn poll_cut(
    deadline: &mut Deadline,
    cancel: &mut impl Cancellation,
    cx: &mut Context<'_>,
) -> Poll<Cut> {
    if deadline.poll_passed(cx) {
        return Poll::Ready(Cut::DeadlineExceeded);
    }
    cancel.poll_cancelled(cx).map(|()| Cut::Cancelled)
}

pin_project_lite::pin_project! {
    /// `work`, bounded by a deadline and a cancellation: its output, or the limit that cut it
    /// short. `D` is a [`Deadline`] or a borrow of one.
    #[derive(Debug)]
    pub(crate) struct Bounded<F, D, C> {
        #[pin]
        work: F,
        deadline: D,
        cancel: C,
    }
}

impl<F, D, C> Bounded<F, D, C> {
    /// Bounds `work`.
    pub(crate) fn new(work: F, deadline: D, cancel: C) -> Bounded<F, D, C> {
        Bounded {
            work,
            deadline,
            cancel,
        }
    }
}

impl<F, D, C> Future for Bounded<F, D, C>
where
    F: Future,
    D: BorrowMut<Deadline>,
    C: Cancellation,
{
    type Output = Result<F::Output, Cut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        poll_cut(this.deadline.borrow_mut(), this.cancel, cx).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        task::Waker,
    };

    /// A timer the test fires by hand.
    #[derive(Debug, Clone, Default)]
    struct Alarm(Arc<AtomicBool>);

    impl Future for Alarm {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Sleep for Alarm {
        fn reset(self: Pin<&mut Self>, _: Instant) {}
    }

    /// A cancellation the test fires by hand.
    struct Flag(bool);

    impl Cancellation for Flag {
        fn poll_cancelled(&mut self, _: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn alarm() -> (Alarm, Deadline) {
        let alarm = Alarm::default();
        (alarm.clone(), Deadline(Some(Box::pin(alarm))))
    }

    fn poll<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_ready_result_wins_over_a_limit_that_fired() {
        let (alarm, deadline) = alarm();
        alarm.0.store(true, Ordering::SeqCst);
        let mut bounded = Bounded::new(std::future::ready(7), deadline, Flag(true));
        assert_eq!(poll(&mut bounded), Poll::Ready(Ok(7)));
    }

    #[test]
    fn the_deadline_cuts_pending_work_when_it_passes_and_before_a_cancellation() {
        let (alarm, mut deadline) = alarm();
        let mut bounded = Bounded::new(std::future::pending::<()>(), &mut deadline, Flag(false));
        assert_eq!(poll(&mut bounded), Poll::Pending);
        alarm.0.store(true, Ordering::SeqCst);
        bounded.cancel.0 = true;
        assert_eq!(poll(&mut bounded), Poll::Ready(Err(Cut::DeadlineExceeded)));
    }

    #[test]
    fn a_cancellation_cuts_work_that_has_no_deadline() {
        let mut bounded = Bounded::new(std::future::pending::<()>(), Deadline(None), Flag(false));
        assert_eq!(poll(&mut bounded), Poll::Pending);
        bounded.cancel.0 = true;
        assert_eq!(poll(&mut bounded), Poll::Ready(Err(Cut::Cancelled)));
        let mut never = Bounded::new(std::future::pending::<()>(), Deadline(None), Uncancelled);
        assert_eq!(poll(&mut never), Poll::Pending);
    }
}
