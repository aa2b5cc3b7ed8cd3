//! OVF descriptors: a typed model of DMTF DSP0243 (OVF 0.9, 1.x and 2.x),
//! a hardened parser, a writer that re-emits what it read, and a builder
//! that writes a new descriptor for a [`VmInfo`](hypersdk_core::model::VmInfo).
//!
//! # Reading
//! [`Envelope::parse`] reads a descriptor with quick-xml, matching
//! namespaces by URI, never by prefix. It accepts OVF 0.9 (VMware's
//! envelope namespace and `<Section xsi:type="ovf:DiskSection_Type">`), 1.x
//! and 2.x (`StorageItem`, `EthernetPortItem`), namespace URIs with a
//! trailing slash, and documents whose OVF elements are in no namespace
//! (oVirt). Unknown sections and vendor extensions (`vmw:*`,
//! `vbox:Machine`, oVirt elements, …) are kept as [`XmlElement`]s and
//! written back by [`Envelope::to_xml`]; `${property}` capacities are kept
//! as written.
//!
//! The parser is safe on hostile input: a DOCTYPE is rejected (so there is
//! no entity expansion), size and nesting depth are limited
//! ([`ParseOptions`]), and every error says where it happened
//! (`line L, column C`).
//!
//! ```
//! use hypersdk_ova::ovf::Envelope;
//!
//! let xml = r#"<?xml version="1.0"?>
//! <Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
//!           xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
//!           xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
//!   <References><File ovf:id="file1" ovf:href="disk1.vmdk" ovf:size="1024"/></References>
//!   <DiskSection><Info>Disks</Info>
//!     <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="8"
//!           ovf:capacityAllocationUnits="byte * 2^30"/>
//!   </DiskSection>
//!   <VirtualSystem ovf:id="vm1"><Info>A VM</Info>
//!     <VirtualHardwareSection><Info>Hardware</Info>
//!       <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
//!             <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
//!       <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
//!             <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
//!     </VirtualHardwareSection>
//!   </VirtualSystem>
//! </Envelope>"#;
//! let env = Envelope::parse(xml.as_bytes())?;
//! assert_eq!(env.references()[0].href, "disk1.vmdk");
//! assert_eq!(env.disk("vmdisk1").and_then(|d| d.capacity_bytes()), Some(8 << 30));
//! let vm = env.virtual_systems()[0].to_vm_info(&env)?;
//! assert_eq!(vm.cpus, 2);
//! assert_eq!(vm.disks[0].backing.as_deref(), Some("disk1.vmdk"));
//!
//! // Writing back and reading again gives the same model.
//! assert_eq!(Envelope::parse(env.to_xml().as_bytes())?, env);
//!
//! // Hostile input is refused, with a position.
//! let err = Envelope::parse(b"<!DOCTYPE x [<!ENTITY a \"b\">]><x/>").unwrap_err();
//! assert!(err.to_string().contains("line 1, column 1"));
//! # Ok::<(), hypersdk_core::Error>(())
//! ```
//!
//! # Writing
//! [`DescriptorBuilder`] (or [`write_descriptor`]) writes the OVF 1.0
//! descriptor ovftool would write for an ESXi export of a
//! [`VmInfo`](hypersdk_core::model::VmInfo) whose disks are in the given
//! files; parsing it gives the same VM facts back.

mod build;
mod hardware;
mod model;
mod parse;
pub mod units;
mod write;
mod xml;

pub use build::{DescriptorBuilder, OvfDisk, write_descriptor};
pub use hardware::{
    Controller, DiskAttachment, Drive, DriveKind, Hardware, Nic, cim_os_family,
    disk_format_from_uri, disk_format_uri, normalize_mac,
};
pub use model::{
    AnnotationSection, Configuration, Content, DeploymentOptionSection, DiskSection, Envelope,
    FileReference, Item, ItemKind, Network, NetworkSection, OperatingSystemSection, OvfVersion,
    ProductEntry, ProductSection, Property, Section, SectionStyle, VirtualDisk,
    VirtualHardwareSection, VirtualSystem, VirtualSystemCollection, property_reference,
    resource_type,
};
pub use xml::{NamespaceDecl, XmlAttr, XmlElement, XmlNode};

