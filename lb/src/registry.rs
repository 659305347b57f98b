//! [`PolicyRegistry`]: the load-balancing policies a channel can use, by name, the parse of a
//! `loadBalancingConfig` list against them, and the process-wide registry.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use anygrpc_codec::Status;

use crate::{
    least_request::LeastRequestBuilder, outlier_detection::OutlierDetectionBuilder,
    pick_first::PickFirstBuilder, policy::LbPolicyBuilder, priority::PriorityBuilder,
    ring_hash::RingHashBuilder, round_robin::RoundRobinBuilder,
    weighted_round_robin::WeightedRoundRobinBuilder, weighted_target::WeightedTargetBuilder,
    PolicyConfig,
};

/// The policies a channel can use, by name. The default holds `pick_first`, `round_robin`
/// and `weighted_round_robin`; users register their own.
///
/// A channel starts from a snapshot of the process-wide registry ([`PolicyRegistry::global`]),
/// as grpc-go's channels read `balancer.Register`'s; a library adds a policy for all of its
/// users' channels with [`PolicyRegistry::register_global`]. A channel given its own registry
/// (anygrpc's `ChannelBuilder::lb_policy_registry`) sees only that one.
#[derive(Debug, Clone)]
pub struct PolicyRegistry {
    builders: HashMap<&'static str, Arc<dyn LbPolicyBuilder>>,
}

impl Default for PolicyRegistry {
    fn default() -> PolicyRegistry {
        let mut registry = PolicyRegistry {
            builders: HashMap::new(),
        };
        registry.register(Arc::new(PickFirstBuilder));
        registry.register(Arc::new(RoundRobinBuilder));
        registry.register(Arc::new(WeightedRoundRobinBuilder));
        registry.register(Arc::new(LeastRequestBuilder));
        registry.register(Arc::new(RingHashBuilder::default()));
        registry.register(Arc::new(OutlierDetectionBuilder));
        registry.register(Arc::new(PriorityBuilder::default()));
        registry.register(Arc::new(WeightedTargetBuilder));
        registry
    }
}

/// The process-wide registry; `None` until first touched, then the default plus whatever
/// was registered.
static GLOBAL: RwLock<Option<PolicyRegistry>> = RwLock::new(None);

impl PolicyRegistry {
    /// A snapshot of the process-wide registry: the default policies and every builder
    /// [`register_global`](Self::register_global) added before now.
    pub fn global() -> PolicyRegistry {
        let global = GLOBAL.read().unwrap_or_else(PoisonError::into_inner);
        global.clone().unwrap_or_default()
    }

    /// Adds (or replaces) a policy in the process-wide registry, for every channel built
    /// after this (those built before keep their snapshot). Call it at start-up, as grpc-go
    /// asks of `balancer.Register`.
    pub fn register_global(builder: Arc<dyn LbPolicyBuilder>) {
        let mut global = GLOBAL.write().unwrap_or_else(PoisonError::into_inner);
        global
            .get_or_insert_with(PolicyRegistry::default)
            .register(builder);
    }

    /// Adds (or replaces) a policy.
    pub fn register(&mut self, builder: Arc<dyn LbPolicyBuilder>) {
        self.builders.insert(builder.name(), builder);
    }

    /// The builder of a policy.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn LbPolicyBuilder>> {
        self.builders.get(name)
    }

    /// Parses a `loadBalancingConfig` list (`doc/service_config.md`): the first entry naming a
    /// registered policy wins; its config must be valid. No known policy is
    /// `INVALID_ARGUMENT`.
    pub fn parse_lb_config(
        &self,
        list: &serde_json::Value,
    ) -> Result<(Arc<dyn LbPolicyBuilder>, PolicyConfig), Status> {
        let entries = list
            .as_array()
            .ok_or_else(|| Status::invalid_argument("loadBalancingConfig must be a list"))?;
        for entry in entries {
            let object = entry.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                Status::invalid_argument(
                    "each loadBalancingConfig entry must be an object with one key",
                )
            })?;
            let (name, config) = object.iter().next().expect("one key");
            if let Some(builder) = self.builders.get(name.as_str()) {
                let parsed = builder.parse_config_in(config, self)?;
                return Ok((builder.clone(), parsed));
            }
        }
        Err(Status::invalid_argument(
            "loadBalancingConfig names no registered policy",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lb_config_picks_the_first_known_policy() {
        let registry = PolicyRegistry::default();
        let (builder, config) = registry
            .parse_lb_config(
                &json!([{"unknown_policy": {}}, {"round_robin": {}}, {"pick_first": {}}]),
            )
            .unwrap();
        assert_eq!(builder.name(), "round_robin");
        assert_eq!(config.name, "round_robin");
        for bad in [
            json!({"round_robin": {}}),
            json!([{"a": {}, "b": {}}]),
            json!([{"unknown": {}}]),
            json!([{"pick_first": {"shuffleAddressList": "yes"}}]),
            json!([{"round_robin": 3}]),
        ] {
            assert_eq!(
                registry.parse_lb_config(&bad).unwrap_err().code(),
                anygrpc_codec::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
