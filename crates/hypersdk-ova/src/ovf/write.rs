//! Writing the model back to XML.

use super::model::*;
use super::ns;
use super::xml::{NamespaceDecl, XmlAttr, XmlElement, XmlNode};

/// An indenting XML writer that keeps track of the namespace bindings in
/// scope and declares whatever an element or attribute needs.
pub(crate) struct XmlWriter {
    out: String,
    scopes: Vec<Vec<NamespaceDecl>>,
    open: Vec<String>,
    fresh: usize,
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

impl XmlWriter {
    pub(crate) fn new() -> Self {
        XmlWriter {
            out: String::new(),
            scopes: Vec::new(),
            open: Vec::new(),
            fresh: 0,
        }
    }

    pub(crate) fn declaration(&mut self) {
        self.out
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }

    pub(crate) fn comment_line(&mut self, text: &str) {
        self.out.push_str("<!--");
        self.out.push_str(&text.replace("--", "- -"));
        self.out.push_str("-->\n");
    }

    pub(crate) fn finish(mut self) -> String {
        if !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        self.out
    }

    fn binding(&self, prefix: Option<&str>) -> Option<&str> {
        for scope in self.scopes.iter().rev() {
            if let Some(d) = scope.iter().rev().find(|d| d.prefix.as_deref() == prefix) {
                return Some(d.uri.as_str());
            }
        }
        match prefix {
            Some("xml") => Some(super::xml::XML_NS),
            _ => None,
        }
    }

    fn prefix_for(&self, uri: &str, pending: &[NamespaceDecl]) -> Option<String> {
        if let Some(d) = pending.iter().find(|d| d.prefix.is_some() && d.uri == uri) {
            return d.prefix.clone();
        }
        for scope in self.scopes.iter().rev() {
            for d in scope.iter().rev() {
                if let Some(p) = &d.prefix
                    && d.uri == uri
                    && self.binding(Some(p)) == Some(uri)
                {
                    return Some(p.clone());
                }
            }
        }
        None
    }

    fn indent(&mut self) {
        self.out.push('\n');
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }

    /// Writes `<qname decls attrs` and pushes its scope; returns the qname.
    fn start_tag(
        &mut self,
        namespace: Option<&str>,
        prefix: Option<&str>,
        name: &str,
        decls: &[NamespaceDecl],
        attrs: &[XmlAttr],
        indent: bool,
    ) -> String {
        let mut decls: Vec<NamespaceDecl> = decls.to_vec();
        let bound = |w: &XmlWriter, decls: &[NamespaceDecl], p: Option<&str>| -> Option<String> {
            decls
                .iter()
                .rev()
                .find(|d| d.prefix.as_deref() == p)
                .map(|d| d.uri.clone())
                .or_else(|| w.binding(p).map(str::to_owned))
        };
        let el_prefix = match namespace {
            Some(uri) => {
                if bound(self, &decls, prefix).as_deref() != Some(uri) {
                    decls.push(NamespaceDecl::new(prefix, uri));
                }
                prefix.map(str::to_owned)
            }
            None => {
                if bound(self, &decls, None).is_some_and(|u| !u.is_empty()) {
                    decls.push(NamespaceDecl::new(None, ""));
                }
                None
            }
        };
        let mut written_attrs: Vec<(String, &str)> = Vec::new();
        for a in attrs {
            let qname = match (&a.namespace, &a.prefix) {
                (None, _) => a.name.clone(),
                (Some(_), Some(p)) if p == "xml" => format!("xml:{}", a.name),
                (Some(uri), Some(p)) => {
                    if bound(self, &decls, Some(p)).as_deref() != Some(uri.as_str()) {
                        decls.push(NamespaceDecl::new(Some(p), uri.clone()));
                    }
                    format!("{p}:{}", a.name)
                }
                (Some(uri), None) => {
                    let p = match self.prefix_for(uri, &decls) {
                        Some(p) => p,
                        None => {
                            let p = format!("ns{}", self.fresh);
                            self.fresh += 1;
                            decls.push(NamespaceDecl::new(Some(&p), uri.clone()));
                            p
                        }
                    };
                    format!("{p}:{}", a.name)
                }
            };
            written_attrs.push((qname, &a.value));
        }
        let qname = match &el_prefix {
            Some(p) => format!("{p}:{name}"),
            None => name.to_owned(),
        };
        if indent && !self.out.is_empty() && !self.out.ends_with('\n') {
            self.indent();
        } else if indent && self.out.ends_with('\n') {
            for _ in 0..self.open.len() {
                self.out.push_str("  ");
            }
        }
        self.out.push('<');
        self.out.push_str(&qname);
        for a in attrs_sorted_decls(&decls) {
            match &a.prefix {
                Some(p) => {
                    self.out.push_str(" xmlns:");
                    self.out.push_str(p);
                }
                None => self.out.push_str(" xmlns"),
            }
            self.out.push_str("=\"");
            escape_attr(&a.uri, &mut self.out);
            self.out.push('"');
        }
        for (q, v) in written_attrs {
            self.out.push(' ');
            self.out.push_str(&q);
            self.out.push_str("=\"");
            escape_attr(v, &mut self.out);
            self.out.push('"');
        }
        self.scopes.push(decls);
        qname
    }

