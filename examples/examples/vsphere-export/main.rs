//! `vsphere-export`: export a vSphere VM through an NFC lease into an OVA,
//! an OVF directory or raw disk images, with digests and optionally an
//! Artifact Manifest v1.0 for the converter (hyperexport's flags).
//!
//! ```text
//! cargo run -p hypersdk-examples --example vsphere-export -- \
//!     --url https://vcenter.example.com --username administrator@vsphere.local \
//!     --vm web01 --output /exports/web01 --format ovf --manifest --verify-manifest
//! ```
//!
//! | option | environment | |
//! |---|---|---|
//! | `--url URL` | `VSPHERE_URL`, `GOVC_URL` | `https://host[:port][/sdk]` |
//! | `--username U` | `VSPHERE_USERNAME`, `GOVC_USERNAME` | |
//! | `--password P` | `VSPHERE_PASSWORD`, `GOVC_PASSWORD` | asked on the terminal when missing |
//! | `--ca-file PEM` | | trust only these CA certificates |
//! | `--thumbprint AB:CD:…` | | trust exactly this certificate (SHA-1 or SHA-256) |
//! | `--insecure` | | accept any certificate (labs only) |
//!
//! - `--vm` names the VM: an inventory path (`/DC0/vm/web01`), a moref id
//!   (`vm-42`), a BIOS UUID, or a name (which must be unique).
//! - `--format ova|ovf|raw` (default `ovf`): an OVA file, an OVF directory
//!   (`<name>.ovf`, `<name>.mf`, disks, `.nvram`), or sparse raw images
//!   decoded from the streamOptimized disks on the fly. `--output` is the
//!   OVA file (a directory gets `<vm>.ova` inside it) or the directory.
//! - `--snapshot NAME|ID` exports the disks as of that snapshot (needed for
//!   a running VM); otherwise the VM must be powered off. The VM is never
//!   modified.
//! - `--parallel N` files at once (default 3; an OVA is written one file
//!   after the other).
//! - `--manifest` writes `artifact-manifest.json` (OVF and raw);
//!   `--manifest-checksum[=false]` puts the disks' SHA-256 in it (default
//!   on, computed while downloading); `--manifest-target qcow2|raw|vdi` the
//!   converter's output format; `--verify-manifest` re-reads the files and
//!   checks the manifest afterwards.
//! - Progress: one bar per file with speed and ETA on standard error when
//!   it is a terminal (`--quiet` hides it); `--verbose` prints each file's
//!   digests, resumes and the descriptor's warnings.
//!
//! Ctrl-C or SIGTERM during the export drops it: the library aborts the
//! NFC lease (`HttpNfcLeaseAbort`, sent in the background, which the
//! program waits a moment for) and removes every partial file; then it
//! logs out and exits 130.
//!
//! Exit status: 0 success, 1 failure, 2 bad usage, 130 interrupted.
//! Errors are one line on standard error: `vsphere-export: <what was
//! wrong>`.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hypersdk_core::model::VmRef;
use hypersdk_core::progress::Progress;
use hypersdk_core::{Error, ErrorKind, Result};
use hypersdk_examples::bar::BarSink;
use hypersdk_manifest::OutputFormat;
use hypersdk_vsphere::export::{
    ArtifactManifestOptions, ExportFormat, VmExportOptions, VmExportReport,
};
use hypersdk_vsphere::{Client, VsphereProvider};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "vsphere-export",
    version,
    about = "Export a vSphere VM through an NFC lease into an OVA, an OVF directory or raw images",
    after_help = "Exit status: 0 success, 1 failure, 2 bad usage, 130 interrupted."
)]
struct Cli {
    /// The vCenter or ESXi server, e.g. https://vcenter.example.com.
    #[arg(long, env = "VSPHERE_URL")]
    url: Option<String>,
    /// The user to log in as.
    #[arg(long, short = 'u', env = "VSPHERE_USERNAME")]
    username: Option<String>,
    /// The password (asked on the terminal when missing).
    #[arg(long, short = 'p', env = "VSPHERE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Trust only the CA certificates of this PEM file.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-1 or SHA-256 thumbprint.
    #[arg(long)]
    thumbprint: Option<String>,
    /// Accept any certificate (labs only: an impostor gets the password).
    #[arg(long)]
    insecure: bool,
    /// The VM: inventory path, moref id (vm-42), BIOS UUID or unique name.
    #[arg(long)]
    vm: String,
    /// The OVA file, or the directory of an OVF or raw export.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// What to write.
    #[arg(long, short = 'f', default_value = "ovf", value_parser = ["ova", "ovf", "raw"])]
    format: String,
    /// Package name (file name stem); default: the VM's name.
    #[arg(long)]
    name: Option<String>,
    /// Write an Artifact Manifest v1.0 (artifact-manifest.json).
    #[arg(long)]
    manifest: bool,
    /// Verify the manifest against the files after writing it.
    #[arg(long)]
    verify_manifest: bool,
    /// Put each disk's SHA-256 in the manifest.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    manifest_checksum: bool,
    /// The converter's output format: qcow2, raw or vdi (any case).
    #[arg(long, default_value_t = OutputFormat::Qcow2)]
    manifest_target: OutputFormat,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 3)]
    parallel: usize,
    /// Export the disks as of this snapshot (name or id).
    #[arg(long)]
    snapshot: Option<String>,
    /// Draw no progress bars, print only errors.
    #[arg(short, long)]
    quiet: bool,
    /// Print every file's digests, resumes and the descriptor's warnings.
    #[arg(short, long)]
    verbose: bool,
}

