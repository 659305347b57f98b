//! Keepalive (gRFC A8, `doc/keepalive.md`) with no IO: when a connection pings its peer and
//! when it gives the peer up for dead, and how a server polices the pings it receives.
//!
//! Time is passed in; the transport sends the pings, closes the connection, and feeds these
//! machines what it saw on the wire (h2 answers PINGs itself, so the frames are counted by a
//! [`FrameScanner`](crate::frames::FrameScanner) on the connection's bytes).

use std::time::{Duration, Instant};

/// The shortest keepalive time a client may use: shorter settings are raised to it (A8), so
/// that clients do not get themselves disconnected by servers' ping policing.
pub const MIN_CLIENT_KEEPALIVE_TIME: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered by default before the peer is declared dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A server's own keepalive time by default.
pub const DEFAULT_SERVER_KEEPALIVE_TIME: Duration = Duration::from_secs(2 * 3600);
/// The least time between a client's pings a server accepts by default.
pub const DEFAULT_MIN_PING_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The least time between pings a server accepts from a client with no calls in flight when
/// it does not permit pings without calls.
pub const IDLE_MIN_PING_INTERVAL: Duration = Duration::from_secs(2 * 3600);
/// Pings too early a server forgives before it closes the connection with `too_many_pings`.
pub const MAX_PING_STRIKES: u32 = 2;

/// When and how a connection pings its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// How long the connection may read nothing before it pings.
    pub time: Duration,
    /// How long a ping may go unanswered (nothing read at all) before the peer is dead.
    pub timeout: Duration,
    /// Whether to ping while no call is in flight.
    pub permit_without_calls: bool,
}

impl KeepaliveConfig {
    /// A client's settings: `time` is raised to [`MIN_CLIENT_KEEPALIVE_TIME`].
    pub fn client(time: Duration, timeout: Duration, permit_without_calls: bool) -> Self {
        KeepaliveConfig {
            time: time.max(MIN_CLIENT_KEEPALIVE_TIME),
            timeout,
            permit_without_calls,
        }
    }
}

/// What a connection's keepalive asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Nothing until this time (`None`: until a call starts or something is read).
    Wait(Option<Instant>),
    /// Send a PING now.
    Ping,
    /// The peer answered nothing within the timeout: close the connection, failing its calls
    /// with `UNAVAILABLE`.
    Dead,
}

/// One connection's keepalive: pings after `time` without reading anything, and declares the
/// peer dead when nothing at all is read within `timeout` of a ping. Time is counted from the
/// last frame read, so a busy connection never pings.
#[derive(Debug, Clone)]
pub struct Keepalive {
    config: KeepaliveConfig,
    last_read: Instant,
    ping_sent: Option<Instant>,
}

impl Keepalive {
    /// Starts counting at `now` (the connection is established).
    pub fn new(config: KeepaliveConfig, now: Instant) -> Keepalive {
        Keepalive {
            config,
            last_read: now,
            ping_sent: None,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> KeepaliveConfig {
        self.config
    }

    /// Something was read from the peer at `now`: it is alive, and any ping is answered.
    pub fn read(&mut self, now: Instant) {
        self.last_read = self.last_read.max(now);
    }

    /// What to do at `now`; `calls_in_flight` is asked only when a ping is due. After
    /// [`Ping`](KeepaliveAction::Ping) the ping counts as sent at `now`.
    pub fn poll(
        &mut self,
        now: Instant,
        calls_in_flight: impl FnOnce() -> bool,
    ) -> KeepaliveAction {
        if let Some(sent) = self.ping_sent {
            if self.last_read < sent {
                let dead_at = sent + self.config.timeout;
                return match now >= dead_at {
                    true => KeepaliveAction::Dead,
                    false => KeepaliveAction::Wait(Some(dead_at)),
                };
            }
            self.ping_sent = None;
        }
        let due = self.last_read + self.config.time;
        if now < due {
            return KeepaliveAction::Wait(Some(due));
        }
        if !self.config.permit_without_calls && !calls_in_flight() {
            return KeepaliveAction::Wait(None);
        }
        self.ping_sent = Some(now);
        KeepaliveAction::Ping
    }
}

/// What a server accepts from clients' pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPolicy {
    /// The least time between two pings while calls are in flight (or always, with
    /// `permit_without_calls`).
    pub min_interval: Duration,
    /// Whether pings without calls in flight are held to `min_interval` rather than to
    /// [`IDLE_MIN_PING_INTERVAL`].
    pub permit_without_calls: bool,
}

impl Default for PingPolicy {
    /// 5 minutes; pings without calls held to 2 hours.
    fn default() -> Self {
        PingPolicy {
            min_interval: DEFAULT_MIN_PING_INTERVAL,
            permit_without_calls: false,
        }
    }
}

/// A server connection's ping policing (A8): a ping sooner than the policy allows after the
/// previous one is a strike; more than [`MAX_PING_STRIKES`] strikes and the connection is
/// closed with GOAWAY ENHANCE_YOUR_CALM, debug data `too_many_pings`. Sending HEADERS or DATA
/// forgives: the next ping is not checked, and the strikes start again from zero.
#[derive(Debug, Clone)]
pub struct PingStrikes {
    policy: PingPolicy,
    last_ping: Option<Instant>,
    strikes: u32,
    forgiven: bool,
}

impl PingStrikes {
    /// A fresh connection: no ping seen yet.
    pub fn new(policy: PingPolicy) -> PingStrikes {
        PingStrikes {
            policy,
            last_ping: None,
            strikes: 0,
            forgiven: false,
        }
    }

    /// The strikes so far.
    pub fn strikes(&self) -> u32 {
        self.strikes
    }

    /// The server sent HEADERS or DATA.
    pub fn sent_headers_or_data(&mut self) {
        self.forgiven = true;
    }

