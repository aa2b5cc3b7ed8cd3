//! VM export through NFC leases against the vcsim harness: OVA (GNU tar
//! lists the descriptor first, our reader verifies the package), OVF
//! directory with `.mf` and Artifact Manifest, raw images decoded from a
//! qemu-img-made streamOptimized VMDK, the provider's streams, lease
//! keep-alive against an enforced lease timeout, cut connections resumed,
//! and every failure (powered-on VM, lease error, fault mid-export,
//! cancellation, existing output) aborting the lease and leaving nothing
//! behind. The source VM is checked unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use hypersdk_core::ErrorKind;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::VmRef;
use hypersdk_core::provider::{Capability, DiskData, ExportOptions, Provider};
use hypersdk_manifest::Manifest as ArtifactManifest;
use hypersdk_ova::archive::{OvaIndex, OvaReader};
use hypersdk_ova::mf::Manifest as MfManifest;
use hypersdk_ova::ovf::Envelope;
use hypersdk_testkit::images;
use hypersdk_testkit::qemu;
use hypersdk_testkit::vcsim::{CutTransfer, DiskFile, LeaseFault, MethodFault, Vcsim};
use hypersdk_vsphere::export::{ArtifactManifestOptions, ExportFormat, VmExportOptions};
use hypersdk_vsphere::snapshot::{SnapshotSpec, create_snapshot};
use hypersdk_vsphere::soap::Request;
use hypersdk_vsphere::tasks::wait_for_task;
use hypersdk_vsphere::types::MoRef;
use hypersdk_vsphere::{Client, VsphereProvider};

const VM: &str = "DC0_H0_VM0";

async fn connect(sim: &Vcsim) -> Client {
    Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().expect("the harness runs TLS"))
        .connect()
        .await
        .expect("connect to vcsim")
}

async fn calls(sim: &Vcsim) -> BTreeMap<String, u64> {
    sim.call_counts().await.expect("call counts")
}

fn count(c: &BTreeMap<String, u64>, method: &str) -> u64 {
    c.get(method).copied().unwrap_or(0)
}

/// A disk image made by qemu-img: the raw source and its streamOptimized
/// VMDK bytes.
struct Seed {
    raw: PathBuf,
    vmdk: Vec<u8>,
    capacity: u64,
}

async fn make_seed(dir: &Path, seed: u64) -> Seed {
    let capacity = 6 << 20;
    let raw = dir.join(format!("source-{seed}.raw"));
    images::mixed(&raw, capacity, seed, 60).expect("raw image");
    let vmdk_path = dir.join(format!("source-{seed}.vmdk"));
    qemu::to_stream_optimized(&raw, &vmdk_path)
        .await
        .expect("qemu-img convert (apt-get install qemu-utils)");
    let vmdk = std::fs::read(&vmdk_path).expect("read vmdk");
    Seed {
        raw,
        vmdk,
        capacity,
    }
}

async fn seed_vm(sim: &Vcsim, vm: &str, seed: &Seed) -> String {
    let seeded = sim
        .seed_disk_file(
            vm,
            0,
            DiskFile::Backing,
            Some(seed.capacity / 1024),
            seed.vmdk.clone(),
        )
        .await
        .expect("seed the disk");
    seeded.vm
}

fn sha256(bytes: &[u8]) -> Checksum {
    Checksum::compute(Algorithm::Sha256, bytes)
}

