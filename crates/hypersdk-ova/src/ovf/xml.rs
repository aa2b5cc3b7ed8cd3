//! A small namespace-aware XML tree: the raw form in which unknown sections
//! and vendor extensions are kept, and the hardened reader every descriptor
//! goes through first.

use std::fmt;

use hypersdk_core::{Error, Result};
use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use quick_xml::reader::NsReader;

use super::ParseOptions;

/// The object name used in errors about a descriptor.
pub(crate) const OBJECT: &str = "OVF descriptor";

/// A namespace declaration (`xmlns="…"` or `xmlns:prefix="…"`) as written on
/// an element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespaceDecl {
    /// The declared prefix; `None` for the default namespace.
    pub prefix: Option<String>,
    /// The namespace URI; empty for `xmlns=""` (no default namespace).
    pub uri: String,
}

impl NamespaceDecl {
    /// A declaration of `prefix` (or the default namespace for `None`).
    pub fn new(prefix: Option<&str>, uri: impl Into<String>) -> Self {
        NamespaceDecl {
            prefix: prefix.map(str::to_owned),
            uri: uri.into(),
        }
    }
}

/// An attribute with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XmlAttr {
    /// The namespace URI; `None` for an unprefixed attribute.
    pub namespace: Option<String>,
    /// The prefix as written, e.g. `vmw`.
    pub prefix: Option<String>,
    /// The local name.
    pub name: String,
    /// The value, entities resolved and whitespace normalized as XML says.
    pub value: String,
}

impl XmlAttr {
    /// An attribute in `namespace` written with `prefix`.
    pub fn new(
        namespace: Option<&str>,
        prefix: Option<&str>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        XmlAttr {
            namespace: namespace.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
            name: name.into(),
            value: value.into(),
        }
    }

    /// Whether this attribute is `{namespace}name`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.name == name && self.namespace.as_deref() == Some(namespace)
    }
}

/// A child of an [`XmlElement`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum XmlNode {
    /// A child element.
    Element(XmlElement),
    /// Character data (entities resolved, CDATA merged in).
    Text(String),
    /// A comment, kept so raw sections re-emit as written.
    Comment(String),
}

/// An element kept as XML: an unknown section, a vendor extension
/// (`vmw:*`, `vbox:Machine`, `ovirt:*`, …), or a property of a hardware item.
///
/// Whitespace-only text between child elements is not kept; text in leaf
/// elements and in mixed content is kept exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct XmlElement {
    /// The namespace URI; `None` when the element is in no namespace.
    pub namespace: Option<String>,
    /// The prefix as written; `None` when unprefixed.
    pub prefix: Option<String>,
    /// The local name.
    pub name: String,
    /// Namespace declarations written on this element.
    pub namespace_decls: Vec<NamespaceDecl>,
    /// Attributes other than namespace declarations, in document order.
    pub attributes: Vec<XmlAttr>,
    /// Children in document order.
    pub children: Vec<XmlNode>,
}

impl XmlElement {
    /// An empty element `{namespace}name` written with `prefix`.
    pub fn new(namespace: Option<&str>, prefix: Option<&str>, name: impl Into<String>) -> Self {
        XmlElement {
            namespace: namespace.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
            name: name.into(),
            ..XmlElement::default()
        }
    }

    /// Adds an attribute (builder style).
    #[must_use]
    pub fn with_attr(mut self, attr: XmlAttr) -> Self {
        self.attributes.push(attr);
        self
    }

    /// Sets the text content (builder style), replacing all children.
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children = vec![XmlNode::Text(text.into())];
        self
    }

    /// Whether this element is `{namespace}name`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.name == name && self.namespace.as_deref() == Some(namespace)
    }

    /// The value of the first attribute with this local name in `namespace`
    /// (`None` matches unprefixed attributes).
    pub fn attr(&self, namespace: Option<&str>, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name && a.namespace.as_deref() == namespace)
            .map(|a| a.value.as_str())
    }

    /// The value of the first attribute with this local name, whatever its
    /// namespace.
    pub fn attr_any_ns(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &XmlElement> {
        self.children.iter().filter_map(|c| match c {
            XmlNode::Element(e) => Some(e),
            _ => None,
        })
    }

    /// The first child element with this local name (any namespace).
    pub fn child(&self, name: &str) -> Option<&XmlElement> {
        self.elements().find(|e| e.name == name)
    }

    /// All descendants (depth first, document order), not including `self`.
    pub fn descendants(&self) -> Vec<&XmlElement> {
        let mut out = Vec::new();
        let mut stack: Vec<&XmlElement> = self.elements().collect();
        stack.reverse();
        while let Some(e) = stack.pop() {
            out.push(e);
            let mut kids: Vec<&XmlElement> = e.elements().collect();
            kids.reverse();
            stack.extend(kids);
        }
        out
    }

    /// The concatenated text of the direct text children, as written.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            if let XmlNode::Text(t) = c {
                s.push_str(t);
            }
        }
        s
    }

    /// [`XmlElement::text`] trimmed; `None` when that is empty.
    pub fn trimmed_text(&self) -> Option<String> {
        let t = self.text();
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_owned())
    }

    /// The serialized element, declaring the namespaces it uses.
    pub fn to_xml(&self) -> String {
        let mut w = super::write::XmlWriter::new();
        w.raw(self);
        w.finish()
    }
}

