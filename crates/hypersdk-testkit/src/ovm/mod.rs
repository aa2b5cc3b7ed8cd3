//! A faithful double of the Coriolis OVM exporter, for testing the
//! `hypersdk-ovm` client against the behaviour of the real server (read
//! from its source, which is AGPL: nothing here is copied from it).
//!
//! [`OvmExporter`] serves HTTPS (a generated CA and leaf for
//! `IP:127.0.0.1` / `DNS:localhost`) or plain HTTP on a loopback port from
//! a runtime of its own, and keeps its node in a temporary directory: one
//! repository (`OVS/Repositories/<id>`) with the VMs' live disks as sparse
//! files under `VirtualDisks/` and snapshots as real sparse copies under
//! `CoriolisSnapshots/<snapshot>/`.
//!
//! # Wire behaviour (what the real exporter does)
//!
//! - Every route lives under `/api/v1`, each accepted with and without a
//!   trailing slash: `POST auth/login`; `GET vms`; `GET vms/{vm}`;
//!   `GET|POST|DELETE vms/{vm}/snapshots` (list, create, purge);
//!   `GET|DELETE vms/{vm}/snapshots/{snap}`; `GET|HEAD
//!   vms/{vm}/snapshots/{snap}/disks/{disk}`.
//! - A path that is not clean (`//`, `.`, `..`) gets 301 to the cleaned
//!   path with an empty body. A path outside `/api/v1/` gets 404
//!   `text/plain` `404 page not found`. An unknown path or a wrong method
//!   under `/api/v1/` gets 404 `{"error":"Not found","details":"Resource
//!   not found"}`; under the private routes the token is checked first.
//! - Login is POST only and issues an HS256 JWT `{"user","exp","iss":
//!   "gopherbin"}` with `Content-Type: application/json`. A body that is
//!   not JSON is 400 `invalid request`; wrong credentials are 401 `Not
//!   Authorized`, `failed to login: ...`.
//! - Private routes need `Authorization: <scheme> <token>`, split on single
//!   spaces into exactly two parts (the scheme word is not checked); every
//!   failure, expired tokens included, is 401 `{"error":"Authentication
//!   failed","details":"Invalid authentication token"}` (content type
//!   sniffed: `text/plain; charset=utf-8`).
//! - Success bodies are Go `json.Encoder` output (ends with `\n`) without a
//!   JSON content type (`text/plain; charset=utf-8`). Errors are
//!   `{"error","details"}` with `application/json`: an unknown VM is 500
//!   `could not find VM with ID <id>`, an unknown snapshot 500 `not found`,
//!   a snapshot of another VM 409 `VM id missmatch`, a compareTo that is
//!   not older 400, a VM with a disk that is not snapshot-compatible 400
//!   `VM does not support reflink cloning`.
//! - Create answers 200 with the raw (unsquashed) chunks; list snapshots
//!   always squashes; GET snapshot squashes unless `squashChunks` parses
//!   (Go `ParseBool`) as false (absent or empty: true; unparsable: false);
//!   `compareTo` keeps the chunks without an exact (start, length,
//!   physical_start) twin in the older snapshot's raw list, per disk name,
//!   and an empty unsquashed diff is `"chunks": null`. DELETE of a
//!   snapshot is idempotent (200 when unknown).
//! - Disk data follows Go's `http.ServeContent` with no `ETag` and no
//!   `Last-Modified`: HEAD and GET without a range are 200 with the disk
//!   size; one range is 206 with `Content-Range`; several are 206
//!   `multipart/byteranges` (unless their total exceeds the size: then 200
//!   and the whole disk); a range starting at or past the end is 416 with
//!   `Content-Range: bytes */size`; a malformed one 416 `invalid range`;
//!   any `If-Range` drops the range (200, whole disk). The content type is
//!   `application/octet-stream`. An unknown disk is 404 with an empty body;
//!   a snapshot file removed out of band is 500 with an empty body.
//!
//! Deviations, all harmless for clients: there is one repository; the VM
//! list is sorted by id; the login error text for wrong credentials is
//! made up (the real one relays OVM Manager's error); ALPN offers only
//! HTTP/1.1.
//!
//! # Disk model
//!
//! Each live disk is a sparse file plus an allocation map, logical cluster
//! -> "physical" cluster of the repository volume, with reference counts.
//! A guest write ([`OvmExporter::write`]) to an unmapped cluster allocates
//! a fresh physical cluster (one contiguous run per write call); to a
//! cluster shared with a snapshot it copies on write to a fresh one; to an
//! unshared cluster it writes in place. [`OvmExporter::trim`] unmaps whole
//! clusters (holes) and zeroes partial ones. A snapshot is a real sparse
//! copy of the live file plus a clone of the map (references + 1); its
//! chunks are FIEMAP-like extents: runs contiguous both logically and
//! physically (capped by [`OvmExporterBuilder::max_extent`]), whole
//! clusters, `physical_start` = physical cluster x cluster size. Physical
//! clusters are never reused. So a later partial overwrite splits an
//! extent and `compareTo` over-reports exactly as the real exporter does
//! on OCFS2.
//!
//! # Faults and counters
//!
//! [`OvmExporter::faults`] switches misbehaviour on ([`OvmFaults`]);
//! [`OvmExporter::stats`] reports request, login, data and connection
//! counts ([`OvmStats`]).

