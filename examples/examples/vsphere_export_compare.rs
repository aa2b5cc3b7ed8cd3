//! Side by side, in one run, on loopback HTTPS against the vcsim harness:
//! exporting a VM's disk through an NFC lease with hypersdk's
//! `vsphere-export` (release build, OVF target, SHA-256 computed while
//! downloading, `.mf` and descriptor written) and fetching the same device
//! URL with `curl -k -o`, plus hypersdk's peak RSS exporting a big disk.
//!
//! ```text
//! scripts/compare-vsphere-export.sh [--size-gib 4] [--rss-gib 8] [--runs 1] [--dir PATH]
//! ```
//!
//! The harness serves the disk's backing file with `http.ServeContent`; it
//! is made a sparse file of the asked size (holes read as zeros from the
//! page cache, so the disk under the server is not what is measured; the
//! bytes still cross TLS on loopback). Both sides write their output into
//! `--dir` (default: the temp directory), which is removed after each run.
//! Throughput is bytes over GNU time's wall time of each process: for
//! hypersdk that includes its login, `ExportVm`, `CreateDescriptor` and
//! `HttpNfcLeaseComplete`; curl gets a lease taken for it beforehand.
//! Exits 1 when a side fails or the sizes disagree, 2 when a tool is
//! missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hypersdk_examples::timed;
use hypersdk_testkit::vcsim::{DiskFile, Vcsim};
use hypersdk_vsphere::Client;
use hypersdk_vsphere::export::start_export;
use hypersdk_vsphere::types::MoRef;

const USAGE: &str =
    "usage: vsphere_export_compare [--size-gib N] [--rss-gib N] [--runs N] [--dir PATH]";
const VM: &str = "DC0_H0_VM0";

