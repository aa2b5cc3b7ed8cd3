//! The vim25 client: connection, TLS policy, session and calls.
//!
//! [`ClientBuilder::connect`] reads `/sdk/vimServiceVersions.xml` and the
//! service content (no credentials needed; the TLS policy is enforced on
//! that first connection, so a wrong certificate or pin fails before any
//! credential is sent), then logs in. Every later call sends the session
//! cookie and `SOAPAction: urn:vim25/<apiVersion>` with the version the
//! server reported.
//!
//! Only `https://` is spoken unless plain HTTP is asked for by name
//! ([`ClientBuilder::danger_allow_plain_http`]); `http://` together with a
//! CA, pins or accept-invalid is always refused (none of them would be
//! checked).
//!
//! When a call finds the session gone (`NotAuthenticated`, as a fault or,
//! as vcsim does, inside a property read's `missingSet`), the client logs
//! in again and repeats the call (at most twice per call, in case the new
//! session is lost too). Concurrent calls that hit an expired session share
//! one re-login: the first takes the login lock, the others wait and see
//! that the session generation moved on. A re-login the server refuses
//! (`InvalidLogin`, `PasswordExpired`, …) is remembered: every later call
//! fails at once with that error, without another `Login` (repeated failed
//! logins lock SSO accounts), until [`Client::reconnect`] is called.
//!
//! A session can outlive the process that opened it, as govc's
//! `GOVC_PERSIST_SESSION` does: [`Client::session_cookie`] gives the
//! session's cookie to persist ([`SessionCookie`]; treat it as a secret for
//! the session's life) and [`Client::leave_session`] stops using it without
//! logging it out; another process passes it to
//! [`ClientBuilder::session_cookie`], and `connect` checks it with one
//! property read (`SessionManager.currentSession`). A live session is
//! reused ([`Client::session_reused`]); a dead one is replaced by a normal
//! login with the credentials. Objects that belong to a session (an
//! import's `HttpNfcLease`) stay reachable only through the same session.
//!
//! Idempotent calls (property reads, `CurrentTime`, `Login`) are retried on
//! transient failures (network errors, HTTP 5xx without a SOAP fault, 429,
//! `HostCommunication` faults) with the client's [`Backoff`]. Calls that
//! change something are sent once; if the transport fails or a 5xx comes
//! back after the request went out, the error says the outcome is unknown
//! (a task may have started) and is not retryable. Faults map to core
//! errors as [`fault_to_error`] says.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_vsphere::Client;
//!
//! let client = Client::builder("https://vcenter.example.com")
//!     .credentials("administrator@vsphere.local", "secret")
//!     // Trust the server by its certificate thumbprint, as vSphere shows it:
//!     .pin_thumbprint("5E:2A:…:9C")
//!     .connect()
//!     .await?;
//! println!("connected to {}", client.service_content().about.full_name);
//! client.logout().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hypersdk_core::error::redact_url;
use hypersdk_core::retry::{Backoff, retry};
use hypersdk_core::{Error, Result};
use url::Url;

use crate::soap::{Node, Request, SoapResponse, VimFault, parse_document, parse_response};
use crate::types::{
    MoRef, ObjectSpec, PropertyFilterSpec, PropertySpec, RetrieveResult, ServiceContent,
};
use hypersdk_core::tls::{Thumbprint, TlsTrust, tls_failure};

/// The session cookie's name.
const COOKIE_NAME: &str = "vmware_soap_session";
/// SOAPAction version used before the server has said which it speaks.
const FALLBACK_API_VERSION: &str = "6.5";
/// Largest response body read (a page of 500 VMs is a few MB).
const MAX_BODY: usize = 64 << 20;
/// Bodies at least this large are parsed on the blocking pool, not on the
/// async worker.
const PARSE_INLINE_MAX: usize = 1 << 20;
/// Longest wait for the next bytes of a bulk transfer (NFC device URL,
/// `/folder`) before it is treated as a dropped connection.
const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Re-logins one call may do (a second one covers a session that expired
/// again right after the first).
const MAX_RELOGINS: u32 = 2;

/// A user name and password. `Debug` never shows the password.
///
/// ```
/// let c = hypersdk_vsphere::Credentials::new("root", "s3cret");
/// assert_eq!(format!("{c:?}"), r#"Credentials { username: "root", password: "***" }"#);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The cookie of a vSphere login session, in its header form
/// `vmware_soap_session="…"`: what a caller persists so that another
/// process continues the session ([`ClientBuilder::session_cookie`]), as
/// govc does with `GOVC_PERSIST_SESSION`. Whoever holds it is logged in as
/// the session's user until the session ends (logout, or the server's idle
/// timeout: 30 minutes by default on vCenter), so keep it like a password
/// for that long: in a file only its owner can read, never in logs. `Debug`
/// never shows it.
///
/// ```
/// use hypersdk_vsphere::client::SessionCookie;
/// let c = SessionCookie::new("\"52a9c1d0\"").unwrap();
/// assert_eq!(c.expose(), "vmware_soap_session=\"52a9c1d0\"");
/// assert_eq!(SessionCookie::new(c.expose()).unwrap(), c);
/// assert_eq!(format!("{c:?}"), "SessionCookie(***)");
/// assert!(SessionCookie::new("a\r\nX-Evil: 1").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCookie(String);

impl SessionCookie {
    /// A cookie as [`SessionCookie::expose`] wrote it
    /// (`vmware_soap_session=…`), or its bare value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty value or characters an HTTP
    /// header cannot carry (`;`, control characters, non-ASCII); the
    /// message does not show the value.
    pub fn new(cookie: &str) -> Result<Self> {
        let cookie = cookie.trim();
        let value = cookie
            .strip_prefix(COOKIE_NAME)
            .and_then(|rest| rest.strip_prefix('='))
            .unwrap_or(cookie)
            .trim();
        if value.is_empty() {
            return Err(Error::invalid_input("the vSphere session cookie is empty"));
        }
        if value
            .bytes()
            .any(|b| b == b';' || b.is_ascii_control() || !b.is_ascii())
        {
            return Err(Error::invalid_input(
                "the vSphere session cookie holds characters a cookie cannot carry \
                 (';', control or non-ASCII characters)",
            ));
        }
        Ok(SessionCookie(format!("{COOKIE_NAME}={value}")))
    }

    /// The cookie as sent in the `Cookie` header
    /// (`vmware_soap_session="…"`): what to persist. A secret: see the
    /// [type documentation](SessionCookie).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionCookie(***)")
    }
}

