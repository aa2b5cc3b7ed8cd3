//! The copy engine end to end: sparse images over HTTP through a proxy that
//! cuts connections, a copy killed with SIGKILL and resumed, misbehaving
//! servers, and hostile extent lists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hypersdk_core::blocks::{
    BlockSink, BlockSource, BytesSource, Checkpointing, CopyOptions, FileSource, HttpSource,
    SparseFile, allocated_size, copy_extents, copy_to_file,
};
use hypersdk_core::checkpoint::{CheckpointStore, SessionId, TransferSession};
use hypersdk_core::digest::{Algorithm, hash_file};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::progress::{CallbackSink, Progress};
use hypersdk_core::retry::Backoff;
use hypersdk_core::{Error, ErrorKind};
use hypersdk_testkit::fault_proxy::FaultProxy;
use hypersdk_testkit::http_server::{Fault, FileServer};

const MIB: u64 = 1 << 20;

/// A small deterministic generator (no seeds to manage in CI).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Writes a sparse file of `len` bytes whose data covers about `fraction`
/// of it in scattered extents of 64 KiB to 4 MiB, and returns the extents
/// written.
fn make_sparse(path: &Path, len: u64, fraction: f64, seed: u64) -> ExtentList {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).unwrap();
    file.set_len(len).unwrap();
    let mut rng = Lcg(seed);
    let target = (len as f64 * fraction) as u64;
    let mut written = ExtentList::new();
    while written.total_bytes() < target {
        let length = (64 << 10) * (1 + rng.next() % 64);
        let offset = (rng.next() % (len / 4096)) * 4096;
        let e = Extent::new(offset, length.min(len - offset));
        let add = ExtentList::from_unsorted([e]).subtract(&written);
        for piece in add.iter() {
            let data: Vec<u8> = (0..piece.length)
                .map(|i| ((piece.offset + i) % 253) as u8 | 1)
                .collect();
            file.write_all_at(&data, piece.offset).unwrap();
        }
        written = written.merge(&add);
    }
    file.sync_all().unwrap();
    written
}

fn fast() -> Backoff {
    Backoff::default()
        .with_initial(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(50))
        .with_max_attempts(Some(5))
}

async fn sha256(path: &Path) -> String {
    hash_file(path, &[Algorithm::Sha256])
        .await
        .unwrap()
        .get(Algorithm::Sha256)
        .unwrap()
        .to_string()
}

