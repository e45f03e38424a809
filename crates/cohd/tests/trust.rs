//! Nothing lost, nothing forged: `cohd` processes stopped by every signal at random moments
//! while receiving a peer's writes, and stores whose database was deleted, rolled back, flipped
//! or left readable by others; stores of the earlier layout moved into the database.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Waits (bounded) for a child to exit.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

fn cat(dir: &Path, path: &str) -> Vec<u8> {
    let out = run(dir, &["cat", path], b"");
    assert!(
        out.status.success(),
        "`cat {path}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_serve_receiving_writes_survives_every_stop() {
    let seed = std::env::var("COHD_STOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    eprintln!("COHD_STOP_SEED={seed}");
    let mut rng = Rng(seed);
    let (_t, d) = dirs(2);
    let d: Vec<PathBuf> = if let Ok(k) = std::env::var("COHD_KEEP") {
        let _ = std::fs::remove_dir_all(&k);
        vec![Path::new(&k).join("s"), Path::new(&k).join("w")]
    } else {
        d
    };
    let (s, w) = (&d[0], &d[1]);
    ok(s, &["init"]);
    let mut srv = serve(s, &["--allow-all"]);
    ok(w, &["--peer", &srv.addr, "clone", &srv.key]);
    ok(w, &["--peer", &srv.addr, "request-auth", "--timeout", "20"]);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let signals = ["INT", "TERM", "KILL"].repeat(3);
    for (round, &sig) in signals.iter().enumerate() {
        // Writes the server acknowledged: `sync` returns once the server holds them.
        for i in 0..3 {
            let len = 1 + (rng.next() % 200_000) as usize;
            let p = format!("/r{round}/f{i}");
            let data = content(&mut rng, len);
            ok_in(w, &["put", &p, "-"], &data);
            acked.push((p, data));
        }
        let out = run(w, &["--peer", &srv.addr, "sync"], b"");
        assert!(out.status.success());
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "sync did not deliver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // More on its way when the signal lands, at a random moment.
        let late = content(&mut rng, 400_000);
        ok_in(w, &["put", &format!("/r{round}/late"), "-"], &late);
        let mut inflight = cohd(w, &["--peer", &srv.addr, "sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sync");
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        signal(&srv.child, sig);
        let status = wait_exit(&mut srv.child, "serve");
        if sig != "KILL" {
            assert!(status.success(), "serve after SIG{sig}: {status}");
        }
        wait_exit(&mut inflight, "the sync in flight");

        // The stopped store works and holds every acknowledged write.
        let listed = ok(s, &["ls", "-r"]);
        for (p, data) in &acked {
            assert!(
                listed.contains(p.as_str()),
                "round {round} ({sig}): {p} lost"
            );
            assert!(cat(s, p) == *data, "round {round} ({sig}): {p} differs");
        }
        let own = format!("/server{round}");
        ok_in(s, &["put", &own, "-"], b"server write");
        assert_eq!(cat(s, &own), b"server write");
        ok(s, &["writers"]);
        srv = serve(s, &["--allow-all"]);
    }
    // Both ends converge on everything.
    ok(w, &["--peer", &srv.addr, "sync", "--all"]);
    for (p, data) in &acked {
        assert!(cat(w, p) == *data, "{p} on the writer");
    }
    for round in 0..signals.len() {
        assert_eq!(cat(w, &format!("/server{round}")), b"server write");
    }
}

/// A store with one file, and its database folder.
fn store_with_a_file() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    ok(&dir, &["init"]);
    ok_in(&dir, &["put", "/a.txt", "-"], b"hello");
    let db = dir.join("db");
    assert!(db.is_dir());
    (t, dir, db)
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x01], at).expect("write");
}

/// Every file under `dir`, in order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let p = e.expect("entry").path();
        let t = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_dir(&p, &t);
        } else if p.is_file() {
            std::fs::copy(&p, &t).expect("copy");
        }
    }
}

#[test]
fn a_lost_database_is_refused_not_forked() {
    let (_t, dir, db) = store_with_a_file();
    std::fs::remove_dir_all(&db).expect("rm");
    let err = fails(&dir, &["put", "/b.txt", "-"]);
    assert!(err.contains("fork"), "{err}");
    fails(&dir, &["ls"]);
    // And again: the first refusal re-created nothing that would let a second one pass.
    let err = fails(&dir, &["put", "/b.txt", "-"]);
    assert!(err.contains("fork"), "{err}");
}

#[test]
fn a_rolled_back_database_is_refused() {
    let (t, dir, db) = store_with_a_file();
    let backup = t.path().join("backup");
    copy_dir(&db, &backup);
    ok_in(&dir, &["put", "/b.txt", "-"], b"second");
    std::fs::remove_dir_all(&db).expect("rm");
    copy_dir(&backup, &db);
    let err = fails(&dir, &["put", "/c.txt", "-"]);
    assert!(err.contains("fork"), "{err}");
}

