//! The HTTP side: accept loop, TLS, gorilla/mux-like routing, the JWT
//! middleware, the handlers and ServeContent for disk data.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    HeaderName, HeaderValue, LOCATION,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::ranges::{self, ByteRange, Multipart, Preconditions, RangeError};
use super::store::{JSON, Reply, SNIFFED_TEXT, Store, go_json};
use super::{Route, Shared, jwt, lock};
use crate::http_server::FlushSignalIo;

type RespBody = UnsyncBoxBody<Bytes, io::Error>;

/// Disk data is read and sent in pieces of this size, one piece ahead.
const READ_PIECE: u64 = 512 * 1024;
/// The content type of disk images (`mime.TypeByExtension(".img")` on a
/// node whose `/etc/mime.types` knows `.img`).
const DISK_CONTENT_TYPE: &str = "application/octet-stream";
/// How long a dropped body waits for its prefix to reach the socket.
const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Login bodies larger than this are refused as invalid.
const MAX_LOGIN_BODY: usize = 1 << 20;

static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");

/// Accepts connections until `shutdown` turns true.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "OVM exporter test server: cannot listen");
            return;
        }
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.stats.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(connection(stream, acceptor.clone(), Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "OVM exporter test server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: TcpStream, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    match acceptor {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => serve_io(tls, shared).await,
            Err(error) => tracing::debug!(%error, "OVM exporter test server: TLS handshake failed"),
        },
        None => serve_io(stream, shared).await,
    }
}

async fn serve_io<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (flushed_tx, flushed_rx) = watch::channel(0u64);
    let io = FlushSignalIo {
        inner: io,
        flushed: flushed_tx,
    };
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let flushed = flushed_rx.clone();
        async move { handle(shared, flushed, request).await }
    });
    if let Err(error) = http1::Builder::new()
        .keep_alive(true)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%error, "OVM exporter test server: connection ended with an error");
    }
}

// ---------------------------------------------------------------------------
// Responses

fn full(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Vec<u8>,
) -> Response<RespBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn reply(reply: Reply) -> Response<RespBody> {
    full(reply.status, reply.content_type, reply.body)
}

