#!/bin/sh
# The demo: one lease end to end on a fresh two-host testbed. Root only.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the rswap demo needs root (network namespaces, mounts, swap)"; exit 1; }
sh scripts/install-deps.sh
exec node dist/cli/rswap.js demo
