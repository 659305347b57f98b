//! Closing a channel: SHUTDOWN for good, the policy and resolver stopped, every subchannel
//! shut down, and the calls in flight left to finish on the connections they have.

use std::{sync::Arc, task::Waker};

use anygrpc_lb::{ConnectivityState, FixedPicker, Pick};

use super::{Core, Published};
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
        let (subchannels, resolver_waker) = {
            let mut inner = self.lock();
            if std::mem::replace(&mut inner.shut_down, true) {
                return Vec::new();
            }
            // The resolver and idle tasks of this epoch see it end, and stop.
            inner.epoch += 1;
            inner.resolving = false;
            inner.resolve_now = false;
            inner.timer = None;
            self.channelz.set_state(ConnectivityState::Shutdown);
            *self.published.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Published {
                state: ConnectivityState::Shutdown,
                picker: Arc::new(FixedPicker(Pick::Fail(closed()))),
                subchannels: Default::default(),
            });
            (
                std::mem::take(&mut inner.subchannels),
                inner.resolver_waker.take(),
            )
        };
        self.activity.close();
        if let Some(waker) = resolver_waker {
            waker.wake();
        }
        let waiters = std::mem::take(&mut *self.waiters());
        waiters.into_iter().for_each(Waker::wake);
        let subchannels: Vec<_> = subchannels.into_values().collect();
        for subchannel in &subchannels {
            subchannel.shutdown();
        }
        subchannels
    }

    /// The channel's calls in flight, to wait for them to end.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}
