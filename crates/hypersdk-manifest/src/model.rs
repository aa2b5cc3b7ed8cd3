//! The typed model of Artifact Manifest v1.0.
//!
//! One Rust type per object of the schema ([`crate::SCHEMA`]), with the
//! schema's field names. The model is strict about types and lenient about
//! what it does not know:
//!
//! - **types are strict**: a string where an integer belongs, a negative
//!   `bytes`, `null` for an optional field, `"efi"` for a firmware or a
//!   `checksum` that is not `sha256:<64 lower-case hex>` fail to
//!   deserialize; serde_json never coerces;
//! - **unknown fields are kept**: every object whose schema allows more
//!   properties has an `extra` map that receives them on read and writes
//!   them back, so a manifest read and written again loses nothing (a later
//!   hyper2kvm reads top-level `profile`, for instance). `pipeline` is the
//!   exception: the schema forbids other keys there, and so does the model;
//! - **optional fields stay absent**: an optional field that is `None` is
//!   not written, and a field that is `Some(false)` or `Some(0)` is written:
//!   nothing is skipped for being a default value, so `boot_order_hint: 0`
//!   and `backup: false` reach the converter.
//!
//! Structs are `#[non_exhaustive]` so a later minor version of the format
//! can add fields; build them with their `new`/`Default` constructors and
//! set the public fields.
//!
//! ```
//! use hypersdk_manifest::{Disk, Manifest, SourceFormat};
//!
//! let mut disk = Disk::new("disk-0", SourceFormat::Vmdk, 1024, "/exports/web01/disk-0.vmdk");
//! disk.boot_order_hint = Some(0);
//! let manifest = Manifest::new(vec![disk]);
//! let json = serde_json::to_value(&manifest)?;
//! assert_eq!(json["manifest_version"], "1.0");
//! assert_eq!(json["disks"][0]["boot_order_hint"], 0);
//!
//! // Unknown fields survive a read and a write.
//! let mut json = json;
//! json["profile"] = "windows-server".into();
//! let back = Manifest::from_value(json.clone())?;
//! assert_eq!(back.extra["profile"], "windows-server");
//! assert_eq!(serde_json::to_value(&back)?, json);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::{DiskFormat, Firmware};
use hypersdk_core::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The manifest version this crate reads and writes.
pub const MANIFEST_VERSION: &str = "1.0";

/// The boot order hint the converter assumes when a disk has none.
pub const DEFAULT_BOOT_ORDER_HINT: u64 = 999;

/// Fields of an object that the model does not know, kept as they were read.
pub type Extra = Map<String, Value>;

/// Deserializes a present optional field: `null` is a type error, not
/// `None` (an absent field is `None` through `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// An Artifact Manifest v1.0: the disks of one exported VM and what the
/// converter (hyper2kvm) should do with them.
///
/// Only `manifest_version` and `disks` are required by the schema; every
/// other section is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// The format version; always [`MANIFEST_VERSION`] in a valid manifest.
    pub manifest_version: String,
    /// Where the VM came from (informational for the converter).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub source: Option<Source>,
    /// The VM's hardware and firmware.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm: Option<Vm>,
    /// The disk artifacts; at least one.
    pub disks: Vec<Disk>,
    /// The network interfaces (informational).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// Informational notes from the export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Non-fatal warnings from the export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// Who made the manifest, for which job, with which tags.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Metadata>,
    /// Which converter stages run. hyper2kvm runs a stage only when its
    /// `enabled` is `true`: without this block it converts nothing.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub pipeline: Option<Pipeline>,
    /// Guest configuration to inject (Linux guests only).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub configuration: Option<Configuration>,
    /// Where and how the converter writes its output.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub output: Option<Output>,
    /// Runtime options of the converter.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub options: Option<RuntimeOptions>,
    /// Top-level fields the model does not know (e.g. hyper2kvm's
    /// `profile`), kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Manifest {
    /// A version 1.0 manifest of `disks` with every optional section empty.
    pub fn new(disks: Vec<Disk>) -> Self {
        Manifest {
            manifest_version: MANIFEST_VERSION.to_owned(),
            source: None,
            vm: None,
            disks,
            nics: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            metadata: None,
            pipeline: None,
            configuration: None,
            output: None,
            options: None,
            extra: Extra::new(),
        }
    }

    /// The disk with this id.
    pub fn disk(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// The disk hyper2kvm boots and fixes: the lowest `boot_order_hint`
    /// (999 when absent), the first such disk on a tie. `None` only when
    /// there is no disk.
    pub fn boot_disk(&self) -> Option<&Disk> {
        self.disks
            .iter()
            .enumerate()
            .min_by_key(|(i, d)| (d.effective_boot_order_hint(), *i))
            .map(|(_, d)| d)
    }
}