/// Options of a [`Client`]; see [`Client::builder`].
///
/// `Debug` shows no password: user-info in the URL is moved to the
/// credentials when the builder is made.
///
/// ```
/// let b = hypersdk_vsphere::Client::builder("https://root:s3cret@esx.example");
/// assert!(!format!("{b:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct ClientBuilder {
    /// The normalised endpoint, user-info removed (or why it is invalid).
    url: std::result::Result<Url, String>,
    /// Credentials taken from the URL's user-info.
    url_credentials: Option<Credentials>,
    credentials: Option<Credentials>,
    session_cookie: Option<SessionCookie>,
    tls: TlsTrust,
    allow_plain_http: bool,
    config_error: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    keep_alive: Option<Duration>,
    backoff: Backoff,
    task_poll: Backoff,
    task_timeout: Option<Duration>,
    page_size: u32,
    api_version: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match &self.url {
            Ok(u) => redact_url(u.as_str()),
            Err(_) => "<invalid>".to_owned(),
        };
        f.debug_struct("ClientBuilder")
            .field("url", &url)
            .field(
                "credentials",
                &self.credentials.as_ref().or(self.url_credentials.as_ref()),
            )
            .field(
                "session_cookie",
                &self.session_cookie.as_ref().map(|_| "***"),
            )
            .field("tls", &self.tls)
            .field("allow_plain_http", &self.allow_plain_http)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("page_size", &self.page_size)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    fn new(url: &str) -> Self {
        let (url, url_credentials) = match normalize_url(url) {
            Ok((u, c)) => (Ok(u), c),
            // The message is already scrubbed of user-info.
            Err(e) => (Err(e.to_string()), None),
        };
        ClientBuilder {
            url,
            url_credentials,
            credentials: None,
            session_cookie: None,
            tls: TlsTrust::default(),
            allow_plain_http: false,
            config_error: None,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            keep_alive: None,
            backoff: Backoff::default()
                .with_initial(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_attempts(Some(5)),
            task_poll: Backoff::unlimited()
                .with_initial(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter(0.2),
            task_timeout: Some(Duration::from_secs(3600)),
            page_size: 500,
            api_version: None,
        }
    }

    /// The user and password to log in with. Credentials in the URL's
    /// user-info part are used when none are given here.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some(Credentials::new(username, password));
        self
    }

    /// Continues the login session of `cookie` (from
    /// [`Client::session_cookie`], maybe of another process) instead of
    /// logging in: `connect` checks it with one read of
    /// `SessionManager.currentSession` and reuses it when the server still
    /// knows it ([`Client::session_reused`]), else logs in with the
    /// credentials as usual. Objects that belong to the session, such as an
    /// import's `HttpNfcLease`, are reachable only when it was reused.
    ///
    /// Credentials are optional with a cookie: without them a session the
    /// server no longer knows makes `connect` fail with
    /// [`Error::Unauthenticated`], and so does a later expiry (nothing to
    /// log in with).
    pub fn session_cookie(mut self, cookie: SessionCookie) -> Self {
        self.session_cookie = Some(cookie);
        self
    }

    /// Trusts only this CA certificate (PEM); may be called several times.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        let r = self.tls.add_ca_pem(pem.as_ref());
        self.check(r)
    }

    /// Trusts exactly the server certificate with this SHA-1 or SHA-256
    /// thumbprint (`AA:BB:…`, as vSphere shows it); may be called several
    /// times (any pin matches). Checked in the TLS handshake, before any
    /// request is sent. Replaces CA verification.
    pub fn pin_thumbprint(mut self, thumbprint: &str) -> Self {
        let r = thumbprint
            .parse::<Thumbprint>()
            .and_then(|t| self.tls.pin(t));
        self.check(r)
    }

    /// Allows an `http://` URL: no TLS at all, so the password and the
    /// session cookie travel in clear text and the server is not
    /// authenticated. Only for simulators and lab setups. Without this an
    /// `http://` URL is refused; with it, `http://` is still refused
    /// together with [`ca_pem`](ClientBuilder::ca_pem),
    /// [`pin_thumbprint`](ClientBuilder::pin_thumbprint) or
    /// [`danger_accept_invalid_certs`](ClientBuilder::danger_accept_invalid_certs),
    /// which would silently not be checked.
    pub fn danger_allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// Accepts any certificate: no protection against an impostor. Only
    /// for lab setups; prefer [`ClientBuilder::pin_thumbprint`].
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        let r = self.tls.accept_invalid();
        self.check(r)
    }

    /// Keeps the first configuration error, reported by `connect`.
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

    /// Timeout of one HTTP request (default 5 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Timeout of establishing a connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Calls `CurrentTime` whenever the session has been idle for `idle`
    /// (checked every `idle / 4`), so the server does not expire it; pick
    /// well under the server's idle timeout (vCenter: 30 minutes). Default:
    /// off; an expired session is renewed by the next call anyway.
    ///
    /// The keep-alive only pings: it never logs in. When it finds the
    /// session gone it pauses until a call has logged in again, and it
    /// stops for good once the client is logged out or a re-login was
    /// refused. `Duration::ZERO` is refused by [`ClientBuilder::connect`].
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        if idle.is_zero() {
            self.config_error = Some("keep_alive interval must be greater than zero".to_owned());
        }
        self.keep_alive = Some(idle);
        self
    }

    /// The retry policy of idempotent calls on transient failures.
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often a task is polled: the delays of this backoff (default
    /// 100 ms growing to 2 s).
    pub fn task_poll(mut self, backoff: Backoff) -> Self {
        self.task_poll = backoff;
        self
    }

    /// How long a task may run before waiting for it gives up with a
    /// timeout (default 1 hour; `None` waits forever).
    pub fn task_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.task_timeout = timeout;
        self
    }

    /// Objects per page of property reads (`maxObjects`, default 500).
    pub fn page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Sends `urn:vim25/<version>` instead of the version the server
    /// reports.
    pub fn api_version(mut self, version: &str) -> Self {
        self.api_version = Some(version.to_owned());
        self
    }

    /// Connects and logs in (or reuses the session given to
    /// [`ClientBuilder::session_cookie`] while the server still knows it).
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidInput`] for a bad URL, thumbprint, CA or TLS
    ///   combination, `http://` without
    ///   [`danger_allow_plain_http`](ClientBuilder::danger_allow_plain_http)
    ///   or with any TLS option, a zero keep-alive, or missing credentials
    ///   (without a session cookie);
    /// - [`Error::Other`] naming the TLS failure when the certificate is not
    ///   trusted (nothing was sent);
    /// - [`Error::Unauthenticated`] when the server refuses the credentials,
    ///   or the saved session is gone and there are none;
    /// - network and HTTP errors otherwise.
    pub async fn connect(self) -> Result<Client> {
        if let Some(e) = &self.config_error {
            return Err(Error::invalid_input(e.clone()));
        }
        let url = self.url.clone().map_err(Error::invalid_input)?;
        if url.scheme() == "http" {
            if !self.tls.is_system_roots() {
                return Err(Error::invalid_input(format!(
                    "vSphere URL '{url}' is plain http:// but a TLS policy ({:?}) was set: \
                     it would not be checked; use https://",
                    self.tls
                )));
            }
            if !self.allow_plain_http {
                return Err(Error::invalid_input(format!(
                    "vSphere URL '{url}' is plain http://: the password and session would travel \
                     unencrypted to an unauthenticated server; use https://, or \
                     ClientBuilder::danger_allow_plain_http for a lab"
                )));
            }
            tracing::warn!(url = %url, "vSphere client over plain HTTP: credentials travel unencrypted");
        }
        let credentials = self
            .credentials
            .clone()
            .or_else(|| self.url_credentials.clone());
        if credentials.is_none() && self.session_cookie.is_none() {
            return Err(Error::invalid_input(
                "no credentials: call ClientBuilder::credentials",
            ));
        }
        let http = self.http_client(false)?;
        let transfer_http = self.http_client(true)?;
        let url_text = url.to_string();
        let transport = Transport {
            http,
            url,
            url_text: url_text.clone(),
            timeout: self.timeout,
        };
        let version = match &self.api_version {
            Some(v) => v.clone(),
            None => retry(&self.backoff, "GET vimServiceVersions.xml", |_| {
                transport.service_version()
            })
            .await?
            .unwrap_or_else(|| FALLBACK_API_VERSION.to_owned()),
        };
        let req = Request::new(
            "RetrieveServiceContent",
            &MoRef::new("ServiceInstance", "ServiceInstance"),
        );
        let backoff = self.backoff.clone();
        let (resp, _) = retry(&backoff, "RetrieveServiceContent", |_| {
            transport.post(&req, &version, None)
        })
        .await?;
        let resp = resp.map_err(|f| fault_to_error(f, "RetrieveServiceContent"))?;
        let ovf_manager = resp
            .path(&["returnval", "ovfManager"])
            .and_then(Node::as_moref);
        let service = resp
            .child("returnval")
            .and_then(ServiceContent::from_node)
            .ok_or_else(|| {
                Error::invalid_data(
                    "vSphere service content",
                    "RetrieveServiceContent returned no rootFolder/propertyCollector/sessionManager",
                )
            })?;
        let api_version = match &self.api_version {
            Some(v) => v.clone(),
            None if !service.about.api_version.is_empty() => service.about.api_version.clone(),
            None => version,
        };
        tracing::debug!(
            url = %url_text,
            api_type = %service.about.api_type,
            api_version = %api_version,
            "vSphere service content read"
        );
        let reused = match &self.session_cookie {
            Some(saved) => {
                let user = credentials.as_ref().map(|c| c.username.as_str());
                let live = check_session(
                    &transport,
                    &api_version,
                    &service,
                    &self.backoff,
                    saved,
                    user,
                )
                .await?;
                if live.is_none() {
                    tracing::info!(url = %url_text, "the saved vSphere session cannot be used; logging in");
                }
                live
            }
            None => None,
        };
        let session_reused = reused.is_some();
        let session = Session {
            generation: u64::from(session_reused),
            cookie: reused,
            refused: None,
        };
        let inner = Arc::new(Inner {
            transport,
            transfer_http,
            ovf_manager,
            credentials,
            service,
            api_version,
            session_reused,
            session: Mutex::new(session),
            login_lock: tokio::sync::Mutex::new(()),
            backoff: self.backoff,
            task_poll: self.task_poll,
            task_timeout: self.task_timeout,
            page_size: self.page_size,
            last_used: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        });
        let client = Client { inner };
        if session_reused {
            tracing::debug!(url = %client.url(), "vSphere session reused");
        } else {
            client.login().await?;
        }
        if let Some(idle) = self.keep_alive {
            spawn_keep_alive(Arc::downgrade(&client.inner), idle);
        }
        Ok(client)
    }

    /// The HTTP client of SOAP calls, or (`transfer`) of bulk transfers:
    /// the same TLS policy, but no total request timeout (a multi-gigabyte
    /// body takes as long as it takes) and an idle read timeout instead.
    fn http_client(&self, transfer: bool) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .http1_only()
            .connect_timeout(self.connect_timeout);
        b = if transfer {
            b.read_timeout(self.timeout.min(TRANSFER_IDLE_TIMEOUT))
                .tcp_nodelay(true)
                .pool_max_idle_per_host(16)
        } else {
            b.timeout(self.timeout)
        };
        b = b
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hypersdk-vsphere/", env!("CARGO_PKG_VERSION")));
        let peer = match &self.url {
            Ok(u) => redact_url(u.as_str()),
            Err(_) => "vSphere".to_owned(),
        };
        b = self.tls.apply(b, &peer)?;
        b.build().map_err(|e| Error::Other {
            message: format!("building the HTTP client: {e}"),
            source: Some(Box::new(e)),
        })
    }
}