/// Go's `http.Error`: text with `nosniff`.
fn go_error(status: StatusCode, text: &str) -> Response<RespBody> {
    let mut response = full(status, Some(SNIFFED_TEXT), format!("{text}\n").into_bytes());
    response.headers_mut().insert(
        X_CONTENT_TYPE_OPTIONS.clone(),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A JSON error written after `WriteHeader`, so its content type is
/// sniffed (the JWT middleware's 401 and the API's catch-all 404).
fn late_json_error(status: StatusCode, category: &str, details: &str) -> Response<RespBody> {
    let body = go_json(&super::store::ApiError {
        error: category,
        details,
    });
    full(status, Some(SNIFFED_TEXT), body)
}

fn api_not_found() -> Response<RespBody> {
    late_json_error(StatusCode::NOT_FOUND, "Not found", "Resource not found")
}

fn unauthorized() -> Response<RespBody> {
    late_json_error(
        StatusCode::UNAUTHORIZED,
        "Authentication failed",
        "Invalid authentication token",
    )
}

fn header_value(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

// ---------------------------------------------------------------------------
// Paths and routing

/// Percent-decodes a path (`+` stays); `None` for a bad escape.
fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// gorilla/mux's `cleanPath`: Go's `path.Clean`, keeping a trailing slash.
fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_owned();
    }
    let rooted = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in rooted.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut clean = format!("/{}", segments.join("/"));
    if rooted.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `url.EscapedPath` for a path it has to escape itself.
fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `url.Query().Get(key)`: the first value, or empty.
fn query_get(query: Option<&str>, key: &str) -> String {
    for pair in query.unwrap_or("").split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (unescape(k, true), unescape(v, true)) else {
            continue;
        };
        if k == key {
            return v;
        }
    }
    String::new()
}

/// `squashChunks`: absent or empty is true; otherwise Go's `ParseBool`,
/// where anything unparsable counts as false.
fn squash_param(value: &str) -> bool {
    matches!(value, "" | "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// A matched private route and its path variables.
struct Matched {
    route: Route,
    vm: String,
    snapshot: String,
    disk: String,
}

/// Where gorilla/mux sends a (clean) request path.
enum Target {
    /// Outside `/api/v1/`: the router's default 404.
    Outside,
    /// `POST /api/v1/auth/login[/]`.
    Login,
    /// Anything else under `/api/v1/auth/`: 404 JSON, no token needed.
    PublicNotFound,
    /// The private subrouter: token first, then the route (or 404 JSON).
    Private(Option<Matched>),
}

fn route(method: &Method, path: &str) -> Target {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Target::Outside;
    };
    if let Some(auth) = rest.strip_prefix("auth/") {
        return if method == Method::POST && (auth == "login" || auth == "login/") {
            Target::Login
        } else {
            Target::PublicNotFound
        };
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    let matched = |route: Route, vm: &str, snapshot: &str, disk: &str| {
        Target::Private(Some(Matched {
            route,
            vm: vm.to_owned(),
            snapshot: snapshot.to_owned(),
            disk: disk.to_owned(),
        }))
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Target::Private(None);
    }
    match (segments.as_slice(), method) {
        (["vms"], &Method::GET) => matched(Route::ListVms, "", "", ""),
        (["vms", vm], &Method::GET) => matched(Route::GetVm, vm, "", ""),
        (["vms", vm, "snapshots"], &Method::GET) => matched(Route::ListSnapshots, vm, "", ""),
        (["vms", vm, "snapshots"], &Method::POST) => matched(Route::CreateSnapshot, vm, "", ""),
        (["vms", vm, "snapshots"], &Method::DELETE) => matched(Route::PurgeSnapshots, vm, "", ""),
        (["vms", vm, "snapshots", snap], &Method::GET) => matched(Route::GetSnapshot, vm, snap, ""),
        (["vms", vm, "snapshots", snap], &Method::DELETE) => {
            matched(Route::DeleteSnapshot, vm, snap, "")
        }
        (["vms", vm, "snapshots", snap, "disks", disk], &Method::GET | &Method::HEAD) => {
            matched(Route::DiskData, vm, snap, disk)
        }
        _ => Target::Private(None),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The JWT middleware.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let parts: Vec<&str> = value.split(' ').collect();
    let [_, token] = parts[..] else {
        return false;
    };
    if jwt::verify(&shared.secret, token, now_unix()).is_err() {
        return false;
    }
    let revoked_upto = shared.faults.revoked_upto.load(Ordering::SeqCst);
    if revoked_upto == 0 {
        return true;
    }
    let serial = lock(&shared.tokens).get(token).copied().unwrap_or(0);
    serial > revoked_upto
}

// ---------------------------------------------------------------------------
// Handlers

async fn handle(
    shared: Arc<Shared>,
    flushed: watch::Receiver<u64>,
    request: Request<Incoming>,
) -> Result<Response<RespBody>, io::Error> {
    shared.stats.requests.fetch_add(1, Ordering::SeqCst);
    let Some(path) = unescape(request.uri().path(), false) else {
        shared.count_route("BadRequest");
        let mut response = full(
            StatusCode::BAD_REQUEST,
            Some(SNIFFED_TEXT),
            b"400 Bad Request".to_vec(),
        );
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    };
    let clean = clean_path(&path);
    let target = if clean == path {
        Some(route(request.method(), &path))
    } else {
        None
    };
    let route_of = match &target {
        Some(Target::Login) => Some(Route::Login),
        Some(Target::Private(Some(m))) => Some(m.route),
        _ => None,
    };
    if let Some(status) = shared.faults.take_status(route_of) {
        count_target(&shared, route_of, target.as_ref());
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let text = format!(
            "{} {} (fault injected by the OVM exporter test server)",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        return Ok(full(
            status,
            Some(SNIFFED_TEXT),
            format!("{text}\n").into_bytes(),
        ));
    }
    count_target(&shared, route_of, target.as_ref());
    let Some(target) = target else {
        let mut location = escape_path(&clean);
        if let Some(query) = request.uri().query() {
            location.push('?');
            location.push_str(query);
        }
        let mut response = full(StatusCode::MOVED_PERMANENTLY, None, Vec::new());
        response
            .headers_mut()
            .insert(LOCATION, header_value(location));
        return Ok(response);
    };
    match target {
        Target::Outside => Ok(go_error(StatusCode::NOT_FOUND, "404 page not found")),
        Target::PublicNotFound => Ok(api_not_found()),
        Target::Login => Ok(login(&shared, request).await),
        Target::Private(matched) => {
            if !authorized(&shared, request.headers()) {
                return Ok(unauthorized());
            }
            match matched {
                None => Ok(api_not_found()),
                Some(m) => private(shared, flushed, request, m).await,
            }
        }
    }
}

fn count_target(shared: &Shared, route: Option<Route>, target: Option<&Target>) {
    let key = match (route, target) {
        (Some(route), _) => route.name(),
        (None, None) => "Redirect",
        (None, Some(_)) => "NotFound",
    };
    shared.count_route(key);
}

/// Runs `f` on the store in a blocking thread.
async fn with_store<T, F>(shared: &Arc<Shared>, f: F) -> io::Result<T>
where
    F: FnOnce(&mut Store) -> T + Send + 'static,
    T: Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || f(&mut lock(&shared.store)))
        .await
        .map_err(io::Error::other)
}

async fn private(
    shared: Arc<Shared>,
    flushed: watch::Receiver<u64>,
    request: Request<Incoming>,
    m: Matched,
) -> Result<Response<RespBody>, io::Error> {
    let Matched {
        route,
        vm,
        snapshot,
        disk,
    } = m;
    let response = match route {
        Route::ListVms => reply(with_store(&shared, |s| s.list_vms()).await?),
        Route::GetVm => reply(with_store(&shared, move |s| s.get_vm(&vm)).await?),
        Route::ListSnapshots => reply(with_store(&shared, move |s| s.list_snapshots(&vm)).await?),
        Route::CreateSnapshot => {
            let (answer, created) = with_store(&shared, move |s| s.create_snapshot(&vm)).await?;
            if created.is_some() && shared.faults.take_lose_create() {
                return Err(io::Error::other(
                    "fault injected: snapshot created, response lost",
                ));
            }
            reply(answer)
        }
        Route::PurgeSnapshots => reply(with_store(&shared, move |s| s.purge(&vm)).await?),
        Route::GetSnapshot => {
            let query = request.uri().query();
            let squash = squash_param(&query_get(query, "squashChunks"));
            let compare_to = query_get(query, "compareTo");
            reply(
                with_store(&shared, move |s| {
                    s.get_snapshot(&vm, &snapshot, squash, &compare_to)
                })
                .await?,
            )
        }
        Route::DeleteSnapshot => {
            reply(with_store(&shared, move |s| s.delete_snapshot(&vm, &snapshot)).await?)
        }
        Route::DiskData => {
            let opened = with_store(&shared, move |s| {
                let path = s.disk_data(&vm, &snapshot, &disk)?;
                let file = File::open(&path)
                    .map_err(|_| Reply::empty(StatusCode::INTERNAL_SERVER_ERROR))?;
                let size = file
                    .metadata()
                    .map_err(|_| Reply::empty(StatusCode::INTERNAL_SERVER_ERROR))?
                    .len();
                Ok::<_, Reply>((file, size))
            })
            .await?;
            match opened {
                Err(answer) => reply(answer),
                Ok((file, size)) => {
                    shared.stats.data_requests.fetch_add(1, Ordering::SeqCst);
                    serve_content(
                        &shared,
                        flushed,
                        request.method(),
                        request.headers(),
                        file,
                        size,
                    )
                }
            }
        }
        Route::Login | Route::Any => api_not_found(),
    };
    Ok(response)
}

/// `POST /api/v1/auth/login`.
async fn login(shared: &Shared, request: Request<Incoming>) -> Response<RespBody> {
    shared.stats.logins.fetch_add(1, Ordering::SeqCst);
    let bad_request = || {
        reply(Reply::error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "invalid request",
        ))
    };
    let body = match Limited::new(request.into_body(), MAX_LOGIN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return bad_request(),
    };
    let Some((username, password)) = decode_login(&body) else {
        return bad_request();
    };
    if username != shared.username || password != shared.password {
        return reply(Reply::error(
            StatusCode::UNAUTHORIZED,
            "Not Authorized",
            "failed to login: OVM Manager refused the credentials (401 Unauthorized)",
        ));
    }
    let exp = now_unix() + shared.ttl.as_secs() as i64;
    let token = jwt::issue(&shared.secret, &username, exp);
    let serial = shared.faults.issued.fetch_add(1, Ordering::SeqCst) + 1;
    lock(&shared.tokens).insert(token.clone(), serial);
    let body = go_json(&serde_json::json!({ "token": token }));
    full(StatusCode::OK, Some(JSON), body)
}

/// Go's `json.Decoder.Decode` of the first JSON value into
/// `LoginRequest{username, password}`: keys match case-insensitively,
/// `null` leaves a field empty, other types are an error.
fn decode_login(body: &[u8]) -> Option<(String, String)> {
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()?
        .ok()?;
    let (mut username, mut password) = (String::new(), String::new());
    match value {
        Value::Null => {}
        Value::Object(object) => {
            for (key, value) in object {
                let field = match key.to_ascii_lowercase().as_str() {
                    "username" => &mut username,
                    "password" => &mut password,
                    _ => continue,
                };
                match value {
                    Value::Null => {}
                    Value::String(s) => *field = s,
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    Some((username, password))
}

// ---------------------------------------------------------------------------
// ServeContent

/// Go's `http.ServeContent` for a file without `ETag` or modification
/// time, plus the data faults.
fn serve_content(
    shared: &Arc<Shared>,
    flushed: watch::Receiver<u64>,
    method: &Method,
    headers: &HeaderMap,
    file: File,
    size: u64,
) -> Response<RespBody> {
    let range_header = match ranges::check_preconditions(headers) {
        Preconditions::Failed => return full(StatusCode::PRECONDITION_FAILED, None, Vec::new()),
        Preconditions::NotModified => {
            let mut response =
                Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        Preconditions::Serve(range) => range,
    };
    let mut ranges = match ranges::parse_range(&range_header, size) {
        Ok(ranges) => ranges,
        Err(error) => {
            let mut response = go_error(StatusCode::RANGE_NOT_SATISFIABLE, error.message());
            if error == RangeError::NoOverlap {
                response
                    .headers_mut()
                    .insert(CONTENT_RANGE, header_value(format!("bytes */{size}")));
            }
            return response;
        }
    };
    if ranges.iter().map(|r| r.length).sum::<u64>() > size {
        ranges.clear();
    }
    if !ranges.is_empty() && method == Method::GET && shared.faults.take_ok_instead_of_partial() {
        ranges.clear();
    }
    let mut response_headers = HeaderMap::new();
    let (status, pieces, body_len) = match ranges.as_slice() {
        [] => (
            StatusCode::OK,
            vec![Piece::File(ByteRange {
                start: 0,
                length: size,
            })],
            size,
        ),
        [one] => {
            response_headers.insert(CONTENT_RANGE, header_value(one.content_range(size)));
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Piece::File(*one)],
                one.length,
            )
        }
        many => {
            let boundary = hex::encode(rand::random::<[u8; 30]>());
            let multipart = Multipart::new(many, &boundary, DISK_CONTENT_TYPE, size);
            let len = multipart.len(many);
            let mut pieces = Vec::with_capacity(many.len() * 2 + 1);
            for (head, range) in multipart.heads.into_iter().zip(many) {
                pieces.push(Piece::Bytes(Bytes::from(head)));
                pieces.push(Piece::File(*range));
            }
            pieces.push(Piece::Bytes(Bytes::from(multipart.tail)));
            response_headers.insert(
                CONTENT_TYPE,
                header_value(format!("multipart/byteranges; boundary={boundary}")),
            );
            (StatusCode::PARTIAL_CONTENT, pieces, len)
        }
    };
    response_headers
        .entry(CONTENT_TYPE)
        .or_insert(HeaderValue::from_static(DISK_CONTENT_TYPE));
    response_headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    let body = if method == Method::HEAD || body_len == 0 {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        let limit = shared.faults.take_drop_data(body_len);
        DataBody::body(Arc::clone(shared), flushed, Arc::new(file), pieces, limit)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// A part of a data body.
enum Piece {
    Bytes(Bytes),
    File(ByteRange),
}

/// A piece being produced: ready bytes or a positioned read in flight.
enum Pending {
    Ready(Bytes),
    Reading(JoinHandle<io::Result<Bytes>>),
}

/// Streams file ranges and framing, reading one piece ahead, optionally
/// dropping the connection after `limit` bytes.
struct DataBody {
    shared: Arc<Shared>,
    file: Arc<File>,
    queue: VecDeque<Piece>,
    ahead: Option<Pending>,
    limit: Option<u64>,
    sent: u64,
    flushed: watch::Receiver<u64>,
    flushed_at: Option<u64>,
    done: bool,
}

impl DataBody {
    fn body(
        shared: Arc<Shared>,
        flushed: watch::Receiver<u64>,
        file: Arc<File>,
        pieces: Vec<Piece>,
        limit: Option<u64>,
    ) -> RespBody {
        let mut queue = VecDeque::new();
        for piece in pieces {
            match piece {
                Piece::File(range) => {
                    let mut offset = range.start;
                    let end = range.start + range.length;
                    while offset < end {
                        let length = (end - offset).min(READ_PIECE);
                        queue.push_back(Piece::File(ByteRange {
                            start: offset,
                            length,
                        }));
                        offset += length;
                    }
                }
                bytes => queue.push_back(bytes),
            }
        }
        let state = DataBody {
            shared,
            file,
            queue,
            ahead: None,
            limit,
            sent: 0,
            flushed,
            flushed_at: None,
            done: false,
        };
        StreamBody::new(futures::stream::unfold(state, DataBody::next)).boxed_unsync()
    }

    fn start(&self, piece: Piece) -> Pending {
        match piece {
            Piece::Bytes(bytes) => Pending::Ready(bytes),
            Piece::File(range) => {
                let file = Arc::clone(&self.file);
                Pending::Reading(tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; range.length as usize];
                    file.read_exact_at(&mut buf, range.start)?;
                    Ok(Bytes::from(buf))
                }))
            }
        }
    }

    async fn next(mut self) -> Option<(io::Result<Frame<Bytes>>, DataBody)> {
        if self.done {
            return None;
        }
        if self.flushed_at.is_none() {
            // The head is in hyper's write buffer when the body is first
            // polled.
            self.flushed_at = Some(*self.flushed.borrow());
        }
        if self.limit.is_some_and(|limit| self.sent >= limit) {
            // Let what was sent reach the socket, then break the body:
            // hyper closes the connection.
            let seen = self.flushed_at.unwrap_or_default();
            let _ = tokio::time::timeout(
                DROP_FLUSH_TIMEOUT,
                self.flushed.wait_for(|count| *count > seen),
            )
            .await;
            self.done = true;
            return Some((
                Err(io::Error::other(
                    "fault injected: connection dropped mid-body",
                )),
                self,
            ));
        }
        let current = match self.ahead.take() {
            Some(pending) => pending,
            None => {
                let piece = self.queue.pop_front()?;
                self.start(piece)
            }
        };
        if let Some(piece) = self.queue.pop_front() {
            self.ahead = Some(self.start(piece));
        }
        let mut bytes = match current {
            Pending::Ready(bytes) => bytes,
            Pending::Reading(handle) => match handle.await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
                Err(error) => {
                    self.done = true;
                    return Some((Err(io::Error::other(error)), self));
                }
            },
        };
        if let Some(limit) = self.limit {
            let room = limit - self.sent;
            if bytes.len() as u64 > room {
                bytes.truncate(room as usize);
            }
        }
        self.sent += bytes.len() as u64;
        self.shared
            .stats
            .data_bytes
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        self.flushed_at = Some(*self.flushed.borrow());
        Some((Ok(Frame::data(bytes)), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_like_gorilla() {
        assert_eq!(clean_path("/api/v1/vms"), "/api/v1/vms");
        assert_eq!(clean_path("/api/v1/vms/"), "/api/v1/vms/");
        assert_eq!(clean_path("//api/v1/vms"), "/api/v1/vms");
        assert_eq!(clean_path("/api/v1//vms/"), "/api/v1/vms/");
        assert_eq!(clean_path("/api/./v1/x/../vms"), "/api/v1/vms");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/"), "/");
    }

    #[test]
    fn routing_table() {
        let m = |method: Method, path: &str| match route(&method, path) {
            Target::Outside => "outside".to_owned(),
            Target::Login => "login".to_owned(),
            Target::PublicNotFound => "public404".to_owned(),
            Target::Private(None) => "private404".to_owned(),
            Target::Private(Some(m)) => {
                format!("{}:{}:{}:{}", m.route.name(), m.vm, m.snapshot, m.disk)
            }
        };
        assert_eq!(m(Method::POST, "/api/v1/auth/login"), "login");
        assert_eq!(m(Method::POST, "/api/v1/auth/login/"), "login");
        assert_eq!(m(Method::GET, "/api/v1/auth/login"), "public404");
        assert_eq!(m(Method::GET, "/api/v1"), "outside");
        assert_eq!(m(Method::GET, "/vms"), "outside");
        assert_eq!(m(Method::GET, "/api/v1/"), "private404");
        assert_eq!(m(Method::GET, "/api/v1/vms"), "ListVms:::");
        assert_eq!(m(Method::GET, "/api/v1/vms/"), "ListVms:::");
        assert_eq!(m(Method::POST, "/api/v1/vms"), "private404");
        assert_eq!(m(Method::HEAD, "/api/v1/vms/a"), "private404");
        assert_eq!(
            m(Method::DELETE, "/api/v1/vms/a/snapshots/"),
            "PurgeSnapshots:a::"
        );
        assert_eq!(m(Method::PUT, "/api/v1/vms/a/snapshots"), "private404");
        assert_eq!(
            m(Method::DELETE, "/api/v1/vms/a/snapshots/s"),
            "DeleteSnapshot:a:s:"
        );
        assert_eq!(
            m(Method::HEAD, "/api/v1/vms/a/snapshots/s/disks/d.img/"),
            "DiskData:a:s:d.img"
        );
        assert_eq!(
            m(Method::GET, "/api/v1/vms/a/snapshots/s/disks"),
            "private404"
        );
    }

    #[test]
    fn query_and_parse_bool() {
        assert_eq!(
            query_get(Some("squashChunks=False&compareTo=x%2Dy"), "compareTo"),
            "x-y"
        );
        assert_eq!(query_get(Some("a=1&a=2"), "a"), "1");
        assert_eq!(query_get(Some("a=%zz&a=2"), "a"), "2");
        assert_eq!(query_get(None, "a"), "");
        assert!(squash_param(""));
        assert!(squash_param("True"));
        assert!(squash_param("1"));
        assert!(!squash_param("False"));
        assert!(!squash_param("yes"));
        assert!(!squash_param("tRUE"));
    }

    #[test]
    fn login_body_decoding() {
        let d = |s: &str| decode_login(s.as_bytes());
        assert_eq!(
            d(r#"{"username":"a","password":"b"}"#),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(
            d(r#"{"USERNAME":"a","Password":"b","x":1} tail"#),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(d("null"), Some((String::new(), String::new())));
        assert_eq!(d(""), None);
        assert_eq!(d("[]"), None);
        assert_eq!(d(r#"{"username":1}"#), None);
        assert_eq!(d(r#"{"username":"a""#), None);
    }
}
