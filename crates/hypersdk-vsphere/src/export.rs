//! Exporting a VM through an NFC lease: `ExportVm` (or `ExportSnapshot`)
//! → lease ready → the files downloaded straight into an OVA, an OVF
//! directory or raw sparse images → `OvfManager.CreateDescriptor` with the
//! real file sizes → `HttpNfcLeaseComplete`.
//!
//! [`export_vm`] does the whole job:
//!
//! 1. `ExportVm` on the VM, or `ExportSnapshot` on a snapshot (a running
//!    VM can only be exported from a snapshot); [`NfcLease::wait_ready`]
//!    maps a lease that goes to `error` to its fault and starts the lease
//!    keep-alive (`HttpNfcLeaseProgress` with the real percentage every
//!    ≤ 5 s).
//! 2. Every disk and the `.nvram` of the lease (other non-disk files, such
//!    as ISO images, are skipped and listed in the report) is downloaded
//!    from its device URL (a `*` host replaced by the client's), with the
//!    session cookie when the URL is on the client's server (an ESXi host
//!    behind vCenter gets only the URL's ticket, over TLS pinned to the
//!    lease's `sslThumbprint` for that host), several files at once
//!    ([`VmExportOptions::parallel`]) for the OVF and raw targets. Every
//!    file is hashed while it streams ([`VmExportOptions::digests`],
//!    SHA-256 by default). **No temporary copy of a disk is ever made**:
//!    bytes go from the socket into the target.
//! 3. A connection cut mid-file is resumed with `Range: bytes=N-` when the
//!    server answers `206` with the matching `Content-Range`; a server that
//!    answers `200` instead (NFC `Range` support is undocumented) makes the
//!    file start over from byte 0 (the OVF and raw targets restart that
//!    file, the OVA target the package, inside the same lease). Both run
//!    under the SDK's one retry policy ([`VmExportOptions::backoff`]).
//! 4. `OvfManager.CreateDescriptor` is called *after* the downloads with
//!    each file's `deviceId`, name and **real byte count** (the export
//!    stream's size is unknown before: govc's habit of writing the total
//!    capacity there is exactly the bug avoided).
//! 5. `HttpNfcLeaseComplete` once every file is written; any error,
//!    and dropping the future, abort the lease (`HttpNfcLeaseAbort`) and
//!    remove every partial file. Outputs are written under `.part` names
//!    and renamed into place only after the lease completed, so a failed
//!    or cancelled export leaves nothing where a good result would be.
//! 6. Optionally an Artifact Manifest v1.0 (`artifact-manifest.json`) for
//!    the converter, from the digests computed while downloading, checked
//!    against the files afterwards when asked.
//!
//! The source VM is never modified: no reconfiguration, no device removal,
//! no snapshot taken or removed by this module.
//!
//! # Targets
//!
//! - [`ExportFormat::Ovf`]: `<dir>/<name>.ovf`, `<name>-disk-0.vmdk`, …,
//!   `<name>-<nvram>`, and `<name>.mf` (the digests of the descriptor and
//!   every file, in ovftool's spelling).
//! - [`ExportFormat::Raw`]: `<dir>/<name>-disk-0.raw`, …: each
//!   streamOptimized disk decoded on the fly by the VMDK decoder into a
//!   sparse raw image of the disk's capacity (digests are of the raw
//!   image); the `.nvram` as is. No OVF descriptor: the VM's settings go
//!   into the Artifact Manifest.
//! - [`ExportFormat::Ova`]: one archive `<path>` written through
//!   [`OvaWriter`] in DSP0243 order, files one after the other (a tar is
//!   sequential: parallel downloads would need a temporary copy).
//!
//! # The OVA and its descriptor
//!
//! DSP0243 puts the descriptor first in the archive, but the descriptor
//! with the real sizes only exists after the downloads, and a temporary
//! copy of a disk is not allowed. On a **seekable output** (a file) this
//! module:
//!
//! 1. asks `CreateDescriptor` for a *preliminary* descriptor naming the
//!    same files with a placeholder size of `i64::MAX` (19 digits, as long
//!    as any real size can be), and writes it as the first entry, padded
//!    with trailing whitespace to a reserved slot (its length plus
//!    4 KiB + 1/8, rounded to 512 bytes); its `References` fix the order
//!    of the files for the writer;
//! 2. streams every file into the archive (unknown sizes: the writer
//!    patches each header afterwards), hashing as it goes, with the
//!    writer's own manifest off;
//! 3. asks `CreateDescriptor` again with the real sizes, checks that its
//!    `References` name the same files in the same order and that it fits
//!    the slot, and overwrites the slot with it (padded with whitespace,
//!    which XML allows after the root element; the tar header, whose size
//!    is the slot's, does not change);
//! 4. appends `<name>.mf` with the digests of the final descriptor and of
//!    every file, then the end-of-archive blocks (the manifest-at-the-end
//!    placement of [`ManifestMode::AtEnd`]).
//!
//! Steps 3 and 4 are done here, on the file the writer returns, because
//! [`OvaWriter`] has no way to reserve the descriptor's slot and fill it at
//! `finish` (a capability worth adding to it: `reserve_descriptor(name,
//! capacity)` + `finish_with_descriptor(xml)` on seekable outputs, with the
//! final descriptor's digest in the computed manifest).
//!
//! On a **pure stream** (a pipe, an HTTP upload) an OVA export is not
//! possible without a temporary copy: each tar header carries its entry's
//! size before the data, and an NFC export stream's size is unknown until
//! it has been read (vSphere generates the streamOptimized file on the
//! fly; `fileSize` is not set for disks). It would only become possible
//! where the server announces every file's length before the transfer.
//! Stream an OVF directory's files instead, or write the OVA to a file.
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client) -> hypersdk_core::Result<()> {
//! use hypersdk_vsphere::export::{ExportFormat, VmExportOptions, export_vm};
//! use hypersdk_vsphere::types::MoRef;
//!
//! let vm = MoRef::new("VirtualMachine", "vm-42");
//! let options = VmExportOptions::new(ExportFormat::Ova, "/exports/web01.ova").parallel(4);
//! let report = export_vm(client, &vm, &options).await?;
//! for f in &report.files {
//!     println!("{} {} bytes {:?}", f.name, f.size, f.digests.iter().next());
//! }
//! # Ok(()) }
//! ```
//!
//! [`OvaWriter`]: hypersdk_ova::archive::OvaWriter
//! [`ManifestMode::AtEnd`]: hypersdk_ova::archive::ManifestMode::AtEnd

use std::fmt;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use hypersdk_core::blocks::{HttpAuth, reqwest_error};
use hypersdk_core::digest::{Algorithm, Checksum, Digests, MultiHasher};
use hypersdk_core::error::redact_url;
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_core::progress::{ItemProgress, Phase, Progress, ProgressEvent};
use hypersdk_core::retry::{Backoff, retry};
use hypersdk_core::{Error, Result};
use hypersdk_manifest::{ExportResult, ExportedDisk, ManifestBuilder, Output, OutputFormat};
use hypersdk_ova::archive::{ManifestMode, OvaWriter, WriteOptions};
use hypersdk_ova::mf::Manifest as MfManifest;
use hypersdk_ova::ovf::Envelope;
use hypersdk_ova::vmdk::convert::{RawOptions, vmdk_to_raw};
use hypersdk_ova::vmdk::decode::DecodeOptions;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use crate::client::Client;
use crate::inventory::{VsphereVm, get_vm};
use crate::lease::{DeviceUrl, LeaseProgress, NfcLease};
use crate::soap::{Node, Request, VimFault};
use crate::types::MoRef;

/// The size given to `CreateDescriptor` for the preliminary OVA
/// descriptor: as many digits as any real size.
const PLACEHOLDER_SIZE: i64 = i64::MAX;
/// Default files downloaded at once (hyperexport's default).
pub const DEFAULT_PARALLEL: usize = 3;
/// Default wait for the next bytes of a download before it is treated as
/// cut and resumed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A body that delivered at least this much before failing counts as
/// progress: the failure count and the retry clock start over.
const PROGRESS_RESET: u64 = 1 << 20;
/// Write buffer of output files.
const WRITE_BUFFER: usize = 1 << 20;

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExportFormat {
    /// One OVA archive file.
    Ova,
    /// An OVF directory: descriptor, `.mf`, disks and `.nvram`.
    Ovf,
    /// Raw sparse disk images (decoded from the streamOptimized VMDKs) and
    /// the `.nvram`.
    Raw,
}

impl ExportFormat {
    /// `ova`, `ovf` or `raw`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Ova => "ova",
            ExportFormat::Ovf => "ovf",
            ExportFormat::Raw => "raw",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExportFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ova" => Ok(ExportFormat::Ova),
            "ovf" => Ok(ExportFormat::Ovf),
            "raw" => Ok(ExportFormat::Raw),
            other => Err(Error::invalid_input(format!(
                "export format '{other}' is not one of ova, ovf, raw"
            ))),
        }
    }
}

