//! OVA import through `CreateImportSpec` → `ImportVApp` → NFC uploads,
//! against the vcsim harness (which keeps and hashes what NFC receives):
//! the good OVAs of the test data, packages made here with qemu-img
//! (streamOptimized sent byte for byte; monolithicSparse and raw converted
//! on the fly, checked by qemu-img), an NFC connection cut mid-upload
//! (the import restarts and the result is identical), digest mismatches,
//! bad input refused before anything is created, the cleanup of a
//! failed attempt, and an import continued within its lease by another
//! holder of its login session (finished disks skipped), refused cleanly
//! once the lease expired or from another session.
//!
//! The `ova-upload` example's tests cover the command line: SIGKILL and
//! resume, and a wrong thumbprint refused before credentials.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::{DiskFormat, DiskInfo, Extent, VmInfo};
use hypersdk_core::progress::{CallbackSink, Phase, Progress, ProgressEvent};
use hypersdk_core::retry::Backoff;
use hypersdk_ova::archive::{OvaIndex, OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_ova::vmdk::encode::EncodeOptions;
use hypersdk_testkit::images;
use hypersdk_testkit::qemu;
use hypersdk_testkit::vcsim::{UploadedFile, Vcsim};
use hypersdk_vsphere::Client;
use hypersdk_vsphere::client::SessionCookie;
use hypersdk_vsphere::import::{
    ImportObserver, ImportTarget, LeaseUnusable, Leftover, OvaImportOptions, ReattachState,
    STREAM_VMDK, UnknownLength, begin_import, clean_up_leftover, completed_import, import_ova,
    import_ova_reader, lease_unusable, reattach_ova,
};
use hypersdk_vsphere::lease::NfcLease;
use hypersdk_vsphere::types::MoRef;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hypersdk-ova/testdata")
        .join(rel)
}

async fn connect(sim: &Vcsim) -> Client {
    Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().expect("the harness runs TLS"))
        .connect()
        .await
        .expect("connect to vcsim")
}

fn opts(name: &str) -> OvaImportOptions {
    OvaImportOptions::new(ImportTarget::datastore("LocalDS_0"))
        .with_name(name)
        .with_default_network("VM Network")
        .with_backoff(
            Backoff::default()
                .with_initial(Duration::from_millis(50))
                .with_max_delay(Duration::from_millis(200))
                .with_max_attempts(Some(4)),
        )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Checksum::compute(Algorithm::Sha256, bytes).to_hex()
}

async fn uploads_of(sim: &Vcsim, vm_name: &str) -> Vec<UploadedFile> {
    sim.uploaded_files()
        .await
        .expect("uploads")
        .into_iter()
        .filter(|u| u.vm_name == vm_name)
        .collect()
}

async fn vms_named(sim: &Vcsim, name: &str) -> usize {
    let inv = sim.inventory().await.expect("inventory");
    inv.vms.iter().filter(|v| v.entity.name == name).count()
}

async fn calls(sim: &Vcsim, method: &str) -> u64 {
    sim.call_counts()
        .await
        .expect("calls")
        .get(method)
        .copied()
        .unwrap_or(0)
}

/// The bytes of entry `name` of the OVA at `ova`.
async fn entry_bytes(ova: &Path, name: &str) -> Vec<u8> {
    let index = OvaIndex::open(ova).await.unwrap();
    let e = index.open_entry(name).unwrap();
    e.read_range(Extent::new(0, e.len()))
        .await
        .unwrap()
        .to_vec()
}

/// Packs an OVA of one VM whose disks are the given files.
async fn pack(dir: &Path, name: &str, disks: &[(PathBuf, DiskFormat, u64)]) -> PathBuf {
    let mut vm = VmInfo::new(name, name);
    vm.cpus = 1;
    vm.memory_mib = 64;
    let mut files = Vec::new();
    for (i, (path, format, capacity)) in disks.iter().enumerate() {
        vm.disks.push(DiskInfo::new(format!("disk{i}"), *capacity));
        let size = std::fs::metadata(path).unwrap().len();
        files.push(
            OvfDisk::new(path.file_name().unwrap().to_str().unwrap())
                .with_format(*format)
                .with_size(size),
        );
    }
    let ovf = write_descriptor(&vm, &files).unwrap();
    let out = dir.join(format!("{name}.ova"));
    let mut ova = OvaWriter::create(&out, WriteOptions::default())
        .await
        .unwrap();
    ova.write_descriptor(&format!("{name}.ovf"), ovf.as_bytes())
        .await
        .unwrap();
    for (path, _, _) in disks {
        let size = std::fs::metadata(path).unwrap().len();
        let file = tokio::fs::File::open(path).await.unwrap();
        ova.append_reader(
            path.file_name().unwrap().to_str().unwrap(),
            Some(size),
            file,
        )
        .await
        .unwrap();
    }
    ova.finish().await.unwrap();
    out
}

#[derive(Debug, Default)]
struct Seen {
    events: Mutex<Vec<String>>,
}

