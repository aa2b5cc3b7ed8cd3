//! Sparse files on a real file system: [`FileSource`] finds the data of a
//! sparse file as `qemu-img map` does, and [`SparseFile`] writes images that
//! keep their holes, commit atomically, abort cleanly and resume correctly.
//!
//! These tests need `qemu-img` (Debian package `qemu-utils`); without it
//! they fail, they never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::{BlockSink, BlockSource, FileSource, SparseFile, is_all_zero};
use hypersdk_core::model::{Extent, ExtentList};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The storage allocated to `path` (`st_blocks × 512`).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// Writes `data` at `offset` of an existing file.
fn poke(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// A file of `len` bytes, all hole.
fn holey(path: &Path, len: u64) {
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The `data: true` ranges that `qemu-img map` reports, squashed and clamped
/// to `len` (qemu rounds a raw image up to whole 512-byte sectors).
fn qemu_img_data(path: &Path, len: u64) -> ExtentList {
    let out = match Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "qemu-img is not installed ({e}): this test needs it; \
             run `apt-get install qemu-utils` (or scripts/test.sh as root)"
        ),
        Err(e) => panic!("running qemu-img failed: {e}"),
    };
    assert!(
        out.status.success(),
        "qemu-img map {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| Extent::new(e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()));
    ExtentList::from_unsorted(data).squash().clamp(len)
}

async fn extents_of(path: &Path) -> ExtentList {
    let src = FileSource::open(path).await.unwrap();
    src.allocated_extents().await.unwrap().unwrap()
}

#[tokio::test]
async fn allocated_extents_match_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();

    // Sparse, with data at 1 MiB, 5 MiB, a run spanning many blocks, and the
    // very end of a file whose length is not a multiple of 512.
    let sparse = dir.path().join("sparse.raw");
    let len = 16 * MIB + 1234;
    holey(&sparse, len);
    poke(&sparse, MIB, &[1; 5000]);
    poke(&sparse, 5 * MIB + 7, b"hello");
    poke(&sparse, 9 * MIB, &vec![2; (3 * MIB) as usize]);
    poke(&sparse, 12 * MIB + 64 * KIB, &[3; 1]);
    poke(&sparse, len - 1, &[4]);
    let ours = extents_of(&sparse).await;
    assert_eq!(ours, qemu_img_data(&sparse, len));
    assert!(ours.covers(Extent::new(9 * MIB, 3 * MIB)));
    assert!(!ours.contains_offset(2 * MIB) && !ours.contains_offset(13 * MIB));
    assert_eq!(ours.as_slice().last().map(|e| e.end()), Some(len));

    // Dense: one extent.
    let dense = dir.path().join("dense.raw");
    fs::write(&dense, vec![9u8; (2 * MIB + 3) as usize]).unwrap();
    let ours = extents_of(&dense).await;
    assert_eq!(ours, ExtentList::full(2 * MIB + 3));
    assert_eq!(ours, qemu_img_data(&dense, 2 * MIB + 3));

    // All hole, and empty: no extents.
    let hole = dir.path().join("hole.raw");
    holey(&hole, 4 * MIB);
    assert_eq!(extents_of(&hole).await, ExtentList::new());
    assert_eq!(qemu_img_data(&hole, 4 * MIB), ExtentList::new());
    let empty = dir.path().join("empty.raw");
    holey(&empty, 0);
    assert_eq!(extents_of(&empty).await, ExtentList::new());
}

/// An image of `len` bytes, mostly zeros, with data islands.
fn pattern(len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    let islands = [
        (0u64, 4 * KIB),
        (3 * MIB + 100, 70 * KIB),
        (10 * MIB, MIB),
        (len - 10, 10),
    ];
    for (off, n) in islands {
        for i in off..off + n {
            v[i as usize] = (i % 251) as u8 | 1;
        }
    }
    v
}

/// Writes `data` to `sink` in pieces of `piece` bytes.
async fn write_all(sink: &SparseFile, data: &[u8], piece: usize) {
    let data = Bytes::copy_from_slice(data);
    let mut off = 0;
    while off < data.len() {
        let end = (off + piece).min(data.len());
        sink.write_at(off as u64, data.slice(off..end))
            .await
            .unwrap();
        off = end;
    }
}

fn part_of(path: &Path) -> PathBuf {
    SparseFile::part_path_for(path).unwrap()
}

