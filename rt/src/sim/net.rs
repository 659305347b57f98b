//! The simulated network: TCP-like byte streams between in-memory endpoints, with latency,
//! jitter, bandwidth, random drops, blackholes, partitions and crashes.
//!
//! Each connection is two pipes (client to server, server to client). A write lands in the
//! pipe as a segment due at the reader after the link's latency (plus jitter and, on a link
//! with limited bandwidth, its transmission time), never before the segment ahead of it. A
//! pipe holds at most [`SEND_BUFFER`] bytes not yet read, so a writer to a slow or stalled
//! reader blocks as it would on a socket.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use super::{Sim, SimSleep, State, World};
use crate::{Address, BoxFuture, BoxIo, Listener};

/// Bytes a direction of a connection holds before its writer blocks (a socket buffer).
const SEND_BUFFER: usize = 256 * 1024;

/// The address simulated clients connect from.
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// The conditions on the links to one server address (or on every link, as the default).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LinkFaults {
    /// One-way delay of every segment (and of the connection handshake).
    pub latency: Duration,
    /// Extra delay drawn uniformly from zero to this for each segment.
    pub jitter: Duration,
    /// Bytes per second each direction carries; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// The chance that a write resets its connection instead of being sent.
    pub drop_probability: f64,
    /// Connections neither deliver nor complete: new ones hang, existing ones hold their bytes
    /// until [`Sim::heal`].
    pub partitioned: bool,
}

impl LinkFaults {
    /// A link with this one-way latency and nothing else.
    pub fn latency(latency: Duration) -> LinkFaults {
        LinkFaults {
            latency,
            ..LinkFaults::default()
        }
    }

    /// Sets the jitter.
    pub fn with_jitter(mut self, jitter: Duration) -> LinkFaults {
        self.jitter = jitter;
        self
    }

    /// Sets the bandwidth.
    pub fn with_bandwidth(mut self, bytes_per_second: u64) -> LinkFaults {
        self.bandwidth = Some(bytes_per_second);
        self
    }

    /// Sets the chance that a write resets its connection.
    pub fn with_drop_probability(mut self, probability: f64) -> LinkFaults {
        self.drop_probability = probability;
        self
    }
}

#[derive(Default)]
pub(super) struct Net {
    default_link: LinkFaults,
    links: BTreeMap<SocketAddr, LinkFaults>,
    listeners: BTreeMap<SocketAddr, ListenerState>,
    conns: BTreeMap<u64, Conn>,
    hosts: BTreeMap<String, Vec<IpAddr>>,
    txt: BTreeMap<String, Vec<String>>,
    next_port: u16,
}

struct ListenerState {
    /// Distinguishes this listener from a later one bound to the same address.
    id: u64,
    backlog: VecDeque<u64>,
    waker: Option<Waker>,
}

struct Conn {
    server: SocketAddr,
    client: SocketAddr,
    /// Client to server.
    up: Pipe,
    /// Server to client.
    down: Pipe,
    /// Blackholed: nothing is delivered until healed.
    held: bool,
    reset: bool,
    /// A reset on its way: one end wrote after the other had gone, and the peer's RST arrives
    /// then (as on TCP, the write itself succeeds).
    reset_at: Option<Instant>,
    open_ends: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

struct Segment {
    due: Instant,
    data: Vec<u8>,
    read: usize,
}

#[derive(Default)]
struct Pipe {
    segments: VecDeque<Segment>,
    buffered: usize,
    /// When the writer's close reaches the reader.
    fin: Option<Instant>,
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// When the link is free to send the next byte (bandwidth).
    free_at: Option<Instant>,
}

impl Pipe {
    fn last_due(&self) -> Option<Instant> {
        self.segments.back().map(|s| s.due)
    }

