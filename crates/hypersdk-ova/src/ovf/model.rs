//! The typed OVF model.

use super::ns;
use super::units;
use super::xml::{NamespaceDecl, XmlAttr, XmlElement};

/// The OVF dialect of a descriptor, from its envelope namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OvfVersion {
    /// OVF 0.9: VMware's `http://www.vmware.com/schema/ovf/1/envelope`.
    V0_9,
    /// OVF 1.x: `http://schemas.dmtf.org/ovf/envelope/1`.
    V1,
    /// OVF 2.x: `http://schemas.dmtf.org/ovf/envelope/2`.
    V2,
}

impl OvfVersion {
    /// The version for an envelope namespace URI (a trailing `/` is ignored).
    pub fn from_namespace(uri: &str) -> Option<Self> {
        match uri.trim_end_matches('/') {
            ns::OVF_0_9 => Some(OvfVersion::V0_9),
            ns::OVF_1 => Some(OvfVersion::V1),
            ns::OVF_2 => Some(OvfVersion::V2),
            _ => None,
        }
    }

    /// The canonical envelope namespace URI of this version.
    pub fn namespace(self) -> &'static str {
        match self {
            OvfVersion::V0_9 => ns::OVF_0_9,
            OvfVersion::V1 => ns::OVF_1,
            OvfVersion::V2 => ns::OVF_2,
        }
    }
}

/// How sections are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SectionStyle {
    /// `<DiskSection>`, `<VirtualSystem>` (OVF 1.x and 2.x).
    #[default]
    Element,
    /// `<Section xsi:type="ovf:DiskSection_Type">`, `<Content
    /// xsi:type="ovf:VirtualSystem_Type">` (OVF 0.9, oVirt).
    XsiType,
}

/// A parsed OVF descriptor.
///
/// Parse with [`Envelope::parse`]; write back with [`Envelope::to_xml`].
/// What the model does not type (unknown sections, vendor elements and
/// attributes) is kept as [`XmlElement`]s and [`XmlAttr`]s and written back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The dialect.
    pub version: OvfVersion,
    /// The envelope namespace URI exactly as written (a trailing slash kept).
    pub namespace: String,
    /// Whether sections are elements or `xsi:type`d `Section`s.
    pub section_style: SectionStyle,
    /// Namespace declarations on the root element, in document order.
    pub namespace_decls: Vec<NamespaceDecl>,
    /// Other attributes of the root (`ovf:version`, `xml:lang`,
    /// `vmw:buildId`, …).
    pub attributes: Vec<XmlAttr>,
    /// The `References` section: the files of the package, in document order.
    pub references: Vec<FileReference>,
    /// Envelope-level sections, in document order (DiskSection,
    /// NetworkSection, DeploymentOptionSection, unknown ones).
    pub sections: Vec<Section>,
    /// The virtual system or collection; `None` when the descriptor has none.
    pub content: Option<Content>,
    /// Elements after the content (`Strings`, …), kept raw.
    pub trailing: Vec<XmlElement>,
}

impl Envelope {
    /// The files of the package, in document order.
    pub fn references(&self) -> &[FileReference] {
        &self.references
    }

    /// The file with this `ovf:id`.
    pub fn file(&self, id: &str) -> Option<&FileReference> {
        self.references.iter().find(|f| f.id == id)
    }

