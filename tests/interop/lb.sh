#!/usr/bin/env bash
# The same service config given to the gRPC C-core (grpcio) and to anygrpc over the same grpcio
# backends: ring_hash and outlier detection must route alike.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(bash "$root/tests/interop/venv.sh")
cargo build --locked -q -p anygrpc-interop --bin lb-probe
exec "$venv/bin/python" "$root/tests/interop/python/lb_compare.py" --probe "$root/target/debug/lb-probe"
