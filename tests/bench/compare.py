"""Runs the anygrpc-vs-tonic comparison and prints a markdown table of medians and ratios.

Servers: anygrpc (default runtime), tonic (tokio), and a raw h2 echo server (the ceiling).
Measurements, each repeated --rounds times with the implementations alternated A/B/A/B:
  - h2load unary against each server: 1 and 4 connections x 100 streams, 16 B and 1 KiB;
  - each load generator (anygrpc, tonic) against each gRPC server: unary C=64, bidi C=64 and
    C=4, unary C=1 (latency), server streaming of 1 KiB messages;
  - for unary C=1 and server streaming, also against the raw h2 server and anygrpc's server on
    a tokio runtime: the ceiling, and the runtime's share separated from the gRPC layer's;
  - anygrpc's load generator also from a blocking caller and on a tokio runtime;
  - for unary and bidi C=64, also a raw h2 load generator on anygrpc's runtime (no gRPC logic):
    the ceiling for a client;
  - unary and bidi C=64 with the load generator and the server pinned to a core each
    (`taskset`), as two one-core machines, with the server's CPU time per call;
  - peak RSS of each server idle and after the load; heap allocations per call;
then the tables of real_loads.py: handlers and callers that compute, and large messages;
middleware_cost.py's unary C=64 with and without a pass-through middleware; and
instructions.py's count of instructions per unary RPC under callgrind.
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import instructions
import middleware_cost
import real_loads
from harness import CLIENT_CPU, SERVER_CPU, Server, check_grpc_status, client, grpc_frame, h2load, ratio

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--anygrpc-bin", required=True)
    p.add_argument("--tonic-bin", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--sections", default="echo,work,large,middleware,instructions",
                   help="which tables to measure: echo (every table above), work (handler- and "
                        "reply-bound loads), large (1 MiB unary, 4 MiB server streaming), "
                        "middleware (unary C=64 with and without a pass-through middleware), "
                        "instructions (per unary RPC, under callgrind)")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    out = [f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
           f"{os.cpu_count()} CPUs, {args.rounds} rounds x {args.seconds} s, medians.\n"]
    if "echo" in sections:
        out += echo_tables(args)
    if "work" in sections:
        out += real_loads.work_tables(args)
    if "large" in sections:
        out += real_loads.large_tables(args)
    if "middleware" in sections:
        out += middleware_cost.middleware_tables(args)
    if "instructions" in sections:
        out += instructions.instruction_tables(args)
    print("\n".join(out))


def echo_tables(args):
    """The echo loads: every table but the handler-bound and large-message ones."""
    anygrpc_server = os.path.join(args.anygrpc_bin, "bench-server")
    tonic_server = os.path.join(args.tonic_bin, "tonic-bench-server")
    servers = {
        "anygrpc": Server("anygrpc", [anygrpc_server]),
        "tonic": Server("tonic", [tonic_server]),
        "h2": Server("h2", [os.path.join(args.tonic_bin, "h2-echo-server")]),
        "anygrpc-tokio": Server("anygrpc-tokio", [os.path.join(args.anygrpc_bin, "bench-server-tokio")]),
        # Started on one CPU, so each runtime sizes itself to one worker thread.
        "anygrpc-1cpu": Server("anygrpc-1cpu", [*SERVER_CPU, anygrpc_server]),
        "tonic-1cpu": Server("tonic-1cpu", [*SERVER_CPU, tonic_server]),
    }
    grpc_servers = ("anygrpc", "tonic", "h2")
    clients = {
        "anygrpc": [os.path.join(args.anygrpc_bin, "bench-client")],
        "tonic": [os.path.join(args.tonic_bin, "tonic-bench-client")],
        # anygrpc's load generator with its workers on the main thread under block_on.
        "anygrpc-caller": [os.path.join(args.anygrpc_bin, "bench-client"), "--caller-thread"],
        # anygrpc's load generator with its channel and workers on a multi-threaded tokio runtime.
        "anygrpc-tokio": [os.path.join(args.anygrpc_bin, "bench-client-tokio")],
        # Raw h2 on anygrpc's default runtime, no gRPC logic: the ceiling for a client.
        "h2": [os.path.join(args.anygrpc_bin, "h2-bench-client")],
    }
    drivers = ("anygrpc", "tonic", "anygrpc-caller", "anygrpc-tokio")
    out = []
    try:
        time.sleep(1)
        idle = {name: s.memory("VmRSS") for name, s in servers.items()}
        tmp = tempfile.mkdtemp()
        bodies = {}
        for size in (16, 1024):
            bodies[size] = os.path.join(tmp, f"req{size}.bin")
            with open(bodies[size], "wb") as f:
                f.write(grpc_frame(size))
        for s in servers.values():
            check_grpc_status(s.port, bodies[16])

        # Server throughput under h2load.
        h2 = {}
        before = {name: s.reading() for name, s in servers.items()}
        for connections in (1, 4):
            for size in (16, 1024):
                for _ in range(args.rounds):
                    for name in grpc_servers:
                        s = servers[name]
                        rps = h2load(s.port, connections, 100, bodies[size], args.seconds)
                        h2.setdefault((connections, size, name), []).append(rps)
                        print(f"h2load {connections}x100 {size}B {name}: {rps:.0f} req/s", file=sys.stderr, flush=True)
        after = {name: s.reading() for name, s in servers.items()}
        server_allocs = {
            name: (after[name][1] - before[name][1]) / max(1, after[name][0] - before[name][0])
            for name in grpc_servers
        }

        # Load generators against each gRPC server.
        runs = {}
        modes = [("unary", 64, 16), ("bidi", 64, 16), ("bidi", 4, 16), ("unary", 1, 16), ("server-stream", 64, 1024)]
        ceiling_modes = [("unary", 1, 16), ("server-stream", 64, 1024)]
        client_ceiling_modes = [("unary", 64, 16), ("bidi", 64, 16)]
        for mode, concurrency, size in modes:
            targets = ("anygrpc", "tonic", "h2", "anygrpc-tokio") if (mode, concurrency, size) in ceiling_modes \
                else ("anygrpc", "tonic")
            for _ in range(args.rounds):
                for server in targets:
                    callers = drivers if mode != "server-stream" and server in ("anygrpc", "tonic") \
                        else ("anygrpc", "tonic")
                    if (mode, concurrency, size) in client_ceiling_modes:
                        callers = (*callers, "h2")
                    for cli in callers:
                        r = client(clients[cli], servers[server].port, mode, concurrency, size, args.seconds)
                        runs.setdefault((mode, concurrency, size, cli, server), []).append(r)
                        print(f"{cli} client -> {server} server {mode} C={concurrency} {size}B: "
                              f"{r['rps']} calls/s p50 {r['p50_us']}us", file=sys.stderr, flush=True)

        # A core each: the load generator on one CPU, the server on the other.
        pinned_modes = [("unary", 64, 16), ("bidi", 64, 16)]
        pinned_clients = ("anygrpc", "anygrpc-tokio", "tonic")
        for mode, concurrency, size in pinned_modes:
            for _ in range(args.rounds):
                for server in ("anygrpc-1cpu", "tonic-1cpu"):
                    for cli in pinned_clients:
                        cpu = servers[server].cpu_seconds()
                        r = client([*CLIENT_CPU, *clients[cli]], servers[server].port, mode, concurrency,
                                   size, args.seconds)
                        r["server_us_per_call"] = (servers[server].cpu_seconds() - cpu) * 1e6 / max(1, r["calls"])
                        runs.setdefault((mode, concurrency, size, cli, server), []).append(r)
                        print(f"{cli} client (CPU 0) -> {server} server (CPU 1) {mode} C={concurrency} {size}B: "
                              f"{r['rps']} calls/s, server {r['server_us_per_call']:.2f} us/call",
                              file=sys.stderr, flush=True)
        peak = {name: s.memory("VmHWM") for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()

    med = statistics.median
    out.append("### Servers under h2load (unary, requests/s)\n")
    out.append("| load | anygrpc | tonic | raw h2 | anygrpc / tonic | anygrpc / raw h2 |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for connections in (1, 4):
        for size in (16, 1024):
            a, t, h = (med(h2[(connections, size, n)]) for n in ("anygrpc", "tonic", "h2"))
            out.append(f"| {connections}x100 streams, {size} B | {a:.0f} | {t:.0f} | {h:.0f} | "
                       f"{ratio(a, t):.2f} | {ratio(a, h):.2f} |")
    out.append("\n### Load generators (anygrpc client vs tonic client, same server)\n")
    out.append("| workload | server | anygrpc client | tonic client | ratio |")
    out.append("|---|---|---:|---:|---:|")
    for mode, concurrency, size in modes:
        for server in ("anygrpc", "tonic"):
            a = runs[(mode, concurrency, size, "anygrpc", server)]
            t = runs[(mode, concurrency, size, "tonic", server)]
            if concurrency == 1:
                for pct in ("p50_us", "p99_us"):
                    av, tv = med(r[pct] for r in a), med(r[pct] for r in t)
                    out.append(f"| unary C=1 latency {pct[:-3]} (us, lower is better) | {server} | {av:.0f} | {tv:.0f} | "
                               f"{ratio(av, tv):.2f} |")
            else:
                key = "msgs_per_sec" if mode == "server-stream" else "rps"
                av, tv = med(r[key] for r in a), med(r[key] for r in t)
                unit = "messages/s" if mode == "server-stream" else "calls/s"
                out.append(f"| {mode} C={concurrency} {size} B ({unit}) | {server} | {av:.0f} | {tv:.0f} | {ratio(av, tv):.2f} |")
    out.append("\n### Client ceiling: a raw h2 load generator (no gRPC logic) on anygrpc's runtime\n")
    out.append("`h2-bench-client` writes prebuilt gRPC frames to its h2 streams and counts the frames that "
               "come back: no channel, codec or request task. It is the reference for what a client on h2 and "
               "this runtime can do (for unary, h2's own per-stream work dominates, and anygrpc's client can "
               "match it).\n")
    out.append("| workload | server | anygrpc client | tonic client | raw h2 client | anygrpc / raw h2 | "
               "tonic / raw h2 | raw h2 / tonic |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode, concurrency, size in client_ceiling_modes:
        for server in ("anygrpc", "tonic"):
            v = {c: med(r["rps"] for r in runs[(mode, concurrency, size, c, server)]) for c in ("anygrpc", "tonic", "h2")}
            out.append(f"| {mode} C={concurrency} {size} B (calls/s) | {server} | {v['anygrpc']:.0f} | {v['tonic']:.0f} | "
                       f"{v['h2']:.0f} | {ratio(v['anygrpc'], v['h2']):.2f} | {ratio(v['tonic'], v['h2']):.2f} | "
                       f"{ratio(v['h2'], v['tonic']):.2f} |")
    out.append("\n### Server implementations, same load generator (anygrpc server vs tonic server)\n")
    out.append("| workload | client | anygrpc server | tonic server | ratio |")
    out.append("|---|---|---:|---:|---:|")
    for mode, concurrency, size in modes:
        if concurrency == 1:
            continue
        key = "msgs_per_sec" if mode == "server-stream" else "rps"
        for cli in ("anygrpc", "tonic"):
            a = med(r[key] for r in runs[(mode, concurrency, size, cli, "anygrpc")])
            t = med(r[key] for r in runs[(mode, concurrency, size, cli, "tonic")])
            out.append(f"| {mode} C={concurrency} {size} B | {cli} | {a:.0f} | {t:.0f} | {ratio(a, t):.2f} |")
    out.append("\n### Ceiling and runtime: the same load generators against the raw h2 server and "
               "anygrpc's server on tokio\n")
    names = ("anygrpc", "anygrpc-tokio", "tonic", "h2")
    out.append("| workload | client | anygrpc | anygrpc on tokio | tonic | raw h2 | anygrpc / raw h2 | tonic / raw h2 |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode, concurrency, size in ceiling_modes:
        keys = [("p50_us", "unary C=1 p50 (us)"), ("p99_us", "unary C=1 p99 (us)")] if concurrency == 1 \
            else [("msgs_per_sec", f"server-stream C={concurrency} {size} B (messages/s)")]
        for key, label in keys:
            for cli in ("anygrpc", "tonic"):
                v = {n: med(r[key] for r in runs[(mode, concurrency, size, cli, n)]) for n in names}
                out.append(f"| {label} | {cli} | " + " | ".join(f"{v[n]:.0f}" for n in names) +
                           f" | {ratio(v['anygrpc'], v['h2']):.2f} | {ratio(v['tonic'], v['h2']):.2f} |")
    out.append("\n### anygrpc's client from a blocking caller (`bench-client --caller-thread`) and on tokio "
               "(`bench-client-tokio`)\n")
    out.append("The same load generator with its workers as one future under `block_on` on the main "
               "thread, and with its channel and workers on a multi-threaded tokio runtime, instead of as "
               "tasks on anygrpc's worker threads.\n")
    out.append("| workload | server | anygrpc, spawned | anygrpc, caller thread | anygrpc on tokio | tonic | "
               "caller thread / tonic | on tokio / tonic |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode, concurrency, size in modes:
        if mode == "server-stream":
            continue
        keys = [("p50_us", "unary C=1 p50 (us)"), ("p99_us", "unary C=1 p99 (us)")] if concurrency == 1 \
            else [("rps", f"{mode} C={concurrency} {size} B (calls/s)")]
        for key, label in keys:
            for server in ("anygrpc", "tonic"):
                v = {c: med(r[key] for r in runs[(mode, concurrency, size, c, server)]) for c in drivers}
                out.append(f"| {label} | {server} | {v['anygrpc']:.0f} | {v['anygrpc-caller']:.0f} | "
                           f"{v['anygrpc-tokio']:.0f} | {v['tonic']:.0f} | "
                           f"{ratio(v['anygrpc-caller'], v['tonic']):.2f} | {ratio(v['anygrpc-tokio'], v['tonic']):.2f} |")
    out.append("\n### A core each: load generator on CPU 0, server on CPU 1 (`taskset`)\n")
    out.append("As two one-core machines: each runtime sizes itself to one worker thread. Calls/s, and in "
               "brackets the server's CPU time per call (µs); a server near 1 s of CPU per second is the "
               "bottleneck.\n")
    out.append("| workload | server | anygrpc client | anygrpc on tokio | tonic client | anygrpc / tonic |")
    out.append("|---|---|---:|---:|---:|---:|")
    for mode, concurrency, size in pinned_modes:
        for server in ("anygrpc-1cpu", "tonic-1cpu"):
            cells, rps = [], {}
            for cli in pinned_clients:
                rs = runs[(mode, concurrency, size, cli, server)]
                rps[cli] = med(r["rps"] for r in rs)
                cells.append(f"{rps[cli]:.0f} ({med(r['server_us_per_call'] for r in rs):.2f})")
            out.append(f"| {mode} C={concurrency} {size} B (calls/s) | {server.removesuffix('-1cpu')} | "
                       + " | ".join(cells) + f" | {ratio(rps['anygrpc'], rps['tonic']):.2f} |")
    out.append("\n### Memory and allocations\n")
    out.append("| | anygrpc | tonic | raw h2 |")
    out.append("|---|---:|---:|---:|")
    out.append(f"| server RSS idle (KiB) | {idle['anygrpc']} | {idle['tonic']} | {idle['h2']} |")
    out.append(f"| server peak RSS after load (KiB) | {peak['anygrpc']} | {peak['tonic']} | {peak['h2']} |")
    out.append(f"| server heap allocations per unary call (h2load) | {server_allocs['anygrpc']:.1f} | "
               f"{server_allocs['tonic']:.1f} | {server_allocs['h2']:.1f} |")
    a = med(r["allocs_per_call"] for r in runs[("unary", 64, 16, "anygrpc", "anygrpc")])
    t = med(r["allocs_per_call"] for r in runs[("unary", 64, 16, "tonic", "tonic")])
    out.append(f"| client heap allocations per unary call (C=64) | {a:.1f} | {t:.1f} | |")
    return out


if __name__ == "__main__":
    main()
