//! Structure-aware targets for the sans-IO state machines: the fuzzer's bytes become a
//! sequence of events (via `arbitrary`) on virtual time, and after every event the target checks
//! the machine against what the spec allows.

use std::time::{Duration, Instant};

use anygrpc_codec::{
    keepalive::{Keepalive, KeepaliveAction, KeepaliveConfig, PingPolicy, PingStrikes},
    BackoffConfig, Code,
};
use anygrpc_lb::{
    service_config::{CodeSet, HedgingPolicy, RetryPolicy, ThrottleConfig},
    AttemptPolicy, Attempts, ConnectivityState, Decision, Pushback, Subchannel, Throttle,
};
use arbitrary::{Arbitrary, Unstructured};

/// Runs `f` on the structured input the bytes decode to (inputs too short to decode are
/// skipped: `arbitrary` fills what is missing with defaults, so that is rare).
pub(crate) fn with_input<'a, T: Arbitrary<'a>>(data: &'a [u8], f: impl FnOnce(T)) {
    if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(data)) {
        f(input);
    }
}

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Arbitrary)]
enum SubchannelEvent {
    RequestConnection,
    Connected,
    ConnectFailed,
    Disconnected,
    Advance(u16),
    Shutdown,
}

/// Subchannel and connection backoff (gRFC connection-backoff, A62): an attempt starts only
/// from IDLE with at least the minimum connect timeout; TRANSIENT_FAILURE lasts no longer
/// than the backoff allows (max backoff + 20% jitter) and leaves only for IDLE; nothing
/// happens after SHUTDOWN.
pub fn subchannel(data: &[u8]) {
    with_input(data, |(seed, events): (u64, Vec<SubchannelEvent>)| {
        let config = BackoffConfig::default();
        let mut sc = Subchannel::new(config, seed);
        let mut now = Instant::now();
        let mut shut_down = false;
        for event in events {
            let before = sc.state();
            match event {
                SubchannelEvent::RequestConnection => match sc.request_connection(now) {
                    Some(attempt) => {
                        assert_eq!(before, ConnectivityState::Idle);
                        assert!(attempt.deadline >= now + config.min_connect_timeout);
                        assert_eq!(sc.state(), ConnectivityState::Connecting);
                    }
                    None => assert_ne!(before, ConnectivityState::Idle),
                },
                SubchannelEvent::Connected => sc.connected(),
                SubchannelEvent::ConnectFailed => {
                    sc.connect_failed(now);
                    if before == ConnectivityState::Connecting {
                        let retry = sc.poll_timeout().expect("a failure backs off");
                        let longest = config.max_backoff.mul_f64(1.0 + config.jitter) + MS;
                        assert!(retry <= now + longest, "backoff past its cap");
                    }
                }
                SubchannelEvent::Disconnected => sc.disconnected(),
                SubchannelEvent::Advance(ms) => {
                    now += MS * u32::from(ms) * 16;
                    let due = sc.poll_timeout().is_some_and(|t| t <= now);
                    sc.handle_timeout(now);
                    if due {
                        assert_eq!(sc.state(), ConnectivityState::Idle, "backoff over");
                    } else {
                        assert_eq!(sc.state(), before, "time alone changes nothing");
                    }
                }
                SubchannelEvent::Shutdown => {
                    sc.shutdown();
                    shut_down = true;
                }
            }
            let after = sc.state();
            if shut_down {
                assert_eq!(after, ConnectivityState::Shutdown);
                assert_eq!(sc.poll_timeout(), None);
            }
            use ConnectivityState::*;
            let legal = before == after
                || after == Shutdown
                || matches!(
                    (before, after),
                    (Idle, Connecting)
                        | (Connecting, Ready | TransientFailure)
                        | (Ready, Idle)
                        | (TransientFailure, Idle)
                );
            assert!(legal, "{before:?} -> {after:?} on {event:?}");
        }
    });
}

#[derive(Debug, Arbitrary)]
enum AttemptEvent {
    Start,
    /// An attempt in flight failed: code, and pushback (none, stop, or milliseconds).
    Fail(u8, Option<Option<u16>>),
    Commit,
    Refused,
    Advance(u16),
    /// Another call on the channel succeeded (feeds the throttle).
    OtherSuccess,
    OtherFailure,
}

