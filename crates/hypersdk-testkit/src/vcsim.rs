//! A launcher for the vcsim test harness: VMware's vSphere simulator
//! (govmomi 0.24.2 from Debian) plus what it lacks and hypersdk tests need.
//!
//! [`Vcsim::builder`] builds the Go harness once per `target/` (cached,
//! keyed by a hash of its sources; see `crates/hypersdk-testkit/vcsim/`),
//! starts it on a free loopback port, reads its URL, certificate and
//! thumbprints from the JSON line it prints, and kills it when the [`Vcsim`]
//! is dropped (also on a test panic; the process also exits by itself when
//! the test process dies, because its stdin pipe closes).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hypersdk_testkit::vcsim::VcsimError> {
//! use hypersdk_testkit::vcsim::{MethodFault, Vcsim};
//!
//! let sim = Vcsim::builder().standalone_hosts(0).vms_per_pool(100).start().await?;
//! let url = sim.url(); // https://127.0.0.1:PORT/sdk
//! let client = sim.reqwest_builder().build()?; // trusts the harness CA
//! sim.fail_method(MethodFault::fault("RetrievePropertiesEx", "SystemError").times(2)).await?;
//! let inventory = sim.inventory().await?; // what vcsim holds, without SOAP
//! assert_eq!(inventory.vms.len(), 100);
//! # let _ = (url, client); Ok(()) }
//! ```
//!
//! # What the harness adds to vcsim 0.24
//!
//! - `VirtualMachine.ExportVm` (VM must be powered off, as on vSphere) and
//!   `VirtualMachineSnapshot.ExportSnapshot`: an `HttpNfcLease` in state
//!   `ready` with one deviceUrl per disk,
//!   `https://*/nfc/<lease>/disk-N.vmdk`, key
//!   `/<vm>/<ControllerType><bus>:<unit>`, `sslThumbprint` = the server's
//!   SHA-1 thumbprint, `leaseTimeout` 300. A GET serves the disk's backing
//!   file with `Range` support. Replace `*` with the host:port of
//!   [`Vcsim::url`], as for a direct ESXi connection.
//! - `OvfManager.CreateDescriptor`: an OVF 1.0 descriptor built from the
//!   VM's config that vcsim's own `CreateImportSpec` reads back.
//! - Paging: `RetrievePropertiesEx` honours `options.maxObjects` and returns
//!   a `token`; `ContinueRetrievePropertiesEx` returns the next page (with a
//!   fresh token while more remain; a used token is invalid afterwards:
//!   `InvalidArgument` fault); `CancelRetrievePropertiesEx` drops the rest.
//! - NFC uploads (`ImportVApp` lease URLs, PUT or POST) are written to the
//!   imported VM's disk file and listed by [`Vcsim::uploaded_files`].
//! - Changed block tracking: `ReconfigVM_Task(changeTrackingEnabled=true)`
//!   starts per-disk tracking over the disk's `-flat.vmdk` in 64 KiB
//!   blocks; disk backings get a `changeId` (`52 3c … 4a/N`, N counting
//!   change sets) that snapshots keep as of their creation; writes through
//!   [`Vcsim::seed_disk_file`], [`Vcsim::write_disk_at`] and
//!   [`Vcsim::zero_disk_range`] on the flat file (and NFC uploads) record
//!   change sets; `VirtualMachine.QueryChangedDiskAreas` answers from them
//!   (`"*"` = allocated areas), one window at a time
//!   ([`Vcsim::set_cbt`]), `FileFault` when tracking is off or the change
//!   id unknown. [`Vcsim::cbt_state`] shows what was recorded.
//! - Lease timeouts enforced (see [`VcsimBuilder::lease_timeout`],
//!   [`Vcsim::leases`], [`Vcsim::expire_leases`]).
//! - Strict credentials ([`Vcsim::username`], [`Vcsim::password`]); vcsim
//!   alone accepts any non-empty pair.
//! - TLS with a fresh P-256 certificate for `127.0.0.1`/`localhost`, signed
//!   by a fresh CA ([`Vcsim::ca_pem`]); rustls verifies it normally
//!   (vcsim's built-in RSA-1024 CA certificate is rejected by rustls).
//! - A control API on the same server under `/_hypersdk/` (documented in
//!   `crates/hypersdk-testkit/vcsim/README.md`), wrapped by the methods of
//!   [`Vcsim`]: seed and read disk bytes, method faults, transfer cuts,
//!   slow or failing leases, session expiry, the inventory as JSON, the
//!   upload log and per-method call counts.
//!
//! # vcsim 0.24 behaviour tests must expect
//!
//! See `../shared/notes/vsphere-api.md` §9–10. In short: tasks complete
//! synchronously; import lease URLs are always `https://*/nfc/…` (even with
//! [`VcsimBuilder::tls`] off); without a session `RetrievePropertiesEx`
//! answers 200 with `NotAuthenticated` in each object's `missingSet`, not a
//! fault; `Login` with a still-valid session cookie gives `InvalidLogin`;
//! `/folder` needs no authentication; disks report `capacityInKB` only;
//! `simulator.Map` is process-global, so each [`Vcsim`] is its own process.
//!
//! # Prerequisites
//!
//! `golang-1.19-go`, `golang-github-vmware-govmomi-dev` and
//! `golang-github-google-uuid-dev` (`scripts/test.sh` installs them). When
//! they are missing, [`VcsimBuilder::start`] fails with
//! [`VcsimError::MissingPrerequisite`], whose message is the `apt-get`
//! command to run; tests never skip silently. Environment overrides:
//! `HYPERSDK_GO` (the go binary), `HYPERSDK_VCSIM_BIN` (a prebuilt harness),
//! `HYPERSDK_VCSIM_LOG=1` (copy the harness log to stderr when it stops).
//!
//! This module is test support, not a stable API.

