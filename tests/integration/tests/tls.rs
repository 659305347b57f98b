//! TLS trust and certificates: a default client trusts the platform's store (here, the file
//! `SSL_CERT_FILE` names, which rustls-platform-verifier reads on Linux), rustls
//! configurations of one's own with ALPN `h2` enforced, and a server certificate rotated
//! while calls run.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
};

use anygrpc::{
    rt::block_on,
    tls::{
        rustls::{self, pki_types::pem::PemObject},
        ClientTlsConfig, Identity, ReloadableIdentity, ServerTlsConfig,
    },
    Channel, Code, Status,
};
use anygrpc_integration_tests::*;

/// Set in the child process a test starts to read the platform store fresh: the CA file it
/// was given, and whether the call should pass.
const CHILD: &str = "ANYGRPC_TLS_TRUST_CHILD";

fn identity(cert_file: &str, key_file: &str) -> Identity {
    Identity::from_pem(cert(cert_file), cert(key_file))
}

/// One call on a new channel (so a new handshake) to `server` with `tls`.
fn call(server: &Running, tls: ClientTlsConfig) -> Result<(), Status> {
    let channel = Channel::builder(&server.target()).tls(tls).connect_lazy()?;
    block_on(TestClient::new(channel).unary(Payload::default())).map(drop)
}

/// Runs `name` again in a child process whose `SSL_CERT_FILE` is `ca_file`, and returns
/// what the child printed.
fn in_child(name: &str, ca_file: &str, expect: &str) -> String {
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(ca_file);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, expect)
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_default_client_trusts_the_platform_store() {
    const NAME: &str = "a_default_client_trusts_the_platform_store";
    let Ok(expect) = std::env::var(CHILD) else {
        // The store is read once per process, so each case runs in a process of its own.
        let trusted = in_child(NAME, "ca.pem", "pass");
        assert!(trusted.contains("platform store: call passed"), "{trusted}");
        let other = in_child(NAME, "ca2.pem", "fail");
        assert!(
            other.contains("platform store: call failed UNAVAILABLE"),
            "{other}"
        );
        return;
    };
    let server = start_with(|s| s.tls(ServerTlsConfig::new(identity("server.pem", "server.key"))));
    let tls = ClientTlsConfig::new().domain_name("localhost");
    match (call(&server, tls), expect.as_str()) {
        (Ok(()), "pass") => println!("platform store: call passed"),
        (Err(err), "fail") if err.code() == Code::Unavailable => {
            println!("platform store: call failed UNAVAILABLE ({err})")
        }
        (outcome, _) => panic!("expected the call to {expect}: {outcome:?}"),
    }
}

fn roots(ca_file: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&cert(ca_file)) {
        roots.add(der.unwrap()).unwrap();
    }
    roots
}

#[test]
fn rustls_configs_of_ones_own_serve_and_dial_with_alpn_h2() {
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&cert("server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&cert("server.key")).unwrap();
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots("ca.pem"))
        .with_no_client_auth();
    // Replaced by h2 on both sides: gRPC speaks nothing else.
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_config = Arc::new(server_config);
    let server = start_with(|s| s.tls(ServerTlsConfig::from_rustls(server_config.clone())));
    let client_config = Arc::new(client_config);
    call(&server, ClientTlsConfig::from_rustls(client_config.clone())).unwrap();

    let mixed = ClientTlsConfig::from_rustls(client_config).ca_certificate(cert("ca.pem"));
    let err = Channel::builder(&server.target())
        .tls(mixed)
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let (test_server, _) = test_server();
    let mixed = ServerTlsConfig::from_rustls(server_config).client_ca_root(cert("ca.pem"));
    let err = test_server.tls(mixed).bind(localhost()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_server_certificate_rotates_while_calls_run_and_none_fail() {
    let reloadable = ReloadableIdentity::new(identity("server.pem", "server.key")).unwrap();
    let server = Arc::new(start_with(|s| {
        s.tls(ServerTlsConfig::reloadable(reloadable.clone()))
    }));
    let both = [cert("ca.pem"), cert("ca2.pem")].concat();
    let trusts = |ca: &[u8]| {
        ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name("localhost")
    };
    assert!(call(&server, trusts(&cert("ca.pem"))).is_ok());
    assert!(
        call(&server, trusts(&cert("ca2.pem"))).is_err(),
        "not rotated yet"
    );

    // Callers on long-lived channels and on a new channel per call, all trusting both CAs.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let (done, calls) = mpsc::channel::<()>();
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (server, stop, failures, done) =
                (server.clone(), stop.clone(), failures.clone(), done.clone());
            let tls = trusts(&both);
            std::thread::spawn(move || {
                let kept = TestClient::new(
                    Channel::builder(&server.target())
                        .tls(tls.clone())
                        .connect_lazy()
                        .unwrap(),
                );
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match i % 2 {
                        0 => block_on(kept.unary(Payload::default())).map(drop),
                        _ => call(&server, tls.clone()),
                    };
                    if let Err(err) = outcome {
                        eprintln!("a call failed during rotation: {err}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = done.send(());
                }
            })
        })
        .collect();
    for _ in 0..40 {
        calls.recv().unwrap();
    }
    // A broken identity is refused, and the server keeps presenting the current one.
    let mismatched = Identity::from_pem(cert("server2.pem"), cert("server.key"));
    let err = reloadable.reload(mismatched).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    reloadable
        .reload(identity("server2.pem", "server2.key"))
        .unwrap();
    for _ in 0..40 {
        calls.recv().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no call failed");
    assert!(call(&server, trusts(&cert("ca2.pem"))).is_ok(), "rotated");
    let err = call(&server, trusts(&cert("ca.pem"))).unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "new handshakes get the new certificate"
    );
}
