//! Regression tests for the VMDK review findings: zeroed tails taken for
//! an end of stream, cancelled decoder calls, colliding output paths,
//! overflowing header arithmetic, grain-table amplification, extent paths
//! and descriptor limits.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::BytesSource;
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_ova::archive::{OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_ova::vmdk::convert::{RawOptions, hash_raw, ova_file_to_raw, ova_to_raw};
use hypersdk_ova::vmdk::decode::{DecodeOptions, StreamDecoder};
use hypersdk_ova::vmdk::encode::encode_stream;
use hypersdk_ova::vmdk::format::{Descriptor, Marker, MarkerType, SparseHeader};
use hypersdk_ova::vmdk::sparse::HostedDisk;
use tokio::io::AsyncWriteExt;

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// A stream header; `gd_at_end` keeps the technote's GD_AT_END (a footer
/// is then due), otherwise the header has no grain directory at all.
fn header(capacity_sectors: u64, gd_at_end: bool) -> SparseHeader {
    let mut h = SparseHeader::stream(capacity_sectors, 128);
    h.descriptor_offset = 0;
    h.overhead = 1;
    if !gd_at_end {
        h.gd_offset = 0;
    }
    h
}

/// `n` distinct 64 KiB grains at 0, 128, 256, … sectors.
fn grains(v: &mut Vec<u8>, n: u64) {
    for i in 0..n {
        let g: Vec<u8> = (0..65536u64)
            .map(|j| ((j * 31 + i * 7) % 251) as u8)
            .collect();
        let z = zlib(&g);
        v.extend_from_slice(&Marker::grain_header(i * 128, z.len() as u32));
        v.extend_from_slice(&z);
        v.resize(v.len().next_multiple_of(512), 0);
    }
}

fn footer_and_eos(v: &mut Vec<u8>, h: &SparseHeader) {
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
    v.extend_from_slice(&h.to_bytes());
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
}

async fn decode_all(v: &[u8]) -> hypersdk_core::Result<u64> {
    let mut d = StreamDecoder::new(v).await?;
    let mut n = 0;
    while d.next_grain().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Finding 1: a zeroed tail (preallocated file, partial download) is not
/// an end-of-stream marker when the header promised a footer; nothing but
/// zeros may follow the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_tail_is_truncation_not_end_of_stream() {
    let h = header(64 * 128, true);
    let mut v = h.to_bytes().to_vec();
    grains(&mut v, 8);
    let mut full = v.clone();
    footer_and_eos(&mut full, &h);
    assert_eq!(decode_all(&full).await.unwrap(), 8);
    // Zero padding after the marker (a preallocated file) is fine.
    let mut padded = full.clone();
    padded.resize(padded.len() + 4096, 0);
    assert_eq!(decode_all(&padded).await.unwrap(), 8);

    // Everything from the 5th grain on zeroed.
    let mut at = 512;
    for _ in 0..4 {
        let size = u32::from_le_bytes(full[at + 8..at + 12].try_into().unwrap()) as usize;
        at = (at + 12 + size).next_multiple_of(512);
    }
    let mut zeroed = full.clone();
    zeroed[at..].fill(0);
    let e = decode_all(&zeroed).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("footer"), "{e}");
    let e = hash_raw(&zeroed[..], &RawOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    // Data after the end-of-stream marker.
    let mut trailing = full.clone();
    trailing.extend_from_slice(&[0u8; 100]);
    trailing.push(1);
    let e = decode_all(&trailing).await.unwrap_err();
    assert!(e.to_string().contains("after the end-of-stream"), "{e}");

    // A header with a real (or no) directory and no footer still ends at
    // its marker (vmdk-rs, old VirtualBox).
    let h = header(64 * 128, false);
    let mut v = h.to_bytes().to_vec();
    grains(&mut v, 3);
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
    assert_eq!(decode_all(&v).await.unwrap(), 3);
}

/// Finding 2: a `next_grain` call dropped half-way must not let a later
/// call skip grains silently; the stream form survives dropped `next()`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_next_grain_poisons_instead_of_losing_grains() {
    let h = header(64 * 128, true);
    let mut v = h.to_bytes().to_vec();
    grains(&mut v, 40);
    footer_and_eos(&mut v, &h);
    let split = v.len() / 2;

    let slow = |v: Vec<u8>| {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = server.write_all(&v[..split]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = server.write_all(&v[split..]).await;
        });
        client
    };

    // Direct calls: the call that times out poisons the decoder.
    let opts = DecodeOptions::default().with_lookahead(1);
    let mut d = StreamDecoder::with_options(slow(v.clone()), opts.clone())
        .await
        .unwrap();
    let mut last_end = 0;
    let mut timed_out = false;
    loop {
        match tokio::time::timeout(Duration::from_millis(20), d.next_grain()).await {
            Err(_) => timed_out = true,
            Ok(Ok(Some(g))) => {
                assert!(!timed_out, "a grain after a cancelled call");
                assert_eq!(g.offset, last_end, "gap");
                last_end = g.end();
            }
            Ok(Ok(None)) => panic!("ended after a cancelled call"),
            Ok(Err(e)) => {
                assert!(timed_out, "{e}");
                assert!(e.to_string().contains("cancelled"), "{e}");
                break;
            }
        }
    }
    assert!(d.next_grain().await.is_err(), "stays poisoned");

    // The stream: every grain, in order, despite timeouts.
    let d = StreamDecoder::with_options(slow(v), opts).await.unwrap();
    let mut s = Box::pin(d.into_stream());
    let (mut n, mut last_end, mut timeouts) = (0, 0, 0);
    loop {
        match tokio::time::timeout(Duration::from_millis(20), s.next()).await {
            Err(_) => timeouts += 1,
            Ok(Some(g)) => {
                let g = g.unwrap();
                assert_eq!(g.offset, last_end, "gap");
                last_end = g.end();
                n += 1;
            }
            Ok(None) => break,
        }
    }
    assert!(timeouts > 0);
    assert_eq!(n, 40);
}