struct Args {
    size_gib: u64,
    rss_gib: u64,
    runs: usize,
    dir: PathBuf,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        size_gib: 4,
        rss_gib: 8,
        runs: 1,
        dir: std::env::temp_dir(),
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse().map_err(|e| format!("{name} {v:?}: {e}"))
        };
        match a.as_str() {
            "--size-gib" => args.size_gib = number("--size-gib", value("--size-gib")?)?,
            "--rss-gib" => args.rss_gib = number("--rss-gib", value("--rss-gib")?)?,
            "--runs" => args.runs = number("--runs", value("--runs")?)?.max(1) as usize,
            "--dir" => args.dir = PathBuf::from(value("--dir")?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.size_gib == 0 {
        return Err(format!("--size-gib must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// Makes the backing file of the VM's first disk a sparse file of `len`
/// bytes (the harness serves whatever that file holds).
async fn seed_sparse(sim: &Vcsim, len: u64) -> Result<(), String> {
    let seeded = sim
        .seed_disk_file(VM, 0, DiskFile::Backing, Some(len / 1024), Vec::<u8>::new())
        .await
        .map_err(|e| format!("seeding the disk: {e}"))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&seeded.path)
        .map_err(|e| format!("{}: {e}", seeded.path))?;
    f.set_len(len).map_err(|e| format!("{}: {e}", seeded.path))
}

struct Side {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    bytes: u64,
}

impl Side {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.wall.max(1e-9) / f64::from(1u32 << 20)
    }
}

/// curl of the disk's device URL, with a lease taken for it.
async fn run_curl(client: &Client, vm: &MoRef, work: &Path) -> Result<Side, String> {
    let lease = start_export(client, vm, None)
        .await
        .map_err(|e| format!("ExportVm for curl: {e}"))?;
    let url = lease
        .info()
        .device_urls
        .iter()
        .find(|d| d.disk)
        .map(|d| d.url.clone())
        .ok_or("the lease has no disk")?;
    let out = work.join("curl.vmdk");
    let out_s = out.display().to_string();
    let result = timed("curl", &["-k", "-s", "-S", "-f", "-o", &out_s, &url]);
    let _ = lease.abort("benchmark done").await;
    let t = result?;
    let bytes = std::fs::metadata(&out)
        .map_err(|e| format!("{out_s}: {e}"))?
        .len();
    let _ = std::fs::remove_file(&out);
    Ok(Side {
        wall: t.wall,
        cpu: t.cpu,
        rss_kib: t.rss_kib,
        bytes,
    })
}

/// `vsphere-export --format ovf` into `work/hypersdk`.
fn run_hypersdk(exe: &Path, sim: &Vcsim, ca: &Path, work: &Path) -> Result<Side, String> {
    let out = work.join("hypersdk");
    let args = [
        "--url",
        sim.url().as_str(),
        "--username",
        sim.username(),
        "--password",
        sim.password(),
        "--ca-file",
        &ca.display().to_string(),
        "--vm",
        VM,
        "--format",
        "ovf",
        "--name",
        "bench",
        "--output",
        &out.display().to_string(),
        "--quiet",
    ]
    .map(str::to_owned);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = timed(&exe.display().to_string(), &argv)?;
    let disk = out.join("bench-disk-0.vmdk");
    let bytes = std::fs::metadata(&disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?
        .len();
    let _ = std::fs::remove_dir_all(&out);
    Ok(Side {
        wall: t.wall,
        cpu: t.cpu,
        rss_kib: t.rss_kib,
        bytes,
    })
}

async fn run(args: Args) -> Result<(), (u8, String)> {
    let fail = |e: String| (1u8, e);
    let exe = std::env::current_exe()
        .map_err(|e| fail(e.to_string()))?
        .with_file_name("vsphere-export");
    if !exe.exists() {
        return Err((
            2,
            format!(
                "{} is missing: cargo build --release -p hypersdk-examples --example vsphere-export",
                exe.display()
            ),
        ));
    }
    if which("curl").is_none() {
        return Err((2, "curl is missing: apt-get install -y curl".into()));
    }
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .map_err(|e| (2, format!("vcsim harness: {e}")))?;
    let work = tempfile::Builder::new()
        .prefix("vsphere-export-compare-")
        .tempdir_in(&args.dir)
        .map_err(|e| fail(format!("{}: {e}", args.dir.display())))?;
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap_or_default()).map_err(|e| fail(e.to_string()))?;
    let client = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().unwrap_or_default())
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    let inventory = sim.inventory().await.map_err(|e| fail(e.to_string()))?;
    let vm_id = inventory
        .vm(VM)
        .map(|v| v.entity.moref.clone())
        .ok_or_else(|| fail(format!("no VM {VM} in the harness")))?;
    let vm = MoRef::new("VirtualMachine", vm_id);

    let len = args.size_gib << 30;
    seed_sparse(&sim, len).await.map_err(fail)?;
    println!(
        "export of a {} GiB disk over loopback HTTPS (vcsim harness), {} run(s), best wall time:",
        args.size_gib, args.runs
    );
    let mut best_curl: Option<Side> = None;
    let mut best_ours: Option<Side> = None;
    for _ in 0..args.runs {
        let c = run_curl(&client, &vm, work.path()).await.map_err(fail)?;
        let h = run_hypersdk(&exe, &sim, &ca, work.path()).map_err(fail)?;
        if c.bytes != len || h.bytes != len {
            return Err(fail(format!(
                "sizes disagree: curl {} bytes, hypersdk {} bytes, disk {len}",
                c.bytes, h.bytes
            )));
        }
        if best_curl.as_ref().is_none_or(|b| c.wall < b.wall) {
            best_curl = Some(c);
        }
        if best_ours.as_ref().is_none_or(|b| h.wall < b.wall) {
            best_ours = Some(h);
        }
    }
    let (Some(c), Some(h)) = (best_curl, best_ours) else {
        return Err(fail("no run".into()));
    };
    println!(
        "  {:<44} {:>8.2} s {:>9.1} MiB/s {:>8.2} s CPU {:>7} MiB RSS",
        "curl -k -o (one GET of the device URL)",
        c.wall,
        c.mib_s(),
        c.cpu,
        c.rss_kib / 1024
    );
    println!(
        "  {:<44} {:>8.2} s {:>9.1} MiB/s {:>8.2} s CPU {:>7} MiB RSS",
        "hypersdk vsphere-export --format ovf",
        h.wall,
        h.mib_s(),
        h.cpu,
        h.rss_kib / 1024
    );
    println!(
        "  throughput hypersdk / curl: {:.2}x (goal >= 0.9x)",
        h.mib_s() / c.mib_s().max(1e-9)
    );

    if args.rss_gib > 0 {
        let big = args.rss_gib << 30;
        seed_sparse(&sim, big).await.map_err(fail)?;
        let h = run_hypersdk(&exe, &sim, &ca, work.path()).map_err(fail)?;
        if h.bytes != big {
            return Err(fail(format!(
                "the {}-GiB export wrote {} bytes",
                args.rss_gib, h.bytes
            )));
        }
        println!(
            "  peak RSS exporting a {} GiB disk: {} MiB (goal <= 100 MiB), {:.1} MiB/s",
            args.rss_gib,
            h.rss_kib / 1024,
            h.mib_s()
        );
    }
    let _ = client.logout().await;
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("vsphere_export_compare: {e}");
            ExitCode::from(code)
        }
    }
}
