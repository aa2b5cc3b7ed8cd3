//! The vim25 SOAP wire format: request envelopes, response trees and faults.
//!
//! [`Request`] writes one method call (`<Method xmlns="urn:vim25"><_this …>`,
//! then the parameters in WSDL order) with proper XML escaping; text that
//! XML 1.0 cannot carry (control characters) is refused with
//! [`ErrorKind::InvalidInput`](hypersdk_core::ErrorKind::InvalidInput)
//! rather than sent. [`parse_response`] reads a response envelope into a
//! small [`Node`] tree with quick-xml's namespace-aware reader: elements are
//! matched by local name, and the polymorphic `type` attribute is resolved by
//! the XML Schema instance namespace **URI**, never by its prefix (vcsim
//! writes `XMLSchema-instance:type`, vCenter `xsi:type`). A SOAP fault
//! becomes a [`VimFault`] classified by the `xsi:type` of its `detail`.
//!
//! ```
//! use hypersdk_vsphere::soap::{parse_response, Request, SoapResponse};
//! use hypersdk_vsphere::types::MoRef;
//!
//! let mut req = Request::new("CreateSnapshot_Task", &MoRef::new("VirtualMachine", "vm-42"));
//! req.text("name", "before <move> & after").bool("memory", false).bool("quiesce", true);
//! let xml = req.to_envelope()?;
//! assert!(xml.contains("<name>before &lt;move&gt; &amp; after</name>"));
//!
//! let reply = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
//!   <soapenv:Body><CreateSnapshot_TaskResponse xmlns="urn:vim25">
//!   <returnval type="Task">task-7</returnval></CreateSnapshot_TaskResponse></soapenv:Body></soapenv:Envelope>"#;
//! let SoapResponse::Ok(node) = parse_response(reply.as_bytes())? else { panic!("fault") };
//! assert_eq!(node.child("returnval").and_then(|n| n.as_moref()), Some(MoRef::new("Task", "task-7")));
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::fmt;

use hypersdk_core::{Error, Result};
use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use quick_xml::reader::NsReader;

use crate::types::MoRef;

/// The SOAP 1.1 envelope namespace.
pub const SOAPENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The vim25 namespace.
pub const VIM25_NS: &str = "urn:vim25";
/// The XML Schema instance namespace (`xsi:type`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The XML Schema namespace (`xsd:string`, …).
pub const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";

/// Deepest element nesting accepted in a response.
const MAX_DEPTH: usize = 256;

const OBJECT: &str = "vSphere SOAP response";

