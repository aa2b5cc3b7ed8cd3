//! Building a manifest from what an export produced.
//!
//! A provider's export writes disk files; [`ExportResult`] records them
//! with the VM they came from ([`ExportedDisk`]: path, size, digests), and
//! [`ManifestBuilder`] turns that into a [`Manifest`] the converter reads
//! the way it was meant:
//!
//! - `vm.firmware` from core's [`Firmware`] (vSphere's `efi` is `uefi`
//!   there already), `vm.mem_gb` rounded **up** to whole GiB and at least
//!   1, `vm.cpu` from the VM (both left out when the platform said 0, i.e.
//!   nothing);
//! - disk ids `disk-0`, `disk-1`, … (or ids given with
//!   [`ExportedDisk::with_id`], checked against the schema's pattern),
//!   `bytes` the file's size, the absolute path, `checksum` from the
//!   disk's SHA-256 [`Digests`] when there is one (a warning in the
//!   manifest otherwise);
//! - `boot_order_hint` always written: 0 for the boot disk (the disk with
//!   the lowest [`DiskInfo::boot_order`], else the first), then 1, 2, … in
//!   boot order; `disk_type` `boot` for it and `data` for the others;
//! - a `pipeline` block always written, every stage with an explicit
//!   `enabled` ([`Pipeline::full`] unless [`ManifestBuilder::pipeline`]
//!   says otherwise), and every boolean whose converter default is `true`
//!   written out (`fix.backup`, `fix.update_grub`, `fix.regen_initramfs`,
//!   `validate.check_image_integrity`, `options.report.enabled`);
//! - `source` with the provider, VM id and name, datacenter, the export's
//!   RFC 3339 timestamp and the export method as it really was;
//!   `metadata` with the SDK version, job id and tags; notes and warnings.
//!
//! [`ManifestBuilder::build`] checks its result against the schema's rules
//! and the semantic rules, so what it returns is valid.
//!
//! ```
//! use hypersdk_core::model::{DiskFormat, DiskInfo, Firmware, VmInfo};
//! use hypersdk_manifest::{DiskType, ExportResult, ExportedDisk, ManifestBuilder};
//!
//! let mut vm = VmInfo::new("vm-42", "web01");
//! vm.cpus = 2;
//! vm.memory_mib = 1536; // 1.5 GiB
//! vm.firmware = Firmware::Uefi;
//! vm.annotations.insert("datacenter".into(), "dc1".into());
//! let mut data = DiskInfo::new("2001", 8 << 30);
//! data.boot_order = None;
//! let mut boot = DiskInfo::new("2000", 16 << 30);
//! boot.boot_order = Some(0);
//!
//! let result = ExportResult::new("vsphere", vm, "nfc-lease")
//!     .with_disk(ExportedDisk::new(data, "/exports/web01/data.vmdk", DiskFormat::VmdkStreamOptimized, 1000))
//!     .with_disk(ExportedDisk::new(boot, "/exports/web01/boot.vmdk", DiskFormat::VmdkStreamOptimized, 2000));
//! let manifest = ManifestBuilder::from_export(&result).job_id("job-7").build()?;
//!
//! let vm = manifest.vm.as_ref().unwrap();
//! assert_eq!((vm.cpu, vm.mem_gb, vm.firmware), (Some(2), Some(2), Some(Firmware::Uefi)));
//! let boot = manifest.boot_disk().unwrap();
//! assert_eq!((boot.id.as_str(), boot.boot_order_hint), ("disk-1", Some(0)));
//! assert_eq!(boot.disk_type, Some(DiskType::Boot));
//! assert_eq!(manifest.source.as_ref().unwrap().datacenter.as_deref(), Some("dc1"));
//! assert!(manifest.pipeline.as_ref().unwrap().fix.as_ref().unwrap().enabled);
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hypersdk_core::digest::{Algorithm, Checksum, Digests, hash_file};
use hypersdk_core::model::{DiskFormat, DiskInfo, Firmware, OsFamily, SnapshotRef, VmInfo};
use hypersdk_core::provider::{DiskTransfer, Export};
use hypersdk_core::{Error, Result};
use serde_json::Value;