impl ImportObserver for Seen {
    fn lease_ready(&self, attempt: u32, leftover: &Leftover) {
        self.events
            .lock()
            .unwrap()
            .push(format!("lease {attempt} {}", leftover.name));
    }
    fn file_uploaded(&self, path: &str, _bytes: u64) {
        self.events.lock().unwrap().push(format!("file {path}"));
    }
    fn attempt_failed(&self, attempt: u32, _error: &hypersdk_core::Error, retrying: bool) {
        self.events
            .lock()
            .unwrap()
            .push(format!("failed {attempt} {retrying}"));
    }
    fn cleaned_up(&self, _leftover: &Leftover, kept: bool) {
        self.events.lock().unwrap().push(format!("cleaned {kept}"));
    }
    fn finished(&self, _vm: &MoRef) {
        self.events.lock().unwrap().push("finished".into());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_good_ova_in_the_test_data_imports() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;

    // ttylinux (ovftool): streamOptimized, sent byte for byte.
    let tty = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let report = import_ova(&client, &tty, &opts("ttylinux"))
        .await
        .expect("ttylinux");
    assert_eq!(report.name, "ttylinux");
    assert_eq!(report.attempts, 1);
    assert_eq!(report.files.len(), 1);
    assert!(!report.files[0].converted);
    let disk = entry_bytes(&tty, "ttylinux-pc_i486-16.1-disk1.vmdk").await;
    let ups = uploads_of(&sim, "ttylinux").await;
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert!(ups[0].complete);
    assert_eq!(ups[0].http_method, "POST");
    assert_eq!(ups[0].content_type, "application/x-vnd.vmware-streamVmdk");
    assert_eq!(
        (ups[0].size, ups[0].sha256.as_str()),
        (disk.len() as u64, sha256_hex(&disk).as_str())
    );
    let inv = sim.inventory().await.unwrap();
    let vm = inv.vm("ttylinux").expect("the VM exists");
    assert_eq!(vm.entity.moref, report.vm.value);
    assert_eq!(vm.disks.len(), 1);

    // The same package read once from a stream.
    let file = tokio::fs::File::open(&tty).await.unwrap();
    let report = import_ova_reader(&client, file, &opts("ttylinux-stream"))
        .await
        .expect("ttylinux from a stream");
    assert_eq!(report.files[0].bytes_sent, disk.len() as u64);
    let ups = uploads_of(&sim, "ttylinux-stream").await;
    assert_eq!(ups[0].sha256, sha256_hex(&disk));

    // forklift (qemu-img): a monolithicSparse disk, converted on the fly;
    // qemu-img reads what vSphere received as the same disk.
    let fork = testdata("ova/forklift-2nd_disk_v3.ova");
    let report = import_ova(&client, &fork, &opts("forklift"))
        .await
        .expect("forklift");
    assert!(report.files[0].converted);
    assert_eq!(
        report.files[0].source_format,
        DiskFormat::VmdkMonolithicSparse
    );
    let ups = uploads_of(&sim, "forklift").await;
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert!(ups[0].complete);
    assert_eq!(ups[0].size, report.files[0].bytes_sent);
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("2nd_disk.vmdk");
    std::fs::write(&original, entry_bytes(&fork, "2nd_disk.vmdk").await).unwrap();
    let info = qemu::info(&ups[0].path).await.expect("qemu-img info");
    assert_eq!(info.create_type.as_deref(), Some("streamOptimized"));
    assert_eq!(info.virtual_size, 1 << 30);
    assert!(qemu::compare(&original, &ups[0].path).await.unwrap());

    // It cannot be converted from a one-pass stream: refused before
    // anything is created.
    let imports = calls(&sim, "ImportVApp").await;
    let file = tokio::fs::File::open(&fork).await.unwrap();
    let e = import_ova_reader(&client, file, &opts("forklift-stream"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("2nd_disk.vmdk"), "{e}");
    assert_eq!(calls(&sim, "ImportVApp").await, imports);

    // glance's "disk" is 4 bytes of ASCII although declared a VMDK.
    let e = import_ova(
        &client,
        &testdata("ova/glance-testserver.ova"),
        &opts("glance"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("testserver-disk1.vmdk"), "{e}");
    assert_eq!(calls(&sim, "ImportVApp").await, imports);
    assert_eq!(vms_named(&sim, "glance").await, 0);

    // The bad packages are refused as archives.
    for bad in [
        "ova/ganeti-ova.ova",
        "ova/ganeti-wrong_ova.ova",
        "ova/glance-testserver-bad-ovf.ova",
        "ova/glance-testserver-no-disk.ova",
        "ova/glance-testserver-no-ovf.ova",
    ] {
        let e = import_ova(&client, &testdata(bad), &opts("bad"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{bad}: {e}");
    }
    assert_eq!(calls(&sim, "ImportVApp").await, imports);
}

#[tokio::test(flavor = "multi_thread")]
async fn made_packages_arrive_exactly_and_convert_on_the_fly() {
    let dir = tempfile::tempdir().unwrap();
    let raw = images::mixed(dir.path().join("data.raw"), 3 << 20, 7, 50).unwrap();
    let stream = dir.path().join("stream.vmdk");
    qemu::to_stream_optimized(&raw.path, &stream)
        .await
        .expect("qemu-img");
    let sparse = dir.path().join("sparse.vmdk");
    qemu::to_vmdk(&raw.path, &sparse, "monolithicSparse")
        .await
        .expect("qemu-img");
    let plain = dir.path().join("plain.raw");
    std::fs::copy(&raw.path, &plain).unwrap();
    let ova = pack(
        dir.path(),
        "three",
        &[
            (stream.clone(), DiskFormat::VmdkStreamOptimized, raw.len),
            (sparse.clone(), DiskFormat::VmdkMonolithicSparse, raw.len),
            (plain.clone(), DiskFormat::Raw, raw.len),
        ],
    )
    .await;

    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let seen = Arc::new(Seen::default());
    let report = import_ova(&client, &ova, &opts("three").with_observer(seen.clone()))
        .await
        .expect("import");
    let converted: Vec<bool> = report.files.iter().map(|f| f.converted).collect();
    assert_eq!(converted, [false, true, true]);
    let ups = uploads_of(&sim, "three").await;
    assert_eq!(ups.len(), 3, "{ups:?}");
    assert!(ups.iter().all(|u| u.complete && u.http_method == "POST"));
    let by_order = |i: usize| {
        ups.iter()
            .find(|u| u.name == format!("disk-{i}.vmdk"))
            .unwrap_or_else(|| panic!("disk-{i} uploaded: {ups:?}"))
    };
    // The streamOptimized disk arrives byte for byte.
    assert_eq!(
        by_order(0).sha256,
        sha256_hex(&std::fs::read(&stream).unwrap())
    );
    // The converted ones are streamOptimized VMDKs of the same disk, with
    // the announced length (Content-Length from the measuring pass).
    for i in [1, 2] {
        let up = by_order(i);
        assert_eq!(up.size, report.files[i].bytes_sent);
        let info = qemu::info(&up.path).await.unwrap();
        assert_eq!(info.create_type.as_deref(), Some("streamOptimized"));
        assert!(
            qemu::compare(&raw.path, &up.path).await.unwrap(),
            "disk-{i} differs"
        );
    }
    assert_eq!(
        *seen.events.lock().unwrap(),
        [
            "lease 1 three",
            "file stream.vmdk",
            "file sparse.vmdk",
            "file plain.raw",
            "finished"
        ]
    );

    // Chunked upload of a converted disk (no measuring pass).
    let ova = pack(dir.path(), "chunked", &[(plain, DiskFormat::Raw, raw.len)]).await;
    import_ova(
        &client,
        &ova,
        &opts("chunked").with_unknown_length(UnknownLength::Chunked),
    )
    .await
    .expect("chunked import");
    let ups = uploads_of(&sim, "chunked").await;
    assert!(qemu::compare(&raw.path, &ups[0].path).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nfc_cut_restarts_the_import_with_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let raw = images::random(dir.path().join("r.raw"), 4 << 20, 3).unwrap();
    let stream = dir.path().join("r.vmdk");
    qemu::to_stream_optimized(&raw.path, &stream)
        .await
        .expect("qemu-img");
    let vmdk_sha = sha256_hex(&std::fs::read(&stream).unwrap());
    let ova = pack(
        dir.path(),
        "cut",
        &[(stream.clone(), DiskFormat::VmdkStreamOptimized, raw.len)],
    )
    .await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;

    sim.cut_nfc_after(1 << 20).await.unwrap();
    let seen = Arc::new(Seen::default());
    let report = import_ova(&client, &ova, &opts("cut").with_observer(seen.clone()))
        .await
        .expect("restarted import");
    assert_eq!(report.attempts, 2);
    let ups = uploads_of(&sim, "cut").await;
    assert_eq!(ups.len(), 2, "{ups:?}");
    assert!(!ups[0].complete && ups[0].size <= 1 << 20, "{ups:?}");
    assert!(ups[1].complete);
    assert_eq!(ups[1].sha256, vmdk_sha, "the restarted upload differs");
    assert_ne!(
        ups[0].lease, ups[1].lease,
        "a new lease for the new attempt"
    );
    // The half-imported VM of the first attempt is gone.
    assert_eq!(vms_named(&sim, "cut").await, 1);
    let inv = sim.inventory().await.unwrap();
    assert_eq!(inv.vm("cut").unwrap().entity.moref, report.vm.value);
    assert_eq!(
        *seen.events.lock().unwrap(),
        [
            "lease 1 cut",
            "cleaned false",
            "failed 1 true",
            "lease 2 cut",
            "file r.vmdk",
            "finished"
        ]
    );
    assert!(calls(&sim, "HttpNfcLeaseAbort").await >= 1);
    assert!(calls(&sim, "Destroy_Task").await >= 1);

    // A one-pass stream cannot be sent again: the import fails, and
    // leaves nothing behind.
    sim.cut_nfc_after(1 << 20).await.unwrap();
    let file = tokio::fs::File::open(&ova).await.unwrap();
    let e = import_ova_reader(&client, file, &opts("cut-once"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot be read again"), "{e}");
    assert_eq!(vms_named(&sim, "cut-once").await, 0);

    // Asked to keep it, a failed import leaves its VM for inspection,
    // and clean_up_leftover removes it later.
    sim.cut_nfc_after(1 << 20).await.unwrap();
    let seen = Arc::new(Seen::default());
    let e = import_ova(
        &client,
        &ova,
        &opts("kept")
            .with_backoff(Backoff::none())
            .with_keep_on_failure(true)
            .with_observer(seen.clone()),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(vms_named(&sim, "kept").await, 1);
    let inv = sim.inventory().await.unwrap();
    let kept = MoRef::new(
        "VirtualMachine",
        inv.vm("kept").unwrap().entity.moref.clone(),
    );
    let leftover = Leftover {
        entity: kept,
        name: "kept".into(),
        lease: None,
    };
    assert!(
        clean_up_leftover(&client, &leftover, Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(vms_named(&sim, "kept").await, 0);
    assert!(
        !clean_up_leftover(&client, &leftover, Duration::from_secs(5))
            .await
            .unwrap(),
        "nothing left the second time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_digest_never_completes_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let raw = images::random(dir.path().join("r.raw"), 2 << 20, 5).unwrap();
    let stream = dir.path().join("d.vmdk");
    qemu::to_stream_optimized(&raw.path, &stream)
        .await
        .expect("qemu-img");
    let ova = pack(
        dir.path(),
        "flip",
        &[(stream.clone(), DiskFormat::VmdkStreamOptimized, raw.len)],
    )
    .await;
    // Flip a byte in the middle of the disk entry (the manifest, written
    // by the packer, lists its SHA-256).
    let index = OvaIndex::open(&ova).await.unwrap();
    assert!(index.manifest().is_some());
    let entry = index.entry("d.vmdk").unwrap().clone();
    let mut bytes = std::fs::read(&ova).unwrap();
    let at = (entry.data_offset + entry.size / 2) as usize;
    bytes[at] ^= 0x40;
    let bad = dir.path().join("bad.ova");
    std::fs::write(&bad, &bytes).unwrap();

    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    for (name, from_stream) in [("flip-file", false), ("flip-stream", true)] {
        let completes = calls(&sim, "HttpNfcLeaseComplete").await;
        let e = if from_stream {
            let file = tokio::fs::File::open(&bad).await.unwrap();
            import_ova_reader(&client, file, &opts(name))
                .await
                .unwrap_err()
        } else {
            import_ova(&client, &bad, &opts(name)).await.unwrap_err()
        };
        assert_eq!(e.kind(), ErrorKind::Integrity, "{name}: {e}");
        assert!(e.to_string().contains("d.vmdk"), "{e}");
        let ups = uploads_of(&sim, name).await;
        assert_eq!(ups.len(), 1, "{ups:?}");
        if !from_stream {
            // Read through the index, the entry's last chunk is held back
            // until its digest matched: the server never has it all.
            assert!(
                !ups[0].complete,
                "the server got the whole bad file: {ups:?}"
            );
        }
        // The packer put the manifest last, so a stream learns of the
        // mismatch only after the disk went out: the lease is aborted,
        // never completed, and the VM destroyed.
        assert_eq!(calls(&sim, "HttpNfcLeaseComplete").await, completes);
        assert_eq!(vms_named(&sim, name).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_placement_is_refused_before_anything_is_created() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let tty = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let e = import_ova(
        &client,
        &tty,
        &OvaImportOptions::new(ImportTarget::datastore("NoSuchDS")).with_name("x"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("LocalDS_0"),
        "lists what exists: {e}"
    );
    let e = import_ova(
        &client,
        &tty,
        &opts("x").with_default_network("No Such Net"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("VM Network"),
        "lists what exists: {e}"
    );
    let e = import_ova(
        &client,
        &tty,
        &OvaImportOptions::new(
            ImportTarget::datastore("LocalDS_0").with_resource_pool("/DC0/host/nope"),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(calls(&sim, "ImportVApp").await, 0);

    // A named pool, folder and host are used.
    let inv = sim.inventory().await.unwrap();
    let host = inv.hosts.iter().find(|h| !h.cluster.is_empty()).unwrap();
    let report = import_ova(
        &client,
        &tty,
        &opts("placed").with_default_network("DC0_DVPG0"),
    )
    .await
    .expect("import");
    let placed = OvaImportOptions::new(
        ImportTarget::datastore("LocalDS_0")
            .with_resource_pool("/DC0/host/DC0_C0/Resources")
            .with_folder("/DC0/vm")
            .with_host(host.entity.name.clone()),
    )
    .with_name("placed2")
    .with_power_on(true);
    let report2 = import_ova(&client, &tty, &placed)
        .await
        .expect("placed import");
    assert_eq!(report2.attempts, 1);
    let inv = sim.inventory().await.unwrap();
    let vm = inv.vm("placed2").unwrap();
    assert_eq!(vm.host, host.entity.moref);
    assert_ne!(report.vm, report2.vm);
    // Powered on only when asked.
    assert_eq!(vm.power_state, "poweredOn");
    assert_eq!(inv.vm("placed").unwrap().power_state, "poweredOff");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_imports_another_providers_export() {
    use hypersdk_core::memory::MemoryProvider;
    use hypersdk_core::model::VmRef;
    use hypersdk_core::provider::{DiskRef, ExportOptions, ImportOptions, Provider};
    use hypersdk_vsphere::VsphereProvider;

    let memory = MemoryProvider::with_demo_vms();
    let web = memory.vm(&VmRef::name("web01")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for d in &web.disks {
        let src = memory
            .open_disk(&DiskRef::new(VmRef::id(web.id.clone()), d.id.clone()), None)
            .await
            .unwrap();
        let path = dir.path().join(format!("{}.raw", d.id));
        let bytes = src.read_range(Extent::new(0, src.len())).await.unwrap();
        std::fs::write(&path, &bytes).unwrap();
        expected.push(path);
    }
    let export = memory
        .export(&VmRef::name("web01"), &ExportOptions::default())
        .await
        .unwrap();
    let (package, lease) = export.into_package();

    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let vsphere = VsphereProvider::new(connect(&sim).await);
    let vm = vsphere
        .import(
            package,
            &ImportOptions::default()
                .with_location("datastore=LocalDS_0")
                .with_name("from-memory"),
        )
        .await
        .expect("import");
    lease.complete().await.unwrap();
    assert_eq!(vm.name, "from-memory");
    assert_eq!((vm.cpus, vm.memory_mib), (2, 4096));
    assert_eq!(vm.disks.len(), 2);
    let ups = uploads_of(&sim, "from-memory").await;
    assert_eq!(ups.len(), 2, "{ups:?}");
    for (i, raw) in expected.iter().enumerate() {
        let up = ups
            .iter()
            .find(|u| u.name == format!("disk-{i}.vmdk"))
            .unwrap();
        assert!(up.complete);
        assert!(
            qemu::compare(raw, &up.path).await.unwrap(),
            "disk {i} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn begin_import_lets_the_caller_send_the_files() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let tty = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let index = OvaIndex::open(&tty).await.unwrap();
    let descriptor = std::str::from_utf8(index.descriptor()).unwrap().to_owned();
    let disk = entry_bytes(&tty, "ttylinux-pc_i486-16.1-disk1.vmdk").await;

    let started = begin_import(&client, &descriptor, &opts("by-hand"))
        .await
        .expect("begin");
    assert_eq!(started.name(), "by-hand");
    assert_eq!(started.files().len(), 1);
    let file = &started.files()[0];
    assert_eq!(file.path, "ttylinux-pc_i486-16.1-disk1.vmdk");
    assert!(!file.create);
    let resp = client
        .transfer_http()
        .post(&file.url)
        .header("Content-Type", STREAM_VMDK)
        .body(disk.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let vm = started.complete().await.expect("complete");
    let inv = sim.inventory().await.unwrap();
    assert_eq!(inv.vm("by-hand").unwrap().entity.moref, vm.value);
    assert_eq!(
        uploads_of(&sim, "by-hand").await[0].sha256,
        sha256_hex(&disk)
    );

    // Aborted: the lease is released and the VM removed.
    let started = begin_import(&client, &descriptor, &opts("given-up"))
        .await
        .expect("begin");
    assert_eq!(vms_named(&sim, "given-up").await, 1);
    started.abort("changed my mind").await.unwrap();
    assert_eq!(vms_named(&sim, "given-up").await, 0);
    assert!(calls(&sim, "HttpNfcLeaseAbort").await >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nfc_export_imports_back_with_the_same_bytes() {
    use hypersdk_core::model::VmRef;
    use hypersdk_core::provider::{ExportOptions, ImportOptions, Provider};
    use hypersdk_vsphere::VsphereProvider;

    let dir = tempfile::tempdir().unwrap();
    let raw = images::mixed(dir.path().join("s.raw"), 2 << 20, 9, 50).unwrap();
    let vmdk = dir.path().join("s.vmdk");
    qemu::to_stream_optimized(&raw.path, &vmdk)
        .await
        .expect("qemu-img");
    let bytes = std::fs::read(&vmdk).unwrap();
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    sim.seed_disk("DC0_H0_VM0", 0, bytes.clone()).await.unwrap();
    let vsphere = VsphereProvider::new(connect(&sim).await);
    let export = vsphere
        .export(&VmRef::name("DC0_H0_VM0"), &ExportOptions::default())
        .await
        .expect("export");
    let (package, lease) = export.into_package();
    // The export's disk stream has no length up front: it goes chunked.
    assert_eq!(package.disks[0].size, None);
    let copy = vsphere
        .import(package, &ImportOptions::default().with_name("round-trip"))
        .await
        .expect("import");
    lease.complete().await.unwrap();
    assert_eq!(copy.name, "round-trip");
    let ups = uploads_of(&sim, "round-trip").await;
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert!(ups[0].complete);
    assert_eq!(ups[0].sha256, sha256_hex(&bytes));
    assert!(qemu::compare(&raw.path, &ups[0].path).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_round_trip_passes() {
    use hypersdk_core::model::VmRef;
    use hypersdk_testkit::conformance::{Fixture, export_import_round_trip};
    use hypersdk_vsphere::VsphereProvider;

    // ExportVm needs a powered-off VM.
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    sim.seed_disk("DC0_H0_VM0", 0, vec![0x5Au8; 64 << 10])
        .await
        .unwrap();
    let vsphere = VsphereProvider::new(connect(&sim).await);
    export_import_round_trip(&vsphere, &Fixture::new(VmRef::name("DC0_H0_VM0"))).await;
}

/// An OVA of one VM with two streamOptimized disks made by qemu-img, and
/// the bytes of each disk entry.
async fn two_disk_ova(dir: &Path, name: &str) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let a = images::random(dir.join("a.raw"), 3 << 20, 31).unwrap();
    let b = images::mixed(dir.join("b.raw"), 6 << 20, 32, 60).unwrap();
    let mut disks = Vec::new();
    let mut bytes = Vec::new();
    for (i, raw) in [a, b].iter().enumerate() {
        let vmdk = dir.join(format!("{name}-disk{i}.vmdk"));
        qemu::to_stream_optimized(&raw.path, &vmdk)
            .await
            .expect("qemu-img");
        bytes.push((
            format!("{name}-disk{i}.vmdk"),
            std::fs::read(&vmdk).unwrap(),
        ));
        disks.push((vmdk, DiskFormat::VmdkStreamOptimized, raw.len));
    }
    (pack(dir, name, &disks).await, bytes)
}

/// Starts an import of `ova` as `name` on `client`, sends its first disk
/// by hand and detaches: what a process killed after its first disk
/// leaves. The state comes back through JSON, as a process reads it.
async fn detached_after_first_disk(
    client: &Client,
    ova: &Path,
    name: &str,
    first: &[u8],
) -> ReattachState {
    let index = OvaIndex::open(ova).await.unwrap();
    let descriptor = std::str::from_utf8(index.descriptor()).unwrap().to_owned();
    let started = begin_import(client, &descriptor, &opts(name))
        .await
        .expect("begin");
    assert_eq!(started.files().len(), 2);
    let file = started.files()[0].clone();
    assert_eq!(file.path, format!("{name}-disk0.vmdk"));
    let resp = client
        .transfer_http()
        .post(&file.url)
        .header("Content-Type", STREAM_VMDK)
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let mut state = started.detach();
    assert_eq!(state.remaining().count(), 2);
    state.mark_finished(&file.path, first.len() as u64).unwrap();
    assert!(state.mark_finished("no-such.vmdk", 1).is_err());
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.contains(&state.lease.value), "{json}");
    serde_json::from_str(&json).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_import_is_finished_in_its_lease_skipping_the_sent_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, disks) = two_disk_ova(dir.path(), "again").await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let first = connect(&sim).await;
    let state = detached_after_first_disk(&first, &ova, "again", &disks[0].1).await;
    assert_eq!(state.remaining().count(), 1);
    // The process goes away without logging its session out.
    let cookie = first.leave_session().expect("a session");
    assert!(first.session_cookie().is_none());
    assert!(!format!("{cookie:?}").contains(&cookie.expose()[20..]));
    drop(first);

    // Another process, with the saved cookie: the session is reused (no
    // Login) and the lease is still ready.
    let logins = calls(&sim, "Login").await;
    let builder = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(SessionCookie::new(cookie.expose()).unwrap());
    assert!(!format!("{builder:?}").contains(&cookie.expose()[20..]));
    let second = builder.connect().await.expect("connect");
    assert!(second.session_reused());
    assert_eq!(second.session_generation(), 1);
    assert_eq!(calls(&sim, "Login").await, logins);

    let progress = calls(&sim, "HttpNfcLeaseProgress").await;
    let seen = Arc::new(Seen::default());
    let report = reattach_ova(
        &second,
        &state,
        &ova,
        &opts("again").with_observer(seen.clone()),
    )
    .await
    .expect("reattach");
    assert_eq!(report.vm, state.entity);
    assert_eq!(report.name, "again");
    assert_eq!(report.skipped, [disks[0].0.clone()]);
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].path, disks[1].0);
    assert!(
        calls(&sim, "HttpNfcLeaseProgress").await > progress,
        "renewed at once"
    );
    assert_eq!(
        *seen.events.lock().unwrap(),
        [format!("file {}", disks[1].0), "finished".to_owned()]
    );

    // Each disk went out once, into the same VM, byte for byte.
    let ups = uploads_of(&sim, "again").await;
    assert_eq!(ups.len(), 2, "{ups:?}");
    for (i, (_, bytes)) in disks.iter().enumerate() {
        let up = ups
            .iter()
            .find(|u| u.name == format!("disk-{i}.vmdk"))
            .unwrap_or_else(|| panic!("disk-{i} uploaded: {ups:?}"));
        assert!(up.complete);
        assert_eq!(up.vm, state.entity.value);
        assert_eq!(up.sha256, sha256_hex(bytes), "disk-{i}");
    }
    assert_eq!(vms_named(&sim, "again").await, 1);
    let inv = sim.inventory().await.unwrap();
    assert_eq!(inv.vm("again").unwrap().entity.moref, state.entity.value);
    assert!(
        sim.leases().await.unwrap().is_empty(),
        "the lease is complete"
    );
    second.logout().await.unwrap();
}

/// Records the state of an import once a file is finished, then freezes
/// the import's runtime for good: a process killed after its first disk
/// (nothing aborted, the lease left `ready`).
#[derive(Debug)]
struct FreezeAfterFirstFile {
    tx: Mutex<std::sync::mpsc::Sender<String>>,
}

impl ImportObserver for FreezeAfterFirstFile {
    fn reattach_state(&self, state: &ReattachState) {
        if state.remaining().count() == state.files.len() {
            return;
        }
        let json = serde_json::to_string(state).unwrap();
        let _ = self.tx.lock().unwrap().send(json);
        loop {
            std::thread::park();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_converted_finished_disk_is_not_encoded_again_on_reattach() {
    let dir = tempfile::tempdir().unwrap();
    let a = images::random(dir.path().join("a.raw"), 3 << 20, 41).unwrap();
    let b = images::mixed(dir.path().join("b.raw"), 4 << 20, 42, 50).unwrap();
    let ova = pack(
        dir.path(),
        "conv",
        &[
            (a.path.clone(), DiskFormat::Raw, a.len),
            (b.path.clone(), DiskFormat::Raw, b.len),
        ],
    )
    .await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");

    // The first process, on a runtime of its own that freezes once the
    // first disk (measured, then encoded and sent) is finished.
    let (url, user, password, ca) = (
        sim.url().to_string(),
        sim.username().to_owned(),
        sim.password().to_owned(),
        sim.ca_pem().unwrap().to_owned(),
    );
    let (state_tx, state_rx) = std::sync::mpsc::channel::<String>();
    let (cookie_tx, cookie_rx) = std::sync::mpsc::channel::<SessionCookie>();
    let first_ova = ova.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = Client::builder(url.as_str())
                .credentials(user.as_str(), password.as_str())
                .ca_pem(ca.as_str())
                .connect()
                .await
                .expect("connect");
            cookie_tx.send(client.session_cookie().unwrap()).unwrap();
            let observer = Arc::new(FreezeAfterFirstFile {
                tx: Mutex::new(state_tx),
            });
            let r = import_ova(&client, &first_ova, &opts("conv").with_observer(observer)).await;
            panic!("the import was to freeze after its first disk: {r:?}");
        });
    });
    let (cookie, json) = tokio::task::spawn_blocking(move || {
        let cookie = cookie_rx.recv_timeout(Duration::from_secs(60));
        let json = state_rx.recv_timeout(Duration::from_secs(120));
        (cookie, json)
    })
    .await
    .unwrap();
    let cookie = cookie.expect("the first process connected");
    let state: ReattachState = serde_json::from_str(&json.expect("the first disk went out"))
        .expect("the state reads back");
    assert_eq!(state.files.len(), 2);
    assert!(state.files[0].finished && !state.files[1].finished);
    // Both converted disks' upload lengths are recorded; the finished one
    // went out with it.
    assert!(
        state.files.iter().all(|f| f.upload_len.is_some()),
        "{state:?}"
    );
    assert_eq!(state.files[0].upload_len, Some(state.files[0].bytes));

    let second = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(cookie)
        .connect()
        .await
        .expect("connect");
    assert!(second.session_reused());

    // Other conversion options make another descriptor: refused before the
    // lease is touched, without encoding anything.
    let before = side_effects(&sim).await;
    let progress = calls(&sim, "HttpNfcLeaseProgress").await;
    let passes = Arc::new(Mutex::new(Vec::<String>::new()));
    let counted = {
        let passes = passes.clone();
        EncodeOptions::default().with_progress(Progress::new(CallbackSink::new(
            move |e: &ProgressEvent| {
                // Each encoding pass starts with an event at 0 bytes.
                if e.phase == Phase::Converting && e.bytes_done == 0 {
                    passes
                        .lock()
                        .unwrap()
                        .push(e.item.clone().unwrap_or_default());
                }
            },
        )))
    };
    let e = reattach_ova(
        &second,
        &state,
        &ova,
        &opts("conv")
            .with_encode(counted.clone())
            .with_unknown_length(UnknownLength::Chunked),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(side_effects(&sim).await, before);
    assert_eq!(calls(&sim, "HttpNfcLeaseProgress").await, progress);
    assert!(passes.lock().unwrap().is_empty(), "{passes:?}");

    let report = reattach_ova(&second, &state, &ova, &opts("conv").with_encode(counted))
        .await
        .expect("reattach");
    assert_eq!(report.skipped, ["a.raw"]);
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].path, "b.raw");
    assert!(report.files[0].converted);
    assert_eq!(Some(report.files[0].bytes_sent), state.files[1].upload_len);
    assert!(calls(&sim, "HttpNfcLeaseProgress").await > progress);
    // One encoding pass: the remaining disk's, as it was sent. The
    // finished disk was neither measured nor encoded again, and the
    // remaining one was not measured before the lease was renewed.
    assert_eq!(*passes.lock().unwrap(), ["b.raw"]);

    let ups = uploads_of(&sim, "conv").await;
    assert_eq!(ups.len(), 2, "{ups:?}");
    for (i, raw) in [&a, &b].iter().enumerate() {
        let up = ups
            .iter()
            .find(|u| u.name == format!("disk-{i}.vmdk"))
            .unwrap_or_else(|| panic!("disk-{i} uploaded: {ups:?}"));
        assert!(up.complete);
        assert_eq!(up.vm, state.entity.value);
        assert_eq!(Some(up.size), state.files[i].upload_len);
        assert!(
            qemu::compare(&raw.path, &up.path).await.unwrap(),
            "disk-{i} differs"
        );
    }
    assert!(
        sim.leases().await.unwrap().is_empty(),
        "the lease is complete"
    );
    assert_eq!(vms_named(&sim, "conv").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, disks) = two_disk_ova(dir.path(), "expired").await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let state = detached_after_first_disk(&client, &ova, "expired", &disks[0].1).await;
    // Nobody renews the lease any more: it times out (now, rather than
    // after its 300 s).
    assert_eq!(
        sim.expire_leases(Some(&state.lease.value)).await.unwrap(),
        1
    );
    let leases = sim.leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| l.lease == state.lease.value)
        .unwrap();
    assert!(lease.timed_out, "{lease:?}");
    let before: Vec<u64> = side_effects(&sim).await;
    let e = reattach_ova(&client, &state, &ova, &opts("expired"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    match lease_unusable(&e) {
        Some(LeaseUnusable::NotReady { state, fault }) => {
            assert_eq!(state, "error");
            assert!(fault.as_deref().unwrap_or("").contains("Timedout"), "{e}");
        }
        other => panic!("{other:?}: {e}"),
    }
    // Nothing was sent, completed, aborted or destroyed.
    assert_eq!(side_effects(&sim).await, before);
    assert_eq!(uploads_of(&sim, "expired").await.len(), 1);
    assert_eq!(vms_named(&sim, "expired").await, 1);

    // The caller's way out: remove the leftover and import again.
    assert!(
        clean_up_leftover(&client, &state.leftover(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(vms_named(&sim, "expired").await, 0);
    assert!(sim.leases().await.unwrap().is_empty());
    let report = import_ova(&client, &ova, &opts("expired"))
        .await
        .expect("import again");
    assert_ne!(report.vm, state.entity);
    assert_eq!(vms_named(&sim, "expired").await, 1);
}

/// Calls that would show a reattach did something.
async fn side_effects(sim: &Vcsim) -> Vec<u64> {
    let mut out = Vec::new();
    for m in [
        "HttpNfcLeaseComplete",
        "HttpNfcLeaseAbort",
        "Destroy_Task",
        "ImportVApp",
    ] {
        out.push(calls(sim, m).await);
    }
    out.push(sim.uploaded_files().await.unwrap().len() as u64);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn another_login_session_cannot_reattach() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, disks) = two_disk_ova(dir.path(), "theirs").await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let owner = connect(&sim).await;
    let state = detached_after_first_disk(&owner, &ova, "theirs", &disks[0].1).await;
    let before = side_effects(&sim).await;

    // Another login of the same user: the lease is not in its session.
    let other = connect(&sim).await;
    assert!(!other.session_reused());
    let e = reattach_ova(&other, &state, &ova, &opts("theirs"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        matches!(lease_unusable(&e), Some(LeaseUnusable::Gone { .. })),
        "{e}"
    );
    // Another OVA is refused before the lease is touched.
    let e = reattach_ova(
        &owner,
        &state,
        &testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova"),
        &opts("theirs"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(side_effects(&sim).await, before);
    assert_eq!(vms_named(&sim, "theirs").await, 1);

    // A saved cookie whose session expired: the client logs in anew, and
    // the lease is out of its reach too.
    let cookie = owner.session_cookie().unwrap();
    assert!(sim.expire_sessions().await.unwrap() >= 2);
    let logins = calls(&sim, "Login").await;
    let renewed = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(cookie.clone())
        .connect()
        .await
        .expect("connect");
    assert!(!renewed.session_reused());
    assert_eq!(calls(&sim, "Login").await, logins + 1);
    let e = reattach_ova(&renewed, &state, &ova, &opts("theirs"))
        .await
        .unwrap_err();
    assert!(
        matches!(lease_unusable(&e), Some(LeaseUnusable::Gone { .. })),
        "{e}"
    );
    assert_eq!(side_effects(&sim).await, before);
    // Without credentials a dead session cannot be replaced.
    let e = Client::builder(sim.url().as_str())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(cookie)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");

    // Whoever cleans up removes the VM.
    assert!(
        clean_up_leftover(&renewed, &state.leftover(), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(vms_named(&sim, "theirs").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_missing_a_file_of_the_lease_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, disks) = two_disk_ova(dir.path(), "cut").await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let mut state = detached_after_first_disk(&client, &ova, "cut", &disks[0].1).await;
    // A truncated (or edited) record: only the finished first disk is
    // left, so nothing would be sent and the second disk would stay blank.
    state.files.truncate(1);
    assert_eq!(state.remaining().count(), 0);
    let before = side_effects(&sim).await;
    let e = reattach_ova(&client, &state, &ova, &opts("cut"))
        .await
        .unwrap_err();
    match lease_unusable(&e) {
        Some(LeaseUnusable::Mismatch { detail }) => {
            assert!(detail.contains("does not list"), "{e}")
        }
        other => panic!("{other:?}: {e}"),
    }
    // Not completed, aborted or destroyed: the lease is left as it was.
    assert_eq!(side_effects(&sim).await, before);
    let leases = sim.leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| l.lease == state.lease.value)
        .unwrap();
    assert_eq!(lease.state, "ready");
    assert_eq!(vms_named(&sim, "cut").await, 1);
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_completed_before_it_was_recorded_is_taken_for_done() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, disks) = two_disk_ova(dir.path(), "completed").await;
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let mut state = detached_after_first_disk(&client, &ova, "completed", &disks[0].1).await;
    // The killed run had sent the second disk too and recorded that it
    // was completing the lease.
    let second = &state.files[1];
    let resp = client
        .transfer_http()
        .post(&second.url)
        .header("Content-Type", STREAM_VMDK)
        .body(disks[1].1.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let path = second.path.clone();
    state.mark_finished(&path, disks[1].1.len() as u64).unwrap();
    state.completing = true;
    // While the lease is still ready nothing was completed: not done.
    assert!(completed_import(&client, &state).await.unwrap().is_none());
    // The server completes the lease; the process dies before it hears so.
    let lease = NfcLease::reattach(&client, state.lease.clone(), 100)
        .await
        .unwrap();
    lease.complete().await.unwrap();
    let before = side_effects(&sim).await;

    let seen = Arc::new(Seen::default());
    let report = reattach_ova(
        &client,
        &state,
        &ova,
        &opts("completed").with_observer(seen.clone()),
    )
    .await
    .expect("taken for done");
    assert!(report.completed_earlier);
    assert_eq!(report.vm, state.entity);
    assert!(report.files.is_empty());
    assert_eq!(report.skipped.len(), 2);
    assert_eq!(*seen.events.lock().unwrap(), ["finished".to_owned()]);
    // Nothing was sent, aborted or destroyed: the VM stays.
    assert_eq!(side_effects(&sim).await, before);
    assert_eq!(vms_named(&sim, "completed").await, 1);

    // From another login session (the killed run's is gone) too.
    let other = connect(&sim).await;
    let found = completed_import(&other, &state).await.unwrap().unwrap();
    assert_eq!(found.vm, state.entity);
    // Without the mark the gone lease is just unusable (and its VM would
    // be cleaned up by the caller).
    state.completing = false;
    assert!(completed_import(&other, &state).await.unwrap().is_none());
    let e = reattach_ova(&client, &state, &ova, &opts("completed"))
        .await
        .unwrap_err();
    assert!(lease_unusable(&e).is_some(), "{e}");
    // A VM renamed since is not taken for the import.
    state.completing = true;
    state.name = "another".into();
    assert!(completed_import(&other, &state).await.unwrap().is_none());
    assert_eq!(side_effects(&sim).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_session_of_another_user_is_not_reused() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let first = connect(&sim).await;
    let cookie = first.leave_session().unwrap();
    // The same user takes the session over.
    let same = Client::builder(sim.url().as_str())
        .credentials(&sim.username().to_uppercase(), sim.password())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(cookie.clone())
        .connect()
        .await
        .unwrap();
    assert!(same.session_reused());
    same.leave_session();
    // Another user does not: it logs in as itself (and here, with no such
    // user, is refused).
    let logins = calls(&sim, "Login").await;
    let e = Client::builder(sim.url().as_str())
        .credentials("someone-else@vsphere.local", sim.password())
        .ca_pem(sim.ca_pem().unwrap())
        .session_cookie(cookie)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(calls(&sim, "Login").await, logins + 1);
}
