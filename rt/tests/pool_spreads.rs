//! The default runtime's pool spreads long tasks queued at one worker over the idle ones. In
//! a binary of its own, with two workers whatever the machine, so that the pool is idle but
//! for this test's tasks.

use std::{
    collections::BTreeSet,
    sync::mpsc,
    time::{Duration, Instant},
};

use anygrpc_rt::{AsyncIoRuntime, Runtime};

/// Burns this thread's CPU for `time`, as a handler that computes.
fn compute(time: Duration) {
    let until = Instant::now() + time;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// One task spawns eight that compute for 2 ms each: all start queued at its worker, and once
/// the first of them has run long, the idle worker takes half of the rest.
#[test]
fn long_tasks_queued_at_one_worker_run_on_more_than_one() {
    std::env::set_var("ANYGRPC_WORKER_THREADS", "2");
    const TASKS: usize = 8;
    let runtime = AsyncIoRuntime::new();
    let (done_tx, done_rx) = mpsc::channel();
    let spawner = runtime.clone();
    runtime.spawn(Box::pin(async move {
        for _ in 0..TASKS {
            let done = done_tx.clone();
            spawner.spawn(Box::pin(async move {
                compute(Duration::from_millis(2));
                let name = std::thread::current().name().map(str::to_owned);
                done.send(name).unwrap();
            }));
        }
    }));
    let workers: BTreeSet<Option<String>> = (0..TASKS)
        .map(|_| done_rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    assert_eq!(
        workers,
        BTreeSet::from([
            Some("anygrpc-worker-0".to_owned()),
            Some("anygrpc-worker-1".to_owned())
        ]),
        "the workers that ran the tasks"
    );
}
