//! The channel's control plane: the resolver feeds the load-balancing policy, the policy
//! manages subchannels and publishes a picker, and calls pick.
//!
//! All policy calls happen under one lock, through [`Ctl`], which records what the policy asks
//! for; the requests (connect, shut down, re-resolve) run after the lock is released, so a
//! subchannel reporting a state change never waits on a lock held across IO. What the policy
//! publishes — state, picker, and the subchannels the picker may name — is a separate
//! immutable [`Published`] snapshot behind a read-write lock: a call reads it and picks without
//! ever touching the policy's lock. Calls waiting for a usable picker, and watchers of the
//! channel's state, park their wakers in a list woken on every publication.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, RwLock, Weak,
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use anygrpc_lb::{
    graceful_switch::GracefulSwitch, ChannelControl, ConnectivityState, FixedPicker, LbMetric,
    LbPolicy, LbPolicyBuilder, OrcaLoadReport, Pick, Picker, PolicyConfig, PolicyRegistry,
    ServiceConfig, SubchannelId, Throttle,
};
use anygrpc_resolver::{Resolver, ResolverBuilder, ResolverUpdate, Target};
use anygrpc_rt::{Address, Runtime};
use futures_util::future::poll_fn;

use super::conn::{ConnSettings, Subchannel, SubchannelEvents};
use super::idle::{ActiveCall, Activity};

mod close;
mod pick;
use crate::channelz::{proto::channel_trace_event::Severity, ChannelNode};
use crate::metrics::Recorder;
use crate::Status;

struct Inner {
    /// The policy; a service config naming another one switches to it gracefully.
    policy: GracefulSwitch,
    /// What `policy` was built from, and the connection settings of its subchannels: a
    /// service config naming another policy or health-check service replaces all three.
    policy_builder: Arc<dyn LbPolicyBuilder>,
    policy_config: PolicyConfig,
    settings: Arc<ConnSettings>,
    /// Counts the channel's exits from IDLE: the resolver and idle tasks of an earlier one
    /// stop, and their updates are ignored.
    epoch: u64,
    subchannels: HashMap<SubchannelId, Arc<Subchannel>>,
    next_id: u64,
    /// The resolver task is running (it starts when the channel first leaves IDLE).
    resolving: bool,
    /// The instant a timer task is armed for, if any.
    timer: Option<Instant>,
    /// Set when the resolver has been asked to resolve again; the resolver task takes it.
    resolve_now: bool,
    resolver_waker: Option<Waker>,
    /// The channel was closed: the policy is no longer told anything, and the channel
    /// stays SHUTDOWN.
    shut_down: bool,
}

/// What an ended epoch leaves to let go of once the lock is released.
struct EndedEpoch {
    subchannels: HashMap<SubchannelId, Arc<Subchannel>>,
    resolver_waker: Option<Waker>,
}

/// What calls see: the policy's latest state and picker, and the subchannels at that moment.
struct Published {
    state: ConnectivityState,
    picker: Arc<dyn Picker>,
    subchannels: HashMap<SubchannelId, Arc<Subchannel>>,
}

/// The service config calls follow now, and the channel's retry throttle for it.
#[derive(Debug, Default)]
pub(crate) struct CallConfig {
    pub(crate) service_config: Arc<ServiceConfig>,
    pub(crate) throttle: Option<Arc<Throttle>>,
}

