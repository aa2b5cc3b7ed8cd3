// hypersdk vcsim harness: changed block tracking (CBT) and
// VirtualMachine.QueryChangedDiskAreas, which vcsim 0.24 lacks.
//
// Copied into github.com/vmware/govmomi/simulator at build time (see
// ../../build.sh); the behaviour is documented in ../../README.md ("Changed
// block tracking").
//
// Model:
//   - Every VM reports capability.changeTrackingSupported = true.
//   - Tracking is per disk, over the disk's flat extent (the "-flat.vmdk"
//     file next to the file its backing names: what /folder reads serve), in
//     blocks of cbtBlockSize bytes.
//   - It starts when a VM's config.changeTrackingEnabled becomes true
//     (ReconfigVM_Task, or a VM created or imported with it) and stops, with
//     everything recorded dropped, when it becomes false. The harness checks
//     after every *_Task and ImportVApp call.
//   - Starting records the flat file's non-zero blocks as the disk's
//     allocated areas and gives the disk backing a changeId
//     "<16 hex bytes>/<sequence>" (the real vSphere form, e.g.
//     "52 3c 9a 1e 07 6b 2f 41-8d 55 c0 7a 19 e2 4b 6f/0").
//   - Each change set (a control-API write or zeroing of the flat file, an
//     NFC upload to the disk) increments the sequence and replaces the disk
//     device in config.hardware.device by a copy with the new changeId.
//     vcsim snapshots copy the VM's config when they are taken and share the
//     device objects, so replacing (never mutating) a disk keeps the
//     changeId a snapshot recorded: a snapshot's config shows the changeIds
//     of its creation.
//   - QueryChangedDiskAreas answers from the recorded change sets; the
//     bytes of a snapshot are not kept (vcsim has no delta disks), so a test
//     reads a snapshot's content from the flat file before writing again.

package simulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// cbtBlockSize is the tracking granularity: a write of one byte marks its
// whole 64 KiB block changed.
const cbtBlockSize int64 = 64 << 10

// defaultCBTWindow is how many bytes of the disk one QueryChangedDiskAreas
// answer covers at most (DiskChangeInfo.length).
const defaultCBTWindow int64 = 64 << 20

// CBTConfig shapes QueryChangedDiskAreas answers (control API POST cbt).
type CBTConfig struct {
	// WindowBytes is the most one answer covers; clients must loop.
	WindowBytes int64 `json:"window_bytes"`
	// MaxAreas, when > 0, ends an answer early (its length stops at the end
	// of the MaxAreas-th area), as servers do with many small areas.
	MaxAreas int `json:"max_areas"`
	// Star is how changeId "*" is answered: "allocated" (the disk's
	// allocated areas, as on VMFS), "whole" (one area covering the whole
	// window, as on some other storage) or "fault" (FileFault).
	Star string `json:"star"`
}

type cbtChangeSet struct {
	seq     int64
	written map[int64]struct{} // blocks written (allocated afterwards)
	trimmed map[int64]struct{} // blocks zeroed (not allocated afterwards)
}

type cbtDisk struct {
	vm      types.ManagedObjectReference
	key     int32
	id      string // the changeId without "/<seq>"
	seq     int64
	base    map[int64]struct{} // allocated blocks when tracking started
	changes []cbtChangeSet
}

func (d *cbtDisk) changeID() string {
	return fmt.Sprintf("%s/%d", d.id, d.seq)
}

var cbt = struct {
	sync.Mutex
	cfg   CBTConfig
	disks map[string]*cbtDisk // by cbtKey
}{
	cfg:   CBTConfig{WindowBytes: defaultCBTWindow, Star: "allocated"},
	disks: make(map[string]*cbtDisk),
}

func cbtKey(vm types.ManagedObjectReference, key int32) string {
	return fmt.Sprintf("%s/%d", vm.Value, key)
}

