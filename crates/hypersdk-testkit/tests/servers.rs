//! Checks the loopback file server and the fault proxy with a tiny raw
//! HTTP/1.1 client written on `tokio::net::TcpStream`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hypersdk_testkit::fault_proxy::FaultProxy;
use hypersdk_testkit::http_server::{Fault, FileServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const MIB: usize = 1024 * 1024;
/// Upper bound for anything that should be quick, so a broken server fails
/// the test instead of hanging it.
const QUICK: Duration = Duration::from_secs(5);

/// Deterministic test data.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes of the status line and headers, CRLFs included.
    head_len: usize,
    /// Whether the body ended at EOF before `Content-Length` bytes.
    truncated: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|value| value.parse().expect("numeric Content-Length"))
    }
}

/// One client connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send request");
    }

    /// Reads a status line and headers.
    async fn read_head(&mut self) -> Resp {
        let mut head_len = 0;
        let mut line = String::new();
        head_len += self
            .stream
            .read_line(&mut line)
            .await
            .expect("read status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .expect("numeric status");
        let mut headers = Vec::new();
        loop {
            line.clear();
            let n = self.stream.read_line(&mut line).await.expect("read header");
            assert!(n > 0, "EOF in the response head");
            head_len += n;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("header line");
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Resp {
            status,
            headers,
            body: Vec::new(),
            head_len,
            truncated: false,
        }
    }

    /// Reads a whole response; `head_only` for a response to HEAD.
    async fn read_response(&mut self, head_only: bool) -> Resp {
        let mut resp = self.read_head().await;
        if head_only {
            return resp;
        }
        let len = resp
            .content_length()
            .expect("the server always sends Content-Length");
        let mut buf = vec![0u8; 64 * 1024];
        while resp.body.len() < len {
            let want = (len - resp.body.len()).min(buf.len());
            let n = self.stream.read(&mut buf[..want]).await.expect("read body");
            if n == 0 {
                resp.truncated = true;
                break;
            }
            resp.body.extend_from_slice(&buf[..n]);
        }
        resp
    }

    async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(method, path, headers).await;
        timeout(QUICK, self.read_response(method == "HEAD"))
            .await
            .expect("response in time")
    }

    /// Reads until EOF or an error; returns what was read and how it ended.
    async fn read_to_end(&mut self) -> (Vec<u8>, io::Result<()>) {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) => return (data, Ok(())),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(error) => return (data, Err(error)),
            }
        }
    }
}

/// A one-request connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    Conn::connect(addr)
        .await
        .request("GET", path, headers)
        .await
}

async fn memory_server(name: &str, data: &[u8]) -> FileServer {
    let server = FileServer::start_in_memory().await;
    server.add_bytes(name, Bytes::copy_from_slice(data));
    server
}

#[tokio::test]
async fn head_reports_length_ranges_and_etag() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("disk.img"), pattern(1000)).expect("write file");
    let server = FileServer::start(dir.path()).await;
    assert!(server.url("disk.img").starts_with("http://127.0.0.1:"));
    assert!(server.url("disk.img").ends_with("/disk.img"));

    let resp = Conn::connect(server.addr())
        .await
        .request("HEAD", "/disk.img", &[])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("1000"));
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    let etag = resp.header("etag").expect("ETag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(Some(etag.to_owned()), server.etag("disk.img").await);
    assert_eq!(server.bytes_sent(), 0);

    server.change_etags();
    assert_ne!(Some(etag.to_owned()), server.etag("disk.img").await);
}

#[tokio::test]
async fn full_get_streams_the_whole_file_and_counts_bytes() {
    // Several 256 KiB chunks, and a tail.
    let data = pattern(MIB + 12_345);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/disk.img"), &data).expect("write file");
    let server = FileServer::start(dir.path()).await;

    let resp = get(server.addr(), "/sub/disk.img", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_length(), Some(data.len()));
    assert_eq!(resp.header("content-range"), None);
    assert!(!resp.truncated);
    assert!(resp.body == data, "body differs");
    assert_eq!(server.bytes_sent(), data.len() as u64);

    let resp = get(
        server.addr(),
        "/sub/disk.img",
        &[("Range", "bytes=100-199")],
    )
    .await;
    assert_eq!(resp.status, 206);
    assert_eq!(server.bytes_sent(), data.len() as u64 + 100);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.connections(), 2);
    assert_eq!(
        server.ranges(),
        vec![
            ("sub/disk.img".to_owned(), None),
            ("sub/disk.img".to_owned(), Some((100, 199))),
        ]
    );

    server.reset_stats();
    assert_eq!(
        (server.bytes_sent(), server.requests(), server.connections()),
        (0, 0, 0)
    );
    assert!(server.log().is_empty());
}

