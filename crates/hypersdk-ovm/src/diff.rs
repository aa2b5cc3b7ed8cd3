//! The client-side diff of two snapshots' chunk lists.
//!
//! A chunk is one extent of a reflinked snapshot file: a logical range and
//! where it lies on the repository's block device. Two snapshots of the
//! same disk share a block exactly when the block has not been rewritten
//! between them (a rewrite copies on write to a new physical place, and the
//! older snapshot pins the old one). So, given the **raw** (unsquashed)
//! chunk lists of an older and a newer snapshot:
//!
//! - **unchanged** = the bytes both map to the same physical byte (an
//!   interval intersection where `physical_start - start` agrees);
//! - **changed** = the newer snapshot's allocated bytes minus the unchanged
//!   ones: copy these;
//! - **freed** = the older snapshot's allocated bytes that the newer one no
//!   longer allocates (trimmed, punched): they read as zeros now, so a copy
//!   patched from the older image must zero or punch them.
//!
//! This is tighter than the exporter's own `compareTo` diff, which reports
//! every newer extent without an *identical* (start, length, physical)
//! twin — so a 4 KiB write that splits a 1 GiB extent re-sends the whole
//! gigabyte — and which never reports freed ranges. Like the exporter's, it
//! relies on the older snapshot still existing when the newer one is taken
//! (its reflink keeps the old blocks from being reused).
//!
//! Both lists are clamped to the disk's size (an extent may run past the
//! end after cluster rounding). Malformed input is handled conservatively:
//! a byte that one list maps to two different places counts as changed.
//!
//! ```
//! use hypersdk_core::model::Extent;
//! use hypersdk_ovm::diff::diff_chunks;
//! use hypersdk_ovm::types::Chunk;
//!
//! const K: u64 = 1024;
//! // A 1 MiB extent at physical 4 MiB, and a 64 KiB one.
//! let old = [Chunk::new(0, 1024 * K, 4096 * K), Chunk::new(2048 * K, 64 * K, 9000 * K)];
//! // Then the guest rewrote 64 KiB in the middle of the first (copied on
//! // write to a new place) and trimmed the second.
//! let new = [
//!     Chunk::new(0, 512 * K, 4096 * K),
//!     Chunk::new(512 * K, 64 * K, 7000 * K),
//!     Chunk::new(576 * K, 448 * K, 4096 * K + 576 * K),
//! ];
//! let d = diff_chunks(&old, &new, 4096 * K);
//! assert_eq!(d.changed.as_slice(), &[Extent::new(512 * K, 64 * K)]);
//! assert_eq!(d.freed.as_slice(), &[Extent::new(2048 * K, 64 * K)]);
//! assert_eq!(d.unchanged.total_bytes(), 960 * K);
//! ```

use hypersdk_core::model::{Extent, ExtentList};
use serde::{Deserialize, Serialize};

use crate::types::Chunk;

/// What [`diff_chunks`] found. Every list is squashed (touching extents
/// merged) and lies below the disk's size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChunkDiff {
    /// Allocated in the newer snapshot and not shared with the older one:
    /// the bytes to copy.
    pub changed: ExtentList,
    /// Allocated in the older snapshot and no longer in the newer one: the
    /// bytes to zero or punch in a copy of the older image.
    pub freed: ExtentList,
    /// Shared by both snapshots (same physical bytes): nothing to do.
    pub unchanged: ExtentList,
}

/// The allocated bytes of a chunk list: the chunks clamped to `disk_size`
/// and merged (touching and overlapping chunks become one extent).
///
/// ```
/// use hypersdk_ovm::{diff::chunks_to_extents, types::Chunk};
/// let e = chunks_to_extents(&[Chunk::new(4096, 4096, 0), Chunk::new(0, 4096, 99), Chunk::new(9000, 5000, 7)], 10000);
/// assert_eq!(e.as_slice().len(), 2);
/// assert_eq!(e.total_bytes(), 8192 + 1000);
/// ```
pub fn chunks_to_extents(chunks: &[Chunk], disk_size: u64) -> ExtentList {
    ExtentList::from_unsorted(chunks.iter().map(|c| Extent::new(c.start, c.length)))
        .clamp(disk_size)
        .squash()
}

