//! All four call types, metadata both ways, error statuses, interceptors, the generic API.

use anygrpc::{
    client::{request_channel, Grpc, RequestClosed},
    interceptor::CallHead,
    rt::block_on,
    BytesCodec, Code, MetadataMap, Request, Status,
};
use anygrpc_integration_tests::*;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

fn payload(body: &[u8]) -> Payload {
    Payload {
        body: body.to_vec(),
        ..Payload::default()
    }
}

#[test]
fn unary_with_metadata_both_ways() {
    let server = start();
    let client = server.client();
    block_on(async {
        let mut request = Request::new(payload(b"hi"));
        let md = request.metadata_mut();
        md.insert("x-echo-text", "some text").unwrap();
        md.insert_bin("x-echo-blob-bin", &[0, 1, 2, 255]).unwrap();
        md.insert("x-echo-trailer-t", "trailing").unwrap();
        md.insert_bin("x-echo-trailer-b-bin", b"\xfe\xff").unwrap();
        md.insert("x-not-echoed", "no").unwrap();
        let response = client.unary(request).await.unwrap();
        assert_eq!(response.get_ref().body, b"hi");
        assert_eq!(response.metadata().get("x-echo-text"), Some("some text"));
        assert_eq!(
            response
                .metadata()
                .get_bin("x-echo-blob-bin")
                .unwrap()
                .unwrap(),
            vec![0, 1, 2, 255]
        );
        assert!(response.metadata().get("x-not-echoed").is_none());
        assert_eq!(
            response.trailers().get("x-echo-trailer-t"),
            Some("trailing")
        );
        assert_eq!(
            response
                .trailers()
                .get_bin("x-echo-trailer-b-bin")
                .unwrap()
                .unwrap(),
            b"\xfe\xff"
        );
        assert!(
            response.trailers().get("grpc-status").is_none(),
            "protocol headers stay out of metadata"
        );
    });
}

#[test]
fn server_streaming_delivers_every_message_in_order() {
    let server = start();
    let client = server.client();
    block_on(async {
        let mut request = Request::new(Payload {
            count: 200,
            response_size: 3000,
            ..Payload::default()
        });
        request
            .metadata_mut()
            .insert("x-echo-trailer-done", "yes")
            .unwrap();
        request.metadata_mut().insert("x-echo-head", "h").unwrap();
        let response = client.server_stream(request).await.unwrap();
        assert_eq!(response.metadata().get("x-echo-head"), Some("h"));
        let mut stream = response.into_inner();
        let headers = stream.headers().await.unwrap();
        assert_eq!(
            headers.get("x-echo-head"),
            Some("h"),
            "the stream has them too"
        );
        let mut n = 0;
        while let Some(message) = stream.message().await.unwrap() {
            assert_eq!(message.count, n);
            assert_eq!(message.body, vec![n as u8; 3000]);
            n += 1;
        }
        assert_eq!(n, 200);
        let trailers = stream.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("x-echo-trailer-done"), Some("yes"));
    });
}

#[test]
fn server_streaming_with_no_messages() {
    let server = start();
    let client = server.client();
    block_on(async {
        let mut stream = client
            .server_stream(Payload::default())
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_none());
    });
}

#[test]
fn client_streaming_aggregates() {
    let server = start();
    let client = server.client();
    block_on(async {
        let messages = (0..50).map(|i| payload(&vec![1; i]));
        let response = client
            .client_stream(futures_util::stream::iter(messages))
            .await
            .unwrap();
        assert_eq!(response.get_ref().count, 50);
        assert_eq!(response.get_ref().response_size, (0..50).sum::<u32>());
        let empty = client
            .client_stream(futures_util::stream::iter(Vec::<Payload>::new()))
            .await
            .unwrap();
        assert_eq!(empty.get_ref().count, 0);
    });
}

/// Twenty round trips on a bidi call, each request sent by `send`.
async fn ping_pong(replies: &mut anygrpc::Streaming<Payload>, mut send: impl AsyncFnMut(Payload)) {
    for i in 0..20u8 {
        send(payload(&[i])).await;
        assert_eq!(replies.message().await.unwrap().unwrap().body, vec![i]);
    }
}

#[test]
fn bidi_ping_pong() {
    let server = start();
    let client = server.client();
    block_on(async {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        ping_pong(&mut replies, async |p| tx.unbounded_send(p).unwrap()).await;
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    });
}

#[test]
fn bidi_over_a_request_channel_sends_from_the_callers_task() {
    let server = start();
    let client = server.client();
    block_on(async {
        let (mut tx, rx) = request_channel(4);
        // Sent before the call starts: queued, then sent as the call takes the channel.
        tx.send(payload(b"first")).await.unwrap();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().body, b"first");
        ping_pong(&mut replies, async |p| tx.send(p).await.unwrap()).await;
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    });
}

