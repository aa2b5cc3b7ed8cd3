//! Writing a new descriptor for a [`VmInfo`], in the shape ovftool gives
//! ESXi exports.

use hypersdk_core::model::{ControllerKind, DiskFormat, Firmware, VmInfo};
use hypersdk_core::{Error, Result};

use super::hardware::{cim_os_id, disk_format_uri};
use super::model::*;
use super::ns;
use super::units::capacity_units;
use super::xml::{NamespaceDecl, XmlAttr, XmlElement};

/// One disk file of a descriptor being written: the file in the package and
/// what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OvfDisk {
    /// The file's name in the package (`web01-disk1.vmdk`).
    pub href: String,
    /// The file's size in bytes, when known (`ovf:size`).
    pub size: Option<u64>,
    /// The virtual capacity; `None` takes the VM disk's `capacity_bytes`.
    pub capacity_bytes: Option<u64>,
    /// The file format; `None` is streamOptimized VMDK.
    pub format: Option<DiskFormat>,
    /// Bytes of data in the disk (`ovf:populatedSize`), when known.
    pub populated_size: Option<u64>,
}

impl OvfDisk {
    /// A streamOptimized disk file named `href`.
    pub fn new(href: impl Into<String>) -> Self {
        OvfDisk {
            href: href.into(),
            size: None,
            capacity_bytes: None,
            format: None,
            populated_size: None,
        }
    }

    /// Sets the file size.
    #[must_use]
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// Sets the capacity.
    #[must_use]
    pub fn with_capacity(mut self, capacity_bytes: u64) -> Self {
        self.capacity_bytes = Some(capacity_bytes);
        self
    }

    /// Sets the format.
    #[must_use]
    pub fn with_format(mut self, format: DiskFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Sets the populated size.
    #[must_use]
    pub fn with_populated_size(mut self, populated: u64) -> Self {
        self.populated_size = Some(populated);
        self
    }
}

/// Builds an OVF 1.0 descriptor for a VM, as ovftool writes for ESXi.
///
/// `vm.disks[i]` is stored in `disks[i]`; the counts must match. The
/// descriptor has References (disks, then extra files such as NVRAM), a
/// DiskSection (capacities in `byte * 2^N` units), a NetworkSection with
/// the NICs' networks, and one VirtualSystem with an OperatingSystemSection
/// (`vmw:osType` = the guest id) and a `vmx-NN` VirtualHardwareSection: CPU,
/// memory, the disk controllers (SCSI, SATA, IDE, NVMe), disks with
/// Parent/AddressOnParent, NICs with Connection, ResourceSubType and MAC,
/// and `vmw:Config` for firmware and secure boot.
///
/// ```
/// use hypersdk_core::model::{DiskInfo, Firmware, VmInfo};
/// use hypersdk_ova::ovf::{DescriptorBuilder, Envelope, OvfDisk};
///
/// let mut vm = VmInfo::new("vm-1", "web01");
/// vm.cpus = 2;
/// vm.memory_mib = 4096;
/// vm.firmware = Firmware::Uefi;
/// vm.disks.push(DiskInfo::new("2000", 16 << 30));
/// let xml = DescriptorBuilder::new(&vm)
///     .disks(vec![OvfDisk::new("web01-disk1.vmdk").with_size(1234)])
///     .to_xml()?;
/// let env = Envelope::parse(xml.as_bytes())?;
/// let back = env.virtual_systems()[0].to_vm_info(&env)?;
/// assert_eq!((back.name.as_str(), back.cpus, back.memory_mib), ("web01", 2, 4096));
/// assert_eq!(back.disks[0].capacity_bytes, 16 << 30);
/// assert_eq!(back.disks[0].backing.as_deref(), Some("web01-disk1.vmdk"));
/// assert_eq!(back.firmware, Firmware::Uefi);
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DescriptorBuilder<'a> {
    vm: &'a VmInfo,
    disks: Vec<OvfDisk>,
    extra_files: Vec<FileReference>,
    nvram: Option<String>,
    system_type: Option<String>,
    comment: Option<String>,
}

