//! gRPC's OpenTelemetry metrics: the per-call instruments of gRFC A66, the retry instruments
//! of gRFC A96 and the load-balancing instruments of gRFC A78, on clients and servers that
//! are given a [`Metrics`].
//!
//! Off by default: without the `opentelemetry` feature there is no [`Metrics`] type, and a
//! channel or server without one records nothing (each call carries an empty `Option`).
//! With one, every call is measured where its channelz count starts and ends
//! ([`CallTally`](crate::channelz)): the call, each of its attempts, and each server call.
//!
//! | instrument | unit | attributes |
//! |---|---|---|
//! | `grpc.client.attempt.started` | `{attempt}` | method, target |
//! | `grpc.client.attempt.duration` | `s` | method, target, status |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | `By` | method, target, status |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | `By` | method, target, status |
//! | `grpc.client.call.duration` | `s` | method, target, status |
//! | `grpc.client.call.retries` | `{retry}` | method, target |
//! | `grpc.client.call.transparent_retries` | `{transparent_retry}` | method, target |
//! | `grpc.client.call.hedges` | `{hedge}` | method, target |
//! | `grpc.client.call.retry_delay` | `s` | method, target |
//! | `grpc.server.call.started` | `{call}` | method |
//! | `grpc.server.call.duration` | `s` | method, status |
//! | `grpc.server.call.sent_total_compressed_message_size` | `By` | method, status |
//! | `grpc.server.call.rcvd_total_compressed_message_size` | `By` | method, status |
//! | `grpc.lb.pick_first.connection_attempts_succeeded` | `{attempt}` | target |
//! | `grpc.lb.pick_first.connection_attempts_failed` | `{attempt}` | target |
//! | `grpc.lb.pick_first.disconnections` | `{disconnection}` | target |
//! | `grpc.lb.wrr.rr_fallback` | `{update}` | target |
//! | `grpc.lb.wrr.endpoint_weight_not_yet_usable` | `{endpoint}` | target |
//! | `grpc.lb.wrr.endpoint_weight_stale` | `{endpoint}` | target |
//! | `grpc.lb.wrr.endpoint_weights` | `{weight}` | target |
//!
//! `grpc.method` is the full method name (`package.Service/Method`) for methods of generated
//! stubs on the client and of registered services on the server, and `other` for anything
//! else, so a peer cannot grow the attribute's cardinality. `grpc.status` is the code's
//! name (`OK`, `UNAVAILABLE`, ...); `grpc.target` is the channel's canonical target URI.
//! Message sizes are of messages as sent (compressed, if they were), without gRPC's 5-byte
//! prefixes. The retry histograms record a call only if it had one of what they count. The
//! `pick_first` and `weighted_round_robin` instruments count what those policies report
//! through [`ChannelControl::record`](anygrpc_lb::ChannelControl::record); WRR records at
//! each scheduler update.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anygrpc_codec::Code;
use anygrpc_lb::LbMetric;
use anygrpc_rt::Runtime;

/// The method attribute of methods no generated stub or registered service knows.
pub(crate) const OTHER_METHOD: &str = "other";

/// Where measurements go: the OpenTelemetry instruments, behind the `opentelemetry` feature.
pub(crate) trait Sink: Send + Sync {
    fn client_attempt_started(&self, call: &ClientCall);
    fn client_attempt_ended(&self, call: &ClientCall, code: Code, took: Duration, bytes: &Traffic);
    fn client_call_ended(&self, call: &ClientCall, code: Code, took: Duration);
    fn server_call_started(&self, method: &Arc<str>);
    fn server_call_ended(&self, method: &Arc<str>, code: Code, took: Duration, bytes: &Traffic);
    fn lb(&self, metric: LbMetric, target: &Arc<str>);
}

/// A channel's or server's metrics: where they go and the clock that times calls.
#[derive(Clone)]
pub(crate) struct Recorder {
    sink: Arc<dyn Sink>,
    clock: Arc<dyn Runtime>,
}

