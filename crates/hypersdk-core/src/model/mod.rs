//! model (in progress).
pub mod extent;
