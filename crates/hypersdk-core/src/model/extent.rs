//! Byte extents of a disk, and sorted lists of them with set algebra.
//!
//! # Model
//! An [`Extent`] is a half-open byte range `[offset, offset + length)` of a
//! disk: `offset` is the first byte counted from the start of the disk and
//! `length` the number of bytes, both in bytes (never sectors or grains).
//! Its exclusive end, [`Extent::end`], always fits in a `u64`: the checked
//! constructor [`Extent::try_new`] rejects extents whose end would overflow,
//! [`Extent::new`] shortens them so they end at `u64::MAX`, and for an extent
//! built from its public fields [`Extent::end`] saturates. (Hence the very
//! last byte, number `u64::MAX`, can never be covered; no real disk has it.)
//!
//! An [`ExtentList`] is a set of bytes written as sorted, non-overlapping,
//! non-empty extents. Extents that merely *touch* (one ends where the next
//! starts) may stay separate, so a list read from a platform keeps its
//! boundaries (one extent per FIEMAP record, per changed-block record, per
//! allocated grain); [`ExtentList::squash`] coalesces them. Two lists with the
//! same bytes but different boundaries are different values (`==` compares
//! boundaries); compare `squash()`ed lists to compare byte sets.
//!
//! Every operation is a single sweep, `O(n)` or `O(n + m)` (plus a sort in
//! [`ExtentList::from_unsorted`]), so lists of millions of extents are cheap.
//!
//! # Serialized form
//! An extent is `{"offset": N, "length": N}` and a list is a JSON array of
//! extents. Deserializing a list checks the invariants and names the index
//! of the first offending extent.
//!
//! ```
//! use hypersdk_core::model::extent::{Extent, ExtentList};
//!
//! // Allocated ranges of a 1 MiB disk, as a platform reported them.
//! let allocated = ExtentList::from_unsorted([
//!     Extent::new(65536, 4096),
//!     Extent::new(0, 4096),
//!     Extent::new(4096, 4096), // touches the first: kept separate
//! ]);
//! assert_eq!(allocated.len(), 3);
//! assert_eq!(allocated.total_bytes(), 12288);
//!
//! // Coalesce into as few reads as possible.
//! let reads = allocated.squash();
//! assert_eq!(reads.as_slice(), &[Extent::new(0, 8192), Extent::new(65536, 4096)]);
//!
//! // The holes of the disk, and what changed since the last copy that is allocated.
//! let holes = allocated.complement(Extent::new(0, 1 << 20));
//! assert_eq!(holes.total_bytes() + allocated.total_bytes(), 1 << 20);
//! let changed = ExtentList::from_sorted(vec![Extent::new(6000, 70000)])?;
//! let to_copy = allocated.intersect(&changed);
//! assert_eq!(to_copy.as_slice(), &[Extent::new(6000, 2192), Extent::new(65536, 4096)]);
//!
//! // JSON
//! let json = serde_json::to_string(&reads).unwrap();
//! assert_eq!(json, r#"[{"offset":0,"length":8192},{"offset":65536,"length":4096}]"#);
//! let bad = serde_json::from_str::<ExtentList>(r#"[{"offset":10,"length":5},{"offset":0,"length":5}]"#);
//! assert!(bad.unwrap_err().to_string().contains("extent 1"));
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// A byte range of a disk: `length` bytes starting at `offset`.
///
/// The range is half-open, `[offset, offset + length)`; see the
/// [module documentation](self) for how overflow of the end is prevented.
/// Ordering is by `offset`, then `length`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Extent {
    /// The first byte, counted in bytes from the start of the disk.
    pub offset: u64,
    /// The number of bytes.
    pub length: u64,
}

impl Extent {
    /// `length` bytes at `offset`.
    ///
    /// If `offset + length` would overflow a `u64` the length is shortened so
    /// the extent ends at `u64::MAX`; use [`Extent::try_new`] to get an error
    /// instead.
    pub const fn new(offset: u64, length: u64) -> Self {
        let room = u64::MAX - offset;
        Extent {
            offset,
            length: if length > room { room } else { length },
        }
    }

    /// `length` bytes at `offset`, or an [`Error::InvalidInput`] if the end,
    /// `offset + length`, does not fit in a `u64`.
    pub fn try_new(offset: u64, length: u64) -> Result<Self> {
        match offset.checked_add(length) {
            Some(_) => Ok(Extent { offset, length }),
            None => Err(Error::invalid_input(format!(
                "extent at offset {offset} with length {length} ends beyond 2^64 - 1"
            ))),
        }
    }

    /// The extent covering `range`; an empty or reversed range gives an
    /// empty extent at `range.start`.
    pub const fn from_range(range: Range<u64>) -> Self {
        Extent {
            offset: range.start,
            length: range.end.saturating_sub(range.start),
        }
    }

    /// The extent as a range `offset..end()`.
    pub const fn as_range(&self) -> Range<u64> {
        self.offset..self.end()
    }

    /// One past the last byte (exclusive end), `offset + length`.
    ///
    /// Saturates at `u64::MAX` for an extent whose fields were set so that
    /// the sum overflows; every constructor of this module prevents that.
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// `offset + length`, or `None` if it overflows a `u64`.
    pub const fn checked_end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }

    /// Whether the extent has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Whether byte `offset` lies in the extent.
    pub const fn contains(&self, offset: u64) -> bool {
        offset >= self.offset && offset < self.end()
    }

    /// Whether the two extents have at least one byte in common (touching
    /// extents do not overlap; empty extents overlap nothing).
    pub const fn overlaps(&self, other: &Extent) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.offset < other.end()
            && other.offset < self.end()
    }

    /// Whether one extent ends exactly where the other starts.
    pub const fn touches(&self, other: &Extent) -> bool {
        self.end() == other.offset || other.end() == self.offset
    }

    /// The bytes the two extents have in common, or `None` if they do not
    /// overlap.
    pub fn intersection(&self, other: &Extent) -> Option<Extent> {
        let start = self.offset.max(other.offset);
        let end = self.end().min(other.end());
        (start < end).then(|| Extent::from_range(start..end))
    }
}

impl From<Range<u64>> for Extent {
    /// See [`Extent::from_range`].
    fn from(range: Range<u64>) -> Self {
        Extent::from_range(range)
    }
}

impl From<Extent> for Range<u64> {
    fn from(e: Extent) -> Self {
        e.as_range()
    }
}

impl fmt::Display for Extent {
    /// `[offset, end)`, in bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.offset, self.end())
    }
}

