//! `qemu-img` as the reference implementation in cross-check tests:
//! [`convert`], [`compare`], [`check`] and [`info`].
//!
//! Tests that cross-check with qemu-img never skip when it is missing: they
//! fail with [`QemuError::Missing`], whose message names the package to
//! install (`apt-get install -y qemu-utils`). `QEMU_IMG` may point at a
//! specific binary; otherwise `qemu-img` is looked up on `PATH`.
//!
//! Every failure carries the command line, the exit status and qemu-img's
//! stderr.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hypersdk_testkit::qemu::QemuError> {
//! use hypersdk_testkit::qemu;
//!
//! // raw -> streamOptimized VMDK -> raw, and compare.
//! qemu::convert("disk.raw", "raw", "disk.vmdk", "vmdk", &["-o", "subformat=streamOptimized"]).await?;
//! let info = qemu::info("disk.vmdk").await?;
//! assert_eq!(info.format, "vmdk");
//! qemu::to_raw("disk.vmdk", "back.raw").await?;
//! assert!(qemu::compare("disk.raw", "back.raw").await?);
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

/// What went wrong running qemu-img.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// qemu-img is not installed.
    #[error(
        "qemu-img not found ({searched}): install it with `apt-get install -y qemu-utils` \
         (or set QEMU_IMG to its path)"
    )]
    Missing {
        /// Where it was looked for.
        searched: String,
    },
    /// qemu-img could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// qemu-img exited with a failure status.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// The exit status, as text.
        status: String,
        /// qemu-img's stderr (and stdout when stderr is empty), trimmed.
        stderr: String,
    },
    /// qemu-img's JSON output did not parse or lacked a field.
    #[error("{command}: unexpected output: {message}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
}

/// The path of the qemu-img binary: `$QEMU_IMG`, else the first
/// `qemu-img` on `PATH`.
pub fn qemu_img() -> Result<PathBuf, QemuError> {
    if let Some(p) = std::env::var_os("QEMU_IMG") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(QemuError::Missing {
            searched: format!("QEMU_IMG={}", p.display()),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("qemu-img");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(QemuError::Missing {
        searched: format!("PATH={}", path.to_string_lossy()),
    })
}

/// Runs `qemu-img <args>` and returns its output when it exits with 0.
pub async fn run<I, S>(args: I) -> Result<Output, QemuError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (command, out) = run_status(args).await?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(command, &out))
    }
}

/// Runs `qemu-img <args>`, whatever its exit status; returns the command
/// line (for messages) and the output.
async fn run_status<I, S>(args: I) -> Result<(String, Output), QemuError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let bin = qemu_img()?;
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut command = String::from("qemu-img");
    for a in &args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    let out = tokio::process::Command::new(&bin)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| QemuError::Spawn {
            command: command.clone(),
            source,
        })?;
    Ok((command, out))
}

fn failed(command: String, out: &Output) -> QemuError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    QemuError::Failed {
        command,
        status: out.status.to_string(),
        stderr,
    }
}

/// `qemu-img convert -f <in_format> -O <out_format> <options…> <input>
/// <output>`; `options` are extra arguments such as `["-o",
/// "subformat=streamOptimized"]` or `["-S", "0"]`.
pub async fn convert(
    input: impl AsRef<Path>,
    in_format: &str,
    output: impl AsRef<Path>,
    out_format: &str,
    options: &[&str],
) -> Result<(), QemuError> {
    let mut args: Vec<&OsStr> = vec![
        "convert".as_ref(),
        "-f".as_ref(),
        in_format.as_ref(),
        "-O".as_ref(),
        out_format.as_ref(),
    ];
    args.extend(options.iter().map(OsStr::new));
    args.push(input.as_ref().as_os_str());
    args.push(output.as_ref().as_os_str());
    run(args).await.map(|_| ())
}

/// A raw image → a streamOptimized VMDK (`-o subformat=streamOptimized`).
pub async fn to_stream_optimized(
    raw: impl AsRef<Path>,
    vmdk: impl AsRef<Path>,
) -> Result<(), QemuError> {
    convert(
        raw,
        "raw",
        vmdk,
        "vmdk",
        &["-o", "subformat=streamOptimized"],
    )
    .await
}

/// A raw image → a VMDK of `subformat` (`monolithicSparse`,
/// `twoGbMaxExtentSparse`, `streamOptimized`, …).
pub async fn to_vmdk(
    raw: impl AsRef<Path>,
    vmdk: impl AsRef<Path>,
    subformat: &str,
) -> Result<(), QemuError> {
    let opt = format!("subformat={subformat}");
    convert(raw, "raw", vmdk, "vmdk", &["-o", &opt]).await
}

