//! Dynamic calls: a client with no generated code finds the test service through reflection
//! and calls each kind of method by name, with messages built from protobuf JSON.

use anygrpc::{
    dynamic::{
        prost_reflect::{DescriptorPool, DynamicMessage},
        DynamicClient,
    },
    reflection,
    rt::block_on,
    Code, Request,
};
use anygrpc_integration_tests::*;
use futures_util::stream;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The test service, with reflection under `v1alpha` only or under both names.
fn server(v1: bool) -> Running {
    let reflection = reflection::Builder::new()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .unwrap()
        .build();
    start_with(|s| {
        let s = s.add_service(reflection.v1alpha());
        match v1 {
            true => s.add_service(reflection),
            false => s,
        }
    })
}

/// A dynamic client with the descriptors `server` reflects.
async fn reflected(server: &Running) -> DynamicClient {
    DynamicClient::from_reflection(server.channel())
        .await
        .unwrap()
}

#[test]
fn calls_each_kind_of_method_by_name_with_descriptors_from_reflection() {
    let server = server(true);
    block_on(async {
        let client = reflected(&server).await;
        let unary = client.method("anygrpc.test.Test/Unary").unwrap();
        assert_eq!(unary.input().full_name(), "anygrpc.test.Payload");
        // "aGk=" is "hi"; the server answers with `responseSize` bytes of 'r' ("cnJy").
        let request =
            DynamicClient::from_json(unary.input(), r#"{"body": "aGk=", "responseSize": 3}"#)
                .unwrap();
        let reply = client.unary(&unary, request.clone()).await.unwrap();
        assert_eq!(
            DynamicClient::to_json(reply.get_ref()).unwrap(),
            r#"{"body":"cnJy"}"#
        );
        // The other spellings of a method name.
        for name in ["/anygrpc.test.Test/Unary", "anygrpc.test.Test.Unary"] {
            assert_eq!(client.method(name).unwrap(), unary);
        }

        let streamed = client.method("anygrpc.test.Test/ServerStream").unwrap();
        let request =
            DynamicClient::from_json(streamed.input(), r#"{"count": 3, "responseSize": 1}"#)
                .unwrap();
        let mut replies = client
            .server_streaming(&streamed, request)
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(reply) = replies.message().await.unwrap() {
            seen.push(DynamicClient::to_json(&reply).unwrap());
        }
        // Message i has one byte of value i and `count` i (0 is left out of JSON).
        let want = [
            r#"{"body":"AA=="}"#,
            r#"{"body":"AQ==","count":1}"#,
            r#"{"body":"Ag==","count":2}"#,
        ];
        assert_eq!(seen, want);

        let body = |json: &str| DynamicClient::from_json(unary.input(), json).unwrap();
        let client_stream = client.method("anygrpc.test.Test/ClientStream").unwrap();
        let requests = stream::iter([body(r#"{"body": "YQ=="}"#), body(r#"{"body": "Yg=="}"#)]);
        let reply = client
            .client_streaming(&client_stream, requests)
            .await
            .unwrap();
        // The server counts the messages and their bytes.
        assert_eq!(
            DynamicClient::to_json(reply.get_ref()).unwrap(),
            r#"{"count":2,"responseSize":2}"#
        );

        let bidi = client.method("anygrpc.test.Test/Bidi").unwrap();
        let requests = stream::iter([body(r#"{"body": "YQ=="}"#), body(r#"{"body": "Yg=="}"#)]);
        let mut replies = client
            .streaming(&bidi, requests)
            .await
            .unwrap()
            .into_inner();
        let mut echoed = 0;
        while replies.message().await.unwrap().is_some() {
            echoed += 1;
        }
        assert_eq!(echoed, 2);
    });
}

#[test]
fn falls_back_to_v1alpha_reflection() {
    let server = server(false);
    block_on(async {
        let client = reflected(&server).await;
        assert!(client.method("anygrpc.test.Test/Bidi").is_ok());
    });
}

#[test]
fn bad_names_json_and_message_types_are_clear_errors() {
    let server = server(true);
    block_on(async {
        let client = reflected(&server).await;
        for (name, code) in [
            ("anygrpc.test.Test/Missing", Code::NotFound),
            ("anygrpc.test.Nothing/Unary", Code::NotFound),
            ("Unary", Code::InvalidArgument),
        ] {
            assert_eq!(client.method(name).unwrap_err().code(), code, "{name}");
        }
        let unary = client.method("anygrpc.test.Test/Unary").unwrap();
        for json in [r#"{"body": 3}"#, r#"{"nope": 1}"#, "{", r#"{} {}"#] {
            let error = DynamicClient::from_json(unary.input(), json).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{json}");
        }

        // A message of another type than the method takes never leaves the client.
        let other = FileDescriptorProto {
            name: Some("other.proto".into()),
            package: Some("other".into()),
            message_type: vec![DescriptorProto {
                name: Some("Thing".into()),
                ..DescriptorProto::default()
            }],
            ..FileDescriptorProto::default()
        };
        let pool =
            DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![other] })
                .unwrap();
        let thing = DynamicMessage::new(pool.get_message_by_name("other.Thing").unwrap());
        let status = client.unary(&unary, Request::new(thing)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("anygrpc.test.Payload"),
            "{status:?}"
        );
    });
    // A server without reflection: UNIMPLEMENTED under both names.
    let plain = start();
    block_on(async {
        let error = DynamicClient::from_reflection(plain.channel())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unimplemented);
    });
}