/// Writes an OVF 1.0 descriptor for `vm` whose disks are stored in `disks`
/// (same order). Shorthand for [`DescriptorBuilder`].
pub fn write_descriptor(vm: &VmInfo, disks: &[OvfDisk]) -> Result<String> {
    DescriptorBuilder::new(vm).disks(disks.to_vec()).to_xml()
}

fn check_chars(what: &str, s: &str) -> Result<()> {
    let bad = s.chars().find(|&c| {
        matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
    });
    match bad {
        Some(c) => Err(Error::invalid_input(format!(
            "{what} contains U+{:04X}, which XML 1.0 cannot carry",
            c as u32
        ))),
        None => Ok(()),
    }
}

fn rasd(item: &mut Item, name: &str, value: impl Into<String>) {
    item.push(name, value);
}

fn vmw_config(element: &str, key: &str, value: &str) -> XmlElement {
    XmlElement::new(Some(ns::VMW), Some("vmw"), element)
        .with_attr(XmlAttr::new(
            Some(ns::OVF_1),
            Some("ovf"),
            "required",
            "false",
        ))
        .with_attr(XmlAttr::new(Some(ns::VMW), Some("vmw"), "key", key))
        .with_attr(XmlAttr::new(Some(ns::VMW), Some("vmw"), "value", value))
}

fn nic_sub_type(adapter: &str) -> String {
    match adapter.to_ascii_lowercase().as_str() {
        "vmxnet3" => "VmxNet3".into(),
        "vmxnet2" => "VmxNet2".into(),
        "vmxnet" => "VmxNet".into(),
        "e1000" => "E1000".into(),
        "e1000e" => "E1000e".into(),
        "pcnet32" => "PCNet32".into(),
        _ => adapter.to_owned(),
    }
}

impl<'a> DescriptorBuilder<'a> {
    /// A builder for `vm`, with no disk files yet.
    pub fn new(vm: &'a VmInfo) -> Self {
        DescriptorBuilder {
            vm,
            disks: Vec::new(),
            extra_files: Vec::new(),
            nvram: None,
            system_type: None,
            comment: Some("Generated by hypersdk".to_owned()),
        }
    }

    /// The disk files, one per `vm.disks` entry, in the same order.
    #[must_use]
    pub fn disks(mut self, disks: Vec<OvfDisk>) -> Self {
        self.disks = disks;
        self
    }

    /// Adds a non-disk file to References (an ISO, a certificate, …).
    #[must_use]
    pub fn file(mut self, file: FileReference) -> Self {
        self.extra_files.push(file);
        self
    }

    /// Adds the VM's NVRAM file (UEFI variables) as File `nvram` and points
    /// `vmw:ExtraConfig nvram` at it, as vCenter exports do.
    #[must_use]
    pub fn nvram(mut self, href: impl Into<String>, size: Option<u64>) -> Self {
        let mut f = FileReference::new("nvram", href);
        f.size = size;
        self.extra_files.push(f);
        self.nvram = Some("nvram".to_owned());
        self
    }

    /// The `vssd:VirtualSystemType` (default: the VM's
    /// `hardware_version` annotation when it looks like `vmx-NN`, else
    /// `vmx-14`).
    #[must_use]
    pub fn virtual_system_type(mut self, t: impl Into<String>) -> Self {
        self.system_type = Some(t.into());
        self
    }

    /// The comment written after the XML declaration (`None`: none).
    #[must_use]
    pub fn comment(mut self, c: Option<String>) -> Self {
        self.comment = c;
        self
    }