mod build;
mod control;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use url::Url;

pub use build::{DEBIAN_PACKAGES, INSTALL_COMMAND};
pub use control::{
    ByteArea, CbtChange, CbtConfig, CbtDisk, CbtSettings, CbtState, CutTransfer, DiskFile,
    InvDatastore, InvDisk, InvEntity, InvHost, InvNic, InvSnapshot, InvVm, Inventory, LeaseFault,
    LeaseStatus, MethodFault, SeededDisk, StarAnswer, UploadedFile,
};

/// Errors of the launcher and the control API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VcsimError {
    /// A build prerequisite is not installed.
    #[error(
        "vcsim harness: {what} is missing; install the Debian packages with: {command} \
         (as root, or prefix it with sudo)"
    )]
    MissingPrerequisite {
        /// What is missing.
        what: String,
        /// The command that installs it.
        command: String,
    },
    /// `go build` failed.
    #[error("vcsim harness: build failed ({status}): {command}\n{log}")]
    Build {
        /// The command that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// Its output.
        log: String,
    },
    /// The harness did not start.
    #[error("vcsim harness: {message}\n--- harness log (tail) ---\n{log_tail}")]
    Startup {
        /// What went wrong.
        message: String,
        /// The end of the harness's log.
        log_tail: String,
    },
    /// A control API call was refused.
    #[error("vcsim harness: control {route} answered HTTP {status}: {body}")]
    Control {
        /// The route (`/_hypersdk/...`).
        route: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A local I/O error.
    #[error("vcsim harness: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP error talking to the control API.
    #[error("vcsim harness: control request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Unexpected JSON from the harness.
    #[error("vcsim harness: bad JSON from the harness: {0}")]
    Json(#[from] serde_json::Error),
}

/// Options of a simulator instance; see [`Vcsim::builder`].
///
/// The inventory follows vcsim's `Model`: per datacenter, `standalone_hosts`
/// hosts (each with its own compute resource and root pool) and `clusters`
/// clusters of `cluster_hosts` hosts (each cluster with a root pool plus
/// `resource_pools` child pools); `vms_per_pool` VMs are created in every
/// standalone host's pool and in every cluster's root pool. Names are
/// `DC0`, `DC0_H0`, `DC0_C0`, `DC0_C0_H0`, `DC0_H0_VM0`,
/// `DC0_C0_RP0_VM0`, `LocalDS_0`, …
///
/// The default is vcsim's VPX model: 1 datacenter, 1 standalone host,
/// 1 cluster of 3 hosts, 1 datastore, 1 portgroup, 2 VMs per pool (4 VMs).
/// For 1000 VMs: `.standalone_hosts(0).vms_per_pool(1000)`.
#[derive(Debug, Clone)]
#[must_use]
pub struct VcsimBuilder {
    tls: bool,
    esx: bool,
    username: String,
    password: String,
    datacenters: Option<u32>,
    clusters: Option<u32>,
    cluster_hosts: Option<u32>,
    standalone_hosts: Option<u32>,
    vms_per_pool: Option<u32>,
    resource_pools: Option<u32>,
    datastores: Option<u32>,
    folders: Option<u32>,
    portgroups: Option<u32>,
    autostart: bool,
    session_idle_timeout: Option<Duration>,
    lease_timeout: Duration,
    trace: bool,
    startup_timeout: Duration,
}

impl Default for VcsimBuilder {
    fn default() -> Self {
        Self {
            tls: true,
            esx: false,
            username: "administrator@vsphere.local".to_owned(),
            password: "hypersdk-vcsim-pass".to_owned(),
            datacenters: None,
            clusters: None,
            cluster_hosts: None,
            standalone_hosts: None,
            vms_per_pool: None,
            resource_pools: None,
            datastores: None,
            folders: None,
            portgroups: None,
            autostart: true,
            session_idle_timeout: None,
            lease_timeout: Duration::from_secs(300),
            trace: false,
            startup_timeout: Duration::from_secs(120),
        }
    }
}

impl VcsimBuilder {
    /// HTTPS with a generated certificate (default), or plain HTTP.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Simulate a standalone ESXi host (`HostAgent`, `ha-datacenter`)
    /// instead of vCenter. The model size options then mostly do not apply.
    pub fn esx(mut self, on: bool) -> Self {
        self.esx = on;
        self
    }

    /// The only user name and password `Login` accepts
    /// (default `administrator@vsphere.local` / `hypersdk-vcsim-pass`).
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.username = username.to_owned();
        self.password = password.to_owned();
        self
    }

    /// Datacenters (default 1).
    pub fn datacenters(mut self, n: u32) -> Self {
        self.datacenters = Some(n);
        self
    }

    /// Clusters per datacenter (default 1).
    pub fn clusters(mut self, n: u32) -> Self {
        self.clusters = Some(n);
        self
    }

    /// Hosts per cluster (default 3).
    pub fn cluster_hosts(mut self, n: u32) -> Self {
        self.cluster_hosts = Some(n);
        self
    }

    /// Standalone hosts per datacenter (default 1).
    pub fn standalone_hosts(mut self, n: u32) -> Self {
        self.standalone_hosts = Some(n);
        self
    }

    /// VMs in each standalone host's pool and each cluster's root pool
    /// (default 2).
    pub fn vms_per_pool(mut self, n: u32) -> Self {
        self.vms_per_pool = Some(n);
        self
    }

    /// Child resource pools per cluster (default 0).
    pub fn resource_pools(mut self, n: u32) -> Self {
        self.resource_pools = Some(n);
        self
    }

    /// Datastores (default 1).
    pub fn datastores(mut self, n: u32) -> Self {
        self.datastores = Some(n);
        self
    }

    /// Folders per datacenter (default 0).
    pub fn folders(mut self, n: u32) -> Self {
        self.folders = Some(n);
        self
    }

    /// Distributed portgroups per datacenter (default 1).
    pub fn portgroups(mut self, n: u32) -> Self {
        self.portgroups = Some(n);
        self
    }

    /// Power on the model's VMs (default true, as vcsim). `ExportVm` needs
    /// a powered-off VM, so export tests usually turn this off.
    pub fn autostart(mut self, on: bool) -> Self {
        self.autostart = on;
        self
    }

    /// Expire sessions idle this long (default: never). Rounded to
    /// milliseconds.
    pub fn session_idle_timeout(mut self, timeout: Duration) -> Self {
        self.session_idle_timeout = Some(timeout);
        self
    }

    /// `leaseTimeout` of every NFC lease, export and import (default 300 s;
    /// whole seconds), **enforced**: a `ready` lease without
    /// `HttpNfcLeaseProgress` for longer goes to state `error` with a
    /// `Timedout` fault. `Duration::ZERO` turns the enforcement off.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// Dump every SOAP request and response into the harness log.
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// How long to wait for the harness to print its URL (default 120 s;
    /// the build, if needed, is not counted).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    fn args(&self, workdir: &Path) -> Vec<String> {
        let mut args = vec![
            "-listen=127.0.0.1:0".to_owned(),
            format!("-tls={}", self.tls),
            format!("-esx={}", self.esx),
            format!("-username={}", self.username),
            format!("-password={}", self.password),
            format!("-autostart={}", self.autostart),
            format!("-lease-timeout={}", self.lease_timeout.as_secs()),
            format!("-trace={}", self.trace),
            format!("-workdir={}", workdir.display()),
            "-exit-on-stdin-eof".to_owned(),
        ];
        for (flag, value) in [
            ("dc", self.datacenters),
            ("cluster", self.clusters),
            ("host", self.cluster_hosts),
            ("standalone-host", self.standalone_hosts),
            ("vm", self.vms_per_pool),
            ("pool", self.resource_pools),
            ("ds", self.datastores),
            ("folder", self.folders),
            ("pg", self.portgroups),
        ] {
            if let Some(n) = value {
                args.push(format!("-{flag}={n}"));
            }
        }
        if let Some(t) = self.session_idle_timeout {
            args.push(format!("-session-idle-timeout={}ms", t.as_millis().max(1)));
        }
        args
    }

    /// Builds the harness if needed, starts it and waits until it serves.
    pub async fn start(self) -> Result<Vcsim, VcsimError> {
        let bin = build::harness_binary().await?;
        let dir = tempfile::Builder::new()
            .prefix("hypersdk-vcsim-")
            .tempdir()
            .map_err(|source| VcsimError::Io {
                context: "creating a temporary directory".to_owned(),
                source,
            })?;
        let log_path = dir.path().join("vcsim.log");
        let log = std::fs::File::create(&log_path).map_err(|source| VcsimError::Io {
            context: format!("creating {}", log_path.display()),
            source,
        })?;
        let workdir = dir.path().join("work");

        let mut child = Command::new(&bin)
            .args(self.args(&workdir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VcsimError::Io {
                context: format!("starting {}", bin.display()),
                source,
            })?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().map(|s| BufReader::new(s).lines());

        let started = Instant::now();
        let wait = async {
            let Some(lines) = stdout.as_mut() else {
                return Ok(None);
            };
            while let Some(line) = lines.next_line().await? {
                if let Ok(info) = serde_json::from_str::<StartupInfo>(&line) {
                    return Ok(Some(info));
                }
            }
            Ok::<_, std::io::Error>(None)
        };
        let failure = match tokio::time::timeout(self.startup_timeout, wait).await {
            Ok(Ok(Some(info))) => Ok(info),
            Ok(Ok(None)) => Err("the harness exited before printing its URL".to_owned()),
            Ok(Err(e)) => Err(format!("reading the harness's stdout: {e}")),
            Err(_) => Err(format!(
                "no URL from the harness within {:?}",
                self.startup_timeout
            )),
        };
        let info = match failure {
            Ok(info) => info,
            Err(message) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Err(VcsimError::Startup {
                    message,
                    log_tail: log_tail(&log_path),
                });
            }
        };

        let url = Url::parse(&info.url).map_err(|e| VcsimError::Startup {
            message: format!("bad URL {:?}: {e}", info.url),
            log_tail: log_tail(&log_path),
        })?;
        let mut sim = Vcsim {
            child,
            stdin,
            _stdout: stdout,
            dir: Some(dir),
            log_path,
            url,
            info,
            http: reqwest::Client::new(),
        };
        sim.http = sim.reqwest_builder().build()?;
        tracing::debug!(url = %sim.url, elapsed = ?started.elapsed(), "vcsim harness started");
        Ok(sim)
    }
}

