//! The copy engine: moves a list of extents from a [`BlockSource`] to a
//! [`BlockSink`] with bounded parallelism, in-order hashing, progress and a
//! checkpoint, so that a killed process resumes without fetching a committed
//! byte again.
//!
//! The extents are split into sub-ranges of at most
//! [`CopyOptions::chunk_size`] (8 MiB by default), of which up to
//! [`CopyOptions::parallelism`] (4) are read and written at once: memory
//! stays below `chunk_size × parallelism` whatever the image size. Results
//! are taken in order, so that
//!
//! - a sub-range is *committed* (sink flushed, then the checkpoint saved)
//!   only when every sub-range before it is, at most
//!   [`CopyOptions::commit_interval`] after it was written; a restart skips
//!   every committed byte and fetches again only what was written since
//!   the last commit;
//! - the digest of the whole logical image is computed in order as the
//!   bytes go by: fetched bytes as they arrive, bytes that are not fetched
//!   (holes, ranges committed by an earlier run) read back from the sink.
//!
//! Each read is retried under [`CopyOptions::backoff`] (sources that retry
//! on their own, like [`super::HttpSource`], return final errors that are
//! not retried again). Dropping the future cancels the copy: what is left
//! is what the sink holds (a `.part` file for [`super::SparseFile`]) and the
//! checkpoint, ready to resume.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};

use super::{BlockSink, BlockSource, SparseFile};
use crate::checkpoint::{CheckpointStore, TransferItem, TransferSession};
use crate::digest::{Algorithm, Digests, MultiHasher};
use crate::model::{Extent, ExtentList};
use crate::progress::{Phase, Progress};
use crate::retry::{Backoff, retry};
use crate::{Error, Result};

/// Default size of the sub-ranges extents are split into.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Default number of sub-ranges in flight.
pub const DEFAULT_PARALLELISM: usize = 4;

/// Largest piece of a hole or a committed range read back at once for the
/// digest.
const READ_BACK_CHUNK: u64 = 8 << 20;

/// How a [`copy_extents`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Largest sub-range read and written at once. Default 8 MiB.
    pub chunk_size: u64,
    /// Sub-ranges in flight at once. Default 4.
    pub parallelism: usize,
    /// Digests of the whole logical image (`[0, len)` of the sink after the
    /// copy) to compute; none by default.
    pub digests: Vec<Algorithm>,
    /// Where progress goes; bytes count the extents to copy.
    pub progress: Progress,
    /// The name of the item in progress events and in the checkpoint.
    pub item: String,
    /// Retry policy of each sub-range read.
    pub backoff: Backoff,
    /// With a checkpoint: the longest time between two commits. Each commit
    /// flushes the sink and saves the checkpoint (three fsyncs), so
    /// committing every sub-range of a fast copy would stall it; a commit
    /// covers every sub-range completed since the last one. A killed copy
    /// fetches again at most what it fetched in this interval (plus the
    /// sub-ranges in flight). `Duration::ZERO` commits after every
    /// sub-range. Default 1 s.
    pub commit_interval: Duration,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            parallelism: DEFAULT_PARALLELISM,
            digests: Vec::new(),
            progress: Progress::none(),
            item: "disk".into(),
            backoff: Backoff::default(),
            commit_interval: Duration::from_secs(1),
        }
    }
}

impl CopyOptions {
    /// Sets [`CopyOptions::chunk_size`].
    #[must_use]
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets [`CopyOptions::parallelism`].
    #[must_use]
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n;
        self
    }

    /// Sets [`CopyOptions::digests`].
    #[must_use]
    pub fn with_digests(mut self, algorithms: &[Algorithm]) -> Self {
        self.digests = algorithms.to_vec();
        self
    }

    /// Sets [`CopyOptions::progress`].
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets [`CopyOptions::item`].
    #[must_use]
    pub fn with_item(mut self, name: impl Into<String>) -> Self {
        self.item = name.into();
        self
    }

    /// Sets [`CopyOptions::commit_interval`].
    #[must_use]
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets [`CopyOptions::backoff`].
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 {
            return Err(Error::invalid_input(
                "copy chunk_size must be at least 1 byte",
            ));
        }
        if self.parallelism == 0 {
            return Err(Error::invalid_input("copy parallelism must be at least 1"));
        }
        self.backoff.validate()
    }
}

