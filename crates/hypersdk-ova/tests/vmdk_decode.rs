//! The VMDK decoder against real files (testdata/vmdk, see SOURCES.md),
//! against qemu-img (the reference: every image it reads must decode to
//! the same bytes), and against hostile input.
//!
//! qemu-img is required (Debian package qemu-utils): a missing binary
//! fails these tests, it never skips them.

use std::io::Write;
use std::path::{Path, PathBuf};

use hypersdk_core::digest::Algorithm;
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_core::{Error, ErrorKind};
use hypersdk_ova::archive::{OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_ova::vmdk::convert::{
    RawOptions, RawReport, hash_raw, ova_file_to_raw, ova_to_raw, vmdk_file_to_raw, vmdk_to_raw,
};
use hypersdk_ova::vmdk::decode::{DecodeOptions, StreamDecoder};
use hypersdk_ova::vmdk::format::{Marker, MarkerType, SparseHeader};
use hypersdk_ova::vmdk::sparse::HostedDisk;
use hypersdk_testkit::{images, qemu};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

fn sha256(report: &RawReport) -> String {
    report
        .digests
        .get(Algorithm::Sha256)
        .expect("sha256 asked for")
        .to_hex()
}

/// raw sha256 of vmdk-rs monolithicSparse / streamOptimized /
/// twoGbMaxExtentSparse (SOURCES.md, qemu-img 10.0.2).
const VMDK_RS_RAW: &str = "a3bcf05f07a1c06a3380eeca8571f0efb2b85afafa1e21662b8cad436d1f7727";
/// raw sha256 of vmdk-rs/streamOptimizedWithMarkers.vmdk.
const MARKERS_RAW: &str = "92c0f8b4280377437056f57c51ef51a5f8aeb1462ac630ef0633febcbfc3db4e";
/// raw sha256 of vmdk-rs/vmfs_thick.vmdk.
const VMFS_RAW: &str = "8d43c795d24bce01b49f92744f934c1072210dcac170bb1c83a5aa56df46ab7d";

/// Every sample qemu-img reads: ours and qemu-img's raw images are equal
/// (qemu-img compare, hole-aware), and where the disk holds data our
/// on-the-fly sha256 is qemu-img's output's. Empty disks (up to 8 GiB) are
/// converted without a digest and must come out as one hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_qemu_img_reads_decodes_to_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // (file, has data, known raw sha256)
    let samples: &[(&str, bool, Option<&str>)] = &[
        ("vmdk/cot-blank-ovftool-stream.vmdk", false, None),
        ("vmdk/cot-input-ovftool-stream.vmdk", false, None),
        (
            "vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk",
            false,
            None,
        ),
        (
            "vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk",
            false,
            None,
        ),
        (
            "vmdk/ganeti-ova-inner-new_disk-virtualbox-stream.vmdk",
            false,
            None,
        ),
        (
            "vmdk/vmdk-rs/monolithicSparse.vmdk",
            true,
            Some(VMDK_RS_RAW),
        ),
        ("vmdk/vmdk-rs/streamOptimized.vmdk", true, Some(VMDK_RS_RAW)),
        (
            "vmdk/vmdk-rs/streamOptimizedWithMarkers.vmdk",
            true,
            Some(MARKERS_RAW),
        ),
        (
            "vmdk/vmdk-rs/twoGbMaxExtentSparse.vmdk",
            true,
            Some(VMDK_RS_RAW),
        ),
        ("vmdk/vmdk-rs/vmfs_thick.vmdk", true, Some(VMFS_RAW)),
    ];
    // The gzip'd ganeti disk, unpacked.
    let gz = std::fs::read(testdata("vmdk/ganeti-compr_disk.vmdk.gz")).unwrap();
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unpacked).unwrap();
    let compr = dir.path().join("ganeti-compr_disk.vmdk");
    std::fs::write(&compr, unpacked).unwrap();

    let mut all: Vec<(PathBuf, bool, Option<&str>)> = samples
        .iter()
        .map(|(f, d, h)| (testdata(f), *d, *h))
        .collect();
    all.push((compr, false, None));
    for (i, (path, has_data, known)) in all.into_iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let info = qemu::info(&path).await.unwrap();
        let ours = dir.path().join(format!("{i}-ours.raw"));
        let opts = if has_data {
            RawOptions::default()
        } else {
            RawOptions::default().with_digests(&[])
        };
        let report = vmdk_file_to_raw(&path, &ours, &opts)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.capacity, info.virtual_size, "{name}");
        assert_eq!(
            std::fs::metadata(&ours).unwrap().len(),
            info.virtual_size,
            "{name}"
        );
        assert!(
            qemu::compare(&path, &ours).await.unwrap(),
            "{name}: qemu-img compare says the raw image differs"
        );
        if has_data {
            let theirs = dir.path().join(format!("{i}-qemu.raw"));
            qemu::to_raw(&path, &theirs).await.unwrap();
            let expected = images::sha256_sparse(&theirs).unwrap();
            assert_eq!(sha256(&report), expected, "{name}");
            assert_eq!(images::sha256_sparse(&ours).unwrap(), expected, "{name}");
            if let Some(k) = known {
                assert_eq!(expected, k, "{name}: SOURCES.md's hash");
            }
        } else {
            assert_eq!(report.data_bytes, 0, "{name}");
            let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&ours).unwrap());
            assert_eq!(blocks, 0, "{name}: an empty disk must stay one hole");
        }
    }
}