impl Recorder {
    #[cfg_attr(
        not(feature = "opentelemetry"),
        allow(dead_code, reason = "used by the OpenTelemetry sink")
    )]
    pub(crate) fn new(sink: Arc<dyn Sink>, clock: Arc<dyn Runtime>) -> Recorder {
        Recorder { sink, clock }
    }

    /// A client call to `method` (a generated stub's, if `registered`) over `target`.
    pub(crate) fn client_call(&self, path: &str, registered: bool, target: &Arc<str>) -> Measure {
        let call = Arc::new(ClientCall {
            method: method_attribute(path, registered),
            target: target.clone(),
            retries: AtomicU32::new(0),
            transparent_retries: AtomicU32::new(0),
            hedges: AtomicU32::new(0),
            retry_delay_nanos: AtomicU64::new(0),
        });
        self.measure(Kind::ClientCall(call))
    }

    /// A server call to `path`; `registered` if a service of the server has the method.
    pub(crate) fn server_call(&self, path: &str, registered: bool) -> Measure {
        let method = method_attribute(path, registered);
        self.sink.server_call_started(&method);
        self.measure(Kind::ServerCall {
            method,
            bytes: Arc::default(),
        })
    }

    /// A load-balancing policy's measurement in a channel to `target`.
    pub(crate) fn lb(&self, metric: LbMetric, target: &Arc<str>) {
        self.sink.lb(metric, target);
    }

    fn measure(&self, kind: Kind) -> Measure {
        Measure {
            recorder: self.clone(),
            started: self.clock.now(),
            kind,
        }
    }
}

/// `package.Service/Method` from a `/package.Service/Method` path, or `other`.
fn method_attribute(path: &str, registered: bool) -> Arc<str> {
    match registered {
        true => path.strip_prefix('/').unwrap_or(path).into(),
        false => OTHER_METHOD.into(),
    }
}

/// What a client call's instruments are labelled with, and what its attempts add up.
#[cfg_attr(
    not(feature = "opentelemetry"),
    allow(dead_code, reason = "used by the OpenTelemetry sink")
)]
pub(crate) struct ClientCall {
    pub(crate) method: Arc<str>,
    pub(crate) target: Arc<str>,
    retries: AtomicU32,
    transparent_retries: AtomicU32,
    hedges: AtomicU32,
    retry_delay_nanos: AtomicU64,
}

impl ClientCall {
    /// Retries (not transparent ones) and hedges the call made, transparent retries, and the
    /// total time it waited out retry backoffs.
    #[cfg_attr(
        not(feature = "opentelemetry"),
        allow(dead_code, reason = "used by the OpenTelemetry sink")
    )]
    pub(crate) fn retry_counts(&self) -> (u32, u32, u32, Duration) {
        (
            self.retries.load(Ordering::Relaxed),
            self.hedges.load(Ordering::Relaxed),
            self.transparent_retries.load(Ordering::Relaxed),
            Duration::from_nanos(self.retry_delay_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Counts an attempt beyond the call's first.
    pub(crate) fn another_attempt(&self, why: Another) {
        let counter = match why {
            Another::Retry => &self.retries,
            Another::Hedge => &self.hedges,
            Another::Transparent => &self.transparent_retries,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The call waited `delay` for a retry's backoff (or the server's pushback).
    pub(crate) fn waited(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.retry_delay_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Compressed message bytes sent and received by one attempt or server call.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    sent: AtomicU64,
    rcvd: AtomicU64,
}

impl Traffic {
    /// Counts the messages of a gRPC-framed buffer (one or more length-prefixed messages) as
    /// sent.
    pub(crate) fn sent_frames(&self, frames: &[u8]) {
        self.sent
            .fetch_add(payload_bytes(frames), Ordering::Relaxed);
    }

    /// Counts `n` bytes received, length prefixes included (see [`received_message`]).
    ///
    /// [`received_message`]: Self::received_message
    pub(crate) fn received(&self, n: usize) {
        self.rcvd.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Takes a received message's 5-byte prefix back out of [`received`](Self::received).
    pub(crate) fn received_message(&self) {
        self.rcvd.fetch_sub(5, Ordering::Relaxed);
    }

    #[cfg_attr(
        not(feature = "opentelemetry"),
        allow(dead_code, reason = "used by the OpenTelemetry sink")
    )]
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    #[cfg_attr(
        not(feature = "opentelemetry"),
        allow(dead_code, reason = "used by the OpenTelemetry sink")
    )]
    pub(crate) fn rcvd(&self) -> u64 {
        self.rcvd.load(Ordering::Relaxed)
    }
}

/// The message bytes of complete length-prefixed messages in `frames`, prefixes excluded.
fn payload_bytes(mut frames: &[u8]) -> u64 {
    let mut total = 0;
    while let [_, a, b, c, d, rest @ ..] = frames {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let len = len.min(rest.len());
        total += len as u64;
        frames = &rest[len..];
    }
    total
}

#[derive(Clone)]
enum Kind {
    ClientCall(Arc<ClientCall>),
    ClientAttempt {
        call: Arc<ClientCall>,
        bytes: Arc<Traffic>,
    },
    ServerCall {
        method: Arc<str>,
        bytes: Arc<Traffic>,
    },
}

/// One call, attempt or server call being measured; recorded by [`Measure::end`]. A clone
/// of a client call's serves to start its attempts.
#[derive(Clone)]
pub(crate) struct Measure {
    recorder: Recorder,
    started: Instant,
    kind: Kind,
}

impl Measure {
    /// A new attempt of this client call, counted as started.
    pub(crate) fn attempt(&self) -> Option<Measure> {
        let Kind::ClientCall(call) = &self.kind else {
            return None;
        };
        self.recorder.sink.client_attempt_started(call);
        Some(self.recorder.measure(Kind::ClientAttempt {
            call: call.clone(),
            bytes: Arc::default(),
        }))
    }

    /// The client call this measures, for its attempts and retry counts.
    pub(crate) fn client_call(&self) -> Option<&Arc<ClientCall>> {
        match &self.kind {
            Kind::ClientCall(call) => Some(call),
            _ => None,
        }
    }

    /// Where an attempt's or server call's message bytes are counted.
    pub(crate) fn traffic(&self) -> Option<&Arc<Traffic>> {
        match &self.kind {
            Kind::ClientAttempt { bytes, .. } | Kind::ServerCall { bytes, .. } => Some(bytes),
            Kind::ClientCall(_) => None,
        }
    }

    /// Records the call, attempt or server call as ended now with `code`.
    pub(crate) fn end(self, code: Code) {
        let took = self
            .recorder
            .clock
            .now()
            .saturating_duration_since(self.started);
        let sink = &self.recorder.sink;
        match &self.kind {
            Kind::ClientCall(call) => sink.client_call_ended(call, code, took),
            Kind::ClientAttempt { call, bytes } => {
                sink.client_attempt_ended(call, code, took, bytes)
            }
            Kind::ServerCall { method, bytes } => sink.server_call_ended(method, code, took, bytes),
        }
    }
}

/// How an attempt beyond a call's first came about, for the retry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Another {
    Retry,
    Hedge,
    /// The previous attempt's stream was refused before the server's application saw it.
    Transparent,
}

