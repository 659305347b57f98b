//! Service config and gRFC A6 end to end: retries with `grpc-previous-rpc-attempts`,
//! non-retryable codes, hedging across a slow and a fast backend, retry throttling, and
//! method settings from the config.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anygrpc::{
    interceptor::{AsyncInterceptor, CallHead},
    metadata::{self, MetadataMap},
    rt::block_on,
    server::PreviousAttempts,
    Channel, Code, Request, Status,
};
use anygrpc_integration_tests::*;
use futures_channel::mpsc;
use futures_util::{future::BoxFuture, StreamExt};

/// A server whose interceptor fails calls with `fail_with` while `failing` says so, and
/// records each call's `grpc-previous-rpc-attempts`.
struct Flaky {
    running: Running,
    seen: Arc<Mutex<Vec<u32>>>,
}

fn flaky_server(fail_with: Code, failing: impl Fn(usize) -> bool + Send + Sync + 'static) -> Flaky {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let running = start_with(move |server| {
        server.interceptor(move |head: &mut CallHead| {
            let previous = head
                .extensions_mut()
                .get::<PreviousAttempts>()
                .map_or(0, |p| p.0);
            let mut seen = log.lock().unwrap();
            seen.push(previous);
            if failing(seen.len()) {
                return Err(Status::new(fail_with, "injected failure"));
            }
            Ok(())
        })
    });
    Flaky { running, seen }
}

impl Flaky {
    /// A client of this server whose channel has the service config `config`.
    fn client(&self, config: &str) -> TestClient {
        let channel = Channel::builder(&self.running.target())
            .default_service_config(config)
            .connect_lazy()
            .unwrap();
        TestClient::new(channel)
    }
}

fn retry_config(max_attempts: u32, codes: &str) -> String {
    format!(
        r#"{{"methodConfig": [{{
            "name": [{{"service": "anygrpc.test.Test"}}],
            "retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": "0.01s",
                "maxBackoff": "0.05s", "backoffMultiplier": 2, "retryableStatusCodes": [{codes}]}}
        }}]}}"#
    )
}

fn payload(body: &[u8]) -> Request<Payload> {
    Request::new(Payload {
        body: body.to_vec(),
        ..Payload::default()
    })
}

