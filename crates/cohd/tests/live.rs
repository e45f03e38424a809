//! Always-on peers: writers that both keep `cohd serve` running see each other's writes with
//! no manual sync, through a relay too, and find each other again after either restarts
//! (stable ports, remembered peers, redialling with backoff).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn stop(mut s: Serve, sig: &str) {
    signal(&s.child, sig);
    let start = Instant::now();
    while s.child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < WAIT, "serve did not stop on SIG{sig}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `path` on `from` and waits (bounded) until `to` reads it.
fn arrives(from: &Path, to: &Path, path: &str, data: &[u8]) {
    ok_in(from, &["put", path, "-"], data);
    eventually(&format!("{path} to arrive"), || {
        run(to, &["cat", path], b"").stdout == data
    });
}

#[test]
fn serving_writers_stay_live_across_restarts_and_relays() {
    let (_t, d) = dirs(4);
    let (a, b, c, e) = (&d[0], &d[1], &d[2], &d[3]);
    ok(a, &["init"]);
    let sa = serve(a, &["--allow-all"]);
    // B is a mirror (--all): it keeps every writer's content, so it can relay it.
    ok(b, &["--peer", &sa.addr, "clone", &sa.key, "--all"]);
    ok(b, &["--peer", &sa.addr, "request-auth", "--timeout", "20"]);
    // B dials A by host name; both serve.
    let port = sa.addr.rsplit(':').next().expect("port").to_string();
    let sb = serve(b, &["--peer", &format!("localhost:{port}")]);
    arrives(a, b, "/from-a.txt", b"a1");
    arrives(b, a, "/from-b.txt", b"b1");

    // C knows only B: A's writes reach it through B, and C's status shows the peer.
    ok(c, &["--peer", &sb.addr, "clone", &sa.key]);
    let sc = serve(c, &["--peer", &sb.addr]);
    arrives(a, c, "/relayed.txt", b"through b");
    let status: serde_json::Value =
        serde_json::from_str(&ok(c, &["status", "--json"])).expect("status json");
    assert_eq!(status["peers"][0]["addr"], sb.addr.as_str(), "{status}");
    assert_eq!(status["peers"][0]["connected"], true, "{status}");

    // A is killed and comes back on the same port: B dials it again.
    let a_addr = sa.addr.clone();
    stop(sa, "KILL");
    let sa = serve(a, &["--allow-all"]);
    assert_eq!(sa.addr, a_addr, "a restarted serve keeps its port");
    arrives(a, b, "/after-a-restart.txt", b"a2");
    arrives(a, c, "/after-a-restart-c.txt", b"a3");

    // B stops cleanly and comes back with no --peer: it remembers A.
    stop(sb, "TERM");
    let sb = serve(b, &[]);
    arrives(a, b, "/after-b-restart.txt", b"a4");
    arrives(b, a, "/from-b-again.txt", b"b2");

    // E, a clone without --all, follows A live but stays sparse: the listing arrives, the
    // content only when read.
    ok(e, &["--peer", &sa.addr, "clone", &sa.key]);
    let se = serve(e, &["--peer", &sa.addr]);
    ok_in(a, &["put", "/sparse.bin", "-"], &[5u8; 100_000]);
    eventually("the listing to reach E", || {
        String::from_utf8_lossy(&run(e, &["ls", "-r"], b"").stdout).contains("/sparse.bin")
    });
    stop(se, "TERM");
    let err = fails(e, &["cat", "/sparse.bin"]);
    assert!(
        err.contains("not available"),
        "a sparse clone fetched content: {err}"
    );

    // `cohd connect` adds a peer to a running serve; a bad one fails with the reason.
    let err = fails(c, &["connect", "127.0.0.1:1"]);
    assert!(err.contains("cannot connect"), "{err}");
    let out = ok(c, &["connect", &sa.addr]);
    assert!(out.contains("connected"), "{out}");
    drop((sa, sb, sc));
}

#[test]
fn status_and_connect_without_a_serve() {
    let (_t, d) = dirs(1);
    ok(&d[0], &["init"]);
    let out = ok(&d[0], &["status"]);
    assert!(out.contains("not serving"), "{out}");
    let err = fails(&d[0], &["connect", "localhost:7000"]);
    assert!(err.contains("cohd serve"), "{err}");
    let err = fails(&d[0], &["--peer", "no-such-host.invalid:1", "sync"]);
    assert!(err.contains("resolve"), "{err}");
}

#[test]
fn wrong_peers_fail_in_seconds_with_the_reason() {
    let (_t, d) = dirs(3);
    let key = ok(&d[0], &["init"]).trim().to_string();
    // A port that accepts and never answers (a silent or foreign server).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let start = Instant::now();
    let err = fails(&d[1], &["--peer", &addr, "clone", &key]);
    assert!(err.contains("no Hypercore handshake"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    // A Hypercore peer that does not have the drive.
    ok(&d[2], &["init"]);
    let other = serve(&d[2], &[]);
    let start = Instant::now();
    let err = fails(&d[1], &["--peer", &other.addr, "clone", &key]);
    assert!(err.contains("does not have co-drive"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}
