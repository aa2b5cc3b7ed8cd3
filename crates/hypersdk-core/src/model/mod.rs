//! The vocabulary of hypersdk: VMs, disks, NICs, snapshots and byte extents.
//!
//! Every provider maps its platform's objects to these types, and every format
//! crate reads and writes them, so a VM discovered on vSphere and one read from
//! an OVA look the same to the caller.
//!
//! # Serialized form
//! All types serialize with serde using the field names shown here, in
//! `snake_case`; the names are stable across minor releases. Units are part of
//! the names where a unit applies: `memory_mib` is in MiB (2^20 bytes),
//! `capacity_bytes` and `allocated_bytes` in bytes, extents in bytes.
//! Optional facts that a platform does not report are `null` or absent, never
//! guessed: an unknown firmware is `"unknown"`, not `"bios"`.
//!
//! ```
//! use hypersdk_core::model::{DiskInfo, Firmware, VmInfo};
//!
//! let mut vm = VmInfo::new("vm-42", "web01");
//! vm.cpus = 4;
//! vm.memory_mib = 8192;
//! vm.firmware = Firmware::Uefi;
//! vm.disks.push(DiskInfo::new("disk-0", 20 << 30));
//! let json = serde_json::to_value(&vm).unwrap();
//! assert_eq!(json["memory_mib"], 8192);
//! assert_eq!(json["firmware"], "uefi");
//! assert_eq!(json["disks"][0]["capacity_bytes"], 20u64 << 30);
//! ```

pub mod extent;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use extent::{Extent, ExtentList};

/// How a caller names a VM to a provider.
///
/// Providers resolve every form they can; one that cannot resolve a form
/// returns [`crate::Error::InvalidInput`] naming it. A name that matches
/// several VMs is an error ([`crate::ErrorKind::Conflict`]), never a guess.
///
/// Serialized as a one-key object: `{"id": "vm-42"}`, `{"name": "web01"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VmRef {
    /// The provider's own identifier (a vSphere managed object id such as
    /// `vm-42`, an OVM VM id, …), as in [`VmInfo::id`].
    Id(String),
    /// The VM's UUID (BIOS or instance UUID), as in [`VmInfo::uuid`].
    Uuid(String),
    /// The display name, as in [`VmInfo::name`].
    Name(String),
    /// An inventory path such as `/dc1/vm/folder/web01`.
    InventoryPath(String),
}

impl VmRef {
    /// A reference by provider id.
    pub fn id(id: impl Into<String>) -> Self {
        VmRef::Id(id.into())
    }

    /// A reference by display name.
    pub fn name(name: impl Into<String>) -> Self {
        VmRef::Name(name.into())
    }

    /// A reference by UUID.
    pub fn uuid(uuid: impl Into<String>) -> Self {
        VmRef::Uuid(uuid.into())
    }

    /// Whether `vm` is the VM this reference names.
    ///
    /// UUIDs compare case-insensitively; everything else exactly. An
    /// inventory path matches when it ends with `/<name>`; providers that know
    /// real paths resolve them themselves.
    pub fn matches(&self, vm: &VmInfo) -> bool {
        match self {
            VmRef::Id(id) => vm.id == *id,
            VmRef::Uuid(u) => vm
                .uuid
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(u)),
            VmRef::Name(n) => vm.name == *n,
            VmRef::InventoryPath(p) => p.rsplit_once('/').is_some_and(|(_, last)| last == vm.name),
        }
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::Id(s) => write!(f, "VM id '{s}'"),
            VmRef::Uuid(s) => write!(f, "VM uuid '{s}'"),
            VmRef::Name(s) => write!(f, "VM '{s}'"),
            VmRef::InventoryPath(s) => write!(f, "VM at '{s}'"),
        }
    }
}

impl From<&VmInfo> for VmRef {
    fn from(vm: &VmInfo) -> Self {
        VmRef::Id(vm.id.clone())
    }
}

/// The firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Legacy BIOS.
    Bios,
    /// UEFI (vSphere calls it `efi`).
    Uefi,
    /// The platform did not say.
    #[default]
    Unknown,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Unknown => "unknown",
        })
    }
}

/// The power state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Running.
    PoweredOn,
    /// Stopped.
    PoweredOff,
    /// Suspended to memory or disk.
    Suspended,
    /// The platform did not say.
    #[default]
    Unknown,
}

