#!/usr/bin/env bash
# Makes sure target/interop-venv holds the Python peers (grpcio, its tools, reflection, status
# and channelz packages) and prints its path. Sourced by the interop and observability runners.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$root/target/interop-venv"
if ! "$venv/bin/python" -c "import grpc, grpc_tools, grpc_status, grpc_reflection, grpc_channelz" 2>/dev/null; then
  echo "installing the grpcio peer into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/interop/python/requirements.txt" >&2
fi
echo "$venv"
