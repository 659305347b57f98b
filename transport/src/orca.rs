//! ORCA backend metrics (gRFC A51) on the server, which `weighted_round_robin` clients weight
//! backends by.
//!
//! - Per call: a handler puts an [`OrcaLoadReport`] in its response's trailers with
//!   [`set_call_load_report`] (the `endpoint-load-metrics-bin` trailer).
//! - Out of band: [`OrcaService`] serves `xds.service.orca.v3.OpenRcaService`, streaming the
//!   metrics a [`ServerMetricsRecorder`] holds to each client at the interval it asks for (no
//!   more often than the service's minimum, 30 s by default as A51 says).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub use anygrpc_lb::orca::{OrcaLoadReport, OrcaLoadReportRequest, LOAD_REPORT_TRAILER};
use prost::Message;

use crate::{
    rt::Runtime,
    server::{ServerCall, Service},
    MetadataMap, ProstCodec, Response, ResponseStream, Status,
};

/// Puts `report` in a response's trailers as `endpoint-load-metrics-bin`.
pub fn set_call_load_report(trailers: &mut MetadataMap, report: &OrcaLoadReport) {
    trailers
        .insert_bin(LOAD_REPORT_TRAILER, &report.encode_to_vec())
        .expect("a valid binary metadata key");
}

/// The backend-wide metrics an [`OrcaService`] reports. Cheap to clone; set values from
/// anywhere.
#[derive(Clone, Default)]
pub struct ServerMetricsRecorder {
    report: Arc<Mutex<OrcaLoadReport>>,
}

impl std::fmt::Debug for ServerMetricsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerMetricsRecorder")
            .field(&self.snapshot())
            .finish()
    }
}

impl ServerMetricsRecorder {
    fn update(&self, f: impl FnOnce(&mut OrcaLoadReport)) {
        f(&mut crate::sync::lock(&self.report));
    }

    /// CPU utilization, in [0, 1].
    pub fn set_cpu_utilization(&self, value: f64) {
        self.update(|r| r.cpu_utilization = value);
    }

    /// Memory utilization, in [0, 1].
    pub fn set_memory_utilization(&self, value: f64) {
        self.update(|r| r.mem_utilization = value);
    }

    /// Application utilization (preferred to CPU by weighted round robin), at least 0.
    pub fn set_application_utilization(&self, value: f64) {
        self.update(|r| r.application_utilization = value);
    }

    /// Queries per second.
    pub fn set_qps(&self, value: f64) {
        self.update(|r| r.rps_fractional = value);
    }

    /// Errors per second.
    pub fn set_eps(&self, value: f64) {
        self.update(|r| r.eps = value);
    }

    /// A named utilization, in [0, 1].
    pub fn set_utilization(&self, name: &str, value: f64) {
        self.update(|r| {
            r.utilization.insert(name.to_owned(), value);
        });
    }

    /// A named application metric.
    pub fn set_named_metric(&self, name: &str, value: f64) {
        self.update(|r| {
            r.named_metrics.insert(name.to_owned(), value);
        });
    }

    /// The current report.
    pub fn snapshot(&self) -> OrcaLoadReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The least interval [`OrcaService`] streams at unless configured otherwise (A51).
pub const DEFAULT_MIN_REPORTING_INTERVAL: Duration = Duration::from_secs(30);

/// The out-of-band ORCA service, `xds.service.orca.v3.OpenRcaService`.
#[derive(Clone)]
pub struct OrcaService {
    recorder: ServerMetricsRecorder,
    min_interval: Duration,
    runtime: Option<Arc<dyn Runtime>>,
}

impl std::fmt::Debug for OrcaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrcaService")
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

impl OrcaService {
    /// A service streaming `recorder`'s metrics.
    pub fn new(recorder: ServerMetricsRecorder) -> OrcaService {
        OrcaService {
            recorder,
            min_interval: DEFAULT_MIN_REPORTING_INTERVAL,
            runtime: None,
        }
    }

    /// The shortest interval a client may ask for (default 30 s); shorter requests get this.
    pub fn min_reporting_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The runtime whose timers pace the reports. Default:
    /// [`rt::default_runtime`](crate::rt::default_runtime).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    fn stream(
        &self,
        request: OrcaLoadReportRequest,
    ) -> Result<ResponseStream<OrcaLoadReport>, Status> {
        let runtime = self
            .runtime
            .clone()
            .or_else(anygrpc_rt::default_runtime)
            .ok_or_else(|| Status::internal("the ORCA service has no runtime"))?;
        let interval = request
            .report_interval
            .map(|d| d.to_std())
            .unwrap_or_default()
            .max(self.min_interval);
        let recorder = self.recorder.clone();
        let reports = futures_util::stream::unfold(true, move |first| {
            let (runtime, recorder) = (runtime.clone(), recorder.clone());
            async move {
                if !first {
                    let at = runtime.now() + interval;
                    runtime.sleep_until(at).await;
                }
                Some((Ok(recorder.snapshot()), false))
            }
        });
        Ok(Box::pin(reports))
    }
}

impl Service for OrcaService {
    fn name(&self) -> &'static str {
        "xds.service.orca.v3.OpenRcaService"
    }

    fn has_method(&self, method: &str) -> bool {
        method == "StreamCoreMetrics"
    }

    fn call(&self, method: &str, call: ServerCall) -> crate::rt::BoxFuture<'static, ()> {
        let this = self.clone();
        match method {
            "StreamCoreMetrics" => Box::pin(call.server_streaming(
                ProstCodec::<OrcaLoadReport, OrcaLoadReportRequest>::new(),
                move |request| async move { this.stream(request.into_inner()).map(Response::new) },
            )),
            _ => Box::pin(call.unimplemented()),
        }
    }
}