/// Where the VM came from. Informational: hyper2kvm reads none of it but
/// copies some into its report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Source {
    /// The provider's name: `vsphere`, `ovm`, `local`, …
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider: Option<String>,
    /// The provider's id of the VM (a vSphere managed object id, …).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_id: Option<String>,
    /// The VM's display name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_name: Option<String>,
    /// The datacenter or region (a name, not a URL).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub datacenter: Option<String>,
    /// When the export ran.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub export_timestamp: Option<Timestamp>,
    /// How the disks were obtained, as it really was: `nfc-lease`,
    /// `ovm-snapshot`, …
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub export_method: Option<String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The VM's hardware and firmware.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Vm {
    /// Number of virtual CPUs, at least 1.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<u64>,
    /// Memory in whole GB (GiB, rounded up), at least 1.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem_gb: Option<u64>,
    /// The firmware: `bios`, `uefi` or `unknown`; the converter assumes BIOS
    /// when absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub firmware: Option<Firmware>,
    /// Whether UEFI secure boot is on.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub secureboot: Option<bool>,
    /// A hint of the guest OS family: `linux`, `windows` or `unknown`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_hint: Option<String>,
    /// The guest OS version as the platform names it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The format of a disk artifact, as the schema spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceFormat {
    /// VMware VMDK, any subformat.
    Vmdk,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A raw image.
    Raw,
    /// Microsoft VHD.
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
}

impl SourceFormat {
    /// Every format, in the schema's order.
    pub const ALL: [SourceFormat; 6] = [
        SourceFormat::Vmdk,
        SourceFormat::Qcow2,
        SourceFormat::Raw,
        SourceFormat::Vhd,
        SourceFormat::Vhdx,
        SourceFormat::Vdi,
    ];

    /// The schema's name: `vmdk`, `qcow2`, `raw`, `vhd`, `vhdx` or `vdi`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Vmdk => "vmdk",
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Raw => "raw",
            SourceFormat::Vhd => "vhd",
            SourceFormat::Vhdx => "vhdx",
            SourceFormat::Vdi => "vdi",
        }
    }

    /// The manifest format of a core [`DiskFormat`]; every VMDK subformat
    /// is `vmdk`. `None` for [`DiskFormat::Unknown`].
    pub fn from_disk_format(format: DiskFormat) -> Option<Self> {
        match format {
            DiskFormat::Raw => Some(SourceFormat::Raw),
            DiskFormat::VmdkStreamOptimized
            | DiskFormat::VmdkMonolithicSparse
            | DiskFormat::VmdkFlat => Some(SourceFormat::Vmdk),
            DiskFormat::Qcow2 => Some(SourceFormat::Qcow2),
            DiskFormat::Vhd => Some(SourceFormat::Vhd),
            DiskFormat::Vhdx => Some(SourceFormat::Vhdx),
            _ => None,
        }
    }

    /// The format a file name's extension names (`.vmdk`, `.qcow2`,
    /// `.raw`/`.img`, `.vhd`, `.vhdx`, `.vdi`, in any case).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "img" => Some(SourceFormat::Raw),
            e => SourceFormat::ALL.into_iter().find(|f| f.as_str() == e),
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a disk is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DiskType {
    /// The disk the VM boots from.
    Boot,
    /// A data disk.
    Data,
    /// Not said.
    Unknown,
}

