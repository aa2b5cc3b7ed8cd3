//! Real `.mf` manifests (testdata/mf, see testdata/SOURCES.md) checked
//! against the real files they describe. The manifests list the files'
//! original upstream names; the map below gives the saved names.

use std::path::{Path, PathBuf};

use hypersdk_core::ErrorKind;
use hypersdk_core::digest::{Algorithm, hash_file_blocking};
use hypersdk_ova::mf::Manifest;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

fn parse(rel: &str) -> Manifest {
    Manifest::parse_named(rel, &std::fs::read(testdata(rel)).unwrap()).unwrap()
}

/// Checks every entry of `mf` whose file is saved here; returns how many.
fn verify(mf: &Manifest, files: &[(&str, &str)]) -> hypersdk_core::Result<usize> {
    let mut checked = 0;
    for (listed, saved) in files {
        let algorithms: Vec<Algorithm> = mf.checksums_of(listed).map(|c| c.algorithm()).collect();
        assert!(!algorithms.is_empty(), "{listed} not listed");
        let digests = hash_file_blocking(testdata(saved), &algorithms)?;
        mf.verify(listed, &digests)?;
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn ovftool_spelling_sha1_cot() {
    let mf = parse("mf/cot-input.mf");
    // Four entries, read by eye: input.ovf, input.vmdk, input.iso,
    // sample_cfg.txt. The ISO and text file are not in the collection.
    assert_eq!(mf.entries().len(), 4);
    assert_eq!(mf.algorithms(), vec![Algorithm::Sha1]);
    assert!(mf.contains("input.iso") && mf.contains("sample_cfg.txt"));
    let n = verify(
        &mf,
        &[
            ("input.ovf", "ovf/cot-input.ovf"),
            ("input.vmdk", "vmdk/cot-input-ovftool-stream.vmdk"),
        ],
    )
    .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn ovftool_spelling_sha256_virtualbox_package() {
    let mf = parse("mf/cot-ubuntu.2.0.mf");
    assert_eq!(mf.algorithms(), vec![Algorithm::Sha256]);
    verify(
        &mf,
        &[
            ("ubuntu.2.0.ovf", "ovf/cot-ubuntu-virtualbox-ovf2.0.ovf"),
            (
                "ubuntu.2.0-disk1.vmdk",
                "vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk",
            ),
        ],
    )
    .unwrap();
}

#[test]
fn ganeti_manifest_verifies() {
    let mf = parse("mf/ganeti.mf");
    verify(
        &mf,
        &[
            ("ganeti.ovf", "ovf/ganeti-export.ovf"),
            (
                "new_disk.vmdk",
                "vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk",
            ),
        ],
    )
    .unwrap();
}

#[test]
fn bsd_spelling_sha1_govmomi() {
    let mf = parse("mf/govmomi-ttylinux-pc_i486-16.1.mf");
    assert_eq!(
        mf.names(),
        vec![
            "ttylinux-pc_i486-16.1.ovf",
            "ttylinux-pc_i486-16.1-disk1.vmdk"
        ]
    );
    verify(
        &mf,
        &[
            (
                "ttylinux-pc_i486-16.1.ovf",
                "ovf/govmomi-ttylinux-ovftool4.0.ovf",
            ),
            (
                "ttylinux-pc_i486-16.1-disk1.vmdk",
                "vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk",
            ),
        ],
    )
    .unwrap();
}

#[test]
fn the_wrong_manifest_fails_naming_the_file() {
    let mf = parse("mf/ganeti-wrong_manifest.mf");
    let err = verify(
        &mf,
        &[(
            "new_disk.vmdk",
            "vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk",
        )],
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity);
    let msg = err.to_string();
    // Expected (from the .mf) and actual (ganeti.mf's correct value).
    assert!(msg.contains("new_disk.vmdk"), "{msg}");
    assert!(
        msg.contains("0500304662fb8a6a7925b5a43bc0e05d6a03720d"),
        "{msg}"
    );
    assert!(
        msg.contains("711c48f14c934228b8e117d036c913cdb9d63305"),
        "{msg}"
    );
}

#[test]
fn written_manifests_use_the_ovftool_spelling_and_read_back() {
    for rel in [
        "mf/cot-input.mf",
        "mf/cot-ubuntu.2.0.mf",
        "mf/ganeti.mf",
        "mf/govmomi-ttylinux-pc_i486-16.1.mf",
    ] {
        let mf = parse(rel);
        let text = mf.to_string();
        for line in text.lines() {
            assert!(
                line.starts_with("SHA1(") || line.starts_with("SHA256("),
                "{line}"
            );
            assert!(line.contains(")= "), "{line}");
        }
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), mf, "{rel}");
    }
    // The ovftool-written ones are byte-identical after a round trip.
    let original = std::fs::read_to_string(testdata("mf/cot-ubuntu.2.0.mf")).unwrap();
    assert_eq!(parse("mf/cot-ubuntu.2.0.mf").to_string(), original);
}
