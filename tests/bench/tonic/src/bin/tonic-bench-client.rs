//! The tonic closed-loop load generator; the same flags and JSON line as anygrpc's bench-client.

use std::time::Duration;

use anygrpc_bench_tonic::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = common::flag(&args, "addr").unwrap_or_else(|| "127.0.0.1:50052".into());
    let mode = common::flag(&args, "mode").unwrap_or_else(|| "unary".into());
    let concurrency = common::number(&args, "concurrency", 1) as usize;
    let connections = common::number(&args, "connections", 1) as usize;
    let size = common::number(&args, "size", 16) as usize;
    let duration = Duration::from_secs(common::number(&args, "duration-secs", 5));
    let before = common::allocations();
    let (report, elapsed) =
        anygrpc_bench_tonic::load(&addr, &mode, concurrency, connections, size, duration).await;
    let allocations = common::allocations() - before;
    println!("{}", report.json("tonic", &args, elapsed, allocations));
}
