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

use anygrpc_codec::Address;
use anygrpc_codec::Status;

use crate::{orca::OrcaLoadReport, ConnectivityState};

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
    /// The resolver produced addresses (the policy's parsed config comes with them).
    fn update(
        &mut self,
        addresses: Vec<Address>,
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

/// Receives the per-call load reports (`endpoint-load-metrics-bin`) of calls sent on a
/// [`Pick::Reporting`] pick.
pub trait LoadReportSink: Send + Sync + fmt::Debug {
    /// A call ended with this report in its trailers, at `now`.
    fn load_report(&self, report: &OrcaLoadReport, now: Instant);
}

/// Chooses a subchannel for each call.
pub trait Picker: Send + Sync + fmt::Debug {
    /// Picks for one call.
    fn pick(&self, call: &PickInfo<'_>) -> Pick;
}

/// What a picker knows of a call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PickInfo<'a> {
    /// The method path, `/package.Service/Method`.
    pub path: &'a str,
}

impl<'a> PickInfo<'a> {
    /// The pick information of a call to `path`.
    pub fn new(path: &'a str) -> PickInfo<'a> {
        PickInfo { path }
    }
}

/// A picker's answer.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Send the call on this (READY) subchannel.
    Ready(SubchannelId),
    /// Send the call on this subchannel and hand the load report in its trailers, if any, to
    /// the sink.
    Reporting(SubchannelId, Arc<dyn LoadReportSink>),
    /// Wait for the next picker (the channel is connecting).
    Queue,
    /// Fail the call, unless it is wait-for-ready, in which case it waits for the next picker.
    Fail(Status),
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
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The policy's name.
    pub name: String,
    /// Its configuration object, already validated by the policy's builder.
    pub config: serde_json::Value,
}

impl PolicyConfig {
    /// The config object of policy `name`, once the policy's builder has checked it.
    pub fn new(name: &str, config: &serde_json::Value) -> PolicyConfig {
        PolicyConfig {
            name: name.to_owned(),
            config: config.clone(),
        }
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
            self.picker
                .as_ref()
                .expect("a picker was published")
                .pick(&PickInfo::new("/s/m"))
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
