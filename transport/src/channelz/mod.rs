//! Channelz (gRFC A14): what the process's channels, subchannels, servers and sockets are doing
//! — their states, call counts and recent events — served by the
//! `grpc.channelz.v1.Channelz` service.
//!
//! Every [`Channel`](crate::Channel) and [`Server`](crate::Server) registers itself in a
//! process-wide registry when built and leaves it when dropped; keeping the counts costs a few
//! atomic increments per call. A server answers channelz queries only if it adds
//! [`ChannelzService`]:
//!
//! ```no_run
//! let server = anygrpc::Server::builder().add_service(anygrpc::channelz::ChannelzService::server());
//! ```
//!
//! The messages and a client for the service are in [`proto`].

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    sync::{
        atomic::{AtomicI64, AtomicU8, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::SystemTime,
};

use anygrpc_codec::Code;
use anygrpc_lb::ConnectivityState;
use anygrpc_rt::{Address, Runtime};

use crate::{metrics::Measure, sync::lock, Request, Response, Status};

#[rustfmt::skip]
#[allow(clippy::all, missing_docs, unreachable_pub)]
mod generated;

/// The channelz messages (`grpc.channelz.v1`), the client
/// ([`proto::channelz_client::ChannelzClient`]) and the server trait.
pub mod proto {
    pub use super::generated::*;
}

use proto::channel_connectivity_state::State as ProtoState;
use proto::channel_trace_event::{ChildRef, Severity};

/// The most recent trace events each entity keeps.
const TRACE_EVENTS: usize = 32;
/// The page size when a request asks for none (`max_results` 0), and the largest one served.
const MAX_PAGE: usize = 100;

/// The clock channelz's timestamps are read from: the runtime's wall clock.
pub(crate) type Clock = Arc<dyn Runtime>;

/// Calls (or streams) started, succeeded and failed, and when the last one started.
pub(crate) struct CallCounters {
    clock: Clock,
    started: AtomicI64,
    succeeded: AtomicI64,
    failed: AtomicI64,
    /// Nanoseconds since the Unix epoch.
    last_started: AtomicI64,
}

impl fmt::Debug for CallCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCounters")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl CallCounters {
    /// Counters read on `clock`.
    pub(crate) fn new(clock: Clock) -> Arc<CallCounters> {
        Arc::new(CallCounters {
            clock,
            started: AtomicI64::new(0),
            succeeded: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            last_started: AtomicI64::new(0),
        })
    }

    /// Counts a call that starts now on these counters and, if given, on `also` (a socket's
    /// streams under a subchannel's or a server's calls). It counts as failed unless
    /// [`CallTally::succeeded`] is called before the tally is dropped.
    pub(crate) fn start(self: &Arc<Self>, also: Option<&Arc<CallCounters>>) -> CallTally {
        let now = unix_nanos(self.clock.system_time());
        for counters in std::iter::once(self).chain(also) {
            counters.started.fetch_add(1, Ordering::Relaxed);
            counters.last_started.store(now, Ordering::Relaxed);
        }
        CallTally {
            counters: (self.clone(), also.cloned()),
            code: None,
            measure: None,
        }
    }

    fn snapshot(&self) -> (i64, i64, i64, Option<prost_types::Timestamp>) {
        let last = self.last_started.load(Ordering::Relaxed);
        (
            self.started.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            (last != 0).then(|| timestamp_from_nanos(last)),
        )
    }
}

/// One call in flight on a [`CallCounters`]: counted as succeeded or failed when it ends (or
/// as cancelled when dropped without an end), and, if it is being measured, recorded in the
/// metrics then. It counts at [`end`](Self::end), before the status is sent, so a peer that
/// has heard the status and then asks channelz sees the call counted.
pub(crate) struct CallTally {
    counters: (Arc<CallCounters>, Option<Arc<CallCounters>>),
    /// How it ended; one dropped before [`end`](Self::end) was cancelled.
    code: Option<Code>,
    measure: Option<Box<Measure>>,
}

