//! `ova inspect`: what the SDK understood of a package, descriptor,
//! manifest or VMDK disk, for people or (`--json`) for scripts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hypersdk_core::Error;
use hypersdk_core::fsutil::parent_dir;
use hypersdk_core::model::{DiskFormat, VmInfo};
use hypersdk_ova::archive::{EntryKind, EntrySummary, OvaIndex, OvaReader};
use hypersdk_ova::mf::{MAX_MANIFEST_BYTES, Manifest};
use hypersdk_ova::ovf::{Envelope, OvfVersion, ParseOptions};
use hypersdk_ova::vmdk::decode::{DecodeOptions, StreamDecoder};
use hypersdk_ova::vmdk::format::{
    Descriptor, GD_AT_END, MAX_CAPACITY_SECTORS, MAX_DESCRIPTOR_BYTES, SparseHeader,
};
use hypersdk_ova::vmdk::sparse::HostedDisk;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::input::{self, Kind, Source};
use super::output::human;
use super::{Failure, Io, OrFail, Status};

/// Runs `ova inspect`.
pub(crate) async fn inspect(input: &Path, json: bool, io: &mut Io<'_>) -> Result<Status, Failure> {
    let source = Source::new(input);
    let label = source.label();
    let opened = input::open(&source, io).await?;
    match opened.kind {
        Kind::Ova | Kind::Ovf => {
            let facts = match (opened.kind, &source) {
                (Kind::Ova, Source::File(path)) => {
                    drop(opened.reader);
                    ova_file_facts(path, &label).await?
                }
                (Kind::Ova, Source::Stdin) => ova_stream_facts(opened.reader, &label).await?,
                (_, _) => ovf_facts(&source, opened.reader, &label).await?,
            };
            let (report, problems) = package_report(&facts);
            if json {
                io.out(&to_json(&report, &label)?).await?;
            } else {
                io.out(&package_text(&report)).await?;
            }
            for p in &problems {
                io.note(&format!("{label}: {p}"));
            }
            Ok(if problems.is_empty() {
                Status::Ok
            } else {
                Status::Malformed
            })
        }
        Kind::Manifest => {
            let bytes = read_limited(opened.reader, MAX_MANIFEST_BYTES, &label).await?;
            let mf = Manifest::parse_named(&label, &bytes).or_fail(&label)?;
            let report = ManifestReport {
                kind: "manifest",
                source: label.clone(),
                entries: manifest_entries(&mf),
            };
            if json {
                io.out(&to_json(&report, &label)?).await?;
            } else {
                let mut text = format!("{label}: manifest, {} entries\n", mf.entries().len());
                for e in &report.entries {
                    let _ = writeln!(text, "  {:<7} {}  {}", e.algorithm, e.file, e.digest);
                }
                io.out(&text).await?;
            }
            Ok(Status::Ok)
        }
        Kind::Vmdk => {
            let report = vmdk_facts(&source, opened.reader, &label).await?;
            if json {
                io.out(&to_json(&report, &label)?).await?;
            } else {
                io.out(&vmdk_text(&report)).await?;
            }
            Ok(Status::Ok)
        }
        other => Err(Failure::new(
            &label,
            Error::invalid_data(
                format!("'{label}'"),
                match other {
                    Kind::Gzip => "gzip-compressed: gunzip it first".to_string(),
                    k => k.describe().to_string(),
                },
            ),
        )),
    }
}

/// `value` as pretty JSON with a final newline.
fn to_json<T: Serialize>(value: &T, label: &str) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::other(format!("cannot write JSON: {e}")))
        .or_fail(label)?;
    text.push('\n');
    Ok(text)
}

/// Reads all of `reader`, refusing more than `limit` bytes.
pub(crate) async fn read_limited<R: AsyncRead + Unpin>(
    reader: R,
    limit: usize,
    label: &str,
) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Error::io(format!("'{label}'"), e))
        .or_fail(label)?;
    if bytes.len() > limit {
        return Err(Failure::new(
            label,
            Error::invalid_data(
                format!("'{label}'"),
                format!("larger than the {limit}-byte limit for this kind of file"),
            ),
        ));
    }
    Ok(bytes)
}

