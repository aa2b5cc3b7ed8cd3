//! Types of the harness control API (`/_hypersdk/…`): fault rules sent to
//! it and the JSON it returns. Field names match the Go side
//! (`vcsim/overlay/simulator/hypersdk_harness.go`, `hypersdk_inventory.go`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Makes calls of one SOAP method fail (or slow down).
///
/// ```
/// use hypersdk_testkit::vcsim::MethodFault;
/// // The next two RetrievePropertiesEx calls fail with SystemError.
/// let rule = MethodFault::fault("RetrievePropertiesEx", "SystemError").times(2);
/// // One Login answers HTTP 503 without a SOAP body.
/// let rule = MethodFault::http_status("Login", 503);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MethodFault {
    method: String,
    count: u32,
    after: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
}

impl MethodFault {
    fn new(method: &str) -> Self {
        Self {
            method: method.to_owned(),
            count: 1,
            after: 0,
            fault: None,
            message: None,
            http_status: None,
            delay_ms: None,
        }
    }

    /// Answer `method` with a SOAP fault of vim25 type `fault_type`
    /// (`"NotAuthenticated"`, `"SystemError"`, `"InvalidState"`, …; any
    /// `MethodFault` subtype govmomi knows), HTTP 500, exactly as vcsim
    /// writes its own faults.
    pub fn fault(method: &str, fault_type: &str) -> Self {
        Self {
            fault: Some(fault_type.to_owned()),
            ..Self::new(method)
        }
    }

    /// Answer `method` with this HTTP status and a short text body, no SOAP.
    pub fn http_status(method: &str, status: u16) -> Self {
        Self {
            http_status: Some(status),
            ..Self::new(method)
        }
    }

    /// Delay `method` by `delay`, then serve it normally.
    pub fn delay(method: &str, delay: Duration) -> Self {
        Self {
            delay_ms: Some(delay.as_millis().try_into().unwrap_or(u64::MAX)),
            ..Self::new(method)
        }
    }

    /// Act on this many calls (default 1).
    pub fn times(mut self, count: u32) -> Self {
        self.count = count.max(1);
        self
    }

    /// Let this many calls through first.
    pub fn after(mut self, calls: u32) -> Self {
        self.after = calls;
        self
    }

    /// The faultstring.
    pub fn message(mut self, message: &str) -> Self {
        self.message = Some(message.to_owned());
        self
    }

    /// Also delay the call before the fault or status is returned.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay_ms = Some(delay.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }
}

/// Drops the connection of HTTP transfers after a number of body bytes:
/// the response body for downloads (the client sees a truncated body), the
/// request body for uploads (the server stops reading and closes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CutTransfer {
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_method: Option<String>,
    after_bytes: u64,
    count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    after: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl CutTransfer {
    /// Cut the next NFC transfer (`/nfc/…`: export downloads and import
    /// uploads) after `bytes` body bytes.
    pub fn nfc_after(bytes: u64) -> Self {
        Self {
            prefix: "/nfc/".to_owned(),
            http_method: None,
            after_bytes: bytes,
            count: 1,
            after: 0,
            hold_ms: None,
        }
    }

    /// Cut the next datastore transfer (`/folder/…`) after `bytes` bytes.
    pub fn folder_after(bytes: u64) -> Self {
        Self {
            prefix: "/folder/".to_owned(),
            ..Self::nfc_after(bytes)
        }
    }

    /// Only transfers with this HTTP method (`"GET"`, `"PUT"`, `"POST"`).
    pub fn http_method(mut self, method: &str) -> Self {
        self.http_method = Some(method.to_owned());
        self
    }

    /// Cut this many transfers (default 1).
    pub fn times(mut self, count: u32) -> Self {
        self.count = count.max(1);
        self
    }

    /// Let this many matching transfers through first.
    pub fn after(mut self, transfers: u32) -> Self {
        self.after = transfers;
        self
    }

    /// Hold the transfer for `hold` once the bytes have passed (the server
    /// neither reads nor writes: a stalled transfer), then drop it as
    /// usual. Nothing past the bytes is stored, also when the client went
    /// away during the hold: a killed client's held upload never
    /// completes later.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold_ms = Some(hold.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }
}