/// The broad family of a guest operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OsFamily {
    /// Any Linux distribution.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// FreeBSD, OpenBSD, NetBSD and relatives.
    Bsd,
    /// Oracle Solaris and illumos.
    Solaris,
    /// Anything else that was identified.
    Other,
    /// Not reported.
    #[default]
    Unknown,
}

impl fmt::Display for OsFamily {
    /// The serialized name: `linux`, `windows`, `bsd`, `solaris`, `other`,
    /// `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OsFamily::Linux => "linux",
            OsFamily::Windows => "windows",
            OsFamily::Bsd => "bsd",
            OsFamily::Solaris => "solaris",
            OsFamily::Other => "other",
            OsFamily::Unknown => "unknown",
        })
    }
}

/// The guest operating system as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestOs {
    /// The platform's identifier, e.g. vSphere `rhel9_64Guest` or an OVF
    /// `OperatingSystemSection` `osType`.
    pub id: Option<String>,
    /// The family derived from the identifier.
    pub family: OsFamily,
    /// A human description, e.g. `Red Hat Enterprise Linux 9 (64-bit)`.
    pub description: Option<String>,
}

impl GuestOs {
    /// A guest OS from a platform id; the family is guessed from well-known
    /// id spellings (`windows*`, `win*`, `rhel*`, `ubuntu*`, `*linux*`, …).
    pub fn from_id(id: impl Into<String>) -> Self {
        let id = id.into();
        let family = family_from_id(&id);
        GuestOs {
            id: Some(id),
            family,
            description: None,
        }
    }
}

fn family_from_id(id: &str) -> OsFamily {
    let l = id.to_ascii_lowercase();
    const LINUX: &[&str] = &[
        "linux", "rhel", "centos", "ubuntu", "debian", "sles", "suse", "fedora", "oracle", "ol",
        "rocky", "alma", "photon", "coreos", "asianux", "mandr", "turbo", "amazon", "opensuse",
    ];
    if l.starts_with("win") || l.contains("windows") {
        OsFamily::Windows
    } else if l.contains("bsd") || l.starts_with("darwin") {
        OsFamily::Bsd
    } else if l.starts_with("solaris") || l.contains("illumos") {
        OsFamily::Solaris
    } else if LINUX.iter().any(|p| l.starts_with(p)) || l.contains("linux") {
        OsFamily::Linux
    } else if l.is_empty() {
        OsFamily::Unknown
    } else {
        OsFamily::Other
    }
}

/// The on-disk or on-wire format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DiskFormat {
    /// A raw image: byte `n` of the file is byte `n` of the disk.
    Raw,
    /// VMDK streamOptimized (inside OVAs, on the wire of vSphere NFC).
    VmdkStreamOptimized,
    /// VMDK monolithicSparse (hosted products, VirtualBox and qemu OVAs).
    VmdkMonolithicSparse,
    /// VMDK with a flat extent (ESXi datastores).
    VmdkFlat,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// Microsoft VHD.
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
    /// Not known.
    #[default]
    Unknown,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::VmdkStreamOptimized => "vmdk-stream-optimized",
            DiskFormat::VmdkMonolithicSparse => "vmdk-monolithic-sparse",
            DiskFormat::VmdkFlat => "vmdk-flat",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Unknown => "unknown",
        })
    }
}

/// The kind of controller a disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControllerKind {
    /// IDE / ATA.
    Ide,
    /// SATA / AHCI.
    Sata,
    /// SCSI of any model (see [`DiskController::model`]).
    Scsi,
    /// NVMe.
    Nvme,
    /// virtio-blk.
    Virtio,
    /// Anything else.
    Other,
}

/// Where a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskController {
    /// The controller kind.
    pub kind: ControllerKind,
    /// The model where it matters, e.g. `pvscsi`, `lsilogic`, `lsilogicsas`.
    pub model: Option<String>,
    /// The controller's bus number (0 for the first of its kind).
    pub bus: u32,
    /// The disk's unit number on that controller.
    pub unit: u32,
}

/// One virtual disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The provider's stable id of this disk within its VM (vSphere device
    /// key, OVM disk file name, OVF disk id).
    pub id: String,
    /// A display label, e.g. `Hard disk 1`.
    pub name: Option<String>,
    /// Virtual size in bytes: what the guest sees.
    pub capacity_bytes: u64,
    /// Bytes actually allocated on the platform, when known.
    pub allocated_bytes: Option<u64>,
    /// The format the platform stores or serves it in.
    pub format: DiskFormat,
    /// Where it is attached, when known.
    pub controller: Option<DiskController>,
    /// Position in the boot order, 0 first; `None` when not bootable or unknown.
    pub boot_order: Option<u32>,
    /// The platform's path of the backing file, e.g. `[ds1] web01/web01.vmdk`.
    pub backing: Option<String>,
}

