//! Every bad input ends in a clear status: no panic, no hang, bounded memory.

use std::io::Write;

use anygrpc::{rt::block_on, Code, Request};
use anygrpc_integration_tests::*;
use bytes::Bytes;
use http::HeaderValue;

const UNARY: &str = "/anygrpc.test.Test/Unary";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// 1 GiB of zeros, gzip-compressed (about 1 MiB on the wire).
fn gzip_bomb() -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap()
}

#[test]
fn oversized_request_is_resource_exhausted() {
    let server = start_with(|s| s.max_recv_message_size(1024));
    let client = server.client();
    let err = block_on(client.unary(Payload {
        body: vec![0; 2000],
        ..Payload::default()
    }))
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // The connection is still usable.
    assert!(block_on(client.unary(Payload::default())).is_ok());
}

#[test]
fn oversized_response_is_resource_exhausted() {
    let server = start();
    let client = server.client().max_recv_message_size(1024);
    let err = block_on(client.unary(Payload {
        response_size: 2000,
        ..Payload::default()
    }))
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[test]
fn oversized_send_fails_locally() {
    let server = start();
    let client = server.client().max_send_message_size(100);
    let err = block_on(client.unary(Payload {
        body: vec![0; 200],
        ..Payload::default()
    }))
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let stream = futures_util::stream::iter(vec![Payload {
        body: vec![0; 200],
        ..Payload::default()
    }]);
    let err = block_on(client.client_stream(stream)).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[test]
fn compression_bomb_to_server_is_bounded() {
    let server = start();
    let bomb = gzip_bomb();
    assert!(bomb.len() < 2 << 20);
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(&server.addr, UNARY, &[("grpc-encoding", "gzip")]);
        let response = raw_call(&mut send, request, frame(true, &bomb)).await;
        assert_eq!(
            response.grpc_status().unwrap().code(),
            Code::ResourceExhausted
        );
    });
}

#[test]
fn compression_bomb_to_client_is_bounded() {
    let bomb = frame(true, &gzip_bomb());
    let addr = raw_server(move |respond| {
        respond_grpc(respond, &[("grpc-encoding", "gzip")], bomb.clone())
    });
    let client = TestClient::new(
        anygrpc::Channel::builder(&addr.to_string())
            .connect_lazy()
            .unwrap(),
    );
    let err = block_on(client.unary(Payload::default())).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[test]
fn compressed_messages_round_trip() {
    let server = start_with(|s| s.send_compression("gzip"));
    let client = server.client().send_compression("gzip");
    let response = block_on(client.unary(Payload {
        body: vec![b'z'; 100_000],
        response_size: 50_000,
        ..Payload::default()
    }))
    .unwrap();
    assert_eq!(response.get_ref().body.len(), 50_000);
    let deflate = server.client().send_compression("deflate");
    assert!(block_on(deflate.unary(Payload::default())).is_ok());
    // A compressed request the server must decompress, sent by hand.
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let body = encode(&Payload {
            body: b"squeezed".to_vec(),
            ..Payload::default()
        });
        let request = raw_request(
            &server.addr,
            UNARY,
            &[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")],
        );
        let response = raw_call(&mut send, request, frame(true, &gzip(&body))).await;
        assert_eq!(response.grpc_status().unwrap().code(), Code::Ok);
        assert_eq!(
            response.headers["grpc-encoding"], "gzip",
            "server compresses when the client accepts it"
        );
        assert_eq!(response.body[0], 1, "compressed flag set");
    });
}

#[test]
fn unsupported_request_encoding_is_unimplemented_with_accept_encoding() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(&server.addr, UNARY, &[("grpc-encoding", "snappy")]);
        let response = raw_call(&mut send, request, frame(true, b"whatever")).await;
        assert_eq!(response.grpc_status().unwrap().code(), Code::Unimplemented);
        let accept = response.headers["grpc-accept-encoding"].to_str().unwrap();
        assert!(
            accept.contains("gzip") && accept.contains("deflate"),
            "{accept}"
        );
    });
}

