//! The streamOptimized decoder: any [`AsyncRead`], read once from start to
//! end without seeking, turned into the disk's grains in increasing order.
//!
//! [`StreamDecoder::new`] reads and checks the header and the embedded
//! descriptor; [`StreamDecoder::next_grain`] (or the stream of
//! [`StreamDecoder::into_stream`]) then yields every stored grain as a
//! [`Grain`]: its byte offset in the virtual disk and its decompressed
//! bytes (exactly the grain size, except a last grain cut short by a
//! capacity that is not a multiple of it). Ranges without a grain read as
//! zeros. The stream ends at the end-of-stream marker; grain tables, the
//! grain directory and progress markers are skipped, and a footer is
//! checked against the header. A header whose `gdOffset` is
//! [`GD_AT_END`] promises a footer: an end-of-stream marker (an all-zero
//! sector, as a zeroed tail of a partial download also reads) before one
//! is a truncation. After the marker only zero padding may follow, up to
//! the end of the input. A stream without an end-of-stream marker
//! (as `qemu-img convert -o subformat=streamOptimized` writes without `-c`)
//! is accepted only when the grain tables its writer preallocated in the
//! overhead list exactly the grains read; otherwise it is truncated.
//!
//! What real writers do is accepted (see the crate's `testdata/SOURCES.md`):
//! header versions 1 to 3, `gdOffset` either [`GD_AT_END`] or a real
//! offset with the grain directory and tables preallocated in the overhead,
//! streams with or without grain-table, directory and footer blocks, zlib
//! wrappers `78 01` and `78 9c` (raw DEFLATE too), and compressed grains
//! larger than the grain (zlib stored blocks).
//!
//! What is refused, each with an [`Error::InvalidData`] naming the input and
//! the byte offset: a header that is not a streamOptimized one or whose
//! numbers are absurd (checked before anything is sized from them), grains
//! outside the capacity, not aligned or not in increasing order, a
//! compressed size beyond [`max_compressed_len`] (refused before reading
//! it), corrupt compressed data or data that does not decompress to exactly
//! the grain, a footer that disagrees with the header, and input that ends
//! before the end-of-stream marker. On a truncated stream the complete
//! grains before the cut are yielded first, then the error: a partial
//! recovery is possible, a silent success is not.
//!
//! Grains are inflated on tokio's blocking pool in batches of about
//! 512 KiB, several batches at once (see [`DecodeOptions::lookahead`]), and
//! handed out in stream order.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use hypersdk_ova::vmdk::decode::StreamDecoder;
//! use hypersdk_ova::vmdk::format::{GRAIN_MARKER_LEN, Marker, MarkerType, SparseHeader};
//! use std::io::Write;
//!
//! // A 1 MiB disk whose second 64 KiB grain is all 7s.
//! let mut header = SparseHeader::stream(2048, 128);
//! header.descriptor_offset = 0;
//! header.overhead = 1;
//! let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
//! z.write_all(&[7u8; 65536]).unwrap();
//! let deflated = z.finish().unwrap();
//! let mut vmdk = header.to_bytes().to_vec();
//! vmdk.extend_from_slice(&Marker::grain_header(128, deflated.len() as u32));
//! vmdk.extend_from_slice(&deflated);
//! vmdk.resize(vmdk.len().next_multiple_of(512), 0);
//! // The header defers the grain directory to the end: a footer is due.
//! vmdk.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
//! vmdk.extend_from_slice(&header.to_bytes());
//! vmdk.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
//!
//! let mut dec = StreamDecoder::new(&vmdk[..]).await?;
//! assert_eq!(dec.capacity(), 1 << 20);
//! let grain = dec.next_grain().await?.expect("one grain");
//! assert_eq!((grain.offset, grain.data.len()), (65536, 65536));
//! assert!(grain.data.iter().all(|&b| b == 7));
//! assert!(dec.next_grain().await?.is_none());
//!
//! // Cut before the end-of-stream marker: the grain, then an error.
//! let cut = &vmdk[..vmdk.len() - 512];
//! let mut dec = StreamDecoder::new(cut).await?;
//! assert!(dec.next_grain().await?.is_some());
//! let e = dec.next_grain().await.unwrap_err();
//! assert!(e.to_string().contains("truncated"), "{e}");
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use hypersdk_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use super::format::{
    COMPRESS_DEFLATE, Descriptor, FLAG_ZEROED_GTE, GD_AT_END, GRAIN_MARKER_LEN,
    MAX_DESCRIPTOR_SECTORS, Marker, MarkerType, SECTOR, SparseHeader,
};

