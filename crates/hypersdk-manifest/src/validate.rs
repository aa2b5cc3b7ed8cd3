//! The validator: the schema's rules, the semantic rules, then the files.
//!
//! [`Validator`] checks a manifest in three passes and reports **all** it
//! finds in one [`ValidationReport`]:
//!
//! 1. the JSON Schema's rules ([`Validator::check_schema`]), over the raw
//!    JSON so that a manifest with wrong types still gets every problem
//!    reported with its path;
//! 2. the semantic rules: disk ids unique, one boot disk hyper2kvm agrees
//!    on; warnings for relative paths and missing checksums;
//! 3. the files: each disk's file exists and is a regular file, its size
//!    equals `bytes`, and its SHA-256 equals `checksum`. Files are hashed
//!    through [`hypersdk_core::digest::hash_file`], streamed, several disks
//!    at once (4 by default, see [`Validator::with_parallelism`]).
//!
//! Relative `local_path`s are resolved against the manifest's directory
//! when a file is validated (or against [`Validator::with_base_dir`]), and
//! reported as warnings: hyper2kvm itself resolves them against its working
//! directory, so only absolute paths mean the same to everyone. A leading
//! `~/` is expanded with `$HOME`, as hyper2kvm does.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use hypersdk_manifest::{ProblemKind, Validator};
//!
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("disk-0.raw"), b"four").unwrap();
//! let path = dir.path().join("artifact-manifest.json");
//! std::fs::write(&path, r#"{
//!   "manifest_version": "1.0",
//!   "disks": [{"id": "disk-0", "source_format": "raw", "bytes": 5,
//!              "local_path": "disk-0.raw"}]
//! }"#).unwrap();
//!
//! let report = Validator::new().validate_file(&path).await?;
//! assert!(!report.is_ok());
//! assert!(report.find("disks[0].bytes", ProblemKind::SizeMismatch).is_some());
//! assert!(report.find("disks[0].local_path", ProblemKind::RelativePath).is_some());
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::path::{Path, PathBuf};

use futures::StreamExt;
use hypersdk_core::digest::{Algorithm, Checksum, hash_file};
use hypersdk_core::{Error, Result};
use serde_json::Value;

use crate::model::{Manifest, parse_sha256};
use crate::report::{ProblemKind, ValidationReport};
use crate::schema::{self, field, index};

/// How many disks [`Validator`] hashes at once by default.
pub const DEFAULT_PARALLELISM: usize = 4;

/// Checks manifests: schema rules, semantic rules, files, checksums.
///
/// [`Validator::new`] checks everything; turn the file checks or the
/// checksums (the slow part: every byte of every disk is read) off with
/// [`Validator::with_files`] and [`Validator::with_checksums`].
#[derive(Debug, Clone)]
pub struct Validator {
    files: bool,
    checksums: bool,
    parallelism: usize,
    base_dir: Option<PathBuf>,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new()
    }
}

impl Validator {
    /// A validator that checks everything, hashing up to
    /// [`DEFAULT_PARALLELISM`] disks at once.
    pub fn new() -> Self {
        Validator {
            files: true,
            checksums: true,
            parallelism: DEFAULT_PARALLELISM,
            base_dir: None,
        }
    }

    /// Whether to check the disks' files (existence, size, checksum).
    /// Without files, checksums are not verified either.
    #[must_use]
    pub fn with_files(mut self, on: bool) -> Self {
        self.files = on;
        self
    }

