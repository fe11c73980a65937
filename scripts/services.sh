#!/usr/bin/env bash
# Makes sure the services the tests talk to are running on 127.0.0.1: PostgreSQL on 5432
# (trust auth, database `test`) and Redis on 6379. Starts them when they are installed but
# down, installs them from Debian's packages when they are missing (needs root). Also makes sure
# the `prometheus` and `promtool` binaries exist (tests/prometheus_live.rs starts its own
# Prometheus on a free port; none is left running here).
set -euo pipefail

say() { echo "services: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  say "nothing listens on 127.0.0.1:$1 after 30 s"; return 1
}
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "$* not installed: install it (apt-get install $*) or start it on 127.0.0.1, then run this again"
    exit 1
  fi
  say "installing $*"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_postgres() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    ver=$(ls /etc/postgresql | sort -V | tail -n 1)
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      # Tests connect over TCP without a password, like the CI machines.
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    say "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_port 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1 from pg_database where datname = 'test'" | grep -q 1; then
    say "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/spatiallock.log
  wait_port 6379
}

# Only the binaries: the Debian package's post-install starts a system Prometheus on :9090 where
# it can; a Prometheus that was not running before the install is stopped again.
ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  local before=""
  before=$(pgrep -x prometheus || true)
  apt_install prometheus
  if [ -z "$before" ] && pgrep -x prometheus >/dev/null; then
    say "stopping the Prometheus the package started"
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl stop prometheus || true
      systemctl disable prometheus >/dev/null 2>&1 || true
    fi
    service prometheus stop >/dev/null 2>&1 || true
    pgrep -x prometheus >/dev/null && pkill -x prometheus || true
  fi
  command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    say "the prometheus package did not install prometheus and promtool"; return 1
  }
}

ensure_postgres
ensure_redis
ensure_prometheus
say "PostgreSQL and Redis are up; prometheus and promtool are installed"
