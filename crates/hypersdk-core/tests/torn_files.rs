//! Readers polling a checkpoint or a progress state file while it is being
//! rewritten never see a torn (partly written, mixed or empty) file.
//!
//! A writer thread rewrites the file as fast as it can, alternating between
//! contents of very different sizes, while reader threads read and parse it
//! in a loop. Replacing the file in place (truncate, then write) would let a
//! reader see an empty or truncated file, or the head of the new contents
//! followed by the tail of the old; every read here must parse and be
//! self-consistent. Each test runs for about a second (bounded in writes and
//! in time, since every write is fsynced).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hypersdk_core::checkpoint::{CheckpointStore, SessionId, TransferItem, TransferSession};
use hypersdk_core::model::extent::Extent;
use hypersdk_core::progress::{Outcome, Phase, Progress, StateFile, StateFileSink};

/// Writers stop after this many writes...
const MAX_WRITES: usize = 4000;
/// ...or once this much time passed and at least `MIN_WRITES` were done.
const BUDGET: Duration = Duration::from_millis(900);
const MIN_WRITES: usize = 20;
/// Reader threads per test.
const READERS: usize = 2;

/// Item counts of the two alternating checkpoint sizes.
const SMALL: usize = 1;
const LARGE: usize = 2000;

fn keep_writing(started: Instant, writes: usize) -> bool {
    writes < MIN_WRITES || (writes < MAX_WRITES && started.elapsed() < BUDGET)
}

/// Runs `read` in `READERS` threads until `stop` is set, then returns how
/// many reads each did and what they saw.
fn spawn_readers<T: Send + 'static>(
    stop: &Arc<AtomicBool>,
    read: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<thread::JoinHandle<Vec<T>>> {
    let read = Arc::new(read);
    (0..READERS)
        .map(|_| {
            let stop = Arc::clone(stop);
            let read = Arc::clone(&read);
            thread::spawn(move || {
                let mut seen = Vec::new();
                // At least one read after the writer stopped, too.
                loop {
                    let last = stop.load(Ordering::Acquire);
                    seen.push(read(seen.len()));
                    if last {
                        return seen;
                    }
                }
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// `n` items, the first one with some progress.
fn items(n: usize) -> Vec<TransferItem> {
    let mut items: Vec<TransferItem> = (0..n)
        .map(|i| TransferItem::new(format!("d{i}"), 1 << 30))
        .collect();
    items[0].mark_done(Extent::new(0, 1 << 20));
    items
}

#[test]
fn checkpoint_readers_never_see_torn_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("checkpoints")).unwrap();
    let id = SessionId::new("torn-test").unwrap();
    let path: PathBuf = store.path_for(&id).unwrap();
    let variants = [items(SMALL), items(LARGE)];

    let mut session = TransferSession::new("ova-upload", "/exports/a.ova", "https://esx/f")
        .with_id(id.clone())
        .with_metadata("item_count", SMALL);
    session.items = variants[0].clone();
    store.save(&mut session).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let readers = {
        let (store, id, path) = (store.clone(), id.clone(), path.clone());
        spawn_readers(&stop, move |n| {
            // Alternate between the raw file and the store's checked load.
            let (count, marker) = if n % 2 == 0 {
                let bytes = read_file(&path);
                let v: serde_json::Value = match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(e) => panic!("torn read of {} bytes: {e}", bytes.len()),
                };
                let count = v["items"].as_array().map(Vec::len);
                (count, v["metadata"]["item_count"].as_u64())
            } else {
                let s = match store.load(&id) {
                    Ok(s) => s,
                    Err(e) => panic!("load failed: {e}"),
                };
                let marker = s.metadata.get("item_count").and_then(|v| v.as_u64());
                (Some(s.items.len()), marker)
            };
            let count = count.unwrap_or(usize::MAX);
            assert!(count == SMALL || count == LARGE, "{count} items");
            assert_eq!(Some(count as u64), marker, "items and metadata disagree");
            count
        })
    };

    let started = Instant::now();
    let mut writes = 0;
    while keep_writing(started, writes) {
        let n = if writes % 2 == 0 { LARGE } else { SMALL };
        session.items = variants[usize::from(n == LARGE)].clone();
        session.metadata.insert("item_count".into(), n.into());
        store.save(&mut session).unwrap();
        writes += 1;
    }
    stop.store(true, Ordering::Release);

    let mut seen = [0usize; 2];
    for r in readers {
        let counts = r.join().expect("a reader saw a torn file");
        assert!(!counts.is_empty());
        for c in counts {
            seen[usize::from(c == LARGE)] += 1;
        }
    }
    eprintln!(
        "checkpoint: {writes} writes in {:?}, reads of small/large: {seen:?}",
        started.elapsed()
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "readers saw both sizes: {seen:?} in {writes} writes"
    );
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["torn-test.json"]);
}

#[test]
fn state_file_readers_never_see_torn_files() {
    const DISKS: usize = 100;
    const TOTAL: u64 = 3_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state.json");
    let disks: Vec<String> = (0..DISKS)
        .map(|i| format!("/var/tmp/a-fairly-long-directory-name/vm-{i:03}/disk-{i:03}.img"))
        .collect();
    let sink = StateFileSink::new(&path, disks.clone())
        .with_min_interval(Duration::ZERO)
        .start()
        .unwrap();
    let progress = Progress::new(sink);

    let stop = Arc::new(AtomicBool::new(false));
    let readers = {
        let path = path.clone();
        spawn_readers(&stop, move |_| {
            let bytes = read_file(&path);
            let state: StateFile = match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => panic!("torn read of {} bytes: {e}", bytes.len()),
            };
            assert!(state.started);
            assert_eq!(state.disks.len(), DISKS);
            assert_eq!(state.disk_count, DISKS);
            state.disks.iter().map(|d| d.progress).sum::<f64>()
        })
    };

    // Copy the disks one after the other in uneven steps; with no
    // throttling each step rewrites the file.
    let started = Instant::now();
    let mut writes = 0;
    'copy: for disk in &disks {
        let item = progress
            .item(Phase::Transferring, disk.as_str(), Some(TOTAL))
            .with_min_interval(Duration::ZERO);
        while item.bytes_done() < TOTAL {
            if !keep_writing(started, writes) {
                break 'copy;
            }
            item.add(7_777 + (writes as u64 % 3) * 100_003);
            writes += 1;
        }
    }
    progress.finish(Outcome::Succeeded);
    stop.store(true, Ordering::Release);

    let mut reads = 0;
    for r in readers {
        let sums = r.join().expect("a reader saw a torn file");
        assert!(
            sums.windows(2).all(|w| w[0] <= w[1]),
            "progress never goes back"
        );
        reads += sums.len();
    }
    eprintln!(
        "state file: {writes} writes in {:?}, {reads} reads",
        started.elapsed()
    );
    assert!(reads >= READERS);
    let state: StateFile = serde_json::from_slice(&read_file(&path)).unwrap();
    assert!(state.finished && !state.failed, "{state:?}");
    assert_eq!(state.return_code, Some(0));
    assert!(
        state.disks[0].progress > 0.0,
        "{writes} writes reached the file"
    );
}
