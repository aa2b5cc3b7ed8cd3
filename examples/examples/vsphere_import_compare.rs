//! Side by side, in one run, on loopback HTTPS against the vcsim harness:
//! importing an OVA with hypersdk's `ova-upload` (release build;
//! `CreateImportSpec`, `ImportVApp`, the disk streamed from the archive
//! entry to the NFC lease with its manifest SHA-256 checked on the way,
//! `HttpNfcLeaseComplete`), the same with `--no-verify` (no hashing), and
//! `curl -T` of the same disk bytes (a plain file) to an NFC lease URL of
//! the same server, taken for it beforehand.
//!
//! ```text
//! scripts/compare-vsphere-import.sh [--size-gib 2] [--dir PATH]
//! ```
//!
//! The OVA holds one incompressible streamOptimized disk of about
//! `--size-gib` GiB (random grains, stored), so the bytes on the wire are
//! the disk's size. The harness writes what it receives to the imported
//! VM's disk file and hashes it (SHA-256), for both sides alike; both
//! uploads are checked against the OVA's manifest. Throughput is bytes
//! over GNU time's wall time of each process: for hypersdk that includes
//! its login, reading the OVA's index, `CreateImportSpec`, `ImportVApp` and
//! completing the lease. Disk use peaks at twice the disk size in
//! `--dir` (default: the temp directory: the OVA and the extracted disk),
//! and as much again in the temp directory for the harness's datastore;
//! each VM is removed after its run, and `sync` runs before each side.
//! Exits 1 when a side fails or an upload differs, 2 when a tool is
//! missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use hypersdk_core::blocks::{BlockSource, BytesSource};
use hypersdk_core::digest::Algorithm;
use hypersdk_core::model::{DiskInfo, Extent, VmInfo};
use hypersdk_examples::timed;
use hypersdk_ova::archive::{OvaIndex, OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_ova::vmdk::encode::{EncodeOptions, encode_to_stream};
use hypersdk_testkit::images::Rng;
use hypersdk_testkit::vcsim::Vcsim;
use hypersdk_vsphere::Client;
use hypersdk_vsphere::import::{
    ImportTarget, Leftover, OvaImportOptions, STREAM_VMDK, begin_import, clean_up_leftover,
};
use hypersdk_vsphere::types::MoRef;
use tokio::io::AsyncWriteExt;

const USAGE: &str = "usage: vsphere_import_compare [--size-gib N] [--dir PATH]";
const DISK: &str = "bench-disk1.vmdk";

struct Args {
    size_gib: u64,
    dir: PathBuf,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        size_gib: 2,
        dir: std::env::temp_dir(),
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--size-gib" => {
                let v = value("--size-gib")?;
                args.size_gib = v.parse().map_err(|e| format!("--size-gib {v:?}: {e}"))?;
            }
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

/// Writes an OVA of one VM whose disk is `size` bytes of random data as a
/// streamOptimized VMDK (grains stored, not deflated). Returns the disk
/// entry's SHA-256 from the manifest the writer computed.
async fn make_ova(path: &Path, size: u64) -> Result<String, String> {
    let mut data = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
    Rng::new(42).fill(&mut data);
    let source: Arc<dyn BlockSource> = Arc::new(BytesSource::new("random disk", Bytes::from(data)));
    let mut vm = VmInfo::new("bench", "bench");
    vm.cpus = 1;
    vm.memory_mib = 64;
    vm.disks.push(DiskInfo::new("disk0", size));
    let ovf = write_descriptor(&vm, &[OvfDisk::new(DISK)]).map_err(|e| e.to_string())?;
    let mut ova = OvaWriter::create(path, WriteOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    ova.write_descriptor("bench.ovf", ovf.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let encode = EncodeOptions::default().with_compression_level(1);
    ova.append_stream(DISK, None, encode_to_stream(source, &encode))
        .await
        .map_err(|e| e.to_string())?;
    ova.finish().await.map_err(|e| e.to_string())?;
    let index = OvaIndex::open(path).await.map_err(|e| e.to_string())?;
    index
        .manifest()
        .and_then(|m| m.get(DISK, Algorithm::Sha256))
        .map(|c| c.to_hex())
        .ok_or_else(|| "the OVA has no SHA-256 of its disk".to_owned())
}

/// Flushes dirty pages, so one side does not pay for the other's writes.
fn sync() {
    let _ = std::process::Command::new("sync").status();
}

/// Checks the harness received `sha` completely for `vm_name`.
async fn check_upload(sim: &Vcsim, vm_name: &str, sha: &str, bytes: u64) -> Result<(), String> {
    let ups = sim.uploaded_files().await.map_err(|e| e.to_string())?;
    let up = ups
        .iter()
        .rev()
        .find(|u| u.vm_name == vm_name)
        .ok_or(format!("no upload for {vm_name}"))?;
    if !up.complete || up.sha256 != sha || up.size != bytes {
        return Err(format!(
            "{vm_name}: the server received {} bytes (complete: {}) with SHA-256 {}, \
             expected {bytes} bytes with {sha}",
            up.size, up.complete, up.sha256
        ));
    }
    Ok(())
}

/// Destroys the VM named `name` (its disk files go with it).
async fn remove_vm(sim: &Vcsim, client: &Client, name: &str) -> Result<(), String> {
    let inv = sim.inventory().await.map_err(|e| e.to_string())?;
    if let Some(vm) = inv.vm(name) {
        let leftover = Leftover {
            entity: MoRef::new("VirtualMachine", vm.entity.moref.clone()),
            name: name.to_owned(),
            lease: None,
        };
        clean_up_leftover(client, &leftover, std::time::Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), (u8, String)> {
    let fail = |e: String| (1u8, e);
    let exe = std::env::current_exe()
        .map_err(|e| fail(e.to_string()))?
        .with_file_name("ova-upload");
    if !exe.exists() {
        return Err((
            2,
            format!(
                "{} is missing: cargo build --release -p hypersdk-examples --example ova-upload",
                exe.display()
            ),
        ));
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err((2, "curl is missing: apt-get install -y curl".into()));
    }
    let size = args.size_gib << 30;
    let work = tempfile::Builder::new()
        .prefix("vsphere-import-compare-")
        .tempdir_in(&args.dir)
        .map_err(|e| fail(format!("{}: {e}", args.dir.display())))?;
    let ova = work.path().join("bench.ova");
    eprintln!("making a {} GiB OVA ...", args.size_gib);
    let sha = make_ova(&ova, size).await.map_err(fail)?;
    let index = OvaIndex::open(&ova)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let disk_len = index
        .entry(DISK)
        .map(|e| e.size)
        .ok_or_else(|| fail("no disk entry".into()))?;
    let descriptor =
        String::from_utf8(index.descriptor().to_vec()).map_err(|e| fail(e.to_string()))?;

    let sim = Vcsim::builder()
        .start()
        .await
        .map_err(|e| (2, format!("vcsim harness: {e}")))?;
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap_or_default()).map_err(|e| fail(e.to_string()))?;
    let client = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().unwrap_or_default())
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;

    // The same bytes as a plain file, for curl.
    let vmdk = work.path().join(DISK);
    {
        let entry = index.open_entry(DISK).map_err(|e| fail(e.to_string()))?;
        let mut out = tokio::fs::File::create(&vmdk)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut chunks = entry
            .read_stream(Extent::new(0, entry.len()))
            .await
            .map_err(|e| fail(e.to_string()))?;
        while let Some(c) = chunks.try_next().await.map_err(|e| fail(e.to_string()))? {
            out.write_all(&c).await.map_err(|e| fail(e.to_string()))?;
        }
        out.flush().await.map_err(|e| fail(e.to_string()))?;
    }
    drop(index);
    // Written data reaches the disk before anything is measured.
    sync();

    // hypersdk: the whole import, from the OVA file; then once more
    // without the manifest check (the hashing curl does not do).
    let sessions = work.path().join("sessions");
    let thumb = sim.thumbprint_sha1().unwrap_or_default().to_owned();
    let mut hs = Vec::new();
    for (name, extra) in [
        ("hs-import", None),
        ("hs-import-noverify", Some("--no-verify")),
    ] {
        eprintln!("hypersdk ova-upload {} ...", extra.unwrap_or(""));
        let mut argv = [
            "upload",
            &ova.display().to_string(),
            &sim.host_port(),
            "--datastore",
            "LocalDS_0",
            "--vm-name",
            name,
            "--username",
            sim.username(),
            "--password",
            sim.password(),
            "--thumbprint",
            &thumb,
            "--max-retries",
            "1",
            "--session-dir",
            &sessions.display().to_string(),
            "--quiet",
        ]
        .map(str::to_owned)
        .to_vec();
        argv.extend(extra.map(str::to_owned));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        sync();
        let t = timed(&exe.display().to_string(), &argv).map_err(fail)?;
        check_upload(&sim, name, &sha, disk_len)
            .await
            .map_err(fail)?;
        hs.push(Side {
            wall: t.wall,
            cpu: t.cpu,
            rss_kib: t.rss_kib,
            bytes: disk_len,
        });
        remove_vm(&sim, &client, name).await.map_err(fail)?;
    }

    eprintln!("curl -T ...");
    let opts = OvaImportOptions::new(ImportTarget::datastore("LocalDS_0")).with_name("curl-import");
    let started = begin_import(&client, &descriptor, &opts)
        .await
        .map_err(|e| fail(format!("ImportVApp for curl: {e}")))?;
    let url = started
        .files()
        .first()
        .map(|f| f.url.clone())
        .ok_or_else(|| fail("the lease has no file".into()))?;
    let _ = std::fs::remove_file(&ova);
    sync();
    let content_type = format!("Content-Type: {STREAM_VMDK}");
    let result = timed(
        "curl",
        &[
            "-s",
            "-S",
            "-f",
            "--cacert",
            &ca.display().to_string(),
            "-X",
            "POST",
            "-H",
            &content_type,
            "-T",
            &vmdk.display().to_string(),
            "-o",
            "/dev/null",
            &url,
        ],
    );
    let checked = check_upload(&sim, "curl-import", &sha, disk_len).await;
    let _ = started.abort("benchmark done").await;
    let _ = std::fs::remove_file(&vmdk);
    let t = result.map_err(fail)?;
    checked.map_err(fail)?;
    let curl = Side {
        wall: t.wall,
        cpu: t.cpu,
        rss_kib: t.rss_kib,
        bytes: disk_len,
    };

    println!(
        "import of one streamOptimized disk of {:.2} GiB over loopback HTTPS to the vcsim \
         harness's NFC lease (the server writes and hashes it)",
        disk_len as f64 / f64::from(1u32 << 30)
    );
    println!(
        "{:<24} {:>8} {:>9} {:>8} {:>12}",
        "", "wall s", "MiB/s", "cpu s", "peak RSS MiB"
    );
    for (name, s) in [
        ("hypersdk ova-upload", &hs[0]),
        ("  --no-verify", &hs[1]),
        ("curl -T (file)", &curl),
    ] {
        println!(
            "{:<24} {:>8.2} {:>9.1} {:>8.2} {:>12.1}",
            name,
            s.wall,
            s.mib_s(),
            s.cpu,
            s.rss_kib as f64 / 1024.0
        );
    }
    println!(
        "throughput ratio hypersdk/curl: {:.2}x with the manifest check, {:.2}x without \
         (goal >= 0.90x)",
        hs[0].mib_s() / curl.mib_s().max(1e-9),
        hs[1].mib_s() / curl.mib_s().max(1e-9)
    );
    Ok(())
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
            eprintln!("vsphere_import_compare: {e}");
            ExitCode::from(code)
        }
    }
}
