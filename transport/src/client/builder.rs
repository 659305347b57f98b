//! [`ChannelBuilder`]: a channel's settings, and the channel they build.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use anygrpc_codec::{
    headers::{self},
    keepalive::{self, KeepaliveConfig},
    BackoffConfig,
};
use anygrpc_lb::{retry, BufferBudget, PolicyRegistry, ServiceConfig};
use anygrpc_resolver::{
    join_host_port, split_host_port, HttpProxy, Registry, Target, DEFAULT_PORT,
};
use anygrpc_rt::Runtime;
use http::{
    uri::{Authority, Scheme},
    HeaderValue,
};

use super::conn::{ClientKeepalive, ConnSettings};
use super::core::{Core, CoreConfig};
use super::proxy::Tunnel;
use super::{Channel, ChannelInner, DEFAULT_IDLE_TIMEOUT};
use crate::{
    channelz::ChannelNode,
    credentials::{compose, CallCredentials, ChannelCredentials},
    settings::{call_setters, CallSettings},
    Status,
};

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
    call: CallSettings,
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
    proxy: ProxyChoice,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTlsConfig>,
    call_credentials: Option<Arc<dyn CallCredentials>>,
    insecure_call_credentials: bool,
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
    pub(super) fn new(target: &str) -> ChannelBuilder {
        let call = CallSettings::default();
        let max_header_list_size = call.max_header_list_size;
        ChannelBuilder {
            target: target.to_owned(),
            runtime: None,
            registry: Registry::global(),
            authority: None,
            user_agent: None,
            call,
            settings: ConnSettings {
                initial_stream_window_size: 1 << 20,
                initial_connection_window_size: 2 << 20,
                max_header_list_size,
                max_frame_size: 16 * 1024,
                tcp_nodelay: true,
                dynamic_window: true,
                keepalive: None,
                backoff: BackoffConfig::default(),
                health_check_service: None,
                scheme: Scheme::HTTP,
                authority: Authority::from_static("localhost"),
                user_agent: headers::default_user_agent(),
                tunnel: None,
                #[cfg(feature = "tls")]
                tls: None,
            },
            keepalive: KeepaliveConfig {
                time: Duration::MAX,
                timeout: keepalive::DEFAULT_KEEPALIVE_TIMEOUT,
                permit_without_calls: false,
            },
            keepalive_on: false,
            lb_registry: PolicyRegistry::global(),
            load_balancing_config: r#"[{"pick_first":{}}]"#.to_owned(),
            default_service_config: None,
            max_attempts: retry::DEFAULT_MAX_ATTEMPTS,
            retry_buffer_per_call: retry::DEFAULT_PER_CALL_BUFFER,
            retry_buffer_per_channel: retry::DEFAULT_PER_CHANNEL_BUFFER,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            proxy: ProxyChoice::FromEnvironment,
            #[cfg(feature = "tls")]
            tls: None,
            call_credentials: None,
            insecure_call_credentials: false,
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

    /// The load-balancing policies available by name, for custom policies, instead of the
    /// process-wide ones ([`PolicyRegistry::global`]).
    pub fn lb_policy_registry(mut self, registry: PolicyRegistry) -> Self {
        self.lb_registry = registry;
        self
    }

    /// The resolver registry, for custom target schemes, instead of the process-wide one
    /// ([`Registry::global`]).
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

    call_setters!();

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

    /// [`keepalive_time`](Self::keepalive_time) without the 10 s floor, as the C-core's
    /// `GRPC_ARG_KEEPALIVE_TIME_MS` takes any time: for a peer you run, configured to accept
    /// pings this often (a server with default settings answers a client that pings more
    /// often than every 5 minutes with GOAWAY `too_many_pings`, and the channel then doubles
    /// its time for new connections).
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

    /// Connects through this HTTP CONNECT proxy (gRFC A1) instead of the one the environment
    /// names, to every host but those on its `no_proxy` list (loopback hosts included: the
    /// choice is yours). See [`HttpProxy`] for the URL and the list.
    pub fn http_proxy(mut self, proxy: HttpProxy) -> Self {
        self.proxy = ProxyChoice::Given(proxy);
        self
    }

    /// Connects directly, whatever proxy the environment names.
    pub fn no_http_proxy(mut self) -> Self {
        self.proxy = ProxyChoice::Direct;
        self
    }

    /// Connects with TLS (scheme `https`, ALPN `h2`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::tls::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Adds call credentials that every call on the channel sends, asked on each attempt
    /// after any added before (see [`credentials`](crate::credentials)).
    pub fn call_credentials(mut self, credentials: impl CallCredentials) -> Self {
        self.call_credentials = compose(self.call_credentials.take(), Some(Arc::new(credentials)));
        self
    }

    /// Secures the channel and adds call credentials as `credentials` says: TLS (as
    /// [`tls`](Self::tls)) or plaintext, then its call credentials (as
    /// [`call_credentials`](Self::call_credentials)).
    pub fn credentials(mut self, credentials: ChannelCredentials) -> Self {
        #[cfg(feature = "tls")]
        {
            self.tls = credentials.tls;
        }
        self.call_credentials = compose(self.call_credentials.take(), credentials.call);
        self
    }

    /// Lets call credentials that require transport security travel on a plaintext channel,
    /// for local testing. Without it such credentials fail the channel's build (the
    /// channel's own) or the call (`UNAUTHENTICATED`, a call's own).
    pub fn allow_insecure_call_credentials(mut self, allow: bool) -> Self {
        self.insecure_call_credentials = allow;
        self
    }

    /// Builds the channel without connecting; the first call connects.
    ///
    /// A malformed target or a bad setting is `INVALID_ARGUMENT`.
    pub fn connect_lazy(mut self) -> Result<Channel, Status> {
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
        let (target, builder) = match self.proxy.tunnel(&target) {
            Some((tunnel, proxy_target)) => {
                self.settings.tunnel = Some(tunnel);
                self.registry.parse_target(&proxy_target)?
            }
            None => (target, builder),
        };
        let authority = Authority::try_from(authority_text.as_str()).map_err(|e| {
            Status::invalid_argument(format!("invalid authority {authority_text:?}: {e}"))
        })?;
        let lb_config: serde_json::Value = serde_json::from_str(&self.load_balancing_config)
            .map_err(|e| Status::invalid_argument(format!("invalid loadBalancingConfig: {e}")))?;
        let (policy_builder, policy_config) = self.lb_registry.parse_lb_config(&lb_config)?;
        let default_service_config = match &self.default_service_config {
            None => ServiceConfig::default(),
            Some(json) => super::core::check_service_config(json, &self.lb_registry)?,
        };
        self.call.check()?;
        let user_agent = match &self.user_agent {
            None => headers::default_user_agent(),
            Some(prefix) => HeaderValue::from_str(&format!(
                "{prefix} {}",
                headers::default_user_agent().to_str().unwrap_or_default()
            ))
            .map_err(|_| Status::invalid_argument("user agent must be visible ASCII"))?,
        };
        let mut settings = self.settings;
        settings.max_header_list_size = self.call.max_header_list_size;
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
        let secure = scheme == Scheme::HTTPS || self.insecure_call_credentials;
        if !secure
            && self
                .call_credentials
                .as_ref()
                .is_some_and(|c| c.requires_transport_security())
        {
            return Err(Status::invalid_argument(
                "the channel's call credentials require transport security: use TLS, or allow_insecure_call_credentials for local testing",
            ));
        }
        settings.scheme = scheme.clone();
        settings.authority = authority.clone();
        settings.user_agent = user_agent.clone();
        let channelz = ChannelNode::channel(self.target.clone(), runtime.clone());
        #[cfg(feature = "opentelemetry")]
        let metrics = self
            .metrics
            .map(|m| crate::metrics::Recorder::new(m.instruments, runtime.clone()));
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
                call: self.call,
                call_credentials: self.call_credentials,
                secure,
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
        channel
            .inner
            .core
            .pick(&http::Request::new(()), false)
            .await?;
        Ok(channel)
    }
}

/// Where a channel's proxy comes from.
#[derive(Debug, Clone)]
enum ProxyChoice {
    /// `grpc_proxy` / `https_proxy` / `http_proxy`, read when the channel is built.
    FromEnvironment,
    /// [`ChannelBuilder::http_proxy`].
    Given(HttpProxy),
    /// [`ChannelBuilder::no_http_proxy`].
    Direct,
}

impl ProxyChoice {
    /// The tunnel a `dns:` target's connections open, and the target to resolve instead
    /// (the proxy's), when a proxy applies to the target's host. A proxy from the
    /// environment never applies to `localhost` or a loopback address, as in grpc-go.
    fn tunnel(&self, target: &Target) -> Option<(Tunnel, String)> {
        if target.scheme() != "dns" {
            return None;
        }
        let (host, port) = split_host_port(target.endpoint(), DEFAULT_PORT).ok()?;
        let from_env;
        let proxy = match self {
            ProxyChoice::Direct => return None,
            ProxyChoice::Given(proxy) => proxy,
            ProxyChoice::FromEnvironment => {
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if loopback {
                    return None;
                }
                from_env = HttpProxy::from_env(|name| std::env::var(name).ok())?;
                &from_env
            }
        };
        if !proxy.applies_to(&host) {
            return None;
        }
        let tunnel = Tunnel {
            proxy: proxy.address(),
            authority: join_host_port(&host, port),
            credentials: proxy.credentials().map(str::to_owned),
        };
        Some((tunnel, format!("dns:///{}", proxy.address())))
    }
}
