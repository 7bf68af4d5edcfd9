#!/usr/bin/env bash
# Makes sure the browser the web UI's tests drive is on this machine: Debian's `chromium`
# and `chromium-driver` (headless Chromium and its WebDriver server), installed from
# Debian's packages when missing. Prints `OPFLOW_CHROMIUM=<path>` and
# `OPFLOW_CHROMEDRIVER=<path>` lines for the caller to export; says clearly what is missing
# when it cannot install them.
set -euo pipefail

say() { echo "[browser] $*" >&2; }
fail() { echo "[browser] error: $*" >&2; exit 1; }

chromium="${OPFLOW_CHROMIUM:-$(command -v chromium || true)}"
driver="${OPFLOW_CHROMEDRIVER:-$(command -v chromedriver || true)}"
if [ -z "$chromium" ] || [ -z "$driver" ]; then
  command -v apt-get >/dev/null \
    || fail "chromium and chromedriver are missing and this is not a Debian machine; install them, then set OPFLOW_CHROMIUM and OPFLOW_CHROMEDRIVER"
  if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    fail "chromium and chromium-driver are missing and installing them needs root: apt-get install chromium chromium-driver"
  fi
  say "installing Debian's chromium and chromium-driver for the web UI's browser tests (apt-get install)"
  "${SUDO[@]}" apt-get update -qq || fail "apt-get update failed; cannot install chromium"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || fail "installing chromium and chromium-driver failed"
  chromium="$(command -v chromium)" || fail "chromium was installed but is not on PATH"
  driver="$(command -v chromedriver)" || fail "chromium-driver was installed but chromedriver is not on PATH"
fi
say "$("$chromium" --version 2>/dev/null || echo "chromium at $chromium"), $("$driver" --version 2>/dev/null | cut -d' ' -f1-2)"
echo "OPFLOW_CHROMIUM=$chromium"
echo "OPFLOW_CHROMEDRIVER=$driver"
