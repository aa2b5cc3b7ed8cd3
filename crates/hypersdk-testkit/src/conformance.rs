//! The provider conformance suite.
//!
//! Scenario functions that take any `&dyn Provider` and check the contract of
//! [`Provider`]: each is gated by [`Provider::capabilities`], so a provider
//! that does not support an operation is checked for returning
//! [`ErrorKind::Unsupported`] instead. Every provider crate runs the same
//! list, against its real peer (vcsim for vSphere, the OVM test server) or
//! in memory, so the providers behave alike.
//!
//! Scenarios panic with a message naming the provider and what broke, as test
//! assertions do. They may create snapshots and VMs on the provider (VM names
//! start with `conformance-`); they delete the snapshots they create.
//!
//! This module is test support, not a stable API.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;

use hypersdk_core::blocks::BlockSource;
use hypersdk_core::memory::MemoryProvider;
use hypersdk_core::model::{DiskFormat, DiskInfo, Extent, VmFilter, VmInfo, VmRef};
use hypersdk_core::provider::{
    Capability, DiskData, DiskRef, DiskTransfer, ExportOptions, ImportOptions, ImportPackage,
    Provider,
};
use hypersdk_core::{Error, ErrorKind, Result};

/// Changes a live disk behind the provider's back, as a guest would.
///
/// Providers whose platform lets a test write to a VM's disk (memory, the OVM
/// test server) implement it so the suite can check snapshots and changed
/// extents against known writes.
#[async_trait]
pub trait DiskWriter: Send + Sync {
    /// Writes `data` at `offset` of the live disk.
    async fn write(&self, disk: &DiskRef, offset: u64, data: &[u8]) -> Result<()>;
    /// Discards (trims) `range` of the live disk.
    async fn discard(&self, disk: &DiskRef, range: Extent) -> Result<()>;
}

#[async_trait]
impl DiskWriter for MemoryProvider {
    async fn write(&self, disk: &DiskRef, offset: u64, data: &[u8]) -> Result<()> {
        self.write_disk(disk, offset, data)
    }

    async fn discard(&self, disk: &DiskRef, range: Extent) -> Result<()> {
        self.discard_disk(disk, range)
    }
}

/// What the suite may use on the provider under test.
#[derive(Clone)]
pub struct Fixture {
    /// A VM with at least one disk of at least 1 MiB, which the suite reads,
    /// snapshots and exports. Its disks should hold some data.
    pub vm: VmRef,
    /// Writes to the VM's live disks, for the snapshot and changed-extent
    /// scenarios; they are skipped (and say so) without one.
    pub writer: Option<Arc<dyn DiskWriter>>,
}

impl Fixture {
    /// A fixture for `vm` without a writer.
    pub fn new(vm: VmRef) -> Self {
        Fixture { vm, writer: None }
    }

    /// Adds a writer.
    #[must_use]
    pub fn with_writer(mut self, w: Arc<dyn DiskWriter>) -> Self {
        self.writer = Some(w);
        self
    }
}

/// Whether `p` supports `c`, and discovery too: every scenario but
/// [`capabilities_are_honoured`] starts by looking the fixture VM up.
fn supports(p: &dyn Provider, c: Capability) -> bool {
    let caps = p.capabilities();
    caps.supports(Capability::Discover) && caps.supports(c)
}

fn expect_unsupported<T: std::fmt::Debug>(p: &dyn Provider, op: &str, r: Result<T>) {
    match r {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            let msg = e.to_string();
            assert!(
                msg.contains(p.name()),
                "{}: Unsupported error for {op} does not name the provider: {msg}",
                p.name()
            );
        }
        other => panic!(
            "{}: {op} is not in capabilities() but returned {other:?} instead of Unsupported",
            p.name()
        ),
    }
}

async fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() as usize);
    let mut s = src
        .read_stream(Extent::new(0, src.len()))
        .await
        .unwrap_or_else(|e| panic!("read_stream of {}: {e}", src.describe()));
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap_or_else(|e| panic!("reading {}: {e}", src.describe())));
    }
    assert_eq!(
        out.len() as u64,
        src.len(),
        "read_stream of {} returned a wrong byte count",
        src.describe()
    );
    out
}

async fn fixture_vm(p: &dyn Provider, fx: &Fixture) -> VmInfo {
    let vm = p
        .vm(&fx.vm)
        .await
        .unwrap_or_else(|e| panic!("{}: fixture {} not found: {e}", p.name(), fx.vm));
    assert!(
        !vm.disks.is_empty(),
        "{}: the fixture VM needs at least one disk",
        p.name()
    );
    vm
}

/// Operations outside `capabilities()` return `Unsupported`, naming the
/// provider; operations inside it do not.
pub async fn capabilities_are_honoured(p: &dyn Provider, fx: &Fixture) {
    let caps = p.capabilities();
    let vm = fx.vm.clone();
    if !caps.supports(Capability::Discover) {
        expect_unsupported(p, "discover", p.discover(&VmFilter::all()).await);
        expect_unsupported(p, "vm", p.vm(&vm).await);
        // Nothing else can be checked without knowing the VM.
        return;
    }
    let info = fixture_vm(p, fx).await;
    let disk = DiskRef::new(VmRef::id(&info.id), info.disks[0].id.clone());
    if !caps.supports(Capability::Snapshots) {
        expect_unsupported(p, "create_snapshot", p.create_snapshot(&vm, "x").await);
        expect_unsupported(p, "list_snapshots", p.list_snapshots(&vm).await);
    }
    if !caps.supports(Capability::Export) {
        expect_unsupported(
            p,
            "export",
            p.export(&vm, &ExportOptions::default()).await.map(|_| ()),
        );
    }
    if !caps.supports(Capability::Import) {
        let pkg = ImportPackage::new(VmInfo::new("", "conformance-unsupported"));
        expect_unsupported(p, "import", p.import(pkg, &ImportOptions::default()).await);
    }
    if !caps.supports(Capability::OpenDisk) {
        expect_unsupported(p, "open_disk", p.open_disk(&disk, None).await.map(|_| ()));
    }
    if !caps.supports(Capability::ChangedExtents) {
        expect_unsupported(
            p,
            "changed_extents",
            p.changed_extents(&disk, None, "none").await,
        );
    }
}

/// Discovery finds the fixture VM, filters work, lookups of missing VMs are
/// `NotFound`, and the order is stable.
pub async fn discover_and_lookup(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::Discover) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let all = p.discover(&VmFilter::all()).await.expect("discover");
    assert!(
        all.iter().any(|v| v.id == vm.id),
        "{name}: discover() does not list the fixture VM"
    );
    assert_eq!(
        all,
        p.discover(&VmFilter::all()).await.expect("discover"),
        "{name}: discover() order is not stable"
    );
    let by_name = p
        .discover(&VmFilter::all().with_name(vm.name.clone()))
        .await
        .expect("discover by name");
    assert!(
        by_name.iter().all(|v| v.name == vm.name) && by_name.iter().any(|v| v.id == vm.id),
        "{name}: a name filter returned other VMs or missed the fixture"
    );
    let none = p
        .discover(&VmFilter::all().with_name("conformance-no-such-vm-*"))
        .await
        .expect("discover none");
    assert!(
        none.is_empty(),
        "{name}: a non-matching filter returned VMs"
    );
    for r in [VmRef::id(vm.id.clone()), VmRef::name(vm.name.clone())] {
        let got = p
            .vm(&r)
            .await
            .unwrap_or_else(|e| panic!("{name}: vm({r}): {e}"));
        assert_eq!(got.id, vm.id, "{name}: vm({r}) returned another VM");
    }
    let e = p
        .vm(&VmRef::name("conformance-no-such-vm"))
        .await
        .expect_err("a missing VM must be an error");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{name}: missing VM gave {e}");
    assert!(
        e.to_string().contains("conformance-no-such-vm"),
        "{name}: the NotFound message does not name the VM: {e}"
    );
}

