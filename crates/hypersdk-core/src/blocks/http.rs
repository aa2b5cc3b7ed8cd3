//! [`HttpSource`]: a [`BlockSource`] over an HTTP(S) URL, read with single
//! `Range` requests.
//!
//! The readers of the tools we replace trusted whatever came back: a `200`
//! with the whole file was taken as the range asked for, a body cut short was
//! written as if complete, and every chunk opened a new connection. Here:
//!
//! - the size comes from a `HEAD`, read from the `Content-Length` header
//!   itself;
//! - every read is a `GET` with one `Range: bytes=a-b` that must come back
//!   `206 Partial Content` with exactly `Content-Range: bytes a-b/size` and
//!   exactly that many bytes: a `200`, another range or another size is an
//!   [`Error::InvalidData`] naming the URL, never data;
//! - a body cut short (connection reset, server closed, no byte within the
//!   idle timeout) is resumed from the last byte received, with `If-Match`
//!   on the `ETag` from the `HEAD` so a changed file is not stitched
//!   together; failed requests are retried under the SDK's one
//!   [`Backoff`] policy (only what [`Error::is_retryable`] allows);
//! - all requests share one pooled [`reqwest::Client`] (keep-alive);
//! - an [`HttpAuth`] hook adds credentials (cookies, bearer tokens) to every
//!   request and is asked once to refresh them after a `401`.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::blocks::{BlockSource, HttpSource};
//! use hypersdk_core::model::Extent;
//!
//! let source = HttpSource::builder("https://esxi.example/folder/web01-flat.vmdk?dsName=ds1")
//!     .open()
//!     .await?;
//! let first_mib = source.read_range(Extent::new(0, 1 << 20)).await?;
//! assert_eq!(first_mib.len(), 1 << 20);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::{BlockSource, check_range};
use crate::error::redact_url;
use crate::model::{Extent, ExtentList};
use crate::retry::{Backoff, retry};
use crate::{Error, Result};

/// Default time to wait for the next bytes of a body before the read is
/// treated as a dropped connection and resumed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for the requests of an [`HttpSource`]: a session cookie, a
/// bearer token, a signed header.
///
/// Providers implement it over their session: [`HttpAuth::headers`] is
/// called for every request, and [`HttpAuth::refresh`] once when the server
/// answers `401 Unauthorized`, after which the request is sent once more.
#[async_trait]
pub trait HttpAuth: Send + Sync + fmt::Debug {
    /// The headers to add to the next request.
    async fn headers(&self) -> Result<HeaderMap>;

    /// Renews the credentials after a `401`. Returns `false` when they cannot
    /// be renewed, in which case the `401` is returned as
    /// [`Error::Unauthenticated`].
    async fn refresh(&self) -> Result<bool>;
}

/// Fixed headers (for example `Authorization: Bearer …` or a `Cookie`) that
/// cannot be refreshed. Their values are not shown by `Debug`.
#[derive(Clone)]
pub struct StaticHeaders(HeaderMap);

impl StaticHeaders {
    /// Headers sent with every request.
    pub fn new(headers: HeaderMap) -> Self {
        StaticHeaders(headers)
    }

    /// `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the token is not a valid header value.
    pub fn bearer(token: &str) -> Result<Self> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::invalid_input("the bearer token is not a valid header value"))?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        Ok(StaticHeaders(headers))
    }
}

impl fmt::Debug for StaticHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[async_trait]
impl HttpAuth for StaticHeaders {
    async fn headers(&self) -> Result<HeaderMap> {
        Ok(self.0.clone())
    }

    async fn refresh(&self) -> Result<bool> {
        Ok(false)
    }
}

/// Counters of an [`HttpSource`] (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpStats {
    /// Requests sent (`HEAD` and `GET`, retries included).
    pub requests: u64,
    /// Body bytes received and delivered.
    pub bytes_received: u64,
    /// Times a body was resumed after it was cut.
    pub resumes: u64,
    /// Times the [`HttpAuth`] was asked to refresh after a `401`.
    pub auth_refreshes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_received: AtomicU64,
    resumes: AtomicU64,
    auth_refreshes: AtomicU64,
}

