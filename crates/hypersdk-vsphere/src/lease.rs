//! `HttpNfcLease`: the lease behind an export (`ExportVm`,
//! `ExportSnapshot`) or an import (`ImportVApp`).
//!
//! [`NfcLease::wait_ready`] polls the lease's `state`, `info` and `error`
//! together until it leaves `initializing`: `ready` gives the
//! [`LeaseInfo`] (device URLs with the `*` host already replaced by the
//! client's `host:port`), `error` the lease's fault mapped to a core error
//! ([`crate::fault_to_error`]). From then on a background task renews the
//! lease with `HttpNfcLeaseProgress` carrying the real percentage (set
//! through [`LeaseProgress`]) every 5 s at most, and at most every third of
//! the lease's timeout, for as long as the lease is held, also while a
//! single huge file is in flight (the bug behind leases that expire after
//! five minutes). [`NfcLease::complete`] and [`NfcLease::abort`] stop that
//! task *before* sending `HttpNfcLeaseComplete` / `HttpNfcLeaseAbort`, so
//! no progress call can race the end of the lease. A lease dropped without
//! either is aborted in the background (best effort) and the drop is
//! logged: an error path or a cancelled future never leaves a lease
//! holding the VM locked until its timeout (nor does a cancelled
//! [`NfcLease::wait_ready`]).
//!
//! A lease can also change hands: [`NfcLease::detach`] stops the
//! keep-alive and lets go of the lease *without* ending it, and
//! [`NfcLease::reattach`] takes over a lease that is still `ready` (checked
//! once, renewed at once) and restarts the keep-alive. The server keeps an
//! unrenewed lease for its `leaseTimeout` (300 s on vSphere), and an
//! import lease only for the login session that created it (its moref is
//! session-scoped), so reattaching needs that session
//! ([`crate::ClientBuilder::session_cookie`]). A lease that cannot be
//! taken over gives an [`Error::NotFound`] whose source is a
//! [`LeaseUnusable`] ([`lease_unusable`] finds it).
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client, lease: hypersdk_vsphere::types::MoRef) -> hypersdk_core::Result<()> {
//! use hypersdk_vsphere::lease::NfcLease;
//!
//! let lease = NfcLease::wait_ready(client, lease).await?;
//! let progress = lease.progress();
//! for dev in &lease.info().device_urls {
//!     println!("{} -> {}", dev.key, dev.url);
//! }
//! progress.set_bytes(50, 100); // the keep-alive now reports 50 %
//! lease.complete().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use hypersdk_core::{Error, Result};

use crate::client::{Client, fault_to_error};
use crate::property::retrieve_one;
use crate::soap::{Node, Request, VimFault};
use crate::types::MoRef;

/// Longest interval between two `HttpNfcLeaseProgress` calls.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Shortest interval between two `HttpNfcLeaseProgress` calls (a lease
/// reporting a timeout of 0 or 1 s must not make the task spin).
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(200);

/// One file of a lease (`HttpNfcLeaseDeviceUrl`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceUrl {
    /// The device's key: for an export the `deviceId` to give
    /// `CreateDescriptor` (`/vm-42/VirtualLsiLogicController0:0`).
    pub key: String,
    /// For an import: the import spec's `deviceId` this URL belongs to
    /// (empty for exports).
    pub import_key: String,
    /// The URL, with a `*` host already replaced by the client's
    /// `host:port` (and scheme).
    pub url: String,
    /// The suggested file name (`disk-0.vmdk`), if the server gave one.
    pub target_id: Option<String>,
    /// Whether the file is a disk (`false` for `.nvram`, ISO, …).
    pub disk: bool,
    /// The SHA-1 thumbprint of the certificate of the host serving `url`
    /// (through vCenter: the ESXi host's), if given and not empty.
    pub ssl_thumbprint: Option<String>,
    /// The file's size when the server knows it (non-disk files; export
    /// disks are generated on the fly and have none).
    pub file_size: Option<u64>,
}

