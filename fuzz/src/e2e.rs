//! End-to-end targets: a real anygrpc server (or client) on the simulation runtime, whose peer
//! is the fuzzer's bytes. Virtual time makes each run fast and its timers (deadlines,
//! keepalive, handshake timeout) part of what is tested: a peer that stops talking must not
//! hang either side.

use std::{net::SocketAddr, time::Duration};

use anygrpc::{
    client::Grpc,
    rt::TcpOptions,
    server::{ServerCall, Service},
    BytesCodec, Channel, Code, Request, Response, Status,
};
use anygrpc_rt::sim::Sim;
use bytes::Bytes;
use futures_util::{future, io::AsyncReadExt, io::AsyncWriteExt, stream};

const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    50051,
);

/// The client connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// A server's first frame: empty SETTINGS.
const SERVER_PREFACE: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

/// Limits kept small so the fuzzer reaches them.
const MAX_MESSAGE: usize = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(5);

/// `fuzz.Echo`: `Unary` echoes its request, `Stream` echoes each message, `Fail` ends with a
/// status carrying the request as its message.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service for Echo {
    fn name(&self) -> &'static str {
        "fuzz.Echo"
    }

    fn call(&self, method: &str, call: ServerCall) -> anygrpc::rt::BoxFuture<'static, ()> {
        match method {
            "Unary" => Box::pin(
                call.unary(BytesCodec, |request: Request<Bytes>| async move {
                    Ok(Response::new(request.into_inner()))
                }),
            ),
            "Stream" => Box::pin(call.streaming(
                BytesCodec,
                |request: Request<anygrpc::Streaming<Bytes>>| async move {
                    let echoed = request.into_inner();
                    Ok(Response::new(
                        Box::pin(echoed) as anygrpc::ResponseStream<Bytes>
                    ))
                },
            )),
            "Fail" => Box::pin(
                call.unary(BytesCodec, |request: Request<Bytes>| async move {
                    let text = String::from_utf8_lossy(request.get_ref()).into_owned();
                    Err::<Response<Bytes>, _>(Status::new(Code::FailedPrecondition, text))
                }),
            ),
            _ => Box::pin(call.unimplemented()),
        }
    }
}

/// Raw HTTP/2 bytes from a client, to an anygrpc server (echo and health services, small
/// limits). The first byte picks whether a valid preface comes first and how the rest is split
/// into writes. After the bytes the client closes its side; the server must then close the
/// connection (within its timers, in virtual time: a server that hangs makes the simulation
/// panic), and it never writes more than a bounded amount in answer.
pub fn server_h2(data: &[u8]) {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let answer = server_answer(control, wire);
    // Echoes and statuses of at most a few streams of bounded messages, and control frames.
    assert!(
        answer.len() < 4 * 1024 * 1024,
        "answered {} bytes",
        answer.len()
    );
}

/// Everything the server writes to a client that sends `wire` and closes (see
/// [`server_h2`]).
pub fn server_answer(control: u8, wire: &[u8]) -> Vec<u8> {
    let sim = Sim::new(u64::from(control));
    sim.set_time_limit(Duration::from_secs(600));
    let rt = sim.runtime();
    let (_health, health) = anygrpc::health::health_service();
    let server = anygrpc::Server::builder()
        .runtime(rt.clone())
        .add_service(Echo)
        .add_service(health)
        .max_recv_message_size(MAX_MESSAGE)
        .max_concurrent_streams(8)
        .max_header_list_size(4096)
        .bind(SERVER)
        .expect("bind");
    rt.spawn(Box::pin(async move {
        let _ = server.serve().await;
    }));
    let chunk = usize::from(control >> 1).max(1) * 16;
    sim.run(async {
        let io = rt
            .connect_tcp(SERVER, TcpOptions::default())
            .await
            .expect("connect");
        let (mut from_server, mut to_server) = io.split();
        let reader = async {
            let (mut answer, mut buf) = (Vec::new(), vec![0; 16 * 1024]);
            while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                if answer.len() < 8 * 1024 * 1024 {
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            answer
        };
        let writer = async {
            if control & 1 == 0 {
                let _ = to_server.write_all(CLIENT_PREFACE).await;
            }
            for part in wire.chunks(chunk) {
                if to_server.write_all(part).await.is_err() {
                    break;
                }
            }
            // HTTP/2 has no half-close: give the server a (virtual) second to answer first.
            rt.sleep_until(rt.now() + Duration::from_secs(1)).await;
            let _ = to_server.close().await;
        };
        future::join(reader, writer).await.0
    })
}

/// Bytes from a server, answering an anygrpc client making a unary, a server-streaming and a
/// bidi call at once. The first byte picks whether a valid SETTINGS frame comes first,
/// whether the server then closes or goes silent, and the seed. Every call must end — with a
/// response or a status — by its deadline (virtual time), and no response message exceeds
/// the client's limit.
pub fn client_h2(data: &[u8]) {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    for outcome in client_outcomes(control, wire) {
        match outcome {
            Ok(messages) => assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE)),
            Err(status) => assert_ne!(status.code(), Code::Ok, "a failed call reported OK"),
        }
    }
}

