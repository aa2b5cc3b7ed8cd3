//! The OVA reader, index and writer against real packages from other tools
//! (testdata/ova, see testdata/SOURCES.md), hostile archives built here,
//! and GNU tar as the judge of what the writer produces.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::Extent;
use hypersdk_ova::archive::{
    EntryKind, ManifestMode, OvaIndex, OvaReader, OvaWriter, ReadOptions, WriteOptions,
};
use hypersdk_ova::mf::Manifest;
use tokio::io::AsyncReadExt;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap()
}

const TTY_OVA: &str = "ova/govmomi-ttylinux-pc_i486-16.1.ova";
const TTY_OVF: &str = "ttylinux-pc_i486-16.1.ovf";
const TTY_MF: &str = "ttylinux-pc_i486-16.1.mf";
const TTY_DISK: &str = "ttylinux-pc_i486-16.1-disk1.vmdk";
// From `sha1sum` of the saved members and the package's own .mf.
const TTY_DISK_SHA1: &str = "648e20a1e1625b1bb963b08c926bc18e62f15dfc";

/// Reads every data entry through `read_chunk` and returns the error, if any,
/// and where it surfaced.
async fn read_all(bytes: &[u8]) -> Result<(), (&'static str, hypersdk_core::Error)> {
    let mut r = OvaReader::new(bytes);
    loop {
        match r.next_entry().await {
            Ok(Some(_)) => loop {
                match r.read_chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return Err(("read_chunk", e)),
                }
            },
            Ok(None) => break,
            Err(e) => return Err(("next_entry", e)),
        }
    }
    r.finish().await.map(|_| ()).map_err(|e| ("finish", e))
}

#[tokio::test]
async fn ttylinux_streams_and_verifies_its_bsd_style_manifest() {
    let bytes = read(TTY_OVA);
    let mut r = OvaReader::new(&bytes[..]);
    let entry = r.next_entry().await.unwrap().unwrap();
    // The descriptor and manifest were consumed by the reader.
    assert_eq!(entry.name, TTY_DISK);
    assert_eq!(entry.size, 1_048_576);
    assert_eq!(entry.kind, EntryKind::File);
    assert_eq!(r.descriptor().unwrap().0, TTY_OVF);
    assert!(r.manifest().unwrap().contains(TTY_DISK));
    let mut disk = Vec::new();
    r.entry_reader().read_to_end(&mut disk).await.unwrap();
    assert_eq!(
        disk,
        read("vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk")
    );
    assert!(r.next_entry().await.unwrap().is_none());
    let summary = r.finish().await.unwrap();
    assert!(summary.manifest_verified);
    assert_eq!(summary.manifest.as_deref(), Some(TTY_MF));
    let names: Vec<_> = summary.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [TTY_OVF, TTY_MF, TTY_DISK]);
    assert!(
        summary
            .entries
            .iter()
            .filter(|e| e.kind != EntryKind::Manifest)
            .all(|e| e.verified)
    );
    let sha1 = summary.entries[2]
        .digests
        .as_ref()
        .unwrap()
        .get(Algorithm::Sha1)
        .unwrap();
    assert_eq!(sha1.to_hex(), TTY_DISK_SHA1);
}

