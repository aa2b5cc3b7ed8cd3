//! Hosted VMDK disks read by random access: monolithicSparse (one sparse
//! extent with its descriptor embedded, as VirtualBox and `qemu-img` write
//! them, also inside OVAs), and descriptor files whose extents are sparse
//! (twoGbMaxExtentSparse), flat (monolithicFlat, twoGbMaxExtentFlat,
//! ESXi's `vmfs`) or zero.
//!
//! [`HostedDisk`] is a [`BlockSource`] of the virtual disk: reads return
//! the guest's bytes (zeros where no grain is allocated) and
//! [`BlockSource::allocated_extents`] lists the allocated grains, so any
//! copy engine turns it into a sparse raw image (see
//! [`super::convert::hosted_to_raw`]).
//!
//! Every number from the file is checked before use: the header as in
//! [`SparseHeader::parse`], the grain directory and every grain table and
//! grain must lie inside the extent file (so nothing is sized from a
//! header alone), and the extents must add up to the descriptor's
//! capacity. Grains of compressed sparse extents (with markers) are
//! inflated and checked as in [`super::decode`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use hypersdk_core::blocks::{BlockSource, BytesSource};
//! use hypersdk_core::model::Extent;
//! use hypersdk_ova::vmdk::format::SparseHeader;
//! use hypersdk_ova::vmdk::sparse::HostedDisk;
//!
//! // A 1 MiB monolithicSparse extent with grain 1 (sector 128..256) stored.
//! let mut h = SparseHeader::stream(2048, 128);
//! h.flags = 0x3; // newline test + redundant GD, no compression
//! h.version = 1;
//! h.descriptor_offset = 0;
//! h.compress_algorithm = 0;
//! h.gd_offset = 1;      // GD: one entry, at sector 1
//! h.overhead = 128;
//! let mut file = vec![0u8; 256 * 512];
//! file[..512].copy_from_slice(&h.to_bytes());
//! file[512..516].copy_from_slice(&2u32.to_le_bytes()); // GT at sector 2
//! file[1024 + 4..1024 + 8].copy_from_slice(&128u32.to_le_bytes()); // GTE 1
//! file[128 * 512..].fill(9);
//! let src = Arc::new(BytesSource::new("demo.vmdk", Bytes::from(file)));
//! let disk = HostedDisk::open_extent(src).await?;
//! assert_eq!(disk.len(), 1 << 20);
//! let alloc = disk.allocated_extents().await?.unwrap();
//! assert_eq!(alloc.as_slice(), &[Extent::new(65536, 65536)]);
//! assert_eq!(&disk.read_range(Extent::new(65534, 4)).await?[..], &[0, 0, 9, 9]);
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use hypersdk_core::blocks::{BlockSource, FileSource, check_range};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::{Error, Result};

use super::decode::{inflate_grain, max_compressed_len};
use super::format::{
    Descriptor, FLAG_ZEROED_GTE, GD_AT_END, GRAIN_MARKER_LEN, MAGIC, MAX_CAPACITY_SECTORS, Marker,
    SECTOR, SparseHeader,
};

/// The largest text descriptor file read (1 MiB).
const MAX_DESCRIPTOR_FILE: u64 = 1 << 20;

/// The most extents a descriptor may list (a 2 TiB twoGbMaxExtent disk
/// has 1024).
const MAX_EXTENTS: usize = 4096;

/// A grain table entry that means "zeroed grain" (with flag bit 2).
const GTE_ZEROED: u32 = 1;

/// One sparse extent with its grain directory and tables loaded.
#[derive(Debug)]
struct SparseExtent {
    source: Arc<dyn BlockSource>,
    header: SparseHeader,
    /// One grain table per directory entry; `None` where the entry is 0.
    /// Tables never overlap in the file, so they take no more memory
    /// than the file's bytes.
    tables: Arc<[Option<Box<[u32]>>]>,
}

/// What backs one extent of the disk.
#[derive(Debug)]
enum Backing {
    Sparse(SparseExtent),
    Flat {
        source: Arc<dyn BlockSource>,
        offset: u64,
    },
    Zero,
}

