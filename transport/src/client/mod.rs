//! The client: [`Channel`] and the generic call API ([`Grpc`]) that generated stubs use.

mod cancel;
mod conn;
mod core;
mod requests;
mod sender;

pub use cancel::{cancellation, CancelToken, Cancelled, Canceller};
pub use requests::{request_channel, RequestClosed, RequestSender, RequestStream};
pub(crate) use sender::RequestHold;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{
    compression::CompressionRegistry,
    frame::{Encoder, DEFAULT_MAX_RECV_MESSAGE_SIZE, DEFAULT_MAX_SEND_MESSAGE_SIZE},
    headers::{self, RequestHead, GRPC_PREVIOUS_RPC_ATTEMPTS},
    keepalive::{self, KeepaliveConfig},
    metadata::DEFAULT_MAX_HEADER_LIST_SIZE,
    BackoffConfig, Code, Codec,
};
use anygrpc_lb::{
    retry, AttemptPolicy, Attempts, BufferBudget, ConnectivityState, Decision, PolicyRegistry,
    Pushback, ServiceConfig, Throttle,
};
use anygrpc_resolver::Registry;
use anygrpc_rt::Runtime;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::{
    future::{Either, FutureExt},
    stream::FuturesUnordered,
    StreamExt,
};
use http::{
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue,
};
use tracing::Instrument;

use crate::{
    channelz::{CallTally, ChannelNode},
    interceptor::{self, AnyInterceptor, AsyncInterceptor, CallHead, Interceptor},
    limits::{Bounded, Cut, Deadline},
    metrics::{Another, ClientCall, Measure, Recorder, Traffic},
    streaming::{AttemptEnd, CallTracking, ClientSide, LoadReporter, LocalError, PendingHead},
    MetadataMap, Request, Response, Status, Streaming,
};
use conn::{ClientKeepalive, ConnSettings};
pub(crate) use core::ActiveCall;
use core::{Core, CoreConfig};
use sender::{Encoding, Replay};

/// Configures and creates a [`Channel`].
///
/// ```no_run
/// # async fn run() -> Result<(), anygrpc::Status> {
/// let channel = anygrpc::Channel::builder("localhost:50051")
///     .user_agent("my-app/1.0")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
pub struct ChannelBuilder {
    target: String,
    runtime: Option<Arc<dyn Runtime>>,
    registry: Registry,
    authority: Option<String>,
    user_agent: Option<String>,
    interceptors: Vec<AnyInterceptor>,
    compression: CompressionRegistry,
    send_compression: Option<&'static str>,
    max_recv_message_size: usize,
    max_send_message_size: usize,
    settings: ConnSettings,
    keepalive: KeepaliveConfig,
    keepalive_on: bool,
    lb_registry: PolicyRegistry,
    load_balancing_config: String,
    default_service_config: Option<String>,
    max_attempts: u32,
    retry_buffer_per_call: usize,
    retry_buffer_per_channel: usize,
    idle_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTlsConfig>,
    #[cfg(feature = "opentelemetry")]
    metrics: Option<crate::metrics::Metrics>,
}

