//! Writing disk images sparsely: [`SparseFile`], a [`BlockSink`] that keeps
//! holes where the image has zeros, and [`is_all_zero`].
//!
//! An image being written lives at `<path>.part` next to its final path;
//! [`SparseFile::commit`] renames it into place once complete, so the final
//! path only ever holds a complete image. All-zero blocks are not written
//! (the `.part` file starts as one big hole, so they read as zeros anyway),
//! and freed ranges are punched out, so the image takes only the space of
//! its data.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use hypersdk_core::blocks::{BlockSink, SparseFile};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.raw");
//! let sink = SparseFile::create(&path, 1 << 20).await?;
//! sink.write_at(0, Bytes::from_static(b"boot")).await?;
//! sink.write_at(4096, Bytes::from(vec![0u8; 512 << 10])).await?; // skipped
//! assert_eq!(sink.stats().data_bytes, 4);
//! assert_eq!(sink.stats().zero_bytes, 512 << 10);
//! assert!(!path.exists()); // only disk.raw.part so far
//!
//! let done = sink.commit().await?;
//! assert_eq!(done, path);
//! assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::RwLock;

use super::BlockSink;
use super::file::{allocated_size, file_object, read_exact_at, run_blocking, write_all_at};
use crate::fsutil::{parent_dir, sync_dir};
use crate::model::Extent;
use crate::{Error, Result};

/// The granularity of zero detection in [`SparseFile`]: 64 KiB.
const BLOCK: u64 = 64 << 10;

/// The size of the zero buffer written where holes cannot be punched.
const ZERO_PIECE: u64 = 1 << 20;

/// Whether every byte of `data` is zero (true for an empty slice).
///
/// Runs on every byte copied, so it is fast: it ORs 256-byte chunks
/// together without branching inside a chunk, which compiles to wide vector
/// instructions (over 100 GiB/s from cache and memory-bandwidth bound beyond,
/// on x86-64 with the baseline SSE2), and stops at the first chunk holding a
/// non-zero byte.
///
/// ```
/// use hypersdk_core::blocks::is_all_zero;
///
/// assert!(is_all_zero(&[0u8; 4096]));
/// assert!(is_all_zero(&[]));
/// let mut block = vec![0u8; 4096];
/// block[4095] = 1;
/// assert!(!is_all_zero(&block));
/// ```
pub fn is_all_zero(data: &[u8]) -> bool {
    const CHUNK: usize = 256;
    let (chunks, rest) = data.as_chunks::<CHUNK>();
    chunks.iter().all(|c| or_bytes(c) == 0) && or_bytes(rest) == 0
}

/// The OR of all bytes: no early exit, so the loop vectorizes.
#[inline(always)]
fn or_bytes(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |acc, &b| acc | b)
}

/// Byte counts of what a [`SparseFile`] did with the data given to it.
///
/// `data_bytes + zero_bytes` is the number of bytes passed to
/// [`BlockSink::write_at`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Bytes written to the file as data.
    pub data_bytes: u64,
    /// Bytes passed to `write_at` that were all-zero blocks and so not
    /// written as data (left as holes, or punched on a resumed file).
    pub zero_bytes: u64,
    /// Bytes cleared by punching holes: by [`BlockSink::punch_hole`], and by
    /// `write_at` for the all-zero blocks of a resumed file. Where the file
    /// system cannot punch holes, these bytes were overwritten with zeros.
    pub punched_bytes: u64,
}

/// What the blocking tasks of one [`SparseFile`] share.
#[derive(Debug)]
struct Shared {
    file: File,
    /// How the file is named in messages: [`SparseFile::describe`].
    object: String,
    data_bytes: AtomicU64,
    zero_bytes: AtomicU64,
    punched_bytes: AtomicU64,
    /// Set once the file system refused to punch a hole, so later punches
    /// write zeros without asking again.
    cannot_punch: AtomicBool,
}

