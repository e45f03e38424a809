//! Interoperability of `cohd` with the pinned JavaScript stack in `js/` over the Hypercore wire
//! protocol, on 127.0.0.1 only:
//!
//! - JavaScript reads a Rust drive: `cohd serve`, then `js/interop/read-drive.js` with
//!   hyperdrive 13 / corestore 7 (`v13`) and hyperdrive 11 / corestore 6 (`v11`), which must see
//!   every file with the same size and SHA-256, symlinks and the executable flag;
//! - a connected JavaScript reader sees a live `cohd put` to the served store;
//! - Rust clones a JavaScript drive (`js/interop/serve-drive.js`, compat cores from hyperdrive 11,
//!   and from hyperdrive 13 with hand-made compat cores), fully with `--all` (then reads it with
//!   the server gone) or sparsely (then fetches on demand with `cat --peer`).
//!
//! These tests need Node.js and `js/node_modules` (`npm ci --prefix js`); without them they
//! fail, never skip. Every child process is killed when its guard drops, and every wait is
//! bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The bound for every `cohd` command and for every expected line of output.
const WAIT: Duration = Duration::from_secs(30);
/// The hard timeout given to the JavaScript reader (`--timeout-ms`).
const JS_TIMEOUT_MS: u64 = 30_000;
/// How long we wait for the JavaScript reader: a little more than its own hard timeout, so it
/// reports what it was waiting for.
const JS_WAIT: Duration = Duration::from_secs(35);

// ---------------------------------------------------------------------------------------------
// Child processes

/// What a finished child left behind.
#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A running child process; it is killed (and reaped) when the guard drops, also on panic.
/// stdout is collected chunk by chunk (so binary output and lines both work), stderr in the
/// background for error messages.
struct Proc {
    name: String,
    child: Child,
    out_rx: mpsc::Receiver<Vec<u8>>,
    out_buf: Vec<u8>,
    out_done: bool,
    err: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc").field("name", &self.name).finish()
    }
}

impl Proc {
    #[track_caller]
    fn spawn(cmd: Command, name: &str, stdin: Option<Vec<u8>>) -> Self {
        Self::try_spawn(cmd, name, stdin).unwrap_or_else(|e| panic!("cannot start `{name}`: {e}"))
    }

