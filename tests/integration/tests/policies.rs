//! The service-mesh policies end to end, on real sockets: ring_hash's affinity by header,
//! outlier detection ejecting a failing backend, least_request steering away from a slow
//! one, priority failing over and back, and a graceful switch of policy under load.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anygrpc::{
    interceptor::{AsyncInterceptor, CallHead},
    rt::{block_on, Address},
    Channel, Request, Status,
};
use anygrpc_integration_tests::{pushed::pushed, *};
use anygrpc_lb::ConnectivityState;
use futures_util::future::{join_all, BoxFuture};

const KEY: &str = "x-shard";

/// How a backend treats calls.
#[derive(Debug, Clone, Copy, Default)]
struct Behaviour {
    /// Fails every other call UNAVAILABLE.
    fail_half: bool,
    /// Answers after this long.
    delay: Option<Duration>,
}

/// A backend that counts its calls and remembers the `x-shard` keys it served.
struct Backend {
    running: Running,
    calls: Arc<AtomicUsize>,
    keys: Arc<Mutex<HashSet<String>>>,
}

struct Recording {
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
    keys: Arc<Mutex<HashSet<String>>>,
}

impl AsyncInterceptor for Recording {
    fn intercept<'a>(&'a self, head: &'a mut CallHead) -> BoxFuture<'a, Result<(), Status>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(key) = head.metadata().get(KEY) {
            self.keys.lock().unwrap().insert(key.to_owned());
        }
        Box::pin(async move {
            if let Some(delay) = self.behaviour.delay {
                async_io::Timer::after(delay).await;
            }
            match self.behaviour.fail_half && n % 2 == 1 {
                true => Err(Status::unavailable("every other call fails")),
                false => Ok(()),
            }
        })
    }
}

impl Backend {
    fn start(behaviour: Behaviour) -> Backend {
        Backend::start_at(localhost(), behaviour)
    }

    /// A backend on `addr` (a port a stopped one used, to bring it back).
    fn start_at(addr: std::net::SocketAddr, behaviour: Behaviour) -> Backend {
        let calls = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(HashSet::new()));
        let recording = Recording {
            behaviour,
            calls: calls.clone(),
            keys: keys.clone(),
        };
        let (server, events) = test_server();
        let bound = server
            .async_interceptor(recording)
            .bind(addr)
            .expect("bind");
        Backend {
            running: run(bound, events),
            calls,
            keys,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn socket_addr(&self) -> std::net::SocketAddr {
        match &self.running.addr {
            Address::Tcp(addr) => *addr,
            other => panic!("tcp expected, got {other}"),
        }
    }

    /// Stops serving and closes its connections.
    fn stop(mut self) {
        self.running.stop();
        block_on(self.running.stopping());
        self.running.shutdown();
    }
}

fn backends(n: usize, behaviour: impl Fn(usize) -> Behaviour) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(behaviour(i))).collect()
}

fn addresses(backends: &[Backend]) -> Vec<Address> {
    backends.iter().map(|b| b.running.addr.clone()).collect()
}

fn target(backends: &[Backend]) -> String {
    let addrs: Vec<String> = backends.iter().map(|b| b.running.target()).collect();
    format!("ipv4:{}", addrs.join(","))
}

