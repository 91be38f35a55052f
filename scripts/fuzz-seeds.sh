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
# Metadata qemu-img refuses: an unaligned L2 table, the zero flag on a version 2 image, an
# unaligned zero cluster (each must be an error, never a silent all-zero disk).
python3 - "$dir" <<'PY'
import struct, sys, subprocess, tempfile, os
out = sys.argv[1]
def tables(b):
    l1 = struct.unpack(">Q", b[40:48])[0]
    l2 = struct.unpack(">Q", b[l1:l1 + 8])[0] & 0x00fffffffffffe00
    return l1, l2
def make(name, compat, patch):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compat={compat},cluster_size=4096", path, "1M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 8k", path], check=True, stdout=subprocess.DEVNULL)
        b = bytearray(open(path, "rb").read())
        patch(b)
        open(os.path.join(out, name), "wb").write(b)
def l2_unaligned(b):
    l1, _ = tables(b)
    b[l1:l1 + 8] = struct.pack(">Q", struct.unpack(">Q", b[l1:l1 + 8])[0] + 512)
def v2_zero(b):
    _, l2 = tables(b)
    b[l2 + 7] |= 1
def zero_unaligned(b):
    _, l2 = tables(b)
    b[l2:l2 + 8] = struct.pack(">Q", struct.unpack(">Q", b[l2:l2 + 8])[0] | 512 | 1)
make("seed-l2-unaligned.qcow2", "1.1", l2_unaligned)
make("seed-v2-zero-flag.qcow2", "0.10", v2_zero)
make("seed-zero-unaligned.qcow2", "1.1", zero_unaligned)
PY
