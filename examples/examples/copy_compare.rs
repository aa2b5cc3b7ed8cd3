//! Side by side, in one run: downloading a sparse disk image over loopback
//! HTTP with hypersdk's copy engine, with `curl -o`, and with `aria2c -x4`.
//!
//! ```text
//! cargo run --release -p hypersdk-examples --example copy_compare -- \
//!     [--size-mib 2048] [--allocated 0.25] [--runs 3] [--dir DIR]
//! ```
//!
//! It writes a sparse image (`--allocated` of it in scattered extents of
//! 64 KiB to 4 MiB), serves it from the testkit's file server on
//! 127.0.0.1, and fetches it with each tool into a fresh file, checking the
//! SHA-256 of every result against the source. hypersdk is given the
//! image's allocated extents (what a provider's changed-block or allocation
//! API reports) and fetches only those; curl and aria2c fetch every byte.
//!
//! Printed per tool: wall time, bytes the server sent, allocated size of the
//! output (`st_blocks`), peak RSS (GNU `time -f %M`), and time as a ratio of
//! curl's: the best time of `--runs` rounds (tools interleaved in each
//! round), and the highest RSS seen. Each tool runs as its own process, so
//! RSS is its own.
//! `aria2c` is skipped, and said to be, when not installed (`apt-get
//! install aria2`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hypersdk_core::blocks::{
    BlockSource, CopyOptions, FileSource, HttpSource, allocated_size, copy_to_file,
};
use hypersdk_core::digest::{Algorithm, hash_file};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::{Error, Result};
use hypersdk_testkit::http_server::FileServer;

const MIB: u64 = 1 << 20;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--fetch") {
        fetch(&args[1..]).await
    } else {
        compare(&args).await
    };
    if let Err(e) = result {
        eprintln!("copy_compare: {e}");
        std::process::exit(1);
    }
}

