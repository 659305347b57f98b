"""Gives the same service config to grpcio (the C-core) and to anygrpc over the same backends,
and checks they route alike: ring_hash sends each header value to the same backend (both place
endpoints with XXH64), and outlier detection ejects the same failing backend. Prints one line
per check and `interop: N passed, N failed, 0 skipped`; exits non-zero on a difference.

The backends are grpcio servers answering /lb.Probe/Who with their port; anygrpc's side is the
lb-probe binary (tests/interop/src/bin/lb-probe.rs)."""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

# grpcio 1.76 reads ring_hash's requestHashHeader only with this set (gRFC A76's guard).
os.environ["GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"] = "true"

from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

RING_HASH = {"loadBalancingConfig": [{"ring_hash_experimental": {"requestHashHeader": "x-shard"}}]}
OUTLIER = {"loadBalancingConfig": [{"outlier_detection_experimental": {
    "interval": "0.5s", "baseEjectionTime": "30s", "maxEjectionPercent": 20,
    "failurePercentageEjection": {"threshold": 30, "requestVolume": 10, "minimumHosts": 5},
    "childPolicy": [{"round_robin": {}}]}}]}


def backend(flaky=False):
    """A grpcio server answering with its port; a flaky one fails every other call."""
    state = {"calls": 0}
    lock = threading.Lock()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    port = server.add_insecure_port("127.0.0.1:0")

    def who(request, context):
        with lock:
            state["calls"] += 1
            fail = flaky and state["calls"] % 2 == 0
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "every other call fails")
        return str(port).encode()

    handler = grpc.method_handlers_generic_handler(
        "lb.Probe", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server.add_generic_rpc_handlers((handler,))
    server.start()
    return server, port


def target(ports):
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


def grpcio_keys(ports, config, keys):
    channel = grpc.insecure_channel(target(ports), options=[("grpc.service_config", json.dumps(config))])
    who = channel.unary_unary("/lb.Probe/Who")
    placed = {k: who(b"", metadata=[("x-shard", k)], timeout=10, wait_for_ready=True).decode() for k in keys}
    channel.close()
    return placed


def grpcio_spread(ports, config, calls, tail):
    channel = grpc.insecure_channel(target(ports), options=[("grpc.service_config", json.dumps(config))])
    who = channel.unary_unary("/lb.Probe/Who")
    served = set()
    for call in range(calls):
        try:
            port = who(b"", timeout=10).decode()
        except grpc.RpcError:
            continue
        if call + tail >= calls:
            served.add(port)
    channel.close()
    return served


def probe(args, ports, config, extra):
    out = subprocess.run(
        [args.probe, f"--target={target(ports)}", f"--service_config_json={json.dumps(config)}"] + extra,
        capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"lb-probe failed: {out.stderr}")
    return out.stdout.split("\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe", required=True, help="the lb-probe binary")
    args = parser.parse_args()
    passed = failed = 0

    def check(name, ok, detail):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        if ok:
            passed += 1
        else:
            failed += 1

    servers = [backend() for _ in range(6)]
    ports = [p for _, p in servers]
    keys = [f"user-{i}" for i in range(20)]
    theirs = grpcio_keys(ports, RING_HASH, keys)
    lines = probe(args, ports, RING_HASH, [f"--keys={','.join(keys)}"])
    ours = dict(line.split(" ") for line in lines if line)
    same = sum(theirs[k] == ours.get(k) for k in keys)
    check("ring_hash requestHashHeader", same == len(keys) and len(set(theirs.values())) > 1,
          f"{same} of {len(keys)} keys on the same backend, over {len(set(theirs.values()))} backends; "
          f"grpcio {theirs} anygrpc {ours}")
    for server, _ in servers:
        server.stop(None)

    servers = [backend(flaky=(i == 2)) for i in range(5)]
    ports = [p for _, p in servers]
    bad = str(ports[2])
    everyone = {str(p) for p in ports}
    theirs = grpcio_spread(ports, OUTLIER, 3000, 200)
    ours = {line for line in probe(args, ports, OUTLIER, ["--spread_calls=3000", "--tail=200"]) if line}
    check("outlier_detection failurePercentageEjection",
          theirs == ours == everyone - {bad},
          f"the last 200 calls reached grpcio {sorted(theirs)}, anygrpc {sorted(ours)}; the failing backend is {bad}")
    for server, _ in servers:
        server.stop(None)

    print(f"interop: {passed} passed, {failed} failed, 0 skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