#[tokio::test]
async fn ranged_gets_return_exactly_the_range() {
    let data = pattern(1000);
    let server = memory_server("f", &data).await;
    let mut conn = Conn::connect(server.addr()).await;

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, 999),
        ("bytes=-10", 990, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=900-5000", 900, 999),
        // Multi-range: the first range only.
        ("bytes=5-9,20-29", 5, 9),
    ];
    for &(range, first, last) in cases {
        let resp = conn.request("GET", "/f", &[("Range", range)]).await;
        assert_eq!(resp.status, 206, "{range}");
        let expected_range = format!("bytes {first}-{last}/1000");
        assert_eq!(
            resp.header("content-range"),
            Some(expected_range.as_str()),
            "{range}"
        );
        assert_eq!(resp.content_length(), Some(last - first + 1), "{range}");
        assert_eq!(resp.body, &data[first..=last], "{range}");
    }

    // A range this server does not understand is ignored.
    let resp = conn.request("GET", "/f", &[("Range", "bytes=9-5")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, data);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416() {
    let server = memory_server("f", &pattern(1000)).await;
    server.add_bytes("empty", Bytes::new());
    let mut conn = Conn::connect(server.addr()).await;
    for (path, range, total) in [
        ("/f", "bytes=1000-", 1000),
        ("/f", "bytes=5000-6000", 1000),
        ("/f", "bytes=-0", 1000),
        ("/empty", "bytes=0-", 0),
    ] {
        let resp = conn.request("GET", path, &[("Range", range)]).await;
        assert_eq!(resp.status, 416, "{range}");
        let expected = format!("bytes */{total}");
        assert_eq!(resp.header("content-range"), Some(expected.as_str()));
        assert!(resp.body.is_empty());
    }
    assert_eq!(server.bytes_sent(), 0);

    // An empty file without Range is a plain empty 200.
    let resp = conn.request("GET", "/empty", &[]).await;
    assert_eq!((resp.status, resp.content_length()), (200, Some(0)));
}

#[tokio::test]
async fn missing_files_bad_paths_and_methods() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let server = FileServer::start(dir.path().join("sub")).await;
    std::fs::write(dir.path().join("secret"), b"secret").expect("write file");

    let mut conn = Conn::connect(server.addr()).await;
    assert_eq!(conn.request("GET", "/missing", &[]).await.status, 404);
    assert_eq!(conn.request("HEAD", "/missing", &[]).await.status, 404);
    assert_eq!(conn.request("GET", "/../secret", &[]).await.status, 400);
    assert_eq!(conn.request("GET", "/%2e%2e/secret", &[]).await.status, 400);
    assert_eq!(conn.request("GET", "//etc/passwd", &[]).await.status, 400);
    // No name at all.
    assert_eq!(conn.request("GET", "/", &[]).await.status, 400);
    // A directory is not a file.
    std::fs::create_dir(dir.path().join("sub/dir")).expect("mkdir");
    assert_eq!(conn.request("GET", "/dir", &[]).await.status, 404);
    let resp = conn.request("DELETE", "/missing", &[]).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn if_match_and_if_range() {
    let data = pattern(1000);
    let server = memory_server("f", &data).await;
    let etag = server.etag("f").await.expect("etag");
    let mut conn = Conn::connect(server.addr()).await;

    let resp = conn
        .request(
            "GET",
            "/f",
            &[("Range", "bytes=10-19"), ("If-Match", &etag)],
        )
        .await;
    assert_eq!(resp.status, 206);
    let resp = conn
        .request(
            "GET",
            "/f",
            &[("Range", "bytes=10-19"), ("If-Match", "\"other\"")],
        )
        .await;
    assert_eq!(resp.status, 412);
    let resp = conn.request("HEAD", "/f", &[("If-Match", "*")]).await;
    assert_eq!(resp.status, 200);

    // Replacing the file changes its tag: a resume with the old one fails.
    server.add_bytes("f", Bytes::copy_from_slice(&data));
    let resp = conn
        .request(
            "GET",
            "/f",
            &[("Range", "bytes=10-19"), ("If-Match", &etag)],
        )
        .await;
    assert_eq!(resp.status, 412);

    // If-Range with a stale tag: the whole file.
    let resp = conn
        .request(
            "GET",
            "/f",
            &[("Range", "bytes=10-19"), ("If-Range", &etag)],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, data);
    let current = server.etag("f").await.expect("etag");
    let resp = conn
        .request(
            "GET",
            "/f",
            &[("Range", "bytes=10-19"), ("If-Range", &current)],
        )
        .await;
    assert_eq!(resp.status, 206);
}

#[tokio::test]
async fn fault_ignore_range_sends_200_and_everything() {
    let data = pattern(1000);
    let server = memory_server("f", &data).await;
    server.inject(Fault::IgnoreRange, Some(1));
    let mut conn = Conn::connect(server.addr()).await;

    // A HEAD does not use the fault up.
    assert_eq!(conn.request("HEAD", "/f", &[]).await.status, 200);
    let resp = conn.request("GET", "/f", &[("Range", "bytes=10-19")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-range"), None);
    assert_eq!(resp.body, data);
    let resp = conn.request("GET", "/f", &[("Range", "bytes=10-19")]).await;
    assert_eq!(resp.status, 206);
    assert!(server.pending_faults().is_empty());
    let log = server.log();
    assert_eq!(log[1].fault, Some(Fault::IgnoreRange));
    assert_eq!(log[1].range, Some((10, 19)));
    assert_eq!(log[2].fault, None);
}

#[tokio::test]
async fn fault_wrong_content_range_names_another_range() {
    let data = pattern(1000);
    let server = memory_server("f", &data).await;
    server.inject(Fault::WrongContentRange, None);

    let resp = get(server.addr(), "/f", &[("Range", "bytes=100-199")]).await;
    assert_eq!(resp.status, 206);
    assert_eq!(resp.header("content-range"), Some("bytes 200-299/1000"));
    assert_eq!(resp.body, &data[200..300]);
    let resp = get(server.addr(), "/f", &[("Range", "bytes=900-")]).await;
    assert_eq!(resp.header("content-range"), Some("bytes 800-899/1000"));
    assert_eq!(resp.body, &data[800..900]);
    // Still on: `None` means every applicable request.
    assert_eq!(
        server.pending_faults(),
        vec![(Fault::WrongContentRange, None)]
    );
}

#[tokio::test]
async fn fault_short_body_sends_half_then_closes() {
    let data = pattern(MIB + 1);
    let server = memory_server("f", &data).await;
    server.inject(Fault::ShortBody, Some(2));
    let mut conn = Conn::connect(server.addr()).await;

    let resp = conn
        .request("GET", "/f", &[("Range", "bytes=1000-2999")])
        .await;
    assert_eq!(resp.status, 206);
    assert_eq!(
        resp.header("content-range"),
        Some("bytes 1000-2999/1048577")
    );
    assert_eq!(resp.content_length(), Some(2000));
    assert!(resp.truncated, "the body must end early");
    assert_eq!(resp.body, &data[1000..2000]);
    // The connection is gone.
    let (rest, ended) = timeout(QUICK, conn.read_to_end()).await.expect("EOF");
    assert!(rest.is_empty());
    ended.expect("clean EOF");

    // A whole-file GET, larger than hyper's write buffer.
    let resp = get(server.addr(), "/f", &[]).await;
    assert_eq!(
        (resp.status, resp.content_length()),
        (200, Some(data.len()))
    );
    assert!(resp.truncated);
    assert_eq!(resp.body.len(), data.len() / 2);
    assert!(resp.body == data[..data.len() / 2], "body differs");
    assert_eq!(server.bytes_sent(), 1000 + data.len() as u64 / 2);
}

#[tokio::test]
async fn fault_status_503_twice_then_206() {
    let data = pattern(1000);
    let server = memory_server("f", &data).await;
    server.inject(Fault::status_retry_after(503, 1), Some(2));
    let mut conn = Conn::connect(server.addr()).await;

    for _ in 0..2 {
        let resp = conn.request("GET", "/f", &[("Range", "bytes=0-99")]).await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("retry-after"), Some("1"));
    }
    let resp = conn.request("GET", "/f", &[("Range", "bytes=0-99")]).await;
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, &data[..100]);
    assert_eq!(server.ranges(), vec![("f".to_owned(), Some((0, 99))); 3]);
    let statuses: Vec<_> = server.log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(503), Some(503), Some(206)]);

    server.inject(Fault::status(500), Some(1));
    let resp = conn.request("HEAD", "/f", &[]).await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("retry-after"), None);
}

