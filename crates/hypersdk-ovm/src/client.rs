//! [`OvmClient`]: the REST client of the Coriolis OVM exporter.
//!
//! One pooled HTTP/1.1 client (keep-alive) per [`OvmClient`]; clones share
//! it, the token and the settings.
//!
//! - **Endpoint.** `https://host:port`, optionally with a path prefix (a
//!   reverse proxy); every route is `<prefix>/api/v1/...`, built segment by
//!   segment, so a trailing slash in the endpoint never yields `//` (the
//!   exporter answers unclean paths with a `301`, which turns a `POST` into
//!   a `GET`). Ids that are empty, `.`, `..` or contain `/` are refused.
//! - **TLS.** The system roots by default; a CA bundle
//!   ([`OvmClientBuilder::ca_pem`]), certificate thumbprint pins
//!   ([`OvmClientBuilder::pin_thumbprint`], checked in the handshake, before
//!   any credential is sent) or no check at all, by name only
//!   ([`OvmClientBuilder::danger_accept_invalid_certs`]). Plain `http://`
//!   is refused unless asked for by name.
//! - **Login.** Lazy: the first call logs in (`POST /api/v1/auth/login`).
//!   The JWT is reused until shortly before its `exp`
//!   ([`crate::auth::jwt_expiry`]), then renewed before use; a `401` from a
//!   private route triggers one re-login and one resend. Concurrent callers
//!   share one login. The password and the token never appear in `Debug`
//!   output, logs or errors.
//! - **Errors.** Mapped by [`crate::error`]: the exporter's `500 could not
//!   find VM` and `500 not found` are `NotFound`, `409` is `NotFound` (the
//!   snapshot belongs to another VM), `400` is `InvalidInput`.
//! - **Retries.** Idempotent calls (`GET`, `HEAD`, `DELETE`, login) are
//!   retried under the client's [`Backoff`] when the error is retryable.
//!   Creating a snapshot is never blindly retried: after a failure with an
//!   unknown outcome the client lists the VM's snapshots and compares with
//!   the list taken before ([`OvmClient::create_snapshot`]).
//! - **Disk data.** [`OvmClient::open_disk`] gives an [`OvmDisk`], a
//!   [`BlockSource`] over the snapshot's disk read with single-range `GET`s
//!   (each checked to come back `206` with exactly the `Content-Range` asked
//!   for; cut bodies resumed), whose allocated extents are the snapshot's
//!   chunks.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_ovm::{OvmClient, SnapshotQuery};
//!
//! let client = OvmClient::builder("https://ovs1.example:5544")
//!     .credentials("admin", "secret")
//!     .ca_pem(std::fs::read("exporter-ca.pem").unwrap())
//!     .build()?;
//! for vm in client.list_vms().await? {
//!     println!("{} {} ({} disks)", vm.name, vm.friendly_name, vm.disks.len());
//! }
//! let snap = client.create_snapshot("0004fb0000060000ccaf98a0baa2c186").await?;
//! let raw = client.snapshot(&snap.vm_id, &snap.id, &SnapshotQuery::raw()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use hypersdk_core::blocks::{BlockSource, HttpAuth, HttpSource, HttpStats};
use hypersdk_core::error::redact_url;
use hypersdk_core::model::{Extent, ExtentList};
use hypersdk_core::retry::{Backoff, retry};
use hypersdk_core::tls::{Thumbprint, TlsTrust, tls_failure};
use hypersdk_core::{Error, Result};
use serde::de::DeserializeOwned;
use url::Url;

use crate::auth::{Token, TokenCache};
use crate::diff::chunks_to_extents;
use crate::error::{Subject, exporter_error};
use crate::types::{
    Chunk, DiskSnapshot, LoginRequest, LoginResponse, SnapshotQuery, VirtualMachine, VmSnapshot,
};

/// Largest JSON body read (snapshot lists carry every chunk of every
/// snapshot).
const MAX_BODY: usize = 512 << 20;
/// JSON bodies at least this large are parsed on the blocking pool.
const PARSE_INLINE_MAX: usize = 1 << 20;

