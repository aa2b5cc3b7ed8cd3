//! `ova verify`: digests, sizes and disk structure, one line per file.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hypersdk_core::Error;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::digest::{Algorithm, Digests, MultiHasher};
use hypersdk_core::fsutil::parent_dir;
use hypersdk_core::model::Extent;
use hypersdk_core::progress::{ItemProgress, Phase};
use hypersdk_ova::archive::{EntryKind, EntrySummary, OvaIndex, OvaReader};
use hypersdk_ova::mf::{MAX_MANIFEST_BYTES, Manifest};
use hypersdk_ova::ovf::{Envelope, ParseOptions};
use hypersdk_ova::vmdk::convert::{RawOptions, hash_raw};
use hypersdk_ova::vmdk::decode::DecodeOptions;
use hypersdk_ova::vmdk::format::SparseHeader;
use hypersdk_ova::vmdk::sparse::HostedDisk;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::input::{self, Counting, Kind, Opened, Source, is_stream_header, read_head};
use super::inspect::{descriptor_error, file_name, local_file, read_limited, sidecar_manifest};
use super::output::human;
use super::{Ctx, Failure, Io, OrFail, Status, one_line};

/// The result of checking one file: what was checked, or the problem.
type Checked = Result<String, Error>;

/// Runs `ova verify`.
pub(crate) async fn verify(
    input: &Path,
    require_manifest: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let source = Source::new(input);
    let label = source.label();
    let opened = input::open(&source, io).await?;
    let mut report = Report::new(&label);
    match opened.kind {
        Kind::Ova => verify_ova(&source, opened, require_manifest, ctx, &mut report).await,
        Kind::Ovf => verify_ovf(&source, opened, require_manifest, ctx, &mut report).await?,
        Kind::Manifest => verify_manifest(&source, opened, ctx, &mut report).await?,
        Kind::Vmdk => verify_vmdk(&source, opened, ctx, &mut report).await,
        other => {
            let what = match other {
                Kind::Gzip => "gzip-compressed: gunzip it first",
                k => k.describe(),
            };
            return Err(Failure::new(
                &label,
                Error::invalid_data(format!("'{label}'"), what),
            ));
        }
    }
    report.print(io).await
}

/// The lines of a verification and its problems.
struct Report {
    label: String,
    /// `(file, result)` in the order the files were met.
    lines: Vec<(String, Checked)>,
    /// Problems of the whole package (not of one file).
    package: Vec<Error>,
    /// Extra lines after the files (what was not checked, and why).
    notes: Vec<String>,
    /// The closing words on success.
    ok_summary: String,
}

impl Report {
    /// An empty report of the input `label`.
    fn new(label: &str) -> Report {
        Report {
            label: label.to_string(),
            lines: Vec::new(),
            package: Vec::new(),
            notes: Vec::new(),
            ok_summary: String::new(),
        }
    }

    /// Adds the line of one file.
    fn line(&mut self, name: impl Into<String>, result: Checked) {
        self.lines.push((name.into(), result));
    }

    /// Prints the lines and the closing line on standard output, each
    /// problem on standard error, and returns the status they make.
    async fn print(self, io: &mut Io<'_>) -> Result<Status, Failure> {
        let mut text = String::new();
        for (name, r) in &self.lines {
            match r {
                Ok(note) if note.is_empty() => text.push_str(&format!("{name}: OK\n")),
                Ok(note) => text.push_str(&format!("{name}: OK ({note})\n")),
                Err(e) => text.push_str(&format!("{name}: FAILED: {}\n", one_line(&e.to_string()))),
            }
        }
        for n in &self.notes {
            text.push_str(&format!("{}: {n}\n", self.label));
        }
        let problems: Vec<&Error> = self
            .lines
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .chain(self.package.iter())
            .collect();
        let status = Status::worst(problems.iter().copied());
        if problems.is_empty() {
            text.push_str(&format!("{}: OK ({})\n", self.label, self.ok_summary));
        } else {
            let n = problems.len();
            let s = if n == 1 { "" } else { "s" };
            text.push_str(&format!("{}: FAILED ({n} problem{s})\n", self.label));
        }
        io.out(&text).await?;
        for e in problems {
            io.note(&format!("{}: {e}", self.label));
        }
        Ok(status)
    }
}