/// A channel's resolver, policy, subchannels and picker.
pub(crate) struct Core {
    runtime: Arc<dyn Runtime>,
    /// The health-check service and policy the channel was built with, used where the service
    /// config says nothing.
    health_check_service: Option<String>,
    policy_builder: Arc<dyn LbPolicyBuilder>,
    policy_config: PolicyConfig,
    lb_registry: PolicyRegistry,
    /// The builder's service config, in force while the resolver provides none.
    default_config: Arc<ServiceConfig>,
    call_config: RwLock<Arc<CallConfig>>,
    /// The resolver has given its first result: the service config calls follow is known.
    resolved_once: AtomicBool,
    /// A task to run the policy's timer for its pickers is on its way.
    work_requested: AtomicBool,
    target: Target,
    resolver_builder: Arc<dyn ResolverBuilder>,
    resolver: Mutex<Box<dyn Resolver>>,
    /// An unused channel goes IDLE after this long (`None`: never).
    idle_timeout: Option<Duration>,
    /// Calls in flight, and when the channel was last used.
    activity: Arc<Activity>,
    inner: Mutex<Inner>,
    published: RwLock<Arc<Published>>,
    waiters: Mutex<Vec<Waker>>,
    /// The channel's channelz entry: its state, calls, subchannels and events.
    pub(crate) channelz: Arc<ChannelNode>,
    /// The channel's metrics and target, for what its policy measures (gRFC A78).
    metrics: Option<(Recorder, Arc<str>)>,
    this: Weak<Core>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("state", &self.published().state)
            .finish_non_exhaustive()
    }
}

/// What a policy asked for, done once the lock is released.
enum Action {
    Connect(Arc<Subchannel>),
    Shutdown(Arc<Subchannel>),
    LoadReporting(Arc<Subchannel>, Option<Duration>),
}

/// The [`ChannelControl`] a policy sees: records its requests.
struct Ctl<'a> {
    core: &'a Core,
    settings: &'a Arc<ConnSettings>,
    subchannels: &'a mut HashMap<SubchannelId, Arc<Subchannel>>,
    next_id: &'a mut u64,
    published: Option<(ConnectivityState, Arc<dyn Picker>)>,
    actions: Vec<Action>,
    resolve_now: bool,
}

impl ChannelControl for Ctl<'_> {
    fn now(&self) -> Instant {
        self.core.runtime.now()
    }

    fn new_subchannel(&mut self, address: &Address) -> SubchannelId {
        *self.next_id += 1;
        let id = SubchannelId(*self.next_id);
        let subchannel = Subchannel::new(
            id,
            address.clone(),
            self.core.this.clone() as Weak<dyn SubchannelEvents>,
            self.core.runtime.clone(),
            self.settings.clone(),
            self.core.channelz.subchannel(address),
        );
        self.subchannels.insert(id, Arc::new(subchannel));
        id
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        if let Some(subchannel) = self.subchannels.remove(&id) {
            self.core.channelz.remove_subchannel(&subchannel.channelz);
            self.actions.push(Action::Shutdown(subchannel));
        }
    }

    fn connect(&mut self, id: SubchannelId) {
        if let Some(subchannel) = self.subchannels.get(&id) {
            self.actions.push(Action::Connect(subchannel.clone()));
        }
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.published = Some((state, picker));
    }

    fn request_resolution(&mut self) {
        self.resolve_now = true;
    }

    fn enable_health_check(&mut self, id: SubchannelId) {
        if let Some(subchannel) = self.subchannels.get(&id) {
            subchannel.enable_health_check();
        }
    }

    fn set_load_reporting(&mut self, id: SubchannelId, interval: Option<Duration>) {
        if let Some(subchannel) = self.subchannels.get(&id) {
            self.actions
                .push(Action::LoadReporting(subchannel.clone(), interval));
        }
    }

    fn record(&mut self, metric: LbMetric) {
        if let Some((metrics, target)) = &self.core.metrics {
            metrics.lb(metric, target);
        }
    }
}

/// What a channel's control plane is built from.
pub(crate) struct CoreConfig {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) settings: ConnSettings,
    /// The channel's channelz entry.
    pub(crate) channelz: Arc<ChannelNode>,
    pub(crate) target: Target,
    pub(crate) resolver_builder: Arc<dyn ResolverBuilder>,
    pub(crate) policy_builder: Arc<dyn LbPolicyBuilder>,
    pub(crate) policy_config: PolicyConfig,
    pub(crate) lb_registry: PolicyRegistry,
    /// Already checked with [`check_service_config`].
    pub(crate) default_service_config: ServiceConfig,
    pub(crate) idle_timeout: Option<Duration>,
    /// The channel's metrics and its target as they name it, for the policy's measurements.
    pub(crate) metrics: Option<(Recorder, Arc<str>)>,
}