/// The streamOptimized variants' structure as the decoder sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_variants_report_their_structure() {
    async fn stats(rel: &str) -> (hypersdk_ova::vmdk::decode::DecodeStats, SparseHeader) {
        let bytes = std::fs::read(testdata(rel)).unwrap();
        let mut d = StreamDecoder::new(&bytes[..]).await.unwrap();
        while d.next_grain().await.unwrap().is_some() {}
        (d.stats(), *d.header())
    }
    // VMware, preallocated GD/GTs, no GT/GD/footer markers, v3.
    let (s, h) = stats("vmdk/vmdk-rs/streamOptimized.vmdk").await;
    assert_eq!(
        (s.grains, s.grain_tables, s.footer, s.end_of_stream),
        (52, 0, false, true)
    );
    assert_eq!((h.version, h.gd_offset), (3, 0x15));
    // imagefactory: stored-deflate grains larger than the grain.
    let (s, _) = stats("vmdk/vmdk-rs/streamOptimizedWithMarkers.vmdk").await;
    assert_eq!(s.grains, 16);
    assert!(s.compressed_bytes > s.grain_bytes);
    assert!(s.footer && s.grain_directory && s.grain_tables >= 1);
    // ovftool, empty: real gdOffset in the header, 17 GTs, GD, footer.
    let (s, _) = stats("vmdk/cot-blank-ovftool-stream.vmdk").await;
    assert_eq!((s.grains, s.grain_tables, s.footer), (0, 17, true));
    // VirtualBox 5: GD only. Old VirtualBox: overhead 2176, EOS only.
    let (s, _) = stats("vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk").await;
    assert!(s.grain_directory && s.footer && s.grain_tables == 0);
    let (s, h) = stats("vmdk/ganeti-ova-inner-new_disk-virtualbox-stream.vmdk").await;
    assert_eq!((h.overhead, s.footer, s.end_of_stream), (2176, false, true));
    // Descriptors are parsed, ddb.* kept.
    let bytes =
        std::fs::read(testdata("vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk")).unwrap();
    let d = StreamDecoder::new(&bytes[..]).await.unwrap();
    let desc = d.descriptor().unwrap();
    assert_eq!(desc.create_type(), Some("streamOptimized"));
    assert!(desc.ddb("uuid.image").is_some());
    assert_eq!(d.capacity(), 8 << 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_stream_yields_its_grains_then_an_error_with_the_offset() {
    let path = testdata("vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk");
    let bytes = std::fs::read(&path).unwrap();
    let mut d =
        StreamDecoder::with_options(&bytes[..], DecodeOptions::default().with_name("ttylinux"))
            .await
            .unwrap();
    let mut grains = 0;
    let err = loop {
        match d.next_grain().await {
            Ok(Some(_)) => grains += 1,
            Ok(None) => panic!("a truncated stream must not end cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!(grains, 35, "the complete grains before the cut");
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("offset 1048576") && msg.contains("ttylinux"),
        "{msg}"
    );
    assert!(
        d.next_grain().await.unwrap().is_none(),
        "finished after the error"
    );

    // Converting it leaves nothing behind.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tty.raw");
    let e = vmdk_file_to_raw(&path, &out, &RawOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no raw, no .part"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmdk_rs_sparse_stream_and_split_copies_decode_to_one_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for f in [
        "monolithicSparse.vmdk",
        "streamOptimized.vmdk",
        "twoGbMaxExtentSparse.vmdk",
    ] {
        let out = dir.path().join(format!("{f}.raw"));
        let r = vmdk_file_to_raw(
            testdata(&format!("vmdk/vmdk-rs/{f}")),
            &out,
            &RawOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(r.capacity, 10 << 20);
        hashes.push(sha256(&r));
    }
    assert!(hashes.iter().all(|h| h == VMDK_RS_RAW), "{hashes:?}");
    // The stream decoded from memory, hashed only.
    let bytes = std::fs::read(testdata("vmdk/vmdk-rs/streamOptimized.vmdk")).unwrap();
    assert_eq!(
        sha256(&hash_raw(&bytes[..], &RawOptions::default()).await.unwrap()),
        VMDK_RS_RAW
    );
    // The split disk's descriptor and extents as a BlockSource.
    let disk = HostedDisk::open_path(testdata("vmdk/vmdk-rs/twoGbMaxExtentSparse.vmdk"))
        .await
        .unwrap();
    assert_eq!(
        disk.descriptor().unwrap().create_type(),
        Some("twoGbMaxExtentSparse")
    );
    // Missing extents are named.
    let e = HostedDisk::open_path(testdata("vmdk/securityronin-ms3-win-descriptor.vmdk"))
        .await
        .unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("disk-s001.vmdk"),
        "{e}"
    );
}

/// Generated raw images → qemu-img streamOptimized (and hosted sparse) →
/// hypersdk → the raw image's sha256, and only its data written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_made_images_decode_to_the_raw_hash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = vec![
        (
            "random",
            images::random(d.join("random.raw"), 3 << 20, 1).unwrap(),
        ),
        (
            "zeros",
            images::zeros(d.join("zeros.raw"), 8 << 20).unwrap(),
        ),
        (
            "mixed",
            images::mixed(d.join("mixed.raw"), 24 << 20, 2, 40).unwrap(),
        ),
        (
            "unaligned",
            images::unaligned(d.join("unaligned.raw"), 3).unwrap(),
        ),
    ];
    for (name, raw) in &cases {
        let expected = raw.sha256().unwrap();
        let vmdk = d.join(format!("{name}.vmdk"));
        qemu::to_stream_optimized(&raw.path, &vmdk).await.unwrap();
        let out = d.join(format!("{name}.out"));
        let r = vmdk_to_raw(
            tokio::fs::File::open(&vmdk).await.unwrap(),
            &out,
            &RawOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(r.capacity, raw.len, "{name}");
        assert_eq!(sha256(&r), expected, "{name}");
        assert_eq!(images::sha256_sparse(&out).unwrap(), expected, "{name}");
        assert!(
            r.data_bytes <= raw.data_bytes().next_multiple_of(64 << 10) * 2,
            "{name}"
        );
        if *name == "zeros" {
            assert_eq!(r.data_bytes, 0);
        }
        for sub in ["monolithicSparse", "twoGbMaxExtentSparse"] {
            let hosted = d.join(format!("{name}-{sub}.vmdk"));
            qemu::to_vmdk(&raw.path, &hosted, sub).await.unwrap();
            let out = d.join(format!("{name}-{sub}.out"));
            let r = vmdk_file_to_raw(&hosted, &out, &RawOptions::default())
                .await
                .unwrap();
            assert_eq!(sha256(&r), expected, "{name} {sub}");
        }
    }
}

/// qemu-img's streamOptimized (without `-c`) has no end-of-stream marker:
/// complete only because the grain tables in its overhead list exactly the
/// grains read. Cut at a grain boundary, it is a truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_stream_without_eos_is_checked_against_its_overhead_tables() {
    let dir = tempfile::tempdir().unwrap();
    // Data up to the last grain: no zero sector after it either.
    let raw = images::random(dir.path().join("m.raw"), 2 << 20, 4).unwrap();
    let vmdk = dir.path().join("m.vmdk");
    qemu::to_stream_optimized(&raw.path, &vmdk).await.unwrap();
    let bytes = std::fs::read(&vmdk).unwrap();
    let mut d = StreamDecoder::new(&bytes[..]).await.unwrap();
    let mut n = 0u64;
    while d.next_grain().await.unwrap().is_some() {
        n += 1;
    }
    let s = d.stats();
    assert!(s.ended_by_index && !s.end_of_stream && n > 2, "{s:?}");

    // Cut before the last grain's marker: a clean-looking end, refused.
    let h = SparseHeader::parse("m", &bytes[..512]).unwrap();
    let mut at = (h.overhead * 512) as usize;
    let mut last = at;
    while at + 12 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        assert!(size > 0, "qemu-img writes only grains");
        last = at;
        at = (at + 12 + size).next_multiple_of(512);
    }
    let e = decode_err(&bytes[..last]).await;
    let msg = e.to_string();
    assert!(
        msg.contains("truncated")
            && msg.contains(&format!("offset {last}"))
            && msg.contains(&format!("the grain tables list {n}")),
        "{msg}"
    );
}

