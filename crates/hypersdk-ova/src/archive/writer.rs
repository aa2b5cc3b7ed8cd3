//! The streaming OVA writer.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hypersdk_core::digest::{Algorithm, Checksum, MultiHasher};
use hypersdk_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::header::{BLOCK, encode_entry, padding, validate_name};
use crate::mf::Manifest;
use crate::ovf::Envelope;

/// Where the `.mf` manifest goes, and where its digests come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestMode {
    /// No manifest.
    None,
    /// The caller knows every file's digest before writing (an export that
    /// hashed as it downloaded): the manifest is written right after the
    /// descriptor, so a reader can check each file as it arrives. The
    /// descriptor's own digest is added by the writer. Each file's data is
    /// hashed again while written and a mismatch with the given digest is
    /// an [`Error::Integrity`].
    Upfront(Manifest),
    /// Digests computed while writing, with these algorithms, in one pass;
    /// the manifest is the last entry.
    AtEnd(Vec<Algorithm>),
}

/// Options of [`OvaWriter`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteOptions {
    /// The manifest. Default: SHA-256 computed on the fly, at the end.
    pub manifest: ManifestMode,
    /// The modification time written in every header, in seconds since
    /// the Unix epoch. Default: now.
    pub mtime: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            manifest: ManifestMode::AtEnd(vec![Algorithm::Sha256]),
            mtime: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl WriteOptions {
    /// Sets the manifest mode.
    pub fn with_manifest(mut self, manifest: ManifestMode) -> Self {
        self.manifest = manifest;
        self
    }

    /// Sets the header modification time (seconds since the Unix epoch);
    /// a fixed value makes the output reproducible.
    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
}

type SeekFn<W> =
    for<'a> fn(&'a mut W, u64) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

fn seek_to<W: AsyncSeek + Unpin + Send>(
    w: &mut W,
    pos: u64,
) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
    Box::pin(async move { w.seek(SeekFrom::Start(pos)).await.map(|_| ()) })
}

/// Writes an OVA in DSP0243 order to any [`AsyncWrite`]: the descriptor,
/// the manifest right after it ([`ManifestMode::Upfront`]) or at the end
/// ([`ManifestMode::AtEnd`]), then the files in the order of the
/// descriptor's `References`, each as a ustar entry padded to 512 bytes,
/// then the two zero blocks that end a tar.
///
/// A tar header carries the entry's size before its data. An entry of
/// unknown size can therefore only be written to a seekable output
/// ([`OvaWriter::seekable`], [`OvaWriter::create`]), whose header is
/// patched once the data is written; on a pure stream
/// ([`OvaWriter::new`]) it is an [`Error::InvalidInput`] saying so.
///
/// The writer refuses what would make a bad package: a descriptor that
/// does not parse, files out of `References` order or not referenced,
/// data shorter or longer than announced, digests that do not match. After
/// an error the writer is unusable and the output incomplete;
/// [`OvaWriter::create`] writes to a `.part` file that only
/// [`finish`](Self::finish) renames into place, and removes it otherwise.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use hypersdk_ova::archive::{OvaReader, OvaWriter, WriteOptions};
///
/// let ovf = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
///     xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
///   <References><File ovf:id="f1" ovf:href="disk1.vmdk"/></References>
/// </Envelope>"#;
/// let mut ova = OvaWriter::new(Vec::new(), WriteOptions::default().with_mtime(0));
/// ova.write_descriptor("vm.ovf", ovf).await?;
/// ova.append_bytes("disk1.vmdk", b"disk bytes".to_vec().into()).await?;
/// let bytes = ova.finish().await?;
///
/// let summary = OvaReader::new(&bytes[..]).finish().await?;
/// assert!(summary.manifest_verified); // vm.mf, SHA-256, written at the end
/// # Ok::<(), hypersdk_core::Error>(())
/// # }).unwrap();
/// ```
pub struct OvaWriter<W> {
    out: W,
    seek: Option<SeekFn<W>>,
    /// Bytes written since the start of the archive.
    pos: u64,
    /// The output position where the archive starts (seekable outputs).
    base: u64,
    options: WriteOptions,
    descriptor: Option<String>,
    /// The files the descriptor references, in order, and how many have
    /// been written.
    references: Vec<String>,
    next_reference: usize,
    /// Digests computed while writing ([`ManifestMode::AtEnd`]).
    computed: Manifest,
    failed: bool,
    /// For [`OvaWriter::create`]: the `.part` file and the final path.
    part: Option<PartFile>,
}

