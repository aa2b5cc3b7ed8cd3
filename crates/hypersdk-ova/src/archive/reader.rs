//! The streaming OVA reader.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hypersdk_core::digest::MultiHasher;
use hypersdk_core::{Error, Result};
use tokio::io::{AsyncRead, ReadBuf};

use super::catalog::Catalog;
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
/// are (an entry the descriptor references is a data file whatever its
/// name). Every other entry is handed to the caller by
/// [`next_entry`](Self::next_entry), whose data is then read with
/// [`read_chunk`](Self::read_chunk) or through [`entry_reader`](Self::entry_reader)
/// (an [`AsyncRead`]); data the caller skips is still read and hashed.
///
/// Digests are checked on the fly when the manifest precedes the data: the
/// read that would return an entry's last bytes returns an
/// [`Error::Integrity`] naming the file and both digests instead, so a
/// caller streaming the entry elsewhere never receives all of a bad file.
/// When the manifest follows the data, the digests are computed with
/// [`ReadOptions::late_algorithms`] and checked as soon as the manifest
/// arrives. The manifest must cover the descriptor and every data file
/// (unless [`ReadOptions::allow_unlisted`]). [`finish`](Self::finish) reads
/// to the end of the archive and checks what can only be checked there:
/// that the archive ends with an end-of-archive block and that every file
/// the descriptor references and the manifest lists is present.
///
/// After any error the reader is spent: every later call returns an error
/// (the archive's framing cannot be trusted past a bad entry). The same
/// holds when a call's future is dropped before it completed.
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
    catalog: Catalog,
    current: Option<Current>,
    /// Bytes of the current entry handed to [`EntryReader`] but not yet
    /// read by its caller.
    leftover: Bytes,
    ended: bool,
    /// Set by the first error, and while a call is in progress (so a call
    /// whose future was dropped half-way leaves the reader spent).
    failed: Option<String>,
}

/// The data entry being read.
struct Current {
    index: usize,
    remaining: u64,
    hasher: Option<MultiHasher>,
    /// The manifest's digests were known when the entry began: check at its
    /// end.
    check_at_end: bool,
    /// The entry's last chunk, held back until its digest checked out.
    last: Option<Bytes>,
}

/// Entries up to this size are hashed on the reading thread: starting a
/// hashing thread would cost more.
const INLINE_HASH_BELOW: u64 = 1 << 20;

impl<R: AsyncRead + Unpin> OvaReader<R> {
    /// A reader with default [`ReadOptions`].
    pub fn new(inner: R) -> Self {
        Self::with_options(inner, ReadOptions::default())
    }

    /// A reader with `options`.
    pub fn with_options(inner: R, options: ReadOptions) -> Self {
        OvaReader {
            inner,
            catalog: Catalog::new(&options),
            options,
            buf: BytesMut::new(),
            pos: 0,
            eof: false,
            decoder: HeaderDecoder::default(),
            current: None,
            leftover: Bytes::new(),
            ended: false,
            failed: None,
        }
    }

