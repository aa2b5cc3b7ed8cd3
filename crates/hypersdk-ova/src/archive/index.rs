//! Indexed (random-access) reading of an OVA file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use hypersdk_core::blocks::{BlockSource, FileSource, check_range};
use hypersdk_core::digest::{Algorithm, Digests, MultiHasher};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::{Error, Result};

use super::catalog::Catalog;
use super::header::{BLOCK, Decoded, HeaderDecoder, MAX_EXTENSION, padding, truncated};
use super::{EntryKind, EntrySummary, ReadOptions};
use crate::mf::Manifest;
use crate::ovf::Envelope;

/// The entry table of a seekable OVA file, read from its headers alone.
///
/// [`open`](Self::open) reads each header and seeks over the data, so
/// indexing a 100 GiB archive reads a few kilobytes (plus the descriptor
/// and manifest, which it parses). Each entry is then available as an
/// [`EntrySource`], a [`BlockSource`] over the entry's bytes inside the
/// archive: read any range of it, stream it, re-read it after a failed
/// upload, or read several entries in parallel.
///
/// The index applies the same checks as [`OvaReader`](super::OvaReader) to
/// the structure (header checksums, names, types, descriptor first,
/// duplicates, the data of every entry present); digests are checked on
/// demand with [`verify_entry`](Self::verify_entry) or
/// [`verify`](Self::verify).
///
/// ```no_run
/// # async fn demo() -> hypersdk_core::Result<()> {
/// use hypersdk_core::blocks::BlockSource;
/// use hypersdk_core::model::Extent;
/// use hypersdk_ova::archive::OvaIndex;
///
/// let index = OvaIndex::open("appliance.ova").await?;
/// for entry in index.entries() {
///     println!("{} at offset {} ({} bytes)", entry.name, entry.data_offset, entry.size);
/// }
/// let disk = index.open_entry("appliance-disk1.vmdk")?;
/// let header = disk.read_range(Extent::new(0, 512)).await?;
/// assert_eq!(&header[..4], b"KDMV");
/// index.verify().await?; // every digest the manifest lists
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OvaIndex {
    file: Arc<FileSource>,
    path: PathBuf,
    catalog: Catalog,
    descriptor: Bytes,
    envelope: Envelope,
}

impl OvaIndex {
    /// Indexes the OVA at `path` with default [`ReadOptions`].
    pub async fn open(path: impl AsRef<Path>) -> Result<OvaIndex> {
        Self::open_with(path, &ReadOptions::default()).await
    }

    /// Indexes the OVA at `path` with `options` (the XML limits apply).
    pub async fn open_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<OvaIndex> {
        let path = path.as_ref().to_path_buf();
        let file = Arc::new(FileSource::open(&path).await?);
        let len = file.len();
        let object = || format!("OVA '{}'", path.display());
        let in_archive = |e: Error| rename_archive(e, &object());

        let mut decoder = HeaderDecoder::default();
        let mut catalog = Catalog::new(options);
        let mut pos = 0u64;
        let mut header_offset = 0u64;
        loop {
            let block = read_upto(&file, pos, BLOCK as u64).await?;
            if block.is_empty() && !catalog.entries.is_empty() {
                return Err(Error::invalid_data(
                    object(),
                    format!(
                        "truncated: the archive ends at offset {pos} without the \
                         end-of-archive marker"
                    ),
                ));
            }
            // A short block is diagnosed by the decoder (not a tar, or
            // truncated).
            let decoded = decoder.decode(&block, pos).map_err(in_archive)?;
            let offset = pos;
            pos += BLOCK as u64;
            match decoded {
                Decoded::End => break,
                Decoded::Extension(ext, size) => {
                    if size > MAX_EXTENSION || pos + size > len {
                        return Err(in_archive(truncated(
                            pos,
                            size,
                            len.saturating_sub(pos),
                            "a tar extension",
                        )));
                    }
                    let data = file.read_range(Extent::new(pos, size)).await?;
                    decoder.apply(ext, &data, offset).map_err(in_archive)?;
                    pos += size + padding(size);
                }
                Decoded::Entry { name, size } => {
                    let data_offset = pos;
                    if data_offset.checked_add(size).is_none_or(|end| end > len) {
                        return Err(in_archive(truncated(
                            data_offset,
                            size,
                            len.saturating_sub(data_offset),
                            &format!("entry '{name}'"),
                        )));
                    }
                    let kind = catalog
                        .admit(&name, size, header_offset)
                        .map_err(in_archive)?;
                    catalog.push(EntrySummary::new(
                        name.clone(),
                        kind,
                        size,
                        header_offset,
                        data_offset,
                    ));
                    let small = || file.read_range(Extent::new(data_offset, size));
                    match kind {
                        EntryKind::Descriptor => catalog.set_descriptor(&name, small().await?)?,
                        EntryKind::Manifest => catalog.set_manifest(&name, &small().await?)?,
                        EntryKind::Certificate => catalog.set_certificate(&name, small().await?),
                        EntryKind::File => {}
                    }
                    pos = data_offset + size + padding(size);
                }
            }
            header_offset = pos;
        }
        catalog.check_complete().map_err(in_archive)?;
        // Coverage only: the digests are checked on demand.
        catalog.verify_known(false)?;
        let (Some((_, descriptor)), Some(envelope)) =
            (catalog.descriptor.clone(), catalog.envelope.clone())
        else {
            return Err(Error::invalid_data(
                object(),
                "not an OVA: the archive holds no entries",
            ));
        };
        Ok(OvaIndex {
            file,
            path,
            catalog,
            descriptor,
            envelope,
        })
    }