    fn try_spawn(mut cmd: Command, name: &str, stdin: Option<Vec<u8>>) -> std::io::Result<Self> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut threads = Vec::new();
        if let (Some(data), Some(mut input)) = (stdin, child.stdin.take()) {
            // A thread, so a large input cannot deadlock against a full stdout pipe.
            threads.push(std::thread::spawn(move || {
                let _ = input.write_all(&data);
            }));
        }
        let mut so = child.stdout.take().expect("piped stdout");
        let (tx, out_rx) = mpsc::channel();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match so.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
        let mut se = child.stderr.take().expect("piped stderr");
        let err = Arc::new(Mutex::new(Vec::new()));
        let err2 = err.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 8 * 1024];
            loop {
                match se.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        }));
        Ok(Self {
            name: name.to_string(),
            child,
            out_rx,
            out_buf: Vec::new(),
            out_done: false,
            err,
            threads,
        })
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Takes stdout chunks until `deadline`; false once stdout is closed or time is up.
    fn pull(&mut self, deadline: Instant) -> bool {
        if self.out_done {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.out_rx.recv_timeout(left) {
            Ok(chunk) => {
                self.out_buf.extend_from_slice(&chunk);
                true
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.out_done = true;
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    /// The next stdout line (without the newline); fails the test after `timeout` or at EOF.
    #[track_caller]
    fn line(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.out_buf.iter().position(|&b| b == b'\n') {
                let rest = self.out_buf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.out_buf, rest);
                line.pop();
                return String::from_utf8(line).unwrap_or_else(|e| {
                    panic!("`{}` printed a line that is not UTF-8: {e}", self.name)
                });
            }
            if !self.pull(deadline) {
                let why = if self.out_done {
                    "closed its stdout".to_string()
                } else {
                    format!("printed nothing for {timeout:?}")
                };
                panic!(
                    "`{}` {why} while a line was expected; stdout so far: {:?}; stderr:\n{}",
                    self.name,
                    String::from_utf8_lossy(&self.out_buf),
                    self.stderr()
                );
            }
        }
    }

    /// Waits until stderr contains `pat`; fails the test after `timeout` or if the child exits.
    #[track_caller]
    fn wait_stderr(&mut self, pat: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(pat) {
            if let Ok(Some(s)) = self.child.try_wait() {
                // Give the stderr reader a moment to catch the last bytes.
                std::thread::sleep(Duration::from_millis(100));
                if self.stderr().contains(pat) {
                    return;
                }
                panic!(
                    "`{}` exited ({s}) before printing {pat:?}; stdout: {:?}; stderr:\n{}",
                    self.name,
                    String::from_utf8_lossy(&self.out_buf),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "`{}` did not print {pat:?} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit (killing it and failing the test after `timeout`) and returns
    /// its status, the rest of its stdout and all of its stderr.
    #[track_caller]
    fn finish(&mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let status = loop {
            // Keep draining stdout so a chatty child cannot block on a full pipe.
            while let Ok(chunk) = self.out_rx.try_recv() {
                self.out_buf.extend_from_slice(&chunk);
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not finish within {timeout:?}; stdout: {:?}; stderr:\n{}",
                    self.name,
                    String::from_utf8_lossy(&self.out_buf),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The pipes close at exit (none of these children leave grandchildren behind).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        while self.pull(deadline + Duration::from_secs(5)) {}
        Out {
            status,
            stdout: std::mem::take(&mut self.out_buf),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a finished run succeeded.
#[track_caller]
fn ok(out: Out, what: &str) -> Out {
    assert!(
        out.status.success(),
        "`{what}` failed ({}); stdout: {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "`{what}`: {}", out.stderr);
    out
}

// ---------------------------------------------------------------------------------------------
// cohd

fn cohd_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cohd"));
    c.env_remove("COHD_DIR").arg("--dir").arg(dir).args(args);
    // Tests never reach the public DHT (tests/dht.rs uses a local one).
    c.env("COHD_NO_DHT", "1").env_remove("COHD_BOOTSTRAP");
    c
}

/// Runs `cohd --dir DIR ARGS…` to completion (bounded by [`WAIT`]) and requires success.
#[track_caller]
fn cohd_ok(dir: &Path, args: &[&str], stdin: &[u8]) -> Out {
    let what = format!("cohd {}", args.join(" "));
    let mut p = Proc::spawn(cohd_cmd(dir, args), &what, Some(stdin.to_vec()));
    ok(p.finish(WAIT), &what)
}

/// `cohd --dir DIR serve --listen 127.0.0.1:0`, once it printed its port and drive key.
#[track_caller]
fn cohd_serve(dir: &Path) -> (Proc, u16, String) {
    let mut p = Proc::spawn(
        cohd_cmd(dir, &["serve", "--listen", "127.0.0.1:0"]),
        "cohd serve",
        None,
    );
    let l1 = p.line(WAIT);
    let port = l1
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| {
            panic!("`cohd serve` line 1: expected `listening on 127.0.0.1:PORT`, got {l1:?}")
        });
    let l2 = p.line(WAIT);
    let key = l2
        .strip_prefix("key ")
        .filter(|k| is_hex_key(k))
        .unwrap_or_else(|| panic!("`cohd serve` line 2: expected `key <64 hex>`, got {l2:?}"))
        .to_string();
    (p, port, key)
}

fn is_hex_key(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Deterministic pseudo-random bytes (xorshift), including plenty of invalid UTF-8.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What a file looks like in read-drive.js / serve-drive.js output.
fn describe(data: &[u8]) -> Value {
    json!({ "size": data.len(), "sha256": sha256_hex(data) })
}

// ---------------------------------------------------------------------------------------------
// node and js/

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js")
}

/// Fails the test (never skips) unless node runs and the pinned JS stack is installed.
#[track_caller]
fn require_js() -> PathBuf {
    let js = js_dir();
    let hint = format!(
        "these interop tests need Node.js on PATH and the pinned JS stack: run `npm ci --prefix js` \
         in the repository root ({})",
        js.parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    let mut node = Command::new("node");
    node.arg("--version");
    match Proc::try_spawn(node, "node --version", None) {
        Ok(mut p) => {
            let out = p.finish(WAIT);
            assert!(out.status.success(), "`node --version` failed: {hint}");
        }
        Err(e) => panic!("cannot run `node` ({e}): {hint}"),
    }
    for m in [
        "hyperdrive",
        "hyperdrive11",
        "corestore",
        "corestore6",
        "hyperbee",
    ] {
        let pj = js.join("node_modules").join(m).join("package.json");
        assert!(pj.is_file(), "{} is missing: {hint}", pj.display());
    }
    for s in ["read-drive.js", "serve-drive.js", "common.js"] {
        let f = js.join("interop").join(s);
        assert!(f.is_file(), "{} is missing", f.display());
    }
    js
}

fn node_cmd(script: &str, args: &[String]) -> Command {
    let js = js_dir();
    let mut c = Command::new("node");
    // Killed peers never delete their temporary corestores: kept under target/, emptied on
    // the next run.
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-interop");
    static EMPTIED: std::sync::Once = std::sync::Once::new();
    EMPTIED.call_once(|| {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::create_dir_all(&tmp);
    });
    c.env("TMPDIR", &tmp);
    c.current_dir(&js)
        .arg(js.join("interop").join(script))
        .args(args);
    c
}

/// Starts `read-drive.js` against 127.0.0.1:PORT; `tag` names its storage under `tmp`.
fn start_read_drive(
    tmp: &Path,
    tag: &str,
    port: u16,
    key: &str,
    line: &str,
    extra: &[&str],
) -> Proc {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--key",
        key,
        "--line",
        line,
        "--timeout-ms",
        &JS_TIMEOUT_MS.to_string(),
        "--storage",
        tmp.join(format!("js-reader-{tag}"))
            .to_str()
            .expect("UTF-8 temp path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(
        node_cmd("read-drive.js", &args),
        &format!("node read-drive.js --line {line} {}", extra.join(" ")),
        None,
    )
}

/// Waits for a read-drive.js run and returns its one JSON line.
#[track_caller]
fn read_drive_result(mut p: Proc) -> Value {
    let name = p.name.clone();
    let out = ok(p.finish(JS_WAIT), &name);
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "`{name}` must print one JSON line, got {text:?}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("`{name}`: bad JSON ({e}): {text}"))
}

/// Compares two `files` maps, listing every difference.
#[track_caller]
fn assert_same_files(got: &Value, want: &BTreeMap<String, Value>, ctx: &str) {
    let got = got
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: `files` is not an object: {got}"));
    let mut diffs = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => diffs.push(format!("missing {path}")),
            Some(g) if g != w => diffs.push(format!("{path}: got {g}, want {w}")),
            Some(_) => {}
        }
    }
    for path in got.keys() {
        if !want.contains_key(path) {
            diffs.push(format!("unexpected {path}: {}", got[path]));
        }
    }
    assert!(diffs.is_empty(), "{ctx}:\n  {}", diffs.join("\n  "));
}

/// A JavaScript drive served by serve-drive.js, with the description it printed.
struct JsDrive {
    proc: Proc,
    port: u16,
    key: String,
    files: BTreeMap<String, Value>,
}

#[track_caller]
fn start_js_drive(tmp: &Path, line: &str) -> JsDrive {
    let args: Vec<String> = [
        "--line",
        line,
        "--storage",
        tmp.join(format!("js-server-{line}"))
            .to_str()
            .expect("UTF-8 temp path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Proc::spawn(
        node_cmd("serve-drive.js", &args),
        &format!("node serve-drive.js --line {line}"),
        None,
    );
    let l1 = proc.line(WAIT);
    let port = l1
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("serve-drive.js line 1: {l1:?}"));
    let l2 = proc.line(WAIT);
    let key = l2
        .strip_prefix("key ")
        .filter(|k| is_hex_key(k))
        .unwrap_or_else(|| panic!("serve-drive.js line 2: {l2:?}"))
        .to_string();
    let l3 = proc.line(WAIT);
    let desc: Value =
        serde_json::from_str(&l3).unwrap_or_else(|e| panic!("serve-drive.js line 3 ({e}): {l3}"));
    let files: BTreeMap<String, Value> = desc["files"]
        .as_object()
        .unwrap_or_else(|| panic!("serve-drive.js: no files in {l3}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(
        files.values().any(|v| v["size"].as_u64() > Some(1 << 20)),
        "serve-drive.js must write a file over 1 MiB: {l3}"
    );
    JsDrive {
        proc,
        port,
        key,
        files,
    }
}

// ---------------------------------------------------------------------------------------------
// A Rust drive

/// The files of the Rust drive: a 3 MiB binary (several 64 KiB blob blocks and 1 MiB appends),
/// nested paths, an empty file, a non-ASCII name with a space, an executable and a symlink.
fn rust_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("/hello.txt", b"hello from rust\n".to_vec()),
        ("/bin/three-mib.bin", noise(7, 3 * 1024 * 1024 + 12_345)),
        ("/nested/a/b/c.txt", b"three folders down\n".to_vec()),
        ("/docs/readme.md", b"# interop\nserved by cohd\n".to_vec()),
        ("/empty.txt", Vec::new()),
        (
            "/dir with space/\u{fc}n\u{ef}c\u{f6}d\u{e9}.txt",
            "utf-8 \u{2713}\n".into(),
        ),
    ]
}

/// `cohd init` (with `init_args`) plus `cohd put` of [`rust_files`], an executable and a
/// symlink; returns the drive key and what read-drive.js must print for it.
#[track_caller]
fn make_rust_drive(dir: &Path, init_args: &[&str]) -> (String, BTreeMap<String, Value>) {
    let mut init = vec!["init"];
    init.extend_from_slice(init_args);
    let key = cohd_ok(dir, &init, b"").text().trim().to_string();
    assert!(is_hex_key(&key), "`cohd init` printed {key:?}");
    let mut want = BTreeMap::new();
    for (path, data) in rust_files() {
        cohd_ok(dir, &["put", path], &data);
        want.insert(path.to_string(), describe(&data));
    }
    let script = b"#!/bin/sh\necho hi\n";
    cohd_ok(dir, &["put", "/run.sh", "--executable"], script);
    let mut d = describe(script);
    d["executable"] = json!(true);
    want.insert("/run.sh".into(), d);
    cohd_ok(dir, &["symlink", "/link", "/hello.txt"], b"");
    want.insert("/link".into(), json!({ "linkname": "/hello.txt" }));
    (key, want)
}

#[track_caller]
fn js_reads_rust_drive(line: &str, init_args: &[&str]) {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let (key, want) = make_rust_drive(&store, init_args);
    let (_server, port, served) = cohd_serve(&store);
    assert_eq!(served, key, "`cohd serve` must print the store's drive key");

    let got = read_drive_result(start_read_drive(tmp.path(), line, port, &key, line, &[]));
    assert_eq!(got["key"], json!(key));
    assert_same_files(
        &got["files"],
        &want,
        &format!("JS {line} reading a Rust drive over `cohd serve`"),
    );
}

/// hyperdrive 13 / corestore 7 / hypercore 11 reads a Rust drive as `cohd init` makes it by
/// default: manifest cores, the blobs core's manifest derived from the db core's, as
/// Hyperdrive 13 itself makes drives.
#[test]
fn js_v13_reads_rust_drive() {
    js_reads_rust_drive("v13", &[]);
}

/// hyperdrive 13 reads a Rust drive of compat cores (`cohd init --compat`).
#[test]
fn js_v13_reads_rust_compat_drive() {
    js_reads_rust_drive("v13", &["--compat"]);
}

/// hyperdrive 11 / corestore 6 / hypercore 10 reads a Rust drive made with `--compat` (it
/// knows no manifests).
#[test]
fn js_v11_reads_rust_drive() {
    js_reads_rust_drive("v11", &["--compat"]);
}

/// A JavaScript reader with nothing downloaded reads a byte range of a file from `cohd serve`:
/// Hyperblobs seeks to the range's start, which asks us for a seek proof.
#[test]
fn js_reads_a_range_through_a_seek() {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let key = cohd_ok(&store, &["init"], b"").text().trim().to_string();
    let data = noise(7, 1_500_000);
    cohd_ok(&store, &["put", "/big.bin"], &data);
    let (_server, port, _) = cohd_serve(&store);
    let got = read_drive_result(start_read_drive(
        tmp.path(),
        "range",
        port,
        &key,
        "v13",
        &["--range", "/big.bin:300001:700003"],
    ));
    assert_eq!(got["range"], describe(&data[300_001..700_003]));
}

/// Two JS readers (v13 and v11) stay connected to `cohd serve` of a compat drive (the v11
/// reader knows no manifests) while `cohd put` writes to the served store (the write goes
/// through the running server); both must see the new file.
#[test]
fn js_reads_live_appends() {
    js_reads_live_appends_to(&["--compat"], &["v13", "v11"]);
}

/// The same for a drive as `cohd init` makes it by default (manifest cores), read by v13.
#[test]
fn js_reads_live_appends_to_a_manifest_drive() {
    js_reads_live_appends_to(&[], &["v13"]);
}

#[track_caller]
fn js_reads_live_appends_to(init_args: &[&str], lines: &[&'static str]) {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let mut init = vec!["init"];
    init.extend_from_slice(init_args);
    let key = cohd_ok(&store, &init, b"").text().trim().to_string();
    cohd_ok(&store, &["put", "/before.txt"], b"written before serving\n");
    let (_server, port, _) = cohd_serve(&store);

    let wait = ["--expect-file", "/live.txt", "--wait-ms", "25000"];
    let mut readers: Vec<(&str, Proc)> = lines
        .iter()
        .map(|&line| {
            (
                line,
                start_read_drive(tmp.path(), line, port, &key, line, &wait),
            )
        })
        .collect();
    // Both are connected and up to date with the drive before the append.
    for (_, r) in &mut readers {
        r.wait_stderr("db length after update", WAIT);
    }

    let live = noise(99, 200_000);
    cohd_ok(&store, &["put", "/live.txt"], &live);

    let want: BTreeMap<String, Value> = [
        (
            "/before.txt".to_string(),
            describe(b"written before serving\n"),
        ),
        ("/live.txt".to_string(), describe(&live)),
    ]
    .into_iter()
    .collect();
    for (line, r) in readers {
        let got = read_drive_result(r);
        assert_same_files(
            &got["files"],
            &want,
            &format!("connected JS {line} reader after a live `cohd put`"),
        );
    }
}

/// Clones a JS drive with `--all`, stops the JS server, and reads every file from the clone.
#[track_caller]
fn rust_clones_js_drive(line: &str) {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let js = start_js_drive(tmp.path(), line);
    let store = tmp.path().join("clone");
    let peer = format!("127.0.0.1:{}", js.port);
    cohd_ok(&store, &["clone", &js.key, "--peer", &peer, "--all"], b"");

    // --all: everything is local now; the JavaScript peer goes away.
    drop(js.proc);
    check_clone_reads(&store, &js.key, &js.files, &[]);
}

/// Exact bytes of every file via `cat` (plus `cat_args`), and `ls -r` lists exactly them.
#[track_caller]
fn check_clone_reads(store: &Path, key: &str, files: &BTreeMap<String, Value>, cat_args: &[&str]) {
    let ls = cohd_ok(store, &["--drive", key, "ls", "-r"], b"").text();
    let listed: BTreeSet<&str> = ls.lines().collect();
    let expected: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(listed, expected, "`cohd ls -r` of the clone");
    for (path, want) in files {
        let mut args = vec!["--drive", key, "cat", path.as_str()];
        args.extend_from_slice(cat_args);
        let out = cohd_ok(store, &args, b"");
        assert_eq!(
            &describe(&out.stdout),
            want,
            "`cohd cat {path}` of the clone differs from what JS wrote"
        );
    }
}

/// Rust clones a hyperdrive 11 / corestore 6 drive (hypercore 10: compat cores by default).
#[test]
fn rust_clones_js_v11_drive() {
    rust_clones_js_drive("v11");
}

/// Rust clones a hyperdrive 13 drive whose cores serve-drive.js made compat.
#[test]
fn rust_clones_js_v13_compat_drive() {
    rust_clones_js_drive("v13");
}

/// Rust clones a hyperdrive 13 drive as JavaScript makes it by default: manifest cores (the
/// key is the manifest's hash; the manifest comes with the first proof) and a blobs core
/// whose key and manifest derive from the db core's manifest.
#[test]
fn rust_clones_js_v13_default_drive() {
    rust_clones_js_drive("v13-default");
}

/// Disk space every file under `dir` takes (allocated blocks: the database's journal is a
/// sparse file preallocated to 64 MiB).
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Without `--all`, clone takes the metadata only; `cat --peer` fetches a file's content on
/// demand, including the last blocks of the blobs core and the > 1 MiB file.
#[test]
fn rust_sparse_clone_fetches_on_demand() {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let js = start_js_drive(tmp.path(), "v11");
    let store = tmp.path().join("clone");
    let peer = format!("127.0.0.1:{}", js.port);
    cohd_ok(&store, &["clone", &js.key, "--peer", &peer], b"");

    let (big, big_size) = js
        .files
        .iter()
        .map(|(p, v)| (p.clone(), v["size"].as_u64().unwrap_or(0)))
        .max_by_key(|(_, s)| *s)
        .expect("files");
    let on_disk = tree_bytes(&store);
    assert!(
        on_disk < big_size,
        "a clone without --all must not download content: the store holds {on_disk} bytes, \
         more than {big} ({big_size} bytes)"
    );

    // The metadata is local: the listing needs no peer.
    let ls = cohd_ok(&store, &["--drive", &js.key, "ls", "-r"], b"").text();
    let listed: BTreeSet<&str> = ls.lines().collect();
    let expected: BTreeSet<&str> = js.files.keys().map(String::as_str).collect();
    assert_eq!(listed, expected, "`cohd ls -r` of a sparse clone");

    // One file first (the big one), then all of them, fetched from the peer.
    let out = cohd_ok(
        &store,
        &["--drive", &js.key, "cat", &big, "--peer", &peer],
        b"",
    );
    assert_eq!(
        &describe(&out.stdout),
        &js.files[&big],
        "sparse `cat {big}`"
    );
    check_clone_reads(&store, &js.key, &js.files, &["--peer", &peer]);
}

/// A JavaScript peer does not know the authorization extension and never answers: asking it
/// for write access ends with a timeout error after `--timeout`, not a hang.
#[test]
fn request_auth_to_a_peer_that_never_answers_times_out() {
    require_js();
    let tmp = tempfile::tempdir().expect("tempdir");
    let js = start_js_drive(tmp.path(), "v11");
    let store = tmp.path().join("clone");
    let peer = format!("127.0.0.1:{}", js.port);
    cohd_ok(&store, &["clone", &js.key, "--peer", &peer], b"");
    let what = "cohd request-auth --timeout 2";
    let t = std::time::Instant::now();
    let mut p = Proc::spawn(
        cohd_cmd(&store, &["--peer", &peer, "request-auth", "--timeout", "2"]),
        what,
        None,
    );
    let out = p.finish(WAIT);
    let took = t.elapsed();
    assert!(!out.status.success(), "{what} succeeded");
    assert!(
        out.stderr.contains("error:") && out.stderr.contains("no writer answered within 2s"),
        "{}",
        out.stderr
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{what} took {took:?}"
    );
}
