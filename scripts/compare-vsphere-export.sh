#!/usr/bin/env bash
# Side by side, in one run, on loopback HTTPS against the vcsim harness:
# hypersdk's vsphere-export (NFC lease, OVF target, SHA-256 while
# downloading) and `curl -k -o` of the same device URL, release build;
# then hypersdk's peak RSS exporting an 8 GiB disk. Prints wall time,
# throughput, CPU and peak RSS (GNU time) and the throughput ratio.
#
#   scripts/compare-vsphere-export.sh [--size-gib 4] [--rss-gib 8] [--runs 1] [--dir PATH]
#
# Needs curl, GNU time and the vcsim harness's Go packages (apt-get install
# -y curl time golang-1.19-go golang-github-vmware-govmomi-dev
# golang-github-google-uuid-dev). The disks are sparse files served by the
# harness; --dir must hold --rss-gib GiB of output (removed after each run).
# Exits 1 if a side fails or the sizes disagree, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p hypersdk-examples --example vsphere-export --example vsphere_export_compare
exec target/release/examples/vsphere_export_compare "$@"
