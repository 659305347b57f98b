//! A server that shuts down gracefully on SIGTERM or SIGINT (Ctrl-C): its health service turns
//! NOT_SERVING first, so health-checking clients and load balancers move away; then it stops
//! accepting, sends GOAWAY on every connection, and lets the calls in flight finish (for up to
//! the grace period, after which they are cancelled).
//!
//! `cargo run -p anygrpc-examples --bin graceful-shutdown` serves until you press Ctrl-C;
//! with `--demo` it runs a client with a call in flight and sends itself SIGTERM.

use std::time::Duration;

use anygrpc::health::{health_service, ServingStatus};
use anygrpc_examples::echo::{echo_client::EchoClient, echo_server::EchoServer, EchoRequest};
use futures_util::StreamExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|arg| arg == "--demo");
    let (reporter, health) = health_service();
    reporter.set_serving("anygrpc.examples.echo.Echo");
    let server = anygrpc::Server::builder()
        .add_service(EchoServer::new(anygrpc_examples::EchoService))
        .add_service(health)
        .shutdown_grace_period(Some(Duration::from_secs(10)))
        .bind(anygrpc_examples::localhost())?;
    let addr = server.local_addr()?;
    println!("serving on {addr}; SIGTERM or Ctrl-C shuts down gracefully");

    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])?;
    let shutdown = async move {
        if let Some(Ok(signal)) = signals.next().await {
            println!("got {signal:?}: health NOT_SERVING, GOAWAY, draining");
        }
    };
    let serving =
        std::thread::spawn(move || anygrpc::rt::block_on(server.serve_with_shutdown(shutdown)));

    if demo {
        let channel = anygrpc::Channel::builder(&addr.to_string()).connect_lazy()?;
        anygrpc::rt::block_on(async {
            let client = EchoClient::new(channel);
            // A bidi call that is in flight when the signal arrives.
            let (tx, rx) = futures_channel::mpsc::unbounded();
            let mut replies = client.bidirectional_streaming_echo(rx).await?.into_inner();
            tx.unbounded_send(EchoRequest {
                message: "before".into(),
                repeat: 0,
            })
            .map_err(|e| anygrpc::Status::internal(e.to_string()))?;
            println!(
                "in flight: {}",
                replies
                    .message()
                    .await?
                    .map(|r| r.message)
                    .unwrap_or_default()
            );
            std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()?;
            // The call carries on while the server drains.
            tx.unbounded_send(EchoRequest {
                message: "after the signal".into(),
                repeat: 0,
            })
            .map_err(|e| anygrpc::Status::internal(e.to_string()))?;
            println!(
                "still in flight: {}",
                replies
                    .message()
                    .await?
                    .map(|r| r.message)
                    .unwrap_or_default()
            );
            drop(tx);
            while replies.message().await?.is_some() {}
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
    }
    serving.join().map_err(|_| "server thread panicked")??;
    assert_eq!(
        reporter.status("anygrpc.examples.echo.Echo"),
        Some(ServingStatus::NotServing)
    );
    println!("shut down gracefully");
    Ok(())
}
