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

use std::sync::Arc;

use cohd_format::Key;
use hypercore::{AppendOutcome, Hypercore, HypercoreError, Info};
use random_access_storage::RandomAccess;

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
}

/// Size in bytes of one stored merkle tree node: u64 little-endian size, then a 32-byte hash.
const NODE_SIZE: u64 = 40;

impl Core {
    pub(crate) fn new(hc: Hypercore, files: Option<Arc<CoreFiles>>) -> Self {
        Self { hc, files }
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
        Ok(guard(self.hc.append(data)).await??)
    }

    /// Appends blocks in one signed append.
    pub async fn append_batch<A: AsRef<[u8]>, B: AsRef<[A]>>(
        &self,
        batch: B,
    ) -> Result<AppendOutcome, CoreError> {
        Ok(guard(self.hc.append_batch(batch)).await??)
    }

    /// Block `index`, or `None` when it is not stored locally.
    pub async fn get(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
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