/// One stored grain of the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grain {
    /// Where the grain starts in the virtual disk, in bytes.
    pub offset: u64,
    /// The decompressed bytes: the grain size, or less for a last grain cut
    /// by the capacity.
    pub data: Bytes,
}

impl Grain {
    /// The byte just past the grain.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// How a [`StreamDecoder`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DecodeOptions {
    /// How the input is named in errors. Default `"VMDK stream"`.
    pub name: String,
    /// Batches of grains (about 512 KiB decompressed each, at least one
    /// grain) read ahead and inflated at once on the blocking pool, at
    /// least 1; capped so that no more than 64 MiB of grains are in
    /// flight. Default: twice the available parallelism, at least 4.
    pub lookahead: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        DecodeOptions {
            name: "VMDK stream".into(),
            lookahead: (2 * cores).max(4),
        }
    }
}

impl DecodeOptions {
    /// Names the input in errors (a file or entry name).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets [`DecodeOptions::lookahead`] (0 counts as 1).
    #[must_use]
    pub fn with_lookahead(mut self, batches: usize) -> Self {
        self.lookahead = batches.max(1);
        self
    }
}

/// What a decoder has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeStats {
    /// Grains yielded.
    pub grains: u64,
    /// Compressed bytes of those grains (without markers).
    pub compressed_bytes: u64,
    /// Decompressed bytes of those grains.
    pub grain_bytes: u64,
    /// Grain-table blocks skipped.
    pub grain_tables: u64,
    /// Whether a grain directory block was seen.
    pub grain_directory: bool,
    /// Whether a footer was seen (and matched the header).
    pub footer: bool,
    /// Whether the end-of-stream marker was reached.
    pub end_of_stream: bool,
    /// Whether the stream ended without an end-of-stream marker and was
    /// accepted because the grain tables preallocated in its overhead list
    /// exactly the grains read (`qemu-img convert` without `-c` writes such
    /// streams).
    pub ended_by_index: bool,
    /// Input bytes consumed.
    pub bytes_read: u64,
}

/// The largest compressed grain accepted for a grain of `grain_bytes`:
/// twice the grain plus 4 KiB. zlib's worst case (stored blocks, as some
/// writers use) is the grain plus 5 bytes per 64 KiB plus 6; anything far
/// beyond is refused before it is read.
pub fn max_compressed_len(grain_bytes: u64) -> u64 {
    grain_bytes * 2 + 4096
}

/// Inflates one compressed grain into exactly `expected` bytes.
///
/// The data may carry a zlib wrapper (as every real writer's does: `78 01`,
/// `78 9c`, …; its Adler-32 is checked) or be raw DEFLATE (as the technote
/// says). Data that is corrupt, ends early, or decompresses to fewer or more
/// than `expected` bytes is an [`Error::InvalidData`] naming `object` and
/// the byte `offset` of the grain's marker.
///
/// ```
/// use std::io::Write;
/// use hypersdk_ova::vmdk::decode::inflate_grain;
///
/// let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
/// z.write_all(&[1u8; 4096]).unwrap();
/// let packed = z.finish().unwrap();
/// assert_eq!(inflate_grain("t", &packed, 4096, 0)?, vec![1u8; 4096]);
/// assert!(inflate_grain("t", &packed, 8192, 0).is_err()); // too short
/// assert!(inflate_grain("t", &packed[..packed.len() - 3], 4096, 0).is_err());
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
pub fn inflate_grain(
    object: &str,
    compressed: &[u8],
    expected: usize,
    offset: u64,
) -> Result<Vec<u8>> {
    let bad = |msg: String| {
        Error::invalid_data(
            object,
            format!("compressed grain at offset {offset}: {msg}"),
        )
    };
    let zlib = compressed.len() >= 2
        && compressed[0] & 0x0f == 8
        && compressed[0] >> 4 <= 7
        && (u16::from(compressed[0]) << 8 | u16::from(compressed[1])) % 31 == 0;
    let body = compressed;
    let mut z = flate2::Decompress::new(zlib);
    let mut out = Vec::with_capacity(expected);
    loop {
        let before_in = z.total_in();
        let before_out = z.total_out();
        let input = &body[z.total_in() as usize..];
        let status = z
            .decompress_vec(input, &mut out, flate2::FlushDecompress::Finish)
            .map_err(|e| bad(format!("corrupt data ({e})")))?;
        match status {
            flate2::Status::StreamEnd => break,
            _ if out.len() == expected => {
                // Full: anything more than an empty end is too much.
                let mut probe = [0u8; 1];
                let rest = &body[z.total_in() as usize..];
                let more = z
                    .decompress(rest, &mut probe, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(format!("corrupt data ({e})")))?;
                if z.total_out() as usize > expected {
                    return Err(bad(format!(
                        "decompresses to more than the {expected} bytes of the grain"
                    )));
                }
                if more == flate2::Status::StreamEnd {
                    break;
                }
                if z.total_in() as usize >= body.len() {
                    return Err(bad("the compressed data ends early".into()));
                }
            }
            _ if z.total_in() == before_in && z.total_out() == before_out => {
                return Err(bad(format!(
                    "the compressed data ends early ({} of {expected} bytes decompressed)",
                    out.len()
                )));
            }
            _ => {}
        }
    }
    if out.len() != expected {
        return Err(bad(format!(
            "decompresses to {} bytes instead of {expected}",
            out.len()
        )));
    }
    Ok(out)
}

