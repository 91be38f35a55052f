#!/usr/bin/env bash
# Builds every crate of a plugin workspace into a WebAssembly component:
#   scripts/build-plugins.sh [WORKSPACE_DIR] [OUT_DIR]      (default: plugins target/plugins)
# gives OUT_DIR/<crate dir name>.wasm for each member crate.
#
# Two routes, chosen automatically, with no file to edit:
#  1. rustup's wasm32-unknown-unknown target, when it is installed (one brief
#     `rustup target add` is tried if it is not). This is the route on an ordinary machine.
#  2. Otherwise Debian's rustc-web + rust-web-src (the exact same version: rebuilding core/alloc
#     with -Zbuild-std needs compiler and library source to match), installed with apt if missing.
# Both link with rustup's wasm-component-ld, which turns the core module into a component.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ws=$(cd "${1:-$root/plugins}" && pwd)
out=${2:-$root/target/plugins}
target=wasm32-unknown-unknown
build_dir=${VOLCACHE_WASM_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm}
mkdir -p "$out" "$build_dir"
out=$(cd "$out" && pwd)

say() { echo "build-plugins: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v rustc >/dev/null || die "rustc not found; install Rust with rustup first"
host=$(rustc -vV | sed -n 's/^host: //p')
tools=$(rustc --print sysroot)/lib/rustlib/$host/bin
linker=$tools/wasm-component-ld
wasm_ld=$tools/gcc-ld/wasm-ld
[ -x "$linker" ] && [ -x "$wasm_ld" ] ||
    die "$linker not found: needs a rustup toolchain >= 1.82 (it ships wasm-component-ld)"

link_flags=(--config "target.$target.linker=\"$linker\""
    --config "target.$target.rustflags=[\"-C\", \"link-arg=--wasm-ld-path=$wasm_ld\"]")

have_rustup_target() {
    command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"
}

# One brief attempt at `rustup target add`; a failure is remembered so later builds go straight
# to the fallback instead of waiting again.
try_rustup_target() {
    local marker=$build_dir/.rustup-target-add-failed
    command -v rustup >/dev/null || return 1
    [ -e "$marker" ] && return 1
    say "trying 'rustup target add $target' (20 s at most)"
    if timeout 20 rustup target add "$target" >&2 </dev/null; then return 0; fi
    touch "$marker"
    return 1
}

debian_toolchain() {
    local want=1.96
    if ! { [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] && [ -x /usr/bin/cargo ]; }; then
        [ "$(id -u)" = 0 ] || die "no wasm32 target in rustup and no Debian rustc-web; run as root or 'rustup target add $target'"
        command -v apt-get >/dev/null || die "no wasm32 target in rustup, and no apt-get for the fallback: run 'rustup target add $target'"
        say "installing Debian's rustc-web, cargo-web and rust-web-src (fallback route)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            rustc-web cargo-web rust-web-src; } >&2 || die "apt-get could not install rustc-web"
    fi
    local got src
    got=$(/usr/bin/rustc --version | awk '{print $2}')
    src=$(dpkg-query -W -f='${Version}' rust-web-src 2>/dev/null || echo none)
    case "$got" in "$want".*) ;; *) say "warning: Debian rustc is $got; the recipe was verified with $want" ;; esac
    case "$src" in "$got"*) ;; *) die "Debian rustc $got and rust-web-src $src differ: core would not build" ;; esac
}

# VOLCACHE_WASM_ROUTE=rustup|fallback forces a route (to test the fallback on a machine that has
# the target); the default, auto, picks as described above.
route=${VOLCACHE_WASM_ROUTE:-auto}
case "$route" in auto | rustup | fallback) ;; *) die "VOLCACHE_WASM_ROUTE must be auto, rustup or fallback, not '$route'" ;; esac

cd "$ws"
if [ "$route" = rustup ] || { [ "$route" = auto ] && { have_rustup_target || try_rustup_target; }; }; then
    say "route: rustup target $target"
    cargo build --release --workspace --target "$target" --target-dir "$build_dir" "${link_flags[@]}"
else
    debian_toolchain
    say "route: Debian rustc $(/usr/bin/rustc --version | awk '{print $2}') with -Zbuild-std (fallback)"
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release --workspace \
        --target "$target" --target-dir "$build_dir" "${link_flags[@]}" \
        -Zbuild-std=core,alloc
fi

# Copy each member's artifact to OUT_DIR/<dir>.wasm and check it is a component, not a module.
built=0
for manifest in "$ws"/*/Cargo.toml; do
    dir=$(basename "$(dirname "$manifest")")
    pkg=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1)
    artifact=$build_dir/$target/release/${pkg//-/_}.wasm
    [ -f "$artifact" ] || die "$pkg built no $artifact"
    # Component preamble: \0asm, version 0x0d, layer 0x01 (a core module has layer 0x00).
    [ "$(head -c 8 "$artifact" | od -An -tx1 | tr -d ' \n')" = "0061736d0d000100" ] ||
        die "$artifact is not a wasm component"
    cp "$artifact" "$out/$dir.wasm"
    say "$out/$dir.wasm ($(wc -c <"$out/$dir.wasm") bytes)"
    built=$((built + 1))
done
[ "$built" -gt 0 ] || die "no plugin crates under $ws"