impl fmt::Debug for CallTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTally")
            .field("code", &self.code)
            .field("measured", &self.measure.is_some())
            .finish_non_exhaustive()
    }
}

impl CallTally {
    /// Also records the call in the metrics when it ends.
    pub(crate) fn measured(mut self, measure: Option<Measure>) -> CallTally {
        self.measure = measure.map(Box::new);
        self
    }

    /// The call's metrics, if it is measured.
    pub(crate) fn measure(&self) -> Option<&Measure> {
        self.measure.as_deref()
    }

    /// The call ended with `code`; only the first ending counts.
    pub(crate) fn end(&mut self, code: Code) {
        if self.code.is_some() {
            return;
        }
        self.code = Some(code);
        let (first, second) = &self.counters;
        for counters in std::iter::once(first).chain(second) {
            let counter = match code {
                Code::Ok => &counters.succeeded,
                _ => &counters.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(measure) = self.measure.take() {
            measure.end(code);
        }
    }
}

impl Drop for CallTally {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// A bounded log of an entity's recent events.
struct Trace {
    clock: Clock,
    created: SystemTime,
    logged: i64,
    events: VecDeque<Event>,
}

#[derive(Debug)]
struct Event {
    description: String,
    severity: Severity,
    at: SystemTime,
    child: Option<ChildRef>,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("logged", &self.logged)
            .finish_non_exhaustive()
    }
}

impl Trace {
    fn new(clock: Clock) -> Mutex<Trace> {
        Mutex::new(Trace {
            created: clock.system_time(),
            clock,
            logged: 0,
            events: VecDeque::new(),
        })
    }

    fn to_proto(&self) -> proto::ChannelTrace {
        proto::ChannelTrace {
            num_events_logged: self.logged,
            creation_timestamp: Some(timestamp(self.created)),
            events: self
                .events
                .iter()
                .map(|e| proto::ChannelTraceEvent {
                    description: e.description.clone(),
                    severity: e.severity as i32,
                    timestamp: Some(timestamp(e.at)),
                    child_ref: e.child.clone(),
                })
                .collect(),
        }
    }
}

fn log(trace: &Mutex<Trace>, severity: Severity, description: String, child: Option<ChildRef>) {
    let mut trace = lock(trace);
    trace.logged += 1;
    if trace.events.len() == TRACE_EVENTS {
        trace.events.pop_front();
    }
    let at = trace.clock.system_time();
    trace.events.push_back(Event {
        description,
        severity,
        at,
        child,
    });
}

/// Whether a [`ChannelNode`] is a channel or a subchannel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Subchannel,
}

/// A channel's or a subchannel's entry: its state, calls, trace and children (a channel's
/// subchannels, a subchannel's sockets).
#[derive(Debug)]
pub(crate) struct ChannelNode {
    id: i64,
    kind: Kind,
    target: String,
    state: AtomicU8,
    pub(crate) calls: Arc<CallCounters>,
    trace: Mutex<Trace>,
    children: Mutex<BTreeSet<i64>>,
}

impl ChannelNode {
    /// Registers a top-level channel for `target`, its times read on `clock`.
    pub(crate) fn channel(target: String, clock: Clock) -> Arc<ChannelNode> {
        let node = Self::new(Kind::Channel, target, clock);
        log(
            &node.trace,
            Severity::CtInfo,
            "Channel created".into(),
            None,
        );
        lock(&registry().channels).insert(node.id, Arc::downgrade(&node));
        node
    }

