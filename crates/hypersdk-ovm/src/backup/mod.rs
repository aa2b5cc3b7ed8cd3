//! Full and incremental backups of Oracle VM guests into sparse raw images,
//! on core's copy engine.
//!
//! A backup directory holds one VM's disks as raw images named after the
//! exporter's disk names (`<dir>/0004fb….img`), and a state file
//! ([`STATE_FILE_NAME`], see [`state`]) that says which snapshot they hold,
//! on which exporter, with each image's size, SHA-256 and raw chunk list.
//!
//! - [`OvmBackup::full`] takes a snapshot (or uses a given one), reads its
//!   raw chunk list and copies the allocated bytes of every disk into new
//!   sparse images: ranges in parallel over one keep-alive client, every
//!   response checked to be the range asked for, all-zero blocks left as
//!   holes, the SHA-256 of each whole image computed on the way, each image
//!   written to `<name>.part` and renamed into place once complete.
//! - [`OvmBackup::incremental`] checks that the images are the ones
//!   recorded for the previous snapshot (SHA-256 of the files as they are
//!   now, or a cheaper file fingerprint; a wrong image is refused before
//!   anything is created or written), takes a new snapshot, diffs the two
//!   raw chunk lists by physical mapping on the client
//!   ([`diff_chunks`]), copies only the changed
//!   ranges into the images, punches the freed ones (which the exporter's
//!   own `compareTo` never reports), grows images whose disk grew, records
//!   the new state, and only then deletes the previous snapshot.
//! - Both are resumable. Progress is committed to a checkpoint session in
//!   `<dir>/.ovm-backup-checkpoints/`, and the state file records the
//!   backup in progress ([`PendingBackup`]): running the same backup again
//!   continues it without fetching a committed byte again. While an image
//!   is being patched it lives at `<name>.part`, so the final name never
//!   holds a half-patched image, and a state with a pending backup is never
//!   taken as the base of another incremental. A resumed incremental checks
//!   the images it has not touched yet as a fresh one does. A disk that
//!   shrank is refused before any image is touched, and the refused
//!   incremental is undone (its snapshot deleted, the state as before).
//! - One backup at a time per directory: each takes the directory's lock
//!   (a [`SessionLock`] of the checkpoint store, released when it ends or
//!   its process dies); a second one fails at once with
//!   [`Error::Conflict`].
//! - [`OvmBackup::write_ova`] packs the images as streamOptimized VMDKs in
//!   an OVA; [`OvmBackup::write_manifest`] writes an Artifact Manifest of
//!   the raw images.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_ovm::backup::{BackupOptions, OvmBackup};
//! use hypersdk_ovm::client::OvmClient;
//!
//! let client = OvmClient::builder("https://10.0.0.5:5544")
//!     .credentials("admin", "secret")
//!     .ca_pem(std::fs::read("/etc/ovm-exporter/ca.pem").unwrap())
//!     .build()?;
//! let backup = OvmBackup::new(client, "/backups/web01")
//!     .with_options(BackupOptions::default().with_parallelism(8));
//! let full = backup.full("0004fb0000060000ccaf98a0baa2c186").await?;
//! println!("{} bytes fetched", full.bytes_fetched());
//! // ... later: only what changed since that snapshot.
//! let next = backup
//!     .incremental("0004fb0000060000ccaf98a0baa2c186", &full.snapshot_id)
//!     .await?;
//! assert!(next.previous_deleted);
//! # Ok(()) }
//! ```
//!
//! One backup runs in a directory at a time.

mod package;
mod patch;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use hypersdk_core::blocks::{
    BlockSource, Checkpointing, CopyOptions, CopyReport, DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM,
    SparseFile, copy_extents, copy_to_file,
};
use hypersdk_core::checkpoint::{CheckpointStore, SessionId, SessionLock, TransferSession};
use hypersdk_core::digest::{Algorithm, Checksum, hash_file};
use hypersdk_core::model::ExtentList;
use hypersdk_core::progress::{Outcome, Phase, Progress, ProgressEvent};
use hypersdk_core::retry::Backoff;
use hypersdk_core::{Error, Result};
use serde::Serialize;

use crate::client::{OvmClient, OvmDisk};
use crate::diff::{chunks_to_extents, diff_chunks};
use crate::types::{SnapshotQuery, VirtualMachine, VmSnapshot};

pub use package::{OvaOptions, OvaReport};
use patch::open_patch;
pub use state::{
    BackupKind, BackupState, CHECKPOINT_DIR_NAME, ChunkRecord, DiskState, FileFingerprint,
    PendingBackup, STATE_FILE_NAME,
};
use state::{check_file_name, image_object, record_chunks, state_object};

/// The checkpoint session kind of OVM backups.
const SESSION_KIND: &str = "ovm-backup";

/// How an incremental backup checks that the images are the previous
/// snapshot's before it patches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PreviousCheck {
    /// Hash every image and compare with the recorded SHA-256 (reads every
    /// image once; catches any difference).
    #[default]
    Sha256,
    /// Compare the file fingerprints (length, inode, modification and
    /// change times) recorded when the images were written; hash only the
    /// images whose fingerprint differs. Catches a file written, truncated
    /// or replaced since, without reading it.
    Fingerprint,
}

/// How a backup runs.
///
/// Disks are copied one after the other, so the data in memory stays below
/// about `chunk_size × parallelism` (32 MiB by default) whatever the disks'
/// sizes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Ranges in flight at once per disk. Default
    /// [`DEFAULT_PARALLELISM`] (4).
    pub parallelism: usize,
    /// Largest range read at once. Default [`DEFAULT_CHUNK_SIZE`] (8 MiB).
    pub chunk_size: u64,
    /// Where progress goes: one item per disk (its name), bytes counting
    /// the ranges to copy.
    pub progress: Progress,
    /// Retry policy of each range read by the copy engine (the client's
    /// own requests retry under the client's policy).
    pub backoff: Backoff,
    /// Longest time between two checkpoint commits. Default 1 s.
    pub commit_interval: Duration,
    /// How an incremental checks the previous images. Default
    /// [`PreviousCheck::Sha256`].
    pub previous_check: PreviousCheck,
    /// Whether a successful backup deletes the snapshot the images held
    /// before (no longer the base of anything). Default true.
    pub delete_previous: bool,
    /// Back up this existing snapshot instead of creating one.
    pub snapshot: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            parallelism: DEFAULT_PARALLELISM,
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: Progress::none(),
            backoff: Backoff::default(),
            commit_interval: Duration::from_secs(1),
            previous_check: PreviousCheck::Sha256,
            delete_previous: true,
            snapshot: None,
        }
    }
}