/// A user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Options of an [`OvmClient`]; made by [`OvmClient::builder`].
///
/// ```
/// use hypersdk_ovm::OvmClient;
/// let b = OvmClient::builder("https://10.0.0.5:5544/").credentials("admin", "s3cret");
/// assert!(!format!("{b:?}").contains("s3cret"));
/// let client = b.build()?; // no network yet
/// assert_eq!(client.endpoint(), "https://10.0.0.5:5544");
/// # Ok::<(), hypersdk_core::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct OvmClientBuilder {
    endpoint: String,
    credentials: Option<Credentials>,
    tls: TlsTrust,
    allow_plain_http: bool,
    config_error: Option<String>,
    backoff: Backoff,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl fmt::Debug for OvmClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvmClientBuilder")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl OvmClientBuilder {
    /// The OVM Manager user and password the exporter checks logins
    /// against.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some(Credentials {
            username: user.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// Trusts only the CA certificates of this PEM bundle (instead of the
    /// system's roots); may be called several times.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        let r = self.tls.add_ca_pem(pem.as_ref());
        self.check(r)
    }

    /// Trusts exactly the server certificate with this SHA-256 (or SHA-1)
    /// thumbprint, `AB:CD:…`; may be called several times (any pin
    /// matches). Checked in the TLS handshake: with a wrong pin nothing,
    /// and so no credential, is sent.
    pub fn pin_thumbprint(mut self, t: &str) -> Self {
        let r = t.parse::<Thumbprint>().and_then(|t| self.tls.pin(t));
        self.check(r)
    }

    /// Accepts any certificate: no protection against an impostor, who
    /// then receives the password. Only for labs; prefer
    /// [`OvmClientBuilder::pin_thumbprint`].
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        let r = self.tls.accept_invalid();
        self.check(r)
    }

    /// Allows an `http://` endpoint: the password and the token travel in
    /// clear text. Only for test servers. Refused together with any TLS
    /// option (it would not be checked).
    pub fn danger_allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// The retry policy of idempotent calls and of disk reads. Default: up
    /// to 5 attempts, 200 ms growing to 10 s.
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Timeout of one API call, body included (default 5 minutes). Disk
    /// data reads are bounded by [`OvmClientBuilder::idle_timeout`]
    /// instead, since a range may take long.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Timeout of establishing a connection (default 30 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long a disk read waits for the next bytes before it resumes the
    /// range on a new request (default 60 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Keeps the first configuration error, reported by `build`.
    fn check(mut self, r: Result<()>) -> Self {
        if let Err(e) = r
            && self.config_error.is_none()
        {
            self.config_error = Some(match e {
                Error::InvalidInput { message } => message,
                other => other.to_string(),
            });
        }
        self
    }

    /// Checks the options and builds the client. Nothing is sent: the
    /// first call logs in.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an endpoint that is not
    /// `https://host[:port][/prefix]` (or `http://` without
    /// [`OvmClientBuilder::danger_allow_plain_http`], or with a TLS option),
    /// credentials in the URL, no credentials, a bad thumbprint or CA
    /// bundle, conflicting TLS options or an invalid backoff.
    pub fn build(self) -> Result<OvmClient> {
        if let Some(e) = &self.config_error {
            return Err(Error::invalid_input(e.clone()));
        }
        self.backoff.validate()?;
        let (base, base_segments) = parse_endpoint(&self.endpoint)?;
        if base.scheme() == "http" {
            if !self.tls.is_system_roots() {
                return Err(Error::invalid_input(format!(
                    "OVM exporter endpoint '{}' is plain http:// but a TLS option ({:?}) was \
                     set: it would not be checked; use https://",
                    redact_url(&self.endpoint),
                    self.tls
                )));
            }
            if !self.allow_plain_http {
                return Err(Error::invalid_input(format!(
                    "OVM exporter endpoint '{}' is plain http://: the password and token would \
                     travel unencrypted; use https:// (the exporter only speaks TLS), or \
                     danger_allow_plain_http for a test server",
                    redact_url(&self.endpoint)
                )));
            }
        }
        let credentials = self.credentials.clone().ok_or_else(|| {
            Error::invalid_input(
                "no credentials for the OVM exporter: call credentials(user, password)",
            )
        })?;
        let http = self.http_client()?;
        let mut endpoint = base.clone();
        endpoint
            .path_segments_mut()
            .map_err(|()| Error::invalid_input("the endpoint cannot have a path"))?
            .clear()
            .extend(&base_segments);
        let endpoint = endpoint.as_str().trim_end_matches('/').to_owned();
        Ok(OvmClient {
            inner: Arc::new(Inner {
                http,
                base,
                base_segments,
                endpoint,
                credentials,
                tokens: TokenCache::default(),
                backoff: self.backoff,
                timeout: self.timeout,
                idle_timeout: self.idle_timeout,
            }),
        })
    }

    fn http_client(&self) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .http1_only()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hypersdk-ovm/", env!("CARGO_PKG_VERSION")));
        b = self.tls.apply(b, &redact_url(&self.endpoint))?;
        b.build().map_err(|e| Error::Other {
            message: format!("building the HTTP client: {e}"),
            source: Some(Box::new(e)),
        })
    }
}

