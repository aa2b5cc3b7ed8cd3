//! The vim25 data types this crate reads and writes: managed object
//! references, the service content, property collector specs and results.
//!
//! Only what the SDK uses is modelled. Property values stay [`Node`] trees
//! (their `xsi:type` resolved), and the mapping code reads the fields it
//! needs from them.
//!
//! ```
//! use hypersdk_vsphere::types::{MoRef, ObjectSpec, PropertyFilterSpec, PropertySpec, SelectionSpec};
//!
//! let spec = PropertyFilterSpec::new(
//!     vec![PropertySpec::new("VirtualMachine", ["name", "runtime.powerState"])],
//!     vec![ObjectSpec::new(MoRef::new("ContainerView", "session[1]view-1"))
//!         .skip(true)
//!         .select(SelectionSpec::traversal("view", "ContainerView", "view"))],
//! );
//! assert_eq!(spec.prop_set[0].paths.len(), 2);
//! ```

use std::fmt;

use crate::soap::{Node, Request, VimFault};

/// A managed object reference: a type and an opaque value
/// (`VirtualMachine:vm-42`). Values are opaque strings: vcsim's datastore
/// morefs contain `/` and `@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// The managed object type (`VirtualMachine`).
    pub kind: String,
    /// The value (`vm-42`).
    pub value: String,
}

impl MoRef {
    /// A reference to the `kind` object `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}'", self.kind, self.value)
    }
}

/// `about` of the service content: what the server is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AboutInfo {
    /// `VMware vCenter Server 8.0.2 build-…`.
    pub full_name: String,
    /// `VirtualCenter` or `HostAgent`.
    pub api_type: String,
    /// The API version the server speaks (`8.0.2.0`); sent back as the
    /// `SOAPAction` version.
    pub api_version: String,
    /// The product version (`8.0.2`).
    pub version: String,
    /// The instance UUID of a vCenter.
    pub instance_uuid: Option<String>,
}

/// The managers of `ServiceInstance` this SDK uses, as the server names
/// them (never hard-coded: vCenter and ESXi differ).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceContent {
    /// The root folder.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The view manager.
    pub view_manager: Option<MoRef>,
    /// The session manager.
    pub session_manager: MoRef,
    /// The search index.
    pub search_index: Option<MoRef>,
    /// What the server is.
    pub about: AboutInfo,
}

impl ServiceContent {
    /// Reads a `RetrieveServiceContent` result.
    pub(crate) fn from_node(n: &Node) -> Option<Self> {
        let about = n.child("about");
        let text = |k: &str| {
            about
                .and_then(|a| a.text_at(&[k]))
                .unwrap_or_default()
                .to_owned()
        };
        Some(ServiceContent {
            root_folder: n.child("rootFolder")?.as_moref()?,
            property_collector: n.child("propertyCollector")?.as_moref()?,
            view_manager: n.child("viewManager").and_then(Node::as_moref),
            session_manager: n.child("sessionManager")?.as_moref()?,
            search_index: n.child("searchIndex").and_then(Node::as_moref),
            about: AboutInfo {
                full_name: text("fullName"),
                api_type: text("apiType"),
                api_version: text("apiVersion"),
                version: text("version"),
                instance_uuid: about
                    .and_then(|a| a.text_at(&["instanceUuid"]))
                    .map(str::to_owned),
            },
        })
    }
}

/// Which properties to collect from objects of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PropertySpec {
    /// The managed object type.
    pub kind: String,
    /// Property paths (`config.hardware.device`).
    pub paths: Vec<String>,
}

impl PropertySpec {
    /// Collect `paths` of `kind` objects.
    pub fn new(kind: &str, paths: impl IntoIterator<Item = impl Into<String>>) -> Self {
        PropertySpec {
            kind: kind.to_owned(),
            paths: paths.into_iter().map(Into::into).collect(),
        }
    }
}

/// A `SelectionSpec`: a traversal from one object to others, or a
/// reference to a named traversal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectionSpec {
    /// A `TraversalSpec`.
    Traversal {
        /// Its name, for references from other specs.
        name: Option<String>,
        /// The type it applies to.
        kind: String,
        /// The moref property followed.
        path: String,
        /// Whether the objects reached are left out of the result.
        skip: bool,
        /// What to traverse from the objects reached.
        select: Vec<SelectionSpec>,
    },
    /// A reference to a named traversal.
    Named(String),
}

impl SelectionSpec {
    /// A named traversal of `path` on `kind` objects, reached objects included.
    pub fn traversal(name: &str, kind: &str, path: &str) -> Self {
        SelectionSpec::Traversal {
            name: Some(name.to_owned()),
            kind: kind.to_owned(),
            path: path.to_owned(),
            skip: false,
            select: Vec::new(),
        }
    }

    /// Adds nested selections (no-op on [`SelectionSpec::Named`]).
    #[must_use]
    pub fn then(mut self, more: impl IntoIterator<Item = SelectionSpec>) -> Self {
        if let SelectionSpec::Traversal { select, .. } = &mut self {
            select.extend(more);
        }
        self
    }

