//! The disk model behind the OVM exporter double: an OCFS2-like volume of
//! "physical" clusters with reference counts, live disks as sparse files
//! plus an allocation map (logical cluster -> physical cluster), and
//! snapshots as real sparse copies that share the live disk's physical
//! clusters until the guest overwrites them (copy on write).
//!
//! The rules, which decide how a snapshot's FIEMAP-like extents look:
//!
//! - A guest write to an **unmapped** cluster allocates a fresh physical
//!   cluster. One write call allocates its fresh clusters as one contiguous
//!   physical run (the allocator is a bump pointer), so a large write forms
//!   one extent.
//! - A write to a cluster **shared** with a snapshot (refcount > 1) copies
//!   it on write: the live map points to a fresh physical cluster, the old
//!   one keeps the snapshot's reference.
//! - A write to an **unshared** mapped cluster writes in place.
//! - A trim unmaps the whole clusters it covers (a hole in the live file,
//!   the physical cluster loses a reference) and zeroes the partial ones
//!   (a write of zeros, so copy on write applies; a partial cluster that is
//!   unmapped already reads as zeros and is left alone).
//! - Extents are runs of mapped clusters contiguous both logically and
//!   physically, capped at a maximum length, in bytes; the last one covers
//!   a whole cluster even when the disk ends inside it (like FIEMAP, which
//!   reports whole filesystem clusters).
//!
//! Physical clusters are never reused (the bump pointer only grows), so a
//! physical address names one version of one cluster's data for the
//! lifetime of the server.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

/// One extent of a snapshot file, in bytes (the exporter's `Chunk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Chunk {
    /// Logical byte offset in the disk image.
    pub(crate) start: u64,
    /// Length in bytes, a multiple of the cluster size.
    pub(crate) length: u64,
    /// "Physical" byte offset on the volume.
    pub(crate) physical_start: u64,
}

/// The volume's physical clusters: a bump allocator and reference counts.
#[derive(Debug)]
pub(crate) struct Volume {
    next: u64,
    refs: HashMap<u64, u32>,
}

impl Volume {
    /// A volume whose first allocated cluster is `first`.
    pub(crate) fn new(first: u64) -> Volume {
        Volume {
            next: first,
            refs: HashMap::new(),
        }
    }

    /// Allocates `count` contiguous fresh clusters with one reference each
    /// and returns the first.
    fn alloc(&mut self, count: u64) -> u64 {
        let first = self.next;
        self.next += count;
        for cluster in first..first + count {
            self.refs.insert(cluster, 1);
        }
        first
    }

    fn incref(&mut self, cluster: u64) {
        *self.refs.entry(cluster).or_insert(0) += 1;
    }

    fn decref(&mut self, cluster: u64) {
        if let Some(count) = self.refs.get_mut(&cluster) {
            *count -= 1;
            if *count == 0 {
                self.refs.remove(&cluster);
            }
        }
    }

    /// The number of maps (live disk and snapshots) referencing `cluster`.
    pub(crate) fn refcount(&self, cluster: u64) -> u32 {
        self.refs.get(&cluster).copied().unwrap_or(0)
    }

    /// The number of physical clusters in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.refs.len()
    }
}

/// A disk's allocation map: logical cluster -> physical cluster.
#[derive(Clone, Debug)]
pub(crate) struct AllocMap {
    cluster_size: u64,
    size: u64,
    map: Vec<Option<u64>>,
}

impl AllocMap {
    /// An empty (fully unmapped) map for a disk of `size` bytes.
    pub(crate) fn new(size: u64, cluster_size: u64) -> AllocMap {
        let clusters = size.div_ceil(cluster_size);
        AllocMap {
            cluster_size,
            size,
            map: vec![None; clusters as usize],
        }
    }

    /// The physical cluster behind logical cluster `cluster`.
    pub(crate) fn get(&self, cluster: u64) -> Option<u64> {
        self.map.get(cluster as usize).copied().flatten()
    }