/// Configures and opens an [`HttpSource`]; made by [`HttpSource::builder`].
#[derive(Debug)]
#[must_use]
pub struct HttpSourceBuilder {
    url: String,
    client: Option<reqwest::Client>,
    auth: Option<Arc<dyn HttpAuth>>,
    backoff: Backoff,
    idle_timeout: Duration,
    len: Option<u64>,
}

impl HttpSourceBuilder {
    /// Uses `client` for every request, e.g. a provider's client with its
    /// cookie store and TLS settings. The default is
    /// [`HttpSource::default_client`]. Clones of a client share its
    /// connection pool.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Adds credentials to every request.
    pub fn auth(mut self, auth: Arc<dyn HttpAuth>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The retry policy of each request and each resume. Default:
    /// [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long to wait for the next bytes of a body before resuming it.
    /// Default [`DEFAULT_IDLE_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The size when it is known already (for example from an NFC lease):
    /// no `HEAD` is sent, and resumes are not pinned to an `ETag`.
    pub fn len(mut self, len: u64) -> Self {
        self.len = Some(len);
        self
    }

    /// Checks the URL and, unless the size was given, sends a `HEAD` for
    /// the size and the `ETag`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a URL that is not `http`/`https` or an
    /// invalid backoff; [`Error::InvalidData`] when the `HEAD` has no
    /// usable `Content-Length`; the request's own error otherwise (after
    /// retries).
    pub async fn open(self) -> Result<HttpSource> {
        self.backoff.validate()?;
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::invalid_input(format!("'{}': {e}", redact_url(&self.url))))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_input(format!(
                "'{}' is not an http or https URL",
                redact_url(url.as_str())
            )));
        }
        let client = match self.client {
            Some(c) => c,
            None => HttpSource::default_client()?,
        };
        let mut inner = Inner {
            display: redact_url(url.as_str()),
            url,
            client,
            auth: self.auth,
            backoff: self.backoff,
            idle_timeout: self.idle_timeout,
            len: 0,
            etag: None,
            counters: Counters::default(),
        };
        match self.len {
            Some(len) => inner.len = len,
            None => {
                let (len, etag) = inner.head().await?;
                inner.len = len;
                inner.etag = etag;
            }
        }
        Ok(HttpSource {
            inner: Arc::new(inner),
        })
    }
}

/// A [`BlockSource`] reading an HTTP(S) URL with `Range` requests.
///
/// Cheap to clone: clones share the client, the counters and the size.
/// What is checked:
///
/// - the size comes from a `HEAD`, read from the `Content-Length` header;
/// - every read is a `GET` with one `Range: bytes=a-b` that must come back
///   `206 Partial Content` with exactly `Content-Range: bytes a-b/size` and
///   exactly that many bytes: a `200`, another range or another size is an
///   [`Error::InvalidData`] naming the URL, never data;
/// - a body cut short is resumed from the last byte received, with
///   `If-Match` on the `ETag` from the `HEAD`, under the [`Backoff`] policy;
/// - an [`HttpAuth`] hook adds credentials to every request and is asked
///   once to refresh them after a `401`.
#[derive(Debug, Clone)]
pub struct HttpSource {
    inner: Arc<Inner>,
}

impl HttpSource {
    /// Starts configuring a source for `url`. Credentials in the URL are
    /// never shown in messages.
    pub fn builder(url: impl Into<String>) -> HttpSourceBuilder {
        HttpSourceBuilder {
            url: url.into(),
            client: None,
            auth: None,
            backoff: Backoff::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            len: None,
        }
    }

