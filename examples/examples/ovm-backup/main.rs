//! `ovm-backup`: full and incremental backups of Oracle VM guests through
//! the Coriolis OVM exporter, into sparse raw images (and optionally an OVA
//! and an Artifact Manifest).
//!
//! ```text
//! cargo run -p hypersdk-examples --example ovm-backup -- [OPTIONS] COMMAND
//!
//! ovm-backup list-vms
//! ovm-backup list-snapshots <VM>
//! ovm-backup full <VM> --out DIR [--snapshot ID] [--keep-previous] [--ova FILE] [--manifest]
//! ovm-backup incremental <VM> --from SNAPSHOT --out DIR [--snapshot ID] [--keep-previous]
//!                                [--quick-check] [--ova FILE] [--manifest]
//! ovm-backup status --out DIR
//! ovm-backup demo --out DIR
//! ```
//!
//! `<VM>` is the VM's id (32 hex digits, the exporter's `vmID`) or its
//! friendly name when that is unique.
//!
//! Connection options, read from the environment like the python client
//! (`ovm-exporter`) does:
//!
//! | option | environment | |
//! |---|---|---|
//! | `--endpoint URL` | `OVM_EXPORTER_ENDPOINT` | e.g. `https://10.0.0.5:5544` |
//! | `--username U` | `OVM_EXPORTER_USERNAME` | an OVM Manager user |
//! | `--password P` | `OVM_EXPORTER_PASSWORD` | asked on the terminal when missing |
//! | `--ca-file PEM` | `OVM_EXPORTER_CAFILE` | trust this CA bundle only |
//! | `--thumbprint AB:CD:…` | | trust exactly this certificate (SHA-256 or SHA-1) |
//! | `--insecure` | | accept any certificate (labs only) |
//!
//! Without `--ca-file`, `--thumbprint` or `--insecure` the system's roots
//! are trusted. `--parallel N` sets the ranges in flight per disk
//! (default 4, at least 1), `--quiet` hides the progress bars (drawn on
//! standard error only when it is a terminal), `--json` prints the reports
//! as JSON.
//!
//! - `full` takes a snapshot and copies every allocated byte of every disk
//!   into `DIR/<disk name>` (sparse, SHA-256 computed on the way), and
//!   records the state in `DIR/ovm-backup.json`.
//! - `incremental --from S` checks that the images in `DIR` are those
//!   recorded for snapshot `S` (SHA-256 of each image; `--quick-check`
//!   compares file fingerprints and hashes only images that changed),
//!   takes a new snapshot, copies only what changed since `S` and punches
//!   what the guest freed, then deletes `S` (unless `--keep-previous`).
//!   A wrong image is refused before anything is created or written.
//! - An interrupted `full` or `incremental` continues where it stopped when
//!   run again with the same arguments.
//! - `--ova FILE` then packs the images as streamOptimized VMDKs into an
//!   OVA; `--manifest` writes `DIR/artifact-manifest.json`.
//! - `status` shows what `DIR` holds.
//! - `demo` needs no exporter: it starts hypersdk's OVM exporter test
//!   server in-process with a demo VM, runs a full backup, lets the guest
//!   write and trim, runs an incremental, and checks both images against
//!   the server's snapshot files.
//!
//! Exit status: 0 success, 1 failure, 2 bad usage, 3 an image is not the
//! one recorded (integrity). Errors are one line on standard error:
//! `ovm-backup: <what was wrong>`.

