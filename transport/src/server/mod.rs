//! The server: [`Server`] accepts connections and routes each call to a [`Service`].

mod call;
mod chain;
mod inline;
mod respond;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use anygrpc_codec::{
    keepalive::{self, KeepaliveConfig, PingPolicy, PingStrikes},
    lifetime::{earliest, ConnectionLimits, Lifetime, LifetimeAction},
};
use anygrpc_rt::{Address, BoxFuture, BoxIo, H2Io, Listener, Runtime, TcpOptions};
use futures_util::{
    future::{poll_fn, Either, FutureExt},
    StreamExt,
};

pub use call::{PreviousAttempts, ServerCall};

use crate::{
    channelz::{proto::channel_trace_event::Severity, ServerNode, SocketNode},
    connection::{
        self, ConnectionTap, Liveness, LivenessEvent, Timer, KEEPALIVE_TIMEOUT, TOO_MANY_PINGS,
    },
    limits::{Bounded, Deadline, Uncancelled},
    settings::{call_setters, CallSettings},
};

/// The default `SETTINGS_MAX_CONCURRENT_STREAMS` a server advertises.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;

/// How long calls may run after a graceful shutdown begins, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long a connection closed for misbehaving (or by a dead peer's absence) may take to
/// flush its final GOAWAY before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many accepted calls wait for the connection's reads to finish before they are
/// polled (and their responses written together), so a peer that keeps the socket full still
/// has its calls answered. Small enough that a burst of calls is answered in several writes: a
/// peer with a core of its own handles the first responses while the rest are made, instead of
/// the two sides taking turns with the whole burst (64 per write halved the calls/s between
/// anygrpc's client and server each pinned to a core), and large enough that a write still
/// carries many responses under load.
const ACCEPT_BATCH: usize = 16;

/// A gRPC service: routes a method name to its handler. Generated code implements this.
///
/// Handlers run as tasks on the server's runtime, beside the connection's own task and the
/// other calls' tasks. A handler that computes is spread over the runtime's workers; one that
/// blocks its thread (a synchronous database driver, file IO) should do that work in
/// [`spawn_blocking`](crate::rt::spawn_blocking), or the calls queued behind it on its worker
/// wait for it.
pub trait Service: Send + Sync + 'static {
    /// The fully qualified service name, e.g. `helloworld.Greeter`.
    fn name(&self) -> &'static str;

    /// Handles one call of `method` (the part of the path after the service name). Unknown
    /// methods should end with [`ServerCall::unimplemented`].
    fn call(&self, method: &str, call: ServerCall) -> BoxFuture<'static, ()>;

    /// Whether `method` is one of the service's. Metrics name calls to any other `other`
    /// (gRFC A66), so that arbitrary paths cannot grow their cardinality. Generated services
    /// list their methods; the default counts every name as one.
    fn has_method(&self, method: &str) -> bool {
        let _ = method;
        true
    }

    /// The server has begun a graceful shutdown: called before its connections are told to go
    /// away. The health service reports NOT_SERVING from here on. Default: nothing.
    fn shutting_down(&self) {}
}

/// Settings shared by every connection and call of a server.
pub(crate) struct ServerShared {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) services: HashMap<&'static str, Arc<dyn Service>>,
    pub(crate) call: CallSettings,
    handshake_timeout: Duration,
    keepalive: KeepaliveConfig,
    ping_policy: PingPolicy,
    limits: ConnectionLimits,
    shutdown_grace: Option<Duration>,
    slow_first_poll: Duration,
    /// The stream window the BDP estimate starts from, if windows grow with it.
    dynamic_window: Option<u32>,
    h2: h2::server::Builder,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
    /// The server's channelz entry, and the address it listens on.
    pub(crate) channelz: Arc<ServerNode>,
    /// Where calls are measured, if anywhere.
    pub(crate) metrics: Option<crate::metrics::Recorder>,
    local_addr: Option<Address>,
}

