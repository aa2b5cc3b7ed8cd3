//! hypersdk-manifest: Artifact Manifest v1.0, the hand-off from hypersdk to
//! the converter (hyper2kvm).
//!
//! A manifest lists the disk files of one exported VM, with their formats,
//! sizes, checksums and boot order, the VM's firmware and sizing, and which
//! converter stages to run. This crate has:
//!
//! - [`model`]: the typed model ([`Manifest`] and one type per object of the
//!   schema), strict about types, keeping unknown fields;
//! - [`builder`]: [`ManifestBuilder`], from core's [`VmInfo`] and the files
//!   an export wrote ([`ExportResult`], [`ExportedDisk`]), and
//!   [`write_export_manifest`], what providers call after an export;
//! - [`validate`]: [`Validator`], which reports **every** problem with the
//!   field's path: the schema's rules, unique ids and one boot disk, files
//!   present with their sizes and SHA-256 checksums (streamed, several
//!   disks at once);
//! - [`SCHEMA`]: the JSON Schema of v1.0, shipped verbatim.
//!
//! Build a manifest for an export, write it, read it back and validate it
//! with its files:
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
//! use hypersdk_core::digest::{Algorithm, hash_file};
//! use hypersdk_core::model::{DiskFormat, DiskInfo, Firmware, VmInfo};
//! use hypersdk_manifest::{
//!     ExportResult, ExportedDisk, Manifest, ManifestBuilder, ProblemKind, Validator,
//! };
//!
//! // What a provider's export produced: a VM and the disk files it wrote,
//! // with the digests computed while writing.
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("web01-disk0.raw");
//! std::fs::write(&file, b"boot sector of web01").unwrap();
//! let digests = hash_file(&file, &[Algorithm::Sha256]).await?;
//!
//! let mut vm = VmInfo::new("vm-42", "web01");
//! vm.cpus = 2;
//! vm.memory_mib = 3000;
//! vm.firmware = Firmware::Uefi;
//! let result = ExportResult::new("vsphere", vm, "nfc-lease").with_disk(
//!     ExportedDisk::from_file(DiskInfo::new("2000", 1 << 30), &file, DiskFormat::Raw)?
//!         .with_digests(digests),
//! );
//!
//! // Build and write (atomically, next to the disks).
//! let manifest = ManifestBuilder::from_export(&result)
//!     .job_id("job-7")
//!     .tag("team", "web")
//!     .build()?;
//! let path = dir.path().join(hypersdk_manifest::MANIFEST_FILE_NAME);
//! manifest.write(&path)?;
//!
//! // Read it back: the same manifest.
//! let read = Manifest::read(&path)?;
//! assert_eq!(read, manifest);
//! assert_eq!(read.vm.as_ref().and_then(|vm| vm.mem_gb), Some(3));
//! assert_eq!(read.disks[0].boot_order_hint, Some(0));
//!
//! // Validate everything, checksums included.
//! let report = Validator::new().validate_file(&path).await?;
//! assert!(report.is_empty(), "{report}");
//!
//! // A changed disk is caught, with the field's path.
//! std::fs::write(&file, b"BOOT SECTOR OF WEB01").unwrap();
//! let report = Validator::new().validate_file(&path).await?;
//! let problem = report.find("disks[0].checksum", ProblemKind::ChecksumMismatch);
//! assert!(problem.is_some(), "{report}");
//! let err = hypersdk_manifest::verify(&path).await.unwrap_err();
//! assert_eq!(err.kind(), hypersdk_core::ErrorKind::InvalidData);
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! [`VmInfo`]: hypersdk_core::model::VmInfo
#![forbid(unsafe_code)]
// Library code must not unwrap: inputs come from peers and files.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod builder;
mod io;
pub mod model;
pub mod report;
mod schema;
pub mod validate;

pub use builder::{
    ExportResult, ExportedDisk, ManifestBuilder, SDK_VERSION, write_export_manifest,
};
pub use io::MANIFEST_FILE_NAME;
pub use model::{
    ConvertStage, DEFAULT_BOOT_ORDER_HINT, Disk, DiskType, Extra, FixStage, FstabMode,
    InspectStage, MANIFEST_VERSION, Manifest, Metadata, Nic, Output, OutputFormat, Pipeline,
    ReportOptions, RuntimeOptions, Source, SourceFormat, Timestamp, ValidateStage, Vm, Warning,
    is_valid_disk_id, is_valid_mac, parse_sha256,
};
pub use report::{Problem, ProblemKind, Severity, ValidationReport};
pub use validate::{DEFAULT_PARALLELISM, Validator, verify};

/// The JSON Schema of Artifact Manifest v1.0 (draft-07), verbatim from
/// hyper2kvm (`docs/reference/artifact-manifest-v1.0.schema.json`).
///
/// [`Validator`] implements its rules in Rust; this text is shipped for
/// tools that want to check with a JSON Schema validator of their own, and
/// this crate's tests prove the two agree.
pub const SCHEMA: &str = include_str!("../schema/artifact-manifest-v1.0.schema.json");

/// The schema's `$id`.
pub const SCHEMA_ID: &str =
    "https://github.com/ssahani/hyper2kvm/schemas/artifact-manifest-v1.0.json";
