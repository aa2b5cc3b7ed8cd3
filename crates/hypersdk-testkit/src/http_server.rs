//! A loopback HTTP/1.1 file server that can be told to misbehave.
//!
//! [`FileServer`] serves files from a directory (and files registered in
//! memory with [`FileServer::add_bytes`]) on `127.0.0.1`, with the parts of
//! HTTP a range reader depends on: `HEAD` with `Content-Length`,
//! `Accept-Ranges` and a strong `ETag`; `GET` of the whole file (200) or of a
//! single byte range (206 with `Content-Range`); 416 for an unsatisfiable
//! range; `If-Match` (412) and `If-Range`; keep-alive connections. Bodies are
//! streamed in 256 KiB chunks, so multi-GiB files are never held in memory.
//!
//! Tests switch faults on at runtime with [`FileServer::inject`] (see
//! [`Fault`]), require a bearer token with [`FileServer::require_bearer`], and
//! assert on what the client did with the counters ([`FileServer::requests`],
//! [`FileServer::connections`], [`FileServer::bytes_sent`]) and the request
//! log ([`FileServer::ranges`], [`FileServer::log`]).
//!
//! # Protocol details
//!
//! - Only `GET` and `HEAD` are served; other methods get 405.
//! - The request path is percent-decoded and must be relative and clean:
//!   a `..` or `.` segment, an empty segment (`//`), a backslash or a NUL
//!   byte gives 400. A missing file or a directory gives 404.
//! - `Range` is honoured on `GET` only and only in the `bytes` unit:
//!   `bytes=a-b`, `bytes=a-` and the suffix form `bytes=-n`. A range whose
//!   end lies past the file is clamped to the file. A multi-range request
//!   (`bytes=0-9,20-29`) is answered with the **first range only**, as a
//!   plain 206 (never `multipart/byteranges`). A header that does not parse
//!   (another unit, `a > b`, garbage) is ignored, as RFC 9110 allows, and the
//!   whole file is sent with 200. A range starting at or past the end of the
//!   file, a zero-length suffix, or any range of an empty file gives 416 with
//!   `Content-Range: bytes */total`.
//! - `If-Match` is checked before the range (strong comparison; `*` matches
//!   any existing file; weak tags never match); a mismatch gives 412.
//!   `If-Range` with a tag other than the current `ETag` (or with a date,
//!   which this server does not compare) makes the server ignore `Range` and
//!   send the whole file with 200.
//! - ETags are strong and quoted. For a file on disk they are built from its
//!   size and modification time; for an in-memory file from its size and a
//!   generation number that [`FileServer::add_bytes`] bumps on every call.
//!   [`FileServer::change_etags`] changes every tag at once, which is the
//!   reliable way to simulate "the source changed" (file mtimes can be
//!   coarse: rewriting a file within a few milliseconds may keep its tag).
//!
//! This module is test support, not a stable API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    HeaderMap, HeaderValue, IF_MATCH, IF_RANGE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Size of the body chunks the server streams.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// How long a [`Fault::ShortBody`] response waits for its half body to reach
/// the socket before it closes the connection anyway.
const SHORT_BODY_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

type RespBody = UnsyncBoxBody<Bytes, io::Error>;

