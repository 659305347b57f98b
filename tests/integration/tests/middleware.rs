//! Middleware on both sides: it sees every message both ways, the headers, the trailers and
//! the status of all four kinds of call; it changes them, answers without calling through,
//! ends calls early, runs `next` again on the client, and runs in the order added.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use anygrpc::{
    interceptor::CallHead,
    middleware::{Call, CallKind, Messages, Middleware, Next, Reply},
    rt::{block_on, BoxFuture},
    Code, Request, Response, Status,
};
use anygrpc_integration_tests::*;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::stream;
use prost::Message;

fn payload(body: &[u8]) -> Payload {
    Payload {
        body: body.to_vec(),
        ..Payload::default()
    }
}

fn encoded(p: &Payload) -> Bytes {
    Bytes::from(p.encode_to_vec())
}

/// What a counting middleware saw of one call, once its response ended.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    side: &'static str,
    path: String,
    kind: CallKind,
    requests: usize,
    responses: usize,
    end: Code,
}

/// Counts each call's messages both ways and reports them with its status when it ends.
struct Counting {
    side: &'static str,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Middleware for Counting {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let call = call.map_messages(|messages| {
            messages.inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
        });
        let (side, path, kind) = (self.side, call.path().to_owned(), call.head().kind());
        let report = self.seen.clone();
        let seen = move |responses: usize, end: Code| Seen {
            side,
            path,
            kind,
            requests: requests.load(Ordering::SeqCst),
            responses,
            end,
        };
        Box::pin(async move {
            let response = match next.run(call).await {
                Ok(response) => response,
                Err(status) => {
                    let _ = report.unbounded_send(seen(0, status.code()));
                    return Err(status);
                }
            };
            let responses = Arc::new(AtomicUsize::new(0));
            let counter = responses.clone();
            Ok(response.map(|messages| {
                messages
                    .inspect(move |_| {
                        counter.fetch_add(1, Ordering::SeqCst);
                    })
                    .on_end(move |end| {
                        let code = end.map_or_else(Status::code, |()| Code::Ok);
                        let _ = report.unbounded_send(seen(responses.load(Ordering::SeqCst), code));
                    })
            }))
        })
    }
}

fn take(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut all = Vec::new();
    while let Ok(one) = seen.try_recv() {
        all.push(one);
    }
    all
}

#[test]
fn middleware_counts_every_message_both_ways_on_all_four_kinds_of_call() {
    let (server_tx, mut server_seen) = mpsc::unbounded();
    let server = start_with(|s| {
        s.middleware(Counting {
            side: "server",
            seen: server_tx,
        })
    });
    let (client_tx, mut client_seen) = mpsc::unbounded();
    let channel = anygrpc::Channel::builder(&server.target())
        .middleware(Counting {
            side: "client",
            seen: client_tx,
        })
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    let expect = |kind, method: &str, requests, responses, end| {
        ["client", "server"].map(|side| Seen {
            side,
            path: format!("/anygrpc.test.Test/{method}"),
            kind,
            requests,
            responses,
            end,
        })
    };
    block_on(async {
        let reply = client.unary(payload(b"one")).await.unwrap();
        assert_eq!(reply.get_ref().body, b"one");
        let mut got = take(&mut client_seen);
        got.extend(take(&mut server_seen));
        assert_eq!(got, expect(CallKind::Unary, "Unary", 1, 1, Code::Ok));

        let request = Payload {
            count: 9,
            response_size: 3,
            ..Payload::default()
        };
        let mut replies = client.server_stream(request).await.unwrap().into_inner();
        let mut n = 0;
        while replies.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 9);
        let mut got = take(&mut client_seen);
        got.extend(take(&mut server_seen));
        let want = expect(CallKind::ServerStreaming, "ServerStream", 1, 9, Code::Ok);
        assert_eq!(got, want);

        let requests = stream::iter((0..5).map(|_| payload(b"abc")));
        let reply = client.client_stream(requests).await.unwrap();
        assert_eq!(
            (reply.get_ref().count, reply.get_ref().response_size),
            (5, 15)
        );
        let mut got = take(&mut client_seen);
        got.extend(take(&mut server_seen));
        let want = expect(CallKind::ClientStreaming, "ClientStream", 5, 1, Code::Ok);
        assert_eq!(got, want);

        let requests = stream::iter((0..7).map(|_| payload(b"b")));
        let mut replies = client.bidi(requests).await.unwrap().into_inner();
        let mut n = 0;
        while replies.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 7);
        let mut got = take(&mut client_seen);
        got.extend(take(&mut server_seen));
        assert_eq!(got, expect(CallKind::BidiStreaming, "Bidi", 7, 7, Code::Ok));

        // A failing stream: the status is what both sides' middleware see end it.
        let failing = [
            payload(b"ok"),
            Payload {
                status_code: Code::DataLoss as i32,
                ..Payload::default()
            },
        ];
        let mut replies = client
            .bidi(stream::iter(failing))
            .await
            .unwrap()
            .into_inner();
        assert!(replies.message().await.unwrap().is_some());
        assert_eq!(replies.message().await.unwrap_err().code(), Code::DataLoss);
        let mut got = take(&mut client_seen);
        got.extend(take(&mut server_seen));
        assert_eq!(
            got,
            expect(CallKind::BidiStreaming, "Bidi", 2, 1, Code::DataLoss)
        );
    });
}

