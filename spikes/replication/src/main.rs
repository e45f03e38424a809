//! Replication spike: serve a co-hyperdrive drive to JS peers over the Hypercore wire protocol,
//! and read a JS compat core. See docs/replication-notes.md.

mod conn;
mod framing;
mod proof;
mod reader;
mod serve;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use co_hyperdrive::format::Key;
use co_hyperdrive::{Drive, Store};
use tokio::net::{TcpListener, TcpStream};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

pub fn big_content() -> Vec<u8> {
    (0..200_000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // default 5 s like JS hypercore's setKeepAlive(5000); --keepalive-ms 0 disables ours
    let keepalive = match arg(&args, "--keepalive-ms") {
        Some(v) if v == "0" => None,
        Some(v) => Some(Duration::from_millis(v.parse()?)),
        None => Some(Duration::from_secs(5)),
    };
    match args.get(1).map(String::as_str) {
        Some("serve") => serve_main(&args, keepalive).await,
        Some("read-core") => read_main(&args, keepalive).await,
        Some("selftest") => selftest().await,
        Some("persisttest") => persisttest(&args).await,
        Some("persisttest-raw") => persisttest_raw(&args).await,
        _ => {
            eprintln!("usage: replication-spike serve --port P [--mem] [--live-ms N] [--once]\n       replication-spike read-core --port P --key HEX --expect N\n       replication-spike selftest");
            std::process::exit(2)
        }
    }
}

async fn make_drive(store: &Store, huge_mb: usize) -> anyhow::Result<Drive> {
    let drive = Drive::open_own(store, "db").await?;
    drive.put("/hello.txt", b"hello from rust\n").await?;
    drive.put("/big.bin", &big_content()).await?;
    drive.put("/docs/readme.md", b"# spike\nserved by co-hyperdrive\n").await?;
    if huge_mb > 0 {
        let data: Vec<u8> = (0..huge_mb * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        drive.put("/huge.bin", &data).await?;
    }
    Ok(drive)
}

async fn serve_main(args: &[String], keepalive: Option<Duration>) -> anyhow::Result<()> {
    let port: u16 = arg(args, "--port").unwrap_or("0".into()).parse()?;
    let tmp = tempfile::tempdir()?;
    let huge_mb: usize = arg(args, "--huge-mb").unwrap_or("0".into()).parse()?;
    let (store, drive) = if flag(args, "--mem") {
        let store = Store::memory();
        let drive = make_drive(&store, huge_mb).await?;
        (store, drive)
    } else {
        // Write, close, reopen: every block is then "from an earlier session" and
        // hypercore's own get/create_proof cannot see it (in-memory bitfield).
        let dir = tmp.path().join("store");
        {
            let store = Store::create(&dir)?;
            let drive = make_drive(&store, huge_mb).await?;
            drive.sync()?;
        }
        let store = Store::open(&dir)?;
        let drive = Drive::open_own(&store, "db").await?;
        let b = drive.blobs().core();
        eprintln!(
            "[rust] reopened: blobs core has(0)={} get(0) via Core={}",
            b.hypercore().has(0),
            b.get(0).await?.is_some()
        );
        (store, drive)
    };
    let _keep = &store;
    let cores = vec![drive.db().core().clone(), drive.blobs().core().clone()];
    eprintln!(
        "[rust] db {:?} blobs {:?}",
        cores[0].info(),
        cores[1].info()
    );
    let served = Arc::new(serve::Served::new(cores));
    let (tx, rx) = tokio::sync::watch::channel(0u64);

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("KEY={}", drive.key().to_hex());
    println!("BLOBS={}", drive.blobs_key().to_hex());
    println!("PORT={}", listener.local_addr()?.port());

    if let Some(ms) = arg(args, "--live-ms") {
        let ms: u64 = ms.parse()?;
        let drive = drive.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            match drive.put("/live.txt", b"appended while connected\n").await {
                Ok(_) => {
                    eprintln!("[rust] live put done, version {}", drive.version());
                    let _ = tx.send(drive.version());
                }
                Err(e) => eprintln!("[rust] live put failed: {e}"),
            }
            // keep tx alive
            std::future::pending::<()>().await;
        });
    } else {
        std::mem::forget(tx);
    }

    let once = flag(args, "--once");
    let deadline = tokio::time::sleep(Duration::from_secs(
        arg(args, "--timeout-s").map(|s| s.parse().unwrap()).unwrap_or(120),
    ));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (tcp, addr) = acc?;
                eprintln!("[rust] connection from {addr}");
                let fut = serve::serve_conn(tcp, served.clone(), rx.clone(), keepalive);
                if once {
                    tokio::select! {
                        r = fut => { r?; }
                        _ = &mut deadline => eprintln!("[rust] timeout"),
                    }
                    return Ok(());
                }
                tokio::spawn(fut);
            }
            _ = &mut deadline => { eprintln!("[rust] timeout"); return Ok(()); }
        }
    }
}

