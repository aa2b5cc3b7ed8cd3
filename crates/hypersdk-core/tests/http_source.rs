//! `HttpSource` against the testkit's file server: exact ranges over one
//! pooled connection, and a clear error for every way the server misbehaves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use hypersdk_core::blocks::{BlockSource, HttpAuth, HttpSource, StaticHeaders};
use hypersdk_core::model::Extent;
use hypersdk_core::retry::Backoff;
use hypersdk_core::{Error, ErrorKind, Result};
use hypersdk_testkit::fault_proxy::FaultProxy;
use hypersdk_testkit::http_server::{Fault, FileServer};

/// 3 MiB of bytes that differ at every offset modulo 251.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A quick policy so failing tests do not wait.
fn fast() -> Backoff {
    Backoff::default()
        .with_initial(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(20))
        .with_max_attempts(Some(4))
}

async fn serve(len: usize) -> (FileServer, Bytes) {
    let server = FileServer::start_in_memory().await;
    let data = pattern(len);
    server.add_bytes("disk.raw", data.clone());
    (server, data)
}

async fn open(server: &FileServer) -> HttpSource {
    HttpSource::builder(server.url("disk.raw"))
        .backoff(fast())
        .idle_timeout(Duration::from_millis(300))
        .open()
        .await
        .expect("open")
}

