//! Helpers shared by the multi-process tests: run `cohd` with a bound, start `cohd serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn cohd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cohd"));
    c.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("COHD_LOG")
        .env_remove("COHD_DIR");
    // Tests never reach the public DHT: only the local one `use_dht` set, if any.
    match DHT_BOOTSTRAP.get() {
        Some(b) => c.env("COHD_BOOTSTRAP", b).env_remove("COHD_NO_DHT"),
        None => c.env("COHD_NO_DHT", "1").env_remove("COHD_BOOTSTRAP"),
    };
    c
}

/// The local DHT every `cohd` of this test binary uses (tests/dht.rs); unset: no DHT.
pub static DHT_BOOTSTRAP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs a command with a bound; returns its output. Output is read while the command runs,
/// so a command printing more than a pipe holds does not stall.
pub fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = cohd(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cohd");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("`cohd {}` did not finish within {WAIT:?}", args.join(" "));
        }
    }
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    ok_in(dir, args, b"")
}

pub fn ok_in(dir: &Path, args: &[&str], stdin: &[u8]) -> String {
    let out = run(dir, args, stdin);
    assert!(
        out.status.success(),
        "`cohd {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args, b"");
    assert!(
        !out.status.success(),
        "`cohd {}` should fail",
        args.join(" ")
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.trim().lines().count() == 1 && err.starts_with("error:"),
        "one clean error line: {err}"
    );
    err
}

/// A running `cohd serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    pub key: String,
    /// The lines serve prints after the key (e.g. `http on URL`); read as they come, so the
    /// pipe never fills.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(dir: &Path, extra: &[&str]) -> Serve {
    serve_to(dir, extra, Stdio::null())
}

/// `serve` with its stderr (where it logs) written to the file `log`.
pub fn serve_logged(dir: &Path, extra: &[&str], log: &Path) -> Serve {
    let f = std::fs::File::create(log).expect("create the log file");
    serve_to(dir, extra, Stdio::from(f))
}

fn serve_to(dir: &Path, extra: &[&str], stderr: Stdio) -> Serve {
    let mut args = vec!["serve"];
    args.extend_from_slice(extra);
    let mut child = cohd(dir, &args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("listening line")
        .trim_start_matches("listening on ")
        .to_string();
    let key = rx
        .recv_timeout(WAIT)
        .expect("key line")
        .trim_start_matches("key ")
        .to_string();
    Serve {
        child,
        addr,
        key,
        lines: rx,
    }
}

/// Polls `check` until it holds (bounded).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let t = tempfile::tempdir().expect("tempdir");
    let v = (0..n).map(|i| t.path().join(format!("peer{i}"))).collect();
    (t, v)
}

/// Sends `sig` (INT, TERM, KILL...) to a child process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig}");
}

/// A temporary folder for the JavaScript peers of test binary `binary` (their `TMPDIR`): the
/// tests kill them, so the corestores they make in it are never deleted by them. Emptied when a
/// run of the binary first asks for it, so that killed peers leave at most one run's folders,
/// under `target/`.
pub fn js_tmp(binary: &str) -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("js-{binary}"));
    let mut done = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if !done.iter().any(|b| b == binary) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a folder for the JavaScript peers");
        done.push(binary.to_string());
    }
    dir
}
