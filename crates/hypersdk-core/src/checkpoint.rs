//! Resumable transfer sessions that survive a process restart.
//!
//! A [`TransferSession`] records what a long transfer (an OVA upload, an OVM
//! backup, a disk copy) has done so far: its items (files or disks), and for
//! each item the byte ranges completed as an [`ExtentList`], its checksum
//! when known, and its [`ItemState`]. A [`CheckpointStore`] keeps sessions in
//! a directory the caller picks, one file per session, so that a transfer
//! interrupted by a crash, a reboot or a Ctrl-C resumes where it stopped
//! instead of starting over.
//!
//! ```
//! use hypersdk_core::checkpoint::{CheckpointStore, ItemState, TransferItem, TransferSession};
//! use hypersdk_core::model::extent::Extent;
//!
//! # fn main() -> hypersdk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = CheckpointStore::open(dir.path().join("checkpoints"))?;
//!
//! // Start a session and record progress as chunks land.
//! let mut session = TransferSession::new(
//!     "ova-upload",
//!     "/exports/web01.ova",
//!     "https://esx.example/folder/web01",
//! );
//! session.add_item(TransferItem::new("web01-disk1.vmdk", 4 << 20))?;
//! if let Some(disk) = session.item_mut("web01-disk1.vmdk") {
//!     disk.mark_done(Extent::new(0, 1 << 20));
//! }
//! store.save(&mut session)?;
//!
//! // After a restart: find the session again and resume where it stopped.
//! let id = session.id.clone();
//! let resumed = store.load(&id)?;
//! assert_eq!(resumed, session);
//! let disk = resumed.item("web01-disk1.vmdk").unwrap();
//! assert_eq!(disk.state, ItemState::InProgress);
//! assert_eq!(disk.remaining().as_slice(), &[Extent::new(1 << 20, 3 << 20)]);
//! assert_eq!((resumed.bytes_done(), resumed.bytes_total()), (1 << 20, 4 << 20));
//!
//! // A listing shows every session file, readable or not.
//! for entry in store.list()? {
//!     match &entry.session {
//!         Ok(s) => println!("{}: {} {} of {} bytes", entry.id, s.kind, s.bytes_done(), s.bytes_total()),
//!         Err(e) => println!("{}: {e}", entry.id),
//!     }
//! }
//!
//! // Done: forget the session.
//! store.remove(&id)?;
//! assert!(store.load(&id).unwrap_err().is_not_found());
//! # Ok(())
//! # }
//! ```
//!
//! # Files
//! Session `<id>` lives in `<dir>/<id>.json`, a JSON object that starts with
//! `"schema_version": 1` ([`SCHEMA_VERSION`]):
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "id": "20250102T030405Z-9f86d081884c7d65",
//!   "kind": "ova-upload",
//!   "created_at": "2025-01-02T03:04:05.123456789Z",
//!   "updated_at": "2025-01-02T03:09:41.000000001Z",
//!   "source": "/exports/web01.ova",
//!   "target": "https://esx.example/folder/web01",
//!   "items": [
//!     {
//!       "name": "web01-disk1.vmdk",
//!       "size": 4194304,
//!       "completed": [{ "offset": 0, "length": 1048576 }],
//!       "checksum": "sha256:…",
//!       "state": "in_progress"
//!     }
//!   ],
//!   "metadata": {}
//! }
//! ```
//!
//! `checksum` and `error` are left out when absent. Unknown fields are
//! ignored on load and not written back, so a change that older readers must
//! not lose takes a new schema version.
//!
//! Files are written atomically ([`CheckpointStore::save`] writes a temporary
//! file `.<id>.json.<pid>.<n>.tmp`, syncs it and renames it over the old
//! one), so a concurrent reader and a crash both see either the old or the
//! new session in full, never a torn file. They are created with mode `0600`
//! and the directory, when [`CheckpointStore::open`] creates it, with mode
//! `0700` (unix): a session names hosts and paths. Do not put credentials
//! into [`TransferSession::source`] or [`TransferSession::target`]; pass URLs
//! through [`crate::error::redact_url`] first.
//!
//! # Damaged files
//! A file that is not valid JSON, not a session, inconsistent (duplicate item
//! names, completed bytes beyond an item's size), named after another
//! session, or of another schema version is never silently replaced:
//! [`CheckpointStore::load`] and [`CheckpointStore::save`] return an error
//! naming the file ([`ErrorKind::InvalidData`](crate::ErrorKind::InvalidData)
//! or [`ErrorKind::UnsupportedVersion`](crate::ErrorKind::UnsupportedVersion)),
//! [`CheckpointStore::list`] reports it as an entry with an error, and
//! [`CheckpointStore::clean_older_than`] leaves it in place and reports it.
//! The user removes it explicitly with [`CheckpointStore::remove`], which
//! does not read the file.
//!
//! # Blocking and concurrency
//! Every method of [`CheckpointStore`] does blocking file I/O (`save` also
//! two `fsync`s). From async code call them through
//! [`tokio::task::spawn_blocking`]; a [`CheckpointStore`] is a cheap
//! [`Clone`] to move there. Any number of threads and processes may read
//! a directory while sessions are saved. Each session must have one writer
//! at a time: two concurrent `save`s of one session both succeed and the
//! last one wins.
//!
//! So a program that drives a session (runs or resumes its transfer,
//! removes it) first takes the session's lock: [`CheckpointStore::lock`]
//! gives a [`SessionLock`], an exclusive advisory lock (`flock` on unix,
//! `LockFileEx` on Windows, through [`std::fs::File::try_lock`]) on the file
//! `<dir>/<id>.lock`, held until the [`SessionLock`] is dropped or the
//! process ends, however it ends (the kernel releases it; a killed process
//! leaves no stale lock). It never waits: while another process (or another
//! [`SessionLock`] of this one) holds it, `lock` fails at once with an
//! [`Error::Conflict`] that names the session and says it is in use by
//! another process. [`CheckpointStore::remove`] and
//! [`CheckpointStore::clean_older_than`] take the lock too, so they never
//! pull a session from under a running transfer; its holder removes the
//! session with [`SessionLock::remove_session`]. On unix a lock file exists
//! only while its lock is held (or after a crash, until the next lock of
//! the session); elsewhere it stays, empty but for the holder's pid. Reading
//! ([`CheckpointStore::load`], [`CheckpointStore::list`]) takes no lock.
//!
//! ```
//! use hypersdk_core::checkpoint::{CheckpointStore, TransferSession};
//! use hypersdk_core::ErrorKind;
//!
//! # fn main() -> hypersdk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = CheckpointStore::open(dir.path())?;
//! let mut session = TransferSession::new("ova-upload", "a.ova", "esx");
//! let lock = store.lock(&session.id)?; // held while this process drives it
//! store.save(&mut session)?;
//!
//! // A second driver (another process, or here another lock) is refused.
//! let e = store.lock(&session.id).unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::Conflict);
//! assert!(e.to_string().contains("in use by another process"), "{e}");
//! assert_eq!(store.remove(&session.id).unwrap_err().kind(), ErrorKind::Conflict);
//!
//! drop(lock);
//! store.remove(&session.id)?; // free again
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::digest::Checksum;
use crate::fsutil;
use crate::model::extent::{Extent, ExtentList};
use crate::{Error, Result};

