//! gRFC A6's decisions, with no IO: when a call makes another attempt (retry backoff with
//! jitter, server pushback, the hedging schedule), when it commits, and the channel's retry
//! throttle and retry-buffer budget.
//!
//! The transport starts attempts when [`Attempts::next_attempt_at`] says, reports how each
//! ended, and cancels the others when one commits; time is passed in, randomness comes from a
//! seeded [`fastrand::Rng`], so every schedule here is tested on virtual time.

use std::{
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anygrpc_codec::Code;

use crate::service_config::{AttemptPolicy, ThrottleConfig};

/// The default cap on `maxAttempts` (A6: larger values are treated as 5).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The default retry buffer of one call: a call whose request is larger commits at once.
pub const DEFAULT_PER_CALL_BUFFER: usize = 256 * 1024;
/// The default retry buffer of a channel, shared by its calls.
pub const DEFAULT_PER_CHANNEL_BUFFER: usize = 16 * 1024 * 1024;

/// The retry throttle of one server name (A6 `retryThrottling`): tokens start at `maxTokens`,
/// each failure takes one, each success gives back `tokenRatio`, and no retry or hedge is
/// sent while the tokens are at or below half of `maxTokens`. Kept in thousandths of a
/// token, as A6 keeps three decimals of the ratio; shared by the channel's calls.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    tokens_milli: AtomicU32,
}

impl Throttle {
    /// A full throttle.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            tokens_milli: AtomicU32::new(config.max_tokens_milli),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// Records a failed attempt (a retryable or non-fatal status, or pushback saying stop).
    pub fn record_failure(&self) {
        let _ = self
            .tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// Records a call that succeeded.
    pub fn record_success(&self) {
        let (max, ratio) = (self.config.max_tokens_milli, self.config.token_ratio_milli);
        let _ = self
            .tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(ratio).min(max))
            });
    }

    /// Whether a retry or hedge may be sent now.
    pub fn allows_retry(&self) -> bool {
        self.tokens_milli.load(Ordering::Relaxed) > self.config.max_tokens_milli / 2
    }

    /// The tokens left, in thousandths.
    pub fn tokens_milli(&self) -> u32 {
        self.tokens_milli.load(Ordering::Relaxed)
    }
}

