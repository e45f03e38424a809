//! `cohd serve --http`: the merged view over HTTP on loopback, checked with raw requests and
//! with a real headless browser (Chromium from Debian: `apt-get install chromium`), plus the
//! conflict tools of the command line (`cat --writer`, `ls -l`, `export`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (a request line and headers, without the closing blank line) and reads the
/// whole response; the connection is closed after it, so the body runs to the end.
fn raw(addr: &str, head: &str) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_write_timeout(Some(WAIT)).expect("timeout");
    write!(s, "{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

fn get(addr: &str, target: &str, headers: &[&str]) -> Resp {
    let mut head = format!("GET {target} HTTP/1.1");
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head)
}

/// `cohd serve --http 127.0.0.1:0 EXTRA…`; returns the serve and the HTTP address it printed.
fn serve_http(dir: &Path, extra: &[&str]) -> (Serve, String) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = serve(dir, &args);
    let line = s.lines.recv_timeout(WAIT).expect("http line");
    let addr = line
        .strip_prefix("http on http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    (s, addr)
}

fn put(dir: &Path, path: &str, data: &[u8]) {
    ok_in(dir, &["put", path, "-"], data);
}

fn frontier(dir: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(dir, &["info", "--json"])).expect("json");
    v["frontier"].as_str().expect("frontier").to_string()
}