#[tokio::test]
async fn ranges_are_exact_and_share_one_connection() {
    let (server, data) = serve(3 << 20).await;
    let source = open(&server).await;
    assert_eq!(source.len(), data.len() as u64);
    assert!(source.etag().is_some());
    assert!(source.allocated_extents().await.unwrap().is_none());
    for (offset, length) in [
        (0, 1),
        (0, 4096),
        (1_000_003, 700_001),
        (3 * 1024 * 1024 - 5, 5),
    ] {
        let got = source
            .read_range(Extent::new(offset, length))
            .await
            .unwrap();
        assert_eq!(got, data.slice(offset as usize..(offset + length) as usize));
    }
    assert_eq!(
        source.read_range(Extent::new(10, 0)).await.unwrap().len(),
        0
    );
    let whole = source
        .read_stream(Extent::new(0, source.len()))
        .await
        .unwrap();
    let chunks: Vec<Bytes> = whole.map(|c| c.unwrap()).collect().await;
    assert_eq!(chunks.concat(), data.to_vec());
    // Past the end: refused before any request.
    let requests = server.requests();
    let e = source
        .read_range(Extent::new(3 << 20, 1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(server.requests(), requests);
    // HEAD and six GETs, on one kept-alive connection.
    assert_eq!(server.connections(), 1);
    let stats = source.stats();
    assert_eq!(stats.requests, server.requests());
    assert_eq!(stats.resumes, 0);
}

#[tokio::test]
async fn head_without_length_is_a_clear_error() {
    let (server, _) = serve(1000).await;
    server.inject(Fault::HeadWithoutLength, None);
    let e = HttpSource::builder(server.url("disk.raw"))
        .backoff(fast())
        .open()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("Content-Length"), "{e}");
    assert!(e.to_string().contains("disk.raw"), "{e}");
}

#[tokio::test]
async fn a_200_is_never_taken_as_the_range() {
    let (server, _) = serve(100_000).await;
    let source = open(&server).await;
    server.inject(Fault::IgnoreRange, None);
    let e = source.read_range(Extent::new(10, 100)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(
        msg.contains("200") && msg.contains("ignored the Range"),
        "{msg}"
    );
    // Not retried: the server's answer will not change.
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_wrong_content_range_is_an_error() {
    let (server, _) = serve(100_000).await;
    let source = open(&server).await;
    server.inject(Fault::WrongContentRange, None);
    let e = source.read_range(Extent::new(100, 100)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(
        msg.contains("bytes 200-299/100000") && msg.contains("bytes 100-199/100000"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_short_body_is_resumed_from_the_last_byte() {
    let (server, data) = serve(2 << 20).await;
    let source = open(&server).await;
    server.inject(Fault::ShortBody, Some(2));
    let got = source.read_range(Extent::new(1000, 1 << 20)).await.unwrap();
    assert_eq!(got, data.slice(1000..1000 + (1 << 20)));
    assert_eq!(source.stats().resumes, 2);
    // The resumes asked only for what was missing: half, then a quarter.
    let gets: Vec<(u64, u64)> = server.ranges().into_iter().filter_map(|(_, r)| r).collect();
    let half = (1u64 << 20) / 2;
    assert_eq!(
        gets,
        [
            (1000, 1000 + (1 << 20) - 1),
            (1000 + half, 1000 + (1 << 20) - 1),
            (1000 + half + half / 2, 1000 + (1 << 20) - 1),
        ]
    );
    // The bytes sent are the bytes asked for: nothing fetched twice.
    assert_eq!(source.stats().bytes_received, 1 << 20);
}

#[tokio::test]
async fn a_body_that_is_always_short_exhausts_the_retries() {
    let (server, _) = serve(1 << 20).await;
    let source = open(&server).await;
    server.inject(Fault::ShortBody, None);
    let e = source
        .read_range(Extent::new(0, 1 << 20))
        .await
        .unwrap_err();
    let Error::RetriesExhausted { attempts, last, .. } = &e else {
        panic!("unexpected {e:?}");
    };
    assert_eq!(*attempts, 4);
    assert_eq!(last.kind(), ErrorKind::Network, "{last}");
    assert!(e.to_string().contains("disk.raw"), "{e}");
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not() {
    let (server, data) = serve(10_000).await;
    let source = open(&server).await;
    server.inject(Fault::status(503), Some(2));
    let got = source.read_range(Extent::new(0, 10_000)).await.unwrap();
    assert_eq!(got, data);

    server.inject(Fault::status(404), Some(1));
    let before = server.requests();
    let e = source.read_range(Extent::new(0, 10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(server.requests(), before + 1);

    server.inject(Fault::status(503), None);
    let e = source.read_range(Extent::new(0, 10)).await.unwrap_err();
    assert!(
        matches!(e, Error::RetriesExhausted { attempts: 4, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_stalled_body_times_out_and_resumes() {
    let (server, data) = serve(1 << 20).await;
    let source = open(&server).await;
    server.inject(Fault::Stall { after: 100_000 }, Some(1));
    let got = source.read_range(Extent::new(0, 1 << 20)).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(source.stats().resumes, 1);

    server.inject(Fault::Hang, None);
    let e = source.read_range(Extent::new(0, 10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[tokio::test]
async fn a_changed_file_is_not_stitched_together() {
    let (server, _) = serve(1 << 20).await;
    let source = open(&server).await;
    server.change_etags();
    let e = source.read_range(Extent::new(0, 100)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("changed since it was opened"), "{e}");
}

/// A token that can be renewed once.
#[derive(Debug)]
struct Renewable {
    token: Mutex<String>,
    next: String,
}

#[async_trait]
impl HttpAuth for Renewable {
    async fn headers(&self) -> Result<HeaderMap> {
        let token = self.token.lock().unwrap().clone();
        Ok(StaticHeaders::bearer(&token)?.headers().await?)
    }

    async fn refresh(&self) -> Result<bool> {
        *self.token.lock().unwrap() = self.next.clone();
        Ok(true)
    }
}

#[tokio::test]
async fn auth_is_refreshed_once_on_401() {
    let (server, data) = serve(4096).await;
    server.require_bearer("first");
    let auth = Arc::new(Renewable {
        token: Mutex::new("first".into()),
        next: "second".into(),
    });
    let source = HttpSource::builder(server.url("disk.raw"))
        .auth(auth.clone())
        .backoff(fast())
        .open()
        .await
        .unwrap();
    server.rotate_token("second");
    let got = source.read_range(Extent::new(0, 4096)).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(source.stats().auth_refreshes, 1);

    // A token that cannot be renewed: Unauthenticated, no loop.
    server.rotate_token("third");
    let before = server.requests();
    let e = source.read_range(Extent::new(0, 10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(server.requests(), before + 2);

    let fixed = HttpSource::builder(server.url("disk.raw"))
        .auth(Arc::new(StaticHeaders::bearer("wrong").unwrap()))
        .backoff(fast())
        .open()
        .await
        .unwrap_err();
    assert_eq!(fixed.kind(), ErrorKind::Unauthenticated);
    assert!(!fixed.to_string().contains("wrong"), "{fixed}");
}

#[tokio::test]
async fn credentials_in_the_url_never_reach_messages() {
    let (server, _) = serve(100).await;
    let url = server
        .url("disk.raw")
        .replace("http://", "http://root:hunter2@")
        + "?X-Amz-Signature=abcdef";
    server.inject(Fault::status(500), None);
    let e = HttpSource::builder(url)
        .backoff(fast())
        .open()
        .await
        .unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("abcdef"),
        "{text}"
    );
}

#[tokio::test]
async fn connections_cut_by_a_proxy_are_resumed() {
    let (server, data) = serve(3 << 20).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut_every(256 << 10);
    let source = HttpSource::builder(proxy.url("disk.raw"))
        .backoff(fast().with_max_attempts(Some(3)))
        .open()
        .await
        .unwrap();
    let got = source.read_range(Extent::new(0, 3 << 20)).await.unwrap();
    assert_eq!(got, data);
    assert!(proxy.cuts() >= 12, "{}", proxy.cuts());
    // Body bytes already received are never asked for again.
    assert_eq!(source.stats().bytes_received, 3 << 20);
}
