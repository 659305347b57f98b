//! Call credentials: asked on every attempt with the service URL and method, sent over TLS,
//! refused on plaintext unless allowed, composed from the channel's and the call's, and their
//! errors mapped as grpc-go maps them.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use anygrpc::{
    credentials::{BearerToken, CallCredentials, CallInfo, ChannelCredentials, CredentialsError},
    interceptor::CallHead,
    rt::block_on,
    tls::{ClientTlsConfig, Identity, ServerTlsConfig},
    Channel, Code, MetadataMap, Request, Status,
};
use anygrpc_integration_tests::*;
use futures_util::future::BoxFuture;

/// A server that echoes `authorization` and `x-key` metadata back to the client.
fn echoing(configure: impl FnOnce(anygrpc::Server) -> anygrpc::Server) -> Running {
    start_with(|s| {
        configure(s).interceptor(|head: &mut CallHead| {
            for key in ["authorization", "x-key"] {
                let values: Vec<String> =
                    head.metadata().get_all(key).map(|v| v.to_owned()).collect();
                for value in values {
                    head.metadata_mut()
                        .append(&format!("x-echo-{key}"), &value)?;
                }
            }
            Ok(())
        })
    })
}

fn tls_server() -> Running {
    let identity = Identity::from_pem(cert("server.pem"), cert("server.key"));
    echoing(|s| s.tls(ServerTlsConfig::new(identity)))
}

fn tls_config() -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(cert("ca.pem"))
        .domain_name("localhost")
}

/// Credentials that send `x-key: <key>`, record what they were told, and may fail.
struct Recording {
    key: &'static str,
    secure: bool,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    fail: Option<fn() -> CredentialsError>,
}

impl Recording {
    fn new(key: &'static str) -> Recording {
        Recording {
            key,
            secure: true,
            seen: Arc::default(),
            fail: None,
        }
    }
}

impl CallCredentials for Recording {
    fn metadata<'a>(
        &'a self,
        info: &'a CallInfo,
    ) -> BoxFuture<'a, Result<MetadataMap, CredentialsError>> {
        self.seen
            .lock()
            .unwrap()
            .push((info.service_url().to_owned(), info.method().to_owned()));
        Box::pin(async move {
            if let Some(fail) = self.fail {
                return Err(fail());
            }
            let mut metadata = MetadataMap::new();
            metadata.insert("x-key", self.key)?;
            Ok(metadata)
        })
    }

    fn requires_transport_security(&self) -> bool {
        self.secure
    }
}

fn echoed(response: &anygrpc::Response<Payload>, key: &str) -> Vec<String> {
    response
        .metadata()
        .get_all(&format!("x-echo-{key}"))
        .map(|v| v.to_owned())
        .collect()
}

#[test]
fn a_bearer_token_travels_over_tls_and_credentials_see_the_service_url_and_method() {
    let server = tls_server();
    let recording = Recording::new("channel");
    let seen = recording.seen.clone();
    let channel = Channel::builder(&server.target())
        .tls(tls_config())
        .call_credentials(BearerToken::new("s3cret").unwrap())
        .call_credentials(recording)
        .connect_lazy()
        .unwrap();
    let port = match &server.addr {
        anygrpc::rt::Address::Tcp(addr) => addr.port(),
        other => panic!("{other:?}"),
    };
    block_on(async {
        let mut request = Request::new(Payload::default());
        let own = Recording::new("call");
        let own_seen = own.seen.clone();
        request.set_call_credentials(Arc::new(own));
        let response = TestClient::new(channel).unary(request).await.unwrap();
        assert_eq!(echoed(&response, "authorization"), ["Bearer s3cret"]);
        assert_eq!(
            echoed(&response, "x-key"),
            ["channel", "call"],
            "the channel's first"
        );
        let expected = (
            format!("https://127.0.0.1:{port}/anygrpc.test.Test"),
            "/anygrpc.test.Test/Unary".to_owned(),
        );
        assert_eq!(*seen.lock().unwrap(), *own_seen.lock().unwrap());
        assert_eq!(*own_seen.lock().unwrap(), [expected]);
    });
}

