//! `least_request_experimental` (gRFC A48): round robin's subchannel management, with a
//! picker that samples `choiceCount` READY subchannels at random and sends the call to the
//! one with the fewest calls outstanding (Envoy's "all weights equal" least request).
//!
//! Each subchannel has one counter for its life, shared by every picker that holds it: a pick
//! adds one, and the call's end (any status, or the call dropped) takes it away again.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anygrpc_codec::{Endpoint, Status};

use crate::{
    child::capture,
    policy::{
        CallEnd, CallObserver, ChannelControl, LbPolicy, LbPolicyBuilder, Pick, PickInfo, Picker,
        PolicyConfig, SubchannelId,
    },
    random::Random,
    round_robin::RoundRobin,
    ConnectivityState,
};

/// The policy's name in `loadBalancingConfig`, as grpc-go and grpc-java register it.
pub const NAME: &str = "least_request_experimental";

/// `choiceCount` when the config has none.
pub const DEFAULT_CHOICE_COUNT: usize = 2;
/// Larger `choiceCount`s are taken as this (A48).
pub const MAX_CHOICE_COUNT: usize = 10;

/// Builds [`LeastRequest`] policies. Config: `{"choiceCount": 2}`; below 2 is refused, above
/// 10 is taken as 10.
#[derive(Debug, Clone, Copy)]
pub struct LeastRequestBuilder;

impl LbPolicyBuilder for LeastRequestBuilder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(LeastRequest::new(seed))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        choice_count(config)?;
        Ok(PolicyConfig::new(NAME, config))
    }
}

/// The config's `choiceCount`, clamped to [`MAX_CHOICE_COUNT`].
fn choice_count(config: &serde_json::Value) -> Result<usize, Status> {
    let object = config
        .as_object()
        .ok_or_else(|| Status::invalid_argument("least_request config must be an object"))?;
    let Some(value) = object.get("choiceCount") else {
        return Ok(DEFAULT_CHOICE_COUNT);
    };
    match value.as_u64() {
        Some(n) if n >= 2 => Ok((n as usize).min(MAX_CHOICE_COUNT)),
        _ => Err(Status::invalid_argument(format!(
            "least_request choiceCount must be an integer of at least 2, not {value}"
        ))),
    }
}

/// A subchannel's calls in flight.
#[derive(Debug, Default)]
struct Outstanding(AtomicUsize);

