#!/usr/bin/env bash
# Installs the tools plugin authors use for Python and JavaScript components, at pinned
# versions, outside the clone (so repeated runs take a second):
#   componentize-py  (PyPI, in a venv)   -> $VOLCACHE_TOOLS_DIR/py/bin/componentize-py
#   componentize-js  (npm)               -> $VOLCACHE_TOOLS_DIR/js/node_modules/.bin/componentize-js
# VOLCACHE_TOOLS_DIR defaults to ~/.cache/volcache-tools. Prints the two paths, one per line.
set -euo pipefail

PY_VERSION=0.25.1
JS_VERSION=0.23.0
dir=${VOLCACHE_TOOLS_DIR:-$HOME/.cache/volcache-tools}
say() { echo "plugin-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 not found"
command -v npm >/dev/null || die "npm not found: install Node.js (>= 18) and npm"
mkdir -p "$dir"

py=$dir/py/bin/componentize-py
if ! { [ -x "$py" ] && "$py" --version 2>/dev/null | grep -q " $PY_VERSION\$"; }; then
    say "installing componentize-py $PY_VERSION into $dir/py"
    rm -rf "$dir/py"
    python3 -m venv "$dir/py" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$dir/py/bin/pip" install -q --disable-pip-version-check "componentize-py==$PY_VERSION" >&2 ||
        die "pip could not install componentize-py $PY_VERSION"
fi

js=$dir/js/node_modules/.bin/componentize-js
pkg=$dir/js/node_modules/@bytecodealliance/componentize-js/package.json
if ! { [ -x "$js" ] && grep -q "\"version\": \"$JS_VERSION\"" "$pkg" 2>/dev/null; }; then
    say "installing @bytecodealliance/componentize-js $JS_VERSION into $dir/js"
    rm -rf "$dir/js"
    mkdir -p "$dir/js"
    (cd "$dir/js" && echo '{"name": "volcache-tools", "private": true}' >package.json &&
        npm install --no-audit --no-fund --loglevel=error "@bytecodealliance/componentize-js@$JS_VERSION" >&2) ||
        die "npm could not install componentize-js $JS_VERSION"
fi

echo "$py"
echo "$js"
