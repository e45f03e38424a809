//! `cohd-bench --replication`: full replication of a ~100 MiB drive over loopback TCP, our peer
//! to our peer and JavaScript to JavaScript (`js/interop/bench-js.js`) in the same run; and the
//! time until the first file is readable on a fresh clone. Targets (issue 3): at least 4x the
//! JavaScript throughput, first file in under 30 ms.
//!
//! Two setups, each the same for both stacks:
//! - one thread: both peers share one thread (ours: a current-thread runtime; JS: one process);
//! - apart: the serving peer runs on its own (ours: its own thread with its own current-thread
//!   runtime; JS: its own Node process), as two peers on a 2-core machine would.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use co_hyperdrive::{catch_up, ReplicateOptions, Replicator};
use co_hyperdrive::{Drive, Store};

const FILE_MIB: usize = 10;
const TOTAL_MIB: usize = 100;

fn filled(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + seed) as u8).collect()
}

/// Serves the drive in `dir` until `stop` fires; sends its address first.
async fn serve(
    dir: std::path::PathBuf,
    addr_tx: tokio::sync::oneshot::Sender<Result<SocketAddr>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let started = async {
        let store = Store::open(&dir)?;
        let served = Drive::open_own(&store, "db").await?;
        let server = Replicator::new(ReplicateOptions::default());
        server.add_core(served.db().core().clone());
        server.add_core(served.blobs().core().clone());
        let (addr, task) = server.listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        anyhow::Ok((addr, task, store))
    };
    match started.await {
        Ok((addr, task, _store)) => {
            let _ = addr_tx.send(Ok(addr));
            let _ = stop.await;
            task.abort();
        }
        Err(e) => {
            let _ = addr_tx.send(Err(e));
        }
    }
}