/// One extent of the disk at its place in the virtual disk.
#[derive(Debug)]
struct DiskExtent {
    /// Where it starts in the virtual disk (bytes).
    start: u64,
    /// Its length (bytes).
    len: u64,
    backing: Backing,
}

/// A hosted VMDK disk read by random access; see the [module
/// docs](self).
#[derive(Debug)]
pub struct HostedDisk {
    name: String,
    len: u64,
    descriptor: Option<Descriptor>,
    extents: Vec<DiskExtent>,
}

impl HostedDisk {
    /// Opens a single sparse extent with or without an embedded descriptor
    /// (a monolithicSparse disk, or one extent of a split disk), for
    /// example a file ([`FileSource`]) or an entry of an indexed OVA.
    ///
    /// Fails with [`Error::InvalidData`] naming the source for a bad
    /// header, a grain directory or table outside the file, or a
    /// streamOptimized extent (read those with [`super::decode`]).
    pub async fn open_extent(source: Arc<dyn BlockSource>) -> Result<HostedDisk> {
        let name = source.describe();
        let (extent, descriptor) = load_sparse(source).await?;
        let len = extent.header.capacity_bytes();
        Ok(HostedDisk {
            name,
            len,
            descriptor,
            extents: vec![DiskExtent {
                start: 0,
                len,
                backing: Backing::Sparse(extent),
            }],
        })
    }

    /// Opens the disk at `path`: a sparse extent (monolithicSparse), or a
    /// text descriptor whose extents (sparse, flat, VMFS or zero) are
    /// opened relative to the descriptor's directory.
    ///
    /// Fails with [`Error::NotFound`] naming a missing extent file,
    /// [`Error::Unsupported`] for extent types that need a parent or a
    /// device (vmfsSparse deltas, raw device mappings) and for
    /// streamOptimized disks (read those with [`super::decode`]), and
    /// [`Error::InvalidData`] for malformed files.
    pub async fn open_path(path: impl AsRef<Path>) -> Result<HostedDisk> {
        let path = path.as_ref();
        let file = Arc::new(FileSource::open(path).await?);
        let head = read_upto(file.as_ref(), 0, SECTOR).await?;
        if head.len() >= 4 && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == MAGIC {
            return HostedDisk::open_extent(file).await;
        }
        let name = file.describe();
        if file.len() > MAX_DESCRIPTOR_FILE {
            return Err(Error::invalid_data(
                &name,
                format!(
                    "neither a sparse extent nor a descriptor: {} bytes of text is too large",
                    file.len()
                ),
            ));
        }
        let text = file.read_range(Extent::new(0, file.len())).await?;
        let descriptor = Descriptor::parse(&name, &text)?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        HostedDisk::from_descriptor(&name, descriptor, &dir).await
    }

