//! cohd-bench: runs the workloads of `js/bench.js` on our Rust [`Drive`], on disk, then runs
//! `js/bench.js` itself, and compares the two.
//!
//! Usage: `cohd-bench [--runs N] [--json] [--no-js] [--codrive] [--replication] [--live]
//! [--live-dht] [--scale [--huge] [--files N]... [--writers N]... [--keep DIR]]`
//!
//! - `--runs N`: run both sides N times (default 1) and report the median of each workload.
//! - `--json`: print only the final JSON line on stdout.
//! - `--no-js`: skip the JavaScript side.
//! - `--codrive`: instead, the co-drive benchmark (merged reads with 1, 4, 16 writers, or
//!   only the `--writers N` given; `--runs N` new peers converge per row, the median shown).
//! - `--replication`: instead, replication of ~100 MiB over loopback, ours and JavaScript.
//! - `--live`: instead, how long a write takes to be readable on a connected peer.
//! - `--live-dht`: the same between peers that found each other on a local HyperDHT.
//! - `--scale`: instead, whole-process `cohd` reads on co-drives of 10^4 and 10^5 files (10^6
//!   with `--huge`), 1 and 16 writers, beside JavaScript Hyperdrive 13 (needs a release `cohd`
//!   beside `cohd-bench`).
//!
//! Progress goes to stderr; the table and one JSON line with every number go to stdout.

mod codrive;
mod live;
mod replication;
mod scale;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use co_hyperdrive::{Drive, Store};
use serde_json::{json, Map, Value};

const SMALL_COUNT: usize = 1000;
const SMALL_SIZE: usize = 4096;
const LARGE_COUNT: usize = 10;
const LARGE_SIZE: usize = 10 * 1024 * 1024;
const EXPECTED_ENTRIES: usize = SMALL_COUNT * 2 + LARGE_COUNT;

/// Speedup targets (js time / rust time).
const SMALL_TARGET: f64 = 5.0;
const LARGE_TARGET: f64 = 1.5;

/// What a workload moves, for its throughput and its target.
#[derive(Clone, Copy)]
enum Kind {
    /// This many small files (or entries).
    Files(usize),
    /// This many bytes of large files.
    Bytes(usize),
}

/// The workloads, in the order they run; timings are arrays in this order. The names are the
/// JS output's keys without `_ms`.
const WORKLOADS: [(&str, Kind); 7] = [
    ("put_small_seq", Kind::Files(SMALL_COUNT)),
    ("put_small_batch", Kind::Files(SMALL_COUNT)),
    ("put_large", Kind::Bytes(LARGE_COUNT * LARGE_SIZE)),
    ("get_small", Kind::Files(SMALL_COUNT)),
    ("get_large", Kind::Bytes(LARGE_COUNT * LARGE_SIZE)),
    // Listing walks the small-file metadata, so it gets the small-file target.
    ("list_recursive", Kind::Files(EXPECTED_ENTRIES)),
    // The large files again from a reopened store: every block read from disk (and, on our
    // side, verified against the signed tree).
    ("get_large_reopened", Kind::Bytes(LARGE_COUNT * LARGE_SIZE)),
];

/// Milliseconds per workload, in [`WORKLOADS`] order.
type Timings = [f64; WORKLOADS.len()];

struct Options {
    runs: usize,
    json: bool,
    js: bool,
    codrive: bool,
    replication: bool,
    live: bool,
    live_dht: bool,
    scale: bool,
    huge: bool,
    /// `--files N` (repeatable): the scale bench's sizes instead of the default ones.
    files: Vec<usize>,
    /// `--writers N` (repeatable): the scale bench's writer counts instead of 1 and 16 (the
    /// co-drive bench's instead of 1, 4 and 16).
    writers: Vec<usize>,
    /// `--keep DIR`: the scale bench builds its drives under DIR and reuses them on later runs.
    keep: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: cohd-bench [--runs N] [--json] [--no-js] [--codrive] [--replication] [--live] \
     [--live-dht] [--scale [--huge] [--files N]... [--writers N]... [--keep DIR]] \
     (--codrive takes --writers N... and --runs N too)"
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        runs: 1,
        json: false,
        js: true,
        codrive: false,
        replication: false,
        live: false,
        live_dht: false,
        scale: false,
        huge: false,
        files: Vec::new(),
        writers: Vec::new(),
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                let n = args.next().context("--runs needs a number")?;
                opts.runs = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("--runs: {n:?} is not a positive number"))?;
            }
            "--json" => opts.json = true,
            "--no-js" => opts.js = false,
            "--codrive" => opts.codrive = true,
            "--replication" => opts.replication = true,
            "--live" => opts.live = true,
            "--live-dht" => opts.live_dht = true,
            "--scale" => opts.scale = true,
            "--huge" => opts.huge = true,
            "--files" | "--writers" => {
                let n = args
                    .next()
                    .with_context(|| format!("{arg} needs a number"))?;
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{arg}: {n:?} is not a positive number"))?;
                if arg == "--files" {
                    opts.files.push(n);
                } else {
                    opts.writers.push(n);
                }
            }
            "--keep" => opts.keep = Some(args.next().context("--keep needs a folder")?.into()),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(opts)
}

