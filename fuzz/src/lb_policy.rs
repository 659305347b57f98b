//! The `lb_policy` target: every load-balancing policy driven by resolver updates (endpoints
//! with several addresses and tree paths), subchannel states along legal transitions, time,
//! calls that succeed, fail or stay open, load reports and policy switches. After every event
//! the published picker is checked against what the channel knows.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Address, Code, Endpoint, Status};
use anygrpc_lb::{
    graceful_switch::GracefulSwitch,
    outlier_detection::OutlierDetection,
    policy::{
        CallEnd, CallObserver, ChannelControl, LbPolicy, Pick, PickInfo, Picker, SubchannelId,
    },
    ConnectivityState, OrcaLoadReport, PolicyConfig, PolicyRegistry,
};
use arbitrary::Arbitrary;

use crate::machines::with_input;

#[derive(Debug, Arbitrary)]
enum PolicyEvent {
    /// Each byte is an address: port `1 + b % 8`; bit 3 puts its endpoint under the tree
    /// path `a` or `b`; bit 4 adds it to the previous endpoint. Empty is an empty answer.
    Update(Vec<u8>),
    ResolverError,
    /// The nth live subchannel moves to a state (only along legal transitions).
    State(u8, u8),
    ExitIdle,
    Advance(u16),
    /// A call with `x-key` header value `key % 4`: it ends OK, fails, or stays open.
    Call {
        key: u8,
        end: u8,
    },
    /// Every open call ends, OK or failed.
    EndCalls(bool),
    LoadReport(u8, u8, u16, u8),
    /// A switch to pick_first (false) or round_robin (true), under the switch policy.
    Switch(bool),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum PolicyKind {
    PickFirst { shuffle: bool },
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    RingHash,
    OutlierDetection,
    Priority,
    WeightedTarget,
    GracefulSwitch,
}

impl PolicyKind {
    /// The `loadBalancingConfig` entry this kind runs, short periods so time matters.
    fn config(self) -> serde_json::Value {
        use serde_json::json;
        match self {
            PolicyKind::PickFirst { shuffle } => {
                json!({"pick_first": {"shuffleAddressList": shuffle}})
            }
            PolicyKind::RoundRobin | PolicyKind::GracefulSwitch => json!({"round_robin": {}}),
            PolicyKind::WeightedRoundRobin => json!({"weighted_round_robin": {
                "blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}),
            PolicyKind::LeastRequest => json!({"least_request_experimental": {"choiceCount": 2}}),
            PolicyKind::RingHash => json!({"ring_hash_experimental": {
                "minRingSize": 16, "maxRingSize": 64, "requestHashHeader": "x-key"}}),
            PolicyKind::OutlierDetection => json!({"outlier_detection_experimental": {
                "interval": "0.1s", "baseEjectionTime": "0.2s", "maxEjectionTime": "1s",
                "maxEjectionPercent": 50,
                "successRateEjection": {"requestVolume": 2, "minimumHosts": 2},
                "failurePercentageEjection": {"threshold": 10, "requestVolume": 2, "minimumHosts": 2},
                "childPolicy": [{"round_robin": {}}]}}),
            PolicyKind::Priority => json!({"priority_experimental": {
                "priorities": ["a", "b"],
                "children": {"a": {"config": [{"round_robin": {}}]},
                             "b": {"config": [{"pick_first": {}}]}}}}),
            PolicyKind::WeightedTarget => json!({"weighted_target_experimental": {"targets": {
                "a": {"weight": 2, "childPolicy": [{"round_robin": {}}]},
                "b": {"weight": 1, "childPolicy": [{"least_request_experimental": {}}]}}}}),
        }
    }
}

/// The channel side of a policy, checking what the policy asks of it.
#[derive(Debug)]
struct Channel {
    now: Instant,
    next: u64,
    /// Live subchannels (created, not removed), their addresses and the states last reported.
    live: BTreeMap<SubchannelId, (Address, ConnectivityState)>,
    published: Option<(ConnectivityState, Arc<dyn Picker>)>,
}

impl ChannelControl for Channel {
    fn now(&self) -> Instant {
        self.now
    }

    fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
        self.next += 1;
        let id = SubchannelId(self.next);
        self.live
            .insert(id, (address.clone(), ConnectivityState::Idle));
        id
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        assert!(
            self.live.remove(&id).is_some(),
            "removed {id:?} twice or never made it"
        );
    }

    fn connect(&mut self, id: SubchannelId) {
        assert!(
            self.live.contains_key(&id),
            "connect on a removed subchannel {id:?}"
        );
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        assert_ne!(state, ConnectivityState::Shutdown);
        self.published = Some((state, picker));
    }

    fn request_resolution(&mut self) {}
}

/// What a pick may do beyond the generic rules.
struct Rules {
    /// ring_hash queues a call that hashes to an IDLE endpoint, whatever its state.
    queues_on_demand: bool,
    /// Addresses a pick must not name (outlier detection's ejections).
    ejected: Vec<Address>,
}

impl Channel {
    /// One pick: it names a live READY subchannel that is not ejected; a READY channel never
    /// queues or fails it, a TRANSIENT_FAILURE one never queues it (unless the policy
    /// connects on demand, when a queued call means something is IDLE or CONNECTING); what
    /// the picker asks of its policy is run by the caller, as the channel would. Returns the
    /// pick's observer, and whether the picker asked for its policy's timer.
    fn pick(&self, key: u8, rules: &Rules) -> (Option<Arc<dyn CallObserver>>, bool) {
        let Some((state, picker)) = self.published.as_ref() else {
            return (None, false);
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-key", http::HeaderValue::from(u16::from(key % 4)));
        let asked = std::sync::atomic::AtomicBool::new(false);
        let work = || asked.store(true, std::sync::atomic::Ordering::Relaxed);
        let pick = picker.pick(&PickInfo::new("/s/m", &headers).with_work(&work));
        let observer = match &pick {
            Pick::Observed(_, observer) => Some(observer.clone()),
            _ => None,
        };
        match pick {
            Pick::Ready(id) | Pick::Observed(id, _) => {
                let (address, subchannel) =
                    self.live.get(&id).expect("picked a removed subchannel");
                assert_eq!(
                    *subchannel,
                    ConnectivityState::Ready,
                    "picked {id:?} in {:?}",
                    self.live
                );
                assert!(!rules.ejected.contains(address), "picked ejected {address}");
            }
            // A call waits for an endpoint its picker asked to connect, or one connecting.
            Pick::Queue if rules.queues_on_demand => assert!(
                asked.load(std::sync::atomic::Ordering::Relaxed)
                    || self.live.values().any(|(_, s)| matches!(
                        s,
                        ConnectivityState::Idle | ConnectivityState::Connecting
                    )),
                "queued with nothing to wait for: {:?}",
                self.live
            ),
            Pick::Queue => assert!(
                !matches!(
                    state,
                    ConnectivityState::Ready | ConnectivityState::TransientFailure
                ),
                "queued a call in {state:?}"
            ),
            Pick::Fail(_) => assert_ne!(*state, ConnectivityState::Ready, "failed a call"),
        }
        (observer, asked.into_inner())
    }
}

fn legal_subchannel_move(from: ConnectivityState, to: ConnectivityState) -> bool {
    use ConnectivityState::*;
    matches!(
        (from, to),
        (Idle, Connecting)
            | (Connecting, Ready | TransientFailure)
            | (Ready, Idle)
            | (TransientFailure, Idle | Connecting)
    )
}

/// Runs every timer due by now, as the channel's timer task would (and as it does at once
/// when a picker asks for its policy's work).
fn run_due(policy: &mut dyn LbPolicy, ch: &mut Channel) {
    for _ in 0..64 {
        match policy.poll_timeout() {
            Some(at) if at <= ch.now => policy.handle_timeout(ch),
            _ => break,
        }
    }
}

/// Endpoints from update bytes (see [`PolicyEvent::Update`]).
fn endpoints(bytes: &[u8]) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for b in bytes.iter().take(16) {
        let address = Address::Tcp(std::net::SocketAddr::from((
            [10, 0, 0, 1],
            u16::from(b % 8) + 1,
        )));
        match endpoints.last_mut() {
            Some(last) if b & 0x10 != 0 => last.addresses.push(address),
            _ => {
                let path = if b & 0x08 != 0 { "b" } else { "a" };
                endpoints.push(Endpoint::from(address).with_path([path]));
            }
        }
    }
    endpoints
}

/// The policy under test: a concrete outlier detection (to read its ejections), a graceful
/// switch (to switch it), or any other policy from the registry.
enum Under {
    Outlier(OutlierDetection),
    Switch(GracefulSwitch),
    Other(Box<dyn LbPolicy>),
}

impl Under {
    fn policy(&mut self) -> &mut dyn LbPolicy {
        match self {
            Under::Outlier(p) => p,
            Under::Switch(p) => p,
            Under::Other(p) => &mut **p,
        }
    }
}

/// Every policy of the registry, as above: every pick is of a live READY subchannel that is
/// not ejected, the published state agrees with the picks, and no subchannel is removed twice
/// or touched once removed.
pub fn lb_policy(data: &[u8]) {
    with_input(
        data,
        |(kind, seed, events): (PolicyKind, u64, Vec<PolicyEvent>)| {
            let registry = PolicyRegistry::default();
            let parse =
                |json: serde_json::Value| -> (Arc<dyn anygrpc_lb::LbPolicyBuilder>, PolicyConfig) {
                    registry
                        .parse_lb_config(&serde_json::json!([json]))
                        .expect("a valid config")
                };
            let (builder, mut config) = parse(kind.config());
            let mut under = match kind {
                PolicyKind::OutlierDetection => Under::Outlier(OutlierDetection::new(seed)),
                PolicyKind::GracefulSwitch => {
                    Under::Switch(GracefulSwitch::with_policy(builder, seed))
                }
                _ => Under::Other(builder.build(seed)),
            };
            let rules = |under: &Under| Rules {
                queues_on_demand: matches!(kind, PolicyKind::RingHash),
                ejected: match under {
                    Under::Outlier(od) => od.ejected(),
                    _ => Vec::new(),
                },
            };
            let mut ch = Channel {
                now: Instant::now(),
                next: 0,
                live: BTreeMap::new(),
                published: None,
            };
            let mut open: Vec<Arc<dyn CallObserver>> = Vec::new();
            let end = |observer: &Arc<dyn CallObserver>, ok: bool, now| {
                let code = if ok { Code::Ok } else { Code::Unavailable };
                observer.call_ended(&CallEnd::new(code, now, None));
            };
            for event in events.into_iter().take(256) {
                match event {
                    PolicyEvent::Update(bytes) => {
                        under
                            .policy()
                            .update(endpoints(&bytes), Some(&config), &mut ch)
                    }
                    PolicyEvent::ResolverError => under
                        .policy()
                        .resolver_error(Status::unavailable("fuzz"), &mut ch),
                    PolicyEvent::State(which, to) => {
                        let Some((&id, &(_, from))) = ch
                            .live
                            .iter()
                            .nth(usize::from(which) % ch.live.len().max(1))
                        else {
                            continue;
                        };
                        let to = [
                            ConnectivityState::Idle,
                            ConnectivityState::Connecting,
                            ConnectivityState::Ready,
                            ConnectivityState::TransientFailure,
                        ][usize::from(to % 4)];
                        if legal_subchannel_move(from, to) {
                            ch.live.get_mut(&id).expect("live").1 = to;
                            let status = (to == ConnectivityState::TransientFailure)
                                .then(|| Status::unavailable("connect failed"));
                            under
                                .policy()
                                .subchannel_state(id, to, status.as_ref(), &mut ch);
                        }
                    }
                    PolicyEvent::ExitIdle => under.policy().exit_idle(&mut ch),
                    PolicyEvent::Advance(ms) => {
                        ch.now += Duration::from_millis(u64::from(ms));
                        run_due(under.policy(), &mut ch);
                    }
                    PolicyEvent::Call { key, end: how } => {
                        let (observer, asked) = ch.pick(key, &rules(&under));
                        if let Some(observer) = observer {
                            match how % 3 {
                                2 => open.push(observer),
                                n => end(&observer, n == 0, ch.now),
                            }
                        }
                        if asked {
                            run_due(under.policy(), &mut ch);
                        }
                    }
                    PolicyEvent::EndCalls(ok) => {
                        for observer in open.drain(..) {
                            end(&observer, ok, ch.now);
                        }
                    }
                    PolicyEvent::LoadReport(which, cpu, qps, errors) => {
                        let Some(&id) = ch
                            .live
                            .keys()
                            .nth(usize::from(which) % ch.live.len().max(1))
                        else {
                            continue;
                        };
                        let report = OrcaLoadReport {
                            cpu_utilization: f64::from(cpu) / 100.0,
                            rps_fractional: f64::from(qps),
                            eps: f64::from(errors),
                            ..OrcaLoadReport::default()
                        };
                        under.policy().load_report(id, &report, &mut ch);
                    }
                    PolicyEvent::Switch(round_robin) => {
                        if let Under::Switch(switch) = &mut under {
                            let name = if round_robin {
                                "round_robin"
                            } else {
                                "pick_first"
                            };
                            let (builder, next) = parse(serde_json::json!({ name: {} }));
                            config = next;
                            switch.switch_to(builder, &mut ch);
                        }
                    }
                }
                for key in 0..2 {
                    if let (Some(observer), _) = ch.pick(key, &rules(&under)) {
                        end(&observer, true, ch.now);
                    }
                }
            }
        },
    );
}
