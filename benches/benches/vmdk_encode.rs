//! Speed of the streamOptimized VMDK encoder: one 64 KiB grain through
//! zlib (text-like and incompressible data, levels 1 and 6; random data
//! also with the incompressible-grain detection off, to show what deflate
//! costs on it), and a whole
//! 64 MiB image with about 40 % mixed data encoded from memory, on one core
//! and on all of them.
//!
//! `cargo bench -p hypersdk-benches --bench vmdk_encode` (about a minute).
//! Grain throughput is per core; the whole-image figures include zero
//! detection, marker framing, grain tables and the in-order writer (to
//! `tokio::io::sink`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hypersdk_benches::Rng;
use hypersdk_core::blocks::{BlockSource, BytesSource};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_ova::vmdk::encode::{EncodeOptions, GrainCompressor, encode_stream};

const GRAIN: usize = 64 << 10;
const IMAGE: usize = 64 << 20;

fn grain_compress(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = vec![0u8; GRAIN];
    rng.fill_text(&mut text);
    let mut random = vec![0u8; GRAIN];
    rng.fill_random(&mut random);
    let mut g = c.benchmark_group("vmdk_grain_compress_64KiB");
    g.throughput(Throughput::Bytes(GRAIN as u64));
    g.measurement_time(Duration::from_secs(3));
    for level in [1u32, 6] {
        for (name, data, store) in [
            ("text", &text, true),
            ("random", &random, true),
            ("random, deflate tried", &random, false),
        ] {
            let mut comp = GrainCompressor::new(level).with_store_incompressible(store);
            let mut out = Vec::with_capacity(2 * GRAIN);
            g.bench_with_input(
                BenchmarkId::new(format!("level {level}"), name),
                data,
                |b, data| {
                    b.iter(|| {
                        out.clear();
                        comp.compress_grain(0, black_box(data), &mut out)
                            .map(black_box)
                    })
                },
            );
        }
    }
    g.finish();
}

/// A 64 MiB image: runs of 64 KiB to 1 MiB, about 40 % data (random and
/// text in equal parts, on 4 KiB boundaries), the rest zeros, with its
/// allocated extents declared as a sparse file's would be.
fn mixed_image() -> (Bytes, ExtentList) {
    let mut rng = Rng(42);
    let mut data = vec![0u8; IMAGE];
    let mut extents = Vec::new();
    let mut at = 0;
    while at < IMAGE {
        let run = ((16 + rng.next() % 241) as usize * 4096).min(IMAGE - at);
        match rng.next() % 10 {
            0 | 1 => rng.fill_random(&mut data[at..at + run]),
            2 | 3 => rng.fill_text(&mut data[at..at + run]),
            _ => {
                at += run;
                continue;
            }
        }
        extents.push(Extent::new(at as u64, run as u64));
        at += run;
    }
    (Bytes::from(data), ExtentList::from_unsorted(extents))
}

fn whole_image(c: &mut Criterion) {
    let (data, extents) = mixed_image();
    let source: Arc<dyn BlockSource> =
        Arc::new(BytesSource::new("mixed", data).with_allocated(extents.clone()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .expect("a Tokio runtime");
    let mut g = c.benchmark_group("vmdk_encode_64MiB_40pct_mixed");
    // Throughput in bytes of data (the holes cost nothing).
    g.throughput(Throughput::Bytes(extents.total_bytes()));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for level in [1u32, 6] {
        let mut threads = vec![1];
        if cores > 1 {
            threads.push(cores);
        }
        for p in threads {
            let options = EncodeOptions::default()
                .with_compression_level(level)
                .with_parallelism(p);
            g.bench_function(
                BenchmarkId::new(format!("level {level}"), format!("{p} threads")),
                |b| {
                    b.iter(|| {
                        rt.block_on(encode_stream(
                            Arc::clone(&source),
                            tokio::io::sink(),
                            &options,
                        ))
                        .map(|r| black_box(r.bytes_written))
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, grain_compress, whole_image);
criterion_main!(benches);