/// Parses a service config and checks its `loadBalancingConfig` against `registry`.
pub(crate) fn check_service_config(
    json: &str,
    registry: &PolicyRegistry,
) -> Result<ServiceConfig, Status> {
    let config = ServiceConfig::parse(json)?;
    if let Some(list) = &config.load_balancing_config {
        registry.parse_lb_config(list)?;
    }
    Ok(config)
}

impl SubchannelEvents for Core {
    /// A subchannel's connectivity changed.
    fn subchannel_state(&self, id: SubchannelId, state: ConnectivityState, status: Option<Status>) {
        self.with_policy(|policy, ctl| policy.subchannel_state(id, state, status.as_ref(), ctl));
    }

    /// A subchannel's out-of-band load report arrived.
    fn load_report(&self, id: SubchannelId, report: OrcaLoadReport) {
        self.with_policy(|policy, ctl| policy.load_report(id, &report, ctl));
    }
}

impl Core {
    /// Builds the control plane; the resolver is built now so a bad target fails the build.
    pub(crate) fn new(config: CoreConfig) -> Result<Arc<Core>, Status> {
        let resolver = config
            .resolver_builder
            .build(&config.target, config.runtime.clone())?;
        let activity = Activity::new(config.runtime.clone());
        let health_check_service = config.settings.health_check_service.clone();
        let default_config = Arc::new(config.default_service_config);
        let core = Arc::new_cyclic(|this| Core {
            runtime: config.runtime,
            inner: Mutex::new(Inner {
                policy: GracefulSwitch::with_policy(
                    config.policy_builder.clone(),
                    fastrand::u64(..),
                ),
                policy_builder: config.policy_builder.clone(),
                policy_config: config.policy_config.clone(),
                settings: Arc::new(config.settings),
                epoch: 0,
                subchannels: HashMap::new(),
                next_id: 0,
                resolving: false,
                timer: None,
                resolve_now: false,
                resolver_waker: None,
                shut_down: false,
            }),
            health_check_service,
            policy_builder: config.policy_builder,
            policy_config: config.policy_config,
            lb_registry: config.lb_registry,
            default_config: default_config.clone(),
            call_config: RwLock::default(),
            target: config.target,
            resolver_builder: config.resolver_builder,
            resolver: Mutex::new(resolver),
            idle_timeout: config.idle_timeout,
            activity,
            published: RwLock::new(Arc::new(Published {
                state: ConnectivityState::Idle,
                picker: Arc::new(FixedPicker(Pick::Queue)),
                subchannels: HashMap::new(),
            })),
            waiters: Mutex::new(Vec::new()),
            resolved_once: AtomicBool::new(false),
            work_requested: AtomicBool::new(false),
            channelz: config.channelz,
            metrics: config.metrics,
            this: this.clone(),
        });
        core.use_service_config(default_config);
        Ok(core)
    }

