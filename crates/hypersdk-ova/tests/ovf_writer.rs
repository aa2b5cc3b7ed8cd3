//! The descriptor writer: `parse(write(vm))` gives the VM back.

use hypersdk_core::model::{
    ControllerKind, DiskController, DiskFormat, DiskInfo, Firmware, GuestOs, NicInfo, VmInfo,
};
use hypersdk_ova::ovf::{DescriptorBuilder, Envelope, OvfDisk, OvfVersion, write_descriptor};
use proptest::prelude::*;

fn sample_vm() -> VmInfo {
    let mut vm = VmInfo::new("vm-42", "web01 <prod> & \"friends\"");
    vm.cpus = 4;
    vm.memory_mib = 8192;
    vm.firmware = Firmware::Uefi;
    vm.secure_boot = Some(true);
    vm.guest_os = GuestOs::from_id("rhel9_64Guest");
    let mut d0 = DiskInfo::new("2000", 40 << 30);
    d0.controller = Some(DiskController {
        kind: ControllerKind::Scsi,
        model: Some("pvscsi".into()),
        bus: 0,
        unit: 0,
    });
    let mut d1 = DiskInfo::new("2001", 1_000_000_000);
    d1.controller = Some(DiskController {
        kind: ControllerKind::Sata,
        model: None,
        bus: 0,
        unit: 1,
    });
    let mut d2 = DiskInfo::new("2002", 3 << 20);
    d2.controller = Some(DiskController {
        kind: ControllerKind::Nvme,
        model: None,
        bus: 1,
        unit: 0,
    });
    vm.disks = vec![d0, d1, d2];
    vm.nics = vec![
        NicInfo {
            mac: Some("00:50:56:aa:bb:cc".into()),
            network: Some("VM Network".into()),
            adapter: Some("vmxnet3".into()),
            ..NicInfo::default()
        },
        NicInfo {
            network: Some("backup".into()),
            adapter: Some("e1000e".into()),
            ..NicInfo::default()
        },
    ];
    vm
}

fn files(vm: &VmInfo) -> Vec<OvfDisk> {
    (0..vm.disks.len())
        .map(|i| OvfDisk::new(format!("disk-{i}.vmdk")).with_size(1000 + i as u64))
        .collect()
}