    fn wake_all(&mut self) {
        for waker in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

impl Conn {
    /// (what this side writes to, what it reads from).
    fn pipes(&mut self, side: Side) -> (&mut Pipe, &mut Pipe) {
        match side {
            Side::Client => (&mut self.up, &mut self.down),
            Side::Server => (&mut self.down, &mut self.up),
        }
    }

    /// Whether the connection is reset by `now`.
    fn is_reset(&self, now: Instant) -> bool {
        self.reset || self.reset_at.is_some_and(|at| at <= now)
    }

    fn reset(&mut self) {
        self.reset = true;
        self.up.wake_all();
        self.down.wake_all();
    }
}

impl Net {
    fn link(&self, server: &SocketAddr) -> &LinkFaults {
        self.links.get(server).unwrap_or(&self.default_link)
    }

    fn listener_for(&self, addr: SocketAddr) -> Option<SocketAddr> {
        if self.listeners.contains_key(&addr) {
            return Some(addr);
        }
        let any = SocketAddr::new(
            match addr.ip() {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            addr.port(),
        );
        self.listeners.contains_key(&any).then_some(any)
    }

    fn port(&mut self) -> u16 {
        self.next_port = self.next_port.max(40_000) + 1;
        self.next_port
    }

    pub(super) fn lookup_txt(&self, name: &str) -> Vec<String> {
        self.txt.get(name).cloned().unwrap_or_default()
    }

    pub(super) fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        match (self.hosts.get(host), host) {
            (Some(ips), _) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            (None, "localhost") => Ok(vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)]),
            (None, _) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host}: no such host in the simulation"),
            )),
        }
    }
}

impl Sim {
    /// Sets the conditions of links to servers with no conditions of their own.
    pub fn set_default_link(&self, link: LinkFaults) {
        let mut state = self.world.state();
        state.record(format_args!("default link {link:?}"));
        state.net.default_link = link;
        wake_server(&mut state, None);
    }

    /// Sets the conditions of the links to `server` (existing connections included).
    pub fn set_link(&self, server: SocketAddr, link: LinkFaults) {
        let mut state = self.world.state();
        state.record(format_args!("link {server} {link:?}"));
        state.net.links.insert(server, link);
        wake_server(&mut state, Some(server));
    }

    /// Cuts `server` off: new connections to it hang, existing ones deliver nothing (in either
    /// direction) and stay open, until [`Sim::heal`].
    pub fn partition(&self, server: SocketAddr) {
        let mut link = self.world.state().net.link(&server).clone();
        link.partitioned = true;
        self.set_link(server, link);
    }

    /// Blackholes the connections `server` has now: they deliver nothing and stay open (a
    /// peer that vanished without closing, a NAT that forgot the flow). New connections work.
    pub fn blackhole(&self, server: SocketAddr) {
        let mut state = self.world.state();
        state.record(format_args!("blackhole {server}"));
        for conn in state.net.conns.values_mut() {
            if conn.server == server {
                conn.held = true;
            }
        }
    }

    /// Ends a partition of, and every blackhole to, `server`: held bytes are delivered.
    pub fn heal(&self, server: SocketAddr) {
        let mut state = self.world.state();
        state.record(format_args!("heal {server}"));
        if let Some(link) = state.net.links.get_mut(&server) {
            link.partitioned = false;
        }
        for conn in state.net.conns.values_mut() {
            if conn.server == server {
                conn.held = false;
            }
        }
        wake_server(&mut state, Some(server));
    }

    /// Resets every connection to `server` (both ends see `ECONNRESET`).
    pub fn reset_connections(&self, server: SocketAddr) {
        let mut state = self.world.state();
        state.record(format_args!("reset connections to {server}"));
        for conn in state.net.conns.values_mut() {
            if conn.server == server {
                conn.reset();
            }
        }
    }

    /// The server process at `server` crashes: its listener stops accepting (the address is
    /// free to bind again) and every connection to it is reset.
    pub fn crash(&self, server: SocketAddr) {
        self.reset_connections(server);
        let mut state = self.world.state();
        state.record(format_args!("crash {server}"));
        let key = state.net.listener_for(server);
        if let Some(listener) = key.and_then(|key| state.net.listeners.remove(&key)) {
            for id in listener.backlog {
                if let Some(conn) = state.net.conns.get_mut(&id) {
                    conn.reset();
                }
            }
        }
    }

