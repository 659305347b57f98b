//! The anygrpc benchmark server, on the default runtime: `bench-server --addr HOST:PORT`.
//!
//! Built with the `tokio` feature, `--runtime tokio` serves from a multi-threaded tokio runtime
//! instead, the runtime the raw-h2 ceiling and tonic use.

use anygrpc_bench::{common, pb::bench_server::BenchServer, BenchService};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: std::net::SocketAddr = common::flag(&args, "addr")
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    let builder = anygrpc::Server::builder().add_service(BenchServer::new(BenchService));
    match common::flag(&args, "runtime").as_deref() {
        None | Some("async-io") => {
            let server = builder.bind(addr)?;
            println!("listening on {}", server.local_addr()?);
            common::report_server_stats();
            anygrpc::rt::block_on(server.serve())?;
        }
        #[cfg(feature = "tokio")]
        Some("tokio") => {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let runtime = anygrpc::rt::TokioRuntime::new(tokio.handle().clone());
            let server = tokio
                .block_on(async { builder.runtime(std::sync::Arc::new(runtime)).bind(addr) })?;
            println!("listening on {}", server.local_addr()?);
            common::report_server_stats();
            tokio.block_on(server.serve())?;
        }
        Some(other) => return Err(format!("unknown --runtime {other}").into()),
    }
    Ok(())
}
