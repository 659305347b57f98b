//! TLS, mutual TLS and Unix-domain sockets.

use anygrpc::{
    interceptor::CallHead,
    rt::{block_on, Address},
    tls::{ClientTlsConfig, Identity, PeerCertificates, ServerTlsConfig},
    Channel, Code, Status,
};
use anygrpc_integration_tests::*;
use futures_util::StreamExt;

fn server_identity() -> Identity {
    Identity::from_pem(cert("server.pem"), cert("server.key"))
}

fn tls_channel(server: &Running, config: ClientTlsConfig) -> Channel {
    Channel::builder(&server.target())
        .tls(config)
        .connect_lazy()
        .unwrap()
}

fn exercise(client: &TestClient) {
    block_on(async {
        let reply = client
            .unary(Payload {
                body: b"secure".to_vec(),
                ..Payload::default()
            })
            .await
            .unwrap();
        assert_eq!(reply.get_ref().body, b"secure");
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let mut replies = client.bidi(rx).await.unwrap().into_inner();
        tx.unbounded_send(Payload::default()).unwrap();
        assert!(replies.next().await.unwrap().is_ok());
    });
}

#[test]
fn tls_round_trip() {
    let server = start_with(|s| s.tls(ServerTlsConfig::new(server_identity())));
    let config = ClientTlsConfig::new()
        .ca_certificate(cert("ca.pem"))
        .domain_name("localhost");
    exercise(&TestClient::new(tls_channel(&server, config)));
    // The certificate also names the IP address the channel dials.
    let by_ip = ClientTlsConfig::new().ca_certificate(cert("ca.pem"));
    exercise(&TestClient::new(tls_channel(&server, by_ip)));
}

#[test]
fn tls_rejects_untrusted_or_misnamed_servers() {
    let server = start_with(|s| s.tls(ServerTlsConfig::new(server_identity())));
    // Trusting only the client certificate: the server's chain does not verify.
    let untrusted = ClientTlsConfig::new()
        .ca_certificate(cert("client.pem"))
        .domain_name("localhost");
    let err = block_on(TestClient::new(tls_channel(&server, untrusted)).unary(Payload::default()))
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let misnamed = ClientTlsConfig::new()
        .ca_certificate(cert("ca.pem"))
        .domain_name("other.example.org");
    let err = block_on(TestClient::new(tls_channel(&server, misnamed)).unary(Payload::default()))
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // A plaintext client cannot talk to a TLS server.
    let err = block_on(server.client().unary(Payload::default())).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[test]
fn mutual_tls() {
    let server = start_with(|s| {
        s.tls(ServerTlsConfig::new(server_identity()).client_ca_root(cert("ca.pem")))
            .interceptor(|call: &mut CallHead| {
                // Handlers and interceptors can see who the client is.
                let _certs: PeerCertificates = call
                    .extensions_mut()
                    .get::<PeerCertificates>()
                    .cloned()
                    .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
                Ok(())
            })
    });
    let base = ClientTlsConfig::new()
        .ca_certificate(cert("ca.pem"))
        .domain_name("localhost");
    let with_identity = base
        .clone()
        .identity(Identity::from_pem(cert("client.pem"), cert("client.key")));
    exercise(&TestClient::new(tls_channel(&server, with_identity)));
    let err = block_on(TestClient::new(tls_channel(&server, base)).unary(Payload::default()))
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "a client without a certificate is refused: {err}"
    );
}

#[test]
fn unix_domain_socket() {
    let dir = std::env::temp_dir().join(format!("anygrpc-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.sock");
    let _ = std::fs::remove_file(&path);
    let (server, events) = test_server();
    let server = run(server.bind(Address::unix(&path)).unwrap(), events);
    assert_eq!(server.target(), format!("unix:{}", path.display()));
    exercise(&server.client());
    let absolute = Channel::builder(&format!("unix://{}", path.display()))
        .connect_lazy()
        .unwrap();
    exercise(&TestClient::new(absolute));
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn abstract_unix_socket() {
    let name = format!("anygrpc-abstract-{}", std::process::id());
    let (server, events) = test_server();
    let bound = server
        .bind(Address::UnixAbstract(name.clone().into_bytes()))
        .unwrap();
    let server = run(bound, events);
    assert_eq!(server.target(), format!("unix-abstract:{name}"));
    exercise(&server.client());
    server.shutdown();
}
