#!/usr/bin/env bash
# Builds the Python and JavaScript LRU plugins that the policy benchmark compares, from the
# projects `volcache plugin new` writes (as a plugin author would):
#   scripts/build-polyglot.sh VOLCACHE_BINARY OUT_DIR  -> OUT_DIR/lru-py.wasm, OUT_DIR/lru-js.wasm
# Needs componentize-py and componentize-js (scripts/plugin-tools.sh installs them).
set -euo pipefail
bin=$1
out=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mapfile -t tools < <("$root/scripts/plugin-tools.sh")
export COMPONENTIZE_PY=${tools[0]} COMPONENTIZE_JS=${tools[1]}
mkdir -p "$out"
for spec in lru-py:python lru-js:js; do
    name=${spec%%:*}
    lang=${spec##*:}
    project=$out/$name
    [ -f "$project/build.sh" ] || "$bin" plugin new "$name" --lang "$lang" --slot eviction --dir "$project" >&2
    "$project/build.sh" >&2
    cp "$project/$name.wasm" "$out/$name.wasm"
done