    /// Registers a subchannel of this channel, for `address`.
    pub(crate) fn subchannel(&self, address: &Address) -> Arc<ChannelNode> {
        let node = Self::new(
            Kind::Subchannel,
            address.to_string(),
            self.calls.clock.clone(),
        );
        log(
            &node.trace,
            Severity::CtInfo,
            "Subchannel created".into(),
            None,
        );
        lock(&registry().subchannels).insert(node.id, Arc::downgrade(&node));
        lock(&self.children).insert(node.id);
        log(
            &self.trace,
            Severity::CtInfo,
            format!("Child subchannel {} created ({address})", node.id),
            Some(ChildRef::SubchannelRef(node.subchannel_ref())),
        );
        node
    }

    /// A subchannel of this channel was removed.
    pub(crate) fn remove_subchannel(&self, child: &ChannelNode) {
        lock(&self.children).remove(&child.id);
        log(
            &self.trace,
            Severity::CtInfo,
            format!("Child subchannel {} removed", child.id),
            Some(ChildRef::SubchannelRef(child.subchannel_ref())),
        );
    }

    fn new(kind: Kind, target: String, clock: Clock) -> Arc<ChannelNode> {
        Arc::new(ChannelNode {
            id: registry().next_id(),
            kind,
            target,
            state: AtomicU8::new(ConnectivityState::Idle as u8),
            calls: CallCounters::new(clock.clone()),
            trace: Trace::new(clock),
            children: Mutex::default(),
        })
    }

    /// The entity's id in the registry.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// Records a connectivity state change (a repeat of the current state is not an event).
    pub(crate) fn set_state(&self, state: ConnectivityState) {
        let before = self.state.swap(state as u8, Ordering::Relaxed);
        if before != state as u8 {
            let severity = match state {
                ConnectivityState::TransientFailure => Severity::CtWarning,
                _ => Severity::CtInfo,
            };
            let what = match self.kind {
                Kind::Channel => "Channel",
                Kind::Subchannel => "Subchannel",
            };
            log(
                &self.trace,
                severity,
                format!("{what} state changed to {state:?}"),
                None,
            );
        }
    }

    /// Records an event.
    pub(crate) fn event(&self, severity: Severity, description: String) {
        log(&self.trace, severity, description, None);
    }

    /// A socket (connection) of this subchannel opened.
    pub(crate) fn add_socket(&self, socket: &SocketNode) {
        lock(&self.children).insert(socket.id);
    }

    /// A socket of this subchannel closed.
    pub(crate) fn remove_socket(&self, socket: &SocketNode) {
        lock(&self.children).remove(&socket.id);
    }

    fn subchannel_ref(&self) -> proto::SubchannelRef {
        proto::SubchannelRef {
            subchannel_id: self.id,
            name: self.target.clone(),
        }
    }

    fn data(&self) -> proto::ChannelData {
        let (started, succeeded, failed, last) = self.calls.snapshot();
        let state = match state_from_u8(self.state.load(Ordering::Relaxed)) {
            ConnectivityState::Idle => ProtoState::Idle,
            ConnectivityState::Connecting => ProtoState::Connecting,
            ConnectivityState::Ready => ProtoState::Ready,
            ConnectivityState::TransientFailure => ProtoState::TransientFailure,
            ConnectivityState::Shutdown => ProtoState::Shutdown,
        };
        proto::ChannelData {
            state: Some(proto::ChannelConnectivityState {
                state: state as i32,
            }),
            target: self.target.clone(),
            trace: Some(lock(&self.trace).to_proto()),
            calls_started: started,
            calls_succeeded: succeeded,
            calls_failed: failed,
            last_call_started_timestamp: last,
        }
    }

    fn channel_proto(&self) -> proto::Channel {
        proto::Channel {
            r#ref: Some(proto::ChannelRef {
                channel_id: self.id,
                name: self.target.clone(),
            }),
            data: Some(self.data()),
            subchannel_ref: live(&self.children, &registry().subchannels, 0, usize::MAX)
                .iter()
                .map(|s| s.subchannel_ref())
                .collect(),
            ..Default::default()
        }
    }

    fn subchannel_proto(&self) -> proto::Subchannel {
        proto::Subchannel {
            r#ref: Some(self.subchannel_ref()),
            data: Some(self.data()),
            socket_ref: socket_refs(&live(&self.children, &registry().sockets, 0, usize::MAX)),
            ..Default::default()
        }
    }
}

