#!/usr/bin/env bash
# Makes sure wrk (Debian's package, /usr/bin/wrk) is installed: the load generator of the
# benchmark's floor scenario (docs/performance.md). Installs with apt when missing (needs root).
set -euo pipefail
if [ -x /usr/bin/wrk ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-wrk: wrk is missing; install Debian's 'wrk' package (needs root)" >&2
  exit 1
fi
echo "ensure-wrk: installing wrk with apt" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends wrk >&2
