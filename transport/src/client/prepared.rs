//! A call ready to make attempts: what its preparation (service config, interceptors, the
//! request head) gives every attempt, and its retry plan.

use std::{sync::Arc, time::Instant};

use anygrpc_codec::frame::Encoder;
use anygrpc_lb::{AttemptPolicy, Throttle};

use super::CancelToken;
use crate::{
    credentials::CallCredentials,
    metrics::{Another, ClientCall, Measure},
};

/// A call ready to make attempts: its request head, options and retry plan.
pub(super) struct Prepared {
    /// The request head; each attempt sends a copy.
    pub(super) request: http::Request<()>,
    pub(super) deadline: Option<Instant>,
    pub(super) cancel: Option<CancelToken>,
    pub(super) wait_for_ready: bool,
    pub(super) encoder: Encoder,
    pub(super) compress: bool,
    pub(super) max_recv_message_size: usize,
    /// The method's retry or hedging policy (`None`: one attempt).
    pub(super) policy: Option<AttemptPolicy>,
    pub(super) throttle: Option<Arc<Throttle>>,
    /// The call's metrics, if measured: each attempt starts its own from it.
    pub(super) measure: Option<Measure>,
    /// The channel's and the call's credentials, asked on each attempt.
    pub(super) credentials: Option<Arc<dyn CallCredentials>>,
}

impl Prepared {
    /// The call's retry counts, if it is measured.
    pub(super) fn measured(&self) -> Option<&ClientCall> {
        self.measure.as_ref()?.client_call().map(|call| &**call)
    }

    /// Counts an attempt beyond the first in the call's metrics.
    pub(super) fn another_attempt(&self, why: Another) {
        if let Some(call) = self.measured() {
            call.another_attempt(why);
        }
    }
}
