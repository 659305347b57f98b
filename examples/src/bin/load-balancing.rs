//! Load balancing over local servers, all on the default runtime:
//!
//! 1. `round_robin` over three servers behind one `ipv4:` target;
//! 2. a wait-for-ready call that rides out a server restart;
//! 3. health-checked backends: one set NOT_SERVING stops getting calls, and gets them again
//!    when SERVING;
//! 4. `weighted_round_robin` steering calls by the ORCA load each server reports;
//! 5. `ring_hash_experimental` keeping each user on one server by a request header;
//! 6. `outlier_detection_experimental` over `round_robin` ejecting a server that fails half
//!    its calls.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anygrpc::{
    health::health_service,
    orca::{OrcaService, ServerMetricsRecorder},
    Channel, Request, Status,
};
use anygrpc_examples::{
    call_counter,
    echo::{echo_client::EchoClient, EchoRequest},
    localhost, start_server,
};

type Stop = futures_channel::oneshot::Sender<()>;

/// Starts a counted echo server with `configure`'s extras.
fn counted(
    addr: std::net::SocketAddr,
    configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server,
) -> std::io::Result<(std::net::SocketAddr, Arc<AtomicUsize>, Stop)> {
    let (counter, calls) = call_counter();
    let (addr, stop) = start_server(addr, |s| configure(s.interceptor(counter)))?;
    Ok((addr, calls, stop))
}

fn target(addrs: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("ipv4:{}", list.join(","))
}

