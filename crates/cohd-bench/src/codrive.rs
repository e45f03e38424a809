//! `cohd-bench --codrive`: merged reads and listings with 1, 4 and 16 writers (1000 files
//! each), against one plain drive holding the same files, in the same run. Target (issue 4):
//! 16 writers cost at most 3x one drive.

use std::time::Instant;

use anyhow::{Context, Result};
use co_hyperdrive::CoDrive;
use co_hyperdrive::{Drive, PutOptions, Store};

const FILES_PER_WRITER: usize = 1000;
const FILE_SIZE: usize = 1024;
const LOOKUPS: usize = 2000;
const UPDATES: usize = 20;

/// One row: `writers` writers, or a plain drive (`writers == 0`) with the 16-writer file count.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) setup: String,
    pub(crate) files: usize,
    /// First merged view from disk, in a fresh process-like open (ms).
    pub(crate) open_ms: f64,
    pub(crate) stat_us: f64,
    pub(crate) get_us: f64,
    pub(crate) list_ms: f64,
    /// One writer puts a file, then the merged view shows it (ms, mean of [`UPDATES`]).
    pub(crate) update_ms: f64,
    /// A new peer following the co-drive over loopback TCP until it lists every file from its
    /// index, as `cohd ls -r` does (metadata only, as `cohd clone` without `--all`); the median
    /// of the runs.
    pub(crate) converge_ms: Option<f64>,
    /// The part of `converge_ms` until the peer had caught up (the rest is the listing).
    pub(crate) caught_up_ms: Option<f64>,
    /// `converge_ms` with the serving peer on its own thread and runtime, as a `cohd serve` in
    /// another process would be (the new peer's work no longer shares a thread with it).
    pub(crate) converge_apart_ms: Option<f64>,
}

/// A new co-drive in `store` whose primary is the drive `primary`, and `writers - 1` more
/// writers (drives `w01`, `w02`, ...) it authorized.
pub(crate) async fn writers_of(
    store: &Store,
    primary: &str,
    writers: usize,
) -> Result<(CoDrive, Vec<CoDrive>)> {
    let first = CoDrive::create(store, primary).await?;
    let mut rest = vec![];
    for w in 1..writers {
        let co = CoDrive::open(store, first.key(), &format!("w{w:02}")).await?;
        first.authorize(co.local_key()).await?;
        rest.push(co);
    }
    Ok((first, rest))
}

fn path(w: usize, i: usize) -> String {
    format!("/w{w:02}/dir{:02}/f{i:04}.bin", i % 20)
}

fn pick(n: usize, k: usize) -> impl Iterator<Item = usize> {
    // A fixed stride walk, the same on every run and both sides.
    (0..k).map(move |j| (j * 7919) % n)
}

async fn co_row(writers: usize, runs: usize) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-co-")
        .tempdir()
        .context("temp dir")?;
    let data = vec![7u8; FILE_SIZE];
    let primary_key = {
        let store = Store::create(dir.path())?;
        let (primary, all) = writers_of(&store, "w00", writers).await?;
        for (w, co) in std::iter::once(&primary).chain(all.iter()).enumerate() {
            let mut snap = co.snapshot().await?;
            let mut b = snap.batch().await?;
            for i in 0..FILES_PER_WRITER {
                b.put(&path(w, i), &data, PutOptions::default()).await?;
            }
            b.flush().await?;
        }
        primary.key()
    };
    let store = Store::open(dir.path())?;
    let t = Instant::now();
    let co = CoDrive::open(&store, primary_key, "w00").await?;
    let files = co.snapshot().await?.list("/").len();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        files == writers * FILES_PER_WRITER,
        "expected {} files, found {files}",
        writers * FILES_PER_WRITER
    );
    let n = files;
    let t = Instant::now();
    for j in pick(n, LOOKUPS) {
        let p = path(j % writers, j / writers % FILES_PER_WRITER);
        co.snapshot()
            .await?
            .stat(&p)?
            .context("stat found nothing")?;
    }
    let stat_us = t.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64;
    let t = Instant::now();
    for j in pick(n, LOOKUPS) {
        let p = path(j % writers, j / writers % FILES_PER_WRITER);
        anyhow::ensure!(co.get(&p).await?.context("get found nothing")?.len() == FILE_SIZE);
    }
    let get_us = t.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64;
    let t = Instant::now();
    let listed = co.snapshot().await?.list("/").len();
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(listed == n);
    let t = Instant::now();
    for u in 0..UPDATES {
        let p = format!("/new/u{u:02}.bin");
        co.put(&p, &data).await?;
        co.snapshot()
            .await?
            .stat(&p)?
            .context("the put is not in the view")?;
    }
    let update_ms = t.elapsed().as_secs_f64() * 1e3 / UPDATES as f64;
    // Each run a fresh peer; the median, as the load on the machine varies.
    let (mut times, mut apart) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        times.push(converge(&store, primary_key, n + UPDATES, false).await?);
        apart.push(converge(&store, primary_key, n + UPDATES, true).await?.1);
    }
    let converge_ms = Some(crate::median_of(times.iter().map(|t| t.1).collect()));
    let caught_up_ms = Some(crate::median_of(times.iter().map(|t| t.0).collect()));
    let converge_apart_ms = Some(crate::median_of(apart));
    Ok(Row {
        setup: format!("co-drive, {writers} writer(s)"),
        files: n,
        open_ms,
        stat_us,
        get_us,
        list_ms,
        update_ms,
        converge_ms,
        caught_up_ms,
        converge_apart_ms,
    })
}