#[derive(Debug)]
struct PartFile {
    part: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

impl<W: AsyncWrite + Unpin> OvaWriter<W> {
    /// A writer to a pure stream (an HTTP request body, a pipe, memory).
    pub fn new(out: W, options: WriteOptions) -> Self {
        OvaWriter {
            out,
            seek: None,
            pos: 0,
            base: 0,
            options,
            descriptor: None,
            references: Vec::new(),
            next_reference: 0,
            computed: Manifest::new(),
            failed: false,
            part: None,
        }
    }

    /// Writes the descriptor, which must come first; with
    /// [`ManifestMode::Upfront`] the manifest follows it at once.
    ///
    /// The descriptor is parsed first: one that does not parse is an error
    /// and nothing is written. Its `References` fix the order of the files.
    pub async fn write_descriptor(&mut self, name: &str, xml: &[u8]) -> Result<()> {
        self.check_usable()?;
        if self.descriptor.is_some() {
            return Err(Error::invalid_input(
                "the OVA descriptor is written once, first",
            ));
        }
        if !super::EntryKind::is_descriptor_name(name) {
            return Err(Error::invalid_input(format!(
                "the descriptor's entry name must end in .ovf, not '{name}'"
            )));
        }
        let envelope = Envelope::parse(xml).map_err(|e| super::reader::prefix_error(e, name))?;
        let name = validate_name(name)?;
        let mf_name = manifest_name(&name);
        let mut references: Vec<String> = Vec::new();
        for f in envelope.references() {
            if f.href.contains("://") {
                // A URL names a file outside the package.
                continue;
            }
            if f.chunk_size.is_some() {
                return Err(Error::unsupported(
                    format!("writing chunked file '{}' (ovf:chunkSize)", f.href),
                    "OvaWriter",
                ));
            }
            let href = validate_name(&f.href).map_err(|e| {
                Error::invalid_input(format!("the descriptor references '{}': {e}", f.href))
            })?;
            if references.contains(&href) || href == name {
                return Err(Error::invalid_input(format!(
                    "the descriptor references '{href}' twice (or as itself)"
                )));
            }
            if href == mf_name && self.options.manifest != ManifestMode::None {
                return Err(Error::invalid_input(format!(
                    "the descriptor references '{href}', the name of the manifest this \
                     writer adds"
                )));
            }
            references.push(href);
        }
        match &self.options.manifest {
            ManifestMode::AtEnd(algorithms) if algorithms.is_empty() => {
                return Err(Error::invalid_input(
                    "ManifestMode::AtEnd needs at least one algorithm (or use ManifestMode::None)",
                ));
            }
            ManifestMode::Upfront(mf) => {
                for listed in mf.names() {
                    if listed != name && !references.iter().any(|r| r == listed) {
                        return Err(Error::invalid_input(format!(
                            "the manifest given up front lists '{listed}', which the \
                             descriptor does not reference"
                        )));
                    }
                }
                if let Some(missing) = references.iter().find(|r| !mf.contains(r)) {
                    return Err(Error::invalid_input(format!(
                        "the manifest given up front does not list '{missing}', which the \
                         descriptor references: every file of the package must be listed"
                    )));
                }
            }
            _ => {}
        }
        // Every name must fit in a manifest line.
        if self.options.manifest != ManifestMode::None {
            for n in references.iter().chain([&name]) {
                crate::mf::check_entry_name(n).map_err(|e| {
                    Error::invalid_input(format!("'{n}' cannot be listed in a manifest: {e}"))
                })?;
            }
        }
        self.references = references;
        let data = Bytes::copy_from_slice(xml);
        self.descriptor = Some(name.clone());
        self.write_entry(
            &name,
            Some(data.len() as u64),
            futures::stream::iter([Ok(data)]),
        )
        .await?;
        if let ManifestMode::Upfront(mf) = &self.options.manifest {
            let mf = mf.clone();
            let text = Bytes::from(self.computed_with_upfront(&mf, &name).to_string());
            self.write_entry(
                &mf_name,
                Some(text.len() as u64),
                futures::stream::iter([Ok(text)]),
            )
            .await?;
        }
        Ok(())
    }

