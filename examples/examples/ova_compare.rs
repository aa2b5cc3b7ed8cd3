//! Side by side: verifying an OVA with hypersdk's streaming reader against
//! today's way, `tar -xf` then `sha256sum` of the members.
//!
//! ```text
//! cargo run --release -p hypersdk-examples --example ova_compare -- [--size-gib 4] [--dir PATH] [--runs 3] [--keep]
//! ```
//!
//! Writes (once; kept with `--keep`) an OVA of `--size-gib` GiB in `--dir`
//! (default: the temp directory): an OVF descriptor, a SHA-256 `.mf` right
//! after it, and two disks of pseudo-random data. Then reads it once so both
//! sides find it in the page cache, and times each side `--runs` times under
//! GNU `time`, interleaved, keeping the best wall time and the largest peak
//! RSS. Temp bytes are what each side wrote to disk: the extracted members
//! for tar, nothing for hypersdk (it creates no file). Exits 1 when a side
//! fails or the digests disagree, 2 when a tool is missing.

use hypersdk_examples::timed;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bytes::Bytes;
use futures::StreamExt;
use hypersdk_core::digest::{Algorithm, Checksum, MultiHasher};
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_ova::archive::{ManifestMode, OvaReader, OvaWriter, WriteOptions};
use hypersdk_ova::mf::Manifest;
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};

const USAGE: &str = "usage: ova_compare [--size-gib N] [--dir PATH] [--runs N] [--keep]\n       ova_compare verify FILE.ova";
const CHUNK: usize = 4 << 20;