mod disk;
mod jwt;
mod ranges;
mod server;
mod store;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use store::Store;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random_hex(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(data)
}

/// One `file:` disk of a VM's `vm.cfg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image's file name, e.g. `0004fb0000120000...e843.img`; the
    /// data endpoint's `diskID`.
    pub name: String,
    /// The device, e.g. `xvda`.
    pub device: String,
    /// The `vm.cfg` mode, e.g. `w`.
    pub mode: String,
    /// The disk's size in bytes.
    pub size: u64,
    /// Whether the disk is on OCFS2 and a virtual disk (default true).
    pub snapshot_compatible: bool,
}

impl DiskSpec {
    /// A writable (`w`), snapshot-compatible disk.
    pub fn new(name: impl Into<String>, device: impl Into<String>, size: u64) -> Self {
        DiskSpec {
            name: name.into(),
            device: device.into(),
            mode: "w".to_owned(),
            size,
            snapshot_compatible: true,
        }
    }

    /// The same disk, not snapshot-compatible (say an ISO or a disk on a
    /// non-OCFS2 repository), which makes its VM incompatible.
    pub fn incompatible(mut self) -> Self {
        self.snapshot_compatible = false;
        self
    }

    /// A disk with an OVM-style random name (`0004fb0000120000` + 16 hex
    /// digits + `.img`).
    pub fn random(device: impl Into<String>, size: u64) -> Self {
        DiskSpec::new(
            format!("0004fb0000120000{}.img", random_hex(8)),
            device,
            size,
        )
    }
}

/// A VM as its `vm.cfg` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// The `name` field: 32 hex digits, the API's `vmID`.
    pub id: String,
    /// `OVM_simple_name`.
    pub friendly_name: String,
    /// The hyphenated form of the id.
    pub uuid: String,
    /// The `file:` disks, in `vm.cfg` order.
    pub disks: Vec<DiskSpec>,
    /// `phy:` entries: skipped by the exporter (never listed, faithfully),
    /// reported only by [`OvmExporter::phy_disks`].
    pub phy_disks: Vec<String>,
}

impl VmSpec {
    /// A VM without disks, with a random OVM-style id and its uuid.
    pub fn new(friendly_name: &str) -> Self {
        let id = format!("0004fb0000060000{}", random_hex(8));
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &id[0..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..32]
        );
        VmSpec {
            id,
            friendly_name: friendly_name.to_owned(),
            uuid,
            disks: Vec::new(),
            phy_disks: Vec::new(),
        }
    }

    /// Adds a `file:` disk.
    pub fn with_disk(mut self, disk: DiskSpec) -> Self {
        self.disks.push(disk);
        self
    }

    /// Adds a `phy:` disk entry (a raw device path).
    pub fn with_phy_disk(mut self, path: &str) -> Self {
        self.phy_disks.push(path.to_owned());
        self
    }
}