fn part_of(path: &Path) -> PathBuf {
    SparseFile::part_path_for(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_gigabyte_through_a_proxy_cutting_every_7_mib() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    make_sparse(&src, 1 << 30, 0.20, 7);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("copy.raw");

    // The provider knows the allocation; the bytes come over HTTP.
    let extents = FileSource::open(&src)
        .await
        .unwrap()
        .allocated_extents()
        .await
        .unwrap()
        .unwrap();
    let server = FileServer::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut_every(7 * MIB);
    let source = HttpSource::builder(proxy.url("src.raw"))
        .backoff(fast())
        .open()
        .await
        .unwrap();

    let options = CopyOptions::default().with_digests(&[Algorithm::Sha256]);
    let report = copy_to_file(&source, &out, Some(&extents), None, None, &options)
        .await
        .unwrap();

    let expected = sha256(&src).await;
    let streamed = report
        .digests
        .as_ref()
        .unwrap()
        .get(Algorithm::Sha256)
        .unwrap();
    assert_eq!(
        streamed.to_string(),
        expected,
        "digest computed during the copy"
    );
    assert_eq!(sha256(&out).await, expected, "output file");
    assert!(!part_of(&out).exists());

    let (src_alloc, out_alloc) = (allocated_size(&src).unwrap(), allocated_size(&out).unwrap());
    let diff = src_alloc.abs_diff(out_alloc) as f64 / src_alloc as f64;
    assert!(
        diff <= 0.01,
        "allocated: source {src_alloc}, copy {out_alloc}"
    );

    let cuts = proxy.cuts();
    assert!(cuts >= 25, "the proxy cut only {cuts} times");
    let allowed = extents.total_bytes() + cuts * CopyOptions::default().chunk_size;
    let sent = server.bytes_sent();
    assert!(
        sent <= allowed,
        "fetched {sent} bytes for {} allocated and {cuts} cuts",
        extents.total_bytes()
    );
    assert_eq!(report.bytes_fetched, extents.total_bytes());
    eprintln!(
        "1 GiB, {} MiB allocated: fetched {} MiB at the server, {cuts} cuts, {:?}",
        extents.total_bytes() >> 20,
        sent >> 20,
        report.elapsed
    );
}

/// The child half of `sigkill_mid_copy_then_resume`: runs only when the
/// parent sets `HYPERSDK_COPY_CHILD`, and copies until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_copy() {
    let Ok(url) = std::env::var("HYPERSDK_COPY_CHILD") else {
        return; // Not a child: nothing to do.
    };
    let out = PathBuf::from(std::env::var("HYPERSDK_COPY_OUT").unwrap());
    let store = CheckpointStore::open(std::env::var("HYPERSDK_COPY_STORE").unwrap()).unwrap();
    let mut session = store
        .load(std::env::var("HYPERSDK_COPY_SESSION").unwrap())
        .unwrap();
    let source = HttpSource::builder(url).open().await.unwrap();
    let local = FileSource::open(std::env::var("HYPERSDK_COPY_SRC").unwrap())
        .await
        .unwrap();
    let extents = local.allocated_extents().await.unwrap().unwrap();
    let options = CopyOptions::default()
        .with_chunk_size(MIB)
        .with_parallelism(2)
        .with_commit_interval(Duration::ZERO)
        .with_item("disk");
    let cp = Checkpointing {
        store: &store,
        session: &mut session,
    };
    copy_to_file(&source, &out, Some(&extents), None, Some(cp), &options)
        .await
        .unwrap();
    panic!("the child copy finished before it was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_copy_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let extents = make_sparse(&src, 64 * MIB, 0.5, 11);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("copy.raw");
    let store = CheckpointStore::open(work.path().join("checkpoints")).unwrap();
    let mut session = TransferSession::new("test-copy", "src.raw", out.display().to_string());
    store.save(&mut session).unwrap();
    let id: SessionId = session.id.clone();

    let server = FileServer::start(dir.path()).await;
    // Slow the child down so it is killed mid-way: ~10 MiB/s.
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.delay(Duration::from_millis(6));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_copy", "--exact", "--nocapture", "--test-threads=1"])
        .env("HYPERSDK_COPY_CHILD", proxy.url("src.raw"))
        .env("HYPERSDK_COPY_OUT", &out)
        .env("HYPERSDK_COPY_STORE", store.dir())
        .env("HYPERSDK_COPY_SESSION", id.as_str())
        .env("HYPERSDK_COPY_SRC", &src)
        .spawn()
        .unwrap();

    // Kill it once it has committed a quarter of the data.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the child made no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited before it was killed: {status}");
        }
        let done = store
            .load(&id)
            .ok()
            .and_then(|s| s.item("disk").map(|i| i.bytes_done()))
            .unwrap_or(0);
        if done >= extents.total_bytes() / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let requests_before = server.log().len();

    assert!(!out.exists(), "a killed copy left a file at the final name");
    assert!(part_of(&out).exists(), "the .part file is gone");
    let mut session = store.load(&id).unwrap();
    let committed = session.item("disk").unwrap().completed.clone();
    assert!(!committed.is_empty());

    // Restart, without the slow proxy.
    let source = HttpSource::builder(server.url("src.raw"))
        .open()
        .await
        .unwrap();
    let options = CopyOptions::default()
        .with_chunk_size(MIB)
        .with_item("disk")
        .with_digests(&[Algorithm::Sha256]);
    let report = copy_to_file(
        &source,
        &out,
        Some(&extents),
        None,
        Some(Checkpointing {
            store: &store,
            session: &mut session,
        }),
        &options,
    )
    .await
    .unwrap();

    let expected = sha256(&src).await;
    assert_eq!(sha256(&out).await, expected);
    assert_eq!(
        report
            .digests
            .unwrap()
            .get(Algorithm::Sha256)
            .unwrap()
            .to_string(),
        expected,
        "the digest of a resumed copy covers the bytes of the first run"
    );
    assert_eq!(
        report.bytes_resumed,
        committed.intersect(&extents).total_bytes()
    );

    // No committed byte was fetched again.
    let refetched: Vec<(u64, u64)> = server.log()[requests_before..]
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.range)
        .filter(|(first, last)| {
            committed
                .intersect(&ExtentList::from_unsorted([Extent::new(
                    *first,
                    last - first + 1,
                )]))
                .total_bytes()
                > 0
        })
        .collect();
    assert!(
        refetched.is_empty(),
        "committed ranges fetched again: {refetched:?}"
    );
    let item = store.load(&id).unwrap();
    assert!(item.item("disk").unwrap().is_complete());
    eprintln!(
        "killed after {} MiB committed; resume fetched {} MiB",
        committed.total_bytes() >> 20,
        report.bytes_fetched >> 20
    );
}

