//! Changed block tracking against the vcsim harness (which tracks changes
//! per 64 KiB block of a disk's flat file): enabling it, the looped
//! `QueryChangedDiskAreas`, `changed_extents` of the provider, a full then
//! an incremental export of a disk into a local sparse image, the `"*"`
//! fallbacks, clear errors when tracking is off or was reset, and the
//! conformance suite's changed-extent scenario (writes through the
//! harness's disk writer).

use std::path::Path;

use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::CopyOptions;
use hypersdk_core::digest::Algorithm;
use hypersdk_core::model::{Extent, ExtentList, VmRef};
use hypersdk_core::provider::{DiskRef, Provider};
use hypersdk_testkit::conformance::{self, Fixture};
use hypersdk_testkit::vcsim::{CbtSettings, DiskFile, StarAnswer, Vcsim};
use hypersdk_vsphere::cbt::{
    Since, change_tracking, changed_areas, disable_change_tracking, enable_change_tracking,
    export_disk_changes, snapshot_disks,
};
use hypersdk_vsphere::snapshot::{SnapshotSpec, create_snapshot, remove_snapshot};
use hypersdk_vsphere::types::MoRef;
use hypersdk_vsphere::{Client, VsphereProvider};
use sha2::{Digest, Sha256};

const K64: u64 = 64 << 10;
const VM: &str = "DC0_H0_VM0";

async fn connect(sim: &Vcsim) -> Client {
    Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().expect("the harness runs TLS"))
        .connect()
        .await
        .expect("connect to vcsim")
}

/// Bytes that differ everywhere (no zero block by accident).
fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect()
}

/// Seeds the VM's first disk with a flat file of `capacity` bytes (and
/// that capacity), data in `data` ranges; returns (VM moref, device key).
async fn seed(sim: &Vcsim, capacity: u64, data: &[(u64, u64)]) -> (MoRef, i64) {
    let mut flat = vec![0u8; capacity as usize];
    for (i, (offset, len)) in data.iter().enumerate() {
        let at = *offset as usize;
        flat[at..at + *len as usize].copy_from_slice(&noise(*len as usize, i as u32));
    }
    let seeded = sim
        .seed_disk_file(VM, 0, DiskFile::Flat, Some(capacity / 1024), flat)
        .await
        .expect("seed the flat file");
    (
        MoRef::new("VirtualMachine", seeded.vm),
        i64::from(seeded.device_key),
    )
}

/// The 64 KiB blocks that byte ranges touch, merged.
fn blocks(ranges: &[(u64, u64)]) -> ExtentList {
    ExtentList::from_unsorted(ranges.iter().map(|(o, l)| {
        let start = o / K64 * K64;
        let end = (o + l).div_ceil(K64) * K64;
        Extent::new(start, end - start)
    }))
    .squash()
}

fn list(ranges: &[(u64, u64)]) -> ExtentList {
    ExtentList::from_unsorted(ranges.iter().map(|(o, l)| Extent::new(*o, *l))).squash()
}

async fn snapshot(client: &Client, vm: &MoRef, name: &str) -> MoRef {
    create_snapshot(client, vm, &SnapshotSpec::new(name))
        .await
        .expect("snapshot")
}

