//! VMDK disks: the streamOptimized format of OVAs and vSphere NFC
//! transfers, and hosted monolithicSparse.
//!
//! - [`format`](mod@format): the sparse header, stream markers and text descriptor.
//! - [`decode`]: the streamOptimized decoder over any `AsyncRead` (no
//!   seeking): checked header and descriptor, then the grains in order,
//!   inflated in parallel.
//! - [`sparse`]: hosted disks read by random access (monolithicSparse,
//!   twoGbMaxExtentSparse, flat and vmfs extents) as a
//!   [`BlockSource`](hypersdk_core::blocks::BlockSource) of the virtual
//!   disk.
//! - [`convert`]: VMDK → sparse raw file (atomic, digests of the raw image
//!   on the fly), from a stream, a file or straight out of an OVA.
//! - [`encode`]: any block source to a streamOptimized VMDK, grains
//!   compressed in parallel on all cores and written in order, to a file or
//!   a stream.

pub mod convert;
pub mod decode;
pub mod encode;
pub mod format;
pub mod sparse;
