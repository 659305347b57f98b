//! `dns://AUTHORITY/host` targets ask the DNS server they name: a small DNS server written
//! here answers for a name no other resolver knows.

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anygrpc::{rt::block_on, Channel, Code};
use anygrpc_integration_tests::*;

/// A DNS server on a localhost UDP port: `svc.anygrpc-test.` has the A record 127.0.0.1 and
/// no AAAA record; every other name is NXDOMAIN. Counts the queries it answers.
fn dns_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            counted.fetch_add(1, Ordering::SeqCst);
            let query = &buf[..n];
            let question = &query[12..];
            let name_end = question.iter().position(|b| *b == 0).unwrap();
            let qtype = u16::from_be_bytes([question[name_end + 1], question[name_end + 2]]);
            let known = &question[..=name_end] == b"\x03svc\x0canygrpc-test\x00";
            let mut reply = query[..2].to_vec();
            let rcode = if known { 0 } else { 3 };
            reply.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1]);
            let answers: u16 = if known && qtype == 1 { 1 } else { 0 };
            reply.extend_from_slice(&answers.to_be_bytes());
            reply.extend_from_slice(&[0, 0, 0, 0]);
            reply.extend_from_slice(question);
            if answers == 1 {
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    (addr, queries)
}

#[test]
fn a_dns_authority_is_the_server_asked() {
    let (dns, queries) = dns_server();
    let server = start();
    let port = server
        .addr
        .to_string()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let target = format!("dns://{dns}/svc.anygrpc-test:{port}");
    let channel = Channel::builder(&target).connect_lazy().unwrap();
    block_on(TestClient::new(channel).unary(Payload::default())).unwrap();
    assert_eq!(queries.load(Ordering::SeqCst), 2, "an A and an AAAA query");

    let unknown = format!("dns://{dns}/nothing.anygrpc-test:{port}");
    let channel = Channel::builder(&unknown).connect_lazy().unwrap();
    let err = block_on(TestClient::new(channel).unary(Payload::default())).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("no addresses"), "{err}");

    let named = Channel::builder("dns://resolver.example/svc.anygrpc-test:1").connect_lazy();
    let err = named.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("must be an IP address"), "{err}");
}