#[tokio::test]
async fn a_flipped_byte_fails_on_the_fly_naming_the_file() {
    let mut bytes = read(TTY_OVA);
    let idx = OvaIndex::open(testdata(TTY_OVA)).await.unwrap();
    let at = idx.entry(TTY_DISK).unwrap().data_offset as usize + 700_000;
    bytes[at] ^= 0x40;
    // The manifest precedes the disk: the last read of the disk fails,
    // before the caller sees the end of its data.
    let (place, err) = read_all(&bytes).await.unwrap_err();
    assert_eq!(place, "read_chunk");
    assert_eq!(err.kind(), ErrorKind::Integrity);
    let msg = err.to_string();
    assert!(
        msg.contains(TTY_DISK) && msg.contains(TTY_DISK_SHA1),
        "{msg}"
    );
    // Through the AsyncRead adapter it is an InvalidData io::Error.
    let mut r = OvaReader::new(&bytes[..]);
    r.next_entry().await.unwrap().unwrap();
    let e = r
        .entry_reader()
        .read_to_end(&mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_flipped_descriptor_byte_fails_when_the_manifest_arrives() {
    let mut bytes = read(TTY_OVA);
    // A byte inside the descriptor's XML text (past its tar header):
    // changing a letter's case keeps the XML well formed.
    let pos = 512
        + bytes[512..]
            .windows(8)
            .position(|w| w == b"ttylinux")
            .unwrap();
    bytes[pos] = b'T';
    let (place, err) = read_all(&bytes).await.unwrap_err();
    assert_eq!(place, "next_entry");
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(err.to_string().contains(TTY_OVF), "{err}");
}

#[tokio::test]
async fn index_reads_one_entry_at_random_and_verifies() {
    let idx = OvaIndex::open(testdata(TTY_OVA)).await.unwrap();
    let names: Vec<_> = idx.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [TTY_OVF, TTY_MF, TTY_DISK]);
    // Offsets from the tar layout: 512-byte header, data padded to 512.
    let e = &idx.entries()[0];
    assert_eq!((e.header_offset, e.data_offset, e.size), (0, 512, 5005));
    let e = &idx.entries()[1];
    assert_eq!((e.header_offset, e.data_offset, e.size), (5632, 6144, 159));
    let e = &idx.entries()[2];
    assert_eq!((e.header_offset, e.data_offset), (6656, 7168));
    let disk = idx.open_entry(TTY_DISK).unwrap();
    let expected = read("vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk");
    let part = disk.read_range(Extent::new(4096, 1000)).await.unwrap();
    assert_eq!(&part[..], &expected[4096..5096]);
    assert!(disk.read_range(Extent::new(1_048_000, 1000)).await.is_err());
    let verified = idx.verify().await.unwrap();
    assert_eq!(verified.len(), 2);
    assert!(idx.open_entry("nope.vmdk").unwrap_err().is_not_found());
}

#[tokio::test]
async fn index_verify_catches_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.ova");
    let mut bytes = read(TTY_OVA);
    bytes[7168 + 123_456] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let idx = OvaIndex::open(&path).await.unwrap();
    let err = idx.verify_entry(TTY_DISK).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(err.to_string().contains(TTY_DISK_SHA1), "{err}");
}

#[tokio::test]
async fn other_tools_packages_read() {
    // forklift: no manifest, the descriptor's name differs from the OVA's.
    let bytes = read("ova/forklift-2nd_disk_v3.ova");
    let mut r = OvaReader::new(&bytes[..]);
    let e = r.next_entry().await.unwrap().unwrap();
    assert_eq!((e.name.as_str(), e.size), ("2nd_disk.vmdk", 196_608));
    let s = r.finish().await.unwrap();
    assert_eq!(s.descriptor, "2nd_disk_v2.ovf");
    assert!(s.manifest.is_none() && !s.manifest_verified);
    // The late digest defaults: SHA-256 and SHA-1 of the disk.
    let d = s.entries[1].digests.as_ref().unwrap();
    assert!(d.get(Algorithm::Sha256).is_some() && d.get(Algorithm::Sha1).is_some());

    // glance: GNU tar ('ustar  \0' magic), a 4-byte "disk".
    let bytes = read("ova/glance-testserver.ova");
    let s = OvaReader::new(&bytes[..]).finish().await.unwrap();
    assert_eq!(s.descriptor, "testserver.ovf");
    assert_eq!(s.entries[1].name, "testserver-disk1.vmdk");
    assert_eq!(s.entries[1].size, 4);
}