#[tokio::test]
async fn sparse_image_is_identical_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let len = 32 * MIB;
    let want = pattern(len);

    let sink = SparseFile::create(&path, len).await.unwrap();
    assert_eq!(sink.part_path(), dir.path().join("disk.raw.part"));
    assert_eq!(sink.path(), path);
    assert_eq!(BlockSink::len(&sink), len);
    let d = sink.describe();
    assert!(
        d.contains(&path.display().to_string()) && d.contains("disk.raw.part"),
        "{d}"
    );
    // Odd-sized pieces, so blocks straddle write boundaries.
    write_all(&sink, &want, 3 * MIB as usize + 4099).await;
    sink.flush().await.unwrap();
    let stats = sink.stats();
    assert_eq!(stats.data_bytes + stats.zero_bytes, len);
    assert!(stats.data_bytes < 2 * MIB, "{stats:?}");
    assert_eq!(stats.punched_bytes, 0);
    assert!(!path.exists(), "the final file appears only at commit");
    assert!(part_of(&path).exists());
    assert_eq!(
        &sink.read_back(Extent::new(10 * MIB - 1, 2)).await.unwrap()[..],
        &want[(10 * MIB - 1) as usize..(10 * MIB + 1) as usize]
    );

    assert_eq!(sink.commit().await.unwrap(), path);
    assert!(!part_of(&path).exists());
    let got = fs::read(&path).unwrap();
    assert!(got == want, "committed image differs from what was written");
    let alloc = allocated(&path);
    assert!(
        alloc < 4 * MIB,
        "{alloc} bytes allocated for a {len}-byte image"
    );

    // The image reads back through FileSource with only its data allocated.
    let src = FileSource::open(&path).await.unwrap();
    let data = src.allocated_extents().await.unwrap().unwrap();
    assert!(data.total_bytes() < 4 * MIB, "{data}");
    for e in &data {
        let bytes = src.read_range(*e).await.unwrap();
        assert_eq!(&bytes[..], &want[e.offset as usize..e.end() as usize]);
    }
    let holes = data.complement(Extent::new(0, len));
    for h in &holes {
        assert!(is_all_zero(&want[h.offset as usize..h.end() as usize]));
    }
}

#[tokio::test]
async fn abort_removes_the_part_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.raw");
    let sink = SparseFile::create(&path, MIB).await.unwrap();
    sink.write_at(0, Bytes::from_static(b"data")).await.unwrap();
    assert!(part_of(&path).exists());
    sink.abort().await.unwrap();
    assert!(!part_of(&path).exists());
    assert!(!path.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn drop_leaves_the_part_file_and_no_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    let sink = SparseFile::create(&path, MIB).await.unwrap();
    sink.write_at(100, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    drop(sink);
    assert!(!path.exists());
    let part = fs::read(part_of(&path)).unwrap();
    assert_eq!(part.len() as u64, MIB);
    assert_eq!(&part[100..104], b"kept");
}

#[tokio::test]
async fn resume_checks_the_part_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.raw");

    let e = SparseFile::resume(&path, MIB).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains("r.raw.part"), "{e}");

    let sink = SparseFile::create(&path, MIB).await.unwrap();
    sink.write_at(0, Bytes::from_static(b"first run"))
        .await
        .unwrap();
    drop(sink);

    let e = SparseFile::resume(&path, MIB + 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("r.raw.part") && msg.contains(&MIB.to_string()),
        "{msg}"
    );

    let sink = SparseFile::resume(&path, MIB).await.unwrap();
    assert!(sink.is_resumed());
    assert_eq!(
        &sink.read_back(Extent::new(0, 9)).await.unwrap()[..],
        b"first run"
    );
    sink.write_at(MIB - 3, Bytes::from_static(b"end"))
        .await
        .unwrap();
    sink.commit().await.unwrap();
    let got = fs::read(&path).unwrap();
    assert_eq!(&got[..9], b"first run");
    assert_eq!(&got[got.len() - 3..], b"end");
}

