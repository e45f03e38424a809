//! Nothing lost, nothing forged: `cohd` processes stopped by every signal at random moments
//! while receiving a peer's writes, and stores whose files were deleted, rolled back, flipped or
//! left readable by others.

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

/// A store with one file, and the folder of its drive's db core.
fn store_with_a_file() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let key = ok(&dir, &["init"]).trim().to_string();
    ok_in(&dir, &["put", "/a.txt", "-"], b"hello");
    let core = dir.join("cores").join(&key);
    assert!(core.join("oplog").is_file());
    (t, dir, core)
}

fn blobs_core(dir: &Path) -> PathBuf {
    let info: serde_json::Value =
        serde_json::from_str(&ok(dir, &["info", "--json"])).expect("info json");
    dir.join("cores")
        .join(info["blobs_key"].as_str().expect("blobs_key"))
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

#[test]
fn lost_core_files_are_refused_not_forked() {
    for what in ["core folder", "oplog", "cores"] {
        let (_t, dir, core) = store_with_a_file();
        match what {
            "core folder" => std::fs::remove_dir_all(&core).expect("rm"),
            "oplog" => std::fs::remove_file(core.join("oplog")).expect("rm"),
            _ => std::fs::remove_dir_all(dir.join("cores")).expect("rm"),
        }
        let err = fails(&dir, &["put", "/b.txt", "-"]);
        assert!(err.contains("fork"), "{what}: {err}");
        fails(&dir, &["ls"]);
        assert!(
            !core.join("oplog").exists(),
            "{what}: the core was re-created under the same key"
        );
    }
}

#[test]
fn a_changed_primary_key_is_refused() {
    let (_t, dir, core) = store_with_a_file();
    flip(&dir.join("primary-key"), 7);
    let before = std::fs::read_dir(dir.join("cores")).expect("cores").count();
    let err = fails(&dir, &["put", "/b.txt", "-"]);
    assert!(err.contains("primary-key"), "{err}");
    fails(&dir, &["ls"]);
    assert_eq!(
        std::fs::read_dir(dir.join("cores")).expect("cores").count(),
        before,
        "a new identity's cores appeared"
    );
    assert!(core.is_dir());
}

#[test]
fn a_flipped_byte_in_file_content_is_never_shown() {
    let (_t, dir, _) = store_with_a_file();
    ok_in(&dir, &["put", "/b.txt", "-"], b"second file");
    let blobs = blobs_core(&dir);
    // "hello" is the first blob: its third byte.
    flip(&blobs.join("data"), 2);
    let out = run(&dir, &["cat", "/a.txt"], b"");
    assert!(
        !out.status.success(),
        "cat printed damaged content: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(cat(&dir, "/b.txt"), b"second file");
}

#[test]
fn a_damaged_oplog_header_slot_is_survived() {
    let (_t, dir, core) = store_with_a_file();
    for i in 0..6 {
        ok_in(&dir, &["put", &format!("/n{i}"), "-"], b"more");
    }
    for slot in [0u64, 4096] {
        ok(&dir, &["ls"]);
        flip(&core.join("oplog"), slot + 20);
        let listed = ok(&dir, &["ls"]);
        assert!(
            listed.contains("/a.txt") && listed.contains("/n5"),
            "{listed}"
        );
        assert_eq!(cat(&dir, "/a.txt"), b"hello");
    }
}

#[test]
fn secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, dir, core) = store_with_a_file();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("primary-key")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&core.join("oplog")), 0o600);
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
fn a_damaged_block_is_fetched_again_from_a_peer() {
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
    // Block 3 of the blobs core (64 KiB blocks) is damaged on M's disk.
    let blobs = std::fs::read_dir(m.join("cores"))
        .expect("cores")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::metadata(p.join("data")).is_ok_and(|md| md.len() == 300_000))
        .expect("the blobs core");
    flip(&blobs.join("data"), 200_000);
    let err = fails(m, &["cat", "/f.bin"]);
    assert!(err.contains("damaged"), "{err}");
    // With the peer connected, the block comes again, and the repair is on disk.
    let out = run(m, &["--peer", &sl.addr, "cat", "/f.bin"], b"");
    assert!(
        out.status.success() && out.stdout == data,
        "not fetched again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sl);
    assert!(
        cat(m, "/f.bin") == data,
        "the repair did not reach the disk"
    );
}

#[test]
fn a_lost_ledger_with_lost_cores_is_refused_not_forked() {
    for lose_cores_folder in [false, true] {
        let (_t, dir, core) = store_with_a_file();
        std::fs::remove_file(dir.join("ledger")).expect("rm ledger");
        if lose_cores_folder {
            std::fs::remove_dir_all(dir.join("cores")).expect("rm cores");
        } else {
            std::fs::remove_dir_all(&core).expect("rm core");
        }
        let err = fails(&dir, &["put", "/z.txt", "-"]);
        assert!(err.contains("fork"), "{err}");
        assert!(!core.exists(), "the core was re-created");
        assert!(
            !dir.join("ledger").exists(),
            "a fresh ledger papers over the loss"
        );
    }
    // A store from before the ledger (its cores all there) is adopted.
    let (_t, dir, _) = store_with_a_file();
    std::fs::remove_file(dir.join("ledger")).expect("rm ledger");
    ok_in(&dir, &["put", "/after.txt", "-"], b"still mine");
    assert!(dir.join("ledger").exists());
    assert_eq!(cat(&dir, "/a.txt"), b"hello");
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
