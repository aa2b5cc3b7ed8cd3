//! hypersdk-core: the vocabulary and machinery every hypersdk crate shares.
//!
//! - [`model`]: VMs, disks, NICs, snapshots, and byte [`model::Extent`]s
//!   with the [`model::ExtentList`] algebra (merge, squash, split,
//!   intersect, subtract, coverage);
//! - [`provider`]: the object-safe [`provider::Provider`] trait every
//!   platform implements, and [`memory::MemoryProvider`], a complete
//!   in-memory platform for trying the SDK and for tests;
//! - [`blocks`]: [`blocks::BlockSource`], a disk read by byte range (local
//!   files with their holes, HTTP with checked `Range` requests), the
//!   [`blocks::SparseFile`] sink, and the resumable copy engine;
//! - [`error`]: the one [`Error`] every public API returns, with
//!   [`Error::kind`] and [`Error::is_retryable`];
//! - [`retry`]: the one backoff policy and retry loop;
//! - [`progress`]: progress events, a rate/ETA meter, and sinks (callback,
//!   stream, virt-v2v state file);
//! - [`digest`]: streaming SHA-1/SHA-256/SHA-512, in parallel when several
//!   are asked for, as `sha256:<hex>` checksums;
//! - [`checkpoint`]: transfer sessions persisted so a restarted process
//!   resumes where it stopped.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use hypersdk_core::memory::MemoryProvider;
//! use hypersdk_core::model::{VmFilter, VmRef};
//! use hypersdk_core::provider::{DiskRef, Provider};
//!
//! let provider: Arc<dyn Provider> = Arc::new(MemoryProvider::with_demo_vms());
//! let web = provider.vm(&VmRef::name("web01")).await?;
//! assert_eq!(web.memory_mib, 4096);
//!
//! // Read the first sector of the boot disk.
//! let disk = provider
//!     .open_disk(&DiskRef::new(VmRef::id(&web.id), "disk-0"), None)
//!     .await?;
//! let sector = disk.read_range(hypersdk_core::model::Extent::new(0, 512)).await?;
//! assert!(sector.starts_with(b"boot sector of web01"));
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]
// Library code must not unwrap: inputs come from peers and files.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod blocks;
pub mod checkpoint;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod memory;
pub mod model;
pub mod progress;
pub mod provider;
pub mod retry;
pub mod tls;

pub use error::{Error, ErrorKind, Result};

/// The code blocks of the workspace README, compiled as doc tests so the
/// README cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
