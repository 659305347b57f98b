use super::*;
use crate::policy::testing::{addr, endpoints, Recorder};
use anygrpc_codec::Code;
use serde_json::json;
use std::time::Instant;
use ConnectivityState::*;

const HEADER: &str = "x-shard";

fn policy(n: u16) -> (RingHash, Recorder) {
    let mut ctl = Recorder::at(Instant::now());
    let mut rh = RingHash::new(DEFAULT_RING_SIZE_CAP);
    let config = RingHashBuilder::default()
        .parse_config(&json!({ "requestHashHeader": HEADER }))
        .unwrap();
    rh.update(endpoints((1..=n).map(addr)), Some(&config), &mut ctl);
    (rh, ctl)
}

fn keyed(key: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(HEADER, key.parse().unwrap());
    headers
}

/// Connects every endpoint and reports each READY.
fn ready_all(rh: &mut RingHash, ctl: &mut Recorder) {
    for i in 0..rh.members.len() {
        rh.connect(i, ctl);
    }
    for id in ctl.take_connects() {
        rh.subchannel_state(id, Connecting, None, ctl);
        rh.subchannel_state(id, Ready, None, ctl);
    }
}

/// Endpoint `index`'s subchannel (its child's only one).
fn sub(rh: &RingHash, index: usize) -> SubchannelId {
    let child = rh.members[index].child.as_ref().expect("connected");
    *child.subchannels.keys().next().expect("a subchannel")
}

