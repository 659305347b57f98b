#!/usr/bin/env bash
# Runs every test anygrpc has, on a fresh machine with a Rust toolchain. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot run gains nothing from incremental caches, which are most of a clean target's size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n== %s\n' "$*"; }

# Every `cargo test` run tees its output here; the totals are printed at the end.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
run_tests() { cargo test "$@" 2>&1 | tee -a "$results"; }

step "formatting"
cargo fmt --all -- --check

step "lints (all crates, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "the default build of anygrpc enables no tokio runtime feature"
forbidden=$(cargo tree --locked -p anygrpc -e features -i tokio |
  grep -Eo 'tokio feature "(rt|rt-multi-thread|time|net|macros)"' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "tokio runtime features in the default build: $forbidden" >&2
  exit 1
fi
echo "none"

step "no crate's files import each other in a circle"
python3 scripts/imports.py codec rt lb resolver transport

step "lb, the sans-IO policy crate, links no runtime"
if cargo tree --locked -p anygrpc-lb -e normal | grep -Eq 'anygrpc-rt|tokio|async-io'; then
  echo "anygrpc-lb depends on a runtime crate" >&2
  exit 1
fi
echo "none"

step "unit, integration and fuzz-corpus tests (default features)"
run_tests --workspace --locked

step "anygrpc on tokio alone (no async-io)"
run_tests --locked -p anygrpc --no-default-features --features tokio,tls

step "interop: every case, anygrpc and the gRPC C-core (grpcio) in every pairing, plaintext and TLS"
bash tests/interop/run.sh 2>&1 | tee -a "$results"

step "load balancing: grpcio and anygrpc given the same service config route alike (ring_hash, outlier detection)"
bash tests/interop/lb.sh 2>&1 | tee -a "$results"

step "observability: reflection, rich error details and channelz read by the C-core's Python tools"
bash tests/interop/observability.sh

step "examples: the demo, load balancing, a custom resolver and policy, retries and hedging, keepalive, graceful shutdown, observability, middleware, propagation, call credentials, every runtime's client"
cargo run --locked -q -p anygrpc-examples --bin demo
cargo run --locked -q -p anygrpc-examples --bin route-guide
cargo run --locked -q -p anygrpc-examples --bin load-balancing
cargo run --locked -q -p anygrpc-examples --bin custom-resolver
cargo run --locked -q -p anygrpc-examples --bin retries
cargo run --locked -q -p anygrpc-examples --bin keepalive
cargo run --locked -q -p anygrpc-examples --bin graceful-shutdown -- --demo
cargo run --locked -q -p anygrpc-examples --bin observability
cargo run --locked -q -p anygrpc-examples --bin middleware
cargo run --locked -q -p anygrpc-examples --bin propagation
cargo run --locked -q -p anygrpc-examples --bin credentials
cargo run --locked -q -p anygrpc-examples --bin client-smol
cargo run --locked -q -p anygrpc-examples --bin client-blocking
cargo run --locked -q -p anygrpc-examples --features tokio --bin client-tokio

step "all tests passed"
awk '/^test result:/ { p += $4; f += $6 } /^interop: / { p += $2; f += $4 }
  END { printf "%d passed, %d failed\n", p, f }' "$results"
