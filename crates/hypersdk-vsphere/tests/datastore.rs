//! Datastore transfers (`/folder`) against the vcsim harness: listing,
//! range reads, uploads (whole-file retries, short and long sources,
//! cleanup of a failed upload), downloads resumed from a `.part` file after
//! a cut body, and a restart when the remote file changed.

use std::time::Duration;

use hypersdk_core::ErrorKind;
use hypersdk_core::blocks::BlockSource;
use hypersdk_core::digest::{Algorithm, Checksum};
use hypersdk_core::model::Extent;
use hypersdk_core::retry::Backoff;
use hypersdk_testkit::vcsim::{CutTransfer, Vcsim};
use hypersdk_vsphere::Client;
use hypersdk_vsphere::datastore::{
    DatastoreFiles, DatastorePath, DownloadOptions, UploadOptions, list_datastores,
};

async fn connect(sim: &Vcsim) -> Client {
    Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().expect("the harness runs TLS"))
        .connect()
        .await
        .expect("connect to vcsim")
}

/// 3 MiB + 123 bytes: a data run, a zero run (a hole in the download) and
/// an odd tail.
fn sample() -> Vec<u8> {
    let mut v: Vec<u8> = (0..(3u32 << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    v[1 << 20..2 << 20].fill(0);
    v
}

fn quick() -> Backoff {
    Backoff::default()
        .with_initial(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
        .with_max_attempts(Some(4))
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_datastores_with_their_datacenter() {
    let sim = Vcsim::builder()
        .datastores(2)
        .start()
        .await
        .expect("start vcsim");
    let client = connect(&sim).await;
    let stores = list_datastores(&client).await.expect("list");
    let inv = sim.inventory().await.expect("inventory");
    let mut expected: Vec<&str> = inv
        .datastores
        .iter()
        .map(|d| d.entity.name.as_str())
        .collect();
    expected.sort_unstable();
    let names: Vec<&str> = stores.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, expected);
    for ds in &stores {
        assert_eq!(ds.datacenter, "DC0", "{ds:?}");
        assert!(ds.capacity.unwrap_or(0) > 0, "{ds:?}");
        assert!(ds.free_space.is_some(), "{ds:?}");
        assert!(ds.kind.is_some(), "{ds:?}");
        assert_eq!(ds.moref.kind, "Datastore");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_read_download_round_trip() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let files = DatastoreFiles::new(&client, "DC0");
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    std::fs::write(&local, &data).unwrap();
    let remote: DatastorePath = "[LocalDS_0] hypersdk test/blob #1.bin".parse().unwrap();
    assert!(
        files
            .url(&remote)
            .as_str()
            .contains("/folder/hypersdk%20test/blob%20%231.bin?")
    );

    assert_eq!(files.size(&remote).await.unwrap(), None);
    files
        .upload_file(&remote, &local, UploadOptions::default())
        .await
        .expect("upload");
    assert_eq!(files.size(&remote).await.unwrap(), Some(data.len() as u64));

    // A second upload without overwrite is refused before anything is sent.
    let e = files
        .upload_file(&remote, &local, UploadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");

    // Range reads: exactly the bytes asked for.
    let source = files.open(&remote).await.expect("open");
    assert_eq!(source.len(), data.len() as u64);
    let mid = source.read_range(Extent::new(999_999, 4096)).await.unwrap();
    assert_eq!(&mid[..], &data[999_999..999_999 + 4096]);

    // Download with a digest; the zero run stays a hole.
    let dest = dir.path().join("back.bin");
    let report = files
        .download(
            &remote,
            &dest,
            DownloadOptions::default().with_digests(&[Algorithm::Sha256]),
        )
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(report.len, data.len() as u64);
    assert_eq!(
        (report.bytes_fetched, report.bytes_resumed),
        (data.len() as u64, 0)
    );
    let sha = Checksum::compute(Algorithm::Sha256, &data);
    assert_eq!(report.digests.unwrap().get(Algorithm::Sha256), Some(&sha));
    assert!(!dir.path().join("back.bin.part").exists());
    assert!(!dir.path().join("back.bin.part.resume").exists());
    // No overwrite of a local file unless asked.
    let e = files
        .download(&remote, &dest, DownloadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");

    // Missing file, missing datastore, missing datacenter: NotFound.
    for path in ["[LocalDS_0] nope.bin", "[NoSuchDS] blob.bin"] {
        let p: DatastorePath = path.parse().unwrap();
        let e = files.open(&p).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{path}: {e}");
        assert!(e.to_string().contains(path), "{e}");
    }
    let e = DatastoreFiles::new(&client, "NoSuchDC")
        .open(&remote)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Delete through the FileManager.
    files.delete(&remote).await.expect("delete");
    assert_eq!(files.size(&remote).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_download_resumes_from_the_part_file() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let files = DatastoreFiles::new(&client, "DC0");
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    std::fs::write(&local, &data).unwrap();
    let remote: DatastorePath = "[LocalDS_0] dl/blob.bin".parse().unwrap();
    files
        .upload_file(&remote, &local, UploadOptions::default())
        .await
        .unwrap();

    // The body is cut after 2.5 MiB and no retry is allowed: the call
    // fails, leaving the .part and what was committed.
    sim.cut_transfer(CutTransfer::folder_after(5 << 19).http_method("GET"))
        .await
        .unwrap();
    let dest = dir.path().join("out.bin");
    let opts = || {
        DownloadOptions::default()
            .with_commit_interval(Duration::ZERO)
            .with_digests(&[Algorithm::Sha256])
            .with_backoff(Backoff::none())
    };
    let e = files.download(&remote, &dest, opts()).await.unwrap_err();
    assert!(e.is_retryable(), "a cut body is a network error: {e}");
    assert!(!dest.exists());
    assert!(dir.path().join("out.bin.part").exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out.bin.part.resume")).unwrap())
            .unwrap();
    let committed = record["committed"].as_u64().unwrap();
    assert!((1 << 20..=5 << 19).contains(&committed), "{record}");
    assert!(!record.to_string().contains(sim.password()));

    // The next call fetches only the rest, and the digest covers all.
    let report = files
        .download(&remote, &dest, opts())
        .await
        .expect("resume");
    assert_eq!(report.bytes_resumed, committed);
    assert_eq!(report.bytes_fetched, data.len() as u64 - committed);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        report.digests.unwrap().get(Algorithm::Sha256),
        Some(&Checksum::compute(Algorithm::Sha256, &data))
    );
    assert!(!dir.path().join("out.bin.part.resume").exists());

    // A cut with retries allowed is resumed inside the same call.
    sim.cut_transfer(CutTransfer::folder_after(1 << 20).http_method("GET"))
        .await
        .unwrap();
    let dest2 = dir.path().join("out2.bin");
    let report = files
        .download(
            &remote,
            &dest2,
            DownloadOptions::default().with_backoff(quick()),
        )
        .await
        .expect("resumed in place");
    assert_eq!(report.bytes_fetched, data.len() as u64);
    assert_eq!(std::fs::read(&dest2).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_remote_file_restarts_the_download() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let files = DatastoreFiles::new(&client, "DC0");
    let dir = tempfile::tempdir().unwrap();
    let remote: DatastorePath = "[LocalDS_0] dl/changing.bin".parse().unwrap();
    let first = sample();
    let local = dir.path().join("v1.bin");
    std::fs::write(&local, &first).unwrap();
    files
        .upload_file(&remote, &local, UploadOptions::default())
        .await
        .unwrap();
    sim.cut_transfer(CutTransfer::folder_after(2 << 20).http_method("GET"))
        .await
        .unwrap();
    let dest = dir.path().join("out.bin");
    let opts = || {
        DownloadOptions::default()
            .with_commit_interval(Duration::ZERO)
            .with_backoff(Backoff::none())
    };
    files.download(&remote, &dest, opts()).await.unwrap_err();

    // The file is replaced by one of another size: no stitching.
    let mut second = sample();
    second.extend_from_slice(b"changed");
    second[0] ^= 0xff;
    let local2 = dir.path().join("v2.bin");
    std::fs::write(&local2, &second).unwrap();
    files
        .upload_file(
            &remote,
            &local2,
            UploadOptions::default().with_overwrite(true),
        )
        .await
        .unwrap();
    let report = files.download(&remote, &dest, opts()).await.unwrap();
    assert_eq!(report.bytes_resumed, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), second);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_restart_the_file_and_never_leave_half_a_file() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let files = DatastoreFiles::new(&client, "DC0");
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob.bin");
    std::fs::write(&local, &data).unwrap();

    // A file upload cut twice is sent again whole, and arrives whole.
    sim.cut_transfer(
        CutTransfer::folder_after(1 << 20)
            .http_method("PUT")
            .times(2),
    )
    .await
    .unwrap();
    let remote: DatastorePath = "[LocalDS_0] up/retried.bin".parse().unwrap();
    files
        .upload_file(
            &remote,
            &local,
            UploadOptions::default().with_backoff(quick()),
        )
        .await
        .expect("retried upload");
    let back = files
        .open(&remote)
        .await
        .unwrap()
        .read_range(Extent::new(0, data.len() as u64))
        .await
        .unwrap();
    assert!(back[..] == data[..], "the retried upload differs");

    // A one-pass reader cut mid-body cannot be sent again: the upload
    // fails and what the server kept of it is removed.
    sim.cut_transfer(CutTransfer::folder_after(1 << 20).http_method("PUT"))
        .await
        .unwrap();
    let one_pass: DatastorePath = "[LocalDS_0] up/one-pass.bin".parse().unwrap();
    let reader = std::io::Cursor::new(data.clone());
    let e = files
        .upload(
            &one_pass,
            reader,
            data.len() as u64,
            UploadOptions::default().with_backoff(quick()),
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable() || e.kind() == ErrorKind::Network, "{e}");
    assert_eq!(
        files.size(&one_pass).await.unwrap(),
        None,
        "half a file left behind"
    );

    // A source shorter or longer than announced never completes a file.
    for (bytes, len) in [
        (data[..1000].to_vec(), 2000u64),
        (data[..3000].to_vec(), 2000),
    ] {
        let p: DatastorePath = "[LocalDS_0] up/wrong-length.bin".parse().unwrap();
        let e = files
            .upload(
                &p,
                std::io::Cursor::new(bytes),
                len,
                UploadOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_eq!(files.size(&p).await.unwrap(), None);
    }

    // An in-memory reader that goes through untouched succeeds.
    let p: DatastorePath = "[LocalDS_0] up/reader.bin".parse().unwrap();
    files
        .upload(
            &p,
            std::io::Cursor::new(data.clone()),
            data.len() as u64,
            UploadOptions::default(),
        )
        .await
        .expect("reader upload");
    assert_eq!(files.size(&p).await.unwrap(), Some(data.len() as u64));
}
