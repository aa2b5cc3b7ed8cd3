//! Conversions on the decode side: a VMDK to a raw image, written sparsely
//! and atomically, with digests of the raw image computed on the way.
//!
//! - [`write_grains`]: a [`StreamDecoder`]'s grains into any
//!   [`BlockSink`], skipping all-zero grains, hashing the whole raw image
//!   in order (holes hashed as zeros without any I/O).
//! - [`vmdk_to_raw`]: a streamOptimized stream (any `AsyncRead`) to a
//!   sparse raw file: `<path>.part` renamed into place only when complete;
//!   on any error the `.part` file is removed and `path` is untouched.
//! - [`hash_raw`]: the digests of the raw image of a stream, nothing
//!   written.
//! - [`hosted_to_raw`]: a [`HostedDisk`] (monolithicSparse,
//!   twoGbMaxExtentSparse, flat) to a sparse raw file through core's copy
//!   engine; [`vmdk_file_to_raw`] picks the reader from the file itself.
//! - [`ova_to_raw`]: every VMDK disk of an OVA read as a stream (no
//!   seeking, no temp file) into `<out_dir>/<stem>.raw`; streamOptimized
//!   disks are decoded straight from the archive, entry digests checked by
//!   the reader. [`ova_file_to_raw`] does the same for an OVA file through
//!   its index, which also reads hosted sparse disks (random access inside
//!   the archive).
//!
//! raw → VMDK is the encoder's side: [`super::encode`].
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(async {
//! use hypersdk_core::digest::Algorithm;
//! use hypersdk_ova::vmdk::convert::{RawOptions, vmdk_to_raw};
//! use hypersdk_ova::vmdk::format::{Marker, MarkerType, SparseHeader};
//!
//! // An empty 1 MiB streamOptimized disk: header and end-of-stream only.
//! let mut header = SparseHeader::stream(2048, 128);
//! header.descriptor_offset = 0;
//! header.overhead = 1;
//! let mut vmdk = header.to_bytes().to_vec();
//! vmdk.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
//! vmdk.extend_from_slice(&header.to_bytes());
//! vmdk.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
//!
//! let dir = tempfile::tempdir().unwrap();
//! let out = dir.path().join("disk.raw");
//! let report = vmdk_to_raw(&vmdk[..], &out, &RawOptions::default()).await?;
//! assert_eq!((report.capacity, report.data_bytes), (1 << 20, 0));
//! assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 20);
//! let sha = report.digests.get(Algorithm::Sha256).unwrap().to_hex();
//! assert_eq!(&sha[..8], "30e14955"); // sha256 of 1 MiB of zeros
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use hypersdk_core::blocks::{
    BlockSink, BlockSource, CopyOptions, CopyReport, SparseFile, copy_extents, copy_to_file,
    is_all_zero,
};
use hypersdk_core::digest::{Algorithm, Digests, MultiHasher};
use hypersdk_core::model::Extent;
use hypersdk_core::model::ExtentList;
use hypersdk_core::{Error, Result};
use tokio::io::AsyncRead;

use super::decode::{DecodeOptions, DecodeStats, Grain, StreamDecoder};
use super::format::{MAGIC, SECTOR, SparseHeader};
use super::sparse::HostedDisk;
use crate::archive::{OvaIndex, OvaReader};

/// How a conversion to raw runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawOptions {
    /// Digests of the raw image to compute (holes hashed as zeros).
    /// Default: SHA-256.
    pub digests: Vec<Algorithm>,
    /// How the stream is decoded (its name in errors, the lookahead).
    pub decode: DecodeOptions,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            digests: vec![Algorithm::Sha256],
            decode: DecodeOptions::default(),
        }
    }
}

impl RawOptions {
    /// Sets the digests to compute (empty: none).
    #[must_use]
    pub fn with_digests(mut self, algorithms: &[Algorithm]) -> Self {
        self.digests = algorithms.to_vec();
        self
    }

    /// Sets the decoding options.
    #[must_use]
    pub fn with_decode(mut self, decode: DecodeOptions) -> Self {
        self.decode = decode;
        self
    }
}