/// Configures and runs a gRPC server.
///
/// ```no_run
/// # async fn run(service: impl anygrpc::server::Service) -> std::io::Result<()> {
/// anygrpc::Server::builder()
///     .add_service(service)
///     .serve("127.0.0.1:50051".parse::<std::net::SocketAddr>().unwrap())
///     .await
/// # }
/// ```
pub struct Server {
    runtime: Option<Arc<dyn Runtime>>,
    services: HashMap<&'static str, Arc<dyn Service>>,
    call: CallSettings,
    max_concurrent_streams: u32,
    initial_stream_window_size: u32,
    initial_connection_window_size: u32,
    max_frame_size: u32,
    max_send_buffer_size: usize,
    max_pending_accept_reset_streams: usize,
    max_local_error_reset_streams: usize,
    max_concurrent_reset_streams: usize,
    tcp_nodelay: bool,
    reuse_port: bool,
    handshake_timeout: Duration,
    keepalive: KeepaliveConfig,
    ping_policy: PingPolicy,
    limits: ConnectionLimits,
    shutdown_grace: Option<Duration>,
    slow_first_poll: Duration,
    dynamic_window: bool,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ServerTlsConfig>,
    #[cfg(feature = "opentelemetry")]
    metrics: Option<crate::metrics::Metrics>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with default settings and no services.
    pub fn builder() -> Server {
        Server {
            runtime: None,
            services: HashMap::new(),
            call: CallSettings::default(),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 2 << 20,
            max_frame_size: 16 * 1024,
            max_send_buffer_size: 400 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_concurrent_reset_streams: 50,
            tcp_nodelay: true,
            reuse_port: false,
            handshake_timeout: Duration::from_secs(20),
            keepalive: KeepaliveConfig {
                time: keepalive::DEFAULT_SERVER_KEEPALIVE_TIME,
                timeout: keepalive::DEFAULT_KEEPALIVE_TIMEOUT,
                permit_without_calls: true,
            },
            ping_policy: PingPolicy::default(),
            limits: ConnectionLimits::default(),
            shutdown_grace: Some(DEFAULT_SHUTDOWN_GRACE),
            slow_first_poll: inline::SLOW_POLL,
            dynamic_window: true,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "opentelemetry")]
            metrics: None,
        }
    }

    /// Records the server's calls in `metrics` (gRFC A66; see [`crate::metrics`]).
    #[cfg(feature = "opentelemetry")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds a service; a later service with the same name replaces the earlier one.
    pub fn add_service(mut self, service: impl Service) -> Self {
        self.services.insert(service.name(), Arc::new(service));
        self
    }

    /// The runtime for sockets, timers and tasks. Default:
    /// [`rt::default_runtime`](crate::rt::default_runtime).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    call_setters!();

    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: calls in flight per connection. Default 1000.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// HTTP/2 initial stream flow-control window. Default 1 MiB, grown with the measured
    /// bandwidth-delay product (up to 16 MiB); setting it fixes the windows.
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.initial_stream_window_size = bytes;
        self.dynamic_window = false;
        self
    }

    /// HTTP/2 initial connection flow-control window. Default 2 MiB, grown with the measured
    /// bandwidth-delay product; setting it fixes the windows.
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.initial_connection_window_size = bytes;
        self.dynamic_window = false;
        self
    }

    /// `SETTINGS_MAX_FRAME_SIZE`. Default 16 KiB.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Most bytes buffered for sending per stream. Default 400 KiB.
    pub fn max_send_buffer_size(mut self, bytes: usize) -> Self {
        self.max_send_buffer_size = bytes;
        self
    }

    /// Streams a client may open and reset before the server accepts them, before the
    /// connection is closed with ENHANCE_YOUR_CALM (rapid-reset protection). Default 20.
    pub fn max_pending_accept_reset_streams(mut self, streams: usize) -> Self {
        self.max_pending_accept_reset_streams = streams;
        self
    }

    /// Streams the server may reset for a client's protocol errors before it closes the
    /// connection. Default 1024.
    pub fn max_local_error_reset_streams(mut self, streams: usize) -> Self {
        self.max_local_error_reset_streams = streams;
        self
    }

    /// Reset streams remembered at once (to tolerate frames in flight). Default 50.
    pub fn max_concurrent_reset_streams(mut self, streams: usize) -> Self {
        self.max_concurrent_reset_streams = streams;
        self
    }

    /// Sets `TCP_NODELAY` on accepted connections. Default: on.
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Binds the listener with `SO_REUSEPORT`, so that several server processes can share the
    /// port and the kernel spreads connections over them. Default: off.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Pings a connection that has sent nothing for `time`. Default 2 hours.
    pub fn keepalive_time(mut self, time: Duration) -> Self {
        self.keepalive.time = time;
        self
    }

    /// Closes a connection whose keepalive ping goes unanswered this long (on Linux, also the
    /// connections' `TCP_USER_TIMEOUT`). Default 20 s.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive.timeout = timeout;
        self
    }

    /// Keepalive enforcement: the least time between a client's pings. A client that pings
    /// sooner more than twice (with no response data sent in between) is sent GOAWAY
    /// ENHANCE_YOUR_CALM `too_many_pings` and disconnected. Default 5 minutes.
    pub fn keepalive_min_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_policy.min_interval = interval;
        self
    }

    /// Keepalive enforcement: whether clients may ping while no call is in flight (otherwise
    /// such pings are held to one per 2 hours). Default: false.
    pub fn keepalive_permit_without_calls(mut self, permit: bool) -> Self {
        self.ping_policy.permit_without_calls = permit;
        self
    }

    /// Closes a connection that has had no calls for this long (gracefully: GOAWAY `max_idle`).
    /// Default: never.
    pub fn max_connection_idle(mut self, idle: Duration) -> Self {
        self.limits.max_idle = Some(idle);
        self
    }

    /// Closes connections after this age, ±10% (gracefully: GOAWAY `max_age`), so that clients
    /// reconnect and rebalance. Default: never.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.limits.max_age = Some(age);
        self
    }

    /// After a connection's `max_age` GOAWAY, how long its calls may run before the connection
    /// is closed under them. Default: as long as they take.
    pub fn max_connection_age_grace(mut self, grace: Duration) -> Self {
        self.limits.max_age_grace = Some(grace);
        self
    }

    /// On graceful shutdown, how long calls in flight may run before their connections are
    /// closed under them (`None`: as long as they take). Default 30 s.
    pub fn shutdown_grace_period(mut self, grace: Option<Duration>) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long a call's first poll, on its connection's task, may take before the connection
    /// hands its next calls to tasks of their own that idle workers can take (see
    /// `server/inline.rs`). Default 20 µs: many echoes, and more than a hand-off costs. Under
    /// an instruction counter such as callgrind, time runs some fifty times slower; a limit
    /// scaled to match keeps the path a native run takes.
    pub fn slow_first_poll(mut self, limit: Duration) -> Self {
        self.slow_first_poll = limit;
        self
    }

    /// How long a new connection may take to complete its TLS and HTTP/2 handshakes before it
    /// is closed, so idle or slow connections cannot pin server tasks. Default 20 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Serves TLS (ALPN `h2`), with mutual TLS if the config has a client CA.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::tls::ServerTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds the listening socket (TCP address, or [`Address::Unix`] path).
    pub fn bind(self, addr: impl Into<Address>) -> io::Result<BoundServer> {
        let runtime = match &self.runtime {
            Some(rt) => rt.clone(),
            None => anygrpc_rt::default_runtime().ok_or_else(|| {
                io::Error::other("no runtime: enable the `async-io` or `tokio` feature, or pass one with Server::runtime")
            })?,
        };
        let listener = match addr.into() {
            Address::Tcp(addr) => {
                let options = TcpOptions::default()
                    .with_nodelay(self.tcp_nodelay)
                    .with_user_timeout(Some(self.keepalive.timeout))
                    .with_reuse_port(self.reuse_port);
                runtime.listen_tcp(addr, options)?
            }
            Address::Unix(path) => runtime.listen_unix(path)?,
            Address::UnixAbstract(name) => runtime.listen_unix_abstract(name)?,
        };
        self.with_listener(listener, runtime)
    }

    /// Uses an already bound listener (from a custom runtime, for instance).
    pub fn with_listener(
        self,
        listener: Box<dyn Listener>,
        runtime: Arc<dyn Runtime>,
    ) -> io::Result<BoundServer> {
        self.call
            .check()
            .map_err(|s| io::Error::new(io::ErrorKind::InvalidInput, s))?;
        let mut h2 = h2::server::Builder::new();
        h2.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.call.max_header_list_size)
            .initial_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams)
            // See the client's builder: small-message streams are legitimate gRPC traffic.
            .data_frame_budget(self.initial_connection_window_size as usize);
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(config) => Some(
                config
                    .acceptor()
                    .map_err(|s| io::Error::new(io::ErrorKind::InvalidInput, s))?,
            ),
            None => None,
        };
        let local_addr = listener.local_addr().ok();
        let channelz = ServerNode::register(runtime.clone());
        #[cfg(feature = "opentelemetry")]
        let metrics = self
            .metrics
            .map(|m| crate::metrics::Recorder::new(m.instruments, runtime.clone()));
        #[cfg(not(feature = "opentelemetry"))]
        let metrics = None;
        let listen_socket = SocketNode::listener(local_addr.clone(), runtime.clone());
        channelz.add_listen_socket(&listen_socket);
        Ok(BoundServer {
            listener,
            listen_socket,
            shared: Arc::new(ServerShared {
                channelz,
                metrics,
                local_addr,
                runtime,
                services: self.services,
                call: self.call,
                handshake_timeout: self.handshake_timeout,
                keepalive: self.keepalive,
                ping_policy: self.ping_policy,
                limits: self.limits,
                shutdown_grace: self.shutdown_grace,
                slow_first_poll: self.slow_first_poll,
                dynamic_window: self
                    .dynamic_window
                    .then_some(self.initial_stream_window_size),
                h2,
                #[cfg(feature = "tls")]
                tls,
            }),
        })
    }

    /// Binds and serves until an IO error on the listener's creation; runs forever otherwise.
    pub async fn serve(self, addr: impl Into<Address>) -> io::Result<()> {
        self.bind(addr)?.serve().await
    }

    /// Binds and serves until `signal` completes, then shuts down gracefully: tells the
    /// services (the health service turns NOT_SERVING), stops accepting, sends GOAWAY on every
    /// connection, and returns once in-flight calls have finished or the
    /// [grace period](Self::shutdown_grace_period) is over.
    pub async fn serve_with_shutdown(
        self,
        addr: impl Into<Address>,
        signal: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.bind(addr)?.serve_with_shutdown(signal).await
    }
}

