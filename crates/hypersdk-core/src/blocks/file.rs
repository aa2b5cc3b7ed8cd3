//! A local file (or block device) as a [`BlockSource`].
//!
//! [`FileSource`] reads with positional reads (`pread`) on Tokio's blocking
//! threads, so any number of tasks can read one source at once without a
//! shared file position. [`FileSource::allocated_extents`] walks the file
//! with `SEEK_DATA`/`SEEK_HOLE`, so a copy reads only the data of a sparse
//! file and leaves its holes as holes.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use hypersdk_core::blocks::{BlockSource, FileSource};
//! use hypersdk_core::model::Extent;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.raw");
//! std::fs::write(&path, b"hello, disk").unwrap();
//!
//! let src = FileSource::open(&path).await?;
//! assert_eq!(src.len(), 11);
//! assert_eq!(&src.read_range(Extent::new(7, 4)).await?[..], b"disk");
//! assert!(src.read_range(Extent::new(8, 4)).await.is_err()); // past the end
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::{BlockSource, check_range};
use crate::model::{Extent, ExtentList};
use crate::{Error, Result};

/// The largest chunk [`FileSource::read_stream`] yields.
const STREAM_CHUNK: u64 = 4 << 20;

/// A local file or block device read by byte range.
///
/// The length is taken when the file is opened; a file that shrinks
/// afterwards makes reads of the lost bytes fail (with
/// [`Error::InvalidData`] naming the file), never return short data. Cheap
/// to clone: clones share the open file.
#[derive(Debug, Clone)]
pub struct FileSource {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

impl FileSource {
    /// The largest chunk that [`BlockSource::read_stream`] yields: 4 MiB.
    pub const STREAM_CHUNK_SIZE: u64 = STREAM_CHUNK;