impl fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    fn new(target: &str) -> ChannelBuilder {
        ChannelBuilder {
            target: target.to_owned(),
            runtime: None,
            registry: Registry::default(),
            authority: None,
            user_agent: None,
            interceptors: Vec::new(),
            compression: CompressionRegistry::default(),
            send_compression: None,
            max_recv_message_size: DEFAULT_MAX_RECV_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_SEND_MESSAGE_SIZE,
            settings: ConnSettings {
                initial_stream_window_size: 1 << 20,
                initial_connection_window_size: 2 << 20,
                max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE as u32,
                max_frame_size: 16 * 1024,
                tcp_nodelay: true,
                dynamic_window: true,
                keepalive: None,
                backoff: BackoffConfig::default(),
                health_check_service: None,
                scheme: Scheme::HTTP,
                authority: Authority::from_static("localhost"),
                user_agent: headers::default_user_agent(),
                #[cfg(feature = "tls")]
                tls: None,
            },
            keepalive: KeepaliveConfig {
                time: Duration::MAX,
                timeout: keepalive::DEFAULT_KEEPALIVE_TIMEOUT,
                permit_without_calls: false,
            },
            keepalive_on: false,
            lb_registry: PolicyRegistry::default(),
            load_balancing_config: r#"[{"pick_first":{}}]"#.to_owned(),
            default_service_config: None,
            max_attempts: retry::DEFAULT_MAX_ATTEMPTS,
            retry_buffer_per_call: retry::DEFAULT_PER_CALL_BUFFER,
            retry_buffer_per_channel: retry::DEFAULT_PER_CHANNEL_BUFFER,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "opentelemetry")]
            metrics: None,
        }
    }

    /// The runtime for sockets, timers and background tasks. Default:
    /// [`rt::default_runtime`](crate::rt::default_runtime).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The load-balancing policy, by name, with an empty config: `pick_first` (the default),
    /// `round_robin`, or one registered with
    /// [`lb_policy_registry`](Self::lb_policy_registry).
    pub fn load_balancing_policy(mut self, name: &str) -> Self {
        self.load_balancing_config = serde_json::json!([{ name: {} }]).to_string();
        self
    }

    /// The policy as a service config's `loadBalancingConfig` list (JSON text), e.g.
    /// `[{"pick_first":{"shuffleAddressList":true}}]`: the first registered policy named is
    /// used. An invalid list fails the channel's build with `INVALID_ARGUMENT`.
    pub fn load_balancing_config(mut self, json: impl Into<String>) -> Self {
        self.load_balancing_config = json.into();
        self
    }

    /// The service config (`doc/service_config.md`, JSON) in force while the resolver provides
    /// none: per-method timeouts, wait-for-ready, message limits, retry or hedging policies
    /// (gRFC A6), retry throttling, the load-balancing policy and the health-check service.
    /// Its `loadBalancingConfig` and `healthCheckConfig` take precedence over
    /// [`load_balancing_config`](Self::load_balancing_config) and
    /// [`health_check_service_name`](Self::health_check_service_name). An invalid config
    /// fails the channel's build with `INVALID_ARGUMENT`; an invalid one from the resolver is
    /// ignored, and the config in force stays.
    pub fn default_service_config(mut self, json: impl Into<String>) -> Self {
        self.default_service_config = Some(json.into());
        self
    }

    /// Records the channel's calls in `metrics` (gRFC A66 and A96; see [`crate::metrics`]).
    #[cfg(feature = "opentelemetry")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The most attempts a retry or hedging policy may make per call, its first included:
    /// a policy's larger `maxAttempts` is cut to this. Default 5 (gRFC A6).
    pub fn max_retry_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The retry buffer: request bytes a call holds for replay until it commits, per call
    /// and for all of the channel's calls together. A call whose request does not fit makes
    /// one attempt. Default 256 KiB per call, 16 MiB per channel.
    pub fn retry_buffer_size(mut self, per_call: usize, per_channel: usize) -> Self {
        self.retry_buffer_per_call = per_call;
        self.retry_buffer_per_channel = per_channel;
        self
    }

    /// Client-side health checking (gRFC A17; a service config's
    /// `healthCheckConfig.serviceName`): each connection of a policy that uses health checks
    /// (`round_robin`, `weighted_round_robin`) watches `service` with `grpc.health.v1.Health`
    /// and is used only while the backend says SERVING. Backends without the health service
    /// count as healthy. Off by default; `""` watches the server as a whole.
    pub fn health_check_service_name(mut self, service: impl Into<String>) -> Self {
        self.settings.health_check_service = Some(service.into());
        self
    }

    /// How long the channel stays connected with no call in flight before it goes IDLE,
    /// closing its connections (the next call reconnects). Default 30 min; zero never.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// The load-balancing policies available by name, for custom policies.
    pub fn lb_policy_registry(mut self, registry: PolicyRegistry) -> Self {
        self.lb_registry = registry;
        self
    }

    /// The resolver registry, for custom target schemes.
    pub fn resolver_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Overrides `:authority` (default: the target's host:port, `localhost` for `unix:`). With
    /// TLS and no [`domain_name`](crate::tls::ClientTlsConfig::domain_name), the certificate
    /// is checked against this name.
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// A prefix for the `user-agent` header (`<prefix> grpc-rust-anygrpc/<version>`).
    pub fn user_agent(mut self, prefix: impl Into<String>) -> Self {
        self.user_agent = Some(prefix.into());
        self
    }

    /// Adds an interceptor run on every call, in the order added.
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors
            .push(AnyInterceptor::Sync(Arc::new(interceptor)));
        self
    }

    /// Adds an async interceptor run on every call, in the order added.
    pub fn async_interceptor(mut self, interceptor: impl AsyncInterceptor) -> Self {
        self.interceptors
            .push(AnyInterceptor::Async(Arc::new(interceptor)));
        self
    }

    /// The compression algorithms the channel can use and accepts. Default: gzip, deflate.
    pub fn compression_registry(mut self, registry: CompressionRegistry) -> Self {
        self.compression = registry;
        self
    }

    /// Compresses request messages with this `grpc-encoding` (e.g. `"gzip"`). Default: none.
    pub fn send_compression(mut self, encoding: &'static str) -> Self {
        self.send_compression = Some(encoding);
        self
    }

    /// The largest response message accepted, after decompression. Default 4 MiB; larger
    /// messages fail the call with `RESOURCE_EXHAUSTED`.
    pub fn max_recv_message_size(mut self, bytes: usize) -> Self {
        self.max_recv_message_size = bytes;
        self
    }

    /// The largest request message sent. Default: unlimited (4 GiB − 1, the wire's limit).
    pub fn max_send_message_size(mut self, bytes: usize) -> Self {
        self.max_send_message_size = bytes;
        self
    }

    /// The largest header list (metadata included) accepted from the server, advertised as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, and the most request metadata sent. Default 16 KiB.
    pub fn max_header_list_size(mut self, bytes: usize) -> Self {
        self.settings.max_header_list_size = u32::try_from(bytes).unwrap_or(u32::MAX);
        self
    }

    /// HTTP/2 initial stream flow-control window. Default 1 MiB, grown with the measured
    /// bandwidth-delay product (up to 16 MiB); setting it fixes the windows.
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.settings.initial_stream_window_size = bytes;
        self.settings.dynamic_window = false;
        self
    }

    /// HTTP/2 initial connection flow-control window. Default 2 MiB, grown with the measured
    /// bandwidth-delay product; setting it fixes the windows.
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.settings.initial_connection_window_size = bytes;
        self.settings.dynamic_window = false;
        self
    }

    /// Keepalive (gRFC A8): ping a connection that has read nothing for `time` (at least
    /// 10 s: shorter values are raised), and close it, failing its calls with `UNAVAILABLE`,
    /// when the ping goes unanswered for [`keepalive_timeout`](Self::keepalive_timeout).
    /// Default: off. A server that answers GOAWAY `too_many_pings` doubles the time for the
    /// channel's new connections.
    pub fn keepalive_time(self, time: Duration) -> Self {
        self.keepalive_time_unclamped(time.max(keepalive::MIN_CLIENT_KEEPALIVE_TIME))
    }

    /// [`keepalive_time`](Self::keepalive_time) without the 10 s floor, for tests that need
    /// keepalive to act within a test's time. Servers with default settings disconnect
    /// clients that ping this often.
    #[doc(hidden)]
    pub fn keepalive_time_unclamped(mut self, time: Duration) -> Self {
        self.keepalive.time = time;
        self.keepalive_on = true;
        self
    }

    /// How long a keepalive ping may go unanswered before the connection is closed (on Linux,
    /// also the connection's `TCP_USER_TIMEOUT`). Default 20 s.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive.timeout = timeout;
        self
    }

    /// Whether keepalive pings are sent while no call is in flight. Default: false.
    pub fn keepalive_permit_without_calls(mut self, permit: bool) -> Self {
        self.keepalive.permit_without_calls = permit;
        self
    }

    /// Connection backoff (`doc/connection-backoff.md`). Default: 1 s initial, ×1.6, ±20%
    /// jitter, 120 s max, 20 s minimum connect timeout.
    pub fn connect_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Sets `TCP_NODELAY` on connections. Default: on.
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.settings.tcp_nodelay = on;
        self
    }

    /// Connects with TLS (scheme `https`, ALPN `h2`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::tls::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Builds the channel without connecting; the first call connects.
    ///
    /// A malformed target or a bad setting is `INVALID_ARGUMENT`.
    pub fn connect_lazy(self) -> Result<Channel, Status> {
        let runtime = match self.runtime {
            Some(rt) => rt,
            None => anygrpc_rt::default_runtime().ok_or_else(|| {
                Status::failed_precondition(
                    "no runtime: enable the `async-io` or `tokio` feature, or pass one with ChannelBuilder::runtime",
                )
            })?,
        };
        let (target, builder) = self.registry.parse_target(&self.target)?;
        let authority_text = self
            .authority
            .unwrap_or_else(|| builder.default_authority(&target));
        let authority = Authority::try_from(authority_text.as_str()).map_err(|e| {
            Status::invalid_argument(format!("invalid authority {authority_text:?}: {e}"))
        })?;
        let lb_config: serde_json::Value = serde_json::from_str(&self.load_balancing_config)
            .map_err(|e| Status::invalid_argument(format!("invalid loadBalancingConfig: {e}")))?;
        let (policy_builder, policy_config) = self.lb_registry.parse_lb_config(&lb_config)?;
        let default_service_config = match &self.default_service_config {
            None => ServiceConfig::default(),
            Some(json) => core::check_service_config(json, &self.lb_registry)?,
        };
        if let Some(encoding) = self.send_compression {
            if self.compression.get(encoding).is_none() {
                return Err(Status::invalid_argument(format!(
                    "send compression {encoding:?} is not in the compression registry"
                )));
            }
        }
        let user_agent = match &self.user_agent {
            None => headers::default_user_agent(),
            Some(prefix) => HeaderValue::from_str(&format!(
                "{prefix} {}",
                headers::default_user_agent().to_str().unwrap_or_default()
            ))
            .map_err(|_| Status::invalid_argument("user agent must be visible ASCII"))?,
        };
        let mut settings = self.settings;
        settings.keepalive = self
            .keepalive_on
            .then(|| ClientKeepalive::new(self.keepalive));
        #[allow(unused_mut)]
        let mut scheme = Scheme::HTTP;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            settings.tls = Some(tls.connector(host)?);
            scheme = Scheme::HTTPS;
        }
        settings.scheme = scheme.clone();
        settings.authority = authority.clone();
        settings.user_agent = user_agent.clone();
        let channelz = ChannelNode::channel(self.target.clone());
        #[cfg(feature = "opentelemetry")]
        let metrics = self
            .metrics
            .map(|m| Recorder::new(m.instruments, runtime.clone()));
        #[cfg(not(feature = "opentelemetry"))]
        let metrics = None;
        // A target without a scheme is named with the default one, as `dns:///host:port`.
        let canonical_target = match self.target.strip_prefix(target.scheme()) {
            Some(rest) if rest.starts_with(':') => self.target.clone(),
            _ => format!("{}:///{}", target.scheme(), self.target),
        };
        let canonical_target: Arc<str> = canonical_target.into();
        Ok(Channel {
            inner: Arc::new(ChannelInner {
                target: self.target,
                canonical_target: canonical_target.clone(),
                metrics: metrics.clone(),
                scheme,
                authority,
                user_agent,
                interceptors: self.interceptors,
                compression: Arc::new(self.compression),
                send_compression: self.send_compression,
                max_recv_message_size: self.max_recv_message_size,
                max_send_message_size: self.max_send_message_size,
                max_header_list_size: settings.max_header_list_size as usize,
                max_attempts: self.max_attempts,
                retry_buffer_per_call: self.retry_buffer_per_call,
                retry_budget: BufferBudget::new(self.retry_buffer_per_channel),
                core: Core::new(CoreConfig {
                    runtime,
                    settings,
                    channelz,
                    target,
                    resolver_builder: builder,
                    policy_builder,
                    policy_config,
                    lb_registry: self.lb_registry,
                    default_service_config,
                    idle_timeout: self.idle_timeout,
                    metrics: metrics.map(|m| (m, canonical_target)),
                })?,
            }),
        })
    }

    /// Builds the channel and connects; fails with the connection error (`UNAVAILABLE`) if the
    /// first attempt fails.
    pub async fn connect(self) -> Result<Channel, Status> {
        let channel = self.connect_lazy()?;
        channel.inner.core.pick("", false).await?;
        Ok(channel)
    }
}

