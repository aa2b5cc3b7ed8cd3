//! The file checks: existence, size, checksum (streamed, in parallel), and
//! the Result form of validation.

use std::path::{Path, PathBuf};

use hypersdk_core::ErrorKind;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_manifest::{Manifest, ProblemKind, Validator};
use serde_json::{Value, json};

fn sha256(data: &[u8]) -> String {
    Checksum::compute(Algorithm::Sha256, data).to_string()
}

/// A directory with `n` disk files of different content, and a manifest
/// describing them correctly, written to `artifact-manifest.json`.
fn setup(n: usize) -> (tempfile::TempDir, PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut disks = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..(300_000 + i * 7))
            .map(|b| (b * (i + 1)) as u8)
            .collect();
        let path = dir.path().join(format!("disk-{i}.raw"));
        std::fs::write(&path, &data).unwrap();
        disks.push(json!({
            "id": format!("disk-{i}"), "source_format": "raw", "bytes": data.len(),
            "local_path": path.to_str().unwrap(), "checksum": sha256(&data),
            "boot_order_hint": i, "disk_type": if i == 0 { "boot" } else { "data" }
        }));
    }
    let v = json!({"manifest_version": "1.0", "disks": disks});
    let path = dir.path().join("artifact-manifest.json");
    write(&path, &v);
    (dir, path, v)
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn kinds(report: &hypersdk_manifest::ValidationReport) -> Vec<(String, ProblemKind)> {
    report.iter().map(|p| (p.path.clone(), p.kind)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_manifest_passes_everything() {
    let (_dir, path, _) = setup(6);
    for n in [1, 3, 16] {
        let report = Validator::new()
            .with_parallelism(n)
            .validate_file(&path)
            .await
            .unwrap();
        assert!(report.is_empty(), "{report}");
    }
    let m = hypersdk_manifest::verify(&path).await.unwrap();
    assert_eq!(m.disks.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_file_problem_is_reported_with_its_path() {
    let (dir, path, mut v) = setup(5);
    // disk-0: missing; disk-1: a directory; disk-2: one byte more;
    // disk-3: same size, other content; disk-4 fine.
    std::fs::remove_file(dir.path().join("disk-0.raw")).unwrap();
    let d1 = dir.path().join("disk-1.raw");
    std::fs::remove_file(&d1).unwrap();
    std::fs::create_dir(&d1).unwrap();
    let d2 = dir.path().join("disk-2.raw");
    let mut data = std::fs::read(&d2).unwrap();
    data.push(0);
    std::fs::write(&d2, &data).unwrap();
    let d3 = dir.path().join("disk-3.raw");
    let mut data = std::fs::read(&d3).unwrap();
    data[1000] ^= 0xff;
    std::fs::write(&d3, &data).unwrap();
    // And one schema problem, reported along with the rest.
    v["disks"][4]["source_format"] = json!("iso");
    write(&path, &v);

    let report = Validator::new().validate_file(&path).await.unwrap();
    assert_eq!(
        kinds(&report),
        [
            ("disks[4].source_format".to_owned(), ProblemKind::NotInEnum),
            ("disks[0].local_path".to_owned(), ProblemKind::FileMissing),
            ("disks[1].local_path".to_owned(), ProblemKind::NotAFile),
            ("disks[2].bytes".to_owned(), ProblemKind::SizeMismatch),
            (
                "disks[3].checksum".to_owned(),
                ProblemKind::ChecksumMismatch
            ),
        ],
        "{report}"
    );
    let mismatch = report
        .find("disks[3].checksum", ProblemKind::ChecksumMismatch)
        .unwrap();
    assert!(mismatch.message.contains(&sha256(&data)), "{mismatch}");
    let size = report
        .find("disks[2].bytes", ProblemKind::SizeMismatch)
        .unwrap();
    assert!(
        size.message.contains("300015 bytes, bytes says 300014"),
        "{size}"
    );

    // Without checksums, the changed content goes unnoticed; without
    // files, only the schema problem is left.
    let report = Validator::new()
        .with_checksums(false)
        .validate_file(&path)
        .await
        .unwrap();
    assert!(!report.has_kind(ProblemKind::ChecksumMismatch));
    assert!(report.has_kind(ProblemKind::SizeMismatch));
    let report = Validator::new()
        .with_files(false)
        .validate_file(&path)
        .await
        .unwrap();
    assert_eq!(report.len(), 1, "{report}");

    // The Result form lists them all and names the file.
    let e = hypersdk_manifest::verify(&path).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(
        msg.contains("artifact-manifest.json") && msg.contains("5 problems"),
        "{msg}"
    );
    for p in [
        "disks[0].local_path",
        "disks[1].local_path",
        "disks[2].bytes",
        "disks[3].checksum",
    ] {
        assert!(msg.contains(p), "{p} in {msg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_paths_resolve_against_the_manifest_directory() {
    let (dir, path, mut v) = setup(2);
    v["disks"][0]["local_path"] = json!("disk-0.raw");
    v["disks"][1]["local_path"] = json!("./sub/../disk-1.raw");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(&path, &v);
    let report = Validator::new().validate_file(&path).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        kinds(&report),
        [
            ("disks[0].local_path".to_owned(), ProblemKind::RelativePath),
            ("disks[1].local_path".to_owned(), ProblemKind::RelativePath),
        ]
    );
    // Against another base they are missing.
    let other = tempfile::tempdir().unwrap();
    let report = Validator::new()
        .with_base_dir(other.path())
        .validate_file(&path)
        .await
        .unwrap();
    assert!(
        report
            .find("disks[0].local_path", ProblemKind::FileMissing)
            .is_some()
    );
    // Warnings do not fail the Result form.
    hypersdk_manifest::verify(&path).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn version_and_syntax_errors() {
    let (_dir, path, mut v) = setup(1);
    v["manifest_version"] = json!("2.0");
    write(&path, &v);
    let report = Validator::new().validate_file(&path).await.unwrap();
    assert_eq!(report.found_unsupported_version(), Some("2.0"));
    let e = hypersdk_manifest::verify(&path).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion);
    assert!(e.to_string().contains("artifact-manifest.json"), "{e}");
    let e = Manifest::read(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion);

    std::fs::write(&path, "{\"manifest_version\": \"1.0\",").unwrap();
    let report = Validator::new().validate_file(&path).await.unwrap();
    assert_eq!(kinds(&report), [(String::new(), ProblemKind::InvalidJson)]);
    assert!(
        report.to_string().starts_with("error: (root): not JSON"),
        "{report}"
    );

    let e = Validator::new()
        .validate_file(path.with_file_name("none.json"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_manifests_validate_too() {
    let (_dir, path, _) = setup(2);
    let mut m = Manifest::read(&path).unwrap();
    let v = Validator::new();
    assert!(v.validate_manifest(&m).await.is_empty());
    m.disks[1].checksum = m.disks[0].checksum;
    m.disks[1].id = "disk-0".into();
    let report = v.validate_manifest(&m).await;
    assert_eq!(
        kinds(&report),
        [
            ("disks[1].id".to_owned(), ProblemKind::DuplicateId),
            (
                "disks[1].checksum".to_owned(),
                ProblemKind::ChecksumMismatch
            ),
        ],
        "{report}"
    );
    // write_validated refuses it and leaves the file alone.
    let before = std::fs::read(&path).unwrap();
    let e = m.write_validated(&path).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
