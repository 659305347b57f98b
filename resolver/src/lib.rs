//! Name resolution: from a target string to the addresses a channel connects to.
//!
//! A target is parsed into a [`Target`] (`doc/naming.md`); its scheme selects a
//! [`ResolverBuilder`] from a [`Registry`]; the [`Resolver`] it builds pushes
//! [`ResolverUpdate`]s (addresses, and the raw service config text if it found any) whenever it
//! learns something, and is asked to [`resolve_now`](Resolver::resolve_now) when the channel's
//! connections fail. Built in: `dns` (the default), `unix`, `unix-abstract`, `ipv4`, `ipv6`
//! and `passthrough`.
//!
//! A scheme of your own is a [`ResolverBuilder`] registered for every channel
//! ([`Registry::register_global`]) or for one (anygrpc's `ChannelBuilder::resolver_registry`).
//! Its resolver may be a [`StaticResolver`] when the addresses are known when it is built.
//! Which HTTP CONNECT proxy a target goes through is [`proxy`]'s.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

pub use anygrpc_codec::Status;
use anygrpc_codec::{Backoff, BackoffConfig};
pub use anygrpc_rt::{Address, Endpoint};
use anygrpc_rt::{BoxFuture, Runtime, Sleep};

pub mod proxy;
mod registry;
mod target;
pub mod txt;
pub use proxy::HttpProxy;
pub use registry::Registry;
pub use target::Target;

/// The port used when a `dns:` or `ipv4:`/`ipv6:` target names none.
pub const DEFAULT_PORT: u16 = 443;

/// What a resolver learned.
#[derive(Debug, Clone)]
pub struct ResolverUpdate {
    /// The endpoints (each one server's addresses, with its attributes), or why there are
    /// none.
    pub endpoints: Result<Vec<Endpoint>, Status>,
    /// The service config JSON text the resolver found, if any.
    pub service_config: Option<String>,
}

/// A running resolver for one channel.
pub trait Resolver: Send + fmt::Debug + 'static {
    /// The next update. Pending until the resolver has something new.
    fn poll_update(&mut self, cx: &mut Context<'_>) -> Poll<ResolverUpdate>;

    /// Asks for a fresh resolution (connections failed, or a server sent GOAWAY).
    fn resolve_now(&mut self);
}

/// Makes resolvers for one URI scheme. A builder whose addresses are fixed by the target
/// can return a [`StaticResolver`].
pub trait ResolverBuilder: Send + Sync + fmt::Debug + 'static {
    /// The scheme, e.g. `dns`.
    fn scheme(&self) -> &'static str;

    /// Checks the target and builds a resolver for it; a malformed target is
    /// `INVALID_ARGUMENT`.
    fn build(
        &self,
        target: &Target,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Box<dyn Resolver>, Status>;

    /// The `:authority` calls on this target use unless the channel overrides it.
    fn default_authority(&self, target: &Target) -> String {
        target.endpoint().to_owned()
    }
}

/// Joins a host and a port as `host:port`, bracketing an IPv6 literal: the inverse of
/// [`split_host_port`].
pub fn join_host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// Splits `host[:port]` (host may be a bracketed IPv6 literal) and applies the default port.
pub fn split_host_port(endpoint: &str, default_port: u16) -> Result<(String, u16), Status> {
    let bad = || Status::invalid_argument(format!("invalid host:port {endpoint:?}"));
    if endpoint.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?,
        };
        return Ok((host.to_owned(), port));
    }
    match endpoint.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 literal.
        Some((host, _)) if host.contains(':') => Ok((endpoint.to_owned(), default_port)),
        Some((host, port)) if !host.is_empty() => {
            Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
        }
        Some(_) => Err(bad()),
        None => Ok((endpoint.to_owned(), default_port)),
    }
}

/// The least time between two DNS resolutions of one target, unless configured otherwise
/// (grpc-go's and the C-core's 30 s).
pub const DEFAULT_MIN_RESOLUTION_INTERVAL: Duration = Duration::from_secs(30);

