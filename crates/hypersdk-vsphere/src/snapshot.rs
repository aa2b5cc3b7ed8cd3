//! VM snapshots: create, list (the tree flattened), remove.
//!
//! Snapshots are taken without memory (`memory=false`); quiescing the guest
//! file systems (needs VMware Tools) is an option. A snapshot's id is its
//! moref value (`snapshot-123`). [`list_snapshots`] flattens the
//! `snapshot.rootSnapshotList` tree oldest first, each snapshot after its
//! parent and naming it.
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client) -> hypersdk_core::Result<()> {
//! use hypersdk_vsphere::snapshot::{create_snapshot, list_snapshots, remove_snapshot, SnapshotSpec};
//! use hypersdk_vsphere::types::MoRef;
//!
//! let vm = MoRef::new("VirtualMachine", "vm-42");
//! let snap = create_snapshot(client, &vm, &SnapshotSpec::new("before-move").quiesce(true)).await?;
//! for s in list_snapshots(client, &vm).await? {
//!     println!("{} {} parent={:?}", s.moref.value, s.name, s.parent.map(|p| p.value));
//! }
//! remove_snapshot(client, &snap, false).await?;
//! # Ok(()) }
//! ```

use chrono::{DateTime, Utc};
use hypersdk_core::{Error, Result};

use crate::client::Client;
use crate::property::retrieve_one;
use crate::soap::{Node, Request};
use crate::tasks::wait_for_task;
use crate::types::MoRef;

/// What to snapshot and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotSpec {
    /// The snapshot's name.
    pub name: String,
    /// A description.
    pub description: Option<String>,
    /// Quiesce the guest file systems first (needs VMware Tools running).
    pub quiesce: bool,
}

impl SnapshotSpec {
    /// A snapshot named `name`, no description, not quiesced.
    pub fn new(name: impl Into<String>) -> Self {
        SnapshotSpec {
            name: name.into(),
            description: None,
            quiesce: false,
        }
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// Sets quiescing.
    #[must_use]
    pub fn quiesce(mut self, on: bool) -> Self {
        self.quiesce = on;
        self
    }
}

/// One snapshot of a VM (`VirtualMachineSnapshotTree`, without children).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmSnapshot {
    /// The snapshot object.
    pub moref: MoRef,
    /// The VM.
    pub vm: Option<MoRef>,
    /// Its name.
    pub name: String,
    /// Its description (`None` when empty).
    pub description: Option<String>,
    /// The per-VM snapshot number.
    pub id: i64,
    /// When it was taken.
    pub created: Option<DateTime<Utc>>,
    /// The parent snapshot.
    pub parent: Option<MoRef>,
    /// The VM's power state when it was taken.
    pub state: Option<String>,
    /// Whether the guest was quiesced.
    pub quiesced: bool,
    /// Whether this is the VM's current snapshot.
    pub current: bool,
}

/// Takes a snapshot of `vm` (memory off) and waits for it.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown VM, the task's error mapped, or
/// [`Error::InvalidData`] if the task returned no snapshot.
pub async fn create_snapshot(client: &Client, vm: &MoRef, spec: &SnapshotSpec) -> Result<MoRef> {
    let mut req = Request::new("CreateSnapshot_Task", vm);
    req.text("name", &spec.name)
        .opt_text("description", spec.description.as_deref())
        .bool("memory", false)
        .bool("quiesce", spec.quiesce);
    let what = format!("CreateSnapshot_Task '{}' on {vm}", spec.name);
    let task = client
        .invoke(&req)
        .await?
        .child("returnval")
        .and_then(Node::as_moref)
        .ok_or_else(|| Error::invalid_data(what.clone(), "no task returned"))?;
    let info = wait_for_task(client, &task, &what).await?;
    info.result_moref()
        .ok_or_else(|| Error::invalid_data(what, "the task returned no snapshot"))
}

