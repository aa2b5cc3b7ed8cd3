//! Inputs: a path or `-`, what kind of file it is, and a reader that
//! counts the bytes it passes for the progress bars.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hypersdk_core::Error;
use hypersdk_core::progress::ItemProgress;
use hypersdk_ova::vmdk::format::SparseHeader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use super::{Failure, Io, OrFail};

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Source {
    /// `-` is standard input; anything else a file (`./-` names a file
    /// called `-`).
    pub(crate) fn new(path: &Path) -> Source {
        if path.as_os_str() == "-" {
            Source::Stdin
        } else {
            Source::File(path.to_path_buf())
        }
    }

    /// The name used in messages: the path as given, or `-`.
    pub(crate) fn label(&self) -> String {
        match self {
            Source::Stdin => "-".into(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An OVA: a tar whose first entry is the descriptor.
    Ova,
    /// An OVF descriptor (XML).
    Ovf,
    /// A `.mf` manifest.
    Manifest,
    /// A VMDK: a sparse extent (`KDMV`) or a text descriptor.
    Vmdk,
    /// A gzip-compressed file.
    Gzip,
    /// Anything else (for `convert`: a raw image).
    Other,
}

impl Kind {
    /// The kind an extension names, if it names one: the extension is
    /// trusted, so that a broken `.ova` gets the OVA reader's explanation.
    pub(crate) fn from_name(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "ova" => Some(Kind::Ova),
            "ovf" => Some(Kind::Ovf),
            "mf" => Some(Kind::Manifest),
            "vmdk" => Some(Kind::Vmdk),
            "gz" => Some(Kind::Gzip),
            "raw" | "img" => Some(Kind::Other),
            _ => None,
        }
    }

    /// The kind the first bytes of a file show.
    pub(crate) fn sniff(head: &[u8]) -> Kind {
        if head.starts_with(&[0x1f, 0x8b]) {
            return Kind::Gzip;
        }
        if head.len() >= 262 && &head[257..262] == b"ustar" {
            return Kind::Ova;
        }
        if head.starts_with(b"KDMV") {
            return Kind::Vmdk;
        }
        // A VDI's header opens with text ("<<< Oracle VM VirtualBox Disk
        // Image >>>"): not a descriptor.
        if head.get(0x40..0x44) == Some(&VDI_SIGNATURE[..]) {
            return Kind::Other;
        }
        let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        let start = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(text.len());
        let text = &text[start..];
        if text.starts_with(b"# Disk DescriptorFile") {
            Kind::Vmdk
        } else if text.starts_with(b"<") {
            Kind::Ovf
        } else if text.starts_with(b"SHA1")
            || text.starts_with(b"SHA256")
            || text.starts_with(b"SHA512")
        {
            Kind::Manifest
        } else {
            Kind::Other
        }
    }

    /// How the kind is called in messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Ova => "an OVA package",
            Kind::Ovf => "an OVF descriptor",
            Kind::Manifest => "a manifest",
            Kind::Vmdk => "a VMDK disk",
            Kind::Gzip => "a gzip-compressed file",
            Kind::Other => "neither a package, a descriptor, a manifest nor a VMDK disk",
        }
    }
}

/// Whether a disk's first sector is a streamOptimized sparse header
/// (compressed grains with markers), which decodes from a stream; any
/// other VMDK needs random access.
pub(crate) fn is_stream_header(head: &[u8]) -> bool {
    head.starts_with(b"KDMV")
        && SparseHeader::parse("", head).is_ok_and(|h| h.has_markers() && h.is_compressed())
}

/// The signature at offset 0x40 of a VirtualBox VDI image.
const VDI_SIGNATURE: [u8; 4] = [0x7f, 0x10, 0xda, 0xbe];

