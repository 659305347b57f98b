//! `pick_first` (gRFC A62, with A61's Happy Eyeballs): connect to the addresses in order,
//! starting the next one when an attempt fails or has run for the connection attempt delay
//! (250 ms), and send every call to the first that becomes READY. The order interleaves the
//! address families (A61, RFC 8305 §4): the first address's family, then the next family's
//! first address, and so on, so a dual-stack backend list whose first family is unreachable
//! costs one attempt delay, not one per address of that family.
//!
//! Once every address has failed, the policy stays in TRANSIENT_FAILURE ("sticky") while its
//! subchannels keep retrying as their backoffs allow, until one connects; it does not flap
//! back to CONNECTING. When the chosen connection is lost the policy goes IDLE and asks for
//! re-resolution; the next call reconnects, starting with the subchannel it lost.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Address, Endpoint, Status};

use crate::{
    policy::{
        flatten_endpoints, unique_addresses, ChannelControl, FixedPicker, LbMetric, LbPolicy,
        LbPolicyBuilder, Pick, PolicyConfig, SubchannelId,
    },
    ConnectivityState,
};

/// A61's connection attempt delay: how long an attempt runs before the next address starts.
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Builds [`PickFirst`] policies; config `{"shuffleAddressList": bool}`.
#[derive(Debug, Clone, Copy)]
pub struct PickFirstBuilder;

impl LbPolicyBuilder for PickFirstBuilder {
    fn name(&self) -> &'static str {
        "pick_first"
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(PickFirst::new(seed))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        let object = config
            .as_object()
            .ok_or_else(|| Status::invalid_argument("pick_first config must be an object"))?;
        if let Some(shuffle) = object.get("shuffleAddressList") {
            if !shuffle.is_boolean() {
                return Err(Status::invalid_argument(
                    "pick_first shuffleAddressList must be a boolean",
                ));
            }
        }
        Ok(PolicyConfig::new(self.name(), config))
    }
}

#[derive(Debug)]
struct Entry {
    address: Address,
    id: Option<SubchannelId>,
    state: ConnectivityState,
}

/// The `pick_first` policy.
#[derive(Debug)]
pub struct PickFirst {
    rng: fastrand::Rng,
    entries: Vec<Entry>,
    /// The READY subchannel calls go to.
    selected: Option<SubchannelId>,
    /// The next address to start during the first pass through the list.
    next: usize,
    /// When the next address starts even though the current attempt has not failed.
    attempt_timer: Option<Instant>,
    /// Every address has failed since the last READY: report TRANSIENT_FAILURE until one
    /// connects.
    sticky_failure: bool,
    last_error: Option<Status>,
    state: ConnectivityState,
}

impl PickFirst {
    /// A policy with no addresses yet; `seed` drives `shuffleAddressList`.
    pub fn new(seed: u64) -> PickFirst {
        PickFirst {
            rng: fastrand::Rng::with_seed(seed),
            entries: Vec::new(),
            selected: None,
            next: 0,
            attempt_timer: None,
            sticky_failure: false,
            last_error: None,
            state: ConnectivityState::Idle,
        }
    }

    fn publish(&mut self, state: ConnectivityState, pick: Pick, ctl: &mut dyn ChannelControl) {
        self.state = state;
        ctl.update_picker(state, Arc::new(FixedPicker(pick)));
    }