/// A line and column (both 1-based; the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Maps byte offsets of the input to lines and columns.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(crate) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0);
        let mut end = offset;
        while end > start && !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let column = self.text.get(start..end).map_or(0, |s| s.chars().count()) + 1;
        Pos {
            line: line + 1,
            column,
        }
    }
}

/// An element of the parsed tree, with where it started.
#[derive(Debug, Clone)]
pub(crate) struct PElement {
    pub(crate) namespace: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) name: String,
    pub(crate) decls: Vec<NamespaceDecl>,
    pub(crate) attrs: Vec<XmlAttr>,
    pub(crate) children: Vec<PNode>,
    pub(crate) pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) enum PNode {
    Element(PElement),
    Text(String),
    Comment(String),
}

impl PElement {
    pub(crate) fn elements(&self) -> impl Iterator<Item = &PElement> {
        self.children.iter().filter_map(|c| match c {
            PNode::Element(e) => Some(e),
            _ => None,
        })
    }

    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            if let PNode::Text(t) = c {
                s.push_str(t);
            }
        }
        s
    }

    /// `{namespace}local` for messages.
    pub(crate) fn qualified(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{{{ns}}}{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The element as an [`XmlElement`], positions dropped.
    pub(crate) fn to_element(&self) -> XmlElement {
        XmlElement {
            namespace: self.namespace.clone(),
            prefix: self.prefix.clone(),
            name: self.name.clone(),
            namespace_decls: self.decls.clone(),
            attributes: self.attrs.clone(),
            children: self
                .children
                .iter()
                .map(|c| match c {
                    PNode::Element(e) => XmlNode::Element(e.to_element()),
                    PNode::Text(t) => XmlNode::Text(t.clone()),
                    PNode::Comment(t) => XmlNode::Comment(t.clone()),
                })
                .collect(),
        }
    }

    /// The element as the root of a raw subtree that will be written out of
    /// its original context: every prefix it uses that `root_scope` does not
    /// bind the same way, and that the subtree does not declare itself, gets
    /// declared on the subtree's root, so writing and re-reading it is stable.
    pub(crate) fn to_raw(&self, root_scope: &[NamespaceDecl]) -> XmlElement {
        let mut el = self.to_element();
        let mut used: Vec<NamespaceDecl> = Vec::new();
        collect_used(&el, &mut used);
        let mut declared: Vec<NamespaceDecl> = Vec::new();
        collect_declared(&el, &mut declared);
        for u in used {
            if declared.contains(&u) {
                continue;
            }
            let root_binding = root_scope.iter().rev().find(|d| d.prefix == u.prefix);
            let bound_same = match root_binding {
                Some(d) => d.uri == u.uri,
                // No default namespace in scope equals "no namespace".
                None => u.prefix.is_none() && u.uri.is_empty(),
            };
            if !bound_same && !el.namespace_decls.iter().any(|d| d.prefix == u.prefix) {
                el.namespace_decls.push(u);
            }
        }
        el
    }
}

fn collect_used(el: &XmlElement, out: &mut Vec<NamespaceDecl>) {
    let d = match (&el.prefix, &el.namespace) {
        (Some(p), Some(ns)) => Some(NamespaceDecl::new(Some(p), ns.clone())),
        (None, Some(ns)) => Some(NamespaceDecl::new(None, ns.clone())),
        (None, None) => Some(NamespaceDecl::new(None, "")),
        (Some(_), None) => None,
    };
    if let Some(d) = d
        && !out.contains(&d)
    {
        out.push(d);
    }
    for a in &el.attributes {
        if let (Some(p), Some(ns)) = (&a.prefix, &a.namespace) {
            if p == "xml" {
                continue;
            }
            let d = NamespaceDecl::new(Some(p), ns.clone());
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    for c in el.elements() {
        collect_used(c, out);
    }
}

fn collect_declared(el: &XmlElement, out: &mut Vec<NamespaceDecl>) {
    out.extend(el.namespace_decls.iter().cloned());
    for c in el.elements() {
        collect_declared(c, out);
    }
}

/// The namespace of the `xml:` prefix.
pub(crate) const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

fn ns_of(r: &ResolveResult<'_>) -> std::result::Result<Option<String>, String> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(ns.0.to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(format!("namespace prefix '{p}' is not declared")),
    }
}

fn split_prefix(qname: &str) -> (Option<String>, String) {
    match qname.split_once(':') {
        Some((p, l)) => (Some(p.to_owned()), l.to_owned()),
        None => (None, qname.to_owned()),
    }
}

fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return None,
    })
}