    /// The client used when none is given: rustls with the platform's
    /// verifier, a connect timeout of [`DEFAULT_CONNECT_TIMEOUT`], and no
    /// total timeout (multi-gigabyte bodies are bounded by the idle timeout
    /// instead). Each call builds a new client with its own pool: to share
    /// connections between sources, build one and pass clones of it to
    /// [`HttpSourceBuilder::client`]. (There is deliberately no
    /// process-wide client: a reqwest pool belongs to the tokio runtime it
    /// was first used on.)
    ///
    /// # Errors
    ///
    /// [`Error::Other`] if the TLS backend cannot be initialised.
    pub fn default_client() -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Other {
                message: "cannot build the HTTP client".into(),
                source: Some(Box::new(e)),
            })
    }

    /// The URL, with credentials and signatures removed.
    pub fn url(&self) -> &str {
        &self.inner.display
    }

    /// The `ETag` the `HEAD` returned, which pins resumed reads.
    pub fn etag(&self) -> Option<&str> {
        self.inner.etag.as_deref()
    }

    /// What this source and its clones have done so far.
    pub fn stats(&self) -> HttpStats {
        let c = &self.inner.counters;
        HttpStats {
            requests: c.requests.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
            auth_refreshes: c.auth_refreshes.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl BlockSource for HttpSource {
    fn describe(&self) -> String {
        self.inner.display.clone()
    }

    fn len(&self) -> u64 {
        self.inner.len
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        let capacity = usize::try_from(range.length).map_err(|_| {
            Error::invalid_input(format!("range {range} is too large to read into memory"))
        })?;
        let mut out = BytesMut::with_capacity(capacity);
        let mut body = self.read_stream(range).await?;
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        check_range(self, range)?;
        let state = RangeRead {
            inner: Arc::clone(&self.inner),
            pos: range.offset,
            end: range.end(),
            body: None,
            opened_at: range.offset,
            failures: 0,
            started: tokio::time::Instant::now(),
            done: false,
        };
        Ok(stream::unfold(state, |mut s| async move {
            match s.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), s)),
                Ok(None) => None,
                Err(e) => {
                    s.done = true;
                    Some((Err(e), s))
                }
            }
        })
        .boxed())
    }

    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        // HTTP says nothing about holes: every byte is data.
        Ok(None)
    }
}