/// Resolves `dns:` targets with the runtime's system resolver, or, for a
/// `dns://AUTHORITY/host` target, by asking the DNS server at `AUTHORITY` (an IP address,
/// port 53 by default) for the host's A and AAAA records. The service config's TXT lookup,
/// when on, asks the system's nameserver either way.
///
/// Re-resolution requests (connections failing, GOAWAY) are served no more often than the
/// minimum interval; a failed lookup is retried with connection backoff
/// (`doc/connection-backoff.md`) until one succeeds. To change either, register a configured
/// builder in the channel's [`Registry`].
#[derive(Debug, Clone, Copy)]
pub struct DnsResolverBuilder {
    min_interval: Duration,
    backoff: BackoffConfig,
    service_config_from_txt: bool,
}

impl Default for DnsResolverBuilder {
    fn default() -> DnsResolverBuilder {
        DnsResolverBuilder {
            min_interval: DEFAULT_MIN_RESOLUTION_INTERVAL,
            backoff: BackoffConfig::default(),
            service_config_from_txt: false,
        }
    }
}

impl DnsResolverBuilder {
    /// The least time between resolutions. Default 30 s.
    pub fn min_resolution_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The backoff between retries of a failed lookup. Default: the spec's connection
    /// backoff.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Also looks up the service config in the `_grpc_config.<host>` TXT record (gRFC A2)
    /// with each resolution. Off by default, as in grpc-go and the C-core: a service config
    /// from DNS lets whoever controls the zone change how clients behave.
    pub fn service_config_from_txt(mut self, on: bool) -> Self {
        self.service_config_from_txt = on;
        self
    }
}

/// How long a TXT lookup may take.
const TXT_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up `host`'s service config in DNS through the runtime, for at most
/// [`TXT_TIMEOUT`]: the config this client selects, or `None` when there is none, it is
/// unusable, or the lookup failed.
fn txt_lookup(
    runtime: &dyn Runtime,
    host: &str,
    txt: &TxtState,
) -> BoxFuture<'static, Option<String>> {
    let name = format!("_grpc_config.{host}");
    let mut lookup = runtime.lookup_txt(name.clone());
    let mut timeout = runtime.sleep_until(runtime.now() + TXT_TIMEOUT);
    let (hostname, draw) = (txt.hostname.clone(), txt.draw);
    Box::pin(async move {
        let answer = std::future::poll_fn(|cx| match lookup.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(answer),
            Poll::Pending => timeout.as_mut().poll(cx).map(|()| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the TXT lookup timed out",
                ))
            }),
        })
        .await;
        match answer {
            Ok(records) => {
                txt::select_service_config(&records, &hostname, draw).unwrap_or_else(|status| {
                    tracing::warn!(%name, %status, "ignoring the service config in DNS");
                    None
                })
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "no service config from DNS");
                None
            }
        }
    })
}

/// The DNS server port when a `dns://AUTHORITY/` names none.
const DNS_PORT: u16 = 53;

/// The DNS server a `dns://AUTHORITY/host` target names: an IP address, with port 53 unless
/// given (`dns://8.8.8.8/`, `dns://[2001:db8::53]:5353/`). A name is `INVALID_ARGUMENT`, as
/// in the C-core: resolving the resolver would need a resolver.
fn dns_server(target: &Target) -> Result<Option<SocketAddr>, Status> {
    if target.authority().is_empty() {
        return Ok(None);
    }
    let (host, port) = split_host_port(target.authority(), DNS_PORT)?;
    let ip = host.parse::<IpAddr>().map_err(|_| {
        Status::invalid_argument(format!(
            "dns://{}/: the DNS server must be an IP address",
            target.authority()
        ))
    })?;
    Ok(Some(SocketAddr::new(ip, port)))
}

impl ResolverBuilder for DnsResolverBuilder {
    fn scheme(&self) -> &'static str {
        "dns"
    }

    fn build(
        &self,
        target: &Target,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Box<dyn Resolver>, Status> {
        let (host, port) = split_host_port(target.endpoint(), DEFAULT_PORT)?;
        let server = dns_server(target)?;
        // IP literals need no lookup.
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Box::new(StaticResolver::new(vec![Address::Tcp(
                SocketAddr::new(ip, port),
            )])));
        }
        let txt = self.service_config_from_txt.then(|| TxtState {
            draw: fastrand::u32(0..100),
            hostname: runtime.hostname().into(),
            pending: None,
            config: None,
        });
        Ok(Box::new(DnsResolver {
            host,
            port,
            server,
            runtime,
            lookup: None,
            wanted: true,
            min_interval: self.min_interval,
            backoff: Backoff::new(self.backoff, fastrand::u64(..)),
            not_before: None,
            timer: None,
            txt,
        }))
    }
}

