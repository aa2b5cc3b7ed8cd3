//! The backup state file, `<dir>/ovm-backup.json`: which snapshot the
//! images of a backup directory hold, and what an incremental backup checks
//! before it patches them.
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "endpoint": "https://10.0.0.5:5544",
//!   "vm_id": "0004fb0000060000ccaf98a0baa2c186",
//!   "vm_name": "web01",
//!   "vm_uuid": "0004fb00-0006-0000-ccaf-98a0baa2c186",
//!   "snapshot_id": "4f0c…",
//!   "completed_at": "2025-01-02T03:04:05Z",
//!   "disks": [
//!     {
//!       "name": "0004fb0000120000763ac50c4e345d0a.img",
//!       "device": "xvda",
//!       "size": 10737418240,
//!       "sha256": "sha256:…",
//!       "fingerprint": { "len": 10737418240, "inode": 1234, "mtime_ns": …, "ctime_ns": … },
//!       "chunks": [[0, 1048576, 8589934592], …]
//!     }
//!   ],
//!   "pending": null
//! }
//! ```
//!
//! `chunks` are the snapshot's raw (unsquashed) chunk list as
//! `[start, length, physical_start]` triples: the base of the next
//! client-side diff. `pending` describes a backup that started and has not
//! finished; while it is set, the images are *not* those of `snapshot_id`
//! (an incremental may have patched some of them already), and only that
//! backup may continue. The file is written atomically (mode 0600), as
//! compact JSON (shown indented above).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use hypersdk_core::digest::Checksum;
use hypersdk_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::types::Chunk;

/// The name of the state file in a backup directory.
pub const STATE_FILE_NAME: &str = "ovm-backup.json";

/// The schema version this module writes and the only one it reads.
pub const STATE_SCHEMA_VERSION: u32 = 1;

/// The directory of a backup directory that holds the checkpoint sessions
/// of unfinished backups.
pub const CHECKPOINT_DIR_NAME: &str = ".ovm-backup-checkpoints";

/// What a backup directory holds: the images of one VM at one snapshot of
/// one exporter, and the backup in progress, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupState {
    /// Always [`STATE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The exporter endpoint the chain is pinned to (snapshot ids are only
    /// known to the exporter that made them).
    pub endpoint: String,
    /// The VM (`vmID`, 32 hex digits).
    pub vm_id: String,
    /// The VM's friendly name when the last backup started.
    #[serde(default)]
    pub vm_name: String,
    /// The VM's UUID.
    #[serde(default)]
    pub vm_uuid: String,
    /// The snapshot the images hold, once a backup completed.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// When the last backup completed.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// The images of `snapshot_id`.
    #[serde(default)]
    pub disks: Vec<DiskState>,
    /// A backup that started and has not finished.
    #[serde(default)]
    pub pending: Option<PendingBackup>,
}

/// One image of a backup directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DiskState {
    /// The exporter's disk name (the image's basename), also the image's
    /// file name in the backup directory.
    pub name: String,
    /// The guest device, e.g. `xvda`.
    #[serde(default)]
    pub device: String,
    /// The image's size in bytes (the disk's size in the snapshot).
    pub size: u64,
    /// The SHA-256 of the whole image.
    pub sha256: Checksum,
    /// The image file's identity when it was recorded.
    pub fingerprint: FileFingerprint,
    /// The snapshot's raw chunk list for this disk.
    #[serde(default)]
    pub chunks: Vec<ChunkRecord>,
}

impl DiskState {
    /// The recorded chunks as the client's [`Chunk`]s.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.chunks.iter().map(|c| c.to_chunk()).collect()
    }
}

/// A chunk as stored in the state file: `[start, length, physical_start]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord(pub u64, pub u64, pub u64);

impl ChunkRecord {
    /// The record of `chunk`.
    pub fn from_chunk(chunk: &Chunk) -> Self {
        ChunkRecord(chunk.start, chunk.length, chunk.physical_start)
    }

    /// The client's chunk.
    pub fn to_chunk(self) -> Chunk {
        Chunk {
            start: self.0,
            length: self.1,
            physical_start: self.2,
        }
    }
}