/// Where a copy records its progress: a session in a checkpoint store and
/// the item of the session this copy fills in.
///
/// The item is added to the session (with the sink's length as its size)
/// if it is not there yet; its `completed` extents are skipped by the copy
/// and grow as sub-ranges are committed.
#[derive(Debug)]
pub struct Checkpointing<'a> {
    /// The store the session is saved to.
    pub store: &'a CheckpointStore,
    /// The session; saved after each commit.
    pub session: &'a mut TransferSession,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyReport {
    /// Bytes read from the source.
    pub bytes_fetched: u64,
    /// Bytes of the extents to copy that an earlier run had committed, and
    /// that were not fetched again.
    pub bytes_resumed: u64,
    /// Bytes declared freed and punched out of the sink.
    pub bytes_freed: u64,
    /// Sub-ranges copied.
    pub ranges: u64,
    /// Digests of the whole image, when asked for.
    pub digests: Option<Digests>,
    /// Wall time of the copy.
    pub elapsed: Duration,
}

/// Copies `extents` of `source` into `sink` at the same offsets, and punches
/// `freed` out of the sink.
///
/// `extents` is an [`ExtentList`], so it is sorted and free of overlaps by
/// construction (build it with [`ExtentList::from_unsorted`] from raw
/// input); extents reaching past the source or the sink are an
/// [`Error::InvalidInput`] before anything is read. `freed` ranges that are
/// also in `extents` are copied, not punched.
///
/// With `checkpoint`, ranges the session's item records as completed are
/// skipped, and each committed sub-range is recorded. Without it, every
/// extent is copied.
///
/// # Errors
///
/// The first read or write error (after retries), naming the source or
/// sink; nothing after it is committed. Sub-ranges committed before the
/// error stay recorded in the checkpoint.
///
/// # Cancellation
///
/// Dropping the future stops the copy at once; the sink keeps what was
/// written and the checkpoint what was committed.
pub async fn copy_extents(
    source: &dyn BlockSource,
    sink: &dyn BlockSink,
    extents: &ExtentList,
    freed: Option<&ExtentList>,
    mut checkpoint: Option<Checkpointing<'_>>,
    options: &CopyOptions,
) -> Result<CopyReport> {
    options.validate()?;
    let started = Instant::now();
    let len = sink.len();
    if source.len() != len {
        return Err(Error::invalid_input(format!(
            "cannot copy {} ({} bytes) into {} ({} bytes): the lengths differ",
            source.describe(),
            source.len(),
            sink.describe(),
            len
        )));
    }
    if let Some(end) = extents.bounds().map(|b| b.end())
        && end > len
    {
        return Err(Error::invalid_input(format!(
            "extents reach byte {end}, past the end of {} ({len} bytes)",
            source.describe()
        )));
    }

    // What an earlier run committed.
    let committed = match &mut checkpoint {
        Some(cp) => {
            if cp.session.item(&options.item).is_none() {
                cp.session
                    .add_item(TransferItem::new(options.item.clone(), len))?;
            }
            let item = cp
                .session
                .item(&options.item)
                .ok_or_else(|| Error::other("checkpoint item vanished"))?;
            if item.size != len {
                return Err(Error::invalid_data(
                    format!("checkpoint item '{}'", options.item),
                    format!(
                        "it records an image of {} bytes, the copy is of {len} bytes",
                        item.size
                    ),
                ));
            }
            item.completed.clamp(len)
        }
        None => ExtentList::new(),
    };
    let todo = extents.subtract(&committed);
    let mut report = CopyReport {
        bytes_resumed: extents.total_bytes() - todo.total_bytes(),
        ..CopyReport::default()
    };

    // Freed ranges first: punching is idempotent, so a resumed copy simply
    // does it again.
    if let Some(freed) = freed {
        let punch = freed.clamp(len).subtract(extents);
        for range in punch.iter() {
            sink.punch_hole(*range).await?;
        }
        report.bytes_freed = punch.total_bytes();
    }

    let tracker = options.progress.item(
        Phase::Transferring,
        options.item.clone(),
        Some(extents.total_bytes()),
    );
    tracker.set(report.bytes_resumed);

    // The plan: the whole image in order when hashing, else only the
    // sub-ranges to fetch.
    let fetch = todo.split_to_max(options.chunk_size)?;
    let pieces: Vec<Piece> = if options.digests.is_empty() {
        fetch.iter().map(|e| Piece::Fetch(*e)).collect()
    } else {
        // Bytes not fetched now: committed by an earlier run (read back from
        // the sink), or never written (zeros, when the sink says so).
        let whole = Extent::new(0, len);
        let (read_back, zeros) = if sink.starts_zeroed() {
            (
                committed.intersect(&fetch.complement(whole)),
                committed.merge(&fetch).complement(whole),
            )
        } else {
            (fetch.complement(whole), ExtentList::new())
        };
        let mut all: Vec<Piece> = fetch
            .iter()
            .map(|e| Piece::Fetch(*e))
            .chain(
                read_back
                    .split_to_max(READ_BACK_CHUNK)?
                    .iter()
                    .map(|e| Piece::ReadBack(*e)),
            )
            .chain(
                zeros
                    .split_to_max(READ_BACK_CHUNK)?
                    .iter()
                    .map(|e| Piece::Zero(*e)),
            )
            .collect();
        all.sort_by_key(|p| p.extent().offset);
        all
    };
    let mut hasher =
        (!options.digests.is_empty()).then(|| MultiHasher::offloaded(&options.digests));

    let backoff = &options.backoff;
    let mut results = stream::iter(pieces)
        .map(|piece| async move {
            let extent = piece.extent();
            let data = match piece {
                Piece::Fetch(e) => {
                    let what = format!("read {e} of {}", source.describe());
                    let data = retry(backoff, &what, |_| source.read_range(e)).await?;
                    if data.len() as u64 != e.length {
                        return Err(Error::invalid_data(
                            source.describe(),
                            format!("asked for {e}, got {} bytes", data.len()),
                        ));
                    }
                    sink.write_at(e.offset, data.clone()).await?;
                    data
                }
                Piece::ReadBack(e) => sink.read_back(e).await?,
                Piece::Zero(_) => Bytes::new(),
            };
            Ok::<_, Error>((piece, extent, data))
        })
        .buffered(options.parallelism);

    let mut since_commit: Vec<Extent> = Vec::new();
    let mut last_commit = Instant::now();
    loop {
        let (piece, extent, data) = match results.try_next().await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(e) => {
                // Keep what finished in order before the failure.
                if let Some(cp) = checkpoint.as_mut() {
                    drop(results);
                    if let Err(commit_error) =
                        commit(sink, cp, &options.item, &mut since_commit).await
                    {
                        tracing::warn!(error = %commit_error, "cannot commit before failing");
                    }
                }
                return Err(e);
            }
        };
        if let Some(h) = hasher.as_mut() {
            match piece {
                Piece::Zero(e) => hash_zeros(h, e.length),
                _ => hash_in_slices(h, data),
            }
        }
        if let Piece::Fetch(e) = piece {
            report.bytes_fetched += e.length;
            report.ranges += 1;
            tracker.add(e.length);
            since_commit.push(extent);
            if let Some(cp) = checkpoint.as_mut()
                && last_commit.elapsed() >= options.commit_interval
            {
                commit(sink, cp, &options.item, &mut since_commit).await?;
                last_commit = Instant::now();
            }
        }
    }
    drop(results);
    if let Some(cp) = checkpoint.as_mut() {
        commit(sink, cp, &options.item, &mut since_commit).await?;
    } else {
        sink.flush().await?;
    }
    if let Some(h) = hasher {
        let digests = h.finish()?;
        if digests.bytes_hashed() != len {
            return Err(Error::other(format!(
                "hashed {} bytes of an image of {len}",
                digests.bytes_hashed()
            )));
        }
        report.digests = Some(digests);
    }
    tracker.finish();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Copies `source` into a sparse file at `path`: the whole path of a disk
