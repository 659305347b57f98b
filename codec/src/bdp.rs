//! A dynamic flow-control window from the bandwidth-delay product, as grpc-go estimates it,
//! with no IO.
//!
//! When DATA starts arriving the receiver sends a PING and counts the DATA bytes that arrive
//! until its ACK: about one round trip's worth, i.e. the bandwidth-delay product. When a sample
//! fills at least two thirds of the current window at the highest bandwidth seen so far, the
//! window is too small to keep the pipe full, and it grows to twice the sample (up to a limit).
//!
//! As in the C-core, a steady estimate is sampled less and less often: after two samples in a
//! row that do not grow the window, each further one waits 100 ms longer (up to 10 s) before
//! the next. Without this, a connection carrying small calls would ping once per round trip
//! for as long as it lives — one extra frame each way per call at low concurrency.

use std::time::{Duration, Instant};

/// The largest window the estimator grows to (16 MiB, grpc-go's limit).
pub const BDP_LIMIT: u32 = 16 << 20;

/// Grow when a sample is at least this fraction of the current window.
const BETA: f64 = 0.66;
/// The new window is this many times the sample.
const GAMMA: f64 = 2.0;
/// Weight of a new round-trip time in the running average once it has settled.
const ALPHA: f64 = 0.9;
/// Samples averaged equally before the running average takes over.
const SETTLING_SAMPLES: u32 = 10;
/// How much longer each sample after a steady one waits, and the longest wait.
const PING_DELAY_STEP: Duration = Duration::from_millis(100);
const MAX_PING_DELAY: Duration = Duration::from_secs(10);

/// One connection's bandwidth-delay estimate.
#[derive(Debug, Clone)]
pub struct BdpEstimator {
    window: u32,
    /// DATA bytes received since the sampling PING was sent.
    sample: u64,
    /// The sampling PING in flight: when it was sent (`None` while asked for but not sent).
    sampling: Option<Option<Instant>>,
    samples: u32,
    /// Smoothed round-trip time, in seconds.
    rtt: f64,
    /// Highest bandwidth seen, in bytes per second.
    max_bandwidth: f64,
    /// Samples in a row that left the window as it was.
    steady: u32,
    /// The wait between a steady sample and the next.
    ping_delay: Duration,
    /// No sample starts before this.
    next_sample_at: Option<Instant>,
}

impl BdpEstimator {
    /// Starts from the window the connection was set up with.
    pub fn new(initial_window: u32) -> BdpEstimator {
        BdpEstimator {
            window: initial_window,
            sample: 0,
            sampling: None,
            samples: 0,
            rtt: 0.0,
            max_bandwidth: 0.0,
            steady: 0,
            ping_delay: Duration::ZERO,
            next_sample_at: None,
        }
    }

    /// The window in use.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// `bytes` of DATA arrived (`now` is asked only when a sample may start). Returns `true`
    /// when a sampling PING should be sent now.
    pub fn received(&mut self, bytes: usize, now: impl FnOnce() -> Instant) -> bool {
        if self.window >= BDP_LIMIT {
            return false;
        }
        if self.sampling.is_some() {
            self.sample += bytes as u64;
            return false;
        }
        if self.next_sample_at.is_some_and(|at| now() < at) {
            return false;
        }
        self.sample = bytes as u64;
        self.sampling = Some(None);
        self.samples += 1;
        true
    }

    /// The sampling PING was written at `now` (or could not be: `sent` is false, and the
    /// sample starts over with the next DATA).
    pub fn ping_sent(&mut self, now: Instant, sent: bool) {
        match sent {
            true => self.sampling = Some(Some(now)),
            false => {
                self.sampling = None;
                self.sample = 0;
                self.samples -= 1;
            }
        }
    }

