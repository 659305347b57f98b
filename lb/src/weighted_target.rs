//! `weighted_target_experimental` (gRFC A28): splits calls over child policies in proportion
//! to their weights, such as xDS localities.
//!
//! Each target is a child policy built from the registry; it gets the endpoints whose path
//! starts with its name ([`Endpoint::path`]). The policy is READY while any target is, and a
//! call picks a READY target at random with probability weight / (sum of the READY
//! targets' weights), then that target's picker picks. A target the config drops is kept,
//! connected but unused, for 15 minutes, so a config that brings it back finds it warm.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Endpoint, Status};

use crate::{
    child::{endpoints_under, ChildPolicy, Stepped},
    policy::{
        ChannelControl, FixedPicker, LbPolicy, LbPolicyBuilder, Pick, PickInfo, Picker,
        PolicyConfig, SubchannelId,
    },
    random::Random,
    ConnectivityState, OrcaLoadReport, PolicyRegistry,
};

/// The policy's name in `loadBalancingConfig`, as grpc-go and the C-core register it.
pub const NAME: &str = "weighted_target_experimental";

/// How long a target the config dropped is kept before it is removed (the C-core's and
/// grpc-go's child retention).
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// Builds [`WeightedTarget`] policies. Config: `{"targets": {"<name>": {"weight": 3,
/// "childPolicy": [{"round_robin": {}}]}}}`; `weight` and `childPolicy` are required.
#[derive(Debug, Clone, Copy)]
pub struct WeightedTargetBuilder;

impl LbPolicyBuilder for WeightedTargetBuilder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(WeightedTarget::new(seed))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        self.parse_config_in(config, &PolicyRegistry::global())
    }

    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<PolicyConfig, Status> {
        let targets = parse_targets(config, registry)?;
        Ok(PolicyConfig::new(NAME, config).with_parsed(targets))
    }
}

/// One target of the config: its weight, and its child's builder and config.
#[derive(Debug, Clone)]
struct TargetConfig {
    weight: u32,
    child: (Arc<dyn LbPolicyBuilder>, PolicyConfig),
}

type Targets = BTreeMap<String, TargetConfig>;

fn parse_targets(config: &serde_json::Value, registry: &PolicyRegistry) -> Result<Targets, Status> {
    let bad = |what: String| Status::invalid_argument(format!("weighted_target config: {what}"));
    let targets = config
        .get("targets")
        .and_then(|t| t.as_object())
        .ok_or_else(|| bad("targets must be an object".into()))?;
    let mut parsed = BTreeMap::new();
    for (name, target) in targets {
        let weight = target
            .get("weight")
            .and_then(|w| w.as_u64())
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| bad(format!("target {name:?} needs an integer weight")))?;
        let child = target
            .get("childPolicy")
            .ok_or_else(|| bad(format!("target {name:?} needs a childPolicy")))?;
        let child = registry
            .parse_lb_config(child)
            .map_err(|e| bad(format!("target {name:?}: {}", e.message())))?;
        parsed.insert(name.clone(), TargetConfig { weight, child });
    }
    Ok(parsed)
}

/// A running target.
#[derive(Debug)]
struct Target {
    child: ChildPolicy,
    weight: u32,
    /// When it is removed, while the config has dropped it.
    remove_at: Option<Instant>,
}

/// The `weighted_target_experimental` policy.
#[derive(Debug)]
pub struct WeightedTarget {
    seed: u64,
    rng: fastrand::Rng,
    targets: BTreeMap<String, Target>,
}

impl WeightedTarget {
    /// A policy with no targets yet; `seed` seeds its children and its pickers.
    pub fn new(seed: u64) -> WeightedTarget {
        WeightedTarget {
            seed,
            rng: fastrand::Rng::with_seed(seed.rotate_left(13)),
            targets: BTreeMap::new(),
        }
    }

