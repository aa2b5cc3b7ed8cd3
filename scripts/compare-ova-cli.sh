#!/usr/bin/env bash
# Side by side: `ova verify` of a generated OVA (descriptor, SHA-256 .mf
# right after it, one streamOptimized disk) against today's way, `tar -xf`
# then `sha256sum -c` of the members, in one run, warm page cache, release
# build. Prints wall time, peak RSS (GNU time) and temp bytes written, and
# the ratios. `ova verify` does more than the other side: it also decodes
# every grain of the disk (its VMDK structure), which tar and sha256sum do
# not look at.
#
#   scripts/compare-ova-cli.sh [--size-mib 2048] [--dir PATH] [--keep]
#
# The raw disk is half pseudo-random data (incompressible: the OVA is about
# half the raw size), a quarter text, a quarter zeros. Needs GNU time, tar
# and sha256sum (apt-get install -y time tar coreutils). Exits 1 if a side
# fails, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=2048
dir=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) size_mib="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--size-mib N] [--dir PATH] [--keep]" >&2; exit 2 ;;
    esac
done
for tool in /usr/bin/time tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y time tar coreutils)" >&2; exit 2; }
done

cargo build --release --quiet -p hypersdk-examples --example ova
ova="$PWD/target/release/examples/ova"

if [ -z "$dir" ]; then dir=$(mktemp -d); fi
mkdir -p "$dir"
if [ "$keep" = 0 ]; then trap 'rm -rf "$dir"' EXIT; fi
cd "$dir"

if [ ! -f vm.ova ]; then
    quarter=$((size_mib / 4))
    # Pseudo-random data: AES-CTR of zeros is much faster than /dev/urandom.
    head -c $((2 * quarter))M /dev/zero \
        | openssl enc -aes-128-ctr -nosalt -pass pass:hypersdk 2>/dev/null > disk.raw \
        || head -c $((2 * quarter))M /dev/urandom > disk.raw
    head -c $((quarter))M < <(yes "hypersdk compare-ova-cli: a line of text that compresses well") >> disk.raw
    truncate -s $((size_mib))M disk.raw
    "$ova" -q convert disk.raw vm-disk1.vmdk --to vmdk-stream >/dev/null
    vmdk_size=$(stat -c %s vm-disk1.vmdk)
    capacity=$((size_mib * 1024 * 1024))
    cat > vm.ovf <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="vm-disk1.vmdk" ovf:size="$vmdk_size"/></References>
  <DiskSection><Info>Disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="$capacity" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A VM</Info><Name>vm</Name>
    <VirtualHardwareSection><Info>Hardware</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
EOF
    "$ova" -q pack vm.ovf vm.ova >/dev/null
    rm -f disk.raw vm-disk1.vmdk vm.ovf
fi
ova_bytes=$(stat -c %s vm.ova)
cat vm.ova > /dev/null # warm the page cache for both sides

timed() { # label, command...: prints "wall rss_kib"
    local out
    out=$( { /usr/bin/time -f "@@ %e %M" "${@:2}" >/dev/null; } 2>&1 ) || { echo "$1 failed: $out" >&2; exit 1; }
    echo "$out" | sed -n 's/^@@ //p' | tail -1
}

res=$(timed ova "$ova" -q verify vm.ova)
read -r ova_wall ova_rss <<< "$res"

tar_side() {
    rm -rf x && mkdir x && tar -xf vm.ova -C x && cd x \
        && sed -E 's/^SHA256\((.*)\)= ([0-9a-f]+)$/\2  \1/' vm.mf > vm.sha256 \
        && sha256sum --quiet -c vm.sha256
}
export -f tar_side
res=$(timed tar bash -c tar_side)
read -r tar_wall tar_rss <<< "$res"
tar_temp=$(du -sb x | cut -f1)
rm -rf x

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf 'OVA: %d MiB (raw disk %d MiB)\n' $((ova_bytes >> 20)) "$size_mib"
printf '%-24s %8s %10s %14s\n' side wall_s rss_MiB temp_MiB
printf '%-24s %8s %10s %14s\n' "ova verify" "$ova_wall" $((ova_rss >> 10)) 0
printf '%-24s %8s %10s %14s\n' "tar -xf + sha256sum -c" "$tar_wall" $((tar_rss >> 10)) $((tar_temp >> 20))
printf 'ratios (tar+sha256sum / ova): wall %s, rss %s\n' "$(ratio "$tar_wall" "$ova_wall")" "$(ratio "$tar_rss" "$ova_rss")"
