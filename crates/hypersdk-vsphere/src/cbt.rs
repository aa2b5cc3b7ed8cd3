//! Changed block tracking (CBT): turn it on, ask vSphere what changed on a
//! disk between two points, and copy only that.
//!
//! - [`enable_change_tracking`] / [`disable_change_tracking`]:
//!   `ReconfigVM_Task` with `changeTrackingEnabled`, after checking
//!   `capability.changeTrackingSupported` (hardware version 7 or later). On
//!   a powered-on VM vSphere applies it at the next stun/unstun cycle; the
//!   snapshot an incremental flow takes next is one.
//! - [`snapshot_disks`] / [`vm_disks`]: each disk's device key, capacity,
//!   backing and **`changeId`** as of a snapshot (read from the snapshot's
//!   own `config.hardware.device`) or now.
//! - [`query_changed_disk_areas`]: one `QueryChangedDiskAreas` call, which
//!   covers only a window of the disk (`[startOffset, startOffset+length)`);
//!   [`changed_areas`] loops it from offset 0 until the disk's capacity is
//!   covered, into a core [`ExtentList`]. A server answer of length 0 before
//!   the end stops the loop and the rest of the disk counts as changed:
//!   over-reporting is safe, losing the tail is not.
//! - [`Since::Start`] is `changeId="*"`: the disk's allocated areas, the
//!   basis of a first full copy. vSphere answers it reliably only on VMFS
//!   (other storage may fault or return one area covering the disk), so
//!   when it faults the whole disk is used instead
//!   ([`ChangedAreas::full_fallback`] says why).
//! - [`changed_extents`]: the core
//!   [`Provider::changed_extents`](hypersdk_core::provider::Provider::changed_extents)
//!   between two snapshots of a VM.
//! - [`export_disk_changes`]: reads the changed extents of a snapshot's
//!   disk from its flat extent (`/folder` `Range` reads through
//!   [`DatastoreFiles`]) with core's copy engine
//!   ([`hypersdk_core::blocks::copy_extents`]) into a local sparse raw
//!   image: a new image for [`Since::Start`], the image of the previous
//!   export patched in place for [`Since::ChangeId`].
//!
//! The incremental flow (vSphere's VDDK guide; see
//! `shared/notes/vsphere-api.md` §7):
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client) -> hypersdk_core::Result<()> {
//! use hypersdk_core::blocks::CopyOptions;
//! use hypersdk_vsphere::cbt::{Since, enable_change_tracking, export_disk_changes};
//! use hypersdk_vsphere::snapshot::{SnapshotSpec, create_snapshot, remove_snapshot};
//! use hypersdk_vsphere::types::MoRef;
//!
//! let vm = MoRef::new("VirtualMachine", "vm-42");
//! enable_change_tracking(client, &vm).await?;
//! let image = std::path::Path::new("/backup/web01-disk2000.raw");
//!
//! // First a full copy of what is allocated.
//! let s1 = create_snapshot(client, &vm, &SnapshotSpec::new("base")).await?;
//! let full = export_disk_changes(client, &vm, &s1, 2000, &Since::Start, image, &CopyOptions::default()).await?;
//! remove_snapshot(client, &s1, false).await?;
//! let mut landmark = full.change_id.expect("CBT is on");
//!
//! // Later: only what changed since.
//! let s2 = create_snapshot(client, &vm, &SnapshotSpec::new("next")).await?;
//! let delta = export_disk_changes(
//!     client, &vm, &s2, 2000, &Since::ChangeId(landmark.clone()), image, &CopyOptions::default(),
//! ).await?;
//! println!("{} bytes changed", delta.extents.total_bytes());
//! landmark = delta.change_id.expect("CBT is on");
//! remove_snapshot(client, &s2, false).await?;
//! # let _ = landmark; Ok(()) }
//! ```
//!
//! Reading a snapshot's disk through `/folder` works while that snapshot's
//! disk is the flat base disk (the usual flow: the previous snapshot was
//! removed before the next was taken). A snapshot whose disk is a delta
//! disk (an older snapshot with a newer one on top) cannot be read that
//! way; [`export_disk_changes`] then fails with
//! [`Error::Unsupported`]. vSAN does not
//! serve disks through `/folder` at all.

use std::path::{Path, PathBuf};

use hypersdk_core::blocks::{
    BlockSource, CopyOptions, CopyReport, SparseFile, copy_extents, copy_to_file,
};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::provider::ChangedExtents;
use hypersdk_core::{Error, ErrorKind, Result};

use crate::client::{Client, vim_fault};
use crate::datastore::{DatastoreFiles, DatastorePath, list_datastores};
use crate::property::retrieve_one;
use crate::soap::{Node, Request};
use crate::tasks::wait_for_task;
use crate::types::MoRef;

/// The `changeId` that asks for every allocated area of a disk.
pub const ALL_ALLOCATED: &str = "*";

/// Where a change query starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Since {
    /// The beginning: every allocated area (`changeId="*"`), for a first
    /// full copy.
    Start,
    /// The state a disk had when it had this `changeId` (read from a
    /// snapshot's config, or kept from the previous copy): only what
    /// changed since.
    ChangeId(String),
}

