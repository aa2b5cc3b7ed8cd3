//! From the XML tree to the typed model.

use hypersdk_core::{Error, Result};

use super::ParseOptions;
use super::model::*;
use super::ns;
use super::xml::{NamespaceDecl, OBJECT, PElement, XmlAttr, XmlElement, read_tree};

struct Ctx<'a> {
    scope: &'a [NamespaceDecl],
    style: SectionStyle,
}

fn is_ovf_el(el: &PElement) -> bool {
    el.namespace.as_deref().is_none_or(ns::is_ovf)
}

fn is_ovf_attr(a: &XmlAttr) -> bool {
    a.namespace.as_deref().is_none_or(ns::is_ovf)
}

fn is_xsi_type(a: &XmlAttr) -> bool {
    a.name == "type" && a.namespace.as_deref() == Some(ns::XSI)
}

impl Ctx<'_> {
    /// The OVF name of a child: its local name, or for `Section`/`Content`
    /// with `xsi:type="ovf:Foo_Type"` the name `Foo`. `None` for elements
    /// outside the OVF namespace.
    fn effective_name(&mut self, el: &PElement) -> Option<String> {
        if !is_ovf_el(el) {
            return None;
        }
        if (el.name == "Section" || el.name == "Content")
            && let Some(t) = el.attrs.iter().find(|a| is_xsi_type(a))
        {
            self.style = SectionStyle::XsiType;
            let local = t.value.rsplit(':').next().unwrap_or(&t.value);
            return Some(local.strip_suffix("_Type").unwrap_or(local).to_owned());
        }
        Some(el.name.clone())
    }

    fn raw(&self, el: &PElement) -> XmlElement {
        el.to_raw(self.scope)
    }
}

/// Splits `el`'s attributes into the OVF attributes named in `known` (in
/// that order) and the rest; `xsi:type` of a typed `Section` is dropped
/// (the writer regenerates it).
fn split_attrs<'a>(el: &'a PElement, known: &[&str]) -> (Vec<Option<&'a str>>, Vec<XmlAttr>) {
    let mut slots = vec![None; known.len()];
    let mut rest = Vec::new();
    let typed_section = el.name == "Section" || el.name == "Content";
    for a in &el.attrs {
        if typed_section && is_xsi_type(a) {
            continue;
        }
        if is_ovf_attr(a)
            && let Some(i) = known.iter().position(|k| *k == a.name)
            && slots[i].is_none()
        {
            slots[i] = Some(a.value.as_str());
            continue;
        }
        rest.push(a.clone());
    }
    (slots, rest)
}

fn parse_u64(el: &PElement, attr: &str, v: Option<&str>) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(s) => s.trim().parse::<u64>().map(Some).map_err(|_| {
            Error::invalid_data(
                OBJECT,
                format!(
                    "{}: ovf:{attr}=\"{s}\" on <{}> is not a byte count",
                    el.pos, el.name
                ),
            )
        }),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Puts back an attribute that was taken as known but did not parse.
fn keep_unparsed(rest: &mut Vec<XmlAttr>, el: &PElement, name: &str) {
    if let Some(a) = el.attrs.iter().find(|a| a.name == name && is_ovf_attr(a)) {
        rest.push(a.clone());
    }
}