#[test]
fn a_changed_primary_key_is_refused() {
    let (_t, dir, _) = store_with_a_file();
    flip(&dir.join("primary-key"), 7);
    let ledger = std::fs::read(dir.join("ledger")).expect("ledger");
    let err = fails(&dir, &["put", "/b.txt", "-"]);
    assert!(err.contains("primary-key"), "{err}");
    fails(&dir, &["ls"]);
    assert_eq!(
        std::fs::read(dir.join("ledger")).expect("ledger"),
        ledger,
        "a new identity was recorded"
    );
}

/// A flipped byte anywhere in the database never shows as file content: `cat` prints the
/// content that was written or fails.
#[test]
fn a_flipped_byte_in_the_database_is_never_shown() {
    let (t, dir, db) = store_with_a_file();
    let big: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ok_in(&dir, &["put", "/big.bin", "-"], &big);
    let mut shown = 0;
    for f in files_under(&db) {
        let len = std::fs::metadata(&f).expect("stat").len();
        if len == 0 || f.file_name().is_some_and(|n| n == "lock") {
            continue;
        }
        for at in [len / 2, len - 1] {
            let copy = t.path().join("copy");
            let _ = std::fs::remove_dir_all(&copy);
            copy_dir(&dir, &copy);
            flip(&copy.join(f.strip_prefix(&dir).expect("under")), at);
            for (p, want) in [("/a.txt", b"hello".to_vec()), ("/big.bin", big.clone())] {
                let out = run(&copy, &["cat", p], b"");
                if out.status.success() {
                    assert!(out.stdout == want, "{} at {at}: {p} differs", f.display());
                    shown += 1;
                }
            }
        }
    }
    assert!(shown > 0, "no damaged copy could be read at all");
}

#[test]
fn secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, dir, db) = store_with_a_file();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("primary-key")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&db), 0o700);
    std::fs::set_permissions(
        dir.join("primary-key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let out = run(&dir, &["ls"], b"");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "no warning: {err}");
}

#[test]
fn a_damaged_database_is_repaired_from_a_peer() {
    let (_t, d) = dirs(2);
    let (l, m) = (&d[0], &d[1]);
    ok(l, &["init"]);
    let mut rng = Rng(7);
    let data = content(&mut rng, 300_000);
    ok_in(l, &["put", "/f.bin", "-"], &data);
    let sl = serve(l, &[]);
    ok(m, &["--peer", &sl.addr, "clone", &sl.key, "--all"]);
    assert!(cat(m, "/f.bin") == data);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.join("co-drive"))
            .expect("co-drive")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the clone's files are private too");
    }
    // The middle of every file of M's database is damaged; with the peer connected, M shows
    // the right content again (what it still holds checks out, the rest comes again).
    for f in files_under(&m.join("db")) {
        let len = std::fs::metadata(&f).expect("stat").len();
        if len > 0 && f.file_name().is_some_and(|n| n != "lock") {
            flip(&f, len / 2);
        }
    }
    let out = run(m, &["--peer", &sl.addr, "cat", "/f.bin"], b"");
    if out.status.success() {
        assert!(out.stdout == data, "damaged content shown");
    } else {
        // The database refused to open: the error says so, and nothing wrong was shown.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("corrupt") || err.contains("database") || err.contains("damaged"),
            "{err}"
        );
    }
}

/// The stores a version before the database made (`cores/<key>/` files of the `hypercore`
/// crate, kept in `tests/legacy-stores.tar.gz`: a writer with two files, and a sparse clone
/// of it that read one) open once, move into the database, and keep everything.
fn legacy_stores() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let t = tempfile::tempdir().expect("tempdir");
    let tar = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy-stores.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&tar)
        .arg("-C")
        .arg(t.path())
        .status()
        .expect("tar");
    assert!(st.success());
    let key = std::fs::read_to_string(t.path().join("key.txt"))
        .expect("key")
        .trim()
        .to_string();
    let (w, r) = (t.path().join("writer"), t.path().join("reader"));
    (t, w, r, key)
}

fn legacy_big() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| ((i * 7 + i / 251) % 256) as u8)
        .collect()
}