    /// Opens the extents a text `descriptor` lists, relative to `dir`.
    async fn from_descriptor(name: &str, descriptor: Descriptor, dir: &Path) -> Result<HostedDisk> {
        if descriptor
            .create_type()
            .is_some_and(|t| t.eq_ignore_ascii_case("streamOptimized"))
        {
            return Err(Error::unsupported(
                format!("reading the streamOptimized disk {name} by random access"),
                "hypersdk-ova (use vmdk::decode)",
            ));
        }
        if descriptor.extents.is_empty() {
            return Err(Error::invalid_data(name, "the descriptor lists no extent"));
        }
        if descriptor.extents.len() > MAX_EXTENTS {
            return Err(Error::invalid_data(
                name,
                format!(
                    "the descriptor lists {} extents, more than the {MAX_EXTENTS} accepted",
                    descriptor.extents.len()
                ),
            ));
        }
        let max_len = MAX_CAPACITY_SECTORS * SECTOR;
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        // Files opened so far, by name: flat extents may share a file (one
        // handle), a sparse extent's file is used once.
        let mut opened: HashMap<String, (bool, Arc<dyn BlockSource>)> = HashMap::new();
        let mut start = 0u64;
        for line in &descriptor.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .filter(|l| start.checked_add(*l).is_some_and(|end| end <= max_len))
                .ok_or_else(|| {
                    Error::invalid_data(
                        name,
                        format!(
                            "extent of {} sectors takes the disk past the \
                             {MAX_CAPACITY_SECTORS}-sector limit",
                            line.sectors
                        ),
                    )
                })?;
            let kind = line.kind.to_ascii_uppercase();
            let sparse = kind == "SPARSE";
            let mut open_file = async || -> Result<Arc<dyn BlockSource>> {
                let Some(file) = &line.file else {
                    return Err(Error::invalid_data(
                        name,
                        format!("a {kind} extent without a file name"),
                    ));
                };
                if !is_plain_relative(file) {
                    return Err(Error::invalid_data(
                        name,
                        format!("extent file '{file}' is outside the descriptor's directory"),
                    ));
                }
                if let Some((was_sparse, source)) = opened.get(file.as_str()) {
                    if sparse || *was_sparse {
                        return Err(Error::invalid_data(
                            name,
                            format!("extent file '{file}' is listed twice with a sparse extent"),
                        ));
                    }
                    return Ok(Arc::clone(source));
                }
                let path = dir.join(file);
                let source = match FileSource::open(&path).await {
                    Ok(f) => Arc::new(f) as Arc<dyn BlockSource>,
                    Err(e) if e.is_not_found() => {
                        return Err(Error::not_found(format!(
                            "extent '{file}' of {name} (looked for {})",
                            path.display()
                        )));
                    }
                    Err(e) => return Err(e),
                };
                opened.insert(file.clone(), (sparse, Arc::clone(&source)));
                Ok(source)
            };
            let backing = match kind.as_str() {
                "SPARSE" => {
                    let (extent, _) = load_sparse(open_file().await?).await?;
                    if extent.header.capacity_bytes() < len {
                        return Err(Error::invalid_data(
                            extent.source.describe(),
                            format!(
                                "sparse extent of {} sectors where the descriptor says {}",
                                extent.header.capacity, line.sectors
                            ),
                        ));
                    }
                    Backing::Sparse(extent)
                }
                "FLAT" | "VMFS" => {
                    let source = open_file().await?;
                    let offset = line.offset.unwrap_or(0).saturating_mul(SECTOR);
                    if offset.checked_add(len).is_none_or(|end| end > source.len()) {
                        return Err(Error::invalid_data(
                            source.describe(),
                            format!(
                                "flat extent of {len} bytes at offset {offset} is past the file's {} bytes",
                                source.len()
                            ),
                        ));
                    }
                    Backing::Flat { source, offset }
                }
                "ZERO" => Backing::Zero,
                other => {
                    return Err(Error::unsupported(
                        format!("reading {other} extents of {name}"),
                        "hypersdk-ova",
                    ));
                }
            };
            extents.push(DiskExtent {
                start,
                len,
                backing,
            });
            start += len;
        }
        Ok(HostedDisk {
            name: name.to_owned(),
            len: start,
            descriptor: Some(descriptor),
            extents,
        })
    }

    /// The descriptor: embedded in the extent, or the text file opened.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// The virtual capacity in bytes (also [`BlockSource::len`]).
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Reads the part `range` (within `extent`, offsets relative to the
    /// extent) into `out`.
    async fn read_extent(
        &self,
        extent: &DiskExtent,
        range: Extent,
        out: &mut BytesMut,
    ) -> Result<()> {
        match &extent.backing {
            Backing::Zero => out.resize(out.len() + range.length as usize, 0),
            Backing::Flat { source, offset } => {
                let b = source
                    .read_range(Extent::new(offset + range.offset, range.length))
                    .await?;
                out.extend_from_slice(&b);
            }
            Backing::Sparse(s) => {
                let grain = s.header.grain_bytes();
                let mut at = range.offset;
                while at < range.end() {
                    let index = at / grain;
                    let gstart = index * grain;
                    let gend = (gstart + grain).min(s.header.capacity_bytes());
                    let take = Extent::new(at, range.end().min(gend) - at);
                    match s.grain_sector(index) {
                        None => out.resize(out.len() + take.length as usize, 0),
                        Some(sector) => {
                            let data = s.read_grain(index, sector).await?;
                            let from = (take.offset - gstart) as usize;
                            out.extend_from_slice(&data[from..from + take.length as usize]);
                        }
                    }
                    at = take.end();
                }
            }
        }
        Ok(())
    }
}

