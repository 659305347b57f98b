//! Cancelling calls from outside: the client's equivalent of cancelling a Go context.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_channel::oneshot;
use futures_util::future::{FutureExt, Shared};

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
    let (tx, rx) = oneshot::channel();
    (Canceller(tx), CancelToken(rx.shared()))
}

/// Cancels the calls holding its [`CancelToken`]. Dropping it without calling
/// [`cancel`](Self::cancel) cancels nothing.
#[derive(Debug)]
pub struct Canceller(oneshot::Sender<()>);

impl Canceller {
    /// Cancels every call holding the token.
    pub fn cancel(self) {
        let _ = self.0.send(());
    }
}

/// What a call holds to learn of its cancellation; clone it to cancel several calls together.
#[derive(Clone)]
pub struct CancelToken(Shared<oneshot::Receiver<()>>);

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// Whether [`Canceller::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.0.peek(), Some(Ok(())))
    }

    /// Completes when the call is cancelled; never, if the canceller is dropped unused.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled(Some(self.0.clone()))
    }
}

/// The future of [`CancelToken::cancelled`].
#[derive(Debug)]
pub struct Cancelled(Option<Shared<oneshot::Receiver<()>>>);

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match rx.poll_unpin(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_)) => {
                // The canceller was dropped: this call can no longer be cancelled this way.
                self.0 = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
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
}