impl DeviceUrl {
    /// The file name to store this item under: `targetId`, else the last
    /// segment of the URL's path (percent-decoded), else `file-<n>`.
    pub fn file_name(&self, n: usize) -> String {
        if let Some(t) = self.target_id.as_deref().map(str::trim)
            && is_safe_name(t)
        {
            return t.to_owned();
        }
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        let decoded: String =
            url::form_urlencoded::parse(format!("x={}", last.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
        if is_safe_name(&decoded) {
            decoded
        } else {
            format!("file-{n}")
        }
    }
}

/// Whether `name` can be used as a file name inside an output directory:
/// not empty, no path separators, not `.`/`..`, no control characters.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// What a ready lease offers (`HttpNfcLeaseInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The files to transfer, in the server's order.
    pub device_urls: Vec<DeviceUrl>,
    /// `totalDiskCapacityInKB`: the capacity of all disks (not the bytes
    /// that will be transferred).
    pub total_disk_capacity_kb: u64,
    /// `leaseTimeout`: seconds without a progress call after which the
    /// server drops the lease.
    pub lease_timeout_secs: u32,
    /// The VM or vApp the lease is for.
    pub entity: Option<MoRef>,
}

impl LeaseInfo {
    /// Reads an `HttpNfcLeaseInfo` value; `client` supplies the host that
    /// replaces `*` in device URLs.
    pub fn from_node(n: &Node, client: &Client) -> Self {
        let device_urls = n
            .children_named("deviceUrl")
            .map(|d| {
                let text = |name: &str| {
                    d.text_at(&[name])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                };
                DeviceUrl {
                    key: text("key").unwrap_or_default(),
                    import_key: text("importKey").unwrap_or_default(),
                    url: replace_star_host(&text("url").unwrap_or_default(), client),
                    target_id: text("targetId"),
                    disk: d.bool_at(&["disk"]).unwrap_or(false),
                    ssl_thumbprint: text("sslThumbprint"),
                    file_size: d.int_at(&["fileSize"]).and_then(|v| u64::try_from(v).ok()),
                }
            })
            .collect();
        LeaseInfo {
            device_urls,
            total_disk_capacity_kb: n
                .int_at(&["totalDiskCapacityInKB"])
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
            lease_timeout_secs: n
                .int_at(&["leaseTimeout"])
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(300),
            entity: n.child("entity").and_then(Node::as_moref),
        }
    }
}

/// `https://*/nfc/…` → `https://<client host:port>/nfc/…` (the scheme of
/// the client too: vcsim writes `https://*` even for a plain-HTTP server).
/// Other URLs are returned as they are (the path stays percent-encoded as
/// the server wrote it).
fn replace_star_host(url: &str, client: &Client) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority == "*" || authority.starts_with("*:") {
        let base = client.base_url();
        format!("{}://{}{}", base.scheme(), client.host_port(), &rest[end..])
    } else {
        url.to_owned()
    }
}

/// The percentage a lease's keep-alive reports; cheap to clone and share
/// with the tasks doing the transfers.
#[derive(Debug, Clone, Default)]
pub struct LeaseProgress {
    percent: Arc<AtomicU8>,
}

impl LeaseProgress {
    /// Sets the percentage from bytes: `done` of `total` (0 % while
    /// `total` is 0, at most 100 %).
    pub fn set_bytes(&self, done: u64, total: u64) {
        let pct = if total == 0 {
            0
        } else {
            (u128::from(done.min(total)) * 100 / u128::from(total)) as u8
        };
        self.set_percent(pct);
    }

    /// Sets the percentage (capped at 100).
    pub fn set_percent(&self, percent: u8) {
        self.percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// The percentage the next keep-alive sends.
    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::Relaxed)
    }
}

