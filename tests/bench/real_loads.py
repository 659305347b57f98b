"""The loads that are not echo: handlers and callers that do CPU work of their own, and large
messages. Each measurement alternates anygrpc and tonic, --rounds times, and reports medians.

- Handler-bound: h2load unary (16 B) against servers whose handler busy-spins 0, 50 or 200 us
  per call (`--work-us`), over 1 and 4 connections x 100 streams. A server that spreads one
  connection's calls over the cores approaches cores x 1e6 / work_us calls/s.
- Reply-bound: each load generator with `--reply-work-us 50` (CPU work after every reply), unary
  and bidi at C=64 on one channel, against each server.
- Large messages: h2load unary of 1 MiB bodies, 8 streams on 1 and on 4 connections; and each
  load generator's server streaming of 4 MiB messages at C=4.
"""

import os
import statistics
import sys
import tempfile
import time

from harness import Server, check_grpc_status, client, grpc_frame, h2load, ratio

WORK_US = (50, 200)
REPLY_WORK_US = 50
MIB = 1 << 20

med = statistics.median


def servers_and_clients(args, names):
    """Starts the named servers (`NAME` or `NAME-workN`); the two load generators."""
    binaries = {"anygrpc": os.path.join(args.anygrpc_bin, "bench-server"),
                "tonic": os.path.join(args.tonic_bin, "tonic-bench-server")}
    servers = {}
    for name in names:
        implementation, _, work = name.partition("-work")
        command = [binaries[implementation]] + (["--work-us", work] if work else [])
        servers[name] = Server(name, command)
    clients = {"anygrpc": [os.path.join(args.anygrpc_bin, "bench-client")],
               "tonic": [os.path.join(args.tonic_bin, "tonic-bench-client")]}
    return servers, clients


def body_file(size):
    path = os.path.join(tempfile.mkdtemp(), f"req{size}.bin")
    with open(path, "wb") as f:
        f.write(grpc_frame(size))
    return path


def work_tables(args):
    names = ["anygrpc", "tonic"] + [f"{i}-work{w}" for w in WORK_US for i in ("anygrpc", "tonic")]
    servers, clients = servers_and_clients(args, names)
    cores = os.cpu_count()
    h2, runs = {}, {}
    try:
        time.sleep(1)
        body = body_file(16)
        for s in servers.values():
            check_grpc_status(s.port, body)
        for work in (0, *WORK_US):
            suffix = f"-work{work}" if work else ""
            for connections in (1, 4):
                for _ in range(args.rounds):
                    for implementation in ("anygrpc", "tonic"):
                        s = servers[implementation + suffix]
                        rps = h2load(s.port, connections, 100, body, args.seconds)
                        h2.setdefault((work, connections, implementation), []).append(rps)
                        print(f"h2load {connections}x100 work {work}us {implementation}: {rps:.0f} req/s",
                              file=sys.stderr, flush=True)
        reply_work = ["--reply-work-us", str(REPLY_WORK_US)]
        for mode in ("unary", "bidi"):
            for _ in range(args.rounds):
                for server in ("anygrpc", "tonic"):
                    for cli in ("anygrpc", "tonic"):
                        r = client([*clients[cli], *reply_work], servers[server].port, mode, 64, 16, args.seconds)
                        runs.setdefault((mode, cli, server), []).append(r["rps"])
                        print(f"{cli} client -> {server} server {mode} C=64 reply work {REPLY_WORK_US}us: "
                              f"{r['rps']} calls/s", file=sys.stderr, flush=True)
    finally:
        for s in servers.values():
            s.stop()

    out = ["\n### Handler-bound unary: h2load, 16 B, the handler busy-spins per call (requests/s)\n",
           f"The bound for a server that uses every core is {cores} x 1e6 / work_us requests/s; "
           "`of bound` is the share of it reached.\n",
           "| handler work | connections x streams | anygrpc | tonic | anygrpc / tonic | anygrpc of bound | tonic of bound |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for work in (0, *WORK_US):
        for connections in (1, 4):
            a, t = (med(h2[(work, connections, i)]) for i in ("anygrpc", "tonic"))
            bound = cores * 1e6 / work if work else float("nan")
            shares = f"{a / bound:.2f} | {t / bound:.2f}" if work else " | "
            out.append(f"| {work} us | {connections}x100 | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} | {shares} |")
    out += [f"\n### Reply-bound callers: C=64 on one channel, {REPLY_WORK_US} us of CPU work after each reply (calls/s)\n",
            f"The bound for a client that uses every core is {cores} x 1e6 / {REPLY_WORK_US} calls/s "
            "(less the server's share of the same cores).\n",
            "| workload | server | anygrpc client | tonic client | ratio |",
            "|---|---|---:|---:|---:|"]
    for mode in ("unary", "bidi"):
        for server in ("anygrpc", "tonic"):
            a, t = med(runs[(mode, "anygrpc", server)]), med(runs[(mode, "tonic", server)])
            out.append(f"| {mode} C=64 | {server} | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} |")
    return out


def large_tables(args):
    servers, clients = servers_and_clients(args, ["anygrpc", "tonic"])
    h2, runs = {}, {}
    loads = ((1, 8), (4, 2))
    try:
        time.sleep(1)
        body = body_file(MIB)
        for s in servers.values():
            check_grpc_status(s.port, body)
        for connections, streams in loads:
            for _ in range(args.rounds):
                for implementation in ("anygrpc", "tonic"):
                    rps = h2load(servers[implementation].port, connections, streams, body, args.seconds)
                    h2.setdefault((connections, implementation), []).append(rps)
                    print(f"h2load {connections}x{streams} 1 MiB {implementation}: {rps:.0f} req/s",
                          file=sys.stderr, flush=True)
        for _ in range(args.rounds):
            for server in ("anygrpc", "tonic"):
                for cli in ("anygrpc", "tonic"):
                    r = client(clients[cli], servers[server].port, "server-stream", 4, 4 * MIB, args.seconds)
                    runs.setdefault((cli, server), []).append(r["mb_per_sec"])
                    print(f"{cli} client -> {server} server server-stream C=4 4 MiB: {r['mb_per_sec']} MB/s",
                          file=sys.stderr, flush=True)
    finally:
        for s in servers.values():
            s.stop()

    out = ["\n### Large messages: h2load unary echo of 1 MiB (MB/s of replies)\n",
           "| connections x streams | anygrpc | tonic | anygrpc / tonic |",
           "|---|---:|---:|---:|"]
    for connections, streams in loads:
        a, t = (med(h2[(connections, i)]) * MIB / 1e6 for i in ("anygrpc", "tonic"))
        out.append(f"| {connections}x{streams} | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} |")
    out += ["\n### Large messages: server streaming of 4 MiB messages, C=4 on one channel (MB/s received)\n",
            "| server | anygrpc client | tonic client | anygrpc / tonic |",
            "|---|---:|---:|---:|"]
    for server in ("anygrpc", "tonic"):
        a, t = med(runs[("anygrpc", server)]), med(runs[("tonic", server)])
        out.append(f"| {server} | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} |")
    out += ["", "| client | anygrpc server | tonic server | anygrpc / tonic |",
            "|---|---:|---:|---:|"]
    for cli in ("anygrpc", "tonic"):
        a, t = med(runs[(cli, "anygrpc")]), med(runs[(cli, "tonic")])
        out.append(f"| {cli} client | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} |")
    return out
