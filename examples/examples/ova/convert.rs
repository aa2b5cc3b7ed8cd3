//! `ova convert`: VMDK → sparse raw, raw or hosted VMDK →
//! streamOptimized, package → one raw image per disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hypersdk_core::Error;
use hypersdk_core::blocks::{BlockSource, CopyOptions, FileSource, copy_to_file};
use hypersdk_core::digest::Algorithm;
use hypersdk_core::model::Extent;
use hypersdk_core::progress::Phase;
use hypersdk_ova::archive::OvaIndex;
use hypersdk_ova::vmdk::convert::{OvaDisk, RawOptions, ova_file_to_raw, ova_to_raw, vmdk_to_raw};
use hypersdk_ova::vmdk::decode::DecodeOptions;
use hypersdk_ova::vmdk::encode::{EncodeOptions, encode_stream, encode_to_file};
use hypersdk_ova::vmdk::sparse::HostedDisk;
use tokio::io::AsyncReadExt;

use super::input::{
    self, Counting, Kind, Opened, SNIFF_BYTES, Source, is_stream_header, not_raw, read_head,
};
use super::output::{CreatedDirs, TempFiles, check_target, human, publish, temp_path};
use super::{Ctx, Failure, Io, OrFail, Status, Target};

/// Runs `ova convert`.
pub(crate) async fn convert(
    input: &Path,
    output: &Path,
    to: Target,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let source = Source::new(input);
    let label = source.label();
    let opened = input::open(&source, io).await?;
    let bad = |msg: String| Err(Failure::new(&label, Error::invalid_input(msg)));
    match (opened.kind, to) {
        (Kind::Ova, Target::Raw) => package_to_raw(&source, opened, output, force, ctx, io).await,
        (Kind::Ova, Target::VmdkStream) => bad(
            "a package converts --to raw only (one image per disk): its disks are VMDKs already"
                .into(),
        ),
        (Kind::Vmdk, Target::Raw) => disk_to_raw(&source, opened, output, force, ctx, io).await,
        (Kind::Vmdk, Target::VmdkStream) => {
            let Source::File(path) = &source else {
                return bad("a hosted VMDK needs random access: give the file, not '-'".into());
            };
            let mut opened = opened;
            let head = read_head(&mut opened.reader, 512)
                .await
                .map_err(|e| input::io_error(path, e))
                .or_fail(&label)?;
            if is_stream_header(&head) {
                return bad("already a streamOptimized VMDK".into());
            }
            drop(opened);
            let disk = HostedDisk::open_path(path).await.or_fail(&label)?;
            to_stream(Arc::new(disk), &label, output, force, ctx, io).await
        }
        (Kind::Other, Target::VmdkStream) => {
            let Source::File(path) = &source else {
                return bad(
                    "a raw image needs its size known up front: give the file, not '-'".into(),
                );
            };
            let mut opened = opened;
            let head = read_head(&mut opened.reader, SNIFF_BYTES)
                .await
                .map_err(|e| input::io_error(path, e))
                .or_fail(&label)?;
            if let Some(what) = not_raw(&head) {
                return bad(format!(
                    "is {what} by its content, not a raw image: convert it to raw first, or \
                     give it the extension of its kind"
                ));
            }
            drop(opened);
            let raw = FileSource::open(path).await.or_fail(&label)?;
            to_stream(Arc::new(raw), &label, output, force, ctx, io).await
        }
        (Kind::Other, Target::Raw) => bad(
            "neither a VMDK nor a package: a raw image already (--to vmdk-stream converts it)"
                .into(),
        ),
        (Kind::Gzip, _) => Err(Failure::new(
            &label,
            Error::invalid_data(format!("'{label}'"), "gzip-compressed: gunzip it first"),
        )),
        (kind, _) => bad(format!(
            "is {}: convert takes a disk or a package",
            kind.describe()
        )),
    }
}