/// The Artifact Manifest v1.0 to write next to an OVF or raw export.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArtifactManifestOptions {
    /// The converter's output format (`output.format`; default qcow2).
    pub target: OutputFormat,
    /// Put each disk's SHA-256 in the manifest (default on; computed while
    /// downloading, so it costs no second read).
    pub checksums: bool,
    /// Validate the written manifest against its files (sizes and
    /// checksums re-read from disk) and fail the export if it is not valid.
    pub verify: bool,
}

impl Default for ArtifactManifestOptions {
    fn default() -> Self {
        ArtifactManifestOptions {
            target: OutputFormat::Qcow2,
            checksums: true,
            verify: false,
        }
    }
}

impl ArtifactManifestOptions {
    /// Sets the converter's output format.
    #[must_use]
    pub fn target(mut self, target: OutputFormat) -> Self {
        self.target = target;
        self
    }

    /// Sets whether disk checksums go into the manifest.
    #[must_use]
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Sets whether the manifest is verified against the files.
    #[must_use]
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }
}

/// How [`export_vm`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VmExportOptions {
    /// What to write.
    pub format: ExportFormat,
    /// The OVA file ([`ExportFormat::Ova`]) or the directory (created if
    /// missing) for the other formats. Existing files are never replaced.
    pub output: PathBuf,
    /// The package name (file name stem); default: the VM's name, with
    /// characters other than letters, digits, `.`, `_` and `-` replaced.
    pub name: Option<String>,
    /// Files downloaded at once (OVF and raw targets; an OVA is written one
    /// file after the other). Default [`DEFAULT_PARALLEL`].
    pub parallel: usize,
    /// Export the disks as of this snapshot (`ExportSnapshot`, API 5.5+)
    /// instead of the (powered-off) VM.
    pub snapshot: Option<MoRef>,
    /// Digests computed of every file while it is written. Default
    /// SHA-256.
    pub digests: Vec<Algorithm>,
    /// Write a `.mf` next to an OVF descriptor (default on; an OVA always
    /// has one).
    pub mf: bool,
    /// Write an Artifact Manifest (`artifact-manifest.json`).
    pub artifact_manifest: Option<ArtifactManifestOptions>,
    /// Retry policy of each download (resumes and restarts).
    pub backoff: Backoff,
    /// Wait for the next bytes of a download before it counts as cut.
    pub idle_timeout: Duration,
    /// Where progress events go: one item per file ([`Phase::Exporting`]).
    pub progress: Progress,
}

impl VmExportOptions {
    /// An export in `format` to `output`, with the defaults.
    pub fn new(format: ExportFormat, output: impl Into<PathBuf>) -> Self {
        VmExportOptions {
            format,
            output: output.into(),
            name: None,
            parallel: DEFAULT_PARALLEL,
            snapshot: None,
            digests: vec![Algorithm::Sha256],
            mf: true,
            artifact_manifest: None,
            backoff: Backoff::default()
                .with_initial(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(30)),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            progress: Progress::none(),
        }
    }

    /// Sets the package name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets how many files are downloaded at once (at least 1).
    #[must_use]
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Exports as of this snapshot (`VirtualMachineSnapshot` moref).
    #[must_use]
    pub fn snapshot(mut self, snapshot: MoRef) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// Sets the digests computed of every file.
    #[must_use]
    pub fn digests(mut self, algorithms: &[Algorithm]) -> Self {
        self.digests = algorithms.to_vec();
        self
    }

    /// Sets whether an OVF directory gets a `.mf`.
    #[must_use]
    pub fn mf(mut self, on: bool) -> Self {
        self.mf = on;
        self
    }

    /// Writes an Artifact Manifest.
    #[must_use]
    pub fn artifact_manifest(mut self, options: ArtifactManifestOptions) -> Self {
        self.artifact_manifest = Some(options);
        self
    }

    /// Sets the retry policy of the downloads.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the idle timeout of the downloads.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sends progress events to `progress`.
    #[must_use]
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The digest algorithms to compute: the asked ones, plus SHA-256 when
    /// an Artifact Manifest with checksums is asked.
    fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs = self.digests.clone();
        if self.artifact_manifest.as_ref().is_some_and(|m| m.checksums)
            && !algs.contains(&Algorithm::Sha256)
        {
            algs.push(Algorithm::Sha256);
        }
        algs.sort();
        algs.dedup();
        algs
    }
}

/// One file an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportedFile {
    /// Its name in the package (`web01-disk-0.vmdk`).
    pub name: String,
    /// Where it is: `None` inside an OVA.
    pub path: Option<PathBuf>,
    /// The lease's device key (`/vm-42/VirtualLsiLogicController0:0`).
    pub device_key: String,
    /// The VM disk it holds; `None` for `.nvram`.
    pub disk: Option<DiskInfo>,
    /// Its size in bytes as written (a raw image: the disk's capacity).
    pub size: u64,
    /// Bytes received from the server for it, resumes and restarts
    /// included.
    pub bytes_received: u64,
    /// Digests of the file as written (raw target: of the raw image).
    pub digests: Digests,
    /// Times the download was resumed with `Range`.
    pub resumes: u64,
    /// Times the file (OVA target: the package) started over from byte 0.
    pub restarts: u32,
}

/// What [`export_vm`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VmExportReport {
    /// The VM as it was when the export started.
    pub vm: VmInfo,
    /// What was written.
    pub format: ExportFormat,
    /// The snapshot exported, if any.
    pub snapshot: Option<MoRef>,
    /// The lease used.
    pub lease: MoRef,
    /// The files, in the lease's order.
    pub files: Vec<ExportedFile>,
    /// The OVA ([`ExportFormat::Ova`]).
    pub ova: Option<PathBuf>,
    /// The OVF descriptor ([`ExportFormat::Ovf`]).
    pub descriptor: Option<PathBuf>,
    /// The `.mf` file ([`ExportFormat::Ovf`] with [`VmExportOptions::mf`]).
    pub mf: Option<PathBuf>,
    /// The Artifact Manifest, when asked.
    pub manifest: Option<PathBuf>,
    /// `CreateDescriptor`'s warnings.
    pub warnings: Vec<String>,
    /// Lease files not exported (non-disk files other than `.nvram`).
    pub skipped: Vec<String>,
    /// Bytes written (a raw image counts its capacity).
    pub bytes_written: u64,
    /// Bytes received from the server.
    pub bytes_received: u64,
    /// Wall time from `ExportVm` to the last rename.
    pub elapsed: Duration,
}

/// One file of a `CreateDescriptor` call (`OvfFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OvfFileSpec {
    /// The lease's device key.
    pub device_id: String,
    /// The file name in the package.
    pub path: String,
    /// Its size in bytes.
    pub size: i64,
}

impl OvfFileSpec {
    /// A file of `size` bytes named `path` for device `device_id`.
    pub fn new(device_id: impl Into<String>, path: impl Into<String>, size: i64) -> Self {
        OvfFileSpec {
            device_id: device_id.into(),
            path: path.into(),
            size,
        }
    }
}

/// What `CreateDescriptor` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreatedDescriptor {
    /// The OVF descriptor.
    pub xml: String,
    /// Its warnings (`warning[]`), as text.
    pub warnings: Vec<String>,
}

/// `OvfManager.CreateDescriptor` for `vm` (as of `snapshot`), listing
/// `files` in `References`, named `name`.
///
/// # Errors
///
/// [`Error::Unsupported`] when the server has no `OvfManager`; the first
/// of the result's `error[]` mapped like a fault; [`Error::InvalidData`]
/// without a descriptor; the call's own errors.
pub async fn create_descriptor(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    name: &str,
    files: &[OvfFileSpec],
) -> Result<CreatedDescriptor> {
    let ovf_manager = client
        .ovf_manager()
        .ok_or_else(|| Error::unsupported("CreateDescriptor (no OvfManager)", "vsphere"))?;
    let mut req = Request::new("CreateDescriptor", ovf_manager);
    req.moref("obj", vm).start("cdp");
    for f in files {
        req.start("ovfFiles")
            .text("deviceId", &f.device_id)
            .text("path", &f.path)
            .int("size", f.size)
            .end();
    }
    req.text("name", name).bool("includeImageFiles", false);
    if let Some(s) = snapshot {
        req.moref("snapshot", s);
    }
    req.end();
    let resp = client.invoke_idempotent(&req).await?;
    let rv = resp
        .child("returnval")
        .ok_or_else(|| Error::invalid_data(format!("CreateDescriptor of {vm}"), "no returnval"))?;
    if let Some(err) = rv.children_named("error").next() {
        return Err(crate::fault_to_error(
            VimFault::from_localized(err),
            &format!("CreateDescriptor of {vm}"),
        ));
    }
    let xml = rv
        .text_at(&["ovfDescriptor"])
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            Error::invalid_data(
                format!("CreateDescriptor of {vm}"),
                "the result has no ovfDescriptor",
            )
        })?
        .to_owned();
    let warnings = rv
        .children_named("warning")
        .map(|w| VimFault::from_localized(w).to_string())
        .collect();
    Ok(CreatedDescriptor { xml, warnings })
}

