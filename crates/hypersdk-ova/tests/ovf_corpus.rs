//! The OVF parser against real descriptors from other tools.
//!
//! Every fact asserted here was read from the XML file by eye (see
//! testdata/SOURCES.md for each file's origin and oddities), not copied from
//! the parser's output.

use hypersdk_core::model::{ControllerKind, DiskFormat, Firmware, OsFamily, VmInfo};
use hypersdk_ova::ovf::{
    Content, DriveKind, Envelope, ItemKind, OvfVersion, Section, SectionStyle,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn read(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/ovf/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load(name: &str) -> Envelope {
    Envelope::parse(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn vms(env: &Envelope) -> Vec<VmInfo> {
    env.virtual_systems()
        .iter()
        .map(|vs| vs.to_vm_info(env).expect("to_vm_info"))
        .collect()
}

fn only_vm(name: &str) -> (Envelope, VmInfo) {
    let env = load(name);
    let mut v = vms(&env);
    assert_eq!(v.len(), 1, "{name}: one virtual system");
    (env, v.remove(0))
}

fn capacities(vm: &VmInfo) -> Vec<u64> {
    vm.disks.iter().map(|d| d.capacity_bytes).collect()
}

fn corpus() -> Vec<String> {
    let dir = format!("{}/testdata/ovf", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("testdata/ovf")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ovf"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_descriptor_parses_and_converts() {
    let names = corpus();
    assert_eq!(names.len(), 26);
    for name in names {
        let env = load(&name);
        assert!(!env.virtual_systems().is_empty(), "{name}");
        for vs in env.virtual_systems() {
            vs.to_vm_info(&env)
                .unwrap_or_else(|e| panic!("{name}/{}: {e}", vs.id));
        }
    }
}

#[test]
fn every_descriptor_round_trips_through_to_xml() {
    for name in corpus() {
        let env = load(&name);
        let xml = env.to_xml();
        let again = Envelope::parse(xml.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: re-parse failed: {e}\n{xml}"));
        assert_eq!(again, env, "{name}: model differs after to_xml");
        // Writing is deterministic: a second trip gives the same text.
        assert_eq!(again.to_xml(), xml, "{name}: second write differs");
        // And the VM facts survive.
        assert_eq!(vms(&again), vms(&env), "{name}");
    }
}

#[test]
fn cot_input_deployment_options_and_extra_files() {
    let (env, vm) = only_vm("cot-input.ovf");
    let hrefs: Vec<&str> = env.references().iter().map(|f| f.href.as_str()).collect();
    assert_eq!(hrefs, ["input.vmdk", "input.iso", "sample_cfg.txt"]);
    assert_eq!(env.references()[0].size, Some(152576));
    assert_eq!(env.references()[2].id, "textfile");
    let cfgs: Vec<&str> = env.configurations().map(|c| c.id.as_str()).collect();
    assert_eq!(cfgs, ["1CPU-1GB-1NIC", "2CPU-2GB-1NIC", "4CPU-4GB-3NIC"]);
    assert_eq!(env.default_configuration(), Some("4CPU-4GB-3NIC"));
    // Default configuration: the 4-CPU items replace the unmarked 1-CPU ones.
    assert_eq!((vm.cpus, vm.memory_mib), (4, 4096));
    assert_eq!(capacities(&vm), [GIB]);
    assert_eq!(vm.nics.len(), 3);
    let vs = env.virtual_systems()[0];
    let small = vs.to_vm_info_for(&env, Some("1CPU-1GB-1NIC")).expect("vm");
    assert_eq!(
        (small.cpus, small.memory_mib, small.nics.len()),
        (1, 1024, 1)
    );
    let hw = vs.hardware(Some("4CPU-4GB-3NIC"));
    assert_eq!(hw.virtual_system_types, ["vmx-07", "vmx-08"]);
    assert_eq!(vm.firmware, Firmware::Unknown);
    let props = vs.products().flat_map(|p| p.properties()).count();
    assert_eq!(props, 10);
}

#[test]
fn cot_iosv_blank_flash_disk_and_mixed_units() {
    let (env, vm) = only_vm("cot-iosv.ovf");
    // File id equals a file name.
    assert_eq!(env.references()[0].id, "vios-adventerprisek9-m.vmdk");
    let flash = env.disk("flash2").expect("flash2");
    assert_eq!(flash.file_ref, None);
    assert_eq!(flash.capacity_bytes(), Some(128 * MIB));
    assert_eq!(
        env.disk("vios-adventerprisek9-m.vmdk")
            .and_then(|d| d.capacity_bytes()),
        Some(GIB)
    );
    assert_eq!(capacities(&vm), [GIB, 128 * MIB]);
    assert_eq!(vm.disks[0].backing.as_deref(), Some("input.vmdk"));
    assert_eq!(vm.disks[1].backing, None);
    assert!(
        vm.disks
            .iter()
            .all(|d| d.controller.as_ref().map(|c| c.kind) == Some(ControllerKind::Ide))
    );
    // 16 NIC items in all; the default configuration (2NIC) uses 2, the
    // 16NIC one all of them.
    let vs = env.virtual_systems()[0];
    let nic_items = vs
        .hardware_sections()
        .flat_map(|h| h.items.iter())
        .filter(|i| i.resource_type() == Some(10))
        .count();
    assert_eq!(nic_items, 16);
    assert_eq!(vm.nics.len(), 2);
    let big = vs.to_vm_info_for(&env, Some("1CPU-3GB-16NIC")).expect("vm");
    assert_eq!(big.nics.len(), 16);
    assert_eq!(big.memory_mib, 3072);
    assert_eq!(vm.guest_os.id.as_deref(), Some("otherGuest"));
}

#[test]
fn virtualbox_ovf2_storage_and_ethernet_port_items() {
    let (env, vm) = only_vm("cot-ubuntu-virtualbox-ovf2.0.ovf");
    assert_eq!(env.version, OvfVersion::V2);
    assert_eq!(env.version_attr(), Some("2.0"));
    assert_eq!(env.references()[0].size, None);
    let hw = env.virtual_systems()[0]
        .hardware_sections()
        .next()
        .expect("hardware");
    let kinds: Vec<ItemKind> = hw.items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ItemKind::StorageItem)
            .count(),
        2
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ItemKind::EthernetPortItem)
            .count(),
        1
    );
    assert_eq!(capacities(&vm), [8 * GIB]);
    let c = vm.disks[0].controller.as_ref().expect("controller");
    assert_eq!((c.kind, c.bus, c.unit), (ControllerKind::Sata, 0, 0));
    assert_eq!(vm.nics.len(), 1);
    assert_eq!(vm.nics[0].adapter.as_deref(), Some("e1000"));
    assert_eq!(vm.nics[0].network.as_deref(), Some("NAT"));
    // vbox:Machine is kept and has no <Firmware>: VirtualBox's default BIOS.
    let vs = env.virtual_systems()[0];
    let machine = vs
        .other_sections()
        .find(|e| e.name == "Machine")
        .expect("vbox:Machine");
    assert_eq!(
        machine.namespace.as_deref(),
        Some("http://www.virtualbox.org/ovf/machine")
    );
    assert_eq!(vm.firmware, Firmware::Bios);
    assert_eq!((vm.cpus, vm.memory_mib), (1, 512));
    assert_eq!(vm.guest_os.id.as_deref(), Some("Ubuntu_64"));
    assert_eq!(vm.guest_os.family, OsFamily::Linux);
    // The DVD sits on the second IDE controller.
    let drives = vs.hardware(None).drives;
    assert_eq!(drives.len(), 1);
    assert_eq!(drives[0].kind, DriveKind::Cd);
}

#[test]
fn ovf_0_9_xsi_type_sections() {
    let (env, vm) = only_vm("cot-v0.9.ovf");
    assert_eq!(env.version, OvfVersion::V0_9);
    assert_eq!(env.section_style, SectionStyle::XsiType);
    assert_eq!(capacities(&vm), [GIB]);
    assert_eq!(vm.disks[0].format, DiskFormat::VmdkMonolithicSparse);
    assert_eq!((vm.cpus, vm.memory_mib), (1, 8192));
    assert_eq!(vm.nics.len(), 1);
    assert_eq!(vm.nics[0].adapter.as_deref(), Some("pcnet32"));
    let vs = env.virtual_systems()[0];
    assert!(
        vs.annotation()
            .is_some_and(|a| a.starts_with("Hello world!"))
    );
    // The EulaSection is kept raw.
    assert!(
        vs.other_sections()
            .any(|e| e.attr_any_ns("type") == Some("ovf:EulaSection_Type"))
    );
    let drives = vs.hardware(None).drives;
    assert_eq!(drives.len(), 1);
    let hw = vs.hardware(None);
    assert_eq!(
        hw.controllers[drives[0].controller.expect("ctrl")].kind,
        ControllerKind::Ide
    );

    let (env, vm) = only_vm("govmomi-vbox5-virtualbox-ovf0.9.ovf");
    assert_eq!(env.version, OvfVersion::V0_9);
    assert_eq!(capacities(&vm), [4 * MIB, 10 * GIB]);
    let kinds: Vec<ControllerKind> = vm
        .disks
        .iter()
        .map(|d| d.controller.as_ref().expect("ctrl").kind)
        .collect();
    assert_eq!(kinds, [ControllerKind::Ide, ControllerKind::Sata]);
    assert_eq!(vm.memory_mib, 384);
    assert_eq!(vm.nics.len(), 1);

    let (env, vm) = only_vm("govmomi-smallxp-ovf0.9.ovf");
    assert_eq!(env.version, OvfVersion::V0_9);
    assert_eq!(capacities(&vm), [1610612736]);
    assert_eq!(vm.nics.len(), 1);
}

#[test]
fn vmware_ovftool_descriptors() {
    let (_, vm) = only_vm("cot-vmware-ovftool.ovf");
    assert_eq!(vm.firmware, Firmware::Bios);
    assert_eq!(capacities(&vm), [GIB]);
    assert_eq!(vm.disks[0].allocated_bytes, Some(293011456));
    assert_eq!(vm.nics.len(), 4);

    let (_, vm) = only_vm("govmomi-bitnami-tomcat-ovftool2.1.ovf");
    assert_eq!(capacities(&vm), [17 * GIB]);
    assert_eq!(vm.nics.len(), 1);

    let (_, vm) = only_vm("govmomi-converter-winxp-vcenter.ovf");
    assert_eq!(capacities(&vm), [7 * GIB]);
    assert_eq!(vm.guest_os.family, OsFamily::Windows);
    assert_eq!(vm.nics.len(), 1);

    let (_, vm) = only_vm("govmomi-esx-server-export-ubuntu16.ovf");
    assert_eq!(capacities(&vm), [16 * GIB]);
    assert_eq!(vm.firmware, Firmware::Bios);
    assert_eq!(vm.nics.len(), 1);

    let (env, vm) = only_vm("govmomi-esxi-nested-vm-efi.ovf");
    assert_eq!(capacities(&vm), [32 * GIB]);
    assert_eq!(vm.firmware, Firmware::Uefi);
    assert_eq!(vm.secure_boot, Some(false));
    assert_eq!(vm.nics.len(), 1);
    let hw = env.virtual_systems()[0].hardware(None);
    assert_eq!(hw.virtual_system_types, ["vmx-20"]);

    let (_, vm) = only_vm("govmomi-ovftool2.0-win2k3.ovf");
    assert_eq!(capacities(&vm), [7 * GIB]);
    assert_eq!(vm.nics.len(), 1);

    let (_, vm) = only_vm("govmomi-photon5-ovftool4.3-efi.ovf");
    assert_eq!(capacities(&vm), [16 * GIB]);
    assert_eq!(vm.firmware, Firmware::Uefi);
    assert_eq!(vm.nics.len(), 1);

    let (env, vm) = only_vm("govmomi-ttylinux-ovftool4.0.ovf");
    assert_eq!(env.version, OvfVersion::V1);
    assert_eq!(env.version_attr(), None);
    assert_eq!(capacities(&vm), [30 * MIB]);
    assert_eq!(vm.disks[0].format, DiskFormat::VmdkStreamOptimized);
    assert_eq!(vm.disks[0].allocated_bytes, Some(18743296));
    assert_eq!(env.references()[0].size, Some(10595840));
    assert_eq!(vm.firmware, Firmware::Uefi);
    assert_eq!((vm.cpus, vm.memory_mib), (1, 32));
    assert_eq!(vm.nics.len(), 1);
}

#[test]
fn ganeti_disks_without_capacity() {
    let (env, vm) = only_vm("ganeti-export.ovf");
    let d = env.disk("vmdisk1").expect("disk");
    assert_eq!(d.capacity, None);
    assert_eq!(d.capacity_bytes(), None);
    assert_eq!(vm.disks.len(), 1);
    assert_eq!(vm.disks[0].capacity_bytes, 0);
    assert_eq!(vm.disks[0].backing.as_deref(), Some("new_disk.vmdk"));
    // Parent 3 names no item: no controller.
    assert_eq!(vm.disks[0].controller, None);
    // gnt:GanetiSection in namespace "http://ganeti" is kept.
    assert!(env.sections.iter().any(|s| matches!(s, Section::Other(e)
        if e.name == "GanetiSection" && e.namespace.as_deref() == Some("http://ganeti"))));
    assert_eq!(vm.nics.len(), 1);

    let (env, vm) = only_vm("ganeti-virtualbox.ovf");
    assert_eq!(env.disks().count(), 2);
    assert!(env.disks().all(|d| d.capacity.is_none()));
    // Both disk items of this file point at /disk/vmdisk1.
    assert_eq!(vm.disks.len(), 2);
    assert!(vm.disks.iter().all(|d| d.id == "vmdisk1"));
}

#[test]
fn collections() {
    let env = load("govmomi-3vm-vapp-vcenter.ovf");
    let Some(Content::Collection(c)) = &env.content else {
        panic!("collection expected")
    };
    assert_eq!(c.id, "3VMvApp");
    assert_eq!(c.member_ids(), ["vm2", "vm3", "vm1"]);
    let v = vms(&env);
    assert_eq!(v.len(), 3);
    for vm in &v {
        assert_eq!(capacities(vm), [4 * MIB]);
        assert_eq!(vm.firmware, Firmware::Bios);
        assert_eq!(vm.nics.len(), 1);
    }
    let backings: Vec<_> = v
        .iter()
        .map(|vm| vm.disks[0].backing.clone().expect("file"))
        .collect();
    assert_eq!(
        backings,
        [
            "3VMvApp-disk1.vmdk",
            "3VMvApp-disk2.vmdk",
            "3VMvApp-disk3.vmdk"
        ]
    );

    let env = load("govmomi-vcloud-director-vapp.ovf");
    let Some(Content::Collection(c)) = &env.content else {
        panic!("collection expected")
    };
    assert_eq!(c.member_ids(), ["s-xp", "vCD_scratch_vm"]);
    let v = vms(&env);
    assert_eq!(capacities(&v[0]), [1536 * MIB, 2 * GIB]);
    assert_eq!(capacities(&v[1]), [2 * GIB]);
    assert_eq!(v.iter().map(|vm| vm.nics.len()).sum::<usize>(), 3);

    let env = load("govmomi-virtualsystemcollection-ovf2.ovf");
    assert_eq!(env.version, OvfVersion::V2);
    let Some(Content::Collection(c)) = &env.content else {
        panic!("collection expected")
    };
    assert_eq!(c.member_ids(), ["storage server", "web-server"]);
    let v = vms(&env);
    assert_eq!(v[0].name, "Virtual Appliance One");
    assert_eq!(v[0].nics[0].mac.as_deref(), Some("00:16:8b:db:00:5e"));
    assert_eq!(v[1].nics[0].mac.as_deref(), Some("00:16:8b:db:00:5f"));
    assert_eq!(v[0].memory_mib, 1024);
    // The StorageItem is a logical disk (type 31) of 1 × byte*2^30.
    assert_eq!(capacities(&v[0]), [GIB]);
    assert_eq!(
        env.disk("vmdisk1").and_then(|d| d.capacity_bytes()),
        Some(4 * GIB)
    );
}

#[test]
fn gzip_compression_file() {
    let (env, vm) = only_vm("govmomi-gzip-compression.ovf");
    let f = &env.references()[0];
    assert_eq!(f.compression.as_deref(), Some("gzip"));
    assert_eq!(f.href, "valid_disk_gzip.vmdk.gz");
    assert_eq!(f.size, Some(329197568));
    assert_eq!(capacities(&vm), [329197568]);
    assert!(vm.nics.is_empty());
}

#[test]
fn property_references_are_kept_and_resolved() {
    let (env, vm) = only_vm("govmomi-multiple-disks.ovf");
    assert_eq!(env.disks().count(), 7);
    let scratch = env.disk("scratch_large").expect("disk");
    assert_eq!(
        scratch.capacity.as_deref(),
        Some("${scratch_space_size_large}")
    );
    assert_eq!(
        scratch.capacity_property(),
        Some("scratch_space_size_large")
    );
    assert_eq!(scratch.capacity_bytes(), None);
    assert_eq!(scratch.file_ref, None);
    // system_small and system_large share one File.
    assert_eq!(
        env.disk("system_small").and_then(|d| d.file_ref.as_deref()),
        Some("system")
    );
    assert_eq!(
        env.disk("system_large").and_then(|d| d.file_ref.as_deref()),
        Some("system")
    );
    assert_eq!(env.references().len(), 4);
    assert_eq!(env.references()[3].href, "uber.nvram");
    // Default configuration "large": property scratch_space_size_large = 20.
    assert_eq!(env.default_configuration(), Some("large"));
    assert_eq!(capacities(&vm), [40 * GIB, 50 * GIB, 100 * GIB, 20 * GIB]);
    assert_eq!((vm.cpus, vm.memory_mib), (2, 64));
    assert_eq!(vm.firmware, Firmware::Uefi);
    let small = env.virtual_systems()[0]
        .to_vm_info_for(&env, Some("small"))
        .expect("vm");
    assert_eq!(capacities(&small), [30 * GIB, 30 * GIB, 10 * GIB]);

    let (env, vm) = only_vm("govmomi-nsx-unified-appliance.ovf");
    assert_eq!(env.disks().count(), 3);
    assert_eq!(env.configurations().count(), 4);
    assert_eq!(env.default_configuration(), Some("medium"));
    let hw = env.virtual_systems()[0].hardware(None);
    assert_eq!(hw.virtual_system_types, ["vmx-13", "vmx-11", "vmx-10"]);
    // medium: system (200 GiB) and secondary (102400 MiB); disk100GB only in xlarge.
    assert_eq!(capacities(&vm), [200 * GIB, 102400 * MIB]);
    let product = env.virtual_systems()[0].products().next().expect("product");
    assert_eq!(
        product.app_url.as_deref(),
        Some("http://${vami.ip0.nsx-unified-appliance}/")
    );
}

#[test]
fn empty_file_ref_is_a_blank_disk() {
    let (env, vm) = only_vm("govmomi-vcf-license-server-ova-compose.ovf");
    assert_eq!(env.disk("vmdisk2").expect("disk").file_ref, None);
    assert_eq!(capacities(&vm), [4 * GIB, 4 * GIB, 4 * GIB]);
    let backing: Vec<Option<&str>> = vm.disks.iter().map(|d| d.backing.as_deref()).collect();
    assert_eq!(
        backing,
        [
            Some("Vcf-License-Server-9.1.0.0.25262073-disk1.vmdk"),
            Some("Vcf-License-Server-9.1.0.0.25262073-disk2.vmdk"),
            None
        ]
    );
    assert_eq!(vm.firmware, Firmware::Uefi);
    assert_eq!(vm.secure_boot, Some(true));
    assert_eq!(vm.nics.len(), 1);
}

#[test]
fn vtpm_nvram_descriptor() {
    let (env, vm) = only_vm("govmomi-vtpm-nvram-efi.ovf");
    assert_eq!(env.references()[0].size, None);
    assert_eq!(env.references()[1].href, "vtpm-spec-with-nvram-2.nvram");
    assert_eq!(env.references()[1].size, Some(270840));
    assert_eq!(capacities(&vm), [GIB]);
    assert_eq!(vm.firmware, Firmware::Uefi);
    assert_eq!(vm.secure_boot, Some(true));
    let hw = env.virtual_systems()[0]
        .hardware_sections()
        .next()
        .expect("hw");
    assert!(
        hw.vmw_extra_configs()
            .contains(&("nvram", "ovf:/file/file2"))
    );
    // The vTPM item is kept.
    assert!(
        hw.items
            .iter()
            .any(|i| i.resource_sub_type().as_deref() == Some("vmware.vtpm"))
    );
}

#[test]
fn virtualbox_1_export() {
    let (env, vm) = only_vm("govmomi-vbox1-virtualbox-export.ovf");
    assert_eq!(env.version_attr(), Some("1.0"));
    assert_eq!(capacities(&vm), [10 * GIB]);
    assert_eq!(vm.disks[0].format, DiskFormat::VmdkMonolithicSparse);
    assert_eq!(vm.nics.len(), 1);
}

#[test]
fn ovirt_dialect() {
    let (env, vm) = only_vm("ovirt-engine-vm-ovf-3.3.ovf");
    // Trailing slash on the envelope namespace, kept as written.
    assert_eq!(env.namespace, "http://schemas.dmtf.org/ovf/envelope/1/");
    assert_eq!(env.version, OvfVersion::V1);
    assert_eq!(env.section_style, SectionStyle::XsiType);
    assert_eq!(env.version_attr(), Some("3.3.0.0"));
    // ovf:size="1" (GiB) instead of ovf:capacity.
    let d = env
        .disk("f934b12c-1e22-4ad8-bbce-ec0b2a5defa4")
        .expect("disk");
    assert_eq!(d.capacity, None);
    assert_eq!(d.capacity_bytes(), Some(GIB));
    // The LUN disk keeps its <Connection> child.
    let lun = env
        .disk("eb331cad-8842-48d9-9c56-40b893dc8b1e")
        .expect("lun");
    assert_eq!(lun.other.len(), 1);
    assert_eq!(lun.other[0].name, "Connection");
    assert_eq!(vm.name, "exporttedVM");
    assert_eq!(vm.memory_mib, 1024);
    assert_eq!(vm.cpus, 1);
    assert_eq!(capacities(&vm), [GIB]);
    assert_eq!(
        vm.disks[0].backing.as_deref(),
        Some("8c634412-1e8b-4ef3-bc40-b67a456e9d2f/f934b12c-1e22-4ad8-bbce-ec0b2a5defa4")
    );
    assert!(vm.nics.is_empty());
    // oVirt's own sections are kept raw.
    let vs = env.virtual_systems()[0];
    assert!(
        vs.other_sections()
            .any(|e| e.attr_any_ns("type") == Some("ovf:SnapshotsSection_Type"))
    );
}