/// download.
///
/// The extents copied are `extents` when given (for example the changed
/// extents of a snapshot), else the source's
/// [`BlockSource::allocated_extents`], else all of it. Bytes outside them
/// are holes. Data goes to `<path>.part` ([`SparseFile`]), renamed to `path`
/// only once complete and synced.
///
/// With a `checkpoint` whose item records committed bytes *and* an existing
/// `.part` file of the right length, the copy resumes into it and skips
/// them. If the `.part` file is gone, the recorded progress is discarded
/// (the bytes are lost) and the copy starts over. On success the item is
/// marked complete with the image's checksum (the first of
/// [`CopyOptions::digests`], if any) and the session saved.
///
/// # Errors
///
/// As [`copy_extents`]. On error nothing is at `path` (an earlier file
/// there is left untouched), with one exception: if saving the checkpoint
/// fails after the image was renamed into place, the complete image is at
/// `path` and the save error is returned. With a checkpoint, `<path>.part` is kept for a
/// resume; without one it is removed.
///
/// # Cancellation
///
/// Dropping the future leaves `<path>.part` and the checkpoint, never a file
/// at `path`.
pub async fn copy_to_file(
    source: &dyn BlockSource,
    path: &Path,
    extents: Option<&ExtentList>,
    freed: Option<&ExtentList>,
    mut checkpoint: Option<Checkpointing<'_>>,
    options: &CopyOptions,
) -> Result<CopyReport> {
    options.validate()?;
    let len = source.len();
    let planned = match extents {
        Some(e) => e.clone(),
        None => source
            .allocated_extents()
            .await?
            .unwrap_or_else(|| ExtentList::full(len)),
    };
    let part = SparseFile::part_path_for(path)?;
    let part_exists = tokio::fs::try_exists(&part)
        .await
        .map_err(|e| Error::io(part.display().to_string(), e))?;
    let mut resume = false;
    let mut reset = false;
    if let Some(cp) = checkpoint.as_mut()
        && let Some(item) = cp.session.item_mut(&options.item)
        && !item.completed.is_empty()
    {
        if part_exists {
            resume = true;
            // Only what this run plans to copy can be trusted as done.
            item.completed = item.completed.intersect(&planned);
        } else {
            tracing::warn!(
                part = %part.display(),
                lost = item.bytes_done(),
                "the checkpoint records progress but the .part file is gone: starting over"
            );
            item.completed = ExtentList::new();
            reset = true;
        }
    }
    if reset && let Some(cp) = checkpoint.as_mut() {
        // Saved before a new .part exists: a run killed after this point
        // must not trust progress recorded against the lost file.
        save(cp).await?;
    }
    let sink = if resume {
        let sink = SparseFile::resume(path, len).await?;
        // A killed run may have written ranges this run does not plan to
        // copy (other extents, uncommitted writes): outside the plan the
        // image must read as zeros.
        for hole in planned.complement(Extent::new(0, len)).iter() {
            sink.punch_hole(*hole).await?;
        }
        sink
    } else {
        SparseFile::create(path, len).await?
    };
    let copied = copy_extents(
        source,
        &sink,
        &planned,
        freed,
        checkpoint.as_mut().map(|cp| Checkpointing {
            store: cp.store,
            session: &mut *cp.session,
        }),
        options,
    )
    .await;
    let report = match copied {
        Ok(report) => report,
        Err(e) => {
            if checkpoint.is_none() {
                // Nothing could resume it: do not leave it behind.
                let _ = sink.abort().await;
            }
            return Err(e);
        }
    };
    sink.commit().await?;
    if let Some(cp) = checkpoint.as_mut() {
        if let Some(item) = cp.session.item_mut(&options.item) {
            item.mark_all_done();
            if let Some(sum) = report.digests.as_ref().and_then(|d| d.iter().next()) {
                item.checksum = Some(*sum);
            }
        }
        save(cp).await?;
    }
    Ok(report)
}

