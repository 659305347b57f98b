//! A runtime on a tokio `Handle` (feature `tokio`).

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::{io::ReadBuf, runtime::Handle};

use crate::{Address, BoxFuture, BoxIo, Listener, Runtime, Sleep, TcpOptions};

/// Runs anygrpc's tasks, timers and sockets on a tokio runtime.
///
/// Sockets and timers are registered with the handle's drivers, so futures from this runtime
/// may be awaited from any thread; connection tasks run on the tokio runtime.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// Uses the given tokio runtime.
    pub fn new(handle: Handle) -> TokioRuntime {
        TokioRuntime { handle }
    }

    /// Uses the tokio runtime this is called from, if any.
    pub fn try_current() -> Option<TokioRuntime> {
        Handle::try_current().ok().map(TokioRuntime::new)
    }

    /// Runs `fut` on the tokio runtime and waits for it from wherever the caller runs.
    fn on_runtime<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = io::Result<T>> + Send + 'static,
    ) -> BoxFuture<'static, io::Result<T>> {
        let task = self.handle.spawn(fut);
        Box::pin(async move { task.await.map_err(io::Error::other)? })
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    struct TokioSleep {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl std::future::Future for TokioSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl Sleep for TokioSleep {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.project().sleep.reset(deadline.into());
    }
}

/// A tokio stream presented as a `futures-io` stream.
#[derive(Debug)]
struct FuturesIo<T>(T);

impl<T: tokio::io::AsyncRead + Unpin> futures_io::AsyncRead for FuturesIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        std::task::ready!(Pin::new(&mut self.get_mut().0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl<T> crate::Io for FuturesIo<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    /// Hands h2's buffer to the tokio stream as it is: `ReadBuf` is tokio's own, and a tokio
    /// stream reads into its uninitialized part soundly.
    fn poll_read_buf(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures_io::AsyncWrite for FuturesIo<T> {
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
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    options: TcpOptions,
}

impl Listener for TcpAcceptor {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        let (stream, peer) = std::task::ready!(self.listener.poll_accept(cx))?;
        crate::configure_stream(&stream, &self.options)?;
        Poll::Ready(Ok((Box::new(FuturesIo(stream)), Address::Tcp(peer))))
    }

    fn local_addr(&self) -> io::Result<Address> {
        self.listener.local_addr().map(Address::Tcp)
    }
}

#[derive(Debug)]
struct UnixAcceptor {
    listener: tokio::net::UnixListener,
    /// The abstract name it is bound to, if it is.
    abstract_name: Option<Vec<u8>>,
}

impl Listener for UnixAcceptor {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        let (stream, peer) = std::task::ready!(self.listener.poll_accept(cx))?;
        let path = peer.as_pathname().map(PathBuf::from).unwrap_or_default();
        Poll::Ready(Ok((Box::new(FuturesIo(stream)), Address::Unix(path))))
    }

    fn local_addr(&self) -> io::Result<Address> {
        if let Some(name) = &self.abstract_name {
            return Ok(Address::UnixAbstract(name.clone()));
        }
        let addr = self.listener.local_addr()?;
        Ok(Address::Unix(
            addr.as_pathname().map(PathBuf::from).unwrap_or_default(),
        ))
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.handle.spawn(task);
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let _guard = self.handle.enter();
        Box::pin(TokioSleep {
            sleep: tokio::time::sleep_until(deadline.into()),
        })
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.on_runtime(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            crate::configure_stream(&stream, &options)?;
            Ok(Box::new(FuturesIo(stream)) as BoxIo)
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.on_runtime(async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(Box::new(FuturesIo(stream)) as BoxIo)
        })
    }

    fn listen_tcp(&self, addr: SocketAddr, options: TcpOptions) -> io::Result<Box<dyn Listener>> {
        let _guard = self.handle.enter();
        let std_listener = crate::bind_tcp(addr, &options)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        Ok(Box::new(TcpAcceptor { listener, options }))
    }

    fn listen_unix(&self, path: PathBuf) -> io::Result<Box<dyn Listener>> {
        let _guard = self.handle.enter();
        let listener = tokio::net::UnixListener::bind(path)?;
        Ok(Box::new(UnixAcceptor {
            listener,
            abstract_name: None,
        }))
    }

    #[cfg(target_os = "linux")]
    fn connect_unix_abstract(&self, name: Vec<u8>) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.on_runtime(async move {
            let stream = tokio::net::UnixStream::from_std(crate::connect_abstract(&name)?)?;
            Ok(Box::new(FuturesIo(stream)) as BoxIo)
        })
    }

    #[cfg(target_os = "linux")]
    fn listen_unix_abstract(&self, name: Vec<u8>) -> io::Result<Box<dyn Listener>> {
        let _guard = self.handle.enter();
        let listener = tokio::net::UnixListener::from_std(crate::bind_abstract(&name)?)?;
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
        self.on_runtime(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}
