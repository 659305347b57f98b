//! The anygrpc side of the benchmark: the `bench.v1.Bench` service and a closed-loop load
//! generator. `bench-server` and `bench-client` are thin wrappers; tonic's twins are in
//! `tonic/` and share [`common`].

pub mod common;
pub mod raw;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use anygrpc::{rt::Runtime, Request, Response, ResponseStream, Status, Streaming};
use futures_util::stream;

/// Generated code for `bench.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/bench.v1.rs"));
}

use common::{Report, CALLS};
use pb::{bench_client::BenchClient, Payload, StreamRequest};

/// The server's builder with the benchmark service (and `--middleware N` pass-through
/// middleware), and the address from `--addr HOST:PORT` (default 127.0.0.1:50051).
pub fn server_from_args(
) -> Result<(anygrpc::Server, std::net::SocketAddr), std::net::AddrParseError> {
    let args: Vec<String> = std::env::args().collect();
    let addr = common::flag(&args, "addr")
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    common::read_server_work(&args);
    let mut builder =
        anygrpc::Server::builder().add_service(pb::bench_server::BenchServer::new(BenchService));
    for _ in 0..common::number(&args, "middleware", 0) {
        builder = builder.middleware(PassThrough);
    }
    // `--slow-first-poll-us`: the instruction count's run under callgrind scales it to
    // valgrind's slowdown (see `instructions.py`).
    if let Some(us) = common::flag(&args, "slow-first-poll-us") {
        let us = us
            .parse()
            .unwrap_or_else(|_| panic!("--slow-first-poll-us: not a number: {us}"));
        builder = builder.slow_first_poll(std::time::Duration::from_micros(us));
    }
    Ok((builder, addr))
}

/// A middleware that calls through and changes nothing: what `--middleware N` installs N
/// times, to measure what the chain itself costs.
#[derive(Debug, Clone, Copy)]
pub struct PassThrough;

impl anygrpc::middleware::Middleware for PassThrough {
    fn call<'a>(
        &'a self,
        call: anygrpc::middleware::Call,
        next: anygrpc::middleware::Next<'a>,
    ) -> anygrpc::rt::BoxFuture<'a, anygrpc::middleware::Reply> {
        next.run(call)
    }
}

/// The benchmark service.
#[derive(Debug, Default, Clone, Copy)]
pub struct BenchService;

impl pb::bench_server::Bench for BenchService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        common::handler_work();
        Ok(Response::new(request.into_inner()))
    }

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let StreamRequest { count, size } = request.into_inner();
        let body = bytes::Bytes::from(vec![0u8; size as usize]);
        let messages = stream::iter((0..count).map(move |_| {
            Ok(Payload {
                body: body.to_vec(),
            })
        }));
        Ok(Response::new(Box::pin(messages)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let mut messages = request.into_inner();
        let mut total = 0u64;
        while let Some(message) = messages.message().await? {
            total += message.body.len() as u64;
        }
        Ok(Response::new(Payload {
            body: total.to_be_bytes().to_vec(),
        }))
    }

    async fn bidi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}

/// One bidi call, as ping-pong. Its requests go through a request channel, which the call
/// attaches: each `send` puts the message on the call's stream itself.
pub struct Bidi {
    requests: anygrpc::client::RequestSender<Payload>,
    replies: Streaming<Payload>,
}

impl common::BidiRoundTrip for Bidi {
    async fn round_trip(&mut self, body: Vec<u8>) -> Option<usize> {
        self.requests.send(Payload { body }).await.ok()?;
        Some(self.replies.message().await.ok()??.body.len())
    }
}

impl common::BenchCalls for BenchClient {
    type Bidi = Bidi;

    async fn unary(&mut self, body: Vec<u8>) -> Result<usize, String> {
        let reply = BenchClient::unary(self, Payload { body }).await;
        reply
            .map(|r| r.into_inner().body.len())
            .map_err(|s| s.to_string())
    }

    async fn server_stream(&mut self, count: u32, size: u32) -> Result<(u64, usize), String> {
        let request = StreamRequest { count, size };
        let received = async {
            let mut stream = BenchClient::server_stream(self, request)
                .await?
                .into_inner();
            let (mut n, mut bytes) = (0, 0);
            while let Some(m) = stream.message().await? {
                n += 1;
                bytes += m.body.len();
            }
            Ok::<_, Status>((n, bytes))
        };
        received.await.map_err(|s| s.to_string())
    }

    async fn client_stream(&mut self, body: Vec<u8>, count: u32) -> Result<usize, String> {
        let messages = (0..count).map(move |_| Payload { body: body.clone() });
        let reply = BenchClient::client_stream(self, stream::iter(messages)).await;
        reply
            .map(|r| r.into_inner().body.len())
            .map_err(|s| s.to_string())
    }

