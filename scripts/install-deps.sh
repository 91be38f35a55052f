#!/usr/bin/env bash
# Installs the system packages the tests need, only those missing. Idempotent.
set -euo pipefail
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v md5sum >/dev/null || need+=(coreutils)
command -v openssl >/dev/null || need+=(openssl)
# The RBD backend: a single-node test cluster, the rbd tool, and librbd/librados to link.
command -v ceph-mon >/dev/null || need+=(ceph-mon)
command -v ceph-osd >/dev/null || need+=(ceph-osd)
command -v rbd >/dev/null || need+=(ceph-common)
[ -e /usr/include/rbd/librbd.h ] || need+=(librbd-dev)
[ -e /usr/include/rados/librados.h ] || need+=(librados-dev)
# The package test: strace checks the unit's system call filter; systemd-analyze verifies it.
command -v strace >/dev/null || need+=(strace)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The web console's test drives Debian's chromium through chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The simulator's PNG plots draw their text with a system font.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# `promtool check rules` for the alert rules and the dashboard's queries (deploy/).
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "install-deps: please install as root: ${need[*]}" >&2; exit 1; }
echo "install-deps: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
