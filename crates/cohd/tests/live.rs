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
        err.contains("content not downloaded yet"),
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

/// Runs `cohd ARGS` expecting a failure that names `why`, well before the 60 s a catch-up may
/// take (the bound is loose: it tells "fails fast" from "waits for the catch-up limit").
fn fails_soon(dir: &Path, args: &[&str], why: &str) {
    let start = Instant::now();
    let err = fails(dir, args);
    assert!(err.contains(why), "`cohd {}`: {err}", args.join(" "));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "`cohd {}` took {:?}",
        args.join(" "),
        start.elapsed()
    );
}

#[test]
fn wrong_peers_fail_in_seconds_with_the_reason() {
    let (_t, d) = dirs(3);
    let key = ok(&d[0], &["init"]).trim().to_string();
    // A follower of the drive, for the commands that need one (sync, reads, request-auth).
    let s0 = serve(&d[0], &[]);
    let follower = &d[1];
    // (A host name works as well as an address.)
    let port = s0.addr.rsplit(':').next().expect("port");
    ok(
        follower,
        &["--peer", &format!("localhost:{port}"), "clone", &key],
    );
    drop(s0);
    let fresh = |n: &str| d[1].with_file_name(format!("fresh-{n}"));

    // A port that accepts and never answers (a silent or foreign server).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let no_hello = "no Hypercore handshake";
    fails_soon(&fresh("a"), &["--peer", &addr, "clone", &key], no_hello);
    fails_soon(follower, &["--peer", &addr, "sync"], no_hello);
    fails_soon(
        follower,
        &["--peer", &addr, "request-auth", "--timeout", "2"],
        no_hello,
    );

    // A Hypercore peer that does not have the drive, which also serves HTTP.
    ok(&d[2], &["init"]);
    let other = serve(&d[2], &["--http", "127.0.0.1:0"]);
    let no_drive = format!("does not have co-drive {key}");
    fails_soon(
        &fresh("b"),
        &["--peer", &other.addr, "clone", &key],
        &no_drive,
    );
    fails_soon(follower, &["--peer", &other.addr, "sync"], &no_drive);
    fails_soon(follower, &["--peer", &other.addr, "cat", "/x"], &no_drive);

    // Its HTTP port: not a Hypercore peer at all, said at once for every command.
    let http = other
        .lines
        .recv_timeout(WAIT)
        .expect("http line")
        .trim_start_matches("http on http://")
        .trim_end_matches('/')
        .to_string();
    let is_http = "is not a Hypercore peer: it answered as an HTTP server";
    fails_soon(&fresh("c"), &["--peer", &http, "clone", &key], is_http);
    for args in [
        &["sync"][..],
        &["cat", "/x"],
        &["ls"],
        &["request-auth", "--timeout", "2"],
    ] {
        let mut a = vec!["--peer", http.as_str()];
        a.extend_from_slice(args);
        fails_soon(follower, &a, is_http);
    }

    // Nothing listening: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    fails_soon(follower, &["--peer", &closed, "sync"], "refused");
    drop(silent);
}