/// Files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs a task-returning method on `this` and waits for it.
async fn run_task(client: &Client, method: &str, this: &MoRef) {
    let req = Request::new(method, this);
    let task = client
        .invoke(&req)
        .await
        .expect(method)
        .child("returnval")
        .and_then(|n| n.as_moref())
        .expect("a task");
    wait_for_task(client, &task, method).await.expect(method);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_to_ova_ovf_raw_and_streams() {
    // An enforced lease timeout of 3 s: the export below holds its lease
    // longer than that, so only the keep-alive keeps it alive.
    let sim = Vcsim::builder()
        .autostart(false)
        .lease_timeout(Duration::from_secs(3))
        .start()
        .await
        .expect("start vcsim");
    let tmp = tempfile::tempdir().unwrap();
    let seed = make_seed(tmp.path(), 7).await;
    let vm_id = seed_vm(&sim, VM, &seed).await;
    let vm = MoRef::new("VirtualMachine", vm_id.clone());
    let client = connect(&sim).await;
    let before = sim.inventory().await.expect("inventory");

    // --- OVA, with the final CreateDescriptor slowed past the lease timeout.
    sim.fail_method(MethodFault::delay("CreateDescriptor", Duration::from_millis(4500)).after(1))
        .await
        .unwrap();
    let ova = tmp.path().join("web.ova");
    let report = hypersdk_vsphere::export::export_vm(
        &client,
        &vm,
        &VmExportOptions::new(ExportFormat::Ova, &ova)
            .name("web")
            .digests(&[Algorithm::Sha256, Algorithm::Sha1]),
    )
    .await
    .expect("export to OVA");
    assert_eq!(report.ova.as_deref(), Some(ova.as_path()));
    assert_eq!(report.files.len(), 1, "{:?}", report.files);
    let disk = &report.files[0];
    assert_eq!(disk.name, "web-disk-0.vmdk");
    assert_eq!(disk.size, seed.vmdk.len() as u64);
    assert_eq!(
        disk.digests.get(Algorithm::Sha256),
        Some(&sha256(&seed.vmdk))
    );
    assert_eq!(
        disk.disk.as_ref().map(|d| d.capacity_bytes),
        Some(seed.capacity)
    );
    assert!(!tmp.path().join("web.ova.part").exists());

    // GNU tar: the descriptor first, the manifest last.
    let out = std::process::Command::new("tar")
        .arg("tf")
        .arg(&ova)
        .output()
        .expect("GNU tar (apt-get install tar)");
    assert!(out.status.success(), "{out:?}");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, ["web.ovf", "web-disk-0.vmdk", "web.mf"]);
    // Our reader checks every digest of the .mf (SHA-256 and SHA-1).
    let summary = OvaReader::new(tokio::fs::File::open(&ova).await.unwrap())
        .finish()
        .await
        .expect("read the OVA back");
    assert!(summary.manifest_verified);
    let index = OvaIndex::open(&ova).await.expect("index");
    index.verify().await.expect("verify every entry");
    let entry = index.open_entry("web-disk-0.vmdk").unwrap();
    let bytes = hypersdk_core::blocks::BlockSource::read_range(
        &entry,
        hypersdk_core::model::Extent::new(0, seed.vmdk.len() as u64),
    )
    .await
    .unwrap();
    assert_eq!(&bytes[..], &seed.vmdk[..]);
    // The descriptor has the real size, not a placeholder or the capacity.
    let env = Envelope::parse(index.descriptor()).expect("descriptor");
    let refs = env.references();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].href, "web-disk-0.vmdk");
    assert_eq!(refs[0].size, Some(seed.vmdk.len() as u64));
    let mf = index.manifest().expect("a .mf");
    assert_eq!(
        mf.get("web.ovf", Algorithm::Sha256),
        Some(&sha256(index.descriptor()))
    );
    let c = calls(&sim).await;
    assert_eq!(count(&c, "HttpNfcLeaseComplete"), 1, "{c:?}");
    assert_eq!(count(&c, "HttpNfcLeaseAbort"), 0, "{c:?}");
    assert!(count(&c, "HttpNfcLeaseProgress") >= 1, "{c:?}");

    // --- OVF directory with .mf and a verified Artifact Manifest.
    let dir = tmp.path().join("ovf");
    let report = hypersdk_vsphere::export::export_vm(
        &client,
        &vm,
        &VmExportOptions::new(ExportFormat::Ovf, &dir)
            .parallel(2)
            .artifact_manifest(ArtifactManifestOptions::default().verify(true)),
    )
    .await
    .expect("export to an OVF directory");
    let stem = hypersdk_vsphere::inventory::decode_entity_name(VM);
    assert_eq!(
        listing(&dir),
        [
            format!("{stem}-disk-0.vmdk"),
            format!("{stem}.mf"),
            format!("{stem}.ovf"),
            "artifact-manifest.json".to_owned(),
        ]
    );
    let disk_path = dir.join(format!("{stem}-disk-0.vmdk"));
    assert_eq!(std::fs::read(&disk_path).unwrap(), seed.vmdk);
    let ovf = std::fs::read(dir.join(format!("{stem}.ovf"))).unwrap();
    let env = Envelope::parse(&ovf).unwrap();
    assert_eq!(env.references()[0].size, Some(seed.vmdk.len() as u64));
    let mf = MfManifest::parse(&std::fs::read(dir.join(format!("{stem}.mf"))).unwrap()).unwrap();
    assert_eq!(
        mf.get(&format!("{stem}.ovf"), Algorithm::Sha256),
        Some(&sha256(&ovf))
    );
    assert_eq!(
        mf.get(&format!("{stem}-disk-0.vmdk"), Algorithm::Sha256),
        Some(&sha256(&seed.vmdk))
    );
    let manifest = ArtifactManifest::read(report.manifest.as_ref().unwrap()).unwrap();
    assert_eq!(manifest.disks.len(), 1);
    assert_eq!(manifest.disks[0].bytes, seed.vmdk.len() as u64);
    hypersdk_manifest::verify(report.manifest.as_ref().unwrap())
        .await
        .expect("the manifest verifies against its files");

    // --- Raw: decoded on the fly; the same bytes as qemu-img's source.
    let raw_dir = tmp.path().join("raw");
    let report = hypersdk_vsphere::export::export_vm(
        &client,
        &vm,
        &VmExportOptions::new(ExportFormat::Raw, &raw_dir).name("web"),
    )
    .await
    .expect("export to raw");
    assert_eq!(listing(&raw_dir), ["web-disk-0.raw"]);
    let raw = raw_dir.join("web-disk-0.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), seed.capacity);
    assert_eq!(
        images::sha256_sparse(&raw).unwrap(),
        images::sha256_sparse(&seed.raw).unwrap()
    );
    assert_eq!(
        report.files[0]
            .digests
            .get(Algorithm::Sha256)
            .map(|c| c.to_hex()),
        Some(images::sha256_sparse(&seed.raw).unwrap())
    );

    // --- The provider: disks as streams, the lease as finisher.
    let provider = VsphereProvider::new(client.clone());
    assert!(provider.capabilities().supports(Capability::Export));
    let mut export = provider
        .export(&VmRef::id(&vm_id), &ExportOptions::default())
        .await
        .expect("provider export");
    assert!(export.descriptor.is_none());
    let mut disks = export.take_disks();
    assert_eq!(disks.len(), 1);
    let DiskData::Stream(mut stream) = std::mem::replace(
        &mut disks[0].data,
        DiskData::Stream(futures::stream::empty().boxed()),
    ) else {
        panic!("a stream");
    };
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(got, seed.vmdk);
    export.complete().await.expect("complete");

    // The source VM is unchanged; every lease completed, none aborted.
    let after = sim.inventory().await.expect("inventory");
    assert_eq!(before, after);
    let before = after;
    let c = calls(&sim).await;
    assert_eq!(count(&c, "HttpNfcLeaseComplete"), 4, "{c:?}");
    assert_eq!(count(&c, "HttpNfcLeaseAbort"), 0, "{c:?}");
    assert!(!c.contains_key("ReconfigVM_Task"), "{c:?}");

    // The OVA imports back: vcsim stores exactly the source VMDK.
    let imported = hypersdk_vsphere::import::import_ova(
        &client,
        &ova,
        &hypersdk_vsphere::import::OvaImportOptions::new(
            hypersdk_vsphere::import::ImportTarget::datastore("LocalDS_0"),
        )
        .with_name("web-imported"),
    )
    .await
    .expect("import the exported OVA");
    let stored = sim
        .read_disk("web-imported", 0, DiskFile::Backing)
        .await
        .expect("the imported disk");
    assert_eq!(stored.len(), seed.vmdk.len());
    assert!(
        stored == seed.vmdk,
        "the imported disk differs from the source"
    );
    let uploads = sim.uploaded_files().await.unwrap();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].sha256, sha256(&seed.vmdk).to_hex());
    assert_eq!(imported.name, "web-imported");
    // The source VM is still as it was.
    let last = sim.inventory().await.unwrap();
    assert_eq!(before.vm(VM), last.vm(VM));
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_downloads_are_resumed_with_identical_results() {
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    let tmp = tempfile::tempdir().unwrap();
    let seed = make_seed(tmp.path(), 11).await;
    let vm = MoRef::new("VirtualMachine", seed_vm(&sim, VM, &seed).await);
    // Trust by thumbprint: the transfers use the same pinned TLS policy.
    let client = Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .pin_thumbprint(sim.thumbprint_sha256().expect("thumbprint"))
        .connect()
        .await
        .expect("connect with a pinned thumbprint");

    for (format, at) in [
        (ExportFormat::Ovf, 100_000u64),
        (ExportFormat::Ova, 300_000),
        (ExportFormat::Raw, 50_000),
    ] {
        sim.cut_transfer(CutTransfer::nfc_after(at).times(2))
            .await
            .unwrap();
        let out = tmp.path().join(format!("out.{format}"));
        let report = hypersdk_vsphere::export::export_vm(
            &client,
            &vm,
            &VmExportOptions::new(format, &out).name("cut"),
        )
        .await
        .unwrap_or_else(|e| panic!("{format} export with cuts: {e}"));
        let f = &report.files[0];
        assert_eq!(f.resumes, 2, "{format}: {f:?}");
        assert_eq!(f.restarts, 0, "{format}: {f:?}");
        assert!(
            f.bytes_received >= seed.vmdk.len() as u64,
            "{format}: {f:?}"
        );
        match format {
            ExportFormat::Ovf => {
                let disk = std::fs::read(out.join("cut-disk-0.vmdk")).unwrap();
                assert_eq!(disk, seed.vmdk);
            }
            ExportFormat::Ova => {
                let index = OvaIndex::open(&out).await.unwrap();
                index.verify().await.expect("verified OVA");
                assert_eq!(f.digests.get(Algorithm::Sha256), Some(&sha256(&seed.vmdk)));
            }
            _ => {
                assert_eq!(
                    images::sha256_sparse(out.join("cut-disk-0.raw")).unwrap(),
                    images::sha256_sparse(&seed.raw).unwrap()
                );
            }
        }
    }
    let c = calls(&sim).await;
    assert_eq!(count(&c, "HttpNfcLeaseComplete"), 3, "{c:?}");
    assert_eq!(count(&c, "HttpNfcLeaseAbort"), 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_abort_the_lease_and_leave_nothing_behind() {
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    let tmp = tempfile::tempdir().unwrap();
    let seed = make_seed(tmp.path(), 3).await;
    let vm = MoRef::new("VirtualMachine", seed_vm(&sim, VM, &seed).await);
    let client = connect(&sim).await;
    let export = |format: ExportFormat, out: PathBuf| {
        let client = client.clone();
        let vm = vm.clone();
        async move {
            hypersdk_vsphere::export::export_vm(&client, &vm, &VmExportOptions::new(format, out))
                .await
        }
    };

    // An existing output: refused before any lease is taken.
    let ova = tmp.path().join("exists.ova");
    std::fs::write(&ova, b"keep me").unwrap();
    let e = export(ExportFormat::Ova, ova.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&ova).unwrap(), b"keep me");
    assert_eq!(count(&calls(&sim).await, "ExportVm"), 0);

    // A lease that goes to `error`: its fault, mapped.
    sim.lease_fault(LeaseFault::error_after(
        Duration::from_millis(300),
        "InvalidState",
        "the host is in maintenance",
    ))
    .await
    .unwrap();
    let dir = tmp.path().join("lease-error");
    let e = export(ExportFormat::Ovf, dir.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("maintenance"), "{e}");
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));

    // A fault after the downloads (CreateDescriptor): abort, no files.
    sim.fail_method(MethodFault::fault("CreateDescriptor", "SystemError").message("disk full"))
        .await
        .unwrap();
    let dir = tmp.path().join("descriptor-fault");
    let e = export(ExportFormat::Ovf, dir.clone()).await.unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
    let c = calls(&sim).await;
    assert_eq!(count(&c, "HttpNfcLeaseAbort"), 2, "{c:?}");
    assert_eq!(count(&c, "HttpNfcLeaseComplete"), 0, "{c:?}");

    // Cancellation: the export future dropped while the lease is held.
    sim.fail_method(MethodFault::delay(
        "CreateDescriptor",
        Duration::from_secs(3),
    ))
    .await
    .unwrap();
    let ova = tmp.path().join("cancelled.ova");
    let r = tokio::time::timeout(
        Duration::from_millis(1500),
        export(ExportFormat::Ova, ova.clone()),
    )
    .await;
    assert!(r.is_err(), "the export should still be running: {r:?}");
    let mut aborted = false;
    for _ in 0..100 {
        if count(&calls(&sim).await, "HttpNfcLeaseAbort") == 3 {
            aborted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(aborted, "the dropped export's lease was not aborted");
    assert!(!ova.exists());
    assert!(
        !listing(tmp.path()).iter().any(|n| n.contains("cancelled")),
        "{:?}",
        listing(tmp.path())
    );

    // Cancellation while the lease is still initializing: aborted too.
    sim.lease_fault(LeaseFault::ready_after(Duration::from_secs(3)))
        .await
        .unwrap();
    let dir = tmp.path().join("cancelled-early");
    let r = tokio::time::timeout(
        Duration::from_millis(1000),
        export(ExportFormat::Ovf, dir.clone()),
    )
    .await;
    assert!(r.is_err(), "the lease should still be initializing: {r:?}");
    let mut aborted = false;
    for _ in 0..100 {
        if count(&calls(&sim).await, "HttpNfcLeaseAbort") == 4 {
            aborted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        aborted,
        "the lease of an export dropped while waiting was not aborted"
    );
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));

    // A powered-on VM: ExportVm refused with a hint; its snapshot exports.
    run_task(&client, "PowerOnVM_Task", &vm).await;
    let dir = tmp.path().join("running");
    let e = export(ExportFormat::Ovf, dir.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("snapshot"), "{e}");
    let snap = create_snapshot(&client, &vm, &SnapshotSpec::new("for-export"))
        .await
        .expect("snapshot");
    let report = hypersdk_vsphere::export::export_vm(
        &client,
        &vm,
        &VmExportOptions::new(ExportFormat::Ovf, &dir)
            .name("snap")
            .snapshot(snap.clone()),
    )
    .await
    .expect("export of the snapshot");
    assert_eq!(report.snapshot.as_ref(), Some(&snap));
    assert_eq!(
        std::fs::read(dir.join("snap-disk-0.vmdk")).unwrap(),
        seed.vmdk
    );
    assert_eq!(count(&calls(&sim).await, "ExportSnapshot"), 1);
}

