//! `outlier_detection_experimental` (gRFC A50): ejects backends whose calls fail more than
//! their peers', whatever policy balances over them.
//!
//! The policy wraps a child policy (`childPolicy`, built from the registry). Its picker
//! counts each picked call's outcome per address. Every `interval` a sweep reads the counts
//! and runs the success-rate and failure-percentage algorithms; an ejected address's
//! subchannels look TRANSIENT_FAILURE to the child, so its picker leaves them out. An
//! ejection lasts `baseEjectionTime` times the number of times the address was ejected
//! (capped by `maxEjectionTime`); each sweep without an ejection lowers that count again.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anygrpc_codec::{Address, Code, Endpoint, Status};

use crate::{
    child::{ChildPolicy, Stepped},
    policy::{
        parse_json_duration, CallEnd, CallObserver, ChannelControl, LbPolicy, LbPolicyBuilder,
        Pick, PickInfo, Picker, PolicyConfig, SubchannelId,
    },
    ConnectivityState, PolicyRegistry,
};

/// The policy's name in `loadBalancingConfig`, as grpc-go, grpc-java and the C-core
/// register it.
pub const NAME: &str = "outlier_detection_experimental";

/// Builds [`OutlierDetection`] policies. The config is grpc-go's JSON form of A50's
/// `OutlierDetectionLoadBalancingConfig`: `interval`, `baseEjectionTime`, `maxEjectionTime`,
/// `maxEjectionPercent`, `successRateEjection` {`stdevFactor`, `enforcementPercentage`,
/// `minimumHosts`, `requestVolume`}, `failurePercentageEjection` {`threshold`,
/// `enforcementPercentage`, `minimumHosts`, `requestVolume`}, and `childPolicy` (required).
#[derive(Debug, Clone, Copy)]
pub struct OutlierDetectionBuilder;

impl LbPolicyBuilder for OutlierDetectionBuilder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(OutlierDetection::new(seed))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        self.parse_config_in(config, &PolicyRegistry::global())
    }

    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<PolicyConfig, Status> {
        let parsed = OdConfig::from_json(config, registry)?;
        Ok(PolicyConfig::new(NAME, config).with_parsed(parsed))
    }
}

/// `successRateEjection`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SuccessRate {
    stdev_factor: u32,
    enforcement_percentage: u32,
    minimum_hosts: u32,
    request_volume: u32,
}

/// `failurePercentageEjection`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FailurePercentage {
    threshold: u32,
    enforcement_percentage: u32,
    minimum_hosts: u32,
    request_volume: u32,
}

/// A parsed config, with its child's builder and config.
#[derive(Debug, Clone)]
struct OdConfig {
    interval: Duration,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u32,
    success_rate: Option<SuccessRate>,
    failure_percentage: Option<FailurePercentage>,
    child: (Arc<dyn LbPolicyBuilder>, PolicyConfig),
}

impl OdConfig {
    fn from_json(
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<OdConfig, Status> {
        let bad =
            |what: String| Status::invalid_argument(format!("outlier_detection config: {what}"));
        let object = config
            .as_object()
            .ok_or_else(|| bad("must be an object".into()))?;
        let duration = |key: &str, default: u64| -> Result<Duration, Status> {
            object
                .get(key)
                .map_or(Ok(Duration::from_secs(default)), |v| {
                    parse_json_duration(v).map_err(|e| bad(format!("{key}: {}", e.message())))
                })
        };
        let number = |object: &serde_json::Map<String, serde_json::Value>,
                      key: &str,
                      default: u32,
                      max: u32|
         -> Result<u32, Status> {
            let Some(value) = object.get(key) else {
                return Ok(default);
            };
            value
                .as_u64()
                .filter(|n| *n <= u64::from(max))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    bad(format!(
                        "{key} must be an integer in [0, {max}], not {value}"
                    ))
                })
        };
        let section =
            |key: &str| -> Result<Option<&serde_json::Map<String, serde_json::Value>>, Status> {
                match object.get(key) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::Object(o)) => Ok(Some(o)),
                    Some(_) => Err(bad(format!("{key} must be an object"))),
                }
            };
        let success_rate = section("successRateEjection")?
            .map(|o| -> Result<SuccessRate, Status> {
                Ok(SuccessRate {
                    stdev_factor: number(o, "stdevFactor", 1900, u32::MAX)?,
                    enforcement_percentage: number(o, "enforcementPercentage", 100, 100)?,
                    minimum_hosts: number(o, "minimumHosts", 5, u32::MAX)?,
                    request_volume: number(o, "requestVolume", 100, u32::MAX)?,
                })
            })
            .transpose()?;
        let failure_percentage = section("failurePercentageEjection")?
            .map(|o| -> Result<FailurePercentage, Status> {
                Ok(FailurePercentage {
                    threshold: number(o, "threshold", 85, 100)?,
                    enforcement_percentage: number(o, "enforcementPercentage", 100, 100)?,
                    minimum_hosts: number(o, "minimumHosts", 5, u32::MAX)?,
                    request_volume: number(o, "requestVolume", 50, u32::MAX)?,
                })
            })
            .transpose()?;
        let child = object
            .get("childPolicy")
            .ok_or_else(|| bad("childPolicy is required".into()))?;
        let child = registry
            .parse_lb_config(child)
            .map_err(|e| bad(format!("childPolicy: {}", e.message())))?;
        Ok(OdConfig {
            interval: duration("interval", 10)?,
            base_ejection_time: duration("baseEjectionTime", 30)?,
            max_ejection_time: duration("maxEjectionTime", 300)?,
            max_ejection_percent: number(object, "maxEjectionPercent", 10, 100)?,
            success_rate,
            failure_percentage,
            child,
        })
    }

    /// Either algorithm is on: calls are counted and the interval timer runs.
    fn counting(&self) -> bool {
        self.success_rate.is_some() || self.failure_percentage.is_some()
    }
}

