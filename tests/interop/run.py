"""Plays the interop cases in every pairing: anygrpc client -> grpcio server, grpcio client ->
anygrpc server, anygrpc <-> anygrpc; plaintext and TLS (test CA, host override
foo.test.google.fr). Prints each case's result, a summary, and exits non-zero on any failure.

grpcio's Python API cannot express a few checks (see CANNOT); those are reported as skipped,
with the reason, never as passed.
"""

import argparse
import os
import queue
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = [
    "empty_unary", "large_unary", "client_compressed_unary", "server_compressed_unary",
    "client_streaming", "client_compressed_streaming", "server_streaming",
    "server_compressed_streaming", "ping_pong", "empty_stream", "custom_metadata",
    "status_code_and_message", "special_status_message", "unimplemented_method",
    "unimplemented_service", "cancel_after_begin", "cancel_after_first_response",
    "timeout_on_sleeping_server", "very_large_request", "pick_first_unary",
]

NO_COMPRESSION_CHECK = "a grpcio server cannot tell whether a request arrived compressed (expect_compressed)"
CANNOT = {
    ("client", "grpcio"): {
        "client_compressed_streaming": "grpcio cannot send one message of a compressed stream uncompressed",
        "server_compressed_unary": "grpcio does not tell a client whether a response arrived compressed",
        "server_compressed_streaming": "grpcio does not tell a client whether a response arrived compressed",
    },
    ("server", "grpcio"): {
        "client_compressed_unary": NO_COMPRESSION_CHECK,
        "client_compressed_streaming": NO_COMPRESSION_CHECK,
    },
}

PAIRINGS = [("anygrpc", "grpcio"), ("grpcio", "anygrpc"), ("anygrpc", "anygrpc")]
HOST_OVERRIDE = "foo.test.google.fr"


def commands(args, role, impl):
    if impl == "anygrpc":
        return [os.path.join(args.bin_dir, f"interop-{role}")]
    script = os.path.join(HERE, "python", f"interop_{role}.py")
    return [sys.executable, script, f"--stubs_dir={args.stubs_dir}"]


def start_server(args, impl, tls):
    # Only the loopback interface: the client dials 127.0.0.1.
    cmd = commands(args, "server", impl) + ["--host=127.0.0.1", "--port=0"] + (["--use_tls"] if tls else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()

    def pump():
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            server.kill()
            raise RuntimeError(f"{impl} server did not report its port within 60 s")
        if line is None:
            raise RuntimeError(f"{impl} server exited before listening (exit {server.wait()})")
        if line.startswith("listening on port "):
            return server, int(line.split()[-1])


def run_pairing(args, client, server_impl, tls):
    skipped = {}
    for key in (("client", client), ("server", server_impl)):
        skipped.update(CANNOT.get(key, {}))
    cases = [c for c in CASES if c not in skipped]
    server, port = start_server(args, server_impl, tls)
    try:
        cmd = commands(args, "client", client) + [
            "--server_host=127.0.0.1",
            f"--server_port={port}",
            f"--test_case={','.join(cases)}",
        ]
        if tls:
            cmd += ["--use_tls", "--use_test_ca", f"--server_host_override={HOST_OVERRIDE}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            output = done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or "") + "\nclient timed out after 600 s\n"
    finally:
        server.kill()
        server.wait()
    results = {}
    for line in output.splitlines():
        if line.startswith(("PASS ", "FAIL ")):
            verdict, _, rest = line.partition(" ")
            case = rest.split(":", 1)[0]
            results[case] = (verdict, rest[len(case) + 1:].strip())
    for case in cases:
        if case not in results:
            results[case] = ("FAIL", "no result from the client: " + output.strip().splitlines()[-1:][0] if output.strip() else "no output")
    return results, skipped


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stubs-dir", required=True)
    p.add_argument("--bin-dir", required=True)
    args = p.parse_args()
    totals = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    rows = []
    for tls in (False, True):
        security = "tls" if tls else "plaintext"
        for client, server in PAIRINGS:
            label = f"{client} client -> {server} server, {security}"
            print(f"\n== {label}", flush=True)
            results, skipped = run_pairing(args, client, server, tls)
            counts = {"PASS": 0, "FAIL": 0, "SKIP": len(skipped)}
            for case in CASES:
                if case in skipped:
                    print(f"SKIP {case}: {skipped[case]}")
                    continue
                verdict, detail = results[case]
                counts[verdict] += 1
                print(f"{verdict} {case}" + (f": {detail}" if verdict == "FAIL" else ""), flush=True)
            for k in totals:
                totals[k] += counts[k]
            rows.append((label, counts))
    print("\n== interop summary")
    for label, counts in rows:
        print(f"{label:48} {counts['PASS']:3} passed {counts['FAIL']:3} failed {counts['SKIP']:3} skipped")
    print(f"interop: {totals['PASS']} passed, {totals['FAIL']} failed, {totals['SKIP']} skipped")
    sys.exit(1 if totals["FAIL"] else 0)


if __name__ == "__main__":
    main()