func newChangeIDPrefix() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] = 0x52 // as vSphere's
	h := hex.EncodeToString(b[:])
	parts := make([]string, 16)
	for i := range parts {
		parts[i] = h[2*i : 2*i+2]
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

// parseChangeID splits "<id>/<seq>".
func parseChangeID(s string) (string, int64, bool) {
	i := strings.LastIndex(s, "/")
	if i <= 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil || seq < 0 {
		return "", 0, false
	}
	return s[:i], seq, true
}

func trackingEnabled(vm *VirtualMachine) bool {
	return vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

func vmDisks(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range object.VirtualDeviceList(devices).SelectByType((*types.VirtualDisk)(nil)) {
		out = append(out, d.(*types.VirtualDisk))
	}
	return out
}

func findDisk(devices []types.BaseVirtualDevice, key int32) *types.VirtualDisk {
	for _, d := range vmDisks(devices) {
		if d.Key == key {
			return d
		}
	}
	return nil
}

func backingFileName(d *types.VirtualDisk) string {
	if b, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		return b.GetVirtualDeviceFileBackingInfo().FileName
	}
	return ""
}

func backingChangeID(d *types.VirtualDisk) string {
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		return b.ChangeId
	case *types.VirtualDiskSparseVer2BackingInfo:
		return b.ChangeId
	case *types.VirtualDiskSeSparseBackingInfo:
		return b.ChangeId
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		return b.ChangeId
	case *types.VirtualDiskRawDiskVer2BackingInfo:
		return b.ChangeId
	}
	return ""
}

// withChangeID returns a copy of d whose backing (also copied) has changeID.
func withChangeID(d *types.VirtualDisk, changeID string) (*types.VirtualDisk, bool) {
	nd := *d
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		nb := *b
		nb.ChangeId = changeID
		nd.Backing = &nb
	case *types.VirtualDiskSparseVer2BackingInfo:
		nb := *b
		nb.ChangeId = changeID
		nd.Backing = &nb
	case *types.VirtualDiskSeSparseBackingInfo:
		nb := *b
		nb.ChangeId = changeID
		nd.Backing = &nb
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		nb := *b
		nb.ChangeId = changeID
		nd.Backing = &nb
	case *types.VirtualDiskRawDiskVer2BackingInfo:
		nb := *b
		nb.ChangeId = changeID
		nd.Backing = &nb
	default:
		return nil, false
	}
	return &nd, true
}

// replaceDisk swaps disk `key` of the VM for `fn(old)` in a new device
// slice: the old slice and device stay as a snapshot's config saw them.
// Call with the VM locked.
func replaceDisk(vm *VirtualMachine, key int32, fn func(*types.VirtualDisk) *types.VirtualDisk) {
	devs := vm.Config.Hardware.Device
	out := make([]types.BaseVirtualDevice, len(devs))
	copy(out, devs)
	for i, d := range out {
		if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == key {
			if nd := fn(disk); nd != nil {
				out[i] = nd
			}
		}
	}
	vm.Config.Hardware.Device = out
}

func setDiskChangeID(vm *VirtualMachine, key int32, changeID string) {
	replaceDisk(vm, key, func(d *types.VirtualDisk) *types.VirtualDisk {
		nd, _ := withChangeID(d, changeID)
		return nd
	})
}

