//! [`CoDrive`]: opening a co-drive, the writers' drives it reads, and membership (authorize,
//! deauthorize). Each writer writes only to its own drive.
//!
//! The rest of `CoDrive` is split by concern: `index` computes (and caches) the merged view,
//! `snapshot` reads from it, `batch` writes to the local writer's drive; `records` is the
//! layout of the co-drive's records in each writer's db.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cohd_format::Key;

use super::frontier::Frontier;
use super::index::{Cached, Loads};
use super::records::{self, RecordError};
use super::view::{Clock, MemberOp, View};
use crate::blobs::BlobError;
use crate::drive::{Drive, DriveError};
use crate::store::{Store, StoreError};

/// Errors of co-drive operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoDriveError {
    /// The local writer is not in the writer set.
    #[error("not a writer of this co-drive: ask a writer to run `cohd authorize {0}`")]
    NotAWriter(Key),
    /// The key is not an Ed25519 public key, so no core can have it.
    #[error("{0} is not a valid writer key")]
    BadKey(Key),
    /// The primary cannot be removed.
    #[error("the primary writer cannot be deauthorized")]
    Primary,
    /// A checkout of a past version cannot be written to.
    #[error("this is a checkout of a past version of the co-drive: it is read-only")]
    Checkout,
    /// A version names more of a writer's log than this store holds.
    #[error("the version names {wanted} blocks of writer {writer}, but this store holds {held}")]
    BeyondStore {
        /// The writer.
        writer: Key,
        /// The length the version names.
        wanted: u64,
        /// The length the store holds.
        held: u64,
    },
    /// A drive operation failed.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// The co-drive's index on disk does not read back (it is rebuilt from the logs when a
    /// writer's rows cannot be trusted; this is a row or key that does not decode).
    #[error("the co-drive index is damaged: {0}")]
    IndexDamaged(String),
    /// A record could not be encoded or decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A multi-writer drive: the primary's key names it; `own` is the local writer's drive.
#[derive(Debug)]
pub struct CoDrive {
    pub(super) store: Store,
    pub(super) primary: Key,
    pub(super) own: Drive,
    drives: Mutex<BTreeMap<Key, Drive>>,
    pub(super) cache: Mutex<Option<Cached>>,
    /// What each writer's log holds at a length, as loaded: a log never changes below a length
    /// it reached, so when one writer grows only that writer is read again. At most
    /// [`LOADS_PER_WRITER`] lengths per writer, the least recently used dropped first (so the
    /// latest length and a removed writer's limit both stay).
    pub(super) loads: Mutex<Loads>,
}

/// A writer key is a compat core's Ed25519 key or a manifest core's hash: any 32 bytes but
/// the all-zero key (what an unset key reads as).
pub(super) fn is_valid_key(k: &Key) -> bool {
    k.0 != [0; 32]
}

impl CoDrive {
    /// Creates (or reopens) a co-drive whose primary is this store's drive `own_name`.
    pub async fn create(store: &Store, own_name: &str) -> Result<Self, CoDriveError> {
        let own = Drive::open_own(store, own_name).await?;
        Ok(Self::with(store, own.key(), own))
    }

    /// Follows the co-drive `primary`, with this store's drive `own_name` as the local writer
    /// (a writer once somebody authorizes its key).
    pub async fn open(store: &Store, primary: Key, own_name: &str) -> Result<Self, CoDriveError> {
        let own = Drive::open_own(store, own_name).await?;
        Ok(Self::with(store, primary, own))
    }

    fn with(store: &Store, primary: Key, own: Drive) -> Self {
        Self {
            store: store.clone(),
            primary,
            own,
            drives: Mutex::default(),
            cache: Mutex::default(),
            loads: Mutex::default(),
        }
    }

    /// The co-drive's key (the primary writer's drive key).
    pub fn key(&self) -> Key {
        self.primary
    }

    /// The local writer's key: what another writer authorizes.
    pub fn local_key(&self) -> Key {
        self.own.key()
    }

