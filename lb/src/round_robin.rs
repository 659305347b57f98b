//! `round_robin`: a subchannel per address, all kept connected, calls spread over the READY
//! ones in turn.
//!
//! The channel is READY while any subchannel is; otherwise CONNECTING while any is connecting
//! or idle; otherwise TRANSIENT_FAILURE. A subchannel that returns to IDLE (its connection
//! closed, or its backoff ran out) is asked to connect again at once; losing a READY
//! connection also asks the resolver to resolve again.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anygrpc_codec::{Address, Endpoint, Status};

use crate::{
    policy::{
        flatten_endpoints, unique_addresses, ChannelControl, FixedPicker, LbPolicy,
        LbPolicyBuilder, Pick, PickInfo, Picker, PolicyConfig, SubchannelId,
    },
    ConnectivityState,
};

/// Builds [`RoundRobin`] policies; the config is an empty object.
#[derive(Debug, Clone, Copy)]
pub struct RoundRobinBuilder;

impl LbPolicyBuilder for RoundRobinBuilder {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(RoundRobin::new(seed))
    }
}

/// Picks the READY subchannels in turn, from a random start.
#[derive(Debug)]
pub struct RoundRobinPicker {
    ready: Vec<SubchannelId>,
    next: AtomicUsize,
}

impl RoundRobinPicker {
    /// A picker over `ready` (not empty), starting at `start`.
    pub fn new(ready: Vec<SubchannelId>, start: usize) -> RoundRobinPicker {
        RoundRobinPicker {
            next: AtomicUsize::new(start % ready.len().max(1)),
            ready,
        }
    }
}

impl Picker for RoundRobinPicker {
    fn pick(&self, _: &PickInfo<'_>) -> Pick {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.ready.len();
        Pick::Ready(self.ready[i])
    }
}

#[derive(Debug)]
struct Entry {
    id: SubchannelId,
    state: ConnectivityState,
    /// Has failed since it was last READY: counts as TRANSIENT_FAILURE while it reconnects.
    failing: bool,
}

/// The `round_robin` policy.
#[derive(Debug)]
pub struct RoundRobin {
    rng: fastrand::Rng,
    order: Vec<Address>,
    entries: HashMap<Address, Entry>,
    last_error: Option<Status>,
    published: Option<(ConnectivityState, Vec<SubchannelId>)>,
}

impl RoundRobin {
    /// A policy with no addresses yet; `seed` picks each picker's starting point.
    pub fn new(seed: u64) -> RoundRobin {
        RoundRobin {
            rng: fastrand::Rng::with_seed(seed),
            order: Vec::new(),
            entries: HashMap::new(),
            last_error: None,
            published: None,
        }
    }

    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        let entries = self.order.iter().filter_map(|a| self.entries.get(a));
        let ready: Vec<SubchannelId> = entries
            .clone()
            .filter(|e| e.state == ConnectivityState::Ready)
            .map(|e| e.id)
            .collect();
        let state = if !ready.is_empty() {
            ConnectivityState::Ready
        } else if entries.clone().any(|e| {
            !e.failing
                && matches!(
                    e.state,
                    ConnectivityState::Connecting | ConnectivityState::Idle
                )
        }) {
            ConnectivityState::Connecting
        } else {
            ConnectivityState::TransientFailure
        };
        let unchanged = self
            .published
            .as_ref()
            .is_some_and(|(s, r)| *s == state && *r == ready);
        if unchanged {
            return;
        }
        let picker: Arc<dyn Picker> = match state {
            ConnectivityState::Ready => {
                let start = self.rng.usize(..ready.len());
                Arc::new(RoundRobinPicker::new(ready.clone(), start))
            }
            ConnectivityState::TransientFailure => {
                let status = self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| Status::unavailable("no addresses to connect to"));
                Arc::new(FixedPicker(Pick::Fail(status)))
            }
            _ => Arc::new(FixedPicker(Pick::Queue)),
        };
        if state == ConnectivityState::TransientFailure {
            ctl.request_resolution();
        }
        self.published = Some((state, ready));
        ctl.update_picker(state, picker);
    }
}

impl RoundRobin {
    /// The READY subchannels of the last publication, in address order.
    pub(crate) fn ready(&self) -> &[SubchannelId] {
        match &self.published {
            Some((ConnectivityState::Ready, ready)) => ready,
            _ => &[],
        }
    }
}

