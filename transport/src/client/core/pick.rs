//! A call's pick: the published picker asked for the call, with its path and headers,
//! waiting while it queues; what the pick hands the call; and the work a picker asks of its
//! policy.

use std::{
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use anygrpc_lb::{ConnectivityState, LbPolicy, Pick, PickInfo};
use bytes::Bytes;
use futures_util::future::poll_fn;
use h2::client::SendRequest;

use super::{close, Core};
use crate::channelz::CallCounters;
use crate::client::{conn::Subchannel, response::Observation};
use crate::Status;

/// What a pick gives a call.
pub(crate) struct Picked {
    pub(crate) subchannel: Arc<Subchannel>,
    /// The subchannel's connection.
    pub(crate) send: SendRequest<Bytes>,
    /// The connection's generation, to report it closed.
    pub(crate) generation: u64,
    /// The channelz counters of the connection's streams.
    pub(crate) streams: Option<Arc<CallCounters>>,
    /// The policy's observer of the call, if it wants to hear how the call ends.
    pub(crate) observation: Option<Observation>,
}

impl Core {
    /// Picks a READY subchannel for a call, waiting while the picker queues, and (with
    /// `wait_for_ready`) while it fails. Returns the subchannel, its connection, and the
    /// connection's generation.
    pub(crate) async fn pick(
        &self,
        request: &http::Request<()>,
        wait_for_ready: bool,
    ) -> Result<Picked, Status> {
        poll_fn(|cx| self.poll_pick(cx, request, wait_for_ready)).await
    }

    fn poll_pick(
        &self,
        cx: &mut Context<'_>,
        request: &http::Request<()>,
        wait_for_ready: bool,
    ) -> Poll<Result<Picked, Status>> {
        let published = self.published();
        if published.state == ConnectivityState::Shutdown {
            return Poll::Ready(Err(close::closed()));
        }
        let work = || self.request_work();
        let call = PickInfo::new(request.uri().path(), request.headers()).with_work(&work);
        let (id, observer) = match published.picker.pick(&call) {
            Pick::Ready(id) => (Some(id), None),
            Pick::Observed(id, observer) => (Some(id), Some(observer)),
            Pick::Fail(status) if !wait_for_ready => return Poll::Ready(Err(status)),
            Pick::Fail(_) | Pick::Queue => (None, None),
        };
        let observation = observer.map(|o| Observation::new(o, self.runtime.clone()));
        if let Some(subchannel) = id.and_then(|id| published.subchannels.get(&id)) {
            if let Some((send, generation, streams)) = subchannel.ready() {
                return Poll::Ready(Ok(Picked {
                    subchannel: subchannel.clone(),
                    send,
                    generation,
                    streams,
                    observation,
                }));
            }
            // The picker is about to be replaced (its subchannel just went away).
        }
        self.park(&published, cx.waker());
        if published.state == ConnectivityState::Idle {
            self.exit_idle();
        }
        Poll::Pending
    }

    /// A picker wants its policy to act ([`PickInfo::request_work`]): runs the policy's timer
    /// from a task of its own, once for any number of picks asking before it runs.
    fn request_work(&self) {
        if self.work_requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.this.clone();
        self.runtime.spawn(Box::pin(async move {
            if let Some(core) = this.upgrade() {
                core.work_requested.store(false, Ordering::Release);
                // The policy's timer, run early: the timer task armed for its next deadline,
                // if any, stays armed.
                core.with_policy(|policy, ctl| policy.handle_timeout(ctl));
            }
        }));
    }
}