impl Since {
    /// The `changeId` argument of `QueryChangedDiskAreas`.
    pub fn change_id(&self) -> &str {
        match self {
            Since::Start => ALL_ALLOCATED,
            Since::ChangeId(id) => id,
        }
    }
}

/// Whether a VM can track changes and does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeTracking {
    /// `capability.changeTrackingSupported`; `None` when the server does not
    /// say.
    pub supported: Option<bool>,
    /// `config.changeTrackingEnabled`.
    pub enabled: bool,
}

/// A virtual disk as changed block tracking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackedDisk {
    /// Device key (the core disk id is its decimal form).
    pub key: i64,
    /// Capacity in bytes: `capacityInBytes`, else `capacityInKB × 1024`.
    pub capacity_bytes: u64,
    /// Backing file (`[ds] web01/web01.vmdk`).
    pub file_name: Option<String>,
    /// The backing's datastore.
    pub datastore: Option<MoRef>,
    /// Backing type (`VirtualDiskFlatVer2BackingInfo`).
    pub backing_type: Option<String>,
    /// The backing's change id: present only with tracking on (and, for a
    /// snapshot, only if it was on when the snapshot was taken).
    pub change_id: Option<String>,
    /// Whether the backing has a parent: a delta disk of a snapshot chain.
    pub delta: bool,
}

impl TrackedDisk {
    /// The disk's flat extent (`[ds] dir/name-flat.vmdk` for
    /// `[ds] dir/name.vmdk`): where `/folder` serves its raw bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a delta disk or a backing that is not a
    /// flat disk (sparse, SE sparse, raw device mapping);
    /// [`Error::InvalidData`] for a missing or malformed file name.
    pub fn flat_extent(&self) -> Result<DatastorePath> {
        let what = format!("disk {}", self.key);
        let flat_backing = matches!(
            self.backing_type.as_deref(),
            Some("VirtualDiskFlatVer2BackingInfo" | "VirtualDiskFlatVer1BackingInfo")
        );
        if self.delta || !flat_backing {
            return Err(Error::unsupported(
                format!(
                    "reading {what} ({}{}) through /folder: only a flat base disk has a \
                     flat extent to read; export the snapshot instead",
                    self.backing_type.as_deref().unwrap_or("unknown backing"),
                    if self.delta { ", a delta disk" } else { "" }
                ),
                "vsphere",
            ));
        }
        let name = self
            .file_name
            .as_deref()
            .ok_or_else(|| Error::invalid_data(what.clone(), "the backing has no file name"))?;
        let path: DatastorePath = name.parse()?;
        let Some(stem) = path.path.strip_suffix(".vmdk") else {
            return Err(Error::invalid_data(
                what,
                format!("backing file '{name}' does not end in .vmdk"),
            ));
        };
        DatastorePath::new(path.datastore.clone(), format!("{stem}-flat.vmdk"))
    }
}

