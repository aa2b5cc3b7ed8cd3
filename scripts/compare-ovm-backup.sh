#!/usr/bin/env bash
# Side by side, in one run, on loopback HTTPS: a full OVM backup of a
# 2 GiB disk (30% allocated in 2000 chunks of random data) with hypersdk,
# and the python client's way (one sequential `curl -r` per chunk, a new
# connection each, written at its offset with dd), plus the python client's
# own loop with `requests` when python3-requests is installed (the fair
# baseline: the curl way also pays two process spawns per chunk); tools
# interleaved; release build. Prints wall time, bytes and connections the
# server saw, peak RSS and both speed-ups; every output's SHA-256 must
# equal the server's snapshot file.
#
#   scripts/compare-ovm-backup.sh [--size-mib 2048] [--allocated 0.30] \
#       [--chunks 2000] [--runs 1] [--parallel 4] [--dir DIR]
#
# Needs curl, dd and GNU time (apt-get install curl coreutils time);
# python3-requests is optional.
# Exits 1 if an output differs from the snapshot or a tool fails.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p hypersdk-examples --example ovm_compare -- "$@"