/// The snapshots of `vm`, oldest first, each after its parent (see
/// [`flatten_snapshot_info`]).
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown VM, else the mapped fault.
pub async fn list_snapshots(client: &Client, vm: &MoRef) -> Result<Vec<VmSnapshot>> {
    let props = retrieve_one(client, vm, &["snapshot"]).await?;
    Ok(props
        .prop("snapshot")
        .map(|info| flatten_snapshot_info(info, vm))
        .unwrap_or_default())
}

/// Flattens a `VirtualMachineSnapshotInfo` into a list, oldest first,
/// every snapshot after its parent.
///
/// The order comes from the tree, not from clocks: a snapshot is listed
/// once its parent is, and among the snapshots ready to be listed the one
/// with the lowest per-VM `id` (the creation order vSphere numbers them in)
/// comes first, then by `createTime`, then by moref. A skewed host clock or
/// an unparseable `createTime` can therefore never put a child before its
/// parent.
pub fn flatten_snapshot_info(info: &Node, vm: &MoRef) -> Vec<VmSnapshot> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    type Key = (i64, Option<DateTime<Utc>>, MoRef);
    let current = info.child("currentSnapshot").and_then(Node::as_moref);
    let read = |n: &Node, parent: Option<MoRef>| -> Option<VmSnapshot> {
        let moref = n.child("snapshot").and_then(Node::as_moref)?;
        Some(VmSnapshot {
            vm: n
                .child("vm")
                .and_then(Node::as_moref)
                .or_else(|| Some(vm.clone())),
            name: n.text_at(&["name"]).unwrap_or_default().to_owned(),
            description: n
                .text_at(&["description"])
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            id: n.int_at(&["id"]).unwrap_or_default(),
            created: n
                .text_at(&["createTime"])
                .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
                .map(|t| t.with_timezone(&Utc)),
            parent,
            state: n.text_at(&["state"]).map(str::to_owned),
            quiesced: n.bool_at(&["quiesced"]).unwrap_or(false),
            current: current.as_ref() == Some(&moref),
            moref,
        })
    };
    // Snapshots ready to be listed (their parent is), smallest key first;
    // the node is kept beside the snapshot to reach its children.
    let mut ready: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
    let mut nodes: Vec<(&Node, VmSnapshot)> = Vec::new();
    let mut queue: Vec<(&Node, Option<MoRef>)> = info
        .children_named("rootSnapshotList")
        .map(|n| (n, None))
        .collect();
    let mut order = Vec::new();
    loop {
        for (n, parent) in queue.drain(..) {
            if let Some(s) = read(n, parent) {
                let key = (s.id, s.created, s.moref.clone());
                nodes.push((n, s));
                ready.push(Reverse((key, nodes.len() - 1)));
            }
        }
        let Some(Reverse((_, i))) = ready.pop() else {
            break;
        };
        order.push(i);
        let (n, s) = &nodes[i];
        queue.extend(
            n.children_named("childSnapshotList")
                .map(|c| (c, Some(s.moref.clone()))),
        );
    }
    let mut slots: Vec<Option<VmSnapshot>> = nodes.into_iter().map(|(_, s)| Some(s)).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