/// Sorted, non-overlapping extents.
///
/// Invariants, upheld by every constructor and operation:
/// * extents are sorted by offset and disjoint (`e[i].end() <= e[i+1].offset`);
/// * no extent is empty;
/// * no extent's end overflows a `u64`.
///
/// Adjacent (touching) extents MAY be kept separate: raw lists keep their
/// boundaries (e.g. one extent per FIEMAP record); [`ExtentList::squash`]
/// coalesces them. Operations documented as *squashed* return lists in which
/// no two extents touch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct ExtentList {
    extents: Vec<Extent>,
}

/// Checks the list invariants; the message names the first offending index.
fn validate(extents: &[Extent]) -> std::result::Result<(), String> {
    let mut prev_end: Option<u64> = None;
    for (i, e) in extents.iter().enumerate() {
        if e.is_empty() {
            return Err(format!("extent {i} at offset {} has length 0", e.offset));
        }
        let Some(end) = e.checked_end() else {
            return Err(format!(
                "extent {i} at offset {} with length {} ends beyond 2^64 - 1",
                e.offset, e.length
            ));
        };
        if let Some(prev_end) = prev_end
            && e.offset < prev_end
        {
            let prev = extents[i - 1];
            return Err(if e.offset < prev.offset {
                format!(
                    "extent {i} {e} is out of order: it starts before extent {} {prev}",
                    i - 1
                )
            } else {
                format!("extent {i} {e} overlaps extent {} {prev}", i - 1)
            });
        }
        prev_end = Some(end);
    }
    Ok(())
}

/// Builds a squashed list by feeding extents in order of non-decreasing
/// offset; overlapping and touching ones are coalesced.
struct Coalescer {
    out: Vec<Extent>,
    cur: Option<(u64, u64)>,
}

impl Coalescer {
    fn with_capacity(n: usize) -> Self {
        Coalescer {
            out: Vec::with_capacity(n),
            cur: None,
        }
    }

    /// Adds `[start, end)`; `start` must not be below any earlier start.
    fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        match &mut self.cur {
            Some((_, cur_end)) if start <= *cur_end => *cur_end = (*cur_end).max(end),
            cur => {
                if let Some((s, e)) = cur.replace((start, end)) {
                    self.out.push(Extent::from_range(s..e));
                }
            }
        }
    }

    fn finish(mut self) -> ExtentList {
        if let Some((s, e)) = self.cur {
            self.out.push(Extent::from_range(s..e));
        }
        ExtentList { extents: self.out }
    }
}

/// Error for a zero maximum or block size argument.
fn zero_arg(what: &str, op: &str) -> Error {
    Error::invalid_input(format!("{what} of ExtentList::{op} must be greater than 0"))
}

impl ExtentList {
    /// An empty list.
    pub const fn new() -> Self {
        ExtentList {
            extents: Vec::new(),
        }
    }

    /// A list of already sorted extents, kept as given (touching extents stay
    /// separate).
    ///
    /// Returns [`Error::InvalidInput`] naming the index of the first extent
    /// that is empty, whose end overflows, that starts before the previous
    /// one, or that overlaps the previous one.
    pub fn from_sorted(extents: Vec<Extent>) -> Result<Self> {
        match validate(&extents) {
            Ok(()) => Ok(ExtentList { extents }),
            Err(msg) => Err(Error::invalid_input(format!("extent list: {msg}"))),
        }
    }

    /// A list of extents in any order.
    ///
    /// Empty extents are dropped, an extent whose end would overflow is
    /// shortened to end at `u64::MAX` (as by [`Extent::new`]), and extents
    /// that overlap (share a byte) are merged into one. Extents that only
    /// touch are kept separate, so boundaries survive; call
    /// [`ExtentList::squash`] to coalesce them. `O(n log n)`.
    pub fn from_unsorted(extents: impl IntoIterator<Item = Extent>) -> Self {
        let mut v: Vec<Extent> = extents
            .into_iter()
            .filter(|e| !e.is_empty())
            .map(|e| Extent::new(e.offset, e.length))
            .collect();
        // By offset only: merging below takes the largest end of equal starts.
        v.sort_unstable_by_key(|e| e.offset);
        // Merge overlapping extents in place.
        let mut w = 0usize;
        for r in 0..v.len() {
            let e = v[r];
            if w > 0 && e.offset < v[w - 1].end() {
                let prev = &mut v[w - 1];
                let end = prev.end().max(e.end());
                prev.length = end - prev.offset;
            } else {
                v[w] = e;
                w += 1;
            }
        }
        v.truncate(w);
        ExtentList { extents: v }
    }

    /// The whole of a disk of `len` bytes: one extent `[0, len)`, or an empty
    /// list if `len` is 0.
    pub fn full(len: u64) -> Self {
        if len == 0 {
            ExtentList::new()
        } else {
            ExtentList {
                extents: vec![Extent::new(0, len)],
            }
        }
    }

    /// Appends `extent` at the end of the list, keeping it separate even if
    /// it touches the last extent. An empty extent is ignored.
    ///
    /// Returns [`Error::InvalidInput`] if the extent starts before the end of
    /// the last extent (it would overlap or go backwards) or if its end
    /// overflows a `u64`; the list is then unchanged.
    pub fn push(&mut self, extent: Extent) -> Result<()> {
        if extent.is_empty() {
            return Ok(());
        }
        if extent.checked_end().is_none() {
            return Err(Error::invalid_input(format!(
                "cannot append extent at offset {} with length {}: it ends beyond 2^64 - 1",
                extent.offset, extent.length
            )));
        }
        if let Some(last) = self.extents.last()
            && extent.offset < last.end()
        {
            return Err(Error::invalid_input(format!(
                "cannot append extent {extent} after extent {} {last}: \
                 extents must be appended in order without overlap",
                self.extents.len() - 1
            )));
        }
        self.extents.push(extent);
        Ok(())
    }

    /// The number of extents (not bytes; see [`ExtentList::total_bytes`]).
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// Whether the list has no extents (covers no byte).
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The extents, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Extent> {
        self.extents.iter()
    }

    /// The extents, in order.
    pub fn as_slice(&self) -> &[Extent] {
        &self.extents
    }

    /// The extents, in order, as a vector.
    pub fn into_vec(self) -> Vec<Extent> {
        self.extents
    }

