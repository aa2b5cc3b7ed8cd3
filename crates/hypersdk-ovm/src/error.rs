//! How the exporter's error answers become [`hypersdk_core::Error`]s.
//!
//! The exporter answers most failures with a status and a JSON body
//! `{"error": <category>, "details": <root cause>}`, but its statuses are
//! not what the names suggest; this module maps them by what they mean:
//!
//! | exporter answer | error |
//! |---|---|
//! | 500 `could not find VM with ID <id>` | [`ErrorKind::NotFound`] naming the VM |
//! | 500 `not found` (unknown snapshot or `compareTo`) | [`ErrorKind::NotFound`] naming the snapshot |
//! | 409 `VM id missmatch` (the snapshot belongs to another VM) | [`ErrorKind::NotFound`] naming the snapshot and saying so |
//! | 404 with an empty body on the data route (unknown disk) | [`ErrorKind::NotFound`] naming the disk |
//! | 400 (compareTo not older, VM not reflinkable, bad login body) | [`ErrorKind::InvalidInput`] with the exporter's reason |
//! | 401 | [`ErrorKind::Unauthenticated`] (after one re-login, see the client) |
//! | 301 (a path that is not clean) | [`ErrorKind::InvalidData`]: a bug, never followed |
//! | other 5xx, 429, 408 | [`Error::HttpStatus`], retryable |
//!
//! Bodies may also be empty or plain text (gorilla's `404 page not found`,
//! `416` answers); they are parsed best-effort and quoted in the message.
//!
//! [`ErrorKind::NotFound`]: hypersdk_core::ErrorKind::NotFound
//! [`ErrorKind::InvalidInput`]: hypersdk_core::ErrorKind::InvalidInput
//! [`ErrorKind::InvalidData`]: hypersdk_core::ErrorKind::InvalidData
//! [`ErrorKind::Unauthenticated`]: hypersdk_core::ErrorKind::Unauthenticated

use std::time::Duration;

use hypersdk_core::Error;

use crate::types::ApiError;

/// What a request was about, to name it in errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// The login route, for this user.
    Login { user: &'a str },
    /// The VM list.
    Vms,
    /// One VM (get, list/create/purge its snapshots).
    Vm { vm: &'a str },
    /// One snapshot, maybe compared with another.
    Snapshot {
        vm: &'a str,
        snapshot: &'a str,
        compare_to: Option<&'a str>,
    },
    /// One disk of one snapshot (the data route).
    Disk {
        vm: &'a str,
        snapshot: &'a str,
        disk: &'a str,
    },
}

impl Subject<'_> {
    fn vm(&self) -> Option<&str> {
        match self {
            Subject::Vm { vm } | Subject::Snapshot { vm, .. } | Subject::Disk { vm, .. } => {
                Some(vm)
            }
            _ => None,
        }
    }

    fn snapshot(&self) -> String {
        match self {
            Subject::Snapshot {
                vm,
                snapshot,
                compare_to: Some(c),
            } => format!("snapshot '{snapshot}' or compareTo snapshot '{c}' of VM id '{vm}'"),
            Subject::Snapshot { vm, snapshot, .. } | Subject::Disk { vm, snapshot, .. } => {
                format!("snapshot '{snapshot}' of VM id '{vm}'")
            }
            Subject::Vm { vm } => format!("a snapshot of VM id '{vm}'"),
            _ => "a snapshot".to_owned(),
        }
    }
}

/// The exporter's `{error, details}`, or the body as text.
pub(crate) fn parse_error_body(body: &[u8]) -> (Option<ApiError>, String) {
    let parsed = serde_json::from_slice::<ApiError>(body)
        .ok()
        .filter(|e| !e.error.is_empty() || !e.details.is_empty());
    let text = match &parsed {
        Some(e) if e.details.is_empty() => e.error.clone(),
        Some(e) if e.error.is_empty() => e.details.clone(),
        Some(e) => format!("{}: {}", e.error, e.details),
        None => {
            let t = String::from_utf8_lossy(&body[..body.len().min(1024)]);
            t.trim().to_owned()
        }
    };
    (parsed, text)
}

