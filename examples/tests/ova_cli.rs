//! Tests of the `ova` example, run as a user runs it: a command line, standard
//! input, and what it prints and writes, with the exit status.
//!
//! Integration tests cannot see example binaries, so the example's source is
//! compiled here as a module and its `run` is called in-process with
//! in-memory standard streams (no progress bars). Every file of the OVA
//! crate's test corpus goes through `inspect` and `verify` and must get the
//! status the table below expects; a corpus file missing from the table
//! fails the test, so the table stays complete.

#[allow(dead_code, unreachable_pub, missing_docs, clippy::all)]
#[path = "../examples/ova/main.rs"]
mod ova;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hypersdk_core::model::{DiskFormat, DiskInfo, Firmware, VmInfo};
use hypersdk_ova::archive::OvaIndex;
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use ova::Status;

/// What one run printed, and its status.
struct Out {
    status: Status,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn run_stdin(args: &[&str], stdin: Vec<u8>) -> Out {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let argv: Vec<OsString> = std::iter::once("ova")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect();
    let status = rt.block_on(ova::run(
        argv,
        ova::Io::memory(stdin, &mut stdout, &mut stderr),
    ));
    Out {
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Out {
    run_stdin(args, Vec::new())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/hypersdk-ova/testdata")
}

/// Every error line is one line, `ova: <file>: ...`.
fn assert_error_lines(out: &Out, file: &str) {
    assert!(!out.stderr.is_empty(), "{file}: no error line");
    for line in out.stderr.lines() {
        assert!(
            line.starts_with(&format!("ova: {file}: ")),
            "{file}: error line {line:?}"
        );
    }
}

/// `(file, inspect status, verify status)` for every file of the corpus;
/// the reasons are in crates/hypersdk-ova/testdata/SOURCES.md.
const EXPECTED: &[(&str, Status, Status)] = {
    use Status::{Integrity as I, Io as E, Malformed as M, Ok as O};
    &[
        // Manifests: the files they list are not next to them (the
        // corpus renamed them), so each is missing.
        ("mf/cot-input.mf", O, I),
        ("mf/cot-ubuntu.2.0.mf", O, I),
        ("mf/ganeti-wrong_manifest.mf", O, I),
        ("mf/ganeti.mf", O, I),
        ("mf/govmomi-ttylinux-pc_i486-16.1.mf", O, I),
        // No manifest; a hosted sparse disk, its grain tables read.
        ("ova/forklift-2nd_disk_v3.ova", O, O),
        // gzip-compressed tar; an XML file named .ova; bad XML; the disk
        // the descriptor references is absent; no descriptor.
        ("ova/ganeti-ova.ova", M, M),
        ("ova/ganeti-wrong_ova.ova", M, M),
        ("ova/glance-testserver-bad-ovf.ova", M, M),
        ("ova/glance-testserver-no-disk.ova", M, M),
        ("ova/glance-testserver-no-ovf.ova", M, M),
        // Its "disk" is the 4 bytes ABCD: not a VMDK.
        ("ova/glance-testserver.ova", O, M),
        // The disk was cut to 1 MiB: the manifest matches, ovf:size does not.
        ("ova/govmomi-ttylinux-pc_i486-16.1.ova", O, I),
        // Descriptors alone: the files they reference are absent.
        ("ovf/cot-input.ovf", O, I),
        ("ovf/cot-iosv.ovf", O, I),
        ("ovf/cot-ubuntu-virtualbox-ovf2.0.ovf", O, I),
        ("ovf/cot-v0.9.ovf", O, I),
        ("ovf/cot-vmware-ovftool.ovf", O, I),
        ("ovf/ganeti-export.ovf", O, I),
        ("ovf/ganeti-virtualbox.ovf", O, I),
        ("ovf/govmomi-3vm-vapp-vcenter.ovf", O, I),
        ("ovf/govmomi-bitnami-tomcat-ovftool2.1.ovf", O, I),
        ("ovf/govmomi-converter-winxp-vcenter.ovf", O, I),
        ("ovf/govmomi-esx-server-export-ubuntu16.ovf", O, I),
        ("ovf/govmomi-esxi-nested-vm-efi.ovf", O, I),
        ("ovf/govmomi-gzip-compression.ovf", O, I),
        ("ovf/govmomi-multiple-disks.ovf", O, I),
        ("ovf/govmomi-nsx-unified-appliance.ovf", O, I),
        ("ovf/govmomi-ovftool2.0-win2k3.ovf", O, I),
        ("ovf/govmomi-photon5-ovftool4.3-efi.ovf", O, I),
        ("ovf/govmomi-smallxp-ovf0.9.ovf", O, I),
        ("ovf/govmomi-ttylinux-ovftool4.0.ovf", O, I),
        ("ovf/govmomi-vbox1-virtualbox-export.ovf", O, I),
        ("ovf/govmomi-vbox5-virtualbox-ovf0.9.ovf", O, I),
        ("ovf/govmomi-vcf-license-server-ova-compose.ovf", O, I),
        ("ovf/govmomi-vcloud-director-vapp.ovf", O, I),
        ("ovf/govmomi-virtualsystemcollection-ovf2.ovf", O, I),
        ("ovf/govmomi-vtpm-nvram-efi.ovf", O, I),
        ("ovf/ovirt-engine-vm-ovf-3.3.ovf", O, I),
        // Empty streamOptimized disks of three writers.
        ("vmdk/cot-blank-ovftool-stream.vmdk", O, O),
        ("vmdk/cot-input-ovftool-stream.vmdk", O, O),
        ("vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk", O, O),
        // gzip: to be gunzipped first.
        ("vmdk/ganeti-compr_disk.vmdk.gz", M, M),
        ("vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk", O, O),
        (
            "vmdk/ganeti-ova-inner-new_disk-virtualbox-stream.vmdk",
            O,
            O,
        ),
        // Truncated stream: the header reads, the grains do not.
        (
            "vmdk/govmomi-ttylinux-disk1-ovftool-stream-truncated.vmdk",
            O,
            M,
        ),
        // Descriptors whose extents are not in the corpus.
        ("vmdk/securityronin-ms3-win-descriptor.vmdk", O, E),
        ("vmdk/vmdk-rs/monolithicFlat.vmdk", O, E),
        ("vmdk/vmdk-rs/monolithicSparse.vmdk", O, O),
        ("vmdk/vmdk-rs/streamOptimized.vmdk", O, O),
        ("vmdk/vmdk-rs/streamOptimizedWithMarkers.vmdk", O, O),
        ("vmdk/vmdk-rs/twoGbMaxExtentFlat.vmdk", O, E),
        ("vmdk/vmdk-rs/twoGbMaxExtentSparse-s001.vmdk", O, O),
        ("vmdk/vmdk-rs/twoGbMaxExtentSparse.vmdk", O, O),
        // A vmfsSparse delta needs its parent: unsupported.
        ("vmdk/vmdk-rs/vmfs_thick-000001.vmdk", O, M),
        // A flat extent is raw data, not a VMDK by itself.
        ("vmdk/vmdk-rs/vmfs_thick-flat.vmdk", M, M),
        ("vmdk/vmdk-rs/vmfs_thick.vmdk", O, O),
    ]
};

fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel);
        }
    }
}