    /// The number of bytes covered: the sum of the lengths.
    ///
    /// Since the extents are disjoint and end at or below `u64::MAX`, the sum
    /// always fits in a `u64` (the addition saturates all the same).
    pub fn total_bytes(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(e.length))
    }

    /// Index of the first extent that ends after `offset`.
    fn first_ending_after(&self, offset: u64) -> usize {
        self.extents.partition_point(|e| e.end() <= offset)
    }

    /// Whether byte `offset` is covered. `O(log n)`.
    pub fn contains_offset(&self, offset: u64) -> bool {
        self.extents
            .get(self.first_ending_after(offset))
            .is_some_and(|e| e.offset <= offset)
    }

    /// Whether every byte of `extent` is covered (true for an empty extent).
    /// `O(log n + k)` for `k` extents spanned.
    pub fn covers(&self, extent: Extent) -> bool {
        if extent.is_empty() {
            return true;
        }
        let end = extent.end();
        let mut pos = extent.offset;
        for e in &self.extents[self.first_ending_after(pos)..] {
            if e.offset > pos {
                return false;
            }
            pos = e.end();
            if pos >= end {
                return true;
            }
        }
        false
    }

    /// From the start of the first extent to the end of the last, or `None`
    /// for an empty list.
    pub fn bounds(&self) -> Option<Extent> {
        match (self.extents.first(), self.extents.last()) {
            (Some(first), Some(last)) => Some(Extent::from_range(first.offset..last.end())),
            _ => None,
        }
    }

    /// The holes: the bytes of `within` that no extent covers. The result is
    /// squashed (holes are maximal, so no two touch).
    pub fn complement(&self, within: Extent) -> ExtentList {
        let w_end = within.end();
        let mut pos = within.offset;
        let mut out = Vec::new();
        if pos >= w_end {
            return ExtentList { extents: out };
        }
        for e in &self.extents[self.first_ending_after(pos)..] {
            if e.offset >= w_end {
                break;
            }
            if e.offset > pos {
                out.push(Extent::from_range(pos..e.offset));
            }
            pos = pos.max(e.end());
            if pos >= w_end {
                break;
            }
        }
        if pos < w_end {
            out.push(Extent::from_range(pos..w_end));
        }
        ExtentList { extents: out }
    }

    /// The bytes below `len`: extents at or beyond `len` are dropped and one
    /// that straddles `len` is cut to end there. Boundaries are kept.
    #[must_use]
    pub fn clamp(&self, len: u64) -> ExtentList {
        let keep = self.extents.partition_point(|e| e.offset < len);
        let mut extents = self.extents[..keep].to_vec();
        if let Some(last) = extents.last_mut()
            && last.end() > len
        {
            last.length = len - last.offset;
        }
        ExtentList { extents }
    }

    /// Coalesces touching extents: the same bytes in the fewest extents (what
    /// the OVM exporter calls `squashChunks`). The result is squashed.
    #[must_use]
    pub fn squash(&self) -> ExtentList {
        let mut c = Coalescer::with_capacity(self.extents.len());
        for e in &self.extents {
            c.add(e.offset, e.end());
        }
        c.finish()
    }

    /// Coalesces extents for fewer, larger requests: touching extents and
    /// extents separated by a gap of at most `max_gap` bytes are joined, but
    /// no result extent is longer than `max_len` when it is given.
    ///
    /// Bridging a gap *adds* the gap's bytes to the coverage: the result
    /// covers every byte of `self` plus the bridged gaps (reading a little
    /// unneeded data to save a request). With `max_gap == 0` and
    /// `max_len == None` this is [`ExtentList::squash`].
    ///
    /// Joining is greedy from the start: an extent is joined to the current
    /// run if the gap is small enough and the run would not grow beyond
    /// `max_len`; otherwise the run ends (its trailing gap is not bridged) and
    /// a new run starts at the extent. An extent longer than `max_len` is cut
    /// into `max_len`-sized pieces from its start, the last piece possibly
    /// joining what follows. Without `max_len` the result is squashed.
    ///
    /// Returns [`Error::InvalidInput`] if `max_len` is `Some(0)`.
    pub fn squash_with(&self, max_gap: u64, max_len: Option<u64>) -> Result<ExtentList> {
        let max_len = match max_len {
            Some(0) => return Err(zero_arg("max_len", "squash_with")),
            Some(m) => m,
            None => u64::MAX,
        };
        let mut out = Vec::with_capacity(self.extents.len());
        let mut cur: Option<(u64, u64)> = None;
        for e in &self.extents {
            let end = e.end();
            if let Some((s, c_end)) = cur {
                if e.offset.saturating_sub(c_end) <= max_gap && end - s <= max_len {
                    cur = Some((s, end));
                    continue;
                }
                out.push(Extent::from_range(s..c_end));
            }
            let mut s = e.offset;
            while end - s > max_len {
                out.push(Extent::new(s, max_len));
                s += max_len;
            }
            cur = Some((s, end));
        }
        if let Some((s, e)) = cur {
            out.push(Extent::from_range(s..e));
        }
        Ok(ExtentList { extents: out })
    }

    /// The union: bytes in `self` or in `other`. The result is squashed.
    /// `O(n + m)`.
    #[must_use]
    pub fn merge(&self, other: &ExtentList) -> ExtentList {
        let (a, b) = (&self.extents, &other.extents);
        let mut c = Coalescer::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let e = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.offset <= y.offset => {
                    i += 1;
                    x
                }
                (_, Some(y)) => {
                    j += 1;
                    y
                }
                (Some(x), None) => {
                    i += 1;
                    x
                }
                (None, None) => break,
            };
            c.add(e.offset, e.end());
        }
        c.finish()
    }

    /// The intersection: bytes in both `self` and `other`. `O(n + m)`.
    ///
    /// Every result extent lies within one extent of `self`, and the
    /// boundaries of `self` are kept: the result is not squashed, but pieces
    /// of one extent of `self` that touch (because `other` had touching
    /// extents there) are joined, so `other`'s boundaries do not show.
    #[must_use]
    pub fn intersect(&self, other: &ExtentList) -> ExtentList {
        let (a, b) = (&self.extents, &other.extents);
        let mut out: Vec<Extent> = Vec::with_capacity(a.len().max(b.len()));
        let mut last_from = usize::MAX;
        let (mut i, mut j) = (0, 0);
        while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
            let (x_end, y_end) = (x.end(), y.end());
            let start = x.offset.max(y.offset);
            let end = x_end.min(y_end);
            if start < end {
                match out.last_mut() {
                    Some(last) if last_from == i && last.end() == start => {
                        last.length = end - last.offset;
                    }
                    _ => {
                        out.push(Extent::from_range(start..end));
                        last_from = i;
                    }
                }
            }
            if x_end <= y_end {
                i += 1;
            } else {
                j += 1;
            }
        }
        ExtentList { extents: out }
    }

    /// The difference: bytes in `self` that are not in `other`. `O(n + m)`.
    ///
    /// Every result extent lies within one extent of `self` and the
    /// boundaries of `self` are kept (the result is not squashed).
    #[must_use]
    pub fn subtract(&self, other: &ExtentList) -> ExtentList {
        let b = &other.extents;
        let mut out = Vec::with_capacity(self.extents.len());
        let mut j = 0;
        for x in &self.extents {
            let end = x.end();
            let mut start = x.offset;
            while j < b.len() && b[j].end() <= start {
                j += 1;
            }
            while let Some(y) = b.get(j) {
                if y.offset >= end {
                    break;
                }
                if y.offset > start {
                    out.push(Extent::from_range(start..y.offset));
                }
                let y_end = y.end();
                if y_end >= end {
                    // `y` may reach into the next extent of `self`: keep it.
                    start = end;
                    break;
                }
                start = y_end;
                j += 1;
            }
            if start < end {
                out.push(Extent::from_range(start..end));
            }
        }
        ExtentList { extents: out }
    }

    /// The same bytes with no extent longer than `max_len`: longer extents
    /// are cut into `max_len`-sized pieces from their start (the last piece
    /// may be shorter). Shorter extents and boundaries are kept.
    ///
    /// Returns [`Error::InvalidInput`] if `max_len` is 0.
    pub fn split_to_max(&self, max_len: u64) -> Result<ExtentList> {
        if max_len == 0 {
            return Err(zero_arg("max_len", "split_to_max"));
        }
        // No exact count up front: it does not pay (the cost is writing the
        // pieces), and a split into billions of pieces should grow as it goes.
        let mut out = Vec::with_capacity(self.extents.len());
        for e in &self.extents {
            if e.length <= max_len {
                out.push(*e);
                continue;
            }
            let end = e.end();
            let mut s = e.offset;
            while end - s > max_len {
                out.push(Extent::new(s, max_len));
                s += max_len;
            }
            out.push(Extent::from_range(s..end));
        }
        Ok(ExtentList { extents: out })
    }

    /// Widens every extent to whole blocks of `block` bytes (start rounded
    /// down, end rounded up to a multiple of `block`) and squashes, e.g. to
    /// read whole sectors or grains. An end whose round-up does not fit in a
    /// `u64` becomes `u64::MAX`. The result is squashed.
    ///
    /// Returns [`Error::InvalidInput`] if `block` is 0.
    pub fn align_out(&self, block: u64) -> Result<ExtentList> {
        if block == 0 {
            return Err(zero_arg("block", "align_out"));
        }
        let mut c = Coalescer::with_capacity(self.extents.len());
        for e in &self.extents {
            let start = e.offset - e.offset % block;
            let end = e.end().div_ceil(block).saturating_mul(block);
            c.add(start, end);
        }
        Ok(c.finish())
    }
}