#[test]
fn a_call_succeeds_on_attempt_n_plus_1_and_the_server_sees_n_previous_attempts() {
    let flaky = flaky_server(Code::Unavailable, |call| call <= 3);
    let client = flaky.client(&retry_config(5, r#""UNAVAILABLE""#));
    let reply = block_on(client.unary(payload(b"hello"))).unwrap();
    assert_eq!(reply.into_inner().body, b"hello");
    assert_eq!(*flaky.seen.lock().unwrap(), [0, 1, 2, 3]);

    // Server streaming retries the same way before its response head.
    let flaky2 = flaky_server(Code::Unavailable, |call| call <= 2);
    let client = flaky2.client(&retry_config(5, r#""UNAVAILABLE""#));
    let messages = block_on(async {
        let mut request = payload(b"");
        request.get_mut().count = 3;
        let mut stream = client.server_stream(request).await?.into_inner();
        let mut n = 0;
        while stream.message().await?.is_some() {
            n += 1;
        }
        Ok::<_, Status>(n)
    })
    .unwrap();
    assert_eq!(messages, 3);
    assert_eq!(*flaky2.seen.lock().unwrap(), [0, 1, 2]);
}

#[test]
fn a_retried_bidi_call_replays_what_its_request_channel_sent() {
    let flaky = flaky_server(Code::Unavailable, |call| call <= 2);
    let client = flaky.client(&retry_config(5, r#""UNAVAILABLE""#));
    block_on(async {
        // Under a retry policy the call's request task reads the channel as a stream and keeps
        // what it sent for the next attempt.
        let (mut tx, rx) = anygrpc::client::request_channel(2);
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        for body in [b"a", b"b"] {
            tx.send(payload(body).into_inner()).await.unwrap();
        }
        for body in [b"a", b"b"] {
            assert_eq!(replies.message().await.unwrap().unwrap().body, body);
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    });
    assert_eq!(*flaky.seen.lock().unwrap(), [0, 1, 2]);
}

#[test]
fn attempts_stop_at_max_attempts_and_non_retryable_codes_are_not_retried() {
    let flaky = flaky_server(Code::Unavailable, |_| true);
    let client = flaky.client(&retry_config(3, r#""UNAVAILABLE""#));
    let err = block_on(client.unary(payload(b"x"))).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(*flaky.seen.lock().unwrap(), [0, 1, 2]);

    let invalid = flaky_server(Code::InvalidArgument, |_| true);
    let channel = Channel::builder(&invalid.running.target())
        .default_service_config(retry_config(5, r#""UNAVAILABLE""#))
        .connect_lazy()
        .unwrap();
    let err = block_on(TestClient::new(channel).unary(payload(b"x"))).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        *invalid.seen.lock().unwrap(),
        [0],
        "INVALID_ARGUMENT is not retried"
    );
}

/// A server that fails every call UNAVAILABLE with `grpc-retry-pushback-ms: pushback` in its
/// trailers, counting the calls.
fn pushing_back(pushback: &'static str) -> (Running, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let running = start_with(move |server| {
        server.interceptor(move |_: &mut CallHead| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut trailers = MetadataMap::new();
            trailers.insert(metadata::RETRY_PUSHBACK, pushback)?;
            Err(Status::with_metadata(Code::Unavailable, "busy", trailers))
        })
    });
    (running, calls)
}

#[test]
fn a_server_sets_retry_pushback_and_the_client_obeys_it() {
    let retries = |target: &str, initial_backoff: &str| {
        let config = format!(
            r#"{{"methodConfig": [{{
                "name": [{{"service": "anygrpc.test.Test"}}],
                "retryPolicy": {{"maxAttempts": 3, "initialBackoff": "{initial_backoff}",
                    "maxBackoff": "60s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}
            }}]}}"#
        );
        let channel = Channel::builder(target)
            .default_service_config(config)
            .connect_lazy()
            .unwrap();
        TestClient::new(channel)
    };
    // A negative pushback: no more attempts.
    let (stop, calls) = pushing_back("-1");
    let err = block_on(retries(&stop.target(), "0.01s").unary(payload(b"x"))).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "pushback -1 stops retries");

    // A 1 ms pushback replaces a 30 s backoff: all three attempts fit in a 10 s deadline.
    let (soon, calls) = pushing_back("1");
    let mut request = payload(b"x");
    request.set_timeout(Duration::from_secs(10));
    let err = block_on(retries(&soon.target(), "30s").unary(request)).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Delays every call by `delay`, counting calls started and reporting each one cancelled
/// mid-delay.
struct Slow {
    delay: Duration,
    /// Delays only calls whose path ends with this (`None`: every call).
    only: Option<&'static str>,
    started: Arc<AtomicUsize>,
    cancelled: mpsc::UnboundedSender<()>,
}

/// Reports a cancellation when dropped before it is marked done.
struct CancelReport(mpsc::UnboundedSender<()>, bool);

impl Drop for CancelReport {
    fn drop(&mut self) {
        if !self.1 {
            let _ = self.0.unbounded_send(());
        }
    }
}

impl AsyncInterceptor for Slow {
    fn intercept<'a>(&'a self, head: &'a mut CallHead) -> BoxFuture<'a, Result<(), Status>> {
        let delayed = self.only.is_none_or(|only| head.path().ends_with(only));
        Box::pin(async move {
            if !delayed {
                return Ok(());
            }
            self.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = CancelReport(self.cancelled.clone(), false);
            async_io::Timer::after(self.delay).await;
            guard.1 = true;
            Ok(())
        })
    }
}

#[test]
fn hedging_answers_at_the_fast_backends_speed_and_cancels_every_loser() {
    let started = Arc::new(AtomicUsize::new(0));
    let (cancelled, mut cancellations) = mpsc::unbounded();
    let slow = Slow {
        delay: Duration::from_secs(2),
        only: None,
        started: started.clone(),
        cancelled,
    };
    let slow_server = start_with(|server| server.async_interceptor(slow));
    let fast_server = start();
    let target = format!("ipv4:{},{}", slow_server.target(), fast_server.target());
    let config = r#"{"loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": "anygrpc.test.Test", "method": "Unary"}],
            "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                              "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let channel = Channel::builder(&target)
        .default_service_config(config)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let mut latencies = block_on(async {
        // Warm up both connections so latency is the hedging schedule's, not connecting.
        for _ in 0..4 {
            client.unary(payload(b"warm")).await.unwrap();
        }
        let mut latencies = Vec::new();
        for _ in 0..40 {
            let begun = Instant::now();
            client.unary(payload(b"x")).await.unwrap();
            latencies.push(begun.elapsed());
        }
        latencies
    });
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(1000),
        "p99 {p99:?}: hedges to the fast backend should answer well before the slow one's 2 s"
    );
    let slow_attempts = started.load(Ordering::SeqCst);
    eprintln!(
        "hedging: p50 {:?}, p99 {p99:?}, slow backend attempts {slow_attempts}",
        latencies[latencies.len() / 2]
    );
    assert!(
        slow_attempts >= 20,
        "round robin sent the slow backend {slow_attempts} attempts"
    );
    // Every attempt the slow backend started lost the race and was cancelled: each reports
    // its cancellation, well before its 2 s delay would have ended it.
    let all_cancelled = block_on(async {
        let reports = async {
            for _ in 0..slow_attempts {
                cancellations.next().await;
            }
        };
        let limit = async_io::Timer::after(Duration::from_secs(1));
        matches!(
            futures_util::future::select(std::pin::pin!(reports), limit).await,
            futures_util::future::Either::Left(_)
        )
    });
    assert!(
        all_cancelled,
        "every one of {slow_attempts} losing attempts is cancelled"
    );
}

#[test]
fn throttling_stops_retries_under_sustained_failure_and_resumes_after_successes() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let flaky = flaky_server(Code::Unavailable, move |_| flag.load(Ordering::SeqCst));
    // maxTokens 10: retries stop once the tokens are at or below 5; each success gives 1.
    let config = r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 1},
        "methodConfig": [{"name": [{"service": "anygrpc.test.Test"}],
            "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let client = flaky.client(config);
    let attempts_of = |expect_ok: bool| {
        let before = flaky.seen.lock().unwrap().len();
        let result = block_on(client.unary(payload(b"x")));
        assert_eq!(result.is_ok(), expect_ok, "{result:?}");
        flaky.seen.lock().unwrap().len() - before
    };
    // 10 → 9 (retry) → 8; 8 → 7 (retry) → 6; 6 → 5: throttled from here on.
    let failing_calls: Vec<usize> = (0..8).map(|_| attempts_of(false)).collect();
    assert_eq!(failing_calls, [2, 2, 1, 1, 1, 1, 1, 1]);
    // The tokens are at 0 now. A failure takes one before the check, so retries resume once
    // seven successes bring them to 7 (7 - 1 = 6 > 5).
    failing.store(false, Ordering::SeqCst);
    for _ in 0..7 {
        assert_eq!(attempts_of(true), 1);
    }
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        attempts_of(false),
        2,
        "retries resume once the tokens recover"
    );
}

#[test]
fn method_config_sets_timeouts_and_an_invalid_config_fails_the_build() {
    let server = start();
    let config = r#"{"methodConfig": [{"name": [{"service": "anygrpc.test.Test", "method": "Unary"}],
        "timeout": "0.2s"}]}"#;
    let channel = Channel::builder(&server.target())
        .default_service_config(config)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let begun = Instant::now();
    let mut request = payload(b"");
    request.get_mut().hang = true;
    let err = block_on(client.unary(request)).unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(begun.elapsed() < Duration::from_secs(5));

    for bad in [
        "{",
        r#"{"methodConfig": [{"name": [{"service": "s"}], "retryPolicy": {"maxAttempts": 1}}]}"#,
        r#"{"loadBalancingConfig": [{"no_such_policy": {}}]}"#,
    ] {
        let err = Channel::builder(&server.target())
            .default_service_config(bad)
            .connect_lazy()
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
}