/// Any image qemu-img reads (format probed) → a raw image (sparse).
pub async fn to_raw(image: impl AsRef<Path>, raw: impl AsRef<Path>) -> Result<(), QemuError> {
    let mut args: Vec<&OsStr> = vec!["convert".as_ref(), "-O".as_ref(), "raw".as_ref()];
    args.push(image.as_ref().as_os_str());
    args.push(raw.as_ref().as_os_str());
    run(args).await.map(|_| ())
}

/// `qemu-img compare a b` (formats probed): `true` when the guest-visible
/// contents are identical, `false` when they differ; an error otherwise.
pub async fn compare(a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<bool, QemuError> {
    let args: [&OsStr; 3] = [
        "compare".as_ref(),
        a.as_ref().as_os_str(),
        b.as_ref().as_os_str(),
    ];
    let (command, out) = run_status(args).await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(command, &out)),
    }
}

/// `qemu-img check --output=json <image>`: the JSON report when the image
/// is consistent (exit 0); a failure carrying qemu-img's output otherwise
/// (corruptions, leaks, or an image it cannot check).
pub async fn check(image: impl AsRef<Path>) -> Result<serde_json::Value, QemuError> {
    let args: [&OsStr; 3] = [
        "check".as_ref(),
        "--output=json".as_ref(),
        image.as_ref().as_os_str(),
    ];
    let (command, out) = run_status(args).await?;
    if !out.status.success() {
        let mut e = failed(command, &out);
        if let QemuError::Failed { stderr, .. } = &mut e {
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !stdout.trim().is_empty() && !stderr.contains(stdout.trim()) {
                stderr.push_str("; report: ");
                stderr.push_str(stdout.trim());
            }
        }
        return Err(e);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| QemuError::Output {
        command,
        message: e.to_string(),
    })
}

/// What `qemu-img info --output=json` says about an image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The format (`vmdk`, `raw`, …).
    pub format: String,
    /// The virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host, when reported.
    pub actual_size: Option<u64>,
    /// For VMDK: `format-specific.data.create-type` (`streamOptimized`,
    /// `monolithicSparse`, …).
    pub create_type: Option<String>,
    /// The whole JSON document.
    pub json: serde_json::Value,
}

/// `qemu-img info --output=json <image>`.
pub async fn info(image: impl AsRef<Path>) -> Result<ImageInfo, QemuError> {
    let args: [&OsStr; 3] = [
        "info".as_ref(),
        "--output=json".as_ref(),
        image.as_ref().as_os_str(),
    ];
    let (command, out) = run_status(args).await?;
    if !out.status.success() {
        return Err(failed(command, &out));
    }
    let bad = |message: String| QemuError::Output {
        command: command.clone(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(e.to_string()))?;
    let format = json["format"]
        .as_str()
        .ok_or_else(|| bad("no \"format\"".into()))?
        .to_owned();
    let virtual_size = json["virtual-size"]
        .as_u64()
        .ok_or_else(|| bad("no \"virtual-size\"".into()))?;
    Ok(ImageInfo {
        format,
        virtual_size,
        actual_size: json["actual-size"].as_u64(),
        create_type: json["format-specific"]["data"]["create-type"]
            .as_str()
            .map(str::to_owned),
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_through_stream_optimized() {
        let dir = tempfile::tempdir().unwrap();
        let raw = crate::images::mixed(dir.path().join("a.raw"), 2 << 20, 5, 50).unwrap();
        let vmdk = dir.path().join("a.vmdk");
        to_stream_optimized(&raw.path, &vmdk).await.unwrap();
        let i = info(&vmdk).await.unwrap();
        assert_eq!(i.format, "vmdk");
        assert_eq!(i.virtual_size, 2 << 20);
        assert_eq!(i.create_type.as_deref(), Some("streamOptimized"));
        check(&vmdk).await.unwrap();
        let back = dir.path().join("b.raw");
        to_raw(&vmdk, &back).await.unwrap();
        assert!(compare(&raw.path, &back).await.unwrap());
        assert_eq!(
            crate::images::sha256_sparse(&back).unwrap(),
            raw.sha256().unwrap()
        );
        let other = crate::images::random(dir.path().join("c.raw"), 2 << 20, 1).unwrap();
        assert!(!compare(&raw.path, &other.path).await.unwrap());
        let e = info(dir.path().join("missing")).await.unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
