//! `weighted_round_robin` (gRFC A58): round robin whose turns are proportional to each
//! backend's weight, computed from the ORCA load reports (gRFC A51) the backends send.
//!
//! A backend's weight is `qps / (utilization + eps / qps × errorUtilizationPenalty)`, where
//! utilization is the report's application utilization, or its CPU utilization when that is
//! zero; reports with no qps or no utilization are ignored. A weight counts only after the
//! backend has reported for `blackoutPeriod` (so one lucky report does not attract a burst)
//! and stops counting when no report has come for `weightExpirationPeriod`. Backends without
//! a usable weight get the mean of the others; with fewer than two usable weights every
//! backend is weighted equally. Every `weightUpdatePeriod` a new picker is published with a
//! fresh scheduler.
//!
//! Reports come with each call (`endpoint-load-metrics-bin` trailers, through
//! [`Pick::Reporting`]) or, with `enableOobLoadReport`, on an out-of-band stream per
//! subchannel every `oobReportingPeriod`.
//!
//! Connectivity (which subchannels exist, the channel's aggregate state) is exactly
//! `round_robin`'s: this policy drives a [`RoundRobin`] and replaces its READY pickers.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anygrpc_codec::Address;
use anygrpc_codec::Status;

use crate::{
    orca::OrcaLoadReport,
    policy::{
        parse_json_duration, ChannelControl, LbMetric, LbPolicy, LbPolicyBuilder, LoadReportSink,
        Pick, PickInfo, Picker, PolicyConfig, SubchannelId,
    },
    round_robin::RoundRobin,
    ConnectivityState,
};

/// The policy's settings (`loadBalancingConfig` entry `weighted_round_robin`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrrConfig {
    /// Stream load reports out of band instead of reading them from each call's trailers.
    /// Default false.
    pub enable_oob_load_report: bool,
    /// The out-of-band reporting interval asked for. Default 10 s.
    pub oob_reporting_period: Duration,
    /// How long a backend must report before its weight is used. Default 10 s.
    pub blackout_period: Duration,
    /// A weight not refreshed for this long is no longer used. Default 3 min.
    pub weight_expiration_period: Duration,
    /// How often the scheduler is rebuilt from the weights. Default 1 s, at least 100 ms.
    pub weight_update_period: Duration,
    /// How much errors count against a backend. Default 1.0.
    pub error_utilization_penalty: f64,
}

impl Default for WrrConfig {
    fn default() -> WrrConfig {
        WrrConfig {
            enable_oob_load_report: false,
            oob_reporting_period: Duration::from_secs(10),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
        }
    }
}

/// The least `weightUpdatePeriod`.
const MIN_WEIGHT_UPDATE_PERIOD: Duration = Duration::from_millis(100);

impl WrrConfig {
    /// Parses the JSON config object; unknown fields are ignored, bad values are
    /// `INVALID_ARGUMENT`.
    pub fn from_json(config: &serde_json::Value) -> Result<WrrConfig, Status> {
        let object = config.as_object().ok_or_else(|| {
            Status::invalid_argument("weighted_round_robin config must be an object")
        })?;
        let mut out = WrrConfig::default();
        let duration = |key: &str, into: &mut Duration| -> Result<(), Status> {
            if let Some(value) = object.get(key) {
                *into = parse_json_duration(value).map_err(|e| {
                    Status::invalid_argument(format!("weighted_round_robin {key}: {}", e.message()))
                })?;
            }
            Ok(())
        };
        duration("oobReportingPeriod", &mut out.oob_reporting_period)?;
        duration("blackoutPeriod", &mut out.blackout_period)?;
        duration("weightExpirationPeriod", &mut out.weight_expiration_period)?;
        duration("weightUpdatePeriod", &mut out.weight_update_period)?;
        out.weight_update_period = out.weight_update_period.max(MIN_WEIGHT_UPDATE_PERIOD);
        if let Some(value) = object.get("enableOobLoadReport") {
            out.enable_oob_load_report = value.as_bool().ok_or_else(|| {
                Status::invalid_argument(
                    "weighted_round_robin enableOobLoadReport must be a boolean",
                )
            })?;
        }
        if let Some(value) = object.get("errorUtilizationPenalty") {
            out.error_utilization_penalty = value
                .as_f64()
                .filter(|p| *p >= 0.0 && p.is_finite())
                .ok_or_else(|| {
                Status::invalid_argument(
                    "weighted_round_robin errorUtilizationPenalty must be a number >= 0",
                )
            })?;
        }
        Ok(out)
    }
}

