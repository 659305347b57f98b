//! Shared fixtures for the integration tests: a configurable test service, server start-up,
//! and raw HTTP/2 peers for sending what a well-behaved gRPC peer never would.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anygrpc::{
    rt::Address, server::BoundServer, Code, Request, Response, ResponseStream, Status, Streaming,
};
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::StreamExt;

pub mod faults;
pub mod pushed;

/// Generated code for `test.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/anygrpc.test.rs"));
}

pub use pb::{test_client::TestClient, test_server::TestServer, Payload};

/// What a handler reports to the test that drives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A handler started; carries the time left until its deadline.
    Started(Option<Duration>),
    /// A handler's future was dropped before it finished (cancellation).
    Dropped,
}

/// The test service.
#[derive(Debug, Clone)]
pub struct TestService {
    events: mpsc::UnboundedSender<Event>,
}

/// Sends [`Event::Dropped`] when dropped unless disarmed.
struct DropGuard(Option<mpsc::UnboundedSender<Event>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.unbounded_send(Event::Dropped);
        }
    }
}

fn status_of(p: &Payload) -> Option<Status> {
    (p.status_code != 0).then(|| {
        let mut status = Status::with_details(
            Code::from_i32(p.status_code),
            p.status_message.clone(),
            Bytes::from(p.body.clone()),
        );
        status
            .metadata_mut()
            .insert("x-error-md", "error-value")
            .expect("valid metadata");
        status
    })
}

/// Copies `x-echo-*` request metadata to the response headers and `x-echo-trailer-*` to its
/// trailers (ASCII and binary).
fn echo_metadata<T, U>(request: &Request<T>, response: &mut Response<U>) {
    for (key, value) in request.metadata().iter() {
        let target = if key.starts_with("x-echo-trailer-") {
            response.trailers_mut()
        } else if key.starts_with("x-echo-") {
            response.metadata_mut()
        } else {
            continue;
        };
        match value {
            anygrpc::metadata::MetadataValue::Ascii(text) => {
                target.append(key, text).expect("valid")
            }
            anygrpc::metadata::MetadataValue::Binary(_) => {
                for v in request.metadata().get_all_bin(key) {
                    target
                        .append_bin(key, &v.expect("valid base64"))
                        .expect("valid");
                }
            }
        }
    }
}

impl TestService {
    async fn hang(&self, deadline: Option<Duration>) -> ! {
        let _guard = DropGuard(Some(self.events.clone()));
        let _ = self.events.unbounded_send(Event::Started(deadline));
        std::future::pending().await
    }
}