    fn entry(&self, id: SubchannelId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == Some(id))
    }

    /// Starts a pass over the whole list from the first address. A policy already in
    /// TRANSIENT_FAILURE stays there (sticky) until something connects.
    fn start_pass(&mut self, ctl: &mut dyn ChannelControl) {
        for entry in &mut self.entries {
            if entry.id.is_none() {
                entry.id = Some(ctl.new_subchannel(&entry.address));
                entry.state = ConnectivityState::Idle;
            }
        }
        self.next = 0;
        if !self.sticky_failure {
            self.publish(ConnectivityState::Connecting, Pick::Queue, ctl);
        }
        self.start_next(ctl);
    }

    /// Starts the next address of the pass, if any, and arms the attempt delay.
    fn start_next(&mut self, ctl: &mut dyn ChannelControl) {
        self.attempt_timer = None;
        while self.next < self.entries.len() {
            let entry = &self.entries[self.next];
            self.next += 1;
            if entry.state == ConnectivityState::Idle {
                ctl.connect(entry.id.expect("subchannels exist during a pass"));
                // The delay starts the next address; the last one has none to start.
                self.attempt_timer =
                    (self.next < self.entries.len()).then(|| ctl.now() + CONNECTION_ATTEMPT_DELAY);
                return;
            }
        }
        self.maybe_fail(ctl);
    }

    /// After the pass, if no attempt is still running, every address has failed.
    fn maybe_fail(&mut self, ctl: &mut dyn ChannelControl) {
        if self.next < self.entries.len() || self.selected.is_some() {
            return;
        }
        let all_failed = self
            .entries
            .iter()
            .all(|e| e.state == ConnectivityState::TransientFailure);
        if all_failed && !self.sticky_failure {
            self.sticky_failure = true;
            self.attempt_timer = None;
            let status = self
                .last_error
                .clone()
                .unwrap_or_else(|| Status::unavailable("no addresses to connect to"));
            self.publish(ConnectivityState::TransientFailure, Pick::Fail(status), ctl);
            ctl.request_resolution();
        }
    }

    fn remove_all(&mut self, ctl: &mut dyn ChannelControl) {
        for entry in &mut self.entries {
            if let Some(id) = entry.id.take() {
                ctl.remove_subchannel(id);
            }
        }
    }
}

/// An address's family, for interleaving: IPv6, IPv4, or the kind of a non-IP address.
fn family(address: &Address) -> u8 {
    match address {
        Address::Tcp(addr) if addr.is_ipv6() => 6,
        Address::Tcp(_) => 4,
        Address::Unix(_) => 1,
        Address::UnixAbstract(_) => 2,
    }
}

/// Orders `addresses` as A61 and RFC 8305 §4 say: families in the order their first address
/// appears, taking one address of each in turn; within a family, the order is kept.
fn interleave_families(addresses: Vec<Address>) -> Vec<Address> {
    let mut families: Vec<(u8, std::collections::VecDeque<Address>)> = Vec::new();
    for address in addresses {
        let kind = family(&address);
        match families.iter_mut().find(|(f, _)| *f == kind) {
            Some((_, list)) => list.push_back(address),
            None => families.push((kind, [address].into())),
        }
    }
    let mut ordered = Vec::new();
    while families.iter().any(|(_, list)| !list.is_empty()) {
        for (_, list) in &mut families {
            ordered.extend(list.pop_front());
        }
    }
    ordered
}