#[cfg(feature = "opentelemetry")]
pub use otel::Metrics;

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::{sync::Arc, time::Duration};

    use anygrpc_codec::Code;
    use anygrpc_lb::LbMetric;
    use opentelemetry::{
        metrics::{Counter, Histogram, Meter, MeterProvider},
        InstrumentationScope, KeyValue,
    };

    use super::{ClientCall, Sink, Traffic};

    /// gRFC A66's default buckets for latencies (seconds).
    const LATENCY_BUCKETS: [f64; 41] = [
        0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
        0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13,
        0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    ];
    /// gRFC A66's default buckets for message sizes (bytes).
    const SIZE_BUCKETS: [f64; 14] = [
        0.0,
        1024.0,
        2048.0,
        4096.0,
        16384.0,
        65536.0,
        262144.0,
        1048576.0,
        4194304.0,
        16777216.0,
        67108864.0,
        268435456.0,
        1073741824.0,
        4294967296.0,
    ];
    /// gRFC A66's default buckets for counts.
    const COUNT_BUCKETS: [f64; 18] = [
        0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
        8192.0, 16384.0, 32768.0, 65536.0,
    ];

    /// gRPC's metrics (gRFC A66 per-call instruments and A96 retry instruments) on an
    /// OpenTelemetry meter provider. Give it to
    /// [`ChannelBuilder::metrics`](crate::client::ChannelBuilder::metrics) and
    /// [`Server::metrics`](crate::server::Server::metrics); one `Metrics` can
    /// serve any number of channels and servers.
    #[derive(Clone)]
    pub struct Metrics {
        pub(crate) instruments: Arc<Instruments>,
    }

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Metrics").finish_non_exhaustive()
        }
    }

    impl Metrics {
        /// The instruments, created on a meter named `grpc-rust` (`anygrpc`'s version) from
        /// `provider`.
        pub fn new(provider: &impl MeterProvider) -> Metrics {
            let scope = InstrumentationScope::builder("grpc-rust")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            Metrics::with_meter(&provider.meter_with_scope(scope))
        }

        /// The instruments, created on `meter`.
        pub fn with_meter(meter: &Meter) -> Metrics {
            let seconds = |name: &'static str, description: &'static str| {
                meter
                    .f64_histogram(name)
                    .with_unit("s")
                    .with_description(description)
                    .with_boundaries(LATENCY_BUCKETS.to_vec())
                    .build()
            };
            let bytes = |name: &'static str, description: &'static str| {
                meter
                    .u64_histogram(name)
                    .with_unit("By")
                    .with_description(description)
                    .with_boundaries(SIZE_BUCKETS.to_vec())
                    .build()
            };
            let count = |name: &'static str, unit: &'static str, description: &'static str| {
                meter
                    .u64_histogram(name)
                    .with_unit(unit)
                    .with_description(description)
                    .with_boundaries(COUNT_BUCKETS.to_vec())
                    .build()
            };
            let counter = |name: &'static str, unit: &'static str, description: &'static str| {
                meter
                    .u64_counter(name)
                    .with_unit(unit)
                    .with_description(description)
                    .build()
            };
            let instruments = Instruments {
                attempt_started: counter(
                    "grpc.client.attempt.started",
                    "{attempt}",
                    "Number of client call attempts started.",
                ),
                attempt_duration: seconds(
                    "grpc.client.attempt.duration",
                    "End-to-end time taken to complete a client call attempt.",
                ),
                attempt_sent: bytes(
                    "grpc.client.attempt.sent_total_compressed_message_size",
                    "Compressed message bytes sent per client call attempt.",
                ),
                attempt_rcvd: bytes(
                    "grpc.client.attempt.rcvd_total_compressed_message_size",
                    "Compressed message bytes received per call attempt.",
                ),
                call_duration: seconds(
                    "grpc.client.call.duration",
                    "Time taken by gRPC to complete an RPC from the application's perspective.",
                ),
                retries: count(
                    "grpc.client.call.retries",
                    "{retry}",
                    "Number of retries during the client call.",
                ),
                transparent_retries: count(
                    "grpc.client.call.transparent_retries",
                    "{transparent_retry}",
                    "Number of transparent retries during the client call.",
                ),
                hedges: count(
                    "grpc.client.call.hedges",
                    "{hedge}",
                    "Number of hedges during the client call.",
                ),
                retry_delay: seconds(
                    "grpc.client.call.retry_delay",
                    "Total time of delay while there is no active attempt during the client call.",
                ),
                server_started: counter(
                    "grpc.server.call.started",
                    "{call}",
                    "Number of server calls started.",
                ),
                server_duration: seconds(
                    "grpc.server.call.duration",
                    "End-to-end time taken to complete a call from the server transport's \
                     perspective.",
                ),
                server_sent: bytes(
                    "grpc.server.call.sent_total_compressed_message_size",
                    "Compressed message bytes sent per server call.",
                ),
                server_rcvd: bytes(
                    "grpc.server.call.rcvd_total_compressed_message_size",
                    "Compressed message bytes received per server call.",
                ),
                pick_first_succeeded: counter(
                    "grpc.lb.pick_first.connection_attempts_succeeded",
                    "{attempt}",
                    "Number of successful connection attempts.",
                ),
                pick_first_failed: counter(
                    "grpc.lb.pick_first.connection_attempts_failed",
                    "{attempt}",
                    "Number of failed connection attempts.",
                ),
                pick_first_disconnections: counter(
                    "grpc.lb.pick_first.disconnections",
                    "{disconnection}",
                    "Number of times the selected subchannel becomes disconnected.",
                ),
                wrr_fallback: counter(
                    "grpc.lb.wrr.rr_fallback",
                    "{update}",
                    "Number of scheduler updates in which there were not enough endpoints \
                     with valid weight, which caused the WRR policy to fall back to RR behavior.",
                ),
                wrr_not_yet_usable: counter(
                    "grpc.lb.wrr.endpoint_weight_not_yet_usable",
                    "{endpoint}",
                    "Number of endpoints from each scheduler update that don't yet have \
                     usable weight information.",
                ),
                wrr_stale: counter(
                    "grpc.lb.wrr.endpoint_weight_stale",
                    "{endpoint}",
                    "Number of endpoints from each scheduler update whose latest weight is \
                     older than the expiration period.",
                ),
                wrr_weights: meter
                    .f64_histogram("grpc.lb.wrr.endpoint_weights")
                    .with_unit("{weight}")
                    .with_description(
                        "Weight of each endpoint, recorded on every scheduler update; \
                         endpoints without usable weights are recorded as 0.",
                    )
                    .build(),
            };
            Metrics {
                instruments: Arc::new(instruments),
            }
        }
    }

    pub(crate) struct Instruments {
        attempt_started: Counter<u64>,
        attempt_duration: Histogram<f64>,
        attempt_sent: Histogram<u64>,
        attempt_rcvd: Histogram<u64>,
        call_duration: Histogram<f64>,
        retries: Histogram<u64>,
        transparent_retries: Histogram<u64>,
        hedges: Histogram<u64>,
        retry_delay: Histogram<f64>,
        server_started: Counter<u64>,
        server_duration: Histogram<f64>,
        server_sent: Histogram<u64>,
        server_rcvd: Histogram<u64>,
        pick_first_succeeded: Counter<u64>,
        pick_first_failed: Counter<u64>,
        pick_first_disconnections: Counter<u64>,
        wrr_fallback: Counter<u64>,
        wrr_not_yet_usable: Counter<u64>,
        wrr_stale: Counter<u64>,
        wrr_weights: Histogram<f64>,
    }

    /// Attribute values share the call's strings: recording allocates no copies of them.
    fn method(method: &Arc<str>) -> KeyValue {
        KeyValue::new("grpc.method", method.clone())
    }

    fn status(code: Code) -> KeyValue {
        KeyValue::new("grpc.status", code.name())
    }

    fn target(target: &Arc<str>) -> KeyValue {
        KeyValue::new("grpc.target", target.clone())
    }

    fn call_attributes(call: &ClientCall) -> [KeyValue; 2] {
        [method(&call.method), target(&call.target)]
    }

    impl Sink for Instruments {
        fn client_attempt_started(&self, call: &ClientCall) {
            self.attempt_started.add(1, &call_attributes(call));
        }

        fn client_attempt_ended(
            &self,
            call: &ClientCall,
            code: Code,
            took: Duration,
            bytes: &Traffic,
        ) {
            let [method, target] = call_attributes(call);
            let attributes = [method, target, status(code)];
            self.attempt_duration
                .record(took.as_secs_f64(), &attributes);
            self.attempt_sent.record(bytes.sent(), &attributes);
            self.attempt_rcvd.record(bytes.rcvd(), &attributes);
        }

        fn client_call_ended(&self, call: &ClientCall, code: Code, took: Duration) {
            let [method, target] = call_attributes(call);
            let (retries, hedges, transparent, delay) = call.retry_counts();
            let attributes = [method, target];
            let recorded = [
                (&self.retries, retries),
                (&self.hedges, hedges),
                (&self.transparent_retries, transparent),
            ];
            for (histogram, n) in recorded {
                if n > 0 {
                    histogram.record(u64::from(n), &attributes);
                }
            }
            if retries + hedges > 0 {
                self.retry_delay.record(delay.as_secs_f64(), &attributes);
            }
            let [method, target] = attributes;
            self.call_duration
                .record(took.as_secs_f64(), &[method, target, status(code)]);
        }

        fn server_call_started(&self, name: &Arc<str>) {
            self.server_started.add(1, &[method(name)]);
        }

        fn server_call_ended(&self, name: &Arc<str>, code: Code, took: Duration, bytes: &Traffic) {
            let attributes = [method(name), status(code)];
            self.server_duration.record(took.as_secs_f64(), &attributes);
            self.server_sent.record(bytes.sent(), &attributes);
            self.server_rcvd.record(bytes.rcvd(), &attributes);
        }

        fn lb(&self, metric: LbMetric, channel_target: &Arc<str>) {
            let attributes = [target(channel_target)];
            let (counter, n) = match metric {
                LbMetric::PickFirstConnected => (&self.pick_first_succeeded, 1),
                LbMetric::PickFirstConnectFailed => (&self.pick_first_failed, 1),
                LbMetric::PickFirstDisconnected => (&self.pick_first_disconnections, 1),
                LbMetric::WrrRoundRobinFallback => (&self.wrr_fallback, 1),
                LbMetric::WrrWeightsNotYetUsable(n) => (&self.wrr_not_yet_usable, n),
                LbMetric::WrrWeightsStale(n) => (&self.wrr_stale, n),
                LbMetric::WrrEndpointWeight(weight) => {
                    return self.wrr_weights.record(weight, &attributes);
                }
                _ => return,
            };
            counter.add(n, &attributes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::payload_bytes;

    #[test]
    fn payload_bytes_skip_each_message_prefix() {
        let mut frames = vec![0, 0, 0, 0, 3, b'a', b'b', b'c'];
        frames.extend_from_slice(&[1, 0, 0, 0, 0]);
        frames.extend_from_slice(&[0, 0, 0, 0, 2, b'x', b'y']);
        assert_eq!(payload_bytes(&frames), 5);
        assert_eq!(payload_bytes(&[]), 0);
        // A cut-off message counts what is there; a cut-off prefix counts nothing.
        assert_eq!(payload_bytes(&[0, 0, 0, 0, 9, b'a']), 1);
        assert_eq!(payload_bytes(&[0, 0, 0]), 0);
    }
}
