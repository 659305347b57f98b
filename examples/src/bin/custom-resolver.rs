//! A custom resolver and a custom load-balancing policy, registered by the program:
//!
//! - `file:` targets name a file of `host:port` lines; the resolver re-reads it every 100 ms
//!   and pushes the new list when it changes (edit the file, and traffic moves);
//! - `random_ready` sends each call to a random READY backend.

use std::{
    collections::HashMap,
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use anygrpc::{
    lb::{
        flatten_endpoints, ChannelControl, ConnectivityState, Endpoint, FixedPicker, LbPolicy,
        LbPolicyBuilder, Pick, PickInfo, Picker, PolicyConfig, PolicyRegistry, SubchannelId,
    },
    resolver::{Registry, Resolver, ResolverBuilder, ResolverUpdate, Target},
    rt::{Address, Runtime, Sleep},
    Channel, Status,
};
use anygrpc_examples::{
    call_counter,
    echo::{echo_client::EchoClient, EchoRequest},
    localhost, start_server,
};

/// Builds [`FileResolver`]s for `file:/path/to/list` targets.
#[derive(Debug)]
struct FileResolverBuilder;

impl ResolverBuilder for FileResolverBuilder {
    fn scheme(&self) -> &'static str {
        "file"
    }

    fn build(
        &self,
        target: &Target,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Box<dyn Resolver>, Status> {
        if target.endpoint().is_empty() {
            return Err(Status::invalid_argument("file: target needs a path"));
        }
        Ok(Box::new(FileResolver {
            path: PathBuf::from(target.endpoint()),
            last: None,
            timer: runtime.sleep_until(runtime.now()),
            runtime,
        }))
    }

    fn default_authority(&self, _: &Target) -> String {
        "localhost".to_owned()
    }
}

/// Watches a file of addresses by reading it every 100 ms.
#[derive(Debug)]
struct FileResolver {
    path: PathBuf,
    runtime: Arc<dyn Runtime>,
    timer: Pin<Box<dyn Sleep>>,
    /// The text last reported.
    last: Option<String>,
}

impl FileResolver {
    fn parse(text: &str) -> Result<Vec<Address>, Status> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.parse::<std::net::SocketAddr>()
                    .map(Address::Tcp)
                    .map_err(|e| Status::unavailable(format!("bad address {line:?}: {e}")))
            })
            .collect()
    }
}

impl Resolver for FileResolver {
    fn poll_update(&mut self, cx: &mut Context<'_>) -> Poll<ResolverUpdate> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            let next = self.runtime.now() + Duration::from_millis(100);
            self.timer.as_mut().reset(next);
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            if self.last.as_ref() != Some(&text) {
                let addresses = Self::parse(&text);
                self.last = Some(text);
                return Poll::Ready(ResolverUpdate {
                    endpoints: addresses.map(|a| a.into_iter().map(Endpoint::from).collect()),
                    service_config: None,
                });
            }
        }
    }

    fn resolve_now(&mut self) {
        self.last = None;
    }
}

/// Builds [`RandomReady`] policies.
#[derive(Debug)]
struct RandomReadyBuilder;

impl LbPolicyBuilder for RandomReadyBuilder {
    fn name(&self) -> &'static str {
        "random_ready"
    }

    fn build(&self, seed: u64) -> Box<dyn LbPolicy> {
        Box::new(RandomReady {
            seed,
            subchannels: HashMap::new(),
        })
    }
}

/// Keeps every address connected and picks a random READY one per call.
#[derive(Debug)]
struct RandomReady {
    seed: u64,
    subchannels: HashMap<Address, (SubchannelId, ConnectivityState)>,
}

#[derive(Debug)]
struct RandomPicker {
    ready: Vec<SubchannelId>,
    rng: std::sync::Mutex<u64>,
}

impl Picker for RandomPicker {
    fn pick(&self, _: &PickInfo<'_>) -> Pick {
        // xorshift: a few lines instead of a dependency.
        let mut state = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        Pick::Ready(self.ready[(*state % self.ready.len() as u64) as usize])
    }
}