/// Changes the next export leases (`ExportVm`, `ExportSnapshot`): they
/// start in state `initializing` and after a delay become `ready`, or go to
/// `error` with a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseFault {
    count: u32,
    initialize_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl LeaseFault {
    /// The next lease stays `initializing` for `delay`, then is `ready`.
    pub fn ready_after(delay: Duration) -> Self {
        Self {
            count: 1,
            initialize_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
            fault: None,
            message: None,
        }
    }

    /// The next lease stays `initializing` for `delay`, then goes to state
    /// `error` with a fault of vim25 type `fault_type` in its `error`
    /// property.
    pub fn error_after(delay: Duration, fault_type: &str, message: &str) -> Self {
        Self {
            fault: Some(fault_type.to_owned()),
            message: Some(message.to_owned()),
            ..Self::ready_after(delay)
        }
    }

    /// Apply to this many leases (default 1).
    pub fn times(mut self, count: u32) -> Self {
        self.count = count.max(1);
        self
    }
}

/// Which file of a VM disk to seed or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFile {
    /// The file the disk's backing `fileName` names (`[ds] vm/disk1.vmdk`):
    /// what `ExportVm` device URLs serve. Seed it with the bytes an export
    /// should return (for realism, a streamOptimized VMDK).
    #[default]
    Backing,
    /// Its `-flat.vmdk` extent: what `/folder/…` random-access reads of the
    /// raw disk use. Seed it with raw disk bytes.
    Flat,
}

impl DiskFile {
    pub(crate) fn query_value(self) -> &'static str {
        match self {
            Self::Backing => "backing",
            Self::Flat => "flat",
        }
    }
}

/// What a disk write did: [`seed_disk`](super::Vcsim::seed_disk),
/// [`write_disk_at`](super::Vcsim::write_disk_at),
/// [`zero_disk_range`](super::Vcsim::zero_disk_range).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct SeededDisk {
    /// VM moref value (`vm-57`).
    pub vm: String,
    /// VM name.
    pub vm_name: String,
    /// Disk index among the VM's disks.
    pub disk: usize,
    /// `VirtualDisk.key`.
    pub device_key: i32,
    /// The export deviceUrl key (`/vm-57/ParaVirtualSCSIController0:0`).
    pub export_key: String,
    /// The backing `fileName` (`[LocalDS_0] DC0_H0_VM0/disk1.vmdk`).
    pub file_name: String,
    /// The file written, on the local file system.
    pub path: String,
    /// Bytes written (or zeroed).
    pub size: u64,
    /// `capacityInKB` after seeding.
    pub capacity_kb: i64,
    /// The disk backing's `changeId` after the write: a new one when the
    /// write was recorded as a change set (change tracking on, flat file,
    /// something changed), else the current one; empty with tracking off.
    #[serde(default)]
    pub change_id: String,
}

/// One NFC upload the harness received (vcsim itself discards them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct UploadedFile {
    /// The lease moref value.
    pub lease: String,
    /// The imported VM's moref value.
    pub vm: String,
    /// The imported VM's name (the `entityName` of the import spec).
    pub vm_name: String,
    /// The file name in the URL (`disk-0.vmdk`).
    pub name: String,
    /// Where the bytes are: the imported VM's disk file in the datastore.
    pub path: String,
    /// Bytes received.
    pub size: u64,
    /// SHA-256 of the bytes received, lowercase hex.
    pub sha256: String,
    /// False if the transfer broke (a cut, a client abort).
    pub complete: bool,
    /// `PUT` or `POST`.
    pub http_method: String,
    /// The request's `Content-Type`.
    pub content_type: String,
}

/// Any inventory object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvEntity {
    /// Moref value (`datacenter-2`).
    pub moref: String,
    /// Moref type (`Datacenter`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Inventory path from the root folder (`/DC0/vm/DC0_H0_VM0`).
    pub path: String,
    /// Parent moref value.
    #[serde(default)]
    pub parent: String,
}

/// A host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvHost {
    /// The entity.
    #[serde(flatten)]
    pub entity: InvEntity,
    /// The cluster's moref value; empty for a standalone host.
    #[serde(default)]
    pub cluster: String,
}

/// A datastore.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvDatastore {
    /// The entity.
    #[serde(flatten)]
    pub entity: InvEntity,
    /// Its local directory.
    pub url: String,
}