async fn flat_now(sim: &Vcsim) -> Vec<u8> {
    sim.read_disk(VM, 0, DiskFile::Flat)
        .await
        .expect("read the flat file")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read the local image")
}

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incremental_export_follows_the_disk() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let capacity = 4u64 << 20;
    let (vm, key) = seed(
        &sim,
        capacity,
        &[(0, 3 * K64), (20 * K64 + 100, 5000), (63 * K64, K64)],
    )
    .await;
    // Answers cover 1 MiB: the copy needs four calls per disk.
    sim.set_cbt(&CbtSettings::default().window_bytes(1 << 20))
        .await
        .expect("cbt window");

    assert!(
        enable_change_tracking(&client, &vm)
            .await
            .expect("enable CBT"),
        "it was off"
    );
    assert!(
        !enable_change_tracking(&client, &vm).await.expect("again"),
        "on already"
    );
    let state = change_tracking(&client, &vm).await.expect("state");
    assert!(state.enabled);
    assert_eq!(state.supported, Some(true));

    let s1 = snapshot(&client, &vm, "base").await;
    let c1 = snapshot_disks(&client, &vm, &s1)
        .await
        .expect("disks")
        .into_iter()
        .find(|d| d.key == key)
        .and_then(|d| d.change_id)
        .expect("a change id at s1");

    // Full: the allocated blocks only, into a new sparse image.
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.raw");
    let options = CopyOptions::default()
        .with_chunk_size(256 << 10)
        .with_digests(&[Algorithm::Sha256]);
    let full = export_disk_changes(&client, &vm, &s1, key, &Since::Start, &image, &options)
        .await
        .expect("full export");
    assert_eq!(
        full.extents,
        list(&[(0, 3 * K64), (20 * K64, K64), (63 * K64, K64)])
    );
    assert_eq!(full.query_calls, 4);
    assert_eq!(full.full_fallback, None);
    assert_eq!(full.change_id.as_deref(), Some(c1.as_str()));
    assert_eq!(full.capacity, capacity);
    assert_eq!(full.copy.bytes_fetched, 5 * K64);
    let base = flat_now(&sim).await;
    assert_eq!(read(&image), base);
    let digest = full.copy.digests.as_ref().expect("digests");
    assert_eq!(
        digest.get(Algorithm::Sha256).map(|c| c.to_hex()),
        Some(hex::encode(Sha256::digest(&base)))
    );

    // The guest writes: a few bytes, a run across a window boundary, the
    // last block; one range is zeroed.
    let writes = [
        (70_000u64, 10u64),
        ((1 << 20) - 300, 600),
        (capacity - 1, 1),
    ];
    for (i, (offset, len)) in writes.iter().enumerate() {
        sim.write_disk_at(
            VM,
            0,
            DiskFile::Flat,
            *offset,
            noise(*len as usize, 100 + i as u32),
        )
        .await
        .expect("write");
    }
    sim.zero_disk_range(VM, 0, DiskFile::Flat, 20 * K64, K64)
        .await
        .expect("zero");
    let s2 = snapshot(&client, &vm, "next").await;
    let mut changed: Vec<(u64, u64)> = writes.to_vec();
    changed.push((20 * K64, K64));
    let expected = blocks(&changed);

    // The provider's view: exactly the blocks written, at 64 KiB.
    let provider = VsphereProvider::new(client.clone());
    let disk = DiskRef::new(VmRef::id(vm.value.clone()), key.to_string());
    let delta = provider
        .changed_extents(&disk, Some(&s1.value), &s2.value)
        .await
        .expect("changed extents");
    assert_eq!(delta.disk_size, capacity);
    assert_eq!(delta.changed, expected);
    assert_eq!(delta.freed, None);
    // It agrees with what the harness recorded.
    let recorded = sim.cbt_state().await.expect("cbt state");
    let recorded = recorded
        .disk(VM, i32::try_from(key).expect("key"))
        .expect("tracked disk");
    let harness_view = ExtentList::from_unsorted(
        recorded
            .changes
            .iter()
            .flat_map(|c| c.written.iter().chain(&c.trimmed))
            .map(|a| Extent::new(a.start, a.length)),
    )
    .squash();
    assert_eq!(harness_view, expected);
    // From nothing: what is allocated at s2.
    let all = provider
        .changed_extents(&disk, None, &s2.value)
        .await
        .expect("allocated extents");
    assert!(all.changed.covers(Extent::new(0, 3 * K64)));
    assert!(!all.changed.contains_offset(20 * K64), "zeroed block");
    assert!(all.changed.contains_offset(capacity - 1));

    // The first snapshot is removed, as a backup flow does; its change id
    // lives on in the report.
    remove_snapshot(&client, &s1, false)
        .await
        .expect("remove s1");

    // Incremental: only the changed blocks, patched into the image.
    let inc = export_disk_changes(
        &client,
        &vm,
        &s2,
        key,
        &Since::ChangeId(c1.clone()),
        &image,
        &options,
    )
    .await
    .expect("incremental export");
    assert_eq!(inc.extents, expected);
    assert_eq!(inc.copy.bytes_fetched, expected.total_bytes());
    assert_ne!(inc.change_id.as_deref(), Some(c1.as_str()));
    let now = flat_now(&sim).await;
    assert_ne!(now, base);
    assert_eq!(read(&image), now, "the image equals the disk at s2");
    assert!(!dir.path().join("disk.raw.part").exists());
    let digest = inc.copy.digests.as_ref().expect("digests");
    assert_eq!(
        digest.get(Algorithm::Sha256).map(|c| c.to_hex()),
        Some(hex::encode(Sha256::digest(&now))),
        "the digest covers the whole patched image"
    );

    // Nothing changed since s2: an empty delta leaves the image as it is.
    let s3 = snapshot(&client, &vm, "quiet").await;
    let none = export_disk_changes(
        &client,
        &vm,
        &s3,
        key,
        &Since::ChangeId(inc.change_id.clone().expect("change id")),
        &image,
        &CopyOptions::default(),
    )
    .await
    .expect("empty incremental");
    assert!(none.extents.is_empty());
    assert_eq!(none.copy.bytes_fetched, 0);
    assert_eq!(read(&image), now);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_covers_a_disk_larger_than_the_window() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let capacity = 8u64 << 20;
    let (vm, key) = seed(&sim, capacity, &[(0, K64)]).await;
    enable_change_tracking(&client, &vm).await.expect("enable");
    let s1 = snapshot(&client, &vm, "s1").await;
    let c1 = snapshot_disks(&client, &vm, &s1)
        .await
        .expect("disks")
        .into_iter()
        .find(|d| d.key == key)
        .and_then(|d| d.change_id)
        .expect("change id");
    // One write in every 512 KiB, the last block included.
    let writes: Vec<(u64, u64)> = (0..16u64).map(|i| (i * (512 << 10) + 4096, 8)).collect();
    for (offset, len) in &writes {
        sim.write_disk_at(VM, 0, DiskFile::Flat, *offset, vec![0xA5; *len as usize])
            .await
            .expect("write");
    }
    sim.write_disk_at(VM, 0, DiskFile::Flat, capacity - K64, vec![1; 1])
        .await
        .expect("write the last block");
    let s2 = snapshot(&client, &vm, "s2").await;
    let mut all = writes.clone();
    all.push((capacity - K64, 1));
    let expected = blocks(&all);

    // 1 MiB windows of at most 1 area: the answers end early and the
    // client must go on from where each one stopped.
    sim.set_cbt(&CbtSettings::default().window_bytes(1 << 20).max_areas(1))
        .await
        .expect("cbt");
    let areas = changed_areas(&client, &vm, Some(&s2), key, capacity, &Since::ChangeId(c1))
        .await
        .expect("changed areas");
    assert_eq!(areas.extents, expected);
    assert!(
        areas.calls > 16,
        "{} calls for 17 areas at one per answer",
        areas.calls
    );
    assert_eq!(areas.full_fallback, None);

    // "*" where the server answers one area per window, or refuses it:
    // the whole disk.
    sim.set_cbt(&CbtSettings::default().max_areas(0).star(StarAnswer::Whole))
        .await
        .expect("cbt");
    let whole = changed_areas(&client, &vm, Some(&s2), key, capacity, &Since::Start)
        .await
        .expect("whole");
    assert_eq!(whole.extents, ExtentList::full(capacity));
    assert_eq!(whole.calls, 8);
    assert!(whole.full_fallback.is_some());
    sim.set_cbt(&CbtSettings::default().star(StarAnswer::Fault))
        .await
        .expect("cbt");
    let refused = changed_areas(&client, &vm, Some(&s2), key, capacity, &Since::Start)
        .await
        .expect("refused *");
    assert_eq!(refused.extents, ExtentList::full(capacity));
    let why = refused.full_fallback.expect("a reason");
    assert!(why.contains("FileFault"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tracking_off_or_reset_is_a_clear_error() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let capacity = 1u64 << 20;
    let (vm, key) = seed(&sim, capacity, &[(0, K64)]).await;
    let provider = VsphereProvider::new(client.clone());
    let disk = DiskRef::new(VmRef::id(vm.value.clone()), key.to_string());

    // Snapshots taken with tracking off have no change id.
    let s1 = snapshot(&client, &vm, "s1").await;
    let s2 = snapshot(&client, &vm, "s2").await;
    let e = provider
        .changed_extents(&disk, Some(&s1.value), &s2.value)
        .await
        .expect_err("no change id at s1");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.to_string()
            .contains("before changed block tracking was enabled"),
        "{e}"
    );
    // Everything "allocated" is still answerable: the whole disk.
    let all = provider
        .changed_extents(&disk, None, &s2.value)
        .await
        .expect("allocated");
    assert_eq!(all.changed, ExtentList::full(capacity));

    // Turned off after the base snapshot.
    enable_change_tracking(&client, &vm).await.expect("enable");
    let s3 = snapshot(&client, &vm, "s3").await;
    assert!(
        disable_change_tracking(&client, &vm)
            .await
            .expect("disable")
    );
    let s4 = snapshot(&client, &vm, "s4").await;
    let e = provider
        .changed_extents(&disk, Some(&s3.value), &s4.value)
        .await
        .expect_err("tracking off");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.to_string()
            .contains("changed block tracking is not enabled"),
        "{e}"
    );

    // On again: the old change ids are no longer valid.
    enable_change_tracking(&client, &vm).await.expect("enable");
    let s5 = snapshot(&client, &vm, "s5").await;
    let e = provider
        .changed_extents(&disk, Some(&s3.value), &s5.value)
        .await
        .expect_err("reset");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("cannot report the changes"), "{e}");

    // Wrong disk ids and snapshots of another VM are not found.
    let other = DiskRef::new(VmRef::id(vm.value.clone()), "12345");
    let e = provider
        .changed_extents(&other, None, &s5.value)
        .await
        .expect_err("no such disk");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let inventory = sim.inventory().await.expect("inventory");
    let vm1 = inventory
        .vm("DC0_H0_VM1")
        .expect("vm1")
        .entity
        .moref
        .clone();
    let e = provider
        .changed_extents(
            &DiskRef::new(VmRef::id(vm1), key.to_string()),
            None,
            &s5.value,
        )
        .await
        .expect_err("another VM's snapshot");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // An incremental export needs the image of an earlier one.
    let dir = tempfile::tempdir().expect("tempdir");
    let c5 = snapshot_disks(&client, &vm, &s5)
        .await
        .expect("disks")
        .into_iter()
        .find(|d| d.key == key)
        .and_then(|d| d.change_id)
        .expect("change id");
    let e = export_disk_changes(
        &client,
        &vm,
        &s5,
        key,
        &Since::ChangeId(c5),
        &dir.path().join("missing.raw"),
        &CopyOptions::default(),
    )
    .await
    .expect_err("no base image");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_changed_extents_track_writes() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let (vm, _) = seed(&sim, 2 << 20, &[(0, 3 * K64)]).await;
    enable_change_tracking(&client, &vm).await.expect("enable");
    let provider = VsphereProvider::new(client);
    let fixture = Fixture::new(VmRef::name(VM)).with_writer(sim.disk_writer());
    conformance::changed_extents_track_writes(&provider, &fixture).await;
    // The scenario ran: its snapshots took change sets' worth of ids.
    let state = sim.cbt_state().await.expect("cbt state");
    assert_eq!(state.disks.len(), 1);
    assert_eq!(state.disks[0].seq, 1, "the scenario's one write");
}