/// Rewrites message bodies: a request's on the client, a response's on the server.
struct Rewrite;

fn suffixed(message: Bytes, suffix: &[u8]) -> Result<Bytes, Status> {
    let mut p = Payload::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    p.body.extend_from_slice(suffix);
    Ok(encoded(&p))
}

impl Middleware for Rewrite {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        let call = call.map_messages(|m| m.map(|message| suffixed(message, b"+request")));
        Box::pin(async move {
            let mut response = next.run(call).await?;
            response.metadata_mut().insert("x-rewritten", "yes")?;
            response
                .trailers_mut()
                .insert("x-rewritten-trailer", "yes")?;
            Ok(response.map(|m| m.map(|message| suffixed(message, b"+response"))))
        })
    }
}

#[test]
fn middleware_changes_messages_headers_and_trailers() {
    let server = start_with(|s| s.middleware(Rewrite));
    let channel = anygrpc::Channel::builder(&server.target())
        .middleware(Rewrite)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    block_on(async {
        let reply = client.unary(payload(b"x")).await.unwrap();
        assert_eq!(reply.get_ref().body, b"x+request+request+response+response");
        assert_eq!(reply.metadata().get("x-rewritten"), Some("yes"));
        assert_eq!(reply.trailers().get("x-rewritten-trailer"), Some("yes"));

        let requests = stream::iter([payload(b"a"), payload(b"b")]);
        let mut replies = client.bidi(requests).await.unwrap().into_inner();
        let first = replies.message().await.unwrap().unwrap();
        assert_eq!(first.body, b"a+request+request+response+response");
        assert_eq!(
            replies.headers().await.unwrap().get("x-rewritten"),
            Some("yes")
        );
        let second = replies.message().await.unwrap().unwrap();
        assert_eq!(second.body, b"b+request+request+response+response");
        assert!(replies.message().await.unwrap().is_none());
        let trailers = replies.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("x-rewritten-trailer"), Some("yes"));
    });
}

/// Answers `Unary` calls that ask for `x-cached` itself, and counts the calls it passes on.
struct Cache {
    passed: Arc<AtomicUsize>,
}

impl Middleware for Cache {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        if call.head().metadata().get("x-cached").is_some() {
            let mut response = Response::new(Messages::one(encoded(&payload(b"cached"))));
            let _ = response.metadata_mut().insert("x-from", "cache");
            return Box::pin(std::future::ready(Ok(response)));
        }
        self.passed.fetch_add(1, Ordering::SeqCst);
        next.run(call)
    }
}

