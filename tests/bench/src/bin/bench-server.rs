//! The anygrpc benchmark server, on the default runtime: `bench-server --addr HOST:PORT`.
//!
//! Built as a user's default build is, without tokio; `bench-server-tokio` is the same server
//! on a tokio runtime.

use anygrpc_bench::common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (builder, addr) = anygrpc_bench::server_from_args()?;
    let server = builder.bind(addr)?;
    println!("listening on {}", server.local_addr()?);
    common::report_server_stats();
    anygrpc::rt::block_on(server.serve())?;
    Ok(())
}
