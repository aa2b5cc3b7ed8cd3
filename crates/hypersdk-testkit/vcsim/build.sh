#!/usr/bin/env bash
# Build the hypersdk vcsim harness binary from Debian's govmomi sources.
#
#   build.sh OUTPUT
#
# No network: GOPATH mode (GO111MODULE=off, GOPROXY=off) against
# /usr/share/gocode. The govmomi tree is copied into a temporary GOPATH that
# comes first, the overlay files are added to its package simulator, and
# cmd/vcsim-harness is built. OUTPUT is written atomically (build to a
# temporary name in the same directory, then rename).
#
# Environment:
#   GO       go binary (default: /usr/lib/go-1.19/bin/go, else `go` on PATH)
#   GOCACHE  Go build cache (default: a directory under the temporary GOPATH)
#   GOCODE   Debian Go source root (default: /usr/share/gocode/src)
#
# Needs: apt-get install -y golang-1.19-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTPUT" >&2
  exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
gocode=${GOCODE:-/usr/share/gocode/src}
install_cmd="apt-get install -y golang-1.19-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev"

go_bin=${GO:-}
if [ -z "$go_bin" ]; then
  if [ -x /usr/lib/go-1.19/bin/go ]; then
    go_bin=/usr/lib/go-1.19/bin/go
  elif command -v go >/dev/null 2>&1; then
    go_bin=$(command -v go)
  else
    echo "vcsim harness: no Go toolchain found; install it with: $install_cmd" >&2
    exit 3
  fi
fi
for f in "$gocode/github.com/vmware/govmomi/simulator/simulator.go" "$gocode/github.com/google/uuid/uuid.go"; do
  if [ ! -f "$f" ]; then
    echo "vcsim harness: $f is missing; install the sources with: $install_cmd" >&2
    exit 3
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/hypersdk-vcsim-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src/github.com/vmware" "$work/src/hypersdk"
cp -R "$gocode/github.com/vmware/govmomi" "$work/src/github.com/vmware/govmomi"
chmod -R u+w "$work/src/github.com/vmware/govmomi"
cp "$here"/overlay/simulator/*.go "$work/src/github.com/vmware/govmomi/simulator/"
cp -R "$here/cmd/vcsim-harness" "$work/src/hypersdk/vcsim-harness"

tmp_out="$out.tmp.$$"
mkdir -p "$(dirname "$out")"
env GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED=0 \
  GOPATH="$work:$gocode/.." GOCACHE="${GOCACHE:-$work/gocache}" \
  "$go_bin" build -trimpath -o "$tmp_out" hypersdk/vcsim-harness
mv -f "$tmp_out" "$out"
