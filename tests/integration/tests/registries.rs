//! The process-wide resolver and policy registries: a scheme and a policy registered once
//! serve every channel built after, and a channel with its own registries sees only those.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anygrpc::{
    lb::{pick_first::PickFirstBuilder, LbPolicy, LbPolicyBuilder, PolicyRegistry},
    resolver::{Address, Registry, Resolver, ResolverBuilder, StaticResolver, Target},
    rt::{block_on, Runtime},
    Channel, Status,
};
use anygrpc_integration_tests::*;

/// `registry-test:///host:port`: that one address.
#[derive(Debug)]
struct OneAddress;

impl ResolverBuilder for OneAddress {
    fn scheme(&self) -> &'static str {
        "registry-test"
    }

    fn build(&self, target: &Target, _: Arc<dyn Runtime>) -> Result<Box<dyn Resolver>, Status> {
        let addr: SocketAddr = target
            .endpoint()
            .parse()
            .map_err(|_| Status::invalid_argument("registry-test: wants host:port"))?;
        Ok(Box::new(StaticResolver::new(vec![Address::Tcp(addr)])))
    }
}

/// `registry_test_first`: pick_first under another name, counting the policies it builds.
#[derive(Debug)]
struct CountedFirst(Arc<AtomicUsize>);

impl LbPolicyBuilder for CountedFirst {
    fn name(&self) -> &'static str {
        "registry_test_first"
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        self.0.fetch_add(1, Ordering::SeqCst);
        PickFirstBuilder.build(seed)
    }
}

const CONFIG: &str = r#"{"loadBalancingConfig": [{"registry_test_first": {}}]}"#;

#[test]
fn globally_registered_schemes_and_policies_serve_later_channels_unless_a_channel_has_its_own() {
    let server = start();
    let target = format!("registry-test:///{}", server.target());
    let built = Arc::new(AtomicUsize::new(0));
    Registry::register_global(Arc::new(OneAddress));
    PolicyRegistry::register_global(Arc::new(CountedFirst(built.clone())));

    let channel = Channel::builder(&target)
        .default_service_config(CONFIG)
        .connect_lazy()
        .unwrap();
    block_on(TestClient::new(channel).unary(Payload::default())).unwrap();
    assert_eq!(built.load(Ordering::SeqCst), 1, "the global policy ran");

    // A channel's own registries replace the process-wide ones.
    let own = Channel::builder(&target)
        .resolver_registry(Registry::default())
        .connect_lazy()
        .and_then(|channel| block_on(TestClient::new(channel).unary(Payload::default())));
    assert!(
        own.is_err(),
        "registry-test: is unknown to a default registry"
    );
    let own = Channel::builder(&server.target())
        .lb_policy_registry(PolicyRegistry::default())
        .default_service_config(CONFIG)
        .connect_lazy();
    assert_eq!(
        own.unwrap_err().code(),
        anygrpc::Code::InvalidArgument,
        "registry_test_first is unknown to a default policy registry"
    );
    assert_eq!(built.load(Ordering::SeqCst), 1);
}
