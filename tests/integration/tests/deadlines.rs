//! Deadlines and cancellation, observed on both sides through events (no sleeps).

use std::time::Duration;

use anygrpc::{rt::block_on, Code, Request};
use anygrpc_integration_tests::*;
use futures_util::{future::Either, StreamExt};

fn hang() -> Payload {
    Payload {
        hang: true,
        ..Payload::default()
    }
}

#[test]
fn client_deadline_fails_locally_and_server_cancels_handler() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        let mut request = Request::new(hang());
        request.set_timeout(Duration::from_millis(300));
        let err = client.unary(request).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        match server.next_event().await {
            Event::Started(Some(remaining)) => {
                assert!(
                    remaining <= Duration::from_millis(300) && remaining > Duration::ZERO,
                    "{remaining:?}"
                )
            }
            other => panic!("expected the handler to see its deadline, got {other:?}"),
        }
        assert_eq!(
            server.next_event().await,
            Event::Dropped,
            "handler cancelled"
        );
    });
}

#[test]
fn server_enforces_the_deadline_it_was_sent() {
    let mut server = start();
    block_on(async {
        // A raw client that sends grpc-timeout but never cancels: only the server can end it.
        let mut send = raw_client(&server.addr).await;
        let request = raw_request(
            &server.addr,
            "/anygrpc.test.Test/Unary",
            &[("grpc-timeout", "200m")],
        );
        let response = raw_call(&mut send, request, frame(false, &encode(&hang()))).await;
        assert_eq!(
            response.grpc_status().unwrap().code(),
            Code::DeadlineExceeded
        );
        assert!(matches!(server.next_event().await, Event::Started(Some(_))));
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn dropping_a_call_cancels_the_handler() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        // Boxed, so that dropping it below really drops the call.
        let call = Box::pin(client.unary(hang()));
        let started = server.events.next();
        match futures_util::future::select(call, started).await {
            Either::Right((Some(Event::Started(None)), call)) => drop(call),
            _ => panic!("expected the handler to start"),
        }
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn dropping_a_bidi_stream_cancels_the_handler() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let replies = client.bidi(rx).await.unwrap().into_inner();
        tx.unbounded_send(hang()).unwrap();
        assert!(matches!(server.next_event().await, Event::Started(None)));
        drop(replies);
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn streaming_deadline_ends_the_stream_mid_way() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        let mut request = Request::new(Payload {
            count: 2,
            response_size: 10,
            hang_after: true,
            ..Payload::default()
        });
        request.set_timeout(Duration::from_millis(300));
        let mut stream = client.server_stream(request).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().is_some());
        assert!(stream.message().await.unwrap().is_some());
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(matches!(server.next_event().await, Event::Started(Some(_))));
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn client_streaming_deadline() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        let mut request =
            Request::new(futures_util::stream::iter(vec![Payload::default(), hang()]));
        request.set_timeout(Duration::from_millis(200));
        let err = client.client_stream(request).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        assert!(matches!(server.next_event().await, Event::Started(Some(_))));
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}

#[test]
fn cancelled_calls_end_with_cancelled_and_cancel_the_handler() {
    let mut server = start();
    let client = server.client();
    block_on(async {
        // Unary, cancelled while the handler runs.
        let (canceller, token) = anygrpc::client::cancellation();
        let mut request = Request::new(hang());
        request.set_cancel_token(token);
        let call = Box::pin(client.unary(request));
        let started = server.events.next();
        let call = match futures_util::future::select(call, started).await {
            Either::Right((Some(Event::Started(None)), call)) => call,
            _ => panic!("expected the handler to start"),
        };
        canceller.cancel();
        assert_eq!(call.await.unwrap_err().code(), Code::Cancelled);
        assert_eq!(server.next_event().await, Event::Dropped);

        // Client streaming, cancelled before sending anything (interop cancel_after_begin).
        let (canceller, token) = anygrpc::client::cancellation();
        let (_tx, rx) = futures_channel::mpsc::unbounded::<Payload>();
        let mut request = Request::new(rx);
        request.set_cancel_token(token);
        canceller.cancel();
        assert_eq!(
            client.client_stream(request).await.unwrap_err().code(),
            Code::Cancelled
        );

        // Bidi, cancelled after the first response (interop cancel_after_first_response).
        let (canceller, token) = anygrpc::client::cancellation();
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut request = Request::new(rx);
        request.set_cancel_token(token);
        let mut replies = client.bidi(request).await.unwrap().into_inner();
        tx.unbounded_send(Payload::default()).unwrap();
        replies.message().await.unwrap().unwrap();
        tx.unbounded_send(hang()).unwrap();
        assert!(matches!(server.next_event().await, Event::Started(None)));
        canceller.cancel();
        assert_eq!(replies.message().await.unwrap_err().code(), Code::Cancelled);
        assert_eq!(server.next_event().await, Event::Dropped);
    });
}
