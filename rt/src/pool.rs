//! The default runtime's worker threads: each task has a home worker, a task woken by a
//! task on another worker while its home sleeps moves to the waker, and an idle worker takes
//! queued tasks from a worker that is busy with long ones.
//!
//! Tasks that wake one another should share a thread. A connection's task and the tasks of
//! its calls wake each other on every message, and h2 keeps one lock per connection: on one
//! thread a wake is a queue push and the lock is never contended, while across threads every
//! wake of a sleeping worker costs a futex or the reactor's eventfd and a wait for the kernel
//! to schedule that thread (with few streams in flight, the other worker is asleep most of
//! the time, and that wait was most of each round trip). So the pool follows the wakes:
//! - a task spawned by a task starts on that task's worker; one spawned from any other thread
//!   (an accept loop or a client in `block_on`) is dealt to the workers in turn;
//! - a task woken by a task running on another worker moves to that worker if its own worker
//!   is parked and the waker's is not busy (fewer than [`BUSY`] tasks queued); otherwise it is
//!   queued at home, which is woken if it sleeps;
//! - a task woken by the reactor (socket readiness, a timer) or from outside the pool goes
//!   home: where the reactor happens to run says nothing about which tasks belong together.
//!
//! Locality pays only while the tasks are short. A handler that computes for 50 µs keeps its
//! worker for 50 µs, and the calls queued behind it wait while another core idles; moving a
//! task costs a wake and some cache misses, a few microseconds. So a worker is *loaded* when
//! the task it ran last, or the one it runs now, took at least [`LONG_TASK`] (connections'
//! tasks are not timed: see `run_queue`), and work queued at a loaded worker is shared:
//! - a loaded worker that finishes a task with more queued, or a task queued at a worker whose
//!   current task has run for [`LONG_TASK`], wakes one parked worker to steal (one at a time:
//!   a thief that finds long work wakes the next, so the work spreads over as many workers as
//!   it needs);
//! - a worker about to park takes half the queued tasks of a loaded worker (the older half),
//!   and a connection's task too if that worker is stuck in a long task: its IO should not
//!   wait behind a computation.
//!
//! A stolen task's home is its thief. Tasks that wake one another while all of them are short
//! never trigger a steal, so an echo load keeps its locality (measured in
//! `tests/bench/README.md`). A task that blocks its thread still delays the tasks queued
//! behind it until a steal moves them: blocking work belongs on `spawn_blocking`.
//!
//! A worker runs its tasks in the order they were woken, except a connection's task (spawned
//! with [`Kind::Connection`]: the task that reads and writes a socket for many calls). Calls
//! hand it their frames and wake it; in plain order it would run only after every task queued
//! before its wake, writing all their frames at once while the peer waited with nothing to
//! do. So it runs after at most [`CONNECTION_DELAY`] further tasks: its writes still carry
//! several calls' frames each, and the peer gets them while this worker runs the rest
//! (measured in `tests/bench/README.md`).
//!
//! Each worker is an `async_io::block_on` loop, so a parked worker drives async-io's reactor
//! when no other thread does.

use std::{
    cell::Cell,
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard, OnceLock, PoisonError,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use crate::BoxFuture;

/// A task, with what the pool knows of it.
type Runnable = async_task::Runnable<Meta>;

struct Meta {
    /// The index of the task's home worker.
    home: AtomicUsize,
    kind: Kind,
}

/// What a task does, for the order its worker runs it in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// Any task: run in the order woken.
    Task,
    /// A connection's task, which does the socket IO of many calls: run soon after its wake.
    Connection,
}

/// Tasks a worker runs before it lets `block_on` poll the reactor.
const TICKS_PER_YIELD: u32 = 200;

/// A worker with this many tasks queued is busy: tasks its tasks wake stay at their homes.
const BUSY: usize = 4;

/// A woken connection's task runs after at most this many other tasks.
const CONNECTION_DELAY: usize = 16;

/// A task that runs this long is work worth moving a queue for: it is several times what a
/// steal costs (a wake of a parked thread and the cache misses of a task on a new core), and
/// many times the few microseconds a task of an echo load runs.
const LONG_TASK: Duration = Duration::from_micros(20);

