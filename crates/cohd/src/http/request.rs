//! What a request asks for, checked: its path, its query, its `Range`, its validators. Pure
//! functions over what hyper parsed; anything malformed is a [`BadRequest`] (a 400), never a
//! guess.

use std::fmt;

/// Why a request cannot be answered (becomes `400 Bad Request` with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest(pub(crate) String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// A request path, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The drive path: `/` or `/a/b`, each part a checked name.
    pub(crate) path: String,
    /// Whether the request ended in `/` (a folder is asked for).
    pub(crate) slash: bool,
}

/// Decodes a percent-encoded request path. Refused: anything not starting with `/`, a `%` not
/// followed by two hex digits, bytes that are not UTF-8, and parts that would not name one file
/// in one folder (`.`, `..`, a backslash, NUL or another control character) — so a request can
/// never name something outside the folder it appears to, whatever the drive path rules do.
pub(crate) fn target(raw: &str) -> Result<Target, BadRequest> {
    if !raw.starts_with('/') {
        return Err(bad("the request path must start with /"));
    }
    let mut parts = Vec::new();
    for seg in raw.split('/').filter(|s| !s.is_empty()) {
        let bytes = percent_decode(seg, false)?;
        let name = String::from_utf8(bytes).map_err(|_| bad("the request path is not UTF-8"))?;
        if name == "." || name == ".." {
            return Err(bad("`.` and `..` are not allowed in a path"));
        }
        if name.contains('/') {
            // An encoded slash would let one part span folders.
            return Err(bad("an encoded / is not allowed in a path part"));
        }
        if name.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(bad(
                "backslashes and control characters are not allowed in a path",
            ));
        }
        parts.push(name);
    }
    Ok(Target {
        path: format!("/{}", parts.join("/")),
        slash: raw.ends_with('/') || parts.is_empty(),
    })
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); a stray `%` is an error.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, BadRequest> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(bad("a % in the URL is not followed by two hex digits"));
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Percent-encodes a path part for a link: everything but unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// A drive path as a URL path: each part encoded, the slashes kept.
pub(crate) fn encode_path(p: &str) -> String {
    p.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// The query parameters the server reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    /// `at`: a co-drive version, as `--at` takes it.
    pub(crate) at: Option<String>,
    /// `writer`: one writer's version of a conflicted path, as `cat --writer` takes it.
    pub(crate) writer: Option<String>,
}