    /// The descriptor as a model.
    pub fn build(&self) -> Result<Envelope> {
        let vm = self.vm;
        if vm.disks.len() != self.disks.len() {
            return Err(Error::invalid_input(format!(
                "VM '{}' has {} disks but {} disk files were given",
                vm.name,
                vm.disks.len(),
                self.disks.len()
            )));
        }
        check_chars("VM name", &vm.name)?;
        let mut env = Envelope {
            version: OvfVersion::V1,
            namespace: ns::OVF_1.to_owned(),
            section_style: SectionStyle::Element,
            namespace_decls: vec![
                NamespaceDecl::new(None, ns::OVF_1),
                NamespaceDecl::new(Some("cim"), ns::CIM),
                NamespaceDecl::new(Some("ovf"), ns::OVF_1),
                NamespaceDecl::new(Some("rasd"), ns::RASD),
                NamespaceDecl::new(Some("vmw"), ns::VMW),
                NamespaceDecl::new(Some("vssd"), ns::VSSD),
                NamespaceDecl::new(Some("xsi"), ns::XSI),
            ],
            attributes: Vec::new(),
            references: Vec::new(),
            sections: Vec::new(),
            content: None,
            trailing: Vec::new(),
        };

        // References and DiskSection.
        let mut disk_section = DiskSection {
            info: Some("Virtual disk information".into()),
            ..DiskSection::default()
        };
        for (i, (d, f)) in vm.disks.iter().zip(&self.disks).enumerate() {
            check_chars("disk file name", &f.href)?;
            if f.href.is_empty() {
                return Err(Error::invalid_input(format!(
                    "disk {i} of VM '{}' has an empty file name",
                    vm.name
                )));
            }
            let file_id = format!("file{}", i + 1);
            let mut fr = FileReference::new(&file_id, &f.href);
            fr.size = f.size;
            env.references.push(fr);
            let (q, units) = capacity_units(f.capacity_bytes.unwrap_or(d.capacity_bytes));
            disk_section.disks.push(VirtualDisk {
                disk_id: format!("vmdisk{}", i + 1),
                capacity: Some(q.to_string()),
                capacity_allocation_units: Some(units.to_owned()),
                populated_size: f.populated_size,
                format: Some(
                    disk_format_uri(f.format.unwrap_or(DiskFormat::VmdkStreamOptimized)).to_owned(),
                ),
                file_ref: Some(file_id),
                ..VirtualDisk::default()
            });
        }
        for f in &self.extra_files {
            check_chars("file name", &f.href)?;
            if env
                .references
                .iter()
                .any(|r| r.id == f.id || r.href == f.href)
            {
                return Err(Error::invalid_input(format!(
                    "file '{}' (id '{}') is listed twice",
                    f.href, f.id
                )));
            }
            env.references.push(f.clone());
        }
        env.sections.push(Section::Disk(disk_section));

        // NetworkSection.
        let mut networks: Vec<String> = Vec::new();
        for n in &vm.nics {
            if let Some(net) = &n.network {
                check_chars("network name", net)?;
                if !networks.contains(net) {
                    networks.push(net.clone());
                }
            }
        }
        if !networks.is_empty() {
            env.sections.push(Section::Network(NetworkSection {
                info: Some("The list of logical networks".into()),
                networks: networks
                    .iter()
                    .map(|n| Network {
                        description: Some(format!("The {n} network")),
                        ..Network::new(n.clone())
                    })
                    .collect(),
                ..NetworkSection::default()
            }));
        }

        // VirtualSystem.
        let mut vs = VirtualSystem {
            id: if vm.name.is_empty() {
                "vm".into()
            } else {
                vm.name.clone()
            },
            info: Some("A virtual machine".into()),
            name: Some(vm.name.clone()),
            ..VirtualSystem::default()
        };
        let mut os = OperatingSystemSection {
            info: Some("The kind of installed guest operating system".into()),
            id: Some(cim_os_id(&vm.guest_os).to_string()),
            description: vm.guest_os.description.clone(),
            ..OperatingSystemSection::default()
        };
        if let Some(id) = &vm.guest_os.id {
            check_chars("guest OS id", id)?;
            os.attributes.push(XmlAttr::new(
                Some(ns::VMW),
                Some("vmw"),
                "osType",
                id.clone(),
            ));
        }
        if let Some(d) = &vm.guest_os.description {
            check_chars("guest OS description", d)?;
        }
        vs.sections.push(Section::OperatingSystem(os));

        let system_type = self.system_type.clone().unwrap_or_else(|| {
            vm.annotations
                .get("hardware_version")
                .filter(|v| v.starts_with("vmx-"))
                .cloned()
                .unwrap_or_else(|| "vmx-14".into())
        });
        check_chars("virtual system type", &system_type)?;
        let vssd =
            |name: &str, v: &str| XmlElement::new(Some(ns::VSSD), Some("vssd"), name).with_text(v);
        let mut hw = VirtualHardwareSection {
            info: Some("Virtual hardware requirements".into()),
            system: Some(vec![
                vssd("ElementName", "Virtual Hardware Family"),
                vssd("InstanceID", "0"),
                vssd("VirtualSystemIdentifier", &vm.name),
                vssd("VirtualSystemType", &system_type),
            ]),
            ..VirtualHardwareSection::default()
        };
        let mut next_id = 1u32;
        let mut new_id = || {
            let id = next_id;
            next_id += 1;
            id.to_string()
        };
        let mut cpu = Item::new(ItemKind::Item);
        rasd(&mut cpu, "AllocationUnits", "hertz * 10^6");
        rasd(&mut cpu, "Description", "Number of Virtual CPUs");
        rasd(
            &mut cpu,
            "ElementName",
            format!("{} virtual CPU(s)", vm.cpus),
        );
        rasd(&mut cpu, "InstanceID", new_id());
        rasd(&mut cpu, "ResourceType", "3");
        rasd(&mut cpu, "VirtualQuantity", vm.cpus.to_string());
        hw.items.push(cpu);
        let mut mem = Item::new(ItemKind::Item);
        rasd(&mut mem, "AllocationUnits", "byte * 2^20");
        rasd(&mut mem, "Description", "Memory Size");
        rasd(
            &mut mem,
            "ElementName",
            format!("{}MB of memory", vm.memory_mib),
        );
        rasd(&mut mem, "InstanceID", new_id());
        rasd(&mut mem, "ResourceType", "4");
        rasd(&mut mem, "VirtualQuantity", vm.memory_mib.to_string());
        hw.items.push(mem);

        // Controllers: one per distinct (kind, model, bus), in disk order.
        // Disks without a controller go on SCSI 0 (lsilogic), units in order
        // skipping 7 (the SCSI HBA's own id).
        type Key = (ControllerKind, Option<String>, u32);
        let mut controllers: Vec<(Key, String)> = Vec::new();
        let mut placements: Vec<(usize, u32)> = Vec::new();
        let mut next_default_unit = 0u32;
        for d in &vm.disks {
            let (key, unit) = match &d.controller {
                Some(c) => {
                    let kind = match c.kind {
                        ControllerKind::Ide
                        | ControllerKind::Sata
                        | ControllerKind::Scsi
                        | ControllerKind::Nvme => c.kind,
                        // ESXi has no virtio; a paravirtual SCSI HBA is the
                        // closest.
                        ControllerKind::Virtio => ControllerKind::Scsi,
                        _ => ControllerKind::Scsi,
                    };
                    let model = match (c.kind, kind) {
                        (ControllerKind::Virtio, _) => Some("pvscsi".to_owned()),
                        (_, ControllerKind::Scsi) => c.model.clone(),
                        _ => None,
                    };
                    ((kind, model, c.bus), c.unit)
                }
                None => {
                    if next_default_unit == 7 {
                        next_default_unit += 1;
                    }
                    let u = next_default_unit;
                    next_default_unit += 1;
                    ((ControllerKind::Scsi, Some("lsilogic".to_owned()), 0), u)
                }
            };
            let idx = match controllers.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let id = new_id();
                    let (kind, model, bus) = &key;
                    let mut c = Item::new(ItemKind::Item);
                    rasd(&mut c, "Address", bus.to_string());
                    let (desc, label, sub, rtype) = match kind {
                        ControllerKind::Ide => ("IDE Controller", format!("IDE {bus}"), None, "5"),
                        ControllerKind::Sata => (
                            "SATA Controller",
                            format!("SATA Controller {bus}"),
                            Some("vmware.sata.ahci".to_owned()),
                            "20",
                        ),
                        ControllerKind::Nvme => (
                            "NVME Controller",
                            format!("NVME Controller {bus}"),
                            Some("vmware.nvme.controller".to_owned()),
                            "20",
                        ),
                        _ => (
                            "SCSI Controller",
                            format!("SCSI Controller {bus}"),
                            Some(match model.as_deref() {
                                Some("pvscsi") => "VirtualSCSI".to_owned(),
                                Some(m) => m.to_owned(),
                                None => "lsilogic".to_owned(),
                            }),
                            "6",
                        ),
                    };
                    rasd(&mut c, "Description", desc);
                    rasd(&mut c, "ElementName", label);
                    rasd(&mut c, "InstanceID", id.clone());
                    if let Some(s) = sub {
                        check_chars("controller model", &s)?;
                        rasd(&mut c, "ResourceSubType", s);
                    }
                    rasd(&mut c, "ResourceType", rtype);
                    hw.items.push(c);
                    controllers.push((key.clone(), id));
                    controllers.len() - 1
                }
            };
            placements.push((idx, unit));
        }
        for (i, (d, (ctrl, unit))) in vm.disks.iter().zip(placements).enumerate() {
            let mut item = Item::new(ItemKind::Item);
            rasd(&mut item, "AddressOnParent", unit.to_string());
            let label = d
                .name
                .clone()
                .unwrap_or_else(|| format!("Hard disk {}", i + 1));
            check_chars("disk name", &label)?;
            rasd(&mut item, "ElementName", label);
            rasd(
                &mut item,
                "HostResource",
                format!("ovf:/disk/vmdisk{}", i + 1),
            );
            rasd(&mut item, "InstanceID", new_id());
            rasd(&mut item, "Parent", controllers[ctrl].1.clone());
            rasd(&mut item, "ResourceType", "17");
            hw.items.push(item);
        }
        for (i, n) in vm.nics.iter().enumerate() {
            let mut item = Item::new(ItemKind::Item);
            if let Some(mac) = &n.mac {
                check_chars("MAC address", mac)?;
                rasd(&mut item, "Address", mac.clone());
            }
            rasd(&mut item, "AddressOnParent", (7 + i).to_string());
            rasd(&mut item, "AutomaticAllocation", "true");
            if let Some(net) = &n.network {
                rasd(&mut item, "Connection", net.clone());
            }
            let sub = n.adapter.as_deref().map(nic_sub_type);
            let desc = match (&sub, &n.network) {
                (Some(s), Some(net)) => format!("{s} ethernet adapter on \"{net}\""),
                (Some(s), None) => format!("{s} ethernet adapter"),
                (None, Some(net)) => format!("Ethernet adapter on \"{net}\""),
                (None, None) => "Ethernet adapter".to_owned(),
            };
            rasd(&mut item, "Description", desc);
            rasd(
                &mut item,
                "ElementName",
                format!("Network adapter {}", i + 1),
            );
            rasd(&mut item, "InstanceID", new_id());
            if let Some(s) = sub {
                check_chars("NIC adapter", &s)?;
                rasd(&mut item, "ResourceSubType", s);
            }
            rasd(&mut item, "ResourceType", "10");
            item.properties
                .push(vmw_config("Config", "wakeOnLanEnabled", "false"));
            hw.items.push(item);
        }
        match vm.firmware {
            Firmware::Uefi => hw.other.push(vmw_config("Config", "firmware", "efi")),
            Firmware::Bios => hw.other.push(vmw_config("Config", "firmware", "bios")),
            Firmware::Unknown => {}
        }
        if let Some(sb) = vm.secure_boot {
            hw.other.push(vmw_config(
                "Config",
                "bootOptions.efiSecureBootEnabled",
                if sb { "true" } else { "false" },
            ));
        }
        if let Some(id) = &self.nvram {
            hw.other.push(vmw_config(
                "ExtraConfig",
                "nvram",
                &format!("ovf:/file/{id}"),
            ));
        }
        vs.sections.push(Section::VirtualHardware(hw));
        env.content = Some(Content::VirtualSystem(vs));
        Ok(env)
    }

    /// The descriptor as XML.
    pub fn to_xml(&self) -> Result<String> {
        let env = self.build()?;
        Ok(super::write::write_envelope(&env, self.comment.as_deref()))
    }
}
