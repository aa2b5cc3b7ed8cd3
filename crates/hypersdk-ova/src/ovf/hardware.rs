//! What a virtual system's hardware items mean, and the conversion to the
//! core [`VmInfo`].

use hypersdk_core::model::{
    ControllerKind, DiskController, DiskFormat, DiskInfo, Firmware, GuestOs, NicInfo, OsFamily,
    VmInfo,
};
use hypersdk_core::{Error, Result};

use super::model::resource_type as rt;
use super::model::*;
use super::ns;
use super::units;
use super::xml::XmlElement;

/// The virtual hardware of one virtual system for one deployment
/// configuration, as [`VirtualSystem::hardware`] reads it from the items.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Hardware {
    /// `vssd:VirtualSystemType` values, e.g. `["vmx-13", "vmx-11"]`.
    pub virtual_system_types: Vec<String>,
    /// Sum of the processor items' VirtualQuantity.
    pub cpus: Option<u32>,
    /// Memory in bytes (VirtualQuantity times AllocationUnits; MiB when the
    /// units are missing, as ovftool reads it).
    pub memory_bytes: Option<u64>,
    /// Disk controllers, in item order.
    pub controllers: Vec<Controller>,
    /// Disk drives, in item order.
    pub disks: Vec<DiskAttachment>,
    /// CD, DVD and floppy drives, in item order.
    pub drives: Vec<Drive>,
    /// Network adapters, in item order.
    pub nics: Vec<Nic>,
    /// Firmware from `vmw:Config firmware`, VirtualBox's `Firmware`, or
    /// [`Firmware::Unknown`].
    pub firmware: Firmware,
    /// `vmw:Config bootOptions.efiSecureBootEnabled` (vCenter, ovftool,
    /// ova-compose; also `uefi.secureBoot.enabled`) or VirtualBox's secure
    /// boot flag; `None` when not stated.
    pub secure_boot: Option<bool>,
}

/// A disk controller item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Controller {
    /// `InstanceID`.
    pub instance_id: String,
    /// IDE, SCSI, SATA, NVMe, …
    pub kind: ControllerKind,
    /// SCSI model (`lsilogic`, `lsilogicsas`, `buslogic`, `pvscsi`).
    pub model: Option<String>,
    /// `ResourceSubType` as written.
    pub sub_type: Option<String>,
    /// Bus number: `Address`, else the count of earlier controllers of the
    /// same kind.
    pub bus: u32,
    /// `ElementName`/`Caption`.
    pub name: Option<String>,
}

/// A disk drive item and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskAttachment {
    /// `InstanceID`.
    pub instance_id: String,
    /// `ElementName`/`Caption`.
    pub name: Option<String>,
    /// The DiskSection disk, from `HostResource` `ovf:/disk/<id>`.
    pub disk_id: Option<String>,
    /// A File used directly, from `HostResource` `ovf:/file/<id>`.
    pub file_id: Option<String>,
    /// The controller's index in [`Hardware::controllers`].
    pub controller: Option<usize>,
    /// `Parent` as written.
    pub parent: Option<String>,
    /// `AddressOnParent`: the unit on the controller.
    pub address_on_parent: Option<u32>,
    /// Capacity stated on the item itself (VirtualQuantity ×
    /// AllocationUnits), used by items without a HostResource.
    pub item_capacity_bytes: Option<u64>,
}

/// The kind of a removable-media drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriveKind {
    /// ResourceType 15.
    Cd,
    /// ResourceType 16.
    Dvd,
    /// ResourceType 14.
    Floppy,
}

/// A CD, DVD or floppy drive item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drive {
    /// `InstanceID`.
    pub instance_id: String,
    /// CD, DVD or floppy.
    pub kind: DriveKind,
    /// The controller's index in [`Hardware::controllers`].
    pub controller: Option<usize>,
    /// `AddressOnParent`.
    pub address_on_parent: Option<u32>,
    /// `HostResource` (an ISO `ovf:/file/<id>`), when given.
    pub host_resource: Option<String>,
}

