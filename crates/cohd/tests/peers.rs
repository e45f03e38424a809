//! Several `cohd` processes on loopback TCP: authorization requests (allowed, denied, nobody able
//! to decide), writes by an authorized writer reaching every peer, relay through a non-writer,
//! deauthorization, and concurrent writes shown as conflicts on every peer.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
/// `clone` counts files and links apart, as `import` and `export` do.
#[test]
fn clone_counts_files_and_links() {
    let (_t, d) = dirs(2);
    ok(&d[0], &["init"]);
    ok_in(&d[0], &["put", "/a.txt", "-"], b"a");
    ok(&d[0], &["symlink", "/l", "/a.txt"]);
    let s = serve(&d[0], &[]);
    let out = run(&d[1], &["--peer", &s.addr, "clone", &s.key], b"");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cloned {}: 1 file and 1 link", s.key)),
        "{err}"
    );
}

#[test]
fn request_auth_write_relay_deauthorize_and_conflicts() {
    let (_t, d) = dirs(4);
    let (a, b, c, e) = (&d[0], &d[1], &d[2], &d[3]);
    ok(a, &["init"]);
    ok_in(a, &["put", "/a.txt", "-"], b"from a");
    let sa = serve(a, &["--allow-all"]);

    // B follows A, asks to write, is allowed, writes, and syncs back.
    ok(b, &["--peer", &sa.addr, "clone", &sa.key]);
    assert_eq!(ok(b, &["--peer", &sa.addr, "cat", "/a.txt"]), "from a");
    let b_key = ok(b, &["whoami"]).trim().to_string();
    assert!(fails(b, &["put", "/b.txt", "-"]).contains("cohd authorize"));
    ok(b, &["--peer", &sa.addr, "request-auth", "--timeout", "20"]);
    ok_in(b, &["put", "/b.txt", "-"], b"from b");
    let synced = run(b, &["--peer", &sa.addr, "sync", "--all"], b"");
    assert!(synced.status.success());
    // It says what it did.
    let said = String::from_utf8_lossy(&synced.stderr);
    assert!(
        said.contains(&format!(
            "synced co-drive {} with {}: 2 writers up to date",
            sa.key, sa.addr
        )),
        "{said}"
    );
    // A (through its running serve) sees B's file.
    eventually("A to see B's file", || {
        run(a, &["cat", "/b.txt"], b"").stdout == b"from b"
    });
    assert!(ok(a, &["writers"]).contains(&b_key));

    // C follows A and relays to E, which is connected to C only.
    ok(c, &["--peer", &sa.addr, "clone", &sa.key, "--all"]);
    let sc = serve(c, &[]);
    ok(e, &["--peer", &sc.addr, "clone", &sa.key, "--all"]);
    let listed = ok(e, &["ls", "-r"]);
    assert!(
        listed.contains("/a.txt") && listed.contains("/b.txt"),
        "{listed}"
    );
    // C is not a writer: asking it fails quickly with a clear reason.
    let t = Instant::now();
    let err = fails(e, &["--peer", &sc.addr, "request-auth", "--timeout", "20"]);
    assert!(err.contains("no connected peer is a writer"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15));

    // Concurrent writes of one path by A and B, then deauthorization of B by A.
    ok_in(a, &["put", "/same.txt", "-"], b"A's");
    ok_in(b, &["put", "/same.txt", "-"], b"B's");
    ok(b, &["--peer", &sa.addr, "sync", "--all"]);
    eventually("A to list the conflict", || {
        String::from_utf8_lossy(&run(a, &["conflicts"], b"").stdout).contains("/same.txt")
    });
    ok(a, &["deauthorize", &b_key]);
    ok_in(b, &["put", "/late.txt", "-"], b"too late");
    // B learns of its removal with the sync, and is told its write is ignored.
    let synced = run(b, &["--peer", &sa.addr, "sync", "--all"], b"");
    assert!(synced.status.success());
    let warned = String::from_utf8_lossy(&synced.stderr).into_owned();
    assert!(
        warned.contains(&format!("warning: this store's writer {b_key} was removed"))
            && warned.contains("is ignored by every peer"),
        "{warned}"
    );
    // `info` says it was removed, and how to be a writer again.
    let info = ok(b, &["info"]);
    assert!(
        info.contains("writable:  false (removed from co-drive")
            && info.contains(&format!("`cohd authorize {b_key}` again")),
        "{info}"
    );
    // From then on its writes are refused, saying why.
    let refused = run(b, &["put", "/later.txt", "-"], b"refused");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        err.contains("was removed from co-drive")
            && err.contains(&format!("cohd authorize {b_key}")),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ok(a, &["cat", "/b.txt"]), "from b", "seen writes stay");
    assert!(
        !run(a, &["cat", "/late.txt"], b"").status.success(),
        "later writes are ignored"
    );
    drop(sc);
    drop(sa);
}