impl BackupOptions {
    /// Sets [`BackupOptions::parallelism`].
    #[must_use]
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n;
        self
    }

    /// Sets [`BackupOptions::chunk_size`].
    #[must_use]
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets [`BackupOptions::progress`].
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets [`BackupOptions::backoff`].
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`BackupOptions::commit_interval`].
    #[must_use]
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets [`BackupOptions::previous_check`].
    #[must_use]
    pub fn with_previous_check(mut self, check: PreviousCheck) -> Self {
        self.previous_check = check;
        self
    }

    /// Sets [`BackupOptions::delete_previous`].
    #[must_use]
    pub fn with_delete_previous(mut self, delete: bool) -> Self {
        self.delete_previous = delete;
        self
    }

    /// Sets [`BackupOptions::snapshot`].
    #[must_use]
    pub fn with_snapshot(mut self, snapshot_id: impl Into<String>) -> Self {
        self.snapshot = Some(snapshot_id.into());
        self
    }

    fn copy_options(&self, item: &str) -> CopyOptions {
        CopyOptions::default()
            .with_parallelism(self.parallelism)
            .with_chunk_size(self.chunk_size)
            .with_progress(self.progress.clone())
            .with_backoff(self.backoff.clone())
            .with_commit_interval(self.commit_interval)
            .with_digests(&[Algorithm::Sha256])
            .with_item(item)
    }
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// Full or incremental.
    pub kind: BackupKind,
    /// The VM.
    pub vm_id: String,
    /// The VM's friendly name.
    pub vm_name: String,
    /// The snapshot the images now hold.
    pub snapshot_id: String,
    /// For an incremental: the snapshot they held before.
    pub from: Option<String>,
    /// Whether this backup created `snapshot_id`.
    pub created_snapshot: bool,
    /// Whether this run continued an interrupted backup.
    pub resumed: bool,
    /// One entry per disk of the snapshot.
    pub disks: Vec<DiskReport>,
    /// Disks recorded before that the snapshot no longer has (their images
    /// are left in the directory, out of the backup).
    pub removed_disks: Vec<String>,
    /// The snapshot the images held before, if any.
    pub previous_snapshot: Option<String>,
    /// Whether that snapshot was deleted.
    pub previous_deleted: bool,
    /// What did not stop the backup but needs attention.
    pub warnings: Vec<String>,
    /// Wall time.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

