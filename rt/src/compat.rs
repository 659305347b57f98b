//! The adapter between `futures-io` byte streams and the tokio IO traits that `h2` requires.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use futures_io::AsyncWrite as _;

use crate::BoxIo;

/// Sees a connection's bytes as they pass through [`H2Io`], and may substitute for some of
/// what h2 writes.
///
/// h2 keeps some frames to itself (it answers PINGs, and its GOAWAYs carry no debug data);
/// the transport's keepalive, ping policing and connection management look at the bytes here.
pub trait Tap: Send + 'static {
    /// `bytes` were read from the peer.
    fn read(&mut self, bytes: &[u8]);

    /// `bytes` of h2's output were written (or replaced, see [`Tap::replace`]).
    fn written(&mut self, bytes: &[u8]);

    /// Called with h2's next output before it is written, while [`Tap::may_replace`] is true:
    /// `Some((n, bytes))` writes `bytes` in place of its first `n` bytes.
    fn replace(&mut self, next: &[u8]) -> Option<(usize, Vec<u8>)>;

    /// Whether [`Tap::replace`] needs to see the output (a cheap check made on every write).
    fn may_replace(&self) -> bool;

    /// What the next read does (checked before every read): go on, or stop so that h2 does no
    /// more work for the peer, or fail so that h2 ends the connection, and every stream on it,
    /// with the tap's reason.
    fn gate(&self) -> Gate {
        Gate::Open
    }
}

/// What [`H2Io`] does with a read, as its [`Tap`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Read.
    Open,
    /// Stay pending without registering a waker (a server cutting off an abusive client): the
    /// task polling the connection must close it.
    Paused,
    /// Fail with `TimedOut` and this reason (a keepalive that found the peer dead): h2 hands
    /// the error to every stream.
    Failed(&'static str),
}

/// How many IO operations may complete at once in a row before the adapter yields.
///
/// A connection whose socket always has data would otherwise keep its task running forever and
/// starve the other tasks of a single-threaded executor.
const BUDGET: u32 = 64;

/// Presents a [`BoxIo`] as a `tokio::io::AsyncRead + AsyncWrite` for `h2`.
///
/// It forwards vectored writes, reads into `h2`'s buffer through [`Io::poll_read_buf`](crate::Io::poll_read_buf) (straight
/// into its uninitialized memory where the stream can), yields to the executor after [`BUDGET`] consecutive ready operations, and
/// shows the bytes to a [`Tap`] if it has one.
pub struct H2Io {
    inner: BoxIo,
    ready_in_a_row: u32,
    tap: Option<Box<dyn Tap>>,
    /// Bytes a tap put in place of h2's, still to be written (and how many already were).
    substitute: Option<(Vec<u8>, usize)>,
}

