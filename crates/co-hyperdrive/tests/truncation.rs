//! Following another writer's truncation: a JavaScript Hypercore 11 writer
//! (`js/interop/truncate-core.js`) cuts its log back while we replicate it, then appends again;
//! we move to its new fork, keep what the two trees share, drop the rest and fetch the new
//! blocks. Needs `npm ci --prefix js` (done by `.ci/run`); fails, never skips, without it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use co_hyperdrive::format::Key;
use co_hyperdrive::{ReplicateOptions, Replicator, Store};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `done` every 20 ms for at most 20 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_writers_truncation_is_followed() {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../js");
    assert!(
        js.join("node_modules/corestore").is_dir(),
        "JavaScript peers are not installed: run `npm ci --prefix js` (bash .ci/run does it)"
    );
    let js_store = tempfile::tempdir().unwrap();
    let mut child = Guard(
        Command::new("node")
            .arg(js.join("interop/truncate-core.js"))
            .args(["--blocks", "40", "--keep", "30", "--add", "5", "--storage"])
            .arg(js_store.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node must be installed to run the interop tests"),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    let mut next_line = |out: &mut BufReader<_>| {
        line.clear();
        out.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let addr = next_line(&mut out)
        .strip_prefix("listening on ")
        .expect("listening line")
        .parse()
        .unwrap();
    let key: Key = next_line(&mut out)
        .strip_prefix("key ")
        .expect("key line")
        .parse()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path()).unwrap();
    let core = store.open_key(key, true).await.unwrap();
    let repl = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    repl.add_core(core.clone());
    let _conn = repl.connect(addr).await.unwrap();
    until("the first 40 blocks", || {
        core.info().contiguous_length == 40
    })
    .await;
    assert_eq!(core.get_local(39).await.unwrap().unwrap(), b"old 39");

    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "truncate").unwrap();
    assert_eq!(next_line(&mut out), "truncated 1 35");
    until("the new fork, whole", || {
        let i = core.info();
        i.fork == 1 && i.length == 35 && i.contiguous_length == 35
    })
    .await;
    for i in 0..35u64 {
        let want = if i < 30 {
            format!("old {i}")
        } else {
            format!("new {i}")
        };
        assert_eq!(
            core.get_local(i).await.unwrap().unwrap(),
            want.as_bytes(),
            "block {i}"
        );
    }
    assert_eq!(core.get_local(36).await.unwrap(), None);

    drop(stdin);
}