#[tokio::test]
async fn each_misbehaviour_has_its_own_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let extents = make_sparse(&src, 4 * MIB, 0.5, 3);
    let server = FileServer::start(dir.path()).await;
    let cases: [(Fault, &str); 5] = [
        (Fault::IgnoreRange, "ignored the Range header"),
        (Fault::WrongContentRange, "Content-Range"),
        (Fault::ShortBody, "body"),
        (Fault::status(500), "500"),
        (Fault::Stall { after: 0 }, "timed out"),
    ];
    for (fault, expected) in cases {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("copy.raw");
        let source = HttpSource::builder(server.url("src.raw"))
            .backoff(fast().with_max_attempts(Some(2)))
            .idle_timeout(Duration::from_millis(200))
            .open()
            .await
            .unwrap();
        server.inject(fault.clone(), None);
        let e = copy_to_file(
            &source,
            &out,
            Some(&extents),
            None,
            None,
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
        server.clear_faults();
        let text = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(expected), "{fault:?}: {text}");
        assert!(
            text.contains("src.raw"),
            "{fault:?}: the error does not name the URL: {text}"
        );
        assert!(!out.exists(), "{fault:?} left a file at the final name");
        assert!(
            !part_of(&out).exists(),
            "{fault:?} left a .part without a checkpoint"
        );
    }
}

#[tokio::test]
async fn unsorted_overlapping_extents_are_normalised_and_out_of_range_ones_rejected() {
    let data: Bytes = (0..(1u32 << 20))
        .map(|i| (i % 241) as u8 | 1)
        .collect::<Vec<u8>>()
        .into();
    let source = BytesSource::new("mem", data.clone());
    let raw = [
        Extent::new(500_000, 100_000),
        Extent::new(0, 10),
        Extent::new(550_000, 100_000), // overlaps the first
        Extent::new(5, 20),            // overlaps the second
        Extent::new(900_000, 0),       // empty
    ];
    let extents = ExtentList::from_unsorted(raw);
    assert_eq!(
        extents.as_slice(),
        [Extent::new(0, 25), Extent::new(500_000, 150_000)]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let progress = Progress::new(CallbackSink::new(move |ev| {
        log.lock().unwrap().push((ev.bytes_done, ev.bytes_total));
    }));
    let options = CopyOptions::default()
        .with_chunk_size(64 << 10)
        .with_progress(progress);
    copy_to_file(&source, &out, Some(&extents), None, None, &options)
        .await
        .unwrap();
    // Progress counts the extents to copy, and ends at their total.
    let events = events.lock().unwrap().clone();
    assert!(events.len() >= 2, "{events:?}");
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "{events:?}");
    assert_eq!(events.last(), Some(&(150_025, Some(150_025))));
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(copied.len(), data.len());
    for (i, byte) in copied.iter().enumerate() {
        let inside = extents.contains_offset(i as u64);
        let want = if inside { data[i] } else { 0 };
        assert_eq!(*byte, want, "byte {i}");
    }

    let past = ExtentList::from_unsorted([Extent::new((1 << 20) - 10, 20)]);
    let other = dir.path().join("other.raw");
    let e = copy_to_file(&source, &other, Some(&past), None, None, &options)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!other.exists() && !part_of(&other).exists());
}

