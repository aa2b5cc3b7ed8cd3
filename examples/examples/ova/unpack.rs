//! `ova unpack`: a package's files into a directory, all or nothing.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use hypersdk_core::Error;
use hypersdk_core::progress::Phase;
use hypersdk_ova::archive::{EntryKind, OvaReader};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::input::{self, Kind, Source};
use super::output::{CreatedDirs, TempFiles, check_target, human, publish, temp_path};
use super::{Ctx, Failure, Io, OrFail, Status};

/// Runs `ova unpack`.
pub(crate) async fn unpack(
    input: &Path,
    dir: &Path,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let source = Source::new(input);
    let label = source.label();
    let opened = input::open(&source, io).await?;
    if matches!(opened.kind, Kind::Ovf | Kind::Manifest | Kind::Vmdk) {
        return Err(Failure::new(
            &label,
            Error::invalid_input(format!(
                "is {}, not an OVA package: nothing to unpack",
                opened.kind.describe()
            )),
        ));
    }
    let dir_label = dir.display().to_string();
    if Source::new(dir) == Source::Stdin {
        return Err(Failure::new(
            "-",
            Error::invalid_input("unpack writes into a directory, not to standard output"),
        ));
    }
    // Dropped in reverse order: on any failure (or an interrupt) the
    // temporary files go first, then the directories this run made.
    let mut dirs = CreatedDirs::default();
    let mut temps = TempFiles::default();
    dirs.create_all(dir).await.or_fail(&dir_label)?;
    // (temporary file, final path, entry name, size), in archive order.
    let mut staged: Vec<(PathBuf, PathBuf, String, u64)> = Vec::new();
    let mut ova = OvaReader::new(opened.reader);
    let read = async {
        while let Some(entry) = ova.next_entry().await? {
            let target = target_path(dir, &entry.name, &mut dirs).await?;
            check_target(&target, force).await?;
            let tmp = temp_path(&target);
            let file = create_new(&tmp).await?;
            temps.add(tmp.clone());
            let item = ctx
                .progress
                .item(Phase::Transferring, entry.name.clone(), Some(entry.size));
            let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let object = format!("'{}'", tmp.display());
            // The chunk holding an entry's last bytes comes only once its
            // digest checked out (when the manifest came first).
            while let Some(chunk) = ova.read_chunk().await? {
                item.add(chunk.len() as u64);
                w.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(object.as_str(), e))?;
            }
            w.flush().await.map_err(|e| Error::io(object.as_str(), e))?;
            w.into_inner()
                .sync_all()
                .await
                .map_err(|e| Error::io(object.as_str(), e))?;
            staged.push((tmp, target, entry.name, entry.size));
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = read {
        return Err(Failure::new(&label, e));
    }
    // The descriptor, manifest and certificate, which the reader keeps.
    let descriptor = ova.descriptor().map(|(n, b)| (n.to_string(), b.clone()));
    let certificate = ova.certificate().map(|(n, b)| (n.to_string(), b.clone()));
    let manifest = ova
        .entries()
        .iter()
        .find(|e| e.kind == EntryKind::Manifest)
        .map(|e| (e.name.clone(), e.data_offset, e.size));
    let manifest_text = ova.manifest().map(|m| m.to_string());
    let summary = ova.finish().await.or_fail(&label)?;
    let written = async {
        let mut small: Vec<(String, Bytes)> = Vec::new();
        small.extend(descriptor);
        if let Some((name, offset, size)) = manifest {
            let bytes = match &source {
                // The manifest's own bytes (a signature covers them).
                Source::File(path) => read_range(path, offset, size).await?,
                Source::Stdin => {
                    io.note(&format!(
                        "{label}: '{name}' written in ovftool's spelling (the reader keeps \
                         the parsed manifest, not its bytes, from a stream)"
                    ));
                    Bytes::from(manifest_text.unwrap_or_default())
                }
            };
            small.push((name, bytes));
        }
        small.extend(certificate);
        let mut first = Vec::new();
        for (name, bytes) in small {
            let target = target_path(dir, &name, &mut dirs).await?;
            check_target(&target, force).await?;
            let tmp = temp_path(&target);
            let mut f = create_new(&tmp).await?;
            temps.add(tmp.clone());
            let object = format!("'{}'", tmp.display());
            f.write_all(&bytes)
                .await
                .map_err(|e| Error::io(object.as_str(), e))?;
            f.sync_all()
                .await
                .map_err(|e| Error::io(object.as_str(), e))?;
            first.push((tmp, target, name, bytes.len() as u64));
        }
        first.append(&mut staged);
        // Nothing is put in place unless everything can be.
        for (_, target, _, _) in &first {
            check_target(target, force).await?;
        }
        let mut placed: Vec<PathBuf> = Vec::new();
        for (tmp, target, _, _) in &first {
            if let Err(e) = publish(tmp, target, force).await {
                if !force {
                    for p in &placed {
                        let _ = tokio::fs::remove_file(p).await;
                    }
                }
                return Err(e);
            }
            temps.forget(tmp);
            placed.push(target.clone());
        }
        Ok::<_, Error>(first)
    }
    .await;
    let files = written.or_fail(&label)?;
    dirs.keep();
    let mut text = String::new();
    let total: u64 = files.iter().map(|f| f.3).sum();
    for (_, target, _, size) in &files {
        text.push_str(&format!("{}: {}\n", target.display(), human(*size)));
    }
    text.push_str(&format!(
        "{label}: unpacked {} files ({}) into {}, {}\n",
        files.len(),
        human(total),
        dir.display(),
        if summary.manifest_verified {
            "manifest verified"
        } else if summary.manifest.is_some() {
            "manifest checked"
        } else {
            "no manifest: digests not checked"
        }
    ));
    io.out(&text).await?;
    Ok(Status::Ok)
}

/// Creates a new file; never follows or replaces anything there.
async fn create_new(path: &Path) -> Result<tokio::fs::File, Error> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| Error::io(format!("'{}'", path.display()), e))
}

/// Reads `size` bytes at `offset` of the file at `path`.
async fn read_range(path: &Path, offset: u64, size: u64) -> Result<Bytes, Error> {
    let object = format!("'{}'", path.display());
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(object.as_str(), e))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| Error::io(object.as_str(), e))?;
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    f.read_exact(&mut buf)
        .await
        .map_err(|e| Error::io(object.as_str(), e))?;
    Ok(Bytes::from(buf))
}

/// Where entry `name` goes under `dir`, creating its parent directories.
/// The reader has checked the name (relative, no `..`); here no component
/// under `dir` may be a symbolic link or a non-directory, so nothing can be
/// written outside `dir`.
async fn target_path(dir: &Path, name: &str, created: &mut CreatedDirs) -> Result<PathBuf, Error> {
    let rel = Path::new(name);
    let parts: Vec<_> = rel.components().collect();
    let bad = || {
        Error::invalid_data(
            format!("entry '{name}'"),
            "not a plain relative name: it would be written outside the directory",
        )
    };
    if parts.is_empty() || !parts.iter().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad());
    }
    let mut at = dir.to_path_buf();
    for c in &parts[..parts.len() - 1] {
        at.push(c);
        match tokio::fs::symlink_metadata(&at).await {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::invalid_data(
                    format!("entry '{name}'"),
                    format!(
                        "'{}' is a symbolic link: the entry could be written outside the directory",
                        at.display()
                    ),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::already_exists(format!(
                    "'{}', a file where entry '{name}' needs a directory,",
                    at.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => created.create(&at).await?,
            Err(e) => return Err(Error::io(format!("'{}'", at.display()), e)),
        }
    }
    Ok(dir.join(rel))
}
