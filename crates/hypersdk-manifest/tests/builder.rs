//! What the builder writes: every manifest it produces validates against
//! the shipped schema with the `jsonschema` crate, and says what the
//! converter needs to hear (boot hints, pipeline flags, firmware, memory).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use hypersdk_core::blocks::{CopyOptions, copy_to_file};
use hypersdk_core::digest::Algorithm;
use hypersdk_core::memory::MemoryProvider;
use hypersdk_core::model::{
    DiskFormat, DiskInfo, Firmware, GuestOs, NicInfo, SnapshotRef, VmInfo, VmRef,
};
use hypersdk_core::provider::{DiskData, ExportOptions, Provider};
use hypersdk_manifest::{
    DiskType, ExportResult, ExportedDisk, Manifest, ManifestBuilder, OutputFormat, Pipeline,
    ProblemKind, SCHEMA, SDK_VERSION, SourceFormat, Validator, write_export_manifest,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn jsonschema_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// Asserts `m` is valid for the shipped schema (jsonschema), for our rules,
/// and reads back equal.
fn assert_valid(m: &Manifest) -> Value {
    let v = serde_json::to_value(m).unwrap();
    let errors: Vec<String> = jsonschema_validator()
        .iter_errors(&v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{v:#}");
    let report = Validator::check_offline(&v);
    assert!(report.is_ok(), "{report}");
    let text = m.to_json_pretty().unwrap();
    assert_eq!(&Manifest::from_json(&text).unwrap(), m);
    v
}

fn vm() -> VmInfo {
    let mut vm = VmInfo::new("vm-1234", "web01");
    vm.cpus = 4;
    vm.memory_mib = 16 * 1024;
    vm.firmware = Firmware::Uefi;
    vm.secure_boot = Some(true);
    vm.guest_os = GuestOs::from_id("ubuntu64Guest");
    vm.annotations.insert("datacenter".into(), "dc-east".into());
    vm.nics.push(NicInfo {
        mac: Some("00:50:56:ab:cd:ef".into()),
        network: Some("VM Network".into()),
        ..NicInfo::default()
    });
    vm
}

fn disk(id: &str, boot_order: Option<u32>, path: &str) -> ExportedDisk {
    let mut info = DiskInfo::new(id, 10 << 30);
    info.boot_order = boot_order;
    info.name = Some(format!("Hard disk {id}"));
    ExportedDisk::new(info, path, DiskFormat::VmdkStreamOptimized, 123_456)
}

#[test]
fn a_two_disk_uefi_export() {
    let at = Utc.with_ymd_and_hms(2026, 1, 21, 20, 0, 0).unwrap();
    let result = ExportResult::new("vsphere", vm(), "nfc-lease")
        .with_exported_at(at)
        .with_disk(disk("2000", Some(0), "/exports/web01/web01-disk1.vmdk"))
        .with_disk(disk("2001", None, "/exports/web01/web01-disk2.vmdk"));
    let m = ManifestBuilder::from_export(&result)
        .job_id("job-7")
        .tag("team", "web")
        .note("cold export")
        .warning("export", "CD-ROM left attached")
        .build()
        .unwrap();
    let v = assert_valid(&m);

    // source: what really happened.
    assert_eq!(
        v["source"],
        json!({
            "provider": "vsphere", "vm_id": "vm-1234", "vm_name": "web01",
            "datacenter": "dc-east", "export_timestamp": "2026-01-21T20:00:00Z",
            "export_method": "nfc-lease"
        })
    );
    // vm: uefi, memory in GB, os hint.
    assert_eq!(
        v["vm"],
        json!({
            "cpu": 4, "mem_gb": 16, "firmware": "uefi", "secureboot": true,
            "os_hint": "linux", "os_version": "ubuntu64Guest"
        })
    );
    // disks: ids, boot order 0 written, type, absolute path, file size.
    assert_eq!(v["disks"][0]["id"], "disk-0");
    assert_eq!(v["disks"][0]["boot_order_hint"], 0);
    assert_eq!(v["disks"][0]["disk_type"], "boot");
    assert_eq!(v["disks"][1]["id"], "disk-1");
    assert_eq!(v["disks"][1]["boot_order_hint"], 1);
    assert_eq!(v["disks"][1]["disk_type"], "data");
    assert_eq!(v["disks"][0]["source_format"], "vmdk");
    assert_eq!(v["disks"][0]["bytes"], 123_456);
    assert_eq!(
        v["disks"][0]["local_path"],
        "/exports/web01/web01-disk1.vmdk"
    );
    assert_eq!(v["disks"][0]["label"], "Hard disk 2000");
    assert_eq!(v["disks"][0]["source_disk_id"], "2000");
    assert_eq!(v["disks"][0]["capacity_bytes"], 10u64 << 30);
    // No digests were given: no checksum, and the manifest says so.
    assert!(v["disks"][0].get("checksum").is_none());
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert_eq!(warnings[0]["message"], "CD-ROM left attached");
    assert!(
        warnings[1]["message"]
            .as_str()
            .unwrap()
            .contains("no SHA-256")
    );
    // pipeline: every stage with an explicit enabled, true defaults written.
    assert_eq!(
        v["pipeline"],
        json!({
            "inspect": {"enabled": true, "collect_guest_info": false},
            "fix": {
                "enabled": true, "backup": true, "print_fstab": false, "update_grub": true,
                "regen_initramfs": true, "fstab_mode": "stabilize-all",
                "remove_vmware_tools": false
            },
            "convert": {"enabled": true, "compress": false},
            "validate": {"enabled": true, "check_image_integrity": true}
        })
    );
    assert_eq!(
        v["options"],
        json!({"dry_run": false, "report": {"enabled": true}})
    );
    assert_eq!(v["output"], json!({"format": "qcow2"}));
    // metadata and notes.
    assert_eq!(v["metadata"]["hypersdk_version"], SDK_VERSION);
    assert_eq!(v["metadata"]["job_id"], "job-7");
    assert_eq!(v["metadata"]["tags"], json!({"team": "web"}));
    assert!(v["metadata"]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        v["notes"],
        json!([
            format!("exported from vsphere by hypersdk {SDK_VERSION} (nfc-lease)"),
            "cold export"
        ])
    );
    assert_eq!(
        v["nics"],
        json!([{"id": "nic-0", "mac": "00:50:56:ab:cd:ef", "network": "VM Network"}])
    );
}

#[test]
fn the_boot_disk_follows_the_platform_boot_order() {
    // The boot disk is listed last, as vSphere may: it still gets hint 0.
    let m = ManifestBuilder::new(vm())
        .disk(disk("a", None, "/x/a.vmdk"))
        .disk(disk("b", Some(2), "/x/b.vmdk"))
        .disk(disk("c", Some(1), "/x/c.vmdk"))
        .build()
        .unwrap();
    assert_valid(&m);
    let hints: Vec<(u64, DiskType)> = m
        .disks
        .iter()
        .map(|d| (d.boot_order_hint.unwrap(), d.disk_type.unwrap()))
        .collect();
    assert_eq!(
        hints,
        [
            (2, DiskType::Data),
            (1, DiskType::Data),
            (0, DiskType::Boot)
        ]
    );
    assert_eq!(m.boot_disk().unwrap().id, "disk-2");
}

#[test]
fn small_and_unknown_hardware() {
    let mut small = VmInfo::new("vm-2", "tiny");
    small.cpus = 1;
    small.memory_mib = 512;
    small.firmware = Firmware::Bios;
    let m = ManifestBuilder::new(small)
        .disk(disk("a", None, "/x/a.vmdk"))
        .build()
        .unwrap();
    let v = assert_valid(&m);
    assert_eq!(v["vm"]["mem_gb"], 1, "512 MiB rounds up to 1 GB");
    assert_eq!(v["vm"]["firmware"], "bios");
    assert_eq!(v["vm"]["secureboot"], false);
    assert_eq!(v["vm"]["os_hint"], "unknown");

    // A platform that said nothing: nothing invented, still valid.
    let m = ManifestBuilder::new(VmInfo::new("vm-3", "blank"))
        .disk(disk("a", None, "/x/a.vmdk"))
        .build()
        .unwrap();
    let v = assert_valid(&m);
    assert_eq!(
        v["vm"],
        json!({"firmware": "unknown", "os_hint": "unknown"})
    );
    assert_eq!(v["disks"][0]["boot_order_hint"], 0);
}

#[test]
fn the_pipeline_can_be_switched_off_but_is_always_written() {
    let m = ManifestBuilder::new(vm())
        .disk(disk("a", None, "/x/a.vmdk"))
        .pipeline(Pipeline::disabled())
        .output(None)
        .build()
        .unwrap();
    let v = assert_valid(&m);
    for stage in ["inspect", "fix", "convert", "validate"] {
        assert_eq!(v["pipeline"][stage]["enabled"], false, "{stage}");
    }
    // Booleans whose default is true are written even when false.
    let mut p = Pipeline::full();
    let fix = p.fix.as_mut().unwrap();
    fix.backup = Some(false);
    fix.update_grub = Some(false);
    fix.regen_initramfs = Some(false);
    p.validate.as_mut().unwrap().check_image_integrity = Some(false);
    let m = ManifestBuilder::new(vm())
        .disk(disk("a", None, "/x/a.vmdk"))
        .pipeline(p)
        .output(Some(hypersdk_manifest::Output::new(OutputFormat::Raw)))
        .build()
        .unwrap();
    let v = assert_valid(&m);
    assert_eq!(v["pipeline"]["fix"]["backup"], false);
    assert_eq!(v["pipeline"]["fix"]["update_grub"], false);
    assert_eq!(v["pipeline"]["fix"]["regen_initramfs"], false);
    assert_eq!(v["pipeline"]["validate"]["check_image_integrity"], false);
    assert_eq!(v["output"]["format"], "raw");
    assert!(v.get("pipeline").is_some());
}

#[test]
fn bad_macs_are_left_out_with_a_warning() {
    let mut vm = vm();
    vm.nics.push(NicInfo {
        id: Some("4001".into()),
        mac: Some("not-a-mac".into()),
        ..NicInfo::default()
    });
    let m = ManifestBuilder::new(vm)
        .disk(disk("a", None, "/x/a.vmdk"))
        .build()
        .unwrap();
    let v = assert_valid(&m);
    assert_eq!(v["nics"][1], json!({"id": "4001"}));
    assert!(m.warnings.iter().any(|w| w.message.contains("not-a-mac")));
}

#[test]
fn snapshot_and_ids_given() {
    let mut result = ExportResult::new("ovm", vm(), "ovm-snapshot")
        .with_disk(disk("a", None, "/x/a.img").with_id("root_disk"));
    result.snapshot = Some(SnapshotRef::new("vm-1234", "snap-9"));
    result.disks[0].format = DiskFormat::Raw;
    let m = ManifestBuilder::from_export(&result).build().unwrap();
    let v = assert_valid(&m);
    assert_eq!(v["disks"][0]["id"], "root_disk");
    assert_eq!(v["disks"][0]["source_format"], "raw");
    assert_eq!(v["source"]["snapshot_id"], "snap-9");
    assert_eq!(v["source"]["export_method"], "ovm-snapshot");
}

/// End to end with a real provider: export the memory provider's demo VM
/// to raw files hashed by the copy engine, write the manifest, verify it
/// with every check.
#[tokio::test(flavor = "multi_thread")]
async fn from_a_provider_export_to_a_verified_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let provider: Arc<dyn Provider> = Arc::new(MemoryProvider::with_demo_vms());
    let mut export = provider
        .export(&VmRef::name("web01"), &ExportOptions::default())
        .await
        .unwrap();
    let mut result = ExportResult::from_export(provider.name(), &export);
    for t in export.take_disks() {
        let DiskData::Blocks(source) = &t.data else {
            panic!("the memory provider exports block sources");
        };
        let path = dir.path().join(&t.file_name);
        let copy = CopyOptions::default().with_digests(&[Algorithm::Sha256, Algorithm::Sha1]);
        let report = copy_to_file(source.as_ref(), &path, None, None, None, &copy)
            .await
            .unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        result.disks.push(
            ExportedDisk::from_transfer(&t, &path, size).with_digests(report.digests.unwrap()),
        );
    }
    export.complete().await.unwrap();

    let path = write_export_manifest(&result, dir.path()).await.unwrap();
    let m = hypersdk_manifest::verify(&path).await.unwrap();
    assert_valid(&m);
    assert_eq!(m.disks.len(), result.disks.len());
    assert!(m.disks.iter().all(|d| d.checksum.is_some()));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    assert_eq!(m.disks[0].source_format, SourceFormat::Raw);
    let src = m.source.as_ref().unwrap();
    assert_eq!(src.provider.as_deref(), Some("memory"));
    assert_eq!(src.export_method.as_deref(), Some(result.method.as_str()));
    assert_eq!(m.vm.as_ref().unwrap().firmware, Some(Firmware::Uefi));
    assert_eq!(m.boot_disk().unwrap().disk_type, Some(DiskType::Boot));

    // A disk file that changed after the export is caught.
    std::fs::write(&result.disks[0].path, b"tampered").unwrap();
    let report = Validator::new().validate_file(&path).await.unwrap();
    assert!(
        report
            .find("disks[0].bytes", ProblemKind::SizeMismatch)
            .is_some(),
        "{report}"
    );
    // And writing a manifest for files that are not there writes nothing.
    std::fs::remove_file(&result.disks[0].path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = write_export_manifest(&result, dir.path())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidData);
    assert!(e.to_string().contains("disks[0].local_path"), "{e}");
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_checksums_are_computed_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let mut result = ExportResult::new("local", vm(), "copy");
    for i in 0..5u8 {
        let path = dir.path().join(format!("d{i}.raw"));
        std::fs::write(&path, vec![i; 100_000 + usize::from(i)]).unwrap();
        result.disks.push(
            ExportedDisk::from_file(DiskInfo::new(format!("{i}"), 1), &path, DiskFormat::Raw)
                .unwrap(),
        );
    }
    result.compute_missing_checksums(3).await.unwrap();
    for d in &result.disks {
        let expected =
            hypersdk_core::digest::hash_file_blocking(&d.path, &[Algorithm::Sha256]).unwrap();
        assert_eq!(d.sha256(), expected.get(Algorithm::Sha256));
    }
    let path = write_export_manifest(&result, dir.path()).await.unwrap();
    let report = Validator::new()
        .with_parallelism(2)
        .validate_file(&path)
        .await
        .unwrap();
    assert!(report.is_empty(), "{report}");
}

fn any_firmware() -> impl Strategy<Value = Firmware> {
    prop_oneof![
        Just(Firmware::Bios),
        Just(Firmware::Uefi),
        Just(Firmware::Unknown)
    ]
}

fn any_format() -> impl Strategy<Value = DiskFormat> {
    prop_oneof![
        Just(DiskFormat::Raw),
        Just(DiskFormat::VmdkStreamOptimized),
        Just(DiskFormat::VmdkMonolithicSparse),
        Just(DiskFormat::VmdkFlat),
        Just(DiskFormat::Qcow2),
        Just(DiskFormat::Vhd),
        Just(DiskFormat::Vhdx),
    ]
}

prop_compose! {
    fn any_disk()(
        id in ".{0,12}",
        name in proptest::option::of(".{0,20}"),
        capacity in any::<u64>(),
        boot_order in proptest::option::of(0u32..4),
        file in "[a-zA-Z0-9 _.é-]{1,20}",
        format in any_format(),
        size in any::<u64>(),
        digest in proptest::option::of(any::<[u8; 32]>()),
    ) -> ExportedDisk {
        let mut info = DiskInfo::new(id, capacity);
        info.name = name;
        info.boot_order = boot_order;
        let mut d = ExportedDisk::new(info, format!("/exports/{file}"), format, size);
        if let Some(bytes) = digest {
            // Digests only come out of a hasher: hash the bytes.
            let mut h = hypersdk_core::digest::MultiHasher::new(&[Algorithm::Sha256]);
            h.update_slice(&bytes);
            d = d.with_digests(h.finish().unwrap());
        }
        d
    }
}

prop_compose! {
    fn any_vm()(
        id in ".{0,16}",
        name in ".{0,16}",
        cpus in any::<u32>(),
        memory_mib in any::<u64>(),
        firmware in any_firmware(),
        secure_boot in proptest::option::of(any::<bool>()),
        guest in proptest::option::of("[a-zA-Z0-9_]{0,20}"),
        macs in proptest::collection::vec(proptest::option::of(".{0,17}|([0-9a-f]{2}:){5}[0-9a-f]{2}"), 0..3),
    ) -> VmInfo {
        let mut vm = VmInfo::new(id, name);
        vm.cpus = cpus;
        vm.memory_mib = memory_mib;
        vm.firmware = firmware;
        vm.secure_boot = secure_boot;
        if let Some(g) = guest {
            vm.guest_os = GuestOs::from_id(g);
        }
        for mac in macs {
            vm.nics.push(NicInfo { mac, ..NicInfo::default() });
        }
        vm
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the platform reports, the builder's manifest is valid for
    /// the shipped schema and for the validator, has exactly one boot disk
    /// with hint 0, and reads back equal.
    #[test]
    fn every_built_manifest_is_valid(
        vm in any_vm(),
        disks in proptest::collection::vec(any_disk(), 1..5),
        provider in "[a-z]{0,8}",
        method in ".{0,12}",
        job in proptest::option::of(".{0,12}"),
        tags in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..3),
        secs in 0i64..4_000_000_000,
    ) {
        let mut result = ExportResult::new(provider, vm.clone(), method)
            .with_exported_at(Utc.timestamp_opt(secs, 0).unwrap());
        result.disks = disks.clone();
        let mut b = ManifestBuilder::from_export(&result);
        if let Some(job) = job {
            b = b.job_id(job);
        }
        for (k, v) in tags {
            b = b.tag(k, v);
        }
        let m = b.build().unwrap();
        let v = assert_valid(&m);
        let boots: Vec<_> = m.disks.iter().filter(|d| d.disk_type == Some(DiskType::Boot)).collect();
        prop_assert_eq!(boots.len(), 1);
        prop_assert_eq!(boots[0].boot_order_hint, Some(0));
        prop_assert_eq!(&m.boot_disk().unwrap().id, &boots[0].id);
        for (d, e) in m.disks.iter().zip(&disks) {
            prop_assert_eq!(d.bytes, e.size);
            prop_assert_eq!(d.checksum.as_ref(), e.sha256());
        }
        let mem = &v["vm"]["mem_gb"];
        if vm.memory_mib == 0 {
            prop_assert!(mem.is_null());
        } else {
            let gb = u128::from(mem.as_u64().unwrap());
            let mib = u128::from(vm.memory_mib);
            prop_assert!(gb >= 1 && gb * 1024 >= mib && (gb - 1) * 1024 < mib);
        }
    }
}