use crate::io::MANIFEST_FILE_NAME;
use crate::model::{
    Disk, DiskType, Manifest, Metadata, Nic, Output, OutputFormat, Pipeline, ReportOptions,
    RuntimeOptions, Source, SourceFormat, Timestamp, Vm, Warning, is_valid_disk_id, is_valid_mac,
};
use crate::validate::Validator;

/// The version of hypersdk written into `metadata.hypersdk_version`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One disk file an export wrote.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportedDisk {
    /// The disk as the platform describes it.
    pub info: DiskInfo,
    /// Where the file is.
    pub path: PathBuf,
    /// The file's format.
    pub format: DiskFormat,
    /// The file's size in bytes, as written (not the disk's capacity).
    pub size: u64,
    /// The digests computed while writing the file, if any. The manifest
    /// takes the SHA-256 from here.
    pub digests: Option<Digests>,
    /// The id in the manifest; `disk-<index>` when `None`.
    pub id: Option<String>,
}

impl ExportedDisk {
    /// The file at `path`, `size` bytes in `format`, of disk `info`.
    pub fn new(info: DiskInfo, path: impl Into<PathBuf>, format: DiskFormat, size: u64) -> Self {
        ExportedDisk {
            info,
            path: path.into(),
            format,
            size,
            digests: None,
            id: None,
        }
    }

    /// The file written from `transfer` at `path`, `size` bytes, in the
    /// transfer's format.
    pub fn from_transfer(transfer: &DiskTransfer, path: impl Into<PathBuf>, size: u64) -> Self {
        ExportedDisk::new(transfer.info.clone(), path, transfer.format, size)
    }

    /// The file at `path`, its size taken from the file system.
    pub fn from_file(info: DiskInfo, path: impl Into<PathBuf>, format: DiskFormat) -> Result<Self> {
        let path = path.into();
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(path.display().to_string(), e))?
            .len();
        Ok(ExportedDisk::new(info, path, format, size))
    }

    /// Sets the digests computed while writing.
    #[must_use]
    pub fn with_digests(mut self, digests: Digests) -> Self {
        self.digests = Some(digests);
        self
    }

    /// Sets the id in the manifest (letters, digits, `_` and `-`).
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The SHA-256 of the file, if it was computed.
    pub fn sha256(&self) -> Option<&Checksum> {
        self.digests.as_ref().and_then(|d| d.get(Algorithm::Sha256))
    }
}

/// What an export produced: the VM, how it was exported, and the disk
/// files written. The input of [`ManifestBuilder::from_export`] and
/// [`write_export_manifest`], filled by any provider.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportResult {
    /// The provider's name (`vsphere`, `ovm`, …).
    pub provider: String,
    /// The VM as it was when the export started.
    pub vm: VmInfo,
    /// How the export was really done (`nfc-lease`, `ovm-snapshot`, …).
    pub method: String,
    /// The snapshot the disks were read from, if any.
    pub snapshot: Option<SnapshotRef>,
    /// The datacenter's name; from the VM's `datacenter` annotation by
    /// default.
    pub datacenter: Option<String>,
    /// When the export started.
    pub exported_at: DateTime<Utc>,
    /// The disk files, in the VM's order.
    pub disks: Vec<ExportedDisk>,
}

impl ExportResult {
    /// An export of `vm` by `provider` done by `method`, started now, with
    /// no disk yet.
    pub fn new(provider: impl Into<String>, vm: VmInfo, method: impl Into<String>) -> Self {
        let datacenter = vm.annotations.get("datacenter").cloned();
        ExportResult {
            provider: provider.into(),
            vm,
            method: method.into(),
            snapshot: None,
            datacenter,
            exported_at: Utc::now(),
            disks: Vec::new(),
        }
    }

    /// The VM, method and snapshot of a provider's [`Export`]; add the
    /// files written with [`ExportResult::with_disk`].
    pub fn from_export(provider: impl Into<String>, export: &Export) -> Self {
        let mut r = ExportResult::new(provider, export.vm.clone(), export.method.clone());
        r.snapshot = export.snapshot.clone();
        r
    }

