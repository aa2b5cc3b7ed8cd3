//! [`MemoryProvider`]: a complete [`Provider`] that keeps VMs in memory.
//!
//! It is a real provider, not a mock: disks are byte buffers stored in 64 KiB
//! blocks, snapshots are copy-on-write copies of the block maps (taking one
//! copies no data), changed extents are computed from the blocks' contents
//! and freed ranges from what was discarded, and export/import move raw disks.
//! Use it to try the SDK without a hypervisor, in doc examples, and as the
//! reference that the testkit's conformance suite checks every provider
//! against.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use hypersdk_core::memory::MemoryProvider;
//! use hypersdk_core::model::{DiskInfo, Extent, VmInfo, VmRef};
//! use hypersdk_core::provider::{DiskRef, Provider};
//!
//! let p = MemoryProvider::new();
//! let mut spec = VmInfo::new("", "app01");
//! spec.disks.push(DiskInfo::new("disk-0", 1 << 20));
//! let vm = p.add_vm(spec)?;
//! let disk = DiskRef::new(VmRef::id(&vm.id), "disk-0");
//!
//! p.write_disk(&disk, 0, b"first")?;
//! let s1 = p.create_snapshot(&VmRef::id(&vm.id), "s1").await?;
//! p.write_disk(&disk, 300_000, b"second")?;
//! let s2 = p.create_snapshot(&VmRef::id(&vm.id), "s2").await?;
//!
//! let delta = p.changed_extents(&disk, Some(&s1.id), &s2.id).await?;
//! assert!(delta.changed.covers(Extent::new(300_000, 6)));
//! assert!(!delta.changed.contains_offset(0));
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use crate::blocks::{BlockSource, check_range};
use crate::model::{
    DiskFormat, DiskInfo, Extent, ExtentList, Firmware, GuestOs, NicInfo, PowerState, SnapshotInfo,
    SnapshotRef, VmFilter, VmInfo, VmRef,
};
use crate::progress::{Phase, ProgressEvent};
use crate::provider::{
    Capabilities, Capability, ChangedExtents, Descriptor, DescriptorFormat, DiskData, DiskRef,
    DiskTransfer, Export, ExportOptions, ImportOptions, ImportPackage, Provider,
};
use crate::{Error, ErrorKind, Result};

/// The block size of in-memory disks: the granularity of allocation,
/// copy-on-write and changed-extent tracking.
pub const BLOCK_SIZE: u64 = 64 * 1024;

/// The largest piece a disk stream yields, and a reader reads, at once.
const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone)]
struct MemDisk {
    info: DiskInfo,
    /// Block index → exactly [`BLOCK_SIZE`] bytes. Absent blocks are holes.
    blocks: BTreeMap<u64, Bytes>,
}

impl MemDisk {
    fn new(info: DiskInfo) -> Self {
        MemDisk {
            info,
            blocks: BTreeMap::new(),
        }
    }

    fn allocated(&self) -> ExtentList {
        let cap = self.info.capacity_bytes;
        self.blocks
            .keys()
            .map(|&i| Extent::new(i * BLOCK_SIZE, BLOCK_SIZE))
            .collect::<ExtentList>()
            .squash()
            .clamp(cap)
    }