impl DiskType {
    /// The schema's name: `boot`, `data` or `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DiskType::Boot => "boot",
            DiskType::Data => "data",
            DiskType::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DiskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One disk artifact: a file on the local file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Disk {
    /// Unique within the manifest, `^[a-zA-Z0-9_-]+$`; hyper2kvm names its
    /// output `<id>.<format>`.
    pub id: String,
    /// The file's format.
    pub source_format: SourceFormat,
    /// The size of the file in bytes (not the disk's virtual capacity:
    /// hyper2kvm compares it with the file).
    pub bytes: u64,
    /// The file's absolute path.
    pub local_path: String,
    /// The SHA-256 of the file. A checksum of another algorithm or in
    /// another spelling than `sha256:<64 lower-case hex>` does not
    /// deserialize.
    #[serde(
        default,
        with = "strict_sha256",
        skip_serializing_if = "Option::is_none"
    )]
    pub checksum: Option<Checksum>,
    /// Boot priority, 0 first; hyper2kvm assumes 999 when absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_order_hint: Option<u64>,
    /// A human-readable label.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub label: Option<String>,
    /// What the disk is for.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_type: Option<DiskType>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Disk {
    /// A disk with the four required fields and nothing else.
    pub fn new(
        id: impl Into<String>,
        source_format: SourceFormat,
        bytes: u64,
        local_path: impl Into<String>,
    ) -> Self {
        Disk {
            id: id.into(),
            source_format,
            bytes,
            local_path: local_path.into(),
            checksum: None,
            boot_order_hint: None,
            label: None,
            disk_type: None,
            extra: Extra::new(),
        }
    }

    /// The boot order hint hyper2kvm uses: the one written, else
    /// [`DEFAULT_BOOT_ORDER_HINT`].
    pub fn effective_boot_order_hint(&self) -> u64 {
        self.boot_order_hint.unwrap_or(DEFAULT_BOOT_ORDER_HINT)
    }
}