// flatPath is the local path of a disk's flat extent.
func flatPath(vm *VirtualMachine, d *types.VirtualDisk) (string, types.BaseMethodFault) {
	file, fault := diskBackingPath(vm, d)
	if fault != nil {
		return "", fault
	}
	return strings.TrimSuffix(file, ".vmdk") + "-flat.vmdk", nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// nonZeroBlocks lists the blocks of a file holding a non-zero byte. A
// missing file has none.
func nonZeroBlocks(path string) map[int64]struct{} {
	out := make(map[int64]struct{})
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	buf := make([]byte, cbtBlockSize)
	for b := int64(0); ; b++ {
		n, err := io.ReadFull(f, buf)
		if n > 0 && !isZero(buf[:n]) {
			out[b] = struct{}{}
		}
		if err != nil {
			return out
		}
	}
}

// SyncChangeTracking starts or stops tracking on every VM whose
// config.changeTrackingEnabled changed, and forgets VMs that are gone.
func SyncChangeTracking() {
	seen := make(map[string]bool)
	for _, e := range Map.All("VirtualMachine") {
		vm, ok := e.(*VirtualMachine)
		if !ok {
			continue
		}
		seen[vm.Self.Value] = true
		Map.WithLock(vm, func() { syncVMTracking(vm) })
	}
	cbt.Lock()
	for k, d := range cbt.disks {
		if !seen[d.vm.Value] {
			delete(cbt.disks, k)
		}
	}
	cbt.Unlock()
}

// syncVMTracking brings one VM's tracking in line with its config. Call
// with the VM locked.
func syncVMTracking(vm *VirtualMachine) {
	if vm.Config == nil {
		return
	}
	if vm.Capability.ChangeTrackingSupported == nil {
		// vcsim leaves the capabilities unset; its VMs are vmx-13.
		vm.Capability.ChangeTrackingSupported = types.NewBool(true)
	}
	enabled := trackingEnabled(vm)
	disks := vmDisks(vm.Config.Hardware.Device)
	present := make(map[string]bool)
	cbt.Lock()
	defer cbt.Unlock()
	for _, d := range disks {
		k := cbtKey(vm.Self, d.Key)
		present[k] = true
		st := cbt.disks[k]
		switch {
		case enabled && st == nil:
			st = &cbtDisk{vm: vm.Self, key: d.Key, id: newChangeIDPrefix(), base: map[int64]struct{}{}}
			if p, fault := flatPath(vm, d); fault == nil {
				st.base = nonZeroBlocks(p)
			}
			cbt.disks[k] = st
			setDiskChangeID(vm, d.Key, st.changeID())
		case enabled && backingChangeID(d) != st.changeID():
			setDiskChangeID(vm, d.Key, st.changeID())
		case !enabled && st != nil:
			delete(cbt.disks, k)
			setDiskChangeID(vm, d.Key, "")
		case !enabled && backingChangeID(d) != "":
			setDiskChangeID(vm, d.Key, "")
		}
	}
	for k, st := range cbt.disks {
		if st.vm == vm.Self && !present[k] {
			delete(cbt.disks, k)
		}
	}
}

// recordChange records one change set on a tracked disk and gives the disk
// its next changeId. Call with the VM locked. Returns the new changeId, or
// "" when the disk is not tracked.
func recordChange(vm *VirtualMachine, key int32, written, trimmed []int64) string {
	cbt.Lock()
	defer cbt.Unlock()
	st := cbt.disks[cbtKey(vm.Self, key)]
	if st == nil || !trackingEnabled(vm) {
		return ""
	}
	set := cbtChangeSet{written: map[int64]struct{}{}, trimmed: map[int64]struct{}{}}
	for _, b := range written {
		set.written[b] = struct{}{}
	}
	for _, b := range trimmed {
		set.trimmed[b] = struct{}{}
		delete(set.written, b)
	}
	st.seq++
	set.seq = st.seq
	st.changes = append(st.changes, set)
	setDiskChangeID(vm, key, st.changeID())
	return st.changeID()
}

// blocksIn lists the blocks that [offset, offset+length) touches.
func blocksIn(offset, length int64) []int64 {
	if length <= 0 {
		return nil
	}
	var out []int64
	for b := offset / cbtBlockSize; b*cbtBlockSize < offset+length; b++ {
		out = append(out, b)
	}
	return out
}

// diffBlocks compares two versions of a file block by block (a missing file
// or the part past a file's end reads as zeros) and returns the blocks that
// differ, split by whether the new block is non-zero.
func diffBlocks(oldPath, newPath string) (written, trimmed []int64, err error) {
	nf, err := os.Open(newPath)
	if err != nil {
		return nil, nil, err
	}
	defer nf.Close()
	of, oerr := os.Open(oldPath)
	if oerr == nil {
		defer of.Close()
	}
	nb := make([]byte, cbtBlockSize)
	ob := make([]byte, cbtBlockSize)
	newDone, oldDone := false, of == nil
	for b := int64(0); !newDone || !oldDone; b++ {
		n := 0
		if !newDone {
			n, err = io.ReadFull(nf, nb)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				newDone, err = true, nil
			} else if err != nil {
				return nil, nil, err
			}
		}
		for i := n; i < len(nb); i++ {
			nb[i] = 0
		}
		o := 0
		if !oldDone {
			o, err = io.ReadFull(of, ob)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				oldDone, err = true, nil
			} else if err != nil {
				return nil, nil, err
			}
		}
		for i := o; i < len(ob); i++ {
			ob[i] = 0
		}
		if n == 0 && o == 0 {
			continue
		}
		if string(nb) != string(ob) {
			if isZero(nb) {
				trimmed = append(trimmed, b)
			} else {
				written = append(written, b)
			}
		}
	}
	return written, trimmed, nil
}

