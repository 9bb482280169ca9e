#!/bin/sh
# Fetches qemu-storage-daemon 10.0 from Debian's bookworm-backports into a folder of its own
# (default /var/tmp/rswap-qemu-bpo), without installing it: the system's qemu (7.2) is untouched.
# The swap bench's `remote-qemu10` device runs the attacher with it (PATH and QEMU_MODULE_DIR).
# Usage: sh bench/swap/fetch-qemu-bpo.sh [DIR]   (root; prints DIR and the version)
set -eu
dir=${1:-/var/tmp/rswap-qemu-bpo}
if [ -x "$dir/root/usr/bin/qemu-storage-daemon" ]; then
  echo "$dir: $("$dir/root/usr/bin/qemu-storage-daemon" --version | head -1)"
  exit 0
fi
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/root"
echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$dir/apt/sources.list"
apt_opts="-o Dir::Etc::SourceList=$dir/apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$dir/apt/lists -o Dir::Cache=$dir/apt/cache -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get $apt_opts update >/dev/null
# shellcheck disable=SC2086
(cd "$dir/debs" && apt-get $apt_opts download qemu-utils/bookworm-backports qemu-block-extra/bookworm-backports >/dev/null)
for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
echo "$dir: $("$dir/root/usr/bin/qemu-storage-daemon" --version | head -1)"