/// Builds [`WeightedRoundRobin`] policies.
#[derive(Debug, Clone, Copy)]
pub struct WeightedRoundRobinBuilder;

impl LbPolicyBuilder for WeightedRoundRobinBuilder {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(WeightedRoundRobin::new(seed))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        WrrConfig::from_json(config)?;
        Ok(PolicyConfig::new(self.name(), config))
    }
}

/// One backend's weight, fed by its load reports (from calls, or out of band).
#[derive(Debug)]
pub struct EndpointWeight {
    state: Mutex<WeightState>,
}

#[derive(Debug, Clone, Copy)]
struct WeightState {
    weight: f64,
    /// When reports started arriving (reset when the weight expires or the backend reconnects).
    non_empty_since: Option<Instant>,
    last_updated: Option<Instant>,
    error_utilization_penalty: f64,
}

impl EndpointWeight {
    fn new(error_utilization_penalty: f64) -> EndpointWeight {
        EndpointWeight {
            state: Mutex::new(WeightState {
                weight: 0.0,
                non_empty_since: None,
                last_updated: None,
                error_utilization_penalty,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WeightState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets past reports: the blackout period starts again with the next one.
    fn reset(&self) {
        let mut state = self.lock();
        state.non_empty_since = None;
        state.last_updated = None;
    }

    fn set_penalty(&self, penalty: f64) {
        self.lock().error_utilization_penalty = penalty;
    }

    /// The weight to schedule with at `now`.
    pub fn weight(&self, now: Instant, config: &WrrConfig) -> Weight {
        let mut state = self.lock();
        let Some(last_updated) = state.last_updated else {
            return Weight::NotYetUsable;
        };
        if now.saturating_duration_since(last_updated) >= config.weight_expiration_period {
            state.non_empty_since = None;
            return Weight::Stale;
        }
        let since = state.non_empty_since.unwrap_or(now);
        if !config.blackout_period.is_zero()
            && (state.non_empty_since.is_none()
                || now.saturating_duration_since(since) < config.blackout_period)
        {
            return Weight::NotYetUsable;
        }
        Weight::Usable(state.weight)
    }
}

/// An endpoint's weight when the scheduler is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weight {
    /// From reports that are past the blackout period and not expired.
    Usable(f64),
    /// No report yet, or the reports are still in the blackout period.
    NotYetUsable,
    /// The last report is older than the expiration period.
    Stale,
}

impl Weight {
    /// The weight to schedule with: 0 unless usable.
    pub fn value(self) -> f64 {
        match self {
            Weight::Usable(weight) => weight,
            Weight::NotYetUsable | Weight::Stale => 0.0,
        }
    }
}

/// A58's weight of one report, or `None` if it carries no qps or no utilization (or values so
/// extreme that the weight is not a positive finite number).
pub fn report_weight(report: &OrcaLoadReport, error_utilization_penalty: f64) -> Option<f64> {
    let utilization = if report.application_utilization > 0.0 {
        report.application_utilization
    } else {
        report.cpu_utilization
    };
    let qps = report.rps_fractional;
    if !(utilization > 0.0 && qps > 0.0 && utilization.is_finite() && qps.is_finite()) {
        return None;
    }
    let error_rate = if report.eps.is_finite() && report.eps > 0.0 {
        report.eps / qps
    } else {
        0.0
    };
    let weight = qps / (utilization + error_rate * error_utilization_penalty);
    (weight.is_finite() && weight > 0.0).then_some(weight)
}

impl LoadReportSink for EndpointWeight {
    fn load_report(&self, report: &OrcaLoadReport, now: Instant) {
        let mut state = self.lock();
        let Some(weight) = report_weight(report, state.error_utilization_penalty) else {
            return;
        };
        state.weight = weight;
        state.last_updated = Some(now);
        state.non_empty_since.get_or_insert(now);
    }
}

/// The largest scaled weight of the stride scheduler.
const MAX_SCALED_WEIGHT: u64 = u16::MAX as u64;
/// No backend's share falls below this fraction of the heaviest one's.
const MIN_WEIGHT_RATIO: f64 = 0.01;

/// A58's static stride scheduler: each backend gets turns in proportion to its scaled weight,
/// chosen by a shared atomic sequence without locks.
#[derive(Debug)]
pub struct StrideScheduler {
    /// Scaled weights in 1..=65535; all equal means plain round robin.
    weights: Vec<u16>,
    sequence: AtomicU64,
}

impl StrideScheduler {
    /// A scheduler over `weights` (0 = unknown), starting its sequence at `start`.
    pub fn new(weights: &[f64], start: u64) -> StrideScheduler {
        let known: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
        let scaled = if known.len() < 2 {
            vec![MAX_SCALED_WEIGHT as u16; weights.len()]
        } else {
            let mean = known.iter().sum::<f64>() / known.len() as f64;
            let max = known.iter().copied().fold(0.0, f64::max);
            weights
                .iter()
                .map(|&w| {
                    let w = if w > 0.0 { w } else { mean };
                    let ratio = (w / max).max(MIN_WEIGHT_RATIO);
                    (ratio * MAX_SCALED_WEIGHT as f64)
                        .round()
                        .clamp(1.0, MAX_SCALED_WEIGHT as f64) as u16
                })
                .collect()
        };
        StrideScheduler {
            weights: scaled,
            sequence: AtomicU64::new(start),
        }
    }

    /// The scaled weights (for tests and diagnostics).
    pub fn scaled_weights(&self) -> &[u16] {
        &self.weights
    }

    /// The index of the next backend.
    pub fn next_index(&self) -> usize {
        let n = self.weights.len() as u64;
        loop {
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            let index = sequence % n;
            let generation = sequence / n;
            let weight = u64::from(self.weights[index as usize]);
            let offset = MAX_SCALED_WEIGHT / 2 * index;
            if (weight.wrapping_mul(generation).wrapping_add(offset)) % MAX_SCALED_WEIGHT
                >= MAX_SCALED_WEIGHT - weight
            {
                return index as usize;
            }
        }
    }
}

/// Picks READY subchannels with a [`StrideScheduler`].
#[derive(Debug)]
struct WrrPicker {
    ready: Vec<(SubchannelId, Arc<EndpointWeight>)>,
    scheduler: StrideScheduler,
    per_call_reports: bool,
}

impl Picker for WrrPicker {
    fn pick(&self, _: &PickInfo<'_>) -> Pick {
        let (id, weight) = &self.ready[self.scheduler.next_index()];
        if self.per_call_reports {
            Pick::Reporting(*id, weight.clone())
        } else {
            Pick::Ready(*id)
        }
    }
}

/// The `weighted_round_robin` policy.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    rr: RoundRobin,
    rng: fastrand::Rng,
    config: WrrConfig,
    weights: HashMap<SubchannelId, Arc<EndpointWeight>>,
    /// When the scheduler is next rebuilt (while READY).
    next_update: Option<Instant>,
}

/// Runs `round_robin` under WRR, capturing what it publishes and which subchannels it makes.
struct Capture<'a> {
    inner: &'a mut dyn ChannelControl,
    published: Option<(ConnectivityState, Arc<dyn Picker>)>,
    created: Vec<SubchannelId>,
    removed: Vec<SubchannelId>,
}

impl ChannelControl for Capture<'_> {
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
        let id = self.inner.new_subchannel(address);
        self.created.push(id);
        id
    }
    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.removed.push(id);
        self.inner.remove_subchannel(id);
    }
    fn connect(&mut self, id: SubchannelId) {
        self.inner.connect(id);
    }
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.published = Some((state, picker));
    }
    fn request_resolution(&mut self) {
        self.inner.request_resolution();
    }
    fn enable_health_check(&mut self, id: SubchannelId) {
        self.inner.enable_health_check(id);
    }
    fn set_load_reporting(&mut self, id: SubchannelId, interval: Option<Duration>) {
        self.inner.set_load_reporting(id, interval);
    }
    fn record(&mut self, metric: LbMetric) {
        self.inner.record(metric);
    }
}

