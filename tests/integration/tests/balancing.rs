//! Load balancing end to end: round_robin over several servers, wait-for-ready across a server
//! going away and coming back, pick_first's single backend.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anygrpc::lb::BackoffConfig;
use anygrpc::{rt::block_on, Channel, Code, Request};
use anygrpc_integration_tests::*;
use anygrpc_lb::ConnectivityState;

/// A test server that counts the calls it receives.
fn counted_server(addr: std::net::SocketAddr) -> (Running, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (server, events) = test_server();
    let bound = server
        .interceptor(move |_: &mut anygrpc::interceptor::CallHead| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .bind(addr)
        .expect("bind");
    (run(bound, events), calls)
}

fn ipv4_target(servers: &[&Running]) -> String {
    let addrs: Vec<String> = servers.iter().map(|s| s.target().to_string()).collect();
    format!("ipv4:{}", addrs.join(","))
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..BackoffConfig::default()
    }
}

fn wait_for_ready(body: &[u8]) -> Request<Payload> {
    let mut request = Request::new(Payload {
        body: body.to_vec(),
        ..Payload::default()
    });
    request.set_wait_for_ready(true);
    request.set_timeout(Duration::from_secs(20));
    request
}

#[test]
fn round_robin_spreads_calls_and_survives_a_server_restart() {
    let (a, a_calls) = counted_server(localhost());
    let (b, b_calls) = counted_server(localhost());
    let (mut c, c_calls) = counted_server(localhost());
    let c_addr = match &c.addr {
        anygrpc::rt::Address::Tcp(addr) => *addr,
        other => panic!("tcp expected, got {other}"),
    };
    let channel = Channel::builder(&ipv4_target(&[&a, &b, &c]))
        .load_balancing_policy("round_robin")
        .connect_backoff(fast_backoff())
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        // Let every subchannel connect before counting, so the spread is round robin's alone.
        while !channel_all_ready(&[&a_calls, &b_calls, &c_calls], &client).await {}
        let before = [&a_calls, &b_calls, &c_calls].map(|n| n.load(Ordering::Relaxed));
        for _ in 0..3000 {
            client.unary(wait_for_ready(b"x")).await.unwrap();
        }
        let counts: Vec<usize> = [&a_calls, &b_calls, &c_calls]
            .iter()
            .zip(before)
            .map(|(n, before)| n.load(Ordering::Relaxed) - before)
            .collect();
        for n in &counts {
            assert!(
                (950..=1050).contains(n),
                "not within ±5% of 1000: {counts:?}"
            );
        }

        // Stop one server: with wait-for-ready no call fails, and the others take its share.
        c.stop();
        c.stopping().await;
        c.shutdown();
        for _ in 0..300 {
            client.unary(wait_for_ready(b"y")).await.unwrap();
        }
        let served_by_c = c_calls.load(Ordering::Relaxed);

        // Restart it on the same address: it is reconnected and gets calls again.
        let (_c, c_again) = counted_server(c_addr);
        let mut calls = 0;
        while c_again.load(Ordering::Relaxed) == 0 {
            client.unary(wait_for_ready(b"z")).await.unwrap();
            calls += 1;
            assert!(calls < 100_000, "the restarted server never got a call");
        }
        assert_eq!(c_calls.load(Ordering::Relaxed), served_by_c);
    });
    assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
}

/// One round of calls; true once every server has had one.
async fn channel_all_ready(counters: &[&Arc<AtomicUsize>], client: &TestClient) -> bool {
    for _ in 0..counters.len() {
        client.unary(wait_for_ready(b"w")).await.unwrap();
    }
    counters.iter().all(|n| n.load(Ordering::Relaxed) > 0)
}

#[test]
fn pick_first_sends_every_call_to_one_backend() {
    let (a, a_calls) = counted_server(localhost());
    let (b, b_calls) = counted_server(localhost());
    let channel = Channel::builder(&ipv4_target(&[&a, &b]))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    block_on(async {
        for _ in 0..100 {
            client.unary(Payload::default()).await.unwrap();
        }
    });
    let counts = [
        a_calls.load(Ordering::Relaxed),
        b_calls.load(Ordering::Relaxed),
    ];
    assert_eq!(counts, [100, 0], "the first address takes every call");
}

#[test]
fn without_wait_for_ready_calls_fail_fast_in_transient_failure() {
    let port = std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = Channel::builder(&format!("ipv4:127.0.0.1:{port}"))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        let err = client.unary(Payload::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert_eq!(
            channel.connectivity_state(false),
            ConnectivityState::TransientFailure
        );
        // Wait-for-ready waits instead, here until its deadline.
        let mut request = Request::new(Payload::default());
        request.set_wait_for_ready(true);
        request.set_timeout(Duration::from_millis(200));
        let err = client.unary(request).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    });
}

#[test]
fn a_wait_for_ready_call_waits_for_the_server_to_come_up() {
    let addr = std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let channel = Channel::builder(&format!("ipv4:{addr}"))
        .connect_backoff(fast_backoff())
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        // Fail once so the channel is in TRANSIENT_FAILURE, then start the server after the
        // state change is observed.
        let _ = client.unary(Payload::default()).await;
        let call = client.unary(wait_for_ready(b"late"));
        let start = async {
            while channel.connectivity_state(false) != ConnectivityState::TransientFailure {
                channel
                    .wait_for_state_change(channel.connectivity_state(false))
                    .await;
            }
            counted_server(addr)
        };
        let (reply, _server) = futures_util::future::join(call, start).await;
        assert_eq!(reply.unwrap().into_inner().body, b"late");
    });
}

