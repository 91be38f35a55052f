#!/usr/bin/env bash
# Builds, once, a real Debian 12 root file system disk image for the convert benchmark, and
# its qcow2, compressed qcow2 (deflate) and zstd-compressed qcow2:
#
#   scripts/real-image.sh DIR     -> DIR/debian.raw, debian.qcow2, debian-c.qcow2, debian-zstd.qcow2
#
# debian.raw is a 4 GiB GPT disk with one ext4 partition (from 1 MiB) holding a debootstrap of
# bookworm (minbase plus systemd, sshd, python3, curl: ~300 MB of files), made with
# `mkfs.ext4 -d` (no mount, no loop device). Needs root (debootstrap) and a Debian mirror
# (deb.debian.org, or DEBIAN_MIRROR). Existing images are kept: delete DIR to rebuild.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
mkdir -p "$dir"
if [ -s "$dir/debian-zstd.qcow2" ]; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "real-image: debootstrap needs root" >&2; exit 1; }
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "real-image: installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
work=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "real-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase \
  --include=systemd-sysv,openssh-server,python3,curl,ca-certificates,less,vim-tiny,iproute2 \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/root/var/cache/apt/archives/"*.deb
size=$((4 << 30)) start=$((1 << 20))
part_size=$((size - start - (1 << 20)))
truncate -s "$part_size" "$work/part.ext4"
mkfs.ext4 -q -F -L rootfs -d "$work/root" "$work/part.ext4"
truncate -s "$size" "$work/debian.raw"
printf 'label: gpt\nstart=2048, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n' \
  $((part_size / 512)) | sfdisk -q "$work/debian.raw"
dd if="$work/part.ext4" of="$work/debian.raw" bs=1M seek=1 conv=sparse,notrunc status=none
qemu-img convert -f raw -O qcow2 "$work/debian.raw" "$work/debian.qcow2"
qemu-img convert -c -f raw -O qcow2 "$work/debian.raw" "$work/debian-c.qcow2"
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$work/debian.raw" "$work/debian-zstd.qcow2"
for f in debian.raw debian.qcow2 debian-c.qcow2 debian-zstd.qcow2; do mv "$work/$f" "$dir/$f"; done
du -h --apparent-size "$dir"/debian* >&2
du -h "$dir"/debian* >&2
