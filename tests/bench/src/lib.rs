//! The anygrpc side of the benchmark: the `bench.v1.Bench` service and a closed-loop load
//! generator. `bench-server` and `bench-client` are thin wrappers; tonic's twins are in
//! `tonic/` and share [`common`].

pub mod common;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anygrpc::{Request, Response, ResponseStream, Status, Streaming};
use futures_util::stream;

/// Generated code for `bench.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/bench.v1.rs"));
}

use common::{Report, CALLS};
use pb::{bench_client::BenchClient, Payload, StreamRequest};

/// The benchmark service.
#[derive(Debug, Default, Clone, Copy)]
pub struct BenchService;

impl pb::bench_server::Bench for BenchService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
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

/// Messages per server-stream and client-stream call.
pub const STREAM_MESSAGES: u32 = 100;

/// One worker's closed loop: calls back to back until `until`.
async fn worker(client: BenchClient, mode: &str, size: usize, until: Instant) -> Report {
    let mut report = Report::default();
    let body = vec![0u8; size];
    match mode {
        "bidi" => {
            // Ping-pong: one message in flight per worker, so an unbounded queue never grows.
            let (tx, rx) = futures_channel::mpsc::unbounded();
            let mut replies = match client.bidi_stream(rx).await {
                Ok(r) => r.into_inner(),
                Err(_) => {
                    report.errors += 1;
                    return report;
                }
            };
            while Instant::now() < until {
                let start = Instant::now();
                if tx.unbounded_send(Payload { body: body.clone() }).is_err() {
                    report.errors += 1;
                    break;
                }
                match replies.message().await {
                    Ok(Some(reply)) => report.record(start, 1, reply.body.len()),
                    _ => {
                        report.errors += 1;
                        break;
                    }
                }
            }
        }
        _ => {
            while Instant::now() < until {
                let start = Instant::now();
                let outcome = match mode {
                    "unary" => client
                        .unary(Payload { body: body.clone() })
                        .await
                        .map(|r| (1, r.into_inner().body.len())),
                    "server-stream" => {
                        async {
                            let request = StreamRequest {
                                count: STREAM_MESSAGES,
                                size: size as u32,
                            };
                            let mut stream = client.server_stream(request).await?.into_inner();
                            let (mut n, mut bytes) = (0, 0);
                            while let Some(m) = stream.message().await? {
                                n += 1;
                                bytes += m.body.len();
                            }
                            Ok((n, bytes))
                        }
                        .await
                    }
                    "client-stream" => {
                        let body = body.clone();
                        let messages =
                            (0..STREAM_MESSAGES).map(move |_| Payload { body: body.clone() });
                        client
                            .client_stream(stream::iter(messages))
                            .await
                            .map(|r| (1, r.into_inner().body.len()))
                    }
                    other => panic!("unknown mode {other}; modes: {:?}", common::MODES),
                };
                match outcome {
                    Ok((messages, bytes)) => report.record(start, messages as u64, bytes),
                    Err(status) => {
                        if report.errors == 0 && std::env::var_os("BENCH_VERBOSE").is_some() {
                            eprintln!("first error: {status}");
                        }
                        report.errors += 1
                    }
                }
            }
        }
    }
    report
}

/// Runs the closed loop: `concurrency` workers over `connections` channels for `duration`.
pub fn load(
    target: &str,
    mode: &str,
    concurrency: usize,
    connections: usize,
    size: usize,
    duration: Duration,
) -> (Report, Duration) {
    let clients: Vec<BenchClient> = (0..connections.max(1))
        .map(|_| {
            let channel = anygrpc::Channel::builder(target)
                .connect_lazy()
                .expect("valid target");
            BenchClient::new(channel)
        })
        .collect();
    anygrpc::rt::block_on(async {
        // Connect every channel before the clock starts.
        for client in &clients {
            let _ = client.unary(Payload::default()).await;
        }
        let start = Instant::now();
        let until = start + duration;
        let workers = (0..concurrency.max(1))
            .map(|i| worker(clients[i % clients.len()].clone(), mode, size, until));
        let reports = futures_util::future::join_all(workers).await;
        let mut total = Report::default();
        for r in reports {
            total.merge(r);
        }
        (total, start.elapsed())
    })
}