#[test]
fn composite_channel_credentials_bundle_tls_and_call_credentials() {
    let server = tls_server();
    let credentials = ChannelCredentials::tls(tls_config())
        .with_call_credentials(BearerToken::new("bundled").unwrap())
        .with_call_credentials(Recording::new("second"));
    let channel = Channel::builder(&server.target())
        .credentials(credentials)
        .connect_lazy()
        .unwrap();
    let response = block_on(TestClient::new(channel).unary(Payload::default())).unwrap();
    assert_eq!(echoed(&response, "authorization"), ["Bearer bundled"]);
    assert_eq!(echoed(&response, "x-key"), ["second"]);
}

#[test]
fn credentials_that_need_tls_are_refused_on_plaintext_unless_allowed() {
    let server = echoing(|s| s);
    let err = Channel::builder(&server.target())
        .call_credentials(BearerToken::new("t").unwrap())
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("transport security"), "{err}");
    let err = Channel::builder(&server.target())
        .credentials(
            ChannelCredentials::insecure().with_call_credentials(BearerToken::new("t").unwrap()),
        )
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    block_on(async {
        // A call's own credentials on a plaintext channel: the call is refused, unsent.
        let mut request = Request::new(Payload::default());
        request.set_call_credentials(Arc::new(BearerToken::new("t").unwrap()));
        let err = server.client().unary(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        // Credentials that do not need TLS go anywhere.
        let mut relaxed = Recording::new("plain");
        relaxed.secure = false;
        let mut request = Request::new(Payload::default());
        request.set_call_credentials(Arc::new(relaxed));
        let response = server.client().unary(request).await.unwrap();
        assert_eq!(echoed(&response, "x-key"), ["plain"]);

        // Allowed explicitly, for local testing.
        let channel = Channel::builder(&server.target())
            .call_credentials(BearerToken::new("local").unwrap())
            .allow_insecure_call_credentials(true)
            .connect_lazy()
            .unwrap();
        let response = TestClient::new(channel)
            .unary(Payload::default())
            .await
            .unwrap();
        assert_eq!(echoed(&response, "authorization"), ["Bearer local"]);
    });
}

#[test]
fn credential_errors_map_as_grpc_go_maps_them() {
    let server = tls_server();
    let failing = |fail: fn() -> CredentialsError| {
        let mut credentials = Recording::new("x");
        credentials.fail = Some(fail);
        let channel = Channel::builder(&server.target())
            .tls(tls_config())
            .call_credentials(credentials)
            .connect_lazy()
            .unwrap();
        block_on(TestClient::new(channel).unary(Payload::default())).unwrap_err()
    };
    let err = failing(|| Box::new(std::io::Error::other("token endpoint down")));
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("token endpoint down"), "{err}");
    let err = failing(|| Box::new(Status::unauthenticated("expired refresh token")));
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unauthenticated, "expired refresh token")
    );
    // gRFC A54: a code a control plane may not hand to a call becomes INTERNAL.
    let err = failing(|| Box::new(Status::invalid_argument("bad scope")));
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("bad scope"), "{err}");
}

#[test]
fn credentials_are_asked_on_every_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let identity = Identity::from_pem(cert("server.pem"), cert("server.key"));
    let server = start_with(move |s| {
        s.tls(ServerTlsConfig::new(identity))
            .interceptor(
                move |_: &mut CallHead| match count.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Status::unavailable("try again")),
                    _ => Ok(()),
                },
            )
    });
    let recording = Recording::new("k");
    let seen = recording.seen.clone();
    let config = r#"{"methodConfig": [{"name": [{"service": "anygrpc.test.Test"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
            "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let channel = Channel::builder(&server.target())
        .tls(tls_config())
        .default_service_config(config)
        .call_credentials(recording)
        .connect_lazy()
        .unwrap();
    block_on(TestClient::new(channel).unary(Payload::default())).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(seen.lock().unwrap().len(), 2, "one ask per attempt");
}
