//! gRFC A66 / A96 / A78 metrics, read back from OpenTelemetry's in-memory exporter after a
//! known mix of calls and connections: instrument names, attributes and counts, on the client
//! and the server.

use std::collections::BTreeMap;

use anygrpc::{
    client::Grpc, codegen::PathAndQuery, metrics::Metrics, rt::block_on, Channel, Code, ProstCodec,
    Request,
};
use anygrpc_integration_tests::*;
use opentelemetry_sdk::metrics::{
    data::{AggregatedMetrics, MetricData},
    InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
};
use prost::Message;

/// One data point: its attributes, and its count (histograms) or value (counters) and sum.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    attributes: BTreeMap<String, String>,
    count: u64,
    sum: f64,
}

/// Every data point of every instrument, by instrument name.
fn collect(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
) -> BTreeMap<String, Vec<Point>> {
    provider.force_flush().unwrap();
    let mut found = BTreeMap::new();
    // Cumulative temporality: the last export holds everything.
    let exports = exporter.get_finished_metrics().unwrap();
    let last = exports.last().expect("an export");
    for scope in last.scope_metrics() {
        assert_eq!(scope.scope().name(), "grpc-rust");
        for metric in scope.metrics() {
            let points: Vec<Point> = match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                    .data_points()
                    .map(|p| point(p.attributes(), p.count(), p.sum()))
                    .collect(),
                AggregatedMetrics::U64(MetricData::Histogram(h)) => h
                    .data_points()
                    .map(|p| point(p.attributes(), p.count(), p.sum() as f64))
                    .collect(),
                AggregatedMetrics::U64(MetricData::Sum(s)) => s
                    .data_points()
                    .map(|p| point(p.attributes(), p.value(), p.value() as f64))
                    .collect(),
                other => panic!("{}: unexpected data {other:?}", metric.name()),
            };
            found.insert(metric.name().to_owned(), points);
        }
    }
    found
}

fn point<'a>(
    attributes: impl Iterator<Item = &'a opentelemetry::KeyValue>,
    count: u64,
    sum: f64,
) -> Point {
    Point {
        attributes: attributes
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect(),
        count,
        sum,
    }
}

/// The count of `name`'s point with exactly these attributes (0 if there is none).
fn count(found: &BTreeMap<String, Vec<Point>>, name: &str, attributes: &[(&str, &str)]) -> u64 {
    find(found, name, attributes).map_or(0, |p| p.count)
}

fn find<'a>(
    found: &'a BTreeMap<String, Vec<Point>>,
    name: &str,
    attributes: &[(&str, &str)],
) -> Option<&'a Point> {
    let want: BTreeMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let points = found
        .get(name)
        .unwrap_or_else(|| panic!("no instrument {name}"));
    points.iter().find(|p| p.attributes == want)
}

const UNARY: &str = "anygrpc.test.Test/Unary";
const STREAM: &str = "anygrpc.test.Test/ServerStream";

/// A meter provider exporting to memory, and anygrpc's instruments on it.
fn meter() -> (SdkMeterProvider, InMemoryMetricExporter, Metrics) {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let metrics = Metrics::new(&provider);
    (provider, exporter, metrics)
}

