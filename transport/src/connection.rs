//! What runs beside h2 on every connection: the IO tap that sees the frames h2 keeps to itself,
//! and [`Liveness`], which drives keepalive pings and the BDP flow-control window with h2's
//! ping API. The decisions are `codec::keepalive` and `codec::bdp`; this module does the IO.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use anygrpc_codec::{
    bdp::BdpEstimator,
    frames::{self, FrameScanner, Seen},
    keepalive::{Keepalive, KeepaliveAction, KeepaliveConfig, PingStrikes},
};
use anygrpc_rt::{Gate, Runtime, Sleep, Tap};
use h2::{Ping, PingPong};

use crate::sync::lock;

/// The GOAWAY error code a server sends to a client that pings too often.
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// The debug data that goes with it.
pub(crate) const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// Why calls fail when keepalive finds the peer dead.
pub(crate) const KEEPALIVE_TIMEOUT: &str = "keepalive timeout: the peer stopped answering PINGs";

const GATE_OPEN: u8 = 0;
const GATE_CUT_OFF: u8 = 1;
const GATE_DEAD: u8 = 2;

/// What a connection's tap records for its task. Both run in the connection's task (h2 does
/// its IO only there); the hot path — every read and write — touches only atomics, and the
/// locks are taken for PINGs and GOAWAYs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The origin of `last_read`.
    epoch: Instant,
    /// When the peer last sent anything, in nanoseconds after `epoch` (kept with keepalive).
    last_read: AtomicU64,
    /// DATA payload bytes read since the task last looked (for the BDP estimate).
    data_bytes: AtomicUsize,
    /// The peer sent GOAWAY; its error code and debug data are in `goaway`.
    went_away: AtomicBool,
    goaway: Mutex<Option<(u32, Vec<u8>)>>,
    /// A server's ping policing: fed the PINGs it reads.
    strikes: Option<Mutex<PingStrikes>>,
    /// The server wrote HEADERS or DATA since the last PING (which forgives strikes).
    forgiven: AtomicBool,
    /// Whether calls are in flight, as the connection's task last saw (for ping policing).
    calls_in_flight: AtomicBool,
    /// What the next read does: [`GATE_OPEN`], [`GATE_CUT_OFF`] (the client pinged too often:
    /// nothing more is read from it) or [`GATE_DEAD`] (keepalive found the peer dead).
    gate: AtomicU8,
    /// Debug data put on the GOAWAY frames h2 writes from now on.
    goaway_debug: OnceLock<&'static [u8]>,
    /// Client: the channel closed and its grace period is over; `closer` wakes the
    /// connection's task to end the connection.
    close_requested: AtomicBool,
    closer: Mutex<Option<Waker>>,
}

impl Shared {
    pub(crate) fn new(now: Instant, strikes: Option<PingStrikes>) -> Arc<Shared> {
        Arc::new(Shared {
            epoch: now,
            last_read: AtomicU64::new(0),
            data_bytes: AtomicUsize::new(0),
            went_away: AtomicBool::new(false),
            goaway: Mutex::new(None),
            strikes: strikes.map(Mutex::new),
            forgiven: AtomicBool::new(false),
            calls_in_flight: AtomicBool::new(false),
            gate: AtomicU8::new(GATE_OPEN),
            goaway_debug: OnceLock::new(),
            close_requested: AtomicBool::new(false),
            closer: Mutex::new(None),
        })
    }

    /// Client: ends the connection now, failing the streams still on it (a closing channel's
    /// grace period is over). Wakes the connection's task, which ends at its next poll.
    pub(crate) fn close_now(&self) {
        self.close_requested.store(true, Ordering::SeqCst);
        if let Some(waker) = lock(&self.closer).take() {
            waker.wake();
        }
    }

