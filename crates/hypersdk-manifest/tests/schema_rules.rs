//! Every rule of the shipped JSON Schema, broken once by a hand-written bad
//! manifest: the validator reports exactly that problem (path and kind),
//! and the `jsonschema` crate, fed the shipped schema, rejects the manifest
//! too. Then the semantic rules, which the schema cannot express.

use hypersdk_core::ErrorKind;
use hypersdk_manifest::{Manifest, ProblemKind, SCHEMA, SCHEMA_ID, Validator};
use serde_json::{Value, json};

/// The shipped schema, compiled by an independent validator with format
/// checks on (draft-07 `date-time`).
fn jsonschema_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the shipped schema is JSON");
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the shipped schema compiles")
}

/// A valid manifest that uses every section and field of the schema.
fn full() -> Value {
    json!({
        "manifest_version": "1.0",
        "source": {
            "provider": "vsphere",
            "vm_id": "vm-1234",
            "vm_name": "web01",
            "datacenter": "dc1",
            "export_timestamp": "2026-01-21T20:00:00Z",
            "export_method": "nfc-lease"
        },
        "vm": {
            "cpu": 4, "mem_gb": 16, "firmware": "uefi", "secureboot": true,
            "os_hint": "linux", "os_version": "Ubuntu 22.04"
        },
        "disks": [
            {
                "id": "disk-0", "source_format": "vmdk", "bytes": 107374182400u64,
                "local_path": "/work/export/disk-0.vmdk",
                "checksum": format!("sha256:{}", "a1".repeat(32)),
                "boot_order_hint": 0, "label": "Hard disk 1", "disk_type": "boot"
            },
            {
                "id": "disk-1", "source_format": "raw", "bytes": 0,
                "local_path": "/work/export/disk-1.raw",
                "checksum": format!("sha256:{}", "0f".repeat(32)),
                "boot_order_hint": 1, "disk_type": "data"
            }
        ],
        "nics": [{"id": "nic-0", "mac": "00:50:56:ab:cd:ef", "network": "VM Network"}],
        "notes": ["exported by hypersdk"],
        "warnings": [{"stage": "export", "message": "slow", "timestamp": "2026-01-21T20:01:00+02:00"}],
        "metadata": {
            "hypersdk_version": "0.1.0", "job_id": "job-7",
            "created_at": "2026-01-21T20:02:00.123Z", "tags": {"team": "web"}
        },
        "pipeline": {
            "inspect": {"enabled": true, "collect_guest_info": false},
            "fix": {
                "enabled": true, "backup": true, "print_fstab": false, "update_grub": true,
                "regen_initramfs": true, "fstab_mode": "stabilize-all", "remove_vmware_tools": false
            },
            "convert": {"enabled": true, "compress": true, "compress_level": 6},
            "validate": {"enabled": true, "check_image_integrity": true}
        },
        "configuration": {"users": {}, "services": {}, "hostname": {}, "network": {}},
        "output": {"directory": "/work/out", "format": "qcow2", "filename": "web01.qcow2"},
        "options": {"dry_run": false, "verbose": 1, "report": {"enabled": true, "path": "report.json"}}
    })
}

