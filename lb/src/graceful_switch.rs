//! [`GracefulSwitch`]: changing a channel's policy without failing calls, as grpc-go's
//! `gracefulswitch` does.
//!
//! A switch builds the new policy beside the current one. Updates go to the new one, while
//! calls keep being picked by the current one. The new one takes over, and the current one
//! and its subchannels go, as soon as it leaves CONNECTING (it is READY, or has failed, or
//! sits IDLE), or as soon as the current one is not READY, since a current policy that
//! cannot serve has nothing to keep.

use std::{sync::Arc, time::Instant};

use anygrpc_codec::{Endpoint, Status};

use crate::{
    child::{ChildPolicy, Stepped},
    policy::{ChannelControl, LbPolicy, LbPolicyBuilder, PolicyConfig, SubchannelId},
    ConnectivityState, OrcaLoadReport,
};

/// A policy that can be swapped for another gracefully; it holds the current policy and,
/// during a switch, the next.
#[derive(Debug)]
pub struct GracefulSwitch {
    current: Option<ChildPolicy>,
    pending: Option<ChildPolicy>,
    seed: u64,
}

impl GracefulSwitch {
    /// A switch with no policy yet; `seed` seeds the policies it builds.
    pub fn new(seed: u64) -> GracefulSwitch {
        GracefulSwitch {
            current: None,
            pending: None,
            seed,
        }
    }

    /// A switch running a policy of `builder`.
    pub fn with_policy(builder: Arc<dyn LbPolicyBuilder>, seed: u64) -> GracefulSwitch {
        let mut switch = GracefulSwitch::new(seed);
        switch.current = Some(switch.build(builder));
        switch
    }

    fn build(&mut self, builder: Arc<dyn LbPolicyBuilder>) -> ChildPolicy {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        ChildPolicy::new(builder, self.seed)
    }

    /// Starts a switch to a policy of `builder`; the next [`update`](LbPolicy::update)
    /// gives it its addresses. A switch already under way is abandoned for this one.
    pub fn switch_to(&mut self, builder: Arc<dyn LbPolicyBuilder>, ctl: &mut dyn ChannelControl) {
        if let Some(abandoned) = self.pending.take() {
            abandoned.shut_down(ctl);
        }
        let next = self.build(builder);
        match &self.current {
            Some(current) if current.state == ConnectivityState::Ready => self.pending = Some(next),
            _ => {
                if let Some(old) = self.current.replace(next) {
                    old.shut_down(ctl);
                }
            }
        }
    }

    /// The name of the policy updates go to: the pending one during a switch.
    pub fn latest_name(&self) -> Option<&'static str> {
        self.pending
            .as_ref()
            .or(self.current.as_ref())
            .map(ChildPolicy::name)
    }

    /// Runs `f` on the policy updates go to.
    fn drive_latest(
        &mut self,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let pending = self.pending.is_some();
        let Some(child) = self.pending.as_mut().or(self.current.as_mut()) else {
            return;
        };
        let stepped = f(child, ctl);
        self.settle(stepped.published, pending, ctl);
    }

    /// After a step of one child's: takes the switch over if it is time, and publishes the
    /// current child's state when it (or the switch) changed it.
    fn settle(&mut self, published: bool, by_pending: bool, ctl: &mut dyn ChannelControl) {
        let current_ready = self
            .current
            .as_ref()
            .is_some_and(|c| c.state == ConnectivityState::Ready);
        let take_over = self
            .pending
            .as_ref()
            .is_some_and(|p| p.state != ConnectivityState::Connecting || !current_ready);
        if take_over {
            if let Some(old) = self.current.take() {
                old.shut_down(ctl);
            }
            self.current = self.pending.take();
        }
        // A pending policy's publications wait until it takes over.
        if take_over || (published && !by_pending) {
            if let Some(current) = &self.current {
                ctl.update_picker(current.state, current.picker.clone());
            }
        }
    }
}

