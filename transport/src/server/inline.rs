//! Which accepted calls a connection's task polls itself, and which it spawns at once.
//!
//! A call whose handler answers at once is cheapest polled on the connection's task: no
//! hand-off to another thread, no contention on the connection's lock, and its response goes
//! out in the connection's next write. A handler that computes is not: while the connection's
//! task runs it, the connection reads and writes nothing, and every other call of the
//! connection waits on that one thread, so one connection's calls use one core however many
//! the machine has. A call spawned as a task of its own can be taken by an idle worker.
//!
//! So the connection polls calls itself while they are quick, and after a call's first poll
//! took [`SLOW_POLL`] (the default of `Server::slow_first_poll`) it spawns the next
//! [`SPAWN_AFTER_SLOW`] calls unpolled; then it tries one again. A connection whose handlers
//! compute then runs about one call in `SPAWN_AFTER_SLOW + 1` itself, and one whose handlers
//! echo never spawns.

use std::time::Duration;

/// A first poll this long is a handler doing work of its own, not answering at once: many
/// times the few microseconds an echo takes, and more than a spawned task's hand-off costs.
pub(super) const SLOW_POLL: Duration = Duration::from_micros(20);

/// Calls spawned without a first poll after a slow one, before the next is polled inline.
pub(super) const SPAWN_AFTER_SLOW: u32 = 64;

/// A connection's choice, call by call, of polling inline or spawning (see the module doc).
#[derive(Debug)]
pub(super) struct InlinePolls {
    /// A first poll at least this long is slow.
    slow: Duration,
    /// Calls still to spawn unpolled since the last slow first poll.
    spawn_next: u32,
}

impl InlinePolls {
    /// Polls calls inline until one's first poll takes `slow`.
    pub(super) fn new(slow: Duration) -> InlinePolls {
        InlinePolls {
            slow,
            spawn_next: 0,
        }
    }

    /// Whether the next accepted call is polled on the connection's task (else it is spawned
    /// unpolled).
    pub(super) fn poll_next(&mut self) -> bool {
        if self.spawn_next == 0 {
            return true;
        }
        self.spawn_next -= 1;
        false
    }

    /// Records that an inline first poll took `took`.
    pub(super) fn polled(&mut self, took: Duration) {
        if took >= self.slow {
            self.spawn_next = SPAWN_AFTER_SLOW;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_calls_are_always_polled_inline() {
        let mut polls = InlinePolls::new(SLOW_POLL);
        for _ in 0..1000 {
            assert!(polls.poll_next());
            polls.polled(SLOW_POLL - Duration::from_nanos(1));
        }
    }

    #[test]
    fn the_limit_is_the_servers() {
        let mut polls = InlinePolls::new(Duration::from_millis(1));
        polls.polled(Duration::from_micros(900));
        assert!(polls.poll_next(), "under its limit, a poll is quick");
        polls.polled(Duration::from_millis(1));
        assert!(!polls.poll_next(), "at its limit, a poll is slow");
    }

    #[test]
    fn a_slow_call_sends_the_next_calls_to_tasks_of_their_own() {
        let mut polls = InlinePolls::new(SLOW_POLL);
        assert!(polls.poll_next());
        polls.polled(SLOW_POLL);
        for _ in 0..SPAWN_AFTER_SLOW {
            assert!(!polls.poll_next());
        }
        // Then one is tried inline again; quick, and the connection stays inline.
        assert!(polls.poll_next());
        polls.polled(Duration::from_micros(2));
        assert!(polls.poll_next());
        // Slow again, and the next SPAWN_AFTER_SLOW are spawned.
        polls.polled(Duration::from_millis(5));
        assert_eq!(
            (0..=SPAWN_AFTER_SLOW).filter(|_| polls.poll_next()).count(),
            1
        );
    }
}
