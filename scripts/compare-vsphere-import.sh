#!/usr/bin/env bash
# Side by side, in one run, on loopback HTTPS against the vcsim harness:
# hypersdk's ova-upload importing an OVA (CreateImportSpec, ImportVApp, the
# disk streamed from the archive to the NFC lease with its manifest SHA-256
# checked on the way, HttpNfcLeaseComplete), release build, and `curl -T`
# of the same disk bytes to an NFC lease URL of the same server. Prints
# wall time, throughput, CPU and peak RSS (GNU time) and the throughput
# ratio (goal >= 0.9x).
#
#   scripts/compare-vsphere-import.sh [--size-gib 2] [--dir PATH]
#
# Needs curl, GNU time and the vcsim harness's Go packages (apt-get install
# -y curl time golang-1.19-go golang-github-vmware-govmomi-dev
# golang-github-google-uuid-dev). --dir must hold twice --size-gib GiB (the
# OVA, then the disk extracted for curl), the temp directory as much again
# (the harness's datastore); everything is removed afterwards. Exits 1 if a
# side fails or an upload differs, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p hypersdk-examples --example ova-upload --example vsphere_import_compare
exec target/release/examples/vsphere_import_compare "$@"
