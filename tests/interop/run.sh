#!/usr/bin/env bash
# The interop runner: every case, in every pairing of anygrpc and the gRPC C-core (Python grpcio),
# plaintext and TLS. Installs grpcio into target/interop-venv on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$(bash "$root/tests/interop/venv.sh")
stubs="$root/target/interop-python"
rm -rf "$stubs" && mkdir -p "$stubs"
protos="$root/tests/interop/proto"
"$venv/bin/python" -m grpc_tools.protoc -I"$protos" --python_out="$stubs" --grpc_python_out="$stubs" \
  "$protos"/src/proto/grpc/testing/{empty,messages,test}.proto
cargo build --locked -q -p anygrpc-interop --bins
exec "$venv/bin/python" "$root/tests/interop/run.py" --stubs-dir "$stubs" --bin-dir "$root/target/debug" "$@"