mod demo;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hypersdk_core::progress::Progress;
use hypersdk_core::{Error, ErrorKind, Result};
use hypersdk_examples::bar::BarSink;
use hypersdk_ovm::backup::{
    BackupOptions, BackupReport, BackupState, OvaOptions, OvmBackup, PreviousCheck,
};
use hypersdk_ovm::client::OvmClient;
use hypersdk_ovm::types::{SnapshotQuery, VirtualMachine};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ovm-backup",
    version,
    about = "Full and incremental backups of Oracle VM guests through the Coriolis OVM exporter",
    after_help = "Exit status: 0 success, 1 failure, 2 bad usage, 3 an image is not the one recorded."
)]
struct Cli {
    /// The exporter, e.g. https://10.0.0.5:5544.
    #[arg(long, env = "OVM_EXPORTER_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// The OVM Manager user the exporter checks logins against.
    #[arg(long, env = "OVM_EXPORTER_USERNAME", global = true)]
    username: Option<String>,
    /// The password (asked on the terminal when missing).
    #[arg(
        long,
        env = "OVM_EXPORTER_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    password: Option<String>,
    /// Trust only the CA certificates of this PEM file.
    #[arg(long, env = "OVM_EXPORTER_CAFILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 (or SHA-1) thumbprint.
    #[arg(long, global = true)]
    thumbprint: Option<String>,
    /// Accept any certificate (labs only: an impostor gets the password).
    #[arg(long, global = true)]
    insecure: bool,
    /// Ranges in flight per disk (at least 1).
    #[arg(long, default_value_t = 4, global = true)]
    parallel: usize,
    /// Draw no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print reports as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the VMs the exporter serves.
    ListVms,
    /// List a VM's snapshots (oldest first).
    ListSnapshots {
        /// The VM's id or unique friendly name.
        vm: String,
    },
    /// Back up every allocated byte of a VM's disks into DIR.
    Full {
        /// The VM's id or unique friendly name.
        vm: String,
        #[command(flatten)]
        common: BackupArgs,
    },
    /// Back up what changed since the snapshot the images in DIR hold.
    Incremental {
        /// The VM's id or unique friendly name.
        vm: String,
        /// The snapshot the images in DIR hold.
        #[arg(long)]
        from: String,
        /// Compare file fingerprints instead of hashing every image first
        /// (images whose fingerprint changed are still hashed).
        #[arg(long)]
        quick_check: bool,
        #[command(flatten)]
        common: BackupArgs,
    },
    /// Show what a backup directory holds.
    Status {
        /// The backup directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a full and an incremental backup against an in-process test
    /// exporter (no server needed).
    Demo {
        /// Where to write the demo backup.
        #[arg(long)]
        out: PathBuf,
        /// Size of each of the demo VM's two disks, in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// The backup directory (created when missing).
    #[arg(long)]
    out: PathBuf,
    /// Back up this existing snapshot instead of creating one.
    #[arg(long)]
    snapshot: Option<String>,
    /// Keep the snapshot the images held before (deleted by default once
    /// the backup succeeded).
    #[arg(long)]
    keep_previous: bool,
    /// Then pack the images as streamOptimized VMDKs into this OVA.
    #[arg(long)]
    ova: Option<PathBuf>,
    /// Then write DIR/artifact-manifest.json.
    #[arg(long)]
    manifest: bool,
}

/// Exit statuses.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTEGRITY: u8 = 3;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let status = run(std::env::args_os().collect(), &mut out, false).await;
    let _ = out.flush();
    std::process::ExitCode::from(status)
}

/// Runs the command line `args` (program name first), printing reports to
/// `out` and errors to standard error; returns the exit status.
async fn run(args: Vec<OsString>, out: &mut dyn Write, no_bars: bool) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let bars = Arc::new(BarSink::new(cli.quiet || no_bars));
    let progress = if bars.is_visible() {
        Progress::new(Arc::clone(&bars))
    } else {
        Progress::none()
    };
    match execute(&cli, out, &progress, &bars).await {
        Ok(()) => 0,
        Err(e) => {
            bars.println(&format!("ovm-backup: {}", one_line(&e.to_string())));
            match e.kind() {
                ErrorKind::Integrity => EXIT_INTEGRITY,
                ErrorKind::InvalidInput => EXIT_USAGE,
                _ => EXIT_FAILURE,
            }
        }
    }
}

