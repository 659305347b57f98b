//! Keepalive and connection management on both sides (gRFC A8, A9).
//!
//! The server pings idle connections, polices clients' pings (a client pinging more often
//! than `keepalive_min_ping_interval` is disconnected with GOAWAY `too_many_pings`), and
//! closes connections after `max_connection_age` so clients rebalance. The client pings a
//! silent connection and gives it up, failing its calls with UNAVAILABLE, when the ping goes
//! unanswered. Calls keep succeeding across the server's connection recycling: the client
//! moves to a new connection when the old one says GOAWAY.

use std::time::{Duration, Instant};

use anygrpc::lb::ConnectivityState;
use anygrpc_examples::echo::{echo_client::EchoClient, EchoRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, stop) = anygrpc_examples::start_server(anygrpc_examples::localhost(), |server| {
        server
            // Ping a connection that has been silent for a minute; give it 20 s to answer.
            .keepalive_time(Duration::from_secs(60))
            .keepalive_timeout(Duration::from_secs(20))
            // Accept a client ping every 10 s, with or without calls in flight.
            .keepalive_min_ping_interval(Duration::from_secs(10))
            .keepalive_permit_without_calls(true)
            // Recycle connections every second (±10%), letting calls finish for up to 5 s.
            .max_connection_age(Duration::from_secs(1))
            .max_connection_age_grace(Duration::from_secs(5))
            .max_connection_idle(Duration::from_secs(300))
    })?;
    println!("server on {addr}: keepalive 60 s / 20 s, pings every 10 s allowed, max age 1 s");

    let channel = anygrpc::Channel::builder(&addr.to_string())
        // The least a client may ask for; shorter values are raised to 10 s.
        .keepalive_time(Duration::from_secs(10))
        .keepalive_timeout(Duration::from_secs(5))
        .keepalive_permit_without_calls(true)
        .connect_lazy()?;
    let client = EchoClient::new(channel.clone());

    anygrpc::rt::block_on(async {
        // Count the channel's returns to READY: one per connection.
        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let watcher = {
            let channel = channel.clone();
            async move {
                let mut state = channel.connectivity_state(false);
                let mut connections = 0;
                let mut stop = rx;
                loop {
                    let changed = std::pin::pin!(channel.wait_for_state_change(state));
                    match futures_util::future::select(changed, &mut stop).await {
                        futures_util::future::Either::Left((next, _)) => {
                            if next == ConnectivityState::Ready {
                                connections += 1;
                            }
                            state = next;
                        }
                        futures_util::future::Either::Right(_) => return connections,
                    }
                }
            }
        };
        let calls = async {
            let until = Instant::now() + Duration::from_millis(3500);
            let mut calls = 0;
            while Instant::now() < until {
                let request = EchoRequest {
                    message: format!("call {calls}"),
                    repeat: 0,
                };
                client.unary_echo(request).await?;
                calls += 1;
            }
            let _ = tx.send(());
            Ok::<_, anygrpc::Status>(calls)
        };
        let (connections, calls) = futures_util::future::join(watcher, calls).await;
        let calls = calls?;
        println!("{calls} calls in 3.5 s over {connections} connections, none failed");
        if connections < 3 {
            return Err(
                format!("expected the server to recycle connections, saw {connections}").into(),
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let _ = stop.send(());
    println!("keepalive and connection management OK");
    Ok(())
}