/// One address's call outcomes since the last sweep.
#[derive(Debug, Default)]
struct CallCounter {
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl CallObserver for CallCounter {
    fn call_ended(&self, end: &CallEnd<'_>) {
        let bucket = match end.code {
            Code::Ok => &self.succeeded,
            _ => &self.failed,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
    }
}

impl CallCounter {
    /// The interval's successes and failures, leaving the counter empty for the next one.
    fn take(&self) -> (u64, u64) {
        (
            self.succeeded.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
        )
    }
}

/// An address of the resolver's list.
#[derive(Debug, Default)]
struct Entry {
    counter: Arc<CallCounter>,
    /// When it was ejected, while it is.
    ejected_at: Option<Instant>,
    /// How many times over its next ejection lasts `baseEjectionTime`.
    multiplier: u32,
    /// The last sweep's successes and failures.
    last: (u64, u64),
}

impl Entry {
    fn volume(&self) -> u64 {
        self.last.0 + self.last.1
    }

    /// The share of the last interval's calls that succeeded (of at least one call).
    fn success_rate(&self) -> f64 {
        self.last.0 as f64 / self.volume() as f64
    }

    /// The percentage of the last interval's calls that failed (of at least one call).
    fn failure_percentage(&self) -> f64 {
        self.last.1 as f64 * 100.0 / self.volume() as f64
    }
}

/// A subchannel of the child's, as the policy tells the child of it.
#[derive(Debug)]
struct Wrapper {
    address: Address,
    /// What the subchannel last reported, passed on while its address is not ejected.
    state: ConnectivityState,
    status: Option<Status>,
    /// The child was told TRANSIENT_FAILURE for it, because its address is ejected.
    ejected: bool,
}

/// The `outlier_detection_experimental` policy.
#[derive(Debug)]
pub struct OutlierDetection {
    seed: u64,
    rng: fastrand::Rng,
    config: Option<OdConfig>,
    child: Option<ChildPolicy>,
    entries: HashMap<Address, Entry>,
    wrappers: HashMap<SubchannelId, Wrapper>,
    /// When the current interval began, while calls are counted.
    timer_start: Option<Instant>,
}

impl OutlierDetection {
    /// A policy with no config yet; `seed` seeds its child and its enforcement draws.
    pub fn new(seed: u64) -> OutlierDetection {
        OutlierDetection {
            seed,
            rng: fastrand::Rng::with_seed(seed.rotate_left(31)),
            config: None,
            child: None,
            entries: HashMap::new(),
            wrappers: HashMap::new(),
            timer_start: None,
        }
    }

    /// The addresses ejected now, in order.
    pub fn ejected(&self) -> Vec<Address> {
        let mut ejected: Vec<Address> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ejected_at.is_some())
            .map(|(a, _)| a.clone())
            .collect();
        ejected.sort_by_key(ToString::to_string);
        ejected
    }

    /// Runs a step of the child's, then tracks the subchannels it made or removed (one made
    /// for an ejected address starts ejected) and republishes its picker, wrapped.
    fn drive(
        &mut self,
        ctl: &mut dyn ChannelControl,
        step: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let stepped = step(child, ctl);
        for id in &stepped.removed {
            self.wrappers.remove(id);
        }
        let mut eject = Vec::new();
        for (id, address) in stepped.created {
            let ejected = self
                .entries
                .get(&address)
                .is_some_and(|e| e.ejected_at.is_some());
            if ejected {
                eject.push(id);
            }
            let wrapper = Wrapper {
                address,
                state: ConnectivityState::Idle,
                status: None,
                ejected: false,
            };
            self.wrappers.insert(id, wrapper);
        }
        let republish = stepped.published;
        for id in eject {
            self.set_ejected(id, true, ctl);
        }
        if republish {
            self.publish(ctl);
        }
    }

    /// Tells the child a subchannel is ejected (TRANSIENT_FAILURE) or back (its real state).
    fn set_ejected(&mut self, id: SubchannelId, ejected: bool, ctl: &mut dyn ChannelControl) {
        let Some(wrapper) = self.wrappers.get_mut(&id) else {
            return;
        };
        if wrapper.ejected == ejected {
            return;
        }
        wrapper.ejected = ejected;
        let (state, status) = if ejected {
            let status = Status::unavailable(format!(
                "{} is ejected by outlier detection",
                wrapper.address
            ));
            (ConnectivityState::TransientFailure, Some(status))
        } else {
            (wrapper.state, wrapper.status.clone())
        };
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if child
            .subchannel_state(id, state, status.as_ref(), ctl)
            .published
        {
            self.publish(ctl);
        }
    }

    /// Publishes the child's state and its picker, counting calls when an algorithm is on.
    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        let Some(child) = &self.child else {
            return;
        };
        let counting = self.config.as_ref().is_some_and(OdConfig::counting);
        if !counting {
            return ctl.update_picker(child.state, child.picker.clone());
        }
        let counters = self
            .wrappers
            .iter()
            .filter_map(|(id, w)| Some((*id, self.entries.get(&w.address)?.counter.clone())))
            .collect();
        ctl.update_picker(
            child.state,
            Arc::new(CountingPicker {
                child: child.picker.clone(),
                counters,
            }),
        );
    }