    /// Number of mapped clusters.
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> u64 {
        self.map.iter().filter(|c| c.is_some()).count() as u64
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} lies outside the {} byte disk",
                    self.size
                ),
            )),
        }
    }

    /// Maps the clusters a guest write of `[offset, offset + len)` touches:
    /// unmapped and shared clusters get fresh physical clusters (one
    /// contiguous run per run of such clusters), unshared ones stay.
    pub(crate) fn write(&mut self, volume: &mut Volume, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / self.cluster_size;
        let last = (offset + len - 1) / self.cluster_size;
        let mut cluster = first;
        while cluster <= last {
            let needs_fresh = |c: u64, map: &AllocMap, volume: &Volume| match map.get(c) {
                None => true,
                Some(p) => volume.refcount(p) > 1,
            };
            if !needs_fresh(cluster, self, volume) {
                cluster += 1;
                continue;
            }
            let mut end = cluster + 1;
            while end <= last && needs_fresh(end, self, volume) {
                end += 1;
            }
            let fresh = volume.alloc(end - cluster);
            for (i, c) in (cluster..end).enumerate() {
                if let Some(old) = self.map[c as usize] {
                    volume.decref(old);
                }
                self.map[c as usize] = Some(fresh + i as u64);
            }
            cluster = end;
        }
        Ok(())
    }

    /// Unmaps logical clusters `first..end`, dropping their references.
    fn unmap(&mut self, volume: &mut Volume, first: u64, end: u64) {
        for c in first..end {
            if let Some(old) = self.map[c as usize].take() {
                volume.decref(old);
            }
        }
    }

    /// A copy of this map sharing every physical cluster (refcounts + 1).
    pub(crate) fn share(&self, volume: &mut Volume) -> AllocMap {
        for p in self.map.iter().flatten() {
            volume.incref(*p);
        }
        self.clone()
    }

    /// Drops this map's references (a deleted snapshot).
    pub(crate) fn release(&self, volume: &mut Volume) {
        for p in self.map.iter().flatten() {
            volume.decref(*p);
        }
    }

    /// The FIEMAP-like extents: runs contiguous logically and physically,
    /// at most `max_clusters` clusters each, in bytes.
    pub(crate) fn extents(&self, max_clusters: u64) -> Vec<Chunk> {
        let max_clusters = max_clusters.max(1);
        let mut out: Vec<Chunk> = Vec::new();
        let mut run: Option<(u64, u64, u64)> = None; // (logical, physical, count)
        for (c, p) in self.map.iter().enumerate() {
            let c = c as u64;
            run = match (run, *p) {
                (Some((l, ph, n)), Some(p)) if l + n == c && ph + n == p && n < max_clusters => {
                    Some((l, ph, n + 1))
                }
                (current, p) => {
                    if let Some((l, ph, n)) = current {
                        out.push(self.chunk(l, ph, n));
                    }
                    p.map(|p| (c, p, 1))
                }
            };
        }
        if let Some((l, ph, n)) = run {
            out.push(self.chunk(l, ph, n));
        }
        out
    }

    fn chunk(&self, logical: u64, physical: u64, count: u64) -> Chunk {
        Chunk {
            start: logical * self.cluster_size,
            length: count * self.cluster_size,
            physical_start: physical * self.cluster_size,
        }
    }

    /// Logically contiguous runs of mapped clusters as byte ranges
    /// `(offset, len)`, clamped to the disk size.
    pub(crate) fn mapped_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (c, p) in self.map.iter().enumerate() {
            if p.is_none() {
                continue;
            }
            let start = c as u64 * self.cluster_size;
            let end = (start + self.cluster_size).min(self.size);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l = end - *s,
                _ => out.push((start, end - start)),
            }
        }
        out
    }
}

/// A live disk: its sparse file and allocation map.
#[derive(Debug)]
pub(crate) struct LiveDisk {
    file: File,
    map: AllocMap,
    cluster_size: u64,
    size: u64,
}