/// The JSON line the harness prints on startup.
#[derive(Debug, Clone, Deserialize)]
struct StartupInfo {
    url: String,
    base_url: String,
    control_url: String,
    username: String,
    password: String,
    tls: bool,
    #[serde(default)]
    ca_pem: String,
    #[serde(default)]
    cert_pem: String,
    #[serde(default)]
    thumbprint_sha1: String,
    #[serde(default)]
    thumbprint_sha256: String,
    api_type: String,
    pid: u32,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A running harness; see the [module docs](self). Dropping it stops the
/// process and removes its datastores and log.
pub struct Vcsim {
    child: Child,
    stdin: Option<ChildStdin>,
    // Kept open so the harness never writes into a closed pipe.
    _stdout: Option<Lines<BufReader<ChildStdout>>>,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    url: Url,
    info: StartupInfo,
    http: reqwest::Client,
}

impl std::fmt::Debug for Vcsim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcsim")
            .field("url", &self.info.url)
            .field("pid", &self.info.pid)
            .field("tls", &self.info.tls)
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl Vcsim {
    /// Options for a new simulator; [`VcsimBuilder::start`] runs it.
    pub fn builder() -> VcsimBuilder {
        VcsimBuilder::default()
    }

    /// The SOAP endpoint, `https://127.0.0.1:PORT/sdk` (no credentials in it).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// `https://127.0.0.1:PORT` (for `/folder`, `/nfc` and replacing the `*`
    /// host of NFC device URLs).
    pub fn base_url(&self) -> &str {
        &self.info.base_url
    }

    /// `host:port` of the server.
    pub fn host_port(&self) -> String {
        let host = self.url.host_str().unwrap_or("127.0.0.1");
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The user name `Login` accepts.
    pub fn username(&self) -> &str {
        &self.info.username
    }

    /// The password `Login` accepts.
    pub fn password(&self) -> &str {
        &self.info.password
    }

    /// True if the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.info.tls
    }

    /// `VirtualCenter` or `HostAgent`.
    pub fn api_type(&self) -> &str {
        &self.info.api_type
    }

    /// PEM of the CA that signed the server certificate (trust this one).
    pub fn ca_pem(&self) -> Option<&str> {
        Some(self.info.ca_pem.as_str()).filter(|s| !s.is_empty())
    }

    /// PEM of the server (leaf) certificate.
    pub fn cert_pem(&self) -> Option<&str> {
        Some(self.info.cert_pem.as_str()).filter(|s| !s.is_empty())
    }

    /// SHA-1 of the server certificate, colon-separated uppercase hex, as
    /// vSphere writes thumbprints (`AB:CD:…`). Also the `sslThumbprint` of
    /// export device URLs.
    pub fn thumbprint_sha1(&self) -> Option<&str> {
        Some(self.info.thumbprint_sha1.as_str()).filter(|s| !s.is_empty())
    }

    /// SHA-256 of the server certificate, colon-separated uppercase hex.
    pub fn thumbprint_sha256(&self) -> Option<&str> {
        Some(self.info.thumbprint_sha256.as_str()).filter(|s| !s.is_empty())
    }

    /// A reqwest builder that trusts only the harness CA (with TLS on).
    pub fn reqwest_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        match self.ca_pem() {
            Some(pem) => match reqwest::Certificate::from_pem(pem.as_bytes()) {
                Ok(ca) => builder.tls_certs_only([ca]),
                Err(_) => builder,
            },
            None => builder,
        }
    }

