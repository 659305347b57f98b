//! Where handlers run: one connection's computing calls are spread over the default runtime's
//! workers, and a handler that blocks in `spawn_blocking` holds up no other call. A binary of
//! its own, with two workers whatever the machine.

use std::{
    collections::BTreeSet,
    sync::{mpsc, Arc, Mutex, Once},
    time::{Duration, Instant},
};

use anygrpc::{rt::block_on, Request, Response, ResponseStream, Status, Streaming};
use anygrpc_integration_tests::{localhost, pb, Payload, TestClient};

fn two_workers() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var("ANYGRPC_WORKER_THREADS", "2"));
}

/// Unary calls whose body says what the handler does: `compute` burns 2 ms of CPU, `block`
/// blocks a thread (in `spawn_blocking`) until the test opens the gate; anything else is
/// echoed. Every reply's body is the name of the thread the handler ran on.
#[derive(Clone)]
struct Work {
    entered: mpsc::Sender<()>,
    gate: Arc<Mutex<mpsc::Receiver<()>>>,
}

fn thread_name() -> Vec<u8> {
    std::thread::current()
        .name()
        .unwrap_or_default()
        .as_bytes()
        .to_vec()
}

impl pb::test_server::Test for Work {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let here = thread_name();
        match request.get_ref().body.as_slice() {
            b"compute" => {
                let until = Instant::now() + Duration::from_millis(2);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            b"block" => {
                self.entered.send(()).unwrap();
                let gate = self.gate.clone();
                anygrpc::rt::spawn_blocking(move || gate.lock().unwrap().recv().unwrap()).await;
            }
            _ => {}
        }
        Ok(Response::new(Payload {
            body: here,
            ..Payload::default()
        }))
    }

    async fn server_stream(
        &self,
        _: Request<Payload>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn client_stream(
        &self,
        _: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn bidi(
        &self,
        _: Request<Streaming<Payload>>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// A server of [`Work`] on its own thread, a client of one channel (one connection), the
/// receiver of `block` handlers' entries and the sender that opens their gate.
fn serve() -> (TestClient, mpsc::Receiver<()>, mpsc::Sender<()>) {
    two_workers();
    let (entered, entries) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    let work = Work {
        entered,
        gate: Arc::new(Mutex::new(gate)),
    };
    let server = anygrpc::Server::builder()
        .add_service(pb::test_server::TestServer::new(work))
        .bind(localhost())
        .unwrap();
    let target = server.local_addr().unwrap().to_string();
    std::thread::spawn(move || block_on(server.serve()));
    let channel = anygrpc::Channel::builder(&target).connect_lazy().unwrap();
    (TestClient::new(channel), entries, open)
}

fn call(body: &[u8]) -> Payload {
    Payload {
        body: body.to_vec(),
        ..Payload::default()
    }
}

#[test]
fn one_connections_computing_calls_run_on_every_worker() {
    let (client, _, _) = serve();
    let threads: BTreeSet<String> = block_on(async {
        let calls = (0..32).map(|_| {
            let client = client.clone();
            async move { client.unary(call(b"compute")).await.unwrap() }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|reply| String::from_utf8(reply.into_inner().body).unwrap())
            .collect()
    });
    let expected = BTreeSet::from(["anygrpc-worker-0".into(), "anygrpc-worker-1".into()]);
    assert_eq!(threads, expected, "the threads the handlers ran on");
}

#[test]
fn a_handler_blocking_in_spawn_blocking_holds_up_no_other_call_of_its_connection() {
    let (client, entries, open) = serve();
    let blocked_client = client.clone();
    let blocked = std::thread::spawn(move || block_on(blocked_client.unary(call(b"block"))));
    entries.recv_timeout(Duration::from_secs(60)).unwrap();
    block_on(async {
        let client = client.clone();
        for _ in 0..100 {
            client.unary(call(b"echo")).await.unwrap();
        }
    });
    assert!(!blocked.is_finished(), "the blocked call is still waiting");
    open.send(()).unwrap();
    let reply = blocked.join().unwrap().unwrap();
    assert!(reply.get_ref().body.starts_with(b"anygrpc-worker-"));
}
