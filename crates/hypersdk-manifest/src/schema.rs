//! The rules of the JSON Schema ([`crate::SCHEMA`]), in Rust, over a raw
//! [`serde_json::Value`], and the semantic rules that need the whole
//! manifest (unique ids, one boot disk).
//!
//! Working on the raw value means a manifest with a wrong type anywhere
//! still gets every other problem reported, each with its path. Each
//! function below mirrors one object of the schema; the keyword it checks
//! is named in the problem's [`ProblemKind`].

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::model::{
    DEFAULT_BOOT_ORDER_HINT, MANIFEST_VERSION, Timestamp, is_sha256_checksum, is_valid_disk_id,
    is_valid_mac,
};
use crate::report::{ProblemKind, ValidationReport};

const SOURCE_FORMATS: &[&str] = &["vmdk", "qcow2", "raw", "vhd", "vhdx", "vdi"];
const DISK_TYPES: &[&str] = &["boot", "data", "unknown"];
const FIRMWARES: &[&str] = &["bios", "uefi", "unknown"];
const FSTAB_MODES: &[&str] = &["stabilize-all", "bypath-only", "noop"];
const OUTPUT_FORMATS: &[&str] = &["qcow2", "raw", "vdi"];
const STAGES: &[&str] = &["inspect", "fix", "convert", "validate"];

/// The path of field `key` of the object at `parent`.
pub(crate) fn field(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), simple) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", Value::from(key)),
    }
}

/// The path of item `i` of the array at `parent`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A short rendering of a value for messages.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks the schema's rules; every violation goes into `report`.
pub(crate) fn check(value: &Value, report: &mut ValidationReport) {
    Checker { report }.root(value);
}

struct Checker<'r> {
    report: &'r mut ValidationReport,
}