/// What a package or descriptor holds, before it is rendered.
struct Facts {
    kind: &'static str,
    source: String,
    descriptor: String,
    envelope: Envelope,
    /// The archive's entries (none for a descriptor).
    entries: Vec<EntrySummary>,
    manifest: Option<(String, Manifest)>,
    /// The real size of each referenced file, by href, where known.
    actual_sizes: HashMap<String, u64>,
}

/// The facts of an OVA file, from its index (headers only).
async fn ova_file_facts(path: &Path, label: &str) -> Result<Facts, Failure> {
    let index = OvaIndex::open(path).await.or_fail(label)?;
    let entries = index.entries().to_vec();
    let descriptor = entries
        .iter()
        .find(|e| e.kind == EntryKind::Descriptor)
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let manifest_name = entries
        .iter()
        .find(|e| e.kind == EntryKind::Manifest)
        .map(|e| e.name.clone());
    Ok(Facts {
        kind: "ova",
        source: label.to_string(),
        descriptor,
        envelope: index.envelope().clone(),
        actual_sizes: entries.iter().map(|e| (e.name.clone(), e.size)).collect(),
        manifest: manifest_name.zip(index.manifest().cloned()),
        entries,
    })
}

/// The facts of an OVA read as a stream to its end (digests checked).
async fn ova_stream_facts<R: AsyncRead + Unpin>(reader: R, label: &str) -> Result<Facts, Failure> {
    let mut ova = OvaReader::new(reader);
    while ova.next_entry().await.or_fail(label)?.is_some() {}
    let manifest = ova.manifest().cloned();
    let summary = ova.finish().await.or_fail(label)?;
    let envelope = summary.envelope.clone().ok_or_else(|| {
        Failure::new(
            label,
            Error::invalid_data("archive", "no descriptor was read"),
        )
    })?;
    Ok(Facts {
        kind: "ova",
        source: label.to_string(),
        descriptor: summary.descriptor.clone(),
        envelope,
        actual_sizes: summary
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.size))
            .collect(),
        manifest: summary.manifest.clone().zip(manifest),
        entries: summary.entries,
    })
}

/// The facts of a descriptor, with the sizes of the files next to it and
/// the manifest next to it when read from a file.
async fn ovf_facts<R: AsyncRead + Unpin>(
    source: &Source,
    reader: R,
    label: &str,
) -> Result<Facts, Failure> {
    let limit = ParseOptions::default().max_bytes;
    let bytes = read_limited(reader, limit, label).await?;
    let envelope = Envelope::parse(&bytes)
        .map_err(|e| descriptor_error(e, label))
        .or_fail(label)?;
    let mut actual_sizes = HashMap::new();
    let mut manifest = None;
    let descriptor = match source {
        Source::File(path) => {
            let dir = parent_dir(path);
            for f in envelope.references() {
                if let Some(p) = local_file(&dir, &f.href)
                    && let Ok(m) = tokio::fs::metadata(&p).await
                    && m.is_file()
                {
                    actual_sizes.insert(f.href.clone(), m.len());
                }
            }
            manifest = sidecar_manifest(path).await?;
            file_name(path)
        }
        Source::Stdin => "-".to_string(),
    };
    Ok(Facts {
        kind: "ovf",
        source: label.to_string(),
        descriptor,
        envelope,
        entries: Vec::new(),
        manifest,
        actual_sizes,
    })
}

/// Names the descriptor `label` in a parse error of its XML (the parser
/// does not know the file's name).
pub(crate) fn descriptor_error(e: Error, label: &str) -> Error {
    match e {
        Error::InvalidData {
            message, source, ..
        } => Error::InvalidData {
            object: format!("descriptor '{label}'"),
            message,
            source,
        },
        other => other,
    }
}

