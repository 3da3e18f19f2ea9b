#!/usr/bin/env bash
# Make sure Debian's Chromium is installed: the HTML report test opens the report in it
# (Playwright for Python drives /usr/bin/chromium; Playwright's own browser download is not
# used). Idempotent and quiet: does nothing when /usr/bin/chromium exists.
set -euo pipefail

[ -x /usr/bin/chromium ] && exit 0
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
echo "ensure-chromium: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "ensure-chromium: /usr/bin/chromium still missing" >&2; exit 1; }
echo "ensure-chromium: chromium ready" >&2