    /// Adds a disk file.
    #[must_use]
    pub fn with_disk(mut self, disk: ExportedDisk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Sets the datacenter's name.
    #[must_use]
    pub fn with_datacenter(mut self, name: impl Into<String>) -> Self {
        self.datacenter = Some(name.into());
        self
    }

    /// Sets when the export started.
    #[must_use]
    pub fn with_exported_at(mut self, at: DateTime<Utc>) -> Self {
        self.exported_at = at;
        self
    }

    /// Hashes, with SHA-256, every disk file that has no SHA-256 digest
    /// yet, up to `parallelism` files at once; algorithms a disk already
    /// had are computed again in the same pass so none is lost. Updates
    /// `size` to the bytes hashed.
    pub async fn compute_missing_checksums(&mut self, parallelism: usize) -> Result<()> {
        let jobs: Vec<(usize, PathBuf, Vec<Algorithm>)> = self
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.sha256().is_none())
            .map(|(i, d)| {
                let mut algs: Vec<Algorithm> = d
                    .digests
                    .iter()
                    .flat_map(|ds| ds.iter().map(Checksum::algorithm))
                    .collect();
                algs.push(Algorithm::Sha256);
                (i, d.path.clone(), algs)
            })
            .collect();
        let mut results = futures::stream::iter(jobs)
            .map(|(i, path, algs)| async move { (i, hash_file(&path, &algs).await) })
            .buffer_unordered(parallelism.max(1));
        while let Some((i, digests)) = results.next().await {
            let digests = digests?;
            if let Some(d) = self.disks.get_mut(i) {
                d.size = digests.bytes_hashed();
                d.digests = Some(digests);
            }
        }
        Ok(())
    }
}

/// Builds a [`Manifest`] from core types; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    vm: VmInfo,
    provider: Option<String>,
    method: Option<String>,
    datacenter: Option<String>,
    snapshot: Option<SnapshotRef>,
    exported_at: Option<Timestamp>,
    disks: Vec<ExportedDisk>,
    job_id: Option<String>,
    tags: BTreeMap<String, String>,
    notes: Vec<String>,
    warnings: Vec<Warning>,
    pipeline: Pipeline,
    output: Option<Output>,
    options: RuntimeOptions,
}

impl ManifestBuilder {
    /// A builder for `vm`, with no disk yet, the full pipeline, qcow2
    /// output and the converter's report on.
    pub fn new(vm: VmInfo) -> Self {
        ManifestBuilder {
            vm,
            provider: None,
            method: None,
            datacenter: None,
            snapshot: None,
            exported_at: None,
            disks: Vec::new(),
            job_id: None,
            tags: BTreeMap::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            pipeline: Pipeline::full(),
            output: Some(Output::new(OutputFormat::Qcow2)),
            options: RuntimeOptions {
                dry_run: Some(false),
                report: Some(ReportOptions {
                    enabled: Some(true),
                    ..ReportOptions::default()
                }),
                ..RuntimeOptions::default()
            },
        }
    }

    /// A builder with everything `result` says: the VM, provider, method,
    /// datacenter, snapshot, export time and disks.
    pub fn from_export(result: &ExportResult) -> Self {
        let mut b = ManifestBuilder::new(result.vm.clone())
            .provider(result.provider.clone())
            .export_method(result.method.clone())
            .exported_at(result.exported_at)
            .disks(result.disks.iter().cloned());
        b.datacenter = result.datacenter.clone();
        b.snapshot = result.snapshot.clone();
        b
    }

