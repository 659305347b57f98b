//! The test service on `127.0.0.1:<port>` in a process of its own, for tests that kill a
//! server: prints `listening` once bound, then serves until killed.

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: test-server <port>");
    let (server, _events) = anygrpc_integration_tests::test_server();
    let bound = server
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("bind");
    println!("listening");
    anygrpc::rt::block_on(bound.serve()).expect("serve");
}
