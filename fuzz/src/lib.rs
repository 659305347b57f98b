//! The bodies of anygrpc's fuzz targets.
//!
//! Each function takes arbitrary bytes, feeds them to one parser, and asserts the parser's
//! invariants — not only that it does not panic. `fuzz_targets/` wraps each for libFuzzer;
//! `tests/corpus.rs` replays every file of `corpus/<target>/` through the same function, so the
//! corpora run in every `cargo test`. The parsers' targets take bytes as they are; the state
//! machines' targets (`machines`) decode them into event sequences with `arbitrary`; the two
//! end-to-end targets (`e2e`) put a real server or client on the simulation runtime and let
//! the bytes be its peer.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod e2e;
mod lb_policy;
mod machines;

pub use e2e::{client_h2, client_outcomes, server_answer, server_h2};
pub use lb_policy::lb_policy;
pub use machines::{keepalive, retry, subchannel};

use std::{sync::Arc, time::Duration};

use anygrpc_codec::{
    compression::{self, Compressor, Deflate, Gzip},
    frame::{Deframer, Frame},
    headers, message,
    metadata::{self, MetadataMap},
    timeout, Code, Status,
};
use anygrpc_lb::{orca, weighted_round_robin as wrr, AttemptPolicy, ServiceConfig};
use anygrpc_resolver::txt;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by name, as the corpus replay test sees them.
pub const TARGETS: &[(&str, Target)] = &[
    ("deframer", deframer),
    ("decompress", decompress),
    ("metadata", metadata),
    ("headers", headers),
    ("grpc_timeout", grpc_timeout),
    ("grpc_message", grpc_message),
    ("dns_txt", dns_txt),
    ("orca_report", orca_report),
    ("service_config", service_config),
    ("target", target),
    ("subchannel", subchannel),
    ("lb_policy", lb_policy),
    ("retry", retry),
    ("keepalive", keepalive),
    ("server_h2", server_h2),
    ("client_h2", client_h2),
];

/// A service config (JSON, from a resolver or the application): parsing never panics, a
/// rejection is `INVALID_ARGUMENT`, and what parses holds the bounds gRFC A6 sets (at least
/// two attempts, positive backoffs, retryable codes, 1..=1000 throttle tokens).
pub fn service_config(data: &[u8]) {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let config = match ServiceConfig::parse(json) {
        Ok(config) => config,
        Err(status) => return assert_eq!(status.code(), Code::InvalidArgument, "{status}"),
    };
    if let Some(throttle) = &config.retry_throttling {
        assert!((1000..=1_000_000).contains(&throttle.max_tokens_milli));
        assert!(throttle.token_ratio_milli > 0);
    }
    let value: serde_json::Value = serde_json::from_str(json).expect("it parsed");
    let mut paths = vec!["/s/m".to_owned(), String::new(), "/".to_owned()];
    for entry in value["methodConfig"].as_array().into_iter().flatten() {
        for name in entry["name"].as_array().into_iter().flatten() {
            let service = name["service"].as_str().unwrap_or_default();
            let method = name["method"].as_str().unwrap_or("m");
            paths.push(format!("/{service}/{method}"));
        }
    }
    for path in paths {
        let Some(method) = config.method(&path) else {
            continue;
        };
        match &method.attempts {
            Some(AttemptPolicy::Retry(r)) => {
                assert!(r.max_attempts >= 2);
                assert!(!r.initial_backoff.is_zero() && !r.max_backoff.is_zero());
                assert!(r.backoff_multiplier > 0.0 && r.backoff_multiplier.is_finite());
                assert!(!r.retryable_status_codes.is_empty());
            }
            Some(AttemptPolicy::Hedging(h)) => assert!(h.max_attempts >= 2),
            None => {}
        }
    }
}

/// A target URI: parsing never panics, a parsed target's scheme is valid and lower-case, it
/// survives a print-and-parse round trip, and the static resolvers (ipv4, ipv6, unix) build
/// from it or reject it with `INVALID_ARGUMENT`.
pub fn target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(target) = anygrpc_resolver::Target::parse(text) {
        let scheme = target.scheme();
        assert!(scheme.starts_with(|c: char| c.is_ascii_lowercase()));
        assert!(!scheme.contains(|c: char| c.is_ascii_uppercase() || c == ':'));
        if scheme != "unix" {
            let endpoint = utf8_percent_encode(target.endpoint(), NON_ALPHANUMERIC);
            let printed = format!("{scheme}://{}/{endpoint}", target.authority());
            assert_eq!(
                anygrpc_resolver::Target::parse(&printed).as_ref(),
                Some(&target),
                "{printed}"
            );
        }
    }
    let registry = anygrpc_resolver::Registry::default();
    match registry.parse_target(text) {
        Ok((target, builder)) => {
            if matches!(builder.scheme(), "ipv4" | "ipv6" | "unix" | "unix-abstract") {
                let sim = anygrpc_rt::sim::Sim::new(0);
                if let Err(status) = builder.build(&target, sim.runtime()) {
                    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
                }
                let _ = builder.default_authority(&target);
            }
        }
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status}"),
    }
}

