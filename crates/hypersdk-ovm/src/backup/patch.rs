//! Patching an existing image in place, crash-safely: the image is moved to
//! `<name>.part` while it is patched, so the final name never holds a
//! half-patched image, and moved back once complete and synced.

use std::path::Path;

use hypersdk_core::blocks::SparseFile;
use hypersdk_core::{Error, Result};

use super::state::image_object;

/// Opens `<path>.part` of `len` bytes for patching, as a
/// [patched](SparseFile::patch) sparse file: every byte not written holds
/// the previous image's data, so it does **not** start zeroed (the copy
/// engine reads unchanged ranges back to hash the whole new image), and
/// all-zero blocks written are punched out. Before, `<path>` is renamed to
/// `<path>.part` if the patch has not started yet, and the `.part` file is
/// grown to `len`. [`SparseFile::commit`] syncs the patched image and moves
/// it back to its final name.
///
/// # Errors
///
/// [`Error::NotFound`] if neither `<path>` nor `<path>.part` exists;
/// [`Error::Conflict`] if both exist (one of them is not ours);
/// [`Error::InvalidInput`] if the image is longer than `len` (a disk
/// never shrinks).
pub(crate) async fn open_patch(path: &Path, len: u64) -> Result<SparseFile> {
    let part = SparseFile::part_path_for(path)?;
    let (path_c, part_c) = (path.to_path_buf(), part.clone());
    tokio::task::spawn_blocking(move || prepare(&path_c, &part_c, len))
        .await
        .map_err(|e| Error::other(format!("patch preparation task failed: {e}")))??;
    SparseFile::patch(path, len).await
}

/// Moves the image to its `.part` name (unless a patch started already)
/// and grows it to `len`.
fn prepare(path: &Path, part: &Path, len: u64) -> Result<()> {
    let exists = |p: &Path| p.try_exists().map_err(|e| Error::io(image_object(p), e));
    let current = match (exists(path)?, exists(part)?) {
        (true, true) => {
            return Err(Error::Conflict {
                object: image_object(path),
                message: format!(
                    "both it and '{}' exist; an interrupted patch leaves only the .part file: \
                     remove the file that is not the image",
                    part.display()
                ),
            });
        }
        (true, false) => {
            let current = file_len(path)?;
            check_growth(path, current, len)?;
            std::fs::rename(path, part).map_err(|e| {
                Error::io(
                    format!("{} (moving it to {})", image_object(path), part.display()),
                    e,
                )
            })?;
            sync_dir(&hypersdk_core::fsutil::parent_dir(path))?;
            current
        }
        // Resuming an interrupted patch.
        (false, true) => file_len(part)?,
        (false, false) => {
            return Err(Error::not_found(format!(
                "{} (the image to patch)",
                image_object(path)
            )));
        }
    };
    check_growth(part, current, len)?;
    if current < len {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(part)
            .map_err(|e| Error::io(image_object(part), e))?;
        file.set_len(len)
            .map_err(|e| Error::io(image_object(part), e))?;
        file.sync_all()
            .map_err(|e| Error::io(image_object(part), e))?;
    }
    Ok(())
}

fn file_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(image_object(path), e))?;
    if !meta.is_file() {
        return Err(Error::invalid_input(format!(
            "{} is not a regular file",
            image_object(path)
        )));
    }
    Ok(meta.len())
}

fn check_growth(path: &Path, current: u64, len: u64) -> Result<()> {
    if current > len {
        return Err(Error::invalid_input(format!(
            "{} is {current} bytes, the disk is now {len} bytes: a disk cannot shrink",
            image_object(path)
        )));
    }
    Ok(())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("directory '{}'", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hypersdk_core::blocks::BlockSink;
    use hypersdk_core::model::Extent;

    #[tokio::test]
    async fn patch_moves_grows_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let part = dir.path().join("d.img.part");
        let e = open_patch(&path, 8).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");

        std::fs::write(&path, b"abcdefgh").unwrap();
        let e = open_patch(&path, 4).await.unwrap_err();
        assert!(e.to_string().contains("cannot shrink"), "{e}");
        // Refused before anything moved.
        assert!(path.exists() && !part.exists());

        let sink = open_patch(&path, 16).await.unwrap();
        assert!(!sink.starts_zeroed());
        assert_eq!(sink.len(), 16);
        sink.write_at(2, Bytes::from_static(b"XY")).await.unwrap();
        sink.write_at(8, Bytes::from_static(&[0; 8])).await.unwrap();
        sink.punch_hole(Extent::new(6, 2)).await.unwrap();
        assert!(!path.exists());
        assert_eq!(sink.commit().await.unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"abXYef\0\0\0\0\0\0\0\0\0\0");
        assert!(!part.exists());

        std::fs::write(&part, b"stale").unwrap();
        let e = open_patch(&path, 16).await.unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::Conflict, "{e}");
    }
}
