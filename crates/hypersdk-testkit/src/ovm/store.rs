//! The exporter's state: the VM inventory of the node (live disks in the
//! repository), its snapshot database, and the route handlers' logic as
//! synchronous functions returning the exact reply (status, content type,
//! body) the real exporter sends.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use http::StatusCode;
use serde::Serialize;

use super::disk::{AllocMap, Chunk, LiveDisk, Volume};
use super::{DiskSpec, VmSpec};

/// What Go's `http.DetectContentType` makes of a JSON body.
pub(crate) const SNIFFED_TEXT: &str = "text/plain; charset=utf-8";
/// The content type `handleError` and login set.
pub(crate) const JSON: &str = "application/json";

/// A complete non-streamed reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A 200 whose body Go's `json.Encoder` wrote without a content type
    /// (so Go sniffed one).
    pub(crate) fn ok_json<T: Serialize>(value: &T) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: Some(SNIFFED_TEXT),
            body: go_json(value),
        }
    }

    /// `handleError`: `{"error","details"}` with `application/json`.
    pub(crate) fn error(status: StatusCode, category: &str, details: &str) -> Reply {
        Reply {
            status,
            content_type: Some(JSON),
            body: go_json(&ApiError {
                error: category,
                details,
            }),
        }
    }

    /// `500 Server error`.
    pub(crate) fn server_error(details: &str) -> Reply {
        Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "Server error", details)
    }

    /// A status with an empty body.
    pub(crate) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            content_type: None,
            body: Vec::new(),
        }
    }
}

/// The exporter's error body.
#[derive(Serialize)]
pub(crate) struct ApiError<'a> {
    pub(crate) error: &'a str,
    pub(crate) details: &'a str,
}

/// Serializes like Go's `json.Encoder`: compact, HTML characters escaped,
/// a trailing newline.
pub(crate) fn go_json<T: Serialize>(value: &T) -> Vec<u8> {
    let plain = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    let mut out = String::with_capacity(plain.len() + 1);
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out.into_bytes()
}

#[derive(Serialize)]
struct VirtualMachineJson<'a> {
    friendly_name: &'a str,
    name: &'a str,
    uuid: &'a str,
    disks: Vec<DiskJson<'a>>,
    snapshot_compatible: bool,
    snapshots: Vec<&'a str>,
}

#[derive(Serialize)]
struct DiskJson<'a> {
    name: &'a str,
    path: String,
    device_name: &'a str,
    snapshot_compatible: bool,
    mode: &'a str,
}

#[derive(Serialize)]
struct VmSnapshotJson<'a> {
    id: &'a str,
    vm_id: &'a str,
    disks: Vec<DiskSnapshotJson<'a>>,
}

#[derive(Serialize)]
struct DiskSnapshotJson<'a> {
    parent_path: String,
    path: String,
    snapshot_id: &'a str,
    chunks: Option<Vec<Chunk>>,
    name: &'a str,
    repo_mountpoint: String,
}

/// One disk of a VM on the node.
#[derive(Debug)]
pub(crate) struct Disk {
    pub(crate) name: String,
    device: String,
    mode: String,
    compatible: bool,
    pub(crate) path: PathBuf,
    pub(crate) live: LiveDisk,
}

/// One VM whose `vm.cfg` lives in the repository.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) id: String,
    friendly_name: String,
    uuid: String,
    pub(crate) phy_disks: Vec<String>,
    pub(crate) disks: Vec<Disk>,
}

impl Vm {
    fn compatible(&self) -> bool {
        self.disks.iter().all(|d| d.compatible)
    }
}

/// One disk of a snapshot record.
#[derive(Debug)]
struct SnapDisk {
    name: String,
    parent_path: PathBuf,
    path: PathBuf,
    chunks: Vec<Chunk>,
    map: AllocMap,
}

/// A snapshot record of the exporter's database.
#[derive(Debug)]
struct Snapshot {
    id: String,
    vm_id: String,
    /// Creation order (stands for `CreatedAt`).
    seq: u64,
    disks: Vec<SnapDisk>,
}

/// The node: one repository, its VMs and the snapshot database.
#[derive(Debug)]
pub(crate) struct Store {
    repo: PathBuf,
    cluster_size: u64,
    max_clusters: u64,
    volume: Volume,
    vms: BTreeMap<String, Vm>,
    snapshots: HashMap<String, Snapshot>,
    next_seq: u64,
}

fn not_found(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what)
}

/// Go's `os.PathError` text for a failed `remove`.
fn remove_error(path: &Path, error: &io::Error) -> String {
    let reason = match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        _ => error.to_string(),
    };
    format!("remove {}: {reason}", path.display())
}

