//! Datastore files over HTTP (`/folder`): list datastores, read a file by
//! byte range, download it with resume, upload it whole.
//!
//! vSphere serves every datastore file at
//! `https://<host>/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`,
//! authenticated by the session cookie. [`DatastoreFiles`] speaks it:
//!
//! - [`DatastoreFiles::open`]: the file as an
//!   [`hypersdk_core::blocks::HttpSource`], a
//!   [`hypersdk_core::blocks::BlockSource`] whose every read is
//!   one `Range` request that must come back `206` with exactly the range
//!   asked for (a server that ignores `Range` is an error, never data);
//! - [`DatastoreFiles::download`]: the file into a local path, written to
//!   `<dest>.part` (sparse: zero blocks are holes) and renamed into place
//!   once complete. Progress is committed to `<dest>.part.resume` (the
//!   offset synced to disk, the size and `ETag` of the remote file) at most
//!   every [`DownloadOptions::commit_interval`]; a later call (after a
//!   failure, a kill or a reboot) resumes from the committed offset with a
//!   `Range` request, and starts over when the remote file changed (size
//!   or `ETag`);
//! - [`DatastoreFiles::upload`] and [`DatastoreFiles::upload_file`]: a
//!   whole-file `PUT` with a known `Content-Length`. `/folder` has no
//!   partial upload, so a retry restarts the file from its first byte:
//!   `upload_file` reopens the local file for each attempt; `upload` (any
//!   [`AsyncRead`]) retries only as long as nothing was read from it. A
//!   failed upload removes what it may have left on the datastore
//!   (`FileManager.DeleteDatastoreFile_Task`, best effort), so no
//!   half-written file stays where the file was meant to be;
//! - [`list_datastores`]: every datastore with its datacenter, type,
//!   capacity and free space, in one `ContainerView` read.
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client) -> hypersdk_core::Result<()> {
//! use hypersdk_core::blocks::BlockSource;
//! use hypersdk_core::model::Extent;
//! use hypersdk_vsphere::datastore::{DatastoreFiles, DatastorePath, DownloadOptions, list_datastores};
//!
//! for ds in list_datastores(client).await? {
//!     println!("[{}] in {}: {:?} bytes free", ds.name, ds.datacenter, ds.free_space);
//! }
//! let files = DatastoreFiles::new(client, "DC0");
//! let disk: DatastorePath = "[LocalDS_0] web01/web01-flat.vmdk".parse()?;
//! let mbr = files.open(&disk).await?.read_range(Extent::new(0, 512)).await?;
//! files.download(&disk, "/var/tmp/web01-flat.vmdk".as_ref(), DownloadOptions::default()).await?;
//! # let _ = mbr; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use hypersdk_core::blocks::{
    BlockSink, DEFAULT_IDLE_TIMEOUT, HttpSource, SparseFile, reqwest_error,
};
use hypersdk_core::digest::{Algorithm, Digests, MultiHasher};
use hypersdk_core::error::redact_url;
use hypersdk_core::model::Extent;
use hypersdk_core::progress::{Phase, Progress};
use hypersdk_core::retry::Backoff;
use hypersdk_core::{Error, ErrorKind, Result};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Mutex as AsyncMutex;
use url::Url;

use crate::client::Client;
use crate::property::retrieve;
use crate::soap::{Node, Request};
use crate::tasks::wait_for_task;
use crate::types::{
    MoRef, ObjectContent, ObjectSpec, PropertyFilterSpec, PropertySpec, SelectionSpec,
};

/// A file on a datastore, as vSphere writes it: `[datastore] dir/file.vmdk`.
///
/// Parsing checks the form and refuses paths that could leave the
/// datastore or confuse the URL: a `..` or `.` segment, a leading `/`, a
/// backslash, control characters, an empty datastore name.
///
/// ```
/// use hypersdk_vsphere::datastore::DatastorePath;
/// let p: DatastorePath = "[LocalDS_0] web01/web01-flat.vmdk".parse()?;
/// assert_eq!((p.datastore.as_str(), p.path.as_str()), ("LocalDS_0", "web01/web01-flat.vmdk"));
/// assert_eq!(p.to_string(), "[LocalDS_0] web01/web01-flat.vmdk");
/// assert!("[ds] ../etc/passwd".parse::<DatastorePath>().is_err());
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatastorePath {
    /// The datastore's name.
    pub datastore: String,
    /// The path inside the datastore, `/`-separated, without a leading
    /// `/` (empty for the datastore's root).
    pub path: String,
}

impl DatastorePath {
    /// `[datastore] path`, checked as [`FromStr`] does.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming what is wrong.
    pub fn new(datastore: impl Into<String>, path: impl Into<String>) -> Result<Self> {
        let p = DatastorePath {
            datastore: datastore.into(),
            path: path.into(),
        };
        p.check()?;
        Ok(p)
    }

    /// The file's name (the last segment of the path), if any.
    pub fn file_name(&self) -> Option<&str> {
        self.path.rsplit('/').next().filter(|s| !s.is_empty())
    }

    /// A path in the same datastore: `path` joined to this one's
    /// directory-like path.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a segment that is not allowed.
    pub fn join(&self, path: &str) -> Result<Self> {
        let joined = if self.path.is_empty() {
            path.to_owned()
        } else {
            format!("{}/{}", self.path.trim_end_matches('/'), path)
        };
        DatastorePath::new(self.datastore.clone(), joined)
    }

