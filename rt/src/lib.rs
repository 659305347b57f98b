//! The runtime layer of anygrpc: everything that depends on *which* async runtime runs the
//! program.
//!
//! The rest of anygrpc never names a runtime. It asks a [`Runtime`] to spawn a task, make a
//! timer, read the clock, connect, listen and look up a host name; and it hands the byte
//! streams it gets to `h2` through [`H2Io`], the adapter from `futures-io` to the tokio IO
//! traits that `h2` speaks (tokio the *traits*, never the tokio runtime).
//!
//! Two runtimes ship: [`AsyncIoRuntime`] (the default: async-io's reactor and timers, with
//! spawned tasks run by a small pool of worker threads, so it works from any executor
//! and from a plain `block_on`) and, behind the `tokio` feature, [`TokioRuntime`].
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

mod compat;
mod dns;
pub use anygrpc_codec::{Address, Endpoint};
pub use compat::{Gate, H2Io, Tap};
pub use tokio::io::ReadBuf;

#[cfg(feature = "async-io")]
mod async_io_rt;
#[cfg(feature = "async-io")]
mod pool;
#[cfg(feature = "async-io")]
pub use async_io_rt::AsyncIoRuntime;

/// Runs a future to completion on the current thread: the blocking entry point for programs
/// with no executor (the default runtime's sockets and timers need none).
#[cfg(feature = "async-io")]
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_io::block_on(future)
}

/// Runs `work` on a thread for blocking work and resolves to its result.
///
/// A handler (or any task) that blocks its thread — a synchronous database driver, file IO, a
/// long computation — holds up the tasks queued behind it on that worker, the other calls of
/// its connection among them. Awaiting `spawn_blocking(work)` instead moves the work to a pool
/// of threads kept for it (the `blocking` crate's: threads are started as needed, up to
/// `BLOCKING_MAX_THREADS`, default 500, and end after a second idle), and the task sleeps
/// until the work is done. It works on every runtime, the default one, tokio's and a custom
/// one, and from a plain `block_on`; dropping the future does not stop `work`.
pub fn spawn_blocking<T, F>(work: F) -> impl Future<Output = T> + Send + 'static
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    blocking::unblock(work)
}

#[cfg(feature = "sim")]
pub mod sim;

#[cfg(feature = "tokio")]
mod tokio_rt;
#[cfg(feature = "tokio")]
pub use tokio_rt::TokioRuntime;

/// A boxed, sendable future, as the [`Runtime`] methods take and return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream a runtime connected or accepted: TCP, a Unix socket, or anything else a custom
/// runtime provides (an in-memory pipe in tests).
///
/// [`H2Io`] reads through [`Io::poll_read_buf`] into h2's buffer, whose unfilled part is
/// uninitialized memory. The provided method zero-fills the part it reads into and calls
/// `poll_read`, so it is sound for any stream; a stream that can write into uninitialized memory
/// (a socket, which the kernel fills) overrides it and skips the zero-filling. Wrap a stream that
/// has no `Io` impl of its own with [`box_io`].
pub trait Io: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static {
    /// Reads into the unfilled part of `buf`, advancing its filled part by the bytes read; at
    /// the end of the stream it reads nothing.
    fn poll_read_buf(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(ZEROED_READ);
        let slice = buf.initialize_unfilled_to(want);
        let n = std::task::ready!(futures_io::AsyncRead::poll_read(self, cx, slice))?.min(want);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The most a provided [`Io::poll_read_buf`] zero-fills and reads at once: a TLS record's
/// plaintext, and the size of an HTTP/2 DATA frame by default.
///
/// h2 hands each read a fresh view of its buffer, so what one read initialized is not known to
/// the next: filling all of a buffer h2 grew for a large frame on every read would cost a write
/// of the whole buffer per read.
const ZEROED_READ: usize = 16 * 1024;

/// Boxes a stream that has no [`Io`] impl of its own (a TLS stream, a test's pipe), reading it
/// through the provided, zero-filling [`Io::poll_read_buf`].
pub fn box_io<T>(io: T) -> BoxIo
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static,
{
    Box::new(Zeroed(io))
}

/// A stream read through the provided [`Io::poll_read_buf`]: see [`box_io`].
struct Zeroed<T>(T);

impl<T> fmt::Debug for Zeroed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Zeroed")
    }
}

impl<T: futures_io::AsyncRead + Unpin> futures_io::AsyncRead for Zeroed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: futures_io::AsyncWrite + Unpin> futures_io::AsyncWrite for Zeroed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

