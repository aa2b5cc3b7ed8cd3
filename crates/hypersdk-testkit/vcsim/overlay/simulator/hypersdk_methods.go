// hypersdk vcsim harness: SOAP methods that govmomi's vcsim 0.24.2 lacks.
//
// This file is copied into github.com/vmware/govmomi/simulator at build time
// (see ../../build.sh), so it defines methods on vcsim's own types and may use
// unexported vcsim helpers. vcsim dispatches SOAP calls by reflection on the Go
// method name, so defining a method here is enough to make it callable.
//
// Added:
//   - VirtualMachine.ExportVm and VirtualMachineSnapshot.ExportSnapshot:
//     an HttpNfcLease whose deviceUrls GET the disk backing files (Range works).
//   - OvfManager.CreateDescriptor: an OVF 1.0 descriptor built from the VM's
//     config (hypersdk_ovf.go).
//   - PropertyCollector paging: RetrievePropertiesEx honours
//     options.maxObjects and returns a token; ContinueRetrievePropertiesEx and
//     CancelRetrievePropertiesEx page through / drop the rest.

package simulator

import (
	"fmt"
	"net/url"
	"path"
	"reflect"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// ---------------------------------------------------------------------------
// Export

// ExportVm returns an HttpNfcLease for downloading the VM's disks. As on real
// vSphere the VM must be powered off (InvalidPowerState otherwise).
func (vm *VirtualMachine) ExportVm(ctx *Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)

	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		body.Fault_ = Fault("The attempted operation cannot be performed in the current state (Powered on).",
			&types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOff,
				ExistingState:  vm.Runtime.PowerState,
			})
		return body
	}

	ref, fault := newExportLease(ctx, vm, vm.Config.Hardware.Device)
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}

	body.Res = &types.ExportVmResponse{Returnval: ref}
	return body
}

// ExportSnapshot returns an HttpNfcLease for the disks of a snapshot. vcsim
// snapshots have no delta disks, so the URLs serve the same backing files as
// ExportVm; the VM may be powered on.
func (s *VirtualMachineSnapshot) ExportSnapshot(ctx *Context, req *types.ExportSnapshot) soap.HasFault {
	body := new(methods.ExportSnapshotBody)

	vm, ok := Map.Get(s.Vm).(*VirtualMachine)
	if !ok {
		body.Fault_ = Fault("", &types.ManagedObjectNotFound{Obj: s.Vm})
		return body
	}

	var ref types.ManagedObjectReference
	var fault types.BaseMethodFault
	ctx.WithLock(vm, func() {
		ref, fault = newExportLease(ctx, vm, s.Config.Hardware.Device)
	})
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}

	body.Res = &types.ExportSnapshotResponse{Returnval: ref}
	return body
}

// exportDisk is one disk of an export: where its bytes live and how the lease
// names it.
type exportDisk struct {
	disk     *types.VirtualDisk
	key      string // deviceUrl.key, e.g. /vm-63/ParaVirtualSCSIController0:0
	targetID string // disk-N.vmdk
	file     string // absolute path of the backing file on the host
}

// deviceKey is the real vSphere form of a disk's deviceUrl key:
// "/<vm moref>/<controller type><controller bus>:<unit>".
func deviceKey(vm *VirtualMachine, devices object.VirtualDeviceList, d *types.VirtualDisk) string {
	ctrl := "Controller"
	bus := int32(0)
	if c := devices.FindByKey(d.ControllerKey); c != nil {
		ctrl = reflect.TypeOf(c).Elem().Name()
		if bc, ok := c.(types.BaseVirtualController); ok {
			bus = bc.GetVirtualController().BusNumber
		}
	}
	unit := int32(0)
	if d.UnitNumber != nil {
		unit = *d.UnitNumber
	}
	return fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, ctrl, bus, unit)
}

// exportDisks lists the disks in devices, in device order.
func exportDisks(vm *VirtualMachine, devices []types.BaseVirtualDevice) ([]exportDisk, types.BaseMethodFault) {
	list := object.VirtualDeviceList(devices)
	var out []exportDisk
	for _, d := range list.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		file, fault := diskBackingPath(vm, disk)
		if fault != nil {
			return nil, fault
		}
		out = append(out, exportDisk{
			disk:     disk,
			key:      deviceKey(vm, list, disk),
			targetID: fmt.Sprintf("disk-%d.vmdk", len(out)),
			file:     file,
		})
	}
	return out, nil
}

