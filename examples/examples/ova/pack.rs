//! `ova pack`: the package a descriptor describes, in DSP0243 order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hypersdk_core::Error;
use hypersdk_core::digest::{Algorithm, MultiHasher};
use hypersdk_core::fsutil::parent_dir;
use hypersdk_core::progress::Phase;
use hypersdk_ova::archive::{ManifestMode, OvaWriter, WriteOptions};
use hypersdk_ova::mf::Manifest;
use hypersdk_ova::ovf::{Envelope, ParseOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::input::{Counting, Source, open_file};
use super::inspect::{descriptor_error, file_name, local_file, read_limited};
use super::output::{TempFiles, check_target, human, publish, temp_path};
use super::{Ctx, Failure, Io, OrFail, Status};

/// One file the descriptor references: its name in the package, where it
/// is, its size.
struct Member {
    href: String,
    path: PathBuf,
    size: u64,
}

/// Runs `ova pack`.
pub(crate) async fn pack(
    descriptor: &Path,
    output: &Path,
    manifest_at_end: bool,
    force: bool,
    ctx: &Ctx,
    io: &mut Io<'_>,
) -> Result<Status, Failure> {
    let label = descriptor.display().to_string();
    if Source::new(descriptor) == Source::Stdin {
        return Err(Failure::new(
            "-",
            Error::invalid_input(
                "pack needs the descriptor as a file: the files it references are found next to it",
            ),
        ));
    }
    let file = open_file(descriptor).await?;
    let xml = read_limited(file, ParseOptions::default().max_bytes, &label).await?;
    let envelope = Envelope::parse(&xml)
        .map_err(|e| descriptor_error(e, &label))
        .or_fail(&label)?;
    let name = file_name(descriptor);
    let dir = parent_dir(descriptor);
    let mut members = Vec::new();
    for r in envelope.references() {
        if r.href.contains("://") {
            io.note(&format!(
                "{label}: '{}' is a URL, outside the package: not packed",
                r.href
            ));
            continue;
        }
        let path = local_file(&dir, &r.href).ok_or_else(|| {
            Failure::new(
                &label,
                Error::invalid_data(
                    format!("descriptor '{label}'"),
                    format!(
                        "it references '{}', which is not a plain relative name: a package \
                         holds only files next to its descriptor",
                        r.href
                    ),
                ),
            )
        })?;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| {
            let error = if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!(
                    "file '{}', which the descriptor references as '{}',",
                    path.display(),
                    r.href
                ))
            } else {
                Error::io(format!("'{}'", path.display()), e)
            };
            Failure::new(&label, error)
        })?;
        if !meta.is_file() {
            return Err(Failure::new(
                path.display().to_string(),
                Error::invalid_input("not a regular file"),
            ));
        }
        if let Some(want) = r.size
            && want != meta.len()
        {
            return Err(Failure::new(
                path.display().to_string(),
                Error::integrity(
                    format!("file '{}'", r.href),
                    format!("{want} bytes, as the descriptor's ovf:size says"),
                    format!("{} bytes", meta.len()),
                ),
            ));
        }
        members.push(Member {
            href: r.href.clone(),
            path,
            size: meta.len(),
        });
    }
    let manifest = if manifest_at_end {
        ManifestMode::AtEnd(vec![Algorithm::Sha256])
    } else {
        // The digests up front, so the manifest can follow the descriptor.
        let mut mf = Manifest::new();
        for m in &members {
            let sha = hash_file(m, ctx).await?;
            mf.insert(m.href.clone(), sha).or_fail(&label)?;
        }
        ManifestMode::Upfront(mf)
    };
    let options = WriteOptions::default().with_manifest(manifest);
    let total: u64 = members.iter().map(|m| m.size).sum::<u64>() + xml.len() as u64;
    let where_mf = if manifest_at_end {
        "at the end"
    } else {
        "after the descriptor"
    };
    let mf_name = format!(
        "{}.mf",
        name.strip_suffix(".ovf")
            .or_else(|| name.strip_suffix(".OVF"))
            .unwrap_or(&name)
    );
    let summary = format!(
        "packed {} file{} ({}), manifest '{mf_name}' (SHA-256) {where_mf}",
        members.len() + 1,
        if members.is_empty() { "" } else { "s" },
        human(total)
    );
    if Source::new(output) == Source::Stdin {
        let writer = OvaWriter::new(&mut io.stdout, options);
        write_all(writer, &name, &xml, &members, ctx)
            .await
            .or_fail("-")?;
        io.note(&format!("-: {summary}"));
        return Ok(Status::Ok);
    }
    let out_label = output.display().to_string();
    check_target(output, force).await.or_fail(&out_label)?;
    let tmp = temp_path(output);
    let mut temps = TempFiles::default();
    temps.add(tmp.clone());
    let writer = OvaWriter::create(&tmp, options).await.or_fail(&out_label)?;
    write_all(writer, &name, &xml, &members, ctx)
        .await
        .or_fail(&label)?;
    publish(&tmp, output, force).await.or_fail(&out_label)?;
    temps.forget(&tmp);
    io.out(&format!("{out_label}: {summary}\n")).await?;
    Ok(Status::Ok)
}

/// Writes the descriptor and every member, then the end of the archive.
async fn write_all<W: AsyncWrite + Unpin>(
    mut writer: OvaWriter<W>,
    name: &str,
    xml: &[u8],
    members: &[Member],
    ctx: &Ctx,
) -> Result<(), Error> {
    writer.write_descriptor(name, xml).await?;
    for m in members {
        let item = Arc::new(
            ctx.progress
                .item(Phase::Transferring, m.href.clone(), Some(m.size)),
        );
        let file = tokio::fs::File::open(&m.path)
            .await
            .map_err(|e| super::input::io_error(&m.path, e))?;
        let reader = Counting::new(
            tokio::io::BufReader::with_capacity(1 << 20, file),
            Some(Arc::clone(&item)),
        );
        writer.append_reader(&m.href, Some(m.size), reader).await?;
        item.finish();
    }
    writer.finish().await?;
    Ok(())
}

/// The SHA-256 of a member, read once with a progress bar.
async fn hash_file(m: &Member, ctx: &Ctx) -> Result<hypersdk_core::digest::Checksum, Failure> {
    let label = m.path.display().to_string();
    let item = ctx
        .progress
        .item(Phase::Verifying, m.href.clone(), Some(m.size));
    let file = open_file(&m.path).await?;
    let mut reader: Box<dyn AsyncRead + Unpin + Send> =
        Box::new(tokio::io::BufReader::with_capacity(1 << 20, file));
    let mut hasher = if m.size >= 1 << 20 {
        MultiHasher::offloaded(&[Algorithm::Sha256])
    } else {
        MultiHasher::inline(&[Algorithm::Sha256])
    };
    loop {
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        let n = reader
            .read_buf(&mut buf)
            .await
            .map_err(|e| super::input::io_error(&m.path, e))
            .or_fail(&label)?;
        if n == 0 {
            break;
        }
        item.add(n as u64);
        hasher.update(buf.freeze());
    }
    item.finish();
    let digests = hasher.finish().or_fail(&label)?;
    digests
        .get(Algorithm::Sha256)
        .cloned()
        .ok_or_else(|| Failure::new(&label, Error::other("SHA-256 was not computed")))
}
