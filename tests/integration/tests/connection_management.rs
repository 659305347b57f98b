//! Connection management (gRFC A8, A9): keepalive and its enforcement, connection age, graceful
//! shutdown, stream limits and flow control, with short knobs on real sockets.

use std::time::{Duration, Instant};

use anygrpc::{
    health::{health_service, HealthCheckRequest, HealthCheckResponse},
    lb::ConnectivityState,
    rt::{block_on, Address},
    Code,
};
use anygrpc_integration_tests::{faults::FaultyNet, *};
use futures_util::{future::join_all, StreamExt};

const MS: Duration = Duration::from_millis(1);

/// A raw HTTP/2 client that pings every `every` and returns how its connection ended.
async fn ping_every(addr: &Address, every: Duration, pings: usize) -> Result<(), h2::Error> {
    let Address::Tcp(addr) = addr else {
        unreachable!()
    };
    let stream = async_io::Async::<std::net::TcpStream>::connect(*addr)
        .await
        .unwrap();
    let (_send, mut conn) =
        h2::client::handshake(anygrpc_rt::H2Io::new(anygrpc_rt::box_io(stream)))
            .await
            .unwrap();
    let mut ping_pong = conn.ping_pong().unwrap();
    let pinger = async {
        for _ in 0..pings {
            ping_pong.ping(h2::Ping::opaque()).await?;
            async_io::Timer::after(every).await;
        }
        Ok::<_, h2::Error>(())
    };
    futures_util::pin_mut!(pinger);
    match futures_util::future::select(conn, pinger).await {
        futures_util::future::Either::Left((ended, _)) => ended,
        futures_util::future::Either::Right((pinged, _)) => pinged,
    }
}

/// Waits until `call` (which never answers) has started on the server.
async fn started<F: std::future::Future + Unpin>(call: &mut F, server: &mut Running)
where
    F::Output: std::fmt::Debug,
{
    match futures_util::future::select(call, server.events.next()).await {
        futures_util::future::Either::Right((Some(Event::Started(_)), _)) => {}
        futures_util::future::Either::Right((event, _)) => panic!("unexpected {event:?}"),
        futures_util::future::Either::Left((ended, _)) => panic!("the call ended first: {ended:?}"),
    }
}

#[test]
fn a_client_pinging_too_often_is_sent_goaway_too_many_pings() {
    let server = start_with(|s| s.keepalive_min_ping_interval(Duration::from_secs(1)));
    let started = Instant::now();
    // Pings 100 ms apart: the 2nd, 3rd and 4th are strikes, and the 4th is one too many.
    let err = block_on(ping_every(&server.addr, 100 * MS, 50)).unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    assert!(err.is_go_away() && err.is_remote(), "{err}");
    assert!(
        err.to_string().contains("too_many_pings"),
        "debug data: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "after 4 pings");
    // Other clients are still served.
    block_on(server.client().unary(Payload::default())).unwrap();
}

#[test]
fn a_client_pinging_within_the_policy_is_never_disconnected() {
    // 10 pings 200 ms apart against a 100 ms minimum (the margin absorbs a loaded machine's
    // delays), with no call in flight (the server's policy holds those to 2 h unless
    // permitted, so it is permitted here).
    let server = start_with(|s| {
        s.keepalive_min_ping_interval(100 * MS)
            .keepalive_permit_without_calls(true)
    });
    block_on(ping_every(&server.addr, 200 * MS, 10)).unwrap();
}

#[test]
fn an_anygrpc_client_told_too_many_pings_backs_off_and_then_stays_connected() {
    // The server's minimum lies between the client's time and twice it, 100 ms from each, so
    // that a loaded machine's delays change neither outcome.
    let server = start_with(|s| {
        s.keepalive_min_ping_interval(300 * MS)
            .keepalive_permit_without_calls(true)
    });
    let net = FaultyNet::new();
    let channel = anygrpc::Channel::builder(&server.target())
        .runtime(net.clone())
        .keepalive_time_unclamped(200 * MS)
        .keepalive_permit_without_calls(true)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        client.unary(Payload::default()).await.unwrap();
        // Pinging every 200 ms, the first connection is closed with too_many_pings and the
        // channel goes IDLE until the next call; the doubled time (400 ms) satisfies the
        // server's 300 ms.
        let after = channel
            .wait_for_state_change(ConnectivityState::Ready)
            .await;
        assert_eq!(after, ConnectivityState::Idle);
        assert_eq!(net.connections(), 1, "no reconnection before the next call");
        client.unary(Payload::default()).await.unwrap();
        assert_eq!(net.connections(), 2);
        // Six pings' worth of time on the second connection: it is never closed.
        async_io::Timer::after(Duration::from_millis(2400)).await;
        client.unary(Payload::default()).await.unwrap();
        assert_eq!(net.connections(), 2, "the second connection stayed up");
    });
}

