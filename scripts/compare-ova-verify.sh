#!/usr/bin/env bash
# Side by side: verify an OVA (OVF + .mf + two disks) with hypersdk's
# streaming reader and with `tar -xf` + `sha256sum` of the members, in one
# run, warm page cache, release build. Prints wall time, peak RSS (GNU time)
# and temp bytes written.
#
#   scripts/compare-ova-verify.sh [--size-gib 4] [--dir PATH] [--runs 3] [--keep]
#
# Needs GNU time, tar and sha256sum (apt-get install -y time tar coreutils).
# Exits 1 if a side fails or the digests disagree, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p hypersdk-examples --example ova_compare -- "$@"