impl pb::test_server::Test for TestService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let p = request.get_ref().clone();
        if p.hang {
            self.hang(request.remaining()).await;
        }
        if let Some(status) = status_of(&p) {
            return Err(status);
        }
        let body = if p.response_size > 0 {
            vec![b'r'; p.response_size as usize]
        } else {
            p.body
        };
        let mut response = Response::new(Payload {
            body,
            ..Payload::default()
        });
        echo_metadata(&request, &mut response);
        Ok(response)
    }

    async fn server_stream(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        let p = request.get_ref().clone();
        if let Some(status) = status_of(&p) {
            return Err(status);
        }
        let messages = (0..p.count).map(move |i| {
            Ok(Payload {
                body: vec![i as u8; p.response_size as usize],
                count: i,
                ..Payload::default()
            })
        });
        let stream = futures_util::stream::iter(messages);
        let stream: ResponseStream<Payload> = if p.hang_after {
            let service = self.clone();
            let deadline = request.remaining();
            Box::pin(stream.chain(futures_util::stream::once(async move {
                service.hang(deadline).await
            })))
        } else {
            Box::pin(stream)
        };
        let mut response = Response::new(stream);
        echo_metadata(&request, &mut response);
        Ok(response)
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Payload>, Status> {
        let remaining = request.remaining();
        let mut messages = request.into_inner();
        let (mut count, mut bytes) = (0u32, 0usize);
        while let Some(p) = messages.message().await? {
            if p.hang {
                self.hang(remaining).await;
            }
            if let Some(status) = status_of(&p) {
                return Err(status);
            }
            count += 1;
            bytes += p.body.len();
        }
        Ok(Response::new(Payload {
            count,
            response_size: bytes as u32,
            ..Payload::default()
        }))
    }

    async fn bidi(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<ResponseStream<Payload>>, Status> {
        let service = self.clone();
        let remaining = request.remaining();
        let replies = request.into_inner().then(move |p| {
            let service = service.clone();
            async move {
                let p = p?;
                if p.hang {
                    service.hang(remaining).await;
                }
                match status_of(&p) {
                    Some(status) => Err(status),
                    None => Ok(p),
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A running test server; shuts down when dropped.
pub struct Running {
    /// Where it listens.
    pub addr: Address,
    /// Handler events.
    pub events: mpsc::UnboundedReceiver<Event>,
    stop: Option<futures_channel::oneshot::Sender<()>>,
    stopping: Option<futures_channel::oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// A channel target for this server.
    pub fn target(&self) -> String {
        match &self.addr {
            Address::Tcp(addr) => addr.to_string(),
            Address::Unix(path) => format!("unix:{}", path.display()),
            Address::UnixAbstract(name) => {
                format!("unix-abstract:{}", String::from_utf8_lossy(name))
            }
        }
    }

    /// A plaintext channel to this server.
    pub fn channel(&self) -> anygrpc::Channel {
        anygrpc::Channel::builder(&self.target())
            .connect_lazy()
            .expect("valid target")
    }

    /// A test client on a plaintext channel.
    pub fn client(&self) -> TestClient {
        TestClient::new(self.channel())
    }

    /// The next handler event.
    pub async fn next_event(&mut self) -> Event {
        self.events.next().await.expect("server alive")
    }

    /// Asks the server to shut down gracefully, without waiting.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the server has taken the stop signal: it no longer accepts connections and
    /// is draining the ones it has.
    pub async fn stopping(&mut self) {
        if let Some(stopping) = self.stopping.take() {
            let _ = stopping.await;
        }
    }

    /// Whether `serve_with_shutdown` is still running.
    pub fn is_serving(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Shuts down gracefully and waits for the server to return.
    pub fn shutdown(mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("server thread")
                .expect("server result");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server builder with the test service added.
pub fn test_server() -> (anygrpc::Server, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded();
    let server =
        anygrpc::Server::builder().add_service(TestServer::new(TestService { events: tx }));
    (server, rx)
}

/// Serves a bound server on its own thread.
pub fn run(server: BoundServer, events: mpsc::UnboundedReceiver<Event>) -> Running {
    let addr = server.local_addr().expect("bound");
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let (stopping_tx, stopping) = futures_channel::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        anygrpc::rt::block_on(server.serve_with_shutdown(async {
            let _ = stopped.await;
            let _ = stopping_tx.send(());
        }))
    });
    Running {
        addr,
        events,
        stop: Some(stop),
        stopping: Some(stopping),
        thread: Some(thread),
    }
}

/// Starts the test server, configured by `configure`, on a localhost port.
pub fn start_with(configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server) -> Running {
    let (server, events) = test_server();
    let bound = configure(server).bind(localhost()).expect("bind");
    run(bound, events)
}

/// Starts the test server with default settings.
pub fn start() -> Running {
    start_with(|s| s)
}

/// `127.0.0.1:0`.
pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A certificate or key from `certs/`.
pub fn cert(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Frames one message by hand: flag, length, payload.
pub fn frame(compressed: bool, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(u8::from(compressed));
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Encodes a payload as protobuf.
pub fn encode(p: &Payload) -> Vec<u8> {
    prost::Message::encode_to_vec(p)
}

/// Raw HTTP/2 client connection to a server (no gRPC logic), for malformed requests.
pub async fn raw_client(addr: &Address) -> h2::client::SendRequest<Bytes> {
    let Address::Tcp(addr) = addr else {
        panic!("raw client needs TCP")
    };
    let stream = async_io::Async::<std::net::TcpStream>::connect(*addr)
        .await
        .expect("connect");
    let (send, conn) = h2::client::handshake(anygrpc_rt::H2Io::new(anygrpc_rt::box_io(stream)))
        .await
        .expect("handshake");
    std::thread::spawn(move || {
        let _ = async_io::block_on(conn);
    });
    send.ready().await.expect("ready")
}

/// A raw gRPC-shaped request head.
pub fn raw_request(addr: &Address, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).expect("valid request")
}

/// What a raw request got back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    /// `grpc-status` from trailers, or from the headers of a trailers-only response.
    pub fn grpc_status(&self) -> Option<Status> {
        self.trailers
            .as_ref()
            .and_then(Status::from_trailers)
            .or_else(|| Status::from_trailers(&self.headers))
    }
}

/// Sends a raw request with `body` and reads the whole response.
pub async fn raw_call(
    send: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> RawResponse {
    let (response, mut stream) = send.send_request(request, false).expect("send request");
    // A server may answer from the headers alone (415, UNIMPLEMENTED) and close the stream
    // before the body is sent; the response tells the outcome.
    let _ = stream.send_data(body, true);
    let response = response.await.expect("response");
    let (parts, mut recv) = response.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.expect("trailers");
    RawResponse {
        status: parts.status,
        headers: parts.headers,
        body,
        trailers,
    }
}

/// Answers a raw stream as a gRPC server would: 200, `application/grpc` plus `headers`, the
/// given DATA, then trailers with `grpc-status: 0`.
pub fn respond_grpc(
    mut respond: h2::server::SendResponse<Bytes>,
    headers: &[(&str, &str)],
    data: Bytes,
) {
    let mut response = http::Response::builder().header("content-type", "application/grpc");
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    let mut send = respond
        .send_response(response.body(()).expect("valid response"), false)
        .expect("send headers");
    send.send_data(data, false).expect("send data");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers).expect("send trailers");
}

/// A raw HTTP/2 server on a localhost port that answers each request with `respond`.
pub fn raw_server<F>(respond: F) -> SocketAddr
where
    F: Fn(h2::server::SendResponse<Bytes>) + Send + Sync + 'static,
{
    let listener = std::net::TcpListener::bind(localhost()).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let respond = respond.clone();
            std::thread::spawn(move || {
                async_io::block_on(async move {
                    let stream = async_io::Async::new(stream).expect("async");
                    let Ok(mut conn) =
                        h2::server::handshake(anygrpc_rt::H2Io::new(anygrpc_rt::box_io(stream)))
                            .await
                    else {
                        return;
                    };
                    while let Some(Ok((_request, send))) = conn.accept().await {
                        respond(send);
                    }
                });
            });
        }
    });
    addr
}
