//! The directory provider: the conformance suite, byte-exact round trips
//! with the memory provider, and real packages from other tools.

use std::path::Path;

use futures::StreamExt;
use hypersdk_core::ErrorKind;
use hypersdk_core::memory::MemoryProvider;
use hypersdk_core::model::{DiskFormat, Extent, VmFilter, VmRef};
use hypersdk_core::provider::{DiskData, DiskRef, ExportOptions, ImportOptions, Provider};
use hypersdk_ova::archive::OvaIndex;
use hypersdk_ova::dir::OvaDirProvider;
use hypersdk_testkit::conformance::{self, Fixture};

fn testdata(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

async fn bytes_of(data: DiskData) -> Vec<u8> {
    match data {
        DiskData::Blocks(src) => {
            let mut out = Vec::new();
            let mut s = src.read_stream(Extent::new(0, src.len())).await.unwrap();
            while let Some(c) = s.next().await {
                out.extend_from_slice(&c.unwrap());
            }
            out
        }
        DiskData::Stream(mut s) => {
            let mut out = Vec::new();
            while let Some(c) = s.next().await {
                out.extend_from_slice(&c.unwrap());
            }
            out
        }
    }
}

/// Imports the memory provider's web01 into `dir` and returns the source.
async fn seed(dir: &Path) -> MemoryProvider {
    let mem = MemoryProvider::with_demo_vms();
    let export = mem
        .export(&VmRef::name("web01"), &ExportOptions::default())
        .await
        .unwrap();
    let (pkg, lease) = export.into_package();
    let vm = OvaDirProvider::new(dir)
        .import(pkg, &ImportOptions::default())
        .await
        .unwrap();
    lease.complete().await.unwrap();
    assert_eq!(vm.id, "web01.ova");
    mem
}

#[tokio::test]
async fn conformance_over_an_imported_package() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let p = OvaDirProvider::new(dir.path());
    conformance::run_all(&p, &Fixture::new(VmRef::id("web01.ova"))).await;
}

#[tokio::test]
async fn conformance_over_a_package_made_by_ovftool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova"),
        dir.path().join("ttylinux.ova"),
    )
    .unwrap();
    let p = OvaDirProvider::new(dir.path());
    conformance::run_all(&p, &Fixture::new(VmRef::id("ttylinux.ova"))).await;
}

#[tokio::test]
async fn an_import_keeps_every_byte_and_fact() {
    let dir = tempfile::tempdir().unwrap();
    let mem = seed(dir.path()).await;
    let p = OvaDirProvider::new(dir.path());
    let src = mem.vm(&VmRef::name("web01")).await.unwrap();
    let got = p.vm(&VmRef::name("web01")).await.unwrap();
    assert_eq!(
        (got.cpus, got.memory_mib, got.firmware, got.disks.len()),
        (src.cpus, src.memory_mib, src.firmware, src.disks.len())
    );
    let mut export = p
        .export(&VmRef::id("web01.ova"), &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!(export.method, "ova-directory");
    let descriptor = export.descriptor.clone().unwrap();
    assert_eq!(descriptor.file_name, "web01.ovf");
    for (t, d) in export.take_disks().into_iter().zip(&src.disks) {
        assert_eq!(t.info.capacity_bytes, d.capacity_bytes);
        assert_eq!(t.format, DiskFormat::Raw);
        let live = mem
            .open_disk(&DiskRef::new(VmRef::id(src.id.clone()), d.id.clone()), None)
            .await
            .unwrap();
        let expected = live.read_range(Extent::new(0, live.len())).await.unwrap();
        assert!(bytes_of(t.data).await == expected, "disk {} differs", d.id);
    }
    export.complete().await.unwrap();
    // The package verifies against its own manifest.
    let index = OvaIndex::open(dir.path().join("web01.ova")).await.unwrap();
    assert_eq!(index.verify().await.unwrap().len(), 1 + src.disks.len());
    assert!(!dir.path().join("web01.ova.part").exists());
}

#[tokio::test]
async fn real_packages_are_discovered_and_bad_ones_explained() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "ova/govmomi-ttylinux-pc_i486-16.1.ova",
        "ova/forklift-2nd_disk_v3.ova",
        "ova/glance-testserver.ova",
        "ova/ganeti-ova.ova",
        "ovf/govmomi-3vm-vapp-vcenter.ovf",
    ] {
        let name = Path::new(f).file_name().unwrap();
        std::fs::copy(testdata(f), dir.path().join(name)).unwrap();
    }
    let p = OvaDirProvider::new(dir.path());
    let vms = p.discover(&VmFilter::all()).await.unwrap();
    let ids: Vec<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    // The gzip'd ganeti OVA is skipped; the vApp has three systems
    // (read by eye from its VirtualSystemCollection).
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(ids.contains(&"govmomi-ttylinux-pc_i486-16.1.ova"));
    assert_eq!(
        ids.iter()
            .filter(|i| i.starts_with("govmomi-3vm-vapp-vcenter.ovf#"))
            .count(),
        3
    );
    // Asked for by id, the bad package's own error comes back.
    let err = p.vm(&VmRef::id("ganeti-ova.ova")).await.unwrap_err();
    assert!(err.to_string().contains("gzip-compressed"), "{err}");
    // An OVF package whose disks are not beside it: export names the file.
    let vm = vms
        .iter()
        .find(|v| v.id.starts_with("govmomi-3vm"))
        .unwrap();
    let err = p
        .export(&VmRef::id(vm.id.clone()), &ExportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Snapshots are not a thing for a package.
    assert_eq!(
        p.create_snapshot(&VmRef::id(vm.id.clone()), "s")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unsupported
    );
}