/// One vim25 method call being written.
///
/// Parameters must be added in the method's WSDL order; data-object fields
/// too, base-type fields first (the order every VMware SDK uses).
///
/// `Debug` shows the method and the body's length only: a request may hold
/// a password (`Login`).
///
/// ```
/// use hypersdk_vsphere::soap::Request;
/// use hypersdk_vsphere::types::MoRef;
/// let mut req = Request::new("Login", &MoRef::new("SessionManager", "SessionManager"));
/// req.text("userName", "root").text("password", "s3cret");
/// assert!(!format!("{req:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct Request {
    method: String,
    buf: String,
    open: Vec<String>,
    invalid: Option<String>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("body_len", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A call of `method` on `this`.
    pub fn new(method: &str, this: &MoRef) -> Self {
        let mut r = Request {
            method: method.to_owned(),
            buf: String::with_capacity(256),
            open: Vec::new(),
            invalid: None,
        };
        r.buf.push('<');
        r.buf.push_str(method);
        r.buf.push_str(" xmlns=\"urn:vim25\">");
        r.moref("_this", this);
        r
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    fn escaped(&mut self, s: &str, attr: bool) {
        for c in s.chars() {
            match c {
                '&' => self.buf.push_str("&amp;"),
                '<' => self.buf.push_str("&lt;"),
                '>' => self.buf.push_str("&gt;"),
                '"' if attr => self.buf.push_str("&quot;"),
                '\t' | '\n' | '\r' if attr => {
                    self.buf.push_str(&format!("&#x{:X};", c as u32));
                }
                // Keep a literal CR from being normalised away in text.
                '\r' => self.buf.push_str("&#xD;"),
                c if is_xml_char(c) => self.buf.push(c),
                c => {
                    if self.invalid.is_none() {
                        self.invalid = Some(format!(
                            "character U+{:04X} cannot be sent in XML (parameter of {})",
                            c as u32, self.method
                        ));
                    }
                }
            }
        }
    }

    /// `<name>text</name>`, escaped.
    pub fn text(&mut self, name: &str, value: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push('>');
        self.escaped(value, false);
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push('>');
        self
    }

    /// `<name>text</name>` when `value` is `Some`.
    pub fn opt_text(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.text(name, v);
        }
        self
    }

    /// `<name>true|false</name>`.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.text(name, if value { "true" } else { "false" })
    }

    /// `<name>n</name>`.
    pub fn int(&mut self, name: &str, value: i64) -> &mut Self {
        self.text(name, &value.to_string())
    }

    /// `<name type="Type">value</name>`: a managed object reference.
    pub fn moref(&mut self, name: &str, r: &MoRef) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push_str(" type=\"");
        self.escaped(&r.kind, true);
        self.buf.push_str("\">");
        self.escaped(&r.value, false);
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push('>');
        self
    }

    /// Opens `<name>`; close it with [`Request::end`].
    pub fn start(&mut self, name: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push('>');
        self.open.push(name.to_owned());
        self
    }

    /// Opens `<name xsi:type="Type">`, for a value whose declared type is a
    /// base type (a `TraversalSpec` in a `selectSet`, say).
    pub fn start_typed(&mut self, name: &str, xsi_type: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push_str(" xsi:type=\"");
        self.escaped(xsi_type, true);
        self.buf.push_str("\">");
        self.open.push(name.to_owned());
        self
    }

    /// Closes the innermost element opened with [`Request::start`].
    ///
    /// Closing with nothing open is a bug in the caller: it panics in debug
    /// builds, and otherwise makes [`Request::to_envelope`] fail with
    /// [`Error::InvalidInput`] rather than send a malformed call.
    pub fn end(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.buf.push_str("</");
            self.buf.push_str(&name);
            self.buf.push('>');
        } else {
            debug_assert!(
                false,
                "Request::end() with no open element ({})",
                self.method
            );
            if self.invalid.is_none() {
                self.invalid = Some(format!(
                    "malformed {} request: end() with no open element",
                    self.method
                ));
            }
        }
        self
    }

    /// `<name/>`.
    pub fn empty(&mut self, name: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push_str("/>");
        self
    }

    /// The complete SOAP envelope.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when a parameter holds a character XML 1.0
    /// cannot carry, or the elements were not nested properly.
    pub fn to_envelope(&self) -> Result<String> {
        if let Some(m) = &self.invalid {
            return Err(Error::invalid_input(m.clone()));
        }
        let mut out = String::with_capacity(self.buf.len() + 400);
        out.push_str(concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
        ));
        out.push_str(&self.buf);
        for name in self.open.iter().rev() {
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        out.push_str("</");
        out.push_str(&self.method);
        out.push_str("></soapenv:Body></soapenv:Envelope>");
        Ok(out)
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// One element of a response: local name, namespace, the resolved
/// `xsi:type` (prefix stripped), the unqualified `type` attribute of a
/// moref, its text and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// Local name.
    pub name: String,
    /// Namespace URI, if any.
    pub namespace: Option<String>,
    /// The `{XMLSchema-instance}type` attribute without its prefix
    /// (`VirtualDisk`, `string`, `ArrayOfManagedObjectReference`).
    pub xsi_type: Option<String>,
    /// The unqualified `type` attribute (the type of a moref).
    pub type_attr: Option<String>,
    /// The text content (empty for elements with children).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of child names.
    pub fn path(&self, path: &[&str]) -> Option<&Node> {
        let mut n = self;
        for p in path {
            n = n.child(p)?;
        }
        Some(n)
    }

    /// The text of the child at `path`.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.path(path).map(|n| n.text.as_str())
    }

    /// The text of the child at `path` parsed as an integer.
    pub fn int_at(&self, path: &[&str]) -> Option<i64> {
        self.text_at(path).and_then(|t| t.trim().parse().ok())
    }

    /// The text of the child at `path` parsed as `true`/`false`/`1`/`0`.
    pub fn bool_at(&self, path: &[&str]) -> Option<bool> {
        self.text_at(path).and_then(parse_bool)
    }

    /// This element as a moref: its `type` attribute and text.
    pub fn as_moref(&self) -> Option<MoRef> {
        let kind = self.type_attr.as_deref()?;
        Some(MoRef::new(kind, self.text.trim()))
    }

    /// The text parsed as an integer.
    pub fn as_int(&self) -> Option<i64> {
        self.text.trim().parse().ok()
    }

    /// The text parsed as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        parse_bool(&self.text)
    }

    /// The `xsi:type`, or else the element name.
    pub fn type_name(&self) -> &str {
        self.xsi_type.as_deref().unwrap_or(&self.name)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A vSphere fault: a SOAP fault of a call, a fault inside a task's
/// `info.error`, or one in a property's `missingSet`.
///
/// It is kept as the source of the [`hypersdk_core::Error`] it maps to, so
/// callers can read the vim25 type with [`crate::vim_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VimFault {
    /// The vim25 fault type (`InvalidLogin`, `ManagedObjectNotFound`, …),
    /// from the detail's `xsi:type`; empty if the server gave none.
    pub fault_type: String,
    /// The `faultstring` or `localizedMessage`.
    pub message: String,
    /// The detail element (the fault's fields), if any.
    pub detail: Option<Node>,
}

