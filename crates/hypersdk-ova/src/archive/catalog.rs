//! The bookkeeping shared by the streaming reader and the index: which
//! entries were seen, what each is, what the descriptor references and the
//! manifest lists, and the rules that tie them together.

use std::collections::HashSet;

use bytes::Bytes;
use hypersdk_core::digest::{Algorithm, MultiHasher};
use hypersdk_core::{Error, Result};

use super::header::validate_name;
use super::{EntryKind, EntrySummary, ReadOptions};
use crate::mf::Manifest;
use crate::ovf::Envelope;

/// A file the descriptor references, its href normalized like entry names.
#[derive(Debug, Clone)]
struct Reference {
    name: String,
    id: String,
    chunked: bool,
}

/// The entries of one archive and its descriptor, manifest and certificate.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pub(crate) entries: Vec<EntrySummary>,
    names: HashSet<String>,
    references: Vec<Reference>,
    referenced: HashSet<String>,
    pub(crate) descriptor: Option<(String, Bytes)>,
    pub(crate) envelope: Option<Envelope>,
    pub(crate) manifest: Option<(String, Manifest)>,
    pub(crate) certificate: Option<(String, Bytes)>,
    options: ReadOptions,
}

impl Catalog {
    pub(crate) fn new(options: &ReadOptions) -> Self {
        Catalog {
            entries: Vec::new(),
            names: HashSet::new(),
            references: Vec::new(),
            referenced: HashSet::new(),
            descriptor: None,
            envelope: None,
            manifest: None,
            certificate: None,
            options: options.clone(),
        }
    }