#[tokio::test]
async fn bad_packages_get_their_own_errors() {
    let cases: &[(&str, &str)] = &[
        ("ova/ganeti-ova.ova", "gzip-compressed"),
        ("ova/ganeti-wrong_ova.ova", "XML document"),
        (
            "ova/glance-testserver-no-ovf.ova",
            "first entry is 'testserver-disk1.vmdk'",
        ),
        (
            "ova/glance-testserver-no-disk.ova",
            "but the archive has no such entry",
        ),
        ("ova/glance-testserver-bad-ovf.ova", "illegal-xml.ovf"),
    ];
    for (file, want) in cases {
        let bytes = read(file);
        let (_, err) = read_all(&bytes).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{file}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(want), "{file}: {msg}");
        // The index agrees.
        let err = OvaIndex::open(testdata(file)).await.unwrap_err();
        assert!(err.to_string().contains(want), "{file} (index): {err}");
    }
    // The descriptor that is not XML: its error carries a line and column.
    let (_, err) = read_all(&read("ova/glance-testserver-bad-ovf.ova"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("line") && msg.contains("column"), "{msg}");
}

// --- hostile archives, built with the `tar` crate --------------------------

const OVF_ONE_DISK: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk1.vmdk" ovf:id="file1"/></References>
</Envelope>
"#;

fn raw_header(name: &[u8], ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name = [0; 100];
        u.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

fn tar_of(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, data) in entries {
        b.append(h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn ovf_entry() -> (tar::Header, &'static [u8]) {
    (
        raw_header(
            b"vm.ovf",
            tar::EntryType::Regular,
            OVF_ONE_DISK.len() as u64,
        ),
        OVF_ONE_DISK.as_bytes(),
    )
}

#[tokio::test]
async fn hostile_names_types_and_structure_are_refused() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute path",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"/etc/passwd", tar::EntryType::Regular, 1), b"x"),
            ]),
            "absolute path",
        ),
        (
            "dot-dot",
            tar_of(&[
                ovf_entry(),
                (
                    raw_header(b"../../x.vmdk", tar::EntryType::Regular, 1),
                    b"x",
                ),
            ]),
            "'..'",
        ),
        (
            "symlink",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"disk1.vmdk", tar::EntryType::Symlink, 0), b""),
            ]),
            "symbolic link entries are not allowed",
        ),
        (
            "hard link",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"disk1.vmdk", tar::EntryType::Link, 0), b""),
            ]),
            "hard link entries are not allowed",
        ),
        (
            "device",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"disk1.vmdk", tar::EntryType::Block, 0), b""),
            ]),
            "block device entries are not allowed",
        ),
        (
            "directory",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"dir/", tar::EntryType::Directory, 0), b""),
            ]),
            "directory entries are not allowed",
        ),
        (
            "duplicate",
            tar_of(&[
                ovf_entry(),
                (raw_header(b"disk1.vmdk", tar::EntryType::Regular, 1), b"x"),
                (raw_header(b"disk1.vmdk", tar::EntryType::Regular, 1), b"y"),
            ]),
            "duplicate entry",
        ),
        ("empty", vec![0u8; 1024], "the archive is empty"),
    ];
    for (what, bytes, want) in cases {
        let (_, err) = read_all(&bytes).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
}

#[tokio::test]
async fn corrupt_and_truncated_archives_are_refused_with_offsets() {
    let good = tar_of(&[
        ovf_entry(),
        (
            raw_header(b"disk1.vmdk", tar::EntryType::Regular, 3000),
            &[7u8; 3000],
        ),
    ]);
    read_all(&good).await.unwrap();
    let disk_header = 512 + OVF_ONE_DISK.len().div_ceil(512) * 512;

    let mut bad = good.clone();
    bad[disk_header + 3] ^= 1; // inside the name: checksum no longer matches
    let (_, err) = read_all(&bad).await.unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(
        err.to_string().contains(&format!("offset {disk_header}")),
        "{err}"
    );

    // Cut inside the disk's data.
    let cut = &good[..disk_header + 512 + 1000];
    let (_, err) = read_all(cut).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("disk1.vmdk"),
        "{msg}"
    );
    assert!(
        msg.contains("needs 3000 bytes") && msg.contains("after 1000"),
        "{msg}"
    );

    // Cut right after the last entry: no end-of-archive marker.
    let cut = &good[..disk_header + 512 + 3072];
    let (_, err) = read_all(cut).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("without the end-of-archive marker"),
        "{err}"
    );
}

