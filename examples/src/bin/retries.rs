//! Retries and hedging from a service config (gRFC A6), on the default runtime:
//!
//! 1. a retry policy in JSON against a flaky server that fails the first two attempts of
//!    every call with UNAVAILABLE: every call succeeds, on its third attempt;
//! 2. a hedging policy against a slow and a fast backend: calls answer at the fast one's
//!    speed, and the slow one's attempts are cancelled.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anygrpc::{
    interceptor::{AsyncInterceptor, CallHead},
    server::PreviousAttempts,
    Channel, Status,
};
use anygrpc_examples::{
    echo::{echo_client::EchoClient, EchoRequest},
    localhost, start_echo_server, start_server,
};
use futures_util::future::BoxFuture;

const RETRY_CONFIG: &str = r#"{
  "methodConfig": [{
    "name": [{"service": "anygrpc.examples.echo.Echo"}],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }],
  "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1}
}"#;

const HEDGING_CONFIG: &str = r#"{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "anygrpc.examples.echo.Echo", "method": "UnaryEcho"}],
    "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"]}
  }]
}"#;

/// Delays each call by `delay`, counting the calls it saw. (A hedge that wins elsewhere
/// cancels the call here, which drops this wait.)
struct SlowBackend {
    delay: Duration,
    seen: Arc<AtomicUsize>,
}

impl AsyncInterceptor for SlowBackend {
    fn intercept<'a>(&'a self, _: &'a mut CallHead) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            self.seen.fetch_add(1, Ordering::Relaxed);
            smol::Timer::after(self.delay).await;
            Ok(())
        })
    }
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        repeat: 0,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A flaky server: the first two attempts of every call fail.
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let (flaky, _stop_flaky) = start_server(localhost(), |server| {
        server.interceptor(move |head: &mut CallHead| {
            counted.fetch_add(1, Ordering::Relaxed);
            match head.extensions_mut().get::<PreviousAttempts>() {
                Some(PreviousAttempts(n)) if *n >= 2 => Ok(()),
                _ => Err(Status::unavailable("flaky: try again")),
            }
        })
    })?;
    let channel = Channel::builder(&flaky.to_string())
        .default_service_config(RETRY_CONFIG)
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    anygrpc::rt::block_on(async {
        for i in 0..5 {
            let reply = client.unary_echo(echo(&format!("call {i}"))).await?;
            println!("retry: {}", reply.get_ref().message);
        }
        Ok::<_, Status>(())
    })?;
    let made = attempts.load(Ordering::Relaxed);
    println!("retry: 5 calls took {made} attempts on the flaky server");
    assert_eq!(made, 15, "each call succeeds on its third attempt");

    // 2. Hedging over a slow backend (1 s) and a fast one.
    let seen = Arc::new(AtomicUsize::new(0));
    let slow = SlowBackend {
        delay: Duration::from_secs(1),
        seen: seen.clone(),
    };
    let (slow_addr, _stop_slow) = start_server(localhost(), |s| s.async_interceptor(slow))?;
    let (fast_addr, _stop_fast) = start_echo_server()?;
    let channel = Channel::builder(&format!("ipv4:{slow_addr},{fast_addr}"))
        .default_service_config(HEDGING_CONFIG)
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    let slowest = anygrpc::rt::block_on(async {
        // The first calls connect to both backends (until then a hedge may only have the slow
        // one to go to); time the calls after that.
        for _ in 0..4 {
            client.unary_echo(echo("warm-up")).await?;
        }
        let mut slowest = Duration::ZERO;
        for i in 0..20 {
            let begun = Instant::now();
            client.unary_echo(echo(&format!("hedged {i}"))).await?;
            slowest = slowest.max(begun.elapsed());
        }
        Ok::<_, Status>(slowest)
    })?;
    println!(
        "hedging: 20 calls, slowest {:.0} ms (the slow backend takes 1000 ms); \
         the slow backend saw {} attempts in all",
        slowest.as_secs_f64() * 1000.0,
        seen.load(Ordering::Relaxed)
    );
    assert!(slowest < Duration::from_millis(900));
    println!("retries and hedging OK");
    Ok(())
}