async fn read_main(args: &[String], keepalive: Option<Duration>) -> anyhow::Result<()> {
    let port: u16 = arg(args, "--port").expect("--port").parse()?;
    let key: Key = arg(args, "--key").expect("--key").parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let expect: u64 = arg(args, "--expect").unwrap_or("1".into()).parse()?;
    let tmp = tempfile::tempdir()?;
    let store = Store::create(tmp.path().join("store"))?;
    let core = store.open_key(key, true).await?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", port))).await??;
    tokio::time::timeout(
        Duration::from_secs(60),
        reader::read_core(tcp, core.clone(), expect, keepalive),
    )
    .await??;
    let info = core.info();
    println!("READ length={} contiguous={}", info.length, info.contiguous_length);
    for i in 0..info.length {
        let b = core.get(i).await?.unwrap_or_default();
        if b.len() <= 80 {
            println!("block {i}: {:?}", String::from_utf8_lossy(&b));
        } else {
            let sum: u64 = b.iter().map(|&x| x as u64).sum();
            println!("block {i}: {} bytes, byte sum {sum}", b.len());
        }
    }
    // The data must survive a reopen of the store (verify_and_apply_proof persisted it).
    drop(core);
    drop(store);
    let store = Store::open(tmp.path().join("store"))?;
    let core = store.open_key(key, false).await?;
    println!("REOPENED length={} contiguous={}", core.info().length, core.info().contiguous_length);
    for i in 0..core.info().length {
        println!("reopened block {i}: hypercore.has={} Core::get={}", core.hypercore().has(i), core.get(i).await?.map(|b| b.len().to_string()).unwrap_or("None".into()));
    }
    Ok(())
}

/// Checks that the fallback proof equals hypercore's own for blocks it can still see.
async fn selftest() -> anyhow::Result<()> {
    use hypercore_protocol::schema::Request;
    use hypercore_schema::{RequestBlock, RequestUpgrade};
    let store = Store::memory();
    let core = store.open_named("t").await?;
    for i in 0..37u32 {
        core.append(format!("block {i}").as_bytes()).await?;
    }
    let len = core.info().length;
    let mut checked = 0;
    for index in 0..len {
        for nodes in [0u64, 1, 3, 8] {
            for upgrade in [None, Some((0u64, len)), Some((index / 2, len - index / 2))] {
                if let Some((s, l)) = upgrade {
                    if s + l > len || l == 0 { continue; }
                }
                let req = Request {
                    id: 1,
                    fork: 0,
                    block: Some(RequestBlock { index, nodes }),
                    hash: None,
                    seek: None,
                    upgrade: upgrade.map(|(start, length)| RequestUpgrade { start, length }),
                    manifest: false,
                    priority: 0,
                };
                let direct = core
                    .hypercore()
                    .create_proof(req.block.clone(), None, None, req.upgrade.clone())
                    .await;
                let fb = proof::fallback_block_proof(&core, req.block.as_ref().unwrap(), &req).await;
                match (direct, fb) {
                    (Ok(a), Ok(b)) => {
                        anyhow::ensure!(a == b, "mismatch at block {index} nodes {nodes} upgrade {upgrade:?}:\n{a:?}\n{b:?}");
                        checked += 1;
                    }
                    (Err(_), Err(_)) => {}
                    (a, b) => anyhow::bail!("one failed at {index}/{nodes}/{upgrade:?}: {:?} vs {:?}", a.err(), b.err()),
                }
            }
        }
    }
    println!("selftest: fallback proof == create_proof for {checked} requests");
    Ok(())
}