#[test]
fn middleware_answers_without_calling_through_on_either_side() {
    let at_server = Arc::new(AtomicUsize::new(0));
    let passed = at_server.clone();
    let server = start_with(|s| s.middleware(Cache { passed }));
    block_on(async {
        let mut request = Request::new(payload(b"asked"));
        request.metadata_mut().insert("x-cached", "1").unwrap();
        let reply = server.client().unary(request).await.unwrap();
        assert_eq!(reply.get_ref().body, b"cached");
        assert_eq!(reply.metadata().get("x-from"), Some("cache"));
        assert_eq!(
            at_server.load(Ordering::SeqCst),
            0,
            "the handler was not run"
        );
        let reply = server.client().unary(payload(b"asked")).await.unwrap();
        assert_eq!(reply.get_ref().body, b"asked");
        assert_eq!(at_server.load(Ordering::SeqCst), 1);
    });

    // A client whose cache answers never reaches the network: its target has no server.
    let at_client = Arc::new(AtomicUsize::new(0));
    let channel = anygrpc::Channel::builder("127.0.0.1:1")
        .middleware(Cache {
            passed: at_client.clone(),
        })
        .connect_lazy()
        .unwrap();
    block_on(async {
        let mut request = Request::new(payload(b"asked"));
        request.metadata_mut().insert("x-cached", "1").unwrap();
        let reply = TestClient::new(channel.clone())
            .unary(request)
            .await
            .unwrap();
        assert_eq!(reply.get_ref().body, b"cached");
        let err = TestClient::new(channel)
            .unary(payload(b"x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(at_client.load(Ordering::SeqCst), 1);
    });
}

/// Ends calls whose metadata lacks `x-allowed` before they reach the handler, and answers
/// `INTERNAL` failures of the handler with a default response.
struct Guard;

impl Middleware for Guard {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        if call.head().metadata().get("x-allowed").is_none() {
            let status = Status::permission_denied("not allowed");
            return Box::pin(std::future::ready(Err(status)));
        }
        Box::pin(async move {
            match next.run(call).await {
                Err(status) if status.code() == Code::Internal => {
                    Ok(Response::new(Messages::one(encoded(&payload(b"default")))))
                }
                other => other,
            }
        })
    }
}

#[test]
fn middleware_ends_calls_early_and_replaces_errors() {
    let mut server = start_with(|s| s.middleware(Guard));
    block_on(async {
        let hanging = Payload {
            hang: true,
            ..Payload::default()
        };
        let err = server.client().unary(hanging).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let requests = stream::iter([payload(b"a")]);
        let err = server.client().bidi(requests).await.unwrap().into_inner();
        let mut replies = err;
        assert_eq!(
            replies.message().await.unwrap_err().code(),
            Code::PermissionDenied
        );

        let mut failing = Request::new(Payload {
            status_code: Code::Internal as i32,
            ..Payload::default()
        });
        failing.metadata_mut().insert("x-allowed", "1").unwrap();
        let reply = server.client().unary(failing).await.unwrap();
        assert_eq!(reply.get_ref().body, b"default");
    });
    assert!(
        server.events.try_recv().is_err(),
        "no handler started for a refused call"
    );
}

/// Records when each middleware sees the call and its response.
struct Named {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Middleware for Named {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        self.log.lock().unwrap().push(format!("{} in", self.name));
        Box::pin(async move {
            let reply = next.run(call).await;
            self.log.lock().unwrap().push(format!("{} out", self.name));
            reply
        })
    }
}

#[test]
fn middleware_and_interceptors_run_in_the_order_added() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let named = |name| Named {
        name,
        log: log.clone(),
    };
    let in_interceptor = log.clone();
    let server = start_with(|s| {
        s.middleware(named("server a"))
            .interceptor(move |_: &mut CallHead| {
                in_interceptor.lock().unwrap().push("server head".into());
                Ok(())
            })
            .middleware(named("server b"))
    });
    let channel = anygrpc::Channel::builder(&server.target())
        .middleware(named("client a"))
        .middleware(named("client b"))
        .connect_lazy()
        .unwrap();
    block_on(TestClient::new(channel).unary(payload(b"x"))).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "client a in",
            "client b in",
            "server a in",
            "server head",
            "server b in",
            "server b out",
            "server a out",
            "client b out",
            "client a out",
        ]
    );
}