#[test]
fn request_auth_denied_by_default() {
    let (_t, d) = dirs(2);
    let (a, b) = (&d[0], &d[1]);
    ok(a, &["init"]);
    let log = a.with_file_name("serve.log");
    let s = serve_logged(a, &[], &log);
    ok(b, &["--peer", &s.addr, "clone", &s.key]);
    let b_key = ok(b, &["whoami"]).trim().to_string();
    let err = fails(b, &["--peer", &s.addr, "request-auth", "--timeout", "10"]);
    assert!(err.contains("denied"), "{err}");
    // The serve says whom it denied and how to approve the key after all.
    let approve = format!("denied; to approve it, run `cohd authorize {b_key}`");
    eventually("serve to log the denial", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&approve))
    });
    // B is not a writer: told how to become one, and what to do once a writer approved it.
    let refused = run(b, &["put", "/b.txt", "-"], b"b");
    assert!(!refused.status.success());
    let hint = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        hint.contains(&format!("ask a writer to run `cohd authorize {b_key}`"))
            && hint.contains(&format!("run `cohd --drive {} sync --peer ADDR`", s.key)),
        "{hint}"
    );
    // A approves it as the log said (the command runs inside A's serve), and says so.
    let said = ok(a, &["authorize", &b_key]);
    assert!(said.contains(&format!("authorized {b_key}")), "{said}");
    // Once B has synced, it writes.
    ok(b, &["--peer", &s.addr, "sync"]);
    ok_in(b, &["put", "/b.txt", "-"], b"b");
    ok(b, &["--peer", &s.addr, "sync"]);
    eventually("A to see B's file", || {
        run(a, &["cat", "/b.txt"], b"").stdout == b"b"
    });
}

