//! [`OvmProvider`]: the core [`Provider`] over an [`OvmClient`].
//!
//! | operation | how |
//! |---|---|
//! | discover, vm | the exporter's VMs; disk sizes from the newest snapshot |
//! | snapshots | create (never blindly retried), list (oldest first), delete |
//! | open_disk | a snapshot's disk only, as an [`OvmDisk`] (HTTP `Range`) |
//! | changed_extents | the client-side diff of raw chunk lists ([`crate::diff`]), freed ranges included |
//! | export | one raw block source per disk of a snapshot |
//! | import | unsupported: the exporter is read-only |
//!
//! **Mapping.** [`VmInfo::id`] is the exporter's VM id (the 32-hex `name`
//! of `vm.cfg`), [`VmInfo::name`] its OVM display name, [`VmInfo::uuid`]
//! the hyphenated UUID. Disks are keyed by their image file name
//! ([`DiskInfo::id`] = the exporter's disk name), with the guest device as
//! [`DiskInfo::name`] and the image path as [`DiskInfo::backing`]. CPUs,
//! memory, firmware, power state and NICs are not reported by the exporter
//! and stay unknown.
//!
//! **Disk sizes.** The exporter reports no size for a VM's disks, only for
//! a snapshot's files. [`DiskInfo::capacity_bytes`] is therefore read (one
//! `HEAD` per disk) from the VM's newest snapshot on this exporter; a VM
//! without a snapshot, or a disk added since, shows 0 and a warning.
//!
//! **Warnings.** What the exporter does not show goes into the VM's
//! annotations under [`WARNINGS_ANNOTATION`] (read them with
//! [`vm_warnings`]) and into a `WARN` log line: a VM that is not
//! snapshot-compatible, CD-ROM disks, a VM that lists no disk at all (it
//! has none, or only `phy:` disks, which the exporter skips while still
//! calling the VM snapshot-compatible), unknown sizes, and the `phy:` disks
//! the caller knows of from the VM's `vm.cfg`
//! ([`OvmProvider::with_vm_cfg`], [`OvmProvider::with_phy_disks`]): those
//! are never snapshotted or exported.
//!
//! **Snapshot names.** The exporter keeps no name or time for a snapshot.
//! The name given to [`Provider::create_snapshot`] is remembered by this
//! provider (and its clones) for the snapshots it created; other snapshots
//! are named by their id. `created` is always `None`, `parent` too (each
//! snapshot is an independent reflink).
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::model::VmFilter;
//! use hypersdk_core::provider::Provider;
//! use hypersdk_ovm::{OvmClient, OvmProvider, provider::vm_warnings};
//!
//! let client = OvmClient::builder("https://ovs1.example:5544")
//!     .credentials("admin", "secret")
//!     .build()?;
//! let provider = OvmProvider::new(client)
//!     .with_vm_cfg("0004fb0000060000ccaf98a0baa2c186", &std::fs::read_to_string("vm.cfg").unwrap());
//! for vm in provider.discover(&VmFilter::all()).await? {
//!     for w in vm_warnings(&vm) {
//!         eprintln!("{}: {w}", vm.name);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::model::{
    ControllerKind, DiskController, DiskFormat, DiskInfo, ExtentList, SnapshotInfo, SnapshotRef,
    VmFilter, VmInfo, VmRef,
};
use hypersdk_core::provider::{
    Capabilities, Capability, ChangedExtents, Descriptor, DescriptorFormat, DiskData, DiskRef,
    DiskTransfer, Export, ExportFinisher, ExportOptions, ImportOptions, ImportPackage, Provider,
    unsupported,
};
use hypersdk_core::{Error, ErrorKind, Result};

use crate::client::{OvmClient, OvmDisk};
use crate::diff::{chunks_to_extents, diff_chunks};
use crate::types::{SnapshotQuery, VirtualMachine, VmSnapshot};

/// The provider's name in messages and manifests.
pub const PROVIDER_NAME: &str = "ovm";

/// The [`VmInfo::annotations`] key holding the VM's warnings, one per line.
pub const WARNINGS_ANNOTATION: &str = "ovm.warnings";