/// One `QueryChangedDiskAreas` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskChangeInfo {
    /// The first byte the answer covers (the `startOffset` asked for).
    pub start_offset: u64,
    /// How many bytes it covers; the next call starts at
    /// `start_offset + length`.
    pub length: u64,
    /// The changed (or, for `"*"`, allocated) areas in that window.
    pub changed: Vec<Extent>,
}

/// What [`changed_areas`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangedAreas {
    /// The disk's capacity the query covered.
    pub capacity: u64,
    /// Changed (or allocated) ranges, sorted, touching ranges merged.
    pub extents: ExtentList,
    /// `QueryChangedDiskAreas` calls made.
    pub calls: u32,
    /// Set when the whole disk is reported instead of what the server
    /// said: why (the server refused `"*"`, answered one area covering the
    /// disk, or stopped answering before the end).
    pub full_fallback: Option<String>,
}

/// Reads whether `vm` supports and has changed block tracking.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown VM, else the mapped fault.
pub async fn change_tracking(client: &Client, vm: &MoRef) -> Result<ChangeTracking> {
    let props = retrieve_one(
        client,
        vm,
        &[
            "capability.changeTrackingSupported",
            "config.changeTrackingEnabled",
        ],
    )
    .await?;
    Ok(ChangeTracking {
        supported: props
            .prop("capability.changeTrackingSupported")
            .and_then(Node::as_bool),
        enabled: props
            .prop("config.changeTrackingEnabled")
            .and_then(Node::as_bool)
            .unwrap_or(false),
    })
}

/// Turns changed block tracking on (`ReconfigVM_Task`); returns `false`
/// when it was on already (nothing is changed then).
///
/// Changes from before it was on cannot be asked for: take the base
/// snapshot after this call.
///
/// # Errors
///
/// [`Error::Unsupported`] when the VM says it cannot track changes (virtual
/// hardware older than version 7); the task's error mapped; an error if the
/// VM still reports tracking off afterwards.
pub async fn enable_change_tracking(client: &Client, vm: &MoRef) -> Result<bool> {
    let state = change_tracking(client, vm).await?;
    if state.supported == Some(false) {
        let version = retrieve_one(client, vm, &["config.version"])
            .await
            .ok()
            .and_then(|p| p.text("config.version").map(str::to_owned))
            .unwrap_or_else(|| "an unknown version".to_owned());
        return Err(Error::unsupported(
            format!(
                "changed block tracking on {vm} (capability.changeTrackingSupported is false: \
                 it needs virtual hardware version 7 or later; the VM has {version})"
            ),
            "vsphere",
        ));
    }
    if state.enabled {
        return Ok(false);
    }
    set_change_tracking(client, vm, true).await?;
    Ok(true)
}

/// Turns changed block tracking off; returns `false` when it was off
/// already. Every change id of the VM's disks becomes invalid: the next
/// copy after turning it on again must be a full one.
///
/// # Errors
///
/// The task's error mapped; an error if the VM still reports tracking on
/// afterwards.
pub async fn disable_change_tracking(client: &Client, vm: &MoRef) -> Result<bool> {
    if !change_tracking(client, vm).await?.enabled {
        return Ok(false);
    }
    set_change_tracking(client, vm, false).await?;
    Ok(true)
}

async fn set_change_tracking(client: &Client, vm: &MoRef, on: bool) -> Result<()> {
    let mut req = Request::new("ReconfigVM_Task", vm);
    req.start("spec").bool("changeTrackingEnabled", on).end();
    let what = format!("ReconfigVM_Task (changeTrackingEnabled={on}) on {vm}");
    let task = client
        .invoke(&req)
        .await?
        .child("returnval")
        .and_then(Node::as_moref)
        .ok_or_else(|| Error::invalid_data(what.clone(), "no task returned"))?;
    wait_for_task(client, &task, &what).await?;
    let now = change_tracking(client, vm).await?;
    if now.enabled != on {
        return Err(Error::other(format!(
            "{what} succeeded but config.changeTrackingEnabled is still {}",
            now.enabled
        )));
    }
    tracing::debug!(%vm, on, "changed block tracking reconfigured");
    Ok(())
}