#[test]
fn client_streaming_over_a_request_channel() {
    let server = start();
    let client = server.client();
    block_on(async {
        let (mut tx, rx) = request_channel(1);
        let send = async move {
            for i in 0..50 {
                tx.send(payload(&vec![1; i])).await.unwrap();
            }
        };
        let (response, ()) = futures_util::join!(client.client_stream(rx), send);
        let response = response.unwrap();
        assert_eq!(response.get_ref().count, 50);
        assert_eq!(response.get_ref().response_size, (0..50).sum::<u32>());
    });
}

#[test]
fn a_request_channel_closes_when_its_call_fails() {
    let server = start();
    let client = server.client();
    block_on(async {
        let (mut tx, rx) = request_channel(1);
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        let abort = Payload {
            status_code: Code::Aborted as i32,
            status_message: "stop".into(),
            ..Payload::default()
        };
        tx.send(abort).await.unwrap();
        let err = replies.message().await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Aborted, "stop"));
        assert_eq!(tx.send(payload(b"late")).await, Err(RequestClosed));
    });
}

#[test]
fn an_oversized_message_on_a_request_channel_fails_the_call() {
    let server = start();
    let client = server.client().max_send_message_size(100);
    block_on(async {
        let (mut tx, rx) = request_channel(1);
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        tx.send(payload(b"small")).await.unwrap();
        assert_eq!(replies.message().await.unwrap().unwrap().body, b"small");
        assert_eq!(tx.send(payload(&[0; 200])).await, Err(RequestClosed));
        let err = replies.message().await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    });
}

#[test]
fn flow_control_holds_back_a_request_channel_sender() {
    let server = start();
    let client = server.client();
    block_on(async {
        let (mut tx, rx) = request_channel(1);
        let _replies = client.bidi(rx).await.unwrap().into_inner();
        // The handler stops reading after this message, so the stream's window is never
        // released: sends must stop completing once it is used up.
        let hang = Payload {
            hang: true,
            ..Payload::default()
        };
        tx.send(hang).await.unwrap();
        let chunk = 64 * 1024;
        let mut sent = 0usize;
        while sent < 256 << 20 {
            if tx.send(payload(&vec![7; chunk])).now_or_never().is_none() {
                break;
            }
            sent += chunk;
        }
        println!("{sent} bytes taken before the sender waited");
        assert!(
            sent < 64 << 20,
            "{sent} bytes were taken with the reader stopped"
        );
    });
}

#[test]
fn error_status_carries_message_details_and_metadata() {
    let server = start();
    let client = server.client();
    block_on(async {
        let message = "not found: ünïcödé 100% \r\n\t";
        let err = client
            .unary(Payload {
                status_code: Code::NotFound as i32,
                status_message: message.into(),
                body: b"\x08\x05details".to_vec(),
                ..Payload::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), message);
        assert_eq!(&err.details()[..], b"\x08\x05details");
        assert_eq!(err.metadata().get("x-error-md"), Some("error-value"));

        let err = client
            .server_stream(Payload {
                status_code: Code::PermissionDenied as i32,
                ..Payload::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    });
}

#[test]
fn error_after_messages_in_a_stream() {
    let server = start();
    let client = server.client();
    block_on(async {
        let requests = vec![
            payload(b"ok"),
            Payload {
                status_code: Code::Aborted as i32,
                status_message: "stop".into(),
                ..Payload::default()
            },
        ];
        let mut replies = client
            .bidi(futures_util::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().body, b"ok");
        let err = replies.message().await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Aborted, "stop"));
        assert!(
            replies.next().await.is_none(),
            "the stream ends after its error"
        );
    });
}