/// Serves `store`'s co-drive (`apart`: on a thread and runtime of its own) and times a fresh
/// peer until it lists all `n` files: (caught up, listed) in ms.
async fn converge(
    store: &Store,
    primary: co_hyperdrive::format::Key,
    n: usize,
    apart: bool,
) -> Result<(f64, f64)> {
    use co_hyperdrive::{add_known_cores, catch_up, ReplicateOptions, Replicator};
    // As `cohd serve` does.
    let serve = move |store: Store| async move {
        let server = Replicator::new(ReplicateOptions {
            download_all: true,
            ..ReplicateOptions::default()
        });
        add_known_cores(&store, &server, primary, "w00").await?;
        let (addr, task) = server
            .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
        anyhow::Ok((server, addr, task))
    };
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, serving, thread) = if apart {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = store.clone();
        let thread = std::thread::Builder::new()
            .name("serving-peer".into())
            .spawn(move || {
                rt.block_on(async move {
                    match serve(store).await {
                        Ok((_server, addr, task)) => {
                            let _ = addr_tx.send(Ok(addr));
                            let _ = stop_rx.await;
                            task.abort();
                        }
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                        }
                    }
                })
            })?;
        let addr = addr_rx.await.context("the serving peer ended")??;
        (addr, None, Some(thread))
    } else {
        let (server, addr, task) = serve(store.clone()).await?;
        (addr, Some((server, task)), None)
    };
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-conv-")
        .tempdir()
        .context("temp dir")?;
    let peer_store = Store::create(dir.path())?;
    let t = Instant::now();
    let peer = CoDrive::open(&peer_store, primary, "db").await?;
    let repl = Replicator::new(ReplicateOptions::default());
    add_known_cores(&peer_store, &repl, primary, "db").await?;
    let _conn = repl.connect(addr).await?;
    let caught = catch_up(
        &peer_store,
        &repl,
        primary,
        "db",
        std::time::Duration::from_secs(20),
    )
    .await?;
    if !caught {
        for k in repl.core_keys() {
            eprintln!("core {k}: remote length {:?}", repl.remote_length(&k));
        }
        eprintln!("progress {:?}", repl.progress());
    }
    anyhow::ensure!(caught, "no catch-up");
    let caught_ms = t.elapsed().as_secs_f64() * 1e3;
    // What `cohd ls -r` reads: the index on disk, brought up to date first.
    let listed = peer.indexed().await?.list("/")?.len();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if let Some((_server, task)) = serving {
        task.abort();
    }
    drop(stop);
    if let Some(t) = thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    anyhow::ensure!(listed == n, "the new peer lists {listed} of {n} files");
    Ok((caught_ms, ms))
}

