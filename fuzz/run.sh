#!/usr/bin/env bash
# Runs a fuzz target (or all) for a number of seconds each and reports executions/s and coverage.
# Usage: bash fuzz/run.sh <target|all> [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: run.sh <target|all> [seconds]}
seconds=${2:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
if [ "$target" = all ]; then
  targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml)
else
  targets=$target
fi
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  cargo fuzz run --fuzz-dir fuzz --features libfuzzer "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(DONE|pulse)' | tail -1 || true
  summary=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(grep -Eo 'exec/s: [0-9]+' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
  echo "$t: ${execs:-exec/s: ?}, ${cov:-cov: ?} ($summary)"
  rm -f "$log"
done
