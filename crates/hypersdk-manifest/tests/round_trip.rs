//! read → write → read: nothing is lost, unknown fields included, and the
//! text written is the JSON read.

use hypersdk_manifest::{Manifest, Timestamp};
use serde_json::{Value, json};

/// A manifest as hyper2kvm's documentation shows it, with a valid checksum
/// and unknown fields at every level that allows them.
fn hand_written() -> Value {
    json!({
        "manifest_version": "1.0",
        "profile": "rhel9",
        "profile_overrides": {"fix": {"remove_vmware_tools": true}},
        "source": {
            "provider": "vsphere", "vm_id": "vm-1234", "vm_name": "production-webserver-01",
            "datacenter": "dc1", "export_timestamp": "2026-01-21T20:00:00Z",
            "export_method": "nfc-lease", "snapshot_id": "snapshot-12"
        },
        "vm": {"cpu": 4, "mem_gb": 16, "firmware": "uefi", "secureboot": false,
               "os_hint": "linux", "os_version": "ubuntu64Guest", "hw_version": 19},
        "disks": [{
            "id": "disk-0", "source_format": "vmdk", "bytes": 107374182400u64,
            "local_path": "/work/export/disk1.vmdk",
            "checksum": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "boot_order_hint": 0, "label": "Hard disk 1", "disk_type": "boot",
            "controller": {"kind": "scsi", "unit": 0}
        }, {
            "id": "disk-1", "source_format": "vmdk", "bytes": 0,
            "local_path": "/work/export/disk2.vmdk", "boot_order_hint": 1, "disk_type": "data"
        }],
        "nics": [{"id": "4000", "mac": "00-50-56-AB-CD-EF", "network": "VM Network", "type": "vmxnet3"}],
        "notes": ["Exported from vSphere by hypersdk v0.1.0"],
        "warnings": [{"stage": "export", "message": "slow datastore",
                      "timestamp": "2026-01-21T21:00:00.250+01:00", "code": 7}],
        "metadata": {"hypersdk_version": "0.1.0", "job_id": "vm-1234",
                     "created_at": "2026-01-21T20:05:00Z",
                     "tags": {"provider": "vsphere", "export_format": "ovf"}, "owner": null},
        "pipeline": {
            "inspect": {"enabled": true, "collect_guest_info": true},
            "fix": {"enabled": true, "backup": false, "regen_initramfs": true, "fstab_mode": "bypath-only"},
            "convert": {"enabled": true, "compress": true, "compress_level": 9},
            "validate": {"enabled": false, "future_check": "yes"}
        },
        "configuration": {"users": {"root": {"password_hash": "x"}}, "network": {}, "selinux": "permissive"},
        "output": {"directory": "/work/out", "format": "qcow2", "filename": "web.qcow2", "sparse": true},
        "options": {"dry_run": true, "verbose": 3, "report": {"enabled": false, "path": "r.json", "x": 1}, "y": [1]}
    })
}

#[test]
fn value_read_write_read_is_lossless() {
    let original = hand_written();
    let m = Manifest::from_value(original.clone()).unwrap();
    // Known fields are typed…
    assert_eq!(m.disks[0].bytes, 107374182400);
    assert_eq!(m.disks[0].checksum.unwrap().to_hex().len(), 64);
    assert_eq!(
        m.pipeline.as_ref().unwrap().fix.as_ref().unwrap().backup,
        Some(false)
    );
    // …unknown ones kept at every level.
    assert_eq!(m.extra["profile"], "rhel9");
    assert_eq!(
        m.source.as_ref().unwrap().extra["snapshot_id"],
        "snapshot-12"
    );
    assert_eq!(m.vm.as_ref().unwrap().extra["hw_version"], 19);
    assert_eq!(m.disks[0].extra["controller"]["kind"], "scsi");
    assert_eq!(m.nics[0].extra["type"], "vmxnet3");
    assert_eq!(m.warnings[0].extra["code"], 7);
    assert_eq!(m.metadata.as_ref().unwrap().extra["owner"], Value::Null);
    assert_eq!(
        m.pipeline
            .as_ref()
            .unwrap()
            .validate
            .as_ref()
            .unwrap()
            .extra["future_check"],
        "yes"
    );
    assert_eq!(
        m.configuration.as_ref().unwrap().extra["selinux"],
        "permissive"
    );
    assert_eq!(m.output.as_ref().unwrap().extra["sparse"], true);
    assert_eq!(m.options.as_ref().unwrap().extra["y"], json!([1]));

    // Written, it is the JSON read, value for value.
    let written = m.to_value().unwrap();
    assert_eq!(written, original);
    let again = Manifest::from_json(&m.to_json_pretty().unwrap()).unwrap();
    assert_eq!(again, m);
}

#[test]
fn file_read_write_read() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    let second = dir.path().join("second.json");
    std::fs::write(&first, serde_json::to_string(&hand_written()).unwrap()).unwrap();
    let m = Manifest::read(&first).unwrap();
    m.write(&second).unwrap();
    let back = Manifest::read(&second).unwrap();
    assert_eq!(back, m);
    // Writing what was read gives the same text again: stable output.
    back.write(&first).unwrap();
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        std::fs::read_to_string(&second).unwrap()
    );
    let text = std::fs::read_to_string(&second).unwrap();
    // Fields in the schema's order, unknown ones after the known.
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("manifest_version") < pos("source"));
    assert!(pos("source") < pos("disks"));
    assert!(pos("disks") < pos("pipeline"));
    assert!(pos("options") < pos("profile"));
}

#[test]
fn timestamps_keep_their_instant_and_offset() {
    let m = Manifest::from_value(hand_written()).unwrap();
    let w = &m.warnings[0];
    assert_eq!(
        w.timestamp.unwrap().to_string(),
        "2026-01-21T21:00:00.250+01:00"
    );
    let t: Timestamp = "2026-01-21T20:00:00.250Z".parse().unwrap();
    assert_eq!(w.timestamp.unwrap(), t, "same instant");
}

#[test]
fn minimal_manifest_round_trips() {
    let v = json!({"manifest_version": "1.0", "disks": [
        {"id": "d", "source_format": "raw", "bytes": 0, "local_path": "/d"}
    ]});
    let m = Manifest::from_value(v.clone()).unwrap();
    assert!(m.source.is_none() && m.pipeline.is_none() && m.notes.is_empty());
    assert_eq!(m.to_value().unwrap(), v);
}
