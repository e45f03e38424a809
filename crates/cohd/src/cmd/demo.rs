//! `cohd demo`: the quick-start's main job, in temporary stores: one writer's drive, then two
//! writers sharing a co-drive over loopback TCP (authorization, replication, a conflict and its
//! resolution).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use co_hyperdrive::CoDrive;
use co_hyperdrive::{auth, catch_up, spawn_follow, ReplicateOptions, Replicator};
use co_hyperdrive::{Drive, Store};

use crate::output::Out;

pub(crate) async fn run(out: &mut Out) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cohd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut result = demo(&dir.join("drive"), out).await;
    if result.is_ok() {
        result = two_writers(&dir, out).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A peer of the co-drive: its store, its view, and its replication.
struct Peer {
    store: Store,
    co: Arc<CoDrive>,
    repl: Replicator,
}

impl Peer {
    /// Opens (or creates, `primary == None`) the co-drive in `dir` and follows its writers.
    async fn new(
        dir: &std::path::Path,
        primary: Option<co_hyperdrive::format::Key>,
    ) -> Result<Self> {
        let store = Store::create(dir)?;
        let co = Arc::new(match primary {
            None => CoDrive::create(&store, "db").await?,
            Some(k) => CoDrive::open(&store, k, "db").await?,
        });
        let repl = Replicator::new(ReplicateOptions {
            download_all: true,
            ..ReplicateOptions::default()
        });
        spawn_follow(
            store.clone(),
            repl.clone(),
            co.key(),
            "db".into(),
            Duration::from_millis(50),
        );
        Ok(Self { store, co, repl })
    }

    /// Waits (bounded) until `check` holds on this peer's merged view.
    async fn until(
        &self,
        what: &str,
        check: impl Fn(&co_hyperdrive::Snapshot<'_>) -> bool,
    ) -> Result<()> {
        for _ in 0..400 {
            if check(&self.co.snapshot().await?) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("timed out waiting for {what}")
    }

    /// The merged content of `path`, once its blocks arrived (the file's entry can arrive
    /// before its content).
    async fn read(&self, path: &str) -> Result<String> {
        let mut last = None;
        for _ in 0..400 {
            match self.co.get(path).await {
                Ok(Some(b)) => return Ok(String::from_utf8_lossy(&b).trim().to_string()),
                Ok(None) => last = Some(anyhow::anyhow!("{path} not found")),
                Err(e) => last = Some(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("cannot read {path}")))
    }

    fn listing(&self, snap: &co_hyperdrive::Snapshot<'_>) -> Vec<String> {
        snap.list("/").into_iter().map(|e| e.path).collect()
    }
}

async fn two_writers(dir: &std::path::Path, out: &mut Out) -> Result<()> {
    writeln!(out, "\n== two writers, one co-drive, over loopback TCP")?;
    let alice = Peer::new(&dir.join("alice"), None).await?;
    alice.co.put("/plan.txt", b"v1 by alice\n").await?;
    let (addr, _) = alice
        .repl
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    {
        let (r, c) = (alice.repl.clone(), alice.co.clone());
        tokio::spawn(async move { auth::answer_requests(r, &c, auth::allow_all()).await });
    }
    writeln!(out, "alice serves co-drive {} on {addr}", alice.co.key())?;

    let bob = Peer::new(&dir.join("bob"), Some(alice.co.key())).await?;
    let conn = bob.repl.connect(addr).await?;
    ensure!(
        catch_up(
            &bob.store,
            &bob.repl,
            alice.co.key(),
            "db",
            Duration::from_secs(10)
        )
        .await?,
        "bob did not catch up"
    );
    writeln!(
        out,
        "bob cloned it: {:?}; writing without being a writer: {}",
        bob.listing(&bob.co.snapshot().await?),
        bob.co
            .put("/x", b"x")
            .await
            .err()
            .map_or("allowed?!".into(), |e| e.to_string())
    )?;
    auth::request_authorization(&bob.repl, &bob.co, Duration::from_secs(10)).await?;
    writeln!(out, "bob asked alice for write access: granted")?;
    bob.co.put("/notes.txt", b"bob was here\n").await?;
    alice
        .until("bob's file at alice", |s| {
            s.stat("/notes.txt").ok().flatten().is_some()
        })
        .await?;
    writeln!(
        out,
        "alice sees bob's file; writers: {}",
        alice.co.view().await?.writers.len()
    )?;

    // Apart, both edit the same file: neither has seen the other's edit.
    conn.abort();
    alice.co.put("/plan.txt", b"v2 by alice\n").await?;
    bob.co.put("/plan.txt", b"v2 by bob\n").await?;
    let _conn = bob.repl.connect(addr).await?;
    let concurrent = |s: &co_hyperdrive::Snapshot<'_>| {
        s.stat("/plan.txt")
            .ok()
            .flatten()
            .is_some_and(|e| e.conflicts.len() == 2)
    };
    alice.until("the conflict at alice", concurrent).await?;
    bob.until("the conflict at bob", concurrent).await?;
    let (a, b) = (alice.co.snapshot().await?, bob.co.snapshot().await?);
    ensure!(alice.listing(&a) == bob.listing(&b), "the peers disagree");
    let winner_a = a.stat("/plan.txt")?.context("plan.txt")?.writer;
    let winner_b = b.stat("/plan.txt")?.context("plan.txt")?.writer;
    ensure!(winner_a == winner_b, "the peers picked different winners");
    let (shown_a, shown_b) = (alice.read("/plan.txt").await?, bob.read("/plan.txt").await?);
    ensure!(shown_a == shown_b, "the peers show different versions");
    writeln!(
        out,
        "concurrent edits of /plan.txt: both kept and listed as a conflict on both peers; both \
         show \"{shown_a}\""
    )?;
    // A write that has seen both versions resolves the conflict everywhere.
    alice.co.put("/plan.txt", b"v3: merged by alice\n").await?;
    let resolved = |s: &co_hyperdrive::Snapshot<'_>| {
        s.stat("/plan.txt")
            .ok()
            .flatten()
            .is_some_and(|e| e.conflicts.is_empty())
    };
    bob.until("the resolution at bob", resolved).await?;
    writeln!(
        out,
        "alice merged them: bob reads \"{}\", no conflict left",
        bob.read("/plan.txt").await?
    )?;
    for p in [&alice, &bob] {
        p.store.close().await?;
    }
    Ok(())
}

async fn demo(dir: &std::path::Path, out: &mut Out) -> Result<()> {
    writeln!(out, "== creating a store at {}", dir.display())?;
    let store = Store::create(dir)?;
    let drive = Drive::open_own(&store, "db").await?;
    writeln!(out, "drive key: {}", drive.key())?;
    drive.put("/hello.txt", b"Hello world").await?;
    drive.put("/docs/readme.md", b"# co-hyperdrive\n").await?;
    let mut batch = drive.batch().await?;
    for i in 0..3 {
        batch
            .put(&format!("/data/{i}.txt"), format!("file {i}\n").as_bytes())
            .await?;
    }
    batch.flush().await?;
    drive.symlink("/latest", "/data/2.txt").await?;
    let v = drive.version();
    writeln!(out, "== ls -r /  (version {v})")?;
    for e in drive.list("/").await? {
        writeln!(out, "  {} ({} bytes)", e.path, e.entry.size())?;
    }
    writeln!(out, "== readdir /: {:?}", drive.readdir("/").await?)?;
    writeln!(
        out,
        "== cat /hello.txt: {}",
        String::from_utf8_lossy(&drive.get("/hello.txt").await?.unwrap_or_default())
    )?;
    writeln!(
        out,
        "== cat /latest (symlink): {}",
        String::from_utf8_lossy(&drive.get("/latest").await?.unwrap_or_default()).trim()
    )?;
    drive.del("/data/0.txt").await?;
    drive.put("/hello.txt", b"Hello again").await?;
    writeln!(out, "== diff {v}..{}", drive.version())?;
    for c in drive.diff(v, drive.version(), "/").await? {
        let sign = match (&c.before, &c.after) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        };
        writeln!(out, "  {sign} {}", c.path)?;
    }
    let old = drive.checkout(v)?;
    writeln!(
        out,
        "== checkout {v}: /hello.txt = {}",
        String::from_utf8_lossy(&old.get("/hello.txt").await?.unwrap_or_default())
    )?;
    drive.sync()?;
    writeln!(
        out,
        "== done: db core {} blocks, blobs core {} blocks",
        drive.db().core().info().length,
        drive.blobs().core().info().length
    )?;
    Ok(())
}