impl LbPolicy for PickFirst {
    fn update(
        &mut self,
        mut endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let shuffle = config
            .and_then(|c| c.config.get("shuffleAddressList"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // A61: the endpoints are shuffled, then their addresses flattened in order.
        if shuffle {
            self.rng.shuffle(&mut endpoints);
        }
        let addresses = flatten_endpoints(endpoints);
        let addresses = match unique_addresses(addresses) {
            Ok(addresses) => interleave_families(addresses),
            Err(status) => return self.resolver_error(status, ctl),
        };
        let first_list = self.entries.is_empty();
        // Subchannels of addresses still listed are kept, with their state and backoff, so
        // a re-resolution after failures does not restart every connection at once.
        let mut old: Vec<Entry> = std::mem::take(&mut self.entries);
        self.entries = addresses
            .into_iter()
            .map(
                |address| match old.iter().position(|e| e.address == address) {
                    Some(i) => old.swap_remove(i),
                    None => Entry {
                        address,
                        id: None,
                        state: ConnectivityState::Idle,
                    },
                },
            )
            .collect();
        for entry in old {
            if let Some(id) = entry.id {
                ctl.remove_subchannel(id);
            }
        }
        // A READY connection whose address is still listed stays in use.
        if self.selected.is_some_and(|id| self.entry(id).is_some()) {
            return;
        }
        self.selected = None;
        // IDLE after losing its connection, the policy stays IDLE: the new list waits for the
        // next call (`exit_idle`), as in grpc-go, instead of reconnecting for no one.
        if self.state == ConnectivityState::Idle && !first_list {
            return;
        }
        self.start_pass(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        self.last_error = Some(status.clone());
        if self.entries.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.remove_all(ctl);
            self.entries.clear();
            self.selected = None;
            self.attempt_timer = None;
            self.publish(ConnectivityState::TransientFailure, Pick::Fail(status), ctl);
        }
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(index) = self.entry(id) else { return };
        self.entries[index].state = state;
        if let Some(status) = status {
            self.last_error = Some(status.clone());
        }
        match state {
            ConnectivityState::Ready => ctl.record(LbMetric::PickFirstConnected),
            ConnectivityState::TransientFailure => ctl.record(LbMetric::PickFirstConnectFailed),
            _ => {}
        }
        if self.selected == Some(id) {
            if state != ConnectivityState::Ready {
                ctl.record(LbMetric::PickFirstDisconnected);
                // The chosen connection is gone: go IDLE; the next call reconnects, starting
                // with this subchannel (kept, with its backoff). No pass runs until then.
                self.selected = None;
                self.attempt_timer = None;
                self.next = self.entries.len();
                self.publish(ConnectivityState::Idle, Pick::Queue, ctl);
                ctl.request_resolution();
            }
            return;
        }
        if self.selected.is_some() {
            return;
        }
        // IDLE, no pass runs: a kept subchannel's news is only recorded, unless it connected.
        if self.state == ConnectivityState::Idle && state != ConnectivityState::Ready {
            return;
        }
        match state {
            ConnectivityState::Ready => {
                self.selected = Some(id);
                self.attempt_timer = None;
                self.sticky_failure = false;
                for entry in &mut self.entries {
                    if let Some(other) = entry.id.filter(|other| *other != id) {
                        ctl.remove_subchannel(other);
                        entry.id = None;
                        entry.state = ConnectivityState::Idle;
                    }
                }
                self.publish(ConnectivityState::Ready, Pick::Ready(id), ctl);
            }
            ConnectivityState::TransientFailure => {
                if index + 1 == self.next && self.next < self.entries.len() {
                    // The newest attempt failed before its delay ran out: start the next now.
                    self.start_next(ctl);
                } else {
                    self.maybe_fail(ctl);
                }
            }
            ConnectivityState::Idle if self.sticky_failure || self.next >= self.entries.len() => {
                // Its backoff ran out after the first pass: retry it, staying in (sticky)
                // TRANSIENT_FAILURE until something connects.
                ctl.connect(id);
            }
            _ => {}
        }
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        if self.state == ConnectivityState::Idle && !self.entries.is_empty() {
            self.start_pass(ctl);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.attempt_timer
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        if self.attempt_timer.is_some_and(|t| ctl.now() >= t) {
            self.start_next(ctl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{addr, endpoints, Recorder};
    use ConnectivityState::*;

    fn ready(pick: Pick) -> SubchannelId {
        match pick {
            Pick::Ready(id) => id,
            other => panic!("expected a ready pick, got {other:?}"),
        }
    }

    #[test]
    fn first_address_to_connect_wins_and_the_rest_are_dropped() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2), addr(3)]), None, &mut ctl);
        assert_eq!(ctl.created.len(), 3);
        assert_eq!(ctl.state, Some(Connecting));
        assert!(matches!(ctl.pick(), Pick::Queue));
        let first = ctl.take_connects();
        assert_eq!(first, vec![SubchannelId(1)], "one attempt at a time");

        // Connection refused at once: the next address starts without waiting.
        pf.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        pf.subchannel_state(
            SubchannelId(1),
            TransientFailure,
            Some(&Status::unavailable("refused")),
            &mut ctl,
        );
        assert_eq!(ctl.take_connects(), vec![SubchannelId(2)]);
        assert_eq!(
            ctl.state,
            Some(Connecting),
            "no failure before the pass ends"
        );

        pf.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
        assert_eq!(ready(ctl.pick()), SubchannelId(2));
        assert_eq!(ctl.removed, vec![SubchannelId(1), SubchannelId(3)]);
        assert_eq!(pf.poll_timeout(), None);
    }

    #[test]
    fn address_families_are_interleaved_from_the_first_ones() {
        let v6 = |port| Address::Tcp(std::net::SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)));
        let unix = Address::Unix("/tmp/s".into());
        let list = vec![v6(1), v6(2), v6(3), addr(4), addr(5), unix.clone()];
        let ordered = interleave_families(list);
        assert_eq!(ordered, vec![v6(1), addr(4), unix, v6(2), addr(5), v6(3)]);
        assert_eq!(
            interleave_families(vec![addr(1), addr(2)]),
            vec![addr(1), addr(2)]
        );