/// The VM facts a descriptor carries.
fn facts(vm: &VmInfo) -> impl PartialEq + std::fmt::Debug {
    (
        vm.name.clone(),
        vm.cpus,
        vm.memory_mib,
        vm.firmware,
        vm.secure_boot,
        vm.guest_os.clone(),
        vm.disks
            .iter()
            .map(|d| (d.capacity_bytes, d.controller.clone()))
            .collect::<Vec<_>>(),
        vm.nics
            .iter()
            .map(|n| (n.mac.clone(), n.network.clone(), n.adapter.clone()))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn writes_what_ovftool_writes_and_reads_back() {
    let vm = sample_vm();
    let xml = write_descriptor(&vm, &files(&vm)).expect("write");
    for needle in [
        r#"xmlns="http://schemas.dmtf.org/ovf/envelope/1""#,
        r#"<File ovf:href="disk-0.vmdk" ovf:id="file1" ovf:size="1000"/>"#,
        r#"ovf:capacity="40" ovf:capacityAllocationUnits="byte * 2^30""#,
        "vmdk.html#streamOptimized",
        "<vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>",
        "<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>",
        "<rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>",
        "<rasd:ResourceSubType>vmware.nvme.controller</rasd:ResourceSubType>",
        "<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>",
        "<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>",
        r#"vmw:osType="rhel9_64Guest""#,
        r#"vmw:key="firmware" vmw:value="efi""#,
        r#"vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true""#,
        "<Name>web01 &lt;prod&gt; &amp; \"friends\"</Name>",
    ] {
        assert!(xml.contains(needle), "missing {needle} in\n{xml}");
    }
    let env = Envelope::parse(xml.as_bytes()).expect("parse");
    assert_eq!(env.version, OvfVersion::V1);
    let hrefs: Vec<&str> = env.references().iter().map(|f| f.href.as_str()).collect();
    assert_eq!(hrefs, ["disk-0.vmdk", "disk-1.vmdk", "disk-2.vmdk"]);
    let back = env.virtual_systems()[0].to_vm_info(&env).expect("vm");
    assert_eq!(facts(&back), facts(&vm));
    assert_eq!(back.disks[1].backing.as_deref(), Some("disk-1.vmdk"));
    assert_eq!(back.disks[0].format, DiskFormat::VmdkStreamOptimized);
    // to_xml of the parsed descriptor round trips too.
    assert_eq!(
        Envelope::parse(env.to_xml().as_bytes()).expect("again"),
        env
    );
}

#[test]
fn nvram_and_defaults() {
    let mut vm = VmInfo::new("x", "plain");
    vm.cpus = 1;
    vm.memory_mib = 512;
    vm.disks = vec![DiskInfo::new("a", 1 << 30), DiskInfo::new("b", 1 << 30)];
    let xml = DescriptorBuilder::new(&vm)
        .disks(files(&vm))
        .nvram("plain.nvram", Some(8684))
        .virtual_system_type("vmx-19")
        .to_xml()
        .expect("write");
    let env = Envelope::parse(xml.as_bytes()).expect("parse");
    assert_eq!(
        env.references().last().map(|f| f.href.as_str()),
        Some("plain.nvram")
    );
    let hw = env.virtual_systems()[0].hardware(None);
    assert_eq!(hw.virtual_system_types, ["vmx-19"]);
    let back = env.virtual_systems()[0].to_vm_info(&env).expect("vm");
    // Disks without a controller go on SCSI 0, lsilogic, units 0 and 1.
    let c: Vec<_> = back
        .disks
        .iter()
        .map(|d| d.controller.clone().expect("c"))
        .collect();
    assert_eq!(c[0].kind, ControllerKind::Scsi);
    assert_eq!(c[0].model.as_deref(), Some("lsilogic"));
    assert_eq!((c[0].unit, c[1].unit), (0, 1));
    assert_eq!(back.firmware, Firmware::Unknown);
    assert_eq!(back.secure_boot, None);
}

#[test]
fn mismatched_disk_files_are_refused() {
    let vm = sample_vm();
    let e = write_descriptor(&vm, &[]).expect_err("counts differ");
    assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidInput);
    let mut bad = sample_vm();
    bad.name = "bell\u{7}".into();
    assert!(write_descriptor(&bad, &files(&bad)).is_err());
}

fn name_strategy() -> impl Strategy<Value = String> {
    // XML specials, spaces, non-ASCII; no control characters XML cannot carry.
    proptest::string::string_regex("[a-zA-Z0-9 <>&\"'é中._\\-]{1,24}").expect("regex")
}

fn controller_strategy() -> impl Strategy<Value = Option<DiskController>> {
    prop_oneof![
        Just(None),
        (
            0u32..4,
            0u32..2,
            0u32..15,
            proptest::sample::select(vec!["pvscsi", "lsilogic", "lsilogicsas", "buslogic"])
        )
            .prop_map(|(k, bus, unit, model)| {
                let kind = [
                    ControllerKind::Scsi,
                    ControllerKind::Sata,
                    ControllerKind::Ide,
                    ControllerKind::Nvme,
                ][k as usize];
                Some(DiskController {
                    kind,
                    model: (kind == ControllerKind::Scsi).then(|| model.to_owned()),
                    bus,
                    unit,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn writer_round_trip(
        name in name_strategy(),
        cpus in 1u32..128,
        memory_mib in 1u64..(4 << 20),
        firmware in proptest::sample::select(vec![Firmware::Bios, Firmware::Uefi, Firmware::Unknown]),
        secure_boot in proptest::option::of(any::<bool>()),
        guest in proptest::option::of(proptest::sample::select(vec!["ubuntu64Guest", "windows2019srv_64Guest", "otherGuest", "freebsd13_64Guest"])),
        disks in proptest::collection::vec((1u64..(1 << 44), controller_strategy()), 0..5),
        nics in proptest::collection::vec((
            // Item values are read trimmed: network names without edge spaces.
            proptest::option::of(name_strategy().prop_map(|s| s.trim().to_owned()).prop_filter("empty", |s| !s.is_empty())),
            proptest::option::of(proptest::sample::select(vec!["vmxnet3", "e1000", "e1000e", "pcnet32"])),
            proptest::option::of(proptest::array::uniform6(any::<u8>())),
        ), 0..5),
    ) {
        let mut vm = VmInfo::new("id", name);
        vm.cpus = cpus;
        vm.memory_mib = memory_mib;
        vm.firmware = firmware;
        vm.secure_boot = secure_boot;
        if let Some(g) = guest {
            vm.guest_os = GuestOs::from_id(g);
        }
        for (i, (cap, ctrl)) in disks.into_iter().enumerate() {
            let mut d = DiskInfo::new(format!("d{i}"), cap);
            d.controller = ctrl;
            vm.disks.push(d);
        }
        for (network, adapter, mac) in nics {
            vm.nics.push(NicInfo {
                network,
                adapter: adapter.map(str::to_owned),
                mac: mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
                ..NicInfo::default()
            });
        }
        let xml = write_descriptor(&vm, &files(&vm)).expect("write");
        let env = Envelope::parse(xml.as_bytes()).expect("parse");
        let back = env.virtual_systems()[0].to_vm_info(&env).expect("vm");
        // Disks without a controller are placed on SCSI 0; compare the
        // capacities for those and everything for the rest.
        prop_assert_eq!(back.disks.len(), vm.disks.len());
        let mut expected = vm.clone();
        for (e, b) in expected.disks.iter_mut().zip(&back.disks) {
            if e.controller.is_none() {
                e.controller = b.controller.clone();
            }
        }
        prop_assert_eq!(facts(&back), facts(&expected));
        prop_assert_eq!(Envelope::parse(env.to_xml().as_bytes()).expect("again"), env);
    }
}