impl DiskInfo {
    /// A disk with an id and a capacity; everything else unknown.
    pub fn new(id: impl Into<String>, capacity_bytes: u64) -> Self {
        DiskInfo {
            id: id.into(),
            name: None,
            capacity_bytes,
            allocated_bytes: None,
            format: DiskFormat::Unknown,
            controller: None,
            boot_order: None,
            backing: None,
        }
    }
}

/// One network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NicInfo {
    /// The provider's id of the NIC within its VM, when it has one.
    pub id: Option<String>,
    /// The MAC address, lower-case `aa:bb:cc:dd:ee:ff`, when known.
    pub mac: Option<String>,
    /// The network or port group it is connected to.
    pub network: Option<String>,
    /// The adapter model, e.g. `vmxnet3`, `e1000e`, `virtio`.
    pub adapter: Option<String>,
}

/// What a provider knows about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The provider's identifier; [`VmRef::Id`] resolves it.
    pub id: String,
    /// The VM's UUID (BIOS or instance UUID), when known.
    pub uuid: Option<String>,
    /// The display name.
    pub name: String,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The firmware.
    pub firmware: Firmware,
    /// Whether UEFI secure boot is on; `None` when unknown or not applicable.
    pub secure_boot: Option<bool>,
    /// The guest operating system.
    pub guest_os: GuestOs,
    /// The power state.
    pub power_state: PowerState,
    /// Virtual disks, in the platform's order.
    pub disks: Vec<DiskInfo>,
    /// Network interfaces, in the platform's order.
    pub nics: Vec<NicInfo>,
    /// Provider-specific facts worth keeping (`datacenter`, `host`,
    /// `hardware_version`, …), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl VmInfo {
    /// A VM with an id and a name; everything else empty or unknown.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        VmInfo {
            id: id.into(),
            uuid: None,
            name: name.into(),
            cpus: 0,
            memory_mib: 0,
            firmware: Firmware::Unknown,
            secure_boot: None,
            guest_os: GuestOs::default(),
            power_state: PowerState::Unknown,
            disks: Vec::new(),
            nics: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// The disk with this id.
    pub fn disk(&self, id: &str) -> Option<&DiskInfo> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// Sum of the disks' capacities in bytes.
    pub fn total_capacity_bytes(&self) -> u64 {
        self.disks
            .iter()
            .fold(0u64, |acc, d| acc.saturating_add(d.capacity_bytes))
    }
}

/// Names a snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The VM's provider id.
    pub vm_id: String,
    /// The snapshot's provider id.
    pub id: String,
}

impl SnapshotRef {
    /// A reference to snapshot `id` of VM `vm_id`.
    pub fn new(vm_id: impl Into<String>, id: impl Into<String>) -> Self {
        SnapshotRef {
            vm_id: vm_id.into(),
            id: id.into(),
        }
    }
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot '{}' of VM id '{}'", self.id, self.vm_id)
    }
}

/// What a provider knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's provider id.
    pub id: String,
    /// The VM's provider id.
    pub vm_id: String,
    /// The snapshot's name.
    pub name: String,
    /// A description, when one was given.
    pub description: Option<String>,
    /// The parent snapshot's id; `None` for a root snapshot.
    pub parent: Option<String>,
    /// When it was taken (UTC, RFC 3339 in JSON); `None` when the platform
    /// does not say (the OVM exporter does not).
    pub created: Option<DateTime<Utc>>,
    /// The disks as captured by the snapshot.
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

impl SnapshotInfo {
    /// The [`SnapshotRef`] naming this snapshot.
    pub fn to_ref(&self) -> SnapshotRef {
        SnapshotRef::new(self.vm_id.clone(), self.id.clone())
    }
}

/// Selects VMs in [`crate::provider::Provider::discover`].
///
/// An empty filter selects every VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmFilter {
    /// A glob over the VM name: `*` any run of characters, `?` one character.
    pub name: Option<String>,
    /// Only VMs in this power state.
    pub power_state: Option<PowerState>,
}

impl VmFilter {
    /// A filter that selects every VM.
    pub fn all() -> Self {
        VmFilter::default()
    }

