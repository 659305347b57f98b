//! The client: [`Channel`] and the generic call API ([`Grpc`]) that generated stubs use.

mod cancel;
mod conn;
mod core;

pub use cancel::{cancellation, CancelToken, Cancelled, Canceller};

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anygrpc_codec::{
    compression::CompressionRegistry,
    frame::{Encoder, DEFAULT_MAX_RECV_MESSAGE_SIZE, DEFAULT_MAX_SEND_MESSAGE_SIZE},
    headers::{self, RequestHead},
    metadata::DEFAULT_MAX_HEADER_LIST_SIZE,
    Codec,
};
use anygrpc_lb::{BackoffConfig, ConnectivityState, PolicyRegistry};
use anygrpc_resolver::Registry;
use anygrpc_rt::Runtime;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::{future::Either, StreamExt};
use http::{
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue,
};

use crate::{
    interceptor::{self, AnyInterceptor, AsyncInterceptor, CallHead, Interceptor},
    send::{append_ready, send_message, Gathered},
    streaming::{CallTracking, ClientSide, LoadReporter, LocalError, PendingHead},
    with_deadline, MetadataMap, Request, Response, Status, Streaming,
};
use conn::ConnSettings;
pub(crate) use core::ActiveCall;
use core::{Core, CoreConfig};

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
    lb_registry: PolicyRegistry,
    load_balancing_config: String,
    idle_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ClientTlsConfig>,
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
                backoff: BackoffConfig::default(),
                health_check_service: None,
                scheme: Scheme::HTTP,
                authority: Authority::from_static("localhost"),
                user_agent: headers::default_user_agent(),
                #[cfg(feature = "tls")]
                tls: None,
            },
            lb_registry: PolicyRegistry::default(),
            load_balancing_config: r#"[{"pick_first":{}}]"#.to_owned(),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            #[cfg(feature = "tls")]
            tls: None,
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

    /// HTTP/2 initial stream flow-control window. Default 1 MiB.
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.settings.initial_stream_window_size = bytes;
        self
    }

    /// HTTP/2 initial connection flow-control window. Default 2 MiB.
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.settings.initial_connection_window_size = bytes;
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
        Ok(Channel {
            inner: Arc::new(ChannelInner {
                target: self.target,
                scheme,
                authority,
                user_agent,
                interceptors: self.interceptors,
                compression: Arc::new(self.compression),
                send_compression: self.send_compression,
                max_recv_message_size: self.max_recv_message_size,
                max_send_message_size: self.max_send_message_size,
                max_header_list_size: settings.max_header_list_size as usize,
                core: Core::new(CoreConfig {
                    runtime,
                    settings,
                    target,
                    resolver_builder: builder,
                    policy_builder,
                    policy_config,
                    idle_timeout: self.idle_timeout,
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
    scheme: Scheme,
    authority: Authority,
    user_agent: HeaderValue,
    interceptors: Vec<AnyInterceptor>,
    compression: Arc<CompressionRegistry>,
    send_compression: Option<&'static str>,
    max_recv_message_size: usize,
    max_send_message_size: usize,
    max_header_list_size: usize,
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

/// How many times a call is moved to another connection because the one it picked was closing
/// before the call's stream opened.
const MAX_TRANSPARENT_RETRIES: u32 = 5;

/// Per-client call options layered on a [`Channel`]: what generated clients hold.
#[derive(Debug, Clone)]
pub struct Grpc {
    channel: Channel,
    send_compression: Option<&'static str>,
    max_recv_message_size: Option<usize>,
    max_send_message_size: Option<usize>,
}

/// The pieces of a started call.
struct Started {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
    encoder: Encoder,
    compress: bool,
    tracking: CallTracking,
}

impl Grpc {
    /// Call options over `channel`, initially the channel's.
    pub fn new(channel: Channel) -> Grpc {
        Grpc {
            channel,
            send_compression: None,
            max_recv_message_size: None,
            max_send_message_size: None,
        }
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

    /// Runs interceptors, opens the HTTP/2 stream and sends the request headers.
    async fn start<T>(
        &self,
        path: PathAndQuery,
        request: &mut Request<T>,
    ) -> Result<Started, Status> {
        let metadata = std::mem::take(request.metadata_mut());
        let timeout = request.timeout();
        let cancel = request.take_cancel_token();
        let wait_for_ready = request.wait_for_ready();
        let inner = &self.channel.inner;
        let runtime = self.runtime();
        let deadline = timeout.map(|t| {
            runtime
                .now()
                .checked_add(t)
                .unwrap_or_else(|| runtime.now() + Duration::from_secs(100 * 365 * 24 * 3600))
        });
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
        let open = async {
            // A connection found closing (GOAWAY) or gone before the stream opens never saw
            // the call, so the call picks again: a transparent retry.
            let mut attempts = 0;
            let (picked, ready) = loop {
                attempts += 1;
                let picked = inner
                    .core
                    .pick(request.uri().path(), wait_for_ready)
                    .await?;
                match picked.send.clone().ready().await {
                    Ok(ready) => break (picked, ready),
                    Err(e) => {
                        picked.subchannel.closed(picked.generation);
                        if attempts >= MAX_TRANSPARENT_RETRIES || !(e.is_go_away() || e.is_io()) {
                            return Err(crate::status_from_h2(&e, false));
                        }
                    }
                }
            };
            let mut ready = ready;
            let (response, send) = ready.send_request(request, false).map_err(|e| {
                picked.subchannel.closed(picked.generation);
                crate::status_from_h2(&e, false)
            })?;
            let tracking = CallTracking {
                load_report: picked.load_report.map(|sink| LoadReporter {
                    sink,
                    runtime: runtime.clone(),
                }),
                _active: Some(inner.core.call_started()),
            };
            Ok::<_, Status>((response, send, tracking))
        };
        let (response, send, tracking) = self.bounded(deadline, cancel.as_ref(), open).await??;
        Ok(Started {
            send,
            response,
            deadline,
            cancel,
            encoder: Encoder::new(
                compressor,
                self.max_send_message_size
                    .unwrap_or(inner.max_send_message_size),
            ),
            compress: encoding.is_some(),
            tracking,
        })
    }

    /// The response stream of a started call; its head is received on first use.
    fn response<C: Codec>(
        &self,
        response: h2::client::ResponseFuture,
        codec: C,
        client: ClientSide,
    ) -> Streaming<C::Decode> {
        let inner = &self.channel.inner;
        let head = PendingHead {
            response,
            compression: inner.compression.clone(),
        };
        let limit = self
            .max_recv_message_size
            .unwrap_or(inner.max_recv_message_size);
        Streaming::client(head, codec, limit, client)
    }

    /// Waits for a response stream's head; returns its header metadata and the stream.
    async fn with_headers<T>(
        mut streaming: Streaming<T>,
    ) -> Result<(MetadataMap, Streaming<T>), Status> {
        streaming.headers().await?;
        Ok((streaming.take_headers(), streaming))
    }

    /// Runs part of a call until the deadline (`DEADLINE_EXCEEDED`) or cancellation
    /// (`CANCELLED`), whichever comes first.
    async fn bounded<F: std::future::Future>(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        fut: F,
    ) -> Result<F::Output, Status> {
        let limited = std::pin::pin!(with_deadline(&**self.runtime(), deadline, fut));
        let cancelled = match cancel {
            Some(token) => Either::Left(token.cancelled()),
            None => Either::Right(std::future::pending::<()>()),
        };
        match futures_util::future::select(limited, cancelled).await {
            Either::Left((Ok(out), _)) => Ok(out),
            Either::Left((Err(_), _)) => Err(Status::deadline_exceeded("deadline exceeded")),
            Either::Right(_) => Err(Status::cancelled("call cancelled by the client")),
        }
    }

    /// The client-only state of a response stream: its deadline timer, cancellation, and
    /// tracking.
    fn client_side(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        tracking: CallTracking,
    ) -> ClientSide {
        ClientSide {
            deadline: deadline.map(|d| self.runtime().sleep_until(d)),
            deadline_at: deadline,
            cancel: cancel.map(CancelToken::cancelled),
            tracking,
            ..ClientSide::default()
        }
    }

    /// A unary call: one request message, one response message.
    pub async fn unary<C: Codec>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<C::Encode>,
    ) -> Result<Response<C::Decode>, Status> {
        let mut call = self.start(path, &mut request).await?;
        let (deadline, cancel) = (call.deadline, call.cancel.take());
        let frame = call
            .encoder
            .encode(&codec, request.into_inner(), call.compress)?;
        let exchange = async move {
            // A send failure (stream reset, connection lost) also fails the response, which
            // carries the status that explains it.
            let _ = send_message(&mut call.send, frame, true).await;
            let client = self.client_side(None, None, call.tracking);
            let (metadata, streaming) =
                Self::with_headers(self.response(call.response, codec, client)).await?;
            single_response(metadata, streaming).await
        };
        self.bounded(deadline, cancel.as_ref(), exchange).await?
    }

    /// A server-streaming call: one request message, a stream of responses.
    pub async fn server_streaming<C: Codec>(
        &self,
        path: PathAndQuery,
        codec: C,
        mut request: Request<C::Encode>,
    ) -> Result<Response<Streaming<C::Decode>>, Status> {
        let mut call = self.start(path, &mut request).await?;
        let (deadline, cancel) = (call.deadline, call.cancel.take());
        let frame = call
            .encoder
            .encode(&codec, request.into_inner(), call.compress)?;
        let client = self.client_side(
            deadline,
            cancel.as_ref(),
            std::mem::take(&mut call.tracking),
        );
        let exchange = async move {
            let _ = send_message(&mut call.send, frame, true).await;
            Self::with_headers(self.response(call.response, codec, client)).await
        };
        let (metadata, streaming) = self.bounded(deadline, cancel.as_ref(), exchange).await??;
        Ok(Response::from_parts(
            metadata,
            streaming,
            MetadataMap::new(),
        ))
    }

    /// A client-streaming call: a stream of requests, one response.
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
        let mut call = self.start(path, &mut request).await?;
        let (deadline, cancel) = (call.deadline, call.cancel.take());
        let messages = request.into_inner();
        let client = self.spawn_sender(
            self.client_side(None, None, call.tracking),
            call.send,
            call.encoder,
            call.compress,
            codec.clone(),
            messages,
        );
        let exchange = async move {
            let (metadata, streaming) =
                Self::with_headers(self.response(call.response, codec, client)).await?;
            single_response(metadata, streaming).await
        };
        self.bounded(deadline, cancel.as_ref(), exchange).await?
    }

    /// A bidirectional-streaming call: requests and responses flow independently.
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
        let mut call = self.start(path, &mut request).await?;
        let (deadline, cancel) = (call.deadline, call.cancel.take());
        let messages = request.into_inner();
        let client = self.spawn_sender(
            self.client_side(deadline, cancel.as_ref(), call.tracking),
            call.send,
            call.encoder,
            call.compress,
            codec.clone(),
            messages,
        );
        // The server may wait for a request before it answers, so the call returns at once;
        // the response head is read with the first message (or `Streaming::headers`).
        Ok(Response::new(self.response(call.response, codec, client)))
    }

    /// Spawns the task that sends a request stream, and gives `client` the means to stop it
    /// (dropping its cancel sender: the response ended or was dropped) and to learn why it
    /// failed.
    fn spawn_sender<C, S>(
        &self,
        client: ClientSide,
        mut send: h2::SendStream<Bytes>,
        mut encoder: Encoder,
        compress: bool,
        codec: C,
        messages: S,
    ) -> ClientSide
    where
        C: Codec,
        S: Stream<Item = C::Encode> + Send + 'static,
    {
        let (cancel_tx, cancel_rx) = futures_channel::oneshot::channel::<()>();
        let local_error: LocalError = Arc::new(Mutex::new(None));
        let error_slot = local_error.clone();
        self.runtime().spawn(Box::pin(async move {
            let work = async {
                let mut messages = std::pin::pin!(messages.map(Ok::<_, Status>));
                let failed = loop {
                    let Some(Ok(first)) = messages.next().await else {
                        break None;
                    };
                    if let Err(status) = encoder.append(&codec, first, compress) {
                        break Some(status);
                    }
                    let gathered = append_ready(&mut encoder, &codec, compress, &mut messages);
                    if send_message(&mut send, encoder.take(), false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match gathered {
                        Gathered::More => {}
                        Gathered::End => break None,
                        Gathered::Fail(status) => break Some(status),
                    }
                };
                match failed {
                    None => {
                        let _ = send.send_data(Bytes::new(), true);
                    }
                    Some(status) => {
                        if let Ok(mut slot) = error_slot.lock() {
                            *slot = Some(status);
                        }
                        send.send_reset(h2::Reason::CANCEL);
                    }
                }
            };
            let work = std::pin::pin!(work);
            if let Either::Right(_) = futures_util::future::select(work, cancel_rx).await {
                tracing::trace!("request stream stopped: call ended");
            }
        }));
        ClientSide {
            _cancel_sender: Some(cancel_tx),
            local_error: Some(local_error),
            ..client
        }
    }
}

/// Reads exactly one message and the trailers.
async fn single_response<T>(
    metadata: MetadataMap,
    mut streaming: Streaming<T>,
) -> Result<Response<T>, Status> {
    let message = streaming.single("response").await?;
    let trailers = streaming.trailers().await?.unwrap_or_default();
    Ok(Response::from_parts(metadata, message, trailers))
}