impl LbPolicy for GracefulSwitch {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_latest(ctl, |child, ctl| {
            child.step(ctl, |policy, ctl| policy.update(endpoints, config, ctl))
        });
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        self.drive_latest(ctl, |child, ctl| child.resolver_error(status, ctl));
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        let step = |child: &mut ChildPolicy, ctl: &mut dyn ChannelControl| {
            child.subchannel_state(id, state, status, ctl)
        };
        if let Some(pending) = self.pending.as_mut().filter(|p| p.owns(id)) {
            let stepped = step(pending, ctl);
            return self.settle(stepped.published, true, ctl);
        }
        if let Some(current) = self.current.as_mut().filter(|c| c.owns(id)) {
            let stepped = step(current, ctl);
            self.settle(stepped.published, false, ctl);
        }
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        self.drive_latest(ctl, |child, ctl| child.exit_idle(ctl));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [&self.current, &self.pending]
            .into_iter()
            .flatten()
            .filter_map(ChildPolicy::poll_timeout)
            .min()
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        if let Some(current) = self.current.as_mut() {
            let stepped = current.handle_timeout(ctl);
            self.settle(stepped.published, false, ctl);
        }
        if let Some(pending) = self.pending.as_mut() {
            let stepped = pending.handle_timeout(ctl);
            self.settle(stepped.published, true, ctl);
        }
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        for child in [&mut self.current, &mut self.pending].into_iter().flatten() {
            if child.owns(id) {
                child.load_report(id, report, ctl);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pick_first::PickFirstBuilder,
        policy::testing::{addr, endpoints, Recorder},
        round_robin::RoundRobinBuilder,
        Pick,
    };
    use std::collections::HashSet;
    use ConnectivityState::*;

    fn serving_pick_first() -> (GracefulSwitch, Recorder) {
        let mut ctl = Recorder::at(Instant::now());
        let mut switch = GracefulSwitch::with_policy(Arc::new(PickFirstBuilder), 1);
        switch.update(endpoints([addr(1), addr(2), addr(3)]), None, &mut ctl);
        let first = ctl.take_connects()[0];
        switch.subchannel_state(first, Connecting, None, &mut ctl);
        switch.subchannel_state(first, Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
        // pick_first keeps only the subchannel it chose.
        ctl.removed.clear();
        (switch, ctl)
    }

    fn picked(ctl: &Recorder, n: usize) -> HashSet<SubchannelId> {
        (0..n).filter_map(|_| ctl.pick().subchannel()).collect()
    }

    #[test]
    fn the_old_policy_serves_until_the_new_one_is_ready() {
        let (mut switch, mut ctl) = serving_pick_first();
        let old = picked(&ctl, 5);
        assert_eq!(old.len(), 1);
        switch.switch_to(Arc::new(RoundRobinBuilder), &mut ctl);
        switch.update(endpoints([addr(1), addr(2), addr(3)]), None, &mut ctl);
        assert_eq!(switch.latest_name(), Some("round_robin"));
        // round_robin is CONNECTING: calls still go to pick_first's subchannel.
        assert_eq!(ctl.state, Some(Ready));
        assert_eq!(picked(&ctl, 5), old);
        assert!(ctl.removed.is_empty());
        let new: Vec<SubchannelId> = ctl.take_connects();
        assert_eq!(new.len(), 3, "round_robin connects its own subchannels");
        switch.subchannel_state(new[0], Connecting, None, &mut ctl);
        assert_eq!(picked(&ctl, 5), old);
        // The first READY subchannel makes round_robin READY: it takes over, and
        // pick_first's subchannels go.
        switch.subchannel_state(new[0], Ready, None, &mut ctl);
        assert_eq!(picked(&ctl, 5), HashSet::from([new[0]]));
        assert_eq!(
            ctl.removed,
            old.iter().copied().collect::<Vec<_>>(),
            "pick_first's subchannel goes"
        );
        assert_eq!(switch.latest_name(), Some("round_robin"));
        // Its subchannels' states reach it, the old ones' are ignored.
        switch.subchannel_state(new[1], Ready, None, &mut ctl);
        assert_eq!(picked(&ctl, 10).len(), 2);
        switch.subchannel_state(*old.iter().next().unwrap(), Idle, None, &mut ctl);
        assert_eq!(picked(&ctl, 10).len(), 2);
    }

    #[test]
    fn the_old_policy_leaving_ready_ends_the_switch_at_once() {
        let (mut switch, mut ctl) = serving_pick_first();
        let old = *picked(&ctl, 1).iter().next().unwrap();
        switch.switch_to(Arc::new(RoundRobinBuilder), &mut ctl);
        switch.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        switch.subchannel_state(old, Idle, None, &mut ctl);
        assert!(switch.pending.is_none());
        assert_eq!(ctl.state, Some(Connecting), "round_robin's state now");
        assert!(matches!(ctl.pick(), Pick::Queue));
    }

    #[test]
    fn a_switch_from_a_policy_that_is_not_ready_is_immediate_and_a_new_switch_abandons_the_last() {
        let mut ctl = Recorder::at(Instant::now());
        let mut switch = GracefulSwitch::with_policy(Arc::new(PickFirstBuilder), 1);
        switch.update(endpoints([addr(1)]), None, &mut ctl);
        switch.switch_to(Arc::new(RoundRobinBuilder), &mut ctl);
        assert!(switch.pending.is_none());
        assert_eq!(ctl.removed.len(), 1);

        let (mut switch, mut ctl) = serving_pick_first();
        switch.switch_to(Arc::new(RoundRobinBuilder), &mut ctl);
        switch.update(endpoints([addr(4), addr(5)]), None, &mut ctl);
        switch.switch_to(Arc::new(PickFirstBuilder), &mut ctl);
        assert_eq!(
            ctl.removed.len(),
            2,
            "the abandoned round_robin's subchannels"
        );
        assert_eq!(ctl.state, Some(Ready), "pick_first still serves");
    }
}
