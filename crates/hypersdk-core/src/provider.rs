//! The [`Provider`] trait: what every platform (vSphere, Oracle VM, memory)
//! offers to a migration tool.
//!
//! A provider discovers VMs, snapshots them, exports their parts as streams,
//! imports packages, reads disks by byte range and lists what changed between
//! two snapshots. It is object safe: tools hold an `Arc<dyn Provider>` and do
//! not care which platform is behind it.
//!
//! What a provider does not support, it says in [`Provider::capabilities`],
//! and the call returns [`Error::Unsupported`] naming the operation and the
//! provider: never a panic, never a silent no-op.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use hypersdk_core::memory::MemoryProvider;
//! use hypersdk_core::model::{VmFilter, VmRef};
//! use hypersdk_core::provider::{Capability, Provider};
//!
//! let provider: Arc<dyn Provider> = Arc::new(MemoryProvider::with_demo_vms());
//! let vms = provider.discover(&VmFilter::all().with_name("web*")).await?;
//! assert!(!vms.is_empty());
//! if provider.capabilities().supports(Capability::Snapshots) {
//!     let snap = provider.create_snapshot(&VmRef::id(&vms[0].id), "before-move").await?;
//!     provider.delete_snapshot(&snap.to_ref()).await?;
//! }
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::blocks::BlockSource;
use crate::model::{
    DiskFormat, DiskInfo, ExtentList, SnapshotInfo, SnapshotRef, VmFilter, VmInfo, VmRef,
};
use crate::progress::Progress;
use crate::{Error, Result};

/// One operation of the [`Provider`] trait that a provider may support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capability {
    /// [`Provider::discover`] and [`Provider::vm`].
    Discover,
    /// [`Provider::create_snapshot`], [`Provider::list_snapshots`] and
    /// [`Provider::delete_snapshot`].
    Snapshots,
    /// [`Provider::export`].
    Export,
    /// [`Provider::import`].
    Import,
    /// [`Provider::open_disk`] on the live disk (no snapshot).
    OpenDisk,
    /// [`Provider::open_disk`] on a snapshot's disk.
    OpenSnapshotDisk,
    /// [`Provider::changed_extents`].
    ChangedExtents,
    /// [`Provider::changed_extents`] also reports freed ranges.
    FreedExtents,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 8] = [
        Capability::Discover,
        Capability::Snapshots,
        Capability::Export,
        Capability::Import,
        Capability::OpenDisk,
        Capability::OpenSnapshotDisk,
        Capability::ChangedExtents,
        Capability::FreedExtents,
    ];
}

/// The set of operations a provider supports.
///
/// ```
/// use hypersdk_core::provider::{Capabilities, Capability};
/// let caps = Capabilities::from_iter([Capability::Discover, Capability::Export]);
/// assert!(caps.supports(Capability::Export));
/// assert!(!caps.supports(Capability::Import));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(BTreeSet<Capability>);

impl Capabilities {
    /// No capability.
    pub fn none() -> Self {
        Capabilities::default()
    }

    /// Every capability.
    pub fn all() -> Self {
        Capability::ALL.into_iter().collect()
    }

    /// Adds `cap`.
    #[must_use]
    pub fn with(mut self, cap: Capability) -> Self {
        self.0.insert(cap);
        self
    }

    /// Whether `cap` is supported.
    pub fn supports(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    /// The supported capabilities, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

impl Capability {
    /// The serialized name, e.g. `changed_extents`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Discover => "discover",
            Capability::Snapshots => "snapshots",
            Capability::Export => "export",
            Capability::Import => "import",
            Capability::OpenDisk => "open_disk",
            Capability::OpenSnapshotDisk => "open_snapshot_disk",
            Capability::ChangedExtents => "changed_extents",
            Capability::FreedExtents => "freed_extents",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Capabilities {
    /// The supported capabilities' names separated by `, `, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for cap in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(cap.as_str())?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Capabilities(iter.into_iter().collect())
    }
}

/// Names one disk of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiskRef {
    /// The VM.
    pub vm: VmRef,
    /// The disk's id, as in [`DiskInfo::id`].
    pub disk_id: String,
}

impl DiskRef {
    /// Disk `disk_id` of `vm`.
    pub fn new(vm: VmRef, disk_id: impl Into<String>) -> Self {
        DiskRef {
            vm,
            disk_id: disk_id.into(),
        }
    }
}

impl fmt::Display for DiskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk '{}' of {}", self.disk_id, self.vm)
    }
}

/// What changed on a disk between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedExtents {
    /// The disk's size in bytes at the newer snapshot.
    pub disk_size: u64,
    /// Ranges whose content may differ; copy these from the newer snapshot.
    /// A provider may over-report (a changed range that did not change) but
    /// never under-reports.
    pub changed: ExtentList,
    /// Ranges allocated before and no longer allocated (trimmed, punched):
    /// they read as zeros now and a patched copy must zero or punch them.
    /// `None` when the provider cannot tell (see [`Capability::FreedExtents`]).
    pub freed: Option<ExtentList>,
}

