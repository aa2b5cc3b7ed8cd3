#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
# On a fresh machine it first installs what is missing: the Rust components
# (rustfmt, clippy) and, as root through apt-get, the system packages the
# tests use as real peers. Then: cargo fmt --check, clippy with -D warnings,
# every test target, every doc test, and the docs built with -D warnings.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

# --- toolchain -------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun $0" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# --- system peers ----------------------------------------------------------
# command -> Debian package. Tests fail (they never skip) when a peer is
# missing, so install them here.
declare -A PEERS=(
  [qemu-img]=qemu-utils
  [openssl]=openssl
  [sha256sum]=coreutils
)
missing=()
for cmd in "${!PEERS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PEERS[$cmd]}")
done
# Debian packages the vcsim test harness is built from (Go 1.19 and the
# govmomi 0.24 sources; see crates/hypersdk-testkit/vcsim/README.md). The
# harness is built by the first test that needs it, cached under
# target/hypersdk-vcsim/ and guarded by a file lock, so parallel test
# binaries never race on it.
VCSIM_PACKAGES=(golang-1.19-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev)
for pkg in "${VCSIM_PACKAGES[@]}"; do
  dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# --- checks ----------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test (libraries, tests, examples)"
cargo test --workspace --lib --bins --tests --examples --locked

say "cargo test --doc"
cargo test --workspace --doc --locked

say "cargo doc (-D warnings: broken links and missing docs fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
