#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API: schemathesis (from PyPI, in a venv outside the clone)
# runs every check, stateful, against a live daemon on 127.0.0.1 that has an image and a volume.
# The daemon may read files only under a temporary directory and fetch URLs only from
# 127.0.0.1:1 (nothing listens there), so generated sources never reach another host.
# Fails on any server error, schema violation or undocumented status.
#   scripts/api-fuzz.sh [VOLCACHE_BINARY]    (API_FUZZ_EXAMPLES=N, API_FUZZ_SEED=N)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/volcache}
VENV=${VOLCACHE_VENV:-$HOME/.cache/volcache-venv}
SCHEMATHESIS=schemathesis==4.32.5
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "${SCHEMATHESIS#*==}"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SCHEMATHESIS"
fi
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=api-fuzz-token-0123456789
cleanup() { [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
python3 -c "open('$WORK/img.raw','wb').write(b'\x5a' * (1 << 20))"
cat > "$WORK/volcache.toml" <<TOML
state_dir = "$WORK/state"
image_source_dirs = ["$WORK"]
image_source_urls = ["http://127.0.0.1:1/"]
[sources]
idle_timeout_seconds = 2
deadline_seconds = 5
TOML
VOLCACHE_ADMIN_TOKEN=$TOKEN RUST_LOG=error "$BIN" serve --config "$WORK/volcache.toml" --listen "127.0.0.1:$PORT" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
api "http://127.0.0.1:$PORT/v1/images" -d "{\"id\": \"img\", \"name\": \"img\", \"source\": \"$WORK/img.raw\", \"disk_format\": \"raw\"}" >/dev/null
api "http://127.0.0.1:$PORT/v1/volumes" -d '{"image_id": "img", "size": 1}' >/dev/null
# Schema-valid requests may still be refused for what they name: a missing or unusable image
# (404, 422), a source or project that is not allowed (403), a taken id (409). A volume larger
# than the file system can hold is 507 (insufficient storage), which is not a server fault.
cat > "$WORK/schemathesis.toml" <<TOML
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "507"]
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "507"]
TOML
cd "$WORK"
"$VENV/bin/st" --config-file "$WORK/schemathesis.toml" --no-color \
    run "http://127.0.0.1:$PORT/v1/openapi.json" --url "http://127.0.0.1:$PORT" \
    -H "Authorization: Bearer $TOKEN" --checks all --max-examples "${API_FUZZ_EXAMPLES:-25}" \
    --seed "${API_FUZZ_SEED:-1}"