    fn check(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::invalid_input(format!(
                "datastore path '[{}] {}': {why}",
                self.datastore, self.path
            )))
        };
        if self.datastore.trim().is_empty() {
            return bad("the datastore name is empty");
        }
        if self.datastore.contains([']', '[']) || self.datastore.chars().any(char::is_control) {
            return bad("the datastore name contains '[', ']' or a control character");
        }
        if self.path.starts_with('/') {
            return bad("the path must be relative to the datastore (no leading '/')");
        }
        if self.path.contains('\\') || self.path.chars().any(char::is_control) {
            return bad("the path contains a backslash or a control character");
        }
        if self
            .path
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        {
            return bad("'.' and '..' segments are not allowed");
        }
        Ok(())
    }

    /// The path's non-empty segments.
    fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|s| !s.is_empty())
    }
}

impl FromStr for DatastorePath {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix('[') else {
            return Err(Error::invalid_input(format!(
                "datastore path '{s}' does not start with '[datastore]'"
            )));
        };
        let Some((datastore, path)) = rest.split_once(']') else {
            return Err(Error::invalid_input(format!(
                "datastore path '{s}' has no ']' after the datastore name"
            )));
        };
        DatastorePath::new(datastore, path.trim_start())
    }
}

impl fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "[{}]", self.datastore)
        } else {
            write!(f, "[{}] {}", self.datastore, self.path)
        }
    }
}

/// One datastore, as [`list_datastores`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatastoreInfo {
    /// The datastore's moref.
    pub moref: MoRef,
    /// Its name (`[name]` in datastore paths).
    pub name: String,
    /// `summary.url`: where the server mounts it (`ds:///vmfs/volumes/…`).
    pub url: Option<String>,
    /// `summary.capacity` in bytes.
    pub capacity: Option<u64>,
    /// `summary.freeSpace` in bytes.
    pub free_space: Option<u64>,
    /// `summary.type`: `VMFS`, `NFS`, `vsan`, `vvol`, `OTHER`, …
    pub kind: Option<String>,
    /// `summary.accessible`: whether a host can reach it now.
    pub accessible: Option<bool>,
    /// The inventory path of its datacenter below the root folder (`DC0`,
    /// `Europe/DC1`): the `dcPath` of its `/folder` URLs.
    pub datacenter: String,
}

/// Every datastore of every datacenter, sorted by datacenter then name.
///
/// One `ContainerView` over the root folder (datacenters and datastores),
/// read page by page; a datacenter inside folders costs one more read per
/// folder level to name its path.
///
/// # Errors
///
/// The mapped fault or transport error.
pub async fn list_datastores(client: &Client) -> Result<Vec<DatastoreInfo>> {
    Ok(datacenters_and_datastores(client).await?.1)
}

/// A datacenter as the import needs it.
#[derive(Debug, Clone)]
pub(crate) struct DatacenterInfo {
    /// Its inventory path below the root folder.
    pub(crate) path: String,
    /// `vmFolder`.
    pub(crate) vm_folder: Option<MoRef>,
    /// `hostFolder`.
    pub(crate) host_folder: Option<MoRef>,
    /// `network`: its networks and portgroups.
    pub(crate) networks: Vec<MoRef>,
}