    /// Opens an element whose children follow.
    pub(crate) fn open(
        &mut self,
        namespace: Option<&str>,
        prefix: Option<&str>,
        name: &str,
        decls: &[NamespaceDecl],
        attrs: &[XmlAttr],
    ) {
        let q = self.start_tag(namespace, prefix, name, decls, attrs, true);
        self.out.push('>');
        self.open.push(q);
    }

    /// Closes the innermost open element.
    pub(crate) fn close(&mut self) {
        if let Some(q) = self.open.pop() {
            self.indent();
            self.out.push_str("</");
            self.out.push_str(&q);
            self.out.push('>');
            self.scopes.pop();
        }
    }

    /// Writes an element with text content (or empty, for `None`).
    pub(crate) fn leaf(
        &mut self,
        namespace: Option<&str>,
        prefix: Option<&str>,
        name: &str,
        attrs: &[XmlAttr],
        text: Option<&str>,
    ) {
        let q = self.start_tag(namespace, prefix, name, &[], attrs, true);
        match text {
            Some(t) if !t.is_empty() => {
                self.out.push('>');
                escape_text(t, &mut self.out);
                self.out.push_str("</");
                self.out.push_str(&q);
                self.out.push('>');
            }
            _ => self.out.push_str("/>"),
        }
        self.scopes.pop();
    }

    /// Writes a raw element and its subtree.
    pub(crate) fn raw(&mut self, el: &XmlElement) {
        self.raw_inner(el, true);
    }

    fn raw_inner(&mut self, el: &XmlElement, indent: bool) {
        let q = self.start_tag(
            el.namespace.as_deref(),
            el.prefix.as_deref(),
            &el.name,
            &el.namespace_decls,
            &el.attributes,
            indent,
        );
        if el.children.is_empty() {
            self.out.push_str("/>");
            self.scopes.pop();
            return;
        }
        self.out.push('>');
        let mixed = el
            .children
            .iter()
            .any(|c| matches!(c, XmlNode::Text(t) if !t.trim().is_empty()))
            || el.children.iter().all(|c| matches!(c, XmlNode::Text(_)));
        let child_indent = indent && !mixed;
        self.open.push(q.clone());
        for c in &el.children {
            match c {
                XmlNode::Element(e) => self.raw_inner(e, child_indent),
                XmlNode::Text(t) => escape_text(t, &mut self.out),
                XmlNode::Comment(t) => {
                    if child_indent {
                        self.indent();
                    }
                    self.out.push_str("<!--");
                    self.out.push_str(&t.replace("--", "- -"));
                    self.out.push_str("-->");
                }
            }
        }
        self.open.pop();
        if child_indent {
            self.indent();
        }
        self.out.push_str("</");
        self.out.push_str(&q);
        self.out.push('>');
        self.scopes.pop();
    }
}

fn attrs_sorted_decls(decls: &[NamespaceDecl]) -> Vec<NamespaceDecl> {
    decls.to_vec()
}

/// How the typed parts of an envelope are spelled.
struct Style {
    ns: String,
    el_prefix: Option<String>,
    attr_prefix: String,
    xsi_prefix: String,
    xsi_type: bool,
}

impl Style {
    fn for_envelope(env: &Envelope) -> Self {
        let ns = env.namespace.clone();
        let el_prefix = if env
            .namespace_decls
            .iter()
            .any(|d| d.prefix.is_none() && d.uri == ns)
        {
            None
        } else {
            env.namespace_decls
                .iter()
                .find(|d| d.prefix.is_some() && d.uri == ns)
                .and_then(|d| d.prefix.clone())
        };
        let attr_prefix = env
            .namespace_decls
            .iter()
            .find(|d| d.prefix.is_some() && d.uri == ns)
            .and_then(|d| d.prefix.clone())
            .unwrap_or_else(|| "ovf".to_owned());
        let xsi_prefix = env
            .namespace_decls
            .iter()
            .find(|d| d.prefix.is_some() && d.uri == ns::XSI)
            .and_then(|d| d.prefix.clone())
            .unwrap_or_else(|| "xsi".to_owned());
        Style {
            ns,
            el_prefix,
            attr_prefix,
            xsi_prefix,
            xsi_type: env.section_style == SectionStyle::XsiType,
        }
    }