/// The retry buffer a channel's calls share: request bytes held for replay until their call
/// commits. A call that cannot reserve its bytes commits instead.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget if they fit.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back bytes taken with [`try_reserve`](Self::try_reserve).
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What the server said about retrying, in `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// No pushback: the policy's schedule applies.
    None,
    /// Make the next attempt after this delay.
    After(Duration),
    /// Make no more attempts (a negative or malformed value).
    Stop,
}

impl Pushback {
    /// Reads a `grpc-retry-pushback-ms` value: a non-negative decimal number of milliseconds
    /// that fits an `i32`; anything else means stop.
    pub fn parse(value: Option<&[u8]>) -> Pushback {
        let Some(value) = value else {
            return Pushback::None;
        };
        match std::str::from_utf8(value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i32>().ok())
        {
            Some(ms) => Pushback::After(Duration::from_millis(ms as u64)),
            None => Pushback::Stop,
        }
    }
}

/// Whether a call goes on after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// More attempts are running or will start at [`Attempts::next_attempt_at`].
    Continue,
    /// The call ends with this attempt's status (the transport cancels any others).
    Fail,
}

/// The attempts of one call under its method's retry or hedging policy.
#[derive(Debug)]
pub struct Attempts {
    policy: Option<AttemptPolicy>,
    max_attempts: u32,
    /// Counted attempts started so far.
    started: u32,
    in_flight: u32,
    /// When the next attempt is due, if one is.
    next_at: Option<Instant>,
    /// Retry: the next backoff before jitter.
    backoff: Duration,
    /// Pushback said stop, or the call committed: no more attempts.
    stopped: bool,
    /// The one immediate retry of a refused stream is spent.
    refused_retry_spent: bool,
}

impl Attempts {
    /// A call starting at `now`: its first attempt is due at once. `max_attempts_cap` bounds
    /// the policy's `maxAttempts`; `policy: None` makes exactly one attempt (plus transparent
    /// retries).
    pub fn new(policy: Option<AttemptPolicy>, max_attempts_cap: u32, now: Instant) -> Attempts {
        let (max_attempts, backoff) = match &policy {
            None => (1, Duration::ZERO),
            Some(AttemptPolicy::Retry(r)) => (r.max_attempts, r.initial_backoff),
            Some(AttemptPolicy::Hedging(h)) => (h.max_attempts, Duration::ZERO),
        };
        Attempts {
            policy,
            max_attempts: max_attempts.min(max_attempts_cap).max(1),
            started: 0,
            in_flight: 0,
            next_at: Some(now),
            backoff,
            stopped: false,
            refused_retry_spent: false,
        }
    }

    /// When the next attempt is due; `None` while none is (the call waits on those in
    /// flight).
    pub fn next_attempt_at(&self) -> Option<Instant> {
        self.next_at
    }

    /// Counted attempts started so far.
    pub fn started(&self) -> u32 {
        self.started
    }

    /// Starts the attempt that is due, if the throttle lets it (the first attempt always
    /// goes). Returns the number of earlier attempts, for `grpc-previous-rpc-attempts`; `None`
    /// if no attempt may start.
    pub fn start_attempt(&mut self, now: Instant, throttle: Option<&Throttle>) -> Option<u32> {
        if self.stopped || self.started >= self.max_attempts || self.next_at.is_none() {
            self.next_at = None;
            return None;
        }
        if self.started > 0
            && matches!(self.policy, Some(AttemptPolicy::Hedging(_)))
            && !throttle.is_none_or(Throttle::allows_retry)
        {
            self.next_at = None;
            return None;
        }
        let previous = self.started;
        self.started += 1;
        self.in_flight += 1;
        self.next_at = match &self.policy {
            Some(AttemptPolicy::Hedging(h)) if self.started < self.max_attempts => {
                Some(now + h.hedging_delay)
            }
            _ => None,
        };
        Some(previous)
    }

    /// The call committed (response headers arrived, or its request outgrew the retry
    /// buffer): no attempt starts after this.
    pub fn commit(&mut self) {
        self.stopped = true;
        self.next_at = None;
    }

    /// An attempt's stream was refused before the server's application saw it
    /// (REFUSED_STREAM, or above a GOAWAY's last stream id): true once per call, meaning
    /// "make it again at once", outside `maxAttempts` and the throttle.
    pub fn refused(&mut self) -> bool {
        !std::mem::replace(&mut self.refused_retry_spent, true)
    }

    /// An attempt ended with status `code` before the call committed, the server saying
    /// `pushback`. Decides whether the call goes on, and when its next attempt starts.
    pub fn on_failure(
        &mut self,
        now: Instant,
        code: Code,
        pushback: Pushback,
        throttle: Option<&Throttle>,
        rng: &mut fastrand::Rng,
    ) -> Decision {
        self.in_flight = self.in_flight.saturating_sub(1);
        let counts = match &self.policy {
            None => false,
            Some(AttemptPolicy::Retry(r)) => r.retryable_status_codes.contains(code),
            Some(AttemptPolicy::Hedging(h)) => h.non_fatal_status_codes.contains(code),
        };
        if counts || pushback == Pushback::Stop {
            if let Some(t) = throttle {
                t.record_failure();
            }
        }
        if !counts {
            return self.fail();
        }
        if self.stopped {
            return self.wait_or_fail();
        }
        if pushback == Pushback::Stop || !throttle.is_none_or(Throttle::allows_retry) {
            self.stopped = true;
            self.next_at = None;
            return self.wait_or_fail();
        }
        match &self.policy {
            Some(AttemptPolicy::Retry(r)) => {
                if self.started >= self.max_attempts {
                    return self.fail();
                }
                let delay = match pushback {
                    Pushback::After(d) => {
                        self.backoff = r.initial_backoff;
                        d
                    }
                    _ => {
                        let ceiling = self.backoff;
                        self.backoff = ceiling.mul_f64(r.backoff_multiplier).min(r.max_backoff);
                        ceiling.mul_f64(0.8 + 0.4 * rng.f64())
                    }
                };
                self.next_at = Some(now + delay);
                Decision::Continue
            }
            Some(AttemptPolicy::Hedging(_)) => {
                // A non-fatal failure sends the next hedge at once, or after the pushback.
                if self.started < self.max_attempts {
                    self.next_at = Some(match pushback {
                        Pushback::After(d) => now + d,
                        _ => now,
                    });
                }
                self.wait_or_fail()
            }
            None => self.fail(),
        }
    }

    fn fail(&mut self) -> Decision {
        self.stopped = true;
        self.next_at = None;
        Decision::Fail
    }

    /// Hedging: the call fails only when nothing is in flight and nothing is due.
    fn wait_or_fail(&mut self) -> Decision {
        if self.in_flight == 0 && self.next_at.is_none() {
            Decision::Fail
        } else {
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_config::{CodeSet, HedgingPolicy, RetryPolicy};

    fn retry_policy(max_attempts: u32) -> AttemptPolicy {
        AttemptPolicy::Retry(RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            backoff_multiplier: 2.0,
            retryable_status_codes: CodeSet::default().with(Code::Unavailable),
        })
    }

    fn hedging_policy(max_attempts: u32) -> AttemptPolicy {
        AttemptPolicy::Hedging(HedgingPolicy {
            max_attempts,
            hedging_delay: Duration::from_millis(50),
            non_fatal_status_codes: CodeSet::default().with(Code::Unavailable),
        })
    }

    /// Ends the attempt in flight with UNAVAILABLE at `at`, with no throttle.
    fn unavailable(
        attempts: &mut Attempts,
        at: Instant,
        pushback: Pushback,
        rng: &mut fastrand::Rng,
    ) -> Decision {
        attempts.on_failure(at, Code::Unavailable, pushback, None, rng)
    }

    /// Fails every attempt with UNAVAILABLE; returns the delays between attempts.
    fn retry_delays(attempts: &mut Attempts, seed: u64) -> Vec<Duration> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut now = Instant::now();
        let mut delays = Vec::new();
        while let Some(at) = attempts.next_attempt_at() {
            delays.push(at - now);
            now = at;
            attempts.start_attempt(now, None).unwrap();
            unavailable(attempts, now, Pushback::None, &mut rng);
        }
        delays.remove(0);
        delays
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut lows = [Duration::MAX; 4];
        let mut highs = [Duration::ZERO; 4];
        for seed in 0..2000 {
            let mut attempts =
                Attempts::new(Some(retry_policy(5)), DEFAULT_MAX_ATTEMPTS, Instant::now());
            let delays = retry_delays(&mut attempts, seed);
            assert_eq!(delays.len(), 4, "5 attempts: 4 retries");
            assert_eq!(attempts.started(), 5);
            for (i, d) in delays.iter().enumerate() {
                lows[i] = lows[i].min(*d);
                highs[i] = highs[i].max(*d);
            }
        }
        // 100 ms, 200 ms, then the 300 ms cap, each × random(0.8, 1.2).
        for (i, ceiling) in [100u64, 200, 300, 300].into_iter().enumerate() {
            let (low, high) = (ceiling * 8 / 10, ceiling * 12 / 10);
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            assert!(
                ms(lows[i]) >= low as f64 && ms(lows[i]) < low as f64 + ceiling as f64 * 0.02,
                "{i}: {:?}",
                lows[i]
            );
            assert!(
                ms(highs[i]) <= high as f64 && ms(highs[i]) > high as f64 - ceiling as f64 * 0.02,
                "{i}: {:?}",
                highs[i]
            );
        }
    }

    #[test]
    fn max_attempts_is_capped_and_only_retryable_codes_retry() {
        let mut capped = Attempts::new(Some(retry_policy(9)), 3, Instant::now());
        assert_eq!(retry_delays(&mut capped, 1).len(), 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let now = Instant::now();
        let mut attempts = Attempts::new(Some(retry_policy(5)), 5, now);
        assert_eq!(attempts.start_attempt(now, None), Some(0));
        let d = attempts.on_failure(now, Code::InvalidArgument, Pushback::None, None, &mut rng);
        assert_eq!(d, Decision::Fail);
        assert_eq!(attempts.next_attempt_at(), None);
        let mut none = Attempts::new(None, 5, now);
        none.start_attempt(now, None);
        assert_eq!(
            unavailable(&mut none, now, Pushback::None, &mut rng),
            Decision::Fail
        );
    }

    #[test]
    fn pushback_sets_the_delay_resets_backoff_or_stops() {
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        let mut attempts = Attempts::new(Some(retry_policy(5)), 5, now);
        attempts.start_attempt(now, None);
        unavailable(&mut attempts, now, Pushback::None, &mut rng);
        let t1 = attempts.next_attempt_at().unwrap();
        attempts.start_attempt(t1, None);
        let pushed = Pushback::After(Duration::from_secs(3));
        assert_eq!(
            unavailable(&mut attempts, t1, pushed, &mut rng),
            Decision::Continue
        );
        assert_eq!(
            attempts.next_attempt_at(),
            Some(t1 + Duration::from_secs(3))
        );
        // After pushback the backoff starts over from initialBackoff.
        let t2 = t1 + Duration::from_secs(3);
        attempts.start_attempt(t2, None);
        unavailable(&mut attempts, t2, Pushback::None, &mut rng);
        let d = attempts.next_attempt_at().unwrap() - t2;
        assert!(
            d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
            "{d:?}"
        );
        attempts.start_attempt(t2 + d, None);
        let stop = unavailable(&mut attempts, t2 + d, Pushback::Stop, &mut rng);
        assert_eq!(stop, Decision::Fail);

        assert_eq!(Pushback::parse(None), Pushback::None);
        assert_eq!(
            Pushback::parse(Some(b"250")),
            Pushback::After(Duration::from_millis(250))
        );
        for bad in [&b"-1"[..], b"", b"1.5", b"x", b"99999999999", b"+5"] {
            assert_eq!(Pushback::parse(Some(bad)), Pushback::Stop, "{bad:?}");
        }
    }

    #[test]
    fn throttle_arithmetic_follows_a6() {
        let throttle = Throttle::new(ThrottleConfig {
            max_tokens_milli: 10_000,
            token_ratio_milli: 500,
        });
        assert!(throttle.allows_retry());
        for _ in 0..4 {
            throttle.record_failure();
        }
        assert_eq!(throttle.tokens_milli(), 6_000);
        assert!(throttle.allows_retry());
        throttle.record_failure();
        assert_eq!(throttle.tokens_milli(), 5_000);
        assert!(!throttle.allows_retry(), "at exactly half, no retries");
        throttle.record_success();
        assert!(throttle.allows_retry());
        for _ in 0..100 {
            throttle.record_success();
        }
        assert_eq!(throttle.tokens_milli(), 10_000, "never above maxTokens");
        for _ in 0..100 {
            throttle.record_failure();
        }
        assert_eq!(throttle.tokens_milli(), 0, "never below zero");
    }

    #[test]
    fn a_throttled_channel_makes_no_retry() {
        let throttle = Throttle::new(ThrottleConfig {
            max_tokens_milli: 3_000,
            token_ratio_milli: 1_000,
        });
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Instant::now();
        let mut attempts = Attempts::new(Some(retry_policy(5)), 5, now);
        attempts.start_attempt(now, Some(&throttle));
        // 3 → 2 tokens: above 1.5, so it retries.
        let d = attempts.on_failure(
            now,
            Code::Unavailable,
            Pushback::None,
            Some(&throttle),
            &mut rng,
        );
        assert_eq!(d, Decision::Continue);
        let at = attempts.next_attempt_at().unwrap();
        attempts.start_attempt(at, Some(&throttle));
        // 2 → 1: throttled.
        let d = attempts.on_failure(
            at,
            Code::Unavailable,
            Pushback::None,
            Some(&throttle),
            &mut rng,
        );
        assert_eq!(d, Decision::Fail);
        // Non-retryable codes do not count.
        let mut other = Attempts::new(Some(retry_policy(5)), 5, now);
        other.start_attempt(now, Some(&throttle));
        other.on_failure(
            now,
            Code::Internal,
            Pushback::None,
            Some(&throttle),
            &mut rng,
        );
        assert_eq!(throttle.tokens_milli(), 1_000);
    }

    #[test]
    fn hedges_start_on_schedule_and_on_non_fatal_failures() {
        let mut rng = fastrand::Rng::with_seed(5);
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let mut attempts = Attempts::new(Some(hedging_policy(4)), 5, t0);
        assert_eq!(attempts.start_attempt(t0, None), Some(0));
        assert_eq!(attempts.next_attempt_at(), Some(t0 + ms(50)));
        assert_eq!(attempts.start_attempt(t0 + ms(50), None), Some(1));
        assert_eq!(attempts.next_attempt_at(), Some(t0 + ms(100)));
        // A non-fatal failure at 60 ms brings the next hedge forward to now.
        let d = unavailable(&mut attempts, t0 + ms(60), Pushback::None, &mut rng);
        assert_eq!(d, Decision::Continue);
        assert_eq!(attempts.next_attempt_at(), Some(t0 + ms(60)));
        assert_eq!(attempts.start_attempt(t0 + ms(60), None), Some(2));
        // Pushback delays the next one.
        let d = unavailable(
            &mut attempts,
            t0 + ms(70),
            Pushback::After(ms(500)),
            &mut rng,
        );
        assert_eq!(d, Decision::Continue);
        assert_eq!(attempts.next_attempt_at(), Some(t0 + ms(570)));
        assert_eq!(attempts.start_attempt(t0 + ms(570), None), Some(3));
        assert_eq!(attempts.next_attempt_at(), None, "maxAttempts reached");
        // Two still in flight (the first and the last): the call waits for both.
        assert_eq!(
            unavailable(&mut attempts, t0 + ms(600), Pushback::None, &mut rng),
            Decision::Continue
        );
        assert_eq!(
            unavailable(&mut attempts, t0 + ms(600), Pushback::None, &mut rng),
            Decision::Fail
        );
    }

    #[test]
    fn a_fatal_status_or_stop_pushback_ends_hedging() {
        let mut rng = fastrand::Rng::with_seed(5);
        let t0 = Instant::now();
        let mut attempts = Attempts::new(Some(hedging_policy(3)), 5, t0);
        attempts.start_attempt(t0, None);
        attempts.start_attempt(t0, None);
        assert_eq!(
            attempts.on_failure(t0, Code::InvalidArgument, Pushback::None, None, &mut rng),
            Decision::Fail
        );

        let mut attempts = Attempts::new(Some(hedging_policy(3)), 5, t0);
        attempts.start_attempt(t0, None);
        attempts.start_attempt(t0, None);
        assert_eq!(
            unavailable(&mut attempts, t0, Pushback::Stop, &mut rng),
            Decision::Continue
        );
        assert_eq!(
            attempts.next_attempt_at(),
            None,
            "no more hedges after a stop"
        );
        assert_eq!(
            unavailable(&mut attempts, t0, Pushback::None, &mut rng),
            Decision::Fail
        );
    }

    #[test]
    fn a_throttled_channel_sends_no_hedge_but_the_first_attempt() {
        let throttle = Throttle::new(ThrottleConfig {
            max_tokens_milli: 2_000,
            token_ratio_milli: 1_000,
        });
        throttle.record_failure();
        let t0 = Instant::now();
        let mut attempts = Attempts::new(Some(hedging_policy(3)), 5, t0);
        assert_eq!(attempts.start_attempt(t0, Some(&throttle)), Some(0));
        assert_eq!(
            attempts.start_attempt(t0 + Duration::from_millis(50), Some(&throttle)),
            None
        );
    }

    #[test]
    fn commit_and_refused_streams() {
        let t0 = Instant::now();
        let mut attempts = Attempts::new(Some(hedging_policy(3)), 5, t0);
        attempts.start_attempt(t0, None);
        attempts.commit();
        assert_eq!(attempts.next_attempt_at(), None);
        assert_eq!(attempts.start_attempt(t0, None), None);
        assert!(attempts.refused());
        assert!(!attempts.refused(), "one immediate retry per call");

        let budget = BufferBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41));
        budget.release(60);
        assert!(budget.try_reserve(100));
        assert_eq!(budget.used(), 100);
    }
}
