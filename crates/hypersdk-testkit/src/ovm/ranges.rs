//! Go `net/http.ServeContent` semantics for the disk data endpoint: the
//! `Range` parser, the precondition headers as they behave without an
//! `ETag` or modification time, and the `multipart/byteranges` layout.

use http::HeaderMap;

/// One satisfiable range: `length` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    pub(crate) start: u64,
    pub(crate) length: u64,
}

impl ByteRange {
    /// The `Content-Range` value, `bytes a-b/size`.
    pub(crate) fn content_range(&self, size: u64) -> String {
        // Go prints start+length-1 with signed integers; a zero-length
        // range (`bytes=-0`) prints an end before its start.
        let end = self.start as i128 + self.length as i128 - 1;
        format!("bytes {}-{end}/{size}", self.start)
    }
}

/// Why a `Range` header was refused (416).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeError {
    /// Malformed: body `invalid range`.
    Invalid,
    /// Every range starts at or after the end: body `invalid range: failed
    /// to overlap`, `Content-Range: bytes */size`.
    NoOverlap,
}

impl RangeError {
    /// Go's error text.
    pub(crate) fn message(self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range",
            RangeError::NoOverlap => "invalid range: failed to overlap",
        }
    }
}

/// Go's `textproto.TrimString`.
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// Go's `strconv.ParseInt(s, 10, 64)`.
fn parse_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude: i128 = digits.parse().ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

/// Go's `parseRange(s, size)`: an empty header is `Ok(vec![])` (no range).
pub(crate) fn parse_range(s: &str, size: u64) -> Result<Vec<ByteRange>, RangeError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let Some(specs) = s.strip_prefix("bytes=") else {
        return Err(RangeError::Invalid);
    };
    let size = i64::try_from(size).map_err(|_| RangeError::Invalid)?;
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in specs.split(',') {
        let spec = trim(spec);
        if spec.is_empty() {
            continue;
        }
        let Some((start, end)) = spec.split_once('-') else {
            return Err(RangeError::Invalid);
        };
        let (start, end) = (trim(start), trim(end));
        let (r_start, r_length);
        if start.is_empty() {
            if end.is_empty() || end.starts_with('-') {
                return Err(RangeError::Invalid);
            }
            let mut i = match parse_int(end) {
                Some(i) if i >= 0 => i,
                _ => return Err(RangeError::Invalid),
            };
            if i > size {
                i = size;
            }
            r_start = size - i;
            r_length = size - r_start;
        } else {
            let i = match parse_int(start) {
                Some(i) if i >= 0 => i,
                _ => return Err(RangeError::Invalid),
            };
            if i >= size {
                no_overlap = true;
                continue;
            }
            r_start = i;
            if end.is_empty() {
                r_length = size - r_start;
            } else {
                let mut i = match parse_int(end) {
                    Some(i) if r_start <= i => i,
                    _ => return Err(RangeError::Invalid),
                };
                if i >= size {
                    i = size - 1;
                }
                r_length = i - r_start + 1;
            }
        }
        ranges.push(ByteRange {
            start: r_start as u64,
            length: r_length as u64,
        });
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    Ok(ranges)
}

/// The outcome of ServeContent's precondition checks, for a resource with
/// no `ETag` and a zero modification time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Preconditions {
    /// 412, empty body.
    Failed,
    /// 304, empty body.
    NotModified,
    /// Serve, honouring this `Range` header value (empty: none).
    Serve(String),
}

