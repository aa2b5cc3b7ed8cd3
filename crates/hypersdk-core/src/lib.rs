//! hypersdk-core: the vocabulary and machinery every hypersdk crate shares.
#![forbid(unsafe_code)]

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