#[test]
fn unsupported_response_encoding_is_internal_at_the_client() {
    let addr = raw_server(|respond| {
        respond_grpc(
            respond,
            &[("grpc-encoding", "snappy")],
            frame(true, b"????"),
        )
    });
    let client = TestClient::new(
        anygrpc::Channel::builder(&addr.to_string())
            .connect_lazy()
            .unwrap(),
    );
    let err = block_on(client.unary(Payload::default())).unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
}

#[test]
fn compressed_flag_without_encoding_and_bad_flags_are_internal() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(&mut send, request, frame(true, &gzip(b"x"))).await;
        assert_eq!(response.grpc_status().unwrap().code(), Code::Internal);

        let mut bad_flag = frame(false, b"").to_vec();
        bad_flag[0] = 2;
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(&mut send, request, Bytes::from(bad_flag)).await;
        assert_eq!(response.grpc_status().unwrap().code(), Code::Internal);
    });
}

#[test]
fn truncated_and_missing_messages_are_internal() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let whole = frame(false, &encode(&Payload::default()));
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(
            &mut send,
            request,
            Bytes::from_static(&[0, 0, 0, 0, 9, 1, 2]),
        )
        .await;
        assert_eq!(response.grpc_status().unwrap().code(), Code::Internal);
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(&mut send, request, Bytes::new()).await;
        assert_eq!(
            response.grpc_status().unwrap().code(),
            Code::Internal,
            "unary needs a message"
        );
        let two = [whole.clone(), whole].concat();
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(&mut send, request, Bytes::from(two)).await;
        assert_eq!(
            response.grpc_status().unwrap().code(),
            Code::Internal,
            "unary takes one message"
        );
        let request = raw_request(&server.addr, UNARY, &[]);
        let response = raw_call(&mut send, request, frame(false, b"\xff\xff\xff")).await;
        assert_eq!(
            response.grpc_status().unwrap().code(),
            Code::Internal,
            "undecodable protobuf"
        );
    });
}

#[test]
fn bad_grpc_timeout_is_internal() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        for bad in ["1x", "123456789S", "S", "-5m"] {
            let request = raw_request(&server.addr, UNARY, &[("grpc-timeout", bad)]);
            let response = raw_call(&mut send, request, frame(false, b"")).await;
            assert_eq!(
                response.grpc_status().unwrap().code(),
                Code::Internal,
                "{bad}"
            );
        }
    });
}

#[test]
fn a_binary_value_that_is_not_base64_is_internal_both_ways() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(&server.addr, UNARY, &[("x-trace-bin", "no base64!")]);
        let response = raw_call(&mut send, request, frame(false, b"")).await;
        let status = response.grpc_status().unwrap();
        assert_eq!(status.code(), Code::Internal, "{status}");
    });

    let reply = frame(false, &encode(&Payload::default()));
    let in_headers = raw_server(move |respond| {
        respond_grpc(respond, &[("x-trace-bin", "no base64!")], reply.clone());
    });
    let reply = frame(false, &encode(&Payload::default()));
    let in_trailers = raw_server(move |mut respond| {
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut send = respond.send_response(head, false).unwrap();
        send.send_data(reply.clone(), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trace-bin", HeaderValue::from_static("AQ,**"));
        send.send_trailers(trailers).unwrap();
    });
    for addr in [in_headers, in_trailers] {
        let channel = anygrpc::Channel::builder(&addr.to_string())
            .connect_lazy()
            .unwrap();
        let err = block_on(TestClient::new(channel).unary(Payload::default())).unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err}");
        assert!(err.message().contains("x-trace-bin"), "{err}");
    }
}

#[test]
fn wrong_content_type_is_http_415() {
    let server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let mut request = raw_request(&server.addr, UNARY, &[]);
        request
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        let response = raw_call(&mut send, request, Bytes::from_static(b"{}")).await;
        assert_eq!(response.status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let mut request = raw_request(&server.addr, UNARY, &[]);
        *request.method_mut() = http::Method::PUT;
        let response = raw_call(&mut send, request, Bytes::new()).await;
        assert_eq!(response.status, http::StatusCode::METHOD_NOT_ALLOWED);
    });
}