/// A misbehaviour of the [`FileServer`], switched on with
/// [`FileServer::inject`].
///
/// Each fault applies only to the requests it makes sense for (listed per
/// variant); a request that it does not apply to is served normally and does
/// not use up one of the fault's `times`. Requests answered with 401 by
/// [`FileServer::require_bearer`] never consume a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer a `GET` that would get a 206 with 200 and the whole file.
    ///
    /// Applies to: `GET` with a satisfiable range.
    IgnoreRange,
    /// Answer a `GET` that would get a 206 with a 206 naming a different
    /// range, and the bytes of that other range (so `Content-Length` and the
    /// body agree with the wrong `Content-Range`).
    ///
    /// The advertised range is the requested one moved forward by its own
    /// length if that stays inside the file, else backward by its length,
    /// else by one byte forward or backward. A range spanning the whole file
    /// is advertised without its first byte (`bytes 1-last/total`), and for
    /// a one-byte file as `bytes 0-0/2`.
    ///
    /// Applies to: `GET` with a satisfiable range.
    WrongContentRange,
    /// Send the correct status and headers (with the `Content-Length` of the
    /// whole body) but only the first half of the body (`len / 2` bytes),
    /// then close the connection: the client sees an unexpected EOF. The
    /// server waits until the half body has been written to the socket
    /// before it closes, so the client receives exactly `len / 2` bytes.
    ///
    /// Applies to: `GET` with a non-empty body (200 or 206).
    ShortBody,
    /// Answer with this status and a short text body instead of serving the
    /// request, with `Retry-After: <seconds>` when `retry_after` is set.
    /// Build it with [`Fault::status`] or [`Fault::status_retry_after`].
    ///
    /// Applies to: every request.
    Status {
        /// The status code to answer with (e.g. 503).
        code: u16,
        /// The `Retry-After` header value, in seconds.
        retry_after: Option<u32>,
    },
    /// Send the status, the headers and the first `after` bytes of the body,
    /// then nothing more until the client closes the connection or the
    /// server is dropped. If `after` is at least the body length the whole
    /// body is sent, but the response never ends on the server side, so the
    /// connection serves no further request.
    ///
    /// Applies to: `GET` with a non-empty body (200 or 206).
    Stall {
        /// Body bytes sent before stalling.
        after: u64,
    },
    /// Never answer at all: no status line, no headers, until the client
    /// closes the connection or the server is dropped.
    ///
    /// Applies to: every request.
    Hang,
    /// Answer `HEAD` with 200 and the usual headers but no `Content-Length`.
    ///
    /// Applies to: `HEAD` of an existing file.
    HeadWithoutLength,
}

impl Fault {
    /// [`Fault::Status`] without `Retry-After`.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
        }
    }

    /// [`Fault::Status`] with `Retry-After: seconds`.
    pub fn status_retry_after(code: u16, seconds: u32) -> Fault {
        Fault::Status {
            code,
            retry_after: Some(seconds),
        }
    }

    fn applies_to(&self, plan: &Plan) -> bool {
        match self {
            Fault::Status { .. } | Fault::Hang => true,
            Fault::IgnoreRange | Fault::WrongContentRange => matches!(plan, Plan::Partial { .. }),
            Fault::ShortBody | Fault::Stall { .. } => match plan {
                Plan::Full { file } => file.len > 0,
                Plan::Partial { .. } => true,
                _ => false,
            },
            Fault::HeadWithoutLength => matches!(plan, Plan::Head { .. }),
        }
    }
}

/// One request the [`FileServer`] received, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request method (`GET`, `HEAD`, ...).
    pub method: String,
    /// The requested file name: the percent-decoded path without its leading
    /// `/` (or the raw path when it did not decode).
    pub path: String,
    /// The raw `Range` header, if any.
    pub range_header: Option<String>,
    /// The range the client asked for, resolved against the file size as
    /// inclusive `(first, last)` byte offsets: `None` when there was no
    /// `Range` header or it was not usable (unparsable, ignored because of
    /// `If-Range`, unsatisfiable, a missing file, or a `HEAD`).
    pub range: Option<(u64, u64)>,
    /// The status answered, `None` for [`Fault::Hang`].
    pub status: Option<u16>,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
}

/// A loopback HTTP/1.1 file server for tests; see the [module
/// documentation](self).
///
/// It serves on `127.0.0.1` on a port of its own from a spawned task, and
/// stops when dropped: the accept loop and every connection (including
/// stalled and hung ones) are aborted.
pub struct FileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    root: Option<PathBuf>,
    memory: Mutex<HashMap<String, MemFile>>,
    memory_generation: AtomicU64,
    etag_epoch: AtomicU64,
    faults: Mutex<Vec<FaultEntry>>,
    bearer: Mutex<Option<String>>,
    bytes_sent: AtomicU64,
    requests: AtomicU64,
    connections: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
}

#[derive(Clone)]
struct MemFile {
    data: Bytes,
    generation: u64,
}