#[test]
fn stores_of_the_crate_files_move_into_the_database() {
    let (_t, w, r, key) = legacy_stores();
    assert!(w.join("cores").is_dir());
    assert_eq!(ok(&w, &["whoami"]).trim(), key);
    assert!(!w.join("cores").exists(), "moved");
    assert!(w.join("db").is_dir());
    assert_eq!(ok(&w, &["ls", "-r"]), "/a.txt\n/dir/big.bin\n");
    assert_eq!(cat(&w, "/a.txt"), b"hello from an old store");
    assert!(cat(&w, "/dir/big.bin") == legacy_big());
    ok_in(&w, &["put", "/new.txt", "-"], b"written after the move");
    // The sparse clone kept what it had read, and nothing else.
    assert_eq!(cat(&r, "/a.txt"), b"hello from an old store");
    let err = fails(&r, &["cat", "/dir/big.bin"]);
    assert!(err.contains("not downloaded"), "{err}");
    // And the two replicate after the move.
    let sw = serve(&w, &[]);
    assert_eq!(sw.key, key);
    ok(&r, &["--peer", &sw.addr, "sync"]);
    let out = run(&r, &["--peer", &sw.addr, "cat", "/dir/big.bin"], b"");
    assert!(out.status.success() && out.stdout == legacy_big());
    // (A sparse clone: new content is fetched on demand.)
    let out = run(&r, &["--peer", &sw.addr, "cat", "/new.txt"], b"");
    assert_eq!(out.stdout, b"written after the move");
}

#[test]
fn damaged_crate_files_are_not_carried_over() {
    // A flipped byte in the blobs core's data: that block stays behind, never shown.
    let (_t, w, _, _) = legacy_stores();
    let blobs = std::fs::read_dir(w.join("cores"))
        .expect("cores")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::metadata(p.join("data")).is_ok_and(|m| m.len() > 200_000))
        .expect("the blobs core");
    flip(&blobs.join("data"), 100_000);
    assert_eq!(cat(&w, "/a.txt"), b"hello from an old store");
    let err = fails(&w, &["cat", "/dir/big.bin"]);
    assert!(
        err.contains("not downloaded") || err.contains("damaged"),
        "{err}"
    );

    // A damaged tree root: the core does not verify, the open stops naming it, nothing moves.
    let (_t, w, _, key) = legacy_stores();
    let db = w.join("cores").join(&key);
    let len = std::fs::metadata(db.join("tree")).expect("tree").len();
    // The last node written is a root of the tree.
    let roots_at = len - 40 + 12;
    flip(&db.join("tree"), roots_at);
    let err = fails(&w, &["ls"]);
    assert!(
        err.contains(&key[..8]) || err.contains("signature"),
        "{err}"
    );
    assert!(
        db.join("oplog").is_file(),
        "the damaged core was not removed"
    );
}

#[test]
fn a_hundred_kill_9s_during_writes_lose_no_acknowledged_write() {
    let seed = std::env::var("COHD_STOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    eprintln!("COHD_STOP_SEED={seed}");
    let mut rng = Rng(seed);
    let (t, d) = dirs(1);
    let s = &d[0];
    ok(s, &["init"]);
    let src = t.path().join("src");
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for trial in 0..100 {
        // A put of a random size, or an import of a small folder, killed at a random moment.
        let mut expect = Vec::new();
        let mut child = if rng.next().is_multiple_of(3) {
            let _ = std::fs::remove_dir_all(&src);
            std::fs::create_dir_all(&src).expect("mkdir");
            for i in 0..4 {
                let len = 1 + (rng.next() % 100_000) as usize;
                let data = content(&mut rng, len);
                std::fs::write(src.join(format!("f{i}")), &data).expect("write");
                expect.push((format!("/t{trial}/f{i}"), data));
            }
            let dest = format!("/t{trial}");
            cohd(s, &["import", src.to_str().expect("utf-8"), &dest])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn import")
        } else {
            let len = 1 + (rng.next() % 400_000) as usize;
            let data = content(&mut rng, len);
            let file = t.path().join("put.bin");
            std::fs::write(&file, &data).expect("write");
            let p = format!("/t{trial}.bin");
            expect.push((p.clone(), data));
            cohd(s, &["put", &p, file.to_str().expect("utf-8")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn put")
        };
        std::thread::sleep(Duration::from_millis(rng.next() % 60));
        signal(&child, "KILL");
        let status = wait_exit(&mut child, "the killed command");
        if status.success() {
            acked.extend(expect);
        }
        // The store opens, lists, and keeps every acknowledged write.
        let listed = ok(s, &["ls", "-r"]);
        let check_all = trial % 10 == 9;
        for (p, data) in acked
            .iter()
            .rev()
            .take(if check_all { usize::MAX } else { 4 })
        {
            assert!(listed.contains(p.as_str()), "trial {trial}: {p} lost");
            assert!(cat(s, p) == *data, "trial {trial}: {p} differs");
        }
    }
    ok_in(s, &["put", "/after.txt", "-"], b"still writable");
    assert!(
        acked.len() > 10,
        "only {} writes finished before their kill",
        acked.len()
    );
}