impl WeightedRoundRobin {
    /// A policy with no addresses yet; `seed` randomizes each scheduler's starting point.
    pub fn new(seed: u64) -> WeightedRoundRobin {
        WeightedRoundRobin {
            rr: RoundRobin::new(seed),
            rng: fastrand::Rng::with_seed(seed.rotate_left(17)),
            config: WrrConfig::default(),
            weights: HashMap::new(),
            next_update: None,
        }
    }

    fn oob_interval(&self) -> Option<Duration> {
        self.config
            .enable_oob_load_report
            .then_some(self.config.oob_reporting_period)
    }

    /// Runs a `round_robin` step, then publishes: WRR's picker when READY, `round_robin`'s
    /// otherwise.
    fn drive(
        &mut self,
        ctl: &mut dyn ChannelControl,
        step: impl FnOnce(&mut RoundRobin, &mut dyn ChannelControl),
    ) {
        let mut capture = Capture {
            inner: ctl,
            published: None,
            created: Vec::new(),
            removed: Vec::new(),
        };
        step(&mut self.rr, &mut capture);
        let Capture {
            published,
            created,
            removed,
            ..
        } = capture;
        for id in created {
            let weight = EndpointWeight::new(self.config.error_utilization_penalty);
            self.weights.insert(id, Arc::new(weight));
        }
        for id in removed {
            self.weights.remove(&id);
        }
        match published {
            Some((ConnectivityState::Ready, _)) => self.publish_weighted(ctl),
            Some((state, picker)) => {
                self.next_update = None;
                ctl.update_picker(state, picker);
            }
            None => {}
        }
    }

