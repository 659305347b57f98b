//! The default runtime: async-io's reactor and timers, and the worker pool of `pool.rs`.

use std::{
    fmt,
    io::{self, IoSlice, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    os::{
        fd::AsFd,
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use async_io::{Async, Timer};
use rustix::net::RecvFlags;

use crate::{
    pool::{Kind, Pool},
    Address, BoxFuture, BoxIo, Io, Listener, ReadBuf, Runtime, Sleep, TcpOptions,
};

type Spawner = Arc<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>;

/// The default runtime, built on async-io.
///
/// Sockets and timers use async-io's reactor, which runs on its own thread when no one drives
/// it, so anygrpc futures can be awaited from any executor or from a plain blocking
/// `block_on`. Background tasks (one per connection, plus calls and streaming pumps) run on
/// worker threads started on first use; their number is `ANYGRPC_WORKER_THREADS` or the
/// number of CPUs. Tasks that wake one another gather on one worker (a connection and its
/// calls share a thread), while independent connections stay spread over the workers; an
/// idle worker takes half the queue of a worker busy with tasks that run 20 µs or more; a
/// connection's task runs at most 16 tasks after a call wakes it. Use
/// [`AsyncIoRuntime::with_spawner`] to run them on an executor of your own instead (smol's,
/// for example).
#[derive(Clone)]
pub struct AsyncIoRuntime {
    spawner: Option<Spawner>,
}

impl fmt::Debug for AsyncIoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIoRuntime")
            .field("custom_spawner", &self.spawner.is_some())
            .finish()
    }
}

impl Default for AsyncIoRuntime {
    fn default() -> Self {
        AsyncIoRuntime::new()
    }
}

impl AsyncIoRuntime {
    /// The runtime with the process-wide worker pool.
    pub fn new() -> AsyncIoRuntime {
        AsyncIoRuntime { spawner: None }
    }

    /// The runtime with tasks handed to `spawn` (for example `|task| smol::spawn(task).detach()`).
    pub fn with_spawner(
        spawn: impl Fn(BoxFuture<'static, ()>) + Send + Sync + 'static,
    ) -> AsyncIoRuntime {
        AsyncIoRuntime {
            spawner: Some(Arc::new(spawn)),
        }
    }

    /// Hands `task` to the user's spawner, or to the pool as a task of `kind`.
    fn spawn_kind(&self, task: BoxFuture<'static, ()>, kind: Kind) {
        match &self.spawner {
            Some(spawn) => spawn(task),
            None => Pool::get().spawn(task, kind),
        }
    }
}

#[derive(Debug)]
struct AsyncIoSleep(Timer);

impl std::future::Future for AsyncIoSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(|_| ())
    }
}

impl Sleep for AsyncIoSleep {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.get_mut().0.set_at(deadline);
    }
}

/// A socket on async-io's reactor that skips the read it knows would fail.
///
/// A read that returns fewer bytes than asked for has drained the socket's receive queue, so
/// the next read would only say `EAGAIN`: this one waits for the reactor's readiness event
/// first instead (as tokio does). The event cannot be missed: waiting arms the reactor's
/// one-shot interest, which fires at once if bytes arrived in between. Under h2's read loop,
/// which reads until it would block, this is one `recvfrom` fewer per batch of frames.
#[derive(Debug)]
struct Socket<T> {
    io: Async<T>,
    drained: bool,
}

impl<T> Socket<T> {
    fn new(io: Async<T>) -> Socket<T> {
        Socket { io, drained: false }
    }
}