/// The process-wide pool.
pub(crate) struct Pool {
    workers: Box<[Worker]>,
    /// Where the next task spawned from outside the pool starts.
    next: AtomicUsize,
    /// The pool's clock: the instants workers record are nanoseconds since this one.
    epoch: Instant,
    /// Set while a worker woken to steal has not yet looked: no second one is woken meanwhile.
    thief_called: AtomicBool,
}

// Aligned to two cache lines (the spatial prefetcher pulls pairs), so that one worker's writes
// of its own state do not evict its neighbour's.
#[repr(align(128))]
struct Worker {
    queue: Mutex<Queue<Runnable>>,
    /// Set when the worker parks, its waker stored in `waker`; cleared by whoever wakes it.
    parked: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// When the running task started (nanoseconds since the pool's epoch), 0 between tasks.
    running_since: AtomicU64,
    /// The last task this worker ran took at least [`LONG_TASK`].
    ran_long: AtomicBool,
}

impl Worker {
    fn new() -> Worker {
        Worker {
            queue: Mutex::new(Queue::new()),
            parked: AtomicBool::new(false),
            waker: Mutex::new(None),
            running_since: AtomicU64::new(0),
            ran_long: AtomicBool::new(false),
        }
    }

    /// Whether the task this worker runs at `now` started at least [`LONG_TASK`] before.
    fn stuck(&self, now: u64) -> bool {
        let since = self.running_since.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) >= LONG_TASK.as_nanos() as u64
    }

    /// [`stuck`](Self::stuck), reading the clock only if a timed task is running.
    fn stuck_now(&self, pool: &Pool) -> bool {
        self.running_since.load(Ordering::Relaxed) != 0 && self.stuck(pool.now())
    }

    /// Wakes this worker if it is parked; whether it was.
    fn unpark(&self) -> bool {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            if let Some(waker) = lock(&self.waker).take() {
                waker.wake();
            }
            return true;
        }
        false
    }
}

