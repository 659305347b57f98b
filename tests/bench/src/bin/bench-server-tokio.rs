//! The anygrpc benchmark server on a multi-threaded tokio runtime (the runtime the raw-h2
//! ceiling and tonic use), to separate the cost of the runtime from the cost of the gRPC
//! layer: `bench-server-tokio --addr HOST:PORT`. Needs the `tokio` feature.

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (builder, addr) = anygrpc_bench::server_from_args()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let runtime = anygrpc::rt::TokioRuntime::new(tokio.handle().clone());
    let server =
        tokio.block_on(async { builder.runtime(std::sync::Arc::new(runtime)).bind(addr) })?;
    println!("listening on {}", server.local_addr()?);
    common::report_server_stats();
    tokio.block_on(server.serve())?;
    Ok(())
}
