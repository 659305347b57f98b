"""The pieces the bench's tables share: servers under test, h2load, the load generators."""

import json
import os
import re
import subprocess
import threading
import time

PORTS = {"anygrpc": 50161, "tonic": 50162, "h2": 50163, "anygrpc-tokio": 50164,
         "anygrpc-1cpu": 50165, "tonic-1cpu": 50166,
         "anygrpc-work50": 50167, "tonic-work50": 50168, "anygrpc-work200": 50169, "tonic-work200": 50170,
         "anygrpc-mw": 50171, "anygrpc-before": 50172}
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
        capture_output=True, text=True, errors="replace", timeout=30,
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
