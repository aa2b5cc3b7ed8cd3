//! [`VsphereProvider`]: the core [`Provider`] over a vSphere [`Client`].
//!
//! Supported: [`Capability::Discover`], [`Capability::Snapshots`],
//! [`Capability::Export`] (through an NFC lease), [`Capability::Import`]
//! ([`crate::import`]) and [`Capability::ChangedExtents`]
//! ([`crate::cbt`]). Operations not listed
//! in [`Provider::capabilities`] return
//! [`hypersdk_core::ErrorKind::Unsupported`].
//!
//! [`Provider::export`] hands out the lease's disks as streams (each an
//! [`NfcDownload`], resumed with `Range` after
//! a cut) for another provider or target to consume; it carries no
//! descriptor, because the OVF descriptor needs the real file sizes, known
//! only once the streams have been read, and no `.nvram`. For a complete
//! package on disk (OVA, OVF directory with descriptor and `.nvram`, raw
//! images, Artifact Manifest) use [`VsphereProvider::export_to`], which
//! runs [`crate::export::export_vm`].
//!
//! VM ids are moref values (`vm-42`), snapshot ids too (`snapshot-7`).
//! [`VmRef::Uuid`] matches the BIOS or the instance UUID (through the
//! `SearchIndex`); [`VmRef::Name`] the name as vSphere returns it or
//! decoded (`a%2fb` or `a/b`); [`VmRef::InventoryPath`] the full path
//! (`/DC0/vm/web01`). Resolving a reference never runs a full discovery.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use std::sync::Arc;
//! use hypersdk_core::model::{PowerState, VmFilter};
//! use hypersdk_core::provider::Provider;
//! use hypersdk_vsphere::{Client, VsphereProvider};
//!
//! let client = Client::builder("https://vcenter.example.com")
//!     .credentials("administrator@vsphere.local", "secret")
//!     .ca_pem(std::fs::read("vcenter-ca.pem").unwrap())
//!     .connect()
//!     .await?;
//! let provider: Arc<dyn Provider> = Arc::new(VsphereProvider::new(client));
//! let on = provider
//!     .discover(&VmFilter::all().with_name("web*").with_power_state(PowerState::PoweredOn))
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::model::{SnapshotInfo, SnapshotRef, VmFilter, VmInfo, VmRef};
use hypersdk_core::provider::{
    Capabilities, Capability, ChangedExtents, DiskData, DiskRef, DiskTransfer, Export,
    ExportFinisher, ExportOptions, ImportOptions, ImportPackage, Provider, unsupported,
};
use hypersdk_core::{Error, Result};

use crate::client::Client;
use crate::export::{NfcDownload, VmExportOptions, VmExportReport, export_vm, start_export};
use crate::inventory::{
    DiscoverOptions, VsphereVm, discover_vms, find_by_inventory_path, find_vms_by_name,
    find_vms_by_uuid, get_vm,
};
use crate::lease::NfcLease;
use crate::property::retrieve_one;
use crate::snapshot::{SnapshotSpec, VmSnapshot, create_snapshot, list_snapshots, remove_snapshot};
use crate::types::MoRef;

/// The vSphere provider.
#[derive(Debug, Clone)]
pub struct VsphereProvider {
    client: Client,
    options: DiscoverOptions,
    quiesce: bool,
}

impl VsphereProvider {
    /// A provider over a connected client, seeing the whole inventory.
    pub fn new(client: Client) -> Self {
        VsphereProvider {
            client,
            options: DiscoverOptions::default(),
            quiesce: false,
        }
    }

    /// Sees only the VMs below the folder at inventory path `path`:
    /// discovery, and every VM reference (id, name, UUID, path) and
    /// snapshot reference, which are not found outside it.
    #[must_use]
    pub fn with_folder(mut self, path: impl Into<String>) -> Self {
        self.options = self.options.folder(path);
        self
    }

