#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from this crate.
# Needs rustup's wasm32-unknown-unknown target (`rustup target add wasm32-unknown-unknown`); where
# rustup cannot download it, Debian's rustc-web + rust-web-src of one version rebuild std instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
target=wasm32-unknown-unknown
host=$(rustc -vV | sed -n 's/^host: //p')
tools=$(rustc --print sysroot)/lib/rustlib/$host/bin
flags=(--config "target.$target.linker=\"$tools/wasm-component-ld\""
    --config "target.$target.rustflags=[\"-C\", \"link-arg=--wasm-ld-path=$tools/gcc-ld/wasm-ld\"]")
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    cargo build --release --target "$target" "${flags[@]}"
elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ]; then
    echo "build: no rustup $target; using Debian's rustc-web with -Zbuild-std" >&2
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release --target "$target" "${flags[@]}" \
        -Zbuild-std=std,panic_abort
else
    echo "build: no $target target; run 'rustup target add $target'" >&2
    exit 1
fi
cp "${CARGO_TARGET_DIR:-target}/$target/release/{{crate}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm ($(wc -c <{{name}}.wasm) bytes)"
