//! One subchannel's connection: connect (TCP or UDS, then TLS), HTTP/2 handshake, backoff
//! after failures, and loss detection, driven by the sans-IO [`lb::Subchannel`] state machine.
//! Every state change is reported to the channel's control plane (`core.rs`), through
//! [`SubchannelEvents`], which tells the policy.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    task::Poll,
    time::{Duration, Instant},
};

use anygrpc_codec::BackoffConfig;
use anygrpc_codec::{
    compression::CompressionRegistry,
    frame::{Encoder, DEFAULT_MAX_RECV_MESSAGE_SIZE},
    headers::RequestHead,
    keepalive::KeepaliveConfig,
    ProstCodec,
};
use anygrpc_lb::{
    self as lb,
    orca::{OrcaLoadReport, OrcaLoadReportRequest, ProtoDuration, STREAM_CORE_METRICS_PATH},
    ConnectivityState, SubchannelId,
};
use anygrpc_rt::{Address, BoxIo, H2Io, Runtime, TcpOptions};
use bytes::Bytes;
use futures_util::{
    future::{poll_fn, AbortHandle, FutureExt},
    StreamExt,
};
use h2::client::{Connection, SendRequest};
use http::{
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue,
};

use super::response::ClientSide;
use crate::{
    channelz::{proto::channel_trace_event::Severity, CallCounters, ChannelNode, SocketNode},
    connection::{
        ConnectionTap, Liveness, LivenessEvent, Shared, ENHANCE_YOUR_CALM, KEEPALIVE_TIMEOUT,
        TOO_MANY_PINGS,
    },
    health::{self, Health, HealthCheckRequest},
    limits::{Bounded, Deadline, Uncancelled},
    send::send_message,
    streaming::status_from_h2,
    Code, Status, Streaming,
};

/// HTTP/2 and socket settings of a channel's connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub(crate) initial_stream_window_size: u32,
    pub(crate) initial_connection_window_size: u32,
    pub(crate) max_header_list_size: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) tcp_nodelay: bool,
    /// Grow the receive windows with the bandwidth-delay product (off once a window is set).
    pub(crate) dynamic_window: bool,
    pub(crate) keepalive: Option<ClientKeepalive>,
    pub(crate) backoff: BackoffConfig,
    /// The service a client-side health check watches (A17's
    /// `healthCheckConfig.serviceName`); `None` turns health checking off.
    pub(crate) health_check_service: Option<String>,
    /// What the subchannel's own calls (health, load reports) send as the request head.
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    pub(crate) user_agent: HeaderValue,
    /// The HTTP CONNECT tunnel each connection opens first, when a proxy applies.
    pub(crate) tunnel: Option<super::proxy::Tunnel>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConnector>,
}

/// A channel's keepalive settings (gRFC A8).
#[derive(Debug, Clone)]
pub(crate) struct ClientKeepalive {
    /// The keepalive time in nanoseconds, shared by the channel's connections: doubled when a
    /// server says the client pings too often.
    time: Arc<AtomicU64>,
    timeout: Duration,
    permit_without_calls: bool,
}

impl ClientKeepalive {
    pub(crate) fn new(config: KeepaliveConfig) -> ClientKeepalive {
        ClientKeepalive {
            time: Arc::new(AtomicU64::new(nanos(config.time))),
            timeout: config.timeout,
            permit_without_calls: config.permit_without_calls,
        }
    }

    /// The settings for a new connection.
    fn config(&self) -> KeepaliveConfig {
        KeepaliveConfig {
            time: Duration::from_nanos(self.time.load(Ordering::Relaxed)),
            timeout: self.timeout,
            permit_without_calls: self.permit_without_calls,
        }
    }