/// The manifest next to the descriptor at `path` (same name, `.mf`) and
/// its file name; `None` when there is none. A manifest that cannot be
/// read, is too large or does not parse is an error naming it.
pub(crate) async fn sidecar_manifest(path: &Path) -> Result<Option<(String, Manifest)>, Failure> {
    let mf = path.with_extension("mf");
    let mf_label = mf.display().to_string();
    let file = match tokio::fs::File::open(&mf).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::new(&mf_label, input::io_error(&mf, e))),
    };
    let bytes = read_limited(file, MAX_MANIFEST_BYTES, &mf_label).await?;
    let name = file_name(&mf);
    let parsed =
        Manifest::parse_named(&format!("manifest '{mf_label}'"), &bytes).or_fail(&mf_label)?;
    Ok(Some((name, parsed)))
}

/// The file name of `path`, for messages.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Where a file a descriptor or manifest names is, next to it: `None` for
/// a URL, an absolute name or one that climbs out with `..`.
pub(crate) fn local_file(dir: &Path, href: &str) -> Option<PathBuf> {
    if href.is_empty() || href.contains("://") || href.contains('\\') {
        return None;
    }
    let rel = Path::new(href);
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then(|| dir.join(rel))
}

/// The report of a package or descriptor: the `"ova"`/`"ovf"` JSON shape
/// the module documentation of `main.rs` gives (field order is key order).
#[derive(Serialize)]
struct PackageReport {
    kind: &'static str,
    source: String,
    descriptor: String,
    ovf_version: &'static str,
    default_configuration: Option<String>,
    configurations: Vec<String>,
    virtual_systems: Vec<VmInfo>,
    disks: Vec<DiskJson>,
    networks: Vec<NetworkJson>,
    files: Vec<FileJson>,
    entries: Vec<EntryJson>,
    manifest: Option<ManifestJson>,
    problems: Vec<String>,
}

/// A `DiskSection` disk in the JSON report.
#[derive(Serialize)]
struct DiskJson {
    disk_id: String,
    capacity_bytes: Option<u64>,
    capacity: Option<String>,
    format: DiskFormat,
    format_uri: Option<String>,
    file_id: Option<String>,
    file: Option<String>,
    file_size: Option<u64>,
}

/// A `NetworkSection` network in the JSON report.
#[derive(Serialize)]
struct NetworkJson {
    name: String,
    description: Option<String>,
}

/// A `References` file in the JSON report.
#[derive(Serialize)]
struct FileJson {
    id: String,
    href: String,
    size: Option<u64>,
    compression: Option<String>,
    actual_size: Option<u64>,
}

/// An archive member in the JSON report.
#[derive(Serialize)]
struct EntryJson {
    name: String,
    kind: &'static str,
    size: u64,
    offset: u64,
}

/// A manifest and its entries in the JSON report.
#[derive(Serialize)]
struct ManifestJson {
    name: String,
    entries: Vec<ManifestEntryJson>,
}

/// One digest of a manifest in the JSON report.
#[derive(Serialize)]
struct ManifestEntryJson {
    file: String,
    algorithm: &'static str,
    digest: String,
}

/// The report of a manifest file (the `"manifest"` JSON shape).
#[derive(Serialize)]
struct ManifestReport {
    kind: &'static str,
    source: String,
    entries: Vec<ManifestEntryJson>,
}

/// The digests of a manifest, in its order.
fn manifest_entries(mf: &Manifest) -> Vec<ManifestEntryJson> {
    mf.entries()
        .iter()
        .map(|e| ManifestEntryJson {
            file: e.name.clone(),
            algorithm: e.checksum.algorithm().name(),
            digest: e.checksum.to_hex(),
        })
        .collect()
}

/// The name of an entry kind in reports.
pub(crate) fn entry_kind(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Descriptor => "descriptor",
        EntryKind::Manifest => "manifest",
        EntryKind::Certificate => "certificate",
        _ => "file",
    }
}

/// The OVF version as the JSON report names it.
fn ovf_version(v: OvfVersion) -> &'static str {
    match v {
        OvfVersion::V0_9 => "0.9",
        OvfVersion::V1 => "1.x",
        OvfVersion::V2 => "2.x",
        _ => "unknown",
    }
}