impl<T: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static> Io for Zeroed<T> {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// A timer made by [`Runtime::sleep_until`]: completes at its deadline and can be moved.
pub trait Sleep: Future<Output = ()> + Send + fmt::Debug {
    /// Moves the deadline; the timer completes at the new instant (at once if it has passed).
    fn reset(self: Pin<&mut Self>, deadline: Instant);
}

/// A listening socket.
pub trait Listener: Send + fmt::Debug + 'static {
    /// Accepts the next connection. An error is about one connection (or a transient resource
    /// shortage such as EMFILE); the caller keeps accepting.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>>;

    /// The bound address (with the actual port when bound to port 0).
    fn local_addr(&self) -> io::Result<Address>;
}

/// Options for new TCP connections and listeners (a listener applies them to the connections
/// it accepts).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TcpOptions {
    /// Set `TCP_NODELAY` (on by default in anygrpc: gRPC messages are latency-sensitive).
    pub nodelay: bool,
    /// Set `TCP_USER_TIMEOUT` (Linux): how long sent data may stay unacknowledged before the
    /// kernel drops the connection. gRPC sets it to the keepalive timeout.
    pub user_timeout: Option<Duration>,
    /// Bind listeners with `SO_REUSEPORT`, so several servers (processes) can share a port and
    /// the kernel spreads connections over them.
    pub reuse_port: bool,
}

impl TcpOptions {
    /// Sets `TCP_NODELAY`.
    pub fn with_nodelay(mut self, on: bool) -> TcpOptions {
        self.nodelay = on;
        self
    }

    /// Sets `TCP_USER_TIMEOUT` (Linux; ignored elsewhere).
    pub fn with_user_timeout(mut self, timeout: Option<Duration>) -> TcpOptions {
        self.user_timeout = timeout;
        self
    }

    /// Binds listeners with `SO_REUSEPORT`.
    pub fn with_reuse_port(mut self, on: bool) -> TcpOptions {
        self.reuse_port = on;
        self
    }
}

/// What anygrpc needs from an async runtime. Object-safe: anygrpc holds an `Arc<dyn Runtime>`.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Runs a task to completion in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Runs a connection's task in the background: the one that reads and writes a socket for
    /// many calls, woken by each of them. A runtime may run it ahead of other woken tasks, so
    /// calls' frames reach the peer sooner; by default it is spawned as any task.
    fn spawn_connection(&self, task: BoxFuture<'static, ()>) {
        self.spawn(task)
    }

    /// The current time, from the runtime's clock (a simulated runtime returns virtual time).
    fn now(&self) -> Instant;

    /// The wall-clock time, for timestamps that people read (channelz's). A simulated runtime
    /// returns its virtual time's, so they repeat from run to run.
    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }

    /// A timer that completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>>;

    /// Opens a TCP connection.
    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxIo>>;

    /// Opens a Unix-domain socket connection.
    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<BoxIo>>;

    /// Binds a TCP listener.
    fn listen_tcp(&self, addr: SocketAddr, options: TcpOptions) -> io::Result<Box<dyn Listener>>;

    /// Binds a Unix-domain socket listener.
    fn listen_unix(&self, path: PathBuf) -> io::Result<Box<dyn Listener>>;

    /// Opens a connection to a socket in Linux's abstract namespace. Elsewhere, and by
    /// default, unsupported.
    fn connect_unix_abstract(&self, name: Vec<u8>) -> BoxFuture<'static, io::Result<BoxIo>> {
        let _ = name;
        Box::pin(async { Err(abstract_unsupported()) })
    }

    /// Binds a listener in Linux's abstract namespace. Elsewhere, and by default,
    /// unsupported.
    fn listen_unix_abstract(&self, name: Vec<u8>) -> io::Result<Box<dyn Listener>> {
        let _ = name;
        Err(abstract_unsupported())
    }

    /// Resolves a host name with the system resolver, off the executor threads.
    fn lookup_host(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;

    /// Resolves `host` by asking the DNS server at `server` itself, for a `dns://AUTHORITY/`
    /// target that names one: its A and then its AAAA records, with `port`. Default: a query
    /// of each over UDP, then over TCP when the answer is truncated, 5 s per answer, on the
    /// blocking pool.
    fn lookup_host_at(
        &self,
        server: SocketAddr,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(spawn_blocking(move || {
            dns::lookup_host_at(server, &host, port)
        }))
    }

    /// The TXT records of `name`, each record's strings joined; none when the name does not
    /// exist. Asked for the service config in DNS (gRFC A2), when a channel turns that on.
    /// Default: one query to the first nameserver of `/etc/resolv.conf`, over UDP and then
    /// over TCP when the answer is truncated, 5 s per answer, on the blocking pool.
    fn lookup_txt(&self, name: String) -> BoxFuture<'static, io::Result<Vec<String>>> {
        Box::pin(spawn_blocking(move || dns::lookup_txt(&name)))
    }

    /// This machine's host name, which a service config in DNS may select on (A2's
    /// `clientHostname`). Default: the kernel's.
    fn hostname(&self) -> String {
        dns::hostname()
    }
}

