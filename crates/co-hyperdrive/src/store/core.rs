//! [`Core`]: our handle on one hypercore, working around two defects of `hypercore`
//! 0.17.0-alpha.1 from our side.
//!
//! 1. **Its bitfield loader is broken past the first page.** `DynamicBitfield::open` steps 1024
//!    bytes per 4096-byte page and indexes every page from the start of the file, so a bitfield
//!    file over 4 KiB (a core of more than 32,768 blocks) panics on open, and shorter files load
//!    phantom pages. We therefore never hand hypercore a persisted bitfield: it lives in memory
//!    (see `Store::open_core`) and starts empty on every open. Which blocks a core holds is
//!    known from the contiguous length, which hypercore persists in its oplog header; blocks
//!    below it that hypercore no longer marks are read by [`Core::get`] straight from the core's
//!    tree and data files (the byte offset of block `i` is the sum of the sizes of the full
//!    roots left of it; its length is the size of leaf `2i`).
//! 2. **It panics on damaged files** (unchecked arithmetic on lengths read from disk). Every
//!    call goes through [`guard`], which turns a panic into an error.
//! 3. **Its oplog decoder reads the wrong flag bits** (`oplog/entry.rs`: every field is gated on
//!    flag 2), so entries written by `verify_and_apply_proof` (flags 2|8, 2|4, 8) do not decode.
//!    hypercore flushes its oplog on the 1st, 5th, 9th… write since open, so a core that received
//!    data and was closed at another count cannot reopen or loses its last blocks. [`Core::close`]
//!    re-applies the last proof until the count ends on a flush; opening a read-only core whose
//!    oplog does not decode falls back to the last flushed state (the store truncates the
//!    oplog's entries), and the lost blocks are fetched again.
//!
//! `Core` also carries what replication needs: a watch of the length (poked after every local
//! append and every applied proof), a per-core write lock (hypercore's `verify_and_apply_proof`
//! must not interleave with another write) and a channel of wanted blocks for sparse reads.

use std::sync::Arc;
use std::time::Duration;

use cohd_format::Key;
use hypercore::{AppendOutcome, Hypercore, HypercoreError, Info};
use hypercore_schema::Proof;
use random_access_storage::RandomAccess;
use tokio::sync::{broadcast, watch, Mutex};

use super::file::FileStorage;

/// Errors of one core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Appends need the secret key.
    #[error("the core is read-only")]
    NotWritable,
    /// The core's files are damaged.
    #[error("the core files look corrupted: {0}")]
    Corrupted(String),
    /// Anything else hypercore reported.
    #[error("{0}")]
    Hypercore(String),
}

impl From<HypercoreError> for CoreError {
    fn from(e: HypercoreError) -> Self {
        match e {
            HypercoreError::NotWritable => CoreError::NotWritable,
            e => CoreError::Hypercore(e.to_string()),
        }
    }
}

/// The tree and data files of a disk core, for reads hypercore's bitfield no longer covers.
#[derive(Debug)]
pub(crate) struct CoreFiles {
    pub(crate) tree: Arc<FileStorage>,
    pub(crate) data: Arc<FileStorage>,
}

/// A hypercore of the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Core {
    hc: Hypercore,
    files: Option<Arc<CoreFiles>>,
    live: Arc<Live>,
}

#[derive(Debug)]
struct Live {
    length: watch::Sender<u64>,
    wants: broadcast::Sender<u64>,
    writes: Mutex<Writes>,
}

/// Writes since open, and the last applied proof (to pad the count on close).
#[derive(Debug, Default)]
struct Writes {
    count: u64,
    last_proof: Option<Proof>,
}

/// How long a sparse read waits for a connected peer to deliver a block.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Size in bytes of one stored merkle tree node: u64 little-endian size, then a 32-byte hash.
const NODE_SIZE: u64 = 40;

impl Core {
    pub(crate) fn new(hc: Hypercore, files: Option<Arc<CoreFiles>>) -> Self {
        let (length, _) = watch::channel(hc.info().length);
        let (wants, _) = broadcast::channel(1024);
        let live = Arc::new(Live {
            length,
            wants,
            writes: Mutex::default(),
        });
        Self { hc, files, live }
    }

    fn poke(&self) {
        self.live.length.send_replace(self.hc.info().length);
    }