/// What a file taken for a raw image (by its name, or for want of a known
/// kind) really is, when its first bytes say it is not raw: another
/// virtual disk format, or a kind this tool reads otherwise. Encoding such
/// a file "as raw" would make a VMDK of its container bytes.
pub(crate) fn not_raw(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"QFI\xfb") {
        Some("a qcow2 image")
    } else if head.starts_with(b"vhdxfile") {
        Some("a VHDX image")
    } else if head.starts_with(b"conectix") {
        Some("a dynamic VHD image")
    } else if head.get(0x40..0x44) == Some(&VDI_SIGNATURE[..]) {
        Some("a VDI image")
    } else {
        match Kind::sniff(head) {
            k @ (Kind::Gzip | Kind::Ova | Kind::Vmdk) => Some(k.describe()),
            _ => None,
        }
    }
}

/// Bytes a kind is sniffed from: enough for a tar header's magic.
pub(crate) const SNIFF_BYTES: usize = 512;

/// Reads up to `n` bytes (fewer only at the end of input).
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = r.read(&mut buf[got..]).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}

/// An opened input: its reader (the sniffed bytes put back in front), its
/// kind and its size when known.
pub(crate) struct Opened<'a> {
    /// The bytes, from the first.
    pub(crate) reader: Box<dyn AsyncRead + Unpin + Send + 'a>,
    /// What it holds: by extension for a file with a known one, else
    /// sniffed.
    pub(crate) kind: Kind,
    /// Its length (files only).
    pub(crate) len: Option<u64>,
}

/// Opens `source` for reading from its start.
pub(crate) async fn open<'a>(source: &Source, io: &mut Io<'a>) -> Result<Opened<'a>, Failure> {
    let label = source.label();
    match source {
        Source::Stdin => {
            let mut stdin = io.take_stdin()?;
            let head = read_head(&mut stdin, SNIFF_BYTES)
                .await
                .map_err(|e| Failure::new("-", Error::io("standard input", e)))?;
            let kind = Kind::sniff(&head);
            Ok(Opened {
                reader: Box::new(std::io::Cursor::new(head).chain(stdin)),
                kind,
                len: None,
            })
        }
        Source::File(path) => {
            let mut file = open_file(path).await?;
            let len = file
                .metadata()
                .await
                .map_err(|e| Error::io(format!("'{label}'"), e))
                .or_fail(&label)?
                .len();
            let kind = match Kind::from_name(path) {
                Some(k) => k,
                None => {
                    let head = read_head(&mut file, SNIFF_BYTES)
                        .await
                        .map_err(|e| Error::io(format!("'{label}'"), e))
                        .or_fail(&label)?;
                    file.rewind()
                        .await
                        .map_err(|e| Error::io(format!("'{label}'"), e))
                        .or_fail(&label)?;
                    Kind::sniff(&head)
                }
            };
            Ok(Opened {
                reader: Box::new(file),
                kind,
                len: Some(len),
            })
        }
    }
}

/// Opens a file for reading; a directory is refused by name.
pub(crate) async fn open_file(path: &Path) -> Result<tokio::fs::File, Failure> {
    let label = path.display().to_string();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| Failure::new(&label, io_error(path, e)))?;
    if meta.is_dir() {
        return Err(Failure::new(
            &label,
            Error::invalid_input("is a directory, not a file"),
        ));
    }
    tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::new(&label, io_error(path, e)))
}

/// An I/O error on `path`, as core names files.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::not_found(format!("file '{}'", path.display()))
    } else {
        Error::io(format!("'{}'", path.display()), e)
    }
}

/// Passes reads through, counting the bytes on a progress item.
pub(crate) struct Counting<R> {
    inner: R,
    item: Option<Arc<ItemProgress>>,
}

impl<R> Counting<R> {
    /// Counts what `inner` returns on `item` (none: counts nothing).
    pub(crate) fn new(inner: R, item: Option<Arc<ItemProgress>>) -> Self {
        Counting { inner, item }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(item)) = (&r, &self.item) {
            item.add((buf.filled().len() - before) as u64);
        }
        r
    }
}
