use super::*;
use crate::policy::testing::{addr, endpoints, Recorder};
use anygrpc_codec::Code;
use prost::Message;
use serde_json::json;
use ConnectivityState::*;

fn report(qps: f64, cpu: f64, app: f64, eps: f64) -> OrcaLoadReport {
    OrcaLoadReport {
        rps_fractional: qps,
        cpu_utilization: cpu,
        application_utilization: app,
        eps,
        ..OrcaLoadReport::default()
    }
}

#[test]
fn weight_follows_the_a58_formula() {
    // qps / (utilization + eps/qps * penalty)
    let w = report_weight(&report(100.0, 0.5, 0.0, 10.0), 1.0).unwrap();
    assert!((w - 100.0 / (0.5 + 0.1)).abs() < 1e-9, "{w}");
    let w = report_weight(&report(100.0, 0.5, 0.0, 10.0), 2.5).unwrap();
    assert!((w - 100.0 / (0.5 + 0.25)).abs() < 1e-9, "{w}");
    // Application utilization wins over CPU when set.
    let w = report_weight(&report(100.0, 0.5, 0.25, 0.0), 1.0).unwrap();
    assert!((w - 400.0).abs() < 1e-9, "{w}");
    // No qps or no utilization: ignored.
    assert_eq!(report_weight(&report(0.0, 0.5, 0.0, 0.0), 1.0), None);
    assert_eq!(report_weight(&report(10.0, 0.0, 0.0, 0.0), 1.0), None);
    assert_eq!(report_weight(&report(f64::NAN, 0.5, 0.0, 0.0), 1.0), None);
}

#[test]
fn weights_wait_out_the_blackout_and_expire() {
    let config = WrrConfig::default();
    let t0 = Instant::now();
    let weight = EndpointWeight::new(1.0);
    assert_eq!(
        weight.weight(t0, &config),
        Weight::NotYetUsable,
        "no report"
    );
    weight.load_report(&report(100.0, 0.5, 0.0, 0.0), t0);
    let blackout = weight.weight(t0 + Duration::from_secs(9), &config);
    assert_eq!(blackout, Weight::NotYetUsable);
    assert_eq!(blackout.value(), 0.0);
    weight.load_report(&report(100.0, 0.5, 0.0, 0.0), t0 + Duration::from_secs(9));
    assert_eq!(
        weight.weight(t0 + Duration::from_secs(10), &config),
        Weight::Usable(200.0)
    );
    // Three minutes after the last report the weight expires, and the blackout restarts.
    let expired = t0 + Duration::from_secs(9 + 180);
    assert_eq!(weight.weight(expired, &config), Weight::Stale);
    assert_eq!(weight.weight(expired, &config).value(), 0.0);
    weight.load_report(&report(100.0, 0.25, 0.0, 0.0), expired);
    assert_eq!(
        weight.weight(expired + Duration::from_secs(5), &config),
        Weight::NotYetUsable
    );
    assert_eq!(
        weight.weight(expired + Duration::from_secs(10), &config),
        Weight::Usable(400.0)
    );
}

fn shares(scheduler: &StrideScheduler, picks: usize) -> Vec<f64> {
    let mut counts = vec![0usize; scheduler.scaled_weights().len()];
    for _ in 0..picks {
        counts[scheduler.next_index()] += 1;
    }
    counts.iter().map(|&c| c as f64 / picks as f64).collect()
}

#[test]
fn the_scheduler_gives_turns_in_proportion_to_weight() {
    let scheduler = StrideScheduler::new(&[100.0, 200.0, 300.0], 12345);
    let got = shares(&scheduler, 60_000);
    for (got, want) in got.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((got - want).abs() < 0.005, "{got} vs {want}");
    }
    // Unknown weights take the mean of the known ones.
    let scheduler = StrideScheduler::new(&[100.0, 0.0, 300.0], 7);
    assert_eq!(scheduler.scaled_weights(), &[21845, 43690, 65535]);
    // Fewer than two known weights: plain round robin.
    let scheduler = StrideScheduler::new(&[0.0, 5.0, 0.0], 0);
    let got = shares(&scheduler, 3000);
    assert!(got.iter().all(|s| (s - 1.0 / 3.0).abs() < 1e-9), "{got:?}");
    // A tiny weight still gets a share, at least 1% of the heaviest.
    let scheduler = StrideScheduler::new(&[1e-9, 1.0], 0);
    assert_eq!(scheduler.scaled_weights()[0], 655);
}