    /// Quiesces guest file systems when taking snapshots (needs VMware
    /// Tools in the guest; default off).
    #[must_use]
    pub fn with_quiesce(mut self, on: bool) -> Self {
        self.quiesce = on;
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether `vm` is below the provider's folder (always, without one).
    /// A VM whose inventory path could not be read is outside.
    fn in_scope(&self, vm: &VsphereVm) -> bool {
        let Some(folder) = &self.options.folder else {
            return true;
        };
        let prefix = format!("/{}/", folder.trim_matches('/'));
        vm.inventory_path
            .as_deref()
            .is_some_and(|p| p.starts_with(&prefix))
    }

    /// Finds one VM without a full discovery: by id, one property read; by
    /// name, a read of only `name` over the folder's view; by UUID, the
    /// `SearchIndex`; by path, `FindByInventoryPath`. Then the match is read
    /// in full. VMs outside the provider's folder are not found, whichever
    /// way they are named.
    async fn resolve(&self, vm: &VmRef) -> Result<VsphereVm> {
        let candidates: Vec<MoRef> = match vm {
            VmRef::Id(id) => vec![MoRef::new("VirtualMachine", id.clone())],
            VmRef::Name(n) => find_vms_by_name(&self.client, &self.options, n).await?,
            VmRef::Uuid(u) => find_vms_by_uuid(&self.client, u).await?,
            VmRef::InventoryPath(p) => find_by_inventory_path(&self.client, p)
                .await?
                .filter(|m| m.kind == "VirtualMachine")
                .into_iter()
                .collect(),
            other => {
                return Err(Error::unsupported(
                    format!("resolving VM reference {other}"),
                    "vsphere",
                ));
            }
        };
        let mut hits: Vec<VsphereVm> = Vec::new();
        for m in candidates {
            match get_vm(&self.client, &m.value).await {
                Ok(v) if self.in_scope(&v) => hits.push(v),
                Ok(_) => {}
                // Gone since it was found.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        match hits.len() {
            0 => Err(Error::not_found(vm.to_string())),
            1 => Ok(hits.remove(0)),
            n => Err(Error::Conflict {
                object: vm.to_string(),
                message: format!(
                    "{n} VMs match ({}); use the VM id",
                    hits.iter()
                        .map(|v| v.moref.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The snapshot of `vm` with id (moref value) or name `snapshot`.
    async fn resolve_snapshot(&self, vm: &VsphereVm, snapshot: &str) -> Result<MoRef> {
        let list = list_snapshots(&self.client, &vm.moref).await?;
        if let Some(s) = list.iter().find(|s| s.moref.value == snapshot) {
            return Ok(s.moref.clone());
        }
        let named: Vec<&VmSnapshot> = list.iter().filter(|s| s.name == snapshot).collect();
        match named.as_slice() {
            [one] => Ok(one.moref.clone()),
            [] => Err(Error::not_found(format!(
                "snapshot '{snapshot}' of VM '{}'",
                vm.moref.value
            ))),
            many => Err(Error::Conflict {
                object: format!("snapshot '{snapshot}' of VM '{}'", vm.moref.value),
                message: format!(
                    "{} snapshots have that name ({}); use the snapshot id",
                    many.len(),
                    many.iter()
                        .map(|s| s.moref.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Exports `vm` into a package on disk: an OVA, an OVF directory or raw
    /// images, with digests and optionally an Artifact Manifest (see
    /// [`crate::export`]). `snapshot` names a snapshot of the VM by id or
    /// name (it replaces [`VmExportOptions::snapshot`]); without one the
    /// VM must be powered off. The VM is never modified.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] / [`Error::Conflict`] when the VM or snapshot
    /// does not resolve to exactly one; those of [`export_vm`].
    pub async fn export_to(
        &self,
        vm: &VmRef,
        snapshot: Option<&str>,
        options: VmExportOptions,
    ) -> Result<VmExportReport> {
        let v = self.resolve(vm).await?;
        let mut options = options;
        if let Some(s) = snapshot {
            options.snapshot = Some(self.resolve_snapshot(&v, s).await?);
        }
        export_vm(&self.client, &v.moref, &options).await
    }

    fn snapshot_info(vm_id: &str, s: VmSnapshot) -> SnapshotInfo {
        SnapshotInfo {
            id: s.moref.value,
            vm_id: vm_id.to_owned(),
            name: s.name,
            description: s.description,
            parent: s.parent.map(|p| p.value),
            created: s.created,
            disks: Vec::new(),
        }
    }
}

#[async_trait]
impl Provider for VsphereProvider {
    fn name(&self) -> &str {
        "vsphere"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with(Capability::Discover)
            .with(Capability::Snapshots)
            .with(Capability::Export)
            .with(Capability::Import)
            .with(Capability::ChangedExtents)
    }

    async fn discover(&self, filter: &VmFilter) -> Result<Vec<VmInfo>> {
        let vms = discover_vms(&self.client, &self.options).await?;
        Ok(vms
            .iter()
            .map(VsphereVm::to_vm_info)
            .filter(|v| filter.matches(v))
            .collect())
    }

    async fn vm(&self, vm: &VmRef) -> Result<VmInfo> {
        Ok(self.resolve(vm).await?.to_vm_info())
    }

    /// Takes a snapshot without memory (quiesced if the provider was built
    /// [`with_quiesce`](VsphereProvider::with_quiesce)). If the task fails
    /// there is no snapshot; if listing it afterwards fails, it exists.
    async fn create_snapshot(&self, vm: &VmRef, name: &str) -> Result<SnapshotInfo> {
        let v = self.resolve(vm).await?;
        let spec = SnapshotSpec::new(name).quiesce(self.quiesce);
        let snap = create_snapshot(&self.client, &v.moref, &spec).await?;
        let list = list_snapshots(&self.client, &v.moref).await?;
        list.into_iter()
            .find(|s| s.moref == snap)
            .map(|s| Self::snapshot_info(&v.moref.value, s))
            .ok_or_else(|| {
                Error::invalid_data(
                    format!("{}", v.moref),
                    format!(
                        "the new snapshot {} is not in the snapshot tree",
                        snap.value
                    ),
                )
            })
    }

    /// Oldest first, each after its parent. `disks` is left empty (the
    /// per-snapshot device list is not read yet).
    async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<SnapshotInfo>> {
        let v = self.resolve(vm).await?;
        Ok(list_snapshots(&self.client, &v.moref)
            .await?
            .into_iter()
            .map(|s| Self::snapshot_info(&v.moref.value, s))
            .collect())
    }

    /// Removes the snapshot (not its children) after checking it belongs
    /// to the VM (and, with [`with_folder`](VsphereProvider::with_folder),
    /// that the VM is in the folder).
    async fn delete_snapshot(&self, snapshot: &SnapshotRef) -> Result<()> {
        let moref = MoRef::new("VirtualMachineSnapshot", snapshot.id.clone());
        let not_found = || Error::not_found(snapshot.to_string());
        let props = retrieve_one(&self.client, &moref, &["vm"])
            .await
            .map_err(|e| if e.is_not_found() { not_found() } else { e })?;
        let owner = props.prop("vm").and_then(crate::soap::Node::as_moref);
        if owner.as_ref().is_some_and(|o| o.value != snapshot.vm_id) {
            return Err(not_found());
        }
        if self.options.folder.is_some() {
            let vm_id = owner.map_or_else(|| snapshot.vm_id.clone(), |o| o.value);
            match get_vm(&self.client, &vm_id).await {
                Ok(v) if self.in_scope(&v) => {}
                Ok(_) => return Err(not_found()),
                Err(e) if e.is_not_found() => return Err(not_found()),
                Err(e) => return Err(e),
            }
        }
        remove_snapshot(&self.client, &moref, false)
            .await
            .map_err(|e| if e.is_not_found() { not_found() } else { e })
    }

    /// Takes an NFC export lease (`ExportVm`, or `ExportSnapshot` with
    /// [`ExportOptions::snapshot`], an id or name) and returns the disks as
    /// streams of streamOptimized VMDK bytes, each opened when first
    /// polled and resumed with `Range` after a cut; the lease is renewed
    /// meanwhile with the percentage of bytes read. No descriptor and no
    /// `.nvram`: see the [module documentation](self). The lease is the
    /// export's finisher: [`Export::complete`] / [`Export::abort`] end it,
    /// dropping the export aborts it in the background.
    async fn export(&self, vm: &VmRef, options: &ExportOptions) -> Result<Export> {
        let v = self.resolve(vm).await?;
        let snapshot = match &options.snapshot {
            Some(s) => Some(self.resolve_snapshot(&v, s).await?),
            None => None,
        };
        let info = v.to_vm_info();
        let lease = start_export(&self.client, &v.moref, snapshot.as_ref()).await?;
        let progress = lease.progress();
        let devices: Vec<_> = lease
            .info()
            .device_urls
            .iter()
            .filter(|d| d.disk)
            .cloned()
            .collect();
        let expected: u64 = info
            .disks
            .iter()
            .map(|d| d.capacity_bytes)
            .sum::<u64>()
            .max(1);
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut export = Export::new(info.clone(), "nfc-lease");
        if let Some(s) = &snapshot {
            export = export.with_snapshot(hypersdk_core::model::SnapshotRef::new(
                v.moref.value.clone(),
                s.value.clone(),
            ));
        }
        let backoff = hypersdk_core::retry::Backoff::default()
            .with_initial(std::time::Duration::from_millis(200))
            .with_max_delay(std::time::Duration::from_secs(30));
        for (i, dev) in devices.into_iter().enumerate() {
            let disk = crate::export::disk_for_key(&v, &dev.key)
                .and_then(|k| info.disks.iter().find(|d| d.id == k.to_string()))
                .or_else(|| info.disks.get(i))
                .cloned()
                .unwrap_or_else(|| hypersdk_core::model::DiskInfo::new(dev.key.clone(), 0));
            if let Some(wanted) = &options.disks
                && !wanted.contains(&disk.id)
            {
                continue;
            }
            let file_name = format!("{}-{}", v.moref.value, dev.file_name(i));
            let item = options.progress.item(
                hypersdk_core::progress::Phase::Exporting,
                file_name.clone(),
                dev.file_size,
            );
            let client = self.client.clone();
            let backoff = backoff.clone();
            let progress = progress.clone();
            let done = Arc::clone(&done);
            let size = dev.file_size;
            let data = futures::stream::once(async move {
                NfcDownload::open(&client, &dev, &backoff, crate::export::DEFAULT_IDLE_TIMEOUT)
                    .await
                    .map(NfcDownload::into_stream)
            })
            .try_flatten()
            .inspect_ok(move |chunk| {
                let n = chunk.len() as u64;
                item.add(n);
                let all = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                progress.set_bytes(all.min(expected.saturating_sub(1)), expected);
            })
            .boxed();
            export = export.with_disk(DiskTransfer {
                info: disk,
                file_name,
                format: hypersdk_core::model::DiskFormat::VmdkStreamOptimized,
                size,
                data: DiskData::Stream(data),
            });
        }
        Ok(export.with_finisher(Box::new(LeaseFinisher(lease))))
    }

    /// Imports through `CreateImportSpec`, `ImportVApp` and NFC uploads
    /// ([`crate::import::import_package`]). `options.location` is a
    /// datastore name or `datastore=…,pool=…,folder=…,host=…,datacenter=…`
    /// ([`crate::import::ImportTarget::parse_location`]); without one, the
    /// datastore with the most free space. The VM is named
    /// `options.name`, else as in the package.
    async fn import(&self, package: ImportPackage, options: &ImportOptions) -> Result<VmInfo> {
        let target = match options.location.as_deref() {
            Some(l) => crate::import::ImportTarget::parse_location(l)?,
            None => crate::import::ImportTarget::default(),
        };
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| package.vm.name.clone());
        let opts = crate::import::OvaImportOptions::new(target)
            .with_name(name)
            .with_power_on(options.power_on)
            .with_progress(options.progress.clone());
        let report = crate::import::import_package(&self.client, package, &opts).await?;
        Ok(get_vm(&self.client, &report.vm.value).await?.to_vm_info())
    }

    async fn open_disk(
        &self,
        _disk: &DiskRef,
        _snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>> {
        Err(unsupported(self, "open_disk"))
    }

    /// Changed block tracking between two snapshots (`from`/`to` are
    /// snapshot ids, the disk id a device key): see
    /// [`crate::cbt::changed_extents`]. Needs tracking on before `from` was
    /// taken ([`crate::cbt::enable_change_tracking`]).
    async fn changed_extents(
        &self,
        disk: &DiskRef,
        from: Option<&str>,
        to: &str,
    ) -> Result<ChangedExtents> {
        let vm = self.resolve(&disk.vm).await?;
        crate::cbt::changed_extents(&self.client, &vm.moref, &disk.disk_id, from, to).await
    }
}

/// The [`ExportFinisher`] of [`Provider::export`]: the NFC lease.
#[derive(Debug)]
struct LeaseFinisher(NfcLease);

#[async_trait]
impl ExportFinisher for LeaseFinisher {
    async fn complete(self: Box<Self>) -> Result<()> {
        self.0.progress().set_percent(100);
        self.0.complete().await
    }

    async fn abort(self: Box<Self>, reason: &str) -> Result<()> {
        self.0.abort(reason).await
    }
}