    /// Publishes the aggregate: READY if any target is, else CONNECTING, else IDLE, else
    /// TRANSIENT_FAILURE; picks go to the targets in that state, by weight.
    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        use ConnectivityState::*;
        let active = || self.targets.values().filter(|t| t.remove_at.is_none());
        let any = |s| active().any(|t| t.child.state == s);
        let state = [Ready, Connecting, Idle]
            .into_iter()
            .find(|s| any(*s))
            .unwrap_or(TransientFailure);
        let picker: Arc<dyn Picker> = match state {
            Ready | TransientFailure => {
                let mut total = 0u64;
                let weighted: Vec<(u64, Arc<dyn Picker>)> = active()
                    .filter(|t| t.child.state == state && t.weight > 0)
                    .map(|t| {
                        total += u64::from(t.weight);
                        (total, t.child.picker.clone())
                    })
                    .collect();
                if weighted.is_empty() {
                    let status = match active().next().is_none() {
                        true => Status::unavailable("weighted_target has no targets"),
                        false => {
                            Status::unavailable("weighted_target: every usable target has weight 0")
                        }
                    };
                    Arc::new(FixedPicker(Pick::Fail(status)))
                } else {
                    Arc::new(WeightedPicker {
                        weighted,
                        total,
                        random: Random::new(self.rng.u64(..)),
                    })
                }
            }
            _ => Arc::new(FixedPicker(Pick::Queue)),
        };
        ctl.update_picker(state, picker);
    }

    /// Runs `f` on the target owning subchannel `id`; publishes if it did.
    fn drive_owner(
        &mut self,
        id: SubchannelId,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let Some(target) = self.targets.values_mut().find(|t| t.child.owns(id)) else {
            return;
        };
        if f(&mut target.child, ctl).published {
            self.publish(ctl);
        }
    }

    /// Runs `f` on every target; publishes if any did.
    fn drive_all(
        &mut self,
        ctl: &mut dyn ChannelControl,
        mut f: impl FnMut(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let mut published = false;
        for target in self.targets.values_mut() {
            published |= f(&mut target.child, ctl).published;
        }
        if published {
            self.publish(ctl);
        }
    }
}

impl LbPolicy for WeightedTarget {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(targets) = config.and_then(|c| c.parsed::<Targets>()).cloned() else {
            return self.resolver_error(
                Status::internal("weighted_target was given no parsed config"),
                ctl,
            );
        };
        let now = ctl.now();
        for (name, target) in &mut self.targets {
            if !targets.contains_key(name) {
                target.remove_at.get_or_insert(now + RETENTION);
            }
        }
        for (name, config) in targets {
            let (builder, child_config) = config.child;
            let replace = self
                .targets
                .get(&name)
                .is_none_or(|t| t.child.name() != builder.name());
            if replace {
                self.seed = self.seed.wrapping_add(1);
                let child = ChildPolicy::new(builder, self.seed);
                if let Some(old) = self.targets.insert(
                    name.clone(),
                    Target {
                        child,
                        weight: config.weight,
                        remove_at: None,
                    },
                ) {
                    old.child.shut_down(ctl);
                }
            }
            let target = self.targets.get_mut(&name).expect("inserted");
            target.weight = config.weight;
            target.remove_at = None;
            target
                .child
                .update(endpoints_under(&name, &endpoints), &child_config, ctl);
        }
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.targets.is_empty() {
            return ctl.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FixedPicker(Pick::Fail(status))),
            );
        }
        self.drive_all(ctl, |child, ctl| child.resolver_error(status.clone(), ctl));
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_owner(id, ctl, |child, ctl| {
            child.subchannel_state(id, state, status, ctl)
        });
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        self.drive_all(ctl, |child, ctl| child.exit_idle(ctl));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .flat_map(|t| [t.remove_at, t.child.poll_timeout()])
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        let now = ctl.now();
        let expired: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| t.remove_at.is_some_and(|at| at <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let removed = !expired.is_empty();
        for name in expired {
            if let Some(target) = self.targets.remove(&name) {
                target.child.shut_down(ctl);
            }
        }
        self.drive_all(ctl, |child, ctl| child.handle_timeout(ctl));
        if removed {
            self.publish(ctl);
        }
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_owner(id, ctl, |child, ctl| child.load_report(id, report, ctl));
    }
}

/// Picks a target at random by weight, then asks its picker.
#[derive(Debug)]
struct WeightedPicker {
    /// Each target's picker, after the running sum of the weights up to and including it.
    weighted: Vec<(u64, Arc<dyn Picker>)>,
    total: u64,
    random: Random,
}