    /// The sampling PING's ACK arrived at `now`. Returns the new window when it grows.
    pub fn pong(&mut self, now: Instant) -> Option<u32> {
        let sent = self.sampling.take()??;
        let sample = std::mem::take(&mut self.sample) as f64;
        let rtt = now
            .saturating_duration_since(sent)
            .max(Duration::from_micros(1))
            .as_secs_f64();
        self.rtt += match self.samples < SETTLING_SAMPLES {
            true => (rtt - self.rtt) / f64::from(self.samples),
            false => (rtt - self.rtt) * ALPHA,
        };
        // The sample spans up to 1.5 round trips: the PING's, plus DATA already on the way.
        let bandwidth = sample / (self.rtt * 1.5);
        if bandwidth > self.max_bandwidth {
            self.max_bandwidth = bandwidth;
        }
        let window = (GAMMA * sample).min(f64::from(BDP_LIMIT)) as u32;
        let grows = sample >= BETA * f64::from(self.window)
            && bandwidth >= self.max_bandwidth
            && window > self.window;
        if grows {
            self.window = window;
            self.steady = 0;
            self.ping_delay = Duration::ZERO;
            self.next_sample_at = None;
            return Some(window);
        }
        self.steady += 1;
        if self.steady >= 2 {
            self.ping_delay = (self.ping_delay + PING_DELAY_STEP).min(MAX_PING_DELAY);
        }
        self.next_sample_at = Some(now + self.ping_delay);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One round trip of `bytes` arriving, `rtt` long, starting at `at`.
    fn round(bdp: &mut BdpEstimator, at: Instant, rtt: Duration, bytes: usize) -> Option<u32> {
        if bdp.received(16 * 1024, || at) {
            bdp.ping_sent(at, true);
        }
        bdp.received(bytes.saturating_sub(16 * 1024), || at);
        bdp.pong(at + rtt)
    }

    #[test]
    fn a_full_pipe_grows_the_window_to_twice_the_sample_up_to_the_limit() {
        let t0 = Instant::now();
        let mut bdp = BdpEstimator::new(64 * 1024);
        // 100 ms round trips, each bringing a full window: the window keeps doubling.
        let mut windows = Vec::new();
        for i in 0..12 {
            let window = bdp.window() as usize;
            if let Some(w) = round(&mut bdp, t0 + i * 200 * MS, 100 * MS, window) {
                windows.push(w);
            }
        }
        assert_eq!(windows[0], 128 * 1024);
        assert!(windows
            .windows(2)
            .all(|w| w[1] == (w[0] * 2).min(BDP_LIMIT)));
        assert_eq!(bdp.window(), BDP_LIMIT);
        assert!(!bdp.received(1, || t0), "no sampling at the limit");
    }

    #[test]
    fn a_trickle_leaves_the_window_alone() {
        let t0 = Instant::now();
        let mut bdp = BdpEstimator::new(1 << 20);
        for i in 0..20 {
            assert_eq!(round(&mut bdp, t0 + i * 10 * MS, MS, 100 * 1024), None);
        }
        assert_eq!(bdp.window(), 1 << 20);
    }

    #[test]
    fn one_ping_at_a_time_and_an_unsent_ping_starts_over() {
        let t0 = Instant::now();
        let mut bdp = BdpEstimator::new(1024);
        assert!(bdp.received(100, || t0));
        assert!(!bdp.received(100, || t0), "a sample is already being taken");
        bdp.ping_sent(t0, false);
        assert!(
            bdp.received(100, || t0),
            "the unsent ping is asked for again"
        );
        bdp.ping_sent(t0, true);
        assert_eq!(bdp.pong(t0 + MS), None, "100 bytes of a 1 KiB window");
        assert_eq!(bdp.pong(t0 + MS), None, "no sample in flight");
    }

    #[test]
    fn a_steady_trickle_is_sampled_less_and_less_often() {
        // Small calls: 100 bytes every millisecond, 100 us round trips, for 60 s.
        let t0 = Instant::now();
        let mut bdp = BdpEstimator::new(64 * 1024);
        let (mut pings, mut last_ping, mut gaps) = (0, t0, Vec::new());
        for ms in 0..60_000u32 {
            let now = t0 + MS * ms;
            if bdp.received(100, || now) {
                bdp.ping_sent(now, true);
                assert_eq!(bdp.pong(now + MS / 10), None);
                pings += 1;
                gaps.push(now - last_ping);
                last_ping = now;
            }
        }
        // One per call at first, then 100 ms further apart each time, capped at 10 s.
        assert_eq!(gaps[1], MS, "{gaps:?}");
        assert_eq!(gaps[2], 101 * MS, "{gaps:?}");
        assert_eq!(gaps[3], 201 * MS, "{gaps:?}");
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= MAX_PING_DELAY + MS));
        assert!(pings < 50, "{pings} pings in 60 s");
    }

    #[test]
    fn a_growing_window_is_sampled_every_round_trip_again() {
        let t0 = Instant::now();
        let mut bdp = BdpEstimator::new(64 * 1024);
        for i in 0..10 {
            round(&mut bdp, t0 + i * 10 * MS, MS, 1000);
        }
        assert!(
            bdp.next_sample_at.is_some_and(|at| at > t0 + 91 * MS),
            "backed off"
        );
        let at = bdp.next_sample_at.unwrap();
        assert_eq!(round(&mut bdp, at, MS, 64 * 1024), Some(128 * 1024));
        assert_eq!(
            bdp.next_sample_at, None,
            "sampling goes back to every round trip"
        );
    }
}