/// Whether the package's file `name` is a VMDK disk: by name, or by the
/// format of the disk the descriptor stores in it.
fn is_vmdk(name: &str, envelope: Option<&Envelope>) -> bool {
    if name.to_ascii_lowercase().ends_with(".vmdk") {
        return true;
    }
    let Some(env) = envelope else {
        return false;
    };
    env.disks().any(|d| {
        d.format.as_deref().is_some_and(|f| f.contains("vmdk"))
            && d.file_ref
                .as_deref()
                .and_then(|id| env.file(id))
                .is_some_and(|f| f.href == name)
    })
}

/// Whether the descriptor says `name` is stored compressed.
fn is_compressed(name: &str, envelope: Option<&Envelope>) -> bool {
    envelope.is_some_and(|env| {
        env.references()
            .iter()
            .any(|r| r.href == name && r.compression.as_deref().is_some_and(|c| c != "identity"))
    })
}

/// An I/O error from a reader, unwrapping a hypersdk error it carries (a
/// digest mismatch the OVA reader found).
fn from_io(object: &str, e: std::io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::io(object, e);
    }
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(err)) => *err,
        _ => Error::other(format!("{object}: read failed")),
    }
}

/// What the structure check of a disk read from a stream found.
enum DiskCheck {
    /// Decoded to its end: what it is.
    Decoded(String),
    /// A hosted sparse disk: its header, its grain tables still to check.
    Hosted(SparseHeader),
    /// Not checked, and why.
    Skipped(String),
}

/// Decodes the VMDK from `reader` to its end without writing anything.
async fn decode_disk<R: AsyncRead + Unpin + Send>(
    mut reader: R,
    object: &str,
) -> Result<DiskCheck, Error> {
    let head = read_head(&mut reader, 512)
        .await
        .map_err(|e| from_io(object, e))?;
    if head.starts_with(b"KDMV") {
        let header = SparseHeader::parse(object, &head)?;
        if !(header.has_markers() && header.is_compressed()) {
            return Ok(DiskCheck::Hosted(header));
        }
    }
    let reader = std::io::Cursor::new(head).chain(reader);
    let options = RawOptions::default()
        .with_digests(&[])
        .with_decode(DecodeOptions::default().with_name(object));
    let r = hash_raw(reader, &options).await?;
    Ok(DiskCheck::Decoded(format!(
        "VMDK streamOptimized, {}, {} grains decoded",
        human(r.capacity),
        r.grains
    )))
}

/// The algorithms a manifest checks for `name`, as `sha1+sha256`.
fn listed(mf: Option<&Manifest>, name: &str) -> String {
    mf.map(|m| {
        m.checksums_of(name)
            .map(|c| c.algorithm().name())
            .collect::<Vec<_>>()
            .join("+")
    })
    .unwrap_or_default()
}