    /// The harness's process id.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// The harness's log (stderr): vcsim's log lines, injected faults,
    /// transfers, and SOAP traffic with [`VcsimBuilder::trace`].
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The harness's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn control_url(&self, route: &str) -> String {
        format!("{}/{route}", self.info.control_url)
    }

    fn disk_url(&self, vm: &str, disk: usize, file: DiskFile, capacity_kb: Option<u64>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("vm", vm)
            .append_pair("disk", &disk.to_string())
            .append_pair("file", file.query_value());
        if let Some(kb) = capacity_kb {
            query.append_pair("capacity_kb", &kb.to_string());
        }
        format!("{}?{}", self.control_url("disk"), query.finish())
    }

    async fn control<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        route: &str,
    ) -> Result<T, VcsimError> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            return Err(VcsimError::Control {
                route: format!("/_hypersdk/{route}"),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn post_json<B: serde::Serialize>(
        &self,
        route: &str,
        body: &B,
    ) -> Result<(), VcsimError> {
        let req = self
            .http
            .post(self.control_url(route))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        self.control::<serde_json::Value>(req, route)
            .await
            .map(drop)
    }

    /// Writes `bytes` as the content of disk `disk` (0-based, in device
    /// order) of the VM named (or with moref value) `vm`: the file its
    /// backing names, which `ExportVm` serves.
    pub async fn seed_disk(
        &self,
        vm: &str,
        disk: usize,
        bytes: impl Into<reqwest::Body>,
    ) -> Result<SeededDisk, VcsimError> {
        self.seed_disk_file(vm, disk, DiskFile::Backing, None, bytes)
            .await
    }

    /// Like [`Vcsim::seed_disk`], choosing the file and optionally setting
    /// the disk's `capacityInKB`.
    pub async fn seed_disk_file(
        &self,
        vm: &str,
        disk: usize,
        file: DiskFile,
        capacity_kb: Option<u64>,
        bytes: impl Into<reqwest::Body>,
    ) -> Result<SeededDisk, VcsimError> {
        let req = self
            .http
            .put(self.disk_url(vm, disk, file, capacity_kb))
            .body(bytes);
        self.control(req, "disk").await
    }

    /// Writes `bytes` at `offset` into a VM disk file (which grows if
    /// needed; a flat file not past the disk's capacity). On the flat file
    /// of a disk with change tracking on, every 64 KiB block the write
    /// touches is recorded as one change set (changed bytes or not, as CBT
    /// does for guest writes) and the disk gets a new `changeId`.
    pub async fn write_disk_at(
        &self,
        vm: &str,
        disk: usize,
        file: DiskFile,
        offset: u64,
        bytes: impl Into<reqwest::Body>,
    ) -> Result<SeededDisk, VcsimError> {
        let url = format!("{}&offset={offset}", self.disk_url(vm, disk, file, None));
        let req = self.http.patch(url).body(bytes);
        self.control(req, "disk").await
    }

    /// Zeroes `length` bytes at `offset` of a VM disk file (a hole where
    /// the file system can punch one); the range is clipped to the file's
    /// end. On a tracked flat file the touched blocks are recorded as one
    /// change set (blocks left all zero as trimmed).
    pub async fn zero_disk_range(
        &self,
        vm: &str,
        disk: usize,
        file: DiskFile,
        offset: u64,
        length: u64,
    ) -> Result<SeededDisk, VcsimError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("vm", vm)
            .append_pair("disk", &disk.to_string())
            .append_pair("file", file.query_value())
            .append_pair("offset", &offset.to_string())
            .append_pair("length", &length.to_string());
        let url = format!("{}?{}", self.control_url("disk/zero"), query.finish());
        let req = self.http.post(url);
        self.control(req, "disk/zero").await
    }

    /// Changes how `QueryChangedDiskAreas` answers (window size, areas per
    /// answer, the `"*"` form); returns the new settings.
    pub async fn set_cbt(&self, settings: &CbtSettings) -> Result<CbtConfig, VcsimError> {
        let req = self
            .http
            .post(self.control_url("cbt"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(settings)?);
        self.control(req, "cbt").await
    }

    /// Every disk with change tracking on, its change id and the change
    /// sets recorded.
    pub async fn cbt_state(&self) -> Result<CbtState, VcsimError> {
        let req = self.http.get(self.control_url("cbt"));
        self.control(req, "cbt").await
    }

    /// Every live NFC lease: state, timeout, `HttpNfcLeaseProgress` calls,
    /// last percentage, time since renewal.
    pub async fn leases(&self) -> Result<Vec<LeaseStatus>, VcsimError> {
        let req = self.http.get(self.control_url("leases"));
        self.control(req, "leases").await
    }

    /// Times out the `ready` lease with this moref value now (every ready
    /// lease with `None`), as if its `leaseTimeout` had passed without
    /// `HttpNfcLeaseProgress`; returns how many.
    pub async fn expire_leases(&self, lease: Option<&str>) -> Result<usize, VcsimError> {
        #[derive(Deserialize)]
        struct Expired {
            expired: usize,
        }
        let body = match lease {
            Some(l) => serde_json::json!({ "lease": l }),
            None => serde_json::json!({}),
        };
        let req = self
            .http
            .post(self.control_url("leases/expire"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
        let out: Expired = self.control(req, "leases/expire").await?;
        Ok(out.expired)
    }

    /// Sets the `leaseTimeout` of leases created from now on (whole
    /// seconds; `Duration::ZERO`: not enforced). Live leases keep theirs.
    pub async fn set_lease_timeout(&self, timeout: Duration) -> Result<(), VcsimError> {
        self.post_json(
            "leases/timeout",
            &serde_json::json!({ "seconds": timeout.as_secs().min(i32::MAX as u64) }),
        )
        .await
    }

    /// A [`DiskWriter`](crate::conformance::DiskWriter) for the conformance
    /// suite: writes go to the flat files of the VMs' disks
    /// ([`Vcsim::write_disk_at`], [`Vcsim::zero_disk_range`]), so a disk
    /// with change tracking on records them. Disks are named by device key
    /// (the vSphere provider's disk id); VMs by moref value or name.
    pub fn disk_writer(&self) -> std::sync::Arc<dyn crate::conformance::DiskWriter> {
        std::sync::Arc::new(FlatDiskWriter {
            http: self.http.clone(),
            control_url: self.info.control_url.clone(),
        })
    }

    /// Reads the current content of a VM disk file (e.g. after an import).
    pub async fn read_disk(
        &self,
        vm: &str,
        disk: usize,
        file: DiskFile,
    ) -> Result<Vec<u8>, VcsimError> {
        let response = self
            .http
            .get(self.disk_url(vm, disk, file, None))
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            return Err(VcsimError::Control {
                route: "/_hypersdk/disk".to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body.to_vec())
    }

    /// Adds a method fault rule (rules for the same method apply in order).
    pub async fn fail_method(&self, rule: MethodFault) -> Result<(), VcsimError> {
        self.post_json("faults/method", &rule).await
    }

    /// Cuts the next NFC transfer after `bytes` body bytes.
    pub async fn cut_nfc_after(&self, bytes: u64) -> Result<(), VcsimError> {
        self.cut_transfer(CutTransfer::nfc_after(bytes)).await
    }

    /// Adds a transfer cut rule.
    pub async fn cut_transfer(&self, rule: CutTransfer) -> Result<(), VcsimError> {
        self.post_json("faults/cut", &rule).await
    }

    /// Adds an export lease rule (slow or failing initialisation).
    pub async fn lease_fault(&self, rule: LeaseFault) -> Result<(), VcsimError> {
        self.post_json("faults/lease", &rule).await
    }

    /// Removes every fault rule not yet used up.
    pub async fn clear_faults(&self) -> Result<(), VcsimError> {
        let req = self.http.delete(self.control_url("faults"));
        self.control::<serde_json::Value>(req, "faults")
            .await
            .map(drop)
    }

    /// Drops every session (as an idle timeout would); returns how many.
    /// The next call with an old cookie gets `NotAuthenticated`.
    pub async fn expire_sessions(&self) -> Result<usize, VcsimError> {
        #[derive(Deserialize)]
        struct Expired {
            expired: usize,
        }
        let req = self.http.post(self.control_url("sessions/expire"));
        let out: Expired = self.control(req, "sessions/expire").await?;
        Ok(out.expired)
    }

    /// The whole inventory as vcsim holds it.
    pub async fn inventory(&self) -> Result<Inventory, VcsimError> {
        let req = self.http.get(self.control_url("inventory"));
        self.control(req, "inventory").await
    }

    /// Every NFC upload received so far, in order.
    pub async fn uploaded_files(&self) -> Result<Vec<UploadedFile>, VcsimError> {
        let req = self.http.get(self.control_url("uploads"));
        self.control(req, "uploads").await
    }

    /// How many times each SOAP method was called (faulted calls included).
    pub async fn call_counts(&self) -> Result<BTreeMap<String, u64>, VcsimError> {
        let req = self.http.get(self.control_url("calls"));
        self.control(req, "calls").await
    }

    /// Stops the harness gracefully (it removes its datastores), waiting up
    /// to 5 s before killing it. Dropping does the same without waiting as
    /// long.
    pub async fn stop(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // EOF on stdin makes the harness shut down and remove its
        // datastores; give it a moment, then kill it.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = self.child.start_kill();
                    let kill_deadline = Instant::now() + Duration::from_secs(2);
                    while matches!(self.child.try_wait(), Ok(None))
                        && Instant::now() < kill_deadline
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    break;
                }
            }
        }
        if std::env::var_os("HYPERSDK_VCSIM_LOG").is_some_and(|v| v == "1") {
            eprintln!(
                "--- vcsim harness log ({}) ---\n{}",
                self.info.url,
                self.log()
            );
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// `vm=…&disk=…&file=flat` and more numbers.
fn flat_query(vm: &str, index: usize, more: &[(&str, u64)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("vm", vm)
        .append_pair("disk", &index.to_string())
        .append_pair("file", "flat");
    for (k, v) in more {
        query.append_pair(k, &v.to_string());
    }
    query.finish()
}

/// [`Vcsim::disk_writer`].
struct FlatDiskWriter {
    http: reqwest::Client,
    control_url: String,
}

impl FlatDiskWriter {
    /// The `vm` and `disk` (index) query values of a disk reference.
    async fn locate(
        &self,
        disk: &hypersdk_core::provider::DiskRef,
    ) -> hypersdk_core::Result<(String, usize)> {
        use hypersdk_core::model::VmRef;
        let fail = |e: &dyn std::fmt::Display| {
            hypersdk_core::Error::other(format!("vcsim harness inventory: {e}"))
        };
        let vm = match &disk.vm {
            VmRef::Id(id) => id.clone(),
            VmRef::Name(name) => name.clone(),
            other => {
                return Err(hypersdk_core::Error::unsupported(
                    format!("writing to a disk of {other}"),
                    "vcsim disk writer",
                ));
            }
        };
        let response = self
            .http
            .get(format!("{}/inventory", self.control_url))
            .send()
            .await
            .map_err(|e| fail(&e))?;
        let body = response.bytes().await.map_err(|e| fail(&e))?;
        let inventory: Inventory = serde_json::from_slice(&body).map_err(|e| fail(&e))?;
        let found = inventory
            .vms
            .iter()
            .find(|v| v.entity.moref == vm || v.entity.name == vm)
            .and_then(|v| {
                v.disks
                    .iter()
                    .position(|d| d.key.to_string() == disk.disk_id)
            });
        match found {
            Some(index) => Ok((vm, index)),
            None => Err(hypersdk_core::Error::not_found(disk.to_string())),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> hypersdk_core::Result<()> {
        let response = request
            .send()
            .await
            .map_err(|e| hypersdk_core::Error::other(format!("vcsim harness {what}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(hypersdk_core::Error::other(format!(
                "vcsim harness {what}: HTTP {status}: {body}"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::conformance::DiskWriter for FlatDiskWriter {
    async fn write(
        &self,
        disk: &hypersdk_core::provider::DiskRef,
        offset: u64,
        data: &[u8],
    ) -> hypersdk_core::Result<()> {
        let (vm, index) = self.locate(disk).await?;
        let url = format!(
            "{}/disk?{}",
            self.control_url,
            flat_query(&vm, index, &[("offset", offset)])
        );
        self.send(self.http.patch(url).body(data.to_vec()), "disk write")
            .await
    }

    async fn discard(
        &self,
        disk: &hypersdk_core::provider::DiskRef,
        range: hypersdk_core::model::Extent,
    ) -> hypersdk_core::Result<()> {
        let (vm, index) = self.locate(disk).await?;
        let url = format!(
            "{}/disk/zero?{}",
            self.control_url,
            flat_query(
                &vm,
                index,
                &[("offset", range.offset), ("length", range.length)]
            )
        );
        self.send(self.http.post(url), "disk zeroing").await
    }
}
