//! Load-balancing policies: the [`LbPolicy`] and [`Picker`] traits, the channel's side of the
//! conversation ([`ChannelControl`]), and what a registry of policies by name holds
//! ([`LbPolicyBuilder`], [`PolicyConfig`]).
//!
//! A policy owns no sockets and reads no clock. The channel tells it what the resolver found
//! and how each subchannel's connectivity changed, passing a [`ChannelControl`] through which
//! the policy creates, connects and removes subchannels and publishes a [`Picker`] with the
//! channel's aggregate state. Calls never talk to the policy: they ask the latest picker,
//! which is immutable and shared, so picking takes no lock the policy holds.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Address, Code, Endpoint, Status};

use crate::{orca::OrcaLoadReport, ConnectivityState, PolicyRegistry};

/// Names a subchannel the channel created for a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubchannelId(pub u64);

/// What a policy may ask of its channel. Every request takes effect after the policy's
/// method returns; state changes it causes come back as later calls.
pub trait ChannelControl {
    /// The current time (virtual in tests).
    fn now(&self) -> Instant;

    /// Creates an IDLE subchannel for `address`.
    fn new_subchannel(&mut self, address: &Address) -> SubchannelId;

    /// Shuts a subchannel down; no more state changes are reported for it.
    fn remove_subchannel(&mut self, id: SubchannelId);

    /// Asks an IDLE subchannel to connect (ignored in any other state).
    fn connect(&mut self, id: SubchannelId);

    /// Publishes the channel's state and the picker calls use from now on.
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>);

    /// Asks the resolver to resolve again (connections failed or were lost).
    fn request_resolution(&mut self);

    /// Gates a subchannel's READY on the channel's client-side health check (gRFC A17), when
    /// the channel has one configured. Off until a policy turns it on: `pick_first` leaves it
    /// off, `round_robin` and `weighted_round_robin` turn it on.
    fn enable_health_check(&mut self, id: SubchannelId) {
        let _ = id;
    }

    /// Streams out-of-band ORCA load reports (gRFC A51) from a subchannel while it is READY,
    /// asking for one per `interval`; `None` stops. Reports arrive at
    /// [`LbPolicy::load_report`].
    fn set_load_reporting(&mut self, id: SubchannelId, interval: Option<Duration>) {
        let _ = (id, interval);
    }

    /// Records a measurement of the policy's for the channel's metrics (gRFC A78); ignored
    /// unless the channel has metrics.
    fn record(&mut self, metric: LbMetric) {
        let _ = metric;
    }
}

/// What a policy measures about itself: the instruments of gRFC A78, each labelled with the
/// channel's target when the channel records it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum LbMetric {
    /// `pick_first`: a subchannel connected (`grpc.lb.pick_first.connection_attempts_succeeded`).
    PickFirstConnected,
    /// `pick_first`: a connection attempt failed
    /// (`grpc.lb.pick_first.connection_attempts_failed`).
    PickFirstConnectFailed,
    /// `pick_first`: the selected subchannel lost its connection
    /// (`grpc.lb.pick_first.disconnections`).
    PickFirstDisconnected,
    /// `weighted_round_robin` rebuilt its scheduler with fewer than two usable weights, so it
    /// picks round-robin until the next update (`grpc.lb.wrr.rr_fallback`).
    WrrRoundRobinFallback,
    /// Endpoints of one scheduler update with no usable weight yet: no report, or still in
    /// the blackout period (`grpc.lb.wrr.endpoint_weight_not_yet_usable`).
    WrrWeightsNotYetUsable(u64),
    /// Endpoints of one scheduler update whose last report is older than the expiration
    /// period (`grpc.lb.wrr.endpoint_weight_stale`).
    WrrWeightsStale(u64),
    /// One endpoint's weight at a scheduler update, 0 when unusable
    /// (`grpc.lb.wrr.endpoint_weights`).
    WrrEndpointWeight(f64),
}

/// A load-balancing policy: turns addresses and subchannel states into a picker.
pub trait LbPolicy: Send + fmt::Debug {
    /// The resolver produced endpoints (the policy's parsed config comes with them).
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    );

    /// The resolver failed. With no usable subchannel the policy should fail calls with it.
    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl);

    /// A subchannel's connectivity changed.
    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    );

    /// The channel is IDLE and a call or the application wants it to connect.
    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl);

    /// When the policy next wants [`handle_timeout`](Self::handle_timeout).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Time passed `poll_timeout`.
    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        let _ = ctl;
    }

    /// An out-of-band load report arrived from a subchannel (see
    /// [`ChannelControl::set_load_reporting`]).
    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        let _ = (id, report, ctl);
    }
}

