//! The on-disk structures shared by the VMDK decoder and encoder: the
//! sparse extent header, stream markers and the text descriptor.
//!
//! Sources: VMware's "Virtual Disk Format 5.0" technote, open-vmdk's
//! `vmware_vmdk.h`, and what real files do (see the crate's
//! `testdata/SOURCES.md`). All integers are little-endian; offsets and sizes
//! in the header are in 512-byte sectors.

use std::fmt::Write as _;

use hypersdk_core::{Error, Result};

/// A sector: the unit of every VMDK offset and size.
pub const SECTOR: u64 = 512;

/// The header magic, `KDMV` on disk.
pub const MAGIC: u32 = 0x564d_444b;

/// `gdOffset` of a streamOptimized header whose grain directory is at the
/// end of the stream (the footer has the real value).
pub const GD_AT_END: u64 = u64::MAX;

/// Flag bit 0: the newline-detection characters are valid.
pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
/// Flag bit 1: a redundant grain directory is used.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Flag bit 2: grain table entry 1 means "zeroed grain".
pub const FLAG_ZEROED_GTE: u32 = 1 << 2;
/// Flag bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag bit 17: the stream has markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// The flags VMware's streamOptimized writers set: `0x30001`.
pub const STREAM_FLAGS: u32 = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS;

/// `compressAlgorithm` 1: DEFLATE (in practice with a zlib wrapper).
pub const COMPRESS_DEFLATE: u16 = 1;

/// The largest `numGTEsPerGT` accepted (VMware writes 512; qemu refuses
/// more).
pub const MAX_GTES_PER_GT: u32 = 512;

/// The largest grain accepted: 2^16 sectors (32 MiB). VMware writes 128
/// sectors (64 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 1 << 16;

/// The largest virtual capacity accepted: 2^40 sectors (512 TiB), far above
/// vSphere's 62 TiB limit, so absurd headers (zettabytes) are refused
/// before anything is sized from them.
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 40;

/// The largest embedded descriptor accepted: 2048 sectors (1 MiB).
pub const MAX_DESCRIPTOR_SECTORS: u64 = 2048;