    /// The `ovf:version` attribute of the root, as written.
    pub fn version_attr(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == "version" && a.namespace.as_deref().is_some_and(ns::is_ovf))
            .map(|a| a.value.as_str())
    }

    /// The envelope's DiskSection, if any.
    pub fn disk_section(&self) -> Option<&DiskSection> {
        self.sections.iter().find_map(|s| match s {
            Section::Disk(d) => Some(d),
            _ => None,
        })
    }

    /// All disks of the DiskSection(s), in document order.
    pub fn disks(&self) -> impl Iterator<Item = &VirtualDisk> {
        self.sections
            .iter()
            .filter_map(|s| match s {
                Section::Disk(d) => Some(d.disks.iter()),
                _ => None,
            })
            .flatten()
    }

    /// The disk with this `ovf:diskId`.
    pub fn disk(&self, disk_id: &str) -> Option<&VirtualDisk> {
        self.disks().find(|d| d.disk_id == disk_id)
    }

    /// All networks of the NetworkSection(s), in document order.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.sections
            .iter()
            .filter_map(|s| match s {
                Section::Network(n) => Some(n.networks.iter()),
                _ => None,
            })
            .flatten()
    }

    /// The deployment configurations, in document order.
    pub fn configurations(&self) -> impl Iterator<Item = &Configuration> {
        self.sections
            .iter()
            .filter_map(|s| match s {
                Section::DeploymentOption(d) => Some(d.configurations.iter()),
                _ => None,
            })
            .flatten()
    }

    /// The id of the default deployment configuration: the one marked
    /// `ovf:default="true"`, else the first; `None` without a
    /// DeploymentOptionSection.
    pub fn default_configuration(&self) -> Option<&str> {
        let mut first = None;
        for c in self.configurations() {
            if c.default {
                return Some(&c.id);
            }
            first.get_or_insert(c.id.as_str());
        }
        first
    }

    /// Every virtual system, depth first in document order, including those
    /// nested in collections.
    pub fn virtual_systems(&self) -> Vec<&VirtualSystem> {
        let mut out = Vec::new();
        if let Some(c) = &self.content {
            c.collect_systems(&mut out);
        }
        out
    }

    /// The virtual system with this `ovf:id`, wherever it is nested.
    pub fn virtual_system(&self, id: &str) -> Option<&VirtualSystem> {
        self.virtual_systems().into_iter().find(|v| v.id == id)
    }
}

/// One `File` of the `References` section.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct FileReference {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: a name relative to the descriptor, or a URL.
    pub href: String,
    /// `ovf:size` in bytes, when given.
    pub size: Option<u64>,
    /// `ovf:compression` (`gzip`), when given.
    pub compression: Option<String>,
    /// `ovf:chunkSize` in bytes, when the file is split in chunks.
    pub chunk_size: Option<u64>,
    /// Other attributes, kept.
    pub attributes: Vec<XmlAttr>,
    /// Child elements, kept.
    pub other: Vec<XmlElement>,
}

impl FileReference {
    /// A file `id` at `href`.
    pub fn new(id: impl Into<String>, href: impl Into<String>) -> Self {
        FileReference {
            id: id.into(),
            href: href.into(),
            ..FileReference::default()
        }
    }
}

/// A section of an envelope, virtual system or collection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// `DiskSection`.
    Disk(DiskSection),
    /// `NetworkSection`.
    Network(NetworkSection),
    /// `DeploymentOptionSection`.
    DeploymentOption(DeploymentOptionSection),
    /// `OperatingSystemSection`.
    OperatingSystem(OperatingSystemSection),
    /// `VirtualHardwareSection`.
    VirtualHardware(VirtualHardwareSection),
    /// `ProductSection`.
    Product(ProductSection),
    /// `AnnotationSection`.
    Annotation(AnnotationSection),
    /// Any other section or element (EulaSection, StartupSection,
    /// `vmw:*`, `vbox:Machine`, oVirt elements, …), kept raw.
    Other(XmlElement),
}

/// `DiskSection`: the virtual disks of the package.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DiskSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// The disks, in document order.
    pub disks: Vec<VirtualDisk>,
    /// Attributes of the section element, kept.
    pub attributes: Vec<XmlAttr>,
    /// Unknown children, kept.
    pub other: Vec<XmlElement>,
}

/// One `Disk` of the DiskSection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VirtualDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:capacity` as written: a number or a `${property}` reference.
    pub capacity: Option<String>,
    /// `ovf:capacityAllocationUnits` (`byte * 2^30`); absent means bytes.
    pub capacity_allocation_units: Option<String>,
    /// `ovf:populatedSize` in bytes.
    pub populated_size: Option<u64>,
    /// `ovf:format` URI.
    pub format: Option<String>,
    /// `ovf:fileRef`; `None` when absent or empty (a blank disk).
    pub file_ref: Option<String>,
    /// `ovf:parentRef` (delta disks).
    pub parent_ref: Option<String>,
    /// Other attributes, kept (oVirt's `ovf:size`, `vbox:uuid`, …).
    pub attributes: Vec<XmlAttr>,
    /// Child elements, kept.
    pub other: Vec<XmlElement>,
}