async fn execute(
    cli: &Cli,
    out: &mut dyn Write,
    progress: &Progress,
    bars: &BarSink,
) -> Result<()> {
    if cli.parallel == 0 {
        return Err(Error::invalid_input("--parallel must be at least 1"));
    }
    match &cli.command {
        Command::ListVms => {
            let client = connect(cli)?;
            let vms = client.list_vms().await?;
            if cli.json {
                return print_json(out, &vms.iter().map(vm_json).collect::<Vec<_>>());
            }
            writeln_out(
                out,
                &format!(
                    "{:<34} {:<24} {:>5} {:>10}  {}",
                    "ID", "NAME", "DISKS", "SNAPSHOTS", "SNAPSHOT-COMPATIBLE"
                ),
            )?;
            for vm in &vms {
                writeln_out(
                    out,
                    &format!(
                        "{:<34} {:<24} {:>5} {:>10}  {}",
                        vm.name,
                        vm.friendly_name,
                        vm.disks.len(),
                        vm.snapshots.len(),
                        if vm.snapshot_compatible { "yes" } else { "no" }
                    ),
                )?;
            }
            if vms.iter().any(|vm| vm.disks.is_empty()) {
                writeln_out(
                    out,
                    "note: a VM with 0 disks cannot be backed up: the exporter lists only \
                     file-backed disks on OCFS2 repositories (phy: devices are not served)",
                )?;
            }
            Ok(())
        }
        Command::ListSnapshots { vm } => {
            let client = connect(cli)?;
            let vm = resolve_vm(&client, vm).await?;
            let mut rows = Vec::new();
            for id in &vm.snapshots {
                // One snapshot at a time, squashed: the list route returns
                // every chunk of every snapshot at once.
                let snap = client
                    .snapshot(&vm.name, id, &SnapshotQuery::squashed())
                    .await?;
                let disks = snap
                    .disks
                    .iter()
                    .map(|d| SnapshotDiskRow {
                        allocated_bytes: d.chunks.iter().map(|c| c.length).sum(),
                        chunks: d.chunks.len(),
                        name: d.name.clone(),
                    })
                    .collect();
                rows.push(SnapshotRow { disks, id: snap.id });
            }
            if cli.json {
                return print_json(out, &rows);
            }
            writeln_out(
                out,
                &format!("VM {} ({}), oldest first:", vm.name, vm.friendly_name),
            )?;
            for row in &rows {
                let disks: Vec<String> = row
                    .disks
                    .iter()
                    .map(|d| format!("{} {}", d.name, mib(d.allocated_bytes)))
                    .collect();
                writeln_out(out, &format!("  {}  {}", row.id, disks.join(", ")))?;
            }
            Ok(())
        }
        Command::Full { vm, common } => {
            let client = connect(cli)?;
            let vm = resolve_vm(&client, vm).await?;
            let backup = OvmBackup::new(client, &common.out).with_options(backup_options(
                cli,
                common,
                progress,
                PreviousCheck::Sha256,
            ));
            let report = backup.full(&vm.name).await?;
            finish(cli, out, bars, &backup, &report, common).await
        }
        Command::Incremental {
            vm,
            from,
            quick_check,
            common,
        } => {
            let client = connect(cli)?;
            let vm = resolve_vm(&client, vm).await?;
            let check = if *quick_check {
                PreviousCheck::Fingerprint
            } else {
                PreviousCheck::Sha256
            };
            let backup = OvmBackup::new(client, &common.out)
                .with_options(backup_options(cli, common, progress, check));
            let report = backup.incremental(&vm.name, from).await?;
            finish(cli, out, bars, &backup, &report, common).await
        }
        Command::Status { out: dir } => status(cli, out, dir),
        Command::Demo { out: dir, size_mib } => {
            demo::run(dir, *size_mib, cli.parallel, cli.json, out, progress, bars).await
        }
    }
}

/// A snapshot in `list-snapshots --json` (fields in key order).
#[derive(serde::Serialize)]
struct SnapshotRow {
    disks: Vec<SnapshotDiskRow>,
    id: String,
}

/// A disk of a snapshot in `list-snapshots --json` (fields in key order).
#[derive(serde::Serialize)]
struct SnapshotDiskRow {
    allocated_bytes: u64,
    chunks: usize,
    name: String,
}

fn backup_options(
    cli: &Cli,
    common: &BackupArgs,
    progress: &Progress,
    check: PreviousCheck,
) -> BackupOptions {
    let mut options = BackupOptions::default()
        .with_parallelism(cli.parallel)
        .with_progress(progress.clone())
        .with_previous_check(check)
        .with_delete_previous(!common.keep_previous);
    if let Some(s) = &common.snapshot {
        options = options.with_snapshot(s.clone());
    }
    options
}