/// The report of a package, and the problems met building it.
fn package_report(f: &Facts) -> (PackageReport, Vec<String>) {
    let env = &f.envelope;
    let mut problems = Vec::new();
    let mut systems = Vec::new();
    for vs in env.virtual_systems() {
        match vs.to_vm_info(env) {
            Ok(vm) => systems.push(vm),
            Err(e) => problems.push(format!(
                "virtual system '{}': {}",
                vs.id,
                super::one_line(&e.to_string())
            )),
        }
    }
    let size_of = |href: &str| f.actual_sizes.get(href).copied();
    let disks = env
        .disks()
        .map(|d| {
            let file = d.file_ref.as_deref().and_then(|id| env.file(id));
            DiskJson {
                disk_id: d.disk_id.clone(),
                capacity_bytes: d.capacity_bytes(),
                capacity: d.capacity.clone(),
                format: d
                    .format
                    .as_deref()
                    .map_or(DiskFormat::Unknown, hypersdk_ova::ovf::disk_format_from_uri),
                format_uri: d.format.clone(),
                file_id: d.file_ref.clone().filter(|s| !s.is_empty()),
                file: file.map(|f| f.href.clone()),
                file_size: file.and_then(|f| size_of(&f.href).or(f.size)),
            }
        })
        .collect();
    let report = PackageReport {
        kind: f.kind,
        source: f.source.clone(),
        descriptor: f.descriptor.clone(),
        ovf_version: ovf_version(env.version),
        default_configuration: env.default_configuration().map(str::to_owned),
        configurations: env.configurations().map(|c| c.id.clone()).collect(),
        virtual_systems: systems,
        disks,
        networks: env
            .networks()
            .map(|n| NetworkJson {
                name: n.name.clone(),
                description: n.description.clone(),
            })
            .collect(),
        files: env
            .references()
            .iter()
            .map(|r| FileJson {
                id: r.id.clone(),
                href: r.href.clone(),
                size: r.size,
                compression: r.compression.clone(),
                actual_size: size_of(&r.href),
            })
            .collect(),
        entries: f
            .entries
            .iter()
            .map(|e| EntryJson {
                name: e.name.clone(),
                kind: entry_kind(e.kind),
                size: e.size,
                offset: e.data_offset,
            })
            .collect(),
        manifest: f.manifest.as_ref().map(|(name, mf)| ManifestJson {
            name: name.clone(),
            entries: manifest_entries(mf),
        }),
        problems: problems.clone(),
    };
    (report, problems)
}

/// A value for people, `unknown` when absent.
fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_string(), T::to_string)
}