fn lb_config(policy: &str) -> String {
    format!(r#"{{"loadBalancingConfig": [{policy}]}}"#)
}

fn keyed(key: &str) -> Request<Payload> {
    let mut request = Request::new(Payload::default());
    request.metadata_mut().insert(KEY, key).unwrap();
    request.set_wait_for_ready(true);
    request.set_timeout(Duration::from_secs(20));
    request
}

/// Which backend served each key, by index, from the keys the backends recorded.
fn placement(backends: &[Backend]) -> HashMap<String, usize> {
    let mut placement = HashMap::new();
    for (i, backend) in backends.iter().enumerate() {
        for key in backend.keys.lock().unwrap().drain() {
            assert!(
                placement.insert(key.clone(), i).is_none(),
                "{key} reached two backends"
            );
        }
    }
    placement
}

#[test]
fn ring_hash_sends_each_header_value_to_one_backend_and_keeps_it_there() {
    // More backends than keys: some backend serves no key.
    let backends = backends(12, |_| Behaviour::default());
    let (resolvers, mut pusher) = pushed();
    let channel = Channel::builder("pushed:ring")
        .resolver_registry(resolvers)
        .connect_lazy()
        .unwrap();
    let config = lb_config(r#"{"ring_hash_experimental": {"requestHashHeader": "x-shard"}}"#);
    pusher.push(addresses(&backends), Some(&config));
    let client = TestClient::new(channel);
    let keys: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    block_on(async {
        for call in 0..1000 {
            client.unary(keyed(&keys[call % 10])).await.unwrap();
        }
    });
    let before = placement(&backends);
    assert_eq!(before.len(), 10, "every key was served: {before:?}");
    let used: HashSet<usize> = before.values().copied().collect();
    assert!(used.len() > 1, "the keys spread: {before:?}");

    // A backend that no key uses stops: it stays on the ring, and no key moves.
    let idle = (0..backends.len()).find(|i| !used.contains(i)).unwrap();
    let mut backends = backends;
    backends.remove(idle).stop();
    block_on(async {
        for call in 0..1000 {
            client.unary(keyed(&keys[call % 10])).await.unwrap();
        }
    });
    let index_after_removal = |i: usize| if i > idle { i - 1 } else { i };
    let after_stop = placement(&backends);
    for (key, was) in &before {
        assert_eq!(after_stop[key], index_after_removal(*was), "{key} moved");
    }

    // The resolver drops it: each survivor's share of the ring grows (A42 sizes the ring by
    // its lightest endpoint), so a key can move only where a new ring entry now comes first;
    // most stay.
    pusher.push(addresses(&backends), Some(&config));
    block_on(pusher.taken());
    block_on(async {
        for call in 0..1000 {
            client.unary(keyed(&keys[call % 10])).await.unwrap();
        }
    });
    let after_removal = placement(&backends);
    assert_eq!(after_removal.len(), 10);
    let stayed = before
        .iter()
        .filter(|(key, was)| after_removal[*key] == index_after_removal(**was))
        .count();
    assert!(
        stayed >= 5,
        "only {stayed} of 10 keys stayed: {before:?} {after_removal:?}"
    );
}

#[test]
fn outlier_detection_ejects_the_failing_backend_within_two_intervals() {
    let backends = backends(5, |i| Behaviour {
        fail_half: i == 2,
        ..Behaviour::default()
    });
    let interval = Duration::from_millis(500);
    let config = lb_config(
        r#"{"outlier_detection_experimental": {
            "interval": "0.5s", "baseEjectionTime": "30s", "maxEjectionPercent": 20,
            "failurePercentageEjection": {"threshold": 30, "requestVolume": 10, "minimumHosts": 5},
            "childPolicy": [{"round_robin": {}}]}}"#,
    );
    let channel = Channel::builder(&target(&backends))
        .default_service_config(config)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let bad = &backends[2];
    let began = Instant::now();
    block_on(async {
        // Calls until the bad backend gets none of 100 in a row.
        loop {
            let seen = bad.calls();
            for _ in 0..100 {
                let _ = client.unary(Request::new(Payload::default())).await;
            }
            if bad.calls() == seen {
                break;
            }
            assert!(
                began.elapsed() < interval * 2,
                "not ejected within two intervals"
            );
        }
        let ejected_at = bad.calls();
        let others: usize = backends.iter().map(Backend::calls).sum::<usize>() - ejected_at;
        for _ in 0..1000 {
            client
                .unary(Request::new(Payload::default()))
                .await
                .unwrap();
        }
        assert_eq!(bad.calls(), ejected_at, "an ejected backend gets no calls");
        let now: usize = backends.iter().map(Backend::calls).sum::<usize>() - ejected_at;
        assert_eq!(now - others, 1000, "the other four served every call");
    });
}

/// The slow backend's share of `calls` made by 16 concurrent callers under `policy`, with
/// seven fast backends beside it.
fn slow_share(policy: &str, calls: usize) -> f64 {
    let backends = backends(8, |i| Behaviour {
        delay: (i == 0).then_some(Duration::from_millis(100)),
        ..Behaviour::default()
    });
    let channel = Channel::builder(&target(&backends))
        .default_service_config(lb_config(policy))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let wait_for_ready = || {
        let mut request = Request::new(Payload::default());
        request.set_wait_for_ready(true);
        request
    };
    block_on(async {
        // Every backend connected first, so the count is the policy's steady choice.
        while backends.iter().any(|b| b.calls() == 0) {
            client.clone().unary(wait_for_ready()).await.unwrap();
        }
    });
    let before: Vec<usize> = backends.iter().map(Backend::calls).collect();
    block_on(async {
        let done = AtomicUsize::new(0);
        join_all((0..16).map(|_| async {
            while done.fetch_add(1, Ordering::Relaxed) < calls {
                client.clone().unary(wait_for_ready()).await.unwrap();
            }
        }))
        .await;
    });
    let served: Vec<usize> = backends
        .iter()
        .zip(&before)
        .map(|(b, n)| b.calls() - n)
        .collect();
    served[0] as f64 / served.iter().sum::<usize>() as f64
}