/// A virtual size past 4 GiB with data across the 4 GiB mark: sparse in,
/// sparse out, in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_sparse_image_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let raw = images::large_sparse(dir.path().join("big.raw"), 9).unwrap();
    let vmdk = dir.path().join("big.vmdk");
    qemu::to_stream_optimized(&raw.path, &vmdk).await.unwrap();
    let out = dir.path().join("big.out");
    let r = vmdk_file_to_raw(&vmdk, &out, &RawOptions::default())
        .await
        .unwrap();
    assert_eq!(r.capacity, images::LARGE_SPARSE_LEN);
    assert_eq!(sha256(&r), raw.sha256().unwrap());
    assert!(qemu::compare(&raw.path, &out).await.unwrap());
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
    assert!(
        allocated < 16 << 20,
        "output must stay sparse: {allocated} bytes allocated"
    );
}

// ---- hostile input -------------------------------------------------------

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn header(capacity_sectors: u64) -> SparseHeader {
    let mut h = SparseHeader::stream(capacity_sectors, 128);
    h.descriptor_offset = 0;
    h.overhead = 1;
    h
}

fn push_grain(v: &mut Vec<u8>, lba: u64, compressed: &[u8], size: u32) {
    v.extend_from_slice(&Marker::grain_header(lba, size));
    v.extend_from_slice(compressed);
    v.resize(v.len().next_multiple_of(512), 0);
}