/// Why a lease cannot be taken over ([`NfcLease::reattach`]) or an import
/// not continued ([`crate::import::reattach_ova`]): the source of the
/// [`Error::NotFound`] they return, found with [`lease_unusable`]. When it
/// is returned no file was sent and the lease was neither completed nor
/// aborted, nor its VM destroyed (a lease found `ready` may have been
/// renewed once): clean them up with [`crate::import::clean_up_leftover`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseUnusable {
    /// The server does not know the lease in this login session: the
    /// session that created it is gone (logged out, expired) or this is
    /// another one, or the lease was completed or aborted.
    Gone {
        /// The server's answer.
        detail: String,
    },
    /// The lease is not `ready`: `error` (timed out without progress, or
    /// failed), `done`, or still `initializing`.
    NotReady {
        /// The lease's `state`.
        state: String,
        /// The lease's fault (`Timedout: …`), if it has one.
        fault: Option<String>,
    },
    /// The lease is not the one recorded: another entity, device URLs
    /// that no longer match, another server.
    Mismatch {
        /// What differs.
        detail: String,
    },
}

impl fmt::Display for LeaseUnusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseUnusable::Gone { detail } => write!(
                f,
                "the lease is gone for this login session (its session ended, this is another \
                 session, or it was completed or aborted): {detail}"
            ),
            LeaseUnusable::NotReady { state, fault } => {
                write!(f, "the lease is in state '{state}', not 'ready'")?;
                match fault {
                    Some(fault) => write!(f, " ({fault})"),
                    None => Ok(()),
                }
            }
            LeaseUnusable::Mismatch { detail } => {
                write!(f, "the lease is not the one recorded: {detail}")
            }
        }
    }
}

impl std::error::Error for LeaseUnusable {}

impl LeaseUnusable {
    /// The [`Error::NotFound`] that carries this reason for `lease`.
    pub fn into_error(self, lease: &MoRef) -> Error {
        Error::NotFound {
            object: format!("a usable HttpNfcLease '{}' ({self})", lease.value),
            source: Some(Box::new(self)),
        }
    }
}

/// The [`LeaseUnusable`] reason behind `error`, if it says a lease cannot
/// be taken over (see [`NfcLease::reattach`]).
///
/// ```
/// use hypersdk_vsphere::lease::{LeaseUnusable, lease_unusable};
/// use hypersdk_vsphere::types::MoRef;
/// let e = LeaseUnusable::NotReady { state: "error".into(), fault: None }
///     .into_error(&MoRef::new("HttpNfcLease", "52"));
/// assert_eq!(e.kind(), hypersdk_core::ErrorKind::NotFound);
/// assert!(matches!(lease_unusable(&e), Some(LeaseUnusable::NotReady { .. })));
/// assert!(lease_unusable(&hypersdk_core::Error::not_found("x")).is_none());
/// ```
pub fn lease_unusable(error: &Error) -> Option<&LeaseUnusable> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(u) = e.downcast_ref::<LeaseUnusable>() {
            return Some(u);
        }
        cur = e.source();
    }
    None
}