async fn drive_row(files: usize) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-d-")
        .tempdir()
        .context("temp dir")?;
    let data = vec![7u8; FILE_SIZE];
    {
        let store = Store::create(dir.path())?;
        let d = Drive::open_own(&store, "db").await?;
        let mut b = d.batch().await?;
        for j in 0..files {
            b.put(&path(j % 16, j / 16), &data).await?;
        }
        b.flush().await?;
    }
    let store = Store::open(dir.path())?;
    let t = Instant::now();
    let d = Drive::open_own(&store, "db").await?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for j in pick(files, LOOKUPS) {
        d.stat(&path(j % 16, j / 16))
            .await?
            .context("stat found nothing")?;
    }
    let stat_us = t.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64;
    let t = Instant::now();
    for j in pick(files, LOOKUPS) {
        anyhow::ensure!(
            d.get(&path(j % 16, j / 16))
                .await?
                .context("get found nothing")?
                .len()
                == FILE_SIZE
        );
    }
    let get_us = t.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64;
    let t = Instant::now();
    let listed = d.list("/").await?.len();
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(listed == files);
    let t = Instant::now();
    for u in 0..UPDATES {
        let p = format!("/new/u{u:02}.bin");
        d.put(&p, &data).await?;
        d.stat(&p).await?.context("the put is not there")?;
    }
    let update_ms = t.elapsed().as_secs_f64() * 1e3 / UPDATES as f64;
    Ok(Row {
        setup: "plain drive".into(),
        files,
        open_ms,
        stat_us,
        get_us,
        list_ms,
        update_ms,
        converge_ms: None,
        caught_up_ms: None,
        converge_apart_ms: None,
    })
}

/// Runs every row and prints the table (and a JSON line). `writers`: only those rows (and no
/// plain drive to compare with) instead of 1, 4 and 16; `runs`: new peers converging per row.
pub(crate) async fn run(json: bool, writers: &[usize], runs: usize) -> Result<()> {
    let mut rows = Vec::new();
    let only = !writers.is_empty();
    let writers = if only { writers } else { &[1, 4, 16] };
    for &w in writers {
        eprintln!("co-drive with {w} writer(s)...");
        rows.push(co_row(w, runs).await?);
    }
    if only {
        print_rows(json, &rows, None);
        return Ok(());
    }
    eprintln!("plain drive...");
    let base = drive_row(16 * FILES_PER_WRITER).await?;
    let co16 = rows.last().cloned().context("no rows")?;
    let ratios = serde_json::json!({
        "stat": co16.stat_us / base.stat_us,
        "get": co16.get_us / base.get_us,
        "list": co16.list_ms / base.list_ms,
    });
    rows.push(base);
    print_rows(json, &rows, Some(ratios));
    Ok(())
}

fn print_rows(json: bool, rows: &[Row], ratios: Option<serde_json::Value>) {
    if !json {
        println!("co-drive merged reads ({FILES_PER_WRITER} files per writer; ratio = 16 writers / plain drive of 16000 files)");
        println!(
            "{:<26} {:>7} {:>10} {:>9} {:>9} {:>9} {:>10} {:>16} {:>9}",
            "setup",
            "files",
            "open ms",
            "stat us",
            "get us",
            "ls -r ms",
            "update ms",
            "converge ms",
            "apart ms"
        );
        for r in rows {
            let conv = match (r.converge_ms, r.caught_up_ms) {
                (Some(c), Some(u)) => format!("{c:.0} ({u:.0}+{:.0})", c - u),
                _ => "-".to_string(),
            };
            let apart = r
                .converge_apart_ms
                .map_or("-".to_string(), |c| format!("{c:.0}"));
            println!(
                "{:<26} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>16} {:>9}",
                r.setup,
                r.files,
                r.open_ms,
                r.stat_us,
                r.get_us,
                r.list_ms,
                r.update_ms,
                conv,
                apart
            );
        }
        println!(
            "converge: caught up + listed from the index, median of the runs; apart: the same \
             with the serving peer on a thread of its own"
        );
        for (k, v) in ratios.iter().flat_map(|r| r.as_object()).flatten() {
            let v = v.as_f64().unwrap_or(f64::NAN);
            println!(
                "16 writers / one drive, {k}: {v:.2}x (target <= 3x: {})",
                if v <= 3.0 { "PASS" } else { "MISS" }
            );
        }
    }
    println!(
        "{}",
        serde_json::json!({ "codrive": rows, "ratios": ratios })
    );
}