/// Prints the report, then writes the OVA and the manifest when asked.
async fn finish(
    cli: &Cli,
    out: &mut dyn Write,
    bars: &BarSink,
    backup: &OvmBackup,
    report: &BackupReport,
    common: &BackupArgs,
) -> Result<()> {
    for w in &report.warnings {
        bars.println(&format!("ovm-backup: warning: {}", one_line(w)));
    }
    let ova = match &common.ova {
        Some(path) => Some(
            backup
                .write_ova(
                    path,
                    &OvaOptions::default().with_progress(backup.options().progress.clone()),
                )
                .await?,
        ),
        None => None,
    };
    let manifest = if common.manifest {
        Some(backup.write_manifest().await?)
    } else {
        None
    };
    if cli.json {
        return print_json(
            out,
            &serde_json::json!({ "backup": report, "ova": ova, "manifest": manifest }),
        );
    }
    print_report(out, report)?;
    if let Some(ova) = ova {
        writeln_out(
            out,
            &format!("OVA: {} ({})", ova.path.display(), mib(ova.bytes)),
        )?;
    }
    if let Some(m) = manifest {
        writeln_out(out, &format!("manifest: {}", m.display()))?;
    }
    Ok(())
}

fn print_report(out: &mut dyn Write, r: &BackupReport) -> Result<()> {
    let what = match &r.from {
        Some(from) => format!("incremental backup {from} -> {}", r.snapshot_id),
        None => format!("full backup of snapshot {}", r.snapshot_id),
    };
    writeln_out(
        out,
        &format!(
            "{what} of VM {} ({}){}: {} fetched in {:.2} s",
            r.vm_id,
            r.vm_name,
            if r.resumed { ", resumed" } else { "" },
            mib(r.bytes_fetched()),
            r.elapsed.as_secs_f64()
        ),
    )?;
    for d in &r.disks {
        let how = if d.skipped {
            "done earlier".to_string()
        } else if d.patched {
            format!(
                "patched: {} changed, {} freed, {} fetched",
                mib(d.planned_bytes),
                mib(d.freed_bytes),
                mib(d.bytes_fetched)
            )
        } else {
            format!(
                "{} allocated, {} fetched",
                mib(d.allocated_bytes),
                mib(d.bytes_fetched)
            )
        };
        writeln_out(
            out,
            &format!(
                "  {} {:<6} {} {}  {}",
                d.path.display(),
                d.device,
                mib(d.size),
                d.sha256,
                how
            ),
        )?;
    }
    if let Some(prev) = &r.previous_snapshot {
        writeln_out(
            out,
            &format!(
                "previous snapshot {prev}: {}",
                if r.previous_deleted {
                    "deleted"
                } else {
                    "kept"
                }
            ),
        )?;
    }
    Ok(())
}

fn status(cli: &Cli, out: &mut dyn Write, dir: &Path) -> Result<()> {
    let state = BackupState::load(dir)?.ok_or_else(|| {
        Error::not_found(format!(
            "a backup in '{}' (no ovm-backup.json)",
            dir.display()
        ))
    })?;
    if cli.json {
        return print_json(out, &state);
    }
    writeln_out(
        out,
        &format!(
            "VM {} ({}) on {}\nsnapshot: {}{}",
            state.vm_id,
            state.vm_name,
            state.endpoint,
            state.snapshot_id.as_deref().unwrap_or("none yet"),
            state
                .completed_at
                .map(|t| format!(" (completed {})", t.to_rfc3339()))
                .unwrap_or_default()
        ),
    )?;
    for d in &state.disks {
        writeln_out(
            out,
            &format!(
                "  {} {:<6} {} {} ({} chunks)",
                d.name,
                d.device,
                mib(d.size),
                d.sha256,
                d.chunks.len()
            ),
        )?;
    }
    if let Some(p) = &state.pending {
        writeln_out(
            out,
            &format!(
                "UNFINISHED: {} backup to snapshot {}{} started {}, {} of its disks done: run it \
                 again to finish it",
                p.kind,
                p.snapshot_id,
                p.from
                    .as_deref()
                    .map(|f| format!(" from {f}"))
                    .unwrap_or_default(),
                p.started_at.to_rfc3339(),
                p.done.len()
            ),
        )?;
    }
    Ok(())
}