struct ChannelInner {
    target: String,
    /// The target URI as the metrics name it (`grpc.target`).
    canonical_target: Arc<str>,
    metrics: Option<Recorder>,
    scheme: Scheme,
    authority: Authority,
    user_agent: HeaderValue,
    interceptors: Vec<AnyInterceptor>,
    compression: Arc<CompressionRegistry>,
    send_compression: Option<&'static str>,
    max_recv_message_size: usize,
    max_send_message_size: usize,
    max_header_list_size: usize,
    max_attempts: u32,
    retry_buffer_per_call: usize,
    retry_budget: BufferBudget,
    core: Arc<Core>,
}

/// A client connection to a gRPC target: cheap to clone, safe to share, and usable from any
/// executor.
///
/// It resolves its target on first use (or at [`ChannelBuilder::connect`]), keeps an HTTP/2
/// connection per address its load-balancing policy uses (`pick_first` by default: one), sends
/// each call where the policy's picker says, and reconnects with backoff when connections fail.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.inner.target)
            .field("state", &self.state())
            .finish()
    }
}

impl Channel {
    /// The channel's id in channelz (`grpc.channelz.v1.Channelz/GetChannel`).
    pub fn channelz_id(&self) -> i64 {
        self.inner.core.channelz.id()
    }

    /// Starts building a channel to `target`: `host:port`, `dns:///host:port`,
    /// `unix:/path`, `unix:///abs/path`, `ipv4:a:p,...`, `ipv6:[a]:p,...`.
    pub fn builder(target: &str) -> ChannelBuilder {
        ChannelBuilder::new(target)
    }

