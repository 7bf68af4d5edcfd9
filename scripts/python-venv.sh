#!/usr/bin/env bash
# Makes sure a Python virtualenv named NAME under ~/.cache/opflow (or $OPFLOW_CACHE) holds
# exactly the pinned REQUIREMENTS, creating or remaking it when they changed, and prints
# its path. The test command's Python tools (the manifest validation, the OpenAPI
# validator and client generator) each live in one, never in the system's Python.
#
#   scripts/python-venv.sh NAME REQUIREMENT...
#
# Needs python3 with venv; on Debian, as root, installs python3 and python3-venv when missing.
set -euo pipefail
name="$1"
shift
requirements="$*"
dir="${OPFLOW_CACHE:-$HOME/.cache/opflow}/$name"

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[$name] installing python3 and python3-venv (Debian packages)" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "error: python3 with venv is missing; install python3 and python3-venv" >&2
    exit 1
  fi
fi
if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "[$name] installing $requirements into $dir (PyPI)" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  # shellcheck disable=SC2086
  "$dir/bin/pip" install --quiet --disable-pip-version-check $requirements ||
    { echo "error: installing $requirements from PyPI failed" >&2; rm -rf "$dir"; exit 1; }
  echo "$requirements" > "$dir/requirements"
fi
echo "$dir"