/// The sparse extent header (the first sector of a hosted sparse or
/// streamOptimized extent, and the footer of a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 or 3.
    pub version: u32,
    /// The `FLAG_*` bits.
    pub flags: u32,
    /// The virtual capacity in sectors.
    pub capacity: u64,
    /// Sectors per grain, a power of two.
    pub grain_size: u64,
    /// Where the embedded descriptor starts (0: none).
    pub descriptor_offset: u64,
    /// The embedded descriptor's size.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Where the redundant grain directory starts.
    pub rgd_offset: u64,
    /// Where the grain directory starts, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Whether the disk was not closed cleanly.
    pub unclean_shutdown: bool,
    /// 0 none, 1 DEFLATE.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// The header of a streamOptimized disk as VMware writes it: version 3,
    /// flags `0x30001`, 512 entries per grain table, DEFLATE, the grain
    /// directory at the end. `descriptor_size` and `overhead` are for the
    /// caller to set.
    pub fn stream(capacity_sectors: u64, grain_sectors: u64) -> Self {
        SparseHeader {
            version: 3,
            flags: STREAM_FLAGS,
            capacity: capacity_sectors,
            grain_size: grain_sectors,
            descriptor_offset: 1,
            descriptor_size: 0,
            num_gtes_per_gt: MAX_GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 0,
            unclean_shutdown: false,
            compress_algorithm: COMPRESS_DEFLATE,
        }
    }

    /// Parses and checks a header sector; `object` names the file in errors.
    ///
    /// Refuses, without allocating anything: a wrong magic, a version other
    /// than 1–3, a grain size that is not a power of two between 1 and
    /// [`MAX_GRAIN_SECTORS`], more than [`MAX_GTES_PER_GT`] entries per grain
    /// table, a capacity above [`MAX_CAPACITY_SECTORS`], an embedded
    /// descriptor past the overhead (when one is given), an unknown
    /// compression algorithm, and newline-detection characters mangled by a
    /// text-mode transfer.
    pub fn parse(object: &str, sector: &[u8]) -> Result<Self> {
        let bad = |msg: String| Error::invalid_data(object, msg);
        if sector.len() < SECTOR as usize {
            return Err(bad(format!(
                "a VMDK header is 512 bytes, only {} present",
                sector.len()
            )));
        }
        let magic = u32_at(sector, 0);
        if magic != MAGIC {
            return Err(bad(format!(
                "not a sparse VMDK extent: magic {:02x?} instead of \"KDMV\"",
                &sector[..4]
            )));
        }
        let h = SparseHeader {
            version: u32_at(sector, 4),
            flags: u32_at(sector, 8),
            capacity: u64_at(sector, 12),
            grain_size: u64_at(sector, 20),
            descriptor_offset: u64_at(sector, 28),
            descriptor_size: u64_at(sector, 36),
            num_gtes_per_gt: u32_at(sector, 44),
            rgd_offset: u64_at(sector, 48),
            gd_offset: u64_at(sector, 56),
            overhead: u64_at(sector, 64),
            unclean_shutdown: sector[72] != 0,
            compress_algorithm: u16::from_le_bytes([sector[77], sector[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(bad(format!(
                "VMDK header version {} is not supported (1 to 3 are)",
                h.version
            )));
        }
        if !h.grain_size.is_power_of_two() || h.grain_size > MAX_GRAIN_SECTORS {
            return Err(bad(format!(
                "grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                h.grain_size
            )));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(format!(
                "{} entries per grain table (1 to {MAX_GTES_PER_GT} are allowed)",
                h.num_gtes_per_gt
            )));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad(format!(
                "capacity of {} sectors is beyond the {MAX_CAPACITY_SECTORS}-sector limit",
                h.capacity
            )));
        }
        if h.descriptor_size > MAX_DESCRIPTOR_SECTORS {
            return Err(bad(format!(
                "embedded descriptor of {} sectors is beyond the {MAX_DESCRIPTOR_SECTORS}-sector limit",
                h.descriptor_size
            )));
        }
        // An embedded descriptor lies in the metadata before the first
        // grain: inside the overhead when the header gives one (0, as
        // some writers leave it, bounds nothing), and never past the
        // largest disk (so `offset * 512` cannot overflow).
        if h.descriptor_offset != 0 {
            let end = h.descriptor_offset.checked_add(h.descriptor_size);
            let limit = if h.overhead != 0 {
                h.overhead
            } else {
                MAX_CAPACITY_SECTORS
            };
            if end.is_none_or(|end| end > limit) {
                return Err(bad(format!(
                    "embedded descriptor at sector {} ({} sectors) lies past the {} sectors \
                     of metadata",
                    h.descriptor_offset, h.descriptor_size, limit
                )));
            }
        }
        if h.compress_algorithm > COMPRESS_DEFLATE {
            return Err(bad(format!(
                "unknown compression algorithm {}",
                h.compress_algorithm
            )));
        }
        if h.flags & FLAG_VALID_NEWLINE != 0 && sector[73..77] != [b'\n', b' ', b'\r', b'\n'] {
            return Err(bad(
                "the header's newline-detection bytes are altered: the file went through \
                 a text-mode transfer"
                    .into(),
            ));
        }
        Ok(h)
    }

    /// The header as its 512-byte sector.
    pub fn to_bytes(&self) -> [u8; SECTOR as usize] {
        let mut s = [0u8; SECTOR as usize];
        s[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        s[4..8].copy_from_slice(&self.version.to_le_bytes());
        s[8..12].copy_from_slice(&self.flags.to_le_bytes());
        s[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        s[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        s[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        s[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        s[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        s[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        s[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        s[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        s[72] = u8::from(self.unclean_shutdown);
        s[73..77].copy_from_slice(b"\n \r\n");
        s[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        s
    }

    /// Whether grains are compressed (flag bit 16).
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether the stream has markers (flag bit 17).
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// The grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }

    /// The virtual capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity * SECTOR
    }

    /// Sectors covered by one grain table.
    pub fn gt_coverage(&self) -> u64 {
        u64::from(self.num_gtes_per_gt) * self.grain_size
    }

    /// Entries of the grain directory: one per grain table needed to
    /// cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }

    /// Grains in the disk (the last may be partial).
    pub fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain_size)
    }
}

/// The type of a metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerType {
    /// End of stream: an all-zero sector.
    EndOfStream,
    /// A grain table follows.
    GrainTable,
    /// The grain directory follows.
    GrainDirectory,
    /// The footer (a header copy with the real `gdOffset`) follows.
    Footer,
    /// A progress marker (open-vmdk), no payload.
    Progress,
}

impl MarkerType {
    /// The on-disk type number.
    pub fn number(self) -> u32 {
        match self {
            MarkerType::EndOfStream => 0,
            MarkerType::GrainTable => 1,
            MarkerType::GrainDirectory => 2,
            MarkerType::Footer => 3,
            MarkerType::Progress => 4,
        }
    }
}

/// A stream marker, read from the start of a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain of `size` bytes for virtual sector `lba`; the
    /// bytes start 12 bytes into the marker's sector.
    Grain {
        /// The virtual sector the grain starts at.
        lba: u64,
        /// The compressed size in bytes.
        size: u32,
    },
    /// A metadata marker whose block of `sectors` sectors follows in the
    /// next sector.
    Metadata {
        /// What follows.
        kind: MarkerType,
        /// The size of the block that follows, in sectors.
        sectors: u64,
    },
}

/// The bytes of a grain marker before the compressed data.
pub const GRAIN_MARKER_LEN: usize = 12;

impl Marker {
    /// Parses the marker at the start of `sector` (at least 16 bytes) found
    /// at byte `offset`; `object` names the file in errors.
    pub fn parse(object: &str, sector: &[u8], offset: u64) -> Result<Self> {
        if sector.len() < 16 {
            return Err(Error::invalid_data(
                object,
                format!("truncated: a marker at offset {offset} needs 16 bytes"),
            ));
        }
        let val = u64_at(sector, 0);
        let size = u32_at(sector, 8);
        if size != 0 {
            return Ok(Marker::Grain { lba: val, size });
        }
        let kind = match u32_at(sector, 12) {
            0 => MarkerType::EndOfStream,
            1 => MarkerType::GrainTable,
            2 => MarkerType::GrainDirectory,
            3 => MarkerType::Footer,
            4 => MarkerType::Progress,
            t => {
                return Err(Error::invalid_data(
                    object,
                    format!("unknown marker type {t} at offset {offset}"),
                ));
            }
        };
        Ok(Marker::Metadata { kind, sectors: val })
    }

    /// The 12-byte header of a grain marker.
    pub fn grain_header(lba: u64, size: u32) -> [u8; GRAIN_MARKER_LEN] {
        let mut b = [0u8; GRAIN_MARKER_LEN];
        b[0..8].copy_from_slice(&lba.to_le_bytes());
        b[8..12].copy_from_slice(&size.to_le_bytes());
        b
    }

    /// A metadata marker sector announcing `sectors` sectors of `kind`.
    pub fn metadata_sector(kind: MarkerType, sectors: u64) -> [u8; SECTOR as usize] {
        let mut b = [0u8; SECTOR as usize];
        b[0..8].copy_from_slice(&sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.number().to_le_bytes());
        b
    }
}

/// One extent line of a descriptor: `RW 2048 SPARSE "disk.vmdk" [offset]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// The extent's size in sectors.
    pub sectors: u64,
    /// `SPARSE`, `FLAT`, `ZERO`, `VMFS`, …
    pub kind: String,
    /// The file name (absent for `ZERO`).
    pub file: Option<String>,
    /// The offset in sectors into the file (flat extents).
    pub offset: Option<u64>,
}

/// A VMDK text descriptor: header keys, extents and the disk database, in
/// file order. Keys compare case-insensitively, as the technote says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `key=value` lines before the extents (`version`, `CID`,
    /// `parentCID`, `createType`, …), values without quotes.
    pub header: Vec<(String, String)>,
    /// The extent lines.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` lines, values without quotes, all kept.
    pub ddb: Vec<(String, String)>,
}

/// The largest descriptor text accepted (1 MiB).
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;

impl Descriptor {
    /// Parses descriptor text (NUL padding of an embedded descriptor and
    /// `#` comments ignored, CRLF accepted); `object` names the file in
    /// errors, which carry the line number.
    pub fn parse(object: &str, text: &[u8]) -> Result<Self> {
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = &text[..end];
        if text.len() > MAX_DESCRIPTOR_BYTES {
            return Err(Error::invalid_data(
                object,
                format!("descriptor of {} bytes is too large", text.len()),
            ));
        }
        // Descriptors are ASCII in practice; encoding="windows-1252" ones
        // may carry Latin-1 bytes in names, read lossily.
        let text = String::from_utf8_lossy(text);
        let mut d = Descriptor::default();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |msg: &str| {
                Error::invalid_data(object, format!("descriptor line {}: {msg}", i + 1))
            };
            // An extent line: an access word, then a sector count (its
            // file name may contain '=').
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            let second = words.next().unwrap_or_default();
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "RW" | "RDONLY" | "NOACCESS"
            ) && !second.is_empty()
                && second.bytes().all(|b| b.is_ascii_digit())
            {
                d.extents.push(parse_extent(line).map_err(|m| err(&m))?);
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err("expected 'key = value' or an extent line"))?;
            let key = key.trim().to_string();
            let value = unquote(value.trim()).to_string();
            if key.to_ascii_lowercase().starts_with("ddb.") {
                d.ddb.push((key, value));
            } else {
                d.header.push((key, value));
            }
        }
        Ok(d)
    }

    /// A header value by key (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// A disk-database value by key, with or without the `ddb.` prefix
    /// (case-insensitive).
    pub fn ddb(&self, key: &str) -> Option<&str> {
        let key = key.strip_prefix("ddb.").unwrap_or(key);
        self.ddb
            .iter()
            .find(|(k, _)| k.len() > 4 && k[4..].eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// `createType`.
    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    /// The text, in the layout VMware's writers use.
    pub fn render(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\n");
        for (k, v) in &self.header {
            let quoted = !v
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c.is_ascii_digit());
            if quoted {
                let _ = writeln!(s, "{k}=\"{v}\"");
            } else {
                let _ = writeln!(s, "{k}={v}");
            }
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let _ = write!(s, "{} {} {}", e.access, e.sectors, e.kind);
            if let Some(f) = &e.file {
                let _ = write!(s, " \"{f}\"");
            }
            if let Some(o) = e.offset {
                let _ = write!(s, " {o}");
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            let _ = writeln!(s, "{k} = \"{v}\"");
        }
        s
    }
}

fn parse_extent(line: &str) -> std::result::Result<ExtentLine, String> {
    // ACCESS SIZE TYPE ["file name" [offset]]
    let mut rest = line;
    let mut word = || {
        let r = rest.trim_start();
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let (w, tail) = r.split_at(end);
        rest = tail;
        w.to_string()
    };
    let access = word().to_ascii_uppercase();
    let size = word();
    let sectors = size
        .parse::<u64>()
        .map_err(|_| format!("extent size '{size}' is not a number"))?;
    let kind = word().to_ascii_uppercase();
    if kind.is_empty() {
        return Err("extent line without a type".into());
    }
    let tail = rest.trim();
    let (file, after) = if let Some(q) = tail.strip_prefix('"') {
        let close = q
            .find('"')
            .ok_or_else(|| "unterminated file name in extent line".to_string())?;
        (Some(q[..close].to_string()), q[close + 1..].trim())
    } else if tail.is_empty() {
        (None, "")
    } else {
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        (Some(tail[..end].to_string()), tail[end..].trim())
    };
    let offset = if after.is_empty() {
        None
    } else {
        Some(
            after
                .parse::<u64>()
                .map_err(|_| format!("extent offset '{after}' is not a number"))?,
        )
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_refuses_absurd_values() {
        let mut h = SparseHeader::stream(2 << 21, 128);
        h.descriptor_size = 1;
        h.overhead = 128;
        let bytes = h.to_bytes();
        assert_eq!(&bytes[..4], b"KDMV");
        assert_eq!(SparseHeader::parse("x", &bytes).unwrap(), h);
        assert_eq!(h.gt_coverage(), 65536);
        assert_eq!(h.gd_entries(), 64);

        let with = |f: &dyn Fn(&mut SparseHeader)| {
            let mut h2 = h;
            f(&mut h2);
            SparseHeader::parse("x", &h2.to_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(with(&|h| h.version = 4).contains("version 4"));
        assert!(with(&|h| h.grain_size = 100).contains("power of two"));
        assert!(with(&|h| h.grain_size = 1 << 30).contains("power of two"));
        assert!(with(&|h| h.num_gtes_per_gt = 4096).contains("entries per grain table"));
        assert!(with(&|h| h.capacity = u64::MAX / 512).contains("capacity"));
        let mut mangled = bytes;
        mangled[75] = b'\n';
        assert!(
            SparseHeader::parse("x", &mangled)
                .unwrap_err()
                .to_string()
                .contains("text-mode")
        );
        assert!(
            SparseHeader::parse("x", b"COWD....")
                .unwrap_err()
                .to_string()
                .contains("512 bytes")
        );
    }

    #[test]
    fn markers() {
        let g = Marker::grain_header(256, 1000);
        let mut sector = [0u8; 512];
        sector[..12].copy_from_slice(&g);
        assert_eq!(
            Marker::parse("x", &sector, 0).unwrap(),
            Marker::Grain {
                lba: 256,
                size: 1000
            }
        );
        let m = Marker::metadata_sector(MarkerType::GrainTable, 4);
        assert_eq!(
            Marker::parse("x", &m, 0).unwrap(),
            Marker::Metadata {
                kind: MarkerType::GrainTable,
                sectors: 4
            }
        );
        assert_eq!(
            Marker::parse("x", &[0u8; 512], 0).unwrap(),
            Marker::Metadata {
                kind: MarkerType::EndOfStream,
                sectors: 0
            }
        );
    }

    #[test]
    fn descriptor_parse_and_render() {
        let text = b"# Disk DescriptorFile\nversion=1 \nCID=a1b2c3d4\nparentCID=ffffffff\n\
            # a comment between keys\ncreateType=\"streamOptimized\"\n\n\
            # Extent description\nRDONLY 2097152 SPARSE \"generated-stream.vmdk\"\n\
            RW 4096 FLAT \"disk name-flat.vmdk\" 0\nRW 100 ZERO\n\n\
            ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"130\"\r\n\0\0\0";
        let d = Descriptor::parse("x", text).unwrap();
        assert_eq!(d.create_type(), Some("streamOptimized"));
        assert_eq!(d.get("version"), Some("1"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("generated-stream.vmdk"));
        assert_eq!(d.extents[1].file.as_deref(), Some("disk name-flat.vmdk"));
        assert_eq!(d.extents[1].offset, Some(0));
        assert_eq!(d.extents[2].file, None);
        assert_eq!(d.ddb("adapterType"), Some("lsilogic"));
        assert_eq!(d.ddb("ddb.geometry.cylinders"), Some("130"));
        let again = Descriptor::parse("x", d.render().as_bytes()).unwrap();
        assert_eq!(again, d);
        let err = Descriptor::parse("x", b"version=1\nRW ten SPARSE \"a\"\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