/// A disk image written sparsely to a local file: a [`BlockSink`].
///
/// Data goes to `<path>.part` (the file name with `.part` appended:
/// `disk.raw` → `disk.raw.part`) until [`SparseFile::commit`] renames it to
/// `path`, replacing any file there in one atomic step. Until then a file
/// at `path` is not touched. [`SparseFile::abort`] removes the `.part` file.
/// Dropping a `SparseFile` without either leaves the `.part` file in place,
/// ready for [`SparseFile::resume`], and never creates `path`.
///
/// Writes are split into [`SparseFile::BLOCK_SIZE`] blocks aligned to
/// multiples of the block size in the image; all-zero blocks are not
/// written, and adjacent data blocks are written with one positional write.
/// Any number of tasks may write at once, each at its own offsets.
///
/// A file made by [`SparseFile::create`] starts as one hole, so skipped
/// blocks read as zeros. A resumed file may hold old data where zeros are
/// now written (a range that was being written when the earlier process
/// stopped may be partly written), so on a resumed file the all-zero blocks
/// of a write are punched out instead of skipped: the file then reads as
/// exactly what was written, at the cost of one `fallocate` per zero run.
/// (On a created file, zeros written over data written earlier in the same
/// session are skipped too, leaving that data: clear such a range with
/// [`BlockSink::punch_hole`]. A copy writes each range once, or again with
/// the same bytes when retried, so this does not arise.)
///
/// Cancellation: dropping the future of a write, punch or flush abandons
/// the wait, not the I/O, which completes on a blocking thread;
/// [`SparseFile::commit`] and [`SparseFile::abort`] wait for such
/// abandoned I/O to finish first.
#[derive(Debug)]
pub struct SparseFile {
    shared: Arc<Shared>,
    path: PathBuf,
    part: PathBuf,
    len: u64,
    resumed: bool,
    /// Whether bytes never written read as zeros (false for a patch).
    zeroed: bool,
    /// Held shared by every blocking task, taken exclusively by `commit`
    /// and `abort` so they wait for abandoned I/O.
    in_flight: Arc<RwLock<()>>,
}

impl SparseFile {
    /// The granularity of zero detection: 64 KiB. Blocks are aligned to
    /// multiples of this size in the image.
    pub const BLOCK_SIZE: u64 = BLOCK;

    /// The `.part` file that an image for `path` is written to: the file
    /// name with `.part` appended (`/out/disk.raw` → `/out/disk.raw.part`).
    ///
    /// Fails with [`Error::InvalidInput`] if `path` does not end in a file
    /// name (`/`, `..`).
    pub fn part_path_for(path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        let Some(name) = path.file_name() else {
            return Err(Error::invalid_input(format!(
                "'{}' does not name a file to write a disk image to",
                path.display()
            )));
        };
        let mut part = name.to_os_string();
        part.push(".part");
        Ok(path.with_file_name(part))
    }