/// Every datacenter and every datastore (sorted by datacenter, name).
pub(crate) async fn datacenters_and_datastores(
    client: &Client,
) -> Result<(Vec<DatacenterInfo>, Vec<DatastoreInfo>)> {
    let root = client.service_content().root_folder.clone();
    let objects = view_objects(
        client,
        &root,
        &["Datacenter", "Datastore"],
        vec![
            PropertySpec::new(
                "Datacenter",
                [
                    "name",
                    "parent",
                    "datastore",
                    "vmFolder",
                    "hostFolder",
                    "network",
                ],
            ),
            PropertySpec::new("Datastore", ["name", "summary"]),
        ],
    )
    .await?;
    let morefs = |o: &ObjectContent, p: &str| -> Vec<MoRef> {
        o.prop(p)
            .map(|n| n.children.iter().filter_map(Node::as_moref).collect())
            .unwrap_or_default()
    };
    let mut dc_of: HashMap<MoRef, String> = HashMap::new();
    let mut dcs = Vec::new();
    let mut stores = Vec::new();
    for o in &objects {
        match o.obj.kind.as_str() {
            "Datacenter" => {
                let path = datacenter_path(client, o).await?;
                for ds in morefs(o, "datastore") {
                    dc_of.insert(ds, path.clone());
                }
                dcs.push(DatacenterInfo {
                    path,
                    vm_folder: o.prop("vmFolder").and_then(Node::as_moref),
                    host_folder: o.prop("hostFolder").and_then(Node::as_moref),
                    networks: morefs(o, "network"),
                });
            }
            "Datastore" => stores.push(o),
            _ => {}
        }
    }
    let mut out: Vec<DatastoreInfo> = stores
        .into_iter()
        .map(|o| {
            let summary = o.prop("summary");
            let text = |k: &str| {
                summary
                    .and_then(|s| s.text_at(&[k]))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            let number = |k: &str| {
                summary
                    .and_then(|s| s.int_at(&[k]))
                    .and_then(|v| u64::try_from(v).ok())
            };
            DatastoreInfo {
                moref: o.obj.clone(),
                name: o
                    .text("name")
                    .map(str::to_owned)
                    .or_else(|| text("name"))
                    .unwrap_or_default(),
                url: text("url"),
                capacity: number("capacity"),
                free_space: number("freeSpace"),
                kind: text("type"),
                accessible: summary.and_then(|s| s.bool_at(&["accessible"])),
                datacenter: dc_of.get(&o.obj).cloned().unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.datacenter, &a.name).cmp(&(&b.datacenter, &b.name)));
    dcs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((dcs, out))
}

/// The inventory path of a datacenter (`name`, or `folder/…/name` when
/// it sits in folders below the root folder).
async fn datacenter_path(client: &Client, dc: &ObjectContent) -> Result<String> {
    let root = &client.service_content().root_folder;
    let mut parts = vec![dc.text("name").unwrap_or_default().to_owned()];
    let mut parent = dc.prop("parent").and_then(Node::as_moref);
    // Datacenters nest at most a few folders deep; the bound stops a
    // parent cycle a broken server could report.
    for _ in 0..64 {
        let Some(p) = parent.take() else { break };
        if &p == root || p.kind != "Folder" {
            break;
        }
        let props = crate::property::retrieve_one(client, &p, &["name", "parent"]).await?;
        parts.push(props.text("name").unwrap_or_default().to_owned());
        parent = props.prop("parent").and_then(Node::as_moref);
    }
    parts.reverse();
    Ok(parts.join("/"))
}

/// Reads `props` of every object of `types` below `container` through a
/// `ContainerView` (destroyed afterwards, best effort).
pub(crate) async fn view_objects(
    client: &Client,
    container: &MoRef,
    types: &[&str],
    props: Vec<PropertySpec>,
) -> Result<Vec<ObjectContent>> {
    let view_manager = client
        .service_content()
        .view_manager
        .as_ref()
        .ok_or_else(|| Error::unsupported("inventory views (no ViewManager)", "vsphere"))?;
    let mut req = Request::new("CreateContainerView", view_manager);
    req.moref("container", container);
    for t in types {
        req.text("type", t);
    }
    req.bool("recursive", true);
    let view = client
        .invoke_idempotent(&req)
        .await?
        .child("returnval")
        .and_then(Node::as_moref)
        .ok_or_else(|| Error::invalid_data("CreateContainerView", "no view returned"))?;
    let spec = PropertyFilterSpec::new(
        props,
        vec![
            ObjectSpec::new(view.clone())
                .skip(true)
                .select(SelectionSpec::traversal("view", "ContainerView", "view")),
        ],
    );
    let result = retrieve(client, &spec).await;
    if let Err(e) = client
        .invoke_idempotent(&Request::new("DestroyView", &view))
        .await
    {
        tracing::debug!(error = %e, "DestroyView failed");
    }
    result
}

/// The raw `ServiceContent` (for the managers [`crate::types::ServiceContent`]
/// does not model: `ovfManager`, `fileManager`, …).
pub(crate) async fn service_content_node(client: &Client) -> Result<Node> {
    let req = Request::new(
        "RetrieveServiceContent",
        &MoRef::new("ServiceInstance", "ServiceInstance"),
    );
    client
        .invoke_idempotent(&req)
        .await?
        .child("returnval")
        .cloned()
        .ok_or_else(|| Error::invalid_data("RetrieveServiceContent", "no service content returned"))
}

/// The manager `name` (`ovfManager`, `fileManager`) of the service content.
pub(crate) async fn manager(client: &Client, name: &str) -> Result<MoRef> {
    service_content_node(client)
        .await?
        .child(name)
        .and_then(Node::as_moref)
        .ok_or_else(|| {
            Error::unsupported(format!("{name} (not in the service content)"), "vsphere")
        })
}

/// How [`DatastoreFiles::download`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// Where progress goes ([`Phase::Transferring`]; bytes of the file).
    pub progress: Progress,
    /// The item name in progress events; the file name when `None`.
    pub item: Option<String>,
    /// Digests of the whole file to compute (bytes resumed from an earlier
    /// run are read back from the `.part` file and hashed too).
    pub digests: Vec<Algorithm>,
    /// Retry policy of each request and of resuming a cut body.
    pub backoff: Backoff,
    /// Longest wait for the next bytes before a body counts as cut.
    pub idle_timeout: Duration,
    /// Resume a `.part` file an earlier call left (default `true`); with
    /// `false` it is discarded and the download starts over, and a failed
    /// download removes its `.part` file.
    pub resume: bool,
    /// Replace a file already at the destination (default `false`: an
    /// [`Error::AlreadyExists`] before anything is fetched).
    pub overwrite: bool,
    /// Longest time between two commits of the progress (fsync of the
    /// `.part` file, then of the resume record). Default 1 s.
    pub commit_interval: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            progress: Progress::none(),
            item: None,
            digests: Vec::new(),
            backoff: Backoff::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            resume: true,
            overwrite: false,
            commit_interval: Duration::from_secs(1),
        }
    }
}

impl DownloadOptions {
    /// Sets [`DownloadOptions::progress`].
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets [`DownloadOptions::item`].
    #[must_use]
    pub fn with_item(mut self, item: impl Into<String>) -> Self {
        self.item = Some(item.into());
        self
    }

    /// Sets [`DownloadOptions::digests`].
    #[must_use]
    pub fn with_digests(mut self, algorithms: &[Algorithm]) -> Self {
        self.digests = algorithms.to_vec();
        self
    }