struct FaultEntry {
    fault: Fault,
    remaining: Option<u32>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not wedge the server for the others.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FileServer {
    /// Starts a server for the files under `root`, on `127.0.0.1` on a free
    /// port.
    ///
    /// # Panics
    ///
    /// If it cannot bind the port, or when called outside a Tokio runtime.
    pub async fn start(root: impl Into<PathBuf>) -> FileServer {
        FileServer::start_with_root(Some(root.into())).await
    }

    /// Starts a server with no directory: it serves only the files
    /// registered with [`FileServer::add_bytes`].
    ///
    /// # Panics
    ///
    /// As [`FileServer::start`].
    pub async fn start_in_memory() -> FileServer {
        FileServer::start_with_root(None).await
    }

    async fn start_with_root(root: Option<PathBuf>) -> FileServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("FileServer: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("FileServer: local address of the listener");
        let shared = Arc::new(Shared {
            root,
            memory: Mutex::new(HashMap::new()),
            memory_generation: AtomicU64::new(0),
            etag_epoch: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            bearer: Mutex::new(None),
            bytes_sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FileServer { addr, shared, task }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of file `name`: `http://127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{}", self.addr, name.trim_start_matches('/'))
    }

    /// Registers (or replaces) an in-memory file, served at `/name`. An
    /// in-memory file shadows a file of the same name under the root. Every
    /// call gives the file a new `ETag`.
    pub fn add_bytes(&self, name: impl Into<String>, data: impl Into<Bytes>) {
        let generation = self.shared.memory_generation.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.shared.memory).insert(
            name.into().trim_start_matches('/').to_owned(),
            MemFile {
                data: data.into(),
                generation,
            },
        );
    }

    /// Removes an in-memory file; returns whether there was one.
    pub fn remove_bytes(&self, name: &str) -> bool {
        lock(&self.shared.memory)
            .remove(name.trim_start_matches('/'))
            .is_some()
    }

    /// Changes the `ETag` of every file, as if they had all been rewritten.
    pub fn change_etags(&self) {
        self.shared.etag_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The current `ETag` (quoted) of file `name`, or `None` if the server
    /// has no such file.
    pub async fn etag(&self, name: &str) -> Option<String> {
        self.shared.lookup(name).await.map(|file| file.etag)
    }

    /// Switches `fault` on for the next `times` requests it applies to, or
    /// for all of them when `times` is `None` (`Some(0)` does nothing).
    ///
    /// Faults are kept in injection order; each request uses the first one
    /// that applies to it (see [`Fault`]), so `inject(Fault::status(503),
    /// Some(2))` answers the next two requests with 503 and then serves
    /// normally.
    ///
    /// # Panics
    ///
    /// If a [`Fault::Status`] code is not a valid status code (100..=999).
    pub fn inject(&self, fault: Fault, times: Option<u32>) {
        if let Fault::Status { code, .. } = fault {
            StatusCode::from_u16(code)
                .unwrap_or_else(|_| panic!("FileServer::inject: invalid status code {code}"));
        }
        if times == Some(0) {
            return;
        }
        lock(&self.shared.faults).push(FaultEntry {
            fault,
            remaining: times,
        });
    }

    /// Switches every fault off.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// The faults still switched on, with how many uses each has left
    /// (`None`: unlimited).
    pub fn pending_faults(&self) -> Vec<(Fault, Option<u32>)> {
        lock(&self.shared.faults)
            .iter()
            .map(|entry| (entry.fault.clone(), entry.remaining))
            .collect()
    }

    /// Requires `Authorization: Bearer <token>` on every request; others get
    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn require_bearer(&self, token: impl Into<String>) {
        *lock(&self.shared.bearer) = Some(token.into());
    }

    /// Replaces the required bearer token: requests with the old one now get
    /// 401, as when a server-side token expires.
    pub fn rotate_token(&self, token: impl Into<String>) {
        self.require_bearer(token);
    }

    /// Stops requiring a bearer token.
    pub fn clear_auth(&self) {
        *lock(&self.shared.bearer) = None;
    }

    /// Body bytes handed to the connections so far, counted as each chunk is
    /// yielded to hyper (status lines and headers are not counted; a
    /// [`Fault::ShortBody`] or [`Fault::Stall`] response counts only what it
    /// sent).
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far, whatever their outcome.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The `GET` requests received so far, in order, as (file name, range
    /// asked for as inclusive `(first, last)`, `None` for the whole file or
    /// an unusable range; see [`RequestRecord::range`]).
    pub fn ranges(&self) -> Vec<(String, Option<(u64, u64)>)> {
        lock(&self.shared.log)
            .iter()
            .filter(|record| record.method == "GET")
            .map(|record| (record.path.clone(), record.range))
            .collect()
    }

    /// Every request received so far, in order.
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Resets the counters and the request log (not the faults or files).
    pub fn reset_stats(&self) {
        self.shared.bytes_sent.store(0, Ordering::SeqCst);
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.connections.store(0, Ordering::SeqCst);
        lock(&self.shared.log).clear();
    }

    /// Stops the server and waits until the accept loop and every connection
    /// task have been dropped (their sockets closed). Dropping the server
    /// does the same without waiting.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl fmt::Debug for FileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileServer")
            .field("addr", &self.addr)
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting this task aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "FileServer: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (flushed_tx, flushed_rx) = watch::channel(0u64);
    let io = FlushSignalIo {
        inner: stream,
        flushed: flushed_tx,
    };
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let flushed = flushed_rx.clone();
        async move { Ok::<_, Infallible>(handle(&shared, flushed, request).await) }
    });
    if let Err(error) = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%error, "FileServer: connection ended with an error");
    }
}

/// The socket, bumping a counter each time hyper's write buffer has been
/// written out to it (hyper calls `poll_flush` on the IO only once its own
/// buffer is empty). [`Fault::ShortBody`] (and the OVM exporter test
/// server's cut ranges) wait on it before closing.
pub(crate) struct FlushSignalIo<I> {
    pub(crate) inner: I,
    pub(crate) flushed: watch::Sender<u64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for FlushSignalIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FlushSignalIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            self.flushed.send_modify(|count| *count += 1);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    Memory(Bytes),
    Disk(PathBuf),
}

#[derive(Clone, Debug)]
struct FileInfo {
    source: Source,
    len: u64,
    etag: String,
}

/// What the server would answer without faults.
#[derive(Debug)]
enum Plan {
    Error(StatusCode, &'static str),
    PreconditionFailed,
    Unsatisfiable {
        total: u64,
    },
    Head {
        file: FileInfo,
    },
    Full {
        file: FileInfo,
    },
    Partial {
        file: FileInfo,
        first: u64,
        last: u64,
    },
}

impl Shared {
    async fn lookup(&self, name: &str) -> Option<FileInfo> {
        let name = name.trim_start_matches('/');
        let epoch = self.etag_epoch.load(Ordering::SeqCst);
        if let Some(file) = lock(&self.memory).get(name).cloned() {
            let len = file.data.len() as u64;
            return Some(FileInfo {
                etag: format!("\"m{}-{len:x}-{epoch}\"", file.generation),
                source: Source::Memory(file.data),
                len,
            });
        }
        let path = self.root.as_ref()?.join(name);
        let metadata = tokio::fs::metadata(&path).await.ok()?;
        if !metadata.is_file() {
            return None;
        }
        let mtime = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default()
            .as_nanos();
        let len = metadata.len();
        Some(FileInfo {
            etag: format!("\"{len:x}-{mtime:x}-{epoch}\""),
            source: Source::Disk(path),
            len,
        })
    }

    /// Takes one use of the first fault that applies to `plan`.
    fn take_fault(&self, plan: &Plan) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|entry| entry.fault.applies_to(plan))?;
        let entry = &mut faults[index];
        let fault = entry.fault.clone();
        if let Some(remaining) = &mut entry.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                faults.remove(index);
            }
        }
        Some(fault)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = lock(&self.bearer).clone() else {
            return true;
        };
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        match value.split_once(' ') {
            Some((scheme, given)) => scheme.eq_ignore_ascii_case("bearer") && given == token,
            None => false,
        }
    }
}

