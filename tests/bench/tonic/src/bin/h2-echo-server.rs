//! A raw h2 echo server with no gRPC logic: it answers each request with 200,
//! `content-type: application/grpc`, the request body, and `grpc-status: 0` trailers. Built
//! directly on h2 and tokio, it is the ceiling for any gRPC server built on h2.

use std::sync::atomic::Ordering;

use anygrpc_bench_tonic::{common, CONNECTION_WINDOW, STREAM_WINDOW};
use bytes::{Bytes, BytesMut};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

async fn echo(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let mut body = request.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
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