impl Store {
    /// An empty node whose repository is mounted at `repo`.
    pub(crate) fn new(repo: PathBuf, cluster_size: u64, max_extent: u64) -> io::Result<Store> {
        std::fs::create_dir_all(repo.join("VirtualDisks"))?;
        std::fs::create_dir_all(repo.join("VirtualMachines"))?;
        std::fs::create_dir_all(repo.join("CoriolisSnapshots"))?;
        Ok(Store {
            repo,
            cluster_size,
            max_clusters: (max_extent / cluster_size).max(1),
            // Start somewhere past the volume's metadata, so no extent is at
            // physical 0.
            volume: Volume::new(4096),
            vms: BTreeMap::new(),
            snapshots: HashMap::new(),
            next_seq: 0,
        })
    }

    /// The repository mount point.
    pub(crate) fn repo(&self) -> &Path {
        &self.repo
    }

    /// Where a disk called `name` lives.
    pub(crate) fn disk_path(&self, name: &str) -> PathBuf {
        self.repo.join("VirtualDisks").join(name)
    }

    /// Adds a VM and creates its (empty, sparse) disks.
    pub(crate) fn add_vm(&mut self, spec: VmSpec) -> io::Result<()> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if spec.id.is_empty() || spec.id.contains('/') {
            return Err(invalid(format!(
                "VM id {:?} is not usable in a path",
                spec.id
            )));
        }
        if self.vms.contains_key(&spec.id) {
            return Err(invalid(format!("a VM with id {} already exists", spec.id)));
        }
        let mut seen: Vec<&str> = Vec::new();
        for disk in &spec.disks {
            let DiskSpec { name, .. } = disk;
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(invalid(format!("disk name {name:?} is not a file name")));
            }
            if seen.contains(&name.as_str()) || self.disk_path(name).exists() {
                return Err(invalid(format!("disk {name} is used twice")));
            }
            seen.push(name);
        }
        let mut disks = Vec::new();
        for spec_disk in spec.disks {
            let path = self.disk_path(&spec_disk.name);
            let live = match LiveDisk::create(&path, spec_disk.size, self.cluster_size) {
                Ok(live) => live,
                Err(error) => {
                    for made in &disks {
                        let made: &Disk = made;
                        let _ = std::fs::remove_file(&made.path);
                    }
                    return Err(error);
                }
            };
            disks.push(Disk {
                name: spec_disk.name,
                device: spec_disk.device,
                mode: spec_disk.mode,
                compatible: spec_disk.snapshot_compatible,
                path,
                live,
            });
        }
        let _ = std::fs::create_dir_all(self.repo.join("VirtualMachines").join(&spec.id));
        self.vms.insert(
            spec.id.clone(),
            Vm {
                id: spec.id,
                friendly_name: spec.friendly_name,
                uuid: spec.uuid,
                phy_disks: spec.phy_disks,
                disks,
            },
        );
        Ok(())
    }

    /// A VM by id, or else by unique friendly name.
    pub(crate) fn find_vm(&self, key: &str) -> Option<&Vm> {
        if let Some(vm) = self.vms.get(key) {
            return Some(vm);
        }
        let mut named = self.vms.values().filter(|vm| vm.friendly_name == key);
        match (named.next(), named.next()) {
            (Some(vm), None) => Some(vm),
            _ => None,
        }
    }

    fn find_vm_id(&self, key: &str) -> io::Result<String> {
        self.find_vm(key)
            .map(|vm| vm.id.clone())
            .ok_or_else(|| not_found(format!("no VM {key:?} (by id or friendly name)")))
    }

    /// A disk of a VM by name, or else by device name.
    pub(crate) fn find_disk<'a>(vm: &'a Vm, key: &str) -> Option<&'a Disk> {
        vm.disks
            .iter()
            .find(|d| d.name == key)
            .or_else(|| vm.disks.iter().find(|d| d.device == key))
    }

    fn disk_mut(&mut self, vm: &str, disk: &str) -> io::Result<(&mut Disk, &mut Volume)> {
        let id = self.find_vm_id(vm)?;
        let Some(vm) = self.vms.get_mut(&id) else {
            return Err(not_found(format!("no VM {id}")));
        };
        let index = vm
            .disks
            .iter()
            .position(|d| d.name == disk)
            .or_else(|| vm.disks.iter().position(|d| d.device == disk))
            .ok_or_else(|| not_found(format!("VM {id} has no disk {disk:?}")))?;
        Ok((&mut vm.disks[index], &mut self.volume))
    }

    /// A guest write to a live disk.
    pub(crate) fn write(
        &mut self,
        vm: &str,
        disk: &str,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let (disk, volume) = self.disk_mut(vm, disk)?;
        disk.live.write(volume, offset, data)
    }

    /// A guest trim of a live disk.
    pub(crate) fn trim(&mut self, vm: &str, disk: &str, offset: u64, len: u64) -> io::Result<()> {
        let (disk, volume) = self.disk_mut(vm, disk)?;
        disk.live.trim(volume, offset, len)
    }

    /// The allocated byte ranges of a live disk.
    pub(crate) fn live_ranges(&self, vm: &str, disk: &str) -> Option<Vec<(u64, u64)>> {
        let vm = self.find_vm(vm)?;
        Some(Store::find_disk(vm, disk)?.live.map().mapped_ranges())
    }

    /// The snapshot file of `disk` (name or device) in snapshot `snapshot`
    /// of `vm` (id or friendly name).
    pub(crate) fn snapshot_disk_path(
        &self,
        vm: &str,
        snapshot: &str,
        disk: &str,
    ) -> Option<PathBuf> {
        let vm = self.find_vm(vm)?;
        let snap = self.snapshots.get(snapshot).filter(|s| s.vm_id == vm.id)?;
        let name = Store::find_disk(vm, disk).map_or(disk, |d| d.name.as_str());
        snap.disks
            .iter()
            .rev()
            .find(|d| d.name == name)
            .map(|d| d.path.clone())
    }

    /// Snapshot ids of a VM, oldest first.
    pub(crate) fn snapshot_ids(&self, vm_id: &str) -> Vec<String> {
        let mut snaps: Vec<&Snapshot> = self
            .snapshots
            .values()
            .filter(|s| s.vm_id == vm_id)
            .collect();
        snaps.sort_by_key(|s| s.seq);
        snaps.into_iter().map(|s| s.id.clone()).collect()
    }

    fn vm_json<'a>(&self, vm: &'a Vm, snapshots: &'a [String]) -> VirtualMachineJson<'a> {
        VirtualMachineJson {
            friendly_name: &vm.friendly_name,
            name: &vm.id,
            uuid: &vm.uuid,
            disks: vm
                .disks
                .iter()
                .map(|d| DiskJson {
                    name: &d.name,
                    path: d.path.display().to_string(),
                    device_name: &d.device,
                    snapshot_compatible: d.compatible,
                    mode: &d.mode,
                })
                .collect(),
            snapshot_compatible: vm.compatible(),
            snapshots: snapshots.iter().map(String::as_str).collect(),
        }
    }

    fn vm_or_500(&self, id: &str) -> Result<&Vm, Reply> {
        self.vms
            .get(id)
            .ok_or_else(|| Reply::server_error(&format!("could not find VM with ID {id}")))
    }

    /// `GET /vms`.
    pub(crate) fn list_vms(&self) -> Reply {
        let ids: Vec<Vec<String>> = self.vms.keys().map(|id| self.snapshot_ids(id)).collect();
        let list: Vec<VirtualMachineJson<'_>> = self
            .vms
            .values()
            .zip(&ids)
            .map(|(vm, snaps)| self.vm_json(vm, snaps))
            .collect();
        Reply::ok_json(&list)
    }

    /// `GET /vms/{vmID}`.
    pub(crate) fn get_vm(&self, id: &str) -> Reply {
        match self.vm_or_500(id) {
            Ok(vm) => {
                let snaps = self.snapshot_ids(id);
                Reply::ok_json(&self.vm_json(vm, &snaps))
            }
            Err(reply) => reply,
        }
    }

    fn snapshot_json<'a>(
        &self,
        snap: &'a Snapshot,
        chunks: Vec<Option<Vec<Chunk>>>,
    ) -> VmSnapshotJson<'a> {
        VmSnapshotJson {
            id: &snap.id,
            vm_id: &snap.vm_id,
            disks: snap
                .disks
                .iter()
                .zip(chunks)
                .map(|(d, chunks)| DiskSnapshotJson {
                    parent_path: d.parent_path.display().to_string(),
                    path: d.path.display().to_string(),
                    snapshot_id: &snap.id,
                    chunks,
                    name: &d.name,
                    repo_mountpoint: self.repo.display().to_string(),
                })
                .collect(),
        }
    }

    /// `GET /vms/{vmID}/snapshots`: every snapshot, chunks squashed.
    pub(crate) fn list_snapshots(&self, vm_id: &str) -> Reply {
        if let Err(reply) = self.vm_or_500(vm_id) {
            return reply;
        }
        let ids = self.snapshot_ids(vm_id);
        let list: Vec<VmSnapshotJson<'_>> = ids
            .iter()
            .filter_map(|id| self.snapshots.get(id))
            .map(|snap| {
                let chunks = snap.disks.iter().map(|d| Some(squash(&d.chunks))).collect();
                self.snapshot_json(snap, chunks)
            })
            .collect();
        Reply::ok_json(&list)
    }

    /// `POST /vms/{vmID}/snapshots`: reflink every disk, record the raw
    /// extents. Returns the reply and the new id (on success).
    pub(crate) fn create_snapshot(&mut self, vm_id: &str) -> (Reply, Option<String>) {
        let vm = match self.vm_or_500(vm_id) {
            Ok(vm) => vm,
            Err(reply) => return (reply, None),
        };
        if !vm.compatible() {
            let reply = Reply::error(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "VM does not support reflink cloning",
            );
            return (reply, None);
        }
        let id = uuid_v4();
        let dir = self.repo.join("CoriolisSnapshots").join(&id);
        if let Err(error) = std::fs::DirBuilder::new().mode(0o750).create(&dir) {
            return (
                Reply::server_error(&format!("mkdir {}: {error}", dir.display())),
                None,
            );
        }
        let Some(vm) = self.vms.get(vm_id) else {
            return (
                Reply::server_error(&format!("could not find VM with ID {vm_id}")),
                None,
            );
        };
        let mut disks: Vec<SnapDisk> = Vec::new();
        for disk in &vm.disks {
            let path = dir.join(&disk.name);
            match disk.live.snapshot_to(&mut self.volume, &path) {
                Ok(map) => disks.push(SnapDisk {
                    name: disk.name.clone(),
                    parent_path: disk.path.clone(),
                    path,
                    chunks: map.extents(self.max_clusters),
                    map,
                }),
                Err(error) => {
                    for made in &disks {
                        made.map.release(&mut self.volume);
                        let _ = std::fs::remove_file(&made.path);
                    }
                    let _ = std::fs::remove_dir(&dir);
                    return (
                        Reply::server_error(&format!(
                            "failed to reflink {} to {}: {error}",
                            disk.path.display(),
                            path.display()
                        )),
                        None,
                    );
                }
            }
        }
        let snap = Snapshot {
            id: id.clone(),
            vm_id: vm_id.to_owned(),
            seq: self.next_seq,
            disks,
        };
        self.next_seq += 1;
        let chunks = snap.disks.iter().map(|d| Some(d.chunks.clone())).collect();
        let reply = Reply::ok_json(&self.snapshot_json(&snap, chunks));
        self.snapshots.insert(id.clone(), snap);
        (reply, Some(id))
    }

    /// Loads a snapshot that must belong to `vm_id`.
    fn owned_snapshot(&self, vm_id: &str, id: &str) -> Result<&Snapshot, Reply> {
        let snap = self
            .snapshots
            .get(id)
            .ok_or_else(|| Reply::server_error("not found"))?;
        if snap.vm_id != vm_id {
            return Err(Reply::error(
                StatusCode::CONFLICT,
                "Conflict",
                "VM id missmatch",
            ));
        }
        Ok(snap)
    }

    /// `GET /vms/{vmID}/snapshots/{snapshotID}?squashChunks=&compareTo=`.
    pub(crate) fn get_snapshot(
        &self,
        vm_id: &str,
        id: &str,
        squash_chunks: bool,
        compare_to: &str,
    ) -> Reply {
        let snap = match self.owned_snapshot(vm_id, id) {
            Ok(snap) => snap,
            Err(reply) => return reply,
        };
        let chunks: Vec<Option<Vec<Chunk>>> = if compare_to.is_empty() {
            snap.disks.iter().map(|d| Some(d.chunks.clone())).collect()
        } else {
            let prev = match self.owned_snapshot(vm_id, compare_to) {
                Ok(prev) => prev,
                Err(reply) => return reply,
            };
            if prev.seq >= snap.seq {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "compareTo snapshot must be older than this snapshot",
                );
            }
            snap.disks
                .iter()
                .map(|d| match prev.disks.iter().find(|p| p.name == d.name) {
                    Some(p) => diff(&d.chunks, &p.chunks),
                    None => Some(d.chunks.clone()),
                })
                .collect()
        };
        let chunks = if squash_chunks {
            chunks
                .into_iter()
                .map(|c| Some(squash(c.as_deref().unwrap_or_default())))
                .collect()
        } else {
            chunks
        };
        Reply::ok_json(&self.snapshot_json(snap, chunks))
    }

    /// Removes a snapshot's files and record, dropping its references.
    fn remove_snapshot(&mut self, id: &str) -> Result<(), Reply> {
        let Some(snap) = self.snapshots.get(id) else {
            return Ok(());
        };
        for disk in &snap.disks {
            if let Err(error) = std::fs::remove_file(&disk.path) {
                return Err(Reply::server_error(&remove_error(&disk.path, &error)));
            }
        }
        let dir = self.repo.join("CoriolisSnapshots").join(id);
        let _ = std::fs::remove_dir(dir);
        if let Some(snap) = self.snapshots.remove(id) {
            for disk in &snap.disks {
                disk.map.release(&mut self.volume);
            }
        }
        Ok(())
    }

    /// `DELETE /vms/{vmID}/snapshots/{snapshotID}`: idempotent.
    pub(crate) fn delete_snapshot(&mut self, vm_id: &str, id: &str) -> Reply {
        match self.snapshots.get(id) {
            None => return Reply::empty(StatusCode::OK),
            Some(snap) if snap.vm_id != vm_id => {
                return Reply::error(StatusCode::CONFLICT, "Conflict", "VM id missmatch");
            }
            Some(_) => {}
        }
        match self.remove_snapshot(id) {
            Ok(()) => Reply::empty(StatusCode::OK),
            Err(reply) => reply,
        }
    }

    /// `DELETE /vms/{vmID}/snapshots`: purge every snapshot of the VM.
    pub(crate) fn purge(&mut self, vm_id: &str) -> Reply {
        if let Err(reply) = self.vm_or_500(vm_id) {
            return reply;
        }
        for id in self.snapshot_ids(vm_id) {
            if let Err(reply) = self.remove_snapshot(&id) {
                return reply;
            }
        }
        Reply::empty(StatusCode::OK)
    }

    /// The data endpoint's lookup: the snapshot file of `disk`, or the
    /// error reply (500 `not found`, 409, or 404 with an empty body).
    pub(crate) fn disk_data(&self, vm_id: &str, id: &str, disk: &str) -> Result<PathBuf, Reply> {
        let snap = self.owned_snapshot(vm_id, id)?;
        snap.disks
            .iter()
            .rev()
            .find(|d| d.name == disk)
            .map(|d| d.path.clone())
            .ok_or_else(|| Reply::empty(StatusCode::NOT_FOUND))
    }
}