    /// A PING (not an ACK) arrived at `now`. Returns `true` when the client has pinged too
    /// often: the server sends GOAWAY ENHANCE_YOUR_CALM `too_many_pings` and closes.
    pub fn ping(&mut self, now: Instant, calls_in_flight: bool) -> bool {
        let previous = self.last_ping.replace(now);
        if std::mem::take(&mut self.forgiven) {
            self.strikes = 0;
            return false;
        }
        let Some(previous) = previous else {
            return false;
        };
        let min = match calls_in_flight || self.policy.permit_without_calls {
            true => self.policy.min_interval,
            false => IDLE_MIN_PING_INTERVAL,
        };
        if now < previous + min {
            self.strikes += 1;
        }
        self.strikes > MAX_PING_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_client_pings_after_time_without_reads_and_gives_up_after_timeout() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(KeepaliveConfig::client(10 * S, 20 * S, false), t0);
        assert_eq!(
            k.poll(t0, || true),
            KeepaliveAction::Wait(Some(t0 + 10 * S))
        );
        // Reads push the ping back: time counts from the last one.
        k.read(t0 + 4 * S);
        assert_eq!(
            k.poll(t0 + 10 * S, || true),
            KeepaliveAction::Wait(Some(t0 + 14 * S))
        );
        assert_eq!(k.poll(t0 + 14 * S, || true), KeepaliveAction::Ping);
        assert_eq!(
            k.poll(t0 + 15 * S, || true),
            KeepaliveAction::Wait(Some(t0 + 34 * S))
        );
        assert_eq!(k.poll(t0 + 34 * S, || true), KeepaliveAction::Dead);
    }

    #[test]
    fn an_answer_resets_the_keepalive() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(KeepaliveConfig::client(10 * S, 20 * S, false), t0);
        assert_eq!(k.poll(t0 + 10 * S, || true), KeepaliveAction::Ping);
        k.read(t0 + 11 * S);
        assert_eq!(
            k.poll(t0 + 12 * S, || true),
            KeepaliveAction::Wait(Some(t0 + 21 * S))
        );
        assert_eq!(k.poll(t0 + 21 * S, || true), KeepaliveAction::Ping);
    }

    #[test]
    fn without_calls_a_client_pings_only_if_permitted() {
        let t0 = Instant::now();
        let mut idle = Keepalive::new(KeepaliveConfig::client(10 * S, 20 * S, false), t0);
        assert_eq!(
            idle.poll(t0 + 5 * S, || false),
            KeepaliveAction::Wait(Some(t0 + 10 * S))
        );
        assert_eq!(
            idle.poll(t0 + 100 * S, || false),
            KeepaliveAction::Wait(None)
        );
        // A call starting after a long silence pings at once.
        assert_eq!(idle.poll(t0 + 100 * S, || true), KeepaliveAction::Ping);
        let mut permitted = Keepalive::new(KeepaliveConfig::client(10 * S, 20 * S, true), t0);
        assert_eq!(permitted.poll(t0 + 10 * S, || false), KeepaliveAction::Ping);
    }

    #[test]
    fn client_time_is_clamped_to_ten_seconds() {
        let config = KeepaliveConfig::client(Duration::from_millis(10), S, false);
        assert_eq!(config.time, MIN_CLIENT_KEEPALIVE_TIME);
        assert_eq!(config.timeout, S);
    }

    #[test]
    fn a_server_closes_after_more_than_two_early_pings() {
        let t0 = Instant::now();
        let mut police = PingStrikes::new(PingPolicy::default());
        // The first ping is never a strike; each one a second later is.
        assert!(!police.ping(t0, true));
        assert!(!police.ping(t0 + S, true));
        assert!(!police.ping(t0 + 2 * S, true));
        assert_eq!(police.strikes(), 2);
        assert!(police.ping(t0 + 3 * S, true), "the third strike closes");
    }

    #[test]
    fn a_well_behaved_client_is_never_struck() {
        let t0 = Instant::now();
        let mut police = PingStrikes::new(PingPolicy {
            min_interval: 10 * S,
            permit_without_calls: true,
        });
        for i in 0..100 {
            assert!(!police.ping(t0 + i * 10 * S, i % 2 == 0));
        }
        assert_eq!(police.strikes(), 0);
    }

    #[test]
    fn without_calls_pings_are_held_to_two_hours_unless_permitted() {
        let t0 = Instant::now();
        let mut strict = PingStrikes::new(PingPolicy::default());
        strict.ping(t0, false);
        strict.ping(t0 + 600 * S, false);
        assert_eq!(
            strict.strikes(),
            1,
            "10 minutes apart without calls is too soon"
        );
        strict.ping(t0 + 600 * S + IDLE_MIN_PING_INTERVAL, false);
        assert_eq!(strict.strikes(), 1);
        let mut permissive = PingStrikes::new(PingPolicy {
            permit_without_calls: true,
            ..PingPolicy::default()
        });
        permissive.ping(t0, false);
        permissive.ping(t0 + 600 * S, false);
        assert_eq!(permissive.strikes(), 0);
    }

    #[test]
    fn sending_headers_or_data_forgives_the_strikes() {
        let t0 = Instant::now();
        let mut police = PingStrikes::new(PingPolicy::default());
        police.ping(t0, true);
        police.ping(t0 + S, true);
        police.ping(t0 + 2 * S, true);
        assert_eq!(police.strikes(), 2);
        police.sent_headers_or_data();
        assert!(
            !police.ping(t0 + 3 * S, true),
            "the ping after a response is not checked"
        );
        assert_eq!(police.strikes(), 0);
        assert!(!police.ping(t0 + 4 * S, true));
        assert_eq!(police.strikes(), 1);
    }
}