/// (De)serializes `Option<Checksum>` as exactly `sha256:<64 lower-case
/// hex>`, the schema's pattern; core's [`Checksum`] parser alone would also
/// take other algorithms and upper case.
mod strict_sha256 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Checksum>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match value {
            Some(c) => s.collect_str(c),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Checksum>, D::Error> {
        let s = String::deserialize(d)?;
        parse_sha256(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Parses a manifest checksum: exactly `sha256:` and 64 lower-case hex
/// digits, the schema's `^sha256:[a-f0-9]{64}$`.
///
/// ```
/// use hypersdk_manifest::parse_sha256;
/// let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
/// assert!(parse_sha256(&format!("sha256:{hex}")).is_ok());
/// assert!(parse_sha256(&format!("SHA256:{hex}")).is_err());
/// assert!(parse_sha256(&format!("sha256:{}", hex.to_uppercase())).is_err());
/// ```
pub fn parse_sha256(s: &str) -> Result<Checksum> {
    if !is_sha256_checksum(s) {
        return Err(Error::invalid_data(
            format!("checksum '{}'", s.escape_debug()),
            "expected sha256:<64 lower-case hex digits>",
        ));
    }
    Checksum::from_hex(Algorithm::Sha256, &s["sha256:".len()..])
}

/// Whether `s` matches the schema's checksum pattern `^sha256:[a-f0-9]{64}$`.
pub(crate) fn is_sha256_checksum(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether `s` matches the schema's disk id pattern `^[a-zA-Z0-9_-]+$`.
pub fn is_valid_disk_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` matches the schema's MAC pattern
/// `^([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})$`.
pub fn is_valid_mac(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == b':' || *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// One network interface (informational).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Nic {
    /// The NIC's identifier.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// The MAC address, `aa:bb:cc:dd:ee:ff` (or with `-`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<String>,
    /// The source network's name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub network: Option<String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A non-fatal warning from the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Warning {
    /// The export stage it happened in.
    pub stage: String,
    /// What happened.
    pub message: String,
    /// When.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<Timestamp>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Warning {
    /// A warning of `stage`, stamped now.
    pub fn new(stage: impl Into<String>, message: impl Into<String>) -> Self {
        Warning {
            stage: stage.into(),
            message: message.into(),
            timestamp: Some(Timestamp::now()),
            extra: Extra::new(),
        }
    }
}

/// Who made the manifest.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// The hypersdk version that wrote it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub hypersdk_version: Option<String>,
    /// The caller's job identifier.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub job_id: Option<String>,
    /// When the manifest was made.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<Timestamp>,
    /// User-defined tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The converter's stages. The schema allows no other key here, and the
/// model rejects any.
///
/// hyper2kvm runs a stage only when it is present with `enabled: true`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Pipeline {
    /// Inspect the guest.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub inspect: Option<InspectStage>,
    /// Fix the guest for KVM (boot disk only).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub fix: Option<FixStage>,
    /// Convert the disks.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub convert: Option<ConvertStage>,
    /// Check the converted images.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub validate: Option<ValidateStage>,
}

impl Pipeline {
    /// Every stage enabled, every option written out with the converter's
    /// default value. Booleans whose default is `true` are written too, so
    /// the block says what will happen without knowing the defaults.
    pub fn full() -> Self {
        Pipeline {
            inspect: Some(InspectStage::new(true)),
            fix: Some(FixStage::new(true)),
            convert: Some(ConvertStage::new(true)),
            validate: Some(ValidateStage::new(true)),
        }
    }

    /// Every stage present with `enabled: false`: the converter loads the
    /// manifest, checks the disks and reports, nothing more.
    pub fn disabled() -> Self {
        Pipeline {
            inspect: Some(InspectStage::new(false)),
            fix: Some(FixStage::new(false)),
            convert: Some(ConvertStage::new(false)),
            validate: Some(ValidateStage::new(false)),
        }
    }
}

/// The INSPECT stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InspectStage {
    /// Whether the stage runs.
    pub enabled: bool,
    /// Use libguestfs to collect guest details (default `false`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub collect_guest_info: Option<bool>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl InspectStage {
    /// The stage with every option at its default, written out.
    pub fn new(enabled: bool) -> Self {
        InspectStage {
            enabled,
            collect_guest_info: Some(false),
            extra: Extra::new(),
        }
    }
}

/// How the FIX stage rewrites `/etc/fstab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FstabMode {
    /// Rewrite every entry to a stable name (the default).
    StabilizeAll,
    /// Rewrite only by-path entries.
    BypathOnly,
    /// Leave fstab alone.
    Noop,
}

/// The FIX stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FixStage {
    /// Whether the stage runs.
    pub enabled: bool,
    /// Back files up before changing them (default `true`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub backup: Option<bool>,
    /// Print `/etc/fstab` before and after (default `false`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub print_fstab: Option<bool>,
    /// Update the GRUB configuration (default `true`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub update_grub: Option<bool>,
    /// Regenerate the initramfs with virtio drivers (default `true`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub regen_initramfs: Option<bool>,
    /// How fstab is rewritten (default `stabilize-all`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub fstab_mode: Option<FstabMode>,
    /// Remove VMware tools (default `false`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub remove_vmware_tools: Option<bool>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl FixStage {
    /// The stage with every option at its default, written out.
    pub fn new(enabled: bool) -> Self {
        FixStage {
            enabled,
            backup: Some(true),
            print_fstab: Some(false),
            update_grub: Some(true),
            regen_initramfs: Some(true),
            fstab_mode: Some(FstabMode::StabilizeAll),
            remove_vmware_tools: Some(false),
            extra: Extra::new(),
        }
    }
}

/// The CONVERT stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConvertStage {
    /// Whether the stage runs.
    pub enabled: bool,
    /// Compress qcow2 output (default `false`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub compress: Option<bool>,
    /// qcow2 compression level, 1 to 9.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub compress_level: Option<u8>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ConvertStage {
    /// The stage with every option at its default, written out.
    pub fn new(enabled: bool) -> Self {
        ConvertStage {
            enabled,
            compress: Some(false),
            compress_level: None,
            extra: Extra::new(),
        }
    }
}

/// The VALIDATE stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidateStage {
    /// Whether the stage runs.
    pub enabled: bool,
    /// Check the images open with qemu-img (default `true`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub check_image_integrity: Option<bool>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ValidateStage {
    /// The stage with every option at its default, written out.
    pub fn new(enabled: bool) -> Self {
        ValidateStage {
            enabled,
            check_image_integrity: Some(true),
            extra: Extra::new(),
        }
    }
}

/// Guest configuration to inject (Linux guests only); free-form objects.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Configuration {
    /// User accounts.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub users: Option<Map<String, Value>>,
    /// systemd services.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub services: Option<Map<String, Value>>,
    /// Host name and hosts file.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub hostname: Option<Map<String, Value>>,
    /// Network configuration.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub network: Option<Map<String, Value>>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The converter's output format (`output.format`).
///
/// Written and parsed as the schema's names, `qcow2`, `raw` and `vdi`:
/// [`Display`](fmt::Display) writes them, and [`FromStr`] takes them in
/// any case (`QCOW2` too) but nothing else, so a command-line flag can be
/// parsed with it:
///
/// ```
/// use hypersdk_core::ErrorKind;
/// use hypersdk_manifest::OutputFormat;
///
/// assert_eq!("qcow2".parse::<OutputFormat>()?, OutputFormat::Qcow2);
/// assert_eq!("VDI".parse::<OutputFormat>()?, OutputFormat::Vdi);
/// assert_eq!(OutputFormat::Raw.to_string(), "raw");
///
/// let err = "vmdk".parse::<OutputFormat>().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert!(err.to_string().contains("qcow2, raw, vdi"));
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OutputFormat {
    /// qcow2 (the default).
    Qcow2,
    /// Raw.
    Raw,
    /// VirtualBox VDI.
    Vdi,
}

impl OutputFormat {
    /// Every format, in the schema's order (`qcow2`, `raw`, `vdi`).
    pub const ALL: &'static [OutputFormat] =
        &[OutputFormat::Qcow2, OutputFormat::Raw, OutputFormat::Vdi];