#[tokio::test]
async fn gnu_and_pax_long_names_are_read() {
    let long = format!("{}.vmdk", "a-very-long-disk-name-".repeat(8));
    let ovf = OVF_ONE_DISK.replace("disk1.vmdk", &long);
    for gnu in [true, false] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_size(ovf.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "vm.ovf", ovf.as_bytes()).unwrap();
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_size(5);
        h.set_mode(0o644);
        if gnu {
            // The tar crate writes a GNU 'L' long-name entry for this.
            b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        } else {
            b.append_pax_extensions([("path", long.as_bytes())])
                .unwrap();
            b.append_data(&mut h, "shortened.vmdk", &b"hello"[..])
                .unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let mut r = OvaReader::new(&bytes[..]);
        let e = r.next_entry().await.unwrap().unwrap();
        assert_eq!(e.name, long, "gnu={gnu}");
        r.finish().await.unwrap();
    }
}

// --- the writer, judged by GNU tar -----------------------------------------

fn gnu_tar_list(path: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(path)
        .output()
        .expect("GNU tar is needed: apt-get install -y tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const OVF_TWO_FILES: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:href="disk-b.vmdk" ovf:id="file1"/>
    <File ovf:href="a-disk-with-a-name-longer-than-one-hundred-bytes-which-ustar-cannot-hold-in-its-name-field-at-all.vmdk" ovf:id="file2"/>
  </References>
</Envelope>
"#;
const LONG: &str = "a-disk-with-a-name-longer-than-one-hundred-bytes-which-ustar-cannot-hold-in-its-name-field-at-all.vmdk";

#[tokio::test]
async fn written_packages_extract_with_gnu_tar_in_dsp0243_order() {
    let dir = tempfile::tempdir().unwrap();
    let disk_b: Vec<u8> = (0..700_001u32).map(|i| (i % 251) as u8).collect();
    let long_data = vec![0xabu8; 1536];
    for mode in ["at-end", "upfront"] {
        let path = dir.path().join(format!("{mode}.ova"));
        let manifest = if mode == "upfront" {
            let mut mf = Manifest::new();
            mf.insert("disk-b.vmdk", Checksum::compute(Algorithm::Sha256, &disk_b))
                .unwrap();
            mf.insert(LONG, Checksum::compute(Algorithm::Sha256, &long_data))
                .unwrap();
            ManifestMode::Upfront(mf)
        } else {
            ManifestMode::AtEnd(vec![Algorithm::Sha256, Algorithm::Sha1])
        };
        let mut w = OvaWriter::create(&path, WriteOptions::default().with_manifest(manifest))
            .await
            .unwrap();
        w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
            .await
            .unwrap();
        // Unknown size on a file: the header is patched afterwards.
        w.append_reader("disk-b.vmdk", None, &disk_b[..])
            .await
            .unwrap();
        w.append_bytes(LONG, long_data.clone().into())
            .await
            .unwrap();
        w.finish().await.unwrap();
        assert!(!dir.path().join(format!("{mode}.ova.part")).exists());

        let listed = gnu_tar_list(&path);
        let expected: Vec<&str> = if mode == "upfront" {
            vec!["vm.ovf", "vm.mf", "disk-b.vmdk", LONG]
        } else {
            vec!["vm.ovf", "disk-b.vmdk", LONG, "vm.mf"]
        };
        assert_eq!(listed, expected, "{mode}");
        let out = dir.path().join(mode);
        std::fs::create_dir(&out).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(out.join("disk-b.vmdk")).unwrap(), disk_b);
        assert_eq!(std::fs::read(out.join(LONG)).unwrap(), long_data);
        // sha256sum agrees with the manifest we wrote.
        let mf = Manifest::parse(&std::fs::read(out.join("vm.mf")).unwrap()).unwrap();
        let sum = Command::new("sha256sum")
            .arg(out.join("disk-b.vmdk"))
            .output()
            .unwrap();
        let hex = String::from_utf8(sum.stdout).unwrap();
        assert_eq!(
            mf.get("disk-b.vmdk", Algorithm::Sha256).unwrap().to_hex(),
            &hex[..64]
        );
        // And our reader verifies it, in both placements.
        let s = OvaReader::new(tokio::fs::File::open(&path).await.unwrap())
            .finish()
            .await
            .unwrap();
        assert!(s.manifest_verified, "{mode}");
        OvaIndex::open(&path).await.unwrap().verify().await.unwrap();
    }
}

#[tokio::test]
async fn writer_refuses_what_would_make_a_bad_package() {
    let opts = || WriteOptions::default().with_mtime(0);
    // Unknown size on a pure stream.
    let mut w = OvaWriter::new(Vec::new(), opts());
    w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap();
    let err = w
        .append_reader("disk-b.vmdk", None, &b"x"[..])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("unknown size to a pure stream"),
        "{err}"
    );

    // Out of References order, and not referenced at all.
    let mut w = OvaWriter::new(Vec::new(), opts());
    w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap();
    let err = w
        .append_bytes(LONG, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    let err = w
        .append_bytes("other.iso", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not reference it"), "{err}");

    // Data shorter than announced.
    let mut w = OvaWriter::new(Vec::new(), opts());
    w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap();
    let err = w
        .append_reader("disk-b.vmdk", Some(10), &b"12345"[..])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ended after 5"), "{err}");
    // The writer is unusable afterwards.
    assert!(w.append_bytes(LONG, Bytes::new()).await.is_err());

    // A missing file at finish.
    let mut w = OvaWriter::new(Vec::new(), opts());
    w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap();
    w.append_bytes("disk-b.vmdk", Bytes::from_static(b"b"))
        .await
        .unwrap();
    let err = w.finish().await.unwrap_err();
    assert!(err.to_string().contains("which was not written"), "{err}");

    // A descriptor that does not parse is not written.
    let mut w = OvaWriter::new(Vec::new(), opts());
    assert!(w.write_descriptor("vm.ovf", b"<Envelope").await.is_err());
}

#[tokio::test]
async fn a_wrong_upfront_digest_fails_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ova");
    let mut mf = Manifest::new();
    mf.insert(
        "disk-b.vmdk",
        Checksum::compute(Algorithm::Sha256, b"expected"),
    )
    .unwrap();
    mf.insert(LONG, Checksum::compute(Algorithm::Sha256, b""))
        .unwrap();
    let mut w = OvaWriter::create(
        &path,
        WriteOptions::default().with_manifest(ManifestMode::Upfront(mf)),
    )
    .await
    .unwrap();
    w.write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap();
    let err = w
        .append_bytes("disk-b.vmdk", Bytes::from_static(b"actual"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(err.to_string().contains("disk-b.vmdk"), "{err}");
    drop(w);
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the .part file is removed"
    );
    // An existing target is not overwritten.
    std::fs::write(&path, b"keep").unwrap();
    let err = OvaWriter::create(&path, WriteOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn a_late_manifest_with_an_uncomputed_algorithm_is_not_a_pass() {
    let mut w = OvaWriter::new(
        Vec::new(),
        WriteOptions::default().with_manifest(ManifestMode::AtEnd(vec![Algorithm::Sha512])),
    );
    w.write_descriptor("vm.ovf", OVF_ONE_DISK.as_bytes())
        .await
        .unwrap();
    w.append_bytes("disk1.vmdk", Bytes::from_static(b"data"))
        .await
        .unwrap();
    let bytes = w.finish().await.unwrap();
    // Default late algorithms are SHA-256 and SHA-1: SHA-512 cannot be checked.
    let err = OvaReader::new(&bytes[..]).finish().await.unwrap_err();
    assert!(
        err.to_string().contains("SHA512, which was not computed"),
        "{err}"
    );
    // Asked for, it verifies.
    let opts = ReadOptions::default().with_late_algorithms(&[Algorithm::Sha512]);
    let s = OvaReader::with_options(&bytes[..], opts)
        .finish()
        .await
        .unwrap();
    assert!(s.manifest_verified);
}

#[tokio::test]
async fn files_the_manifest_does_not_cover_are_refused_unless_allowed() {
    // The manifest first (upfront), then a file it does not list; and the
    // same file before a manifest written at the end. The manifest lists
    // the descriptor correctly.
    let ovf_sha1 = Checksum::compute(Algorithm::Sha1, OVF_ONE_DISK.as_bytes()).to_hex();
    let mf = format!("SHA1(vm.ovf)= {ovf_sha1}\n");
    let upfront = tar_of(&[
        ovf_entry(),
        (
            raw_header(b"vm.mf", tar::EntryType::Regular, mf.len() as u64),
            mf.as_bytes(),
        ),
        (raw_header(b"disk1.vmdk", tar::EntryType::Regular, 1), b"x"),
    ]);
    let late = tar_of(&[
        ovf_entry(),
        (raw_header(b"disk1.vmdk", tar::EntryType::Regular, 1), b"x"),
        (
            raw_header(b"vm.mf", tar::EntryType::Regular, mf.len() as u64),
            mf.as_bytes(),
        ),
    ]);
    for bytes in [&upfront, &late] {
        let (_, err) = read_all(bytes).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(err.to_string().contains("does not list this file"), "{err}");
        assert!(err.to_string().contains("disk1.vmdk"), "{err}");
        // Allowed, the package reads; what the manifest lists verified,
        // but the manifest did not cover everything.
        let opts = ReadOptions::default().with_allow_unlisted(true);
        let s = OvaReader::with_options(&bytes[..], opts)
            .finish()
            .await
            .unwrap();
        assert!(s.entries[0].verified && !s.manifest_verified);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.ova");
    std::fs::write(&path, &upfront).unwrap();
    let err = OvaIndex::open(&path).await.unwrap_err();
    assert!(err.to_string().contains("does not list this file"), "{err}");
}

#[tokio::test]
async fn after_an_error_the_reader_is_spent() {
    let mut bytes = read(TTY_OVA);
    bytes[7168 + 1000] ^= 1;
    let mut r = OvaReader::new(&bytes[..]);
    r.next_entry().await.unwrap().unwrap();
    let err = loop {
        match r.read_chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a bad disk read to its end"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Integrity);
    // Every later call refuses, naming the first error.
    let again = r.read_chunk().await.unwrap_err().to_string();
    assert!(
        again.contains("cannot go on") && again.contains(TTY_DISK),
        "{again}"
    );
    assert!(r.next_entry().await.is_err());
    assert!(r.finish().await.is_err());
}

#[tokio::test]
async fn a_consumer_reading_exactly_size_bytes_never_gets_a_bad_file() {
    let mut bytes = read(TTY_OVA);
    // The last byte of the disk.
    bytes[7168 + 1_048_575] ^= 1;
    let mut r = OvaReader::new(&bytes[..]);
    let e = r.next_entry().await.unwrap().unwrap();
    let mut data = vec![0u8; e.size as usize];
    let err = r.entry_reader().read_exact(&mut data).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_dropped_entry_reader_loses_nothing() {
    let bytes = read(TTY_OVA);
    let mut r = OvaReader::new(&bytes[..]);
    r.next_entry().await.unwrap().unwrap();
    let mut head = vec![0u8; 512];
    r.entry_reader().read_exact(&mut head).await.unwrap();
    let mut rest = Vec::new();
    while let Some(c) = r.read_chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    head.extend_from_slice(&rest);
    assert_eq!(
        head,
        read("vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk")
    );
}

#[tokio::test]
async fn the_manifest_must_cover_the_descriptor() {
    let sha1 = Checksum::compute(Algorithm::Sha1, b"x").to_hex();
    let mf = format!("SHA1(disk1.vmdk)= {sha1}\n");
    let bytes = tar_of(&[
        ovf_entry(),
        (
            raw_header(b"vm.mf", tar::EntryType::Regular, mf.len() as u64),
            mf.as_bytes(),
        ),
        (raw_header(b"disk1.vmdk", tar::EntryType::Regular, 1), b"x"),
    ]);
    let (_, err) = read_all(&bytes).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(err.to_string().contains("vm.ovf"), "{err}");
}

#[tokio::test]
async fn referenced_files_are_data_whatever_their_suffix() {
    // A referenced file named like a certificate, an href with "./".
    let ovf = OVF_ONE_DISK.replace("disk1.vmdk", "./nvram.cert");
    let bytes = tar_of(&[
        (
            raw_header(b"vm.ovf", tar::EntryType::Regular, ovf.len() as u64),
            ovf.as_bytes(),
        ),
        (
            raw_header(b"nvram.cert", tar::EntryType::Regular, 3),
            b"abc",
        ),
        (raw_header(b"vm.cert", tar::EntryType::Regular, 4), b"cert"),
    ]);
    let mut r = OvaReader::new(&bytes[..]);
    let e = r.next_entry().await.unwrap().unwrap();
    assert_eq!((e.name.as_str(), e.kind), ("nvram.cert", EntryKind::File));
    let s = r.finish().await.unwrap();
    assert_eq!(s.certificate.as_deref(), Some("vm.cert"));
}

#[tokio::test]
async fn too_many_entries_are_refused() {
    let mut entries = vec![ovf_entry()];
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for n in &names {
        entries.push((
            raw_header(n.as_bytes(), tar::EntryType::Regular, 0),
            &b""[..],
        ));
    }
    let bytes = tar_of(&entries);
    let opts = ReadOptions::default().with_max_entries(10);
    let err = OvaReader::with_options(&bytes[..], opts)
        .finish()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 10 entries"), "{err}");
}

#[tokio::test]
async fn writer_refuses_manifests_and_references_its_reader_would_reject() {
    let opts = |m| WriteOptions::default().with_mtime(0).with_manifest(m);
    // An upfront manifest that leaves a referenced file out.
    let mut mf = Manifest::new();
    mf.insert("disk-b.vmdk", Checksum::compute(Algorithm::Sha256, b"b"))
        .unwrap();
    let mut w = OvaWriter::new(Vec::new(), opts(ManifestMode::Upfront(mf)));
    let err = w
        .write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not list"), "{err}");
    assert_eq!(w.bytes_written(), 0, "nothing is written before the checks");
    // A manifest with no algorithm.
    let mut w = OvaWriter::new(Vec::new(), opts(ManifestMode::AtEnd(vec![])));
    let err = w
        .write_descriptor("vm.ovf", OVF_TWO_FILES.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least one algorithm"), "{err}");
    // The same file referenced twice.
    let twice = OVF_TWO_FILES.replace(LONG, "disk-b.vmdk");
    let mut w = OvaWriter::new(Vec::new(), opts(ManifestMode::None));
    let err = w
        .write_descriptor("vm.ovf", twice.as_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[tokio::test]
async fn dotted_hrefs_and_parenthesised_names_round_trip() {
    let name = "Ubuntu (64-bit)-disk001.vmdk";
    let ovf = OVF_ONE_DISK.replace("disk1.vmdk", &format!("./{name}"));
    let mut w = OvaWriter::new(Vec::new(), WriteOptions::default().with_mtime(0));
    w.write_descriptor("vm.ovf", ovf.as_bytes()).await.unwrap();
    w.append_bytes(name, Bytes::from_static(b"data"))
        .await
        .unwrap();
    let bytes = w.finish().await.unwrap();
    let s = OvaReader::new(&bytes[..]).finish().await.unwrap();
    assert!(s.manifest_verified);
    assert_eq!(s.entries[1].name, name);
}