/// Go's `scanETag`: the first entity tag of `s` and the rest.
fn scan_etag(s: &str) -> Option<(&str, &str)> {
    let s = trim(s);
    let start = if s.starts_with("W/") { 2 } else { 0 };
    let bytes = s.as_bytes();
    if bytes.len() < start + 2 || bytes[start] != b'"' {
        return None;
    }
    for (i, &c) in bytes.iter().enumerate().skip(start + 1) {
        match c {
            0x21 | 0x23..=0x7E | 0x80..=0xFF => {}
            b'"' => return Some((&s[..i + 1], &s[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// `Some(true)` when a list header contains `*` before any malformed tag,
/// `Some(false)` when it does not, `None` when it is absent or empty.
/// Without an `ETag` no real tag can match, so `*` is all that counts.
fn list_has_star(headers: &HeaderMap, name: &str) -> Option<bool> {
    let value = headers.get(name)?.to_str().unwrap_or("\u{1}");
    if value.is_empty() {
        return None;
    }
    let mut rest = value;
    loop {
        rest = trim(rest);
        if rest.is_empty() {
            return Some(false);
        }
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
            continue;
        }
        if rest.starts_with('*') {
            return Some(true);
        }
        match scan_etag(rest) {
            Some((_, remain)) => rest = remain,
            None => return Some(false),
        }
    }
}

/// Go's `checkPreconditions` with an empty `ETag` and a zero modtime:
/// `If-Match` without `*` fails (412); `If-None-Match: *` is 304 (the
/// endpoint serves only GET and HEAD); `If-Unmodified-Since` and
/// `If-Modified-Since` are ignored; any `If-Range` drops the `Range`.
pub(crate) fn check_preconditions(headers: &HeaderMap) -> Preconditions {
    if list_has_star(headers, "if-match") == Some(false) {
        return Preconditions::Failed;
    }
    if list_has_star(headers, "if-none-match") == Some(true) {
        return Preconditions::NotModified;
    }
    let range = headers
        .get("range")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let if_range = headers.get("if-range").is_some_and(|v| !v.is_empty());
    if !range.is_empty() && if_range {
        return Preconditions::Serve(String::new());
    }
    Preconditions::Serve(range)
}

/// The framing around each part of a `multipart/byteranges` body, as Go's
/// `mime/multipart` writer produces it: `heads[i]` comes before range `i`,
/// `tail` after the last one.
pub(crate) struct Multipart {
    pub(crate) heads: Vec<String>,
    pub(crate) tail: String,
}

impl Multipart {
    pub(crate) fn new(
        ranges: &[ByteRange],
        boundary: &str,
        content_type: &str,
        size: u64,
    ) -> Multipart {
        let heads = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "{}--{boundary}\r\nContent-Range: {}\r\nContent-Type: {content_type}\r\n\r\n",
                    if i == 0 { "" } else { "\r\n" },
                    r.content_range(size)
                )
            })
            .collect();
        Multipart {
            heads,
            tail: format!("\r\n--{boundary}--\r\n"),
        }
    }

    /// The whole body's length.
    pub(crate) fn len(&self, ranges: &[ByteRange]) -> u64 {
        self.heads.iter().map(|h| h.len() as u64).sum::<u64>()
            + self.tail.len() as u64
            + ranges.iter().map(|r| r.length).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn r(start: u64, length: u64) -> ByteRange {
        ByteRange { start, length }
    }

    #[test]
    fn parse_range_like_go() {
        assert_eq!(parse_range("", 100), Ok(vec![]));
        assert_eq!(parse_range("bytes=0-9", 100), Ok(vec![r(0, 10)]));
        assert_eq!(parse_range("bytes=90-", 100), Ok(vec![r(90, 10)]));
        assert_eq!(parse_range("bytes=90-500", 100), Ok(vec![r(90, 10)]));
        assert_eq!(parse_range("bytes=-10", 100), Ok(vec![r(90, 10)]));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(vec![r(0, 100)]));
        assert_eq!(parse_range("bytes=-0", 100), Ok(vec![r(100, 0)]));
        assert_eq!(
            parse_range("bytes= 1 - 2 , ,3-4", 100),
            Ok(vec![r(1, 2), r(3, 2)])
        );
        assert_eq!(parse_range("bytes=+1-2", 100), Ok(vec![r(1, 2)]));
        assert_eq!(
            parse_range("bytes=0-0,0-0", 100),
            Ok(vec![r(0, 1), r(0, 1)])
        );
        assert_eq!(parse_range("bytes=", 100), Ok(vec![]));
        assert_eq!(parse_range("bytes=100-,0-1", 100), Ok(vec![r(0, 2)]));
        assert_eq!(parse_range("bytes=100-", 100), Err(RangeError::NoOverlap));
        assert_eq!(parse_range("bytes=0-1", 0), Err(RangeError::NoOverlap));
        for bad in [
            "bytes 0-1",
            "Bytes=0-1",
            " bytes=0-1",
            "bytes=1",
            "bytes=5-4",
            "bytes=-",
            "bytes=--5",
            "bytes=a-b",
            "bytes=0-x",
            "bytes=-1-2",
            "bytes=99999999999999999999-",
            "items=0-1",
        ] {
            assert_eq!(parse_range(bad, 100), Err(RangeError::Invalid), "{bad}");
        }
        assert_eq!(r(100, 0).content_range(100), "bytes 100-99/100");
        assert_eq!(r(0, 10).content_range(100), "bytes 0-9/100");
    }

    #[test]
    fn preconditions_without_validators() {
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            check_preconditions(&h)
        };
        assert_eq!(check(&[]), Preconditions::Serve(String::new()));
        assert_eq!(
            check(&[("range", "bytes=0-1")]),
            Preconditions::Serve("bytes=0-1".into())
        );
        assert_eq!(
            check(&[("range", "bytes=0-1"), ("if-range", "\"x\"")]),
            Preconditions::Serve(String::new())
        );
        assert_eq!(
            check(&[
                ("range", "bytes=0-1"),
                ("if-range", "Thu, 01 Jan 1970 00:00:00 GMT")
            ]),
            Preconditions::Serve(String::new())
        );
        assert_eq!(check(&[("if-match", "\"x\"")]), Preconditions::Failed);
        assert_eq!(
            check(&[("if-match", "\"x\", *")]),
            Preconditions::Serve(String::new())
        );
        assert_eq!(
            check(&[("if-match", "*")]),
            Preconditions::Serve(String::new())
        );
        assert_eq!(check(&[("if-none-match", "*")]), Preconditions::NotModified);
        assert_eq!(
            check(&[("if-none-match", "\"x\"")]),
            Preconditions::Serve(String::new())
        );
        assert_eq!(
            check(&[("if-modified-since", "Thu, 01 Jan 2099 00:00:00 GMT")]),
            Preconditions::Serve(String::new())
        );
    }

    #[test]
    fn multipart_framing_and_length() {
        let ranges = [r(0, 2), r(5, 3)];
        let m = Multipart::new(&ranges, "B", "application/octet-stream", 10);
        assert_eq!(
            m.heads[0],
            "--B\r\nContent-Range: bytes 0-1/10\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        assert_eq!(
            m.heads[1],
            "\r\n--B\r\nContent-Range: bytes 5-7/10\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        assert_eq!(m.tail, "\r\n--B--\r\n");
        let total: u64 =
            m.heads.iter().map(|h| h.len() as u64).sum::<u64>() + 5 + m.tail.len() as u64;
        assert_eq!(m.len(&ranges), total);
    }
}