/// The endpoint's origin and its non-empty path segments (a prefix).
fn parse_endpoint(input: &str) -> Result<(Url, Vec<String>)> {
    let trimmed = input.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        Error::invalid_input(format!(
            "OVM exporter endpoint '{}' is not a valid URL: {e}",
            redact_url(&with_scheme)
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(Error::invalid_input(format!(
            "OVM exporter endpoint '{}' must be https://host[:port]",
            redact_url(url.as_str())
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_input(format!(
            "OVM exporter endpoint '{}' carries credentials: pass them with credentials(user, password)",
            redact_url(url.as_str())
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::invalid_input(format!(
            "OVM exporter endpoint '{}' must not have a query or fragment",
            url.as_str()
        )));
    }
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut base = url;
    base.set_path("/");
    Ok((base, segments))
}

/// Checks an id that goes into a path segment.
fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') {
        return Err(Error::invalid_input(format!(
            "{what} '{id}' is not a valid exporter id (empty, '.', '..' or with a '/')"
        )));
    }
    Ok(())
}

/// A client of one Coriolis OVM exporter; see the [module
/// documentation](self).
///
/// Cheap to clone: clones share the connection pool and the token.
/// `Debug` shows neither the password nor the token.
#[derive(Clone)]
pub struct OvmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `scheme://host:port/`.
    base: Url,
    /// The endpoint's path prefix, without empty segments.
    base_segments: Vec<String>,
    /// The endpoint for messages, without a trailing slash.
    endpoint: String,
    credentials: Credentials,
    tokens: TokenCache,
    backoff: Backoff,
    timeout: Duration,
    idle_timeout: Duration,
}

impl fmt::Debug for OvmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("OvmClient")
            .field("endpoint", &i.endpoint)
            .field("credentials", &i.credentials)
            .field(
                "token",
                &if i.tokens.has_token() {
                    "Some(***)"
                } else {
                    "None"
                },
            )
            .field("timeout", &i.timeout)
            .finish_non_exhaustive()
    }
}

/// A read answer: status, headers and the whole body.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

impl OvmClient {
    /// Starts configuring a client of the exporter at `endpoint`, e.g.
    /// `https://10.0.0.5:5544` (`https://` is assumed when no scheme is
    /// given).
    pub fn builder(endpoint: &str) -> OvmClientBuilder {
        OvmClientBuilder {
            endpoint: endpoint.to_owned(),
            credentials: None,
            tls: TlsTrust::default(),
            allow_plain_http: false,
            config_error: None,
            backoff: Backoff::default()
                .with_initial(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_attempts(Some(5)),
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            idle_timeout: hypersdk_core::blocks::DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// The endpoint, without a trailing slash, e.g. `https://10.0.0.5:5544`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The user name logins are made with.
    pub fn username(&self) -> &str {
        &self.inner.credentials.username
    }

    /// The pooled HTTP client (with the TLS policy), for callers that
    /// issue their own requests; clones share the pool.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The retry policy of this client.
    pub fn backoff(&self) -> &Backoff {
        &self.inner.backoff
    }

    /// The bearer token as an [`HttpAuth`] for [`HttpSource`]s: the
    /// cached token on every request, one shared re-login after a `401`.
    pub fn auth(&self) -> Arc<dyn HttpAuth> {
        Arc::new(OvmAuth {
            client: self.clone(),
            probe: None,
        })
    }

    /// The URL of `<prefix>/api/v1/<segments…>`, each segment
    /// percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear()
                .extend(&self.inner.base_segments)
                .extend(["api", "v1"])
                .extend(segments);
        }
        url
    }

    /// The URL of a disk's data: `.../vms/{vm}/snapshots/{snap}/disks/{disk}`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an invalid id.
    pub fn disk_url(&self, vm_id: &str, snapshot_id: &str, disk: &str) -> Result<Url> {
        check_id("VM id", vm_id)?;
        check_id("snapshot id", snapshot_id)?;
        check_id("disk", disk)?;
        Ok(self.url(&["vms", vm_id, "snapshots", snapshot_id, "disks", disk]))
    }

    /// Maps a transport failure of a request to `url`.
    fn transport_error(&self, method: &Method, url: &Url, e: reqwest::Error) -> Error {
        if let Some(why) = tls_failure(&e) {
            return Error::Other {
                message: format!(
                    "TLS handshake with the OVM exporter {} failed, nothing was sent: {why}",
                    self.inner.endpoint
                ),
                source: Some(Box::new(e)),
            };
        }
        if e.is_timeout() {
            return Error::Timeout {
                operation: format!("{method} {url}"),
                after: self.inner.timeout,
            };
        }
        hypersdk_core::blocks::reqwest_error(method, url.as_str(), e)
    }

    /// `Bearer <token>`, marked sensitive (never logged).
    fn bearer(&self, token: &str) -> Result<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Error::invalid_data(
                format!("the OVM exporter {}", self.inner.endpoint),
                "the login token is not a valid header value",
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Sends one request and reads its whole body; a status that is not a
    /// success becomes the mapped exporter error.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        token: Option<&str>,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        subject: Subject<'_>,
    ) -> Result<std::result::Result<Answer, (StatusCode, Error)>> {
        let mut rb = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .timeout(self.inner.timeout)
            .headers(headers);
        if let Some(t) = token {
            rb = rb.header(header::AUTHORIZATION, self.bearer(t)?);
        }
        if let Some(b) = body {
            rb = rb.header(header::CONTENT_TYPE, "application/json").body(b);
        }
        let mut resp = rb
            .send()
            .await
            .map_err(|e| self.transport_error(method, url, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(method, url, e))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Error::invalid_data(
                    format!("{method} {url}"),
                    format!("the answer is larger than {MAX_BODY} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(Ok(Answer {
                headers,
                body: Bytes::from(body),
            }));
        }
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = exporter_error(
            &self.inner.endpoint,
            method.as_str(),
            url.as_str(),
            status.as_u16(),
            retry_after,
            &body,
            subject,
        );
        Ok(Err((status, error)))
    }

