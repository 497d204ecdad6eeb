#!/usr/bin/env bash
# Install the operating-system tools the tests drive, when missing: promtool (Debian's
# `prometheus` package) checks and unit-tests the alert rules; headless Chromium renders the
# order-health page. Idempotent; waits for another apt run to finish instead of failing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && { echo "tools: promtool and chromium present"; exit 0; }

if ! command -v apt-get >/dev/null; then
  echo "cannot install ${missing[*]}: no apt-get; install them yourself" >&2
  exit 1
fi
# -o DPkg::Lock::Timeout: another apt run (unattended upgrades) holds the lock for a while.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
  --no-install-recommends "${missing[@]}"
command -v promtool >/dev/null || { echo "promtool missing after install" >&2; exit 1; }
echo "tools: installed ${missing[*]}"
