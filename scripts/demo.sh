#!/usr/bin/env bash
# The main job: makes sure RabbitMQ and PostgreSQL run (starting or installing them),
# builds opflow, and runs examples/defi-risk.yaml end to end on this machine with
# `opflow up --run`, printing the run's summary and its value-at-risk figures. Then it runs
# examples/mixed-risk.yaml, whose reports come from a Rust op and a Python op (the Python
# SDK and op installed into a virtualenv under ~/.cache/opflow by scripts/python-ops.sh).
# Last, it prints the addresses of both runs' pages in the web UI.
# Extra arguments go to `opflow up` (e.g. --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
scripts/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opflow/target}"
echo "building opflow and the example ops (release)" >&2
cargo build --quiet --release --workspace --bins

# Workers and the dispatcher log at info by default; the demo only wants warnings.
export RUST_LOG="${RUST_LOG:-warn}"
# What `opflow up` says goes to the terminal and to a log, from which the runs' pages are read.
log="$(mktemp -t opflow-demo.XXXXXX)"
trap 'rm -f "$log"' EXIT
start=$(date +%s%N)
status=0
"$CARGO_TARGET_DIR/release/opflow" up --run examples/defi-risk.yaml "$@" 2> >(tee -a "$log" >&2) || status=$?
end=$(date +%s%N)
awk -v ns="$((end - start))" 'BEGIN { printf "demo wall time (opflow up to stopped): %.2f s\n", ns / 1e9 }' >&2
[ "$status" = 0 ] || exit "$status"

echo "== examples/mixed-risk.yaml: Rust price-paths and var-report, Python loss-aggregate" >&2
python_ops="$(scripts/python-ops.sh)"
release="$CARGO_TARGET_DIR/release"
"$release/opflow" up --run examples/mixed-risk.yaml \
  "$release/price-paths" "$release/var-report" "$python_ops/loss-aggregate" "$@" 2> >(tee -a "$log" >&2) || status=$?
# Let tee finish writing before the log is read.
wait
pages="$(sed -n 's/^its page: //p' "$log")"
if [ -n "$pages" ]; then
  echo "== the demo runs' pages in the web UI (served while opflow runs: $release/opflow up):" >&2
  paste -d' ' <(printf '   defi-risk:\n   mixed-risk:\n') <(echo "$pages") >&2
fi
exit "$status"
