//! `ova-upload` against the vcsim harness: killed with SIGKILL mid-import
//! and resumed, a wrong thumbprint refused before the password is sent,
//! and the command line itself.
//!
//! The SIGKILL test needs a process to kill: it runs this test binary
//! again with only [`child_process_entry`] selected and the command line
//! in `OVA_UPLOAD_CHILD_ARGS`, which makes that test run the program and
//! exit with its status. Run normally, `child_process_entry` checks the
//! parsing of the old tool's command lines instead.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use clap::Parser;
use hypersdk_core::checkpoint::CheckpointStore;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_ova::archive::{OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_testkit::images;
use hypersdk_testkit::qemu;
use hypersdk_testkit::vcsim::{MethodFault, Vcsim};

use super::{Cli, dispatch, leftover_of, run};

const CHILD_ENV: &str = "OVA_UPLOAD_CHILD_ARGS";

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("ova-upload").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn child_process_entry() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let args: Vec<String> = serde_json::from_str(&args).expect("child arguments");
        let parsed = Cli::try_parse_from(std::iter::once("ova-upload".to_owned()).chain(args))
            .expect("child command line");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        std::process::exit(runtime.block_on(run(parsed)));
    }
    // The old tool's command lines parse.
    let c = cli(&[
        "upload",
        "vm.ova",
        "esxi.example.com",
        "-d",
        "datastore1",
        "-n",
        "My VM",
        "--network",
        "Prod",
        "-u",
        "administrator",
        "-p",
        "secret",
        "--max-retries",
        "0",
        "--base-delay",
        "2s",
        "--max-delay",
        "2m",
        "--thumbprint",
        "AB:CD",
        "--verbose",
    ]);
    let super::Command::Upload(u) = c.command else {
        panic!("not an upload")
    };
    assert_eq!(
        (
            u.datastore.as_str(),
            u.vm_name.as_deref(),
            u.network.as_str()
        ),
        ("datastore1", Some("My VM"), "Prod")
    );
    assert!(c.verbose && !c.quiet);
    assert_eq!(super::backoff(&u.conn.common).unwrap().max_attempts, None);
    assert!(matches!(
        cli(&["resume", "--session-id", "x"]).command,
        super::Command::Resume(_)
    ));
    assert!(matches!(
        cli(&["list-sessions"]).command,
        super::Command::ListSessions
    ));
    assert!(matches!(
        cli(&["clean-sessions", "--older-than", "7d"]).command,
        super::Command::CleanSessions(_)
    ));
    // The datastore is required; quiet and verbose exclude each other.
    assert!(Cli::try_parse_from(["ova-upload", "upload", "a.ova", "h"]).is_err());
    assert!(Cli::try_parse_from(["ova-upload", "-q", "-v", "list-sessions"]).is_err());
    assert_eq!(
        super::parse_duration("500ms").unwrap(),
        Duration::from_millis(500)
    );
    assert_eq!(
        super::parse_duration("2m").unwrap(),
        Duration::from_secs(120)
    );
    assert!(super::parse_duration("2 fortnights").is_err());
}

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/hypersdk-ova/testdata")
        .join(rel)
}

/// An OVA of one VM with two streamOptimized disks made by qemu-img.
async fn two_disk_ova(dir: &Path) -> (PathBuf, Vec<String>) {
    let a = images::random(dir.join("a.raw"), 3 << 20, 21).unwrap();
    let b = images::mixed(dir.join("b.raw"), 6 << 20, 22, 60).unwrap();
    let mut vm = VmInfo::new("two", "two");
    vm.cpus = 1;
    vm.memory_mib = 64;
    let mut files = Vec::new();
    let mut disks = Vec::new();
    let mut shas = Vec::new();
    for (i, raw) in [a, b].iter().enumerate() {
        let vmdk = dir.join(format!("two-disk{i}.vmdk"));
        qemu::to_stream_optimized(&raw.path, &vmdk)
            .await
            .expect("qemu-img");
        let bytes = std::fs::read(&vmdk).unwrap();
        shas.push(Checksum::compute(Algorithm::Sha256, &bytes).to_hex());
        vm.disks.push(DiskInfo::new(format!("disk{i}"), raw.len));
        files.push(
            OvfDisk::new(format!("two-disk{i}.vmdk"))
                .with_format(DiskFormat::VmdkStreamOptimized)
                .with_size(bytes.len() as u64),
        );
        disks.push(vmdk);
    }
    let ovf = write_descriptor(&vm, &files).unwrap();
    let out = dir.join("two.ova");
    let mut ova = OvaWriter::create(&out, WriteOptions::default())
        .await
        .unwrap();
    ova.write_descriptor("two.ovf", ovf.as_bytes())
        .await
        .unwrap();
    for d in &disks {
        let size = std::fs::metadata(d).unwrap().len();
        let f = tokio::fs::File::open(d).await.unwrap();
        ova.append_reader(d.file_name().unwrap().to_str().unwrap(), Some(size), f)
            .await
            .unwrap();
    }
    ova.finish().await.unwrap();
    (out, shas)
}

