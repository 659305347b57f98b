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
