//! Side-by-side SHA-256 speed: hypersdk's `digest::hash_file` against
//! `openssl dgst -sha256` and `sha256sum`, on the same file, warm page cache.
//!
//! ```text
//! cargo run --release -p hypersdk-examples --example digest_compare -- [--size-mib 1024] [--file PATH] [--runs 3]
//! ```
//!
//! Without `--file`, writes a file of `--size-mib` MiB of pseudo-random data
//! to the temp directory and deletes it afterwards. Each timing is the best of
//! `--runs` runs, the runs of the tools interleaved. Exits 1 if the tools
//! disagree on a digest, 2 if a tool is missing or the file cannot be made.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use hypersdk_core::digest::{self, Algorithm};

const USAGE: &str = "usage: digest_compare [--size-mib N] [--file PATH] [--runs N]";

struct Args {
    size_mib: u64,
    file: Option<PathBuf>,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        size_mib: 1024,
        file: None,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--size-mib" => {
                let v = value("--size-mib")?;
                args.size_mib = v
                    .parse()
                    .map_err(|e| format!("--size-mib {v:?}: {e}\n{USAGE}"))?;
            }
            "--file" => args.file = Some(PathBuf::from(value("--file")?)),
            "--runs" => {
                let v = value("--runs")?;
                args.runs = v
                    .parse::<usize>()
                    .map_err(|e| format!("--runs {v:?}: {e}\n{USAGE}"))?
                    .max(1);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.size_mib == 0 {
        return Err(format!("--size-mib must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// A file deleted when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `size_mib` MiB of xorshift output: incompressible, not all zeros.
fn write_test_file(path: &Path, size_mib: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size_mib << 20;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Reads the whole file once so every tool finds it in the page cache.
fn warm(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Checks that `program` runs; explains how to install it if not.
fn require(program: &str, package: &str) -> Result<(), String> {
    match Command::new(program).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{program} is missing ({e}); install it, e.g. `apt-get install {package}` \
             (Debian/Ubuntu) or `dnf install {package}` (Fedora/RHEL)"
        )),
    }
}

/// Runs a tool that prints a digest and returns the lower-case hex digest.
fn run_tool(program: &str, args: &[&str], file: &Path) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `openssl dgst` prints `SHA2-256(FILE)= HEX`, `sha256sum` prints `HEX  FILE`.
    let hex = match text.rsplit_once("= ") {
        Some((_, hex)) => hex.trim(),
        None => text.split_whitespace().next().unwrap_or(""),
    };
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("cannot parse the output of {program}: {text:?}"));
    }
    Ok(hex.to_ascii_lowercase())
}

/// One contender: how to run it, and the SHA-256 / SHA-1 hex it produced.
struct Contender {
    name: &'static str,
    kind: Kind,
    best: Duration,
    sha256: Option<String>,
    sha1: Option<String>,
}