    /// Appends the next file from a stream of chunks; `size` is its length
    /// when known (required on a pure stream).
    pub async fn append_stream<S>(&mut self, name: &str, size: Option<u64>, data: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        self.check_usable()?;
        let Some(descriptor) = self.descriptor.clone() else {
            return Err(Error::invalid_input(
                "write the descriptor before any other entry of an OVA",
            ));
        };
        let name = validate_name(name)?;
        if name == descriptor {
            return Err(Error::invalid_input(format!("'{name}' is written already")));
        }
        match self.references.get(self.next_reference) {
            Some(expected) if *expected == name => {}
            Some(expected) => {
                let why = if self.references.contains(&name) {
                    format!(
                        "out of order: the descriptor's References put '{expected}' next \
                         (or '{name}' is written already)"
                    )
                } else {
                    format!("the descriptor does not reference it (next expected: '{expected}')")
                };
                return Err(Error::invalid_input(format!(
                    "cannot append '{name}': {why}"
                )));
            }
            None => {
                return Err(Error::invalid_input(format!(
                    "cannot append '{name}': the descriptor references no more files"
                )));
            }
        }
        if size.is_none() && self.seek.is_none() {
            return Err(Error::invalid_input(format!(
                "cannot append '{name}' of unknown size to a pure stream: a tar header \
                 carries the size before the data; give the size, or write to a seekable \
                 output (OvaWriter::seekable or OvaWriter::create) whose header is patched \
                 afterwards"
            )));
        }
        self.write_entry(&name, size, data).await?;
        self.next_reference += 1;
        Ok(())
    }

    /// Appends the next file from an [`AsyncRead`].
    pub async fn append_reader<R>(&mut self, name: &str, size: Option<u64>, data: R) -> Result<()>
    where
        R: AsyncRead + Unpin,
    {
        let stream = tokio_util::io::ReaderStream::with_capacity(data, 1 << 20)
            .map(|r| r.map_err(super::reader::from_io));
        self.append_stream(name, size, stream).await
    }

    /// Appends the next file from memory.
    pub async fn append_bytes(&mut self, name: &str, data: Bytes) -> Result<()> {
        let size = data.len() as u64;
        self.append_stream(name, Some(size), futures::stream::iter([Ok(data)]))
            .await
    }

