//! extents (in progress).