/// Whether the server still knows the session of `saved`: one read of
/// `SessionManager.currentSession` with it (retried on transient
/// failures). Returns the cookie to go on with (a new one if the server
/// sent one), or `None` when the session is gone (`NotAuthenticated` as a
/// fault or, as vcsim answers, in `missingSet`; or no `currentSession`) or
/// belongs to another user than `user` (the credentials'), which is not
/// reused either.
async fn check_session(
    transport: &Transport,
    version: &str,
    service: &ServiceContent,
    backoff: &Backoff,
    saved: &SessionCookie,
    user: Option<&str>,
) -> Result<Option<String>> {
    let spec = PropertyFilterSpec::new(
        vec![PropertySpec::new("SessionManager", ["currentSession"])],
        vec![ObjectSpec::new(service.session_manager.clone())],
    );
    let mut req = Request::new("RetrievePropertiesEx", &service.property_collector);
    spec.write(&mut req, "specSet");
    req.start("options").int("maxObjects", 1).end();
    let (resp, new_cookie) = retry(backoff, "checking the saved vSphere session", |_| {
        transport.post(&req, version, Some(saved.expose()))
    })
    .await?;
    let node = match resp {
        Ok(n) => n,
        Err(f) if f.is("NotAuthenticated") => return Ok(None),
        Err(f) => return Err(fault_to_error(f, "checking the saved vSphere session")),
    };
    if missing_not_authenticated(&node) {
        return Ok(None);
    }
    let result = RetrieveResult::from_response(node);
    let Some(current) = result
        .objects
        .iter()
        .filter(|o| o.obj == service.session_manager)
        .filter_map(|o| o.prop("currentSession"))
        .find(|s| !s.children.is_empty() || !s.text.trim().is_empty())
    else {
        return Ok(None);
    };
    if let (Some(user), Some(owner)) = (user, current.text_at(&["userName"]))
        && !same_user(owner, user)
    {
        tracing::warn!(
            session_user = %owner,
            user = %user,
            "the saved vSphere session belongs to another user: not reusing it"
        );
        return Ok(None);
    }
    Ok(Some(
        new_cookie.unwrap_or_else(|| saved.expose().to_owned()),
    ))
}

/// Whether the `userName` of a session and a login name are the same user,
/// whatever the spelling of the domain: `VSPHERE.LOCAL\Administrator` is
/// `administrator@vsphere.local`, `CORP\jdoe` is `jdoe@corp.example.com`;
/// a name without a domain matches any.
fn same_user(session_user: &str, login: &str) -> bool {
    fn split(u: &str) -> (String, Option<String>) {
        let u = u.trim().to_lowercase();
        if let Some((domain, name)) = u.split_once('\\') {
            return (name.to_owned(), Some(domain.to_owned()));
        }
        if let Some((name, domain)) = u.rsplit_once('@') {
            return (name.to_owned(), Some(domain.to_owned()));
        }
        (u, None)
    }
    let (a, a_domain) = split(session_user);
    let (b, b_domain) = split(login);
    let first = |d: &str| d.split('.').next().unwrap_or_default().to_owned();
    a == b
        && match (a_domain, b_domain) {
            (Some(x), Some(y)) => x == y || first(&x) == first(&y),
            _ => true,
        }
}