#[test]
fn every_corpus_file_gets_its_expected_status_from_inspect_and_verify() {
    let root = corpus();
    let mut files = BTreeSet::new();
    walk(&root, &root, &mut files);
    files.remove("SOURCES.md");
    let listed: BTreeSet<String> = EXPECTED.iter().map(|(f, _, _)| f.to_string()).collect();
    let unlisted: Vec<_> = files.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "corpus files without an expected status (add them to EXPECTED): {unlisted:?}"
    );
    let gone: Vec<_> = listed.difference(&files).collect();
    assert!(
        gone.is_empty(),
        "EXPECTED lists files not in the corpus: {gone:?}"
    );
    let mut wrong = Vec::new();
    for (file, inspect, verify) in EXPECTED {
        let path = root.join(file);
        let path = s(&path);
        for (command, want) in [("inspect", *inspect), ("verify", *verify)] {
            let out = run(&[command, path]);
            if out.status != want {
                wrong.push(format!(
                    "{command} {file}: {:?}, expected {want:?}; stderr: {}",
                    out.status, out.stderr
                ));
                continue;
            }
            if want == Status::Ok {
                assert!(out.stderr.is_empty(), "{command} {file}: {}", out.stderr);
                assert!(!out.stdout.is_empty(), "{command} {file}: no output");
            } else {
                assert_error_lines(&out, path);
            }
        }
        // From standard input (the streaming paths): never a panic, and
        // either a clean success or one-line errors naming '-'. (A single
        // disk is verified from a stream as from a file: decoded whole,
        // which the file pass did already.)
        let bytes = std::fs::read(root.join(file)).unwrap();
        let commands: &[&str] = if file.starts_with("vmdk/") {
            &["inspect"]
        } else {
            &["inspect", "verify"]
        };
        for &command in commands {
            let out = run_stdin(&[command, "-"], bytes.clone());
            if out.status == Status::Ok {
                assert!(
                    out.stderr.is_empty(),
                    "{command} - < {file}: {}",
                    out.stderr
                );
                assert!(!out.stdout.is_empty(), "{command} - < {file}: no output");
            } else {
                assert_error_lines(&out, "-");
            }
        }
        // --json is valid JSON whenever inspect succeeds.
        if *inspect == Status::Ok {
            let out = run(&["inspect", "--json", path]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("inspect --json {file}: {e}"));
            assert!(v["kind"].is_string(), "{file}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

const TTY: &str = "ova/govmomi-ttylinux-pc_i486-16.1.ova";
const TTY_DISK: &str = "ttylinux-pc_i486-16.1-disk1.vmdk";

#[test]
fn inspect_shows_the_vm_files_and_manifest() {
    let path = corpus().join(TTY);
    let out = run(&["inspect", s(&path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let text = out.text();
    for want in [
        "virtual system 'ttylinux-pc_i486-16.1'",
        "CPUs         1",
        "memory       32 MiB",
        "firmware     uefi",
        "OS           otherLinuxGuest (linux)",
        "disk vmdisk1: 30 MiB, vmdk-stream-optimized, file 'ttylinux-pc_i486-16.1-disk1.vmdk' (1 MiB)",
        "NIC 1: e1000 on 'nat'",
        "1048576 bytes, ovf:size says 10595840",
        "sha1    ttylinux-pc_i486-16.1-disk1.vmdk  648e20a1e1625b1bb963b08c926bc18e62f15dfc",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn inspect_json_has_the_documented_stable_shape() {
    let path = corpus().join(TTY);
    let out = run(&["inspect", "--json", s(&path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let text = out.text();
    // The top-level keys, in the documented order.
    let keys = [
        "kind",
        "source",
        "descriptor",
        "ovf_version",
        "default_configuration",
        "configurations",
        "virtual_systems",
        "disks",
        "networks",
        "files",
        "entries",
        "manifest",
        "problems",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| {
            text.find(&format!("\n  \"{k}\": "))
                .unwrap_or_else(|| panic!("no key {k}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "key order: {at:?}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_object().unwrap().len(), keys.len());
    assert_eq!(v["kind"], "ova");
    assert_eq!(v["ovf_version"], "1.x");
    let vm = &v["virtual_systems"][0];
    assert_eq!(vm["name"], "ttylinux-pc_i486-16.1");
    assert_eq!(vm["cpus"], 1);
    assert_eq!(vm["memory_mib"], 32);
    assert_eq!(vm["firmware"], "uefi");
    assert_eq!(vm["disks"][0]["capacity_bytes"], 30 << 20);
    assert_eq!(vm["disks"][0]["format"], "vmdk-stream-optimized");
    assert_eq!(v["disks"][0]["file"], TTY_DISK);
    assert_eq!(v["disks"][0]["file_size"], 1 << 20);
    assert_eq!(v["files"][0]["size"], 10_595_840);
    assert_eq!(v["files"][0]["actual_size"], 1 << 20);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ttylinux-pc_i486-16.1.ovf",
            "ttylinux-pc_i486-16.1.mf",
            TTY_DISK
        ]
    );
    assert_eq!(v["entries"][2]["offset"], 7168);
    assert_eq!(v["manifest"]["entries"][1]["algorithm"], "sha1");
    assert_eq!(v["problems"], serde_json::json!([]));

    // The same package from standard input: the same facts.
    let bytes = std::fs::read(&path).unwrap();
    let piped = run_stdin(&["inspect", "--json", "-"], bytes);
    assert_eq!(piped.status, Status::Ok, "{}", piped.stderr);
    let w: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(w["source"], "-");
    for key in ["virtual_systems", "disks", "files", "entries", "manifest"] {
        assert_eq!(v[key], w[key], "{key}");
    }
}

#[test]
fn inspect_json_of_disks_and_manifests() {
    let root = corpus();
    let out = run(&[
        "inspect",
        "--json",
        s(&root.join("vmdk/vmdk-rs/streamOptimized.vmdk")),
    ]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "vmdk");
    assert_eq!(v["create_type"], "streamOptimized");
    assert_eq!(v["format"], "vmdk-stream-optimized");
    assert_eq!(v["capacity_bytes"], 10 << 20);
    assert_eq!(v["header"]["version"], 3);
    assert_eq!(v["header"]["compressed"], true);

    let out = run(&[
        "inspect",
        "--json",
        s(&root.join("vmdk/vmdk-rs/monolithicFlat.vmdk")),
    ]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"], serde_json::Value::Null);
    assert_eq!(v["extents"][0]["kind"], "FLAT");
    assert_eq!(v["extents"][0]["present"], false);
    assert_eq!(v["capacity_bytes"], 10 << 20);

    let out = run(&[
        "inspect",
        "--json",
        s(&root.join("vmdk/vmdk-rs/twoGbMaxExtentSparse.vmdk")),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["extents"][0]["present"], true);
    assert_eq!(v["format"], "vmdk-monolithic-sparse");

    let out = run(&["inspect", "--json", s(&root.join("mf/ganeti.mf"))]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "manifest");
    assert_eq!(v["entries"][0]["algorithm"], "sha1");
}

#[test]
fn verify_names_the_truncated_disk_of_ttylinux() {
    let path = corpus().join(TTY);
    let out = run(&["verify", s(&path)]);
    assert_eq!(out.status, Status::Integrity);
    let text = out.text();
    assert!(
        text.contains("ttylinux-pc_i486-16.1.ovf: OK (descriptor; sha1 verified)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{TTY_DISK}: FAILED: integrity check failed for entry '{TTY_DISK}': expected \
             10595840 bytes, as the descriptor's ovf:size says, got 1048576 bytes"
        )),
        "{text}"
    );
    assert!(text.contains("truncated"), "{text}");
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    assert_error_lines(&out, s(&path));
}

/// Copies corpus files into `dir` under the names their manifest uses.
fn package_dir(dir: &Path, files: &[(&str, &str)]) {
    for (from, to) in files {
        std::fs::copy(corpus().join(from), dir.join(to)).unwrap();
    }
}

#[test]
fn verify_checks_directory_packages_and_manifests_like_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    package_dir(
        dir.path(),
        &[
            ("ovf/ganeti-export.ovf", "ganeti.ovf"),
            ("mf/ganeti.mf", "ganeti.mf"),
            (
                "vmdk/ganeti-new_disk-qemu-monolithicSparse.vmdk",
                "new_disk.vmdk",
            ),
            ("mf/ganeti-wrong_manifest.mf", "wrong_manifest.mf"),
        ],
    );
    let out = run(&["verify", s(&dir.path().join("ganeti.ovf"))]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let text = out.text();
    assert!(
        text.contains("ganeti.ovf: OK (descriptor; sha1 verified)"),
        "{text}"
    );
    assert!(
        text.contains("new_disk.vmdk: OK (sha1 verified; VMDK monolithicSparse"),
        "{text}"
    );
    let out = run(&["verify", s(&dir.path().join("ganeti.mf"))]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);

    // The deliberately wrong manifest: its digests do not match.
    std::fs::copy(
        dir.path().join("ganeti.ovf"),
        dir.path().join("wrong_manifest.ovf"),
    )
    .unwrap();
    let mf = dir.path().join("wrong_manifest.mf");
    let out = run(&["verify", s(&mf)]);
    assert_eq!(out.status, Status::Integrity);
    let text = out.text();
    assert!(
        text.contains("new_disk.vmdk: FAILED: integrity check failed"),
        "{text}"
    );
    assert_error_lines(&out, s(&mf));

    // A VirtualBox OVF 2.0 package with an 8 GiB empty stream disk.
    let dir = tempfile::tempdir().unwrap();
    package_dir(
        dir.path(),
        &[
            ("ovf/cot-ubuntu-virtualbox-ovf2.0.ovf", "ubuntu.2.0.ovf"),
            ("mf/cot-ubuntu.2.0.mf", "ubuntu.2.0.mf"),
            (
                "vmdk/cot-ubuntu.2.0-disk1-virtualbox-stream.vmdk",
                "ubuntu.2.0-disk1.vmdk",
            ),
        ],
    );
    let out = run(&["verify", s(&dir.path().join("ubuntu.2.0.ovf"))]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(
        out.text()
            .contains("ubuntu.2.0-disk1.vmdk: OK (sha256 verified; VMDK streamOptimized, 8 GiB, 0 grains decoded)"),
        "{}",
        out.text()
    );
    // Without its manifest, --require-manifest fails it.
    std::fs::remove_file(dir.path().join("ubuntu.2.0.mf")).unwrap();
    let out = run(&[
        "verify",
        "--require-manifest",
        s(&dir.path().join("ubuntu.2.0.ovf")),
    ]);
    assert_eq!(out.status, Status::Integrity, "{}", out.stderr);
}

#[test]
fn verify_a_single_disk_decodes_it_and_gives_the_raw_digest() {
    let path = corpus().join("vmdk/vmdk-rs/streamOptimized.vmdk");
    let out = run(&["verify", s(&path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    // qemu-img convert's raw image has this sha256 (SOURCES.md).
    assert!(
        out.text().contains(
            "raw image sha256 a3bcf05f07a1c06a3380eeca8571f0efb2b85afafa1e21662b8cad436d1f7727"
        ),
        "{}",
        out.text()
    );
    // The same from standard input.
    let out = run_stdin(&["verify", "-"], std::fs::read(&path).unwrap());
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    // A hosted sparse disk needs random access: not from a pipe.
    let path = corpus().join("vmdk/vmdk-rs/monolithicSparse.vmdk");
    let out = run_stdin(&["verify", "-"], std::fs::read(&path).unwrap());
    assert_eq!(out.status, Status::Malformed);
    assert!(out.stderr.contains("random access"), "{}", out.stderr);
}

#[test]
fn hosted_sparse_disks_in_a_package_are_checked_through_the_index() {
    let path = corpus().join("ova/forklift-2nd_disk_v3.ova");
    let out = run(&["verify", s(&path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(
        out.text().contains("grain tables checked"),
        "{}",
        out.text()
    );
    let out = run_stdin(&["verify", "-"], std::fs::read(&path).unwrap());
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(out.text().contains("header checked"), "{}", out.text());
    // Converting it: through the index from a file; not from a pipe.
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["convert", s(&path), s(dir.path()), "--to", "raw"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let raw = dir.path().join("2nd_disk.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 30);
    let other = tempfile::tempdir().unwrap();
    let out = run_stdin(
        &["convert", "-", s(other.path()), "--to", "raw"],
        std::fs::read(&path).unwrap(),
    );
    assert_eq!(out.status, Status::Malformed);
    assert!(
        out.stderr.contains("give the package as a file"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
}

/// A 4 MiB raw disk: random-looking data, text, zeros.
fn raw_disk(path: &Path) -> Vec<u8> {
    let mut disk = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut disk[..512 << 10] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let text = b"hypersdk ova example disk. ".repeat(40_000);
    disk[(2 << 20)..(2 << 20) + (1 << 20)].copy_from_slice(&text[..1 << 20]);
    disk[(4 << 20) - 4096..].fill(0x5a);
    std::fs::write(path, &disk).unwrap();
    disk
}

/// A directory package: `web01.ovf` and `web01-disk1.vmdk` made by
/// `convert --to vmdk-stream` from a raw disk. Returns the raw bytes.
fn directory_package(dir: &Path) -> Vec<u8> {
    let raw = dir.join("disk.raw");
    let bytes = raw_disk(&raw);
    let vmdk = dir.join("web01-disk1.vmdk");
    let out = run(&["convert", s(&raw), s(&vmdk), "--to", "vmdk-stream"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(
        out.text().contains("streamOptimized VMDK of 4 MiB"),
        "{}",
        out.text()
    );
    let mut vm = VmInfo::new("vm-1", "web01");
    vm.cpus = 2;
    vm.memory_mib = 2048;
    vm.firmware = Firmware::Uefi;
    vm.disks.push(DiskInfo::new("disk0", bytes.len() as u64));
    let size = std::fs::metadata(&vmdk).unwrap().len();
    let xml = write_descriptor(
        &vm,
        &[OvfDisk::new("web01-disk1.vmdk")
            .with_format(DiskFormat::VmdkStreamOptimized)
            .with_size(size)],
    )
    .unwrap();
    std::fs::write(dir.join("web01.ovf"), xml).unwrap();
    bytes
}

#[test]
fn pack_verify_unpack_and_convert_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let raw = directory_package(&src);
    let ova_path = work.path().join("web01.ova");
    let out = run(&["pack", s(&src.join("web01.ovf")), s(&ova_path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(
        out.text()
            .contains("manifest 'web01.mf' (SHA-256) after the descriptor")
    );
    // DSP0243 order: descriptor, manifest, disk.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = rt.block_on(OvaIndex::open(&ova_path)).unwrap();
    let names: Vec<&str> = index.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["web01.ovf", "web01.mf", "web01-disk1.vmdk"]);
    let e = index.entry("web01.mf").unwrap();
    let packed = std::fs::read(&ova_path).unwrap();
    let mf = String::from_utf8(
        packed[e.data_offset as usize..(e.data_offset + e.size) as usize].to_vec(),
    )
    .unwrap();
    assert!(mf.starts_with("SHA256(web01.ovf)= "), "{mf}");
    // An existing output is never replaced.
    let again = run(&["pack", s(&src.join("web01.ovf")), s(&ova_path)]);
    assert_eq!(again.status, Status::Io);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    let out = run(&["verify", s(&ova_path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let text = out.text();
    assert!(
        text.contains("web01.ovf: OK (descriptor; sha256 verified)"),
        "{text}"
    );
    assert!(
        text.contains("web01-disk1.vmdk: OK (sha256 verified; VMDK streamOptimized, 4 MiB"),
        "{text}"
    );
    assert!(text.contains(": OK (1 file, manifest verified)"), "{text}");
    let out = run_stdin(&["verify", "-"], std::fs::read(&ova_path).unwrap());
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);

    let out = run(&["inspect", "--json", s(&ova_path)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["virtual_systems"][0]["cpus"], 2);
    assert_eq!(v["virtual_systems"][0]["memory_mib"], 2048);
    assert_eq!(
        v["virtual_systems"][0]["disks"][0]["capacity_bytes"],
        4 << 20
    );

    // Unpack: the files as packed, the manifest's own bytes.
    let dir = work.path().join("unpacked");
    let out = run(&["unpack", s(&ova_path), s(&dir)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    for f in ["web01.ovf", "web01-disk1.vmdk"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(std::fs::read_to_string(dir.join("web01.mf")).unwrap(), mf);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["web01-disk1.vmdk", "web01.mf", "web01.ovf"]);
    // The unpacked directory verifies as a directory package.
    let out = run(&["verify", s(&dir.join("web01.ovf"))]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    // A second unpack refuses to replace them; --force does.
    std::fs::write(dir.join("web01.ovf"), b"mine").unwrap();
    let out = run(&["unpack", s(&ova_path), s(&dir)]);
    assert_eq!(out.status, Status::Io);
    assert_eq!(std::fs::read(dir.join("web01.ovf")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        3,
        "no temporary left"
    );
    let out = run(&["unpack", "--force", s(&ova_path), s(&dir)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(dir.join("web01.ovf")).unwrap(),
        std::fs::read(src.join("web01.ovf")).unwrap()
    );

    // Convert the package's disks to raw: the original bytes, sparse.
    let raws = work.path().join("raws");
    let out = run(&["convert", s(&ova_path), s(&raws), "--to", "raw"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let image = raws.join("web01-disk1.raw");
    assert_eq!(std::fs::read(&image).unwrap(), raw);
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&image).unwrap().blocks() * 512;
        assert!(
            allocated < raw.len() as u64,
            "not sparse: {allocated} bytes allocated"
        );
    }
    // From standard input too, into another directory.
    let raws2 = work.path().join("raws2");
    let out = run_stdin(
        &["convert", "-", s(&raws2), "--to", "raw"],
        std::fs::read(&ova_path).unwrap(),
    );
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert_eq!(std::fs::read(raws2.join("web01-disk1.raw")).unwrap(), raw);
    // A second conversion into the same directory refuses to replace.
    let out = run(&["convert", s(&ova_path), s(&raws), "--to", "raw"]);
    assert_eq!(out.status, Status::Io);
    let entries: Vec<_> = std::fs::read_dir(&raws).unwrap().collect();
    assert_eq!(entries.len(), 1, "no staging directory left");

    // A single disk: VMDK to raw and back through standard streams.
    let single = work.path().join("single.raw");
    let out = run(&[
        "convert",
        s(&src.join("web01-disk1.vmdk")),
        s(&single),
        "--to",
        "raw",
    ]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert_eq!(std::fs::read(&single).unwrap(), raw);
    let out = run(&["convert", s(&single), "-", "--to", "vmdk-stream"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let piped = work.path().join("piped.raw");
    let back = run_stdin(&["convert", "-", s(&piped), "--to", "raw"], out.stdout);
    assert_eq!(back.status, Status::Ok, "{}", back.stderr);
    assert_eq!(std::fs::read(&piped).unwrap(), raw);
}

#[test]
fn pack_to_standard_output_and_with_the_manifest_last() {
    let work = tempfile::tempdir().unwrap();
    directory_package(work.path());
    let ovf = work.path().join("web01.ovf");
    let out = run(&["pack", s(&ovf), "-"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(out.stderr.contains("-: packed 2 files"), "{}", out.stderr);
    let verified = run_stdin(&["verify", "-"], out.stdout);
    assert_eq!(verified.status, Status::Ok, "{}", verified.text());

    let at_end = work.path().join("end.ova");
    let out = run(&["pack", "--manifest-at-end", s(&ovf), s(&at_end)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = rt.block_on(OvaIndex::open(&at_end)).unwrap();
    let names: Vec<&str> = index.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["web01.ovf", "web01-disk1.vmdk", "web01.mf"]);
    let out = run(&["verify", s(&at_end)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);

    // A flipped byte in the disk: found when the manifest arrives, named.
    let mut bytes = std::fs::read(&at_end).unwrap();
    let disk = index.entry("web01-disk1.vmdk").unwrap();
    bytes[(disk.data_offset + disk.size / 2) as usize] ^= 0x20;
    let bad = work.path().join("bad.ova");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&["verify", s(&bad)]);
    assert_eq!(out.status, Status::Integrity, "{}", out.text());
    assert!(
        out.text()
            .contains("web01-disk1.vmdk: FAILED: integrity check failed"),
        "{}",
        out.text()
    );
    assert_error_lines(&out, s(&bad));
    // Unpacking it leaves nothing behind, not even the directory.
    let dir = work.path().join("out");
    let out = run(&["unpack", s(&bad), s(&dir)]);
    assert_eq!(out.status, Status::Integrity, "{}", out.stderr);
    assert!(!dir.exists(), "the directory the run made is left");

    // A descriptor whose ovf:size disagrees with its file is not packed.
    let xml = std::fs::read_to_string(&ovf).unwrap();
    let size = std::fs::metadata(work.path().join("web01-disk1.vmdk"))
        .unwrap()
        .len();
    let wrong = xml.replace(&format!("ovf:size=\"{size}\""), "ovf:size=\"12345\"");
    assert_ne!(wrong, xml);
    std::fs::write(&ovf, wrong).unwrap();
    let target = work.path().join("wrong.ova");
    let out = run(&["pack", s(&ovf), s(&target)]);
    assert_eq!(out.status, Status::Integrity, "{}", out.stderr);
    assert!(!target.exists());
}

#[test]
fn a_flipped_byte_fails_verify_and_unpack_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    directory_package(work.path());
    let ova_path = work.path().join("web01.ova");
    let out = run(&["pack", s(&work.path().join("web01.ovf")), s(&ova_path)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index = rt.block_on(OvaIndex::open(&ova_path)).unwrap();
    let disk = index.entry("web01-disk1.vmdk").unwrap();
    let mut bytes = std::fs::read(&ova_path).unwrap();
    bytes[(disk.data_offset + disk.size - 700) as usize] ^= 1;
    let bad = work.path().join("bad.ova");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&["verify", s(&bad)]);
    assert_eq!(out.status, Status::Integrity, "{}", out.text());
    assert!(
        out.text()
            .contains("web01-disk1.vmdk: FAILED: integrity check failed")
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // Read from a pipe, the same.
    let out = run_stdin(&["verify", "-"], bytes.clone());
    assert_eq!(out.status, Status::Integrity);
    // The manifest came first: the disk fails while it is written.
    let dir = work.path().join("out");
    let out = run(&["unpack", s(&bad), s(&dir)]);
    assert_eq!(out.status, Status::Integrity, "{}", out.stderr);
    assert_error_lines(&out, s(&bad));
    assert!(!dir.exists(), "the directory the run made is left");
    // Into a directory that exists: it stays, empty.
    std::fs::create_dir(&dir).unwrap();
    let out = run_stdin(&["unpack", "-", s(&dir)], bytes);
    assert_eq!(out.status, Status::Integrity);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let raws = work.path().join("raws");
    let out = run(&["convert", s(&bad), s(&raws), "--to", "raw"]);
    assert_eq!(out.status, Status::Integrity, "{}", out.stderr);
    assert!(!raws.exists(), "the directory the run made is left");
}

#[test]
fn unpack_never_writes_through_a_symbolic_link() {
    use hypersdk_ova::archive::{OvaWriter, WriteOptions};
    let work = tempfile::tempdir().unwrap();
    // A package whose file is in a subdirectory: sub/data.bin.
    let xml = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="sub/data.bin" ovf:id="file1"/></References>
</Envelope>
"#;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt.block_on(async {
        let mut w = OvaWriter::new(Vec::new(), WriteOptions::default());
        w.write_descriptor("pkg.ovf", xml.as_bytes()).await.unwrap();
        w.append_bytes("sub/data.bin", b"payload".to_vec().into())
            .await
            .unwrap();
        w.finish().await.unwrap()
    });
    let ova_path = work.path().join("pkg.ova");
    std::fs::write(&ova_path, &bytes).unwrap();
    // Into a fresh directory: the subdirectory is made.
    let good = work.path().join("good");
    let out = run(&["unpack", s(&ova_path), s(&good)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(good.join("sub/data.bin")).unwrap(),
        b"payload"
    );
    // Where `sub` is a link to elsewhere: refused, nothing written there.
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let dir = work.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    let out = run(&["unpack", s(&ova_path), s(&dir)]);
    assert_eq!(out.status, Status::Malformed, "{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "only the link");
}

#[test]
fn usage_errors_and_help() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status, Status::Malformed);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("ova: usage: "), "{}", out.stderr);
    let out = run(&["convert", "a", "b"]);
    assert_eq!(out.status, Status::Malformed);
    assert!(out.stderr.contains("--to"), "{}", out.stderr);
    let out = run(&["--help"]);
    assert_eq!(out.status, Status::Ok);
    assert!(out.text().contains("Exit status:"), "{}", out.text());
    let out = run(&["inspect", "/nonexistent/x.ova"]);
    assert_eq!(out.status, Status::Io);
    assert_error_lines(&out, "/nonexistent/x.ova");
    // Standard input that is nothing known.
    let out = run_stdin(&["inspect", "-"], b"hello".to_vec());
    assert_eq!(out.status, Status::Malformed);
    assert_error_lines(&out, "-");
}

/// One ustar member: a header (typeflag `kind`, `size` as given, which may
/// lie) and `data` padded to 512 bytes.
fn tar_member(name: &str, kind: u8, size: u64, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    if kind == b'2' {
        h[157..168].copy_from_slice(b"/etc/passwd");
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A tar of a descriptor referencing `x.bin` and then `member`.
fn hostile_tar(member: Vec<u8>) -> Vec<u8> {
    let xml = br#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="x.bin" ovf:id="file1"/></References>
</Envelope>
"#;
    let mut tar = tar_member("a.ovf", b'0', xml.len() as u64, xml);
    tar.extend(member);
    tar.extend([0u8; 1024]);
    tar
}

#[test]
fn hostile_packages_fail_cleanly_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let good = hostile_tar(tar_member("x.bin", b'0', 7, b"payload"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            hostile_tar(tar_member("../x.bin", b'0', 4, b"evil")),
        ),
        (
            "dotdot-deep",
            hostile_tar(tar_member("sub/../../x.bin", b'0', 4, b"evil")),
        ),
        (
            "absolute",
            hostile_tar(tar_member("/tmp/x.bin", b'0', 4, b"evil")),
        ),
        ("symlink", hostile_tar(tar_member("x.bin", b'2', 0, b""))),
        ("hardlink", hostile_tar(tar_member("x.bin", b'1', 0, b""))),
        (
            "huge-size",
            hostile_tar(tar_member("x.bin", b'0', 0o77_777_777_777, b"short")),
        ),
        ("truncated-header", good[..700].to_vec()),
        ("truncated-data", good[..1536 + 3].to_vec()),
        ("no-end", good[..good.len() - 1024].to_vec()),
        ("garbage", b"\x7fELF not a package at all".repeat(40)),
        ("empty", Vec::new()),
        ("zeros", vec![0u8; 10240]),
    ];
    for (name, bytes) in cases {
        let file = work.path().join(format!("{name}.ova"));
        std::fs::write(&file, &bytes).unwrap();
        let path = s(&file);
        let dir = work.path().join(format!("{name}-out"));
        let d = s(&dir);
        for args in [
            vec!["inspect", path],
            vec!["inspect", "--json", path],
            vec!["verify", path],
            vec!["unpack", path, d],
            vec!["convert", path, d, "--to", "raw"],
        ] {
            let out = run(&args);
            assert_eq!(
                out.status,
                Status::Malformed,
                "{name}: {args:?}: {}",
                out.stderr
            );
            assert_error_lines(&out, path);
            assert!(!dir.exists(), "{name}: {args:?} left {d}");
            // The same from standard input.
            let piped: Vec<&str> = args
                .iter()
                .map(|&a| if a == path { "-" } else { a })
                .collect();
            let out = run_stdin(&piped, bytes.clone());
            assert_eq!(
                out.status,
                Status::Malformed,
                "{name}: {piped:?}: {}",
                out.stderr
            );
            assert_error_lines(&out, "-");
            assert!(!dir.exists(), "{name}: {piped:?} left {d}");
        }
    }
    assert!(!work.path().join("x.bin").exists());
    assert!(!Path::new("/tmp/x.bin").exists());

    // The well-formed one unpacks; '-' is not a directory.
    let file = work.path().join("good.ova");
    std::fs::write(&file, &good).unwrap();
    let dir = work.path().join("good-out");
    let out = run(&["unpack", s(&file), s(&dir)]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert_eq!(std::fs::read(dir.join("x.bin")).unwrap(), b"payload");
    for args in [
        vec!["unpack", s(&file), "-"],
        vec!["convert", s(&file), "-", "--to", "raw"],
    ] {
        let out = run(&args);
        assert_eq!(out.status, Status::Malformed, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("not to standard output"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn hostile_disks_fail_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Extents whose sectors overflow when added.
        (
            "overflow.vmdk",
            b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n\
              RW 18446744073709551615 FLAT \"a\" 0\nRW 18446744073709551615 FLAT \"b\" 0\n"
                .to_vec(),
            "sector limit",
        ),
        // Raw data named .vmdk (a flat extent): not a VMDK.
        (
            "flat.vmdk",
            [&[0xfa, 0xb8, 0x00, 0x10][..], &[0x8e; 4096][..]].concat(),
            "not a VMDK",
        ),
        (
            "bad-header.vmdk",
            [&b"KDMV"[..], &[0xff; 1020][..]].concat(),
            "version",
        ),
        ("empty.vmdk", Vec::new(), "not a VMDK"),
    ];
    for (name, bytes, want) in cases {
        let file = work.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        let path = s(&file);
        let target = work.path().join(format!("{name}.raw"));
        for args in [
            vec!["inspect", path],
            vec!["verify", path],
            vec!["convert", path, s(&target), "--to", "raw"],
        ] {
            let out = run(&args);
            assert_eq!(
                out.status,
                Status::Malformed,
                "{name}: {args:?}: {}",
                out.stderr
            );
            assert_error_lines(&out, path);
            if args[0] == "inspect" {
                assert!(out.stderr.contains(want), "{name}: {}", out.stderr);
            }
            assert!(!target.exists());
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".vmdk"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn convert_refuses_to_encode_other_containers_as_raw() {
    let work = tempfile::tempdir().unwrap();
    let corpus_vmdk = corpus().join("vmdk/cot-blank-ovftool-stream.vmdk");
    let mut vdi = vec![0u8; 4096];
    vdi[..40].copy_from_slice(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
    vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "guest.qcow2",
            [&b"QFI\xfb"[..], &[0; 4092][..]].concat(),
            "qcow2",
        ),
        (
            "guest.img",
            [&b"QFI\xfb"[..], &[0; 4092][..]].concat(),
            "qcow2",
        ),
        (
            "guest.vhdx",
            [&b"vhdxfile"[..], &[0; 4088][..]].concat(),
            "VHDX",
        ),
        ("guest.vdi", vdi, "VDI"),
        (
            "packed.raw",
            [&[0x1f, 0x8b][..], &[0; 4094][..]].concat(),
            "gzip",
        ),
        // A VMDK under a raw image's name.
        ("disk.img", std::fs::read(&corpus_vmdk).unwrap(), "VMDK"),
    ];
    for (name, bytes, want) in cases {
        let file = work.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        let target = work.path().join(format!("{name}.vmdk"));
        let out = run(&["convert", s(&file), s(&target), "--to", "vmdk-stream"]);
        assert_eq!(out.status, Status::Malformed, "{name}: {}", out.stderr);
        assert_error_lines(&out, s(&file));
        assert!(out.stderr.contains(want), "{name}: {}", out.stderr);
        assert!(!target.exists(), "{name}: an output was written");
    }
    // Raw bytes that merely start like nothing known still convert.
    let raw = work.path().join("plain.img");
    std::fs::write(&raw, [&[0xfa, 0x33, 0xc0][..], &[0x5a; 65533][..]].concat()).unwrap();
    let target = work.path().join("plain.vmdk");
    let out = run(&["convert", s(&raw), s(&target), "--to", "vmdk-stream"]);
    assert_eq!(out.status, Status::Ok, "{}", out.stderr);
    assert!(target.exists());
}