/// Starts an export: `ExportVm` on `vm`, or `ExportSnapshot` on
/// `snapshot`, and waits for the lease to be ready.
///
/// # Errors
///
/// [`Error::Conflict`] when the VM is powered on (`InvalidPowerState`:
/// export a snapshot instead) or busy; the lease's fault when it fails to
/// initialize; the call's own errors.
pub async fn start_export(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
) -> Result<NfcLease> {
    let req = match snapshot {
        Some(s) => Request::new("ExportSnapshot", s),
        None => Request::new("ExportVm", vm),
    };
    let resp = client.invoke(&req).await.map_err(|e| {
        // fault_to_error keeps the fault's type in a Conflict's message.
        let power = crate::vim_fault(&e).is_some_and(|f| f.is("InvalidPowerState"))
            || (e.kind() == hypersdk_core::ErrorKind::Conflict
                && e.to_string().contains("InvalidPowerState"));
        if snapshot.is_none() && power {
            Error::Conflict {
                object: vm.to_string(),
                message: format!(
                    "ExportVm needs the VM powered off; export a snapshot of it instead \
                     (ExportSnapshot): {e}"
                ),
            }
        } else {
            e
        }
    })?;
    let lease = resp
        .child("returnval")
        .and_then(Node::as_moref)
        .ok_or_else(|| {
            Error::invalid_data(
                format!("{} of {vm}", req.method()),
                "the response names no HttpNfcLease",
            )
        })?;
    NfcLease::wait_ready(client, lease).await
}

/// Whether `url` is on the client's own server (host and port).
fn same_server(client: &Client, url: &reqwest::Url) -> bool {
    let base = client.base_url();
    url.host_str() == base.host_str() && url.port_or_known_default() == base.port_or_known_default()
}

/// The reqwest client for a device URL: the client's own for its host;
/// for another host (an ESXi host behind vCenter) pinned to the lease's
/// `sslThumbprint` when it gives one (vCenter vouches for it over the
/// verified session), else the client's trust.
fn http_for(
    client: &Client,
    url: &reqwest::Url,
    thumbprint: Option<&str>,
) -> Result<reqwest::Client> {
    match thumbprint {
        Some(tp) if !same_server(client, url) && url.scheme() == "https" => {
            let pin = tp.parse::<hypersdk_core::tls::Thumbprint>()?;
            reqwest::Client::builder()
                .http1_only()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(DEFAULT_IDLE_TIMEOUT)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .tls_backend_preconfigured(hypersdk_core::tls::pinned_config(vec![pin])?)
                .build()
                .map_err(|e| Error::Other {
                    message: format!(
                        "building the HTTP client for {}: {e}",
                        redact_url(url.as_str())
                    ),
                    source: Some(Box::new(e)),
                })
        }
        _ => Ok(client.transfer_http().clone()),
    }
}

/// The error of a resume the server answered with the whole file: the
/// file must start over from byte 0. Retryable.
fn restart_needed(display: &str, at: u64) -> Error {
    Error::network(
        display,
        format!(
            "GET: the server ignored 'Range: bytes={at}-' (200 instead of 206): the file \
             starts over from byte 0"
        ),
        None,
    )
}

/// Where a download's requests go.
struct Target {
    http: reqwest::Client,
    url: reqwest::Url,
    display: String,
    auth: Option<Arc<dyn HttpAuth>>,
    idle_timeout: Duration,
}

/// What one `GET` gave.
enum Reply {
    /// The body asked for, and the file's total length when known.
    Body(BoxStream<'static, reqwest::Result<Bytes>>, Option<u64>),
    /// A resume answered with the whole file (`200`): start over.
    Whole,
}

/// Counters of one download, shared with whoever reports on it.
#[derive(Debug, Default)]
struct DownloadStats {
    received: AtomicU64,
    resumes: AtomicU64,
}

/// A download of one lease file as a stream of chunks, resumed in place
/// with `Range` after a cut (see the [module documentation](self)).
pub struct NfcDownload {
    t: Arc<Target>,
    backoff: Backoff,
    pos: u64,
    total: Option<u64>,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    opened_at: u64,
    failures: u32,
    started: tokio::time::Instant,
    stats: Arc<DownloadStats>,
    done: bool,
    /// Set when the server answered a resume with the whole file.
    restart: bool,
}

impl fmt::Debug for NfcDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfcDownload")
            .field("url", &self.t.display)
            .field("pos", &self.pos)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl NfcDownload {
    /// Opens the download of `device` (the first `GET`, retried under
    /// `backoff`): its length is known afterwards when the server sent a
    /// `Content-Length`.
    ///
    /// # Errors
    ///
    /// A URL that does not parse ([`Error::InvalidInput`]), an HTTP error
    /// status (`404`: the lease is gone), network errors after the
    /// retries.
    pub async fn open(
        client: &Client,
        device: &DeviceUrl,
        backoff: &Backoff,
        idle_timeout: Duration,
    ) -> Result<NfcDownload> {
        let url = reqwest::Url::parse(&device.url).map_err(|e| {
            Error::invalid_input(format!(
                "lease device URL '{}': {e}",
                redact_url(&device.url)
            ))
        })?;
        let http = http_for(client, &url, device.ssl_thumbprint.as_deref())?;
        // The session cookie goes only to the server it belongs to: an NFC
        // URL on another host (an ESXi host behind vCenter) is authorised
        // by its ticket alone.
        let auth = same_server(client, &url).then(|| client.session_auth());
        Self::open_url(http, url, device.file_size, auth, backoff, idle_timeout).await
    }

    /// Opens a download of `url` with `http`, sending `auth`'s headers;
    /// `len` is the file's size when known beforehand. What
    /// [`NfcDownload::open`] does once it has picked the client.
    ///
    /// # Errors
    ///
    /// As [`NfcDownload::open`].
    pub async fn open_url(
        http: reqwest::Client,
        url: reqwest::Url,
        len: Option<u64>,
        auth: Option<Arc<dyn HttpAuth>>,
        backoff: &Backoff,
        idle_timeout: Duration,
    ) -> Result<NfcDownload> {
        backoff.validate()?;
        let mut d = NfcDownload {
            t: Arc::new(Target {
                display: redact_url(url.as_str()),
                http,
                url,
                auth,
                idle_timeout,
            }),
            backoff: backoff.clone(),
            pos: 0,
            total: len,
            body: None,
            opened_at: 0,
            failures: 0,
            started: tokio::time::Instant::now(),
            stats: Arc::new(DownloadStats::default()),
            done: false,
            restart: false,
        };
        let op = format!("GET {}", d.t.display);
        let backoff = d.backoff.clone();
        let (body, total) = match retry(&backoff, &op, |_| request(Arc::clone(&d.t), 0, d.total))
            .await?
        {
            Reply::Body(body, total) => (body, total),
            Reply::Whole => return Err(Error::other("a GET without Range answered as a resume")),
        };
        d.body = Some(body);
        if total.is_some() {
            d.total = total;
        }
        Ok(d)
    }

    /// The file's length, when the server announced it.
    pub fn len(&self) -> Option<u64> {
        self.total
    }

    /// Whether the server announced a length of 0.
    pub fn is_empty(&self) -> bool {
        self.total == Some(0)
    }

    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Times the download was resumed with `Range` so far.
    pub fn resumes(&self) -> u64 {
        self.stats.resumes.load(Ordering::Relaxed)
    }

    fn stats(&self) -> Arc<DownloadStats> {
        Arc::clone(&self.stats)
    }

    /// The next chunk; resumes after a cut as the policy allows.
    ///
    /// # Errors
    ///
    /// After the retries: the last error ([`Error::RetriesExhausted`]);
    /// a server that ignores `Range`: a retryable [`Error::Network`]
    /// saying the file must start over.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let error = match self.try_next().await {
                Ok(Some(chunk)) => return Ok(Some(chunk)),
                Ok(None) => {
                    self.done = true;
                    return Ok(None);
                }
                Err(e) => e,
            };
            if self.body.is_some() && self.pos - self.opened_at >= PROGRESS_RESET {
                self.failures = 0;
                self.started = tokio::time::Instant::now();
            }
            self.body = None;
            self.failures += 1;
            // A server that ignores Range: resuming cannot work.
            let restart = self.restart;
            let delay = if restart {
                None
            } else {
                self.backoff
                    .next_delay(self.failures, self.started.elapsed(), &error)
            };
            let Some(delay) = delay else {
                self.done = true;
                if restart || self.failures <= 1 || !error.is_retryable() {
                    return Err(error);
                }
                return Err(Error::RetriesExhausted {
                    operation: format!("GET {}", self.t.display),
                    attempts: self.failures,
                    elapsed: self.started.elapsed(),
                    last: Box::new(error),
                });
            };
            tracing::warn!(
                url = %self.t.display,
                resume_at = self.pos,
                attempt = self.failures,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "NFC download cut; resuming"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn try_next(&mut self) -> Result<Option<Bytes>> {
        if self.body.is_none() {
            if self.total.is_some_and(|t| self.pos >= t) {
                return Ok(None);
            }
            let (body, total) = match request(Arc::clone(&self.t), self.pos, self.total).await? {
                Reply::Body(body, total) => (body, total),
                Reply::Whole => {
                    self.restart = true;
                    return Err(restart_needed(&self.t.display, self.pos));
                }
            };
            self.stats.resumes.fetch_add(1, Ordering::Relaxed);
            if total.is_some() {
                self.total = total;
            }
            self.body = Some(body);
            self.opened_at = self.pos;
        }
        let Some(body) = self.body.as_mut() else {
            return Err(Error::other("no response body"));
        };
        let next = tokio::time::timeout(self.t.idle_timeout, body.next())
            .await
            .map_err(|_| Error::Timeout {
                operation: format!("reading GET {} at byte {}", self.t.display, self.pos),
                after: self.t.idle_timeout,
            })?;
        match next {
            Some(Ok(chunk)) => {
                if let Some(t) = self.total
                    && self.pos + chunk.len() as u64 > t
                {
                    return Err(Error::invalid_data(
                        format!("GET {}", self.t.display),
                        format!("the server sent more than the announced {t} bytes"),
                    ));
                }
                self.pos += chunk.len() as u64;
                self.stats
                    .received
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok(Some(chunk))
            }
            Some(Err(e)) => Err(reqwest_error(&reqwest::Method::GET, self.t.url.as_str(), e)),
            None => match self.total {
                Some(t) if self.pos < t => Err(Error::network(
                    &self.t.display,
                    format!("GET: the body ended at byte {} of {t}", self.pos),
                    None,
                )),
                _ => Ok(None),
            },
        }
    }

    /// The download as a stream of chunks.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        stream::try_unfold(self, |mut d| async move {
            Ok(d.next_chunk().await?.map(|chunk| (chunk, d)))
        })
        .boxed()
    }
}

