//! Test support shared by hypersdk crates (publish = false).
//!
//! - [`conformance`]: the provider conformance suite, scenario functions that
//!   every provider's tests run against their real peer or in memory.
//! - [`http_server`]: a loopback HTTP/1.1 file server (HEAD, single-range
//!   GET, `If-Match`, keep-alive) with faults switchable at runtime, for
//!   testing HTTP range readers against a misbehaving peer.
//! - [`fault_proxy`]: a TCP proxy that cuts, resets or delays the
//!   connections through it after exact byte counts.
//! - [`vcsim`]: builds and runs the vcsim test harness (govmomi's vSphere
//!   simulator plus ExportVm, CreateDescriptor, paging, NFC upload capture,
//!   fault injection and a control API) on a loopback port, one process per
//!   test, stopped on drop.
//! - [`images`]: deterministic raw test images written as sparse files
//!   (random, zeros, mixed data/text/holes, unaligned length, > 4 GiB
//!   virtual) with their allocated extents and a hole-aware sha256.
//! - [`qemu`]: `qemu-img` (`convert`, `compare`, `check`, `info`) as the
//!   reference in cross-check tests; missing qemu-img is an error naming
//!   `apt-get install -y qemu-utils`, never a skip.
//! - [`ovm`]: a faithful double of the Coriolis OVM exporter (HTTPS with a
//!   generated CA, HS256 JWTs, every route, Go ServeContent ranges,
//!   copy-on-write sparse snapshots with FIEMAP-like chunks, fault switches).
#![forbid(unsafe_code)]

pub mod conformance;
pub mod fault_proxy;
pub mod http_server;
pub mod images;
pub mod ovm;
pub mod qemu;
pub mod vcsim;
