//! What a server sees of the head a client sends: the `:authority` (the dialled host, or the
//! channel's override) and the `user-agent` (the default, or an application's prefix), and a
//! `passthrough:` target that reaches it.

use anygrpc::{
    middleware::{Call, Middleware, Next, Reply},
    rt::{block_on, BoxFuture},
    server::{ServerCall, Service},
    Channel, ProstCodec, Request, Response, Server,
};
use anygrpc_integration_tests::*;

/// Answers with the call's `:authority` and `user-agent` in response headers.
struct Reflect;

impl Middleware for Reflect {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        let authority = call.head().authority().unwrap_or("none").to_owned();
        let agent = call
            .head()
            .metadata()
            .get("user-agent")
            .unwrap_or("none")
            .to_owned();
        Box::pin(async move {
            let mut response = next.run(call).await?;
            response.metadata_mut().insert("x-authority", &authority)?;
            response.metadata_mut().insert("x-user-agent", &agent)?;
            Ok(response)
        })
    }
}

/// The `:authority` and `user-agent` the server saw for one call on `channel`.
fn seen(channel: Channel) -> (String, String) {
    let response = block_on(TestClient::new(channel).unary(Payload::default())).unwrap();
    let header = |key| response.metadata().get(key).unwrap().to_owned();
    (header("x-authority"), header("x-user-agent"))
}

#[test]
fn the_server_sees_the_authority_and_user_agent_the_channel_sends() {
    let server = start_with(|s| s.middleware(Reflect));
    let version = env!("CARGO_PKG_VERSION");
    let (authority, agent) = seen(server.channel());
    assert_eq!(authority, server.target(), "the dialled host:port");
    assert_eq!(agent, format!("grpc-rust-anygrpc/{version}"));

    let channel = Channel::builder(&server.target())
        .authority("api.test.example.com")
        .user_agent("my-app/1.2")
        .connect_lazy()
        .unwrap();
    let (authority, agent) = seen(channel);
    assert_eq!(authority, "api.test.example.com");
    assert_eq!(agent, format!("my-app/1.2 grpc-rust-anygrpc/{version}"));
}

#[test]
fn a_passthrough_target_reaches_the_server_by_its_address() {
    let server = start_with(|s| s.middleware(Reflect));
    let target = format!("passthrough:///{}", server.target());
    let channel = Channel::builder(&target).connect_lazy().unwrap();
    let (authority, _) = seen(channel);
    assert_eq!(authority, server.target());
}

/// A service whose one method answers with the `:authority` its handler read.
struct Authority;

impl Service for Authority {
    fn name(&self) -> &'static str {
        "head.Authority"
    }

    fn call(&self, _: &str, call: ServerCall) -> BoxFuture<'static, ()> {
        Box::pin(call.unary(
            ProstCodec::<Payload, Payload>::new(),
            |request: Request<Payload>| async move {
                let body = request.authority().unwrap_or("none").as_bytes().to_vec();
                Ok(Response::new(Payload {
                    body,
                    ..Payload::default()
                }))
            },
        ))
    }
}

#[test]
fn a_handler_reads_the_authority_from_its_request_with_or_without_middleware() {
    for with_middleware in [false, true] {
        let mut builder = Server::builder().add_service(Authority);
        if with_middleware {
            builder = builder.middleware(Reflect);
        }
        let server = builder.bind(localhost()).unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || block_on(server.serve()));
        let channel = Channel::builder(&addr.to_string())
            .authority("handler.test.example.com")
            .connect_lazy()
            .unwrap();
        let grpc = anygrpc::client::Grpc::new(channel);
        let path = http::uri::PathAndQuery::from_static("/head.Authority/Get");
        let codec = ProstCodec::<Payload, Payload>::new();
        let reply = block_on(grpc.unary(path, codec, Request::new(Payload::default()))).unwrap();
        assert_eq!(reply.get_ref().body, b"handler.test.example.com");
    }
}