    /// The channel's connectivity state (`doc/connectivity-semantics-and-api.md`).
    pub fn state(&self) -> ConnectivityState {
        self.inner.core.state(false)
    }

    /// The connectivity state; with `try_to_connect`, an IDLE channel starts connecting.
    pub fn connectivity_state(&self, try_to_connect: bool) -> ConnectivityState {
        self.inner.core.state(try_to_connect)
    }

    /// Waits until the state is no longer `from` and returns the new state. Bound it with a
    /// timer of your runtime to wait with a deadline.
    pub async fn wait_for_state_change(&self, from: ConnectivityState) -> ConnectivityState {
        self.inner.core.changed(from).await
    }

    /// The target the channel was built with.
    pub fn target(&self) -> &str {
        &self.inner.target
    }
}

/// How long an unused channel stays connected unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Per-client call options layered on a [`Channel`]: what generated clients hold.
#[derive(Debug, Clone)]
pub struct Grpc {
    channel: Channel,
    /// Calls are to methods of a generated stub: the metrics name them.
    stub: bool,
    send_compression: Option<&'static str>,
    max_recv_message_size: Option<usize>,
    max_send_message_size: Option<usize>,
}

/// A call ready to make attempts: its request head, options and retry plan.
struct Prepared {
    /// The request head; each attempt sends a copy.
    request: http::Request<()>,
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
    wait_for_ready: bool,
    encoder: Encoder,
    compress: bool,
    max_recv_message_size: usize,
    /// The method's retry or hedging policy (`None`: one attempt).
    policy: Option<AttemptPolicy>,
    throttle: Option<Arc<Throttle>>,
    /// The call's metrics, if measured: each attempt starts its own from it.
    measure: Option<Measure>,
}

/// An attempt's open stream.
struct Opened {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    tracking: CallTracking,
}

/// How an attempt failed: its status, and what the retry driver needs to know about it.
type AttemptFailure = (Status, AttemptEnd);

/// Request bytes a call holds in its channel's retry buffer until it commits; given back
/// when dropped.
struct Buffered {
    channel: Channel,
    bytes: usize,
}

impl Buffered {
    fn new(channel: &Channel) -> Buffered {
        Buffered {
            channel: channel.clone(),
            bytes: 0,
        }
    }

    /// Holds `bytes` more if the call's and the channel's limits allow.
    fn grow(&mut self, bytes: usize) -> bool {
        let inner = &self.channel.inner;
        let total = self.bytes.saturating_add(bytes);
        if total > inner.retry_buffer_per_call || !inner.retry_budget.try_reserve(bytes) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.channel.inner.retry_budget.release(self.bytes);
    }
}

impl Prepared {
    /// The call's retry counts, if it is measured.
    fn measured(&self) -> Option<&ClientCall> {
        self.measure.as_ref()?.client_call().map(|call| &**call)
    }

    /// Counts an attempt beyond the first in the call's metrics.
    fn another_attempt(&self, why: Another) {
        if let Some(call) = self.measured() {
            call.another_attempt(why);
        }
    }

    /// Moves the call's message encoding out, for its request task.
    fn take_encoding<C>(&mut self, codec: C) -> Encoding<C> {
        Encoding {
            codec,
            encoder: std::mem::replace(&mut self.encoder, Encoder::new(None, 0)),
            compress: self.compress,
        }
    }
}

impl Grpc {
    /// Call options over `channel`, initially the channel's.
    pub fn new(channel: Channel) -> Grpc {
        Grpc {
            channel,
            stub: false,
            send_compression: None,
            max_recv_message_size: None,
            max_send_message_size: None,
        }
    }

    /// Marks the calls made through these options as a generated stub's: the metrics record
    /// their method names (`grpc.method`). Calls by any other path are recorded as `other`
    /// (gRFC A66), so arbitrary paths cannot grow the attribute's cardinality.
    pub fn generated_stub(mut self) -> Self {
        self.stub = true;
        self
    }

    /// Compresses request messages with `encoding` (overrides the channel's setting).
    pub fn send_compression(mut self, encoding: &'static str) -> Self {
        self.send_compression = Some(encoding);
        self
    }

    /// Limits response messages to `bytes` (overrides the channel's setting).
    pub fn max_recv_message_size(mut self, bytes: usize) -> Self {
        self.max_recv_message_size = Some(bytes);
        self
    }