impl Checker<'_> {
    fn wrong_type(&mut self, path: &str, expected: &str, v: &Value) {
        self.report.add(
            path,
            ProblemKind::WrongType,
            format!("expected {expected}, got {} {}", type_name(v), show(v)),
        );
    }

    fn object<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.wrong_type(path, "an object", v);
        }
        o
    }

    fn array<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Vec<Value>> {
        let a = v.as_array();
        if a.is_none() {
            self.wrong_type(path, "an array", v);
        }
        a
    }

    fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        let s = v.as_str();
        if s.is_none() {
            self.wrong_type(path, "a string", v);
        }
        s
    }

    /// An integer as JSON writes one (no fraction, no exponent), as i128.
    fn integer(&mut self, path: &str, v: &Value) -> Option<i128> {
        let n = v
            .as_u64()
            .map(i128::from)
            .or_else(|| v.as_i64().map(i128::from));
        if n.is_none() {
            self.wrong_type(path, "an integer", v);
        }
        n
    }

    fn boolean(&mut self, path: &str, v: &Value) {
        if !v.is_boolean() {
            self.wrong_type(path, "a boolean", v);
        }
    }

    fn required<'v>(
        &mut self,
        parent: &str,
        o: &'v Map<String, Value>,
        key: &str,
    ) -> Option<&'v Value> {
        let v = o.get(key);
        if v.is_none() {
            self.report.add(
                field(parent, key),
                ProblemKind::MissingField,
                "required field is missing",
            );
        }
        v
    }

    fn opt_string(&mut self, parent: &str, o: &Map<String, Value>, key: &str) {
        if let Some(v) = o.get(key) {
            self.string(&field(parent, key), v);
        }
    }

    fn opt_bool(&mut self, parent: &str, o: &Map<String, Value>, key: &str) {
        if let Some(v) = o.get(key) {
            self.boolean(&field(parent, key), v);
        }
    }

    fn opt_object<'v>(
        &mut self,
        parent: &str,
        o: &'v Map<String, Value>,
        key: &str,
    ) -> Option<&'v Map<String, Value>> {
        o.get(key).and_then(|v| self.object(&field(parent, key), v))
    }

    fn enumerated(&mut self, path: &str, v: &Value, allowed: &[&str]) {
        if let Some(s) = self.string(path, v)
            && !allowed.contains(&s)
        {
            self.report.add(
                path,
                ProblemKind::NotInEnum,
                format!("expected one of {}, got {}", allowed.join(", "), show(v)),
            );
        }
    }

    fn opt_enum(&mut self, parent: &str, o: &Map<String, Value>, key: &str, allowed: &[&str]) {
        if let Some(v) = o.get(key) {
            self.enumerated(&field(parent, key), v, allowed);
        }
    }

    fn int_range(&mut self, path: &str, v: &Value, min: Option<i128>, max: Option<i128>) {
        let Some(n) = self.integer(path, v) else {
            return;
        };
        if let Some(min) = min
            && n < min
        {
            self.report.add(
                path,
                ProblemKind::BelowMinimum,
                format!("expected at least {min}, got {n}"),
            );
        }
        if let Some(max) = max
            && n > max
        {
            self.report.add(
                path,
                ProblemKind::AboveMaximum,
                format!("expected at most {max}, got {n}"),
            );
        }
    }

    fn opt_int(
        &mut self,
        parent: &str,
        o: &Map<String, Value>,
        key: &str,
        min: Option<i128>,
        max: Option<i128>,
    ) {
        if let Some(v) = o.get(key) {
            self.int_range(&field(parent, key), v, min, max);
        }
    }

    fn opt_datetime(&mut self, parent: &str, o: &Map<String, Value>, key: &str) {
        let Some(v) = o.get(key) else { return };
        let path = field(parent, key);
        if let Some(s) = self.string(&path, v)
            && s.parse::<Timestamp>().is_err()
        {
            self.report.add(
                path,
                ProblemKind::InvalidDateTime,
                format!(
                    "expected an RFC 3339 date-time such as 2026-01-21T20:00:00Z, got {}",
                    show(v)
                ),
            );
        }
    }

    fn pattern(&mut self, path: &str, v: &Value, ok: fn(&str) -> bool, expected: &str) {
        if let Some(s) = self.string(path, v)
            && !ok(s)
        {
            self.report.add(
                path,
                ProblemKind::PatternMismatch,
                format!("expected {expected}, got {}", show(v)),
            );
        }
    }

    fn root(&mut self, value: &Value) {
        let Some(root) = self.object("", value) else {
            return;
        };
        if let Some(v) = self.required("", root, "manifest_version")
            && let Some(s) = self.string("manifest_version", v)
            && s != MANIFEST_VERSION
        {
            self.report.unsupported_version(
                s,
                format!(
                    "unsupported manifest_version {}: this SDK reads {MANIFEST_VERSION} only",
                    show(v)
                ),
            );
        }
        if let Some(source) = self.opt_object("", root, "source") {
            for key in [
                "provider",
                "vm_id",
                "vm_name",
                "datacenter",
                "export_method",
            ] {
                self.opt_string("source", source, key);
            }
            self.opt_datetime("source", source, "export_timestamp");
        }
        if let Some(vm) = self.opt_object("", root, "vm") {
            self.opt_int("vm", vm, "cpu", Some(1), None);
            self.opt_int("vm", vm, "mem_gb", Some(1), None);
            self.opt_enum("vm", vm, "firmware", FIRMWARES);
            self.opt_bool("vm", vm, "secureboot");
            self.opt_string("vm", vm, "os_hint");
            self.opt_string("vm", vm, "os_version");
        }
        if let Some(v) = self.required("", root, "disks")
            && let Some(disks) = self.array("disks", v)
        {
            if disks.is_empty() {
                self.report.add(
                    "disks",
                    ProblemKind::TooFewItems,
                    "expected at least one disk, got none",
                );
            }
            for (i, disk) in disks.iter().enumerate() {
                self.disk(&index("disks", i), disk);
            }
        }
        if let Some(v) = root.get("nics")
            && let Some(nics) = self.array("nics", v)
        {
            for (i, nic) in nics.iter().enumerate() {
                let path = index("nics", i);
                if let Some(nic) = self.object(&path, nic) {
                    self.opt_string(&path, nic, "id");
                    if let Some(mac) = nic.get("mac") {
                        self.pattern(
                            &field(&path, "mac"),
                            mac,
                            is_valid_mac,
                            "a MAC address such as 00:50:56:ab:cd:ef",
                        );
                    }
                    self.opt_string(&path, nic, "network");
                }
            }
        }
        if let Some(v) = root.get("notes")
            && let Some(notes) = self.array("notes", v)
        {
            for (i, note) in notes.iter().enumerate() {
                self.string(&index("notes", i), note);
            }
        }
        if let Some(v) = root.get("warnings")
            && let Some(warnings) = self.array("warnings", v)
        {
            for (i, w) in warnings.iter().enumerate() {
                let path = index("warnings", i);
                if let Some(w) = self.object(&path, w) {
                    for key in ["stage", "message"] {
                        if let Some(v) = self.required(&path, w, key) {
                            self.string(&field(&path, key), v);
                        }
                    }
                    self.opt_datetime(&path, w, "timestamp");
                }
            }
        }
        if let Some(meta) = self.opt_object("", root, "metadata") {
            self.opt_string("metadata", meta, "hypersdk_version");
            self.opt_string("metadata", meta, "job_id");
            self.opt_datetime("metadata", meta, "created_at");
            if let Some(tags) = self.opt_object("metadata", meta, "tags") {
                for (key, v) in tags {
                    self.string(&field("metadata.tags", key), v);
                }
            }
        }
        if let Some(pipeline) = self.opt_object("", root, "pipeline") {
            self.pipeline(pipeline);
        }
        if let Some(conf) = self.opt_object("", root, "configuration") {
            for key in ["users", "services", "hostname", "network"] {
                self.opt_object("configuration", conf, key);
            }
        }
        if let Some(output) = self.opt_object("", root, "output") {
            self.opt_string("output", output, "directory");
            self.opt_enum("output", output, "format", OUTPUT_FORMATS);
            self.opt_string("output", output, "filename");
        }
        if let Some(options) = self.opt_object("", root, "options") {
            self.opt_bool("options", options, "dry_run");
            self.opt_int("options", options, "verbose", Some(0), Some(3));
            if let Some(report) = self.opt_object("options", options, "report") {
                self.opt_bool("options.report", report, "enabled");
                self.opt_string("options.report", report, "path");
            }
        }
    }

    fn disk(&mut self, path: &str, v: &Value) {
        let Some(disk) = self.object(path, v) else {
            return;
        };
        if let Some(v) = self.required(path, disk, "id") {
            self.pattern(
                &field(path, "id"),
                v,
                is_valid_disk_id,
                "letters, digits, '_' and '-' only (^[a-zA-Z0-9_-]+$)",
            );
        }
        if let Some(v) = self.required(path, disk, "source_format") {
            self.enumerated(&field(path, "source_format"), v, SOURCE_FORMATS);
        }
        if let Some(v) = self.required(path, disk, "bytes") {
            self.int_range(&field(path, "bytes"), v, Some(0), None);
        }
        if let Some(v) = self.required(path, disk, "local_path") {
            self.string(&field(path, "local_path"), v);
        }
        if let Some(v) = disk.get("checksum") {
            self.pattern(
                &field(path, "checksum"),
                v,
                is_sha256_checksum,
                "sha256:<64 lower-case hex digits>",
            );
        }
        self.opt_int(path, disk, "boot_order_hint", Some(0), None);
        self.opt_string(path, disk, "label");
        self.opt_enum(path, disk, "disk_type", DISK_TYPES);
    }

    fn pipeline(&mut self, pipeline: &Map<String, Value>) {
        for key in pipeline.keys() {
            if !STAGES.contains(&key.as_str()) {
                self.report.add(
                    field("pipeline", key),
                    ProblemKind::UnknownField,
                    format!(
                        "unknown pipeline stage; the schema allows {} only",
                        STAGES.join(", ")
                    ),
                );
            }
        }
        for stage in STAGES {
            let Some(o) = self.opt_object("pipeline", pipeline, stage) else {
                continue;
            };
            let path = field("pipeline", stage);
            if let Some(v) = self.required(&path, o, "enabled") {
                self.boolean(&field(&path, "enabled"), v);
            }
            match *stage {
                "inspect" => self.opt_bool(&path, o, "collect_guest_info"),
                "fix" => {
                    for key in [
                        "backup",
                        "print_fstab",
                        "update_grub",
                        "regen_initramfs",
                        "remove_vmware_tools",
                    ] {
                        self.opt_bool(&path, o, key);
                    }
                    self.opt_enum(&path, o, "fstab_mode", FSTAB_MODES);
                }
                "convert" => {
                    self.opt_bool(&path, o, "compress");
                    self.opt_int(&path, o, "compress_level", Some(1), Some(9));
                }
                _ => self.opt_bool(&path, o, "check_image_integrity"),
            }
        }
    }
}