#[test]
fn keepalive_detects_a_blackholed_server_and_calls_move_to_a_new_connection() {
    let mut server = start();
    let net = FaultyNet::new();
    let (time, timeout) = (200 * MS, 300 * MS);
    let channel = anygrpc::Channel::builder(&server.target())
        .runtime(net.clone())
        .keepalive_time_unclamped(time)
        .keepalive_timeout(timeout)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    block_on(async {
        let mut hanging = Box::pin(client.unary(Payload {
            hang: true,
            ..Payload::default()
        }));
        // The call is on the server: cut the connection under it.
        started(&mut hanging, &mut server).await;
        net.blackhole();
        let cut = Instant::now();
        let err = hanging.await.unwrap_err();
        let detected = cut.elapsed();
        println!("blackhole detected after {detected:?}: {err}");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(
            detected <= time + timeout + 500 * MS,
            "detected after {detected:?}, keepalive time + timeout is {:?}",
            time + timeout
        );
        client.unary(Payload::default()).await.unwrap();
        assert_eq!(
            net.connections(),
            2,
            "the new call went to a fresh connection"
        );
    });
}

#[test]
fn under_max_connection_age_clients_reconnect_and_no_call_fails() {
    let server = start_with(|s| {
        s.max_connection_age(Duration::from_secs(2))
            .max_connection_age_grace(Duration::from_secs(1))
    });
    let net = FaultyNet::new();
    let channel = anygrpc::Channel::builder(&server.target())
        .runtime(net.clone())
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let until = Instant::now() + Duration::from_millis(5000);
    let calls = block_on(join_all((0..8).map(|_| {
        let client = client.clone();
        async move {
            let mut calls = 0;
            while Instant::now() < until {
                client.unary(Payload::default()).await.unwrap();
                calls += 1;
            }
            calls
        }
    })));
    let total: usize = calls.iter().sum();
    println!(
        "{total} calls over {} connections, none failed",
        net.connections()
    );
    // Ages of 1.8 to 2.2 s: a new connection at about 2 s and 4 s.
    assert!(
        net.connections() >= 3,
        "{} connections for {total} calls",
        net.connections()
    );
    assert!(total > 100, "{total} calls");
}

#[test]
fn graceful_shutdown_finishes_100_calls_flips_health_and_refuses_new_calls() {
    let (reporter, health) = health_service();
    reporter.set_serving("anygrpc.test.Test");
    let mut server = start_with(|s| {
        s.add_service(health)
            .shutdown_grace_period(Some(Duration::from_secs(10)))
    });
    let client = server.client();
    block_on(async {
        let mut calls = Vec::new();
        for _ in 0..100 {
            let (tx, rx) = futures_channel::mpsc::unbounded();
            let mut replies = client.bidi(rx).await.unwrap().into_inner();
            tx.unbounded_send(Payload::default()).unwrap();
            replies.message().await.unwrap().unwrap();
            calls.push((tx, replies));
        }
        let grpc = anygrpc::client::Grpc::new(server.channel());
        let mut health = grpc
            .server_streaming(
                http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Watch"),
                anygrpc::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::new(),
                anygrpc::Request::new(HealthCheckRequest {
                    service: "anygrpc.test.Test".to_owned(),
                }),
            )
            .await
            .unwrap()
            .into_inner();
        let serving = anygrpc::health::ServingStatus::Serving as i32;
        assert_eq!(health.message().await.unwrap().unwrap().status, serving);
        server.stop();
        server.stopping().await;
        let not_serving = anygrpc::health::ServingStatus::NotServing as i32;
        assert_eq!(
            health.message().await.unwrap().unwrap().status,
            not_serving,
            "health flipped to NOT_SERVING"
        );
        drop(health);
        let refused = TestClient::new(server.channel())
            .unary(Payload::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused}");
        let stopped = Instant::now();
        let finished = join_all(calls.into_iter().map(|(tx, mut replies)| async move {
            tx.unbounded_send(Payload {
                body: b"last".to_vec(),
                ..Payload::default()
            })
            .unwrap();
            let last = replies.message().await.unwrap().unwrap();
            drop(tx);
            assert!(replies.message().await.unwrap().is_none());
            last.body
        }))
        .await;
        assert!(finished.iter().all(|body| body == b"last"));
        assert!(stopped.elapsed() < Duration::from_secs(10));
    });
    let stopped = Instant::now();
    server.shutdown();
    assert!(stopped.elapsed() < Duration::from_secs(10));
}

