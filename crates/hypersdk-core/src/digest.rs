//! digest (in progress).
