//! A server and a client in one process, on anygrpc's default runtime (no tokio), running all
//! four call types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, stop) = anygrpc_examples::start_echo_server()?;
    println!("echo server listening on {addr}");
    let channel = anygrpc::Channel::builder(&addr.to_string()).connect_lazy()?;
    anygrpc::rt::block_on(anygrpc_examples::run_echo_client(channel))?;
    let _ = stop.send(());
    println!("all four call types OK");
    Ok(())
}