    /// The schema's name: `qcow2`, `raw` or `vdi`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Raw => "raw",
            OutputFormat::Vdi => "vdi",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputFormat {
    type Err = Error;

    /// Parses one of the schema's names, `qcow2`, `raw` or `vdi`, in any
    /// case; anything else (surrounding spaces included) is
    /// [`Error::InvalidInput`] naming the accepted values.
    fn from_str(s: &str) -> Result<Self> {
        OutputFormat::ALL
            .iter()
            .copied()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let accepted: Vec<&str> = OutputFormat::ALL.iter().map(|f| f.as_str()).collect();
                Error::invalid_input(format!(
                    "output format '{}' is not one of {}",
                    s.escape_debug(),
                    accepted.join(", ")
                ))
            })
    }
}

/// Where the converter writes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Output {
    /// The output directory; hyper2kvm uses `<manifest dir>/output` when
    /// absent.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub directory: Option<String>,
    /// The output format (default qcow2).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub format: Option<OutputFormat>,
    /// The output file name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub filename: Option<String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Output {
    /// Output in `format`, directory and file name left to the converter.
    pub fn new(format: OutputFormat) -> Self {
        Output {
            format: Some(format),
            ..Output::default()
        }
    }
}

/// The converter's runtime options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Change nothing, write nothing (default `false`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub dry_run: Option<bool>,
    /// Verbosity 0 to 3 (default 1).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub verbose: Option<u8>,
    /// The report the converter writes.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub report: Option<ReportOptions>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The converter's `report.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReportOptions {
    /// Whether the report is written (default `true`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub enabled: Option<bool>,
    /// The report's path, relative to the output directory (default
    /// `report.json`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    /// Fields the model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An RFC 3339 date-time (the schema's `date-time` format), offset kept.