/// Retries, hedging and throttling (gRFC A6): never more than `min(maxAttempts, cap)`
/// attempts, none after a commit or a `Fail` decision, none before it is due, tokens stay
/// within `[0, maxTokens]`, and a throttled channel sends no retry.
pub fn retry(data: &[u8]) {
    #[derive(Debug, Arbitrary)]
    struct Input {
        hedging: bool,
        max_attempts: u8,
        cap: u8,
        codes: u8,
        delay_ms: u16,
        throttle: Option<(u16, u16)>,
        seed: u64,
        events: Vec<AttemptEvent>,
    }
    with_input(data, |input: Input| {
        let max_attempts = u32::from(input.max_attempts % 6) + 2;
        let cap = u32::from(input.cap % 6) + 1;
        let codes = (0..8)
            .filter(|i| input.codes & (1 << i) != 0)
            .fold(CodeSet::default(), |set, i| set.with(Code::from_i32(i + 9)));
        let delay = MS * u32::from(input.delay_ms);
        let policy = match input.hedging {
            true => AttemptPolicy::Hedging(HedgingPolicy {
                max_attempts,
                hedging_delay: delay,
                non_fatal_status_codes: codes,
            }),
            false => AttemptPolicy::Retry(RetryPolicy {
                max_attempts,
                initial_backoff: delay.max(MS),
                max_backoff: (delay * 4).max(MS),
                backoff_multiplier: 2.0,
                retryable_status_codes: codes,
            }),
        };
        let throttle = input.throttle.map(|(tokens, ratio)| {
            Throttle::new(ThrottleConfig {
                max_tokens_milli: (u32::from(tokens % 1000) + 1) * 1000,
                token_ratio_milli: u32::from(ratio % 2000) + 1,
            })
        });
        let max_tokens = throttle.as_ref().map(|t| t.config().max_tokens_milli);
        let mut now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(input.seed);
        let mut attempts = Attempts::new(Some(policy), cap, now);
        let (mut in_flight, mut ended, mut committed) = (0u32, false, false);
        for event in input.events.into_iter().take(256) {
            match event {
                AttemptEvent::Start => {
                    let due = attempts.next_attempt_at().is_some_and(|t| t <= now);
                    if !due {
                        continue;
                    }
                    let allowed_by_throttle = throttle.as_ref().is_none_or(Throttle::allows_retry);
                    if let Some(previous) = attempts.start_attempt(now, throttle.as_ref()) {
                        assert!(!ended && !committed, "an attempt after the call ended");
                        assert_eq!(previous + 1, attempts.started());
                        assert!(
                            attempts.started() <= max_attempts.min(cap),
                            "too many attempts"
                        );
                        if previous > 0 && input.hedging {
                            assert!(allowed_by_throttle, "a hedge on a throttled channel");
                        }
                        in_flight += 1;
                    }
                }
                AttemptEvent::Fail(code, pushback) if in_flight > 0 => {
                    in_flight -= 1;
                    let pushback = match pushback {
                        None => Pushback::None,
                        Some(None) => Pushback::Stop,
                        Some(Some(ms)) => Pushback::After(MS * u32::from(ms)),
                    };
                    let code = Code::from_i32(i32::from(code % 17));
                    let allowed_before = throttle.as_ref().is_none_or(Throttle::allows_retry);
                    let decision =
                        attempts.on_failure(now, code, pushback, throttle.as_ref(), &mut rng);
                    if decision == Decision::Fail {
                        ended = true;
                    }
                    if let Some(at) = attempts.next_attempt_at() {
                        assert!(!ended, "an attempt is due after the call failed");
                        assert!(at >= now, "an attempt due in the past");
                        if !input.hedging {
                            assert!(allowed_before, "a retry on a throttled channel");
                        }
                    }
                }
                AttemptEvent::Fail(..) => {}
                AttemptEvent::Commit => {
                    attempts.commit();
                    committed = true;
                    assert_eq!(attempts.next_attempt_at(), None);
                }
                AttemptEvent::Refused => {
                    let _ = attempts.refused();
                }
                AttemptEvent::Advance(ms) => now += MS * u32::from(ms),
                AttemptEvent::OtherSuccess => {
                    if let Some(t) = &throttle {
                        t.record_success();
                    }
                }
                AttemptEvent::OtherFailure => {
                    if let Some(t) = &throttle {
                        t.record_failure();
                    }
                }
            }
            if let (Some(t), Some(max)) = (&throttle, max_tokens) {
                assert!(t.tokens_milli() <= max, "tokens above the maximum");
            }
        }
        let mut refused = Attempts::new(None, cap, now);
        assert!(
            refused.refused() && !refused.refused(),
            "one transparent retry per call"
        );
    });
}

