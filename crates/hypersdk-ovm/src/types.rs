//! The JSON objects of the Coriolis OVM exporter API.
//!
//! Field names are the exporter's real ones (snake_case: `vm_id`,
//! `snapshot_id`, not the README's `vmID`), every integer is a `u64`, and
//! parsing is lenient: missing fields take their default, `null` reads as
//! empty (the exporter sends `"chunks": null` for an empty unsquashed
//! `compareTo` diff) and unknown fields are ignored.
//!
//! ```
//! use hypersdk_ovm::types::VmSnapshot;
//!
//! let s: VmSnapshot = serde_json::from_str(
//!     r#"{"id":"5c0f","vm_id":"0004fb00","disks":[{"name":"a.img","chunks":null}]}"#,
//! )?;
//! assert!(s.disks[0].chunks.is_empty());
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::{Deserialize, Deserializer, Serialize};

/// `null` reads as the type's default (an empty list, an empty string).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A VM as the exporter lists it (`GET /api/v1/vms[/{vmID}]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualMachine {
    /// The OVM display name (`OVM_simple_name` of `vm.cfg`).
    #[serde(deserialize_with = "null_as_default")]
    pub friendly_name: String,
    /// The VM id of the exporter: `name` of `vm.cfg`, 32 hex digits.
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// The hyphenated UUID.
    #[serde(deserialize_with = "null_as_default")]
    pub uuid: String,
    /// The `file:` disks of `vm.cfg` (`phy:` disks are never listed).
    #[serde(deserialize_with = "null_as_default")]
    pub disks: Vec<Disk>,
    /// Whether every listed disk can be reflinked (vacuously true with no
    /// disk).
    pub snapshot_compatible: bool,
    /// The ids of the VM's snapshots on this exporter, oldest first.
    #[serde(deserialize_with = "null_as_default")]
    pub snapshots: Vec<String>,
}

/// One disk of a [`VirtualMachine`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Disk {
    /// The image's file name, e.g. `0004fb0000120000763ac50c4e345d0a.img`:
    /// the disk id of the data endpoint.
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// The image's absolute path on the OVM server.
    #[serde(deserialize_with = "null_as_default")]
    pub path: String,
    /// The guest device, e.g. `xvda` or `xvdb:cdrom`.
    #[serde(deserialize_with = "null_as_default")]
    pub device_name: String,
    /// Whether the disk lives on OCFS2 and is a virtual disk (reflinkable).
    pub snapshot_compatible: bool,
    /// The `vm.cfg` mode, e.g. `w`, `r`, `w!`.
    #[serde(deserialize_with = "null_as_default")]
    pub mode: String,
}

/// A snapshot of a VM's disks (`GET/POST /api/v1/vms/{vmID}/snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VmSnapshot {
    /// The snapshot id (a UUID).
    #[serde(deserialize_with = "null_as_default")]
    pub id: String,
    /// The VM id.
    #[serde(deserialize_with = "null_as_default")]
    pub vm_id: String,
    /// The disks, each a reflinked copy of the VM's image.
    #[serde(deserialize_with = "null_as_default")]
    pub disks: Vec<DiskSnapshot>,
}

impl VmSnapshot {
    /// The disk whose [`DiskSnapshot::name`] is `name` (the last match, as
    /// the exporter's data endpoint picks).
    pub fn disk(&self, name: &str) -> Option<&DiskSnapshot> {
        self.disks.iter().rev().find(|d| d.name == name)
    }
}

/// One disk of a [`VmSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskSnapshot {
    /// The path of the VM's image the snapshot was taken from.
    #[serde(deserialize_with = "null_as_default")]
    pub parent_path: String,
    /// The path of the reflinked copy on the OVM server.
    #[serde(deserialize_with = "null_as_default")]
    pub path: String,
    /// The snapshot id.
    #[serde(deserialize_with = "null_as_default")]
    pub snapshot_id: String,
    /// The allocated extents of the copy, sorted by `start`. Raw (one per
    /// FIEMAP extent) or squashed, depending on the request; `null` reads
    /// as empty.
    #[serde(deserialize_with = "null_as_default")]
    pub chunks: Vec<Chunk>,
    /// The image's file name: the disk id of the data endpoint.
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// The repository's mount point on the OVM server.
    #[serde(deserialize_with = "null_as_default")]
    pub repo_mountpoint: String,
}

