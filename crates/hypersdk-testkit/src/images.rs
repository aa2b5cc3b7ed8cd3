//! Generated raw disk images for converter and codec tests, written as
//! sparse files: only the data ranges are written, everything else stays a
//! hole that reads as zeros.
//!
//! Every generator is deterministic for a given seed and returns a
//! [`RawImage`]: the path, the length and the allocated (data) extents, so
//! a test can compare an output against the extents it expects and hash the
//! image without reading its holes ([`RawImage::sha256`]).
//!
//! | generator | content |
//! | --- | --- |
//! | [`random`] | incompressible bytes over the whole length |
//! | [`zeros`] | one hole: no data at all |
//! | [`mixed`] | runs of random bytes, compressible text-like bytes and holes, with a chosen share of data, boundaries on 512-byte sectors but not on 64 KiB grains |
//! | [`unaligned`] | a mixed image whose length is a multiple of 512 but not of the 64 KiB grain |
//! | [`large_sparse`] | a little over 4 GiB of virtual size with a few data runs, one of them straddling the 4 GiB mark (seconds to write and hash) |
//!
//! The functions block (they write with `std::fs`); call them from async
//! tests directly or through `spawn_blocking` for large images.
//!
//! ```
//! use hypersdk_testkit::images;
//!
//! let dir = tempfile::tempdir()?;
//! let img = images::mixed(dir.path().join("m.raw"), 4 << 20, 7, 40)?;
//! assert_eq!(img.len, 4 << 20);
//! assert!(img.data_bytes() > 0 && img.data_bytes() < img.len);
//! // Same seed, same image.
//! let again = images::mixed(dir.path().join("m2.raw"), 4 << 20, 7, 40)?;
//! assert_eq!(img.sha256()?, again.sha256()?);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hypersdk_core::model::{Extent, ExtentList};
use sha2::{Digest, Sha256};

/// The 64 KiB grain of VMDK images, the alignment [`mixed`] avoids.
pub const GRAIN: u64 = 64 << 10;

/// A generated raw image on disk.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawImage {
    /// Where the image is.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// The ranges holding data, sorted and merged; everything else is a
    /// hole (zeros).
    pub allocated: ExtentList,
}

impl RawImage {
    /// Bytes of data (the total length of [`RawImage::allocated`]).
    pub fn data_bytes(&self) -> u64 {
        self.allocated.total_bytes()
    }

    /// The sha256 (lowercase hex) of the whole image, holes included as
    /// zeros; only the data ranges are read from disk.
    pub fn sha256(&self) -> io::Result<String> {
        let file = File::open(&self.path)?;
        let mut h = Sha256::new();
        let zeros = vec![0u8; 1 << 20];
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        for e in self.allocated.iter() {
            hash_zeros(&mut h, &zeros, e.offset - pos);
            let mut at = e.offset;
            while at < e.end() {
                let n = (e.end() - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            pos = e.end();
        }
        hash_zeros(&mut h, &zeros, self.len - pos);
        Ok(hex::encode(h.finalize()))
    }
}

fn hash_zeros(h: &mut Sha256, zeros: &[u8], mut n: u64) {
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        h.update(&zeros[..k]);
        n -= k as u64;
    }
}

/// The sha256 (lowercase hex) of any file, reading only its data ranges
/// (`SEEK_DATA`/`SEEK_HOLE`) and hashing holes as zeros: a 4 GiB sparse
/// output hashes in the time its data takes.
pub fn sha256_sparse(path: impl AsRef<Path>) -> io::Result<String> {
    let mut file = File::open(path.as_ref())?;
    let len = file.metadata()?.len();
    let mut h = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            // ENXIO: no data after pos.
            Err(rustix::io::Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        hash_zeros(&mut h, &zeros, data - pos);
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data))?.min(len);
        file.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            (&file).read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(hex::encode(h.finalize()))
}

/// A small, fast, deterministic generator (xorshift64*), so images do not
/// depend on a random-number crate's version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// What a data run of an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fill {
    /// Incompressible random bytes.
    Random,
    /// Text-like bytes (words, spaces, newlines): compresses about 3:1.
    Text,
}

/// Writes an image of `len` bytes at `path` holding `runs` (sorted or not,
/// non-overlapping) and holes elsewhere. The building block of the other
/// generators, for tests that need an exact layout.
pub fn build(
    path: impl AsRef<Path>,
    len: u64,
    seed: u64,
    runs: &[(Extent, Fill)],
) -> io::Result<RawImage> {
    let path = path.as_ref().to_path_buf();
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    file.set_len(len)?;
    let mut rng = Rng::new(seed);
    let text = text_pool(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut extents = Vec::with_capacity(runs.len());
    for &(e, fill) in runs {
        if e.end() > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("run {e} is past the image length {len}"),
            ));
        }
        let mut at = e.offset;
        while at < e.end() {
            let n = (e.end() - at).min(buf.len() as u64) as usize;
            match fill {
                Fill::Random => rng.fill(&mut buf[..n]),
                Fill::Text => fill_text(&mut rng, &text, &mut buf[..n]),
            }
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        if !e.is_empty() {
            extents.push(e);
        }
    }
    file.sync_all()?;
    Ok(RawImage {
        path,
        len,
        allocated: ExtentList::from_unsorted(extents),
    })
}

const WORDS: &[&str] = &[
    "the",
    "disk",
    "virtual",
    "machine",
    "grain",
    "sector",
    "stream",
    "kernel",
    "boot",
    "config",
    "export",
    "import",
    "vmdk",
    "image",
    "block",
    "data",
    "zero",
    "hole",
    "error",
    "warning",
    "info",
    "debug",
    "system",
    "network",
    "volume",
    "snapshot",
    "server",
    "client",
    "migrate",
    "0x1f",
    "4096",
    "2024-01-01",
    "=",
    "{",
    "}",
    "/usr/lib",
    "/etc/fstab",
    "root",
    "user",
];