impl BackupReport {
    /// Bytes read from the exporter for disk data, all disks.
    pub fn bytes_fetched(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes_fetched).sum()
    }

    /// Bytes punched out of the images, all disks.
    pub fn bytes_freed(&self) -> u64 {
        self.disks.iter().map(|d| d.freed_bytes).sum()
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What a backup did to one disk.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DiskReport {
    /// The exporter's disk name, also the image's file name.
    pub name: String,
    /// The guest device, e.g. `xvda`.
    pub device: String,
    /// The image.
    pub path: PathBuf,
    /// The disk's size.
    pub size: u64,
    /// The SHA-256 of the whole image.
    pub sha256: Checksum,
    /// Bytes the snapshot reports allocated (its chunks, clamped).
    pub allocated_bytes: u64,
    /// Bytes to copy: all allocated bytes for a full backup (or a disk new
    /// since the previous snapshot), the changed ranges for an
    /// incremental.
    pub planned_bytes: u64,
    /// Bytes punched because the guest freed them.
    pub freed_bytes: u64,
    /// Bytes read from the exporter in this run.
    pub bytes_fetched: u64,
    /// Bytes an earlier, interrupted run had committed.
    pub bytes_resumed: u64,
    /// Whether an earlier run had finished this disk.
    pub skipped: bool,
    /// Whether this disk was patched (incremental) rather than copied whole.
    pub patched: bool,
}

/// Backups of one VM into one directory; see the [module
/// documentation](self).
#[derive(Debug, Clone)]
pub struct OvmBackup {
    client: OvmClient,
    dir: PathBuf,
    options: BackupOptions,
}

impl OvmBackup {
    /// Backups through `client` into the directory `dir` (created when a
    /// backup starts).
    pub fn new(client: OvmClient, dir: impl Into<PathBuf>) -> Self {
        OvmBackup {
            client,
            dir: dir.into(),
            options: BackupOptions::default(),
        }
    }

    /// Uses `options`.
    #[must_use]
    pub fn with_options(mut self, options: BackupOptions) -> Self {
        self.options = options;
        self
    }

    /// The backup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options.
    pub fn options(&self) -> &BackupOptions {
        &self.options
    }

    /// The client.
    pub fn client(&self) -> &OvmClient {
        &self.client
    }

    /// The image file of disk `name`.
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory's state; `None` before the first backup started.
    ///
    /// # Errors
    ///
    /// Those of [`BackupState::load`].
    pub async fn state(&self) -> Result<Option<BackupState>> {
        let dir = self.dir.clone();
        blocking(move || BackupState::load(&dir)).await
    }

    /// Checks every recorded image against its recorded size and SHA-256
    /// (reading them all), and that no backup is half done.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a completed backup; [`Error::Conflict`]
    /// while a backup is pending; [`Error::Integrity`] naming the first
    /// image that differs.
    pub async fn verify(&self) -> Result<BackupState> {
        let state = self.completed_state().await?;
        self.check_images(&state, PreviousCheck::Sha256).await?;
        Ok(state)
    }

    /// The state of a completed backup with no backup pending.
    async fn completed_state(&self) -> Result<BackupState> {
        let path = BackupState::path_in(&self.dir);
        let state = self.state().await?.ok_or_else(|| {
            Error::not_found(format!(
                "{} (no backup in this directory: run a full backup first)",
                state_object(&path)
            ))
        })?;
        if let Some(p) = &state.pending {
            return Err(pending_conflict(&path, p));
        }
        if state.snapshot_id.is_none() {
            return Err(Error::not_found(format!(
                "a completed backup in {} (run a full backup first)",
                state_object(&path)
            )));
        }
        Ok(state)
    }

    /// A full backup of `vm_id`: see the [module documentation](self).
    ///
    /// Continues an interrupted full backup of the same VM in this
    /// directory (of its snapshot, while that exists). An unfinished
    /// incremental is abandoned: a full backup replaces every image.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if the directory holds backups of another VM;
    /// [`Error::Unsupported`] if the VM cannot be snapshotted; the
    /// client's and the copy's errors. After an error the state records the
    /// pending backup and the snapshot is kept, so that running it again
    /// continues where it stopped.
    pub async fn full(&self, vm_id: &str) -> Result<BackupReport> {
        let result = match self.lock_dir(true).await {
            Ok(_lock) => self.run_full(vm_id).await,
            Err(e) => Err(e),
        };
        self.options.progress.finish(Outcome::from_result(&result));
        result
    }

    /// An incremental backup of `vm_id` from snapshot `from`, the one the
    /// images hold: see the [module documentation](self).
    ///
    /// Continues an interrupted incremental from `from`.
    ///
    /// # Errors
    ///
    /// Before anything is created or written:
    /// [`Error::NotFound`] without a completed backup in the directory, or
    /// when `from` no longer exists on the exporter (a full backup is then
    /// needed); [`Error::Conflict`] for another VM, another exporter, or
    /// another backup pending; [`Error::InvalidInput`] if the images hold
    /// another snapshot than `from`; [`Error::Integrity`] if an image is not
    /// the one recorded for `from` (also when resuming, for the images not
    /// touched yet). [`Error::InvalidInput`] if a disk shrank, after which
    /// the new snapshot is deleted again and the state left as it was.
    /// Later: the client's and the copy's errors, after which running it
    /// again continues it. The previous snapshot is deleted only after the
    /// new state is recorded.
    pub async fn incremental(&self, vm_id: &str, from: &str) -> Result<BackupReport> {
        let result = match self.lock_dir(false).await {
            Ok(_lock) => self.run_incremental(vm_id, from).await,
            Err(e) => Err(e),
        };
        self.options.progress.finish(Outcome::from_result(&result));
        result
    }

    async fn run_full(&self, vm_id: &str) -> Result<BackupReport> {
        let started = Instant::now();
        // The directory exists: `full` created it to lock it.
        let endpoint = self.client.endpoint().to_string();
        let mut warnings = Vec::new();
        let old = self.state().await?;
        if let Some(old) = &old
            && old.vm_id != vm_id
        {
            return Err(other_vm(&self.dir, old, vm_id));
        }
        let vm = self.client.vm(vm_id).await?;
        let store = self.checkpoint_store().await?;

        // Continue a pending full backup of this exporter, if its snapshot
        // still exists.
        let mut resumed = None;
        if let Some(old) = &old
            && let Some(p) = &old.pending
        {
            let same = p.kind == BackupKind::Full
                && same_endpoint(&p.endpoint, &endpoint)
                && self
                    .options
                    .snapshot
                    .as_ref()
                    .is_none_or(|s| *s == p.snapshot_id);
            if same {
                match self
                    .client
                    .snapshot(vm_id, &p.snapshot_id, &SnapshotQuery::raw())
                    .await
                {
                    Ok(snap) => resumed = Some((p.clone(), snap)),
                    Err(e) if e.is_not_found() => warnings.push(format!(
                        "the unfinished full backup's snapshot {} is gone: starting over",
                        p.snapshot_id
                    )),
                    Err(e) => return Err(e),
                }
            } else {
                if p.created_snapshot
                    && same_endpoint(&p.endpoint, &endpoint)
                    && self.options.snapshot.as_deref() != Some(p.snapshot_id.as_str())
                {
                    self.discard_snapshot(vm_id, &p.snapshot_id, &mut warnings)
                        .await;
                }
                warnings.push(format!(
                    "abandoned the unfinished {} backup to snapshot {}",
                    p.kind, p.snapshot_id
                ));
            }
            if resumed.is_none() {
                remove_session(&store, &p.session).await;
            }
        }
        let is_resumed = resumed.is_some();

        let (pending, snap) = match resumed {
            Some(r) => r,
            None => {
                let (snapshot_id, created) = self.take_snapshot(&vm).await?;
                let pending = PendingBackup {
                    kind: BackupKind::Full,
                    endpoint: endpoint.clone(),
                    snapshot_id: snapshot_id.clone(),
                    from: None,
                    created_snapshot: created,
                    session: SessionId::generate().to_string(),
                    started_at: Utc::now(),
                    done: Vec::new(),
                };
                // Recorded before anything else can fail, so that the
                // snapshot is found again.
                let mut state = old
                    .clone()
                    .unwrap_or_else(|| BackupState::new(&endpoint, vm_id));
                state.pending = Some(pending.clone());
                self.save_state(&state).await?;
                let snap = self
                    .client
                    .snapshot(vm_id, &snapshot_id, &SnapshotQuery::raw())
                    .await?;
                (pending, snap)
            }
        };
        let mut state = old.unwrap_or_else(|| BackupState::new(&endpoint, vm_id));
        state.vm_name.clone_from(&vm.friendly_name);
        state.vm_uuid.clone_from(&vm.uuid);
        let previous = state
            .snapshot_id
            .clone()
            .filter(|s| *s != pending.snapshot_id);
        let previous_endpoint = state.endpoint.clone();
        check_disk_names(&snap)?;

        let mut session = load_session(&store, &pending, &endpoint, vm_id, &self.dir).await?;
        let mut pending = pending;
        let mut reports = Vec::new();
        for disk in &snap.disks {
            let device = device_of(&vm, &disk.name);
            if let Some(done) = pending.done.iter().find(|d| d.name == disk.name) {
                reports.push(skipped_report(self.image_path(&disk.name), done));
                continue;
            }
            let (disk_state, report) = self
                .copy_whole(&snap, disk, &device, &store, &mut session)
                .await?;
            self.record_disk(&mut state, &mut pending, disk_state)
                .await?;
            reports.push(report);
        }

        // Complete: the images are the snapshot's.
        let removed = self
            .complete(
                &mut state,
                &mut pending,
                &snap,
                &vm,
                &endpoint,
                &store,
                &session,
            )
            .await?;

        let mut previous_deleted = false;
        if let Some(prev) = &previous
            && self.options.delete_previous
        {
            if same_endpoint(&previous_endpoint, &endpoint) {
                previous_deleted = self.delete_previous(vm_id, prev, &mut warnings).await;
            } else {
                warnings.push(format!(
                    "the previous snapshot {prev} is on another exporter ({previous_endpoint}) \
                     and was left there"
                ));
            }
        }
        Ok(BackupReport {
            kind: BackupKind::Full,
            vm_id: vm_id.to_string(),
            vm_name: vm.friendly_name.clone(),
            snapshot_id: pending.snapshot_id,
            from: None,
            created_snapshot: pending.created_snapshot,
            resumed: is_resumed,
            disks: reports,
            removed_disks: removed,
            previous_snapshot: previous,
            previous_deleted,
            warnings,
            elapsed: started.elapsed(),
        })
    }

    async fn run_incremental(&self, vm_id: &str, from: &str) -> Result<BackupReport> {
        let started = Instant::now();
        let endpoint = self.client.endpoint().to_string();
        let state_path = BackupState::path_in(&self.dir);
        let mut state = self.state().await?.ok_or_else(|| {
            Error::not_found(format!(
                "{} (no backup in this directory: run a full backup first)",
                state_object(&state_path)
            ))
        })?;
        if state.vm_id != vm_id {
            return Err(other_vm(&self.dir, &state, vm_id));
        }
        if !same_endpoint(&state.endpoint, &endpoint) {
            return Err(Error::Conflict {
                object: state_object(&state_path),
                message: format!(
                    "the backup chain is pinned to exporter {} (snapshot ids are only known to \
                     the exporter that made them); this client talks to {endpoint}: run a full \
                     backup against {endpoint} in another directory",
                    state.endpoint
                ),
            });
        }
        let mut warnings = Vec::new();
        let vm = self.client.vm(vm_id).await?;
        let store = self.checkpoint_store().await?;

        let (mut pending, resumed) = match &state.pending {
            Some(p)
                if p.kind == BackupKind::Incremental
                    && p.from.as_deref() == Some(from)
                    && self
                        .options
                        .snapshot
                        .as_ref()
                        .is_none_or(|s| *s == p.snapshot_id) =>
            {
                (p.clone(), true)
            }
            Some(p) => return Err(pending_conflict(&state_path, p)),
            None => {
                match state.snapshot_id.as_deref() {
                    Some(s) if s == from => {}
                    Some(s) => {
                        return Err(Error::invalid_input(format!(
                            "the images in '{}' hold snapshot {s}, not {from}: an incremental \
                             backup must start from the snapshot the images hold",
                            self.dir.display()
                        )));
                    }
                    None => {
                        return Err(Error::not_found(format!(
                            "a completed backup in {} (run a full backup first)",
                            state_object(&state_path)
                        )));
                    }
                }
                if let Some(given) = &self.options.snapshot {
                    if given == from {
                        return Err(Error::invalid_input(format!(
                            "snapshot {from} is both the previous and the new snapshot"
                        )));
                    }
                    check_order(&vm, from, given)?;
                }
                // Refuse a wrong image, or a previous snapshot that is gone,
                // before anything is created.
                self.check_images(&state, self.options.previous_check)
                    .await?;
                self.previous_snapshot(&state, from).await?;
                let (snapshot_id, created) = self.take_snapshot(&vm).await?;
                let pending = PendingBackup {
                    kind: BackupKind::Incremental,
                    endpoint: endpoint.clone(),
                    snapshot_id,
                    from: Some(from.to_string()),
                    created_snapshot: created,
                    session: SessionId::generate().to_string(),
                    started_at: Utc::now(),
                    done: Vec::new(),
                };
                state.pending = Some(pending.clone());
                self.save_state(&state).await?;
                (pending, false)
            }
        };

        // Plan every disk before touching any image. A fresh incremental
        // whose plan fails (a disk that shrank, the previous snapshot gone)
        // has written nothing: it is undone, so that the images stay the
        // base of the next backup.
        let (snap, plans) = match self.plan_incremental(&state, &pending, from).await {
            Ok(planned) => planned,
            Err(e) => {
                if !resumed {
                    self.undo_pending(&mut state, &pending).await;
                }
                return Err(e);
            }
        };

        let mut session = load_session(&store, &pending, &endpoint, vm_id, &self.dir).await?;
        if resumed {
            // The images this run has not touched yet are checked as a fresh
            // run checks them, before anything is written.
            for (disk, plan) in snap.disks.iter().zip(&plans) {
                if plan.is_none() || pending.done.iter().any(|d| d.name == disk.name) {
                    continue;
                }
                let path = self.image_path(&disk.name);
                let touched = session
                    .item(&disk.name)
                    .is_some_and(|i| i.is_complete() || !i.completed.is_empty())
                    || file_len(&SparseFile::part_path_for(&path)?).await.is_some();
                if let (false, Some(old)) = (touched, state.disk(&disk.name)) {
                    self.check_image(old, from, self.options.previous_check)
                        .await?;
                }
            }
        }
        let mut reports = Vec::new();
        for (disk, plan) in snap.disks.iter().zip(plans) {
            let device = device_of(&vm, &disk.name);
            if let Some(done) = pending.done.iter().find(|d| d.name == disk.name) {
                reports.push(skipped_report(self.image_path(&disk.name), done));
                continue;
            }
            let (disk_state, report) = match plan {
                Some(plan) => {
                    self.patch(disk, &device, &plan, &store, &mut session)
                        .await?
                }
                None => {
                    warnings.push(format!(
                        "disk '{}' is new since snapshot {from}: copied whole",
                        disk.name
                    ));
                    self.copy_whole(&snap, disk, &device, &store, &mut session)
                        .await?
                }
            };
            self.record_disk(&mut state, &mut pending, disk_state)
                .await?;
            reports.push(report);
        }

        let removed = self
            .complete(
                &mut state,
                &mut pending,
                &snap,
                &vm,
                &endpoint,
                &store,
                &session,
            )
            .await?;
        for name in &removed {
            warnings.push(format!(
                "disk '{name}' is not in snapshot {}: its image is left in the directory, out \
                 of the backup",
                pending.snapshot_id
            ));
        }

        // Only now is the previous snapshot no longer needed.
        let previous_deleted = if self.options.delete_previous {
            self.delete_previous(vm_id, from, &mut warnings).await
        } else {
            false
        };
        Ok(BackupReport {
            kind: BackupKind::Incremental,
            vm_id: vm_id.to_string(),
            vm_name: vm.friendly_name.clone(),
            snapshot_id: pending.snapshot_id,
            from: Some(from.to_string()),
            created_snapshot: pending.created_snapshot,
            resumed,
            disks: reports,
            removed_disks: removed,
            previous_snapshot: Some(from.to_string()),
            previous_deleted,
            warnings,
            elapsed: started.elapsed(),
        })
    }

    /// The new snapshot of `pending` (raw chunks) and, for each of its
    /// disks, what to patch (`None`: a disk new since `from`, copied whole).
    async fn plan_incremental(
        &self,
        state: &BackupState,
        pending: &PendingBackup,
        from: &str,
    ) -> Result<(VmSnapshot, Vec<Option<Plan>>)> {
        // The previous snapshot must still exist now that the new one is
        // taken: it pins the physical blocks the diff relies on.
        self.previous_snapshot(state, from).await?;
        let vm_id = state.vm_id.as_str();
        let snap = self
            .client
            .snapshot(vm_id, &pending.snapshot_id, &SnapshotQuery::raw())
            .await?;
        check_disk_names(&snap)?;
        let mut plans = Vec::with_capacity(snap.disks.len());
        for disk in &snap.disks {
            let Some(old) = state.disk(&disk.name) else {
                plans.push(None);
                continue;
            };
            // The disk's reader: its HEAD gives the size the plan needs,
            // and the patch reads through it without asking again.
            let source = self.client.open_snapshot_disk(&snap, &disk.name).await?;
            let size = source.len();
            if size < old.size {
                return Err(Error::invalid_input(format!(
                    "disk '{}' shrank from {} to {size} bytes between snapshots {from} and {}: \
                     an image cannot be patched smaller; run a full backup",
                    disk.name, old.size, pending.snapshot_id
                )));
            }
            let diff = diff_chunks(&old.chunks(), &disk.chunks, size);
            plans.push(Some(Plan {
                source,
                changed: diff.changed,
                freed: diff.freed,
            }));
        }
        Ok((snap, plans))
    }

    /// Undoes a fresh incremental that wrote nothing: deletes the snapshot
    /// it created and clears the pending backup. If the snapshot cannot be
    /// deleted, the pending backup stays recorded (the next full backup
    /// deletes it).
    async fn undo_pending(&self, state: &mut BackupState, pending: &PendingBackup) {
        if pending.created_snapshot
            && let Err(e) = self
                .client
                .delete_snapshot(&state.vm_id, &pending.snapshot_id)
                .await
        {
            tracing::warn!(snapshot = %pending.snapshot_id, error = %e,
                "cannot delete the snapshot of a refused incremental backup: it stays recorded as pending");
            return;
        }
        state.pending = None;
        if let Err(e) = self.save_state(state).await {
            tracing::warn!(error = %e, "cannot clear the refused incremental backup from the state");
        }
    }

    /// Patches the image of `disk` in place: the changed ranges of `plan`
    /// copied from its source, its freed ranges punched, grown to its size.
    async fn patch(
        &self,
        disk: &crate::types::DiskSnapshot,
        device: &str,
        plan: &Plan,
        store: &CheckpointStore,
        session: &mut TransferSession,
    ) -> Result<(DiskState, DiskReport)> {
        let path = self.image_path(&disk.name);
        let source = &plan.source;
        let size = source.len();
        let sink = open_patch(&path, size).await?;
        let copied = copy_extents(
            source,
            &sink,
            &plan.changed,
            Some(&plan.freed),
            Some(Checkpointing {
                store,
                session: &mut *session,
            }),
            &self.options.copy_options(&disk.name),
        )
        .await?;
        let sha256 = copied_sha256(&copied, &path)?;
        // Recorded before the image goes back to its name: a run killed in
        // between finds the patch complete (it fetches nothing again and
        // only hashes the image), never an image it would take for
        // untouched.
        if let Some(item) = session.item_mut(&disk.name) {
            item.mark_all_done();
            item.checksum = Some(sha256);
        }
        save_session(store, session).await?;
        sink.commit().await?;
        let finished = Finished {
            sha256,
            allocated: source.allocated().total_bytes(),
            planned: plan.changed.total_bytes(),
            patched: true,
        };
        finish_disk(&path, disk, device, size, &copied, finished).await
    }

    /// Records a finished disk in the pending backup.
    async fn record_disk(
        &self,
        state: &mut BackupState,
        pending: &mut PendingBackup,
        disk: DiskState,
    ) -> Result<()> {
        pending.done.push(disk);
        state.pending = Some(pending.clone());
        self.save_state(state).await
    }

    /// Records `pending` as completed (the images are its snapshot's) and
    /// drops its checkpoint; returns the disks recorded before that the
    /// snapshot no longer has.
    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        state: &mut BackupState,
        pending: &mut PendingBackup,
        snap: &VmSnapshot,
        vm: &VirtualMachine,
        endpoint: &str,
        store: &CheckpointStore,
        session: &TransferSession,
    ) -> Result<Vec<String>> {
        let removed = state
            .disks
            .iter()
            .filter(|d| snap.disk(&d.name).is_none())
            .map(|d| d.name.clone())
            .collect();
        state.endpoint = endpoint.to_string();
        state.vm_name.clone_from(&vm.friendly_name);
        state.vm_uuid.clone_from(&vm.uuid);
        state.snapshot_id = Some(pending.snapshot_id.clone());
        state.completed_at = Some(Utc::now());
        state.disks = std::mem::take(&mut pending.done);
        state.pending = None;
        self.save_state(state).await?;
        remove_session(store, session.id.as_str()).await;
        Ok(removed)
    }

    /// Copies every allocated byte of `disk` of `snap` into a new image
    /// (resuming a `.part` file the checkpoint records progress for).
    async fn copy_whole(
        &self,
        snap: &VmSnapshot,
        disk: &crate::types::DiskSnapshot,
        device: &str,
        store: &CheckpointStore,
        session: &mut TransferSession,
    ) -> Result<(DiskState, DiskReport)> {
        let path = self.image_path(&disk.name);
        let source = self.client.open_snapshot_disk(snap, &disk.name).await?;
        let size = source.len();
        let extents = source.allocated().clone();

        // Finished by an earlier run that stopped before recording it.
        if let Some(item) = session.item(&disk.name)
            && item.is_complete()
            && item.size == size
            && let Some(sum) = item.checksum
            && file_len(&path).await == Some(size)
        {
            let actual = sha256_of(&path).await?;
            if actual == sum {
                let mut report = CopyReport::default();
                report.bytes_resumed = extents.total_bytes();
                let finished = Finished {
                    sha256: sum,
                    allocated: extents.total_bytes(),
                    planned: extents.total_bytes(),
                    patched: false,
                };
                return finish_disk(&path, disk, device, size, &report, finished).await;
            }
        }

        let copied = copy_to_file(
            &source,
            &path,
            Some(&extents),
            None,
            Some(Checkpointing { store, session }),
            &self.options.copy_options(&disk.name),
        )
        .await?;
        let finished = Finished {
            sha256: copied_sha256(&copied, &path)?,
            allocated: extents.total_bytes(),
            planned: extents.total_bytes(),
            patched: false,
        };
        finish_disk(&path, disk, device, size, &copied, finished).await
    }

    /// Checks the recorded images against the files.
    async fn check_images(&self, state: &BackupState, how: PreviousCheck) -> Result<()> {
        let snapshot = state.snapshot_id.as_deref().unwrap_or("?");
        for disk in &state.disks {
            self.check_image(disk, snapshot, how).await?;
        }
        Ok(())
    }

    /// Checks that the image of `disk` is the one recorded for `snapshot`.
    async fn check_image(
        &self,
        disk: &DiskState,
        snapshot: &str,
        how: PreviousCheck,
    ) -> Result<()> {
        let path = self.image_path(&disk.name);
        let tracker =
            self.options
                .progress
                .item(Phase::Verifying, disk.name.clone(), Some(disk.size));
        let refuse = |expected: String, actual: String| Error::Integrity {
            object: format!(
                "{} (recorded for snapshot {snapshot}; refusing to patch it)",
                image_object(&path)
            ),
            expected,
            actual,
        };
        let Some(len) = file_len(&path).await else {
            return Err(Error::not_found(format!(
                "{} (recorded for snapshot {snapshot})",
                image_object(&path)
            )));
        };
        if len != disk.size {
            return Err(refuse(
                format!("{} bytes", disk.size),
                format!("{len} bytes"),
            ));
        }
        if how == PreviousCheck::Fingerprint {
            let p = path.clone();
            let fp = blocking(move || FileFingerprint::of(&p)).await?;
            if fp == disk.fingerprint {
                tracker.set(disk.size);
                return Ok(());
            }
            tracing::info!(image = %path.display(), "fingerprint changed: hashing the image");
        }
        let actual = sha256_of(&path).await?;
        if actual != disk.sha256 {
            return Err(refuse(disk.sha256.to_string(), actual.to_string()));
        }
        tracker.set(disk.size);
        Ok(())
    }

    /// The previous snapshot `from`, raw, checked to still exist and to be
    /// the one the state recorded (same chunks).
    async fn previous_snapshot(&self, state: &BackupState, from: &str) -> Result<VmSnapshot> {
        let endpoint = self.client.endpoint();
        let prev = match self
            .client
            .snapshot(&state.vm_id, from, &SnapshotQuery::raw())
            .await
        {
            Ok(s) => s,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotFound {
                    object: format!(
                        "previous snapshot {from} of VM {} on {endpoint} (it was deleted, so \
                         what changed since cannot be known: run a full backup)",
                        state.vm_id
                    ),
                    source: Some(Box::new(e)),
                });
            }
            Err(e) => return Err(e),
        };
        for recorded in &state.disks {
            let same = prev
                .disk(&recorded.name)
                .is_some_and(|server| record_chunks(&server.chunks) == recorded.chunks);
            if !same {
                return Err(Error::invalid_data(
                    state_object(&BackupState::path_in(&self.dir)),
                    format!(
                        "disk '{}' is not in snapshot {from} on {endpoint} with the chunks \
                         recorded for it: the state does not belong to that snapshot",
                        recorded.name
                    ),
                ));
            }
        }
        Ok(prev)
    }

    /// Creates the snapshot, or checks the given one; returns its id and
    /// whether it was created.
    async fn take_snapshot(&self, vm: &VirtualMachine) -> Result<(String, bool)> {
        if vm.disks.is_empty() {
            // The exporter lists file-backed disks only; a VM whose disks
            // are all `phy:` devices would give an empty "backup".
            return Err(Error::unsupported(
                format!(
                    "backup of VM {} ({}): the exporter lists no disk for it (it serves \
                     file-backed disks on OCFS2 repositories only; phy: devices are not \
                     exported), so there is nothing to back up",
                    vm.name, vm.friendly_name
                ),
                "ovm",
            ));
        }
        if let Some(id) = &self.options.snapshot {
            return Ok((id.clone(), false));
        }
        if !vm.snapshot_compatible {
            let bad: Vec<&str> = vm
                .disks
                .iter()
                .filter(|d| !d.snapshot_compatible)
                .map(|d| d.name.as_str())
                .collect();
            return Err(Error::unsupported(
                format!(
                    "snapshot of VM {} ({}): disks {bad:?} are not on an OCFS2 repository \
                     supporting reflinks",
                    vm.name, vm.friendly_name
                ),
                "ovm",
            ));
        }
        self.options.progress.emit(
            ProgressEvent::new(Phase::Snapshotting, 0, None)
                .with_item(vm.friendly_name.clone())
                .with_message("creating snapshot"),
        );
        let snap = self.client.create_snapshot(&vm.name).await?;
        self.options.progress.emit(
            ProgressEvent::new(Phase::Snapshotting, 1, Some(1))
                .with_item(vm.friendly_name.clone())
                .with_message(format!("snapshot {}", snap.id)),
        );
        Ok((snap.id, true))
    }

    async fn delete_previous(
        &self,
        vm_id: &str,
        snapshot: &str,
        warnings: &mut Vec<String>,
    ) -> bool {
        match self.client.delete_snapshot(vm_id, snapshot).await {
            Ok(()) => true,
            Err(e) => {
                warnings.push(format!(
                    "the backup succeeded but the previous snapshot {snapshot} could not be \
                     deleted: {e}"
                ));
                false
            }
        }
    }

    async fn discard_snapshot(&self, vm_id: &str, snapshot: &str, warnings: &mut Vec<String>) {
        if let Err(e) = self.client.delete_snapshot(vm_id, snapshot).await {
            warnings.push(format!(
                "cannot delete snapshot {snapshot} of the abandoned backup: {e}"
            ));
        }
    }

    async fn prepare_dir(&self) -> Result<()> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| Error::io(format!("backup directory '{}'", self.dir.display()), e))
    }

    /// Takes the directory's lock (one backup at a time per directory;
    /// another one fails at once with [`Error::Conflict`]), creating the
    /// directory first when `create`; without it a missing directory is
    /// not locked (the backup then finds no state and says so).
    async fn lock_dir(&self, create: bool) -> Result<Option<SessionLock>> {
        if create {
            self.prepare_dir().await?;
        } else if !tokio::fs::try_exists(&self.dir).await.unwrap_or(false) {
            return Ok(None);
        }
        let store = self.checkpoint_store().await?;
        let dir = self.dir.display().to_string();
        match blocking(move || store.lock(DIR_LOCK_ID)).await {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.kind() == hypersdk_core::ErrorKind::Conflict => Err(Error::Conflict {
                object: format!("backup directory '{dir}'"),
                message: format!("another backup is running in it ({e})"),
            }),
            Err(e) => Err(e),
        }
    }

    async fn checkpoint_store(&self) -> Result<CheckpointStore> {
        let dir = self.dir.join(CHECKPOINT_DIR_NAME);
        blocking(move || CheckpointStore::open(dir)).await
    }

    async fn save_state(&self, state: &BackupState) -> Result<()> {
        let dir = self.dir.clone();
        let state = state.clone();
        blocking(move || state.save(&dir)).await
    }
}

