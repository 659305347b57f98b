//! The echo client driven by smol's executor.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, stop) = anygrpc_examples::start_echo_server()?;
    smol::block_on(async {
        let channel = anygrpc::Channel::builder(&addr.to_string())
            // Run anygrpc's background tasks on smol's executor too.
            .runtime(std::sync::Arc::new(
                anygrpc::rt::AsyncIoRuntime::with_spawner(|task| smol::spawn(task).detach()),
            ))
            .connect()
            .await?;
        anygrpc_examples::run_echo_client(channel).await
    })?;
    let _ = stop.send(());
    println!("smol client OK");
    Ok(())
}
