//! Benchmarks of hypersdk's hot paths live in `benches/`; run them with
//! `cargo bench -p hypersdk-benches`. This library target is empty on purpose:
//! Cargo needs one target that is not a bench for the package to build.