/// A route of the exporter, for [`OvmFaults::fail_status`] and the
/// per-route counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/v1/auth/login`.
    Login,
    /// `GET /api/v1/vms`.
    ListVms,
    /// `GET /api/v1/vms/{vm}`.
    GetVm,
    /// `GET /api/v1/vms/{vm}/snapshots`.
    ListSnapshots,
    /// `POST /api/v1/vms/{vm}/snapshots`.
    CreateSnapshot,
    /// `DELETE /api/v1/vms/{vm}/snapshots`.
    PurgeSnapshots,
    /// `GET /api/v1/vms/{vm}/snapshots/{snap}`.
    GetSnapshot,
    /// `DELETE /api/v1/vms/{vm}/snapshots/{snap}`.
    DeleteSnapshot,
    /// `GET|HEAD /api/v1/vms/{vm}/snapshots/{snap}/disks/{disk}`.
    DiskData,
    /// Every request (for [`OvmFaults::fail_status`] only).
    Any,
}

impl Route {
    /// The route's name, the key of [`OvmStats::by_route`].
    pub fn name(self) -> &'static str {
        match self {
            Route::Login => "Login",
            Route::ListVms => "ListVms",
            Route::GetVm => "GetVm",
            Route::ListSnapshots => "ListSnapshots",
            Route::CreateSnapshot => "CreateSnapshot",
            Route::PurgeSnapshots => "PurgeSnapshots",
            Route::GetSnapshot => "GetSnapshot",
            Route::DeleteSnapshot => "DeleteSnapshot",
            Route::DiskData => "DiskData",
            Route::Any => "Any",
        }
    }
}

/// Counters of an [`OvmExporter`], as returned by [`OvmExporter::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OvmStats {
    /// Every HTTP request received.
    pub requests: u64,
    /// `POST` login requests handled (successful or not).
    pub logins: u64,
    /// Disk data requests (`GET` and `HEAD`) that reached ServeContent.
    pub data_requests: u64,
    /// Disk data body bytes sent (multipart framing included).
    pub data_bytes: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests per route: the [`Route::name`]s, plus `NotFound` (404s),
    /// `Redirect` (301s) and `BadRequest` (unparsable paths).
    pub by_route: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    logins: AtomicU64,
    data_requests: AtomicU64,
    data_bytes: AtomicU64,
    connections: AtomicU64,
    by_route: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug, Default)]
struct FaultState {
    drop_data: Option<(u64, u32)>,
    fail_status: Vec<(u16, u32, Route)>,
    ok_instead_of_partial: u32,
    lose_create: u32,
}

/// Fault switches of an [`OvmExporter`], shared and thread-safe; each is
/// used up by the requests it applies to.
#[derive(Debug, Default)]
pub struct OvmFaults {
    state: Mutex<FaultState>,
    /// Serial of the last token issued.
    issued: AtomicU64,
    /// Tokens with a serial up to this one are refused.
    revoked_upto: AtomicU64,
}

impl OvmFaults {
    /// The next `count` disk-data `GET` responses whose body is longer than
    /// `bytes` send the headers and the first `bytes` body bytes, then
    /// close the connection. Shorter bodies are served whole and do not use
    /// the fault up. Replaces an earlier setting.
    pub fn drop_data_after(&self, bytes: u64, count: u32) {
        lock(&self.state).drop_data = (count > 0).then_some((bytes, count));
    }

    /// The next `count` requests of `route` ([`Route::Any`]: of any route,
    /// unknown paths included) are answered `status` with a short
    /// `text/plain` body, before the token is checked. Adds to the
    /// switches set earlier (the first matching one is used).
    pub fn fail_status(&self, status: u16, count: u32, route: Route) {
        if count > 0 {
            lock(&self.state).fail_status.push((status, count, route));
        }
    }