async fn handle(
    shared: &Arc<Shared>,
    flushed: watch::Receiver<u64>,
    request: Request<Incoming>,
) -> Response<RespBody> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let method = request.method().clone();
    // Only the one leading slash of the origin form: `//etc` stays absolute.
    let raw_path = request.uri().path();
    let raw_path = raw_path.strip_prefix('/').unwrap_or(raw_path).to_owned();
    let range_header = request
        .headers()
        .get(RANGE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let decoded = percent_decode(&raw_path);
    let mut record = RequestRecord {
        method: method.to_string(),
        path: decoded.clone().unwrap_or_else(|| raw_path.clone()),
        range_header,
        range: None,
        status: None,
        fault: None,
    };

    if !shared.authorized(request.headers()) {
        let mut response = text_response(StatusCode::UNAUTHORIZED, "bearer token required\n");
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hypersdk-testkit\""),
        );
        record.status = Some(response.status().as_u16());
        lock(&shared.log).push(record);
        return response;
    }

    let plan = plan(shared, &method, decoded.as_deref(), request.headers()).await;
    if let Plan::Partial { first, last, .. } = &plan {
        record.range = Some((*first, *last));
    }
    let fault = shared.take_fault(&plan);
    record.fault = fault.clone();

    if fault == Some(Fault::Hang) {
        lock(&shared.log).push(record);
        return std::future::pending().await;
    }
    let response = respond(shared, flushed, plan, fault);
    record.status = Some(response.status().as_u16());
    lock(&shared.log).push(record);
    response
}