#[test]
fn shutdown_cancels_calls_still_running_when_the_grace_period_ends() {
    let mut server = start_with(|s| s.shutdown_grace_period(Some(300 * MS)));
    let client = server.client();
    block_on(async {
        let mut hanging = Box::pin(client.unary(Payload {
            hang: true,
            ..Payload::default()
        }));
        started(&mut hanging, &mut server).await;
        let stopped = Instant::now();
        server.stop();
        let err = hanging.await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        let took = stopped.elapsed();
        assert!(took >= 300 * MS && took < 2000 * MS, "{took:?}");
    });
    let stopped = Instant::now();
    server.shutdown();
    assert!(stopped.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_closing_channel_refuses_new_calls_and_waits_for_those_in_flight() {
    let server = start();
    let channel = server.channel();
    let client = TestClient::new(channel.clone());
    block_on(async {
        let (requests, rx) = futures_channel::mpsc::unbounded();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        requests.unbounded_send(Payload::default()).unwrap();
        replies.next().await.unwrap().unwrap();

        let closing = channel.close(Duration::from_secs(60));
        futures_util::pin_mut!(closing);
        assert!(
            futures_util::poll!(closing.as_mut()).is_pending(),
            "a call is in flight"
        );
        assert_eq!(
            channel.connectivity_state(true),
            ConnectivityState::Shutdown
        );
        let refused = client.unary(Payload::default()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Cancelled, "{refused}");
        let waiting = Payload::default();
        let mut request = anygrpc::Request::new(waiting);
        request.set_wait_for_ready(true);
        let refused = client.unary(request).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Cancelled,
            "wait-for-ready too: {refused}"
        );

        // The call in flight goes on, on its connection, to its end.
        requests.unbounded_send(Payload::default()).unwrap();
        replies.next().await.unwrap().unwrap();
        drop(requests);
        assert!(replies.next().await.is_none(), "ended OK");
        drop(replies);
        let started = Instant::now();
        closing.await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not the grace period"
        );
    });
    assert_eq!(
        channel.connectivity_state(true),
        ConnectivityState::Shutdown
    );
}

#[test]
fn a_closing_channel_cuts_the_calls_left_when_the_grace_period_ends() {
    let mut server = start();
    let channel = server.channel();
    let client = TestClient::new(channel.clone());
    block_on(async {
        let mut hanging = Box::pin(client.unary(Payload {
            hang: true,
            ..Payload::default()
        }));
        started(&mut hanging, &mut server).await;
        let (closed, cut) = futures_util::join!(channel.close(300 * MS), hanging);
        let () = closed;
        let err = cut.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(
            matches!(server.next_event().await, Event::Dropped),
            "the handler was cancelled"
        );
    });
}

#[test]
fn calls_beyond_the_stream_limit_wait_for_a_free_stream() {
    let server = start_with(|s| s.max_concurrent_streams(2));
    let client = server.client();
    block_on(async {
        let mut open = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = futures_channel::mpsc::unbounded();
            let mut replies = client.bidi(rx).await.unwrap().into_inner();
            tx.unbounded_send(Payload::default()).unwrap();
            replies.message().await.unwrap().unwrap();
            open.push((tx, replies));
        }
        let queued = client.unary(Payload {
            body: b"queued".to_vec(),
            ..Payload::default()
        });
        futures_util::pin_mut!(queued);
        // Both streams are taken: the call waits (it does not fail)...
        let raced =
            futures_util::future::select(queued.as_mut(), async_io::Timer::after(300 * MS)).await;
        assert!(matches!(raced, futures_util::future::Either::Right(_)));
        // ...and goes through once one ends.
        let (tx, mut replies) = open.pop().unwrap();
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
        assert_eq!(queued.await.unwrap().into_inner().body, b"queued");
    });
}

#[test]
fn on_a_slow_link_the_receive_window_grows_with_the_bandwidth_delay_product() {
    let server = start();
    // 20 ms more for everything the client reads: a 1 MiB window carries at most 50 MiB/s.
    let net = FaultyNet::with_read_delay(20 * MS);
    let channel = anygrpc::Channel::builder(&server.target())
        .runtime(net.clone())
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let started = Instant::now();
    let received = block_on(async {
        let mut stream = client
            .server_stream(Payload {
                count: 512,
                response_size: 64 * 1024,
                ..Payload::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = 0;
        while let Some(message) = stream.message().await.unwrap() {
            bytes += message.body.len();
        }
        bytes
    });
    assert_eq!(received, 32 << 20);
    let windows = initial_window_settings(&net.written());
    println!(
        "32 MiB in {:?}; stream windows the client advertised: {windows:?}",
        started.elapsed()
    );
    assert!(
        windows.iter().any(|w| *w > 1 << 20),
        "the window grew past its initial 1 MiB: {windows:?}"
    );
}

/// The SETTINGS_INITIAL_WINDOW_SIZE values in a client's bytes (after its preface).
fn initial_window_settings(mut bytes: &[u8]) -> Vec<u32> {
    bytes = &bytes[24..];
    let mut windows = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let (kind, flags) = (bytes[3], bytes[4]);
        let Some(payload) = bytes.get(9..9 + length) else {
            break;
        };
        if kind == 0x4 && flags & 0x1 == 0 {
            for entry in payload.chunks_exact(6) {
                if entry[..2] == [0, 4] {
                    windows.push(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                }
            }
        }
        bytes = &bytes[9 + length..];
    }
    windows
}
