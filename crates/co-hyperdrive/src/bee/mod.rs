//! Hyperbee: an append-only B-tree over a hypercore, byte-compatible with JavaScript Hyperbee.
//!
//! Block 0 is the header; each later block holds one put or delete plus the tree nodes it
//! changed (see `docs/hyperbee-algorithm.md`). The tree at version `v` has its root in block
//! `v - 1`, so every old version stays readable ([`Bee::checkout`]).

mod cache;
mod read;
mod write;

use std::sync::Arc;

use crate::store::Core;
use cohd_format::{BeeHeader, DecodeError};
use tokio::sync::Mutex;

use cache::BlockCache;
use read::Blocks;
pub use read::Range;
pub use write::Batch;

/// Errors of the bee layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeeError {
    /// The underlying hypercore failed.
    #[error("hypercore: {0}")]
    Core(String),
    /// A block is not a Hyperbee node.
    #[error("block {seq} is not a valid Hyperbee node: {source}")]
    Decode {
        /// The block.
        seq: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// Block 0 is not a Hyperbee header.
    #[error("not a Hyperbee: {0}")]
    NotABee(String),
    /// A tree pointer in block `seq` is invalid.
    #[error("corrupted bee: block {seq} {reason}")]
    BadPointer {
        /// The block holding the pointer.
        seq: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The block is not stored locally (a sparse clone that has not fetched it).
    #[error("block {0} is not available locally")]
    NotAvailable(u64),
    /// Writes need the core's secret key.
    #[error("this bee is read-only")]
    NotWritable,
    /// A checkout past the end of the core.
    #[error("version {version} is past the bee's length {length}")]
    BadVersion {
        /// Requested.
        version: u64,
        /// Available.
        length: u64,
    },
    /// A checkout inside one of our batches: its blocks became visible together, and the
    /// tree at a length between them is no version of the bee.
    #[error(
        "version {version} is inside one commit, which took the drive from version {start} \
         to {end}: use version {start} or {end}"
    )]
    InsideBatch {
        /// Requested.
        version: u64,
        /// The version before the batch.
        start: u64,
        /// The version the batch made.
        end: u64,
    },
}

/// An entry read from the bee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeeEntry {
    /// Block that holds this key's current value.
    pub seq: u64,
    /// Encoded key.
    pub key: Vec<u8>,
    /// Encoded value (empty for a valueless put).
    pub value: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) core: Core,
    pub(crate) cache: BlockCache,
    pub(crate) header: BeeHeader,
    pub(crate) write_lock: Arc<Mutex<()>>,
}

/// A Hyperbee, possibly checked out at a fixed version.
#[derive(Debug, Clone)]
pub struct Bee {
    shared: Arc<Shared>,
    /// `None` follows the core's length; `Some(v)` is a read-only snapshot.
    version: Option<u64>,
}

impl Bee {
    /// A bee over `core`. `header` is written as block 0 on the first write to an empty core.
    pub fn new(core: Core, header: BeeHeader) -> Self {
        Self {
            shared: Arc::new(Shared {
                core,
                cache: BlockCache::default(),
                header,
                write_lock: Arc::new(Mutex::new(())),
            }),
            version: None,
        }
    }

    /// Checks that block 0 (if present) is a Hyperbee header and returns it.
    pub async fn read_header(&self) -> Result<Option<BeeHeader>, BeeError> {
        if self.shared.core.info().length == 0 {
            return Ok(None);
        }
        let bytes = self
            .shared
            .core
            .get(0)
            .await
            .map_err(|e| BeeError::Core(e.to_string()))?
            .ok_or(BeeError::NotAvailable(0))?;
        let h = BeeHeader::decode(&bytes).map_err(|e| BeeError::NotABee(e.to_string()))?;
        if h.protocol != cohd_format::bee::PROTOCOL {
            return Err(BeeError::NotABee(format!(
                "header protocol is {:?}",
                h.protocol
            )));
        }
        Ok(Some(h))
    }

    /// The underlying core.
    pub fn core(&self) -> &Core {
        &self.shared.core
    }

    /// The version: the core length (or the checked-out length).
    pub fn version(&self) -> u64 {
        self.version
            .unwrap_or_else(|| self.shared.core.info().length)
    }

    /// Whether this handle may write (writable core and not a checkout).
    pub fn writable(&self) -> bool {
        self.version.is_none() && self.shared.core.info().writable
    }

