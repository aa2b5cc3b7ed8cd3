// hypersdk vcsim harness: the OVF descriptor behind OvfManager.CreateDescriptor.
//
// The output follows what vCenter writes for a VM (OVF 1.0 namespaces,
// rasd elements in schema order, vmw:osType, vmw:Config firmware) closely
// enough that vcsim's own CreateImportSpec accepts it, so an
// export -> descriptor -> import round trip works inside one simulator.

package simulator

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// cimOSType maps a few guestIds to CIM_OperatingSystem ids (OperatingSystemSection ovf:id).
func cimOSType(guestID string) int {
	switch guestID {
	case "otherGuest":
		return 1
	case "otherGuest64":
		return 102
	case "otherLinuxGuest":
		return 36
	case "otherLinux64Guest":
		return 101
	case "ubuntu64Guest":
		return 94
	case "centos64Guest", "centos7_64Guest", "centos8_64Guest":
		return 107
	case "rhel7_64Guest", "rhel8_64Guest":
		return 80
	case "windows9_64Guest", "windows9Server64Guest":
		return 103
	}
	if strings.HasSuffix(guestID, "64Guest") {
		return 102
	}
	return 1
}

type rasdItem struct {
	fields map[string]string // rasd element name -> text
	extra  string            // raw XML appended after the rasd elements
}

// rasdOrder is the element order of CIM_ResourceAllocationSettingData (alphabetical).
var rasdOrder = []string{
	"Address", "AddressOnParent", "AllocationUnits", "AutomaticAllocation", "Connection",
	"Description", "ElementName", "HostResource", "InstanceID", "Parent",
	"ResourceSubType", "ResourceType", "VirtualQuantity",
}

func (it rasdItem) write(b *strings.Builder) {
	b.WriteString("      <Item>\n")
	for _, k := range rasdOrder {
		if v, ok := it.fields[k]; ok {
			fmt.Fprintf(b, "        <rasd:%s>%s</rasd:%s>\n", k, xmlEscape(v), k)
		}
	}
	b.WriteString(it.extra)
	b.WriteString("      </Item>\n")
}

func controllerRasd(c types.BaseVirtualDevice) (resourceType int, subType string, ok bool) {
	switch c.(type) {
	case *types.ParaVirtualSCSIController:
		return 6, "VirtualSCSI", true
	case *types.VirtualLsiLogicController:
		return 6, "lsilogic", true
	case *types.VirtualLsiLogicSASController:
		return 6, "lsilogicsas", true
	case *types.VirtualBusLogicController:
		return 6, "buslogic", true
	case *types.VirtualIDEController:
		return 5, "", true
	case *types.VirtualAHCIController:
		return 20, "vmware.sata.ahci", true
	case *types.VirtualNVMEController:
		return 20, "vmware.nvme.controller", true
	}
	return 0, "", false
}

func nicSubType(d types.BaseVirtualDevice) string {
	switch d.(type) {
	case *types.VirtualE1000:
		return "E1000"
	case *types.VirtualE1000e:
		return "E1000e"
	case *types.VirtualVmxnet3:
		return "VmxNet3"
	case *types.VirtualVmxnet2:
		return "VmxNet2"
	case *types.VirtualPCNet32:
		return "PCNet32"
	}
	return strings.TrimPrefix(reflect.TypeOf(d).Elem().Name(), "Virtual")
}

// nicNetworkName is the network a NIC is connected to, by name.
func nicNetworkName(d types.BaseVirtualDevice) string {
	switch b := d.GetVirtualDevice().Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		return b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		for _, pg := range Map.All("DistributedVirtualPortgroup") {
			if p, ok := pg.(*DistributedVirtualPortgroup); ok && p.Key == b.Port.PortgroupKey {
				return p.Name
			}
		}
		return b.Port.PortgroupKey
	case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
		return b.OpaqueNetworkId
	}
	return ""
}