/// The client-side diff of the **raw** chunk lists of an older (`old`) and
/// a newer (`new`) snapshot of one disk of `disk_size` bytes; see the
/// [module documentation](self). `O((n + m) log(n + m))`.
///
/// Squashed lists must not be passed: a squashed chunk keeps only its first
/// extent's physical offset, so the result would be wrong (it would call
/// shared blocks changed, and could call changed blocks shared).
pub fn diff_chunks(old: &[Chunk], new: &[Chunk], disk_size: u64) -> ChunkDiff {
    let old_map = mapping(old, disk_size);
    let new_map = mapping(new, disk_size);
    let mut unchanged = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old_map.len() && j < new_map.len() {
        let (o, n) = (old_map[i], new_map[j]);
        let lo = o.start.max(n.start);
        let hi = o.end.min(n.end);
        if lo < hi && o.delta.is_some() && o.delta == n.delta {
            unchanged.push(Extent::from_range(lo..hi));
        }
        if o.end <= n.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    let unchanged = ExtentList::from_unsorted(unchanged).squash();
    let old_alloc = allocation(&old_map);
    let new_alloc = allocation(&new_map);
    // A difference of squashed lists is squashed: its pieces are cut by
    // non-empty extents, so none touch.
    ChunkDiff {
        changed: new_alloc.subtract(&unchanged),
        freed: old_alloc.subtract(&new_alloc),
        unchanged,
    }
}

/// A piece of a disk's mapping: `[start, end)` lies at `start + delta` on
/// the device, or at no single place (`None`) when the list maps it twice
/// differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    start: u64,
    end: u64,
    delta: Option<i128>,
}

fn allocation(map: &[Seg]) -> ExtentList {
    ExtentList::from_unsorted(map.iter().map(|s| Extent::from_range(s.start..s.end))).squash()
}