/// Hears how each call sent on a [`Pick::Observed`] pick ended: what least-request counts,
/// what outlier detection scores, where weighted round robin reads per-call load reports.
pub trait CallObserver: Send + Sync + fmt::Debug {
    /// The call ended. Told exactly once per pick; a pick whose call was dropped, or whose
    /// stream never opened, ends `CANCELLED`.
    fn call_ended(&self, end: &CallEnd<'_>);
}

/// How a picked call ended.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallEnd<'a> {
    /// The call's status code.
    pub code: Code,
    /// When it ended.
    pub now: Instant,
    /// Its trailers, when the server sent any.
    pub trailers: Option<&'a http::HeaderMap>,
}

impl<'a> CallEnd<'a> {
    /// The end of a call with `code` at `now`, with the server's `trailers` if any.
    pub fn new(code: Code, now: Instant, trailers: Option<&'a http::HeaderMap>) -> CallEnd<'a> {
        CallEnd {
            code,
            now,
            trailers,
        }
    }

    /// The ORCA load report the backend put in the trailers (`endpoint-load-metrics-bin`),
    /// decoded anew on each call: only observers that want it pay for it.
    pub fn load_report(&self) -> Option<OrcaLoadReport> {
        let value = self.trailers?.get(crate::orca::LOAD_REPORT_TRAILER)?;
        let bytes = anygrpc_codec::metadata::decode_binary(value.as_bytes()).ok()?;
        crate::orca::decode_report(&bytes)
    }
}

/// Two observers of one pick, told in order: a parent policy's wrapped around its child's.
#[derive(Debug)]
struct BothObservers(Arc<dyn CallObserver>, Arc<dyn CallObserver>);

impl CallObserver for BothObservers {
    fn call_ended(&self, end: &CallEnd<'_>) {
        self.0.call_ended(end);
        self.1.call_ended(end);
    }
}

/// Chooses a subchannel for each call.
pub trait Picker: Send + Sync + fmt::Debug {
    /// Picks for one call.
    fn pick(&self, call: &PickInfo<'_>) -> Pick;
}

/// What a picker knows of a call, and what it may ask of the channel while it picks.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct PickInfo<'a> {
    /// The method path, `/package.Service/Method`.
    pub path: &'a str,
    /// The call's request headers: its metadata, and gRPC's own headers.
    pub metadata: &'a http::HeaderMap,
    /// A hash for the call chosen by whatever routed it (xDS's route hash policies, or a
    /// parent policy), which `ring_hash` uses when it has no `requestHashHeader`.
    pub request_hash: Option<u64>,
    work: &'a (dyn Fn() + Sync),
}

fn no_work() {}

impl<'a> PickInfo<'a> {
    /// The pick information of a call to `path` with these request headers.
    pub fn new(path: &'a str, metadata: &'a http::HeaderMap) -> PickInfo<'a> {
        PickInfo {
            path,
            metadata,
            request_hash: None,
            work: &no_work,
        }
    }

    /// The same call, with `work` carrying out [`request_work`](Self::request_work) (the
    /// channel gives every pick one).
    pub fn with_work(self, work: &'a (dyn Fn() + Sync)) -> PickInfo<'a> {
        PickInfo { work, ..self }
    }

    /// The same call, with a routing hash (see [`request_hash`](Self::request_hash)).
    pub fn with_request_hash(self, hash: u64) -> PickInfo<'a> {
        PickInfo {
            request_hash: Some(hash),
            ..self
        }
    }

    /// Asks the channel to run the policy's [`handle_timeout`](LbPolicy::handle_timeout) soon,
    /// on the control plane: a picker that needs its policy to act (ring_hash connecting an
    /// endpoint a call hashed to) leaves the request where the policy reads it, makes
    /// [`poll_timeout`](LbPolicy::poll_timeout) answer a time already past, and calls this.
    pub fn request_work(&self) {
        (self.work)();
    }
}

impl fmt::Debug for PickInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickInfo")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .field("request_hash", &self.request_hash)
            .finish_non_exhaustive()
    }
}

/// A picker's answer.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Send the call on this (READY) subchannel.
    Ready(SubchannelId),
    /// Send the call on this subchannel and tell the observer how it ended.
    Observed(SubchannelId, Arc<dyn CallObserver>),
    /// Wait for the next picker (the channel is connecting).
    Queue,
    /// Fail the call, unless it is wait-for-ready, in which case it waits for the next picker.
    Fail(Status),
}