impl<T> Socket<T> {
    /// Runs `read` on the socket once the reactor says it may have bytes, skipping the wait
    /// while the last read filled what it was asked to.
    fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(&T) -> io::Result<(usize, usize)>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.drained {
                std::task::ready!(self.io.poll_readable(cx))?;
                self.drained = false;
            }
            match read(self.io.get_ref()) {
                Ok((n, asked)) => {
                    self.drained = n > 0 && n < asked;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T> futures_io::AsyncRead for Socket<T>
where
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let asked = buf.len();
        self.get_mut()
            .poll_read_with(cx, |mut io| io.read(buf).map(|n| (n, asked)))
    }
}

impl<T> Io for Socket<T>
where
    T: AsFd + Send + 'static,
    for<'a> &'a T: Read + Write,
{
    /// Has the kernel write straight into the uninitialized buffer: `recv` through rustix,
    /// which takes `MaybeUninit` bytes and returns the part it filled.
    fn poll_read_buf(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = std::task::ready!(self.get_mut().poll_read_with(cx, |io| {
            // SAFETY: `unfilled_mut` asks that no uninitialized byte be written through it;
            // `recv` writes only what it received.
            #[allow(unsafe_code)]
            let unfilled = unsafe { buf.unfilled_mut() };
            let asked = unfilled.len();
            let ((filled, _), _) = rustix::net::recv(io, unfilled, RecvFlags::empty())?;
            Ok((filled.len(), asked))
        }))?;
        // SAFETY: `recv` returned the first `n` bytes of the unfilled part as the `&mut [u8]`
        // it wrote (rustix's `Buffer` for `&mut [MaybeUninit<u8>]`), so they are initialized.
        #[allow(unsafe_code)]
        unsafe {
            buf.assume_init(n);
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T> futures_io::AsyncWrite for Socket<T>
where
    for<'a> &'a T: Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &self.get_mut().io).poll_close(cx)
    }
}

#[derive(Debug)]
struct TcpAcceptor {
    listener: Async<TcpListener>,
    options: TcpOptions,
}

impl Listener for TcpAcceptor {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        loop {
            match self.listener.get_ref().accept() {
                Ok((stream, peer)) => {
                    crate::configure_stream(&stream, &self.options)?;
                    let stream = Socket::new(Async::new(stream)?);
                    return Poll::Ready(Ok((Box::new(stream), Address::Tcp(peer))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.listener.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Address> {
        self.listener.get_ref().local_addr().map(Address::Tcp)
    }
}

#[derive(Debug)]
struct UnixAcceptor {
    listener: Async<UnixListener>,
    /// The abstract name it is bound to, if it is.
    abstract_name: Option<Vec<u8>>,
}

impl Listener for UnixAcceptor {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        loop {
            match self.listener.get_ref().accept() {
                Ok((stream, peer)) => {
                    let path = peer.as_pathname().map(PathBuf::from).unwrap_or_default();
                    let stream = Socket::new(Async::new(stream)?);
                    return Poll::Ready(Ok((Box::new(stream), Address::Unix(path))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.listener.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Address> {
        if let Some(name) = &self.abstract_name {
            return Ok(Address::UnixAbstract(name.clone()));
        }
        let addr = self.listener.get_ref().local_addr()?;
        Ok(Address::Unix(
            addr.as_pathname().map(PathBuf::from).unwrap_or_default(),
        ))
    }
}

impl Runtime for AsyncIoRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.spawn_kind(task, Kind::Task);
    }

    fn spawn_connection(&self, task: BoxFuture<'static, ()>) {
        self.spawn_kind(task, Kind::Connection);
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(AsyncIoSleep(Timer::at(deadline)))
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = Async::<TcpStream>::connect(addr).await?;
            crate::configure_stream(stream.get_ref(), &options)?;
            Ok(Box::new(Socket::new(stream)) as BoxIo)
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = Async::<UnixStream>::connect(path).await?;
            Ok(Box::new(Socket::new(stream)) as BoxIo)
        })
    }

    fn listen_tcp(&self, addr: SocketAddr, options: TcpOptions) -> io::Result<Box<dyn Listener>> {
        let listener = Async::new(crate::bind_tcp(addr, &options)?)?;
        Ok(Box::new(TcpAcceptor { listener, options }))
    }

    fn listen_unix(&self, path: PathBuf) -> io::Result<Box<dyn Listener>> {
        let listener = Async::<UnixListener>::bind(path)?;
        Ok(Box::new(UnixAcceptor {
            listener,
            abstract_name: None,
        }))
    }

    #[cfg(target_os = "linux")]
    fn connect_unix_abstract(&self, name: Vec<u8>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = Async::new(crate::connect_abstract(&name)?)?;
            Ok(Box::new(Socket::new(stream)) as BoxIo)
        })
    }

    #[cfg(target_os = "linux")]
    fn listen_unix_abstract(&self, name: Vec<u8>) -> io::Result<Box<dyn Listener>> {
        let listener = Async::new(crate::bind_abstract(&name)?)?;
        Ok(Box::new(UnixAcceptor {
            listener,
            abstract_name: Some(name),
        }))
    }

    fn lookup_host(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(blocking::unblock(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_reads_into_uninitialized_memory() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut socket = Socket::new(Async::new(stream).unwrap());
        peer.write_all(b"hello").unwrap();
        let mut storage = [std::mem::MaybeUninit::new(0xAA_u8); 64];
        let mut buf = ReadBuf::uninit(&mut storage);
        async_io::block_on(std::future::poll_fn(|cx| {
            Pin::new(&mut socket).poll_read_buf(cx, &mut buf)
        }))
        .unwrap();
        assert_eq!(buf.filled(), b"hello");
        // Fewer bytes than asked for: the socket is drained, and the next read waits for the
        // reactor rather than calling `recv` for an `EAGAIN`.
        assert!(socket.drained);
    }
}