    fn allocated_bytes(&self) -> u64 {
        self.allocated().total_bytes()
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let idx = abs / BLOCK_SIZE;
            let within = (abs % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - within).min(data.len() - pos);
            let mut block = match self.blocks.get(&idx) {
                Some(b) => BytesMut::from(&b[..]),
                None => BytesMut::zeroed(BLOCK_SIZE as usize),
            };
            block[within..within + n].copy_from_slice(&data[pos..pos + n]);
            self.blocks.insert(idx, block.freeze());
            pos += n;
        }
        self.info.allocated_bytes = Some(self.allocated_bytes());
    }

    /// Deallocates whole blocks inside `range` and zeroes the partial ones.
    fn discard(&mut self, range: Extent) {
        let (start, end) = (range.offset, range.end());
        let first_full = start.div_ceil(BLOCK_SIZE);
        let last_full = end / BLOCK_SIZE; // exclusive
        let full: Vec<u64> = self
            .blocks
            .range(first_full..last_full.max(first_full))
            .map(|(&i, _)| i)
            .collect();
        for i in full {
            self.blocks.remove(&i);
        }
        // Zero the partial head and tail, keeping them allocated.
        let head_end = (first_full * BLOCK_SIZE).min(end);
        if start < head_end && self.blocks.contains_key(&(start / BLOCK_SIZE)) {
            let zeros = vec![0u8; (head_end - start) as usize];
            self.write(start, &zeros);
        }
        let tail_start = (last_full * BLOCK_SIZE).max(head_end);
        if tail_start < end && self.blocks.contains_key(&(tail_start / BLOCK_SIZE)) {
            let zeros = vec![0u8; (end - tail_start) as usize];
            self.write(tail_start, &zeros);
        }
        self.info.allocated_bytes = Some(self.allocated_bytes());
    }

    fn read(&self, range: Extent) -> Bytes {
        let mut out = BytesMut::zeroed(range.length as usize);
        let first = range.offset / BLOCK_SIZE;
        let last = range.end().div_ceil(BLOCK_SIZE);
        for (&i, block) in self.blocks.range(first..last) {
            let b = Extent::new(i * BLOCK_SIZE, BLOCK_SIZE);
            if let Some(x) = b.intersection(&range) {
                let src = (x.offset - b.offset) as usize;
                let dst = (x.offset - range.offset) as usize;
                let n = x.length as usize;
                out[dst..dst + n].copy_from_slice(&block[src..src + n]);
            }
        }
        out.freeze()
    }
}

#[derive(Debug, Clone)]
struct MemSnapshot {
    info: SnapshotInfo,
    disks: Vec<MemDisk>,
}

#[derive(Debug, Clone)]
struct MemVm {
    info: VmInfo,
    disks: Vec<MemDisk>,
    snapshots: Vec<MemSnapshot>,
}

impl MemVm {
    fn view(&self) -> VmInfo {
        let mut info = self.info.clone();
        info.disks = self.disks.iter().map(|d| d.info.clone()).collect();
        info
    }

    fn disk(&self, id: &str) -> Result<&MemDisk> {
        self.disks
            .iter()
            .find(|d| d.info.id == id)
            .ok_or_else(|| Error::not_found(format!("disk '{id}' of VM '{}'", self.info.name)))
    }

    fn snapshot(&self, id: &str) -> Result<&MemSnapshot> {
        self.snapshots
            .iter()
            .find(|s| s.info.id == id)
            .ok_or_else(|| Error::not_found(format!("snapshot '{id}' of VM '{}'", self.info.name)))
    }
}

#[derive(Debug, Default)]
struct State {
    vms: Vec<MemVm>,
    next_id: u64,
}

impl State {
    fn next(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    fn find(&self, r: &VmRef) -> Result<usize> {
        let mut hits = self
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| r.matches(&v.info));
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Ok(i),
            (None, _) => Err(Error::not_found(r.to_string())),
            (Some(_), Some(_)) => Err(Error::Conflict {
                object: r.to_string(),
                message: "more than one VM matches; use its id".to_owned(),
            }),
        }
    }
}

/// A [`Provider`] holding VMs, disks and snapshots in memory.
///
/// Cloning gives another handle to the same VMs.
#[derive(Debug, Clone)]
pub struct MemoryProvider {
    state: Arc<RwLock<State>>,
    capabilities: Capabilities,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        MemoryProvider::new()
    }
}

impl MemoryProvider {
    /// An empty provider with every capability.
    pub fn new() -> Self {
        MemoryProvider {
            state: Arc::new(RwLock::new(State::default())),
            capabilities: Capabilities::all(),
        }
    }