/// A network adapter item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Nic {
    /// `InstanceID`.
    pub instance_id: String,
    /// `ElementName`/`Caption`.
    pub name: Option<String>,
    /// `ResourceSubType` lower-cased (`vmxnet3`, `e1000`, `pcnet32`).
    pub adapter: Option<String>,
    /// `Connection`: the network name.
    pub network: Option<String>,
    /// `Address`, normalized to `aa:bb:cc:dd:ee:ff`, when it is a MAC.
    pub mac: Option<String>,
}

/// `00-16-8B-DB-00-5E`, `0800272AFB4E`, `00:50:56:AA:BB:CC` →
/// `00:16:8b:db:00:5e`; `None` if not 12 hex digits.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).filter_map(|i| hex.get(i * 2..i * 2 + 2)).collect();
    Some(parts.join(":"))
}

/// The id in `ovf:/disk/<id>` (also `/disk/<id>`, 0.9 style).
fn host_ref<'a>(s: &'a str, kind: &str) -> Option<&'a str> {
    let s = s.trim();
    let s = s.strip_prefix("ovf:").unwrap_or(s);
    let s = s.strip_prefix('/').unwrap_or(s);
    s.strip_prefix(kind)?.strip_prefix('/')
}

/// The SCSI model name for a ResourceSubType.
fn scsi_model(sub: &str) -> String {
    match sub.to_ascii_lowercase().as_str() {
        "virtualscsi" | "pvscsi" => "pvscsi".to_owned(),
        other => other.to_owned(),
    }
}

fn controller_kind(rtype: u32, sub: Option<&str>) -> Option<ControllerKind> {
    let sub_l = sub.map(str::to_ascii_lowercase);
    let sub_l = sub_l.as_deref();
    match rtype {
        rt::IDE_CONTROLLER => Some(ControllerKind::Ide),
        rt::SCSI_CONTROLLER => Some(ControllerKind::Scsi),
        rt::OTHER_STORAGE | rt::OTHER => match sub_l {
            Some(s) if s.contains("nvme") => Some(ControllerKind::Nvme),
            Some(s) if s.contains("sata") || s.contains("ahci") => Some(ControllerKind::Sata),
            Some(s) if s.contains("virtio") => Some(ControllerKind::Virtio),
            Some(s) if s.contains("scsi") || s.contains("lsi") => Some(ControllerKind::Scsi),
            _ => None,
        },
        _ => None,
    }
}

fn firmware_from_vmw(v: &str) -> Firmware {
    match v.trim().to_ascii_lowercase().as_str() {
        "efi" | "uefi" => Firmware::Uefi,
        "bios" => Firmware::Bios,
        _ => Firmware::Unknown,
    }
}

/// Firmware and secure boot from a VirtualBox `vbox:Machine` section.
fn vbox_firmware(machine: &XmlElement) -> (Firmware, Option<bool>) {
    let hardware = machine.elements().find(|e| e.name == "Hardware");
    let Some(hw) = hardware else {
        return (Firmware::Unknown, None);
    };
    let fw = hw.elements().find(|e| e.name == "Firmware");
    let firmware = match fw.and_then(|f| f.attr(None, "type")) {
        Some(t) if t.to_ascii_uppercase().starts_with("EFI") => Firmware::Uefi,
        Some(t) if t.eq_ignore_ascii_case("BIOS") => Firmware::Bios,
        Some(_) => Firmware::Unknown,
        // VirtualBox's settings schema: no Firmware element means BIOS.
        None => Firmware::Bios,
    };
    let secure = machine
        .descendants()
        .into_iter()
        .find(|e| e.name == "SecureBoot")
        .and_then(|e| e.attr(None, "enabled"))
        .map(|v| v == "true");
    (firmware, secure)
}

