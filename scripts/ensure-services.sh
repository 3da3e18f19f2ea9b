#!/usr/bin/env bash
# Make sure the servers the integration tests talk to are installed and running:
# PostgreSQL on 127.0.0.1:5432 with trust auth for local connections.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

# Tools the tests call directly: redis-server (test-owned instances), rsync (off-site copies),
# wrk (benchmarks), pg_dump/psql (backups).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-services: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
if ! redis_up; then
  echo "ensure-services: starting Redis on 127.0.0.1:6379" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
fi
redis_up || { echo "ensure-services: Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-services: installing PostgreSQL" >&2
    apt_install postgresql postgresql-client
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  conf=/etc/postgresql/$ver/main
  # Trust auth on loopback, as the tests expect (a test machine, never production).
  if ! grep -q "qt-tests" "$conf/pg_hba.conf"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust # qt-tests\nhost all all ::1/128 trust # qt-tests\nlocal all all trust # qt-tests' "$conf/pg_hba.conf"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "ensure-services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null \
  || { echo "ensure-services: cannot connect as postgres without a password" >&2; exit 1; }
echo "ensure-services: PostgreSQL and Redis ready" >&2