/// A `dns:` resolver: one system lookup per resolution request, paced by the minimum
/// interval, and retried with backoff while it fails.
struct DnsResolver {
    host: String,
    port: u16,
    /// The DNS server a `dns://AUTHORITY/` target names; the system resolver otherwise.
    server: Option<SocketAddr>,
    runtime: Arc<dyn Runtime>,
    lookup: Option<BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>>,
    /// A resolution was asked for (or the last one failed) and has not started.
    wanted: bool,
    min_interval: Duration,
    backoff: Backoff,
    /// The next lookup may not start before this instant.
    not_before: Option<Instant>,
    timer: Option<Pin<Box<dyn Sleep>>>,
    /// The TXT service config lookup, when enabled.
    txt: Option<TxtState>,
}

/// The TXT lookup that runs beside each address lookup.
struct TxtState {
    /// This client's draw for `percentage` (A2), fixed for its life.
    draw: u32,
    /// This machine's name, for `clientHostname`.
    hostname: Arc<str>,
    pending: Option<BoxFuture<'static, Option<String>>>,
    /// What the finished lookup selected, until the update that carries it.
    config: Option<String>,
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("in_flight", &self.lookup.is_some())
            .finish()
    }
}

impl Resolver for DnsResolver {
    fn poll_update(&mut self, cx: &mut Context<'_>) -> Poll<ResolverUpdate> {
        if self.lookup.is_none() {
            if !self.wanted {
                return Poll::Pending;
            }
            let now = self.runtime.now();
            if let Some(at) = self.not_before.filter(|at| *at > now) {
                let runtime = &self.runtime;
                let timer = self.timer.get_or_insert_with(|| runtime.sleep_until(at));
                timer.as_mut().reset(at);
                std::task::ready!(timer.as_mut().poll(cx));
            }
            self.timer = None;
            self.wanted = false;
            self.lookup = Some(match self.server {
                Some(server) => self
                    .runtime
                    .lookup_host_at(server, self.host.clone(), self.port),
                None => self.runtime.lookup_host(self.host.clone(), self.port),
            });
            if let Some(txt) = &mut self.txt {
                txt.pending = Some(txt_lookup(&*self.runtime, &self.host, txt));
                txt.config = None;
            }
        }
        if let Some(txt) = &mut self.txt {
            if let Some(pending) = &mut txt.pending {
                txt.config = std::task::ready!(pending.as_mut().poll(cx));
                txt.pending = None;
            }
        }
        let lookup = self.lookup.as_mut().expect("set above");
        let result = std::task::ready!(lookup.as_mut().poll(cx));
        self.lookup = None;
        let service_config = self.txt.as_mut().and_then(|txt| txt.config.take());
        let addresses = match result {
            Ok(addrs) if addrs.is_empty() => Err(Status::unavailable(format!(
                "DNS resolution of {} returned no addresses",
                self.host
            ))),
            // One endpoint per address, as grpc-go's and the C-core's DNS resolvers give them.
            Ok(addrs) => Ok(addrs.into_iter().map(Endpoint::from).collect()),
            Err(e) => Err(Status::unavailable(format!(
                "DNS resolution of {} failed: {e}",
                self.host
            ))),
        };
        let now = self.runtime.now();
        if addresses.is_ok() {
            self.backoff.reset();
            self.not_before = Some(now + self.min_interval);
        } else {
            // Try again by itself once the backoff allows.
            let (retry_at, _) = self.backoff.start_attempt(now);
            self.not_before = Some(retry_at);
            self.wanted = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(ResolverUpdate {
            endpoints: addresses,
            service_config,
        })
    }

    fn resolve_now(&mut self) {
        self.wanted = true;
    }
}

/// Resolvers whose answer is in the target itself.
#[derive(Debug, Clone, Copy)]
enum StaticResolverBuilder {
    /// `unix:path` / `unix:///abs`.
    Unix,
    /// `unix-abstract:name` (Linux's abstract socket namespace).
    UnixAbstract,
    /// `ipv4:a:p,a:p`.
    Ipv4,
    /// `ipv6:[a]:p,...`.
    Ipv6,
}

impl ResolverBuilder for StaticResolverBuilder {
    fn scheme(&self) -> &'static str {
        match self {
            StaticResolverBuilder::Unix => "unix",
            StaticResolverBuilder::UnixAbstract => "unix-abstract",
            StaticResolverBuilder::Ipv4 => "ipv4",
            StaticResolverBuilder::Ipv6 => "ipv6",
        }
    }