impl Drop for ChannelNode {
    fn drop(&mut self) {
        let map = match self.kind {
            Kind::Channel => &registry().channels,
            Kind::Subchannel => &registry().subchannels,
        };
        lock(map).remove(&self.id);
    }
}

/// A server's entry: its calls, trace, listening sockets and connections.
#[derive(Debug)]
pub(crate) struct ServerNode {
    id: i64,
    pub(crate) calls: Arc<CallCounters>,
    trace: Mutex<Trace>,
    listen_sockets: Mutex<BTreeSet<i64>>,
    sockets: Mutex<BTreeSet<i64>>,
}

impl ServerNode {
    /// Registers a server, its times read on `clock`.
    pub(crate) fn register(clock: Clock) -> Arc<ServerNode> {
        let node = Arc::new(ServerNode {
            id: registry().next_id(),
            calls: CallCounters::new(clock.clone()),
            trace: Trace::new(clock),
            listen_sockets: Mutex::default(),
            sockets: Mutex::default(),
        });
        log(&node.trace, Severity::CtInfo, "Server created".into(), None);
        lock(&registry().servers).insert(node.id, Arc::downgrade(&node));
        node
    }

    /// The entity's id in the registry.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// The server listens on `socket`.
    pub(crate) fn add_listen_socket(&self, socket: &SocketNode) {
        lock(&self.listen_sockets).insert(socket.id);
    }

    /// A connection to the server opened.
    pub(crate) fn add_socket(&self, socket: &SocketNode) {
        lock(&self.sockets).insert(socket.id);
    }

    /// A connection to the server closed.
    pub(crate) fn remove_socket(&self, socket: &SocketNode) {
        lock(&self.sockets).remove(&socket.id);
    }

    /// Records an event.
    pub(crate) fn event(&self, severity: Severity, description: String) {
        log(&self.trace, severity, description, None);
    }

    fn to_proto(&self) -> proto::Server {
        let (started, succeeded, failed, last) = self.calls.snapshot();
        proto::Server {
            r#ref: Some(proto::ServerRef {
                server_id: self.id,
                name: String::new(),
            }),
            data: Some(proto::ServerData {
                trace: Some(lock(&self.trace).to_proto()),
                calls_started: started,
                calls_succeeded: succeeded,
                calls_failed: failed,
                last_call_started_timestamp: last,
            }),
            listen_socket: socket_refs(&live(
                &self.listen_sockets,
                &registry().sockets,
                0,
                usize::MAX,
            )),
        }
    }
}

impl Drop for ServerNode {
    fn drop(&mut self) {
        lock(&registry().servers).remove(&self.id);
    }
}

/// A socket's entry: a connection (its streams) or a listener.
#[derive(Debug)]
pub(crate) struct SocketNode {
    id: i64,
    local: Option<Address>,
    remote: Option<Address>,
    /// A client's connection: its streams are created locally.
    client: bool,
    /// Streams: on a client socket the attempts sent over it, on a server socket the calls
    /// received.
    pub(crate) streams: Arc<CallCounters>,
}

impl SocketNode {
    /// Registers a client's connection to `remote`.
    pub(crate) fn client(remote: Address, clock: Clock) -> Arc<SocketNode> {
        Self::register(None, Some(remote), true, clock)
    }

    /// Registers a server's connection from `remote`, accepted on `local`.
    pub(crate) fn server(local: Option<Address>, remote: Address, clock: Clock) -> Arc<SocketNode> {
        Self::register(local, Some(remote), false, clock)
    }

    /// Registers a server's listening socket.
    pub(crate) fn listener(local: Option<Address>, clock: Clock) -> Arc<SocketNode> {
        Self::register(local, None, false, clock)
    }