    async fn bidi(&mut self) -> Result<Bidi, String> {
        let (requests, rx) = anygrpc::client::request_channel(1);
        let replies = BenchClient::bidi_stream(self, rx)
            .await
            .map_err(|s| s.to_string())?;
        Ok(Bidi {
            requests,
            replies: replies.into_inner(),
        })
    }
}

/// Where the load generator's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Each worker is a task on the runtime's worker threads (as tonic's load generator spawns
    /// each worker on tokio's multi-threaded runtime). The default runtime deals them to its
    /// workers in turn.
    Spawned,
    /// All workers are one future on the calling thread, under `block_on`: a blocking program's
    /// way. Every call then crosses between that thread and the connection's worker twice.
    CallerThread,
}

/// A load generator's flags: the arguments, the load they describe, and where workers run.
fn load_flags() -> (Vec<String>, common::Load, Drive) {
    let args: Vec<String> = std::env::args().collect();
    let load = common::Load::from_args(&args, "127.0.0.1:50051");
    let drive = if args.iter().any(|a| a == "--caller-thread") {
        Drive::CallerThread
    } else {
        Drive::Spawned
    };
    (args, load, drive)
}

/// The load generator's `main`: reads its flags, runs the closed loop with channels (and
/// spawned workers) on `runtime`, and prints one JSON line.
///
/// `--addr HOST:PORT --mode unary|server-stream|client-stream|bidi --concurrency C
/// --duration-secs D --size S [--connections N] [--caller-thread] [--middleware N]`
pub fn client_main(runtime: Arc<dyn Runtime>, name: &str) {
    let (args, load, drive) = load_flags();
    let middleware = common::number(&args, "middleware", 0);
    let channels = (0..load.connections)
        .map(|_| {
            let builder = anygrpc::Channel::builder(&load.addr)
                .runtime(runtime.clone())
                .max_recv_message_size(common::MAX_MESSAGE);
            (0..middleware)
                .fold(builder, |b, _| b.middleware(PassThrough))
                .connect_lazy()
                .map(BenchClient::new)
        })
        .collect::<Result<Vec<_>, _>>();
    let clients = match channels {
        Ok(clients) => clients,
        Err(e) => {
            eprintln!("bad --addr {}: {e}", load.addr);
            std::process::exit(2);
        }
    };
    report(name, &args, &clients, &load, &*runtime, drive);
}

/// `h2-bench-client`'s `main`: the same closed loop over [`raw::RawClient`]s on the default
/// runtime. Takes `client_main`'s flags.
pub fn raw_client_main(runtime: Arc<dyn Runtime>) {
    let (args, load, drive) = load_flags();
    let connected = anygrpc::rt::block_on(async {
        let mut clients = Vec::new();
        for _ in 0..load.connections {
            clients.push(raw::RawClient::connect(&*runtime, &load.addr).await?);
        }
        Ok::<_, String>(clients)
    });
    let clients = match connected {
        Ok(clients) => clients,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    report("h2", &args, &clients, &load, &*runtime, drive);
}

/// Runs the closed loop `load` describes over `clients` (one connection each), the workers as
/// `drive` says (spawned ones on `runtime`), and prints the JSON line of implementation `name`
/// with the allocations made meanwhile.
fn report<C>(
    name: &str,
    args: &[String],
    clients: &[C],
    load: &common::Load,
    runtime: &dyn Runtime,
    drive: Drive,
) where
    C: common::BenchCalls + Clone + Send + 'static,
    C::Bidi: Send,
{
    let before = common::allocations();
    let (report, elapsed) = anygrpc::rt::block_on(async {
        // Connect every channel before the clock starts.
        for client in clients {
            let _ = common::BenchCalls::unary(&mut client.clone(), Vec::new()).await;
        }
        let start = Instant::now();
        let until = start + load.duration;
        let workers = (0..load.concurrency).map(|i| {
            let (client, load) = (clients[i % clients.len()].clone(), load.clone());
            async move { common::worker(client, &load, until).await }
        });
        let reports = match drive {
            Drive::CallerThread => futures_util::future::join_all(workers).await,
            Drive::Spawned => {
                let done = workers.map(|worker| {
                    let (tx, rx) = futures_channel::oneshot::channel();
                    runtime.spawn(Box::pin(async move {
                        let _ = tx.send(worker.await);
                    }));
                    rx
                });
                let done = futures_util::future::join_all(done.collect::<Vec<_>>()).await;
                done.into_iter()
                    .map(|r| r.expect("a worker panicked"))
                    .collect()
            }
        };
        let mut total = Report::default();
        for r in reports {
            total.merge(r);
        }
        (total, start.elapsed())
    });
    let allocations = common::allocations() - before;
    println!("{}", report.json(name, args, elapsed, allocations));
}