/// What a conversion to raw did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawReport {
    /// The raw image's length: the disk's virtual capacity.
    pub capacity: u64,
    /// Bytes of non-zero data handed to the sink (the rest are holes).
    pub data_bytes: u64,
    /// Grains decoded (for a hosted disk: allocated bytes read).
    pub grains: u64,
    /// Digests of the whole raw image, as [`RawOptions::digests`] asked.
    pub digests: Digests,
    /// The stream decoder's counters (default for hosted disks).
    pub stats: DecodeStats,
    /// The file written, when the conversion wrote one.
    pub path: Option<PathBuf>,
}

/// The largest write handed to the sink: adjacent non-zero grains are
/// gathered up to this size.
const WRITE_BATCH: usize = 1 << 20;

/// The most grains queued between decoding and writing (and between
/// writing and hashing).
const QUEUE: usize = 32;

/// The most decompressed bytes each of those queues holds: with large
/// grains the queues get shorter (at least one grain).
const QUEUE_BYTES: u64 = 16 << 20;

/// Holes are handed to the hashing thread in pieces of at most this many
/// bytes, so that a cancelled conversion stops hashing soon.
const ZERO_CHUNK: u64 = 64 << 20;

/// Sets a flag when dropped: tells the hashing thread to stop when the
/// conversion's future is dropped or fails.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes the grains of `decoder` into `sink` (at least the decoder's
/// capacity long), skipping all-zero grains, and returns the digests of
/// the raw image. A sink that does not start zeroed
/// ([`BlockSink::starts_zeroed`]) gets holes punched where the image has
/// no data, so it reads back as the raw image too.
///
/// Decoding, hashing (on a thread of its own) and writing overlap; the
/// queues between them hold at most a few tens of MiB whatever the grain
/// size. On an error, what was written stays in the sink: the caller
/// aborts it (as [`vmdk_to_raw`] does). Dropping the future stops the
/// hashing thread within one 1 MiB step.
pub async fn write_grains<R: AsyncRead + Unpin>(
    mut decoder: StreamDecoder<R>,
    sink: &dyn BlockSink,
    algorithms: &[Algorithm],
) -> Result<RawReport> {
    let capacity = decoder.capacity();
    if sink.len() < capacity {
        return Err(Error::invalid_input(format!(
            "{} is {} bytes long, the disk needs {capacity}",
            sink.describe(),
            sink.len()
        )));
    }
    let queue = (QUEUE_BYTES / decoder.grain_bytes().max(1)).clamp(1, QUEUE as u64) as usize;
    let zeroed = sink.starts_zeroed();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Grain>(queue);
    let produce = async move {
        while let Some(g) = decoder.next_grain().await? {
            if tx.send(g).await.is_err() {
                // The writer stopped on an error of its own.
                break;
            }
        }
        Ok::<_, Error>(decoder.stats())
    };
    // Hashing runs on a blocking thread fed through a bounded channel, so
    // a slow hash waits asynchronously and never stalls decoding.
    let (htx, mut hrx) = tokio::sync::mpsc::channel::<HashInput>(queue);
    let algorithms = algorithms.to_vec();
    let hashing = !algorithms.is_empty();
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = MultiHasher::new(&algorithms);
        while let Some(input) = hrx.blocking_recv() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::other("hashing cancelled"));
            }
            match input {
                HashInput::Data(b) => hasher.update(b),
                HashInput::Zeros(n) => hash_zeros(&mut hasher, n, &cancel)?,
            }
        }
        hasher.finish()
    });
    let consume = async move {
        let hash = |input: HashInput| {
            let htx = &htx;
            async move {
                if !hashing {
                    return Ok(());
                }
                let send = async |p: HashInput| {
                    htx.send(p)
                        .await
                        .map_err(|_| Error::other("the hashing thread stopped"))
                };
                match input {
                    HashInput::Zeros(mut n) => {
                        while n > 0 {
                            let k = n.min(ZERO_CHUNK);
                            send(HashInput::Zeros(k)).await?;
                            n -= k;
                        }
                    }
                    data => send(data).await?,
                }
                Ok(())
            }
        };
        // Holes in a sink that does not start zeroed are punched.
        let clear = |from: u64, to: u64| async move {
            if !zeroed && to > from {
                sink.punch_hole(Extent::new(from, to - from)).await?;
            }
            Ok::<_, Error>(())
        };
        let mut hashed = 0u64;
        let mut data_bytes = 0u64;
        let mut grains = 0u64;
        let mut batch = BytesMut::new();
        let mut batch_at = 0u64;
        while let Some(g) = rx.recv().await {
            grains += 1;
            if g.offset > hashed {
                hash(HashInput::Zeros(g.offset - hashed)).await?;
                clear(hashed, g.offset).await?;
            }
            hash(HashInput::Data(g.data.clone())).await?;
            hashed = g.end();
            if is_all_zero(&g.data) {
                clear(g.offset, g.end()).await?;
                continue;
            }
            data_bytes += g.data.len() as u64;
            if !batch.is_empty()
                && (batch_at + batch.len() as u64 != g.offset || batch.len() >= WRITE_BATCH)
            {
                sink.write_at(batch_at, batch.split().freeze()).await?;
            }
            if batch.is_empty() {
                batch_at = g.offset;
                batch.reserve(WRITE_BATCH + g.data.len());
            }
            batch.extend_from_slice(&g.data);
        }
        if !batch.is_empty() {
            sink.write_at(batch_at, batch.split().freeze()).await?;
        }
        if capacity > hashed {
            hash(HashInput::Zeros(capacity - hashed)).await?;
            clear(hashed, capacity).await?;
        }
        Ok::<_, Error>((data_bytes, grains))
    };
    let (stats, (data_bytes, grains)) = futures::future::try_join(produce, consume).await?;
    let digests = hasher
        .await
        .map_err(|e| Error::other(format!("the hashing thread failed: {e}")))??;
    Ok(RawReport {
        capacity,
        data_bytes,
        grains,
        digests,
        stats,
        path: None,
    })
}

