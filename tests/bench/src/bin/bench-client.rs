//! The anygrpc closed-loop load generator. Prints one JSON line.
//!
//! `bench-client --addr HOST:PORT --mode unary|server-stream|client-stream|bidi
//!  --concurrency C --duration-secs D --size S [--connections N] [--caller-thread]`
//!
//! Workers run as tasks on anygrpc's worker threads, or with `--caller-thread` as one future
//! under `block_on` on the main thread (see [`anygrpc_bench::Drive`]).

use std::time::Duration;

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = common::flag(&args, "addr").unwrap_or_else(|| "127.0.0.1:50051".into());
    let mode = common::flag(&args, "mode").unwrap_or_else(|| "unary".into());
    let concurrency = common::number(&args, "concurrency", 1) as usize;
    let connections = common::number(&args, "connections", 1) as usize;
    let size = common::number(&args, "size", 16) as usize;
    let duration = Duration::from_secs(common::number(&args, "duration-secs", 5));
    let drive = if args.iter().any(|a| a == "--caller-thread") {
        anygrpc_bench::Drive::CallerThread
    } else {
        anygrpc_bench::Drive::Spawned
    };
    let before = common::allocations();
    let (report, elapsed) = anygrpc_bench::load(
        &addr,
        &mode,
        concurrency,
        connections,
        size,
        duration,
        drive,
    );
    let allocations = common::allocations() - before;
    println!("{}", report.json("anygrpc", &args, elapsed, allocations));
}
