//! Example programs composing hypersdk; see `examples/examples/`.
//! Run one with `cargo run -p hypersdk-examples --example NAME`.
//!
//! The library part holds what the example programs share: [`bar`], the
//! terminal progress display, and [`timed`], the GNU `time` runner of the
//! side-by-side comparisons.

use std::process::Command;

pub mod bar;

/// One run of a program timed by GNU `time`.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Wall-clock seconds.
    pub wall: f64,
    /// User plus system CPU seconds.
    pub cpu: f64,
    /// Peak resident set size in KiB.
    pub rss_kib: u64,
    /// What the program wrote to standard output.
    pub stdout: String,
}

/// Runs `program` with `args` under `/usr/bin/time` and reads its figures.
///
/// Fails, with the program's standard error, when it exits unsuccessfully,
/// and names the package to install when GNU time is missing.
pub fn timed(program: &str, args: &[&str]) -> Result<Timed, String> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "@@time %e %U %S %M"])
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| {
            format!("cannot run /usr/bin/time: {e} (install GNU time: apt-get install time)")
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{program} failed: {}", stderr.trim()));
    }
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("@@time "))
        .ok_or_else(|| format!("no timing from GNU time: {stderr}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().map_err(|e| format!("bad time {v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if f.len() != 4 {
        return Err(format!("bad GNU time line {line:?}"));
    }
    Ok(Timed {
        wall: f[0],
        cpu: f[1] + f[2],
        rss_kib: f[3] as u64,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}
