use super::*;
use crate::policy::testing::{addr, Recorder};
use anygrpc_codec::Code;
use serde_json::json;
use ConnectivityState::*;

fn config(ignore_p1_resolution: bool) -> PolicyConfig {
    PriorityBuilder::default()
        .parse_config_in(
            &json!({
                "priorities": ["p0", "p1"],
                "children": {
                    "p0": {"config": [{"round_robin": {}}]},
                    "p1": {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": ignore_p1_resolution},
                },
            }),
            &PolicyRegistry::default(),
        )
        .unwrap()
}

/// Ports 1 and 2 under p0, 11 and 12 under p1.
fn endpoints() -> Vec<Endpoint> {
    [("p0", 1), ("p0", 2), ("p1", 11), ("p1", 12)]
        .map(|(name, port)| Endpoint::from(addr(port)).with_path([name]))
        .to_vec()
}

fn started() -> (Priority, Recorder) {
    let mut ctl = Recorder::at(Instant::now());
    let mut priority = Priority::new(3, DEFAULT_FAILOVER_TIMEOUT);
    priority.update(endpoints(), Some(&config(false)), &mut ctl);
    (priority, ctl)
}

fn fail(priority: &mut Priority, ctl: &mut Recorder, ids: &[u64]) {
    let err = Status::unavailable("refused");
    for id in ids {
        priority.subchannel_state(SubchannelId(*id), TransientFailure, Some(&err), ctl);
    }
}

fn picked_port(ctl: &Recorder) -> u16 {
    let id = ctl.pick().subchannel().expect("a READY pick");
    let address = &ctl.created.iter().find(|(i, _)| *i == id).unwrap().1;
    address
        .to_string()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn config_names_every_priority_among_the_children() {
    let parse = |c: serde_json::Value| {
        PriorityBuilder::default().parse_config_in(&c, &PolicyRegistry::default())
    };
    for bad in [
        json!({"priorities": ["p0"], "children": {}}),
        json!({"priorities": ["p0", "p0"], "children": {"p0": {"config": [{"round_robin": {}}]}}}),
        json!({"priorities": ["p0"], "children": {"p0": {}}}),
        json!({"priorities": ["p0"], "children": {"p0": {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": 1}}}),
        json!({"children": {"p0": {"config": [{"round_robin": {}}]}}}),
    ] {
        assert_eq!(
            parse(bad.clone()).unwrap_err().code(),
            Code::InvalidArgument,
            "{bad}"
        );
    }
}

#[test]
fn the_next_priority_starts_when_the_first_fails_or_after_the_failover_timeout() {
    // p0 fails at once: p1 starts without waiting.
    let (mut priority, mut ctl) = started();
    assert_eq!(ctl.created.len(), 2, "only p0 starts");
    assert_eq!(
        priority.poll_timeout(),
        Some(ctl.now() + DEFAULT_FAILOVER_TIMEOUT)
    );
    fail(&mut priority, &mut ctl, &[1, 2]);
    assert_eq!(ctl.created.len(), 4, "p1 starts");
    assert_eq!(priority.current_child(), Some("p1"));
    priority.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
    assert_eq!(ctl.state, Some(Ready));
    assert_eq!(picked_port(&ctl), 11);

    // p0 hangs in CONNECTING: p1 starts 10 s later, not before.
    let (mut priority, mut ctl) = started();
    priority.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
    ctl.advance(Duration::from_secs(9));
    priority.handle_timeout(&mut ctl);
    assert_eq!(ctl.created.len(), 2, "p0 still has time");
    assert_eq!(ctl.state, Some(Connecting));
    ctl.advance(Duration::from_secs(1));
    priority.handle_timeout(&mut ctl);
    assert_eq!(ctl.created.len(), 4, "the failover timeout starts p1");
    assert_eq!(priority.current_child(), Some("p1"));
    // p0 connecting late takes the calls back.
    priority.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
    assert_eq!(picked_port(&ctl), 11);
    priority.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
    assert_eq!(priority.current_child(), Some("p0"));
    assert_eq!(picked_port(&ctl), 1);
}

#[test]
fn a_lower_priority_stays_warm_for_its_retention_and_then_goes() {
    let (mut priority, mut ctl) = started();
    fail(&mut priority, &mut ctl, &[1, 2]);
    priority.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
    priority.subchannel_state(SubchannelId(4), Ready, None, &mut ctl);
    // p0 comes back: calls return to it, and p1 stays connected.
    priority.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
    assert_eq!(priority.current_child(), Some("p0"));
    assert!(ctl.removed.is_empty());
    // p0 fails again within the retention: p1 serves at once, with no new subchannel.
    ctl.advance(Duration::from_secs(60));
    priority.handle_timeout(&mut ctl);
    fail(&mut priority, &mut ctl, &[1]);
    assert_eq!(priority.current_child(), Some("p1"));
    assert_eq!(ctl.state, Some(Ready));
    assert_eq!(ctl.created.len(), 4);
    // p0 back; 15 minutes later p1 is removed.
    priority.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
    priority.subchannel_state(SubchannelId(1), Connecting, None, &mut ctl);
    priority.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
    assert_eq!(priority.current_child(), Some("p0"));
    let back = ctl.now();
    ctl.now = priority.poll_timeout();
    assert_eq!(ctl.now(), back + RETENTION);
    priority.handle_timeout(&mut ctl);
    let mut removed = ctl.removed.clone();
    removed.sort();
    assert_eq!(removed, vec![SubchannelId(3), SubchannelId(4)]);
    assert_eq!(priority.current_child(), Some("p0"));
}

#[test]
fn a_ready_child_that_starts_reconnecting_gets_the_failover_timeout_again() {
    let (mut priority, mut ctl) = started();
    priority.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
    priority.subchannel_state(
        SubchannelId(2),
        TransientFailure,
        Some(&Status::unavailable("x")),
        &mut ctl,
    );
    assert_eq!(priority.poll_timeout(), None, "no timer while READY");
    // p0 loses its connection: round_robin goes CONNECTING, and the timer restarts.
    ctl.advance(Duration::from_secs(100));
    priority.subchannel_state(SubchannelId(1), Idle, None, &mut ctl);
    assert_eq!(ctl.state, Some(Connecting));
    assert_eq!(
        priority.poll_timeout(),
        Some(ctl.now() + DEFAULT_FAILOVER_TIMEOUT)
    );
    ctl.now = priority.poll_timeout();
    priority.handle_timeout(&mut ctl);
    assert_eq!(priority.current_child(), Some("p1"));
}

#[test]
fn a_child_may_have_its_resolution_requests_ignored() {
    let mut ctl = Recorder::at(Instant::now());
    let mut priority = Priority::new(3, DEFAULT_FAILOVER_TIMEOUT);
    priority.update(endpoints(), Some(&config(true)), &mut ctl);
    fail(&mut priority, &mut ctl, &[1, 2]);
    let asked = ctl.resolutions;
    assert!(asked > 0, "p0's round_robin asked");
    fail(&mut priority, &mut ctl, &[3, 4]);
    assert_eq!(ctl.resolutions, asked, "p1's requests were dropped");
    assert_eq!(ctl.state, Some(TransientFailure));
    assert_eq!(
        priority.current_child(),
        Some("p1"),
        "the last priority, failing"
    );
    assert!(matches!(ctl.pick(), Pick::Fail(_)));
}
