//! A dynamic flow-control window from the bandwidth-delay product, as grpc-go estimates it,
//! with no IO.
//!
//! When DATA starts arriving the receiver sends a PING and counts the DATA bytes that arrive
//! until its ACK: about one round trip's worth, i.e. the bandwidth-delay product. When a sample
//! fills at least two thirds of the current window at the highest bandwidth seen so far, the
//! window is too small to keep the pipe full, and it grows to twice the sample (up to a limit).

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
        }
    }

    /// The window in use.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// `bytes` of DATA arrived. Returns `true` when a sampling PING should be sent now.
    pub fn received(&mut self, bytes: usize) -> bool {
        if self.window >= BDP_LIMIT {
            return false;
        }
        self.sample += bytes as u64;
        if self.sampling.is_some() {
            return false;
        }
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
        if sample < BETA * f64::from(self.window) || bandwidth < self.max_bandwidth {
            return None;
        }
        let window = (GAMMA * sample).min(f64::from(BDP_LIMIT)) as u32;
        (window > self.window).then(|| {
            self.window = window;
            window
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One round trip of `bytes` arriving, `rtt` long, starting at `at`.
    fn round(bdp: &mut BdpEstimator, at: Instant, rtt: Duration, bytes: usize) -> Option<u32> {
        if bdp.received(16 * 1024) {
            bdp.ping_sent(at, true);
        }
        bdp.received(bytes.saturating_sub(16 * 1024));
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
        assert!(!bdp.received(1), "no sampling at the limit");
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
        assert!(bdp.received(100));
        assert!(!bdp.received(100), "a sample is already being taken");
        bdp.ping_sent(t0, false);
        assert!(bdp.received(100), "the unsent ping is asked for again");
        bdp.ping_sent(t0, true);
        assert_eq!(bdp.pong(t0 + MS), None, "100 bytes of a 1 KiB window");
        assert_eq!(bdp.pong(t0 + MS), None, "no sample in flight");
    }
}
