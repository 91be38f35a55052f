#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.py with componentize-py
# (`python3 -m venv .venv && .venv/bin/pip install componentize-py`; or set COMPONENTIZE_PY).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
tool=${COMPONENTIZE_PY:-}
if [ -z "$tool" ]; then
    if [ -x .venv/bin/componentize-py ]; then tool=.venv/bin/componentize-py
    elif command -v componentize-py >/dev/null; then tool=componentize-py
    else echo "build: componentize-py not found: python3 -m venv .venv && .venv/bin/pip install componentize-py" >&2; exit 1
    fi
fi
"$tool" -d wit -w {{world}} componentize app -o {{name}}.wasm
echo "built {{name}}.wasm ($(wc -c <{{name}}.wasm) bytes)"
