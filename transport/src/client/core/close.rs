//! Closing a channel: SHUTDOWN for good, the policy and resolver stopped, every subchannel
//! shut down, and the calls in flight left to finish on the connections they have.

use std::sync::Arc;

use anygrpc_lb::{ConnectivityState, FixedPicker, Pick};

use super::Core;
use crate::{client::conn::Subchannel, client::idle::Activity, Status};

/// What a call on a closed channel ends with, as in grpc-go.
pub(crate) fn closed() -> Status {
    Status::cancelled("the channel is closed")
}

impl Core {
    /// Closes the channel: it publishes SHUTDOWN (calls that pick from now on fail
    /// [`closed`], wait-for-ready or not), the resolver and idle tasks stop, the policy hears
    /// nothing more, and every subchannel shuts down. Returns the subchannels, whose live
    /// connections go on carrying the calls already on them; empty if already closed.
    pub(crate) fn shut_down(&self) -> Vec<Arc<Subchannel>> {
        let ended = {
            let mut inner = self.lock();
            if std::mem::replace(&mut inner.shut_down, true) {
                return Vec::new();
            }
            self.channelz.set_state(ConnectivityState::Shutdown);
            let fail = Arc::new(FixedPicker(Pick::Fail(closed())));
            self.end_epoch(&mut inner, ConnectivityState::Shutdown, fail)
        };
        self.activity.close();
        self.release(ended)
    }

    /// The channel's calls in flight, to wait for them to end.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}