    fn attr(&self, name: &str, value: impl Into<String>) -> XmlAttr {
        XmlAttr::new(Some(&self.ns), Some(&self.attr_prefix), name, value)
    }

    fn opt(&self, out: &mut Vec<XmlAttr>, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            out.push(self.attr(name, v));
        }
    }

    fn el_prefix(&self) -> Option<&str> {
        self.el_prefix.as_deref()
    }

    /// Opens a section (or `Content`) element with `attrs`.
    fn open_section(&self, w: &mut XmlWriter, name: &str, content: bool, attrs: Vec<XmlAttr>) {
        if self.xsi_type {
            let mut all = vec![XmlAttr::new(
                Some(ns::XSI),
                Some(&self.xsi_prefix),
                "type",
                format!("{}:{name}_Type", self.attr_prefix),
            )];
            all.extend(attrs);
            let el = if content { "Content" } else { "Section" };
            w.open(Some(&self.ns), self.el_prefix(), el, &[], &all);
        } else {
            w.open(Some(&self.ns), self.el_prefix(), name, &[], &attrs);
        }
    }

    fn leaf(&self, w: &mut XmlWriter, name: &str, text: Option<&str>) {
        if let Some(t) = text {
            w.leaf(Some(&self.ns), self.el_prefix(), name, &[], Some(t));
        }
    }
}

pub(crate) fn write_envelope(env: &Envelope, comment: Option<&str>) -> String {
    let st = Style::for_envelope(env);
    let mut w = XmlWriter::new();
    w.declaration();
    if let Some(c) = comment {
        w.comment_line(c);
    }
    w.open(
        Some(&st.ns),
        st.el_prefix(),
        "Envelope",
        &env.namespace_decls,
        &env.attributes,
    );
    w.open(Some(&st.ns), st.el_prefix(), "References", &[], &[]);
    for f in &env.references {
        let mut attrs = vec![st.attr("href", &f.href), st.attr("id", &f.id)];
        st.opt(&mut attrs, "size", f.size.map(|s| s.to_string()).as_deref());
        st.opt(&mut attrs, "compression", f.compression.as_deref());
        st.opt(
            &mut attrs,
            "chunkSize",
            f.chunk_size.map(|s| s.to_string()).as_deref(),
        );
        attrs.extend(f.attributes.iter().cloned());
        if f.other.is_empty() {
            w.leaf(Some(&st.ns), st.el_prefix(), "File", &attrs, None);
        } else {
            w.open(Some(&st.ns), st.el_prefix(), "File", &[], &attrs);
            for o in &f.other {
                w.raw(o);
            }
            w.close();
        }
    }
    w.close();
    for s in &env.sections {
        write_section(&mut w, &st, s);
    }
    if let Some(c) = &env.content {
        write_content(&mut w, &st, c);
    }
    for t in &env.trailing {
        w.raw(t);
    }
    w.close();
    w.finish()
}