/// The [`VmInfo::annotations`] key saying whether the exporter can
/// snapshot the VM (`true`/`false`).
pub const SNAPSHOT_COMPATIBLE_ANNOTATION: &str = "ovm.snapshot_compatible";

/// How many `HEAD`s (disk sizes) are in flight at once.
const PARALLEL_HEADS: usize = 8;

/// The warnings [`OvmProvider`] attached to a VM (see the [module
/// documentation](self)).
pub fn vm_warnings(vm: &VmInfo) -> Vec<String> {
    vm.annotations
        .get(WARNINGS_ANNOTATION)
        .map(|w| w.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `phy:` device paths of a `vm.cfg`'s `disk = [...]` list (which may
/// span lines): `'phy:/dev/mapper/x,xvdb,w'` gives `/dev/mapper/x`.
///
/// ```
/// let cfg = "name = '0004fb00'\ndisk = ['file:/OVS/Repositories/r/VirtualDisks/a.img,xvda,w',\n  'phy:/dev/mapper/3600a0b80,xvdb,w']\n";
/// assert_eq!(hypersdk_ovm::provider::phy_disks_from_vm_cfg(cfg), ["/dev/mapper/3600a0b80"]);
/// ```
pub fn phy_disks_from_vm_cfg(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("disk") {
        let after = &rest[at + 4..];
        // `disk` must be a whole key followed by `=` and `[`.
        let before_ok = at == 0 || {
            let prev = rest[..at].chars().next_back().unwrap_or('\n');
            !(prev.is_alphanumeric() || prev == '_')
        };
        let trimmed = after.trim_start();
        let list = trimmed
            .strip_prefix('=')
            .map(str::trim_start)
            .and_then(|t| t.strip_prefix('['));
        match (before_ok, list) {
            (true, Some(list)) => {
                let end = list.find(']').unwrap_or(list.len());
                let mut items = &list[..end];
                // Each entry is a quoted 'kind:path,device,mode'.
                while let Some(open) = items.find(['\'', '"']) {
                    let quote = &items[open..open + 1];
                    let body = &items[open + 1..];
                    let close = body.find(quote).unwrap_or(body.len());
                    let entry = body[..close].trim();
                    if let Some(path) = entry.strip_prefix("phy:") {
                        let path = path.split(',').next().unwrap_or("").trim();
                        if !path.is_empty() {
                            out.push(path.to_owned());
                        }
                    }
                    items = &body[(close + 1).min(body.len())..];
                }
                rest = &list[end..];
            }
            _ => rest = after,
        }
    }
    out
}

/// The Oracle VM provider over one Coriolis OVM exporter.
///
/// Cheap to clone; clones share the client and the remembered snapshot
/// names. A VM's backup chain must stay on one exporter: snapshots are
/// known only to the exporter (OVM server) that created them.
#[derive(Clone)]
pub struct OvmProvider {
    client: OvmClient,
    names: Arc<Mutex<HashMap<String, String>>>,
    phy_disks: Arc<BTreeMap<String, Vec<String>>>,
}

impl fmt::Debug for OvmProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvmProvider")
            .field("client", &self.client)
            .field("phy_disks", &self.phy_disks)
            .finish_non_exhaustive()
    }
}

impl OvmProvider {
    /// A provider over `client`.
    pub fn new(client: OvmClient) -> Self {
        OvmProvider {
            client,
            names: Arc::new(Mutex::new(HashMap::new())),
            phy_disks: Arc::new(BTreeMap::new()),
        }
    }

    /// The client.
    pub fn client(&self) -> &OvmClient {
        &self.client
    }

    /// Declares `phy:` disks of VM `vm_id` (raw device paths, from its
    /// `vm.cfg` or OVM Manager), which the exporter does not list: they are
    /// reported as warnings of the VM.
    #[must_use]
    pub fn with_phy_disks(
        mut self,
        vm_id: &str,
        paths: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut map = (*self.phy_disks).clone();
        map.entry(vm_id.to_owned())
            .or_default()
            .extend(paths.into_iter().map(Into::into));
        self.phy_disks = Arc::new(map);
        self
    }

