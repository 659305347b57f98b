//! `ring_hash_experimental` (gRFCs A42, A61 and A76): consistent hashing of calls onto
//! endpoints, for session affinity and sharded caches.
//!
//! Each endpoint takes a share of a ring of XXH64 hashes (of `"{address}_{n}"`, as the C-core
//! and grpc-go place them, so all three route a key to the same backend). A call's hash is
//! the XXH64 of its `requestHashHeader` value (A76), or the hash its router set
//! ([`PickInfo::request_hash`]); the call goes to the first READY endpoint at or after it on
//! the ring.
//!
//! Each endpoint is a `pick_first` child over its addresses (A61), made when the endpoint is
//! first wanted: nothing connects until a call needs it. A pick that lands on an IDLE endpoint
//! asks the policy to connect it ([`PickInfo::request_work`]) and waits. An endpoint that
//! failed stays TRANSIENT_FAILURE until it connects, retrying after each backoff; one that
//! loses its connection goes back to IDLE.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anygrpc_codec::{Endpoint, Status};
use xxhash_rust::xxh64::xxh64;

use crate::{
    child::{ChildPolicy, Stepped},
    pick_first::PickFirstBuilder,
    policy::{
        ChannelControl, FixedPicker, LbPolicy, LbPolicyBuilder, Pick, PickInfo, Picker,
        PolicyConfig, SubchannelId,
    },
    ConnectivityState,
};

/// The policy's name in `loadBalancingConfig`, as the C-core and grpc-go register it.
pub const NAME: &str = "ring_hash_experimental";

/// `minRingSize` when the config has none.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `maxRingSize` when the config has none.
pub const DEFAULT_MAX_RING_SIZE: u64 = 4096;
/// The largest ring size a config may name (Envoy's limit).
pub const MAX_RING_SIZE_LIMIT: u64 = 8 * 1024 * 1024;
/// The client's own cap on ring sizes, whatever the config says (A42), unless the builder
/// is given another ([`RingHashBuilder::with_ring_size_cap`]).
pub const DEFAULT_RING_SIZE_CAP: u64 = 4096;

/// Builds [`RingHash`] policies. Config: `{"minRingSize": 1024, "maxRingSize": 4096,
/// "requestHashHeader": "x-user"}`, every field optional.
#[derive(Debug, Clone, Copy)]
pub struct RingHashBuilder {
    ring_size_cap: u64,
}

impl Default for RingHashBuilder {
    fn default() -> RingHashBuilder {
        RingHashBuilder {
            ring_size_cap: DEFAULT_RING_SIZE_CAP,
        }
    }
}

impl RingHashBuilder {
    /// Caps the ring sizes of every config this builder's policies use at `cap` entries
    /// (at least 1), where the default caps them at [`DEFAULT_RING_SIZE_CAP`]: each entry
    /// costs 16 bytes, and a ring is built on every address update.
    pub fn with_ring_size_cap(cap: u64) -> RingHashBuilder {
        RingHashBuilder {
            ring_size_cap: cap.clamp(1, MAX_RING_SIZE_LIMIT),
        }
    }
}

impl LbPolicyBuilder for RingHashBuilder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, _: u64) -> Box<dyn LbPolicy> {
        Box::new(RingHash::new(self.ring_size_cap))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        RingHashConfig::from_json(config)?;
        Ok(PolicyConfig::new(NAME, config))
    }
}

/// A parsed `ring_hash_experimental` config.
#[derive(Debug, Clone, PartialEq)]
struct RingHashConfig {
    min_ring_size: u64,
    max_ring_size: u64,
    request_hash_header: Option<http::HeaderName>,
}

