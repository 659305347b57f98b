//! `priority_experimental` (gRFCs A56 and A42's changes to it): failover across child
//! policies in priority order, such as xDS's priorities of localities.
//!
//! Each child gets the endpoints whose path starts with its name ([`Endpoint::path`]). Calls
//! go to the highest-priority child that is READY or IDLE, or that is still CONNECTING
//! within its failover timeout (10 s) of being created or of leaving READY. A child that
//! fails, or does not connect in time, makes the policy start the next priority; a higher
//! priority that becomes READY again takes the calls back. Lower priorities stay connected
//! for 15 minutes after they stop being used, so a second failover is quick.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc_codec::{Endpoint, Status};

use crate::{
    child::{endpoints_under, ChildPolicy, Stepped},
    policy::{
        ChannelControl, FixedPicker, LbPolicy, LbPolicyBuilder, Pick, PolicyConfig, SubchannelId,
    },
    ConnectivityState, OrcaLoadReport, PolicyRegistry,
};

/// The policy's name in `loadBalancingConfig`, as grpc-go and the C-core register it.
pub const NAME: &str = "priority_experimental";

/// How long a new (or reconnecting) child may stay CONNECTING before the next priority
/// starts (A56).
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a child below the one in use is kept, connected, before it is removed (A56).
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// Builds [`Priority`] policies. Config: `{"priorities": ["p0", "p1"], "children": {"p0":
/// {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": false}, ...}}`; every
/// priority must name a child.
#[derive(Debug, Clone, Copy)]
pub struct PriorityBuilder {
    failover_timeout: Duration,
}

impl Default for PriorityBuilder {
    fn default() -> PriorityBuilder {
        PriorityBuilder {
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
        }
    }
}

impl PriorityBuilder {
    /// Policies whose children get `timeout` to connect instead of
    /// [`DEFAULT_FAILOVER_TIMEOUT`].
    pub fn with_failover_timeout(timeout: Duration) -> PriorityBuilder {
        PriorityBuilder {
            failover_timeout: timeout,
        }
    }
}

impl LbPolicyBuilder for PriorityBuilder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(Priority::new(seed, self.failover_timeout))
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<PolicyConfig, Status> {
        self.parse_config_in(config, &PolicyRegistry::global())
    }

    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<PolicyConfig, Status> {
        let parsed = PriorityConfig::from_json(config, registry)?;
        Ok(PolicyConfig::new(NAME, config).with_parsed(parsed))
    }
}

/// A child of the config.
#[derive(Debug, Clone)]
struct ChildConfig {
    child: (Arc<dyn LbPolicyBuilder>, PolicyConfig),
    ignore_resolution: bool,
}

#[derive(Debug, Clone)]
struct PriorityConfig {
    priorities: Vec<String>,
    children: HashMap<String, ChildConfig>,
}

impl PriorityConfig {
    fn from_json(
        config: &serde_json::Value,
        registry: &PolicyRegistry,
    ) -> Result<PriorityConfig, Status> {
        let bad = |what: String| Status::invalid_argument(format!("priority config: {what}"));
        let children = config
            .get("children")
            .and_then(|c| c.as_object())
            .ok_or_else(|| bad("children must be an object".into()))?;
        let mut parsed = HashMap::new();
        for (name, child) in children {
            let list = child
                .get("config")
                .ok_or_else(|| bad(format!("child {name:?} needs a config")))?;
            let child_policy = registry
                .parse_lb_config(list)
                .map_err(|e| bad(format!("child {name:?}: {}", e.message())))?;
            let ignore_resolution = match child.get("ignoreReresolutionRequests") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    bad(format!(
                        "child {name:?}: ignoreReresolutionRequests must be a boolean"
                    ))
                })?,
            };
            parsed.insert(
                name.clone(),
                ChildConfig {
                    child: child_policy,
                    ignore_resolution,
                },
            );
        }
        let list = config
            .get("priorities")
            .and_then(|p| p.as_array())
            .ok_or_else(|| bad("priorities must be a list".into()))?;
        let mut priorities: Vec<String> = Vec::new();
        for name in list {
            let name = name
                .as_str()
                .ok_or_else(|| bad("priorities must be strings".into()))?;
            if !parsed.contains_key(name) {
                return Err(bad(format!("priority {name:?} names no child")));
            }
            if priorities.iter().any(|p| p == name) {
                return Err(bad(format!("priority {name:?} is listed twice")));
            }
            priorities.push(name.to_owned());
        }
        Ok(PriorityConfig {
            priorities,
            children: parsed,
        })
    }
}