/// The fixture VM's facts are coherent: unique disk ids, positive
/// capacities, allocation within capacity, at most one boot disk at 0.
pub async fn vm_info_is_coherent(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::Discover) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let mut ids = std::collections::BTreeSet::new();
    for d in &vm.disks {
        assert!(
            ids.insert(d.id.clone()),
            "{name}: duplicate disk id {}",
            d.id
        );
        assert!(
            d.capacity_bytes > 0,
            "{name}: disk {} has no capacity",
            d.id
        );
        if let Some(a) = d.allocated_bytes {
            assert!(
                a <= d.capacity_bytes,
                "{name}: disk {} allocates more than its capacity",
                d.id
            );
        }
    }
    let boot0 = vm.disks.iter().filter(|d| d.boot_order == Some(0)).count();
    assert!(boot0 <= 1, "{name}: more than one disk has boot_order 0");
    let json = serde_json_roundtrip(&vm);
    assert_eq!(
        json, vm,
        "{name}: VmInfo does not survive a JSON round trip"
    );
}

fn serde_json_roundtrip(vm: &VmInfo) -> VmInfo {
    let s = serde_json::to_string(vm).expect("serialize VmInfo");
    serde_json::from_str(&s).expect("deserialize VmInfo")
}

/// Snapshots are created, listed oldest first with a valid parent chain, and
/// deleted; deleting twice is `NotFound`.
pub async fn snapshot_lifecycle(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::Snapshots) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let r = VmRef::id(vm.id.clone());
    let before = p.list_snapshots(&r).await.expect("list_snapshots");
    let a = p
        .create_snapshot(&r, "conformance-a")
        .await
        .expect("create a");
    let b = p
        .create_snapshot(&r, "conformance-b")
        .await
        .expect("create b");
    assert_eq!(a.vm_id, vm.id, "{name}: snapshot names another VM");
    assert_eq!(a.name, "conformance-a");
    assert_ne!(a.id, b.id, "{name}: two snapshots share an id");
    let list = p.list_snapshots(&r).await.expect("list_snapshots");
    assert_eq!(
        list.len(),
        before.len() + 2,
        "{name}: snapshots missing from list"
    );
    let pa = list.iter().position(|s| s.id == a.id).expect("a listed");
    let pb = list.iter().position(|s| s.id == b.id).expect("b listed");
    assert!(pa < pb, "{name}: list_snapshots is not oldest first");
    for s in &list {
        if let Some(parent) = &s.parent {
            assert!(
                list.iter().any(|x| &x.id == parent),
                "{name}: snapshot {} has a parent that is not listed",
                s.id
            );
        }
    }
    p.delete_snapshot(&b.to_ref()).await.expect("delete b");
    p.delete_snapshot(&a.to_ref()).await.expect("delete a");
    let e = p
        .delete_snapshot(&a.to_ref())
        .await
        .expect_err("deleting a deleted snapshot must fail");
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "{name}: second delete gave {e}"
    );
    let after = p.list_snapshots(&r).await.expect("list_snapshots");
    assert_eq!(after, before, "{name}: deleted snapshots are still listed");
}