#[tokio::test]
async fn an_ovf_package_with_its_files_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        testdata("ovf/govmomi-ttylinux-ovftool4.0.ovf"),
        dir.path().join("ttylinux.ovf"),
    )
    .unwrap();
    std::fs::copy(
        testdata("vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk"),
        dir.path().join("ttylinux-pc_i486-16.1-disk1.vmdk"),
    )
    .unwrap();
    let p = OvaDirProvider::new(dir.path());
    let mut export = p
        .export(&VmRef::id("ttylinux.ovf"), &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!(export.method, "ovf-directory");
    let disks = export.take_disks();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].format, DiskFormat::VmdkStreamOptimized);
    assert_eq!(disks[0].size, Some(1_048_576));
    let data = bytes_of(disks.into_iter().next().unwrap().data).await;
    assert_eq!(&data[..4], b"KDMV");
}

#[tokio::test]
async fn a_tampered_package_is_not_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova")).unwrap();
    bytes[7168 + 4242] ^= 1; // inside the disk
    std::fs::write(dir.path().join("tty.ova"), &bytes).unwrap();
    let p = OvaDirProvider::new(dir.path());
    // Its facts still read (the descriptor is intact)...
    p.vm(&VmRef::id("tty.ova")).await.unwrap();
    // ...but its bytes are not handed on.
    let err = p
        .export(&VmRef::id("tty.ova"), &ExportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
}

#[tokio::test]
async fn names_with_hashes_and_unknown_disks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova"),
        dir.path().join("web#01.ova"),
    )
    .unwrap();
    let p = OvaDirProvider::new(dir.path());
    let vm = p.vm(&VmRef::id("web#01.ova")).await.unwrap();
    assert_eq!(vm.id, "web#01.ova");
    let err = p
        .export(
            &VmRef::id("web#01.ova"),
            &ExportOptions::default().with_disks(["no-such-disk"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // An import named with '#' gets a file name without it.
    let export = p
        .export(&VmRef::id("web#01.ova"), &ExportOptions::default())
        .await
        .unwrap();
    let (pkg, lease) = export.into_package();
    let copy = p
        .import(pkg, &ImportOptions::default().with_name("copy#2"))
        .await
        .unwrap();
    lease.complete().await.unwrap();
    assert_eq!(copy.id, "copy_2.ova");
    assert_eq!(copy.name, "copy#2");
}