/// One allocated extent of a snapshot's disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Chunk {
    /// The first byte, counted from the start of the disk.
    pub start: u64,
    /// The number of bytes.
    pub length: u64,
    /// Where the extent lies on the repository's block device. Meaningful
    /// only in raw (unsquashed) lists, where it tells which extents two
    /// snapshots share.
    pub physical_start: u64,
}

impl Chunk {
    /// `length` bytes at `start`, stored at `physical_start`.
    pub const fn new(start: u64, length: u64, physical_start: u64) -> Self {
        Chunk {
            start,
            length,
            physical_start,
        }
    }
}

/// How [`crate::OvmClient::snapshot`] asks for a snapshot's chunks.
///
/// The default is raw (`squashChunks=false`), which is what diffs need:
/// squashing keeps only the first extent's physical offset. The parameter
/// is always sent explicitly, since the exporter squashes when it is
/// absent.
///
/// ```
/// use hypersdk_ovm::SnapshotQuery;
/// assert!(!SnapshotQuery::default().squash);
/// let q = SnapshotQuery::squashed().compare_to("5c0f");
/// assert_eq!(q.compare_to.as_deref(), Some("5c0f"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotQuery {
    /// Merge logically adjacent chunks (`squashChunks=true`).
    pub squash: bool,
    /// Return only the chunks that differ from this older snapshot, by the
    /// exporter's exact-match rule (`compareTo=<id>`).
    pub compare_to: Option<String>,
}

impl SnapshotQuery {
    /// Raw chunks, one per extent, with their physical offsets.
    pub fn raw() -> Self {
        SnapshotQuery::default()
    }

    /// Squashed chunks (logically adjacent extents merged).
    pub fn squashed() -> Self {
        SnapshotQuery {
            squash: true,
            compare_to: None,
        }
    }

    /// Asks for the exporter's own diff against the older snapshot `id`.
    #[must_use]
    pub fn compare_to(mut self, id: impl Into<String>) -> Self {
        self.compare_to = Some(id.into());
        self
    }
}

/// The body of an exporter error: `{"error": <category>, "details": <cause>}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiError {
    /// The category, e.g. `Server error`, `Conflict`, `Bad Request`.
    #[serde(deserialize_with = "null_as_default")]
    pub error: String,
    /// The root cause, e.g. `could not find VM with ID <id>`, `not found`.
    #[serde(deserialize_with = "null_as_default")]
    pub details: String,
}

/// `POST /api/v1/auth/login` body.
#[derive(Serialize)]
pub(crate) struct LoginRequest<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: &'a str,
}

/// `POST /api/v1/auth/login` answer.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct LoginResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parsing() {
        let vm: VirtualMachine = serde_json::from_str(
            r#"{"friendly_name":"web","name":"0004fb0000060000ccaf98a0baa2c186",
                "uuid":"0004fb00-0006-0000-ccaf-98a0baa2c186","disks":null,
                "snapshot_compatible":true,"snapshots":null,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert!(vm.disks.is_empty() && vm.snapshots.is_empty());
        assert!(vm.snapshot_compatible);
        let vm: VirtualMachine = serde_json::from_str("{}").unwrap();
        assert_eq!(vm, VirtualMachine::default());
        let s: VmSnapshot = serde_json::from_str(
            r#"{"id":"a","vm_id":"b","disks":[{"name":"d.img","chunks":[
                {"start":18446744073709551615,"length":1,"physical_start":7}]}]}"#,
        )
        .unwrap();
        assert_eq!(s.disks[0].chunks[0], Chunk::new(u64::MAX, 1, 7));
        assert_eq!(s.disk("d.img").unwrap().name, "d.img");
        assert!(s.disk("e.img").is_none());
    }

    #[test]
    fn last_disk_match_wins() {
        let s = VmSnapshot {
            disks: vec![
                DiskSnapshot {
                    name: "a".into(),
                    path: "1".into(),
                    ..Default::default()
                },
                DiskSnapshot {
                    name: "a".into(),
                    path: "2".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(s.disk("a").unwrap().path, "2");
    }
}