/// The checkpoint-store lock id that makes backups into one directory take
/// turns.
const DIR_LOCK_ID: &str = "backup-directory";

/// What an incremental does to one image.
struct Plan {
    /// The disk of the new snapshot; its length is the size the image
    /// grows to.
    source: OvmDisk,
    /// The ranges to copy.
    changed: ExtentList,
    /// The ranges to punch.
    freed: ExtentList,
}

/// Saves `session` off the async threads.
async fn save_session(store: &CheckpointStore, session: &mut TransferSession) -> Result<()> {
    let store = store.clone();
    let mut copy = session.clone();
    *session = blocking(move || store.save(&mut copy).map(|()| copy)).await?;
    Ok(())
}

/// The figures of a finished disk besides the copy report.
struct Finished {
    sha256: Checksum,
    allocated: u64,
    planned: u64,
    patched: bool,
}

/// Records a finished disk: fingerprint, state and report.
async fn finish_disk(
    path: &Path,
    disk: &crate::types::DiskSnapshot,
    device: &str,
    size: u64,
    copied: &CopyReport,
    f: Finished,
) -> Result<(DiskState, DiskReport)> {
    let p = path.to_path_buf();
    let fingerprint = blocking(move || FileFingerprint::of(&p)).await?;
    let state = DiskState {
        name: disk.name.clone(),
        device: device.to_string(),
        size,
        sha256: f.sha256,
        fingerprint,
        chunks: record_chunks(&disk.chunks),
    };
    let report = DiskReport {
        name: disk.name.clone(),
        device: device.to_string(),
        path: path.to_path_buf(),
        size,
        sha256: f.sha256,
        allocated_bytes: f.allocated,
        planned_bytes: f.planned,
        freed_bytes: copied.bytes_freed,
        bytes_fetched: copied.bytes_fetched,
        bytes_resumed: copied.bytes_resumed,
        skipped: false,
        patched: f.patched,
    };
    Ok((state, report))
}