    /// Restricts the capabilities: operations outside `caps` then return
    /// [`Error::Unsupported`]. Useful to test how tools cope with a provider
    /// that cannot, say, import.
    #[must_use]
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.capabilities = caps;
        self
    }

    /// A provider with two demo VMs with data on their disks:
    /// `web01` (UEFI with secure boot, Linux, 2 disks, 2 NICs, powered on)
    /// and `db01` (BIOS, Windows, 1 disk, powered off).
    pub fn with_demo_vms() -> Self {
        let p = MemoryProvider::new();
        let mut web = VmInfo::new("", "web01");
        web.uuid = Some("42a1c3e0-7d1f-4f7a-9a55-0c1f2e3d4b5a".into());
        web.cpus = 2;
        web.memory_mib = 4096;
        web.firmware = Firmware::Uefi;
        web.secure_boot = Some(true);
        web.guest_os = GuestOs::from_id("rhel9_64Guest");
        web.power_state = PowerState::PoweredOn;
        let mut boot = DiskInfo::new("disk-0", 64 << 20);
        boot.name = Some("Hard disk 1".into());
        boot.boot_order = Some(0);
        web.disks.push(boot);
        let mut data = DiskInfo::new("disk-1", 16 << 20);
        data.name = Some("Hard disk 2".into());
        web.disks.push(data);
        for (i, net) in ["frontend", "backend"].into_iter().enumerate() {
            web.nics.push(NicInfo {
                id: Some(format!("nic-{i}")),
                mac: Some(format!("00:50:56:00:00:0{i}")),
                network: Some(net.into()),
                adapter: Some("vmxnet3".into()),
            });
        }
        let mut db = VmInfo::new("", "db01");
        db.uuid = Some("42b7e1aa-0b6e-4c8e-8f0e-9d9c1a2b3c4d".into());
        db.cpus = 4;
        db.memory_mib = 8192;
        db.firmware = Firmware::Bios;
        db.guest_os = GuestOs::from_id("windows2019srv_64Guest");
        db.power_state = PowerState::PoweredOff;
        let mut sys = DiskInfo::new("disk-0", 32 << 20);
        sys.boot_order = Some(0);
        db.disks.push(sys);

        // The specs are valid by construction, so these cannot fail; the
        // results are ignored rather than unwrapped all the same.
        if let Ok(web) = p.add_vm(web) {
            let d0 = DiskRef::new(VmRef::id(&web.id), "disk-0");
            let d1 = DiskRef::new(VmRef::id(&web.id), "disk-1");
            let _ = p.write_disk(&d0, 0, &demo_pattern(b"boot sector of web01", 512));
            let _ = p.write_disk(&d0, 8 << 20, &demo_pattern(b"rootfs ", 3 << 20));
            let _ = p.write_disk(&d1, 1 << 20, &demo_pattern(b"data ", 1 << 20));
        }
        if let Ok(db) = p.add_vm(db) {
            let d0 = DiskRef::new(VmRef::id(&db.id), "disk-0");
            let _ = p.write_disk(&d0, 0, &demo_pattern(b"NTFS    ", 2 << 20));
        }
        p
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (every mutation is a single insert/replace), so poison is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn require(&self, cap: Capability, operation: &str) -> Result<()> {
        if self.capabilities.supports(cap) {
            Ok(())
        } else {
            Err(Error::unsupported(operation, "memory"))
        }
    }

    /// Adds a VM. An empty `id` gets a fresh one (`vm-N`); a taken id or
    /// name is [`ErrorKind::AlreadyExists`]. Disks start empty (all holes)
    /// with the given capacities, format [`DiskFormat::Raw`].
    pub fn add_vm(&self, mut spec: VmInfo) -> Result<VmInfo> {
        let mut st = self.write();
        if spec.id.is_empty() {
            spec.id = st.next("vm");
        }
        if st
            .vms
            .iter()
            .any(|v| v.info.id == spec.id || v.info.name == spec.name)
        {
            return Err(Error::already_exists(format!(
                "VM '{}' (id '{}')",
                spec.name, spec.id
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut disks = Vec::new();
        for d in &spec.disks {
            if !seen.insert(d.id.clone()) {
                return Err(Error::invalid_input(format!(
                    "VM '{}' has two disks with id '{}'",
                    spec.name, d.id
                )));
            }
            let mut info = d.clone();
            info.format = DiskFormat::Raw;
            info.allocated_bytes = Some(0);
            disks.push(MemDisk::new(info));
        }
        let vm = MemVm {
            info: spec,
            disks,
            snapshots: Vec::new(),
        };
        let view = vm.view();
        st.vms.push(vm);
        Ok(view)
    }

    /// Removes a VM and its snapshots.
    pub fn remove_vm(&self, vm: &VmRef) -> Result<()> {
        let mut st = self.write();
        let i = st.find(vm)?;
        st.vms.remove(i);
        Ok(())
    }

    /// Writes `data` at `offset` of a live disk, as a guest would.
    pub fn write_disk(&self, disk: &DiskRef, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.write();
        let i = st.find(&disk.vm)?;
        let d = live_disk_mut(&mut st.vms[i], &disk.disk_id)?;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > d.info.capacity_bytes) {
            return Err(Error::invalid_input(format!(
                "write of {} bytes at {offset} is outside {disk} of capacity {}",
                data.len(),
                d.info.capacity_bytes
            )));
        }
        d.write(offset, data);
        Ok(())
    }

    /// Discards (trims) `range` of a live disk: whole blocks inside it are
    /// deallocated and read as zeros; partial blocks are zeroed.
    pub fn discard_disk(&self, disk: &DiskRef, range: Extent) -> Result<()> {
        let mut st = self.write();
        let i = st.find(&disk.vm)?;
        let d = live_disk_mut(&mut st.vms[i], &disk.disk_id)?;
        if range
            .offset
            .checked_add(range.length)
            .is_none_or(|e| e > d.info.capacity_bytes)
        {
            return Err(Error::invalid_input(format!(
                "discard of {range} is outside {disk} of capacity {}",
                d.info.capacity_bytes
            )));
        }
        d.discard(range);
        Ok(())
    }

    /// Sets the power state of a VM.
    pub fn set_power_state(&self, vm: &VmRef, state: PowerState) -> Result<()> {
        let mut st = self.write();
        let i = st.find(vm)?;
        st.vms[i].info.power_state = state;
        Ok(())
    }

    fn frozen_disk(&self, disk: &DiskRef, snapshot: Option<&str>) -> Result<(String, MemDisk)> {
        let st = self.read();
        let vm = &st.vms[st.find(&disk.vm)?];
        let d = match snapshot {
            None => vm.disk(&disk.disk_id)?.clone(),
            Some(s) => {
                let snap = vm.snapshot(s)?;
                snap.disks
                    .iter()
                    .find(|d| d.info.id == disk.disk_id)
                    .cloned()
                    .ok_or_else(|| {
                        Error::not_found(format!("disk '{}' in snapshot '{s}'", disk.disk_id))
                    })?
            }
        };
        let what = match snapshot {
            None => format!("disk '{}' of VM '{}'", disk.disk_id, vm.info.name),
            Some(s) => format!(
                "disk '{}' of VM '{}' at snapshot '{s}'",
                disk.disk_id, vm.info.name
            ),
        };
        Ok((what, d))
    }
}

fn live_disk_mut<'a>(vm: &'a mut MemVm, id: &str) -> Result<&'a mut MemDisk> {
    let name = vm.info.name.clone();
    vm.disks
        .iter_mut()
        .find(|d| d.info.id == id)
        .ok_or_else(|| Error::not_found(format!("disk '{id}' of VM '{name}'")))
}

fn demo_pattern(seed: &[u8], len: usize) -> Vec<u8> {
    seed.iter().copied().cycle().take(len).collect()
}

/// A frozen, copy-on-write view of one in-memory disk.
#[derive(Debug, Clone)]
struct MemDiskSource {
    what: String,
    disk: Arc<MemDisk>,
}

#[async_trait]
impl BlockSource for MemDiskSource {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn len(&self) -> u64 {
        self.disk.info.capacity_bytes
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        Ok(self.disk.read(range))
    }

    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        check_range(self, range)?;
        let disk = Arc::clone(&self.disk);
        let pieces = ExtentList::from_unsorted([range])
            .split_to_max(CHUNK)?
            .into_vec();
        Ok(stream::iter(pieces).map(move |e| Ok(disk.read(e))).boxed())
    }

    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        Ok(Some(self.disk.allocated()))
    }
}

