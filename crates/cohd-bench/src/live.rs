//! `cohd-bench --live`: how long a write on one serving peer takes to be readable on another
//! that is already connected (both download everything, as `cohd serve` does), ours and
//! JavaScript's (`js/interop/bench-live.js`: two Hyperdrive 13 peers replicating over a
//! loopback TCP socket) in the same run. Both peers run in one process on each side. Target
//! (issue "A live network"): under 100 ms, median.
//!
//! `--live-dht`: the same, but the two peers find each other on a local HyperDHT
//! (`js/interop/dht-testnet.js`, 127.0.0.1) by the drive's topic, as `cohd serve` does
//! ([`Discovery`], server and client), and replicate over the UDX connection it made; the
//! JavaScript pair joins the same testnet with Hyperswarm.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use co_hyperdrive::dht::{self, DhtOptions, Discovery};
use co_hyperdrive::{add_known_cores, catch_up, ReplicateOptions, Replicator};
use co_hyperdrive::{Drive, Store};

/// Writes timed per run.
const WRITES: usize = 50;
/// Bytes per write.
const SIZE: usize = 1024;
/// Target median, milliseconds.
const TARGET_MS: f64 = 100.0;

fn serving() -> Replicator {
    Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    })
}

/// Milliseconds from each write on A until B reads it; connected over TCP, or found on the DHT
/// at `bootstrap`.
async fn ours(bootstrap: Option<&str>) -> Result<Vec<f64>> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let sa = Store::create(da.path())?;
    let a = Drive::open_own(&sa, "db").await?;
    a.put("/warmup", b"warm").await?;
    let ra = serving();
    ra.add_core(a.db().core().clone());
    ra.add_core(a.blobs().core().clone());
    let sb = Store::create(db.path())?;
    let rb = serving();
    add_known_cores(&sb, &rb, a.key(), "db").await?;
    // Kept for the whole run: the listener and connection, or the discoveries.
    let mut _tcp = None;
    let mut _found = Vec::new();
    match bootstrap {
        None => {
            let (addr, listening) = ra.listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            _tcp = Some((listening, rb.connect(addr).await?));
        }
        Some(b) => {
            // Both serve: announce and look up, as `cohd serve` does.
            for r in [&ra, &rb] {
                let d = Discovery::start(r, DhtOptions::new(vec![b.to_string()], None)).await?;
                d.join(dht::topic(&a.key()), true, true).await?;
                _found.push(d);
            }
        }
    }
    if !catch_up(&sb, &rb, a.key(), "db", Duration::from_secs(30)).await? {
        bail!("the reader did not catch up");
    }
    let b = Drive::open_key(&sb, a.key()).await?;
    let mut grew = b.db().core().subscribe();
    let data = vec![7u8; SIZE];
    let mut times = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let path = format!("/live/{i}.bin");
        let t = Instant::now();
        a.put(&path, &data).await?;
        loop {
            if b.get(&path).await?.as_deref() == Some(&data[..]) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("{path} did not arrive within 10 s");
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), grew.changed()).await;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

fn theirs(root: &Path, bootstrap: Option<&str>) -> Result<Vec<f64>> {
    let mut c = Command::new("node");
    c.arg(root.join("js/interop/bench-live.js")).args([
        "--writes",
        &WRITES.to_string(),
        "--size",
        &SIZE.to_string(),
    ]);
    if let Some(b) = bootstrap {
        c.args(["--bootstrap", b]);
    }
    let out = c.output().context("running node (is Node.js installed?)")?;
    if !out.status.success() {
        bail!(
            "bench-live.js failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bench-live.js: {}", String::from_utf8_lossy(&out.stdout)))?;
    v["ms"]
        .as_array()
        .context("bench-live.js printed no ms")?
        .iter()
        .map(|x| x.as_f64().context("not a number"))
        .collect()
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// The local DHT (`js/interop/dht-testnet.js`): its bootstrap address, and the process (which
/// exits when its stdin, kept here, closes).
struct Testnet {
    bootstrap: String,
    child: std::process::Child,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn testnet(root: &Path) -> Result<Testnet> {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new("node")
        .arg(root.join("js/interop/dht-testnet.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running node js/interop/dht-testnet.js (is Node.js installed?)")?;
    let out = child.stdout.take().context("testnet stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .context("reading the testnet's bootstrap line")?;
    let bootstrap = line
        .trim()
        .strip_prefix("bootstrap ")
        .with_context(|| format!("unexpected testnet output {line:?}"))?
        .to_string();
    Ok(Testnet { bootstrap, child })
}

pub(crate) async fn run(
    root: &Path,
    js: bool,
    json: bool,
    runs: usize,
    on_dht: bool,
) -> Result<()> {
    let net = on_dht.then(|| testnet(root)).transpose()?;
    let bootstrap = net.as_ref().map(|n| n.bootstrap.as_str());
    let (mut rs, mut jss) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        eprintln!("live writes, ours, run {run}/{runs}...");
        rs.extend(ours(bootstrap).await?);
        if js {
            eprintln!("live writes, javascript, run {run}/{runs}...");
            jss.extend(theirs(root, bootstrap)?);
        }
    }
    let how = if on_dht {
        "found on a local HyperDHT"
    } else {
        "over loopback TCP"
    };
    let (r50, r90) = (quantile(&rs, 0.5), quantile(&rs, 0.9));
    let j = (!jss.is_empty()).then(|| (quantile(&jss, 0.5), quantile(&jss, 0.9)));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "impl": if on_dht { "cohd-bench-live-dht" } else { "cohd-bench-live" },
                "writes": rs.len(),
                "rust_median_ms": r50,
                "rust_p90_ms": r90,
                "js_median_ms": j.map(|x| x.0),
                "js_p90_ms": j.map(|x| x.1),
                "pass": r50 < TARGET_MS,
            })
        );
        return Ok(());
    }
    println!(
        "a write on one serving peer, readable on another {how} (1 KiB, {} writes)",
        rs.len()
    );
    println!("ours:       median {r50:.1} ms, p90 {r90:.1} ms");
    if let Some((m, p)) = j {
        println!(
            "javascript: median {m:.1} ms, p90 {p:.1} ms ({:.1}x)",
            m / r50
        );
    }
    let verdict = if r50 < TARGET_MS { "PASS" } else { "MISS" };
    println!("target: median under {TARGET_MS} ms: {verdict}");
    Ok(())
}
