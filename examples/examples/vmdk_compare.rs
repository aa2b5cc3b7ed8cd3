//! Side by side, in one run: hypersdk's streamOptimized VMDK encoder
//! against `qemu-img convert -O vmdk -o subformat=streamOptimized`, and
//! hypersdk's decoder against `qemu-img convert -O raw`, on the same
//! sparse raw image.
//!
//! ```text
//! cargo run --release -p hypersdk-examples --example vmdk_compare -- \
//!     [--size-gib 2] [--data-percent 40] [--levels 6,7] [--dir PATH] [--runs 3] [--keep]
//! ```
//!
//! Writes (once; kept with `--keep`) a sparse raw image of `--size-gib` GiB
//! in `--dir` (default: the temp directory) of which about
//! `--data-percent` % is data, in runs of 4 KiB to 1 MiB: half random
//! bytes, half text-like (`hypersdk_testkit::images::mixed`), the rest
//! holes. Reads its data once so every side finds it in the page cache,
//! then times each side `--runs` times under GNU `time`, interleaved (the
//! order rotates each run), keeping the best wall time; reports CPU time,
//! peak RSS and output sizes.
//!
//! - Encode: hypersdk `raw_to_vmdk` at each of `--levels` (default: the
//!   encoder's default level) against qemu-img (zlib level 6).
//! - Decode: both read the VMDK hypersdk wrote at the first level and write
//!   a sparse raw image: hypersdk `vmdk_file_to_raw` (no digest) against
//!   `qemu-img convert -O raw`.
//!
//! Every output is checked with `qemu-img compare` against the raw image
//! (and the VMDKs with `qemu-img check`). Exits 1 when a side fails or an
//! output differs, 2 when a tool is missing.

use hypersdk_examples::{Timed, timed};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use hypersdk_ova::vmdk::convert::{RawOptions, vmdk_file_to_raw};
use hypersdk_ova::vmdk::encode::{EncodeOptions, raw_to_vmdk};
use hypersdk_testkit::images;

const USAGE: &str = "usage: vmdk_compare [--size-gib N] [--data-percent P] [--levels L[,L...]] \
                     [--dir PATH] [--runs N] [--keep] [--deflate-all]\n       \
                     vmdk_compare encode RAW VMDK [LEVEL [deflate-all]]\n       \
                     vmdk_compare decode VMDK RAW";

