//! `OvmProvider` against the OVM exporter test server: the provider
//! conformance suite, discovery and its warnings, snapshots, snapshot disk
//! reads, the client-side diff against the exporter's own, and export.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::model::{ControllerKind, DiskFormat, Extent, ExtentList, VmFilter, VmRef};
use hypersdk_core::provider::{
    Capability, DiskData, DiskRef, ExportOptions, ImportOptions, ImportPackage, Provider,
};
use hypersdk_core::retry::Backoff;
use hypersdk_core::{ErrorKind, Result};
use hypersdk_ovm::provider::{SNAPSHOT_COMPATIBLE_ANNOTATION, vm_warnings};
use hypersdk_ovm::{OvmClient, OvmProvider, SnapshotQuery, chunks_to_extents};
use hypersdk_testkit::conformance::{self, DiskWriter, Fixture};
use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, VmSpec};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

fn provider(ex: &OvmExporter) -> OvmProvider {
    let client = OvmClient::builder(&ex.endpoint())
        .credentials(ex.username(), ex.password())
        .ca_pem(ex.ca_pem())
        .retry(
            Backoff::default()
                .with_initial(Duration::from_millis(10))
                .with_max_attempts(Some(4)),
        )
        .build()
        .expect("client");
    OvmProvider::new(client)
}

/// The guest writing to its live disks, through the test server.
struct Guest(Arc<OvmExporter>);

#[async_trait]
impl DiskWriter for Guest {
    async fn write(&self, disk: &DiskRef, offset: u64, data: &[u8]) -> Result<()> {
        let VmRef::Id(vm) = &disk.vm else {
            panic!("the suite names VMs by id")
        };
        self.0
            .write(vm, &disk.disk_id, offset, data)
            .map_err(|e| hypersdk_core::Error::io("live disk", e))
    }

    async fn discard(&self, disk: &DiskRef, range: Extent) -> Result<()> {
        let VmRef::Id(vm) = &disk.vm else {
            panic!("the suite names VMs by id")
        };
        self.0
            .trim(vm, &disk.disk_id, range.offset, range.length)
            .map_err(|e| hypersdk_core::Error::io("live disk", e))
    }
}

/// A server with `web` (two disks with data) and `db`.
async fn server(max_extent: Option<u64>) -> (Arc<OvmExporter>, VmSpec, VmSpec) {
    let web = VmSpec::new("web")
        .with_disk(DiskSpec::random("xvda", 4 * MIB))
        .with_disk(DiskSpec::random("xvdb", 2 * MIB));
    let db = VmSpec::new("db").with_disk(DiskSpec::random("xvda", MIB));
    let mut b = OvmExporter::builder().vm(web.clone()).vm(db.clone());
    if let Some(m) = max_extent {
        b = b.max_extent(m);
    }
    let ex = Arc::new(b.start().await.expect("start the OVM exporter test server"));
    ex.write(&web.id, &web.disks[0].name, 0, &pattern(1, 1_500_000))
        .unwrap();
    ex.write(&web.id, &web.disks[0].name, 3 * MIB, &pattern(2, 300_000))
        .unwrap();
    ex.write(&web.id, &web.disks[1].name, 512 << 10, &pattern(3, 100_000))
        .unwrap();
    ex.write(&db.id, &db.disks[0].name, 0, &pattern(4, 50_000))
        .unwrap();
    (ex, web, db)
}

#[tokio::test]
async fn conformance_suite() {
    let (ex, web, _) = server(None).await;
    let p = provider(&ex);
    // The exporter reports disk sizes only for snapshots: a VM under
    // backup has one (its chain's last), and so has the fixture.
    p.client().create_snapshot(&web.id).await.unwrap();
    let fx = Fixture::new(VmRef::id(&web.id)).with_writer(Arc::new(Guest(Arc::clone(&ex))));
    conformance::run_all(&p, &fx).await;
    // The same through a name reference.
    let fx = Fixture::new(VmRef::name("web")).with_writer(Arc::new(Guest(Arc::clone(&ex))));
    conformance::discover_and_lookup(&p, &fx).await;
    conformance::capabilities_are_honoured(&p, &fx).await;
}