pub(crate) fn parse_envelope(xml: &[u8], opts: &ParseOptions) -> Result<Envelope> {
    let root = read_tree(xml, opts)?;
    let root_ns = root.namespace.clone().unwrap_or_default();
    let version = OvfVersion::from_namespace(&root_ns);
    let version = match (root.name.as_str(), version) {
        ("Envelope", Some(v)) => v,
        _ => {
            return Err(Error::invalid_data(
                OBJECT,
                format!(
                    "{}: not an OVF envelope: root element is {}",
                    root.pos,
                    root.qualified()
                ),
            ));
        }
    };
    let mut ctx = Ctx {
        scope: &root.decls,
        style: SectionStyle::Element,
    };
    let mut env = Envelope {
        version,
        namespace: root_ns,
        section_style: SectionStyle::Element,
        namespace_decls: root.decls.clone(),
        attributes: root.attrs.clone(),
        references: Vec::new(),
        sections: Vec::new(),
        content: None,
        trailing: Vec::new(),
    };
    for child in root.elements() {
        if env.content.is_some() {
            env.trailing.push(ctx.raw(child));
            continue;
        }
        match ctx.effective_name(child).as_deref() {
            Some("References") => {
                for f in child.elements() {
                    if is_ovf_el(f) && f.name == "File" {
                        env.references.push(parse_file(&ctx, f)?);
                    } else {
                        return Err(Error::invalid_data(
                            OBJECT,
                            format!(
                                "{}: unexpected element {} in References",
                                f.pos,
                                f.qualified()
                            ),
                        ));
                    }
                }
            }
            Some("VirtualSystem") | Some("VirtualSystemCollection") => {
                env.content = Some(parse_content(&mut ctx, child)?);
            }
            _ => env.sections.push(parse_section(&mut ctx, child)?),
        }
    }
    env.section_style = ctx.style;
    Ok(env)
}

fn parse_file(ctx: &Ctx<'_>, f: &PElement) -> Result<FileReference> {
    let (k, attributes) = split_attrs(f, &["id", "href", "size", "compression", "chunkSize"]);
    let missing =
        |what: &str| Error::invalid_data(OBJECT, format!("{}: File without ovf:{what}", f.pos));
    Ok(FileReference {
        id: k[0].ok_or_else(|| missing("id"))?.to_owned(),
        href: k[1].ok_or_else(|| missing("href"))?.to_owned(),
        size: parse_u64(f, "size", k[2])?,
        compression: k[3].map(str::to_owned),
        chunk_size: parse_u64(f, "chunkSize", k[4])?,
        attributes,
        other: f.elements().map(|e| ctx.raw(e)).collect(),
    })
}

fn parse_content(ctx: &mut Ctx<'_>, el: &PElement) -> Result<Content> {
    let kind = ctx.effective_name(el);
    let (k, attributes) = split_attrs(el, &["id"]);
    let id = k[0].unwrap_or_default().to_owned();
    let mut info = None;
    let mut name = None;
    let mut sections = Vec::new();
    let mut content = Vec::new();
    let is_collection = kind.as_deref() == Some("VirtualSystemCollection");
    for child in el.elements() {
        match ctx.effective_name(child).as_deref() {
            Some("Info") if info.is_none() => info = Some(child.text()),
            Some("Name") if name.is_none() => name = Some(child.text()),
            Some("VirtualSystem") | Some("VirtualSystemCollection") if is_collection => {
                content.push(parse_content(ctx, child)?);
            }
            _ => sections.push(parse_section(ctx, child)?),
        }
    }
    Ok(if is_collection {
        Content::Collection(VirtualSystemCollection {
            id,
            info,
            name,
            sections,
            content,
            attributes,
        })
    } else {
        Content::VirtualSystem(VirtualSystem {
            id,
            info,
            name,
            sections,
            attributes,
        })
    })
}

fn parse_section(ctx: &mut Ctx<'_>, el: &PElement) -> Result<Section> {
    let name = ctx.effective_name(el);
    Ok(match name.as_deref() {
        Some("DiskSection") => Section::Disk(parse_disk_section(ctx, el)?),
        Some("NetworkSection") => Section::Network(parse_network_section(ctx, el)),
        Some("DeploymentOptionSection") => {
            Section::DeploymentOption(parse_deployment_section(ctx, el))
        }
        Some("OperatingSystemSection") => Section::OperatingSystem(parse_os_section(ctx, el)),
        Some("VirtualHardwareSection") => Section::VirtualHardware(parse_hw_section(ctx, el)),
        Some("ProductSection") => Section::Product(parse_product_section(ctx, el)),
        Some("AnnotationSection") => Section::Annotation(parse_annotation_section(ctx, el)),
        _ => Section::Other(ctx.raw(el)),
    })
}