    /// Opens the file (or block device) at `path` for reading.
    ///
    /// Fails with [`Error::NotFound`] or [`Error::PermissionDenied`] naming
    /// the path, with [`Error::InvalidInput`] if it is a directory, or with
    /// [`Error::Io`].
    pub async fn open(path: impl AsRef<Path>) -> Result<FileSource> {
        let path = path.as_ref().to_path_buf();
        let object = file_object(&path);
        run_blocking(&object, move || {
            let object = file_object(&path);
            let file = File::open(&path).map_err(|e| Error::io(object.as_str(), e))?;
            let meta = file.metadata().map_err(|e| Error::io(object.as_str(), e))?;
            if meta.is_dir() {
                return Err(Error::invalid_input(format!(
                    "{object} is a directory, not a disk image"
                )));
            }
            let len = if meta.is_file() {
                meta.len()
            } else {
                // A block device reports length 0 in its metadata; its end
                // is where a seek to the end lands.
                use std::io::Seek;
                (&file)
                    .seek(io::SeekFrom::End(0))
                    .map_err(|e| Error::io(object.as_str(), e))?
            };
            Ok(FileSource {
                file: Arc::new(file),
                path,
                len,
            })
        })
        .await
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl BlockSource for FileSource {
    fn describe(&self) -> String {
        file_object(&self.path)
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let file = Arc::clone(&self.file);
        let object = self.describe();
        run_blocking(&object.clone(), move || {
            read_exact_at(&file, range, &object)
        })
        .await
    }

    /// Reads lazily, one chunk of at most [`FileSource::STREAM_CHUNK_SIZE`]
    /// bytes per poll; the stream ends after the first error.
    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        check_range(self, range)?;
        let file = Arc::clone(&self.file);
        let object = self.describe();
        let chunks = stream::try_unfold(range.offset, move |pos| {
            let file = Arc::clone(&file);
            let object = object.clone();
            async move {
                let end = range.end();
                if pos >= end {
                    return Ok(None);
                }
                let chunk = Extent::new(pos, (end - pos).min(STREAM_CHUNK));
                let bytes = run_blocking(&object.clone(), move || {
                    read_exact_at(&file, chunk, &object)
                })
                .await?;
                Ok(Some((bytes, chunk.end())))
            }
        });
        Ok(chunks.boxed())
    }

    /// The data extents found with `SEEK_DATA`/`SEEK_HOLE`, squashed and
    /// clamped to the length at open. Their granularity is the file
    /// system's (usually 4 KiB blocks), so they cover every byte written.
    ///
    /// Where the file system or platform cannot tell, the whole file is
    /// reported as data (`Some` of one extent), never `None`.
    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        let len = self.len;
        if len == 0 {
            return Ok(Some(ExtentList::new()));
        }
        let file = Arc::clone(&self.file);
        let object = self.describe();
        run_blocking(&object.clone(), move || {
            match data_extents(&file, len).map_err(|e| Error::io(object.as_str(), e))? {
                Some(extents) => Ok(Some(extents)),
                None => {
                    tracing::debug!(
                        file = %object,
                        "SEEK_DATA/SEEK_HOLE not supported; treating the whole file as data"
                    );
                    Ok(Some(ExtentList::full(len)))
                }
            }
        })
        .await
    }
}

/// The storage allocated to the file at `path`, in bytes: the number of
/// 512-byte blocks it occupies (`st_blocks × 512`), which for a sparse file
/// is far below its length. On non-unix platforms, its length.
///
/// This is one blocking `stat` call. Fails with [`Error::NotFound`] or
/// [`Error::Io`] naming the path.
pub fn allocated_size(path: impl AsRef<Path>) -> Result<u64> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(file_object(path), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(meta.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    {
        Ok(meta.len())
    }
}

/// How files are named in messages.
pub(super) fn file_object(path: &Path) -> String {
    format!("file '{}'", path.display())
}

/// Runs blocking file work on Tokio's blocking threads.
///
/// The work runs to its end even if the returned future is dropped.
pub(super) async fn run_blocking<T, F>(object: &str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(Error::other(format!("i/o task on {object} failed: {e}"))),
    }
}

/// Reads exactly `range` of `file` with positional reads.
///
/// A file that ends before the range does is an [`Error::InvalidData`]
/// (it shrank since it was opened or created), never short data.
pub(super) fn read_exact_at(file: &File, range: Extent, object: &str) -> Result<Bytes> {
    let len = usize::try_from(range.length).map_err(|_| {
        Error::invalid_input(format!(
            "range {range} of {object} is too large to read into memory at once"
        ))
    })?;
    let mut buf = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let pos = range.offset + done as u64;
        match read_at(file, &mut buf[done..], pos) {
            Ok(0) => {
                return Err(Error::invalid_data(
                    object,
                    format!(
                        "the file ends at offset {pos}, inside range {range}: \
                         it is shorter than when it was opened"
                    ),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(object, e)),
        }
    }
    Ok(Bytes::from(buf))
}

/// Writes all of `data` at `offset` with positional writes.
pub(super) fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        match write_at(file, data, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

// On Windows, `seek_read`/`seek_write` move the file position too; only
// positional reads and writes are used here, so that does not matter.
#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

/// Walks the data extents of the first `len` bytes of `file` with
/// `SEEK_DATA`/`SEEK_HOLE`; `None` if the file system cannot tell.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
))]
fn data_extents(file: &File, len: u64) -> io::Result<Option<ExtentList>> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;

    let unsupported = |e: Errno| e == Errno::INVAL || e == Errno::NOTSUP || e == Errno::OPNOTSUPP;
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(data) => data,
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(len),
            // The file shrank between the two seeks: it ends in a hole.
            Err(Errno::NXIO) => break,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if hole <= data {
            // A file system that does not move forward would loop forever;
            // treat it as one that cannot tell.
            return Ok(None);
        }
        extents.push(Extent::from_range(data..hole));
        pos = hole;
    }
    Ok(Some(ExtentList::from_unsorted(extents).squash()))
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "macos"
)))]
fn data_extents(_file: &File, _len: u64) -> io::Result<Option<ExtentList>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const MIB: u64 = 1 << 20;

    fn write_at_path(path: &Path, offset: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        write_all_at(&f, data, offset).unwrap();
    }

    #[tokio::test]
    async fn reads_ranges_and_rejects_out_of_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.raw");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let src = FileSource::open(&path).await.unwrap();
        assert_eq!(src.len(), 10_000);
        assert_eq!(src.path(), path);
        let got = src.read_range(Extent::new(1234, 5000)).await.unwrap();
        assert_eq!(&got[..], &content[1234..6234]);
        assert!(
            src.read_range(Extent::new(10_000, 0))
                .await
                .unwrap()
                .is_empty()
        );
        let e = src.read_range(Extent::new(9_999, 2)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("a.raw"), "{e}");
    }

    #[tokio::test]
    async fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.raw");
        let e = FileSource::open(&missing).await.unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(e.to_string().contains("missing.raw"), "{e}");
        let e = FileSource::open(dir.path()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    }

    #[tokio::test]
    async fn short_read_after_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinks.raw");
        std::fs::write(&path, vec![7u8; MIB as usize]).unwrap();
        let src = FileSource::open(&path).await.unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100_000)
            .unwrap();
        let e = src.read_range(Extent::new(0, MIB)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e:?}");
        assert!(!e.is_retryable());
        let msg = e.to_string();
        assert!(
            msg.contains("shrinks.raw") && msg.contains("100000"),
            "{msg}"
        );
        // Bytes still there read fine.
        assert_eq!(
            src.read_range(Extent::new(0, 100_000)).await.unwrap().len(),
            100_000
        );
        // Streams fail too, and end after the error.
        let mut s = src.read_stream(Extent::new(0, MIB)).await.unwrap();
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn read_stream_chunks_concatenate_to_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.raw");
        let content: Vec<u8> = (0..(10 * MIB + 17)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let src = FileSource::open(&path).await.unwrap();
        for range in [
            Extent::new(0, src.len()),
            Extent::new(3, 9 * MIB + 1),
            Extent::new(5, 4 * MIB),
            Extent::new(100, 0),
        ] {
            let mut s = src.read_stream(range).await.unwrap();
            let mut got = Vec::new();
            let mut chunks = 0;
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                assert!(!c.is_empty() && c.len() as u64 <= FileSource::STREAM_CHUNK_SIZE);
                got.extend_from_slice(&c);
                chunks += 1;
            }
            assert_eq!(chunks, range.length.div_ceil(STREAM_CHUNK));
            assert_eq!(
                &got[..],
                &content[range.offset as usize..range.end() as usize]
            );
        }
        assert!(src.read_stream(Extent::new(1, src.len())).await.is_err());
    }

    #[tokio::test]
    async fn allocated_extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let len = 8 * MIB;
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        let written = [
            Extent::new(MIB, 5000),
            Extent::new(5 * MIB + 100, 10),
            Extent::new(len - 3, 3),
        ];
        for w in written {
            write_at_path(&path, w.offset, &vec![0xAB; w.length as usize]);
        }
        let src = FileSource::open(&path).await.unwrap();
        let got = src.allocated_extents().await.unwrap().unwrap();
        let written = ExtentList::from_unsorted(written);
        // Every written byte is covered, nothing but blocks near the writes.
        assert_eq!(got.intersect(&written).squash(), written, "{got}");
        let near = written.align_out(64 << 10).unwrap();
        assert_eq!(got.subtract(&near), ExtentList::new(), "{got}");
        for x in &got {
            assert_eq!(x.offset % 4096, 0, "{got}");
            assert!(x.end() % 4096 == 0 || x.end() == len, "{got}");
        }
        assert_eq!(got.squash(), got);
        assert!(got.total_bytes() < MIB, "{got}");
        assert!(allocated_size(&path).unwrap() < MIB);
    }

    #[tokio::test]
    async fn allocated_extents_of_dense_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let dense = dir.path().join("dense.raw");
        std::fs::write(&dense, vec![1u8; 300_001]).unwrap();
        let src = FileSource::open(&dense).await.unwrap();
        assert_eq!(
            src.allocated_extents().await.unwrap(),
            Some(ExtentList::full(300_001))
        );
        assert!(allocated_size(&dense).unwrap() >= 300_001);

        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        let src = FileSource::open(&empty).await.unwrap();
        assert!(src.is_empty());
        assert_eq!(
            src.allocated_extents().await.unwrap(),
            Some(ExtentList::new())
        );

        let holes = dir.path().join("holes.raw");
        std::fs::File::create(&holes)
            .unwrap()
            .set_len(3 * MIB)
            .unwrap();
        let src = FileSource::open(&holes).await.unwrap();
        assert_eq!(
            src.allocated_extents().await.unwrap(),
            Some(ExtentList::new())
        );
        assert_eq!(allocated_size(&holes).unwrap(), 0);
        let e = allocated_size(dir.path().join("nope")).unwrap_err();
        assert!(e.is_not_found() && e.to_string().contains("nope"), "{e}");
    }
}
