//! Observability: an echo server with reflection (v1 and v1alpha), channelz and health, and a
//! client that reads a rich error, lists the services through reflection, fetches their
//! descriptors, and reads its own channel's counters through channelz.
//!
//! `cargo run -p anygrpc-examples --bin observability` runs both in one process;
//! `-- --serve 127.0.0.1:50051` runs only the server, for `grpcurl` or Python's
//! `grpcio-reflection` (it prints `listening on ADDR` once bound).

use anygrpc::{
    channelz::{
        proto::{channelz_client::ChannelzClient, GetChannelRequest},
        ChannelzService,
    },
    client::Grpc,
    codegen::PathAndQuery,
    error_details::{BadRequest, StatusExt},
    health::health_service,
    reflection::{self, MessageRequest, ServerReflectionRequest, ServerReflectionResponse},
    Channel, ProstCodec, Request, Status,
};
use anygrpc_examples::echo::{echo_client::EchoClient, EchoRequest, FILE_DESCRIPTOR_SET};
use futures_util::StreamExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let serve_only = args.get(1).map(String::as_str) == Some("--serve");
    let addr = match args.get(2) {
        Some(addr) if serve_only => addr.parse()?,
        _ => anygrpc_examples::localhost(),
    };
    let (reporter, health) = health_service();
    reporter.set_serving("anygrpc.examples.echo.Echo");
    let reflection = reflection::Builder::new()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)?
        .register_encoded_file_descriptor_set(anygrpc::channelz::proto::FILE_DESCRIPTOR_SET)?
        .build();
    let (addr, stop) = anygrpc_examples::start_server(addr, |server| {
        server
            .add_service(health)
            .add_service(ChannelzService::server())
            .add_service(reflection.v1alpha())
            .add_service(reflection)
    })?;
    println!("listening on {addr}");
    if serve_only {
        // Serve until killed.
        loop {
            std::thread::park();
        }
    }
    let channel = Channel::builder(&addr.to_string()).connect_lazy()?;
    anygrpc::rt::block_on(client(channel))?;
    let _ = stop.send(());
    println!("observability OK");
    Ok(())
}

async fn client(channel: Channel) -> Result<(), Status> {
    let echo = EchoClient::new(channel.clone());
    let hello = EchoRequest {
        message: "hello".into(),
        repeat: 0,
    };
    echo.unary_echo(hello).await?;
    let status = echo.unary_echo(EchoRequest::default()).await.unwrap_err();
    let bad_request: BadRequest = status
        .get_detail()
        .ok_or_else(|| Status::internal("no BadRequest detail"))?;
    let violation = &bad_request.field_violations[0];
    println!(
        "error: {:?} {:?}, BadRequest: field {:?}: {}",
        status.code(),
        status.message(),
        violation.field,
        violation.description
    );

    let questions = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("anygrpc.examples.echo.Echo".into()),
    ]
    .map(|question| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(question),
    });
    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let mut answers = Grpc::new(channel.clone())
        .streaming(
            PathAndQuery::from_static(path),
            ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::new(),
            Request::new(futures_util::stream::iter(questions)),
        )
        .await?
        .into_inner();
    while let Some(answer) = answers.next().await {
        match answer?.message_response {
            Some(reflection::MessageResponse::ListServicesResponse(list)) => {
                for service in list.service {
                    println!("reflection: service {}", service.name);
                }
            }
            Some(reflection::MessageResponse::FileDescriptorResponse(files)) => println!(
                "reflection: {} file descriptor(s) for anygrpc.examples.echo.Echo",
                files.file_descriptor_proto.len()
            ),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    let channelz = ChannelzClient::new(channel.clone());
    let request = GetChannelRequest {
        channel_id: channel.channelz_id(),
    };
    let found = channelz.get_channel(request).await?.into_inner();
    let data = found
        .channel
        .and_then(|c| c.data)
        .ok_or_else(|| Status::internal("channel without data"))?;
    println!(
        "channelz: channel {} to {}: {} calls started, {} succeeded, {} failed",
        channel.channelz_id(),
        data.target,
        data.calls_started,
        data.calls_succeeded,
        data.calls_failed
    );
    Ok(())
}