#[test]
fn a66_instruments_count_a_known_mix_of_calls() {
    let (provider, exporter, metrics) = meter();
    let server = start_with(|s| s.metrics(metrics.clone()));
    let target = server.target();
    // UNAVAILABLE is retried: three attempts, then the call fails.
    let config = r#"{"methodConfig": [{
        "name": [{"service": "anygrpc.test.Test", "method": "Unary"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
            "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}
    }]}"#;
    let channel = Channel::builder(&target)
        .default_service_config(config)
        .metrics(metrics)
        .connect_lazy()
        .unwrap();
    let client = TestClient::new(channel.clone());
    let ok = Payload {
        body: vec![7; 10],
        response_size: 100,
        ..Payload::default()
    };
    let request_bytes = ok.encoded_len() as f64;
    let response_bytes = Payload {
        body: vec![b'r'; 100],
        ..Payload::default()
    }
    .encoded_len() as f64;
    block_on(async {
        for _ in 0..3 {
            client.unary(ok.clone()).await.unwrap();
        }
        let not_found = Payload {
            status_code: Code::NotFound as i32,
            ..Payload::default()
        };
        client.unary(not_found).await.unwrap_err();
        let unavailable = Payload {
            status_code: Code::Unavailable as i32,
            ..Payload::default()
        };
        let status = client.unary(unavailable).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let streamed = Payload {
            count: 2,
            ..Payload::default()
        };
        let mut stream = client.server_stream(streamed).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
        // Without a generated stub, the client names the method `other`; the server knows it.
        let generic = Grpc::new(channel.clone());
        let codec = ProstCodec::<Payload, Payload>::new();
        let path = PathAndQuery::from_static("/anygrpc.test.Test/Unary");
        generic
            .unary(path, codec, Request::new(ok.clone()))
            .await
            .unwrap();
        // A method the server does not have is `other` on both sides.
        let path = PathAndQuery::from_static("/anygrpc.test.Test/Missing");
        let status = generic
            .unary(path, codec, Request::new(ok.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    });
    // A server call is recorded when it ends, which is before its trailers leave: the
    // connection writes what its calls queued after polling them (and a call with a task of its
    // own runs on the connection's worker thread). So the client has seen every call end.
    let found = collect(&provider, &exporter);

    let canonical = format!("dns:///{target}");
    let client =
        |method: &'static str| [("grpc.method", method), ("grpc.target", canonical.as_str())];
    let ended = |method: &'static str, status: &'static str| {
        let [m, t] = client(method);
        [m, t, ("grpc.status", status)]
    };

    // Client: one attempt per call, three for the retried one.
    let started = "grpc.client.attempt.started";
    assert_eq!(count(&found, started, &client(UNARY)), 3 + 1 + 3);
    assert_eq!(count(&found, started, &client(STREAM)), 1);
    assert_eq!(count(&found, started, &client("other")), 2);
    let attempts = "grpc.client.attempt.duration";
    assert_eq!(count(&found, attempts, &ended(UNARY, "OK")), 3);
    assert_eq!(count(&found, attempts, &ended(UNARY, "NOT_FOUND")), 1);
    assert_eq!(count(&found, attempts, &ended(UNARY, "UNAVAILABLE")), 3);
    assert_eq!(count(&found, attempts, &ended(STREAM, "OK")), 1);
    let calls = "grpc.client.call.duration";
    assert_eq!(count(&found, calls, &ended(UNARY, "OK")), 3);
    assert_eq!(count(&found, calls, &ended(UNARY, "NOT_FOUND")), 1);
    assert_eq!(count(&found, calls, &ended(UNARY, "UNAVAILABLE")), 1);
    assert_eq!(count(&found, calls, &ended(STREAM, "OK")), 1);
    assert_eq!(count(&found, calls, &ended("other", "OK")), 1);
    assert_eq!(count(&found, calls, &ended("other", "UNIMPLEMENTED")), 1);
    let sent = find(
        &found,
        "grpc.client.attempt.sent_total_compressed_message_size",
        &ended(UNARY, "OK"),
    )
    .unwrap();
    assert_eq!((sent.count, sent.sum), (3, 3.0 * request_bytes));
    let rcvd = find(
        &found,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &ended(UNARY, "OK"),
    )
    .unwrap();
    assert_eq!((rcvd.count, rcvd.sum), (3, 3.0 * response_bytes));
    // Retries: only the retried call has a point, with its two retries.
    let retries = &found["grpc.client.call.retries"];
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(
        retries[0].attributes,
        find(&found, started, &client(UNARY)).unwrap().attributes
    );
    assert_eq!((retries[0].count, retries[0].sum), (1, 2.0));
    let delay = find(&found, "grpc.client.call.retry_delay", &client(UNARY)).unwrap();
    assert_eq!(delay.count, 1);
    assert!(
        delay.sum >= 0.01,
        "two backoffs of up to 10 ms: {}",
        delay.sum
    );
    assert!(!found.contains_key("grpc.client.call.hedges"));

    // Server: the generic call is the server's Unary; the missing method is `other`.
    let method = |m: &'static str| [("grpc.method", m)];
    let status = |m: &'static str, s: &'static str| [("grpc.method", m), ("grpc.status", s)];
    let started = "grpc.server.call.started";
    assert_eq!(count(&found, started, &method(UNARY)), 3 + 1 + 3 + 1);
    assert_eq!(count(&found, started, &method(STREAM)), 1);
    assert_eq!(count(&found, started, &method("other")), 1);
    let duration = "grpc.server.call.duration";
    assert_eq!(count(&found, duration, &status(UNARY, "OK")), 4);
    assert_eq!(count(&found, duration, &status(UNARY, "NOT_FOUND")), 1);
    assert_eq!(count(&found, duration, &status(UNARY, "UNAVAILABLE")), 3);
    assert_eq!(count(&found, duration, &status(STREAM, "OK")), 1);
    assert_eq!(
        count(&found, duration, &status("other", "UNIMPLEMENTED")),
        1
    );
    let rcvd = find(
        &found,
        "grpc.server.call.rcvd_total_compressed_message_size",
        &status(UNARY, "OK"),
    )
    .unwrap();
    assert_eq!((rcvd.count, rcvd.sum), (4, 4.0 * request_bytes));
    let sent = find(
        &found,
        "grpc.server.call.sent_total_compressed_message_size",
        &status(UNARY, "OK"),
    )
    .unwrap();
    assert_eq!((sent.count, sent.sum), (4, 4.0 * response_bytes));
}

#[test]
fn a78_lb_instruments_count_connections_and_scheduler_updates() {
    let (provider, exporter, metrics) = meter();
    let server = start();
    let target = server.target();
    let pick_first = Channel::builder(&target)
        .metrics(metrics.clone())
        .connect_lazy()
        .unwrap();
    // Another target name for the same server, so the two channels' instruments are apart
    // (WRR's endpoints are pick_first children, which count their own attempts).
    let wrr_target = format!("ipv4:{target}");
    let wrr = Channel::builder(&wrr_target)
        .load_balancing_policy("weighted_round_robin")
        .metrics(metrics.clone())
        .connect_lazy()
        .unwrap();
    // Nothing listens on a port just released: its connection attempts fail.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let nowhere = Channel::builder(&refused)
        .metrics(metrics)
        .connect_lazy()
        .unwrap();
    block_on(async {
        TestClient::new(pick_first.clone())
            .unary(Payload::default())
            .await
            .unwrap();
        TestClient::new(wrr.clone())
            .unary(Payload::default())
            .await
            .unwrap();
        let status = TestClient::new(nowhere)
            .unary(Payload::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    });
    // The server goes away: pick_first's selected connection is lost, and the policy counts
    // it before it publishes the channel's next state.
    server.shutdown();
    block_on(pick_first.wait_for_state_change(anygrpc::lb::ConnectivityState::Ready));
    let found = collect(&provider, &exporter);

    let server_target = format!("dns:///{target}");
    let at_server = [("grpc.target", server_target.as_str())];
    let refused_target = format!("dns:///{refused}");
    let at_refused = [("grpc.target", refused_target.as_str())];
    let succeeded = "grpc.lb.pick_first.connection_attempts_succeeded";
    let failed = "grpc.lb.pick_first.connection_attempts_failed";
    assert_eq!(count(&found, succeeded, &at_server), 1);
    // IDLE after the loss, pick_first makes no attempt until a call asks for one, even when
    // the re-resolution it requested answers.
    assert_eq!(count(&found, failed, &at_server), 0);
    assert!(count(&found, failed, &at_refused) >= 1);
    assert_eq!(count(&found, succeeded, &at_refused), 0);
    assert_eq!(
        count(&found, "grpc.lb.pick_first.disconnections", &at_server),
        1
    );

    // WRR's endpoint connected through its own pick_first child (A61).
    let at_wrr = [("grpc.target", wrr_target.as_str())];
    assert!(count(&found, succeeded, &at_wrr) >= 1);
    // WRR with one backend and no load reports: every scheduler update falls back to round
    // robin with that backend's weight not yet usable, recorded as 0.
    let at_server = at_wrr;
    let updates = count(&found, "grpc.lb.wrr.rr_fallback", &at_server);
    assert!(updates >= 1);
    let weights = find(&found, "grpc.lb.wrr.endpoint_weights", &at_server).unwrap();
    assert_eq!((weights.count, weights.sum), (updates, 0.0));
    assert_eq!(
        count(
            &found,
            "grpc.lb.wrr.endpoint_weight_not_yet_usable",
            &at_server
        ),
        updates
    );
    assert_eq!(
        count(&found, "grpc.lb.wrr.endpoint_weight_stale", &at_server),
        0
    );
}