impl VirtualDisk {
    /// A disk `disk_id` of `capacity_bytes` bytes.
    pub fn new(disk_id: impl Into<String>, capacity_bytes: u64) -> Self {
        VirtualDisk {
            disk_id: disk_id.into(),
            capacity: Some(capacity_bytes.to_string()),
            ..VirtualDisk::default()
        }
    }

    /// The capacity in bytes: `ovf:capacity` times its allocation units.
    ///
    /// `None` when the capacity is a `${property}` reference (see
    /// [`VirtualDisk::capacity_property`]), absent, or not understood. A
    /// disk without `ovf:capacity` but with oVirt's `ovf:size` (GiB) gets
    /// that size.
    pub fn capacity_bytes(&self) -> Option<u64> {
        match &self.capacity {
            Some(c) => units::to_bytes(c, self.capacity_allocation_units.as_deref()),
            None => self.ovirt_size_gib().and_then(|g| g.checked_mul(1 << 30)),
        }
    }

    /// The property name when the capacity is `${name}`.
    pub fn capacity_property(&self) -> Option<&str> {
        property_reference(self.capacity.as_deref()?)
    }

    /// oVirt's `ovf:size` (virtual size in GiB), when present.
    pub fn ovirt_size_gib(&self) -> Option<u64> {
        self.attributes
            .iter()
            .find(|a| a.name == "size" && a.namespace.as_deref().is_some_and(ns::is_ovf))
            .and_then(|a| a.value.trim().parse().ok())
    }
}

/// The name inside `${name}`, if `value` is exactly such a reference.
pub fn property_reference(value: &str) -> Option<&str> {
    value
        .trim()
        .strip_prefix("${")
        .and_then(|s| s.strip_suffix('}'))
        .filter(|s| !s.is_empty())
}

/// `NetworkSection`: the logical networks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NetworkSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// The networks, in document order.
    pub networks: Vec<Network>,
    /// Attributes of the section element, kept.
    pub attributes: Vec<XmlAttr>,
    /// Unknown children, kept.
    pub other: Vec<XmlElement>,
}

/// One logical `Network`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Network {
    /// `ovf:name`.
    pub name: String,
    /// The `Description` text.
    pub description: Option<String>,
    /// Other attributes, kept.
    pub attributes: Vec<XmlAttr>,
    /// Other children, kept.
    pub other: Vec<XmlElement>,
}

impl Network {
    /// A network named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Network {
            name: name.into(),
            ..Network::default()
        }
    }
}

/// `DeploymentOptionSection`: the named configurations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeploymentOptionSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// The configurations, in document order.
    pub configurations: Vec<Configuration>,
    /// Attributes of the section element, kept.
    pub attributes: Vec<XmlAttr>,
    /// Unknown children, kept.
    pub other: Vec<XmlElement>,
}

/// One deployment `Configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Configuration {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:default="true"`.
    pub default: bool,
    /// The `Label` text.
    pub label: Option<String>,
    /// The `Description` text.
    pub description: Option<String>,
    /// Other attributes, kept.
    pub attributes: Vec<XmlAttr>,
    /// Other children, kept.
    pub other: Vec<XmlElement>,
}

/// The content of an envelope or collection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// One virtual machine.
    VirtualSystem(VirtualSystem),
    /// A group of virtual systems and collections.
    Collection(VirtualSystemCollection),
}

impl Content {
    /// The `ovf:id`.
    pub fn id(&self) -> &str {
        match self {
            Content::VirtualSystem(v) => &v.id,
            Content::Collection(c) => &c.id,
        }
    }