impl LiveDisk {
    /// Creates the sparse file `path` of `size` bytes (it must not exist).
    pub(crate) fn create(path: &Path, size: u64, cluster_size: u64) -> io::Result<LiveDisk> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(LiveDisk {
            file,
            map: AllocMap::new(size, cluster_size),
            cluster_size,
            size,
        })
    }

    /// The allocation map.
    pub(crate) fn map(&self) -> &AllocMap {
        &self.map
    }

    /// A guest write.
    pub(crate) fn write(
        &mut self,
        volume: &mut Volume,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.map.write(volume, offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)
    }

    /// A guest trim (discard) of `[offset, offset + len)`.
    pub(crate) fn trim(&mut self, volume: &mut Volume, offset: u64, len: u64) -> io::Result<()> {
        self.map.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let cs = self.cluster_size;
        // A cluster counts as whole when the range covers all of its bytes
        // inside the disk (the last cluster may be cut short by the size).
        let first_whole = offset.div_ceil(cs);
        let end_whole = if end == self.size {
            self.size.div_ceil(cs)
        } else {
            end / cs
        };
        if first_whole < end_whole {
            self.map.unmap(volume, first_whole, end_whole);
            let hole_start = first_whole * cs;
            let hole_end = (end_whole * cs).min(self.size);
            punch_hole(&self.file, hole_start, hole_end - hole_start)?;
            self.zero_partial(volume, offset, hole_start.min(end))?;
            self.zero_partial(volume, hole_end.max(offset), end)?;
        } else {
            self.zero_partial(volume, offset, end)?;
        }
        Ok(())
    }

    /// Zeroes `[start, end)` (inside at most two partial clusters) where it
    /// is mapped.
    fn zero_partial(&mut self, volume: &mut Volume, start: u64, end: u64) -> io::Result<()> {
        let mut pos = start;
        while pos < end {
            let cluster = pos / self.cluster_size;
            let stop = ((cluster + 1) * self.cluster_size).min(end);
            if self.map.get(cluster).is_some() {
                let zeros = vec![0u8; (stop - pos) as usize];
                self.write(volume, pos, &zeros)?;
            }
            pos = stop;
        }
        Ok(())
    }

    /// Copies the live disk into a new sparse file at `path` (only the
    /// mapped clusters) and returns the snapshot's map, which shares every
    /// physical cluster. On error the new file is removed.
    pub(crate) fn snapshot_to(&self, volume: &mut Volume, path: &Path) -> io::Result<AllocMap> {
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let result = (|| {
            out.set_len(self.size)?;
            for (offset, len) in self.map.mapped_ranges() {
                copy_range(&self.file, &out, offset, len)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(self.map.share(volume)),
            Err(error) => {
                let _ = std::fs::remove_file(path);
                Err(error)
            }
        }
    }
}

/// Deallocates `[offset, offset + len)` of `file`, keeping its size; falls
/// back to writing zeros where the filesystem cannot punch holes.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    if len == 0 {
        return Ok(());
    }
    match fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(()),
        Err(_) => {
            let zeros = vec![0u8; 1 << 20];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        }
    }
}

