use super::*;
use crate::policy::testing::{addr, endpoints, Recorder};
use serde_json::json;
use std::collections::HashSet;
use ConnectivityState::*;

fn parse(config: serde_json::Value) -> Result<PolicyConfig, Status> {
    OutlierDetectionBuilder.parse_config_in(&config, &PolicyRegistry::default())
}

/// Failure-percentage ejection over round robin: 10 s sweeps, 30 s base ejection.
fn failure_config(extra: serde_json::Value) -> PolicyConfig {
    let mut config = json!({
        "interval": "10s",
        "baseEjectionTime": "30s",
        "maxEjectionPercent": 50,
        "failurePercentageEjection": {"threshold": 50, "requestVolume": 10, "minimumHosts": 3},
        "childPolicy": [{"round_robin": {}}],
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    parse(config).unwrap()
}

/// A policy over `n` READY backends.
fn ready(n: u16, config: &PolicyConfig) -> (OutlierDetection, Recorder) {
    let mut ctl = Recorder::at(Instant::now());
    let mut od = OutlierDetection::new(1);
    od.update(endpoints((1..=n).map(addr)), Some(config), &mut ctl);
    assert_eq!(
        ctl.created.len(),
        usize::from(n),
        "the child made the subchannels"
    );
    for id in 1..=u64::from(n) {
        od.subchannel_state(SubchannelId(id), Ready, None, &mut ctl);
    }
    assert_eq!(ctl.state, Some(Ready));
    (od, ctl)
}

/// Sends `n` calls; those to a subchannel `fails` names end UNAVAILABLE.
fn calls(
    ctl: &Recorder,
    n: usize,
    mut fails: impl FnMut(SubchannelId) -> bool,
) -> HashMap<SubchannelId, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let pick = ctl.pick();
        let id = pick.subchannel().expect("a READY pick");
        *counts.entry(id).or_default() += 1;
        if let Pick::Observed(_, observer) = pick {
            let code = if fails(id) {
                Code::Unavailable
            } else {
                Code::Ok
            };
            observer.call_ended(&CallEnd::new(code, ctl.now(), None));
        }
    }
    counts
}

/// Advances to the next sweep and runs it.
fn sweep(od: &mut OutlierDetection, ctl: &mut Recorder) {
    let at = od.poll_timeout().expect("the interval timer runs");
    ctl.now = Some(at);
    od.handle_timeout(ctl);
}

