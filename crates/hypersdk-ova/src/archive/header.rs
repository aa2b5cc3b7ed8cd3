//! Tar header decoding and encoding, shared by the streaming reader, the
//! index and the writer.
//!
//! The `tar` crate (≥ 0.4.45) parses and builds the 512-byte blocks; this
//! module adds what an OVA needs on top: checksum verification, PAX and GNU
//! long-name extensions folded into the entry they describe, the rules on
//! entry types and names, and a clear diagnosis when the input is not a tar
//! at all.

use hypersdk_core::{Error, Result};
use tar::{EntryType, Header};

/// The tar block size.
pub(crate) const BLOCK: usize = 512;

/// The largest PAX or GNU long-name extension accepted (1 MiB). Real ones
/// are a few hundred bytes; the limit keeps a hostile header from making us
/// buffer gigabytes.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

/// Bytes of zero padding after `size` bytes of data.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A header extension whose data the caller reads and hands back to
/// [`HeaderDecoder::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extension {
    /// A PAX extended header for the next entry (`x`).
    Pax,
    /// A PAX global header (`g`): read and ignored.
    PaxGlobal,
    /// A GNU long name for the next entry (`L`).
    GnuLongName,
}

/// What one header block decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A zero block: the end-of-archive marker.
    End,
    /// An extension of `size` bytes follows; feed it to
    /// [`HeaderDecoder::apply`].
    Extension(Extension, u64),
    /// A regular file entry.
    Entry {
        /// The validated name.
        name: String,
        /// The data size.
        size: u64,
    },
}

/// Decodes a sequence of header blocks into entries, carrying PAX and GNU
/// long-name extensions over to the entry they describe.
#[derive(Debug, Default)]
pub(crate) struct HeaderDecoder {
    pending_path: Option<String>,
    pending_size: Option<u64>,
    blocks_seen: u64,
}

impl HeaderDecoder {
    /// Decodes the header block found at archive offset `offset`.
    pub(crate) fn decode(&mut self, block: &[u8], offset: u64) -> Result<Decoded> {
        let first = self.blocks_seen == 0;
        self.blocks_seen += 1;
        if block.len() != BLOCK {
            return Err(if first && block.is_empty() {
                Error::invalid_data("archive", "not an OVA: the input is empty")
            } else if first {
                not_a_tar(block, format!("it is only {} bytes long", block.len()))
            } else {
                truncated(offset, BLOCK as u64, block.len() as u64, "a tar header")
            });
        }
        if block.iter().all(|&b| b == 0) {
            if first {
                return Err(Error::invalid_data(
                    "archive",
                    "the archive is empty (it starts with an end-of-archive block)",
                ));
            }
            if self.pending_path.is_some() || self.pending_size.is_some() {
                return Err(bad_header(
                    offset,
                    "an extension header is followed by the end of the archive",
                ));
            }
            return Ok(Decoded::End);
        }
        let header = Header::from_byte_slice(block);
        if let Err(why) = check_checksum(header) {
            return Err(if first {
                not_a_tar(block, why)
            } else {
                bad_header(offset, &why)
            });
        }
        let size = header
            .entry_size()
            .map_err(|e| bad_header(offset, &format!("unreadable size field: {e}")))?;
        let ty = header.entry_type();
        if ty.is_pax_local_extensions() {
            return Ok(Decoded::Extension(Extension::Pax, size));
        }
        if ty.is_pax_global_extensions() {
            return Ok(Decoded::Extension(Extension::PaxGlobal, size));
        }
        if ty.is_gnu_longname() {
            return Ok(Decoded::Extension(Extension::GnuLongName, size));
        }
        let raw_name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        let name = self.pending_path.take().unwrap_or(raw_name);
        let size = self.pending_size.take().unwrap_or(size);
        if !(ty.is_file() || ty.is_contiguous()) {
            return Err(Error::invalid_data(
                format!("entry '{}'", name.escape_debug()),
                format!(
                    "{} entries are not allowed in an OVA (at offset {offset}); \
                     only regular files are",
                    type_name(ty)
                ),
            ));
        }
        let name = validate_name(&name)?;
        Ok(Decoded::Entry { name, size })
    }

