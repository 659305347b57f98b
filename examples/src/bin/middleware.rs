//! Middleware on both sides: a logging and latency middleware that sees every call's
//! messages and status, and a client auth middleware that refreshes its token when the server
//! says `UNAUTHENTICATED` and runs the call once more.
//!
//! ```text
//! cargo run -p anygrpc-examples --bin middleware
//! ```

use std::{
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anygrpc::{
    credentials::{CallCredentials, CallInfo, RefreshingToken, Token},
    interceptor::CallHead,
    middleware::{Call, Messages, Middleware, Next, Reply},
    rt::{block_on, BoxFuture},
    Code, Status,
};
use anygrpc_examples::{echo, localhost, run_echo_client, start_server};

/// Logs each call when its response ends: method, status, latency and message counts.
struct Logging {
    side: &'static str,
}

impl Middleware for Logging {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        let started = Instant::now();
        let (side, method) = (self.side, call.path().to_owned());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let call = call.map_messages(|m| {
            m.inspect(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            })
        });
        Box::pin(async move {
            let log = move |responses: usize, code: Code| {
                let requests = requests.load(Ordering::Relaxed);
                println!(
                    "{side}: {method} {code:?} in {:?} ({requests} in, {responses} out)",
                    started.elapsed()
                );
            };
            let response = match next.run(call).await {
                Ok(response) => response,
                Err(status) => {
                    log(0, status.code());
                    return Err(status);
                }
            };
            let responses = Arc::new(AtomicUsize::new(0));
            let counted = responses.clone();
            Ok(response.map(|messages| {
                messages
                    .inspect(move |_| {
                        counted.fetch_add(1, Ordering::Relaxed);
                    })
                    .on_end(move |end| {
                        let code = end.map_or_else(Status::code, |()| Code::Ok);
                        log(responses.load(Ordering::Relaxed), code);
                    })
            }))
        })
    }
}

/// Adds a bearer token to every call; a unary call the server refuses with
/// `UNAUTHENTICATED` gets a fresh token and one more try. (Streaming calls are not tried
/// again: their request messages are not kept.)
struct Auth {
    token: RefreshingToken,
}

impl Auth {
    async fn with_token(&self, mut call: Call) -> Result<Call, Status> {
        let info = CallInfo::new("", call.path(), Instant::now());
        let token = self
            .token
            .metadata(&info)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        call.head_mut().metadata_mut().extend(token);
        Ok(call)
    }
}

impl Middleware for Auth {
    fn call<'a>(&'a self, call: Call, next: Next<'a>) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            if call.head().kind().client_streams() {
                return next.run(self.with_token(call).await?).await;
            }
            let (head, mut messages) = call.into_parts();
            let request = messages.message().await?.unwrap_or_default();
            let again = head.clone();
            let first = Call::from_parts(head, Messages::one(request.clone()));
            match next.run(self.with_token(first).await?).await {
                Err(status) if status.code() == Code::Unauthenticated => {
                    println!("client: {} refused; refreshing the token", status.message());
                    self.token.invalidate();
                    let retry = Call::from_parts(again, Messages::one(request));
                    next.run(self.with_token(retry).await?).await
                }
                reply => reply,
            }
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server accepts only the newest token its issuer gave out.
    let issued = Arc::new(AtomicU32::new(0));
    let current = issued.clone();
    let check = move |head: &mut CallHead| {
        let want = format!("Bearer token-{}", current.load(Ordering::SeqCst));
        match head.metadata().get("authorization") {
            Some(got) if got == want => Ok(()),
            _ => Err(Status::unauthenticated("stale or missing token")),
        }
    };
    let (addr, _stop) = start_server(localhost(), |s| {
        s.middleware(Logging { side: "server" }).interceptor(check)
    })?;

    let issuer = issued.clone();
    let token = RefreshingToken::new(move || {
        let n = issuer.fetch_add(1, Ordering::SeqCst) + 1;
        println!("client: fetched token-{n}");
        Box::pin(async move {
            Ok(Token {
                value: format!("token-{n}"),
                expires_in: Some(Duration::from_secs(3600)),
            })
        })
    });
    let channel = anygrpc::Channel::builder(&addr.to_string())
        .middleware(Logging { side: "client" })
        .middleware(Auth {
            token: token.clone(),
        })
        .connect_lazy()?;
    block_on(async {
        run_echo_client(channel.clone()).await?;
        // The issuer rotates: the next call's token is refused once, then refreshed.
        issued.fetch_add(1, Ordering::SeqCst);
        let client = echo::echo_client::EchoClient::new(channel);
        let reply = client
            .unary_echo(echo::EchoRequest {
                message: "after rotation".into(),
                repeat: 0,
            })
            .await?;
        println!("unary: {}", reply.get_ref().message);
        Ok::<_, Status>(())
    })?;
    Ok(())
}