// recordUpload records an NFC upload to `file` (the backing file of one of
// the entity VM's disks) as a change of the whole disk.
func recordUpload(entity types.ManagedObjectReference, file string) {
	vm, ok := Map.Get(entity).(*VirtualMachine)
	if !ok {
		return
	}
	Map.WithLock(vm, func() {
		if !trackingEnabled(vm) {
			return
		}
		for _, d := range vmDisks(vm.Config.Hardware.Device) {
			if p, fault := diskBackingPath(vm, d); fault == nil && p == file {
				recordChange(vm, d.Key, blocksIn(0, diskCapacity(d)), nil)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// QueryChangedDiskAreas

func fileFault(file, format string, a ...interface{}) *soap.Fault {
	return Fault(fmt.Sprintf(format, a...), &types.FileFault{File: file})
}

// QueryChangedDiskAreas answers from the disk's recorded change sets; see
// the file comment and the README.
func (vm *VirtualMachine) QueryChangedDiskAreas(ctx *Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	res, fault := queryChangedDiskAreas(ctx, vm, req)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *res}
	return body
}

func queryChangedDiskAreas(ctx *Context, vm *VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *soap.Fault) {
	devices := vm.Config.Hardware.Device
	at := "the current state"
	if req.Snapshot != nil {
		s, ok := ctx.Map.Get(*req.Snapshot).(*VirtualMachineSnapshot)
		if !ok {
			return nil, Fault("", &types.ManagedObjectNotFound{Obj: *req.Snapshot})
		}
		if s.Vm != vm.Self {
			return nil, Fault(fmt.Sprintf("snapshot %s is not a snapshot of %s", s.Self.Value, vm.Self.Value),
				&types.InvalidArgument{InvalidProperty: "snapshot"})
		}
		devices = s.Config.Hardware.Device
		at = "snapshot " + s.Self.Value
	}
	disk := findDisk(devices, req.DeviceKey)
	if disk == nil {
		return nil, Fault(fmt.Sprintf("%s has no virtual disk with device key %d in %s", vm.Self.Value, req.DeviceKey, at),
			&types.NotFound{})
	}
	file := backingFileName(disk)
	if !trackingEnabled(vm) {
		return nil, fileFault(file, "Change tracking is not enabled on %s: cannot query the changed areas of %s", vm.Name, file)
	}

	cbt.Lock()
	defer cbt.Unlock()
	st := cbt.disks[cbtKey(vm.Self, req.DeviceKey)]
	if st == nil {
		return nil, fileFault(file, "Change tracking is not active on %s", file)
	}
	target := backingChangeID(disk)
	if target == "" {
		return nil, fileFault(file, "%s has no change id for %s (taken before change tracking was enabled)", at, file)
	}
	tid, tseq, ok := parseChangeID(target)
	if !ok || tid != st.id || tseq > st.seq {
		return nil, fileFault(file, "the change id %q of %s in %s is no longer valid (change tracking was reset)", target, file, at)
	}

	capacity := diskCapacity(disk)
	start := req.StartOffset
	if start < 0 || start > capacity {
		return nil, Fault(fmt.Sprintf("startOffset %d is outside the disk (%d bytes)", start, capacity),
			&types.InvalidArgument{InvalidProperty: "startOffset"})
	}
	window := cbt.cfg.WindowBytes
	if window <= 0 {
		window = defaultCBTWindow
	}
	end := capacity
	if start+window < end {
		end = start + window
	}
	info := &types.DiskChangeInfo{StartOffset: start, Length: end - start}
	if start == end {
		return info, nil
	}

	var blocks map[int64]struct{}
	if req.ChangeId == "*" {
		switch cbt.cfg.Star {
		case "fault":
			return nil, fileFault(file, "changeId \"*\" is not supported for %s on this datastore", file)
		case "whole":
			info.ChangedArea = []types.DiskChangeExtent{{Start: start, Length: end - start}}
			return info, nil
		}
		blocks = make(map[int64]struct{}, len(st.base))
		for b := range st.base {
			blocks[b] = struct{}{}
		}
		for _, c := range st.changes {
			if c.seq > tseq {
				break
			}
			for b := range c.written {
				blocks[b] = struct{}{}
			}
			for b := range c.trimmed {
				delete(blocks, b)
			}
		}
	} else {
		fid, fseq, ok := parseChangeID(req.ChangeId)
		if !ok || fid != st.id {
			return nil, fileFault(file, "unknown change id %q for %s (another disk's, or from before change tracking was reset)", req.ChangeId, file)
		}
		if fseq > tseq {
			return nil, fileFault(file, "change id %q of %s is newer than %s (%s)", req.ChangeId, file, at, target)
		}
		blocks = make(map[int64]struct{})
		for _, c := range st.changes {
			if c.seq <= fseq || c.seq > tseq {
				continue
			}
			for b := range c.written {
				blocks[b] = struct{}{}
			}
			for b := range c.trimmed {
				blocks[b] = struct{}{}
			}
		}
	}

	areas := blockAreas(blocks, start, end)
	if max := cbt.cfg.MaxAreas; max > 0 && len(areas) > max {
		areas = areas[:max]
		last := areas[max-1]
		info.Length = last.Start + last.Length - start
	}
	info.ChangedArea = areas
	return info, nil
}

// blockAreas turns a block set into sorted, merged byte areas clipped to
// [start, end).
func blockAreas(blocks map[int64]struct{}, start, end int64) []types.DiskChangeExtent {
	var sorted []int64
	first, last := start/cbtBlockSize, (end-1)/cbtBlockSize
	for b := range blocks {
		if b >= first && b <= last {
			sorted = append(sorted, b)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	var out []types.DiskChangeExtent
	for _, b := range sorted {
		s, e := b*cbtBlockSize, (b+1)*cbtBlockSize
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if n := len(out); n > 0 && out[n-1].Start+out[n-1].Length == s {
			out[n-1].Length = e - out[n-1].Start
			continue
		}
		out = append(out, types.DiskChangeExtent{Start: s, Length: e - s})
	}
	return out
}

// ---------------------------------------------------------------------------
// Control API view

// CBTArea is a byte range in the control API.
type CBTArea struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
}

// CBTChangeView is one recorded change set.
type CBTChangeView struct {
	Seq      int64     `json:"seq"`
	ChangeID string    `json:"change_id"`
	Written  []CBTArea `json:"written"`
	Trimmed  []CBTArea `json:"trimmed"`
}

// CBTDiskView is one tracked disk.
type CBTDiskView struct {
	VM        string          `json:"vm"`
	VMName    string          `json:"vm_name"`
	DeviceKey int32           `json:"device_key"`
	ChangeID  string          `json:"change_id"`
	Seq       int64           `json:"seq"`
	BlockSize int64           `json:"block_size"`
	Allocated []CBTArea       `json:"allocated_at_start"`
	Changes   []CBTChangeView `json:"changes"`
}

// CBTView is GET /_hypersdk/cbt.
type CBTView struct {
	Config CBTConfig     `json:"config"`
	Disks  []CBTDiskView `json:"disks"`
}

func areasOf(blocks map[int64]struct{}) []CBTArea {
	out := []CBTArea{}
	for _, a := range blockAreas(blocks, 0, 1<<62) {
		out = append(out, CBTArea{Start: a.Start, Length: a.Length})
	}
	return out
}

func cbtView() CBTView {
	SyncChangeTracking()
	cbt.Lock()
	defer cbt.Unlock()
	v := CBTView{Config: cbt.cfg, Disks: []CBTDiskView{}}
	for _, d := range cbt.disks {
		dv := CBTDiskView{
			VM:        d.vm.Value,
			DeviceKey: d.key,
			ChangeID:  d.changeID(),
			Seq:       d.seq,
			BlockSize: cbtBlockSize,
			Allocated: areasOf(d.base),
			Changes:   []CBTChangeView{},
		}
		if vm, ok := Map.Get(d.vm).(*VirtualMachine); ok {
			dv.VMName = vm.Name
		}
		for _, c := range d.changes {
			dv.Changes = append(dv.Changes, CBTChangeView{
				Seq:      c.seq,
				ChangeID: fmt.Sprintf("%s/%d", d.id, c.seq),
				Written:  areasOf(c.written),
				Trimmed:  areasOf(c.trimmed),
			})
		}
		v.Disks = append(v.Disks, dv)
	}
	sort.Slice(v.Disks, func(i, j int) bool {
		if v.Disks[i].VMName != v.Disks[j].VMName {
			return v.Disks[i].VMName < v.Disks[j].VMName
		}
		return v.Disks[i].DeviceKey < v.Disks[j].DeviceKey
	})
	return v
}

// cbtConfigUpdate is POST /_hypersdk/cbt: absent fields are unchanged.
type cbtConfigUpdate struct {
	WindowBytes *int64  `json:"window_bytes"`
	MaxAreas    *int    `json:"max_areas"`
	Star        *string `json:"star"`
}

func updateCBTConfig(u cbtConfigUpdate) (CBTConfig, error) {
	cbt.Lock()
	defer cbt.Unlock()
	next := cbt.cfg
	if u.WindowBytes != nil {
		if *u.WindowBytes < cbtBlockSize || *u.WindowBytes%cbtBlockSize != 0 {
			return next, fmt.Errorf("window_bytes must be a positive multiple of %d", cbtBlockSize)
		}
		next.WindowBytes = *u.WindowBytes
	}
	if u.MaxAreas != nil {
		if *u.MaxAreas < 0 {
			return next, fmt.Errorf("max_areas must be >= 0 (0: no limit)")
		}
		next.MaxAreas = *u.MaxAreas
	}
	if u.Star != nil {
		switch *u.Star {
		case "allocated", "whole", "fault":
			next.Star = *u.Star
		default:
			return next, fmt.Errorf("star must be allocated, whole or fault")
		}
	}
	cbt.cfg = next
	return next, nil
}