impl RingHashConfig {
    fn from_json(config: &serde_json::Value) -> Result<RingHashConfig, Status> {
        let bad = |what: String| Status::invalid_argument(format!("ring_hash config: {what}"));
        let object = config
            .as_object()
            .ok_or_else(|| bad("must be an object".into()))?;
        let size = |key: &str, default: u64| match object.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=MAX_RING_SIZE_LIMIT).contains(n))
                .ok_or_else(|| bad(format!("{key} must be in [1, {MAX_RING_SIZE_LIMIT}]"))),
        };
        let min_ring_size = size("minRingSize", DEFAULT_MIN_RING_SIZE)?;
        let max_ring_size = size("maxRingSize", DEFAULT_MAX_RING_SIZE)?;
        if min_ring_size > max_ring_size {
            return Err(bad("maxRingSize cannot be smaller than minRingSize".into()));
        }
        let request_hash_header = match object.get("requestHashHeader") {
            None => None,
            Some(value) => {
                let name = value
                    .as_str()
                    .ok_or_else(|| bad("requestHashHeader must be a string".into()))?;
                if name.is_empty() {
                    None
                } else {
                    let header = http::HeaderName::from_bytes(name.as_bytes())
                        .ok()
                        .filter(|h| !h.as_str().ends_with("-bin"))
                        .ok_or_else(|| {
                            bad(format!(
                                "requestHashHeader {name:?} is not a valid non-binary header name"
                            ))
                        })?;
                    Some(header)
                }
            }
        };
        Ok(RingHashConfig {
            min_ring_size,
            max_ring_size,
            request_hash_header,
        })
    }
}

impl Default for RingHashConfig {
    fn default() -> RingHashConfig {
        RingHashConfig {
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
            request_hash_header: None,
        }
    }
}

/// The ring: hashes in ascending order, each naming an endpoint by index.
#[derive(Debug)]
struct Ring {
    entries: Vec<(u64, usize)>,
}

impl Ring {
    /// Places endpoints with these weights: the lightest gets a whole number of entries,
    /// at least `min_size` in all and at most `max_size` (A42).
    fn new(keys: &[(String, u32)], min_size: u64, max_size: u64) -> Ring {
        let sum: u64 = keys.iter().map(|(_, w)| u64::from(*w)).sum();
        let min_weight = keys
            .iter()
            .map(|(_, w)| f64::from(*w) / sum as f64)
            .fold(1.0, f64::min);
        let scale = ((min_weight * min_size as f64).ceil() / min_weight).min(max_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0, 0.0);
        let mut key = String::new();
        for (index, (address, weight)) in keys.iter().enumerate() {
            target += scale * f64::from(*weight) / sum as f64;
            let mut count = 0u64;
            while current < target {
                key.clear();
                use std::fmt::Write;
                let _ = write!(key, "{address}_{count}");
                entries.push((xxh64(key.as_bytes(), 0), index));
                count += 1;
                current += 1.0;
            }
        }
        entries.sort_unstable_by_key(|(hash, _)| *hash);
        Ring { entries }
    }

    /// The index of the first entry at or after `hash`, wrapping to the start.
    fn first_at(&self, hash: u64) -> usize {
        let at = self.entries.partition_point(|(h, _)| *h < hash);
        if at == self.entries.len() {
            0
        } else {
            at
        }
    }
}

/// One endpoint of the ring: its `pick_first` child (A61), made the first time a call or the
/// policy wants it connected.
#[derive(Debug)]
struct Member {
    endpoint: Endpoint,
    weight: u32,
    child: Option<ChildPolicy>,
}

impl Member {
    /// Its state for picks and for the aggregate: IDLE until it is first asked to connect,
    /// then its `pick_first`'s (which stays TRANSIENT_FAILURE from a failure until it is READY
    /// again, retrying as its backoff allows).
    fn state(&self) -> ConnectivityState {
        self.child
            .as_ref()
            .map_or(ConnectivityState::Idle, |c| c.state)
    }
}