    /// The parsed descriptor, once the first entry has been read.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.catalog.envelope.as_ref()
    }

    /// The descriptor's entry name and raw bytes, once read.
    pub fn descriptor(&self) -> Option<(&str, &Bytes)> {
        self.catalog
            .descriptor
            .as_ref()
            .map(|(n, b)| (n.as_str(), b))
    }

    /// The manifest, once read.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.catalog.manifest.as_ref().map(|(_, m)| m)
    }

    /// The certificate's entry name and raw bytes, once read. Its signature
    /// is not checked.
    pub fn certificate(&self) -> Option<(&str, &Bytes)> {
        self.catalog
            .certificate
            .as_ref()
            .map(|(n, b)| (n.as_str(), b))
    }

    /// The entries seen so far, descriptor and manifest included, with the
    /// digests of those read to their end.
    pub fn entries(&self) -> &[EntrySummary] {
        &self.catalog.entries
    }

    /// Advances to the next data entry (not the descriptor, manifest or
    /// certificate, which the reader consumes itself) and describes it;
    /// `None` at the end of the archive.
    ///
    /// The rest of the current entry, if any, is read and hashed first.
    pub async fn next_entry(&mut self) -> Result<Option<EntrySummary>> {
        self.begin()?;
        let r = self.next_entry_inner().await;
        self.end(r)
    }

    /// The next chunk of the current entry's data, hashed; `None` at its
    /// end. The chunk holding an entry's last bytes is returned only after
    /// the entry's digest checked out (when the manifest was known).
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
        if !self.leftover.is_empty() {
            return Ok(Some(std::mem::take(&mut self.leftover)));
        }
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The current entry's data as an [`AsyncRead`]. A digest mismatch is
    /// an [`io::Error`] of kind `InvalidData` wrapping the [`Error`].
    /// Dropping the reader part-way loses nothing: the rest is still
    /// available to [`read_chunk`](Self::read_chunk) or another
    /// `entry_reader`.
    pub fn entry_reader(&mut self) -> EntryReader<'_, R> {
        EntryReader { ova: self }
    }

    /// Reads the rest of the archive, checks every digest, the end of the
    /// archive and that every file the descriptor references and the
    /// manifest lists is present, and describes the archive.
    pub async fn finish(mut self) -> Result<OvaSummary> {
        while self.next_entry().await?.is_some() {}
        self.catalog.check_complete()?;
        let manifest_verified = self.catalog.manifest_verified();
        let catalog = self.catalog;
        Ok(OvaSummary {
            descriptor: catalog.descriptor.map(|(n, _)| n).unwrap_or_default(),
            manifest: catalog.manifest.map(|(n, _)| n),
            manifest_verified,
            certificate: catalog.certificate.map(|(n, _)| n),
            entries: catalog.entries,
            envelope: catalog.envelope,
        })
    }

    /// Refuses to go on after an error, and marks a call in progress.
    fn begin(&mut self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::invalid_input(format!(
                "the OVA reader cannot go on: {why}"
            )));
        }
        self.failed = Some("an earlier call was cancelled part-way".into());
        Ok(())
    }

    /// Ends a call: clears the in-progress mark, or keeps the error.
    fn end<T>(&mut self, r: Result<T>) -> Result<T> {
        self.failed = match &r {
            Ok(_) => None,
            Err(e) => Some(format!("it failed earlier: {e}")),
        };
        r
    }

    async fn next_entry_inner(&mut self) -> Result<Option<EntrySummary>> {
        // The rest of the current entry, hashed and checked.
        self.leftover = Bytes::new();
        while self.current.is_some() {
            std::future::poll_fn(|cx| self.poll_chunk_inner(cx)).await?;
        }
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some((name, size, header_offset)) = self.next_header().await? else {
                self.ended = true;
                return Ok(None);
            };
            let data_offset = self.pos;
            let kind = self.catalog.admit(&name, size, header_offset)?;
            let summary = EntrySummary::new(name.clone(), kind, size, header_offset, data_offset);
            match kind {
                EntryKind::Descriptor => {
                    let bytes = self.read_small(&name, size).await?;
                    self.catalog.push(summary);
                    self.catalog.set_descriptor(&name, bytes)?;
                }
                EntryKind::Manifest => {
                    let bytes = self.read_small(&name, size).await?;
                    self.catalog.push(summary);
                    self.catalog.set_manifest(&name, &bytes)?;
                    self.catalog.verify_known(true)?;
                }
                EntryKind::Certificate => {
                    let bytes = self.read_small(&name, size).await?;
                    self.catalog.push(summary);
                    self.catalog.set_certificate(&name, bytes);
                }
                EntryKind::File => {
                    let (algorithms, check_at_end) = match self.catalog.listed_algorithms(&name)? {
                        Some(algs) => (algs, true),
                        None => (self.options.late_algorithms.clone(), false),
                    };
                    let hasher = (!algorithms.is_empty()).then(|| {
                        if size < INLINE_HASH_BELOW {
                            MultiHasher::inline(&algorithms)
                        } else if algorithms.len() == 1 {
                            // Hashing on its own thread overlaps with reading.
                            MultiHasher::offloaded(&algorithms)
                        } else {
                            MultiHasher::new(&algorithms)
                        }
                    });
                    let out = summary.clone();
                    self.catalog.push(summary);
                    self.current = Some(Current {
                        index: self.catalog.entries.len() - 1,
                        remaining: size,
                        hasher,
                        check_at_end,
                        last: None,
                    });
                    return Ok(Some(out));
                }
            }
        }
    }

    /// Reads the next header (and any extensions before it); `None` at the
    /// end-of-archive marker.
    async fn next_header(&mut self) -> Result<Option<(String, u64, u64)>> {
        let header_offset = self.pos;
        loop {
            let offset = self.pos;
            let block = self.take_exact(BLOCK).await?;
            if block.len() < BLOCK {
                if block.is_empty() && !self.catalog.entries.is_empty() {
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
    /// memory; its size was checked against its kind's limit on admission.
    async fn read_small(&mut self, name: &str, size: u64) -> Result<Bytes> {
        let at = self.pos;
        let want = usize::try_from(size)
            .map_err(|_| Error::invalid_data(format!("entry '{name}'"), "too large"))?;
        let data = self.take_exact(want).await?;
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

    /// [`poll_chunk_inner`](Self::poll_chunk_inner) with the reader's
    /// failure rules.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        if let Err(e) = self.begin() {
            return Poll::Ready(Err(e));
        }
        let r = match self.poll_chunk_inner(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                // Nothing is lost while pending: the state is consistent.
                self.failed = None;
                return Poll::Pending;
            }
        };
        Poll::Ready(self.end(r))
    }

    fn poll_chunk_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        let Some((index, remaining)) = self.current.as_ref().map(|c| (c.index, c.remaining)) else {
            return Poll::Ready(Ok(None));
        };
        if remaining > 0 {
            if self.buf.is_empty() {
                ready!(self.poll_fill(cx))?;
                if self.buf.is_empty() {
                    let entry = &self.catalog.entries[index];
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
            if cur.remaining > 0 {
                return Poll::Ready(Ok(Some(chunk)));
            }
            // The last chunk waits for the padding and the digest check.
            cur.last = Some(chunk);
        }
        let entry = &self.catalog.entries[index];
        let pad_end = entry.data_offset + entry.size + padding(entry.size);
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
        let entry = &mut self.catalog.entries[index];
        entry.digests = digests;
        if cur.check_at_end
            && let (Some((_, mf)), Some(d)) = (&self.catalog.manifest, &entry.digests)
        {
            mf.verify(&entry.name, d)?;
            entry.verified = true;
        }
        Poll::Ready(Ok(cur.last))
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

    /// Takes exactly `n` bytes, or fewer at the end of input. `n` is at
    /// most a header, an extension or a small entry (bounded by the limits).
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
}

impl<R: AsyncRead + Unpin> AsyncRead for EntryReader<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ova = &mut self.get_mut().ova;
        if ova.leftover.is_empty() {
            match ready!(ova.poll_chunk(cx)) {
                Ok(Some(chunk)) => ova.leftover = chunk,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let n = ova.leftover.len().min(out.remaining());
        out.put_slice(&ova.leftover.split_to(n));
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
