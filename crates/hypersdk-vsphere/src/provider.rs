//! [`VsphereProvider`]: the core [`Provider`] over a vSphere [`Client`].
//!
//! Supported now: [`Capability::Discover`] and [`Capability::Snapshots`].
//! Export, import, disk reads and changed extents return
//! [`hypersdk_core::ErrorKind::Unsupported`] until they are implemented.
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
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::model::{SnapshotInfo, SnapshotRef, VmFilter, VmInfo, VmRef};
use hypersdk_core::provider::{
    Capabilities, Capability, ChangedExtents, DiskRef, Export, ExportOptions, ImportOptions,
    ImportPackage, Provider, unsupported,
};
use hypersdk_core::{Error, Result};

use crate::client::Client;
use crate::inventory::{
    DiscoverOptions, VsphereVm, discover_vms, find_by_inventory_path, find_vms_by_name,
    find_vms_by_uuid, get_vm,
};
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

    async fn export(&self, _vm: &VmRef, _options: &ExportOptions) -> Result<Export> {
        Err(unsupported(self, "export"))
    }

    async fn import(&self, _package: ImportPackage, _options: &ImportOptions) -> Result<VmInfo> {
        Err(unsupported(self, "import"))
    }

    async fn open_disk(
        &self,
        _disk: &DiskRef,
        _snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>> {
        Err(unsupported(self, "open_disk"))
    }

    async fn changed_extents(
        &self,
        _disk: &DiskRef,
        _from: Option<&str>,
        _to: &str,
    ) -> Result<ChangedExtents> {
        Err(unsupported(self, "changed_extents"))
    }
}
