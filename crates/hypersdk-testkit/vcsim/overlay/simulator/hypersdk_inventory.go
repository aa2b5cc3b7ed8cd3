// hypersdk vcsim harness: GET /_hypersdk/inventory, the simulator's inventory
// read straight from vcsim's object registry (Map), independent of SOAP, so
// tests can compare what a client discovered with what vcsim holds.

package simulator

import (
	"reflect"
	"sort"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// InvEntity is any inventory object: moref, name, inventory path and parent.
type InvEntity struct {
	Moref  string `json:"moref"`
	Type   string `json:"type"`
	Name   string `json:"name"`
	Path   string `json:"path"`
	Parent string `json:"parent,omitempty"`
}

// InvHost is a HostSystem.
type InvHost struct {
	InvEntity
	// Cluster is the moref of the ClusterComputeResource, empty for a standalone host.
	Cluster string `json:"cluster,omitempty"`
}

// InvDatastore is a Datastore with its local directory.
type InvDatastore struct {
	InvEntity
	URL string `json:"url"`
}

// InvDisk is one VirtualDisk of a VM.
type InvDisk struct {
	Key           int32  `json:"key"`
	Label         string `json:"label"`
	FileName      string `json:"file_name"`
	Datastore     string `json:"datastore"`
	CapacityKB    int64  `json:"capacity_kb"`
	CapacityBytes int64  `json:"capacity_bytes"`
	ControllerKey int32  `json:"controller_key"`
	UnitNumber    int32  `json:"unit_number"`
	ExportKey     string `json:"export_key"`
	Path          string `json:"path"`
	ThinProvision bool   `json:"thin_provisioned"`
}

// InvNic is one ethernet card of a VM.
type InvNic struct {
	Key     int32  `json:"key"`
	Label   string `json:"label"`
	Type    string `json:"type"`
	MAC     string `json:"mac"`
	Network string `json:"network"`
}

// InvSnapshot is one node of a VM's snapshot tree.
type InvSnapshot struct {
	Moref       string        `json:"moref"`
	Name        string        `json:"name"`
	Description string        `json:"description"`
	ID          int32         `json:"id"`
	Children    []InvSnapshot `json:"children"`
}

// InvVM is a VirtualMachine.
type InvVM struct {
	InvEntity
	UUID              string        `json:"uuid"`
	InstanceUUID      string        `json:"instance_uuid"`
	PowerState        string        `json:"power_state"`
	GuestID           string        `json:"guest_id"`
	GuestFullName     string        `json:"guest_full_name"`
	Firmware          string        `json:"firmware"`
	HardwareVersion   string        `json:"hardware_version"`
	NumCPU            int32         `json:"num_cpu"`
	NumCoresPerSocket int32         `json:"num_cores_per_socket"`
	MemoryMB          int32         `json:"memory_mb"`
	Template          bool          `json:"template"`
	ChangeTracking    bool          `json:"change_tracking"`
	VmxPath           string        `json:"vmx_path"`
	Host              string        `json:"host"`
	ResourcePool      string        `json:"resource_pool"`
	Datastores        []string      `json:"datastores"`
	Disks             []InvDisk     `json:"disks"`
	Nics              []InvNic      `json:"nics"`
	Snapshots         []InvSnapshot `json:"snapshots"`
	CurrentSnapshot   string        `json:"current_snapshot,omitempty"`
}

// Inventory is the whole dump.
type Inventory struct {
	APIType       string         `json:"api_type"`
	APIVersion    string         `json:"api_version"`
	Datacenters   []InvEntity    `json:"datacenters"`
	Folders       []InvEntity    `json:"folders"`
	Clusters      []InvEntity    `json:"clusters"`
	Hosts         []InvHost      `json:"hosts"`
	ResourcePools []InvEntity    `json:"resource_pools"`
	Datastores    []InvDatastore `json:"datastores"`
	Networks      []InvEntity    `json:"networks"`
	VMs           []InvVM        `json:"vms"`
}

// inventoryPath is the entity's path from the root folder, e.g. /DC0/vm/DC0_H0_VM0.
func inventoryPath(e mo.Entity) string {
	var names []string
	for {
		me := e.Entity()
		if me.Parent == nil {
			break // the root folder has no name in paths
		}
		names = append(names, me.Name)
		p, ok := Map.Get(*me.Parent).(mo.Entity)
		if !ok {
			break
		}
		e = p
	}
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	return "/" + strings.Join(names, "/")
}

func invEntity(e mo.Entity) InvEntity {
	me := e.Entity()
	out := InvEntity{
		Moref: me.Self.Value,
		Type:  me.Self.Type,
		Name:  me.Name,
		Path:  inventoryPath(e),
	}
	if me.Parent != nil {
		out.Parent = me.Parent.Value
	}
	return out
}

func invSnapshots(tree []types.VirtualMachineSnapshotTree) []InvSnapshot {
	out := []InvSnapshot{}
	for _, t := range tree {
		out = append(out, InvSnapshot{
			Moref:       t.Snapshot.Value,
			Name:        t.Name,
			Description: t.Description,
			ID:          t.Id,
			Children:    invSnapshots(t.ChildSnapshotList),
		})
	}
	return out
}

func invVM(vm *VirtualMachine) InvVM {
	out := InvVM{
		InvEntity:  invEntity(vm),
		PowerState: string(vm.Runtime.PowerState),
		Datastores: []string{},
		Disks:      []InvDisk{},
		Nics:       []InvNic{},
		Snapshots:  []InvSnapshot{},
	}
	if vm.Runtime.Host != nil {
		out.Host = vm.Runtime.Host.Value
	}
	if vm.ResourcePool != nil {
		out.ResourcePool = vm.ResourcePool.Value
	}
	for _, ds := range vm.Datastore {
		if e, ok := Map.Get(ds).(mo.Entity); ok {
			out.Datastores = append(out.Datastores, e.Entity().Name)
		}
	}
	if c := vm.Config; c != nil {
		out.UUID = c.Uuid
		out.InstanceUUID = c.InstanceUuid
		out.GuestID = c.GuestId
		out.GuestFullName = c.GuestFullName
		out.Firmware = c.Firmware
		out.HardwareVersion = c.Version
		out.NumCPU = c.Hardware.NumCPU
		out.NumCoresPerSocket = c.Hardware.NumCoresPerSocket
		out.MemoryMB = c.Hardware.MemoryMB
		out.Template = c.Template
		out.ChangeTracking = c.ChangeTrackingEnabled != nil && *c.ChangeTrackingEnabled
		out.VmxPath = c.Files.VmPathName

		devices := object.VirtualDeviceList(c.Hardware.Device)
		paths := make(map[int32]exportDisk)
		if disks, fault := exportDisks(vm, c.Hardware.Device); fault == nil {
			for _, d := range disks {
				paths[d.disk.Key] = d
			}
		}
		for _, d := range devices {
			vd := d.GetVirtualDevice()
			label := ""
			if desc := vd.DeviceInfo.GetDescription(); desc != nil {
				label = desc.Label
			}
			switch dev := d.(type) {
			case *types.VirtualDisk:
				disk := InvDisk{
					Key:           dev.Key,
					Label:         label,
					CapacityKB:    dev.CapacityInKB,
					CapacityBytes: diskCapacityBytes(dev),
					ControllerKey: dev.ControllerKey,
				}
				if dev.UnitNumber != nil {
					disk.UnitNumber = *dev.UnitNumber
				}
				if b, ok := dev.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					disk.ThinProvision = b.ThinProvisioned != nil && *b.ThinProvisioned
				}
				if b, ok := dev.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
					fb := b.GetVirtualDeviceFileBackingInfo()
					disk.FileName = fb.FileName
					if fb.Datastore != nil {
						if e, ok := Map.Get(*fb.Datastore).(mo.Entity); ok {
							disk.Datastore = e.Entity().Name
						}
					}
				}
				if p, ok := paths[dev.Key]; ok {
					disk.ExportKey = p.key
					disk.Path = p.file
				}
				out.Disks = append(out.Disks, disk)
			case types.BaseVirtualEthernetCard:
				out.Nics = append(out.Nics, InvNic{
					Key:     vd.Key,
					Label:   label,
					Type:    reflect.TypeOf(d).Elem().Name(),
					MAC:     dev.GetVirtualEthernetCard().MacAddress,
					Network: nicNetworkName(d),
				})
			}
		}
	}
	if s := vm.Snapshot; s != nil {
		out.Snapshots = invSnapshots(s.RootSnapshotList)
		if s.CurrentSnapshot != nil {
			out.CurrentSnapshot = s.CurrentSnapshot.Value
		}
	}
	return out
}