fn parse_disk_section(ctx: &mut Ctx<'_>, el: &PElement) -> Result<DiskSection> {
    let (_, attributes) = split_attrs(el, &[]);
    let mut s = DiskSection {
        attributes,
        ..DiskSection::default()
    };
    for c in el.elements() {
        match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => s.info = Some(c.text()),
            Some("Disk") => {
                let (k, attributes) = split_attrs(
                    c,
                    &[
                        "diskId",
                        "capacity",
                        "capacityAllocationUnits",
                        "populatedSize",
                        "format",
                        "fileRef",
                        "parentRef",
                    ],
                );
                let disk_id = k[0].ok_or_else(|| {
                    Error::invalid_data(OBJECT, format!("{}: Disk without ovf:diskId", c.pos))
                })?;
                s.disks.push(VirtualDisk {
                    disk_id: disk_id.to_owned(),
                    capacity: k[1].map(str::to_owned),
                    capacity_allocation_units: k[2].map(str::to_owned),
                    populated_size: parse_u64(c, "populatedSize", k[3])?,
                    format: k[4].map(str::to_owned),
                    file_ref: k[5].filter(|s| !s.trim().is_empty()).map(str::to_owned),
                    parent_ref: k[6].filter(|s| !s.trim().is_empty()).map(str::to_owned),
                    attributes,
                    other: c.elements().map(|e| ctx.raw(e)).collect(),
                });
            }
            _ => s.other.push(ctx.raw(c)),
        }
    }
    Ok(s)
}

fn parse_network_section(ctx: &mut Ctx<'_>, el: &PElement) -> NetworkSection {
    let (_, attributes) = split_attrs(el, &[]);
    let mut s = NetworkSection {
        attributes,
        ..NetworkSection::default()
    };
    for c in el.elements() {
        match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => s.info = Some(c.text()),
            Some("Network") => {
                let (k, attributes) = split_attrs(c, &["name"]);
                let mut n = Network {
                    name: k[0].unwrap_or_default().to_owned(),
                    attributes,
                    ..Network::default()
                };
                for d in c.elements() {
                    match ctx.effective_name(d).as_deref() {
                        Some("Description") if n.description.is_none() => {
                            n.description = Some(d.text());
                        }
                        _ => n.other.push(ctx.raw(d)),
                    }
                }
                s.networks.push(n);
            }
            _ => s.other.push(ctx.raw(c)),
        }
    }
    s
}

fn parse_deployment_section(ctx: &mut Ctx<'_>, el: &PElement) -> DeploymentOptionSection {
    let (_, attributes) = split_attrs(el, &[]);
    let mut s = DeploymentOptionSection {
        attributes,
        ..DeploymentOptionSection::default()
    };
    for c in el.elements() {
        match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => s.info = Some(c.text()),
            Some("Configuration") => {
                let (k, mut attributes) = split_attrs(c, &["id", "default"]);
                let default = match k[1] {
                    None => false,
                    Some(v) => match parse_bool(v) {
                        Some(b) => b,
                        None => {
                            keep_unparsed(&mut attributes, c, "default");
                            false
                        }
                    },
                };
                let mut cfg = Configuration {
                    id: k[0].unwrap_or_default().to_owned(),
                    default,
                    attributes,
                    ..Configuration::default()
                };
                for d in c.elements() {
                    match ctx.effective_name(d).as_deref() {
                        Some("Label") if cfg.label.is_none() => cfg.label = Some(d.text()),
                        Some("Description") if cfg.description.is_none() => {
                            cfg.description = Some(d.text());
                        }
                        _ => cfg.other.push(ctx.raw(d)),
                    }
                }
                s.configurations.push(cfg);
            }
            _ => s.other.push(ctx.raw(c)),
        }
    }
    s
}

fn parse_os_section(ctx: &mut Ctx<'_>, el: &PElement) -> OperatingSystemSection {
    let (k, attributes) = split_attrs(el, &["id", "version"]);
    let mut s = OperatingSystemSection {
        id: k[0].map(str::to_owned),
        os_version: k[1].map(str::to_owned),
        attributes,
        ..OperatingSystemSection::default()
    };
    for c in el.elements() {
        match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => s.info = Some(c.text()),
            Some("Description") if s.description.is_none() => s.description = Some(c.text()),
            _ => s.other.push(ctx.raw(c)),
        }
    }
    s
}

