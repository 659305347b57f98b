//! The tonic closed-loop load generator; the same flags and JSON line as anygrpc's bench-client.

use anygrpc_bench_tonic::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let load = common::Load::from_args(&args, "127.0.0.1:50052");
    let before = common::allocations();
    let (report, elapsed) = anygrpc_bench_tonic::load(&load).await;
    let allocations = common::allocations() - before;
    println!("{}", report.json("tonic", &args, elapsed, allocations));
}