impl std::fmt::Debug for H2Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Io")
            .field("tapped", &self.tap.is_some())
            .finish_non_exhaustive()
    }
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
            tap: None,
            substitute: None,
        }
    }

    /// Wraps a stream whose bytes `tap` sees.
    pub fn tapped(inner: BoxIo, tap: Box<dyn Tap>) -> H2Io {
        H2Io {
            tap: Some(tap),
            ..H2Io::new(inner)
        }
    }

    /// Writes what remains of a substitute; ready when nothing does.
    fn poll_substitute(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.substitute {
            if *done == bytes.len() {
                self.substitute = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Lets the tap replace the start of `buf`: returns how many of its bytes were taken.
    fn substitute(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<usize>> {
        let tap = self.tap.as_mut()?;
        let (n, bytes) = tap.replace(buf)?;
        let n = n.min(buf.len());
        tap.written(&buf[..n]);
        self.substitute = Some((bytes, 0));
        // Start writing it now; what does not fit goes before h2's next bytes.
        match self.poll_substitute(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            _ => Some(Ok(n)),
        }
    }

    fn wrote(&mut self, poll: &Poll<io::Result<usize>>, bufs: &[IoSlice<'_>]) {
        self.track(poll);
        if let (Some(tap), Poll::Ready(Ok(mut n))) = (self.tap.as_mut(), poll) {
            for buf in bufs {
                let take = n.min(buf.len());
                tap.written(&buf[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
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
        match this.tap.as_ref().map_or(Gate::Open, |tap| tap.gate()) {
            Gate::Open => {}
            Gate::Paused => return Poll::Pending,
            Gate::Failed(why) => {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
        }
        if this.spend(cx) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.inner).poll_read_buf(cx, buf);
        this.track(&poll);
        if let (Some(tap), Poll::Ready(Ok(()))) = (this.tap.as_mut(), &poll) {
            tap.read(&buf.filled()[before..]);
        }
        poll
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
        std::task::ready!(this.poll_substitute(cx))?;
        if this.tap.as_ref().is_some_and(|tap| tap.may_replace()) {
            if let Some(taken) = this.substitute(cx, buf) {
                return Poll::Ready(taken);
            }
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&poll, &[IoSlice::new(buf)]);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tap.as_ref().is_some_and(|tap| tap.may_replace()) {
            // One slice at a time, so that the tap sees each write's start.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        if this.spend(cx) {
            return Poll::Pending;
        }
        std::task::ready!(this.poll_substitute(cx))?;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&poll, bufs);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_substitute(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_substitute(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use std::task::Waker;
    use tokio::io::{AsyncRead, ReadBuf};

    /// A stream whose every read is ready at once and fills the whole buffer with `fill`;
    /// its writes go nowhere.
    #[derive(Debug)]
    struct Reader(fn(&mut [u8]));

    /// Fills the buffer with 7s.
    fn endless() -> Reader {
        Reader(|buf| buf.fill(7))
    }

    /// Reads the buffer it is given before it writes into it, as a safe `AsyncRead` may: it
    /// fills the buffer with the bytes it saw there, plus one.
    fn peeker() -> Reader {
        Reader(|buf| {
            for byte in buf.iter_mut() {
                *byte = byte.wrapping_add(1);
            }
        })
    }

    /// Records what it sees; replaces a leading `b"old"` with `b"new!"`.
    struct Recorder(std::sync::Arc<std::sync::Mutex<(Vec<u8>, Vec<u8>)>>);

    impl Tap for Recorder {
        fn read(&mut self, bytes: &[u8]) {
            self.0.lock().unwrap().0.extend_from_slice(bytes);
        }
        fn written(&mut self, bytes: &[u8]) {
            self.0.lock().unwrap().1.extend_from_slice(bytes);
        }
        fn replace(&mut self, next: &[u8]) -> Option<(usize, Vec<u8>)> {
            next.starts_with(b"old").then(|| (3, b"new!".to_vec()))
        }
        fn may_replace(&self) -> bool {
            true
        }
    }

    impl futures_io::AsyncRead for Reader {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            (self.0)(buf);
            Poll::Ready(Ok(buf.len()))
        }
    }

    impl futures_io::AsyncWrite for Reader {
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
        let mut io = H2Io::new(crate::box_io(endless()));
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
        let mut io = H2Io::new(crate::box_io(Cursor::new(b"abc".to_vec())));
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let mut buf = ReadBuf::uninit(&mut storage);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"abc");
    }

    #[test]
    fn a_reader_is_given_initialized_bytes() {
        // The buffer's memory holds 0xAA but the `ReadBuf` calls it uninitialized, as h2's
        // spare capacity is: a reader handed that memory as `&mut [u8]` would see 0xAA.
        let mut storage = vec![std::mem::MaybeUninit::new(0xAA_u8); 3 * crate::ZEROED_READ];
        let mut io = H2Io::new(crate::box_io(peeker()));
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = ReadBuf::uninit(&mut storage);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
        // It saw zeros, and only as many as the provided read zero-fills at once.
        assert_eq!(buf.filled().len(), crate::ZEROED_READ);
        assert!(buf.filled().iter().all(|&b| b == 1));
    }

    /// A sink whose bytes the test can read afterwards.
    #[derive(Debug, Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl futures_io::AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(0))
        }
    }

    impl futures_io::AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Two bytes at a time: substitutes and h2's bytes both go out in pieces.
            let n = buf.len().min(2);
            self.0.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_tap_sees_both_directions_and_can_replace_output() {
        use tokio::io::AsyncWrite;
        let seen = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
        let mut cx = Context::from_waker(Waker::noop());
        let mut reader = H2Io::tapped(
            crate::box_io(Cursor::new(b"xyz".to_vec())),
            Box::new(Recorder(seen.clone())),
        );
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let mut buf = ReadBuf::uninit(&mut storage);
        assert!(Pin::new(&mut reader)
            .poll_read(&mut cx, &mut buf)
            .is_ready());

        let sink = Sink::default();
        let mut writer = H2Io::tapped(
            crate::box_io(sink.clone()),
            Box::new(Recorder(seen.clone())),
        );
        let output = b"oldrest";
        let mut written = 0;
        while written < output.len() {
            let (a, b) = output[written..].split_at(if written == 0 { 3 } else { 0 });
            let slices = [IoSlice::new(a), IoSlice::new(b)];
            match Pin::new(&mut writer).poll_write_vectored(&mut cx, &slices) {
                Poll::Ready(Ok(n)) => written += n,
                other => panic!("{other:?}"),
            }
        }
        assert!(Pin::new(&mut writer).poll_flush(&mut cx).is_ready());
        let (read, wrote) = seen.lock().unwrap().clone();
        assert_eq!(read, b"xyz");
        assert_eq!(wrote, output, "the tap sees h2's bytes");
        assert_eq!(
            *sink.0.lock().unwrap(),
            b"new!rest",
            "the peer gets the substitute"
        );
    }
}