    /// Whether to verify the disks' checksums (reads every byte).
    #[must_use]
    pub fn with_checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// How many disks to hash at once (at least 1).
    #[must_use]
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }

    /// The directory relative `local_path`s are resolved against, instead
    /// of the manifest file's directory (or, for a manifest that is no
    /// file, the working directory).
    #[must_use]
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// The JSON Schema's rules only: no semantic rule, no file access.
    /// What a JSON Schema validator would say, with paths and kinds.
    pub fn check_schema(value: &Value) -> ValidationReport {
        let mut report = ValidationReport::new();
        schema::check(value, &mut report);
        report
    }

    /// The schema's and the semantic rules, without touching any file.
    pub fn check_offline(value: &Value) -> ValidationReport {
        let mut report = Validator::check_schema(value);
        schema::check_semantics(value, &mut report);
        if report.is_ok()
            && let Err(e) = serde_json::from_value::<Manifest>(value.clone())
        {
            report.add("", ProblemKind::Unrepresentable, e.to_string());
        }
        report
    }

    /// Validates a manifest given as JSON: every rule, and the files as
    /// configured. Relative paths resolve against the base directory (the
    /// working directory when none was set).
    pub async fn validate_value(&self, value: &Value) -> ValidationReport {
        let base = self.base_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        self.validate_in(value, &base).await
    }

    /// Validates a typed manifest, as [`Validator::validate_value`] does.
    pub async fn validate_manifest(&self, manifest: &Manifest) -> ValidationReport {
        match serde_json::to_value(manifest) {
            Ok(value) => self.validate_value(&value).await,
            Err(e) => {
                let mut report = ValidationReport::new();
                report.add("", ProblemKind::Unrepresentable, e.to_string());
                report
            }
        }
    }

    /// Reads and validates the manifest file at `path`.
    ///
    /// Text that is not JSON is a [`ProblemKind::InvalidJson`] problem in
    /// the report; only a file that cannot be read at all is an error.
    pub async fn validate_file(&self, path: impl AsRef<Path>) -> Result<ValidationReport> {
        let path = path.as_ref();
        let text = tokio::fs::read(path)
            .await
            .map_err(|e| Error::io(format!("manifest '{}'", path.display()), e))?;
        let value: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => {
                let mut report = ValidationReport::new();
                report.add("", ProblemKind::InvalidJson, format!("not JSON: {e}"));
                return Ok(report);
            }
        };
        let base = match &self.base_dir {
            Some(dir) => dir.clone(),
            None => hypersdk_core::fsutil::parent_dir(path),
        };
        Ok(self.validate_in(&value, &base).await)
    }

    /// Reads, validates and parses the manifest at `path`: the
    /// `Result`-returning form of [`Validator::validate_file`].
    ///
    /// Fails with [`Error::UnsupportedVersion`] for a version other than
    /// 1.0 and with [`Error::InvalidData`] naming the file and listing every
    /// problem otherwise. Warnings do not fail.
    pub async fn verify_file(&self, path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let object = format!("manifest '{}'", path.display());
        self.validate_file(path).await?.into_result(&object)?;
        Manifest::read(path)
    }

    async fn validate_in(&self, value: &Value, base: &Path) -> ValidationReport {
        let mut report = Validator::check_offline(value);
        if self.files
            && let Some(disks) = value.get("disks").and_then(Value::as_array)
        {
            self.check_files(disks, base, &mut report).await;
        }
        report
    }

    async fn check_files(&self, disks: &[Value], base: &Path, report: &mut ValidationReport) {
        let mut to_hash: Vec<(String, PathBuf, Checksum)> = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            let Some(o) = disk.as_object() else { continue };
            let Some(local) = o.get("local_path").and_then(Value::as_str) else {
                continue;
            };
            let path = index("disks", i);
            let file = resolve(local, base);
            let meta = match tokio::fs::metadata(&file).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.add(
                        field(&path, "local_path"),
                        ProblemKind::FileMissing,
                        format!("no such file: {}", file.display()),
                    );
                    continue;
                }
                Err(e) => {
                    report.add(
                        field(&path, "local_path"),
                        ProblemKind::FileUnreadable,
                        format!("cannot read {}: {e}", file.display()),
                    );
                    continue;
                }
            };
            if !meta.is_file() {
                report.add(
                    field(&path, "local_path"),
                    ProblemKind::NotAFile,
                    format!("{} is not a regular file", file.display()),
                );
                continue;
            }
            if let Some(bytes) = o.get("bytes").and_then(Value::as_u64)
                && bytes != meta.len()
            {
                report.add(
                    field(&path, "bytes"),
                    ProblemKind::SizeMismatch,
                    format!(
                        "{} is {} bytes, bytes says {bytes}",
                        file.display(),
                        meta.len()
                    ),
                );
                // A file of the wrong size cannot have the right checksum:
                // do not read it.
                continue;
            }
            if self.checksums
                && let Some(expected) = o
                    .get("checksum")
                    .and_then(Value::as_str)
                    .and_then(|s| parse_sha256(s).ok())
            {
                to_hash.push((field(&path, "checksum"), file, expected));
            }
        }
        let mut results = futures::stream::iter(to_hash)
            .map(|(path, file, expected)| async move {
                let digests = hash_file(&file, &[Algorithm::Sha256]).await;
                (path, file, expected, digests)
            })
            .buffered(self.parallelism);
        while let Some((path, file, expected, digests)) = results.next().await {
            match digests {
                Ok(d) => match d.get(Algorithm::Sha256) {
                    Some(actual) if *actual == expected => {}
                    Some(actual) => report.add(
                        path,
                        ProblemKind::ChecksumMismatch,
                        format!("{} has {actual}, checksum says {expected}", file.display()),
                    ),
                    None => report.add(
                        path,
                        ProblemKind::FileUnreadable,
                        format!("{} was not hashed with sha256", file.display()),
                    ),
                },
                Err(e) => report.add(path, ProblemKind::FileUnreadable, e.to_string()),
            }
        }
    }
}

/// Where `local_path` points: `~` and `~/…` expanded with `$HOME`, a
/// relative path joined to `base`.
pub(crate) fn resolve(local_path: &str, base: &Path) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if local_path == "~"
        && let Some(h) = home()
    {
        return h;
    }
    if let Some(rest) = local_path.strip_prefix("~/")
        && let Some(h) = home()
    {
        return h.join(rest);
    }
    let p = Path::new(local_path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Validates everything about the manifest file at `path` with
/// [`Validator::new`] and returns it parsed: the short form of
/// [`Validator::verify_file`].
pub async fn verify(path: impl AsRef<Path>) -> Result<Manifest> {
    Validator::new().verify_file(path).await
}
