#!/usr/bin/env bash
# Side by side, in one run: raw -> streamOptimized VMDK with hypersdk
# (grains compressed on every core) and with `qemu-img convert -O vmdk -o
# subformat=streamOptimized`, then that VMDK -> raw with hypersdk's decoder
# and with `qemu-img convert -O raw`. Sparse 2 GiB image with ~40 % mixed
# data (half random, half text-like, rest holes), warm page cache, release
# build, best of N interleaved runs. Prints wall and CPU time, peak RSS
# (GNU time), output sizes and the ratios to qemu-img; every output is
# checked with `qemu-img compare` (and the VMDKs with `qemu-img check`).
#
#   scripts/compare-vmdk.sh [--size-gib 2] [--data-percent 40] [--levels 6,7] \
#                           [--dir PATH] [--runs 3] [--keep] [--deflate-all]
#
# Needs GNU time and qemu-img (apt-get install -y time qemu-utils).
# Exits 1 if a side fails or an output differs, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p hypersdk-examples --example vmdk_compare -- "$@"