/// A DNS response (the first two bytes are the query id) read as a TXT, an A and an AAAA
/// answer, then the same bytes as a `grpc_config` record: parsing never panics, records never
/// hold more bytes than the message, and a selected service config is always a JSON object.
pub fn dns_txt(data: &[u8]) {
    let id = data
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    use anygrpc_codec::dns::{decode_response, Record, RecordType};
    if let Ok(answer) = decode_response(id, data, RecordType::Txt) {
        let total: usize = answer
            .records
            .iter()
            .map(|record| match record {
                Record::Txt(text) => text.len(),
                Record::Address(_) => unreachable!("a TXT answer holds text"),
            })
            .sum();
        assert!(total <= data.len());
    }
    for kind in [RecordType::A, RecordType::Aaaa] {
        if let Ok(answer) = decode_response(id, data, kind) {
            let width = if kind == RecordType::A { 4 } else { 16 };
            assert!(answer.records.len() * width <= data.len());
        }
    }
    let record = format!("grpc_config={}", String::from_utf8_lossy(data));
    let draw = (data.len() % 100) as u32;
    if let Ok(Some(config)) = txt::select_service_config(&[record], "host", draw) {
        let parsed: serde_json::Value = serde_json::from_str(&config).expect("valid JSON");
        assert!(parsed.is_object(), "{config}");
    }
}

/// An ORCA load report, and the same bytes as a `weighted_round_robin` config: a report's
/// weight is a positive finite number or none, and a config that parses has the bounds the
/// policy relies on.
pub fn orca_report(data: &[u8]) {
    if let Some(report) = orca::decode_report(data) {
        for penalty in [0.0, 1.0, 1e300] {
            if let Some(weight) = wrr::report_weight(&report, penalty) {
                assert!(
                    weight.is_finite() && weight > 0.0,
                    "{weight} from {report:?}"
                );
            }
        }
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(config) = wrr::WrrConfig::from_json(&json) {
            assert!(config.weight_update_period >= Duration::from_millis(100));
            assert!(config.error_utilization_penalty >= 0.0);
            assert!(config.error_utilization_penalty.is_finite());
        }
    }
}

fn deframe_all(
    chunks: impl Iterator<Item = Bytes>,
    limit: usize,
) -> (Vec<Frame>, Option<Code>, bool) {
    let mut deframer = Deframer::new(limit);
    let mut frames = Vec::new();
    for chunk in chunks {
        deframer.push(chunk);
        loop {
            match deframer.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(status) => return (frames, Some(status.code()), false),
            }
        }
    }
    let complete = deframer.is_empty();
    (frames, None, complete)
}

/// Deframer: the same bytes give the same frames (or the same error) however they are split
/// into chunks, no frame exceeds the limit, and a declared length over the limit is
/// `RESOURCE_EXHAUSTED` while a bad flag is `INTERNAL`.
pub fn deframer(data: &[u8]) {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let limit = usize::from(control) * 64;
    let chunk = usize::from(control % 7) + 1;
    let whole = deframe_all(std::iter::once(Bytes::copy_from_slice(wire)), limit);
    let split = deframe_all(wire.chunks(chunk).map(Bytes::copy_from_slice), limit);
    assert_eq!(whole, split, "chunking changed the result");
    let (frames, error, _) = whole;
    let payload: usize = frames.iter().map(|f| f.data.len() + 5).sum();
    assert!(payload <= wire.len());
    for frame in &frames {
        assert!(frame.data.len() <= limit);
    }
    if let Some(code) = error {
        assert!(
            matches!(code, Code::Internal | Code::ResourceExhausted),
            "{code:?}"
        );
    }
    let mut d = Deframer::new(limit);
    d.push(Bytes::copy_from_slice(wire));
    while let Ok(Some(message)) = d.next_message(Some(&Gzip::default())) {
        assert!(message.data.len() <= limit);
    }
}

