//! Checks and shows Artifact Manifest v1.0 files, the hand-off from an
//! export to the converter (hyper2kvm).
//!
//! ```text
//! cargo run -p hypersdk-examples --example manifest -- validate FILE [--no-checksums] [--parallel N]
//! cargo run -p hypersdk-examples --example manifest -- show FILE
//! ```
//!
//! `validate` checks the schema's rules, the semantic rules (unique disk
//! ids, one boot disk) and the disk files (present, of the size the
//! manifest says, with its SHA-256, hashed N disks at once; skip the hashing
//! with `--no-checksums`). It prints every problem with the field's path and
//! exits 1 if there is an error (warnings alone exit 0), 2 on bad usage or
//! an unreadable file. `show` prints a summary of a manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hypersdk_manifest::{DEFAULT_PARALLELISM, Manifest, Severity, ValidationReport, Validator};

const USAGE: &str =
    "usage: manifest validate FILE [--no-checksums] [--parallel N]\n       manifest show FILE";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Validate {
        file: PathBuf,
        checksums: bool,
        parallel: usize,
    },
    Show {
        file: PathBuf,
    },
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let command = args.next().ok_or("missing command")?;
    let mut file = None;
    let mut checksums = true;
    let mut parallel = DEFAULT_PARALLELISM;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-checksums" if command == "validate" => checksums = false,
            "--parallel" if command == "validate" => {
                let n = args.next().ok_or("--parallel needs a number")?;
                parallel = match n.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--parallel: '{n}' is not a positive number")),
                };
            }
            "-h" | "--help" => return Err(String::new()),
            a if a.starts_with("--") => return Err(format!("unknown option '{a}'")),
            _ if file.is_none() => file = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument '{arg}'")),
        }
    }
    let file = file.ok_or("missing FILE")?;
    match command.as_str() {
        "validate" => Ok(Command::Validate {
            file,
            checksums,
            parallel,
        }),
        "show" => Ok(Command::Show { file }),
        c => Err(format!("unknown command '{c}'")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("manifest: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Validate {
            file,
            checksums,
            parallel,
        } => validate(&file, checksums, parallel).await,
        Command::Show { file } => show(&file),
    }
}

