//! hypersdk-core: the vocabulary and machinery every hypersdk crate shares.
#![forbid(unsafe_code)]
// Library code must not unwrap: inputs come from peers and files.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod checkpoint;
pub mod digest;
pub mod error;
pub(crate) mod fsutil;
pub mod memory;
pub mod model;
pub mod progress;
pub mod provider;
pub mod retry;

pub use error::{Error, ErrorKind, Result};