/// The repository root, fixed at compile time.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The same byte pattern as `filled()` in bench.js.
fn filled(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + seed) as u8).collect()
}

/// Runs `f` and returns its wall time in milliseconds.
async fn timed(f: impl AsyncFnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f().await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// One run of the workloads on a fresh on-disk drive.
async fn run_rust() -> Result<Timings> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-rs-")
        .tempdir()
        .context("creating a temp dir")?;
    let store = Store::create(dir.path())?;
    let drive = Drive::open_own(&store, "db").await?;
    let small = filled(SMALL_SIZE, 7);
    let large = filled(LARGE_SIZE, 11);

    let put_small_seq = timed(async || {
        for i in 0..SMALL_COUNT {
            drive.put(&format!("/small/{i}.bin"), &small).await?;
        }
        Ok(())
    })
    .await?;

    // The batch's flush fsyncs, so this workload includes one fsync.
    let put_small_batch = timed(async || {
        let mut batch = drive.batch().await?;
        for i in 0..SMALL_COUNT {
            batch.put(&format!("/batch/{i}.bin"), &small).await?;
        }
        batch.flush().await?;
        Ok(())
    })
    .await?;

    // Single puts don't fsync (they only reach the OS), so the one `sync()` that makes all the
    // writes durable is charged to the last write workload.
    let put_large = timed(async || {
        for i in 0..LARGE_COUNT {
            drive.put(&format!("/large/{i}.bin"), &large).await?;
        }
        drive.sync()?;
        Ok(())
    })
    .await?;

    let get_small = timed(async || {
        for i in 0..SMALL_COUNT {
            let path = format!("/small/{i}.bin");
            let data = drive
                .get(&path)
                .await?
                .with_context(|| format!("{path} missing"))?;
            ensure!(data.len() == SMALL_SIZE, "{path}: length {}", data.len());
        }
        Ok(())
    })
    .await?;

    let get_large = timed(async || {
        for i in 0..LARGE_COUNT {
            let path = format!("/large/{i}.bin");
            let data = drive
                .get(&path)
                .await?
                .with_context(|| format!("{path} missing"))?;
            ensure!(data.len() == LARGE_SIZE, "{path}: length {}", data.len());
        }
        Ok(())
    })
    .await?;

    let list_recursive = timed(async || {
        let n = drive.list("/").await?.len();
        ensure!(
            n == EXPECTED_ENTRIES,
            "list found {n}, expected {EXPECTED_ENTRIES}"
        );
        Ok(())
    })
    .await?;

    drop(drive);
    store.close().await?;
    drop(store);
    let store = Store::open(dir.path())?;
    let drive = Drive::open_own(&store, "db").await?;
    let get_large_reopened = timed(async || {
        for i in 0..LARGE_COUNT {
            let path = format!("/large/{i}.bin");
            let data = drive
                .get(&path)
                .await?
                .with_context(|| format!("{path} missing after reopening"))?;
            ensure!(data.len() == LARGE_SIZE, "{path}: length {}", data.len());
        }
        Ok(())
    })
    .await?;

    // Release the store (and its lock) before the temp dir goes.
    drop(drive);
    drop(store);
    dir.close().context("removing the temp dir")?;
    Ok([
        put_small_seq,
        put_small_batch,
        put_large,
        get_small,
        get_large,
        list_recursive,
        get_large_reopened,
    ])
}

/// One run of `node js/bench.js` in a fresh directory (which the script deletes itself).
fn run_js(root: &Path) -> Result<Timings> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-js-")
        .tempdir()
        .context("creating a temp dir")?;
    let out = Command::new("node")
        .arg(root.join("js/bench.js"))
        .arg(dir.path())
        .output()
        .context("running node (is Node.js installed?)")?;
    if !out.status.success() {
        bail!(
            "node js/bench.js failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .context("node js/bench.js printed nothing on stdout")?;
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("js/bench.js output is not JSON: {line}"))?;
    ensure!(v["impl"] == "js", "unexpected js/bench.js output: {line}");
    ensure!(
        v["list_entries"] == EXPECTED_ENTRIES,
        "js/bench.js listed {} entries, expected {EXPECTED_ENTRIES}",
        v["list_entries"]
    );
    let mut t = [0.0; WORKLOADS.len()];
    for (slot, (name, _)) in t.iter_mut().zip(WORKLOADS) {
        *slot = v[format!("{name}_ms")]
            .as_f64()
            .with_context(|| format!("js/bench.js output has no {name}_ms: {line}"))?;
    }
    Ok(t)
}

/// Median per workload over the runs.
fn median(runs: &[Timings]) -> Timings {
    std::array::from_fn(|w| median_of(runs.iter().map(|r| r[w]).collect()))
}