    fn collect_systems<'a>(&'a self, out: &mut Vec<&'a VirtualSystem>) {
        match self {
            Content::VirtualSystem(v) => out.push(v),
            Content::Collection(c) => {
                for x in &c.content {
                    x.collect_systems(out);
                }
            }
        }
    }
}

/// A `VirtualSystem`: one VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VirtualSystem {
    /// `ovf:id`.
    pub id: String,
    /// The `Info` text.
    pub info: Option<String>,
    /// The `Name` text.
    pub name: Option<String>,
    /// Sections and other children, in document order.
    pub sections: Vec<Section>,
    /// Attributes other than `ovf:id`, kept.
    pub attributes: Vec<XmlAttr>,
}

/// A `VirtualSystemCollection`: a vApp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VirtualSystemCollection {
    /// `ovf:id`.
    pub id: String,
    /// The `Info` text.
    pub info: Option<String>,
    /// The `Name` text.
    pub name: Option<String>,
    /// Sections (ProductSection, StartupSection, …), in document order.
    pub sections: Vec<Section>,
    /// Members: virtual systems and nested collections, in document order.
    pub content: Vec<Content>,
    /// Attributes other than `ovf:id`, kept.
    pub attributes: Vec<XmlAttr>,
}

impl VirtualSystemCollection {
    /// The ids of the direct members, in document order.
    pub fn member_ids(&self) -> Vec<&str> {
        self.content.iter().map(Content::id).collect()
    }
}

macro_rules! section_getters {
    ($t:ty) => {
        impl $t {
            /// The first OperatingSystemSection.
            pub fn operating_system(&self) -> Option<&OperatingSystemSection> {
                self.sections.iter().find_map(|s| match s {
                    Section::OperatingSystem(x) => Some(x),
                    _ => None,
                })
            }

            /// The VirtualHardwareSections, in document order.
            pub fn hardware_sections(&self) -> impl Iterator<Item = &VirtualHardwareSection> {
                self.sections.iter().filter_map(|s| match s {
                    Section::VirtualHardware(x) => Some(x),
                    _ => None,
                })
            }

            /// The ProductSections, in document order.
            pub fn products(&self) -> impl Iterator<Item = &ProductSection> {
                self.sections.iter().filter_map(|s| match s {
                    Section::Product(x) => Some(x),
                    _ => None,
                })
            }

            /// The AnnotationSection text.
            pub fn annotation(&self) -> Option<&str> {
                self.sections.iter().find_map(|s| match s {
                    Section::Annotation(x) => x.annotation.as_deref(),
                    _ => None,
                })
            }

            /// Sections and elements kept raw.
            pub fn other_sections(&self) -> impl Iterator<Item = &XmlElement> {
                self.sections.iter().filter_map(|s| match s {
                    Section::Other(x) => Some(x),
                    _ => None,
                })
            }
        }
    };
}

section_getters!(VirtualSystem);
section_getters!(VirtualSystemCollection);

/// `OperatingSystemSection`: the guest OS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OperatingSystemSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// `ovf:id`: a CIM_OperatingSystem OSType number, as written.
    pub id: Option<String>,
    /// `ovf:version`.
    pub os_version: Option<String>,
    /// The `Description` text.
    pub description: Option<String>,
    /// Other attributes, kept (e.g. `vmw:osType`, `ovf:required`).
    pub attributes: Vec<XmlAttr>,
    /// Other children, kept (e.g. `vbox:OSType`).
    pub other: Vec<XmlElement>,
}

impl OperatingSystemSection {
    /// VMware's `vmw:osType` guest id (`ubuntu64Guest`), else VirtualBox's
    /// `vbox:OSType` text (`Ubuntu_64`).
    pub fn os_type(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == "osType")
            .map(|a| a.value.as_str())
            .or_else(|| {
                self.other
                    .iter()
                    .find(|e| e.name == "OSType")
                    .and_then(|e| e.children.iter().find_map(text_of))
            })
    }

    /// The `ovf:id` as a number.
    pub fn cim_id(&self) -> Option<u32> {
        self.id.as_deref()?.trim().parse().ok()
    }
}

