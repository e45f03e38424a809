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
        let mut child = Command::new("node")
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
    let (_t, d) = dirs(3);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
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
    let mut js = Command::new("node");
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
    let mut js = Command::new("node");
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
