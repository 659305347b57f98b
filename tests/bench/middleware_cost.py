"""What middleware costs: unary C=64 (16 B) between anygrpc's client and server with no
middleware, and with one pass-through middleware (`--middleware 1`) on the server, on the
client, and on both; then the server alone under h2load (1 connection x 100 streams). The
configurations alternate round by round; each row is the median, with heap allocations per
call from the counting allocator both binaries carry.

With `--before-bin DIR` a build from before middleware existed (its bench-server and
bench-client) takes part as one more configuration, so "no middleware" can be compared with
"before" in the same run.

    python3 tests/bench/middleware_cost.py --anygrpc-bin target/release [--before-bin DIR]
"""

import argparse
import os
import statistics
import sys
import tempfile

from harness import Server, client, grpc_frame, h2load

MODE, CONCURRENCY, SIZE = "unary", 64, 16


def middleware_tables(args):
    after_server = os.path.join(args.anygrpc_bin, "bench-server")
    after_client = os.path.join(args.anygrpc_bin, "bench-client")
    servers = {
        "anygrpc": Server("anygrpc", [after_server]),
        "anygrpc-mw": Server("anygrpc-mw", [after_server, "--middleware", "1"]),
    }
    # (label, client command, server name)
    configs = [
        ("no middleware", [after_client], "anygrpc"),
        ("1 on the server", [after_client], "anygrpc-mw"),
        ("1 on the client", [after_client, "--middleware", "1"], "anygrpc"),
        ("1 on each side", [after_client, "--middleware", "1"], "anygrpc-mw"),
    ]
    before_bin = getattr(args, "before_bin", None)
    if before_bin:
        servers["anygrpc-before"] = Server("anygrpc-before", [os.path.join(before_bin, "bench-server")])
        configs.insert(0, ("before (no middleware)", [os.path.join(before_bin, "bench-client")], "anygrpc-before"))
    try:
        runs = {label: [] for label, _, _ in configs}
        for _ in range(args.rounds):
            for label, command, server in configs:
                s = servers[server]
                start = s.reading()
                r = client(command, s.port, MODE, CONCURRENCY, SIZE, args.seconds)
                end = s.reading()
                r["server_allocs"] = (end[1] - start[1]) / max(1, end[0] - start[0])
                runs[label].append(r)
                print(f"middleware: {label}: {r['rps']} calls/s", file=sys.stderr, flush=True)
        body = os.path.join(tempfile.mkdtemp(), "16.bin")
        with open(body, "wb") as f:
            f.write(grpc_frame(SIZE))
        h2 = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, s in servers.items():
                h2[name].append(h2load(s.port, 1, 100, body, args.seconds))
    finally:
        for s in servers.values():
            s.stop()

    med = statistics.median
    base = med(r["rps"] for r in runs["no middleware"])
    out = ["\n### Middleware: unary C=64, 16 B, anygrpc client to anygrpc server\n",
           "| configuration | calls/s | vs no middleware | p50 (us) | client allocs/call | server allocs/call |",
           "|---|---|---|---|---|---|"]
    for label, _, _ in configs:
        rs = runs[label]
        rps = med(r["rps"] for r in rs)
        out.append(f"| {label} | {rps:.0f} | {rps / base:.3f} | {med(r['p50_us'] for r in rs):.0f} | "
                   f"{med(r['allocs_per_call'] for r in rs):.1f} | {med(r['server_allocs'] for r in rs):.1f} |")
    out += ["\n| server under h2load, 1x100, 16 B | req/s |", "|---|---|"]
    names = {"anygrpc": "no middleware", "anygrpc-mw": "1 pass-through middleware",
             "anygrpc-before": "before (no middleware)"}
    for name, values in h2.items():
        out.append(f"| {names[name]} | {med(values):.0f} |")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--anygrpc-bin", required=True)
    p.add_argument("--before-bin")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    print("\n".join(middleware_tables(p.parse_args())))


if __name__ == "__main__":
    main()