    /// Makes `name` resolve to `ips` (`localhost` and IP literals resolve without this).
    pub fn add_host(&self, name: &str, ips: Vec<IpAddr>) {
        self.world.state().net.hosts.insert(name.to_owned(), ips);
    }

    /// Gives `name` these TXT records (a name without any has none).
    pub fn add_txt(&self, name: &str, records: Vec<String>) {
        self.world.state().net.txt.insert(name.to_owned(), records);
    }

    /// How many connections are open (not yet closed by both ends) to `server`.
    pub fn connections(&self, server: SocketAddr) -> usize {
        let state = self.world.state();
        state
            .net
            .conns
            .values()
            .filter(|c| c.server == server && !c.reset)
            .count()
    }
}

/// Wakes every endpoint of the connections to `server` (all when `None`) so they look again
/// after the link's conditions changed.
fn wake_server(state: &mut State, server: Option<SocketAddr>) {
    for conn in state.net.conns.values_mut() {
        if server.is_none_or(|s| s == conn.server) {
            conn.up.wake_all();
            conn.down.wake_all();
        }
    }
}

pub(super) fn listen(
    world: &World,
    weak: Weak<World>,
    addr: SocketAddr,
) -> io::Result<Box<dyn Listener>> {
    let mut state = world.state();
    let addr = match addr.port() {
        0 => SocketAddr::new(addr.ip(), state.net.port()),
        _ => addr,
    };
    if state.net.listeners.contains_key(&addr) {
        return Err(io::ErrorKind::AddrInUse.into());
    }
    let id = state.id();
    state.net.listeners.insert(
        addr,
        ListenerState {
            id,
            backlog: VecDeque::new(),
            waker: None,
        },
    );
    state.record(format_args!("listen {addr}"));
    Ok(Box::new(SimListener {
        world: weak,
        addr,
        id,
    }))
}

pub(super) fn connect(
    world: Weak<World>,
    addr: SocketAddr,
) -> BoxFuture<'static, io::Result<BoxIo>> {
    Box::pin(async move {
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "the simulation ended");
        let (handshake, partitioned) = {
            let world = world.upgrade().ok_or_else(gone)?;
            let mut state = world.state();
            let link = state.net.link(&addr).clone();
            state.record(format_args!("connect to {addr}"));
            let handshake = SimSleep {
                world: Arc::downgrade(&world),
                id: state.id(),
                deadline: state.now + link.latency * 2,
            };
            (handshake, link.partitioned)
        };
        if partitioned {
            // No SYN-ACK ever comes; the caller's connect timeout ends this.
            std::future::pending::<()>().await;
        }
        handshake.await;
        let world = world.upgrade().ok_or_else(gone)?;
        let mut state = world.state();
        let Some(key) = state.net.listener_for(addr) else {
            state.record(format_args!("connect to {addr} refused"));
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        let id = state.id();
        let client = SocketAddr::new(CLIENT_IP, state.net.port());
        state.net.conns.insert(
            id,
            Conn {
                server: addr,
                client,
                up: Pipe::default(),
                down: Pipe::default(),
                held: false,
                reset: false,
                reset_at: None,
                open_ends: 2,
            },
        );
        let listener = state.net.listeners.get_mut(&key).expect("found above");
        listener.backlog.push_back(id);
        if let Some(waker) = listener.waker.take() {
            waker.wake();
        }
        state.record(format_args!("conn {id}: {client} connected to {addr}"));
        Ok(Box::new(SimStream {
            world: Arc::downgrade(&world),
            conn: id,
            side: Side::Client,
        }) as BoxIo)
    })
}

/// A listening address of the simulated network.
#[derive(Debug)]
struct SimListener {
    world: Weak<World>,
    addr: SocketAddr,
    id: u64,
}