/// The report for people.
fn package_text(r: &PackageReport) -> String {
    let mut s = String::new();
    let what = if r.kind == "ova" {
        "OVA package"
    } else {
        "OVF descriptor"
    };
    let _ = writeln!(
        s,
        "{}: {what}, OVF {}, descriptor '{}'",
        r.source, r.ovf_version, r.descriptor
    );
    if !r.configurations.is_empty() {
        let _ = writeln!(
            s,
            "configurations: {} (default {})",
            r.configurations.join(", "),
            opt(&r.default_configuration)
        );
    }
    let file_size = |href: &str| {
        r.files
            .iter()
            .find(|f| f.href == href)
            .and_then(|f| f.actual_size.or(f.size))
    };
    for vm in &r.virtual_systems {
        let _ = writeln!(s, "virtual system '{}' (ovf:id {})", vm.name, vm.id);
        let _ = writeln!(s, "  CPUs         {}", vm.cpus);
        let _ = writeln!(
            s,
            "  memory       {}",
            human(vm.memory_mib.saturating_mul(1 << 20))
        );
        let _ = writeln!(s, "  firmware     {}", vm.firmware);
        let secure = match vm.secure_boot {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        let _ = writeln!(s, "  secure boot  {secure}");
        let os = &vm.guest_os;
        let mut os_line = format!("{} ({})", opt(&os.id), os.family);
        if let Some(d) = &os.description {
            let _ = write!(os_line, ", {d}");
        }
        let _ = writeln!(s, "  OS           {os_line}");
        for d in &vm.disks {
            let mut line = format!("  disk {}: {}, {}", d.id, human(d.capacity_bytes), d.format);
            match &d.backing {
                Some(file) => {
                    let _ = write!(line, ", file '{file}'");
                    if let Some(n) = file_size(file) {
                        let _ = write!(line, " ({})", human(n));
                    }
                }
                None => line.push_str(", no file (blank disk)"),
            }
            if let Some(c) = &d.controller {
                let _ = write!(line, ", {:?} {}:{}", c.kind, c.bus, c.unit);
            }
            let _ = writeln!(s, "{line}");
        }
        for (i, n) in vm.nics.iter().enumerate() {
            let _ = writeln!(
                s,
                "  NIC {}: {} on '{}', MAC {}",
                i + 1,
                opt(&n.adapter),
                opt(&n.network),
                opt(&n.mac)
            );
        }
    }
    if !r.networks.is_empty() {
        let names: Vec<&str> = r.networks.iter().map(|n| n.name.as_str()).collect();
        let _ = writeln!(s, "networks: {}", names.join(", "));
    }
    if !r.files.is_empty() {
        let _ = writeln!(s, "files:");
        for f in &r.files {
            let size = match (f.actual_size, f.size) {
                (Some(a), Some(d)) if a != d => format!("{a} bytes, ovf:size says {d}"),
                (Some(a), _) => format!("{a} bytes"),
                (None, Some(d)) if r.kind == "ovf" => format!("ovf:size {d}, not present"),
                (None, Some(d)) => format!("ovf:size {d}"),
                (None, None) if r.kind == "ovf" => "not present".to_string(),
                (None, None) => "size unknown".to_string(),
            };
            let gz = f
                .compression
                .as_deref()
                .map(|c| format!(", {c}-compressed"))
                .unwrap_or_default();
            let _ = writeln!(s, "  {} ({}): {size}{gz}", f.href, f.id);
        }
    }
    if !r.entries.is_empty() {
        let _ = writeln!(s, "entries:");
        for e in &r.entries {
            let _ = writeln!(
                s,
                "  {:<40} {:<11} {:>12} bytes at offset {}",
                e.name, e.kind, e.size, e.offset
            );
        }
    }
    match &r.manifest {
        Some(m) => {
            let _ = writeln!(s, "manifest '{}':", m.name);
            for e in &m.entries {
                let _ = writeln!(s, "  {:<7} {}  {}", e.algorithm, e.file, e.digest);
            }
        }
        None => {
            let _ = writeln!(s, "manifest: none");
        }
    }
    s
}

/// The report of a VMDK (the `"vmdk"` JSON shape).
#[derive(Serialize)]
struct VmdkReport {
    kind: &'static str,
    source: String,
    create_type: Option<String>,
    format: DiskFormat,
    capacity_bytes: Option<u64>,
    header: Option<HeaderJson>,
    extents: Vec<ExtentJson>,
    ddb: BTreeMap<String, String>,
}

/// A sparse extent header in the JSON report (sizes in sectors).
#[derive(Serialize)]
struct HeaderJson {
    version: u32,
    flags: u32,
    capacity_sectors: u64,
    grain_sectors: u64,
    compressed: bool,
    markers: bool,
    gd_offset: Option<u64>,
    overhead_sectors: u64,
    descriptor_offset: u64,
    descriptor_sectors: u64,
}

/// A descriptor extent line in the JSON report (`present`: whether the
/// extent file is next to a text descriptor; `null` when not looked for).
#[derive(Serialize)]
struct ExtentJson {
    access: String,
    sectors: u64,
    kind: String,
    file: Option<String>,
    offset: Option<u64>,
    present: Option<bool>,
}

/// The JSON form of a sparse header.
fn header_json(h: &SparseHeader) -> HeaderJson {
    HeaderJson {
        version: h.version,
        flags: h.flags,
        capacity_sectors: h.capacity,
        grain_sectors: h.grain_size,
        compressed: h.is_compressed(),
        markers: h.has_markers(),
        gd_offset: (h.gd_offset != GD_AT_END).then_some(h.gd_offset),
        overhead_sectors: h.overhead,
        descriptor_offset: h.descriptor_offset,
        descriptor_sectors: h.descriptor_size,
    }
}

/// The disk format a `createType` (or a sparse header) names.
pub(crate) fn vmdk_format(create_type: Option<&str>, header: Option<&SparseHeader>) -> DiskFormat {
    match create_type.map(str::to_ascii_lowercase).as_deref() {
        Some("streamoptimized") => DiskFormat::VmdkStreamOptimized,
        Some("monolithicsparse") | Some("twogbmaxextentsparse") | Some("2gbmaxextentsparse") => {
            DiskFormat::VmdkMonolithicSparse
        }
        Some("monolithicflat")
        | Some("twogbmaxextentflat")
        | Some("2gbmaxextentflat")
        | Some("vmfs") => DiskFormat::VmdkFlat,
        Some(_) => DiskFormat::Unknown,
        None => match header {
            Some(h) if h.has_markers() && h.is_compressed() => DiskFormat::VmdkStreamOptimized,
            Some(_) => DiskFormat::VmdkMonolithicSparse,
            None => DiskFormat::Unknown,
        },
    }
}

/// What a VMDK holds: its header (for a sparse extent), its descriptor
/// (embedded, or the text itself) and its capacity. A streamOptimized
/// disk is read up to its descriptor only; a hosted sparse disk is opened
/// through the file (its grain directory read) when it is one.
async fn vmdk_facts<R: AsyncRead + Unpin + Send>(
    source: &Source,
    mut reader: R,
    label: &str,
) -> Result<VmdkReport, Failure> {
    let head = input::read_head(&mut reader, 512)
        .await
        .map_err(|e| Error::io(format!("'{label}'"), e))
        .or_fail(label)?;
    let mut report = VmdkReport {
        kind: "vmdk",
        source: label.to_string(),
        create_type: None,
        format: DiskFormat::Unknown,
        capacity_bytes: None,
        header: None,
        extents: Vec::new(),
        ddb: BTreeMap::new(),
    };
    let object = format!("'{label}'");
    let descriptor = if head.starts_with(b"KDMV") {
        let header = SparseHeader::parse(&object, &head).or_fail(label)?;
        report.header = Some(header_json(&header));
        report.capacity_bytes = Some(header.capacity_bytes());
        let descriptor = if header.has_markers() && header.is_compressed() {
            let reader = std::io::Cursor::new(head).chain(reader);
            let decoder =
                StreamDecoder::with_options(reader, DecodeOptions::default().with_name(&object))
                    .await
                    .or_fail(label)?;
            report.capacity_bytes = Some(decoder.capacity());
            decoder.descriptor().cloned()
        } else if let Source::File(path) = source {
            drop(reader);
            let disk = HostedDisk::open_path(path).await.or_fail(label)?;
            report.capacity_bytes = Some(disk.capacity());
            disk.descriptor().cloned()
        } else {
            None
        };
        report.format = vmdk_format(
            descriptor.as_ref().and_then(|d| d.create_type()),
            Some(&header),
        );
        descriptor
    } else {
        if !is_text(&head) {
            return Err(not_vmdk(&object, label));
        }
        // A larger "descriptor" is not one: a flat extent, say.
        let mut rest = Vec::new();
        let limit = (MAX_DESCRIPTOR_BYTES - head.len()) as u64 + 1;
        reader
            .take(limit)
            .read_to_end(&mut rest)
            .await
            .map_err(|e| Error::io(&object, e))
            .or_fail(label)?;
        let mut text = head;
        text.extend_from_slice(&rest);
        if text.len() > MAX_DESCRIPTOR_BYTES || !is_text(&text) {
            return Err(not_vmdk(&object, label));
        }
        let d = Descriptor::parse(&object, &text).or_fail(label)?;
        if d.create_type().is_none() && d.extents.is_empty() {
            return Err(Failure::new(
                label,
                Error::invalid_data(
                    &object,
                    "not a VMDK descriptor: no createType and no extent",
                ),
            ));
        }
        // Checked: the extents' sectors come from the file.
        let sectors = d
            .extents
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.sectors))
            .filter(|&s| s <= MAX_CAPACITY_SECTORS)
            .ok_or_else(|| {
                Failure::new(
                    label,
                    Error::invalid_data(
                        &object,
                        format!(
                            "its extents add up to more than the \
                             {MAX_CAPACITY_SECTORS}-sector limit of a disk"
                        ),
                    ),
                )
            })?;
        report.capacity_bytes = Some(sectors * 512);
        report.format = vmdk_format(d.create_type(), None);
        Some(d)
    };
    if let Some(d) = descriptor {
        report.create_type = d.create_type().map(str::to_owned);
        // The extents of a text descriptor are files next to it; an
        // embedded descriptor's extent is the file itself.
        let dir = match source {
            Source::File(p) if report.header.is_none() => Some(parent_dir(p)),
            _ => None,
        };
        for e in &d.extents {
            let present = match (&dir, &e.file) {
                (Some(dir), Some(f)) => match local_file(dir, f) {
                    Some(p) => Some(tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_file())),
                    None => Some(false),
                },
                _ => None,
            };
            report.extents.push(ExtentJson {
                access: e.access.clone(),
                sectors: e.sectors,
                kind: e.kind.clone(),
                file: e.file.clone(),
                offset: e.offset,
                present,
            });
        }
        report.ddb = d.ddb.iter().cloned().collect();
    }
    Ok(report)
}

