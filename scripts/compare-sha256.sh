#!/usr/bin/env bash
# Side-by-side SHA-256 speed of hypersdk, `openssl dgst -sha256` and
# `sha256sum` on one file (warm page cache), release build.
#
#   scripts/compare-sha256.sh [--size-mib 1024] [--file PATH] [--runs 3]
#
# Exits 1 if the tools disagree on a digest, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p hypersdk-examples --example digest_compare -- "$@"