/// A descriptor of the platform's own, carried through an export or import.
#[derive(Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// What the bytes are.
    pub format: DescriptorFormat,
    /// The file name it is known by, e.g. `web01.ovf`.
    pub file_name: String,
    /// The descriptor itself.
    pub bytes: Bytes,
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Descriptor")
            .field("format", &self.format)
            .field("file_name", &self.file_name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The kind of a [`Descriptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DescriptorFormat {
    /// A DMTF OVF envelope (XML).
    Ovf,
    /// A VMware `.vmx` configuration.
    Vmx,
    /// JSON (a [`VmInfo`] or a platform's own JSON).
    Json,
    /// Anything else.
    Other,
}

/// Where the bytes of an exported or imported disk come from.
pub enum DiskData {
    /// A byte stream read once from start to end (an NFC download, an OVA
    /// entry). The chunks concatenate to the disk file in its [`DiskFormat`].
    Stream(BoxStream<'static, Result<Bytes>>),
    /// A range-readable source of the raw disk, read in any order and in
    /// parallel, holes included.
    Blocks(Arc<dyn BlockSource>),
}

impl fmt::Debug for DiskData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskData::Stream(_) => f.write_str("DiskData::Stream(..)"),
            DiskData::Blocks(b) => f.debug_tuple("DiskData::Blocks").field(b).finish(),
        }
    }
}

/// One disk of an [`Export`] or an [`ImportPackage`].
#[derive(Debug)]
pub struct DiskTransfer {
    /// The disk as the platform describes it.
    pub info: DiskInfo,
    /// The file name it travels under, e.g. `web01-disk1.vmdk`.
    pub file_name: String,
    /// The format of the bytes in [`DiskTransfer::data`].
    pub format: DiskFormat,
    /// Length of the byte stream in bytes, when known before reading. For
    /// [`DiskData::Blocks`] this is the source's length.
    pub size: Option<u64>,
    /// The bytes.
    pub data: DiskData,
}

/// Ends the platform side of an export: a vSphere NFC lease, say.
///
/// [`Export::complete`] and [`Export::abort`] call it. An implementation
/// whose value is dropped without either must release what it holds on a
/// best-effort basis (abort in a spawned task when a runtime is there).
#[async_trait]
pub trait ExportFinisher: Send + Sync + fmt::Debug {
    /// Reports success and releases the platform's resources.
    async fn complete(self: Box<Self>) -> Result<()>;
    /// Reports failure and releases the platform's resources.
    async fn abort(self: Box<Self>, reason: &str) -> Result<()>;
}

/// The parts of an exported VM, ready for a target to consume.
///
/// The disks are streams or block sources: nothing has been read yet. A
/// target (an OVA writer, an OVF directory, raw images) reads them, then calls
/// [`Export::complete`]; on any failure it calls [`Export::abort`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Export {
    /// The VM as it was when the export started.
    pub vm: VmInfo,
    /// The platform's own descriptor, when it has one.
    pub descriptor: Option<Descriptor>,
    /// The disks, in the VM's order.
    pub disks: Vec<DiskTransfer>,
    /// How the export was really done, e.g. `nfc-lease`, `memory-snapshot`,
    /// `ovm-snapshot`: it goes into the artifact manifest as it was.
    pub method: String,
    /// The snapshot the disks were read from, if one was used.
    pub snapshot: Option<SnapshotRef>,
    finisher: Option<Box<dyn ExportFinisher>>,
}

impl Export {
    /// An export of `vm` done by `method`, with no disks yet.
    pub fn new(vm: VmInfo, method: impl Into<String>) -> Self {
        Export {
            vm,
            descriptor: None,
            disks: Vec::new(),
            method: method.into(),
            snapshot: None,
            finisher: None,
        }
    }

    /// Sets the descriptor.
    #[must_use]
    pub fn with_descriptor(mut self, d: Descriptor) -> Self {
        self.descriptor = Some(d);
        self
    }

    /// Adds a disk.
    #[must_use]
    pub fn with_disk(mut self, d: DiskTransfer) -> Self {
        self.disks.push(d);
        self
    }

    /// Records the snapshot the disks come from.
    #[must_use]
    pub fn with_snapshot(mut self, s: SnapshotRef) -> Self {
        self.snapshot = Some(s);
        self
    }

    /// Sets what ends the platform side of the export.
    #[must_use]
    pub fn with_finisher(mut self, f: Box<dyn ExportFinisher>) -> Self {
        self.finisher = Some(f);
        self
    }

    /// Takes the disks out, leaving the export ready to complete or abort.
    pub fn take_disks(&mut self) -> Vec<DiskTransfer> {
        std::mem::take(&mut self.disks)
    }

    /// Tells the platform the export succeeded and releases its resources.
    pub async fn complete(self) -> Result<()> {
        self.into_package().1.complete().await
    }

    /// Tells the platform the export failed and releases its resources.
    pub async fn abort(self, reason: &str) -> Result<()> {
        self.into_package().1.abort(reason).await
    }

    /// Splits the export into an [`ImportPackage`] of its parts, to hand
    /// straight to [`Provider::import`] (of this or another provider), and
    /// the [`ExportLease`] that ends the platform side once the import has
    /// read the disks.
    ///
    /// The lease must outlive the reading of the disks: dropping it releases
    /// the platform side, which may cut the streams short.
    pub fn into_package(mut self) -> (ImportPackage, ExportLease) {
        let lease = ExportLease {
            finisher: self.finisher.take(),
        };
        let package = ImportPackage {
            vm: self.vm,
            descriptor: self.descriptor,
            disks: self.disks,
        };
        (package, lease)
    }
}

/// The platform side of an [`Export`] after [`Export::into_package`]: call
/// [`ExportLease::complete`] once the disks were read, or
/// [`ExportLease::abort`] on failure. Dropping it without either releases
/// the platform's resources on a best-effort basis, as dropping an
/// [`Export`] does.
#[derive(Debug)]
#[must_use = "complete or abort the lease once the export's disks are read"]
pub struct ExportLease {
    finisher: Option<Box<dyn ExportFinisher>>,
}

impl ExportLease {
    /// Tells the platform the export succeeded and releases its resources.
    pub async fn complete(mut self) -> Result<()> {
        match self.finisher.take() {
            Some(f) => f.complete().await,
            None => Ok(()),
        }
    }

    /// Tells the platform the export failed and releases its resources.
    pub async fn abort(mut self, reason: &str) -> Result<()> {
        match self.finisher.take() {
            Some(f) => f.abort(reason).await,
            None => Ok(()),
        }
    }
}

/// Per-call options of [`Provider::export`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Export the disks as of this snapshot id instead of the live VM.
    pub snapshot: Option<String>,
    /// Export only the disks with these ids (all when `None`).
    pub disks: Option<Vec<String>>,
    /// Where progress events go.
    pub progress: Progress,
}

impl ExportOptions {
    /// Exports as of snapshot `id`.
    #[must_use]
    pub fn with_snapshot(mut self, id: impl Into<String>) -> Self {
        self.snapshot = Some(id.into());
        self
    }

    /// Exports only these disks.
    #[must_use]
    pub fn with_disks(mut self, ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.disks = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Sends progress events to `progress`.
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }
}

/// A VM package to import: the VM's settings, an optional descriptor and
/// its disks as streams.
#[derive(Debug)]
#[non_exhaustive]
pub struct ImportPackage {
    /// The VM to create. `id` is ignored (the platform assigns one); the
    /// name is used unless [`ImportOptions::name`] overrides it.
    pub vm: VmInfo,
    /// The platform descriptor (an OVF), when the package has one.
    pub descriptor: Option<Descriptor>,
    /// The disks, in the VM's order.
    pub disks: Vec<DiskTransfer>,
}

impl ImportPackage {
    /// A package for `vm` with no disks yet.
    pub fn new(vm: VmInfo) -> Self {
        ImportPackage {
            vm,
            descriptor: None,
            disks: Vec::new(),
        }
    }

    /// Sets the descriptor.
    #[must_use]
    pub fn with_descriptor(mut self, d: Descriptor) -> Self {
        self.descriptor = Some(d);
        self
    }

    /// Adds a disk.
    #[must_use]
    pub fn with_disk(mut self, d: DiskTransfer) -> Self {
        self.disks.push(d);
        self
    }
}

/// Per-call options of [`Provider::import`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// The new VM's name (the package's when `None`).
    pub name: Option<String>,
    /// Where to place it: a datastore, resource pool or folder path, in the
    /// provider's own terms.
    pub location: Option<String>,
    /// Power the VM on once imported.
    pub power_on: bool,
    /// Where progress events go.
    pub progress: Progress,
}

impl ImportOptions {
    /// Names the new VM.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Places the new VM.
    #[must_use]
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// Powers the VM on after import.
    #[must_use]
    pub fn with_power_on(mut self, on: bool) -> Self {
        self.power_on = on;
        self
    }

    /// Sends progress events to `progress`.
    #[must_use]
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }
}

/// A virtualization platform as hypersdk sees it.
///
/// Every method is cancel-safe in the sense that dropping its future stops
/// the work at the next await point; what a dropped or failed call leaves
/// behind is documented per method. All returned futures are `Send`.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// A short name used in messages and manifests: `vsphere`, `ovm`, `memory`.
    fn name(&self) -> &str;

    /// What this provider supports. It does not change over the provider's
    /// life.
    fn capabilities(&self) -> Capabilities;

    /// The VMs that pass `filter`, in a stable order.
    ///
    /// Read-only: a dropped or failed call leaves nothing behind.
    async fn discover(&self, filter: &VmFilter) -> Result<Vec<VmInfo>>;

    /// One VM. [`crate::ErrorKind::NotFound`] when none matches,
    /// [`crate::ErrorKind::Conflict`] when a name matches several.
    ///
    /// Read-only.
    async fn vm(&self, vm: &VmRef) -> Result<VmInfo>;

    /// Takes a snapshot of `vm` named `name`.
    ///
    /// On error, and when the future is dropped after the platform accepted
    /// the request, a snapshot may exist on the platform; providers that can
    /// tell delete it on error, and document when they cannot.
    async fn create_snapshot(&self, vm: &VmRef, name: &str) -> Result<SnapshotInfo>;

    /// The snapshots of `vm`, oldest first. Read-only.
    async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<SnapshotInfo>>;

    /// Deletes one snapshot (not its children). Deleting a snapshot that does
    /// not exist is [`crate::ErrorKind::NotFound`]. A dropped call may or may
    /// not have deleted it.
    async fn delete_snapshot(&self, snapshot: &SnapshotRef) -> Result<()>;

    /// Starts an export of `vm` and returns its parts as streams.
    ///
    /// The source VM is never modified. The platform side (a lease) is held
    /// until [`Export::complete`] or [`Export::abort`]; dropping the
    /// [`Export`] releases it on a best-effort basis.
    async fn export(&self, vm: &VmRef, options: &ExportOptions) -> Result<Export>;

    /// Creates a VM from `package` and returns it.
    ///
    /// On error or cancellation the provider removes what it created, where
    /// the platform allows; it documents what may remain otherwise.
    async fn import(&self, package: ImportPackage, options: &ImportOptions) -> Result<VmInfo>;

    /// A range reader of one disk: of the live VM when `snapshot` is `None`,
    /// else of that snapshot. Read-only.
    async fn open_disk(
        &self,
        disk: &DiskRef,
        snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>>;

    /// What changed on `disk` from snapshot `from` to snapshot `to`.
    ///
    /// With `from = None`, every allocated range of `to` is "changed" (the
    /// basis of a first full backup) and nothing is freed. Read-only.
    async fn changed_extents(
        &self,
        disk: &DiskRef,
        from: Option<&str>,
        to: &str,
    ) -> Result<ChangedExtents>;
}

/// The [`Error::Unsupported`] error for `operation` on `provider`.
///
/// Providers return it from every method they do not support.
pub fn unsupported(provider: &dyn Provider, operation: &str) -> Error {
    Error::unsupported(operation, provider.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_match_serde() {
        for cap in Capability::ALL {
            let json = serde_json::to_value(cap).unwrap();
            assert_eq!(json, serde_json::Value::String(cap.to_string()));
        }
        assert_eq!(Capabilities::none().to_string(), "none");
        let two: Capabilities = [Capability::Import, Capability::Discover]
            .into_iter()
            .collect();
        assert_eq!(two.to_string(), "discover, import");
        assert_eq!(Capabilities::all().iter().count(), Capability::ALL.len());
    }

    /// Records which end of the export was called.
    #[derive(Debug)]
    struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

    #[async_trait]
    impl ExportFinisher for Recorder {
        async fn complete(self: Box<Self>) -> Result<()> {
            self.0.lock().unwrap().push("complete".into());
            Ok(())
        }
        async fn abort(self: Box<Self>, reason: &str) -> Result<()> {
            self.0.lock().unwrap().push(format!("abort: {reason}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_lease_outlives_the_package() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let export = Export::new(VmInfo::new("vm-1", "web01"), "test")
            .with_finisher(Box::new(Recorder(Arc::clone(&calls))));
        let (package, lease) = export.into_package();
        assert_eq!(package.vm.name, "web01");
        drop(package);
        assert!(
            calls.lock().unwrap().is_empty(),
            "the package ended the export"
        );
        lease.complete().await.unwrap();

        let export = Export::new(VmInfo::new("vm-1", "web01"), "test")
            .with_finisher(Box::new(Recorder(Arc::clone(&calls))));
        export.abort("target full").await.unwrap();
        assert_eq!(*calls.lock().unwrap(), ["complete", "abort: target full"]);
    }

    #[test]
    fn provider_is_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn Provider>();
        assert_send_sync::<Arc<dyn Provider>>();
        assert_send_sync::<dyn BlockSource>();
    }
}
