//! Observability over real sockets: channelz counts and trees, reflection answering from the
//! generated descriptors, and rich error details through the trailers.

use anygrpc::{
    channelz::{
        proto::{
            channel_connectivity_state::State, channelz_client::ChannelzClient, GetChannelRequest,
            GetServerRequest, GetServerSocketsRequest, GetSocketRequest, GetSubchannelRequest,
            GetTopChannelsRequest,
        },
        ChannelzService,
    },
    client::Grpc,
    codegen::PathAndQuery,
    error_details::{BadRequest, ErrorDetail, ErrorInfo, StatusExt},
    reflection::{
        self, FileDescriptorResponse, MessageRequest, MessageResponse, ServerReflectionRequest,
        ServerReflectionResponse,
    },
    rt::block_on,
    Channel, Code, ProstCodec, Request,
};
use anygrpc_integration_tests::*;
use futures_util::StreamExt;
use prost::Message;

#[test]
fn channelz_shows_a_channel_its_subchannels_and_their_call_counts() {
    let (server, events) = test_server();
    let bound = server
        .add_service(ChannelzService::server())
        .bind(localhost())
        .unwrap();
    let server_id = bound.channelz_id();
    let a = run(bound, events);
    let b = start();
    let target = format!("ipv4:{},{}", a.target(), b.target());
    let channel = Channel::builder(&target)
        .load_balancing_policy("round_robin")
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    block_on(async {
        for _ in 0..4 {
            client.unary(Payload::default()).await.unwrap();
        }
        for _ in 0..2 {
            let failing = Payload {
                status_code: Code::NotFound as i32,
                ..Payload::default()
            };
            client.unary(failing).await.unwrap_err();
        }
        let streamed = Payload {
            count: 3,
            ..Payload::default()
        };
        let mut stream = client.server_stream(streamed).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
        // A stream the client drops before its end is a failed call.
        let abandoned = client.bidi(futures_util::stream::pending()).await.unwrap();
        drop(abandoned);

        let channelz = ChannelzClient::new(a.channel());
        let id = channel.channelz_id();
        let top = channelz
            .get_top_channels(GetTopChannelsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(top.end);
        assert!(top
            .channel
            .iter()
            .any(|c| c.r#ref.as_ref().unwrap().channel_id == id));

        let request = GetChannelRequest { channel_id: id };
        let found = channelz.get_channel(request).await.unwrap().into_inner();
        let found = found.channel.unwrap();
        let data = found.data.unwrap();
        assert_eq!(data.target, target);
        assert_eq!(data.state.unwrap().state, State::Ready as i32);
        assert_eq!(
            (data.calls_started, data.calls_succeeded, data.calls_failed),
            (8, 5, 3)
        );
        assert!(data.last_call_started_timestamp.is_some());
        let trace = data.trace.unwrap();
        assert!(trace
            .events
            .iter()
            .any(|e| e.description == "Channel state changed to Ready"));
        assert_eq!(found.subchannel_ref.len(), 2, "one subchannel per address");

        let mut attempts = (0, 0, 0);
        for subchannel_ref in found.subchannel_ref {
            let request = GetSubchannelRequest {
                subchannel_id: subchannel_ref.subchannel_id,
            };
            let subchannel = channelz.get_subchannel(request).await.unwrap().into_inner();
            let subchannel = subchannel.subchannel.unwrap();
            let data = subchannel.data.unwrap();
            assert!([a.target(), b.target()].contains(&data.target));
            attempts.0 += data.calls_started;
            attempts.1 += data.calls_succeeded;
            attempts.2 += data.calls_failed;
            if data.calls_started == 0 {
                continue;
            }
            // A subchannel that carried calls is connected, over one socket that counts the
            // same streams.
            assert_eq!(data.state.unwrap().state, State::Ready as i32);
            assert_eq!(subchannel.socket_ref.len(), 1);
            let request = GetSocketRequest {
                socket_id: subchannel.socket_ref[0].socket_id,
                summary: false,
            };
            let socket = channelz.get_socket(request).await.unwrap().into_inner();
            let socket = socket.socket.unwrap().data.unwrap();
            assert_eq!(
                (socket.streams_started, socket.streams_succeeded),
                (data.calls_started, data.calls_succeeded)
            );
        }
        assert_eq!(attempts, (8, 5, 3), "every call made one attempt");

        let request = GetServerRequest { server_id };
        let server = channelz.get_server(request).await.unwrap().into_inner();
        let server = server.server.unwrap();
        assert!(server.data.unwrap().calls_started >= 1);
        assert_eq!(server.listen_socket.len(), 1);
        let request = GetServerSocketsRequest {
            server_id,
            ..Default::default()
        };
        let sockets = channelz.get_server_sockets(request).await.unwrap();
        assert!(!sockets.into_inner().socket_ref.is_empty());

        let missing = channelz
            .get_channel(GetChannelRequest { channel_id: -1 })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    });
}

/// The test proto's descriptors, as the code generator embeds them.
fn reflection_server() -> Running {
    let reflection = reflection::Builder::new()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .unwrap()
        .build();
    start_with(|s| s.add_service(reflection.v1alpha()).add_service(reflection))
}

async fn ask(
    channel: &Channel,
    path: &'static str,
    questions: Vec<MessageRequest>,
) -> Vec<MessageResponse> {
    let requests =
        futures_util::stream::iter(
            questions
                .into_iter()
                .map(|question| ServerReflectionRequest {
                    host: "localhost".into(),
                    message_request: Some(question),
                }),
        );
    let codec = ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::new();
    let responses = Grpc::new(channel.clone())
        .streaming(
            PathAndQuery::from_static(path),
            codec,
            Request::new(requests),
        )
        .await
        .unwrap()
        .into_inner();
    responses
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.valid_host, "localhost");
            assert!(r.original_request.is_some());
            r.message_response.unwrap()
        })
        .collect()
        .await
}