impl VirtualSystem {
    /// The hardware for `configuration` (items marked for other
    /// configurations are skipped; `None` keeps only unmarked items). Reads
    /// the first VirtualHardwareSection.
    pub fn hardware(&self, configuration: Option<&str>) -> Hardware {
        let mut hw = Hardware::default();
        let Some(section) = self.hardware_sections().next() else {
            self.vendor_firmware(&mut hw);
            return hw;
        };
        hw.virtual_system_types = section.virtual_system_types();
        let items = applicable_items(section, configuration);
        // Controllers first, so Parent references resolve whatever the order.
        let mut controller_ids: Vec<String> = Vec::new();
        for item in &items {
            let Some(t) = item.resource_type() else {
                continue;
            };
            let sub = item.resource_sub_type();
            let Some(kind) = controller_kind(t, sub.as_deref()) else {
                continue;
            };
            let bus = item
                .address()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    u32::try_from(hw.controllers.iter().filter(|c| c.kind == kind).count())
                        .unwrap_or(u32::MAX)
                });
            let model = match kind {
                ControllerKind::Scsi => sub.as_deref().map(scsi_model),
                _ => None,
            };
            controller_ids.push(item.instance_id().unwrap_or_default());
            hw.controllers.push(Controller {
                instance_id: item.instance_id().unwrap_or_default(),
                kind,
                model,
                sub_type: sub,
                bus,
                name: item.element_name(),
            });
        }
        let controller_of = |item: &Item| -> Option<usize> {
            let p = item.parent()?;
            controller_ids.iter().position(|c| *c == p)
        };
        let unit = |item: &Item| item.address_on_parent().and_then(|a| a.parse().ok());
        let mut cpus: Option<u32> = None;
        for item in &items {
            let Some(t) = item.resource_type() else {
                continue;
            };
            match t {
                rt::PROCESSOR => {
                    let q = item
                        .virtual_quantity()
                        .and_then(|q| q.parse::<u32>().ok())
                        .or_else(|| {
                            // oVirt: sockets times cores per socket.
                            let s: u32 = item.property(&["num_of_sockets"])?.parse().ok()?;
                            let c: u32 = item.property(&["cpu_per_socket"])?.parse().ok()?;
                            s.checked_mul(c)
                        });
                    if let Some(q) = q {
                        cpus = Some(cpus.unwrap_or(0).saturating_add(q));
                    }
                }
                rt::MEMORY => {
                    if let Some(q) = item.virtual_quantity() {
                        let u = item
                            .allocation_units()
                            .unwrap_or_else(|| "MegaBytes".into());
                        if let Some(b) = units::to_bytes(&q, Some(&u)) {
                            hw.memory_bytes = Some(hw.memory_bytes.unwrap_or(0).saturating_add(b));
                        }
                    }
                }
                rt::DISK_DRIVE | rt::LOGICAL_DISK => {
                    let hosts = item.host_resources();
                    let disk_id = hosts
                        .iter()
                        .find_map(|h| host_ref(h, "disk"))
                        .map(str::to_owned);
                    let file_id = hosts
                        .iter()
                        .find_map(|h| host_ref(h, "file"))
                        .map(str::to_owned);
                    let item_capacity_bytes = item
                        .virtual_quantity()
                        .and_then(|q| units::to_bytes(&q, item.allocation_units().as_deref()));
                    hw.disks.push(DiskAttachment {
                        instance_id: item.instance_id().unwrap_or_default(),
                        name: item.element_name(),
                        disk_id,
                        file_id,
                        controller: controller_of(item),
                        parent: item.parent(),
                        address_on_parent: unit(item),
                        item_capacity_bytes,
                    });
                }
                rt::CD_DRIVE | rt::DVD_DRIVE | rt::FLOPPY => {
                    hw.drives.push(Drive {
                        instance_id: item.instance_id().unwrap_or_default(),
                        kind: match t {
                            rt::CD_DRIVE => DriveKind::Cd,
                            rt::DVD_DRIVE => DriveKind::Dvd,
                            _ => DriveKind::Floppy,
                        },
                        controller: controller_of(item),
                        address_on_parent: unit(item),
                        host_resource: item.host_resources().into_iter().next(),
                    });
                }
                rt::ETHERNET => {
                    hw.nics.push(Nic {
                        instance_id: item.instance_id().unwrap_or_default(),
                        name: item.element_name(),
                        adapter: item.resource_sub_type().map(|s| s.to_ascii_lowercase()),
                        network: item.connections().into_iter().next(),
                        mac: item.address().as_deref().and_then(normalize_mac),
                    });
                }
                _ => {}
            }
        }
        hw.cpus = cpus;
        for (k, v) in section.vmw_configs() {
            match k {
                "firmware" => hw.firmware = firmware_from_vmw(v),
                "bootOptions.efiSecureBootEnabled" | "uefi.secureBoot.enabled" => {
                    hw.secure_boot = Some(v.trim() == "true");
                }
                _ => {}
            }
        }
        if hw.firmware == Firmware::Unknown {
            self.vendor_firmware(&mut hw);
        }
        hw
    }

    fn vendor_firmware(&self, hw: &mut Hardware) {
        if let Some(m) = self
            .other_sections()
            .find(|e| e.name == "Machine" && e.namespace.as_deref() == Some(ns::VBOX))
        {
            let (fw, sb) = vbox_firmware(m);
            hw.firmware = fw;
            if hw.secure_boot.is_none() {
                hw.secure_boot = sb;
            }
        }
    }

    /// The value of ProductSection property `key` for `configuration`.
    pub fn property_value(&self, key: &str, configuration: Option<&str>) -> Option<&str> {
        self.products()
            .flat_map(ProductSection::properties)
            .find(|p| p.key == key)
            .and_then(|p| p.value_for(configuration))
    }

    /// This virtual system as a core [`VmInfo`], for the envelope's default
    /// deployment configuration. See [`VirtualSystem::to_vm_info_for`].
    pub fn to_vm_info(&self, envelope: &Envelope) -> Result<VmInfo> {
        self.to_vm_info_for(envelope, envelope.default_configuration())
    }

    /// This virtual system as a core [`VmInfo`] for `configuration`.
    ///
    /// Disks are the disk items in item order; each maps to a
    /// [`DiskInfo`] with `id` = the OVF disk id, `capacity_bytes` (a
    /// `${property}` capacity is resolved from the ProductSection),
    /// `allocated_bytes` = `ovf:populatedSize`, `format` from the format
    /// URI, `backing` = the href of the disk's File (`None` for a blank
    /// disk) and the controller. The guest OS id is `vmw:osType` (or
    /// VirtualBox's OS type); the family falls back to the CIM OS id.
    /// Annotations: `ovf.virtual_system_type`, `ovf.os_cim_id`,
    /// `ovf.configuration`, `ovf.annotation`, and
    /// `ovf.disk.<id>.capacity` for a capacity that could not be resolved
    /// (the disk's `capacity_bytes` is then 0).
    ///
    /// Fails when a disk item names a disk or file the descriptor does
    /// not have.
    pub fn to_vm_info_for(
        &self,
        envelope: &Envelope,
        configuration: Option<&str>,
    ) -> Result<VmInfo> {
        let hw = self.hardware(configuration);
        let mut vm = VmInfo::new(
            self.id.clone(),
            self.name.clone().unwrap_or_else(|| self.id.clone()),
        );
        vm.cpus = hw.cpus.unwrap_or(0);
        vm.memory_mib = hw.memory_bytes.map_or(0, |b| b.div_ceil(1 << 20));
        vm.firmware = hw.firmware;
        vm.secure_boot = hw.secure_boot;
        if let Some(os) = self.operating_system() {
            let mut g = match os.os_type() {
                Some(t) => GuestOs::from_id(t),
                None => GuestOs::default(),
            };
            if g.id.is_none()
                && let Some(fam) = os.cim_id().map(cim_os_family)
                && fam != OsFamily::Unknown
            {
                g.family = fam;
            }
            g.description = os
                .description
                .as_ref()
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty());
            vm.guest_os = g;
            if let Some(id) = &os.id {
                vm.annotations.insert("ovf.os_cim_id".into(), id.clone());
            }
        }
        if !hw.virtual_system_types.is_empty() {
            vm.annotations.insert(
                "ovf.virtual_system_type".into(),
                hw.virtual_system_types.join(" "),
            );
        }
        if let Some(c) = configuration {
            vm.annotations
                .insert("ovf.configuration".into(), c.to_owned());
        }
        if let Some(a) = self.annotation() {
            vm.annotations.insert("ovf.annotation".into(), a.to_owned());
        }
        for att in &hw.disks {
            let disk = match &att.disk_id {
                None => ovirt_disk(envelope, self, att, configuration),
                Some(id) => Some(envelope.disk(id).ok_or_else(|| {
                    Error::invalid_data(
                        super::xml::OBJECT,
                        format!(
                            "virtual system '{}': item {} refers to disk '{id}' which the DiskSection does not have",
                            self.id, att.instance_id
                        ),
                    )
                })?),
            };
            let file_id = disk
                .and_then(|d| d.file_ref.clone())
                .or_else(|| att.file_id.clone());
            let file = match &file_id {
                // oVirt's fileRef names the File's href, not its id.
                Some(f) => Some(
                    envelope
                        .file(f)
                        .or_else(|| envelope.references.iter().find(|r| r.href == *f))
                        .ok_or_else(|| {
                    Error::invalid_data(
                        super::xml::OBJECT,
                        format!(
                            "virtual system '{}': disk item {} refers to file '{f}' which References does not have",
                            self.id, att.instance_id
                        ),
                    )
                })?,
                ),
                None => None,
            };
            let id = att
                .disk_id
                .clone()
                .or_else(|| disk.map(|d| d.disk_id.clone()))
                .or_else(|| att.file_id.clone())
                .unwrap_or_else(|| att.instance_id.clone());
            let capacity = match disk {
                Some(d) => d.capacity_bytes().or_else(|| {
                    let key = d.capacity_property()?;
                    let v = self.property_value(key, configuration)?;
                    units::to_bytes(v, d.capacity_allocation_units.as_deref())
                }),
                None => att.item_capacity_bytes,
            };
            let mut info = DiskInfo::new(id.clone(), capacity.unwrap_or(0));
            if capacity.is_none()
                && let Some(raw) = disk.and_then(|d| d.capacity.clone())
            {
                vm.annotations
                    .insert(format!("ovf.disk.{id}.capacity"), raw);
            }
            info.name = att.name.clone();
            info.allocated_bytes = disk.and_then(|d| d.populated_size);
            info.format = disk
                .and_then(|d| d.format.as_deref())
                .map_or(DiskFormat::Unknown, disk_format_from_uri);
            info.backing = file.map(|f| f.href.clone());
            info.controller =
                att.controller
                    .and_then(|i| hw.controllers.get(i))
                    .map(|c| DiskController {
                        kind: c.kind,
                        model: c.model.clone(),
                        bus: c.bus,
                        unit: att.address_on_parent.unwrap_or(0),
                    });
            vm.disks.push(info);
        }
        for n in &hw.nics {
            vm.nics.push(NicInfo {
                id: Some(n.instance_id.clone()).filter(|s| !s.is_empty()),
                mac: n.mac.clone(),
                network: n.network.clone(),
                adapter: n.adapter.clone(),
            });
        }
        Ok(vm)
    }
}