impl Pick {
    /// The status a failing pick fails the call with.
    pub fn failure(&self) -> Option<Status> {
        match self {
            Pick::Fail(status) => Some(status.clone()),
            _ => None,
        }
    }

    /// The subchannel picked, if the call is to be sent.
    pub fn subchannel(&self) -> Option<SubchannelId> {
        match self {
            Pick::Ready(id) | Pick::Observed(id, _) => Some(*id),
            Pick::Queue | Pick::Fail(_) => None,
        }
    }

    /// This pick with `observer` told of the call's end too, after any observer it has (a
    /// parent policy watching the picks of its child's picker).
    pub fn observed_by(self, observer: Arc<dyn CallObserver>) -> Pick {
        match self {
            Pick::Ready(id) => Pick::Observed(id, observer),
            Pick::Observed(id, first) => {
                Pick::Observed(id, Arc::new(BothObservers(first, observer)))
            }
            other => other,
        }
    }
}

/// The addresses of `endpoints`, in order: how a policy that balances over addresses rather
/// than endpoints takes an endpoint list (each address becomes a backend of its own).
pub fn flatten_endpoints(endpoints: Vec<Endpoint>) -> Vec<Address> {
    endpoints.into_iter().flat_map(|e| e.addresses).collect()
}

/// Drops repeated addresses, keeping the first of each, so a policy makes one subchannel per
/// address. An empty result is the error a policy reports as a resolver failure.
pub fn unique_addresses(mut addresses: Vec<Address>) -> Result<Vec<Address>, Status> {
    let mut seen = std::collections::HashSet::new();
    addresses.retain(|a| seen.insert(a.clone()));
    if addresses.is_empty() {
        return Err(Status::unavailable("the resolver returned no addresses"));
    }
    Ok(addresses)
}

/// Parses a protobuf JSON duration (`"10s"`, `"0.250s"`), as service configs write them.
pub fn parse_json_duration(value: &serde_json::Value) -> Result<Duration, Status> {
    let bad = || Status::invalid_argument(format!("invalid duration {value}"));
    let text = value.as_str().ok_or_else(bad)?;
    let number = text.strip_suffix('s').ok_or_else(bad)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let seconds: u64 = whole.parse().map_err(|_| bad())?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u32>().map_err(|_| bad())? * 10u32.pow(9 - fraction.len() as u32)
    };
    Ok(Duration::new(seconds, nanos))
}

/// A picker that answers every call the same way.
#[derive(Debug, Clone)]
pub struct FixedPicker(pub Pick);

impl Picker for FixedPicker {
    fn pick(&self, _: &PickInfo<'_>) -> Pick {
        self.0.clone()
    }
}

/// A policy's parsed `loadBalancingConfig` entry.
#[derive(Clone)]
pub struct PolicyConfig {
    /// The policy's name.
    pub name: String,
    /// Its configuration object, already validated by the policy's builder.
    pub config: serde_json::Value,
    /// What the builder made of it, for the policy to use as is: a parent policy's child
    /// builders and configs, found in the registry the config was parsed against.
    parsed: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl PolicyConfig {
    /// The config object of policy `name`, once the policy's builder has checked it.
    pub fn new(name: &str, config: &serde_json::Value) -> PolicyConfig {
        PolicyConfig {
            name: name.to_owned(),
            config: config.clone(),
            parsed: None,
        }
    }

    /// The same config, carrying the builder's parsed form of it.
    pub fn with_parsed(self, parsed: impl std::any::Any + Send + Sync) -> PolicyConfig {
        PolicyConfig {
            parsed: Some(Arc::new(parsed)),
            ..self
        }
    }

    /// The parsed form [`with_parsed`](Self::with_parsed) attached, if it is a `T`.
    pub fn parsed<T: std::any::Any>(&self) -> Option<&T> {
        self.parsed.as_deref()?.downcast_ref()
    }
}

/// Two configs are the same when they name the same policy with the same JSON.
impl PartialEq for PolicyConfig {
    fn eq(&self, other: &PolicyConfig) -> bool {
        self.name == other.name && self.config == other.config
    }
}

impl fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds one policy, by name.
pub trait LbPolicyBuilder: Send + Sync + fmt::Debug + 'static {
    /// The name in `loadBalancingConfig`, e.g. `round_robin`.
    fn name(&self) -> &'static str;

    /// A new policy instance for one channel.
    fn build(&self, seed: u64) -> Box<dyn LbPolicy>;

