//! Connection lifecycle: lazy connect, reconnect, accept-loop resilience, graceful shutdown.

use std::{
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use anygrpc::lb::BackoffConfig;
use anygrpc::{
    rt::{block_on, Address, BoxIo, Listener},
    Channel, Code,
};
use anygrpc_integration_tests::*;
use anygrpc_lb::ConnectivityState;

#[test]
fn lazy_channel_connects_on_first_call() {
    let server = start();
    let channel = server.channel();
    assert_eq!(channel.connectivity_state(false), ConnectivityState::Idle);
    block_on(TestClient::new(channel.clone()).unary(Payload::default())).unwrap();
    assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
}

#[test]
fn eager_connect_fails_fast_when_nothing_listens() {
    // Bind then drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = block_on(Channel::builder(&format!("127.0.0.1:{port}")).connect()).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[test]
fn bad_targets_fail_at_build_time() {
    for bad in ["ipv4:not-an-ip", "unix:", "dns:///host:99999999"] {
        let err = Channel::builder(bad).connect_lazy().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
    }
}

#[test]
fn channel_reconnects_after_server_restart() {
    let server = start();
    let Address::Tcp(addr) = server.addr.clone() else {
        unreachable!()
    };
    let backoff = BackoffConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..BackoffConfig::default()
    };
    let channel = Channel::builder(&addr.to_string())
        .connect_backoff(backoff)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(client.unary(Payload::default())).unwrap();
    server.shutdown();
    let err = block_on(client.unary(Payload::default())).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // A new server on the same port: the channel connects again, after its backoff; a
    // wait-for-ready call waits for that instead of failing fast.
    let (server, events) = test_server();
    let restarted = run(server.bind(addr).unwrap(), events);
    let mut request = anygrpc::Request::new(Payload::default());
    request.set_wait_for_ready(true);
    request.set_timeout(Duration::from_secs(10));
    block_on(client.unary(request)).unwrap();
    assert_eq!(channel.connectivity_state(false), ConnectivityState::Ready);
    drop(restarted);
}

/// A listener that fails every other accept.
#[derive(Debug)]
struct Flaky {
    inner: Box<dyn Listener>,
    polls: Arc<AtomicUsize>,
}

impl Listener for Flaky {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, Address)>> {
        if self.polls.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            return Poll::Ready(Err(io::Error::from_raw_os_error(24))); // EMFILE
        }
        self.inner.poll_accept(cx)
    }

    fn local_addr(&self) -> io::Result<Address> {
        self.inner.local_addr()
    }
}

#[test]
fn accept_errors_never_end_the_accept_loop() {
    let runtime = anygrpc::rt::default_runtime().unwrap();
    let inner = runtime.listen_tcp(localhost(), Default::default()).unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let (server, events) = test_server();
    let bound = server
        .with_listener(
            Box::new(Flaky {
                inner,
                polls: polls.clone(),
            }),
            runtime,
        )
        .unwrap();
    let server = run(bound, events);
    for _ in 0..3 {
        // A new channel each time: each needs a new accepted connection.
        block_on(server.client().unary(Payload::default())).unwrap();
    }
    assert!(
        polls.load(Ordering::SeqCst) >= 6,
        "errors were returned and skipped"
    );
}

#[test]
fn graceful_shutdown_lets_in_flight_calls_finish() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        tx.unbounded_send(Payload::default()).unwrap();
        replies.message().await.unwrap().unwrap();

        server.stop();
        server.stopping().await;
        assert!(server.is_serving(), "shutdown waits for the open call");
        let err =
            block_on(TestClient::new(server.channel()).unary(Payload::default())).unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unavailable,
            "no new connections once shutting down: {err}"
        );

        tx.unbounded_send(Payload {
            body: b"after".to_vec(),
            ..Payload::default()
        })
        .unwrap();
        assert_eq!(replies.message().await.unwrap().unwrap().body, b"after");
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    });
    server.shutdown();
}

#[test]
fn silent_connections_are_closed_after_the_handshake_timeout() {
    use std::io::Read;
    let server = start_with(|s| s.handshake_timeout(Duration::from_millis(200)));
    let Address::Tcp(addr) = server.addr.clone() else {
        unreachable!()
    };
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    // A guard against hanging the suite if the server never closes the connection.
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut total = 0;
    loop {
        match silent.read(&mut buf) {
            Ok(0) => break,
            // The server's SETTINGS may arrive before the close.
            Ok(n) => total += n,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
    assert!(total < buf.len(), "only the server preface was sent");
    // Well-behaved clients are still served.
    block_on(server.client().unary(Payload::default())).unwrap();
}