/// Maps a reqwest error to the SDK's error for a request to `target`.
///
/// Connection failures, timeouts and cut bodies become [`Error::Network`] or
/// [`Error::Timeout`] (retryable); builder and redirect errors are
/// [`Error::InvalidInput`]; a status error goes through
/// [`Error::from_http_status`]. Classified by reqwest's own predicates,
/// never by message text. Credentials in URLs are removed.
pub fn reqwest_error(method: &Method, target: &str, e: reqwest::Error) -> Error {
    let target = redact_url(target);
    let e = e.without_url();
    if e.is_builder() || e.is_redirect() {
        return Error::invalid_input(format!("{method} {target}: {e}"));
    }
    if let Some(status) = e.status() {
        return Error::from_http_status(method.as_str(), &target, status.as_u16(), None, "");
    }
    if e.is_timeout() {
        return Error::Timeout {
            operation: format!("{method} {target}"),
            after: Duration::ZERO,
        };
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the response body was cut"
    } else {
        "request failed"
    };
    Error::network(
        &target,
        format!("{method}: {what}"),
        Some(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    )
}

struct Inner {
    url: reqwest::Url,
    display: String,
    client: reqwest::Client,
    auth: Option<Arc<dyn HttpAuth>>,
    backoff: Backoff,
    idle_timeout: Duration,
    len: u64,
    etag: Option<String>,
    counters: Counters,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &self.display)
            .field("len", &self.len)
            .field("etag", &self.etag)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Sends one request (with credentials, refreshing them once on a 401)
    /// and returns a response whose status is a success or a `416`.
    async fn send(&self, method: Method, headers: HeaderMap) -> Result<reqwest::Response> {
        let mut refreshed = false;
        loop {
            let mut request = self
                .client
                .request(method.clone(), self.url.clone())
                .headers(headers.clone());
            if let Some(auth) = &self.auth {
                request = request.headers(auth.headers().await?);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            // A server that accepts the request and never answers is
            // bounded by the idle timeout too.
            let response = tokio::time::timeout(self.idle_timeout, request.send())
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("waiting for the response to {method} {}", self.display),
                    after: self.idle_timeout,
                })?
                .map_err(|e| reqwest_error(&method, self.url.as_str(), e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED
                && !refreshed
                && let Some(auth) = &self.auth
            {
                self.counters.auth_refreshes.fetch_add(1, Ordering::Relaxed);
                if auth.refresh().await? {
                    refreshed = true;
                    continue;
                }
            }
            if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            let body = if method == Method::HEAD {
                String::new()
            } else {
                // A short excerpt of the error page; a body that fails to
                // arrive does not hide the status.
                tokio::time::timeout(self.idle_timeout, error_excerpt(response))
                    .await
                    .unwrap_or_default()
            };
            return Err(Error::from_http_status(
                method.as_str(),
                &self.display,
                status.as_u16(),
                retry_after,
                &body,
            ));
        }
    }

    /// `HEAD`: the size from the `Content-Length` header and the `ETag`.
    async fn head(&self) -> Result<(u64, Option<String>)> {
        let operation = format!("HEAD {}", self.display);
        retry(&self.backoff, &operation, |_| async {
            let response = self.send(Method::HEAD, HeaderMap::new()).await?;
            if response.status() != StatusCode::OK {
                return Err(Error::invalid_data(
                    format!("HEAD {}", self.display),
                    format!("expected 200 OK, got {}", response.status()),
                ));
            }
            // reqwest's content_length() reports the (empty) body of a
            // HEAD, so the header is read directly.
            let headers = response.headers();
            let len = headers
                .get(header::CONTENT_LENGTH)
                .ok_or_else(|| {
                    Error::invalid_data(
                        format!("HEAD {}", self.display),
                        "no Content-Length: the size of the file is unknown",
                    )
                })?
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::invalid_data(
                        format!("HEAD {}", self.display),
                        "Content-Length is not a number",
                    )
                })?;
            let etag = headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.starts_with("W/"))
                .map(str::to_owned);
            Ok((len, etag))
        })
        .await
    }

    /// `GET` of `[pos, end)`, checked to be exactly that range.
    async fn get_range(
        &self,
        pos: u64,
        end: u64,
    ) -> Result<BoxStream<'static, reqwest::Result<Bytes>>> {
        let object = format!("GET {}", self.display);
        let mut headers = HeaderMap::new();
        let range = format!("bytes={}-{}", pos, end - 1);
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&range).map_err(|_| Error::other("invalid Range header"))?,
        );
        if let Some(etag) = &self.etag
            && let Ok(v) = HeaderValue::from_str(etag)
        {
            headers.insert(header::IF_MATCH, v);
        }
        let response = match self.send(Method::GET, headers).await {
            Err(Error::HttpStatus { status: 412, .. }) => {
                return Err(Error::Conflict {
                    object: self.display.clone(),
                    message: format!(
                        "the file changed since it was opened: its ETag is no longer {}",
                        self.etag.as_deref().unwrap_or("the same")
                    ),
                });
            }
            other => other?,
        };
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(Error::invalid_data(
                object,
                format!("the server refused {range} (416): the file is shorter than {end} bytes"),
            ));
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(Error::invalid_data(
                object,
                format!(
                    "asked for {range} and got {status} instead of 206 Partial Content: \
                     the server ignored the Range header"
                ),
            ));
        }
        let headers = response.headers();
        let content_range = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let expected = format!("bytes {}-{}/{}", pos, end - 1, self.len);
        if !content_range_matches(content_range, pos, end - 1, self.len) {
            return Err(Error::invalid_data(
                object,
                format!(
                    "asked for {range}, the server sent Content-Range '{content_range}' instead of '{expected}'"
                ),
            ));
        }
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            && len != end - pos
        {
            return Err(Error::invalid_data(
                object,
                format!(
                    "asked for {} bytes ({range}), the server announced {len}",
                    end - pos
                ),
            ));
        }
        Ok(response.bytes_stream().boxed())
    }
}

/// The state of one streamed range read.
struct RangeRead {
    inner: Arc<Inner>,
    /// The next byte to deliver.
    pos: u64,
    /// One past the last byte.
    end: u64,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Where the current body started.
    opened_at: u64,
    /// Failures since the last body that made real progress.
    failures: u32,
    /// When the current run of failures began (for the deadline).
    started: tokio::time::Instant,
    done: bool,
}

/// A body that delivered at least this much before failing counts as
/// progress: the failure count and the deadline clock start over. Smaller
/// progress does not, so a server that sends a few bytes and fails forever
/// still exhausts the retries.
const PROGRESS_RESET: u64 = 64 << 10;