    /// A token that may be sent: the cached one, or a new login.
    async fn token(&self) -> Result<Token> {
        if let Some(t) = self.inner.tokens.fresh() {
            return Ok(t);
        }
        let _guard = self.inner.tokens.login_lock.lock().await;
        if let Some(t) = self.inner.tokens.fresh() {
            return Ok(t);
        }
        let value = self.login_request().await?;
        Ok(self.inner.tokens.store(value))
    }

    /// `POST /api/v1/auth/login`, retried on transient failures; the token.
    async fn login_request(&self) -> Result<String> {
        let url = self.url(&["auth", "login"]);
        let creds = &self.inner.credentials;
        let body = serde_json::to_vec(&LoginRequest {
            username: &creds.username,
            password: &creds.password,
        })
        .map_err(|e| Error::other(format!("encoding the login request: {e}")))?;
        let op = format!("POST {url}");
        let answer = retry(&self.inner.backoff, &op, |_| async {
            match self
                .exchange(
                    &Method::POST,
                    &url,
                    None,
                    HeaderMap::new(),
                    Some(body.clone()),
                    Subject::Login {
                        user: &creds.username,
                    },
                )
                .await?
            {
                Ok(a) => Ok(a),
                Err((_, e)) => Err(e),
            }
        })
        .await?;
        let parsed: LoginResponse = serde_json::from_slice(&answer.body).map_err(|e| {
            Error::invalid_data_with(op.clone(), "the login answer is not {\"token\": …}", e)
        })?;
        if parsed.token.is_empty() {
            return Err(Error::invalid_data(op, "the login answer has no token"));
        }
        tracing::debug!(endpoint = %self.inner.endpoint, user = %creds.username, "logged in to the OVM exporter");
        Ok(parsed.token)
    }

    /// Logs in now, replacing any cached token. Not needed before other
    /// calls (they log in when needed); useful to check credentials early.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] when the exporter refuses the credentials
    /// (or cannot reach OVM Manager to check them); TLS, network and HTTP
    /// errors otherwise.
    pub async fn login(&self) -> Result<()> {
        let _guard = self.inner.tokens.login_lock.lock().await;
        let value = self.login_request().await?;
        self.inner.tokens.store(value);
        Ok(())
    }

    /// Renews the token after a `401` unless another caller already did
    /// since `seen` was the current generation, or (with a `probe` URL) the
    /// current token turns out to be accepted after all.
    async fn relogin_after_401(&self, seen: u64, probe: Option<&Url>) -> Result<()> {
        let tokens = &self.inner.tokens;
        let _guard = tokens.login_lock.lock().await;
        if tokens.generation() != seen && tokens.fresh().is_some() {
            return Ok(());
        }
        if let Some(probe) = probe
            && self.current_token_works(probe).await
        {
            return Ok(());
        }
        tokens.invalidate(tokens.generation());
        let value = self.login_request().await?;
        tokens.store(value);
        Ok(())
    }

