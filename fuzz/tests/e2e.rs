//! The end-to-end targets reach real calls: a well-formed seed gets real answers.

use std::path::Path;

fn seed(target: &str, name: &str) -> (u8, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (data[0], data[1..].to_vec())
}

#[test]
fn the_server_target_echoes_a_well_formed_unary_call() {
    let (control, wire) = seed("server_h2", "seed-unary");
    let answer = anygrpc_fuzz::server_answer(control, &wire);
    assert!(
        answer.windows(5).any(|w| w == b"hello"),
        "no echo in {answer:02x?}"
    );
    let (control, wire) = seed("server_h2", "seed-unknown-method");
    let answer = anygrpc_fuzz::server_answer(control, &wire);
    assert!(!answer.windows(5).any(|w| w == b"hello"));
}

#[test]
fn the_client_target_reads_well_formed_responses() {
    let (control, wire) = seed("client_h2", "seed-ok");
    let outcomes = anygrpc_fuzz::client_outcomes(control, &wire);
    assert_eq!(
        outcomes[0].as_ref().expect("unary"),
        &[bytes::Bytes::from_static(b"u")]
    );
    let (control, wire) = seed("client_h2", "seed-trailers-only");
    for outcome in anygrpc_fuzz::client_outcomes(control, &wire) {
        let status = outcome.expect_err("trailers-only");
        assert_eq!(status.code(), anygrpc::Code::Unavailable);
        assert_eq!(status.message(), "down here");
    }
}