/// One `GET` of `t` from byte `at` (`Range` when `at > 0`); `known` is
/// the file's length when known.
async fn request(t: Arc<Target>, at: u64, known: Option<u64>) -> Result<Reply> {
    let mut refreshed = false;
    loop {
        let mut headers = HeaderMap::new();
        if at > 0 {
            let v = HeaderValue::from_str(&format!("bytes={at}-"))
                .map_err(|_| Error::other("invalid Range header"))?;
            headers.insert(header::RANGE, v);
        }
        if let Some(auth) = &t.auth {
            headers.extend(auth.headers().await?);
        }
        let send = t.http.get(t.url.clone()).headers(headers).send();
        let resp = tokio::time::timeout(t.idle_timeout, send)
            .await
            .map_err(|_| Error::Timeout {
                operation: format!("waiting for the response to GET {}", t.display),
                after: t.idle_timeout,
            })?
            .map_err(|e| reqwest_error(&reqwest::Method::GET, t.url.as_str(), e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED
            && !refreshed
            && let Some(auth) = &t.auth
            && auth.refresh().await?
        {
            refreshed = true;
            continue;
        }
        let length = resp.content_length();
        match status {
            StatusCode::OK if at == 0 => {
                return Ok(Reply::Body(resp.bytes_stream().boxed(), length));
            }
            StatusCode::OK => return Ok(Reply::Whole),
            StatusCode::PARTIAL_CONTENT if at > 0 => {
                let cr = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let total = check_content_range(&cr, at, known).ok_or_else(|| {
                    Error::invalid_data(
                        format!("GET {}", t.display),
                        format!("asked for bytes={at}-, the server sent Content-Range '{cr}'"),
                    )
                })?;
                return Ok(Reply::Body(resp.bytes_stream().boxed(), total));
            }
            s if s.is_success() => {
                return Err(Error::invalid_data(
                    format!("GET {}", t.display),
                    format!("unexpected status {s}"),
                ));
            }
            s => {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
                    .await
                    .ok()
                    .and_then(std::result::Result::ok)
                    .unwrap_or_default();
                let excerpt: String = body.chars().take(512).collect();
                return Err(Error::from_http_status(
                    "GET",
                    &t.display,
                    s.as_u16(),
                    retry_after,
                    &excerpt,
                ));
            }
        }
    }
}

/// Checks `bytes <at>-<last>/<total>` of a resumed `GET` and returns the
/// total when it is a number (and agrees with `known`).
fn check_content_range(value: &str, at: u64, known: Option<u64>) -> Option<Option<u64>> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let first: u64 = a.trim().parse().ok()?;
    let last: u64 = b.trim().parse().ok()?;
    if first != at || last < first {
        return None;
    }
    let total = match size.trim() {
        "*" => None,
        s => Some(s.parse::<u64>().ok()?),
    };
    match (total, known) {
        (Some(t), _) if last + 1 != t => None,
        (Some(t), Some(k)) if t != k => None,
        _ => Some(total),
    }
}

/// The lease's overall percentage: bytes done against the expected total
/// (announced lengths where known, disk capacities or `fileSize`
/// otherwise), at most 99 % until the lease completes.
#[derive(Debug)]
struct LeaseMeter {
    lease: LeaseProgress,
    done: AtomicU64,
    expected: AtomicU64,
    /// Each planned file's current share of `expected`.
    estimates: Vec<AtomicU64>,
}

impl LeaseMeter {
    /// A meter expecting `estimates` (one per planned file).
    fn new(lease: LeaseProgress, estimates: impl IntoIterator<Item = u64>) -> Self {
        let estimates: Vec<AtomicU64> = estimates.into_iter().map(AtomicU64::new).collect();
        LeaseMeter {
            lease,
            done: AtomicU64::new(0),
            expected: AtomicU64::new(
                estimates
                    .iter()
                    .map(|e| e.load(Ordering::Relaxed))
                    .fold(0, u64::saturating_add),
            ),
            estimates,
        }
    }

    fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.update(done);
    }

    fn update(&self, done: u64) {
        let expected = self.expected.load(Ordering::Relaxed).max(1);
        let pct = (u128::from(done) * 100 / u128::from(expected)).min(99) as u8;
        self.lease.set_percent(pct);
    }

    /// Replaces file `index`'s estimate by its announced length. Opening
    /// the file again (a restart) corrects nothing twice.
    fn correct(&self, index: usize, actual: u64) {
        let Some(slot) = self.estimates.get(index) else {
            return;
        };
        let previous = slot.swap(actual, Ordering::Relaxed);
        if actual >= previous {
            self.expected
                .fetch_add(actual - previous, Ordering::Relaxed);
        } else {
            self.expected
                .fetch_sub(previous - actual, Ordering::Relaxed);
        }
        self.update(self.done.load(Ordering::Relaxed));
    }

    /// Takes back bytes of a file that starts over.
    fn rewind(&self, bytes: u64) {
        let _ = self
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(bytes))
            });
    }
}

/// A stream that hashes, counts and reports the chunks passing through.
struct Tap<S> {
    inner: S,
    hasher: Option<MultiHasher>,
    written: u64,
    item: Option<ItemProgress>,
    meter: Arc<LeaseMeter>,
    /// Bytes through this tap, readable after it is gone.
    counted: Arc<AtomicU64>,
    /// The first error of `inner`, kept for callers that see it only
    /// through an `io::Error`.
    error: Arc<Mutex<Option<Error>>>,
}

impl<S> Tap<S> {
    fn new(
        inner: S,
        algorithms: &[Algorithm],
        item: Option<ItemProgress>,
        meter: Arc<LeaseMeter>,
        counted: Arc<AtomicU64>,
    ) -> Self {
        Tap {
            inner,
            hasher: (!algorithms.is_empty()).then(|| MultiHasher::offloaded(algorithms)),
            written: 0,
            item,
            meter,
            counted,
            error: Arc::new(Mutex::new(None)),
        }
    }

    fn finish(mut self) -> Result<(u64, Digests)> {
        if let Some(item) = &self.item {
            item.finish();
        }
        let digests = match self.hasher.take() {
            Some(h) => h.finish()?,
            None => MultiHasher::inline(&[]).finish()?,
        };
        Ok((self.written, digests))
    }
}

impl<S: Stream<Item = Result<Bytes>> + Unpin> Stream for Tap<S> {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                this.written += n;
                if let Some(h) = this.hasher.as_mut() {
                    h.update(chunk.clone());
                }
                if let Some(item) = &this.item {
                    item.add(n);
                }
                this.meter.add(n);
                this.counted.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The original goes to the slot (its kind decides on a
                // retry); the consumer gets a stand-in naming it.
                let stand_in = Error::other(e.to_string());
                let mut slot = this
                    .error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if slot.is_none() {
                    *slot = Some(e);
                }
                Poll::Ready(Some(Err(stand_in)))
            }
            other => other,
        }
    }
}

/// The stream error kept in `slot`, else `fallback`.
fn stream_error(slot: &Mutex<Option<Error>>, fallback: Error) -> Error {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or(fallback)
}

/// An [`AsyncRead`] over a stream of chunks (for the VMDK decoder).
struct StreamRead<S> {
    stream: S,
    chunk: Bytes,
}