/// What the hashing thread is fed.
enum HashInput {
    Data(Bytes),
    Zeros(u64),
}

/// Feeds `len` zero bytes from a static buffer, stopping if `cancel` is
/// set.
fn hash_zeros(hasher: &mut MultiHasher, mut len: u64, cancel: &AtomicBool) -> Result<()> {
    static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
    while len > 0 {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::other("hashing cancelled"));
        }
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(Bytes::from_static(&ZEROS[..n]));
        len -= n as u64;
    }
    Ok(())
}

/// Decodes the streamOptimized VMDK read from `reader` into a sparse raw
/// file at `path` (via `<path>.part`, renamed when complete and synced).
///
/// On any error — bad header, corrupt or truncated stream, I/O — the
/// `.part` file is removed and `path` is untouched.
pub async fn vmdk_to_raw<R: AsyncRead + Unpin>(
    reader: R,
    path: impl AsRef<Path>,
    options: &RawOptions,
) -> Result<RawReport> {
    let decoder = StreamDecoder::with_options(reader, options.decode.clone()).await?;
    decoder_to_raw(decoder, path.as_ref(), &options.digests).await
}

/// [`write_grains`] into a new [`SparseFile`], committed or aborted.
async fn decoder_to_raw<R: AsyncRead + Unpin>(
    decoder: StreamDecoder<R>,
    path: &Path,
    algorithms: &[Algorithm],
) -> Result<RawReport> {
    let sink = SparseFile::create(path, decoder.capacity()).await?;
    match write_grains(decoder, &sink, algorithms).await {
        Ok(mut report) => {
            report.path = Some(sink.commit().await?);
            Ok(report)
        }
        Err(e) => {
            abort_quietly(sink).await;
            Err(e)
        }
    }
}

/// A sink that keeps nothing: for hashing the raw image only.
#[derive(Debug)]
struct NullSink(u64);

