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
//! [`Pick::Observed`]) or, with `enableOobLoadReport`, on an out-of-band stream per
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

use anygrpc_codec::{Endpoint, Status};

use crate::{
    child::capture,
    orca::OrcaLoadReport,
    policy::{
        parse_json_duration, CallEnd, CallObserver, ChannelControl, LbMetric, LbPolicy,
        LbPolicyBuilder, Pick, PickInfo, Picker, PolicyConfig, SubchannelId,
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

impl CallObserver for EndpointWeight {
    fn call_ended(&self, end: &CallEnd<'_>) {
        if let Some(report) = end.load_report() {
            self.load_report(&report, end.now);
        }
    }
}

impl EndpointWeight {
    /// Takes a load report's weight, unless the report gives none.
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
            Pick::Observed(*id, weight.clone())
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
        let rr = &mut self.rr;
        let captured = capture(ctl, false, |ctl| step(rr, ctl));
        let penalty = self.config.error_utilization_penalty;
        captured.track(&mut self.weights, |_| {
            Arc::new(EndpointWeight::new(penalty))
        });
        match captured.published {
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
        endpoints: Vec<Endpoint>,
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
        self.drive(ctl, |rr, ctl| rr.update(endpoints, None, ctl));
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
mod tests;