async fn plan(shared: &Shared, method: &Method, name: Option<&str>, headers: &HeaderMap) -> Plan {
    if method != Method::GET && method != Method::HEAD {
        return Plan::Error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let Some(name) = name.filter(|name| clean_relative_path(name)) else {
        return Plan::Error(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let Some(file) = shared.lookup(name).await else {
        return Plan::Error(StatusCode::NOT_FOUND, "no such file\n");
    };
    if let Some(if_match) = headers.get(IF_MATCH) {
        let matches = if_match
            .to_str()
            .map(|value| etag_list_matches(value, &file.etag))
            .unwrap_or(false);
        if !matches {
            return Plan::PreconditionFailed;
        }
    }
    if method == Method::HEAD {
        return Plan::Head { file };
    }
    let Some(range) = headers.get(RANGE) else {
        return Plan::Full { file };
    };
    if let Some(if_range) = headers.get(IF_RANGE)
        && if_range.as_bytes() != file.etag.as_bytes()
    {
        return Plan::Full { file };
    }
    let Ok(range) = range.to_str() else {
        return Plan::Full { file };
    };
    match parse_range(range, file.len) {
        RangeRequest::Invalid => Plan::Full { file },
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable { total: file.len },
        RangeRequest::Satisfiable(first, last) => Plan::Partial { file, first, last },
    }
}

fn respond(
    shared: &Arc<Shared>,
    flushed: watch::Receiver<u64>,
    plan: Plan,
    fault: Option<Fault>,
) -> Response<RespBody> {
    if let Some(Fault::Status { code, retry_after }) = fault {
        let status = StatusCode::from_u16(code).expect("status code checked by inject");
        let mut response = text_response(status, "injected fault\n");
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    let tail = match fault {
        Some(Fault::ShortBody) => Tail::Abort,
        Some(Fault::Stall { after }) => Tail::Stall { after },
        _ => Tail::End,
    };
    match plan {
        Plan::Error(status, message) => {
            let mut response = text_response(status, message);
            if status == StatusCode::METHOD_NOT_ALLOWED {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            response
        }
        Plan::PreconditionFailed => {
            text_response(StatusCode::PRECONDITION_FAILED, "ETag does not match\n")
        }
        Plan::Unsatisfiable { total } => {
            let mut response = empty_response(StatusCode::RANGE_NOT_SATISFIABLE);
            response
                .headers_mut()
                .insert(CONTENT_RANGE, header_value(format!("bytes */{total}")));
            response
        }
        Plan::Head { file } => {
            let mut response = empty_response(StatusCode::OK);
            file_headers(response.headers_mut(), &file);
            if fault != Some(Fault::HeadWithoutLength) {
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(file.len));
            }
            response
        }
        Plan::Full { file } => body_response(shared, flushed, StatusCode::OK, file, None, tail),
        Plan::Partial { file, first, last } => match fault {
            Some(Fault::IgnoreRange) => {
                body_response(shared, flushed, StatusCode::OK, file, None, tail)
            }
            Some(Fault::WrongContentRange) => {
                let (first, last, total) = wrong_range(first, last, file.len);
                let range = (first, last.min(file.len.saturating_sub(1)));
                let mut response = body_response(
                    shared,
                    flushed,
                    StatusCode::PARTIAL_CONTENT,
                    file,
                    Some(range),
                    tail,
                );
                response.headers_mut().insert(
                    CONTENT_RANGE,
                    header_value(format!("bytes {first}-{last}/{total}")),
                );
                response
            }
            _ => body_response(
                shared,
                flushed,
                StatusCode::PARTIAL_CONTENT,
                file,
                Some((first, last)),
                tail,
            ),
        },
    }
}

/// The range (and total) a [`Fault::WrongContentRange`] response advertises
/// instead of `first..=last` of a `total`-byte file.
fn wrong_range(first: u64, last: u64, total: u64) -> (u64, u64, u64) {
    let len = last - first + 1;
    if last + len < total {
        (first + len, last + len, total)
    } else if first >= len {
        (first - len, last - len, total)
    } else if last + 1 < total {
        (first + 1, last + 1, total)
    } else if first >= 1 {
        (first - 1, last - 1, total)
    } else if len >= 2 {
        (first + 1, last, total)
    } else {
        (first, last, total + 1)
    }
}

fn file_headers(headers: &mut HeaderMap, file: &FileInfo) {
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(ETAG, header_value(file.etag.clone()));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
}

fn header_value(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("generated header values are ASCII")
}

fn text_response(status: StatusCode, message: &'static str) -> Response<RespBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(message.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty_response(status: StatusCode) -> Response<RespBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// What a streamed body does after its bytes.
#[derive(Clone, Copy, Debug)]
enum Tail {
    /// End normally after the whole body.
    End,
    /// Send half the body, wait until it is on the socket, then fail (hyper
    /// closes the connection).
    Abort,
    /// Send `after` bytes, then never yield again.
    Stall { after: u64 },
}

/// A 200 or 206 with the file's headers and a streamed body of `range`
/// (inclusive), or of the whole file when `range` is `None`.
fn body_response(
    shared: &Arc<Shared>,
    flushed: watch::Receiver<u64>,
    status: StatusCode,
    file: FileInfo,
    range: Option<(u64, u64)>,
    tail: Tail,
) -> Response<RespBody> {
    let (offset, len) = match range {
        Some((first, last)) => (first, last - first + 1),
        None => (0, file.len),
    };
    let send = match tail {
        Tail::End => len,
        Tail::Abort => len / 2,
        Tail::Stall { after } => after.min(len),
    };
    let mut headers = HeaderMap::new();
    file_headers(&mut headers, &file);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            CONTENT_RANGE,
            header_value(format!(
                "bytes {offset}-{}/{}",
                offset + len.saturating_sub(1),
                file.len
            )),
        );
    }
    let state = BodyState {
        reader: match file.source {
            Source::Memory(data) => Reader::Memory(data),
            Source::Disk(path) => Reader::Disk { path, file: None },
        },
        offset,
        sent: 0,
        send,
        tail,
        flushed,
        flushed_at: None,
        done: false,
        shared: Arc::clone(shared),
    };
    let stream = futures::stream::unfold(state, BodyState::next);
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

enum Reader {
    Memory(Bytes),
    Disk {
        path: PathBuf,
        file: Option<tokio::fs::File>,
    },
}

impl Reader {
    /// Reads `len` bytes at `offset`; successive calls must be contiguous.
    async fn read(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Reader::Memory(data) => {
                let start = usize::try_from(offset).map_err(io::Error::other)?;
                data.get(start..start + len)
                    .map(|_| data.slice(start..start + len))
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "in-memory file shrank")
                    })
            }
            Reader::Disk { path, file } => {
                let file = match file {
                    Some(file) => file,
                    None => {
                        let mut opened = tokio::fs::File::open(&*path).await?;
                        opened.seek(io::SeekFrom::Start(offset)).await?;
                        file.insert(opened)
                    }
                };
                let mut buf = vec![0u8; len];
                file.read_exact(&mut buf).await?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

struct BodyState {
    reader: Reader,
    /// Offset of the body's first byte in the file.
    offset: u64,
    /// Body bytes yielded so far.
    sent: u64,
    /// Body bytes to yield before the tail.
    send: u64,
    tail: Tail,
    flushed: watch::Receiver<u64>,
    /// The flush count when the last chunk was yielded.
    flushed_at: Option<u64>,
    done: bool,
    shared: Arc<Shared>,
}

impl BodyState {
    async fn next(mut self) -> Option<(io::Result<Frame<Bytes>>, BodyState)> {
        if self.done {
            return None;
        }
        if self.flushed_at.is_none() {
            // The head is already in hyper's write buffer when the body is
            // first polled.
            self.flushed_at = Some(*self.flushed.borrow());
        }
        if self.sent < self.send {
            let want = (self.send - self.sent).min(CHUNK_SIZE as u64) as usize;
            return match self.reader.read(self.offset + self.sent, want).await {
                Ok(chunk) => {
                    self.sent += want as u64;
                    self.shared
                        .bytes_sent
                        .fetch_add(want as u64, Ordering::SeqCst);
                    // Hyper buffers the chunk before it can flush again.
                    self.flushed_at = Some(*self.flushed.borrow());
                    Some((Ok(Frame::data(chunk)), self))
                }
                Err(error) => {
                    tracing::warn!(%error, "FileServer: reading the body failed");
                    self.done = true;
                    Some((Err(error), self))
                }
            };
        }
        match self.tail {
            Tail::End => None,
            Tail::Stall { .. } => std::future::pending().await,
            Tail::Abort => {
                // Wait until hyper has written everything yielded so far to
                // the socket, so the client gets exactly the half body.
                let seen = self.flushed_at.unwrap_or_default();
                let _ = tokio::time::timeout(
                    SHORT_BODY_FLUSH_TIMEOUT,
                    self.flushed.wait_for(|count| *count > seen),
                )
                .await;
                self.done = true;
                Some((
                    Err(io::Error::other("FileServer: injected short body")),
                    self,
                ))
            }
        }
    }
}

/// A parsed `Range` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Not understood: ignored.
    Invalid,
    /// 416.
    Unsatisfiable,
    /// Inclusive byte offsets, clamped to the file.
    Satisfiable(u64, u64),
}

/// Parses `value` for a file of `total` bytes; only the first range of a
/// multi-range request counts.
fn parse_range(value: &str, total: u64) -> RangeRequest {
    let value = value.trim();
    let Some((unit, specs)) = value.split_once('=') else {
        return RangeRequest::Invalid;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Invalid;
    }
    let spec = specs.split(',').next().unwrap_or_default().trim();
    let Some((start, end)) = spec.split_once('-') else {
        return RangeRequest::Invalid;
    };
    let (start, end) = (start.trim(), end.trim());
    let parse = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            text.parse().ok()
        }
    };
    if start.is_empty() {
        let Some(suffix) = parse(end) else {
            return RangeRequest::Invalid;
        };
        if suffix == 0 || total == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Satisfiable(total.saturating_sub(suffix), total - 1);
    }
    let Some(first) = parse(start) else {
        return RangeRequest::Invalid;
    };
    let last = if end.is_empty() {
        None
    } else {
        match parse(end) {
            Some(last) if last >= first => Some(last),
            _ => return RangeRequest::Invalid,
        }
    };
    if first >= total {
        return RangeRequest::Unsatisfiable;
    }
    let last = last.map_or(total - 1, |last| last.min(total - 1));
    RangeRequest::Satisfiable(first, last)
}

/// Whether an `If-Match` value matches `etag` (strong comparison).
fn etag_list_matches(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate == etag)
}

