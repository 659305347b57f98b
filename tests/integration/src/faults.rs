//! Network faults for tests: client connections that can be blackholed or slowed down.

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
    time::{Duration, Instant},
};

use anygrpc::rt::{BoxFuture, BoxIo, Listener, Runtime, Sleep, TcpOptions};
use futures_io::{AsyncRead, AsyncWrite};
use std::future::Future;

/// A runtime whose client connections a test can blackhole: after
/// [`blackhole`](FaultyNet::blackhole), the connections made so far deliver nothing in either
/// direction and never close (reads wait forever, writes are swallowed). Later connections
/// work. With a read delay, every byte the client reads arrives that much later (a link's
/// latency). It counts the connections made and keeps what the client wrote.
#[derive(Debug)]
pub struct FaultyNet {
    inner: Arc<dyn Runtime>,
    switches: Mutex<Vec<Arc<AtomicBool>>>,
    read_delay: Duration,
    written: Arc<Mutex<Vec<u8>>>,
}

impl FaultyNet {
    /// Wraps the default runtime.
    pub fn new() -> Arc<FaultyNet> {
        FaultyNet::with_read_delay(Duration::ZERO)
    }

    /// Wraps the default runtime, delaying what clients read by `delay`.
    pub fn with_read_delay(delay: Duration) -> Arc<FaultyNet> {
        Arc::new(FaultyNet {
            inner: anygrpc::rt::default_runtime().expect("default runtime"),
            switches: Mutex::new(Vec::new()),
            read_delay: delay,
            written: Arc::default(),
        })
    }

    /// Every byte the clients wrote, connections one after another.
    pub fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
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

/// A connection that can be blackholed or delayed.
struct Hole {
    io: BoxIo,
    cut: Arc<AtomicBool>,
    delay: Duration,
    /// Bytes read from the socket, each chunk with the time it may be delivered.
    in_flight: std::collections::VecDeque<(Instant, Vec<u8>)>,
    timer: Option<async_io::Timer>,
    eof: bool,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Hole {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Read through the provided `poll_read_buf`: the hole copies what it lets through.
impl anygrpc::rt::Io for Hole {}

impl AsyncRead for Hole {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Pending;
        }
        if self.delay.is_zero() {
            let poll = Pin::new(&mut self.io).poll_read(cx, buf);
            // Bytes that arrive after the cut are dropped, as a blackhole would.
            return match self.is_cut() {
                true => Poll::Pending,
                false => poll,
            };
        }
        let this = &mut *self;
        // Take in what the socket has, stamped with when it may be delivered.
        while !this.eof {
            let mut chunk = vec![0; 64 * 1024];
            match Pin::new(&mut this.io).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => {
                    chunk.truncate(n);
                    this.in_flight
                        .push_back((Instant::now() + this.delay, chunk));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let Some((due, chunk)) = this.in_flight.front_mut() else {
            return match this.eof {
                true => Poll::Ready(Ok(0)),
                false => Poll::Pending,
            };
        };
        if Instant::now() < *due {
            let timer = this.timer.insert(async_io::Timer::at(*due));
            return match Pin::new(timer).poll(cx) {
                Poll::Ready(_) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            };
        }
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            this.in_flight.pop_front();
        }
        Poll::Ready(Ok(n))
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
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        poll
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

impl Runtime for FaultyNet {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn(task)
    }

    fn spawn_connection(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn_connection(task)
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
        let (delay, written) = (self.read_delay, self.written.clone());
        Box::pin(async move {
            let io = connect.await?;
            Ok(Box::new(Hole {
                io,
                cut,
                delay,
                in_flight: Default::default(),
                timer: None,
                eof: false,
                written,
            }) as BoxIo)
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