impl VimFault {
    /// A fault of `fault_type` with `message`.
    pub fn new(fault_type: impl Into<String>, message: impl Into<String>) -> Self {
        VimFault {
            fault_type: fault_type.into(),
            message: message.into(),
            detail: None,
        }
    }

    /// Whether the fault's type is `name`.
    pub fn is(&self, name: &str) -> bool {
        self.fault_type == name
    }

    /// Reads a `LocalizedMethodFault` (`<fault xsi:type=…>…</fault>
    /// <localizedMessage>…`), as in `TaskInfo.error`.
    pub fn from_localized(node: &Node) -> Self {
        let fault = node.child("fault");
        VimFault {
            fault_type: fault.and_then(|f| f.xsi_type.clone()).unwrap_or_default(),
            message: node
                .text_at(&["localizedMessage"])
                .unwrap_or_default()
                .to_owned(),
            detail: fault.cloned(),
        }
    }

    /// The moref a `ManagedObjectNotFound` names (`detail/obj`).
    pub fn object(&self) -> Option<MoRef> {
        self.detail.as_ref()?.child("obj")?.as_moref()
    }
}

impl fmt::Display for VimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.fault_type.is_empty() {
            "unknown fault"
        } else {
            &self.fault_type
        };
        if self.message.is_empty() {
            write!(f, "vSphere fault {kind}")
        } else {
            write!(f, "vSphere fault {kind}: {}", self.message)
        }
    }
}

impl std::error::Error for VimFault {}

/// What a SOAP response body held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoapResponse {
    /// The method's response element (`<MethodResponse>`; its result is the
    /// `returnval` child, absent for void methods).
    Ok(Node),
    /// A SOAP fault.
    Fault(VimFault),
}

/// Reads a SOAP response envelope.
///
/// # Errors
///
/// [`Error::InvalidData`] when the body is not well-formed XML, holds a
/// DOCTYPE, nests deeper than 256 elements or is not a SOAP envelope with
/// a body.
pub fn parse_response(xml: &[u8]) -> Result<SoapResponse> {
    let root = parse_document(xml)?;
    if root.name != "Envelope" || root.namespace.as_deref() != Some(SOAPENV_NS) {
        return Err(Error::invalid_data(
            OBJECT,
            format!("expected a SOAP Envelope, found <{}>", root.name),
        ));
    }
    let body = root
        .children
        .into_iter()
        .find(|c| c.name == "Body" && c.namespace.as_deref() == Some(SOAPENV_NS))
        .ok_or_else(|| Error::invalid_data(OBJECT, "the SOAP envelope has no Body"))?;
    let first = body
        .children
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid_data(OBJECT, "the SOAP Body is empty"))?;
    if first.name == "Fault" && first.namespace.as_deref() == Some(SOAPENV_NS) {
        return Ok(SoapResponse::Fault(parse_fault(&first)));
    }
    Ok(SoapResponse::Ok(first))
}

