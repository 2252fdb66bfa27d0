#!/usr/bin/env bash
# Stand-in for docker.io/library/debian:bookworm-slim where no registry answers: a minbase Debian bookworm
# root file system from debootstrap (Debian's own packages), imported as an image.
#   debian.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
name=$1 key=$2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

command -v debootstrap > /dev/null || {
  images_log "installing debootstrap (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null
}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# As in the official image: the security and updates suites too, and no package caches or logs.
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" << SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change "LABEL $KEY_LABEL=$key" --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$name" > /dev/null
