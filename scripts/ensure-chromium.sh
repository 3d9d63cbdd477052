#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed, for the browser tests (tests/browser/, Playwright
# drives /usr/bin/chromium: Playwright's own browser download cannot be fetched here). Installs
# with apt when missing (needs root), like scripts/ensure-postgres.sh.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-chromium: Chromium is missing; install Debian's 'chromium' package (needs root)" >&2
  exit 1
fi
echo "ensure-chromium: installing chromium with apt" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium >&2