/// The SHA-256 the copy engine computed.
fn copied_sha256(copied: &CopyReport, path: &Path) -> Result<Checksum> {
    copied
        .digests
        .as_ref()
        .and_then(|d| d.get(Algorithm::Sha256))
        .copied()
        .ok_or_else(|| {
            Error::other(format!(
                "the copy into {} computed no SHA-256",
                image_object(path)
            ))
        })
}

fn skipped_report(path: PathBuf, done: &DiskState) -> DiskReport {
    DiskReport {
        name: done.name.clone(),
        device: done.device.clone(),
        path,
        size: done.size,
        sha256: done.sha256,
        allocated_bytes: chunks_to_extents(&done.chunks(), done.size).total_bytes(),
        planned_bytes: 0,
        freed_bytes: 0,
        bytes_fetched: 0,
        bytes_resumed: 0,
        skipped: true,
        patched: false,
    }
}

fn check_disk_names(snap: &VmSnapshot) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in &snap.disks {
        check_file_name(&d.name).map_err(|why| {
            Error::invalid_data(format!("snapshot {} of VM {}", snap.id, snap.vm_id), why)
        })?;
        if !seen.insert(d.name.as_str()) {
            return Err(Error::invalid_data(
                format!("snapshot {} of VM {}", snap.id, snap.vm_id),
                format!(
                    "two disks are named '{}'; the exporter serves only one of them",
                    d.name
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that `from` was taken before `to`, by the order of the VM's
/// snapshot list (ascending creation time), when both are listed.
fn check_order(vm: &VirtualMachine, from: &str, to: &str) -> Result<()> {
    let pos = |id: &str| vm.snapshots.iter().position(|s| s == id);
    if let (Some(f), Some(t)) = (pos(from), pos(to))
        && f > t
    {
        return Err(Error::invalid_input(format!(
            "snapshot {to} is older than {from}: an incremental backup goes forward"
        )));
    }
    Ok(())
}

fn device_of(vm: &VirtualMachine, name: &str) -> String {
    vm.disks
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.device_name.clone())
        .unwrap_or_default()
}

fn other_vm(dir: &Path, state: &BackupState, vm_id: &str) -> Error {
    Error::Conflict {
        object: state_object(&BackupState::path_in(dir)),
        message: format!(
            "the directory holds backups of VM {} ({}), not {vm_id}: use another directory",
            state.vm_id, state.vm_name
        ),
    }
}

fn pending_conflict(path: &Path, p: &PendingBackup) -> Error {
    let how = match (p.kind, &p.from) {
        (BackupKind::Incremental, Some(from)) => format!(
            "an incremental backup from {from} to {} is unfinished (some images may be patched \
             already): run the incremental from {from} again to finish it, or a full backup",
            p.snapshot_id
        ),
        _ => format!(
            "a full backup to snapshot {} is unfinished: run the full backup again to finish it",
            p.snapshot_id
        ),
    };
    Error::Conflict {
        object: state_object(path),
        message: how,
    }
}

/// Whether two endpoint URLs name the same exporter: scheme, host and port
/// (default ports filled in), ignoring a trailing slash and case.
pub fn same_endpoint(a: &str, b: &str) -> bool {
    endpoint_key(a) == endpoint_key(b)
}

fn endpoint_key(s: &str) -> String {
    match url::Url::parse(s.trim()) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or_default(),
            u.path().trim_end_matches('/')
        ),
        Err(_) => s.trim().trim_end_matches('/').to_ascii_lowercase(),
    }
}

async fn file_len(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path)
        .await
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

async fn sha256_of(path: &Path) -> Result<Checksum> {
    let digests = hash_file(path, &[Algorithm::Sha256]).await?;
    digests
        .get(Algorithm::Sha256)
        .copied()
        .ok_or_else(|| Error::other("SHA-256 missing from the digests"))
}

/// The checkpoint session of `pending`: loaded, or new with its id when it
/// is missing or damaged (a damaged one only costs fetching again: a full
/// copy restarts, a patch is idempotent).
async fn load_session(
    store: &CheckpointStore,
    pending: &PendingBackup,
    endpoint: &str,
    vm_id: &str,
    dir: &Path,
) -> Result<TransferSession> {
    let id = SessionId::new(pending.session.clone())?;
    let store = store.clone();
    let source = format!(
        "{}/api/v1/vms/{vm_id}/snapshots/{}",
        hypersdk_core::error::redact_url(endpoint.trim_end_matches('/')),
        pending.snapshot_id
    );
    let target = dir.display().to_string();
    blocking(move || match store.load(id.as_str()) {
        Ok(s) if s.kind == SESSION_KIND => Ok(s),
        Ok(_) | Err(_) => {
            if let Ok(path) = store.path_for(id.as_str())
                && path.exists()
            {
                tracing::warn!(file = %path.display(), "discarding an unusable checkpoint");
                store.remove(id.as_str())?;
            }
            let mut s = TransferSession::new(SESSION_KIND, source, target).with_id(id);
            store.save(&mut s)?;
            Ok(s)
        }
    })
    .await
}

async fn remove_session(store: &CheckpointStore, id: &str) {
    let store = store.clone();
    let id = id.to_string();
    let removed = blocking(move || match store.remove(&id) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    })
    .await;
    if let Err(e) = removed {
        tracing::warn!(error = %e, "cannot remove the finished backup's checkpoint");
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::other(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_backup_in_the_same_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // Never contacted: the lock is checked first.
        let client = crate::OvmClient::builder("https://127.0.0.1:9")
            .credentials("u", "p")
            .build()
            .unwrap();
        let backup = OvmBackup::new(client, dir.path());
        let held = backup.lock_dir(true).await.unwrap();
        assert!(held.is_some());
        let e = backup.full("vm").await.unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains("another backup"), "{e}");
        let e = backup.incremental("vm", "s").await.unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::Conflict, "{e}");
        drop(held);
        // Released: the next one gets past the lock (and fails on the
        // unreachable exporter, not on the lock).
        let e = backup.full("vm").await.unwrap_err();
        assert_ne!(e.kind(), hypersdk_core::ErrorKind::Conflict, "{e}");
        // An incremental into a directory that does not exist is not
        // locked (nor created): it says there is no backup.
        let missing = OvmBackup::new(
            crate::OvmClient::builder("https://127.0.0.1:9")
                .credentials("u", "p")
                .build()
                .unwrap(),
            dir.path().join("none"),
        );
        let e = missing.incremental("vm", "s").await.unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::NotFound, "{e}");
        assert!(!dir.path().join("none").exists());
    }

    #[test]
    fn endpoints_compare_by_origin() {
        assert!(same_endpoint(
            "https://10.0.0.5:5544",
            "https://10.0.0.5:5544/"
        ));
        assert!(same_endpoint("https://Exporter:443", "https://exporter"));
        assert!(!same_endpoint(
            "https://10.0.0.5:5544",
            "https://10.0.0.6:5544"
        ));
        assert!(!same_endpoint(
            "https://10.0.0.5:5544",
            "http://10.0.0.5:5544"
        ));
    }
}