/// A change to [`full`].
enum Edit {
    Set(&'static str, Value),
    Remove(&'static str),
    Whole(Value),
}

fn apply(edit: &Edit) -> Value {
    let mut v = full();
    match edit {
        Edit::Whole(w) => return w.clone(),
        Edit::Set(pointer, _) | Edit::Remove(pointer) => {
            let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
            let target = v
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("no {parent} in the base manifest"));
            match (target, edit) {
                (Value::Object(o), Edit::Set(_, value)) => {
                    o.insert(key.to_owned(), value.clone());
                }
                (Value::Object(o), _) => {
                    assert!(o.remove(key).is_some(), "no {pointer} to remove");
                }
                (Value::Array(a), Edit::Set(_, value)) => {
                    a[key.parse::<usize>().expect("an index")] = value.clone();
                }
                _ => panic!("cannot apply to {pointer}"),
            }
        }
    }
    v
}

use Edit::{Remove, Set, Whole};

/// Every rule of the schema, as (edit, path of the problem, kind).
fn schema_cases() -> Vec<(Edit, &'static str, ProblemKind)> {
    use ProblemKind::*;
    vec![
        // The root object.
        (Whole(json!(["not", "an", "object"])), "", WrongType),
        (
            Remove("/manifest_version"),
            "manifest_version",
            MissingField,
        ),
        (
            Set("/manifest_version", json!(1.0)),
            "manifest_version",
            WrongType,
        ),
        (
            Set("/manifest_version", json!("2.0")),
            "manifest_version",
            UnsupportedVersion,
        ),
        (Remove("/disks"), "disks", MissingField),
        (Set("/disks", json!({})), "disks", WrongType),
        (Set("/disks", json!([])), "disks", TooFewItems),
        // source
        (Set("/source", json!("vsphere")), "source", WrongType),
        (
            Set("/source/provider", json!(1)),
            "source.provider",
            WrongType,
        ),
        (Set("/source/vm_id", json!(1)), "source.vm_id", WrongType),
        (
            Set("/source/vm_name", json!(1)),
            "source.vm_name",
            WrongType,
        ),
        (
            Set("/source/datacenter", json!(1)),
            "source.datacenter",
            WrongType,
        ),
        (
            Set("/source/export_method", json!(1)),
            "source.export_method",
            WrongType,
        ),
        (
            Set("/source/export_timestamp", json!(1)),
            "source.export_timestamp",
            WrongType,
        ),
        (
            Set("/source/export_timestamp", json!("yesterday")),
            "source.export_timestamp",
            InvalidDateTime,
        ),
        // vm
        (Set("/vm", json!([])), "vm", WrongType),
        (Set("/vm/cpu", json!("4")), "vm.cpu", WrongType),
        (Set("/vm/cpu", json!(0)), "vm.cpu", BelowMinimum),
        (Set("/vm/mem_gb", json!(1.5)), "vm.mem_gb", WrongType),
        (Set("/vm/mem_gb", json!(0)), "vm.mem_gb", BelowMinimum),
        (Set("/vm/firmware", json!("efi")), "vm.firmware", NotInEnum),
        (Set("/vm/firmware", json!(true)), "vm.firmware", WrongType),
        (
            Set("/vm/secureboot", json!("yes")),
            "vm.secureboot",
            WrongType,
        ),
        (Set("/vm/os_hint", json!(1)), "vm.os_hint", WrongType),
        (
            Set("/vm/os_version", json!(22.04)),
            "vm.os_version",
            WrongType,
        ),
        // disks[]
        (Set("/disks/1", json!("disk-1.raw")), "disks[1]", WrongType),
        (Remove("/disks/1/id"), "disks[1].id", MissingField),
        (
            Remove("/disks/1/source_format"),
            "disks[1].source_format",
            MissingField,
        ),
        (Remove("/disks/1/bytes"), "disks[1].bytes", MissingField),
        (
            Remove("/disks/1/local_path"),
            "disks[1].local_path",
            MissingField,
        ),
        (Set("/disks/1/id", json!(1)), "disks[1].id", WrongType),
        (
            Set("/disks/1/id", json!("disk 1")),
            "disks[1].id",
            PatternMismatch,
        ),
        (
            Set("/disks/1/id", json!("disk.1")),
            "disks[1].id",
            PatternMismatch,
        ),
        (
            Set("/disks/1/source_format", json!("iso")),
            "disks[1].source_format",
            NotInEnum,
        ),
        (
            Set("/disks/1/bytes", json!("10")),
            "disks[1].bytes",
            WrongType,
        ),
        (
            Set("/disks/1/bytes", json!(-1)),
            "disks[1].bytes",
            BelowMinimum,
        ),
        (
            Set("/disks/1/local_path", json!(1)),
            "disks[1].local_path",
            WrongType,
        ),
        // The checksum of hyper2kvm's own vSphere example: 66 hex digits.
        (
            Set(
                "/disks/1/checksum",
                json!(format!("sha256:{}", "ab".repeat(33))),
            ),
            "disks[1].checksum",
            PatternMismatch,
        ),
        (
            Set(
                "/disks/1/checksum",
                json!(format!("sha256:{}", "AB".repeat(32))),
            ),
            "disks[1].checksum",
            PatternMismatch,
        ),
        (
            Set(
                "/disks/1/checksum",
                json!(format!("sha1:{}", "ab".repeat(20))),
            ),
            "disks[1].checksum",
            PatternMismatch,
        ),
        (
            Set("/disks/1/checksum", json!(1)),
            "disks[1].checksum",
            WrongType,
        ),
        (
            Set("/disks/1/boot_order_hint", json!(-1)),
            "disks[1].boot_order_hint",
            BelowMinimum,
        ),
        (
            Set("/disks/1/boot_order_hint", json!("1")),
            "disks[1].boot_order_hint",
            WrongType,
        ),
        (Set("/disks/1/label", json!(1)), "disks[1].label", WrongType),
        (
            Set("/disks/1/disk_type", json!("root")),
            "disks[1].disk_type",
            NotInEnum,
        ),
        // nics[]
        (Set("/nics", json!({})), "nics", WrongType),
        (Set("/nics/0", json!("nic")), "nics[0]", WrongType),
        (Set("/nics/0/id", json!(1)), "nics[0].id", WrongType),
        (
            Set("/nics/0/mac", json!("00:50:56:ab:cd")),
            "nics[0].mac",
            PatternMismatch,
        ),
        (
            Set("/nics/0/mac", json!("0050.56ab.cdef")),
            "nics[0].mac",
            PatternMismatch,
        ),
        (Set("/nics/0/mac", json!(1)), "nics[0].mac", WrongType),
        (
            Set("/nics/0/network", json!(1)),
            "nics[0].network",
            WrongType,
        ),
        // notes[]
        (Set("/notes", json!("a note")), "notes", WrongType),
        (Set("/notes/0", json!(1)), "notes[0]", WrongType),
        // warnings[]
        (Set("/warnings", json!({})), "warnings", WrongType),
        (Set("/warnings/0", json!("slow")), "warnings[0]", WrongType),
        (
            Remove("/warnings/0/stage"),
            "warnings[0].stage",
            MissingField,
        ),
        (
            Remove("/warnings/0/message"),
            "warnings[0].message",
            MissingField,
        ),
        (
            Set("/warnings/0/stage", json!(1)),
            "warnings[0].stage",
            WrongType,
        ),
        (
            Set("/warnings/0/message", json!(1)),
            "warnings[0].message",
            WrongType,
        ),
        (
            Set("/warnings/0/timestamp", json!("now")),
            "warnings[0].timestamp",
            InvalidDateTime,
        ),
        // metadata
        (Set("/metadata", json!("x")), "metadata", WrongType),
        (
            Set("/metadata/hypersdk_version", json!(0.1)),
            "metadata.hypersdk_version",
            WrongType,
        ),
        (
            Set("/metadata/job_id", json!(7)),
            "metadata.job_id",
            WrongType,
        ),
        (
            Set("/metadata/created_at", json!("2026-01-21")),
            "metadata.created_at",
            InvalidDateTime,
        ),
        (
            Set("/metadata/tags", json!(["a"])),
            "metadata.tags",
            WrongType,
        ),
        (
            Set("/metadata/tags/team", json!(1)),
            "metadata.tags.team",
            WrongType,
        ),
        // pipeline
        (Set("/pipeline", json!(true)), "pipeline", WrongType),
        (
            Set("/pipeline/deploy", json!({"enabled": true})),
            "pipeline.deploy",
            UnknownField,
        ),
        (
            Set("/pipeline/inspect", json!(true)),
            "pipeline.inspect",
            WrongType,
        ),
        (
            Remove("/pipeline/inspect/enabled"),
            "pipeline.inspect.enabled",
            MissingField,
        ),
        (
            Remove("/pipeline/fix/enabled"),
            "pipeline.fix.enabled",
            MissingField,
        ),
        (
            Remove("/pipeline/convert/enabled"),
            "pipeline.convert.enabled",
            MissingField,
        ),
        (
            Remove("/pipeline/validate/enabled"),
            "pipeline.validate.enabled",
            MissingField,
        ),
        (
            Set("/pipeline/inspect/enabled", json!("true")),
            "pipeline.inspect.enabled",
            WrongType,
        ),
        (
            Set("/pipeline/fix/enabled", json!(1)),
            "pipeline.fix.enabled",
            WrongType,
        ),
        (
            Set("/pipeline/convert/enabled", json!(null)),
            "pipeline.convert.enabled",
            WrongType,
        ),
        (
            Set("/pipeline/validate/enabled", json!([])),
            "pipeline.validate.enabled",
            WrongType,
        ),
        (
            Set("/pipeline/inspect/collect_guest_info", json!("no")),
            "pipeline.inspect.collect_guest_info",
            WrongType,
        ),
        (
            Set("/pipeline/fix/backup", json!("yes")),
            "pipeline.fix.backup",
            WrongType,
        ),
        (
            Set("/pipeline/fix/print_fstab", json!(0)),
            "pipeline.fix.print_fstab",
            WrongType,
        ),
        (
            Set("/pipeline/fix/update_grub", json!(1)),
            "pipeline.fix.update_grub",
            WrongType,
        ),
        (
            Set("/pipeline/fix/regen_initramfs", json!("true")),
            "pipeline.fix.regen_initramfs",
            WrongType,
        ),
        (
            Set("/pipeline/fix/remove_vmware_tools", json!({})),
            "pipeline.fix.remove_vmware_tools",
            WrongType,
        ),
        (
            Set("/pipeline/fix/fstab_mode", json!("all")),
            "pipeline.fix.fstab_mode",
            NotInEnum,
        ),
        (
            Set("/pipeline/fix/fstab_mode", json!(1)),
            "pipeline.fix.fstab_mode",
            WrongType,
        ),
        (
            Set("/pipeline/convert/compress", json!(9)),
            "pipeline.convert.compress",
            WrongType,
        ),
        (
            Set("/pipeline/convert/compress_level", json!(0)),
            "pipeline.convert.compress_level",
            BelowMinimum,
        ),
        (
            Set("/pipeline/convert/compress_level", json!(10)),
            "pipeline.convert.compress_level",
            AboveMaximum,
        ),
        (
            Set("/pipeline/convert/compress_level", json!("6")),
            "pipeline.convert.compress_level",
            WrongType,
        ),
        (
            Set("/pipeline/validate/check_image_integrity", json!("yes")),
            "pipeline.validate.check_image_integrity",
            WrongType,
        ),
        // configuration
        (Set("/configuration", json!([])), "configuration", WrongType),
        (
            Set("/configuration/users", json!([])),
            "configuration.users",
            WrongType,
        ),
        (
            Set("/configuration/services", json!("sshd")),
            "configuration.services",
            WrongType,
        ),
        (
            Set("/configuration/hostname", json!("web01")),
            "configuration.hostname",
            WrongType,
        ),
        (
            Set("/configuration/network", json!(1)),
            "configuration.network",
            WrongType,
        ),
        // output
        (Set("/output", json!("/work/out")), "output", WrongType),
        (
            Set("/output/directory", json!(1)),
            "output.directory",
            WrongType,
        ),
        (
            Set("/output/format", json!("vmdk")),
            "output.format",
            NotInEnum,
        ),
        (
            Set("/output/filename", json!(1)),
            "output.filename",
            WrongType,
        ),
        // options
        (Set("/options", json!(1)), "options", WrongType),
        (
            Set("/options/dry_run", json!("no")),
            "options.dry_run",
            WrongType,
        ),
        (
            Set("/options/verbose", json!(4)),
            "options.verbose",
            AboveMaximum,
        ),
        (
            Set("/options/verbose", json!(-1)),
            "options.verbose",
            BelowMinimum,
        ),
        (
            Set("/options/verbose", json!("1")),
            "options.verbose",
            WrongType,
        ),
        (
            Set("/options/report", json!(true)),
            "options.report",
            WrongType,
        ),
        (
            Set("/options/report/enabled", json!("yes")),
            "options.report.enabled",
            WrongType,
        ),
        (
            Set("/options/report/path", json!(1)),
            "options.report.path",
            WrongType,
        ),
    ]
}

/// The JSON pointer of one of our paths: `disks[1].id` is `/disks/1/id`.
fn pointer(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    format!(
        "/{}",
        path.replace('[', ".").replace(']', "").replace('.', "/")
    )
}

#[test]
fn the_base_manifest_is_valid_for_both_validators() {
    let v = full();
    let errors: Vec<String> = jsonschema_validator()
        .iter_errors(&v)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let report = Validator::check_offline(&v);
    assert!(report.is_empty(), "{report}");
    Manifest::from_value(v).unwrap();
}

#[test]
fn the_schemas_own_example_is_valid() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    assert_eq!(schema["$id"], SCHEMA_ID);
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let example = &schema["examples"][0];
    assert!(jsonschema_validator().is_valid(example));
    let report = Validator::check_offline(example);
    assert!(report.is_ok(), "{report}");
    let m = Manifest::from_value(example.clone()).unwrap();
    assert_eq!(m.disks[0].bytes, 10737418240);
}

