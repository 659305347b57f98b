//! The raw-h2 load generator (no gRPC logic) on anygrpc's default runtime: the ceiling for a
//! gRPC client on h2 and this runtime. Takes `bench-client`'s flags; see
//! [`anygrpc_bench::raw`].

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() {
    anygrpc_bench::raw_client_main(std::sync::Arc::new(anygrpc::rt::AsyncIoRuntime::new()));
}