/// Disks read by range: exact lengths, bounds checked, holes read as zeros,
/// streams equal ranges.
pub async fn open_disk_reads_ranges(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::OpenDisk) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    for d in &vm.disks {
        let r = DiskRef::new(VmRef::id(vm.id.clone()), d.id.clone());
        let src = p.open_disk(&r, None).await.expect("open_disk");
        let len = src.len();
        assert_eq!(len, d.capacity_bytes, "{name}: {r}: len != capacity");
        let head = src
            .read_range(Extent::new(0, 4096.min(len)))
            .await
            .expect("head");
        assert_eq!(head.len() as u64, 4096.min(len));
        let tail = src.read_range(Extent::new(len - 1, 1)).await.expect("tail");
        assert_eq!(tail.len(), 1);
        assert!(
            src.read_range(Extent::new(len, 0))
                .await
                .expect("empty")
                .is_empty(),
            "{name}: an empty range returned bytes"
        );
        let e = src
            .read_range(Extent::new(len - 1, 2))
            .await
            .expect_err("a range past the end must fail");
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "{name}: past-end read gave {e}"
        );
        let all = read_all(src.as_ref()).await;
        assert_eq!(
            &all[..head.len()],
            &head[..],
            "{name}: stream != range at head"
        );
        if let Some(alloc) = src.allocated_extents().await.expect("allocated_extents") {
            assert!(
                alloc
                    .as_slice()
                    .last()
                    .is_none_or(|e| e.offset + e.length <= len),
                "{name}: allocated extents run past the end"
            );
            for hole in alloc.complement(Extent::new(0, len)).iter() {
                let s = hole.offset as usize;
                let e = (hole.offset + hole.length) as usize;
                assert!(
                    all[s..e].iter().all(|&b| b == 0),
                    "{name}: {r}: bytes in the hole {hole} are not zero"
                );
            }
        }
    }
}

/// A snapshot's disk keeps its content while the live disk changes.
pub async fn snapshot_disk_is_frozen(p: &dyn Provider, fx: &Fixture) {
    let Some(w) = &fx.writer else { return };
    if !supports(p, Capability::Snapshots) || !supports(p, Capability::OpenSnapshotDisk) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let r = DiskRef::new(VmRef::id(vm.id.clone()), vm.disks[0].id.clone());
    let at = Extent::new(4096, 16);
    let snap = p
        .create_snapshot(&r.vm, "conformance-frozen")
        .await
        .expect("snapshot");
    let before = p
        .open_disk(&r, Some(&snap.id))
        .await
        .expect("open snapshot disk")
        .read_range(at)
        .await
        .expect("read");
    let new = flip(&before);
    w.write(&r, at.offset, &new).await.expect("write");
    let frozen = p.open_disk(&r, Some(&snap.id)).await.expect("open again");
    assert_eq!(
        frozen.read_range(at).await.expect("read"),
        before,
        "{name}: a snapshot's disk changed after a live write"
    );
    if supports(p, Capability::OpenDisk) {
        let live = p.open_disk(&r, None).await.expect("open live");
        assert_eq!(&live.read_range(at).await.expect("read")[..], &new[..]);
    }
    w.write(&r, at.offset, &before).await.expect("restore");
    p.delete_snapshot(&snap.to_ref()).await.expect("delete");
}

fn flip(b: &[u8]) -> Vec<u8> {
    b.iter().map(|x| !x).collect()
}