/// Findings 4 and 5: offsets that overflow are errors, not panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_descriptor_offsets_are_refused() {
    let mut h = SparseHeader::stream(2048, 128);
    h.descriptor_offset = u64::MAX - 1;
    h.descriptor_size = 4;
    h.overhead = 128;
    let e = StreamDecoder::new(&h.to_bytes()[..]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");

    let mut h = SparseHeader::stream(2048, 128);
    h.flags = 3;
    h.version = 1;
    h.compress_algorithm = 0;
    h.descriptor_offset = 1 << 56;
    h.descriptor_size = 1;
    h.gd_offset = 1;
    h.overhead = 128;
    let mut f = vec![0u8; 256 * 512];
    f[..512].copy_from_slice(&h.to_bytes());
    let src = Arc::new(BytesSource::new("x.vmdk", Bytes::from(f.clone())));
    let e = HostedDisk::open_extent(src).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    // With no overhead given, the bound is the largest disk: still no
    // overflow.
    h.overhead = 0;
    f[..512].copy_from_slice(&h.to_bytes());
    let src = Arc::new(BytesSource::new("x.vmdk", Bytes::from(f)));
    let e = HostedDisk::open_extent(src).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
}

/// Finding 6: a grain directory whose entries all point at one table is
/// refused at once instead of loading a table per entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_grain_tables_are_refused_quickly() {
    let mut h = SparseHeader::stream(1 << 36, 128);
    h.flags = 3;
    h.version = 1;
    h.compress_algorithm = 0;
    h.descriptor_offset = 0;
    h.gd_offset = 8;
    h.overhead = 128;
    let entries = h.gd_entries() as usize;
    let mut f = vec![0u8; 8 * 512 + entries * 4];
    f[..512].copy_from_slice(&h.to_bytes());
    for i in 0..entries {
        f[8 * 512 + i * 4..8 * 512 + i * 4 + 4].copy_from_slice(&1u32.to_le_bytes());
    }
    let src = Arc::new(BytesSource::new("x.vmdk", Bytes::from(f)));
    let t = Instant::now();
    let e = HostedDisk::open_extent(src).await.unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// An OVA (bytes) with the given `.vmdk` entries.
