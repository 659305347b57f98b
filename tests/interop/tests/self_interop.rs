//! Every interop case, anygrpc client against anygrpc server, plaintext and TLS, in-process.
//! (`tests/interop/run.sh` plays the same cases against the gRPC C-core through grpcio.)

use anygrpc::tls::{ClientTlsConfig, Identity, ServerTlsConfig};
use anygrpc_interop::{
    certs,
    client::{Client, CASES},
    server::TestService,
};

fn run_all(tls: bool) {
    let mut server = anygrpc::Server::builder()
        .max_recv_message_size(16 << 20)
        .add_service(TestService);
    if tls {
        server = server.tls(ServerTlsConfig::new(Identity::from_pem(
            certs::SERVER_CERT,
            certs::SERVER_KEY,
        )));
    }
    let bound = server
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let target = bound.local_addr().unwrap().to_string();
    std::thread::spawn(move || anygrpc::rt::block_on(bound.serve()));
    let mut builder = anygrpc::Channel::builder(&target);
    if tls {
        builder = builder.authority("foo.test.google.fr").tls(
            ClientTlsConfig::new()
                .ca_certificate(certs::CA)
                .domain_name("foo.test.google.fr"),
        );
    }
    let client = Client::new(builder.connect_lazy().unwrap());
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| {
            anygrpc::rt::block_on(client.run(case))
                .err()
                .map(|e| format!("{case}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_case_plaintext() {
    run_all(false);
}

#[test]
fn every_case_tls_with_host_override() {
    run_all(true);
}

#[test]
fn unknown_cases_are_errors_that_list_the_valid_ones() {
    let channel = anygrpc::Channel::builder("127.0.0.1:1")
        .connect_lazy()
        .unwrap();
    let err = anygrpc::rt::block_on(Client::new(channel).run("no_such_case")).unwrap_err();
    assert!(
        err.contains("large_unary") && err.contains("ping_pong"),
        "{err}"
    );
}

/// `interop-client --service_config_json` applies a retry policy: against a server that fails
/// the first two attempts of each call with UNAVAILABLE, `empty_unary` passes with the policy
/// (the server sees attempts 0, 1, 2) and fails without it. `large_unary`'s 271,828-byte
/// request is over the 256 KiB per-call retry buffer, so it commits at once: one attempt.
#[test]
fn service_config_json_applies_a_retry_policy() {
    use std::sync::{Arc, Mutex};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let bound = anygrpc::Server::builder()
        .add_service(TestService)
        .interceptor(move |head: &mut anygrpc::interceptor::CallHead| {
            let previous = head
                .extensions_mut()
                .get::<anygrpc::server::PreviousAttempts>()
                .map_or(0, |p| p.0);
            log.lock().unwrap().push(previous);
            if previous < 2 {
                return Err(anygrpc::Status::unavailable("injected failure"));
            }
            Ok(())
        })
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let port = match bound.local_addr().unwrap() {
        anygrpc::rt::Address::Tcp(addr) => addr.port().to_string(),
        other => panic!("tcp expected, got {other}"),
    };
    std::thread::spawn(move || anygrpc::rt::block_on(bound.serve()));
    let config = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let run = |case: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_interop-client"))
            .args(["--server_port", &port, "--test_case", case])
            .args(extra)
            .output()
            .unwrap()
    };
    let with_policy = run("empty_unary", &["--service_config_json", config]);
    let out = String::from_utf8_lossy(&with_policy.stdout);
    assert!(with_policy.status.success(), "{out}");
    assert!(out.contains("PASS empty_unary"), "{out}");
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);

    seen.lock().unwrap().clear();
    let without = run("empty_unary", &[]);
    assert!(!without.status.success());
    assert_eq!(*seen.lock().unwrap(), [0], "no policy: one attempt");

    seen.lock().unwrap().clear();
    let large = run("large_unary", &["--service_config_json", config]);
    assert!(!large.status.success());
    assert_eq!(
        *seen.lock().unwrap(),
        [0],
        "over the retry buffer: one attempt"
    );

    let invalid = run(
        "empty_unary",
        &["--service_config_json", "{\"methodConfig\": 1}"],
    );
    assert_eq!(
        invalid.status.code(),
        Some(2),
        "an invalid config is a usage error"
    );
}