impl SparseExtent {
    /// The sector of grain `index`'s data (or marker), `None` if it reads
    /// as zeros.
    fn grain_sector(&self, index: u64) -> Option<u64> {
        grain_sector(&self.header, &self.tables, index)
    }

    /// Reads grain `index` stored at `sector`: its bytes, cut to the
    /// capacity.
    async fn read_grain(&self, index: u64, sector: u64) -> Result<Bytes> {
        let h = &self.header;
        let grain = h.grain_bytes();
        let want = (h.capacity_bytes() - index * grain).min(grain);
        let at = sector * SECTOR;
        if !h.is_compressed() {
            if at
                .checked_add(want)
                .is_none_or(|end| end > self.source.len())
            {
                return Err(Error::invalid_data(
                    self.source.describe(),
                    format!(
                        "grain {index} at offset {at} is past the end of the file ({} bytes)",
                        self.source.len()
                    ),
                ));
            }
            return self.source.read_range(Extent::new(at, want)).await;
        }
        let object = self.source.describe();
        let head = read_upto(self.source.as_ref(), at, GRAIN_MARKER_LEN as u64 + 4).await?;
        let Ok(Marker::Grain { lba, size }) = Marker::parse(&object, &head, at) else {
            return Err(Error::invalid_data(
                &object,
                format!("no grain marker at offset {at} for grain {index}"),
            ));
        };
        if lba != index * h.grain_size || u64::from(size) > max_compressed_len(grain) {
            return Err(Error::invalid_data(
                &object,
                format!(
                    "grain marker at offset {at} (sector {lba}, {size} bytes) does not fit grain {index}"
                ),
            ));
        }
        let data_at = at + GRAIN_MARKER_LEN as u64;
        if data_at + u64::from(size) > self.source.len() {
            return Err(Error::invalid_data(
                &object,
                format!("truncated: grain at offset {at} is past the end of the file"),
            ));
        }
        let compressed = self
            .source
            .read_range(Extent::new(data_at, u64::from(size)))
            .await?;
        let out = tokio::task::spawn_blocking(move || {
            inflate_grain(&object, &compressed, want as usize, at)
        })
        .await
        .map_err(|e| Error::other(format!("a grain inflating task failed: {e}")))??;
        Ok(Bytes::from(out))
    }

    /// The allocated grains as byte extents of the extent, merged; the
    /// walk over the tables runs on the blocking pool.
    async fn allocated(&self, base: u64, limit: u64) -> Result<Vec<Extent>> {
        let header = self.header;
        let tables = Arc::clone(&self.tables);
        tokio::task::spawn_blocking(move || allocated(&header, &tables, base, limit))
            .await
            .map_err(|e| Error::other(format!("a grain table walk failed: {e}")))
    }
}

/// The sector of grain `index`'s data (or marker), `None` if it reads as
/// zeros.
fn grain_sector(header: &SparseHeader, tables: &[Option<Box<[u32]>>], index: u64) -> Option<u64> {
    let per = u64::from(header.num_gtes_per_gt);
    let table = tables.get((index / per) as usize)?.as_ref()?;
    let gte = *table.get((index % per) as usize)?;
    let zeroed = gte == GTE_ZEROED && header.flags & FLAG_ZEROED_GTE != 0;
    (gte != 0 && !zeroed).then_some(u64::from(gte))
}