struct Args {
    size_gib: u64,
    data_percent: u8,
    levels: Vec<u32>,
    dir: PathBuf,
    runs: usize,
    keep: bool,
    deflate_all: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        size_gib: 2,
        data_percent: 40,
        levels: vec![EncodeOptions::default().compression_level],
        dir: std::env::temp_dir(),
        runs: 3,
        keep: false,
        deflate_all: false,
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--size-gib" => {
                let v = value("--size-gib")?;
                args.size_gib = v.parse().map_err(|e| format!("--size-gib {v:?}: {e}"))?;
            }
            "--data-percent" => {
                let v = value("--data-percent")?;
                args.data_percent = v
                    .parse::<u8>()
                    .map_err(|e| format!("--data-percent {v:?}: {e}"))?
                    .min(100);
            }
            "--levels" | "--level" => {
                let v = value("--levels")?;
                args.levels = v
                    .split(',')
                    .map(|l| l.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--levels {v:?}: {e}"))?;
                if args.levels.is_empty() || args.levels.iter().any(|&l| l > 9) {
                    return Err(format!("--levels {v:?}: levels are 0 to 9"));
                }
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
            "--deflate-all" => args.deflate_all = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.size_gib == 0 {
        return Err(format!("--size-gib must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// The child side: encode RAW into VMDK.
async fn encode(raw: &Path, vmdk: &Path, level: u32, deflate_all: bool) -> Result<(), String> {
    let options = EncodeOptions::default()
        .with_compression_level(level)
        .with_store_incompressible(!deflate_all);
    let report = raw_to_vmdk(raw, vmdk, &options)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "grains {} zero_grains {} bytes_read {} bytes_written {}",
        report.grains, report.zero_grains, report.bytes_read, report.bytes_written
    );
    Ok(())
}

/// The child side: decode VMDK into RAW (no digest: qemu-img computes
/// none either).
async fn decode(vmdk: &Path, raw: &Path) -> Result<(), String> {
    let report = vmdk_file_to_raw(vmdk, raw, &RawOptions::default().with_digests(&[]))
        .await
        .map_err(|e| e.to_string())?;
    println!("grains {} data_bytes {}", report.grains, report.data_bytes);
    Ok(())
}

/// One side of a comparison: how to run it once, and its results.
struct Side<'a> {
    name: String,
    run: Box<dyn Fn() -> Result<Timed, String> + 'a>,
    /// The file it writes, for the size and the checks.
    output: PathBuf,
    best_wall: f64,
    best_cpu: f64,
    rss_kib: u64,
    walls: Vec<f64>,
}

impl<'a> Side<'a> {
    fn new(
        name: impl Into<String>,
        output: PathBuf,
        run: impl Fn() -> Result<Timed, String> + 'a,
    ) -> Self {
        Side {
            name: name.into(),
            run: Box::new(run),
            output,
            best_wall: f64::MAX,
            best_cpu: 0.0,
            rss_kib: 0,
            walls: Vec::new(),
        }
    }

    fn once(&mut self) -> Result<(), String> {
        remove(&self.output);
        let r = (self.run)()?;
        if r.wall < self.best_wall {
            self.best_wall = r.wall;
            self.best_cpu = r.cpu;
        }
        self.rss_kib = self.rss_kib.max(r.rss_kib);
        self.walls.push(r.wall);
        Ok(())
    }
}

/// Runs every side `runs` times, interleaved; the order rotates each run.
fn interleave(sides: &mut [Side<'_>], runs: usize) -> Result<(), String> {
    let n = sides.len();
    for i in 0..runs {
        for k in 0..n {
            sides[(i + k) % n].once()?;
        }
    }
    Ok(())
}

fn qemu(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {}: {} {}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn size_of(path: &Path) -> Result<u64, String> {
    Ok(std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    let child = match argv.peek().map(String::as_str) {
        Some("encode") => Some(true),
        Some("decode") => Some(false),
        _ => None,
    };
    if let Some(is_encode) = child {
        let rest: Vec<String> = argv.skip(1).collect();
        let (Some(input), Some(output)) = (rest.first(), rest.get(1)) else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        let (input, output) = (Path::new(input), Path::new(output));
        let done = if is_encode {
            let level = rest
                .get(2)
                .and_then(|l| l.parse().ok())
                .unwrap_or(EncodeOptions::default().compression_level);
            let deflate_all = rest.get(3).is_some_and(|a| a == "deflate-all");
            encode(input, output, level, deflate_all).await
        } else {
            decode(input, output).await
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
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
    for (program, package) in [("/usr/bin/time", "time"), ("qemu-img", "qemu-utils")] {
        if Command::new(program).arg("--version").output().is_err() {
            eprintln!("{program} is missing; install it: apt-get install -y {package}");
            return ExitCode::from(2);
        }
    }
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmdk_compare: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_table(sides: &[Side<'_>], data_mib: f64) -> Result<(), String> {
    println!("| way | best wall s (all runs) | CPU s | data MiB/s | peak RSS MiB | output MiB |");
    println!("|---|---|---|---|---|---|");
    for s in sides {
        let all: Vec<String> = s.walls.iter().map(|w| format!("{w:.2}")).collect();
        println!(
            "| {} | {:.2} ({}) | {:.2} | {:.0} | {:.1} | {:.1} |",
            s.name,
            s.best_wall,
            all.join(", "),
            s.best_cpu,
            data_mib / s.best_wall,
            s.rss_kib as f64 / 1024.0,
            size_of(&s.output)? as f64 / f64::from(1u32 << 20),
        );
    }
    Ok(())
}

async fn run(args: &Args) -> Result<(), String> {
    let raw = args.dir.join(format!(
        "hypersdk-vmdk-bench-{}g-{}pct.raw",
        args.size_gib, args.data_percent
    ));
    if !raw.exists() {
        eprintln!("writing {} ...", raw.display());
        let (path, len, pct) = (raw.clone(), args.size_gib << 30, args.data_percent);
        tokio::task::spawn_blocking(move || images::mixed(&path, len, 1, pct))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", raw.display()))?;
    }
    let len = size_of(&raw)?;
    let data = hypersdk_core::blocks::allocated_size(&raw).map_err(|e| e.to_string())?;
    let data_mib = data as f64 / f64::from(1u32 << 20);
    // Warm the page cache: read the data ranges once.
    let raw_sha = images::sha256_sparse(&raw).map_err(|e| e.to_string())?;

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let me = me.to_string_lossy().into_owned();
    let raw_s = raw.to_string_lossy().into_owned();
    let file = |name: &str| args.dir.join(format!("hypersdk-vmdk-bench-{name}"));
    let mode = if args.deflate_all {
        "deflate-all"
    } else {
        "store-incompressible"
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let load_before = load();

    // Encode.
    let qemu_vmdk = file("qemu.vmdk");
    let qemu_vmdk_s = qemu_vmdk.to_string_lossy().into_owned();
    let mut encoders = vec![Side::new(
        "qemu-img convert -O vmdk -o subformat=streamOptimized (zlib 6, 1 thread)",
        qemu_vmdk.clone(),
        || {
            timed(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    "subformat=streamOptimized",
                    &raw_s,
                    &qemu_vmdk_s,
                ],
            )
        },
    )];
    let ours: Vec<(u32, PathBuf, String)> = args
        .levels
        .iter()
        .map(|&l| {
            let p = file(&format!("ours-l{l}.vmdk"));
            let s = p.to_string_lossy().into_owned();
            (l, p, s)
        })
        .collect();
    for (level, path, path_s) in &ours {
        let level_s = level.to_string();
        let (me, raw_s) = (me.clone(), raw_s.clone());
        let path_s = path_s.clone();
        encoders.push(Side::new(
            format!("hypersdk raw_to_vmdk (level {level}, {cpus} threads)"),
            path.clone(),
            move || timed(&me, &["encode", &raw_s, &path_s, &level_s, mode]),
        ));
    }
    interleave(&mut encoders, args.runs)?;
    for s in &encoders {
        qemu(&["compare".as_ref(), raw.as_os_str(), s.output.as_os_str()])?;
        qemu(&["check".as_ref(), s.output.as_os_str()])?;
    }

    // Decode the VMDK hypersdk wrote at the first level.
    let input = ours[0].1.clone();
    let input_s = input.to_string_lossy().into_owned();
    let (ours_raw, qemu_raw) = (file("ours-back.raw"), file("qemu-back.raw"));
    let (ours_raw_s, qemu_raw_s) = (
        ours_raw.to_string_lossy().into_owned(),
        qemu_raw.to_string_lossy().into_owned(),
    );
    let mut decoders = vec![
        Side::new("qemu-img convert -O raw", qemu_raw.clone(), || {
            timed("qemu-img", &["convert", "-O", "raw", &input_s, &qemu_raw_s])
        }),
        Side::new("hypersdk vmdk_file_to_raw", ours_raw.clone(), || {
            timed(&me, &["decode", &input_s, &ours_raw_s])
        }),
    ];
    interleave(&mut decoders, args.runs)?;
    for s in &decoders {
        qemu(&[
            "compare".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            raw.as_os_str(),
            s.output.as_os_str(),
        ])?;
    }

    println!(
        "{:.2} GiB sparse raw image, {data_mib:.0} MiB data (~{} % mixed: half random, half \
         text-like, rest holes), {cpus} CPUs, load avg before {load_before} / after {}, best of \
         {} interleaved runs; raw sha256 {raw_sha}",
        len as f64 / f64::from(1u32 << 30),
        args.data_percent,
        load(),
        args.runs
    );
    println!("\nraw -> streamOptimized VMDK");
    print_table(&encoders, data_mib)?;
    let q = &encoders[0];
    let q_size = size_of(&q.output)?;
    for s in &encoders[1..] {
        println!(
            "{}: time {:.2}x qemu-img (goal <= 0.40), CPU {:.2}x, size {:.4}x (goal <= 1.0)",
            s.name,
            s.best_wall / q.best_wall,
            s.best_cpu / q.best_cpu,
            size_of(&s.output)? as f64 / q_size as f64
        );
    }
    println!(
        "\nstreamOptimized VMDK (hypersdk's, level {}) -> raw",
        ours[0].0
    );
    print_table(&decoders, data_mib)?;
    println!(
        "hypersdk: time {:.2}x qemu-img (goal <= 0.70), CPU {:.2}x",
        decoders[1].best_wall / decoders[0].best_wall,
        decoders[1].best_cpu / decoders[0].best_cpu
    );
    println!(
        "\nevery output: qemu-img compare identical to the raw image; VMDKs: qemu-img check clean"
    );

    drop(decoders);
    drop(encoders);
    if !args.keep {
        remove(&raw);
    }
    for (_, p, _) in &ours {
        remove(p);
    }
    for p in [qemu_vmdk, ours_raw, qemu_raw] {
        remove(&p);
    }
    Ok(())
}