async fn ova(disks: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut vm = VmInfo::new("vm-1", "vm");
    let mut files = Vec::new();
    for (i, (name, _)) in disks.iter().enumerate() {
        vm.disks.push(DiskInfo::new(format!("disk{i}"), 1 << 20));
        files.push(OvfDisk::new(*name).with_format(DiskFormat::VmdkStreamOptimized));
    }
    let ovf = write_descriptor(&vm, &files).unwrap();
    let mut w = OvaWriter::new(Vec::new(), WriteOptions::default());
    w.write_descriptor("vm.ovf", ovf.as_bytes()).await.unwrap();
    for (name, data) in disks {
        w.append_bytes(name, Bytes::from(data.clone()))
            .await
            .unwrap();
    }
    w.finish().await.unwrap()
}

async fn stream_vmdk(fill: u8) -> Vec<u8> {
    let src = Arc::new(BytesSource::new("d", Bytes::from(vec![fill; 1 << 20])));
    let mut out = Vec::new();
    encode_stream(src, &mut out, &Default::default())
        .await
        .unwrap();
    out
}

/// Findings 3 and 11: two entries that map to one raw file are refused
/// before anything is written; a failing disk leaves no image at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ova_conversions_refuse_colliding_outputs_and_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream_vmdk(1).await;
    let b = stream_vmdk(2).await;
    let bytes = ova(&[("a/disk.vmdk", a.clone()), ("b/DISK.vmdk", b)]).await;
    let path = dir.path().join("vm.ova");
    std::fs::write(&path, &bytes).unwrap();
    for streamed in [true, false] {
        let out = dir.path().join(format!("out-{streamed}"));
        std::fs::create_dir(&out).unwrap();
        let e = if streamed {
            ova_to_raw(&bytes[..], &out, &RawOptions::default()).await
        } else {
            ova_file_to_raw(&path, &out, &RawOptions::default()).await
        }
        .unwrap_err();
        assert!(e.to_string().contains("same file"), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    // A good disk, then a truncated one: neither image is left.
    let mut cut = stream_vmdk(3).await;
    cut.truncate(cut.len() - 1024);
    let bytes = ova(&[("good.vmdk", a), ("bad.vmdk", cut)]).await;
    let path = dir.path().join("vm2.ova");
    std::fs::write(&path, &bytes).unwrap();
    let out = dir.path().join("out-all");
    std::fs::create_dir(&out).unwrap();
    let e = ova_file_to_raw(&path, &out, &RawOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

/// Findings 9 and 12: extent names that leave the directory on any
/// platform, too many extents, and too large a disk are refused; a file
/// name with '=' parses as an extent line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_extents_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("disk.vmdk");
    for name in [
        "..\\x.vmdk",
        "C:\\x.vmdk",
        "\\\\server\\x",
        "../x",
        "/x",
        "C:x",
    ] {
        let text = format!("version=1\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"{name}\" 0\n");
        std::fs::write(&desc, text).unwrap();
        let e = HostedDisk::open_path(&desc).await.unwrap_err();
        assert!(e.to_string().contains("outside"), "{name}: {e}");
    }
    let mut text = String::from("version=1\ncreateType=\"custom\"\n");
    for _ in 0..5000 {
        text.push_str("RW 8 ZERO\n");
    }
    std::fs::write(&desc, &text).unwrap();
    let e = HostedDisk::open_path(&desc).await.unwrap_err();
    assert!(e.to_string().contains("extents"), "{e}");
    let text = format!(
        "version=1\ncreateType=\"custom\"\nRW {} ZERO\nRW {} ZERO\n",
        1u64 << 39,
        1u64 << 39
    );
    std::fs::write(&desc, &text).unwrap();
    assert!(HostedDisk::open_path(&desc).await.is_ok());
    let text = format!("{text}RW 8 ZERO\n");
    std::fs::write(&desc, &text).unwrap();
    let e = HostedDisk::open_path(&desc).await.unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");

    let d = Descriptor::parse("t", b"RW 100 FLAT \"a=b.vmdk\" 0\n").unwrap();
    assert_eq!(d.extents.len(), 1);
    assert_eq!(d.extents[0].file.as_deref(), Some("a=b.vmdk"));

    // Flat extents may share one file; a sparse file is used once.
    std::fs::write(dir.path().join("f.bin"), vec![5u8; 8192]).unwrap();
    let text =
        "version=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"f.bin\" 0\nRW 8 FLAT \"f.bin\" 8\n";
    std::fs::write(&desc, text).unwrap();
    assert_eq!(HostedDisk::open_path(&desc).await.unwrap().capacity(), 8192);
}