/// What one attempt of a streaming call received: its `grpc-previous-rpc-attempts` and the
/// bodies of the request messages it read.
type AttemptLog = Arc<Mutex<Vec<(u32, Vec<Vec<u8>>)>>>;

/// A service whose streaming methods fail every attempt before `succeed_on` with UNAVAILABLE
/// once they have read `read_before_failing` request messages, so a retry has to be sent what
/// the failed attempt had already received.
#[derive(Clone)]
struct FailsAfterReading {
    succeed_on: u32,
    read_before_failing: usize,
    log: AttemptLog,
}

impl FailsAfterReading {
    /// Reads the messages a failing attempt takes, logs them, and fails it; `None` for the
    /// attempt that succeeds (logged with no messages yet).
    async fn attempt(
        &self,
        request: &mut Request<anygrpc::Streaming<Payload>>,
    ) -> Result<usize, Status> {
        let previous = request
            .extensions()
            .get::<PreviousAttempts>()
            .map_or(0, |p| p.0);
        let index = {
            let mut log = self.log.lock().unwrap();
            log.push((previous, Vec::new()));
            log.len() - 1
        };
        if previous >= self.succeed_on {
            return Ok(index);
        }
        for _ in 0..self.read_before_failing {
            let message = request.get_mut().message().await?.expect("a message");
            self.log.lock().unwrap()[index].1.push(message.body);
        }
        Err(Status::unavailable("injected failure after reading"))
    }
}

