//! Which cores a co-drive needs: the primary's db core, every writer's db core (current and
//! removed, as the records name them), and each db core's blobs core once its header names it.

use std::collections::BTreeSet;
use std::time::Duration;

use cohd_format::Key;

use super::session::Replicator;
use crate::codrive::CoDrive;
use crate::drive::Drive;
use crate::store::Store;

/// Adds to `repl` every core of co-drive `primary` that the store can name now; returns how many
/// were new. Call again after data arrives: new records name new writers, new headers new blobs.
pub async fn add_known_cores(
    store: &Store,
    repl: &Replicator,
    primary: Key,
    own_name: &str,
) -> usize {
    let mut added = 0;
    let mut writers: BTreeSet<Key> = BTreeSet::from([primary]);
    if let Ok(co) = CoDrive::open(store, primary, own_name).await {
        if let Ok(v) = co.view().await {
            writers.extend(v.writers.keys().copied());
            writers.extend(v.removed.keys().copied());
        }
    }
    for w in writers {
        let Ok(db) = store.open_key(w, true).await else {
            continue;
        };
        if !repl.has_core(&w) {
            // Metadata: the merged view reads every entry, so db cores are fetched whole.
            repl.add_core_full(db);
            added += 1;
        }
        if let Ok(d) = Drive::open_key(store, w).await {
            let bk = d.blobs_key();
            if !repl.has_core(&bk) {
                repl.add_core(d.blobs().core().clone());
                added += 1;
            }
        }
    }
    added
}

/// Follows co-drive `primary` until every core it names is caught up with the connected peers
/// (or `timeout` passes); returns whether it caught up.
pub async fn catch_up(
    store: &Store,
    repl: &Replicator,
    primary: Key,
    own_name: &str,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        add_known_cores(store, repl, primary, own_name).await;
        let keys = repl.core_keys();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || !repl.wait_caught_up(&keys, left).await {
            return false;
        }
        // Caught up with what we knew; stop when that names no new core.
        if add_known_cores(store, repl, primary, own_name).await == 0 {
            return true;
        }
    }
}

/// Keeps adding the co-drive's cores as records and headers arrive (every `every`), until the
/// returned task is aborted: what `cohd serve` and long-lived peers run.
pub fn spawn_follow(
    store: Store,
    repl: Replicator,
    primary: Key,
    own_name: String,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            add_known_cores(&store, &repl, primary, &own_name).await;
            tokio::time::sleep(every).await;
        }
    })
}