#[test]
fn reflection_lists_services_and_serves_their_files_under_both_names() {
    let server = reflection_server();
    let channel = server.channel();
    block_on(async {
        for path in [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            let answers = ask(
                &channel,
                path,
                vec![
                    MessageRequest::ListServices(String::new()),
                    MessageRequest::FileContainingSymbol("anygrpc.test.Test".into()),
                    MessageRequest::FileContainingSymbol("anygrpc.test.Nope".into()),
                ],
            )
            .await;
            let MessageResponse::ListServicesResponse(list) = &answers[0] else {
                panic!("{:?}", answers[0]);
            };
            let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["anygrpc.test.Test"]);
            let MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto,
            }) = &answers[1]
            else {
                panic!("{:?}", answers[1]);
            };
            let file =
                prost_types::FileDescriptorProto::decode(&file_descriptor_proto[0][..]).unwrap();
            assert_eq!(file.package(), "anygrpc.test");
            assert_eq!(file.service[0].name(), "Test");
            assert!(file.source_code_info.is_none());
            let MessageResponse::ErrorResponse(error) = &answers[2] else {
                panic!("{:?}", answers[2]);
            };
            assert_eq!(error.error_code, Code::NotFound as i32);
        }
    });
}

#[test]
fn rich_error_details_reach_the_client_as_typed_values() {
    let server = start_with(|s| {
        s.interceptor(|head: &mut anygrpc::interceptor::CallHead| {
            if head.metadata().get("x-reject").is_none() {
                return Ok(());
            }
            Err(anygrpc::Status::with_error_details(
                Code::InvalidArgument,
                "name is empty",
                [
                    BadRequest::field("name", "must not be empty").into(),
                    ErrorInfo {
                        reason: "EMPTY_NAME".into(),
                        domain: "anygrpc.test".into(),
                        ..Default::default()
                    }
                    .into(),
                ],
            ))
        })
    });
    let client = server.client();
    block_on(async {
        let mut request = Request::new(Payload::default());
        request.metadata_mut().insert("x-reject", "1").unwrap();
        let status = client.unary(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "name is empty");
        let bad_request: BadRequest = status.get_detail().unwrap();
        assert_eq!(bad_request.field_violations[0].field, "name");
        assert_eq!(
            bad_request.field_violations[0].description,
            "must not be empty"
        );
        let details = status.error_details().unwrap();
        assert!(matches!(&details[1], ErrorDetail::ErrorInfo(info) if info.reason == "EMPTY_NAME"));
    });
}
