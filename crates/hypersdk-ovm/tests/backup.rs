//! Full and incremental backups against the OVM exporter test server:
//! images equal to the server's snapshot files after every round, bytes
//! fetched bounded by what truly changed, faults recovered, interrupted
//! backups resumed through the checkpoint, wrong images refused, previous
//! snapshots deleted only after success.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::allocated_size;
use hypersdk_core::digest::{Algorithm, Checksum, hash_file};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::progress::{CallbackSink, Phase, Progress};
use hypersdk_core::retry::Backoff;
use hypersdk_ovm::backup::{BackupOptions, BackupState, OvmBackup, PreviousCheck};
use hypersdk_ovm::client::OvmClient;
use hypersdk_ovm::diff::chunks_to_extents;
use hypersdk_ovm::types::Chunk;
use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, Route, VmSpec};

const K: u64 = 1024;
const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 * K;
const DISK_A: &str = "0004fb0000120000763ac50c4e345d0a.img";
const DISK_B: &str = "0004fb0000120000a1f0a6d3f0e8e843.img";
const SIZE_A: u64 = 24 * MIB;
const SIZE_B: u64 = 8 * MIB;

/// A deterministic pseudo-random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 17
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Non-zero random bytes (so no block is skipped as zeros by chance).
    fn bytes(&mut self, n: u64) -> Vec<u8> {
        (0..n).map(|_| (self.next() as u8) | 1).collect()
    }
}

/// The guest's writes and trims since the last snapshot, per disk.
#[derive(Default)]
struct Touched {
    a: Vec<Extent>,
    b: Vec<Extent>,
}

impl Touched {
    fn of(&mut self, disk: &str) -> &mut Vec<Extent> {
        if disk == DISK_A {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// The clusters touched: the most any correct diff may call changed.
    fn clusters(&self, disk: &str) -> ExtentList {
        let e = if disk == DISK_A { &self.a } else { &self.b };
        ExtentList::from_unsorted(e.iter().copied())
            .align_out(CLUSTER)
            .unwrap()
    }
}

struct Guest<'a> {
    exporter: &'a OvmExporter,
    vm: String,
    rng: Rng,
    touched: Touched,
}

impl<'a> Guest<'a> {
    /// A guest of `vm` whose disks hold [`initial_contents`].
    fn with_initial_contents(exporter: &'a OvmExporter, vm: &str, seed: u64) -> Self {
        let mut g = Guest {
            exporter,
            vm: vm.to_string(),
            rng: Rng(seed),
            touched: Touched::default(),
        };
        initial_contents(&mut g);
        g
    }

    fn write(&mut self, disk: &str, offset: u64, len: u64) {
        let data = self.rng.bytes(len);
        self.exporter.write(&self.vm, disk, offset, &data).unwrap();
        self.touched.of(disk).push(Extent::new(offset, len));
    }

    /// Zeros written as data: allocated on the exporter, holes in a backup.
    fn write_zeros(&mut self, disk: &str, offset: u64, len: u64) {
        let zeros = vec![0u8; len as usize];
        self.exporter.write(&self.vm, disk, offset, &zeros).unwrap();
        self.touched.of(disk).push(Extent::new(offset, len));
    }

    fn trim(&mut self, disk: &str, offset: u64, len: u64) {
        self.exporter.trim(&self.vm, disk, offset, len).unwrap();
        self.touched.of(disk).push(Extent::new(offset, len));
    }