fn echo(wait_for_ready: bool) -> Request<EchoRequest> {
    let mut request = Request::new(EchoRequest {
        message: "hi".into(),
        repeat: 0,
    });
    request.set_wait_for_ready(wait_for_ready);
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Makes `n` calls and returns how many each server got.
async fn spread(client: &EchoClient, counters: &[&Arc<AtomicUsize>], n: usize) -> Vec<usize> {
    let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for _ in 0..n {
        client
            .unary_echo(echo(true))
            .await
            .expect("wait-for-ready calls succeed");
    }
    counters
        .iter()
        .zip(before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect()
}

/// Makes calls in rounds of `n` until a round's spread satisfies `done` (at most 1,000 rounds).
async fn until(
    client: &EchoClient,
    counters: &[&Arc<AtomicUsize>],
    n: usize,
    done: impl Fn(&[usize]) -> bool,
) -> Result<(), Status> {
    for _ in 0..1000 {
        if done(&spread(client, counters, n).await) {
            return Ok(());
        }
    }
    Err(Status::deadline_exceeded("the spread never settled"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    anygrpc::rt::block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // 1. round_robin over three servers.
    let (a, a_calls, _a) = counted(localhost(), |s| s)?;
    let (b, b_calls, _b) = counted(localhost(), |s| s)?;
    let (c, c_calls, c_stop) = counted(localhost(), |s| s)?;
    let channel = Channel::builder(&target(&[a, b, c]))
        .load_balancing_policy("round_robin")
        .connect()
        .await?;
    let client = EchoClient::new(channel.clone());
    let counters = [&a_calls, &b_calls, &c_calls];
    // Let every backend connect, then count.
    until(&client, &counters, 3, |_| {
        counters.iter().all(|c| c.load(Ordering::Relaxed) > 0)
    })
    .await?;
    println!(
        "round_robin, 300 calls: {:?}",
        spread(&client, &counters, 300).await
    );

    // 2. Stop server c; with wait-for-ready no call fails while it is down, and after it
    //    restarts on the same port it is back in the rotation.
    let _ = c_stop.send(());
    println!("stopped {c}: {:?}", spread(&client, &counters, 100).await);
    let (_, c_again, _c) = counted(c, |s| s)?;
    until(&client, &counters, 10, |_| {
        c_again.load(Ordering::Relaxed) > 0
    })
    .await?;
    println!("restarted {c}: it gets calls again");

    // 3. Health-checked backends.
    let (reporter_x, health_x) = health_service();
    let (reporter_y, health_y) = health_service();
    reporter_x.set_serving("anygrpc.examples.echo.Echo");
    reporter_y.set_serving("anygrpc.examples.echo.Echo");
    let (x, x_calls, _x) = counted(localhost(), |s| s.add_service(health_x))?;
    let (y, y_calls, _y) = counted(localhost(), |s| s.add_service(health_y))?;
    let channel = Channel::builder(&target(&[x, y]))
        .load_balancing_policy("round_robin")
        .health_check_service_name("anygrpc.examples.echo.Echo")
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let counters = [&x_calls, &y_calls];
    until(&client, &counters, 20, |c| c == [10, 10]).await?;
    println!(
        "both SERVING, 100 calls: {:?}",
        spread(&client, &counters, 100).await
    );
    reporter_y.set_not_serving("anygrpc.examples.echo.Echo");
    until(&client, &counters, 20, |c| c[1] == 0).await?;
    println!(
        "{y} NOT_SERVING, 100 calls: {:?}",
        spread(&client, &counters, 100).await
    );
    reporter_y.set_serving("anygrpc.examples.echo.Echo");
    until(&client, &counters, 20, |c| c[1] > 0).await?;
    println!(
        "{y} SERVING again, 100 calls: {:?}",
        spread(&client, &counters, 100).await
    );

    // 4. weighted_round_robin from out-of-band ORCA reports: p reports a third of q's CPU
    //    utilization at the same qps, so it gets three times the calls.
    let mut servers = Vec::new();
    for cpu in [0.2, 0.6] {
        let recorder = ServerMetricsRecorder::default();
        recorder.set_cpu_utilization(cpu);
        recorder.set_qps(100.0);
        let orca = OrcaService::new(recorder).min_reporting_interval(Duration::from_millis(50));
        servers.push(counted(localhost(), |s| s.add_service(orca))?);
    }
    let channel = Channel::builder(&target(&[servers[0].0, servers[1].0]))
        .load_balancing_config(
            r#"[{"weighted_round_robin": {
                "enableOobLoadReport": true, "oobReportingPeriod": "0.05s",
                "blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}]"#,
        )
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let counters = [&servers[0].1, &servers[1].1];
    until(&client, &counters, 100, |c| c[0] >= 70).await?;
    let counts = spread(&client, &counters, 1000).await;
    println!("weighted_round_robin (cpu 0.2 vs 0.6), 1000 calls: {counts:?}");
    if !(700..=800).contains(&counts[0]) {
        return Err(Status::internal("weights not followed").into());
    }

    // 5. ring_hash: the x-user header picks the server, so each user's calls stay on one.
    let mut shards = Vec::new();
    for _ in 0..4 {
        shards.push(counted(localhost(), |s| s)?);
    }
    let addrs: Vec<_> = shards.iter().map(|s| s.0).collect();
    let channel = Channel::builder(&target(&addrs))
        .load_balancing_config(r#"[{"ring_hash_experimental": {"requestHashHeader": "x-user"}}]"#)
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let counters: Vec<_> = shards.iter().map(|s| &s.1).collect();
    for user in ["alice", "bob", "carol", "dave"] {
        let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for _ in 0..20 {
            let mut request = echo(true);
            request.metadata_mut().insert("x-user", user)?;
            client.unary_echo(request).await?;
        }
        let got: Vec<usize> = counters
            .iter()
            .zip(before)
            .map(|(c, b)| c.load(Ordering::Relaxed) - b)
            .collect();
        println!("ring_hash, 20 calls as {user}: {got:?}");
        if !got.contains(&20) {
            return Err(Status::internal("a user's calls were split").into());
        }
    }

    // 6. Outlier detection: server f fails every other call; the sweep every 0.2 s ejects it
    //    (for 30 s), and round_robin spreads the calls over the other three.
    let failures = Arc::new(AtomicUsize::new(0));
    let mut pool = Vec::new();
    for i in 0..4 {
        let failures = failures.clone();
        pool.push(counted(localhost(), move |s| match i {
            0 => s.interceptor(move |_: &mut anygrpc::interceptor::CallHead| {
                match failures.fetch_add(1, Ordering::Relaxed) % 2 {
                    0 => Ok(()),
                    _ => Err(Status::unavailable("every other call fails")),
                }
            }),
            _ => s,
        })?);
    }
    let addrs: Vec<_> = pool.iter().map(|s| s.0).collect();
    let channel = Channel::builder(&target(&addrs))
        .load_balancing_config(
            r#"[{"outlier_detection_experimental": {
                "interval": "0.2s", "baseEjectionTime": "30s", "maxEjectionPercent": 25,
                "failurePercentageEjection": {"threshold": 30, "requestVolume": 10, "minimumHosts": 4},
                "childPolicy": [{"round_robin": {}}]}}]"#,
        )
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let counters: Vec<_> = pool.iter().map(|s| &s.1).collect();
    let mut failed = 0;
    for round in 1..=1000 {
        let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for _ in 0..100 {
            failed += usize::from(client.unary_echo(echo(false)).await.is_err());
        }
        let got: Vec<usize> = counters
            .iter()
            .zip(before)
            .map(|(c, b)| c.load(Ordering::Relaxed) - b)
            .collect();
        if got[0] == 0 {
            println!(
                "outlier_detection: {} ejected; round {round} of 100 calls went {got:?} \
                 ({failed} calls failed before)",
                addrs[0]
            );
            break;
        }
        if round == 1000 {
            return Err(Status::internal("the failing server was never ejected").into());
        }
    }
    println!("load balancing OK");
    Ok(())
}