    /// The local writer's drive.
    pub fn own(&self) -> &Drive {
        &self.own
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The co-drive's version as it stood at `time` (ms since the Unix epoch) by its writers'
    /// own clocks: for each writer, its log up to the last version record written at or before
    /// `time` (writers with none then are left out: the primary too, when nothing was written
    /// yet). Records carry the writer's clock, so this is what the writers said, not a causal
    /// cut; pass the result to [`checkout`](Self::checkout).
    pub async fn version_at_time(&self, time: u64) -> Result<Frontier, CoDriveError> {
        let now = self.version().await?;
        let mut at = BTreeMap::new();
        for (&writer, &length) in now.iter() {
            let Some(d) = self.drive(writer).await? else {
                continue;
            };
            let mut found = 0;
            // Newest first: a writer's records are in the order of its own clock. (Block 0 is
            // the bee's header.)
            for seq in (1..length).rev() {
                let (key, value) = d.db().block_at(seq).await.map_err(DriveError::from)?;
                if super::records::version_path(&key).is_none() {
                    continue;
                }
                let t = value
                    .as_deref()
                    .and_then(|v| super::records::decode_version(v).ok())
                    .and_then(|r| r.2);
                if t.is_some_and(|t| t <= time) {
                    found = seq + 1;
                    break;
                }
            }
            if found > 0 {
                at.insert(writer, found);
            }
        }
        Ok(Frontier::from(at))
    }

    /// A writer's drive; `None` if the store does not hold it (not received yet), it holds no
    /// drive yet, or the key cannot name a core. Damaged storage is an error, not an absence.
    pub(crate) async fn drive(&self, key: Key) -> Result<Option<Drive>, CoDriveError> {
        if key == self.own.key() {
            return Ok(Some(self.own.clone()));
        }
        if let Some(d) = self
            .drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(d.clone()));
        }
        if !is_valid_key(&key) {
            return Ok(None);
        }
        let d = match Drive::open_key(&self.store, key).await {
            Ok(d) => d,
            Err(DriveError::Store(StoreError::UnknownCore(_)) | DriveError::NotADrive(_)) => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        self.drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, d.clone());
        Ok(Some(d))
    }
    async fn writable_view(&self) -> Result<View, CoDriveError> {
        let v = self.view().await?;
        if !v.writers.contains_key(&self.own.key()) {
            return Err(CoDriveError::NotAWriter(self.own.key()));
        }
        Ok(v)
    }
    async fn member(&self, op: MemberOp) -> Result<(), CoDriveError> {
        let (MemberOp::Authorize(target) | MemberOp::Deauthorize(target)) = op;
        if !is_valid_key(&target) {
            return Err(CoDriveError::BadKey(target));
        }
        let v = self.writable_view().await?;
        if matches!(op, MemberOp::Deauthorize(k) if k == self.primary) {
            return Err(CoDriveError::Primary);
        }
        let mut frontier = Clock::new();
        for k in v.writers.keys().chain(v.removed.keys()) {
            if let Some(d) = self.drive(*k).await? {
                // What we saw of the writer: a length it committed (a batch's end) when we
                // know one within the blocks held, else the blocks held (never more).
                let core = d.db().core();
                let held = core.info().contiguous_length;
                let committed = core.consistent_length();
                frontier.insert(*k, if committed <= held { committed } else { held });
            }
        }
        let n = self
            .own
            .db()
            .range(&records::members())
            .await
            .map_err(DriveError::from)?
            .len() as u64;
        let mut b = self.own.batch().await?;
        frontier.insert(self.own.key(), b.version());
        b.put_raw(
            &records::member_key(n),
            &records::encode_member(op, &frontier),
        )
        .await?;
        b.flush().await?;
        Ok(())
    }

    /// Makes `key` a writer.
    pub async fn authorize(&self, key: Key) -> Result<(), CoDriveError> {
        self.member(MemberOp::Authorize(key)).await
    }

    /// Streams bytes `start..start+len` of the file `e` names (a resolved entry: its winning
    /// writer's blob) to `sink`; returns the bytes sent. A symlink whose target is not a file
    /// is an error.
    pub(crate) async fn read_entry(
        &self,
        e: &super::CoEntry,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, CoDriveError> {
        let blob = e
            .entry
            .blob
            .ok_or_else(|| DriveError::Symlink(format!("{} is a dangling symlink", e.path)))?;
        self.read_content(e.writer, &blob, start, len, sink).await
    }

    /// Whether every block of `e`'s content is stored locally (see [`Snapshot::is_local`]).
    pub(crate) async fn entry_is_local(&self, e: &super::CoEntry) -> Result<bool, CoDriveError> {
        let Some(blob) = e.entry.blob else {
            return Ok(false);
        };
        let Some(d) = self.drive(e.writer).await? else {
            return Ok(false);
        };
        let core = d.blobs().core();
        // Stops at the first block not held, so a bogus huge blob id costs at most the core's
        // length in checks.
        Ok((0..blob.block_length).all(|i| {
            blob.block_offset
                .checked_add(i)
                .is_some_and(|seq| core.has(seq))
        }))
    }

    /// Removes writer `key`; its writes we have seen stay, later ones are ignored everywhere.
    pub async fn deauthorize(&self, key: Key) -> Result<(), CoDriveError> {
        self.member(MemberOp::Deauthorize(key)).await
    }
    /// Streams bytes `start..start+len` of the content `blob` in writer `writer`'s blobs core
    /// to `sink`; returns the bytes sent. This reads any version of a path, a conflict's
    /// losing ones included (a [`PathVersion`](super::PathVersion)'s entry names its blob), and needs no view: the
    /// content of a version never changes. Missing blocks are fetched from connected peers, as
    /// [`Snapshot::read_range`](super::Snapshot::read_range) does.
    pub async fn read_content(
        &self,
        writer: Key,
        blob: &cohd_format::BlobId,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, CoDriveError> {
        let d = self
            .drive(writer)
            .await?
            .ok_or(DriveError::Store(StoreError::UnknownCore(writer)))?;
        Ok(d.blobs()
            .read_range(blob, start, len, sink)
            .await
            .map_err(DriveError::from)?)
    }
}