    /// Sets [`DownloadOptions::backoff`].
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`DownloadOptions::idle_timeout`].
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`DownloadOptions::resume`].
    #[must_use]
    pub fn with_resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Sets [`DownloadOptions::overwrite`].
    #[must_use]
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Sets [`DownloadOptions::commit_interval`].
    #[must_use]
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadReport {
    /// Where the file is now.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Bytes fetched by this call.
    pub bytes_fetched: u64,
    /// Bytes an earlier call had committed and this one did not fetch.
    pub bytes_resumed: u64,
    /// Digests of the whole file, when asked for.
    pub digests: Option<Digests>,
    /// Wall time of this call.
    pub elapsed: Duration,
}

/// How [`DatastoreFiles::upload`] and [`DatastoreFiles::upload_file`] run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Where progress goes ([`Phase::Transferring`]; bytes sent).
    pub progress: Progress,
    /// The item name in progress events; the file name when `None`.
    pub item: Option<String>,
    /// Retry policy. Each retry sends the whole file again.
    pub backoff: Backoff,
    /// Replace a file already on the datastore (default `false`: an
    /// [`Error::AlreadyExists`] before anything is sent).
    pub overwrite: bool,
    /// Longest wait for the server's answer once the body is sent.
    pub idle_timeout: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            progress: Progress::none(),
            item: None,
            backoff: Backoff::default(),
            overwrite: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl UploadOptions {
    /// Sets [`UploadOptions::progress`].
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets [`UploadOptions::item`].
    #[must_use]
    pub fn with_item(mut self, item: impl Into<String>) -> Self {
        self.item = Some(item.into());
        self
    }

    /// Sets [`UploadOptions::backoff`].
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`UploadOptions::overwrite`].
    #[must_use]
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Sets [`UploadOptions::idle_timeout`].
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
}

/// The files of the datastores of one datacenter, over `/folder`.
///
/// Cheap to clone. Requests use the client's
/// [`transfer_http`](Client::transfer_http) (same TLS trust and pinning as
/// the SOAP calls) and its session cookie, renewed once after a `401`.
#[derive(Debug, Clone)]
pub struct DatastoreFiles {
    client: Client,
    datacenter: String,
}

impl DatastoreFiles {
    /// The files of datacenter `datacenter_path` (its inventory path below
    /// the root folder: `DC0`, `Europe/DC1`; `ha-datacenter` on ESXi).
    pub fn new(client: &Client, datacenter_path: &str) -> Self {
        DatastoreFiles {
            client: client.clone(),
            datacenter: datacenter_path.trim_matches('/').to_owned(),
        }
    }

