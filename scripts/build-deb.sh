#!/usr/bin/env bash
# Builds the Debian package: volcache_<version>_<arch>.deb in OUT_DIR.
#
#   scripts/build-deb.sh BINARY PLUGIN_DIR OUT_DIR
#
# `make deb` passes the release binary (built with RBD support). The package installs under
# /usr, keeps /etc/volcache/volcache.toml as a conffile, creates the system user `volcache` and
# /var/lib/volcache, and enables and starts volcache.service when systemd runs. Removing it
# stops the service; purging removes the configuration but never the state directory, which
# holds the catalog and the volumes.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 BINARY PLUGIN_DIR OUT_DIR" >&2; exit 2; }
binary=$1 plugins=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root

DESTDIR=$root PREFIX=/usr SYSCONFDIR=/etc STATEDIR=/var/lib/volcache UNITDIR=/lib/systemd/system \
  "$here/scripts/install.sh" "$binary" "$plugins" >/dev/null
install -d "$root/DEBIAN" "$root/var/lib/volcache"
strip --strip-debug "$root/usr/bin/volcache"
cat > "$root/usr/share/doc/volcache/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: volcache
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPY

# The libraries the binary links directly (NEEDED) -> the packages that ship them.
paths=$(ldd "$binary")
depends=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r lib; do
  path=$(printf '%s\n' "$paths" | awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3}')
  [ -n "$path" ] || continue
  dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null || true
done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
depends=${depends:+$depends, }passwd
size=$(du -sk "$root" | cut -f1)

cat > "$root/DEBIAN/control" <<CONTROL
Package: volcache
Version: $version
Architecture: $arch
Maintainer: volcache developers <volcache@localhost>
Installed-Size: $size
Depends: $depends
Suggests: fonts-dejavu-core
Section: admin
Priority: optional
Description: image-volume cache daemon
 Makes creating disk volumes from VM images fast and cheap: the first volume from an image
 converts it thin into a cache entry, later ones are copy-on-write clones (reflink on
 XFS/btrfs, RBD clones on Ceph). Cache policies are sandboxed WebAssembly components.
CONTROL
echo /etc/volcache/volcache.toml > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd volcache >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/volcache --no-create-home \
      --shell /usr/sbin/nologin --comment "volcache daemon" volcache
  fi
  install -d -o volcache -g volcache -m 0750 /var/lib/volcache /var/lib/volcache/volumes
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable volcache.service >/dev/null
    systemctl restart volcache.service || echo "volcache: the service did not start; see journalctl -u volcache" >&2
  fi
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop volcache.service || true
  systemctl disable volcache.service >/dev/null || true
fi
PRERM
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ]; then
  rm -f /etc/volcache/volcache.toml.new
  rmdir /etc/volcache 2>/dev/null || true
  if [ -d /var/lib/volcache ]; then
    echo "volcache: kept /var/lib/volcache (catalog and volumes); remove it yourself when no volume is needed" >&2
  fi
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb=$out/volcache_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