/// The median of `v` (of the middle two when their number is even); 0 for none.
pub(crate) fn median_of(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Reads from a reopened store: we check every block against the signed tree (BLAKE2b of each
/// byte, about 1 ms per MiB here) and JavaScript does not, so the bar is not to be slower.
const VERIFIED_READ_TARGET: f64 = 1.0;

fn target(name: &str, kind: Kind) -> f64 {
    match kind {
        _ if name == "get_large_reopened" => VERIFIED_READ_TARGET,
        Kind::Files(_) => SMALL_TARGET,
        Kind::Bytes(_) => LARGE_TARGET,
    }
}

fn throughput(kind: Kind, ms: f64) -> String {
    let secs = ms / 1e3;
    match kind {
        Kind::Files(n) => format!("{:.0} files/s", n as f64 / secs),
        Kind::Bytes(n) => format!("{:.1} MiB/s", n as f64 / (1024.0 * 1024.0) / secs),
    }
}

fn print_table(rust: &Timings, js: Option<&Timings>, runs: usize) {
    let stat = if runs > 1 {
        format!("median of {runs} runs")
    } else {
        "1 run".to_string()
    };
    println!("cohd-bench ({stat}; speedup = js ms / rust ms)");
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>16} {:>16} {:>7} {:>6}",
        "workload", "rust ms", "js ms", "speedup", "rust", "js", "target", "result"
    );
    for (w, (name, kind)) in WORKLOADS.iter().enumerate() {
        let r = rust[w];
        let (js_ms, speedup, js_tp, result) = match js {
            Some(js) => {
                let s = js[w] / r;
                let ok = if s >= target(name, *kind) {
                    "PASS"
                } else {
                    "MISS"
                };
                (
                    format!("{:.1}", js[w]),
                    format!("{s:.2}x"),
                    throughput(*kind, js[w]),
                    ok,
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-"),
        };
        println!(
            "{:<18} {:>10.1} {:>10} {:>8} {:>16} {:>16} {:>7} {:>6}",
            name,
            r,
            js_ms,
            speedup,
            throughput(*kind, r),
            js_tp,
            format!(">={}x", target(name, *kind)),
            result
        );
    }
}

/// Workload name -> value, for the JSON summary.
fn by_workload(values: impl Iterator<Item = Value>) -> Value {
    let map: Map<String, Value> = WORKLOADS
        .iter()
        .map(|(name, _)| name.to_string())
        .zip(values)
        .collect();
    Value::Object(map)
}

fn summary(rust_runs: &[Timings], js_runs: &[Timings]) -> Value {
    let rust = median(rust_runs);
    let mut out = json!({
        "impl": "cohd-bench",
        "runs": rust_runs.len(),
        "rust_ms": by_workload(rust.iter().map(|&v| json!(v))),
        "rust_runs_ms": rust_runs,
    });
    if !js_runs.is_empty() {
        let js = median(js_runs);
        out["js_ms"] = by_workload(js.iter().map(|&v| json!(v)));
        out["js_runs_ms"] = json!(js_runs);
        out["speedup"] = by_workload(js.iter().zip(&rust).map(|(j, r)| json!(j / r)));
        out["pass"] = by_workload(
            WORKLOADS
                .iter()
                .zip(js.iter().zip(&rust))
                .map(|((name, kind), (j, r))| json!(j / r >= target(name, *kind))),
        );
    }
    out
}

async fn run(opts: &Options) -> Result<()> {
    let root = repo_root();
    if opts.js && !root.join("js/node_modules").is_dir() {
        bail!(
            "{} is missing: run `npm ci --prefix js` in the repository root first \
             (or pass --no-js)",
            root.join("js/node_modules").display()
        );
    }
    let mut rust_runs = Vec::new();
    let mut js_runs = Vec::new();
    for i in 1..=opts.runs {
        // Interleave the two sides so that drift in the machine's state affects both alike.
        eprintln!("[cohd-bench] run {i}/{}: rust", opts.runs);
        rust_runs.push(run_rust().await.context("rust benchmark")?);
        if opts.js {
            eprintln!("[cohd-bench] run {i}/{}: js", opts.runs);
            js_runs.push(run_js(&root).context("js benchmark")?);
        }
    }
    if !opts.json {
        let js = (!js_runs.is_empty()).then(|| median(&js_runs));
        print_table(&median(&rust_runs), js.as_ref(), opts.runs);
    }
    println!("{}", summary(&rust_runs, &js_runs));
    Ok(())
}

// The drive's storage does blocking file I/O and the workloads await one operation at a time,
// so one thread (like Node's event loop) is all the benchmark needs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `COHD_LOG=debug` shows the library's diagnostics on stderr.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("COHD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match parse_args() {
        Ok(opts) if opts.scale => {
            let sizes = scale::Sizes {
                huge: opts.huge,
                files: opts.files.clone(),
                writers: opts.writers.clone(),
                keep: opts.keep.clone(),
            };
            scale::run(&repo_root(), opts.js, opts.json, &sizes).await
        }
        Ok(opts) if opts.codrive => codrive::run(opts.json, &opts.writers, opts.runs).await,
        Ok(opts) if opts.replication => {
            replication::run(&repo_root(), opts.js, opts.json, opts.runs).await
        }
        Ok(opts) if opts.live || opts.live_dht => {
            live::run(&repo_root(), opts.js, opts.json, opts.runs, opts.live_dht).await
        }
        Ok(opts) => run(&opts).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cohd-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
