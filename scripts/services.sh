#!/usr/bin/env bash
# Makes sure RabbitMQ and PostgreSQL run on this machine, as opflow's defaults expect
# (RabbitMQ at 127.0.0.1:5672 guest/guest, PostgreSQL at 127.0.0.1:5432 as `postgres`
# without a password). Checks each; starts it if it is installed but stopped; installs it
# from Debian's packages if it is missing. Says what it does, and what it cannot.
set -euo pipefail

say() { echo "[services] $*" >&2; }
fail() { echo "[services] error: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else SUDO=(false); fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  command -v apt-get >/dev/null || fail "$1 is not installed and this is not a Debian machine; install $1 yourself"
  say "$1 is not installed: installing it from Debian's packages (apt-get install $1)"
  "${SUDO[@]}" apt-get update -qq || fail "apt-get update failed; cannot install $1"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null || fail "installing $1 failed"
}

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 1; done
  fail "$what did not start listening on 127.0.0.1:$port within 60 s"
}

ensure_postgres() {
  if port_open 5432; then
    say "PostgreSQL is running on 127.0.0.1:5432"
  else
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || fail "PostgreSQL is installed but has no cluster in /etc/postgresql"
    say "starting PostgreSQL $version"
    "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_port 5432 PostgreSQL
  fi
  if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian install asks for a password on TCP; opflow's defaults (and its tests)
    # connect as `postgres` without one, as on a development machine.
    local hba
    hba=$("${SUDO[@]}" runuser -u postgres -- psql -qtAc 'SHOW hba_file' 2>/dev/null) ||
      fail "cannot connect to PostgreSQL as postgres@127.0.0.1 and cannot fix it; set OPFLOW_DATABASE_URL to a URL that works"
    say "PostgreSQL refuses password-less TCP logins: adding trust for 127.0.0.1 and ::1 to $hba (development machine)"
    "${SUDO[@]}" sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    "${SUDO[@]}" runuser -u postgres -- psql -qtAc 'SELECT pg_reload_conf()' >/dev/null
    psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc 'SELECT 1' >/dev/null ||
      fail "still cannot connect as postgres@127.0.0.1 after allowing it"
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then
    say "RabbitMQ is running on 127.0.0.1:5672"
  else
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    say "starting RabbitMQ"
    "${SUDO[@]}" rabbitmq-server -detached || true
    wait_for_port 5672 RabbitMQ
    "${SUDO[@]}" rabbitmqctl -q await_startup || fail "RabbitMQ did not finish starting"
  fi
  command -v rabbitmqctl >/dev/null || fail "rabbitmqctl is missing; the tests use it to create their own vhosts"
  # Op identities: `opflow up` and `opflow ops add` make a broker user per op version
  # through the management API (KEDA's RabbitMQ scaler reads queue depths through it too).
  if port_open 15672; then
    say "RabbitMQ's management API is on 127.0.0.1:15672"
  else
    say "enabling RabbitMQ's management API (rabbitmq-plugins enable rabbitmq_management): op identities need it"
    "${SUDO[@]}" rabbitmq-plugins -q enable rabbitmq_management >/dev/null ||
      fail "cannot enable rabbitmq_management; enable it yourself, or run with OPFLOW_OP_IDENTITY=off"
    wait_for_port 15672 "RabbitMQ's management API"
  fi
}

ensure_postgres
ensure_rabbitmq