/// The items that apply to `configuration`: unmarked items, and items
/// marked for it, which replace an unmarked item with the same InstanceID
/// (DSP0243 9.8).
fn applicable_items<'a>(
    section: &'a VirtualHardwareSection,
    configuration: Option<&str>,
) -> Vec<&'a Item> {
    let marked: Vec<String> = section
        .items
        .iter()
        .filter(|i| !i.configurations().is_empty() && i.applies_to(configuration))
        .filter_map(Item::instance_id)
        .collect();
    section
        .items
        .iter()
        .filter(|i| i.applies_to(configuration))
        .filter(|i| {
            !i.configurations().is_empty() || i.instance_id().is_none_or(|id| !marked.contains(&id))
        })
        .collect()
}

/// oVirt's disk items name the disk by `HostResource` =
/// `<image group>/<image>` (the Disk's `ovf:fileRef`) and `InstanceId` =
/// the disk id, not by `ovf:/disk/<id>`.
fn ovirt_disk<'e>(
    envelope: &'e Envelope,
    vs: &VirtualSystem,
    att: &DiskAttachment,
    configuration: Option<&str>,
) -> Option<&'e VirtualDisk> {
    let hw = vs.hardware_sections().next()?;
    let item = applicable_items(hw, configuration)
        .into_iter()
        .find(|i| i.instance_id().as_deref() == Some(att.instance_id.as_str()))?;
    let hosts = item.host_resources();
    envelope.disks().find(|d| {
        hosts
            .iter()
            .any(|h| d.file_ref.as_deref() == Some(h.as_str()))
            || (hosts.is_empty() && d.disk_id == att.instance_id)
    })
}