impl Listener for SimListener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        let Some(world) = self.world.upgrade() else {
            return Poll::Pending;
        };
        let mut state = world.state();
        let Some(listener) = state.net.listeners.get_mut(&self.addr) else {
            return Poll::Pending;
        };
        if listener.id != self.id {
            return Poll::Pending;
        }
        let Some(id) = listener.backlog.pop_front() else {
            listener.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let client = state.net.conns.get(&id).map(|c| c.client);
        let Some(client) = client else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        state.record(format_args!("conn {id}: accepted on {}", self.addr));
        let stream = SimStream {
            world: self.world.clone(),
            conn: id,
            side: Side::Server,
        };
        Poll::Ready(Ok((Box::new(stream), Address::Tcp(client))))
    }

    fn local_addr(&self) -> io::Result<Address> {
        Ok(Address::Tcp(self.addr))
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        let Some(world) = self.world.upgrade() else {
            return;
        };
        let mut state = world.state();
        if state
            .net
            .listeners
            .get(&self.addr)
            .is_some_and(|l| l.id == self.id)
        {
            let listener = state.net.listeners.remove(&self.addr).expect("checked");
            for id in listener.backlog {
                if let Some(conn) = state.net.conns.get_mut(&id) {
                    conn.reset();
                }
            }
            state.record(format_args!("closed listener {}", self.addr));
        }
    }
}

/// One end of a simulated connection.
struct SimStream {
    world: Weak<World>,
    conn: u64,
    side: Side,
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset (simulated)",
    )
}

impl SimStream {
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut State, u64, Side) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.world.upgrade() {
            Some(world) => f(&mut world.state(), self.conn, self.side),
            None => Poll::Ready(Err(reset_error())),
        }
    }
}

fn write(
    state: &mut State,
    id: u64,
    side: Side,
    cx: &Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let now = state.now;
    let Some(conn) = state.net.conns.get(&id) else {
        return Poll::Ready(Err(reset_error()));
    };
    let link = state.net.link(&conn.server).clone();
    let drop_it = link.drop_probability > 0.0 && state.rng.f64() < link.drop_probability;
    let jitter = match link.jitter.as_nanos() {
        0 => Duration::ZERO,
        n => Duration::from_nanos(state.rng.u64(0..=u64::try_from(n).unwrap_or(u64::MAX))),
    };
    let conn = state.net.conns.get_mut(&id).expect("looked up above");
    if conn.is_reset(now) {
        return Poll::Ready(Err(reset_error()));
    }
    if drop_it {
        conn.reset();
        state.record(format_args!("conn {id}: dropped"));
        return Poll::Ready(Err(reset_error()));
    }
    let (out, _) = conn.pipes(side);
    if out.fin.is_some() {
        return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
    }
    if out.reader_gone {
        // The bytes go nowhere; the peer answers with a reset, which arrives a latency later
        // and discards whatever this end has not read yet.
        if conn.reset_at.is_none() {
            let at = now + link.latency * 2;
            conn.reset_at = Some(at);
            let (_, incoming) = conn.pipes(side);
            let reader = incoming.reader.take();
            state.record(format_args!(
                "conn {id}: {side:?} wrote after the peer closed"
            ));
            if let Some(reader) = reader {
                state.wake_at(at, reader);
            }
        }
        return Poll::Ready(Ok(buf.len()));
    }
    if out.buffered >= SEND_BUFFER {
        out.writer = Some(cx.waker().clone());
        return Poll::Pending;
    }
    let n = buf.len().min(SEND_BUFFER - out.buffered);
    let sent = match link.bandwidth {
        Some(rate) if rate > 0 => {
            let start = out.free_at.map_or(now, |t| t.max(now));
            let done = start + Duration::from_secs_f64(n as f64 / rate as f64);
            out.free_at = Some(done);
            done
        }
        _ => now,
    };
    let due = (sent + link.latency + jitter).max(out.last_due().unwrap_or(now));
    out.segments.push_back(Segment {
        due,
        data: buf[..n].to_vec(),
        read: 0,
    });
    out.buffered += n;
    if let Some(reader) = out.reader.take() {
        reader.wake();
    }
    Poll::Ready(Ok(n))
}