/// Endpoints calls asked to connect, by index into the picker's snapshot, for the policy to
/// act on from the control plane.
#[derive(Debug, Default)]
struct Requests {
    /// The ring's generation the indices belong to, and the indices.
    wanted: Mutex<(u64, Vec<usize>)>,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<usize>)> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for endpoint `index` of ring `generation`; requests of an older ring are dropped.
    fn ask(&self, generation: u64, index: usize) {
        let mut requests = self.lock();
        let (asked_of, wanted) = &mut *requests;
        if *asked_of != generation {
            *asked_of = generation;
            wanted.clear();
        }
        if !wanted.contains(&index) {
            wanted.push(index);
        }
    }

    /// Takes what was asked of ring `generation`.
    fn take(&self, generation: u64) -> Vec<usize> {
        let mut requests = self.lock();
        let (asked_of, wanted) = &mut *requests;
        let wanted = std::mem::take(wanted);
        match *asked_of == generation {
            true => wanted,
            false => Vec::new(),
        }
    }

    fn pending(&self) -> bool {
        !self.lock().1.is_empty()
    }
}

/// The `ring_hash_experimental` policy.
#[derive(Debug)]
pub struct RingHash {
    seed: u64,
    ring_size_cap: u64,
    config: RingHashConfig,
    child_config: PolicyConfig,
    /// Endpoints in the resolver's order (repeats merged, weights added).
    members: Vec<Member>,
    ring: Arc<Ring>,
    /// Bumped with each new ring, so a request made on an older picker is dropped.
    generation: u64,
    requests: Arc<Requests>,
    /// A time the policy has seen: what `poll_timeout` answers while requests wait.
    seen: Option<Instant>,
    /// The aggregate state last published.
    state: Option<ConnectivityState>,
}

impl RingHash {
    /// A policy with no addresses yet; config ring sizes are capped at `ring_size_cap`.
    pub fn new(ring_size_cap: u64) -> RingHash {
        RingHash {
            seed: 0,
            ring_size_cap,
            config: RingHashConfig::default(),
            child_config: PolicyConfig::new("pick_first", &serde_json::json!({})),
            members: Vec::new(),
            ring: Arc::new(Ring {
                entries: Vec::new(),
            }),
            generation: 0,
            requests: Arc::default(),
            seen: None,
            state: None,
        }
    }

    /// Starts endpoint `index` connecting: makes its child, or wakes it from IDLE.
    fn connect(&mut self, index: usize, ctl: &mut dyn ChannelControl) {
        let Some(member) = self.members.get_mut(index) else {
            return;
        };
        let stepped = match member.child.as_mut() {
            Some(child) if child.state == ConnectivityState::Idle => child.exit_idle(ctl),
            Some(_) => return,
            None => {
                self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let child = member
                    .child
                    .insert(ChildPolicy::new(Arc::new(PickFirstBuilder), self.seed));
                child.update(vec![member.endpoint.clone()], &self.child_config, ctl)
            }
        };
        for (id, _) in stepped.created {
            ctl.enable_health_check(id);
        }
    }