/// A child that exists.
#[derive(Debug)]
struct Child {
    policy: ChildPolicy,
    /// When it is deemed failed if it is still CONNECTING.
    failover_at: Option<Instant>,
    /// It reported TRANSIENT_FAILURE more recently than READY or IDLE.
    failed: bool,
    /// The state it last published.
    reported: ConnectivityState,
    /// When it is removed, while it is below the priority in use.
    remove_at: Option<Instant>,
}

/// The `priority_experimental` policy.
#[derive(Debug)]
pub struct Priority {
    seed: u64,
    failover_timeout: Duration,
    config: Option<PriorityConfig>,
    endpoints: Vec<Endpoint>,
    children: HashMap<String, Child>,
    /// The priority whose child the calls use.
    current: Option<usize>,
}

impl Priority {
    /// A policy with no config yet: `seed` seeds its children; each new or reconnecting
    /// child gets `failover_timeout` to connect.
    pub fn new(seed: u64, failover_timeout: Duration) -> Priority {
        Priority {
            seed,
            failover_timeout,
            config: None,
            endpoints: Vec::new(),
            children: HashMap::new(),
            current: None,
        }
    }

    /// The name of the child whose picker calls use now.
    pub fn current_child(&self) -> Option<&str> {
        let config = self.config.as_ref()?;
        Some(&config.priorities[self.current?])
    }

    /// Starts the child of priority `name`, with its failover timer.
    fn start(&mut self, name: &str, ctl: &mut dyn ChannelControl) {
        let Some(config) = self
            .config
            .as_ref()
            .and_then(|c| c.children.get(name))
            .cloned()
        else {
            return;
        };
        self.seed = self.seed.wrapping_add(1);
        let mut policy = ChildPolicy::new(config.child.0, self.seed);
        policy.ignore_resolution = config.ignore_resolution;
        let mut child = Child {
            policy,
            failover_at: Some(ctl.now() + self.failover_timeout),
            failed: false,
            reported: ConnectivityState::Connecting,
            remove_at: None,
        };
        let stepped =
            child
                .policy
                .update(endpoints_under(name, &self.endpoints), &config.child.1, ctl);
        self.children.insert(name.to_owned(), child);
        if stepped.published {
            self.track(name, ctl);
        }
    }

    /// After a child published: its failover timer follows its state (A56), restarting
    /// when it goes from READY or IDLE to CONNECTING without having failed since (A42).
    fn track(&mut self, name: &str, ctl: &mut dyn ChannelControl) {
        use ConnectivityState::*;
        let Some(child) = self.children.get_mut(name) else {
            return;
        };
        let state = child.policy.state;
        let previous = std::mem::replace(&mut child.reported, state);
        match state {
            Ready | Idle => {
                child.failover_at = None;
                child.failed = false;
            }
            TransientFailure => {
                child.failover_at = None;
                child.failed = true;
            }
            Connecting if matches!(previous, Ready | Idle) && !child.failed => {
                child.failover_at = Some(ctl.now() + self.failover_timeout);
            }
            _ => {}
        }
    }

