#!/usr/bin/env bash
# Runs opflow's whole test suite: unit tests next to the code, and the end-to-end tests in
# integration/ against the real RabbitMQ and PostgreSQL (started or installed if needed).
# Extra arguments go to `cargo nextest run` (or `cargo test` without nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
scripts/services.sh

# One target dir outside the clone, so repeated runs (and CI) reuse what was built.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opflow/target}"

# A second build of the noop op, as version 1.0.0, for the side-by-side versions test.
echo "building noop@1.0.0 (a second build of remote-ops/noop)" >&2
OPFLOW_OP_VERSION=1.0.0 cargo build --quiet -p noop
cp "$CARGO_TARGET_DIR/debug/noop" "$CARGO_TARGET_DIR/debug/noop@1.0.0"

echo "building the workspace" >&2
cargo build --quiet --workspace --bins --tests

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