/// A grain read but not yet inflated.
struct Staged {
    offset: u64,
    compressed: Bytes,
    expected: usize,
    marker_at: u64,
}

/// A batch of grains being inflated: the grains in order, stopping at the
/// first error.
type Job = JoinHandle<Vec<Result<Grain>>>;

/// Grains are handed to the blocking pool in batches of this many
/// decompressed bytes (at least one grain).
const BATCH_BYTES: usize = 512 << 10;

/// The streamOptimized decoder; see the [module docs](self).
pub struct StreamDecoder<R> {
    reader: R,
    object: String,
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    pos: u64,
    eof: bool,
    header: SparseHeader,
    descriptor: Option<Descriptor>,
    lookahead: usize,
    /// Grains read, waiting to be sent to the pool as one batch.
    staged: Vec<Staged>,
    staged_bytes: usize,
    /// Batches being inflated, in stream order.
    pending: VecDeque<Job>,
    /// Inflated grains (or the error that stopped a batch), in order.
    ready: VecDeque<Result<Grain>>,
    /// An error met while reading ahead, returned once the grains before
    /// it are handed out.
    failed: Option<Error>,
    /// Set once the end-of-stream marker or an error was reached.
    done: bool,
    /// The sector after the last grain accepted (for order checks).
    next_lba: u64,
    /// The grain tables found in the overhead, if complete.
    index: Option<OverheadIndex>,
    /// Grains queued so far, and the offset of the last one's marker.
    grains_queued: u64,
    last_marker: Option<u64>,
    /// Set while a [`StreamDecoder::next_grain`] call runs; still set at
    /// the next call only if the previous one was dropped before it
    /// finished, which leaves the decoder unusable (poisoned).
    busy: bool,
    stats: DecodeStats,
}

/// What the grain tables preallocated in a stream's overhead list (qemu,
/// VMware and old VirtualBox writers fill them in): how many grains, and
/// the byte offset of the last grain's marker.
#[derive(Debug, Clone, Copy)]
struct OverheadIndex {
    grains: u64,
    last_marker: Option<u64>,
}

/// The largest grain directory read from an overhead (4 MiB: a 32 TiB disk
/// of 64 KiB grains).
const MAX_INDEX_GD_BYTES: u64 = 4 << 20;

impl<R> std::fmt::Debug for StreamDecoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("object", &self.object)
            .field("pos", &self.pos)
            .field("header", &self.header)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// How much input is read at once.
const READ_CHUNK: usize = 256 << 10;

/// The most grain bytes in flight at once.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;

impl<R: AsyncRead + Unpin> StreamDecoder<R> {
    /// Reads and checks the header and the embedded descriptor, with
    /// default [`DecodeOptions`].
    pub async fn new(reader: R) -> Result<Self> {
        Self::with_options(reader, DecodeOptions::default()).await
    }