impl LbPolicy for RoundRobin {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        _: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let addresses = match unique_addresses(flatten_endpoints(endpoints)) {
            Ok(addresses) => addresses,
            Err(status) => return self.resolver_error(status, ctl),
        };
        let mut old = std::mem::take(&mut self.entries);
        for address in &addresses {
            let entry = old.remove(address).unwrap_or_else(|| {
                let id = ctl.new_subchannel(address);
                ctl.enable_health_check(id);
                ctl.connect(id);
                Entry {
                    id,
                    state: ConnectivityState::Idle,
                    failing: false,
                }
            });
            self.entries.insert(address.clone(), entry);
        }
        for (_, entry) in old {
            ctl.remove_subchannel(entry.id);
        }
        self.order = addresses;
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        self.last_error = Some(status);
        if self.entries.is_empty() {
            self.published = None;
            self.publish(ctl);
        }
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(entry) = self.entries.values_mut().find(|e| e.id == id) else {
            return;
        };
        let was_ready = std::mem::replace(&mut entry.state, state) == ConnectivityState::Ready;
        match state {
            ConnectivityState::Ready => entry.failing = false,
            ConnectivityState::TransientFailure => entry.failing = true,
            ConnectivityState::Idle => {
                // A lost connection (or a GOAWAY) may mean the backends moved.
                if was_ready {
                    ctl.request_resolution();
                }
                ctl.connect(id);
            }
            _ => {}
        }
        if let Some(status) = status {
            self.last_error = Some(status.clone());
        }
        self.publish(ctl);
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        for entry in self.entries.values() {
            if entry.state == ConnectivityState::Idle {
                ctl.connect(entry.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{addr, endpoints, Recorder};
    use std::time::Instant;
    use ConnectivityState::*;

    fn picks(ctl: &Recorder, n: usize) -> HashMap<SubchannelId, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            match ctl.pick() {
                Pick::Ready(id) => *counts.entry(id).or_default() += 1,
                other => panic!("expected a ready pick, got {other:?}"),
            }
        }
        counts
    }

    #[test]
    fn spreads_evenly_over_ready_subchannels() {
        let mut ctl = Recorder::at(Instant::now());
        let mut rr = RoundRobin::new(3);
        rr.update(endpoints([addr(1), addr(2), addr(3)]), None, &mut ctl);
        assert_eq!(ctl.take_connects().len(), 3, "connects to every address");
        assert_eq!(ctl.state, Some(Connecting));
        assert!(matches!(ctl.pick(), Pick::Queue));

        rr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
        assert_eq!(picks(&ctl, 10)[&SubchannelId(1)], 10);
        rr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        rr.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
        let counts = picks(&ctl, 3000);
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n == 1000), "{counts:?}");
    }

    #[test]
    fn a_lost_subchannel_leaves_the_rotation_and_reconnects() {
        let mut ctl = Recorder::at(Instant::now());
        let mut rr = RoundRobin::new(3);
        rr.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        rr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        rr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        ctl.take_connects();
        rr.subchannel_state(SubchannelId(2), Idle, None, &mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(2)]);
        assert_eq!(
            ctl.resolutions, 1,
            "a lost connection asks for re-resolution"
        );
        assert_eq!(
            picks(&ctl, 10).keys().collect::<Vec<_>>(),
            [&SubchannelId(1)]
        );
        rr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        assert_eq!(picks(&ctl, 10).len(), 2, "back in the rotation");
    }

    #[test]
    fn transient_failure_only_when_every_subchannel_failed() {
        let mut ctl = Recorder::at(Instant::now());
        let mut rr = RoundRobin::new(3);
        rr.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        let err = Status::unavailable("refused");
        rr.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.state, Some(Connecting));
        rr.subchannel_state(SubchannelId(2), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        assert!(matches!(ctl.pick(), Pick::Fail(s) if s.message() == "refused"));
        assert_eq!(ctl.resolutions, 1);
        // Retrying after backoff does not flap back to CONNECTING.
        rr.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        rr.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        rr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
    }

    #[test]
    fn updates_keep_listed_subchannels_and_drop_the_rest() {
        let mut ctl = Recorder::at(Instant::now());
        let mut rr = RoundRobin::new(3);
        rr.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        rr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        rr.update(endpoints([addr(1), addr(3)]), None, &mut ctl);
        assert_eq!(ctl.removed, vec![SubchannelId(2)]);
        assert_eq!(ctl.created.len(), 3);
        assert_eq!(ctl.state, Some(Ready));
        rr.update(endpoints([]), None, &mut ctl);
        assert_eq!(
            ctl.state,
            Some(Ready),
            "an empty update while READY keeps serving"
        );
    }
}