/// One VMDK to a sparse raw image.
async fn disk_to_raw(
    source: &Source,
    mut opened: Opened<'_>,
    output: &Path,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let label = source.label();
    let out_label = output.display().to_string();
    if Source::new(output) == Source::Stdin {
        return Err(Failure::new(
            &out_label,
            Error::invalid_input(
                "a raw image is written sparsely to a file, not to standard output",
            ),
        ));
    }
    check_target(output, force).await.or_fail(&out_label)?;
    let head = read_head(&mut opened.reader, 512)
        .await
        .map_err(|e| Error::io(format!("'{label}'"), e))
        .or_fail(&label)?;
    let tmp = temp_path(output);
    let mut temps = TempFiles::default();
    temps.add(tmp.clone());
    let (capacity, data, sha) = if is_stream_header(&head) {
        let item = Arc::new(
            ctx.progress
                .item(Phase::Converting, label.clone(), opened.len),
        );
        item.add(head.len() as u64);
        let reader = std::io::Cursor::new(head).chain(Counting::new(
            tokio::io::BufReader::with_capacity(1 << 20, opened.reader),
            Some(Arc::clone(&item)),
        ));
        let options = RawOptions::default()
            .with_decode(DecodeOptions::default().with_name(format!("'{label}'")));
        let r = vmdk_to_raw(reader, &tmp, &options).await.or_fail(&label)?;
        item.finish();
        (r.capacity, r.data_bytes, sha256(&r.digests))
    } else {
        let Source::File(path) = source else {
            return Err(Failure::new(
                &label,
                Error::unsupported(
                    "reading a hosted VMDK from standard input (it needs random access: give the file)",
                    "ova",
                ),
            ));
        };
        drop(opened);
        let disk = HostedDisk::open_path(path).await.or_fail(&label)?;
        let options = CopyOptions::default()
            .with_digests(&[Algorithm::Sha256])
            .with_progress(ctx.progress.clone())
            .with_item(label.clone());
        let r = copy_to_file(&disk, &tmp, None, None, None, &options)
            .await
            .or_fail(&label)?;
        (
            disk.capacity(),
            r.bytes_fetched,
            r.digests.as_ref().map(sha256).unwrap_or_default(),
        )
    };
    publish(&tmp, output, force).await.or_fail(&out_label)?;
    temps.forget(&tmp);
    io.out(&format!(
        "{out_label}: raw image of {} ({capacity} bytes), {} of data, sha256 {sha}\n",
        human(capacity),
        human(data)
    ))
    .await?;
    Ok(Status::Ok)
}

/// The SHA-256 among `d`, in hex (empty when it was not computed).
fn sha256(d: &hypersdk_core::digest::Digests) -> String {
    d.get(Algorithm::Sha256)
        .map(|c| c.to_hex())
        .unwrap_or_default()
}

/// Any block source (a raw file, a hosted VMDK) to a streamOptimized VMDK.
async fn to_stream(
    disk: Arc<dyn BlockSource>,
    label: &str,
    output: &Path,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let options = EncodeOptions::default()
        .with_progress(ctx.progress.clone())
        .with_item(label);
    if Source::new(output) == Source::Stdin {
        let r = encode_stream(disk, &mut io.stdout, &options)
            .await
            .or_fail(label)?;
        io.note(&format!(
            "-: streamOptimized VMDK of {}, {} written, {} grains",
            human(r.capacity),
            human(r.bytes_written),
            r.grains
        ));
        return Ok(Status::Ok);
    }
    let out_label = output.display().to_string();
    check_target(output, force).await.or_fail(&out_label)?;
    let tmp = temp_path(output);
    let mut temps = TempFiles::default();
    temps.add(tmp.clone());
    let r = encode_to_file(disk, &tmp, &options).await.or_fail(label)?;
    publish(&tmp, output, force).await.or_fail(&out_label)?;
    temps.forget(&tmp);
    io.out(&format!(
        "{out_label}: streamOptimized VMDK of {}, {} ({} grains)\n",
        human(r.capacity),
        human(r.bytes_written),
        r.grains
    ))
    .await?;
    Ok(Status::Ok)
}

/// A staging directory inside the output directory, removed with what it
/// holds when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The raw image's name for VMDK entry `name`, as the library names it:
/// the last path component without `.vmdk`, plus `.raw`.
fn raw_name(name: &str) -> Option<String> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.get(..file.len().checked_sub(5)?)?;
    Some(format!("{stem}.raw"))
}