/// `squashChunks`: merge logically adjacent chunks, keeping the first
/// physical offset.
pub(crate) fn squash(chunks: &[Chunk]) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for chunk in chunks {
        match out.last_mut() {
            Some(last) if last.start + last.length == chunk.start => last.length += chunk.length,
            _ => out.push(*chunk),
        }
    }
    out
}

/// `compareTo`: the chunks of `new` with no exact (start, length,
/// physical) twin in `old`; `None` (JSON `null`) when there are none.
pub(crate) fn diff(new: &[Chunk], old: &[Chunk]) -> Option<Vec<Chunk>> {
    let mut out: Option<Vec<Chunk>> = None;
    for chunk in new {
        if !old.contains(chunk) {
            out.get_or_insert_with(Vec::new).push(*chunk);
        }
    }
    out
}

/// A random UUIDv4 in its hyphenated lower-case form.
pub(crate) fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: u64, length: u64, physical_start: u64) -> Chunk {
        Chunk {
            start,
            length,
            physical_start,
        }
    }

    #[test]
    fn squash_merges_logical_adjacency_only() {
        assert_eq!(squash(&[]), vec![]);
        assert_eq!(
            squash(&[c(0, 10, 100), c(10, 5, 900), c(20, 5, 30), c(25, 5, 0)]),
            vec![c(0, 15, 100), c(20, 10, 30)]
        );
    }

    #[test]
    fn diff_is_an_exact_triple_match() {
        let old = [c(0, 10, 100), c(10, 10, 200)];
        assert_eq!(diff(&old, &old), None);
        assert_eq!(diff(&[], &old), None);
        assert_eq!(
            diff(&[c(0, 5, 100), c(5, 5, 105), c(10, 10, 200)], &old),
            Some(vec![c(0, 5, 100), c(5, 5, 105)])
        );
        assert_eq!(diff(&[c(0, 10, 101)], &old), Some(vec![c(0, 10, 101)]));
    }

    #[test]
    fn go_json_escapes_html_and_ends_with_newline() {
        assert_eq!(
            go_json(&"a<b>&c\u{2028}"),
            b"\"a\\u003cb\\u003e\\u0026c\\u2028\"\n"
        );
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