/// Removes a snapshot, and its children with `remove_children`, and
/// waits for it. The disks are consolidated.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown snapshot, else the task's error.
pub async fn remove_snapshot(
    client: &Client,
    snapshot: &MoRef,
    remove_children: bool,
) -> Result<()> {
    let mut req = Request::new("RemoveSnapshot_Task", snapshot);
    req.bool("removeChildren", remove_children)
        .bool("consolidate", true);
    let what = format!("RemoveSnapshot_Task on {snapshot}");
    let task = client
        .invoke(&req)
        .await?
        .child("returnval")
        .and_then(Node::as_moref)
        .ok_or_else(|| Error::invalid_data(what.clone(), "no task returned"))?;
    wait_for_task(client, &task, &what).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::parse_document;

    #[test]
    fn tree_is_flattened_oldest_first_with_parents() {
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineSnapshotInfo">
 <currentSnapshot type="VirtualMachineSnapshot">snapshot-80</currentSnapshot>
 <rootSnapshotList>
  <snapshot type="VirtualMachineSnapshot">snapshot-69</snapshot><vm type="VirtualMachine">vm-63</vm>
  <name>s1</name><description>d</description><id>1</id><createTime>2026-01-01T10:00:00Z</createTime>
  <state>poweredOn</state><quiesced>false</quiesced>
  <childSnapshotList>
   <snapshot type="VirtualMachineSnapshot">snapshot-74</snapshot><vm type="VirtualMachine">vm-63</vm>
   <name>s2</name><description></description><id>2</id><createTime>2026-01-01T11:00:00Z</createTime><state>poweredOn</state><quiesced>true</quiesced>
   <childSnapshotList>
    <snapshot type="VirtualMachineSnapshot">snapshot-80</snapshot><vm type="VirtualMachine">vm-63</vm>
    <name>s4</name><id>4</id><createTime>2026-01-01T13:00:00Z</createTime><state>poweredOff</state><quiesced>false</quiesced>
   </childSnapshotList>
  </childSnapshotList>
  <childSnapshotList>
   <snapshot type="VirtualMachineSnapshot">snapshot-77</snapshot><vm type="VirtualMachine">vm-63</vm>
   <name>s3</name><id>3</id><createTime>2026-01-01T12:00:00Z</createTime><state>poweredOn</state><quiesced>false</quiesced>
  </childSnapshotList>
 </rootSnapshotList>
</val>"#;
        let node = parse_document(xml.as_bytes()).unwrap();
        let list = flatten_snapshot_info(&node, &MoRef::new("VirtualMachine", "vm-63"));
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s1", "s2", "s3", "s4"]);
        let parents: Vec<Option<&str>> = list
            .iter()
            .map(|s| s.parent.as_ref().map(|p| p.value.as_str()))
            .collect();
        assert_eq!(
            parents,
            [
                None,
                Some("snapshot-69"),
                Some("snapshot-69"),
                Some("snapshot-74")
            ]
        );
        assert_eq!(list[0].description.as_deref(), Some("d"));
        assert_eq!(list[1].description, None);
        assert!(list[1].quiesced);
        assert!(list[3].current && !list[0].current);
    }

    #[test]
    fn skewed_clocks_never_put_a_child_before_its_parent() {
        // s2's host clock ran behind (created "before" its parent s1); s3 has
        // no parseable time; s5 (id 5) is a sibling of s3 but older by clock.
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineSnapshotInfo">
 <rootSnapshotList>
  <snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>s1</name><id>1</id><createTime>2026-01-01T10:00:00Z</createTime>
  <childSnapshotList>
   <snapshot type="VirtualMachineSnapshot">snapshot-2</snapshot><name>s2</name><id>2</id><createTime>2025-06-01T10:00:00Z</createTime>
   <childSnapshotList>
    <snapshot type="VirtualMachineSnapshot">snapshot-3</snapshot><name>s3</name><id>3</id><createTime>garbage</createTime>
    <childSnapshotList>
     <snapshot type="VirtualMachineSnapshot">snapshot-4</snapshot><name>s4</name><id>4</id><createTime>2020-01-01T00:00:00Z</createTime>
    </childSnapshotList>
   </childSnapshotList>
   <childSnapshotList>
    <snapshot type="VirtualMachineSnapshot">snapshot-5</snapshot><name>s5</name><id>5</id><createTime>2019-01-01T00:00:00Z</createTime>
   </childSnapshotList>
  </childSnapshotList>
 </rootSnapshotList>
</val>"#;
        let node = parse_document(xml.as_bytes()).unwrap();
        let list = flatten_snapshot_info(&node, &MoRef::new("VirtualMachine", "vm-1"));
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s1", "s2", "s3", "s4", "s5"]);
        assert_eq!(list[2].created, None);
        for (i, s) in list.iter().enumerate() {
            if let Some(p) = &s.parent {
                let at = list.iter().position(|x| x.moref == *p).unwrap();
                assert!(at < i, "{} listed before its parent", s.name);
            }
        }
    }
}
