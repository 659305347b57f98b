//! [`Registry`]: the resolvers a channel can use, by scheme, and the process-wide one.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use anygrpc_codec::Status;

use crate::{
    DnsResolverBuilder, PassthroughResolverBuilder, ResolverBuilder, StaticResolverBuilder, Target,
};

/// The resolver builders a channel can use, by scheme.
///
/// A channel starts from a snapshot of the process-wide registry ([`Registry::global`]), as
/// grpc-go's channels read `resolver.Register`'s; a library adds a scheme for all of its
/// users' channels with [`Registry::register_global`]. A channel given its own registry
/// (anygrpc's `ChannelBuilder::resolver_registry`) sees only that one.
#[derive(Debug, Clone)]
pub struct Registry {
    builders: HashMap<&'static str, Arc<dyn ResolverBuilder>>,
    default_scheme: &'static str,
}

impl Default for Registry {
    /// `dns` (the default scheme), `unix`, `unix-abstract`, `ipv4`, `ipv6`, `passthrough`.
    fn default() -> Registry {
        let mut registry = Registry {
            builders: HashMap::new(),
            default_scheme: "dns",
        };
        registry.register(Arc::new(DnsResolverBuilder::default()));
        registry.register(Arc::new(StaticResolverBuilder::Unix));
        registry.register(Arc::new(StaticResolverBuilder::UnixAbstract));
        registry.register(Arc::new(StaticResolverBuilder::Ipv4));
        registry.register(Arc::new(StaticResolverBuilder::Ipv6));
        registry.register(Arc::new(PassthroughResolverBuilder));
        registry
    }
}

/// The process-wide registry; `None` until first touched, then the default plus whatever
/// was registered.
static GLOBAL: RwLock<Option<Registry>> = RwLock::new(None);

impl Registry {
    /// A snapshot of the process-wide registry: the default schemes and every builder
    /// [`register_global`](Self::register_global) added before now.
    pub fn global() -> Registry {
        let global = GLOBAL.read().unwrap_or_else(PoisonError::into_inner);
        global.clone().unwrap_or_default()
    }

    /// Adds (or replaces) a builder in the process-wide registry, for every channel built
    /// after this (those built before keep their snapshot). Call it at start-up, as grpc-go
    /// asks of `resolver.Register`.
    pub fn register_global(builder: Arc<dyn ResolverBuilder>) {
        let mut global = GLOBAL.write().unwrap_or_else(PoisonError::into_inner);
        global
            .get_or_insert_with(Registry::default)
            .register(builder);
    }

    /// Adds (or replaces) the builder for its scheme.
    pub fn register(&mut self, builder: Arc<dyn ResolverBuilder>) {
        self.builders.insert(builder.scheme(), builder);
    }

    /// The builder for a scheme.
    pub fn get(&self, scheme: &str) -> Option<&Arc<dyn ResolverBuilder>> {
        self.builders.get(scheme)
    }

    /// Parses a target: a `scheme:` this registry knows, else the default scheme (`dns`)
    /// applied to the whole string, as `doc/naming.md` says.
    pub fn parse_target(&self, target: &str) -> Result<(Target, Arc<dyn ResolverBuilder>), Status> {
        if let Some(parsed) = Target::parse(target) {
            if let Some(builder) = self.builders.get(parsed.scheme()) {
                return Ok((parsed, builder.clone()));
            }
        }
        let parsed = Target::parse(&format!("{}:///{target}", self.default_scheme))
            .ok_or_else(|| Status::invalid_argument(format!("invalid target {target:?}")))?;
        let builder = self.builders.get(self.default_scheme).ok_or_else(|| {
            Status::invalid_argument(format!("no resolver for target {target:?}"))
        })?;
        Ok((parsed, builder.clone()))
    }
}