///
/// Written with `Z` for UTC and only the fractional digits needed;
/// parsed strictly: a date, `T`, a time and an offset.
///
/// ```
/// use hypersdk_manifest::Timestamp;
/// let t: Timestamp = "2026-01-21T20:00:00Z".parse()?;
/// assert_eq!(t.to_string(), "2026-01-21T20:00:00Z");
/// assert!("2026-01-21 20:00:00Z".parse::<Timestamp>().is_err());
/// assert!("2026-01-21T20:00:00".parse::<Timestamp>().is_err());
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(DateTime<FixedOffset>);

impl Timestamp {
    /// The current time, in UTC.
    pub fn now() -> Self {
        Utc::now().into()
    }

    /// The date-time with its offset.
    pub fn as_datetime(&self) -> DateTime<FixedOffset> {
        self.0
    }

    /// The same instant in UTC.
    pub fn to_utc(&self) -> DateTime<Utc> {
        self.0.with_timezone(&Utc)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp(t.fixed_offset())
    }
}

impl From<DateTime<FixedOffset>> for Timestamp {
    fn from(t: DateTime<FixedOffset>) -> Self {
        Timestamp(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl FromStr for Timestamp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid_data(
                format!("timestamp '{}'", s.escape_debug()),
                format!("expected an RFC 3339 date-time such as 2026-01-21T20:00:00Z: {why}"),
            )
        };
        // chrono also takes a space between date and time; RFC 3339's
        // date-time production (and JSON Schema) wants `T`.
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(bad("no 'T' between date and time"));
        }
        DateTime::parse_from_rfc3339(s)
            .map(Timestamp)
            .map_err(|e| bad(&e.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::ErrorKind;
    use serde_json::json;

    #[test]
    fn output_format_names() {
        // Exactly the schema's enum, in its order.
        let schema: Value = serde_json::from_str(crate::SCHEMA).unwrap();
        let names: Vec<String> = serde_json::from_value(
            schema["properties"]["output"]["properties"]["format"]["enum"].clone(),
        )
        .unwrap();
        let ours: Vec<&str> = OutputFormat::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names, ours);
        for &f in OutputFormat::ALL {
            assert_eq!(f.to_string().parse::<OutputFormat>().unwrap(), f);
            assert_eq!(
                f.as_str().to_uppercase().parse::<OutputFormat>().unwrap(),
                f
            );
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
        assert_eq!(
            "QCow2".parse::<OutputFormat>().unwrap(),
            OutputFormat::Qcow2
        );
        for bad in ["", "qcow", "qcow2 ", " raw", "vmdk", "qcow2,raw", "ｒａｗ"] {
            let e = bad.parse::<OutputFormat>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains("qcow2, raw, vdi"), "{e}");
        }
    }

    #[test]
    fn patterns() {
        assert!(is_valid_disk_id("disk-0"));
        assert!(is_valid_disk_id("Boot_Disk-1"));
        assert!(!is_valid_disk_id(""));
        assert!(!is_valid_disk_id("disk 0"));
        assert!(!is_valid_disk_id("disk.0"));
        assert!(!is_valid_disk_id("dïsk"));
        assert!(!is_valid_disk_id("disk-0\n"));
        assert!(is_valid_mac("00:50:56:ab:CD:ef"));
        assert!(is_valid_mac("00-50-56-ab-cd-ef"));
        assert!(!is_valid_mac("00:50:56:ab:cd"));
        assert!(!is_valid_mac("00:50:56:ab:cd:eg"));
        assert!(!is_valid_mac("0050.56ab.cdef.00"));
        let hex = "a".repeat(64);
        assert!(is_sha256_checksum(&format!("sha256:{hex}")));
        assert!(!is_sha256_checksum(&format!("sha256:{}", "a".repeat(66))));
        assert!(!is_sha256_checksum(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256_checksum(&format!("sha1:{hex}")));
    }

    #[test]
    fn strict_types() {
        let base = json!({"manifest_version": "1.0", "disks": [
            {"id": "d", "source_format": "raw", "bytes": 1, "local_path": "/d"}
        ]});
        assert!(serde_json::from_value::<Manifest>(base.clone()).is_ok());
        let cases = [
            ("/disks/0/bytes", json!("1")),
            ("/disks/0/bytes", json!(-1)),
            ("/disks/0/bytes", json!(1.5)),
            ("/disks/0/source_format", json!("VMDK")),
            (
                "/disks/0/checksum",
                json!(format!("sha256:{}", "A".repeat(64))),
            ),
            ("/disks/0/label", Value::Null),
            ("/vm", json!({"firmware": "efi"})),
            ("/vm", json!({"cpu": "4"})),
            ("/source", json!({"export_timestamp": "yesterday"})),
            (
                "/pipeline",
                json!({"inspect": {"enabled": true}, "extra": {}}),
            ),
            ("/pipeline", json!({"inspect": {}})),
        ];
        for (pointer, value) in cases {
            let mut m = base.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            m.pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(key.to_owned(), value.clone());
            assert!(
                serde_json::from_value::<Manifest>(m).is_err(),
                "{pointer} = {value} was accepted"
            );
        }
    }

    #[test]
    fn timestamps() {
        let t: Timestamp = "2026-01-21T22:00:00.5+02:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-21T22:00:00.500+02:00");
        assert_eq!(t.to_utc().to_rfc3339(), "2026-01-21T20:00:00.500+00:00");
        let u: Timestamp = "2026-01-21t20:00:00.5z".parse().unwrap();
        assert_eq!(t, u);
        assert!("2026-13-01T00:00:00Z".parse::<Timestamp>().is_err());
        assert!("".parse::<Timestamp>().is_err());
    }

    #[test]
    fn boot_disk_is_the_lowest_hint_first_on_ties() {
        let mut a = Disk::new("a", SourceFormat::Raw, 1, "/a");
        let mut b = Disk::new("b", SourceFormat::Raw, 1, "/b");
        let m = Manifest::new(vec![a.clone(), b.clone()]);
        assert_eq!(m.boot_disk().unwrap().id, "a");
        a.boot_order_hint = Some(1);
        b.boot_order_hint = Some(0);
        let m = Manifest::new(vec![a, b]);
        assert_eq!(m.boot_disk().unwrap().id, "b");
        assert!(Manifest::new(vec![]).boot_disk().is_none());
    }

    #[test]
    fn source_formats() {
        assert_eq!(
            SourceFormat::from_disk_format(DiskFormat::VmdkStreamOptimized),
            Some(SourceFormat::Vmdk)
        );
        assert_eq!(SourceFormat::from_disk_format(DiskFormat::Unknown), None);
        assert_eq!(
            SourceFormat::from_path(Path::new("/x/a.IMG")),
            Some(SourceFormat::Raw)
        );
        assert_eq!(
            SourceFormat::from_path(Path::new("a.vhdx")),
            Some(SourceFormat::Vhdx)
        );
        assert_eq!(SourceFormat::from_path(Path::new("a.ova")), None);
        for f in SourceFormat::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), json!(f.as_str()));
        }
    }
}
