//! Reading and writing manifests.
//!
//! Reading checks the schema's rules first and fails with every problem
//! listed; writing is atomic (a temporary file in the same directory,
//! synced, renamed over the target), so the converter never sees half a
//! manifest. Manifests are a few KiB: these are blocking calls, cheap enough
//! for async code.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hypersdk_core::{Error, Result};
use serde_json::Value;

use crate::model::Manifest;
use crate::validate::Validator;

/// The file name hyper2kvm and hypersdk use for a manifest.
pub const MANIFEST_FILE_NAME: &str = "artifact-manifest.json";

/// Permissions of a written manifest (unix).
const FILE_MODE: u32 = 0o644;

impl Manifest {
    /// A manifest from JSON already parsed, checked against the schema's
    /// rules first.
    ///
    /// Fails with [`Error::UnsupportedVersion`] when `manifest_version` is
    /// not 1.0, and with [`Error::InvalidData`] listing every problem when
    /// another rule is broken. Semantic rules and files are not checked
    /// here: see [`Validator`].
    pub fn from_value(value: Value) -> Result<Manifest> {
        Manifest::from_value_named(value, "manifest")
    }

    /// A manifest from JSON text; see [`Manifest::from_value`].
    pub fn from_json(text: &str) -> Result<Manifest> {
        Manifest::from_slice(text.as_bytes(), "manifest")
    }

    /// Reads the manifest file at `path`; see [`Manifest::from_value`].
    /// Errors name the file.
    pub fn read(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let object = format!("manifest '{}'", path.display());
        let bytes = fs::read(path).map_err(|e| Error::io(object.as_str(), e))?;
        Manifest::from_slice(&bytes, &object)
    }

    fn from_slice(bytes: &[u8], object: &str) -> Result<Manifest> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_data_with(object, format!("not JSON: {e}"), e))?;
        Manifest::from_value_named(value, object)
    }

    fn from_value_named(value: Value, object: &str) -> Result<Manifest> {
        Validator::check_schema(&value).into_result(object)?;
        serde_json::from_value(value)
            .map_err(|e| Error::invalid_data_with(object, e.to_string(), e))
    }

    /// The manifest as a JSON value.
    pub fn to_value(&self) -> Result<Value> {
        serde_json::to_value(self).map_err(|e| Error::other(format!("serializing manifest: {e}")))
    }

    /// The manifest as indented JSON (two spaces), ending with a newline.
    pub fn to_json_pretty(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| Error::other(format!("serializing manifest: {e}")))?;
        s.push('\n');
        Ok(s)
    }

    /// Writes the manifest to `path` atomically, with permissions 0644.
    ///
    /// The JSON goes to a temporary file in the same directory, which is
    /// synced and renamed over `path`; the directory is synced after. On
    /// error `path` is left as it was and no temporary file remains. The
    /// directory must exist. The manifest is not validated here: the
    /// builder's output is valid by construction, and
    /// [`crate::write_export_manifest`] validates before writing.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json_pretty()?.as_bytes())
    }
}

/// The directory holding `path`; `.` for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Distinguishes the temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically (temp file, fsync, rename,
/// directory fsync), mode 0644 on unix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let object = path.display().to_string();
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_input(format!("'{object}' does not name a file to write")))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_dir(path);
    let (tmp, mut file) = create_temp(&dir, &name).map_err(|e| Error::io(object.as_str(), e))?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path)
        });
    if let Err(e) = result {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(object, e));
    }
    sync_dir(&dir).map_err(|e| Error::io(dir.display().to_string(), e))
}

fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(FILE_MODE);
        }
        match opts.open(&tmp) {
            Ok(file) => {
                // The umask may have removed bits; the converter may run as
                // another user and must be able to read the manifest.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    if let Err(e) = file.set_permissions(fs::Permissions::from_mode(FILE_MODE)) {
                        drop(file);
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                return Ok((tmp, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Disk, SourceFormat};

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        let m = Manifest::new(vec![Disk::new("d", SourceFormat::Raw, 1, "/d.raw")]);
        m.write(&path).unwrap();
        m.write(&path).unwrap();
        assert_eq!(entries(dir.path()), [MANIFEST_FILE_NAME]);
        assert_eq!(Manifest::read(&path).unwrap(), m);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"disks\""),
            "{text}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let m = Manifest::new(vec![Disk::new("d", SourceFormat::Raw, 1, "/d.raw")]);
        assert!(m.write(&path).is_err());
        assert_eq!(entries(dir.path()), ["taken"]);
        let e = m.write(dir.path().join("missing-dir/m.json")).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::NotFound);
        assert!(m.write(Path::new("/")).is_err());
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        fs::write(&path, "{not json").unwrap();
        let e = Manifest::read(&path).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidData);
        assert!(e.to_string().contains("m.json"), "{e}");
        fs::write(&path, r#"{"manifest_version": "2.0", "disks": []}"#).unwrap();
        let e = Manifest::read(&path).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::UnsupportedVersion);
        assert!(
            e.to_string().contains("2.0") && e.to_string().contains("m.json"),
            "{e}"
        );
        let e = Manifest::read(dir.path().join("nope.json")).unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::NotFound);
    }
}