    /// Publishes a picker over the READY subchannels with weights as of now, and schedules
    /// the next rebuild.
    fn publish_weighted(&mut self, ctl: &mut dyn ChannelControl) {
        let now = ctl.now();
        let ready: Vec<(SubchannelId, Arc<EndpointWeight>)> = self
            .rr
            .ready()
            .iter()
            .filter_map(|id| self.weights.get(id).map(|w| (*id, w.clone())))
            .collect();
        if ready.is_empty() {
            return;
        }
        let weights: Vec<Weight> = ready
            .iter()
            .map(|(_, w)| w.weight(now, &self.config))
            .collect();
        let count = |kind: Weight| weights.iter().filter(|w| **w == kind).count() as u64;
        let (not_yet_usable, stale) = (count(Weight::NotYetUsable), count(Weight::Stale));
        if weights.len() as u64 - not_yet_usable - stale < 2 {
            ctl.record(LbMetric::WrrRoundRobinFallback);
        }
        ctl.record(LbMetric::WrrWeightsNotYetUsable(not_yet_usable));
        ctl.record(LbMetric::WrrWeightsStale(stale));
        let weights: Vec<f64> = weights.into_iter().map(Weight::value).collect();
        for weight in &weights {
            ctl.record(LbMetric::WrrEndpointWeight(*weight));
        }
        let scheduler = StrideScheduler::new(&weights, self.rng.u64(..));
        self.next_update = (ready.len() > 1).then(|| now + self.config.weight_update_period);
        ctl.update_picker(
            ConnectivityState::Ready,
            Arc::new(WrrPicker {
                ready,
                scheduler,
                per_call_reports: !self.config.enable_oob_load_report,
            }),
        );
    }
}