#[test]
fn non_grpc_responses_map_to_statuses() {
    for (status, content_type, code) in [
        (200, "text/html", Code::Unknown),
        (503, "text/html", Code::Unavailable),
        (404, "text/plain", Code::Unimplemented),
        (401, "application/grpc", Code::Unauthenticated),
    ] {
        let addr = raw_server(move |mut respond| {
            let response = http::Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(())
                .unwrap();
            let _ = respond.send_response(response, true);
        });
        let client = TestClient::new(
            anygrpc::Channel::builder(&addr.to_string())
                .connect_lazy()
                .unwrap(),
        );
        let err = block_on(client.unary(Payload::default())).unwrap_err();
        assert_eq!(err.code(), code, "HTTP {status} {content_type}: {err}");
    }
}

#[test]
fn peer_resetting_mid_stream_is_a_status() {
    for (reason, code) in [
        (h2::Reason::INTERNAL_ERROR, Code::Internal),
        (h2::Reason::REFUSED_STREAM, Code::Unavailable),
        (h2::Reason::CANCEL, Code::Cancelled),
        (h2::Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
    ] {
        let addr = raw_server(move |mut respond| {
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let mut send = respond.send_response(response, false).unwrap();
            send.send_data(frame(false, &encode(&Payload::default())), false)
                .unwrap();
            send.send_reset(reason);
        });
        let client = TestClient::new(
            anygrpc::Channel::builder(&addr.to_string())
                .connect_lazy()
                .unwrap(),
        );
        // The reset may be seen before the headers, or before or after the message; the
        // call must end in the reset's status in every case.
        let err = block_on(async {
            let mut stream = client.server_stream(Payload::default()).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, anygrpc::Status>(())
        })
        .unwrap_err();
        assert_eq!(err.code(), code, "{reason:?}: {err}");
    }
}

#[test]
fn client_resetting_mid_stream_cancels_the_handler() {
    let mut server = start();
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(&server.addr, "/anygrpc.test.Test/ClientStream", &[]);
        let (_response, mut stream) = send.send_request(request, false).unwrap();
        let hang = Payload {
            hang: true,
            ..Payload::default()
        };
        stream
            .send_data(frame(false, &encode(&hang)), false)
            .unwrap();
        assert!(matches!(server.next_event().await, Event::Started(None)));
        stream.send_reset(h2::Reason::CANCEL);
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn oversized_metadata_is_rejected_with_a_status() {
    let server = start();
    let client = server.client();
    let mut request = Request::new(Payload::default());
    request
        .metadata_mut()
        .insert("x-big", &"v".repeat(20 * 1024))
        .unwrap();
    let err = block_on(client.unary(request)).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // A peer that ignores the limit is refused by the server's HTTP/2 layer.
    block_on(async {
        let mut send = raw_client(&server.addr).await;
        let big = "v".repeat(20 * 1024);
        let request = raw_request(&server.addr, UNARY, &[("x-big", big.as_str())]);
        let (response, _stream) = send.send_request(request, true).unwrap();
        match response.await {
            Ok(response) => assert_eq!(
                response.status(),
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(err) => assert!(err.reason().is_some(), "{err}"),
        }
    });
    assert!(
        block_on(client.unary(Payload::default())).is_ok(),
        "server still serves"
    );
}

/// Both builders refuse a send compression their registry cannot make, in the same words.
#[test]
fn a_send_compression_outside_the_registry_is_refused_by_both_builders() {
    let channel = anygrpc::Channel::builder("localhost:1")
        .send_compression("zstd")
        .connect_lazy()
        .unwrap_err();
    assert_eq!(channel.code(), Code::InvalidArgument, "{channel}");
    let server = anygrpc::Server::builder()
        .send_compression("zstd")
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap_err();
    assert_eq!(server.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(server.to_string(), channel.to_string());
}