    /// The provider's name, into `source.provider`.
    #[must_use]
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = Some(name.into());
        self
    }

    /// How the export was done, into `source.export_method`.
    #[must_use]
    pub fn export_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// The datacenter's name, into `source.datacenter`.
    #[must_use]
    pub fn datacenter(mut self, name: impl Into<String>) -> Self {
        self.datacenter = Some(name.into());
        self
    }

    /// When the export started, into `source.export_timestamp`.
    #[must_use]
    pub fn exported_at(mut self, at: DateTime<Utc>) -> Self {
        self.exported_at = Some(at.into());
        self
    }

    /// Adds a disk file.
    #[must_use]
    pub fn disk(mut self, disk: ExportedDisk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Adds disk files.
    #[must_use]
    pub fn disks(mut self, disks: impl IntoIterator<Item = ExportedDisk>) -> Self {
        self.disks.extend(disks);
        self
    }

    /// The caller's job id, into `metadata.job_id`.
    #[must_use]
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Adds a tag to `metadata.tags`.
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Adds a note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Adds a warning of export stage `stage`, stamped now.
    #[must_use]
    pub fn warning(mut self, stage: impl Into<String>, message: impl Into<String>) -> Self {
        self.warnings.push(Warning::new(stage, message));
        self
    }

    /// The converter's stages, instead of [`Pipeline::full`]. The block is
    /// always written; a stage left `None` does not run.
    #[must_use]
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// The converter's output, instead of qcow2 in its default directory;
    /// `None` leaves the `output` block out.
    #[must_use]
    pub fn output(mut self, output: Option<Output>) -> Self {
        self.output = output;
        self
    }

    /// The converter's runtime options, instead of `dry_run: false` and
    /// the report on.
    #[must_use]
    pub fn runtime_options(mut self, options: RuntimeOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the manifest.
    ///
    /// Fails with [`Error::InvalidInput`] when there is no disk, a disk's
    /// format is unknown (neither its [`DiskFormat`] nor its file name
    /// says), a path is not UTF-8, an id given with
    /// [`ExportedDisk::with_id`] breaks the schema's pattern or is used
    /// twice, or anything given (a pipeline with `compress_level: 12`, say)
    /// breaks a rule of the schema; the message lists every problem.
    pub fn build(self) -> Result<Manifest> {
        if self.disks.is_empty() {
            return Err(Error::invalid_input(
                "an artifact manifest needs at least one disk, got none",
            ));
        }
        let mut warnings = self.warnings;

        // Boot order: the disks sorted by their platform boot order, those
        // without one after, in the VM's order.
        let mut order: Vec<usize> = (0..self.disks.len()).collect();
        order.sort_by_key(|&i| (self.disks[i].info.boot_order.unwrap_or(u32::MAX), i));
        let mut hints = vec![0u64; self.disks.len()];
        for (hint, &i) in order.iter().enumerate() {
            hints[i] = hint as u64;
        }

        let mut disks = Vec::with_capacity(self.disks.len());
        for (i, d) in self.disks.iter().enumerate() {
            let id = match &d.id {
                Some(id) if !is_valid_disk_id(id) => {
                    return Err(Error::invalid_input(format!(
                        "disk id '{}' of {} is not valid: letters, digits, '_' and '-' only",
                        id.escape_debug(),
                        d.path.display()
                    )));
                }
                Some(id) => id.clone(),
                None => format!("disk-{i}"),
            };
            if let Some(other) = disks.iter().find(|o: &&Disk| o.id == id) {
                return Err(Error::invalid_input(format!(
                    "disk id '{id}' is used twice ({} and {})",
                    other.local_path,
                    d.path.display()
                )));
            }
            let format = SourceFormat::from_disk_format(d.format)
                .or_else(|| SourceFormat::from_path(&d.path))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "the format of disk file {} is unknown ({}); the manifest needs one \
                         of vmdk, qcow2, raw, vhd, vhdx, vdi",
                        d.path.display(),
                        d.format
                    ))
                })?;
            let local_path = absolute_utf8(&d.path)?;
            let mut disk = Disk::new(id, format, d.size, local_path);
            disk.checksum = d.sha256().copied();
            if disk.checksum.is_none() {
                warnings.push(Warning::new(
                    "export",
                    format!(
                        "no SHA-256 was computed for {} ({}): the converter will not verify it",
                        disk.id, disk.local_path
                    ),
                ));
            }
            disk.boot_order_hint = Some(hints[i]);
            disk.disk_type = Some(if hints[i] == 0 {
                DiskType::Boot
            } else {
                DiskType::Data
            });
            disk.label = Some(d.info.name.clone().unwrap_or_else(|| d.info.id.clone()));
            disk.extra
                .insert("source_disk_id".into(), Value::from(d.info.id.clone()));
            disk.extra
                .insert("capacity_bytes".into(), Value::from(d.info.capacity_bytes));
            disks.push(disk);
        }

        let mut manifest = Manifest::new(disks);
        manifest.vm = Some(vm_section(&self.vm));
        manifest.source = Some(Source {
            provider: self.provider.clone(),
            vm_id: Some(self.vm.id.clone()),
            vm_name: Some(self.vm.name.clone()),
            datacenter: self.datacenter,
            export_timestamp: self.exported_at,
            export_method: self.method.clone(),
            extra: match &self.snapshot {
                Some(s) => [("snapshot_id".to_owned(), Value::from(s.id.clone()))]
                    .into_iter()
                    .collect(),
                None => Default::default(),
            },
        });
        for (i, nic) in self.vm.nics.iter().enumerate() {
            let mac = match &nic.mac {
                Some(mac) if !is_valid_mac(mac) => {
                    warnings.push(Warning::new(
                        "export",
                        format!("NIC {i} has MAC '{mac}', not a MAC address; left out"),
                    ));
                    None
                }
                mac => mac.clone(),
            };
            manifest.nics.push(Nic {
                id: Some(nic.id.clone().unwrap_or_else(|| format!("nic-{i}"))),
                mac,
                network: nic.network.clone(),
                ..Nic::default()
            });
        }
        let mut notes = Vec::with_capacity(self.notes.len() + 1);
        notes.push(format!(
            "exported from {} by hypersdk {SDK_VERSION} ({})",
            self.provider.as_deref().unwrap_or("an unnamed provider"),
            self.method.as_deref().unwrap_or("method not given"),
        ));
        notes.extend(self.notes);
        manifest.notes = notes;
        manifest.warnings = warnings;
        manifest.metadata = Some(Metadata {
            hypersdk_version: Some(SDK_VERSION.to_owned()),
            job_id: self.job_id,
            created_at: Some(Timestamp::now()),
            tags: self.tags,
            ..Metadata::default()
        });
        manifest.pipeline = Some(self.pipeline);
        manifest.output = self.output;
        manifest.options = Some(self.options);

        let report = Validator::check_offline(&manifest.to_value()?);
        if !report.is_ok() {
            let problems: Vec<String> = report.errors().map(ToString::to_string).collect();
            return Err(Error::invalid_input(format!(
                "the artifact manifest would be invalid:\n  {}",
                problems.join("\n  ")
            )));
        }
        Ok(manifest)
    }
}