fn pick_counts(ctl: &Recorder, n: usize) -> HashMap<SubchannelId, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        match ctl.pick() {
            Pick::Observed(id, _) | Pick::Ready(id) => *counts.entry(id).or_default() += 1,
            other => panic!("expected a ready pick, got {other:?}"),
        }
    }
    counts
}

/// Sends one pick's worth of load report through the sink the picker returned.
fn report_through_picks(ctl: &Recorder, loads: &HashMap<SubchannelId, OrcaLoadReport>) {
    let mut seen = 0;
    while seen < 50 {
        let Pick::Observed(id, observer) = ctl.pick() else {
            panic!("per-call reporting picks")
        };
        let mut trailers = http::HeaderMap::new();
        let report = anygrpc_codec::metadata::encode_binary(&loads[&id].encode_to_vec());
        trailers.insert(
            crate::orca::LOAD_REPORT_TRAILER,
            http::HeaderValue::from_maybe_shared(report).unwrap(),
        );
        observer.call_ended(&CallEnd::new(Code::Ok, ctl.now(), Some(&trailers)));
        seen += 1;
    }
}

#[test]
fn per_call_reports_steer_traffic_after_the_blackout() {
    let mut ctl = Recorder::at(Instant::now());
    let mut wrr = WeightedRoundRobin::new(1);
    let config = WeightedRoundRobinBuilder
        .parse_config(&json!({"blackoutPeriod": "1s", "weightUpdatePeriod": "0.5s"}))
        .unwrap();
    wrr.update(
        endpoints([addr(1), addr(2), addr(3)]),
        Some(&config),
        &mut ctl,
    );
    assert_eq!(ctl.health_checked.len(), 3, "health checks gate READY");
    for id in 1..=3 {
        wrr.subchannel_state(SubchannelId(id), Ready, None, &mut ctl);
    }
    assert_eq!(ctl.state, Some(Ready));
    let first = pick_counts(&ctl, 3000);
    assert!(
        first.values().all(|&n| n == 1000),
        "equal before any report: {first:?}"
    );

    // Backend 3 serves the same qps at a third of the utilization of backend 1.
    let loads: HashMap<SubchannelId, OrcaLoadReport> = [
        (SubchannelId(1), report(100.0, 0.6, 0.0, 0.0)),
        (SubchannelId(2), report(100.0, 0.3, 0.0, 0.0)),
        (SubchannelId(3), report(100.0, 0.2, 0.0, 0.0)),
    ]
    .into();
    report_through_picks(&ctl, &loads);
    assert_eq!(
        wrr.poll_timeout(),
        Some(ctl.now() + Duration::from_millis(500))
    );
    ctl.advance(Duration::from_millis(500));
    ctl.metrics.clear();
    wrr.handle_timeout(&mut ctl);
    let during_blackout = pick_counts(&ctl, 3000);
    assert!(
        during_blackout.values().all(|&n| n == 1000),
        "{during_blackout:?}"
    );
    assert_eq!(
        ctl.metrics,
        [
            LbMetric::WrrRoundRobinFallback,
            LbMetric::WrrWeightsNotYetUsable(3),
            LbMetric::WrrWeightsStale(0),
            LbMetric::WrrEndpointWeight(0.0),
            LbMetric::WrrEndpointWeight(0.0),
            LbMetric::WrrEndpointWeight(0.0),
        ],
        "every weight is still in its blackout"
    );

    ctl.advance(Duration::from_millis(600));
    report_through_picks(&ctl, &loads);
    ctl.metrics.clear();
    wrr.handle_timeout(&mut ctl);
    assert_eq!(
        ctl.metrics[..2],
        [
            LbMetric::WrrWeightsNotYetUsable(0),
            LbMetric::WrrWeightsStale(0)
        ],
        "no fallback: {:?}",
        ctl.metrics
    );
    let mut weights: Vec<f64> = ctl.metrics[2..]
        .iter()
        .map(|m| match m {
            LbMetric::WrrEndpointWeight(w) => w.round(),
            other => panic!("{other:?}"),
        })
        .collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(weights, [167.0, 333.0, 500.0]);
    let counts = pick_counts(&ctl, 6000);
    // Weights 166.7 : 333.3 : 500, i.e. 1 : 2 : 3.
    for (id, want) in [(1, 1000.0), (2, 2000.0), (3, 3000.0)] {
        let got = counts[&SubchannelId(id)] as f64;
        assert!((got - want).abs() / want < 0.01, "{id}: {got} vs {want}");
    }

    // A backend that reconnects starts its blackout again.
    wrr.subchannel_state(SubchannelId(3), Idle, None, &mut ctl);
    wrr.subchannel_state(SubchannelId(3), Ready, None, &mut ctl);
    let counts = pick_counts(&ctl, 6000);
    let share3 = counts[&SubchannelId(3)] as f64 / 6000.0;
    // Backend 3 now takes the mean of 1 and 2 (250 of 333.3 scaled) out of 166.7+333.3+250.
    assert!((share3 - 250.0 / 750.0).abs() < 0.01, "{share3}");
}

