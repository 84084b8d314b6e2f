#!/usr/bin/env bash
# Builds the kernel base image without any container registry:
# debootstrap a minimal Debian into a folder, then `docker import` it.
# Usage: make-base.sh IMAGE_TAG [SUITE]
# The Debian mirror is read from this machine's own apt sources (never hard-coded).
set -euo pipefail
tag=${1:?usage: make-base.sh IMAGE_TAG [SUITE]}
suite=${2:-bookworm}

mirror=${KGE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 sources first, then one-line sources; take the first URI that serves $suite (not -security).
  mirror=$(awk -v s="$suite" '
    /^URIs:/ {u=$2} /^Suites:/ { for (i=2;i<=NF;i++) if ($i==s && u!="") { print u; exit } }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk -v s="$suite" '$1=="deb" && $3==s {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "make-base: no Debian mirror for '$suite' in this machine's apt sources; set KGE_DEBIAN_MIRROR" >&2; exit 2; }

command -v debootstrap >/dev/null || { echo "make-base: installing debootstrap"; apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

# Packages the kernels need (their Python stack comes as wheels: docker/kernel/Dockerfile). They are
# installed by apt inside the chroot with --no-install-recommends: debootstrap's own resolver pulls in
# recommends that fail to configure in a minbase chroot, and does not resolve virtual packages.
pkgs="python3 python3-venv python3-pexpect procps ca-certificates"

rootfs=$(mktemp -d /tmp/kge-rootfs.XXXXXX)
cleanup() { if mountpoint -q "$rootfs/proc"; then umount "$rootfs/proc" || true; fi; rm -rf "$rootfs" || true; }
trap cleanup EXIT
echo "make-base: debootstrap $suite from $mirror (1-2 minutes)"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"
echo "make-base: installing kernel packages: $pkgs"
mount -t proc proc "$rootfs/proc"
DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -q --no-install-recommends $pkgs
umount "$rootfs/proc"
# Keep the image small: no apt lists, caches or docs.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
echo "make-base: importing as $tag"
tar -C "$rootfs" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["/bin/bash"]' - "$tag"
echo "make-base: done: $tag"
