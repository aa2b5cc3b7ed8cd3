//! OVA archives: a tar of an OVF descriptor, an optional `.mf` manifest and
//! certificate, and the files the descriptor references.
//!
//! - [`OvaReader`] reads an archive from any [`tokio::io::AsyncRead`] (a
//!   file, an HTTP body) in one pass, without temp files, checking every
//!   digest while the bytes go by.
//! - [`OvaIndex`] lists the entries of a seekable file with their data
//!   offsets by reading the headers only, and reads one entry (or a byte
//!   range of it) at random: for retries and parallel uploads.
//! - [`OvaWriter`] writes an archive in DSP0243 order: the descriptor, the
//!   manifest right after it when the digests are known up front (or at the
//!   end, computed on the fly), then the files in `References` order.
//!
//! Every archive is checked as untrusted input: header checksums, entry
//! types (only regular files: no links, devices or directories), names (no
//! absolute paths, no `..`, no duplicates), sizes against the data present,
//! and the descriptor first. Each problem is an [`Error`] naming what was
//! wrong and where. The tar headers themselves are parsed and built with the
//! `tar` crate; ustar, GNU and PAX (long names, large sizes) are read.
//!
//! [`Error`]: hypersdk_core::Error

mod catalog;
mod header;
mod index;
mod reader;
mod writer;

use hypersdk_core::digest::{Algorithm, Digests};

pub use index::{EntrySource, OvaIndex};
pub use reader::{EntryReader, OvaReader};
pub use writer::{ManifestMode, OvaWriter, WriteOptions};

pub(crate) use header::validate_name as validate_entry_name;

use crate::ovf::{Envelope, ParseOptions};

/// What an entry of an OVA is, by its name and place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// The OVF descriptor (`*.ovf`, the first entry).
    Descriptor,
    /// The `.mf` manifest: an entry ending in `.mf` that the descriptor
    /// does not reference.
    Manifest,
    /// The `.cert` certificate: an entry ending in `.cert` that the
    /// descriptor does not reference.
    Certificate,
    /// Any other file: disks, ISO images, NVRAM, …
    File,
}

impl EntryKind {
    /// Whether `name` is a descriptor's name (`*.ovf`, any case).
    pub fn is_descriptor_name(name: &str) -> bool {
        name.to_ascii_lowercase().ends_with(".ovf")
    }
}

/// One entry of an archive as read: where it is and what it hashed to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntrySummary {
    /// The entry name (validated; a leading `./` dropped).
    pub name: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// The data size in bytes.
    pub size: u64,
    /// The archive offset of the entry's first header block (a PAX or GNU
    /// extension header when there is one).
    pub header_offset: u64,
    /// The archive offset of the entry's data.
    pub data_offset: u64,
    /// The digests computed while reading, when any were.
    pub digests: Option<Digests>,
    /// Whether every digest the manifest lists for this entry was checked
    /// and matched.
    pub verified: bool,
}

impl EntrySummary {
    /// An entry just found, not yet hashed.
    pub(crate) fn new(
        name: String,
        kind: EntryKind,
        size: u64,
        header_offset: u64,
        data_offset: u64,
    ) -> Self {
        EntrySummary {
            name,
            kind,
            size,
            header_offset,
            data_offset,
            digests: None,
            verified: false,
        }
    }
}

/// What [`OvaReader::finish`] found: the whole archive, checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OvaSummary {
    /// The descriptor's entry name.
    pub descriptor: String,
    /// The manifest's entry name, if the archive has one.
    pub manifest: Option<String>,
    /// Whether the archive has a manifest that lists the descriptor and
    /// every data entry, all present and matching.
    pub manifest_verified: bool,
    /// The certificate's entry name, if the archive has one (its signature
    /// is not checked).
    pub certificate: Option<String>,
    /// Every entry, in archive order.
    pub entries: Vec<EntrySummary>,
    /// The parsed descriptor.
    pub envelope: Option<Envelope>,
}

/// Options of [`OvaReader`] and [`OvaIndex`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Limits for the descriptor's XML (its size limit is also the largest
    /// descriptor entry read).
    pub xml: ParseOptions,
    /// The digests computed for entries read before the manifest, which can
    /// be checked only once it arrives. Default: SHA-256 and SHA-1, what
    /// ovftool and VirtualBox write; on two or more cores both cost about
    /// the time of SHA-256 alone. A late manifest listing an algorithm not
    /// in this list is an error, never a silent pass.
    pub late_algorithms: Vec<Algorithm>,
    /// Accept a descriptor or data entries the manifest does not list.
    /// Default: `false`; a file not covered by the manifest is an integrity
    /// error.
    pub allow_unlisted: bool,
    /// The most entries an archive may have. Default: 10 000 (a VM package
    /// has a handful); the limit bounds the memory and time a hostile
    /// archive of empty entries can cost.
    pub max_entries: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            xml: ParseOptions::default(),
            late_algorithms: vec![Algorithm::Sha256, Algorithm::Sha1],
            allow_unlisted: false,
            max_entries: 10_000,
        }
    }
}

impl ReadOptions {
    /// Sets the digests computed before a late manifest arrives.
    pub fn with_late_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.late_algorithms = algorithms.to_vec();
        self
    }

    /// Accepts (`true`) or rejects data entries the manifest does not list.
    pub fn with_allow_unlisted(mut self, allow: bool) -> Self {
        self.allow_unlisted = allow;
        self
    }

    /// Sets the most entries an archive may have.
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Sets the descriptor's XML limits.
    pub fn with_xml(mut self, xml: ParseOptions) -> Self {
        self.xml = xml;
        self
    }
}
