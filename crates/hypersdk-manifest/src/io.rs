//! Reading and writing manifests.
//!
//! Reading checks the schema's rules first and fails with every problem
//! listed; writing is atomic (a temporary file in the same directory,
//! synced, renamed over the target), so the converter never sees half a
//! manifest. Manifests are a few KiB: these are blocking calls, cheap enough
//! for async code.

use std::fs;
use std::path::Path;

use hypersdk_core::fsutil::write_atomic;
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
        // The converter may run as another user: readable by all.
        write_atomic(
            path.as_ref(),
            self.to_json_pretty()?.as_bytes(),
            Some(FILE_MODE),
        )
    }
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
