//! End-to-end scenarios on the deterministic simulation runtime (`anygrpc_rt::sim`): real
//! anygrpc clients and servers over a simulated network, in virtual time. Each scenario
//! returns its trace; the same seed gives the same trace.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anygrpc::{rt::Runtime, Channel, Code, Request, Status};
use anygrpc_integration_tests::*;
use anygrpc_rt::sim::{LinkFaults, Sim};
use futures_util::{future::join_all, StreamExt};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 100 + i], 50051))
}

/// A test server on the simulated network. Counts the calls it starts; drop `stop` (or send
/// on it) to shut it down gracefully.
struct Backend {
    calls: Arc<AtomicUsize>,
    stop: Option<futures_channel::oneshot::Sender<()>>,
    stopped: futures_channel::oneshot::Receiver<()>,
}

impl Backend {
    fn start(
        sim: &Sim,
        at: SocketAddr,
        configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server,
    ) -> Backend {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let (server, _events) = test_server();
        let server = configure(server.runtime(sim.runtime()).interceptor(
            move |_: &mut anygrpc::interceptor::CallHead| {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
        ));
        let bound = server.bind(at).expect("bind");
        let (stop, stop_rx) = futures_channel::oneshot::channel::<()>();
        let (stopped_tx, stopped) = futures_channel::oneshot::channel::<()>();
        sim.runtime().spawn(Box::pin(async move {
            bound
                .serve_with_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            let _ = stopped_tx.send(());
        }));
        Backend {
            calls,
            stop: Some(stop),
            stopped,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

fn channel(
    sim: &Sim,
    target: &str,
    configure: impl FnOnce(anygrpc::client::ChannelBuilder) -> anygrpc::client::ChannelBuilder,
) -> TestClient {
    let builder = Channel::builder(target).runtime(sim.runtime());
    TestClient::new(configure(builder).connect_lazy().expect("valid target"))
}

/// Records a scenario's finding in the trace and prints it (`--nocapture` shows it).
fn note(sim: &Sim, text: std::fmt::Arguments<'_>) {
    println!("seed {}: {text}", sim.seed());
    sim.event(text);
}

/// How many trace lines contain `needle`.
fn events(sim: &Sim, needle: &str) -> usize {
    sim.trace().iter().filter(|l| l.contains(needle)).count()
}

async fn sleep(rt: &Arc<dyn Runtime>, d: Duration) {
    rt.sleep_until(rt.now() + d).await;
}

fn with_timeout(timeout: Duration) -> Request<Payload> {
    let mut request = Request::new(Payload::default());
    request.set_timeout(timeout);
    request
}

/// A streaming call is in flight when the server's host vanishes (its packets go nowhere,
/// nothing closes). Client keepalive (10 s, timeout 2 s) ends the call UNAVAILABLE about
/// 12 s later, and the next call connects again.
fn keepalive_detects_a_blackhole(seed: u64) -> Vec<String> {
    let sim = Sim::new(seed);
    sim.set_default_link(LinkFaults::latency(5 * MS).with_jitter(MS));
    let rt = sim.runtime();
    let _backend = Backend::start(&sim, addr(0), |s| s);
    let client = channel(&sim, &addr(0).to_string(), |c| {
        c.keepalive_time(10 * SECOND).keepalive_timeout(2 * SECOND)
    });
    sim.run(async {
        client.unary(Payload::default()).await.expect("first call");
        let streaming = Payload {
            count: 1,
            hang_after: true,
            ..Payload::default()
        };
        let mut stream = client
            .server_stream(streaming)
            .await
            .expect("head")
            .into_inner();
        stream.message().await.expect("first message").expect("one");
        sim.blackhole(addr(0));
        let blackholed = rt.now();
        let err = stream.message().await.expect_err("the connection is dead");
        let detected = rt.now() - blackholed;
        note(&sim, format_args!("stream ended after {detected:?}: {err}"));
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.message().contains("keepalive timeout"), "{err}");
        assert!(
            detected >= 10 * SECOND && detected <= 12 * SECOND + 100 * MS,
            "{detected:?}"
        );
        client
            .unary(Payload::default())
            .await
            .expect("a new connection");
        assert_eq!(
            sim.connections(addr(0)),
            2,
            "the blackholed one and the new one"
        );
    });
    sim.trace()
}

#[test]
fn keepalive_detects_a_blackholed_connection() {
    keepalive_detects_a_blackhole(1);
}

/// A backend whose connections reset at random (3% of writes): unary calls with a retry policy
/// all succeed, on more attempts than calls.
fn retries_across_a_flaky_backend(seed: u64) -> Vec<String> {
    let sim = Sim::new(seed);
    sim.set_default_link(
        LinkFaults::latency(2 * MS)
            .with_jitter(2 * MS)
            .with_drop_probability(0.03),
    );
    let rt = sim.runtime();
    let backend = Backend::start(&sim, addr(0), |s| s);
    let config = r#"{"methodConfig": [{"name": [{"service": "anygrpc.test.Test"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let client = channel(&sim, &addr(0).to_string(), |c| {
        c.default_service_config(config)
    });
    let calls = 200;
    let failed = sim.run(async {
        let workers = (0..4).map(|worker| {
            let client = client.clone();
            let sim = &sim;
            async move {
                let mut failed = Vec::new();
                for i in 0..calls / 4 {
                    let mut request = Request::new(Payload::default());
                    request.set_wait_for_ready(true);
                    if let Err(status) = client.unary(request).await {
                        note(sim, format_args!("worker {worker} call {i}: {status}"));
                        failed.push(status);
                    }
                }
                failed
            }
        });
        let failed: Vec<Status> = join_all(workers).await.into_iter().flatten().collect();
        sleep(&rt, 10 * MS).await;
        failed
    });
    let drops = events(&sim, ": dropped");
    note(
        &sim,
        format_args!(
            "{calls} calls, {} attempts, {drops} connections dropped",
            backend.calls()
        ),
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(drops > 0, "the link dropped connections");
    assert!(
        backend.calls() > calls,
        "retries: {} attempts",
        backend.calls()
    );
    sim.trace()
}

#[test]
fn retries_ride_out_a_flaky_backend() {
    retries_across_a_flaky_backend(2);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let first = retries_across_a_flaky_backend(11);
    let again = retries_across_a_flaky_backend(11);
    assert!(first.len() > 150, "a real trace: {} events", first.len());
    if first != again {
        let at = first
            .iter()
            .zip(&again)
            .position(|(a, b)| a != b)
            .unwrap_or(first.len().min(again.len()));
        panic!(
            "runs of seed 11 differ at event {at}:\n{:?}\nvs\n{:?}",
            first.get(at.saturating_sub(3)..at + 3),
            again.get(at.saturating_sub(3)..at + 3)
        );
    }
    assert_ne!(
        first,
        retries_across_a_flaky_backend(12),
        "another seed, another run"
    );
    assert_eq!(
        keepalive_detects_a_blackhole(5),
        keepalive_detects_a_blackhole(5)
    );
}

/// Three backends behind round_robin; one is partitioned away for 60 s. Calls (500 ms
/// deadline) fail only until keepalive finds the partitioned connection dead; then every
/// call goes to the other two. After the partition heals the backend is used again.
#[test]
fn round_robin_routes_around_a_partition() {
    let sim = Sim::new(3);
    sim.set_default_link(LinkFaults::latency(MS).with_jitter(MS));
    let rt = sim.runtime();
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&sim, addr(i), |s| s))
        .collect();
    let target = format!("ipv4:{},{},{}", addr(0), addr(1), addr(2));
    let client = channel(&sim, &target, |c| {
        c.load_balancing_policy("round_robin")
            .keepalive_time(10 * SECOND)
            .keepalive_timeout(SECOND)
    });
    sim.run(async {
        let mut outcomes = Vec::new();
        for tick in 0..1200 {
            let at = tick * 100 * MS;
            if at == 5 * SECOND {
                sim.partition(addr(2));
            }
            if at == 65 * SECOND {
                sim.heal(addr(2));
            }
            let ok = client.unary(with_timeout(500 * MS)).await.is_ok();
            outcomes.push((rt.now(), ok));
            sleep(&rt, 100 * MS).await;
        }
        let start = outcomes[0].0;
        let failed_between = |from: Duration, to: Duration| {
            outcomes
                .iter()
                .filter(|(t, ok)| !ok && *t - start >= from && *t - start < to)
                .count()
        };
        assert_eq!(failed_between(Duration::ZERO, 5 * SECOND), 0);
        let detecting = failed_between(5 * SECOND, 17 * SECOND);
        note(
            &sim,
            format_args!("{detecting} calls failed while the partition was undetected"),
        );
        assert!(detecting > 0 && detecting <= 12 * 10 / 3 + 1, "{detecting}");
        assert_eq!(
            failed_between(17 * SECOND, 200 * SECOND),
            0,
            "routed around, then healed"
        );
    });
    let before = backends[2].calls();
    sim.run(async {
        for _ in 0..30 {
            client.unary(with_timeout(500 * MS)).await.expect("healed");
        }
    });
    assert!(
        backends[2].calls() >= before + 9,
        "the healed backend serves again"
    );
}

