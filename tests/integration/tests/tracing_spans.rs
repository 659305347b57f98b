//! Tracing: a call has a span on the client, one per attempt, and one on the server, named
//! and labelled with the method. (Its own test binary: it installs a global subscriber.)

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use anygrpc::rt::block_on;
use anygrpc_integration_tests::*;
use tracing::{
    field::{Field, Visit},
    span, Event, Metadata, Subscriber,
};

/// Records each new span as `name{field=value,...}`.
struct Spans {
    next_id: AtomicU64,
    seen: Mutex<Vec<String>>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?},", field.name(), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!("{}={value},", field.name()));
    }
}

#[test]
fn calls_and_attempts_have_spans_named_by_their_method() {
    let spans: &'static Spans = Box::leak(Box::new(Spans {
        next_id: AtomicU64::new(1),
        seen: Mutex::new(Vec::new()),
    }));
    tracing::subscriber::set_global_default(SpansRef(spans)).unwrap();
    let server = start();
    block_on(async {
        server.client().unary(Payload::default()).await.unwrap();
    });
    drop(server);
    let seen = spans.seen.lock().unwrap().clone();
    for want in [
        "grpc.client.call{method=/anygrpc.test.Test/Unary,}",
        "grpc.client.attempt{previous=0,}",
        "grpc.server.call{method=/anygrpc.test.Test/Unary,}",
    ] {
        assert!(seen.iter().any(|s| s == want), "no span {want} in {seen:?}");
    }
}

/// The subscriber, shared with the test that reads what it saw.
struct SpansRef(&'static Spans);

impl Subscriber for SpansRef {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        let entry = format!("{}{{{}}}", span.metadata().name(), fields.0);
        self.0.seen.lock().unwrap().push(entry);
        span::Id::from_u64(self.0.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}