fn text_of(n: &super::xml::XmlNode) -> Option<&str> {
    match n {
        super::xml::XmlNode::Text(t) => Some(t.trim()),
        _ => None,
    }
}

/// `ProductSection`: product information and properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProductSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// `ovf:class`.
    pub class: Option<String>,
    /// `ovf:instance`.
    pub instance: Option<String>,
    /// `Product`.
    pub product: Option<String>,
    /// `Vendor`.
    pub vendor: Option<String>,
    /// `Version`.
    pub version: Option<String>,
    /// `FullVersion`.
    pub full_version: Option<String>,
    /// `ProductUrl`.
    pub product_url: Option<String>,
    /// `VendorUrl`.
    pub vendor_url: Option<String>,
    /// `AppUrl`.
    pub app_url: Option<String>,
    /// Categories, properties and other children, in document order.
    pub entries: Vec<ProductEntry>,
    /// Other attributes, kept.
    pub attributes: Vec<XmlAttr>,
}

impl ProductSection {
    /// The properties, in document order.
    pub fn properties(&self) -> impl Iterator<Item = &Property> {
        self.entries.iter().filter_map(|e| match e {
            ProductEntry::Property(p) => Some(p),
            _ => None,
        })
    }
}

/// A child of a ProductSection after the product fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProductEntry {
    /// A `Category` heading.
    Category(String),
    /// A `Property`.
    Property(Property),
    /// Anything else (`Icon`, vendor elements), kept.
    Other(XmlElement),
}

/// A ProductSection `Property`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Property {
    /// `ovf:key`.
    pub key: String,
    /// `ovf:type` (`string`, `int`, `boolean`, …).
    pub type_: Option<String>,
    /// `ovf:value`: the default value.
    pub value: Option<String>,
    /// `ovf:userConfigurable`.
    pub user_configurable: Option<bool>,
    /// `ovf:password`.
    pub password: Option<bool>,
    /// `ovf:qualifiers`.
    pub qualifiers: Option<String>,
    /// The `Label` text.
    pub label: Option<String>,
    /// The `Description` text.
    pub description: Option<String>,
    /// Other attributes, kept (`ovf:configuration`, …).
    pub attributes: Vec<XmlAttr>,
    /// Other children, kept (per-configuration `Value`s, …).
    pub other: Vec<XmlElement>,
}

impl Property {
    /// The value for `configuration`: a `Value` child for that
    /// configuration, else the `ovf:value` default.
    pub fn value_for(&self, configuration: Option<&str>) -> Option<&str> {
        if let Some(cfg) = configuration {
            for v in self.other.iter().filter(|e| e.name == "Value") {
                let matches = v.attributes.iter().any(|a| {
                    a.name == "configuration" && a.value.split_whitespace().any(|c| c == cfg)
                });
                if matches && let Some(x) = v.attributes.iter().find(|a| a.name == "value") {
                    return Some(&x.value);
                }
            }
        }
        self.value.as_deref()
    }

    /// `ovf:configuration`: the configurations this property belongs to
    /// (empty: all).
    pub fn configurations(&self) -> Vec<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == "configuration" && a.namespace.as_deref().is_some_and(ns::is_ovf))
            .map(|a| a.value.split_whitespace().collect())
            .unwrap_or_default()
    }
}

/// `AnnotationSection`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AnnotationSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// The `Annotation` text, as written.
    pub annotation: Option<String>,
    /// Attributes, kept.
    pub attributes: Vec<XmlAttr>,
    /// Other children, kept.
    pub other: Vec<XmlElement>,
}

/// `VirtualHardwareSection`: the virtual hardware of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VirtualHardwareSection {
    /// The `Info` text.
    pub info: Option<String>,
    /// The `System` element's vssd properties, in document order; `None`
    /// without a `System` element.
    pub system: Option<Vec<XmlElement>>,
    /// The items (`Item`, `StorageItem`, `EthernetPortItem`), in document order.
    pub items: Vec<Item>,
    /// Other children (`vmw:Config`, `vmw:ExtraConfig`, …), kept.
    pub other: Vec<XmlElement>,
    /// Attributes of the section (`ovf:transport`, …), kept.
    pub attributes: Vec<XmlAttr>,
}