        // The policy connects in that order: an unreachable IPv6 family costs one attempt.
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([v6(1), v6(2), addr(3)]), None, &mut ctl);
        let order: Vec<Address> = ctl.created.iter().map(|(_, a)| a.clone()).collect();
        assert_eq!(order, vec![v6(1), addr(3), v6(2)]);
        let first = ctl.take_connects();
        pf.subchannel_state(
            first[0],
            TransientFailure,
            Some(&Status::unavailable("no route")),
            &mut ctl,
        );
        let next = ctl.take_connects();
        assert_eq!(
            ctl.created.iter().find(|(id, _)| *id == next[0]).unwrap().1,
            addr(3)
        );
    }

    #[test]
    fn endpoints_are_flattened_in_order_and_shuffled_whole() {
        // A61: each endpoint's addresses, in order, then the next endpoint's.
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        let list = vec![
            Endpoint::new(vec![addr(1), addr(2)]),
            Endpoint::new(vec![addr(3)]),
            Endpoint::new(vec![addr(2), addr(4)]),
        ];
        pf.update(list.clone(), None, &mut ctl);
        let order: Vec<Address> = ctl.created.iter().map(|(_, a)| a.clone()).collect();
        assert_eq!(order, vec![addr(1), addr(2), addr(3), addr(4)]);
        // Shuffling moves endpoints, never splitting one.
        let config = PickFirstBuilder
            .parse_config(&serde_json::json!({"shuffleAddressList": true}))
            .unwrap();
        let list = vec![
            Endpoint::new(vec![addr(1), addr(2)]),
            Endpoint::new(vec![addr(3)]),
            Endpoint::new(vec![addr(4), addr(5)]),
        ];
        let mut orders = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut ctl = Recorder::at(Instant::now());
            let mut pf = PickFirst::new(seed);
            pf.update(list.clone(), Some(&config), &mut ctl);
            let order: Vec<Address> = ctl.created.iter().map(|(_, a)| a.clone()).collect();
            let after =
                |a: u16| order[order.iter().position(|x| *x == addr(a)).unwrap() + 1].clone();
            assert_eq!((after(1), after(4)), (addr(2), addr(5)), "{order:?}");
            orders.insert(order);
        }
        assert!(orders.len() > 1, "shuffled");
    }

    #[test]
    fn happy_eyeballs_starts_the_next_address_after_250ms() {
        let t0 = Instant::now();
        let mut ctl = Recorder::at(t0);
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(1)]);
        assert_eq!(pf.poll_timeout(), Some(t0 + CONNECTION_ATTEMPT_DELAY));
        ctl.advance(Duration::from_millis(249));
        pf.handle_timeout(&mut ctl);
        assert!(ctl.take_connects().is_empty());
        ctl.advance(Duration::from_millis(1));
        pf.handle_timeout(&mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(2)]);
        // The slow first address still wins if it connects first.
        pf.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        assert_eq!(ready(ctl.pick()), SubchannelId(1));
        assert_eq!(ctl.removed, vec![SubchannelId(2)]);
    }

    #[test]
    fn sticky_transient_failure_until_a_retry_connects() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        let err = Status::unavailable("refused");
        pf.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        pf.subchannel_state(SubchannelId(2), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        assert!(matches!(ctl.pick(), Pick::Fail(s) if s.message() == "refused"));
        assert_eq!(ctl.resolutions, 1, "re-resolution after the pass failed");
        ctl.take_connects();

        // Backoff over: the subchannel is IDLE again; pick_first retries it but stays in
        // TRANSIENT_FAILURE while it connects.
        pf.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(1)]);
        pf.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        pf.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure));
        pf.subchannel_state(SubchannelId(2), Idle, None, &mut ctl);
        pf.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
        assert_eq!(ready(ctl.pick()), SubchannelId(2));
        assert_eq!(
            ctl.metrics,
            [
                LbMetric::PickFirstConnectFailed,
                LbMetric::PickFirstConnectFailed,
                LbMetric::PickFirstConnectFailed,
                LbMetric::PickFirstConnected,
            ],
            "three failed attempts, then one that connected"
        );
    }

    #[test]
    fn re_resolution_while_failing_stays_sticky_and_keeps_backoff() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        let err = Status::unavailable("refused");
        pf.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        pf.subchannel_state(SubchannelId(2), TransientFailure, Some(&err), &mut ctl);
        ctl.take_connects();
        // The resolver answers the re-resolution with the same list (and one new address).
        pf.update(endpoints([addr(1), addr(2), addr(3)]), None, &mut ctl);
        assert_eq!(ctl.state, Some(TransientFailure), "sticky");
        assert_eq!(
            ctl.created.len(),
            3,
            "only the new address gets a subchannel"
        );
        assert_eq!(
            ctl.take_connects(),
            vec![SubchannelId(3)],
            "the failed ones wait for their backoff"
        );
        assert_eq!(ctl.resolutions, 1, "no re-resolution loop");
        pf.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
        assert_eq!(ctl.state, Some(Ready));
    }

    #[test]
    fn the_lost_subchannel_is_kept_quiet_while_idle_and_reconnected_first() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        ctl.take_connects();
        pf.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        assert_eq!(ctl.removed, vec![SubchannelId(2)], "the other address goes");
        pf.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        assert_eq!(ctl.removed, vec![SubchannelId(2)], "the lost one stays");
        assert_eq!(pf.poll_timeout(), None);
        // While IDLE its reports start nothing.
        pf.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        let err = Status::unavailable("refused");
        pf.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        pf.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        assert!(ctl.take_connects().is_empty());
        assert_eq!(ctl.state, Some(Idle));
        // The next call: the kept subchannel first, then a new one for the other address.
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(1)]);
        pf.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
        pf.subchannel_state(SubchannelId(1), TransientFailure, Some(&err), &mut ctl);
        assert_eq!(ctl.take_connects(), vec![SubchannelId(3)]);
        pf.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
        assert!(matches!(ctl.pick(), Pick::Ready(SubchannelId(3))));
    }

    #[test]
    fn losing_the_connection_goes_idle_and_the_next_call_reconnects() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        pf.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        pf.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
        assert_eq!(ctl.state, Some(Idle));
        assert_eq!(ctl.resolutions, 1);
        assert_eq!(
            ctl.metrics,
            [
                LbMetric::PickFirstConnected,
                LbMetric::PickFirstDisconnected
            ]
        );
        ctl.take_connects();
        // The resolver answers the re-resolution: the list is replaced, nothing connects yet.
        pf.update(endpoints([addr(2), addr(3)]), None, &mut ctl);
        assert_eq!(ctl.state, Some(Idle), "no call has asked for a connection");
        assert!(ctl.take_connects().is_empty());
        assert_eq!(ctl.created.len(), 2, "no subchannels until the next call");
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.state, Some(Connecting));
        assert_eq!(
            ctl.take_connects(),
            vec![SubchannelId(3)],
            "a new pass from the first address of the new list"
        );
        assert_eq!(ctl.created.len(), 4, "fresh subchannels for the new pass");
    }

    #[test]
    fn an_update_keeps_a_ready_connection_that_is_still_listed() {
        let mut ctl = Recorder::at(Instant::now());
        let mut pf = PickFirst::new(1);
        pf.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
        pf.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
        pf.update(endpoints([addr(3), addr(1)]), None, &mut ctl);
        assert_eq!(ready(ctl.pick()), SubchannelId(1));
        assert_eq!(ctl.created.len(), 2, "no new subchannels");
        pf.update(endpoints([addr(4)]), None, &mut ctl);
        assert_eq!(ctl.state, Some(Connecting));
        assert!(ctl.removed.contains(&SubchannelId(1)));
    }

    #[test]
    fn shuffle_address_list_is_seeded() {
        let config = PickFirstBuilder
            .parse_config(&serde_json::json!({"shuffleAddressList": true}))
            .unwrap();
        let order = |seed| {
            let mut ctl = Recorder::at(Instant::now());
            let mut pf = PickFirst::new(seed);
            pf.update(endpoints((1..=8).map(addr)), Some(&config), &mut ctl);
            ctl.created
                .iter()
                .map(|(_, a)| a.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(5), order(5));
        assert_ne!(order(5), (1..=8).map(addr).collect::<Vec<_>>());
    }
}