/// Every VMDK disk of a package to `<dir>/<disk>.raw`.
async fn package_to_raw(
    source: &Source,
    opened: Opened<'_>,
    dir: &Path,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let label = source.label();
    let dir_label = dir.display().to_string();
    if Source::new(dir) == Source::Stdin {
        return Err(Failure::new(
            "-",
            Error::invalid_input(
                "a package converts into a directory (one raw image per disk), not to \
                 standard output",
            ),
        ));
    }
    // From a file, look first: which disks, and do any need random access?
    let mut hosted = false;
    if let Source::File(path) = source {
        let index = OvaIndex::open(path).await.or_fail(&label)?;
        for e in index.entries() {
            if !e.name.to_ascii_lowercase().ends_with(".vmdk") {
                continue;
            }
            if let Some(raw) = raw_name(&e.name) {
                check_target(&dir.join(raw), force)
                    .await
                    .or_fail(&dir_label)?;
            }
            let entry = index.open_entry(&e.name).or_fail(&label)?;
            let head = entry
                .read_range(Extent::new(0, 512.min(entry.len())))
                .await
                .or_fail(&label)?;
            hosted |= head.starts_with(b"KDMV") && !is_stream_header(&head);
        }
    }
    // Dropped in reverse order: on any failure (or an interrupt) the
    // staging directory goes first, then the directories this run made.
    let mut dirs = CreatedDirs::default();
    dirs.create_all(dir).await.or_fail(&dir_label)?;
    let stage = dir.join(format!(".ova-convert-{}", std::process::id()));
    tokio::fs::create_dir(&stage)
        .await
        .map_err(|e| Error::io(format!("directory '{}'", stage.display()), e))
        .or_fail(&dir_label)?;
    let stage = Staging(stage);
    let options = RawOptions::default();
    let disks: Vec<OvaDisk> = match (source, hosted) {
        (Source::File(path), true) => {
            // Hosted sparse disks are read through the index.
            let item = ctx.progress.item(Phase::Converting, label.clone(), None);
            let r = ova_file_to_raw(path, &stage.0, &options).await;
            item.finish();
            r.or_fail(&label)?
        }
        _ => {
            let item = Arc::new(
                ctx.progress
                    .item(Phase::Converting, label.clone(), opened.len),
            );
            let reader = Counting::new(
                tokio::io::BufReader::with_capacity(1 << 20, opened.reader),
                Some(Arc::clone(&item)),
            );
            let r = ova_to_raw(reader, &stage.0, &options).await;
            item.finish();
            r.map_err(|e| match (e.kind(), source) {
                (hypersdk_core::ErrorKind::Unsupported, Source::Stdin) => Error::unsupported(
                    "converting a hosted sparse disk read from standard input (it needs \
                     random access: give the package as a file)",
                    "ova",
                ),
                _ => e,
            })
            .or_fail(&label)?
        }
    };
    // Put the images in place: all, or none.
    let mut moves = Vec::new();
    for d in &disks {
        let Some(path) = &d.report.path else { continue };
        let Some(file) = path.file_name() else {
            continue;
        };
        let target = dir.join(file);
        check_target(&target, force).await.or_fail(&dir_label)?;
        moves.push((path.clone(), target, d));
    }
    let mut placed: Vec<PathBuf> = Vec::new();
    for (from, to, _) in &moves {
        if let Err(e) = publish(from, to, force).await {
            if !force {
                for p in &placed {
                    let _ = tokio::fs::remove_file(p).await;
                }
            }
            return Err(Failure::new(&dir_label, e));
        }
        placed.push(to.clone());
    }
    drop(stage);
    dirs.keep();
    let mut text = String::new();
    for (_, to, d) in &moves {
        text.push_str(&format!(
            "{}: raw image of {} from '{}', {} of data, sha256 {}\n",
            to.display(),
            human(d.report.capacity),
            d.entry,
            human(d.report.data_bytes),
            sha256(&d.report.digests)
        ));
    }
    text.push_str(&format!(
        "{label}: {} disk{} converted into {dir_label}\n",
        moves.len(),
        if moves.len() == 1 { "" } else { "s" }
    ));
    io.out(&text).await?;
    Ok(Status::Ok)
}
