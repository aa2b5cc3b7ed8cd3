//! Range-aware block reading, sparse writing and the resumable copy engine.
//!
//! - [`BlockSource`]: a disk (or any byte container) that knows its length,
//!   reads any byte range as [`Bytes`] or a stream, and may know which
//!   ranges are allocated. Sources: [`FileSource`] (allocated extents from
//!   `SEEK_DATA`/`SEEK_HOLE`), [`HttpSource`] (single-range `GET`s checked
//!   to be exactly the range asked for, resumed when cut), [`BytesSource`],
//!   and providers' disks ([`crate::provider::Provider::open_disk`]).
//! - [`BlockSink`]: where blocks go; [`SparseFile`] writes only non-zero
//!   blocks to `<name>.part`, punches freed ranges, and renames into place
//!   only once complete and synced.
//! - [`copy_extents`] and [`copy_to_file`]: move a list of extents from a
//!   source to a sink in bounded sub-ranges with N in flight, hashing the
//!   whole image in order, reporting progress, and committing to a
//!   [`crate::checkpoint`] session so a killed copy resumes without
//!   fetching a committed byte again.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use hypersdk_core::blocks::{BlockSource, BytesSource};
//! use hypersdk_core::model::Extent;
//!
//! let src = BytesSource::new("demo", Bytes::from_static(b"hello, disk"));
//! assert_eq!(src.len(), 11);
//! assert_eq!(&src.read_range(Extent::new(7, 4)).await?[..], b"disk");
//! assert!(src.read_range(Extent::new(8, 4)).await.is_err()); // past the end
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::model::{Extent, ExtentList};

mod copy;
mod file;
mod http;
mod sparse;

use crate::{Error, Result};
pub use copy::{
    Checkpointing, CopyOptions, CopyReport, DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM, copy_extents,
    copy_to_file,
};
pub use file::{FileSource, allocated_size};
pub use http::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, HttpAuth, HttpSource, HttpSourceBuilder,
    HttpStats, StaticHeaders, reqwest_error,
};
pub use sparse::{SinkStats, SparseFile, is_all_zero};

/// A disk or file that can be read by byte range.
///
/// Implementations must be cheap to share (`Arc<dyn BlockSource>`) and safe
/// to read from several tasks at once: copy engines issue ranges in parallel.
///
/// Cancellation: dropping a returned future or stream abandons that read and
/// nothing else; the source stays usable.
#[async_trait]
pub trait BlockSource: Send + Sync + Debug {
    /// A short description for messages: a path, a redacted URL, or
    /// `disk 'x' of VM 'y'`.
    fn describe(&self) -> String;

    /// The length in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `range`.
    ///
    /// A range that reaches past [`BlockSource::len`] is an
    /// [`Error::InvalidInput`]; a source that returns fewer bytes than asked
    /// is an error, never short data.
    async fn read_range(&self, range: Extent) -> Result<Bytes>;

    /// Reads `range` as a stream of chunks, for ranges too large to hold in
    /// memory at once. The chunks concatenate to exactly `range.length` bytes.
    ///
    /// The default reads the range in one [`BlockSource::read_range`] call;
    /// sources that stream natively (HTTP) override it.
    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        let bytes = self.read_range(range).await?;
        Ok(stream::once(async move { Ok(bytes) }).boxed())
    }

    /// The allocated extents, sorted; `None` when the source cannot tell, in
    /// which case every byte must be treated as data.
    ///
    /// Bytes outside the returned extents read as zeros.
    async fn allocated_extents(&self) -> Result<Option<ExtentList>>;
}

/// Checks that `range` lies within a source of length `len`.
///
/// Returns [`Error::InvalidInput`] naming the source otherwise. Sources call
/// this first in [`BlockSource::read_range`].
pub fn check_range(source: &dyn BlockSource, range: Extent) -> Result<()> {
    let len = source.len();
    match range.offset.checked_add(range.length) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::invalid_input(format!(
            "range {range} is outside {} of length {len}",
            source.describe()
        ))),
    }
}

/// Where copied blocks go: a file (see [`SparseFile`]) or any positional
/// store.
///
/// Writes may arrive in any order and concurrently, each at its own offset,
/// so every method takes `&self`. A sink keeps holes where it is not
/// written, may skip writing all-zero data (reads of it give zeros anyway),
/// and releases the storage of ranges declared freed.
#[async_trait]
pub trait BlockSink: Send + Sync + Debug {
    /// A short description for messages, e.g. the file's path.
    fn describe(&self) -> String;

    /// The length of the image being written.
    fn len(&self) -> u64;

    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `data` at `offset`. A write reaching past [`BlockSink::len`]
    /// is an [`Error::InvalidInput`].
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<()>;

    /// Declares `range` freed: it reads as zeros afterwards, and its storage
    /// is released where the medium allows.
    async fn punch_hole(&self, range: Extent) -> Result<()>;

    /// Makes every write that has returned durable (fsync). A copy engine
    /// calls it before it records a range as committed in a checkpoint.
    async fn flush(&self) -> Result<()>;

    /// Reads back `range` of what was written (holes read as zeros), for a
    /// resumed copy that must hash bytes it will not fetch again.
    async fn read_back(&self, range: Extent) -> Result<Bytes>;

    /// Whether every byte never written through this sink (in this run or
    /// an earlier one of the same image) reads as zero, as in a freshly
    /// created sparse file. A copy engine then hashes such ranges as zeros
    /// without reading them back. The default, `false`, suits sinks that
    /// start from existing content (an incremental copy onto a base image).
    fn starts_zeroed(&self) -> bool {
        false
    }
}

/// A [`BlockSource`] over bytes in memory.
///
/// Allocated extents are given explicitly with
/// [`BytesSource::with_allocated`], or unknown (`None`).
#[derive(Debug, Clone)]
pub struct BytesSource {
    name: String,
    data: Bytes,
    allocated: Option<ExtentList>,
}

impl BytesSource {
    /// A source over `data`, described as `name` in messages.
    pub fn new(name: impl Into<String>, data: Bytes) -> Self {
        BytesSource {
            name: name.into(),
            data,
            allocated: None,
        }
    }

    /// Declares which extents are allocated; they are clamped to the length.
    #[must_use]
    pub fn with_allocated(mut self, extents: ExtentList) -> Self {
        self.allocated = Some(extents.clamp(self.data.len() as u64));
        self
    }
}

#[async_trait]
impl BlockSource for BytesSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        // check_range proved offset + length <= data.len(), which is a usize.
        let start = range.offset as usize;
        let end = start + range.length as usize;
        Ok(self.data.slice(start..end))
    }

    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        Ok(self.allocated.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_source_reads_and_bounds() {
        let s = BytesSource::new("t", Bytes::from(vec![7u8; 100]));
        assert_eq!(s.read_range(Extent::new(90, 10)).await.unwrap().len(), 10);
        assert_eq!(s.read_range(Extent::new(100, 0)).await.unwrap().len(), 0);
        let e = s.read_range(Extent::new(95, 10)).await.unwrap_err();
        assert!(e.to_string().contains("outside t"), "{e}");
        let e = s
            .read_range(Extent {
                offset: u64::MAX,
                length: 2,
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(s.allocated_extents().await.unwrap().is_none());
        let mut chunks = s.read_stream(Extent::new(0, 100)).await.unwrap();
        let mut n = 0;
        while let Some(c) = chunks.next().await {
            n += c.unwrap().len();
        }
        assert_eq!(n, 100);
    }
}