    /// The service config calls follow now.
    pub(crate) fn call_config(&self) -> Arc<CallConfig> {
        self.call_config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the resolver's first result (starting resolution if the channel is IDLE):
    /// until then, the service config a call follows is not known (gRFC A2: calls wait for
    /// it, as in grpc-go and the C-core).
    pub(crate) async fn first_resolution(&self) {
        poll_fn(|cx| {
            if self.resolved_once.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waiters().push(cx.waker().clone());
            if self.resolved_once.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.exit_idle();
            Poll::Pending
        })
        .await
    }

    /// Whether the resolver has given its first result.
    pub(crate) fn resolved_once(&self) -> bool {
        self.resolved_once.load(Ordering::Acquire)
    }

    /// Takes a resolver's service config, or the default when it has none. An invalid one
    /// is logged and ignored: the config in force stays.
    fn resolver_service_config(&self, json: Option<&str>) {
        let config = match json {
            None => self.default_config.clone(),
            Some(json) => match check_service_config(json, &self.lb_registry) {
                Ok(config) => Arc::new(config),
                Err(status) => {
                    tracing::warn!(target = ?self.target, %status, "ignoring the resolver's invalid service config");
                    return;
                }
            },
        };
        self.use_service_config(config);
    }

    /// Puts `config` in force: calls follow it from now on; a change of load-balancing
    /// policy or health-check service rebuilds the policy (and so its subchannels), and the
    /// next resolver update feeds the new one. The retry throttle carries over while its
    /// settings stay the same.
    fn use_service_config(&self, config: Arc<ServiceConfig>) {
        let current = self.call_config();
        if *current.service_config == *config {
            return;
        }
        let throttle = config
            .retry_throttling
            .map(|settings| match &current.throttle {
                Some(throttle) if throttle.config() == settings => throttle.clone(),
                _ => Arc::new(Throttle::new(settings)),
            });
        let (builder, policy_config) = config
            .load_balancing_config
            .as_ref()
            .and_then(|list| self.lb_registry.parse_lb_config(list).ok())
            .unwrap_or_else(|| (self.policy_builder.clone(), self.policy_config.clone()));
        let health = config
            .health_check_service_name
            .clone()
            .or_else(|| self.health_check_service.clone());
        {
            let mut inner = self.lock();
            let same_policy = inner.policy_config == policy_config
                && inner.settings.health_check_service == health;
            *self.call_config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(CallConfig {
                service_config: config,
                throttle,
            });
            if same_policy {
                return;
            }
            tracing::debug!(policy = %policy_config.name, "service config: new load-balancing policy");
            inner.policy_builder = builder.clone();
            inner.policy_config = policy_config;
            inner.settings = Arc::new(ConnSettings {
                health_check_service: health,
                ..(*inner.settings).clone()
            });
        }
        // The current policy keeps serving until the new one can (the resolver update that
        // brought the config feeds it next).
        self.with_policy(|policy, ctl| policy.switch_to(builder, ctl));
    }

    /// A call is starting: the channel stays out of IDLE until the returned guard drops.
    pub(crate) fn call_started(&self) -> ActiveCall {
        self.activity.call_started()
    }

    /// Goes IDLE (the idle timeout passed with no calls): shuts every subchannel down, drops
    /// the policy and the resolver for fresh ones, and publishes IDLE. The next call or
    /// request to connect starts over.
    fn enter_idle(&self, epoch: u64) {
        let ended = {
            let mut inner = self.lock();
            if inner.epoch != epoch || self.activity.in_use() {
                return;
            }
            inner.policy =
                GracefulSwitch::with_policy(inner.policy_builder.clone(), fastrand::u64(..));
            let queue = Arc::new(FixedPicker(Pick::Queue));
            self.end_epoch(&mut inner, ConnectivityState::Idle, queue)
        };
        tracing::debug!(target = ?self.target, "channel idle: connections closed");
        match self
            .resolver_builder
            .build(&self.target, self.runtime.clone())
        {
            Ok(resolver) => *crate::sync::lock(&self.resolver) = resolver,
            Err(status) => {
                tracing::warn!(%status, "could not rebuild the resolver; keeping the old one")
            }
        }
        self.release(ended);
    }

    /// Ends the current epoch, under the lock: its resolver and idle tasks stop and their
    /// updates are ignored, and calls see `state` with `picker` and no subchannels. What the
    /// epoch held is let go of by [`release`](Self::release), once the lock is dropped.
    fn end_epoch(
        &self,
        inner: &mut Inner,
        state: ConnectivityState,
        picker: Arc<dyn Picker>,
    ) -> EndedEpoch {
        inner.epoch += 1;
        inner.resolving = false;
        inner.resolve_now = false;
        inner.timer = None;
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Published {
            state,
            picker,
            subchannels: HashMap::new(),
        });
        EndedEpoch {
            subchannels: std::mem::take(&mut inner.subchannels),
            resolver_waker: inner.resolver_waker.take(),
        }
    }

