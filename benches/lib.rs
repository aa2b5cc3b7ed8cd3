//! Benchmarks of hypersdk's hot paths live in `benches/`; run them with
//! `cargo bench -p hypersdk-benches`. This library holds what several
//! benches share: deterministic test data.

/// Deterministic test data from an xorshift64 state (seed it non-zero).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 pseudo-random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fills `buf` with incompressible bytes.
    pub fn fill_random(&mut self, buf: &mut [u8]) {
        for b in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            b.copy_from_slice(&v[..b.len()]);
        }
    }

    /// Log-like text: words, numbers, newlines (compresses about 3:1).
    pub fn fill_text(&mut self, buf: &mut [u8]) {
        const WORDS: &[&str] = &[
            "kernel",
            "disk",
            "grain",
            "sector",
            "error",
            "warning",
            "info",
            "boot",
            "/usr/lib",
            "/etc/fstab",
            "root",
            "network",
            "volume",
            "snapshot",
            "=",
            "{",
            "}",
            "the",
            "a",
        ];
        let mut text = Vec::with_capacity(buf.len() + 32);
        while text.len() < buf.len() {
            let r = self.next();
            text.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
            if r >> 60 == 0 {
                text.extend_from_slice(format!(" {}", (r >> 20) % 100_000).as_bytes());
            }
            text.push(if (r >> 8).is_multiple_of(11) {
                b'\n'
            } else {
                b' '
            });
        }
        buf.copy_from_slice(&text[..buf.len()]);
    }
}