/// Changed extents cover every write between two snapshots, lie within the
/// newer snapshot's allocation, and (where supported) report freed ranges.
pub async fn changed_extents_track_writes(p: &dyn Provider, fx: &Fixture) {
    let Some(w) = &fx.writer else { return };
    if !supports(p, Capability::Snapshots) || !supports(p, Capability::ChangedExtents) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let r = DiskRef::new(VmRef::id(vm.id.clone()), vm.disks[0].id.clone());
    let cap = vm.disks[0].capacity_bytes;
    let s1 = p
        .create_snapshot(&r.vm, "conformance-c1")
        .await
        .expect("s1");
    let at = Extent::new(cap / 2, 4096);
    w.write(&r, at.offset, &[0xA5; 4096]).await.expect("write");
    let s2 = p
        .create_snapshot(&r.vm, "conformance-c2")
        .await
        .expect("s2");
    let delta = p
        .changed_extents(&r, Some(&s1.id), &s2.id)
        .await
        .expect("changed_extents");
    assert_eq!(delta.disk_size, cap, "{name}: wrong disk size in delta");
    assert!(
        delta.changed.covers(at),
        "{name}: changed extents {:?} miss the write at {at}",
        delta.changed
    );
    let full = p.changed_extents(&r, None, &s2.id).await.expect("full");
    assert!(
        delta.changed.subtract(&full.changed).is_empty(),
        "{name}: changed extents lie outside the allocation"
    );
    assert!(
        full.changed.covers(at),
        "{name}: the full list misses the write"
    );
    if supports(p, Capability::OpenSnapshotDisk) {
        let src = p.open_disk(&r, Some(&s2.id)).await.expect("open s2");
        assert_eq!(
            &src.read_range(at).await.expect("read")[..],
            &[0xA5; 4096][..]
        );
    }
    if supports(p, Capability::FreedExtents) {
        let hole = Extent::new(cap / 2, 1 << 20).intersection(&Extent::new(0, cap));
        if let Some(hole) = hole {
            w.discard(&r, hole).await.expect("discard");
            let s3 = p
                .create_snapshot(&r.vm, "conformance-c3")
                .await
                .expect("s3");
            let d = p
                .changed_extents(&r, Some(&s2.id), &s3.id)
                .await
                .expect("delta");
            let freed = d.freed.expect("FreedExtents promises freed ranges");
            assert!(
                !freed.intersect(&full.changed).is_empty(),
                "{name}: a discard of allocated data reported nothing freed"
            );
            assert!(
                freed.subtract(&full.changed).is_empty(),
                "{name}: freed ranges that were never allocated"
            );
            p.delete_snapshot(&s3.to_ref()).await.expect("delete s3");
        }
    }
    let back = p.changed_extents(&r, Some(&s2.id), &s1.id).await;
    assert!(
        back.is_err(),
        "{name}: a diff backwards in time was accepted"
    );
    p.delete_snapshot(&s2.to_ref()).await.expect("delete s2");
    p.delete_snapshot(&s1.to_ref()).await.expect("delete s1");
}

/// An export yields every disk with its bytes, leaves the source VM as it
/// was, and missing VMs are `NotFound`.
pub async fn export_yields_every_disk(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::Export) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let r = VmRef::id(vm.id.clone());
    let mut export = p
        .export(&r, &ExportOptions::default())
        .await
        .expect("export");
    assert_eq!(export.vm.id, vm.id, "{name}: export of another VM");
    assert!(!export.method.is_empty(), "{name}: export method is empty");
    let disks = export.take_disks();
    assert_eq!(disks.len(), vm.disks.len(), "{name}: export lost disks");
    for (t, d) in disks.into_iter().zip(&vm.disks) {
        assert_eq!(t.info.id, d.id, "{name}: exported disks out of order");
        assert!(!t.file_name.is_empty(), "{name}: disk without a file name");
        assert!(
            !t.file_name.contains('/') && !t.file_name.contains(".."),
            "{name}: unsafe file name {}",
            t.file_name
        );
        let bytes = match t.data {
            DiskData::Blocks(src) => read_all(src.as_ref()).await,
            DiskData::Stream(mut s) => {
                let mut v = Vec::new();
                while let Some(c) = s.next().await {
                    v.extend_from_slice(&c.expect("export stream"));
                }
                v
            }
        };
        if let Some(size) = t.size {
            assert_eq!(
                bytes.len() as u64,
                size,
                "{name}: disk size differs from its stream"
            );
        }
        if t.format == DiskFormat::Raw && supports(p, Capability::OpenDisk) {
            let dr = DiskRef::new(r.clone(), d.id.clone());
            let live = read_all(p.open_disk(&dr, None).await.expect("open").as_ref()).await;
            assert!(
                live == bytes,
                "{name}: exported raw disk differs from the disk"
            );
        }
    }
    export.complete().await.expect("complete");
    assert_eq!(
        p.vm(&r).await.expect("vm after export"),
        vm,
        "{name}: export modified the source VM"
    );
    let e = p
        .export(
            &VmRef::name("conformance-no-such-vm"),
            &ExportOptions::default(),
        )
        .await
        .expect_err("export of a missing VM");
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "{name}: export of a missing VM gave {e}"
    );
}