    fn register(
        local: Option<Address>,
        remote: Option<Address>,
        client: bool,
        clock: Clock,
    ) -> Arc<SocketNode> {
        let node = Arc::new(SocketNode {
            id: registry().next_id(),
            local,
            remote,
            client,
            streams: CallCounters::new(clock),
        });
        lock(&registry().sockets).insert(node.id, Arc::downgrade(&node));
        node
    }

    fn socket_ref(&self) -> proto::SocketRef {
        let name = match (&self.local, &self.remote) {
            (Some(local), Some(remote)) => format!("{local} -> {remote}"),
            (Some(local), None) => local.to_string(),
            (None, Some(remote)) => remote.to_string(),
            (None, None) => String::new(),
        };
        proto::SocketRef {
            socket_id: self.id,
            name,
        }
    }

    fn to_proto(&self) -> proto::Socket {
        let (started, succeeded, failed, last) = self.streams.snapshot();
        proto::Socket {
            r#ref: Some(self.socket_ref()),
            data: Some(proto::SocketData {
                streams_started: started,
                streams_succeeded: succeeded,
                streams_failed: failed,
                last_local_stream_created_timestamp: last.filter(|_| self.client),
                last_remote_stream_created_timestamp: last.filter(|_| !self.client),
                ..Default::default()
            }),
            local: self.local.as_ref().map(address),
            remote: self.remote.as_ref().map(address),
            ..Default::default()
        }
    }
}

impl Drop for SocketNode {
    fn drop(&mut self) {
        lock(&registry().sockets).remove(&self.id);
    }
}

fn address(address: &Address) -> proto::Address {
    use proto::address::{Address as Kind, TcpIpAddress, UdsAddress};
    let kind = match address {
        Address::Tcp(addr) => Kind::TcpipAddress(TcpIpAddress {
            ip_address: match addr.ip() {
                std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
                std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
            },
            port: i32::from(addr.port()),
        }),
        Address::Unix(path) => Kind::UdsAddress(UdsAddress {
            filename: path.display().to_string(),
        }),
        Address::UnixAbstract(name) => Kind::UdsAddress(UdsAddress {
            filename: format!("@{}", String::from_utf8_lossy(name)),
        }),
    };
    proto::Address {
        address: Some(kind),
    }
}

/// Every live entity, by id (ids are shared by all kinds and never reused).
#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicI64,
    channels: Mutex<BTreeMap<i64, Weak<ChannelNode>>>,
    subchannels: Mutex<BTreeMap<i64, Weak<ChannelNode>>>,
    servers: Mutex<BTreeMap<i64, Weak<ServerNode>>>,
    sockets: Mutex<BTreeMap<i64, Weak<SocketNode>>>,
}

