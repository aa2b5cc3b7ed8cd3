//! Example programs composing hypersdk; see `examples/examples/`.
//! Run one with `cargo run -p hypersdk-examples --example NAME`.
