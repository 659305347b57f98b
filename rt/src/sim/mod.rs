//! A deterministic simulation runtime: one thread, a virtual clock, seeded randomness and an
//! in-memory network with faults.
//!
//! [`Sim`] runs anygrpc's clients and servers (and the test driving them) as tasks of a
//! single-threaded executor. Time is virtual: when no task can run, the clock jumps to the next
//! timer or packet delivery, so a scenario spanning minutes of keepalives and backoffs runs in
//! milliseconds. Every random draw — the network's jitter and drops, and anygrpc's own backoff
//! jitter and load-balancing shuffles, which use `fastrand`'s thread-local generator — comes from
//! the seed, and tasks run in the order they were woken, so the same seed gives the same run.
//! [`Sim::trace`] records what happened (connections, deliveries, closes, faults, and the
//! scenario's own events) so two runs can be compared.
//!
//! A run that can make no progress (every task waits on something that will never happen)
//! panics with the trace's tail instead of hanging, and so does one that spins (tasks waking
//! each other without end at one instant) or passes its virtual time limit.
//!
//! ```
//! use std::time::Duration;
//! use anygrpc_rt::{sim::Sim, Runtime};
//!
//! let sim = Sim::new(7);
//! let rt = sim.runtime();
//! let start = rt.now();
//! sim.run(async {
//!     rt.sleep_until(start + Duration::from_secs(3600)).await;
//! });
//! assert_eq!(rt.now() - start, Duration::from_secs(3600));
//! ```

mod net;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, VecDeque},
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant, SystemTime},
};

use crate::{BoxFuture, BoxIo, Listener, Runtime, Sleep, TcpOptions};

pub use net::LinkFaults;
use net::Net;

/// The id of the future [`Sim::run`] drives (tasks count from 1).
const MAIN: u64 = 0;

/// How many trace lines a stall or time-limit panic shows.
const TRACE_TAIL: usize = 40;

/// Polls at one instant after which a run is taken to be spinning (tasks waking each other
/// forever without time passing) and panics, unless set otherwise.
const SPIN_LIMIT: u64 = 10_000_000;

/// A simulated world: executor, clock, randomness and network. See the [module docs](self).
///
/// Dropping it drops every task still running.
pub struct Sim {
    world: Arc<World>,
    seed: u64,
}

/// What runtime handles, timers and streams share.
struct World {
    state: Mutex<State>,
    ready: Arc<ReadyQueue>,
}

/// Tasks woken and not yet polled, in wake order.
#[derive(Default)]
struct ReadyQueue(Mutex<VecDeque<u64>>);

struct Task {
    future: Option<BoxFuture<'static, ()>>,
    waker: Arc<TaskWaker>,
}

/// Wakes one task by queueing its id. It takes only the ready queue's lock, so it may be called
/// while the world's state is locked.
struct TaskWaker {
    id: u64,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.ready.0).push_back(self.id);
        }
    }
}

/// The wall-clock time a simulated run begins at, as seconds since the Unix epoch:
/// 2026-01-01T00:00:00Z.
const SIM_EPOCH_SECS: u64 = 1_767_225_600;

struct State {
    start: Instant,
    now: Instant,
    /// The virtual time past which a run panics.
    limit: Duration,
    /// Polls at one instant past which a run panics.
    spin_limit: u64,
    rng: fastrand::Rng,
    next_id: u64,
    tasks: BTreeMap<u64, Task>,
    /// Pending wake-ups, earliest first; an entry is live while `timers` holds its id with the
    /// same deadline (a timer that moved or was dropped leaves a stale entry behind).
    wakeups: BinaryHeap<Reverse<(Instant, u64)>>,
    timers: BTreeMap<u64, (Instant, Option<Waker>)>,
    net: Net,
    trace: Vec<String>,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn record(&mut self, event: fmt::Arguments<'_>) {
        let line = format!("{:>12.6?} {event}", self.elapsed());
        self.trace.push(line);
    }

    /// Wakes `waker` at `at` (a one-shot wake-up, used by the network for deliveries).
    fn wake_at(&mut self, at: Instant, waker: Waker) {
        let id = self.id();
        self.timers.insert(id, (at, Some(waker)));
        self.wakeups.push(Reverse((at, id)));
    }

    /// Moves the clock to the next live wake-up and fires every one due then. False if there
    /// is none.
    fn advance(&mut self) -> bool {
        while let Some(Reverse((at, id))) = self.wakeups.pop() {
            if self
                .timers
                .get(&id)
                .is_none_or(|(deadline, _)| *deadline != at)
            {
                continue;
            }
            self.now = self.now.max(at);
            self.fire(id);
            while let Some(&Reverse((at, id))) = self.wakeups.peek() {
                if at > self.now {
                    break;
                }
                self.wakeups.pop();
                if self
                    .timers
                    .get(&id)
                    .is_some_and(|(deadline, _)| *deadline == at)
                {
                    self.fire(id);
                }
            }
            return true;
        }
        false
    }