    /// The path of the archive.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, in archive order, descriptor and manifest included.
    pub fn entries(&self) -> &[EntrySummary] {
        &self.catalog.entries
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&EntrySummary> {
        self.catalog.entries.iter().find(|e| e.name == name)
    }

    /// The parsed descriptor.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The descriptor's raw bytes.
    pub fn descriptor(&self) -> &Bytes {
        &self.descriptor
    }

    /// The manifest, if the archive has one.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.catalog.manifest.as_ref().map(|(_, m)| m)
    }

    /// The certificate's name and bytes, if the archive has one (its
    /// signature is not checked).
    pub fn certificate(&self) -> Option<(&str, &Bytes)> {
        self.catalog
            .certificate
            .as_ref()
            .map(|(n, b)| (n.as_str(), b))
    }

    /// The entry `name` as a [`BlockSource`].
    ///
    /// Fails with [`Error::NotFound`] when the archive has no such entry.
    pub fn open_entry(&self, name: &str) -> Result<EntrySource> {
        let entry = self.entry(name).ok_or_else(|| {
            Error::not_found(format!("entry '{name}' of OVA '{}'", self.path.display()))
        })?;
        Ok(EntrySource {
            file: Arc::clone(&self.file),
            name: format!("entry '{name}' of OVA '{}'", self.path.display()),
            offset: entry.data_offset,
            len: entry.size,
        })
    }

    /// Hashes the entry `name` and checks it against the manifest.
    ///
    /// Computes the manifest's algorithms for the entry (SHA-256 when it
    /// has no manifest or does not list the entry) and returns the digests.
    /// A mismatch is an [`Error::Integrity`] naming the entry and both
    /// digests.
    pub async fn verify_entry(&self, name: &str) -> Result<Digests> {
        let source = self.open_entry(name)?;
        let mut algorithms: Vec<Algorithm> = self
            .manifest()
            .map(|m| m.checksums_of(name).map(|c| c.algorithm()).collect())
            .unwrap_or_default();
        if algorithms.is_empty() {
            algorithms.push(Algorithm::Sha256);
        }
        let mut hasher = if algorithms.len() == 1 {
            MultiHasher::offloaded(&algorithms)
        } else {
            MultiHasher::new(&algorithms)
        };
        let mut stream = source.read_stream(Extent::new(0, source.len())).await?;
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(chunk);
        }
        let digests = hasher.finish()?;
        if let Some(mf) = self.manifest() {
            mf.verify(name, &digests)?;
        }
        Ok(digests)
    }

    /// Checks every digest the manifest lists, hashing the entries
    /// concurrently (as many at a time as the machine has cores); returns
    /// the verified entries with their digests.
    ///
    /// Fails with [`Error::InvalidData`] when the archive has no manifest,
    /// and with the first mismatch as an [`Error::Integrity`] otherwise.
    pub async fn verify(&self) -> Result<Vec<(String, Digests)>> {
        let Some(mf) = self.manifest() else {
            return Err(Error::invalid_data(
                format!("OVA '{}'", self.path.display()),
                "it has no manifest to verify against",
            ));
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let names: Vec<String> = mf.names().into_iter().map(str::to_owned).collect();
        futures::stream::iter(names)
            .map(|name| async move {
                let digests = self.verify_entry(&name).await?;
                Ok::<_, Error>((name, digests))
            })
            .buffered(parallel)
            .try_collect()
            .await
    }
}

/// One entry of an indexed OVA as a [`BlockSource`]: offsets are relative
/// to the entry's first data byte. Cheap to clone; clones share the open
/// file.
#[derive(Debug, Clone)]
pub struct EntrySource {
    file: Arc<FileSource>,
    name: String,
    offset: u64,
    len: u64,
}

#[async_trait]
impl BlockSource for EntrySource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        self.file
            .read_range(Extent::new(self.offset + range.offset, range.length))
            .await
    }

    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        check_range(self, range)?;
        self.file
            .read_stream(Extent::new(self.offset + range.offset, range.length))
            .await
    }

    /// The whole entry: data inside a tar has no holes to report.
    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        Ok(None)
    }
}

/// Reads up to `n` bytes at `pos`, fewer at the end of the file.
async fn read_upto(file: &FileSource, pos: u64, n: u64) -> Result<Bytes> {
    let n = n.min(file.len().saturating_sub(pos));
    if n == 0 {
        return Ok(Bytes::new());
    }
    file.read_range(Extent::new(pos, n)).await
}

/// Names the archive file in a structural error of the decoder (which
/// calls it "archive").
fn rename_archive(e: Error, object: &str) -> Error {
    match e {
        Error::InvalidData {
            object: o,
            message,
            source,
        } if o == "archive" => Error::InvalidData {
            object: object.to_string(),
            message,
            source,
        },
        other => other,
    }
}
