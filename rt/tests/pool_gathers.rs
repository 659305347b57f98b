//! The default runtime's pool moves tasks that wake each other onto one worker. In a binary
//! of its own, so that no other test keeps the workers busy (a busy worker takes no tasks in).

use std::{sync::mpsc, time::Duration};

use anygrpc_rt::{AsyncIoRuntime, Runtime};
use futures_channel::{mpsc as async_mpsc, oneshot};
use futures_util::StreamExt;

fn worker_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// Two tasks spawned from outside the pool (dealt to different workers) hand a token back and
/// forth; by the end both run on one thread.
#[test]
fn tasks_that_wake_each_other_gather_on_one_worker() {
    const ROUNDS: usize = 1000;
    let runtime = AsyncIoRuntime::new();
    let (to_echo, mut requests) = async_mpsc::unbounded::<oneshot::Sender<String>>();
    runtime.spawn(Box::pin(async move {
        while let Some(reply) = requests.next().await {
            reply.send(worker_name()).unwrap();
        }
    }));
    let (done_tx, done_rx) = mpsc::channel();
    runtime.spawn(Box::pin(async move {
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let (tx, rx) = oneshot::channel();
            to_echo.unbounded_send(tx).unwrap();
            let echo = rx.await.unwrap();
            rounds.push((worker_name(), echo));
        }
        done_tx.send(rounds).unwrap();
    }));
    let rounds = done_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(rounds[0].0.starts_with("anygrpc-worker-"), "{rounds:?}");
    let last = &rounds[ROUNDS - 10..];
    assert!(
        last.iter().all(|(a, b)| a == b),
        "the last rounds: {last:?}"
    );
}
