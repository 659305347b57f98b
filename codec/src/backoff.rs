//! Connection backoff, exactly as `doc/connection-backoff.md` specifies:
//!
//! ```text
//! current_backoff = INITIAL_BACKOFF
//! current_deadline = now() + INITIAL_BACKOFF
//! while TryConnect(Max(current_deadline, now() + MIN_CONNECT_TIMEOUT)) != SUCCESS:
//!     SleepUntil(current_deadline)
//!     current_backoff = Min(current_backoff * MULTIPLIER, MAX_BACKOFF)
//!     current_deadline = now() + current_backoff + UniformRandom(-JITTER * current_backoff,
//!                                                                 JITTER * current_backoff)
//! ```

use std::time::{Duration, Instant};

/// The knobs of connection backoff; the defaults are the spec's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry: 1 s.
    pub initial_backoff: Duration,
    /// Growth factor per failed attempt: 1.6.
    pub multiplier: f64,
    /// Randomization, as a fraction of the backoff (±): 0.2.
    pub jitter: f64,
    /// Upper bound on the backoff: 120 s.
    pub max_backoff: Duration,
    /// Least time one connection attempt is given: 20 s.
    pub min_connect_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> BackoffConfig {
        BackoffConfig {
            initial_backoff: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max_backoff: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// The backoff state of one connection target.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    current: Option<Duration>,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A fresh backoff; `seed` makes the jitter reproducible (tests, simulation).
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            config,
            current: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Starts an attempt at `now`: returns the deadline before which the next attempt may not
    /// start (`current_deadline`) and the attempt's own timeout deadline
    /// (`Max(current_deadline, now + MIN_CONNECT_TIMEOUT)`).
    pub fn start_attempt(&mut self, now: Instant) -> (Instant, Instant) {
        let backoff = match self.current {
            None => {
                self.current = Some(self.config.initial_backoff);
                self.config.initial_backoff
            }
            Some(prev) => {
                let grown = prev.as_secs_f64() * self.config.multiplier;
                let next =
                    Duration::from_secs_f64(grown.min(self.config.max_backoff.as_secs_f64()));
                self.current = Some(next);
                let jitter = self.config.jitter * (self.rng.f64() * 2.0 - 1.0);
                Duration::from_secs_f64((next.as_secs_f64() * (1.0 + jitter)).max(0.0))
            }
        };
        let retry_at = now + backoff;
        let timeout_at = retry_at.max(now + self.config.min_connect_timeout);
        (retry_at, timeout_at)
    }

    /// Forgets past failures (after a successful connection).
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_spec_schedule_within_jitter() {
        let config = BackoffConfig::default();
        for seed in 0..200 {
            let mut b = Backoff::new(config, seed);
            let now = Instant::now();
            let (retry, timeout) = b.start_attempt(now);
            assert_eq!(
                retry - now,
                Duration::from_secs(1),
                "the first delay has no jitter"
            );
            assert_eq!(timeout - now, Duration::from_secs(20));
            let mut nominal = 1.0f64;
            for _ in 0..20 {
                nominal = (nominal * 1.6).min(120.0);
                let (retry, timeout) = b.start_attempt(now);
                let d = (retry - now).as_secs_f64();
                assert!(
                    d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                    "{d} vs {nominal}"
                );
                assert!(timeout >= retry && timeout - now >= Duration::from_secs(20));
            }
            assert_eq!(nominal, 120.0, "reaches the cap");
        }
    }

    #[test]
    fn jitter_is_seeded_and_reset_restarts() {
        let now = Instant::now();
        let run = |seed| {
            let mut b = Backoff::new(BackoffConfig::default(), seed);
            (0..5).map(|_| b.start_attempt(now).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut b = Backoff::new(BackoffConfig::default(), 1);
        b.start_attempt(now);
        b.start_attempt(now);
        b.reset();
        assert_eq!(b.start_attempt(now).0 - now, Duration::from_secs(1));
    }
}