#[tokio::test]
async fn resumed_zero_writes_clear_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.raw");
    let len = 8 * MIB;
    let sink = SparseFile::create(&path, len).await.unwrap();
    // An earlier run wrote data over [1 MiB, 5 MiB) and stopped.
    sink.write_at(MIB, Bytes::from(vec![0xEE; (4 * MIB) as usize]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    let before = allocated(&part_of(&path));
    assert!(before >= 4 * MIB, "{before}");

    // The resumed run finds zeros there now, except one byte.
    let sink = SparseFile::resume(&path, len).await.unwrap();
    let mut now = vec![0u8; (4 * MIB) as usize];
    now[(2 * MIB) as usize] = 7;
    sink.write_at(MIB, Bytes::from(now)).await.unwrap();
    let stats = sink.stats();
    assert_eq!(stats.data_bytes, 64 * KIB);
    assert_eq!(stats.zero_bytes, 4 * MIB - 64 * KIB);
    assert_eq!(stats.punched_bytes, 4 * MIB - 64 * KIB);
    let back = sink.read_back(Extent::new(0, len)).await.unwrap();
    assert_eq!(back[(3 * MIB) as usize], 7);
    assert_eq!(back.iter().filter(|b| **b != 0).count(), 1);
    sink.commit().await.unwrap();
    let got = fs::read(&path).unwrap();
    assert_eq!(got.iter().filter(|b| **b != 0).count(), 1);
    let after = allocated(&path);
    assert!(after <= 256 * KIB, "{after} bytes still allocated");
}

#[tokio::test]
async fn punch_hole_zeroes_and_frees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.raw");
    let len = 4 * MIB;
    let sink = SparseFile::create(&path, len).await.unwrap();
    sink.write_at(0, Bytes::from(vec![0x55; len as usize]))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let full = allocated(sink.part_path());
    assert!(full >= len, "{full}");

    // An unaligned range: the partial blocks at its edges are zeroed too.
    let hole = Extent::new(MIB + 1, 2 * MIB - 2);
    sink.punch_hole(hole).await.unwrap();
    assert_eq!(sink.stats().punched_bytes, hole.length);
    let back = sink.read_back(Extent::new(0, len)).await.unwrap();
    assert!(is_all_zero(
        &back[hole.offset as usize..hole.end() as usize]
    ));
    assert_eq!(back[hole.offset as usize - 1], 0x55);
    assert_eq!(back[hole.end() as usize], 0x55);
    let after = allocated(sink.part_path());
    assert!(after <= full - 2 * MIB + 8 * KIB, "{full} -> {after}");

    let e = sink.punch_hole(Extent::new(len - 1, 2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    sink.punch_hole(Extent::new(len, 0)).await.unwrap();
    sink.abort().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_at_disjoint_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.raw");
    let tasks = 8u64;
    let share = 2 * MIB + 12_345; // not block aligned
    let len = tasks * share;
    let want: Arc<Vec<u8>> = Arc::new(
        (0..len)
            .map(|i| {
                // Zero runs of 256 KiB within each share, data elsewhere.
                if (i % share) / (256 * KIB) % 2 == 1 {
                    0
                } else {
                    (i % 249) as u8 | 1
                }
            })
            .collect(),
    );
    let sink = Arc::new(SparseFile::create(&path, len).await.unwrap());
    let mut handles = Vec::new();
    for t in 0..tasks {
        let sink = Arc::clone(&sink);
        let want = Arc::clone(&want);
        handles.push(tokio::spawn(async move {
            let start = t * share;
            let mut off = start;
            while off < start + share {
                let end = (off + 100_003).min(start + share);
                let piece = Bytes::copy_from_slice(&want[off as usize..end as usize]);
                sink.write_at(off, piece).await.unwrap();
                off = end;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let sink = Arc::into_inner(sink).unwrap();
    let stats = sink.stats();
    assert_eq!(stats.data_bytes + stats.zero_bytes, len);
    assert!(stats.zero_bytes > 0);
    sink.commit().await.unwrap();
    let got = fs::read(&path).unwrap();
    assert!(got == *want, "concurrently written image differs");
}

#[tokio::test]
async fn out_of_bounds_write_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oob.raw");
    let sink = SparseFile::create(&path, 1000).await.unwrap();
    let e = sink
        .write_at(999, Bytes::from_static(b"xy"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    let e = sink
        .write_at(u64::MAX, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    sink.write_at(998, Bytes::from_static(b"xy")).await.unwrap();
    sink.write_at(1000, Bytes::new()).await.unwrap();
    assert_eq!(sink.stats().data_bytes, 2);
    let e = sink.read_back(Extent::new(1, 1000)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    sink.abort().await.unwrap();
}

#[tokio::test]
async fn commit_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.raw");
    fs::write(&path, b"the old image, longer than the new one").unwrap();

    let sink = SparseFile::create(&path, 6).await.unwrap();
    sink.write_at(0, Bytes::from_static(b"new!!!"))
        .await
        .unwrap();
    // Untouched until the commit.
    assert_eq!(
        fs::read(&path).unwrap(),
        b"the old image, longer than the new one"
    );
    sink.commit().await.unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new!!!");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["old.raw"]);
}

#[tokio::test]
async fn failed_commit_leaves_target_and_part() {
    let dir = tempfile::tempdir().unwrap();
    // A non-empty directory at the final path: the rename fails.
    let path = dir.path().join("taken.raw");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"keep").unwrap();
    let sink = SparseFile::create(&path, 10).await.unwrap();
    sink.write_at(0, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let e = sink.commit().await.unwrap_err();
    assert!(e.to_string().contains("taken.raw"), "{e}");
    assert_eq!(fs::read(path.join("inside")).unwrap(), b"keep");
    // The data is still there to resume.
    let sink = SparseFile::resume(&path, 10).await.unwrap();
    assert_eq!(
        &sink.read_back(Extent::new(0, 10)).await.unwrap()[..],
        b"0123456789"
    );
    sink.abort().await.unwrap();
}