impl<S: Stream<Item = Result<Bytes>> + Unpin> AsyncRead for StreamRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = buf.remaining().min(self.chunk.len());
                buf.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => self.chunk = b,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(e)));
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One file of the lease to export, planned before any byte moves.
#[derive(Debug, Clone)]
struct PlannedFile {
    device: DeviceUrl,
    /// Its name in the package (OVA / OVF).
    name: String,
    /// Final path (OVF and raw targets).
    path: Option<PathBuf>,
    /// The VM disk, if it is one.
    disk: Option<DiskInfo>,
    /// The expected download size for the lease percentage.
    estimate: u64,
}

/// Files under `.part` names, removed on drop unless committed.
#[derive(Debug, Default)]
struct PartFiles {
    parts: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl PartFiles {
    fn part_of(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".part");
        PathBuf::from(p)
    }

    /// Removes the `.part` of a part: a raw image's, which `vmdk_to_raw`
    /// writes through a [`SparseFile`] while it runs.
    ///
    /// [`SparseFile`]: hypersdk_core::blocks::SparseFile
    fn remove_inner_part(part: &Path) {
        if let Ok(inner) = hypersdk_core::blocks::SparseFile::part_path_for(part) {
            let _ = std::fs::remove_file(inner);
        }
    }

    fn add(&mut self, target: &Path) -> PathBuf {
        let part = Self::part_of(target);
        self.parts.push((part.clone(), target.to_path_buf()));
        part
    }

    /// Renames every part into place (never replacing a file: a target
    /// that appeared meanwhile is an error), then syncs the directories.
    /// On an error every target already placed and every part is removed:
    /// the export failed, and nothing of it stays.
    async fn commit(mut self) -> Result<()> {
        let parts = std::mem::take(&mut self.parts);
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, PathBuf)>> {
            let mut done: Vec<PathBuf> = Vec::new();
            for (part, target) in &parts {
                let linked = std::fs::hard_link(part, target);
                let moved = linked.and_then(|()| {
                    done.push(target.clone());
                    std::fs::remove_file(part)
                });
                if let Err(e) = moved {
                    for t in &done {
                        let _ = std::fs::remove_file(t);
                    }
                    for (p, _) in &parts {
                        let _ = std::fs::remove_file(p);
                        Self::remove_inner_part(p);
                    }
                    return Err(Error::io(format!("'{}'", target.display()), e));
                }
            }
            let mut dirs: Vec<&Path> = parts.iter().filter_map(|(_, t)| t.parent()).collect();
            dirs.dedup();
            for d in dirs {
                if let Ok(f) = std::fs::File::open(if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }) {
                    let _ = f.sync_all();
                }
            }
            Ok(parts)
        })
        .await
        .map_err(|e| Error::other(format!("renaming the exported files failed: {e}")))?;
        match result {
            Ok(_) => {
                self.committed = true;
                Ok(())
            }
            Err(e) => {
                self.committed = true; // the parts were removed above
                Err(e)
            }
        }
    }
}

impl Drop for PartFiles {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (part, _) in &self.parts {
            let _ = std::fs::remove_file(part);
            Self::remove_inner_part(part);
        }
    }
}

/// `name` reduced to letters, digits, `.`, `_` and `-` (others become
/// `_`), at most 64 characters, never empty or starting with `.`.
fn sanitize_stem(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    while s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s.is_empty() { "vm".to_owned() } else { s }
}

/// The VM disk a lease device key names (`/vm-42/ParaVirtualSCSIController0:1`):
/// the disk on that controller type and bus at that unit.
pub(crate) fn disk_for_key(vm: &VsphereVm, key: &str) -> Option<i64> {
    let last = key.rsplit('/').next()?;
    let (ctrl, unit) = last.rsplit_once(':')?;
    let unit: i64 = unit.parse().ok()?;
    let digits = ctrl.len() - ctrl.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (kind, bus) = ctrl.split_at(ctrl.len() - digits);
    let bus: i64 = bus.parse().ok()?;
    let controller = vm
        .controllers
        .iter()
        .find(|c| c.device_type == kind && c.bus_number == bus)?;
    vm.disks
        .iter()
        .find(|d| d.controller_key == Some(controller.key) && d.unit_number == Some(unit))
        .map(|d| d.key)
}

/// The files of the lease to export, named for `format`.
fn plan_files(
    vm: &VsphereVm,
    info: &VmInfo,
    devices: &[DeviceUrl],
    stem: &str,
    options: &VmExportOptions,
) -> Result<(Vec<PlannedFile>, Vec<String>)> {
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    let mut disk_index = 0usize;
    let mut used_disks: Vec<i64> = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let base = dev.file_name(i);
        let is_nvram = base.to_ascii_lowercase().ends_with(".nvram");
        if !dev.disk && !is_nvram {
            skipped.push(base);
            continue;
        }
        let disk = if dev.disk {
            let key = disk_for_key(vm, &dev.key).or_else(|| {
                // Fall back to device order among the disks.
                vm.disks
                    .iter()
                    .map(|d| d.key)
                    .find(|k| !used_disks.contains(k))
            });
            if let Some(k) = key {
                used_disks.push(k);
            }
            key.and_then(|k| info.disks.iter().find(|d| d.id == k.to_string()).cloned())
        } else {
            None
        };
        let name = match (options.format, dev.disk) {
            (ExportFormat::Raw, true) => {
                let n = match base.len().checked_sub(5).filter(|&i| {
                    base.get(i..)
                        .is_some_and(|ext| ext.eq_ignore_ascii_case(".vmdk"))
                }) {
                    Some(i) => format!("{stem}-{}.raw", &base[..i]),
                    None => format!("{stem}-disk-{disk_index}.raw"),
                };
                disk_index += 1;
                n
            }
            (_, true) => {
                let n = if base.to_ascii_lowercase().ends_with(".vmdk") {
                    format!("{stem}-{base}")
                } else {
                    format!("{stem}-disk-{disk_index}.vmdk")
                };
                disk_index += 1;
                n
            }
            _ => format!("{stem}-{base}"),
        };
        if planned.iter().any(|p: &PlannedFile| p.name == name) {
            return Err(Error::invalid_data(
                "the export lease",
                format!("two files would be named '{name}'"),
            ));
        }
        let estimate = dev
            .file_size
            .or_else(|| disk.as_ref().map(|d| d.capacity_bytes))
            .unwrap_or(0);
        let path = match options.format {
            ExportFormat::Ova => None,
            _ => Some(options.output.join(&name)),
        };
        planned.push(PlannedFile {
            device: dev.clone(),
            name,
            path,
            disk,
            estimate,
        });
    }
    if !planned.iter().any(|p| p.device.disk) {
        return Err(Error::invalid_data(
            "the export lease",
            "it offers no disk to download",
        ));
    }
    Ok((planned, skipped))
}

/// Shared state of one export run.
struct Run<'a> {
    client: &'a Client,
    options: &'a VmExportOptions,
    algorithms: Vec<Algorithm>,
    meter: Arc<LeaseMeter>,
    count: usize,
}