    /// Selects VMs whose name matches the glob `pattern`.
    #[must_use]
    pub fn with_name(mut self, pattern: impl Into<String>) -> Self {
        self.name = Some(pattern.into());
        self
    }

    /// Selects VMs in `state`.
    #[must_use]
    pub fn with_power_state(mut self, state: PowerState) -> Self {
        self.power_state = Some(state);
        self
    }

    /// Whether `vm` passes the filter.
    pub fn matches(&self, vm: &VmInfo) -> bool {
        self.name.as_deref().is_none_or(|p| glob_match(p, &vm.name))
            && self.power_state.is_none_or(|s| s == vm.power_state)
    }
}

/// Matches `text` against a glob with `*` and `?`, in linear time.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("web*", "web01"));
        assert!(glob_match("w?b0*", "web01"));
        assert!(glob_match("*01", "web01"));
        assert!(glob_match("*e*0*", "web01"));
        assert!(!glob_match("web", "web01"));
        assert!(!glob_match("db*", "web01"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("é*", "étoile"));
    }

    #[test]
    fn filter_and_ref() {
        let mut vm = VmInfo::new("vm-1", "web01");
        vm.power_state = PowerState::PoweredOn;
        vm.uuid = Some("ABCD-1".into());
        assert!(VmFilter::all().matches(&vm));
        assert!(VmFilter::all().with_name("web*").matches(&vm));
        assert!(
            !VmFilter::all()
                .with_power_state(PowerState::PoweredOff)
                .matches(&vm)
        );
        assert!(VmRef::id("vm-1").matches(&vm));
        assert!(VmRef::uuid("abcd-1").matches(&vm));
        assert!(VmRef::name("web01").matches(&vm));
        assert!(VmRef::InventoryPath("/dc/vm/web01".into()).matches(&vm));
        assert!(!VmRef::name("web02").matches(&vm));
    }

    #[test]
    fn os_family() {
        assert_eq!(
            GuestOs::from_id("windows2019srv_64Guest").family,
            OsFamily::Windows
        );
        assert_eq!(GuestOs::from_id("rhel9_64Guest").family, OsFamily::Linux);
        assert_eq!(GuestOs::from_id("ubuntu64Guest").family, OsFamily::Linux);
        assert_eq!(
            GuestOs::from_id("other3xLinux64Guest").family,
            OsFamily::Linux
        );
        assert_eq!(GuestOs::from_id("freebsd13_64Guest").family, OsFamily::Bsd);
        assert_eq!(
            GuestOs::from_id("solaris11_64Guest").family,
            OsFamily::Solaris
        );
        assert_eq!(GuestOs::from_id("otherGuest").family, OsFamily::Other);
    }

    #[test]
    fn os_family_display_matches_serde() {
        for f in [
            OsFamily::Linux,
            OsFamily::Windows,
            OsFamily::Bsd,
            OsFamily::Solaris,
            OsFamily::Other,
            OsFamily::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::String(f.to_string())
            );
        }
    }

    #[test]
    fn stable_json_names() {
        let mut vm = VmInfo::new("vm-1", "web01");
        vm.memory_mib = 2048;
        vm.secure_boot = Some(true);
        vm.power_state = PowerState::PoweredOff;
        let mut d = DiskInfo::new("2000", 1 << 30);
        d.format = DiskFormat::VmdkStreamOptimized;
        d.controller = Some(DiskController {
            kind: ControllerKind::Scsi,
            model: Some("pvscsi".into()),
            bus: 0,
            unit: 1,
        });
        d.boot_order = Some(0);
        vm.disks.push(d);
        vm.nics.push(NicInfo {
            mac: Some("00:50:56:aa:bb:cc".into()),
            network: Some("VM Network".into()),
            ..NicInfo::default()
        });
        let v = serde_json::to_value(&vm).unwrap();
        assert_eq!(v["power_state"], "powered_off");
        assert_eq!(v["secure_boot"], true);
        assert_eq!(v["disks"][0]["format"], "vmdk-stream-optimized");
        assert_eq!(v["disks"][0]["controller"]["kind"], "scsi");
        assert_eq!(v["disks"][0]["boot_order"], 0);
        assert_eq!(v["nics"][0]["mac"], "00:50:56:aa:bb:cc");
        let back: VmInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, vm);
        let r = serde_json::to_value(VmRef::name("web01")).unwrap();
        assert_eq!(r, serde_json::json!({"name": "web01"}));
    }
}