/// Exit statuses.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

/// How long an interrupted run waits for the lease abort the dropped
/// export sends in the background, before it logs out.
const ABORT_GRACE: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let status = run(std::env::args_os().collect(), &mut out).await;
    let _ = out.flush();
    std::process::ExitCode::from(status)
}

/// Runs the command line `args` (program name first), printing the report
/// to `out` and errors to standard error; returns the exit status.
async fn run(args: Vec<OsString>, out: &mut dyn Write) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let bars = Arc::new(BarSink::new(cli.quiet));
    let progress = if bars.is_visible() {
        Progress::new(Arc::clone(&bars))
    } else {
        Progress::none()
    };
    match execute(&cli, out, progress, &bars).await {
        Ok(()) => 0,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            bars.println(&format!("vsphere-export: {line}"));
            match e.kind() {
                ErrorKind::InvalidInput => EXIT_USAGE,
                ErrorKind::Cancelled => EXIT_INTERRUPTED,
                _ => EXIT_FAILURE,
            }
        }
    }
}

fn env_fallback(value: &Option<String>, names: &[&str]) -> Option<String> {
    value
        .clone()
        .or_else(|| names.iter().find_map(|n| std::env::var(n).ok()))
        .filter(|v| !v.is_empty())
}

/// The client from the connection options.
async fn connect(cli: &Cli, bars: &BarSink) -> Result<Client> {
    let url = env_fallback(&cli.url, &["GOVC_URL"]).ok_or_else(|| {
        Error::invalid_input("no server: give --url or set VSPHERE_URL (or GOVC_URL)")
    })?;
    let username = env_fallback(&cli.username, &["GOVC_USERNAME"]).ok_or_else(|| {
        Error::invalid_input("no user: give --username or set VSPHERE_USERNAME (or GOVC_USERNAME)")
    })?;
    let password = match env_fallback(&cli.password, &["GOVC_PASSWORD"]) {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => bars
            .suspend(|| rpassword::prompt_password(format!("password of {username}: ")))
            .map_err(|e| Error::io("the terminal", e))?,
        None => {
            return Err(Error::invalid_input(
                "no password: give --password or set VSPHERE_PASSWORD (or GOVC_PASSWORD)",
            ));
        }
    };
    let mut builder = Client::builder(&url).credentials(&username, &password);
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
    builder.connect().await
}

