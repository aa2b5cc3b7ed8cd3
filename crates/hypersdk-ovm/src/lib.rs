//! hypersdk's Oracle VM provider, through the Coriolis OVM exporter REST API.
//!
//! The exporter runs on each OVM server (dom0) and serves the VMs of the
//! repositories mounted there: it snapshots their disks with OCFS2
//! reflinks, lists each snapshot's allocated extents ("chunks", with their
//! physical place on the device) and serves the snapshot files by HTTP
//! `Range`. This crate is written from the exporter's observed behaviour
//! (its README is wrong in places), not from its AGPL code.
//!
//! - [`client`]: [`OvmClient`], the REST client: TLS by CA bundle,
//!   thumbprint pin or (by name) none; a JWT cached until shortly before its
//!   `exp` and renewed once on a `401`; the exporter's statuses mapped to
//!   [`hypersdk_core::Error`] kinds ([`error`]); snapshot creation that is
//!   never blindly retried; [`OvmDisk`], a snapshot's disk as a
//!   [`hypersdk_core::blocks::BlockSource`].
//! - [`types`]: the exporter's JSON objects, parsed leniently.
//! - [`auth`]: reading a JWT's `exp`.
//! - [`diff`]: the client-side diff of two snapshots' raw chunk lists by
//!   physical mapping, tighter than the exporter's `compareTo` and
//!   reporting freed ranges too.
//! - [`provider`]: [`OvmProvider`], the [`hypersdk_core::provider::Provider`]
//!   over a client.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::model::{VmFilter, VmRef};
//! use hypersdk_core::provider::{DiskRef, Provider};
//! use hypersdk_ovm::{OvmClient, OvmProvider};
//!
//! let client = OvmClient::builder("https://ovs1.example:5544")
//!     .credentials("admin", "secret")
//!     .pin_thumbprint("AB:CD:…")
//!     .build()?;
//! let provider = OvmProvider::new(client);
//! let vm = &provider.discover(&VmFilter::all().with_name("web*")).await?[0];
//! let base = provider.create_snapshot(&VmRef::id(&vm.id), "base").await?;
//! // ... the guest writes ...
//! let next = provider.create_snapshot(&VmRef::id(&vm.id), "next").await?;
//! let disk = DiskRef::new(VmRef::id(&vm.id), vm.disks[0].id.clone());
//! let delta = provider.changed_extents(&disk, Some(&base.id), &next.id).await?;
//! println!(
//!     "{} bytes to copy, {} bytes to punch",
//!     delta.changed.total_bytes(),
//!     delta.freed.map_or(0, |f| f.total_bytes())
//! );
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod auth;
pub mod backup;
pub mod client;
pub mod diff;
pub mod error;
pub mod provider;
pub mod types;

pub use backup::{BackupOptions, BackupReport, OvmBackup};
pub use client::{OvmClient, OvmClientBuilder, OvmDisk};
pub use diff::{ChunkDiff, chunks_to_extents, diff_chunks};
pub use provider::OvmProvider;
pub use types::{Chunk, Disk, DiskSnapshot, SnapshotQuery, VirtualMachine, VmSnapshot};