    /// Reads and checks the header and the embedded descriptor.
    ///
    /// Fails with [`Error::InvalidData`] for a header that is not a
    /// streamOptimized one (no markers or not compressed: hosted sparse
    /// disks are read by [`super::sparse`]), whose numbers are out of range,
    /// whose overhead does not hold the descriptor or is absurdly large, and
    /// for a descriptor that does not parse; with [`Error::Io`] if reading
    /// fails.
    pub async fn with_options(reader: R, options: DecodeOptions) -> Result<Self> {
        let mut d = StreamDecoder {
            reader,
            object: options.name,
            buf: BytesMut::with_capacity(READ_CHUNK),
            pos: 0,
            eof: false,
            header: SparseHeader::stream(0, 128),
            descriptor: None,
            lookahead: options.lookahead.max(1),
            staged: Vec::new(),
            staged_bytes: 0,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            failed: None,
            done: false,
            next_lba: 0,
            index: None,
            grains_queued: 0,
            last_marker: None,
            busy: false,
            stats: DecodeStats::default(),
        };
        if !d.fill(SECTOR as usize).await? {
            return Err(d.truncated("the 512-byte header"));
        }
        let header = SparseHeader::parse(&d.object, &d.buf[..SECTOR as usize])?;
        d.header = header;
        d.check_header()?;
        let per_grain = header.grain_bytes().max(BATCH_BYTES as u64);
        d.lookahead = d
            .lookahead
            .min((MAX_IN_FLIGHT_BYTES / per_grain).max(1) as usize);
        d.consume(SECTOR as usize);
        if header.descriptor_offset != 0 && header.descriptor_size != 0 {
            // check_header bounded both by the overhead: no overflow.
            let at = header
                .descriptor_offset
                .checked_mul(SECTOR)
                .ok_or_else(|| Error::invalid_data(&d.object, "descriptor offset out of range"))?;
            d.skip_to(at).await?;
            let n = (header.descriptor_size * SECTOR) as usize;
            if !d.fill(n).await? {
                return Err(d.truncated("the embedded descriptor"));
            }
            let descriptor = Descriptor::parse(&d.object, &d.buf[..n])?;
            d.consume(n);
            d.descriptor = Some(descriptor);
        }
        d.read_overhead().await?;
        Ok(d)
    }