    /// Watches the length: changes after every local append and every applied proof.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.live.length.subscribe()
    }

    /// Blocks a sparse read is waiting for; replication sessions subscribe and fetch them.
    pub fn wants(&self) -> broadcast::Receiver<u64> {
        self.live.wants.subscribe()
    }

    /// Verifies a proof from a peer and applies it; `false` if it does not fit (another fork).
    pub async fn apply_proof(&self, proof: Proof) -> Result<bool, CoreError> {
        let mut w = self.live.writes.lock().await;
        let ok = guard(self.hc.verify_and_apply_proof(proof.clone())).await??;
        if ok {
            w.count += 1;
            if proof.block.is_some() || proof.upgrade.is_some() {
                w.last_proof = Some(proof);
            }
        }
        drop(w);
        if ok {
            self.poke();
        }
        Ok(ok)
    }

    /// Ends the session's writes on an oplog flush (see the module docs, point 3), so the core
    /// reopens with everything it received. Idempotent; call before dropping the store.
    pub async fn close(&self) -> Result<(), CoreError> {
        let mut w = self.live.writes.lock().await;
        let Some(proof) = w.last_proof.clone() else {
            return Ok(());
        };
        // Re-applying an applied proof changes nothing but counts as a write.
        while w.count % 4 != 1 {
            guard(self.hc.verify_and_apply_proof(proof.clone())).await??;
            w.count += 1;
        }
        Ok(())
    }

    /// The underlying hypercore (for replication).
    pub fn hypercore(&self) -> &Hypercore {
        &self.hc
    }

    /// Length, byte length, contiguous length, fork, writability.
    pub fn info(&self) -> Info {
        self.hc.info()
    }

    /// The core key (the Ed25519 public key).
    pub fn key(&self) -> Key {
        Key(self.hc.key_pair().public.to_bytes())
    }

    /// Whether we hold the secret key.
    pub fn writable(&self) -> bool {
        self.hc.info().writeable
    }

    /// Appends one block.
    pub async fn append(&self, data: &[u8]) -> Result<AppendOutcome, CoreError> {
        self.append_batch([data]).await
    }

    /// Appends blocks in one signed append.
    pub async fn append_batch<A: AsRef<[u8]>, B: AsRef<[A]>>(
        &self,
        batch: B,
    ) -> Result<AppendOutcome, CoreError> {
        let mut w = self.live.writes.lock().await;
        let out = guard(self.hc.append_batch(batch)).await??;
        w.count += 1;
        drop(w);
        self.poke();
        Ok(out)
    }

    /// Block `index`. When it is not stored locally but a replication session is attached, asks
    /// the connected peers for it and waits (bounded); `None` when nobody delivers it.
    pub async fn get(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
        if let Some(b) = self.get_local(index).await? {
            return Ok(Some(b));
        }
        if self.live.wants.receiver_count() == 0 {
            return Ok(None);
        }
        let mut changed = self.subscribe();
        let _ = self.live.wants.send(index);
        let wait = async {
            loop {
                if changed.changed().await.is_err() {
                    return Ok(None);
                }
                if let Some(b) = self.get_local(index).await? {
                    return Ok(Some(b));
                }
                // Re-announce: a session attached since (or a peer that just grew) may have it.
                let _ = self.live.wants.send(index);
            }
        };
        match tokio::time::timeout(FETCH_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    /// Block `index` if stored locally.
    pub async fn get_local(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
        if let Some(b) = guard(self.hc.get(index)).await?? {
            return Ok(Some(b));
        }
        match &self.files {
            Some(files) if index < self.hc.info().contiguous_length => {
                files.read_block(index).await.map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl CoreFiles {
    async fn node_size(&self, flat: u64) -> Result<u64, CoreError> {
        let bytes = self
            .tree
            .read(flat * NODE_SIZE, 8)
            .await
            .map_err(|e| CoreError::Corrupted(format!("tree node {flat}: {e}")))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes);
        Ok(u64::from_le_bytes(b))
    }

    async fn read_block(&self, index: u64) -> Result<Vec<u8>, CoreError> {
        let leaf = index
            .checked_mul(2)
            .ok_or_else(|| CoreError::Corrupted("block index overflow".into()))?;
        let mut roots = Vec::new();
        flat_tree::full_roots(leaf, &mut roots);
        let mut offset = 0u64;
        for r in roots {
            offset = offset
                .checked_add(self.node_size(r).await?)
                .ok_or_else(|| CoreError::Corrupted("byte offset overflow".into()))?;
        }
        let len = self.node_size(leaf).await?;
        let end = offset.checked_add(len).filter(|e| *e <= self.data.len());
        if end.is_none() || len > (1 << 30) {
            return Err(CoreError::Corrupted(format!(
                "block {index} lies outside the data file"
            )));
        }
        self.data
            .read(offset, len)
            .await
            .map_err(|e| CoreError::Corrupted(format!("block {index}: {e}")))
    }
}

/// Runs a call into hypercore, turning a panic inside it into [`CoreError::Corrupted`]. No task
/// is spawned (the future is polled in place), so this costs nothing on the hot path. A core
/// that panicked may be left inconsistent (a poisoned lock): later calls then fail here too.
pub(crate) async fn guard<F: std::future::Future>(f: F) -> Result<F::Output, CoreError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| CoreError::Corrupted(panic_message(&*p)))
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic");
    format!("hypercore failed: {msg}")
}