    /// Lets go of an ended epoch: wakes its resolver task (to stop) and the parked calls (to
    /// pick again), and shuts its subchannels down, returning them.
    fn release(&self, ended: EndedEpoch) -> Vec<Arc<Subchannel>> {
        if let Some(waker) = ended.resolver_waker {
            waker.wake();
        }
        let waiters = std::mem::take(&mut *self.waiters());
        waiters.into_iter().for_each(Waker::wake);
        let subchannels: Vec<_> = ended.subchannels.into_values().collect();
        for subchannel in &subchannels {
            subchannel.shutdown();
        }
        subchannels
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    fn published(&self) -> Arc<Published> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn waiters(&self) -> MutexGuard<'_, Vec<Waker>> {
        crate::sync::lock(&self.waiters)
    }

    /// Parks `waker` until the next publication, unless `seen` is already stale (then the
    /// caller is woken at once, so a publication between its read and this call is not lost).
    fn park(&self, seen: &Arc<Published>, waker: &Waker) {
        self.waiters().push(waker.clone());
        if !Arc::ptr_eq(seen, &self.published()) {
            waker.wake_by_ref();
        }
    }

    /// Runs `f` on the policy, then publishes what it published and carries out its requests.
    fn with_policy(&self, f: impl FnOnce(&mut GracefulSwitch, &mut dyn ChannelControl)) {
        self.with_policy_of(None, f);
    }

    /// [`with_policy`](Self::with_policy), skipped unless the channel is still in `epoch`
    /// (when given).
    fn with_policy_of(
        &self,
        epoch: Option<u64>,
        f: impl FnOnce(&mut GracefulSwitch, &mut dyn ChannelControl),
    ) {
        let mut guard = self.lock();
        if guard.shut_down || epoch.is_some_and(|epoch| epoch != guard.epoch) {
            return;
        }
        let inner = &mut *guard;
        let mut ctl = Ctl {
            core: self,
            settings: &inner.settings,
            subchannels: &mut inner.subchannels,
            next_id: &mut inner.next_id,
            published: None,
            actions: Vec::new(),
            resolve_now: false,
        };
        f(&mut inner.policy, &mut ctl);
        let Ctl {
            published,
            actions,
            resolve_now,
            ..
        } = ctl;
        self.apply(guard, published, actions, resolve_now);
    }

    /// The second half of [`with_policy`](Self::with_policy), not generic.
    fn apply(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        published: Option<(ConnectivityState, Arc<dyn Picker>)>,
        actions: Vec<Action>,
        resolve_now: bool,
    ) {
        let publish = published.map(|(state, picker)| Published {
            state,
            picker,
            subchannels: inner.subchannels.clone(),
        });
        let mut wake_resolver = None;
        if resolve_now {
            inner.resolve_now = true;
            wake_resolver = inner.resolver_waker.take();
        }
        let armed = inner.timer;
        let timer = inner
            .policy
            .poll_timeout()
            .filter(|at| armed.is_none_or(|armed| *at < armed));
        if let Some(at) = timer {
            inner.timer = Some(at);
        }
        // Published under the policy's lock, so publications land in the order they were made.
        let published = publish.is_some();
        if let Some(publish) = publish {
            self.channelz.set_state(publish.state);
            *self.published.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(publish);
        }
        drop(inner);
        if published {
            let waiters = std::mem::take(&mut *self.waiters());
            waiters.into_iter().for_each(Waker::wake);
        }
        if let Some(waker) = wake_resolver {
            waker.wake();
        }
        if let Some(at) = timer {
            let this = self.this.clone();
            let runtime = self.runtime.clone();
            self.runtime.spawn(Box::pin(async move {
                runtime.sleep_until(at).await;
                if let Some(core) = this.upgrade() {
                    core.on_timer();
                }
            }));
        }
        for action in actions {
            match action {
                Action::Connect(subchannel) => subchannel.connect(),
                Action::Shutdown(subchannel) => subchannel.shutdown(),
                Action::LoadReporting(subchannel, interval) => {
                    subchannel.set_load_reporting(interval)
                }
            }
        }
    }

