//! Throughput of `hypersdk_core::digest`: 64 MiB fed as 1 MiB `Bytes`.
//!
//! `cargo bench -p hypersdk-benches --bench digest` (about 40 s). The
//! `one-shot` entries hash the whole buffer with the plain RustCrypto hasher
//! on the caller's thread: the reference the streaming hasher should match.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use hypersdk_core::digest::{Algorithm, Checksum, MultiHasher};

const TOTAL: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

/// 64 MiB of xorshift output.
fn data() -> Bytes {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = Vec::with_capacity(TOTAL);
    while buf.len() < TOTAL {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        buf.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(buf)
}

fn stream(hasher: MultiHasher, chunks: &[Bytes]) -> u64 {
    let mut hasher = hasher;
    for c in chunks {
        hasher.update(c.clone());
    }
    match hasher.finish() {
        Ok(d) => d.bytes_hashed(),
        Err(e) => panic!("hashing failed: {e}"),
    }
}

fn bench_digest(c: &mut Criterion) {
    let data = data();
    let chunks: Vec<Bytes> = (0..TOTAL)
        .step_by(CHUNK)
        .map(|at| data.slice(at..at + CHUNK))
        .collect();

    let mut g = c.benchmark_group("digest_64MiB_1MiB_updates");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));

    let sets: [(&str, &[Algorithm]); 5] = [
        ("sha1", &[Algorithm::Sha1]),
        ("sha256", &[Algorithm::Sha256]),
        ("sha1+sha256", &[Algorithm::Sha1, Algorithm::Sha256]),
        ("sha512", &[Algorithm::Sha512]),
        ("sha1+sha256+sha512", Algorithm::ALL),
    ];
    for (name, algorithms) in sets {
        g.bench_function(name, |b| {
            b.iter(|| stream(MultiHasher::new(algorithms), &chunks));
        });
    }
    g.bench_function("sha256 offloaded", |b| {
        b.iter(|| stream(MultiHasher::offloaded(&[Algorithm::Sha256]), &chunks));
    });
    g.bench_function("sha1+sha256 4KiB update_slice", |b| {
        b.iter(|| {
            let mut h = MultiHasher::new(&[Algorithm::Sha1, Algorithm::Sha256]);
            for piece in data.chunks(4096) {
                h.update_slice(piece);
            }
            h.finish().map(|d| d.bytes_hashed())
        });
    });
    for (name, algorithm) in [
        ("sha1 one-shot", Algorithm::Sha1),
        ("sha256 one-shot", Algorithm::Sha256),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| Checksum::compute(algorithm, &data));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_digest);
criterion_main!(benches);
