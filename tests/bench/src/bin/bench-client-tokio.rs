//! The anygrpc load generator with its channels and workers on a multi-threaded tokio runtime
//! (the runtime tonic's load generator uses), to separate the cost of the runtime from the cost
//! of the gRPC layer. Same flags as `bench-client`; needs the `tokio` feature.

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() -> std::io::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let runtime = anygrpc::rt::TokioRuntime::new(tokio.handle().clone());
    anygrpc_bench::client_main(std::sync::Arc::new(runtime), "anygrpc-tokio");
    Ok(())
}
