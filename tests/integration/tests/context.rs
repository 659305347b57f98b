//! Call context across a chain of three servers on the simulation runtime: each hop passes
//! its call's context to the call it makes next, in a task of its own (so only the context,
//! not the drop of the hop's handler, can end that call). Virtual time, so the deadline
//! arithmetic is exact.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anygrpc::{
    client::{cancellation, Grpc},
    codegen::PathAndQuery,
    rt::{BoxFuture, Runtime},
    server::{ServerCall, Service},
    CallContext, Channel, Code, ProstCodec, Request, Response, Status,
};
use anygrpc_integration_tests::Payload;
use anygrpc_rt::sim::{LinkFaults, Sim};
use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;

const MS: Duration = Duration::from_millis(1);
/// Each link's one-way latency.
const LINK: Duration = Duration::from_millis(5);
/// What each hop does before it calls the next: virtual time the hop spends.
const HOP_WORK: Duration = Duration::from_millis(20);
const PATH: &str = "/chain.Hop/Call";

fn addr(hop: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 1 + hop as u8], 50051))
}

/// What the hops report.
#[derive(Debug, PartialEq)]
enum Event {
    /// A hop's handler started (at `at`), with the time its call had left and its
    /// `x-trace-id`.
    Started {
        hop: usize,
        at: Instant,
        remaining: Option<Duration>,
        trace: Option<String>,
    },
    /// A hop's handler ended (returned or was dropped).
    Ended(usize),
    /// The call a hop made ended with this code.
    Downstream(usize, Code),
}

/// Reports `Ended` when dropped: however the handler ends.
struct Ends(usize, mpsc::UnboundedSender<Event>);

impl Drop for Ends {
    fn drop(&mut self) {
        let _ = self.1.unbounded_send(Event::Ended(self.0));
    }
}

/// Hop `hop` of the chain: it spends `HOP_WORK`, then calls `next` under its context from a
/// task of its own and answers with that call's answer. The last hop has no `next`: it
/// waits until its call ends.
struct Hop {
    hop: usize,
    next: Option<Grpc>,
    runtime: Arc<dyn Runtime>,
    events: mpsc::UnboundedSender<Event>,
    /// How the hop passes its context on.
    pass: fn(CallContext) -> CallContext,
}

impl Service for Hop {
    fn name(&self) -> &'static str {
        "chain.Hop"
    }

    fn call(&self, _: &str, call: ServerCall) -> BoxFuture<'static, ()> {
        let (hop, next, runtime, events, pass) = (
            self.hop,
            self.next.clone(),
            self.runtime.clone(),
            self.events.clone(),
            self.pass,
        );
        Box::pin(call.unary(
            ProstCodec::<Payload, Payload>::new(),
            move |request: Request<Payload>| async move {
                let _ends = Ends(hop, events.clone());
                let trace = request.metadata().get("x-trace-id").map(str::to_owned);
                let _ = events.unbounded_send(Event::Started {
                    hop,
                    at: runtime.now(),
                    remaining: request.remaining(),
                    trace: trace.clone(),
                });
                let Some(next) = next else {
                    std::future::pending::<()>().await;
                    unreachable!();
                };
                runtime.sleep_until(runtime.now() + HOP_WORK).await;
                let mut context = pass(request.context());
                if let Some(trace) = trace {
                    context.metadata_mut().insert("x-trace-id", &trace).unwrap();
                }
                let mut outgoing = Request::new(Payload::default());
                outgoing.set_context(&context);
                let (answer, answered) = oneshot::channel();
                runtime.spawn(Box::pin(async move {
                    let path = PathAndQuery::from_static(PATH);
                    let result = next.unary(path, ProstCodec::new(), outgoing).await;
                    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
                    let _ = events.unbounded_send(Event::Downstream(hop, code));
                    let _ = answer.send(result);
                }));
                match answered.await {
                    Ok(result) => result.map(|r: Response<Payload>| r),
                    Err(_) => Err(Status::internal("the downstream task went away")),
                }
            },
        ))
    }
}

/// Three hops on `sim`, each passing its context on with `pass`; a client of the first.
fn chain(
    sim: &Sim,
    pass: fn(CallContext) -> CallContext,
) -> (Grpc, mpsc::UnboundedReceiver<Event>) {
    let runtime = sim.runtime();
    let (events, received) = mpsc::unbounded();
    let client = |hop: usize| {
        let channel = Channel::builder(&addr(hop).to_string())
            .runtime(runtime.clone())
            .connect_lazy()
            .expect("valid target");
        Grpc::new(channel)
    };
    for hop in 0..3 {
        let service = Hop {
            hop,
            next: (hop < 2).then(|| client(hop + 1)),
            runtime: runtime.clone(),
            events: events.clone(),
            pass,
        };
        let server = anygrpc::Server::builder()
            .runtime(runtime.clone())
            .add_service(service)
            .bind(addr(hop))
            .expect("bind");
        runtime.spawn(Box::pin(async move {
            server.serve().await.expect("serve");
        }));
    }
    (client(0), received)
}

async fn call(client: &Grpc, request: Request<Payload>) -> Result<Response<Payload>, Status> {
    client
        .unary(PathAndQuery::from_static(PATH), ProstCodec::new(), request)
        .await
}