    /// Skips the overhead, reading on the way the grain directory and
    /// tables a writer preallocated there (when the header has a real
    /// `gdOffset` inside the overhead). They tell whether a stream that
    /// ends without an end-of-stream marker is complete: `qemu-img convert
    /// -O vmdk -o subformat=streamOptimized` without `-c` writes no marker.
    async fn read_overhead(&mut self) -> Result<()> {
        let h = self.header;
        let end = h.overhead * SECTOR;
        let gd_at = h.gd_offset.saturating_mul(SECTOR);
        let gd_len = h.gd_entries() * 4;
        if h.gd_offset == GD_AT_END
            || h.gd_offset == 0
            || gd_at < self.pos
            || gd_len > MAX_INDEX_GD_BYTES
            || gd_at.saturating_add(gd_len) > end
        {
            return self.skip_to(end).await;
        }
        self.skip_to(gd_at).await?;
        if !self.fill(gd_len as usize).await? {
            return Err(self.truncated("the grain directory in the overhead"));
        }
        let mut tables: Vec<u64> = self.buf[..gd_len as usize]
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])) * SECTOR)
            .filter(|&at| at != 0)
            .collect();
        self.consume(gd_len as usize);
        tables.sort_unstable();
        let gt_len = u64::from(h.num_gtes_per_gt) * 4;
        let mut index = OverheadIndex {
            grains: 0,
            last_marker: None,
        };
        let mut complete = true;
        let mut prev_end = self.pos;
        for at in tables {
            if at < prev_end || at + gt_len > end {
                complete = false;
                break;
            }
            self.skip_to(at).await?;
            if !self.fill(gt_len as usize).await? {
                return Err(self.truncated("a grain table in the overhead"));
            }
            for c in self.buf[..gt_len as usize].chunks_exact(4) {
                let gte = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let zeroed = gte == 1 && h.flags & FLAG_ZEROED_GTE != 0;
                if gte != 0 && !zeroed {
                    index.grains += 1;
                    let marker = u64::from(gte) * SECTOR;
                    index.last_marker = Some(index.last_marker.map_or(marker, |m| m.max(marker)));
                }
            }
            self.consume(gt_len as usize);
            prev_end = at + gt_len;
        }
        if complete {
            self.index = Some(index);
        }
        self.skip_to(end).await
    }

    fn check_header(&self) -> Result<()> {
        let h = &self.header;
        let bad = |msg: String| Error::invalid_data(&self.object, msg);
        if !h.has_markers() || !h.is_compressed() {
            return Err(bad(format!(
                "not a streamOptimized VMDK (flags {:#x} lack compressed grains or markers): \
                 a hosted sparse disk needs the seekable reader",
                h.flags
            )));
        }
        if h.compress_algorithm != COMPRESS_DEFLATE {
            return Err(bad(format!(
                "compressed grains with compression algorithm {}",
                h.compress_algorithm
            )));
        }
        if h.grain_size < 8 {
            return Err(bad(format!(
                "grain size of {} sectors is below the 8-sector minimum",
                h.grain_size
            )));
        }
        let desc_end = if h.descriptor_offset == 0 {
            1
        } else {
            if h.descriptor_offset < 1 {
                return Err(bad("the descriptor overlaps the header".into()));
            }
            h.descriptor_offset
                .checked_add(h.descriptor_size)
                .ok_or_else(|| bad("the descriptor's offset and size overflow".into()))?
        };
        // The overhead holds the header, the descriptor and at most two
        // preallocated copies of the grain directory and tables, rounded to
        // a grain; anything larger is not a VMDK writer's.
        let gt_sectors = (u64::from(h.num_gtes_per_gt) * 4).div_ceil(SECTOR);
        let gd_sectors = (h.gd_entries() * 4).div_ceil(SECTOR);
        let max_overhead = 1
            + MAX_DESCRIPTOR_SECTORS
            + 2 * (gd_sectors + h.gd_entries() * gt_sectors)
            + 2 * h.grain_size;
        if h.overhead < desc_end || h.overhead > max_overhead {
            return Err(bad(format!(
                "overhead of {} sectors is outside {desc_end}..={max_overhead} for this header",
                h.overhead
            )));
        }
        if h.gd_offset != GD_AT_END && h.gd_offset != 0 && h.gd_offset < desc_end {
            return Err(bad(format!(
                "grain directory at sector {} overlaps the header or descriptor",
                h.gd_offset
            )));
        }
        Ok(())
    }

    /// The header (the first sector).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The embedded descriptor, if the stream has one.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// The virtual capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity_bytes()
    }

    /// The grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_bytes()
    }

    /// What was decoded so far.
    pub fn stats(&self) -> DecodeStats {
        let mut s = self.stats;
        s.bytes_read = self.pos;
        s
    }

    /// The next grain, in increasing offset order; `None` after the
    /// end-of-stream marker. After an error the decoder is finished: later
    /// calls return `None`.
    ///
    /// # Cancellation
    ///
    /// Not cancel-safe: a call dropped before it finished (a lost
    /// `select!` branch, a `timeout`) may have consumed input or inflated
    /// grains it could not hand out, so the decoder is poisoned and every
    /// later call fails with an [`Error::Other`] saying so — never a grain
    /// after a silent gap. [`StreamDecoder::into_stream`]'s stream keeps a
    /// started call alive across dropped `next()` futures and is
    /// cancel-safe.
    pub async fn next_grain(&mut self) -> Result<Option<Grain>> {
        if self.busy {
            self.abandon();
            return Err(Error::other(format!(
                "{}: an earlier next_grain call was cancelled before it finished; \
                 the decoder cannot continue without losing grains",
                self.object
            )));
        }
        self.busy = true;
        let r = self.next_grain_inner().await;
        self.busy = false;
        r
    }

    async fn next_grain_inner(&mut self) -> Result<Option<Grain>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                match r {
                    Ok(g) => {
                        self.stats.grains += 1;
                        self.stats.grain_bytes += g.data.len() as u64;
                        return Ok(Some(g));
                    }
                    Err(e) => {
                        self.abandon();
                        return Err(e);
                    }
                }
            }
            while !self.done && self.failed.is_none() && self.pending.len() < self.lookahead {
                if let Err(e) = self.read_ahead().await {
                    self.failed = Some(e);
                }
            }
            if self.done || self.failed.is_some() {
                self.dispatch();
            }
            if let Some(job) = self.pending.pop_front() {
                match job.await {
                    Ok(grains) => self.ready.extend(grains),
                    Err(e) => self.ready.push_back(Err(Error::other(format!(
                        "a grain inflating task failed: {e}"
                    )))),
                }
                continue;
            }
            return match self.failed.take() {
                Some(e) => {
                    self.done = true;
                    Err(e)
                }
                None => Ok(None),
            };
        }
    }

    /// Sends the staged grains to the blocking pool as one batch.
    fn dispatch(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        let object = self.object.clone();
        self.pending.push_back(tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(batch.len());
            for g in batch {
                let r = inflate_grain(&object, &g.compressed, g.expected, g.marker_at);
                let failed = r.is_err();
                out.push(r.map(|data| Grain {
                    offset: g.offset,
                    data: Bytes::from(data),
                }));
                if failed {
                    break;
                }
            }
            out
        }));
    }

    /// Drops what is in flight and finishes the decoder.
    fn abandon(&mut self) {
        for job in self.pending.drain(..) {
            job.abort();
        }
        self.staged.clear();
        self.ready.clear();
        self.done = true;
        self.failed = None;
    }

    /// The grains as a stream, ending after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Grain>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut d = state?;
            match d.next_grain().await {
                Ok(Some(g)) => Some((Ok(g), Some(d))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Reads the next marker and what it announces: queues a grain, skips
    /// metadata, or sets `done` at the end of the stream.
    async fn read_ahead(&mut self) -> Result<()> {
        let at = self.pos;
        if !self.fill(16).await? {
            if self.buf.is_empty() {
                // No end-of-stream marker: complete only if the grain
                // tables of the overhead list exactly the grains read.
                if let Some(index) = self.index
                    && index.grains == self.grains_queued
                    && index.last_marker == self.last_marker
                {
                    self.done = true;
                    self.stats.ended_by_index = true;
                    return Ok(());
                }
                let listed = match self.index {
                    Some(i) => format!(
                        " ({} grains read, the grain tables list {})",
                        self.grains_queued, i.grains
                    ),
                    None => String::new(),
                };
                return Err(Error::invalid_data(
                    &self.object,
                    format!(
                        "truncated: the stream ends at offset {at} without an end-of-stream marker{listed}"
                    ),
                ));
            }
            return Err(self.truncated("a marker"));
        }
        let marker = Marker::parse(&self.object, &self.buf[..16], at)?;
        match marker {
            Marker::Grain { lba, size } => self.read_grain(at, lba, size).await,
            Marker::Metadata { kind, sectors } => self.read_metadata(at, kind, sectors).await,
        }
    }

    async fn read_grain(&mut self, at: u64, lba: u64, size: u32) -> Result<()> {
        let h = self.header;
        let object = self.object.clone();
        let bad = |msg: String| {
            Error::invalid_data(&object, format!("{msg} (grain marker at offset {at})"))
        };
        if lba >= h.capacity {
            return Err(bad(format!(
                "grain at sector {lba} is outside the capacity of {} sectors",
                h.capacity
            )));
        }
        if !lba.is_multiple_of(h.grain_size) {
            return Err(bad(format!(
                "grain at sector {lba} is not aligned to the {}-sector grain",
                h.grain_size
            )));
        }
        if lba < self.next_lba {
            return Err(bad(format!(
                "grain at sector {lba} is out of order: grains up to sector {} came before",
                self.next_lba
            )));
        }
        let max = max_compressed_len(h.grain_bytes());
        if u64::from(size) > max {
            return Err(bad(format!(
                "compressed size of {size} bytes is beyond the {max}-byte bound for a {}-byte grain",
                h.grain_bytes()
            )));
        }
        let total = GRAIN_MARKER_LEN + size as usize;
        if !self.fill(total).await? {
            return Err(self.truncated(&format!("the grain at sector {lba}")));
        }
        self.consume(GRAIN_MARKER_LEN);
        let compressed = self.buf.split_to(size as usize).freeze();
        self.pos += u64::from(size);
        let padded = (total as u64).next_multiple_of(SECTOR);
        // Padding cut by the end of the input: the next marker read
        // reports the truncation.
        let pad = (padded - total as u64) as usize;
        let have = if self.fill(pad).await? {
            pad
        } else {
            self.buf.len()
        };
        self.consume(have);
        let expected = (h.capacity - lba).min(h.grain_size) * SECTOR;
        self.next_lba = lba + h.grain_size;
        self.grains_queued += 1;
        self.last_marker = Some(at);
        self.stats.compressed_bytes += u64::from(size);
        self.staged.push(Staged {
            offset: lba * SECTOR,
            compressed,
            expected: expected as usize,
            marker_at: at,
        });
        self.staged_bytes += expected as usize;
        if self.staged_bytes >= BATCH_BYTES {
            self.dispatch();
        }
        Ok(())
    }

    async fn read_metadata(&mut self, at: u64, kind: MarkerType, sectors: u64) -> Result<()> {
        let h = self.header;
        let object = self.object.clone();
        let bad =
            |msg: String| Error::invalid_data(&object, format!("{msg} (marker at offset {at})"));
        if kind == MarkerType::EndOfStream {
            // An end-of-stream marker is an all-zero sector, as is a
            // zeroed (preallocated, partly downloaded) tail: a header
            // that defers its grain directory to the end promises a
            // footer, so a stream that ends without one is cut short.
            if h.gd_offset == GD_AT_END && !self.stats.footer {
                return Err(Error::invalid_data(
                    &self.object,
                    format!(
                        "truncated: zeros at offset {at} where the footer is due (the header \
                         puts the grain directory at the end, so the stream must carry a footer \
                         before its end-of-stream marker)"
                    ),
                ));
            }
            // Nothing but zero padding may follow the marker.
            let mut end = at;
            loop {
                if self.buf.is_empty() && !self.fill(1).await? {
                    break;
                }
                if let Some(i) = self.buf.iter().position(|&b| b != 0) {
                    return Err(Error::invalid_data(
                        &self.object,
                        format!(
                            "non-zero data at offset {} after the end-of-stream marker at \
                             offset {at}",
                            end + i as u64
                        ),
                    ));
                }
                let n = self.buf.len();
                end += n as u64;
                self.consume(n);
            }
            self.done = true;
            self.stats.end_of_stream = true;
            return Ok(());
        }
        if !self.fill(SECTOR as usize).await? {
            return Err(self.truncated(&format!("the {kind:?} marker")));
        }
        self.consume(SECTOR as usize);
        let gt_sectors = (u64::from(h.num_gtes_per_gt) * 4).div_ceil(SECTOR);
        let gd_sectors = (h.gd_entries() * 4).div_ceil(SECTOR);
        let limit = match kind {
            MarkerType::GrainTable => gt_sectors,
            MarkerType::GrainDirectory => gd_sectors,
            MarkerType::Footer => 1,
            _ => 2048,
        };
        if sectors > limit.max(1) {
            return Err(bad(format!(
                "a {kind:?} block of {sectors} sectors where at most {} fit this header",
                limit.max(1)
            )));
        }
        match kind {
            MarkerType::GrainTable => self.stats.grain_tables += 1,
            MarkerType::GrainDirectory => self.stats.grain_directory = true,
            MarkerType::Footer => {
                if sectors != 1 {
                    return Err(bad("a footer block that is not one sector".into()));
                }
                if !self.fill(SECTOR as usize).await? {
                    return Err(self.truncated("the footer"));
                }
                let footer = SparseHeader::parse(&self.object, &self.buf[..SECTOR as usize])
                    .map_err(|e| bad(format!("footer: {e}")))?;
                if footer.capacity != h.capacity
                    || footer.grain_size != h.grain_size
                    || footer.num_gtes_per_gt != h.num_gtes_per_gt
                    || footer.flags != h.flags
                {
                    return Err(bad(format!(
                        "the footer disagrees with the header (capacity {} vs {}, grain {} vs {}, \
                         {} vs {} entries per table, flags {:#x} vs {:#x})",
                        footer.capacity,
                        h.capacity,
                        footer.grain_size,
                        h.grain_size,
                        footer.num_gtes_per_gt,
                        h.num_gtes_per_gt,
                        footer.flags,
                        h.flags
                    )));
                }
                self.stats.footer = true;
            }
            _ => {}
        }
        let end = self.pos + sectors * SECTOR;
        self.skip_to(end).await
    }

    /// A truncation error at the current offset.
    fn truncated(&self, what: &str) -> Error {
        Error::invalid_data(
            &self.object,
            format!(
                "truncated: the stream ends at offset {} inside {what}",
                self.pos + self.buf.len() as u64
            ),
        )
    }

    /// Drops `n` buffered bytes.
    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.pos += n as u64;
    }

    /// Reads until at least `n` bytes are buffered; `false` if the input
    /// ends first.
    async fn fill(&mut self, n: usize) -> Result<bool> {
        while self.buf.len() < n {
            if self.eof {
                return Ok(false);
            }
            let want = (n - self.buf.len()).max(READ_CHUNK);
            self.buf.reserve(want);
            let got = self
                .reader
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| read_error(&self.object, e))?;
            if got == 0 {
                self.eof = true;
            }
        }
        Ok(true)
    }

    /// Skips input up to stream offset `to` (not before the current one).
    async fn skip_to(&mut self, to: u64) -> Result<()> {
        if to < self.pos {
            return Err(Error::invalid_data(
                &self.object,
                format!(
                    "a block at offset {to} lies before the current offset {}",
                    self.pos
                ),
            ));
        }
        let mut left = to - self.pos;
        while left > 0 {
            if self.buf.is_empty() && !self.fill(1).await? {
                return Err(Error::invalid_data(
                    &self.object,
                    format!(
                        "truncated: the stream ends at offset {} before offset {to}",
                        self.pos
                    ),
                ));
            }
            let n = left.min(self.buf.len() as u64) as usize;
            self.consume(n);
            left -= n as u64;
        }
        Ok(())
    }
}

