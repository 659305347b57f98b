//! Client-side health checking (A17) and weighted round robin fed by ORCA load reports
//! (A51/A58), end to end over real sockets.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use anygrpc::{
    client::Grpc,
    codegen::PathAndQuery,
    health::{health_service, HealthCheckRequest, HealthClient, HealthListRequest, ServingStatus},
    orca::{set_call_load_report, OrcaLoadReport, OrcaService, ServerMetricsRecorder},
    rt::block_on,
    server::{ServerCall, Service},
    Channel, ProstCodec, Request, Response,
};
use anygrpc_integration_tests::*;

/// A server that counts its calls, with extra services added by `configure`.
fn server_with(
    configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server,
) -> (Running, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let running = start_with(|server| {
        configure(
            server.interceptor(move |_: &mut anygrpc::interceptor::CallHead| {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
        )
    });
    (running, calls)
}

fn ipv4_target(servers: &[&Running]) -> String {
    let addrs: Vec<String> = servers.iter().map(|s| s.target()).collect();
    format!("ipv4:{}", addrs.join(","))
}

/// Which server (by index) served each of `n` calls.
async fn spread(client: &TestClient, counters: &[&Arc<AtomicUsize>], n: usize) -> Vec<usize> {
    let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for _ in 0..n {
        let mut request = Request::new(Payload::default());
        request.set_wait_for_ready(true);
        client.unary(request).await.unwrap();
    }
    counters
        .iter()
        .zip(before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect()
}

/// Makes calls in rounds of `n` until `done` holds for a round's spread; panics after `max`
/// rounds.
async fn until(
    client: &TestClient,
    counters: &[&Arc<AtomicUsize>],
    n: usize,
    max: usize,
    done: impl Fn(&[usize]) -> bool,
) -> Vec<usize> {
    for _ in 0..max {
        let counts = spread(client, counters, n).await;
        if done(&counts) {
            return counts;
        }
    }
    panic!("the spread never settled");
}

#[test]
fn a_backend_set_not_serving_gets_no_calls_until_it_serves_again() {
    let (reporter_a, health_a) = health_service();
    let (reporter_b, health_b) = health_service();
    reporter_a.set_serving("grpc.testing.Test");
    reporter_b.set_serving("grpc.testing.Test");
    let (a, a_calls) = server_with(|s| s.add_service(health_a));
    let (b, b_calls) = server_with(|s| s.add_service(health_b));
    // A backend without the health service counts as healthy.
    let (c, c_calls) = server_with(|s| s);
    let channel = Channel::builder(&ipv4_target(&[&a, &b, &c]))
        .load_balancing_policy("round_robin")
        .health_check_service_name("grpc.testing.Test")
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let counters = [&a_calls, &b_calls, &c_calls];
    block_on(async {
        until(&client, &counters, 30, 1000, |c| c.iter().all(|&n| n == 10)).await;

        reporter_b.set_not_serving("grpc.testing.Test");
        until(&client, &counters, 30, 1000, |c| c[1] == 0).await;
        let counts = spread(&client, &counters, 600).await;
        assert_eq!(counts, [300, 0, 300], "NOT_SERVING backend still picked");

        reporter_b.set_serving("grpc.testing.Test");
        until(&client, &counters, 30, 1000, |c| c[1] > 0).await;
        let counts = spread(&client, &counters, 600).await;
        assert_eq!(
            counts,
            [200, 200, 200],
            "SERVING backend not back in rotation"
        );

        // Shutdown flips every service NOT_SERVING: the backend drains.
        reporter_a.shutdown();
        until(&client, &counters, 30, 1000, |c| c[0] == 0).await;
        let counts = spread(&client, &counters, 100).await;
        assert_eq!(counts[0], 0, "{counts:?}");
    });
}

#[test]
fn the_health_client_checks_lists_and_watches() {
    let (reporter, health) = health_service();
    reporter.set_not_serving("down");
    let (a, _) = server_with(|s| s.add_service(health));
    let client = HealthClient::new(a.channel());
    let check = |service: &str| block_on(client.check(HealthCheckRequest::new(service)));
    assert_eq!(
        check("").unwrap().get_ref().status(),
        ServingStatus::Serving
    );
    assert_eq!(
        check("down").unwrap().get_ref().status(),
        ServingStatus::NotServing
    );
    assert_eq!(check("nope").unwrap_err().code(), anygrpc::Code::NotFound);
    let listed = block_on(client.list(HealthListRequest {}))
        .unwrap()
        .into_inner();
    let mut listed: Vec<_> = listed
        .statuses
        .iter()
        .map(|(name, response)| (name.as_str(), response.status()))
        .collect();
    listed.sort();
    let expected = [
        ("", ServingStatus::Serving),
        ("down", ServingStatus::NotServing),
    ];
    assert_eq!(listed, expected);
    for i in 0..anygrpc::health::MAX_LISTED_SERVICES {
        reporter.set_serving(&format!("svc-{i}"));
    }
    let err = block_on(client.list(HealthListRequest {})).unwrap_err();
    assert_eq!(
        err.code(),
        anygrpc::Code::ResourceExhausted,
        "over 100 services"
    );
    for i in 0..anygrpc::health::MAX_LISTED_SERVICES {
        reporter.clear(&format!("svc-{i}"));
    }

    block_on(async {
        let mut watch = client
            .watch(HealthCheckRequest::new("later"))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        for change in [None, Some(true), Some(false)] {
            match change {
                Some(true) => reporter.set_serving("later"),
                Some(false) => reporter.set_not_serving("later"),
                None => {}
            }
            seen.push(watch.message().await.unwrap().unwrap().status());
        }
        let expected = [
            ServingStatus::ServiceUnknown,
            ServingStatus::Serving,
            ServingStatus::NotServing,
        ];
        assert_eq!(seen, expected);
    });

    let (without, _) = server_with(|s| s);
    let err = block_on(HealthClient::new(without.channel()).check(HealthCheckRequest::new("")));
    assert_eq!(err.unwrap_err().code(), anygrpc::Code::Unimplemented);
}

/// `wrr.Loaded/Work`: answers every call with a per-call load report (if `utilization` > 0).
#[derive(Clone)]
struct Loaded {
    utilization: f64,
}

impl Service for Loaded {
    fn name(&self) -> &'static str {
        "wrr.Loaded"
    }

    fn call(&self, _: &str, call: ServerCall) -> anygrpc::rt::BoxFuture<'static, ()> {
        let utilization = self.utilization;
        Box::pin(
            call.unary(ProstCodec::<Payload, Payload>::new(), move |_| async move {
                let mut response = Response::new(Payload::default());
                if utilization > 0.0 {
                    let report = OrcaLoadReport {
                        cpu_utilization: utilization,
                        rps_fractional: 100.0,
                        ..OrcaLoadReport::default()
                    };
                    set_call_load_report(response.trailers_mut(), &report);
                }
                Ok(response)
            }),
        )
    }
}

async fn work(grpc: &Grpc, counters: &[&Arc<AtomicUsize>], n: usize) -> Vec<usize> {
    let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for _ in 0..n {
        let mut request = Request::new(Payload::default());
        request.set_wait_for_ready(true);
        grpc.unary(
            PathAndQuery::from_static("/wrr.Loaded/Work"),
            ProstCodec::<Payload, Payload>::new(),
            request,
        )
        .await
        .unwrap();
    }
    counters
        .iter()
        .zip(before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect()
}

/// Calls until a round of 200 gives server 0 at least 75%, then returns the share of the next
/// 2,000 calls.
fn share_of_first_after_weights_settle(channel: Channel, counters: &[&Arc<AtomicUsize>]) -> f64 {
    let grpc = Grpc::new(channel);
    block_on(async {
        let mut rounds = 0;
        loop {
            let counts = work(&grpc, counters, 200).await;
            if counts[0] as f64 / 200.0 >= 0.75 {
                break;
            }
            rounds += 1;
            assert!(
                rounds < 500,
                "weights never took effect: last round {counts:?}"
            );
        }
        let counts = work(&grpc, counters, 2000).await;
        counts[0] as f64 / 2000.0
    })
}

#[test]
fn weighted_round_robin_follows_per_call_load_reports() {
    // Same qps, utilization 0.2 vs 0.8: weights 500 vs 125, an 80/20 split.
    let (a, a_calls) = server_with(|s| s.add_service(Loaded { utilization: 0.2 }));
    let (b, b_calls) = server_with(|s| s.add_service(Loaded { utilization: 0.8 }));
    let channel = Channel::builder(&ipv4_target(&[&a, &b]))
        .load_balancing_config(
            r#"[{"weighted_round_robin":{"blackoutPeriod":"0s","weightUpdatePeriod":"0.1s"}}]"#,
        )
        .connect_lazy()
        .unwrap();
    let share = share_of_first_after_weights_settle(channel, &[&a_calls, &b_calls]);
    assert!((share - 0.8).abs() < 0.03, "share {share}, want 0.8");
}

#[test]
fn weighted_round_robin_follows_out_of_band_load_reports() {
    let servers: Vec<(Running, Arc<AtomicUsize>, ServerMetricsRecorder)> = [0.1, 0.9]
        .into_iter()
        .map(|utilization| {
            let recorder = ServerMetricsRecorder::default();
            recorder.set_cpu_utilization(utilization);
            recorder.set_qps(100.0);
            let orca = OrcaService::new(recorder.clone())
                .min_reporting_interval(std::time::Duration::from_millis(10));
            let (running, calls) =
                server_with(|s| s.add_service(orca).add_service(Loaded { utilization: 0.0 }));
            (running, calls, recorder)
        })
        .collect();
    let channel = Channel::builder(&ipv4_target(&[&servers[0].0, &servers[1].0]))
        .load_balancing_config(
            r#"[{"weighted_round_robin":{"enableOobLoadReport":true,"oobReportingPeriod":"0.01s","blackoutPeriod":"0s","weightUpdatePeriod":"0.1s"}}]"#,
        )
        .connect_lazy()
        .unwrap();
    let share = share_of_first_after_weights_settle(channel, &[&servers[0].1, &servers[1].1]);
    // Weights 1000 vs 111: a 90/10 split.
    assert!((share - 0.9).abs() < 0.03, "share {share}, want 0.9");
}