#[tokio::test]
async fn fault_stall_sends_headers_then_nothing_and_dies_with_the_server() {
    let data = pattern(MIB);
    let server = memory_server("f", &data).await;
    server.inject(Fault::Stall { after: 1000 }, Some(1));
    let addr = server.addr();
    let mut conn = Conn::connect(addr).await;
    conn.send("GET", "/f", &[]).await;
    let head = timeout(QUICK, conn.read_head()).await.expect("head");
    assert_eq!((head.status, head.content_length()), (200, Some(MIB)));

    let mut body = vec![0u8; 1000];
    timeout(QUICK, conn.stream.read_exact(&mut body))
        .await
        .expect("first bytes in time")
        .expect("first bytes");
    assert_eq!(body, &data[..1000]);
    let mut byte = [0u8; 1];
    let more = timeout(Duration::from_millis(500), conn.stream.read(&mut byte)).await;
    assert!(more.is_err(), "no byte may follow the stall: {more:?}");

    // Dropping the server closes the stalled connection and the listener.
    server.stop().await;
    let (rest, _) = timeout(QUICK, conn.read_to_end())
        .await
        .expect("the stalled connection closes");
    assert!(rest.is_empty());
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn fault_hang_never_answers() {
    let server = memory_server("f", b"data").await;
    server.inject(Fault::Hang, Some(1));
    let mut conn = Conn::connect(server.addr()).await;
    conn.send("HEAD", "/f", &[]).await;
    let mut byte = [0u8; 1];
    let answer = timeout(Duration::from_millis(300), conn.stream.read(&mut byte)).await;
    assert!(answer.is_err(), "no answer expected: {answer:?}");
    assert_eq!(server.log()[0].status, None);

    // Another connection is served normally.
    let resp = get(server.addr(), "/f", &[]).await;
    assert_eq!(resp.body, b"data");
}

#[tokio::test]
async fn fault_head_without_length() {
    let server = memory_server("f", &pattern(1000)).await;
    server.inject(Fault::HeadWithoutLength, Some(1));
    let mut conn = Conn::connect(server.addr()).await;
    // A GET does not use the fault up.
    assert_eq!(conn.request("GET", "/f", &[]).await.status, 200);
    let resp = conn.request("HEAD", "/f", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    let resp = conn.request("HEAD", "/f", &[]).await;
    assert_eq!(resp.header("content-length"), Some("1000"));
}

#[tokio::test]
async fn bearer_auth_and_token_rotation() {
    let server = memory_server("f", b"data").await;
    server.require_bearer("t1");
    server.inject(Fault::status(503), Some(1));
    let mut conn = Conn::connect(server.addr()).await;

    let resp = conn.request("GET", "/f", &[]).await;
    assert_eq!(resp.status, 401);
    assert!(
        resp.header("www-authenticate")
            .expect("challenge")
            .starts_with("Bearer")
    );
    let resp = conn
        .request("GET", "/f", &[("Authorization", "Bearer wrong")])
        .await;
    assert_eq!(resp.status, 401);
    // 401s leave the fault for the first authorized request.
    let resp = conn
        .request("GET", "/f", &[("Authorization", "Bearer t1")])
        .await;
    assert_eq!(resp.status, 503);
    let resp = conn
        .request("GET", "/f", &[("Authorization", "Bearer t1")])
        .await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"data"[..]));

    server.rotate_token("t2");
    let resp = conn
        .request("GET", "/f", &[("Authorization", "Bearer t1")])
        .await;
    assert_eq!(resp.status, 401);
    let resp = conn
        .request("GET", "/f", &[("Authorization", "bearer t2")])
        .await;
    assert_eq!(resp.status, 200);

    server.clear_auth();
    assert_eq!(conn.request("GET", "/f", &[]).await.status, 200);
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let data = pattern(10_000);
    let server = memory_server("f", &data).await;
    let mut conn = Conn::connect(server.addr()).await;
    let head = conn.request("HEAD", "/f", &[]).await;
    assert_eq!(head.status, 200);
    let resp = conn
        .request("GET", "/f", &[("Range", "bytes=0-4999")])
        .await;
    assert_eq!(resp.body, &data[..5000]);
    let resp = conn.request("GET", "/f", &[("Range", "bytes=5000-")]).await;
    assert_eq!(resp.body, &data[5000..]);
    assert_eq!(server.requests(), 3);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn proxy_cut_every_is_exact_and_a_resuming_client_completes() {
    let total = 10 * MIB;
    let data = pattern(total);
    let server = memory_server("big", &data).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut_every(MIB as u64);

    // First connection: exactly 1 MiB (head included), then a clean EOF.
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send("GET", "/big", &[]).await;
    let (raw, ended) = timeout(QUICK, conn.read_to_end())
        .await
        .expect("cut in time");
    ended.expect("a clean FIN");
    assert_eq!(raw.len(), MIB);
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    let mut received = raw[head_end..].to_vec();
    assert!(received == data[..received.len()], "body differs");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(proxy.connections_cut(), 1);
    assert_eq!(proxy.bytes_down(), MIB as u64);
    assert!(proxy.bytes_up() > 0);

    // Resume from the last byte received until done, one connection each.
    while received.len() < total {
        let range = format!("bytes={}-", received.len());
        let mut conn = Conn::connect(proxy.addr()).await;
        let resp = conn.request("GET", "/big", &[("Range", &range)]).await;
        assert_eq!(resp.status, 206);
        let expected = format!("bytes {}-{}/{total}", received.len(), total - 1);
        assert_eq!(resp.header("content-range"), Some(expected.as_str()));
        assert!(resp.head_len + resp.body.len() <= MIB);
        assert!(
            resp.body == data[received.len()..received.len() + resp.body.len()],
            "body differs"
        );
        received.extend_from_slice(&resp.body);
    }
    assert!(received == data);
    assert!(proxy.cuts() >= 10, "cuts: {}", proxy.cuts());
    assert_eq!(proxy.connections(), proxy.cuts() + 1);
    assert_eq!(server.ranges().len() as u64, proxy.connections());
    assert_eq!(
        server.ranges()[1].1,
        Some(((MIB - head_end) as u64, total as u64 - 1))
    );

    // Passing again: a whole download on one connection.
    proxy.pass();
    let resp = get(proxy.addr(), "/big", &[]).await;
    assert!(!resp.truncated);
    assert!(resp.body == data);
}

#[tokio::test]
async fn proxy_reset_after_aborts_the_connection() {
    let server = memory_server("big", &pattern(MIB)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.reset_after(1000);

    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send("GET", "/big", &[]).await;
    let (raw, ended) = timeout(QUICK, conn.read_to_end())
        .await
        .expect("reset in time");
    assert!(raw.len() <= 1000, "got {} bytes", raw.len());
    // Linux reports the RST as ECONNRESET on the next read.
    if cfg!(target_os = "linux") {
        let error = ended.expect_err("a reset, not a clean EOF");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    } else {
        assert!(raw.len() < MIB);
    }
    assert_eq!(proxy.resets(), 1);
    assert_eq!(proxy.cuts(), 0);
    assert_eq!(proxy.connections_cut(), 1);
}

#[tokio::test]
async fn proxy_delay_slows_each_chunk() {
    let server = memory_server("f", b"data").await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.delay(Duration::from_millis(100));
    let started = Instant::now();
    let resp = get(proxy.addr(), "/f", &[]).await;
    assert_eq!(resp.body, b"data");
    // One chunk up (the request) and at least one down (the response).
    assert!(started.elapsed() >= Duration::from_millis(200));

    proxy.pass();
    assert_eq!(proxy.url("f"), format!("http://{}/f", proxy.addr()));
    assert_eq!(proxy.upstream(), server.addr());
}
