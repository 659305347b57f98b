//! The anygrpc closed-loop load generator on the default runtime. Prints one JSON line.
//!
//! `bench-client --addr HOST:PORT --mode unary|server-stream|client-stream|bidi
//!  --concurrency C --duration-secs D --size S [--connections N] [--caller-thread]`
//!
//! Workers run as tasks on anygrpc's worker threads, or with `--caller-thread` as one future
//! under `block_on` on the main thread (see [`anygrpc_bench::Drive`]).

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() {
    anygrpc_bench::client_main(
        std::sync::Arc::new(anygrpc::rt::AsyncIoRuntime::new()),
        "anygrpc",
    );
}
