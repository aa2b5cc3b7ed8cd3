//! Test support shared by hypersdk crates (publish = false).
//!
//! - [`conformance`]: the provider conformance suite, scenario functions that
//!   every provider's tests run against their real peer or in memory.
//! - [`http_server`]: a loopback HTTP/1.1 file server (HEAD, single-range
//!   GET, `If-Match`, keep-alive) with faults switchable at runtime, for
//!   testing HTTP range readers against a misbehaving peer.
//! - [`fault_proxy`]: a TCP proxy that cuts, resets or delays the
//!   connections through it after exact byte counts.
//!
//! The vcsim launcher and the OVM exporter test server arrive here with the
//! issues that need them.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod fault_proxy;
pub mod http_server;