    /// Whether the current token is accepted by a `HEAD` of `probe`.
    async fn current_token_works(&self, probe: &Url) -> bool {
        let Some(token) = self.inner.tokens.fresh() else {
            return false;
        };
        matches!(
            self.exchange(
                &Method::HEAD,
                probe,
                Some(&token.value),
                HeaderMap::new(),
                None,
                Subject::Vms,
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// One authenticated request, with one re-login and resend on a `401`.
    async fn authed(
        &self,
        method: &Method,
        url: &Url,
        headers: HeaderMap,
        subject: Subject<'_>,
    ) -> Result<Answer> {
        let mut relogged = false;
        loop {
            let token = self.token().await?;
            match self
                .exchange(
                    method,
                    url,
                    Some(&token.value),
                    headers.clone(),
                    None,
                    subject,
                )
                .await?
            {
                Ok(a) => return Ok(a),
                Err((StatusCode::UNAUTHORIZED, _)) if !relogged => {
                    tracing::debug!(endpoint = %self.inner.endpoint, "token refused (401): logging in again");
                    relogged = true;
                    self.relogin_after_401(token.generation, None).await?;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// An idempotent authenticated request, retried on transient failures.
    async fn idempotent(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        subject: Subject<'_>,
    ) -> Result<Answer> {
        let op = format!("{method} {url}");
        retry(&self.inner.backoff, &op, |_| {
            self.authed(&method, url, headers.clone(), subject)
        })
        .await
    }

    async fn get_json<T: DeserializeOwned + Send + 'static>(
        &self,
        url: &Url,
        subject: Subject<'_>,
    ) -> Result<T> {
        let answer = self
            .idempotent(Method::GET, url, HeaderMap::new(), subject)
            .await?;
        parse_json(answer.body, format!("GET {url}")).await
    }

    /// Every VM of the repositories mounted on the exporter's OVM server.
    ///
    /// # Errors
    ///
    /// Network, TLS, authentication and HTTP errors. The exporter fails the
    /// whole list (HTTP 500) when any repository lacks a `VirtualMachines`
    /// directory or any `vm.cfg` does not parse.
    pub async fn list_vms(&self) -> Result<Vec<VirtualMachine>> {
        self.get_json(&self.url(&["vms"]), Subject::Vms).await
    }

    /// One VM by its exporter id (the 32-hex `name`).
    ///
    /// # Errors
    ///
    /// [`hypersdk_core::ErrorKind::NotFound`] naming the id when the
    /// exporter knows no such VM; [`Error::InvalidInput`] for an invalid id.
    pub async fn vm(&self, vm_id: &str) -> Result<VirtualMachine> {
        check_id("VM id", vm_id)?;
        self.get_json(&self.url(&["vms", vm_id]), Subject::Vm { vm: vm_id })
            .await
    }

    /// The VM's snapshots on this exporter, oldest first, with **squashed**
    /// chunks (the exporter always squashes here; use
    /// [`OvmClient::snapshot`] for raw chunks).
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown VM.
    pub async fn list_snapshots(&self, vm_id: &str) -> Result<Vec<VmSnapshot>> {
        check_id("VM id", vm_id)?;
        self.get_json(
            &self.url(&["vms", vm_id, "snapshots"]),
            Subject::Vm { vm: vm_id },
        )
        .await
    }

    /// Takes a snapshot of every disk of the VM (a reflink per disk, one
    /// after the other; crash-consistent per disk). The answer carries raw
    /// chunks.
    ///
    /// The request is never blindly repeated. The VM's snapshot ids are
    /// read first; when the request fails without an answer from the
    /// exporter (connection lost, a proxy's 5xx), they are read again: one
    /// new id is the snapshot this call created, and is returned; none
    /// means nothing was created, and the request is sent again under the
    /// retry policy; several (someone else created one meanwhile) is an
    /// error listing them. A timeout is not retried: the exporter may
    /// still be creating the snapshot.
    ///
    /// The exporter records no creator, so the check cannot tell this
    /// call's snapshot from one another client created in the same moment
    /// while this call's was lost: run one backup of a VM at a time.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown VM; [`Error::InvalidInput`] when the VM
    /// cannot be snapshotted (a disk not on OCFS2, an ISO); an
    /// [`Error::Other`] saying the outcome is unknown when even the check
    /// failed.
    pub async fn create_snapshot(&self, vm_id: &str) -> Result<VmSnapshot> {
        check_id("VM id", vm_id)?;
        let before: HashSet<String> = self.vm(vm_id).await?.snapshots.into_iter().collect();
        let url = self.url(&["vms", vm_id, "snapshots"]);
        let subject = Subject::Vm { vm: vm_id };
        let before = &before;
        let url = &url;
        // Each attempt posts once; a failure with an unknown outcome is
        // checked by listing, and only "nothing was created" comes back as
        // the (retryable) error, so the core policy sends it again. A
        // snapshot found by listing is read after the loop, so that a
        // failure to read it is never taken for "nothing was created".
        let found = retry(&self.inner.backoff, &format!("POST {url}"), |attempt| async move {
            let error = match self
                .authed(&Method::POST, url, HeaderMap::new(), subject)
                .await
            {
                Ok(answer) => {
                    return parse_json(answer.body, format!("POST {url}"))
                        .await
                        .map(Created::Answered);
                }
                Err(e) if outcome_unknown(&e) => e,
                Err(e) => return Err(e),
            };
            let after = match self.vm(vm_id).await {
                Ok(vm) => vm.snapshots,
                Err(check) => {
                    return Err(Error::Other {
                        message: format!(
                            "creating a snapshot of VM id '{vm_id}' on {} failed ({error}) and \
                             listing its snapshots to see whether one was created failed too \
                             ({check}): a snapshot may exist; list the snapshots later",
                            self.inner.endpoint
                        ),
                        source: Some(Box::new(error)),
                    });
                }
            };
            let new: Vec<&String> = after.iter().filter(|id| !before.contains(*id)).collect();
            match new.as_slice() {
                [id] => {
                    tracing::warn!(
                        vm = vm_id,
                        snapshot = %id,
                        error = %error,
                        "the answer to a snapshot creation was lost; the new snapshot was found by listing"
                    );
                    Ok(Created::Listed((*id).clone()))
                }
                [] if matches!(error, Error::Timeout { .. }) => Err(Error::Other {
                    message: format!(
                        "creating a snapshot of VM id '{vm_id}' on {} timed out and no new \
                         snapshot is listed yet: the exporter may still be creating it; list \
                         the snapshots later before trying again",
                        self.inner.endpoint
                    ),
                    source: Some(Box::new(error)),
                }),
                [] => {
                    tracing::warn!(
                        vm = vm_id,
                        attempt,
                        error = %error,
                        "creating a snapshot failed and none was created"
                    );
                    Err(error)
                }
                several => Err(Error::Conflict {
                    object: format!(
                        "VM id '{vm_id}' on the OVM exporter {}",
                        self.inner.endpoint
                    ),
                    message: format!(
                        "creating a snapshot failed ({error}) and {} snapshots appeared \
                         meanwhile ({}): cannot tell which one this call created; delete the \
                         ones not wanted",
                        several.len(),
                        several
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            }
        })
        .await?;
        match found {
            Created::Answered(snap) => Ok(snap),
            Created::Listed(id) => self.snapshot(vm_id, &id, &SnapshotQuery::raw()).await,
        }
    }

    /// One snapshot, its chunks raw or squashed, optionally only those that
    /// differ from an older snapshot by the exporter's exact-match rule
    /// (which over-reports split extents and ignores freed ranges; see
    /// [`crate::diff`] for the client-side diff).
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown snapshot (or `compareTo` snapshot), or one
    /// of another VM; [`Error::InvalidInput`] when `compare_to` is not older.
    pub async fn snapshot(
        &self,
        vm_id: &str,
        snapshot_id: &str,
        q: &SnapshotQuery,
    ) -> Result<VmSnapshot> {
        check_id("VM id", vm_id)?;
        check_id("snapshot id", snapshot_id)?;
        let mut url = self.url(&["vms", vm_id, "snapshots", snapshot_id]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("squashChunks", if q.squash { "true" } else { "false" });
            if let Some(c) = q.compare_to.as_deref().filter(|c| !c.is_empty()) {
                pairs.append_pair("compareTo", c);
            }
        }
        self.get_json(
            &url,
            Subject::Snapshot {
                vm: vm_id,
                snapshot: snapshot_id,
                compare_to: q.compare_to.as_deref(),
            },
        )
        .await
    }

    /// Deletes one snapshot. Like the exporter, succeeds when the snapshot
    /// does not exist.
    ///
    /// # Errors
    ///
    /// `NotFound` when the snapshot belongs to another VM.
    pub async fn delete_snapshot(&self, vm_id: &str, snapshot_id: &str) -> Result<()> {
        check_id("VM id", vm_id)?;
        check_id("snapshot id", snapshot_id)?;
        let url = self.url(&["vms", vm_id, "snapshots", snapshot_id]);
        self.idempotent(
            Method::DELETE,
            &url,
            HeaderMap::new(),
            Subject::Snapshot {
                vm: vm_id,
                snapshot: snapshot_id,
                compare_to: None,
            },
        )
        .await
        .map(|_| ())
    }

    /// Deletes every snapshot of the VM.
    ///
    /// # Errors
    ///
    /// `NotFound` when the VM no longer exists (its snapshots must then be
    /// deleted one by one).
    pub async fn purge_snapshots(&self, vm_id: &str) -> Result<()> {
        check_id("VM id", vm_id)?;
        let url = self.url(&["vms", vm_id, "snapshots"]);
        self.idempotent(
            Method::DELETE,
            &url,
            HeaderMap::new(),
            Subject::Vm { vm: vm_id },
        )
        .await
        .map(|_| ())
    }

    /// The size in bytes of a snapshot's disk: a `HEAD`, whose
    /// `Content-Length` header is read directly (reqwest reports the empty
    /// body's length for a `HEAD`).
    ///
    /// A failed `HEAD` has no body to tell a missing snapshot (500 `not
    /// found`) from a server fault, so after one the size is asked again
    /// with a `GET` of the first byte (`Content-Range: bytes 0-0/<size>`),
    /// retried under the policy, whose error body says what is wrong.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown snapshot or disk; [`Error::InvalidData`]
    /// when the answer has no usable size.
    pub async fn disk_size(&self, vm_id: &str, snapshot_id: &str, disk: &str) -> Result<u64> {
        let url = self.disk_url(vm_id, snapshot_id, disk)?;
        let subject = Subject::Disk {
            vm: vm_id,
            snapshot: snapshot_id,
            disk,
        };
        let head_error = match self
            .authed(&Method::HEAD, &url, HeaderMap::new(), subject)
            .await
        {
            Ok(answer) => {
                return answer
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::invalid_data(
                            format!("HEAD {url}"),
                            "no usable Content-Length: the size of the disk is unknown",
                        )
                    });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    hypersdk_core::ErrorKind::Unauthenticated
                        | hypersdk_core::ErrorKind::InvalidInput
                ) =>
            {
                return Err(e);
            }
            Err(e) => e,
        };
        tracing::debug!(url = %url, error = %head_error, "HEAD failed; asking for the size with a GET of byte 0");
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let answer = match self.idempotent(Method::GET, &url, h, subject).await {
            Ok(a) => a,
            // Byte 0 is past the end: an empty disk.
            Err(Error::HttpStatus { status: 416, .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        answer
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().rsplit_once('/'))
            .and_then(|(_, total)| total.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Error::invalid_data(
                    format!("GET {url}"),
                    format!(
                        "no usable Content-Range for bytes=0-0: the size of the disk is unknown \
                         (the HEAD failed too: {head_error})"
                    ),
                )
            })
    }

    /// A range reader of one disk of a snapshot; its allocated extents are
    /// the snapshot's chunks. Reads the snapshot (raw chunks) and the
    /// disk's size first.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown snapshot or a disk the snapshot does not
    /// have.
    pub async fn open_disk(&self, vm_id: &str, snapshot_id: &str, disk: &str) -> Result<OvmDisk> {
        check_id("disk", disk)?;
        let snap = self
            .snapshot(vm_id, snapshot_id, &SnapshotQuery::raw())
            .await?;
        self.open_snapshot_disk(&snap, disk).await
    }

    /// Like [`OvmClient::open_disk`] for a snapshot already read (raw or
    /// squashed chunks both give the allocation); only the size is asked.
    ///
    /// # Errors
    ///
    /// `NotFound` when `snapshot` has no disk `disk`.
    pub async fn open_snapshot_disk(&self, snapshot: &VmSnapshot, disk: &str) -> Result<OvmDisk> {
        let Some(d) = snapshot.disk(disk) else {
            return Err(Error::not_found(format!(
                "disk '{disk}' of snapshot '{}' of VM id '{}' (it has {})",
                snapshot.id,
                snapshot.vm_id,
                if snapshot.disks.is_empty() {
                    "no disk".to_owned()
                } else {
                    snapshot
                        .disks
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        };
        let size = self.disk_size(&snapshot.vm_id, &snapshot.id, disk).await?;
        let url = self.disk_url(&snapshot.vm_id, &snapshot.id, disk)?;
        let source = HttpSource::builder(url.as_str())
            .client(self.inner.http.clone())
            .auth(Arc::new(OvmAuth {
                client: self.clone(),
                probe: Some(url.clone()),
            }))
            .backoff(self.inner.backoff.clone())
            .idle_timeout(self.inner.idle_timeout)
            .len(size)
            .open()
            .await?;
        Ok(OvmDisk::new(source, &snapshot.vm_id, &snapshot.id, d, size))
    }
}

/// How a snapshot creation ended: with the exporter's answer, or with the
/// id of the snapshot found by listing after the answer was lost.
enum Created {
    Answered(VmSnapshot),
    Listed(String),
}

/// Whether a failed create may have created a snapshot without saying so:
/// every transient failure (no answer, a cut answer, a proxy's or the
/// exporter's 5xx). Such failures are checked by listing before anything
/// is sent again.
fn outcome_unknown(e: &Error) -> bool {
    e.is_retryable()
}

/// Parses a JSON answer, on the blocking pool when it is large.
async fn parse_json<T: DeserializeOwned + Send + 'static>(body: Bytes, what: String) -> Result<T> {
    let parse = move |body: Bytes, what: String| {
        serde_json::from_slice::<T>(&body).map_err(|e| {
            Error::invalid_data_with(what, "the exporter's answer is not the JSON expected", e)
        })
    };
    if body.len() < PARSE_INLINE_MAX {
        return parse(body, what);
    }
    tokio::task::spawn_blocking(move || parse(body, what))
        .await
        .map_err(|e| Error::other(format!("parsing a large exporter answer: {e}")))?
}

/// The client's token as [`HttpAuth`].
///
/// [`HttpAuth::refresh`] does not say which token the refused request
/// carried, and parallel reads refused together call it one after the
/// other. With a `probe` (a `HEAD` of the disk being read), a refresh first
/// checks whether the current token is still refused, so a burst of 401s
/// costs one login; without one, a refresh logs in unless another refresh
/// did while it waited.
struct OvmAuth {
    client: OvmClient,
    probe: Option<Url>,
}

impl fmt::Debug for OvmAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvmAuth")
            .field("endpoint", &self.client.inner.endpoint)
            .field("token", &"***")
            .finish()
    }
}

#[async_trait]
impl HttpAuth for OvmAuth {
    async fn headers(&self) -> Result<HeaderMap> {
        let token = self.client.token().await?;
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, self.client.bearer(&token.value)?);
        Ok(h)
    }

    async fn refresh(&self) -> Result<bool> {
        let seen = self.client.inner.tokens.generation();
        self.client
            .relogin_after_401(seen, self.probe.as_ref())
            .await?;
        Ok(true)
    }
}

/// One disk of one snapshot, read by byte range over HTTP: an
/// [`HttpSource`] (single-range `GET`s, `206` and `Content-Range` checked,
/// cut bodies resumed, the token refreshed on a `401`) whose allocated
/// extents are the snapshot's chunks, clamped to the disk's size and
/// merged.
#[derive(Debug, Clone)]
pub struct OvmDisk {
    source: HttpSource,
    vm_id: String,
    snapshot_id: String,
    name: String,
    chunks: Arc<Vec<Chunk>>,
    allocated: ExtentList,
    described: String,
}

impl OvmDisk {
    fn new(
        source: HttpSource,
        vm_id: &str,
        snapshot_id: &str,
        d: &DiskSnapshot,
        size: u64,
    ) -> Self {
        OvmDisk {
            allocated: chunks_to_extents(&d.chunks, size),
            described: format!(
                "disk '{}' of OVM snapshot '{snapshot_id}' of VM id '{vm_id}' ({})",
                d.name,
                source.url()
            ),
            source,
            vm_id: vm_id.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            name: d.name.clone(),
            chunks: Arc::new(d.chunks.clone()),
        }
    }

    /// The underlying HTTP source.
    pub fn http(&self) -> &HttpSource {
        &self.source
    }

    /// Requests, bytes and resumes of the reads so far (shared by clones).
    pub fn stats(&self) -> HttpStats {
        self.source.stats()
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The snapshot id.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// The disk's name (its id on the data endpoint).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The snapshot's chunks for this disk, as the exporter gave them.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The allocated extents: the chunks clamped to the size and merged.
    pub fn allocated(&self) -> &ExtentList {
        &self.allocated
    }
}

#[async_trait]
impl BlockSource for OvmDisk {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn len(&self) -> u64 {
        self.source.len()
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        self.source.read_range(range).await
    }

    async fn read_stream(&self, range: Extent) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.source.read_stream(range).await
    }

    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        Ok(Some(self.allocated.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: &str) -> OvmClient {
        OvmClient::builder(endpoint)
            .credentials("admin", "pw")
            .build()
            .unwrap()
    }

    #[test]
    fn paths_never_have_double_slashes() {
        for (ep, want) in [
            ("https://h:5544", "https://h:5544/api/v1/vms/a"),
            ("https://h:5544/", "https://h:5544/api/v1/vms/a"),
            ("https://h:5544//", "https://h:5544/api/v1/vms/a"),
            ("h:5544", "https://h:5544/api/v1/vms/a"),
            ("https://h/proxy/", "https://h/proxy/api/v1/vms/a"),
            ("https://h//proxy//x/", "https://h/proxy/x/api/v1/vms/a"),
        ] {
            let c = client(ep);
            let u = c.url(&["vms", "a"]);
            assert_eq!(u.as_str(), want, "{ep}");
            assert!(!u.path().contains("//"));
            assert!(!c.endpoint().ends_with('/'), "{}", c.endpoint());
        }
        let c = client("https://h:5544/");
        assert_eq!(c.endpoint(), "https://h:5544");
        assert_eq!(
            c.disk_url("v", "s", "a b.img").unwrap().as_str(),
            "https://h:5544/api/v1/vms/v/snapshots/s/disks/a%20b.img"
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(c.disk_url("v", "s", bad).is_err(), "{bad:?}");
            assert!(c.disk_url(bad, "s", "d").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builder_checks() {
        let e = |b: OvmClientBuilder| b.build().unwrap_err().to_string();
        assert!(e(OvmClient::builder("https://h")).contains("no credentials"));
        let b = OvmClient::builder("https://h").credentials("u", "p");
        assert!(e(b.clone().pin_thumbprint("zz")).contains("thumbprint"));
        assert!(e(b.clone().ca_pem("x").danger_accept_invalid_certs()).contains("conflicts"));
        assert!(e(b.clone().ca_pem("not pem")).contains("CA bundle"));
        assert!(e(OvmClient::builder("http://h").credentials("u", "p")).contains("plain http"));
        assert!(
            e(OvmClient::builder("http://h")
                .credentials("u", "p")
                .danger_allow_plain_http()
                .danger_accept_invalid_certs())
            .contains("would not be checked")
        );
        assert!(
            OvmClient::builder("http://h")
                .credentials("u", "p")
                .danger_allow_plain_http()
                .build()
                .is_ok()
        );
        let msg = e(OvmClient::builder("https://u:hunter2@h").credentials("u", "p"));
        assert!(
            msg.contains("credentials") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert!(e(OvmClient::builder("ftp://h").credentials("u", "p")).contains("https://"));
        assert!(e(OvmClient::builder("https://h/?x=1").credentials("u", "p")).contains("query"));
    }

    #[test]
    fn debug_redacts() {
        let c = OvmClient::builder("https://h")
            .credentials("admin", "hunter2")
            .build()
            .unwrap();
        c.inner.tokens.store("eyJ.secret-token.sig".into());
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("secret-token"), "{d}");
        assert!(d.contains("admin"));
        let a = format!("{:?}", c.auth());
        assert!(!a.contains("secret-token"), "{a}");
    }

    #[test]
    fn unknown_outcomes() {
        assert!(outcome_unknown(&Error::network("https://h", "reset", None)));
        assert!(outcome_unknown(&Error::from_http_status(
            "POST",
            "https://h",
            503,
            None,
            "busy"
        )));
        assert!(!outcome_unknown(&Error::invalid_input("no")));
        assert!(!outcome_unknown(&Error::not_found("VM")));
    }
}
