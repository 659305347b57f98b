//! Running one policy under another: the child's requests pass through to the channel while
//! the parent keeps what the child publishes (weighted round robin and least request over
//! round robin's subchannel management; the parents of child policies).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::Address;

use crate::{
    policy::{ChannelControl, LbMetric, Picker, SubchannelId},
    ConnectivityState,
};

/// The [`ChannelControl`] a child policy runs under: passes its requests through to the
/// parent's channel, but keeps what it publishes, and which subchannels it made and removed,
/// for the parent to use.
pub(crate) struct Capture<'a> {
    inner: &'a mut dyn ChannelControl,
    /// The child's last publication in this step.
    pub(crate) published: Option<(ConnectivityState, Arc<dyn Picker>)>,
    /// Subchannels it created in this step.
    pub(crate) created: Vec<(SubchannelId, Address)>,
    /// Subchannels it removed in this step.
    pub(crate) removed: Vec<SubchannelId>,
}

impl<'a> Capture<'a> {
    /// A capture of one step of a child's, over the parent's channel.
    pub(crate) fn new(inner: &'a mut dyn ChannelControl) -> Capture<'a> {
        Capture {
            inner,
            published: None,
            created: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl ChannelControl for Capture<'_> {
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
        let id = self.inner.new_subchannel(address);
        self.created.push((id, address.clone()));
        id
    }
    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.removed.push(id);
        self.inner.remove_subchannel(id);
    }
    fn connect(&mut self, id: SubchannelId) {
        self.inner.connect(id);
    }
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.published = Some((state, picker));
    }
    fn request_resolution(&mut self) {
        self.inner.request_resolution();
    }
    fn enable_health_check(&mut self, id: SubchannelId) {
        self.inner.enable_health_check(id);
    }
    fn set_load_reporting(&mut self, id: SubchannelId, interval: Option<Duration>) {
        self.inner.set_load_reporting(id, interval);
    }
    fn record(&mut self, metric: LbMetric) {
        self.inner.record(metric);
    }
}