#[test]
fn invalid_lb_config_fails_the_build() {
    for config in [
        "not json",
        "[]",
        r#"[{"no_such_policy":{}}]"#,
        r#"[{"pick_first":{"shuffleAddressList":1}}]"#,
    ] {
        let err = Channel::builder("ipv4:127.0.0.1:1")
            .load_balancing_config(config)
            .connect_lazy()
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{config}: {err}");
    }
}

/// A user's resolver: `cluster:NAME` resolves to the addresses the test registered.
#[derive(Debug)]
struct ClusterResolver(Vec<anygrpc::rt::Address>);

impl anygrpc_resolver::ResolverBuilder for ClusterResolver {
    fn scheme(&self) -> &'static str {
        "cluster"
    }

    fn build(
        &self,
        _: &anygrpc_resolver::Target,
        _: Arc<dyn anygrpc::rt::Runtime>,
    ) -> Result<Box<dyn anygrpc_resolver::Resolver>, anygrpc::Status> {
        Ok(Box::new(anygrpc_resolver::StaticResolver::new(
            self.0.clone(),
        )))
    }
}

/// A user's policy: every call goes to the last address.
#[derive(Debug, Default)]
struct LastAddress {
    chosen: Option<anygrpc_lb::SubchannelId>,
}

#[derive(Debug)]
struct LastAddressBuilder;

impl anygrpc_lb::LbPolicyBuilder for LastAddressBuilder {
    fn name(&self) -> &'static str {
        "last_address"
    }

    fn build(&self, _: u64) -> Box<dyn anygrpc_lb::LbPolicy> {
        Box::new(LastAddress::default())
    }
}

impl anygrpc_lb::LbPolicy for LastAddress {
    fn update(
        &mut self,
        endpoints: Vec<anygrpc_lb::Endpoint>,
        _: Option<&anygrpc_lb::PolicyConfig>,
        ctl: &mut dyn anygrpc_lb::ChannelControl,
    ) {
        let addresses = anygrpc_lb::flatten_endpoints(endpoints);
        if let (None, Some(last)) = (self.chosen, addresses.last()) {
            let id = ctl.new_subchannel(last);
            ctl.connect(id);
            self.chosen = Some(id);
        }
    }

    fn resolver_error(
        &mut self,
        status: anygrpc::Status,
        ctl: &mut dyn anygrpc_lb::ChannelControl,
    ) {
        let picker = anygrpc_lb::FixedPicker(anygrpc_lb::Pick::Fail(status));
        ctl.update_picker(ConnectivityState::TransientFailure, Arc::new(picker));
    }

    fn subchannel_state(
        &mut self,
        id: anygrpc_lb::SubchannelId,
        state: ConnectivityState,
        _: Option<&anygrpc::Status>,
        ctl: &mut dyn anygrpc_lb::ChannelControl,
    ) {
        let pick = match state {
            ConnectivityState::Ready => anygrpc_lb::Pick::Ready(id),
            ConnectivityState::Idle => {
                ctl.connect(id);
                anygrpc_lb::Pick::Queue
            }
            _ => anygrpc_lb::Pick::Queue,
        };
        ctl.update_picker(state, Arc::new(anygrpc_lb::FixedPicker(pick)));
    }

    fn exit_idle(&mut self, ctl: &mut dyn anygrpc_lb::ChannelControl) {
        if let Some(id) = self.chosen {
            ctl.connect(id);
        }
    }
}

#[test]
fn a_custom_resolver_and_a_custom_policy_work_end_to_end() {
    let (a, a_calls) = counted_server(localhost());
    let (b, b_calls) = counted_server(localhost());
    let mut resolvers = anygrpc_resolver::Registry::default();
    resolvers.register(Arc::new(ClusterResolver(vec![
        a.addr.clone(),
        b.addr.clone(),
    ])));
    let mut policies = anygrpc_lb::PolicyRegistry::default();
    policies.register(Arc::new(LastAddressBuilder));
    let channel = Channel::builder("cluster:backends")
        .resolver_registry(resolvers)
        .lb_policy_registry(policies)
        .load_balancing_policy("last_address")
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    block_on(async {
        for _ in 0..20 {
            client.unary(Payload::default()).await.unwrap();
        }
    });
    assert_eq!(a_calls.load(Ordering::Relaxed), 0);
    assert_eq!(b_calls.load(Ordering::Relaxed), 20);
}

#[test]
fn an_unused_channel_goes_idle_and_a_call_in_flight_keeps_it_connected() {
    let (a, a_calls) = counted_server(localhost());
    let channel = Channel::builder(&a.target())
        .idle_timeout(Duration::from_millis(200))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        client
            .unary(Request::new(Payload::default()))
            .await
            .unwrap();
        assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
        // No calls for the idle timeout: the channel lets its connection go.
        assert_eq!(
            channel
                .wait_for_state_change(ConnectivityState::Ready)
                .await,
            ConnectivityState::Idle
        );
        // The next call reconnects.
        client
            .unary(Request::new(Payload::default()))
            .await
            .unwrap();
        assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
        assert_eq!(a_calls.load(Ordering::Relaxed), 2);

        // A call held open for 3.5 idle timeouts keeps the channel READY until it ends.
        let mut hanging = Request::new(Payload {
            hang: true,
            ..Payload::default()
        });
        hanging.set_timeout(Duration::from_millis(700));
        let call = std::pin::pin!(client.unary(hanging));
        let idle = std::pin::pin!(channel.wait_for_state_change(ConnectivityState::Ready));
        match futures_util::future::select(call, idle).await {
            futures_util::future::Either::Left((result, idle)) => {
                assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
                assert_eq!(idle.await, ConnectivityState::Idle);
            }
            futures_util::future::Either::Right((state, _)) => {
                panic!("went {state} while a call was in flight")
            }
        }
    });
}
