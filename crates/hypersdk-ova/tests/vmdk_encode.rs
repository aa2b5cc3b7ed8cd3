//! The streamOptimized encoder against qemu-img and against the format:
//! generated raw images (random, zeros, mixed, not grain-aligned, past
//! 4 GiB and sparse) are encoded, then `qemu-img compare` must find them
//! identical to the raw image, `qemu-img check` clean and `qemu-img info`
//! a streamOptimized VMDK of the right size; a structural walk checks every
//! marker, table and pointer; and the options, determinism, errors and the
//! stream variants are checked.
//!
//! qemu-img is required (`apt-get install -y qemu-utils`): a missing one
//! fails the tests, it never skips them.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use hypersdk_core::blocks::{BlockSource, BytesSource, FileSource};
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::progress::{CallbackSink, Progress};
use hypersdk_core::{Error, ErrorKind};
use hypersdk_ova::vmdk::encode::{
    AdapterType, EncodeOptions, EncodeReport, encode_stream, encode_to_file, encode_to_stream,
    encoded_len, raw_to_vmdk,
};
use hypersdk_ova::vmdk::format::{Descriptor, GD_AT_END, Marker, MarkerType, SparseHeader};
use hypersdk_testkit::images::{self, Fill, RawImage};
use hypersdk_testkit::qemu;

/// What a structural walk of a stream found.
#[derive(Debug)]
struct Walk {
    header: SparseHeader,
    footer: SparseHeader,
    descriptor: Descriptor,
    /// (lba, marker sector) of every grain, in stream order.
    grains: Vec<(u64, u64)>,
    /// Sector of the data of every grain table, in stream order.
    tables: Vec<u64>,
    /// The grain directory.
    directory: Vec<u32>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Walks an encoded stream marker by marker and checks the layout rules:
/// markers on sector boundaries, grains in increasing LBA order, each grain
/// table after the grains it covers and pointing at their markers, the
/// directory pointing at the tables' data, footer marker + footer + EOS as
/// the last three sectors, footer = header with the real directory offset.
fn walk(vmdk: &[u8]) -> Walk {
    assert_eq!(vmdk.len() % 512, 0, "not a whole number of sectors");
    let header = SparseHeader::parse("vmdk", &vmdk[..512]).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(header.flags, 0x30001);
    assert_eq!(header.gd_offset, GD_AT_END);
    assert_eq!(header.num_gtes_per_gt, 512);
    assert_eq!(header.compress_algorithm, 1);
    assert_eq!(header.descriptor_offset, 1);
    assert_eq!(header.overhead % 128, 0);
    let desc_end = 512 * (1 + header.descriptor_size as usize);
    let descriptor = Descriptor::parse("vmdk", &vmdk[512..desc_end]).unwrap();
    assert!(
        vmdk[desc_end..header.overhead as usize * 512]
            .iter()
            .all(|&b| b == 0)
    );

    let n = vmdk.len() / 512;
    // The last three sectors.
    assert_eq!(
        Marker::parse("vmdk", &vmdk[(n - 3) * 512..], 0).unwrap(),
        Marker::Metadata {
            kind: MarkerType::Footer,
            sectors: 1
        }
    );
    let footer = SparseHeader::parse("vmdk", &vmdk[(n - 2) * 512..(n - 1) * 512]).unwrap();
    assert!(vmdk[(n - 1) * 512..].iter().all(|&b| b == 0), "EOS");
    let mut expect_footer = header;
    expect_footer.gd_offset = footer.gd_offset;
    assert_eq!(footer, expect_footer);

    let grain_bytes = header.grain_bytes();
    let per_gt = u64::from(header.num_gtes_per_gt);
    let mut grains = Vec::new();
    let mut tables = Vec::new();
    let mut directory = Vec::new();
    let mut pending: Vec<(u64, u64)> = Vec::new(); // grains not yet in a table
    let mut sector = header.overhead as usize;
    let mut last_lba = None;
    let mut gts_seen = 0u64;
    loop {
        let at = sector * 512;
        match Marker::parse("vmdk", &vmdk[at..at + 512], at as u64).unwrap() {
            Marker::Grain { lba, size } => {
                assert_eq!(lba % header.grain_size, 0, "grain lba {lba} not aligned");
                assert!(lba < header.capacity);
                if let Some(prev) = last_lba {
                    assert!(lba > prev, "grain {lba} after {prev}");
                }
                last_lba = Some(lba);
                assert_eq!(&vmdk[at + 12..at + 13], &[0x78], "zlib header");
                assert!(u64::from(size) <= grain_bytes + 16, "grain of {size} bytes");
                let end = at + 12 + size as usize;
                assert!(
                    vmdk[end..end.next_multiple_of(512)].iter().all(|&b| b == 0),
                    "padding"
                );
                grains.push((lba, sector as u64));
                pending.push((lba, sector as u64));
                sector = end.div_ceil(512);
            }
            Marker::Metadata {
                kind: MarkerType::GrainTable,
                sectors,
            } => {
                assert_eq!(sectors, 4);
                let data = &vmdk[at + 512..at + 512 + 2048];
                // Which table is this? The one of its grains; an empty table
                // is the next in order.
                let index = pending
                    .first()
                    .map(|(lba, _)| lba / header.gt_coverage())
                    .unwrap_or(gts_seen);
                for (lba, marker) in pending.drain(..) {
                    assert_eq!(lba / header.gt_coverage(), index, "grain in a later table");
                    let entry = (lba % header.gt_coverage()) / header.grain_size;
                    assert_eq!(u64::from(u32_at(data, entry as usize * 4)), marker);
                }
                let set = (0..per_gt as usize)
                    .filter(|i| u32_at(data, i * 4) != 0)
                    .count();
                let covered = grains
                    .iter()
                    .filter(|(lba, _)| lba / header.gt_coverage() == index)
                    .count();
                assert_eq!(set, covered, "table {index} has stray entries");
                tables.push(sector as u64 + 1);
                gts_seen = index + 1;
                sector += 5;
            }
            Marker::Metadata {
                kind: MarkerType::GrainDirectory,
                sectors,
            } => {
                assert!(pending.is_empty(), "grains without a table");
                assert_eq!(footer.gd_offset, sector as u64 + 1);
                let entries = header.gd_entries() as usize;
                assert_eq!(sectors, ((entries * 4).div_ceil(512)).max(1) as u64);
                let data = &vmdk[at + 512..at + 512 + 512 * sectors as usize];
                directory = (0..entries).map(|i| u32_at(data, i * 4)).collect();
                assert!(data[entries * 4..].iter().all(|&b| b == 0));
                sector += 1 + sectors as usize;
            }
            Marker::Metadata {
                kind: MarkerType::Footer,
                ..
            } => {
                assert_eq!(sector, n - 3, "footer not at the end");
                break;
            }
            other => panic!("unexpected {other:?} at sector {sector}"),
        }
    }
    // Every table is in the directory, at its index.
    let mut listed: Vec<u64> = directory
        .iter()
        .filter(|&&e| e != 0)
        .map(|&e| u64::from(e))
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, tables);
    for (lba, _) in &grains {
        assert_ne!(directory[(lba / header.gt_coverage()) as usize], 0);
    }
    Walk {
        header,
        footer,
        descriptor,
        grains,
        tables,
        directory,
    }
}

