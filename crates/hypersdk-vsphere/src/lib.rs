//! hypersdk's vSphere provider: the vim25 SOAP API spoken directly over
//! reqwest and quick-xml (no Go, no Python, no generated bindings).
//!
//! What is here:
//! - [`soap`]: envelopes, a namespace-aware response reader, faults;
//! - [`client`]: [`Client`] with TLS verification on by default (system
//!   roots or a given CA), certificate **thumbprint pinning** (SHA-1 or
//!   SHA-256, checked in the handshake before any credential is sent),
//!   plain `http://` only by name, session cookie, keep-alive (pings
//!   only), one shared re-login when the session expires (a refused one is
//!   remembered, not repeated, until [`Client::reconnect`]), logout;
//!   credentials never appear in `Debug` or logs;
//! - [`inventory`]: discovery with `ContainerView` + paged
//!   `RetrievePropertiesEx`, mapped to core [`VmInfo`](hypersdk_core::model::VmInfo);
//! - [`snapshot`] and [`tasks`]: snapshots and task waiting;
//! - [`lease`]: `HttpNfcLease` waiting, keep-alive, complete and abort,
//!   and taking a still-ready lease over after a restart;
//! - [`export`]: VM export through an NFC lease into an OVA, an OVF
//!   directory or raw images, with digests, `.mf` and Artifact Manifest;
//! - [`import`]: OVA import (`CreateImportSpec`, `ImportVApp`, the files
//!   streamed from the archive to the lease, non-stream disks converted on
//!   the fly, rollback on failure, restarts on retryable faults);
//! - [`datastore`]: datastore file transfers through `/folder` (downloads
//!   resumed with `Range`, uploads, listing);
//! - [`cbt`]: changed block tracking (`QueryChangedDiskAreas` to core
//!   extents, incremental disk copies);
//! - [`provider`]: [`VsphereProvider`], the core
//!   [`Provider`](hypersdk_core::provider::Provider) (discovery,
//!   snapshots, export, import, changed extents).
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::model::{VmFilter, VmRef};
//! use hypersdk_core::provider::Provider;
//! use hypersdk_vsphere::{Client, VsphereProvider};
//!
//! let client = Client::builder("https://vcenter.example.com")
//!     .credentials("administrator@vsphere.local", "secret")
//!     .pin_thumbprint("5E:2A:…:9C") // or .ca_pem(pem); system roots by default
//!     .keep_alive(std::time::Duration::from_secs(600))
//!     .connect()
//!     .await?;
//! let vsphere = VsphereProvider::new(client.clone());
//! for vm in vsphere.discover(&VmFilter::all().with_name("web*")).await? {
//!     println!("{} {} {} MiB", vm.id, vm.name, vm.memory_mib);
//! }
//! let snap = vsphere.create_snapshot(&VmRef::name("web01"), "before-move").await?;
//! vsphere.delete_snapshot(&snap.to_ref()).await?;
//! client.logout().await?;
//! # Ok(()) }
//! ```
//!
//! Tests run against govmomi's vcsim (see `hypersdk_testkit::vcsim`); the
//! differences between vcsim 0.24 and real vCenter that this crate
//! tolerates are listed in `shared/notes/vsphere-api.md` §10.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod cbt;
pub mod client;
pub mod datastore;
pub mod export;
pub mod import;
pub mod inventory;
pub mod lease;
pub mod property;
pub mod provider;
pub mod snapshot;
pub mod soap;
pub mod tasks;
pub mod types;

/// Certificate thumbprints and pinning, shared with the other providers
/// (moved to [`hypersdk_core::tls`]).
pub use hypersdk_core::tls;

pub use client::{Client, ClientBuilder, Credentials, fault_to_error, vim_fault};
pub use provider::VsphereProvider;