    /// The next `count` disk-data `GET`s that would be answered 206 are
    /// answered 200 with the whole disk instead (a broken proxy).
    pub fn ok_instead_of_partial(&self, count: u32) {
        lock(&self.state).ok_instead_of_partial = count;
    }

    /// Refuses every token issued so far (401 `Invalid authentication
    /// token`), as if they had expired; tokens from later logins work.
    /// Tokens this server did not issue (forged with
    /// [`OvmExporter::jwt_secret`]) are refused from now on too. Not undone
    /// by [`OvmFaults::clear`].
    pub fn expire_tokens(&self) {
        let issued = self.issued.load(Ordering::SeqCst);
        self.revoked_upto.fetch_max(issued.max(1), Ordering::SeqCst);
    }

    /// The next `count` snapshot creations create the snapshot, then close
    /// the connection without sending a response.
    pub fn lose_create_response(&self, count: u32) {
        lock(&self.state).lose_create = count;
    }

    /// Switches every pending fault off.
    pub fn clear(&self) {
        *lock(&self.state) = FaultState::default();
    }

    fn take_status(&self, route: Option<Route>) -> Option<u16> {
        let mut state = lock(&self.state);
        let entry = state
            .fail_status
            .iter_mut()
            .find(|(_, count, r)| *count > 0 && (*r == Route::Any || Some(*r) == route))?;
        entry.1 -= 1;
        let status = entry.0;
        state.fail_status.retain(|(_, count, _)| *count > 0);
        Some(status)
    }

    fn take_drop_data(&self, body_len: u64) -> Option<u64> {
        let mut state = lock(&self.state);
        let (bytes, count) = state.drop_data?;
        if body_len <= bytes {
            return None;
        }
        state.drop_data = (count > 1).then_some((bytes, count - 1));
        Some(bytes)
    }

    fn take_ok_instead_of_partial(&self) -> bool {
        let mut state = lock(&self.state);
        if state.ok_instead_of_partial == 0 {
            return false;
        }
        state.ok_instead_of_partial -= 1;
        true
    }

    fn take_lose_create(&self) -> bool {
        let mut state = lock(&self.state);
        if state.lose_create == 0 {
            return false;
        }
        state.lose_create -= 1;
        true
    }
}

/// What the connection handlers share with the [`OvmExporter`] handle.
struct Shared {
    store: Mutex<Store>,
    faults: OvmFaults,
    stats: Stats,
    username: String,
    password: String,
    secret: Vec<u8>,
    ttl: Duration,
    /// Issued token -> its serial (identical tokens, issued in the same
    /// second, share the latest serial).
    tokens: Mutex<HashMap<String, u64>>,
}

impl Shared {
    fn count_route(&self, key: &str) {
        *lock(&self.stats.by_route)
            .entry(key.to_owned())
            .or_insert(0) += 1;
    }
}

/// Builds an [`OvmExporter`]; see [`OvmExporter::builder`].
#[derive(Debug)]
pub struct OvmExporterBuilder {
    username: String,
    password: String,
    ttl: Duration,
    cluster_size: u64,
    max_extent: u64,
    vms: Vec<VmSpec>,
    tls: bool,
}