#[tokio::test]
async fn freed_ranges_are_punched_and_copied_ranges_win() {
    let data: Bytes = vec![7u8; 4 << 20].into();
    let source = BytesSource::new("mem", data);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let sink = SparseFile::create(&out, 4 << 20).await.unwrap();
    sink.write_at(0, Bytes::from(vec![9u8; 4 << 20]))
        .await
        .unwrap();
    let copy = ExtentList::from_unsorted([Extent::new(MIB, MIB)]);
    let freed = ExtentList::from_unsorted([Extent::new(0, 3 * MIB)]);
    let report = copy_extents(
        &source,
        &sink,
        &copy,
        Some(&freed),
        None,
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.bytes_freed, 2 * MIB);
    assert_eq!(report.bytes_fetched, MIB);
    let back = sink.read_back(Extent::new(0, 4 << 20)).await.unwrap();
    assert!(back[..MIB as usize].iter().all(|b| *b == 0));
    assert!(back[MIB as usize..2 * MIB as usize].iter().all(|b| *b == 7));
    assert!(
        back[2 * MIB as usize..3 * MIB as usize]
            .iter()
            .all(|b| *b == 0)
    );
    assert!(back[3 * MIB as usize..].iter().all(|b| *b == 9));
    sink.abort().await.unwrap();

    // A sink of another length is refused before anything is written.
    let short = SparseFile::create(&out, 1 << 20).await.unwrap();
    let e = copy_extents(&source, &short, &copy, None, None, &CopyOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(matches!(e, Error::InvalidInput { .. }));
    short.abort().await.unwrap();
}

/// A source whose every read fails for good.
#[derive(Debug)]
struct Broken(u64);

#[async_trait::async_trait]
impl BlockSource for Broken {
    fn describe(&self) -> String {
        "broken".into()
    }
    fn len(&self) -> u64 {
        self.0
    }
    async fn read_range(&self, _: Extent) -> hypersdk_core::Result<Bytes> {
        Err(Error::invalid_data("broken", "no data today"))
    }
    async fn allocated_extents(&self) -> hypersdk_core::Result<Option<ExtentList>> {
        Ok(None)
    }
}

#[tokio::test]
async fn progress_against_a_lost_part_file_is_forgotten_on_disk_at_once() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("copy.raw");
    let store = CheckpointStore::open(work.path().join("checkpoints")).unwrap();
    let mut session = TransferSession::new("test-copy", "src", "dst");
    session
        .add_item(hypersdk_core::checkpoint::TransferItem::new(
            "disk",
            4 * MIB,
        ))
        .unwrap();
    session
        .item_mut("disk")
        .unwrap()
        .mark_done(Extent::new(0, 2 * MIB));
    store.save(&mut session).unwrap();
    let id = session.id.clone();

    // No .part file: the recorded progress is worthless. The copy fails at
    // its first read, before any commit.
    let e = copy_to_file(
        &Broken(4 * MIB),
        &out,
        None,
        None,
        Some(Checkpointing {
            store: &store,
            session: &mut session,
        }),
        &CopyOptions::default().with_item("disk"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(!out.exists());
    let saved = store.load(&id).unwrap();
    assert_eq!(
        saved.item("disk").unwrap().bytes_done(),
        0,
        "a later run would trust bytes the new .part does not hold"
    );
}