/// The keep-alive task and its stop signal.
struct KeepAlive {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The last keep-alive failure, if any (shared with the task).
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl KeepAlive {
    /// Stops the task and waits until it has (no progress call in flight
    /// afterwards).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A ready `HttpNfcLease`, renewed in the background until it is completed,
/// aborted or dropped. See the [module documentation](self).
pub struct NfcLease {
    client: Client,
    moref: MoRef,
    info: LeaseInfo,
    progress: LeaseProgress,
    keep_alive: Option<KeepAlive>,
    interval: Duration,
    /// Set once `complete` or `abort` has been sent (whatever the answer).
    finished: bool,
}

impl fmt::Debug for NfcLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfcLease")
            .field("moref", &self.moref)
            .field("info", &self.info)
            .field("percent", &self.progress.percent())
            .field("keep_alive_interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl NfcLease {
    /// Waits until `lease` is `ready` and starts its keep-alive.
    ///
    /// Polls `state`, `info` and `error` with the client's task backoff
    /// (100 ms growing to 2 s by default) up to the client's task timeout.
    /// A lease that is not ready is aborted (best effort) before the error
    /// is returned, so it does not hold the VM locked.
    ///
    /// # Errors
    ///
    /// The lease's fault mapped to a core error (its `localizedMessage`
    /// kept) when it went to `error`; [`Error::InvalidData`] for `done` or
    /// an unknown state, or a ready lease without `info`;
    /// [`Error::Timeout`] after the task timeout; errors reading the lease.
    pub async fn wait_ready(client: &Client, lease: MoRef) -> Result<NfcLease> {
        // Dropping this future while the lease initializes must not leave
        // the lease holding the VM either.
        let mut guard = AbortOnDrop {
            client,
            lease: Some(lease.clone()),
        };
        let polled = Self::poll_ready(client, &lease).await;
        guard.lease = None;
        drop(guard);
        match polled {
            Ok(info) => Ok(Self::start(client.clone(), lease, info)),
            Err(e) => {
                // Best effort: a lease still initializing would otherwise
                // hold the VM until it times out.
                if e.kind() != hypersdk_core::ErrorKind::NotFound {
                    let _ = send_abort(client, &lease, None).await;
                }
                Err(e)
            }
        }
    }

    async fn poll_ready(client: &Client, lease: &MoRef) -> Result<LeaseInfo> {
        let what = format!("HttpNfcLease {}", lease.value);
        let started = tokio::time::Instant::now();
        let mut polls: u32 = 0;
        loop {
            let props = retrieve_one(client, lease, &["state", "info", "error"]).await?;
            let state = props.text("state").map(str::trim).unwrap_or_default();
            match state {
                "ready" => {
                    let info = props.prop("info").ok_or_else(|| {
                        Error::invalid_data(&what, "the lease is ready but has no info")
                    })?;
                    return Ok(LeaseInfo::from_node(info, client));
                }
                "error" => {
                    let fault = props
                        .prop("error")
                        .map(VimFault::from_localized)
                        .unwrap_or_else(|| {
                            VimFault::new("", "the lease went to state error without a fault")
                        });
                    return Err(fault_to_error(
                        fault,
                        &format!("{what} failed to initialize"),
                    ));
                }
                "initializing" => {}
                other => {
                    return Err(Error::invalid_data(
                        &what,
                        format!("unexpected lease state '{other}' while waiting for 'ready'"),
                    ));
                }
            }
            polls = polls.saturating_add(1);
            let delay = client.task_poll().jittered_delay(polls);
            if let Some(limit) = client.task_timeout()
                && started.elapsed() + delay > limit
            {
                return Err(Error::Timeout {
                    operation: format!("waiting for {what} to become ready"),
                    after: limit,
                });
            }
            tracing::trace!(lease = %lease.value, "waiting for the NFC lease");
            tokio::time::sleep(delay).await;
        }
    }

    /// Takes over `lease`, which must be `ready` already (one this login
    /// session created earlier, maybe in a process that was killed): reads
    /// its `state`, `info` and `error` once, renews it at once with
    /// `HttpNfcLeaseProgress` at `percent`, and starts the keep-alive.
    /// Unlike [`NfcLease::wait_ready`] it does not wait, and it never
    /// aborts a lease it cannot use.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] with a [`LeaseUnusable`] source when the lease
    /// is gone for this session ([`LeaseUnusable::Gone`], also when the
    /// session itself is gone and cannot be replaced) or not `ready`
    /// ([`LeaseUnusable::NotReady`], also when the renewal is refused with
    /// a fault); other errors (network) as they come.
    pub async fn reattach(client: &Client, lease: MoRef, percent: u8) -> Result<NfcLease> {
        let what = format!("HttpNfcLease {}", lease.value);
        let gone = |e: &Error| {
            matches!(
                e.kind(),
                hypersdk_core::ErrorKind::NotFound | hypersdk_core::ErrorKind::Unauthenticated
            )
        };
        let props = match retrieve_one(client, &lease, &["state", "info", "error"]).await {
            Ok(p) => p,
            // Unauthenticated: the session is gone and could not be
            // replaced; a replacement would not see the lease either.
            Err(e) if gone(&e) => {
                return Err(LeaseUnusable::Gone {
                    detail: e.to_string(),
                }
                .into_error(&lease));
            }
            Err(e) => return Err(e),
        };
        if let Some(m) = props.missing.first() {
            // Read refused property by property (vcsim's answer without a
            // session, or an object of another session).
            return Err(LeaseUnusable::Gone {
                detail: format!("'{}' could not be read: {}", m.path, m.fault),
            }
            .into_error(&lease));
        }
        let state = props.text("state").map(str::trim).unwrap_or_default();
        if state != "ready" {
            let fault = props
                .prop("error")
                .map(|n| VimFault::from_localized(n).to_string());
            return Err(LeaseUnusable::NotReady {
                state: if state.is_empty() {
                    "(none)".to_owned()
                } else {
                    state.to_owned()
                },
                fault,
            }
            .into_error(&lease));
        }
        let info = props
            .prop("info")
            .map(|n| LeaseInfo::from_node(n, client))
            .ok_or_else(|| Error::invalid_data(&what, "the lease is ready but has no info"))?;
        let mut req = Request::new("HttpNfcLeaseProgress", &lease);
        req.int("percent", i64::from(percent.min(100)));
        match client.invoke_idempotent(&req).await {
            Ok(_) => {}
            Err(e) if gone(&e) => {
                return Err(LeaseUnusable::Gone {
                    detail: e.to_string(),
                }
                .into_error(&lease));
            }
            Err(e) if crate::vim_fault(&e).is_some() => {
                return Err(LeaseUnusable::NotReady {
                    state: "ready".to_owned(),
                    fault: Some(format!("renewing it was refused: {e}")),
                }
                .into_error(&lease));
            }
            Err(e) => return Err(e),
        }
        tracing::info!(lease = %lease.value, percent, "NFC lease taken over");
        let lease = Self::start(client.clone(), lease, info);
        lease.progress.set_percent(percent);
        Ok(lease)
    }

    fn start(client: Client, moref: MoRef, info: LeaseInfo) -> NfcLease {
        let interval = keep_alive_interval(info.lease_timeout_secs);
        let progress = LeaseProgress::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let task = {
            let client = client.clone();
            let moref = moref.clone();
            let progress = progress.clone();
            let failure = Arc::clone(&failure);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        () = tokio::time::sleep(interval) => {}
                    }
                    let pct = progress.percent();
                    let mut req = Request::new("HttpNfcLeaseProgress", &moref);
                    req.int("percent", i64::from(pct));
                    // Renewing is safe to repeat: idempotent (retried on
                    // transient failures). The stop signal wins over a
                    // call in flight.
                    let call = client.invoke_idempotent(&req);
                    let result = tokio::select! {
                        _ = stopped.changed() => break,
                        r = call => r,
                    };
                    match result {
                        Ok(_) => {
                            tracing::trace!(lease = %moref.value, percent = pct, "NFC lease renewed");
                        }
                        Err(e) => {
                            tracing::warn!(lease = %moref.value, error = %e, "HttpNfcLeaseProgress failed");
                            *failure
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(e.to_string());
                        }
                    }
                }
            })
        };
        tracing::debug!(
            lease = %moref.value,
            files = info.device_urls.len(),
            interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            "NFC lease ready; keep-alive started"
        );
        NfcLease {
            client,
            moref,
            info,
            progress,
            keep_alive: Some(KeepAlive {
                stop,
                task,
                failure,
            }),
            interval,
            finished: false,
        }
    }

    /// The lease's managed object reference.
    pub fn moref(&self) -> &MoRef {
        &self.moref
    }

    /// What the lease offers.
    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }

    /// The handle that sets the percentage the keep-alive reports.
    pub fn progress(&self) -> LeaseProgress {
        self.progress.clone()
    }

    /// How often the keep-alive renews the lease.
    pub fn keep_alive_interval(&self) -> Duration {
        self.interval
    }

    /// The last failure of a keep-alive call, if any (the lease may be
    /// about to expire or already gone).
    pub fn keep_alive_failure(&self) -> Option<String> {
        self.keep_alive.as_ref().and_then(|k| {
            k.failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Lets go of the lease without ending it: the keep-alive stops, and
    /// neither `HttpNfcLeaseComplete` nor `HttpNfcLeaseAbort` is sent (now
    /// or on drop). The server keeps the lease for its `leaseTimeout` from
    /// the last renewal ([`LeaseInfo::lease_timeout_secs`]), for the login
    /// session that holds it; [`NfcLease::reattach`] takes it over again.
    /// Returns the lease's reference.
    pub fn detach(mut self) -> MoRef {
        if let Some(k) = self.keep_alive.take() {
            let _ = k.stop.send(true);
            k.task.abort();
        }
        self.finished = true;
        tracing::info!(lease = %self.moref.value, "NFC lease detached; left to its timeout");
        self.moref.clone()
    }

    /// Stops the keep-alive and sends `HttpNfcLeaseComplete` (the server
    /// releases the VM; for an import, the VM is ready).
    ///
    /// # Errors
    ///
    /// The mapped fault (`Timedout`, `InvalidState` when the lease is no
    /// longer ready) or transport error.
    pub async fn complete(mut self) -> Result<()> {
        if let Some(k) = self.keep_alive.take() {
            k.stop().await;
        }
        let req = Request::new("HttpNfcLeaseComplete", &self.moref);
        let result = self.client.invoke(&req).await;
        self.finished = true;
        match result {
            Ok(_) => {
                tracing::debug!(lease = %self.moref.value, "NFC lease completed");
                Ok(())
            }
            Err(e) => {
                // Release the VM rather than leave the lease to time out.
                if let Err(a) = send_abort(
                    &self.client,
                    &self.moref,
                    Some("completing the lease failed"),
                )
                .await
                {
                    tracing::debug!(lease = %self.moref.value, error = %a, "HttpNfcLeaseAbort after a failed complete failed");
                }
                Err(e)
            }
        }
    }

    /// Stops the keep-alive and sends `HttpNfcLeaseAbort` with a
    /// `SystemError` fault carrying `reason` (the server shows it as the
    /// lease's error). A server that refuses the fault parameter gets an
    /// abort without one.
    ///
    /// # Errors
    ///
    /// The mapped fault or transport error of the abort.
    pub async fn abort(mut self, reason: &str) -> Result<()> {
        if let Some(k) = self.keep_alive.take() {
            k.stop().await;
        }
        tracing::info!(lease = %self.moref.value, reason, "aborting NFC lease");
        let result = send_abort(&self.client, &self.moref, Some(reason)).await;
        self.finished = true;
        result
    }
}

impl Drop for NfcLease {
    fn drop(&mut self) {
        if let Some(k) = self.keep_alive.take() {
            let _ = k.stop.send(true);
            k.task.abort();
        }
        if self.finished {
            return;
        }
        tracing::warn!(
            lease = %self.moref.value,
            "NFC lease dropped without complete() or abort(): aborting it in the background"
        );
        abort_in_background(&self.client, &self.moref);
    }
}

/// Aborts `lease` in the background when dropped while still set: what a
/// cancelled [`NfcLease::wait_ready`] leaves behind.
struct AbortOnDrop<'a> {
    client: &'a Client,
    lease: Option<MoRef>,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        tracing::warn!(
            lease = %lease.value,
            "waiting for the NFC lease was cancelled: aborting it in the background"
        );
        abort_in_background(self.client, &lease);
    }
}

