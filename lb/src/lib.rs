//! The client channel's decisions, with no IO: connectivity states, the subchannel state machine
//! (on the connection backoff of `anygrpc_codec::backoff`), ORCA load reports, the
//! load-balancing policies (`pick_first`, `round_robin`, `weighted_round_robin`, and any a user
//! registers), the service config, and gRFC A6's retry, hedging and throttling decisions.
//!
//! Everything here takes the current time as a value and returns what to do next, so the
//! transport drives it with real clocks and sockets while tests drive it with virtual time.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod child;
pub mod graceful_switch;
pub mod least_request;
pub mod orca;
pub mod outlier_detection;
pub mod pick_first;
pub mod policy;
pub mod priority;
mod random;
pub mod registry;
pub mod retry;
pub mod ring_hash;
pub mod round_robin;
pub mod service_config;
pub mod subchannel;
pub mod weighted_round_robin;
pub mod weighted_target;

pub use anygrpc_codec::{Address, Endpoint};
pub use orca::OrcaLoadReport;
pub use policy::{
    flatten_endpoints, CallEnd, CallObserver, ChannelControl, FixedPicker, LbMetric, LbPolicy,
    LbPolicyBuilder, Pick, PickInfo, Picker, PolicyConfig, SubchannelId,
};
pub use registry::PolicyRegistry;
pub use retry::{Attempts, BufferBudget, Decision, Pushback, Throttle};
pub use service_config::{AttemptPolicy, MethodConfig, ServiceConfig};
pub use subchannel::{ConnectAttempt, Subchannel};

use std::fmt;

/// The connectivity state of a channel or subchannel (`doc/connectivity-semantics-and-api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// No connection and none being made; a call or a request to connect starts one.
    Idle,
    /// A connection is being established.
    Connecting,
    /// A connection is established and usable.
    Ready,
    /// The last attempt failed; waiting out the backoff before the next.
    TransientFailure,
    /// Shut down for good.
    Shutdown,
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectivityState::Idle => "IDLE",
            ConnectivityState::Connecting => "CONNECTING",
            ConnectivityState::Ready => "READY",
            ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
            ConnectivityState::Shutdown => "SHUTDOWN",
        })
    }
}