    /// Admits the header of entry `name` of `size` bytes: checks that the
    /// descriptor comes first, that the name is new and the entry count
    /// within [`ReadOptions::max_entries`], classifies the entry and checks
    /// its size against the limit of its kind.
    pub(crate) fn admit(&mut self, name: &str, size: u64, header_offset: u64) -> Result<EntryKind> {
        let first = self.entries.is_empty();
        if first && !EntryKind::is_descriptor_name(name) {
            return Err(Error::invalid_data(
                "archive",
                format!(
                    "not an OVA: the first entry is '{name}', but an OVA must begin with \
                     its .ovf descriptor (DSP0243)"
                ),
            ));
        }
        if self.names.contains(name) {
            return Err(Error::invalid_data(
                format!("entry '{name}'"),
                format!(
                    "duplicate entry at offset {header_offset}: the archive has two files \
                     of this name"
                ),
            ));
        }
        if self.entries.len() >= self.options.max_entries {
            return Err(Error::invalid_data(
                "archive",
                format!(
                    "more than {} entries (ReadOptions::max_entries); a VM package has a few",
                    self.options.max_entries
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        let kind = if first {
            EntryKind::Descriptor
        } else if self.is_referenced(name) {
            EntryKind::File
        } else if lower.ends_with(".mf") {
            EntryKind::Manifest
        } else if lower.ends_with(".cert") {
            EntryKind::Certificate
        } else {
            EntryKind::File
        };
        let limit = match kind {
            EntryKind::Descriptor => self.options.xml.max_bytes as u64,
            EntryKind::Manifest => crate::mf::MAX_MANIFEST_BYTES as u64,
            EntryKind::Certificate => MAX_CERTIFICATE_BYTES,
            EntryKind::File => u64::MAX,
        };
        if size > limit {
            return Err(Error::invalid_data(
                format!("entry '{name}'"),
                format!("{size} bytes, larger than the {limit}-byte limit for this kind of entry"),
            ));
        }
        match (kind, &self.manifest, &self.certificate) {
            (EntryKind::Manifest, Some((first, _)), _) => Err(Error::invalid_data(
                format!("entry '{name}'"),
                format!("a second manifest; '{first}' came first"),
            )),
            (EntryKind::Certificate, _, Some((first, _))) => Err(Error::invalid_data(
                format!("entry '{name}'"),
                format!("a second certificate; '{first}' came first"),
            )),
            _ => Ok(kind),
        }
    }

    /// Records an admitted entry.
    pub(crate) fn push(&mut self, summary: EntrySummary) {
        self.names.insert(summary.name.clone());
        self.entries.push(summary);
    }

    /// Parses and records the descriptor (already admitted and pushed).
    pub(crate) fn set_descriptor(&mut self, name: &str, bytes: Bytes) -> Result<()> {
        let envelope = Envelope::parse_with(&bytes, &self.options.xml)
            .map_err(|e| super::reader::prefix_error(e, name))?;
        for file in envelope.references() {
            // A URL names a file outside the package.
            if file.href.contains("://") {
                continue;
            }
            let normalized = validate_name(&file.href).map_err(|e| {
                Error::invalid_data(
                    format!("descriptor '{name}'"),
                    format!(
                        "it references '{}', which cannot be an entry of an OVA: {e}",
                        file.href
                    ),
                )
            })?;
            self.referenced.insert(normalized.clone());
            self.references.push(Reference {
                name: normalized,
                id: file.id.clone(),
                chunked: file.chunk_size.is_some(),
            });
        }
        self.envelope = Some(envelope);
        self.descriptor = Some((name.to_string(), bytes));
        Ok(())
    }

    /// Parses and records the manifest (already admitted and pushed).
    pub(crate) fn set_manifest(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let manifest = Manifest::parse_named(name, bytes)?;
        self.manifest = Some((name.to_string(), manifest));
        Ok(())
    }

    /// Records the certificate (already admitted and pushed).
    pub(crate) fn set_certificate(&mut self, name: &str, bytes: Bytes) {
        self.certificate = Some((name.to_string(), bytes));
    }

    /// Whether the descriptor references `name` (or a chunk of it).
    fn is_referenced(&self, name: &str) -> bool {
        self.referenced.contains(name)
            || self
                .references
                .iter()
                .any(|r| r.chunked && is_chunk_of(name, &r.name))
    }

    /// The algorithms the manifest lists for `name`; an error when the
    /// manifest is known, does not list `name` and unlisted entries are not
    /// allowed.
    pub(crate) fn listed_algorithms(&self, name: &str) -> Result<Option<Vec<Algorithm>>> {
        let Some((mf_name, mf)) = &self.manifest else {
            return Ok(None);
        };
        if !mf.contains(name) && !self.options.allow_unlisted {
            return Err(unlisted(name, mf_name));
        }
        Ok(Some(mf.checksums_of(name).map(|c| c.algorithm()).collect()))
    }

    /// Checks every entry seen so far against the manifest, once it is
    /// known: coverage (the descriptor and every data entry listed, unless
    /// allowed otherwise) and, with `hashed`, the digests of complete
    /// entries (the descriptor is hashed here from its bytes).
    pub(crate) fn verify_known(&mut self, hashed: bool) -> Result<()> {
        let Some((mf_name, mf)) = &self.manifest else {
            return Ok(());
        };
        for entry in &mut self.entries {
            let covered = matches!(entry.kind, EntryKind::Descriptor | EntryKind::File);
            if !covered || entry.verified {
                continue;
            }
            if !mf.contains(&entry.name) {
                if self.options.allow_unlisted {
                    continue;
                }
                return Err(unlisted(&entry.name, mf_name));
            }
            if !hashed {
                continue;
            }
            if entry.kind == EntryKind::Descriptor
                && let Some((_, bytes)) = &self.descriptor
            {
                let algorithms: Vec<Algorithm> = mf
                    .checksums_of(&entry.name)
                    .map(|c| c.algorithm())
                    .collect();
                let mut h = MultiHasher::inline(&algorithms);
                h.update(bytes.clone());
                entry.digests = Some(h.finish()?);
            }
            for expected in mf.checksums_of(&entry.name) {
                let computed = entry
                    .digests
                    .as_ref()
                    .is_some_and(|d| d.get(expected.algorithm()).is_some());
                if !computed {
                    return Err(Error::invalid_input(format!(
                        "cannot check '{}': the manifest follows the data and lists {}, \
                         which was not computed; add it to ReadOptions::late_algorithms",
                        entry.name,
                        crate::mf::algorithm_tag(expected.algorithm())
                    )));
                }
            }
            if let Some(digests) = &entry.digests {
                mf.verify(&entry.name, digests)?;
                entry.verified = true;
            }
        }
        Ok(())
    }

    /// At the end: every file the descriptor references and the manifest
    /// lists must be in the archive.
    pub(crate) fn check_complete(&self) -> Result<()> {
        let Some((descriptor, _)) = &self.descriptor else {
            return Err(Error::invalid_data(
                "archive",
                "not an OVA: the archive holds no entries",
            ));
        };
        for r in &self.references {
            let present = self.names.contains(&r.name)
                || (r.chunked && self.entries.iter().any(|e| is_chunk_of(&e.name, &r.name)));
            if !present {
                return Err(Error::invalid_data(
                    format!("file '{}'", r.name),
                    format!(
                        "the descriptor '{descriptor}' references it (ovf:id '{}'), but the \
                         archive has no such entry",
                        r.id
                    ),
                ));
            }
        }
        if let Some((mf_name, mf)) = &self.manifest {
            for listed in mf.names() {
                if !self.names.contains(listed) {
                    return Err(Error::integrity(
                        format!("file '{listed}'"),
                        format!("an entry, as the manifest '{mf_name}' lists it"),
                        "no such entry in the archive",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the archive has a manifest that covered and verified the
    /// descriptor and every data entry.
    pub(crate) fn manifest_verified(&self) -> bool {
        self.manifest.is_some()
            && self
                .entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Descriptor | EntryKind::File))
                .all(|e| e.verified)
    }
}

/// The largest certificate accepted (1 MiB).
const MAX_CERTIFICATE_BYTES: u64 = 1 << 20;

/// A data entry the manifest does not cover.
fn unlisted(name: &str, manifest: &str) -> Error {
    Error::integrity(
        format!("entry '{name}'"),
        format!("a digest in the manifest '{manifest}'"),
        "no digest: the manifest does not list this file",
    )
}

/// Whether `entry` is one chunk (`href.000000000`, …) of a chunked file.
fn is_chunk_of(entry: &str, href: &str) -> bool {
    entry
        .strip_prefix(href)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|n| n.len() == 9 && n.bytes().all(|b| b.is_ascii_digit()))
}
