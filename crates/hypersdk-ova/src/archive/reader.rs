//! The streaming OVA reader.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hypersdk_core::digest::{Algorithm, MultiHasher};
use hypersdk_core::{Error, Result};
use tokio::io::{AsyncRead, ReadBuf};

use super::header::{BLOCK, Decoded, HeaderDecoder, MAX_EXTENSION, padding, truncated};
use super::{EntryKind, EntrySummary, OvaSummary, ReadOptions};
use crate::mf::Manifest;
use crate::ovf::Envelope;

/// How much the reader asks of its input at a time.
const READ_CHUNK: usize = 1 << 20;

/// Reads an OVA from any [`AsyncRead`] in one pass, without temp files,
/// checking the structure and every digest on the way.
///
/// The descriptor must be the first entry (DSP0243); the reader reads and
/// parses it, and the `.mf` manifest and `.cert` certificate wherever they
/// are. Every other entry is handed to the caller by
/// [`next_entry`](Self::next_entry), whose data is then read with
/// [`read_chunk`](Self::read_chunk) or through [`entry_reader`](Self::entry_reader)
/// (an [`AsyncRead`]); data the caller skips is still read and hashed.
///
/// Digests are checked on the fly when the manifest precedes the data: the
/// last read of an entry whose digest does not match returns an
/// [`Error::Integrity`] naming the file and both digests, instead of the end
/// of the data, so a caller streaming the entry elsewhere never sees a clean
/// end. When the manifest follows the data, the digests are computed with
/// [`ReadOptions::late_algorithms`] and checked as soon as the manifest
/// arrives. [`finish`](Self::finish) reads to the end of the archive and
/// checks what can only be checked there: the end-of-archive marker, that
/// every file the descriptor references and the manifest lists is present.
///
/// ```no_run
/// # async fn demo() -> hypersdk_core::Result<()> {
/// use hypersdk_ova::archive::OvaReader;
///
/// let file = tokio::fs::File::open("appliance.ova").await.map_err(|e| {
///     hypersdk_core::Error::io("appliance.ova", e)
/// })?;
/// let mut ova = OvaReader::new(file);
/// while let Some(entry) = ova.next_entry().await? {
///     println!("{} ({} bytes)", entry.name, entry.size);
///     while let Some(chunk) = ova.read_chunk().await? {
///         let _ = chunk; // upload, decode, …
///     }
/// }
/// let summary = ova.finish().await?;
/// assert!(summary.manifest_verified || summary.manifest.is_none());
/// # Ok(()) }
/// ```
pub struct OvaReader<R> {
    inner: R,
    options: ReadOptions,
    buf: BytesMut,
    /// Input bytes consumed (handed out or skipped), i.e. the archive offset
    /// of `buf`'s first byte.
    pos: u64,
    /// Whether the input has reported its end.
    eof: bool,
    decoder: HeaderDecoder,
    current: Option<Current>,
    ended: bool,
    descriptor: Option<(String, Bytes)>,
    envelope: Option<Envelope>,
    manifest: Option<(String, Manifest)>,
    certificate: Option<(String, Bytes)>,
    entries: Vec<EntrySummary>,
}

/// The data entry being read.
struct Current {
    index: usize,
    remaining: u64,
    hasher: Option<MultiHasher>,
    /// The manifest's digests were known when the entry began: check at its
    /// end.
    check_at_end: bool,
}

impl<R: AsyncRead + Unpin> OvaReader<R> {
    /// A reader with default [`ReadOptions`].
    pub fn new(inner: R) -> Self {
        Self::with_options(inner, ReadOptions::default())
    }

    /// A reader with `options`.
    pub fn with_options(inner: R, options: ReadOptions) -> Self {
        OvaReader {
            inner,
            options,
            buf: BytesMut::new(),
            pos: 0,
            eof: false,
            decoder: HeaderDecoder::default(),
            current: None,
            ended: false,
            descriptor: None,
            envelope: None,
            manifest: None,
            certificate: None,
            entries: Vec::new(),
        }
    }