    /// Starts writing an image of `len` bytes for `path`: creates
    /// `<path>.part`, or truncates an existing one, and sets its length to
    /// `len` (one hole). A file at `path` is left alone until
    /// [`SparseFile::commit`] replaces it.
    ///
    /// Fails with [`Error::InvalidInput`] if `path` does not name a file,
    /// with [`Error::NotFound`] if its directory does not exist, or with
    /// another error naming the `.part` file.
    pub async fn create(path: impl AsRef<Path>, len: u64) -> Result<SparseFile> {
        let path = path.as_ref().to_path_buf();
        let part = SparseFile::part_path_for(&path)?;
        let object = file_object(&part);
        let task_part = part.clone();
        let file = run_blocking(&object.clone(), move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&task_part)
                .map_err(|e| Error::io(object.as_str(), e))?;
            file.set_len(len)
                .map_err(|e| Error::io(object.as_str(), e))?;
            Ok(file)
        })
        .await?;
        Ok(SparseFile::new(file, path, part, len, false))
    }

    /// Reopens the `<path>.part` file of an interrupted copy of an image of
    /// `len` bytes, keeping what it holds.
    ///
    /// Fails with [`Error::NotFound`] naming the `.part` file if there is
    /// none, and with [`Error::InvalidData`] if its length is not `len`: a
    /// resumed copy must be of the same image.
    pub async fn resume(path: impl AsRef<Path>, len: u64) -> Result<SparseFile> {
        SparseFile::reopen(path.as_ref(), len, true).await
    }

    /// Reopens `<path>.part` holding an earlier image of `len` bytes to
    /// patch it in place (an incremental copy onto a base image): like
    /// [`SparseFile::resume`], but the bytes never written keep the earlier
    /// image's data, so [`BlockSink::starts_zeroed`] is `false` and a copy
    /// engine reads them back to hash the whole new image. Moving the image
    /// to its `.part` name first is the caller's business (so that the
    /// final name never holds a half-patched image).
    ///
    /// Fails as [`SparseFile::resume`] does.
    pub async fn patch(path: impl AsRef<Path>, len: u64) -> Result<SparseFile> {
        SparseFile::reopen(path.as_ref(), len, false).await
    }

    async fn reopen(path: &Path, len: u64, zeroed: bool) -> Result<SparseFile> {
        let path = path.to_path_buf();
        let part = SparseFile::part_path_for(&path)?;
        let object = file_object(&part);
        let task_part = part.clone();
        let file = run_blocking(&object.clone(), move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&task_part)
                .map_err(|e| Error::io(object.as_str(), e))?;
            let meta = file.metadata().map_err(|e| Error::io(object.as_str(), e))?;
            if !meta.is_file() {
                return Err(Error::invalid_input(format!(
                    "{object} is not a regular file"
                )));
            }
            if meta.len() != len {
                return Err(Error::invalid_data(
                    object,
                    format!(
                        "it is {} bytes long, but the image being resumed is {len} bytes: \
                         it belongs to another image",
                        meta.len()
                    ),
                ));
            }
            Ok(file)
        })
        .await?;
        let mut sink = SparseFile::new(file, path, part, len, true);
        sink.zeroed = zeroed;
        Ok(sink)
    }

    fn new(file: File, path: PathBuf, part: PathBuf, len: u64, resumed: bool) -> SparseFile {
        let part_name = part
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let object = format!("{} (writing {part_name})", path.display());
        SparseFile {
            shared: Arc::new(Shared {
                file,
                object,
                data_bytes: AtomicU64::new(0),
                zero_bytes: AtomicU64::new(0),
                punched_bytes: AtomicU64::new(0),
                cannot_punch: AtomicBool::new(false),
            }),
            path,
            part,
            len,
            resumed,
            zeroed: true,
            in_flight: Arc::new(RwLock::new(())),
        }
    }

    /// The final path, which [`SparseFile::commit`] creates or replaces.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `.part` file being written.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Whether this file was opened by [`SparseFile::resume`] (zero blocks
    /// are then punched out rather than skipped).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// What was written so far.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            data_bytes: self.shared.data_bytes.load(Ordering::Relaxed),
            zero_bytes: self.shared.zero_bytes.load(Ordering::Relaxed),
            punched_bytes: self.shared.punched_bytes.load(Ordering::Relaxed),
        }
    }

    /// Finishes the image: sets the `.part` file to its full length, syncs
    /// it, renames it to the final path (atomically replacing any file
    /// there) and syncs the directory. Returns the final path.
    ///
    /// Waits first for any abandoned write to finish. On an error before
    /// the rename, the final path is untouched and the `.part` file stays,
    /// ready for [`SparseFile::resume`]. If only syncing the directory
    /// fails, the rename has happened but may not survive a crash; the error
    /// names the directory. Once started, the commit runs to its end even if
    /// the returned future is dropped.
    pub async fn commit(self) -> Result<PathBuf> {
        let guard = Arc::clone(&self.in_flight).write_owned().await;
        let SparseFile {
            shared,
            path,
            part,
            len,
            ..
        } = self;
        let object = shared.object.clone();
        run_blocking(&object, move || {
            let _guard = guard;
            let file = &shared.file;
            let io_err = |e| Error::io(shared.object.as_str(), e);
            file.set_len(len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            std::fs::rename(&part, &path).map_err(|e| {
                Error::io(
                    format!("{} (renaming {} to it)", file_object(&path), part.display()),
                    e,
                )
            })?;
            let dir = parent_dir(&path);
            sync_dir(&dir).map_err(|e| Error::io(format!("directory '{}'", dir.display()), e))?;
            tracing::debug!(
                file = %path.display(),
                len,
                allocated = allocated_size(&path).ok(),
                data_bytes = shared.data_bytes.load(Ordering::Relaxed),
                zero_bytes = shared.zero_bytes.load(Ordering::Relaxed),
                punched_bytes = shared.punched_bytes.load(Ordering::Relaxed),
                "committed sparse image"
            );
            Ok(path)
        })
        .await
    }

    /// Gives up the image: removes the `.part` file (a missing one is not
    /// an error). The final path is untouched. Waits first for any
    /// abandoned write to finish.
    pub async fn abort(self) -> Result<()> {
        let guard = Arc::clone(&self.in_flight).write_owned().await;
        let SparseFile { shared, part, .. } = self;
        let object = file_object(&part);
        run_blocking(&object.clone(), move || {
            let _guard = guard;
            drop(shared);
            match std::fs::remove_file(&part) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(object, e)),
            }
        })
        .await
    }

    /// Checks that `length` bytes at `offset` lie within the image.
    fn check(&self, what: &str, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::invalid_input(format!(
                "{what} of {length} bytes at offset {offset} is outside {} of length {}",
                self.shared.object, self.len
            ))),
        }
    }

    /// Runs `work` on a blocking thread, registered as in-flight I/O.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let guard = Arc::clone(&self.in_flight).read_owned().await;
        let shared = Arc::clone(&self.shared);
        run_blocking(&self.shared.object, move || {
            let result = work(&shared);
            drop(guard);
            result
        })
        .await
    }
}