    fn random_write(&mut self, disk: &str, size: u64, max: u64) {
        let len = 1 + self.rng.below(max);
        let offset = self.rng.below(size - len);
        self.write(disk, offset, len);
    }
}

fn vm_spec() -> VmSpec {
    VmSpec::new("backup-test")
        .with_disk(DiskSpec::new(DISK_A, "xvda", SIZE_A))
        .with_disk(DiskSpec::new(DISK_B, "xvdb", SIZE_B))
}

async fn exporter() -> (OvmExporter, String) {
    let vm = vm_spec();
    let id = vm.id.clone();
    let exporter = OvmExporter::builder().vm(vm).start().await.unwrap();
    (exporter, id)
}

fn fast_backoff() -> Backoff {
    Backoff::default()
        .with_initial(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(40))
        .with_max_attempts(Some(8))
}

fn client_with(exporter: &OvmExporter, backoff: Backoff) -> OvmClient {
    OvmClient::builder(&exporter.endpoint())
        .credentials(exporter.username(), exporter.password())
        .ca_pem(exporter.ca_pem())
        .retry(backoff)
        .build()
        .unwrap()
}

fn client(exporter: &OvmExporter) -> OvmClient {
    client_with(exporter, fast_backoff())
}

fn options() -> BackupOptions {
    BackupOptions::default()
        .with_parallelism(4)
        .with_chunk_size(512 * K)
        .with_backoff(fast_backoff())
}

/// The initial contents: big runs (single extents) and scattered writes.
fn initial_contents(g: &mut Guest<'_>) {
    for i in 0..6 {
        g.write(DISK_A, i * 4 * MIB, 2 * MIB);
    }
    g.write(DISK_B, 0, MIB);
    g.write(DISK_B, 3 * MIB, 2 * MIB);
    g.write(DISK_B, 6 * MIB + 512 * K, 256 * K);
    for _ in 0..6 {
        g.random_write(DISK_A, SIZE_A, 40 * K);
        g.random_write(DISK_B, SIZE_B, 40 * K);
    }
    // Zeros the guest wrote: data to the exporter, holes in the images.
    g.write_zeros(DISK_A, 22 * MIB + 128 * K, 512 * K);
}

async fn sha256(path: &std::path::Path) -> Checksum {
    *hash_file(path, &[Algorithm::Sha256])
        .await
        .unwrap()
        .get(Algorithm::Sha256)
        .unwrap()
}

/// The bytes of the snapshot's allocated extents that are not all-zero
/// `SparseFile::BLOCK_SIZE` blocks: the most a sparse image may allocate.
fn nonzero_allocated(file: &[u8], allocated: &ExtentList) -> u64 {
    let block = hypersdk_core::blocks::SparseFile::BLOCK_SIZE;
    let blocks = allocated.align_out(block).unwrap();
    let mut n = 0;
    for e in blocks.iter() {
        let mut at = e.offset;
        while at < e.end() {
            let end = (at + block).min(file.len() as u64);
            if file[at as usize..end as usize].iter().any(|&b| b != 0) {
                n += end - at;
            }
            at += block;
        }
    }
    n
}

/// Every image is sparse: its all-zero blocks are holes (for images the
/// test did not rewrite itself).
async fn assert_images_sparse(exporter: &OvmExporter, backup: &OvmBackup, vm: &str) {
    let state = backup.state().await.unwrap().unwrap();
    let snapshot = state.snapshot_id.clone().unwrap();
    for disk in &state.disks {
        let server = exporter
            .snapshot_disk_path(vm, &snapshot, &disk.name)
            .unwrap();
        let file = std::fs::read(&server).unwrap();
        let allocated = chunks_to_extents(&disk.chunks(), disk.size);
        let nonzero = nonzero_allocated(&file, &allocated);
        let on_disk = allocated_size(backup.image_path(&disk.name)).unwrap();
        assert!(
            on_disk <= nonzero + 64 * K,
            "{}: {on_disk} bytes allocated for {nonzero} non-zero bytes",
            disk.name
        );
    }
}

/// Every image equals the server's snapshot file and its recorded SHA-256.
async fn assert_images_match(exporter: &OvmExporter, backup: &OvmBackup, vm: &str) {
    let state = backup.state().await.unwrap().unwrap();
    assert!(state.pending.is_none());
    let snapshot = state.snapshot_id.clone().unwrap();
    assert_eq!(state.disks.len(), 2);
    for disk in &state.disks {
        let server = exporter
            .snapshot_disk_path(vm, &snapshot, &disk.name)
            .unwrap();
        let image = backup.image_path(&disk.name);
        let expected = sha256(&server).await;
        assert_eq!(sha256(&image).await, expected, "{}", disk.name);
        assert_eq!(disk.sha256, expected, "recorded digest of {}", disk.name);
        assert_eq!(std::fs::metadata(&image).unwrap().len(), disk.size);
        assert!(
            !hypersdk_core::blocks::SparseFile::part_path_for(&image)
                .unwrap()
                .exists()
        );
    }
}

/// What the exporter's `compareTo` would report: the new chunks without an
/// exact (start, length, physical) twin in the old list, clamped.
fn server_diff(old: &[Chunk], new: &[Chunk], size: u64) -> ExtentList {
    let kept: Vec<Chunk> = new.iter().filter(|n| !old.contains(n)).copied().collect();
    chunks_to_extents(&kept, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_three_incrementals_equal_the_server_snapshots() {
    let (exporter, vm) = exporter().await;
    let mut g = Guest::with_initial_contents(&exporter, &vm, 7);
    let dir = tempfile::tempdir().unwrap();
    let backup =
        OvmBackup::new(client(&exporter), dir.path().join("web01")).with_options(options());

    exporter.reset_stats();
    let full = backup.full(&vm).await.unwrap();
    assert_images_match(&exporter, &backup, &vm).await;
    assert!(full.created_snapshot && !full.resumed);
    assert_eq!(exporter.snapshot_ids(&vm), vec![full.snapshot_id.clone()]);
    let state = backup.state().await.unwrap().unwrap();
    for (disk, report) in state.disks.iter().zip(&full.disks) {
        let allocated = chunks_to_extents(&disk.chunks(), disk.size).total_bytes();
        assert_eq!(report.bytes_fetched, allocated, "{}", disk.name);
    }
    // The zeros the guest wrote were fetched but left as holes.
    let zeros = 512 * K;
    let on_disk = allocated_size(backup.image_path(DISK_A)).unwrap();
    assert!(
        on_disk + zeros <= full.disks[0].allocated_bytes + 64 * K,
        "{on_disk} bytes allocated for {} fetched with {zeros} of zeros",
        full.disks[0].allocated_bytes
    );
    assert_eq!(exporter.stats().data_bytes, full.bytes_fetched());

    let mut previous = full.snapshot_id.clone();
    for round in 1..=3u64 {
        g.touched = Touched::default();
        // A small write inside a big extent: the exporter's compareTo
        // would send the whole split extent again.
        g.write(DISK_A, round * 4 * MIB + 100 * K, 4 * K);
        for _ in 0..5 {
            g.random_write(DISK_A, SIZE_A, 48 * K);
        }
        for _ in 0..3 {
            g.random_write(DISK_B, SIZE_B, 48 * K);
        }
        if round == 2 {
            // New data in a hole.
            g.write(DISK_A, 2 * MIB + 64 * K, 512 * K);
        }
        // Whole clusters freed inside another big run, and a partial trim.
        g.trim(DISK_A, (round + 1) * 4 * MIB + 512 * K, 256 * K);
        let at = g.rng.below(SIZE_A - 20 * K);
        g.trim(DISK_A, at, 10 * K);
        g.trim(DISK_B, 3 * MIB + round * 256 * K, 128 * K);

        let before = backup.state().await.unwrap().unwrap();
        exporter.reset_stats();
        let report = backup.incremental(&vm, &previous).await.unwrap();
        assert_images_match(&exporter, &backup, &vm).await;
        assert_images_sparse(&exporter, &backup, &vm).await;
        let after = backup.state().await.unwrap().unwrap();

        assert_eq!(report.from.as_deref(), Some(previous.as_str()));
        assert!(report.previous_deleted, "round {round}");
        assert_eq!(exporter.snapshot_ids(&vm), vec![report.snapshot_id.clone()]);
        assert_eq!(exporter.stats().data_bytes, report.bytes_fetched());
        // One size probe (HEAD) per disk, then one GET per planned
        // sub-range: the disk's size is not asked twice.
        let planned_gets: usize = report
            .disks
            .iter()
            .map(|d| {
                let old = before.disk(&d.name).unwrap().chunks();
                let new = after.disk(&d.name).unwrap().chunks();
                hypersdk_ovm::diff_chunks(&old, &new, d.size)
                    .changed
                    .split_to_max(512 * K)
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(
            exporter.stats().data_requests,
            (report.disks.len() + planned_gets) as u64,
            "round {round}: data requests"
        );
        for d in &report.disks {
            assert!(d.patched, "round {round} {}", d.name);
            let old = before.disk(&d.name).unwrap().chunks();
            let new = after.disk(&d.name).unwrap().chunks();
            let new_alloc = chunks_to_extents(&new, d.size);
            let truly_changed = g.touched.clusters(&d.name).intersect(&new_alloc);
            let over = server_diff(&old, &new, d.size);
            assert!(
                d.bytes_fetched <= truly_changed.total_bytes(),
                "round {round} {}: fetched {} > truly changed {}",
                d.name,
                d.bytes_fetched,
                truly_changed.total_bytes()
            );
            assert!(
                d.bytes_fetched <= over.total_bytes(),
                "round {round} {}: fetched {} > compareTo {}",
                d.name,
                d.bytes_fetched,
                over.total_bytes()
            );
            assert!(d.bytes_fetched > 0);
        }
        let a = &report.disks[0];
        assert_eq!(a.name, DISK_A);
        // The 4 KiB write split a 2 MiB extent: compareTo would resend it.
        let over_a = server_diff(
            &before.disk(DISK_A).unwrap().chunks(),
            &after.disk(DISK_A).unwrap().chunks(),
            SIZE_A,
        );
        assert!(
            over_a.total_bytes() >= a.bytes_fetched + MIB,
            "round {round}: compareTo {} vs fetched {}",
            over_a.total_bytes(),
            a.bytes_fetched
        );
        // The trimmed clusters were punched (python's client leaves them).
        assert!(
            a.freed_bytes >= 256 * K,
            "round {round}: freed {}",
            a.freed_bytes
        );
        assert!(report.disks[1].freed_bytes >= 128 * K);
        previous = report.snapshot_id.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_mid_transfer_are_recovered() {
    let (exporter, vm) = exporter().await;
    let mut g = Guest::with_initial_contents(&exporter, &vm, 11);
    let dir = tempfile::tempdir().unwrap();
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(options());

    // Cut bodies, 503s on data and metadata, and a lost create response.
    exporter.faults().drop_data_after(100 * K, 4);
    exporter.faults().fail_status(503, 3, Route::DiskData);
    exporter.faults().fail_status(503, 1, Route::GetSnapshot);
    exporter.faults().lose_create_response(1);
    let full = backup.full(&vm).await.unwrap();
    assert_images_match(&exporter, &backup, &vm).await;
    // The lost response did not leave a second snapshot behind.
    assert_eq!(exporter.snapshot_ids(&vm), vec![full.snapshot_id.clone()]);

    for _ in 0..8 {
        g.random_write(DISK_A, SIZE_A, 300 * K);
        g.random_write(DISK_B, SIZE_B, 300 * K);
    }
    g.trim(DISK_A, 8 * MIB, MIB);
    // Every token expires, data is cut again, and the diff lists fail once.
    exporter.faults().expire_tokens();
    exporter.faults().drop_data_after(70 * K, 3);
    exporter.faults().fail_status(503, 2, Route::DiskData);
    exporter.faults().fail_status(500, 1, Route::GetVm);
    exporter.faults().fail_status(503, 1, Route::GetSnapshot);
    let logins = exporter.stats().logins;
    let inc = backup.incremental(&vm, &full.snapshot_id).await.unwrap();
    assert!(exporter.stats().logins > logins, "a new token was obtained");
    assert_images_match(&exporter, &backup, &vm).await;
    assert_images_sparse(&exporter, &backup, &vm).await;
    assert!(inc.previous_deleted);
    assert_eq!(exporter.snapshot_ids(&vm), vec![inc.snapshot_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_full_backup_resumes_without_refetching() {
    let (exporter, vm) = exporter().await;
    let exporter = Arc::new(exporter);
    Guest::with_initial_contents(&exporter, &vm, 3);
    let dir = tempfile::tempdir().unwrap();

    // When the second disk starts, the exporter starts failing every data
    // request: the backup retries without end until it is killed.
    let started_b = Arc::new(tokio::sync::Notify::new());
    let sink = {
        let exporter = Arc::clone(&exporter);
        let started_b = Arc::clone(&started_b);
        let fired = AtomicBool::new(false);
        CallbackSink::new(move |e| {
            if e.phase == Phase::Transferring
                && e.item.as_deref() == Some(DISK_B)
                && !fired.swap(true, Ordering::SeqCst)
            {
                exporter
                    .faults()
                    .fail_status(503, u32::MAX, Route::DiskData);
                started_b.notify_one();
            }
        })
    };
    let endless = Backoff::unlimited()
        .with_initial(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(20));
    let backup = OvmBackup::new(client_with(&exporter, endless.clone()), dir.path()).with_options(
        options()
            .with_backoff(endless)
            .with_progress(Progress::new(sink)),
    );
    let task = tokio::spawn({
        let vm = vm.clone();
        async move { backup.full(&vm).await }
    });
    started_b.notified().await;
    // Wait until the outage has been hit a few times, then kill it.
    let requests = exporter.stats().requests;
    while exporter.stats().requests < requests + 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let reader = OvmBackup::new(client(&exporter), dir.path());
    let state = reader.state().await.unwrap().unwrap();
    let pending = state.pending.clone().unwrap();
    assert_eq!(pending.done.len(), 1);
    assert_eq!(pending.done[0].name, DISK_A);
    assert_eq!(state.snapshot_id, None);
    // Nothing at the final name of the unfinished image.
    assert!(!dir.path().join(DISK_B).exists());
    // A half-done directory is not the base of an incremental.
    let e = reader
        .incremental(&vm, &pending.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

    exporter.faults().clear();
    exporter.reset_stats();
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(options());
    let resumed = backup.full(&vm).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.snapshot_id, pending.snapshot_id);
    assert!(resumed.disks[0].skipped);
    assert_eq!(resumed.disks[0].bytes_fetched, 0);
    let b = &resumed.disks[1];
    assert_eq!(exporter.stats().data_bytes, b.bytes_fetched);
    assert_eq!(b.bytes_fetched, b.allocated_bytes);
    assert_images_match(&exporter, &backup, &vm).await;
    assert_eq!(
        exporter.snapshot_ids(&vm),
        vec![resumed.snapshot_id.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_patch_resumes_through_the_checkpoint() {
    let (exporter, vm) = exporter().await;
    let mut g = Guest::with_initial_contents(&exporter, &vm, 5);
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        options()
            .with_chunk_size(MIB)
            .with_commit_interval(Duration::ZERO)
            .with_parallelism(2)
    };
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(opts());
    let full = backup.full(&vm).await.unwrap();

    // Small changes first (single clusters), then a big one.
    for i in 0..6 {
        g.write(DISK_A, 64 * K + i * 256 * K + 7, 100);
    }
    g.write(DISK_A, 14 * MIB, 3 * MIB);
    g.trim(DISK_A, 20 * MIB, MIB);
    g.write(DISK_B, 0, 4096);

    // Bodies over 200 KiB are cut and nothing retries: the small ranges
    // land, the first big one fails the backup.
    exporter.faults().drop_data_after(200 * K, u32::MAX);
    let fragile = OvmBackup::new(client_with(&exporter, Backoff::none()), dir.path())
        .with_options(opts().with_backoff(Backoff::none()));
    let e = fragile
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Network | ErrorKind::Io),
        "{e}"
    );
    let state = backup.state().await.unwrap().unwrap();
    let pending = state.pending.clone().unwrap();
    // The half-patched image is not at its final name...
    assert!(!dir.path().join(DISK_A).exists());
    assert!(dir.path().join(format!("{DISK_A}.part")).exists());
    // ...the previous snapshot is still there...
    assert!(exporter.snapshot_ids(&vm).contains(&full.snapshot_id));
    // ...and the directory is not taken for a completed backup.
    assert_eq!(
        backup.verify().await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    let e = backup
        .incremental(&vm, &pending.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

    exporter.faults().clear();
    // The image the failed run had not touched yet is checked before the
    // resumed run writes anything: one byte changed is refused.
    let image_b = dir.path().join(DISK_B);
    let good_b = std::fs::read(&image_b).unwrap();
    let mut bad_b = good_b.clone();
    bad_b[MIB as usize + 5] ^= 0x10;
    std::fs::write(&image_b, &bad_b).unwrap();
    let part_a = std::fs::read(dir.path().join(format!("{DISK_A}.part"))).unwrap();
    let e = backup
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
    assert!(e.to_string().contains(DISK_B), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join(format!("{DISK_A}.part"))).unwrap(),
        part_a,
        "the half-patched image was written before the check"
    );
    assert_eq!(std::fs::read(&image_b).unwrap(), bad_b);
    std::fs::write(&image_b, &good_b).unwrap();

    exporter.reset_stats();
    let resumed = backup.incremental(&vm, &full.snapshot_id).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.snapshot_id, pending.snapshot_id);
    let a = &resumed.disks[0];
    assert_eq!(
        a.bytes_resumed,
        6 * CLUSTER,
        "the six small clusters landed before"
    );
    assert_eq!(a.bytes_fetched + a.bytes_resumed, a.planned_bytes);
    assert_eq!(exporter.stats().data_bytes, resumed.bytes_fetched());
    assert!(a.freed_bytes >= MIB);
    assert_images_match(&exporter, &backup, &vm).await;
    assert!(resumed.previous_deleted);
    assert_eq!(
        exporter.snapshot_ids(&vm),
        vec![resumed.snapshot_id.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_previous_image_is_refused() {
    let (exporter, vm) = exporter().await;
    let mut g = Guest::with_initial_contents(&exporter, &vm, 9);
    let dir = tempfile::tempdir().unwrap();
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(options());
    let full = backup.full(&vm).await.unwrap();
    g.random_write(DISK_A, SIZE_A, 100 * K);
    let state_file = BackupState::path_in(dir.path());
    let state_before = std::fs::read(&state_file).unwrap();
    let image = dir.path().join(DISK_B);

    // One byte differs: refused, nothing created, nothing written.
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[3 * MIB as usize + 17] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();
    for check in [PreviousCheck::Sha256, PreviousCheck::Fingerprint] {
        let strict = OvmBackup::new(client(&exporter), dir.path())
            .with_options(options().with_previous_check(check));
        let e = strict
            .incremental(&vm, &full.snapshot_id)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{check:?}: {e}");
        assert!(e.to_string().contains(DISK_B), "{e}");
        assert_eq!(exporter.snapshot_ids(&vm), vec![full.snapshot_id.clone()]);
        assert_eq!(std::fs::read(&image).unwrap(), bytes);
        assert_eq!(std::fs::read(&state_file).unwrap(), state_before);
    }
    // Another image of the right size: refused too.
    std::fs::write(&image, vec![0u8; SIZE_B as usize]).unwrap();
    let e = backup
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
    // A truncated one.
    std::fs::write(&image, b"short").unwrap();
    let e = backup
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
    // A missing one.
    std::fs::remove_file(&image).unwrap();
    let e = backup
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(exporter.snapshot_ids(&vm), vec![full.snapshot_id.clone()]);

    // The right image back: the fingerprint differs (it was rewritten) but
    // the content is right, so the quick check hashes it and goes on.
    bytes[3 * MIB as usize + 17] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();

    // Not the snapshot the images hold.
    let e = backup
        .incremental(&vm, "3f2a6bd1-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Another exporter address: the chain is pinned to its endpoint.
    let other = OvmClient::builder(&exporter.endpoint().replace("127.0.0.1", "localhost"))
        .credentials(exporter.username(), exporter.password())
        .ca_pem(exporter.ca_pem())
        .build()
        .unwrap();
    let e = OvmBackup::new(other, dir.path())
        .incremental(&vm, &full.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    // Another VM in the same directory.
    let second = VmSpec::new("other").with_disk(DiskSpec::new("x.img", "xvda", MIB));
    let second_id = second.id.clone();
    exporter.add_vm(second);
    let e = backup.full(&second_id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(std::fs::read(&state_file).unwrap(), state_before);

    let quick = OvmBackup::new(client(&exporter), dir.path())
        .with_options(options().with_previous_check(PreviousCheck::Fingerprint));
    let inc = quick.incremental(&vm, &full.snapshot_id).await.unwrap();
    assert_images_match(&exporter, &quick, &vm).await;

    // The previous snapshot deleted behind the backup's back: the changes
    // cannot be known; refused before anything is created.
    let keep = OvmBackup::new(client(&exporter), dir.path())
        .with_options(options().with_delete_previous(false));
    g.random_write(DISK_A, SIZE_A, 100 * K);
    let next = keep.incremental(&vm, &inc.snapshot_id).await.unwrap();
    assert!(!next.previous_deleted);
    assert_eq!(exporter.snapshot_ids(&vm).len(), 2);
    client(&exporter)
        .delete_snapshot(&vm, &next.snapshot_id)
        .await
        .unwrap();
    let e = keep.incremental(&vm, &next.snapshot_id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("full backup"), "{e}");
    assert_eq!(exporter.snapshot_ids(&vm), vec![inc.snapshot_id.clone()]);
    // A full backup starts over, and removes the snapshot it replaces.
    let again = keep.full(&vm).await.unwrap();
    assert_images_match(&exporter, &keep, &vm).await;
    assert_eq!(
        again.previous_snapshot.as_deref(),
        Some(next.snapshot_id.as_str())
    );
    assert!(!again.previous_deleted, "delete_previous is off");
}

#[tokio::test]
async fn a_vm_without_exported_disks_is_refused_not_backed_up_empty() {
    let (exporter, _) = exporter().await;
    let phy_only = VmSpec::new("phy-only");
    let id = phy_only.id.clone();
    exporter.add_vm(phy_only);
    let dir = tempfile::tempdir().unwrap();
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(options());
    let e = backup.full(&id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("phy:"), "{e}");
    assert!(exporter.snapshot_ids(&id).is_empty(), "a snapshot was made");
    // No image, state or session file (the session directory may exist).
    let mut files = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    assert!(files.is_empty(), "left behind: {files:?}");
}

/// Rewrites the recorded image of `disk` as if the previous snapshot's
/// disk had been `size` bytes long: the image cut or extended to `size`,
/// its size, SHA-256 and fingerprint recorded again.
async fn pretend_previous_size(backup: &OvmBackup, disk: &str, size: u64) {
    let image = backup.image_path(disk);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    let mut state = backup.state().await.unwrap().unwrap();
    let sha = sha256(&image).await;
    let d = state.disks.iter_mut().find(|d| d.name == disk).unwrap();
    assert!(
        d.chunks().iter().all(|c| c.start + c.length <= size),
        "the previous snapshot must hold no data past {size}"
    );
    d.size = size;
    d.sha256 = sha;
    d.fingerprint = hypersdk_ovm::backup::FileFingerprint::of(&image).unwrap();
    state.save(backup.dir()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_disk_is_extended_and_a_shrunk_one_refused() {
    const DISK: &str = "0004fb00001200000000000000000007.img";
    let spec = VmSpec::new("growing").with_disk(DiskSpec::new(DISK, "xvda", 4 * MIB));
    let vm = spec.id.clone();
    let exporter = OvmExporter::builder().vm(spec).start().await.unwrap();
    let mut rng = Rng(17);
    exporter.write(&vm, DISK, 0, &rng.bytes(300 * K)).unwrap();
    exporter.write(&vm, DISK, MIB, &rng.bytes(200 * K)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = OvmBackup::new(client(&exporter), dir.path()).with_options(options());
    let full = backup.full(&vm).await.unwrap();

    // The disk was 2 MiB at the previous snapshot and has grown to 4 MiB;
    // the guest wrote past the old end and inside it.
    pretend_previous_size(&backup, DISK, 2 * MIB).await;
    exporter
        .write(&vm, DISK, 3 * MIB, &rng.bytes(100 * K))
        .unwrap();
    exporter
        .write(&vm, DISK, 64 * K, &rng.bytes(4 * K))
        .unwrap();
    let inc = backup.incremental(&vm, &full.snapshot_id).await.unwrap();
    let d = &inc.disks[0];
    assert!(d.patched && d.size == 4 * MIB);
    // Only the new data was fetched: the 4 KiB write's cluster and the
    // 100 KiB past the old end, in whole clusters.
    assert_eq!(d.bytes_fetched, 64 * K + 128 * K);
    let server = exporter
        .snapshot_disk_path(&vm, &inc.snapshot_id, DISK)
        .unwrap();
    assert_eq!(
        sha256(&backup.image_path(DISK)).await,
        sha256(&server).await
    );
    assert_eq!(d.sha256, sha256(&server).await);

    // The disk was 8 MiB at the previous snapshot: it shrank, which an
    // image cannot follow. Refused, and undone: no snapshot left behind,
    // no pending backup, the image untouched.
    pretend_previous_size(&backup, DISK, 8 * MIB).await;
    let state_before = std::fs::read(BackupState::path_in(dir.path())).unwrap();
    let image_before = sha256(&backup.image_path(DISK)).await;
    exporter.write(&vm, DISK, 0, &rng.bytes(4 * K)).unwrap();
    let e = backup.incremental(&vm, &inc.snapshot_id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("shrank") && e.to_string().contains("full backup"),
        "{e}"
    );
    assert_eq!(exporter.snapshot_ids(&vm), vec![inc.snapshot_id.clone()]);
    assert_eq!(
        std::fs::read(BackupState::path_in(dir.path())).unwrap(),
        state_before
    );
    assert_eq!(sha256(&backup.image_path(DISK)).await, image_before);
    // A full backup takes the disk at its size again.
    let again = backup.full(&vm).await.unwrap();
    assert!(again.previous_deleted);
    let server = exporter
        .snapshot_disk_path(&vm, &again.snapshot_id, DISK)
        .unwrap();
    assert_eq!(
        sha256(&backup.image_path(DISK)).await,
        sha256(&server).await
    );
    assert_eq!(exporter.snapshot_ids(&vm), vec![again.snapshot_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ova_and_manifest_of_a_backup() {
    let (exporter, vm) = exporter().await;
    Guest::with_initial_contents(&exporter, &vm, 13);
    let dir = tempfile::tempdir().unwrap();
    let backup = OvmBackup::new(client(&exporter), dir.path().join("b")).with_options(options());
    backup.full(&vm).await.unwrap();

    let manifest = backup.write_manifest().await.unwrap();
    let m = hypersdk_manifest::verify(&manifest).await.unwrap();
    assert_eq!(m.disks.len(), 2);

    let ova = dir.path().join("web01.ova");
    let report = backup
        .write_ova(&ova, &hypersdk_ovm::backup::OvaOptions::default())
        .await
        .unwrap();
    assert_eq!(report.disks.len(), 2);
    // Unpacked to raw again, each disk is the image.
    let out = dir.path().join("raw");
    std::fs::create_dir(&out).unwrap();
    let disks = hypersdk_ova::vmdk::convert::ova_file_to_raw(
        &ova,
        &out,
        &hypersdk_ova::vmdk::convert::RawOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(disks.len(), 2);
    let state = backup.state().await.unwrap().unwrap();
    for (disk, raw) in state.disks.iter().zip(&disks) {
        assert_eq!(sha256(raw.report.path.as_ref().unwrap()).await, disk.sha256);
    }
    // An OVA is never replaced.
    let e = backup
        .write_ova(&ova, &hypersdk_ovm::backup::OvaOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}