thread_local! {
    /// The worker whose task is running on this thread, while one is.
    static RUNNING: Cell<Option<usize>> = const { Cell::new(None) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A task's panic is caught by `async_task`, so none unwinds through a held lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker's queue: tasks in the order woken, and connections' tasks in a lane of their own.
struct Queue<T> {
    tasks: VecDeque<T>,
    connections: VecDeque<T>,
    /// Tasks run since the first queued connection's wake, or since a connection last ran.
    since_connection: usize,
}

impl<T> Queue<T> {
    fn new() -> Queue<T> {
        Queue {
            tasks: VecDeque::new(),
            connections: VecDeque::new(),
            since_connection: 0,
        }
    }

    fn len(&self) -> usize {
        self.tasks.len() + self.connections.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.connections.is_empty()
    }

    fn push(&mut self, task: T, kind: Kind) {
        match kind {
            Kind::Task => self.tasks.push_back(task),
            Kind::Connection => {
                if self.connections.is_empty() {
                    self.since_connection = 0;
                }
                self.connections.push_back(task);
            }
        }
    }

    /// Takes the older half of the queued tasks (rounded up), and one connection's task if
    /// `with_connection` or no task is queued.
    fn steal_half(&mut self, with_connection: bool) -> Vec<T> {
        let half = self.tasks.len().div_ceil(2);
        let mut stolen: Vec<T> = self.tasks.drain(..half).collect();
        if with_connection || stolen.is_empty() {
            stolen.extend(self.connections.pop_front());
        }
        stolen
    }

    /// The next task to run: a connection once [`CONNECTION_DELAY`] tasks ran since its wake
    /// (or nothing else is queued), the oldest task otherwise.
    fn pop(&mut self) -> Option<T> {
        if !self.connections.is_empty()
            && (self.since_connection >= CONNECTION_DELAY || self.tasks.is_empty())
        {
            self.since_connection = 0;
            return self.connections.pop_front();
        }
        let task = self.tasks.pop_front()?;
        self.since_connection += 1;
        Some(task)
    }
}

/// Where a task woken on worker `waker` (`None`: by the reactor or another thread) runs.
fn destination(home: usize, waker: Option<usize>, home_parked: bool, waker_queued: usize) -> usize {
    match waker {
        Some(waker) if waker != home && home_parked && waker_queued < BUSY => waker,
        _ => home,
    }
}

impl Pool {
    /// The pool, started on first use: `ANYGRPC_WORKER_THREADS` workers, or one per CPU.
    pub(crate) fn get() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::env::var("ANYGRPC_WORKER_THREADS")
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                workers: (0..threads).map(|_| Worker::new()).collect(),
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
                thief_called: AtomicBool::new(false),
            }));
            for index in 0..threads {
                std::thread::Builder::new()
                    .name(format!("anygrpc-worker-{index}"))
                    .spawn(move || async_io::block_on(Run { pool, index }))
                    .expect("failed to start an anygrpc worker thread");
            }
            pool
        })
    }

    /// The worker a task spawned now starts on: its spawner's, when a pool task spawns it (the
    /// two likely talk to each other), else the next in turn. An idle worker may take it later.
    fn home_for_spawn(&self) -> usize {
        RUNNING
            .with(Cell::get)
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len())
    }

    /// Runs `future` to completion on the pool. A panic in it is printed by the panic hook and
    /// ends only this task.
    pub(crate) fn spawn(&'static self, future: BoxFuture<'static, ()>, kind: Kind) {
        let home = self.home_for_spawn();
        let (runnable, task) = async_task::Builder::new()
            .metadata(Meta {
                home: AtomicUsize::new(home),
                kind,
            })
            .propagate_panic(true)
            .spawn(|_| future, move |runnable| self.schedule(runnable));
        task.detach();
        runnable.schedule();
    }

    fn schedule(&self, runnable: Runnable) {
        let meta = runnable.metadata();
        let (home, kind) = (meta.home.load(Ordering::Relaxed), meta.kind);
        let waking_worker = RUNNING.with(Cell::get).filter(|&here| here != home);
        let home_parked =
            waking_worker.is_some() && self.workers[home].parked.load(Ordering::SeqCst);
        // The waking worker's queue is looked at only when the task's home sleeps.
        let waker_queued = match waking_worker {
            Some(here) if home_parked => lock(&self.workers[here].queue).len(),
            _ => 0,
        };
        let to = destination(home, waking_worker, home_parked, waker_queued);
        // Only the scheduler reads or writes a task's home, and a task is scheduled by one
        // thread at a time.
        meta.home.store(to, Ordering::Relaxed);
        let worker = &self.workers[to];
        lock(&worker.queue).push(runnable, kind);
        // Orders the push before the read of `parked`, against a parking worker's store of
        // `parked` before its last look at its queue (in `Run::run_queue`).
        fence(Ordering::SeqCst);
        if !worker.unpark() && worker.stuck_now(self) {
            self.call_thief();
        }
    }

    /// Nanoseconds since the pool's epoch (never 0, which means "not running").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 | 1
    }

    /// Wakes one parked worker to steal, unless one woken for that has not looked yet.
    fn call_thief(&self) {
        if self.thief_called.swap(true, Ordering::SeqCst) {
            return;
        }
        if !self.workers.iter().any(Worker::unpark) {
            self.thief_called.store(false, Ordering::SeqCst);
        }
    }

    /// Moves half the queue of a loaded worker (the first found after `thief`) to `thief`'s
    /// queue; whether any task moved.
    fn steal(&self, thief: usize) -> bool {
        self.thief_called.store(false, Ordering::SeqCst);
        let count = self.workers.len();
        for victim in (1..count).map(|i| (thief + i) % count) {
            let worker = &self.workers[victim];
            let stuck = worker.stuck_now(self);
            if !(stuck || worker.ran_long.load(Ordering::Relaxed)) {
                continue;
            }
            let stolen = lock(&worker.queue).steal_half(stuck);
            if stolen.is_empty() {
                continue;
            }
            let mut queue = lock(&self.workers[thief].queue);
            for runnable in stolen {
                let kind = runnable.metadata().kind;
                runnable.metadata().home.store(thief, Ordering::Relaxed);
                queue.push(runnable, kind);
            }
            return true;
        }
        false
    }
}

/// A worker's loop, as the future its thread's `block_on` polls.
struct Run {
    pool: &'static Pool,
    index: usize,
}

impl Future for Run {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let index = self.index;
        let me = &self.pool.workers[index];
        // Set while this loop runs tasks, not around each one: nothing else runs on this
        // thread until the loop returns to `block_on`, where wakes come from the reactor.
        RUNNING.with(|running| running.set(Some(index)));
        let poll = self.run_queue(me, cx);
        RUNNING.with(|running| running.set(None));
        poll
    }
}

