//! Test support shared by hypersdk crates (publish = false).
//!
//! - [`conformance`]: the provider conformance suite, scenario functions that
//!   every provider's tests run against their real peer or in memory.
//!
//! The vcsim launcher, the OVM exporter test server and the fault-injecting
//! proxy arrive here with the issues that need them.
#![forbid(unsafe_code)]

pub mod conformance;