impl VirtualHardwareSection {
    /// The `vssd:VirtualSystemType` values (space separated in the
    /// document, e.g. `vmx-13 vmx-11`).
    pub fn virtual_system_types(&self) -> Vec<String> {
        self.system
            .iter()
            .flatten()
            .filter(|e| e.name == "VirtualSystemType")
            .flat_map(|e| {
                e.text()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The `vmw:Config` key/value pairs of the section (not of its items).
    pub fn vmw_configs(&self) -> Vec<(&str, &str)> {
        vmw_pairs(&self.other, "Config")
    }

    /// The `vmw:ExtraConfig` key/value pairs.
    pub fn vmw_extra_configs(&self) -> Vec<(&str, &str)> {
        vmw_pairs(&self.other, "ExtraConfig")
    }
}

pub(crate) fn vmw_pairs<'a>(els: &'a [XmlElement], name: &str) -> Vec<(&'a str, &'a str)> {
    els.iter()
        .filter(|e| e.name == name && e.namespace.as_deref() == Some(ns::VMW))
        .filter_map(|e| {
            Some((
                e.attr(Some(ns::VMW), "key")?,
                e.attr(Some(ns::VMW), "value")?,
            ))
        })
        .collect()
}

/// Which element an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ItemKind {
    /// `Item` (CIM_ResourceAllocationSettingData).
    #[default]
    Item,
    /// `StorageItem` (OVF 2, CIM_StorageAllocationSettingData).
    StorageItem,
    /// `EthernetPortItem` (OVF 2, CIM_EthernetPortAllocationSettingData).
    EthernetPortItem,
}

impl ItemKind {
    /// The element name.
    pub fn element_name(self) -> &'static str {
        match self {
            ItemKind::Item => "Item",
            ItemKind::StorageItem => "StorageItem",
            ItemKind::EthernetPortItem => "EthernetPortItem",
        }
    }
}

/// A hardware item: its CIM properties (`rasd:*`, `sasd:*`, `epasd:*`)
/// and vendor children (`vmw:Config`) in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Item {
    /// `Item`, `StorageItem` or `EthernetPortItem`.
    pub kind: ItemKind,
    /// Attributes (`ovf:required`, `ovf:configuration`, `ovf:bound`), kept.
    pub attributes: Vec<XmlAttr>,
    /// Property and vendor elements in document order.
    pub properties: Vec<XmlElement>,
}

/// CIM ResourceType numbers used by OVF hardware items.
pub mod resource_type {
    /// Other (VMware uses it for SATA/NVMe controllers with a sub type).
    pub const OTHER: u32 = 1;
    /// Processor.
    pub const PROCESSOR: u32 = 3;
    /// Memory.
    pub const MEMORY: u32 = 4;
    /// IDE controller.
    pub const IDE_CONTROLLER: u32 = 5;
    /// Parallel SCSI HBA.
    pub const SCSI_CONTROLLER: u32 = 6;
    /// Ethernet adapter.
    pub const ETHERNET: u32 = 10;
    /// Floppy drive.
    pub const FLOPPY: u32 = 14;
    /// CD drive.
    pub const CD_DRIVE: u32 = 15;
    /// DVD drive.
    pub const DVD_DRIVE: u32 = 16;
    /// Disk drive.
    pub const DISK_DRIVE: u32 = 17;
    /// Other storage device (SATA, NVMe controllers).
    pub const OTHER_STORAGE: u32 = 20;
    /// Logical disk.
    pub const LOGICAL_DISK: u32 = 31;
}

impl Item {
    /// An empty item of `kind`.
    pub fn new(kind: ItemKind) -> Self {
        Item {
            kind,
            ..Item::default()
        }
    }

