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

/// The benchmark service.
#[derive(Debug, Default)]
pub struct BenchService;

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl pb::bench_server::Bench for BenchService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        common::handler_work();
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

/// One bidi call, as ping-pong.
pub struct Bidi {
    requests: tokio::sync::mpsc::UnboundedSender<Payload>,
    replies: Streaming<Payload>,
}

impl common::BidiRoundTrip for Bidi {
    async fn round_trip(&mut self, body: Vec<u8>) -> Option<usize> {
        self.requests.send(Payload { body }).ok()?;
        Some(self.replies.message().await.ok()??.body.len())
    }
}

impl common::BenchCalls for Client {
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
        let (requests, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outgoing = stream::poll_fn(move |cx| rx.poll_recv(cx));
        let replies = BenchClient::bidi_stream(self, outgoing)
            .await
            .map_err(|s| s.to_string())?;
        Ok(Bidi {
            requests,
            replies: replies.into_inner(),
        })
    }
}

/// Runs the closed loop on the current tokio runtime.
pub async fn load(load: &common::Load) -> (Report, Duration) {
    let mut clients = Vec::new();
    for _ in 0..load.connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", load.addr))
            .expect("valid target")
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .connect()
            .await
            .expect("connect");
        let mut client = BenchClient::new(channel).max_decoding_message_size(common::MAX_MESSAGE);
        let _ = client.unary(Payload::default()).await;
        clients.push(client);
    }
    let start = Instant::now();
    let until = start + load.duration;
    let tasks: Vec<_> = (0..load.concurrency)
        .map(|i| {
            let (client, load) = (clients[i % clients.len()].clone(), load.clone());
            tokio::spawn(async move { common::worker(client, &load, until).await })
        })
        .collect();
    let mut total = Report::default();
    for task in tasks {
        total.merge(task.await.expect("worker"));
    }
    (total, start.elapsed())
}
