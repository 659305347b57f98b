//! A server connection's lifetime (gRFC A9), with no IO: when it is closed for being idle or
//! old, and when draining ends.
//!
//! Closing is graceful: the transport sends GOAWAY NO_ERROR (twice, with a PING between, so
//! streams the client started meanwhile are still served), lets the calls in flight finish, and
//! closes the connection once they have, or at the grace deadline at the latest.

use std::time::{Duration, Instant};

/// How long a server keeps a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Close a connection that has had no calls in flight for this long.
    pub max_idle: Option<Duration>,
    /// Close a connection this long after it was opened, give or take 10% so that a fleet of
    /// clients does not reconnect all at once.
    pub max_age: Option<Duration>,
    /// After the GOAWAY for `max_age`, how long calls in flight may take before the connection
    /// is closed under them (`None`: as long as they take).
    pub max_age_grace: Option<Duration>,
}

/// What the lifetime asks the transport for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeAction {
    /// Nothing until this time (`None`: until the calls in flight change).
    Wait(Option<Instant>),
    /// Start draining: a graceful GOAWAY NO_ERROR with this debug data.
    GoAway(&'static [u8]),
    /// The grace period is over: close the connection, cancelling the calls still in flight.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Open { idle_since: Option<Instant> },
    Draining { close_at: Option<Instant> },
}

/// One server connection's lifetime.
#[derive(Debug, Clone)]
pub struct Lifetime {
    limits: ConnectionLimits,
    /// When `max_age` is reached (jitter applied).
    old_at: Option<Instant>,
    phase: Phase,
}

impl Lifetime {
    /// A connection opened at `now`. `jitter` in `[-1, 1]` scales the ±10% applied to
    /// `max_age` (the transport passes a random value).
    pub fn new(limits: ConnectionLimits, now: Instant, jitter: f64) -> Lifetime {
        let old_at = limits
            .max_age
            .map(|age| now + age.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0)));
        Lifetime {
            limits,
            old_at,
            phase: Phase::Open {
                idle_since: Some(now),
            },
        }
    }

    /// Whether a GOAWAY has been asked for.
    pub fn is_draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    /// The server is shutting down at `now`: drain, and close at `now + grace` at the latest.
    /// Returns `true` when the GOAWAY is still to be sent (the connection was not draining).
    pub fn shut_down(&mut self, now: Instant, grace: Option<Duration>) -> bool {
        let deadline = grace.map(|grace| now + grace);
        match &mut self.phase {
            Phase::Draining { close_at } => {
                *close_at = earliest(*close_at, deadline);
                false
            }
            Phase::Open { .. } => {
                self.phase = Phase::Draining { close_at: deadline };
                true
            }
        }
    }

    /// What to do at `now`, given whether calls are in flight.
    pub fn poll(&mut self, now: Instant, calls_in_flight: bool) -> LifetimeAction {
        let idle_since = match &mut self.phase {
            Phase::Draining { close_at } => {
                return match *close_at {
                    Some(at) if now >= at => LifetimeAction::Close,
                    at => LifetimeAction::Wait(at),
                }
            }
            Phase::Open { idle_since } => {
                match calls_in_flight {
                    true => *idle_since = None,
                    false => {
                        idle_since.get_or_insert(now);
                    }
                }
                *idle_since
            }
        };
        let idle_at = self.limits.max_idle.zip(idle_since).map(|(d, t)| t + d);
        if idle_at.is_some_and(|at| now >= at) {
            // An idle connection has nothing to wait for.
            self.phase = Phase::Draining { close_at: None };
            return LifetimeAction::GoAway(b"max_idle");
        }
        if self.old_at.is_some_and(|at| now >= at) {
            let close_at = self.limits.max_age_grace.map(|grace| now + grace);
            self.phase = Phase::Draining { close_at };
            return LifetimeAction::GoAway(b"max_age");
        }
        LifetimeAction::Wait(earliest(idle_at, self.old_at))
    }
}

/// The sooner of two optional deadlines (`None`: never).
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_idle_connection_is_closed_after_max_idle_of_no_calls() {
        let t0 = Instant::now();
        let limits = ConnectionLimits {
            max_idle: Some(10 * S),
            ..Default::default()
        };
        let mut life = Lifetime::new(limits, t0, 0.0);
        assert_eq!(
            life.poll(t0, false),
            LifetimeAction::Wait(Some(t0 + 10 * S))
        );
        // A call keeps it open; idleness counts from its end.
        assert_eq!(life.poll(t0 + 5 * S, true), LifetimeAction::Wait(None));
        assert_eq!(
            life.poll(t0 + 30 * S, false),
            LifetimeAction::Wait(Some(t0 + 40 * S))
        );
        assert_eq!(
            life.poll(t0 + 40 * S, false),
            LifetimeAction::GoAway(b"max_idle")
        );
        assert!(life.is_draining());
        assert_eq!(life.poll(t0 + 41 * S, false), LifetimeAction::Wait(None));
    }

    #[test]
    fn max_age_is_jittered_by_ten_percent_and_followed_by_the_grace() {
        let t0 = Instant::now();
        let limits = ConnectionLimits {
            max_age: Some(100 * S),
            max_age_grace: Some(5 * S),
            ..Default::default()
        };
        for (jitter, age) in [(-1.0, 90), (0.0, 100), (1.0, 110), (7.0, 110)] {
            let mut life = Lifetime::new(limits, t0, jitter);
            let old_at = t0 + age * S;
            assert_eq!(life.poll(t0, true), LifetimeAction::Wait(Some(old_at)));
            assert_eq!(life.poll(old_at, true), LifetimeAction::GoAway(b"max_age"));
            assert_eq!(
                life.poll(old_at + S, true),
                LifetimeAction::Wait(Some(old_at + 5 * S))
            );
            assert_eq!(life.poll(old_at + 5 * S, true), LifetimeAction::Close);
        }
    }

    #[test]
    fn shutdown_drains_once_and_keeps_the_earliest_deadline() {
        let t0 = Instant::now();
        let limits = ConnectionLimits {
            max_age: Some(10 * S),
            max_age_grace: Some(60 * S),
            ..Default::default()
        };
        let mut life = Lifetime::new(limits, t0, 0.0);
        assert!(life.shut_down(t0, Some(30 * S)));
        assert!(!life.shut_down(t0 + S, Some(50 * S)), "already draining");
        assert_eq!(
            life.poll(t0 + 20 * S, true),
            LifetimeAction::Wait(Some(t0 + 30 * S))
        );
        assert_eq!(life.poll(t0 + 30 * S, true), LifetimeAction::Close);
        let mut aged = Lifetime::new(limits, t0, 0.0);
        assert_eq!(
            aged.poll(t0 + 10 * S, true),
            LifetimeAction::GoAway(b"max_age")
        );
        assert!(!aged.shut_down(t0 + 11 * S, Some(S)));
        assert_eq!(aged.poll(t0 + 12 * S, true), LifetimeAction::Close);
    }

    #[test]
    fn without_limits_a_connection_lives_forever() {
        let t0 = Instant::now();
        let mut life = Lifetime::new(ConnectionLimits::default(), t0, 0.5);
        assert_eq!(
            life.poll(t0 + 1_000_000 * S, false),
            LifetimeAction::Wait(None)
        );
        assert!(life.shut_down(t0, None));
        assert_eq!(
            life.poll(t0 + 1_000_000 * S, true),
            LifetimeAction::Wait(None)
        );
    }
}
