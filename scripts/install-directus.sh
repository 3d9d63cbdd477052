#!/usr/bin/env bash
# Installs Directus (pinned) from npm into a cache folder outside git, reused when present.
# Prints the folder on stdout. Env: REFUND_BRIDGE_CACHE (default ~/.cache/refund-bridge).
set -euo pipefail
version="${DIRECTUS_VERSION:-11.3.5}"
cache="${REFUND_BRIDGE_CACHE:-$HOME/.cache/refund-bridge}"
dir="$cache/directus-$version"
marker="$dir/.installed"
if [ -f "$marker" ] && [ -f "$dir/node_modules/@directus/api/dist/cli/run.js" ]; then
  echo "$dir"
  exit 0
fi
command -v node >/dev/null || { echo "install-directus: node is not installed (Node 20 needed)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
[ -f package.json ] || printf '{"name":"refund-bridge-directus","private":true}\n' > package.json
echo "install-directus: installing directus@$version into $dir (about 3 minutes the first time)" >&2
# Exact pin: a range would resolve to a release that needs Node 22.
npm install --no-audit --no-fund --loglevel=error --save-exact "directus@$version" >&2
touch "$marker"
echo "$dir"