/// Reads the disks in a `config.hardware.device` value.
fn disks_of(devices: Option<&Node>) -> Vec<TrackedDisk> {
    let Some(devices) = devices else {
        return Vec::new();
    };
    devices
        .children
        .iter()
        .filter(|d| d.type_name() == "VirtualDisk")
        .filter_map(|d| {
            let key = d.int_at(&["key"])?;
            let backing = d.child("backing");
            let btext = |k: &str| {
                backing
                    .and_then(|b| b.text_at(&[k]))
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
            };
            let capacity_bytes = d
                .int_at(&["capacityInBytes"])
                .filter(|b| *b > 0)
                .or_else(|| {
                    d.int_at(&["capacityInKB"])
                        .map(|kb| kb.saturating_mul(1024))
                })
                .and_then(|b| u64::try_from(b).ok())
                .unwrap_or(0);
            Some(TrackedDisk {
                key,
                capacity_bytes,
                file_name: btext("fileName"),
                datastore: backing
                    .and_then(|b| b.child("datastore"))
                    .and_then(Node::as_moref),
                backing_type: backing.and_then(|b| b.xsi_type.clone()),
                change_id: btext("changeId"),
                delta: backing.and_then(|b| b.child("parent")).is_some(),
            })
        })
        .collect()
}

/// The disks of `vm` now, with their current change ids.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown VM, else the mapped fault.
pub async fn vm_disks(client: &Client, vm: &MoRef) -> Result<Vec<TrackedDisk>> {
    let props = retrieve_one(client, vm, &["config.hardware.device"]).await?;
    Ok(disks_of(props.prop("config.hardware.device")))
}

/// The disks of a snapshot as they were when it was taken (its own
/// `config.hardware.device`), after checking that it is a snapshot of `vm`.
///
/// # Errors
///
/// [`Error::NotFound`] when there is no such snapshot, or it belongs to
/// another VM; else the mapped fault.
pub async fn snapshot_disks(
    client: &Client,
    vm: &MoRef,
    snapshot: &MoRef,
) -> Result<Vec<TrackedDisk>> {
    let not_found = || Error::not_found(format!("{snapshot} of {vm}"));
    let props = retrieve_one(client, snapshot, &["vm", "config.hardware.device"])
        .await
        .map_err(|e| if e.is_not_found() { not_found() } else { e })?;
    match props.prop("vm").and_then(Node::as_moref) {
        Some(owner) if owner.value == vm.value => {}
        _ => return Err(not_found()),
    }
    Ok(disks_of(props.prop("config.hardware.device")))
}

fn find_disk(disks: Vec<TrackedDisk>, key: i64, at: &str) -> Result<TrackedDisk> {
    disks
        .into_iter()
        .find(|d| d.key == key)
        .ok_or_else(|| Error::not_found(format!("disk with device key {key} in {at}")))
}