/// What the unary, server-streaming and bidi calls of [`client_h2`] got from a server that
/// answers `wire`.
pub fn client_outcomes(control: u8, wire: &[u8]) -> Vec<Result<Vec<Bytes>, Status>> {
    let sim = Sim::new(u64::from(control));
    sim.set_time_limit(Duration::from_secs(600));
    let rt = sim.runtime();
    let mut listener = rt
        .listen_tcp(SERVER, TcpOptions::default())
        .expect("listen");
    let wire = wire.to_vec();
    let spawner = rt.clone();
    rt.spawn(Box::pin(async move {
        while let Ok((mut io, _)) = future::poll_fn(|cx| listener.poll_accept(cx)).await {
            let wire = wire.clone();
            let spawner_clock = spawner.clone();
            spawner.spawn(Box::pin(async move {
                let mut preface = [0; 24];
                if io.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Let the client's requests arrive (it sends them at once), so well-formed
                // answers are to streams it has opened.
                spawner_clock
                    .sleep_until(spawner_clock.now() + Duration::from_millis(50))
                    .await;
                if control & 1 == 0 && io.write_all(SERVER_PREFACE).await.is_err() {
                    return;
                }
                if io.write_all(&wire).await.is_err() {
                    return;
                }
                if control & 2 == 0 {
                    let _ = io.close().await;
                }
                // Keep reading (and discarding) so the client is never blocked on a full pipe.
                let mut sink = vec![0; 16 * 1024];
                while let Ok(1..) = io.read(&mut sink).await {}
            }));
        }
    }));
    let channel = Channel::builder(&SERVER.to_string())
        .runtime(rt.clone())
        .max_recv_message_size(MAX_MESSAGE)
        .connect_lazy()
        .expect("valid target");
    let grpc = Grpc::new(channel);
    let request = |body: &'static [u8]| {
        let mut request = Request::new(Bytes::from_static(body));
        request.set_timeout(DEADLINE);
        request
    };
    let outcomes = sim.run(async {
        let unary = async {
            let path = "/fuzz.Echo/Unary".parse().unwrap();
            let response = grpc.unary(path, BytesCodec, request(b"u")).await?;
            Ok(vec![response.into_inner()])
        };
        let server_streaming = async {
            let path = "/fuzz.Echo/Watch".parse().unwrap();
            let response = grpc
                .server_streaming(path, BytesCodec, request(b"s"))
                .await?;
            collect(response.into_inner()).await
        };
        let bidi = async {
            let messages = stream::iter([Bytes::from_static(b"b1"), Bytes::from_static(b"b2")]);
            let call = request(b"").map(|_| messages);
            let path = "/fuzz.Echo/Stream".parse().unwrap();
            let response = grpc.streaming(path, BytesCodec, call).await?;
            collect(response.into_inner()).await
        };
        let (a, b, c) = future::join3(unary, server_streaming, bidi).await;
        vec![a, b, c]
    });
    let took = sim.elapsed();
    assert!(
        took <= DEADLINE + Duration::from_secs(1),
        "the calls took {took:?}"
    );
    outcomes
}

async fn collect(mut messages: anygrpc::Streaming<Bytes>) -> Result<Vec<Bytes>, Status> {
    let mut all = Vec::new();
    while let Some(message) = messages.message().await? {
        all.push(message);
    }
    Ok(all)
}