    /// Reads the `phy:` disks of VM `vm_id` from the text of its `vm.cfg`
    /// ([`phy_disks_from_vm_cfg`]); see [`OvmProvider::with_phy_disks`].
    #[must_use]
    pub fn with_vm_cfg(self, vm_id: &str, vm_cfg: &str) -> Self {
        self.with_phy_disks(vm_id, phy_disks_from_vm_cfg(vm_cfg))
    }

    fn not_found(&self, what: impl fmt::Display, source: Option<Error>) -> Error {
        Error::NotFound {
            object: format!("{what} on the OVM exporter {}", self.client.endpoint()),
            source: source.map(|e| Box::new(e) as hypersdk_core::error::BoxError),
        }
    }

    /// The exporter's VM named by `r`.
    async fn resolve(&self, r: &VmRef) -> Result<VirtualMachine> {
        let matches: Box<dyn Fn(&VirtualMachine) -> bool + Send + Sync> = match r {
            VmRef::Id(id) => {
                return match self.client.vm(id).await {
                    Err(e)
                        if e.kind() == ErrorKind::NotFound
                            || e.kind() == ErrorKind::InvalidInput =>
                    {
                        Err(self.not_found(r, Some(e)))
                    }
                    other => other,
                };
            }
            VmRef::Name(n) => {
                let n = n.clone();
                Box::new(move |v| display_name(v) == n)
            }
            VmRef::Uuid(u) => {
                let u = u.clone();
                let bare = u.replace('-', "").to_ascii_lowercase();
                Box::new(move |v| {
                    v.uuid.eq_ignore_ascii_case(&u) || v.name.eq_ignore_ascii_case(&bare)
                })
            }
            VmRef::InventoryPath(p) => {
                let last = p.rsplit('/').next().unwrap_or(p.as_str()).to_owned();
                Box::new(move |v| display_name(v) == last)
            }
            other => {
                return Err(Error::invalid_input(format!(
                    "the OVM provider cannot resolve {other}: use its id, name or UUID"
                )));
            }
        };
        let mut hits: Vec<VirtualMachine> = self
            .client
            .list_vms()
            .await?
            .into_iter()
            .filter(|v| matches(v))
            .collect();
        match hits.len() {
            0 => Err(self.not_found(r, None)),
            1 => Ok(hits.remove(0)),
            n => Err(Error::Conflict {
                object: r.to_string(),
                message: format!(
                    "{n} VMs match ({}); use the VM id",
                    hits.iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The exporter's VM id for `r`, without a request for an id.
    async fn vm_id(&self, r: &VmRef) -> Result<String> {
        match r {
            VmRef::Id(id) => Ok(id.clone()),
            other => Ok(self.resolve(other).await?.name),
        }
    }

    /// Disk sizes from the VM's newest snapshot: name → bytes.
    async fn disk_sizes(&self, vm: &VirtualMachine) -> Result<HashMap<String, u64>> {
        let Some(newest) = vm.snapshots.last() else {
            return Ok(HashMap::new());
        };
        let names: Vec<String> = vm.disks.iter().map(|d| d.name.clone()).collect();
        let sizes: Vec<Option<(String, u64)>> = stream::iter(names)
            .map(|d| async move {
                match self.client.disk_size(&vm.name, newest, &d).await {
                    Ok(size) => Ok(Some((d, size))),
                    // A disk added after the newest snapshot, or the
                    // snapshot deleted meanwhile: size unknown.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(PARALLEL_HEADS)
            .try_collect()
            .await?;
        Ok(sizes.into_iter().flatten().collect())
    }

    /// The core view of an exporter VM with its disk sizes.
    fn vm_info(&self, vm: &VirtualMachine, sizes: &HashMap<String, u64>) -> VmInfo {
        let mut info = VmInfo::new(vm.name.clone(), display_name(vm));
        info.uuid = Some(vm.uuid.clone()).filter(|u| !u.is_empty());
        let mut warnings = Vec::new();
        for d in &vm.disks {
            let capacity = sizes.get(&d.name).copied().unwrap_or(0);
            let (device, cdrom) = match d.device_name.split_once(':') {
                Some((dev, kind)) => (dev, kind.eq_ignore_ascii_case("cdrom")),
                None => (d.device_name.as_str(), false),
            };
            let mut disk = DiskInfo::new(d.name.clone(), capacity);
            disk.name = Some(d.device_name.clone()).filter(|n| !n.is_empty());
            disk.format = DiskFormat::Raw;
            disk.controller = controller(device);
            disk.backing = Some(d.path.clone()).filter(|p| !p.is_empty());
            info.disks.push(disk);
            if cdrom {
                warnings.push(format!(
                    "disk {} is a CD-ROM ({}), not a virtual disk",
                    d.name, d.device_name
                ));
            }
            if !d.snapshot_compatible {
                warnings.push(format!(
                    "disk {} ({}) cannot be reflinked (not on OCFS2, or not a virtual disk): \
                     the VM cannot be snapshotted or backed up through the exporter",
                    d.name, d.device_name
                ));
            }
        }
        if vm.disks.is_empty() {
            warnings.push(
                "the exporter lists no disk for this VM: it has none, or only phy: disks, which \
                 the exporter skips (and still calls the VM snapshot-compatible); nothing of it \
                 can be backed up through the exporter"
                    .to_owned(),
            );
        } else if vm.snapshots.is_empty() {
            warnings.push(
                "disk sizes are unknown (0) until the VM has a snapshot on this exporter: the \
                 exporter reports sizes only for snapshot files"
                    .to_owned(),
            );
        } else {
            for d in vm.disks.iter().filter(|d| !sizes.contains_key(&d.name)) {
                warnings.push(format!(
                    "the size of disk {} is unknown (0): it is not in the VM's newest snapshot",
                    d.name
                ));
            }
        }
        if !vm.snapshot_compatible && vm.disks.iter().all(|d| d.snapshot_compatible) {
            warnings.push("the exporter says the VM cannot be snapshotted".to_owned());
        }
        for p in self.phy_disks.get(&vm.name).into_iter().flatten() {
            warnings.push(format!(
                "phy: disk {p} is in the VM's configuration but the exporter does not list, \
                 snapshot or export it: back it up another way"
            ));
        }
        info.annotations.insert(
            SNAPSHOT_COMPATIBLE_ANNOTATION.to_owned(),
            vm.snapshot_compatible.to_string(),
        );
        if !warnings.is_empty() {
            info.annotations
                .insert(WARNINGS_ANNOTATION.to_owned(), warnings.join("\n"));
        }
        info
    }

    /// [`OvmProvider::vm_info`] after reading the sizes, with the warnings
    /// logged.
    async fn full_info(&self, vm: &VirtualMachine) -> Result<VmInfo> {
        let sizes = self.disk_sizes(vm).await?;
        let info = self.vm_info(vm, &sizes);
        for w in vm_warnings(&info) {
            tracing::warn!(vm = %info.id, name = %info.name, "{w}");
        }
        Ok(info)
    }

    /// A snapshot as the core sees it; disk sizes by `HEAD`.
    async fn snapshot_info(&self, s: &VmSnapshot) -> Result<SnapshotInfo> {
        let disks: Vec<DiskInfo> = stream::iter(s.disks.clone())
            .map(|d| async move {
                let size = self.client.disk_size(&s.vm_id, &s.id, &d.name).await?;
                let mut info = DiskInfo::new(d.name.clone(), size);
                info.allocated_bytes = Some(chunks_to_extents(&d.chunks, size).total_bytes());
                info.format = DiskFormat::Raw;
                info.backing = Some(d.path.clone()).filter(|p| !p.is_empty());
                Ok::<_, Error>(info)
            })
            .buffered(PARALLEL_HEADS)
            .try_collect()
            .await?;
        let name = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&s.id)
            .cloned()
            .unwrap_or_else(|| s.id.clone());
        Ok(SnapshotInfo {
            id: s.id.clone(),
            vm_id: s.vm_id.clone(),
            name,
            description: None,
            parent: None,
            created: None,
            disks,
        })
    }

    /// Snapshot `id` of the VM with its raw (unsquashed) chunks.
    async fn raw_snapshot(&self, vm_id: &str, id: &str) -> Result<VmSnapshot> {
        self.client.snapshot(vm_id, id, &SnapshotQuery::raw()).await
    }

    /// The parts of an export of snapshot `snap` of `v`.
    async fn export_snapshot(
        &self,
        v: &VirtualMachine,
        snap: &VmSnapshot,
        options: &ExportOptions,
    ) -> Result<Export> {
        if let Some(wanted) = &options.disks
            && let Some(missing) = wanted.iter().find(|w| snap.disk(w).is_none())
        {
            return Err(self.not_found(
                format!(
                    "disk '{missing}' in snapshot '{}' of VM id '{}'",
                    snap.id, v.name
                ),
                None,
            ));
        }
        let selected: Vec<String> = snap
            .disks
            .iter()
            .filter(|d| {
                options
                    .disks
                    .as_ref()
                    .is_none_or(|w| w.iter().any(|x| x == &d.name))
            })
            .map(|d| d.name.clone())
            .collect();
        let opened: Vec<OvmDisk> = stream::iter(selected)
            .map(|d| async move { self.client.open_snapshot_disk(snap, &d).await })
            .buffered(PARALLEL_HEADS)
            .try_collect()
            .await?;
        let sizes: HashMap<String, u64> = opened
            .iter()
            .map(|d| (d.name().to_owned(), d.len()))
            .collect();
        let info = self.vm_info(v, &sizes);
        let descriptor = serde_json::to_vec_pretty(v)
            .map_err(|e| Error::other(format!("encoding the VM's JSON: {e}")))?;
        let mut export = Export::new(info.clone(), "ovm-snapshot")
            .with_descriptor(Descriptor {
                format: DescriptorFormat::Json,
                file_name: format!("{}.ovm.json", safe_file_name(&v.name)),
                bytes: Bytes::from(descriptor),
            })
            .with_snapshot(SnapshotRef::new(v.name.clone(), snap.id.clone()));
        for disk in opened {
            let mut d = info
                .disk(disk.name())
                .cloned()
                .unwrap_or_else(|| DiskInfo::new(disk.name(), disk.len()));
            d.capacity_bytes = disk.len();
            d.allocated_bytes = Some(disk.allocated().total_bytes());
            d.format = DiskFormat::Raw;
            export = export.with_disk(DiskTransfer {
                info: d,
                file_name: safe_file_name(disk.name()),
                format: DiskFormat::Raw,
                size: Some(disk.len()),
                data: DiskData::Blocks(Arc::new(disk)),
            });
        }
        Ok(export)
    }

    /// Checks that snapshot `from` was taken before `to`, by their order in
    /// the VM's list (or by the exporter's `compareTo` check when the VM is
    /// gone: snapshots outlive their VM).
    async fn check_order(&self, vm_id: &str, from: &str, to: &str) -> Result<()> {
        if from == to {
            return Err(Error::invalid_input(format!(
                "changed extents from snapshot '{from}' to itself: give an older snapshot"
            )));
        }
        match self.client.vm(vm_id).await {
            Ok(vm) => {
                let pos = |id: &str| vm.snapshots.iter().position(|s| s == id);
                match (pos(from), pos(to)) {
                    (Some(a), Some(b)) if a < b => Ok(()),
                    (Some(_), Some(_)) => Err(Error::invalid_input(format!(
                        "snapshot '{from}' is not older than snapshot '{to}' of VM id \
                         '{vm_id}': changed extents go from an older to a newer snapshot"
                    ))),
                    _ => Err(self.not_found(
                        format!(
                            "snapshot '{from}' or '{to}' in the snapshot list of VM id '{vm_id}'"
                        ),
                        None,
                    )),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => self
                .client
                .snapshot(vm_id, to, &SnapshotQuery::squashed().compare_to(from))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }
}

/// The display name: `friendly_name`, or the id when it has none.
fn display_name(vm: &VirtualMachine) -> String {
    if vm.friendly_name.is_empty() {
        vm.name.clone()
    } else {
        vm.friendly_name.clone()
    }
}

/// The controller of a Xen device name: `xvdb` (paravirtual), `hda` (IDE),
/// `sdc` (SCSI); the unit is the letter's index.
fn controller(device: &str) -> Option<DiskController> {
    let (kind, model, letters) = if let Some(l) = device.strip_prefix("xvd") {
        (ControllerKind::Other, Some("xen-blkfront".to_owned()), l)
    } else if let Some(l) = device.strip_prefix("hd") {
        (ControllerKind::Ide, None, l)
    } else if let Some(l) = device.strip_prefix("sd") {
        (ControllerKind::Scsi, None, l)
    } else {
        return None;
    };
    if letters.is_empty() || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    // xvda = 0, …, xvdz = 25, xvdaa = 26, …
    let unit = letters
        .bytes()
        .try_fold(0u32, |acc, b| {
            acc.checked_mul(26)?.checked_add(u32::from(b - b'a') + 1)
        })?
        .checked_sub(1)?;
    Some(DiskController {
        kind,
        model,
        bus: 0,
        unit,
    })
}

/// Deletes the snapshot an export took, when the export ends.
struct SnapshotFinisher {
    client: OvmClient,
    vm_id: String,
    snapshot_id: String,
    /// Whether the export took the snapshot (and so deletes it).
    owned: bool,
    done: bool,
}

impl fmt::Debug for SnapshotFinisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotFinisher")
            .field("vm_id", &self.vm_id)
            .field("snapshot_id", &self.snapshot_id)
            .field("owned", &self.owned)
            .finish()
    }
}

impl SnapshotFinisher {
    async fn finish(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        if self.owned {
            self.client
                .delete_snapshot(&self.vm_id, &self.snapshot_id)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ExportFinisher for SnapshotFinisher {
    async fn complete(self: Box<Self>) -> Result<()> {
        self.finish().await
    }

    async fn abort(self: Box<Self>, reason: &str) -> Result<()> {
        tracing::debug!(vm = %self.vm_id, snapshot = %self.snapshot_id, reason, "OVM export aborted");
        self.finish().await
    }
}

impl Drop for SnapshotFinisher {
    fn drop(&mut self) {
        if self.done || !self.owned {
            return;
        }
        let (client, vm, snap) = (
            self.client.clone(),
            self.vm_id.clone(),
            self.snapshot_id.clone(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = client.delete_snapshot(&vm, &snap).await {
                        tracing::warn!(vm = %vm, snapshot = %snap, error = %e, "could not delete the snapshot of a dropped export");
                    }
                });
            }
            Err(_) => tracing::warn!(
                vm = %vm, snapshot = %snap,
                "an export was dropped outside a runtime: its snapshot is left on the exporter"
            ),
        }
    }
}

#[async_trait]
impl Provider for OvmProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        [
            Capability::Discover,
            Capability::Snapshots,
            Capability::Export,
            Capability::OpenSnapshotDisk,
            Capability::ChangedExtents,
            Capability::FreedExtents,
        ]
        .into_iter()
        .collect()
    }

    async fn discover(&self, filter: &VmFilter) -> Result<Vec<VmInfo>> {
        let vms = self.client.list_vms().await?;
        // Filter by name first, so sizes are read only for the VMs kept.
        let candidates: Vec<VirtualMachine> = vms
            .into_iter()
            .filter(|v| {
                filter.matches(&VmInfo {
                    power_state: Default::default(),
                    ..VmInfo::new(v.name.clone(), display_name(v))
                })
            })
            .collect();
        let mut out: Vec<VmInfo> = stream::iter(candidates)
            .map(|v| async move { self.full_info(&v).await })
            .buffered(2)
            .try_collect()
            .await?;
        out.retain(|v| filter.matches(v));
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(out)
    }

    async fn vm(&self, vm: &VmRef) -> Result<VmInfo> {
        let v = self.resolve(vm).await?;
        self.full_info(&v).await
    }

    /// Takes a snapshot of every disk (crash-consistent per disk, not
    /// across disks). `name` is remembered by this provider only: the
    /// exporter keeps no name.
    async fn create_snapshot(&self, vm: &VmRef, name: &str) -> Result<SnapshotInfo> {
        let id = self.vm_id(vm).await?;
        let snap = match self.client.create_snapshot(&id).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.not_found(vm, Some(e))),
            other => other?,
        };
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(snap.id.clone(), name.to_owned());
        self.snapshot_info(&snap).await
    }

    async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<SnapshotInfo>> {
        let id = self.vm_id(vm).await?;
        let snaps = match self.client.list_snapshots(&id).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.not_found(vm, Some(e))),
            other => other?,
        };
        // Each snapshot's disks are sized in parallel already; a few
        // snapshots at once keeps the HEADs in flight bounded.
        stream::iter(snaps)
            .map(|s| async move { self.snapshot_info(&s).await })
            .buffered(2)
            .try_collect()
            .await
    }

    /// Deletes the snapshot; `NotFound` when it does not exist (the
    /// exporter itself would answer success), or belongs to another VM.
    async fn delete_snapshot(&self, snapshot: &SnapshotRef) -> Result<()> {
        self.client
            .snapshot(&snapshot.vm_id, &snapshot.id, &SnapshotQuery::squashed())
            .await?;
        self.client
            .delete_snapshot(&snapshot.vm_id, &snapshot.id)
            .await?;
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&snapshot.id);
        Ok(())
    }

    /// The disks of a snapshot (the one in `options`, or one taken for the
    /// export and deleted when the export completes or aborts), each as a
    /// raw [`DiskData::Blocks`] source read by HTTP `Range`, with the
    /// exporter's VM JSON as a descriptor.
    async fn export(&self, vm: &VmRef, options: &ExportOptions) -> Result<Export> {
        let v = self.resolve(vm).await?;
        let (snap, owned) = match &options.snapshot {
            Some(id) => (self.raw_snapshot(&v.name, id).await?, false),
            None => {
                // Check the disks asked for before taking a snapshot.
                if let Some(missing) = options
                    .disks
                    .iter()
                    .flatten()
                    .find(|w| !v.disks.iter().any(|d| &d.name == *w))
                {
                    return Err(
                        self.not_found(format!("disk '{missing}' of VM id '{}'", v.name), None)
                    );
                }
                (self.client.create_snapshot(&v.name).await?, true)
            }
        };
        let finisher = Box::new(SnapshotFinisher {
            client: self.client.clone(),
            vm_id: v.name.clone(),
            snapshot_id: snap.id.clone(),
            owned,
            done: false,
        });
        match self.export_snapshot(&v, &snap, options).await {
            Ok(export) => Ok(export.with_finisher(finisher)),
            Err(e) => {
                // Delete a snapshot taken for this export before failing.
                if let Err(cleanup) = finisher.finish().await {
                    tracing::warn!(vm = %v.name, snapshot = %snap.id, error = %cleanup,
                        "could not delete the snapshot of a failed export");
                }
                Err(e)
            }
        }
    }

    async fn import(&self, _package: ImportPackage, _options: &ImportOptions) -> Result<VmInfo> {
        Err(unsupported(
            self,
            "import (the OVM exporter is read-only: it can snapshot and serve disks, not create VMs)",
        ))
    }

    /// A snapshot's disk as an [`OvmDisk`]. The exporter serves nothing of
    /// the live VM: without a snapshot this is `Unsupported`.
    async fn open_disk(
        &self,
        disk: &DiskRef,
        snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>> {
        let Some(snapshot) = snapshot else {
            return Err(unsupported(
                self,
                "open_disk without a snapshot (the OVM exporter serves only snapshot disks: \
                 take a snapshot and pass its id)",
            ));
        };
        let vm_id = self.vm_id(&disk.vm).await?;
        let d = self
            .client
            .open_disk(&vm_id, snapshot, &disk.disk_id)
            .await?;
        Ok(Arc::new(d))
    }

    /// The client-side diff of the two snapshots' raw chunk lists; freed
    /// ranges included. With `from = None`, the allocation of `to`.
    async fn changed_extents(
        &self,
        disk: &DiskRef,
        from: Option<&str>,
        to: &str,
    ) -> Result<ChangedExtents> {
        let vm_id = self.vm_id(&disk.vm).await?;
        let new = self.raw_snapshot(&vm_id, to).await?;
        let Some(new_disk) = new.disk(&disk.disk_id) else {
            return Err(self.not_found(
                format!(
                    "disk '{}' in snapshot '{to}' of VM id '{vm_id}'",
                    disk.disk_id
                ),
                None,
            ));
        };
        let size = self.client.disk_size(&vm_id, to, &disk.disk_id).await?;
        let Some(from) = from else {
            return Ok(ChangedExtents {
                disk_size: size,
                changed: chunks_to_extents(&new_disk.chunks, size),
                freed: Some(ExtentList::new()),
            });
        };
        // The order first: it is cheap, the older raw chunk list is not.
        self.check_order(&vm_id, from, to).await?;
        let old = self.raw_snapshot(&vm_id, from).await?;
        // A disk added since `from` has no old chunks: all of it changed.
        let old_chunks = old
            .disk(&disk.disk_id)
            .map(|d| d.chunks.as_slice())
            .unwrap_or(&[]);
        let d = diff_chunks(old_chunks, &new_disk.chunks, size);
        Ok(ChangedExtents {
            disk_size: size,
            changed: d.changed,
            freed: Some(d.freed),
        })
    }
}

/// `name` with anything but `[A-Za-z0-9._-]` replaced by `_`, and never
/// `.`/`..`/empty.
fn safe_file_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("disk{s}").replace('.', "_")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_devices() {
        let c = controller("xvda").unwrap();
        assert_eq!((c.kind, c.unit), (ControllerKind::Other, 0));
        assert_eq!(controller("xvdb").unwrap().unit, 1);
        assert_eq!(controller("xvdaa").unwrap().unit, 26);
        assert_eq!(controller("hdc").unwrap().kind, ControllerKind::Ide);
        assert_eq!(controller("sdb").unwrap().kind, ControllerKind::Scsi);
        assert!(controller("xvd").is_none());
        assert!(controller("xvd1").is_none());
        assert!(controller("nvme0n1").is_none());
    }

    #[test]
    fn vm_cfg_phy_disks() {
        let cfg = "OVM_simple_name = 'web'\n\
                   disk = ['file:/OVS/Repositories/0004/VirtualDisks/a.img,xvda,w',\n\
                   \"phy:/dev/mapper/3600a0b8,xvdb,w\", 'phy:/dev/sdc,xvdc,r']\n\
                   vdisk = ['phy:/not/this,xvdd,w']\n";
        assert_eq!(
            phy_disks_from_vm_cfg(cfg),
            ["/dev/mapper/3600a0b8", "/dev/sdc"]
        );
        assert!(phy_disks_from_vm_cfg("disk = []").is_empty());
        assert!(phy_disks_from_vm_cfg("").is_empty());
        assert_eq!(phy_disks_from_vm_cfg("disk = ['phy:/x"), ["/x"]);
    }

    #[test]
    fn file_names() {
        assert_eq!(safe_file_name("0004fb.img"), "0004fb.img");
        assert_eq!(safe_file_name("a/b c"), "a_b_c");
        assert_eq!(safe_file_name(".."), "disk__");
        assert_eq!(safe_file_name(""), "disk");
    }

    #[test]
    fn warnings_and_mapping() {
        let p = OvmProvider::new(
            OvmClient::builder("https://h")
                .credentials("u", "p")
                .build()
                .unwrap(),
        )
        .with_phy_disks("v1", ["/dev/mapper/lun"]);
        let vm = VirtualMachine {
            friendly_name: "web".into(),
            name: "v1".into(),
            uuid: "u-1".into(),
            disks: vec![crate::types::Disk {
                name: "a.img".into(),
                path: "/OVS/a.img".into(),
                device_name: "xvdb:cdrom".into(),
                snapshot_compatible: false,
                mode: "r".into(),
            }],
            snapshot_compatible: false,
            snapshots: vec![],
        };
        let info = p.vm_info(&vm, &HashMap::new());
        assert_eq!(info.id, "v1");
        assert_eq!(info.name, "web");
        assert_eq!(info.disks[0].backing.as_deref(), Some("/OVS/a.img"));
        let w = vm_warnings(&info);
        assert!(w.iter().any(|w| w.contains("CD-ROM")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("cannot be reflinked")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("/dev/mapper/lun")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("sizes are unknown")), "{w:?}");
        let empty = VirtualMachine {
            name: "v2".into(),
            snapshot_compatible: true,
            ..Default::default()
        };
        let info = p.vm_info(&empty, &HashMap::new());
        assert_eq!(info.name, "v2");
        assert!(vm_warnings(&info)[0].contains("only phy: disks"));
    }
}