fn parse_fault(fault: &Node) -> VimFault {
    let message = fault
        .text_at(&["faultstring"])
        .unwrap_or_default()
        .to_owned();
    let detail = fault.child("detail").and_then(|d| d.children.first());
    let fault_type = match detail {
        Some(d) => match &d.xsi_type {
            Some(t) => t.clone(),
            // `<InvalidLoginFault>` without a type: strip the suffix.
            None => d.name.strip_suffix("Fault").unwrap_or(&d.name).to_owned(),
        },
        None => String::new(),
    };
    VimFault {
        fault_type,
        message,
        detail: detail.cloned(),
    }
}

/// Parses a whole XML document into a [`Node`] tree and returns its root.
///
/// Only the predefined entities and character references are expanded; a
/// DOCTYPE is refused (no DTDs, no entity expansion).
///
/// # Errors
///
/// [`Error::InvalidData`] on malformed XML, a DOCTYPE, or nesting deeper
/// than 256 elements.
pub fn parse_document(xml: &[u8]) -> Result<Node> {
    let text = std::str::from_utf8(xml)
        .map_err(|e| Error::invalid_data_with(OBJECT, "the body is not UTF-8", e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = NsReader::from_str(text);
    {
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.expand_empty_elements = false;
        cfg.trim_text(false);
    }
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let bad = |m: String| Error::invalid_data(OBJECT, m);
    loop {
        let event = reader.read_event().map_err(|e| {
            Error::invalid_data_with(
                OBJECT,
                format!("malformed XML at byte {}: {e}", reader.error_position()),
                e,
            )
        })?;
        match event {
            Event::DocType(_) => return Err(bad("a DOCTYPE is not allowed".into())),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                if stack.len() >= MAX_DEPTH {
                    return Err(bad(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                if stack.is_empty() && root.is_some() {
                    return Err(bad("a second root element".into()));
                }
                let (res, local) = reader.resolver().resolve_element(e.name());
                let namespace = match res {
                    ResolveResult::Bound(ns) => Some(ns.0.to_owned()),
                    ResolveResult::Unbound => None,
                    ResolveResult::Unknown(p) => {
                        return Err(bad(format!("undeclared namespace prefix '{p}'")));
                    }
                };
                let mut node = Node {
                    name: local.as_ref().to_owned(),
                    namespace,
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|err| {
                        Error::invalid_data_with(OBJECT, format!("malformed attribute: {err}"), err)
                    })?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (r, alocal) = reader.resolver().resolve_attribute(QName(a.key.0));
                    if alocal.as_ref() != "type" {
                        continue;
                    }
                    let value = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| {
                            Error::invalid_data_with(OBJECT, format!("bad attribute: {err}"), err)
                        })?
                        .into_owned();
                    match r {
                        ResolveResult::Bound(ns) if ns.0 == XSI_NS => {
                            let v = match value.split_once(':') {
                                Some((_, local)) => local.to_owned(),
                                None => value,
                            };
                            node.xsi_type = Some(v);
                        }
                        ResolveResult::Unbound => node.type_attr = Some(value),
                        _ => {}
                    }
                }
                if is_empty {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                if let Some(mut node) = stack.pop() {
                    if !node.children.is_empty() && node.text.trim().is_empty() {
                        node.text.clear();
                    }
                    attach(&mut stack, &mut root, node);
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let ch = r.resolve_char_ref().map_err(|err| {
                    Error::invalid_data_with(OBJECT, "bad character reference", err)
                })?;
                let piece = match ch {
                    Some(c) => c.to_string(),
                    None => match &*r {
                        "lt" => "<".to_owned(),
                        "gt" => ">".to_owned(),
                        "amp" => "&".to_owned(),
                        "apos" => "'".to_owned(),
                        "quot" => "\"".to_owned(),
                        other => return Err(bad(format!("undefined entity &{other};"))),
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&piece);
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad("unexpected end of document".into()));
    }
    root.ok_or_else(|| bad("no root element".into()))
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_escapes_and_closes() {
        let mut r = Request::new("Login", &MoRef::new("SessionManager", "SessionManager"));
        r.text("userName", "a&b<c>\"d'")
            .text("password", "p\rw")
            .start("x")
            .start_typed("selectSet", "TraversalSpec")
            .empty("skip");
        let xml = r.to_envelope().unwrap();
        assert!(
            xml.contains("<userName>a&amp;b&lt;c&gt;\"d'</userName>"),
            "{xml}"
        );
        assert!(xml.contains("<password>p&#xD;w</password>"), "{xml}");
        assert!(xml.ends_with(
            "<selectSet xsi:type=\"TraversalSpec\"><skip/></selectSet></x></Login></soapenv:Body></soapenv:Envelope>"
        ));
        // It is well-formed and reads back.
        let SoapResponse::Ok(login) = parse_response(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(login.text_at(&["userName"]), Some("a&b<c>\"d'"));
        assert_eq!(login.text_at(&["password"]), Some("p\rw"));
        assert_eq!(
            login.path(&["x", "selectSet"]).unwrap().xsi_type.as_deref(),
            Some("TraversalSpec")
        );
    }

    #[test]
    fn request_debug_hides_parameters() {
        let mut r = Request::new("Login", &MoRef::new("SessionManager", "SessionManager"));
        r.text("userName", "root").text("password", "hunter2");
        let s = format!("{r:?}");
        assert!(
            s.contains("Login") && !s.contains("hunter2") && !s.contains("root"),
            "{s}"
        );
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn unbalanced_end_is_an_error() {
        let mut r = Request::new("X", &MoRef::new("T", "v"));
        r.end();
        assert!(r.to_envelope().is_err());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "no open element")]
    fn unbalanced_end_panics_in_debug() {
        let mut r = Request::new("X", &MoRef::new("T", "v"));
        r.end();
    }

    #[test]
    fn request_refuses_control_characters() {
        let mut r = Request::new("Login", &MoRef::new("SessionManager", "SessionManager"));
        r.text("password", "a\u{1}b");
        let e = r.to_envelope().unwrap_err();
        assert_eq!(e.kind(), hypersdk_core::ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("a\u{1}b"));
    }

    #[test]
    fn xsi_type_resolved_by_namespace_not_prefix() {
        // vcsim's form, then vCenter's.
        let xml = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><R xmlns="urn:vim25"><returnval>
            <val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="xsd:string">DC0_H0_VM0</val>
            <val xsi:type="ArrayOfManagedObjectReference"><ManagedObjectReference type="Datastore">/tmp/x@folder-5</ManagedObjectReference></val>
            <val foo:type="Bogus" xmlns:foo="urn:other">x</val>
        </returnval></R></soapenv:Body></soapenv:Envelope>"#;
        let SoapResponse::Ok(r) = parse_response(xml.as_bytes()).unwrap() else {
            panic!()
        };
        let vals: Vec<&Node> = r
            .child("returnval")
            .unwrap()
            .children_named("val")
            .collect();
        assert_eq!(vals[0].xsi_type.as_deref(), Some("string"));
        assert_eq!(vals[0].text, "DC0_H0_VM0");
        assert_eq!(
            vals[1].xsi_type.as_deref(),
            Some("ArrayOfManagedObjectReference")
        );
        assert_eq!(
            vals[1].children[0].as_moref(),
            Some(MoRef::new("Datastore", "/tmp/x@folder-5"))
        );
        assert_eq!(vals[2].xsi_type, None);
        assert_eq!(vals[2].type_attr, None);
    }

    #[test]
    fn faults_are_classified_by_detail_type() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring>
<detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail>
</soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let SoapResponse::Fault(f) = parse_response(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(f.fault_type, "InvalidLogin");
        assert_eq!(f.message, "Login failure");
        assert_eq!(f.to_string(), "vSphere fault InvalidLogin: Login failure");

        let xml = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>gone</faultstring>
<detail><ManagedObjectNotFoundFault xmlns="urn:vim25"><obj type="VirtualMachineSnapshot">snapshot-3</obj></ManagedObjectNotFoundFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let SoapResponse::Fault(f) = parse_response(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(f.fault_type, "ManagedObjectNotFound");
        assert_eq!(
            f.object(),
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-3"))
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        let doctype = br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#;
        assert!(parse_document(doctype).is_err());
        let deep = format!("{}{}", "<a>".repeat(300), "</a>".repeat(300));
        assert!(parse_document(deep.as_bytes()).is_err());
        assert!(parse_document(b"<a><b></a>").is_err());
        assert!(parse_document(b"<a>&bogus;</a>").is_err());
        assert!(parse_response(b"<notsoap/>").is_err());
        assert_eq!(parse_document(b"<a>&#x41;&lt;</a>").unwrap().text, "A<");
    }
}
