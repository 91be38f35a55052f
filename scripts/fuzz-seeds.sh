#!/usr/bin/env bash
# Writes small qcow2 images of every kind the reader handles into DIR, as a fuzzing corpus.
set -euo pipefail
dir=${1:?usage: fuzz-seeds.sh DIR}
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
qemu-img create -q -f raw "$tmp/src.raw" 1M
qemu-io -f raw -c "write -P 0x61 0 64k" -c "write -P 0x62 512k 4k" "$tmp/src.raw" >/dev/null
i=0
for opts in "-o compat=0.10,cluster_size=4096" "-o cluster_size=4096" "-c -o cluster_size=4096" \
    "-c -o compression_type=zstd,cluster_size=4096" "-o extended_l2=on,cluster_size=16384"; do
    # shellcheck disable=SC2086
    qemu-img convert -f raw -O qcow2 $opts "$tmp/src.raw" "$dir/seed-$i.qcow2"
    i=$((i + 1))
done