#[derive(Debug, Arbitrary)]
enum KeepaliveEvent {
    Read(u16),
    Poll(u16, bool),
    Ping(u16, bool),
    SentHeadersOrData,
}

/// Keepalive (gRFC A8): a ping only after `time` without reads (and with calls in flight
/// unless permitted), one ping outstanding at most, dead only after `timeout` with nothing
/// read since the ping. Ping strikes: the connection is closed exactly when more than two
/// pings came too early since the server last sent HEADERS or DATA.
pub fn keepalive(data: &[u8]) {
    #[derive(Debug, Arbitrary)]
    struct Input {
        time_ms: u16,
        timeout_ms: u16,
        permit: bool,
        min_interval_ms: u16,
        events: Vec<KeepaliveEvent>,
    }
    with_input(data, |input: Input| {
        let config = KeepaliveConfig {
            time: MS * u32::from(input.time_ms.max(1)),
            timeout: MS * u32::from(input.timeout_ms.max(1)),
            permit_without_calls: input.permit,
        };
        let policy = PingPolicy {
            min_interval: MS * u32::from(input.min_interval_ms),
            permit_without_calls: input.permit,
        };
        let start = Instant::now();
        let (mut now, mut last_read, mut ping_sent) = (start, start, None::<Instant>);
        let mut keepalive = Keepalive::new(config, now);
        let mut strikes = PingStrikes::new(policy);
        let (mut last_ping, mut expected_strikes, mut forgiven) = (None::<Instant>, 0u32, false);
        for event in input.events.into_iter().take(512) {
            match event {
                KeepaliveEvent::Read(ms) => {
                    now += MS * u32::from(ms);
                    keepalive.read(now);
                    last_read = now;
                }
                KeepaliveEvent::Poll(ms, calls) => {
                    now += MS * u32::from(ms);
                    match keepalive.poll(now, || calls) {
                        KeepaliveAction::Ping => {
                            assert!(now >= last_read + config.time, "pinged a busy connection");
                            assert!(calls || config.permit_without_calls, "pinged without calls");
                            assert!(
                                ping_sent.is_none_or(|sent| last_read >= sent),
                                "two pings out"
                            );
                            ping_sent = Some(now);
                        }
                        KeepaliveAction::Dead => {
                            let sent = ping_sent.expect("dead without a ping");
                            assert!(
                                last_read < sent && now >= sent + config.timeout,
                                "declared dead early"
                            );
                        }
                        KeepaliveAction::Wait(Some(at)) => assert!(at > now, "waits for the past"),
                        KeepaliveAction::Wait(None) => {}
                    }
                }
                KeepaliveEvent::Ping(ms, calls) => {
                    now += MS * u32::from(ms);
                    let min = match calls || policy.permit_without_calls {
                        true => policy.min_interval,
                        false => anygrpc_codec::keepalive::IDLE_MIN_PING_INTERVAL,
                    };
                    let previous = last_ping.replace(now);
                    if std::mem::take(&mut forgiven) {
                        expected_strikes = 0;
                    } else if previous.is_some_and(|p| now < p + min) {
                        expected_strikes += 1;
                    }
                    let too_many = strikes.ping(now, calls);
                    assert_eq!(strikes.strikes(), expected_strikes);
                    assert_eq!(
                        too_many,
                        expected_strikes > anygrpc_codec::keepalive::MAX_PING_STRIKES
                    );
                }
                KeepaliveEvent::SentHeadersOrData => {
                    strikes.sent_headers_or_data();
                    forgiven = true;
                }
            }
        }
    });
}