    /// Chooses the priority calls use (starting the next child where the ones above cannot
    /// serve), keeps the ones below for their retention, and publishes its child's state.
    fn choose(&mut self, ctl: &mut dyn ChannelControl) {
        let Some(priorities) = self.config.as_ref().map(|c| c.priorities.clone()) else {
            return;
        };
        if priorities.is_empty() {
            self.current = None;
            let status = Status::unavailable("priority has no priorities");
            return ctl.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FixedPicker(Pick::Fail(status))),
            );
        }
        let mut chosen = priorities.len() - 1;
        for (i, name) in priorities.iter().enumerate() {
            if !self.children.contains_key(name) {
                self.start(name, ctl);
                chosen = i;
                break;
            }
            let child = &self.children[name];
            let usable = match child.policy.state {
                ConnectivityState::Ready | ConnectivityState::Idle => true,
                ConnectivityState::Connecting => child.failover_at.is_some(),
                _ => false,
            };
            if usable {
                chosen = i;
                break;
            }
        }
        let now = ctl.now();
        for (i, name) in priorities.iter().enumerate() {
            if let Some(child) = self.children.get_mut(name) {
                child.remove_at = match i > chosen {
                    true => child.remove_at.or(Some(now + RETENTION)),
                    false => None,
                };
            }
        }
        self.current = Some(chosen);
        if let Some(child) = self.children.get(&priorities[chosen]) {
            ctl.update_picker(child.policy.state, child.policy.picker.clone());
        }
    }

    /// Runs `f` on the child owning subchannel `id`, then chooses again if it published.
    fn drive_owner(
        &mut self,
        id: SubchannelId,
        ctl: &mut dyn ChannelControl,
        f: impl FnOnce(&mut ChildPolicy, &mut dyn ChannelControl) -> Stepped,
    ) {
        let Some(name) = self
            .children
            .iter()
            .find(|(_, c)| c.policy.owns(id))
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        let child = self.children.get_mut(&name).expect("found");
        if f(&mut child.policy, ctl).published {
            self.track(&name, ctl);
            self.choose(ctl);
        }
    }
}

impl LbPolicy for Priority {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        config: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let Some(config) = config.and_then(|c| c.parsed::<PriorityConfig>()).cloned() else {
            return self
                .resolver_error(Status::internal("priority was given no parsed config"), ctl);
        };
        self.endpoints = endpoints;
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            let keep = config.children.get(&name).filter(|c| {
                config.priorities.contains(&name)
                    && c.child.0.name() == self.children[&name].policy.name()
            });
            match keep {
                Some(child_config) => {
                    let child = self.children.get_mut(&name).expect("listed");
                    child.policy.ignore_resolution = child_config.ignore_resolution;
                    let endpoints = endpoints_under(&name, &self.endpoints);
                    if child
                        .policy
                        .update(endpoints, &child_config.child.1, ctl)
                        .published
                    {
                        self.track(&name, ctl);
                    }
                }
                None => {
                    if let Some(child) = self.children.remove(&name) {
                        child.policy.shut_down(ctl);
                    }
                }
            }
        }
        self.config = Some(config);
        self.choose(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.children.is_empty() {
            return ctl.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FixedPicker(Pick::Fail(status))),
            );
        }
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            let child = self.children.get_mut(&name).expect("listed");
            if child.policy.resolver_error(status.clone(), ctl).published {
                self.track(&name, ctl);
            }
        }
        self.choose(ctl);
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        status: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_owner(id, ctl, |child, ctl| {
            child.subchannel_state(id, state, status, ctl)
        });
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        let Some(name) = self.current_child().map(str::to_owned) else {
            return;
        };
        let child = self
            .children
            .get_mut(&name)
            .expect("the current child exists");
        if child.policy.exit_idle(ctl).published {
            self.track(&name, ctl);
            self.choose(ctl);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.children
            .values()
            .flat_map(|c| [c.failover_at, c.remove_at, c.policy.poll_timeout()])
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, ctl: &mut dyn ChannelControl) {
        let now = ctl.now();
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            let child = self.children.get_mut(&name).expect("listed");
            if child.remove_at.is_some_and(|at| at <= now) {
                if let Some(child) = self.children.remove(&name) {
                    child.policy.shut_down(ctl);
                }
                continue;
            }
            // A child still CONNECTING at its timeout counts as failed until it connects.
            if child.failover_at.is_some_and(|at| at <= now) {
                child.failover_at = None;
            }
            if child.policy.handle_timeout(ctl).published {
                self.track(&name, ctl);
            }
        }
        self.choose(ctl);
    }

    fn load_report(
        &mut self,
        id: SubchannelId,
        report: &OrcaLoadReport,
        ctl: &mut dyn ChannelControl,
    ) {
        self.drive_owner(id, ctl, |child, ctl| child.load_report(id, report, ctl));
    }
}

#[cfg(test)]
mod tests;