/// A piece of the image in the copy plan.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// Read from the source and write to the sink.
    Fetch(Extent),
    /// Not fetched: read back from the sink, only to hash it.
    ReadBack(Extent),
    /// Never written and known to be zeros: hashed without any I/O.
    Zero(Extent),
}

impl Piece {
    fn extent(self) -> Extent {
        match self {
            Piece::Fetch(e) | Piece::ReadBack(e) | Piece::Zero(e) => e,
        }
    }
}

/// Largest slice handed to the hasher at once: its queue then pins at most
/// a few MiB of a chunk, not several whole chunks.
const HASH_SLICE: usize = 1 << 20;

/// Feeds `data` to `hasher` in slices of [`HASH_SLICE`] (zero-copy).
fn hash_in_slices(hasher: &mut MultiHasher, data: Bytes) {
    let mut at = 0;
    while at < data.len() {
        let end = (at + HASH_SLICE).min(data.len());
        hasher.update(data.slice(at..end));
        at = end;
    }
}

/// Feeds `len` zero bytes to `hasher` from one static buffer.
fn hash_zeros(hasher: &mut MultiHasher, mut len: u64) {
    static ZEROS: [u8; HASH_SLICE] = [0; HASH_SLICE];
    while len > 0 {
        let n = len.min(HASH_SLICE as u64) as usize;
        hasher.update(Bytes::from_static(&ZEROS[..n]));
        len -= n as u64;
    }
}

/// Makes the written ranges durable, then records them in the checkpoint.
async fn commit(
    sink: &dyn BlockSink,
    cp: &mut Checkpointing<'_>,
    item: &str,
    ranges: &mut Vec<Extent>,
) -> Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    sink.flush().await?;
    let entry = cp
        .session
        .item_mut(item)
        .ok_or_else(|| Error::other(format!("checkpoint item '{item}' vanished")))?;
    for r in ranges.drain(..) {
        entry.mark_done(r);
    }
    save(cp).await
}

/// Saves the session off the async threads (three fsyncs).
async fn save(cp: &mut Checkpointing<'_>) -> Result<()> {
    let store = cp.store.clone();
    let mut session = cp.session.clone();
    let saved = tokio::task::spawn_blocking(move || store.save(&mut session).map(|()| session))
        .await
        .map_err(|e| Error::other(format!("checkpoint save task failed: {e}")))??;
    *cp.session = saved;
    Ok(())
}