    fn fire(&mut self, id: u64) {
        if let Some((_, waker)) = self.timers.get_mut(&id) {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }

    fn tail(&self) -> String {
        let from = self.trace.len().saturating_sub(TRACE_TAIL);
        self.trace[from..].join("\n")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl World {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.world.state();
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("elapsed", &state.elapsed())
            .field("tasks", &state.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A world whose every random draw follows `seed`. It also seeds this thread's `fastrand`
    /// generator, which anygrpc draws its jitter and shuffles from: build the sim on the
    /// thread that runs it.
    pub fn new(seed: u64) -> Sim {
        fastrand::seed(seed);
        let start = Instant::now();
        let world = World {
            state: Mutex::new(State {
                start,
                now: start,
                limit: Duration::from_secs(24 * 3600),
                spin_limit: SPIN_LIMIT,
                rng: fastrand::Rng::with_seed(seed),
                next_id: MAIN,
                tasks: BTreeMap::new(),
                wakeups: BinaryHeap::new(),
                timers: BTreeMap::new(),
                net: Net::default(),
                trace: Vec::new(),
            }),
            ready: Arc::default(),
        };
        Sim {
            world: Arc::new(world),
            seed,
        }
    }

    /// The seed this world was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sets the virtual time after which a run panics (default 24 hours): a scenario that
    /// should finish in seconds but keeps timers going forever fails instead of spinning.
    pub fn set_time_limit(&self, limit: Duration) {
        self.world.state().limit = limit;
    }

    /// Sets how many polls may happen at one instant before a run is taken to be spinning
    /// (default ten million).
    pub fn set_spin_limit(&self, polls: u64) {
        self.world.state().spin_limit = polls;
    }

    /// The runtime to give anygrpc's channels and servers (and to spawn the scenario's own
    /// tasks on). It refers to the world weakly: using it after the `Sim` is dropped panics.
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(SimRuntime {
            world: Arc::downgrade(&self.world),
        })
    }

    /// Virtual time since the world began.
    pub fn elapsed(&self) -> Duration {
        self.world.state().elapsed()
    }

    /// Adds a line to the trace (prefixed with the virtual time).
    pub fn event(&self, event: impl fmt::Display) {
        self.world.state().record(format_args!("{event}"));
    }

    /// Everything recorded so far, one event per line.
    pub fn trace(&self) -> Vec<String> {
        self.world.state().trace.clone()
    }

    /// A draw from the world's seeded generator, for scenarios that want randomness of
    /// their own.
    pub fn random(&self, range: std::ops::Range<u64>) -> u64 {
        self.world.state().rng.u64(range)
    }

    /// Runs `future` to completion, running every spawned task and moving the clock as
    /// needed. Tasks still running when it completes stay, and run again in the next call.
    ///
    /// # Panics
    ///
    /// If every task (`future` included) waits and nothing is scheduled to wake one — the
    /// simulated program is stuck — or the clock passes the time limit. The message shows the
    /// trace's tail.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        let mut future = pin!(future);
        let main = Arc::new(TaskWaker {
            id: MAIN,
            queued: AtomicBool::new(false),
            ready: self.world.ready.clone(),
        });
        main.wake_by_ref();
        let main_waker = Waker::from(main.clone());
        let spin_limit = self.world.state().spin_limit;
        let mut polls_now = 0u64;
        loop {
            let next = lock(&self.world.ready.0).pop_front();
            if next.is_some() {
                polls_now += 1;
                if polls_now > spin_limit {
                    let state = self.world.state();
                    panic!(
                        "simulation spinning at {:?} (seed {}): {spin_limit} polls without \
                         time passing; last events:\n{}",
                        state.elapsed(),
                        self.seed,
                        state.tail()
                    );
                }
            }
            match next {
                Some(MAIN) => {
                    main.queued.store(false, Ordering::Release);
                    if let Poll::Ready(output) =
                        future.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        return output;
                    }
                }
                Some(id) => self.poll_task(id),
                None => {
                    polls_now = 0;
                    let mut state = self.world.state();
                    if !state.advance() {
                        panic!(
                            "simulation stuck at {:?} (seed {}): every task waits and no \
                             timer or delivery is due; last events:\n{}",
                            state.elapsed(),
                            self.seed,
                            state.tail()
                        );
                    }
                    if state.elapsed() > state.limit {
                        panic!(
                            "simulation passed its time limit of {:?} (seed {}); last events:\n{}",
                            state.limit,
                            self.seed,
                            state.tail()
                        );
                    }
                }
            }
        }
    }

    fn poll_task(&self, id: u64) {
        let (mut future, waker) = {
            let mut state = self.world.state();
            let Some(task) = state.tasks.get_mut(&id) else {
                return;
            };
            task.waker.queued.store(false, Ordering::Release);
            let Some(future) = task.future.take() else {
                return;
            };
            (future, Waker::from(task.waker.clone()))
        };
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let finished = {
            let mut state = self.world.state();
            if done {
                state.tasks.remove(&id);
                Some(future)
            } else {
                if let Some(task) = state.tasks.get_mut(&id) {
                    task.future = Some(future);
                }
                None
            }
        };
        // A finished future is dropped outside the lock: its drop may use the runtime.
        drop(finished);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Dropping a task may spawn or drop others; repeat until none is left.
        loop {
            let tasks = std::mem::take(&mut self.world.state().tasks);
            if tasks.is_empty() {
                break;
            }
            drop(tasks);
        }
    }
}

/// The [`Runtime`] a [`Sim`] hands out.
struct SimRuntime {
    world: Weak<World>,
}

impl fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimRuntime")
    }
}

