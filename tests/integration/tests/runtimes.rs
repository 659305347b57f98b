//! One client working under smol, tokio and a plain blocking `block_on`.

use std::sync::Arc;

use anygrpc::{rt::AsyncIoRuntime, Channel, Status};
use anygrpc_integration_tests::*;
use futures_util::StreamExt;

async fn exercise(client: TestClient) -> Result<(), Status> {
    let reply = client
        .unary(Payload {
            body: b"ping".to_vec(),
            ..Payload::default()
        })
        .await?;
    assert_eq!(reply.get_ref().body, b"ping");
    let mut stream = client
        .server_stream(Payload {
            count: 10,
            response_size: 100,
            ..Payload::default()
        })
        .await?
        .into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    assert_eq!(n, 10);
    let (tx, rx) = futures_channel::mpsc::unbounded();
    let mut replies = client.bidi(rx).await?.into_inner();
    tx.unbounded_send(Payload::default()).expect("open");
    assert!(replies.next().await.expect("a reply").is_ok());
    Ok(())
}

#[test]
fn client_under_smol() {
    let server = start();
    let target = server.target();
    smol::block_on(async {
        let runtime = AsyncIoRuntime::with_spawner(|task| smol::spawn(task).detach());
        let channel = Channel::builder(&target)
            .runtime(Arc::new(runtime))
            .connect()
            .await
            .unwrap();
        exercise(TestClient::new(channel)).await.unwrap();
    });
}

#[test]
fn client_and_server_under_tokio() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tokio_rt = Arc::new(anygrpc::rt::TokioRuntime::new(runtime.handle().clone()));
    let (server, events) = test_server();
    let bound = server.runtime(tokio_rt.clone()).bind(localhost()).unwrap();
    let target = bound.local_addr().unwrap().to_string();
    runtime.spawn(bound.serve());
    runtime.block_on(async {
        let channel = Channel::builder(&target)
            .runtime(tokio_rt)
            .connect()
            .await
            .unwrap();
        exercise(TestClient::new(channel)).await.unwrap();
    });
    drop(events);
}

#[test]
fn client_under_plain_block_on() {
    let server = start();
    let client = server.client();
    anygrpc::rt::block_on(exercise(client.clone())).unwrap();
    // Any executor's block_on works: the default runtime needs none.
    futures_executor_block_on(exercise(client)).unwrap();
}

/// A minimal block_on with no reactor of its own: parks the thread until woken.
fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