/// `HttpNfcLeaseAbort` on a task of the current runtime (none: nothing),
/// for the drop paths that cannot wait for it.
fn abort_in_background(client: &Client, lease: &MoRef) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = client.clone();
    let lease = lease.clone();
    rt.spawn(async move {
        if let Err(e) = send_abort(&client, &lease, Some("the transfer was cancelled")).await {
            tracing::debug!(lease = %lease.value, error = %e, "background HttpNfcLeaseAbort failed");
        }
    });
}

/// The keep-alive period: at most 5 s and at most a third of the lease
/// timeout, at least 200 ms.
fn keep_alive_interval(lease_timeout_secs: u32) -> Duration {
    let third = Duration::from_secs(u64::from(lease_timeout_secs)) / 3;
    MAX_KEEP_ALIVE.min(third).max(MIN_KEEP_ALIVE)
}

/// `HttpNfcLeaseAbort`, with a `LocalizedMethodFault` naming `reason` when
/// given (retried once without it if the server rejects the parameter).
async fn send_abort(client: &Client, lease: &MoRef, reason: Option<&str>) -> Result<()> {
    let mut req = Request::new("HttpNfcLeaseAbort", lease);
    if let Some(reason) = reason {
        req.start("fault")
            .start_typed("fault", "SystemError")
            .text("reason", reason)
            .end()
            .text("localizedMessage", reason)
            .end();
    }
    match client.invoke(&req).await {
        Err(e)
            if reason.is_some()
                && crate::vim_fault(&e).is_some_and(|f| {
                    matches!(
                        f.fault_type.as_str(),
                        "InvalidRequest" | "InvalidArgument" | "InvalidType"
                    )
                }) =>
        {
            let plain = Request::new("HttpNfcLeaseAbort", lease);
            client.invoke(&plain).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_interval_is_bounded() {
        assert_eq!(keep_alive_interval(300), Duration::from_secs(5));
        assert_eq!(keep_alive_interval(6), Duration::from_secs(2));
        assert_eq!(keep_alive_interval(0), MIN_KEEP_ALIVE);
    }

    #[test]
    fn progress_from_bytes() {
        let p = LeaseProgress::default();
        p.set_bytes(1, 3);
        assert_eq!(p.percent(), 33);
        p.set_bytes(5, 3);
        assert_eq!(p.percent(), 100);
        p.set_bytes(5, 0);
        assert_eq!(p.percent(), 0);
        p.set_percent(250);
        assert_eq!(p.percent(), 100);
        p.set_bytes(u64::MAX - 1, u64::MAX);
        assert_eq!(p.percent(), 99);
    }

    #[test]
    fn file_names() {
        let d = |url: &str, target: Option<&str>| DeviceUrl {
            key: String::new(),
            import_key: String::new(),
            url: url.to_owned(),
            target_id: target.map(str::to_owned),
            disk: true,
            ssl_thumbprint: None,
            file_size: None,
        };
        assert_eq!(
            d("https://h/nfc/x/disk-0.vmdk", Some("a.vmdk")).file_name(0),
            "a.vmdk"
        );
        assert_eq!(
            d("https://h/nfc/x/disk-1.vmdk?x=1", None).file_name(1),
            "disk-1.vmdk"
        );
        assert_eq!(
            d("https://h/nfc/x/my%20disk.vmdk", None).file_name(1),
            "my disk.vmdk"
        );
        assert_eq!(d("https://h/nfc/x/", None).file_name(2), "file-2");
        assert_eq!(d("https://h/nfc/x/a%2Fb", None).file_name(3), "file-3");
        assert_eq!(d("https://h/nfc/x/..", Some("../x")).file_name(4), "file-4");
        assert_eq!(d("https://h/nfc/x/a+b", Some("")).file_name(5), "a+b");
    }
}