/// Reads a raw disk from `data` into blocks, skipping all-zero blocks.
async fn ingest(name: &str, t: DiskTransfer, progress: &ImportOptions) -> Result<MemDisk> {
    if t.format != DiskFormat::Raw {
        return Err(Error::invalid_input(format!(
            "the memory provider imports raw disks only; disk '{}' is {}",
            t.file_name, t.format
        )));
    }
    let mut disk = MemDisk::new(t.info.clone());
    disk.info.format = DiskFormat::Raw;
    let mut done = 0u64;
    let report = |done: u64, total: Option<u64>| {
        progress
            .progress
            .emit(ProgressEvent::new(Phase::Importing, done, total).with_item(t.file_name.clone()));
    };
    match t.data {
        DiskData::Blocks(src) => {
            let len = src.len();
            let extents = match src.allocated_extents().await? {
                Some(e) => e,
                None => ExtentList::full(len),
            };
            for e in extents.split_to_max(CHUNK)? {
                let bytes = src.read_range(e).await?;
                if bytes.len() as u64 != e.length {
                    return Err(Error::integrity(
                        format!("{} range {e}", src.describe()),
                        format!("{} bytes", e.length),
                        format!("{} bytes", bytes.len()),
                    ));
                }
                store_nonzero(&mut disk, e.offset, &bytes);
                done += e.length;
                report(done, Some(extents.total_bytes()));
            }
            disk.info.capacity_bytes = len;
        }
        DiskData::Stream(mut s) => {
            let mut pending = BytesMut::new();
            let mut offset = 0u64;
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                done += chunk.len() as u64;
                pending.extend_from_slice(&chunk);
                let whole = pending.len() - pending.len() % BLOCK_SIZE as usize;
                let ready = pending.split_to(whole);
                store_nonzero(&mut disk, offset, &ready);
                offset += ready.len() as u64;
                report(done, t.size);
            }
            store_nonzero(&mut disk, offset, &pending);
            if t.size.is_some_and(|s| s != done) {
                return Err(Error::integrity(
                    format!("stream of disk '{}' for VM '{name}'", t.file_name),
                    format!("{} bytes", t.size.unwrap_or_default()),
                    format!("{done} bytes"),
                ));
            }
            disk.info.capacity_bytes = done;
        }
    }
    if t.info.capacity_bytes != 0 && t.info.capacity_bytes != disk.info.capacity_bytes {
        return Err(Error::integrity(
            format!("disk '{}' for VM '{name}'", t.file_name),
            format!("capacity {} bytes", t.info.capacity_bytes),
            format!("{} bytes of raw data", disk.info.capacity_bytes),
        ));
    }
    disk.info.allocated_bytes = Some(disk.allocated_bytes());
    Ok(disk)
}