    /// The datacenter path given to [`DatastoreFiles::new`].
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// `https://host/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`,
    /// each path segment percent-encoded.
    pub fn url(&self, path: &DatastorePath) -> Url {
        let mut url = self.client.base_url();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.clear().push("folder");
            for s in path.segments() {
                segments.push(s);
            }
        }
        url.query_pairs_mut()
            .clear()
            .append_pair("dcPath", &self.datacenter)
            .append_pair("dsName", &path.datastore);
        url
    }

    /// The file as a range-readable source: a `HEAD` for its size and
    /// `ETag`, then one `Range` request per read, each required to come
    /// back `206` with exactly the range asked for.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such file (or datacenter or
    /// datastore: vSphere answers 404 for all three), the request's error
    /// otherwise.
    pub async fn open(&self, path: &DatastorePath) -> Result<HttpSource> {
        self.source(path, Backoff::default(), DEFAULT_IDLE_TIMEOUT)
            .await
    }

    async fn source(
        &self,
        path: &DatastorePath,
        backoff: Backoff,
        idle_timeout: Duration,
    ) -> Result<HttpSource> {
        need_file(path)?;
        HttpSource::builder(self.url(path).as_str())
            .client(self.client.transfer_http().clone())
            .auth(self.client.session_auth())
            .backoff(backoff)
            .idle_timeout(idle_timeout)
            .open()
            .await
            .map_err(|e| name_path(e, path))
    }

    /// The size of the file, or `None` when there is none.
    ///
    /// # Errors
    ///
    /// The request's error (a missing file is `Ok(None)`).
    pub async fn size(&self, path: &DatastorePath) -> Result<Option<u64>> {
        match self.open(path).await {
            Ok(source) => Ok(Some(hypersdk_core::blocks::BlockSource::len(&source))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Downloads the file to `dest`; see the [module documentation](self)
    /// for how it resumes.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] when `dest` exists and
    /// [`DownloadOptions::overwrite`] is off; [`Error::NotFound`] for a
    /// missing file; [`Error::InvalidData`] when the server ignores
    /// `Range` or sends another range; I/O errors naming the local file.
    /// On error nothing is at `dest` (an earlier file there is left as it
    /// was); the `.part` file and its resume record stay for a later call
    /// unless [`DownloadOptions::resume`] is off.
    ///
    /// # Cancellation
    ///
    /// Dropping the future leaves the `.part` file and the last committed
    /// progress, ready to resume.
    pub async fn download(
        &self,
        path: &DatastorePath,
        dest: &Path,
        opts: DownloadOptions,
    ) -> Result<DownloadReport> {
        let started = Instant::now();
        if !opts.overwrite && tokio::fs::try_exists(dest).await.unwrap_or(false) {
            return Err(Error::already_exists(format!(
                "download destination '{}'",
                dest.display()
            )));
        }
        let source = self
            .source(path, opts.backoff.clone(), opts.idle_timeout)
            .await?;
        let len = hypersdk_core::blocks::BlockSource::len(&source);
        let part = SparseFile::part_path_for(dest)?;
        let record_path = resume_record_path(&part);
        let expected = ResumeRecord {
            version: 1,
            url: redact_url(self.url(path).as_str()),
            len,
            etag: source.etag().map(str::to_owned),
            committed: 0,
        };
        let mut offset = 0u64;
        let sink = match (opts.resume, read_record(&record_path).await) {
            (true, Some(rec))
                if rec.same_file(&expected)
                    && rec.committed <= len
                    && tokio::fs::try_exists(&part).await.unwrap_or(false) =>
            {
                let sink = SparseFile::resume(dest, len).await?;
                // Writes after the last commit may have landed or not.
                if rec.committed < len {
                    sink.punch_hole(Extent::new(rec.committed, len - rec.committed))
                        .await?;
                }
                offset = rec.committed;
                tracing::info!(
                    file = %path,
                    resume_at = offset,
                    len,
                    "resuming datastore download"
                );
                sink
            }
            (_, rec) => {
                if rec.is_some() {
                    tracing::info!(file = %path, "the remote file changed or the .part is gone: downloading from the start");
                }
                let sink = SparseFile::create(dest, len).await?;
                write_record(&record_path, &expected).await?;
                sink
            }
        };
        let result = self
            .fetch_into(path, &source, &sink, &record_path, expected, offset, &opts)
            .await;
        match result {
            Ok((fetched, digests)) => {
                let final_path = sink.commit().await?;
                remove_quietly(&record_path).await;
                Ok(DownloadReport {
                    path: final_path,
                    len,
                    bytes_fetched: fetched,
                    bytes_resumed: offset,
                    digests,
                    elapsed: started.elapsed(),
                })
            }
            Err(e) => {
                if !opts.resume {
                    let _ = sink.abort().await;
                    remove_quietly(&record_path).await;
                }
                Err(e)
            }
        }
    }

    /// The body of [`DatastoreFiles::download`] once the sink is ready:
    /// hashes what was resumed, streams the rest in, commits on the way.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_into(
        &self,
        path: &DatastorePath,
        source: &HttpSource,
        sink: &SparseFile,
        record_path: &Path,
        mut record: ResumeRecord,
        offset: u64,
        opts: &DownloadOptions,
    ) -> Result<(u64, Option<Digests>)> {
        const WRITE_CHUNK: usize = 1 << 20;
        let len = record.len;
        let item = opts
            .item
            .clone()
            .or_else(|| path.file_name().map(str::to_owned))
            .unwrap_or_else(|| path.to_string());
        let tracker = opts.progress.item(Phase::Transferring, item, Some(len));
        // Hashed on threads of their own: not on the runtime's worker while
        // the body streams in.
        let mut hasher = (!opts.digests.is_empty()).then(|| MultiHasher::offloaded(&opts.digests));
        if let Some(h) = hasher.as_mut() {
            let mut pos = 0;
            while pos < offset {
                let n = (offset - pos).min(8 << 20);
                h.update(sink.read_back(Extent::new(pos, n)).await?);
                pos += n;
            }
        }
        tracker.set(offset);
        let mut pos = offset;
        let mut fetched = 0u64;
        let mut last_commit = Instant::now();
        if offset < len {
            let mut body = hypersdk_core::blocks::BlockSource::read_stream(
                source,
                Extent::new(offset, len - offset),
            )
            .await
            .map_err(|e| name_path(e, path))?;
            let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
            loop {
                let chunk = body.try_next().await.map_err(|e| name_path(e, path))?;
                let end = chunk.is_none();
                if let Some(c) = chunk {
                    buf.extend_from_slice(&c);
                }
                if buf.len() >= WRITE_CHUNK || (end && !buf.is_empty()) {
                    let data = buf.split().freeze();
                    let n = data.len() as u64;
                    if let Some(h) = hasher.as_mut() {
                        h.update(data.clone());
                    }
                    sink.write_at(pos, data).await?;
                    pos += n;
                    fetched += n;
                    tracker.set(pos);
                    if last_commit.elapsed() >= opts.commit_interval && pos < len {
                        sink.flush().await?;
                        record.committed = pos;
                        write_record(record_path, &record).await?;
                        last_commit = Instant::now();
                    }
                }
                if end {
                    break;
                }
            }
        }
        if pos != len {
            return Err(Error::invalid_data(
                format!("GET {}", redact_url(self.url(path).as_str())),
                format!("the file ended at byte {pos} of {len}"),
            ));
        }
        sink.flush().await?;
        tracker.finish();
        let digests = match hasher {
            Some(h) => Some(h.finish()?),
            None => None,
        };
        Ok((fetched, digests))
    }

    /// Uploads `len` bytes read from `src` as the file `path` (a `PUT`
    /// with `Content-Length`), creating its directories.
    ///
    /// `/folder` has no partial upload: a retry sends the file again from
    /// its first byte, which a one-pass reader cannot do, so a failure is
    /// retried (under [`UploadOptions::backoff`]) only while nothing was
    /// read from `src` yet; use [`DatastoreFiles::upload_file`] for a
    /// local file, which retries every failure. A reader that ends before
    /// `len` bytes, or has more, fails the upload before its last bytes
    /// are sent.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] when the file exists and
    /// [`UploadOptions::overwrite`] is off; [`Error::InvalidInput`] when
    /// `src` does not hold exactly `len` bytes; the request's error. After
    /// a failure that may have created the file, it is deleted (best
    /// effort).
    pub async fn upload(
        &self,
        path: &DatastorePath,
        src: impl AsyncRead + Send + Unpin + 'static,
        len: u64,
        opts: UploadOptions,
    ) -> Result<()> {
        let reader: SharedReader = Arc::new(AsyncMutex::new(Box::new(src)));
        let consumed = Arc::new(AtomicU64::new(0));
        self.upload_with(path, len, &opts, |_attempt| {
            let reader = Arc::clone(&reader);
            let consumed = Arc::clone(&consumed);
            async move {
                if consumed.load(Ordering::Relaxed) > 0 {
                    return Err(Error::other(
                        "the source was partly read by a failed attempt and cannot be read again",
                    ));
                }
                Ok(Attempt {
                    reader,
                    consumed,
                    one_shot: true,
                })
            }
        })
        .await
    }

    /// Uploads the local file `local` as the file `path`. Every retryable
    /// failure (under [`UploadOptions::backoff`]) reopens `local` and sends
    /// it again from its first byte.
    ///
    /// # Errors
    ///
    /// As [`DatastoreFiles::upload`], plus [`Error::NotFound`] for a
    /// missing `local`.
    pub async fn upload_file(
        &self,
        path: &DatastorePath,
        local: &Path,
        opts: UploadOptions,
    ) -> Result<()> {
        let object = format!("file '{}'", local.display());
        let len = tokio::fs::metadata(local)
            .await
            .map_err(|e| Error::io(object.clone(), e))?
            .len();
        let local = local.to_path_buf();
        self.upload_with(path, len, &opts, |_attempt| {
            let local = local.clone();
            let object = object.clone();
            async move {
                let file = tokio::fs::File::open(&local)
                    .await
                    .map_err(|e| Error::io(object, e))?;
                Ok(Attempt {
                    reader: Arc::new(AsyncMutex::new(Box::new(file))),
                    consumed: Arc::new(AtomicU64::new(0)),
                    one_shot: false,
                })
            }
        })
        .await
    }

    async fn upload_with<F, Fut>(
        &self,
        path: &DatastorePath,
        len: u64,
        opts: &UploadOptions,
        mut open: F,
    ) -> Result<()>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt>>,
    {
        need_file(path)?;
        opts.backoff.validate()?;
        let url = self.url(path);
        let display = redact_url(url.as_str());
        if !opts.overwrite && self.size(path).await?.is_some() {
            return Err(Error::already_exists(format!("datastore file '{path}'")));
        }
        let item = opts
            .item
            .clone()
            .or_else(|| path.file_name().map(str::to_owned))
            .unwrap_or_else(|| path.to_string());
        let tracker = Arc::new(opts.progress.item(Phase::Transferring, item, Some(len)));
        let started = tokio::time::Instant::now();
        let mut attempts = 0u32;
        let mut refreshed = false;
        loop {
            attempts += 1;
            let attempt = open(attempts).await?;
            let one_shot = attempt.one_shot;
            let consumed = Arc::clone(&attempt.consumed);
            tracker.set(0);
            let result = self
                .put_once(&url, &display, attempt, len, Arc::clone(&tracker), opts)
                .await;
            let error = match result {
                Ok(()) => {
                    tracker.finish();
                    return Ok(());
                }
                Err(e) => e,
            };
            let untouched = consumed.load(Ordering::Relaxed) == 0;
            if error.kind() == ErrorKind::Unauthenticated && !refreshed && (untouched || !one_shot)
            {
                refreshed = true;
                if self.client.session_auth().refresh().await.unwrap_or(false) {
                    continue;
                }
            }
            let delay = if one_shot && !untouched {
                None
            } else {
                opts.backoff.next_delay(attempts, started.elapsed(), &error)
            };
            match delay {
                Some(delay) => {
                    tracing::warn!(
                        target: "hypersdk_core::retry",
                        file = %path,
                        attempt = attempts,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "datastore upload failed; sending the whole file again"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => {
                    if !untouched || attempts > 1 {
                        self.delete_quietly(path).await;
                    }
                    if attempts > 1 && error.is_retryable() {
                        return Err(Error::RetriesExhausted {
                            operation: format!("PUT {display}"),
                            attempts,
                            elapsed: started.elapsed(),
                            last: Box::new(error),
                        });
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One `PUT` of the whole file.
    async fn put_once(
        &self,
        url: &Url,
        display: &str,
        attempt: Attempt,
        len: u64,
        tracker: Arc<hypersdk_core::progress::ItemProgress>,
        opts: &UploadOptions,
    ) -> Result<()> {
        let auth = self.client.session_auth().headers().await?;
        let failure: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
        let body = exact_stream(
            attempt.reader,
            len,
            attempt.consumed,
            Arc::clone(&failure),
            display.to_owned(),
        )
        .inspect_ok(move |c| tracker.add(c.len() as u64));
        let request = self
            .client
            .transfer_http()
            .put(url.clone())
            .headers(auth)
            .header(header::CONTENT_LENGTH, HeaderValue::from(len))
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(reqwest::Body::wrap_stream(body));
        // No total timeout: the body is sent while this waits, and the
        // transfer client bounds a stall with its idle timeout.
        let response = request.send().await;
        let take_failure = || failure.lock().ok().and_then(|mut f| f.take());
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                // A source that was too short or too long explains the
                // failed request better than the transport does.
                return Err(
                    take_failure().unwrap_or_else(|| reqwest_error(&Method::PUT, url.as_str(), e))
                );
            }
        };
        if let Some(e) = take_failure() {
            return Err(e);
        }
        let status = response.status();
        if matches!(
            status,
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT
        ) {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::time::timeout(opts.idle_timeout, response.text())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        Err(Error::from_http_status(
            "PUT",
            display,
            status.as_u16(),
            retry_after,
            &body.chars().take(512).collect::<String>(),
        ))
    }

    /// Deletes the file with `FileManager.DeleteDatastoreFile_Task`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such file (or datacenter), the
    /// task's mapped fault otherwise.
    pub async fn delete(&self, path: &DatastorePath) -> Result<()> {
        need_file(path)?;
        let file_manager = manager(&self.client, "fileManager").await?;
        let dc = crate::inventory::find_by_inventory_path(&self.client, &self.datacenter)
            .await?
            .filter(|m| m.kind == "Datacenter")
            .ok_or_else(|| Error::not_found(format!("datacenter '{}'", self.datacenter)))?;
        let mut req = Request::new("DeleteDatastoreFile_Task", &file_manager);
        req.text("name", &path.to_string()).moref("datacenter", &dc);
        let task = self
            .client
            .invoke(&req)
            .await?
            .child("returnval")
            .and_then(Node::as_moref)
            .ok_or_else(|| Error::invalid_data("DeleteDatastoreFile_Task", "no task returned"))?;
        wait_for_task(
            &self.client,
            &task,
            &format!("DeleteDatastoreFile_Task of '{path}'"),
        )
        .await?;
        Ok(())
    }

    async fn delete_quietly(&self, path: &DatastorePath) {
        match self.delete(path).await {
            Ok(()) => tracing::info!(file = %path, "removed the partly uploaded file"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path, error = %e, "cannot remove the partly uploaded file")
            }
        }
    }
}

/// Refuses a path that names no file.
fn need_file(path: &DatastorePath) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::invalid_input(format!(
            "datastore path '{path}' names no file"
        )));
    }
    Ok(())
}

/// Puts the datastore path into a not-found error, which otherwise names
/// only the URL.
fn name_path(e: Error, path: &DatastorePath) -> Error {
    match e {
        Error::NotFound { object, source } => Error::NotFound {
            object: format!("datastore file '{path}' ({object})"),
            source,
        },
        e => e,
    }
}

type SharedReader = Arc<AsyncMutex<Box<dyn AsyncRead + Send + Unpin>>>;

/// The source of one upload attempt.
struct Attempt {
    reader: SharedReader,
    /// Bytes read from `reader` by this attempt.
    consumed: Arc<AtomicU64>,
    /// Whether `reader` cannot be read again from its start.
    one_shot: bool,
}

/// Exactly `len` bytes of `reader` as a body stream. A reader that ends
/// early or holds more than `len` bytes ends the stream with an error
/// *instead of* its last chunk (so the server never receives a complete
/// body of the wrong file), and the error is also left in `failure` for
/// the caller, since the HTTP client reports a body error as its own.
fn exact_stream(
    reader: SharedReader,
    len: u64,
    consumed: Arc<AtomicU64>,
    failure: Arc<std::sync::Mutex<Option<Error>>>,
    display: String,
) -> Pin<Box<dyn Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send>> {
    const CHUNK: u64 = 256 << 10;
    struct State {
        reader: SharedReader,
        remaining: u64,
        len: u64,
        consumed: Arc<AtomicU64>,
        failure: Arc<std::sync::Mutex<Option<Error>>>,
        display: String,
        done: bool,
    }
    let state = State {
        reader,
        remaining: len,
        len,
        consumed,
        failure,
        display,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let fail = |s: &mut State, e: Error| {
            s.done = true;
            let io = std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
            if let Ok(mut f) = s.failure.lock() {
                *f = Some(e);
            }
            io
        };
        if s.remaining == 0 {
            // Only an empty body gets here: check the source is empty too.
            s.done = true;
            let mut probe = [0u8; 1];
            let mut reader = s.reader.lock().await;
            return match reader.read(&mut probe).await {
                Ok(0) => None,
                Ok(_) => {
                    drop(reader);
                    let e = Error::invalid_input(format!(
                        "upload to {}: the source holds more than the {} bytes announced",
                        s.display, s.len
                    ));
                    Some((Err(fail(&mut s, e)), s))
                }
                Err(e) => {
                    drop(reader);
                    let e = Error::io(format!("the source of the upload to {}", s.display), e);
                    Some((Err(fail(&mut s, e)), s))
                }
            };
        }
        let want = s.remaining.min(CHUNK) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let mut reader = s.reader.lock().await;
        while buf.len() < want {
            let before = buf.len();
            let mut limited = (&mut *reader).take((want - before) as u64);
            match limited.read_buf(&mut buf).await {
                Ok(0) => {
                    drop(reader);
                    let got = s.len - s.remaining + buf.len() as u64;
                    let e = Error::invalid_input(format!(
                        "upload to {}: the source ended after {got} of {} bytes",
                        s.display, s.len
                    ));
                    return Some((Err(fail(&mut s, e)), s));
                }
                Ok(n) => {
                    s.consumed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    drop(reader);
                    let e = Error::io(format!("the source of the upload to {}", s.display), e);
                    return Some((Err(fail(&mut s, e)), s));
                }
            }
        }
        s.remaining -= buf.len() as u64;
        if s.remaining == 0 {
            // Hold the last chunk back until the source is known to end here.
            let mut probe = [0u8; 1];
            match reader.read(&mut probe).await {
                Ok(0) => {}
                Ok(_) => {
                    drop(reader);
                    let e = Error::invalid_input(format!(
                        "upload to {}: the source holds more than the {} bytes announced",
                        s.display, s.len
                    ));
                    return Some((Err(fail(&mut s, e)), s));
                }
                Err(e) => {
                    drop(reader);
                    let e = Error::io(format!("the source of the upload to {}", s.display), e);
                    return Some((Err(fail(&mut s, e)), s));
                }
            }
        }
        drop(reader);
        s.done = s.remaining == 0;
        Some((Ok(buf.freeze()), s))
    })
    .boxed()
}

/// The progress record of a `.part` download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResumeRecord {
    version: u32,
    /// The URL, redacted (it is compared, not used).
    url: String,
    len: u64,
    etag: Option<String>,
    /// Bytes from the start known to be synced to the `.part` file.
    committed: u64,
}

impl ResumeRecord {
    fn same_file(&self, other: &ResumeRecord) -> bool {
        self.version == other.version
            && self.url == other.url
            && self.len == other.len
            && self.etag == other.etag
    }
}

fn resume_record_path(part: &Path) -> PathBuf {
    let mut name = part
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".resume");
    part.with_file_name(name)
}