/// Verifies a package read once as a stream: each entry's digest (by the
/// reader), its `ovf:size`, and the structure of its VMDK disks (decoded
/// as they go by; hosted sparse disks through the index afterwards).
async fn verify_ova(
    source: &Source,
    opened: Opened<'_>,
    require_manifest: bool,
    ctx: &Ctx,
    report: &mut Report,
) {
    let label = source.label();
    let mut ova = OvaReader::new(opened.reader);
    let mut errors: HashMap<String, Vec<Error>> = HashMap::new();
    let add = |errors: &mut HashMap<String, Vec<Error>>, name: &str, e: Error| {
        errors.entry(name.to_string()).or_default().push(e);
    };
    let mut notes: HashMap<String, String> = HashMap::new();
    let mut hosted: Vec<(String, SparseHeader)> = Vec::new();
    let mut stopped = false;
    loop {
        let entry = match ova.next_entry().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                // A manifest read late names the file that failed.
                match errors_target(&e, ova.entries()) {
                    Some(name) => add(&mut errors, &name, e),
                    None => report.package.push(e),
                }
                stopped = true;
                break;
            }
        };
        let item = Arc::new(ctx.progress.item(
            Phase::Verifying,
            entry.name.clone(),
            Some(entry.size),
        ));
        let object = format!("entry '{}'", entry.name);
        let mut disk = None;
        if is_vmdk(&entry.name, ova.envelope()) {
            if is_compressed(&entry.name, ova.envelope()) {
                disk = Some(Ok(DiskCheck::Skipped(
                    "compressed: disk structure not checked".into(),
                )));
            } else {
                let reader = Counting::new(ova.entry_reader(), Some(Arc::clone(&item)));
                disk = Some(decode_disk(reader, &object).await);
            }
        }
        // A digest mismatch surfaced while decoding: the reader is spent.
        if let Some(Err(e)) = &disk
            && e.kind() == hypersdk_core::ErrorKind::Integrity
        {
            if let Some(Err(e)) = disk {
                add(&mut errors, &entry.name, e);
            }
            stopped = true;
            break;
        }
        // The rest of the entry, its digest checked at its end.
        let drained = drain(&mut ova, &item).await;
        item.finish();
        match (disk, drained) {
            (Some(Err(de)), Err(e)) => {
                // A digest mismatch explains a disk that does not decode.
                let primary = if e.kind() == hypersdk_core::ErrorKind::Integrity {
                    e
                } else {
                    de
                };
                add(&mut errors, &entry.name, primary);
                stopped = true;
                break;
            }
            (_, Err(e)) => {
                add(&mut errors, &entry.name, e);
                stopped = true;
                break;
            }
            (Some(Err(de)), Ok(())) => add(&mut errors, &entry.name, de),
            (Some(Ok(DiskCheck::Decoded(n))), Ok(()))
            | (Some(Ok(DiskCheck::Skipped(n))), Ok(())) => {
                notes.insert(entry.name.clone(), n);
            }
            (Some(Ok(DiskCheck::Hosted(h))), Ok(())) => hosted.push((entry.name.clone(), h)),
            (None, Ok(())) => {}
        }
    }
    let manifest = ova.manifest().cloned();
    let envelope = ova.envelope().cloned();
    let mut entries: Vec<EntrySummary> = ova.entries().to_vec();
    if !stopped {
        match ova.finish().await {
            Ok(summary) => entries = summary.entries,
            Err(e) => {
                // A late manifest's mismatch names the file: put it there.
                match errors_target(&e, &entries) {
                    Some(name) => add(&mut errors, &name, e),
                    None => report.package.push(e),
                }
                stopped = true;
            }
        }
    }
    // Hosted sparse disks: their grain tables, through the index.
    for (name, header) in hosted {
        let note = match source {
            Source::File(path) if !stopped => check_hosted_in_ova(path, &name).await,
            _ => Ok(format!(
                "VMDK hosted sparse, {}: header checked; its grain tables need random \
                 access (verify the file, not '-')",
                human(header.capacity_bytes())
            )),
        };
        match note {
            Ok(n) => {
                notes.insert(name, n);
            }
            Err(e) => add(&mut errors, &name, e),
        }
    }
    // Sizes the descriptor gives: a file cut short explains a disk that
    // does not decode, so this comes first.
    if let Some(env) = &envelope {
        for r in env.references() {
            let (Some(want), None) = (r.size, r.chunk_size) else {
                continue;
            };
            let name = r.href.trim_start_matches("./");
            if let Some(e) = entries.iter().find(|e| e.name == name)
                && e.size != want
            {
                let size = Error::integrity(
                    format!("entry '{name}'"),
                    format!("{want} bytes, as the descriptor's ovf:size says"),
                    format!("{} bytes", e.size),
                );
                errors.entry(name.to_string()).or_default().insert(0, size);
            }
        }
    }
    for e in &entries {
        match errors.remove(&e.name) {
            Some(problems) => {
                for p in problems {
                    report.line(e.name.clone(), Err(p));
                }
            }
            None => report.line(
                e.name.clone(),
                Ok(entry_note(
                    e,
                    manifest.as_ref(),
                    notes.remove(&e.name),
                    stopped,
                )),
            ),
        }
    }
    // An error named a file never reached as an entry.
    let mut rest: Vec<_> = errors.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, problems) in rest {
        for p in problems {
            report.line(name.clone(), Err(p));
        }
    }
    if stopped {
        report
            .notes
            .push("stopped at the first error: files after it, if any, were not checked".into());
    } else if manifest.is_none() {
        if require_manifest {
            report.package.push(Error::integrity(
                format!("package '{label}'"),
                "a manifest (.mf)",
                "none, so the files' digests cannot be checked",
            ));
        } else {
            report
                .notes
                .push("no manifest: the files' digests were not checked".into());
        }
    }
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
    report.ok_summary = format!(
        "{files} file{}, {}",
        if files == 1 { "" } else { "s" },
        if manifest.is_some() {
            "manifest verified"
        } else {
            "no manifest"
        }
    );
}

/// The entry a late-manifest error is about, when it names one.
fn errors_target(e: &Error, entries: &[EntrySummary]) -> Option<String> {
    if let Error::Integrity { object, .. } = e {
        return entries
            .iter()
            .find(|en| *object == format!("entry '{}'", en.name) || *object == en.name)
            .map(|en| en.name.clone());
    }
    None
}

