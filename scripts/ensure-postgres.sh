#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (Debian's postgresql package) are installed, for the
# throwaway clusters the tests start. Installs with apt when missing (needs root).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-postgres: PostgreSQL is missing; install Debian's 'postgresql' package (needs root)" >&2
  exit 1
fi
echo "ensure-postgres: installing postgresql with apt" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2
