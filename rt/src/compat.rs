//! The adapter between `futures-io` byte streams and the tokio IO traits that `h2` requires.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use futures_io::{AsyncRead as _, AsyncWrite as _};

use crate::BoxIo;

/// How many IO operations may complete at once in a row before the adapter yields.
///
/// A connection whose socket always has data would otherwise keep its task running forever and
/// starve the other tasks of a single-threaded executor.
const BUDGET: u32 = 64;

/// Presents a [`BoxIo`] as a `tokio::io::AsyncRead + AsyncWrite` for `h2`.
///
/// It forwards vectored writes, reads straight into `h2`'s uninitialized buffer (no
/// zero-filling), and yields to the executor after [`BUDGET`] consecutive ready operations.
#[derive(Debug)]
pub struct H2Io {
    inner: BoxIo,
    ready_in_a_row: u32,
}

impl std::fmt::Debug for dyn crate::Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

impl H2Io {
    /// Wraps a stream.
    pub fn new(inner: BoxIo) -> H2Io {
        H2Io {
            inner,
            ready_in_a_row: 0,
        }
    }

    /// Counts a completed operation; `true` when the budget is spent and the caller must yield.
    fn spend(&mut self, cx: &mut Context<'_>) -> bool {
        self.ready_in_a_row += 1;
        if self.ready_in_a_row > BUDGET {
            self.ready_in_a_row = 0;
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }

    fn track<T>(&mut self, poll: &Poll<T>) {
        if poll.is_pending() {
            self.ready_in_a_row = 0;
        }
    }
}

impl tokio::io::AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.spend(cx) {
            return Poll::Pending;
        }
        // SAFETY: we never write uninitialized bytes through `unfilled_mut` (its contract), and
        // `MaybeUninit<u8>` has the layout of `u8`. The slice is only handed to `Io::poll_read`,
        // whose contract (see `Io`) is to write into it, never read from it; afterwards exactly
        // the bytes it reports as written are marked initialized.
        #[allow(unsafe_code)]
        let slice =
            unsafe { &mut *(buf.unfilled_mut() as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        let poll = Pin::new(&mut this.inner).poll_read(cx, slice);
        this.track(&poll);
        match poll {
            Poll::Ready(Ok(n)) => {
                let n = n.min(slice.len());
                // SAFETY: the reader wrote `n` bytes at the start of the unfilled region.
                #[allow(unsafe_code)]
                unsafe {
                    buf.assume_init(n);
                }
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.spend(cx) {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.spend(cx) {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use std::task::Waker;
    use tokio::io::{AsyncRead, ReadBuf};

    #[derive(Debug)]
    struct Endless;

    impl futures_io::AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            buf.fill(7);
            Poll::Ready(Ok(buf.len()))
        }
    }

    impl futures_io::AsyncWrite for Endless {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn always_ready_stream_yields_after_budget() {
        let mut io = H2Io::new(Box::new(Endless));
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 16];
        let mut ready = 0;
        loop {
            let mut buf = ReadBuf::uninit(&mut storage);
            match Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    assert_eq!(buf.filled(), &[7; 16]);
                    ready += 1;
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
        }
        assert_eq!(ready, BUDGET);
    }

    #[test]
    fn reads_report_exactly_what_was_written() {
        let mut io = H2Io::new(Box::new(Cursor::new(b"abc".to_vec())));
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let mut buf = ReadBuf::uninit(&mut storage);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"abc");
    }
}