// diskBackingPath resolves a disk's backing fileName ("[ds] dir/x.vmdk") to a
// path in the datastore's local directory.
func diskBackingPath(vm *VirtualMachine, disk *types.VirtualDisk) (string, types.BaseMethodFault) {
	backing, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return "", &types.NotSupported{}
	}
	p, fault := parseDatastorePath(backing.GetVirtualDeviceFileBackingInfo().FileName)
	if fault != nil {
		return "", fault
	}
	if vm.Runtime.Host == nil {
		return "", &types.InvalidState{}
	}
	ds, ok := Map.FindByName(p.Datastore, Map.Get(*vm.Runtime.Host).(*HostSystem).Datastore).(*Datastore)
	if !ok {
		return "", &types.NotFound{}
	}
	return path.Join(ds.Info.GetDatastoreInfo().Url, p.Path), nil
}

func newExportLease(ctx *Context, vm *VirtualMachine, devices []types.BaseVirtualDevice) (types.ManagedObjectReference, types.BaseMethodFault) {
	disks, fault := exportDisks(vm, devices)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}

	lease := NewHttpNfcLease(ctx, vm.Self)
	ref := lease.Reference()
	markExportLease(ref)

	info := &types.HttpNfcLeaseInfo{
		Lease:        ref,
		Entity:       vm.Self,
		LeaseTimeout: harness.leaseTimeoutSeconds(),
	}
	for _, d := range disks {
		lease.files[d.targetID] = d.file
		info.TotalDiskCapacityInKB += d.disk.CapacityInKB
		info.DeviceUrl = append(info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:       d.key,
			ImportKey: "",
			Url: (&url.URL{
				Scheme: harness.scheme(),
				Host:   "*",
				Path:   nfcPrefix + path.Join(ref.Value, d.targetID),
			}).String(),
			SslThumbprint: harness.sslThumbprint(),
			Disk:          types.NewBool(true),
			TargetId:      d.targetID,
		})
	}
	lease.Info = info

	// A lease fault rule can hold the lease in "initializing" for a while
	// and then make it ready or fail it.
	if rule := harness.takeLeaseRule(); rule != nil {
		lease.State = types.HttpNfcLeaseStateInitializing
		lease.Info = nil
		lease.InitializeProgress = 0
		go func() {
			time.Sleep(time.Duration(rule.InitializeMs) * time.Millisecond)
			Map.WithLock(ref, func() {
				if rule.Fault != "" {
					f, _ := newFault(rule.Fault)
					lease.State = types.HttpNfcLeaseStateError
					lease.Error = &types.LocalizedMethodFault{Fault: f, LocalizedMessage: rule.Message}
					return
				}
				lease.State = types.HttpNfcLeaseStateReady
				lease.Info = info
				lease.InitializeProgress = 100
			})
		}()
	}

	return ref, nil
}

// ---------------------------------------------------------------------------
// PropertyCollector paging

// pagingPropertyCollector replaces vcsim's PropertyCollector singleton (and
// the collectors made by CreatePropertyCollector) so that RetrievePropertiesEx
// honours maxObjects. It embeds the collector by value: vcsim's
// getManagedObject digs through the first struct field to the mo type.
type pagingPropertyCollector struct {
	PropertyCollector
}

type pendingResult struct {
	session string
	size    int
	rest    []types.ObjectContent
}

var pages = struct {
	sync.Mutex
	m map[string]*pendingResult
}{m: make(map[string]*pendingResult)}

// InstallPaging swaps the PropertyCollector singleton for the paging one.
// Call it after Model.Create and before serving requests.
func InstallPaging() {
	ref := Map.content().PropertyCollector
	pc := &pagingPropertyCollector{}
	pc.Self = ref
	Map.Put(pc)
}

func sessionKey(ctx *Context) string {
	if ctx.Session == nil {
		return ""
	}
	return ctx.Session.Key
}

// page cuts res down to size objects and parks the rest under a new token.
func page(ctx *Context, res *types.RetrieveResult, objects []types.ObjectContent, size int) {
	if len(objects) <= size {
		res.Objects = objects
		res.Token = ""
		return
	}
	rest := make([]types.ObjectContent, len(objects)-size)
	copy(rest, objects[size:])
	token := uuid.New().String()
	pages.Lock()
	pages.m[token] = &pendingResult{session: sessionKey(ctx), size: size, rest: rest}
	pages.Unlock()
	res.Objects = objects[:size]
	res.Token = token
}