#[test]
fn least_request_gives_a_slow_backend_less_than_a_third_of_round_robins_share() {
    let round_robin = slow_share(r#"{"round_robin": {}}"#, 1500);
    let least_request = slow_share(r#"{"least_request_experimental": {}}"#, 1500);
    assert!(
        least_request < round_robin / 3.0,
        "least_request {least_request:.3} against round_robin {round_robin:.3}"
    );
}

#[test]
fn switching_pick_first_to_round_robin_under_load_fails_no_call_and_stays_ready() {
    let backends = backends(3, |_| Behaviour::default());
    let (resolvers, mut pusher) = pushed();
    let channel = Channel::builder("pushed:switch")
        .resolver_registry(resolvers)
        .connect_lazy()
        .unwrap();
    pusher.push(
        addresses(&backends),
        Some(&lb_config(r#"{"pick_first": {}}"#)),
    );
    let client = TestClient::new(channel.clone());
    let states = Arc::new(Mutex::new(Vec::new()));
    block_on(async {
        client
            .unary(Request::new(Payload::default()))
            .await
            .unwrap();
        pusher.taken().await;
        assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
        let serving: Vec<usize> = backends.iter().map(Backend::calls).collect();
        assert_eq!(serving.iter().filter(|n| **n > 0).count(), 1, "pick_first");

        let switched = AtomicUsize::new(0);
        let watch = async {
            let mut state = ConnectivityState::Ready;
            while switched.load(Ordering::SeqCst) == 0 {
                state = channel.wait_for_state_change(state).await;
                states.lock().unwrap().push(state);
            }
        };
        let load = join_all((0..8).map(|_| async {
            // No wait-for-ready: a call the switch failed would fail here.
            while switched.load(Ordering::SeqCst) == 0 {
                client
                    .clone()
                    .unary(Request::new(Payload::default()))
                    .await
                    .unwrap();
            }
        }));
        let switch = async {
            pusher.push(
                addresses(&backends),
                Some(&lb_config(r#"{"round_robin": {}}"#)),
            );
            pusher.taken().await;
            // Calls reach every backend once round_robin serves.
            while backends.iter().any(|b| b.calls() == 0) {
                client
                    .clone()
                    .unary(Request::new(Payload::default()))
                    .await
                    .unwrap();
            }
            switched.store(1, Ordering::SeqCst);
        };
        futures_util::future::select(
            Box::pin(watch),
            Box::pin(futures_util::future::join(load, switch)),
        )
        .await;
    });
    assert!(
        states.lock().unwrap().is_empty(),
        "the channel left READY during the switch: {:?}",
        states.lock().unwrap()
    );
}

#[test]
fn priority_fails_over_to_p1_when_p0_is_down_and_returns_when_p0_is_back() {
    let p0 = backends(2, |_| Behaviour::default());
    let p1 = backends(2, |_| Behaviour::default());
    let endpoints = |p0: &[Backend], p1: &[Backend]| -> Vec<anygrpc::lb::Endpoint> {
        let under = |name: &'static str, backends: &[Backend]| {
            backends
                .iter()
                .map(move |b| anygrpc::lb::Endpoint::from(b.running.addr.clone()).with_path([name]))
                .collect::<Vec<_>>()
        };
        [under("p0", p0), under("p1", p1)].concat()
    };
    let (resolvers, pusher) = pushed();
    let channel = Channel::builder("pushed:priority")
        .resolver_registry(resolvers)
        .connect_backoff(anygrpc::lb::BackoffConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..anygrpc::lb::BackoffConfig::default()
        })
        .connect_lazy()
        .unwrap();
    let config = lb_config(
        r#"{"priority_experimental": {"priorities": ["p0", "p1"], "children": {
            "p0": {"config": [{"round_robin": {}}]}, "p1": {"config": [{"round_robin": {}}]}}}}"#,
    );
    pusher.push_endpoints(endpoints(&p0, &p1), Some(&config));
    let client = TestClient::new(channel);
    let call = || {
        let mut request = Request::new(Payload::default());
        request.set_wait_for_ready(true);
        request.set_timeout(Duration::from_secs(20));
        block_on(client.clone().unary(request)).unwrap();
    };
    let served = |backends: &[Backend]| backends.iter().map(Backend::calls).sum::<usize>();
    for _ in 0..100 {
        call();
    }
    assert_eq!(
        (served(&p0), served(&p1)),
        (100, 0),
        "p0 serves while it is up"
    );

    // p0 goes down: calls move to p1, well within the failover timeout (p0 fails fast).
    let addrs: Vec<_> = p0.iter().map(Backend::socket_addr).collect();
    let down = Instant::now();
    p0.into_iter().for_each(Backend::stop);
    while served(&p1) == 0 {
        call();
    }
    assert!(down.elapsed() < anygrpc::lb::priority::DEFAULT_FAILOVER_TIMEOUT);
    let before = served(&p1);
    for _ in 0..100 {
        call();
    }
    assert_eq!(served(&p1) - before, 100, "p1 serves while p0 is down");

    // p0 comes back on the same ports: calls return to it.
    let p0: Vec<Backend> = addrs
        .into_iter()
        .map(|a| Backend::start_at(a, Behaviour::default()))
        .collect();
    let back = Instant::now();
    while served(&p0) == 0 {
        call();
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "p0 never took the calls back"
        );
    }
    let before = served(&p1);
    for _ in 0..100 {
        call();
    }
    assert_eq!(served(&p1), before, "p1 gets nothing once p0 is back");
}
