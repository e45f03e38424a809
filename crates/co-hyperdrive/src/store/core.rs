//! [`Core`]: one core of the store as the rest of the library uses it: our own signed log
//! ([`super::log`]) plus what replication needs around it: a watch of the length (poked after
//! every local append and every applied proof), a per-core write lock, blocks found damaged
//! (they count as missing until a peer delivers them again) and a channel of wanted blocks for
//! sparse reads and downloads.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use cohd_format::Key;
use tokio::sync::{broadcast, watch, Mutex};

use super::kv::Durability;
use super::log::{Log, LogError};

/// Errors of one core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Appends need the secret key.
    #[error("the core is read-only")]
    NotWritable,
    /// The core's stored records are damaged.
    #[error("the core's stored records look corrupted: {0}")]
    Corrupted(String),
    /// The store failed to read or write.
    #[error("{0}")]
    Storage(String),
    /// A peer's proof does not verify.
    #[error("{0}")]
    InvalidProof(String),
    /// A block stored on disk does not match the signed tree, and no peer delivered it again.
    #[error("block {index} is damaged on disk (it does not match its signed hash) and no connected peer has it")]
    Damaged {
        /// The block.
        index: u64,
    },
    /// The store was closed: nothing more is written through this handle.
    #[error("the store was closed")]
    Closed,
    /// Our own core's blocks cannot be cleared: no peer may hold them.
    #[error("the content of this store's own cores cannot be cleared (no peer may hold a copy)")]
    OwnContent,
    /// A download could not get a block: no replication session is attached, or no connected
    /// peer delivered it in time.
    #[error("block {index} is not available from any connected peer")]
    Unavailable {
        /// The first block that did not arrive.
        index: u64,
    },
}

impl From<LogError> for CoreError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::NotWritable => CoreError::NotWritable,
            LogError::Damaged(index) => CoreError::Damaged { index },
            LogError::Corrupted(m) => CoreError::Corrupted(m),
            LogError::Invalid(m) => CoreError::InvalidProof(m),
            LogError::Kv(e) => CoreError::Storage(e.to_string()),
        }
    }
}

/// A core's state: lengths, fork, whether we can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Blocks in the core (signed by its owner).
    pub length: u64,
    /// Bytes in those blocks.
    pub byte_length: u64,
    /// Blocks `0..n` held locally, counted from the start.
    pub contiguous_length: u64,
    /// The fork id (0 until the owner truncates).
    pub fork: u64,
    /// Whether we hold the secret key.
    pub writable: bool,
}

/// Where a core stands after an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The new length.
    pub length: u64,
    /// The new byte length.
    pub byte_length: u64,
}

/// A core of the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Core {
    log: Arc<Log>,
    live: Arc<Live>,
}

#[derive(Debug)]
struct Live {
    length: watch::Sender<u64>,
    wants: broadcast::Sender<Wanted>,
    /// Serializes writes; true once the core is closed.
    writes: Mutex<bool>,
    /// Blocks whose stored copy failed verification (until they arrive again).
    damaged: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Replicators holding this core: its channels may be opening on their connections.
    attached: std::sync::atomic::AtomicUsize,
    /// The core whose replication brings this one (a drive's db core, for its blobs core): a
    /// follower adds the blobs core once the db's header is here, so while the db core is held
    /// a read here waits a moment for this core's channel too.
    companion: std::sync::OnceLock<Arc<Live>>,
}