/// Whether `name` is a plain relative path with no `.`/`..`/empty segments.
fn clean_relative_path(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', '\0'])
        && name
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && Path::new(name)
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Satisfiable(0, 99));
        assert_eq!(parse_range("bytes=5-9, 20-29", 100), Satisfiable(5, 9));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-5", 100), Invalid);
        assert_eq!(parse_range("items=0-5", 100), Invalid);
        assert_eq!(parse_range("bytes=a-5", 100), Invalid);
        assert_eq!(parse_range("bytes=+1-5", 100), Invalid);
        assert_eq!(parse_range("bytes=5", 100), Invalid);
    }

    #[test]
    fn wrong_ranges_differ() {
        for total in 1..40u64 {
            for first in 0..total {
                for last in first..total {
                    let wrong = wrong_range(first, last, total);
                    assert_ne!(wrong, (first, last, total), "{first}-{last}/{total}");
                    let (f, l, t) = wrong;
                    assert!(f <= l && l < t, "{f}-{l}/{t}");
                }
            }
        }
        assert_eq!(wrong_range(0, 9, 100), (10, 19, 100));
        assert_eq!(wrong_range(90, 99, 100), (80, 89, 100));
    }

    #[test]
    fn paths() {
        assert!(clean_relative_path("a.bin"));
        assert!(clean_relative_path("dir/a.bin"));
        assert!(!clean_relative_path(""));
        assert!(!clean_relative_path("../a"));
        assert!(!clean_relative_path("a/../../b"));
        assert!(!clean_relative_path("/etc/passwd"));
        assert!(!clean_relative_path("a//b"));
        assert!(!clean_relative_path("./a"));
        assert!(!clean_relative_path("a\\b"));
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%2e%2e").as_deref(), Some(".."));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
