//! `round_robin`: calls spread over the READY endpoints in turn, every endpoint kept
//! connected.
//!
//! Each endpoint is a `pick_first` child over its addresses (gRFC A61), so an endpoint reached
//! over IPv6 or IPv4 is one backend, connected by whichever address works first. The channel
//! is READY while any endpoint is; otherwise CONNECTING while any is connecting or idle;
//! otherwise TRANSIENT_FAILURE. An endpoint that goes IDLE (its connection closed) is asked to
//! connect again at once. Subchannels are health-checked when the channel has a check.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use anygrpc_codec::{Address, Endpoint, Status};

use crate::{
    child::{ChildPolicy, Stepped},
    pick_first::PickFirstBuilder,
    policy::{
        ChannelControl, FixedPicker, LbPolicy, LbPolicyBuilder, Pick, PickInfo, Picker,
        PolicyConfig, SubchannelId,
    },
    ConnectivityState, OrcaLoadReport,
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

/// An endpoint's identity: its addresses, in order (a change of order is a new endpoint).
type Key = Vec<Address>;

/// The `round_robin` policy.
#[derive(Debug)]
pub struct RoundRobin {
    rng: fastrand::Rng,
    order: Vec<Key>,
    entries: HashMap<Key, ChildPolicy>,
    child_config: PolicyConfig,
    last_error: Option<Status>,
    published: Option<(ConnectivityState, Vec<SubchannelId>)>,
}

impl RoundRobin {
    /// A policy with no endpoints yet; `seed` picks each picker's starting point.
    pub fn new(seed: u64) -> RoundRobin {
        RoundRobin {
            rng: fastrand::Rng::with_seed(seed),
            order: Vec::new(),
            entries: HashMap::new(),
            child_config: PolicyConfig::new("pick_first", &serde_json::json!({})),
            last_error: None,
            published: None,
        }
    }

    /// The READY subchannels of the last publication (one per READY endpoint), in endpoint
    /// order.
    pub(crate) fn ready(&self) -> &[SubchannelId] {
        match &self.published {
            Some((ConnectivityState::Ready, ready)) => ready,
            _ => &[],
        }
    }

    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        use ConnectivityState::*;
        let entries = self.order.iter().filter_map(|k| self.entries.get(k));
        let none = http::HeaderMap::new();
        let ready: Vec<SubchannelId> = entries
            .clone()
            .filter(|e| e.state == Ready)
            .filter_map(|e| e.picker.pick(&PickInfo::new("", &none)).subchannel())
            .collect();
        let state = if !ready.is_empty() {
            Ready
        } else if entries
            .clone()
            .any(|e| matches!(e.state, Connecting | Idle))
        {
            Connecting
        } else {
            TransientFailure
        };
        let unchanged = self
            .published
            .as_ref()
            .is_some_and(|(s, r)| *s == state && *r == ready);
        if unchanged {
            return;
        }
        let picker: Arc<dyn Picker> = match state {
            Ready => {
                let start = self.rng.usize(..ready.len());
                Arc::new(RoundRobinPicker::new(ready.clone(), start))
            }
            TransientFailure => {
                let status = self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| Status::unavailable("no addresses to connect to"));
                Arc::new(FixedPicker(Pick::Fail(status)))
            }
            _ => Arc::new(FixedPicker(Pick::Queue)),
        };
        if state == TransientFailure {
            ctl.request_resolution();
        }
        self.published = Some((state, ready));
        ctl.update_picker(state, picker);
    }

    /// Runs a step of one endpoint's child: health-checks the subchannels it made, and
    /// reconnects it when it goes IDLE. (A child that failed stays TRANSIENT_FAILURE, sticky,
    /// until it is READY again: pick_first's own rule, which the aggregate relies on.)
    fn step(
        child: &mut ChildPolicy,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let mut stepped = f(child, ctl);
        loop {
            for (id, _) in &stepped.created {
                ctl.enable_health_check(*id);
            }
            if !(stepped.published && child.state == ConnectivityState::Idle) {
                return;
            }
            stepped = child.exit_idle(ctl);
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
        let mut seen = std::collections::HashSet::new();
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|e| !e.addresses.is_empty() && seen.insert(e.addresses.clone()))
            .collect();
        if endpoints.is_empty() {
            return self.resolver_error(
                Status::unavailable("the resolver returned no addresses"),
                ctl,
            );
        }
        let mut old = std::mem::take(&mut self.entries);
        self.order = endpoints.iter().map(|e| e.addresses.clone()).collect();
        for endpoint in endpoints {
            let key = endpoint.addresses.clone();
            let mut entry = old
                .remove(&key)
                .unwrap_or_else(|| ChildPolicy::new(Arc::new(PickFirstBuilder), self.rng.u64(..)));
            let config = &self.child_config;
            Self::step(&mut entry, ctl, |child, ctl| {
                child.update(vec![endpoint], config, ctl)
            });
            self.entries.insert(key, entry);
        }
        for (_, entry) in old {
            entry.shut_down(ctl);
        }
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
        let Some(entry) = self.entries.values_mut().find(|e| e.owns(id)) else {
            return;
        };
        Self::step(entry, ctl, |child, ctl| {
            child.subchannel_state(id, state, status, ctl)
        });
        if let Some(status) = status {
            self.last_error = Some(status.clone());
        }
        self.publish(ctl);
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        for entry in self.entries.values_mut() {
            if entry.state == ConnectivityState::Idle {
                Self::step(entry, ctl, |child, ctl| child.exit_idle(ctl));
            }
        }
        self.publish(ctl);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.poll_timeout()).min()
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        for entry in self.entries.values_mut() {
            Self::step(entry, ctl, |child, ctl| child.handle_timeout(ctl));
        }
        self.publish(ctl);
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        if let Some(entry) = self.entries.values_mut().find(|e| e.owns(id)) {
            entry.load_report(id, report, ctl);
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
        assert!(ctl.resolutions > 0);
        // Retrying after backoff does not flap back to CONNECTING.
        rr.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        rr.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        rr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
    }

    #[test]
    fn an_endpoint_is_one_backend_whichever_of_its_addresses_connects() {
        // A61: two endpoints, the first reachable only by its second address.
        let mut ctl = Recorder::at(Instant::now());
        let mut rr = RoundRobin::new(3);
        let list = vec![
            Endpoint::new(vec![addr(1), addr(2)]),
            Endpoint::new(vec![addr(3)]),
        ];
        rr.update(list, None, &mut ctl);
        assert_eq!(
            ctl.take_connects(),
            vec![SubchannelId(1), SubchannelId(3)],
            "one attempt per endpoint"
        );
        let refused = Status::unavailable("refused");
        rr.subchannel_state(SubchannelId(1), TransientFailure, Some(&refused), &mut ctl);
        assert_eq!(
            ctl.take_connects(),
            vec![SubchannelId(2)],
            "the endpoint tries its next address"
        );
        rr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        rr.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
        let counts = picks(&ctl, 100);
        assert_eq!(
            counts,
            HashMap::from([(SubchannelId(2), 50), (SubchannelId(3), 50)])
        );
        assert_eq!(
            ctl.health_checked.len(),
            3,
            "every subchannel is health-checked"
        );
        // Losing the connection reconnects the endpoint at once: a fresh pass from its first
        // address (its subchannel went when the second one connected).
        rr.subchannel_state(SubchannelId(2), Idle, None, &mut ctl);
        let again = ctl.take_connects();
        let address = |id| {
            ctl.created
                .iter()
                .find(|(i, _)| *i == id)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(
            again.iter().map(|id| address(*id)).collect::<Vec<_>>(),
            vec![addr(1)]
        );
        assert_eq!(
            picks(&ctl, 10).keys().collect::<Vec<_>>(),
            [&SubchannelId(3)]
        );
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
