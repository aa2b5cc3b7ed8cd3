//! `OvmClient` against the OVM exporter test server
//! (`hypersdk_testkit::ovm`): login and token reuse, re-login before `exp`
//! and once on a 401, the error mapping of the exporter's statuses, clean
//! paths, TLS policies, snapshot creation that is never blindly retried,
//! and disk reads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::model::Extent;
use hypersdk_core::retry::Backoff;
use hypersdk_ovm::{OvmClient, SnapshotQuery, chunks_to_extents};
use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, Route, VmSpec};

const MIB: u64 = 1 << 20;

/// A server with one VM `web` (two disks, some data) and one VM `db`.
async fn server_with(
    f: impl FnOnce(
        hypersdk_testkit::ovm::OvmExporterBuilder,
    ) -> hypersdk_testkit::ovm::OvmExporterBuilder,
) -> (OvmExporter, VmSpec, VmSpec) {
    let web = VmSpec::new("web")
        .with_disk(DiskSpec::random("xvda", 4 * MIB))
        .with_disk(DiskSpec::random("xvdb", 2 * MIB));
    let db = VmSpec::new("db").with_disk(DiskSpec::random("xvda", MIB));
    let ex = f(OvmExporter::builder().vm(web.clone()).vm(db.clone()))
        .start()
        .await
        .expect("start the OVM exporter test server");
    let d0 = &web.disks[0].name;
    ex.write(&web.id, d0, 0, &pattern(0, 300_000)).unwrap();
    ex.write(&web.id, d0, 3 * MIB, &pattern(7, 200_000))
        .unwrap();
    ex.write(&web.id, &web.disks[1].name, MIB, &pattern(3, 70_000))
        .unwrap();
    ex.write(&db.id, &db.disks[0].name, 0, &pattern(9, 10_000))
        .unwrap();
    (ex, web, db)
}