    /// Limits request messages to `bytes` (overrides the channel's setting).
    pub fn max_send_message_size(mut self, bytes: usize) -> Self {
        self.max_send_message_size = Some(bytes);
        self
    }

    fn runtime(&self) -> &Arc<dyn Runtime> {
        self.channel.inner.core.runtime()
    }

    /// Applies the method's service config, runs interceptors and builds the request head.
    async fn prepare<T>(
        &self,
        path: PathAndQuery,
        request: &mut Request<T>,
        tally: &CallTally,
    ) -> Result<Prepared, Status> {
        let inner = &self.channel.inner;
        let runtime = self.runtime();
        // The call's deadline counts from here, a wait for the resolver included.
        let started = runtime.now();
        let deadline_after = |timeout: Duration| anygrpc_codec::timeout::deadline(started, timeout);
        let cancel = request.take_cancel_token();
        if !inner.core.resolved_once() {
            let deadline = request.timeout().map(deadline_after);
            let resolved = inner.core.first_resolution();
            self.bounded(deadline, cancel.as_ref(), resolved).await?;
        }
        let config = inner.core.call_config();
        let method = config.service_config.method(path.path());
        let metadata = std::mem::take(request.metadata_mut());
        let timeout = match (request.timeout(), method.and_then(|m| m.timeout)) {
            (Some(call), Some(method)) => Some(call.min(method)),
            (call, method) => call.or(method),
        };
        let wait_for_ready = request
            .wait_for_ready()
            .or(method.and_then(|m| m.wait_for_ready))
            .unwrap_or(false);
        let deadline = timeout.map(deadline_after);
        let mut head = CallHead {
            path: path.clone(),
            metadata,
            extensions: http::Extensions::new(),
            deadline,
            remote_addr: None,
        };
        if !inner.interceptors.is_empty() {
            interceptor::run(&inner.interceptors, &mut head).await?;
        }
        if head.metadata.encoded_len() > inner.max_header_list_size {
            return Err(Status::resource_exhausted(format!(
                "request metadata of {} bytes exceeds the header list limit of {} bytes",
                head.metadata.encoded_len(),
                inner.max_header_list_size
            )));
        }
        let encoding = self.send_compression.or(inner.send_compression);
        let compressor = match encoding {
            None => None,
            Some(name) => Some(inner.compression.get(name).cloned().ok_or_else(|| {
                Status::internal(format!("send compression {name:?} is not registered"))
            })?),
        };
        let request = RequestHead {
            scheme: inner.scheme.clone(),
            authority: inner.authority.clone(),
            path,
            timeout: deadline.map(|d| d.saturating_duration_since(runtime.now())),
            encoding,
            accept_encoding: inner.compression.accept_encoding().clone(),
            user_agent: inner.user_agent.clone(),
            metadata: head.metadata,
        }
        .into_request()?;
        let limit = |call: Option<usize>, channel: usize, method: Option<usize>| {
            let limit = call.unwrap_or(channel);
            method.map_or(limit, |m| m.min(limit))
        };
        Ok(Prepared {
            request,
            deadline,
            cancel,
            wait_for_ready,
            encoder: Encoder::new(
                compressor,
                limit(
                    self.max_send_message_size,
                    inner.max_send_message_size,
                    method.and_then(|m| m.max_request_message_bytes),
                ),
            ),
            compress: encoding.is_some(),
            max_recv_message_size: limit(
                self.max_recv_message_size,
                inner.max_recv_message_size,
                method.and_then(|m| m.max_response_message_bytes),
            ),
            policy: method.and_then(|m| m.attempts.clone()),
            throttle: config.throttle.clone(),
            measure: tally.measure().cloned(),
        })
    }