/// Child mode: `--fetch URL EXTENTS_JSON OUT [--sha256]`.
async fn fetch(args: &[String]) -> Result<()> {
    let [url, extents, out, rest @ ..] = args else {
        return Err(Error::invalid_input(
            "usage: --fetch URL EXTENTS_JSON OUT [--sha256]",
        ));
    };
    let extents: ExtentList =
        serde_json::from_slice(&std::fs::read(extents).map_err(|e| Error::io(extents.clone(), e))?)
            .map_err(|e| Error::invalid_data_with(extents.clone(), "not an extent list", e))?;
    let source = HttpSource::builder(url.clone()).open().await?;
    let mut options = CopyOptions::default();
    if rest.iter().any(|a| a == "--sha256") {
        options = options.with_digests(&[Algorithm::Sha256]);
    }
    // Tuning knobs for experiments: HYPERSDK_PARALLELISM, HYPERSDK_CHUNK_MIB.
    if let Some(n) = std::env::var("HYPERSDK_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options = options.with_parallelism(n);
    }
    if let Some(n) = std::env::var("HYPERSDK_CHUNK_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options = options.with_chunk_size(n * MIB);
    }
    let report = copy_to_file(
        &source,
        Path::new(out),
        Some(&extents),
        None,
        None,
        &options,
    )
    .await?;
    if let Some(d) = report.digests {
        eprintln!(
            "  (hypersdk streamed {})",
            d.iter().next().map(|c| c.to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

struct Row {
    tool: &'static str,
    seconds: f64,
    bytes: u64,
    allocated: u64,
    rss_kib: Option<u64>,
}

async fn compare(args: &[String]) -> Result<()> {
    let mut size_mib = 2048u64;
    let mut fraction = 0.25f64;
    let mut dir: Option<PathBuf> = None;
    let mut runs = 3u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::invalid_input(format!("{a} needs a value")))?;
        match a.as_str() {
            "--size-mib" => {
                size_mib = value
                    .parse()
                    .map_err(|_| Error::invalid_input("--size-mib"))?
            }
            "--allocated" => {
                fraction = value
                    .parse()
                    .map_err(|_| Error::invalid_input("--allocated"))?
            }
            "--dir" => dir = Some(PathBuf::from(value)),
            "--runs" => runs = value.parse().map_err(|_| Error::invalid_input("--runs"))?,
            other => return Err(Error::invalid_input(format!("unknown option {other}"))),
        }
    }
    let tmp = tempdir(dir)?;
    let src = tmp.join("src.raw");
    let len = size_mib * MIB;
    eprintln!(
        "writing a {size_mib} MiB image, {:.0}% allocated, to {}",
        fraction * 100.0,
        src.display()
    );
    make_sparse(&src, len, fraction)?;
    let extents = FileSource::open(&src)
        .await?
        .allocated_extents()
        .await?
        .unwrap_or_else(|| ExtentList::full(len));
    let extents_path = tmp.join("src.extents.json");
    std::fs::write(
        &extents_path,
        serde_json::to_vec(&extents).map_err(|e| Error::other(e.to_string()))?,
    )
    .map_err(|e| Error::io(extents_path.display().to_string(), e))?;
    // Warm the page cache and get the reference digest.
    let expected = hash_file(&src, &[Algorithm::Sha256]).await?;
    let expected = expected
        .get(Algorithm::Sha256)
        .map(|c| c.to_string())
        .unwrap_or_default();

    let server = FileServer::start(&tmp).await;
    let url = server.url("src.raw");
    let me = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let out = |name: &str| tmp.join(name);

    let mut rows = Vec::new();
    let tools: Vec<(&'static str, Vec<String>, PathBuf)> = vec![
        (
            "hypersdk (allocated extents)",
            vec![
                me.display().to_string(),
                "--fetch".into(),
                url.clone(),
                extents_path.display().to_string(),
                out("hypersdk.raw").display().to_string(),
            ],
            out("hypersdk.raw"),
        ),
        (
            "hypersdk + SHA-256",
            vec![
                me.display().to_string(),
                "--fetch".into(),
                url.clone(),
                extents_path.display().to_string(),
                out("hypersdk-sha.raw").display().to_string(),
                "--sha256".into(),
            ],
            out("hypersdk-sha.raw"),
        ),
        (
            "curl -o",
            vec![
                "curl".into(),
                "-sS".into(),
                "-o".into(),
                out("curl.raw").display().to_string(),
                url.clone(),
            ],
            out("curl.raw"),
        ),
        (
            "aria2c -x4",
            vec![
                "aria2c".into(),
                "-q".into(),
                "-x4".into(),
                "-s4".into(),
                "--file-allocation=none".into(),
                "--allow-overwrite=true".into(),
                "-d".into(),
                tmp.display().to_string(),
                "-o".into(),
                "aria2c.raw".into(),
                url.clone(),
            ],
            out("aria2c.raw"),
        ),
    ];
    for round in 0..runs {
        for (tool, argv, output) in &tools {
            let (tool, output): (&'static str, &PathBuf) = (tool, output);
            if which(&argv[0]).is_none() && !argv[0].starts_with('/') {
                eprintln!(
                    "{tool}: skipped, '{}' is not installed (apt-get install {})",
                    argv[0],
                    argv[0].trim_end_matches('c')
                );
                continue;
            }
            server.reset_stats();
            let rss_file = tmp.join("rss.txt");
            let mut cmd = if Path::new("/usr/bin/time").exists() {
                let mut c = Command::new("/usr/bin/time");
                c.args(["-f", "%M", "-o"]).arg(&rss_file).args(argv);
                c
            } else {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            };
            eprintln!("running {tool}");
            let started = Instant::now();
            let status = cmd.status().map_err(|e| Error::io(argv[0].clone(), e))?;
            let seconds = started.elapsed().as_secs_f64();
            if !status.success() {
                return Err(Error::other(format!("{tool} failed: {status}")));
            }
            let digest = hash_file(&output, &[Algorithm::Sha256]).await?;
            let got = digest
                .get(Algorithm::Sha256)
                .map(|c| c.to_string())
                .unwrap_or_default();
            if got != expected {
                return Err(Error::integrity(
                    output.display().to_string(),
                    expected,
                    got,
                ));
            }
            let rss_kib = std::fs::read_to_string(&rss_file)
                .ok()
                .and_then(|s| s.trim().lines().last()?.trim().parse().ok());
            let row = Row {
                tool,
                seconds,
                bytes: server.bytes_sent(),
                allocated: allocated_size(output)?,
                rss_kib,
            };
            eprintln!("  round {}: {tool}: {seconds:.2} s", round + 1);
            match rows.iter_mut().find(|r: &&mut Row| r.tool == tool) {
                Some(best) if best.seconds <= row.seconds => {
                    best.rss_kib = best.rss_kib.max(row.rss_kib);
                }
                Some(best) => {
                    let rss = best.rss_kib.max(row.rss_kib);
                    *best = row;
                    best.rss_kib = rss;
                }
                None => rows.push(row),
            }
            let _ = std::fs::remove_file(output);
        }
    }

    let curl = rows.iter().find(|r| r.tool == "curl -o").map(|r| r.seconds);
    println!(
        "\nimage: {} MiB, {} MiB allocated in {} extents; loopback HTTP; all outputs match sha256 {}\n",
        size_mib,
        extents.total_bytes() >> 20,
        extents.len(),
        &expected
    );
    println!(
        "{:<30} {:>8} {:>12} {:>14} {:>10} {:>9}",
        "tool", "seconds", "MiB sent", "MiB allocated", "peak RSS", "vs curl"
    );
    for r in &rows {
        println!(
            "{:<30} {:>8.2} {:>12.1} {:>14.1} {:>10} {:>8.2}x",
            r.tool,
            r.seconds,
            r.bytes as f64 / MIB as f64,
            r.allocated as f64 / MIB as f64,
            r.rss_kib
                .map_or_else(|| "n/a".into(), |k| format!("{} MiB", k / 1024)),
            curl.map_or(f64::NAN, |c| r.seconds / c),
        );
    }
    if let Some(h) = rows.first() {
        let bytes_ok =
            h.bytes.abs_diff(extents.total_bytes()) as f64 <= extents.total_bytes() as f64 * 0.01;
        println!(
            "\ngoal: hypersdk time <= 0.35x curl: {}",
            curl.map_or("n/a".into(), |c| verdict(
                h.seconds / c <= 0.35,
                format!("{:.2}x", h.seconds / c)
            ))
        );
        println!(
            "goal: bytes sent = allocated +-1%: {}",
            verdict(
                bytes_ok,
                format!("{} of {} MiB", h.bytes >> 20, extents.total_bytes() >> 20)
            )
        );
        println!(
            "goal: peak RSS <= 64 MiB: {}",
            h.rss_kib.map_or("n/a".into(), |k| verdict(
                k <= 64 * 1024,
                format!("{} MiB", k / 1024)
            ))
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn verdict(ok: bool, figure: String) -> String {
    format!("{figure} {}", if ok { "MET" } else { "NOT MET" })
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

fn tempdir(base: Option<PathBuf>) -> Result<PathBuf> {
    let base = base.unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hypersdk-copy-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    Ok(dir)
}

/// A sparse image with `fraction` of it in scattered extents.
fn make_sparse(path: &Path, len: u64, fraction: f64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let io = |e| Error::io(path.display().to_string(), e);
    let file = std::fs::File::create(path).map_err(io)?;
    file.set_len(len).map_err(io)?;
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut written = ExtentList::new();
    let target = (len as f64 * fraction) as u64;
    let block: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8 | 1).collect();
    while written.total_bytes() < target {
        let length = (64 << 10) * (1 + next() % 64);
        let offset = (next() % (len / 65536)) * 65536;
        let add = ExtentList::from_unsorted([Extent::new(offset, length.min(len - offset))])
            .subtract(&written);
        for e in add.iter() {
            file.write_all_at(&block[..e.length as usize], e.offset)
                .map_err(io)?;
        }
        written = written.merge(&add);
    }
    file.sync_all().map_err(io)?;
    Ok(())
}
