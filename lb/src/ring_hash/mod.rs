//! `ring_hash_experimental` (gRFCs A42, A61 and A76): consistent hashing of calls onto
//! endpoints, for session affinity and sharded caches.
//!
//! Each endpoint takes a share of a ring of XXH64 hashes (of `"{address}_{n}"`, as the C-core
//! and grpc-go place them, so all three route a key to the same backend). A call's hash is
//! the XXH64 of its `requestHashHeader` value (A76), or the hash its router set
//! ([`PickInfo::request_hash`]); the call goes to the first READY endpoint at or after it on
//! the ring.
//!
//! Nothing connects until a call needs it: a pick that lands on an IDLE endpoint asks it to
//! connect and waits. An endpoint that failed stays TRANSIENT_FAILURE until it connects, and
//! keeps retrying after each backoff; one that loses its connection goes back to IDLE.

use std::{collections::HashMap, sync::Arc};

use anygrpc_codec::{Address, Endpoint, Status};
use xxhash_rust::xxh64::xxh64;

use crate::{
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

/// One member of the ring (an address) as the policy sees it.
#[derive(Debug)]
struct Member {
    id: SubchannelId,
    /// Its state for picks and for the aggregate: TRANSIENT_FAILURE from a failure until it
    /// is READY again.
    state: ConnectivityState,
    status: Option<Status>,
}

/// The `ring_hash_experimental` policy.
#[derive(Debug)]
pub struct RingHash {
    ring_size_cap: u64,
    config: RingHashConfig,
    /// Endpoints in the resolver's order (duplicates merged), and their weights.
    order: Vec<(Address, u32)>,
    endpoints: HashMap<Address, Member>,
    ring: Arc<Ring>,
    /// The aggregate state last published.
    state: Option<ConnectivityState>,
}

impl RingHash {
    /// A policy with no addresses yet; config ring sizes are capped at `ring_size_cap`.
    pub fn new(ring_size_cap: u64) -> RingHash {
        RingHash {
            ring_size_cap,
            config: RingHashConfig::default(),
            order: Vec::new(),
            endpoints: HashMap::new(),
            ring: Arc::new(Ring {
                entries: Vec::new(),
            }),
            state: None,
        }
    }

    /// Publishes the aggregate state (A42's six rules) and a picker over a snapshot of the
    /// endpoints; while CONNECTING or failing with nothing connecting, connects one IDLE
    /// endpoint so the policy recovers without picks.
    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        use ConnectivityState::*;
        let states: Vec<_> = self
            .order
            .iter()
            .map(|(address, _)| &self.endpoints[address])
            .collect();
        let count = |s: ConnectivityState| states.iter().filter(|e| e.state == s).count();
        let (ready, connecting, failing) =
            (count(Ready), count(Connecting), count(TransientFailure));
        let idle = states.iter().find(|e| e.state == Idle).map(|e| e.id);
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
        let picker = RingHashPicker {
            ring: self.ring.clone(),
            endpoints: states.iter().map(|e| (e.id, e.state)).collect(),
            first_failures: states.iter().map(|e| e.status.clone()).collect(),
            header: self.config.request_hash_header.clone(),
            any_connecting: connecting > 0,
        };
        ctl.update_picker(state, Arc::new(picker));
        if matches!(state, Connecting | TransientFailure) && connecting == 0 {
            if let Some(id) = idle {
                ctl.connect(id);
            }
        }
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
}

impl LbPolicy for RingHash {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.config = config
            .and_then(|c| RingHashConfig::from_json(&c.config).ok())
            .unwrap_or_default();
        if endpoints.iter().all(|e| e.addresses.is_empty()) {
            let status = Status::unavailable("the resolver returned no addresses");
            return self.resolver_error(status, ctl);
        }
        // Each address is a member of the ring with its endpoint's weight (1 when it has
        // none); a repeated address adds to the first one's weight. An endpoint of one
        // address may name its own key on the ring (A76).
        let mut order: Vec<(Address, u32)> = Vec::new();
        let mut index: HashMap<Address, usize> = HashMap::new();
        let mut hash_keys: HashMap<Address, String> = HashMap::new();
        for endpoint in endpoints {
            let weight = endpoint.weight.filter(|w| *w > 0).unwrap_or(1);
            if let ([address], Some(key)) = (&endpoint.addresses[..], &endpoint.hash_key) {
                hash_keys
                    .entry(address.clone())
                    .or_insert_with(|| key.clone());
            }
            for address in endpoint.addresses {
                match index.get(&address) {
                    Some(&i) => order[i].1 = order[i].1.saturating_add(weight),
                    None => {
                        index.insert(address.clone(), order.len());
                        order.push((address, weight));
                    }
                }
            }
        }
        let mut old = std::mem::take(&mut self.endpoints);
        for (address, _) in &order {
            let endpoint = old.remove(address).unwrap_or_else(|| {
                let id = ctl.new_subchannel(address);
                ctl.enable_health_check(id);
                Member {
                    id,
                    state: ConnectivityState::Idle,
                    status: None,
                }
            });
            self.endpoints.insert(address.clone(), endpoint);
        }
        for endpoint in old.into_values() {
            ctl.remove_subchannel(endpoint.id);
        }
        let keys: Vec<(String, u32)> = order
            .iter()
            .map(|(a, w)| (hash_keys.remove(a).unwrap_or_else(|| a.to_string()), *w))
            .collect();
        self.ring = Arc::new(Ring::new(
            &keys,
            self.config.min_ring_size.min(self.ring_size_cap),
            self.config.max_ring_size.min(self.ring_size_cap),
        ));
        self.order = order;
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.order.is_empty() {
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
        use ConnectivityState::*;
        let Some(endpoint) = self.endpoints.values_mut().find(|e| e.id == id) else {
            return;
        };
        let failing = endpoint.state == TransientFailure;
        endpoint.state = match state {
            Ready => Ready,
            TransientFailure => TransientFailure,
            // A failed endpoint retries as soon as its backoff allows, and stays failed
            // until it connects.
            Idle if failing => {
                ctl.connect(id);
                TransientFailure
            }
            Connecting if failing => TransientFailure,
            Idle => {
                if endpoint.state == Ready {
                    ctl.request_resolution();
                }
                Idle
            }
            other => other,
        };
        if state == TransientFailure {
            let status = status
                .cloned()
                .unwrap_or_else(|| Status::unavailable("connection failed"));
            endpoint.status = Some(status);
        }
        self.publish(ctl);
    }

    fn exit_idle(&mut self, _: &mut dyn ChannelControl) {
        // Picks connect what they need.
    }
}

/// Picks on a snapshot of the ring's endpoints.
#[derive(Debug)]
struct RingHashPicker {
    ring: Arc<Ring>,
    /// Each endpoint's subchannel and state, by the ring's endpoint index.
    endpoints: Vec<(SubchannelId, ConnectivityState)>,
    first_failures: Vec<Option<Status>>,
    header: Option<http::HeaderName>,
    /// Some endpoint is CONNECTING: a random-hash pick connects nothing more.
    any_connecting: bool,
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
                    let (id, state) = self.endpoints[index];
                    match state {
                        Ready => return Pick::Ready(id),
                        Idle => {
                            call.connect(id);
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
                    let (id, state) = self.endpoints[index];
                    if state == Ready {
                        return Pick::Ready(id);
                    }
                    if !asked && state == Idle {
                        call.connect(id);
                        asked = true;
                    }
                }
                if asked {
                    return Pick::Queue;
                }
            }
        }
        let failure = self.first_failures[entries[first].1]
            .as_ref()
            .map_or("", Status::message);
        Pick::Fail(Status::unavailable(format!(
            "ring hash cannot find a connected endpoint; first failure: {failure}"
        )))
    }
}

#[cfg(test)]
mod tests;