/// `--vm` as a reference: a path, a moref id, a UUID, else a name.
fn vm_ref(vm: &str) -> VmRef {
    // 8-4-4-4-12 hex digits.
    let is_uuid = vm.len() == 36
        && vm.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let is_id = vm
        .strip_prefix("vm-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if vm.starts_with('/') {
        VmRef::InventoryPath(vm.to_owned())
    } else if is_uuid {
        VmRef::uuid(vm)
    } else if is_id {
        VmRef::id(vm)
    } else {
        VmRef::name(vm)
    }
}

async fn execute(cli: &Cli, out: &mut dyn Write, progress: Progress, bars: &BarSink) -> Result<()> {
    let format: ExportFormat = cli.format.parse()?;
    if cli.parallel == 0 {
        return Err(Error::invalid_input("--parallel must be at least 1"));
    }
    if (cli.verify_manifest || !cli.manifest_checksum) && !cli.manifest {
        return Err(Error::invalid_input(
            "--verify-manifest and --manifest-checksum need --manifest",
        ));
    }
    let client = connect(cli, bars).await?;
    let provider = VsphereProvider::new(client.clone());
    let vm = vm_ref(&cli.vm);
    let mut output = cli.output.clone();
    if format == ExportFormat::Ova && output.is_dir() {
        let info = hypersdk_core::provider::Provider::vm(&provider, &vm).await?;
        let stem = cli.name.clone().unwrap_or(info.name);
        output = output.join(format!("{}.ova", stem.replace(['/', '\\'], "_")));
    }
    let mut options = VmExportOptions::new(format, &output)
        .parallel(cli.parallel)
        .progress(progress);
    if let Some(n) = &cli.name {
        options = options.name(n);
    }
    if cli.manifest {
        options = options.artifact_manifest(
            ArtifactManifestOptions::default()
                .target(cli.manifest_target)
                .checksums(cli.manifest_checksum)
                .verify(cli.verify_manifest),
        );
    }
    // Dropping the export on an interrupt aborts the lease (in the
    // background) and removes the partial files: the library's drop guards.
    let result = tokio::select! {
        r = provider.export_to(&vm, cli.snapshot.as_deref(), options) => r,
        () = interrupted() => {
            bars.println("vsphere-export: interrupted: aborting the NFC lease, partial files removed");
            tokio::time::sleep(ABORT_GRACE).await;
            Err(Error::cancelled("the export"))
        }
    };
    let logout = client.logout().await;
    let report = result?;
    if let Err(e) = logout {
        bars.println(&format!("vsphere-export: logout failed: {e}"));
    }
    if !cli.quiet {
        print_report(out, &report, cli.verbose)?;
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; never if they cannot be caught.
async fn interrupted() {
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = int => {}
        () = term => {}
    }
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<()> {
    writeln!(out, "{line}").map_err(|e| Error::io("standard output", e))
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

fn print_report(out: &mut dyn Write, r: &VmExportReport, verbose: bool) -> Result<()> {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    write_line(
        out,
        &format!(
            "exported {} ({}) as {}{}: {} files, {} bytes written, {} received in {:.1} s ({:.1} MiB/s)",
            r.vm.name,
            r.vm.id,
            r.format,
            r.snapshot
                .as_ref()
                .map(|s| format!(" from snapshot {}", s.value))
                .unwrap_or_default(),
            r.files.len(),
            r.bytes_written,
            r.bytes_received,
            secs,
            r.bytes_received as f64 / secs / f64::from(1u32 << 20),
        ),
    )?;
    for path in [&r.ova, &r.descriptor, &r.mf, &r.manifest]
        .into_iter()
        .flatten()
    {
        write_line(out, &format!("  {}", shown(path)))?;
    }
    for f in &r.files {
        let sha = f
            .digests
            .get(hypersdk_core::digest::Algorithm::Sha256)
            .map(|c| c.to_hex())
            .unwrap_or_default();
        let place = f
            .path
            .as_deref()
            .map(shown)
            .unwrap_or_else(|| f.name.clone());
        write_line(out, &format!("  {place}  {} bytes  sha256 {sha}", f.size))?;
        if verbose {
            for c in f.digests.iter() {
                write_line(out, &format!("      {c}"))?;
            }
            write_line(
                out,
                &format!(
                    "      device {}  received {}  resumes {}  restarts {}",
                    f.device_key, f.bytes_received, f.resumes, f.restarts
                ),
            )?;
        }
    }
    if verbose {
        for w in &r.warnings {
            write_line(out, &format!("  warning: {w}"))?;
        }
        for s in &r.skipped {
            write_line(out, &format!("  skipped: {s} (not a disk or .nvram)"))?;
        }
        write_line(out, &format!("  lease {}", r.lease.value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_references() {
        assert_eq!(
            vm_ref("/DC0/vm/web01"),
            VmRef::InventoryPath("/DC0/vm/web01".into())
        );
        assert_eq!(vm_ref("vm-42"), VmRef::id("vm-42"));
        assert_eq!(vm_ref("vm-web"), VmRef::name("vm-web"));
        assert_eq!(vm_ref("vm-"), VmRef::name("vm-"));
        assert_eq!(
            vm_ref("4214e6b4-0d2c-4c5e-8d1e-3e4f5a6b7c8d"),
            VmRef::Uuid("4214e6b4-0d2c-4c5e-8d1e-3e4f5a6b7c8d".into())
        );
        assert_eq!(
            vm_ref("4214E6B4-0D2C-4C5E-8D1E-3E4F5A6B7C8D"),
            VmRef::uuid("4214E6B4-0D2C-4C5E-8D1E-3E4F5A6B7C8D")
        );
        // Not 8-4-4-4-12 hex digits: a name.
        for name in [
            "4214e6b4-0d2c-4c5e-8d1e-3e4f5a6b7c8",
            "4214e6b4-0d2c-4c5e-8d1e-3e4f5a6b7c8g",
            "4214e6b40d2c-4c5e-8d1e-3e4f5a6b7c8d0",
            "4214e6b4-0d2c-4c5e-8d1e-3e4f5a6b7cé",
        ] {
            assert_eq!(vm_ref(name), VmRef::name(name));
        }
    }

    #[tokio::test]
    async fn manifest_target() {
        let parse = |target: &str| {
            Cli::try_parse_from([
                "vsphere-export",
                "--vm",
                "web01",
                "-o",
                "/tmp/x",
                "--manifest-target",
                target,
            ])
        };
        assert_eq!(parse("raw").unwrap().manifest_target, OutputFormat::Raw);
        assert_eq!(parse("VDI").unwrap().manifest_target, OutputFormat::Vdi);
        assert_eq!(parse("qcow2").unwrap().manifest_target, OutputFormat::Qcow2);
        for bad in ["vmdk", "", "qcow"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            assert!(e.to_string().contains("qcow2, raw, vdi"), "{e}");
        }
        // An unknown target is a usage error before any connection.
        let args = ["vsphere-export", "--vm", "web01", "-o", "/tmp/x"];
        let mut argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        argv.extend(["--manifest", "--manifest-target", "vmdk"].map(OsString::from));
        assert_eq!(run(argv, &mut Vec::new()).await, EXIT_USAGE);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "vsphere-export",
            "--vm",
            "web01",
            "--output",
            "/tmp/x",
            "--format",
            "raw",
            "--manifest",
            "--manifest-checksum=false",
        ])
        .unwrap();
        assert_eq!(cli.format, "raw");
        assert!(cli.manifest && !cli.manifest_checksum);
        assert_eq!(cli.parallel, 3);
        assert_eq!(cli.manifest_target, OutputFormat::Qcow2);
        let cli = Cli::try_parse_from([
            "vsphere-export",
            "--vm",
            "web01",
            "--output",
            "/tmp/x",
            "--manifest-checksum",
        ])
        .unwrap();
        assert!(cli.manifest_checksum);
        assert!(
            Cli::try_parse_from(["vsphere-export", "--vm", "x", "-o", "y", "-f", "qcow2"]).is_err()
        );
    }
}
