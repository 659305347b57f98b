//! Shared pieces of the anygrpc examples: the generated code and a small echo service.

use anygrpc::{
    error_details::{BadRequest, StatusExt},
    Request, Response, ResponseStream, Status, Streaming,
};
use futures_util::StreamExt;

/// Generated code for `echo.proto`.
pub mod echo {
    include!(concat!(env!("OUT_DIR"), "/anygrpc.examples.echo.rs"));
}

/// Generated code for `route_guide.proto`.
pub mod routeguide {
    include!(concat!(env!("OUT_DIR"), "/anygrpc.examples.routeguide.rs"));
}

use echo::{EchoRequest, EchoResponse};

/// An echo service implementing all four call shapes. A unary call with an empty message fails
/// with `INVALID_ARGUMENT` and a `google.rpc.BadRequest` detail.
#[derive(Debug, Default)]
pub struct EchoService;

impl echo::echo_server::Echo for EchoService {
    async fn unary_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let message = request.into_inner().message;
        if message.is_empty() {
            // The rich error model: any gRPC client can read the typed detail.
            return Err(Status::with_error_details(
                anygrpc::Code::InvalidArgument,
                "nothing to echo",
                [BadRequest::field("message", "must not be empty").into()],
            ));
        }
        Ok(Response::new(EchoResponse { message }))
    }

    async fn server_streaming_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ResponseStream<EchoResponse>>, Status> {
        let EchoRequest { message, repeat } = request.into_inner();
        let replies = (0..repeat).map(move |i| {
            Ok(EchoResponse {
                message: format!("{message} #{i}"),
            })
        });
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }

    async fn client_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        let mut requests = request.into_inner();
        let mut parts = Vec::new();
        while let Some(request) = requests.message().await? {
            parts.push(request.message);
        }
        Ok(Response::new(EchoResponse {
            message: parts.join(" "),
        }))
    }

    async fn bidirectional_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ResponseStream<EchoResponse>>, Status> {
        let replies = request
            .into_inner()
            .map(|request| request.map(|r| EchoResponse { message: r.message }));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Starts an echo server on an ephemeral localhost port, on the default runtime; returns its
/// address and a sender that shuts it down.
pub fn start_echo_server(
) -> std::io::Result<(std::net::SocketAddr, futures_channel::oneshot::Sender<()>)> {
    start_server(localhost(), |server| server)
}

/// `127.0.0.1:0`.
pub fn localhost() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts an echo server on `addr`, with whatever else `configure` adds, serving on its own
/// thread; returns its address and a sender that shuts it down.
pub fn start_server(
    addr: std::net::SocketAddr,
    configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server,
) -> std::io::Result<(std::net::SocketAddr, futures_channel::oneshot::Sender<()>)> {
    let server = configure(
        anygrpc::Server::builder().add_service(echo::echo_server::EchoServer::new(EchoService)),
    )
    .bind(addr)?;
    let addr = match server.local_addr()? {
        anygrpc::rt::Address::Tcp(addr) => addr,
        other => return Err(std::io::Error::other(format!("unexpected address {other}"))),
    };
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        anygrpc::rt::block_on(server.serve_with_shutdown(async {
            let _ = stopped.await;
        }))
    });
    Ok((addr, stop))
}

/// A server interceptor that counts the calls it sees, and the counter.
pub fn call_counter() -> (
    impl anygrpc::interceptor::Interceptor,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let interceptor = move |_: &mut anygrpc::interceptor::CallHead| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    (interceptor, calls)
}

/// Runs the four call shapes against `channel`, printing each result.
pub async fn run_echo_client(channel: anygrpc::Channel) -> Result<(), Status> {
    let client = echo::echo_client::EchoClient::new(channel);

    let reply = client
        .unary_echo(EchoRequest {
            message: "hello".into(),
            repeat: 0,
        })
        .await?;
    println!("unary: {}", reply.get_ref().message);

    let mut stream = client
        .server_streaming_echo(EchoRequest {
            message: "tick".into(),
            repeat: 3,
        })
        .await?
        .into_inner();
    while let Some(reply) = stream.message().await? {
        println!("server streaming: {}", reply.message);
    }

    let words = ["one", "two", "three"].map(|w| EchoRequest {
        message: w.into(),
        repeat: 0,
    });
    let reply = client
        .client_streaming_echo(futures_util::stream::iter(words))
        .await?;
    println!("client streaming: {}", reply.get_ref().message);

    let (tx, rx) = futures_channel::mpsc::unbounded();
    let mut replies = client.bidirectional_streaming_echo(rx).await?.into_inner();
    for word in ["ping", "pong"] {
        tx.unbounded_send(EchoRequest {
            message: word.into(),
            repeat: 0,
        })
        .map_err(|_| Status::internal("request stream closed"))?;
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| Status::internal("reply stream ended early"))?;
        println!("bidi: {}", reply.message);
    }
    drop(tx);
    if replies.message().await?.is_some() {
        return Err(Status::internal("unexpected extra reply"));
    }
    Ok(())
}
