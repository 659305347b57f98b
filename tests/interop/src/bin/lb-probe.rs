//! Asks backends which of them served each call, through an anygrpc channel with a given
//! service config, so a runner can compare anygrpc's balancing with another gRPC's over the
//! same backends. A backend answers `/lb.Probe/Who` with its port, as text.
//!
//! `--keys=a,b` sends one call per key with the key in `--header`, and prints `key port` per
//! line. `--spread_calls=N --tail=M` sends N calls, then prints the ports that served the
//! last M, one per line.

use std::{collections::BTreeSet, time::Duration};

use anygrpc::{client::Grpc, rt::block_on, BytesCodec, Channel, Request, Status};
use anygrpc_interop::flags::{self, Flag, Parsed};
use bytes::Bytes;

const FLAGS: &[Flag] = &[
    Flag {
        name: "target",
        default: "",
        boolean: false,
        help: "The channel's target, e.g. ipv4:127.0.0.1:1000,127.0.0.1:1001.",
    },
    Flag {
        name: "service_config_json",
        default: "",
        boolean: false,
        help: "The channel's default service config, as JSON.",
    },
    Flag {
        name: "keys",
        default: "",
        boolean: false,
        help: "Comma-separated header values: one call each.",
    },
    Flag {
        name: "header",
        default: "x-shard",
        boolean: false,
        help: "The header the keys go in.",
    },
    Flag {
        name: "spread_calls",
        default: "0",
        boolean: false,
        help: "Calls to send without a key (failures are counted, not fatal).",
    },
    Flag {
        name: "tail",
        default: "200",
        boolean: false,
        help: "How many of the last spread calls to report the backends of.",
    },
];

fn main() {
    if let Err(e) = run() {
        eprintln!("lb-probe: {e}");
        std::process::exit(2);
    }
}

async fn who(grpc: &Grpc, header: &str, key: Option<&str>) -> Result<String, Status> {
    let mut request = Request::new(Bytes::new());
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert(header, key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        request.set_wait_for_ready(true);
    }
    request.set_timeout(Duration::from_secs(10));
    let path = http::uri::PathAndQuery::from_static("/lb.Probe/Who");
    let reply = grpc.unary(path, BytesCodec, request).await?;
    Ok(String::from_utf8_lossy(reply.get_ref()).into_owned())
}

fn run() -> Result<(), String> {
    let about = "which backend serves each call, through anygrpc's balancing";
    let flags = match flags::parse("lb-probe", about, FLAGS, std::env::args().skip(1))? {
        Parsed::Run(flags) => flags,
        Parsed::Help(text) => {
            print!("{text}");
            return Ok(());
        }
    };
    let target = flags
        .get("target")
        .filter(|t| !t.is_empty())
        .ok_or("--target is required")?;
    let mut builder = Channel::builder(target);
    if let Some(config) = flags.get("service_config_json").filter(|c| !c.is_empty()) {
        builder = builder.default_service_config(config);
    }
    let channel = builder.connect_lazy().map_err(|e| e.to_string())?;
    let grpc = Grpc::new(channel);
    let header = flags.get("header").unwrap_or("x-shard");
    block_on(async {
        for key in flags
            .get("keys")
            .unwrap_or("")
            .split(',')
            .filter(|k| !k.is_empty())
        {
            let port = who(&grpc, header, Some(key))
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            println!("{key} {port}");
        }
        let calls: usize = flags.number("spread_calls")?.unwrap_or(0);
        let tail: usize = flags.number("tail")?.unwrap_or(200);
        let mut served = BTreeSet::new();
        for call in 0..calls {
            let result = who(&grpc, header, None).await;
            if call + tail >= calls {
                if let Ok(port) = result {
                    served.insert(port);
                }
            }
        }
        for port in served {
            println!("{port}");
        }
        Ok(())
    })
}
