//! The one error type of hypersdk.
//!
//! Every public API of every hypersdk crate returns [`Error`]. Callers decide
//! what to do with [`Error::kind`] and [`Error::is_retryable`]; they never need
//! to match on message text, and neither does hypersdk itself: the retry policy
//! in [`crate::retry`] asks [`Error::is_retryable`] and nothing else.
//!
//! Messages name the object concerned (a VM, a disk, a file, a URL) so a log
//! line is enough to act on. URLs go through [`redact_url`] before they are put
//! into an error, so credentials and tokens never appear in messages.
//!
//! ```
//! use hypersdk_core::{Error, ErrorKind};
//!
//! let e = Error::from_http_status("GET", "https://admin:secret@esx.example/folder/a.vmdk", 503, None, "busy");
//! assert_eq!(e.kind(), ErrorKind::Unavailable);
//! assert!(e.is_retryable());
//! assert!(!e.to_string().contains("secret"));
//!
//! let e = Error::from_http_status("GET", "https://esx.example/folder/a.vmdk", 404, None, "");
//! assert_eq!(e.kind(), ErrorKind::NotFound);
//! assert!(!e.is_retryable());
//! ```

use std::fmt;
use std::io;
use std::time::Duration;

/// A boxed error usable as a [`std::error::Error::source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every hypersdk API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The broad class of an [`Error`], for callers that branch on what went wrong.
///
/// New kinds may be added in minor releases; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The named object (VM, disk, snapshot, file, URL) does not exist.
    NotFound,
    /// The object to be created exists already.
    AlreadyExists,
    /// Credentials are missing, wrong or expired (HTTP 401).
    Unauthenticated,
    /// The credentials are valid but not allowed to do this (HTTP 403).
    PermissionDenied,
    /// The request conflicts with the object's current state (HTTP 409).
    Conflict,
    /// The caller passed an invalid argument or configuration.
    InvalidInput,
    /// Data read from a peer or a file is malformed (corrupt archive, bad XML).
    InvalidData,
    /// Data failed an integrity check (a checksum or size mismatch).
    Integrity,
    /// The provider does not support the operation.
    Unsupported,
    /// A format or protocol version that this SDK does not handle.
    UnsupportedVersion,
    /// The peer is temporarily unable to serve (HTTP 429, 5xx).
    Unavailable,
    /// The network failed underneath a request (reset, refused, cut body).
    Network,
    /// An operation or request took longer than allowed (HTTP 408 included).
    Timeout,
    /// The operation was cancelled by the caller.
    Cancelled,
    /// A local I/O error that is none of the above.
    Io,
    /// The peer answered with an HTTP status that maps to no other kind.
    Http,
    /// Anything else, including bugs in hypersdk.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::InvalidData => "invalid data",
            ErrorKind::Integrity => "integrity check failed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::UnsupportedVersion => "unsupported version",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Network => "network error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Io => "i/o error",
            ErrorKind::Http => "http error",
            ErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}