impl SimRuntime {
    fn world(&self) -> Arc<World> {
        self.world
            .upgrade()
            .expect("the simulation this runtime belongs to was dropped")
    }
}

impl Runtime for SimRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        let world = self.world();
        let mut state = world.state();
        let id = state.id();
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            ready: world.ready.clone(),
        });
        waker.wake_by_ref();
        state.tasks.insert(
            id,
            Task {
                future: Some(task),
                waker,
            },
        );
    }

    fn now(&self) -> Instant {
        self.world().state().now
    }

    /// The virtual time since the run began, counted from a fixed wall-clock instant.
    fn system_time(&self) -> SystemTime {
        let world = self.world();
        let state = world.state();
        SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_SECS) + (state.now - state.start)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let world = self.world();
        let id = world.state().id();
        Box::pin(SimSleep {
            world: self.world.clone(),
            id,
            deadline,
        })
    }

    fn connect_tcp(
        &self,
        addr: SocketAddr,
        options: TcpOptions,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        let _ = options;
        net::connect(self.world.clone(), addr)
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<BoxIo>> {
        let _ = path;
        Box::pin(async { Err(unix_unsupported()) })
    }

    fn listen_tcp(&self, addr: SocketAddr, options: TcpOptions) -> io::Result<Box<dyn Listener>> {
        let _ = options;
        net::listen(&self.world(), self.world.clone(), addr)
    }

    fn listen_unix(&self, path: PathBuf) -> io::Result<Box<dyn Listener>> {
        let _ = path;
        Err(unix_unsupported())
    }

    fn lookup_host(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let found = self.world().state().net.lookup(&host, port);
        Box::pin(async move { found })
    }

    /// The simulation has one DNS: every server answers from its records.
    fn lookup_host_at(
        &self,
        server: SocketAddr,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let _ = server;
        self.lookup_host(host, port)
    }

    fn lookup_txt(&self, name: String) -> BoxFuture<'static, io::Result<Vec<String>>> {
        let found = self.world().state().net.lookup_txt(&name);
        Box::pin(async move { Ok(found) })
    }

    /// The simulated machine is named `sim`.
    fn hostname(&self) -> String {
        "sim".to_owned()
    }
}

fn unix_unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the simulated network has TCP only",
    )
}

/// A virtual-time timer.
struct SimSleep {
    world: Weak<World>,
    id: u64,
    deadline: Instant,
}

impl fmt::Debug for SimSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Future for SimSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(world) = self.world.upgrade() else {
            return Poll::Pending;
        };
        let mut state = world.state();
        if state.now >= self.deadline {
            state.timers.remove(&self.id);
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        match state.timers.insert(self.id, (self.deadline, waker)) {
            Some((deadline, _)) if deadline == self.deadline => {}
            _ => state.wakeups.push(Reverse((self.deadline, self.id))),
        }
        Poll::Pending
    }
}

impl Sleep for SimSleep {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.deadline = deadline;
        if let Some(world) = self.world.upgrade() {
            let mut state = world.state();
            let registered = state.timers.get_mut(&self.id).map(|t| t.0 = deadline);
            if registered.is_some() {
                state.wakeups.push(Reverse((deadline, self.id)));
            }
        }
    }
}

impl Drop for SimSleep {
    fn drop(&mut self) {
        if let Some(world) = self.world.upgrade() {
            world.state().timers.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests;
