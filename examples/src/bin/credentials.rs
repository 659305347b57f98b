//! Call credentials over TLS: a channel whose calls carry a bearer token from a refreshing
//! token source, bundled with its TLS settings as one `ChannelCredentials`; a call that adds
//! credentials of its own; and the refusal to send a token over plaintext.
//!
//! ```text
//! cargo run -p anygrpc-examples --bin credentials
//! ```

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use anygrpc::{
    credentials::{
        BearerToken, CallCredentials, CallInfo, ChannelCredentials, CredentialsError,
        RefreshingToken, Token,
    },
    interceptor::CallHead,
    tls::{ClientTlsConfig, Identity, ServerTlsConfig},
    Channel, MetadataMap, Request, Status,
};
use anygrpc_examples::{
    echo::{echo_client::EchoClient, EchoRequest},
    localhost, start_server,
};
use futures_util::future::BoxFuture;

const CA: &[u8] = include_bytes!("../../certs/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("../../certs/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../../certs/server.key");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server checks the token and tells the handler who called (here: the log line).
    let check = |head: &mut CallHead| {
        let token = head.metadata().get("authorization").unwrap_or("none");
        let extra = head.metadata().get("x-request-signature").unwrap_or("none");
        println!("server: {} with {token}, signature {extra}", head.path());
        match token.strip_prefix("Bearer token-") {
            Some(_) => Ok(()),
            None => Err(Status::unauthenticated("no valid token")),
        }
    };
    let identity = Identity::from_pem(SERVER_CERT, SERVER_KEY);
    let (addr, _stop) = start_server(localhost(), |s| {
        s.tls(ServerTlsConfig::new(identity)).interceptor(check)
    })?;

    // A token source asked once, then cached until ten seconds before the token expires.
    let fetched = Arc::new(AtomicU32::new(0));
    let count = fetched.clone();
    let tokens = RefreshingToken::new(move || {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            Ok(Token {
                value: format!("token-{n}"),
                expires_in: Some(Duration::from_secs(3600)),
            })
        })
    });
    let tls = ClientTlsConfig::new()
        .ca_certificate(CA)
        .domain_name("localhost");
    let channel = Channel::builder(&addr.to_string())
        .credentials(ChannelCredentials::tls(tls).with_call_credentials(tokens))
        .connect_lazy()?;
    let client = EchoClient::new(channel);
    anygrpc::rt::block_on(async {
        for message in ["first", "second"] {
            let reply = client
                .unary_echo(EchoRequest {
                    message: message.into(),
                    repeat: 0,
                })
                .await?;
            println!("client: {}", reply.get_ref().message);
        }
        // A call's own credentials join the channel's.
        let mut request = Request::new(EchoRequest {
            message: "signed".into(),
            repeat: 0,
        });
        request.set_call_credentials(Arc::new(Signature));
        let reply = client.unary_echo(request).await?;
        println!("client: {}", reply.get_ref().message);
        Ok::<_, Status>(())
    })?;
    println!("token fetched {} time(s)", fetched.load(Ordering::SeqCst));

    // A bearer token may not travel in the clear: the plaintext channel is refused.
    let refused = Channel::builder(&addr.to_string())
        .call_credentials(BearerToken::new("token-plain")?)
        .connect_lazy()
        .expect_err("a token on plaintext");
    println!("plaintext: {}", refused.message());
    Ok(())
}

/// Credentials of one call: a signature header (not secret, so plaintext would do).
struct Signature;

impl CallCredentials for Signature {
    fn metadata<'a>(
        &'a self,
        info: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>> {
        Box::pin(async move {
            let mut metadata = MetadataMap::new();
            metadata.insert(
                "x-request-signature",
                &format!("sig({})", info.service_url()),
            )?;
            Ok(metadata)
        })
    }

    fn requires_transport_security(&self) -> bool {
        false
    }
}
