//! Speed of the streamOptimized VMDK decoder: one 64 KiB grain through
//! zlib inflate (text-like and incompressible data, written at levels 1
//! and 6), and a whole 64 MiB stream with about 40 % mixed data decoded
//! from memory with one grain in flight and with the default lookahead.
//!
//! `cargo bench -p hypersdk-benches --bench vmdk_decode` (under a minute).
//! Grain throughput is per core and counts decompressed bytes; the
//! whole-stream figures count the virtual disk's bytes and include marker
//! parsing, the order and size checks and the ordered hand-out.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hypersdk_benches::Rng;
use hypersdk_ova::vmdk::decode::{DecodeOptions, StreamDecoder, inflate_grain};
use hypersdk_ova::vmdk::format::{Marker, MarkerType, SparseHeader};

const GRAIN: usize = 64 << 10;
const IMAGE: usize = 64 << 20;

fn zlib(data: &[u8], level: u32) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
    z.write_all(data).expect("in memory");
    z.finish().expect("in memory")
}

fn grain_inflate(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = vec![0u8; GRAIN];
    rng.fill_text(&mut text);
    let mut random = vec![0u8; GRAIN];
    rng.fill_random(&mut random);
    let mut g = c.benchmark_group("vmdk_decode/grain_inflate");
    g.throughput(Throughput::Bytes(GRAIN as u64));
    for (name, data) in [("text", &text), ("random", &random)] {
        for level in [1u32, 6] {
            let packed = zlib(data, level);
            g.bench_with_input(
                BenchmarkId::new(name, format!("level{level}")),
                &packed,
                |b, packed| {
                    b.iter(|| inflate_grain("bench", black_box(packed), GRAIN, 0).expect("valid"))
                },
            );
        }
    }
    g.finish();
}

/// A streamOptimized VMDK of `IMAGE` bytes: runs of text, random data and
/// holes (about 40 % data), grains at level 1 as VMware's writers do.
fn build_stream() -> Vec<u8> {
    let mut rng = Rng(42);
    let sectors = (IMAGE / 512) as u64;
    let mut header = SparseHeader::stream(sectors, 128);
    header.descriptor_offset = 0;
    header.overhead = 1;
    let mut out = header.to_bytes().to_vec();
    let mut grain = vec![0u8; GRAIN];
    for index in 0..(IMAGE / GRAIN) as u64 {
        match rng.next() % 10 {
            0..=3 => rng.fill_text(&mut grain),
            4 | 5 => {
                rng.fill_text(&mut grain);
                rng.fill_random(&mut grain[..GRAIN / 2]);
            }
            _ => continue,
        }
        let packed = zlib(&grain, 1);
        out.extend_from_slice(&Marker::grain_header(index * 128, packed.len() as u32));
        out.extend_from_slice(&packed);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    // A GD_AT_END header promises a footer before the end of stream: a
    // copy of the header, here without a grain directory (the decoder
    // streams by the grain markers and does not need one).
    let mut footer = header;
    footer.gd_offset = 0;
    out.extend_from_slice(&Marker::metadata_sector(MarkerType::Footer, 1));
    out.extend_from_slice(&footer.to_bytes());
    out.extend_from_slice(&Marker::metadata_sector(MarkerType::EndOfStream, 0));
    out
}

fn whole_stream(c: &mut Criterion) {
    let stream = build_stream();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("vmdk_decode/stream_64MiB_40pct");
    g.throughput(Throughput::Bytes(IMAGE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, lookahead) in [("lookahead1", 1usize), ("default", 0)] {
        let options = if lookahead == 0 {
            DecodeOptions::default()
        } else {
            DecodeOptions::default().with_lookahead(lookahead)
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut d = StreamDecoder::with_options(&stream[..], options.clone())
                        .await
                        .expect("valid stream");
                    let mut bytes = 0usize;
                    while let Some(grain) = d.next_grain().await.expect("valid grain") {
                        bytes += grain.data.len();
                    }
                    black_box(bytes)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, grain_inflate, whole_stream);
criterion_main!(benches);