#[test]
fn every_schema_rule_gives_its_specific_problem() {
    let independent = jsonschema_validator();
    let cases = schema_cases();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for (edit, path, kind) in &cases {
        let v = apply(edit);
        assert!(kind.is_schema_rule(), "{kind:?}");
        let report = Validator::check_schema(&v);
        let found: Vec<(&str, ProblemKind)> =
            report.iter().map(|p| (p.path.as_str(), p.kind)).collect();
        assert_eq!(found, [(*path, *kind)], "for {path}:\n{report}");
        // The message says what was expected.
        let problem = report.iter().next().unwrap();
        assert!(
            problem.message.contains("expected")
                || *kind == ProblemKind::UnsupportedVersion
                || *kind == ProblemKind::MissingField
                || *kind == ProblemKind::UnknownField,
            "{problem}"
        );
        assert!(
            problem
                .to_string()
                .starts_with(if path.is_empty() { "(root)" } else { path }),
            "{problem}"
        );
        // An independent JSON Schema validator rejects it too, at the same
        // place.
        let at = match kind {
            ProblemKind::MissingField | ProblemKind::UnknownField => {
                path.rsplit_once('.').map_or("", |(parent, _)| parent)
            }
            _ => path,
        };
        let at = pointer(at);
        let errors: Vec<String> = independent
            .iter_errors(&v)
            .map(|e| e.instance_path().to_string())
            .collect();
        assert!(
            errors.contains(&at),
            "jsonschema did not reject {at} for a bad {path}: {errors:?}"
        );
        // Reading it fails with every problem listed, naming the field.
        let e = Manifest::from_value(v.clone()).unwrap_err();
        if *kind == ProblemKind::UnsupportedVersion {
            assert_eq!(e.kind(), ErrorKind::UnsupportedVersion, "{e}");
            assert!(e.to_string().contains("2.0"), "{e}");
        } else {
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
            if !path.is_empty() {
                assert!(e.to_string().contains(path), "{e}");
            }
        }
    }
}