/// Decompression: never more than the limit comes out, failures are `INTERNAL` or
/// `RESOURCE_EXHAUSTED`, and what decompresses re-compresses to the same content.
pub fn decompress(data: &[u8]) {
    let Some((&control, src)) = data.split_first() else {
        return;
    };
    let compressor: Arc<dyn Compressor> = if control & 1 == 0 {
        Arc::new(Gzip::default())
    } else {
        Arc::new(Deflate::default())
    };
    let limit = usize::from(control >> 1) * 1024;
    let mut out = BytesMut::new();
    match compression::decompress(&*compressor, src, &mut out, limit) {
        Ok(()) => {
            assert!(out.len() <= limit);
            let mut again = BytesMut::new();
            compressor
                .compress(&out, &mut again)
                .expect("compressing into memory works");
            let mut back = BytesMut::new();
            compression::decompress(&*compressor, &again, &mut back, limit).expect("round trip");
            assert_eq!(back, out);
        }
        Err(status) => assert!(matches!(
            status.code(),
            Code::Internal | Code::ResourceExhausted
        )),
    }
}

/// Splits fuzz bytes into header entries: `name:value` lines.
fn header_map(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// Metadata: received headers never leak reserved keys, binary values decode or fail cleanly,
/// and what `insert` accepts reads back unchanged.
pub fn metadata(data: &[u8]) {
    let headers = header_map(data);
    let md = MetadataMap::from_headers(&headers);
    assert_eq!(md, MetadataMap::from_header_map(headers.clone()));
    for (key, value) in md.iter() {
        assert!(!key.starts_with("grpc-") && key != "content-type" && key != "te");
        if let metadata::MetadataValue::Binary(_) = value {
            for bytes in md.get_all_bin(key).flatten() {
                let mut copy = MetadataMap::new();
                if key.ends_with("-bin") && copy.insert_bin(key, &bytes).is_ok() {
                    assert_eq!(copy.get_bin(key).unwrap().unwrap(), bytes);
                }
            }
        }
    }
    let mut sent = MetadataMap::new();
    for (name, value) in &headers {
        if let Ok(text) = value.to_str() {
            if sent.insert(name.as_str(), text).is_ok() {
                assert_eq!(sent.get(name.as_str()), Some(text));
                assert!(metadata::validate_key(name.as_str()).is_ok());
            }
        }
    }
    let mut out = HeaderMap::new();
    sent.write_to(&mut out);
    assert_eq!(metadata::header_list_size(&out), sent.encoded_len());
}

/// Request and response heads: validation never panics, every rejection is a 405/415 or a
/// gRPC status, and a trailers status always has a code.
pub fn headers(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let headers = header_map(rest);
    let method = if control & 1 == 0 {
        http::Method::POST
    } else {
        http::Method::GET
    };
    match headers::validate_request(&method, headers.clone()) {
        Ok(info) => {
            if let Some(t) = info.timeout {
                assert!(t <= Duration::from_secs(99_999_999 * 3600));
            }
        }
        Err(headers::Rejection::Http(status, _)) => {
            assert!(
                status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE
                    || status == http::StatusCode::METHOD_NOT_ALLOWED
            )
        }
        Err(headers::Rejection::Grpc(status)) => assert_eq!(status.code(), Code::Internal),
    }
    let status =
        http::StatusCode::from_u16(100 + u16::from(control) * 2).unwrap_or(http::StatusCode::OK);
    let _ = headers::check_response(status, &headers);
    if let Some(status) = Status::from_trailers(&headers) {
        let mut trailers = HeaderMap::new();
        status.write_trailers(&mut trailers);
        let back = Status::from_trailers(&trailers).expect("written trailers have a status");
        assert_eq!(back.code(), status.code());
        assert_eq!(back.message(), status.message());
        assert_eq!(back.details(), status.details());
    }
}

/// `grpc-timeout`: parsing never panics; whatever parses re-encodes in at most 9 bytes to a
/// value no shorter.
pub fn grpc_timeout(data: &[u8]) {
    if let Ok(t) = timeout::decode(data) {
        let encoded = timeout::encode(t);
        assert!(encoded.len() <= 9, "{encoded}");
        assert!(timeout::decode(encoded.as_bytes()).expect("own encoding parses") >= t);
    }
    if data.len() >= 8 {
        let nanos = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let t = Duration::from_nanos(nanos);
        let back = timeout::decode(timeout::encode(t).as_bytes()).expect("own encoding parses");
        assert!(back >= t);
    }
}

/// `grpc-message`: decoding never fails; encoding emits only visible ASCII and round-trips.
pub fn grpc_message(data: &[u8]) {
    let decoded = message::decode(data);
    let encoded = message::encode(&decoded);
    assert!(encoded.iter().all(|b| (0x20..=0x7e).contains(b)));
    assert!(HeaderValue::from_maybe_shared(encoded.clone()).is_ok());
    assert_eq!(message::decode(&encoded), decoded);
}
