//! tonic's side of the benchmark: the same service and load generator as `anygrpc-bench`,
//! written with tonic, measured with the same stats code (`common.rs`, shared by path).

#[path = "../../src/common.rs"]
pub mod common;

use std::{
    pin::Pin,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{Report, CALLS};
use futures_util::{stream, Stream};
use tonic::{Request, Response, Status, Streaming};

/// Generated code for `bench.proto`.
pub mod pb {
    tonic::include_proto!("bench.v1");
}

use pb::{bench_client::BenchClient, Payload, StreamRequest};

/// Flow-control windows: the same as anygrpc's defaults, so the comparison is of the
/// implementations, not of their default settings.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 2 << 20;
/// Messages per server-stream and client-stream call (as in anygrpc-bench).
pub const STREAM_MESSAGES: u32 = 100;

/// The benchmark service.
#[derive(Debug, Default)]
pub struct BenchService;

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl pb::bench_server::Bench for BenchService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(request.into_inner()))
    }

    type ServerStreamStream = PayloadStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<PayloadStream>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let StreamRequest { count, size } = request.into_inner();
        let body = vec![0u8; size as usize];
        let messages = stream::iter((0..count).map(move |_| Ok(Payload { body: body.clone() })));
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

    type BidiStreamStream = PayloadStream;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}

type Client = BenchClient<tonic::transport::Channel>;

async fn worker(mut client: Client, mode: String, size: usize, until: Instant) -> Report {
    let mut report = Report::default();
    let body = vec![0u8; size];
    if mode == "bidi" {
        // Ping-pong: one message in flight per worker, so an unbounded queue never grows.
        let (tx, rx) = request_channel();
        let mut replies = match client.bidi_stream(rx).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                report.errors += 1;
                return report;
            }
        };
        while Instant::now() < until {
            let start = Instant::now();
            if tx.send(Payload { body: body.clone() }).is_err() {
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
        return report;
    }
    while Instant::now() < until {
        let start = Instant::now();
        let outcome: Result<(u64, usize), Status> = match mode.as_str() {
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
                let messages = (0..STREAM_MESSAGES).map(move |_| Payload { body: body.clone() });
                client
                    .client_stream(stream::iter(messages))
                    .await
                    .map(|r| (1, r.into_inner().body.len()))
            }
            other => panic!("unknown mode {other}; modes: {:?}", common::MODES),
        };
        match outcome {
            Ok((messages, bytes)) => report.record(start, messages, bytes),
            Err(_) => report.errors += 1,
        }
    }
    report
}

/// An unbounded channel whose receiver is a request stream (tokio's, wrapped as a Stream).
fn request_channel() -> (
    tokio::sync::mpsc::UnboundedSender<Payload>,
    impl Stream<Item = Payload> + Send + 'static,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, stream)
}

/// Runs the closed loop on the current tokio runtime.
pub async fn load(
    target: &str,
    mode: &str,
    concurrency: usize,
    connections: usize,
    size: usize,
    duration: Duration,
) -> (Report, Duration) {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .expect("valid target")
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .connect()
            .await
            .expect("connect");
        let mut client = BenchClient::new(channel);
        let _ = client.unary(Payload::default()).await;
        clients.push(client);
    }
    let start = Instant::now();
    let until = start + duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            tokio::spawn(worker(
                clients[i % clients.len()].clone(),
                mode.to_owned(),
                size,
                until,
            ))
        })
        .collect();
    let mut total = Report::default();
    for task in tasks {
        total.merge(task.await.expect("worker"));
    }
    (total, start.elapsed())
}