    /// Picks a connection and opens an attempt's stream, sending `request()` as its headers
    /// (made again if the stream has to be opened on another connection).
    async fn open(
        &self,
        call: &Prepared,
        request: impl Fn() -> http::Request<()>,
    ) -> Result<Opened, Status> {
        let mut request_head = Some(request());
        let inner = &self.channel.inner;
        // A connection found closing (GOAWAY) or gone before the stream opens never saw the
        // call, so the call picks again, as often as it takes (a transparent retry, gRFC A6;
        // the caller bounds the call by its deadline). The closed connection is taken out of
        // the picker first, so each new try waits for another connection.
        let (picked, response, send) = loop {
            let picked = inner
                .core
                .pick(call.request.uri().path(), call.wait_for_ready)
                .await?;
            // GOAWAY may arrive between `ready` and `send_request`: both mean "pick again".
            let opened = match picked.send.clone().ready().await {
                Ok(mut ready) => {
                    let head = request_head.take().unwrap_or_else(&request);
                    ready.send_request(head, false)
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok((response, send)) => break (picked, response, send),
                Err(e) => {
                    picked.subchannel.closed(picked.generation);
                    if !(e.is_go_away() || e.is_io()) {
                        return Err(crate::streaming::status_from_h2(&e, false));
                    }
                }
            }
        };
        let tracking = CallTracking {
            load_report: picked.load_report.map(|sink| LoadReporter {
                sink,
                runtime: self.runtime().clone(),
            }),
            throttle: call.throttle.clone(),
            _active: Some(inner.core.call_started()),
            channelz: Some(
                picked
                    .subchannel
                    .channelz
                    .calls
                    .start(picked.streams.as_ref())
                    .measured(call.measure.as_ref().and_then(Measure::attempt)),
            ),
        };
        Ok(Opened {
            send,
            response,
            tracking,
        })
    }

    /// One attempt: opens a stream (telling the server how many attempts came before), hands
    /// its request side to `send`, and waits for the response head. `send` returns what the
    /// caller keeps of the attempt and, if a task sends the request, where it records a
    /// failure. With `stream_limits` the returned stream enforces the call's deadline and
    /// cancellation itself (it outlives the call's `bounded` scope: server streaming, bidi).
    async fn attempt<C: Codec + Clone, K>(
        &self,
        call: &Prepared,
        codec: &C,
        previous: u32,
        stream_limits: bool,
        send: impl FnOnce(h2::SendStream<Bytes>, Option<Arc<Traffic>>) -> (K, Option<LocalError>),
    ) -> Result<(K, Streaming<C::Decode>), AttemptFailure> {
        let span = tracing::debug_span!("grpc.client.attempt", previous);
        async move {
            let opened = self
                .open(call, || attempt_request(&call.request, previous))
                .await
                .map_err(|status| (status, AttemptEnd::default()))?;
            let traffic = opened.tracking.traffic();
            let (kept, local_error) = send(opened.send, traffic);
            let mut streaming = self.attempt_response(
                call,
                opened.response,
                opened.tracking,
                codec,
                stream_limits,
                local_error,
            );
            match streaming.headers().await {
                Ok(_) => Ok((kept, streaming)),
                Err(status) => Err((status, streaming.attempt_end())),
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt of a call with a single request message, `frame`.
    async fn single_attempt<C: Codec + Clone>(
        &self,
        call: &Prepared,
        frame: &Bytes,
        codec: &C,
        previous: u32,
        stream_limits: bool,
    ) -> Result<Streaming<C::Decode>, AttemptFailure> {
        // The whole request is one frame, already in memory, so it is queued at once rather
        // than after waiting for send capacity (h2 sends it as the peer's window allows; that
        // saves three of h2's stream locks per call). A send failure (stream reset,
        // connection lost) also fails the response, which carries the status that explains
        // it.
        let send = |mut stream: h2::SendStream<Bytes>, traffic: Option<Arc<Traffic>>| {
            if let Some(traffic) = traffic {
                traffic.sent_frames(frame);
            }
            let _ = stream.send_data(frame.clone(), true);
            ((), None)
        };
        let ((), streaming) = self
            .attempt(call, codec, previous, stream_limits, send)
            .await?;
        Ok(streaming)
    }

    /// The response stream of an opened attempt; its head is received on first use. With
    /// `stream_limits` it enforces the call's deadline and cancellation; `local_error` is
    /// where the attempt's request task records why it reset the stream.
    fn attempt_response<C: Codec + Clone>(
        &self,
        call: &Prepared,
        response: h2::client::ResponseFuture,
        tracking: CallTracking,
        codec: &C,
        stream_limits: bool,
        local_error: Option<LocalError>,
    ) -> Streaming<C::Decode> {
        let (deadline, cancel) = match stream_limits {
            true => (call.deadline, call.cancel.as_ref()),
            false => (None, None),
        };
        let client = ClientSide {
            deadline: Deadline::new(&**self.runtime(), deadline),
            cancel: cancel.map(CancelToken::cancelled),
            tracking,
            local_error,
            ..ClientSide::default()
        };
        let head = PendingHead {
            response,
            compression: self.channel.inner.compression.clone(),
        };
        let traffic = client.tracking.traffic();
        let mut streaming =
            Streaming::client(head, codec.clone(), call.max_recv_message_size, client);
        streaming.count_traffic(traffic);
        streaming
    }

    /// Makes a call's attempts until one commits (its response head arrives) or the call
    /// fails, following the method's retry or hedging policy (gRFC A6; the decisions are
    /// [`Attempts`]'). `attempt(previous)` makes one attempt; `replayable()` says whether a
    /// new attempt can still be sent the whole request (a request that outgrew the retry
    /// buffer commits the call: no attempt starts after that).
    async fn run_attempts<A, F, Fut>(
        &self,
        call: &Prepared,
        replayable: impl Fn() -> bool,
        mut attempt: F,
    ) -> Result<A, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<A, AttemptFailure>>,
    {
        let Some(policy) = call.policy.clone().filter(|_| replayable()) else {
            // One attempt, and one more at once if its stream was refused.
            let mut refused_retry = true;
            loop {
                match attempt(0).await {
                    Err((_, end)) if end.refused && refused_retry && replayable() => {
                        refused_retry = false;
                        call.another_attempt(Another::Transparent);
                    }
                    outcome => return outcome.map_err(|(status, _)| status),
                }
            }
        };
        // Boxed: the policy's state would otherwise enlarge every call's future.
        Box::pin(self.follow_policy(call, policy, replayable, attempt)).await
    }

    /// [`run_attempts`](Self::run_attempts) under a retry or hedging policy.
    async fn follow_policy<A, F, Fut>(
        &self,
        call: &Prepared,
        policy: AttemptPolicy,
        replayable: impl Fn() -> bool,
        mut attempt: F,
    ) -> Result<A, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<A, AttemptFailure>>,
    {
        let runtime = self.runtime();
        let throttle = call.throttle.as_deref();
        let mut attempts =
            Attempts::new(Some(policy), self.channel.inner.max_attempts, runtime.now());
        let mut rng = fastrand::Rng::new();
        let mut running = FuturesUnordered::new();
        let mut last_failure = None;
        loop {
            if !replayable() {
                attempts.commit();
            }
            let now = runtime.now();
            while attempts.next_attempt_at().is_some_and(|at| at <= now) {
                if let Some(previous) = attempts.start_attempt(now, throttle) {
                    if previous > 0 {
                        call.another_attempt(match call.policy {
                            Some(AttemptPolicy::Hedging(_)) => Another::Hedge,
                            _ => Another::Retry,
                        });
                    }
                    running.push(attempt(previous));
                }
            }
            let due = attempts.next_attempt_at();
            if running.is_empty() {
                // Waiting out a backoff or pushback; nothing in flight.
                match due {
                    Some(at) => {
                        if let Some(measured) = call.measured() {
                            measured.waited(at.saturating_duration_since(now));
                        }
                        runtime.sleep_until(at).await
                    }
                    None => {
                        return Err(last_failure.unwrap_or_else(|| {
                            Status::unavailable("the retry throttle allowed no attempt")
                        }))
                    }
                }
                continue;
            }
            let timer = match due {
                Some(at) => Either::Left(runtime.sleep_until(at)),
                None => Either::Right(std::future::pending::<()>()),
            };
            let Either::Left((Some(outcome), _)) =
                futures_util::future::select(running.next(), timer).await
            else {
                continue;
            };
            let (status, end) = match outcome {
                // Committed: the other attempts are dropped, which cancels them.
                Ok(committed) => return Ok(committed),
                Err(failure) => failure,
            };
            if !replayable() {
                attempts.commit();
            }
            if end.refused && replayable() && attempts.refused() {
                call.another_attempt(Another::Transparent);
                running.push(attempt(attempts.started().saturating_sub(1)));
                continue;
            }
            let pushback = Pushback::parse(end.pushback.as_ref().map(HeaderValue::as_bytes));
            let now = runtime.now();
            if attempts.on_failure(now, status.code(), pushback, throttle, &mut rng)
                == Decision::Fail
            {
                return Err(status);
            }
            last_failure = Some(status);
        }
    }

    /// Runs part of a call until the deadline (`DEADLINE_EXCEEDED`) or cancellation
    /// (`CANCELLED`), whichever comes first.
    fn bounded<F: std::future::Future>(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        work: F,
    ) -> impl std::future::Future<Output = Result<F::Output, Status>> {
        let deadline = Deadline::new(&**self.runtime(), deadline);
        Bounded::new(work, deadline, cancel.map(CancelToken::cancelled))
            .map(|done| done.map_err(Cut::client_status))
    }

    /// A unary call: one request message, one response message. Retried or hedged as the
    /// method's service config says.
    pub async fn unary<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> Result<Response<C::Decode>, Status> {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let (call, frame, held) = self.prepare_single(path, &codec, request, &tally).await?;
            let call = &call;
            let exchange = async {
                let mut streaming = self
                    .run_attempts(
                        call,
                        || replayable(call, &held),
                        |previous| self.single_attempt(call, &frame, &codec, previous, false),
                    )
                    .await?;
                single_response(&mut streaming).await
            };
            self.bounded(call.deadline, call.cancel.as_ref(), exchange)
                .await?
        }
        .instrument(span)
        .await;
        counted(tally, outcome)
    }

    /// A server-streaming call: one request message, a stream of responses. Retried or hedged
    /// until the response head arrives, as the method's service config says.
    pub async fn server_streaming<C: Codec + Clone>(
        &self,
        path: PathAndQuery,
        codec: C,
        request: Request<C::Encode>,
    ) -> Result<Response<Streaming<C::Decode>>, Status> {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let (call, frame, held) = self.prepare_single(path, &codec, request, &tally).await?;
            let call = &call;
            let attempts = self.run_attempts(
                call,
                || replayable(call, &held),
                |previous| self.single_attempt(call, &frame, &codec, previous, true),
            );
            self.bounded(call.deadline, call.cancel.as_ref(), attempts)
                .await?
        }
        .instrument(span)
        .await;
        let mut streaming = counted_by_stream(tally, outcome)?;
        Ok(Response::from_parts(
            streaming.take_headers(),
            streaming,
            MetadataMap::new(),
        ))
    }

    /// Prepares a single-message request's call and encodes its message once, for every
    /// attempt. The frame is held in the retry buffer if the call has a retry or hedging policy
    /// and it fits; without that hold the call makes one attempt.
    async fn prepare_single<C: Codec>(
        &self,
        path: PathAndQuery,
        codec: &C,
        mut request: Request<C::Encode>,
        tally: &CallTally,
    ) -> Result<(Prepared, Bytes, Option<Buffered>), Status> {
        let mut call = self.prepare(path, &mut request, tally).await?;
        let frame = call
            .encoder
            .encode(codec, request.into_inner(), call.compress)?;
        let held = match call.policy {
            Some(_) => {
                let mut held = Buffered::new(&self.channel);
                held.grow(frame.len()).then_some(held)
            }
            None => None,
        };
        Ok((call, frame, held))
    }

    /// Starts a streaming-request call: its request task, and its attempt. Without a retry
    /// or hedging policy the call has one attempt (with the transparent retries of
    /// [`open`](Self::open)) and returns once its stream is open; with one, the request task
    /// keeps what it sent for replay and the call returns once it commits to an attempt.
    /// `stream_limits` as for [`attempt`](Self::attempt).
    async fn stream_call<C, S>(
        &self,
        call: &Prepared,
        encoding: Encoding<C>,
        messages: S,
        stream_limits: bool,
    ) -> Result<Streaming<C::Decode>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let runtime = &**self.runtime();
        let codec = encoding.codec.clone();
        if call.policy.is_none() {
            let opened = self
                .open(call, || attempt_request(&call.request, 0))
                .await?;
            let traffic = opened.tracking.traffic();
            let error = LocalError::default();
            let mut streaming = self.attempt_response(
                call,
                opened.response,
                opened.tracking,
                &codec,
                stream_limits,
                Some(error.clone()),
            );
            let send = opened.send;
            streaming.hold_request(match requests::take(messages) {
                Ok(channel) => sender::attach(channel, send, traffic, encoding, error),
                Err(messages) => sender::spawn(runtime, send, traffic, encoding, messages, error),
            });
            return Ok(streaming);
        }
        let replay = Replay::start(runtime, encoding, messages, Buffered::new(&self.channel));
        let (id, mut streaming) = self
            .run_attempts(
                call,
                || replay.replayable(),
                |previous| {
                    self.attempt(call, &codec, previous, stream_limits, |stream, traffic| {
                        let (id, error) = replay.attach(stream, traffic);
                        (id, Some(error))
                    })
                },
            )
            .await?;
        streaming.hold_request(replay.commit(id));
        Ok(streaming)
    }

    /// A client-streaming call: a stream of requests, one response. Retried or hedged until
    /// the response head arrives, as the method's service config says.
    pub async fn client_streaming<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<S>,
    ) -> Result<Response<C::Decode>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let mut call = self.prepare(path, &mut request, &tally).await?;
            let encoding = call.take_encoding(codec);
            let call = &call;
            let exchange = async {
                let mut streaming = self
                    .stream_call(call, encoding, request.into_inner(), false)
                    .await?;
                streaming.headers().await?;
                single_response(&mut streaming).await
            };
            self.bounded(call.deadline, call.cancel.as_ref(), exchange)
                .await?
        }
        .instrument(span)
        .await;
        counted(tally, outcome)
    }

    /// A bidirectional-streaming call: requests and responses flow independently. Retried or
    /// hedged until the response head arrives, as the method's service config says.
    ///
    /// The server may wait for requests before it answers, so the call returns once its
    /// stream is open (under a retry policy, at once: its attempts run in a task of their
    /// own); the response head is read with the first message, or with
    /// [`Streaming::headers`].
    pub async fn streaming<C, S>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<S>,
    ) -> Result<Response<Streaming<C::Decode>>, Status>
    where
        C: Codec + Clone,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let (span, tally) = self.start_call(&path);
        let outcome = async {
            let mut call = self.prepare(path, &mut request, &tally).await?;
            let encoding = call.take_encoding(codec.clone());
            let messages = request.into_inner();
            if call.policy.is_none() {
                let start = self.stream_call(&call, encoding, messages, true);
                return self
                    .bounded(call.deadline, call.cancel.as_ref(), start)
                    .await?;
            }
            let (mut committed, receiver) = futures_channel::oneshot::channel();
            let grpc = self.clone();
            self.runtime().spawn(Box::pin(async move {
                let start = grpc.stream_call(&call, encoding, messages, true);
                let start = grpc.bounded(call.deadline, call.cancel.as_ref(), start);
                let start = std::pin::pin!(start);
                // The caller dropping the response stream cancels the attempts.
                let outcome = {
                    let dropped = std::pin::pin!(committed.cancellation());
                    match futures_util::future::select(start, dropped).await {
                        Either::Left((outcome, _)) => Some(outcome.and_then(|started| started)),
                        Either::Right(_) => None,
                    }
                };
                if let Some(outcome) = outcome {
                    let _ = committed.send(outcome);
                }
            }));
            Ok(Streaming::committing(receiver, codec))
        }
        .instrument(span)
        .await;
        counted_by_stream(tally, outcome).map(Response::new)
    }

    /// Starts a call to `path`: its span (debug level: with no subscriber that wants it, a
    /// check of a cached interest and nothing else), and its count in the channel's channelz
    /// entry and metrics, which [`counted`] or [`counted_by_stream`] ends.
    fn start_call(&self, path: &PathAndQuery) -> (tracing::Span, CallTally) {
        let inner = &self.channel.inner;
        let measure = inner
            .metrics
            .as_ref()
            .map(|metrics| metrics.client_call(path.path(), self.stub, &inner.canonical_target));
        let tally = inner.core.channelz.calls.start(None).measured(measure);
        (
            tracing::debug_span!("grpc.client.call", method = path.path()),
            tally,
        )
    }
}