impl Run<'_> {
    fn item(&self, index: usize, name: &str, total: Option<u64>) -> ItemProgress {
        self.options.progress.track(
            ProgressEvent::new(Phase::Exporting, 0, total)
                .with_item(name)
                .with_index(index, self.count),
        )
    }

    fn phase(&self, phase: Phase, message: &str) {
        self.options
            .progress
            .emit(ProgressEvent::new(phase, 0, None).with_message(message));
    }

    /// Opens the download of `file` (planned file number `index`),
    /// correcting the lease estimate with the announced length.
    async fn open(&self, index: usize, file: &PlannedFile) -> Result<NfcDownload> {
        let d = NfcDownload::open(
            self.client,
            &file.device,
            &self.options.backoff,
            self.options.idle_timeout,
        )
        .await?;
        if let Some(len) = d.len() {
            self.meter.correct(index, len);
        }
        Ok(d)
    }

    /// Downloads `file` once into its `.part` (OVF and raw targets).
    async fn write_file_once(
        &self,
        index: usize,
        file: &PlannedFile,
        part: &Path,
        counted: Arc<AtomicU64>,
    ) -> Result<ExportedFile> {
        let download = self.open(index, file).await?;
        let stats = download.stats();
        let total = download.len();
        let item = self.item(
            index,
            &file.name,
            if self.options.format == ExportFormat::Raw && file.device.disk {
                None
            } else {
                total
            },
        );
        let tap = Tap::new(
            download.into_stream(),
            if self.options.format == ExportFormat::Raw && file.device.disk {
                &[]
            } else {
                &self.algorithms
            },
            Some(item),
            Arc::clone(&self.meter),
            counted,
        );
        let (size, digests) = if self.options.format == ExportFormat::Raw && file.device.disk {
            let error = Arc::clone(&tap.error);
            let reader = StreamRead {
                stream: tap,
                chunk: Bytes::new(),
            };
            let raw_options = RawOptions::default()
                .with_digests(&self.algorithms)
                .with_decode(DecodeOptions::default().with_name(file.name.clone()));
            match vmdk_to_raw(reader, part, &raw_options).await {
                Ok(report) => (report.capacity, report.digests),
                Err(e) => return Err(stream_error(&error, e)),
            }
        } else {
            let mut tap = tap;
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(part)
                .await
                .map_err(|e| Error::io(format!("'{}'", part.display()), e))?;
            let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, f);
            while let Some(chunk) = tap.next().await {
                let chunk = chunk.map_err(|e| stream_error(&tap.error, e))?;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(format!("'{}'", part.display()), e))?;
            }
            out.flush()
                .await
                .map_err(|e| Error::io(format!("'{}'", part.display()), e))?;
            out.get_ref()
                .sync_all()
                .await
                .map_err(|e| Error::io(format!("'{}'", part.display()), e))?;
            tap.finish()?
        };
        Ok(ExportedFile {
            name: file.name.clone(),
            path: file.path.clone(),
            device_key: file.device.key.clone(),
            disk: file.disk.clone(),
            size,
            bytes_received: stats.received.load(Ordering::Relaxed),
            digests,
            resumes: stats.resumes.load(Ordering::Relaxed),
            restarts: 0,
        })
    }

    /// Downloads `file` into its `.part`, starting the file over after a
    /// retryable failure that resuming in place could not fix (a server
    /// ignoring `Range`). Resumes that used up their retries end in a
    /// [`Error::RetriesExhausted`], which is not retried again here.
    async fn write_file(
        &self,
        index: usize,
        file: &PlannedFile,
        part: &Path,
    ) -> Result<ExportedFile> {
        let op = format!("exporting '{}'", file.name);
        let restarts = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let mut result = retry(&self.options.backoff, &op, |attempt| {
            let restarts = &restarts;
            let received = &received;
            async move {
                if attempt > 1 {
                    restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %file.name, attempt, "export of the file starts over");
                }
                // Bytes of this attempt: other files run in parallel.
                let counted = Arc::new(AtomicU64::new(0));
                match self
                    .write_file_once(index, file, part, Arc::clone(&counted))
                    .await
                {
                    Ok(f) => Ok(f),
                    Err(e) => {
                        let n = counted.load(Ordering::Relaxed);
                        self.meter.rewind(n);
                        received.fetch_add(n, Ordering::Relaxed);
                        Err(e)
                    }
                }
            }
        })
        .await?;
        result.restarts = u32::try_from(restarts.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        result.bytes_received += received.load(Ordering::Relaxed);
        Ok(result)
    }
}

/// Exports `vm` (as of [`VmExportOptions::snapshot`]) into the target of
/// `options`; see the [module documentation](self).
///
/// # Errors
///
/// - [`Error::AlreadyExists`] when an output file exists (checked before
///   the lease is taken);
/// - [`Error::InvalidInput`] for an Artifact Manifest with the OVA format
///   (the manifest lists disk files the converter reads directly);
/// - [`Error::Conflict`] when the VM is powered on and no snapshot is
///   given;
/// - the lease's, the downloads', the decoder's or the file system's
///   errors; the lease is aborted and partial files removed in every
///   case.
pub async fn export_vm(
    client: &Client,
    vm: &MoRef,
    options: &VmExportOptions,
) -> Result<VmExportReport> {
    let started = Instant::now();
    if options.format == ExportFormat::Ova && options.artifact_manifest.is_some() {
        return Err(Error::invalid_input(
            "an Artifact Manifest lists disk files for the converter to read; an OVA holds them \
             inside the archive: export as ovf or raw to get one",
        ));
    }
    options.backoff.validate()?;
    options.progress.emit(
        ProgressEvent::new(Phase::Discovering, 0, None).with_message(format!("reading {vm}")),
    );
    let vsphere_vm = get_vm(client, &vm.value).await?;
    let vm_info = vsphere_vm.to_vm_info();
    let stem = sanitize_stem(options.name.as_deref().unwrap_or(&vm_info.name));

    // Output checks before the lease locks the VM.
    match options.format {
        ExportFormat::Ova => {
            if tokio::fs::try_exists(&options.output)
                .await
                .unwrap_or(false)
            {
                return Err(Error::already_exists(format!(
                    "OVA '{}'",
                    options.output.display()
                )));
            }
            if let Some(parent) = options.output.parent()
                && !parent.as_os_str().is_empty()
                && !tokio::fs::try_exists(parent).await.unwrap_or(false)
            {
                return Err(Error::not_found(format!(
                    "directory '{}'",
                    parent.display()
                )));
            }
        }
        _ => {
            tokio::fs::create_dir_all(&options.output)
                .await
                .map_err(|e| Error::io(format!("'{}'", options.output.display()), e))?;
        }
    }
    let fixed_outputs: Vec<PathBuf> = match options.format {
        ExportFormat::Ovf => {
            let mut v = vec![options.output.join(format!("{stem}.ovf"))];
            if options.mf {
                v.push(options.output.join(format!("{stem}.mf")));
            }
            v
        }
        _ => Vec::new(),
    };
    let manifest_path = options
        .artifact_manifest
        .as_ref()
        .map(|_| options.output.join(hypersdk_manifest::MANIFEST_FILE_NAME));
    for p in fixed_outputs.iter().chain(manifest_path.iter()) {
        if tokio::fs::try_exists(p).await.unwrap_or(false) {
            return Err(Error::already_exists(format!("'{}'", p.display())));
        }
    }

    options.progress.emit(
        ProgressEvent::new(Phase::Exporting, 0, None).with_message("waiting for the export lease"),
    );
    let lease = start_export(client, vm, options.snapshot.as_ref()).await?;
    let lease_ref = lease.moref().clone();
    let result = run_export(
        client,
        &vsphere_vm,
        &vm_info,
        &stem,
        &lease,
        options,
        &fixed_outputs,
    )
    .await;
    match result {
        Ok((mut report, parts)) => {
            options.progress.emit(
                ProgressEvent::new(Phase::Finalizing, 0, None).with_message("completing the lease"),
            );
            lease.progress().set_percent(100);
            // Complete before renaming: a lease that cannot complete is a
            // failed export (the parts are removed by their guard).
            lease.complete().await?;
            parts.commit().await?;
            report.lease = lease_ref;
            if let (Some(mopts), Some(path)) = (&options.artifact_manifest, &manifest_path) {
                write_artifact_manifest(&report, mopts, path, client).await?;
                report.manifest = Some(path.clone());
            }
            report.elapsed = started.elapsed();
            Ok(report)
        }
        Err(e) => {
            let reason = format!("export failed: {e}");
            if let Err(a) = lease.abort(&reason).await {
                tracing::warn!(error = %a, "HttpNfcLeaseAbort failed");
            }
            Err(e)
        }
    }
}

/// Everything between a ready lease and its completion. Returns the report
/// and the `.part` files to commit.
async fn run_export(
    client: &Client,
    vsphere_vm: &VsphereVm,
    vm_info: &VmInfo,
    stem: &str,
    lease: &NfcLease,
    options: &VmExportOptions,
    fixed_outputs: &[PathBuf],
) -> Result<(VmExportReport, PartFiles)> {
    let (planned, skipped) = plan_files(
        vsphere_vm,
        vm_info,
        &lease.info().device_urls,
        stem,
        options,
    )?;
    for s in &skipped {
        tracing::info!(file = %s, "lease file skipped (not a disk or .nvram)");
    }
    for p in planned.iter().filter_map(|p| p.path.as_ref()) {
        if tokio::fs::try_exists(p).await.unwrap_or(false) {
            return Err(Error::already_exists(format!("'{}'", p.display())));
        }
    }
    let meter = Arc::new(LeaseMeter::new(
        lease.progress(),
        planned.iter().map(|p| p.estimate),
    ));
    let run = Run {
        client,
        options,
        algorithms: options.algorithms(),
        meter,
        count: planned.len(),
    };
    let mut parts = PartFiles::default();
    let mut report = VmExportReport {
        vm: vm_info.clone(),
        format: options.format,
        snapshot: options.snapshot.clone(),
        lease: lease.moref().clone(),
        files: Vec::new(),
        ova: None,
        descriptor: None,
        mf: None,
        manifest: None,
        warnings: Vec::new(),
        skipped,
        bytes_written: 0,
        bytes_received: 0,
        elapsed: Duration::ZERO,
    };
    let vm = &vsphere_vm.moref;
    match options.format {
        ExportFormat::Ova => {
            let part = parts.add(&options.output);
            let (files, warnings) = write_ova(&run, vm, stem, &planned, &part).await?;
            report.files = files;
            report.warnings = warnings;
            report.ova = Some(options.output.clone());
        }
        ExportFormat::Ovf | ExportFormat::Raw => {
            let jobs: Vec<(usize, &PlannedFile, PathBuf)> = planned
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.path.as_ref().map(|p| (i, f, parts.add(p))))
                .collect();
            let run_ref = &run;
            let mut files: Vec<(usize, ExportedFile)> =
                stream::iter(jobs)
                    .map(|(i, f, part)| async move {
                        run_ref.write_file(i, f, &part).await.map(|r| (i, r))
                    })
                    .buffer_unordered(options.parallel.max(1))
                    .try_collect()
                    .await?;
            files.sort_by_key(|(i, _)| *i);
            report.files = files.into_iter().map(|(_, f)| f).collect();
            if options.format == ExportFormat::Ovf {
                run.phase(Phase::Finalizing, "creating the OVF descriptor");
                let specs: Vec<OvfFileSpec> = report
                    .files
                    .iter()
                    .map(|f| {
                        OvfFileSpec::new(
                            &f.device_key,
                            &f.name,
                            i64::try_from(f.size).unwrap_or(i64::MAX),
                        )
                    })
                    .collect();
                let created =
                    create_descriptor(client, vm, options.snapshot.as_ref(), stem, &specs).await?;
                check_references(&created.xml, &specs)?;
                report.warnings = created.warnings;
                let ovf_path = &fixed_outputs[0];
                let ovf_part = parts.add(ovf_path);
                write_small_file(&ovf_part, created.xml.as_bytes()).await?;
                report.descriptor = Some(ovf_path.clone());
                if options.mf {
                    let mut mf = MfManifest::new();
                    let ovf_name = format!("{stem}.ovf");
                    for alg in &run.algorithms {
                        mf.insert(
                            ovf_name.clone(),
                            Checksum::compute(*alg, created.xml.as_bytes()),
                        )?;
                    }
                    for f in &report.files {
                        for c in f.digests.iter() {
                            mf.insert(f.name.clone(), *c)?;
                        }
                    }
                    let mf_path = &fixed_outputs[1];
                    let mf_part = parts.add(mf_path);
                    write_small_file(&mf_part, mf.to_string().as_bytes()).await?;
                    report.mf = Some(mf_path.clone());
                }
            }
        }
    }
    report.bytes_written = report.files.iter().map(|f| f.size).sum();
    report.bytes_received = report.files.iter().map(|f| f.bytes_received).sum();
    Ok((report, parts))
}

