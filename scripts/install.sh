#!/usr/bin/env bash
# Installs a built volcache: the binary, the plugins, a commented configuration, the systemd
# unit, the dashboards and the docs. Used by `make install` and scripts/build-deb.sh.
#
#   scripts/install.sh BINARY PLUGIN_DIR
#
# Paths come from the environment, as in `make install`:
#   DESTDIR (staging root, default empty), PREFIX (/usr/local), SYSCONFDIR (/etc),
#   STATEDIR (/var/lib/volcache), UNITDIR ($PREFIX/lib/systemd/system).
# An existing configuration file is never overwritten; the new one goes beside it as .new.
# No user is created and nothing is started: the Debian package does that (`make deb`).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY PLUGIN_DIR" >&2; exit 2; }
binary=$1 plugins=$2
here=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
STATEDIR=${STATEDIR:-/var/lib/volcache}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
BINDIR=$PREFIX/bin
PLUGINDIR=$PREFIX/lib/volcache/plugins
DOCDIR=$PREFIX/share/doc/volcache
SHAREDIR=$PREFIX/share/volcache

[ -x "$binary" ] || { echo "install: $binary is not an executable; build it first (make all)" >&2; exit 1; }
ls "$plugins"/*.wasm >/dev/null 2>&1 || { echo "install: no plugins in $plugins; build them first (make plugins)" >&2; exit 1; }

fill() {
  sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@STATEDIR@|$STATEDIR|g" \
      -e "s|@PLUGINDIR@|$PLUGINDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" "$1"
}

install -d "$DESTDIR$BINDIR" "$DESTDIR$PLUGINDIR" "$DESTDIR$SYSCONFDIR/volcache" "$DESTDIR$UNITDIR" \
  "$DESTDIR$DOCDIR" "$DESTDIR$SHAREDIR/prometheus" "$DESTDIR$SHAREDIR/grafana"
install -m 0755 "$binary" "$DESTDIR$BINDIR/volcache"
install -m 0644 "$plugins"/*.wasm "$DESTDIR$PLUGINDIR/"
conf=$DESTDIR$SYSCONFDIR/volcache/volcache.toml
if [ -e "$conf" ]; then
  fill "$here/deploy/volcache.toml" > "$conf.new"
  echo "install: kept $conf; the new default is $conf.new" >&2
else
  fill "$here/deploy/volcache.toml" > "$conf"
fi
chmod 0644 "$conf"* 
fill "$here/deploy/systemd/volcache.service" > "$DESTDIR$UNITDIR/volcache.service"
chmod 0644 "$DESTDIR$UNITDIR/volcache.service"
install -m 0644 "$here/README.md" "$here/docs/ARCHITECTURE.md" "$DESTDIR$DOCDIR/"
install -m 0644 "$here"/deploy/prometheus/*.yml "$DESTDIR$SHAREDIR/prometheus/"
install -m 0644 "$here"/deploy/grafana/*.json "$DESTDIR$SHAREDIR/grafana/"
echo "install: volcache in $DESTDIR$BINDIR, plugins in $DESTDIR$PLUGINDIR, unit in $DESTDIR$UNITDIR"