    /// Publishes the aggregate state (A42's six rules) and a picker over a snapshot of the
    /// endpoints; while CONNECTING or failing with nothing connecting, connects one IDLE
    /// endpoint so the policy recovers without picks.
    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        use ConnectivityState::*;
        let states: Vec<ConnectivityState> = self.members.iter().map(Member::state).collect();
        let count = |s: ConnectivityState| states.iter().filter(|m| **m == s).count();
        let (ready, connecting, failing) =
            (count(Ready), count(Connecting), count(TransientFailure));
        let idle = states.iter().position(|s| *s == Idle);
        let state = if ready > 0 {
            Ready
        } else if failing >= 2 {
            TransientFailure
        } else if connecting > 0 || (failing == 1 && states.len() > 1) {
            Connecting
        } else if idle.is_some() {
            Idle
        } else {
            TransientFailure
        };
        if matches!(state, Connecting | TransientFailure) && connecting == 0 {
            if let Some(index) = idle {
                // Its child's CONNECTING comes back as a subchannel event and a new picker.
                self.connect(index, ctl);
            }
        }
        let picker = RingHashPicker {
            ring: self.ring.clone(),
            members: self
                .members
                .iter()
                .map(|m| (m.state(), m.child.as_ref().map(|c| c.picker.clone())))
                .collect(),
            failures: self
                .members
                .iter()
                .map(|m| {
                    m.child.as_ref().and_then(|c| match c.state {
                        TransientFailure => c
                            .picker
                            .pick(&PickInfo::new("", &http::HeaderMap::new()))
                            .failure(),
                        _ => None,
                    })
                })
                .collect(),
            header: self.config.request_hash_header.clone(),
            any_connecting: connecting > 0,
            requests: self.requests.clone(),
            generation: self.generation,
        };
        ctl.update_picker(state, Arc::new(picker));
        if state == TransientFailure && self.state != Some(state) {
            ctl.request_resolution();
        }
        self.state = Some(state);
    }

    fn fail(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        self.state = Some(ConnectivityState::TransientFailure);
        ctl.update_picker(
            ConnectivityState::TransientFailure,
            Arc::new(FixedPicker(Pick::Fail(status))),
        );
        ctl.request_resolution();
    }

    /// Runs `f` on the child owning subchannel `id`, health-checking what it creates.
    fn drive_owner(
        &mut self,
        id: SubchannelId,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) -> bool {
        let Some(child) = self
            .members
            .iter_mut()
            .filter_map(|m| m.child.as_mut())
            .find(|c| c.owns(id))
        else {
            return false;
        };
        let stepped = f(child, ctl);
        for (id, _) in stepped.created {
            ctl.enable_health_check(id);
        }
        true
    }
}

impl LbPolicy for RingHash {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.seen = Some(ctl.now());
        self.config = config
            .and_then(|c| RingHashConfig::from_json(&c.config).ok())
            .unwrap_or_default();
        // Repeated endpoints add to the first one's weight (1 when it names none).
        let mut merged: Vec<(Endpoint, u32)> = Vec::new();
        for endpoint in endpoints.into_iter().filter(|e| !e.addresses.is_empty()) {
            let weight = endpoint.weight.filter(|w| *w > 0).unwrap_or(1);
            match merged
                .iter_mut()
                .find(|(e, _)| e.addresses == endpoint.addresses)
            {
                Some((_, total)) => *total = total.saturating_add(weight),
                None => merged.push((endpoint, weight)),
            }
        }
        if merged.is_empty() {
            let status = Status::unavailable("the resolver returned no addresses");
            return self.resolver_error(status, ctl);
        }
        let mut old = std::mem::take(&mut self.members);
        for (endpoint, weight) in merged {
            let child = old
                .iter()
                .position(|m| m.endpoint.addresses == endpoint.addresses)
                .and_then(|i| old.swap_remove(i).child);
            self.members.push(Member {
                endpoint,
                weight,
                child,
            });
        }
        for member in old {
            if let Some(child) = member.child {
                child.shut_down(ctl);
            }
        }
        // An endpoint is placed by its hash key (A76), or its first address.
        let keys: Vec<(String, u32)> = self
            .members
            .iter()
            .map(|m| {
                let key = m.endpoint.hash_key.clone();
                (
                    key.unwrap_or_else(|| m.endpoint.addresses[0].to_string()),
                    m.weight,
                )
            })
            .collect();
        self.ring = Arc::new(Ring::new(
            &keys,
            self.config.min_ring_size.min(self.ring_size_cap),
            self.config.max_ring_size.min(self.ring_size_cap),
        ));
        self.generation += 1;
        self.requests.lock().1.clear();
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.members.is_empty() {
            self.fail(status, ctl);
        }
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.seen = Some(ctl.now());
        let owned = self.drive_owner(id, ctl, |child, ctl| {
            child.subchannel_state(id, state, status, ctl)
        });
        if owned {
            self.publish(ctl);
        }
    }

    fn exit_idle(&mut self, _: &mut dyn ChannelControl) {
        // Picks connect what they need.
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let wanted = self.requests.pending();
        let children = self
            .members
            .iter()
            .filter_map(|m| m.child.as_ref()?.poll_timeout())
            .min();
        match wanted {
            true => self.seen,
            false => children,
        }
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        self.seen = Some(ctl.now());
        for index in self.requests.take(self.generation) {
            self.connect(index, ctl);
        }
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                let stepped = child.handle_timeout(ctl);
                for (id, _) in stepped.created {
                    ctl.enable_health_check(id);
                }
            }
        }
        self.publish(ctl);
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &crate::OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_owner(id, ctl, |child, ctl| child.load_report(id, report, ctl));
    }
}