fn store_nonzero(disk: &mut MemDisk, offset: u64, data: &[u8]) {
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = offset + pos as u64;
        let n = ((BLOCK_SIZE - abs % BLOCK_SIZE) as usize).min(data.len() - pos);
        let piece = &data[pos..pos + n];
        if piece.iter().any(|&b| b != 0) {
            disk.write(abs, piece);
        }
        pos += n;
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn discover(&self, filter: &VmFilter) -> Result<Vec<VmInfo>> {
        self.require(Capability::Discover, "discover")?;
        let st = self.read();
        Ok(st
            .vms
            .iter()
            .map(MemVm::view)
            .filter(|v| filter.matches(v))
            .collect())
    }

    async fn vm(&self, vm: &VmRef) -> Result<VmInfo> {
        self.require(Capability::Discover, "vm")?;
        let st = self.read();
        Ok(st.vms[st.find(vm)?].view())
    }

    async fn create_snapshot(&self, vm: &VmRef, name: &str) -> Result<SnapshotInfo> {
        self.require(Capability::Snapshots, "create_snapshot")?;
        let mut st = self.write();
        let i = st.find(vm)?;
        let id = st.next("snap");
        let v = &mut st.vms[i];
        let info = SnapshotInfo {
            id,
            vm_id: v.info.id.clone(),
            name: name.to_owned(),
            description: None,
            parent: v.snapshots.last().map(|s| s.info.id.clone()),
            created: Some(Utc::now()),
            disks: v.disks.iter().map(|d| d.info.clone()).collect(),
        };
        // Cloning the block maps shares every block (Bytes is refcounted):
        // this is the copy-on-write snapshot.
        v.snapshots.push(MemSnapshot {
            info: info.clone(),
            disks: v.disks.clone(),
        });
        Ok(info)
    }

    async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<SnapshotInfo>> {
        self.require(Capability::Snapshots, "list_snapshots")?;
        let st = self.read();
        let v = &st.vms[st.find(vm)?];
        Ok(v.snapshots.iter().map(|s| s.info.clone()).collect())
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotRef) -> Result<()> {
        self.require(Capability::Snapshots, "delete_snapshot")?;
        let mut st = self.write();
        let i = st.find(&VmRef::id(&snapshot.vm_id))?;
        let v = &mut st.vms[i];
        let pos = v
            .snapshots
            .iter()
            .position(|s| s.info.id == snapshot.id)
            .ok_or_else(|| Error::not_found(snapshot.to_string()))?;
        let removed = v.snapshots.remove(pos);
        for s in &mut v.snapshots {
            if s.info.parent.as_deref() == Some(removed.info.id.as_str()) {
                s.info.parent = removed.info.parent.clone();
            }
        }
        Ok(())
    }

    async fn export(&self, vm: &VmRef, options: &ExportOptions) -> Result<Export> {
        self.require(Capability::Export, "export")?;
        let (view, disks, snap) = {
            let st = self.read();
            let v = &st.vms[st.find(vm)?];
            let (disks, snap) = match &options.snapshot {
                None => (v.disks.clone(), None),
                Some(id) => (
                    v.snapshot(id)?.disks.clone(),
                    Some(SnapshotRef::new(v.info.id.clone(), id.clone())),
                ),
            };
            (v.view(), disks, snap)
        };
        if let Some(wanted) = &options.disks {
            for id in wanted {
                if !disks.iter().any(|d| d.info.id == *id) {
                    return Err(Error::not_found(format!(
                        "disk '{id}' of VM '{}'",
                        view.name
                    )));
                }
            }
        }
        options
            .progress
            .emit(ProgressEvent::new(Phase::Exporting, 0, None).with_item(view.name.clone()));
        let descriptor = serde_json::to_vec_pretty(&view).map_err(|e| Error::Other {
            message: format!("cannot serialize VM '{}'", view.name),
            source: Some(Box::new(e)),
        })?;
        let method = if snap.is_some() {
            "memory-snapshot"
        } else {
            "memory-live-copy"
        };
        let mut export = Export::new(view.clone(), method).with_descriptor(Descriptor {
            format: DescriptorFormat::Json,
            file_name: format!("{}.json", view.name),
            bytes: Bytes::from(descriptor),
        });
        if let Some(s) = snap {
            export = export.with_snapshot(s);
        }
        for (n, d) in disks.into_iter().enumerate() {
            if options
                .disks
                .as_ref()
                .is_some_and(|w| !w.contains(&d.info.id))
            {
                continue;
            }
            let src = MemDiskSource {
                what: format!("disk '{}' of VM '{}'", d.info.id, view.name),
                disk: Arc::new(d.clone()),
            };
            export = export.with_disk(DiskTransfer {
                info: d.info.clone(),
                file_name: format!("{}-disk{}.raw", view.name, n),
                format: DiskFormat::Raw,
                size: Some(d.info.capacity_bytes),
                data: DiskData::Blocks(Arc::new(src)),
            });
        }
        Ok(export)
    }

    async fn import(&self, package: ImportPackage, options: &ImportOptions) -> Result<VmInfo> {
        self.require(Capability::Import, "import")?;
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| package.vm.name.clone());
        if name.is_empty() {
            return Err(Error::invalid_input("an imported VM needs a name"));
        }
        if self.read().vms.iter().any(|v| v.info.name == name) {
            return Err(Error::already_exists(format!("VM '{name}'")));
        }
        // Everything is read before the VM is inserted, so an error or a
        // dropped future leaves no trace.
        let mut disks = Vec::with_capacity(package.disks.len());
        for t in package.disks {
            disks.push(ingest(&name, t, options).await?);
        }
        let mut info = package.vm;
        info.name = name.clone();
        info.power_state = if options.power_on {
            PowerState::PoweredOn
        } else {
            PowerState::PoweredOff
        };
        let mut st = self.write();
        if st.vms.iter().any(|v| v.info.name == name) {
            return Err(Error::already_exists(format!("VM '{name}'")));
        }
        info.id = st.next("vm");
        let vm = MemVm {
            info,
            disks,
            snapshots: Vec::new(),
        };
        let view = vm.view();
        st.vms.push(vm);
        Ok(view)
    }

    async fn open_disk(
        &self,
        disk: &DiskRef,
        snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>> {
        match snapshot {
            None => self.require(Capability::OpenDisk, "open_disk")?,
            Some(_) => self.require(Capability::OpenSnapshotDisk, "open_disk of a snapshot")?,
        }
        let (what, d) = self.frozen_disk(disk, snapshot)?;
        Ok(Arc::new(MemDiskSource {
            what,
            disk: Arc::new(d),
        }))
    }

    async fn changed_extents(
        &self,
        disk: &DiskRef,
        from: Option<&str>,
        to: &str,
    ) -> Result<ChangedExtents> {
        self.require(Capability::ChangedExtents, "changed_extents")?;
        let (_, new) = self.frozen_disk(disk, Some(to))?;
        let size = new.info.capacity_bytes;
        let Some(from) = from else {
            return Ok(ChangedExtents {
                disk_size: size,
                changed: new.allocated(),
                freed: Some(ExtentList::new()),
            });
        };
        {
            // Refuse a diff backwards in time: it would report the reverse.
            let st = self.read();
            let vm = &st.vms[st.find(&disk.vm)?];
            let pos = |id: &str| vm.snapshots.iter().position(|s| s.info.id == id);
            if let (Some(a), Some(b)) = (pos(from), pos(to))
                && a >= b
            {
                return Err(Error::invalid_input(format!(
                    "snapshot '{from}' is not older than snapshot '{to}'"
                )));
            }
        }
        let old = match self.frozen_disk(disk, Some(from)) {
            Ok((_, d)) => d,
            // The disk was added after `from`: everything in it is new.
            Err(e) if e.kind() == ErrorKind::NotFound && from_exists(self, disk, from) => {
                MemDisk::new(new.info.clone())
            }
            Err(e) => return Err(e),
        };
        let mut changed = Vec::new();
        let mut freed = Vec::new();
        for (&i, b) in &new.blocks {
            let same = old
                .blocks
                .get(&i)
                .is_some_and(|a| a.as_ptr() == b.as_ptr() || a == b);
            if !same {
                changed.push(Extent::new(i * BLOCK_SIZE, BLOCK_SIZE));
            }
        }
        for &i in old.blocks.keys() {
            if !new.blocks.contains_key(&i) {
                freed.push(Extent::new(i * BLOCK_SIZE, BLOCK_SIZE));
            }
        }
        Ok(ChangedExtents {
            disk_size: size,
            changed: ExtentList::from_unsorted(changed).squash().clamp(size),
            freed: Some(ExtentList::from_unsorted(freed).squash().clamp(size)),
        })
    }
}

