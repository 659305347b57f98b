//! The interop test client on anygrpc: runs the named cases against a server, prints one line
//! per case, and exits non-zero if any failed.

use anygrpc::tls::ClientTlsConfig;
use anygrpc_interop::{
    certs,
    client::{Client, CASES},
    flags::{self, Flag, Parsed},
    read_file,
};

const FLAGS: &[Flag] = &[
    Flag {
        name: "server_host",
        default: "localhost",
        boolean: false,
        help: "Server host.",
    },
    Flag {
        name: "server_port",
        default: "10000",
        boolean: false,
        help: "Server port.",
    },
    Flag {
        name: "server_host_override",
        default: "",
        boolean: false,
        help: "Name for :authority and TLS verification (e.g. foo.test.google.fr).",
    },
    Flag {
        name: "test_case",
        default: "large_unary",
        boolean: false,
        help: "A case, a comma-separated list, or all.",
    },
    Flag {
        name: "use_tls",
        default: "false",
        boolean: true,
        help: "Connect with TLS.",
    },
    Flag {
        name: "use_test_ca",
        default: "false",
        boolean: true,
        help: "Trust the standard interop test CA (built in).",
    },
    Flag {
        name: "ca_file",
        default: "",
        boolean: false,
        help: "Trust the CA certificates in this PEM file.",
    },
    Flag {
        name: "service_config_json",
        default: "",
        boolean: false,
        help: "The channel's default service config, as JSON (e.g. a retryPolicy).",
    },
];

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("interop-client: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool, String> {
    let about = "gRPC interop test client on anygrpc";
    let flags = match flags::parse("interop-client", about, FLAGS, std::env::args().skip(1))? {
        Parsed::Run(flags) => flags,
        Parsed::Help(text) => {
            print!("{text}\nTest cases: {}\n", CASES.join(", "));
            return Ok(true);
        }
    };
    let cases: Vec<&str> = match flags.get("test_case").unwrap_or("large_unary") {
        "all" => CASES.to_vec(),
        list => list.split(',').map(str::trim).collect(),
    };
    if let Some(unknown) = cases.iter().find(|c| !CASES.contains(c)) {
        return Err(format!(
            "unknown test case {unknown:?}; valid cases: all, {}",
            CASES.join(", ")
        ));
    }
    let host = flags.get("server_host").unwrap_or("localhost");
    let port: u16 = flags
        .number("server_port")?
        .ok_or("--server_port is required")?;
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut builder = anygrpc::Channel::builder(&target);
    if let Some(json) = flags.get("service_config_json") {
        builder = builder.default_service_config(json);
    }
    if let Some(name) = flags.get("server_host_override") {
        builder = builder.authority(name);
    }
    if flags.bool("use_tls") {
        let mut tls = ClientTlsConfig::new();
        if let Some(file) = flags.get("ca_file") {
            tls = tls.ca_certificate(read_file(file)?);
        } else if flags.bool("use_test_ca") {
            tls = tls.ca_certificate(certs::CA);
        }
        if let Some(name) = flags.get("server_host_override") {
            tls = tls.domain_name(name);
        }
        builder = builder.tls(tls);
    }
    let channel = builder.connect_lazy().map_err(|s| s.to_string())?;
    let client = Client::new(channel);
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        match anygrpc::rt::block_on(client.run(case)) {
            Ok(()) => {
                passed += 1;
                println!("PASS {case}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {case}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
