//! Small file-system helpers shared by the modules and crates that persist
//! state (progress state files, checkpoints, artifact manifests).
//!
//! [`write_atomic`] replaces a file so that a concurrent reader sees either
//! the old or the new content in full, never a torn mix, and so that a crash
//! leaves one of the two on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Distinguishes the temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many temporary names to try before giving up: a name is only taken
/// when a file of a crashed earlier process with the same pid is left over.
const TEMP_ATTEMPTS: u32 = 16;

/// Replaces the file at `path` with `bytes`, atomically.
///
/// The data goes to a new temporary file `.<name>.<pid>.<counter>.tmp` in the
/// same directory, created with permissions `mode` (unix; exactly `mode`,
/// whatever the umask, set before any data is written) or the platform
/// default (`0o666` less the umask) when `mode` is `None`. The temporary file
/// is written in full, synced, renamed over `path`, and then the directory is
/// synced so the rename itself is durable. On any error the temporary file is
/// removed and `path` is left as it was.
///
/// A symbolic link at `path` is replaced by a regular file, not followed.
/// This is blocking I/O.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let object = path.display().to_string();
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_input(format!("'{object}' does not name a file to write")))?;
    let dir = parent_dir(path);

    let (tmp_path, mut file) = create_temp(&dir, &name.to_string_lossy(), mode)
        .map_err(|e| Error::io(object.clone(), e))?;
    let written = write_and_sync(&mut file, bytes);
    drop(file);
    let renamed = written.and_then(|()| fs::rename(&tmp_path, path));
    if let Err(e) = renamed {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp_path);
        return Err(Error::io(object, e));
    }
    sync_dir(&dir).map_err(|e| Error::io(dir.display().to_string(), e))
}

/// Creates `dir` and its missing parents with permissions `0o700` (unix).
///
/// An existing directory is left as it is; an existing non-directory at
/// `dir` is an error.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let object = dir.display().to_string();
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(object.clone(), e))?;
    let meta = fs::metadata(dir).map_err(|e| Error::io(object.clone(), e))?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "'{object}' is not a directory"
        )))
    }
}

/// The directory holding `path`; `.` for a bare file name.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a fresh temporary file next to the target.
fn create_temp(dir: &Path, name: &str, mode: Option<u32>) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last_err = None;
    for _ in 0..TEMP_ATTEMPTS {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        match opts.open(&tmp) {
            Ok(file) => {
                if let Err(e) = set_mode(&file, mode) {
                    drop(file);
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                return Ok((tmp, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Sets exactly `mode` on a fresh file: `open` applies the umask, which may
/// have removed bits the caller asked for.
#[cfg(unix)]
fn set_mode(file: &File, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match mode {
        Some(mode) => file.set_permissions(fs::Permissions::from_mode(mode)),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: Option<u32>) -> io::Result<()> {
    Ok(())
}

fn write_and_sync(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"first", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer", Some(0o600)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        write_atomic(&p, b"", Some(0o600)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"");
        assert_eq!(entries(dir.path()), ["state.json"], "no temp file left");
    }

    #[cfg(unix)]
    #[test]
    fn mode_is_exact() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"x", Some(0o600)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"y", Some(0o640)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn error_leaves_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the target: the rename fails.
        let p = dir.path().join("taken");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"keep").unwrap();
        let err = write_atomic(&p, b"data", Some(0o600)).unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(entries(dir.path()), ["taken"]);
        assert_eq!(fs::read(p.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("f.json");
        let err = write_atomic(&p, b"x", None).unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert!(err.to_string().contains("f.json"), "{err}");
    }

    #[test]
    fn rejects_path_without_file_name() {
        let err = write_atomic(Path::new("/"), b"x", None).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
    }

    #[cfg(unix)]
    #[test]
    fn private_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a").join("b");
        create_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        create_private_dir(&d).unwrap();
        let f = dir.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(create_private_dir(&f).is_err());
    }
}
