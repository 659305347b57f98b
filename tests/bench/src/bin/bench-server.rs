//! The anygrpc benchmark server, on the default runtime: `bench-server --addr HOST:PORT`.

use anygrpc_bench::{common, pb::bench_server::BenchServer, BenchService};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: std::net::SocketAddr = common::flag(&args, "addr")
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    let server = anygrpc::Server::builder()
        .add_service(BenchServer::new(BenchService))
        .bind(addr)?;
    println!("listening on {}", server.local_addr()?);
    common::report_server_stats();
    anygrpc::rt::block_on(server.serve())?;
    Ok(())
}