impl OvmExporterBuilder {
    /// The credentials login accepts (default `admin` / `password`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.username = user.to_owned();
        self.password = password.to_owned();
        self
    }

    /// The tokens' lifetime (default 168 h); `exp` is now + this, in whole
    /// seconds.
    pub fn jwt_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The allocation unit (default 64 KiB); a power of two of at least
    /// 512 bytes.
    pub fn cluster_size(mut self, bytes: u64) -> Self {
        self.cluster_size = bytes;
        self
    }

    /// The longest extent FIEMAP reports, in bytes (default unlimited);
    /// rounded down to whole clusters, at least one.
    pub fn max_extent(mut self, bytes: u64) -> Self {
        self.max_extent = bytes;
        self
    }

    /// Adds a VM (its disks start empty).
    pub fn vm(mut self, vm: VmSpec) -> Self {
        self.vms.push(vm);
        self
    }

    /// HTTPS with the generated certificate (default) or plain HTTP.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Creates the node in a temporary directory and starts serving on a
    /// loopback port, from a runtime of its own (two worker threads), so it
    /// works under any test runtime.
    pub async fn start(self) -> io::Result<OvmExporter> {
        if !self.cluster_size.is_power_of_two() || self.cluster_size < 512 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cluster size {} is not a power of two >= 512",
                    self.cluster_size
                ),
            ));
        }
        let dir = tempfile::Builder::new().prefix("ovm-exporter-").tempdir()?;
        let repo = dir
            .path()
            .join("OVS")
            .join("Repositories")
            .join(format!("0004fb0000030000{}", random_hex(8)));
        let mut store = Store::new(repo, self.cluster_size, self.max_extent)?;
        for vm in self.vms {
            store.add_vm(vm)?;
        }
        let tls = tls::generate()?;
        let secret = random_hex(32).into_bytes();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            faults: OvmFaults::default(),
            stats: Stats::default(),
            username: self.username,
            password: self.password,
            secret,
            ttl: self.ttl,
            tokens: Mutex::new(HashMap::new()),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let acceptor = self
            .tls
            .then(|| tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config)));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        let server_shared = Arc::clone(&shared);
        // The runtime is built and dropped on its own thread: dropping a
        // runtime inside the caller's async context would panic.
        let thread = std::thread::Builder::new()
            .name("ovm-exporter".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .max_blocking_threads(64)
                    .thread_name("ovm-exporter")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(server::serve(
                    listener,
                    acceptor,
                    server_shared,
                    shutdown_rx,
                ));
                runtime.shutdown_background();
            })?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(io::Error::other(
                    "OVM exporter test server: the server thread died while starting",
                ));
            }
        }
        Ok(OvmExporter {
            shared,
            addr,
            tls: self.tls,
            ca_pem: tls.ca_pem,
            thumbprint: tls::thumbprint_sha256(&tls.leaf_der),
            shutdown: shutdown_tx,
            thread: Some(thread),
            dir,
        })
    }
}