/// What the line of a checked entry says.
fn entry_note(
    e: &EntrySummary,
    mf: Option<&Manifest>,
    disk: Option<String>,
    stopped: bool,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    match e.kind {
        EntryKind::Manifest => parts.push(match mf {
            Some(m) => format!("manifest, {} entries", m.entries().len()),
            None => "manifest".into(),
        }),
        EntryKind::Certificate => parts.push("certificate, signature not checked".into()),
        kind => {
            if kind == EntryKind::Descriptor {
                parts.push("descriptor".into());
            }
            if e.verified {
                parts.push(format!("{} verified", listed(mf, &e.name)));
            } else if mf.is_some() {
                parts.push(if stopped {
                    "digest not checked".into()
                } else {
                    "not verified".into()
                });
            } else if let Some(sha) = e.digests.as_ref().and_then(|d| d.get(Algorithm::Sha256)) {
                parts.push(format!("no manifest, sha256 {}", sha.to_hex()));
            }
        }
    }
    if let Some(d) = disk {
        parts.push(d);
    }
    parts.join("; ")
}

/// Reads the rest of the current entry, counting it.
async fn drain<R: AsyncRead + Unpin>(
    ova: &mut OvaReader<R>,
    item: &ItemProgress,
) -> Result<(), Error> {
    while let Some(chunk) = ova.read_chunk().await? {
        item.add(chunk.len() as u64);
    }
    Ok(())
}

/// Checks the grain tables of the hosted sparse disk `name` of the OVA at
/// `path`, through its index (random access to that entry only).
async fn check_hosted_in_ova(path: &Path, name: &str) -> Result<String, Error> {
    let index = OvaIndex::open(path).await?;
    let source: Arc<dyn BlockSource> = Arc::new(index.open_entry(name)?);
    let disk = HostedDisk::open_extent(source).await?;
    let allocated = disk
        .allocated_extents()
        .await?
        .map_or(disk.capacity(), |x| x.total_bytes());
    Ok(format!(
        "VMDK monolithicSparse, {}, {} allocated; grain tables checked",
        human(disk.capacity()),
        human(allocated)
    ))
}

/// Reads a descriptor or manifest next to the files it names.
async fn verify_ovf(
    source: &Source,
    opened: Opened<'_>,
    require_manifest: bool,
    ctx: &Ctx,
    report: &mut Report,
) -> Result<(), Failure> {
    let label = source.label();
    let bytes = read_limited(opened.reader, ParseOptions::default().max_bytes, &label).await?;
    let envelope = Envelope::parse(&bytes)
        .map_err(|e| descriptor_error(e, &label))
        .or_fail(&label)?;
    let Source::File(path) = source else {
        report.line("-", Ok("descriptor parsed".into()));
        report
            .notes
            .push("read from standard input: the files it references were not checked".into());
        report.ok_summary = "descriptor only".into();
        return Ok(());
    };
    let dir = parent_dir(path);
    let name = file_name(path);
    let mf_path = path.with_extension("mf");
    let manifest = sidecar_manifest(path).await?.map(|(_, mf)| mf);
    // The descriptor itself.
    let mut result = Ok("descriptor".to_string());
    if let Some(mf) = &manifest {
        result = if mf.contains(&name) {
            let algs: Vec<Algorithm> = mf.checksums_of(&name).map(|c| c.algorithm()).collect();
            let mut h = MultiHasher::inline(&algs);
            h.update_slice(&bytes);
            h.finish()
                .and_then(|d| mf.verify(&name, &d))
                .map(|()| format!("descriptor; {} verified", listed(Some(mf), &name)))
        } else {
            Err(unlisted(&name, &mf_path))
        };
    }
    report.line(name.clone(), result);
    let mut names: Vec<(String, Option<u64>)> = Vec::new();
    for r in envelope.references() {
        if r.href.contains("://") {
            report
                .notes
                .push(format!("'{}' is a URL: not checked", r.href));
            continue;
        }
        names.push((r.href.clone(), r.size));
    }
    if let Some(mf) = &manifest {
        for n in mf.names() {
            if n != name && !names.iter().any(|(h, _)| h == n) {
                names.push((n.to_string(), None));
            }
        }
    }
    for (href, size) in names {
        let result = match &manifest {
            Some(mf) if !mf.contains(&href) => Err(unlisted(&href, &mf_path)),
            _ => {
                let disk =
                    is_vmdk(&href, Some(&envelope)) && !is_compressed(&href, Some(&envelope));
                check_local(&dir, &href, size, manifest.as_ref(), disk, ctx).await
            }
        };
        report.line(href, result);
    }
    if manifest.is_none() {
        if require_manifest {
            report.package.push(Error::integrity(
                format!("package '{label}'"),
                format!("a manifest '{}'", mf_path.display()),
                "none, so the files' digests cannot be checked",
            ));
        } else {
            report
                .notes
                .push("no manifest next to it: the files' digests were not checked".into());
        }
    }
    let files = report.lines.len() - 1;
    report.ok_summary = format!(
        "{files} file{}, {}",
        if files == 1 { "" } else { "s" },
        if manifest.is_some() {
            "manifest verified"
        } else {
            "no manifest"
        }
    );
    Ok(())
}