    /// The parsed descriptor, once the first entry has been read.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_ref()
    }

    /// The descriptor's entry name and raw bytes, once read.
    pub fn descriptor(&self) -> Option<(&str, &Bytes)> {
        self.descriptor.as_ref().map(|(n, b)| (n.as_str(), b))
    }

    /// The manifest, once read.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref().map(|(_, m)| m)
    }

    /// The certificate's entry name and raw bytes, once read. Its signature
    /// is not checked.
    pub fn certificate(&self) -> Option<(&str, &Bytes)> {
        self.certificate.as_ref().map(|(n, b)| (n.as_str(), b))
    }

    /// The entries seen so far, descriptor and manifest included.
    pub fn entries(&self) -> &[EntrySummary] {
        &self.entries
    }

    /// Advances to the next data entry (not the descriptor, manifest or
    /// certificate, which the reader consumes itself) and describes it;
    /// `None` at the end of the archive.
    ///
    /// The rest of the current entry, if any, is read and hashed first.
    pub async fn next_entry(&mut self) -> Result<Option<EntrySummary>> {
        self.skip_current().await?;
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some((name, size, header_offset)) = self.next_header().await? else {
                self.ended = true;
                return Ok(None);
            };
            let data_offset = self.pos;
            if self.entries.is_empty() && !EntryKind::is_descriptor_name(&name) {
                return Err(no_descriptor_first(&name));
            }
            let kind = EntryKind::classify(&name, self.entries.is_empty());
            if self.entries.iter().any(|e| e.name == name) {
                return Err(Error::invalid_data(
                    format!("entry '{name}'"),
                    format!(
                        "duplicate entry at offset {header_offset}: the archive has two files of this name"
                    ),
                ));
            }
            let mut summary = EntrySummary {
                name: name.clone(),
                kind,
                size,
                header_offset,
                data_offset,
                digests: None,
                verified: false,
            };
            match kind {
                EntryKind::Descriptor => {
                    let bytes = self
                        .read_small(&name, size, self.options.xml.max_bytes as u64)
                        .await?;
                    let envelope = Envelope::parse_with(&bytes, &self.options.xml)
                        .map_err(|e| prefix_error(e, &name))?;
                    self.entries.push(summary);
                    self.envelope = Some(envelope);
                    self.descriptor = Some((name, bytes));
                    self.verify_late()?;
                }
                EntryKind::Manifest => {
                    if let Some((first, _)) = &self.manifest {
                        return Err(Error::invalid_data(
                            format!("entry '{name}'"),
                            format!("a second manifest; '{first}' came first"),
                        ));
                    }
                    let bytes = self
                        .read_small(&name, size, crate::mf::MAX_MANIFEST_BYTES as u64)
                        .await?;
                    let manifest = Manifest::parse_named(&name, &bytes)?;
                    self.entries.push(summary);
                    self.manifest = Some((name, manifest));
                    self.verify_late()?;
                }
                EntryKind::Certificate => {
                    let bytes = self.read_small(&name, size, 1 << 20).await?;
                    self.entries.push(summary);
                    self.certificate = Some((name, bytes));
                }
                EntryKind::File => {
                    let (algorithms, check_at_end) = match &self.manifest {
                        Some((mf_name, mf)) => {
                            if !mf.contains(&name) && !self.options.allow_unlisted {
                                return Err(unlisted(&name, mf_name));
                            }
                            (
                                mf.checksums_of(&name).map(|c| c.algorithm()).collect(),
                                true,
                            )
                        }
                        None => (self.options.late_algorithms.clone(), false),
                    };
                    let hasher = (!algorithms.is_empty()).then(|| hasher_for(&algorithms));
                    summary.digests = None;
                    let out = summary.clone();
                    self.entries.push(summary);
                    self.current = Some(Current {
                        index: self.entries.len() - 1,
                        remaining: size,
                        hasher,
                        check_at_end,
                    });
                    return Ok(Some(out));
                }
            }
        }
    }

    /// The next chunk of the current entry's data, hashed; `None` at its
    /// end (after its digest checked out, when the manifest was known).
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The current entry's data as an [`AsyncRead`]. A digest mismatch is
    /// an [`io::Error`] of kind `InvalidData` wrapping the [`Error`].
    pub fn entry_reader(&mut self) -> EntryReader<'_, R> {
        EntryReader {
            ova: self,
            leftover: Bytes::new(),
        }
    }

    /// Reads the rest of the archive, checks every digest, the end marker
    /// and that every file the descriptor references and the manifest lists
    /// is present, and describes the archive.
    pub async fn finish(mut self) -> Result<OvaSummary> {
        while self.next_entry().await?.is_some() {}
        let Some((descriptor_name, _)) = &self.descriptor else {
            return Err(Error::invalid_data(
                "archive",
                "not an OVA: the archive holds no entries",
            ));
        };
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        if let Some(envelope) = &self.envelope {
            for file in envelope.references() {
                let present = names.contains(&file.href.as_str())
                    || (file.chunk_size.is_some()
                        && names.iter().any(|n| is_chunk_of(n, &file.href)));
                if !present {
                    return Err(Error::invalid_data(
                        format!("file '{}'", file.href),
                        format!(
                            "the descriptor '{descriptor_name}' references it (ovf:id '{}'), \
                             but the archive has no such entry",
                            file.id
                        ),
                    ));
                }
            }
        }
        let mut manifest_verified = false;
        if let Some((mf_name, mf)) = &self.manifest {
            for listed in mf.names() {
                if !names.contains(&listed) {
                    return Err(Error::integrity(
                        format!("file '{listed}'"),
                        format!("an entry, as the manifest '{mf_name}' lists it"),
                        "no such entry in the archive",
                    ));
                }
            }
            manifest_verified = self
                .entries
                .iter()
                .filter(|e| mf.contains(&e.name))
                .all(|e| e.verified);
        }
        Ok(OvaSummary {
            descriptor: descriptor_name.clone(),
            manifest: self.manifest.map(|(n, _)| n),
            manifest_verified,
            certificate: self.certificate.map(|(n, _)| n),
            entries: self.entries,
            envelope: self.envelope,
        })
    }

    /// Reads the next header (and any extensions before it); `None` at the
    /// end-of-archive marker.
    async fn next_header(&mut self) -> Result<Option<(String, u64, u64)>> {
        let header_offset = self.pos;
        loop {
            let offset = self.pos;
            let block = self.take_exact(BLOCK).await?;
            if block.len() < BLOCK {
                if block.is_empty() && !self.entries.is_empty() {
                    return Err(Error::invalid_data(
                        "archive",
                        format!(
                            "truncated: the archive ends at offset {offset} without \
                             the end-of-archive marker"
                        ),
                    ));
                }
                // The decoder explains a short first block (not a tar).
                self.decoder.decode(&block, offset)?;
                return Err(truncated(
                    offset,
                    BLOCK as u64,
                    block.len() as u64,
                    "a tar header",
                ));
            }
            match self.decoder.decode(&block, offset)? {
                Decoded::End => {
                    self.pos = offset + BLOCK as u64;
                    return Ok(None);
                }
                Decoded::Extension(ext, size) => {
                    if size > MAX_EXTENSION {
                        return Err(Error::invalid_data(
                            "archive",
                            format!(
                                "tar extension header at offset {offset} is {size} bytes, \
                                 more than the {MAX_EXTENSION}-byte limit"
                            ),
                        ));
                    }
                    let data_at = self.pos;
                    let data = self.take_exact(size as usize).await?;
                    if (data.len() as u64) < size {
                        return Err(truncated(
                            data_at,
                            size,
                            data.len() as u64,
                            "a tar extension",
                        ));
                    }
                    self.skip(padding(size)).await?;
                    self.decoder.apply(ext, &data, offset)?;
                }
                Decoded::Entry { name, size } => return Ok(Some((name, size, header_offset))),
            }
        }
    }

    /// Reads a whole small entry (descriptor, manifest, certificate) into
    /// memory, refusing one larger than `limit`.
    async fn read_small(&mut self, name: &str, size: u64, limit: u64) -> Result<Bytes> {
        if size > limit {
            return Err(Error::invalid_data(
                format!("entry '{name}'"),
                format!("{size} bytes, larger than the {limit}-byte limit for this kind of entry"),
            ));
        }
        let at = self.pos;
        let data = self.take_exact(size as usize).await?;
        if (data.len() as u64) < size {
            return Err(truncated(
                at,
                size,
                data.len() as u64,
                &format!("entry '{name}'"),
            ));
        }
        self.skip(padding(size)).await?;
        Ok(data)
    }

    /// Checks the digests of entries read before the manifest, once both
    /// the manifest and the descriptor are known.
    fn verify_late(&mut self) -> Result<()> {
        let Some((mf_name, mf)) = &self.manifest else {
            return Ok(());
        };
        for entry in &mut self.entries {
            if entry.kind == EntryKind::File
                && !mf.contains(&entry.name)
                && !self.options.allow_unlisted
            {
                return Err(unlisted(&entry.name, mf_name));
            }
            if entry.verified || !mf.contains(&entry.name) {
                continue;
            }
            match entry.kind {
                EntryKind::Descriptor => {
                    if let Some((_, bytes)) = &self.descriptor {
                        let algorithms: Vec<Algorithm> = mf
                            .checksums_of(&entry.name)
                            .map(|c| c.algorithm())
                            .collect();
                        let mut h = MultiHasher::new(&algorithms);
                        h.update(bytes.clone());
                        let digests = h.finish()?;
                        mf.verify(&entry.name, &digests)?;
                        entry.digests = Some(digests);
                        entry.verified = true;
                    }
                }
                EntryKind::File => {
                    // Called between entries: every file entry seen is
                    // complete, with digests unless none were asked for.
                    for expected in mf.checksums_of(&entry.name) {
                        let computed = entry
                            .digests
                            .as_ref()
                            .is_some_and(|d| d.get(expected.algorithm()).is_some());
                        if !computed {
                            return Err(Error::invalid_input(format!(
                                "cannot check '{}': the manifest follows the data and \
                                 lists {}, which was not computed; add it to \
                                 ReadOptions::late_algorithms",
                                entry.name,
                                crate::mf::algorithm_tag(expected.algorithm())
                            )));
                        }
                    }
                    if let Some(digests) = &entry.digests {
                        mf.verify(&entry.name, digests)?;
                        entry.verified = true;
                    }
                }
                EntryKind::Manifest | EntryKind::Certificate => {}
            }
        }
        Ok(())
    }

    /// Reads and hashes what is left of the current entry.
    async fn skip_current(&mut self) -> Result<()> {
        while self.current.is_some() {
            self.read_chunk().await?;
        }
        Ok(())
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        let Some((index, remaining)) = self.current.as_ref().map(|c| (c.index, c.remaining)) else {
            return Poll::Ready(Ok(None));
        };
        if remaining > 0 {
            if self.buf.is_empty() {
                ready!(self.poll_fill(cx))?;
                if self.buf.is_empty() {
                    let entry = &self.entries[index];
                    return Poll::Ready(Err(truncated(
                        entry.data_offset,
                        entry.size,
                        entry.size - remaining,
                        &format!("entry '{}'", entry.name),
                    )));
                }
            }
            let Some(cur) = self.current.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            let n = (self.buf.len() as u64).min(cur.remaining) as usize;
            let chunk = self.buf.split_to(n).freeze();
            if let Some(h) = cur.hasher.as_mut() {
                h.update(chunk.clone());
            }
            cur.remaining -= n as u64;
            self.pos += n as u64;
            return Poll::Ready(Ok(Some(chunk)));
        }
        // The data is complete: consume the padding, then check.
        let size = self.entries[index].size;
        let pad_end = self.entries[index].data_offset + size + padding(size);
        while self.pos < pad_end {
            if self.buf.is_empty() {
                ready!(self.poll_fill(cx))?;
                if self.buf.is_empty() {
                    return Poll::Ready(Err(truncated(
                        self.pos,
                        pad_end - self.pos,
                        0,
                        "tar padding",
                    )));
                }
            }
            let n = (self.buf.len() as u64).min(pad_end - self.pos) as usize;
            self.buf.advance(n);
            self.pos += n as u64;
        }
        let Some(cur) = self.current.take() else {
            return Poll::Ready(Ok(None));
        };
        let digests = match cur.hasher {
            Some(h) => Some(h.finish()?),
            None => None,
        };
        let entry = &mut self.entries[index];
        entry.digests = digests;
        if cur.check_at_end
            && let (Some((_, mf)), Some(d)) = (&self.manifest, &entry.digests)
        {
            mf.verify(&entry.name, d)?;
            entry.verified = true;
        }
        Poll::Ready(Ok(None))
    }

    /// Reads more input into `buf`; leaves it empty at the end of input.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.eof {
            return Poll::Ready(Ok(()));
        }
        self.buf.reserve(READ_CHUNK);
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.inner),
            cx,
            &mut self.buf
        )) {
            Ok(0) => {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(from_io(e))),
        }
    }

    /// Takes exactly `n` bytes, or fewer at the end of input.
    async fn take_exact(&mut self, n: usize) -> Result<Bytes> {
        while self.buf.len() < n && !self.eof {
            std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        }
        let n = n.min(self.buf.len());
        self.pos += n as u64;
        Ok(self.buf.split_to(n).freeze())
    }

    async fn skip(&mut self, n: u64) -> Result<()> {
        let at = self.pos;
        let got = self.take_exact(n as usize).await?;
        if (got.len() as u64) < n {
            return Err(truncated(at, n, got.len() as u64, "tar padding"));
        }
        Ok(())
    }
}