/// The `vm` section of a core [`VmInfo`].
fn vm_section(vm: &VmInfo) -> Vm {
    Vm {
        cpu: (vm.cpus > 0).then_some(u64::from(vm.cpus)),
        mem_gb: (vm.memory_mib > 0).then(|| mem_gb(vm.memory_mib)),
        firmware: Some(vm.firmware),
        secureboot: match vm.firmware {
            Firmware::Bios => Some(false),
            _ => vm.secure_boot,
        },
        os_hint: Some(
            match vm.guest_os.family {
                OsFamily::Linux => "linux",
                OsFamily::Windows => "windows",
                _ => "unknown",
            }
            .to_owned(),
        ),
        os_version: vm
            .guest_os
            .description
            .clone()
            .or_else(|| vm.guest_os.id.clone()),
        ..Vm::default()
    }
}

/// Memory in MiB as whole GiB, rounded up, at least 1.
pub fn mem_gb(memory_mib: u64) -> u64 {
    memory_mib.div_ceil(1024).max(1)
}

/// `path` made absolute (against the working directory), as UTF-8.
fn absolute_utf8(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::io(format!("path '{}'", path.display()), e))?;
    abs.to_str().map(str::to_owned).ok_or_else(|| {
        Error::invalid_input(format!(
            "disk path {} is not UTF-8; the manifest is JSON and needs UTF-8 paths",
            abs.display()
        ))
    })
}

impl Manifest {
    /// Checks the manifest (schema rules, semantic rules, the files exist
    /// with their sizes; checksums are not read again) and writes it to
    /// `path` atomically with permissions 0644.
    ///
    /// Fails without writing anything if a check fails, with the error of
    /// [`crate::ValidationReport::into_result`].
    pub async fn write_validated(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let base = hypersdk_core::fsutil::parent_dir(path);
        let report = Validator::new()
            .with_checksums(false)
            .with_base_dir(base)
            .validate_manifest(self)
            .await;
        report.into_result(&format!("manifest '{}'", path.display()))?;
        self.write(path)
    }
}

