//! A raw h2 server with no gRPC logic: it answers each request with 200,
//! `content-type: application/grpc`, the request body, and `grpc-status: 0` trailers. Built
//! directly on h2 and tokio, it is the ceiling for any gRPC server built on h2.
//!
//! `/bench.v1.Bench/ServerStream` is the one exception: it reads the `StreamRequest` and sends
//! `count` gRPC frames of `size` zero bytes as one DATA write, the least work any server can do
//! for that call.

use std::sync::atomic::Ordering;

use anygrpc_bench_tonic::{common, pb::StreamRequest, CONNECTION_WINDOW, STREAM_WINDOW};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

async fn echo(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let streaming = request.uri().path() == "/bench.v1.Bench/ServerStream";
    let mut body = request.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    if streaming {
        data = stream_frames(&data);
    }
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("valid response");
    let mut send = respond.send_response(response, false)?;
    send.send_data(data.freeze(), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    common::CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// `count` frames of a `Payload` with `size` zero bytes, for the `StreamRequest` in `request`
/// (a gRPC frame); empty if it does not decode.
fn stream_frames(request: &[u8]) -> BytesMut {
    let Some(StreamRequest { count, size }) = request
        .get(5..)
        .and_then(|message| StreamRequest::decode(message).ok())
    else {
        return BytesMut::new();
    };
    let message = anygrpc_bench_tonic::pb::Payload {
        body: vec![0; size as usize],
    }
    .encode_to_vec();
    let mut frames = BytesMut::with_capacity(count as usize * (5 + message.len()));
    for _ in 0..count {
        frames.put_u8(0);
        frames.put_u32(message.len() as u32);
        frames.put_slice(&message);
    }
    frames
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: std::net::SocketAddr = common::flag(&args, "addr")
        .unwrap_or_else(|| "127.0.0.1:50053".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    common::report_server_stats();
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut builder = h2::server::Builder::new();
            builder
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_concurrent_streams(1000);
            let Ok(mut connection) = builder.handshake(socket).await else {
                return;
            };
            while let Some(Ok((request, respond))) = connection.accept().await {
                tokio::spawn(async move {
                    let _ = echo(request, respond).await;
                });
            }
        });
    }
}