    /// A read-only view of the bee at `version`: a length a commit left it at (a version
    /// inside one of our batches is refused, see [`BeeError::InsideBatch`]).
    pub fn checkout(&self, version: u64) -> Result<Bee, BeeError> {
        let bee = self.at(version)?;
        if let Some(b) = self.batch_around(version)? {
            return Err(BeeError::InsideBatch {
                version,
                start: b.start,
                end: b.end,
            });
        }
        Ok(bee)
    }

    /// [`checkout`](Self::checkout) at any length up to the core's, inside a batch too: for
    /// lengths the co-drive's records name (a removed writer's limit is what its remover had
    /// received, and every peer must read the log there the same way).
    pub(crate) fn at(&self, version: u64) -> Result<Bee, BeeError> {
        let length = self.shared.core.info().length;
        if version > length {
            return Err(BeeError::BadVersion { version, length });
        }
        Ok(Bee {
            shared: self.shared.clone(),
            version: Some(version),
        })
    }

    /// The version at which block `seq` became visible: the end of the append that wrote it.
    /// Only a bee we write knows where its batches ended; for others every block counts as
    /// its own (`seq + 1`).
    pub fn committed_at(&self, seq: u64) -> Result<u64, BeeError> {
        let v = seq.saturating_add(1);
        Ok(self.batch_around(v)?.map_or(v, |b| b.end))
    }

    /// The batch of ours that `version` lies strictly inside (see `Log::batch_around`).
    fn batch_around(&self, version: u64) -> Result<Option<std::ops::Range<u64>>, BeeError> {
        self.shared
            .core
            .log()
            .batch_around(version)
            .map_err(|e| BeeError::Core(e.to_string()))
    }

    pub(crate) fn blocks(&self) -> Blocks<'_> {
        Blocks {
            core: &self.shared.core,
            cache: &self.shared.cache,
            pending: &[],
            pending_base: u64::MAX,
        }
    }

    /// The value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<BeeEntry>, BeeError> {
        Ok(self
            .blocks()
            .get(self.version(), key)
            .await?
            .map(|(seq, b)| to_entry(seq, &b)))
    }

    /// Entries in `range`, in key order (or reversed).
    pub async fn range(&self, range: &Range) -> Result<Vec<BeeEntry>, BeeError> {
        Ok(self
            .blocks()
            .range(self.version(), range)
            .await?
            .iter()
            .map(|(seq, b)| to_entry(*seq, b))
            .collect())
    }

    /// The first entry of `range` (the last one when reversed).
    pub async fn peek(&self, range: &Range) -> Result<Option<BeeEntry>, BeeError> {
        let mut r = range.clone();
        r.limit = Some(1);
        Ok(self.range(&r).await?.into_iter().next())
    }

    /// The raw block at `seq` as (key, value) — for history walks (`diff`, `log`).
    pub async fn block_at(&self, seq: u64) -> Result<(Vec<u8>, Option<Vec<u8>>), BeeError> {
        let b = self.blocks().block(seq).await?;
        Ok((b.key.clone(), b.value.clone()))
    }

    /// Starts an atomic batch; it holds the bee's write lock until flushed or dropped.
    pub async fn batch(&self) -> Result<Batch, BeeError> {
        if !self.writable() {
            return Err(BeeError::NotWritable);
        }
        Batch::new(self.shared.clone()).await
    }

    /// Puts one key.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, BeeError> {
        let mut b = self.batch().await?;
        let seq = b.put(key, value).await?;
        b.flush().await?;
        Ok(seq)
    }

    /// Puts one key, committed together with `other_blocks` appended to `other` (another core
    /// of the store: a file's last blob blocks).
    pub async fn put_together(
        &self,
        key: &[u8],
        value: &[u8],
        other: &Core,
        other_blocks: Vec<Vec<u8>>,
    ) -> Result<u64, BeeError> {
        let mut b = self.batch().await?;
        let seq = b.put(key, value).await?;
        b.flush_together(other, other_blocks).await?;
        Ok(seq)
    }

    /// Deletes one key; `false` (and nothing appended) if it was absent.
    pub async fn del(&self, key: &[u8]) -> Result<bool, BeeError> {
        let mut b = self.batch().await?;
        let found = b.del(key).await?;
        b.flush().await?;
        Ok(found)
    }
}

fn to_entry(seq: u64, b: &cache::Block) -> BeeEntry {
    BeeEntry {
        seq,
        key: b.key.clone(),
        value: b.value.clone().unwrap_or_default(),
    }
}