fn write_content(w: &mut XmlWriter, st: &Style, c: &Content) {
    match c {
        Content::VirtualSystem(v) => {
            let mut attrs = vec![st.attr("id", &v.id)];
            attrs.extend(v.attributes.iter().cloned());
            st.open_section(w, "VirtualSystem", true, attrs);
            st.leaf(w, "Info", v.info.as_deref());
            st.leaf(w, "Name", v.name.as_deref());
            for s in &v.sections {
                write_section(w, st, s);
            }
            w.close();
        }
        Content::Collection(col) => {
            let mut attrs = vec![st.attr("id", &col.id)];
            attrs.extend(col.attributes.iter().cloned());
            st.open_section(w, "VirtualSystemCollection", true, attrs);
            st.leaf(w, "Info", col.info.as_deref());
            st.leaf(w, "Name", col.name.as_deref());
            for s in &col.sections {
                write_section(w, st, s);
            }
            for c in &col.content {
                write_content(w, st, c);
            }
            w.close();
        }
    }
}

fn write_section(w: &mut XmlWriter, st: &Style, s: &Section) {
    match s {
        Section::Other(el) => w.raw(el),
        Section::Disk(d) => {
            st.open_section(w, "DiskSection", false, d.attributes.clone());
            st.leaf(w, "Info", d.info.as_deref());
            for disk in &d.disks {
                let mut attrs = Vec::new();
                st.opt(&mut attrs, "capacity", disk.capacity.as_deref());
                st.opt(
                    &mut attrs,
                    "capacityAllocationUnits",
                    disk.capacity_allocation_units.as_deref(),
                );
                attrs.push(st.attr("diskId", &disk.disk_id));
                st.opt(&mut attrs, "fileRef", disk.file_ref.as_deref());
                st.opt(&mut attrs, "format", disk.format.as_deref());
                st.opt(&mut attrs, "parentRef", disk.parent_ref.as_deref());
                st.opt(
                    &mut attrs,
                    "populatedSize",
                    disk.populated_size.map(|s| s.to_string()).as_deref(),
                );
                attrs.extend(disk.attributes.iter().cloned());
                if disk.other.is_empty() {
                    w.leaf(Some(&st.ns), st.el_prefix(), "Disk", &attrs, None);
                } else {
                    w.open(Some(&st.ns), st.el_prefix(), "Disk", &[], &attrs);
                    for o in &disk.other {
                        w.raw(o);
                    }
                    w.close();
                }
            }
            for o in &d.other {
                w.raw(o);
            }
            w.close();
        }
        Section::Network(n) => {
            st.open_section(w, "NetworkSection", false, n.attributes.clone());
            st.leaf(w, "Info", n.info.as_deref());
            for net in &n.networks {
                let mut attrs = vec![st.attr("name", &net.name)];
                attrs.extend(net.attributes.iter().cloned());
                if net.description.is_none() && net.other.is_empty() {
                    w.leaf(Some(&st.ns), st.el_prefix(), "Network", &attrs, None);
                } else {
                    w.open(Some(&st.ns), st.el_prefix(), "Network", &[], &attrs);
                    st.leaf(w, "Description", net.description.as_deref());
                    for o in &net.other {
                        w.raw(o);
                    }
                    w.close();
                }
            }
            for o in &n.other {
                w.raw(o);
            }
            w.close();
        }
        Section::DeploymentOption(d) => {
            st.open_section(w, "DeploymentOptionSection", false, d.attributes.clone());
            st.leaf(w, "Info", d.info.as_deref());
            for c in &d.configurations {
                let mut attrs = vec![st.attr("id", &c.id)];
                if c.default {
                    attrs.push(st.attr("default", "true"));
                }
                attrs.extend(c.attributes.iter().cloned());
                w.open(Some(&st.ns), st.el_prefix(), "Configuration", &[], &attrs);
                st.leaf(w, "Label", c.label.as_deref());
                st.leaf(w, "Description", c.description.as_deref());
                for o in &c.other {
                    w.raw(o);
                }
                w.close();
            }
            for o in &d.other {
                w.raw(o);
            }
            w.close();
        }
        Section::OperatingSystem(o) => {
            let mut attrs = Vec::new();
            st.opt(&mut attrs, "id", o.id.as_deref());
            st.opt(&mut attrs, "version", o.os_version.as_deref());
            attrs.extend(o.attributes.iter().cloned());
            st.open_section(w, "OperatingSystemSection", false, attrs);
            st.leaf(w, "Info", o.info.as_deref());
            st.leaf(w, "Description", o.description.as_deref());
            for x in &o.other {
                w.raw(x);
            }
            w.close();
        }
        Section::Annotation(a) => {
            st.open_section(w, "AnnotationSection", false, a.attributes.clone());
            st.leaf(w, "Info", a.info.as_deref());
            st.leaf(w, "Annotation", a.annotation.as_deref());
            for x in &a.other {
                w.raw(x);
            }
            w.close();
        }
        Section::Product(p) => {
            let mut attrs = Vec::new();
            st.opt(&mut attrs, "class", p.class.as_deref());
            st.opt(&mut attrs, "instance", p.instance.as_deref());
            attrs.extend(p.attributes.iter().cloned());
            st.open_section(w, "ProductSection", false, attrs);
            st.leaf(w, "Info", p.info.as_deref());
            st.leaf(w, "Product", p.product.as_deref());
            st.leaf(w, "Vendor", p.vendor.as_deref());
            st.leaf(w, "Version", p.version.as_deref());
            st.leaf(w, "FullVersion", p.full_version.as_deref());
            st.leaf(w, "ProductUrl", p.product_url.as_deref());
            st.leaf(w, "VendorUrl", p.vendor_url.as_deref());
            st.leaf(w, "AppUrl", p.app_url.as_deref());
            for e in &p.entries {
                match e {
                    ProductEntry::Category(c) => st.leaf(w, "Category", Some(c)),
                    ProductEntry::Other(x) => w.raw(x),
                    ProductEntry::Property(prop) => write_property(w, st, prop),
                }
            }
            w.close();
        }
        Section::VirtualHardware(h) => {
            st.open_section(w, "VirtualHardwareSection", false, h.attributes.clone());
            st.leaf(w, "Info", h.info.as_deref());
            if let Some(sys) = &h.system {
                if sys.is_empty() {
                    w.leaf(Some(&st.ns), st.el_prefix(), "System", &[], None);
                } else {
                    w.open(Some(&st.ns), st.el_prefix(), "System", &[], &[]);
                    for x in sys {
                        w.raw(x);
                    }
                    w.close();
                }
            }
            for item in &h.items {
                let name = item.kind.element_name();
                if item.properties.is_empty() {
                    w.leaf(Some(&st.ns), st.el_prefix(), name, &item.attributes, None);
                } else {
                    w.open(Some(&st.ns), st.el_prefix(), name, &[], &item.attributes);
                    for x in &item.properties {
                        w.raw(x);
                    }
                    w.close();
                }
            }
            for x in &h.other {
                w.raw(x);
            }
            w.close();
        }
    }
}

fn write_property(w: &mut XmlWriter, st: &Style, p: &Property) {
    let mut attrs = vec![st.attr("key", &p.key)];
    st.opt(&mut attrs, "type", p.type_.as_deref());
    st.opt(&mut attrs, "qualifiers", p.qualifiers.as_deref());
    st.opt(&mut attrs, "value", p.value.as_deref());
    if let Some(b) = p.user_configurable {
        attrs.push(st.attr("userConfigurable", b.to_string()));
    }
    if let Some(b) = p.password {
        attrs.push(st.attr("password", b.to_string()));
    }
    attrs.extend(p.attributes.iter().cloned());
    if p.label.is_none() && p.description.is_none() && p.other.is_empty() {
        w.leaf(Some(&st.ns), st.el_prefix(), "Property", &attrs, None);
        return;
    }
    w.open(Some(&st.ns), st.el_prefix(), "Property", &[], &attrs);
    st.leaf(w, "Label", p.label.as_deref());
    st.leaf(w, "Description", p.description.as_deref());
    for x in &p.other {
        w.raw(x);
    }
    w.close();
}
