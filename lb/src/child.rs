//! Running one policy under another: the child's requests pass through to the channel while
//! the parent keeps what the child publishes (weighted round robin and least request over
//! round robin's subchannel management; the parents of child policies).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Address, Endpoint, Status};

use crate::{
    policy::{
        ChannelControl, FixedPicker, LbMetric, LbPolicy, LbPolicyBuilder, Pick, Picker,
        PolicyConfig, SubchannelId,
    },
    ConnectivityState, OrcaLoadReport,
};

/// A child policy its parent built from the registry: the policy, the subchannels it owns,
/// and what it last published.
#[derive(Debug)]
pub(crate) struct ChildPolicy {
    builder: Arc<dyn LbPolicyBuilder>,
    policy: Box<dyn LbPolicy>,
    /// Its subchannels, and their addresses.
    pub(crate) subchannels: HashMap<SubchannelId, Address>,
    /// Its state and picker: CONNECTING and queueing until it first publishes.
    pub(crate) state: ConnectivityState,
    pub(crate) picker: Arc<dyn Picker>,
    /// Its requests to re-resolve are dropped (priority's `ignore_reresolution_requests`).
    pub(crate) ignore_resolution: bool,
}

/// The endpoints a parent hands its child `name`: those whose path starts with it, with the
/// rest of their path.
pub(crate) fn endpoints_under(name: &str, endpoints: &[Endpoint]) -> Vec<Endpoint> {
    endpoints
        .iter()
        .filter(|e| e.path.first().is_some_and(|p| p == name))
        .map(|e| {
            let mut child = e.clone();
            child.path.remove(0);
            child
        })
        .collect()
}

/// What one step of a child's changed, for its parent to act on.
#[derive(Debug, Default)]
pub(crate) struct Stepped {
    /// It published (its `state` and `picker` are new).
    pub(crate) published: bool,
    /// Subchannels it created.
    pub(crate) created: Vec<(SubchannelId, Address)>,
    /// Subchannels it removed.
    pub(crate) removed: Vec<SubchannelId>,
}

impl ChildPolicy {
    /// A new child of policy `builder`.
    pub(crate) fn new(builder: Arc<dyn LbPolicyBuilder>, seed: u64) -> ChildPolicy {
        ChildPolicy {
            policy: builder.build(seed),
            builder,
            subchannels: HashMap::new(),
            state: ConnectivityState::Connecting,
            picker: Arc::new(FixedPicker(Pick::Queue)),
            ignore_resolution: false,
        }
    }

    /// The name of its policy.
    pub(crate) fn name(&self) -> &'static str {
        self.builder.name()
    }

    /// Runs `f` on the child's policy over the parent's channel, keeping what it publishes.
    pub(crate) fn step(
        &mut self,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut dyn LbPolicy, &mut dyn ChannelControl),
    ) -> Stepped {
        let policy = &mut *self.policy;
        let captured = capture(ctl, self.ignore_resolution, |ctl| f(policy, ctl));
        captured.track(&mut self.subchannels, |address| address.clone());
        let Captured {
            published,
            created,
            removed,
        } = captured;
        let stepped = Stepped {
            published: published.is_some(),
            created,
            removed,
        };
        if let Some((state, picker)) = published {
            self.state = state;
            self.picker = picker;
        }
        stepped
    }

    /// Whether subchannel `id` is the child's.
    pub(crate) fn owns(&self, id: SubchannelId) -> bool {
        self.subchannels.contains_key(&id)
    }

    /// Tells the child a subchannel's state changed.
    pub(crate) fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) -> Stepped {
        self.step(ctl, |policy, ctl| {
            policy.subchannel_state(id, state, status, ctl)
        })
    }

    /// Tells the child the resolver failed.
    pub(crate) fn resolver_error(
        &mut self,
        status: Status,
        ctl: &mut dyn ChannelControl,
    ) -> Stepped {
        self.step(ctl, |policy, ctl| policy.resolver_error(status, ctl))
    }

    /// Asks the child to leave IDLE.
    pub(crate) fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) -> Stepped {
        self.step(ctl, |policy, ctl| policy.exit_idle(ctl))
    }

    /// Hands the child an out-of-band load report of one of its subchannels.
    pub(crate) fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) -> Stepped {
        self.step(ctl, |policy, ctl| policy.load_report(id, report, ctl))
    }

    /// Feeds the child an update of endpoints with its config.
    pub(crate) fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: &PolicyConfig,
        ctl: &mut dyn ChannelControl,
    ) -> Stepped {
        self.step(ctl, |policy, ctl| {
            policy.update(endpoints, Some(config), ctl)
        })
    }

    /// When the child next wants its timer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.policy.poll_timeout()
    }

    /// Runs the child's timer if it is due.
    pub(crate) fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) -> Stepped {
        match self.poll_timeout() {
            Some(at) if at <= ctl.now() => self.step(ctl, |policy, ctl| policy.handle_timeout(ctl)),
            _ => Stepped::default(),
        }
    }

    /// Removes every subchannel the child made: the parent is done with it.
    pub(crate) fn shut_down(self, ctl: &mut dyn ChannelControl) {
        for id in self.subchannels.into_keys() {
            ctl.remove_subchannel(id);
        }
    }
}

/// What one step of a policy run under another did: its last publication, and the
/// subchannels it made and removed.
#[derive(Default)]
pub(crate) struct Captured {
    pub(crate) published: Option<(ConnectivityState, Arc<dyn Picker>)>,
    pub(crate) created: Vec<(SubchannelId, Address)>,
    pub(crate) removed: Vec<SubchannelId>,
}

impl Captured {
    /// Keeps a per-subchannel `map` in step with what was made (`new` of its address) and
    /// removed.
    pub(crate) fn track<S>(
        &self,
        map: &mut HashMap<SubchannelId, S>,
        mut new: impl FnMut(&Address) -> S,
    ) {
        for (id, address) in &self.created {
            map.insert(*id, new(address));
        }
        for id in &self.removed {
            map.remove(id);
        }
    }
}

/// Runs `f` over the parent's channel `ctl`, its requests passed through (re-resolution
/// dropped when `ignore_resolution`) but its publication kept, with the subchannels it made
/// and removed, for the parent to use.
pub(crate) fn capture(
    ctl: &mut dyn ChannelControl,
    ignore_resolution: bool,
    f: impl FnOnce(&mut dyn ChannelControl),
) -> Captured {
    let mut capture = Capture {
        inner: ctl,
        captured: Captured::default(),
        ignore_resolution,
    };
    f(&mut capture);
    capture.captured
}

/// The [`ChannelControl`] of [`capture`].
struct Capture<'a> {
    inner: &'a mut dyn ChannelControl,
    captured: Captured,
    ignore_resolution: bool,
}

impl ChannelControl for Capture<'_> {
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
        let id = self.inner.new_subchannel(address);
        self.captured.created.push((id, address.clone()));
        id
    }
    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.captured.removed.push(id);
        self.inner.remove_subchannel(id);
    }
    fn connect(&mut self, id: SubchannelId) {
        self.inner.connect(id);
    }
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.captured.published = Some((state, picker));
    }
    fn request_resolution(&mut self) {
        if !self.ignore_resolution {
            self.inner.request_resolution();
        }
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