#[test]
fn config_defaults_limits_and_a_required_child() {
    let config = parse(json!({"childPolicy": [{"round_robin": {}}]})).unwrap();
    let parsed = config.parsed::<OdConfig>().unwrap();
    assert_eq!(parsed.interval, Duration::from_secs(10));
    assert_eq!(parsed.base_ejection_time, Duration::from_secs(30));
    assert_eq!(parsed.max_ejection_time, Duration::from_secs(300));
    assert_eq!(parsed.max_ejection_percent, 10);
    assert!(!parsed.counting());
    assert_eq!(parsed.child.0.name(), "round_robin");
    let both = parse(json!({
        "successRateEjection": {},
        "failurePercentageEjection": {},
        "childPolicy": [{"unknown": {}}, {"pick_first": {}}],
    }))
    .unwrap();
    let both = both.parsed::<OdConfig>().unwrap();
    assert_eq!(
        both.success_rate,
        Some(SuccessRate {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100
        })
    );
    assert_eq!(
        both.failure_percentage,
        Some(FailurePercentage {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50
        })
    );
    assert_eq!(both.child.0.name(), "pick_first");
    for bad in [
        json!({}),
        json!({"childPolicy": [{"unknown": {}}]}),
        json!({"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": 101}),
        json!({"childPolicy": [{"round_robin": {}}], "interval": "-1s"}),
        json!({"childPolicy": [{"round_robin": {}}], "interval": 10}),
        json!({"childPolicy": [{"round_robin": {}}], "successRateEjection": {"enforcementPercentage": 101}}),
        json!({"childPolicy": [{"round_robin": {}}], "failurePercentageEjection": {"threshold": 101}}),
        json!({"childPolicy": [{"round_robin": {}}], "failurePercentageEjection": 3}),
        json!([]),
    ] {
        assert_eq!(
            parse(bad.clone()).unwrap_err().code(),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    // Through the registry, by name.
    let (builder, _) = PolicyRegistry::default()
        .parse_lb_config(&json!([{NAME: {"childPolicy": [{"round_robin": {}}]}}]))
        .unwrap();
    assert_eq!(builder.name(), NAME);
}

#[test]
fn a_failing_backend_is_ejected_at_the_sweep_and_gets_no_calls_until_it_returns() {
    let config = failure_config(json!({}));
    let (mut od, mut ctl) = ready(5, &config);
    let bad = SubchannelId(3);
    // Half of the bad backend's calls fail... at exactly the threshold nothing happens.
    let mut n = 0;
    calls(&ctl, 100, |id| {
        n += usize::from(id == bad);
        id == bad && n % 2 == 0
    });
    sweep(&mut od, &mut ctl);
    assert_eq!(
        calls(&ctl, 50, |_| false).len(),
        5,
        "50% is not above a 50% threshold"
    );
    // ...above it, the sweep ejects it: the child sees it fail and leaves it out.
    calls(&ctl, 100, |id| id == bad);
    let ejected_at = od.poll_timeout().unwrap();
    sweep(&mut od, &mut ctl);
    assert!(od.entries[&addr(3)].ejected_at.is_some());
    let counts = calls(&ctl, 400, |_| false);
    assert!(
        !counts.contains_key(&bad),
        "an ejected backend gets no calls: {counts:?}"
    );
    assert_eq!(counts.len(), 4);
    // It stays out for the base ejection time (30 s: two more sweeps do not return it)...
    sweep(&mut od, &mut ctl);
    sweep(&mut od, &mut ctl);
    assert!(!calls(&ctl, 100, |_| false).contains_key(&bad));
    // ...and the first sweep after it returns it.
    sweep(&mut od, &mut ctl);
    assert_eq!(ctl.now(), ejected_at + Duration::from_secs(30));
    assert!(od.entries[&addr(3)].ejected_at.is_none());
    assert!(
        calls(&ctl, 100, |_| false).contains_key(&bad),
        "back in the rotation"
    );
}

#[test]
fn success_rate_ejects_a_statistical_outlier() {
    let config = parse(json!({
        "successRateEjection": {"requestVolume": 20},
        "maxEjectionPercent": 100,
        "childPolicy": [{"round_robin": {}}],
    }))
    .unwrap();
    let (mut od, mut ctl) = ready(5, &config);
    // Rates 1, 1, 1, 1 and 0.5: mean 0.9, deviation 0.2, threshold 0.9 - 1.9 * 0.2 = 0.52.
    let mut n = 0;
    calls(&ctl, 500, |id| {
        n += 1;
        id == SubchannelId(5) && n % 2 == 0
    });
    sweep(&mut od, &mut ctl);
    assert_eq!(od.ejected(), vec![addr(5)]);

    // Fewer hosts with enough volume than minimumHosts: no ejection at all.
    let config = parse(json!({
        "successRateEjection": {"requestVolume": 200},
        "maxEjectionPercent": 100,
        "childPolicy": [{"round_robin": {}}],
    }))
    .unwrap();
    let (mut od, mut ctl) = ready(5, &config);
    calls(&ctl, 500, |id| id == SubchannelId(5));
    sweep(&mut od, &mut ctl);
    assert!(od.entries.values().all(|e| e.ejected_at.is_none()));
}

#[test]
fn each_ejection_lasts_longer_up_to_the_maximum_and_clean_sweeps_shorten_it_again() {
    let config = failure_config(json!({"baseEjectionTime": "10s", "maxEjectionTime": "25s"}));
    let (mut od, mut ctl) = ready(5, &config);
    let bad = SubchannelId(1);
    let mut durations = Vec::new();
    for _ in 0..3 {
        calls(&ctl, 100, |id| id == bad);
        sweep(&mut od, &mut ctl);
        let at = od.entries[&addr(1)].ejected_at.expect("ejected");
        while od.entries[&addr(1)].ejected_at.is_some() {
            sweep(&mut od, &mut ctl);
        }
        durations.push(ctl.now() - at);
    }
    assert_eq!(
        durations,
        [10, 20, 30].map(Duration::from_secs),
        "10 s, then 20 s, then 25 s capped (the next sweep is at 30 s)"
    );
    assert_eq!(od.entries[&addr(1)].multiplier, 3);
    sweep(&mut od, &mut ctl);
    sweep(&mut od, &mut ctl);
    assert_eq!(
        od.entries[&addr(1)].multiplier,
        1,
        "each clean sweep takes one off"
    );
}

#[test]
fn max_ejection_percent_and_enforcement_limit_ejections() {
    // Two of five fail, but 10% allows one ejection (at least one is always allowed).
    let config = failure_config(json!({"maxEjectionPercent": 10}));
    let (mut od, mut ctl) = ready(5, &config);
    calls(&ctl, 200, |id| id.0 <= 2);
    sweep(&mut od, &mut ctl);
    let ejected = od
        .entries
        .values()
        .filter(|e| e.ejected_at.is_some())
        .count();
    assert_eq!(ejected, 1);
    // An enforcement percentage of 0 detects but never ejects.
    let config = failure_config(json!({
        "failurePercentageEjection": {"threshold": 50, "requestVolume": 10, "minimumHosts": 3, "enforcementPercentage": 0}
    }));
    let (mut od, mut ctl) = ready(5, &config);
    calls(&ctl, 200, |id| id.0 == 1);
    sweep(&mut od, &mut ctl);
    assert!(od.entries.values().all(|e| e.ejected_at.is_none()));
}

#[test]
fn the_interval_timer_keeps_its_start_across_configs_and_stops_without_an_algorithm() {
    let config = failure_config(json!({}));
    let (mut od, mut ctl) = ready(5, &config);
    let start = ctl.now();
    assert_eq!(od.poll_timeout(), Some(start + Duration::from_secs(10)));
    ctl.advance(Duration::from_secs(4));
    let shorter = failure_config(json!({"interval": "6s"}));
    od.update(endpoints((1..=5).map(addr)), Some(&shorter), &mut ctl);
    assert_eq!(
        od.poll_timeout(),
        Some(start + Duration::from_secs(6)),
        "interval minus elapsed"
    );
    // Eject one, then drop both algorithms: it returns at once, and calls are not counted.
    calls(&ctl, 100, |id| id.0 == 2);
    sweep(&mut od, &mut ctl);
    assert!(od.entries[&addr(2)].ejected_at.is_some());
    let plain = parse(json!({"childPolicy": [{"round_robin": {}}]})).unwrap();
    od.update(endpoints((1..=5).map(addr)), Some(&plain), &mut ctl);
    assert_eq!(od.poll_timeout(), None);
    assert!(od
        .entries
        .values()
        .all(|e| e.ejected_at.is_none() && e.multiplier == 0));
    assert!(
        matches!(ctl.pick(), Pick::Ready(_)),
        "no counting: the child's own pick"
    );
    let seen: HashSet<_> = (0..20).filter_map(|_| ctl.pick().subchannel()).collect();
    assert_eq!(seen.len(), 5);
}

#[test]
fn removed_addresses_leave_and_a_new_child_replaces_the_old_ones_subchannels() {
    let config = failure_config(json!({}));
    let (mut od, mut ctl) = ready(5, &config);
    od.update(
        endpoints([addr(1), addr(2), addr(3)]),
        Some(&config),
        &mut ctl,
    );
    assert_eq!(od.entries.len(), 3);
    assert_eq!(
        ctl.removed.len(),
        2,
        "the child removed its two subchannels"
    );
    assert_eq!(od.wrappers.len(), 3);
    let pick_first = failure_config(json!({"childPolicy": [{"pick_first": {}}]}));
    od.update(
        endpoints([addr(1), addr(2), addr(3)]),
        Some(&pick_first),
        &mut ctl,
    );
    assert_eq!(ctl.removed.len(), 5, "the old child's subchannels go");
    assert!(od.wrappers.keys().all(|id| id.0 > 5), "the new child's own");
}