/// Parses `a=b&c=d`; other parameters are ignored, a malformed escape is an error, and a
/// parameter given twice is refused (which one was meant is unclear).
pub(crate) fn query(raw: Option<&str>) -> Result<Query, BadRequest> {
    let mut q = Query::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8(percent_decode(k, true)?)
            .map_err(|_| bad("a query parameter name is not UTF-8"))?;
        let slot = match k.as_str() {
            "at" => &mut q.at,
            "writer" => &mut q.writer,
            _ => continue,
        };
        let v = String::from_utf8(percent_decode(v, true)?)
            .map_err(|_| bad(format!("the value of `{k}` is not UTF-8")))?;
        if slot.is_some() {
            return Err(bad(format!("`{k}` is given twice")));
        }
        // An empty `at` (the picker's field left blank) means the current version.
        if !v.trim().is_empty() {
            *slot = Some(v);
        }
    }
    Ok(q)
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// No usable range: the whole representation (no header, another unit, several ranges,
    /// or a malformed one, which RFC 9110 says to ignore).
    Full,
    /// Bytes `start..=end` (inclusive, within the size).
    Part { start: u64, end: u64 },
    /// A well-formed range that no byte of the representation satisfies: 416.
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` against a representation of `size` bytes.
pub(crate) fn range(header: Option<&[u8]>, size: u64) -> Range {
    let Some(h) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return Range::Full;
    };
    let Some((unit, spec)) = h.trim().split_once('=') else {
        return Range::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        // Several ranges would need multipart/byteranges; the whole file is a valid answer.
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), end) if end.is_some() || b.trim().is_empty() => {
            if let Some(e) = end {
                if e < start {
                    return Range::Full;
                }
            }
            if start >= size {
                return Range::Unsatisfiable;
            }
            Range::Part {
                start,
                end: end.map_or(size - 1, |e| e.min(size - 1)),
            }
        }
        _ => Range::Full,
    }
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, as RFC 9110 asks for
/// this header; `*` matches any current representation).
pub(crate) fn none_match(header: Option<&[u8]>, etag: &str) -> bool {
    let Some(h) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    h.split(',')
        .any(|t| t.trim() == "*" || bare(t) == bare(etag))
}

/// Whether an `If-Range` header (if any) lets a range apply: only with the same strong tag.
pub(crate) fn if_range_holds(header: Option<&[u8]>, etag: &str) -> bool {
    match header {
        None => true,
        Some(h) => h == etag.as_bytes(),
    }
}

/// Whether the client asks for JSON (an `Accept` naming `application/json` without `q=0`).
pub(crate) fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    a.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                == Some(0.0)
        });
        media.eq_ignore_ascii_case("application/json") && !refused
    })
}

/// Whether a request may be answered by a server listening on `local`. On a loopback address
/// only requests naming a loopback host (`localhost`, `127.0.0.1`, `[::1]`…) are: a web page
/// elsewhere could otherwise point a name of its own at 127.0.0.1 ("DNS rebinding") and read
/// the drive through the visitor's browser. A server bound elsewhere was shared on purpose and
/// answers to any name.
pub(crate) fn host_allowed(host: Option<&[u8]>, local: std::net::SocketAddr) -> bool {
    if !local.ip().is_loopback() {
        return true;
    }
    let Some(h) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let h = h.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|c| c.is_ascii_digit()) => name,
            Some(_) => return false,
            None => h,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> Result<(String, bool), BadRequest> {
        target(raw).map(|t| (t.path, t.slash))
    }

    #[test]
    fn paths_decode_and_stay_put() {
        assert_eq!(t("/"), Ok(("/".into(), true)));
        assert_eq!(t("/a/b%20c.txt"), Ok(("/a/b c.txt".into(), false)));
        assert_eq!(t("/docs/"), Ok(("/docs".into(), true)));
        assert_eq!(t("//a//b"), Ok(("/a/b".into(), false)));
        assert_eq!(t("/%C3%A9t%C3%A9"), Ok(("/été".into(), false)));
        for raw in [
            "a",
            "/..",
            "/a/../b",
            "/%2e%2e/x",
            "/a/%2E",
            "/a%2fb",
            "/a%5cb",
            "/a%00",
            "/%ff",
            "/%",
            "/%4",
            "/%zz",
            "/a%0Ab",
            "*",
        ] {
            assert!(target(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn encoding_round_trips() {
        for s in ["a b", "é/ü", "100%", "a?b#c&d", "x+y"] {
            let enc = percent_encode(s);
            assert!(enc
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._~%".contains(&c)));
            assert_eq!(percent_decode(&enc, false).unwrap(), s.as_bytes());
        }
        assert_eq!(encode_path("/a b/c"), "/a%20b/c");
    }

    #[test]
    fn queries() {
        assert_eq!(query(None), Ok(Query::default()));
        let q = query(Some("at=k%3A1%2Ck2:3&x=1&writer=ab12")).unwrap();
        assert_eq!(q.at.as_deref(), Some("k:1,k2:3"));
        assert_eq!(q.writer.as_deref(), Some("ab12"));
        assert_eq!(query(Some("at=")).unwrap().at, None);
        assert_eq!(query(Some("at=a+b")).unwrap().at.as_deref(), Some("a b"));
        assert!(query(Some("at=%g0")).is_err());
        assert!(query(Some("at=1&at=2")).is_err());
        assert!(query(Some("writer=%ff")).is_err());
    }

    #[test]
    fn ranges() {
        let r = |h: &str, size| range(Some(h.as_bytes()), size);
        assert_eq!(range(None, 10), Range::Full);
        assert_eq!(r("bytes=0-3", 10), Range::Part { start: 0, end: 3 });
        assert_eq!(r("bytes=2-", 10), Range::Part { start: 2, end: 9 });
        assert_eq!(r("bytes=5-100", 10), Range::Part { start: 5, end: 9 });
        assert_eq!(r("bytes=-3", 10), Range::Part { start: 7, end: 9 });
        assert_eq!(r("bytes=-30", 10), Range::Part { start: 0, end: 9 });
        assert_eq!(r("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(r("bytes=10-20", 10), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Range::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Range::Unsatisfiable);
        // Ignored (the whole file): malformed, other units, several ranges.
        for h in [
            "bytes=3-1",
            "bytes=a-b",
            "bytes=-",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes 0-1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(r(h, 10), Range::Full, "{h}");
        }
    }

    #[test]
    fn validators() {
        let tag = "\"abc-1\"";
        assert!(none_match(Some(b"\"abc-1\""), tag));
        assert!(none_match(Some(b"\"x\", W/\"abc-1\""), tag));
        assert!(none_match(Some(b"*"), tag));
        assert!(!none_match(Some(b"\"abc-2\""), tag));
        assert!(!none_match(None, tag));
        assert!(if_range_holds(None, tag));
        assert!(if_range_holds(Some(b"\"abc-1\""), tag));
        assert!(!if_range_holds(Some(b"\"abc-2\""), tag));
    }

    #[test]
    fn hosts_on_loopback() {
        let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ok = |h: &str| host_allowed(Some(h.as_bytes()), lo);
        for h in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.9.9.9",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil:80",
            "[::1",
            "a:b",
        ] {
            assert!(!ok(h), "{h}");
        }
        assert!(!host_allowed(None, lo));
        let lan: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(host_allowed(Some(b"box.local"), lan));
        assert!(host_allowed(None, lan));
    }

    #[test]
    fn accept_json() {
        assert!(wants_json(Some(b"application/json")));
        assert!(wants_json(Some(b"text/html, application/json;q=0.9")));
        assert!(!wants_json(Some(b"application/json;q=0")));
        assert!(!wants_json(Some(b"text/html,*/*")));
        assert!(!wants_json(None));
    }
}