/// Checks the rules that need the whole manifest: disk ids unique, one
/// boot disk that hyper2kvm will agree on; and warns about relative paths
/// and missing checksums. Fields of the wrong type are skipped here (the
/// schema check reports them).
pub(crate) fn check_semantics(value: &Value, report: &mut ValidationReport) {
    let Some(disks) = value.get("disks").and_then(Value::as_array) else {
        return;
    };
    struct D<'v> {
        i: usize,
        id: Option<&'v str>,
        hint: Option<u64>,
        boot: bool,
    }
    let ds: Vec<D<'_>> = disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let o = d.as_object()?;
            Some(D {
                i,
                id: o.get("id").and_then(Value::as_str),
                hint: o.get("boot_order_hint").and_then(Value::as_u64),
                boot: o.get("disk_type").and_then(Value::as_str) == Some("boot"),
            })
        })
        .collect();
    let label = |d: &D<'_>| match d.id {
        Some(id) => format!("disks[{}] ('{id}')", d.i),
        None => format!("disks[{}]", d.i),
    };

    // Unique ids.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for d in &ds {
        if let Some(id) = d.id {
            if let Some(&j) = first.get(id) {
                report.add(
                    field(&index("disks", d.i), "id"),
                    ProblemKind::DuplicateId,
                    format!("duplicate disk id '{id}', also disks[{j}].id"),
                );
            } else {
                first.insert(id, d.i);
            }
        }
    }

    // One boot disk. hyper2kvm boots the disk with the lowest hint (999 when
    // absent), the first on a tie.
    let typed_boot: Vec<&D<'_>> = ds.iter().filter(|d| d.boot).collect();
    for extra in typed_boot.iter().skip(1) {
        report.add(
            field(&index("disks", extra.i), "disk_type"),
            ProblemKind::MultipleBootDisks,
            format!(
                "a second boot disk: {} is of disk_type boot already",
                label(typed_boot[0])
            ),
        );
    }
    if let Some(min) = ds.iter().filter_map(|d| d.hint).min() {
        let lowest: Vec<&D<'_>> = ds.iter().filter(|d| d.hint == Some(min)).collect();
        for other in lowest.iter().skip(1) {
            report.add(
                field(&index("disks", other.i), "boot_order_hint"),
                ProblemKind::AmbiguousBootOrder,
                format!(
                    "boot_order_hint {min} is also that of {}: which disk boots depends on \
                     their order in the file",
                    label(lowest[0])
                ),
            );
        }
    }
    if let [boot] = typed_boot[..]
        && let Some(chosen) = ds
            .iter()
            .min_by_key(|d| (d.hint.unwrap_or(DEFAULT_BOOT_ORDER_HINT), d.i))
        && chosen.i != boot.i
    {
        report.add(
            field(&index("disks", boot.i), "disk_type"),
            ProblemKind::BootDiskMismatch,
            format!(
                "disk_type is boot, but hyper2kvm boots (and fixes) {} whose boot_order_hint \
                 is lower: give the boot disk the lowest boot_order_hint",
                label(chosen)
            ),
        );
    }

    // Warnings.
    for (i, d) in disks.iter().enumerate() {
        let Some(o) = d.as_object() else { continue };
        let path = index("disks", i);
        if let Some(p) = o.get("local_path").and_then(Value::as_str)
            && !p.is_empty()
            && !std::path::Path::new(p).is_absolute()
            && !p.starts_with('~')
        {
            report.add(
                field(&path, "local_path"),
                ProblemKind::RelativePath,
                format!(
                    "relative path '{p}': hyper2kvm resolves it against its own working \
                     directory; write an absolute path"
                ),
            );
        }
        if !o.contains_key("checksum") {
            report.add(
                field(&path, "checksum"),
                ProblemKind::MissingChecksum,
                "no checksum: hyper2kvm will not verify this disk",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(field("", "disks"), "disks");
        assert_eq!(field("disks[1]", "checksum"), "disks[1].checksum");
        assert_eq!(field("metadata.tags", "a b"), "metadata.tags[\"a b\"]");
        assert_eq!(index("disks", 3), "disks[3]");
    }

    #[test]
    fn wrong_root() {
        for v in [json!([]), json!("x"), Value::Null, json!(1)] {
            let mut r = ValidationReport::new();
            check(&v, &mut r);
            assert_eq!(r.len(), 1, "{r}");
            let p = r.iter().next().unwrap();
            assert_eq!((p.path.as_str(), p.kind), ("", ProblemKind::WrongType));
            assert_eq!(p.to_string().split(':').next(), Some("(root)"));
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let v = json!({
            "manifest_version": 1,
            "vm": {"cpu": 0, "mem_gb": "4", "firmware": "efi"},
            "disks": [
                {"id": "a", "source_format": "vmdk", "bytes": 1, "local_path": "/a",
                 "checksum": "md5:00", "boot_order_hint": 0},
                {"id": "a", "source_format": "iso", "bytes": 1.0, "local_path": 7,
                 "disk_type": "boot", "boot_order_hint": 1},
                "not a disk"
            ],
            "pipeline": {"fix": {"backup": "yes"}, "deploy": {}}
        });
        let mut r = ValidationReport::new();
        check(&v, &mut r);
        check_semantics(&v, &mut r);
        let got: Vec<(String, ProblemKind)> = r.iter().map(|p| (p.path.clone(), p.kind)).collect();
        let want = [
            ("manifest_version", ProblemKind::WrongType),
            ("vm.cpu", ProblemKind::BelowMinimum),
            ("vm.mem_gb", ProblemKind::WrongType),
            ("vm.firmware", ProblemKind::NotInEnum),
            ("disks[0].checksum", ProblemKind::PatternMismatch),
            ("disks[1].source_format", ProblemKind::NotInEnum),
            ("disks[1].bytes", ProblemKind::WrongType),
            ("disks[1].local_path", ProblemKind::WrongType),
            ("disks[2]", ProblemKind::WrongType),
            ("pipeline.deploy", ProblemKind::UnknownField),
            ("pipeline.fix.enabled", ProblemKind::MissingField),
            ("pipeline.fix.backup", ProblemKind::WrongType),
            ("disks[1].id", ProblemKind::DuplicateId),
            ("disks[1].disk_type", ProblemKind::BootDiskMismatch),
            ("disks[1].checksum", ProblemKind::MissingChecksum),
        ];
        let want: Vec<(String, ProblemKind)> =
            want.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(got, want, "{r}");
    }
}
