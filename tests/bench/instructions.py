"""Instructions per unary RPC under callgrind: counts, not seconds, so they repeat run to run
whatever else the machine is doing.

Each server runs under `valgrind --tool=callgrind` (all threads counted together) and takes a
warm-up of h2load unary calls; its counters are then zeroed (`callgrind_control -z`), a fixed
number of calls is made, and the counters are dumped (`callgrind_control -d`). The user-space
instructions the server ran for those calls, divided by their number, is the figure; the
kernel's share (the syscalls) is not counted, on either side.

Under callgrind time runs some fifty times slower, and anygrpc's server measures time to
decide whether a connection polls its calls itself or spawns them (`Server::slow_first_poll`,
20 us): every echo's first poll looks slow, so every call is spawned, which a native run never
does. Its server is therefore counted twice: as it is, and with that limit scaled by
SLOW_FIRST_POLL_SCALE, which keeps the path a native run takes. tonic spawns every call in both.

The clients are measured the same way, each against a native anygrpc server: a run of the load
generator for SHORT seconds and one for LONG seconds, and the difference of their instructions
divided by the difference of their calls, so that start-up and connection set-up cancel out.
"""

import glob
import os
import re
import subprocess
import tempfile

from harness import Server, client, grpc_frame

WARM_UP, CALLS, STREAMS = 2000, 20000, 10
SHORT, LONG = 2, 6
SLOW_FIRST_POLL_SCALE = 100


def total_instructions(path):
    """The Ir total of one callgrind dump."""
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


def h2load_calls(port, calls, body):
    out = subprocess.run(
        ["h2load", "-n", str(calls), "-c", "1", "-m", str(STREAMS), "-t", "1", "-d", body,
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}/bench.v1.Bench/Unary"],
        capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or int(m.group(1)) != calls:
        raise RuntimeError(f"h2load did not complete {calls} calls against port {port}:\n{out}")


def server_instructions(name, command, body):
    """Instructions per call of one server under callgrind."""
    out_dir = tempfile.mkdtemp()
    out = os.path.join(out_dir, "callgrind.out")
    server = Server(name, ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}", *command])
    try:
        h2load_calls(server.port, WARM_UP, body)
        subprocess.run(["callgrind_control", "-z", str(server.proc.pid)], check=True, capture_output=True)
        h2load_calls(server.port, CALLS, body)
        subprocess.run(["callgrind_control", "-d", str(server.proc.pid)], check=True, capture_output=True)
        dumps = [p for p in glob.glob(out + "*") if p != out]
        if len(dumps) != 1:
            raise RuntimeError(f"expected one callgrind dump for {name}, found {dumps}")
        return total_instructions(dumps[0]) / CALLS
    finally:
        server.stop()


def client_instructions(command, port):
    """Instructions per unary call (C=1) of one load generator under callgrind."""
    runs = []
    for seconds in (SHORT, LONG):
        out = os.path.join(tempfile.mkdtemp(), "callgrind.out")
        result = client(["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}", *command],
                        port, "unary", 1, 16, seconds)
        runs.append((total_instructions(out), result["calls"]))
    (short_ir, short_calls), (long_ir, long_calls) = runs
    if long_calls <= short_calls:
        raise RuntimeError(f"{command}: the long run made no more calls ({short_calls}, {long_calls})")
    return (long_ir - short_ir) / (long_calls - short_calls)


def instruction_tables(args):
    body = os.path.join(tempfile.mkdtemp(), "req16.bin")
    with open(body, "wb") as f:
        f.write(grpc_frame(16))
    servers = {"anygrpc": os.path.join(args.anygrpc_bin, "bench-server"),
               "tonic": os.path.join(args.tonic_bin, "tonic-bench-server")}
    per_server = {name: server_instructions(name, [binary], body) for name, binary in servers.items()}
    native_path = server_instructions(
        "anygrpc", [servers["anygrpc"], "--slow-first-poll-us", str(20 * SLOW_FIRST_POLL_SCALE)], body)
    clients = {"anygrpc": [os.path.join(args.anygrpc_bin, "bench-client")],
               "tonic": [os.path.join(args.tonic_bin, "tonic-bench-client")]}
    target = Server("anygrpc", [servers["anygrpc"]])
    try:
        per_client = {name: client_instructions(command, target.port) for name, command in clients.items()}
    finally:
        target.stop()
    rows = [
        "### Instructions per unary RPC (callgrind, 16 B)\n",
        f"Servers: {CALLS} h2load calls over one connection x {STREAMS} streams after {WARM_UP} of "
        f"warm-up. Clients: unary C=1 against anygrpc's server, {LONG} s run less {SHORT} s run.\n",
        "| side | anygrpc | tonic | anygrpc / tonic |",
        "|---|---:|---:|---:|",
    ]
    for side, table in (("server, a native run's path", {**per_server, "anygrpc": native_path}),
                        ("server, default settings (every call spawned)", per_server),
                        ("client", per_client)):
        rows.append(f"| {side} | {table['anygrpc']:.0f} | {table['tonic']:.0f} | "
                    f"{table['anygrpc'] / table['tonic']:.2f} |")
    return rows + [""]