/// The core [`DiskFormat`] for an OVF disk format URI.
///
/// ```
/// use hypersdk_core::model::DiskFormat;
/// use hypersdk_ova::ovf::disk_format_from_uri;
/// assert_eq!(
///     disk_format_from_uri("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"),
///     DiskFormat::VmdkStreamOptimized
/// );
/// assert_eq!(disk_format_from_uri("http://www.vmware.com/specifications/vmdk.html#sparse"), DiskFormat::VmdkMonolithicSparse);
/// ```
pub fn disk_format_from_uri(uri: &str) -> DiskFormat {
    let l = uri.trim().to_ascii_lowercase();
    let frag = l.rsplit('#').next().unwrap_or("");
    if l.contains("vmdk") {
        match frag {
            "streamoptimized" => DiskFormat::VmdkStreamOptimized,
            "sparse" | "monolithicsparse" => DiskFormat::VmdkMonolithicSparse,
            "flat" | "monolithicflat" => DiskFormat::VmdkFlat,
            _ => DiskFormat::Unknown,
        }
    } else if l.ends_with("/wiki/byte") || l.contains("#raw") {
        DiskFormat::Raw
    } else if l.contains("vhdx") {
        DiskFormat::Vhdx
    } else if l.contains("vhd") {
        DiskFormat::Vhd
    } else if l.contains("qcow") {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Unknown
    }
}