    /// A reference to the traversal named `name`.
    pub fn named(name: &str) -> Self {
        SelectionSpec::Named(name.to_owned())
    }

    fn write(&self, r: &mut Request) {
        match self {
            SelectionSpec::Named(name) => {
                r.start("selectSet").text("name", name).end();
            }
            SelectionSpec::Traversal {
                name,
                kind,
                path,
                skip,
                select,
            } => {
                r.start_typed("selectSet", "TraversalSpec")
                    .opt_text("name", name.as_deref())
                    .text("type", kind)
                    .text("path", path)
                    .bool("skip", *skip);
                for s in select {
                    s.write(r);
                }
                r.end();
            }
        }
    }
}

/// Where collection starts: one object and the traversals from it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectSpec {
    /// The starting object.
    pub obj: MoRef,
    /// Leave the starting object itself out of the result.
    pub skip: bool,
    /// Traversals from it.
    pub select: Vec<SelectionSpec>,
}

impl ObjectSpec {
    /// Start at `obj`.
    pub fn new(obj: MoRef) -> Self {
        ObjectSpec {
            obj,
            skip: false,
            select: Vec::new(),
        }
    }

    /// Sets [`ObjectSpec::skip`].
    #[must_use]
    pub fn skip(mut self, skip: bool) -> Self {
        self.skip = skip;
        self
    }

    /// Adds a traversal.
    #[must_use]
    pub fn select(mut self, s: SelectionSpec) -> Self {
        self.select.push(s);
        self
    }
}

/// A `PropertyFilterSpec`: what to collect from which objects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PropertyFilterSpec {
    /// Properties per type.
    pub prop_set: Vec<PropertySpec>,
    /// Starting objects.
    pub object_set: Vec<ObjectSpec>,
}

impl PropertyFilterSpec {
    /// A spec of `prop_set` over `object_set`.
    pub fn new(prop_set: Vec<PropertySpec>, object_set: Vec<ObjectSpec>) -> Self {
        PropertyFilterSpec {
            prop_set,
            object_set,
        }
    }

    /// Writes the spec as the element `name` (`specSet`, `spec`).
    pub fn write(&self, r: &mut Request, name: &str) {
        r.start(name);
        for p in &self.prop_set {
            r.start("propSet").text("type", &p.kind);
            for path in &p.paths {
                r.text("pathSet", path);
            }
            r.end();
        }
        for o in &self.object_set {
            r.start("objectSet")
                .moref("obj", &o.obj)
                .bool("skip", o.skip);
            for s in &o.select {
                s.write(r);
            }
            r.end();
        }
        r.end();
    }
}

/// A property that could not be read (`missingSet`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingProperty {
    /// The property path.
    pub path: String,
    /// Why.
    pub fault: VimFault,
}

/// The properties collected from one object (`ObjectContent`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// `(path, value)` pairs; unset properties are absent.
    pub props: Vec<(String, Node)>,
    /// Properties that could not be read.
    pub missing: Vec<MissingProperty>,
}

impl ObjectContent {
    /// The value of `path`, if set.
    pub fn prop(&self, path: &str) -> Option<&Node> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The text of `path`, if set.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.prop(path).map(|n| n.text.as_str())
    }

    pub(crate) fn from_node(n: Node) -> Option<Self> {
        let obj = n.child("obj")?.as_moref()?;
        let mut props = Vec::new();
        let mut missing = Vec::new();
        for c in n.children {
            match c.name.as_str() {
                "propSet" => {
                    let mut name = None;
                    let mut val = None;
                    for f in c.children {
                        match f.name.as_str() {
                            "name" => name = Some(f.text),
                            "val" => val = Some(f),
                            _ => {}
                        }
                    }
                    if let Some(name) = name {
                        props.push((name, val.unwrap_or_default()));
                    }
                }
                "missingSet" => missing.push(MissingProperty {
                    path: c.text_at(&["path"]).unwrap_or_default().to_owned(),
                    fault: c
                        .child("fault")
                        .map(VimFault::from_localized)
                        .unwrap_or_else(|| VimFault::new("", "")),
                }),
                _ => {}
            }
        }
        Some(ObjectContent {
            obj,
            props,
            missing,
        })
    }
}

/// One page of `RetrievePropertiesEx` / `ContinueRetrievePropertiesEx`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetrieveResult {
    /// The objects of this page.
    pub objects: Vec<ObjectContent>,
    /// Set when more pages remain.
    pub token: Option<String>,
}

impl RetrieveResult {
    /// Reads a response element; a missing or empty `returnval` is an
    /// empty result (vCenter omits it, vcsim sends it empty).
    pub(crate) fn from_response(resp: Node) -> Self {
        let Some(rv) = resp.children.into_iter().find(|c| c.name == "returnval") else {
            return RetrieveResult::default();
        };
        let mut out = RetrieveResult::default();
        for c in rv.children {
            match c.name.as_str() {
                "objects" => out.objects.extend(ObjectContent::from_node(c)),
                "token" => {
                    let t = c.text.trim();
                    if !t.is_empty() {
                        out.token = Some(t.to_owned());
                    }
                }
                _ => {}
            }
        }
        out
    }
}