    /// The server closed a connection with GOAWAY ENHANCE_YOUR_CALM `too_many_pings`: ping
    /// half as often on new connections (as grpc-go and the C-core do).
    fn too_many_pings(&self, address: &Address) {
        let time = Duration::from_nanos(self.time.load(Ordering::Relaxed)).saturating_mul(2);
        self.time.store(nanos(time), Ordering::Relaxed);
        tracing::warn!(%address, keepalive_time = ?time, "the server sent GOAWAY too_many_pings: keepalive time doubled for new connections");
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct Slot {
    machine: lb::Subchannel,
    send: Option<SendRequest<Bytes>>,
    /// Counts connections, so reports about an old one are ignored.
    generation: u64,
    /// The policy gates READY on the channel's health check.
    health_check: bool,
    /// The policy wants out-of-band load reports at this interval.
    load_reporting: Option<Duration>,
    /// The streams running on the current connection: its health watch and load reports.
    health_task: Option<AbortHandle>,
    load_task: Option<AbortHandle>,
    /// What the current connection's task shares: a closing channel's last resort ends it.
    connection: Option<Arc<Shared>>,
    /// The current connection's channelz entry.
    socket: Option<Arc<SocketNode>>,
}

impl Slot {
    /// Stops the streams of the current connection (it is gone, or the subchannel is), and
    /// takes it out of channelz.
    fn stop_streams(&mut self, channelz: &ChannelNode) {
        if let Some(socket) = self.socket.take() {
            channelz.remove_socket(&socket);
        }
        for task in [self.health_task.take(), self.load_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Where a subchannel reports what happens to it: the channel's control plane, which tells
/// its load-balancing policy.
pub(crate) trait SubchannelEvents: Send + Sync {
    /// The subchannel's connectivity changed (`status`: the failure that caused it).
    fn subchannel_state(&self, id: SubchannelId, state: ConnectivityState, status: Option<Status>);

    /// The subchannel's out-of-band load report arrived.
    fn load_report(&self, id: SubchannelId, report: OrcaLoadReport);
}

/// A connection to one address.
pub(crate) struct Subchannel {
    pub(crate) id: SubchannelId,
    address: Address,
    events: Weak<dyn SubchannelEvents>,
    runtime: Arc<dyn Runtime>,
    settings: Arc<ConnSettings>,
    slot: Mutex<Slot>,
    /// The subchannel's channelz entry.
    pub(crate) channelz: Arc<ChannelNode>,
}

impl std::fmt::Debug for Subchannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subchannel")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Subchannel {
    pub(crate) fn new(
        id: SubchannelId,
        address: Address,
        events: Weak<dyn SubchannelEvents>,
        runtime: Arc<dyn Runtime>,
        settings: Arc<ConnSettings>,
        channelz: Arc<ChannelNode>,
    ) -> Subchannel {
        Subchannel {
            id,
            address,
            events,
            runtime,
            channelz,
            slot: Mutex::new(Slot {
                machine: lb::Subchannel::new(settings.backoff, fastrand::u64(..)),
                send: None,
                generation: 0,
                health_check: false,
                load_reporting: None,
                health_task: None,
                load_task: None,
                connection: None,
                socket: None,
            }),
            settings,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        crate::sync::lock(&self.slot)
    }

    /// The connection to send a call on, if READY, with its generation and the counters of
    /// its streams.
    pub(crate) fn ready(&self) -> Option<(SendRequest<Bytes>, u64, Option<Arc<CallCounters>>)> {
        let slot = self.slot();
        let streams = slot.socket.as_ref().map(|socket| socket.streams.clone());
        slot.send
            .clone()
            .map(|send| (send, slot.generation, streams))
    }

    /// Whether connection `generation` has streams open (calls, health or load reports).
    fn calls_in_flight(&self, generation: u64) -> bool {
        let slot = self.slot();
        slot.generation == generation
            && slot
                .send
                .as_ref()
                .is_some_and(|send| send.num_active_streams() > 0)
    }

    fn report(&self, state: ConnectivityState, status: Option<Status>) {
        self.channelz.set_state(state);
        if let Some(events) = self.events.upgrade() {
            events.subchannel_state(self.id, state, status);
        }
    }

    /// Starts connecting if IDLE.
    pub(crate) fn connect(self: &Arc<Self>) {
        let (attempt, generation) = {
            let mut slot = self.slot();
            let Some(attempt) = slot.machine.request_connection(self.runtime.now()) else {
                return;
            };
            slot.generation += 1;
            (attempt, slot.generation)
        };
        self.report(ConnectivityState::Connecting, None);
        let this = self.clone();
        self.runtime.spawn(Box::pin(async move {
            this.attempt(generation, attempt.deadline).await;
        }));
    }

    /// Shuts down: no more attempts or reports; a live connection is left to the calls on
    /// it (the subchannel's own streams stop).
    pub(crate) fn shutdown(&self) {
        let mut slot = self.slot();
        slot.machine.shutdown();
        slot.send = None;
        slot.generation += 1;
        slot.stop_streams(&self.channelz);
        self.channelz.set_state(ConnectivityState::Shutdown);
    }

    /// Closes the live connection now, failing the calls still on it: what a closing channel
    /// does once its grace period is over.
    pub(crate) fn close_connection(&self) {
        if let Some(connection) = self.slot().connection.take() {
            connection.close_now();
        }
    }

    /// Gates READY on the channel's health check, from the next connection on.
    pub(crate) fn enable_health_check(&self) {
        self.slot().health_check = true;
    }

    /// Starts, changes or stops out-of-band load reporting.
    pub(crate) fn set_load_reporting(self: &Arc<Self>, interval: Option<Duration>) {
        let mut slot = self.slot();
        if slot.load_reporting == interval {
            return;
        }
        slot.load_reporting = interval;
        if let Some(task) = slot.load_task.take() {
            task.abort();
        }
        if let (Some(interval), Some(send)) = (interval, slot.send.clone()) {
            let generation = slot.generation;
            slot.load_task =
                Some(self.spawn_stream_task(self.clone().load_reports(generation, send, interval)));
        }
    }

    /// Spawns one of the subchannel's own streams, returning the handle that stops it.
    fn spawn_stream_task(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> AbortHandle {
        let (task, handle) = futures_util::future::abortable(task);
        self.runtime.spawn(Box::pin(task.map(drop)));
        handle
    }

    /// The connection of `generation` is still the one in use.
    fn is_current(&self, generation: u64) -> bool {
        let slot = self.slot();
        slot.generation == generation && slot.send.is_some()
    }

    fn report_if_current(&self, generation: u64, state: ConnectivityState, status: Option<Status>) {
        if self.is_current(generation) {
            self.report(state, status);
        }
    }

    async fn attempt(self: Arc<Self>, generation: u64, deadline: Instant) {
        let limit = Deadline::new(&*self.runtime, Some(deadline));
        let result = match Bounded::new(self.establish(), limit, Uncancelled).await {
            Ok(result) => result,
            Err(_) => Err(Status::unavailable(format!(
                "timed out connecting to {}",
                self.address
            ))),
        };
        match result {
            Ok((send, connection)) => {
                let health_service = {
                    let mut slot = self.slot();
                    if slot.generation != generation {
                        return;
                    }
                    slot.machine.connected();
                    slot.connection = Some(connection.shared.clone());
                    slot.send = Some(send.clone());
                    let socket = SocketNode::client(self.address.clone(), self.runtime.clone());
                    self.channelz.add_socket(&socket);
                    slot.socket = Some(socket);
                    let health_service = self
                        .settings
                        .health_check_service
                        .clone()
                        .filter(|_| slot.health_check);
                    if let Some(service) = &health_service {
                        let watch =
                            self.clone()
                                .watch_health(generation, send.clone(), service.clone());
                        slot.health_task = Some(self.spawn_stream_task(watch));
                    }
                    if let Some(interval) = slot.load_reporting {
                        let reports = self.clone().load_reports(generation, send, interval);
                        slot.load_task = Some(self.spawn_stream_task(reports));
                    }
                    health_service
                };
                let driver = self.drive(connection, generation);
                self.runtime.spawn_connection(Box::pin(driver));
                // With a health check, READY waits for the backend to say SERVING.
                if health_service.is_none() {
                    self.report(ConnectivityState::Ready, None);
                }
            }
            Err(status) => {
                tracing::debug!(address = %self.address, %status, "connection attempt failed");
                self.channelz.event(
                    Severity::CtWarning,
                    format!("Connection attempt failed: {status}"),
                );
                let retry_at = {
                    let mut slot = self.slot();
                    if slot.generation != generation {
                        return;
                    }
                    slot.machine.connect_failed(self.runtime.now());
                    slot.machine.poll_timeout()
                };
                self.report(ConnectivityState::TransientFailure, Some(status));
                if let Some(retry_at) = retry_at {
                    self.runtime.sleep_until(retry_at).await;
                    let idle = {
                        let mut slot = self.slot();
                        slot.machine.handle_timeout(self.runtime.now());
                        slot.generation == generation
                            && slot.machine.state() == ConnectivityState::Idle
                    };
                    if idle {
                        self.report(ConnectivityState::Idle, None);
                    }
                }
            }
        }
    }

    /// The connection of `generation` ended, or a call found it refusing new streams
    /// (GOAWAY): stop handing it out and report IDLE. Streams on it carry on to their end.
    pub(crate) fn closed(&self, generation: u64) {
        {
            let mut slot = self.slot();
            if slot.generation != generation || slot.send.is_none() {
                return;
            }
            slot.send = None;
            slot.stop_streams(&self.channelz);
            slot.machine.disconnected();
        }
        self.report(ConnectivityState::Idle, None);
    }

    async fn establish(&self) -> Result<(SendRequest<Bytes>, Established), Status> {
        let address = &self.address;
        let keepalive = self
            .settings
            .keepalive
            .as_ref()
            .map(ClientKeepalive::config);
        let io: BoxIo = match address {
            Address::Tcp(addr) => {
                let options = TcpOptions::default()
                    .with_nodelay(self.settings.tcp_nodelay)
                    .with_user_timeout(keepalive.map(|k| k.timeout));
                self.runtime.connect_tcp(*addr, options).await
            }
            Address::Unix(path) => self.runtime.connect_unix(path.clone()).await,
            Address::UnixAbstract(name) => self.runtime.connect_unix_abstract(name.clone()).await,
        }
        .map_err(|e| Status::unavailable(format!("failed to connect to {address}: {e}")))?;
        let io = match &self.settings.tunnel {
            Some(tunnel) => tunnel.open(io).await?,
            None => io,
        };
        #[cfg(feature = "tls")]
        let io = match &self.settings.tls {
            Some(tls) => tls.connect(io).await?,
            None => io,
        };
        let s = &self.settings;
        let shared = Shared::new(self.runtime.now(), None);
        let tap = ConnectionTap::client(shared.clone(), self.runtime.clone(), keepalive.is_some());
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(s.initial_stream_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_header_list_size(s.max_header_list_size)
            .max_frame_size(s.max_frame_size)
            // h2 limits the framing overhead of small DATA frames it buffers; peers that stream
            // small messages (grpc-go, the C-core) legitimately send many, so allow as much
            // overhead as the connection window allows data.
            .data_frame_budget(s.initial_connection_window_size as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(H2Io::tapped(io, tap))
            .await
            .map_err(|e| {
                Status::unavailable(format!("HTTP/2 handshake with {address} failed: {e}"))
            })?;
        Ok((
            send,
            Established {
                connection,
                shared,
                keepalive,
            },
        ))
    }

    /// Runs connection `generation` until it closes, with its keepalive and BDP pings, then
    /// reports it gone.
    fn drive(
        self: &Arc<Self>,
        established: Established,
        generation: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Established {
            mut connection,
            shared,
            keepalive,
        } = established;
        let settings = &self.settings;
        let mut liveness = Liveness::new(
            shared.clone(),
            self.runtime.clone(),
            connection.ping_pong(),
            keepalive,
            settings
                .dynamic_window
                .then_some(settings.initial_stream_window_size),
        );
        let this = Arc::downgrade(self);
        let mut went_away = false;
        let mut registered = None;
        async move {
            let ended = poll_fn(|cx| loop {
                if shared.close_requested(cx, &mut registered) {
                    return Poll::Ready(Some("the channel closed".to_owned()));
                }
                if let Poll::Ready(result) = connection.poll_unpin(cx) {
                    return Poll::Ready(result.err().map(|e| e.to_string()));
                }
                if !went_away && shared.went_away() {
                    // No new calls here; those in flight finish. The subchannel reconnects.
                    went_away = true;
                    if let Some(this) = this.upgrade() {
                        this.went_away(generation, &shared);
                    }
                }
                let calls = || {
                    this.upgrade()
                        .is_some_and(|s| s.calls_in_flight(generation))
                };
                match std::task::ready!(liveness.poll(cx, calls)) {
                    LivenessEvent::Dead => {
                        if !shared.fail_dead() {
                            return Poll::Ready(Some(KEEPALIVE_TIMEOUT.to_owned()));
                        }
                    }
                    LivenessEvent::Window(window) => grow_window(&mut connection, window),
                }
            })
            .await;
            // Dropping the connection fails the streams still on it.
            drop(connection);
            if let Some(this) = this.upgrade() {
                if let Some(why) = ended {
                    tracing::debug!(address = %this.address, %why, "connection closed");
                }
                // A GOAWAY with an error closes the connection in the poll that reads it.
                if !went_away && shared.went_away() {
                    this.went_away(generation, &shared);
                }
                this.closed(generation);
            }
        }
    }

    /// The server sent GOAWAY on connection `generation`: stop using it, and ping less often if
    /// it said the client pings too much.
    fn went_away(&self, generation: u64, shared: &Shared) {
        let goaway = shared.goaway();
        tracing::debug!(address = %self.address, ?goaway, "the server sent GOAWAY");
        self.channelz
            .event(Severity::CtInfo, format!("GOAWAY received: {goaway:?}"));
        if let (Some((ENHANCE_YOUR_CALM, debug)), Some(keepalive)) =
            (goaway, &self.settings.keepalive)
        {
            if debug == TOO_MANY_PINGS {
                keepalive.too_many_pings(&self.address);
            }
        }
        self.closed(generation);
    }
}

/// Sets a connection's receive windows to what the BDP estimate asks for.
fn grow_window(connection: &mut Connection<H2Io, Bytes>, window: u32) {
    connection.set_target_window_size(window);
    if let Err(e) = connection.set_initial_window_size(window) {
        tracing::debug!(error = %e, "could not grow the stream window");
    }
}

/// A connection just set up, with what its task needs.
struct Established {
    connection: Connection<H2Io, Bytes>,
    shared: Arc<Shared>,
    keepalive: Option<KeepaliveConfig>,
}

impl Subchannel {
    /// Watches the backend's health (A17) on connection `generation`: SERVING reports READY,
    /// anything else TRANSIENT_FAILURE. A failed stream is retried with backoff (at once if it
    /// had delivered a status); `UNIMPLEMENTED` turns checking off for this connection.
    async fn watch_health(
        self: Arc<Self>,
        generation: u64,
        send: SendRequest<Bytes>,
        service: String,
    ) {
        let request = HealthCheckRequest { service };
        let mut backoff = anygrpc_codec::Backoff::new(self.settings.backoff, fastrand::u64(..));
        loop {
            let (retry_at, _) = backoff.start_attempt(self.runtime.now());
            let mut stream = match self.open_stream(&send, health::WATCH_PATH, &request).await {
                Ok(stream) => stream,
                Err(status) => {
                    return self.report_if_current(
                        generation,
                        ConnectivityState::TransientFailure,
                        Some(status),
                    )
                }
            };
            let ended = loop {
                match health::next_health(&mut stream).await {
                    Some(Ok(Health::Serving)) => {
                        backoff.reset();
                        self.report_if_current(generation, ConnectivityState::Ready, None);
                    }
                    Some(Ok(Health::Unhealthy(status))) => {
                        backoff.reset();
                        let status = Status::unavailable(format!(
                            "health check of {}: backend is {status:?}",
                            self.address
                        ));
                        self.report_if_current(
                            generation,
                            ConnectivityState::TransientFailure,
                            Some(status),
                        );
                    }
                    Some(Err(status)) => break status,
                    None => break Status::unavailable("health check stream ended"),
                }
            };
            if ended.code() == Code::Unimplemented {
                tracing::error!(address = %self.address, "the backend does not implement grpc.health.v1.Health: health checking disabled for this connection");
                return self.report_if_current(generation, ConnectivityState::Ready, None);
            }
            if !self.is_current(generation) {
                return;
            }
            tracing::debug!(address = %self.address, status = %ended, "health check stream failed");
            self.runtime.sleep_until(retry_at).await;
        }
    }

    /// Streams out-of-band ORCA load reports from connection `generation` to the policy. A
    /// failed stream is retried with backoff; `UNIMPLEMENTED` stops.
    async fn load_reports(
        self: Arc<Self>,
        generation: u64,
        send: SendRequest<Bytes>,
        interval: Duration,
    ) {
        let request = OrcaLoadReportRequest {
            report_interval: Some(ProtoDuration::from_std(interval)),
            request_cost_names: Vec::new(),
        };
        let mut backoff = anygrpc_codec::Backoff::new(self.settings.backoff, fastrand::u64(..));
        loop {
            let (retry_at, _) = backoff.start_attempt(self.runtime.now());
            let ended = match self
                .open_stream::<_, OrcaLoadReport>(&send, STREAM_CORE_METRICS_PATH, &request)
                .await
            {
                Ok(mut stream) => loop {
                    match stream.next().await {
                        Some(Ok(report)) => {
                            backoff.reset();
                            if !self.is_current(generation) {
                                return;
                            }
                            if let Some(events) = self.events.upgrade() {
                                events.load_report(self.id, report);
                            }
                        }
                        Some(Err(status)) => break status,
                        None => break Status::unavailable("load report stream ended"),
                    }
                },
                Err(status) => status,
            };
            if ended.code() == Code::Unimplemented || !self.is_current(generation) {
                tracing::debug!(address = %self.address, status = %ended, "out-of-band load reports stopped");
                return;
            }
            self.runtime.sleep_until(retry_at).await;
        }
    }

    /// Opens a server-streaming call on this subchannel's connection (not through the
    /// picker): the subchannel's own health and load-report streams.
    async fn open_stream<Req, Resp>(
        &self,
        send: &SendRequest<Bytes>,
        path: &'static str,
        message: &Req,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: prost::Message + Clone + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        let settings = &self.settings;
        let compression = Arc::new(CompressionRegistry::default());
        let head = RequestHead {
            scheme: settings.scheme.clone(),
            authority: settings.authority.clone(),
            path: PathAndQuery::from_static(path),
            encoding: None,
            accept_encoding: compression.accept_encoding().clone(),
            user_agent: settings.user_agent.clone(),
            metadata: crate::MetadataMap::new(),
        }
        .into_request()?;
        let codec = ProstCodec::<Req, Resp>::new();
        let frame = Encoder::new(None, usize::MAX).encode(&codec, message.clone(), false)?;
        let unavailable = |e: h2::Error| status_from_h2(&e, false);
        let mut ready = send.clone().ready().await.map_err(unavailable)?;
        let (response, mut stream) = ready.send_request(head, false).map_err(unavailable)?;
        send_message(&mut stream, frame, true)
            .await
            .map_err(unavailable)?;
        let side = ClientSide::new(response, compression);
        Ok(Streaming::with_side(
            Box::new(side),
            codec,
            DEFAULT_MAX_RECV_MESSAGE_SIZE,
        ))
    }
}
