#!/usr/bin/env bash
# Reflection, rich error details and channelz of an anygrpc server, read by the C-core's Python
# tools (grpcio-reflection, grpcio-status, grpcio-channelz).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(bash "$root/tests/interop/venv.sh")
cargo build --locked -q -p anygrpc-examples --bin observability
exec "$venv/bin/python" "$root/tests/interop/python/observability_check.py" \
  --server-bin "$root/target/debug/observability"
