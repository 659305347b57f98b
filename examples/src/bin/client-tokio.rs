//! The echo client on a tokio runtime (build with `--features tokio`).

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, stop) = anygrpc_examples::start_echo_server()?;
    let channel = anygrpc::Channel::builder(&addr.to_string())
        .runtime(Arc::new(
            anygrpc::rt::TokioRuntime::try_current().ok_or("no tokio runtime")?,
        ))
        .connect()
        .await?;
    anygrpc_examples::run_echo_client(channel).await?;
    let _ = stop.send(());
    println!("tokio client OK");
    Ok(())
}
