//! The formats of a VM on disk: OVF descriptors, `.mf` manifests and OVA
//! archives, read and written as streams, without temp copies.
//!
//! - [`ovf`]: a typed OVF model (DSP0243 0.9, 1.x, 2.x) with a hardened
//!   parser, a writer that keeps vendor sections, conversion to
//!   [`VmInfo`](hypersdk_core::model::VmInfo), and a builder of the
//!   descriptor ovftool writes for ESXi.
//! - [`mf`]: `.mf` manifests in all three real spellings.
//! - [`archive`]: the streaming OVA reader (any `AsyncRead`, digests
//!   checked on the fly), the index of a seekable OVA (random access to one
//!   entry), and the streaming writer (DSP0243 order, manifest computed on
//!   the fly).
//! - [`dir`]: a [`Provider`](hypersdk_core::provider::Provider) over a
//!   directory of packages.
//!
//! Every input is untrusted: XML with a DOCTYPE, tar entries with absolute
//! or `..` names, links, devices, bad checksums, truncation, wrong digests
//! each get an error that names what was wrong and where.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
//! use hypersdk_ova::archive::{OvaReader, OvaWriter, WriteOptions};
//! use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
//!
//! // A descriptor for a VM with one raw disk, as ovftool would write it.
//! let mut vm = VmInfo::new("vm-1", "web01");
//! vm.cpus = 2;
//! vm.memory_mib = 2048;
//! vm.disks.push(DiskInfo::new("disk0", 1 << 20));
//! let disk = vec![7u8; 1 << 20];
//! let files = [OvfDisk::new("web01-disk1.raw").with_format(DiskFormat::Raw)];
//! let ovf = write_descriptor(&vm, &files)?;
//!
//! // Pack it: the .mf (SHA-256) is computed while writing.
//! let mut ova = OvaWriter::new(Vec::new(), WriteOptions::default());
//! ova.write_descriptor("web01.ovf", ovf.as_bytes()).await?;
//! ova.append_bytes("web01-disk1.raw", disk.into()).await?;
//! let bytes = ova.finish().await?;
//!
//! // Read it back as a stream, checking every digest.
//! let summary = OvaReader::new(&bytes[..]).finish().await?;
//! assert!(summary.manifest_verified);
//! let envelope = summary.envelope.expect("parsed descriptor");
//! let back = envelope.virtual_systems()[0].to_vm_info(&envelope)?;
//! assert_eq!((back.name.as_str(), back.cpus, back.memory_mib), ("web01", 2, 2048));
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
pub mod archive;
pub mod dir;
pub mod mf;
pub mod ovf;
pub mod vmdk;