async fn validate(file: &Path, checksums: bool, parallel: usize) -> ExitCode {
    let validator = Validator::new()
        .with_checksums(checksums)
        .with_parallelism(parallel);
    let report = match validator.validate_file(file).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("manifest: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", render_report(file, &report, checksums));
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The report as printed: one line per problem, then a verdict.
fn render_report(file: &Path, report: &ValidationReport, checksums: bool) -> String {
    let mut out = String::new();
    for p in report {
        let tag = match p.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{tag}: {p}\n"));
    }
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    let what = if checksums {
        "schema, semantics, files and checksums"
    } else {
        "schema, semantics and files (checksums skipped)"
    };
    if errors == 0 {
        out.push_str(&format!(
            "{}: valid ({what} checked), {warnings} warning(s)\n",
            file.display()
        ));
    } else {
        out.push_str(&format!(
            "{}: INVALID, {errors} error(s), {warnings} warning(s)\n",
            file.display()
        ));
    }
    out
}

fn show(file: &Path) -> ExitCode {
    match Manifest::read(file) {
        Ok(m) => {
            print!("{}", summary(&m));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("manifest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A human summary of a manifest.
fn summary(m: &Manifest) -> String {
    let mut out = format!("Artifact Manifest v{}\n", m.manifest_version);
    if let Some(s) = &m.source {
        out.push_str(&format!(
            "source:   {} VM '{}' ({}) in {}, exported {} by {}\n",
            or_dash(s.provider.as_deref()),
            or_dash(s.vm_name.as_deref()),
            or_dash(s.vm_id.as_deref()),
            or_dash(s.datacenter.as_deref()),
            s.export_timestamp
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            or_dash(s.export_method.as_deref()),
        ));
    }
    if let Some(vm) = &m.vm {
        out.push_str(&format!(
            "vm:       {} vCPU, {} GB, firmware {}{}, os {}{}\n",
            vm.cpu.map_or_else(|| "?".to_owned(), |c| c.to_string()),
            vm.mem_gb.map_or_else(|| "?".to_owned(), |g| g.to_string()),
            vm.firmware
                .map_or_else(|| "- (bios assumed)".to_owned(), |f| f.to_string()),
            if vm.secureboot == Some(true) {
                " + secure boot"
            } else {
                ""
            },
            or_dash(vm.os_hint.as_deref()),
            vm.os_version
                .as_deref()
                .map_or_else(String::new, |v| format!(" ({v})")),
        ));
    }
    let boot = m.boot_disk().map(|d| d.id.clone());
    out.push_str(&format!("disks:    {}\n", m.disks.len()));
    for d in &m.disks {
        let checksum = d.checksum.map_or_else(
            || "no checksum".to_owned(),
            |c| format!("sha256:{}…", &c.to_hex()[..12]),
        );
        out.push_str(&format!(
            "  {:<12} {:<5} {:>10}  hint {:<3} {:<7}{} {}\n           {}\n",
            d.id,
            d.source_format,
            human(d.bytes),
            d.boot_order_hint
                .map_or_else(|| "-".to_owned(), |h| h.to_string()),
            d.disk_type.map_or("-", |t| t.as_str()),
            if boot.as_deref() == Some(d.id.as_str()) {
                " (boots)"
            } else {
                ""
            },
            checksum,
            d.local_path,
        ));
    }
    for n in &m.nics {
        out.push_str(&format!(
            "nic:      {} {} on {}\n",
            or_dash(n.id.as_deref()),
            or_dash(n.mac.as_deref()),
            or_dash(n.network.as_deref()),
        ));
    }
    match &m.pipeline {
        Some(p) => {
            let stage = |name: &str, on: Option<bool>| match on {
                Some(true) => format!("{name}:on"),
                Some(false) => format!("{name}:off"),
                None => format!("{name}:absent"),
            };
            out.push_str(&format!(
                "pipeline: {} {} {} {}\n",
                stage("inspect", p.inspect.as_ref().map(|s| s.enabled)),
                stage("fix", p.fix.as_ref().map(|s| s.enabled)),
                stage("convert", p.convert.as_ref().map(|s| s.enabled)),
                stage("validate", p.validate.as_ref().map(|s| s.enabled)),
            ));
        }
        None => out.push_str("pipeline: none (hyper2kvm will convert nothing)\n"),
    }
    if let Some(o) = &m.output {
        out.push_str(&format!(
            "output:   {} in {}\n",
            o.format.map_or("qcow2 (default)", |f| f.as_str()),
            o.directory
                .as_deref()
                .unwrap_or("<manifest dir>/output (default)"),
        ));
    }
    if let Some(meta) = &m.metadata {
        out.push_str(&format!(
            "metadata: hypersdk {}, job {}, created {}\n",
            or_dash(meta.hypersdk_version.as_deref()),
            or_dash(meta.job_id.as_deref()),
            meta.created_at
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        ));
        for (k, v) in &meta.tags {
            out.push_str(&format!("  tag {k} = {v}\n"));
        }
    }
    for n in &m.notes {
        out.push_str(&format!("note:     {n}\n"));
    }
    for w in &m.warnings {
        out.push_str(&format!("warning:  [{}] {}\n", w.stage, w.message));
    }
    if !m.extra.is_empty() {
        let keys: Vec<&str> = m.extra.keys().map(String::as_str).collect();
        out.push_str(&format!("other:    {}\n", keys.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::digest::{Algorithm, hash_file};
    use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
    use hypersdk_manifest::{ExportResult, ExportedDisk, write_export_manifest};

    fn args(s: &str) -> Result<Command, String> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args("validate m.json --no-checksums --parallel 8"),
            Ok(Command::Validate {
                file: "m.json".into(),
                checksums: false,
                parallel: 8
            })
        );
        assert_eq!(
            args("show m.json"),
            Ok(Command::Show {
                file: "m.json".into()
            })
        );
        assert!(args("").is_err());
        assert!(args("validate").is_err());
        assert!(args("show m.json --no-checksums").is_err());
        assert!(args("validate m.json --parallel 0").is_err());
        assert!(args("check m.json").is_err());
        assert!(args("validate a b").is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn validate_and_show_an_export() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web01.raw");
        std::fs::write(&file, vec![7u8; 8192]).unwrap();
        let digests = hash_file(&file, &[Algorithm::Sha256]).await.unwrap();
        let mut vm = VmInfo::new("vm-1", "web01");
        vm.cpus = 2;
        vm.memory_mib = 2048;
        let result = ExportResult::new("memory", vm, "memory-snapshot").with_disk(
            ExportedDisk::from_file(DiskInfo::new("disk-0", 8192), &file, DiskFormat::Raw)
                .unwrap()
                .with_digests(digests),
        );
        let path = write_export_manifest(&result, dir.path()).await.unwrap();

        let report = Validator::new().validate_file(&path).await.unwrap();
        let text = render_report(&path, &report, true);
        assert!(
            text.ends_with(
                "valid (schema, semantics, files and checksums checked), 0 warning(s)\n"
            ),
            "{text}"
        );

        let m = Manifest::read(&path).unwrap();
        let s = summary(&m);
        assert!(s.contains("memory VM 'web01' (vm-1)"), "{s}");
        assert!(s.contains("2 vCPU, 2 GB"), "{s}");
        assert!(
            s.contains("disk-0") && s.contains("8.0 KiB") && s.contains("(boots)"),
            "{s}"
        );
        assert!(
            s.contains("pipeline: inspect:on fix:on convert:on validate:on"),
            "{s}"
        );

        std::fs::write(&file, vec![8u8; 8192]).unwrap();
        let report = Validator::new().validate_file(&path).await.unwrap();
        let text = render_report(&path, &report, true);
        assert!(text.contains("error: disks[0].checksum: "), "{text}");
        assert!(text.contains("INVALID, 1 error(s)"), "{text}");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10), "10 B");
    }
}