    /// Checks that every referenced file was written, writes the manifest
    /// ([`ManifestMode::AtEnd`]) and the end-of-archive blocks, flushes,
    /// and returns the output. For [`OvaWriter::create`] the `.part` file is
    /// synced and renamed into place.
    pub async fn finish(mut self) -> Result<W> {
        self.check_usable()?;
        let Some(descriptor) = self.descriptor.clone() else {
            return Err(Error::invalid_input("an OVA needs its descriptor"));
        };
        if let Some(missing) = self.references.get(self.next_reference) {
            return Err(Error::invalid_input(format!(
                "the descriptor references '{missing}', which was not written"
            )));
        }
        if let ManifestMode::AtEnd(_) = &self.options.manifest {
            let text = Bytes::from(self.computed.to_string());
            let mf_name = manifest_name(&descriptor);
            self.write_entry(
                &mf_name,
                Some(text.len() as u64),
                futures::stream::iter([Ok(text)]),
            )
            .await?;
        }
        let end = [0u8; 2 * BLOCK];
        self.write_raw(&end).await?;
        if let Err(e) = self.out.flush().await {
            return self.fail(Error::io("OVA output", e));
        }
        if let Some(part) = self.part.as_mut() {
            let target = part.target.clone();
            let from = part.part.clone();
            // Sync through a fresh handle: `W` is not known to be a file.
            let sync = tokio::task::spawn_blocking(move || -> io::Result<()> {
                std::fs::File::open(&from)?.sync_all()?;
                // A link fails if `target` appeared meanwhile: never
                // replace a file we did not write.
                std::fs::hard_link(&from, &target)?;
                std::fs::remove_file(&from)?;
                if let Some(dir) = target.parent() {
                    let dir = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    };
                    // Persist the rename; not every platform can open a
                    // directory, which is not an error.
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::other(format!("finishing the OVA failed: {e}")))?;
            sync.map_err(|e| Error::io(format!("OVA '{}'", part.target.display()), e))?;
            part.done = true;
        }
        Ok(self.out)
    }

    /// The number of bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            Err(Error::invalid_input(
                "the OVA writer failed earlier; its output is incomplete",
            ))
        } else {
            Ok(())
        }
    }

    fn fail<T>(&mut self, e: Error) -> Result<T> {
        self.failed = true;
        Err(e)
    }

    /// The upfront manifest with the descriptor's digest added for every
    /// algorithm the manifest uses.
    fn computed_with_upfront(&self, mf: &Manifest, descriptor: &str) -> Manifest {
        let mut out = Manifest::new();
        for (name, checksum) in self
            .computed
            .entries()
            .iter()
            .map(|e| (&e.name, e.checksum))
        {
            if name == descriptor {
                let _ = out.insert(name.clone(), checksum);
            }
        }
        for e in mf.entries() {
            if e.name != descriptor {
                let _ = out.insert(e.name.clone(), e.checksum);
            }
        }
        out
    }

    /// Writes one entry: header(s), data (hashed as the manifest mode
    /// needs), padding; patches the header afterwards when `size` is not
    /// known.
    async fn write_entry<S>(&mut self, name: &str, size: Option<u64>, mut data: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        let header = match encode_entry(name, size.unwrap_or(0), self.options.mtime) {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let header_pos = self.pos + header.len() as u64 - BLOCK as u64;
        self.write_raw(&header).await?;

        let is_descriptor = self.descriptor.as_deref() == Some(name);
        let algorithms: Vec<Algorithm> = match &self.options.manifest {
            ManifestMode::None => Vec::new(),
            ManifestMode::AtEnd(algs) => algs.clone(),
            ManifestMode::Upfront(mf) if is_descriptor => mf.algorithms(),
            ManifestMode::Upfront(mf) => mf.checksums_of(name).map(|c| c.algorithm()).collect(),
        };
        let is_manifest = !is_descriptor && name.to_ascii_lowercase().ends_with(".mf");
        let mut hasher = (!algorithms.is_empty() && !is_manifest).then(|| {
            if algorithms.len() == 1 {
                MultiHasher::offloaded(&algorithms)
            } else {
                MultiHasher::new(&algorithms)
            }
        });
        let mut written = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return self.fail(e),
            };
            written += chunk.len() as u64;
            if let Some(expected) = size
                && written > expected
            {
                return self.fail(Error::invalid_input(format!(
                    "entry '{name}' was announced as {expected} bytes, but its data is longer"
                )));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(chunk.clone());
            }
            self.write_raw(&chunk).await?;
        }
        if let Some(expected) = size
            && written != expected
        {
            return self.fail(Error::invalid_input(format!(
                "entry '{name}' was announced as {expected} bytes, but its data ended after \
                 {written}"
            )));
        }
        let pad = vec![0u8; padding(written) as usize];
        self.write_raw(&pad).await?;
        if size.is_none() {
            self.patch_size(name, header_pos, written).await?;
        }
        if let Some(h) = hasher {
            let digests = match h.finish() {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            let mut checks: Vec<(Checksum, Option<Checksum>)> = Vec::new();
            for actual in digests.iter() {
                let expected = match &self.options.manifest {
                    ManifestMode::Upfront(mf) if !is_descriptor => {
                        mf.get(name, actual.algorithm()).copied()
                    }
                    _ => None,
                };
                checks.push((*actual, expected));
            }
            for (actual, expected) in checks {
                if let Some(expected) = expected
                    && let Err(e) = expected.verify(name, &actual)
                {
                    return self.fail(e);
                }
                if let Err(e) = self.computed.insert(name.to_string(), actual) {
                    return self.fail(e);
                }
            }
        }
        Ok(())
    }

    async fn patch_size(&mut self, name: &str, header_pos: u64, size: u64) -> Result<()> {
        let Some(seek) = self.seek else {
            return self.fail(Error::invalid_input(
                "header patching needs a seekable output",
            ));
        };
        let header = match encode_entry(name, size, self.options.mtime) {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let ustar = &header[header.len() - BLOCK..];
        let end = self.base + self.pos;
        let r = async {
            seek(&mut self.out, self.base + header_pos).await?;
            self.out.write_all(ustar).await?;
            seek(&mut self.out, end).await
        }
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) => self.fail(Error::io("OVA output", e)),
        }
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.out.write_all(bytes).await {
            Ok(()) => {
                self.pos += bytes.len() as u64;
                Ok(())
            }
            Err(e) => self.fail(Error::io("OVA output", e)),
        }
    }
}