async fn calls(sim: &Vcsim, method: &str) -> u64 {
    sim.call_counts()
        .await
        .unwrap()
        .get(method)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_then_resumed_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, shas) = two_disk_ova(dir.path()).await;
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let thumb = sim.thumbprint_sha1().expect("TLS").to_owned();
    // The first HttpNfcLeaseComplete hangs: the run is killed once both
    // disks are on the server and the lease is about to complete, with
    // its VM and lease on the server.
    sim.fail_method(MethodFault::delay(
        "HttpNfcLeaseComplete",
        Duration::from_secs(120),
    ))
    .await
    .unwrap();

    let args = serde_json::to_string(&[
        "upload",
        ova.to_str().unwrap(),
        &sim.host_port(),
        "--datastore",
        "LocalDS_0",
        "--vm-name",
        "killme",
        "--username",
        sim.username(),
        "--thumbprint",
        &thumb,
        "--session-dir",
        sessions.to_str().unwrap(),
        "--quiet",
    ])
    .unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "tests::child_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, args)
        .env("OVA_UPLOAD_PASSWORD", sim.password())
        .spawn()
        .unwrap();
    let store = CheckpointStore::open(&sessions).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the upload made no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the upload exited before it was killed: {status}");
        }
        let leftover = store
            .list()
            .unwrap()
            .into_iter()
            .filter_map(|e| e.session.ok())
            .find_map(|s| leftover_of(&s));
        if leftover.is_some() && calls(&sim, "HttpNfcLeaseComplete").await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Killed: its session records the VM it left; the VM is there.
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let session = listed[0].session.as_ref().unwrap().clone();
    assert!(!super::is_done(&session));
    let leftover = leftover_of(&session).expect("the leftover is recorded");
    assert_eq!(leftover.name, "killme");
    let inv = sim.inventory().await.unwrap();
    assert_eq!(
        inv.vm("killme").unwrap().entity.moref,
        leftover.entity.value
    );
    let first: Vec<_> = sim
        .uploaded_files()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.vm_name == "killme")
        .collect();
    assert_eq!(first.len(), 2, "both disks were sent before the kill");
    assert!(session.items.iter().all(|i| i.is_complete()), "{session:?}");

    // Resume (the most recent session; the password again, the rest from
    // the session): the leftover is removed and the import done again.
    let password = sim.password().to_owned();
    let code = run(cli(&[
        "resume",
        "--session-dir",
        sessions.to_str().unwrap(),
        "--password",
        &password,
        "--quiet",
    ]))
    .await;
    assert_eq!(code, 0);
    let inv = sim.inventory().await.unwrap();
    let vms: Vec<_> = inv
        .vms
        .iter()
        .filter(|v| v.entity.name == "killme")
        .collect();
    assert_eq!(vms.len(), 1, "one VM, the killed run's removed");
    assert_ne!(vms[0].entity.moref, leftover.entity.value);
    let ups: Vec<_> = sim
        .uploaded_files()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.vm_name == "killme")
        .collect();
    assert_eq!(ups.len(), 4, "{ups:?}");
    for (i, sha) in shas.iter().enumerate() {
        let name = format!("disk-{i}.vmdk");
        let last = ups.iter().rev().find(|u| u.name == name).unwrap();
        assert!(last.complete);
        assert_eq!(&last.sha256, sha, "{name} differs after the resume");
        assert_eq!(last.vm, vms[0].entity.moref);
    }
    let session = store.load(&session.id).unwrap();
    assert!(super::is_done(&session));
    assert!(leftover_of(&session).is_none());
    assert_eq!(
        session.metadata["vm"].as_str(),
        Some(vms[0].entity.moref.as_str())
    );
    assert!(!serde_json::to_string(&session).unwrap().contains(&password));

    // Nothing left to resume; completed sessions are cleaned.
    let e = dispatch(cli(&[
        "resume",
        "--session-dir",
        sessions.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert_eq!(e.code, 2, "{}", e.message);
    assert_eq!(
        run(cli(&[
            "list-sessions",
            "--session-dir",
            sessions.to_str().unwrap()
        ]))
        .await,
        0
    );
    assert_eq!(
        run(cli(&[
            "clean-sessions",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet"
        ]))
        .await,
        0
    );
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_thumbprint_is_refused_before_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let ova = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let host = sim.host_port();
    let upload = |thumb: String, password: String| {
        cli(&[
            "upload",
            ova.to_str().unwrap(),
            &host,
            "--datastore",
            "LocalDS_0",
            "--vm-name",
            "pinned",
            "--username",
            sim.username(),
            "--password",
            &password,
            "--thumbprint",
            &thumb,
            "--max-retries",
            "1",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet",
        ])
    };
    let wrong = vec!["AB"; 20].join(":");
    let e = dispatch(upload(wrong, sim.password().to_owned()))
        .await
        .unwrap_err();
    assert_eq!(e.code, 1);
    let m = e.message.to_lowercase();
    assert!(
        m.contains("thumbprint") || m.contains("certificate"),
        "{}",
        e.message
    );
    assert!(!e.message.contains(sim.password()));
    assert_eq!(calls(&sim, "Login").await, 0, "a credential was sent");

    // The right thumbprint with a wrong password: refused by the server.
    let right = sim.thumbprint_sha256().unwrap().to_owned();
    let e = dispatch(upload(right.clone(), "not-the-password".into()))
        .await
        .unwrap_err();
    assert!(
        e.message.to_lowercase().contains("authenticat"),
        "{}",
        e.message
    );
    assert_eq!(calls(&sim, "Login").await, 1);

    // And with the right password it imports.
    assert_eq!(run(upload(right, sim.password().to_owned())).await, 0);
    assert!(sim.inventory().await.unwrap().vm("pinned").is_some());

    // --insecure with a pin is a usage error.
    let e = dispatch(cli(&[
        "upload",
        ova.to_str().unwrap(),
        &host,
        "-d",
        "LocalDS_0",
        "--insecure",
        "--thumbprint",
        "AB",
        "--session-dir",
        sessions.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert_eq!(e.code, 2);
}