fn abstract_unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract Unix sockets need Linux and a runtime that supports them",
    )
}

/// The socket address of a name in Linux's abstract namespace.
#[cfg(all(target_os = "linux", any(feature = "async-io", feature = "tokio")))]
fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// Connects a non-blocking std Unix stream to an abstract name (connecting a Unix socket
/// completes at once: the kernel queues it on the listener's backlog).
#[cfg(all(target_os = "linux", any(feature = "async-io", feature = "tokio")))]
fn connect_abstract(name: &[u8]) -> io::Result<std::os::unix::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::connect_addr(&abstract_addr(name)?)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Binds a non-blocking std Unix listener to an abstract name.
#[cfg(all(target_os = "linux", any(feature = "async-io", feature = "tokio")))]
fn bind_abstract(name: &[u8]) -> io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr(name)?)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The runtime anygrpc uses when none is given: [`AsyncIoRuntime`] with the `async-io`
/// feature, else [`TokioRuntime::current`] with the `tokio` feature.
///
/// Returns `None` when neither feature is enabled (or, tokio-only, outside a tokio runtime).
pub fn default_runtime() -> Option<Arc<dyn Runtime>> {
    #[cfg(feature = "async-io")]
    {
        Some(Arc::new(AsyncIoRuntime::new()))
    }
    #[cfg(all(not(feature = "async-io"), feature = "tokio"))]
    {
        TokioRuntime::try_current().map(|rt| Arc::new(rt) as Arc<dyn Runtime>)
    }
    #[cfg(not(any(feature = "async-io", feature = "tokio")))]
    {
        None
    }
}

/// Applies the per-connection options to a connected or accepted TCP socket.
#[cfg(any(feature = "async-io", feature = "tokio"))]
fn configure_stream(stream: impl std::os::fd::AsFd, options: &TcpOptions) -> io::Result<()> {
    use rustix::net::sockopt;
    if options.nodelay {
        sockopt::set_tcp_nodelay(&stream, true)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = options.user_timeout {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        sockopt::set_tcp_user_timeout(&stream, ms)?;
    }
    Ok(())
}

/// Binds a non-blocking TCP listener, with `SO_REUSEPORT` if asked for.
#[cfg(any(feature = "async-io", feature = "tokio"))]
fn bind_tcp(addr: SocketAddr, options: &TcpOptions) -> io::Result<std::net::TcpListener> {
    let listener = match options.reuse_port {
        false => std::net::TcpListener::bind(addr)?,
        true => {
            use rustix::net::{sockopt, AddressFamily, SocketType};
            let family = match addr {
                SocketAddr::V4(_) => AddressFamily::INET,
                SocketAddr::V6(_) => AddressFamily::INET6,
            };
            let socket = rustix::net::socket(family, SocketType::STREAM, None)?;
            sockopt::set_socket_reuseaddr(&socket, true)?;
            sockopt::set_socket_reuseport(&socket, true)?;
            rustix::net::bind(&socket, &addr)?;
            rustix::net::listen(&socket, 1024)?;
            std::net::TcpListener::from(socket)
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(all(test, feature = "async-io"))]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_lets_two_listeners_share_a_port() {
        let rt = AsyncIoRuntime::new();
        let shared = TcpOptions::default().with_reuse_port(true);
        let first = rt
            .listen_tcp("127.0.0.1:0".parse().unwrap(), shared.clone())
            .unwrap();
        let Address::Tcp(addr) = first.local_addr().unwrap() else {
            unreachable!()
        };
        assert!(rt.listen_tcp(addr, shared).is_ok());
        let err = rt.listen_tcp(addr, TcpOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn connections_get_nodelay_and_the_user_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let options = TcpOptions::default()
            .with_nodelay(true)
            .with_user_timeout(Some(Duration::from_millis(1500)));
        configure_stream(&stream, &options).unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(
            rustix::net::sockopt::tcp_user_timeout(&stream).unwrap(),
            1500
        );
    }
}