impl anygrpc_integration_tests::pb::test_server::Test for FailsAfterReading {
    async fn unary(&self, _: Request<Payload>) -> Result<anygrpc::Response<Payload>, Status> {
        Err(Status::unimplemented("streaming only"))
    }

    async fn server_stream(
        &self,
        _: Request<Payload>,
    ) -> Result<anygrpc::Response<anygrpc::ResponseStream<Payload>>, Status> {
        Err(Status::unimplemented("streaming only"))
    }

    async fn client_stream(
        &self,
        mut request: Request<anygrpc::Streaming<Payload>>,
    ) -> Result<anygrpc::Response<Payload>, Status> {
        let index = self.attempt(&mut request).await?;
        let mut messages = request.into_inner();
        while let Some(message) = messages.message().await? {
            self.log.lock().unwrap()[index].1.push(message.body);
        }
        let count = self.log.lock().unwrap()[index].1.len() as u32;
        Ok(anygrpc::Response::new(Payload {
            count,
            ..Payload::default()
        }))
    }

    async fn bidi(
        &self,
        mut request: Request<anygrpc::Streaming<Payload>>,
    ) -> Result<anygrpc::Response<anygrpc::ResponseStream<Payload>>, Status> {
        let index = self.attempt(&mut request).await?;
        let log = self.log.clone();
        let echoed = request.into_inner().map(move |message| {
            let message = message?;
            log.lock().unwrap()[index].1.push(message.body.clone());
            Ok(message)
        });
        Ok(anygrpc::Response::new(Box::pin(echoed)))
    }
}

fn fails_after_reading(succeed_on: u32, read_before_failing: usize) -> (Running, AttemptLog) {
    let log = AttemptLog::default();
    let service = FailsAfterReading {
        succeed_on,
        read_before_failing,
        log: log.clone(),
    };
    let server = anygrpc::Server::builder()
        .add_service(anygrpc_integration_tests::TestServer::new(service))
        .bind(localhost())
        .unwrap();
    (run(server, mpsc::unbounded().1), log)
}

fn bodies(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

#[test]
fn client_streaming_retries_replay_the_request_stream() {
    let (server, log) = fails_after_reading(2, 2);
    let channel = Channel::builder(&server.target())
        .default_service_config(retry_config(5, r#""UNAVAILABLE""#))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let messages = ["a", "b", "c"].map(|body| Payload {
        body: body.into(),
        ..Payload::default()
    });
    let reply =
        block_on(client.client_stream(Request::new(futures_util::stream::iter(messages)))).unwrap();
    assert_eq!(reply.into_inner().count, 3);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (0, bodies(&["a", "b"])),
            (1, bodies(&["a", "b"])),
            (2, bodies(&["a", "b", "c"]))
        ],
        "each retry is sent the whole request stream from its first message"
    );
}