#[test]
fn problems_are_all_reported_at_once() {
    let mut v = full();
    v["manifest_version"] = json!("1.1");
    v["vm"]["cpu"] = json!(0);
    v["disks"][0]["checksum"] = json!("sha256:abc");
    v["disks"][1]["bytes"] = json!("zero");
    v["pipeline"]["fix"] = json!({"backup": false});
    v["options"]["verbose"] = json!(9);
    let report = Validator::check_schema(&v);
    let found: Vec<(&str, ProblemKind)> =
        report.iter().map(|p| (p.path.as_str(), p.kind)).collect();
    assert_eq!(
        found,
        [
            ("manifest_version", ProblemKind::UnsupportedVersion),
            ("vm.cpu", ProblemKind::BelowMinimum),
            ("disks[0].checksum", ProblemKind::PatternMismatch),
            ("disks[1].bytes", ProblemKind::WrongType),
            ("pipeline.fix.enabled", ProblemKind::MissingField),
            ("options.verbose", ProblemKind::AboveMaximum),
        ]
    );
    let checksum = report
        .find("disks[0].checksum", ProblemKind::PatternMismatch)
        .unwrap();
    assert_eq!(
        checksum.to_string(),
        "disks[0].checksum: expected sha256:<64 lower-case hex digits>, got \"sha256:abc\""
    );
    // The version wins in the Result form: the rest is moot for a format
    // this SDK does not read.
    let e = report.into_result("manifest 'm.json'").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion);
    assert_eq!(
        e.to_string(),
        "manifest 'm.json' has unsupported version 1.1 (supported: 1.0)"
    );

    v["manifest_version"] = json!("1.0");
    let e = Validator::check_schema(&v)
        .into_result("manifest 'm.json'")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(
        msg.starts_with("invalid data in manifest 'm.json': 5 problems"),
        "{msg}"
    );
    for path in [
        "vm.cpu",
        "disks[0].checksum",
        "disks[1].bytes",
        "pipeline.fix.enabled",
        "options.verbose",
    ] {
        assert!(
            msg.contains(&format!("\n  {path}: ")),
            "{path} missing in {msg}"
        );
    }
}