async fn read_record(path: &Path) -> Option<ResumeRecord> {
    let bytes = tokio::fs::read(path).await.ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable resume record");
            None
        }
    }
}

async fn write_record(path: &Path, record: &ResumeRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| Error::other(format!("cannot encode the resume record: {e}")))?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        hypersdk_core::fsutil::write_atomic(&path, &bytes, Some(0o600))
    })
    .await
    .map_err(|e| Error::other(format!("writing the resume record failed: {e}")))?
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove the resume record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths_parse_and_print() {
        let p: DatastorePath = " [ds 1]  vm one/disk #1.vmdk".parse().unwrap();
        assert_eq!(p.datastore, "ds 1");
        assert_eq!(p.path, "vm one/disk #1.vmdk");
        assert_eq!(p.file_name(), Some("disk #1.vmdk"));
        assert_eq!(p.to_string(), "[ds 1] vm one/disk #1.vmdk");
        let root: DatastorePath = "[ds]".parse().unwrap();
        assert_eq!(root.path, "");
        assert_eq!(root.file_name(), None);
        assert_eq!(root.to_string(), "[ds]");
        assert_eq!(root.join("a/b.vmdk").unwrap().to_string(), "[ds] a/b.vmdk");
        for bad in [
            "ds/a.vmdk",
            "[ds a.vmdk",
            "[] a.vmdk",
            "[ds] /etc/passwd",
            "[ds] a/../../b",
            "[ds] ./a",
            "[ds] a\\b",
            "[ds] a\nb",
        ] {
            let e = bad.parse::<DatastorePath>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}: {e}");
        }
    }

    #[test]
    fn resume_records_match_only_the_same_file() {
        let a = ResumeRecord {
            version: 1,
            url: "https://h/folder/a".into(),
            len: 10,
            etag: Some("\"x\"".into()),
            committed: 4,
        };
        let mut b = a.clone();
        b.committed = 0;
        assert!(a.same_file(&b));
        b.len = 11;
        assert!(!a.same_file(&b));
        let mut c = a.clone();
        c.etag = None;
        assert!(!a.same_file(&c));
        assert_eq!(
            resume_record_path(Path::new("/x/disk.raw.part")),
            Path::new("/x/disk.raw.part.resume")
        );
    }

    #[tokio::test]
    async fn exact_stream_refuses_short_and_long_sources() {
        async fn run(data: &'static [u8], len: u64) -> (Vec<u8>, Option<Error>) {
            let reader: SharedReader = Arc::new(AsyncMutex::new(Box::new(data)));
            let failure: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
            let mut s = exact_stream(
                reader,
                len,
                Arc::default(),
                Arc::clone(&failure),
                "t".into(),
            );
            let mut out = Vec::new();
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => out.extend_from_slice(&c),
                    Err(_) => break,
                }
            }
            let f = failure.lock().unwrap().take();
            (out, f)
        }
        let (out, f) = run(b"hello", 5).await;
        assert_eq!(out, b"hello");
        assert!(f.is_none());
        let (out, f) = run(b"hell", 5).await;
        assert!(out.is_empty(), "no complete body of a short source");
        assert!(f.unwrap().to_string().contains("ended after 4 of 5"));
        let (out, f) = run(b"hello!", 5).await;
        assert!(out.is_empty(), "the last chunk is held back");
        assert!(f.unwrap().to_string().contains("more than the 5 bytes"));
        let (out, f) = run(b"", 0).await;
        assert!(out.is_empty() && f.is_none());
    }
}