    /// Whether [`close_now`](Self::close_now) was called; until then the connection's task
    /// leaves its waker for it. `registered` is the task's record of the waker it left, so
    /// the lock is taken only when the task's waker changes (a spawned task's never does):
    /// each poll costs a waker comparison and a load.
    pub(crate) fn close_requested(&self, cx: &Context<'_>, registered: &mut Option<Waker>) -> bool {
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *lock(&self.closer) = Some(cx.waker().clone());
            *registered = Some(cx.waker().clone());
        }
        self.close_requested.load(Ordering::SeqCst)
    }

    /// Whether the peer has sent GOAWAY (a cheap check, made after every poll).
    pub(crate) fn went_away(&self) -> bool {
        self.went_away.load(Ordering::Relaxed)
    }

    /// The peer's last GOAWAY: its error code and debug data.
    pub(crate) fn goaway(&self) -> Option<(u32, Vec<u8>)> {
        lock(&self.goaway).clone()
    }

    /// Server: whether calls are in flight now (pings are policed by it).
    pub(crate) fn set_calls_in_flight(&self, calls: bool) {
        self.calls_in_flight.store(calls, Ordering::Relaxed);
    }

    /// Server: whether the client has pinged too often (reading from it has stopped).
    pub(crate) fn cut_off(&self) -> bool {
        self.gate.load(Ordering::Relaxed) == GATE_CUT_OFF
    }

    /// Puts `debug` on the GOAWAY frames h2 sends from now on (the first reason given stays).
    pub(crate) fn goaway_debug_data(&self, debug: &'static [u8]) {
        let _ = self.goaway_debug.set(debug);
    }

    fn last_read(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_read.load(Ordering::Relaxed))
    }

    /// Keepalive found the peer dead: the connection's next read fails, so h2 ends it and every
    /// stream on it with [`KEEPALIVE_TIMEOUT`]. Returns false if it already had (h2 did not
    /// read since: the caller drops the connection instead).
    pub(crate) fn fail_dead(&self) -> bool {
        self.gate.swap(GATE_DEAD, Ordering::Relaxed) != GATE_DEAD
    }

    /// A PING arrived at `now`: police it.
    fn ping(&self, now: Instant) {
        let Some(strikes) = &self.strikes else {
            return;
        };
        let mut strikes = lock(strikes);
        if self.forgiven.swap(false, Ordering::Relaxed) {
            strikes.sent_headers_or_data();
        }
        if strikes.ping(now, self.calls_in_flight.load(Ordering::Relaxed)) {
            self.gate.store(GATE_CUT_OFF, Ordering::Relaxed);
        }
    }
}

/// The [`Tap`] of one connection.
pub(crate) struct ConnectionTap {
    shared: Arc<Shared>,
    /// The clock, when keepalive needs to know when the peer was last heard from.
    clock: Option<Arc<dyn Runtime>>,
    reads: FrameScanner,
    /// A server follows its own output: HEADERS and DATA forgive ping strikes, and GOAWAYs
    /// get their debug data.
    writes: Option<FrameScanner>,
}

impl ConnectionTap {
    /// A client connection's tap; `keepalive` if it needs to know when the server was last
    /// heard from.
    pub(crate) fn client(
        shared: Arc<Shared>,
        runtime: Arc<dyn Runtime>,
        keepalive: bool,
    ) -> Box<dyn Tap> {
        Box::new(ConnectionTap {
            shared,
            clock: keepalive.then_some(runtime),
            reads: FrameScanner::server_to_client(),
            writes: None,
        })
    }

    /// A server connection's tap.
    pub(crate) fn server(shared: Arc<Shared>, runtime: Arc<dyn Runtime>) -> Box<dyn Tap> {
        Box::new(ConnectionTap {
            shared,
            clock: Some(runtime),
            reads: FrameScanner::client_to_server(),
            writes: Some(FrameScanner::server_to_client()),
        })
    }
}

impl Tap for ConnectionTap {
    fn read(&mut self, bytes: &[u8]) {
        let shared = &*self.shared;
        let now = self.clock.as_ref().map(|clock| clock.now());
        if let Some(now) = now {
            let since = now.saturating_duration_since(shared.epoch).as_nanos();
            let since = u64::try_from(since).unwrap_or(u64::MAX);
            shared.last_read.store(since, Ordering::Relaxed);
        }
        let mut data_bytes = 0;
        self.reads.scan(bytes, |seen| match seen {
            Seen::Frame(header) if header.kind == frames::kind::DATA => {
                data_bytes += header.length as usize;
            }
            Seen::Frame(header) if header.is_ping() => {
                if let Some(now) = now {
                    shared.ping(now);
                }
            }
            Seen::GoAway {
                error_code,
                debug_data,
                ..
            } => {
                *lock(&shared.goaway) = Some((error_code, debug_data.to_vec()));
                shared.went_away.store(true, Ordering::Relaxed);
            }
            Seen::Frame(_) => {}
        });
        if data_bytes > 0 {
            shared.data_bytes.fetch_add(data_bytes, Ordering::Relaxed);
        }
    }

    fn written(&mut self, bytes: &[u8]) {
        let Some(writes) = &mut self.writes else {
            return;
        };
        let mut forgive = false;
        writes.scan(bytes, |seen| {
            if let Seen::Frame(header) = seen {
                forgive |= header.is_headers_or_data();
            }
        });
        if forgive {
            self.shared.forgiven.store(true, Ordering::Relaxed);
        }
    }

    fn replace(&mut self, next: &[u8]) -> Option<(usize, Vec<u8>)> {
        let debug = self.shared.goaway_debug.get()?;
        if !self.writes.as_ref()?.at_frame_boundary() {
            return None;
        }
        frames::with_goaway_debug_data(next, debug)
    }

    fn may_replace(&self) -> bool {
        self.shared.goaway_debug.get().is_some()
    }

    fn gate(&self) -> Gate {
        match self.shared.gate.load(Ordering::Relaxed) {
            GATE_OPEN => Gate::Open,
            GATE_CUT_OFF => Gate::Paused,
            _ => Gate::Failed(KEEPALIVE_TIMEOUT),
        }
    }
}

