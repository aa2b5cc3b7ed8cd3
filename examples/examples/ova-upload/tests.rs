//! `ova-upload` against the vcsim harness: killed with SIGKILL after its
//! first disk and resumed within the same lease (the finished disk not
//! sent again), or, once the lease expired, by a full re-import;
//! `clean-sessions` logging out the login session a removed session held;
//! a wrong thumbprint refused before the password is sent; and the command
//! line itself.
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
use hypersdk_core::checkpoint::{CheckpointStore, TransferSession};
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::{DiskFormat, DiskInfo, VmInfo};
use hypersdk_ova::archive::{OvaWriter, WriteOptions};
use hypersdk_ova::ovf::{OvfDisk, write_descriptor};
use hypersdk_testkit::images;
use hypersdk_testkit::qemu;
use hypersdk_testkit::vcsim::{CutTransfer, UploadedFile, Vcsim};

use super::{Cli, LOGIN_SESSION, REATTACH, dispatch, leftover_of, reattach_of, run};

const CHILD_ENV: &str = "OVA_UPLOAD_CHILD_ARGS";

/// A child process that is killed (SIGKILL) and waited for when dropped:
/// a failed assertion never leaves it running.
struct Child(std::process::Child);

impl Child {
    /// Runs `ova-upload` with `args` in a child process (this test binary
    /// again, see [`child_process_entry`]), with `password` in the
    /// environment.
    fn spawn(args: &[&str], password: &str) -> Child {
        let args = serde_json::to_string(args).unwrap();
        Child(
            Process::new(std::env::current_exe().unwrap())
                .args([
                    "tests::child_process_entry",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, args)
                .env("OVA_UPLOAD_PASSWORD", password)
                .spawn()
                .unwrap(),
        )
    }

    /// Waits for the child to exit, for at most `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

async fn uploads_of(sim: &Vcsim, vm_name: &str) -> Vec<UploadedFile> {
    sim.uploaded_files()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.vm_name == vm_name)
        .collect()
}

/// Runs `ova-upload upload` of `ova` as `vm_name` in a child process and
/// kills it (SIGKILL) once its first disk was uploaded whole: the harness
/// holds the second disk's upload after 64 KiB (and drops it, never
/// completing it, 2 minutes later), so the kill lands while that one is
/// in flight. Meanwhile `resume` and `clean-sessions` find the session in
/// use. Returns the session the child left.
async fn kill_after_first_disk(
    sim: &Vcsim,
    ova: &Path,
    sessions: &Path,
    vm_name: &str,
) -> TransferSession {
    sim.cut_transfer(
        CutTransfer::nfc_after(64 << 10)
            .http_method("POST")
            .after(1)
            .hold(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let thumb = sim.thumbprint_sha1().expect("TLS").to_owned();
    let host = sim.host_port();
    let mut child = Child::spawn(
        &[
            "upload",
            ova.to_str().unwrap(),
            &host,
            "--datastore",
            "LocalDS_0",
            "--vm-name",
            vm_name,
            "--username",
            sim.username(),
            "--thumbprint",
            &thumb,
            "--max-retries",
            "1",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet",
        ],
        sim.password(),
    );
    let store = CheckpointStore::open(sessions).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the upload made no progress");
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the upload exited before it was killed: {status}");
        }
        let first_done = store
            .list()
            .unwrap()
            .into_iter()
            .filter_map(|e| e.session.ok())
            .filter_map(|s| reattach_of(&s))
            .any(|(state, _)| state.files.first().is_some_and(|f| f.finished));
        if first_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the upload runs its session is its own: another process can
    // neither resume it nor clean it away (nor touch its VM).
    let id = store.list().unwrap()[0].id.clone();
    let busy = dispatch(cli(&[
        "resume",
        "--session-id",
        id.as_str(),
        "--session-dir",
        sessions.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert_eq!(busy.code, 1, "{}", busy.message);
    assert!(
        busy.message.contains("in use by another process"),
        "{}",
        busy.message
    );
    let busy = dispatch(cli(&[
        "resume",
        "--session-dir",
        sessions.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert!(
        busy.message.contains("in use by another process"),
        "{}",
        busy.message
    );
    assert_eq!(
        run(cli(&[
            "clean-sessions",
            "--all",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet"
        ]))
        .await,
        0
    );
    assert_eq!(
        store.list().unwrap().len(),
        1,
        "a running session was cleaned"
    );
    // Mostly the second upload is held by now (a kill before it started
    // is a case of interest too).
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(child); // SIGKILL, waited for
    // When the kill came before the second upload reached the server, the
    // hold is still armed: it must not catch the resumed upload.
    sim.clear_faults().await.unwrap();

    // Killed: its session records the VM and lease it left, which files
    // were finished, and the login session; the VM is there.
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let session = listed[0].session.as_ref().unwrap().clone();
    assert!(!super::is_done(&session));
    let leftover = leftover_of(&session).expect("the leftover is recorded");
    assert_eq!(leftover.name, vm_name);
    let (state, _) = reattach_of(&session).expect("the lease and login session are recorded");
    let finished: Vec<bool> = state.files.iter().map(|f| f.finished).collect();
    assert_eq!(finished, [true, false]);
    assert_eq!(state.entity, leftover.entity);
    let inv = sim.inventory().await.unwrap();
    assert_eq!(inv.vm(vm_name).unwrap().entity.moref, leftover.entity.value);
    // The first disk arrived whole; the second did not (the kill may also
    // have come before its body started: then the harness has recorded it
    // empty and incomplete).
    let sent = uploads_of(sim, vm_name).await;
    let whole: Vec<&str> = sent
        .iter()
        .filter(|u| u.complete)
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(whole, ["disk-0.vmdk"], "{sent:?}");
    assert!(session.items[0].is_complete() && !session.items[1].is_complete());
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_then_resumed_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, shas) = two_disk_ova(dir.path()).await;
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let session = kill_after_first_disk(&sim, &ova, &sessions, "killme").await;
    let leftover = leftover_of(&session).unwrap();
    let store = CheckpointStore::open(&sessions).unwrap();
    let logins = calls(&sim, "Login").await;

    // Resume (the most recent session; the password again, the rest from
    // the session): the saved login session is reused and the import goes
    // on within the killed run's lease.
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
    assert_eq!(calls(&sim, "Login").await, logins, "the session was reused");
    let inv = sim.inventory().await.unwrap();
    let vms: Vec<_> = inv
        .vms
        .iter()
        .filter(|v| v.entity.name == "killme")
        .collect();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].entity.moref, leftover.entity.value, "the same VM");
    let ups = uploads_of(&sim, "killme").await;
    let disk0: Vec<_> = ups.iter().filter(|u| u.name == "disk-0.vmdk").collect();
    assert_eq!(disk0.len(), 1, "the finished disk was sent again: {ups:?}");
    for (i, sha) in shas.iter().enumerate() {
        let name = format!("disk-{i}.vmdk");
        let last = ups
            .iter()
            .rev()
            .find(|u| u.name == name && u.complete)
            .unwrap_or_else(|| panic!("{name} never arrived whole: {ups:?}"));
        assert_eq!(&last.sha256, sha, "{name} differs after the resume");
        assert_eq!(last.vm, leftover.entity.value);
    }
    assert!(
        sim.leases().await.unwrap().is_empty(),
        "the lease completed"
    );
    let session = store.load(&session.id).unwrap();
    assert!(super::is_done(&session));
    assert_eq!(session.metadata["last_resume"].as_str(), Some("reattached"));
    assert!(leftover_of(&session).is_none());
    assert!(!session.metadata.contains_key(REATTACH));
    assert!(
        !session.metadata.contains_key(LOGIN_SESSION),
        "the cookie outlived the import"
    );
    assert_eq!(
        session.metadata["vm"].as_str(),
        Some(leftover.entity.value.as_str())
    );
    assert!(session.items.iter().all(|i| i.is_complete()), "{session:?}");
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
async fn killed_then_resumed_after_the_lease_expired_imports_again() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, shas) = two_disk_ova(dir.path()).await;
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let session = kill_after_first_disk(&sim, &ova, &sessions, "expired").await;
    let leftover = leftover_of(&session).unwrap();
    // Too late: the lease timed out without its renewals.
    assert_eq!(sim.expire_leases(None).await.unwrap(), 1);

    let password = sim.password().to_owned();
    let code = run(cli(&[
        "resume",
        "--session-id",
        session.id.as_str(),
        "--session-dir",
        sessions.to_str().unwrap(),
        "--password",
        &password,
        "--quiet",
    ]))
    .await;
    assert_eq!(code, 0);
    // The killed run's VM was removed and the OVA imported again, every
    // disk sent anew.
    let inv = sim.inventory().await.unwrap();
    let vms: Vec<_> = inv
        .vms
        .iter()
        .filter(|v| v.entity.name == "expired")
        .collect();
    assert_eq!(vms.len(), 1, "one VM, the killed run's removed");
    assert_ne!(vms[0].entity.moref, leftover.entity.value);
    let ups = uploads_of(&sim, "expired").await;
    for (i, sha) in shas.iter().enumerate() {
        let name = format!("disk-{i}.vmdk");
        let last = ups
            .iter()
            .rev()
            .find(|u| u.name == name && u.complete)
            .unwrap_or_else(|| panic!("{name} never arrived whole: {ups:?}"));
        assert_eq!(&last.sha256, sha, "{name} differs after the re-import");
        assert_eq!(last.vm, vms[0].entity.moref);
    }
    assert_eq!(
        ups.iter().filter(|u| u.name == "disk-0.vmdk").count(),
        2,
        "{ups:?}"
    );
    let store = CheckpointStore::open(&sessions).unwrap();
    let session = store.load(&session.id).unwrap();
    assert!(super::is_done(&session));
    assert_eq!(session.metadata["last_resume"].as_str(), Some("reimported"));
    assert!(!session.metadata.contains_key(LOGIN_SESSION));
    assert_eq!(
        session.metadata["vm"].as_str(),
        Some(vms[0].entity.moref.as_str())
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_sessions_logs_out_the_saved_login_session() {
    use hypersdk_vsphere::Client;

    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    // A session an interrupted run left, holding a live login session.
    let client = Client::builder(&sim.host_port())
        .credentials(sim.username(), sim.password())
        .pin_thumbprint(sim.thumbprint_sha256().unwrap())
        .connect()
        .await
        .unwrap();
    let cookie = client.leave_session().unwrap();
    let job = super::Job {
        host: sim.host_port(),
        username: sim.username().to_owned(),
        datastore: "LocalDS_0".into(),
        vm_name: Some("gone".into()),
        network: "VM Network".into(),
        disk_provisioning: "thin".into(),
        thumbprint: Some(sim.thumbprint_sha256().unwrap().to_owned()),
        ca_file: None,
        insecure: false,
        verify: true,
    };
    let mut session = TransferSession::new(super::KIND, "x.ova", "target");
    job.to_metadata(&mut session);
    session
        .metadata
        .insert(LOGIN_SESSION.into(), serde_json::json!(cookie.expose()));
    let store = CheckpointStore::open(&sessions).unwrap();
    store.save(&mut session).unwrap();
    let reconnect = || {
        Client::builder(&sim.host_port())
            .pin_thumbprint(sim.thumbprint_sha256().unwrap())
            .session_cookie(cookie.clone())
            .connect()
    };
    let probe = reconnect().await.unwrap();
    assert!(probe.session_reused());
    // Dropped as it is, the probe would log the session out itself.
    assert!(probe.leave_session().is_some());
    assert_eq!(calls(&sim, "Logout").await, 0);

    assert_eq!(
        run(cli(&[
            "clean-sessions",
            "--all",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet"
        ]))
        .await,
        0
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(calls(&sim, "Logout").await, 1);
    // The cookie is worth nothing now (and without credentials nothing
    // replaces it).
    let e = reconnect().await.unwrap_err();
    assert_eq!(e.kind(), hypersdk_core::ErrorKind::Unauthenticated, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_cannot_read_the_ova_keeps_the_lease_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (ova, shas) = two_disk_ova(dir.path()).await;
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let session = kill_after_first_disk(&sim, &ova, &sessions, "kept").await;
    let leftover = leftover_of(&session).unwrap();
    let store = CheckpointStore::open(&sessions).unwrap();
    let password = sim.password().to_owned();
    let resume = || {
        cli(&[
            "resume",
            "--session-id",
            session.id.as_str(),
            "--session-dir",
            sessions.to_str().unwrap(),
            "--password",
            &password,
            "--max-retries",
            "1",
            "--quiet",
        ])
    };

    // The OVA is out of reach: nothing can be sent, but the lease is fine.
    let away = dir.path().join("away.ova");
    std::fs::rename(&ova, &away).unwrap();
    let e = dispatch(resume()).await.unwrap_err();
    assert_eq!(e.code, 1, "{}", e.message);
    assert!(
        e.message.contains("continues it while it lives"),
        "{}",
        e.message
    );
    // Nothing was aborted, destroyed or imported anew, and the lease and
    // login session are still recorded (not logged out) for the next try.
    for m in ["HttpNfcLeaseAbort", "Destroy_Task", "Logout"] {
        assert_eq!(calls(&sim, m).await, 0, "{m}");
    }
    assert_eq!(calls(&sim, "ImportVApp").await, 1);
    let leases = sim.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].state, "ready");
    let kept = store.load(&session.id).unwrap();
    assert!(reattach_of(&kept).is_some(), "{kept:?}");
    assert!(kept.metadata.contains_key("last_error"));

    // Back in place: the next resume continues within the same lease.
    std::fs::rename(&away, &ova).unwrap();
    assert_eq!(run(resume()).await, 0);
    let inv = sim.inventory().await.unwrap();
    let vms: Vec<_> = inv.vms.iter().filter(|v| v.entity.name == "kept").collect();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].entity.moref, leftover.entity.value, "the same VM");
    let ups = uploads_of(&sim, "kept").await;
    assert_eq!(ups.iter().filter(|u| u.name == "disk-0.vmdk").count(), 1);
    let last = ups
        .iter()
        .rev()
        .find(|u| u.name == "disk-1.vmdk" && u.complete)
        .unwrap();
    assert_eq!(last.sha256, shas[1]);
    let done = store.load(&session.id).unwrap();
    assert!(super::is_done(&done));
    assert_eq!(done.metadata["last_resume"].as_str(), Some("reattached"));
    assert!(!done.metadata.contains_key(LOGIN_SESSION));
    // Logged out at the end.
    assert_eq!(calls(&sim, "Logout").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_completing_keeps_its_vm() {
    use hypersdk_vsphere::Client;
    use hypersdk_vsphere::import::{ImportTarget, OvaImportOptions, reattach_ova};

    let dir = tempfile::tempdir().unwrap();
    let (ova, _) = two_disk_ova(dir.path()).await;
    let sessions = dir.path().join("sessions");
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let session = kill_after_first_disk(&sim, &ova, &sessions, "completing").await;
    let leftover = leftover_of(&session).unwrap();
    let (mut state, cookie) = reattach_of(&session).unwrap();

    // What the killed run would have gone on to do: send the second disk
    // and complete the lease, having recorded that it was completing, and
    // be killed before it recorded the end.
    let client = Client::builder(&sim.host_port())
        .pin_thumbprint(sim.thumbprint_sha256().unwrap())
        .session_cookie(cookie)
        .connect()
        .await
        .unwrap();
    assert!(client.session_reused());
    let opts = OvaImportOptions::new(ImportTarget::datastore("LocalDS_0"));
    let report = reattach_ova(&client, &state, &ova, &opts).await.unwrap();
    assert_eq!(report.vm, leftover.entity);
    for f in &mut state.files {
        f.finished = true;
    }
    state.completing = true;
    let store = CheckpointStore::open(&sessions).unwrap();
    let mut recorded = store.load(&session.id).unwrap();
    recorded
        .metadata
        .insert(REATTACH.into(), serde_json::to_value(&state).unwrap());
    store.save(&mut recorded).unwrap();
    // And its login session ended since.
    client.leave_session();
    assert!(sim.expire_sessions().await.unwrap() >= 1);
    let before = (
        calls(&sim, "Destroy_Task").await,
        calls(&sim, "ImportVApp").await,
        sim.uploaded_files().await.unwrap().len(),
    );

    let code = run(cli(&[
        "resume",
        "--session-dir",
        sessions.to_str().unwrap(),
        "--password",
        sim.password(),
        "--quiet",
    ]))
    .await;
    assert_eq!(code, 0);
    // The VM the killed run completed is kept, nothing imported again.
    let after = (
        calls(&sim, "Destroy_Task").await,
        calls(&sim, "ImportVApp").await,
        sim.uploaded_files().await.unwrap().len(),
    );
    assert_eq!(after, before);
    let inv = sim.inventory().await.unwrap();
    assert_eq!(
        inv.vm("completing").unwrap().entity.moref,
        leftover.entity.value
    );
    let done = store.load(&session.id).unwrap();
    assert!(super::is_done(&done), "{done:?}");
    assert_eq!(
        done.metadata["last_resume"].as_str(),
        Some("completed_earlier")
    );
    assert_eq!(
        done.metadata["vm"].as_str(),
        Some(leftover.entity.value.as_str())
    );
    assert!(leftover_of(&done).is_none());
    assert!(!done.metadata.contains_key(REATTACH));
    assert!(!done.metadata.contains_key(LOGIN_SESSION));
}

#[test]
fn a_failed_upload_logs_its_session_out_before_the_process_exits() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let sim = rt.block_on(Vcsim::builder().start()).expect("start vcsim");
    let ova = testdata("ova/govmomi-ttylinux-pc_i486-16.1.ova");
    let thumb = sim.thumbprint_sha256().unwrap().to_owned();
    let host = sim.host_port();
    // The program exits through std::process::exit, so a logout left to
    // the client's drop would never be sent.
    let mut child = Child::spawn(
        &[
            "upload",
            ova.to_str().unwrap(),
            &host,
            "--datastore",
            "NoSuchDatastore",
            "--username",
            sim.username(),
            "--thumbprint",
            &thumb,
            "--max-retries",
            "1",
            "--session-dir",
            sessions.to_str().unwrap(),
            "--quiet",
        ],
        sim.password(),
    );
    let status = child.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    rt.block_on(async {
        assert_eq!(calls(&sim, "Login").await, 1);
        assert_eq!(calls(&sim, "Logout").await, 1, "the session was left open");
    });
    let store = CheckpointStore::open(&sessions).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let s = listed[0].session.as_ref().unwrap();
    assert!(!s.metadata.contains_key(LOGIN_SESSION));
    assert!(s.metadata.contains_key("last_error"));
}