/// The OVF format URI for a core [`DiskFormat`] (streamOptimized for
/// unknown formats, as OVAs carry).
pub fn disk_format_uri(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::VmdkMonolithicSparse => ns::FORMAT_VMDK_SPARSE,
        DiskFormat::Raw => ns::FORMAT_RAW,
        DiskFormat::Vhd => ns::FORMAT_VHD,
        DiskFormat::Qcow2 => ns::FORMAT_QCOW2,
        _ => ns::FORMAT_VMDK_STREAM,
    }
}

/// The OS family of a CIM_OperatingSystem OSType number (the
/// OperatingSystemSection `ovf:id`).
pub fn cim_os_family(id: u32) -> OsFamily {
    match id {
        0 => OsFamily::Unknown,
        15..=19 | 58 | 63 | 67 | 69..=77 | 103 | 105 | 111 | 113..=117 => OsFamily::Windows,
        36 | 79 | 80 | 82..=85 | 87 | 89..=101 | 106..=109 | 126 => OsFamily::Linux,
        41..=43 | 65 | 78 => OsFamily::Bsd,
        29 | 30 | 81 => OsFamily::Solaris,
        _ => OsFamily::Other,
    }
}

/// A CIM OSType number for a guest OS, as the writer puts in `ovf:id`.
pub(crate) fn cim_os_id(os: &GuestOs) -> u32 {
    let id = os.id.as_deref().unwrap_or("").to_ascii_lowercase();
    let bits64 = id.contains("64");
    match os.family {
        OsFamily::Windows => 18,
        OsFamily::Linux => {
            if id.starts_with("ubuntu") {
                if bits64 { 94 } else { 93 }
            } else if id.starts_with("debian") {
                if bits64 { 96 } else { 95 }
            } else if id.starts_with("rhel") {
                if bits64 { 80 } else { 79 }
            } else if id.starts_with("centos") {
                if bits64 { 107 } else { 106 }
            } else if bits64 {
                101
            } else {
                36
            }
        }
        OsFamily::Bsd => 42,
        OsFamily::Solaris => {
            if bits64 {
                81
            } else {
                29
            }
        }
        OsFamily::Unknown => 0,
        _ => {
            if bits64 {
                102
            } else {
                1
            }
        }
    }
}
