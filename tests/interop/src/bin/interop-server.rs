//! The interop test server on anygrpc. Prints `listening on port N` once it accepts calls.

use std::{io::Write, net::ToSocketAddrs};

use anygrpc::tls::{Identity, ServerTlsConfig};
use anygrpc_interop::{
    certs,
    flags::{self, Flag, Parsed},
    read_file,
    server::TestService,
};

const FLAGS: &[Flag] = &[
    Flag {
        name: "host",
        default: "0.0.0.0",
        boolean: false,
        help: "Address to listen on: an IP address or a name that resolves to one.",
    },
    Flag {
        name: "port",
        default: "10000",
        boolean: false,
        help: "Port to listen on (0: any free port).",
    },
    Flag {
        name: "use_tls",
        default: "false",
        boolean: true,
        help: "Serve TLS.",
    },
    Flag {
        name: "tls_cert_file",
        default: "",
        boolean: false,
        help: "PEM certificate chain (default: the built-in test certificate).",
    },
    Flag {
        name: "tls_key_file",
        default: "",
        boolean: false,
        help: "PEM private key (default: the built-in test key).",
    },
];

/// Requests up to this size are accepted, so the very_large_request case (10 MiB) passes.
const MAX_RECV_MESSAGE_SIZE: usize = 16 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("interop-server: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let about = "gRPC interop test server (grpc.testing.TestService) on anygrpc";
    let flags = match flags::parse("interop-server", about, FLAGS, std::env::args().skip(1))? {
        Parsed::Run(flags) => flags,
        Parsed::Help(text) => {
            print!("{text}");
            return Ok(());
        }
    };
    let port: u16 = flags.number("port")?.unwrap_or(10000);
    let host = flags.get("host").unwrap_or("0.0.0.0");
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving --host {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("--host {host} resolves to no address"))?;
    let mut server = anygrpc::Server::builder()
        .max_recv_message_size(MAX_RECV_MESSAGE_SIZE)
        .add_service(TestService);
    if flags.bool("use_tls") {
        let cert = flags
            .get("tls_cert_file")
            .map(read_file)
            .transpose()?
            .unwrap_or_else(|| certs::SERVER_CERT.to_vec());
        let key = flags
            .get("tls_key_file")
            .map(read_file)
            .transpose()?
            .unwrap_or_else(|| certs::SERVER_KEY.to_vec());
        server = server.tls(ServerTlsConfig::new(Identity::from_pem(cert, key)));
    }
    let bound = server
        .bind(addr)
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let port = match bound.local_addr().map_err(|e| e.to_string())? {
        anygrpc::rt::Address::Tcp(addr) => addr.port(),
        other => return Err(format!("unexpected address {other}")),
    };
    println!("listening on port {port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    anygrpc::rt::block_on(bound.serve()).map_err(|e| e.to_string())
}