impl Registry {
    fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn state_from_u8(state: u8) -> ConnectivityState {
    [
        ConnectivityState::Idle,
        ConnectivityState::Connecting,
        ConnectivityState::Ready,
        ConnectivityState::TransientFailure,
        ConnectivityState::Shutdown,
    ]
    .into_iter()
    .find(|s| *s as u8 == state)
    .unwrap_or(ConnectivityState::Idle)
}

fn unix_nanos(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn timestamp_from_nanos(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos / 1_000_000_000,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    timestamp_from_nanos(unix_nanos(at))
}

/// One page of `map`'s live entries from `start` on, and whether it is the last.
fn page<T, P>(
    map: &Mutex<BTreeMap<i64, Weak<T>>>,
    start: i64,
    max_results: i64,
    to_proto: impl Fn(&T) -> P,
) -> (Vec<P>, bool) {
    let size = page_size(max_results);
    let live: Vec<Arc<T>> = {
        let map = lock(map);
        map.range(start.max(0)..)
            .filter_map(|(_, weak)| weak.upgrade())
            .take(size + 1)
            .collect()
    };
    let end = live.len() <= size;
    (live.iter().take(size).map(|n| to_proto(n)).collect(), end)
}

/// The entities named in `ids` (from `start` on, at most `limit`) that are still in `registered`.
fn live<T>(
    ids: &Mutex<BTreeSet<i64>>,
    registered: &Mutex<BTreeMap<i64, Weak<T>>>,
    start: i64,
    limit: usize,
) -> Vec<Arc<T>> {
    let ids = lock(ids).clone();
    let registered = lock(registered);
    ids.range(start.max(0)..)
        .filter_map(|id| registered.get(id)?.upgrade())
        .take(limit)
        .collect()
}

fn socket_refs(sockets: &[Arc<SocketNode>]) -> Vec<proto::SocketRef> {
    sockets.iter().map(|s| s.socket_ref()).collect()
}

/// A request's page size: `max_results`, or [`MAX_PAGE`] when it is 0 or more than that.
fn page_size(max_results: i64) -> usize {
    usize::try_from(max_results)
        .ok()
        .filter(|n| *n > 0)
        .map_or(MAX_PAGE, |n| n.min(MAX_PAGE))
}

fn get<T>(map: &Mutex<BTreeMap<i64, Weak<T>>>, id: i64, what: &str) -> Result<Arc<T>, Status> {
    lock(map)
        .get(&id)
        .and_then(Weak::upgrade)
        .ok_or_else(|| Status::not_found(format!("no {what} with id {id}")))
}

/// The `grpc.channelz.v1.Channelz` service: answers from the process-wide registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelzService;

impl ChannelzService {
    /// The service, ready for [`Server::add_service`](crate::server::Server::add_service).
    pub fn server() -> proto::channelz_server::ChannelzServer<ChannelzService> {
        proto::channelz_server::ChannelzServer::new(ChannelzService)
    }
}

impl proto::channelz_server::Channelz for ChannelzService {
    async fn get_top_channels(
        &self,
        request: Request<proto::GetTopChannelsRequest>,
    ) -> Result<Response<proto::GetTopChannelsResponse>, Status> {
        let request = request.into_inner();
        let (channel, end) = page(
            &registry().channels,
            request.start_channel_id,
            request.max_results,
            ChannelNode::channel_proto,
        );
        Ok(Response::new(proto::GetTopChannelsResponse {
            channel,
            end,
        }))
    }

    async fn get_servers(
        &self,
        request: Request<proto::GetServersRequest>,
    ) -> Result<Response<proto::GetServersResponse>, Status> {
        let request = request.into_inner();
        let (server, end) = page(
            &registry().servers,
            request.start_server_id,
            request.max_results,
            ServerNode::to_proto,
        );
        Ok(Response::new(proto::GetServersResponse { server, end }))
    }

    async fn get_server(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<Response<proto::GetServerResponse>, Status> {
        let server = get(&registry().servers, request.get_ref().server_id, "server")?;
        Ok(Response::new(proto::GetServerResponse {
            server: Some(server.to_proto()),
        }))
    }

    async fn get_server_sockets(
        &self,
        request: Request<proto::GetServerSocketsRequest>,
    ) -> Result<Response<proto::GetServerSocketsResponse>, Status> {
        let request = request.into_inner();
        let server = get(&registry().servers, request.server_id, "server")?;
        let size = page_size(request.max_results);
        let sockets = live(
            &server.sockets,
            &registry().sockets,
            request.start_socket_id,
            size + 1,
        );
        Ok(Response::new(proto::GetServerSocketsResponse {
            end: sockets.len() <= size,
            socket_ref: socket_refs(&sockets[..sockets.len().min(size)]),
        }))
    }

    async fn get_channel(
        &self,
        request: Request<proto::GetChannelRequest>,
    ) -> Result<Response<proto::GetChannelResponse>, Status> {
        let channel = get(
            &registry().channels,
            request.get_ref().channel_id,
            "channel",
        )?;
        Ok(Response::new(proto::GetChannelResponse {
            channel: Some(channel.channel_proto()),
        }))
    }

    async fn get_subchannel(
        &self,
        request: Request<proto::GetSubchannelRequest>,
    ) -> Result<Response<proto::GetSubchannelResponse>, Status> {
        let id = request.get_ref().subchannel_id;
        let subchannel = get(&registry().subchannels, id, "subchannel")?;
        Ok(Response::new(proto::GetSubchannelResponse {
            subchannel: Some(subchannel.subchannel_proto()),
        }))
    }

    async fn get_socket(
        &self,
        request: Request<proto::GetSocketRequest>,
    ) -> Result<Response<proto::GetSocketResponse>, Status> {
        let socket = get(&registry().sockets, request.get_ref().socket_id, "socket")?;
        Ok(Response::new(proto::GetSocketResponse {
            socket: Some(socket.to_proto()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_at_an_id_hold_at_most_max_results_and_say_when_they_end() {
        // A map of its own: other tests register channels in the process-wide registry
        // concurrently, so its ids are not this test's to count on.
        let nodes: Vec<Arc<i64>> = [3, 7, 9].into_iter().map(Arc::new).collect();
        let map = Mutex::new(
            nodes
                .iter()
                .map(|n| (**n, Arc::downgrade(n)))
                .collect::<BTreeMap<_, _>>(),
        );
        let (first, end) = page(&map, 3, 2, |n| *n);
        assert_eq!((first, end), (vec![3, 7], false));
        let (rest, end) = page(&map, 8, 2, |n| *n);
        assert_eq!((rest, end), (vec![9], true));
        assert_eq!(page(&map, -4, 3, |n| *n), (vec![3, 7, 9], true));
        assert_eq!(page_size(0), MAX_PAGE);
        assert_eq!(page_size(-5), MAX_PAGE);
        assert_eq!(page_size(1_000), MAX_PAGE);

        drop(nodes);
        assert_eq!(
            page(&map, 0, 0, |n| *n),
            (vec![], true),
            "dropped entries leave"
        );
    }

    #[test]
    fn a_tally_counts_on_both_counters_at_its_first_ending_and_fails_without_one() {
        let sim = anygrpc_rt::sim::Sim::new(1);
        let clock = sim.runtime();
        let (calls, streams) = (CallCounters::new(clock.clone()), CallCounters::new(clock));
        let mut ok = calls.start(Some(&streams));
        ok.end(Code::Ok);
        // Counted at its end, before it is dropped: the peer may ask as soon as it hears.
        assert_eq!(calls.snapshot().1, 1);
        ok.end(Code::Internal);
        drop(ok);
        drop(calls.start(Some(&streams)));
        let _in_flight = calls.start(None);
        let (started, succeeded, failed, last) = calls.snapshot();
        assert_eq!((started, succeeded, failed), (3, 1, 1));
        assert!(last.is_some());
        let (started, succeeded, failed, _) = streams.snapshot();
        assert_eq!((started, succeeded, failed), (2, 1, 1));
    }

    #[test]
    fn timestamps_are_read_on_the_runtime_clock() {
        let sim = anygrpc_rt::sim::Sim::new(1);
        let node = ChannelNode::channel("t".into(), sim.runtime());
        let created = lock(&node.trace).to_proto().creation_timestamp;
        let start = timestamp(sim.runtime().system_time());
        assert_eq!(created, Some(start));
        // Nothing ran, so virtual time has not moved: the wall clock says something else.
        assert_ne!(created, Some(timestamp(SystemTime::now())));
        sim.run(async {
            sim.runtime()
                .sleep_until(sim.runtime().now() + std::time::Duration::from_secs(3))
                .await
        });
        node.event(Severity::CtInfo, "later".into());
        let trace = lock(&node.trace).to_proto();
        let at = trace.events.last().and_then(|e| e.timestamp);
        assert_eq!(at.map(|t| t.seconds - start.seconds), Some(3));
    }
}