/// The error for a file that is no kind of VMDK.
fn not_vmdk(object: &str, label: &str) -> Failure {
    Failure::new(
        label,
        Error::invalid_data(
            object,
            "not a VMDK: neither a sparse extent (KDMV) nor a text descriptor \
             (a flat extent holds raw data: inspect its descriptor instead)",
        ),
    )
}

/// Whether `bytes` are text, maybe followed by NUL padding and nothing
/// else (a descriptor may carry Latin-1 bytes, never control characters).
fn is_text(bytes: &[u8]) -> bool {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    end > 0
        && bytes[..end]
            .iter()
            .all(|b| !b.is_ascii_control() || b.is_ascii_whitespace())
        && bytes[end..].iter().all(|&b| b == 0)
}

/// The VMDK report for people.
fn vmdk_text(r: &VmdkReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: VMDK {}, capacity {}",
        r.source,
        r.create_type.as_deref().unwrap_or("(no descriptor)"),
        r.capacity_bytes.map_or_else(
            || "unknown".to_string(),
            |c| format!("{} ({c} bytes)", human(c))
        )
    );
    let _ = writeln!(s, "  format       {}", r.format);
    if let Some(h) = &r.header {
        let gd = h
            .gd_offset
            .map_or_else(|| "at the end".to_string(), |o| format!("at sector {o}"));
        let _ = writeln!(
            s,
            "  header       version {}, flags {:#x}, grain {}, {}{}, grain directory {gd}",
            h.version,
            h.flags,
            human(h.grain_sectors * 512),
            if h.compressed {
                "compressed"
            } else {
                "uncompressed"
            },
            if h.markers { ", markers" } else { "" },
        );
    }
    for e in &r.extents {
        let mut line = format!("  extent       {} {} {}", e.access, e.sectors, e.kind);
        if let Some(f) = &e.file {
            let _ = write!(line, " \"{f}\"");
        }
        if let Some(o) = e.offset {
            let _ = write!(line, " {o}");
        }
        if e.present == Some(false) {
            line.push_str(" (missing)");
        }
        let _ = writeln!(s, "{line}");
    }
    for key in [
        "ddb.adapterType",
        "ddb.virtualHWVersion",
        "ddb.toolsVersion",
    ] {
        if let Some(v) = r.ddb.get(key) {
            let _ = writeln!(s, "  {:<12} {v}", key.trim_start_matches("ddb."));
        }
    }
    s
}
