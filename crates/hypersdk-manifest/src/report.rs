//! What validation found: a list of [`Problem`]s, each with the field's path,
//! a [`ProblemKind`] and a message.

use std::fmt;

use hypersdk_core::{Error, Result};

use crate::model::MANIFEST_VERSION;

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The converter may do the wrong thing, but the manifest is valid.
    Warning,
    /// The manifest is invalid: the converter rejects it or would convert
    /// the wrong data.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// What kind of problem a [`Problem`] is.
///
/// The first group are the schema's rules (a manifest with one of these is
/// rejected by any JSON Schema validator too), the second the semantic
/// rules that need more than the schema (uniqueness, the boot disk) and the
/// third the checks of the files on disk. New kinds may be added in minor
/// releases; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The text is not JSON.
    InvalidJson,
    /// A value has the wrong JSON type (a string where an integer belongs).
    /// Integers must be written as integers: `1.0` is a number, not an
    /// integer, here as for hyper2kvm.
    WrongType,
    /// A required field is absent.
    MissingField,
    /// `manifest_version` is a version other than 1.0.
    UnsupportedVersion,
    /// A string is not one of the values the schema allows.
    NotInEnum,
    /// A string does not match the schema's pattern (disk id, checksum, MAC).
    PatternMismatch,
    /// An integer is below the schema's minimum.
    BelowMinimum,
    /// An integer is above the schema's maximum.
    AboveMaximum,
    /// An array has fewer items than the schema's minimum (`disks` is empty).
    TooFewItems,
    /// A field where the schema allows no other fields (in `pipeline`).
    UnknownField,
    /// A `date-time` string is not an RFC 3339 date-time.
    InvalidDateTime,
    /// The manifest passed every rule but the typed model still rejects it:
    /// a bug of this crate, reported rather than hidden.
    Unrepresentable,

    /// Two disks have the same id.
    DuplicateId,
    /// More than one disk has `disk_type: "boot"`.
    MultipleBootDisks,
    /// Several disks share the lowest `boot_order_hint`: which one boots
    /// depends on their order in the file.
    AmbiguousBootOrder,
    /// The disk typed `boot` is not the one hyper2kvm boots (the lowest
    /// `boot_order_hint`), so FIX would change the wrong disk.
    BootDiskMismatch,
    /// `local_path` is relative (a warning: hyper2kvm resolves it against its
    /// working directory, which the manifest does not control).
    RelativePath,
    /// A disk has no checksum (a warning: hyper2kvm skips its check).
    MissingChecksum,

    /// A disk's file does not exist.
    FileMissing,
    /// A disk's path exists but is not a regular file.
    NotAFile,
    /// A disk's file could not be read.
    FileUnreadable,
    /// A disk's file size differs from its `bytes`.
    SizeMismatch,
    /// A disk's file does not have its `checksum`.
    ChecksumMismatch,
}

impl ProblemKind {
    /// How bad a problem of this kind is.
    pub fn severity(self) -> Severity {
        match self {
            ProblemKind::RelativePath | ProblemKind::MissingChecksum => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// Whether this kind is a rule of the JSON Schema (as opposed to the
    /// semantic and file checks this crate adds).
    pub fn is_schema_rule(self) -> bool {
        matches!(
            self,
            ProblemKind::InvalidJson
                | ProblemKind::WrongType
                | ProblemKind::MissingField
                | ProblemKind::UnsupportedVersion
                | ProblemKind::NotInEnum
                | ProblemKind::PatternMismatch
                | ProblemKind::BelowMinimum
                | ProblemKind::AboveMaximum
                | ProblemKind::TooFewItems
                | ProblemKind::UnknownField
                | ProblemKind::InvalidDateTime
        )
    }
}

/// One thing wrong with a manifest.
///
/// Displayed as `<path>: <message>`, e.g.
/// `disks[1].checksum: expected sha256:<64 lower-case hex digits>, got "sha256:abc"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `disks[1].checksum`, `pipeline.fix.enabled`; empty for the
    /// manifest as a whole (displayed as `(root)`).
    pub path: String,
    /// What kind of problem it is.
    pub kind: ProblemKind,
    /// What is wrong, specifically.
    pub message: String,
}

impl Problem {
    /// A problem of `kind` at `path`.
    pub fn new(path: impl Into<String>, kind: ProblemKind, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }

    /// The problem's severity.
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Everything validation found, in the order found.
///
/// ```
/// use hypersdk_manifest::{ProblemKind, Validator};
/// use serde_json::json;
///
/// let report = Validator::check_schema(&json!({
///     "manifest_version": "1.0",
///     "disks": [
///         {"id": "disk 0", "source_format": "vmdk", "bytes": 1, "local_path": "/a.vmdk"},
///         {"id": "disk-1", "source_format": "vmdk", "bytes": -1, "local_path": "/b.vmdk",
///          "checksum": "sha256:abc"}
///     ]
/// }));
/// assert!(!report.is_ok());
/// let found: Vec<_> = report.iter().map(|p| (p.path.as_str(), p.kind)).collect();
/// assert_eq!(found, [
///     ("disks[0].id", ProblemKind::PatternMismatch),
///     ("disks[1].bytes", ProblemKind::BelowMinimum),
///     ("disks[1].checksum", ProblemKind::PatternMismatch),
/// ]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationReport {
    problems: Vec<Problem>,
    /// The `manifest_version` found when it is not one this crate reads.
    unsupported_version: Option<String>,
}

impl ValidationReport {
    /// An empty report.
    pub fn new() -> Self {
        ValidationReport::default()
    }

    /// Adds a problem.
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Records an unsupported `manifest_version` (with its problem).
    pub(crate) fn unsupported_version(&mut self, found: &str, message: String) {
        self.unsupported_version = Some(found.to_owned());
        self.add("manifest_version", ProblemKind::UnsupportedVersion, message);
    }

    /// The `manifest_version` found, when it is not one this crate reads.
    pub fn found_unsupported_version(&self) -> Option<&str> {
        self.unsupported_version.as_deref()
    }

    /// Adds a problem of `kind` at `path`.
    pub fn add(&mut self, path: impl Into<String>, kind: ProblemKind, message: impl Into<String>) {
        self.push(Problem::new(path, kind, message));
    }

    /// Whether the manifest is valid: no problem of severity
    /// [`Severity::Error`] (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }

    /// Whether nothing at all was found, not even a warning.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems, warnings included.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Every problem, warnings included, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.problems.iter()
    }

    /// The problems of severity [`Severity::Error`].
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity() == Severity::Error)
    }

    /// The problems of severity [`Severity::Warning`].
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity() == Severity::Warning)
    }

    /// The first problem of `kind` at `path`, if any.
    pub fn find(&self, path: &str, kind: ProblemKind) -> Option<&Problem> {
        self.problems
            .iter()
            .find(|p| p.path == path && p.kind == kind)
    }

    /// Whether a problem of `kind` was found anywhere.
    pub fn has_kind(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|p| p.kind == kind)
    }

    /// `Ok(())` if the manifest is valid (warnings allowed), else the one
    /// [`Error`] for it, naming `object` (the manifest file):
    ///
    /// - [`Error::UnsupportedVersion`] when `manifest_version` is not 1.0
    ///   (the other problems are moot then);
    /// - [`Error::InvalidData`] listing every error, one per line, otherwise.
    pub fn into_result(self, object: &str) -> Result<()> {
        if let Some(found) = self.unsupported_version {
            return Err(Error::UnsupportedVersion {
                object: object.to_owned(),
                found,
                supported: MANIFEST_VERSION.to_owned(),
            });
        }
        let errors: Vec<String> = self.errors().map(ToString::to_string).collect();
        if errors.is_empty() {
            return Ok(());
        }
        let plural = if errors.len() == 1 { "" } else { "s" };
        Err(Error::invalid_data(
            object,
            format!(
                "{} problem{plural} in the artifact manifest:\n  {}",
                errors.len(),
                errors.join("\n  ")
            ),
        ))
    }
}

impl<'a> IntoIterator for &'a ValidationReport {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.problems.iter()
    }
}

impl IntoIterator for ValidationReport {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.problems.into_iter()
    }
}

impl fmt::Display for ValidationReport {
    /// One problem per line, `<severity>: <path>: <message>`; `ok` when
    /// there is none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("ok");
        }
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {p}", p.severity())?;
        }
        Ok(())
    }
}
