//! Network faults for tests: connections that can be blackholed.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use anygrpc::rt::{BoxFuture, BoxIo, Listener, Runtime, Sleep, TcpOptions};
use futures_io::{AsyncRead, AsyncWrite};

/// A runtime whose client connections a test can blackhole: after
/// [`blackhole`](Blackholes::blackhole), the connections made so far deliver nothing in either
/// direction and never close (reads wait forever, writes are swallowed). Later connections
/// work. It also counts the connections made.
#[derive(Debug)]
pub struct Blackholes {
    inner: Arc<dyn Runtime>,
    switches: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Blackholes {
    /// Wraps the default runtime.
    pub fn new() -> Arc<Blackholes> {
        Arc::new(Blackholes {
            inner: anygrpc::rt::default_runtime().expect("default runtime"),
            switches: Mutex::new(Vec::new()),
        })
    }

    /// Cuts every connection made so far.
    pub fn blackhole(&self) {
        for switch in self.switches.lock().unwrap().iter() {
            switch.store(true, Ordering::SeqCst);
        }
    }

    /// How many connections have been made.
    pub fn connections(&self) -> usize {
        self.switches.lock().unwrap().len()
    }
}

/// A connection that can be blackholed.
struct Hole {
    io: BoxIo,
    cut: Arc<AtomicBool>,
}

impl Hole {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl AsyncRead for Hole {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        // Bytes that arrive after the cut are dropped, as a blackhole would.
        match self.is_cut() {
            true => Poll::Pending,
            false => poll,
        }
    }
}

impl AsyncWrite for Hole {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

impl Runtime for Blackholes {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn(task)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep_until(deadline)
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        let cut = Arc::new(AtomicBool::new(false));
        self.switches.lock().unwrap().push(cut.clone());
        let connect = self.inner.connect_tcp(addr, options);
        Box::pin(async move {
            let io = connect.await?;
            Ok(Box::new(Hole { io, cut }) as BoxIo)
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.inner.connect_unix(path)
    }

    fn listen_tcp(&self, addr: SocketAddr, options: TcpOptions) -> io::Result<Box<dyn Listener>> {
        self.inner.listen_tcp(addr, options)
    }

    fn listen_unix(&self, path: PathBuf) -> io::Result<Box<dyn Listener>> {
        self.inner.listen_unix(path)
    }

    fn lookup_host(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        self.inner.lookup_host(host, port)
    }
}