impl Live {
    fn held(&self) -> bool {
        self.attached.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// How long a sparse read waits for a connected peer to deliver a block, and how long a
/// download waits without any block arriving.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Blocks a download asks for at once (peers pipeline their requests within it).
const DOWNLOAD_WINDOW: usize = 1024;

/// Blocks a read or a download waits for, as ranges (one message per request, so that a
/// download of many runs cannot overflow the channel).
pub type Wanted = Arc<[Range<u64>]>;

/// How long a read or download waits for a replicator that holds the core to open its channel
/// (the core was just added, e.g. a writer whose record just arrived).
const ATTACH_GRACE: Duration = Duration::from_millis(500);

/// Blocks past its current length a download may ask a core for (its length may lag its
/// peers'): 64 GiB of 64 KiB blocks.
pub const DOWNLOAD_AHEAD: u64 = 1 << 20;

/// How often a download that is not done repeats what it wants.
const REANNOUNCE: Duration = Duration::from_secs(1);

impl Core {
    pub(crate) fn new(log: Log) -> Self {
        let (length, _) = watch::channel(log.lengths().0);
        let (wants, _) = broadcast::channel(1024);
        let live = Arc::new(Live {
            length,
            wants,
            writes: Mutex::default(),
            damaged: std::sync::Mutex::default(),
            attached: std::sync::atomic::AtomicUsize::new(0),
            companion: std::sync::OnceLock::new(),
        });
        Self {
            log: Arc::new(log),
            live,
        }
    }

    fn poke(&self) {
        self.live.length.send_replace(self.log.lengths().0);
    }

    /// Watches the length: changes after every local append and every applied proof.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.live.length.subscribe()
    }

    /// Blocks reads and downloads are waiting for; replication sessions subscribe and fetch
    /// them.
    pub fn wants(&self) -> broadcast::Receiver<Wanted> {
        self.live.wants.subscribe()
    }

    /// A replicator holds this core (see [`detach`](Self::detach)).
    pub(crate) fn attach(&self) {
        self.live
            .attached
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A replicator that held this core is gone.
    pub(crate) fn detach(&self) {
        let _ = self.live.attached.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
    }

    /// This core is replicated along with `other` (see `Live::companion`); the first call wins.
    pub(crate) fn follows(&self, other: &Core) {
        let _ = self.live.companion.set(other.live.clone());
    }

    /// Whether a replication session listens for wanted blocks; when a replicator holds the
    /// core (or the core it follows) but none does yet, waits a moment for its channel to open.
    async fn session_attached(&self) -> bool {
        if self.live.wants.receiver_count() > 0 {
            return true;
        }
        if !self.live.held() && !self.live.companion.get().is_some_and(|c| c.held()) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + ATTACH_GRACE;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.live.wants.receiver_count() > 0 {
                return true;
            }
        }
        false
    }

    /// Where downloads stop: [`DOWNLOAD_AHEAD`] blocks past our length (a blob id from another
    /// writer may name any range).
    fn download_limit(&self) -> u64 {
        self.log.lengths().0.saturating_add(DOWNLOAD_AHEAD)
    }

    /// Whether block `index` is stored locally (cheap: no read).
    pub fn has(&self, index: u64) -> bool {
        self.log.has(index) && !self.is_damaged(index)
    }

    /// The contiguous length, short of the first block found damaged (replication fetches
    /// everything from there that is not held).
    pub fn contiguous_held(&self) -> u64 {
        let c = self.log.lengths().2;
        match self.damaged().iter().next() {
            Some(&d) if d < c => d,
            _ => c,
        }
    }

    /// The longest prefix that reads as one consistent version without a peer: the whole core
    /// when every block is here, else the longest signed length whose blocks are all here
    /// (a writer signs whole batches, and a bee read mid-batch would show a broken tree), else
    /// the whole core (reads then fail on the missing blocks rather than show a wrong view).
    pub fn consistent_length(&self) -> u64 {
        self.log.consistent_length(self.readable_length())
    }

    /// Blocks `0..n` are all stored locally: what can be read without a peer.
    pub fn readable_length(&self) -> u64 {
        self.contiguous_held().min(self.log.lengths().0)
    }

    fn damaged(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.live.damaged.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_damaged(&self, index: u64) -> bool {
        let d = self.damaged();
        !d.is_empty() && d.contains(&index)
    }

    /// Fetches every block of `ranges` that is not stored locally from connected peers, and
    /// waits until all are here (blocks past our length too: the core may still be catching up
    /// with its peers; at most `DOWNLOAD_AHEAD` past it). Returns how many blocks arrived.
    /// Fails with [`CoreError::Unavailable`] when no replication session is attached, or when
    /// nothing arrives for a while (no connected peer has the blocks).
    pub async fn download(
        &self,
        ranges: impl IntoIterator<Item = Range<u64>>,
    ) -> Result<u64, CoreError> {
        self.download_with(ranges, &mut |_| {}).await
    }

    /// How many blocks of `ranges` (as [`download`](Self::download) cuts them) are not stored
    /// locally.
    pub fn missing_blocks(&self, ranges: &[Range<u64>]) -> u64 {
        let limit = self.download_limit();
        ranges
            .iter()
            .flat_map(|r| r.start..r.end.min(limit))
            .filter(|&i| !self.has(i))
            .count() as u64
    }

    /// [`download`](Self::download), calling `arrived(n)` as blocks arrive (`n` new ones each
    /// time; they add up to the result).
    pub async fn download_with(
        &self,
        ranges: impl IntoIterator<Item = Range<u64>>,
        arrived: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, CoreError> {
        let limit = self.download_limit();
        // Watching before looking: a block that arrives between the two still wakes us.
        let mut changed = self.subscribe();
        let mut missing = ranges
            .into_iter()
            .flat_map(|r| r.start..r.end.min(limit))
            .filter(|&i| !self.has(i));
        let mut fetched = 0;
        loop {
            // Groups of blocks in flight together (peers pipeline their requests within one).
            let group: Vec<u64> = missing.by_ref().take(DOWNLOAD_WINDOW).collect();
            if group.is_empty() {
                return Ok(fetched);
            }
            self.download_group(&group, &mut changed, arrived).await?;
            fetched += group.len() as u64;
        }
    }

    /// Fetches `group` (ascending block indices) and waits for all of it.
    async fn download_group(
        &self,
        group: &[u64],
        changed: &mut watch::Receiver<u64>,
        arrived: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), CoreError> {
        if !self.session_attached().await {
            return Err(CoreError::Unavailable { index: group[0] });
        }
        let mut pending = group;
        self.announce(pending);
        let mut progress = tokio::time::Instant::now();
        loop {
            // Counted in order: a block that arrives early is counted once the ones before it
            // are here.
            let here = pending.iter().take_while(|&&i| self.has(i)).count();
            if here > 0 {
                pending = &pending[here..];
                arrived(here as u64);
            }
            if pending.is_empty() {
                return Ok(());
            }
            // Sessions remember what is wanted; ask again now and then for peers that connected
            // or grew since. Any block arriving in this core counts as progress (ours may come
            // in any order).
            match tokio::time::timeout(REANNOUNCE, changed.changed()).await {
                Ok(Ok(())) => progress = tokio::time::Instant::now(),
                Ok(Err(_)) => return Err(CoreError::Unavailable { index: pending[0] }),
                Err(_) => self.announce(pending),
            }
            if progress.elapsed() >= FETCH_TIMEOUT {
                return Err(CoreError::Unavailable { index: pending[0] });
            }
        }
    }

    /// Tells replication sessions about `blocks` (ascending), as runs of consecutive indices.
    fn announce(&self, blocks: &[u64]) {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for &b in blocks {
            match runs.last_mut() {
                Some(r) if r.end == b => r.end = b.saturating_add(1),
                _ => runs.push(b..b.saturating_add(1)),
            }
        }
        let _ = self.live.wants.send(runs.into());
    }

    /// Verifies a proof from a peer and applies it; `false` if it does not fit (another fork).
    pub async fn apply_proof(&self, proof: super::Proof) -> Result<bool, CoreError> {
        self.apply_proofs(vec![proof]).await.1
    }

    /// Verifies proofs from a peer and applies them in order, in one commit (their blocks
    /// hashed together): each is checked as [`apply_proof`](Self::apply_proof) checks it.
    /// Stops at the first that does not fit (`Ok(false)`) or does not verify, keeping the ones
    /// before it; returns how many were applied, and the last outcome.
    pub async fn apply_proofs(
        &self,
        proofs: Vec<super::Proof>,
    ) -> (usize, Result<bool, CoreError>) {
        let w = self.live.writes.lock().await;
        if *w {
            return (0, Err(CoreError::Closed));
        }
        let blocks: Vec<u64> = proofs
            .iter()
            .filter_map(|p| p.block.as_ref().map(|b| b.index))
            .collect();
        let (applied, outcome) = self.log.apply_proofs(proofs);
        drop(w);
        if applied > 0 {
            // Blocks of proofs that were not applied may be marked damaged still: only those
            // held now are cleared.
            if !self.damaged().is_empty() {
                let held: Vec<u64> = blocks.into_iter().filter(|&i| self.log.has(i)).collect();
                let mut damaged = self.damaged();
                for i in held {
                    damaged.remove(&i);
                }
            }
            self.poke();
        }
        (applied, outcome.map_err(CoreError::from))
    }

    /// The signed log (proofs are made from it, see `proofs.rs`).
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// The log, for work moved off the runtime's threads.
    pub(crate) fn shared_log(&self) -> Arc<Log> {
        self.log.clone()
    }

    /// Ends writes through this core (waiting for one in progress). Reads go on working.
    pub(crate) async fn close(&self) {
        *self.live.writes.lock().await = true;
    }

    /// Length, byte length, contiguous length, fork, writability.
    pub fn info(&self) -> Info {
        let (length, byte_length, contiguous_length, fork) = self.log.lengths();
        Info {
            length,
            byte_length,
            contiguous_length: contiguous_length.min(self.contiguous_held()),
            fork,
            writable: self.log.writable(),
        }
    }

    /// The fork id (see [`Info::fork`]), cheaply.
    pub fn fork(&self) -> u64 {
        self.log.lengths().3
    }

    /// The core key (the Ed25519 public key).
    pub fn key(&self) -> Key {
        self.log.key()
    }

    /// Drops the local copies of the blocks of `ranges` (they are fetched again when read
    /// with a peer connected); returns how many were held. Refused for our own cores.
    pub async fn clear(&self, ranges: &[Range<u64>]) -> Result<u64, CoreError> {
        if self.writable() {
            return Err(CoreError::OwnContent);
        }
        let w = self.live.writes.lock().await;
        if *w {
            return Err(CoreError::Closed);
        }
        let n = self.log.clear(ranges)?;
        drop(w);
        self.damaged()
            .retain(|i| !ranges.iter().any(|r| r.contains(i)));
        Ok(n)
    }

    /// The core's manifest, when known: stored once a peer sent it (manifest cores), or given
    /// when the core was opened. Compat cores have none.
    pub fn manifest(&self) -> Option<cohd_format::manifest::Manifest> {
        self.log.manifest()
    }

    /// Whether the core's manifest is known (see [`manifest`](Self::manifest)).
    pub fn knows_manifest(&self) -> bool {
        self.log.knows_manifest()
    }

    /// Whether we hold the secret key.
    pub fn writable(&self) -> bool {
        self.log.writable()
    }

    /// Appends one block.
    pub async fn append(&self, data: &[u8]) -> Result<Appended, CoreError> {
        self.append_batch([data]).await
    }

    /// Appends blocks in one signed append (copied; [`Core::append_owned`] moves them).
    pub async fn append_batch<A: AsRef<[u8]>, B: AsRef<[A]>>(
        &self,
        batch: B,
    ) -> Result<Appended, CoreError> {
        let blocks = batch.as_ref().iter().map(|b| b.as_ref().to_vec()).collect();
        self.append_owned(blocks).await
    }

    /// Appends blocks in one signed append, moving them into the commit.
    pub async fn append_owned(&self, blocks: Vec<Vec<u8>>) -> Result<Appended, CoreError> {
        let w = self.live.writes.lock().await;
        if *w {
            return Err(CoreError::Closed);
        }
        let (length, byte_length) = self.log.append(blocks)?;
        drop(w);
        self.poke();
        Ok(Appended {
            length,
            byte_length,
        })
    }

    /// Appends `blocks` here and `other_blocks` to `other` (a core of the same store) in one
    /// commit: after any stop, both appends are there or neither (a file's blob blocks and
    /// the entry naming them).
    pub async fn append_together(
        &self,
        blocks: Vec<Vec<u8>>,
        other: &Core,
        other_blocks: Vec<Vec<u8>>,
    ) -> Result<(Appended, Appended), CoreError> {
        self.append_together_with(blocks, other, other_blocks, Durability::Buffered)
            .await
    }

    /// [`append_together`](Self::append_together), durable when it returns if `durability`
    /// says so (a drive batch's flush).
    pub(crate) async fn append_together_with(
        &self,
        blocks: Vec<Vec<u8>>,
        other: &Core,
        other_blocks: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<(Appended, Appended), CoreError> {
        if Arc::ptr_eq(&self.live, &other.live) {
            return Err(CoreError::Corrupted(
                "appends together need two different cores".into(),
            ));
        }
        // Both cores' writes are held, always in key order.
        let (wa, wb) = if self.key().0 < other.key().0 {
            let wa = self.live.writes.lock().await;
            (wa, other.live.writes.lock().await)
        } else {
            let wb = other.live.writes.lock().await;
            (self.live.writes.lock().await, wb)
        };
        if *wa || *wb {
            return Err(CoreError::Closed);
        }
        let (a, b) = self
            .log
            .append_together(blocks, &other.log, other_blocks, durability)?;
        drop((wa, wb));
        self.poke();
        other.poke();
        let appended = |(length, byte_length)| Appended {
            length,
            byte_length,
        };
        Ok((appended(a), appended(b)))
    }

    /// Block `index`. When it is not stored locally but a replication session is attached, asks
    /// the connected peers for it and waits (bounded); `None` when nobody delivers it.
    pub async fn get(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
        if let Some(b) = self.get_local(index).await? {
            return Ok(Some(b));
        }
        if !self.session_attached().await {
            return if self.is_damaged(index) {
                Err(CoreError::Damaged { index })
            } else {
                Ok(None)
            };
        }
        let mut changed = self.subscribe();
        // (A block past our length is waited for too: the core's length may still be catching
        // up with a peer's.)
        let want: Wanted = std::iter::once(index..index.saturating_add(1)).collect();
        let _ = self.live.wants.send(want.clone());
        let wait = async {
            loop {
                // (Checked after subscribing: a block that arrived meanwhile is seen here.)
                if let Some(b) = self.get_local(index).await? {
                    return Ok(Some(b));
                }
                if changed.changed().await.is_err() {
                    return Ok(None);
                }
                // Re-announce: a session attached since (or a peer that just grew) may have it.
                let _ = self.live.wants.send(want.clone());
            }
        };
        match tokio::time::timeout(FETCH_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    /// Asks the attached replication sessions for blocks `range` without waiting for them (as a
    /// read would, see [`get`](Self::get)).
    pub(crate) fn want(&self, range: Range<u64>) {
        let want: Wanted = std::iter::once(range).collect();
        let _ = self.live.wants.send(want);
    }

    /// Block `index` if stored locally (checked against its signed leaf).
    pub async fn get_local(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
        if self.is_damaged(index) {
            return Ok(None);
        }
        match self.log.get(index) {
            Ok(b) => Ok(b),
            Err(LogError::Damaged(_)) => {
                self.mark_damaged(index);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a block whose stored copy is damaged as missing from now on, so that peers send
    /// it again.
    pub(crate) fn mark_damaged(&self, index: u64) {
        tracing::info!(core = %self.key(), index, "a stored block is damaged");
        self.damaged().insert(index);
        self.log.forget(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CoreFormat, Store};

    /// A read of a core nobody replicates fails at once; of a core that follows a replicated
    /// one (a drive's blobs core, added by the follower a moment after its db core), it waits
    /// for that core's session.
    #[tokio::test]
    async fn a_core_that_follows_a_held_one_waits_for_its_session() {
        let store = Store::memory();
        let db = store.open_own("db", CoreFormat::Manifest).await.unwrap();
        let blobs = store.open_own("blobs", CoreFormat::Manifest).await.unwrap();
        let session = |c: &Core| {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let rx = c.wants();
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(rx);
            })
        };
        // Nobody holds either: no wait, no session.
        let late = session(&blobs);
        assert!(!blobs.session_attached().await);
        late.abort();

        blobs.follows(&db);
        db.attach();
        let late = session(&blobs);
        assert!(blobs.session_attached().await);
        late.abort();
    }
}