#[tokio::test]
async fn discovery_maps_vms_and_reports_what_the_exporter_hides() {
    let (ex, web, db) = server(None).await;
    let phy_only = VmSpec::new("san-only").with_phy_disk("/dev/mapper/3600a0b8000");
    let mixed = VmSpec::new("mixed")
        .with_disk(DiskSpec::random("xvda", MIB))
        .with_phy_disk("/dev/mapper/3600a0b8001");
    let iso = VmSpec::new("with-iso")
        .with_disk(DiskSpec::random("xvda", MIB))
        .with_disk(DiskSpec::random("xvdc:cdrom", MIB).incompatible());
    for v in [&phy_only, &mixed, &iso] {
        ex.add_vm(v.clone());
    }
    let base = provider(&ex);
    base.client().create_snapshot(&web.id).await.unwrap();
    // What the caller knows from vm.cfg (here: the server's own record).
    let p = base.with_phy_disks(&mixed.id, ex.phy_disks(&mixed.id));
    let caps = p.capabilities();
    assert!(caps.supports(Capability::FreedExtents) && caps.supports(Capability::OpenSnapshotDisk));
    assert!(!caps.supports(Capability::Import) && !caps.supports(Capability::OpenDisk));

    let all = p.discover(&VmFilter::all()).await.unwrap();
    let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["db", "mixed", "san-only", "web", "with-iso"]);
    let w = all.iter().find(|v| v.id == web.id).unwrap();
    assert_eq!(w.uuid.as_deref(), Some(web.uuid.as_str()));
    assert_eq!(w.disks.len(), 2);
    for (d, spec) in w.disks.iter().zip(&web.disks) {
        assert_eq!(d.id, spec.name);
        assert_eq!(d.name.as_deref(), Some(spec.device.as_str()));
        assert_eq!(d.capacity_bytes, spec.size, "size from the newest snapshot");
        assert_eq!(d.format, DiskFormat::Raw);
        assert!(
            d.backing
                .as_deref()
                .is_some_and(|b| b.ends_with(&spec.name))
        );
    }
    assert_eq!(
        w.disks[1].controller.as_ref().unwrap().kind,
        ControllerKind::Other
    );
    assert_eq!(w.disks[1].controller.as_ref().unwrap().unit, 1);
    assert!(vm_warnings(w).is_empty(), "{:?}", vm_warnings(w));
    assert_eq!(w.annotations[SNAPSHOT_COMPATIBLE_ANNOTATION], "true");

    // No snapshot yet: sizes unknown, and said so.
    let d = all.iter().find(|v| v.id == db.id).unwrap();
    assert_eq!(d.disks[0].capacity_bytes, 0);
    assert!(
        vm_warnings(d)
            .iter()
            .any(|w| w.contains("sizes are unknown"))
    );
    // Only phy: disks: listed with no disk and "compatible"; warned.
    let s = all.iter().find(|v| v.id == phy_only.id).unwrap();
    assert!(s.disks.is_empty());
    assert_eq!(s.annotations[SNAPSHOT_COMPATIBLE_ANNOTATION], "true");
    assert!(
        vm_warnings(s).iter().any(|w| w.contains("only phy: disks")),
        "{:?}",
        vm_warnings(s)
    );
    // phy: disks declared by the caller are named.
    let m = all.iter().find(|v| v.id == mixed.id).unwrap();
    assert_eq!(m.disks.len(), 1);
    assert!(
        vm_warnings(m)
            .iter()
            .any(|w| w.contains("/dev/mapper/3600a0b8001")),
        "{:?}",
        vm_warnings(m)
    );
    // An ISO makes the VM incompatible.
    let i = all.iter().find(|v| v.id == iso.id).unwrap();
    assert_eq!(i.annotations[SNAPSHOT_COMPATIBLE_ANNOTATION], "false");
    let iw = vm_warnings(i);
    assert!(
        iw.iter().any(|w| w.contains("CD-ROM")) && iw.iter().any(|w| w.contains("reflinked")),
        "{iw:?}"
    );

    // Lookups by id, name, UUID (either form) and path.
    for r in [
        VmRef::id(&web.id),
        VmRef::name("web"),
        VmRef::uuid(web.uuid.to_uppercase()),
        VmRef::uuid(&web.id),
        VmRef::InventoryPath("/repo/web".into()),
    ] {
        assert_eq!(p.vm(&r).await.unwrap().id, web.id, "{r}");
    }
    let e = p
        .vm(&VmRef::id("0004fb00000600000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    ex.add_vm(VmSpec::new("web"));
    let e = p.vm(&VmRef::name("web")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let filtered = p.discover(&VmFilter::all().with_name("w*")).await.unwrap();
    assert_eq!(filtered.len(), 3);
}

#[tokio::test]
async fn snapshots_open_disk_and_the_client_diff() {
    let (ex, web, db) = server(Some(256 << 10)).await;
    let p = provider(&ex);
    let r = VmRef::id(&web.id);
    let d0 = DiskRef::new(r.clone(), web.disks[0].name.clone());
    let s1 = p.create_snapshot(&r, "nightly-1").await.unwrap();
    assert_eq!(s1.name, "nightly-1");
    assert_eq!(s1.disks.len(), 2);
    assert_eq!(s1.disks[0].capacity_bytes, 4 * MIB);
    let listed = p.list_snapshots(&r).await.unwrap();
    assert_eq!(listed, vec![s1.clone()]);
    // Snapshots made elsewhere are named by their id.
    let other = p.client().create_snapshot(&web.id).await.unwrap();
    assert_eq!(p.list_snapshots(&r).await.unwrap()[1].name, other.id);
    p.delete_snapshot(&hypersdk_core::model::SnapshotRef::new(
        web.id.clone(),
        other.id.clone(),
    ))
    .await
    .unwrap();

    // The live disk cannot be read; a snapshot's disk reads as its file.
    let e = p.open_disk(&d0, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("snapshot") && e.to_string().contains("ovm"),
        "{e}"
    );
    let src = p.open_disk(&d0, Some(&s1.id)).await.unwrap();
    let file1 =
        std::fs::read(ex.snapshot_disk_path(&web.id, &s1.id, &d0.disk_id).unwrap()).unwrap();
    assert!(src.read_range(Extent::new(0, src.len())).await.unwrap()[..] == file1[..]);

    // The guest rewrites 8 KiB inside a big extent, writes new data, and
    // trims 1 MiB of old data.
    ex.write(&web.id, &d0.disk_id, 700_000, &[0xEE; 8192])
        .unwrap();
    ex.write(&web.id, &d0.disk_id, 2 * MIB, &pattern(9, 100_000))
        .unwrap();
    ex.trim(&web.id, &d0.disk_id, 3 * MIB, MIB).unwrap();
    let s2 = p.create_snapshot(&r, "nightly-2").await.unwrap();
    let delta = p.changed_extents(&d0, Some(&s1.id), &s2.id).await.unwrap();
    assert_eq!(delta.disk_size, 4 * MIB);
    let freed = delta.freed.clone().unwrap();
    // Exactly the clusters touched (64 KiB clusters): the 8 KiB write
    // copies one cluster, the 100 000 bytes two.
    let c = 64 << 10;
    let want_changed =
        ExtentList::from_unsorted([Extent::new(700_000 / c * c, c), Extent::new(2 * MIB, 2 * c)])
            .squash();
    assert_eq!(delta.changed, want_changed);
    // The trim freed what was allocated in [3 MiB, 4 MiB).
    let alloc1 = chunks_to_extents(
        &p.client()
            .snapshot(&web.id, &s1.id, &SnapshotQuery::raw())
            .await
            .unwrap()
            .disk(&d0.disk_id)
            .unwrap()
            .chunks,
        4 * MIB,
    );
    assert_eq!(
        freed,
        alloc1
            .intersect(&ExtentList::from_unsorted([Extent::new(3 * MIB, MIB)]))
            .squash()
    );
    assert!(!freed.is_empty());

    // The exporter's compareTo re-sends the whole split extent and misses
    // the trim; the client diff is within it.
    let server = p
        .client()
        .snapshot(
            &web.id,
            &s2.id,
            &SnapshotQuery::raw().compare_to(s1.id.clone()),
        )
        .await
        .unwrap();
    let server = chunks_to_extents(&server.disk(&d0.disk_id).unwrap().chunks, 4 * MIB);
    assert!(delta.changed.subtract(&server).is_empty());
    assert!(
        server.total_bytes() > delta.changed.total_bytes() + 64 * 1024,
        "server {server} client {}",
        delta.changed
    );
    assert!(freed.intersect(&server).is_empty());

    // Patching the first snapshot's image with the diff gives the second's.
    let src2 = p.open_disk(&d0, Some(&s2.id)).await.unwrap();
    let mut image = file1.clone();
    for e in delta.changed.iter() {
        let bytes = src2.read_range(*e).await.unwrap();
        image[e.offset as usize..e.end() as usize].copy_from_slice(&bytes);
    }
    for e in freed.iter() {
        image[e.offset as usize..e.end() as usize].fill(0);
    }
    let file2 =
        std::fs::read(ex.snapshot_disk_path(&web.id, &s2.id, &d0.disk_id).unwrap()).unwrap();
    assert!(
        image == file2,
        "the patched image differs from the newer snapshot"
    );

    // No change on the other disk; backwards and self diffs are refused.
    let d1 = DiskRef::new(r.clone(), web.disks[1].name.clone());
    let none = p.changed_extents(&d1, Some(&s1.id), &s2.id).await.unwrap();
    assert!(none.changed.is_empty() && none.freed.unwrap().is_empty());
    for (a, b) in [(&s2.id, &s1.id), (&s1.id, &s1.id)] {
        let e = p.changed_extents(&d0, Some(a), b).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    let full = p.changed_extents(&d0, None, &s2.id).await.unwrap();
    assert_eq!(
        full.changed,
        chunks_to_extents(&s2_chunks(&p, &web.id, &s2.id, &d0.disk_id).await, 4 * MIB)
    );

    // Deleting: a snapshot of another VM, or one already gone, is NotFound.
    let e = p
        .delete_snapshot(&hypersdk_core::model::SnapshotRef::new(
            db.id.clone(),
            s1.id.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    p.delete_snapshot(&s1.to_ref()).await.unwrap();
    let e = p.delete_snapshot(&s1.to_ref()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(p.list_snapshots(&r).await.unwrap(), vec![s2.clone()]);
}

async fn s2_chunks(p: &OvmProvider, vm: &str, snap: &str, disk: &str) -> Vec<hypersdk_ovm::Chunk> {
    p.client()
        .snapshot(vm, snap, &SnapshotQuery::raw())
        .await
        .unwrap()
        .disk(disk)
        .unwrap()
        .chunks
        .clone()
}

async fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = src.read_stream(Extent::new(0, src.len())).await.unwrap();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn export_reads_a_snapshot_and_cleans_up() {
    let (ex, web, _) = server(None).await;
    let p = provider(&ex);
    let r = VmRef::id(&web.id);
    // A snapshot taken for the export, deleted when it completes.
    let mut export = p.export(&r, &ExportOptions::default()).await.unwrap();
    assert_eq!(export.method, "ovm-snapshot");
    let snap = export.snapshot.clone().unwrap();
    assert_eq!(ex.snapshot_ids(&web.id), vec![snap.id.clone()]);
    assert!(
        export
            .descriptor
            .as_ref()
            .unwrap()
            .file_name
            .ends_with(".ovm.json")
    );
    let disks = export.take_disks();
    assert_eq!(disks.len(), 2);
    for (t, spec) in disks.into_iter().zip(&web.disks) {
        assert_eq!(t.info.id, spec.name);
        assert_eq!(t.file_name, spec.name);
        assert_eq!(t.format, DiskFormat::Raw);
        assert_eq!(t.size, Some(spec.size));
        assert_eq!(t.info.capacity_bytes, spec.size);
        let DiskData::Blocks(src) = t.data else {
            panic!("expected a block source")
        };
        let file = std::fs::read(
            ex.snapshot_disk_path(&web.id, &snap.id, &spec.name)
                .unwrap(),
        )
        .unwrap();
        assert!(read_all(src.as_ref()).await == file);
        assert!(src.allocated_extents().await.unwrap().is_some());
    }
    export.complete().await.unwrap();
    assert!(
        ex.snapshot_ids(&web.id).is_empty(),
        "the export's snapshot was left behind"
    );

    // Aborting deletes it too; an export of a given snapshot keeps it.
    let export = p.export(&r, &ExportOptions::default()).await.unwrap();
    export.abort("target full").await.unwrap();
    assert!(ex.snapshot_ids(&web.id).is_empty());
    let keep = p.create_snapshot(&r, "keep").await.unwrap();
    let opts = ExportOptions::default()
        .with_snapshot(keep.id.clone())
        .with_disks([web.disks[1].name.clone()]);
    let mut export = p.export(&r, &opts).await.unwrap();
    let disks = export.take_disks();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].info.id, web.disks[1].name);
    export.complete().await.unwrap();
    assert_eq!(ex.snapshot_ids(&web.id), vec![keep.id.clone()]);
    // A disk the snapshot does not have: NotFound, nothing left behind.
    let e = p
        .export(&r, &ExportOptions::default().with_disks(["nope.img"]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = p
        .export(
            &r,
            &ExportOptions::default()
                .with_snapshot(keep.id.clone())
                .with_disks(["nope.img"]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(ex.snapshot_ids(&web.id), vec![keep.id.clone()]);
    // A failure after the export took its snapshot deletes it.
    ex.faults()
        .fail_status(500, 20, hypersdk_testkit::ovm::Route::DiskData);
    let e = p.export(&r, &ExportOptions::default()).await.unwrap_err();
    assert!(
        e.is_retryable() || e.kind() == ErrorKind::Unavailable,
        "{e}"
    );
    ex.faults().clear();
    assert_eq!(ex.snapshot_ids(&web.id), vec![keep.id.clone()]);
    // Import is not supported.
    let e = p
        .import(
            ImportPackage::new(hypersdk_core::model::VmInfo::new("", "x")),
            &ImportOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}