#[test]
fn out_of_band_reports_come_from_subchannel_streams() {
    let mut ctl = Recorder::at(Instant::now());
    let mut wrr = WeightedRoundRobin::new(2);
    let config = WeightedRoundRobinBuilder
        .parse_config(&json!({
            "enableOobLoadReport": true,
            "oobReportingPeriod": "2s",
            "blackoutPeriod": "0s"
        }))
        .unwrap();
    wrr.update(endpoints([addr(1), addr(2)]), Some(&config), &mut ctl);
    wrr.subchannel_state(SubchannelId(1), Ready, None, &mut ctl);
    wrr.subchannel_state(SubchannelId(2), Ready, None, &mut ctl);
    assert_eq!(ctl.load_reporting[&SubchannelId(1)], Duration::from_secs(2));
    assert!(matches!(ctl.pick(), Pick::Ready(_)), "no per-call tracking");
    wrr.load_report(SubchannelId(1), &report(10.0, 0.9, 0.0, 0.0), &mut ctl);
    wrr.load_report(SubchannelId(2), &report(10.0, 0.1, 0.0, 0.0), &mut ctl);
    ctl.advance(Duration::from_secs(1));
    wrr.handle_timeout(&mut ctl);
    let counts = pick_counts(&ctl, 10_000);
    let share2 = counts[&SubchannelId(2)] as f64 / 10_000.0;
    assert!((share2 - 0.9).abs() < 0.01, "{share2}");

    // Turning OOB off stops the streams and goes back to per-call reports.
    let plain = WeightedRoundRobinBuilder.parse_config(&json!({})).unwrap();
    wrr.update(endpoints([addr(1), addr(2)]), Some(&plain), &mut ctl);
    assert!(ctl.load_reporting.is_empty());
    ctl.advance(Duration::from_secs(1));
    wrr.handle_timeout(&mut ctl);
    assert!(matches!(ctl.pick(), Pick::Observed(..)));
}

#[test]
fn config_is_validated() {
    let config = WrrConfig::from_json(&json!({
        "weightUpdatePeriod": "0.01s",
        "errorUtilizationPenalty": 0.5,
        "weightExpirationPeriod": "60s"
    }))
    .unwrap();
    assert_eq!(config.weight_update_period, MIN_WEIGHT_UPDATE_PERIOD);
    assert_eq!(config.error_utilization_penalty, 0.5);
    assert_eq!(config.weight_expiration_period, Duration::from_secs(60));
    for bad in [
        json!({"errorUtilizationPenalty": -1}),
        json!({"blackoutPeriod": 10}),
        json!({"enableOobLoadReport": "yes"}),
        json!([]),
    ] {
        assert!(WrrConfig::from_json(&bad).is_err(), "{bad}");
    }
}