impl Run {
    /// Runs queued tasks until the queue is empty (parking the worker) or [`TICKS_PER_YIELD`]
    /// have run.
    fn run_queue(&self, me: &Worker, cx: &mut Context<'_>) -> Poll<()> {
        let pool = self.pool;
        let mut ran = 0;
        loop {
            let next = lock(&me.queue).pop();
            if let Some(runnable) = next {
                // A connection's task is not timed: its polls do the IO of many calls, and
                // one that runs long says nothing of the tasks queued behind it (a handler's
                // work done on it is the connection's to hand off; see the server's
                // `inline.rs`).
                if let Kind::Connection = runnable.metadata().kind {
                    runnable.run();
                } else {
                    let start = pool.now();
                    me.running_since.store(start, Ordering::Relaxed);
                    runnable.run();
                    me.running_since.store(0, Ordering::Relaxed);
                    let long = pool.now().saturating_sub(start) >= LONG_TASK.as_nanos() as u64;
                    me.ran_long.store(long, Ordering::Relaxed);
                    if long && !lock(&me.queue).is_empty() {
                        pool.call_thief();
                    }
                }
                ran += 1;
                if ran == TICKS_PER_YIELD {
                    // Let `block_on` process the reactor's events, then come back.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }
            if pool.steal(self.index) {
                continue;
            }
            *lock(&me.waker) = Some(cx.waker().clone());
            me.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // A task queued after the pop above, by a thread that saw this worker awake and
            // did not wake it: look once more.
            if !lock(&me.queue).is_empty() {
                me.parked.store(false, Ordering::SeqCst);
                continue;
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use futures_channel::oneshot;

    use super::*;

    #[test]
    fn moves_to_the_waker_only_when_home_sleeps_and_the_waker_is_not_busy() {
        assert_eq!(destination(0, Some(1), true, 0), 1);
        assert_eq!(destination(0, Some(1), true, BUSY - 1), 1);
        assert_eq!(destination(0, Some(1), true, BUSY), 0, "a busy waker");
        assert_eq!(destination(0, Some(1), false, 0), 0, "home is awake");
        assert_eq!(destination(0, None, true, 0), 0, "woken by the reactor");
        assert_eq!(destination(1, Some(1), true, 0), 1);
    }

    /// The order a queue runs the tasks in `woken`, pushed in turn.
    fn run_order(woken: &[(char, Kind)]) -> String {
        let mut queue = Queue::new();
        for &(name, kind) in woken {
            queue.push(name, kind);
        }
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn a_connection_runs_after_at_most_connection_delay_tasks() {
        let mut woken: Vec<(char, Kind)> = ('a'..='z').map(|c| (c, Kind::Task)).collect();
        woken.insert(3, ('C', Kind::Connection));
        woken.insert(5, ('D', Kind::Connection));
        let order = run_order(&woken);
        assert_eq!(CONNECTION_DELAY, 16);
        // C runs once 16 tasks ran since its wake; D waits 16 more, or until no task is left.
        assert_eq!(order, "abcdefghijklmnopCqrstuvwxyzD");
        assert_eq!(
            run_order(&[('C', Kind::Connection), ('a', Kind::Task)]),
            "aC"
        );
        assert_eq!(run_order(&[('C', Kind::Connection)]), "C");
    }

    #[test]
    fn the_delay_counts_from_the_connections_wake() {
        let mut queue = Queue::new();
        for c in 'a'..='z' {
            queue.push(c, Kind::Task);
        }
        for expected in 'a'..='t' {
            assert_eq!(queue.pop(), Some(expected));
        }
        // Twenty tasks ran before the connection was woken: it still waits behind
        // CONNECTION_DELAY of those queued, or all of them if fewer.
        queue.push('C', Kind::Connection);
        let rest: String = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest, "uvwxyzC");
        queue.push('C', Kind::Connection);
        for c in 'a'..='z' {
            queue.push(c, Kind::Task);
        }
        let order: String = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, "abcdefghijklmnopCqrstuvwxyz");
    }

    #[test]
    fn a_thief_takes_the_older_half_and_a_connection_only_from_a_stuck_worker() {
        let mut queue = Queue::new();
        for c in "abcde".chars() {
            queue.push(c, Kind::Task);
        }
        queue.push('C', Kind::Connection);
        assert_eq!(queue.steal_half(false), vec!['a', 'b', 'c']);
        assert_eq!(queue.steal_half(true), vec!['d', 'C']);
        assert_eq!(std::iter::from_fn(|| queue.pop()).collect::<String>(), "e");
        // With no task queued, a connection is all there is to take.
        queue.push('D', Kind::Connection);
        assert_eq!(queue.steal_half(false), vec!['D']);
        assert!(queue.steal_half(true).is_empty());
    }

    #[test]
    fn a_worker_is_stuck_once_its_task_has_run_long() {
        let worker = Worker::new();
        let long = LONG_TASK.as_nanos() as u64;
        assert!(!worker.stuck(10 * long), "running nothing");
        worker.running_since.store(1_000, Ordering::Relaxed);
        assert!(!worker.stuck(1_000 + long - 1));
        assert!(worker.stuck(1_000 + long));
    }

    #[test]
    fn runs_every_task_spawned_from_outside() {
        let pool = Pool::get();
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            let tx = tx.clone();
            pool.spawn(Box::pin(async move { tx.send(i).unwrap() }), Kind::Task);
        }
        let mut seen: Vec<i32> = (0..1000)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_task_spawned_by_a_task_starts_on_its_worker() {
        // Where the child first runs is not asserted: with other tests' tasks on the shared
        // pool, an idle worker may steal it (see the test of thieves above). Its home is what a
        // spawn decides.
        let pool = Pool::get();
        let (tx, rx) = mpsc::channel();
        pool.spawn(
            Box::pin(async move {
                let here = RUNNING.with(Cell::get);
                tx.send((here, Pool::get().home_for_spawn())).unwrap();
            }),
            Kind::Task,
        );
        let (here, home) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(here.is_some(), "the parent runs on a worker");
        assert_eq!(here, Some(home));
    }

    #[test]
    fn a_panicking_task_ends_alone() {
        let pool = Pool::get();
        for _ in 0..pool.workers.len() * 2 {
            pool.spawn(Box::pin(async { panic!("a task's panic") }), Kind::Task);
        }
        let (tx, rx) = mpsc::channel();
        for _ in 0..pool.workers.len() * 2 {
            let tx = tx.clone();
            pool.spawn(Box::pin(async move { tx.send(()).unwrap() }), Kind::Task);
        }
        for _ in 0..pool.workers.len() * 2 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }

    /// A token handed back and forth between pool tasks and between pool tasks and threads
    /// outside the pool, so that wakes land on workers that are running, parking and parked:
    /// a lost wake leaves a pair stuck and the test fails. The echoing tasks are connections,
    /// so both of a queue's lanes are woken.
    #[test]
    fn no_wake_is_lost() {
        const PAIRS: usize = 4;
        const ROUNDS: usize = 20_000;
        let pool = Pool::get();
        let (done_tx, done_rx) = mpsc::channel();
        let echo = |mut requests: futures_channel::mpsc::UnboundedReceiver<oneshot::Sender<()>>| {
            pool.spawn(
                Box::pin(async move {
                    use futures_util::StreamExt;
                    while let Some(reply) = requests.next().await {
                        reply.send(()).unwrap();
                    }
                }),
                Kind::Connection,
            );
        };
        let ask = |to: futures_channel::mpsc::UnboundedSender<oneshot::Sender<()>>| async move {
            for _ in 0..ROUNDS {
                let (tx, rx) = oneshot::channel();
                to.unbounded_send(tx).unwrap();
                rx.await.unwrap();
            }
        };
        for _ in 0..PAIRS {
            let (to_task, requests) = futures_channel::mpsc::unbounded();
            echo(requests);
            let done = done_tx.clone();
            pool.spawn(
                Box::pin(async move {
                    ask(to_task).await;
                    done.send(()).unwrap();
                }),
                Kind::Task,
            );
            let (to_task, requests) = futures_channel::mpsc::unbounded();
            echo(requests);
            let done = done_tx.clone();
            std::thread::spawn(move || {
                async_io::block_on(ask(to_task));
                done.send(()).unwrap();
            });
        }
        for _ in 0..PAIRS * 2 {
            done_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        }
    }
}
