//! Hostile peers and crashes on real sockets: a rapid-reset flood (HEADERS + RST_STREAM,
//! CVE-2023-44487) and a ping flood against the server, a client resetting its stream at every
//! point of a call, and a server process killed mid-stream and restarted. The server must cut
//! an abuser off with bounded CPU and memory while well-behaved clients on other connections
//! keep being served.
#![cfg(target_os = "linux")]

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anygrpc::{
    rt::{block_on, Address},
    Code,
};
use anygrpc_integration_tests::*;

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A request head as HPACK literals without indexing (no encoder state to keep).
fn request_head(stream: u32) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/anygrpc.test.Test/Bidi"),
        (":authority", "flood"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    h2_frame(HEADERS, END_HEADERS, stream, &block)
}

/// What a raw flooding connection saw: the frames it sent before the server stopped reading
/// or closed, and the GOAWAY it got, if any.
#[derive(Debug)]
struct Flood {
    sent: usize,
    goaway: Option<u32>,
    /// PING ACKs the server sent back: pings it did work for.
    ping_acks: usize,
}

/// Connects, sends the preface, then `unit(i)` for i = 0.. in batches of 100 until the server
/// closes the connection or `max` units went out. A reader thread drains the server's frames
/// and notes its GOAWAY.
fn flood(addr: &Address, max: usize, unit: &impl Fn(usize) -> Vec<u8>) -> Flood {
    let Address::Tcp(addr) = addr else {
        unreachable!()
    };
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_nodelay(true).unwrap();
    let mut reader = socket.try_clone().unwrap();
    let goaway = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        let (mut at, mut goaway, mut ping_acks) = (0, None, 0);
        while at + 9 <= seen.len() {
            let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
            match seen[at + 3] {
                GOAWAY if at + 9 + 8 <= seen.len() => {
                    let code = &seen[at + 13..at + 17];
                    goaway = goaway.or(Some(u32::from_be_bytes(code.try_into().unwrap())));
                }
                PING => ping_acks += 1,
                _ => {}
            }
            at += 9 + len;
        }
        (goaway, ping_acks)
    });
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(h2_frame(SETTINGS, 0, 0, &[]));
    socket.write_all(&preface).unwrap();
    let mut sent = 0;
    'outer: while sent < max {
        let mut batch = Vec::new();
        for i in sent..(sent + 100).min(max) {
            batch.extend(unit(i));
        }
        if socket.write_all(&batch).is_err() {
            break 'outer;
        }
        sent = (sent + 100).min(max);
    }
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let (goaway, ping_acks) = goaway.join().unwrap();
    Flood {
        sent,
        goaway,
        ping_acks,
    }
}

/// This process's resident memory and CPU time (user + system).
fn usage() -> (u64, Duration) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let rss_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss_pages * 4096, Duration::from_millis(ticks * 10))
}

/// Calls the server over its own connection, again and again, until told to stop; returns
/// how many calls succeeded and the slowest.
fn well_behaved(
    server: &Running,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Duration, Vec<anygrpc::Status>)> {
    let client = server.client();
    std::thread::spawn(move || {
        block_on(async {
            let (mut ok, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.unary(Payload::default()).await {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status),
                }
                slowest = slowest.max(started.elapsed());
            }
            (ok, slowest, failed)
        })
    })
}

/// How long each attack goes on, reconnecting whenever the server cuts it off.
const ATTACK: Duration = Duration::from_secs(2);

/// Attacks with `unit`-made floods on new connections for [`ATTACK`] while a well-behaved
/// client calls on its own connection. Every attacking connection must be cut off with
/// GOAWAY ENHANCE_YOUR_CALM; the server's CPU per attacking connection and its memory stay
/// bounded; the other client's calls all succeed, none slower than a second.
fn under_attack(name: &str, server: &Running, unit: impl Fn(usize) -> Vec<u8>) {
    const MAX_UNITS: usize = 1_000_000;
    block_on(server.client().unary(Payload::default())).expect("warm-up");
    let stop = Arc::new(AtomicBool::new(false));
    let calls = well_behaved(server, stop.clone());
    let (rss_before, cpu_before) = usage();
    let started = Instant::now();
    let mut floods = Vec::new();
    while started.elapsed() < ATTACK {
        floods.push(flood(&server.addr, MAX_UNITS, &unit));
    }
    let (rss_after, cpu_after) = usage();
    stop.store(true, Ordering::Relaxed);
    let (ok, slowest, failed) = calls.join().unwrap();
    let cpu_per_connection = (cpu_after - cpu_before) / floods.len() as u32;
    let grown = rss_after.saturating_sub(rss_before);
    let sent: usize = floods.iter().map(|f| f.sent).sum();
    let most_acks = floods.iter().map(|f| f.ping_acks).max().unwrap_or(0);
    println!(
        "{name}: {} connections cut off in {ATTACK:?}, {sent} frames (pairs) written, at most \
         {most_acks} PING ACKs on one; process CPU {cpu_per_connection:?} per connection, RSS \
         +{} KiB; the other client made {ok} calls, slowest {slowest:?}, {} failed",
        floods.len(),
        grown / 1024,
        failed.len()
    );
    for flood in &floods {
        assert_eq!(flood.goaway, Some(ENHANCE_YOUR_CALM), "{name}: {flood:?}");
        assert!(
            flood.sent < MAX_UNITS,
            "{name}: the server kept reading: {flood:?}"
        );
    }
    assert!(
        cpu_per_connection < Duration::from_millis(200),
        "{name}: {cpu_per_connection:?}"
    );
    assert!(grown < 64 * 1024 * 1024, "{name}: RSS grew {grown} bytes");
    assert!(failed.is_empty(), "{name}: {failed:?}");
    assert!(ok >= 20, "{name}: the other client made only {ok} calls");
    assert!(
        slowest < Duration::from_secs(1),
        "{name}: a call took {slowest:?}"
    );
    block_on(server.client().unary(Payload::default())).expect("still serving after the attack");
}