/// Makes the call in a task of its own; its outcome comes on the receiver.
fn spawn_call(
    rt: &Arc<dyn Runtime>,
    client: Grpc,
    request: Request<Payload>,
) -> oneshot::Receiver<Result<Response<Payload>, Status>> {
    let (outcome, received) = oneshot::channel();
    rt.spawn(Box::pin(async move {
        let _ = outcome.send(call(&client, request).await);
    }));
    received
}

/// Starts a call with a cancel token through the chain and cancels it once the last hop's
/// handler has started; the call's outcome comes on the receiver.
async fn cancel_once_the_last_hop_starts(
    rt: &Arc<dyn Runtime>,
    client: Grpc,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> oneshot::Receiver<Result<Response<Payload>, Status>> {
    let (canceller, token) = cancellation();
    let mut request = Request::new(Payload::default());
    request.set_cancel_token(token);
    let call = spawn_call(rt, client, request);
    loop {
        if let Event::Started { hop: 2, .. } = events.next().await.expect("an event") {
            break;
        }
    }
    canceller.cancel();
    call
}

#[test]
fn the_deadline_reaches_the_last_hop_less_the_time_each_hop_spent() {
    let sim = Sim::new(1);
    sim.set_default_link(LinkFaults::latency(LINK));
    let (client, mut events) = chain(&sim, |context| context);
    let rt = sim.runtime();
    sim.run(async {
        let mut request = Request::new(Payload::default());
        request.set_timeout(300 * MS);
        request.metadata_mut().insert("x-trace-id", "t-1").unwrap();
        let started = rt.now();
        let outcome = call(&client, request).await;
        assert_eq!(outcome.unwrap_err().code(), Code::DeadlineExceeded);
        let mut seen = Vec::new();
        while seen.len() < 8 {
            seen.push(events.next().await.expect("an event"));
        }
        let last = seen
            .iter()
            .find_map(|e| match e {
                Event::Started {
                    hop: 2,
                    at,
                    remaining,
                    trace,
                } => Some((*at, *remaining, trace.clone())),
                _ => None,
            })
            .expect("the last hop started");
        let remaining = last.1.expect("the last hop has a deadline");
        // The hops' elapsed time is all the time to the last hop but the three links' (a
        // receiver counts its `grpc-timeout` from when it arrives): connecting, and the work
        // of the two hops before it.
        let in_hops = (last.0 - started) - 3 * LINK;
        assert!(in_hops >= 2 * HOP_WORK, "{in_hops:?}");
        assert!(
            remaining <= 300 * MS - in_hops,
            "{remaining:?}, {in_hops:?} in the hops"
        );
        assert!(
            remaining + MS >= 300 * MS - in_hops,
            "{remaining:?}, {in_hops:?} in the hops"
        );
        assert_eq!(last.2.as_deref(), Some("t-1"), "the trace id was passed on");
        for hop in 0..3 {
            assert!(seen.contains(&Event::Ended(hop)), "hop {hop}: {seen:?}");
        }
        assert!(
            seen.contains(&Event::Downstream(0, Code::DeadlineExceeded)),
            "{seen:?}"
        );
        assert!(seen.contains(&Event::Downstream(1, Code::DeadlineExceeded)));
    });
}

#[test]
fn cancelling_the_first_call_ends_every_hop() {
    let sim = Sim::new(2);
    sim.set_default_link(LinkFaults::latency(LINK));
    let (client, mut events) = chain(&sim, |context| context);
    let rt = sim.runtime();
    sim.run(async {
        let call = cancel_once_the_last_hop_starts(&rt, client, &mut events).await;
        let cancelled_at = rt.now();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(events.next().await.expect("an event"));
        }
        for hop in 0..3 {
            assert!(seen.contains(&Event::Ended(hop)), "hop {hop}: {seen:?}");
        }
        assert!(
            seen.contains(&Event::Downstream(0, Code::Cancelled)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&Event::Downstream(1, Code::Cancelled)),
            "{seen:?}"
        );
        // A cancellation crosses each link once: RST_STREAM, 5 ms a hop.
        let took = rt.now() - cancelled_at;
        assert!(took <= 3 * LINK + MS, "{took:?}");
        assert_eq!(call.await.unwrap().unwrap_err().code(), Code::Cancelled);
    });
}

#[test]
fn without_cancellation_a_call_outlives_the_call_it_was_made_for() {
    let sim = Sim::new(3);
    sim.set_default_link(LinkFaults::latency(LINK));
    let (client, mut events) = chain(&sim, CallContext::without_cancellation);
    let rt = sim.runtime();
    sim.run(async {
        let call = cancel_once_the_last_hop_starts(&rt, client, &mut events).await;
        assert_eq!(call.await.unwrap().unwrap_err().code(), Code::Cancelled);
        // The first hop ends with its call; the calls it and the second hop made do not.
        assert_eq!(events.next().await, Some(Event::Ended(0)));
        let waited = rt.now();
        rt.sleep_until(waited + Duration::from_secs(10)).await;
        let mut rest = Vec::new();
        while let Ok(event) = events.try_recv() {
            rest.push(event);
        }
        assert!(rest.is_empty(), "{rest:?}");
    });
}