impl<W: AsyncWrite + AsyncSeek + Unpin + Send> OvaWriter<W> {
    /// A writer to a seekable output (a file): entries of unknown size are
    /// allowed, their headers patched once the data is written. The archive
    /// starts at the output's current position.
    pub async fn seekable(mut out: W, options: WriteOptions) -> Result<Self> {
        let base = out
            .stream_position()
            .await
            .map_err(|e| Error::io("OVA output", e))?;
        let mut w = OvaWriter::new(out, options);
        w.seek = Some(seek_to::<W>);
        w.base = base;
        Ok(w)
    }
}

impl OvaWriter<tokio::io::BufWriter<tokio::fs::File>> {
    /// A writer to the file `path`, which appears only when
    /// [`finish`](Self::finish) succeeds: the archive is written to
    /// `path.part` (created new; an existing one is an error) and renamed,
    /// and the `.part` file is removed if the writer is dropped unfinished.
    /// An existing `path` is an [`Error::AlreadyExists`].
    pub async fn create(path: impl AsRef<Path>, options: WriteOptions) -> Result<Self> {
        let target = path.as_ref().to_path_buf();
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Err(Error::already_exists(format!("OVA '{}'", target.display())));
        }
        let mut part = target.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::already_exists(format!(
                        "'{}', an unfinished write of OVA '{}' (another writer, or a \
                         crashed one: remove it if none is running)",
                        part.display(),
                        target.display()
                    ))
                } else {
                    Error::io(format!("OVA '{}'", part.display()), e)
                }
            })?;
        let guard = PartFile {
            part,
            target,
            done: false,
        };
        let out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut w = OvaWriter::seekable(out, options).await?;
        w.part = Some(guard);
        Ok(w)
    }
}

/// The manifest's entry name for descriptor `name`: same stem, `.mf`.
fn manifest_name(descriptor: &str) -> String {
    let stem = descriptor
        .len()
        .checked_sub(4)
        .and_then(|i| descriptor.get(..i))
        .unwrap_or(descriptor);
    format!("{stem}.mf")
}