#[test]
fn unknown_fields_are_allowed_where_the_schema_allows_them() {
    let mut v = full();
    v["profile"] = json!("rhel9");
    v["source"]["region"] = json!("eu");
    v["vm"]["numa"] = json!({"nodes": 2});
    v["disks"][0]["x-vendor"] = json!([1, 2]);
    v["nics"][0]["adapter"] = json!("vmxnet3");
    v["warnings"][0]["code"] = json!(42);
    v["metadata"]["owner"] = json!("ops");
    v["pipeline"]["fix"]["x"] = json!(1);
    v["configuration"]["extra"] = json!({});
    v["output"]["compat"] = json!("1.1");
    v["options"]["x"] = json!(null);
    v["options"]["report"]["x"] = json!(null);
    assert!(jsonschema_validator().is_valid(&v));
    assert!(Validator::check_offline(&v).is_empty());
    let m = Manifest::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&m).unwrap(), v);
}

/// The rules the schema cannot express: a JSON Schema validator accepts
/// these manifests, ours reports the specific problem.
#[test]
fn semantic_rules() {
    use ProblemKind::*;
    let cases: Vec<(Edit, &str, ProblemKind)> = vec![
        (
            Set("/disks/1/id", json!("disk-0")),
            "disks[1].id",
            DuplicateId,
        ),
        (
            Set("/disks/1/disk_type", json!("boot")),
            "disks[1].disk_type",
            MultipleBootDisks,
        ),
        (
            Set("/disks/1/boot_order_hint", json!(0)),
            "disks[1].boot_order_hint",
            AmbiguousBootOrder,
        ),
        // The Go builder's bug: hint 0 dropped, so the data disk's hint 1
        // is the lowest and hyper2kvm fixes the data disk.
        (
            Remove("/disks/0/boot_order_hint"),
            "disks[0].disk_type",
            BootDiskMismatch,
        ),
    ];
    let independent = jsonschema_validator();
    for (edit, path, kind) in cases {
        let v = apply(&edit);
        assert!(independent.is_valid(&v), "{path}");
        assert!(Validator::check_schema(&v).is_empty());
        let report = Validator::check_offline(&v);
        let found: Vec<(&str, ProblemKind)> =
            report.errors().map(|p| (p.path.as_str(), p.kind)).collect();
        assert_eq!(found, [(path, kind)], "{report}");
    }

    // No hints at all: the first disk boots, as the contract says.
    let mut v = full();
    for d in v["disks"].as_array_mut().unwrap() {
        d.as_object_mut().unwrap().remove("boot_order_hint");
    }
    assert!(Validator::check_offline(&v).is_ok());
    v["disks"][0]["disk_type"] = json!("data");
    v["disks"][1]["disk_type"] = json!("boot");
    let report = Validator::check_offline(&v);
    assert!(
        report
            .find("disks[1].disk_type", BootDiskMismatch)
            .is_some(),
        "{report}"
    );
}

#[test]
fn warnings_do_not_make_a_manifest_invalid() {
    let mut v = full();
    v["disks"][1]["local_path"] = json!("disk-1.raw");
    v["disks"][1].as_object_mut().unwrap().remove("checksum");
    let report = Validator::check_offline(&v);
    assert!(report.is_ok(), "{report}");
    let warnings: Vec<(&str, ProblemKind)> = report
        .warnings()
        .map(|p| (p.path.as_str(), p.kind))
        .collect();
    assert_eq!(
        warnings,
        [
            ("disks[1].local_path", ProblemKind::RelativePath),
            ("disks[1].checksum", ProblemKind::MissingChecksum),
        ]
    );
    report.into_result("m").unwrap();
}

#[test]
fn not_json_is_a_problem_not_a_panic() {
    for text in ["", "{", "[1,", "\u{0}", "{\"manifest_version\": \"1.0\", }"] {
        let e = Manifest::from_json(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{text:?}: {e}");
    }
}
