//! HTTP CONNECT proxies (gRFC A1) through a small proxy written here: plaintext and TLS
//! through it, Basic proxy authorization from the URL, `no_proxy` bypassing it, the
//! environment's proxy, and a proxy that refuses.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anygrpc::{
    resolver::HttpProxy,
    rt::block_on,
    tls::{ClientTlsConfig, Identity, ServerTlsConfig},
    Channel, Code,
};
use anygrpc_integration_tests::*;

/// A CONNECT proxy on a localhost port: it records each request head and answers as its
/// [`Answer`] says.
struct Proxy {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

/// How the test proxy answers a CONNECT.
#[derive(Clone, Copy)]
enum Answer {
    /// Refuses with this status line.
    Refuse(&'static str),
    /// Answers 200 in a write of its own, then copies.
    Open,
    /// Waits for the server's first bytes (its SETTINGS) and writes them in the same write as
    /// the 200, so the client reads past the proxy's answer in one read.
    OpenWithServerBytes,
}

impl Proxy {
    fn start(refuse: Option<&'static str>) -> Proxy {
        Proxy::answering(refuse.map_or(Answer::Open, Answer::Refuse))
    }

    fn answering(answer: Answer) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || tunnel(client, &seen, answer));
            }
        });
        Proxy { url, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn tunnel(client: TcpStream, seen: &Mutex<Vec<String>>, answer: Answer) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if reader.read_line(&mut head).unwrap_or(0) == 0 {
            return;
        }
    }
    seen.lock().unwrap().push(head.clone());
    let mut client = client;
    if let Answer::Refuse(status) = answer {
        let _ = client.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes());
        return;
    }
    let target = head.split(' ').nth(1).unwrap().to_owned();
    let Ok(mut server) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    let mut answer_bytes = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
    if let Answer::OpenWithServerBytes = answer {
        let mut first = [0; 256];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = server.read(&mut first).expect("an h2 server speaks first");
        server.set_read_timeout(None).unwrap();
        assert!(n > 0, "the server's SETTINGS");
        answer_bytes.extend_from_slice(&first[..n]);
    }
    client.write_all(&answer_bytes).unwrap();
    let (mut to_server, mut from_server) = (server.try_clone().unwrap(), server);
    let mut to_client = client;
    let upstream = std::thread::spawn(move || {
        // What the client sent after its head, then the rest.
        let buffered = reader.buffer().to_vec();
        let _ = to_server.write_all(&buffered);
        let mut rest = reader.into_inner();
        let _ = std::io::copy(&mut rest, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut from_server, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

fn call(channel: Channel) -> Result<(), anygrpc::Status> {
    block_on(TestClient::new(channel).unary(Payload::default())).map(drop)
}

#[test]
fn plaintext_and_tls_calls_go_through_the_proxy_with_basic_auth() {
    let proxy = Proxy::start(None);
    let server = start();
    let with_auth = format!(
        "http://user:p%40ss@{}",
        proxy.url.trim_start_matches("http://")
    );
    let channel = Channel::builder(&server.target())
        .http_proxy(HttpProxy::new(&with_auth).unwrap())
        .connect_lazy()
        .unwrap();
    call(channel).unwrap();
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "one connection, through the proxy");
    let target = server.target();
    assert!(heads[0].starts_with(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n")));
    // "user:p@ss" in base64.
    assert!(
        heads[0].contains("Proxy-Authorization: Basic dXNlcjpwQHNz\r\n"),
        "{}",
        heads[0]
    );

    let identity = Identity::from_pem(cert("server.pem"), cert("server.key"));
    let secure = start_with(|s| s.tls(ServerTlsConfig::new(identity)));
    let tls = ClientTlsConfig::new()
        .ca_certificate(cert("ca.pem"))
        .domain_name("localhost");
    let channel = Channel::builder(&secure.target())
        .http_proxy(HttpProxy::new(&proxy.url).unwrap())
        .tls(tls)
        .connect_lazy()
        .unwrap();
    call(channel).unwrap();
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2);
    assert!(heads[1].starts_with(&format!("CONNECT {} ", secure.target())));
    assert!(!heads[1].contains("Proxy-Authorization"));
}

#[test]
fn bytes_that_arrive_with_the_proxys_answer_reach_http2() {
    // An h2 server speaks first (SETTINGS): with the 200 in the same segment, the client's
    // read of the answer takes them too, and the connection runs on what it hands on. (That
    // the bytes are handed on exactly is `client::proxy`'s unit test: h2 would also get by
    // without the server's first SETTINGS.)
    let proxy = Proxy::answering(Answer::OpenWithServerBytes);
    let server = start();
    for _ in 0..3 {
        let channel = Channel::builder(&server.target())
            .http_proxy(HttpProxy::new(&proxy.url).unwrap())
            .connect_lazy()
            .unwrap();
        call(channel).unwrap();
    }
    assert_eq!(proxy.heads().len(), 3);
}

#[test]
fn no_proxy_hosts_are_dialled_directly() {
    let proxy = Proxy::start(None);
    let server = start();
    for list in ["127.0.0.1", "127.0.0.0/8", "*"] {
        let channel = Channel::builder(&server.target())
            .http_proxy(HttpProxy::new(&proxy.url).unwrap().no_proxy(list))
            .connect_lazy()
            .unwrap();
        call(channel).unwrap();
    }
    assert!(proxy.heads().is_empty(), "{:?}", proxy.heads());
}

#[test]
fn a_proxy_that_refuses_fails_the_call_unavailable() {
    let proxy = Proxy::start(Some("407 Proxy Authentication Required"));
    let server = start();
    let channel = Channel::builder(&server.target())
        .http_proxy(HttpProxy::new(&proxy.url).unwrap())
        .connect_lazy()
        .unwrap();
    let err = call(channel).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().contains("407 Proxy Authentication Required"),
        "{err}"
    );
    assert_eq!(proxy.heads().len(), 1);

    // Nothing listening where the proxy should be.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let channel = Channel::builder(&server.target())
        .http_proxy(HttpProxy::new(&url).unwrap())
        .connect_lazy()
        .unwrap();
    assert_eq!(call(channel).unwrap_err().code(), Code::Unavailable);
}

/// Set in the child process that reads its proxy from the environment.
const CHILD: &str = "ANYGRPC_PROXY_ENV_CHILD";

#[test]
fn the_environment_names_the_proxy_and_its_no_proxy_list() {
    const NAME: &str = "the_environment_names_the_proxy_and_its_no_proxy_list";
    let Ok(server_target) = std::env::var(CHILD) else {
        let proxy = Proxy::start(None);
        let server = start();
        // Loopback is never proxied from the environment, so the child dials the server by
        // a name that is not `localhost`: the proxy connects it to the address.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, server.target())
            .env("grpc_proxy", &proxy.url)
            .env("no_grpc_proxy", "direct.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("env proxy: tunnelled; bypass: direct"),
            "{stdout}"
        );
        let heads = proxy.heads();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            heads[0].starts_with("CONNECT proxied.invalid:"),
            "{heads:?}"
        );
        return;
    };
    let port = server_target.rsplit(':').next().unwrap();
    // Through the proxy: the name needs no resolving here, and the call fails only at the
    // proxy, which cannot resolve it either; its 502 shows the tunnel was asked for.
    let channel = Channel::builder(&format!("proxied.invalid:{port}"))
        .connect_lazy()
        .unwrap();
    let err = call(channel).unwrap_err();
    assert!(err.message().contains("502"), "{err}");
    // On the no_proxy list: dialled directly, so the name fails to resolve.
    let channel = Channel::builder(&format!("direct.invalid:{port}"))
        .connect_lazy()
        .unwrap();
    let err = call(channel).unwrap_err();
    assert!(!err.message().contains("proxy"), "{err}");
    println!("env proxy: tunnelled; bypass: direct");
}

/// The proxy answers, but never ends its head: the client stops reading at the limit.
#[test]
fn an_endless_proxy_answer_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let mut head = [0; 512];
            let _ = client.read(&mut head);
            let _ = client.write_all(b"HTTP/1.1 200 OK\r\n");
            let line = [b'x'; 1024];
            while client.write_all(&line).is_ok() {}
        }
    });
    let server = start();
    let channel = Channel::builder(&server.target())
        .http_proxy(HttpProxy::new(&url).unwrap())
        .connect_lazy()
        .unwrap();
    let err = call(channel).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("larger than"), "{err}");
}