func diskCapacityBytes(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

func buildDescriptor(vm *VirtualMachine, config *types.VirtualMachineConfigInfo, cdp *types.OvfCreateDescriptorParams) (string, types.BaseMethodFault) {
	devices := object.VirtualDeviceList(config.Hardware.Device)
	disks, fault := exportDisks(vm, config.Hardware.Device)
	if fault != nil {
		return "", fault
	}

	name := config.Name
	if cdp.Name != "" {
		name = cdp.Name
	}

	files := make(map[string]types.OvfFile)
	for _, f := range cdp.OvfFiles {
		files[f.DeviceId] = f
	}

	var refs, diskSection strings.Builder
	diskIDs := make(map[int32]string) // device key -> ovf disk id
	for i, d := range disks {
		fileID := fmt.Sprintf("file%d", i+1)
		diskID := fmt.Sprintf("vmdisk%d", i+1)
		diskIDs[d.disk.Key] = diskID
		href := d.targetID
		size := ""
		if f, ok := files[d.key]; ok {
			href = f.Path
			size = fmt.Sprintf(` ovf:size="%d"`, f.Size)
		}
		fmt.Fprintf(&refs, "    <File ovf:href=\"%s\" ovf:id=\"%s\"%s/>\n", xmlEscape(href), fileID, size)
		fmt.Fprintf(&diskSection,
			"    <Disk ovf:capacity=\"%d\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"%s\" ovf:fileRef=\"%s\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
			diskCapacityBytes(d.disk), diskID, fileID)
	}

	var items []rasdItem
	instance := 0
	next := func() string { instance++; return fmt.Sprint(instance) }

	cpus := config.Hardware.NumCPU
	cpu := rasdItem{fields: map[string]string{
		"AllocationUnits": "hertz * 10^6",
		"Description":     "Number of Virtual CPUs",
		"ElementName":     fmt.Sprintf("%d virtual CPU(s)", cpus),
		"InstanceID":      next(),
		"ResourceType":    "3",
		"VirtualQuantity": fmt.Sprint(cpus),
	}}
	if cps := config.Hardware.NumCoresPerSocket; cps > 1 {
		cpu.extra = fmt.Sprintf("        <vmw:CoresPerSocket ovf:required=\"false\">%d</vmw:CoresPerSocket>\n", cps)
	}
	items = append(items, cpu)
	items = append(items, rasdItem{fields: map[string]string{
		"AllocationUnits": "byte * 2^20",
		"Description":     "Memory Size",
		"ElementName":     fmt.Sprintf("%dMB of memory", config.Hardware.MemoryMB),
		"InstanceID":      next(),
		"ResourceType":    "4",
		"VirtualQuantity": fmt.Sprint(config.Hardware.MemoryMB),
	}})

	// Controllers first, so that disks and CD-ROMs can name their Parent.
	parents := make(map[int32]string) // controller key -> InstanceID
	for _, d := range devices {
		rt, sub, ok := controllerRasd(d)
		if !ok {
			continue
		}
		c := d.(types.BaseVirtualController).GetVirtualController()
		id := next()
		parents[c.Key] = id
		kind := "SCSI"
		switch rt {
		case 5:
			kind = "IDE"
		case 20:
			kind = "SATA"
			if sub == "vmware.nvme.controller" {
				kind = "NVME"
			}
		}
		f := map[string]string{
			"Address":      fmt.Sprint(c.BusNumber),
			"Description":  fmt.Sprintf("%s Controller", kind),
			"ElementName":  fmt.Sprintf("%s controller %d", kind, c.BusNumber),
			"InstanceID":   id,
			"ResourceType": fmt.Sprint(rt),
		}
		if sub != "" {
			f["ResourceSubType"] = sub
		}
		items = append(items, rasdItem{fields: f})
	}

	ndisk, ncd, nnic := 0, 0, 0
	networks := []string{}
	seenNet := make(map[string]bool)
	for _, d := range devices {
		vd := d.GetVirtualDevice()
		unit := int32(0)
		if vd.UnitNumber != nil {
			unit = *vd.UnitNumber
		}
		switch dev := d.(type) {
		case *types.VirtualDisk:
			ndisk++
			items = append(items, rasdItem{fields: map[string]string{
				"AddressOnParent": fmt.Sprint(unit),
				"ElementName":     fmt.Sprintf("Hard disk %d", ndisk),
				"HostResource":    "ovf:/disk/" + diskIDs[dev.Key],
				"InstanceID":      next(),
				"Parent":          parents[vd.ControllerKey],
				"ResourceType":    "17",
			}})
		case *types.VirtualCdrom:
			// Only CD-ROMs on IDE or SATA controllers: vcsim's model puts
			// its CD-ROM on the pvscsi controller, which real vSphere
			// does not allow and vcsim's own CreateImportSpec cannot
			// read back.
			switch devices.FindByKey(vd.ControllerKey).(type) {
			case *types.VirtualIDEController, *types.VirtualAHCIController:
			default:
				continue
			}
			ncd++
			sub := "vmware.cdrom.remotepassthrough"
			if _, iso := dev.Backing.(*types.VirtualCdromIsoBackingInfo); iso {
				sub = "vmware.cdrom.iso"
			}
			items = append(items, rasdItem{fields: map[string]string{
				"AddressOnParent":     fmt.Sprint(unit),
				"AutomaticAllocation": "false",
				"ElementName":         fmt.Sprintf("CD/DVD drive %d", ncd),
				"InstanceID":          next(),
				"Parent":              parents[vd.ControllerKey],
				"ResourceSubType":     sub,
				"ResourceType":        "15",
			}})
		case types.BaseVirtualEthernetCard:
			nnic++
			net := nicNetworkName(d)
			if !seenNet[net] {
				seenNet[net] = true
				networks = append(networks, net)
			}
			auto := "true"
			if vd.Connectable != nil && !vd.Connectable.StartConnected {
				auto = "false"
			}
			items = append(items, rasdItem{fields: map[string]string{
				"AddressOnParent":     fmt.Sprint(6 + nnic),
				"AutomaticAllocation": auto,
				"Connection":          net,
				"ElementName":         fmt.Sprintf("Network adapter %d", nnic),
				"InstanceID":          next(),
				"ResourceSubType":     nicSubType(d),
				"ResourceType":        "10",
			}})
		}
	}

	firmware := config.Firmware
	if firmware == "" {
		firmware = "bios"
	}

	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	b.WriteString(`<Envelope vmw:buildId="build-5973321" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">` + "\n")
	b.WriteString("  <References>\n" + refs.String() + "  </References>\n")
	if len(disks) > 0 {
		b.WriteString("  <DiskSection>\n    <Info>Virtual disk information</Info>\n" + diskSection.String() + "  </DiskSection>\n")
	}
	b.WriteString("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n")
	for _, n := range networks {
		fmt.Fprintf(&b, "    <Network ovf:name=\"%s\">\n      <Description>The %s network</Description>\n    </Network>\n", xmlEscape(n), xmlEscape(n))
	}
	b.WriteString("  </NetworkSection>\n")
	fmt.Fprintf(&b, "  <VirtualSystem ovf:id=\"%s\">\n    <Info>A virtual machine</Info>\n    <Name>%s</Name>\n", xmlEscape(name), xmlEscape(name))
	if cdp.Description != "" || config.Annotation != "" {
		desc := cdp.Description
		if desc == "" {
			desc = config.Annotation
		}
		fmt.Fprintf(&b, "    <AnnotationSection>\n      <Info>A human-readable annotation</Info>\n      <Annotation>%s</Annotation>\n    </AnnotationSection>\n", xmlEscape(desc))
	}
	fmt.Fprintf(&b, "    <OperatingSystemSection ovf:id=\"%d\" vmw:osType=\"%s\">\n      <Info>The kind of installed guest operating system</Info>\n", cimOSType(config.GuestId), xmlEscape(config.GuestId))
	if config.GuestFullName != "" {
		fmt.Fprintf(&b, "      <Description>%s</Description>\n", xmlEscape(config.GuestFullName))
	}
	b.WriteString("    </OperatingSystemSection>\n")
	b.WriteString("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n      <System>\n")
	b.WriteString("        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n")
	fmt.Fprintf(&b, "        <vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>\n", xmlEscape(name))
	fmt.Fprintf(&b, "        <vssd:VirtualSystemType>%s</vssd:VirtualSystemType>\n      </System>\n", xmlEscape(config.Version))
	for _, it := range items {
		it.write(&b)
	}
	fmt.Fprintf(&b, "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"%s\"/>\n", xmlEscape(firmware))
	if config.BootOptions != nil && config.BootOptions.EfiSecureBootEnabled != nil && *config.BootOptions.EfiSecureBootEnabled {
		b.WriteString("      <vmw:Config ovf:required=\"false\" vmw:key=\"bootOptions.efiSecureBootEnabled\" vmw:value=\"true\"/>\n")
	}
	b.WriteString("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n")
	return b.String(), nil
}