/// Our side: returns (ms for everything, ms to the first file). `apart`: the serving peer runs
/// on its own thread and runtime.
async fn rust_side(apart: bool) -> Result<(f64, f64)> {
    let src = tempfile::Builder::new()
        .prefix("cohd-bench-repl-src-")
        .tempdir()?;
    let key = {
        let store = Store::create(src.path())?;
        let d = Drive::open_own(&store, "db").await?;
        d.put("/first.txt", &filled(4096, 1)).await?;
        let big = filled(FILE_MIB << 20, 3);
        for i in 0..TOTAL_MIB / FILE_MIB {
            d.put(&format!("/bench/f{i:02}.bin"), &big).await?;
        }
        d.sync()?;
        d.key()
    };
    // Serve from a reopened store, as `cohd serve` does.
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dir = src.path().to_path_buf();
    let server = if apart {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Some(
            std::thread::Builder::new()
                .name("serving-peer".into())
                .spawn(move || rt.block_on(serve(dir, addr_tx, stop_rx)))?,
        )
    } else {
        tokio::spawn(serve(dir, addr_tx, stop_rx));
        None
    };
    let addr = addr_rx.await.context("the serving peer ended")??;

    let first_ms = {
        let dst = tempfile::Builder::new()
            .prefix("cohd-bench-repl-first-")
            .tempdir()?;
        let store = Store::create(dst.path())?;
        let repl = Replicator::new(ReplicateOptions::default());
        let t = Instant::now();
        repl.add_core(store.open_key(key, true).await?);
        let _conn = repl.connect(addr).await?;
        ensure!(
            catch_up(&store, &repl, key, "db", Duration::from_secs(30)).await?,
            "no catch-up"
        );
        let d = Drive::open_key(&store, key).await?;
        let got = d.get("/first.txt").await?.context("first file missing")?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(got == filled(4096, 1));
        ms
    };

    let dst = tempfile::Builder::new()
        .prefix("cohd-bench-repl-dst-")
        .tempdir()?;
    let store = Store::create(dst.path())?;
    let repl = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    let t = Instant::now();
    repl.add_core(store.open_key(key, true).await?);
    let _conn = repl.connect(addr).await?;
    ensure!(
        catch_up(&store, &repl, key, "db", Duration::from_secs(120)).await?,
        "no catch-up"
    );
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // Check, without network, that every byte arrived.
    drop(repl);
    let d = Drive::open_key(&store, key).await?;
    let big = filled(FILE_MIB << 20, 3);
    for i in 0..TOTAL_MIB / FILE_MIB {
        let e = d
            .stat(&format!("/bench/f{i:02}.bin"))
            .await?
            .context("missing file")?;
        let blob = e.entry.blob.context("no blob")?;
        let mut n = 0u64;
        for b in blob.block_offset..blob.block_offset + blob.block_length {
            let block = d
                .blobs()
                .core()
                .get_local(b)
                .await?
                .context("block not downloaded")?;
            n += block.len() as u64;
        }
        ensure!(n == big.len() as u64);
    }
    drop(stop);
    if let Some(t) = server {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok((ms, first_ms))
}

fn js_side(root: &Path, apart: bool) -> Result<(f64, f64)> {
    let mut cmd = Command::new("node");
    cmd.arg(root.join("js/interop/bench-js.js")).args([
        "--mib",
        &TOTAL_MIB.to_string(),
        "--file-mib",
        &FILE_MIB.to_string(),
    ]);
    if apart {
        cmd.arg("--apart");
    }
    let out = cmd
        .output()
        .context("running node (is Node.js installed?)")?;
    if !out.status.success() {
        bail!(
            "bench-js.js failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))?;
    Ok((
        v["ms"].as_f64().context("ms")?,
        v["first_file_ms"].as_f64().context("first_file_ms")?,
    ))
}

/// One setup's results: (ms, first-file ms) for ours and, if run, JS.
struct Setup {
    name: &'static str,
    ours: (f64, f64),
    js: Option<(f64, f64)>,
}

/// The median of each coordinate.
fn median(runs: &[(f64, f64)]) -> (f64, f64) {
    (
        crate::median_of(runs.iter().map(|r| r.0).collect()),
        crate::median_of(runs.iter().map(|r| r.1).collect()),
    )
}

/// Runs both sides in both setups (`runs` times each, alternating, medians) and prints the
/// comparison.
pub(crate) async fn run(root: &Path, js: bool, json: bool, runs: usize) -> Result<()> {
    let mut setups = Vec::new();
    // `COHD_BENCH_SETUP=apart` (or `one`) runs one setup only, for profiling.
    let only = std::env::var("COHD_BENCH_SETUP").ok();
    for (name, apart) in [("one thread", false), ("apart", true)] {
        if only
            .as_deref()
            .is_some_and(|o| o != if apart { "apart" } else { "one" })
        {
            continue;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            eprintln!("rust -> rust, {TOTAL_MIB} MiB, {name}, run {run}/{runs}...");
            ours.push(rust_side(apart).await?);
            if js {
                eprintln!("js -> js, {TOTAL_MIB} MiB, {name}, run {run}/{runs}...");
                theirs.push(js_side(root, apart)?);
            }
        }
        setups.push(Setup {
            name,
            ours: median(&ours),
            js: js.then(|| median(&theirs)),
        });
    }
    let mib_s = |ms: f64| TOTAL_MIB as f64 / (ms / 1e3);
    if !json {
        println!("replication of {TOTAL_MIB} MiB over loopback TCP (median of {runs})");
        for s in &setups {
            let (ms, first) = s.ours;
            println!("  {}:", s.name);
            println!(
                "    ours: {ms:.0} ms ({:.1} MiB/s), first file readable after {first:.1} ms (target < 30 ms: {})",
                mib_s(ms),
                if first < 30.0 { "PASS" } else { "MISS" }
            );
            if let Some((j, jf)) = s.js {
                let ratio = j / ms;
                println!(
                    "    js:   {j:.0} ms ({:.1} MiB/s), first file after {jf:.1} ms",
                    mib_s(j)
                );
                println!(
                    "    speedup {ratio:.2}x (target >= 4x: {})",
                    if ratio >= 4.0 { "PASS" } else { "MISS" }
                );
            }
        }
    }
    let report: serde_json::Map<String, serde_json::Value> = setups
        .iter()
        .map(|s| {
            (
                s.name.replace(' ', "_"),
                serde_json::json!({
                    "rust_ms": s.ours.0,
                    "rust_first_file_ms": s.ours.1,
                    "js_ms": s.js.map(|j| j.0),
                    "js_first_file_ms": s.js.map(|j| j.1),
                }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "replication": { "mib": TOTAL_MIB, "runs": runs, "setups": report } })
    );
    Ok(())
}
