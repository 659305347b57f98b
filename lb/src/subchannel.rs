//! The subchannel state machine: one connection target's IDLE → CONNECTING → READY /
//! TRANSIENT_FAILURE → IDLE cycle, with connection backoff.
//!
//! Drive it like this: call [`Subchannel::request_connection`] when a call needs the
//! connection; when it returns a [`ConnectAttempt`], connect with that deadline and report
//! [`connected`](Subchannel::connected) or [`connect_failed`](Subchannel::connect_failed);
//! report [`disconnected`](Subchannel::disconnected) when a ready connection ends. While in
//! TRANSIENT_FAILURE, call [`handle_timeout`](Subchannel::handle_timeout) at
//! [`poll_timeout`](Subchannel::poll_timeout); the subchannel then returns to IDLE, ready for
//! the next attempt (as gRFC A62 has subchannels do).

use std::time::Instant;

use anygrpc_codec::{Backoff, BackoffConfig};

use crate::ConnectivityState;

/// A connection attempt the subchannel asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectAttempt {
    /// Give up on the attempt at this instant.
    pub deadline: Instant,
}

/// One connection target's connectivity, as a pure state machine.
#[derive(Debug, Clone)]
pub struct Subchannel {
    state: ConnectivityState,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

impl Subchannel {
    /// A subchannel in IDLE.
    pub fn new(config: BackoffConfig, seed: u64) -> Subchannel {
        Subchannel {
            state: ConnectivityState::Idle,
            backoff: Backoff::new(config, seed),
            retry_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnectivityState {
        self.state
    }

    /// Asks for a connection. From IDLE this starts an attempt and returns it; in any other
    /// state there is nothing to start (one is in flight, ready, backing off, or shut down).
    pub fn request_connection(&mut self, now: Instant) -> Option<ConnectAttempt> {
        if self.state != ConnectivityState::Idle {
            return None;
        }
        let (retry_at, deadline) = self.backoff.start_attempt(now);
        self.retry_at = Some(retry_at);
        self.state = ConnectivityState::Connecting;
        Some(ConnectAttempt { deadline })
    }

    /// The attempt succeeded.
    pub fn connected(&mut self) {
        if self.state == ConnectivityState::Connecting {
            self.state = ConnectivityState::Ready;
            self.backoff.reset();
            self.retry_at = None;
        }
    }

    /// The attempt failed (or timed out).
    pub fn connect_failed(&mut self, now: Instant) {
        if self.state == ConnectivityState::Connecting {
            self.state = ConnectivityState::TransientFailure;
            // A failure reported after the backoff already ran out retries at once.
            self.retry_at = self.retry_at.map(|t| t.max(now));
        }
    }

    /// A ready connection ended (closed, GOAWAY, keepalive timeout).
    pub fn disconnected(&mut self) {
        if self.state == ConnectivityState::Ready {
            self.state = ConnectivityState::Idle;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ConnectivityState::TransientFailure => self.retry_at,
            _ => None,
        }
    }

    /// Advances time: a TRANSIENT_FAILURE whose backoff has passed becomes IDLE.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == ConnectivityState::TransientFailure
            && self.retry_at.is_some_and(|t| now >= t)
        {
            self.state = ConnectivityState::Idle;
            self.retry_at = None;
        }
    }

    /// Shuts down for good; every later event is ignored.
    pub fn shutdown(&mut self) {
        self.state = ConnectivityState::Shutdown;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use ConnectivityState::*;

    #[test]
    fn full_cycle_on_virtual_time() {
        let t0 = Instant::now();
        let mut sc = Subchannel::new(BackoffConfig::default(), 3);
        assert_eq!(sc.state(), Idle);
        let attempt = sc.request_connection(t0).unwrap();
        assert_eq!(attempt.deadline, t0 + Duration::from_secs(20));
        assert_eq!(sc.state(), Connecting);
        assert!(sc.request_connection(t0).is_none(), "one attempt at a time");

        sc.connect_failed(t0 + Duration::from_millis(10));
        assert_eq!(sc.state(), TransientFailure);
        assert_eq!(sc.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(
            sc.request_connection(t0).is_none(),
            "no attempt during backoff"
        );
        sc.handle_timeout(t0 + Duration::from_millis(999));
        assert_eq!(sc.state(), TransientFailure);
        sc.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(sc.state(), Idle);

        let t1 = t0 + Duration::from_secs(1);
        sc.request_connection(t1).unwrap();
        sc.connect_failed(t1);
        let wait = sc.poll_timeout().unwrap() - t1;
        assert!(wait >= Duration::from_secs_f64(1.28) && wait <= Duration::from_secs_f64(1.92));

        sc.handle_timeout(t1 + wait);
        sc.request_connection(t1 + wait).unwrap();
        sc.connected();
        assert_eq!(sc.state(), Ready);
        sc.disconnected();
        assert_eq!(sc.state(), Idle);
        let t2 = t1 + wait;
        sc.request_connection(t2).unwrap();
        sc.connect_failed(t2);
        assert_eq!(
            sc.poll_timeout(),
            Some(t2 + Duration::from_secs(1)),
            "backoff reset on success"
        );

        sc.shutdown();
        sc.handle_timeout(t2 + Duration::from_secs(5));
        assert_eq!(sc.state(), Shutdown);
        assert!(sc.request_connection(t2).is_none());
        sc.connected();
        assert_eq!(sc.state(), Shutdown);
    }
}