/// Where each of `keys` lands, with every endpoint READY.
fn placement(ctl: &Recorder, keys: &[String]) -> Vec<SubchannelId> {
    keys.iter()
        .map(|k| match ctl.pick_with(&keyed(k)) {
            Pick::Ready(id) => id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn config_fields_defaults_and_limits() {
    let parse = |v: serde_json::Value| RingHashConfig::from_json(&v);
    assert_eq!(parse(json!({})).unwrap(), RingHashConfig::default());
    let config =
        parse(json!({"minRingSize": 10, "maxRingSize": 20, "requestHashHeader": "X-Key"})).unwrap();
    assert_eq!((config.min_ring_size, config.max_ring_size), (10, 20));
    assert_eq!(config.request_hash_header.unwrap().as_str(), "x-key");
    assert_eq!(
        parse(json!({"requestHashHeader": ""}))
            .unwrap()
            .request_hash_header,
        None
    );
    for bad in [
        json!({"minRingSize": 0}),
        json!({"maxRingSize": 8388609}),
        json!({"minRingSize": 30, "maxRingSize": 20}),
        json!({"minRingSize": "10"}),
        json!({"requestHashHeader": "key-bin"}),
        json!({"requestHashHeader": "bad header"}),
        json!({"requestHashHeader": 3}),
        json!([]),
    ] {
        let err = RingHashBuilder::default().parse_config(&bad).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
}

#[test]
fn the_ring_holds_xxh64_of_each_address_and_count_sized_by_the_lightest_weight() {
    // XXH64's published test vector for the empty input, seed 0.
    assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
    let keys =
        |n: u16| -> Vec<(String, u32)> { (1..=n).map(|p| (addr(p).to_string(), 1)).collect() };
    // Three equal endpoints and a minimum of 1024: 342 entries each.
    let ring = Ring::new(&keys(3), 1024, 4096);
    assert_eq!(ring.entries.len(), 1026);
    assert!(ring.entries.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
    for (index, key) in ["127.0.0.1:1_0", "127.0.0.1:2_341", "127.0.0.1:3_17"]
        .iter()
        .enumerate()
    {
        let hash = xxh64(key.as_bytes(), 0);
        assert!(ring.entries.contains(&(hash, index)), "{key}");
    }
    assert!(!ring.entries.contains(&(xxh64(b"127.0.0.1:1_342", 0), 0)));
    // The maximum wins over the minimum.
    assert_eq!(Ring::new(&keys(3), 1024, 100).entries.len(), 100);
    // Weight 2 against 1: twice the entries.
    let weighted = Ring::new(&[("a".into(), 2), ("b".into(), 1)], 1024, 4096);
    let count = |i| weighted.entries.iter().filter(|(_, e)| *e == i).count();
    assert_eq!((count(0), count(1)), (684, 342));
    // A hash past the last entry wraps to the first.
    assert_eq!(ring.first_at(u64::MAX), 0);
    assert_eq!(ring.first_at(ring.entries[5].0), 5);
    assert_eq!(ring.first_at(ring.entries[5].0 + 1), 6);
}

#[test]
fn ring_sizes_are_capped_by_the_builder() {
    let mut ctl = Recorder::at(Instant::now());
    let mut rh = RingHash::new(64);
    let config = RingHashBuilder::default()
        .parse_config(
            &json!({"minRingSize": 1000, "maxRingSize": 100000, "requestHashHeader": HEADER}),
        )
        .unwrap();
    rh.update(endpoints([addr(1), addr(2)]), Some(&config), &mut ctl);
    assert_eq!(rh.ring.entries.len(), 64);
    let built = RingHashBuilder::with_ring_size_cap(0).build(1);
    assert!(format!("{built:?}").contains("ring_size_cap: 1"));
}

#[test]
fn nothing_connects_until_a_pick_lands_on_an_idle_endpoint() {
    let (mut rh, mut ctl) = policy(3);
    assert_eq!(ctl.state, Some(Idle));
    assert!(
        ctl.created.is_empty(),
        "no child, no subchannel, before a call"
    );
    rh.exit_idle(&mut ctl);
    assert!(ctl.created.is_empty());
    assert!(matches!(ctl.pick_with(&keyed("alice")), Pick::Queue));
    assert!(
        ctl.take_work(&mut rh),
        "the pick asks the policy to connect"
    );
    assert_eq!(ctl.created.len(), 1, "only the endpoint alice hashes to");
    let id = ctl.take_connects()[0];
    rh.subchannel_state(id, Connecting, None, &mut ctl);
    assert_eq!(ctl.state, Some(Connecting));
    assert!(matches!(ctl.pick_with(&keyed("alice")), Pick::Queue));
    assert!(!ctl.take_work(&mut rh), "CONNECTING: wait");
    rh.subchannel_state(id, Ready, None, &mut ctl);
    assert_eq!(ctl.state, Some(Ready));
    assert!(matches!(ctl.pick_with(&keyed("alice")), Pick::Ready(i) if i == id));
    assert_eq!(ctl.health_checked, vec![id]);
}

#[test]
fn an_endpoint_is_one_member_whichever_of_its_addresses_connects() {
    let mut ctl = Recorder::at(Instant::now());
    let mut rh = RingHash::new(DEFAULT_RING_SIZE_CAP);
    let config = RingHashBuilder::default()
        .parse_config(&json!({ "requestHashHeader": HEADER }))
        .unwrap();
    rh.update(
        vec![Endpoint::new(vec![addr(1), addr(2)])],
        Some(&config),
        &mut ctl,
    );
    assert_eq!(rh.ring.entries.len(), 1024, "one member");
    assert!(matches!(ctl.pick_with(&keyed("k")), Pick::Queue));
    ctl.take_work(&mut rh);
    let first = ctl.take_connects();
    rh.subchannel_state(
        first[0],
        TransientFailure,
        Some(&Status::unavailable("no route")),
        &mut ctl,
    );
    let second = ctl.take_connects();
    assert_eq!(
        ctl.created
            .iter()
            .find(|(id, _)| *id == second[0])
            .unwrap()
            .1,
        addr(2)
    );
    rh.subchannel_state(second[0], Ready, None, &mut ctl);
    assert!(matches!(ctl.pick_with(&keyed("k")), Pick::Ready(id) if id == second[0]));
}

#[test]
fn a_key_stays_on_its_endpoint_and_walks_on_past_a_failed_one() {
    let (mut rh, mut ctl) = policy(4);
    ready_all(&mut rh, &mut ctl);
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let before = placement(&ctl, &keys);
    assert_eq!(
        before,
        placement(&ctl, &keys),
        "the same key, the same endpoint"
    );
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(used.len(), 4, "keys spread over every endpoint");

    // Endpoint 1 loses its connection and fails to reconnect: its keys move to the next
    // READY entry, the others stay.
    let failed = sub(&rh, 1);
    let refused = Status::unavailable("refused");
    rh.subchannel_state(failed, Idle, None, &mut ctl);
    rh.connect(1, &mut ctl);
    assert_eq!(
        ctl.take_connects(),
        vec![failed],
        "its kept subchannel reconnects"
    );
    rh.subchannel_state(failed, Connecting, None, &mut ctl);
    rh.subchannel_state(failed, TransientFailure, Some(&refused), &mut ctl);
    assert_eq!(rh.members[1].state(), TransientFailure);
    assert_eq!(ctl.state, Some(Ready));
    let failed_over = placement(&ctl, &keys);
    for (was, now) in before.iter().zip(&failed_over) {
        if *was == failed {
            assert_ne!(*now, failed);
        } else {
            assert_eq!(was, now, "keys of healthy endpoints do not move");
        }
    }
    // Removing endpoint 3 gives each survivor a larger share (A42 sizes the ring by the
    // lightest endpoint): their old entries all stay, so a key moves only where a new entry
    // now comes first.
    rh.subchannel_state(failed, Idle, None, &mut ctl);
    rh.subchannel_state(failed, Connecting, None, &mut ctl);
    rh.subchannel_state(failed, Ready, None, &mut ctl);
    let last = sub(&rh, 3);
    let old_ring = rh.ring.clone();
    let config = RingHashBuilder::default()
        .parse_config(&json!({ "requestHashHeader": HEADER }))
        .unwrap();
    rh.update(
        endpoints([addr(1), addr(2), addr(3)]),
        Some(&config),
        &mut ctl,
    );
    assert_eq!(ctl.removed, vec![last]);
    for entry in old_ring.entries.iter().filter(|(_, e)| *e != 3) {
        assert!(rh.ring.entries.contains(entry), "a survivor's entry stays");
    }
    let after = placement(&ctl, &keys);
    let survivors = before.iter().filter(|id| **id != last).count();
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(was, now)| **was != last && was != now)
        .count();
    assert!(moved * 4 < survivors, "{moved} of {survivors} moved");
}

#[test]
fn a_pick_walks_to_the_next_idle_or_connecting_endpoint_past_failed_ones() {
    let (mut rh, mut ctl) = policy(2);
    let err = Status::unavailable("down");
    // Endpoint 0 fails; one failure of two is still CONNECTING, and the policy starts the
    // other endpoint itself.
    rh.connect(0, &mut ctl);
    let first = ctl.take_connects()[0];
    rh.subchannel_state(first, TransientFailure, Some(&err), &mut ctl);
    assert_eq!(ctl.state, Some(Connecting));
    let second = ctl.take_connects();
    assert_eq!(second.len(), 1, "the policy connects the other endpoint");
    rh.subchannel_state(second[0], Connecting, None, &mut ctl);
    // A key of either endpoint waits for the connecting one.
    for key in ["a", "b", "c", "d"] {
        assert!(matches!(ctl.pick_with(&keyed(key)), Pick::Queue));
    }
    rh.subchannel_state(second[0], TransientFailure, Some(&err), &mut ctl);
    assert_eq!(ctl.state, Some(TransientFailure));
    match ctl.pick_with(&keyed("k")) {
        Pick::Fail(status) => {
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.message().contains("down"), "{status:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn transient_failure_aggregation_and_sticky_failure() {
    let (mut rh, mut ctl) = policy(3);
    let err = Status::unavailable("refused");
    // Rule 4: one failure among several, the rest IDLE: CONNECTING, and the policy itself
    // connects an IDLE endpoint so it recovers without picks.
    rh.connect(0, &mut ctl);
    let a = ctl.take_connects()[0];
    rh.subchannel_state(a, TransientFailure, Some(&err), &mut ctl);
    assert_eq!(ctl.state, Some(Connecting));
    let b = ctl.take_connects()[0];
    rh.subchannel_state(b, Connecting, None, &mut ctl);
    assert_eq!(ctl.state, Some(Connecting));
    // Rule 2: two failures, none READY: TRANSIENT_FAILURE, and one more endpoint is tried.
    rh.subchannel_state(b, TransientFailure, Some(&err), &mut ctl);
    assert_eq!(ctl.state, Some(TransientFailure));
    assert!(ctl.resolutions > 0);
    assert_eq!(ctl.take_connects().len(), 1, "still trying one more");
    // A failed endpoint's backoff ends (IDLE): it retries at once and stays failed, also
    // while it connects.
    rh.subchannel_state(a, Idle, None, &mut ctl);
    assert!(ctl.take_connects().contains(&a));
    rh.subchannel_state(a, Connecting, None, &mut ctl);
    assert_eq!(ctl.state, Some(TransientFailure));
    assert_eq!(rh.members[0].state(), TransientFailure);
    // Rule 1: READY wins.
    rh.subchannel_state(a, Ready, None, &mut ctl);
    assert_eq!(ctl.state, Some(Ready));
    // A READY endpoint that loses its connection is IDLE.
    rh.subchannel_state(a, Idle, None, &mut ctl);
    assert_eq!(rh.members[0].state(), Idle);
    // Rule 6: a single endpoint that failed is TRANSIENT_FAILURE.
    let (mut one, mut ctl) = policy(1);
    one.connect(0, &mut ctl);
    let only = ctl.take_connects()[0];
    one.subchannel_state(only, TransientFailure, Some(&err), &mut ctl);
    assert_eq!(ctl.state, Some(TransientFailure));
}

#[test]
fn a_call_without_the_header_takes_any_ready_endpoint_and_connects_at_most_one() {
    let (mut rh, mut ctl) = policy(3);
    assert!(matches!(ctl.pick(), Pick::Queue));
    assert!(ctl.take_work(&mut rh));
    assert_eq!(ctl.created.len(), 1, "one endpoint asked, not three");
    let id = ctl.take_connects()[0];
    rh.subchannel_state(id, Connecting, None, &mut ctl);
    assert!(matches!(ctl.pick(), Pick::Queue));
    assert!(!ctl.take_work(&mut rh), "one is already connecting");
    rh.subchannel_state(id, Ready, None, &mut ctl);
    for _ in 0..20 {
        assert!(matches!(ctl.pick(), Pick::Ready(i) if i == id));
    }
}

#[test]
fn the_hash_comes_from_the_header_joined_values_or_the_router() {
    let (mut rh, mut ctl) = policy(8);
    ready_all(&mut rh, &mut ctl);
    let picker = ctl.picker.clone().unwrap();
    let mut two = http::HeaderMap::new();
    two.append(HEADER, "a".parse().unwrap());
    two.append(HEADER, "b".parse().unwrap());
    let joined = keyed("a,b");
    let pick =
        |headers: &http::HeaderMap| picker.pick(&PickInfo::new("/s/m", headers)).subchannel();
    assert_eq!(pick(&two), pick(&joined), "values join with a comma");
    let expected = |hash: u64| sub(&rh, rh.ring.entries[rh.ring.first_at(hash)].1);
    assert_eq!(pick(&joined), Some(expected(xxh64(b"a,b", 0))));

    // No header configured: the router's hash, or INTERNAL without one.
    let mut ctl = Recorder::at(Instant::now());
    let mut plain = RingHash::new(DEFAULT_RING_SIZE_CAP);
    plain.update(endpoints([addr(1), addr(2)]), None, &mut ctl);
    ready_all(&mut plain, &mut ctl);
    let picker = ctl.picker.clone().unwrap();
    let headers = keyed("ignored");
    match picker.pick(&PickInfo::new("/s/m", &headers)) {
        Pick::Fail(status) => assert_eq!(status.code(), Code::Internal),
        other => panic!("{other:?}"),
    }
    let entry = plain.ring.entries[7];
    let routed = PickInfo::new("/s/m", &headers).with_request_hash(entry.0);
    assert_eq!(
        picker.pick(&routed).subchannel(),
        Some(sub(&plain, entry.1))
    );
}

#[test]
fn no_addresses_fail_and_duplicates_add_weight() {
    let mut ctl = Recorder::at(Instant::now());
    let mut rh = RingHash::new(DEFAULT_RING_SIZE_CAP);
    rh.update(endpoints([]), None, &mut ctl);
    assert_eq!(ctl.state, Some(TransientFailure));
    assert!(matches!(ctl.pick(), Pick::Fail(s) if s.code() == Code::Unavailable));
    rh.update(endpoints([addr(1), addr(2), addr(1)]), None, &mut ctl);
    assert_eq!(rh.members.len(), 2, "one member per endpoint");
    let count = |i| rh.ring.entries.iter().filter(|(_, e)| *e == i).count();
    assert_eq!(count(0), 2 * count(1));
}

#[test]
fn endpoint_weights_and_hash_keys_place_the_ring() {
    let mut ctl = Recorder::at(Instant::now());
    let mut rh = RingHash::new(DEFAULT_RING_SIZE_CAP);
    let list = vec![
        Endpoint::from(addr(1)).with_weight(3),
        Endpoint::from(addr(2)).with_hash_key("shard-b"),
    ];
    rh.update(list, None, &mut ctl);
    let count = |i| rh.ring.entries.iter().filter(|(_, e)| *e == i).count();
    assert_eq!(count(0), 3 * count(1), "weight 3 against 1");
    // A76: the key, not the address, is hashed.
    assert!(rh.ring.entries.contains(&(xxh64(b"shard-b_0", 0), 1)));
    assert!(!rh.ring.entries.contains(&(xxh64(b"127.0.0.1:2_0", 0), 1)));
    assert!(rh.ring.entries.contains(&(xxh64(b"127.0.0.1:1_0", 0), 0)));
}
