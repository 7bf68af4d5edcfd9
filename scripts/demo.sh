#!/usr/bin/env bash
# The main job: makes sure RabbitMQ and PostgreSQL run (starting or installing them),
# builds opflow, and runs examples/defi-risk.yaml end to end on this machine with
# `opflow up --run`, printing the run's summary and its value-at-risk figures. Then it runs
# examples/mixed-risk.yaml, whose reports come from a Rust op and a Python op (the Python
# SDK and op installed into a virtualenv under ~/.cache/opflow by scripts/python-ops.sh).
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
start=$(date +%s%N)
status=0
"$CARGO_TARGET_DIR/release/opflow" up --run examples/defi-risk.yaml "$@" || status=$?
end=$(date +%s%N)
awk -v ns="$((end - start))" 'BEGIN { printf "demo wall time (opflow up to stopped): %.2f s\n", ns / 1e9 }' >&2
[ "$status" = 0 ] || exit "$status"

echo "== examples/mixed-risk.yaml: Rust price-paths and var-report, Python loss-aggregate" >&2
python_ops="$(scripts/python-ops.sh)"
release="$CARGO_TARGET_DIR/release"
"$release/opflow" up --run examples/mixed-risk.yaml \
  "$release/price-paths" "$release/var-report" "$python_ops/loss-aggregate" "$@" || status=$?
exit "$status"