/// 256 KiB of text-like content that runs copy slices of.
fn text_pool(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x7465_7874);
    let mut out = Vec::with_capacity(256 << 10);
    while out.len() < 256 << 10 {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
        if rng.below(20) == 0 {
            // A number: keeps the text from compressing too well.
            out.extend_from_slice(format!("{} ", rng.next_u64() % 100_000).as_bytes());
        }
    }
    out.truncate(256 << 10);
    out
}

fn fill_text(rng: &mut Rng, pool: &[u8], buf: &mut [u8]) {
    let mut at = 0;
    while at < buf.len() {
        let start = rng.below(pool.len() as u64 / 2) as usize;
        let n = (1024 + rng.below(3072) as usize).min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&pool[start..start + n]);
        at += n;
    }
}

/// An image of `len` random bytes (fully allocated).
pub fn random(path: impl AsRef<Path>, len: u64, seed: u64) -> io::Result<RawImage> {
    build(path, len, seed, &[(Extent::new(0, len), Fill::Random)])
}

/// An image of `len` bytes that is one hole.
pub fn zeros(path: impl AsRef<Path>, len: u64) -> io::Result<RawImage> {
    build(path, len, 0, &[])
}

/// An image of `len` bytes of which about `data_percent` % is data (random
/// and text-like runs in about equal parts, 4 KiB to 1 MiB each, on 512-byte
/// boundaries) and the rest holes.
pub fn mixed(
    path: impl AsRef<Path>,
    len: u64,
    seed: u64,
    data_percent: u8,
) -> io::Result<RawImage> {
    let runs = mixed_runs(len, seed, data_percent);
    build(path, len, seed, &runs)
}

/// The layout [`mixed`] writes.
fn mixed_runs(len: u64, seed: u64, data_percent: u8) -> Vec<(Extent, Fill)> {
    let mut rng = Rng::new(seed.rotate_left(17));
    let pct = u64::from(data_percent.min(100));
    let mut runs = Vec::new();
    let mut at = 0u64;
    while at < len {
        let run = ((8 + rng.below(2041)) * 512).min(len - at);
        let roll = rng.below(100);
        if roll < pct {
            let fill = if rng.below(2) == 0 {
                Fill::Random
            } else {
                Fill::Text
            };
            runs.push((Extent::new(at, run), fill));
        }
        at += run;
    }
    runs
}

/// A mixed image (about 50 % data) of 3 MiB + 7 × 512 + 4 KiB bytes: a
/// multiple of the sector but not of the 64 KiB grain, with data in the
/// last, partial grain.
pub fn unaligned(path: impl AsRef<Path>, seed: u64) -> io::Result<RawImage> {
    let len = (3 << 20) + 7 * 512 + 4096;
    let mut runs = mixed_runs(len - GRAIN, seed, 50);
    runs.push((
        Extent::new(len - 6000 / 512 * 512, 6000 / 512 * 512),
        Fill::Text,
    ));
    build(path, len, seed, &runs)
}

/// The virtual size of [`large_sparse`]: 4 GiB + 3 MiB + 512 bytes.
pub const LARGE_SPARSE_LEN: u64 = (4 << 30) + (3 << 20) + 512;

/// An image of [`LARGE_SPARSE_LEN`] bytes (past 4 GiB, so 32-bit offset
/// bugs show) with data at the start, around 2 GiB, straddling the 4 GiB
/// mark, and in the last sectors; about 3 MiB of data in all.
pub fn large_sparse(path: impl AsRef<Path>, seed: u64) -> io::Result<RawImage> {
    let len = LARGE_SPARSE_LEN;
    let runs = [
        (Extent::new(0, 1 << 20), Fill::Text),
        (Extent::new((2 << 30) + 4096, 512 << 10), Fill::Random),
        (Extent::new((4 << 30) - (256 << 10), 1 << 20), Fill::Text),
        (Extent::new(len - 8192 - 512, 8192 + 512), Fill::Random),
    ];
    build(path, len, seed, &runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let a = mixed(dir.path().join("a"), 8 << 20, 1, 40).unwrap();
        let b = mixed(dir.path().join("b"), 8 << 20, 1, 40).unwrap();
        let c = mixed(dir.path().join("c"), 8 << 20, 2, 40).unwrap();
        assert_eq!(a.allocated, b.allocated);
        assert_eq!(a.sha256().unwrap(), b.sha256().unwrap());
        assert_ne!(a.sha256().unwrap(), c.sha256().unwrap());
        // Hole-aware hashing agrees with reading every byte.
        let mut all = Vec::new();
        File::open(&a.path).unwrap().read_to_end(&mut all).unwrap();
        let full = hex::encode(Sha256::digest(&all));
        assert_eq!(a.sha256().unwrap(), full);
        assert_eq!(sha256_sparse(&a.path).unwrap(), full);
        let share = a.data_bytes() * 100 / a.len;
        assert!((20..=60).contains(&share), "{share}%");

        let z = zeros(dir.path().join("z"), 1 << 20).unwrap();
        assert_eq!(z.data_bytes(), 0);
        assert_eq!(
            z.sha256().unwrap(),
            hex::encode(Sha256::digest(vec![0u8; 1 << 20]))
        );
        let u = unaligned(dir.path().join("u"), 3).unwrap();
        assert_ne!(u.len % GRAIN, 0);
        assert_eq!(u.len % 512, 0);
        assert_eq!(u.allocated.bounds().unwrap().end(), u.len);
        assert_eq!(sha256_sparse(&u.path).unwrap(), u.sha256().unwrap());
    }
}