/// `https://host` → `https://host/sdk`; user-info is taken out.
fn normalize_url(input: &str) -> Result<(Url, Option<Credentials>)> {
    let with_scheme = if input.contains("://") {
        input.to_owned()
    } else {
        format!("https://{input}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| {
        Error::invalid_input(format!(
            "vSphere URL '{}' is not valid: {e}",
            scrub_userinfo(&with_scheme)
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(Error::invalid_input(format!(
            "vSphere URL '{}' must be https://host[:port][/sdk]",
            redact_url(url.as_str())
        )));
    }
    let creds = if url.username().is_empty() {
        None
    } else {
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some(Credentials::new(
            dec(url.username()),
            dec(url.password().unwrap_or_default()),
        ))
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/sdk");
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok((url, creds))
}

/// Removes `user:password@` from a string that did not parse as a URL
/// (where [`redact_url`] cannot help).
fn scrub_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => s.to_owned(),
    }
}

/// The HTTP side: one pooled reqwest client and the endpoint.
#[derive(Debug)]
struct Transport {
    http: reqwest::Client,
    url: Url,
    url_text: String,
    timeout: Duration,
}

/// What one POST gave: the response or fault, and a new session cookie.
type Posted = (std::result::Result<Node, VimFault>, Option<String>);

impl Transport {
    fn transport_error(&self, e: reqwest::Error) -> Error {
        if let Some(why) = tls_failure(&e) {
            return Error::Other {
                message: format!(
                    "TLS handshake with {} failed, nothing was sent: {why}",
                    self.url_text
                ),
                source: Some(Box::new(e)),
            };
        }
        if e.is_timeout() {
            return Error::Timeout {
                operation: format!("POST {}", self.url_text),
                after: self.timeout,
            };
        }
        Error::network(&self.url_text, e.to_string(), Some(Box::new(e)))
    }

    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Error::invalid_data(
                    self.url_text.clone(),
                    format!("response larger than {MAX_BODY} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The newest `urn:vim25` version in `/sdk/vimServiceVersions.xml`, if
    /// the server has that file.
    async fn service_version(&self) -> Result<Option<String>> {
        let mut url = self.url.clone();
        url.set_path("/sdk/vimServiceVersions.xml");
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let body = self.read_body(resp).await?;
        let Ok(doc) = parse_document(&body) else {
            return Ok(None);
        };
        Ok(doc
            .children_named("namespace")
            .find(|n| n.text_at(&["name"]).map(str::trim) == Some("urn:vim25"))
            .and_then(|n| n.text_at(&["version"]))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()))
    }

    /// POSTs one call; a SOAP fault is `Ok((Err(fault), _))`.
    async fn post(&self, req: &Request, version: &str, cookie: Option<&str>) -> Result<Posted> {
        let body = req.to_envelope()?;
        let mut rb = self
            .http
            .post(self.url.clone())
            .header(http_header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", format!("urn:vim25/{version}"))
            .body(body);
        if let Some(c) = cookie {
            rb = rb.header(http_header::COOKIE, c);
        }
        tracing::trace!(method = req.method(), "vSphere SOAP call");
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http_header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let new_cookie = resp
            .headers()
            .get_all(http_header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim())
            .find(|pair| {
                pair.split_once('=')
                    .is_some_and(|(n, _)| n.trim() == COOKIE_NAME)
            })
            .map(str::to_owned);
        let body = self.read_body(resp).await?;
        let (parsed, body) = if matches!(status, 200 | 500) {
            parse_body(body).await
        } else {
            (Err(Error::other("not parsed")), body)
        };
        let detail = || format!("{}: {}", req.method(), String::from_utf8_lossy(&body));
        match status {
            200 => match parsed? {
                SoapResponse::Ok(n) => Ok((Ok(n), new_cookie)),
                SoapResponse::Fault(f) => Ok((Err(f), new_cookie)),
            },
            500 => match parsed {
                Ok(SoapResponse::Fault(f)) => Ok((Err(f), new_cookie)),
                _ => Err(Error::from_http_status(
                    "POST",
                    &self.url_text,
                    status,
                    retry_after,
                    &detail(),
                )),
            },
            _ => Err(Error::from_http_status(
                "POST",
                &self.url_text,
                status,
                retry_after,
                &detail(),
            )),
        }
    }
}

/// Parses a response body, on the blocking pool when it is large (a page
/// of hundreds of VMs takes tens of milliseconds to parse). The body is
/// handed back for error messages.
async fn parse_body(body: Vec<u8>) -> (Result<SoapResponse>, Vec<u8>) {
    if body.len() < PARSE_INLINE_MAX {
        let parsed = parse_response(&body);
        return (parsed, body);
    }
    match tokio::task::spawn_blocking(move || {
        let parsed = parse_response(&body);
        (parsed, body)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => (
            Err(Error::Other {
                message: format!("parsing a vSphere response failed: {e}"),
                source: Some(Box::new(e)),
            }),
            Vec::new(),
        ),
    }
}

/// Whether the request behind `e` may have reached the server: false only
/// for failures to connect at all.
fn maybe_sent(e: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            return !r.is_connect();
        }
        cur = err.source();
    }
    true
}

/// The error of a call that changes something when it failed in a way that
/// is normally worth retrying: it may have run, so it is not retryable.
fn unknown_outcome(method: &str, e: Error) -> Error {
    if !e.is_retryable() || !maybe_sent(&e) || matches!(e, Error::HttpStatus { status: 429, .. }) {
        return e;
    }
    Error::Other {
        message: format!(
            "{method}: outcome unknown: the request may have reached the server and taken \
             effect (a task may have started); check before repeating it: {e}"
        ),
        source: Some(Box::new(e)),
    }
}

/// Faults that say the server could not reach a host for a moment.
fn is_transient_fault(f: &VimFault) -> bool {
    matches!(
        f.fault_type.as_str(),
        "HostCommunication" | "HostNotConnected" | "HostNotReachable"
    )
}

mod http_header {
    pub(super) use reqwest::header::{CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE};
}

#[derive(Default)]
struct Session {
    cookie: Option<String>,
    /// Bumped by every successful login.
    generation: u64,
    /// Set when a re-login was refused: calls fail with it, without trying
    /// to log in again, until [`Client::reconnect`].
    refused: Option<Refusal>,
}

/// A refused login, remembered.
#[derive(Clone)]
struct Refusal {
    message: String,
    fault: Option<VimFault>,
}

impl Refusal {
    fn to_error(&self, url: &str) -> Error {
        Error::Unauthenticated {
            object: format!(
                "{url} (an earlier re-login was refused: {}; no new login is tried until \
                 Client::reconnect)",
                self.message
            ),
            source: self
                .fault
                .clone()
                .map(|f| -> hypersdk_core::error::BoxError { Box::new(f) }),
        }
    }
}

/// How a call is made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Safe to repeat: retried on transient failures, repeated after a
    /// re-login.
    Idempotent,
    /// Tied to the session (a paging token): sent once, transient errors
    /// returned as they are, not repeated after a re-login (the error says
    /// the session changed; the caller starts over).
    SessionBound,
    /// Changes something: sent once; a transient failure after sending is
    /// an "outcome unknown" error. Repeated after a re-login, since the
    /// server refused it unrun.
    Mutating,
}

struct Inner {
    transport: Transport,
    /// Bulk transfers: same TLS trust, no total timeout.
    transfer_http: reqwest::Client,
    /// `ServiceContent.ovfManager` (`OvfManager` on vCenter,
    /// `ha-ovf-manager` on ESXi).
    ovf_manager: Option<MoRef>,
    /// `None` only when connected with a session cookie alone.
    credentials: Option<Credentials>,
    service: ServiceContent,
    api_version: String,
    /// Whether `connect` reused the session of a saved cookie.
    session_reused: bool,
    session: Mutex<Session>,
    login_lock: tokio::sync::Mutex<()>,
    backoff: Backoff,
    task_poll: Backoff,
    task_timeout: Option<Duration>,
    page_size: u32,
    last_used: Mutex<Instant>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let cookie = lock(&self.session).cookie.take();
        let (Some(cookie), Ok(rt)) = (cookie, tokio::runtime::Handle::try_current()) else {
            return;
        };
        // Best effort: log the session out so it does not linger on the
        // server until its idle timeout.
        let transport = Transport {
            http: self.transport.http.clone(),
            url: self.transport.url.clone(),
            url_text: self.transport.url_text.clone(),
            timeout: self.transport.timeout,
        };
        let version = self.api_version.clone();
        let req = Request::new("Logout", &self.service.session_manager);
        rt.spawn(async move {
            let _ = transport.post(&req, &version, Some(&cookie)).await;
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spawn_keep_alive(weak: Weak<Inner>, idle: Duration) {
    let check = (idle / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        // The generation whose session the keep-alive found gone: no pings
        // until a call has logged in again (the keep-alive never does).
        let mut gone: Option<u64> = None;
        loop {
            tokio::time::sleep(check).await;
            let Some(inner) = weak.upgrade() else { break };
            if inner.closed.load(Ordering::Relaxed) {
                break;
            }
            let (cookie, generation, refused) = {
                let s = lock(&inner.session);
                (s.cookie.clone(), s.generation, s.refused.is_some())
            };
            if refused {
                tracing::debug!("vSphere keep-alive stops: the re-login was refused");
                break;
            }
            if gone == Some(generation) {
                continue;
            }
            gone = None;
            let Some(cookie) = cookie else { continue };
            if lock(&inner.last_used).elapsed() < idle {
                continue;
            }
            // Do not keep the client alive through the sleep: `client`
            // drops at the end of this iteration.
            let client = Client { inner };
            match client.ping(&cookie, generation).await {
                Ok(()) => {}
                Err(e) if e.kind() == hypersdk_core::ErrorKind::Unauthenticated => {
                    tracing::debug!(
                        "vSphere keep-alive found the session gone; paused until the next login"
                    );
                    gone = Some(generation);
                }
                Err(e) => tracing::debug!(error = %e, "vSphere keep-alive failed"),
            }
        }
    });
}

/// A logged-in vim25 client. Cheap to clone (shared session and HTTP
/// pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.transport.url_text)
            .field(
                "username",
                &self.inner.credentials.as_ref().map(Credentials::username),
            )
            .field("session_reused", &self.inner.session_reused)
            .field("api_type", &self.inner.service.about.api_type)
            .field("api_version", &self.inner.api_version)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Options for a client of the server at `url` (`https://host`,
    /// `https://host:port/sdk` or just `host`). User-info in the URL
    /// (`https://user:password@host`) is taken out of it at once and used
    /// as the credentials unless [`ClientBuilder::credentials`] is called.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The service content read at connect time.
    pub fn service_content(&self) -> &ServiceContent {
        &self.inner.service
    }

    /// The API version sent in `SOAPAction`.
    pub fn api_version(&self) -> &str {
        &self.inner.api_version
    }

    /// The SOAP endpoint URL (no credentials in it).
    pub fn url(&self) -> &str {
        &self.inner.transport.url_text
    }

    /// The reqwest client for bulk transfers (NFC device URLs,
    /// `/folder`): the same TLS trust and pinning as the SOAP calls, its own
    /// connection pool, no total request timeout (an idle read timeout of
    /// at most 2 minutes instead), no redirects.
    pub fn transfer_http(&self) -> &reqwest::Client {
        &self.inner.transfer_http
    }

    /// An [`HttpAuth`](hypersdk_core::blocks::HttpAuth) sending this
    /// client's session cookie (`vmware_soap_session=…`) with every
    /// request; its `refresh()` (after a `401`) logs in again once, shared
    /// with every other call that found the session expired.
    pub fn session_auth(&self) -> Arc<dyn hypersdk_core::blocks::HttpAuth> {
        Arc::new(SessionAuth {
            client: self.clone(),
            seen: std::sync::atomic::AtomicU64::new(self.session_generation()),
        })
    }

    /// The `host[:port]` of the SOAP URL (the port only when it is not the
    /// scheme's default; IPv6 hosts in brackets): what replaces the `*`
    /// host of lease device URLs.
    pub fn host_port(&self) -> String {
        let url = &self.inner.transport.url;
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// The `OvfManager` of the service content (`CreateDescriptor`,
    /// `CreateImportSpec`); `None` when the server has none.
    pub fn ovf_manager(&self) -> Option<&MoRef> {
        self.inner.ovf_manager.as_ref()
    }

    /// The base URL `scheme://host[:port]/` of the server (no path, no
    /// credentials).
    pub fn base_url(&self) -> Url {
        let mut url = self.inner.transport.url.clone();
        url.set_path("/");
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    pub(crate) fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    pub(crate) fn backoff(&self) -> &Backoff {
        &self.inner.backoff
    }

    pub(crate) fn task_poll(&self) -> &Backoff {
        &self.inner.task_poll
    }

    pub(crate) fn task_timeout(&self) -> Option<Duration> {
        self.inner.task_timeout
    }

    /// How many sessions this client has used: 1 after connecting (by a
    /// login or a reused session), +1 per re-login after a session expired.
    pub fn session_generation(&self) -> u64 {
        lock(&self.inner.session).generation
    }

    /// Whether `connect` reused the session of the cookie given to
    /// [`ClientBuilder::session_cookie`] (rather than logging in): objects
    /// of that session, such as an import lease, are reachable. Stays true
    /// after a later re-login; compare [`Client::session_generation`]
    /// with 1 to know whether the session is still the reused one.
    pub fn session_reused(&self) -> bool {
        self.inner.session_reused
    }

    /// The current session's cookie, to persist for
    /// [`ClientBuilder::session_cookie`] (it changes after a re-login);
    /// `None` once logged out. A secret: see [`SessionCookie`].
    pub fn session_cookie(&self) -> Option<SessionCookie> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.inner.session)
            .cookie
            .as_deref()
            .and_then(|c| SessionCookie::new(c).ok())
    }

    /// Stops using the session **without logging it out**, so that
    /// another process can continue it with the returned cookie (what a
    /// process that hands over an import lease does before it exits:
    /// dropping the last clone of a client logs its session out). Later
    /// calls on this client and its clones fail with
    /// [`Error::Unauthenticated`]; the keep-alive stops. The session lives
    /// on the server until its idle timeout.
    pub fn leave_session(&self) -> Option<SessionCookie> {
        if self.inner.closed.swap(true, Ordering::Relaxed) {
            return None;
        }
        let cookie = lock(&self.inner.session).cookie.take();
        cookie.and_then(|c| SessionCookie::new(&c).ok())
    }

    fn session(&self) -> (Option<String>, u64) {
        let s = lock(&self.inner.session);
        (s.cookie.clone(), s.generation)
    }

    /// Fails when no call may be sent: logged out, or a re-login was
    /// refused.
    fn check_usable(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(self.logged_out());
        }
        match &lock(&self.inner.session).refused {
            Some(r) => Err(r.to_error(self.url())),
            None => Ok(()),
        }
    }

    fn logged_out(&self) -> Error {
        Error::Unauthenticated {
            object: format!("{} (client logged out)", self.url()),
            source: None,
        }
    }

    fn store_cookie(&self, cookie: Option<String>, generation: u64) {
        if let Some(c) = cookie {
            if self.inner.closed.load(Ordering::Relaxed) {
                return;
            }
            let mut s = lock(&self.inner.session);
            if s.generation == generation {
                s.cookie = Some(c);
            }
        }
    }

    /// Logs in (dropping any old cookie first: vcsim refuses a Login that
    /// carries a live session). Callers hold the login lock.
    async fn login(&self) -> Result<()> {
        let inner = &self.inner;
        let Some(credentials) = &inner.credentials else {
            return Err(Error::Unauthenticated {
                object: format!(
                    "{} (the saved session is gone and no credentials were given to log in \
                     again)",
                    self.url()
                ),
                source: None,
            });
        };
        let mut req = Request::new("Login", &inner.service.session_manager);
        req.text("userName", &credentials.username)
            .text("password", &credentials.password);
        let what = format!(
            "vSphere login of '{}' at {}",
            credentials.username,
            self.url()
        );
        let (resp, cookie) = retry(&inner.backoff, "vSphere Login", |_| {
            inner.transport.post(&req, &inner.api_version, None)
        })
        .await?;
        resp.map_err(|f| fault_to_error(f, &what))?;
        let cookie = cookie.ok_or_else(|| {
            Error::invalid_data(what.clone(), "Login succeeded without a session cookie")
        })?;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(self.logged_out());
        }
        {
            let mut s = lock(&inner.session);
            s.cookie = Some(cookie);
            s.generation += 1;
            s.refused = None;
        }
        *lock(&inner.last_used) = Instant::now();
        tracing::debug!(user = %credentials.username, url = %self.url(), "vSphere session opened");
        Ok(())
    }

    /// Logs in again unless another call already did since `seen`. A
    /// refused login is remembered (see [`Client::reconnect`]).
    async fn relogin(&self, seen: u64) -> Result<()> {
        let _guard = self.inner.login_lock.lock().await;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(self.logged_out());
        }
        {
            let mut s = lock(&self.inner.session);
            if let Some(r) = &s.refused {
                return Err(r.to_error(self.url()));
            }
            if s.generation != seen {
                return Ok(());
            }
            s.cookie = None;
        }
        tracing::info!(url = %self.url(), "vSphere session expired; logging in again");
        self.login_remembering_refusal().await
    }

    async fn login_remembering_refusal(&self) -> Result<()> {
        let result = self.login().await;
        if let Err(e) = &result
            && e.kind() == hypersdk_core::ErrorKind::Unauthenticated
        {
            tracing::warn!(url = %self.url(), error = %e, "vSphere re-login refused; not trying again until reconnect()");
            lock(&self.inner.session).refused = Some(Refusal {
                message: e.to_string(),
                fault: vim_fault(e).cloned(),
            });
        }
        result
    }

    /// Logs in anew, e.g. after a re-login was refused (wrong or expired
    /// password fixed on the server): forgets the refusal, logs the old
    /// session out (best effort) and logs in.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] when the server refuses the credentials
    /// (remembered again) or the client was logged out; network errors.
    pub async fn reconnect(&self) -> Result<()> {
        let _guard = self.inner.login_lock.lock().await;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(self.logged_out());
        }
        let old = {
            let mut s = lock(&self.inner.session);
            s.refused = None;
            s.cookie.take()
        };
        if let Some(cookie) = old {
            let req = Request::new("Logout", &self.inner.service.session_manager);
            if let Err(e) = self
                .inner
                .transport
                .post(&req, &self.inner.api_version, Some(&cookie))
                .await
            {
                tracing::debug!(error = %e, "Logout of the old vSphere session failed");
            }
        }
        self.login_remembering_refusal().await
    }

    /// The keep-alive's ping: `CurrentTime` with `cookie`, once, never a
    /// login.
    async fn ping(&self, cookie: &str, generation: u64) -> Result<()> {
        let req = Request::new(
            "CurrentTime",
            &MoRef::new("ServiceInstance", "ServiceInstance"),
        );
        let (resp, new_cookie) = self
            .inner
            .transport
            .post(&req, &self.inner.api_version, Some(cookie))
            .await?;
        match resp {
            Ok(_) => {
                self.store_cookie(new_cookie, generation);
                *lock(&self.inner.last_used) = Instant::now();
                Ok(())
            }
            Err(f) => Err(fault_to_error(f, "keep-alive CurrentTime")),
        }
    }

    /// Calls a method that changes nothing (or is safe to repeat): retried
    /// on transient failures.
    pub async fn invoke_idempotent(&self, req: &Request) -> Result<Node> {
        self.invoke_with(req, Mode::Idempotent).await
    }

    /// Calls a method once (no retry on transient failures: it may have
    /// taken effect). A call that found the session expired is repeated
    /// after logging in again, since the server did not run it.
    ///
    /// # Errors
    ///
    /// Besides the mapped fault: when the transport fails or the server
    /// answers a 5xx after the request was sent, an [`Error::Other`] that
    /// is **not** retryable and says the outcome is unknown (the method
    /// may have run; a task may have started).
    pub async fn invoke(&self, req: &Request) -> Result<Node> {
        self.invoke_with(req, Mode::Mutating).await
    }

    /// Calls a method tied to the current session (a paging token): once,
    /// transient errors returned unchanged, and after a re-login not
    /// repeated but failed with [`Error::Unauthenticated`] (the token
    /// belonged to the old session; start over).
    pub(crate) async fn invoke_session_bound(&self, req: &Request) -> Result<Node> {
        self.invoke_with(req, Mode::SessionBound).await
    }

    async fn invoke_with(&self, req: &Request, mode: Mode) -> Result<Node> {
        let mut relogins = 0u32;
        loop {
            self.check_usable()?;
            let (cookie, generation) = self.session();
            let attempt = || async {
                let (resp, new_cookie) = self
                    .inner
                    .transport
                    .post(req, &self.inner.api_version, cookie.as_deref())
                    .await?;
                match resp {
                    // A host vCenter could not reach for a moment: retried
                    // like a transport failure (only idempotent calls are).
                    Err(f) if mode == Mode::Idempotent && is_transient_fault(&f) => {
                        self.store_cookie(new_cookie, generation);
                        Err(fault_to_error(f, req.method()))
                    }
                    resp => Ok((resp, new_cookie)),
                }
            };
            let posted = if mode == Mode::Idempotent {
                retry(&self.inner.backoff, req.method(), |_| attempt()).await
            } else {
                attempt().await
            };
            let (resp, new_cookie) = match posted {
                Ok(p) => p,
                Err(e) if mode == Mode::Mutating => return Err(unknown_outcome(req.method(), e)),
                Err(e) => return Err(e),
            };
            self.store_cookie(new_cookie, generation);
            *lock(&self.inner.last_used) = Instant::now();
            let expired = match &resp {
                Err(f) => f.is("NotAuthenticated"),
                Ok(n) => missing_not_authenticated(n),
            };
            if expired && relogins < MAX_RELOGINS {
                self.relogin(generation).await?;
                relogins += 1;
                if mode == Mode::SessionBound {
                    return Err(Error::Unauthenticated {
                        object: format!(
                            "{} ({}: the session was renewed; this call belonged to the old one)",
                            self.url(),
                            req.method()
                        ),
                        source: resp
                            .err()
                            .map(|f| -> hypersdk_core::error::BoxError { Box::new(f) }),
                    });
                }
                continue;
            }
            return match resp {
                Ok(_) if expired => Err(Error::Unauthenticated {
                    object: format!("{} ({})", self.url(), req.method()),
                    source: Some(Box::new(VimFault::new(
                        "NotAuthenticated",
                        "property read refused after a new login",
                    ))),
                }),
                Ok(n) => Ok(n),
                Err(f) => {
                    let e = fault_to_error(f, req.method());
                    Err(if mode == Mode::Mutating {
                        unknown_outcome(req.method(), e)
                    } else {
                        e
                    })
                }
            };
        }
    }

    /// Logs out. Later calls fail with `Unauthenticated` without sending
    /// anything.
    pub async fn logout(&self) -> Result<()> {
        let _guard = self.inner.login_lock.lock().await;
        if self.inner.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let cookie = lock(&self.inner.session).cookie.take();
        let Some(cookie) = cookie else { return Ok(()) };
        let req = Request::new("Logout", &self.inner.service.session_manager);
        let (resp, _) = self
            .inner
            .transport
            .post(&req, &self.inner.api_version, Some(&cookie))
            .await?;
        match resp {
            Ok(_) => Ok(()),
            // Already gone: nothing to log out.
            Err(f) if f.is("NotAuthenticated") => Ok(()),
            Err(f) => Err(fault_to_error(f, "Logout")),
        }
    }
}