use hypersdk_core::Result;

/// Namespace URIs and format URIs OVF descriptors use.
pub mod ns {
    /// OVF 0.9 envelope (VMware).
    pub const OVF_0_9: &str = "http://www.vmware.com/schema/ovf/1/envelope";
    /// OVF 1.x envelope.
    pub const OVF_1: &str = "http://schemas.dmtf.org/ovf/envelope/1";
    /// OVF 2.x envelope.
    pub const OVF_2: &str = "http://schemas.dmtf.org/ovf/envelope/2";
    /// CIM ResourceAllocationSettingData (`rasd:`).
    pub const RASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    /// CIM VirtualSystemSettingData (`vssd:`).
    pub const VSSD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
    /// CIM StorageAllocationSettingData (`sasd:`, OVF 2).
    pub const SASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData";
    /// CIM EthernetPortAllocationSettingData (`epasd:`, OVF 2).
    pub const EPASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData";
    /// CIM common types (`cim:`).
    pub const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
    /// VMware extensions (`vmw:`).
    pub const VMW: &str = "http://www.vmware.com/schema/ovf";
    /// VirtualBox machine section (`vbox:`).
    pub const VBOX: &str = "http://www.virtualbox.org/ovf/machine";
    /// XML Schema instance (`xsi:`).
    pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

    /// Disk format: VMDK streamOptimized.
    pub const FORMAT_VMDK_STREAM: &str =
        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
    /// Disk format: VMDK sparse (OVF 0.9, VirtualBox 2.x/3.x).
    pub const FORMAT_VMDK_SPARSE: &str = "http://www.vmware.com/specifications/vmdk.html#sparse";
    /// Disk format: raw image (oVirt, virt-v2v).
    pub const FORMAT_RAW: &str = "http://en.wikipedia.org/wiki/Byte";
    /// Disk format: VHD.
    pub const FORMAT_VHD: &str =
        "http://www.microsoft.com/technet/virtualserver/downloads/vhdspec.mspx";
    /// Disk format: qcow2.
    pub const FORMAT_QCOW2: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";

    /// Whether `uri` is an OVF envelope namespace (any version, trailing
    /// slash allowed).
    pub fn is_ovf(uri: &str) -> bool {
        super::OvfVersion::from_namespace(uri).is_some()
    }
}

/// Limits for [`Envelope::parse_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseOptions {
    /// Largest descriptor accepted, in bytes (default 16 MiB; the largest
    /// real descriptor in the test corpus is under 64 KiB).
    pub max_bytes: usize,
    /// Deepest element nesting accepted (default 64; real descriptors nest
    /// about 10 deep, VirtualBox's machine section a few more).
    pub max_depth: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_bytes: 16 << 20,
            max_depth: 64,
        }
    }
}

impl ParseOptions {
    /// Sets [`ParseOptions::max_bytes`].
    #[must_use]
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`ParseOptions::max_depth`].
    #[must_use]
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }
}

impl Envelope {
    /// Parses a descriptor with the default [`ParseOptions`].
    ///
    /// Errors are [`hypersdk_core::Error::InvalidData`] naming the line and
    /// column and what is wrong.
    pub fn parse(xml: &[u8]) -> Result<Envelope> {
        Self::parse_with(xml, &ParseOptions::default())
    }

    /// Parses a descriptor with explicit limits.
    pub fn parse_with(xml: &[u8], options: &ParseOptions) -> Result<Envelope> {
        parse::parse_envelope(xml, options)
    }

    /// The descriptor as XML: typed parts in canonical form, kept raw parts
    /// as read. Parsing the result gives an equal [`Envelope`].
    pub fn to_xml(&self) -> String {
        write::write_envelope(self, None)
    }
}
