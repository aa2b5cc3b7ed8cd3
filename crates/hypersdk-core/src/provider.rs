//! provider (in progress).
