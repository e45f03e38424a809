//! Discovery on HyperDHT, on a private DHT on 127.0.0.1 only (`js/interop/dht-testnet.js`, the
//! pinned JavaScript `hyperdht/testnet`): every `cohd` here gets `COHD_BOOTSTRAP` pointing at it,
//! and no `--peer`.
//!
//! - two `cohd serve` writers find each other by the co-drive's topic and stay live;
//! - a JavaScript Hyperswarm + Hyperdrive reader finds a `cohd serve` and reads the drive;
//! - `cohd clone` finds a JavaScript Hyperswarm seeder and reads the drive;
//! - serving writers reconnect after any of them is killed (-9) and restarted, and converge.
//!
//! These tests need Node.js and `js/node_modules` (`npm ci --prefix js`); without them they
//! fail, never skip. Every wait is bounded; child processes are killed when their guards drop
//! (the testnet also exits when its stdin, held by this process, closes).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;

/// `node`, its temporary files kept under `target/` (see [`js_tmp`]).
fn node() -> Command {
    let mut c = Command::new("node");
    c.env("TMPDIR", js_tmp("dht"));
    c
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js")
}

/// A child killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The testnet, started once per test binary; its stdin is kept so that it exits with us.
static TESTNET: OnceLock<Mutex<(Child, Option<ChildStdin>)>> = OnceLock::new();

/// One test at a time: each runs several `cohd serve` and DHT nodes, and on a loaded machine
/// (2 cores) tests side by side stretched a first connection past the bounds.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the local DHT (once) and points every `cohd` of this binary at it.
fn use_dht() -> &'static str {
    TESTNET.get_or_init(|| {
        let script = js_dir().join("interop/dht-testnet.js");
        let mut child = node()
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run node {} ({e}): install Node.js and run `npm ci --prefix js`",
                    script.display()
                )
            });
        let line = first_line(
            child.stdout.take().expect("stdout"),
            "the testnet's bootstrap line",
        );
        let b = line
            .strip_prefix("bootstrap ")
            .unwrap_or_else(|| panic!("unexpected testnet output {line:?}"))
            .to_string();
        assert!(b.starts_with("127.0.0.1:"), "{b}");
        DHT_BOOTSTRAP.set(b).expect("set once");
        let stdin = child.stdin.take();
        Mutex::new((child, stdin))
    });
    DHT_BOOTSTRAP.get().expect("bootstrap")
}