impl RangeRead {
    /// The next chunk, resuming and retrying as the policy allows.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if self.pos >= self.end {
                self.done = true;
                return Ok(None);
            }
            let error = match self.try_next().await {
                Ok(chunk) => return Ok(Some(chunk)),
                Err(e) => e,
            };
            if self.body.is_some() && self.pos - self.opened_at >= PROGRESS_RESET {
                self.failures = 0;
                self.started = tokio::time::Instant::now();
            }
            self.body = None;
            self.failures += 1;
            let inner = &self.inner;
            match inner
                .backoff
                .next_delay(self.failures, self.started.elapsed(), &error)
            {
                Some(delay) => {
                    tracing::warn!(
                        target: "hypersdk_core::retry",
                        url = %inner.display,
                        resume_at = self.pos,
                        attempt = self.failures,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %error,
                        "resuming range read"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(exhausted(
                        &inner.display,
                        "GET",
                        self.failures,
                        self.started,
                        error,
                    ));
                }
            }
        }
    }

    /// Reads the next chunk from the current body, opening one if needed.
    async fn try_next(&mut self) -> Result<Bytes> {
        let inner = Arc::clone(&self.inner);
        if self.body.is_none() {
            if self.failures > 0 {
                inner.counters.resumes.fetch_add(1, Ordering::Relaxed);
            }
            self.body = Some(inner.get_range(self.pos, self.end).await?);
            self.opened_at = self.pos;
        }
        let Some(body) = self.body.as_mut() else {
            return Err(Error::other("no response body"));
        };
        // Empty chunks are skipped and do not restart the idle clock.
        let idle_deadline = tokio::time::Instant::now() + inner.idle_timeout;
        let next = loop {
            let next = tokio::time::timeout_at(idle_deadline, body.next())
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("reading GET {} at byte {}", inner.display, self.pos),
                    after: inner.idle_timeout,
                })?;
            match next {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                other => break other,
            }
        };
        match next {
            Some(Ok(chunk)) => {
                let room = self.end - self.pos;
                if chunk.len() as u64 > room {
                    // hyper enforces Content-Length, so this is a server
                    // without one sending past the range.
                    return Err(Error::invalid_data(
                        format!("GET {}", inner.display),
                        format!(
                            "the server sent more than the {} bytes asked for",
                            self.end - self.pos
                        ),
                    ));
                }
                self.pos += chunk.len() as u64;
                inner
                    .counters
                    .bytes_received
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok(chunk)
            }
            Some(Err(e)) => Err(reqwest_error(&Method::GET, inner.url.as_str(), e)),
            None => Err(Error::network(
                &inner.display,
                format!(
                    "GET: the body ended at byte {} of the range ending at {}",
                    self.pos, self.end
                ),
                None,
            )),
        }
    }
}

/// The final error of a failed request: the error itself when it was not
/// retried, else [`Error::RetriesExhausted`].
fn exhausted(
    display: &str,
    method: &str,
    attempts: u32,
    started: tokio::time::Instant,
    error: Error,
) -> Error {
    if attempts <= 1 || !error.is_retryable() {
        return error;
    }
    Error::RetriesExhausted {
        operation: format!("{method} {display}"),
        attempts,
        elapsed: started.elapsed(),
        last: Box::new(error),
    }
}

/// The first few KiB of an error response's body, as text: enough for a
/// message, without buffering a huge error page.
async fn error_excerpt(mut response: reqwest::Response) -> String {
    const LIMIT: usize = 4096;
    let mut excerpt = Vec::new();
    while excerpt.len() < LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                excerpt.extend_from_slice(&chunk[..chunk.len().min(LIMIT - excerpt.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}

/// Whether `value` is exactly `bytes first-last/total`.
fn content_range_matches(value: &str, first: u64, last: u64, total: u64) -> bool {
    let Some(rest) = value.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((span, size)) = rest.split_once('/') else {
        return false;
    };
    let Some((a, b)) = span.split_once('-') else {
        return false;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    number(a) == Some(first)
        && number(b) == Some(last)
        && (size.trim() == "*" || number(size) == Some(total))
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn content_range_is_checked_exactly() {
        assert!(content_range_matches("bytes 0-99/1000", 0, 99, 1000));
        assert!(content_range_matches(" bytes 10-19/* ", 10, 19, 1000));
        assert!(!content_range_matches("bytes 1-100/1000", 0, 99, 1000));
        assert!(!content_range_matches("bytes 0-99/999", 0, 99, 1000));
        assert!(!content_range_matches("bytes */1000", 0, 99, 1000));
        assert!(!content_range_matches("", 0, 99, 1000));
        assert!(!content_range_matches("items 0-99/1000", 0, 99, 1000));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn static_headers_hide_values() {
        let auth = StaticHeaders::bearer("s3cret").unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert_eq!(
            StaticHeaders::bearer("bad\ntoken").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