struct Args {
    size_gib: u64,
    dir: PathBuf,
    runs: usize,
    keep: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        size_gib: 4,
        dir: std::env::temp_dir(),
        runs: 3,
        keep: false,
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--size-gib" => {
                let v = value("--size-gib")?;
                args.size_gib = v.parse().map_err(|e| format!("--size-gib {v:?}: {e}"))?;
            }
            "--dir" => args.dir = PathBuf::from(value("--dir")?),
            "--runs" => {
                let v = value("--runs")?;
                args.runs = v
                    .parse::<usize>()
                    .map_err(|e| format!("--runs {v:?}: {e}"))?
                    .max(1);
            }
            "--keep" => args.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.size_gib == 0 {
        return Err(format!("--size-gib must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// `len` bytes of xorshift output from `seed`, as a stream of chunks.
fn disk_stream(seed: u64, len: u64) -> impl futures::Stream<Item = hypersdk_core::Result<Bytes>> {
    futures::stream::unfold((seed | 1, len), |(mut state, left)| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n.next_multiple_of(8)];
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        buf.truncate(n);
        Some((Ok(Bytes::from(buf)), (state, left - n as u64)))
    })
}

/// Writes the test OVA: descriptor, SHA-256 manifest up front, two disks.
async fn generate(path: &Path, size_gib: u64) -> Result<(), String> {
    let disk_len = (size_gib << 30) / 2;
    let names = ["bench-disk1.vmdk", "bench-disk2.vmdk"];
    let mut mf = Manifest::new();
    for (i, name) in names.iter().enumerate() {
        // First pass: the digests, so the manifest can precede the disks.
        let mut h = MultiHasher::offloaded(&[Algorithm::Sha256]);
        let mut s = std::pin::pin!(disk_stream(i as u64 + 1, disk_len));
        while let Some(chunk) = s.next().await {
            h.update(chunk.map_err(|e| e.to_string())?);
        }
        let d = h.finish().map_err(|e| e.to_string())?;
        let sum: Checksum = *d.get(Algorithm::Sha256).ok_or("no digest")?;
        mf.insert(*name, sum).map_err(|e| e.to_string())?;
    }
    let mut vm = VmInfo::new("bench", "bench");
    vm.cpus = 2;
    vm.memory_mib = 2048;
    let mut disks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        vm.disks.push(DiskInfo::new(format!("disk{i}"), disk_len));
        disks.push(
            OvfDisk::new(*name)
                .with_size(disk_len)
                .with_format(DiskFormat::Raw),
        );
    }
    let ovf = write_descriptor(&vm, &disks).map_err(|e| e.to_string())?;
    let options = WriteOptions::default().with_manifest(ManifestMode::Upfront(mf));
    let mut w = OvaWriter::create(path, options)
        .await
        .map_err(|e| e.to_string())?;
    w.write_descriptor("bench.ovf", ovf.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    for (i, name) in names.iter().enumerate() {
        let s = std::pin::pin!(disk_stream(i as u64 + 1, disk_len));
        w.append_stream(name, Some(disk_len), s)
            .await
            .map_err(|e| e.to_string())?;
    }
    w.finish().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The child side: verify `path` in one streaming pass and print the
/// verified members' SHA-256 as `hex  name` lines.
async fn verify(path: &Path) -> Result<(), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let summary = OvaReader::new(file)
        .finish()
        .await
        .map_err(|e| e.to_string())?;
    if !summary.manifest_verified {
        return Err("the OVA has no manifest, or not every member was verified".into());
    }
    for e in &summary.entries {
        if let Some(d) = e.digests.as_ref().and_then(|d| d.get(Algorithm::Sha256)) {
            println!("{}  {}", d.to_hex(), e.name);
        }
    }
    Ok(())
}

/// `hex  name` lines to sorted (name, hex) pairs, names without directories.
fn sums(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(hex, name)| {
            let base = name.rsplit('/').next().unwrap_or(name);
            (base.to_string(), hex.to_string())
        })
        .collect();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("verify") {
        let Some(file) = argv.nth(1) else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        return match verify(Path::new(&file)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verify: {e}");
                ExitCode::from(1)
            }
        };
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    for (program, package) in [
        ("/usr/bin/time", "time"),
        ("tar", "tar"),
        ("sha256sum", "coreutils"),
    ] {
        if Command::new(program).arg("--version").output().is_err() {
            eprintln!("{program} is missing; install it: apt-get install -y {package}");
            return ExitCode::from(2);
        }
    }
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ova_compare: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let ova = args
        .dir
        .join(format!("hypersdk-bench-{}g.ova", args.size_gib));
    if !ova.exists() {
        eprintln!("writing {} ...", ova.display());
        generate(&ova, args.size_gib).await?;
    }
    let size = std::fs::metadata(&ova).map_err(|e| e.to_string())?.len();
    // Warm the page cache for both sides.
    std::io::copy(
        &mut std::fs::File::open(&ova).map_err(|e| e.to_string())?,
        &mut std::io::sink(),
    )
    .map_err(|e| e.to_string())?;

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let me = me.to_string_lossy().into_owned();
    let ova_s = ova.to_string_lossy().into_owned();
    let (mut ours_best, mut ours_rss, mut theirs_best, mut theirs_rss, mut temp) =
        (f64::MAX, 0u64, f64::MAX, 0u64, 0u64);
    let mut digests_agree = true;
    for _ in 0..args.runs {
        let ours = timed(&me, &["verify", &ova_s])?;
        ours_best = ours_best.min(ours.wall);
        ours_rss = ours_rss.max(ours.rss_kib);

        let out = tempfile::Builder::new()
            .prefix("ova-extract-")
            .tempdir_in(&args.dir)
            .map_err(|e| e.to_string())?;
        let out_s = out.path().to_string_lossy().into_owned();
        let theirs = timed(
            "sh",
            &[
                "-c",
                "tar -xf \"$1\" -C \"$2\" && sha256sum \"$2\"/*",
                "sh",
                &ova_s,
                &out_s,
            ],
        )?;
        theirs_best = theirs_best.min(theirs.wall);
        theirs_rss = theirs_rss.max(theirs.rss_kib);
        temp = dir_bytes(out.path());
        // tar + sha256sum hashes every member (the .ovf and .mf too); ours
        // prints what it verified: compare the common names.
        let ours_sums = sums(&ours.stdout);
        let theirs_sums = sums(&theirs.stdout);
        for (name, hex) in &ours_sums {
            if !theirs_sums.iter().any(|(n, h)| n == name && h == hex) {
                digests_agree = false;
                eprintln!("digest of {name} differs: hypersdk {hex}");
            }
        }
        if ours_sums.len() < 3 {
            return Err(format!(
                "hypersdk verified only {} members",
                ours_sums.len()
            ));
        }
    }
    if !args.keep {
        let _ = std::fs::remove_file(&ova);
    }
    let gib = size as f64 / f64::from(1u32 << 30);
    println!(
        "verify a {gib:.2} GiB OVA (OVF + .mf + 2 disks), warm page cache, best of {} runs",
        args.runs
    );
    println!("| way | wall s | GiB/s | peak RSS MiB | temp bytes written |");
    println!("|---|---|---|---|---|");
    println!(
        "| tar -xf + sha256sum | {theirs_best:.2} | {:.2} | {:.1} | {temp} |",
        gib / theirs_best,
        theirs_rss as f64 / 1024.0
    );
    println!(
        "| hypersdk OvaReader (streaming) | {ours_best:.2} | {:.2} | {:.1} | 0 |",
        gib / ours_best,
        ours_rss as f64 / 1024.0
    );
    println!("speed-up: {:.2}x", theirs_best / ours_best);
    if !digests_agree {
        return Err("the two ways disagree on a digest".into());
    }
    Ok(())
}