#[test]
fn bidi_retries_replay_what_was_sent_and_go_on_with_the_stream() {
    let (server, log) = fails_after_reading(1, 2);
    let channel = Channel::builder(&server.target())
        .default_service_config(retry_config(3, r#""UNAVAILABLE""#))
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let (requests, outgoing) = mpsc::unbounded();
    let send = |body: &str| {
        requests
            .unbounded_send(Payload {
                body: body.into(),
                ..Payload::default()
            })
            .unwrap()
    };
    let echoed = block_on(async {
        let mut replies = client.bidi(Request::new(outgoing)).await?.into_inner();
        send("a");
        send("b");
        // The first attempt fails after reading both; the echo comes from the retry, which
        // was sent them again.
        let first = replies.message().await?.expect("an echo").body;
        send("c");
        requests.close_channel();
        let mut echoed = vec![first];
        while let Some(reply) = replies.message().await? {
            echoed.push(reply.body);
        }
        Ok::<_, Status>(echoed)
    })
    .unwrap();
    assert_eq!(echoed, bodies(&["a", "b", "c"]));
    assert_eq!(
        *log.lock().unwrap(),
        [(0, bodies(&["a", "b"])), (1, bodies(&["a", "b", "c"]))]
    );
}

#[test]
fn a_request_stream_that_outgrows_the_retry_buffer_commits_the_call() {
    let (server, log) = fails_after_reading(1, 1);
    let channel = Channel::builder(&server.target())
        .default_service_config(retry_config(5, r#""UNAVAILABLE""#))
        .retry_buffer_size(64, 1 << 20)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let messages = (0..3).map(|_| Payload {
        body: vec![b'x'; 100],
        ..Payload::default()
    });
    let err = block_on(client.client_stream(Request::new(futures_util::stream::iter(messages))))
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "no retry once the request outgrew the buffer");
    assert_eq!(log[0].0, 0);
}

#[test]
fn a_resolvers_invalid_service_config_is_ignored_and_the_last_good_one_stays() {
    let flaky = flaky_server(Code::Unavailable, |call| call % 2 == 1);
    let (resolvers, mut pusher) = pushed::pushed();
    let channel = Channel::builder("pushed:flaky")
        .resolver_registry(resolvers)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let backend = vec![flaky.running.addr.clone()];
    // Every odd-numbered call on the server fails: a call is retried once (and succeeds)
    // while a retry policy is in force, and fails without one.
    let attempts_of = |expect_ok: bool| {
        let before = flaky.seen.lock().unwrap().len();
        let result = block_on(client.unary(payload(b"x")));
        assert_eq!(result.is_ok(), expect_ok, "{result:?}");
        flaky.seen.lock().unwrap().len() - before
    };
    // The first call waits for the resolver's first result, and follows its config.
    pusher.push(backend.clone(), Some(&retry_config(2, r#""UNAVAILABLE""#)));
    assert_eq!(attempts_of(true), 2);
    block_on(pusher.taken());
    // An invalid config is ignored: the retry policy stays in force.
    pusher.push(
        backend.clone(),
        Some(r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1}}]}"#),
    );
    block_on(pusher.taken());
    assert_eq!(attempts_of(true), 2);
    // No config from the resolver: the channel's default (none here) applies.
    pusher.push(backend, None);
    block_on(pusher.taken());
    assert_eq!(attempts_of(false), 1);
}

#[test]
fn a_hedged_client_stream_sends_every_hedge_the_whole_request() {
    let started = Arc::new(AtomicUsize::new(0));
    let slow = Slow {
        delay: Duration::from_secs(2),
        only: Some("/ClientStream"),
        started: started.clone(),
        cancelled: mpsc::unbounded().0,
    };
    let slow_server = start_with(|server| server.async_interceptor(slow));
    let fast_unary = Arc::new(AtomicBool::new(false));
    let seen_by_fast = fast_unary.clone();
    let fast_server = start_with(move |server| {
        server.interceptor(move |_: &mut CallHead| {
            seen_by_fast.store(true, Ordering::SeqCst);
            Ok(())
        })
    });
    let target = format!("ipv4:{},{}", slow_server.target(), fast_server.target());
    let config = r#"{"loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": "anygrpc.test.Test", "method": "ClientStream"}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s"}}]}"#;
    let channel = Channel::builder(&target)
        .default_service_config(config)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    // Until both backends are in round robin's picker, a hedge may go where the first attempt
    // went: warm up with unary calls (not delayed) until the fast backend has had one.
    while !fast_unary.load(Ordering::SeqCst) {
        block_on(client.unary(Payload::default())).unwrap();
    }
    for call in 0..6 {
        let messages = (0..3).map(|i| Payload {
            body: vec![i; 10],
            ..Payload::default()
        });
        let begun = Instant::now();
        let reply =
            block_on(client.client_stream(Request::new(futures_util::stream::iter(messages))))
                .unwrap()
                .into_inner();
        assert_eq!((reply.count, reply.response_size), (3, 30), "call {call}");
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "call {call} took {:?}: the hedge to the fast backend should answer",
            begun.elapsed()
        );
    }
    assert!(
        started.load(Ordering::SeqCst) >= 3,
        "round robin sent the slow backend first attempts, so hedges carried calls"
    );
}