/// The allocated grains of `tables` as byte extents (from `base`, cut at
/// `limit` bytes), merged.
fn allocated(
    header: &SparseHeader,
    tables: &[Option<Box<[u32]>>],
    base: u64,
    limit: u64,
) -> Vec<Extent> {
    let grain = header.grain_bytes();
    let per = u64::from(header.num_gtes_per_gt);
    let mut out: Vec<Extent> = Vec::new();
    for (t, table) in tables.iter().enumerate() {
        let Some(table) = table else { continue };
        for i in 0..table.len() as u64 {
            let index = t as u64 * per + i;
            if grain_sector(header, tables, index).is_none() {
                continue;
            }
            let start = index * grain;
            if start >= limit {
                break;
            }
            let e = Extent::new(base + start, (limit - start).min(grain));
            match out.last_mut() {
                Some(last) if last.end() == e.offset => last.length += e.length,
                _ => out.push(e),
            }
        }
    }
    out
}

/// Whether an extent file name stays inside the descriptor's directory on
/// every platform: only plain components (no root, prefix, `.` or `..`)
/// and no backslash (a separator on Windows, `..\\x` or `C:\\x`).
fn is_plain_relative(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && !file.contains(':')
        && Path::new(file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Reads up to `n` bytes at `pos` (fewer at the end of the source).
async fn read_upto(source: &dyn BlockSource, pos: u64, n: u64) -> Result<Bytes> {
    let n = n.min(source.len().saturating_sub(pos));
    if n == 0 {
        return Ok(Bytes::new());
    }
    source.read_range(Extent::new(pos, n)).await
}

/// Checks that every allocated grain of `tables` lies inside a file of
/// `len` bytes.
fn check_grains(
    object: &str,
    header: &SparseHeader,
    tables: &[Option<Box<[u32]>>],
    len: u64,
) -> Result<()> {
    let grain = header.grain_bytes();
    let per = u64::from(header.num_gtes_per_gt);
    for (t, table) in tables.iter().enumerate() {
        if table.is_none() {
            continue;
        }
        for i in 0..per {
            let index = t as u64 * per + i;
            if index * header.grain_size >= header.capacity {
                break;
            }
            if let Some(sector) = grain_sector(header, tables, index) {
                let need = if header.is_compressed() {
                    GRAIN_MARKER_LEN as u64
                } else {
                    (header.capacity_bytes() - index * grain).min(grain)
                };
                if (sector * SECTOR)
                    .checked_add(need)
                    .is_none_or(|end| end > len)
                {
                    return Err(Error::invalid_data(
                        object,
                        format!(
                            "grain {index} at sector {sector} is past the end of the file \
                             ({len} bytes)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Reads a sparse extent's header, descriptor, grain directory and tables.
async fn load_sparse(source: Arc<dyn BlockSource>) -> Result<(SparseExtent, Option<Descriptor>)> {
    let object = source.describe();
    let bad = |msg: String| Error::invalid_data(&object, msg);
    let head = read_upto(source.as_ref(), 0, SECTOR).await?;
    let mut header = SparseHeader::parse(&object, &head)?;
    if header.is_compressed() && header.has_markers() && header.gd_offset == GD_AT_END {
        // A streamOptimized file: its footer, two sectors before the
        // end-of-stream marker, has the real grain directory offset.
        let len = source.len();
        if len >= 3 * SECTOR {
            let footer_at = len - 2 * SECTOR;
            let f = read_upto(source.as_ref(), footer_at, SECTOR).await?;
            let footer = SparseHeader::parse(&object, &f)
                .map_err(|e| bad(format!("streamOptimized without a usable footer ({e})")))?;
            header.gd_offset = footer.gd_offset;
        }
        if header.gd_offset == GD_AT_END {
            return Err(bad(
                "a streamOptimized disk without a footer cannot be read by random access: \
                 decode it as a stream"
                    .into(),
            ));
        }
    }
    if header.is_compressed() && !header.has_markers() {
        return Err(Error::unsupported(
            format!("compressed grains without markers in {object}"),
            "hypersdk-ova",
        ));
    }
    let len = source.len();
    let descriptor = if header.descriptor_offset != 0 && header.descriptor_size != 0 {
        let at = header.descriptor_offset.checked_mul(SECTOR);
        let n = header.descriptor_size * SECTOR;
        let Some(at) = at.filter(|at| at.checked_add(n).is_some_and(|end| end <= len)) else {
            let at = header.descriptor_offset;
            return Err(bad(format!(
                "the embedded descriptor ({n} bytes at sector {at}) is past the end of the file"
            )));
        };
        let text = source.read_range(Extent::new(at, n)).await?;
        Some(Descriptor::parse(&object, &text)?)
    } else {
        None
    };
    let entries = header.gd_entries();
    let gd_at = header
        .gd_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| bad("grain directory offset out of range".into()))?;
    let gd_len = entries * 4;
    if gd_at == 0 || gd_at.checked_add(gd_len).is_none_or(|end| end > len) {
        return Err(bad(format!(
            "the grain directory ({entries} entries at offset {gd_at}) is not inside the file \
             ({len} bytes) for a capacity of {} sectors",
            header.capacity
        )));
    }
    let gd = source.read_range(Extent::new(gd_at, gd_len)).await?;
    let gt_len = u64::from(header.num_gtes_per_gt) * 4;
    // Where each table is; tables may not overlap (nor repeat): each is
    // then backed by its own bytes of the file, which bounds the memory
    // they take by the file's size.
    let mut places: Vec<(u64, usize)> = Vec::new();
    for (i, chunk) in gd.chunks_exact(4).enumerate() {
        let gde = u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        if gde == 0 {
            continue;
        }
        let at = gde * SECTOR;
        if at.checked_add(gt_len).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "grain table {i} at offset {at} is past the end of the file ({len} bytes)"
            )));
        }
        places.push((at, i));
    }
    places.sort_unstable();
    for pair in places.windows(2) {
        let ((a, i), (b, j)) = (pair[0], pair[1]);
        if b < a + gt_len {
            return Err(bad(format!(
                "grain tables {i} and {j} overlap (offsets {a} and {b}): \
                 every directory entry must have a table of its own"
            )));
        }
    }
    let mut tables: Vec<Option<Box<[u32]>>> = Vec::new();
    tables.resize_with(gd.len() / 4, || None);
    for (at, i) in places {
        let gt = source.read_range(Extent::new(at, gt_len)).await?;
        let table: Box<[u32]> = gt
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tables[i] = Some(table);
    }
    let tables: Arc<[Option<Box<[u32]>>]> = tables.into();
    // Every allocated grain must lie inside the file (checked on the
    // blocking pool: a large disk has millions of entries).
    let check = Arc::clone(&tables);
    let object2 = object.clone();
    tokio::task::spawn_blocking(move || check_grains(&object2, &header, &check, len))
        .await
        .map_err(|e| Error::other(format!("a grain table check failed: {e}")))??;
    let extent = SparseExtent {
        source,
        header,
        tables,
    };
    Ok((extent, descriptor))
}

#[async_trait]
impl BlockSource for HostedDisk {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        let mut out = BytesMut::with_capacity(range.length as usize);
        for e in &self.extents {
            let ext = Extent::new(e.start, e.len);
            let Some(part) = ext.intersection(&range) else {
                continue;
            };
            if part.is_empty() {
                continue;
            }
            self.read_extent(e, Extent::new(part.offset - e.start, part.length), &mut out)
                .await?;
        }
        Ok(out.freeze())
    }

    /// The allocated grains of sparse extents and the whole of flat ones;
    /// zero extents and unallocated or zeroed grains are holes.
    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        let mut all = Vec::new();
        for e in &self.extents {
            match &e.backing {
                Backing::Zero => {}
                Backing::Flat { .. } => all.push(Extent::new(e.start, e.len)),
                Backing::Sparse(s) => all.extend(s.allocated(e.start, e.len).await?),
            }
        }
        Ok(Some(ExtentList::from_unsorted(all)))
    }
}
