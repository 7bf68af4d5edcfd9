#!/usr/bin/env bash
# Runs opflow's whole test suite: unit tests next to the code, and the end-to-end tests in
# integration/ against the real RabbitMQ and PostgreSQL (started or installed if needed).
# Extra arguments go to `cargo nextest run` (or `cargo test` without nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
scripts/services.sh
status=0

# The Kubernetes manifests (keda/ and what helm/opflow renders), offline against the
# schemas kept in the repository.
scripts/validate-manifests.sh || status=$?

# The OpenAPI validator and client generator the contract tests run (integration/tests/
# openapi.rs), in a virtualenv of their own.
OPFLOW_API_TOOLS="$(scripts/python-venv.sh api-tools openapi-spec-validator==0.7.1 openapi-python-client==0.24.3)"
export OPFLOW_API_TOOLS

# The Python op SDK and the Python ops (sdk/python, remote-ops/noop-py, remote-ops/loss-aggregate)
# in a virtualenv of their own: type-checked, unit-tested, and run by the conformance suite
# (integration/tests/conformance.rs) beside the Rust ones.
OPFLOW_PYTHON_OPS="$(scripts/python-ops.sh)"
export OPFLOW_PYTHON_OPS
echo "checking the Python SDK and ops (mypy --strict, pytest)" >&2
"$OPFLOW_PYTHON_OPS/mypy" --strict --no-error-summary sdk/python/src sdk/python/tests \
  remote-ops/noop-py/src remote-ops/loss-aggregate/src remote-ops/loss-aggregate/tests || status=$?
"$OPFLOW_PYTHON_OPS/pytest" -q -p no:cacheprovider sdk/python/tests remote-ops/loss-aggregate/tests || status=$?

# Headless Chromium and chromedriver for the web UI's browser tests (integration/tests/ui.rs),
# from Debian's packages when missing.
while IFS='=' read -r name value; do export "$name=$value"; done < <(scripts/browser.sh)

# One target dir outside the clone, so repeated runs (and CI) reuse what was built.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opflow/target}"

# A second build of the noop op, as version 1.0.0, for the side-by-side versions test.
echo "building noop@1.0.0 (a second build of remote-ops/noop)" >&2
OPFLOW_OP_VERSION=1.0.0 cargo build --quiet -p noop
cp "$CARGO_TARGET_DIR/debug/noop" "$CARGO_TARGET_DIR/debug/noop@1.0.0"

echo "building the workspace" >&2
cargo build --quiet --workspace --bins --tests

# The chaos suite (integration/tests/chaos.rs) restarts RabbitMQ and PostgreSQL, which
# every other test shares, so it runs after the rest, alone and one test at a time. Its
# table (docs/reliability.md) is written to $OPFLOW_CHAOS_REPORT.
export OPFLOW_CHAOS_REPORT="${OPFLOW_CHAOS_REPORT:-$CARGO_TARGET_DIR/chaos-report.md}"
: > "$OPFLOW_CHAOS_REPORT"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not test(/^chaos::/)' "$@" || status=$?
  cargo nextest run --workspace --no-fail-fast -E 'test(/^chaos::/)' --test-threads 1 "$@" || status=$?
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@" -- --skip chaos:: || status=$?
  cargo test -p opflow-integration --test chaos --no-fail-fast "$@" -- --test-threads 1 || status=$?
fi
if [ -s "$OPFLOW_CHAOS_REPORT" ]; then
  echo "chaos suite (scenario | steps | faults | lost | applied twice | results ignored | wall):" >&2
  cat "$OPFLOW_CHAOS_REPORT" >&2
fi
exit "$status"