/// `clear` frees the local copies of other writers' content (they come again from a peer), and
/// keeps what this store wrote.
#[test]
fn clear_frees_content_that_peers_hold() {
    let (t, d) = dirs(2);
    ok(&d[0], &["init"]);
    let big = t.path().join("big.bin");
    let bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &bytes).expect("write");
    ok(
        &d[0],
        &["put", "/docs/big.bin", big.to_str().expect("utf-8 path")],
    );
    ok_in(&d[0], &["put", "/docs/note.txt"], b"a note");
    // The writer's own content is never cleared.
    let out = ok(&d[0], &["clear", "/"]);
    assert_eq!(
        out.trim(),
        "/: cleared 0 blocks of 0 files; kept 2 files this store wrote (no peer may hold them)"
    );
    assert_eq!(ok(&d[0], &["cat", "/docs/note.txt"]), "a note");

    let s = serve(&d[0], &[]);
    ok(&d[1], &["--peer", &s.addr, "clone", &s.key, "--all"]);
    assert_eq!(ok(&d[1], &["cat", "/docs/note.txt"]), "a note");
    let out = ok(&d[1], &["clear", "/docs/big.bin"]);
    assert_eq!(out.trim(), "/docs/big.bin: cleared 5 blocks of 1 file");
    // Cleared: not readable offline, the other file still is; again from the peer.
    let err = fails(&d[1], &["cat", "/docs/big.bin"]);
    assert!(
        err.contains("content not downloaded yet: connect a peer that has it with --peer")
            && err.contains("cohd download PATH")
            && !err.contains("block"),
        "{err}"
    );
    assert_eq!(ok(&d[1], &["cat", "/docs/note.txt"]), "a note");
    // An export checks first: without the content and a peer it writes nothing at all.
    let to = t.path().join("export");
    let err = fails(&d[1], &["export", "/docs", to.to_str().expect("utf-8")]);
    assert!(
        err.contains("nothing was exported: content not downloaded yet"),
        "{err}"
    );
    assert!(!to.exists(), "a failed export left {}", to.display());
    // With the peer it fetches what it lacks, then writes the whole tree.
    ok(
        &d[1],
        &[
            "--peer",
            &s.addr,
            "export",
            "/docs",
            to.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(std::fs::read(to.join("big.bin")).expect("read"), bytes);
    assert_eq!(std::fs::read(to.join("note.txt")).expect("read"), b"a note");
    ok(&d[1], &["clear", "/docs/big.bin"]);
    let out = run(&d[1], &["--peer", &s.addr, "cat", "/docs/big.bin"], b"");
    assert!(out.status.success() && out.stdout == bytes);
    // Clearing what is not here clears nothing.
    ok(&d[1], &["clear", "/docs/big.bin"]);
    let out = ok(&d[1], &["clear", "/docs/big.bin"]);
    assert_eq!(out.trim(), "/docs/big.bin: cleared 0 blocks of 1 file");
}

#[test]
fn download_a_folder_then_read_it_offline() {
    let (t, d) = dirs(3);
    ok(&d[0], &["init"]);
    let big = t.path().join("big.bin");
    let bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &bytes).expect("write");
    let big = big.to_str().expect("utf-8 path");
    ok(&d[0], &["put", "/docs/big.bin", big]);
    ok_in(&d[0], &["put", "/docs/note.txt"], b"a note");
    ok(&d[0], &["put", "/media/other.bin", big]);
    let s = serve(&d[0], &[]);
    ok(&d[1], &["--peer", &s.addr, "clone", &s.key]);
    let out = ok(&d[1], &["--peer", &s.addr, "download", "/docs"]);
    assert_eq!(out.trim(), "/docs: 2 files local, 6 blocks downloaded");
    // A folder whose blocks are not at the start of the core (sparse, not contiguous).
    ok(&d[2], &["--peer", &s.addr, "clone", &s.key]);
    let out = ok(&d[2], &["--peer", &s.addr, "download", "/media"]);
    assert_eq!(out.trim(), "/media: 1 files local, 5 blocks downloaded");
    drop(s);
    // The server is gone: /docs reads from the local store, /media was never fetched.
    // (To a file: 300 KiB do not fit in a pipe nobody reads until the process ends.)
    let copy = t.path().join("copy.bin");
    let mut child = cohd(&d[1], &["cat", "/docs/big.bin"])
        .stdout(std::fs::File::create(&copy).expect("create"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cohd");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(start.elapsed() < WAIT, "cat did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(std::fs::read(&copy).expect("read"), bytes);
    assert_eq!(ok(&d[1], &["cat", "/docs/note.txt"]), "a note");
    let err = fails(&d[1], &["cat", "/media/other.bin"]);
    assert!(err.contains("content not downloaded yet"), "{err}");
    let err = fails(&d[1], &["download", "/media"]);
    assert!(
        err.contains("content not downloaded yet, and no connected peer has it"),
        "{err}"
    );
    // Exporting everything needs /docs too, which d[2] never fetched: nothing is written.
    let all = t.path().join("all");
    let err = fails(&d[2], &["export", "/", all.to_str().expect("utf-8")]);
    assert!(err.contains("nothing was exported"), "{err}");
    assert!(!all.exists(), "a failed export left {}", all.display());
    // The sparse download survived the process too.
    let copy = t.path().join("media.bin");
    ok(&d[2], &["export", "/media", copy.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(copy.join("other.bin")).expect("read"), bytes);
    assert!(fails(&d[2], &["cat", "/docs/note.txt"]).contains("content not downloaded yet"));
}

/// Two writers remove each other while apart; once every record reached everyone, the three
/// peers agree on one writer set and one listing (the first removal in the causal order wins,
/// ties by author key), and the loser's writes after its removal are ignored everywhere.
#[test]
fn mutual_removal_ends_the_same_on_every_peer() {
    let (_t, d) = dirs(3);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    ok(a, &["init"]);
    ok_in(a, &["put", "/a.txt", "-"], b"from a");
    let sa = serve(a, &["--allow-all"]);
    let a_key = sa.key.clone();
    for x in [b, c] {
        ok(x, &["--peer", &sa.addr, "clone", &sa.key]);
        ok(x, &["--peer", &sa.addr, "request-auth", "--timeout", "20"]);
        ok(x, &["--peer", &sa.addr, "sync", "--all"]);
    }
    let (b_key, c_key) = (
        ok(b, &["whoami"]).trim().to_string(),
        ok(c, &["whoami"]).trim().to_string(),
    );
    // B learns that C is a writer, and both write once while still writers; A deletes /a.txt
    // while B, apart, rewrites it (a concurrent delete and write).
    ok(b, &["--peer", &sa.addr, "sync", "--all"]);
    ok_in(b, &["put", "/b-before.txt", "-"], b"b");
    ok_in(c, &["put", "/c-before.txt", "-"], b"c");
    ok(a, &["rm", "/a.txt"]);
    ok_in(b, &["put", "/a.txt", "-"], b"rewritten by b");
    ok(b, &["--peer", &sa.addr, "sync", "--all"]);
    ok(c, &["--peer", &sa.addr, "sync", "--all"]);
    ok(b, &["--peer", &sa.addr, "sync", "--all"]);
    for x in [b, c] {
        let w = ok(x, &["writers"]);
        assert!(w.contains(&b_key) && w.contains(&c_key), "{w}");
    }

    // Apart: each removes the other, then writes.
    ok(b, &["deauthorize", &c_key]);
    ok(c, &["deauthorize", &b_key]);
    ok_in(b, &["put", "/b-after.txt", "-"], b"b");
    ok_in(c, &["put", "/c-after.txt", "-"], b"c");
    // Everything reaches A; then B and C fetch what the other wrote.
    for x in [b, c, b, c] {
        ok(x, &["--peer", &sa.addr, "sync", "--all"]);
    }
    let state = |x: &Path| {
        (
            ok(x, &["writers", "--json"]),
            ok(x, &["ls", "-r"]),
            ok(x, &["conflicts", "--json"]),
        )
    };
    eventually("the three peers to agree", || {
        let s = state(a);
        s == state(b) && s == state(c)
    });
    let (writers, listing, conflicts) = state(a);
    // The write concurrent with the delete survives, and the pair is listed as a conflict.
    assert_eq!(ok(c, &["cat", "/a.txt"]), "rewritten by b");
    assert!(conflicts.contains("/a.txt"), "{conflicts}");
    let current: Vec<String> = serde_json::from_str::<serde_json::Value>(&writers)
        .expect("json")
        .as_array()
        .expect("array")
        .iter()
        .filter(|w| w["removed"] == false)
        .map(|w| w["key"].as_str().expect("key").to_string())
        .collect();
    assert!(current.contains(&a_key), "{writers}");
    let b_stays = current.contains(&b_key);
    let c_stays = current.contains(&c_key);
    assert!(
        b_stays != c_stays,
        "exactly one of two writers removing each other stays: {writers}"
    );
    let (winner, loser) = if b_stays { ("b", "c") } else { ("c", "b") };
    for f in ["/a.txt", "/b-before.txt", "/c-before.txt"] {
        assert!(listing.contains(f), "seen writes stay: {f} in {listing}");
    }
    assert!(
        listing.contains(&format!("/{winner}-after.txt")),
        "{listing}"
    );
    assert!(
        !listing.contains(&format!("/{loser}-after.txt")),
        "the removed writer's later write is ignored: {listing}"
    );
    drop(sa);
}
