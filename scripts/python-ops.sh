#!/usr/bin/env bash
# Makes sure the Python ops' virtualenv (~/.cache/opflow/python-ops) holds the Python op SDK
# (sdk/python), the example Python ops (remote-ops/noop-py, remote-ops/loss-aggregate),
# each installed editable from this checkout, and the tools the tests check them with
# (mypy, pytest); prints the virtualenv's bin/ directory, where each op's command is.
#
#   scripts/python-ops.sh          e.g. `opflow ops add "$(scripts/python-ops.sh)/loss-aggregate"`
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$("$root/scripts/python-venv.sh" python-ops \
  aio-pika==10.2.1 opentelemetry-api==1.45.3 mypy==2.4.1 pytest==9.2.0 jsonschema==4.25.1 uvloop==0.23.0 \
  -e "$root/sdk/python" -e "$root/remote-ops/noop-py" -e "$root/remote-ops/loss-aggregate")"
echo "$venv/bin"