/// The qemu-img cross-checks of an encoded image against its raw source.
async fn qemu_agrees(raw: &Path, vmdk: &Path, len: u64) {
    assert!(
        qemu::compare(raw, vmdk).await.unwrap(),
        "qemu-img compare: {} and {} differ",
        raw.display(),
        vmdk.display()
    );
    let check = qemu::check(vmdk).await.unwrap();
    assert_eq!(check["check-errors"], 0, "{check}");
    assert!(check.get("corruptions").is_none_or(|c| c == 0), "{check}");
    let info = qemu::info(vmdk).await.unwrap();
    assert_eq!(info.format, "vmdk");
    assert_eq!(info.create_type.as_deref(), Some("streamOptimized"));
    assert_eq!(info.virtual_size, len.next_multiple_of(512));
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_images_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let cases: Vec<(&str, RawImage)> = blocking(move || {
        vec![
            (
                "random",
                images::random(d.join("random.raw"), 3 << 20, 1).unwrap(),
            ),
            (
                "zeros",
                images::zeros(d.join("zeros.raw"), 40 << 20).unwrap(),
            ),
            (
                "mixed",
                images::mixed(d.join("mixed.raw"), 48 << 20, 2, 40).unwrap(),
            ),
            (
                "unaligned",
                images::unaligned(d.join("unaligned.raw"), 3).unwrap(),
            ),
            (
                "large_sparse",
                images::large_sparse(d.join("large.raw"), 4).unwrap(),
            ),
        ]
    })
    .await;
    for (name, raw) in cases {
        let vmdk = dir.path().join(format!("{name}.vmdk"));
        let started = std::time::Instant::now();
        let report = raw_to_vmdk(&raw.path, &vmdk, &EncodeOptions::default())
            .await
            .unwrap();
        eprintln!("{name}: {report:?} in {:?}", started.elapsed());
        assert!(!Path::new(&format!("{}.part", vmdk.display())).exists());
        qemu_agrees(&raw.path, &vmdk, raw.len).await;

        let bytes = std::fs::read(&vmdk).unwrap();
        assert_eq!(report.bytes_written, bytes.len() as u64);
        assert_eq!(report.capacity, raw.len.next_multiple_of(512));
        let w = walk(&bytes);
        assert_eq!(w.header.capacity * 512, report.capacity);
        assert_eq!(w.grains.len() as u64, report.grains);
        assert_eq!(w.tables.len() as u64, report.grain_tables);
        // Holes are never read: only the data, widened to grains.
        let expected_read = raw
            .allocated
            .align_out(65536)
            .unwrap()
            .clamp(raw.len)
            .total_bytes();
        assert_eq!(report.bytes_read, expected_read, "{name}");
        // Exactly the grains holding data are written.
        let with_data = raw.allocated.align_out(65536).unwrap().total_bytes() / 65536;
        assert!(report.grains <= with_data);
        assert_eq!(
            report.grains + report.zero_grains,
            expected_read.div_ceil(65536)
        );
        match name {
            "zeros" => {
                assert_eq!(report.grains, 0);
                assert_eq!(report.bytes_read, 0);
                assert!(w.directory.iter().all(|&e| e == 0));
            }
            "random" => assert_eq!(report.grains, 48),
            "large_sparse" => {
                // Data in tables 0, 64, 127 (the run straddling 4 GiB
                // starts there) and 128 (it ends there, with the last run)
                // of the 129.
                assert_eq!(w.directory.len(), 129);
                assert_eq!(report.grain_tables, 4);
                assert!(bytes.len() < 4 << 20);
            }
            _ => {}
        }

        let d = &w.descriptor;
        assert_eq!(d.create_type(), Some("streamOptimized"));
        assert_eq!(d.get("version"), Some("1"));
        assert_eq!(d.get("parentCID"), Some("ffffffff"));
        let cid = u32::from_str_radix(d.get("CID").unwrap(), 16).unwrap();
        assert!(cid < 0xffff_fffe);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].access, "RDONLY");
        assert_eq!(d.extents[0].kind, "SPARSE");
        assert_eq!(d.extents[0].sectors, w.header.capacity);
        assert_eq!(d.extents[0].file.as_deref(), Some("generated-stream.vmdk"));
        assert_eq!(d.ddb("adapterType"), Some("lsilogic"));
        assert_eq!(d.ddb("geometry.heads"), Some("255"));
        assert_eq!(d.ddb("geometry.sectors"), Some("63"));
        let cyl: u64 = d.ddb("geometry.cylinders").unwrap().parse().unwrap();
        assert_eq!(cyl, w.header.capacity.div_ceil(255 * 63));
        assert_eq!(d.ddb("virtualHWVersion"), Some("4"));
        assert_eq!(w.footer.capacity, w.header.capacity);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grain_table_written_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.raw");
    // Data in tables 0 and 3 of 5 (32 MiB each), none in 1, 2 and 4.
    let raw = blocking(move || {
        images::build(
            &path,
            (128 << 20) + (5 << 20),
            9,
            &[
                (Extent::new(4096, 200 << 10), Fill::Text),
                (Extent::new((96 << 20) + 512, 70 << 10), Fill::Random),
            ],
        )
        .unwrap()
    })
    .await;
    let opts = EncodeOptions::default()
        .with_write_empty_grain_tables(true)
        .with_adapter_type(AdapterType::Ide)
        .with_hw_version(10)
        .with_tools_install_type(Some(4))
        .with_cid(Some(0x1234_abcd));
    let vmdk = dir.path().join("all-tables.vmdk");
    let report = raw_to_vmdk(&raw.path, &vmdk, &opts).await.unwrap();
    qemu_agrees(&raw.path, &vmdk, raw.len).await;
    let w = walk(&std::fs::read(&vmdk).unwrap());
    assert_eq!(w.directory.len(), 5);
    assert!(w.directory.iter().all(|&e| e != 0));
    assert_eq!(report.grain_tables, 5);
    // Tables in directory order.
    let mut sorted = w.directory.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, w.directory);
    let d = &w.descriptor;
    assert_eq!(d.ddb("adapterType"), Some("ide"));
    assert_eq!(d.ddb("geometry.heads"), Some("16"));
    assert_eq!(d.ddb("virtualHWVersion"), Some("10"));
    assert_eq!(d.ddb("toolsInstallType"), Some("4"));
    assert_eq!(d.get("CID"), Some("1234abcd"));

    // Without the option: only tables 0 and 3.
    let sparse = dir.path().join("sparse-tables.vmdk");
    let report = raw_to_vmdk(&raw.path, &sparse, &EncodeOptions::default())
        .await
        .unwrap();
    let w = walk(&std::fs::read(&sparse).unwrap());
    assert_eq!(report.grain_tables, 2);
    assert_eq!(
        w.directory.iter().map(|&e| e != 0).collect::<Vec<_>>(),
        [true, false, false, true, false]
    );
    qemu_agrees(&raw.path, &sparse, raw.len).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_whatever_the_parallelism_and_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.raw");
    let raw = blocking(move || images::mixed(&path, 40 << 20, 11, 50).unwrap()).await;
    let source: Arc<dyn BlockSource> = Arc::new(FileSource::open(&raw.path).await.unwrap());
    let mut outputs = Vec::new();
    for p in [1, 3, 8] {
        let mut out = Vec::new();
        encode_stream(
            Arc::clone(&source),
            &mut out,
            &EncodeOptions::default().with_parallelism(p),
        )
        .await
        .unwrap();
        outputs.push(out);
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let opts = EncodeOptions::default();
    let streamed: Vec<Bytes> = encode_to_stream(Arc::clone(&source), &opts)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.concat(), outputs[0]);
    assert_eq!(
        encoded_len(Arc::clone(&source), &opts).await.unwrap(),
        outputs[0].len() as u64
    );
    // A source that cannot tell its extents gives the same stream: zero
    // grains are dropped after reading.
    let data = Bytes::from(std::fs::read(&raw.path).unwrap());
    let mut out = Vec::new();
    let report = encode_stream(Arc::new(BytesSource::new("mem", data)), &mut out, &opts)
        .await
        .unwrap();
    assert_eq!(out, outputs[0]);
    assert_eq!(report.bytes_read, raw.len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_level_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.raw");
    let raw = blocking(move || {
        images::build(&path, 8 << 20, 5, &[(Extent::new(0, 8 << 20), Fill::Text)]).unwrap()
    })
    .await;
    let source: Arc<dyn BlockSource> = Arc::new(FileSource::open(&raw.path).await.unwrap());
    let mut sizes = Vec::new();
    for level in [0, 1, 6, 9] {
        let opts = EncodeOptions::default().with_compression_level(level);
        let n = encoded_len(Arc::clone(&source), &opts).await.unwrap();
        sizes.push(n);
    }
    eprintln!("text, levels 0/1/6/9: {sizes:?}");
    assert!(sizes[0] > raw.len, "level 0 stores: {sizes:?}");
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2] && sizes[2] >= sizes[3]);
    let vmdk = dir.path().join("l0.vmdk");
    raw_to_vmdk(
        &raw.path,
        &vmdk,
        &EncodeOptions::default().with_compression_level(0),
    )
    .await
    .unwrap();
    qemu_agrees(&raw.path, &vmdk, raw.len).await;
}