/// Copies `[offset, offset + len)` from `src` to the same offset of `dst`,
/// in the kernel when it can.
fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let mut off_in = pos;
        let mut off_out = pos;
        let want = (end - pos).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(n) if n > 0 => pos += n as u64,
            _ => break,
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos)?;
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 4096;

    fn chunk(start: u64, length: u64, physical_start: u64) -> Chunk {
        Chunk {
            start,
            length,
            physical_start,
        }
    }

    #[test]
    fn fresh_write_is_one_extent_and_unaligned_size_rounds_up() {
        let mut vol = Volume::new(100);
        let mut map = AllocMap::new(10 * CS + 1, CS);
        assert!(map.extents(u64::MAX).is_empty());
        map.write(&mut vol, 1, 3 * CS).unwrap(); // touches clusters 0..=3
        assert_eq!(map.extents(u64::MAX), vec![chunk(0, 4 * CS, 100 * CS)]);
        // The last cluster holds one byte of the disk; its extent is whole.
        map.write(&mut vol, 10 * CS, 1).unwrap();
        assert_eq!(
            map.extents(u64::MAX),
            vec![chunk(0, 4 * CS, 100 * CS), chunk(10 * CS, CS, 104 * CS)]
        );
        assert_eq!(map.mapped_ranges(), vec![(0, 4 * CS), (10 * CS, 1)]);
        assert!(map.write(&mut vol, 10 * CS, 2).is_err());
        assert!(map.write(&mut vol, u64::MAX, 2).is_err());
        assert_eq!(vol.in_use(), 5);
    }

    #[test]
    fn unshared_overwrite_is_in_place_and_max_extent_caps() {
        let mut vol = Volume::new(0);
        let mut map = AllocMap::new(8 * CS, CS);
        map.write(&mut vol, 0, 8 * CS).unwrap();
        map.write(&mut vol, 3 * CS, 10).unwrap();
        assert_eq!(map.extents(u64::MAX), vec![chunk(0, 8 * CS, 0)]);
        assert_eq!(
            map.extents(3),
            vec![
                chunk(0, 3 * CS, 0),
                chunk(3 * CS, 3 * CS, 3 * CS),
                chunk(6 * CS, 2 * CS, 6 * CS)
            ]
        );
        assert_eq!(vol.in_use(), 8);
    }

    #[test]
    fn cow_write_splits_the_live_extent_and_keeps_the_snapshot() {
        let mut vol = Volume::new(10);
        let mut live = AllocMap::new(8 * CS, CS);
        live.write(&mut vol, 0, 8 * CS).unwrap();
        let snap = live.share(&mut vol);
        assert_eq!(vol.refcount(10), 2);
        // A partial overwrite of cluster 3 (shared) moves it.
        live.write(&mut vol, 3 * CS + 5, 10).unwrap();
        assert_eq!(
            live.extents(u64::MAX),
            vec![
                chunk(0, 3 * CS, 10 * CS),
                chunk(3 * CS, CS, 18 * CS),
                chunk(4 * CS, 4 * CS, 14 * CS)
            ]
        );
        assert_eq!(snap.extents(u64::MAX), vec![chunk(0, 8 * CS, 10 * CS)]);
        assert_eq!(vol.refcount(13), 1); // only the snapshot
        assert_eq!(vol.refcount(18), 1); // only the live disk
        assert_eq!(vol.refcount(12), 2);
        // Writing the moved cluster again is in place (no longer shared).
        live.write(&mut vol, 3 * CS, CS).unwrap();
        assert_eq!(live.get(3), Some(18));
        // Two shared neighbours written in one call get one fresh run.
        live.write(&mut vol, 5 * CS, 2 * CS).unwrap();
        assert_eq!((live.get(5), live.get(6)), (Some(19), Some(20)));
        // Deleting the snapshot frees what only it held.
        snap.release(&mut vol);
        assert_eq!(vol.refcount(13), 0);
        assert_eq!(vol.refcount(15), 0);
        assert_eq!(vol.refcount(10), 1);
        assert_eq!(vol.in_use(), 8);
    }

    #[test]
    fn trim_unmaps_whole_clusters_and_zeroes_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = Volume::new(0);
        let path = dir.path().join("d.img");
        let size = 6 * CS + 100;
        let mut disk = LiveDisk::create(&path, size, CS).unwrap();
        disk.write(&mut vol, 0, &vec![0xAB; size as usize]).unwrap();
        let snap = disk.map().share(&mut vol);
        // Trim from the middle of cluster 1 to the middle of cluster 4:
        // clusters 2 and 3 unmapped, 1 and 4 zeroed in part (CoW).
        disk.trim(&mut vol, CS + 10, 3 * CS).unwrap();
        assert_eq!(disk.map().get(2), None);
        assert_eq!(disk.map().get(3), None);
        assert_eq!(disk.map().get(1), Some(7)); // fresh: it was shared
        assert_eq!(disk.map().get(4), Some(8));
        assert_eq!(disk.map().get(0), Some(0));
        assert_eq!(vol.refcount(2), 1); // the snapshot still holds it
        let data = std::fs::read(&path).unwrap();
        assert!(data[..(CS + 10) as usize].iter().all(|b| *b == 0xAB));
        assert!(
            data[(CS + 10) as usize..(4 * CS + 10) as usize]
                .iter()
                .all(|b| *b == 0)
        );
        assert!(data[(4 * CS + 10) as usize..].iter().all(|b| *b == 0xAB));
        // Trimming to the end of the disk unmaps the short last cluster.
        disk.trim(&mut vol, 5 * CS, CS + 100).unwrap();
        assert_eq!(disk.map().get(5), None);
        assert_eq!(disk.map().get(6), None);
        // A partial trim of an unmapped cluster allocates nothing.
        disk.trim(&mut vol, 2 * CS + 1, 10).unwrap();
        assert_eq!(disk.map().get(2), None);
        assert!(disk.trim(&mut vol, size, 1).is_err());
        snap.release(&mut vol);
        assert_eq!(vol.in_use() as u64, disk.map().mapped());
    }

    #[test]
    fn snapshot_copy_is_sparse_and_identical() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = Volume::new(0);
        let path = dir.path().join("d.img");
        let size = 64 * CS;
        let mut disk = LiveDisk::create(&path, size, CS).unwrap();
        disk.write(&mut vol, 5 * CS + 7, b"hello").unwrap();
        disk.write(&mut vol, 40 * CS, &vec![9u8; 3 * CS as usize])
            .unwrap();
        let snap_path = dir.path().join("s.img");
        let map = disk.snapshot_to(&mut vol, &snap_path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&snap_path).unwrap()
        );
        assert_eq!(map.mapped(), 4);
        assert_eq!(vol.refcount(map.get(40).unwrap()), 2);
        // The copy only holds the mapped clusters.
        let blocks = rustix::fs::fstat(File::open(&snap_path).unwrap())
            .unwrap()
            .st_blocks;
        assert!((blocks as u64) * 512 <= 8 * CS, "{blocks} blocks allocated");
        // The snapshot is unaffected by later writes.
        disk.write(&mut vol, 40 * CS, b"changed").unwrap();
        assert_eq!(std::fs::read(&snap_path).unwrap()[(40 * CS) as usize], 9);
        // An existing target is refused and left alone.
        assert!(disk.snapshot_to(&mut vol, &snap_path).is_err());
        assert!(snap_path.exists());
    }
}