/// Bytes that do not repeat within a block.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn http_listings_files_ranges_versions_and_bad_requests() {
    let (_t, d) = dirs(1);
    let a = &d[0];
    ok(a, &["init"]);
    put(a, "/docs/a.txt", b"hello world\n");
    put(a, "/docs/sp ace & <b>.md", b"# title\n");
    let big = noise(600 << 10);
    put(a, "/big.bin", &big);
    ok(a, &["symlink", "/latest", "/docs/a.txt"]);
    put(a, "/empty.txt", b"");
    let before = frontier(a);
    let (_s, h) = serve_http(a, &[]);

    // Folders: HTML for browsers, JSON for scripts, a redirect to the slash form.
    let r = get(&h, "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.text().contains("<a href=\"docs/\">docs/</a>"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("<a href=\"big.bin\">big.bin</a>"));
    let len = r.body.len().to_string();
    let r = raw(&h, "HEAD / HTTP/1.1");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some(len.as_str()))
    );
    assert!(r.body.is_empty());
    let r = get(&h, "/docs", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/docs/"));
    let r = get(&h, "/docs/", &[]);
    assert!(
        r.text()
            .contains("href=\"sp%20ace%20%26%20%3Cb%3E.md\">sp ace &amp; &lt;b&gt;.md</a>"),
        "{}",
        r.text()
    );
    let r = get(&h, "/docs/", &["Accept: application/json"]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("json listing");
    let names: Vec<&str> = j["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a.txt", "sp ace & <b>.md"]);
    assert_eq!(j["entries"][0]["size"], 12);
    assert_eq!(j["version"], before.as_str());

    // Files: content type by extension, ETag, 304, HEAD.
    let r = get(&h, "/docs/a.txt", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").expect("etag").to_string();
    let r = get(&h, "/docs/a.txt", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = raw(&h, "HEAD /docs/a.txt HTTP/1.1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(r.body.is_empty());
    let r = get(&h, "/latest", &[]);
    assert_eq!(r.body, b"hello world\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(get(&h, "/big.bin", &[]).body, big);
    let r = get(&h, "/big.bin", &[]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = get(&h, "/empty.txt", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // Ranges: 206 with Content-Range, across content pieces too; 416 past the end.
    let r = get(&h, "/docs/a.txt", &["Range: bytes=2-5"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 2-5/12"));
    assert_eq!(r.body, b"llo ");
    let r = get(&h, "/docs/a.txt", &["Range: bytes=-3"]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"ld\n"[..]));
    let r = get(&h, "/big.bin", &["Range: bytes=262000-"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, big[262000..]);
    let r = get(&h, "/docs/a.txt", &["Range: bytes=12-"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */12"));
    // A stale If-Range gets the whole file.
    let r = get(
        &h,
        "/docs/a.txt",
        &["Range: bytes=0-1", "If-Range: \"other\""],
    );
    assert_eq!((r.status, r.body.len()), (200, 12));

    // A past version with ?at= (encoded or not), and links that keep it.
    put(a, "/docs/a.txt", b"changed\n");
    assert_eq!(get(&h, "/docs/a.txt", &[]).body, b"changed\n");
    let at_enc = before.replace(':', "%3A").replace(',', "%2C");
    for at in [&before, &at_enc] {
        let r = get(&h, &format!("/docs/a.txt?at={at}"), &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "hello world\n"));
    }
    let r = get(&h, &format!("/docs/?at={before}"), &[]);
    assert!(
        r.text().contains(&format!("href=\"a.txt?at={at_enc}\"")),
        "{}",
        r.text()
    );
    assert!(r.text().contains("A past version"));

    // Bad input: 4xx with a reason, never a panic; the server keeps answering.
    for (target, status) in [
        ("/%zz", 400),
        ("/../etc/passwd", 400),
        ("/docs/..%2f..%2fetc", 400),
        ("/a%00b", 400),
        ("/%ff", 400),
        ("/docs/a%5cb", 400),
        ("/nothing", 404),
        ("/nothing/", 404),
        ("/docs/a.txt/", 301),
        ("/?at=garbage", 400),
        ("/?at=%ff", 400),
        ("/?at=1&at=2", 400),
        ("/docs/a.txt?writer=zz", 400),
        ("/docs/a.txt?writer=0123456789", 404),
    ] {
        let r = get(&h, target, &[]);
        assert_eq!(r.status, status, "{target}: {}", r.text());
    }
    let zeros = format!("{}:1", "0".repeat(64));
    assert_eq!(get(&h, &format!("/?at={zeros}"), &[]).status, 404);
    // Only loopback names on a loopback server: DNS rebinding cannot reach it from a web page.
    let port = h.rsplit(':').next().expect("port");
    let mut s = TcpStream::connect(&h).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    assert!(buf.starts_with("HTTP/1.1 403"), "{buf}");
    let r = raw(
        &h,
        &format!("GET http://localhost:{port}/docs/a.txt HTTP/1.1"),
    );
    assert_eq!(r.status, 200);
    let r = raw(&h, "GET http://evil.example/docs/a.txt HTTP/1.1");
    assert_eq!(r.status, 403);
    let r = raw(&h, "POST /docs/a.txt HTTP/1.1\r\nContent-Length: 0");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    for junk in ["BLAH", "GET /\u{1}x HTTP/1.1", "GET / HTTP/9.9"] {
        let mut s = TcpStream::connect(&h).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = write!(s, "{junk}\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
            "{junk:?}: {text}"
        );
    }
    assert_eq!(get(&h, "/docs/a.txt", &[]).status, 200, "still serving");
}

/// `ms` since the Unix epoch, as the CLI prints times (`YYYY-MM-DDTHH:MM:SSZ`, whole seconds).
fn utc(ms: u64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", ms / 1000),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn write_time(dir: &Path, path: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ok(dir, &["stat", path, "--json"])).expect("json");
    v["time"].as_u64().expect("a write time")
}

#[test]
fn listings_have_etags_times_and_take_a_time_for_at() {
    let (_t, d) = dirs(1);
    let a = &d[0];
    ok(a, &["init"]);
    put(a, "/docs/a.txt", b"first");
    let t = write_time(a, "/docs/a.txt");
    // The next write is in a later second, so a time between the two exists.
    std::thread::sleep(Duration::from_millis(1100));
    put(a, "/docs/b.txt", b"second");
    let (_s, h) = serve_http(a, &[]);

    // Times: a column in HTML, ms in JSON, as `stat` has them.
    let html = get(&h, "/docs/", &[]);
    assert!(html.text().contains("Written (UTC)"), "{}", html.text());
    assert!(
        html.text().contains(&format!("<td>{}</td>", utc(t))),
        "{}",
        html.text()
    );
    let json = get(&h, "/docs/", &["Accept: application/json"]);
    let j: serde_json::Value = serde_json::from_slice(&json.body).expect("json");
    assert_eq!(j["entries"][0]["time"], t);

    // ETags: one per representation, 304 when unchanged (GET and HEAD), a new one on a change.
    let tag_html = html.header("etag").expect("listing etag").to_string();
    let tag_json = json.header("etag").expect("json etag").to_string();
    assert_ne!(tag_html, tag_json);
    let r = get(&h, "/docs/", &[&format!("If-None-Match: {tag_html}")]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), Some(tag_html.as_str()));
    let r = raw(
        &h,
        &format!("HEAD /docs/ HTTP/1.1\r\nIf-None-Match: {tag_html}"),
    );
    assert_eq!(r.status, 304);
    let r = get(
        &h,
        "/docs/",
        &[
            "Accept: application/json",
            &format!("If-None-Match: {tag_json}"),
        ],
    );
    assert_eq!(r.status, 304);
    // The HTML's tag does not stand for the JSON.
    let r = get(
        &h,
        "/docs/",
        &[
            "Accept: application/json",
            &format!("If-None-Match: {tag_html}"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&h, "/docs/", &[]).header("etag"),
        Some(tag_html.as_str())
    );
    put(a, "/docs/c.txt", b"third");
    let r = get(&h, "/docs/", &[&format!("If-None-Match: {tag_html}")]);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("c.txt"), "{}", r.text());
    assert_ne!(r.header("etag"), Some(tag_html.as_str()));

    // ?at=TIME: the co-drive as it stood then (the second a.txt was written in, which a
    // time in whole seconds covers to its end; b.txt was written over a second later).
    let then = utc(t - t % 1000);
    let r = get(
        &h,
        &format!("/docs/?at={then}"),
        &["Accept: application/json"],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let names: Vec<&str> = j["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a.txt"]);
    assert_eq!(
        get(&h, &format!("/docs/a.txt?at={then}"), &[]).body,
        b"first"
    );
    assert_eq!(get(&h, &format!("/docs/b.txt?at={then}"), &[]).status, 404);
    let r = get(&h, "/docs/?at=1970-01-02", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no version"), "{}", r.text());
    let r = get(&h, "/docs/?at=2000-13-01", &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a time"), "{}", r.text());
}

/// Gives `to`'s store `from`'s own drive (its db and blobs cores, all content), through a
/// `cohd serve` of `from` and a `sync --all` of `to` (both stores idle otherwise).
fn copy_own_drive(from: &Path, to: &Path) {
    let v: serde_json::Value = serde_json::from_str(&ok(from, &["info", "--json"])).expect("json");
    let key = v["key"].as_str().expect("key").to_string();
    let s = serve(from, &["--listen", "127.0.0.1:0"]);
    ok(to, &["--peer", &s.addr, "--drive", &key, "sync", "--all"]);
}

/// Two writers of A's co-drive wrote `/docs/c.txt` concurrently, and A edited
/// `/docs/gone.txt` while B deleted it; returns (A's key, B's key).
fn conflicted(a: &Path, b: &Path) -> (String, String) {
    let ka = ok(a, &["init"]).trim().to_string();
    let kb = ok(b, &["init"]).trim().to_string();
    put(a, "/docs/plain.txt", b"no conflict");
    put(a, "/docs/gone.txt", b"first");
    ok(a, &["authorize", &kb]);
    copy_own_drive(a, b);
    put(a, "/docs/c.txt", b"A's version");
    ok_in(
        b,
        &["--drive", &ka, "put", "/docs/c.txt", "-"],
        b"B's version",
    );
    put(a, "/docs/gone.txt", b"A's edit");
    ok(b, &["--drive", &ka, "rm", "/docs/gone.txt"]);
    copy_own_drive(a, b);
    copy_own_drive(b, a);
    let c = ok(a, &["conflicts"]);
    assert!(c.contains("/docs/c.txt"), "{c}");
    (ka, kb)
}

#[test]
fn conflict_tools_on_the_command_line() {
    let (_t, d) = dirs(3);
    let (a, b) = (&d[0], &d[1]);
    let (ka, kb) = conflicted(a, b);
    let c = ok(a, &["conflicts"]);
    assert!(
        c.contains("/docs/gone.txt: 2 versions: by ")
            && c.contains(&format!("by {} (deleted, ", &kb[..8])),
        "{c}"
    );
    let winner = ok(a, &["cat", "/docs/c.txt"]);
    let (win, lose) = if winner == "A's version" {
        (&ka, &kb)
    } else {
        (&kb, &ka)
    };

    // ls -l marks the conflicted path, and only it.
    let l = ok(a, &["ls", "-l", "/docs"]);
    let line = l
        .lines()
        .find(|l| l.contains("/docs/c.txt"))
        .expect("c.txt");
    assert!(line.contains("[conflict: 2 versions: "), "{l}");
    assert!(line.contains(&kb[..8]) && line.contains(&ka[..8]), "{l}");
    let plain = l.lines().find(|l| l.contains("plain.txt")).expect("plain");
    assert!(!plain.contains("conflict"), "{l}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(a, &["ls", "--json", "/docs"])).expect("json");
    assert_eq!(j[0]["conflicts"].as_array().expect("versions").len(), 2);

    // cat --writer: a whole key or a unique prefix picks that writer's version.
    assert_eq!(
        ok(a, &["cat", "/docs/c.txt", "--writer", &ka]),
        "A's version"
    );
    assert_eq!(
        ok(a, &["cat", "/docs/c.txt", "--writer", &kb[..8]]),
        "B's version"
    );
    assert_eq!(
        ok(
            a,
            &["cat", "/docs/c.txt", "--writer", &ka[..8].to_uppercase()]
        ),
        "A's version"
    );
    assert_eq!(
        ok(a, &["cat", "/docs/plain.txt", "--writer", &ka[..4]]),
        "no conflict"
    );
    assert!(fails(a, &["cat", "/docs/plain.txt", "--writer", &kb[..8]])
        .contains("no version by writer"));
    assert!(fails(a, &["cat", "/docs/c.txt", "--writer", "xyz"]).contains("not a writer key"));
    assert!(fails(a, &["cat", "/nothing", "--writer", &ka]).contains("no such file"));

    // export: the winner under its name, the other version beside it, Syncthing style.
    let out = d[2].join("export");
    ok(a, &["export", "/docs", out.to_str().expect("utf8")]);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("exported")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let copy = format!("c.conflict-{}.txt", &lose[..8]);
    // A's edit of gone.txt survives B's concurrent delete: as the file, or beside it.
    let edit = if ok(a, &["ls", "/docs"]).contains("/docs/gone.txt") {
        "gone.txt".to_string()
    } else {
        format!("gone.conflict-{}.txt", &ka[..8])
    };
    let mut want = vec![
        copy.clone(),
        "c.txt".into(),
        edit.clone(),
        "plain.txt".into(),
    ];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        std::fs::read_to_string(out.join("c.txt")).expect("c"),
        winner
    );
    let other = if win == &ka {
        "B's version"
    } else {
        "A's version"
    };
    assert_eq!(
        std::fs::read_to_string(out.join(copy)).expect("copy"),
        other
    );
    assert_eq!(
        std::fs::read_to_string(out.join(edit)).expect("edit"),
        "A's edit"
    );
}

/// Where Chromium is; a test that needs it fails (never skips) without it.
fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser"] {
        if let Ok(o) = Command::new(c).arg("--version").output() {
            if o.status.success() {
                return PathBuf::from(c);
            }
        }
    }
    panic!(
        "Chromium is needed for the browser tests: install it with \
         `apt-get install -y --no-install-recommends chromium` (.ci/run does this)"
    );
}

/// Loads `url` in headless Chromium and returns the DOM after the page's scripts ran.
fn browse(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so a timeout ends its helper processes too.
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > WAIT {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url} within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader")
}

/// A page that fetches with `XMLHttpRequest` (synchronous, so the DOM holds the results
/// when Chromium dumps it) and shows status, headers and body.
const CHECK_PAGE: &str = r#"<!doctype html><html><body><pre id="out"></pre><script>
function probe(url, range) {
  var x = new XMLHttpRequest();
  x.open('GET', url, false);
  if (range) x.setRequestHeader('Range', range);
  x.send();
  return '[' + x.status + '|' + x.getResponseHeader('Content-Type') + '|' +
    x.getResponseHeader('Content-Range') + '|' + x.responseText + ']';
}
function listing(url) {
  var x = new XMLHttpRequest();
  x.open('GET', url, false);
  x.setRequestHeader('Accept', 'application/json');
  x.send();
  var names = JSON.parse(x.responseText).entries.map(function (e) {
    return e.name + (e.conflicts.length ? '!' : '');
  });
  return '[' + x.status + '|' + x.getResponseHeader('Content-Type') + '|' + names.join(',') + ']';
}
document.getElementById('out').textContent =
  'listing=' + listing('/docs/') + '\n' +
  'whole=' + probe('/docs/a.txt') + '\n' +
  'range=' + probe('/docs/a.txt', 'bytes=6-10') + '\n' +
  'past=' + probe('/docs/a.txt', 'bytes=100-') + '\n' +
  'writer=' + probe('/docs/c.txt?writer=WRITER');
</script></body></html>
"#;

#[test]
fn browser_sees_listings_files_ranges_and_conflicts() {
    // Fails at once, saying how to install it, when Chromium is missing.
    chromium();
    let (_t, d) = dirs(2);
    let (a, b) = (&d[0], &d[1]);
    let (ka, kb) = conflicted(a, b);
    let before = frontier(a);
    put(a, "/docs/a.txt", b"hello browser\n");
    put(
        a,
        "/t/check.html",
        CHECK_PAGE.replace("WRITER", &kb[..8]).as_bytes(),
    );
    let (_s, h) = serve_http(a, &[]);
    // The conflict tools work inside a running serve too (forwarded over its socket).
    assert_eq!(
        ok(a, &["cat", "/docs/c.txt", "--writer", &kb[..8]]),
        "B's version"
    );

    // One writer's version: the loser's is named as `export` names it.
    let named: Vec<String> = [&ka, &kb]
        .iter()
        .filter_map(|k| {
            let r = get(&h, &format!("/docs/c.txt?writer={k}"), &[]);
            assert_eq!(r.status, 200);
            r.header("content-disposition").map(str::to_string)
        })
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(
        named[0].starts_with("inline; filename*=UTF-8''c.conflict-"),
        "{named:?}"
    );

    // The folder listing, with the conflict marked and both versions linked.
    let dom = browse(&format!("http://{h}/docs/"));
    assert!(dom.contains("<a href=\"a.txt\">a.txt</a>"), "{dom}");
    assert!(dom.contains("<tr class=\"file conflict\">"), "{dom}");
    assert!(dom.contains("conflict: 2 versions"), "{dom}");
    assert!(dom.contains(&format!("c.txt?writer={kb}")), "{dom}");
    // Each version with its writer, size and time; every row with its write time.
    assert!(dom.contains("Written (UTC)"), "{dom}");
    let label = dom
        .split(&format!("c.txt?writer={kb}\">by {} (", &kb[..8]))
        .nth(1)
        .and_then(|rest| rest.split_once(')'))
        .map(|(l, _)| l.to_string())
        .expect("B's version labelled");
    // `11 B, YYYY-MM-DDTHH:MM:SSZ` (and `, shown` if it won)
    let (size, rest) = label.split_once(", ").expect("size and time");
    assert_eq!(size, "11 B", "{label}");
    let when = &rest[..20.min(rest.len())];
    assert!(when.len() == 20 && when.ends_with('Z'), "{label}");
    assert!(!dom.contains(&format!("{}@", &kb[..8])), "{dom}");
    assert!(!dom.contains("class=\"file conflict\"><td><a href=\"a.txt\""));

    // A file opened directly: Chromium shows text/plain as text.
    let dom = browse(&format!("http://{h}/docs/a.txt"));
    assert!(
        dom.contains("<pre") && dom.contains("hello browser"),
        "{dom}"
    );

    // A page from the drive (served as text/html, so its script runs) fetching a file whole,
    // a range of it, a range past its end, and B's version of the conflicted file.
    let dom = browse(&format!("http://{h}/t/check.html"));
    assert!(
        dom.contains("whole=[200|text/plain; charset=utf-8|null|hello browser\n]"),
        "{dom}"
    );
    assert!(
        dom.contains("range=[206|text/plain; charset=utf-8|bytes 6-10/14|brows]"),
        "{dom}"
    );
    assert!(dom.contains("past=[416|"), "{dom}");
    assert!(
        dom.contains("listing=[200|application/json|a.txt,c.txt!,gone.txt!,plain.txt]"),
        "{dom}"
    );
    assert!(
        dom.contains("writer=[200|text/plain; charset=utf-8|null|B's version]"),
        "{dom}"
    );

    // The version picker's past version: before a.txt was written.
    let dom = browse(&format!("http://{h}/docs/?at={before}"));
    assert!(
        dom.contains("A past version") && dom.contains("c.txt"),
        "{dom}"
    );
    assert!(!dom.contains("a.txt"), "{dom}");
}

#[test]
fn http_on_a_sparse_clone_fetches_content_from_peers() {
    let (_t, d) = dirs(2);
    let (a, c) = (&d[0], &d[1]);
    ok(a, &["init"]);
    let big = noise(900 << 10);
    put(a, "/video.mp4", &big);
    let sa = serve(a, &[]);
    // C follows A without content, then serves it over HTTP while keeping A connected.
    ok(c, &["--peer", &sa.addr, "clone", &sa.key]);
    let (_sc, h) = serve_http(c, &["--peer", &sa.addr]);
    // A seek into the middle of the video: only those blocks come from A.
    let mut r = get(&h, "/video.mp4", &["Range: bytes=500000-500099"]);
    eventually("C to reach A", || {
        if r.status != 206 {
            r = get(&h, "/video.mp4", &["Range: bytes=500000-500099"]);
        }
        r.status == 206
    });
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(
        r.header("content-range"),
        Some("bytes 500000-500099/921600")
    );
    assert_eq!(r.body, big[500000..500100]);
    let r = get(&h, "/video.mp4", &[]);
    assert_eq!(r.body, big, "the whole file, fetched on demand");
}
