//! ORCA load reports (gRFC A51): the `xds.data.orca.v3.OrcaLoadReport` a backend attaches to a
//! call's trailers as `endpoint-load-metrics-bin`, or streams out of band from
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`.
//!
//! The messages are written out by hand (prost derives their encoding) so this crate needs no
//! code generation; their field numbers are those of the `xds` protos.

use std::collections::HashMap;

/// The trailer a backend's per-call load report travels in (binary metadata).
pub const LOAD_REPORT_TRAILER: &str = "endpoint-load-metrics-bin";

/// The out-of-band reporting method's path.
pub const STREAM_CORE_METRICS_PATH: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";

/// A backend's load: utilizations in [0, 1] (application utilization may exceed 1), rates
/// per second, and named metrics.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReport {
    /// CPU utilization of the backend.
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Memory utilization of the backend.
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Deprecated integer queries per second; use `rps_fractional`.
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Per-request costs (only meaningful in per-call reports).
    #[prost(map = "string, double", tag = "4")]
    pub request_cost: HashMap<String, f64>,
    /// Named utilizations in [0, 1].
    #[prost(map = "string, double", tag = "5")]
    pub utilization: HashMap<String, f64>,
    /// Queries per second.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Errors per second.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Application-defined metrics.
    #[prost(map = "string, double", tag = "8")]
    pub named_metrics: HashMap<String, f64>,
    /// Application-specific utilization; when set, weighted round robin prefers it to CPU.
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds past `seconds`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl ProtoDuration {
    /// The duration as a `std` duration; negative ones are zero.
    pub fn to_std(self) -> std::time::Duration {
        let seconds = u64::try_from(self.seconds).unwrap_or(0);
        let nanos = u32::try_from(self.nanos).unwrap_or(0).min(999_999_999);
        std::time::Duration::new(seconds, nanos)
    }

    /// From a `std` duration (saturating).
    pub fn from_std(d: std::time::Duration) -> ProtoDuration {
        ProtoDuration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    }
}

/// The request that opens an out-of-band reporting stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReportRequest {
    /// How often the client wants a report.
    #[prost(message, optional, tag = "1")]
    pub report_interval: Option<ProtoDuration>,
    /// Request-cost names to include (unused by out-of-band reports today).
    #[prost(string, repeated, tag = "2")]
    pub request_cost_names: Vec<String>,
}

/// Decodes a report from the bytes of an `endpoint-load-metrics-bin` trailer or an OOB
/// message; malformed bytes are `None` (a bad report is ignored, never fatal to a call).
pub fn decode_report(bytes: &[u8]) -> Option<OrcaLoadReport> {
    prost::Message::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let report = OrcaLoadReport {
            cpu_utilization: 0.5,
            rps_fractional: 100.0,
            eps: 2.0,
            named_metrics: [("queue".to_owned(), 3.0)].into(),
            ..OrcaLoadReport::default()
        };
        let bytes = report.encode_to_vec();
        assert_eq!(decode_report(&bytes), Some(report));
        assert_eq!(decode_report(&[0x0a, 0xff]), None);
    }

    #[test]
    fn durations_convert_saturating() {
        let d = std::time::Duration::from_millis(1500);
        assert_eq!(ProtoDuration::from_std(d).to_std(), d);
        let negative = ProtoDuration {
            seconds: -5,
            nanos: -1,
        };
        assert_eq!(negative.to_std(), std::time::Duration::ZERO);
    }
}