fn from_exists(p: &MemoryProvider, disk: &DiskRef, snapshot: &str) -> bool {
    let st = p.read();
    st.find(&disk.vm)
        .is_ok_and(|i| st.vms[i].snapshot(snapshot).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_with_disk(p: &MemoryProvider, cap: u64) -> DiskRef {
        let mut spec = VmInfo::new("", "t");
        spec.disks.push(DiskInfo::new("d", cap));
        let vm = p.add_vm(spec).unwrap();
        DiskRef::new(VmRef::id(vm.id), "d")
    }

    #[tokio::test]
    async fn write_read_and_cow() {
        let p = MemoryProvider::new();
        let d = vm_with_disk(&p, 1 << 20);
        p.write_disk(&d, BLOCK_SIZE - 2, b"abcd").unwrap();
        let s = p.create_snapshot(&d.vm, "s").await.unwrap();
        p.write_disk(&d, BLOCK_SIZE - 2, b"XY").unwrap();
        let live = p.open_disk(&d, None).await.unwrap();
        let snap = p.open_disk(&d, Some(&s.id)).await.unwrap();
        let r = Extent::new(BLOCK_SIZE - 2, 4);
        assert_eq!(&live.read_range(r).await.unwrap()[..], b"XYcd");
        assert_eq!(&snap.read_range(r).await.unwrap()[..], b"abcd");
        assert_eq!(
            live.allocated_extents()
                .await
                .unwrap()
                .unwrap()
                .total_bytes(),
            2 * BLOCK_SIZE
        );
    }

    #[tokio::test]
    async fn out_of_bounds_writes_are_refused() {
        let p = MemoryProvider::new();
        let d = vm_with_disk(&p, 1000);
        assert_eq!(
            p.write_disk(&d, 999, b"ab").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            p.write_disk(&d, u64::MAX, b"a").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn changed_and_freed() {
        let p = MemoryProvider::new();
        let d = vm_with_disk(&p, 4 * BLOCK_SIZE);
        p.write_disk(&d, 0, &vec![1u8; (3 * BLOCK_SIZE) as usize])
            .unwrap();
        let s1 = p.create_snapshot(&d.vm, "s1").await.unwrap();
        // Same bytes rewritten: not a change by content.
        p.write_disk(&d, 0, &[1u8; 10]).unwrap();
        p.write_disk(&d, BLOCK_SIZE + 5, b"new").unwrap();
        p.discard_disk(&d, Extent::new(2 * BLOCK_SIZE, BLOCK_SIZE))
            .unwrap();
        let s2 = p.create_snapshot(&d.vm, "s2").await.unwrap();
        let c = p.changed_extents(&d, Some(&s1.id), &s2.id).await.unwrap();
        assert_eq!(c.changed.as_slice(), &[Extent::new(BLOCK_SIZE, BLOCK_SIZE)]);
        assert_eq!(
            c.freed.unwrap().as_slice(),
            &[Extent::new(2 * BLOCK_SIZE, BLOCK_SIZE)]
        );
        let full = p.changed_extents(&d, None, &s2.id).await.unwrap();
        assert_eq!(full.changed.total_bytes(), 2 * BLOCK_SIZE);
        let e = p
            .changed_extents(&d, Some(&s2.id), &s1.id)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn import_rejects_short_stream_and_leaves_nothing() {
        let p = MemoryProvider::new();
        let mut vm = VmInfo::new("", "imp");
        vm.disks.push(DiskInfo::new("d", 100));
        let stream = stream::iter([Ok(Bytes::from_static(b"short"))]).boxed();
        let pkg = ImportPackage::new(vm.clone()).with_disk(DiskTransfer {
            info: DiskInfo::new("d", 100),
            file_name: "imp.raw".into(),
            format: DiskFormat::Raw,
            size: Some(100),
            data: DiskData::Stream(stream),
        });
        let e = p.import(pkg, &ImportOptions::default()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(p.discover(&VmFilter::all()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn restricted_capabilities_are_unsupported() {
        let p = MemoryProvider::new()
            .with_capabilities(Capabilities::none().with(Capability::Discover));
        let e = p.create_snapshot(&VmRef::name("x"), "s").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("create_snapshot"));
        assert!(e.to_string().contains("memory"));
    }

    #[tokio::test]
    async fn ambiguous_names_conflict() {
        let p = MemoryProvider::new();
        p.add_vm(VmInfo::new("", "a")).unwrap();
        assert_eq!(
            p.add_vm(VmInfo::new("", "a")).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            p.vm(&VmRef::name("zzz")).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