#[test]
fn a_rapid_reset_flood_is_cut_off_and_other_clients_are_served() {
    let server = start();
    under_attack("rapid reset", &server, |i| {
        let stream = 2 * i as u32 + 1;
        let mut unit = request_head(stream);
        unit.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        unit
    });
}

#[test]
fn a_ping_flood_is_cut_off_and_other_clients_are_served() {
    let server = start();
    under_attack("ping flood", &server, |i| {
        h2_frame(PING, 0, 0, &(i as u64).to_be_bytes())
    });
}

/// A client that resets its stream at each point of a bidi call: before sending anything,
/// mid-message, after a whole message, after the response head, after a response message.
/// Each time the handler is cancelled, and the same connection serves the next call.
#[test]
fn a_client_resetting_at_every_point_of_a_call_leaves_the_server_healthy() {
    let mut server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let message = frame(
            false,
            &encode(&Payload {
                body: b"ping".to_vec(),
                hang: false,
                ..Payload::default()
            }),
        );
        for point in 0..5 {
            let request = raw_request(&server.addr, "/anygrpc.test.Test/Bidi", &[]);
            let (response, mut body) = send.send_request(request, false).expect("send");
            match point {
                0 => {}
                1 => body.send_data(message.slice(..6), false).unwrap(),
                2 => body.send_data(message.clone(), false).unwrap(),
                _ => {
                    if point == 4 {
                        body.send_data(message.clone(), false).unwrap();
                    }
                    let mut response = response.await.expect("response head");
                    if point == 4 {
                        let first = response
                            .body_mut()
                            .data()
                            .await
                            .expect("a message")
                            .unwrap();
                        assert!(first.ends_with(b"ping"), "the echo");
                        let _ = response
                            .body_mut()
                            .flow_control()
                            .release_capacity(first.len());
                    }
                    let hang = Payload {
                        hang: true,
                        ..Payload::default()
                    };
                    body.send_data(frame(false, &encode(&hang)), false).unwrap();
                    assert_eq!(server.next_event().await, Event::Started(None));
                    body.send_reset(h2::Reason::CANCEL);
                    assert_eq!(server.next_event().await, Event::Dropped, "point {point}");
                    continue;
                }
            }
            body.send_reset(h2::Reason::CANCEL);
            drop(response);
        }
        let reply = raw_call(
            &mut send,
            raw_request(&server.addr, "/anygrpc.test.Test/Unary", &[]),
            frame(
                false,
                &encode(&Payload {
                    body: b"after".to_vec(),
                    ..Payload::default()
                }),
            ),
        )
        .await;
        assert_eq!(
            reply.grpc_status().map(|s| s.code()),
            Some(Code::Ok),
            "{reply:?}"
        );
        assert!(reply.body.ends_with(b"after"));
    });
}

/// Starts `test-server` on `port` and waits until it listens.
fn spawn_server(port: u16) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_test-server"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn test-server");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    child
}

/// The server process is killed (SIGKILL) while a streaming call is mid-stream: the call
/// fails UNAVAILABLE at once, and once a new server process listens on the same port the
/// channel reconnects and calls succeed.
#[test]
fn a_server_killed_mid_stream_fails_the_call_and_a_restarted_one_is_used() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = spawn_server(port);
    let client = TestClient::new(
        anygrpc::Channel::builder(&format!("127.0.0.1:{port}"))
            .connect_lazy()
            .unwrap(),
    );
    block_on(async {
        let request = Payload {
            count: 1,
            hang_after: true,
            ..Payload::default()
        };
        let mut stream = client.server_stream(request).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("the first message");
        server.kill().unwrap();
        server.wait().unwrap();
        let killed = Instant::now();
        let err = stream.message().await.expect_err("the server is gone");
        let failed_after = killed.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(failed_after < Duration::from_secs(1), "{failed_after:?}");
        let mut restarted = spawn_server(port);
        let mut call = anygrpc::Request::new(Payload::default());
        call.set_wait_for_ready(true);
        call.set_timeout(Duration::from_secs(10));
        let reconnected = Instant::now();
        client.unary(call).await.expect("served by the new process");
        println!(
            "killed mid-stream: the call failed in {failed_after:?} ({err}); the restarted \
             server answered after {:?}",
            reconnected.elapsed()
        );
        restarted.kill().unwrap();
        restarted.wait().unwrap();
    });
}