/// The [`HttpAuth`](hypersdk_core::blocks::HttpAuth) of
/// [`Client::session_auth`].
struct SessionAuth {
    client: Client,
    /// The session generation whose cookie was last handed out.
    seen: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionAuth")
            .field("url", &self.client.url())
            .field("cookie", &"***")
            .finish()
    }
}

#[async_trait::async_trait]
impl hypersdk_core::blocks::HttpAuth for SessionAuth {
    async fn headers(&self) -> Result<reqwest::header::HeaderMap> {
        self.client.check_usable()?;
        let (cookie, generation) = self.client.session();
        self.seen.store(generation, Ordering::Relaxed);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(cookie) = cookie {
            let mut value = reqwest::header::HeaderValue::from_str(&cookie).map_err(|_| {
                Error::invalid_data(
                    self.client.url(),
                    "the session cookie is not a valid header",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(http_header::COOKIE, value);
        }
        Ok(headers)
    }

    async fn refresh(&self) -> Result<bool> {
        let seen = self.seen.load(Ordering::Relaxed);
        self.client.relogin(seen).await?;
        Ok(true)
    }
}

/// Whether a property read answered `NotAuthenticated` inside `missingSet`
/// (vcsim's answer to a read without a session).
fn missing_not_authenticated(resp: &Node) -> bool {
    let Some(rv) = resp.child("returnval") else {
        return false;
    };
    rv.children_named("objects").any(|o| {
        o.children_named("missingSet").any(|m| {
            m.path(&["fault", "fault"])
                .is_some_and(|f| f.type_name() == "NotAuthenticated")
        })
    })
}

/// Maps a vSphere fault met while doing `context` to a core error; the
/// fault is kept as the source where the variant has one.
///
/// Subtypes are listed where they matter (vim25 faults arrive by their
/// most derived type).
///
/// | fault | error |
/// |---|---|
/// | `InvalidLogin` and its subtypes `PasswordExpired`, `InvalidClientCertificate`; `NotAuthenticated` | [`Error::Unauthenticated`] |
/// | `NoPermission` | [`Error::PermissionDenied`] |
/// | `ManagedObjectNotFound` | [`Error::NotFound`] naming the object |
/// | `NotFound`, `FileNotFound` | [`Error::NotFound`] |
/// | `HostCommunication`, `HostNotConnected`, `HostNotReachable` | [`Error::Network`], **retryable** (a host vCenter could not reach for a moment) |
/// | `DuplicateName`, `AlreadyExists`, `FileAlreadyExists` | [`Error::AlreadyExists`] |
/// | `InvalidPowerState`, `InvalidState`, `TaskInProgress`, `ConcurrentAccess` | [`Error::Conflict`] |
/// | `NotSupported`, `MethodNotFound` | [`Error::Unsupported`] |
/// | `RequestCanceled` | [`Error::Cancelled`] |
/// | anything else | [`Error::Other`] with the fault name and message |
///
/// Only the host-communication faults are retryable, and the client
/// retries them for idempotent calls only: a call that changes something
/// and meets one fails with a non-retryable "outcome unknown" error
/// ([`Client::invoke`]).
pub fn fault_to_error(fault: VimFault, context: &str) -> Error {
    let with = |f: VimFault| -> Option<hypersdk_core::error::BoxError> { Some(Box::new(f)) };
    match fault.fault_type.as_str() {
        "InvalidLogin" | "PasswordExpired" | "InvalidClientCertificate" | "NotAuthenticated" => {
            Error::Unauthenticated {
                object: context.to_owned(),
                source: with(fault),
            }
        }
        "NotFound" | "FileNotFound" => Error::NotFound {
            object: match fault.detail.as_ref().and_then(|d| d.text_at(&["file"])) {
                Some(file) => format!("{context}: file '{file}'"),
                None => format!("{context} ({fault})"),
            },
            source: with(fault),
        },
        "HostCommunication" | "HostNotConnected" | "HostNotReachable" => Error::Network {
            target: context.to_owned(),
            message: fault.to_string(),
            source: with(fault),
        },
        "NoPermission" => Error::PermissionDenied {
            object: context.to_owned(),
            source: with(fault),
        },
        "ManagedObjectNotFound" => Error::NotFound {
            object: match fault.object() {
                Some(o) => o.to_string(),
                None => context.to_owned(),
            },
            source: with(fault),
        },
        "DuplicateName" | "AlreadyExists" | "FileAlreadyExists" => {
            Error::already_exists(format!("{context} ({fault})"))
        }
        "InvalidPowerState" | "InvalidState" | "TaskInProgress" | "ConcurrentAccess" => {
            Error::Conflict {
                object: context.to_owned(),
                message: fault.to_string(),
            }
        }
        "NotSupported" | "MethodNotFound" => {
            Error::unsupported(format!("{context} ({fault})"), "vsphere")
        }
        "RequestCanceled" => Error::cancelled(context.to_owned()),
        _ => Error::Other {
            message: format!("{context}: {fault}"),
            source: with(fault),
        },
    }
}

/// The vSphere fault behind `error`, if it came from one.
///
/// ```
/// use hypersdk_vsphere::{fault_to_error, vim_fault, soap::VimFault};
/// let e = fault_to_error(VimFault::new("SystemError", "disk full"), "CreateSnapshot_Task");
/// assert_eq!(vim_fault(&e).map(|f| f.fault_type.as_str()), Some("SystemError"));
/// ```
pub fn vim_fault(error: &Error) -> Option<&VimFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(f) = e.downcast_ref::<VimFault>() {
            return Some(f);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::ErrorKind;

    #[test]
    fn session_users_match_whatever_the_domain_spelling() {
        assert!(same_user("root", "root"));
        assert!(same_user(
            "VSPHERE.LOCAL\\Administrator",
            "administrator@vsphere.local"
        ));
        assert!(same_user("CORP\\jdoe", "jdoe@corp.example.com"));
        assert!(same_user("Administrator", "administrator@vsphere.local"));
        assert!(!same_user("root", "admin"));
        assert!(!same_user(
            "VSPHERE.LOCAL\\Administrator",
            "administrator@other.local"
        ));
        assert!(!same_user("CORP\\jdoe", "jdoe2@corp.example.com"));
    }

    #[test]
    fn urls_are_normalised_and_credentials_taken_out() {
        let (u, c) = normalize_url("vc.example").unwrap();
        assert_eq!(u.as_str(), "https://vc.example/sdk");
        assert!(c.is_none());
        let (u, c) = normalize_url("https://root:p%40ss@esx:8443/").unwrap();
        assert_eq!(u.as_str(), "https://esx:8443/sdk");
        let c = c.unwrap();
        assert_eq!(c.username(), "root");
        assert_eq!(c.password, "p@ss");
        assert!(normalize_url("ftp://x").is_err());
        let e = normalize_url("https://root:secret@[::1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn faults_map_to_core_errors() {
        let cases = [
            ("InvalidLogin", ErrorKind::Unauthenticated),
            ("NotAuthenticated", ErrorKind::Unauthenticated),
            ("NoPermission", ErrorKind::PermissionDenied),
            ("ManagedObjectNotFound", ErrorKind::NotFound),
            ("DuplicateName", ErrorKind::AlreadyExists),
            ("InvalidPowerState", ErrorKind::Conflict),
            ("MethodNotFound", ErrorKind::Unsupported),
            ("RequestCanceled", ErrorKind::Cancelled),
            ("SystemError", ErrorKind::Other),
            ("PasswordExpired", ErrorKind::Unauthenticated),
            ("InvalidClientCertificate", ErrorKind::Unauthenticated),
            ("NotFound", ErrorKind::NotFound),
            ("FileNotFound", ErrorKind::NotFound),
        ];
        for (fault, kind) in cases {
            let e = fault_to_error(VimFault::new(fault, "msg"), "Op");
            assert_eq!(e.kind(), kind, "{fault}");
            assert!(!e.is_retryable(), "{fault}");
        }
        for fault in ["HostCommunication", "HostNotConnected", "HostNotReachable"] {
            let e = fault_to_error(VimFault::new(fault, "msg"), "Op");
            assert!(e.is_retryable(), "{fault}");
            assert_eq!(vim_fault(&e).unwrap().fault_type, fault);
            // ... but not for a call that changes something.
            let e = unknown_outcome("CreateSnapshot_Task", e);
            assert!(!e.is_retryable(), "{fault}");
            assert!(e.to_string().contains("outcome unknown"), "{e}");
        }
        let e = fault_to_error(VimFault::new("SystemError", "disk full"), "Op");
        assert_eq!(e.to_string(), "Op: vSphere fault SystemError: disk full");
        assert_eq!(vim_fault(&e).unwrap().message, "disk full");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = Client::builder("https://vc").credentials("admin", "hunter2");
        let s = format!("{b:?}");
        assert!(s.contains("admin") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn builder_takes_user_info_out_of_the_url() {
        let b = Client::builder("https://root:hunter2@vc:8443/");
        let s = format!("{b:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert_eq!(b.url.as_ref().unwrap().as_str(), "https://vc:8443/sdk");
        assert_eq!(b.url_credentials.as_ref().unwrap().password, "hunter2");
        let b = Client::builder("https://root:hunter2@[::1");
        assert!(!format!("{b:?}").contains("hunter2"));
        assert!(!b.url.unwrap_err().contains("hunter2"));
    }

    #[tokio::test]
    async fn plain_http_needs_the_opt_in_and_no_tls_options() {
        let creds = |b: ClientBuilder| b.credentials("u", "p");
        // All refused before any connection is made (nothing listens here).
        for b in [
            Client::builder("http://127.0.0.1:9"),
            Client::builder("http://127.0.0.1:9")
                .danger_allow_plain_http()
                .pin_thumbprint(&"AB".repeat(20)),
            Client::builder("http://127.0.0.1:9")
                .danger_allow_plain_http()
                .ca_pem("x"),
            Client::builder("http://127.0.0.1:9")
                .danger_allow_plain_http()
                .danger_accept_invalid_certs(),
        ] {
            let e = creds(b).connect().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("http://"), "{e}");
        }
        let e = creds(Client::builder("https://vc").keep_alive(Duration::ZERO))
            .connect()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn tls_policies_conflict() {
        let b = Client::builder("https://vc")
            .pin_thumbprint(&"AB".repeat(20))
            .danger_accept_invalid_certs();
        assert!(b.config_error.is_some());
        let b = Client::builder("https://vc").pin_thumbprint("nope");
        assert!(b.config_error.is_some());
    }
}