/// In-process replication A -> B (no network) into a disk store, then reopen B: does B keep
/// what verify_and_apply_proof wrote? `persisttest [ORDER]`, ORDER like "u4,0,2,1,3,a,u5,4".
async fn persisttest(args: &[String]) -> anyhow::Result<()> {
    use hypercore_schema::{RequestBlock, RequestUpgrade};
    let order = args.get(2).cloned().unwrap_or("u4,0,2,1,3,a,u5,4".into());
    let tmp = tempfile::tempdir()?;
    let a_store = Store::memory();
    let a = a_store.open_named("a").await?;
    for i in 0..4 {
        a.append(format!("block {i}").as_bytes()).await?;
    }
    let key = a.key();
    {
        let b_store = Store::create(tmp.path().join("b"))?;
        let b = b_store.open_key(key, true).await?;
        for step in order.split(',') {
            let hb = b.hypercore();
            let proof = if step == "a" {
                a.append(b"appended").await?;
                continue;
            } else if let Some(n) = step.strip_prefix('u') {
                let n: u64 = n.parse()?;
                let start = hb.info().length;
                a.hypercore().create_proof(None, None, None, Some(RequestUpgrade { start, length: n - start })).await?
            } else {
                let i: u64 = step.parse()?;
                let nodes = hb.missing_nodes(i).await?;
                a.hypercore().create_proof(Some(RequestBlock { index: i, nodes }), None, None, None).await?
            };
            let ok = hb.verify_and_apply_proof(proof.unwrap()).await?;
            println!("step {step}: applied {ok} -> {:?}", hb.info());
        }
        b_store.flush()?;
    }
    let b_store = Store::open(tmp.path().join("b"))?;
    let b = b_store.open_key(key, false).await?;
    println!("reopened: {:?}", b.info());
    for i in 0..b.info().length {
        println!("  block {i}: Core::get {:?}", b.get(i).await?.map(|v| String::from_utf8_lossy(&v).into_owned()));
    }
    Ok(())
}

/// Same as persisttest but with hypercore's own disk storage (random-access-disk), to tell a
/// hypercore defect from a co-hyperdrive storage one. `persisttest-raw [ORDER]`
async fn persisttest_raw(args: &[String]) -> anyhow::Result<()> {
    use hypercore::{HypercoreBuilder, PartialKeypair, Storage};
    use hypercore_schema::{RequestBlock, RequestUpgrade};
    let order = args.get(2).cloned().unwrap_or("u4,0".into());
    let tmp = tempfile::tempdir()?;
    let a = HypercoreBuilder::new(Storage::new_memory().await?).build().await?;
    for i in 0..4 {
        a.append(format!("block {i}").as_bytes()).await?;
    }
    let public = a.key_pair().public;
    let dir = tmp.path().join("b");
    {
        let b = HypercoreBuilder::new(Storage::new_disk(&dir, false).await?)
            .key_pair(PartialKeypair { public, secret: None })
            .build()
            .await?;
        let mut last = None;
        for step in order.split(',') {
            let proof = if step == "a" {
                a.append(b"appended").await?;
                continue;
            } else if step == "p" {
                // pad: re-apply the last block proof (rewrites the same bytes, adds an oplog
                // entry, and counts as a write for hypercore's every-4th-write flush)
                last.clone()
            } else if let Some(n) = step.strip_prefix('u') {
                let n: u64 = n.parse()?;
                let start = b.info().length;
                a.create_proof(None, None, None, Some(RequestUpgrade { start, length: n - start })).await?
            } else {
                let i: u64 = step.parse()?;
                let nodes = b.missing_nodes(i).await?;
                let p = a.create_proof(Some(RequestBlock { index: i, nodes }), None, None, None).await?;
                last = p.clone();
                p
            };
            let ok = b.verify_and_apply_proof(proof.unwrap()).await?;
            println!("step {step}: applied {ok} {:?}", b.info());
        }
        println!("before reopen: {:?}", b.info());
    }
    let b = HypercoreBuilder::new(Storage::new_disk(&dir, false).await?).open(true).build().await;
    match b {
        Ok(b) => println!("reopened: {:?}", b.info()),
        Err(e) => {
            println!("reopen FAILED: {e}");
            // recovery: drop the unflushed oplog entries (they start after the two 4096-byte
            // header slots) and fall back to the last flushed header
            let f = std::fs::OpenOptions::new().write(true).open(dir.join("oplog"))?;
            f.set_len(8192)?;
            let b = HypercoreBuilder::new(Storage::new_disk(&dir, false).await?).open(true).build().await?;
            println!("after truncating the oplog to 8192: {:?}", b.info());
            for i in 0..b.info().contiguous_length {
                println!("  block {i}: {:?}", b.get(i).await?.map(|v| String::from_utf8_lossy(&v).into_owned()));
            }
        }
    }
    Ok(())
}