    fn build(&self, target: &Target, _: Arc<dyn Runtime>) -> Result<Box<dyn Resolver>, Status> {
        let addresses = match self {
            StaticResolverBuilder::Unix => {
                if target.endpoint().is_empty() {
                    return Err(Status::invalid_argument("unix: target has no path"));
                }
                vec![Address::Unix(PathBuf::from(target.endpoint()))]
            }
            StaticResolverBuilder::UnixAbstract => {
                if target.endpoint().is_empty() {
                    return Err(Status::invalid_argument(
                        "unix-abstract: target has no name",
                    ));
                }
                vec![Address::UnixAbstract(target.endpoint().as_bytes().to_vec())]
            }
            StaticResolverBuilder::Ipv4 | StaticResolverBuilder::Ipv6 => {
                let want_v4 = matches!(self, StaticResolverBuilder::Ipv4);
                target
                    .endpoint()
                    .split(',')
                    .map(|part| {
                        let (host, port) = split_host_port(part, DEFAULT_PORT)?;
                        match host.parse::<IpAddr>() {
                            Ok(ip) if ip.is_ipv4() == want_v4 => {
                                Ok(Address::Tcp(SocketAddr::new(ip, port)))
                            }
                            _ => Err(Status::invalid_argument(format!(
                                "{part:?} is not an {} address",
                                self.scheme()
                            ))),
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Box::new(StaticResolver::new(addresses)))
    }

    fn default_authority(&self, target: &Target) -> String {
        match self {
            StaticResolverBuilder::Unix | StaticResolverBuilder::UnixAbstract => {
                "localhost".to_owned()
            }
            _ => target
                .endpoint()
                .split(',')
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// `passthrough:host:port`: a single address, looked up by the system resolver at connect
/// time like `dns:` but without re-resolution policy.
#[derive(Debug, Clone, Copy)]
struct PassthroughResolverBuilder;

impl ResolverBuilder for PassthroughResolverBuilder {
    fn scheme(&self) -> &'static str {
        "passthrough"
    }

    fn build(
        &self,
        target: &Target,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Box<dyn Resolver>, Status> {
        DnsResolverBuilder::default().build(target, runtime)
    }
}

/// A resolver with a fixed endpoint list: it reports the list once, and again on each
/// [`resolve_now`](Resolver::resolve_now).
#[derive(Debug, Clone)]
pub struct StaticResolver {
    endpoints: Vec<Endpoint>,
    pending: bool,
}

impl StaticResolver {
    /// A resolver for these addresses, one endpoint each.
    pub fn new(addresses: Vec<Address>) -> StaticResolver {
        StaticResolver::with_endpoints(addresses.into_iter().map(Endpoint::from).collect())
    }

    /// A resolver for these endpoints.
    pub fn with_endpoints(endpoints: Vec<Endpoint>) -> StaticResolver {
        StaticResolver {
            endpoints,
            pending: true,
        }
    }
}

impl Resolver for StaticResolver {
    fn poll_update(&mut self, _: &mut Context<'_>) -> Poll<ResolverUpdate> {
        if !std::mem::take(&mut self.pending) {
            return Poll::Pending;
        }
        Poll::Ready(ResolverUpdate {
            endpoints: Ok(self.endpoints.clone()),
            service_config: None,
        })
    }

    fn resolve_now(&mut self) {
        self.pending = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anygrpc_codec::Code;
    use futures_util::future::poll_fn;

    fn resolve(target: &str) -> Result<Vec<Address>, Status> {
        let registry = Registry::default();
        let (target, builder) = registry.parse_target(target)?;
        let runtime: Arc<dyn Runtime> = Arc::new(anygrpc_rt::AsyncIoRuntime::new());
        let mut resolver = builder.build(&target, runtime)?;
        addresses(async_io::block_on(poll_fn(|cx| resolver.poll_update(cx))))
    }

    /// An update's addresses, one per endpoint.
    fn addresses(update: ResolverUpdate) -> Result<Vec<Address>, Status> {
        let endpoints = update.endpoints?;
        assert!(endpoints.iter().all(|e| e.addresses.len() == 1));
        Ok(endpoints.into_iter().flat_map(|e| e.addresses).collect())
    }

    fn tcp(s: &str) -> Address {
        Address::Tcp(s.parse().unwrap())
    }

    /// The service config in DNS is asked of the runtime, so the simulation answers it: a
    /// choice for this machine's name (the simulation's is `sim`) is selected, and a name
    /// with no TXT records, or with the lookup off, gives none.
    #[test]
    fn the_service_config_in_dns_is_looked_up_through_the_runtime() {
        let sim = anygrpc_rt::sim::Sim::new(7);
        sim.add_host("svc.example", vec![[10, 0, 0, 1].into()]);
        sim.add_host("plain.example", vec![[10, 0, 0, 2].into()]);
        sim.add_txt(
            "_grpc_config.svc.example",
            vec![
                "v=spf1 -all".to_owned(),
                r#"grpc_config=[{"clientHostname":["other"],"serviceConfig":{"a":1}},{"clientHostname":["sim"],"serviceConfig":{"b":2}}]"#.to_owned(),
            ],
        );
        let update = |target: &str, txt: bool| {
            let builder = DnsResolverBuilder::default().service_config_from_txt(txt);
            let target = Target::parse(target).unwrap();
            let mut resolver = builder.build(&target, sim.runtime()).unwrap();
            sim.run(poll_fn(|cx| resolver.poll_update(cx)))
        };
        let found = update("dns:///svc.example:50051", true);
        assert_eq!(
            found.endpoints.clone().unwrap(),
            vec![Endpoint::from(tcp("10.0.0.1:50051"))]
        );
        assert_eq!(found.service_config.as_deref(), Some(r#"{"b":2}"#));
        assert_eq!(
            update("dns:///svc.example:50051", false).service_config,
            None
        );
        let plain = update("dns:///plain.example:50051", true);
        assert_eq!(plain.service_config, None);
        assert_eq!(addresses(plain).unwrap(), vec![tcp("10.0.0.2:50051")]);
    }

    #[test]
    fn literal_targets() {
        assert_eq!(
            resolve("127.0.0.1:50051").unwrap(),
            vec![tcp("127.0.0.1:50051")]
        );
        assert_eq!(
            resolve("dns:///127.0.0.1:80").unwrap(),
            vec![tcp("127.0.0.1:80")]
        );
        assert_eq!(resolve("dns:[::1]").unwrap(), vec![tcp("[::1]:443")]);
        assert_eq!(
            resolve("ipv4:10.0.0.1:1,10.0.0.2").unwrap(),
            vec![tcp("10.0.0.1:1"), tcp("10.0.0.2:443")]
        );
        assert_eq!(
            resolve("ipv6:[::1]:7,::2").unwrap(),
            vec![tcp("[::1]:7"), tcp("[::2]:443")]
        );
        assert_eq!(
            resolve("unix:/tmp/s").unwrap(),
            vec![Address::Unix("/tmp/s".into())]
        );
        assert_eq!(
            resolve("unix:///tmp/s").unwrap(),
            vec![Address::Unix("/tmp/s".into())]
        );
        assert_eq!(
            resolve("unix:rel/s").unwrap(),
            vec![Address::Unix("rel/s".into())]
        );
        assert_eq!(
            resolve("unix-abstract:my%00name").unwrap(),
            vec![Address::UnixAbstract(b"my\0name".to_vec())]
        );
    }

    /// A runtime whose clock the test moves and whose lookups answer from a script.
    #[derive(Debug)]
    struct ScriptedDns {
        now: std::sync::Mutex<Instant>,
        answers: std::sync::Mutex<Vec<std::io::Result<Vec<SocketAddr>>>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    #[derive(Debug)]
    struct VirtualSleep {
        runtime: Arc<ScriptedDns>,
        deadline: Instant,
    }

    impl std::future::Future for VirtualSleep {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if *self.runtime.now.lock().unwrap() >= self.deadline {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Sleep for VirtualSleep {
        fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
            self.deadline = deadline;
        }
    }

    #[derive(Debug)]
    struct Handle(Arc<ScriptedDns>);

    impl Runtime for Handle {
        fn spawn(&self, _: BoxFuture<'static, ()>) {
            unreachable!("the resolver spawns nothing")
        }
        fn now(&self) -> Instant {
            *self.0.now.lock().unwrap()
        }
        fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
            Box::pin(VirtualSleep {
                runtime: self.0.clone(),
                deadline,
            })
        }
        fn connect_tcp(
            &self,
            _: SocketAddr,
            _: anygrpc_rt::TcpOptions,
        ) -> BoxFuture<'static, std::io::Result<anygrpc_rt::BoxIo>> {
            unreachable!()
        }
        fn connect_unix(
            &self,
            _: PathBuf,
        ) -> BoxFuture<'static, std::io::Result<anygrpc_rt::BoxIo>> {
            unreachable!()
        }
        fn listen_tcp(
            &self,
            _: SocketAddr,
            _: anygrpc_rt::TcpOptions,
        ) -> std::io::Result<Box<dyn anygrpc_rt::Listener>> {
            unreachable!()
        }
        fn listen_unix(&self, _: PathBuf) -> std::io::Result<Box<dyn anygrpc_rt::Listener>> {
            unreachable!()
        }
        fn lookup_host(
            &self,
            _: String,
            port: u16,
        ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            self.0
                .lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = self.0.answers.lock().unwrap().remove(0);
            let answer = answer.map(|addrs| {
                addrs
                    .into_iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect()
            });
            Box::pin(async move { answer })
        }
    }

    #[test]
    fn dns_paces_re_resolution_and_backs_off_after_failures() {
        let start = Instant::now();
        let dns = Arc::new(ScriptedDns {
            now: std::sync::Mutex::new(start),
            answers: std::sync::Mutex::new(vec![
                Ok(vec!["10.0.0.1:0".parse().unwrap()]),
                Err(std::io::Error::other("SERVFAIL")),
                Err(std::io::Error::other("SERVFAIL")),
                Ok(vec!["10.0.0.2:0".parse().unwrap()]),
            ]),
            lookups: Default::default(),
        });
        let advance = |by: Duration| *dns.now.lock().unwrap() += by;
        let lookups = || dns.lookups.load(std::sync::atomic::Ordering::Relaxed);
        let backoff = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let target = Target::parse("dns:///backend.test:8080").unwrap();
        let mut resolver = DnsResolverBuilder::default()
            .backoff(backoff)
            .build(&target, Arc::new(Handle(dns.clone())))
            .unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut poll_on = |resolver: &mut Box<dyn Resolver>| match resolver.poll_update(&mut cx) {
            Poll::Ready(update) => Some(addresses(update)),
            Poll::Pending => None,
        };
        assert_eq!(
            poll_on(&mut resolver).unwrap().unwrap(),
            vec![tcp("10.0.0.1:8080")]
        );
        assert!(poll_on(&mut resolver).is_none(), "nothing new until asked");
        resolver.resolve_now();
        let mut poll = || poll_on(&mut resolver);
        assert!(
            poll().is_none(),
            "re-resolution waits out the 30 s minimum interval"
        );
        advance(Duration::from_secs(29));
        assert!(poll().is_none());
        assert_eq!(lookups(), 1);
        advance(Duration::from_secs(1));
        assert_eq!(poll().unwrap().unwrap_err().code(), Code::Unavailable);
        // Failures retry by themselves: after 1 s, then 1.6 s.
        assert!(poll().is_none());
        advance(Duration::from_millis(999));
        assert!(poll().is_none());
        advance(Duration::from_millis(1));
        assert!(poll().unwrap().is_err());
        advance(Duration::from_millis(1599));
        assert!(poll().is_none());
        advance(Duration::from_millis(1));
        assert_eq!(poll().unwrap().unwrap(), vec![tcp("10.0.0.2:8080")]);
        assert_eq!(lookups(), 4);
        assert!(poll().is_none(), "success stops the retries");
    }

    #[test]
    fn localhost_resolves() {
        let addrs = resolve("localhost:1234").unwrap();
        assert!(!addrs.is_empty());
    }

    #[test]
    fn bad_targets_are_invalid_argument() {
        for bad in [
            "ipv4:::1",
            "ipv6:1.2.3.4",
            "ipv4:1.2.3.4:notaport",
            "unix:",
            "unix-abstract:",
            "dns:///host:99999",
        ] {
            assert_eq!(
                resolve(bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