impl TryFrom<Vec<Extent>> for ExtentList {
    type Error = Error;

    /// See [`ExtentList::from_sorted`].
    fn try_from(extents: Vec<Extent>) -> Result<Self> {
        ExtentList::from_sorted(extents)
    }
}

impl From<ExtentList> for Vec<Extent> {
    fn from(list: ExtentList) -> Self {
        list.extents
    }
}

impl AsRef<[Extent]> for ExtentList {
    fn as_ref(&self) -> &[Extent] {
        &self.extents
    }
}

impl FromIterator<Extent> for ExtentList {
    /// See [`ExtentList::from_unsorted`].
    fn from_iter<I: IntoIterator<Item = Extent>>(iter: I) -> Self {
        ExtentList::from_unsorted(iter)
    }
}

impl IntoIterator for ExtentList {
    type Item = Extent;
    type IntoIter = std::vec::IntoIter<Extent>;

    fn into_iter(self) -> Self::IntoIter {
        self.extents.into_iter()
    }
}

impl<'a> IntoIterator for &'a ExtentList {
    type Item = &'a Extent;
    type IntoIter = std::slice::Iter<'a, Extent>;

    fn into_iter(self) -> Self::IntoIter {
        self.extents.iter()
    }
}

impl fmt::Display for ExtentList {
    /// The extents separated by `, `, e.g. `[0, 4096), [8192, 12288)`; an
    /// empty list shows as `(none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.extents.is_empty() {
            return f.write_str("(none)");
        }
        for (i, e) in self.extents.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ExtentList {
    /// An array of extents, validated as by [`ExtentList::from_sorted`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let extents = Vec::<Extent>::deserialize(deserializer)?;
        validate(&extents)
            .map_err(|msg| serde::de::Error::custom(format!("invalid extent list: {msg}")))?;
        Ok(ExtentList { extents })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::ErrorKind;

    fn e(offset: u64, length: u64) -> Extent {
        Extent::new(offset, length)
    }

    fn list(v: &[(u64, u64)]) -> ExtentList {
        match ExtentList::from_sorted(v.iter().map(|&(o, l)| e(o, l)).collect()) {
            Ok(l) => l,
            Err(err) => panic!("bad test list {v:?}: {err}"),
        }
    }

    fn pairs(l: &ExtentList) -> Vec<(u64, u64)> {
        l.iter().map(|x| (x.offset, x.length)).collect()
    }

    /// Sorted, disjoint, non-empty, no overflow.
    fn assert_valid(l: &ExtentList) {
        if let Err(msg) = validate(l.as_slice()) {
            panic!("invariant broken: {msg} in {l}");
        }
    }

    /// Valid and no two extents touch.
    fn assert_squashed(l: &ExtentList) {
        assert_valid(l);
        for w in l.as_slice().windows(2) {
            assert!(w[0].end() < w[1].offset, "{} touches {} in {l}", w[0], w[1]);
        }
    }

    // ---- Extent ----

    #[test]
    fn extent_new_and_end() {
        assert_eq!(e(10, 5).end(), 15);
        assert_eq!(e(10, 5).checked_end(), Some(15));
        let top = e(u64::MAX - 3, 100);
        assert_eq!(top.length, 3);
        assert_eq!(top.end(), u64::MAX);
        assert_eq!(e(u64::MAX, 1).length, 0);
        let raw = Extent {
            offset: u64::MAX - 1,
            length: 5,
        };
        assert_eq!(raw.end(), u64::MAX);
        assert_eq!(raw.checked_end(), None);
    }

    #[test]
    fn extent_try_new() {
        assert_eq!(Extent::try_new(1, 2).ok(), Some(e(1, 2)));
        assert!(Extent::try_new(u64::MAX - 2, 2).is_ok());
        assert!(Extent::try_new(u64::MAX, 0).is_ok());
        let err = Extent::try_new(u64::MAX - 2, 3).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .contains(&format!("offset {}", u64::MAX - 2))
        );
        assert!(err.to_string().contains("length 3"));
    }

    #[test]
    fn extent_ranges() {
        assert_eq!(Extent::from_range(4..10), e(4, 6));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 10..4;
        assert_eq!(Extent::from_range(reversed), e(10, 0));
        assert_eq!(Extent::from(0..u64::MAX), e(0, u64::MAX));
        assert_eq!(e(4, 6).as_range(), 4..10);
        let r: Range<u64> = e(7, 1).into();
        assert_eq!(r, 7..8);
    }

    #[test]
    fn extent_predicates() {
        let x = e(10, 10);
        assert!(!x.is_empty());
        assert!(e(3, 0).is_empty());
        assert!(x.contains(10) && x.contains(19));
        assert!(!x.contains(9) && !x.contains(20));
        assert!(!e(10, 0).contains(10));
        assert!(e(u64::MAX - 1, 1).contains(u64::MAX - 1));
        assert!(!e(u64::MAX - 1, 1).contains(u64::MAX));

        assert!(x.overlaps(&e(19, 5)));
        assert!(x.overlaps(&e(0, 11)));
        assert!(x.overlaps(&e(12, 2)));
        assert!(!x.overlaps(&e(20, 5)), "touching is not overlapping");
        assert!(!x.overlaps(&e(0, 10)));
        assert!(!x.overlaps(&e(15, 0)), "empty overlaps nothing");
        assert!(!e(15, 0).overlaps(&x));

        assert!(x.touches(&e(20, 1)));
        assert!(x.touches(&e(5, 5)));
        assert!(!x.touches(&e(21, 1)));
    }

    #[test]
    fn extent_intersection() {
        let x = e(10, 10);
        assert_eq!(x.intersection(&e(15, 10)), Some(e(15, 5)));
        assert_eq!(x.intersection(&e(0, 100)), Some(x));
        assert_eq!(x.intersection(&e(12, 2)), Some(e(12, 2)));
        assert_eq!(x.intersection(&e(20, 10)), None);
        assert_eq!(x.intersection(&e(0, 10)), None);
        assert_eq!(x.intersection(&e(12, 0)), None);
        assert_eq!(
            e(u64::MAX - 10, 10).intersection(&e(u64::MAX - 5, 100)),
            Some(e(u64::MAX - 5, 5))
        );
    }

    #[test]
    fn extent_display_and_json() {
        assert_eq!(e(512, 1024).to_string(), "[512, 1536)");
        let v = serde_json::to_value(e(1, 2)).unwrap();
        assert_eq!(v, serde_json::json!({"offset": 1, "length": 2}));
        let back: Extent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e(1, 2));
    }

    // ---- construction ----

    #[test]
    fn from_sorted_keeps_boundaries() {
        let l = list(&[(0, 10), (10, 10), (30, 5)]);
        assert_eq!(l.len(), 3);
        assert!(ExtentList::from_sorted(Vec::new()).unwrap().is_empty());
        assert!(ExtentList::from_sorted(vec![e(u64::MAX - 1, 1)]).is_ok());
    }

    #[test]
    fn from_sorted_rejects_with_index() {
        let cases: [(Vec<Extent>, &str); 5] = [
            (
                vec![e(0, 10), e(20, 0)],
                "extent 1 at offset 20 has length 0",
            ),
            (
                vec![e(0, 10), e(5, 10)],
                "extent 1 [5, 15) overlaps extent 0 [0, 10)",
            ),
            (
                vec![e(0, 1), e(10, 10), e(2, 1)],
                "extent 2 [2, 3) is out of order",
            ),
            (vec![e(0, 10), e(0, 10)], "extent 1 [0, 10) overlaps"),
            (
                vec![Extent {
                    offset: u64::MAX,
                    length: 1,
                }],
                "extent 0 at offset",
            ),
        ];
        for (v, want) in cases {
            let err = ExtentList::from_sorted(v.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(want), "{v:?}: {err}");
            assert!(ExtentList::try_from(v).is_err());
        }
    }

    #[test]
    fn from_unsorted_normalizes() {
        let l = ExtentList::from_unsorted([
            e(30, 5),
            e(0, 10),
            e(5, 0),
            e(10, 10),
            e(32, 10),
            e(0, 10),
            e(100, 1),
            e(99, 3),
        ]);
        assert_eq!(pairs(&l), [(0, 10), (10, 10), (30, 12), (99, 3)]);
        // An overlap that spans a touching point merges across it.
        let l = ExtentList::from_unsorted([e(0, 10), e(10, 10), e(5, 10)]);
        assert_eq!(pairs(&l), [(0, 20)]);
        // Nested extents.
        let l = ExtentList::from_unsorted([e(0, 100), e(10, 5), e(50, 60)]);
        assert_eq!(pairs(&l), [(0, 110)]);
        // Overflowing extents are cut at u64::MAX.
        let raw = Extent {
            offset: u64::MAX - 4,
            length: 100,
        };
        let l = ExtentList::from_unsorted([raw]);
        assert_eq!(pairs(&l), [(u64::MAX - 4, 4)]);
        assert!(ExtentList::from_unsorted([e(1, 0)]).is_empty());
        let l: ExtentList = [e(5, 5), e(0, 5)].into_iter().collect();
        assert_eq!(pairs(&l), [(0, 5), (5, 5)]);
    }

    #[test]
    fn full() {
        assert!(ExtentList::full(0).is_empty());
        assert_eq!(pairs(&ExtentList::full(4096)), [(0, 4096)]);
        assert_eq!(pairs(&ExtentList::full(u64::MAX)), [(0, u64::MAX)]);
    }

    #[test]
    fn push() {
        let mut l = ExtentList::new();
        l.push(e(10, 10)).unwrap();
        l.push(e(20, 5)).unwrap(); // touching: kept separate
        l.push(e(3, 0)).unwrap(); // empty: ignored
        l.push(e(40, 1)).unwrap();
        assert_eq!(pairs(&l), [(10, 10), (20, 5), (40, 1)]);
        let err = l.push(e(40, 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("[40, 41) after extent 2 [40, 41)"),
            "{err}"
        );
        assert!(l.push(e(0, 1)).is_err());
        let err = l
            .push(Extent {
                offset: u64::MAX,
                length: 2,
            })
            .unwrap_err();
        assert!(err.to_string().contains("beyond"), "{err}");
        assert_eq!(l.len(), 3);
        l.push(e(u64::MAX - 1, 1)).unwrap();
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn accessors() {
        let l = list(&[(0, 2), (5, 3)]);
        assert_eq!(l.len(), 2);
        assert!(!l.is_empty());
        assert!(ExtentList::new().is_empty());
        assert_eq!(ExtentList::default(), ExtentList::new());
        assert_eq!(l.iter().count(), 2);
        assert_eq!(l.as_slice(), &[e(0, 2), e(5, 3)]);
        assert_eq!(l.as_ref(), l.as_slice());
        let mut n = 0;
        for x in &l {
            n += x.length;
        }
        assert_eq!(n, 5);
        let v: Vec<Extent> = l.clone().into_iter().collect();
        assert_eq!(v, l.clone().into_vec());
        assert_eq!(Vec::from(l.clone()), v);
        assert_eq!(l.to_string(), "[0, 2), [5, 8)");
        assert_eq!(ExtentList::new().to_string(), "(none)");
    }

    // ---- coverage ----

    #[test]
    fn total_bytes() {
        assert_eq!(ExtentList::new().total_bytes(), 0);
        assert_eq!(list(&[(0, 2), (5, 3)]).total_bytes(), 5);
        let big = list(&[(0, u64::MAX / 2), (u64::MAX / 2, u64::MAX / 2 + 1)]);
        assert_eq!(big.total_bytes(), u64::MAX);
    }

    #[test]
    fn contains_offset() {
        let l = list(&[(10, 10), (20, 5), (40, 1)]);
        for (o, want) in [
            (0, false),
            (9, false),
            (10, true),
            (19, true),
            (20, true),
            (24, true),
            (25, false),
            (39, false),
            (40, true),
            (41, false),
            (u64::MAX, false),
        ] {
            assert_eq!(l.contains_offset(o), want, "offset {o}");
        }
        assert!(!ExtentList::new().contains_offset(0));
        let top = list(&[(u64::MAX - 1, 1)]);
        assert!(top.contains_offset(u64::MAX - 1));
        assert!(!top.contains_offset(u64::MAX));
    }

    #[test]
    fn covers() {
        let l = list(&[(10, 10), (20, 5), (40, 10)]);
        assert!(l.covers(e(10, 15)), "across a touching boundary");
        assert!(l.covers(e(12, 3)));
        assert!(l.covers(e(40, 10)));
        assert!(l.covers(e(1000, 0)), "empty extent is covered");
        assert!(!l.covers(e(9, 2)));
        assert!(!l.covers(e(20, 6)));
        assert!(!l.covers(e(24, 17)), "gap in the middle");
        assert!(!l.covers(e(45, 10)), "runs past the end");
        assert!(!ExtentList::new().covers(e(0, 1)));
        assert!(ExtentList::full(u64::MAX).covers(e(0, u64::MAX)));
        assert!(ExtentList::full(u64::MAX).covers(e(u64::MAX - 1, 1)));
    }

    #[test]
    fn bounds() {
        assert_eq!(ExtentList::new().bounds(), None);
        assert_eq!(list(&[(10, 10), (40, 1)]).bounds(), Some(e(10, 31)));
    }

    #[test]
    fn complement() {
        let l = list(&[(10, 10), (20, 5), (40, 10)]);
        assert_eq!(
            pairs(&l.complement(e(0, 100))),
            [(0, 10), (25, 15), (50, 50)]
        );
        assert_eq!(pairs(&l.complement(e(12, 30))), [(25, 15)]);
        assert_eq!(pairs(&l.complement(e(10, 40))), [(25, 15)]);
        assert!(l.complement(e(40, 10)).is_empty());
        assert!(l.complement(e(5, 0)).is_empty());
        assert_eq!(pairs(&l.complement(e(60, 5))), [(60, 5)]);
        assert_eq!(pairs(&l.complement(e(0, 5))), [(0, 5)]);
        assert_eq!(
            pairs(&ExtentList::new().complement(e(0, u64::MAX))),
            [(0, u64::MAX)]
        );
        assert!(
            ExtentList::full(u64::MAX)
                .complement(e(0, u64::MAX))
                .is_empty()
        );
        let top = list(&[(u64::MAX - 10, 5)]);
        assert_eq!(
            pairs(&top.complement(e(u64::MAX - 20, 20))),
            [(u64::MAX - 20, 10), (u64::MAX - 5, 5)]
        );
    }

    #[test]
    fn clamp() {
        let l = list(&[(0, 10), (10, 10), (30, 10)]);
        assert_eq!(pairs(&l.clamp(35)), [(0, 10), (10, 10), (30, 5)], "middle");
        assert_eq!(pairs(&l.clamp(30)), [(0, 10), (10, 10)], "at a start");
        assert_eq!(pairs(&l.clamp(20)), [(0, 10), (10, 10)], "at an end");
        assert_eq!(pairs(&l.clamp(25)), [(0, 10), (10, 10)], "in a hole");
        assert_eq!(pairs(&l.clamp(1)), [(0, 1)]);
        assert!(l.clamp(0).is_empty());
        assert_eq!(l.clamp(40), l);
        assert_eq!(l.clamp(u64::MAX), l);
        assert!(ExtentList::new().clamp(10).is_empty());
    }

    // ---- algebra ----

    #[test]
    fn squash() {
        let l = list(&[(0, 10), (10, 10), (20, 1), (30, 5), (35, 5), (50, 1)]);
        let s = l.squash();
        assert_eq!(pairs(&s), [(0, 21), (30, 10), (50, 1)]);
        assert_squashed(&s);
        assert_eq!(s.squash(), s);
        assert!(ExtentList::new().squash().is_empty());
    }

    #[test]
    fn squash_with() {
        let l = list(&[(0, 10), (10, 10), (25, 5), (40, 10), (100, 1)]);
        assert_eq!(l.squash_with(0, None).unwrap(), l.squash());
        assert_eq!(
            pairs(&l.squash_with(5, None).unwrap()),
            [(0, 30), (40, 10), (100, 1)]
        );
        assert_eq!(
            pairs(&l.squash_with(10, None).unwrap()),
            [(0, 50), (100, 1)]
        );
        assert_eq!(pairs(&l.squash_with(u64::MAX, None).unwrap()), [(0, 101)]);
        // max_len stops a run; the gap at the cut is not bridged.
        assert_eq!(
            pairs(&l.squash_with(10, Some(30)).unwrap()),
            [(0, 30), (40, 10), (100, 1)]
        );
        assert_eq!(
            pairs(&l.squash_with(0, Some(15)).unwrap()),
            [(0, 10), (10, 10), (25, 5), (40, 10), (100, 1)],
            "a run that would exceed max_len ends; the next starts at the extent"
        );
        // A long extent is cut; its tail joins what follows.
        let long = list(&[(0, 25), (27, 3)]);
        assert_eq!(
            pairs(&long.squash_with(4, Some(10)).unwrap()),
            [(0, 10), (10, 10), (20, 10)]
        );
        let err = l.squash_with(1, Some(0)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("max_len"), "{err}");
        assert!(
            ExtentList::new()
                .squash_with(9, Some(1))
                .unwrap()
                .is_empty()
        );
        let top = list(&[(u64::MAX - 10, 2), (u64::MAX - 5, 5)]);
        assert_eq!(
            pairs(&top.squash_with(3, None).unwrap()),
            [(u64::MAX - 10, 10)]
        );
    }

    #[test]
    fn merge() {
        let a = list(&[(0, 10), (20, 10), (50, 5)]);
        let b = list(&[(5, 10), (30, 5), (40, 5), (100, 1)]);
        let m = a.merge(&b);
        assert_eq!(pairs(&m), [(0, 15), (20, 15), (40, 5), (50, 5), (100, 1)]);
        assert_squashed(&m);
        assert_eq!(b.merge(&a), m);
        assert_eq!(a.merge(&ExtentList::new()), a.squash());
        assert_eq!(ExtentList::new().merge(&a), a.squash());
        let touching = list(&[(0, 5), (5, 5)]);
        assert_eq!(pairs(&touching.merge(&touching)), [(0, 10)]);
    }

    #[test]
    fn intersect() {
        let a = list(&[(0, 10), (10, 10), (30, 20)]);
        let b = list(&[(5, 10), (35, 5), (40, 5), (48, 100)]);
        let i = a.intersect(&b);
        // a's boundary at 10 is kept, b's boundary at 40 is not.
        assert_eq!(pairs(&i), [(5, 5), (10, 5), (35, 10), (48, 2)]);
        assert_valid(&i);
        assert!(a.intersect(&ExtentList::new()).is_empty());
        assert!(ExtentList::new().intersect(&a).is_empty());
        assert!(list(&[(0, 5)]).intersect(&list(&[(5, 5)])).is_empty());
        assert_eq!(a.intersect(&a), a);
        assert_eq!(
            pairs(&ExtentList::full(u64::MAX).intersect(&list(&[(u64::MAX - 1, 1)]))),
            [(u64::MAX - 1, 1)]
        );
    }

    #[test]
    fn subtract() {
        let a = list(&[(0, 10), (10, 10), (30, 20), (60, 5)]);
        let b = list(&[(5, 10), (32, 2), (36, 2), (45, 20)]);
        let d = a.subtract(&b);
        assert_eq!(pairs(&d), [(0, 5), (15, 5), (30, 2), (34, 2), (38, 7)]);
        assert_valid(&d);
        assert_eq!(a.subtract(&ExtentList::new()), a);
        assert!(a.subtract(&a).is_empty());
        assert!(a.subtract(&ExtentList::full(100)).is_empty());
        assert!(ExtentList::new().subtract(&a).is_empty());
        // One extent of `other` spanning several of `self`.
        let a = list(&[(0, 10), (20, 10), (40, 10)]);
        assert_eq!(pairs(&a.subtract(&list(&[(5, 40)]))), [(0, 5), (45, 5)]);
        assert_eq!(
            pairs(&ExtentList::full(u64::MAX).subtract(&list(&[(1, u64::MAX - 2)]))),
            [(0, 1), (u64::MAX - 1, 1)]
        );
    }

    #[test]
    fn split_to_max() {
        let l = list(&[(0, 10), (10, 25), (100, 3)]);
        let s = l.split_to_max(10).unwrap();
        assert_eq!(pairs(&s), [(0, 10), (10, 10), (20, 10), (30, 5), (100, 3)]);
        assert_eq!(l.split_to_max(1000).unwrap(), l);
        assert_eq!(l.split_to_max(1).unwrap().len(), 38);
        let err = l.split_to_max(0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .contains("max_len of ExtentList::split_to_max"),
            "{err}"
        );
        let top = ExtentList::full(u64::MAX).split_to_max(1 << 63).unwrap();
        assert_eq!(pairs(&top), [(0, 1 << 63), (1 << 63, (1 << 63) - 1)]);
    }

    #[test]
    fn align_out() {
        let l = list(&[(1, 2), (600, 10), (1000, 30), (1030, 1), (4096, 512)]);
        let a = l.align_out(512).unwrap();
        assert_eq!(pairs(&a), [(0, 1536), (4096, 512)]);
        assert_squashed(&a);
        assert_eq!(l.align_out(1).unwrap(), l.squash());
        let err = l.align_out(0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("block"), "{err}");
        let top = list(&[(u64::MAX - 3, 2)]);
        assert_eq!(
            pairs(&top.align_out(4096).unwrap()),
            [(u64::MAX - 4095, 4095)],
            "an end that cannot be rounded up becomes u64::MAX"
        );
        assert!(ExtentList::new().align_out(512).unwrap().is_empty());
    }

    // ---- serde ----

    #[test]
    fn json_round_trip() {
        let l = list(&[(0, 10), (10, 10), (30, 5)]);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"[{"offset":0,"length":10},{"offset":10,"length":10},{"offset":30,"length":5}]"#
        );
        let back: ExtentList = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
        let empty: ExtentList = serde_json::from_str("[]").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn json_rejects_with_index() {
        let cases = [
            (
                r#"[{"offset":0,"length":10},{"offset":20,"length":1},{"offset":5,"length":1}]"#,
                "extent 2 [5, 6) is out of order: it starts before extent 1 [20, 21)",
            ),
            (
                r#"[{"offset":0,"length":10},{"offset":9,"length":1}]"#,
                "extent 1 [9, 10) overlaps extent 0 [0, 10)",
            ),
            (
                r#"[{"offset":0,"length":10},{"offset":10,"length":0}]"#,
                "extent 1 at offset 10 has length 0",
            ),
            (
                r#"[{"offset":18446744073709551615,"length":1}]"#,
                "extent 0 at offset 18446744073709551615 with length 1 ends beyond",
            ),
        ];
        for (json, want) in cases {
            let err = serde_json::from_str::<ExtentList>(json).unwrap_err();
            assert!(err.to_string().contains(want), "{json}: {err}");
        }
        assert!(serde_json::from_str::<ExtentList>(r#"[{"offset":1}]"#).is_err());
        assert!(serde_json::from_str::<ExtentList>(r#"{"offset":1,"length":1}"#).is_err());
    }

    // ---- properties against a byte-set oracle ----

    type Bytes = BTreeSet<u64>;

    fn bytes(l: &ExtentList) -> Bytes {
        l.iter().flat_map(|x| x.as_range()).collect()
    }

    fn ext_bytes(x: Extent) -> Bytes {
        x.as_range().collect()
    }

    /// Lists with overlaps (merged), touching extents and holes.
    fn arb_list() -> impl Strategy<Value = ExtentList> {
        let scattered = prop::collection::vec((0u64..512, 0u64..64), 0..24)
            .prop_map(|v| ExtentList::from_unsorted(v.into_iter().map(|(o, l)| e(o, l))));
        // Built in order from (gap, length) pairs: many touching extents.
        let dense = prop::collection::vec((0u64..4, 1u64..24), 0..24).prop_map(|v| {
            let mut l = ExtentList::new();
            let mut at = 0u64;
            for (gap, len) in v {
                at += gap;
                if let Err(err) = l.push(e(at, len)) {
                    panic!("{err}");
                }
                at += len;
            }
            l
        });
        prop_oneof![scattered, dense]
    }

    fn arb_extent() -> impl Strategy<Value = Extent> {
        (0u64..600, 0u64..200).prop_map(|(o, l)| e(o, l))
    }

    proptest! {
        #[test]
        fn prop_from_unsorted(v in prop::collection::vec((0u64..512, 0u64..64), 0..32)) {
            let raw: Vec<Extent> = v.iter().map(|&(o, l)| e(o, l)).collect();
            let l = ExtentList::from_unsorted(raw.iter().copied());
            assert_valid(&l);
            let want: Bytes = raw.iter().flat_map(|x| x.as_range()).collect();
            prop_assert_eq!(bytes(&l), want);
            // Shuffling the input does not change the result.
            let mut rev = raw.clone();
            rev.reverse();
            prop_assert_eq!(ExtentList::from_unsorted(rev), l.clone());
            prop_assert_eq!(ExtentList::from_sorted(l.clone().into_vec()).ok(), Some(l));
        }

        #[test]
        fn prop_coverage(a in arb_list(), x in arb_extent(), at in 0u64..700) {
            let ab = bytes(&a);
            prop_assert_eq!(a.total_bytes(), ab.len() as u64);
            prop_assert_eq!(a.contains_offset(at), ab.contains(&at));
            prop_assert_eq!(a.covers(x), ext_bytes(x).is_subset(&ab));
            match a.bounds() {
                None => prop_assert!(ab.is_empty()),
                Some(b) => {
                    prop_assert_eq!(Some(&b.offset), ab.first());
                    prop_assert_eq!(ab.last().map(|l| l + 1), Some(b.end()));
                }
            }
        }

        #[test]
        fn prop_complement(a in arb_list(), within in arb_extent()) {
            let c = a.complement(within);
            assert_squashed(&c);
            let want: Bytes = ext_bytes(within).difference(&bytes(&a)).copied().collect();
            prop_assert_eq!(bytes(&c), want);
        }

        #[test]
        fn prop_clamp(a in arb_list(), len in 0u64..700) {
            let c = a.clamp(len);
            assert_valid(&c);
            let want: Bytes = bytes(&a).into_iter().filter(|&b| b < len).collect();
            prop_assert_eq!(bytes(&c), want);
            // Boundaries below `len` survive.
            for x in &c {
                prop_assert!(a.iter().any(|y| y.offset == x.offset));
            }
        }

        #[test]
        fn prop_squash(a in arb_list()) {
            let s = a.squash();
            assert_squashed(&s);
            prop_assert_eq!(bytes(&s), bytes(&a));
            prop_assert!(s.len() <= a.len());
            prop_assert_eq!(a.squash_with(0, None).ok(), Some(s));
        }

        #[test]
        fn prop_squash_with(a in arb_list(), gap in 0u64..40, max in prop::option::of(1u64..80)) {
            let s = a.squash_with(gap, max).unwrap();
            assert_valid(&s);
            let ab = bytes(&a);
            let sb = bytes(&s);
            prop_assert!(ab.is_subset(&sb));
            // Added bytes only fill gaps of at most `gap` between data bytes.
            let holes = a.squash().complement(Extent::new(0, 1000));
            for b in sb.difference(&ab) {
                let hole = holes.iter().find(|h| h.contains(*b));
                prop_assert!(hole.is_some_and(|h| h.length <= gap && h.offset > 0));
            }
            // Every result extent starts and ends on data.
            for x in &s {
                prop_assert!(ab.contains(&x.offset) && ab.contains(&(x.end() - 1)));
                if let Some(m) = max {
                    prop_assert!(x.length <= m);
                }
            }
            if max.is_none() {
                assert_squashed(&s);
            }
        }

        #[test]
        fn prop_merge(a in arb_list(), b in arb_list()) {
            let m = a.merge(&b);
            assert_squashed(&m);
            let want: Bytes = bytes(&a).union(&bytes(&b)).copied().collect();
            prop_assert_eq!(bytes(&m), want);
            prop_assert_eq!(b.merge(&a), m);
        }

        #[test]
        fn prop_intersect(a in arb_list(), b in arb_list()) {
            let i = a.intersect(&b);
            assert_valid(&i);
            let want: Bytes = bytes(&a).intersection(&bytes(&b)).copied().collect();
            prop_assert_eq!(bytes(&i), want);
            // Each piece lies within one extent of `a`, and `a`'s boundaries
            // are the only touching points.
            for x in &i {
                prop_assert!(a.iter().any(|y| y.offset <= x.offset && x.end() <= y.end()));
            }
            for w in i.as_slice().windows(2) {
                if w[0].end() == w[1].offset {
                    prop_assert!(a.iter().any(|y| y.offset == w[1].offset));
                }
            }
            prop_assert_eq!(i.squash(), b.intersect(&a).squash());
        }

        #[test]
        fn prop_subtract(a in arb_list(), b in arb_list()) {
            let d = a.subtract(&b);
            assert_valid(&d);
            let ab = bytes(&a);
            let want: Bytes = ab.difference(&bytes(&b)).copied().collect();
            prop_assert_eq!(bytes(&d), want);
            for x in &d {
                prop_assert!(a.iter().any(|y| y.offset <= x.offset && x.end() <= y.end()));
            }
            // (A∖B) ∩ B = ∅ and (A∖B) ∪ (A∩B) = A.
            prop_assert!(d.intersect(&b).is_empty());
            let back = d.merge(&a.intersect(&b));
            prop_assert_eq!(bytes(&back), ab);
            prop_assert_eq!(back, a.squash());
        }

        #[test]
        fn prop_split_to_max(a in arb_list(), max in 1u64..40) {
            let s = a.split_to_max(max).unwrap();
            assert_valid(&s);
            prop_assert_eq!(bytes(&s), bytes(&a));
            prop_assert!(s.iter().all(|x| x.length <= max));
            prop_assert_eq!(s.squash(), a.squash());
            prop_assert_eq!(s.total_bytes(), a.total_bytes());
        }

        #[test]
        fn prop_align_out(a in arb_list(), block in 1u64..100) {
            let al = a.align_out(block).unwrap();
            assert_squashed(&al);
            let want: Bytes = bytes(&a)
                .iter()
                .flat_map(|b| {
                    let s = b - b % block;
                    s..s + block
                })
                .collect();
            prop_assert_eq!(bytes(&al), want);
            for x in &al {
                prop_assert!(x.offset % block == 0 && x.end() % block == 0);
            }
        }

        #[test]
        fn prop_json_round_trip(a in arb_list()) {
            let json = serde_json::to_string(&a).unwrap();
            let back: ExtentList = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
