#!/bin/sh
# Installs what rswap needs on Debian 12 (as root): the system packages and the npm packages,
# then builds. Safe to run again: apt-get and npm ci skip what is already there.
set -eu
cd "$(dirname "$0")/.."
PACKAGES="nats-server tgt redis-server prometheus libiscsi-bin qemu-system-common qemu-system-x86 qemu-utils qemu-block-extra fuse3 open-iscsi iproute2 util-linux kmod faketime openssl"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Debian starts no daemons here (no systemd in containers); where it did, ours use their own ports.
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