#[test]
fn generic_calls_need_no_generated_code() {
    let server = start();
    let grpc = Grpc::new(server.channel());
    block_on(async {
        let body = Bytes::from(encode(&payload(b"raw")));
        let path = http::uri::PathAndQuery::from_static("/anygrpc.test.Test/Unary");
        let response = grpc
            .unary(path, BytesCodec, Request::new(body))
            .await
            .unwrap();
        let decoded: Payload = prost::Message::decode(response.into_inner()).unwrap();
        assert_eq!(decoded.body, b"raw");

        let missing_method = http::uri::PathAndQuery::from_static("/anygrpc.test.Test/Nope");
        let err = grpc
            .unary(missing_method, BytesCodec, Request::new(Bytes::new()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let missing_service = http::uri::PathAndQuery::from_static("/no.Such/Method");
        let err = grpc
            .unary(missing_service, BytesCodec, Request::new(Bytes::new()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    });
}

#[test]
fn ten_mib_messages_with_raised_limits() {
    let size = 10 << 20;
    let server = start_with(|s| s.max_recv_message_size(size + 100));
    let client = server.client().max_recv_message_size(size + 100);
    block_on(async {
        let mut request = Request::new(Payload {
            body: vec![7; size],
            response_size: size as u32,
            ..Payload::default()
        });
        request.set_timeout(std::time::Duration::from_secs(60));
        let response = client.unary(request).await.unwrap();
        assert_eq!(response.get_ref().body.len(), size);
    });
}

/// Large frames are encoded into buffers the channel and the server keep and reuse: waves of
/// concurrent calls of other sizes and bytes each get their own message back, byte for byte.
#[test]
fn large_messages_reuse_frame_buffers_and_come_back_intact() {
    let server = start_with(|s| s.frame_pool_limit(4 << 20));
    let client = server.client();
    block_on(async {
        for wave in 0..3u32 {
            let calls = (0..12u32).map(|i| {
                let client = client.clone();
                let size = 70_000 + ((i * 7 + wave * 5) % 12) as usize * 100_000;
                let body: Vec<u8> = (0..size).map(|n| (n as u32 ^ i ^ wave) as u8).collect();
                async move {
                    let reply = client.unary(payload(&body)).await.unwrap();
                    assert!(reply.get_ref().body == body, "call {i} of wave {wave}");
                }
            });
            futures_util::future::join_all(calls).await;
        }
    });
}

#[test]
fn many_concurrent_calls_share_one_connection() {
    let server = start();
    let client = server.client();
    block_on(async {
        let calls = (0..300u32).map(|i| {
            let client = client.clone();
            async move {
                let reply = client.unary(payload(&i.to_be_bytes())).await.unwrap();
                assert_eq!(reply.get_ref().body, i.to_be_bytes());
            }
        });
        futures_util::future::join_all(calls).await;
    });
}

struct AddHeader;

impl anygrpc::interceptor::AsyncInterceptor for AddHeader {
    fn intercept<'a>(
        &'a self,
        call: &'a mut CallHead,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            call.metadata_mut()
                .insert("x-echo-async", "added")
                .map_err(Status::from)
        })
    }
}

#[test]
fn client_and_server_interceptors_sync_and_async() {
    let server = start_with(|s| {
        s.interceptor(
            |call: &mut CallHead| match call.metadata().get("authorization") {
                Some("Bearer good") => Ok(()),
                _ => Err(Status::unauthenticated("missing or bad token")),
            },
        )
    });
    let authorized = anygrpc::Channel::builder(&server.target())
        .interceptor(|call: &mut CallHead| {
            call.metadata_mut()
                .insert("authorization", "Bearer good")
                .map_err(Status::from)
        })
        .async_interceptor(AddHeader)
        .connect_lazy()
        .unwrap();
    block_on(async {
        let response = TestClient::new(authorized)
            .unary(payload(b"x"))
            .await
            .unwrap();
        assert_eq!(response.metadata().get("x-echo-async"), Some("added"));
        let err = server.client().unary(payload(b"x")).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unauthenticated, "missing or bad token")
        );
    });
    let rejecting = anygrpc::Channel::builder(&server.target())
        .interceptor(|_: &mut CallHead| Err(Status::cancelled("client says no")))
        .connect_lazy()
        .unwrap();
    let err = block_on(TestClient::new(rejecting).unary(payload(b"x"))).unwrap_err();
    assert_eq!(err.code(), Code::Cancelled);
}

#[test]
fn metadata_keys_are_validated() {
    let mut md = MetadataMap::new();
    assert!(md.insert("Upper", "v").is_err());
    assert!(md.insert("bad key", "v").is_err());
    assert!(md.insert("grpc-custom", "v").is_err());
    assert!(md.insert("x-ok", "line\nbreak").is_err());
    assert!(md.insert_bin("x-bin-without-suffix", b"v").is_err());
}

#[test]
fn bidi_call_returns_before_the_server_answers() {
    // A server that accepts the stream but sends nothing until it hears from the client (as the
    // gRPC C-core does): the call must hand back its stream rather than wait for headers.
    let addr = raw_server(|respond| {
        std::mem::forget(respond);
    });
    let client = TestClient::new(
        anygrpc::Channel::builder(&addr.to_string())
            .connect_lazy()
            .unwrap(),
    );
    block_on(async {
        let (_tx, rx) = futures_channel::mpsc::unbounded::<Payload>();
        let mut request = Request::new(rx);
        // If the call waited for the response head, this deadline would fail it.
        request.set_timeout(std::time::Duration::from_secs(20));
        let response = client.bidi(request).await;
        assert!(response.is_ok(), "{:?}", response.err());
    });
}