/// One `QueryChangedDiskAreas` call: the changes of disk `device_key` of
/// `vm` since `change_id` (`"*"`: the allocated areas) up to `snapshot`
/// (the current state when `None`, which vSphere allows for powered-off
/// VMs only), in the window the server chooses from `start_offset` on.
///
/// # Errors
///
/// The mapped fault (a `FileFault` when tracking is off or the change id
/// is not valid for the disk: an [`Error::Other`] whose
/// [`vim_fault`] is the `FileFault`); [`Error::InvalidData`] for an answer
/// that does not start at `start_offset` or holds negative or overflowing
/// numbers.
pub async fn query_changed_disk_areas(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    device_key: i64,
    start_offset: u64,
    change_id: &str,
) -> Result<DiskChangeInfo> {
    let offset = i64::try_from(start_offset).map_err(|_| {
        Error::invalid_input(format!(
            "QueryChangedDiskAreas start offset {start_offset} does not fit a 64-bit signed integer"
        ))
    })?;
    let mut req = Request::new("QueryChangedDiskAreas", vm);
    if let Some(s) = snapshot {
        req.moref("snapshot", s);
    }
    req.int("deviceKey", device_key)
        .int("startOffset", offset)
        .text("changeId", change_id);
    let resp = client.invoke_idempotent(&req).await?;
    let what =
        format!("QueryChangedDiskAreas of disk {device_key} of {vm} at offset {start_offset}");
    let ret = resp
        .child("returnval")
        .ok_or_else(|| Error::invalid_data(what.clone(), "no returnval in the answer"))?;
    let number = |n: &Node, field: &str| -> Result<u64> {
        n.int_at(&[field])
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| {
                Error::invalid_data(
                    what.clone(),
                    format!("'{field}' is missing, not a number or negative"),
                )
            })
    };
    let info = DiskChangeInfo {
        start_offset: number(ret, "startOffset")?,
        length: number(ret, "length")?,
        changed: ret
            .children_named("changedArea")
            .map(|a| {
                Extent::try_new(number(a, "start")?, number(a, "length")?)
                    .map_err(|e| Error::invalid_data(what.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if info.start_offset != start_offset {
        return Err(Error::invalid_data(
            what,
            format!(
                "the answer starts at offset {}, not at the one asked for",
                info.start_offset
            ),
        ));
    }
    if info.start_offset.checked_add(info.length).is_none() {
        return Err(Error::invalid_data(what, "startOffset + length overflows"));
    }
    Ok(info)
}

/// Every change of disk `device_key` of `vm` since `since` up to
/// `snapshot`, over a disk of `capacity` bytes: `QueryChangedDiskAreas`
/// looped from offset 0, each call starting where the previous answer's
/// window ended, until `capacity` is covered.
///
/// Areas reaching past `capacity` are cut at it. An answer of length 0
/// before the end ends the loop and counts the rest of the disk as changed.
/// For [`Since::Start`] a server that refuses `"*"` (a `FileFault`,
/// `NotSupported` or a missing method) gives the whole disk
/// ([`ChangedAreas::full_fallback`]).
///
/// # Errors
///
/// For [`Since::ChangeId`], when vSphere cannot report changes since that
/// id (a `FileFault`): [`Error::Conflict`] saying why (tracking off, or the
/// id no longer valid: tracking was reset, or it belongs to another disk);
/// the caller must make a full copy. Otherwise the mapped fault or
/// transport error.
pub async fn changed_areas(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    device_key: i64,
    capacity: u64,
    since: &Since,
) -> Result<ChangedAreas> {
    match query_loop(client, vm, snapshot, device_key, capacity, since).await {
        Ok(areas) => Ok(areas),
        Err(e) if *since == Since::Start && refuses_star(&e) => {
            let why = format!("the server refused changeId \"*\" ({e})");
            tracing::warn!(%vm, device_key, reason = %why, "copying the whole disk");
            Ok(ChangedAreas {
                capacity,
                extents: ExtentList::full(capacity),
                calls: 0,
                full_fallback: Some(why),
            })
        }
        Err(e) if is_file_fault(&e) => Err(explain_refusal(client, vm, device_key, since, e).await),
        Err(e) => Err(e),
    }
}

fn is_file_fault(e: &Error) -> bool {
    vim_fault(e).is_some_and(|f| f.is("FileFault"))
}

/// Faults with which a server says it cannot answer `"*"`.
fn refuses_star(e: &Error) -> bool {
    // NotSupported and MethodNotFound map to Unsupported.
    is_file_fault(e) || e.kind() == ErrorKind::Unsupported
}

/// The clear error for a refused change id.
async fn explain_refusal(
    client: &Client,
    vm: &MoRef,
    device_key: i64,
    since: &Since,
    fault: Error,
) -> Error {
    let disk = format!("disk {device_key} of {vm}");
    let reason = match change_tracking(client, vm).await {
        Ok(t) if !t.enabled => format!(
            "changed block tracking is not enabled on {vm} (config.changeTrackingEnabled is \
             false): enable it, take a new snapshot and make a full copy"
        ),
        _ => format!(
            "vSphere cannot report the changes since change id '{}' ({fault}): changed block \
             tracking was turned off or reset since, or the id belongs to another disk; make a \
             full copy and keep its new change id",
            since.change_id()
        ),
    };
    Error::Conflict {
        object: disk,
        message: reason,
    }
}

async fn query_loop(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    device_key: i64,
    capacity: u64,
    since: &Since,
) -> Result<ChangedAreas> {
    let mut extents = Vec::new();
    let mut offset = 0u64;
    let mut calls = 0u32;
    let mut full_fallback = None;
    while offset < capacity {
        let info =
            query_changed_disk_areas(client, vm, snapshot, device_key, offset, since.change_id())
                .await?;
        calls = calls.saturating_add(1);
        for area in &info.changed {
            let end = area.end().min(capacity);
            if end > area.offset {
                extents.push(Extent::new(area.offset, end - area.offset));
            }
        }
        if info.length == 0 {
            let why = format!(
                "QueryChangedDiskAreas answered an empty window at offset {offset} of {capacity} \
                 bytes; the rest of the disk counts as changed"
            );
            tracing::warn!(%vm, device_key, "{why}");
            extents.push(Extent::new(offset, capacity - offset));
            full_fallback = Some(why);
            break;
        }
        offset = info.start_offset + info.length;
    }
    let extents = ExtentList::from_unsorted(extents).squash();
    if full_fallback.is_none()
        && *since == Since::Start
        && capacity > 0
        && extents.as_slice() == [Extent::new(0, capacity)]
    {
        full_fallback =
            Some("the server answered \"*\" with one area covering the whole disk".to_owned());
    }
    tracing::debug!(
        %vm,
        device_key,
        calls,
        extents = extents.len(),
        bytes = extents.total_bytes(),
        "changed disk areas"
    );
    Ok(ChangedAreas {
        capacity,
        extents,
        calls,
        full_fallback,
    })
}

/// What changed on disk `disk_id` (its device key) of `vm` from snapshot
/// `from` to snapshot `to` (snapshot moref values), for
/// [`Provider::changed_extents`](hypersdk_core::provider::Provider::changed_extents).
///
/// With `from = None`, or a disk that `from` does not have (added since),
/// every allocated area of the disk at `to` (`"*"`, or the whole disk where
/// the server cannot tell). `freed` is `None`: vSphere reports freed ranges
/// as changed.
///
/// # Errors
///
/// [`Error::NotFound`] for a disk id that is not a device key of the disk
/// at `to`, or a snapshot that is not `vm`'s; [`Error::Conflict`] when
/// `from` was taken before tracking was on, or vSphere cannot report the
/// changes since it (tracking off, or reset since); else the mapped fault.
pub async fn changed_extents(
    client: &Client,
    vm: &MoRef,
    disk_id: &str,
    from: Option<&str>,
    to: &str,
) -> Result<ChangedExtents> {
    let key: i64 = disk_id.trim().parse().map_err(|_| {
        Error::not_found(format!(
            "disk '{disk_id}' of {vm} (vSphere disk ids are device keys, e.g. '2000')"
        ))
    })?;
    let to_snap = MoRef::new("VirtualMachineSnapshot", to);
    let disk = find_disk(
        snapshot_disks(client, vm, &to_snap).await?,
        key,
        &format!("{to_snap}"),
    )?;
    let since = match from {
        None => Since::Start,
        Some(from) => {
            let from_snap = MoRef::new("VirtualMachineSnapshot", from);
            let then = snapshot_disks(client, vm, &from_snap).await?;
            match then.into_iter().find(|d| d.key == key) {
                // Added after `from`: everything in it is new.
                None => Since::Start,
                Some(d) => match d.change_id {
                    Some(id) => Since::ChangeId(id),
                    None => {
                        return Err(Error::Conflict {
                            object: format!("disk {key} of {vm}"),
                            message: format!(
                                "{from_snap} has no change id for this disk: it was taken \
                                 before changed block tracking was enabled; take a new base \
                                 snapshot after enabling it"
                            ),
                        });
                    }
                },
            }
        }
    };
    let areas = changed_areas(client, vm, Some(&to_snap), key, disk.capacity_bytes, &since).await?;
    Ok(ChangedExtents {
        disk_size: disk.capacity_bytes,
        changed: areas.extents,
        freed: None,
    })
}

/// What [`export_disk_changes`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiskChangesReport {
    /// The image written.
    pub image: PathBuf,
    /// The disk's device key.
    pub device_key: i64,
    /// The disk's capacity at the snapshot: the image's length.
    pub capacity: u64,
    /// The disk's change id at the snapshot: pass it as
    /// [`Since::ChangeId`] next time. `None` when tracking was off when the
    /// snapshot was taken (the copy is then a full one and cannot be
    /// followed by an incremental one).
    pub change_id: Option<String>,
    /// The ranges copied.
    pub extents: ExtentList,
    /// `QueryChangedDiskAreas` calls made.
    pub query_calls: u32,
    /// Why the whole disk was copied instead of what the server reported,
    /// if it was.
    pub full_fallback: Option<String>,
    /// What the copy engine did.
    pub copy: CopyReport,
}

/// Copies what changed on disk `device_key` of `vm` up to `snapshot` into
/// the local raw image at `image`, reading the snapshot's flat extent
/// through `/folder` with core's copy engine (`options`: chunk size,
/// parallelism, retries, progress, digests of the whole image).
///
/// - [`Since::Start`]: a new sparse image of the disk's capacity holding
///   its allocated areas (the whole disk where the server cannot tell),
///   written to `<image>.part` and renamed to `image` when complete (an
///   earlier file there is replaced only then).
/// - [`Since::ChangeId`]: `image` must be the image of the export that
///   returned that change id (or of an earlier one: changes accumulate). It
///   is moved to `<image>.part`, the changed ranges are written into it
///   (zeros punched), and it is moved back once complete and synced. If
///   this fails or is interrupted, `image` is absent and `<image>.part`
///   holds a partly patched image: calling again with the same `since` (up
///   to the same or a later snapshot) finishes it, since writing a changed
///   range twice does no harm.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown snapshot or disk, or a missing base
/// image; [`Error::InvalidInput`] for a base image of another length than
/// the disk; [`Error::Unsupported`] when the snapshot's disk is a delta
/// disk or not a flat disk; [`Error::Conflict`] when the changes since
/// `since` cannot be reported (see [`changed_areas`]);
/// [`Error::InvalidData`] when the flat extent's length is not the disk's
/// capacity; else the transfer's or the file system's error.
pub async fn export_disk_changes(
    client: &Client,
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i64,
    since: &Since,
    image: &Path,
    options: &CopyOptions,
) -> Result<DiskChangesReport> {
    let disk = find_disk(
        snapshot_disks(client, vm, snapshot).await?,
        device_key,
        &format!("{snapshot}"),
    )?;
    let flat = disk.flat_extent()?;
    let datacenter = datacenter_of(client, &disk, &flat).await?;
    let areas = changed_areas(
        client,
        vm,
        Some(snapshot),
        device_key,
        disk.capacity_bytes,
        since,
    )
    .await?;
    let source = DatastoreFiles::new(client, &datacenter).open(&flat).await?;
    if source.len() != disk.capacity_bytes {
        return Err(Error::invalid_data(
            format!("{flat}"),
            format!(
                "the flat extent is {} bytes, but disk {device_key} of {snapshot} has a capacity \
                 of {} bytes",
                source.len(),
                disk.capacity_bytes
            ),
        ));
    }
    let copy = match since {
        Since::Start => {
            copy_to_file(&source, image, Some(&areas.extents), None, None, options).await?
        }
        Since::ChangeId(_) => {
            patch_image(&source, image, disk.capacity_bytes, &areas.extents, options).await?
        }
    };
    tracing::info!(
        %vm,
        %snapshot,
        device_key,
        image = %image.display(),
        changed = areas.extents.total_bytes(),
        fetched = copy.bytes_fetched,
        "disk changes exported"
    );
    Ok(DiskChangesReport {
        image: image.to_path_buf(),
        device_key,
        capacity: disk.capacity_bytes,
        change_id: disk.change_id,
        extents: areas.extents,
        query_calls: areas.calls,
        full_fallback: areas.full_fallback,
        copy,
    })
}

/// The inventory path of the datacenter holding a disk's datastore (the
/// `dcPath` of its `/folder` URLs).
async fn datacenter_of(
    client: &Client,
    disk: &TrackedDisk,
    flat: &DatastorePath,
) -> Result<String> {
    let all = list_datastores(client).await?;
    if let Some(ds) = disk
        .datastore
        .as_ref()
        .and_then(|m| all.iter().find(|d| d.moref == *m))
    {
        return Ok(ds.datacenter.clone());
    }
    let mut named = all.iter().filter(|d| d.name == flat.datastore);
    match (named.next(), named.next()) {
        (Some(ds), None) => Ok(ds.datacenter.clone()),
        (None, _) => Err(Error::not_found(format!(
            "datastore '{}' of disk {}",
            flat.datastore, disk.key
        ))),
        (Some(_), Some(_)) => Err(Error::Conflict {
            object: format!("datastore '{}'", flat.datastore),
            message: format!(
                "several datacenters have a datastore of that name and disk {} does not say \
                 which one it is on",
                disk.key
            ),
        }),
    }
}

/// Writes `extents` of `source` into the existing image at `image`, in
/// place through `<image>.part` (see [`export_disk_changes`]).
async fn patch_image(
    source: &dyn BlockSource,
    image: &Path,
    len: u64,
    extents: &ExtentList,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let part = SparseFile::part_path_for(image)?;
    let exists = |p: &Path| {
        let p = p.to_path_buf();
        async move {
            tokio::fs::try_exists(&p)
                .await
                .map_err(|e| Error::io(p.display().to_string(), e))
        }
    };
    if exists(image).await? {
        let meta = tokio::fs::metadata(image)
            .await
            .map_err(|e| Error::io(image.display().to_string(), e))?;
        if !meta.is_file() || meta.len() != len {
            return Err(Error::invalid_input(format!(
                "base image '{}' is {} bytes, the disk is {len} bytes: it is not an image of \
                 this disk (a disk that grew needs a full copy)",
                image.display(),
                meta.len()
            )));
        }
        tokio::fs::rename(image, &part).await.map_err(|e| {
            Error::io(
                format!("{} (moving it to {})", image.display(), part.display()),
                e,
            )
        })?;
    } else if exists(&part).await? {
        tracing::info!(
            part = %part.display(),
            "finishing an interrupted incremental export"
        );
    } else {
        return Err(Error::not_found(format!(
            "base image '{}' (an incremental export patches the image of an earlier export; \
             make a full one first)",
            image.display()
        )));
    }
    // Bytes not copied keep the base image's data (the sink does not start
    // zeroed), so a digest of the whole image reads them back.
    let sink = SparseFile::patch(image, len).await?;
    let report = copy_extents(source, &sink, extents, None, None, options).await?;
    sink.commit().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(file: &str, backing: &str, delta: bool) -> TrackedDisk {
        TrackedDisk {
            key: 2000,
            capacity_bytes: 1 << 20,
            file_name: Some(file.to_owned()),
            datastore: None,
            backing_type: Some(backing.to_owned()),
            change_id: None,
            delta,
        }
    }

    #[test]
    fn flat_extent_of_a_flat_base_disk() {
        let d = disk(
            "[LocalDS_0] web 01/web01.vmdk",
            "VirtualDiskFlatVer2BackingInfo",
            false,
        );
        assert_eq!(
            d.flat_extent().expect("flat").to_string(),
            "[LocalDS_0] web 01/web01-flat.vmdk"
        );
        let delta = disk(
            "[ds] web01/web01-000001.vmdk",
            "VirtualDiskFlatVer2BackingInfo",
            true,
        );
        assert_eq!(
            delta.flat_extent().expect_err("delta").kind(),
            ErrorKind::Unsupported
        );
        let sparse = disk("[ds] a/a.vmdk", "VirtualDiskSparseVer2BackingInfo", false);
        assert_eq!(
            sparse.flat_extent().expect_err("sparse").kind(),
            ErrorKind::Unsupported
        );
        let odd = disk("[ds] a/a.img", "VirtualDiskFlatVer2BackingInfo", false);
        assert_eq!(
            odd.flat_extent().expect_err("name").kind(),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn since_names_the_change_id() {
        assert_eq!(Since::Start.change_id(), "*");
        assert_eq!(Since::ChangeId("52 3c/7".into()).change_id(), "52 3c/7");
    }
}