enum Kind {
    Hypersdk(&'static [Algorithm]),
    Tool(&'static str, &'static [&'static str]),
}

async fn run_once(c: &mut Contender, file: &Path) -> Result<(), String> {
    let start = Instant::now();
    match c.kind {
        Kind::Hypersdk(algorithms) => {
            let digests = digest::hash_file(file, algorithms)
                .await
                .map_err(|e| format!("{}: {e}", c.name))?;
            c.best = c.best.min(start.elapsed());
            c.sha256 = digests.get(Algorithm::Sha256).map(|d| d.to_hex());
            c.sha1 = digests.get(Algorithm::Sha1).map(|d| d.to_hex());
        }
        Kind::Tool(program, args) => {
            let hex = run_tool(program, args, file)?;
            c.best = c.best.min(start.elapsed());
            if args.contains(&"-sha1") {
                c.sha1 = Some(hex);
            } else {
                c.sha256 = Some(hex);
            }
        }
    }
    Ok(())
}

fn contender(name: &'static str, kind: Kind) -> Contender {
    Contender {
        name,
        kind,
        best: Duration::MAX,
        sha256: None,
        sha1: None,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    for (program, package) in [("openssl", "openssl"), ("sha256sum", "coreutils")] {
        if let Err(msg) = require(program, package) {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    }

    let (path, _cleanup) = match &args.file {
        Some(p) => (p.clone(), None),
        None => {
            let p = std::env::temp_dir().join(format!(
                "hypersdk-digest-compare-{}.bin",
                std::process::id()
            ));
            println!(
                "writing {} MiB of test data to {}",
                args.size_mib,
                p.display()
            );
            let guard = TempFile(p.clone());
            if let Err(e) = write_test_file(&p, args.size_mib) {
                eprintln!("cannot write {}: {e}", p.display());
                return ExitCode::from(2);
            }
            (p, Some(guard))
        }
    };
    let size = match warm(&path) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    println!(
        "file {} ({:.2} GiB, page cache warm), best of {} runs, {} CPUs",
        path.display(),
        size as f64 / (1u64 << 30) as f64,
        args.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );

    let mut contenders = [
        contender(
            "openssl dgst -sha256",
            Kind::Tool("openssl", &["dgst", "-sha256"]),
        ),
        contender("sha256sum", Kind::Tool("sha256sum", &[])),
        contender("hypersdk SHA-256", Kind::Hypersdk(&[Algorithm::Sha256])),
        contender("hypersdk SHA-1", Kind::Hypersdk(&[Algorithm::Sha1])),
        contender(
            "hypersdk SHA-1+SHA-256",
            Kind::Hypersdk(&[Algorithm::Sha1, Algorithm::Sha256]),
        ),
        contender(
            "openssl dgst -sha1",
            Kind::Tool("openssl", &["dgst", "-sha1"]),
        ),
    ];
    for _ in 0..args.runs {
        for c in contenders.iter_mut() {
            if let Err(msg) = run_once(c, &path).await {
                eprintln!("{msg}");
                return ExitCode::from(2);
            }
        }
    }

    // Every tool must agree on every digest it computed.
    let mut agree = true;
    for (label, pick) in [
        (
            "SHA-256",
            (|c: &Contender| c.sha256.clone()) as fn(&Contender) -> Option<String>,
        ),
        ("SHA-1", |c: &Contender| c.sha1.clone()),
    ] {
        let results: Vec<(&str, String)> = contenders
            .iter()
            .filter_map(|c| pick(c).map(|h| (c.name, h)))
            .collect();
        if let Some((_, first)) = results.first() {
            if results.iter().all(|(_, h)| h == first) {
                println!("{label} agrees across {} tools: {first}", results.len());
            } else {
                agree = false;
                eprintln!("{label} MISMATCH:");
                for (name, h) in &results {
                    eprintln!("  {name:<24} {h}");
                }
            }
        }
    }

    let openssl = contenders[0].best.as_secs_f64();
    println!();
    println!(
        "{:<24} {:>9} {:>10} {:>18}",
        "tool", "seconds", "MB/s", "vs openssl SHA-256"
    );
    for c in &contenders {
        let secs = c.best.as_secs_f64();
        println!(
            "{:<24} {:>9.3} {:>10.0} {:>17.2}x",
            c.name,
            secs,
            size as f64 / secs / 1e6,
            openssl / secs
        );
    }
    println!();
    let ratio = |name: &str| {
        contenders
            .iter()
            .find(|c| c.name == name)
            .map_or(0.0, |c| openssl / c.best.as_secs_f64())
    };
    let targets = [("hypersdk SHA-256", 0.95), ("hypersdk SHA-1+SHA-256", 0.90)];
    for (name, target) in targets {
        let r = ratio(name);
        println!(
            "target: {name} >= {target:.2}x openssl SHA-256: {:.2}x {}",
            r,
            if r >= target { "MET" } else { "NOT MET" }
        );
    }

    if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