// BuildInventory reads the whole inventory from Map, locking each object
// while it is read.
func BuildInventory() *Inventory {
	about := Map.content().About
	inv := &Inventory{
		APIType:       about.ApiType,
		APIVersion:    about.ApiVersion,
		Datacenters:   []InvEntity{},
		Folders:       []InvEntity{},
		Clusters:      []InvEntity{},
		Hosts:         []InvHost{},
		ResourcePools: []InvEntity{},
		Datastores:    []InvDatastore{},
		Networks:      []InvEntity{},
		VMs:           []InvVM{},
	}

	for _, e := range Map.All("") {
		e := e
		Map.WithLock(e, func() {
			switch o := e.(type) {
			case *Datacenter:
				inv.Datacenters = append(inv.Datacenters, invEntity(o))
			case *Folder:
				if o.Parent != nil {
					inv.Folders = append(inv.Folders, invEntity(o))
				}
			case *ClusterComputeResource:
				inv.Clusters = append(inv.Clusters, invEntity(o))
			case *HostSystem:
				h := InvHost{InvEntity: invEntity(o)}
				if o.Parent != nil && o.Parent.Type == "ClusterComputeResource" {
					h.Cluster = o.Parent.Value
				}
				inv.Hosts = append(inv.Hosts, h)
			case *ResourcePool:
				inv.ResourcePools = append(inv.ResourcePools, invEntity(o))
			case *Datastore:
				inv.Datastores = append(inv.Datastores, InvDatastore{
					InvEntity: invEntity(o),
					URL:       o.Info.GetDatastoreInfo().Url,
				})
			case *mo.Network, *DistributedVirtualPortgroup:
				inv.Networks = append(inv.Networks, invEntity(e))
			case *VirtualMachine:
				inv.VMs = append(inv.VMs, invVM(o))
			}
		})
	}

	byName := func(a, b InvEntity) bool {
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Moref < b.Moref
	}
	for _, list := range [][]InvEntity{inv.Datacenters, inv.Folders, inv.Clusters, inv.ResourcePools, inv.Networks} {
		list := list
		sort.Slice(list, func(i, j int) bool { return byName(list[i], list[j]) })
	}
	sort.Slice(inv.Hosts, func(i, j int) bool { return byName(inv.Hosts[i].InvEntity, inv.Hosts[j].InvEntity) })
	sort.Slice(inv.Datastores, func(i, j int) bool { return byName(inv.Datastores[i].InvEntity, inv.Datastores[j].InvEntity) })
	sort.Slice(inv.VMs, func(i, j int) bool { return byName(inv.VMs[i].InvEntity, inv.VMs[j].InvEntity) })
	return inv
}