#[async_trait::async_trait]
impl BlockSink for NullSink {
    fn describe(&self) -> String {
        "nowhere".into()
    }
    fn len(&self) -> u64 {
        self.0
    }
    async fn write_at(&self, _offset: u64, _data: Bytes) -> Result<()> {
        Ok(())
    }
    async fn punch_hole(&self, _range: Extent) -> Result<()> {
        Ok(())
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    async fn read_back(&self, range: Extent) -> Result<Bytes> {
        Ok(Bytes::from(vec![0u8; range.length as usize]))
    }
    fn starts_zeroed(&self) -> bool {
        true
    }
}

/// Decodes the stream and returns the digests of its raw image, writing
/// nothing (what a verification of a VMDK against a raw checksum needs).
pub async fn hash_raw<R: AsyncRead + Unpin>(reader: R, options: &RawOptions) -> Result<RawReport> {
    let decoder = StreamDecoder::with_options(reader, options.decode.clone()).await?;
    let sink = NullSink(decoder.capacity());
    write_grains(decoder, &sink, &options.digests).await
}

/// Copies a hosted disk (see [`HostedDisk`]) to a sparse raw file at
/// `path` through core's copy engine: only allocated grains are read,
/// holes stay holes, the digests cover the whole image.
pub async fn hosted_to_raw(
    disk: &HostedDisk,
    path: impl AsRef<Path>,
    options: &RawOptions,
) -> Result<RawReport> {
    let copy = CopyOptions::default()
        .with_digests(&options.digests)
        .with_item(disk.describe());
    let report = copy_to_file(disk, path.as_ref(), None, None, None, &copy).await?;
    hosted_report(disk, report, Some(path.as_ref().to_path_buf()))
}

/// Converts the VMDK at `path` to a raw image at `out`, choosing the reader
/// from the file: a streamOptimized extent is decoded as a stream; a
/// hosted sparse extent or a text descriptor (monolithicSparse,
/// twoGbMaxExtentSparse, flat, vmfs) is read by random access.
pub async fn vmdk_file_to_raw(
    path: impl AsRef<Path>,
    out: impl AsRef<Path>,
    options: &RawOptions,
) -> Result<RawReport> {
    let path = path.as_ref();
    let object = format!("'{}'", path.display());
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(object.as_str(), e))?;
    let mut head = [0u8; SECTOR as usize];
    let n = read_full(&mut file, &mut head)
        .await
        .map_err(|e| Error::io(object.as_str(), e))?;
    if is_stream_header(&head[..n]) {
        drop(file);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(object.as_str(), e))?;
        let decode = options.decode.clone().with_name(object);
        let reader = tokio::io::BufReader::with_capacity(1 << 20, file);
        let decoder = StreamDecoder::with_options(reader, decode).await?;
        return decoder_to_raw(decoder, out.as_ref(), &options.digests).await;
    }
    let disk = HostedDisk::open_path(path).await?;
    hosted_to_raw(&disk, out, options).await
}

/// Whether `head` is the header of a streamOptimized extent (markers and
/// compression).
fn is_stream_header(head: &[u8]) -> bool {
    head.len() >= SECTOR as usize
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == MAGIC
        && SparseHeader::parse("", head).is_ok_and(|h| h.has_markers() && h.is_compressed())
}

/// Whether `head` is the header of a hosted sparse extent (the magic,
/// without markers or without compression).
fn is_hosted_sparse_header(head: &[u8]) -> bool {
    head.len() >= SECTOR as usize
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == MAGIC
        && SparseHeader::parse("", head).is_ok_and(|h| !(h.has_markers() && h.is_compressed()))
}

async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// One disk converted out of an OVA.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OvaDisk {
    /// The entry's name in the archive.
    pub entry: String,
    /// What the conversion did; `report.path` is the raw file.
    pub report: RawReport,
}

/// Whether an entry name is a VMDK disk's.
fn is_vmdk_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".vmdk")
}