/// Builds the manifest of `result` and writes it, checked, to
/// `<dir>/artifact-manifest.json`; returns the manifest's path.
///
/// This is what a provider calls once its export has written the disk
/// files. The checksums are those in the disks' [`Digests`] (computed while
/// writing); disks without a SHA-256 get none, and a warning in the
/// manifest (see [`ExportResult::compute_missing_checksums`]). For
/// settings beyond the defaults (job id, tags, pipeline), build with
/// [`ManifestBuilder::from_export`] and write with
/// [`Manifest::write_validated`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
/// use hypersdk_manifest::{ExportResult, ExportedDisk, Manifest, write_export_manifest};
///
/// let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("web01-disk0.raw");
/// std::fs::write(&file, vec![0u8; 4096]).unwrap();
/// let mut result = ExportResult::new("memory", VmInfo::new("vm-1", "web01"), "memory-snapshot")
///     .with_disk(ExportedDisk::from_file(DiskInfo::new("disk-0", 4096), &file, DiskFormat::Raw)?);
/// result.compute_missing_checksums(4).await?;
///
/// let path = write_export_manifest(&result, dir.path()).await?;
/// assert!(path.ends_with("artifact-manifest.json"));
/// let manifest = Manifest::read(&path)?;
/// assert!(manifest.disks[0].checksum.is_some());
/// # Ok::<(), hypersdk_core::Error>(())
/// # }).unwrap();
/// ```
pub async fn write_export_manifest(
    result: &ExportResult,
    dir: impl AsRef<Path>,
) -> Result<PathBuf> {
    let path = dir.as_ref().join(MANIFEST_FILE_NAME);
    let manifest = ManifestBuilder::from_export(result).build()?;
    manifest.write_validated(&path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_rounds_up() {
        assert_eq!(mem_gb(1), 1);
        assert_eq!(mem_gb(512), 1);
        assert_eq!(mem_gb(1024), 1);
        assert_eq!(mem_gb(1025), 2);
        assert_eq!(mem_gb(16 * 1024), 16);
        assert_eq!(mem_gb(u64::MAX), u64::MAX.div_ceil(1024));
    }

    fn vm() -> VmInfo {
        VmInfo::new("vm-1", "web01")
    }

    fn disk(id: &str, path: &str) -> ExportedDisk {
        ExportedDisk::new(DiskInfo::new(id, 1 << 30), path, DiskFormat::Raw, 10)
    }

    #[test]
    fn bad_input_is_refused() {
        let e = ManifestBuilder::new(vm()).build().unwrap_err();
        assert!(e.to_string().contains("at least one disk"), "{e}");

        let e = ManifestBuilder::new(vm())
            .disk(disk("a", "/a.raw").with_id("a b"))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("'a b'"), "{e}");

        let e = ManifestBuilder::new(vm())
            .disk(disk("a", "/a.raw").with_id("disk-1"))
            .disk(disk("b", "/b.raw"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");

        let e = ManifestBuilder::new(vm())
            .disk(ExportedDisk::new(
                DiskInfo::new("a", 1),
                "/a.bin",
                DiskFormat::Unknown,
                1,
            ))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("/a.bin"), "{e}");

        let mut pipeline = Pipeline::full();
        if let Some(c) = pipeline.convert.as_mut() {
            c.compress_level = Some(12);
        }
        let e = ManifestBuilder::new(vm())
            .disk(disk("a", "/a.raw"))
            .pipeline(pipeline)
            .build()
            .unwrap_err();
        assert!(
            e.to_string().contains("pipeline.convert.compress_level"),
            "{e}"
        );
    }

    #[test]
    fn format_falls_back_to_the_extension() {
        let m = ManifestBuilder::new(vm())
            .disk(ExportedDisk::new(
                DiskInfo::new("a", 1),
                "/a.qcow2",
                DiskFormat::Unknown,
                1,
            ))
            .build()
            .unwrap();
        assert_eq!(m.disks[0].source_format, SourceFormat::Qcow2);
    }

    #[test]
    fn relative_paths_become_absolute() {
        let m = ManifestBuilder::new(vm())
            .disk(disk("a", "rel/a.raw"))
            .build()
            .unwrap();
        assert!(Path::new(&m.disks[0].local_path).is_absolute());
        assert!(m.disks[0].local_path.ends_with("rel/a.raw"));
    }
}