/// Reads a whole download, or its first error.
async fn drain(d: &mut hypersdk_vsphere::export::NfcDownload) -> hypersdk_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = d.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_resumes_with_range_and_restarts_when_range_is_ignored() {
    use hypersdk_core::retry::Backoff;
    use hypersdk_testkit::http_server::{Fault, FileServer};
    use hypersdk_vsphere::export::NfcDownload;

    let server = FileServer::start_in_memory().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    server.add_bytes("disk-0.vmdk", data.clone());
    let url: reqwest::Url = server.url("disk-0.vmdk").parse().unwrap();
    let http = reqwest::Client::new();
    let backoff = Backoff::default().with_initial(Duration::from_millis(10));
    let open = || {
        NfcDownload::open_url(
            http.clone(),
            url.clone(),
            None,
            None,
            &backoff,
            Duration::from_secs(10),
        )
    };

    // A body cut short: resumed with Range, the bytes are identical.
    server.inject(Fault::ShortBody, Some(1));
    let mut d = open().await.expect("open");
    assert_eq!(d.len(), Some(data.len() as u64));
    assert_eq!(drain(&mut d).await.expect("resumed download"), data);
    assert_eq!(d.resumes(), 1);
    let ranges = server.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(
        ranges[1].1,
        Some((data.len() as u64 / 2, data.len() as u64 - 1))
    );

    // A cut, then a server answering the resume with the whole file: no
    // stitching, a retryable error that makes the file start over.
    server.inject(Fault::ShortBody, Some(1));
    server.inject(Fault::IgnoreRange, Some(1));
    let mut d = open().await.expect("open");
    let e = drain(&mut d).await.expect_err("must start over");
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("starts over"), "{e}");
    // Starting over gives the file.
    let mut d = open().await.expect("open again");
    assert_eq!(drain(&mut d).await.expect("restarted download"), data);

    // A wrong Content-Range is refused, never stitched.
    server.inject(Fault::ShortBody, Some(1));
    server.inject(Fault::WrongContentRange, Some(1));
    let mut d = open().await.expect("open");
    let e = drain(&mut d).await.expect_err("wrong range");
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
}
