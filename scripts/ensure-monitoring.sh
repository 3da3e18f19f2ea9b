#!/usr/bin/env bash
# Make sure the Prometheus tool chain the monitoring tests use is installed:
# prometheus + promtool (package prometheus), alertmanager + amtool (prometheus-alertmanager).
# Debian names the Alertmanager binary prometheus-alertmanager; either name is accepted.
# Idempotent and quiet: does nothing when all four binaries are on PATH.
set -euo pipefail

have() {
  if [ "$1" = alertmanager ]; then
    command -v alertmanager >/dev/null 2>&1 || command -v prometheus-alertmanager >/dev/null 2>&1
  else
    command -v "$1" >/dev/null 2>&1
  fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for bin in prometheus promtool alertmanager amtool; do
  have "$bin" || missing+=("$bin")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "ensure-monitoring: installing prometheus, prometheus-alertmanager (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
# No recommends: the exporters and the web UI assets are not needed by the tests. The
# packages' init scripts may fail to start a daemon without systemd; that is harmless, the
# tests run their own instances on free ports.
as_root apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager \
  >/dev/null 2>&1 || as_root apt-get install -y -qq --no-install-recommends \
  prometheus prometheus-alertmanager >/dev/null
# The packaged daemons are not wanted on a test machine (they would hold 9090/9093).
for unit in prometheus prometheus-alertmanager; do
  as_root service "$unit" stop >/dev/null 2>&1 || true
done

for bin in prometheus promtool alertmanager amtool; do
  have "$bin" || { echo "ensure-monitoring: $bin still missing after install" >&2; exit 1; }
done
echo "ensure-monitoring: prometheus tool chain ready" >&2