    fn on_timer(&self) {
        self.lock().timer = None;
        self.with_policy(|policy, ctl| policy.handle_timeout(ctl));
    }

    /// Leaves IDLE: starts resolving (once per exit from IDLE) and the idle timer, and asks
    /// the policy to connect.
    pub(crate) fn exit_idle(&self) {
        let start = {
            let mut inner = self.lock();
            (!std::mem::replace(&mut inner.resolving, true)).then_some(inner.epoch)
        };
        if let Some(epoch) = start {
            let this = self.this.clone();
            self.runtime.spawn(Box::pin(resolve_task(this, epoch)));
            if let Some(timeout) = self.idle_timeout {
                self.activity.touch();
                let this = self.this.clone();
                let runtime = self.runtime.clone();
                self.runtime
                    .spawn(Box::pin(idle_task(this, runtime, epoch, timeout)));
            }
        } else {
            self.with_policy(|policy, ctl| policy.exit_idle(ctl));
        }
    }

    /// The channel's connectivity state; with `connect`, leaves IDLE.
    pub(crate) fn state(&self, connect: bool) -> ConnectivityState {
        let state = self.published().state;
        if connect && state == ConnectivityState::Idle {
            self.exit_idle();
        }
        state
    }

    /// Waits until the state differs from `from`; returns the new state.
    pub(crate) async fn changed(&self, from: ConnectivityState) -> ConnectivityState {
        poll_fn(|cx| {
            let published = self.published();
            if published.state != from {
                return Poll::Ready(published.state);
            }
            self.park(&published, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The resolver of `epoch` produced an update (or failed).
    fn resolved(&self, epoch: u64, update: ResolverUpdate) {
        match &update.endpoints {
            Ok(endpoints) => {
                self.channelz.event(
                    Severity::CtInfo,
                    format!("Resolved {} endpoint(s)", endpoints.len()),
                );
                self.resolver_service_config(update.service_config.as_deref());
            }
            Err(status) => self
                .channelz
                .event(Severity::CtWarning, format!("Resolution failed: {status}")),
        }
        let config = self.lock().policy_config.clone();
        self.with_policy_of(Some(epoch), |policy, ctl| match update.endpoints {
            Ok(endpoints) => policy.update(endpoints, Some(&config), ctl),
            Err(status) => policy.resolver_error(status, ctl),
        });
        if !self.resolved_once.swap(true, Ordering::AcqRel) {
            let waiters = std::mem::take(&mut *self.waiters());
            waiters.into_iter().for_each(Waker::wake);
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Let the resolver task see that the channel is gone.
        let waker = self.lock().resolver_waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Feeds resolver updates to the policy for as long as the channel lives and stays out of
/// IDLE.
async fn resolve_task(core: Weak<Core>, epoch: u64) {
    loop {
        let update = poll_fn(|cx| {
            let Some(core) = core.upgrade() else {
                return Poll::Ready(None);
            };
            let mut resolver = crate::sync::lock(&core.resolver);
            {
                let mut inner = core.lock();
                if inner.epoch != epoch {
                    return Poll::Ready(None);
                }
                if std::mem::take(&mut inner.resolve_now) {
                    resolver.resolve_now();
                }
                inner.resolver_waker = Some(cx.waker().clone());
            }
            resolver.poll_update(cx).map(Some)
        })
        .await;
        let Some(update) = update else { return };
        let Some(core) = core.upgrade() else { return };
        core.resolved(epoch, update);
    }
}

/// Returns the channel to IDLE once no call has been in flight for `timeout`.
async fn idle_task(core: Weak<Core>, runtime: Arc<dyn Runtime>, epoch: u64, timeout: Duration) {
    loop {
        let deadline = {
            let Some(core) = core.upgrade() else { return };
            if core.lock().epoch != epoch {
                return;
            }
            core.activity.idle_deadline(timeout)
        };
        runtime.sleep_until(deadline).await;
        let Some(core) = core.upgrade() else { return };
        if core.activity.idle_deadline(timeout) <= runtime.now() {
            return core.enter_idle(epoch);
        }
    }
}
