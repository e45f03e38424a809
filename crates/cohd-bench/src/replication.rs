//! `cohd-bench --replication`: full replication of a ~100 MiB drive over loopback TCP, our peer
//! to our peer and JavaScript to JavaScript (`js/interop/bench-js.js`) in the same run; and the
//! time until the first file is readable on a fresh clone. Targets (issue 3): at least 4x the
//! JavaScript throughput, first file in under 30 ms.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use co_hyperdrive::net::{catch_up, ReplicateOptions, Replicator};
use co_hyperdrive::{Drive, Store};

const FILE_MIB: usize = 10;
const TOTAL_MIB: usize = 100;

fn filled(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + seed) as u8).collect()
}

/// Our side: returns (ms for everything, ms to the first file).
async fn rust_side() -> Result<(f64, f64)> {
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
    let store = Store::open(src.path())?;
    let served = Drive::open_own(&store, "db").await?;
    let server = Replicator::new(ReplicateOptions::default());
    server.add_core(served.db().core().clone());
    server.add_core(served.blobs().core().clone());
    let (addr, _task) = server.listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;

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
            catch_up(&store, &repl, key, "db", Duration::from_secs(30)).await,
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
        catch_up(&store, &repl, key, "db", Duration::from_secs(120)).await,
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
    Ok((ms, first_ms))
}

fn js_side(root: &Path) -> Result<(f64, f64)> {
    let out = Command::new("node")
        .arg(root.join("js/interop/bench-js.js"))
        .args([
            "--mib",
            &TOTAL_MIB.to_string(),
            "--file-mib",
            &FILE_MIB.to_string(),
        ])
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

/// Runs both sides and prints the comparison.
pub(crate) async fn run(root: &Path, js: bool, json: bool) -> Result<()> {
    eprintln!("rust -> rust, {TOTAL_MIB} MiB...");
    let (ms, first) = rust_side().await?;
    let (js_ms, js_first) = if js {
        eprintln!("js -> js, {TOTAL_MIB} MiB...");
        let (a, b) = js_side(root)?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let mib_s = TOTAL_MIB as f64 / (ms / 1e3);
    if !json {
        println!("replication of {TOTAL_MIB} MiB over loopback TCP");
        println!("  ours: {ms:.0} ms ({mib_s:.1} MiB/s), first file readable after {first:.1} ms (target < 30 ms: {})", if first < 30.0 { "PASS" } else { "MISS" });
        if let (Some(j), Some(jf)) = (js_ms, js_first) {
            let ratio = j / ms;
            println!(
                "  js:   {j:.0} ms ({:.1} MiB/s), first file after {jf:.1} ms",
                TOTAL_MIB as f64 / (j / 1e3)
            );
            println!(
                "  speedup {ratio:.2}x (target >= 4x: {})",
                if ratio >= 4.0 { "PASS" } else { "MISS" }
            );
        }
    }
    println!(
        "{}",
        serde_json::json!({ "replication": { "mib": TOTAL_MIB, "rust_ms": ms, "rust_first_file_ms": first, "js_ms": js_ms, "js_first_file_ms": js_first } })
    );
    Ok(())
}