/// Writes a small file (descriptor, `.mf`) and syncs it.
async fn write_small_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .await
        .map_err(|e| Error::io(format!("'{}'", path.display()), e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| Error::io(format!("'{}'", path.display()), e))?;
    f.sync_all()
        .await
        .map_err(|e| Error::io(format!("'{}'", path.display()), e))
}

/// Checks that `xml` parses and its `References` are exactly `files`
/// (names, in order; sizes where the server wrote them).
fn check_references(xml: &str, files: &[OvfFileSpec]) -> Result<Vec<String>> {
    let envelope = Envelope::parse(xml.as_bytes())?;
    let refs: Vec<(String, Option<u64>)> = envelope
        .references()
        .iter()
        .map(|f| (f.href.clone(), f.size))
        .collect();
    let names: Vec<String> = refs.iter().map(|(h, _)| h.clone()).collect();
    let wanted: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    if names != wanted {
        return Err(Error::invalid_data(
            "the descriptor from CreateDescriptor",
            format!("its References list {names:?}, the export wrote {wanted:?}"),
        ));
    }
    for ((href, size), f) in refs.iter().zip(files) {
        if let Some(s) = size
            && i64::try_from(*s).ok() != Some(f.size)
            && f.size != PLACEHOLDER_SIZE
        {
            return Err(Error::invalid_data(
                "the descriptor from CreateDescriptor",
                format!("'{href}' has ovf:size {s}, the file is {} bytes", f.size),
            ));
        }
    }
    Ok(names)
}

