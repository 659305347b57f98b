#!/usr/bin/env bash
# The whole anygrpc-vs-tonic comparison in one go: builds both (release), starts the anygrpc,
# tonic and raw-h2 servers, runs h2load and both load generators A/B/A/B, and prints the tables:
# the echo loads, then handler- and reply-bound loads and large messages (real_loads.py).
# ROUNDS (default 3) rounds of SECS (default 5) seconds per measurement.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v h2load >/dev/null; then
  echo "installing h2load (Debian nghttp2-client)"
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi
# bench-server and bench-client as a user's default build is (no tokio), then the tokio variants.
cargo build --release --locked -q -p anygrpc-bench
cargo build --release --locked -q -p anygrpc-bench --features tokio --bin bench-server-tokio --bin bench-client-tokio
cargo build --release -q --manifest-path "$root/tests/bench/tonic/Cargo.toml"
exec python3 "$root/tests/bench/compare.py" \
  --anygrpc-bin "$root/target/release" \
  --tonic-bin "$root/tests/bench/tonic/target/release" \
  --rounds "${ROUNDS:-3}" --seconds "${SECS:-5}" "$@"