/// A server with its socket bound, ready to serve.
pub struct BoundServer {
    listener: Box<dyn Listener>,
    /// The listener's channelz entry, gone with it.
    listen_socket: Arc<SocketNode>,
    shared: Arc<ServerShared>,
}

impl fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundServer")
            .field("listener", &self.listener)
            .finish()
    }
}

/// Accept errors caused by a shortage of resources; the loop pauses briefly after them so it
/// does not spin while the shortage lasts.
fn is_resource_shortage(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

impl BoundServer {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<Address> {
        self.listener.local_addr()
    }

    /// The server's id in channelz (`grpc.channelz.v1.Channelz/GetServer`).
    pub fn channelz_id(&self) -> i64 {
        self.shared.channelz.id()
    }

    /// Serves forever.
    pub async fn serve(self) -> io::Result<()> {
        self.serve_with_shutdown(std::future::pending()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully (see
    /// [`Server::serve_with_shutdown`]).
    pub async fn serve_with_shutdown(mut self, signal: impl Future<Output = ()>) -> io::Result<()> {
        let (shutdown_tx, shutdown_rx) = futures_channel::oneshot::channel::<()>();
        let shutdown = shutdown_rx.map(|_| ()).shared();
        // Each connection task holds a sender; when all are gone, all connections are done.
        let (alive_tx, mut alive_rx) = futures_channel::mpsc::channel::<()>(0);
        let mut signal = std::pin::pin!(signal);
        loop {
            let accept = poll_fn(|cx| self.listener.poll_accept(cx));
            match futures_util::future::select(std::pin::pin!(accept), signal.as_mut()).await {
                Either::Left((Ok((io, peer)), _)) => {
                    let shared = self.shared.clone();
                    let shutdown = shutdown.clone();
                    let alive = alive_tx.clone();
                    self.shared.runtime.spawn_connection(Box::pin(async move {
                        serve_connection(shared, io, peer, shutdown).await;
                        drop(alive);
                    }));
                }
                Either::Left((Err(err), _)) => {
                    tracing::warn!(error = %err, "accept failed; still accepting");
                    if is_resource_shortage(&err) {
                        let until = self.shared.runtime.now() + Duration::from_millis(50);
                        self.shared.runtime.sleep_until(until).await;
                    }
                }
                Either::Right(_) => break,
            }
        }
        self.shared
            .channelz
            .event(Severity::CtInfo, "Shutting down".to_owned());
        for service in self.shared.services.values() {
            service.shutting_down();
        }
        drop(self.listener);
        drop(self.listen_socket);
        let _ = shutdown_tx.send(());
        drop(alive_tx);
        while alive_rx.next().await.is_some() {}
        Ok(())
    }
}

/// Runs one connection: TLS, the HTTP/2 handshake, then its calls, keepalive, ping policing,
/// age and idle limits, until the peer closes it or it is drained or closed.
async fn serve_connection(
    shared: Arc<ServerShared>,
    io: BoxIo,
    peer: Address,
    shutdown: impl Future<Output = ()> + Unpin,
) {
    let runtime = shared.runtime.clone();
    let socket = SocketNode::server(shared.local_addr.clone(), peer.clone(), runtime.clone());
    shared.channelz.add_socket(&socket);
    let observed =
        connection::Shared::new(runtime.now(), Some(PingStrikes::new(shared.ping_policy)));
    let tap = ConnectionTap::server(observed.clone(), runtime.clone());
    let deadline = runtime.now().checked_add(shared.handshake_timeout);
    let limit = Deadline::new(&*runtime, deadline);
    let handshake = Bounded::new(handshake(&shared, io, tap), limit, Uncancelled);
    let (mut conn, extensions) = match handshake.await {
        Ok(Ok(connected)) => connected,
        Ok(Err(why)) => {
            tracing::debug!(%peer, %why, "connection setup failed");
            shared.channelz.remove_socket(&socket);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "connection setup timed out");
            shared.channelz.remove_socket(&socket);
            return;
        }
    };
    let mut liveness = Liveness::new(
        observed.clone(),
        runtime.clone(),
        conn.ping_pong(),
        Some(shared.keepalive),
        shared.dynamic_window,
    );
    let jitter = fastrand::f64() * 2.0 - 1.0;
    let mut lifetime = Lifetime::new(shared.limits, runtime.now(), jitter);
    let mut timer = Timer::new(runtime.clone());
    let mut shutdown = shutdown;
    let mut shutting_down = false;
    // Set once the connection is being closed for cause: its final GOAWAY must go out by then.
    let mut close_by: Option<Instant> = None;
    // Calls accepted since the connection last read everything it had, not yet polled.
    let mut batch = Vec::new();
    let mut inline = inline::InlinePolls::new(shared.slow_first_poll);
    let ended = poll_fn(|cx| loop {
        let accepted = match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, respond)))) => {
                if let Some(call) =
                    call::accept(&shared, request, respond, &peer, &extensions, &socket.streams)
                {
                    batch.push(call);
                }
                batch.len() < ACCEPT_BATCH
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(format!("error: {err}")),
            Poll::Ready(None) => return Poll::Ready("closed".to_owned()),
            Poll::Pending => false,
        };
        if accepted {
            continue;
        }
        if !batch.is_empty() {
            // A call whose request is already here and whose handler answers at once
            // completes in this first poll, on this task (see `inline.rs` for when a call is
            // spawned unpolled instead). Anything that has to wait gets a task of its own
            // (and re-registers its wakers there). Polling them only once the connection has
            // read what it had lets their responses go out in one write: `poll_accept`
            // flushes what is queued, so polling each call as it arrived meant a write per
            // call.
            let mut start = runtime.now();
            for mut call in batch.drain(..) {
                if !inline.poll_next() {
                    runtime.spawn(call);
                    continue;
                }
                let pending = call.as_mut().poll(cx).is_pending();
                let end = runtime.now();
                inline.polled(end - start);
                start = end;
                if pending {
                    runtime.spawn(call);
                }
            }
            continue;
        }
        // Once per wake, not per call: the rest looks at the connection as a whole.
        let now = runtime.now();
        if !shutting_down && shutdown.poll_unpin(cx).is_ready() {
            shutting_down = true;
            if lifetime.shut_down(now, shared.shutdown_grace) {
                conn.graceful_shutdown();
                continue;
            }
        }
        let calls = conn.has_streams();
        observed.set_calls_in_flight(calls);
        if close_by.is_none() && observed.cut_off() {
            tracing::warn!(%peer, "the client pings too often: GOAWAY ENHANCE_YOUR_CALM too_many_pings");
            observed.goaway_debug_data(TOO_MANY_PINGS);
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            close_by = Some(now + CLOSE_TIMEOUT);
            continue;
        }
        match liveness.poll(cx, || calls) {
            Poll::Ready(LivenessEvent::Dead) => {
                if !observed.fail_dead() {
                    return Poll::Ready(KEEPALIVE_TIMEOUT.to_owned());
                }
                continue;
            }
            Poll::Ready(LivenessEvent::Window(window)) => {
                conn.set_target_window_size(window);
                let _ = conn.set_initial_window_size(window);
                continue;
            }
            Poll::Pending => {}
        }
        let wake_at = match lifetime.poll(now, calls) {
            LifetimeAction::GoAway(reason) => {
                tracing::debug!(%peer, reason = %String::from_utf8_lossy(reason), "draining the connection");
                observed.goaway_debug_data(reason);
                conn.graceful_shutdown();
                continue;
            }
            LifetimeAction::Close => {
                return Poll::Ready("grace period over: calls still in flight cancelled".to_owned())
            }
            LifetimeAction::Wait(at) => at,
        };
        if close_by.is_some_and(|by| now >= by) {
            return Poll::Ready("the final GOAWAY could not be sent in time".to_owned());
        }
        if !timer.poll(cx, earliest(wake_at, close_by)) {
            return Poll::Pending;
        }
    })
    .await;
    shared.channelz.remove_socket(&socket);
    tracing::debug!(%peer, %ended, "connection ended");
}

type Connected = (h2::server::Connection<H2Io, bytes::Bytes>, http::Extensions);

/// TLS (if configured) and the HTTP/2 handshake of a new connection.
async fn handshake(
    shared: &ServerShared,
    io: BoxIo,
    tap: Box<dyn anygrpc_rt::Tap>,
) -> Result<Connected, String> {
    #[allow(unused_mut)]
    let mut extensions = http::Extensions::new();
    #[cfg(feature = "tls")]
    let io = match &shared.tls {
        Some(tls) => {
            let (io, certs) = tls.accept(io).await.map_err(|status| status.to_string())?;
            if let Some(certs) = certs {
                extensions.insert(certs);
            }
            io
        }
        None => io,
    };
    let conn = shared
        .h2
        .handshake::<_, bytes::Bytes>(H2Io::tapped(io, tap))
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    Ok((conn, extensions))
}

impl fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerShared").finish_non_exhaustive()
    }
}

/// Parses `/package.Service/Method`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn paths() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        for bad in ["", "/", "a.B/C", "/a.B", "/a.B/", "//C", "/a/b/c"] {
            assert_eq!(split_path(bad), None, "{bad}");
        }
    }
}