/// Reads `xml` into a tree, enforcing the limits of `opts`.
pub(crate) fn read_tree(xml: &[u8], opts: &ParseOptions) -> Result<PElement> {
    if xml.len() > opts.max_bytes {
        return Err(Error::invalid_data(
            OBJECT,
            format!(
                "descriptor larger than {}: {} bytes",
                human_bytes(opts.max_bytes),
                xml.len()
            ),
        ));
    }
    if xml.starts_with(&[0xFE, 0xFF]) || xml.starts_with(&[0xFF, 0xFE]) {
        return Err(Error::invalid_data(
            OBJECT,
            "line 1, column 1: UTF-16 descriptors are not supported; OVF descriptors are UTF-8",
        ));
    }
    let text = match std::str::from_utf8(xml) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.valid_up_to();
            // The prefix up to `valid` is UTF-8 by construction.
            let prefix = std::str::from_utf8(&xml[..valid]).unwrap_or_default();
            let pos = LineIndex::new(prefix).pos(valid);
            return Err(Error::invalid_data(
                OBJECT,
                format!("{pos}: the descriptor is not valid UTF-8"),
            ));
        }
    };
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bom = text.len() - body.len();
    let index = LineIndex::new(text);
    let at = |offset: u64| index.pos(usize::try_from(offset).unwrap_or(usize::MAX) + bom);

    let mut reader = NsReader::from_str(body);
    {
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.expand_empty_elements = false;
        cfg.trim_text(false);
    }
    let mut stack: Vec<PElement> = Vec::new();
    let mut root: Option<PElement> = None;
    let mut pending_text = String::new();

    let flush_text = |stack: &mut Vec<PElement>, pending: &mut String| {
        if pending.is_empty() {
            return;
        }
        if let Some(top) = stack.last_mut() {
            if let Some(PNode::Text(t)) = top.children.last_mut() {
                t.push_str(pending);
            } else {
                top.children.push(PNode::Text(std::mem::take(pending)));
            }
        }
        pending.clear();
    };

    loop {
        let start_offset = reader.buffer_position();
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let pos = at(reader.error_position());
                return Err(Error::invalid_data_with(
                    OBJECT,
                    format!("{pos}: malformed XML: {e}"),
                    e,
                ));
            }
        };
        match event {
            Event::DocType(_) => {
                return Err(Error::invalid_data(
                    OBJECT,
                    format!(
                        "{}: DOCTYPE is not allowed in an OVF descriptor (no DTDs, no entity expansion)",
                        at(start_offset)
                    ),
                ));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                let pos = at(start_offset);
                if stack.is_empty() && root.is_some() {
                    return Err(Error::invalid_data(
                        OBJECT,
                        format!("{pos}: a second root element is not allowed"),
                    ));
                }
                if stack.len() >= opts.max_depth {
                    return Err(Error::invalid_data(
                        OBJECT,
                        format!("{pos}: element nesting deeper than {}", opts.max_depth),
                    ));
                }
                flush_text(&mut stack, &mut pending_text);
                // Namespace scope for this element: the reader pushes it for
                // Start/Empty events before returning them.
                let (res, _) = reader.resolver().resolve_element(e.name());
                let namespace = ns_of(&res).map_err(|m| {
                    Error::invalid_data(OBJECT, format!("{pos}: element <{}>: {m}", e.name().0))
                })?;
                let (prefix, name) = split_prefix(e.name().0);
                let mut decls = Vec::new();
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|err| {
                        Error::invalid_data_with(
                            OBJECT,
                            format!("{pos}: malformed attribute on <{}>: {err}", e.name().0),
                            err,
                        )
                    })?;
                    let value = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| {
                            Error::invalid_data_with(
                                OBJECT,
                                format!(
                                    "{pos}: attribute {} on <{}>: {err} (only the predefined entities and character references are allowed)",
                                    a.key.0,
                                    e.name().0
                                ),
                                err,
                            )
                        })?
                        .into_owned();
                    if let Some(b) = a.key.as_namespace_binding() {
                        let prefix = match b {
                            quick_xml::name::PrefixDeclaration::Default => None,
                            quick_xml::name::PrefixDeclaration::Named(p) => Some(p.to_owned()),
                        };
                        decls.push(NamespaceDecl { prefix, uri: value });
                        continue;
                    }
                    let (aprefix, aname) = split_prefix(a.key.0);
                    let anamespace = if aprefix.as_deref() == Some("xml") {
                        Some(XML_NS.to_owned())
                    } else {
                        let (r, _) = reader.resolver().resolve_attribute(QName(a.key.0));
                        ns_of(&r).map_err(|m| {
                            Error::invalid_data(
                                OBJECT,
                                format!("{pos}: attribute {} on <{}>: {m}", a.key.0, e.name().0),
                            )
                        })?
                    };
                    attrs.push(XmlAttr {
                        namespace: anamespace,
                        prefix: aprefix,
                        name: aname,
                        value,
                    });
                }
                let el = PElement {
                    namespace,
                    prefix,
                    name,
                    decls,
                    attrs,
                    children: Vec::new(),
                    pos,
                };
                if is_empty {
                    attach(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                flush_text(&mut stack, &mut pending_text);
                if let Some(mut el) = stack.pop() {
                    tidy_whitespace(&mut el);
                    attach(&mut stack, &mut root, el);
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                if stack.is_empty() {
                    if !s.trim().is_empty() {
                        return Err(Error::invalid_data(
                            OBJECT,
                            format!("{}: text outside the root element", at(start_offset)),
                        ));
                    }
                } else {
                    pending_text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(Error::invalid_data(
                        OBJECT,
                        format!("{}: CDATA outside the root element", at(start_offset)),
                    ));
                }
                pending_text.push_str(&c.xml10_content());
            }
            Event::GeneralRef(r) => {
                let pos = at(start_offset);
                let ch = r.resolve_char_ref().map_err(|err| {
                    Error::invalid_data_with(
                        OBJECT,
                        format!("{pos}: bad character reference &{};", &*r),
                        err,
                    )
                })?;
                let piece: String = match ch {
                    Some(c) => c.to_string(),
                    None => match predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => {
                            return Err(Error::invalid_data(
                                OBJECT,
                                format!(
                                    "{pos}: undefined entity &{};: only the predefined XML entities are allowed",
                                    &*r
                                ),
                            ));
                        }
                    },
                };
                if stack.is_empty() {
                    return Err(Error::invalid_data(
                        OBJECT,
                        format!("{pos}: text outside the root element"),
                    ));
                }
                pending_text.push_str(&piece);
            }
            Event::Comment(c) => {
                flush_text(&mut stack, &mut pending_text);
                if let Some(top) = stack.last_mut() {
                    top.children
                        .push(PNode::Comment(c.xml10_content().into_owned()));
                }
            }
            Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        let eof = at(reader.buffer_position());
        return Err(Error::invalid_data(
            OBJECT,
            format!(
                "{eof}: unexpected end of document: element <{}> opened at {} is not closed",
                match &open.prefix {
                    Some(p) => format!("{p}:{}", open.name),
                    None => open.name.clone(),
                },
                open.pos
            ),
        ));
    }
    root.ok_or_else(|| {
        Error::invalid_data(OBJECT, "line 1, column 1: the document has no root element")
    })
}

fn attach(stack: &mut [PElement], root: &mut Option<PElement>, el: PElement) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(PNode::Element(el)),
        None => *root = Some(el),
    }
}

/// Drops whitespace-only text between child elements.
fn tidy_whitespace(el: &mut PElement) {
    let has_elements = el.children.iter().any(|c| matches!(c, PNode::Element(_)));
    if has_elements {
        el.children
            .retain(|c| !matches!(c, PNode::Text(t) if t.trim().is_empty()));
    }
}

/// `16 MiB`, `64 KiB` or a byte count.
pub(crate) fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}