fn eos(v: &mut Vec<u8>) {
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
}

/// Decodes `v` to the end; the first error.
async fn decode_err(v: &[u8]) -> Error {
    let mut d = match StreamDecoder::new(v).await {
        Ok(d) => d,
        Err(e) => return e,
    };
    loop {
        match d.next_grain().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("hostile input decoded cleanly"),
            Err(e) => return e,
        }
    }
}

async fn assert_rejected(v: &[u8], needle: &str) {
    let e = decode_err(v).await;
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().contains(needle),
        "expected '{needle}' in: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_are_refused_without_allocating() {
    // Wrong magic.
    let mut v = header(2048).to_bytes().to_vec();
    v[0] = b'X';
    assert_rejected(&v, "magic").await;
    // Capacity of zettabytes (2^62 sectors).
    let mut h = header(2048);
    h.capacity = 1 << 62;
    assert_rejected(&h.to_bytes(), "capacity").await;
    // Grain sizes out of range: not a power of two, too large, too small.
    for g in [3u64, 1 << 20, 4] {
        let mut h = header(2048);
        h.grain_size = g;
        assert_rejected(&h.to_bytes(), "grain size").await;
    }
    // Too many entries per grain table.
    let mut h = header(2048);
    h.num_gtes_per_gt = 4096;
    assert_rejected(&h.to_bytes(), "entries per grain table").await;
    // Overhead of 2^50 sectors: refused, not skipped through.
    let mut h = header(2048);
    h.overhead = 1 << 50;
    assert_rejected(&h.to_bytes(), "overhead").await;
    // Version 4.
    let mut h = header(2048);
    h.version = 4;
    assert_rejected(&h.to_bytes(), "version").await;
    // A hosted sparse header is not a stream.
    let bytes = std::fs::read(testdata("vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk")).unwrap();
    assert_rejected(&bytes, "not a streamOptimized").await;
    // A header cut short.
    assert_rejected(&header(2048).to_bytes()[..100], "truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grains_are_refused() {
    let grain = vec![5u8; 65536];
    let z = zlib(&grain);
    let n = z.len() as u32;

    // Outside the capacity (2048 sectors = 16 grains).
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 2048, &z, n);
    eos(&mut v);
    assert_rejected(&v, "outside the capacity").await;

    // Out of order, and duplicated.
    for (a, b) in [(256u64, 128u64), (128, 128)] {
        let mut v = header(2048).to_bytes().to_vec();
        push_grain(&mut v, a, &z, n);
        push_grain(&mut v, b, &z, n);
        eos(&mut v);
        assert_rejected(&v, "out of order").await;
    }

    // Not aligned to the grain.
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 100, &z, n);
    eos(&mut v);
    assert_rejected(&v, "not aligned").await;

    // Corrupt zlib data, with the offset of the grain's marker.
    let mut bad = z.clone();
    bad[10] ^= 0x55;
    bad[11] ^= 0xaa;
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 0, &z, n);
    push_grain(&mut v, 128, &bad, n);
    eos(&mut v);
    let second = 512 + (12 + z.len()).next_multiple_of(512);
    let e = decode_err(&v).await;
    assert!(e.to_string().contains(&format!("offset {second}")), "{e}");

    // Decompresses to less than the grain.
    let short = zlib(&grain[..1000]);
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 0, &short, short.len() as u32);
    eos(&mut v);
    assert_rejected(&v, "instead of 65536").await;

    // An absurd compressed size (4 GiB): refused before reading it.
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 0, &z, u32::MAX);
    eos(&mut v);
    assert_rejected(&v, "beyond the").await;

    // A footer that disagrees with the header.
    let mut v = header(2048).to_bytes().to_vec();
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
    v.extend_from_slice(&header(4096).to_bytes());
    eos(&mut v);
    assert_rejected(&v, "footer disagrees").await;

    // An unknown marker type.
    let mut v = header(2048).to_bytes().to_vec();
    let mut m = Marker::metadata_sector(MarkerType::GrainTable, 4);
    m[12] = 9;
    v.extend_from_slice(&m);
    assert_rejected(&v, "unknown marker type 9").await;

    // Truncation inside a grain, after a complete one.
    let mut v = header(2048).to_bytes().to_vec();
    push_grain(&mut v, 0, &z, n);
    push_grain(&mut v, 128, &z, n);
    let cut = v.len() - 600;
    let e = decode_err(&v[..cut]).await;
    assert!(e.to_string().contains(&format!("offset {cut}")), "{e}");
}