    fn eject(&mut self, address: &Address, now: Instant, ctl: &mut dyn ChannelControl) {
        let Some(entry) = self.entries.get_mut(address) else {
            return;
        };
        entry.ejected_at = Some(now);
        entry.multiplier += 1;
        for id in self.subchannels_of(address) {
            self.set_ejected(id, true, ctl);
        }
    }

    fn uneject(&mut self, address: &Address, ctl: &mut dyn ChannelControl) {
        if let Some(entry) = self.entries.get_mut(address) {
            entry.ejected_at = None;
        }
        for id in self.subchannels_of(address) {
            self.set_ejected(id, false, ctl);
        }
    }

    fn subchannels_of(&self, address: &Address) -> Vec<SubchannelId> {
        self.wrappers
            .iter()
            .filter(|(_, w)| w.address == *address)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The share of addresses ejected now, in percent, has reached `maxEjectionPercent`.
    fn ejection_limit_reached(&self, config: &OdConfig) -> bool {
        let ejected = self
            .entries
            .values()
            .filter(|e| e.ejected_at.is_some())
            .count();
        ejected as f64 * 100.0 / self.entries.len() as f64 >= f64::from(config.max_ejection_percent)
    }

    /// An outlier is ejected with probability `enforcement` percent.
    fn enforce(&mut self, enforcement: u32) -> bool {
        self.rng.u32(0..100) < enforcement
    }

    /// Ejects, in address order and while under `maxEjectionPercent`, each address not yet
    /// ejected that had at least `volume` calls this interval and that `outlier` picks out,
    /// with probability `enforcement` percent (the last steps of both A50 algorithms).
    fn eject_outliers(
        &mut self,
        config: &OdConfig,
        addresses: &[Address],
        volume: u64,
        enforcement: u32,
        outlier: impl Fn(&Entry) -> bool,
        ctl: &mut dyn ChannelControl,
    ) {
        let now = ctl.now();
        for address in addresses {
            if self.ejection_limit_reached(config) {
                break;
            }
            let entry = &self.entries[address];
            if entry.volume() < volume || entry.ejected_at.is_some() || !outlier(entry) {
                continue;
            }
            if self.enforce(enforcement) {
                self.eject(address, now, ctl);
            }
        }
    }

    /// One interval's sweep (A50's timer steps 1 to 5).
    fn sweep(&mut self, config: &OdConfig, ctl: &mut dyn ChannelControl) {
        let now = ctl.now();
        self.timer_start = Some(now);
        for entry in self.entries.values_mut() {
            entry.last = entry.counter.take();
        }
        let mut addresses: Vec<Address> = self.entries.keys().cloned().collect();
        addresses.sort_by_key(ToString::to_string);
        if let Some(rule) = config.success_rate {
            let volume = u64::from(rule.request_volume);
            let rates: Vec<f64> = addresses
                .iter()
                .map(|a| &self.entries[a])
                .filter(|e| e.volume() >= volume)
                .map(Entry::success_rate)
                .collect();
            if rates.len() >= rule.minimum_hosts as usize && !rates.is_empty() {
                let mean = rates.iter().sum::<f64>() / rates.len() as f64;
                let variance =
                    rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
                let threshold = mean - variance.sqrt() * (f64::from(rule.stdev_factor) / 1000.0);
                let outlier = |e: &Entry| e.success_rate() < threshold;
                let enforcement = rule.enforcement_percentage;
                self.eject_outliers(config, &addresses, volume, enforcement, outlier, ctl);
            }
        }
        if let Some(rule) = config.failure_percentage {
            let volume = u64::from(rule.request_volume);
            let hosts = self
                .entries
                .values()
                .filter(|e| e.volume() >= volume)
                .count();
            if hosts >= rule.minimum_hosts as usize {
                let outlier = |e: &Entry| e.failure_percentage() > f64::from(rule.threshold);
                let enforcement = rule.enforcement_percentage;
                self.eject_outliers(config, &addresses, volume, enforcement, outlier, ctl);
            }
        }
        let longest = config.base_ejection_time.max(config.max_ejection_time);
        for address in &addresses {
            let entry = self.entries.get_mut(address).expect("listed");
            match entry.ejected_at {
                None => entry.multiplier = entry.multiplier.saturating_sub(1),
                Some(at) => {
                    let lasts = config
                        .base_ejection_time
                        .saturating_mul(entry.multiplier)
                        .min(longest);
                    if now >= at + lasts {
                        self.uneject(address, ctl);
                    }
                }
            }
        }
    }

    /// When the next sweep is due, while calls are counted.
    fn next_sweep(&self) -> Option<Instant> {
        let config = self.config.as_ref()?;
        Some(self.timer_start? + config.interval)
    }
}

impl LbPolicy for OutlierDetection {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(config) = config.and_then(|c| c.parsed::<OdConfig>()).cloned() else {
            return self.resolver_error(
                Status::internal("outlier_detection was given no parsed config"),
                ctl,
            );
        };
        // The address map follows the resolver; the child makes the subchannels.
        let listed: std::collections::HashSet<&Address> =
            endpoints.iter().flat_map(|e| &e.addresses).collect();
        self.entries.retain(|a, _| listed.contains(a));
        for address in listed {
            self.entries.entry(address.clone()).or_default();
        }
        if config.counting() {
            if self.timer_start.is_none() {
                self.timer_start = Some(ctl.now());
                for entry in self.entries.values() {
                    entry.counter.take();
                }
            }
        } else {
            self.timer_start = None;
            for address in &self.ejected() {
                self.uneject(address, ctl);
            }
            for entry in self.entries.values_mut() {
                entry.multiplier = 0;
            }
        }
        let (builder, child_config) = config.child.clone();
        if self
            .child
            .as_ref()
            .is_none_or(|c| c.name() != builder.name())
        {
            if let Some(old) = self.child.take() {
                old.shut_down(ctl);
            }
            self.wrappers.clear();
            self.seed = self.seed.wrapping_add(1);
            self.child = Some(ChildPolicy::new(builder, self.seed));
        }
        self.config = Some(config);
        self.drive(ctl, |child, ctl| {
            child.update(endpoints, &child_config, ctl)
        });
        // A change of counting applies to the picker at once.
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.child.is_none() {
            return ctl.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(crate::FixedPicker(Pick::Fail(status))),
            );
        }
        self.drive(ctl, |child, ctl| child.resolver_error(status, ctl));
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(wrapper) = self.wrappers.get_mut(&id) else {
            return;
        };
        wrapper.state = state;
        wrapper.status = status.cloned();
        if wrapper.ejected {
            return;
        }
        self.drive(ctl, |child, ctl| {
            child.subchannel_state(id, state, status, ctl)
        });
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        self.drive(ctl, |child, ctl| child.exit_idle(ctl));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let child = self.child.as_ref().and_then(ChildPolicy::poll_timeout);
        match (self.next_sweep(), child) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        if self.next_sweep().is_some_and(|at| at <= ctl.now()) {
            let config = self.config.clone().expect("a sweep has a config");
            self.sweep(&config, ctl);
        }
        self.drive(ctl, |child, ctl| child.handle_timeout(ctl));
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &crate::OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive(ctl, |child, ctl| child.load_report(id, report, ctl));
    }
}

/// The child's picker, with each picked call counted for its address.
#[derive(Debug)]
struct CountingPicker {
    child: Arc<dyn Picker>,
    counters: HashMap<SubchannelId, Arc<CallCounter>>,
}

impl Picker for CountingPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        let pick = self.child.pick(call);
        match pick.subchannel().and_then(|id| self.counters.get(&id)) {
            Some(counter) => pick.observed_by(counter.clone()),
            None => pick,
        }
    }
}

#[cfg(test)]
mod tests;