/// A source whose reads fail past a given offset.
#[derive(Debug)]
struct Failing {
    inner: BytesSource,
    fail_from: u64,
}

#[async_trait]
impl BlockSource for Failing {
    fn describe(&self) -> String {
        "failing disk".into()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    async fn read_range(&self, range: Extent) -> hypersdk_core::Result<Bytes> {
        if range.end() > self.fail_from {
            return Err(Error::invalid_data("failing disk", "injected read error"));
        }
        self.inner.read_range(range).await
    }

    async fn allocated_extents(&self) -> hypersdk_core::Result<Option<ExtentList>> {
        Ok(Some(ExtentList::full(self.len())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_propagate_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = Bytes::from(vec![0x5au8; 12 << 20]);
    let failing = Arc::new(Failing {
        inner: BytesSource::new("mem", data.clone()),
        fail_from: 7 << 20,
    });
    let out = dir.path().join("fail.vmdk");
    let err = encode_to_file(failing.clone(), &out, &EncodeOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected read error"), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // The stream variant ends with the error.
    let res: hypersdk_core::Result<Vec<Bytes>> =
        encode_to_stream(failing, &EncodeOptions::default())
            .try_collect()
            .await;
    assert!(res.unwrap_err().to_string().contains("injected"));

    // An existing output is refused and left alone.
    std::fs::write(&out, b"keep me").unwrap();
    let ok = Arc::new(BytesSource::new("mem", data));
    let err = encode_to_file(ok.clone(), &out, &EncodeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    // Bad options, a missing input.
    let err = encode_stream(
        ok,
        Vec::new(),
        &EncodeOptions::default().with_grain_sectors(96),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = raw_to_vmdk(
        dir.path().join("missing.raw"),
        dir.path().join("x.vmdk"),
        &EncodeOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(!dir.path().join("x.vmdk").exists());
    assert!(!dir.path().join("x.vmdk.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_non_sector_lengths() {
    use std::sync::Mutex;
    // 1 MiB + 100 bytes: capacity rounds up to a sector, zero padded.
    let mut data = vec![0u8; (1 << 20) + 100];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let progress = Progress::new(CallbackSink::new(move |ev| {
        log.lock().unwrap().push((ev.bytes_done, ev.bytes_total));
    }));
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.raw");
    std::fs::write(&raw, &data).unwrap();
    let vmdk = dir.path().join("odd.vmdk");
    let report: EncodeReport = raw_to_vmdk(
        &raw,
        &vmdk,
        &EncodeOptions::default().with_progress(progress),
    )
    .await
    .unwrap();
    assert_eq!(report.capacity, (1 << 20) + 512);
    assert_eq!(report.grains, 17);
    let last = events.lock().unwrap().last().copied();
    assert_eq!(last, Some((data.len() as u64, Some(data.len() as u64))));
    // qemu pads the raw image to a sector too.
    qemu_agrees(&raw, &vmdk, data.len() as u64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_the_decoder() {
    use hypersdk_core::digest::Algorithm;
    use hypersdk_ova::vmdk::convert::{RawOptions, vmdk_file_to_raw};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let cases: Vec<RawImage> = blocking(move || {
        vec![
            images::mixed(d.join("mixed.raw"), 24 << 20, 21, 45).unwrap(),
            images::unaligned(d.join("unaligned.raw"), 22).unwrap(),
            images::large_sparse(d.join("large.raw"), 23).unwrap(),
        ]
    })
    .await;
    for raw in cases {
        let vmdk = raw.path.with_extension("vmdk");
        raw_to_vmdk(&raw.path, &vmdk, &EncodeOptions::default())
            .await
            .unwrap();
        let back = raw.path.with_extension("back");
        let report = vmdk_file_to_raw(&vmdk, &back, &RawOptions::default())
            .await
            .unwrap();
        let expected = raw.sha256().unwrap();
        let got = report.digests.get(Algorithm::Sha256).unwrap().to_hex();
        // The decoded image is the capacity long: the raw image rounded up
        // to a sector (all these are sector multiples).
        assert_eq!(report.capacity, raw.len);
        assert_eq!(got, expected, "{}", raw.path.display());
        assert_eq!(images::sha256_sparse(&back).unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_an_ova_on_a_pure_stream() {
    use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
    use hypersdk_ova::archive::{OvaReader, OvaWriter, WriteOptions};
    use hypersdk_ova::ovf::{OvfDisk, write_descriptor};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    let raw = blocking(move || images::mixed(&path, 6 << 20, 31, 50).unwrap()).await;
    let source: Arc<dyn BlockSource> = Arc::new(FileSource::open(&raw.path).await.unwrap());
    let opts = EncodeOptions::default();
    // A tar header needs the size first: encoded_len, then the stream.
    let size = encoded_len(Arc::clone(&source), &opts).await.unwrap();
    let mut vm = VmInfo::new("vm-1", "web01");
    vm.disks.push(DiskInfo::new("disk0", raw.len));
    let disk = OvfDisk::new("web01-disk1.vmdk")
        .with_size(size)
        .with_format(DiskFormat::VmdkStreamOptimized);
    let ovf = write_descriptor(&vm, &[disk]).unwrap();
    let mut ova = OvaWriter::new(Vec::new(), WriteOptions::default());
    ova.write_descriptor("web01.ovf", ovf.as_bytes())
        .await
        .unwrap();
    ova.append_stream(
        "web01-disk1.vmdk",
        Some(size),
        encode_to_stream(Arc::clone(&source), &opts),
    )
    .await
    .unwrap();
    let bytes = ova.finish().await.unwrap();
    let summary = OvaReader::new(&bytes[..]).finish().await.unwrap();
    assert!(summary.manifest_verified);
    let entry = summary
        .entries
        .iter()
        .find(|e| e.name == "web01-disk1.vmdk")
        .unwrap();
    assert_eq!(entry.size, size);
}