/// The error of every hypersdk API.
///
/// Each variant names the object concerned. Construct errors with the helper
/// functions ([`Error::not_found`], [`Error::io`], [`Error::from_http_status`],
/// …) rather than the variants where a helper exists: helpers redact URLs and
/// classify statuses the one way the whole SDK agrees on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named object does not exist.
    #[error("{object} not found")]
    NotFound {
        /// What was looked for, e.g. `VM 'web01'` or `file '/tmp/a.vmdk'`.
        object: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The object to be created exists already.
    #[error("{object} already exists")]
    AlreadyExists {
        /// What exists already.
        object: String,
    },

    /// Credentials are missing, wrong or expired.
    #[error("not authenticated for {object}")]
    Unauthenticated {
        /// What was being accessed (a redacted URL or an endpoint).
        object: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The credentials are not allowed to do this.
    #[error("permission denied for {object}")]
    PermissionDenied {
        /// What was being accessed.
        object: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The request conflicts with the current state of the object.
    #[error("conflict on {object}: {message}")]
    Conflict {
        /// What the conflict is about.
        object: String,
        /// What the conflict is.
        message: String,
    },

    /// The caller passed an invalid argument or configuration.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong, naming the argument.
        message: String,
    },

    /// Data from a peer or a file is malformed.
    #[error("invalid data in {object}: {message}")]
    InvalidData {
        /// Where the data came from (file, archive entry, URL).
        object: String,
        /// What is wrong, with an offset or line where known.
        message: String,
        /// The underlying parser error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A checksum or size did not match.
    #[error("integrity check failed for {object}: expected {expected}, got {actual}")]
    Integrity {
        /// What was checked.
        object: String,
        /// The expected value (e.g. `sha256:…` or a byte count).
        expected: String,
        /// The value found.
        actual: String,
    },

    /// The provider does not support this operation.
    #[error("{operation} is not supported by provider {provider}")]
    Unsupported {
        /// The operation, e.g. `changed_extents`.
        operation: String,
        /// The provider's name.
        provider: String,
    },

    /// A format or protocol version this SDK does not handle.
    #[error("{object} has unsupported version {found} (supported: {supported})")]
    UnsupportedVersion {
        /// What carries the version (a manifest file, a VMDK header).
        object: String,
        /// The version found.
        found: String,
        /// The versions this SDK handles.
        supported: String,
    },

    /// A peer answered an HTTP request with an error status.
    #[error("{method} {url} failed with HTTP {status}{}", fmt_detail(.message))]
    HttpStatus {
        /// The request method.
        method: String,
        /// The URL, credentials removed.
        url: String,
        /// The status code.
        status: u16,
        /// The delay the server asked for in `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The start of the response body or a reason.
        message: String,
    },

    /// The network failed underneath a request to a peer.
    #[error("network error talking to {target}: {message}")]
    Network {
        /// The peer (a redacted URL or host:port).
        target: String,
        /// What happened.
        message: String,
        /// The transport error.
        #[source]
        source: Option<BoxError>,
    },

    /// An operation or request took longer than allowed.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// How long it was given.
        after: Duration,
    },

    /// The operation was cancelled by the caller.
    #[error("{operation} was cancelled")]
    Cancelled {
        /// What was cancelled.
        operation: String,
    },

    /// A local I/O error.
    #[error("i/o error on {object}: {source}")]
    Io {
        /// The file or device concerned.
        object: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A retried operation ran out of attempts or time.
    ///
    /// [`Error::kind`] is the kind of the last error, so a caller checking for
    /// `NotFound` or `Unauthenticated` does not need to unwrap this variant.
    #[error("{operation} failed after {attempts} attempts in {elapsed:?}: {last}")]
    RetriesExhausted {
        /// What was retried.
        operation: String,
        /// How many attempts were made.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// The last error.
        #[source]
        last: Box<Error>,
    },

    /// Anything else.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

fn fmt_detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::InvalidData { .. } => ErrorKind::InvalidData,
            Error::Integrity { .. } => ErrorKind::Integrity,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Error::HttpStatus { status, .. } => status_kind(*status),
            Error::Network { .. } => ErrorKind::Network,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Io { source, .. } => io_kind(source),
            Error::RetriesExhausted { last, .. } => last.kind(),
            Error::Other { .. } => ErrorKind::Other,
        }
    }

    /// Whether trying the same operation again may succeed.
    ///
    /// True for HTTP 408, 429 and 5xx, network failures, timeouts, and I/O
    /// errors of the connection kinds (reset, refused, aborted, timed out,
    /// broken pipe, unexpected end of a stream). False for everything else,
    /// including [`Error::RetriesExhausted`]: an outer retry loop must not
    /// multiply an inner one's attempts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::HttpStatus { status, .. } => status_retryable(*status),
            Error::Network { .. } | Error::Timeout { .. } => true,
            Error::Io { source, .. } => io_retryable(source),
            _ => false,
        }
    }

    /// The delay the peer asked for before retrying (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is a [`ErrorKind::NotFound`] error.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// `object` not found.
    pub fn not_found(object: impl Into<String>) -> Self {
        Error::NotFound {
            object: object.into(),
            source: None,
        }
    }

    /// `object` exists already.
    pub fn already_exists(object: impl Into<String>) -> Self {
        Error::AlreadyExists {
            object: object.into(),
        }
    }

    /// The caller passed something invalid.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    /// Data in `object` is malformed.
    pub fn invalid_data(object: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidData {
            object: object.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Data in `object` is malformed, with the parser's error as source.
    pub fn invalid_data_with(
        object: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::InvalidData {
            object: object.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A checksum or size of `object` did not match.
    pub fn integrity(
        object: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Self {
        Error::Integrity {
            object: object.into(),
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    /// `operation` is not supported by `provider`.
    pub fn unsupported(operation: impl Into<String>, provider: impl Into<String>) -> Self {
        Error::Unsupported {
            operation: operation.into(),
            provider: provider.into(),
        }
    }

    /// `operation` was cancelled.
    pub fn cancelled(operation: impl Into<String>) -> Self {
        Error::Cancelled {
            operation: operation.into(),
        }
    }

    /// A free-form error for what fits no other variant.
    pub fn other(message: impl Into<String>) -> Self {
        Error::Other {
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error on `object` (usually a path).
    ///
    /// `NotFound`, `AlreadyExists` and `PermissionDenied` I/O errors become
    /// the matching variants so callers see one kind for one situation.
    pub fn io(object: impl Into<String>, source: io::Error) -> Self {
        let object = object.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                object,
                source: Some(Box::new(source)),
            },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                object,
                source: Some(Box::new(source)),
            },
            io::ErrorKind::AlreadyExists => Error::AlreadyExists { object },
            _ => Error::Io { object, source },
        }
    }

    /// A network failure talking to `target` (a URL, redacted here).
    pub fn network(target: &str, message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Network {
            target: redact_url(target),
            message: message.into(),
            source,
        }
    }

    /// Maps an HTTP error status to an [`Error`].
    ///
    /// 401 → [`Error::Unauthenticated`], 403 → [`Error::PermissionDenied`],
    /// 404 → [`Error::NotFound`], 409 → [`Error::Conflict`]; every other status
    /// becomes [`Error::HttpStatus`], retryable for 408, 429 and 5xx. `url` is
    /// redacted; `body` is cut to its first 200 characters.
    pub fn from_http_status(
        method: &str,
        url: &str,
        status: u16,
        retry_after: Option<Duration>,
        body: &str,
    ) -> Self {
        let url = redact_url(url);
        let message = truncate_chars(body.trim(), 200);
        let object = format!("{method} {url}");
        let source = || -> Option<BoxError> {
            if message.is_empty() {
                None
            } else {
                Some(format!("HTTP {status}: {message}").into())
            }
        };
        match status {
            401 => Error::Unauthenticated {
                object,
                source: source(),
            },
            403 => Error::PermissionDenied {
                object,
                source: source(),
            },
            404 => Error::NotFound {
                object,
                source: source(),
            },
            409 => Error::Conflict {
                object,
                message: if message.is_empty() {
                    "HTTP 409".to_owned()
                } else {
                    message
                },
            },
            _ => Error::HttpStatus {
                method: method.to_owned(),
                url,
                status,
                retry_after,
                message,
            },
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => {
                io::ErrorKind::PermissionDenied
            }
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::InvalidData | ErrorKind::Integrity => io::ErrorKind::InvalidData,
            ErrorKind::Unsupported | ErrorKind::UnsupportedVersion => io::ErrorKind::Unsupported,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Cancelled => io::ErrorKind::Interrupted,
            _ => io::ErrorKind::Other,
        };
        match e {
            Error::Io { source, .. } => source,
            e => io::Error::new(kind, e),
        }
    }
}

fn status_kind(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 | 410 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        408 | 504 => ErrorKind::Timeout,
        429 | 500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Http,
    }
}

fn status_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

fn io_kind(e: &io::Error) -> ErrorKind {
    use io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::PermissionDenied => ErrorKind::PermissionDenied,
        K::InvalidInput => ErrorKind::InvalidInput,
        K::InvalidData => ErrorKind::InvalidData,
        K::TimedOut => ErrorKind::Timeout,
        K::Unsupported => ErrorKind::Unsupported,
        _ if io_retryable(e) => ErrorKind::Network,
        _ => ErrorKind::Io,
    }
}

fn io_retryable(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset
            | K::ConnectionRefused
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
            | K::Interrupted
            | K::WouldBlock
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Query parameters whose values are removed by [`redact_url`].
const SENSITIVE_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "auth",
    "authorization",
    "secret",
    "key",
    "apikey",
    "api_key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "session",
    "sessionid",
    "ticket",
];

/// Removes credentials from a URL so it can go into messages and logs.
///
/// The password of the user-info part becomes `***` (the user name stays, it
/// helps to know *who* failed), and the values of query parameters that carry
/// secrets (`token`, `password`, `sig`, `X-Amz-Signature`, …) become `***`.
/// A string that is not a URL is returned unchanged.
///
/// ```
/// use hypersdk_core::error::redact_url;
/// assert_eq!(
///     redact_url("https://root:pw@esx.example/sdk?token=abc&dcPath=ha"),
///     "https://root:***@esx.example/sdk?token=***&dcPath=ha"
/// );
/// ```
pub fn redact_url(input: &str) -> String {
    let Ok(mut url) = url::Url::parse(input) else {
        return input.to_owned();
    };
    if url.password().is_some() {
        // Setting a password only fails for URLs that cannot have one.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let mut changed = false;
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                if SENSITIVE_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                    changed = true;
                    (k.into_owned(), "***".to_owned())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if changed {
            // Rebuild by hand: the form serializer would percent-encode `***`.
            let q: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    if v == "***" {
                        format!("{}=***", encode_component(k))
                    } else {
                        format!("{}={}", encode_component(k), encode_component(v))
                    }
                })
                .collect();
            url.set_query(Some(&q.join("&")));
        }
    }
    url.to_string()
}

fn encode_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_mapping() {
        let cases = [
            (401, ErrorKind::Unauthenticated, false),
            (403, ErrorKind::PermissionDenied, false),
            (404, ErrorKind::NotFound, false),
            (409, ErrorKind::Conflict, false),
            (400, ErrorKind::Http, false),
            (416, ErrorKind::Http, false),
            (408, ErrorKind::Timeout, true),
            (429, ErrorKind::Unavailable, true),
            (500, ErrorKind::Unavailable, true),
            (503, ErrorKind::Unavailable, true),
            (504, ErrorKind::Timeout, true),
        ];
        for (status, kind, retry) in cases {
            let e = Error::from_http_status("GET", "http://h/x", status, None, "body");
            assert_eq!(e.kind(), kind, "status {status}");
            assert_eq!(e.is_retryable(), retry, "status {status}");
        }
    }

    #[test]
    fn retry_after_is_carried() {
        let e = Error::from_http_status("GET", "http://h/x", 429, Some(Duration::from_secs(7)), "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.to_string(), "GET http://h/x failed with HTTP 429");
    }

    #[test]
    fn io_mapping() {
        use io::ErrorKind as K;
        let retryable = [
            K::ConnectionReset,
            K::ConnectionRefused,
            K::ConnectionAborted,
            K::BrokenPipe,
            K::TimedOut,
            K::UnexpectedEof,
        ];
        for k in retryable {
            let e = Error::io("/dev/x", io::Error::from(k));
            assert!(e.is_retryable(), "{k:?}");
        }
        let e = Error::io("/tmp/a.vmdk", io::Error::from(K::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("/tmp/a.vmdk"));
        let e = Error::io("/tmp/a", io::Error::other("disk on fire"));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(!e.is_retryable());
    }

    #[test]
    fn classification_ignores_message_text() {
        // A message that *says* timeout is not a timeout.
        let e = Error::other("connection reset by peer, 503, timeout");
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), ErrorKind::Other);
    }

    #[test]
    fn exhausted_keeps_kind_but_is_final() {
        let last = Error::from_http_status("GET", "http://h/x", 503, None, "");
        let e = Error::RetriesExhausted {
            operation: "download".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(last),
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(!e.is_retryable());
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://u:p@h.example:8443/a?X-Amz-Signature=zz&part=1"),
            "https://u:***@h.example:8443/a?X-Amz-Signature=***&part=1"
        );
        assert_eq!(redact_url("https://h/a?x=1"), "https://h/a?x=1");
        assert_eq!(redact_url("not a url"), "not a url");
        let e = Error::from_http_status("PUT", "https://u:hunter2@h/nfc?token=t0p", 500, None, "");
        let msg = e.to_string();
        assert!(!msg.contains("hunter2") && !msg.contains("t0p"), "{msg}");
        let e = Error::network("https://u:hunter2@h/", "connection reset", None);
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn body_is_truncated() {
        let body = "x".repeat(1000);
        let e = Error::from_http_status("GET", "http://h/", 500, None, &body);
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn into_io_error() {
        let e: io::Error = Error::not_found("VM 'a'").into();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e: io::Error = Error::io("f", io::Error::from(io::ErrorKind::BrokenPipe)).into();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