/// A VM disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvDisk {
    /// `VirtualDisk.key`.
    pub key: i32,
    /// Device label.
    pub label: String,
    /// Backing `fileName`.
    pub file_name: String,
    /// Datastore name.
    pub datastore: String,
    /// `capacityInKB`.
    pub capacity_kb: i64,
    /// Capacity in bytes (`capacityInBytes`, else `capacityInKB * 1024`).
    pub capacity_bytes: i64,
    /// Controller device key.
    pub controller_key: i32,
    /// Unit number on the controller.
    pub unit_number: i32,
    /// Export deviceUrl key.
    pub export_key: String,
    /// Backing file on the local file system.
    pub path: String,
    /// Thin provisioned.
    pub thin_provisioned: bool,
}

/// A VM NIC.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvNic {
    /// Device key.
    pub key: i32,
    /// Device label.
    pub label: String,
    /// Device type (`VirtualE1000`, `VirtualVmxnet3`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// MAC address.
    pub mac: String,
    /// Network (or portgroup) name.
    pub network: String,
}

/// A node of a VM's snapshot tree.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvSnapshot {
    /// Moref value (`snapshot-69`).
    pub moref: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Snapshot id.
    pub id: i32,
    /// Child snapshots.
    pub children: Vec<InvSnapshot>,
}

/// A VM, as vcsim holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct InvVm {
    /// The entity.
    #[serde(flatten)]
    pub entity: InvEntity,
    /// `config.uuid`.
    pub uuid: String,
    /// `config.instanceUuid`.
    pub instance_uuid: String,
    /// `runtime.powerState`.
    pub power_state: String,
    /// `config.guestId`.
    pub guest_id: String,
    /// `config.guestFullName`.
    pub guest_full_name: String,
    /// `config.firmware`.
    pub firmware: String,
    /// `config.version`.
    pub hardware_version: String,
    /// `config.hardware.numCPU`.
    pub num_cpu: i32,
    /// `config.hardware.numCoresPerSocket`.
    pub num_cores_per_socket: i32,
    /// `config.hardware.memoryMB`.
    pub memory_mb: i32,
    /// `config.template`.
    pub template: bool,
    /// `config.changeTrackingEnabled`.
    pub change_tracking: bool,
    /// `config.files.vmPathName`.
    pub vmx_path: String,
    /// Host moref value.
    pub host: String,
    /// Resource pool moref value.
    pub resource_pool: String,
    /// Datastore names.
    pub datastores: Vec<String>,
    /// Disks, in device order.
    pub disks: Vec<InvDisk>,
    /// NICs, in device order.
    pub nics: Vec<InvNic>,
    /// Snapshot tree roots.
    pub snapshots: Vec<InvSnapshot>,
    /// Current snapshot moref value.
    #[serde(default)]
    pub current_snapshot: String,
}

/// The simulator's inventory, read from vcsim's object registry without
/// SOAP. Every list is sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Inventory {
    /// `about.apiType`: `VirtualCenter` or `HostAgent`.
    pub api_type: String,
    /// `about.apiVersion`.
    pub api_version: String,
    /// Datacenters.
    pub datacenters: Vec<InvEntity>,
    /// Folders (not the root folder).
    pub folders: Vec<InvEntity>,
    /// Clusters.
    pub clusters: Vec<InvEntity>,
    /// Hosts.
    pub hosts: Vec<InvHost>,
    /// Resource pools.
    pub resource_pools: Vec<InvEntity>,
    /// Datastores.
    pub datastores: Vec<InvDatastore>,
    /// Networks and distributed portgroups.
    pub networks: Vec<InvEntity>,
    /// VMs.
    pub vms: Vec<InvVm>,
}

impl Inventory {
    /// The VM with this name.
    pub fn vm(&self, name: &str) -> Option<&InvVm> {
        self.vms.iter().find(|vm| vm.entity.name == name)
    }
}

/// How `QueryChangedDiskAreas` answers `changeId="*"` (the initial full
/// backup form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StarAnswer {
    /// The disk's allocated areas (non-zero blocks when tracking started,
    /// plus every block written since, minus blocks zeroed), as on VMFS.
    /// The default.
    Allocated,
    /// One area covering the whole window: what vSphere may answer on
    /// storage that cannot tell.
    Whole,
    /// A `FileFault`: what vSphere may answer on storage that cannot tell.
    Fault,
}