    /// Checks this policy's config object; an invalid one is `INVALID_ARGUMENT`.
    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        match config {
            serde_json::Value::Object(_) => Ok(PolicyConfig::new(self.name(), config)),
            _ => Err(Status::invalid_argument(format!(
                "{} config must be an object",
                self.name()
            ))),
        }
    }

    /// [`parse_config`](Self::parse_config) for a channel whose policies come from
    /// `registry`: a parent of child policies overrides this to find its children there.
    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<PolicyConfig, Status> {
        let _ = registry;
        self.parse_config(config)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A recording [`ChannelControl`] for policy tests on virtual time.
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        pub(crate) now: Option<Instant>,
        pub(crate) next: u64,
        pub(crate) created: Vec<(SubchannelId, Address)>,
        pub(crate) removed: Vec<SubchannelId>,
        pub(crate) connects: Vec<SubchannelId>,
        pub(crate) state: Option<ConnectivityState>,
        pub(crate) picker: Option<Arc<dyn Picker>>,
        pub(crate) resolutions: usize,
        pub(crate) health_checked: Vec<SubchannelId>,
        pub(crate) load_reporting: HashMap<SubchannelId, Duration>,
        pub(crate) metrics: Vec<LbMetric>,
        /// Pickers asked for the policy's timer ([`PickInfo::request_work`]).
        pub(crate) work_requested: std::sync::atomic::AtomicBool,
    }

    impl Recorder {
        pub(crate) fn at(now: Instant) -> Recorder {
            Recorder {
                now: Some(now),
                ..Recorder::default()
            }
        }

        pub(crate) fn advance(&mut self, by: Duration) {
            self.now = Some(self.now() + by);
        }

        pub(crate) fn pick(&self) -> Pick {
            self.pick_with(&http::HeaderMap::new())
        }

        /// Picks for a call with these request headers.
        pub(crate) fn pick_with(&self, metadata: &http::HeaderMap) -> Pick {
            let work = || {
                self.work_requested
                    .store(true, std::sync::atomic::Ordering::Relaxed)
            };
            let call = PickInfo::new("/s/m", metadata).with_work(&work);
            self.picker
                .as_ref()
                .expect("a picker was published")
                .pick(&call)
        }

        /// Whether a picker asked for the policy's timer since the last call, which runs it as
        /// the channel would.
        pub(crate) fn take_work(&mut self, policy: &mut dyn LbPolicy) -> bool {
            let asked = self
                .work_requested
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            if asked && policy.poll_timeout().is_some_and(|at| at <= self.now()) {
                policy.handle_timeout(self);
            }
            asked
        }

        pub(crate) fn take_connects(&mut self) -> Vec<SubchannelId> {
            std::mem::take(&mut self.connects)
        }
    }

    impl ChannelControl for Recorder {
        fn now(&self) -> Instant {
            self.now.expect("the test set a time")
        }

        fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
            self.next += 1;
            let id = SubchannelId(self.next);
            self.created.push((id, address.clone()));
            id
        }

        fn remove_subchannel(&mut self, id: SubchannelId) {
            self.removed.push(id);
        }

        fn connect(&mut self, id: SubchannelId) {
            self.connects.push(id);
        }

        fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
            self.state = Some(state);
            self.picker = Some(picker);
        }

        fn request_resolution(&mut self) {
            self.resolutions += 1;
        }

        fn enable_health_check(&mut self, id: SubchannelId) {
            self.health_checked.push(id);
        }

        fn set_load_reporting(&mut self, id: SubchannelId, interval: Option<Duration>) {
            match interval {
                Some(interval) => self.load_reporting.insert(id, interval),
                None => self.load_reporting.remove(&id),
            };
        }

        fn record(&mut self, metric: LbMetric) {
            self.metrics.push(metric);
        }
    }

    /// One endpoint per address.
    pub(crate) fn endpoints(addresses: impl IntoIterator<Item = Address>) -> Vec<Endpoint> {
        addresses.into_iter().map(Endpoint::from).collect()
    }

    pub(crate) fn addr(port: u16) -> Address {
        Address::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_durations() {
        assert_eq!(
            parse_json_duration(&json!("10s")).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_json_duration(&json!("0.250s")).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_json_duration(&json!("1.000000001s")).unwrap(),
            Duration::new(1, 1)
        );
        for bad in [
            json!("10"),
            json!("-1s"),
            json!("1.s5"),
            json!(".5s"),
            json!(10),
            json!("1.0000000001s"),
        ] {
            assert!(parse_json_duration(&bad).is_err(), "{bad}");
        }
    }
}