/// The chunks as sorted, disjoint mapping pieces below `disk_size`.
///
/// FIEMAP lists are sorted and disjoint already, which is the fast path;
/// overlaps (never produced by the exporter) are resolved so that a byte
/// mapped to two different places gets `delta: None`.
fn mapping(chunks: &[Chunk], disk_size: u64) -> Vec<Seg> {
    let mut sorted: Vec<Chunk> = chunks
        .iter()
        .filter(|c| c.length > 0 && c.start < disk_size)
        .copied()
        .collect();
    sorted.sort_by_key(|c| c.start);
    fn push(out: &mut Vec<Seg>, start: u64, end: u64, delta: Option<i128>) {
        if start < end {
            out.push(Seg { start, end, delta });
        }
    }
    let mut out: Vec<Seg> = Vec::with_capacity(sorted.len());
    for c in sorted {
        let (s, e) = (c.start, c.start.saturating_add(c.length).min(disk_size));
        let d = Some(i128::from(c.physical_start) - i128::from(c.start));
        let covered = out.last().map_or(0, |l| l.end);
        if s >= covered {
            push(&mut out, s, e, d);
            continue;
        }
        // Overlap with the pieces already placed that end after `s`.
        let ov_end = e.min(covered);
        let first = out.partition_point(|p| p.end <= s);
        let tail: Vec<Seg> = out.drain(first..).collect();
        let mut cur = s;
        for t in tail {
            // Before the new chunk: as it was.
            push(&mut out, t.start, t.end.min(s.max(t.start)), t.delta);
            // A gap between placed pieces that only the new chunk covers.
            let b_start = t.start.max(s);
            if cur < ov_end && cur < b_start {
                push(&mut out, cur, b_start.min(ov_end), d);
            }
            // Covered by both: one place only if they agree.
            let b_end = t.end.min(ov_end);
            let both = if t.delta == d { d } else { None };
            push(&mut out, b_start, b_end, both);
            cur = cur.max(b_end);
            // After the new chunk: as it was.
            push(&mut out, t.start.max(ov_end), t.end, t.delta);
        }
        if cur < ov_end {
            push(&mut out, cur, ov_end, d);
        }
        if e > covered {
            push(&mut out, covered, e, d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    /// The bytes of `list`, as a set.
    fn bytes(list: &ExtentList) -> BTreeSet<u64> {
        list.iter().flat_map(|e| e.offset..e.end()).collect()
    }

    /// Byte → the physical bytes the chunks map it to.
    fn byte_map(chunks: &[Chunk], size: u64) -> HashMap<u64, BTreeSet<u64>> {
        let mut m: HashMap<u64, BTreeSet<u64>> = HashMap::new();
        for c in chunks {
            for b in c.start..c.start.saturating_add(c.length).min(size) {
                m.entry(b)
                    .or_default()
                    .insert(c.physical_start + (b - c.start));
            }
        }
        m
    }

    /// The exporter's compareTo: newer chunks with no identical older one.
    fn server_compare_to(old: &[Chunk], new: &[Chunk]) -> Vec<Chunk> {
        new.iter().filter(|n| !old.contains(n)).copied().collect()
    }

    fn arb_chunks() -> impl Strategy<Value = Vec<Chunk>> {
        prop::collection::vec(
            (0u64..300, 0u64..64, 0u64..400).prop_map(|(s, l, p)| Chunk::new(s, l, p)),
            0..12,
        )
    }

    proptest! {
        /// Any input, even overlapping and unsorted: the result is exactly
        /// the byte-by-byte definition.
        #[test]
        fn matches_the_byte_definition(old in arb_chunks(), new in arb_chunks(), size in 1u64..320) {
            let d = diff_chunks(&old, &new, size);
            let om = byte_map(&old, size);
            let nm = byte_map(&new, size);
            let mut want_unchanged = BTreeSet::new();
            let mut want_changed = BTreeSet::new();
            let mut want_freed = BTreeSet::new();
            for b in 0..size {
                match (om.get(&b), nm.get(&b)) {
                    (Some(o), Some(n)) if o.len() == 1 && o == n => { want_unchanged.insert(b); }
                    (_, Some(_)) => { want_changed.insert(b); }
                    (Some(_), None) => { want_freed.insert(b); }
                    (None, None) => {}
                }
            }
            prop_assert_eq!(bytes(&d.unchanged), want_unchanged);
            prop_assert_eq!(bytes(&d.changed), want_changed);
            prop_assert_eq!(bytes(&d.freed), want_freed);
            // changed ∪ unchanged = the newer allocation, disjointly;
            // freed = older allocation − newer allocation.
            let new_alloc = chunks_to_extents(&new, size);
            let old_alloc = chunks_to_extents(&old, size);
            prop_assert_eq!(d.changed.merge(&d.unchanged), new_alloc.clone());
            prop_assert!(d.changed.intersect(&d.unchanged).is_empty());
            prop_assert_eq!(d.freed.clone(), old_alloc.subtract(&new_alloc).squash());
            for l in [&d.changed, &d.freed, &d.unchanged] {
                prop_assert!(l.bounds().is_none_or(|b| b.end() <= size));
                prop_assert_eq!(l.clone(), l.squash());
            }
        }

        /// A disk modelled as the exporter's test server does (clusters,
        /// copy-on-write, FIEMAP extents capped in length): the diff finds
        /// every rewritten cluster and no shared one, the freed clusters
        /// exactly, and never more than the exporter's compareTo.
        #[test]
        fn cow_model(
            alloc in prop::collection::vec(any::<bool>(), 1..48),
            order_seed in any::<u64>(),
            ops in prop::collection::vec((0usize..48, 1usize..8, 0u8..3), 0..8),
            max_extent in 1usize..6,
            tail_cut in 0u64..4,
        ) {
            const CS: u64 = 4;
            let n = alloc.len();
            // Allocate the old disk's clusters in a shuffled physical order.
            let mut next_phys = 0u64;
            let mut old_map: Vec<Option<u64>> = vec![None; n];
            let mut order: Vec<usize> = (0..n).collect();
            let mut seed = order_seed;
            for i in (1..n).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (seed >> 33) as usize % (i + 1));
            }
            // Runs of the shuffled order, so some extents are contiguous.
            for &c in &order {
                if alloc[c] {
                    old_map[c] = Some(next_phys);
                    next_phys += 1;
                }
            }
            let old_phys: BTreeSet<u64> = old_map.iter().flatten().copied().collect();
            let mut new_map = old_map.clone();
            let mut trimmed = BTreeSet::new();
            for (at, len, kind) in ops {
                for (c, slot) in new_map.iter_mut().enumerate().take(at + len).skip(at) {
                    if kind < 2 {
                        // A write: copy-on-write when shared with the old
                        // snapshot or unmapped, in place otherwise.
                        match *slot {
                            Some(p) if !old_phys.contains(&p) => {}
                            _ => { *slot = Some(next_phys); next_phys += 1; }
                        }
                        trimmed.remove(&c);
                    } else {
                        *slot = None;
                        trimmed.insert(c);
                    }
                }
            }
            let size = n as u64 * CS - tail_cut.min(CS - 1);
            let fiemap = |m: &[Option<u64>]| -> Vec<Chunk> {
                let mut out: Vec<Chunk> = Vec::new();
                let mut run: Option<(usize, u64, usize)> = None; // start cluster, phys, clusters
                for (c, p) in m.iter().enumerate() {
                    run = match (run, p) {
                        (Some((s, ph, k)), Some(p)) if ph + k as u64 == *p && k < max_extent => Some((s, ph, k + 1)),
                        (r, p) => {
                            if let Some((s, ph, k)) = r {
                                out.push(Chunk::new(s as u64 * CS, k as u64 * CS, ph * CS));
                            }
                            p.map(|p| (c, p, 1))
                        }
                    };
                }
                if let Some((s, ph, k)) = run {
                    out.push(Chunk::new(s as u64 * CS, k as u64 * CS, ph * CS));
                }
                out
            };
            let old = fiemap(&old_map);
            let new = fiemap(&new_map);
            let d = diff_chunks(&old, &new, size);
            let cluster = |c: usize| Extent::new(c as u64 * CS, CS).intersection(&Extent::new(0, size));
            for c in 0..n {
                let Some(e) = cluster(c) else { continue };
                match (old_map[c], new_map[c]) {
                    (Some(a), Some(b)) if a == b => {
                        prop_assert!(d.unchanged.covers(e) && d.changed.intersect(&ExtentList::from_unsorted([e])).is_empty());
                    }
                    (_, Some(_)) => prop_assert!(d.changed.covers(e), "cluster {} rewritten but not changed", c),
                    (Some(_), None) => prop_assert!(d.freed.covers(e) && trimmed.contains(&c)),
                    (None, None) => prop_assert!(!d.freed.contains_offset(e.offset) && !d.changed.contains_offset(e.offset)),
                }
            }
            // Never more than the exporter's own diff.
            let server = chunks_to_extents(&server_compare_to(&old, &new), size);
            prop_assert!(d.changed.subtract(&server).is_empty());
            // An identical layout: nothing changed, nothing freed.
            let same = diff_chunks(&new, &new, size);
            prop_assert!(same.changed.is_empty() && same.freed.is_empty());
            prop_assert_eq!(same.unchanged, chunks_to_extents(&new, size));
        }
    }

    #[test]
    fn split_extent_is_not_resent() {
        // One 1 GiB extent, then a 4 KiB write in its middle: the exporter
        // re-sends 1 GiB, the client diff 4 KiB.
        const G: u64 = 1 << 30;
        let old = [Chunk::new(0, G, 10 * G)];
        let new = [
            Chunk::new(0, G / 2, 10 * G),
            Chunk::new(G / 2, 4096, 20 * G),
            Chunk::new(G / 2 + 4096, G / 2 - 4096, 10 * G + G / 2 + 4096),
        ];
        let d = diff_chunks(&old, &new, G);
        assert_eq!(d.changed.as_slice(), &[Extent::new(G / 2, 4096)]);
        assert!(d.freed.is_empty());
        let server = chunks_to_extents(&server_compare_to(&old, &new), G);
        assert_eq!(server.total_bytes(), G);
    }

    #[test]
    fn growth_overflow_and_empty() {
        let d = diff_chunks(&[], &[], 0);
        assert_eq!(d, ChunkDiff::default());
        // A new disk (no old chunks): everything is changed.
        let d = diff_chunks(&[], &[Chunk::new(0, 10, 0)], 100);
        assert_eq!(d.changed.as_slice(), &[Extent::new(0, 10)]);
        // Huge offsets do not overflow.
        let c = [Chunk::new(u64::MAX - 10, 100, u64::MAX - 5)];
        let d = diff_chunks(&c, &c, u64::MAX);
        assert_eq!(d.unchanged.total_bytes(), 10);
        assert!(d.changed.is_empty());
        // Same start, different physical place: changed.
        let d = diff_chunks(&[Chunk::new(0, 10, 0)], &[Chunk::new(0, 10, 1)], 10);
        assert_eq!(d.changed.total_bytes(), 10);
    }
}