/// The error for a file the manifest `mf` does not list.
fn unlisted(name: &str, mf: &Path) -> Error {
    Error::integrity(
        format!("file '{name}'"),
        format!("a digest in the manifest '{}'", mf.display()),
        "no digest: the manifest does not list this file",
    )
}

/// Checks the files a manifest lists, next to it, like `sha256sum -c`
/// (and the structure of the VMDK disks among them).
async fn verify_manifest(
    source: &Source,
    opened: Opened<'_>,
    ctx: &Ctx,
    report: &mut Report,
) -> Result<(), Failure> {
    let label = source.label();
    let bytes = read_limited(opened.reader, MAX_MANIFEST_BYTES, &label).await?;
    let mf = Manifest::parse_named(&label, &bytes).or_fail(&label)?;
    let Source::File(path) = source else {
        report.line("-", Ok(format!("manifest, {} entries", mf.entries().len())));
        report
            .notes
            .push("read from standard input: the files it lists were not checked".into());
        report.ok_summary = "manifest only".into();
        return Ok(());
    };
    let dir = parent_dir(path);
    let names: Vec<String> = mf.names().into_iter().map(str::to_owned).collect();
    for name in &names {
        let disk = name.to_ascii_lowercase().ends_with(".vmdk");
        let result = check_local(&dir, name, None, Some(&mf), disk, ctx).await;
        report.line(name.clone(), result);
    }
    report.ok_summary = format!("{} files verified", names.len());
    Ok(())
}

/// Checks one file of a directory package: present, of the size the
/// descriptor gives, its digests, and its structure if it is a VMDK.
async fn check_local(
    dir: &Path,
    name: &str,
    size: Option<u64>,
    mf: Option<&Manifest>,
    disk: bool,
    ctx: &Ctx,
) -> Checked {
    let Some(path) = local_file(dir, name) else {
        return Err(Error::invalid_data(
            format!("file '{name}'"),
            "not a plain relative name: it would be outside the package's directory",
        ));
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return Err(Error::invalid_data(
                format!("file '{name}'"),
                "not a regular file",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::integrity(
                format!("file '{name}'"),
                "a file next to the descriptor or manifest that names it",
                format!("no such file ({})", path.display()),
            ));
        }
        Err(e) => return Err(input::io_error(&path, e)),
    };
    if let Some(want) = size
        && want != meta.len()
    {
        return Err(Error::integrity(
            format!("file '{name}'"),
            format!("{want} bytes, as the descriptor's ovf:size says"),
            format!("{} bytes", meta.len()),
        ));
    }
    let algorithms: Vec<Algorithm> = mf
        .map(|m| m.checksums_of(name).map(|c| c.algorithm()).collect())
        .unwrap_or_default();
    let item = Arc::new(ctx.progress.item(Phase::Verifying, name, Some(meta.len())));
    let object = format!("file '{name}'");
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| input::io_error(&path, e))?;
    let mut hashing = Hashing::new(
        Counting::new(
            tokio::io::BufReader::with_capacity(1 << 20, file),
            Some(Arc::clone(&item)),
        ),
        &algorithms,
    );
    // One read: the digests are computed while the disk is decoded.
    let mut structure: Option<Result<DiskCheck, Error>> = None;
    if disk {
        structure = Some(decode_disk(&mut hashing, &object).await);
    }
    // The rest (all of a file that is not a disk).
    let mut sink = tokio::io::sink();
    tokio::io::copy(&mut hashing, &mut sink)
        .await
        .map_err(|e| input::io_error(&path, e))?;
    item.finish();
    let digests = hashing.finish()?;
    if let Some(m) = mf {
        m.verify(name, &digests)?;
    }
    let mut parts = Vec::new();
    if !algorithms.is_empty() {
        parts.push(format!("{} verified", listed(mf, name)));
    }
    match structure {
        None => {}
        Some(Err(e)) => return Err(e),
        Some(Ok(DiskCheck::Decoded(n) | DiskCheck::Skipped(n))) => parts.push(n),
        Some(Ok(DiskCheck::Hosted(_))) => {
            let disk = HostedDisk::open_path(&path).await?;
            parts.push(read_hosted(&disk, None).await?);
        }
    }
    Ok(parts.join("; "))
}