    /// Applies the data of an extension announced by [`Decoded::Extension`].
    pub(crate) fn apply(&mut self, ext: Extension, data: &[u8], offset: u64) -> Result<()> {
        match ext {
            Extension::PaxGlobal => Ok(()),
            Extension::GnuLongName => {
                let name = data.split(|&b| b == 0).next().unwrap_or_default();
                self.pending_path = Some(String::from_utf8_lossy(name).into_owned());
                Ok(())
            }
            Extension::Pax => {
                for record in pax_records(data, offset)? {
                    let (key, value) = record;
                    match key {
                        "path" => self.pending_path = Some(value.to_owned()),
                        "size" => {
                            let size = value.parse::<u64>().map_err(|_| {
                                bad_header(offset, &format!("PAX size '{value}' is not a number"))
                            })?;
                            self.pending_size = Some(size);
                        }
                        k if k.starts_with("GNU.sparse.") => {
                            return Err(bad_header(
                                offset,
                                "GNU sparse entries are not supported in an OVA",
                            ));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

/// Parses PAX records `"<len> <key>=<value>\n"`.
fn pax_records(data: &[u8], offset: u64) -> Result<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Trailing NULs pad some writers' extension data.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let bad = |why: &str| bad_header(offset, &format!("malformed PAX record: {why}"));
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("length is not a number"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("length out of range"));
        }
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("record does not end with a newline"))?;
        let text = std::str::from_utf8(record).map_err(|_| bad("not UTF-8"))?;
        let (key, value) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
        out.push((key, value));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Verifies the header checksum, accepting the unsigned sum (POSIX) and the
/// signed sum some old tars wrote, as GNU tar does.
fn check_checksum(header: &Header) -> std::result::Result<(), String> {
    let bytes = header.as_bytes();
    let stored = header
        .cksum()
        .map_err(|_| "its checksum field is not a number".to_string())?;
    let mut unsigned: u32 = 0;
    let mut signed: i32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == i64::from(signed) {
        Ok(())
    } else {
        Err(format!(
            "header checksum mismatch (stored {stored:o}, computed {unsigned:o})"
        ))
    }
}

/// Validates and normalizes an entry name: relative, no `..`, no empty or
/// control characters; a leading `./` is dropped.
pub(crate) fn validate_name(raw: &str) -> Result<String> {
    let object = || format!("entry '{}'", raw.escape_debug());
    let reject = |why: &str| Err(Error::invalid_data(object(), why.to_string()));
    if raw.is_empty() {
        return reject("empty entry name");
    }
    if raw.starts_with('/') || raw.starts_with('\\') {
        return reject("absolute path names are not allowed in an OVA");
    }
    if raw.len() >= 2 && raw.as_bytes()[1] == b':' && raw.as_bytes()[0].is_ascii_alphabetic() {
        return reject("drive-letter path names are not allowed in an OVA");
    }
    if raw.chars().any(|c| c.is_control()) {
        return reject("control characters are not allowed in entry names");
    }
    if raw.contains('\\') {
        return reject("backslashes are not allowed in entry names");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return reject("'..' path components are not allowed in an OVA"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return reject("the name has no file component");
    }
    if raw.ends_with('/') {
        return reject("a name ending in '/' is a directory, not a file");
    }
    Ok(parts.join("/"))
}

fn type_name(ty: EntryType) -> &'static str {
    if ty.is_dir() {
        "directory"
    } else if ty.is_symlink() {
        "symbolic link"
    } else if ty.is_hard_link() {
        "hard link"
    } else if ty.is_character_special() {
        "character device"
    } else if ty.is_block_special() {
        "block device"
    } else if ty.is_fifo() {
        "FIFO"
    } else if ty.is_gnu_sparse() {
        "GNU sparse"
    } else if ty.is_gnu_longlink() {
        "GNU long link name"
    } else {
        "unknown-type"
    }
}

fn bad_header(offset: u64, why: &str) -> Error {
    Error::invalid_data(
        "archive",
        format!("corrupt tar header at offset {offset}: {why}"),
    )
}

/// The error for input ended early: `needed` bytes of `what` expected at
/// `offset`, only `got` there.
pub(crate) fn truncated(offset: u64, needed: u64, got: u64, what: &str) -> Error {
    Error::invalid_data(
        "archive",
        format!(
            "truncated: {what} at offset {offset} needs {needed} bytes, \
             but the archive ends after {got}"
        ),
    )
}

/// Explains why the first block is not a tar header, recognising the usual
/// suspects.
fn not_a_tar(block: &[u8], why: String) -> Error {
    let head = |magic: &[u8]| block.starts_with(magic);
    let what = if head(&[0x1f, 0x8b]) {
        "it is gzip-compressed; an OVA is an uncompressed tar (DSP0243). \
         Decompress it first (gunzip -c file.ova > file.tar)"
            .to_string()
    } else if head(b"BZh") {
        "it is bzip2-compressed; an OVA is an uncompressed tar".to_string()
    } else if head(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "it is xz-compressed; an OVA is an uncompressed tar".to_string()
    } else if head(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "it is zstd-compressed; an OVA is an uncompressed tar".to_string()
    } else if head(b"PK\x03\x04") {
        "it is a zip archive; an OVA is a tar".to_string()
    } else if looks_like_xml(block) {
        "it is an XML document (a bare OVF descriptor?), not a tar archive; \
         open an .ovf with its files as an OVF package instead"
            .to_string()
    } else if head(b"KDMV") {
        "it is a VMDK disk image, not a tar archive".to_string()
    } else {
        format!("the first block is not a tar header: {why}")
    };
    Error::invalid_data("archive", format!("not an OVA: {what}"))
}

fn looks_like_xml(block: &[u8]) -> bool {
    let text = String::from_utf8_lossy(block);
    let t = text.trim_start_matches('\u{feff}').trim_start();
    t.starts_with("<?xml") || t.starts_with("<Envelope") || t.starts_with("<ovf:Envelope")
}

/// Builds the header blocks for a regular entry `name` of `size` bytes: a
/// PAX header first when the name does not fit ustar, then the ustar header.
/// Sizes of 8 GiB and more use the base-256 size encoding (GNU, read by GNU
/// tar, bsdtar, Go and Python).
pub(crate) fn encode_entry(name: &str, size: u64, mtime: u64) -> Result<Vec<u8>> {
    let name = validate_name(name)?;
    let mut out = Vec::with_capacity(BLOCK * 3);
    let mut header = base_header(size, mtime);
    if header.set_path(&name).is_err() {
        // A PAX record carries the full name; the ustar field gets a
        // truncated stand-in that old readers show.
        let record = pax_record("path", &name);
        let mut pax = base_header(record.len() as u64, mtime);
        pax.set_entry_type(EntryType::XHeader);
        let short: String = format!("PaxHeaders/{}", tail(&name, 80));
        pax.set_path(&short)
            .map_err(|e| Error::invalid_input(format!("entry name '{name}': {e}")))?;
        pax.set_cksum();
        out.extend_from_slice(pax.as_bytes());
        out.extend_from_slice(record.as_bytes());
        out.resize(out.len() + padding(record.len() as u64) as usize, 0);
        header
            .set_path(tail(&name, 100))
            .map_err(|e| Error::invalid_input(format!("entry name '{name}': {e}")))?;
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

fn base_header(size: u64, mtime: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// The last `max` bytes of `name`, cut at a character boundary and without
/// a leading `/`.
fn tail(name: &str, max: usize) -> &str {
    let mut start = name.len().saturating_sub(max);
    while !name.is_char_boundary(start) {
        start += 1;
    }
    name[start..].trim_start_matches('/')
}

/// One PAX record, `"<len> key=value\n"`, where `<len>` counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<(String, u64)>> {
        let mut d = HeaderDecoder::default();
        let mut pos = 0usize;
        let mut out = Vec::new();
        loop {
            let block = &bytes[pos..(pos + BLOCK).min(bytes.len())];
            match d.decode(block, pos as u64)? {
                Decoded::End => return Ok(out),
                Decoded::Extension(ext, size) => {
                    let start = pos + BLOCK;
                    d.apply(ext, &bytes[start..start + size as usize], pos as u64)?;
                    pos = start + (size + padding(size)) as usize;
                }
                Decoded::Entry { name, size } => {
                    out.push((name, size));
                    pos += BLOCK + (size + padding(size)) as usize;
                }
            }
        }
    }

    #[test]
    fn names_are_validated() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "C:\\x",
            "a\\b",
            "",
            "./",
            "dir/",
            "a\nb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_name("./vm.ovf").unwrap(), "vm.ovf");
        assert_eq!(validate_name("disks//d1.vmdk").unwrap(), "disks/d1.vmdk");
        assert_eq!(
            validate_name("Debian 12-disk001.vmdk").unwrap(),
            "Debian 12-disk001.vmdk"
        );
    }

    #[test]
    fn long_names_round_trip_through_pax() {
        let long = format!("{}.vmdk", "n".repeat(300));
        let mut bytes = encode_entry(&long, 3, 0).unwrap();
        bytes.extend_from_slice(b"abc");
        bytes.resize(bytes.len() + padding(3) as usize, 0);
        bytes.extend_from_slice(&[0u8; 1024]);
        assert_eq!(decode_all(&bytes).unwrap(), vec![(long, 3)]);
    }

    #[test]
    fn huge_sizes_use_base_256() {
        let size = 20u64 << 30;
        let bytes = encode_entry("big.vmdk", size, 0).unwrap();
        let mut d = HeaderDecoder::default();
        assert_eq!(
            d.decode(&bytes[..BLOCK], 0).unwrap(),
            Decoded::Entry {
                name: "big.vmdk".into(),
                size
            }
        );
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [1, 5, 90, 95, 96, 97, 990, 995, 1000] {
            let r = pax_record("path", &"x".repeat(n));
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{n}");
        }
    }

    #[test]
    fn corrupt_checksum_and_links_are_rejected() {
        let mut bytes = encode_entry("a.ovf", 0, 0).unwrap();
        bytes.extend_from_slice(&encode_entry("b.vmdk", 0, 0).unwrap());
        bytes[BLOCK + 10] ^= 1;
        bytes.extend_from_slice(&[0u8; 1024]);
        let msg = decode_all(&bytes).unwrap_err().to_string();
        assert!(
            msg.contains("checksum mismatch") && msg.contains("offset 512"),
            "{msg}"
        );

        let mut h = Header::new_ustar();
        h.set_path("evil").unwrap();
        h.set_entry_type(EntryType::Symlink);
        h.set_link_name("/etc/shadow").unwrap();
        h.set_size(0);
        h.set_cksum();
        let mut bytes = encode_entry("a.ovf", 0, 0).unwrap();
        bytes.extend_from_slice(h.as_bytes());
        let msg = decode_all(&bytes).unwrap_err().to_string();
        assert!(
            msg.contains("symbolic link entries are not allowed"),
            "{msg}"
        );
    }

    #[test]
    fn not_a_tar_is_diagnosed() {
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.resize(BLOCK, 0);
        let msg = HeaderDecoder::default()
            .decode(&gz, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("gzip-compressed"), "{msg}");
        let mut xml = b"<?xml version=\"1.0\"?><Envelope/>".to_vec();
        xml.resize(BLOCK, b' ');
        let msg = HeaderDecoder::default()
            .decode(&xml, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("XML document"), "{msg}");
        let msg = HeaderDecoder::default()
            .decode(b"hello", 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("only 5 bytes"), "{msg}");
    }
}