    /// The CIM property namespace of this item kind.
    pub fn cim_namespace(&self) -> &'static str {
        match self.kind {
            ItemKind::Item => ns::RASD,
            ItemKind::StorageItem => ns::SASD,
            ItemKind::EthernetPortItem => ns::EPASD,
        }
    }

    /// Appends a CIM property `name` = `value` in this kind's namespace,
    /// written with the usual prefix (`rasd`, `sasd`, `epasd`).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        let prefix = match self.kind {
            ItemKind::Item => "rasd",
            ItemKind::StorageItem => "sasd",
            ItemKind::EthernetPortItem => "epasd",
        };
        let el = XmlElement::new(Some(self.cim_namespace()), Some(prefix), name).with_text(value);
        self.properties.push(el);
    }

    fn props<'a>(&'a self, names: &'a [&'a str]) -> impl Iterator<Item = &'a XmlElement> + 'a {
        self.properties.iter().filter(move |e| {
            names.iter().any(|n| e.name.eq_ignore_ascii_case(n))
                && e.namespace.as_deref() != Some(ns::VMW)
        })
    }

    /// The trimmed text of the first property with one of these local
    /// names (ASCII case-insensitive, any CIM namespace).
    pub fn property(&self, names: &[&str]) -> Option<String> {
        self.props(names).next().and_then(XmlElement::trimmed_text)
    }

    /// `ResourceType`.
    pub fn resource_type(&self) -> Option<u32> {
        self.property(&["ResourceType"])?.parse().ok()
    }

    /// `ResourceSubType`.
    pub fn resource_sub_type(&self) -> Option<String> {
        self.property(&["ResourceSubType"])
    }

    /// `InstanceID` (OVF 1/2) or `InstanceId` (OVF 0.9).
    pub fn instance_id(&self) -> Option<String> {
        self.property(&["InstanceID"])
    }

    /// `ElementName`, else `Caption` (OVF 0.9, VirtualBox).
    pub fn element_name(&self) -> Option<String> {
        self.property(&["ElementName"])
            .or_else(|| self.property(&["Caption"]))
    }

    /// `Parent`: the InstanceID of the controller.
    pub fn parent(&self) -> Option<String> {
        self.property(&["Parent"])
    }

    /// `Address`.
    pub fn address(&self) -> Option<String> {
        self.property(&["Address"])
    }

    /// `AddressOnParent`.
    pub fn address_on_parent(&self) -> Option<String> {
        self.property(&["AddressOnParent"])
    }

    /// `VirtualQuantity`.
    pub fn virtual_quantity(&self) -> Option<String> {
        self.property(&["VirtualQuantity"])
    }

    /// `AllocationUnits`.
    pub fn allocation_units(&self) -> Option<String> {
        self.property(&["AllocationUnits"])
    }

    /// All `HostResource` values.
    pub fn host_resources(&self) -> Vec<String> {
        self.props(&["HostResource"])
            .filter_map(XmlElement::trimmed_text)
            .collect()
    }

    /// All `Connection` values.
    pub fn connections(&self) -> Vec<String> {
        self.props(&["Connection"])
            .filter_map(XmlElement::trimmed_text)
            .collect()
    }

    /// `ovf:configuration`: the configurations this item belongs to
    /// (empty: all).
    pub fn configurations(&self) -> Vec<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == "configuration" && a.namespace.as_deref().is_some_and(ns::is_ovf))
            .map(|a| a.value.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// `ovf:required` (default true).
    pub fn required(&self) -> bool {
        self.attributes
            .iter()
            .find(|a| a.name == "required" && a.namespace.as_deref().is_some_and(ns::is_ovf))
            .is_none_or(|a| a.value.trim() != "false")
    }

    /// The item's `vmw:Config` key/value pairs.
    pub fn vmw_configs(&self) -> Vec<(&str, &str)> {
        vmw_pairs(&self.properties, "Config")
    }

    /// Whether the item applies to `configuration` (items without
    /// `ovf:configuration` apply to all).
    pub fn applies_to(&self, configuration: Option<&str>) -> bool {
        let cfgs = self.configurations();
        cfgs.is_empty() || configuration.is_some_and(|c| cfgs.contains(&c))
    }
}
