#!/usr/bin/env bash
# Validates every Kubernetes manifest the project ships (keda/) offline, against the
# schemas kept in scripts/manifest-schemas/ (README.md there says
# which versions and where they come from), strictly: an unknown field is an error.
# Then it checks itself: a deliberately broken copy of a manifest must be refused.
# Exit status 0 only when every manifest is valid and the broken copy was refused.
#
# Needs python3 with venv; its two packages (jsonschema, PyYAML) are installed from PyPI
# into a virtualenv under ~/.cache/opflow the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${OPFLOW_CACHE:-$HOME/.cache/opflow}/manifest-tools"
requirements="jsonschema==4.26.0 PyYAML==6.0.4"

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[manifests] installing python3 and python3-venv (Debian packages)" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "error: python3 with venv is missing; install python3 and python3-venv" >&2
    exit 1
  fi
fi
if [ ! -x "$tools/bin/python" ] || [ "$(cat "$tools/requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "[manifests] installing $requirements into $tools" >&2
  rm -rf "$tools"
  python3 -m venv "$tools"
  # shellcheck disable=SC2086
  "$tools/bin/pip" install --quiet --disable-pip-version-check $requirements
  echo "$requirements" > "$tools/requirements"
fi

validate() {
  "$tools/bin/python" scripts/validate_manifests.py \
    --schemas scripts/manifest-schemas/keda-2.16.1 "$@"
}

echo "[manifests] keda/" >&2
validate keda

# The check of the check: a typo'd field and a number where KEDA wants a string.
broken="$(mktemp -d)"
trap 'rm -rf "$broken"' EXIT
sed -e 's/minReplicaCount/minReplicaCont/' -e 's/value: "1"/value: 1/' keda/noop-1-1-0.yaml > "$broken/noop-1-1-0.yaml"
echo "[manifests] a deliberately broken copy of keda/noop-1-1-0.yaml (must be refused)" >&2
if report="$(validate "$broken")"; then
  echo "$report"
  echo "error: the broken manifest was accepted: the validation checks nothing" >&2
  exit 1
fi
echo "$report"
if ! grep -q "'minReplicaCont' was unexpected" <<<"$report" || ! grep -q "1 is not of type 'string'" <<<"$report"; then
  echo "error: the broken manifest was refused, but not for the two faults put in it" >&2
  exit 1
fi
echo "[manifests] all valid; the broken copy was refused" >&2