/// The running test server; stops on drop, and its temporary directory is
/// removed.
pub struct OvmExporter {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    ca_pem: String,
    thumbprint: String,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl fmt::Debug for OvmExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvmExporter")
            .field("endpoint", &self.endpoint())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for OvmExporter {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl OvmExporter {
    /// A builder with the defaults: `admin` / `password`, 168 h tokens,
    /// 64 KiB clusters, unlimited extents, TLS, no VMs.
    pub fn builder() -> OvmExporterBuilder {
        OvmExporterBuilder {
            username: "admin".to_owned(),
            password: "password".to_owned(),
            ttl: Duration::from_secs(168 * 3600),
            cluster_size: 64 * 1024,
            max_extent: u64::MAX,
            vms: Vec::new(),
            tls: true,
        }
    }

    /// `https://127.0.0.1:PORT` (or `http://` without TLS), no trailing
    /// slash.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The SHA-256 of the server's (leaf) certificate, `AB:CD:...`.
    pub fn thumbprint_sha256(&self) -> String {
        self.thumbprint.clone()
    }

    /// The user name login accepts.
    pub fn username(&self) -> &str {
        &self.shared.username
    }

    /// The password login accepts.
    pub fn password(&self) -> &str {
        &self.shared.password
    }

    /// The HS256 secret tokens are signed with.
    pub fn jwt_secret(&self) -> &[u8] {
        &self.shared.secret
    }

    /// The node's temporary directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The guest writes `data` at `offset` of a live disk (`vm`: id or
    /// friendly name; `disk`: file name or device), synchronously; later
    /// snapshots see it. Errors: unknown VM or disk (`NotFound`), a range
    /// past the disk's end (`InvalidInput`).
    pub fn write(&self, vm: &str, disk: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.shared.store).write(vm, disk, offset, data)
    }

    /// The guest discards `[offset, offset + len)` of a live disk: whole
    /// clusters are unmapped (holes), partial clusters zeroed.
    pub fn trim(&self, vm: &str, disk: &str, offset: u64, len: u64) -> io::Result<()> {
        lock(&self.shared.store).trim(vm, disk, offset, len)
    }

    /// The live disk's sparse file (for an unknown VM or disk: where a disk
    /// of that name would be).
    pub fn live_disk_path(&self, vm: &str, disk: &str) -> PathBuf {
        let store = lock(&self.shared.store);
        match store.find_vm(vm).and_then(|v| Store::find_disk(v, disk)) {
            Some(d) => d.path.clone(),
            None => store.disk_path(disk),
        }
    }

    /// The allocated (mapped) byte ranges of a live disk, `(offset, len)`,
    /// logically contiguous runs merged, clamped to the disk size; empty
    /// for an unknown VM or disk.
    pub fn live_allocated_ranges(&self, vm: &str, disk: &str) -> Vec<(u64, u64)> {
        lock(&self.shared.store)
            .live_ranges(vm, disk)
            .unwrap_or_default()
    }

    /// The snapshot's sparse copy of `disk`, if that snapshot of `vm`
    /// exists and has that disk.
    pub fn snapshot_disk_path(&self, vm: &str, snapshot: &str, disk: &str) -> Option<PathBuf> {
        lock(&self.shared.store).snapshot_disk_path(vm, snapshot, disk)
    }

    /// The snapshot ids of `vm` (id or friendly name), oldest first.
    pub fn snapshot_ids(&self, vm: &str) -> Vec<String> {
        let store = lock(&self.shared.store);
        match store.find_vm(vm) {
            Some(v) => store.snapshot_ids(&v.id),
            None => Vec::new(),
        }
    }

    /// The `phy:` disks of `vm`'s `vm.cfg`, which the exporter never lists.
    pub fn phy_disks(&self, vm: &str) -> Vec<String> {
        lock(&self.shared.store)
            .find_vm(vm)
            .map(|v| v.phy_disks.clone())
            .unwrap_or_default()
    }

    /// The repository's mount point (`repo_mountpoint`).
    pub fn repo_mountpoint(&self) -> PathBuf {
        lock(&self.shared.store).repo().to_owned()
    }

    /// Adds a VM while running.
    ///
    /// # Panics
    /// If the VM is unusable (duplicate id or disk name, a name that is no
    /// file name) or its disks cannot be created; see
    /// [`OvmExporter::try_add_vm`].
    pub fn add_vm(&self, vm: VmSpec) {
        if let Err(error) = self.try_add_vm(vm) {
            panic!("OvmExporter::add_vm: {error}");
        }
    }

    /// Adds a VM while running, reporting what was wrong with it.
    pub fn try_add_vm(&self, vm: VmSpec) -> io::Result<()> {
        lock(&self.shared.store).add_vm(vm)
    }

    /// The fault switches.
    pub fn faults(&self) -> &OvmFaults {
        &self.shared.faults
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> OvmStats {
        let s = &self.shared.stats;
        OvmStats {
            requests: s.requests.load(Ordering::SeqCst),
            logins: s.logins.load(Ordering::SeqCst),
            data_requests: s.data_requests.load(Ordering::SeqCst),
            data_bytes: s.data_bytes.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
            by_route: lock(&s.by_route).clone(),
        }
    }

    /// Sets every counter back to zero.
    pub fn reset_stats(&self) {
        let s = &self.shared.stats;
        for counter in [
            &s.requests,
            &s.logins,
            &s.data_requests,
            &s.data_bytes,
            &s.connections,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        lock(&s.by_route).clear();
    }
}