/// An I/O error of the input; the OVA reader's integrity errors (wrapped in
/// `io::Error`) come back out as themselves.
pub(crate) fn read_error(object: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(err) = inner.downcast::<Error>()
        {
            return *err;
        }
        return Error::other(format!("{object}: read failed"));
    }
    Error::io(object, e)
}

impl<R> Drop for StreamDecoder<R> {
    fn drop(&mut self) {
        for job in self.pending.drain(..) {
            job.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::vmdk::format::Marker;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn inflate_checks_size_and_accepts_raw_deflate() {
        let data = vec![3u8; 65536];
        let z = zlib(&data);
        assert_eq!(inflate_grain("t", &z, 65536, 0).unwrap(), data);
        let e = inflate_grain("t", &z, 1000, 7).unwrap_err().to_string();
        assert!(e.contains("more than") && e.contains("offset 7"), "{e}");
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        assert_eq!(inflate_grain("t", &raw, 65536, 0).unwrap(), data);
        let mut bad = z.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff; // Adler-32
        assert!(inflate_grain("t", &bad, 65536, 0).is_err());
        assert!(inflate_grain("t", &[], 65536, 0).is_err());
    }

    #[tokio::test]
    async fn decodes_a_minimal_stream_and_skips_metadata() {
        let mut h = SparseHeader::stream(300, 128); // partial last grain
        h.descriptor_offset = 0;
        h.overhead = 1;
        let mut v = h.to_bytes().to_vec();
        for (lba, fill) in [(0u64, 1u8), (256, 2)] {
            let len = ((300 - lba).min(128) * 512) as usize;
            let z = zlib(&vec![fill; len]);
            v.extend_from_slice(&Marker::grain_header(lba, z.len() as u32));
            v.extend_from_slice(&z);
            v.resize(v.len().next_multiple_of(512), 0);
        }
        v.extend_from_slice(&Marker::metadata_sector(MarkerType::GrainTable, 4));
        v.extend_from_slice(&[0u8; 2048]);
        v.extend_from_slice(&Marker::metadata_sector(MarkerType::GrainDirectory, 1));
        v.extend_from_slice(&[0u8; 512]);
        v.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
        v.extend_from_slice(&h.to_bytes());
        v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
        let mut d = StreamDecoder::new(&v[..]).await.unwrap();
        let a = d.next_grain().await.unwrap().unwrap();
        let b = d.next_grain().await.unwrap().unwrap();
        assert_eq!((a.offset, a.data.len()), (0, 65536));
        assert_eq!((b.offset, b.data.len()), (256 * 512, 44 * 512));
        assert!(d.next_grain().await.unwrap().is_none());
        let s = d.stats();
        assert!(s.footer && s.end_of_stream && s.grain_directory);
        assert_eq!(
            (s.grains, s.grain_tables, s.bytes_read),
            (2, 1, v.len() as u64)
        );
    }
}
