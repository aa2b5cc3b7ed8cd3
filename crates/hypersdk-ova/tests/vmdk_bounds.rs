//! Resource bounds of the decode side, in a test binary of their own (they
//! measure the process): memory with huge grains, a dropped conversion that
//! stops hashing, and a sink that does not start zeroed.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hypersdk_core::Result;
use hypersdk_core::blocks::BlockSink;
use hypersdk_core::model::Extent;
use hypersdk_ova::vmdk::convert::{RawOptions, hash_raw, write_grains};
use hypersdk_ova::vmdk::decode::StreamDecoder;
use hypersdk_ova::vmdk::format::{Marker, MarkerType, SparseHeader};

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// A stream header without a grain directory (no footer due).
fn header(capacity_sectors: u64, grain: u64) -> SparseHeader {
    let mut h = SparseHeader::stream(capacity_sectors, grain);
    h.descriptor_offset = 0;
    h.overhead = 1;
    h.gd_offset = 0;
    h
}

fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Findings 7 and 8, run one after the other so they do not disturb each
/// other's measurements.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decoding_is_bounded_in_memory_and_stops_when_dropped() {
    // 8: 24 grains of 32 MiB (a tiny input): the queues are bounded by
    // bytes, not grains — before, all 24 (768 MiB) could be in memory.
    let gs: u64 = 1 << 16;
    let n = 24u64;
    let h = header(gs * n, gs);
    let mut v = h.to_bytes().to_vec();
    let mut g = vec![0u8; (gs * 512) as usize];
    for i in 0..n {
        g[0] = (i as u8) | 1;
        let z = zlib(&g);
        v.extend_from_slice(&Marker::grain_header(i * gs, z.len() as u32));
        v.extend_from_slice(&z);
        v.resize(v.len().next_multiple_of(512), 0);
    }
    drop(g);
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
    let before = status("VmHWM:");
    let r = hash_raw(&v[..], &RawOptions::default().with_digests(&[]))
        .await
        .unwrap();
    assert_eq!(r.grains, n);
    let grown_mib = status("VmHWM:").saturating_sub(before) / 1024;
    assert!(grown_mib < 400, "peak memory grew by {grown_mib} MiB");

    // 7: hashing a 1 TiB hole is abandoned when the call is dropped.
    let h = header(1 << 31, 128);
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        hash_raw(&v[..], &RawOptions::default()),
    )
    .await;
    assert!(r.is_err(), "1 TiB hashed in 200 ms?");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c0 = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_seconds() - c0;
    assert!(spent < 0.5, "{spent} s of CPU after the call was dropped");
}

/// A sink that remembers its writes and punched holes, and does not start
/// zeroed.
#[derive(Debug, Default)]
struct DirtySink {
    writes: Mutex<Vec<Extent>>,
    holes: Mutex<Vec<Extent>>,
}

#[async_trait::async_trait]
impl BlockSink for DirtySink {
    fn describe(&self) -> String {
        "dirty".into()
    }
    fn len(&self) -> u64 {
        4 << 20
    }
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<()> {
        self.writes
            .lock()
            .unwrap()
            .push(Extent::new(offset, data.len() as u64));
        Ok(())
    }
    async fn punch_hole(&self, range: Extent) -> Result<()> {
        self.holes.lock().unwrap().push(range);
        Ok(())
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    async fn read_back(&self, range: Extent) -> Result<Bytes> {
        Ok(Bytes::from(vec![0u8; range.length as usize]))
    }
    fn starts_zeroed(&self) -> bool {
        false
    }
}

/// Finding 10: every byte of a sink that does not start zeroed is either
/// written or punched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_sink_gets_its_holes_punched() {
    let h = header(4 << 11, 128); // 4 MiB
    let mut v = h.to_bytes().to_vec();
    for (lba, fill) in [(128u64, 1u8), (256, 0), (1024, 2)] {
        let z = zlib(&[fill; 65536]);
        v.extend_from_slice(&Marker::grain_header(lba, z.len() as u32));
        v.extend_from_slice(&z);
        v.resize(v.len().next_multiple_of(512), 0);
    }
    v.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
    let sink = DirtySink::default();
    let d = StreamDecoder::new(&v[..]).await.unwrap();
    write_grains(d, &sink, &[]).await.unwrap();
    let mut all: Vec<Extent> = sink.writes.lock().unwrap().clone();
    all.extend(sink.holes.lock().unwrap().iter().copied());
    all.sort_by_key(|e| e.offset);
    let mut at = 0;
    for e in all {
        assert_eq!(e.offset, at, "a byte neither written nor punched");
        at = e.end();
    }
    assert_eq!(at, 4 << 20);
}
