//! The tonic benchmark server: `tonic-bench-server --addr HOST:PORT`.

use anygrpc_bench_tonic::{
    common, pb::bench_server::BenchServer, BenchService, CONNECTION_WINDOW, STREAM_WINDOW,
};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: std::net::SocketAddr = common::flag(&args, "addr")
        .unwrap_or_else(|| "127.0.0.1:50052".into())
        .parse()?;
    common::read_server_work(&args);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    common::report_server_stats();
    // The builder's `tcp_nodelay` applies only to `serve(addr)`; a listener handed in brings
    // its own setting, and without it small responses wait on Nagle and delayed ACKs (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(BenchServer::new(BenchService))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