impl Picker for WeightedPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        let draw = self.random.below(self.total);
        let at = self.weighted.partition_point(|(sum, _)| *sum <= draw);
        self.weighted[at].1.pick(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{addr, Recorder};
    use anygrpc_codec::Code;
    use serde_json::json;
    use std::collections::HashMap;
    use ConnectivityState::*;

    fn config(weights: &[(&str, u32)]) -> PolicyConfig {
        let targets: serde_json::Map<String, serde_json::Value> = weights
            .iter()
            .map(|(name, weight)| {
                (
                    name.to_string(),
                    json!({"weight": weight, "childPolicy": [{"round_robin": {}}]}),
                )
            })
            .collect();
        WeightedTargetBuilder
            .parse_config_in(&json!({ "targets": targets }), &PolicyRegistry::default())
            .unwrap()
    }

    /// Two endpoints under each of `names`, ports 10 * i + 1 and 10 * i + 2.
    fn endpoints(names: &[&str]) -> Vec<Endpoint> {
        names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                let base = 10 * i as u16;
                [1, 2].map(|p| Endpoint::from(addr(base + p)).with_path([*name]))
            })
            .collect()
    }

    #[test]
    fn config_needs_targets_with_weights_and_children() {
        let parse = |c: serde_json::Value| {
            WeightedTargetBuilder.parse_config_in(&c, &PolicyRegistry::default())
        };
        assert!(parse(json!({"targets": {}})).is_ok());
        for bad in [
            json!({}),
            json!({"targets": {"a": {"childPolicy": [{"round_robin": {}}]}}}),
            json!({"targets": {"a": {"weight": -1, "childPolicy": [{"round_robin": {}}]}}}),
            json!({"targets": {"a": {"weight": 1}}}),
            json!({"targets": {"a": {"weight": 1, "childPolicy": [{"nope": {}}]}}}),
        ] {
            assert_eq!(
                parse(bad.clone()).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn picks_follow_the_weights_of_the_ready_targets() {
        let mut ctl = Recorder::at(Instant::now());
        let mut wt = WeightedTarget::new(5);
        wt.update(
            endpoints(&["a", "b", "c"]),
            Some(&config(&[("a", 1), ("b", 3), ("c", 0)])),
            &mut ctl,
        );
        assert_eq!(
            ctl.created.len(),
            6,
            "each target's round_robin makes its own two"
        );
        assert_eq!(ctl.state, Some(Connecting));
        let owner: HashMap<SubchannelId, u16> = ctl
            .created
            .iter()
            .map(|(id, a)| {
                (
                    *id,
                    a.to_string()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse::<u16>()
                        .unwrap()
                        / 10,
                )
            })
            .collect();
        for id in 1..=6 {
            wt.subchannel_state(SubchannelId(id), Ready, None, &mut ctl);
        }
        assert_eq!(ctl.state, Some(Ready));
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            let id = ctl.pick().subchannel().unwrap();
            counts[usize::from(owner[&id])] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets nothing");
        let share = counts[1] as f64 / 4000.0;
        assert!((0.72..0.78).contains(&share), "{counts:?}");
        // Target b fails: everything goes to a.
        let err = Status::unavailable("down");
        for (id, target) in &owner {
            if *target == 1 {
                wt.subchannel_state(*id, TransientFailure, Some(&err), &mut ctl);
            }
        }
        assert_eq!(ctl.state, Some(Ready));
        assert!((0..100).all(|_| owner[&ctl.pick().subchannel().unwrap()] == 0));
    }

    #[test]
    fn the_aggregate_state_and_target_changes() {
        let mut ctl = Recorder::at(Instant::now());
        let mut wt = WeightedTarget::new(5);
        wt.update(
            endpoints(&["a", "b"]),
            Some(&config(&[("a", 1), ("b", 1)])),
            &mut ctl,
        );
        let err = Status::unavailable("refused");
        for id in 1..=3 {
            wt.subchannel_state(SubchannelId(id), TransientFailure, Some(&err), &mut ctl);
        }
        assert_eq!(ctl.state, Some(Connecting), "b still connects");
        wt.subchannel_state(SubchannelId(4), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        assert!(matches!(ctl.pick(), Pick::Fail(s) if s.message() == "refused"));
        // Dropping target b keeps it, unused, for the retention; bringing it back reuses it.
        wt.update(endpoints(&["a", "b"]), Some(&config(&[("a", 1)])), &mut ctl);
        assert!(ctl.removed.is_empty());
        assert_eq!(ctl.state, Some(TransientFailure));
        wt.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        wt.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        wt.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        wt.subchannel_state(SubchannelId(4), Idle, None, &mut ctl);
        wt.subchannel_state(SubchannelId(4), Connecting, None, &mut ctl);
        wt.subchannel_state(SubchannelId(4), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
        assert!(
            (0..20).all(|_| ctl.pick().subchannel() == Some(SubchannelId(1))),
            "b is not used"
        );
        ctl.advance(Duration::from_secs(60));
        wt.update(
            endpoints(&["a", "b"]),
            Some(&config(&[("a", 1), ("b", 1)])),
            &mut ctl,
        );
        assert_eq!(ctl.created.len(), 4, "b's subchannels are reused");
        let seen: std::collections::HashSet<_> =
            (0..200).filter_map(|_| ctl.pick().subchannel()).collect();
        assert!(seen.contains(&SubchannelId(4)), "b serves again");
        // Dropped again, it goes after 15 minutes.
        wt.update(endpoints(&["a", "b"]), Some(&config(&[("a", 1)])), &mut ctl);
        let dropped = ctl.now();
        assert_eq!(wt.poll_timeout(), Some(dropped + RETENTION));
        ctl.now = Some(dropped + RETENTION);
        wt.handle_timeout(&mut ctl);
        let mut removed = ctl.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![SubchannelId(3), SubchannelId(4)]);
        assert_eq!(wt.targets.len(), 1);
        wt.update(vec![], Some(&config(&[])), &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        assert!(matches!(ctl.pick(), Pick::Fail(_)));
    }
}
