//! fsutil (in progress).