/// The error for an exporter answer with a non-success `status`.
///
/// `request` is `METHOD url` (the URL carries no secret: the token travels
/// in a header), `endpoint` the exporter's base URL.
pub(crate) fn exporter_error(
    endpoint: &str,
    method: &str,
    url: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    subject: Subject<'_>,
) -> Error {
    let (parsed, text) = parse_error_body(body);
    let details = parsed.as_ref().map(|e| e.details.as_str()).unwrap_or("");
    let source = |t: &str| -> Option<hypersdk_core::error::BoxError> {
        if t.is_empty() {
            None
        } else {
            Some(format!("the exporter answered {method} {url} with HTTP {status}: {t}").into())
        }
    };
    match status {
        500 if details.starts_with("could not find VM with ID") => Error::NotFound {
            object: match subject.vm() {
                Some(vm) => format!("VM id '{vm}' on the OVM exporter {endpoint}"),
                None => format!("a VM on the OVM exporter {endpoint}"),
            },
            source: source(&text),
        },
        500 if details == "not found"
            && matches!(subject, Subject::Snapshot { .. } | Subject::Disk { .. }) =>
        {
            Error::NotFound {
                object: format!("{} on the OVM exporter {endpoint}", subject.snapshot()),
                source: source(&text),
            }
        }
        409 => Error::NotFound {
            object: format!(
                "{} on the OVM exporter {endpoint} (the exporter says it belongs to another VM)",
                subject.snapshot()
            ),
            source: source(&text),
        },
        404 if body.iter().all(u8::is_ascii_whitespace) => match subject {
            Subject::Disk { vm, snapshot, disk } => Error::NotFound {
                object: format!(
                    "disk '{disk}' of snapshot '{snapshot}' of VM id '{vm}' on the OVM exporter {endpoint}"
                ),
                source: source("no such disk in the snapshot"),
            },
            _ => route_not_found(method, url, endpoint, "an empty body"),
        },
        404 => route_not_found(method, url, endpoint, &format!("'{text}'")),
        400 => Error::invalid_input(format!(
            "the OVM exporter {endpoint} refused {method} {url}: {}",
            if text.is_empty() { "HTTP 400" } else { &text }
        )),
        401 => Error::Unauthenticated {
            object: match subject {
                Subject::Login { user } => format!(
                    "the OVM exporter {endpoint} as user '{user}' (the exporter checks \
                     credentials against OVM Manager: wrong credentials and an unreachable \
                     OVM Manager both answer 401)"
                ),
                _ => format!("the OVM exporter {endpoint}"),
            },
            source: source(&text),
        },
        300..=399 => Error::invalid_data(
            format!("{method} {url}"),
            format!(
                "the OVM exporter redirected (HTTP {status}) instead of answering: \
                 the request path is not in the exporter's clean form"
            ),
        ),
        _ => Error::from_http_status(method, url, status, retry_after, &text),
    }
}

/// A route the exporter does not have (wrong method, a path prefix the
/// exporter does not expect, an unknown path).
fn route_not_found(method: &str, url: &str, endpoint: &str, said: &str) -> Error {
    Error::NotFound {
        object: format!(
            "{method} {url} (the OVM exporter {endpoint} answered HTTP 404 with {said}: \
             is the endpoint, with its path, right?)"
        ),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_core::ErrorKind;

    const EP: &str = "https://h:5544";

    fn err(status: u16, body: &str, subject: Subject<'_>) -> Error {
        exporter_error(
            EP,
            "GET",
            "https://h:5544/api/v1/x",
            status,
            None,
            body.as_bytes(),
            subject,
        )
    }

    #[test]
    fn not_found_forms() {
        let e = err(
            500,
            "{\"error\":\"Server error\",\"details\":\"could not find VM with ID abc\"}\n",
            Subject::Vm { vm: "abc" },
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("VM id 'abc'"), "{e}");
        let snap = Subject::Snapshot {
            vm: "v",
            snapshot: "s",
            compare_to: None,
        };
        let e = err(
            500,
            "{\"error\":\"Server error\",\"details\":\"not found\"}\n",
            snap,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("snapshot 's' of VM id 'v'"), "{e}");
        let e = err(
            409,
            "{\"error\":\"Conflict\",\"details\":\"VM id missmatch\"}\n",
            snap,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("another VM"), "{e}");
        let e = err(
            404,
            "",
            Subject::Disk {
                vm: "v",
                snapshot: "s",
                disk: "d.img",
            },
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("disk 'd.img'"), "{e}");
    }

    #[test]
    fn other_statuses() {
        let e = err(
            400,
            "{\"error\":\"Bad Request\",\"details\":\"compareTo snapshot must be older than this snapshot\"}\n",
            Subject::Vms,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("must be older"), "{e}");
        let e = err(
            401,
            "{\"error\":\"Not Authorized\",\"details\":\"failed to login: x\"}\n",
            Subject::Login { user: "admin" },
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("'admin'"), "{e}");
        let e = err(
            500,
            "{\"error\":\"Server error\",\"details\":\"failed to get extents\"}\n",
            Subject::Vm { vm: "v" },
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("failed to get extents"), "{e}");
        let e = err(503, "busy", Subject::Vms);
        assert!(e.is_retryable());
        let e = err(301, "", Subject::Vms);
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        let e = err(404, "404 page not found\n", Subject::Vms);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("404 page not found"), "{e}");
        // "not found" about a VM route is not a snapshot.
        let e = err(
            500,
            "{\"error\":\"Server error\",\"details\":\"not found\"}",
            Subject::Vms,
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}