/// The schema version this module writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The permissions of session files (unix).
const FILE_MODE: u32 = 0o600;

/// The suffix of session files.
const SUFFIX: &str = ".json";

/// The suffix of session lock files.
const LOCK_SUFFIX: &str = ".lock";

/// How many times [`CheckpointStore::lock`] opens the lock file again when
/// the one it locked was removed meanwhile (by a holder letting go).
const LOCK_ATTEMPTS: u32 = 8;

/// How an error message names a session file.
fn file_object(path: &Path) -> String {
    format!("checkpoint file '{}'", path.display())
}

/// At most the first 64 characters of `s`, escaped and quoted, for messages
/// about untrusted text.
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("{out:?}")
}

// ---------------------------------------------------------------------------
// Session ids

/// The id of a [`TransferSession`], safe to use as a file name.
///
/// An id is 1 to [`SessionId::MAX_LEN`] ASCII letters, digits, `-`, `_` and
/// `.`, not starting with `.`; so it cannot name another directory (`..`,
/// `a/b`) or a hidden or temporary file. Ids are case-sensitive, but on
/// case-insensitive file systems `A` and `a` name the same file: use one
/// case. [`SessionId::generate`] makes ids like
/// `20250102T030405Z-9f86d081884c7d65` (UTC creation time and 64 random
/// bits), which sort by creation time.
///
/// Serialized as a string; deserializing checks the rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// The longest id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// `id` as a session id, or [`Error::InvalidInput`] if it breaks the
    /// rules above.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_id(&id).map_err(|why| {
            Error::invalid_input(format!("checkpoint session id {} {why}", quoted(&id)))
        })?;
        Ok(SessionId(id))
    }

    /// A fresh id: the current UTC time and 64 random bits, e.g.
    /// `20250102T030405Z-9f86d081884c7d65`.
    pub fn generate() -> Self {
        let now = Utc::now().format("%Y%m%dT%H%M%SZ");
        SessionId(format!("{now}-{:016x}", rand::random::<u64>()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `id` is not a valid session id.
fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("is empty".to_owned());
    }
    if id.len() > SessionId::MAX_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {}",
            id.len(),
            SessionId::MAX_LEN
        ));
    }
    if id.starts_with('.') {
        return Err("starts with '.'".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    Ok(())
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for SessionId {
    type Err = Error;

    /// See [`SessionId::new`].
    fn from_str(s: &str) -> Result<Self> {
        SessionId::new(s)
    }
}

impl TryFrom<String> for SessionId {
    type Error = Error;

    /// See [`SessionId::new`].
    fn try_from(s: String) -> Result<Self> {
        SessionId::new(s)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = Error;

    /// See [`SessionId::new`].
    fn try_from(s: &str) -> Result<Self> {
        SessionId::new(s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> Self {
        id.0
    }
}

impl PartialEq<str> for SessionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SessionId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

// ---------------------------------------------------------------------------
// Sessions and items

/// Where one item of a session stands.
///
/// Serialized in `snake_case` (`"in_progress"`). The state is what the
/// transfer said last; [`TransferItem::is_complete`] is what its completed
/// bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ItemState {
    /// Nothing done yet.
    #[default]
    Pending,
    /// Some bytes done.
    InProgress,
    /// Every byte done.
    Done,
    /// The last attempt failed; see [`TransferItem::error`]. Completed bytes
    /// stay valid, so a retry resumes.
    Failed,
}

impl ItemState {
    /// The state's name as serialized, e.g. `"in_progress"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::InProgress => "in_progress",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
        }
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of a session: a file or a disk of `size` bytes.
///
/// `completed` holds the byte ranges already transferred, within
/// `[0, size)`; [`TransferItem::mark_done`] keeps it squashed (the fewest
/// extents), so it stays small however the transfer is chunked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransferItem {
    /// The item's name, unique within its session (a file name in an OVA, a
    /// disk path).
    pub name: String,
    /// The item's size in bytes.
    pub size: u64,
    /// The byte ranges done.
    #[serde(default)]
    pub completed: ExtentList,
    /// The item's checksum, when known (expected or computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// Where the item stands.
    #[serde(default)]
    pub state: ItemState,
    /// Why the last attempt failed, for [`ItemState::Failed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TransferItem {
    /// A pending item of `size` bytes with nothing done.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        TransferItem {
            name: name.into(),
            size,
            completed: ExtentList::new(),
            checksum: None,
            state: ItemState::Pending,
            error: None,
        }
    }

    /// Sets the checksum.
    #[must_use]
    pub fn with_checksum(mut self, checksum: Checksum) -> Self {
        self.checksum = Some(checksum);
        self
    }

    /// Records the bytes of `extent` as done.
    ///
    /// The part of `extent` at or beyond [`size`](Self::size) is ignored;
    /// bytes done before are merged. The state becomes
    /// [`ItemState::Done`] when every byte is done (and the error is
    /// cleared), [`ItemState::InProgress`] otherwise.
    pub fn mark_done(&mut self, extent: Extent) {
        let add = ExtentList::from_unsorted([extent]).clamp(self.size);
        self.completed = self.completed.merge(&add);
        self.update_state();
    }

    /// Records every byte as done; the state becomes [`ItemState::Done`].
    pub fn mark_all_done(&mut self) {
        self.completed = ExtentList::full(self.size);
        self.update_state();
    }

    /// Marks the item failed with `message`, keeping the bytes done.
    pub fn mark_failed(&mut self, message: impl Into<String>) {
        self.state = ItemState::Failed;
        self.error = Some(message.into());
    }

    fn update_state(&mut self) {
        if self.is_complete() {
            self.state = ItemState::Done;
            self.error = None;
        } else {
            self.state = ItemState::InProgress;
        }
    }

    /// The byte ranges still to do, squashed.
    pub fn remaining(&self) -> ExtentList {
        self.completed.complement(Extent::new(0, self.size))
    }

    /// The number of bytes done (within the size).
    pub fn bytes_done(&self) -> u64 {
        self.completed.clamp(self.size).total_bytes()
    }

    /// Whether every byte is done (always for an empty item).
    pub fn is_complete(&self) -> bool {
        self.completed.covers(Extent::new(0, self.size))
    }
}

/// A resumable transfer: what it copies from where to where, and how far
/// each item got. Stored by a [`CheckpointStore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransferSession {
    /// Always [`SCHEMA_VERSION`]: files of other versions are not loaded.
    schema_version: u32,
    /// The session's id, which names its file.
    pub id: SessionId,
    /// What kind of transfer this is, e.g. `ova-upload` or `ovm-backup`;
    /// free-form, for the application that resumes it.
    pub kind: String,
    /// When the session was created (UTC, RFC 3339 in JSON).
    pub created_at: DateTime<Utc>,
    /// When the session was last saved; [`CheckpointStore::save`] sets it.
    pub updated_at: DateTime<Utc>,
    /// Where the data comes from (a path or a URL without credentials).
    pub source: String,
    /// Where the data goes (a path or a URL without credentials).
    pub target: String,
    /// The items, in transfer order; names are unique.
    #[serde(default)]
    pub items: Vec<TransferItem>,
    /// Anything else the application needs to resume (options, ids and
    /// tokens of the target), by name. Session files are mode 0600 in a
    /// 0700 directory; never put a password here. A short-lived session
    /// token may go here when resuming needs it (as `ova-upload` keeps a
    /// vSphere session cookie, like govc's persisted sessions): remove it
    /// once the transfer is done.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl TransferSession {
    /// A new session of `kind` with a [generated](SessionId::generate) id,
    /// no items and no metadata, created and updated now.
    pub fn new(
        kind: impl Into<String>,
        source: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        let now = Utc::now();
        TransferSession {
            schema_version: SCHEMA_VERSION,
            id: SessionId::generate(),
            kind: kind.into(),
            created_at: now,
            updated_at: now,
            source: source.into(),
            target: target.into(),
            items: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Uses `id` instead of a generated id.
    #[must_use]
    pub fn with_id(mut self, id: SessionId) -> Self {
        self.id = id;
        self
    }

    /// Sets metadata `key` to `value`.
    #[must_use]
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The schema version of the session: [`SCHEMA_VERSION`].
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Appends `item` and returns it, or [`Error::AlreadyExists`] if an item
    /// of that name exists already (the session is then unchanged).
    pub fn add_item(&mut self, item: TransferItem) -> Result<&mut TransferItem> {
        if self.item(&item.name).is_some() {
            return Err(Error::already_exists(format!(
                "item {} of checkpoint session '{}'",
                quoted(&item.name),
                self.id
            )));
        }
        let index = self.items.len();
        self.items.push(item);
        Ok(&mut self.items[index])
    }

    /// The item named `name`.
    pub fn item(&self, name: &str) -> Option<&TransferItem> {
        self.items.iter().find(|i| i.name == name)
    }

    /// The item named `name`, to record progress on.
    pub fn item_mut(&mut self, name: &str) -> Option<&mut TransferItem> {
        self.items.iter_mut().find(|i| i.name == name)
    }

    /// The sum of the items' sizes in bytes.
    pub fn bytes_total(&self) -> u64 {
        self.items
            .iter()
            .fold(0u64, |acc, i| acc.saturating_add(i.size))
    }

    /// The sum of the items' bytes done.
    pub fn bytes_done(&self) -> u64 {
        self.items
            .iter()
            .fold(0u64, |acc, i| acc.saturating_add(i.bytes_done()))
    }

    /// Whether every item is complete (true for a session without items).
    pub fn is_complete(&self) -> bool {
        self.items.iter().all(TransferItem::is_complete)
    }

    /// Checks what serde cannot: unique item names, completed bytes within
    /// the sizes.
    fn check(&self) -> std::result::Result<(), String> {
        let mut names = HashSet::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            if !names.insert(item.name.as_str()) {
                return Err(format!(
                    "item {i} repeats the name {} of an earlier item",
                    quoted(&item.name)
                ));
            }
            if let Some(bounds) = item.completed.bounds()
                && bounds.end() > item.size
            {
                return Err(format!(
                    "item {i} ({}) has completed bytes up to {}, beyond its size {}",
                    quoted(&item.name),
                    bounds.end(),
                    item.size
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// The session as file contents.
fn encode(session: &TransferSession) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(session).map_err(|e| Error::Other {
        message: format!("cannot serialize checkpoint session '{}'", session.id),
        source: Some(Box::new(e)),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The `schema_version` member of a JSON object, read without building the
/// rest of the document.
struct VersionProbe(Option<serde_json::Value>);

impl<'de> Deserialize<'de> for VersionProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ProbeVisitor;

        impl<'de> Visitor<'de> for ProbeVisitor {
            type Value = VersionProbe;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<VersionProbe, A::Error> {
                let mut version = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "schema_version" && version.is_none() {
                        version = Some(map.next_value::<serde_json::Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(VersionProbe(version))
            }
        }

        deserializer.deserialize_map(ProbeVisitor)
    }
}

/// Parses the contents of the file `path`, which should hold session `id`.
///
/// The schema version is read first, so a file of another version is
/// reported as such whatever its other fields look like.
fn decode(bytes: &[u8], path: &Path, id: &SessionId) -> Result<TransferSession> {
    let object = || file_object(path);
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid_data_with(object(), format!("not a checkpoint session: {e}"), e)
    })?;
    let Some(found) = probe.0 else {
        return Err(Error::invalid_data(
            object(),
            "not a checkpoint session: no schema_version",
        ));
    };
    match found.as_u64() {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(_) => {
            return Err(Error::UnsupportedVersion {
                object: object(),
                found: found.to_string(),
                supported: SCHEMA_VERSION.to_string(),
            });
        }
        None => {
            return Err(Error::invalid_data(
                object(),
                format!("schema_version {found} is not a version number"),
            ));
        }
    }
    let session: TransferSession = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid_data_with(object(), format!("not a valid checkpoint session: {e}"), e)
    })?;
    if session.id != *id {
        return Err(Error::invalid_data(
            object(),
            format!(
                "it holds session '{}', not '{id}' as its name says",
                session.id
            ),
        ));
    }
    session
        .check()
        .map_err(|why| Error::invalid_data(object(), why))?;
    Ok(session)
}

// ---------------------------------------------------------------------------
// The store

/// One file found by [`CheckpointStore::list`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ListedSession {
    /// The session id, from the file name.
    pub id: SessionId,
    /// The file.
    pub path: PathBuf,
    /// The session, or why the file cannot be loaded (the error names the
    /// file): what [`CheckpointStore::load`] would return.
    pub session: Result<TransferSession>,
}

/// What [`CheckpointStore::clean_older_than`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct CleanReport {
    /// The sessions removed, in id order.
    pub removed: Vec<SessionId>,
    /// The session files left in place because they cannot be loaded
    /// (damaged, another schema version, unreadable) or removed, with the
    /// error, in id order.
    pub skipped: Vec<(SessionId, Error)>,
}

/// A directory of [`TransferSession`]s, one file `<id>.json` per session.
///
/// See the [module documentation](self) for the file format, the handling
/// of damaged files, and concurrency. Every method does blocking I/O.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// A store in `dir`, created with its missing parents (mode `0700` on
    /// unix) if it does not exist. An existing directory is used as it is.
    ///
    /// Fails if `dir` cannot be created or is not a directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fsutil::create_private_dir(&dir)?;
        Ok(CheckpointStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of session `id`, `<dir>/<id>.json`, or
    /// [`Error::InvalidInput`] if `id` is not a valid [`SessionId`].
    pub fn path_for(&self, id: impl AsRef<str>) -> Result<PathBuf> {
        let id = SessionId::new(id.as_ref())?;
        Ok(self.file(&id))
    }

    fn file(&self, id: &SessionId) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// Writes `session` to its file, atomically and with mode `0600`,
    /// after setting [`updated_at`](TransferSession::updated_at) to now.
    ///
    /// Refuses, leaving the file as it is, when the file exists and:
    /// * cannot be loaded (damaged, another schema version, unreadable):
    ///   the error [`load`](Self::load) would return, naming the file;
    /// * holds another session with the same id (another
    ///   [`created_at`](TransferSession::created_at) or
    ///   [`kind`](TransferSession::kind)): [`Error::Conflict`]. Load that
    ///   session to resume it, or remove it to start over.
    ///
    /// Fails with [`Error::InvalidInput`] if two items have the same name or
    /// an item has completed bytes beyond its size. On any error
    /// `updated_at` is left as it was.
    pub fn save(&self, session: &mut TransferSession) -> Result<()> {
        session.check().map_err(|why| {
            Error::invalid_input(format!("checkpoint session '{}': {why}", session.id))
        })?;
        let path = self.file(&session.id);
        match fs::read(&path) {
            Ok(bytes) => {
                let existing = decode(&bytes, &path, &session.id)?;
                if existing.created_at != session.created_at || existing.kind != session.kind {
                    return Err(Error::Conflict {
                        object: file_object(&path),
                        message: format!(
                            "it holds another session '{}' ({}, created {}); \
                             load it to resume it or remove it first",
                            existing.id,
                            existing.kind,
                            existing.created_at.to_rfc3339()
                        ),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(file_object(&path), e)),
        }

        let previous = session.updated_at;
        session.schema_version = SCHEMA_VERSION;
        session.updated_at = Utc::now();
        let written =
            encode(session).and_then(|bytes| fsutil::write_atomic(&path, &bytes, Some(FILE_MODE)));
        if written.is_err() {
            session.updated_at = previous;
        }
        written
    }

    /// Reads session `id`.
    ///
    /// Fails with [`Error::InvalidInput`] for an invalid id,
    /// [`Error::NotFound`] if there is no such file,
    /// [`Error::UnsupportedVersion`] if the file has another schema version,
    /// and [`Error::InvalidData`] (with the parser's error as source) if it
    /// is not a valid session or holds another id; each error names the
    /// file.
    pub fn load(&self, id: impl AsRef<str>) -> Result<TransferSession> {
        let id = SessionId::new(id.as_ref())?;
        let path = self.file(&id);
        let bytes = fs::read(&path).map_err(|e| Error::io(file_object(&path), e))?;
        decode(&bytes, &path, &id)
    }

    /// Every session file of the directory, in id order, each with its
    /// session or the error [`load`](Self::load) gives for it.
    ///
    /// A damaged file neither disappears from the listing nor fails it: it
    /// is an entry whose [`session`](ListedSession::session) is an error.
    /// Names that are not `<valid id>.json` are not session files and are
    /// skipped: temporary files of a save in progress (`.<id>.json.*.tmp`),
    /// other files and directories. A file removed while the listing runs is
    /// left out. Fails only if the directory cannot be read.
    pub fn list(&self) -> Result<Vec<ListedSession>> {
        let dir_error =
            |e: io::Error| Error::io(format!("checkpoint directory '{}'", self.dir.display()), e);
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(dir_error)? {
            let entry = entry.map_err(dir_error)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|stem| SessionId::new(stem).ok())
            else {
                continue;
            };
            let path = entry.path();
            let session = match fs::read(&path) {
                Ok(bytes) => decode(&bytes, &path, &id),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => Err(Error::io(file_object(&path), e)),
            };
            out.push(ListedSession { id, path, session });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes the file of session `id`, without reading it, so it also
    /// removes damaged files. It takes the session's lock for that (and
    /// removes the lock file with it on unix): a session in use is left
    /// alone. The holder of a [`SessionLock`] removes its session with
    /// [`SessionLock::remove_session`].
    ///
    /// Fails with [`Error::NotFound`] naming the file if there is none: a
    /// mistyped id is reported rather than ignored (callers that want an
    /// idempotent removal ignore errors with [`Error::is_not_found`]), with
    /// [`Error::Conflict`] when the session is in use ([`lock`](Self::lock)
    /// fails), and with [`Error::InvalidInput`] for an invalid id.
    pub fn remove(&self, id: impl AsRef<str>) -> Result<()> {
        self.lock(id)?.remove_session()
    }

    /// Takes the exclusive lock of session `id` (the session file need not
    /// exist yet): held until the returned [`SessionLock`] is dropped or
    /// this process ends. See the [module
    /// documentation](self#blocking-and-concurrency).
    ///
    /// Fails at once, without waiting, with [`Error::Conflict`] naming the
    /// session when another process (or another [`SessionLock`] of this
    /// one) holds it: "in use by another process", with that process's id
    /// when known. Fails with [`Error::InvalidInput`] for an invalid id,
    /// and with an I/O error when the lock file cannot be created or
    /// locked.
    pub fn lock(&self, id: impl AsRef<str>) -> Result<SessionLock> {
        let id = SessionId::new(id.as_ref())?;
        let path = self.lock_file(&id);
        let object = || format!("checkpoint lock file '{}'", path.display());
        for _ in 0..LOCK_ATTEMPTS {
            let mut file = open_lock_file(&path).map_err(|e| Error::io(object(), e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(in_use(&id, &path, holder_pid(&mut file)));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(object(), e)),
            }
            // A holder that let go between our open and our lock removed
            // the file we locked (and someone may have made a new one):
            // only the file at `path` counts.
            if !is_file_at(&file, &path) {
                continue;
            }
            // Who holds it, for the message of the next one to try.
            let _ = write_pid(&mut file);
            return Ok(SessionLock {
                store: self.clone(),
                id,
                path,
                file: Some(file),
            });
        }
        Err(Error::Conflict {
            object: format!("checkpoint session '{id}'"),
            message: format!(
                "its lock file '{}' keeps being removed and made again: another process is \
                 using the session",
                path.display()
            ),
        })
    }

    fn lock_file(&self, id: &SessionId) -> PathBuf {
        self.dir.join(format!("{id}{LOCK_SUFFIX}"))
    }

    /// Removes the sessions last saved more than `age` ago
    /// ([`updated_at`](TransferSession::updated_at) before now − `age`).
    ///
    /// Files that cannot be loaded are left in place and reported in
    /// [`CleanReport::skipped`], as are files whose removal fails and
    /// sessions in use (whose [`lock`](Self::lock) is held: an
    /// [`Error::Conflict`]); remove them with [`remove`](Self::remove).
    /// Each session is removed under its lock, so a transfer that holds its
    /// session's lock keeps it whatever its age. Fails only if the
    /// directory cannot be read.
    pub fn clean_older_than(&self, age: Duration) -> Result<CleanReport> {
        // An age beyond chrono's range means nothing is old enough.
        let cutoff = TimeDelta::from_std(age)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age));
        let mut report = CleanReport::default();
        for entry in self.list()? {
            match entry.session {
                Ok(session) if cutoff.is_some_and(|c| session.updated_at < c) => {
                    let lock = match self.lock(&entry.id) {
                        Ok(l) => l,
                        Err(e) => {
                            report.skipped.push((entry.id, e));
                            continue;
                        }
                    };
                    match fs::remove_file(&entry.path) {
                        Ok(()) => report.removed.push(entry.id),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => report
                            .skipped
                            .push((entry.id, Error::io(file_object(&entry.path), e))),
                    }
                    drop(lock);
                }
                Ok(_) => {}
                Err(e) => report.skipped.push((entry.id, e)),
            }
        }
        if !report.removed.is_empty() {
            self.sync_dir();
        }
        Ok(report)
    }

    /// Makes removals durable, best effort: the files are gone either way.
    fn sync_dir(&self) {
        #[cfg(unix)]
        if let Err(e) = fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(
                error = %e,
                dir = %self.dir.display(),
                "cannot sync the checkpoint directory"
            );
        }
    }
}

/// The exclusive lock of one session, from [`CheckpointStore::lock`]: held
/// until dropped (or the process ends). See the [module
/// documentation](self#blocking-and-concurrency).
#[derive(Debug)]
pub struct SessionLock {
    store: CheckpointStore,
    id: SessionId,
    path: PathBuf,
    /// The locked lock file; `None` once released.
    file: Option<fs::File>,
}

impl SessionLock {
    /// The session this lock is for.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The lock file, `<dir>/<id>.lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the session's file (without reading it), then lets go of the
    /// lock: what [`CheckpointStore::remove`] does for a session nobody
    /// holds, for the holder of its lock.
    ///
    /// Fails with [`Error::NotFound`] naming the file if there is none; the
    /// lock is released either way.
    pub fn remove_session(self) -> Result<()> {
        let path = self.store.file(&self.id);
        fs::remove_file(&path).map_err(|e| Error::io(file_object(&path), e))?;
        self.store.sync_dir();
        Ok(())
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        // Unix: the lock file goes while it is still locked, so whoever
        // opened it meanwhile sees it gone once they get the lock, and opens
        // the path again (see `lock`). Elsewhere the file cannot be checked
        // that way: it stays.
        #[cfg(unix)]
        if is_file_at(&file, &self.path)
            && let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(error = %e, path = %self.path.display(), "cannot remove the session lock file");
        }
        // Closing the file releases the lock.
        drop(file);
    }
}

/// Opens (creating it, mode 0600 on unix) the lock file at `path`.
fn open_lock_file(path: &Path) -> io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(path)
}

/// Whether `file` is the file at `path` now (unix: same device and inode;
/// elsewhere assumed).
fn is_file_at(file: &fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// Writes this process's id into the (locked) lock file.
fn write_pid(file: &mut fs::File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(std::process::id().to_string().as_bytes())
}

/// The pid the holder wrote into the lock file, if readable.
fn holder_pid(file: &mut fs::File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The error of a session whose lock is held.
fn in_use(id: &SessionId, path: &Path, pid: Option<u32>) -> Error {
    let by = match pid {
        Some(p) if p == std::process::id() => format!(" (pid {p}: this one, through another lock)"),
        Some(p) => format!(" (pid {p})"),
        None => String::new(),
    };
    Error::Conflict {
        object: format!("checkpoint session '{id}'"),
        message: format!(
            "it is in use by another process{by}, which holds its lock '{}'; wait for it to \
             end or stop it",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::digest::Algorithm;

    fn store() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().join("cp")).unwrap();
        (dir, store)
    }

    fn session() -> TransferSession {
        let mut s = TransferSession::new("ova-upload", "/exports/web01.ova", "https://esx/f")
            .with_metadata("chunk_size", 1 << 20);
        s.add_item(
            TransferItem::new("disk1.vmdk", 1000)
                .with_checksum(Checksum::compute(Algorithm::Sha256, b"x")),
        )
        .unwrap();
        s.add_item(TransferItem::new("web01.ovf", 10)).unwrap();
        s
    }

    /// Writes `session` as is, without the checks and updates of `save`.
    fn write_raw(store: &CheckpointStore, session: &TransferSession) {
        let path = store.path_for(&session.id).unwrap();
        fs::write(path, encode(session).unwrap()).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn session_ids() {
        for ok in [
            "a",
            "A-b_c.1",
            "x.json",
            "a..b",
            &"z".repeat(SessionId::MAX_LEN),
        ] {
            assert_eq!(SessionId::new(ok).unwrap(), ok);
        }
        let long = "z".repeat(SessionId::MAX_LEN + 1);
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            ".hidden",
            "a b",
            "é",
            "a\0b",
            "a\nb",
            "C:x",
            &long,
        ] {
            let err = SessionId::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let err = SessionId::new("x".repeat(10_000) + "/").unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");

        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        SessionId::new(a.as_str()).unwrap();
        assert_eq!(a.as_str().len(), "20250102T030405Z-9f86d081884c7d65".len());
        assert_eq!("abc".parse::<SessionId>().unwrap(), "abc");
        assert!(serde_json::from_str::<SessionId>(r#""../x""#).is_err());
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
    }

    #[test]
    fn hostile_ids_touch_no_file() {
        let (tmp, store) = store();
        fs::write(tmp.path().join("x.json"), b"outside").unwrap();
        for bad in ["../x", "../cp/../x", "..", "", "a/b"] {
            assert_eq!(store.load(bad).unwrap_err().kind(), ErrorKind::InvalidInput);
            assert_eq!(
                store.remove(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            assert_eq!(
                store.path_for(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
        }
        assert_eq!(fs::read(tmp.path().join("x.json")).unwrap(), b"outside");
        // A file whose id field is hostile does not load either.
        let mut s = session();
        s.id = SessionId::new("good").unwrap();
        let json = String::from_utf8(encode(&s).unwrap())
            .unwrap()
            .replace("\"good\"", "\"../x\"");
        fs::write(store.path_for("good").unwrap(), json).unwrap();
        let err = store.load("good").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn round_trip() {
        let (_tmp, store) = store();
        let mut s = session();
        s.item_mut("disk1.vmdk")
            .unwrap()
            .mark_done(Extent::new(100, 200));
        s.item_mut("web01.ovf")
            .unwrap()
            .mark_failed("connection reset");
        let before = s.updated_at;
        store.save(&mut s).unwrap();
        assert!(s.updated_at >= before);
        let loaded = store.load(&s.id).unwrap();
        assert_eq!(loaded, s);
        assert_eq!(loaded.schema_version(), SCHEMA_VERSION);
        // Saving again replaces the file.
        s.item_mut("web01.ovf").unwrap().mark_all_done();
        store.save(&mut s).unwrap();
        assert_eq!(store.load(s.id.as_str()).unwrap(), s);
        assert_eq!(names(store.dir()), [format!("{}.json", s.id)]);
    }

    #[test]
    fn stable_json_names() {
        let mut s = session().with_id(SessionId::new("fixed").unwrap());
        s.item_mut("disk1.vmdk")
            .unwrap()
            .mark_done(Extent::new(0, 10));
        s.item_mut("web01.ovf").unwrap().mark_failed("boom");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["id"], "fixed");
        assert_eq!(v["kind"], "ova-upload");
        assert_eq!(v["metadata"]["chunk_size"], 1 << 20);
        let disk = &v["items"][0];
        assert_eq!(disk["state"], "in_progress");
        assert_eq!(
            disk["completed"],
            serde_json::json!([{"offset": 0, "length": 10}])
        );
        assert!(disk["checksum"].as_str().unwrap().starts_with("sha256:"));
        assert!(disk.get("error").is_none());
        assert_eq!(v["items"][1]["state"], "failed");
        assert_eq!(v["items"][1]["error"], "boom");
        assert!(v["items"][1].get("checksum").is_none());
        let text = String::from_utf8(encode(&s).unwrap()).unwrap();
        assert!(text.starts_with("{\n  \"schema_version\": 1,"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn modes() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, store) = store();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        let mut s = session();
        store.save(&mut s).unwrap();
        let path = store.path_for(&s.id).unwrap();
        assert_eq!(mode(&path), 0o600);
        // Replacing a file that was made readable keeps it private.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        store.save(&mut s).unwrap();
        assert_eq!(mode(&path), 0o600);
        // An existing directory is used as it is.
        let again = CheckpointStore::open(store.dir()).unwrap();
        assert_eq!(again.load(&s.id).unwrap(), s);
    }

    #[test]
    fn open_rejects_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(CheckpointStore::open(&f).is_err());
    }

    #[test]
    fn missing_session() {
        let (_tmp, store) = store();
        let err = store.load("nope").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("nope.json"), "{err}");
        let err = store.remove("nope").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("nope.json"), "{err}");
    }

    #[test]
    fn corrupt_file_is_reported_and_kept() {
        let (_tmp, store) = store();
        let mut s = session().with_id(SessionId::new("broken").unwrap());
        let path = store.path_for("broken").unwrap();
        let cases: [&[u8]; 7] = [
            b"",
            b"{\"schema_version\": 1, \"id\": \"broken\", \"kin",
            b"[1, 2]",
            b"{\"id\": \"broken\"}",
            b"{\"schema_version\": \"1\"}",
            b"{\"schema_version\": 1, \"id\": \"broken\"}",
            b"\xff\xfe garbage",
        ];
        for bytes in cases {
            fs::write(&path, bytes).unwrap();
            let err = store.load("broken").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("broken.json"), "{err}");
            let before = s.updated_at;
            let err = store.save(&mut s).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("broken.json"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
            assert_eq!(s.updated_at, before);
        }
        // A parse error keeps the parser's error as source.
        fs::write(&path, b"{\"schema_version\": 1, \"id\": 5}").unwrap();
        let err = store.load("broken").unwrap_err();
        assert!(std::error::Error::source(&err).is_some());
        // Removing is the way out.
        store.remove("broken").unwrap();
        store.save(&mut s).unwrap();
        assert_eq!(store.load("broken").unwrap(), s);
    }

    #[test]
    fn unknown_schema_version() {
        let (_tmp, store) = store();
        let path = store.path_for("future").unwrap();
        // Other fields entirely: the version is what gets reported.
        let future = br#"{"schema_version": 2, "sessions": {"future": [1, 2, 3]}}"#;
        fs::write(&path, future).unwrap();
        let err = store.load("future").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("future.json") && msg.contains('2'), "{msg}");
        let mut s = session().with_id(SessionId::new("future").unwrap());
        let err = store.save(&mut s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
        assert_eq!(fs::read(&path).unwrap(), future);
        // Version 0 and a huge version too.
        for v in ["0", "18446744073709551615"] {
            fs::write(&path, format!(r#"{{"schema_version": {v}}}"#)).unwrap();
            let err = store.load("future").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsupportedVersion, "{err}");
        }
        fs::write(&path, br#"{"schema_version": 1.5}"#).unwrap();
        assert_eq!(
            store.load("future").unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn inconsistent_sessions() {
        let (_tmp, store) = store();
        // A file named after another session.
        let mut s = session().with_id(SessionId::new("a").unwrap());
        store.save(&mut s).unwrap();
        fs::copy(store.path_for("a").unwrap(), store.path_for("b").unwrap()).unwrap();
        let err = store.load("b").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("b.json"), "{err}");

        // Duplicate names and bytes beyond the size: refused by save,
        // reported by load.
        let mut dup = session().with_id(SessionId::new("dup").unwrap());
        dup.items.push(TransferItem::new("web01.ovf", 3));
        assert_eq!(
            store.save(&mut dup).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(!store.path_for("dup").unwrap().exists());
        write_raw(&store, &dup);
        let err = store.load("dup").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("web01.ovf"), "{err}");

        let mut over = session().with_id(SessionId::new("over").unwrap());
        over.items[1].completed = ExtentList::full(11);
        assert_eq!(
            store.save(&mut over).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        write_raw(&store, &over);
        assert_eq!(
            store.load("over").unwrap_err().kind(),
            ErrorKind::InvalidData
        );

        // add_item refuses a duplicate.
        let mut s = session();
        let err = s.add_item(TransferItem::new("disk1.vmdk", 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(s.items.len(), 2);
    }

    #[test]
    fn save_does_not_clobber_another_session() {
        let (_tmp, store) = store();
        let id = SessionId::new("web01").unwrap();
        let mut first = session().with_id(id.clone());
        store.save(&mut first).unwrap();
        let mut second = TransferSession::new("ova-upload", "/other.ova", "x").with_id(id.clone());
        let err = store.save(&mut second).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("web01.json"), "{err}");
        assert_eq!(store.load(&id).unwrap(), first);
        // The loaded session itself saves fine.
        let mut resumed = store.load(&id).unwrap();
        resumed.item_mut("web01.ovf").unwrap().mark_all_done();
        store.save(&mut resumed).unwrap();
        store.remove(&id).unwrap();
        store.save(&mut second).unwrap();
        assert_eq!(store.load(&id).unwrap(), second);
    }

    #[test]
    fn list_shows_damaged_files_and_skips_others() {
        let (_tmp, store) = store();
        let dir = store.dir().to_path_buf();
        assert!(store.list().unwrap().is_empty());
        let mut b = session().with_id(SessionId::new("b").unwrap());
        let mut d = session().with_id(SessionId::new("d").unwrap());
        store.save(&mut d).unwrap();
        store.save(&mut b).unwrap();
        fs::write(dir.join("a.json"), b"{not json").unwrap();
        fs::write(dir.join("c.json"), br#"{"schema_version": 9}"#).unwrap();
        // Not session files.
        fs::write(dir.join(".b.json.123.0.tmp"), b"{").unwrap();
        fs::write(dir.join("notes.txt"), b"hello").unwrap();
        fs::write(dir.join("bad id.json"), b"{").unwrap();
        fs::write(dir.join(".json"), b"{").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();

        let listed = store.list().unwrap();
        let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(
            listed[0].session.as_ref().unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        assert!(
            listed[0]
                .session
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("a.json")
        );
        assert_eq!(listed[1].session.as_ref().unwrap(), &b);
        assert_eq!(
            listed[2].session.as_ref().unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(listed[3].session.as_ref().unwrap(), &d);
        assert_eq!(listed[3].path, dir.join("d.json"));
    }

    #[test]
    fn remove_works_on_any_session_file() {
        let (_tmp, store) = store();
        let mut s = session();
        store.save(&mut s).unwrap();
        store.remove(&s.id).unwrap();
        assert!(store.load(&s.id).unwrap_err().is_not_found());
        assert!(store.remove(&s.id).unwrap_err().is_not_found());
        fs::write(store.path_for("junk").unwrap(), b"\0\0").unwrap();
        store.remove("junk").unwrap();
        assert!(names(store.dir()).is_empty());
    }

    #[test]
    fn clean_older_than() {
        let (_tmp, store) = store();
        let day = TimeDelta::days(1);
        let now = Utc::now();
        let mut old = session().with_id(SessionId::new("old").unwrap());
        old.created_at = now - day * 10;
        old.updated_at = now - day * 3;
        write_raw(&store, &old);
        let mut fresh = session().with_id(SessionId::new("fresh").unwrap());
        fresh.created_at = now - day * 10;
        store.save(&mut fresh).unwrap();
        let mut future = session().with_id(SessionId::new("skewed").unwrap());
        future.updated_at = now + day;
        write_raw(&store, &future);
        let corrupt = store.path_for("corrupt").unwrap();
        fs::write(&corrupt, b"{").unwrap();

        // Nothing is older than forever.
        let report = store.clean_older_than(Duration::MAX).unwrap();
        assert!(report.removed.is_empty());
        assert_eq!(report.skipped.len(), 1);

        let report = store.clean_older_than(Duration::from_secs(86_400)).unwrap();
        assert_eq!(report.removed, [SessionId::new("old").unwrap()]);
        assert_eq!(report.skipped.len(), 1);
        let (id, err) = &report.skipped[0];
        assert_eq!(id, "corrupt");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt.json"), "{err}");
        assert_eq!(fs::read(&corrupt).unwrap(), b"{");
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.id.into())
            .collect();
        assert_eq!(ids, ["corrupt", "fresh", "skewed"]);

        // Age zero: everything saved before now goes, but not the future.
        let report = store.clean_older_than(Duration::ZERO).unwrap();
        assert_eq!(report.removed, [SessionId::new("fresh").unwrap()]);
        assert!(store.load("skewed").is_ok());
    }

    #[test]
    fn a_session_lock_is_exclusive_until_dropped() {
        let (_tmp, store) = store();
        let a = SessionId::new("a").unwrap();
        let lock = store.lock(&a).unwrap();
        assert_eq!(lock.id(), &a);
        assert_eq!(lock.path(), store.dir().join("a.lock"));
        // A second lock of the same session: refused at once, naming it.
        let e = store.lock(&a).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let m = e.to_string();
        assert!(m.contains("session 'a'"), "{m}");
        assert!(m.contains("in use by another process"), "{m}");
        assert!(m.contains(&format!("pid {}", std::process::id())), "{m}");
        // Other sessions are independent.
        let b = store.lock("b").unwrap();
        assert_eq!(store.lock("b").unwrap_err().kind(), ErrorKind::Conflict);
        // Lock files are not sessions.
        assert!(store.list().unwrap().is_empty());
        drop(lock);
        let again = store.lock(&a).unwrap();
        assert_eq!(store.lock(&a).unwrap_err().kind(), ErrorKind::Conflict);
        drop(again);
        drop(b);
        #[cfg(unix)]
        assert!(names(store.dir()).is_empty(), "{:?}", names(store.dir()));
        assert_eq!(
            store.lock("../x").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_locked_session_is_neither_removed_nor_cleaned() {
        let (_tmp, store) = store();
        let mut s = session();
        store.save(&mut s).unwrap();
        let lock = store.lock(&s.id).unwrap();
        let e = store.remove(&s.id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let report = store.clean_older_than(Duration::ZERO).unwrap();
        assert!(report.removed.is_empty());
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].0, s.id);
        assert_eq!(report.skipped[0].1.kind(), ErrorKind::Conflict);
        assert_eq!(store.load(&s.id).unwrap(), s);
        // Its holder removes it; the lock file goes with the lock.
        lock.remove_session().unwrap();
        assert!(store.load(&s.id).unwrap_err().is_not_found());
        #[cfg(unix)]
        assert!(names(store.dir()).is_empty(), "{:?}", names(store.dir()));

        // Unlocked sessions are cleaned and removed, stale lock files (a
        // killed holder's) with them.
        let mut t = session();
        store.save(&mut t).unwrap();
        fs::write(store.dir().join(format!("{}.lock", t.id)), b"999999").unwrap();
        let report = store.clean_older_than(Duration::ZERO).unwrap();
        assert_eq!(report.removed, [t.id.clone()]);
        let mut u = session();
        store.save(&mut u).unwrap();
        fs::write(store.dir().join(format!("{}.lock", u.id)), b"").unwrap();
        store.remove(&u.id).unwrap();
        #[cfg(unix)]
        assert!(names(store.dir()).is_empty(), "{:?}", names(store.dir()));
    }

    #[test]
    fn item_progress_math() {
        let mut item = TransferItem::new("d", 100);
        assert_eq!(item.state, ItemState::Pending);
        assert_eq!(item.remaining().as_slice(), &[Extent::new(0, 100)]);
        assert!(!item.is_complete());

        item.mark_done(Extent::new(10, 20));
        item.mark_done(Extent::new(50, 10));
        assert_eq!(item.state, ItemState::InProgress);
        assert_eq!(item.bytes_done(), 30);
        assert_eq!(
            item.remaining().as_slice(),
            &[Extent::new(0, 10), Extent::new(30, 20), Extent::new(60, 40)]
        );
        // Touching and overlapping ranges merge into the fewest extents.
        item.mark_done(Extent::new(30, 20));
        item.mark_done(Extent::new(15, 5));
        assert_eq!(item.completed.as_slice(), &[Extent::new(10, 50)]);
        // Beyond the size is ignored; empty extents change nothing.
        item.mark_done(Extent::new(90, 1000));
        item.mark_done(Extent::new(500, 10));
        item.mark_done(Extent::new(0, 0));
        item.mark_done(Extent::new(u64::MAX - 1, u64::MAX));
        assert_eq!(
            item.completed.as_slice(),
            &[Extent::new(10, 50), Extent::new(90, 10)]
        );
        assert_eq!(item.bytes_done(), 60);
        item.mark_failed("lost");
        assert_eq!(item.state, ItemState::Failed);
        assert_eq!(item.bytes_done(), 60, "failure keeps progress");
        item.mark_done(Extent::new(0, 10));
        item.mark_done(Extent::new(60, 30));
        assert!(item.is_complete());
        assert_eq!(item.state, ItemState::Done);
        assert_eq!(item.error, None);
        assert!(item.remaining().is_empty());
        assert_eq!(item.completed.as_slice(), &[Extent::new(0, 100)]);

        let mut empty = TransferItem::new("e", 0);
        assert!(empty.is_complete());
        empty.mark_done(Extent::new(0, 5));
        assert!(empty.completed.is_empty());
        assert_eq!(empty.state, ItemState::Done);

        let mut s = session();
        assert_eq!(s.bytes_total(), 1010);
        assert_eq!(s.bytes_done(), 0);
        assert!(!s.is_complete());
        s.item_mut("disk1.vmdk").unwrap().mark_all_done();
        s.item_mut("web01.ovf")
            .unwrap()
            .mark_done(Extent::new(0, 4));
        assert_eq!(s.bytes_done(), 1004);
        s.item_mut("web01.ovf")
            .unwrap()
            .mark_done(Extent::new(4, 6));
        assert!(s.is_complete());
        assert!(s.item("missing").is_none());
        assert!(TransferSession::new("k", "s", "t").is_complete());
    }
}