/// A client middleware that, refused `UNAUTHENTICATED`, takes a fresh token and runs the
/// call again with the same request.
struct Reauth {
    token: Arc<Mutex<&'static str>>,
}

impl Middleware for Reauth {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let (mut head, mut messages) = call.into_parts();
            // A unary request: one message, kept to send again.
            let request = messages.message().await?.unwrap_or_default();
            let again = head.clone();
            let token = *self.token.lock().unwrap();
            head.metadata_mut().insert("x-token", token)?;
            match next
                .run(Call::from_parts(head, Messages::one(request.clone())))
                .await
            {
                Err(status) if status.code() == Code::Unauthenticated => {
                    *self.token.lock().unwrap() = "fresh";
                    let mut retry = Call::from_parts(again, Messages::one(request));
                    retry.head_mut().metadata_mut().insert("x-token", "fresh")?;
                    next.run(retry).await
                }
                other => other,
            }
        })
    }
}

#[test]
fn a_client_middleware_runs_the_call_again_with_a_fresh_token() {
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let server = start_with(|s| {
        s.interceptor(
            move |head: &mut CallHead| match head.metadata().get("x-token") {
                Some("fresh") => Ok(()),
                _ => {
                    count.fetch_add(1, Ordering::SeqCst);
                    Err(Status::unauthenticated("stale token"))
                }
            },
        )
    });
    let token = Arc::new(Mutex::new("stale"));
    let channel = anygrpc::Channel::builder(&server.target())
        .middleware(Reauth {
            token: token.clone(),
        })
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel);
    block_on(async {
        let reply = client.unary(payload(b"again")).await.unwrap();
        assert_eq!(reply.get_ref().body, b"again");
        assert_eq!(refused.load(Ordering::SeqCst), 1);
        client.unary(payload(b"fresh now")).await.unwrap();
        assert_eq!(refused.load(Ordering::SeqCst), 1, "the fresh token is kept");
    });
    assert_eq!(*token.lock().unwrap(), "fresh");
}

/// Never answers: a middleware waiting on something that does not come.
struct Stuck {
    dropped: mpsc::UnboundedSender<()>,
}

struct Dropped(mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.unbounded_send(());
    }
}

impl Middleware for Stuck {
    fn call<'a>(&'a self, _: Call, _: Next<'a>) -> BoxFuture<'a, Reply> {
        let guard = Dropped(self.dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending().await
        })
    }
}

#[test]
fn the_deadline_bounds_middleware_on_both_sides() {
    let (server_tx, mut server_dropped) = mpsc::unbounded();
    let server = start_with(|s| s.middleware(Stuck { dropped: server_tx }));
    block_on(async {
        let mut request = Request::new(payload(b"x"));
        request.set_timeout(std::time::Duration::from_millis(50));
        let err = server.client().unary(request).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        futures_util::StreamExt::next(&mut server_dropped).await;
    });
    let (client_tx, mut client_dropped) = mpsc::unbounded();
    let channel = anygrpc::Channel::builder(&server.target())
        .middleware(Stuck { dropped: client_tx })
        .connect_lazy()
        .unwrap();
    let mut request = Request::new(payload(b"x"));
    request.set_timeout(std::time::Duration::from_millis(20));
    let err = block_on(TestClient::new(channel).unary(request)).unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        client_dropped.try_recv().is_ok(),
        "the middleware's future is dropped"
    );
}