// RetrievePropertiesEx shadows vcsim's method and pages the result.
func (pc *pagingPropertyCollector) RetrievePropertiesEx(ctx *Context, r *types.RetrievePropertiesEx) soap.HasFault {
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, r)
	body, ok := res.(*methods.RetrievePropertiesExBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil {
		return res
	}
	max := r.Options.MaxObjects
	if max <= 0 {
		return res
	}
	rr := body.Res.Returnval
	page(ctx, rr, rr.Objects, int(max))
	return res
}

// CreatePropertyCollector shadows vcsim's so private collectors page too.
func (pc *pagingPropertyCollector) CreatePropertyCollector(ctx *Context, c *types.CreatePropertyCollector) soap.HasFault {
	cpc := &pagingPropertyCollector{}
	cpc.Self.Type = "PropertyCollector"
	return &methods.CreatePropertyCollectorBody{
		Res: &types.CreatePropertyCollectorResponse{
			Returnval: ctx.Session.Put(cpc).Reference(),
		},
	}
}

func invalidToken(token string) *soap.Fault {
	return Fault(fmt.Sprintf("invalid or expired token %q", token), &types.InvalidArgument{InvalidProperty: "token"})
}

// ContinueRetrievePropertiesEx returns the next page for a token. Each page
// gets a fresh token; the old one is invalid afterwards.
func (pc *PropertyCollector) ContinueRetrievePropertiesEx(ctx *Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := new(methods.ContinueRetrievePropertiesExBody)

	pages.Lock()
	p, ok := pages.m[r.Token]
	if ok && p.session == sessionKey(ctx) {
		delete(pages.m, r.Token)
	} else {
		ok = false
	}
	pages.Unlock()
	if !ok {
		body.Fault_ = invalidToken(r.Token)
		return body
	}

	rr := new(types.RetrieveResult)
	page(ctx, rr, p.rest, p.size)
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: *rr}
	return body
}

// CancelRetrievePropertiesEx drops the rest of a paged result.
func (pc *PropertyCollector) CancelRetrievePropertiesEx(ctx *Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	body := new(methods.CancelRetrievePropertiesExBody)

	pages.Lock()
	p, ok := pages.m[r.Token]
	if ok && p.session == sessionKey(ctx) {
		delete(pages.m, r.Token)
	} else {
		ok = false
	}
	pages.Unlock()
	if !ok {
		body.Fault_ = invalidToken(r.Token)
		return body
	}
	body.Res = new(types.CancelRetrievePropertiesExResponse)
	return body
}

// ---------------------------------------------------------------------------
// CreateDescriptor

// CreateDescriptor builds an OVF descriptor from a VM's config (or a
// snapshot's, with cdp.snapshot). Files named in cdp.ovfFiles (matched by
// deviceId = the export lease's deviceUrl key) get their path and size;
// disks without an entry get a placeholder "disk-N.vmdk" without a size.
func (m *OvfManager) CreateDescriptor(ctx *Context, req *types.CreateDescriptor) soap.HasFault {
	body := new(methods.CreateDescriptorBody)

	vm, ok := ctx.Map.Get(req.Obj).(*VirtualMachine)
	if !ok {
		if ctx.Map.Get(req.Obj) == nil {
			body.Fault_ = Fault("", &types.ManagedObjectNotFound{Obj: req.Obj})
		} else {
			body.Fault_ = Fault(fmt.Sprintf("CreateDescriptor of %s is not supported by the harness", req.Obj.Type),
				&types.NotSupported{})
		}
		return body
	}

	var descriptor string
	var fault types.BaseMethodFault
	ctx.WithLock(vm, func() {
		config := vm.Config
		if req.Cdp.Snapshot != nil {
			s, ok := ctx.Map.Get(*req.Cdp.Snapshot).(*VirtualMachineSnapshot)
			if !ok || s.Vm != vm.Self {
				fault = &types.InvalidArgument{InvalidProperty: "cdp.snapshot"}
				return
			}
			config = &s.Config
		}
		descriptor, fault = buildDescriptor(vm, config, &req.Cdp)
	})
	if fault != nil {
		body.Fault_ = Fault("", fault)
		return body
	}

	body.Res = &types.CreateDescriptorResponse{
		Returnval: types.OvfCreateDescriptorResult{
			OvfDescriptor:     descriptor,
			IncludeImageFiles: types.NewBool(false),
		},
	}
	return body
}
