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
  - peak RSS of each server idle and after the load; heap allocations per call.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PORTS = {"anygrpc": 50161, "tonic": 50162, "h2": 50163, "anygrpc-tokio": 50164,
         "anygrpc-1cpu": 50165, "tonic-1cpu": 50166}
# The pinned measurements: the server on one CPU, the load generator on the other.
SERVER_CPU, CLIENT_CPU = ["taskset", "-c", "1"], ["taskset", "-c", "0"]


class Server:
    def __init__(self, name, command):
        self.name = name
        self.port = PORTS[name]
        self.proc = subprocess.Popen(
            [*command, "--addr", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"{name} server did not start: {line!r}")
        self.stats = []  # (calls, allocs) readings, one a second
        threading.Thread(target=self._read_stats, daemon=True).start()

    def _read_stats(self):
        for line in self.proc.stderr:
            m = re.match(r"stats calls=(\d+) allocs=(\d+)", line)
            if m:
                self.stats.append((int(m.group(1)), int(m.group(2))))

    def reading(self):
        """The latest (calls, allocations) reading, after waiting for a fresh one."""
        n = len(self.stats)
        deadline = time.time() + 3
        while len(self.stats) == n and time.time() < deadline:
            time.sleep(0.05)
        return self.stats[-1] if self.stats else (0, 0)

    def memory(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # KiB
        return 0

    def cpu_seconds(self):
        """User plus system CPU time the server has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def grpc_frame(size):
    body = b"\0" * size
    # Payload { bytes body = 1 }: tag 0x0a, varint length, bytes.
    varint = bytearray()
    n = size
    while True:
        byte = n & 0x7F
        n >>= 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    message = (b"\x0a" + bytes(varint) + body) if size else b""
    return b"\0" + len(message).to_bytes(4, "big") + message


def h2load(port, connections, streams, body_file, seconds):
    cmd = [
        "h2load", f"--duration={seconds}", "--warm-up-time=1", "-c", str(connections),
        "-m", str(streams), "-t", "1", "-d", body_file,
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}/bench.v1.Bench/Unary",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    bad = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or not bad or int(bad.group(2)) or int(bad.group(3)):
        raise RuntimeError(f"h2load failed against port {port}:\n{out}")
    return float(m.group(1))


def check_grpc_status(port, body_file):
    out = subprocess.run(
        ["nghttp", "-v", "-d", body_file, "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}/bench.v1.Bench/Unary"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    if "grpc-status: 0" not in out:
        raise RuntimeError(f"one call to port {port} did not return grpc-status: 0:\n{out}")


def client(command, port, mode, concurrency, size, seconds):
    cmd = [*command, "--addr", f"127.0.0.1:{port}", "--mode", mode, "--concurrency", str(concurrency),
           "--duration-secs", str(seconds), "--size", str(size), "--connections", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    result = json.loads(line)
    if result["errors"]:
        raise RuntimeError(f"{cmd}: {result['errors']} errors")
    return result


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--anygrpc-bin", required=True)
    p.add_argument("--tonic-bin", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    args = p.parse_args()
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
    out.append(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
               f"{os.cpu_count()} CPUs, {args.rounds} rounds x {args.seconds} s, medians.\n")
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
    print("\n".join(out))


if __name__ == "__main__":
    main()
