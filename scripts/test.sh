#!/bin/sh
# Runs every test (unit, real NATS, and the netns testbed with tgt, FUSE, loop and swap). Root only.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "rswap tests need root (network namespaces, mounts, swap)"; exit 1; }
sh scripts/install-deps.sh
# A testbed left by an interrupted run is removed first; it only touches what carries rswap's marks.
node dist/cli/rswap.js testbed down --dir /run/rswap/test-e2e >/dev/null 2>&1 || true
node scripts/run-tests.mjs