// ---- OVA -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forklift_ova_monolithic_sparse_disk_to_raw() {
    let ova = testdata("ova/forklift-2nd_disk_v3.ova");
    let dir = tempfile::tempdir().unwrap();
    let opts = RawOptions::default().with_digests(&[]);
    let disks = ova_file_to_raw(&ova, dir.path(), &opts).await.unwrap();
    assert_eq!(disks.len(), 1);
    let raw = disks[0].report.path.clone().unwrap();
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 30);
    assert_eq!(disks[0].report.data_bytes, 0);
    assert_eq!(
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&raw).unwrap()),
        0
    );
    // As a pure stream, a hosted sparse disk cannot be decoded: said so.
    let out2 = tempfile::tempdir().unwrap();
    let file = tokio::fs::File::open(&ova).await.unwrap();
    let e = ova_to_raw(file, out2.path(), &opts).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("ova_file_to_raw"), "{e}");
    assert_eq!(std::fs::read_dir(out2.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ova_with_a_qemu_made_stream_decodes_straight_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let raw = images::mixed(dir.path().join("src.raw"), 12 << 20, 11, 50).unwrap();
    let vmdk = dir.path().join("web01-disk1.vmdk");
    qemu::to_stream_optimized(&raw.path, &vmdk).await.unwrap();
    let mut vm = VmInfo::new("vm-1", "web01");
    vm.disks.push(DiskInfo::new("disk0", raw.len));
    let files = [OvfDisk::new("web01-disk1.vmdk").with_format(DiskFormat::VmdkStreamOptimized)];
    let ovf = write_descriptor(&vm, &files).unwrap();
    let mut w = OvaWriter::new(Vec::new(), WriteOptions::default());
    w.write_descriptor("web01.ovf", ovf.as_bytes())
        .await
        .unwrap();
    w.append_bytes("web01-disk1.vmdk", std::fs::read(&vmdk).unwrap().into())
        .await
        .unwrap();
    let ova_bytes = w.finish().await.unwrap();
    let expected = raw.sha256().unwrap();

    // Streaming: from memory, no seeking.
    let out = dir.path().join("stream");
    std::fs::create_dir(&out).unwrap();
    let disks = ova_to_raw(&ova_bytes[..], &out, &RawOptions::default())
        .await
        .unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].entry, "web01-disk1.vmdk");
    assert_eq!(sha256(&disks[0].report), expected);
    let path = disks[0].report.path.clone().unwrap();
    assert_eq!(path, out.join("web01-disk1.raw"));
    assert_eq!(images::sha256_sparse(&path).unwrap(), expected);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "no temp files");

    // Through the index of the OVA file.
    let ova_path = dir.path().join("web01.ova");
    std::fs::write(&ova_path, &ova_bytes).unwrap();
    let out = dir.path().join("index");
    std::fs::create_dir(&out).unwrap();
    let disks = ova_file_to_raw(&ova_path, &out, &RawOptions::default())
        .await
        .unwrap();
    assert_eq!(sha256(&disks[0].report), expected);

    // A disk whose manifest digest does not match: refused, nothing left.
    let mut tampered = ova_bytes.clone();
    // A byte of the overhead's padding (sector 100 of the disk): the decoder
    // skips it, only the manifest digest can tell.
    let pos = find(&tampered, b"KDMV").unwrap() + 100 * 512;
    tampered[pos] ^= 1;
    let out = dir.path().join("tampered");
    std::fs::create_dir(&out).unwrap();
    let e = ova_to_raw(&tampered[..], &out, &RawOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttylinux_ova_stops_with_a_truncation_error_and_leaves_nothing() {
    let ova = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let dir = tempfile::tempdir().unwrap();
    let file = tokio::fs::File::open(&ova).await.unwrap();
    let e = ova_to_raw(file, dir.path(), &RawOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
