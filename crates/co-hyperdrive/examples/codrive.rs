//! Two writers sharing a co-drive over loopback TCP: alice creates it, bob clones it, asks for
//! write access and gets it; both edit one file apart (a conflict, kept on both peers), and a
//! write that has seen both versions resolves it everywhere.
//!
//! ```text
//! cargo run -p co-hyperdrive --example codrive
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use co_hyperdrive::format::Key;
use co_hyperdrive::{auth, catch_up, spawn_follow, CoDrive, ReplicateOptions, Replicator};
use co_hyperdrive::{Snapshot, Store};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long any step may wait for the other peer.
const WAIT: Duration = Duration::from_secs(10);

/// A peer of the co-drive: its store, the co-drive, and its replication.
struct Peer {
    store: Store,
    co: Arc<CoDrive>,
    repl: Replicator,
}

impl Peer {
    /// Creates the co-drive (`primary == None`) or follows it, in a memory store.
    async fn new(primary: Option<Key>) -> Result<Self> {
        let store = Store::memory();
        let co = Arc::new(match primary {
            None => CoDrive::create(&store, "db").await?,
            Some(k) => CoDrive::open(&store, k, "db").await?,
        });
        let repl = Replicator::new(ReplicateOptions {
            download_all: true,
            ..ReplicateOptions::default()
        });
        // Replicates every writer's cores as the records name them (looking every 50 ms).
        let every = Duration::from_millis(50);
        spawn_follow(store.clone(), repl.clone(), co.key(), "db".into(), every);
        Ok(Self { store, co, repl })
    }

    /// Waits for a version of the co-drive where `check` holds.
    async fn until(&self, what: &str, check: impl Fn(&Snapshot<'_>) -> bool) -> Result<()> {
        let mut watch = self.co.watch().await?;
        let wait = async {
            while !check(&self.co.snapshot().await?) {
                watch.next().await?;
            }
            Ok::<_, Box<dyn Error>>(())
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .map_err(|_| format!("timed out waiting for {what}"))?
    }

    async fn read(&self, path: &str) -> Result<String> {
        let bytes = self
            .co
            .get(path)
            .await?
            .ok_or(format!("{path} not found"))?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let alice = Peer::new(None).await?;
    alice.co.put("/plan.txt", b"v1 by alice\n").await?;
    let (addr, _) = alice
        .repl
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    // Alice grants write access to whoever asks (a real peer would check the key).
    let (r, c) = (alice.repl.clone(), alice.co.clone());
    tokio::spawn(async move { auth::answer_requests(r, &c, auth::allow_all()).await });
    println!("alice serves co-drive {} on {addr}", alice.co.key());

    let bob = Peer::new(Some(alice.co.key())).await?;
    let conn = bob.repl.connect(addr).await?;
    if !catch_up(&bob.store, &bob.repl, alice.co.key(), "db", WAIT).await? {
        return Err("bob did not catch up".into());
    }
    println!(
        "bob cloned it: /plan.txt = {:?}",
        bob.read("/plan.txt").await?
    );
    auth::request_authorization(&bob.repl, &bob.co, WAIT).await?;
    bob.co.put("/notes.txt", b"bob was here\n").await?;
    alice
        .until("bob's file", |s| {
            s.stat("/notes.txt").ok().flatten().is_some()
        })
        .await?;
    println!(
        "bob is a writer: alice reads {:?}",
        alice.read("/notes.txt").await?
    );

    // Apart, both edit the same file: neither has seen the other's edit.
    conn.abort();
    alice.co.put("/plan.txt", b"v2 by alice\n").await?;
    bob.co.put("/plan.txt", b"v2 by bob\n").await?;
    let _conn = bob.repl.connect(addr).await?;
    let conflict = |s: &Snapshot<'_>| {
        let e = s.stat("/plan.txt").ok().flatten();
        e.is_some_and(|e| e.conflicts.len() == 2)
    };
    alice.until("the conflict at alice", conflict).await?;
    bob.until("the conflict at bob", conflict).await?;
    // Both peers pick the same winner, and keep the other version.
    let (a, b) = (alice.read("/plan.txt").await?, bob.read("/plan.txt").await?);
    assert_eq!(a, b, "the peers show different versions");
    println!("concurrent edits of /plan.txt: a conflict on both peers, both show {a:?}");

    // A write that has seen both versions supersedes them.
    alice.co.put("/plan.txt", b"v3: merged by alice\n").await?;
    let resolved = |s: &Snapshot<'_>| {
        let e = s.stat("/plan.txt").ok().flatten();
        e.is_some_and(|e| e.conflicts.is_empty())
    };
    bob.until("the resolution at bob", resolved).await?;
    println!("resolved: bob reads {:?}", bob.read("/plan.txt").await?);
    Ok(())
}
