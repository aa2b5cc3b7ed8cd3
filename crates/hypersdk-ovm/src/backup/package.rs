//! Packing a completed backup: an OVA of streamOptimized VMDKs, and an
//! Artifact Manifest of the raw images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hypersdk_core::blocks::{BlockSource, FileSource};
use hypersdk_core::model::{DiskFormat, DiskInfo, SnapshotRef, VmInfo};
use hypersdk_core::progress::Progress;
use hypersdk_core::{Error, Result};
use hypersdk_manifest::{ExportResult, ExportedDisk, MANIFEST_FILE_NAME, ManifestBuilder};
use hypersdk_ova::archive::{OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_ova::vmdk::encode::{EncodeOptions, encode_to_stream};
use serde::Serialize;

use super::{BackupState, OvmBackup};

/// The provider name written in manifests.
const PROVIDER: &str = "ovm";

/// The export method written in manifests.
const METHOD: &str = "ovm-exporter-snapshot";

/// How [`OvmBackup::write_ova`] encodes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OvaOptions {
    /// The VMDK encoder's options (compression level, parallelism); its
    /// progress and item are set per disk from [`OvaOptions::progress`].
    pub encode: EncodeOptions,
    /// Where progress goes: one item per VMDK.
    pub progress: Progress,
}

impl OvaOptions {
    /// Sets [`OvaOptions::progress`].
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets [`OvaOptions::encode`].
    #[must_use]
    pub fn with_encode(mut self, encode: EncodeOptions) -> Self {
        self.encode = encode;
        self
    }
}

/// What [`OvmBackup::write_ova`] wrote.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OvaReport {
    /// The OVA.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The snapshot its disks are of.
    pub snapshot_id: String,
    /// The VMDK entries, in order.
    pub disks: Vec<String>,
}

/// The VM of a state, as far as the exporter describes it (no CPU, memory
/// or NICs: the exporter does not say).
fn vm_info(state: &BackupState) -> VmInfo {
    let name = if state.vm_name.is_empty() {
        state.vm_id.clone()
    } else {
        state.vm_name.clone()
    };
    let mut vm = VmInfo::new(state.vm_id.clone(), name);
    if !state.vm_uuid.is_empty() {
        vm.uuid = Some(state.vm_uuid.clone());
    }
    for d in &state.disks {
        let mut info = DiskInfo::new(d.name.clone(), d.size);
        info.name = Some(if d.device.is_empty() {
            d.name.clone()
        } else {
            d.device.clone()
        });
        info.format = DiskFormat::Raw;
        vm.disks.push(info);
    }
    vm
}

/// The VMDK entry name of image `name`: `.img` replaced by `.vmdk`.
fn vmdk_name(name: &str) -> String {
    let stem = name.strip_suffix(".img").unwrap_or(name);
    format!("{stem}.vmdk")
}

impl OvmBackup {
    /// Packs the images of the completed backup into an OVA at `path`:
    /// an OVF descriptor, one streamOptimized VMDK per disk (encoded from
    /// the sparse images, in parallel, without temporary files) and a
    /// SHA-256 `.mf`. The OVA appears at `path` only once complete.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a completed backup; [`Error::Conflict`]
    /// while a backup is pending; [`Error::AlreadyExists`] if `path`
    /// exists; the encoder's and the writer's errors.
    pub async fn write_ova(&self, path: &Path, options: &OvaOptions) -> Result<OvaReport> {
        let state = self.completed_state().await?;
        if state.disks.is_empty() {
            return Err(Error::invalid_input(
                "the backup has no disk to put into an OVA",
            ));
        }
        let vm = vm_info(&state);
        let files: Vec<OvfDisk> = state
            .disks
            .iter()
            .map(|d| {
                OvfDisk::new(vmdk_name(&d.name))
                    .with_format(DiskFormat::VmdkStreamOptimized)
                    .with_capacity(d.size)
            })
            .collect();
        let ovf = write_descriptor(&vm, &files)?;
        let mut ova = OvaWriter::create(path, WriteOptions::default()).await?;
        ova.write_descriptor(&format!("{}.ovf", state.vm_id), ovf.as_bytes())
            .await?;
        let mut names = Vec::new();
        for (disk, file) in state.disks.iter().zip(&files) {
            let source: Arc<dyn BlockSource> =
                Arc::new(FileSource::open(self.image_path(&disk.name)).await?);
            let encode = options
                .encode
                .clone()
                .with_progress(options.progress.clone())
                .with_item(file.href.clone());
            ova.append_stream(&file.href, None, encode_to_stream(source, &encode))
                .await?;
            names.push(file.href.clone());
        }
        ova.finish().await?;
        let bytes = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io(format!("OVA '{}'", path.display()), e))?
            .len();
        Ok(OvaReport {
            path: path.to_path_buf(),
            bytes,
            snapshot_id: state.snapshot_id.clone().unwrap_or_default(),
            disks: names,
        })
    }

    /// Writes an Artifact Manifest of the raw images of the completed
    /// backup to `<dir>/artifact-manifest.json`, with the SHA-256 recorded
    /// when they were written (not read again), and returns its path.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] without a completed backup; [`Error::Conflict`]
    /// while a backup is pending; the manifest builder's and validator's
    /// errors (an image missing or of another size).
    pub async fn write_manifest(&self) -> Result<PathBuf> {
        let state = self.completed_state().await?;
        let vm = vm_info(&state);
        let mut result = ExportResult::new(PROVIDER, vm.clone(), METHOD);
        if let Some(s) = &state.snapshot_id {
            result.snapshot = Some(SnapshotRef::new(state.vm_id.clone(), s.clone()));
        }
        if let Some(at) = state.completed_at {
            result.exported_at = at;
        }
        for (disk, info) in state.disks.iter().zip(&vm.disks) {
            result = result.with_disk(ExportedDisk::new(
                info.clone(),
                self.image_path(&disk.name),
                DiskFormat::Raw,
                disk.size,
            ));
        }
        let mut manifest = ManifestBuilder::from_export(&result).build()?;
        // The images' SHA-256 are in the state, computed while writing.
        for (m, disk) in manifest.disks.iter_mut().zip(&state.disks) {
            m.checksum = Some(disk.sha256);
        }
        manifest
            .warnings
            .retain(|w| !w.message.starts_with("no SHA-256 was computed"));
        let path = self.dir.join(MANIFEST_FILE_NAME);
        manifest.write_validated(&path).await?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmdk_names() {
        assert_eq!(vmdk_name("0004fb00.img"), "0004fb00.vmdk");
        assert_eq!(vmdk_name("disk"), "disk.vmdk");
    }
}