fn read(
    state: &mut State,
    id: u64,
    side: Side,
    cx: &Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let now = state.now;
    let partitioned = match state.net.conns.get(&id) {
        Some(conn) => state.net.link(&conn.server).partitioned,
        None => return Poll::Ready(Err(reset_error())),
    };
    let conn = state.net.conns.get_mut(&id).expect("looked up above");
    if conn.is_reset(now) {
        return Poll::Ready(Err(reset_error()));
    }
    let reset_at = conn.reset_at;
    let held = conn.held || partitioned;
    let (_, incoming) = conn.pipes(side);
    if held {
        incoming.reader = Some(cx.waker().clone());
        return Poll::Pending;
    }
    let mut n = 0;
    while n < buf.len() {
        let Some(segment) = incoming.segments.front_mut() else {
            break;
        };
        if segment.due > now {
            break;
        }
        let take = (segment.data.len() - segment.read).min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&segment.data[segment.read..segment.read + take]);
        segment.read += take;
        n += take;
        if segment.read == segment.data.len() {
            incoming.segments.pop_front();
        }
    }
    if n > 0 {
        incoming.buffered -= n;
        if let Some(writer) = incoming.writer.take() {
            writer.wake();
        }
        state.record(format_args!("conn {id}: {side:?} read {n}"));
        return Poll::Ready(Ok(n));
    }
    let next = match incoming.segments.front() {
        Some(segment) => Some(segment.due),
        None => incoming.fin,
    };
    match next {
        Some(due) if due <= now => {
            state.record(format_args!("conn {id}: {side:?} read end of stream"));
            Poll::Ready(Ok(0))
        }
        Some(due) => {
            state.wake_at(reset_at.map_or(due, |at| at.min(due)), cx.waker().clone());
            Poll::Pending
        }
        None => {
            match reset_at {
                Some(at) => state.wake_at(at, cx.waker().clone()),
                None => incoming.reader = Some(cx.waker().clone()),
            }
            Poll::Pending
        }
    }
}

fn close(state: &mut State, id: u64, side: Side) {
    let now = state.now;
    let Some(conn) = state.net.conns.get(&id) else {
        return;
    };
    let latency = state.net.link(&conn.server).latency;
    let conn = state.net.conns.get_mut(&id).expect("looked up above");
    let (out, _) = conn.pipes(side);
    if out.fin.is_none() {
        out.fin = Some((now + latency).max(out.last_due().unwrap_or(now)));
        if let Some(reader) = out.reader.take() {
            reader.wake();
        }
        state.record(format_args!("conn {id}: {side:?} closed"));
    }
}

impl futures_io::AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.with_conn(|state, id, side| read(state, id, side, cx, buf))
    }
}

/// Read through the provided, zero-filling `poll_read_buf`: the simulation copies its bytes
/// out of its pipes.
impl crate::Io for SimStream {}

impl futures_io::AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with_conn(|state, id, side| write(state, id, side, cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_conn(|state, id, side| {
            close(state, id, side);
            Poll::Ready(Ok(()))
        })
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        let Some(world) = self.world.upgrade() else {
            return;
        };
        let mut state = world.state();
        close(&mut state, self.conn, self.side);
        let Some(conn) = state.net.conns.get_mut(&self.conn) else {
            return;
        };
        let (_, incoming) = conn.pipes(self.side);
        // Our end is gone: what the peer sends from now on is refused.
        incoming.reader_gone = true;
        incoming.segments.clear();
        incoming.buffered = 0;
        if let Some(writer) = incoming.writer.take() {
            writer.wake();
        }
        conn.open_ends -= 1;
        if conn.open_ends == 0 {
            state.net.conns.remove(&self.conn);
        }
    }
}
