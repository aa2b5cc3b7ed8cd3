//! Speed of `hypersdk_core::model::extent` on lists of 1,000,000 extents.
//!
//! `cargo bench -p hypersdk-benches --bench extents` (under a minute). Two
//! lists, `a` and `b`, are built from a fixed LCG: gaps of 0 to 8 KiB (one in
//! eight is 0, so neighbours touch) and lengths of 512 B to 256 KiB in 512 B
//! steps. Both span about the same 130 GB, so they overlap partly all along.
//! Throughput counts input extents (both lists for the binary operations).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use hypersdk_core::model::extent::{Extent, ExtentList};

const N: usize = 1_000_000;

/// A 64-bit LCG (Knuth's MMIX constants); the high bits are the output.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 32
    }
}

/// `N` sorted extents with touching neighbours and holes.
fn build(seed: u64) -> ExtentList {
    let mut rng = Lcg(seed);
    let mut list = ExtentList::new();
    let mut at = 0u64;
    for _ in 0..N {
        let r = rng.next();
        at += if r.is_multiple_of(8) {
            0
        } else {
            (r >> 3) % 8192
        };
        let len = 512 * (1 + rng.next() % 512);
        if let Err(e) = list.push(Extent::new(at, len)) {
            panic!("building the bench list: {e}");
        }
        at += len;
    }
    list
}

/// The extents of `list` in a deterministic random order.
fn shuffled(list: &ExtentList, seed: u64) -> Vec<Extent> {
    let mut v = list.as_slice().to_vec();
    let mut rng = Lcg(seed);
    for i in (1..v.len()).rev() {
        // Two 32-bit draws make one 64-bit index source.
        let j = ((rng.next() << 32 | rng.next()) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn bench_extents(c: &mut Criterion) {
    let a = build(1);
    let b = build(2);
    let shuffled_a = shuffled(&a, 3);
    let within = a.merge(&b).bounds().unwrap_or_default();
    let one = Throughput::Elements(N as u64);
    let two = Throughput::Elements(2 * N as u64);

    let mut g = c.benchmark_group("extents_1M");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));

    g.throughput(one.clone());
    g.bench_function("from_unsorted (shuffled)", |bn| {
        bn.iter_batched(
            || shuffled_a.clone(),
            ExtentList::from_unsorted,
            BatchSize::LargeInput,
        );
    });
    g.bench_function("squash", |bn| bn.iter(|| black_box(&a).squash()));
    g.bench_function("squash_with (4 KiB gap, 1 MiB max)", |bn| {
        bn.iter(|| black_box(&a).squash_with(4096, Some(1 << 20)))
    });
    g.bench_function("split_to_max (64 KiB)", |bn| {
        bn.iter(|| black_box(&a).split_to_max(64 << 10))
    });
    g.bench_function("align_out (64 KiB)", |bn| {
        bn.iter(|| black_box(&a).align_out(64 << 10))
    });
    g.bench_function("complement", |bn| {
        bn.iter(|| black_box(&a).complement(within))
    });
    g.bench_function("total_bytes", |bn| bn.iter(|| black_box(&a).total_bytes()));

    g.throughput(two);
    g.bench_function("merge", |bn| bn.iter(|| black_box(&a).merge(&b)));
    g.bench_function("intersect", |bn| bn.iter(|| black_box(&a).intersect(&b)));
    g.bench_function("subtract", |bn| bn.iter(|| black_box(&a).subtract(&b)));
    g.finish();
}

criterion_group!(benches, bench_extents);
criterion_main!(benches);