/// A server shutting down gracefully while 20 bidi calls are mid-stream: every call runs to
/// its end with OK, and the server returns when the last one ends, well inside the grace
/// period.
#[test]
fn graceful_shutdown_under_load_finishes_every_call() {
    let sim = Sim::new(4);
    sim.set_default_link(LinkFaults::latency(3 * MS).with_jitter(2 * MS));
    let rt = sim.runtime();
    let mut backend = Backend::start(&sim, addr(0), |s| {
        s.shutdown_grace_period(Some(30 * SECOND))
    });
    let client = channel(&sim, &addr(0).to_string(), |c| c);
    sim.run(async {
        let calls = (0..20).map(|i| {
            let (client, rt) = (client.clone(), rt.clone());
            async move {
                let (tx, rx) = futures_channel::mpsc::unbounded();
                let mut replies = client.bidi(rx).await.expect("head").into_inner();
                let mut echoed = 0;
                for n in 0..20u8 {
                    tx.unbounded_send(Payload {
                        body: vec![i, n],
                        ..Payload::default()
                    })
                    .unwrap();
                    let reply = replies.message().await.expect("reply").expect("one");
                    assert_eq!(reply.body, [i, n]);
                    echoed += 1;
                    sleep(&rt, 100 * MS).await;
                }
                drop(tx);
                assert!(replies.message().await.expect("clean end").is_none());
                echoed
            }
        });
        let stopper = async {
            sleep(&rt, 500 * MS).await;
            sim.event("shutdown signalled");
            drop(backend.stop.take());
            let signalled = rt.now();
            (&mut backend.stopped).await.expect("server returned");
            rt.now() - signalled
        };
        let (echoed, drained) = futures_util::future::join(join_all(calls), stopper).await;
        assert_eq!(echoed, vec![20; 20]);
        note(
            &sim,
            format_args!("server returned {drained:?} after the signal"),
        );
        assert!(drained >= SECOND && drained < 3 * SECOND, "{drained:?}");
        let err = client
            .unary(Payload::default())
            .await
            .expect_err("nobody serves");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
    });
}

