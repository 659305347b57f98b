//! A resolver the test feeds: `pushed:` targets yield each update the test sends, so a test
//! can change a channel's addresses and service config while it runs.

use std::sync::{Arc, Mutex};

use anygrpc::{
    resolver::{Endpoint, Registry, Resolver, ResolverBuilder, ResolverUpdate, Target},
    rt::{Address, Runtime},
    Status,
};
use futures_channel::mpsc;
use futures_util::StreamExt;

/// Sends updates to the channel built on a [`pushed`] registry, and hears when it took them.
#[derive(Debug)]
pub struct Pusher {
    updates: mpsc::UnboundedSender<ResolverUpdate>,
    taken: mpsc::UnboundedReceiver<()>,
}

impl Pusher {
    /// Sends addresses (an endpoint each) with a service config (JSON) or none.
    pub fn push(&self, addresses: Vec<Address>, service_config: Option<&str>) {
        self.push_endpoints(
            addresses.into_iter().map(Endpoint::from).collect(),
            service_config,
        );
    }

    /// Sends endpoints with a service config (JSON) or none.
    pub fn push_endpoints(&self, endpoints: Vec<Endpoint>, service_config: Option<&str>) {
        self.updates
            .unbounded_send(ResolverUpdate {
                endpoints: Ok(endpoints),
                service_config: service_config.map(str::to_owned),
            })
            .expect("the channel's resolver is alive");
    }

    /// Waits until the channel has applied the last update it was given (it applies an
    /// update before it asks for the next).
    pub async fn taken(&mut self) {
        self.taken
            .next()
            .await
            .expect("the channel's resolver is alive");
    }
}

/// A resolver registry with the `pushed` scheme, for one channel, and its [`Pusher`].
pub fn pushed() -> (Registry, Pusher) {
    let (updates, pending) = mpsc::unbounded();
    let (taken, taken_events) = mpsc::unbounded();
    let mut registry = Registry::default();
    registry.register(Arc::new(Pushed {
        updates: Mutex::new(Some(pending)),
        taken,
    }));
    let pusher = Pusher {
        updates,
        taken: taken_events,
    };
    (registry, pusher)
}

#[derive(Debug)]
struct Pushed {
    updates: Mutex<Option<mpsc::UnboundedReceiver<ResolverUpdate>>>,
    taken: mpsc::UnboundedSender<()>,
}

#[derive(Debug)]
struct PushedResolver {
    updates: mpsc::UnboundedReceiver<ResolverUpdate>,
    taken: mpsc::UnboundedSender<()>,
    delivered: bool,
}

impl ResolverBuilder for Pushed {
    fn scheme(&self) -> &'static str {
        "pushed"
    }

    fn build(&self, _: &Target, _: Arc<dyn Runtime>) -> Result<Box<dyn Resolver>, Status> {
        let updates = self.updates.lock().unwrap().take().expect("built once");
        Ok(Box::new(PushedResolver {
            updates,
            taken: self.taken.clone(),
            delivered: false,
        }))
    }
}

impl Resolver for PushedResolver {
    fn poll_update(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<ResolverUpdate> {
        if std::mem::take(&mut self.delivered) {
            let _ = self.taken.unbounded_send(());
        }
        let update = std::task::ready!(self.updates.poll_next_unpin(cx)).expect("test alive");
        self.delivered = true;
        std::task::Poll::Ready(update)
    }

    fn resolve_now(&mut self) {}
}