impl LbPolicy for WeightedRoundRobin {
    fn update(
        &mut self,
        addresses: Vec<Address>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let config = config
            .and_then(|c| WrrConfig::from_json(&c.config).ok())
            .unwrap_or_default();
        let old_oob = self.oob_interval();
        self.config = config;
        for weight in self.weights.values() {
            weight.set_penalty(config.error_utilization_penalty);
        }
        if self.oob_interval() != old_oob {
            let interval = self.oob_interval();
            for id in self.rr.ready() {
                ctl.set_load_reporting(*id, interval);
            }
        }
        self.drive(ctl, |rr, ctl| rr.update(addresses, None, ctl));
        // A new config (penalty, periods, reporting mode) applies to the picker at once.
        if !self.rr.ready().is_empty() {
            self.publish_weighted(ctl);
        }
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        self.drive(ctl, |rr, ctl| rr.resolver_error(status, ctl));
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        if !self.weights.contains_key(&id) {
            return;
        }
        if state == ConnectivityState::Ready && !self.rr.ready().contains(&id) {
            // A reconnected backend starts over: its old load says nothing about the new
            // connection.
            self.weights[&id].reset();
            if let Some(interval) = self.oob_interval() {
                ctl.set_load_reporting(id, Some(interval));
            }
        }
        self.drive(ctl, |rr, ctl| rr.subchannel_state(id, state, status, ctl));
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        self.drive(ctl, |rr, ctl| rr.exit_idle(ctl));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_update
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        match self.next_update {
            Some(at) if at <= ctl.now() => self.publish_weighted(ctl),
            _ => {}
        }
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        if let Some(weight) = self.weights.get(&id) {
            weight.load_report(report, ctl.now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{addr, Recorder};
    use serde_json::json;
    use ConnectivityState::*;

    fn report(qps: f64, cpu: f64, app: f64, eps: f64) -> OrcaLoadReport {
        OrcaLoadReport {
            rps_fractional: qps,
            cpu_utilization: cpu,
            application_utilization: app,
            eps,
            ..OrcaLoadReport::default()
        }
    }

    #[test]
    fn weight_follows_the_a58_formula() {
        // qps / (utilization + eps/qps * penalty)
        let w = report_weight(&report(100.0, 0.5, 0.0, 10.0), 1.0).unwrap();
        assert!((w - 100.0 / (0.5 + 0.1)).abs() < 1e-9, "{w}");
        let w = report_weight(&report(100.0, 0.5, 0.0, 10.0), 2.5).unwrap();
        assert!((w - 100.0 / (0.5 + 0.25)).abs() < 1e-9, "{w}");
        // Application utilization wins over CPU when set.
        let w = report_weight(&report(100.0, 0.5, 0.25, 0.0), 1.0).unwrap();
        assert!((w - 400.0).abs() < 1e-9, "{w}");
        // No qps or no utilization: ignored.
        assert_eq!(report_weight(&report(0.0, 0.5, 0.0, 0.0), 1.0), None);
        assert_eq!(report_weight(&report(10.0, 0.0, 0.0, 0.0), 1.0), None);
        assert_eq!(report_weight(&report(f64::NAN, 0.5, 0.0, 0.0), 1.0), None);
    }

    #[test]
    fn weights_wait_out_the_blackout_and_expire() {
        let config = WrrConfig::default();
        let t0 = Instant::now();
        let weight = EndpointWeight::new(1.0);
        assert_eq!(
            weight.weight(t0, &config),
            Weight::NotYetUsable,
            "no report"
        );
        weight.load_report(&report(100.0, 0.5, 0.0, 0.0), t0);
        let blackout = weight.weight(t0 + Duration::from_secs(9), &config);
        assert_eq!(blackout, Weight::NotYetUsable);
        assert_eq!(blackout.value(), 0.0);
        weight.load_report(&report(100.0, 0.5, 0.0, 0.0), t0 + Duration::from_secs(9));
        assert_eq!(
            weight.weight(t0 + Duration::from_secs(10), &config),
            Weight::Usable(200.0)
        );
        // Three minutes after the last report the weight expires, and the blackout restarts.
        let expired = t0 + Duration::from_secs(9 + 180);
        assert_eq!(weight.weight(expired, &config), Weight::Stale);
        assert_eq!(weight.weight(expired, &config).value(), 0.0);
        weight.load_report(&report(100.0, 0.25, 0.0, 0.0), expired);
        assert_eq!(
            weight.weight(expired + Duration::from_secs(5), &config),
            Weight::NotYetUsable
        );
        assert_eq!(
            weight.weight(expired + Duration::from_secs(10), &config),
            Weight::Usable(400.0)
        );
    }

    fn shares(scheduler: &StrideScheduler, picks: usize) -> Vec<f64> {
        let mut counts = vec![0usize; scheduler.scaled_weights().len()];
        for _ in 0..picks {
            counts[scheduler.next_index()] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn the_scheduler_gives_turns_in_proportion_to_weight() {
        let scheduler = StrideScheduler::new(&[100.0, 200.0, 300.0], 12345);
        let got = shares(&scheduler, 60_000);
        for (got, want) in got.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((got - want).abs() < 0.005, "{got} vs {want}");
        }
        // Unknown weights take the mean of the known ones.
        let scheduler = StrideScheduler::new(&[100.0, 0.0, 300.0], 7);
        assert_eq!(scheduler.scaled_weights(), &[21845, 43690, 65535]);
        // Fewer than two known weights: plain round robin.
        let scheduler = StrideScheduler::new(&[0.0, 5.0, 0.0], 0);
        let got = shares(&scheduler, 3000);
        assert!(got.iter().all(|s| (s - 1.0 / 3.0).abs() < 1e-9), "{got:?}");
        // A tiny weight still gets a share, at least 1% of the heaviest.
        let scheduler = StrideScheduler::new(&[1e-9, 1.0], 0);
        assert_eq!(scheduler.scaled_weights()[0], 655);
    }

    fn pick_counts(ctl: &Recorder, n: usize) -> HashMap<SubchannelId, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            match ctl.pick() {
                Pick::Reporting(id, _) | Pick::Ready(id) => *counts.entry(id).or_default() += 1,
                other => panic!("expected a ready pick, got {other:?}"),
            }
        }
        counts
    }

    /// Sends one pick's worth of load report through the sink the picker returned.
    fn report_through_picks(ctl: &Recorder, loads: &HashMap<SubchannelId, OrcaLoadReport>) {
        let mut seen = 0;
        while seen < 50 {
            let Pick::Reporting(id, sink) = ctl.pick() else {
                panic!("per-call reporting picks")
            };
            sink.load_report(&loads[&id], ctl.now());
            seen += 1;
        }
    }

    #[test]
    fn per_call_reports_steer_traffic_after_the_blackout() {
        let mut ctl = Recorder::at(Instant::now());
        let mut wrr = WeightedRoundRobin::new(1);
        let config = WeightedRoundRobinBuilder
            .parse_config(&json!({"blackoutPeriod": "1s", "weightUpdatePeriod": "0.5s"}))
            .unwrap();
        wrr.update(vec![addr(1), addr(2), addr(3)], Some(&config), &mut ctl);
        assert_eq!(ctl.health_checked.len(), 3, "health checks gate READY");
        for id in 1..=3 {
            wrr.subchannel_state(SubchannelId(id), Ready, None, &mut ctl);
        }
        assert_eq!(ctl.state, Some(Ready));
        let first = pick_counts(&ctl, 3000);
        assert!(
            first.values().all(|&n| n == 1000),
            "equal before any report: {first:?}"
        );

        // Backend 3 serves the same qps at a third of the utilization of backend 1.
        let loads: HashMap<SubchannelId, OrcaLoadReport> = [
            (SubchannelId(1), report(100.0, 0.6, 0.0, 0.0)),
            (SubchannelId(2), report(100.0, 0.3, 0.0, 0.0)),
            (SubchannelId(3), report(100.0, 0.2, 0.0, 0.0)),
        ]
        .into();
        report_through_picks(&ctl, &loads);
        assert_eq!(
            wrr.poll_timeout(),
            Some(ctl.now() + Duration::from_millis(500))
        );
        ctl.advance(Duration::from_millis(500));
        ctl.metrics.clear();
        wrr.handle_timeout(&mut ctl);
        let during_blackout = pick_counts(&ctl, 3000);
        assert!(
            during_blackout.values().all(|&n| n == 1000),
            "{during_blackout:?}"
        );
        assert_eq!(
            ctl.metrics,
            [
                LbMetric::WrrRoundRobinFallback,
                LbMetric::WrrWeightsNotYetUsable(3),
                LbMetric::WrrWeightsStale(0),
                LbMetric::WrrEndpointWeight(0.0),
                LbMetric::WrrEndpointWeight(0.0),
                LbMetric::WrrEndpointWeight(0.0),
            ],
            "every weight is still in its blackout"
        );

        ctl.advance(Duration::from_millis(600));
        report_through_picks(&ctl, &loads);
        ctl.metrics.clear();
        wrr.handle_timeout(&mut ctl);
        assert_eq!(
            ctl.metrics[..2],
            [
                LbMetric::WrrWeightsNotYetUsable(0),
                LbMetric::WrrWeightsStale(0)
            ],
            "no fallback: {:?}",
            ctl.metrics
        );
        let mut weights: Vec<f64> = ctl.metrics[2..]
            .iter()
            .map(|m| match m {
                LbMetric::WrrEndpointWeight(w) => w.round(),
                other => panic!("{other:?}"),
            })
            .collect();
        weights.sort_by(f64::total_cmp);
        assert_eq!(weights, [167.0, 333.0, 500.0]);
        let counts = pick_counts(&ctl, 6000);
        // Weights 166.7 : 333.3 : 500, i.e. 1 : 2 : 3.
        for (id, want) in [(1, 1000.0), (2, 2000.0), (3, 3000.0)] {
            let got = counts[&SubchannelId(id)] as f64;
            assert!((got - want).abs() / want < 0.01, "{id}: {got} vs {want}");
        }

        // A backend that reconnects starts its blackout again.
        wrr.subchannel_state(SubchannelId(3), Idle, None, &mut ctl);
        wrr.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
        let counts = pick_counts(&ctl, 6000);
        let share3 = counts[&SubchannelId(3)] as f64 / 6000.0;
        // Backend 3 now takes the mean of 1 and 2 (250 of 333.3 scaled) out of 166.7+333.3+250.
        assert!((share3 - 250.0 / 750.0).abs() < 0.01, "{share3}");
    }

    #[test]
    fn out_of_band_reports_come_from_subchannel_streams() {
        let mut ctl = Recorder::at(Instant::now());
        let mut wrr = WeightedRoundRobin::new(2);
        let config = WeightedRoundRobinBuilder
            .parse_config(&json!({
                "enableOobLoadReport": true,
                "oobReportingPeriod": "2s",
                "blackoutPeriod": "0s"
            }))
            .unwrap();
        wrr.update(vec![addr(1), addr(2)], Some(&config), &mut ctl);
        wrr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        wrr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        assert_eq!(ctl.load_reporting[&SubchannelId(1)], Duration::from_secs(2));
        assert!(matches!(ctl.pick(), Pick::Ready(_)), "no per-call tracking");
        wrr.load_report(SubchannelId(1), &report(10.0, 0.9, 0.0, 0.0), &mut ctl);
        wrr.load_report(SubchannelId(2), &report(10.0, 0.1, 0.0, 0.0), &mut ctl);
        ctl.advance(Duration::from_secs(1));
        wrr.handle_timeout(&mut ctl);
        let counts = pick_counts(&ctl, 10_000);
        let share2 = counts[&SubchannelId(2)] as f64 / 10_000.0;
        assert!((share2 - 0.9).abs() < 0.01, "{share2}");

        // Turning OOB off stops the streams and goes back to per-call reports.
        let plain = WeightedRoundRobinBuilder.parse_config(&json!({})).unwrap();
        wrr.update(vec![addr(1), addr(2)], Some(&plain), &mut ctl);
        assert!(ctl.load_reporting.is_empty());
        ctl.advance(Duration::from_secs(1));
        wrr.handle_timeout(&mut ctl);
        assert!(matches!(ctl.pick(), Pick::Reporting(..)));
    }

    #[test]
    fn config_is_validated() {
        let config = WrrConfig::from_json(&json!({
            "weightUpdatePeriod": "0.01s",
            "errorUtilizationPenalty": 0.5,
            "weightExpirationPeriod": "60s"
        }))
        .unwrap();
        assert_eq!(config.weight_update_period, MIN_WEIGHT_UPDATE_PERIOD);
        assert_eq!(config.error_utilization_penalty, 0.5);
        assert_eq!(config.weight_expiration_period, Duration::from_secs(60));
        for bad in [
            json!({"errorUtilizationPenalty": -1}),
            json!({"blackoutPeriod": 10}),
            json!({"enableOobLoadReport": "yes"}),
            json!([]),
        ] {
            assert!(WrrConfig::from_json(&bad).is_err(), "{bad}");
        }
    }
}
