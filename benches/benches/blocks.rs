//! Speed of the copy path's CPU core: zero detection on every block the
//! sparse sink writes, and the in-order chunk plan of the copy engine.
//!
//! `cargo bench -p hypersdk-benches --bench blocks` (about 20 s).
//! `is_all_zero` runs on an 8 MiB sub-range (the engine's default) that is
//! all zeros (the worst case: every byte is looked at) and on one whose
//! first byte is set (the best case); the naive `iter().all` is the
//! reference.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hypersdk_core::blocks::is_all_zero;
use hypersdk_core::model::{Extent, ExtentList};

const SUB_RANGE: usize = 8 << 20;

fn zero_detection(c: &mut Criterion) {
    let zeros = vec![0u8; SUB_RANGE];
    let mut data = vec![0u8; SUB_RANGE];
    data[0] = 1;
    let mut g = c.benchmark_group("is_all_zero_8MiB");
    g.throughput(Throughput::Bytes(SUB_RANGE as u64));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("zeros", |b| b.iter(|| is_all_zero(black_box(&zeros))));
    g.bench_function("data", |b| b.iter(|| is_all_zero(black_box(&data))));
    g.bench_function("naive iter().all, zeros", |b| {
        b.iter(|| black_box(&zeros).iter().all(|x| *x == 0))
    });
    g.finish();
}

fn chunk_plan(c: &mut Criterion) {
    // A 2 TiB disk with 100,000 changed extents of 64 KiB to 4 MiB, the
    // plan of an incremental backup: squash small gaps, then split into
    // 8 MiB sub-ranges.
    let mut state = 1u64;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let extents = ExtentList::from_unsorted((0..100_000).map(|_| {
        let offset = (next() % (2u64 << 40 >> 16)) << 16;
        Extent::new(offset, (1 + next() % 64) << 16)
    }));
    let mut g = c.benchmark_group("copy_plan_100k_extents");
    g.throughput(Throughput::Elements(extents.len() as u64));
    g.bench_function("squash_with(1 MiB gap) + split_to_max(8 MiB)", |b| {
        b.iter(|| {
            black_box(&extents)
                .squash_with(1 << 20, Some(8 << 20))
                .and_then(|l| l.split_to_max(8 << 20))
                .map(|l| l.len())
        })
    });
    g.finish();
}

criterion_group!(benches, zero_detection, chunk_plan);
criterion_main!(benches);