/// Ends a call's count (channelz and metrics) with its outcome, whatever step it failed at.
fn counted<T>(mut tally: CallTally, outcome: Result<T, Status>) -> Result<T, Status> {
    tally.end(match &outcome {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    });
    outcome
}

/// [`counted`] for a call whose response is a stream: once it is open, the stream holds the
/// count and ends it with the call.
fn counted_by_stream<T>(
    tally: CallTally,
    outcome: Result<Streaming<T>, Status>,
) -> Result<Streaming<T>, Status> {
    match outcome {
        Ok(mut streaming) => {
            streaming.count_call(tally);
            Ok(streaming)
        }
        Err(status) => counted(tally, Err(status)),
    }
}

/// Whether a single-message request can be sent again: always without a policy (the call
/// holds its one frame for the refused-stream retry), under one while it is in the retry
/// buffer.
fn replayable(call: &Prepared, held: &Option<Buffered>) -> bool {
    call.policy.is_none() || held.is_some()
}

/// A copy of a call's request head for one attempt, saying how many attempts came before.
fn attempt_request(head: &http::Request<()>, previous: u32) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = head.uri().clone();
    *request.headers_mut() = head.headers().clone();
    if previous > 0 {
        request
            .headers_mut()
            .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(previous));
    }
    request
}

/// Reads exactly one message and the trailers: the response of a call that committed to
/// `streaming`'s attempt.
async fn single_response<T>(streaming: &mut Streaming<T>) -> Result<Response<T>, Status> {
    let metadata = streaming.take_headers();
    let message = streaming.single("response").await?;
    let trailers = streaming.trailers().await?.unwrap_or_default();
    Ok(Response::from_parts(metadata, message, trailers))
}