/// Records `chunks` for the state file.
pub fn record_chunks(chunks: &[Chunk]) -> Vec<ChunkRecord> {
    chunks.iter().map(ChunkRecord::from_chunk).collect()
}

/// What identifies an image file without reading it: its length, inode and
/// modification and change times. A file written, truncated, replaced or
/// renamed over since it was recorded has another fingerprint (the change
/// time cannot be set back from user space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FileFingerprint {
    /// The length in bytes.
    pub len: u64,
    /// The inode number (0 where the platform has none).
    #[serde(default)]
    pub inode: u64,
    /// The modification time, nanoseconds since the epoch.
    #[serde(default)]
    pub mtime_ns: i128,
    /// The status change time, nanoseconds since the epoch (0 where the
    /// platform has none).
    #[serde(default)]
    pub ctime_ns: i128,
}

impl FileFingerprint {
    /// The fingerprint of the file at `path` (blocking).
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(image_object(path), e))?;
        Ok(Self::from_metadata(&meta))
    }

    #[cfg(unix)]
    fn from_metadata(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileFingerprint {
            len: meta.len(),
            inode: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn from_metadata(meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        FileFingerprint {
            len: meta.len(),
            inode: 0,
            mtime_ns,
            ctime_ns: 0,
        }
    }
}

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackupKind {
    /// Every allocated byte of the snapshot, into new images.
    Full,
    /// The changes since the previous snapshot, patched into its images.
    Incremental,
}

impl BackupKind {
    /// `"full"` or `"incremental"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backup that started and has not finished: what a new run resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PendingBackup {
    /// Full or incremental.
    pub kind: BackupKind,
    /// The exporter of `snapshot_id`.
    #[serde(default)]
    pub endpoint: String,
    /// The snapshot being backed up.
    pub snapshot_id: String,
    /// For an incremental: the snapshot the images held when it started.
    #[serde(default)]
    pub from: Option<String>,
    /// Whether this backup created the snapshot (rather than being given
    /// an existing one).
    #[serde(default)]
    pub created_snapshot: bool,
    /// The checkpoint session recording the ranges copied so far.
    pub session: String,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// The disks finished so far, as they will be recorded.
    #[serde(default)]
    pub done: Vec<DiskState>,
}

impl BackupState {
    /// A state for a first backup of `vm_id` through `endpoint`: no images
    /// yet.
    pub fn new(endpoint: impl Into<String>, vm_id: impl Into<String>) -> Self {
        BackupState {
            schema_version: STATE_SCHEMA_VERSION,
            endpoint: endpoint.into(),
            vm_id: vm_id.into(),
            vm_name: String::new(),
            vm_uuid: String::new(),
            snapshot_id: None,
            completed_at: None,
            disks: Vec::new(),
            pending: None,
        }
    }

    /// The recorded image of disk `name`.
    pub fn disk(&self, name: &str) -> Option<&DiskState> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// The state file of backup directory `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE_NAME)
    }

    /// Reads the state file of `dir`; `None` when there is none (blocking).
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedVersion`] for another schema version,
    /// [`Error::InvalidData`] for a file that is not a state file, an I/O
    /// error otherwise; each names the file.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path_in(dir);
        let object = state_object(&path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(object, e)),
        };
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<u32>,
        }
        let version: Version = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid_data_with(object.as_str(), "not a JSON object", e))?;
        match version.schema_version {
            Some(STATE_SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::UnsupportedVersion {
                    object,
                    found: v.to_string(),
                    supported: STATE_SCHEMA_VERSION.to_string(),
                });
            }
            None => {
                return Err(Error::invalid_data(object, "it has no schema_version"));
            }
        }
        let state: BackupState = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid_data_with(object.as_str(), "not an OVM backup state", e))?;
        state
            .check()
            .map_err(|why| Error::invalid_data(object, why))?;
        Ok(Some(state))
    }

    /// Writes the state file of `dir` atomically, mode 0600 (blocking).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path_in(dir);
        // Compact: chunk lists may hold many thousands of triples.
        let mut bytes = serde_json::to_vec(self)
            .map_err(|e| Error::other(format!("cannot encode {}: {e}", state_object(&path))))?;
        bytes.push(b'\n');
        hypersdk_core::fsutil::write_atomic(&path, &bytes, Some(0o600))
    }

    /// What serde cannot check: names that are safe file names, unique.
    fn check(&self) -> std::result::Result<(), String> {
        let lists = [Some(&self.disks), self.pending.as_ref().map(|p| &p.done)];
        for disks in lists.into_iter().flatten() {
            let mut seen = std::collections::HashSet::new();
            for d in disks {
                check_file_name(&d.name)?;
                if !seen.insert(d.name.as_str()) {
                    return Err(format!("disk '{}' is listed twice", d.name));
                }
            }
        }
        Ok(())
    }
}

/// Checks that a disk name from the exporter is usable as a file name in
/// the backup directory: not empty, no `/` or NUL, not `.`/`..`, not hidden
/// (which also keeps it off the state file, checkpoints and `.part` files
/// of other names), not ending in `.part`.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("a disk has an empty name".into());
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "disk name {name:?} contains a path separator or NUL"
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "disk name {name:?} starts with '.', which backups do not write"
        ));
    }
    if name.ends_with(".part") || name == STATE_FILE_NAME {
        return Err(format!(
            "disk name {name:?} would collide with the backup's own files"
        ));
    }
    if name.len() > 255 {
        return Err(format!("disk name {name:?} is longer than 255 bytes"));
    }
    Ok(())
}

/// How messages name a state file.
pub(crate) fn state_object(path: &Path) -> String {
    format!("OVM backup state '{}'", path.display())
}

/// How messages name an image.
pub(crate) fn image_object(path: &Path) -> String {
    format!("image '{}'", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::digest::Algorithm;

    fn disk(name: &str) -> DiskState {
        DiskState {
            name: name.into(),
            device: "xvda".into(),
            size: 4096,
            sha256: Checksum::compute(Algorithm::Sha256, b""),
            fingerprint: FileFingerprint::default(),
            chunks: vec![ChunkRecord(0, 4096, 65536)],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BackupState::load(dir.path()).unwrap(), None);
        let mut state = BackupState::new("https://127.0.0.1:5544", "ab".repeat(16));
        state.snapshot_id = Some("s1".into());
        state.disks.push(disk("a.img"));
        state.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(BackupState::path_in(dir.path())).unwrap();
        assert!(text.contains(r#""chunks":[[0,4096,65536]]"#), "{text}");
        assert_eq!(BackupState::load(dir.path()).unwrap(), Some(state.clone()));
        assert_eq!(
            state.disk("a.img").unwrap().chunks()[0].physical_start,
            65536
        );

        state.disks.push(disk("a.img"));
        state.save(dir.path()).unwrap();
        let e = BackupState::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");

        state.disks = vec![disk("../x")];
        state.save(dir.path()).unwrap();
        let e = BackupState::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidData);

        std::fs::write(
            BackupState::path_in(dir.path()),
            br#"{"schema_version": 7}"#,
        )
        .unwrap();
        let e = BackupState::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::UnsupportedVersion);
        std::fs::write(BackupState::path_in(dir.path()), b"[1]").unwrap();
        let e = BackupState::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("ovm-backup.json"), "{e}");
    }

    #[test]
    fn file_names() {
        assert!(check_file_name("0004fb0000120000763ac50c4e345d0a.img").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            ".hidden",
            "x.part",
            STATE_FILE_NAME,
            "a\0b",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_changes_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let a = FileFingerprint::of(&p).unwrap();
        assert_eq!(a, FileFingerprint::of(&p).unwrap());
        // Replaced by another file of the same length: another inode.
        let q = dir.path().join("g");
        std::fs::write(&q, b"abd").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_ne!(a, FileFingerprint::of(&p).unwrap());
        assert!(FileFingerprint::of(&dir.path().join("none")).is_err());
    }
}