impl RandomReady {
    fn publish(&mut self, ctl: &mut dyn ChannelControl) {
        let ready: Vec<SubchannelId> = self
            .subchannels
            .values()
            .filter(|(_, state)| *state == ConnectivityState::Ready)
            .map(|(id, _)| *id)
            .collect();
        if ready.is_empty() {
            ctl.update_picker(
                ConnectivityState::Connecting,
                Arc::new(FixedPicker(Pick::Queue)),
            );
        } else {
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15) | 1;
            let picker = RandomPicker {
                ready,
                rng: std::sync::Mutex::new(self.seed),
            };
            ctl.update_picker(ConnectivityState::Ready, Arc::new(picker));
        }
    }
}

impl LbPolicy for RandomReady {
    fn update(
        &mut self,
        endpoints: Vec<Endpoint>,
        _: Option<&PolicyConfig>,
        ctl: &mut dyn ChannelControl,
    ) {
        let mut old = std::mem::take(&mut self.subchannels);
        for address in flatten_endpoints(endpoints) {
            let entry = old.remove(&address).unwrap_or_else(|| {
                let id = ctl.new_subchannel(&address);
                ctl.connect(id);
                (id, ConnectivityState::Idle)
            });
            self.subchannels.insert(address, entry);
        }
        for (id, _) in old.into_values() {
            ctl.remove_subchannel(id);
        }
        self.publish(ctl);
    }

    fn resolver_error(&mut self, status: Status, ctl: &mut dyn ChannelControl) {
        if self.subchannels.is_empty() {
            ctl.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FixedPicker(Pick::Fail(status))),
            );
        }
    }

    fn subchannel_state(
        &mut self,
        id: SubchannelId,
        state: ConnectivityState,
        _: Option<&Status>,
        ctl: &mut dyn ChannelControl,
    ) {
        if let Some(entry) = self.subchannels.values_mut().find(|(sid, _)| *sid == id) {
            entry.1 = state;
            if state == ConnectivityState::Idle {
                ctl.connect(id);
            }
            self.publish(ctl);
        }
    }

    fn exit_idle(&mut self, ctl: &mut dyn ChannelControl) {
        for (id, _) in self.subchannels.values() {
            ctl.connect(*id);
        }
    }
}

async fn calls(client: &EchoClient, n: usize) -> Result<(), Status> {
    for _ in 0..n {
        let mut request = anygrpc::Request::new(EchoRequest {
            message: "hi".into(),
            repeat: 0,
        });
        request.set_wait_for_ready(true);
        request.set_timeout(Duration::from_secs(10));
        client.unary_echo(request).await?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counted = || -> std::io::Result<(std::net::SocketAddr, Arc<AtomicUsize>, _)> {
        let (counter, calls) = call_counter();
        let (addr, stop) = start_server(localhost(), |s| s.interceptor(counter))?;
        Ok((addr, calls, stop))
    };
    let (a, a_calls, _a) = counted()?;
    let (b, b_calls, _b) = counted()?;
    let (c, c_calls, _c) = counted()?;
    let list = std::env::temp_dir().join(format!("anygrpc-backends-{}", std::process::id()));
    std::fs::write(&list, format!("{a}\n{b}\n"))?;

    let mut resolvers = Registry::default();
    resolvers.register(Arc::new(FileResolverBuilder));
    let mut policies = PolicyRegistry::default();
    policies.register(Arc::new(RandomReadyBuilder));
    let channel = Channel::builder(&format!("file:{}", list.display()))
        .resolver_registry(resolvers)
        .lb_policy_registry(policies)
        .load_balancing_policy("random_ready")
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let counts = || [&a_calls, &b_calls, &c_calls].map(|n| n.load(Ordering::Relaxed));

    anygrpc::rt::block_on(async {
        calls(&client, 200).await?;
        println!("file lists {a} and {b}; 200 calls: {:?}", counts());
        if counts()[2] != 0 {
            return Err(Status::internal("an unlisted server got calls"));
        }

        // Replace the list: once the resolver sees the change, calls go to c only.
        std::fs::write(&list, format!("{c}\n")).map_err(|e| Status::internal(e.to_string()))?;
        let mut rounds = 0;
        let mut before = counts();
        loop {
            calls(&client, 20).await?;
            let now = counts();
            if now[0] == before[0] && now[1] == before[1] && now[2] == before[2] + 20 {
                break;
            }
            before = now;
            rounds += 1;
            if rounds > 1000 {
                return Err(Status::internal(
                    "the resolver never picked up the new list",
                ));
            }
        }
        println!("file now lists {c}; calls so far: {:?}", counts());
        Ok(())
    })?;
    let _ = std::fs::remove_file(&list);
    println!("custom resolver and policy OK");
    Ok(())
}