/// [`OvaReader::entry_reader`]: the current entry's data as an
/// [`AsyncRead`].
pub struct EntryReader<'a, R> {
    ova: &'a mut OvaReader<R>,
    leftover: Bytes,
}

impl<R: AsyncRead + Unpin> AsyncRead for EntryReader<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.leftover.is_empty() {
            match ready!(this.ova.poll_chunk(cx)) {
                Ok(Some(chunk)) => this.leftover = chunk,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let n = this.leftover.len().min(out.remaining());
        out.put_slice(&this.leftover.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Maps an I/O error from the input back to an [`Error`], unwrapping one
/// that carries an [`Error`] already.
pub(crate) fn from_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(err) = inner.downcast::<Error>()
        {
            return *err;
        }
        return Error::other("archive input failed");
    }
    Error::io("archive input", e)
}

/// A data entry the manifest does not cover.
fn unlisted(name: &str, manifest: &str) -> Error {
    Error::integrity(
        format!("entry '{name}'"),
        format!("a digest in the manifest '{manifest}'"),
        "no digest: the manifest does not list this file",
    )
}

fn no_descriptor_first(name: &str) -> Error {
    Error::invalid_data(
        "archive",
        format!(
            "not an OVA: the first entry is '{name}', but an OVA must begin with its \
             .ovf descriptor (DSP0243)"
        ),
    )
}

/// Whether `entry` is one chunk (`href.000000000`, …) of a chunked file.
pub(super) fn is_chunk_of(entry: &str, href: &str) -> bool {
    entry
        .strip_prefix(href)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|n| n.len() == 9 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One hasher per entry: with a single algorithm it hashes on a thread of
/// its own, overlapping with reading; with several, the cheapest stays on
/// the caller's thread (see [`MultiHasher`]).
fn hasher_for(algorithms: &[Algorithm]) -> MultiHasher {
    if algorithms.len() == 1 {
        MultiHasher::offloaded(algorithms)
    } else {
        MultiHasher::new(algorithms)
    }
}

/// Prefixes a descriptor parse error with the entry name.
pub(super) fn prefix_error(e: Error, name: &str) -> Error {
    match e {
        Error::InvalidData {
            message, source, ..
        } => Error::InvalidData {
            object: format!("descriptor '{name}'"),
            message,
            source,
        },
        other => other,
    }
}