/// Picks on a snapshot of the ring's endpoints.
#[derive(Debug)]
struct RingHashPicker {
    ring: Arc<Ring>,
    /// Each endpoint's state and its child's picker, by the ring's endpoint index.
    members: Vec<(ConnectivityState, Option<Arc<dyn Picker>>)>,
    /// Each failed endpoint's failure.
    failures: Vec<Option<Status>>,
    header: Option<http::HeaderName>,
    /// Some endpoint is CONNECTING: a random-hash pick connects nothing more.
    any_connecting: bool,
    requests: Arc<Requests>,
    generation: u64,
}

impl RingHashPicker {
    /// The call's hash: the header's values joined by commas, or the router's hash; `None`
    /// when the header is configured but absent (a random hash, A76).
    fn request_hash(&self, call: &PickInfo<'_>) -> Result<Option<u64>, Status> {
        let Some(header) = &self.header else {
            return call.request_hash.map(Some).ok_or_else(|| {
                Status::internal(
                    "ring_hash has no requestHashHeader and the call has no request hash",
                )
            });
        };
        let mut values = call.metadata.get_all(header).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        let Some(second) = values.next() else {
            return Ok(Some(xxh64(first.as_bytes(), 0)));
        };
        let mut joined = [first.as_bytes(), second.as_bytes()].join(&b","[..]);
        for value in values {
            joined.push(b',');
            joined.extend_from_slice(value.as_bytes());
        }
        Ok(Some(xxh64(&joined, 0)))
    }

    /// Asks the policy to connect endpoint `index` (it acts from the control plane).
    fn connect(&self, index: usize, call: &PickInfo<'_>) {
        self.requests.ask(self.generation, index);
        call.request_work();
    }

    fn ready(&self, index: usize, call: &PickInfo<'_>) -> Pick {
        match &self.members[index].1 {
            Some(picker) => picker.pick(call),
            None => Pick::Queue,
        }
    }
}

impl Picker for RingHashPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        use ConnectivityState::*;
        let entries = &self.ring.entries;
        if entries.is_empty() {
            return Pick::Fail(Status::unavailable("ring_hash has no endpoints"));
        }
        let hash = match self.request_hash(call) {
            Ok(hash) => hash,
            Err(status) => return Pick::Fail(status),
        };
        let first = self
            .ring
            .first_at(hash.unwrap_or_else(|| fastrand::u64(..)));
        let walk = (0..entries.len()).map(|i| entries[(first + i) % entries.len()].1);
        match hash {
            Some(_) => {
                for index in walk {
                    match self.members[index].0 {
                        Ready => return self.ready(index, call),
                        Idle => {
                            self.connect(index, call);
                            return Pick::Queue;
                        }
                        Connecting => return Pick::Queue,
                        _ => {}
                    }
                }
            }
            // A random hash takes the first READY endpoint, connecting at most one on the way.
            None => {
                let mut asked = self.any_connecting;
                for index in walk {
                    let state = self.members[index].0;
                    if state == Ready {
                        return self.ready(index, call);
                    }
                    if !asked && state == Idle {
                        self.connect(index, call);
                        asked = true;
                    }
                }
                if asked {
                    return Pick::Queue;
                }
            }
        }
        let failure = self.failures[entries[first].1]
            .as_ref()
            .map_or("", Status::message);
        Pick::Fail(Status::unavailable(format!(
            "ring hash cannot find a connected endpoint; first failure: {failure}"
        )))
    }
}

#[cfg(test)]
mod tests;