impl CallObserver for Outstanding {
    fn call_ended(&self, _: &CallEnd<'_>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Samples `choice_count` of the READY subchannels; the fewest outstanding calls wins, the
/// first sampled on a tie.
#[derive(Debug)]
struct LeastRequestPicker {
    ready: Vec<(SubchannelId, Arc<Outstanding>)>,
    choice_count: usize,
    random: Random,
}

impl LeastRequestPicker {
    fn sample(&self) -> usize {
        self.random.below(self.ready.len() as u64) as usize
    }
}

impl Picker for LeastRequestPicker {
    fn pick(&self, _: &PickInfo<'_>) -> Pick {
        let mut best = &self.ready[self.sample()];
        let mut fewest = best.1 .0.load(Ordering::Relaxed);
        for _ in 1..self.choice_count {
            let sampled = &self.ready[self.sample()];
            let outstanding = sampled.1 .0.load(Ordering::Relaxed);
            if outstanding < fewest {
                (best, fewest) = (sampled, outstanding);
            }
        }
        best.1 .0.fetch_add(1, Ordering::Relaxed);
        Pick::Observed(best.0, best.1.clone())
    }
}

/// The `least_request_experimental` policy.
#[derive(Debug)]
pub struct LeastRequest {
    rr: RoundRobin,
    rng: fastrand::Rng,
    choice_count: usize,
    outstanding: HashMap<SubchannelId, Arc<Outstanding>>,
}

impl LeastRequest {
    /// A policy with no addresses yet; `seed` seeds its pickers' random samples.
    pub fn new(seed: u64) -> LeastRequest {
        LeastRequest {
            rr: RoundRobin::new(seed),
            rng: fastrand::Rng::with_seed(seed.rotate_left(23)),
            choice_count: DEFAULT_CHOICE_COUNT,
            outstanding: HashMap::new(),
        }
    }

    /// Runs a `round_robin` step; publishes least request's picker where round robin
    /// published a READY one, and round robin's otherwise.
    fn drive(
        &mut self,
        ctl: &mut dyn ChannelControl,
        step: impl FnOnce(&mut RoundRobin, &mut dyn ChannelControl),
    ) {
        let rr = &mut self.rr;
        let captured = capture(ctl, false, |ctl| step(rr, ctl));
        captured.track(&mut self.outstanding, |_| Arc::default());
        match captured.published {
            Some((ConnectivityState::Ready, _)) => self.publish(ctl),
            Some((state, picker)) => ctl.update_picker(state, picker),
            None => {}
        }
    }

    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        let ready: Vec<_> = self
            .rr
            .ready()
            .iter()
            .filter_map(|id| Some((*id, self.outstanding.get(id)?.clone())))
            .collect();
        if ready.is_empty() {
            return;
        }
        ctl.update_picker(
            ConnectivityState::Ready,
            Arc::new(LeastRequestPicker {
                ready,
                choice_count: self.choice_count,
                random: Random::new(self.rng.u64(..)),
            }),
        );
    }
}

impl LbPolicy for LeastRequest {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let choices = config.and_then(|c| choice_count(&c.config).ok());
        let changed = std::mem::replace(
            &mut self.choice_count,
            choices.unwrap_or(DEFAULT_CHOICE_COUNT),
        ) != self.choice_count;
        self.drive(ctl, |rr, ctl| rr.update(endpoints, None, ctl));
        if changed {
            self.publish(ctl);
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
        self.drive(ctl, |rr, ctl| rr.subchannel_state(id, state, status, ctl));
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        self.drive(ctl, |rr, ctl| rr.exit_idle(ctl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{addr, endpoints, Recorder};
    use anygrpc_codec::Code;
    use serde_json::json;
    use std::time::Instant;
    use ConnectivityState::*;

    fn ready_policy(n: u16, config: serde_json::Value) -> (LeastRequest, Recorder) {
        let mut ctl = Recorder::at(Instant::now());
        let mut lr = LeastRequest::new(7);
        let config = LeastRequestBuilder.parse_config(&config).unwrap();
        lr.update(endpoints((1..=n).map(addr)), Some(&config), &mut ctl);
        for id in 1..=u64::from(n) {
            lr.subchannel_state(SubchannelId(id), Ready, None, &mut ctl);
        }
        (lr, ctl)
    }

    fn end(observer: &Arc<dyn CallObserver>, ctl: &Recorder) {
        observer.call_ended(&CallEnd::new(Code::Ok, ctl.now(), None));
    }

    #[test]
    fn choice_count_defaults_to_two_is_capped_at_ten_and_refused_below_two() {
        assert_eq!(choice_count(&json!({})).unwrap(), 2);
        assert_eq!(choice_count(&json!({"choiceCount": 3})).unwrap(), 3);
        assert_eq!(choice_count(&json!({"choiceCount": 100})).unwrap(), 10);
        for bad in [
            json!({"choiceCount": 1}),
            json!({"choiceCount": 0}),
            json!({"choiceCount": "2"}),
            json!({"choiceCount": 2.5}),
            json!([]),
        ] {
            let err = LeastRequestBuilder.parse_config(&bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn the_fewest_outstanding_wins_and_an_end_gives_the_call_back() {
        // With ten samples of three subchannels, the least loaded one is nearly always seen.
        let (_lr, ctl) = ready_policy(3, json!({"choiceCount": 10}));
        let mut open: HashMap<SubchannelId, Vec<Arc<dyn CallObserver>>> = HashMap::new();
        for _ in 0..30 {
            let Pick::Observed(id, observer) = ctl.pick() else {
                panic!("least request observes its picks")
            };
            open.entry(id).or_default().push(observer);
        }
        let loads: Vec<usize> = open.values().map(Vec::len).collect();
        assert!(loads.iter().all(|n| (9..=11).contains(n)), "{loads:?}");
        // Subchannel 2's calls end: it has the fewest, so the next picks go there until it
        // catches up.
        for observer in open.remove(&SubchannelId(2)).unwrap() {
            end(&observer, &ctl);
        }
        for _ in 0..5 {
            let Pick::Observed(id, observer) = ctl.pick() else {
                panic!()
            };
            assert_eq!(id, SubchannelId(2));
            open.entry(id).or_default().push(observer);
        }
        // A dropped call gives its count back too (the channel reports it CANCELLED).
        for observer in open.remove(&SubchannelId(1)).unwrap() {
            observer.call_ended(&CallEnd::new(Code::Cancelled, ctl.now(), None));
        }
        let Pick::Observed(id, _) = ctl.pick() else {
            panic!()
        };
        assert_eq!(id, SubchannelId(1));
    }

    #[test]
    fn two_choices_steer_away_from_a_slow_subchannel() {
        // Subchannel 1 never finishes its calls; the others finish at once. With two random
        // choices, 1 wins only when both samples land on it: about 1 in 9 of the picks.
        let (_lr, ctl) = ready_policy(3, json!({}));
        let mut slow = Vec::new();
        let mut counts = HashMap::new();
        for _ in 0..900 {
            let Pick::Observed(id, observer) = ctl.pick() else {
                panic!()
            };
            *counts.entry(id).or_insert(0) += 1;
            if id == SubchannelId(1) {
                slow.push(observer);
            } else {
                end(&observer, &ctl);
            }
        }
        assert!(counts[&SubchannelId(1)] < 160, "{counts:?}");
        assert!(counts[&SubchannelId(2)] > 300, "{counts:?}");
    }

    #[test]
    fn counters_outlive_pickers_and_subchannels_follow_round_robin() {
        let (mut lr, mut ctl) = ready_policy(2, json!({}));
        let Pick::Observed(first, observer) = ctl.pick() else {
            panic!()
        };
        // A new picker (2 leaves and comes back) keeps the count of the call still open.
        let other = SubchannelId(3 - first.0);
        lr.subchannel_state(other, Idle, None, &mut ctl);
        lr.subchannel_state(other, Ready, None, &mut ctl);
        let mut picks = HashMap::new();
        let mut open = Vec::new();
        for _ in 0..40 {
            let Pick::Observed(id, o) = ctl.pick() else {
                panic!()
            };
            *picks.entry(id).or_insert(0) += 1;
            open.push(o);
        }
        assert!(picks[&other] > picks.get(&first).copied().unwrap_or(0));
        end(&observer, &ctl);
        // Not READY: round robin's own state and picker.
        lr.subchannel_state(SubchannelId(1), TransientFailure, None, &mut ctl);
        lr.subchannel_state(SubchannelId(2), TransientFailure, None, &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        assert!(matches!(ctl.pick(), Pick::Fail(_)));
        lr.update(endpoints([addr(2)]), None, &mut ctl);
        assert_eq!(ctl.removed, vec![SubchannelId(1)]);
        assert!(!lr.outstanding.contains_key(&SubchannelId(1)));
    }
}