/// A server that sends every connection GOAWAY after 200 ms (max connection age, 1 s grace)
/// while 8 callers keep calling: no call fails, over dozens of connections.
#[test]
fn a_goaway_storm_loses_no_call() {
    let sim = Sim::new(5);
    sim.set_default_link(LinkFaults::latency(MS).with_jitter(MS));
    let rt = sim.runtime();
    let _backend = Backend::start(&sim, addr(0), |s| {
        s.max_connection_age(200 * MS)
            .max_connection_age_grace(SECOND)
    });
    let client = channel(&sim, &addr(0).to_string(), |c| c);
    let (ok, failed) = sim.run(async {
        let until = rt.now() + 10 * SECOND;
        let callers = (0..8).map(|_| {
            let (client, rt) = (client.clone(), rt.clone());
            async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while rt.now() < until {
                    match client.unary(Payload::default()).await {
                        Ok(_) => ok += 1,
                        Err(status) => failed.push(status),
                    }
                }
                (ok, failed)
            }
        });
        let results = join_all(callers).await;
        let ok: usize = results.iter().map(|r| r.0).sum();
        let failed: Vec<Status> = results.into_iter().flat_map(|r| r.1).collect();
        (ok, failed)
    });
    let connections = events(&sim, ": accepted on");
    note(
        &sim,
        format_args!("{ok} calls over {connections} connections"),
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(connections >= 20, "{connections} connections");
    assert!(ok > 10_000, "{ok} calls");
}

#[test]
fn streams_see_the_stream_counts_they_expect() {
    // A sanity check that the simulated network carries a large server stream intact.
    let sim = Sim::new(6);
    sim.set_default_link(LinkFaults::latency(10 * MS).with_bandwidth(10_000_000));
    let _backend = Backend::start(&sim, addr(0), |s| s);
    let client = channel(&sim, &addr(0).to_string(), |c| c);
    let took = sim.run(async {
        let request = Payload {
            count: 100,
            response_size: 100_000,
            ..Payload::default()
        };
        let stream = client
            .server_stream(request)
            .await
            .expect("head")
            .into_inner();
        let messages: Vec<Payload> = stream.map(|m| m.expect("message")).collect().await;
        assert_eq!(messages.len(), 100);
        assert!(messages
            .iter()
            .enumerate()
            .all(|(i, m)| m.count == i as u32 && m.body.len() == 100_000));
        sim.elapsed()
    });
    // 10 MB over a 10 MB/s link.
    assert!(took >= SECOND && took < 2 * SECOND, "{took:?}");
}