/// Reads every allocated byte of a hosted disk (its grain tables and
/// data all readable), with a progress bar over the allocated bytes when
/// `bar` gives the run and the bar's name.
async fn read_hosted(disk: &HostedDisk, bar: Option<(&Ctx, &str)>) -> Result<String, Error> {
    let allocated = disk
        .allocated_extents()
        .await?
        .unwrap_or_else(|| hypersdk_core::model::ExtentList::full(disk.capacity()));
    let item = bar.map(|(ctx, name)| {
        ctx.progress
            .item(Phase::Verifying, name, Some(allocated.total_bytes()))
    });
    const STEP: u64 = 4 << 20;
    for x in allocated.iter() {
        let mut at = x.offset;
        let end = x.offset + x.length;
        while at < end {
            let n = STEP.min(end - at);
            disk.read_range(Extent::new(at, n)).await?;
            if let Some(item) = &item {
                item.add(n);
            }
            at += n;
        }
    }
    if let Some(item) = &item {
        item.finish();
    }
    let create = disk
        .descriptor()
        .and_then(|d| d.create_type())
        .unwrap_or("sparse extent")
        .to_string();
    Ok(format!(
        "VMDK {create}, {}, {} allocated read",
        human(disk.capacity()),
        human(allocated.total_bytes())
    ))
}

/// A single disk: decoded or read whole.
async fn verify_vmdk(source: &Source, opened: Opened<'_>, ctx: &Ctx, report: &mut Report) {
    let label = source.label();
    let object = format!("'{label}'");
    let mut reader = opened.reader;
    let result = async {
        let head = read_head(&mut reader, 512)
            .await
            .map_err(|e| from_io(&object, e))?;
        let stream = is_stream_header(&head);
        if stream || !head.starts_with(b"KDMV") && !looks_like_descriptor(&head) {
            // The file's bytes are the measure of a stream's progress.
            let item = Arc::new(
                ctx.progress
                    .item(Phase::Verifying, label.clone(), opened.len),
            );
            item.add(head.len() as u64);
            let reader = std::io::Cursor::new(head).chain(Counting::new(
                tokio::io::BufReader::with_capacity(1 << 20, reader),
                Some(Arc::clone(&item)),
            ));
            let options = RawOptions::default()
                .with_decode(DecodeOptions::default().with_name(object.clone()));
            let r = hash_raw(reader, &options).await;
            item.finish();
            let r = r?;
            let sha = r
                .digests
                .get(Algorithm::Sha256)
                .map(|c| c.to_hex())
                .unwrap_or_default();
            return Ok(format!(
                "VMDK streamOptimized, {}, {} grains decoded, raw image sha256 {sha}",
                human(r.capacity),
                r.grains
            ));
        }
        let Source::File(path) = source else {
            return Err(Error::unsupported(
                "reading a hosted VMDK from standard input (it needs random access: give the file)",
                "ova",
            ));
        };
        drop(reader);
        let disk = HostedDisk::open_path(path).await?;
        read_hosted(&disk, Some((ctx, label.as_str()))).await
    }
    .await;
    report.line(label, result);
    report.ok_summary = "disk readable to its end".into();
}

/// Whether the first bytes look like a VMDK text descriptor.
fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    t.starts_with('#') || t.to_ascii_lowercase().starts_with("version")
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Option<MultiHasher>,
}

impl<R> Hashing<R> {
    /// Hashes with `algorithms` (none: hashes nothing).
    fn new(inner: R, algorithms: &[Algorithm]) -> Self {
        Hashing {
            inner,
            hasher: (!algorithms.is_empty()).then(|| MultiHasher::new(algorithms)),
        }
    }

    /// The digests of all that was read.
    fn finish(self) -> Result<Digests, Error> {
        match self.hasher {
            Some(h) => h.finish(),
            None => MultiHasher::new(&[]).finish(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if let Some(h) = self.hasher.as_mut() {
                h.update_slice(new);
            }
        }
        r
    }
}