/// What [`Liveness`] reports to the connection's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LivenessEvent {
    /// The peer answered nothing within the keepalive timeout: close the connection.
    Dead,
    /// Set the connection's and streams' receive windows to this size.
    Window(u32),
}

/// Keepalive pings and BDP sampling on one connection, sharing h2's single user ping.
pub(crate) struct Liveness {
    shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
    keepalive: Option<Keepalive>,
    bdp: Option<BdpEstimator>,
    ping_pong: Option<PingPong>,
    ping_in_flight: bool,
    timer: Timer,
}

impl Liveness {
    pub(crate) fn new(
        shared: Arc<Shared>,
        runtime: Arc<dyn Runtime>,
        ping_pong: Option<PingPong>,
        keepalive: Option<KeepaliveConfig>,
        bdp_initial_window: Option<u32>,
    ) -> Liveness {
        let now = runtime.now();
        Liveness {
            shared,
            keepalive: keepalive.map(|config| Keepalive::new(config, now)),
            bdp: bdp_initial_window.map(BdpEstimator::new),
            ping_pong,
            ping_in_flight: false,
            timer: Timer::new(runtime.clone()),
            runtime,
        }
    }

    fn send_ping(&mut self) -> bool {
        if self.ping_in_flight {
            return false;
        }
        let Some(ping_pong) = &mut self.ping_pong else {
            return false;
        };
        self.ping_in_flight = ping_pong.send_ping(Ping::opaque()).is_ok();
        self.ping_in_flight
    }

    /// Runs after every poll of the connection, with what the tap saw meanwhile. Asks
    /// `calls_in_flight` only when a keepalive ping is due.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        calls_in_flight: impl FnOnce() -> bool,
    ) -> Poll<LivenessEvent> {
        let data_bytes = match self.bdp {
            Some(_) => self.shared.data_bytes.swap(0, Ordering::Relaxed),
            None => 0,
        };
        if self.keepalive.is_none() && !self.ping_in_flight && data_bytes == 0 {
            return Poll::Pending;
        }
        let mut grown = None;
        if self.ping_in_flight {
            if let Some(ping_pong) = &mut self.ping_pong {
                if let Poll::Ready(answer) = ping_pong.poll_pong(cx) {
                    self.ping_in_flight = false;
                    if let (Ok(_), Some(bdp)) = (answer, &mut self.bdp) {
                        grown = bdp.pong(self.runtime.now());
                    }
                }
            }
        }
        if data_bytes > 0
            && self
                .bdp
                .as_mut()
                .is_some_and(|bdp| bdp.received(data_bytes, || self.runtime.now()))
        {
            let sent = self.send_ping();
            let now = self.runtime.now();
            if let Some(bdp) = &mut self.bdp {
                bdp.ping_sent(now, sent);
            }
        }
        if let Some(keepalive) = &mut self.keepalive {
            keepalive.read(self.shared.last_read());
            match keepalive.poll(self.runtime.now(), calls_in_flight) {
                KeepaliveAction::Dead => return Poll::Ready(LivenessEvent::Dead),
                // A ping already in flight (a BDP sample) serves as well: any answer counts.
                // The next deadline (the ping's timeout) is computed on the next poll, at once.
                KeepaliveAction::Ping => {
                    self.send_ping();
                    cx.waker().wake_by_ref();
                }
                KeepaliveAction::Wait(at) => {
                    if self.timer.poll(cx, at) {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        match grown {
            Some(window) => Poll::Ready(LivenessEvent::Window(window)),
            None => Poll::Pending,
        }
    }
}

/// A connection task's timer for deadlines that mostly move later (each read pushes the
/// keepalive ping back): it is moved only when it must fire sooner, and firing early costs the
/// task one look, instead of a timer update on every poll.
pub(crate) struct Timer {
    runtime: Arc<dyn Runtime>,
    sleep: Option<Pin<Box<dyn Sleep>>>,
    armed_at: Option<Instant>,
}

impl Timer {
    pub(crate) fn new(runtime: Arc<dyn Runtime>) -> Timer {
        Timer {
            runtime,
            sleep: None,
            armed_at: None,
        }
    }

    /// Makes sure the task is woken at `at` or sooner; `true` when the timer has fired (the
    /// caller looks at its deadlines again).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> bool {
        if let Some(at) = at {
            if self.armed_at.is_none_or(|armed| armed > at) {
                self.armed_at = Some(at);
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(at),
                    None => self.sleep = Some(self.runtime.sleep_until(at)),
                }
            }
        }
        let Some(sleep) = self.sleep.as_mut().filter(|_| self.armed_at.is_some()) else {
            return false;
        };
        let fired = sleep.as_mut().poll(cx).is_ready();
        if fired {
            self.armed_at = None;
        }
        fired
    }
}