/// Changes to the shape of `QueryChangedDiskAreas` answers (fields left
/// unset are unchanged).
///
/// ```
/// use hypersdk_testkit::vcsim::{CbtSettings, StarAnswer};
/// // Answers cover at most 1 MiB and at most 3 areas; "*" gives one area.
/// let s = CbtSettings::default().window_bytes(1 << 20).max_areas(3).star(StarAnswer::Whole);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CbtSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    window_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_areas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    star: Option<StarAnswer>,
}

impl CbtSettings {
    /// The most one answer covers (`DiskChangeInfo.length`): a positive
    /// multiple of the 64 KiB tracking block. Default 64 MiB.
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.window_bytes = Some(bytes);
        self
    }

    /// End an answer after this many areas (its `length` then stops at the
    /// end of the last one); 0 = no limit (the default).
    pub fn max_areas(mut self, n: u32) -> Self {
        self.max_areas = Some(n);
        self
    }

    /// How `changeId="*"` is answered.
    pub fn star(mut self, answer: StarAnswer) -> Self {
        self.star = Some(answer);
        self
    }
}

/// The current shape of `QueryChangedDiskAreas` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CbtConfig {
    /// The most one answer covers, in bytes.
    pub window_bytes: u64,
    /// Areas per answer at most; 0 = no limit.
    pub max_areas: u32,
    /// How `changeId="*"` is answered.
    pub star: StarAnswer,
}

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ByteArea {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One change set recorded on a tracked disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CbtChange {
    /// Its sequence number (the part after `/` of the change id).
    pub seq: u64,
    /// The disk's change id once this change set was recorded.
    pub change_id: String,
    /// Blocks written (allocated afterwards), merged into byte areas.
    pub written: Vec<ByteArea>,
    /// Blocks zeroed (not allocated afterwards), merged into byte areas.
    pub trimmed: Vec<ByteArea>,
}

/// One disk with change tracking on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CbtDisk {
    /// VM moref value.
    pub vm: String,
    /// VM name.
    pub vm_name: String,
    /// `VirtualDisk.key`.
    pub device_key: i32,
    /// The current change id (`52 3c … 4a/3`).
    pub change_id: String,
    /// Change sets recorded so far.
    pub seq: u64,
    /// The tracking granularity in bytes (64 KiB).
    pub block_size: u64,
    /// The non-zero blocks of the flat file when tracking started.
    pub allocated_at_start: Vec<ByteArea>,
    /// Every change set, oldest first.
    pub changes: Vec<CbtChange>,
}

/// What the harness's change tracking holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct CbtState {
    /// The answer shape.
    pub config: CbtConfig,
    /// Tracked disks, by VM name then device key.
    pub disks: Vec<CbtDisk>,
}

impl CbtState {
    /// The tracked disk `device_key` of the VM named (or with moref value)
    /// `vm`.
    pub fn disk(&self, vm: &str, device_key: i32) -> Option<&CbtDisk> {
        self.disks
            .iter()
            .find(|d| (d.vm_name == vm || d.vm == vm) && d.device_key == device_key)
    }
}

/// One live NFC lease (export or import) as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LeaseStatus {
    /// The lease moref value.
    pub lease: String,
    /// `export` (ExportVm/ExportSnapshot) or `import` (ImportVApp).
    pub kind: String,
    /// The VM moref value.
    pub entity: String,
    /// `initializing`, `ready`, `done` or `error`.
    pub state: String,
    /// The fault type of a lease in `error` (`Timedout` after a timeout).
    #[serde(default)]
    pub fault: Option<String>,
    /// `info.leaseTimeout` in seconds (0: not enforced).
    pub lease_timeout: u64,
    /// `HttpNfcLeaseProgress` calls received.
    pub progress_calls: u64,
    /// The last percentage reported.
    pub last_percent: i32,
    /// Milliseconds since the lease was last renewed (or became ready).
    pub ms_since_renewal: i64,
    /// Whether it timed out.
    pub timed_out: bool,
}