#[async_trait]
impl BlockSink for SparseFile {
    /// The final path and the `.part` file name, e.g.
    /// `/out/disk.raw (writing disk.raw.part)`.
    fn describe(&self) -> String {
        self.shared.object.clone()
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// A `.part` file starts as one hole (created with `set_len`), so what
    /// was never written reads as zeros, in a resumed file too; not in a
    /// [patched](SparseFile::patch) one.
    fn starts_zeroed(&self) -> bool {
        self.zeroed
    }

    /// Writes the data blocks of `data` and skips (on a resumed file:
    /// punches) its all-zero blocks; see [`SparseFile`].
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<()> {
        self.check("write", offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let punch_zeros = self.resumed;
        self.run(move |shared| write_blocks(shared, offset, &data, punch_zeros))
            .await
    }

    /// Punches a hole with `fallocate(PUNCH_HOLE | KEEP_SIZE)`; where the
    /// file system cannot, writes zeros over `range` instead.
    async fn punch_hole(&self, range: Extent) -> Result<()> {
        self.check("hole", range.offset, range.length)?;
        if range.is_empty() {
            return Ok(());
        }
        self.run(move |shared| {
            punch(shared, range.offset, range.length)
                .map_err(|e| Error::io(shared.object.as_str(), e))
        })
        .await
    }

    /// Syncs the written data (`fdatasync`).
    async fn flush(&self) -> Result<()> {
        self.run(|shared| {
            shared
                .file
                .sync_data()
                .map_err(|e| Error::io(shared.object.as_str(), e))
        })
        .await
    }

    async fn read_back(&self, range: Extent) -> Result<Bytes> {
        self.check("read", range.offset, range.length)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.run(move |shared| read_exact_at(&shared.file, range, &shared.object))
            .await
    }
}

/// Splits `data`, to be written at `offset`, into maximal runs of data
/// blocks and of all-zero blocks (`true`), with blocks aligned to multiples
/// of [`BLOCK`] in the image. Ranges index into `data`.
fn zero_runs(offset: u64, data: &[u8]) -> Vec<(Range<usize>, bool)> {
    let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
    let mut start = 0usize;
    while start < data.len() {
        let to_boundary = BLOCK - (offset.wrapping_add(start as u64) % BLOCK);
        let remaining = data.len() - start;
        let end = start + usize::try_from(to_boundary).map_or(remaining, |b| b.min(remaining));
        let zero = is_all_zero(&data[start..end]);
        match runs.last_mut() {
            Some((run, z)) if *z == zero => run.end = end,
            _ => runs.push((start..end, zero)),
        }
        start = end;
    }
    runs
}

/// The blocking part of [`SparseFile`]'s `write_at`.
fn write_blocks(shared: &Shared, offset: u64, data: &[u8], punch_zeros: bool) -> Result<()> {
    let io_err = |e| Error::io(shared.object.as_str(), e);
    for (run, zero) in zero_runs(offset, data) {
        let at = offset + run.start as u64;
        let n = run.len() as u64;
        if zero {
            if punch_zeros {
                punch(shared, at, n).map_err(io_err)?;
            }
            shared.zero_bytes.fetch_add(n, Ordering::Relaxed);
        } else {
            write_all_at(&shared.file, &data[run], at).map_err(io_err)?;
            shared.data_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Makes `len` bytes at `offset` read as zeros, releasing their storage
/// where the file system can punch holes.
fn punch(shared: &Shared, offset: u64, len: u64) -> io::Result<()> {
    if !shared.cannot_punch.load(Ordering::Relaxed) {
        match punch_hole(&shared.file, offset, len) {
            Ok(true) => {
                shared.punched_bytes.fetch_add(len, Ordering::Relaxed);
                return Ok(());
            }
            Ok(false) => {
                tracing::debug!(
                    file = %shared.object,
                    "the file system cannot punch holes; writing zeros instead"
                );
                shared.cannot_punch.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    write_zeros(&shared.file, offset, len)?;
    shared.punched_bytes.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

/// Punches a hole; `Ok(false)` if the file system or platform cannot.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use rustix::fs::{FallocateFlags, fallocate};
    use rustix::io::Errno;

    match fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOTSUP || e == Errno::NOSYS => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// Writes `len` zeros at `offset`, in pieces of at most [`ZERO_PIECE`].
fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // ZERO_PIECE fits in a usize, so the smaller of the two does.
    let zeros = vec![0u8; len.min(ZERO_PIECE) as usize];
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(zeros.len() as u64) as usize;
        write_all_at(file, &zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K64: usize = BLOCK as usize;

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0]));
        assert!(!is_all_zero(&[1]));
        for len in [1usize, 255, 256, 257, 1000, 4096, 65_536 + 3] {
            let mut v = vec![0u8; len];
            assert!(is_all_zero(&v));
            for pos in [0, len / 2, len - 1] {
                v[pos] = 0x80;
                assert!(!is_all_zero(&v), "len {len} pos {pos}");
                v[pos] = 0;
            }
        }
    }

    proptest! {
        #[test]
        fn prop_is_all_zero_matches_naive(
            len in 0usize..300,
            mark in any::<Option<(prop::sample::Index, u8)>>(),
            offset in 0usize..16,
        ) {
            // Mostly zeros, with at most one random byte set at a random
            // position, sliced at a random alignment.
            let mut v = vec![0u8; len + offset];
            if let Some((i, b)) = mark
                && len > 0
            {
                v[offset + i.index(len)] = b;
            }
            let s = &v[offset..];
            prop_assert_eq!(is_all_zero(s), s.iter().all(|b| *b == 0));
        }

        #[test]
        fn prop_is_all_zero_random_bytes(v in prop::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(is_all_zero(&v), v.iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn zero_runs_are_block_aligned_and_coalesced() {
        // 3 blocks and a bit, starting 100 bytes before a boundary.
        let offset = BLOCK - 100;
        let mut data = vec![0u8; 100 + 3 * K64 + 10];
        // Block 0 = the first 100 bytes (zero); block 1 data; block 2 data;
        // block 3 zero; tail of 10 bytes data.
        data[100] = 1;
        data[100 + K64 + 5] = 1;
        data[100 + 3 * K64 + 9] = 1;
        let runs = zero_runs(offset, &data);
        assert_eq!(
            runs,
            vec![
                (0..100, true),
                (100..100 + 2 * K64, false),
                (100 + 2 * K64..100 + 3 * K64, true),
                (100 + 3 * K64..data.len(), false),
            ]
        );
        assert_eq!(zero_runs(0, &[]), vec![]);
        assert_eq!(zero_runs(5, &[0; 10]), vec![(0..10, true)]);
        assert_eq!(zero_runs(u64::MAX - 3, &[1; 3]), vec![(0..3, false)]);
    }

    #[tokio::test]
    async fn part_path_appends_to_the_file_name() {
        assert_eq!(
            SparseFile::part_path_for("/out/disk.raw").unwrap(),
            PathBuf::from("/out/disk.raw.part")
        );
        assert_eq!(
            SparseFile::part_path_for("disk").unwrap(),
            PathBuf::from("disk.part")
        );
        let e = SparseFile::part_path_for("/").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(SparseFile::create("/", 10).await.is_err());
    }

    #[tokio::test]
    async fn a_patched_file_keeps_its_content_and_does_not_start_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.raw");
        let part = SparseFile::part_path_for(&path).unwrap();
        std::fs::write(&part, vec![7u8; 2 * BLOCK as usize]).unwrap();
        let resumed = SparseFile::resume(&path, 2 * BLOCK).await.unwrap();
        assert!(resumed.starts_zeroed());
        drop(resumed);
        let sink = SparseFile::patch(&path, 2 * BLOCK).await.unwrap();
        assert!(!sink.starts_zeroed());
        assert!(sink.is_resumed());
        sink.write_at(BLOCK, Bytes::from(vec![0u8; BLOCK as usize]))
            .await
            .unwrap();
        let back = sink.read_back(Extent::new(BLOCK - 1, 2)).await.unwrap();
        assert_eq!(&back[..], &[7, 0]);
        let e = SparseFile::patch(&path, BLOCK).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidData, "{e}");
        assert_eq!(sink.commit().await.unwrap(), path);
    }

    #[tokio::test]
    async fn stats_count_data_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.raw");
        let sink = SparseFile::create(&path, 4 * BLOCK).await.unwrap();
        assert!(!sink.is_resumed());
        let mut data = vec![0u8; 3 * K64];
        data[K64] = 9;
        sink.write_at(BLOCK, Bytes::from(data)).await.unwrap();
        assert_eq!(
            sink.stats(),
            SinkStats {
                data_bytes: BLOCK,
                zero_bytes: 2 * BLOCK,
                punched_bytes: 0,
            }
        );
        sink.punch_hole(Extent::new(0, 10)).await.unwrap();
        assert_eq!(sink.stats().punched_bytes, 10);
        let back = sink.read_back(Extent::new(2 * BLOCK, 2)).await.unwrap();
        assert_eq!(&back[..], &[9, 0]);
        let e = sink.read_back(Extent::new(4 * BLOCK, 1)).await.unwrap_err();
        assert!(e.to_string().contains("s.raw"), "{e}");
        sink.flush().await.unwrap();
        sink.abort().await.unwrap();
    }

    #[tokio::test]
    async fn zero_fallback_writes_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.raw");
        let sink = SparseFile::create(&path, 3 * ZERO_PIECE + 5).await.unwrap();
        sink.write_at(0, Bytes::from(vec![0xFF; (3 * ZERO_PIECE + 5) as usize]))
            .await
            .unwrap();
        write_zeros(&sink.shared.file, 7, 2 * ZERO_PIECE + 3).unwrap();
        let back = sink
            .read_back(Extent::new(0, 3 * ZERO_PIECE + 5))
            .await
            .unwrap();
        assert!(back[..7].iter().all(|b| *b == 0xFF));
        assert!(is_all_zero(&back[7..(2 * ZERO_PIECE + 10) as usize]));
        assert!(
            back[(2 * ZERO_PIECE + 10) as usize..]
                .iter()
                .all(|b| *b == 0xFF)
        );
        // Once punching is known not to work, punches write zeros.
        sink.shared.cannot_punch.store(true, Ordering::Relaxed);
        sink.punch_hole(Extent::new(1, 2)).await.unwrap();
        let back = sink.read_back(Extent::new(0, 4)).await.unwrap();
        assert_eq!(&back[..], &[0xFF, 0, 0, 0xFF]);
        sink.abort().await.unwrap();
        assert!(!SparseFile::part_path_for(&path).unwrap().exists());
    }
}