/// The first line of `out` (bounded by [`WAIT`]).
fn first_line(out: impl std::io::Read + Send + 'static, what: &str) -> String {
    lines(out)
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

fn lines(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Writes `path` on `from` and waits (bounded) until `to` reads it.
fn arrives(from: &Path, to: &Path, path: &str, data: &[u8]) {
    ok_in(from, &["put", path, "-"], data);
    eventually(&format!("{path} to arrive"), || {
        run(to, &["cat", path], b"").stdout == data
    });
}

/// Polls (bounded by `bound`) until `to` reads `data` at `path`; returns how long it took.
fn arrived_within(to: &Path, path: &str, data: &[u8], bound: Duration) -> Duration {
    let start = std::time::Instant::now();
    while run(to, &["cat", path], b"").stdout != data {
        assert!(
            start.elapsed() < bound,
            "{path} did not arrive within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// How long two serving writers may take to find each other again after one restarted (about
/// 2 s here: the restarted one, with a fresh DHT key, finds and dials the other).
const RECONNECT: Duration = Duration::from_secs(30);

/// Two serving writers on the DHT (A, which authorized B, and B), both granting requests.
fn two_serving_writers(a: &Path, b: &Path) -> (Serve, Serve) {
    ok(a, &["init"]);
    ok_in(a, &["put", "/first.txt", "-"], b"before b");
    let sa = serve(a, &["--allow-all"]);
    ok(b, &["clone", &sa.key, "--all"]);
    ok(b, &["request-auth", "--timeout", "20"]);
    // Both grant requests: a third writer's request may reach either.
    let sb = serve(b, &["--allow-all"]);
    arrives(a, b, "/from-a.txt", b"a1");
    arrives(b, a, "/from-b.txt", b"b1");
    (sa, sb)
}

#[test]
fn serving_writers_reconnect_after_either_is_killed() {
    let _serial = serial();
    use_dht();
    let (_t, d) = dirs(2);
    let (a, b) = (&d[0], &d[1]);
    let (sa, sb) = two_serving_writers(a, b);
    let dirs = [a, b];
    let mut serving = [Some(sa), Some(sb)];
    // A killed, then B, then A again.
    for (round, dead) in [0, 1, 0].into_iter().enumerate() {
        let (dead_dir, live_dir) = (dirs[dead], dirs[1 - dead]);
        let dead = &mut serving[dead];
        let s = dead.take().expect("serving");
        signal(&s.child, "KILL");
        drop(s);
        // Written while the other is down, and after it is back.
        let p1 = format!("/round{round}-while-down.txt");
        ok_in(live_dir, &["put", &p1, "-"], p1.as_bytes());
        *dead = Some(serve(dead_dir, &["--allow-all"]));
        let p2 = format!("/round{round}-after.txt");
        ok_in(dead_dir, &["put", &p2, "-"], p2.as_bytes());
        let t1 = arrived_within(dead_dir, &p1, p1.as_bytes(), RECONNECT);
        let t2 = arrived_within(live_dir, &p2, p2.as_bytes(), RECONNECT);
        eprintln!("round {round}: reconnected in {t1:?}, {t2:?}");
        // Live again, both ways.
        arrives(
            live_dir,
            dead_dir,
            &format!("/round{round}-live1.txt"),
            b"x",
        );
        arrives(
            dead_dir,
            live_dir,
            &format!("/round{round}-live2.txt"),
            b"y",
        );
    }
    drop(serving);
}

/// Three serving writers; C is killed mid-stream and restarted (with a new DHT key) while A and
/// B keep writing. Once flaky (B's `serve` sometimes never reached A): peeroxide's swarm never
/// dials a peer again after one failed attempt, and looks topics up only every 10 minutes; we now
/// look up and dial ourselves, with retries (`net/dht.rs`).
#[test]
fn three_serving_writers_converge_across_a_restart_mid_stream() {
    let _serial = serial();
    use_dht();
    let (_t, d) = dirs(3);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    let (sa, sb) = two_serving_writers(a, b);
    ok(c, &["clone", &sa.key, "--all"]);
    ok(c, &["request-auth", "--timeout", "20"]);
    let mut sc = Some(serve(c, &[]));
    arrives(c, a, "/from-c.txt", b"c1");
    let mut expected = Vec::new();
    // A and B keep writing; C is killed at the third write and back at the sixth.
    for i in 0..9 {
        for (dir, who) in [(a, "a"), (b, "b")] {
            let p = format!("/stream/{who}{i}.txt");
            ok_in(dir, &["put", &p, "-"], p.as_bytes());
            expected.push(p);
        }
        match i {
            3 => {
                let s = sc.take().expect("serving");
                signal(&s.child, "KILL");
                drop(s);
            }
            6 => sc = Some(serve(c, &[])),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for dir in [a, b, c] {
        for p in &expected {
            arrived_within(dir, p, p.as_bytes(), RECONNECT);
        }
    }
    drop((sa, sb, sc));
}

#[test]
fn serving_writers_find_each_other_on_the_dht() {
    let _serial = serial();
    use_dht();
    let (_t, d) = dirs(4);
    let (a, b, c, e) = (&d[0], &d[1], &d[2], &d[3]);
    ok(a, &["init"]);
    ok_in(a, &["put", "/first.txt", "-"], b"before b");
    let sa = serve(a, &["--allow-all"]);
    // No --peer anywhere: B finds A by the co-drive's topic.
    let out = run(b, &["clone", &sa.key, "--all"], b"");
    assert!(
        out.status.success(),
        "clone over the DHT: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(b, &["cat", "/first.txt"]), "before b");
    ok(b, &["request-auth", "--timeout", "20"]);
    // Both grant requests: a third writer's request may reach either.
    let sb = serve(b, &["--allow-all"]);
    arrives(a, b, "/from-a.txt", b"a1");
    arrives(b, a, "/from-b.txt", b"b1");
    arrives(a, b, "/from-a-again.txt", b"a2");
    // `status` tells what discovery does: both hold a live DHT connection, and B, which looked
    // the topic up after A announced it, knows A's key.
    for (dir, found) in [(a, 0), (b, 1)] {
        let v: serde_json::Value =
            serde_json::from_str(&ok(dir, &["status", "--json"])).expect("status --json");
        let dht = &v["dht"];
        assert_eq!(dht["reachable"], true, "{v}");
        let n = |f: &str| dht[f].as_u64().unwrap_or_else(|| panic!("{f} in {v}"));
        assert!(n("accepted") + n("dialled") >= 1, "{v}");
        assert!(n("known") >= found, "{v}");
    }

    // `sync` with no --peer finds the serving writers too.
    ok(e, &["clone", &sa.key]);
    ok_in(b, &["put", "/for-sync.txt", "-"], b"synced");
    eventually("A to have B's write", || {
        run(a, &["cat", "/for-sync.txt"], b"").stdout == b"synced"
    });
    ok(e, &["sync"]);
    // A sparse clone: the entry is there, its content fetched on a read while connected.
    assert!(ok(e, &["ls", "/"]).contains("for-sync.txt"));

    // Nobody has this co-drive: a clear error, in bounded time.
    let t = std::time::Instant::now();
    let err = fails(c, &["clone", &"ab".repeat(32)]);
    assert!(err.contains("found no peer"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(28), "{:?}", t.elapsed());
    // --no-dht: nothing to look up.
    let err = fails(c, &["--no-dht", "clone", &sa.key]);
    assert!(err.contains("--peer"), "{err}");
    drop((sa, sb));
}

#[test]
fn javascript_hyperswarm_reader_finds_a_cohd_serve() {
    let _serial = serial();
    let bootstrap = use_dht();
    let (_t, d) = dirs(1);
    ok(&d[0], &["init"]);
    ok_in(
        &d[0],
        &["put", "/hello.txt", "-"],
        b"hello from rust over the dht\n",
    );
    let s = serve(&d[0], &[]);
    let mut js = node();
    js.arg(js_dir().join("interop/read-drive.js"))
        .args([
            "--bootstrap",
            bootstrap,
            "--key",
            &s.key,
            "--timeout-ms",
            "25000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(js.spawn().expect("node read-drive.js"));
    let out = lines(child.0.stdout.take().expect("stdout"));
    let err = child.0.stderr.take().expect("stderr");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
        s
    });
    let line = out.recv_timeout(Duration::from_secs(30));
    let line = line.unwrap_or_else(|_| {
        drop(child);
        panic!(
            "the JavaScript reader printed nothing: {}",
            errs.join().unwrap_or_default()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["files"]["/hello.txt"]["size"], 29, "{v}");
    drop(s);
}

/// `cohd clone` with no --peer finds a JavaScript Hyperswarm seeder (`serve-drive.js
/// --bootstrap`, a hyperdrive 13 default drive) on the DHT and reads it. The seeder answers the
/// handshake as "firewall unknown": our client, counting as firewalled, dials it by the same-host
/// shortcut (docs/dht-notes.md, "As built").
#[test]
fn cohd_clone_finds_a_javascript_seeder() {
    let _serial = serial();
    let bootstrap = use_dht();
    let (_t, d) = dirs(1);
    let mut js = node();
    js.arg(js_dir().join("interop/serve-drive.js"))
        .args(["--line", "v13-default", "--bootstrap", bootstrap])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Guard(js.spawn().expect("node serve-drive.js"));
    let out = lines(child.0.stdout.take().expect("stdout"));
    let _listening = out.recv_timeout(WAIT).expect("listening line");
    let key = out.recv_timeout(WAIT).expect("key line");
    let key = key.trim_start_matches("key ").to_string();
    ok(&d[0], &["clone", &key, "--all"]);
    drop(child);
    let got = ok(&d[0], &["cat", "/hello.txt"]);
    assert_eq!(got, "hello from javascript\n");
}

/// A JavaScript Hyperswarm + Hyperdrive peer driven on stdin (`js/interop/swarm-peer.js`); killed
/// on drop.
struct JsPeer {
    stdin: ChildStdin,
    out: std::sync::mpsc::Receiver<String>,
    key: String,
    _child: Guard,
}

fn js_peer(bootstrap: &str, args: &[&str]) -> JsPeer {
    let mut child = node()
        .arg(js_dir().join("interop/swarm-peer.js"))
        .args(["--bootstrap", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node swarm-peer.js");
    let stdin = child.stdin.take().expect("stdin");
    let out = lines(child.stdout.take().expect("stdout"));
    let child = Guard(child);
    let key = out.recv_timeout(WAIT).expect("the JS peer's key line");
    let key = key
        .strip_prefix("key ")
        .unwrap_or_else(|| panic!("unexpected JS peer output {key:?}"))
        .to_string();
    JsPeer {
        stdin,
        out,
        key,
        _child: child,
    }
}

impl JsPeer {
    fn ask(&mut self, line: &str, bound: Duration) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("JS peer stdin");
        self.stdin.flush().expect("JS peer stdin");
        self.out
            .recv_timeout(bound)
            .unwrap_or_else(|_| panic!("the JS peer did not answer {line:?} within {bound:?}"))
    }

    /// Writes `text` at `path` (a peer started with `--create`).
    fn put(&mut self, path: &str, text: &str) {
        let r = self.ask(&format!("put {path} {text}"), WAIT);
        assert_eq!(r, "ok", "JS put {path}");
    }

    /// Asserts that the JS peer reads `text` at `path` in one of its drives (bounded).
    fn has(&mut self, path: &str, text: &str) {
        let ms = RECONNECT.as_millis();
        let r = self.ask(&format!("wait {path} {text} {ms}"), RECONNECT + WAIT);
        assert_eq!(r, "ok", "the JS peer does not read {path}");
    }
}

/// The co-drive's writer keys (hex), the primary first.
fn writer_keys(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(dir, &["writers", "--json"])).expect("writers --json");
    let mut keys: Vec<(bool, String)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|w| {
            (
                w["primary"] != true,
                w["key"].as_str().expect("key").to_string(),
            )
        })
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

/// `cohd serve` dials a JavaScript Hyperswarm *server*: the JS writer joins its drive's topic as
/// a server only, so every connection it has is one `serve` made; its live writes reach the
/// serving mirror, also after the mirror was killed and restarted.
#[test]
fn cohd_serve_dials_a_javascript_hyperswarm_server() {
    let _serial = serial();
    let bootstrap = use_dht();
    let (_t, d) = dirs(1);
    let m = &d[0];
    let mut js = js_peer(bootstrap, &["--create", "--server-only"]);
    js.put("/first.txt", "from javascript");
    ok(m, &["clone", &js.key, "--all"]);
    assert_eq!(ok(m, &["cat", "/first.txt"]), "from javascript");
    let s = serve(m, &[]);
    js.put("/live.txt", "live from javascript");
    arrived_within(m, "/live.txt", b"live from javascript", RECONNECT);
    signal(&s.child, "KILL");
    drop(s);
    js.put("/while-down.txt", "written while the mirror was down");
    let _s = serve(m, &[]);
    arrived_within(
        m,
        "/while-down.txt",
        b"written while the mirror was down",
        RECONNECT,
    );
    js.put("/after.txt", "after the restart");
    arrived_within(m, "/after.txt", b"after the restart", RECONNECT);
}

/// Two serving writers and a JavaScript Hyperswarm peer that replicates both writers' drives
/// (as a mirror, found on and finding the co-drive's topic) stay identical while they write,
/// across a kill -9 and restart of each writer, and of the JS peer itself.
#[test]
fn a_javascript_peer_stays_identical_with_serving_writers_across_restarts() {
    let _serial = serial();
    let bootstrap = use_dht();
    let (t, d) = dirs(2);
    let (a, b) = (&d[0], &d[1]);
    let (sa, sb) = two_serving_writers(a, b);
    let keys = writer_keys(a).join(",");
    let storage = t.path().join("js");
    let storage = storage.to_str().expect("utf-8 path");
    let js_args = ["--keys", &keys, "--storage", storage];
    let mut js = js_peer(bootstrap, &js_args);
    js.has("/from-a.txt", "a1");
    js.has("/from-b.txt", "b1");
    let dirs = [a, b];
    let mut serving = [Some(sa), Some(sb)];
    for (round, dead) in [0, 1].into_iter().enumerate() {
        let (dead_dir, live_dir) = (dirs[dead], dirs[1 - dead]);
        let s = serving[dead].take().expect("serving");
        signal(&s.child, "KILL");
        drop(s);
        let p1 = format!("/js-round{round}-while-down.txt");
        ok_in(live_dir, &["put", &p1, "-"], p1.as_bytes());
        js.has(&p1, &p1);
        serving[dead] = Some(serve(dead_dir, &["--allow-all"]));
        let p2 = format!("/js-round{round}-after.txt");
        ok_in(dead_dir, &["put", &p2, "-"], p2.as_bytes());
        js.has(&p2, &p2);
        arrived_within(dead_dir, &p1, p1.as_bytes(), RECONNECT);
        arrived_within(live_dir, &p2, p2.as_bytes(), RECONNECT);
    }
    // The JS peer restarts (same storage) while both write.
    drop(js);
    ok_in(a, &["put", "/js-down-a.txt", "-"], b"js-down-a");
    ok_in(b, &["put", "/js-down-b.txt", "-"], b"js-down-b");
    let mut js = js_peer(bootstrap, &js_args);
    js.has("/js-down-a.txt", "js-down-a");
    js.has("/js-down-b.txt", "js-down-b");
    arrives(a, b, "/js-back.txt", b"js-back");
    js.has("/js-back.txt", "js-back");
    drop(serving);
}

/// Two serving writers and a serving mirror (`clone --all`, then `serve`), started with nothing
/// but the co-drive key and the local bootstrap address, stay identical while both write, across
/// a kill -9 and restart of each of them in turn.
#[test]
fn two_writers_and_a_mirror_stay_identical_across_restarts_of_each() {
    let _serial = serial();
    use_dht();
    let (_t, d) = dirs(3);
    let (a, b, m) = (&d[0], &d[1], &d[2]);
    let (sa, sb) = two_serving_writers(a, b);
    ok(m, &["clone", &sa.key, "--all"]);
    let sm = serve(m, &[]);
    arrives(a, m, "/to-the-mirror.txt", b"m");
    let dirs = [a, b, m];
    let args: [&[&str]; 3] = [&["--allow-all"], &["--allow-all"], &[]];
    let mut serving = [Some(sa), Some(sb), Some(sm)];
    let mut expected = Vec::new();
    for (round, victim) in [2, 0, 1].into_iter().enumerate() {
        let s = serving[victim].take().expect("serving");
        signal(&s.child, "KILL");
        drop(s);
        for w in [0, 1].into_iter().filter(|w| *w != victim) {
            let p = format!("/r{round}/down-{w}.txt");
            ok_in(dirs[w], &["put", &p, "-"], p.as_bytes());
            expected.push(p);
        }
        serving[victim] = Some(serve(dirs[victim], args[victim]));
        for w in [0, 1] {
            let p = format!("/r{round}/up-{w}.txt");
            ok_in(dirs[w], &["put", &p, "-"], p.as_bytes());
            expected.push(p);
        }
    }
    for dir in dirs {
        for p in &expected {
            arrived_within(dir, p, p.as_bytes(), RECONNECT);
        }
    }
    let listing = |dir: &Path| {
        (0..3)
            .map(|r| ok(dir, &["ls", &format!("/r{r}")]))
            .collect::<Vec<_>>()
    };
    assert_eq!(listing(a), listing(b));
    assert_eq!(listing(a), listing(m));
    drop(serving);
}
