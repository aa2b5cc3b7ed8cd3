//! retry (in progress).