/// The client from the connection options.
fn connect(cli: &Cli) -> Result<OvmClient> {
    let endpoint = cli.endpoint.as_deref().ok_or_else(|| {
        Error::invalid_input("no exporter: give --endpoint or set OVM_EXPORTER_ENDPOINT")
    })?;
    let username = cli.username.as_deref().ok_or_else(|| {
        Error::invalid_input("no user: give --username or set OVM_EXPORTER_USERNAME")
    })?;
    let password = match &cli.password {
        Some(p) => p.clone(),
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("password of {username}: "))
                .map_err(|e| Error::io("the terminal", e))?
        }
        None => {
            return Err(Error::invalid_input(
                "no password: give --password or set OVM_EXPORTER_PASSWORD",
            ));
        }
    };
    let mut builder = OvmClient::builder(endpoint).credentials(username, &password);
    if let Some(ca) = &cli.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| Error::io(format!("CA file '{}'", ca.display()), e))?;
        builder = builder.ca_pem(pem);
    }
    if let Some(t) = &cli.thumbprint {
        builder = builder.pin_thumbprint(t);
    }
    if cli.insecure {
        builder = builder.danger_accept_invalid_certs();
    }
    builder.build()
}

/// The VM named by its id or by its unique friendly name.
async fn resolve_vm(client: &OvmClient, name: &str) -> Result<VirtualMachine> {
    let is_id = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if is_id {
        return client.vm(name).await;
    }
    let vms = client.list_vms().await?;
    let matches: Vec<&VirtualMachine> = vms.iter().filter(|v| v.friendly_name == name).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::not_found(format!(
            "VM '{name}' on {} (give its id or friendly name; see list-vms)",
            client.endpoint()
        ))),
        many => Err(Error::invalid_input(format!(
            "{} VMs are named '{name}': give the id ({})",
            many.len(),
            many.iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn vm_json(vm: &VirtualMachine) -> serde_json::Value {
    serde_json::json!({
        "id": vm.name,
        "name": vm.friendly_name,
        "uuid": vm.uuid,
        "snapshot_compatible": vm.snapshot_compatible,
        "snapshots": vm.snapshots,
        "disks": vm.disks.iter().map(|d| serde_json::json!({
            "name": d.name,
            "device": d.device_name,
            "mode": d.mode,
            "snapshot_compatible": d.snapshot_compatible,
        })).collect::<Vec<_>>(),
    })
}

fn print_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::other(format!("cannot encode the report: {e}")))?;
    writeln_out(out, &text)
}

fn writeln_out(out: &mut dyn Write, line: &str) -> Result<()> {
    writeln!(out, "{line}").map_err(|e| Error::io("standard output", e))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, VmSpec};

    const MIB: u64 = 1 << 20;

    fn args(exporter: &OvmExporter, ca: &Path, rest: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "ovm-backup".into(),
            "--endpoint".into(),
            exporter.endpoint().into(),
            "--username".into(),
            exporter.username().into(),
            "--password".into(),
            exporter.password().into(),
            "--ca-file".into(),
            ca.into(),
            "--quiet".into(),
        ];
        v.extend(rest.iter().map(OsString::from));
        v
    }

    #[tokio::test]
    async fn parallel_zero_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("no-backup");
        let argv = |parallel: &str| -> Vec<OsString> {
            let dir = dir.as_os_str().to_owned();
            vec![
                "ovm-backup".into(),
                "--parallel".into(),
                parallel.into(),
                "status".into(),
                "--out".into(),
                dir,
            ]
        };
        assert_eq!(run(argv("0"), &mut Vec::new(), true).await, EXIT_USAGE);
        // The same command with a valid --parallel gets as far as the
        // missing backup: a failure, not a usage error.
        assert_eq!(run(argv("1"), &mut Vec::new(), true).await, EXIT_FAILURE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_incremental_status_and_errors() {
        let vm = VmSpec::new("cli-demo").with_disk(DiskSpec::new(
            "0004fb00000000000000000000000001.img",
            "xvda",
            4 * MIB,
        ));
        let vm_id = vm.id.clone();
        let exporter = OvmExporter::builder().vm(vm).start().await.unwrap();
        let disk = "0004fb00000000000000000000000001.img";
        exporter.write(&vm_id, disk, 0, &[7u8; 200_000]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, exporter.ca_pem()).unwrap();
        let dir = tmp.path().join("backup");
        let dir_s = dir.to_str().unwrap();

        let mut out = Vec::new();
        let code = run(args(&exporter, &ca, &["list-vms"]), &mut out, true).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).contains("cli-demo"));

        // Full, by friendly name, as JSON.
        let mut out = Vec::new();
        let code = run(
            args(
                &exporter,
                &ca,
                &["--json", "full", "cli-demo", "--out", dir_s, "--manifest"],
            ),
            &mut out,
            true,
        )
        .await;
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let snap1 = v["backup"]["snapshot_id"].as_str().unwrap().to_string();
        assert!(dir.join("artifact-manifest.json").exists());

        exporter.write(&vm_id, disk, 3 * MIB, &[9u8; 4096]).unwrap();
        let mut out = Vec::new();
        let code = run(
            args(
                &exporter,
                &ca,
                &["incremental", &vm_id, "--from", &snap1, "--out", dir_s],
            ),
            &mut out,
            true,
        )
        .await;
        let text = String::from_utf8_lossy(&out).to_string();
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("previous snapshot") && text.contains("deleted"),
            "{text}"
        );
        let state = BackupState::load(&dir).unwrap().unwrap();
        let snap2 = state.snapshot_id.clone().unwrap();
        let expected =
            std::fs::read(exporter.snapshot_disk_path(&vm_id, &snap2, disk).unwrap()).unwrap();
        assert_eq!(std::fs::read(dir.join(disk)).unwrap(), expected);

        let mut out = Vec::new();
        assert_eq!(
            run(
                args(&exporter, &ca, &["status", "--out", dir_s]),
                &mut out,
                true
            )
            .await,
            0
        );
        assert!(String::from_utf8_lossy(&out).contains(&snap2));

        // The snapshots: JSON for scripts, a line each for people.
        let mut out = Vec::new();
        let code = run(
            args(&exporter, &ca, &["--json", "list-snapshots", "cli-demo"]),
            &mut out,
            true,
        )
        .await;
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == snap2.as_str())
            .unwrap_or_else(|| panic!("no {snap2} in {rows}"));
        assert_eq!(row["disks"][0]["name"], disk);
        assert!(row["disks"][0]["allocated_bytes"].as_u64().unwrap() >= 200_000);
        assert!(row["disks"][0]["chunks"].as_u64().unwrap() >= 1);
        let mut out = Vec::new();
        let code = run(
            args(&exporter, &ca, &["list-snapshots", &vm_id]),
            &mut out,
            true,
        )
        .await;
        assert_eq!(code, 0);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.contains(&format!("  {snap2}  {disk} ")), "{text}");

        // The images hold snap2 now: an incremental from snap1 is refused.
        let mut out = Vec::new();
        let code = run(
            args(
                &exporter,
                &ca,
                &["incremental", &vm_id, "--from", &snap1, "--out", dir_s],
            ),
            &mut out,
            true,
        )
        .await;
        assert_eq!(code, EXIT_USAGE);

        // A damaged image: integrity status.
        let mut image = std::fs::read(dir.join(disk)).unwrap();
        image[10] ^= 1;
        std::fs::write(dir.join(disk), image).unwrap();
        let code = run(
            args(
                &exporter,
                &ca,
                &["incremental", &vm_id, "--from", &snap2, "--out", dir_s],
            ),
            &mut Vec::new(),
            true,
        )
        .await;
        assert_eq!(code, EXIT_INTEGRITY);

        // A bad endpoint is a usage error (given on the command line, which
        // wins over any OVM_EXPORTER_* variable of the environment).
        let code = run(
            [
                "ovm-backup",
                "--endpoint",
                "",
                "--username",
                "u",
                "--password",
                "p",
                "list-vms",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
            &mut Vec::new(),
            true,
        )
        .await;
        assert_eq!(code, EXIT_USAGE);
    }
}