/// What is exported can be imported back under a new name with the same
/// bytes; the same name again is `AlreadyExists`; a broken stream leaves no
/// VM behind.
pub async fn export_import_round_trip(p: &dyn Provider, fx: &Fixture) {
    if !supports(p, Capability::Export) || !supports(p, Capability::Import) {
        return;
    }
    let name = p.name();
    let vm = fixture_vm(p, fx).await;
    let export = p
        .export(&VmRef::id(vm.id.clone()), &ExportOptions::default())
        .await
        .expect("export");
    let new_name = format!("conformance-copy-of-{}", vm.name);
    let (pkg, lease) = export.into_package();
    let opts = ImportOptions::default().with_name(new_name.clone());
    let copy = p.import(pkg, &opts).await.expect("import");
    lease.complete().await.expect("complete the export");
    assert_eq!(copy.name, new_name);
    assert_ne!(copy.id, vm.id, "{name}: import reused the source id");
    assert_eq!(
        copy.disks.len(),
        vm.disks.len(),
        "{name}: import lost disks"
    );
    if supports(p, Capability::OpenDisk) {
        for (a, b) in vm.disks.iter().zip(&copy.disks) {
            let sa = p
                .open_disk(&DiskRef::new(VmRef::id(vm.id.clone()), a.id.clone()), None)
                .await
                .expect("open source");
            let sb = p
                .open_disk(
                    &DiskRef::new(VmRef::id(copy.id.clone()), b.id.clone()),
                    None,
                )
                .await
                .expect("open copy");
            assert!(
                read_all(sa.as_ref()).await == read_all(sb.as_ref()).await,
                "{name}: imported disk {} differs from its source",
                b.id
            );
        }
    }
    let again = p
        .export(&VmRef::id(vm.id.clone()), &ExportOptions::default())
        .await
        .expect("export again");
    let (again, lease) = again.into_package();
    let e = p
        .import(again, &opts)
        .await
        .expect_err("importing over an existing name must fail");
    lease
        .abort("import refused")
        .await
        .expect("abort the export");
    assert_eq!(
        e.kind(),
        ErrorKind::AlreadyExists,
        "{name}: duplicate import gave {e}"
    );

    // A stream that fails half-way: the import fails and leaves nothing.
    let broken_name = "conformance-broken-import";
    let mut spec = VmInfo::new("", broken_name);
    spec.disks.push(DiskInfo::new("d0", 2 << 20));
    let chunks: Vec<Result<Bytes>> = vec![
        Ok(Bytes::from(vec![1u8; 1 << 20])),
        Err(Error::network("http://peer/disk", "connection reset", None)),
    ];
    let pkg = ImportPackage::new(spec.clone()).with_disk(DiskTransfer {
        info: spec.disks[0].clone(),
        file_name: "broken.raw".into(),
        format: DiskFormat::Raw,
        size: Some(2 << 20),
        data: DiskData::Stream(stream::iter(chunks).boxed()),
    });
    assert!(
        p.import(pkg, &ImportOptions::default()).await.is_err(),
        "{name}: an import from a failing stream succeeded"
    );
    let left = p
        .discover(&VmFilter::all().with_name(broken_name))
        .await
        .expect("discover");
    assert!(left.is_empty(), "{name}: a failed import left a VM behind");
}

/// Runs every scenario in order.
pub async fn run_all(p: &dyn Provider, fx: &Fixture) {
    capabilities_are_honoured(p, fx).await;
    discover_and_lookup(p, fx).await;
    vm_info_is_coherent(p, fx).await;
    snapshot_lifecycle(p, fx).await;
    open_disk_reads_ranges(p, fx).await;
    snapshot_disk_is_frozen(p, fx).await;
    changed_extents_track_writes(p, fx).await;
    export_yields_every_disk(p, fx).await;
    export_import_round_trip(p, fx).await;
}
