//! The client: [`Channel`] and the generic call API ([`Grpc`]) that generated stubs use.
//!
//! The rooms, in the order a call passes through them (each imports only rooms below it):
//! - `builder`: [`ChannelBuilder`], a channel's settings;
//! - `core`: the channel's resolver, policy, subchannels and picker, and the pick that waits
//!   for them;
//! - `conn`: a subchannel's connection (connect, handshake, keepalive, health checks), which
//!   reports to `core` through a trait it declares;
//! - `idle`: whether the channel is in use, for its idle timer;
//! - `call`: the [`Grpc`] call API, a call's preparation and its four shapes;
//! - `attempts`: the gRFC A6 retry and hedging driver;
//! - `response`: an attempt's response side, the client's hook on the side-neutral receive
//!   stream;
//! - `sender` and `requests`: an attempt's request side (a replayed stream, request channels);
//! - `buffer`: the retry buffer a call holds its request in until it commits;
//! - `prepared`: a call ready to make attempts.
//!
//! Cancellation from outside a call ([`CancelToken`]) is the crate's `cancel` room: a
//! server's call context cancels with it too.

mod attempts;
mod buffer;
mod builder;
mod call;
mod chain;
mod conn;
mod core;
mod idle;
mod prepared;
mod proxy;
mod requests;
mod response;
mod sender;

pub use crate::cancel::{cancellation, CancelToken, Cancelled, Canceller};
pub use builder::ChannelBuilder;
pub use requests::{request_channel, RequestClosed, RequestSender, RequestStream};

use std::{fmt, sync::Arc, task::Poll, time::Duration};

use anygrpc_lb::{BufferBudget, ConnectivityState};
use http::{
    uri::{Authority, Scheme},
    HeaderValue,
};

use crate::{credentials::CallCredentials, metrics::Recorder, settings::CallSettings};
use core::Core;

struct ChannelInner {
    target: String,
    /// The target URI as the metrics name it (`grpc.target`).
    canonical_target: Arc<str>,
    metrics: Option<Recorder>,
    scheme: Scheme,
    authority: Authority,
    user_agent: HeaderValue,
    call: CallSettings,
    /// Sent by every call, asked on each attempt.
    call_credentials: Option<Arc<dyn CallCredentials>>,
    /// Whether call credentials that require transport security may be sent (TLS, or
    /// allowed on plaintext).
    secure: bool,
    max_attempts: u32,
    retry_buffer_per_call: usize,
    retry_budget: BufferBudget,
    core: Arc<Core>,
}

/// A client connection to a gRPC target: cheap to clone, safe to share, and usable from any
/// executor.
///
/// It resolves its target on first use (or at [`ChannelBuilder::connect`]), keeps an HTTP/2
/// connection per address its load-balancing policy uses (`pick_first` by default: one), sends
/// each call where the policy's picker says, and reconnects with backoff when connections fail.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.inner.target)
            .field("state", &self.connectivity_state(false))
            .finish()
    }
}

impl Channel {
    /// The channel's id in channelz (`grpc.channelz.v1.Channelz/GetChannel`).
    pub fn channelz_id(&self) -> i64 {
        self.inner.core.channelz.id()
    }

    /// Starts building a channel to `target`: `host:port`, `dns:///host:port`,
    /// `unix:/path`, `unix:///abs/path`, `ipv4:a:p,...`, `ipv6:[a]:p,...`.
    pub fn builder(target: &str) -> ChannelBuilder {
        ChannelBuilder::new(target)
    }

    /// The channel's connectivity state (`doc/connectivity-semantics-and-api.md`); with
    /// `try_to_connect`, an IDLE channel starts connecting.
    pub fn connectivity_state(&self, try_to_connect: bool) -> ConnectivityState {
        self.inner.core.state(try_to_connect)
    }

    /// Waits until the state is no longer `from` and returns the new state. Bound it with a
    /// timer of your runtime to wait with a deadline.
    pub async fn wait_for_state_change(&self, from: ConnectivityState) -> ConnectivityState {
        self.inner.core.changed(from).await
    }

    /// The target the channel was built with.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Closes the channel, for every clone of it: it turns SHUTDOWN for good and new calls
    /// fail `CANCELLED` at once; the calls in flight have `grace` to finish on the
    /// connections they are on, and those still running then fail as their connections are
    /// closed. Resolves when the calls have ended, or at the end of the grace period. A zero
    /// grace closes at once, as grpc-go's `ClientConn.Close` does; dropping every clone
    /// instead lets the calls run to their end.
    pub async fn close(&self, grace: Duration) {
        let core = &self.inner.core;
        let subchannels = core.shut_down();
        let runtime = core.runtime().clone();
        let mut timer = runtime.sleep_until(runtime.now() + grace);
        let activity = core.activity();
        let drained = futures_util::future::poll_fn(|cx| match activity.poll_drained(cx) {
            Poll::Ready(()) => Poll::Ready(true),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| false),
        })
        .await;
        if !drained {
            for subchannel in &subchannels {
                subchannel.close_connection();
            }
        }
    }
}

/// How long an unused channel stays connected unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Per-client call options layered on a [`Channel`]: what generated clients hold.
#[derive(Debug, Clone)]
pub struct Grpc {
    channel: Channel,
    /// Calls are to methods of a generated stub: the metrics name them.
    stub: bool,
    send_compression: Option<&'static str>,
    max_recv_message_size: Option<usize>,
    max_send_message_size: Option<usize>,
}