/// Records that entry `name` writes `out`; two entries that would write
/// the same file (`a/disk.vmdk` and `b/DISK.vmdk`: names compared without
/// case, as on case-insensitive file systems) are refused.
fn claim_output(claimed: &mut HashMap<String, String>, out: &Path, name: &str) -> Result<()> {
    let key = out.to_string_lossy().to_lowercase();
    if let Some(first) = claimed.insert(key, name.to_owned()) {
        return Err(Error::invalid_data(
            format!("entry '{name}'"),
            format!(
                "its raw image would be {}, the same file as entry '{first}''s: \
                 the OVA's disks need distinct file names",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// `<out_dir>/<stem>.raw` for entry `name`.
fn raw_path(out_dir: &Path, name: &str) -> Result<PathBuf> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.len().checked_sub(5).map_or(file, |cut| &file[..cut]);
    if stem.is_empty() || stem == "." || stem == ".." {
        return Err(Error::invalid_data(
            format!("entry '{name}'"),
            "no usable file name for the raw image",
        ));
    }
    Ok(out_dir.join(format!("{stem}.raw")))
}

/// Reads an OVA from `reader` as a stream and decodes every `.vmdk` entry
/// (streamOptimized) straight from the archive into `<out_dir>/<stem>.raw`:
/// no temp file, no seeking. Entry digests listed in a manifest that
/// precedes the disks are checked as the entries are read (a mismatch
/// fails the conversion and its raw file is not created); the archive is
/// read to its end and checked as [`OvaReader::finish`] does. The raw
/// images are renamed into place only once the whole archive checked out
/// (a manifest after the disks is checked at the end); on any error none
/// is left, not even a `.part` file.
///
/// A hosted sparse disk (monolithicSparse) cannot be read without seeking:
/// it is an [`Error::Unsupported`] naming [`ova_file_to_raw`], which reads
/// it through the archive's index.
pub async fn ova_to_raw<R: AsyncRead + Unpin>(
    reader: R,
    out_dir: impl AsRef<Path>,
    options: &RawOptions,
) -> Result<Vec<OvaDisk>> {
    let out_dir = out_dir.as_ref();
    let mut ova = OvaReader::new(reader);
    // Images are committed only once the whole archive checked out (a
    // manifest after the disks is only known at the end).
    let mut done: Vec<(SparseFile, String, RawReport)> = Vec::new();
    let mut outputs = HashMap::new();
    let result = async {
        while let Some(entry) = ova.next_entry().await? {
            if !is_vmdk_name(&entry.name) {
                continue;
            }
            let object = format!("entry '{}'", entry.name);
            let out = raw_path(out_dir, &entry.name)?;
            claim_output(&mut outputs, &out, &entry.name)?;
            let decode = options.decode.clone().with_name(object.clone());
            // Sniff the header: a hosted sparse extent (magic, but no
            // markers or no compression) needs random access.
            let mut head = [0u8; SECTOR as usize];
            let n = read_full(&mut ova.entry_reader(), &mut head)
                .await
                .map_err(|e| super::decode::read_error(&object, e))?;
            if is_hosted_sparse_header(&head[..n]) {
                return Err(Error::unsupported(
                    format!(
                        "decoding the hosted sparse disk {object} from a stream (use ova_file_to_raw)"
                    ),
                    "hypersdk-ova",
                ));
            }
            let reader = tokio::io::AsyncReadExt::chain(&head[..n], ova.entry_reader());
            let decoder = StreamDecoder::with_options(reader, decode).await?;
            let sink = SparseFile::create(&out, decoder.capacity()).await?;
            let mut result = write_grains(decoder, &sink, &options.digests).await;
            if result.is_ok() {
                // Read the rest of the entry so its digest is checked.
                if let Err(e) = drain_entry(&mut ova).await {
                    result = Err(e);
                }
            }
            match result {
                Ok(report) => done.push((sink, entry.name, report)),
                Err(e) => {
                    abort_quietly(sink).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
    .await;
    let result = match result {
        Ok(()) => ova.finish().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        for (sink, _, _) in done {
            abort_quietly(sink).await;
        }
        return Err(e);
    }
    commit_all(done).await
}

/// Removes a partial image, logging (not returning) a failure to.
async fn abort_quietly(sink: SparseFile) {
    if let Err(abort) = sink.abort().await {
        tracing::warn!(error = %abort, "cannot remove the partial raw image");
    }
}

/// Reads the rest of the current entry (checking its digest).
async fn drain_entry<R: AsyncRead + Unpin>(ova: &mut OvaReader<R>) -> Result<()> {
    while ova.read_chunk().await?.is_some() {}
    Ok(())
}

/// Decodes every `.vmdk` entry of the OVA file at `path` into
/// `<out_dir>/<stem>.raw`, through the archive's index: streamOptimized
/// entries are decoded as streams, hosted sparse ones (monolithicSparse,
/// as the forklift and qemu-made OVAs hold) by random access inside the
/// archive. Entries the manifest lists are verified first.
///
/// All or nothing: two entries that would write the same raw file are
/// refused before anything is written, and the images are renamed into
/// place only once every disk converted; on any error none is left, not
/// even a `.part` file.
pub async fn ova_file_to_raw(
    path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    options: &RawOptions,
) -> Result<Vec<OvaDisk>> {
    let index = OvaIndex::open(path.as_ref()).await?;
    let out_dir = out_dir.as_ref();
    let mut outputs = HashMap::new();
    let mut jobs = Vec::new();
    for e in index.entries().iter().filter(|e| is_vmdk_name(&e.name)) {
        let out = raw_path(out_dir, &e.name)?;
        claim_output(&mut outputs, &out, &e.name)?;
        jobs.push((e.name.clone(), out));
    }
    let mut done: Vec<(SparseFile, String, RawReport)> = Vec::new();
    let result = async {
        for (name, out) in jobs {
            if index.manifest().is_some_and(|m| m.contains(&name)) {
                index.verify_entry(&name).await?;
            }
            let source = Arc::new(index.open_entry(&name)?);
            let head = source
                .read_range(Extent::new(0, SECTOR.min(source.len())))
                .await?;
            if is_stream_header(&head) {
                let chunks = source
                    .read_stream(Extent::new(0, source.len()))
                    .await?
                    .map_err(std::io::Error::other);
                let reader = tokio_util::io::StreamReader::new(chunks);
                let decode = options.decode.clone().with_name(source.describe());
                let decoder = StreamDecoder::with_options(reader, decode).await?;
                let sink = SparseFile::create(&out, decoder.capacity()).await?;
                match write_grains(decoder, &sink, &options.digests).await {
                    Ok(report) => done.push((sink, name, report)),
                    Err(e) => {
                        abort_quietly(sink).await;
                        return Err(e);
                    }
                }
            } else {
                let disk = HostedDisk::open_extent(source).await?;
                let sink = SparseFile::create(&out, disk.len()).await?;
                match hosted_into(&disk, &sink, options).await {
                    Ok(report) => done.push((sink, name, report)),
                    Err(e) => {
                        abort_quietly(sink).await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for (sink, _, _) in done {
            abort_quietly(sink).await;
        }
        return Err(e);
    }
    commit_all(done).await
}

/// Renames every image into place (a failure aborts the ones not yet
/// committed).
async fn commit_all(done: Vec<(SparseFile, String, RawReport)>) -> Result<Vec<OvaDisk>> {
    let mut disks = Vec::with_capacity(done.len());
    let mut left = done.into_iter();
    while let Some((sink, entry, mut report)) = left.next() {
        match sink.commit().await {
            Ok(path) => report.path = Some(path),
            Err(e) => {
                for (sink, _, _) in left {
                    abort_quietly(sink).await;
                }
                return Err(e);
            }
        }
        disks.push(OvaDisk { entry, report });
    }
    Ok(disks)
}

/// Copies the allocated ranges of a hosted disk into `sink` (fresh,
/// zeroed), hashing the whole image.
async fn hosted_into(
    disk: &HostedDisk,
    sink: &SparseFile,
    options: &RawOptions,
) -> Result<RawReport> {
    let copy = CopyOptions::default()
        .with_digests(&options.digests)
        .with_item(disk.describe());
    let extents = disk
        .allocated_extents()
        .await?
        .unwrap_or_else(|| ExtentList::full(disk.len()));
    let report = copy_extents(disk, sink, &extents, None, None, &copy).await?;
    hosted_report(disk, report, None)
}

/// The report of a hosted-disk copy done by core's copy engine.
fn hosted_report(
    disk: &HostedDisk,
    report: CopyReport,
    path: Option<PathBuf>,
) -> Result<RawReport> {
    let digests = match report.digests {
        Some(d) => d,
        None => MultiHasher::new(&[]).finish()?,
    };
    Ok(RawReport {
        capacity: disk.len(),
        data_bytes: report.bytes_fetched,
        grains: report.ranges,
        digests,
        stats: DecodeStats::default(),
        path,
    })
}