/// A ustar header of a regular file (for the `.mf` appended after the
/// writer's entries). `name` must be ASCII, at most 100 bytes.
fn ustar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    if !name.is_ascii() || name.len() > 100 || name.is_empty() {
        return Err(Error::invalid_input(format!(
            "tar entry name '{name}' must be ASCII, 1-100 bytes"
        )));
    }
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, s: &[u8]| {
        h[at..at + s.len().min(len)].copy_from_slice(&s[..s.len().min(len)]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, b"0000644\0");
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(
        &mut h,
        136,
        12,
        format!("{:011o}\0", mtime.min(0o77777777777)).as_bytes(),
    );
    put(&mut h, 148, 8, b"        ");
    h[156] = b'0';
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// `xml` followed by whitespace up to `len` bytes (ending in a newline).
fn padded(xml: &[u8], len: usize) -> Option<Vec<u8>> {
    if xml.len() + 1 > len {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(xml);
    out.resize(len - 1, b' ');
    out.push(b'\n');
    Some(out)
}

/// Writes the OVA (see the module documentation), restarting the whole
/// package when a file must start over.
async fn write_ova(
    run: &Run<'_>,
    vm: &MoRef,
    stem: &str,
    planned: &[PlannedFile],
    part: &Path,
) -> Result<(Vec<ExportedFile>, Vec<String>)> {
    let restarts = AtomicU64::new(0);
    let op = format!("writing OVA '{}'", run.options.output.display());
    let (mut files, warnings) = retry(&run.options.backoff, &op, |attempt| {
        let restarts = &restarts;
        async move {
            if attempt > 1 {
                restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(attempt, "the OVA starts over");
            }
            let before = run.meter.done.load(Ordering::Relaxed);
            let r = write_ova_once(run, vm, stem, planned, part).await;
            if r.is_err() {
                let after = run.meter.done.load(Ordering::Relaxed);
                run.meter.rewind(after.saturating_sub(before));
            }
            r
        }
    })
    .await?;
    let n = u32::try_from(restarts.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
    for f in &mut files {
        f.restarts = n;
    }
    Ok((files, warnings))
}

async fn write_ova_once(
    run: &Run<'_>,
    vm: &MoRef,
    stem: &str,
    planned: &[PlannedFile],
    part: &Path,
) -> Result<(Vec<ExportedFile>, Vec<String>)> {
    let client = run.client;
    let snapshot = run.options.snapshot.as_ref();
    let ovf_name = format!("{stem}.ovf");
    let mf_name = format!("{stem}.mf");
    let io_err = |e: std::io::Error| Error::io(format!("OVA '{}'", part.display()), e);

    // 1. The preliminary descriptor, in a reserved slot.
    let prelim_specs: Vec<OvfFileSpec> = planned
        .iter()
        .map(|f| OvfFileSpec::new(&f.device.key, &f.name, PLACEHOLDER_SIZE))
        .collect();
    let prelim = create_descriptor(client, vm, snapshot, stem, &prelim_specs).await?;
    check_references(&prelim.xml, &prelim_specs)?;
    let slack = 4096 + prelim.xml.len() / 8;
    let reserved = (prelim.xml.len() + slack).div_ceil(512) * 512;
    let slot = padded(prelim.xml.as_bytes(), reserved)
        .ok_or_else(|| Error::other("the descriptor slot is too small"))?;
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .await
        .map_err(io_err)?;
    let out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut writer = OvaWriter::seekable(
        out,
        WriteOptions::default()
            .with_manifest(ManifestMode::None)
            .with_mtime(mtime),
    )
    .await?;
    writer.write_descriptor(&ovf_name, &slot).await?;
    let slot_offset = writer.bytes_written() - reserved as u64;

    // 2. The files, streamed in.
    let mut files = Vec::with_capacity(planned.len());
    for (i, f) in planned.iter().enumerate() {
        let download = run.open(i, f).await?;
        let stats = download.stats();
        let total = download.len();
        let item = run.item(i, &f.name, total);
        let mut tap = Tap::new(
            download.into_stream(),
            &run.algorithms,
            Some(item),
            Arc::clone(&run.meter),
            Arc::new(AtomicU64::new(0)),
        );
        // The stream's own error (cut, restart) decides on a retry.
        let appended = writer.append_stream(&f.name, total, &mut tap).await;
        appended.map_err(|e| stream_error(&tap.error, e))?;
        let (size, digests) = tap.finish()?;
        files.push(ExportedFile {
            name: f.name.clone(),
            path: None,
            device_key: f.device.key.clone(),
            disk: f.disk.clone(),
            size,
            bytes_received: stats.received.load(Ordering::Relaxed),
            digests,
            resumes: stats.resumes.load(Ordering::Relaxed),
            restarts: 0,
        });
    }
    let entries_end = writer.bytes_written();

    // 3. The final descriptor, with the real sizes, into the slot.
    run.phase(Phase::Finalizing, "creating the OVF descriptor");
    let specs: Vec<OvfFileSpec> = files
        .iter()
        .map(|f| {
            OvfFileSpec::new(
                &f.device_key,
                &f.name,
                i64::try_from(f.size).unwrap_or(i64::MAX),
            )
        })
        .collect();
    let created = create_descriptor(client, vm, snapshot, stem, &specs).await?;
    check_references(&created.xml, &specs)?;
    let final_slot = padded(created.xml.as_bytes(), reserved).ok_or_else(|| {
        Error::invalid_data(
            "the descriptor from CreateDescriptor",
            format!(
                "it is {} bytes, larger than the {reserved} bytes reserved for it from the \
                 preliminary descriptor",
                created.xml.len()
            ),
        )
    })?;
    let mut out = writer.finish().await?;
    out.seek(SeekFrom::Start(slot_offset))
        .await
        .map_err(io_err)?;
    out.write_all(&final_slot).await.map_err(io_err)?;

    // 4. The manifest at the end, then the end-of-archive blocks.
    let mut mf = MfManifest::new();
    for alg in &run.algorithms {
        mf.insert(ovf_name.clone(), Checksum::compute(*alg, &final_slot))?;
    }
    for f in &files {
        for c in f.digests.iter() {
            mf.insert(f.name.clone(), *c)?;
        }
    }
    let mf_text = mf.to_string();
    let mut tail = Vec::with_capacity(mf_text.len() + 2048);
    tail.extend_from_slice(&ustar_header(&mf_name, mf_text.len() as u64, mtime)?);
    tail.extend_from_slice(mf_text.as_bytes());
    tail.resize(tail.len().div_ceil(512) * 512, 0);
    tail.extend_from_slice(&[0u8; 1024]);
    out.seek(SeekFrom::Start(entries_end))
        .await
        .map_err(io_err)?;
    out.write_all(&tail).await.map_err(io_err)?;
    out.flush().await.map_err(io_err)?;
    let file = out.into_inner();
    file.set_len(entries_end + tail.len() as u64)
        .await
        .map_err(io_err)?;
    file.sync_all().await.map_err(io_err)?;
    Ok((files, created.warnings))
}

/// Writes and (when asked) verifies the Artifact Manifest of a finished
/// OVF or raw export.
async fn write_artifact_manifest(
    report: &VmExportReport,
    options: &ArtifactManifestOptions,
    path: &Path,
    client: &Client,
) -> Result<()> {
    let mut result = ExportResult::new("vsphere", report.vm.clone(), "nfc-lease");
    if let Some(s) = &report.snapshot {
        result.snapshot = Some(hypersdk_core::model::SnapshotRef::new(
            report.vm.id.clone(),
            s.value.clone(),
        ));
    }
    for f in &report.files {
        let (Some(disk), Some(p)) = (&f.disk, &f.path) else {
            continue;
        };
        let format = match report.format {
            ExportFormat::Raw => DiskFormat::Raw,
            _ => DiskFormat::VmdkStreamOptimized,
        };
        let mut d = ExportedDisk::new(disk.clone(), p, format, f.size);
        if options.checksums {
            d = d.with_digests(f.digests.clone());
        }
        result = result.with_disk(d);
    }
    let manifest = ManifestBuilder::from_export(&result)
        .output(Some(Output::new(options.target)))
        .tag("vsphere_server", client.host_port())
        .build()?;
    manifest.write_validated(path).await?;
    if options.verify {
        hypersdk_manifest::verify(path).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::ErrorKind;

    #[test]
    fn formats_parse() {
        assert_eq!("OVA".parse::<ExportFormat>().unwrap(), ExportFormat::Ova);
        assert_eq!("raw".parse::<ExportFormat>().unwrap(), ExportFormat::Raw);
        assert_eq!(
            "qcow2".parse::<ExportFormat>().unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn stems_are_safe() {
        assert_eq!(sanitize_stem("web 01/x"), "web_01_x");
        assert_eq!(sanitize_stem(".."), "_.");
        assert_eq!(sanitize_stem(""), "vm");
        assert_eq!(sanitize_stem(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn content_range_checks() {
        assert_eq!(
            check_content_range("bytes 10-99/100", 10, None),
            Some(Some(100))
        );
        assert_eq!(
            check_content_range("bytes 10-99/100", 10, Some(100)),
            Some(Some(100))
        );
        assert_eq!(check_content_range("bytes 10-99/*", 10, None), Some(None));
        assert_eq!(check_content_range("bytes 11-99/100", 10, None), None);
        assert_eq!(check_content_range("bytes 10-98/100", 10, None), None);
        assert_eq!(check_content_range("bytes 10-99/100", 10, Some(200)), None);
        assert_eq!(check_content_range("", 10, None), None);
    }

    fn vm_with_two_disks() -> VsphereVm {
        let disk = |key: i64, unit: i64| crate::inventory::VirtualDisk {
            key,
            label: None,
            capacity_bytes: 1 << 30,
            backing_type: None,
            file_name: None,
            datastore: None,
            controller_key: Some(1000),
            unit_number: Some(unit),
            change_id: None,
            uuid: None,
            thin_provisioned: None,
            disk_mode: None,
        };
        VsphereVm {
            moref: MoRef::new("VirtualMachine", "vm-42"),
            name: "web 01".into(),
            inventory_path: None,
            bios_uuid: None,
            instance_uuid: None,
            num_cpu: Some(2),
            cores_per_socket: None,
            memory_mib: Some(2048),
            firmware: Some("efi".into()),
            secure_boot: None,
            boot_disk_keys: Vec::new(),
            guest_id: None,
            guest_full_name: None,
            power_state: Some("poweredOff".into()),
            connection_state: None,
            hardware_version: None,
            template: None,
            change_tracking: None,
            vmx_path: None,
            disks: vec![disk(2000, 0), disk(2001, 1)],
            nics: Vec::new(),
            controllers: vec![crate::inventory::VirtualController {
                key: 1000,
                device_type: "VirtualLsiLogicController".into(),
                bus_number: 0,
            }],
        }
    }

    fn device(key: &str, target: &str, disk: bool) -> DeviceUrl {
        DeviceUrl {
            key: key.into(),
            import_key: String::new(),
            url: format!("https://esx/nfc/t/{target}"),
            target_id: Some(target.into()),
            disk,
            ssl_thumbprint: None,
            file_size: (!disk).then_some(8684),
        }
    }

    #[test]
    fn planned_files_keep_nvram_skip_isos_and_map_disks_by_key() {
        let vm = vm_with_two_disks();
        let info = vm.to_vm_info();
        // The server lists the second disk first.
        let devices = [
            device("/vm-42/VirtualLsiLogicController0:1", "disk-1.vmdk", true),
            device("/vm-42/VirtualLsiLogicController0:0", "disk-0.vmdk", true),
            device("/vm-42/nvram", "web.nvram", false),
            device("/vm-42/cdrom", "tools.iso", false),
        ];
        let stem = sanitize_stem(&info.name);
        let ovf = VmExportOptions::new(ExportFormat::Ovf, "/out");
        let (files, skipped) = plan_files(&vm, &info, &devices, &stem, &ovf).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web_01-disk-1.vmdk",
                "web_01-disk-0.vmdk",
                "web_01-web.nvram"
            ]
        );
        assert_eq!(skipped, ["tools.iso"]);
        let ids: Vec<Option<&str>> = files
            .iter()
            .map(|f| f.disk.as_ref().map(|d| d.id.as_str()))
            .collect();
        assert_eq!(ids, [Some("2001"), Some("2000"), None]);
        assert_eq!(files[2].estimate, 8684);
        assert_eq!(
            files[0].path,
            Some(PathBuf::from("/out/web_01-disk-1.vmdk"))
        );
        let raw = VmExportOptions::new(ExportFormat::Raw, "/out");
        let (files, _) = plan_files(&vm, &info, &devices, &stem, &raw).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["web_01-disk-1.raw", "web_01-disk-0.raw", "web_01-web.nvram"]
        );
        // No disk at all is an error, not an empty export.
        let e = plan_files(&vm, &info, &devices[2..], &stem, &ovf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn lease_meter_corrects_each_file_once() {
        let lease = LeaseProgress::default();
        let m = LeaseMeter::new(lease.clone(), [1000, 100]);
        m.correct(0, 400);
        // The file starts over and is opened again: no second correction.
        m.correct(0, 400);
        assert_eq!(m.expected.load(Ordering::Relaxed), 500);
        m.add(250);
        assert_eq!(lease.percent(), 50);
        m.correct(1, 50);
        m.correct(1, 50);
        assert_eq!(m.expected.load(Ordering::Relaxed), 450);
        m.rewind(250);
        m.add(1000);
        assert_eq!(
            lease.percent(),
            99,
            "never 100 % before the lease completes"
        );
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_neither_targets_nor_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.vmdk"),
            dir.path().join("b.vmdk"),
            dir.path().join("c.vmdk"),
        );
        let mut parts = PartFiles::default();
        for t in [&a, &b, &c] {
            std::fs::write(parts.add(t), b"data").unwrap();
        }
        // A file that appeared at a target meanwhile is never replaced.
        std::fs::write(&b, b"someone else's").unwrap();
        let e = parts.commit().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.vmdk"]);
        assert_eq!(std::fs::read(&b).unwrap(), b"someone else's");

        let mut parts = PartFiles::default();
        std::fs::write(parts.add(&a), b"data").unwrap();
        parts.commit().await.unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"data");
        assert!(!PartFiles::part_of(&a).exists());
    }

    #[test]
    fn padding_and_headers() {
        assert_eq!(padded(b"<a/>", 8).unwrap(), b"<a/>   \n");
        assert!(padded(b"<a/>", 4).is_none());
        let h = ustar_header("vm.mf", 100, 0).unwrap();
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert!(ustar_header(&"x".repeat(101), 1, 0).is_err());
    }
}
