#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.js with componentize-js, which
# `npm install` fetches (or set COMPONENTIZE_JS to an installed componentize-js).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
tool=${COMPONENTIZE_JS:-}
if [ -z "$tool" ]; then
    [ -x node_modules/.bin/componentize-js ] || npm install --no-audit --no-fund
    tool=node_modules/.bin/componentize-js
fi
"$tool" app.js --wit wit/policy.wit -n {{world}} -o {{name}}.wasm
echo "built {{name}}.wasm ($(wc -c <{{name}}.wasm) bytes)"