async fn server() -> (OvmExporter, VmSpec, VmSpec) {
    server_with(|b| b).await
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn fast() -> Backoff {
    Backoff::default()
        .with_initial(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(50))
        .with_max_attempts(Some(4))
}

fn client(ex: &OvmExporter) -> OvmClient {
    OvmClient::builder(&ex.endpoint())
        .credentials(ex.username(), ex.password())
        .ca_pem(ex.ca_pem())
        .retry(fast())
        .build()
        .expect("build the client")
}

fn route(ex: &OvmExporter, r: Route) -> u64 {
    ex.stats().by_route.get(r.name()).copied().unwrap_or(0)
}

#[tokio::test]
async fn login_is_lazy_and_the_token_is_reused() {
    let (ex, web, _) = server_with(|b| b.credentials("admin", "hunter2-s3cret")).await;
    let c = client(&ex);
    assert_eq!(ex.stats().logins, 0, "build() must not log in");
    let vms = c.list_vms().await.unwrap();
    assert_eq!(vms.len(), 2);
    let w = vms.iter().find(|v| v.name == web.id).unwrap();
    assert_eq!(w.friendly_name, "web");
    assert_eq!(w.uuid, web.uuid);
    assert_eq!(w.disks.len(), 2);
    assert_eq!(w.disks[0].name, web.disks[0].name);
    assert_eq!(w.disks[0].device_name, "xvda");
    assert!(w.snapshot_compatible);
    c.vm(&web.id).await.unwrap();
    c.list_snapshots(&web.id).await.unwrap();
    // Clones share the token.
    let c2 = c.clone();
    c2.list_vms().await.unwrap();
    assert_eq!(ex.stats().logins, 1, "the token was not reused");
    // Neither the password nor the token shows in Debug.
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(ex.password()), "{dbg}");
    assert!(dbg.contains("***"), "{dbg}");
    // Wrong credentials: Unauthenticated, naming the user, no password.
    let bad = OvmClient::builder(&ex.endpoint())
        .credentials("admin", "wrong-password")
        .ca_pem(ex.ca_pem())
        .retry(fast())
        .build()
        .unwrap();
    let e = bad.list_vms().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(
        e.to_string().contains("'admin'") && !e.to_string().contains("wrong-password"),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn the_token_is_renewed_before_it_expires() {
    let (ex, _, _) = server_with(|b| b.jwt_ttl(Duration::from_secs(2))).await;
    let c = client(&ex);
    c.login().await.unwrap();
    c.list_vms().await.unwrap();
    assert_eq!(ex.stats().logins, 1);
    // Past the token's exp (whole seconds, at most 2 s after the login):
    // the client logs in *before* sending, so the list is sent once and
    // never refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.list_vms().await.unwrap();
    assert_eq!(ex.stats().logins, 2, "no proactive re-login");
    assert_eq!(
        route(&ex, Route::ListVms),
        2,
        "a request was sent with an expired token"
    );
}

#[tokio::test]
async fn a_401_logs_in_again_once_and_shared() {
    let (ex, web, _) = server().await;
    let c = client(&ex);
    c.list_vms().await.unwrap();
    // Every token so far refused: one re-login and one resend.
    ex.faults().expire_tokens();
    c.vm(&web.id).await.unwrap();
    assert_eq!(ex.stats().logins, 2);
    assert_eq!(route(&ex, Route::GetVm), 2);
    // Concurrent calls hitting a refused token share one re-login.
    ex.faults().expire_tokens();
    let calls = (0..8).map(|_| c.list_vms());
    for r in join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(
        ex.stats().logins,
        3,
        "concurrent 401s did not share one login"
    );
    // A 401 again after the re-login is final: Unauthenticated, and only
    // one re-login was tried.
    ex.faults().fail_status(401, 2, Route::ListVms);
    let e = c.list_vms().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(ex.stats().logins, 4);
}

#[tokio::test]
async fn exporter_statuses_map_to_error_kinds() {
    let (ex, web, db) = server().await;
    let c = client(&ex);
    let missing = "0004fb00000600000000000000000000";
    // 500 "could not find VM with ID": NotFound naming the VM, on every
    // VM route, without retries.
    for e in [
        c.vm(missing).await.unwrap_err(),
        c.list_snapshots(missing).await.unwrap_err(),
        c.create_snapshot(missing).await.unwrap_err(),
        c.purge_snapshots(missing).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains(missing), "{e}");
    }
    assert_eq!(route(&ex, Route::GetVm), 2, "a NotFound was retried");
    // 500 "not found": an unknown snapshot.
    let e = c
        .snapshot(&web.id, "no-such-snapshot", &SnapshotQuery::raw())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("no-such-snapshot"), "{e}");
    // The same through HEAD (no body): the size asks again with a GET.
    let e = c
        .disk_size(&web.id, "no-such-snapshot", &web.disks[0].name)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let s1 = c.create_snapshot(&web.id).await.unwrap();
    let s2 = c.create_snapshot(&web.id).await.unwrap();
    // 409: a snapshot asked for under another VM.
    let e = c
        .snapshot(&db.id, &s1.id, &SnapshotQuery::raw())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("another VM"), "{e}");
    let e = c.delete_snapshot(&db.id, &s1.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // 400: compareTo not older (or itself).
    for (snap, cmp) in [(&s1.id, &s2.id), (&s1.id, &s1.id)] {
        let e = c
            .snapshot(&web.id, snap, &SnapshotQuery::raw().compare_to(cmp.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("older"), "{e}");
    }
    // compareTo an unknown snapshot: NotFound.
    let e = c
        .snapshot(&web.id, &s2.id, &SnapshotQuery::raw().compare_to("nope"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // 404 with an empty body: an unknown disk.
    let e = c.disk_size(&web.id, &s1.id, "nope.img").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("nope.img"), "{e}");
    // A HEAD that fails (no body to say why) is asked again as a GET of
    // byte 0, which gives the size.
    ex.faults().fail_status(503, 1, Route::DiskData);
    assert_eq!(
        c.disk_size(&web.id, &s1.id, &web.disks[0].name)
            .await
            .unwrap(),
        4 * MIB
    );
    // A 503 is retried, then succeeds.
    ex.faults().fail_status(503, 2, Route::GetVm);
    c.vm(&web.id).await.unwrap();
    // Deleting is idempotent, as on the exporter.
    c.delete_snapshot(&web.id, &s1.id).await.unwrap();
    c.delete_snapshot(&web.id, &s1.id).await.unwrap();
    // A VM that cannot be reflinked: 400 -> InvalidInput with the reason.
    let iso = VmSpec::new("iso").with_disk(DiskSpec::random("xvdc", MIB).incompatible());
    ex.add_vm(iso.clone());
    let e = c.create_snapshot(&iso.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("reflink"), "{e}");
    // Invalid ids never reach the server.
    for bad in ["", "..", "a/b"] {
        assert_eq!(c.vm(bad).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}

#[tokio::test]
async fn chunks_raw_squashed_null_and_compare_to() {
    let (ex, web, _) = server_with(|b| b.max_extent(128 << 10)).await;
    let c = client(&ex);
    let d0 = &web.disks[0].name;
    let s1 = c.create_snapshot(&web.id).await.unwrap();
    // Create answers raw chunks: capped at 128 KiB, so more than squashed.
    let raw = &s1.disk(d0).unwrap().chunks;
    let squashed = c
        .snapshot(&web.id, &s1.id, &SnapshotQuery::squashed())
        .await
        .unwrap();
    let sq = &squashed.disk(d0).unwrap().chunks;
    assert!(raw.len() > sq.len(), "raw {raw:?} squashed {sq:?}");
    assert_eq!(
        chunks_to_extents(raw, 4 * MIB),
        chunks_to_extents(sq, 4 * MIB)
    );
    assert_eq!(
        c.snapshot(&web.id, &s1.id, &SnapshotQuery::raw())
            .await
            .unwrap(),
        s1
    );
    // Listing always squashes.
    let listed = c.list_snapshots(&web.id).await.unwrap();
    assert_eq!(listed, vec![squashed]);
    // Nothing changed: the raw compareTo diff is `null` on the wire, read
    // as empty.
    let s2 = c.create_snapshot(&web.id).await.unwrap();
    let diff = c
        .snapshot(
            &web.id,
            &s2.id,
            &SnapshotQuery::raw().compare_to(s1.id.clone()),
        )
        .await
        .unwrap();
    assert!(diff.disks.iter().all(|d| d.chunks.is_empty()), "{diff:?}");
    c.purge_snapshots(&web.id).await.unwrap();
    assert!(c.vm(&web.id).await.unwrap().snapshots.is_empty());
}

#[tokio::test]
async fn paths_are_clean_whatever_the_endpoint() {
    let (ex, web, _) = server().await;
    for ep in [
        format!("{}/", ex.endpoint()),
        format!("{}//", ex.endpoint()),
    ] {
        let c = OvmClient::builder(&ep)
            .credentials(ex.username(), ex.password())
            .ca_pem(ex.ca_pem())
            .build()
            .unwrap();
        assert_eq!(c.endpoint(), ex.endpoint());
        // A POST redirected by a 301 would come back as an error.
        let s = c.create_snapshot(&web.id).await.unwrap();
        c.snapshot(&web.id, &s.id, &SnapshotQuery::raw())
            .await
            .unwrap();
        c.delete_snapshot(&web.id, &s.id).await.unwrap();
    }
    let by_route = ex.stats().by_route;
    assert_eq!(by_route.get("Redirect"), None, "{by_route:?}");
    assert_eq!(by_route.get("NotFound"), None, "{by_route:?}");
}

#[tokio::test]
async fn tls_policies() {
    let (ex, _, _) = server().await;
    let b = || {
        OvmClient::builder(&ex.endpoint())
            .credentials(ex.username(), ex.password())
            .retry(fast())
    };
    // The CA, the right pin, and insecure-by-name all work.
    b().ca_pem(ex.ca_pem())
        .build()
        .unwrap()
        .list_vms()
        .await
        .unwrap();
    b().pin_thumbprint(&ex.thumbprint_sha256())
        .build()
        .unwrap()
        .list_vms()
        .await
        .unwrap();
    b().danger_accept_invalid_certs()
        .build()
        .unwrap()
        .list_vms()
        .await
        .unwrap();
    let before = ex.stats();
    // A wrong pin fails in the handshake: no request, no credential sent.
    let wrong = "AB:".repeat(31) + "AB";
    let e = b()
        .pin_thumbprint(&wrong)
        .build()
        .unwrap()
        .list_vms()
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("TLS") && msg.contains("thumbprint"), "{msg}");
    assert!(
        msg.contains(&ex.thumbprint_sha256()),
        "the message should show the real thumbprint: {msg}"
    );
    assert!(!e.is_retryable());
    // Nor with the system roots, which do not know the test CA.
    let e = b().build().unwrap().list_vms().await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    let after = ex.stats();
    assert_eq!(
        after.requests, before.requests,
        "a request got through a failed handshake"
    );
    assert_eq!(after.logins, before.logins);
    assert!(after.connections > before.connections);
}

#[tokio::test]
async fn plain_http_only_by_name() {
    let (ex, _, _) = server_with(|b| b.tls(false)).await;
    assert!(ex.endpoint().starts_with("http://"));
    let e = OvmClient::builder(&ex.endpoint())
        .credentials(ex.username(), ex.password())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let c = OvmClient::builder(&ex.endpoint())
        .credentials(ex.username(), ex.password())
        .danger_allow_plain_http()
        .build()
        .unwrap();
    assert_eq!(c.list_vms().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_lost_create_response_is_found_by_listing_not_created_twice() {
    let (ex, web, _) = server().await;
    let c = client(&ex);
    let before: BTreeSet<String> = ex.snapshot_ids(&web.id).into_iter().collect();
    ex.faults().lose_create_response(1);
    let s = c.create_snapshot(&web.id).await.unwrap();
    let after: BTreeSet<String> = ex.snapshot_ids(&web.id).into_iter().collect();
    let new: Vec<&String> = after.difference(&before).collect();
    assert_eq!(new, vec![&s.id], "exactly one snapshot, the one returned");
    assert_eq!(
        route(&ex, Route::CreateSnapshot),
        1,
        "the create was sent again"
    );
    // The snapshot returned has its raw chunks.
    assert_eq!(s.disks.len(), 2);
    assert!(!s.disk(&web.disks[0].name).unwrap().chunks.is_empty());

    // A 503 before the exporter created anything: listed, then sent again.
    ex.reset_stats();
    ex.faults().fail_status(503, 1, Route::CreateSnapshot);
    let s2 = c.create_snapshot(&web.id).await.unwrap();
    assert_eq!(route(&ex, Route::CreateSnapshot), 2);
    let ids = ex.snapshot_ids(&web.id);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids.last(), Some(&s2.id));

    // A 503 every time: sent again up to the policy's attempts (4), never
    // more, and nothing created.
    ex.reset_stats();
    ex.faults().fail_status(503, 100, Route::CreateSnapshot);
    let e = c.create_snapshot(&web.id).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(route(&ex, Route::CreateSnapshot), 4);
    assert_eq!(ex.snapshot_ids(&web.id).len(), 2);
    ex.faults().clear();
}

#[tokio::test]
async fn disk_reads_equal_the_snapshot_file() {
    let (ex, web, _) = server().await;
    let c = client(&ex);
    let s = c.create_snapshot(&web.id).await.unwrap();
    for d in &web.disks {
        let disk = c.open_disk(&web.id, &s.id, &d.name).await.unwrap();
        assert_eq!(disk.len(), d.size);
        assert_eq!(c.disk_size(&web.id, &s.id, &d.name).await.unwrap(), d.size);
        let file = std::fs::read(ex.snapshot_disk_path(&web.id, &s.id, &d.name).unwrap()).unwrap();
        let all = disk.read_range(Extent::new(0, d.size)).await.unwrap();
        assert!(
            all[..] == file[..],
            "disk {} differs from the snapshot file",
            d.name
        );
        // The allocation is the snapshot's chunks; outside it, zeros.
        let alloc = disk.allocated_extents().await.unwrap().unwrap();
        assert_eq!(
            alloc,
            chunks_to_extents(&s.disk(&d.name).unwrap().chunks, d.size)
        );
        assert!(!alloc.is_empty());
        for hole in alloc.complement(Extent::new(0, d.size)).iter() {
            assert!(
                file[hole.offset as usize..hole.end() as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }
    let disk = Arc::new(
        c.open_disk(&web.id, &s.id, &web.disks[0].name)
            .await
            .unwrap(),
    );
    let file = std::fs::read(
        ex.snapshot_disk_path(&web.id, &s.id, &web.disks[0].name)
            .unwrap(),
    )
    .unwrap();
    // A body cut mid-range is resumed from the last byte.
    ex.faults().drop_data_after(100_000, 1);
    let r = Extent::new(10_000, 1_000_000);
    let got = disk.read_range(r).await.unwrap();
    assert!(got[..] == file[10_000..1_010_000]);
    assert!(disk.stats().resumes >= 1);
    // A 200 with the whole disk for a range is refused, never written.
    ex.faults().ok_instead_of_partial(1);
    let e = disk.read_range(Extent::new(4096, 4096)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    // Refused tokens are renewed for data reads too.
    ex.faults().expire_tokens();
    let logins = ex.stats().logins;
    let got = disk.read_range(Extent::new(0, 65536)).await.unwrap();
    assert!(got[..] == file[..65536]);
    assert_eq!(ex.stats().logins, logins + 1);
    // Parallel reads after an expiry share one re-login.
    ex.faults().expire_tokens();
    let reads = (0..6u64).map(|i| {
        let disk = Arc::clone(&disk);
        async move { disk.read_range(Extent::new(i * 300_000, 200_000)).await }
    });
    for (i, r) in join_all(reads).await.into_iter().enumerate() {
        let o = i * 300_000;
        assert!(r.unwrap()[..] == file[o..o + 200_000]);
    }
    assert_eq!(ex.stats().logins, logins + 2);
    // A disk the snapshot does not have.
    let e = c.open_disk(&web.id, &s.id, "other.img").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