fn parse_annotation_section(ctx: &mut Ctx<'_>, el: &PElement) -> AnnotationSection {
    let (_, attributes) = split_attrs(el, &[]);
    let mut s = AnnotationSection {
        attributes,
        ..AnnotationSection::default()
    };
    for c in el.elements() {
        match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => s.info = Some(c.text()),
            Some("Annotation") if s.annotation.is_none() => s.annotation = Some(c.text()),
            _ => s.other.push(ctx.raw(c)),
        }
    }
    s
}

fn parse_hw_section(ctx: &mut Ctx<'_>, el: &PElement) -> VirtualHardwareSection {
    let (_, attributes) = split_attrs(el, &[]);
    let mut s = VirtualHardwareSection {
        attributes,
        ..VirtualHardwareSection::default()
    };
    for c in el.elements() {
        let kind = match ctx.effective_name(c).as_deref() {
            Some("Info") if s.info.is_none() => {
                s.info = Some(c.text());
                continue;
            }
            Some("System") if s.system.is_none() => {
                s.system = Some(c.elements().map(|e| ctx.raw(e)).collect());
                continue;
            }
            Some("Item") => ItemKind::Item,
            Some("StorageItem") => ItemKind::StorageItem,
            Some("EthernetPortItem") => ItemKind::EthernetPortItem,
            _ => {
                s.other.push(ctx.raw(c));
                continue;
            }
        };
        s.items.push(Item {
            kind,
            attributes: c.attrs.clone(),
            properties: c.elements().map(|e| ctx.raw(e)).collect(),
        });
    }
    s
}

fn parse_product_section(ctx: &mut Ctx<'_>, el: &PElement) -> ProductSection {
    let (k, attributes) = split_attrs(el, &["class", "instance"]);
    let mut s = ProductSection {
        class: k[0].map(str::to_owned),
        instance: k[1].map(str::to_owned),
        attributes,
        ..ProductSection::default()
    };
    for c in el.elements() {
        let name = ctx.effective_name(c);
        let slot = match name.as_deref() {
            Some("Info") => &mut s.info,
            Some("Product") => &mut s.product,
            Some("Vendor") => &mut s.vendor,
            Some("Version") => &mut s.version,
            Some("FullVersion") => &mut s.full_version,
            Some("ProductUrl") => &mut s.product_url,
            Some("VendorUrl") => &mut s.vendor_url,
            Some("AppUrl") => &mut s.app_url,
            Some("Category") => {
                s.entries.push(ProductEntry::Category(c.text()));
                continue;
            }
            Some("Property") => {
                s.entries
                    .push(ProductEntry::Property(parse_property(ctx, c)));
                continue;
            }
            _ => {
                s.entries.push(ProductEntry::Other(ctx.raw(c)));
                continue;
            }
        };
        if slot.is_none() && s.entries.is_empty() {
            *slot = Some(c.text());
        } else {
            s.entries.push(ProductEntry::Other(ctx.raw(c)));
        }
    }
    s
}

fn parse_property(ctx: &mut Ctx<'_>, c: &PElement) -> Property {
    let (k, mut attributes) = split_attrs(
        c,
        &[
            "key",
            "type",
            "value",
            "userConfigurable",
            "password",
            "qualifiers",
        ],
    );
    let bool_attr = |i: usize, name: &str, attributes: &mut Vec<XmlAttr>| {
        k[i].and_then(|v| {
            let b = parse_bool(v);
            if b.is_none() {
                keep_unparsed(attributes, c, name);
            }
            b
        })
    };
    let user_configurable = bool_attr(3, "userConfigurable", &mut attributes);
    let password = bool_attr(4, "password", &mut attributes);
    let mut p = Property {
        key: k[0].unwrap_or_default().to_owned(),
        type_: k[1].map(str::to_owned),
        value: k[2].map(str::to_owned),
        user_configurable,
        password,
        qualifiers: k[5].map(str::to_owned),
        attributes,
        ..Property::default()
    };
    for d in c.elements() {
        match ctx.effective_name(d).as_deref() {
            Some("Label") if p.label.is_none() => p.label = Some(d.text()),
            Some("Description") if p.description.is_none() => p.description = Some(d.text()),
            _ => p.other.push(ctx.raw(d)),
        }
    }
    p
}
