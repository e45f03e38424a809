//! [`CoDrive`]: the merged view over the writers' drives a store holds, and writes that carry
//! the co-drive's records. Each writer writes only to its own drive.
//!
//! Reading: [`CoDrive::snapshot`] computes the view once (it loads every writer's index) and the
//! [`Snapshot`] answers any number of lookups, listings and content reads from it. Writing:
//! [`Snapshot::batch`] (or [`CoDrive::batch`]) starts a [`CoBatch`], one atomic append to the
//! local writer's drive in which every file entry lands together with its version record;
//! [`CoBatch::writer`] streams a file's content, so a large file never sits in memory whole.
//!
//! Versions: every view is computed from a [`Frontier`] (each writer's db length);
//! [`CoDrive::version`] gives the current one, [`CoDrive::checkout`] the read-only view at any
//! earlier one, and [`CoDrive::watch`] reports each new one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cohd_format::{path, sub, Entry, Key};

use super::frontier::Frontier;
use super::records::{self, RecordError, SUB};
use super::view::{self, Clock, MemberOp, MemberRecord, PathVersion, Resolved, View, WriterData};
use crate::bee::Range;
use crate::blobs::{BlobError, BlobWriter};
use crate::drive::{Downloaded, Drive, DriveBatch, DriveError, PutOptions};
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
    /// A record could not be encoded or decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Symlink hops followed before giving up (as Hyperdrive does).
const MAX_LINK_HOPS: usize = 16;

/// A multi-writer drive: the primary's key names it; `own` is the local writer's drive.
#[derive(Debug)]
pub struct CoDrive {
    store: Store,
    primary: Key,
    own: Drive,
    drives: Mutex<BTreeMap<Key, Drive>>,
    cache: Mutex<Option<Cached>>,
    /// What each writer's log holds at a length, as loaded: a log never changes below a length
    /// it reached, so when one writer grows only that writer is read again. At most
    /// [`LOADS_PER_WRITER`] lengths per writer, the least recently used dropped first (so the
    /// latest length and a removed writer's limit both stay).
    loads: Mutex<Loads>,
}

/// Loaded writer logs by (writer, length), with when each was last used.
#[derive(Debug, Default)]
struct Loads {
    tick: u64,
    by_length: BTreeMap<(Key, u64), (Arc<WriterData>, u64)>,
}

/// Every writer's data, as merged into a view.
type Merged = BTreeMap<Key, Arc<WriterData>>;

/// Loaded lengths kept per writer.
const LOADS_PER_WRITER: usize = 2;

/// The last computed view, and the writers the store did not hold when it was computed. Blocks
/// never change once written, so while every writer's length is the frontier's and those
/// writers are still not held, the view is the same and reads need not reload every writer.
#[derive(Debug)]
struct Cached {
    computed: Computed,
    unheld: BTreeSet<Key>,
    /// The writers' data the view was merged from (to merge only what changed next time).
    data: Merged,
}

/// A merged view and what it was computed from.
#[derive(Debug, Clone)]
pub(super) struct Computed {
    pub(super) view: Arc<View>,
    /// Writers (current or removed) the view names but has no data of.
    pub(super) missing: BTreeSet<Key>,
    /// The length of every writer's log the view was computed from; writers the store holds
    /// but that have nothing yet are named with 0.
    pub(super) frontier: Frontier,
}

fn cohd_key(k: &str) -> Vec<u8> {
    sub::encode(SUB, k.as_bytes())
}

/// A writer key is a compat core's Ed25519 key or a manifest core's hash: any 32 bytes but
/// the all-zero key (what an unset key reads as).
fn is_valid_key(k: &Key) -> bool {
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

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// A writer's drive; `None` if the store does not hold it (not received yet), it holds no
    /// drive yet, or the key cannot name a core. Damaged storage is an error, not an absence.
    pub(super) async fn drive(&self, key: Key) -> Result<Option<Drive>, CoDriveError> {
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

    /// [`load`](Self::load) through the cache of loaded lengths.
    async fn load_cached(&self, d: &Drive) -> Result<Arc<WriterData>, CoDriveError> {
        let at = (d.key(), d.version());
        {
            let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            loads.tick += 1;
            let tick = loads.tick;
            if let Some((hit, used)) = loads.by_length.get_mut(&at) {
                *used = tick;
                return Ok(hit.clone());
            }
        }
        let data = Arc::new(self.load(d).await?);
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.tick += 1;
        let tick = loads.tick;
        loads.by_length.insert(at, (data.clone(), tick));
        loop {
            let mine: Vec<(u64, u64)> = loads
                .by_length
                .range((at.0, 0)..=(at.0, u64::MAX))
                .map(|((_, l), (_, used))| (*used, *l))
                .collect();
            if mine.len() <= LOADS_PER_WRITER {
                break;
            }
            if let Some((_, oldest)) = mine.into_iter().min() {
                loads.by_length.remove(&(at.0, oldest));
            }
        }
        Ok(data)
    }

    /// Reads one writer's records and files from `d` (a checkout, so that every read sees the
    /// same length).
    async fn load(&self, d: &Drive) -> Result<WriterData, CoDriveError> {
        let writer = d.key();
        let mut data = WriterData::default();
        let members = Range::exclusive(cohd_key("m/"), cohd_key("m0"));
        for e in d.db().range(&members).await.map_err(DriveError::from)? {
            // A malformed record is ignored (not trusted, not fatal): other peers do the same.
            if let Ok((op, frontier)) = records::decode_member(&e.value) {
                data.members.push(MemberRecord {
                    seq: e.seq,
                    op,
                    frontier,
                });
            }
        }
        data.members.sort_by_key(|m| m.seq);
        let mut clocks: BTreeMap<String, (u64, Clock, bool)> = BTreeMap::new();
        let versions = Range::exclusive(cohd_key("v/"), cohd_key("v0"));
        for e in d.db().range(&versions).await.map_err(DriveError::from)? {
            let Some(p) = sub::decode(SUB, &e.key).and_then(|k| std::str::from_utf8(&k[1..]).ok())
            else {
                continue;
            };
            // Only normalized paths: a record for `/a/../b` would show a path no file can have.
            if p != path::resolve(p) {
                continue;
            }
            if let Ok((clock, deleted)) = records::decode_version(&e.value) {
                clocks.insert(p.to_string(), (e.seq, clock, deleted));
            }
        }
        // Another writer's malformed entries are ignored, as every peer ignores them.
        let files: BTreeMap<String, _> = d
            .list_valid("/")
            .await?
            .0
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        for (p, (seq, clock, deleted)) in &clocks {
            let file = files.get(p);
            if file.is_some_and(|f| f.seq > *seq) {
                continue; // rewritten by a plain drive write after the record: handled below
            }
            let entry = match (deleted, file) {
                (true, _) => None,
                (false, Some(f)) => Some(f.entry.clone()),
                (false, None) => continue, // a record without its file: malformed, ignored
            };
            data.versions
                .entry(p.clone())
                .or_default()
                .push(PathVersion {
                    writer,
                    seq: *seq,
                    clock: clock.clone(),
                    entry,
                });
        }
        // Files written without a record (plain Hyperdrive writes, or JavaScript peers): a version
        // that has seen nothing but its own writer's log.
        for (p, f) in files {
            if clocks.get(&p).is_none_or(|(seq, _, _)| f.seq > *seq) {
                let clock: Clock = [(writer, f.seq)].into_iter().collect();
                data.versions.insert(
                    p,
                    vec![PathVersion {
                        writer,
                        seq: f.seq,
                        clock,
                        entry: Some(f.entry),
                    }],
                );
            }
        }
        Ok(data)
    }

    /// Loads every writer the store holds that the records mention and computes the view (or
    /// returns the cached one if nothing changed since).
    pub(super) async fn compute(&self) -> Result<Computed, CoDriveError> {
        if let Some(hit) = self.cached().await? {
            return Ok(hit);
        }
        let previous = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|c| (c.computed.view, c.data));
        let (computed, unheld, data) = self.compute_at(None, previous).await?;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
            computed: computed.clone(),
            unheld,
            data,
        });
        Ok(computed)
    }

    /// Computes the view from every writer's log as the store holds it now (`at` is `None`), or
    /// at the lengths `at` names (a writer it does not name is empty). Also returns the writers
    /// the records mention that the store does not hold (`None` only), and the data merged.
    /// `previous`: an earlier view and its data, so that only what changed is merged again.
    async fn compute_at(
        &self,
        at: Option<&Frontier>,
        previous: Option<(Arc<View>, Merged)>,
    ) -> Result<(Computed, BTreeSet<Key>, Merged), CoDriveError> {
        let mut frontier = Frontier::default();
        let mut drives: BTreeMap<Key, Drive> = BTreeMap::new();
        let mut data: BTreeMap<Key, Arc<WriterData>> = BTreeMap::new();
        let mut absent: BTreeSet<Key> = BTreeSet::new();
        let mut todo = vec![self.primary, self.own.key()];
        while let Some(k) = todo.pop() {
            if data.contains_key(&k) || absent.contains(&k) {
                continue;
            }
            let found = match at {
                None => self.drive(k).await?.map(|d| (readable(&d), d)),
                Some(f) => match f.get(&k) {
                    0 => None,
                    wanted => match self.drive(k).await? {
                        Some(d) if readable(&d) >= wanted => Some((wanted, d)),
                        d => {
                            return Err(CoDriveError::BeyondStore {
                                writer: k,
                                wanted,
                                held: d.map_or(0, |d| readable(&d)),
                            })
                        }
                    },
                },
            };
            let Some((len, d)) = found else {
                // Held but empty (or named with 0): nothing to show, yet not missing.
                let held = match at {
                    None => self.store.has_core(&k),
                    Some(f) => f.0.contains_key(&k),
                };
                if held {
                    frontier.0.insert(k, 0);
                }
                absent.insert(k);
                continue;
            };
            // Pinned at `len`: a writer growing meanwhile does not change what is read.
            let d = d.checkout(len)?;
            frontier.0.insert(k, len);
            data.insert(k, self.load_cached(&d).await?);
            drives.insert(k, d);
            todo.extend(
                view::mentioned(&data)
                    .into_iter()
                    .filter(|m| !data.contains_key(m) && !absent.contains(m)),
            );
        }
        // Removed writers count only up to their limit: their files are read again from a
        // checkout there (the records stay whole: they decided the limit, and the writer set
        // depends on the records alone).
        let (_, removed) = view::writers(self.primary, &data);
        for (k, limit) in &removed {
            if let (Some(d), Some(w)) = (drives.get(k), data.get_mut(k)) {
                if *limit < d.version() {
                    let limited = self.load_cached(&d.checkout(*limit)?).await?;
                    *w = Arc::new(WriterData {
                        members: w.members.clone(),
                        versions: limited.versions.clone(),
                    });
                }
            }
        }
        let v = match previous {
            Some((old, old_data)) => {
                // Without other holders (snapshots), the old view is reused in place.
                let old = Arc::try_unwrap(old).unwrap_or_else(|shared| View::clone(&shared));
                view::update(self.primary, old, &old_data, &data)
            }
            None => view::view(self.primary, &data),
        };
        // Of the writers that could not be loaded, those the store does not hold at all (an
        // empty drive is held: it just has nothing to show yet).
        let mut missing = absent.clone();
        missing.retain(|k| {
            (v.writers.contains_key(k) || v.removed.contains_key(k)) && !frontier.0.contains_key(k)
        });
        absent.retain(|k| !frontier.0.contains_key(k));
        let computed = Computed {
            view: Arc::new(v),
            missing,
            frontier,
        };
        Ok((computed, absent, data))
    }

    /// The cached view, if no writer it was computed from has changed and no writer it lacked
    /// has appeared in the store.
    async fn cached(&self) -> Result<Option<Computed>, CoDriveError> {
        let (frontier, unheld) = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match c.as_ref() {
                None => return Ok(None),
                Some(c) => (c.computed.frontier.clone(), c.unheld.clone()),
            }
        };
        for (k, len) in frontier.iter() {
            let now = self.drive(*k).await?.map_or(0, |d| readable(&d));
            if now != *len {
                return Ok(None);
            }
        }
        if unheld.iter().any(|k| self.store.has_core(k)) {
            return Ok(None);
        }
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(c.as_ref()
            .filter(|c| c.computed.frontier == frontier)
            .map(|c| c.computed.clone()))
    }

    /// Loads every writer the store holds that the records mention, and computes the view.
    pub async fn view(&self) -> Result<View, CoDriveError> {
        Ok(View::clone(&self.compute().await?.view))
    }

    /// The current version: the length of every writer's db core (current and removed writers,
    /// and any other the records mention that the store holds) the view is computed from. Give
    /// it to [`CoDrive::checkout`] to see this view again later.
    pub async fn version(&self) -> Result<Frontier, CoDriveError> {
        Ok(self.compute().await?.frontier)
    }

    /// Computes the view once, for any number of reads (and writes) from it.
    pub async fn snapshot(&self) -> Result<Snapshot<'_>, CoDriveError> {
        let c = self.compute().await?;
        Ok(Snapshot {
            co: self,
            view: c.view,
            missing: c.missing,
            frontier: c.frontier,
            checkout: false,
        })
    }

    /// The read-only view at version `at` (from [`CoDrive::version`], [`Snapshot::version`] or
    /// a watch): the merge of every writer's drive checked out at the length `at` names (a
    /// writer it does not name counts as empty). It is the view the co-drive showed at that
    /// version. Fails with [`CoDriveError::BeyondStore`] if `at` names more of a writer than the
    /// store holds; its [`Snapshot::batch`] fails with [`CoDriveError::Checkout`].
    pub async fn checkout(&self, at: &Frontier) -> Result<Snapshot<'_>, CoDriveError> {
        let current = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|c| c.computed.frontier == *at)
            .map(|c| c.computed.clone());
        let c = match current {
            Some(c) => c,
            None => self.compute_at(Some(at), None).await?.0,
        };
        Ok(Snapshot {
            co: self,
            view: c.view,
            missing: c.missing,
            frontier: c.frontier,
            checkout: true,
        })
    }

    /// Starts an atomic batch of writes on a freshly computed view; fails with
    /// [`CoDriveError::NotAWriter`] unless the local writer is a writer.
    pub async fn batch(&self) -> Result<CoBatch<'_>, CoDriveError> {
        let view = self.compute().await?.view;
        CoBatch::new(self, ViewSlot::Owned(view)).await
    }

    /// Starts a streaming write of one file; [`CoFileWriter::finish`] writes its entry and
    /// version record in one atomic append. The local writer's drive stays locked for writing
    /// until the writer finishes or is dropped.
    pub async fn writer(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> Result<CoFileWriter<'_, '_>, CoDriveError> {
        let path = path::normalize(name).map_err(DriveError::from)?;
        let batch = self.batch().await?;
        batch.prepare(&path).await?;
        let blob = self.own.blobs().writer();
        Ok(CoFileWriter {
            batch: BatchSlot::Owned(Box::new(batch)),
            path,
            opts,
            blob,
        })
    }

    async fn writable_view(&self) -> Result<View, CoDriveError> {
        let v = self.view().await?;
        if !v.writers.contains_key(&self.own.key()) {
            return Err(CoDriveError::NotAWriter(self.own.key()));
        }
        Ok(v)
    }

    /// Writes a file (its version supersedes every version of the path we can see).
    pub async fn put(&self, name: &str, data: &[u8]) -> Result<(), CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        b.put(&p, data, PutOptions::default()).await?;
        b.flush().await?;
        Ok(())
    }

    /// Writes a symlink `name` -> `target` (a version of `name` like a file).
    pub async fn symlink(&self, name: &str, target: &str) -> Result<(), CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        b.symlink(&p, target).await?;
        b.flush().await?;
        Ok(())
    }

    /// Deletes a path (hiding every version we can see); `false` if nothing was visible.
    pub async fn del(&self, name: &str) -> Result<bool, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        let found = b.del(&p).await?;
        if found {
            b.flush().await?;
        }
        Ok(found)
    }

    /// Deletes everything visible under `folder`.
    pub async fn del_folder(&self, folder: &str) -> Result<usize, CoDriveError> {
        let mut b = self.batch().await?;
        let n = b.del_folder(folder).await?;
        if n > 0 {
            b.flush().await?;
        }
        Ok(n)
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
                frontier.insert(*k, d.db().core().info().contiguous_length);
            }
        }
        let members = Range::exclusive(cohd_key("m/"), cohd_key("m0"));
        let n = self
            .own
            .db()
            .range(&members)
            .await
            .map_err(DriveError::from)?
            .len() as u64;
        let mut b = self.own.batch().await?;
        frontier.insert(self.own.key(), b.version());
        b.put_raw(
            &cohd_key(&records::member_key(n)),
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

    /// Removes writer `key`; its writes we have seen stay, later ones are ignored everywhere.
    pub async fn deauthorize(&self, key: Key) -> Result<(), CoDriveError> {
        self.member(MemberOp::Deauthorize(key)).await
    }

    /// The merged content of `name` (the winning version, symlinks followed), `None` if absent
    /// or deleted.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoDriveError> {
        path::normalize(name).map_err(DriveError::from)?;
        self.snapshot().await?.get(name).await
    }

    /// Fetches the content of every visible file under `path` in the merged view (see
    /// [`Snapshot::download`]).
    pub async fn download(&self, path: &str) -> Result<Downloaded, CoDriveError> {
        self.snapshot().await?.download(path).await
    }

    /// [`download`](Self::download) with `progress(done, total)` in blocks, as they arrive.
    pub async fn download_with(
        &self,
        path: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, CoDriveError> {
        self.snapshot().await?.download_with(path, progress).await
    }

    /// Drops the local copies of other writers' content under `path` (see
    /// [`Snapshot::clear`]).
    pub async fn clear(&self, path: &str) -> Result<Cleared, CoDriveError> {
        self.snapshot().await?.clear(path).await
    }

    /// Streams bytes `start..start+len` of the content `blob` in writer `writer`'s blobs core
    /// to `sink`; returns the bytes sent. This reads any version of a path, a conflict's
    /// losing ones included (a [`PathVersion`]'s entry names its blob), and needs no view: the
    /// content of a version never changes. Missing blocks are fetched from connected peers, as
    /// [`Snapshot::read_range`] does.
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

/// What [`Snapshot::clear`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Versions (of other writers) whose content was cleared.
    pub files: usize,
    /// Blocks that were held and are dropped now.
    pub blocks: u64,
    /// Versions the local writer wrote, kept.
    pub kept_own: usize,
}

/// A visible file (or symlink) of the merged view: the winning version of its path.
#[derive(Debug, Clone, PartialEq)]
pub struct CoEntry {
    /// Normalized path.
    pub path: String,
    /// The writer whose version wins (its drive holds the entry and the content).
    pub writer: Key,
    /// Seq of the winning version in the writer's db core.
    pub seq: u64,
    /// The Hyperdrive entry.
    pub entry: Entry,
    /// Every concurrent version of the path (the winner included) when there is more than one;
    /// empty otherwise. A version with no entry is a concurrent delete.
    pub conflicts: Vec<PathVersion>,
}

impl CoEntry {
    fn from_resolved(path: &str, r: &Resolved) -> Option<Self> {
        Some(Self {
            path: path.to_string(),
            writer: r.winner.writer,
            seq: r.winner.seq,
            entry: r.winner.entry.clone()?,
            conflicts: r.conflicts.clone(),
        })
    }

    fn is_symlink(&self) -> bool {
        self.entry.linkname.is_some() && self.entry.blob.is_none()
    }
}

/// The merged view as computed once by [`CoDrive::snapshot`] (or, read-only, at a past version
/// by [`CoDrive::checkout`]): lookups and listings answer from memory, content reads go to the
/// winning writer's blobs. It sees the local writer's writes made through its own
/// [`Snapshot::batch`] once they are flushed, and nothing written after it was taken by any other
/// handle.
#[derive(Debug)]
pub struct Snapshot<'a> {
    co: &'a CoDrive,
    view: Arc<View>,
    missing: BTreeSet<Key>,
    frontier: Frontier,
    checkout: bool,
}

impl<'a> Snapshot<'a> {
    /// The merged view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether the local writer is in the writer set (may write, unless this is a checkout).
    pub fn is_writer(&self) -> bool {
        self.view.writers.contains_key(&self.co.own.key())
    }

    /// The version this view was computed from (for [`CoDrive::checkout`]). Flushing a batch of
    /// this snapshot moves the local writer's length to the one the batch made.
    pub fn version(&self) -> &Frontier {
        &self.frontier
    }

    /// Whether this is a read-only checkout from [`CoDrive::checkout`].
    pub fn is_checkout(&self) -> bool {
        self.checkout
    }

    /// Writers (current or removed, the primary included) whose drives the store does not hold:
    /// their files are not in this view yet.
    pub fn missing(&self) -> &BTreeSet<Key> {
        &self.missing
    }

    /// The visible entry at `name`, symlinks not followed; `None` if absent or deleted.
    pub fn entry(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        Ok(self
            .view
            .paths
            .get(&p)
            .and_then(|r| CoEntry::from_resolved(&p, r)))
    }

    /// The visible entry at `name` with symlinks followed through the merged view (up to 16
    /// hops; a relative target resolves against the link's path, as Hyperdrive does).
    pub fn stat(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        let mut cur = path::normalize(name).map_err(DriveError::from)?;
        for _ in 0..MAX_LINK_HOPS {
            let Some(e) = self.entry(&cur)? else {
                return Ok(None);
            };
            if !e.is_symlink() {
                return Ok(Some(e));
            }
            let link = e.entry.linkname.unwrap_or_default();
            let target = if link.starts_with('/') {
                link
            } else {
                format!("{cur}/{link}")
            };
            cur = path::normalize(&target).map_err(DriveError::from)?;
        }
        Err(DriveError::Symlink(format!("too many levels of symbolic links: {name}")).into())
    }

    /// Every visible entry under `folder`, recursively, sorted by path.
    pub fn list(&self, folder: &str) -> Vec<CoEntry> {
        let f = path::folder(folder);
        self.view
            .paths
            .range(format!("{f}/")..format!("{f}0"))
            .filter_map(|(p, r)| CoEntry::from_resolved(p, r))
            .collect()
    }

    /// Names directly in `folder`: its visible files and the subfolders that hold visible files,
    /// in path order (like [`Drive::readdir`]).
    pub fn readdir(&self, folder: &str) -> Vec<String> {
        let f = path::folder(folder);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (p, r) in self.view.paths.range(format!("{f}/")..format!("{f}0")) {
            if r.winner.entry.is_none() {
                continue;
            }
            let rest = &p[f.len() + 1..];
            let name = rest.split('/').next().unwrap_or(rest);
            if seen.insert(name) {
                out.push(name.to_string());
            }
        }
        out
    }

    /// Streams bytes `start..start+len` of the file at `name` (symlinks followed) from the
    /// winning writer's blobs to `sink`; returns the bytes sent.
    pub async fn read_range(
        &self,
        name: &str,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, CoDriveError> {
        let e = self
            .stat(name)?
            .ok_or_else(|| DriveError::NotFound(name.to_string()))?;
        let blob = e
            .entry
            .blob
            .ok_or_else(|| DriveError::Symlink(format!("{} is a dangling symlink", e.path)))?;
        let d = self
            .co
            .drive(e.writer)
            .await?
            .ok_or(DriveError::Store(StoreError::UnknownCore(e.writer)))?;
        Ok(d.blobs()
            .read_range(&blob, start, len, sink)
            .await
            .map_err(DriveError::from)?)
    }

    /// Whether every block of the file at `name` (symlinks followed) is stored locally, so that
    /// reading it needs no peer (a read of a missing block waits for connected peers). `false`
    /// if there is no such file, or its writer's drive is not held.
    pub async fn is_local(&self, name: &str) -> Result<bool, CoDriveError> {
        let Some(e) = self.stat(name)? else {
            return Ok(false);
        };
        let Some(blob) = e.entry.blob else {
            return Ok(false);
        };
        let Some(d) = self.co.drive(e.writer).await? else {
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

    /// Fetches from connected peers the content of every visible file under `path` (a folder,
    /// recursively, or one file; `/` for everything), every concurrent version of a conflicted
    /// path included, so that it all reads without the network. Fails with
    /// [`BlobError::Unavailable`] (inside [`DriveError::Blob`]) when no connected peer
    /// delivers a block.
    pub async fn download(&self, path: &str) -> Result<Downloaded, CoDriveError> {
        self.download_with(path, &mut |_, _| {}).await
    }

    /// [`download`](Self::download), calling `progress(done, total)` in blocks as they arrive
    /// (`total`: the blocks that were missing, over every writer's blobs).
    pub async fn download_with(
        &self,
        path: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, CoDriveError> {
        let mut versions: Vec<(Key, cohd_format::BlobId)> = Vec::new();
        let mut files = 0;
        let mut add = |e: CoEntry| {
            let winner = e.entry.blob.map(|b| (e.writer, b));
            files += usize::from(winner.is_some());
            let others = e
                .conflicts
                .into_iter()
                .filter_map(|v| Some((v.writer, v.entry?.blob?)));
            versions.extend(winner.into_iter().chain(others));
        };
        self.list(path).into_iter().for_each(&mut add);
        if let Some(p) = path::file_or_root(path).map_err(DriveError::from)? {
            self.entry(&p)?.into_iter().for_each(&mut add);
        }
        let mut by_writer: BTreeMap<Key, Vec<cohd_format::BlobId>> = BTreeMap::new();
        for (w, b) in versions {
            by_writer.entry(w).or_default().push(b);
        }
        let mut drives = Vec::with_capacity(by_writer.len());
        for (w, ids) in by_writer {
            let d = self
                .co
                .drive(w)
                .await?
                .ok_or(DriveError::Store(StoreError::UnknownCore(w)))?;
            drives.push((d, crate::blobs::block_ranges(&ids)));
        }
        let plan: Vec<_> = drives.iter().map(|(d, r)| (d.blobs(), r.clone())).collect();
        let blocks = crate::blobs::download_plan(&plan, progress)
            .await
            .map_err(DriveError::from)?;
        Ok(Downloaded { files, blocks })
    }

    /// Drops the local copies of the content of every visible file under `path` (as
    /// [`download`](Self::download) names them, concurrent versions included) that other
    /// writers wrote: it is fetched again when read with a peer connected. The local writer's
    /// own content is kept (no peer may hold it).
    pub async fn clear(&self, path: &str) -> Result<Cleared, CoDriveError> {
        let mut versions: Vec<(Key, cohd_format::BlobId)> = Vec::new();
        let mut add = |e: CoEntry| {
            let winner = e.entry.blob.map(|b| (e.writer, b));
            let others = e
                .conflicts
                .into_iter()
                .filter_map(|v| Some((v.writer, v.entry?.blob?)));
            versions.extend(winner.into_iter().chain(others));
        };
        self.list(path).into_iter().for_each(&mut add);
        if let Some(p) = path::file_or_root(path).map_err(DriveError::from)? {
            self.entry(&p)?.into_iter().for_each(&mut add);
        }
        let mut out = Cleared::default();
        let mut by_writer: BTreeMap<Key, Vec<cohd_format::BlobId>> = BTreeMap::new();
        for (w, b) in versions {
            if w == self.co.local_key() {
                out.kept_own += 1;
            } else {
                by_writer.entry(w).or_default().push(b);
            }
        }
        for (w, ids) in by_writer {
            let Some(d) = self.co.drive(w).await? else {
                continue;
            };
            out.files += ids.len();
            out.blocks += d.blobs().clear(&ids).await.map_err(DriveError::from)?;
        }
        Ok(out)
    }

    /// The whole content of the file at `name` (symlinks followed); `None` if absent.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoDriveError> {
        if self.stat(name)?.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.read_range(name, 0, u64::MAX, |c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .await?;
        Ok(Some(out))
    }

    /// Starts an atomic batch of writes whose versions supersede what this snapshot shows; fails
    /// with [`CoDriveError::NotAWriter`] unless the local writer is a writer. Once flushed, the
    /// snapshot shows the batch's writes. A checkout fails with [`CoDriveError::Checkout`].
    pub async fn batch(&mut self) -> Result<CoBatch<'_>, CoDriveError> {
        if self.checkout {
            return Err(CoDriveError::Checkout);
        }
        CoBatch::new(self.co, ViewSlot::Lent(&mut self.view, &mut self.frontier)).await
    }
}

#[derive(Debug)]
enum ViewSlot<'a> {
    Owned(Arc<View>),
    /// A snapshot's view and version.
    Lent(&'a mut Arc<View>, &'a mut Frontier),
}

impl ViewSlot<'_> {
    fn get(&self) -> &View {
        match self {
            Self::Owned(v) => v,
            Self::Lent(v, _) => v,
        }
    }

    /// Copy-on-write: the cached view shared with other snapshots is not changed.
    fn get_mut(&mut self) -> &mut View {
        match self {
            Self::Owned(v) => Arc::make_mut(v),
            Self::Lent(v, _) => Arc::make_mut(v),
        }
    }
}

/// Writes to the co-drive that land in the local writer's drive as one atomic append: each file
/// entry (or deletion) together with its version record. It holds that drive's write lock until
/// flushed or dropped; dropped unflushed, it writes no entries (streamed content stays unused in
/// the blobs core).
#[derive(Debug)]
pub struct CoBatch<'a> {
    co: &'a CoDrive,
    view: ViewSlot<'a>,
    batch: DriveBatch<'a>,
    /// The versions written in this batch, shown by the view once flushed.
    written: BTreeMap<String, PathVersion>,
}

impl<'a> CoBatch<'a> {
    async fn new(co: &'a CoDrive, view: ViewSlot<'a>) -> Result<Self, CoDriveError> {
        if !view.get().writers.contains_key(&co.own.key()) {
            return Err(CoDriveError::NotAWriter(co.own.key()));
        }
        Ok(Self {
            co,
            view,
            batch: co.own.batch().await?,
            written: BTreeMap::new(),
        })
    }

    /// The version of `p` this batch supersedes: its own latest, else the view's winner.
    fn current(&self, p: &str) -> Option<&PathVersion> {
        self.written
            .get(p)
            .or_else(|| self.view.get().paths.get(p).map(|r| &r.winner))
    }

    /// Every version of `p` a new version must supersede (all concurrent ones).
    fn seen(&self, p: &str) -> Vec<PathVersion> {
        if let Some(v) = self.written.get(p) {
            return vec![v.clone()];
        }
        match self.view.get().paths.get(p) {
            Some(r) if r.conflicts.is_empty() => vec![r.winner.clone()],
            Some(r) => r.conflicts.clone(),
            None => Vec::new(),
        }
    }

    /// Walks the index to both keys a write of `p` touches before any content is written: on a
    /// damaged db the write fails here, not after appending a blob no entry will point at.
    async fn prepare(&self, p: &str) -> Result<(), CoDriveError> {
        self.co.own.entry(p).await?;
        self.co
            .own
            .db()
            .get(&cohd_key(&records::version_key(p)))
            .await
            .map_err(DriveError::from)?;
        Ok(())
    }

    /// Adds a version of normalized path `p` (`None`: a delete) with its version record.
    async fn add(&mut self, p: String, entry: Option<Entry>) -> Result<PathVersion, CoDriveError> {
        match &entry {
            Some(e) => {
                self.batch.put_entry(p.clone(), e.clone()).await?;
            }
            None => {
                self.batch.del(&p).await?;
            }
        }
        let seq = self.batch.version();
        let clock = view::next_clock(self.co.own.key(), seq, self.seen(&p).iter());
        self.batch
            .put_raw(
                &cohd_key(&records::version_key(&p)),
                &records::encode_version(&clock, entry.is_none()),
            )
            .await?;
        let v = PathVersion {
            writer: self.co.own.key(),
            seq,
            clock,
            entry,
        };
        self.written.insert(p, v.clone());
        Ok(v)
    }

    /// Writes a whole file (stream large ones with [`CoBatch::writer`]).
    pub async fn put(
        &mut self,
        name: &str,
        data: &[u8],
        opts: PutOptions,
    ) -> Result<PathVersion, CoDriveError> {
        let mut w = self.writer(name, opts).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Starts a streaming write of the file `name`; its entry joins this batch on
    /// [`CoFileWriter::finish`].
    pub async fn writer(
        &mut self,
        name: &str,
        opts: PutOptions,
    ) -> Result<CoFileWriter<'_, 'a>, CoDriveError> {
        let path = path::normalize(name).map_err(DriveError::from)?;
        self.prepare(&path).await?;
        let co: &'a CoDrive = self.co;
        Ok(CoFileWriter {
            batch: BatchSlot::Lent(self),
            path,
            opts,
            blob: co.own.blobs().writer(),
        })
    }

    /// Writes a symlink `name` -> `target`.
    pub async fn symlink(&mut self, name: &str, target: &str) -> Result<PathVersion, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        self.add(p, Some(Entry::symlink(target.to_string()))).await
    }

    /// Deletes `name` (hiding every version of it we can see); `false` if nothing was visible.
    pub async fn del(&mut self, name: &str) -> Result<bool, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        if self.current(&p).is_none_or(|v| v.entry.is_none()) {
            return Ok(false);
        }
        self.add(p, None).await?;
        Ok(true)
    }

    /// Deletes every visible path under `folder` (and `folder` itself if it is a file); returns
    /// how many.
    pub async fn del_folder(&mut self, folder: &str) -> Result<usize, CoDriveError> {
        let f = path::folder(folder);
        let under = |p: &&String| path::is_under(p, &f);
        let candidates: BTreeSet<String> = self
            .view
            .get()
            .paths
            .range(f.clone()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(f.as_str()))
            .filter(under)
            .chain(self.written.keys().filter(under))
            .cloned()
            .collect();
        let mut n = 0;
        for p in candidates {
            if self.current(&p).is_some_and(|v| v.entry.is_some()) {
                self.add(p, None).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Paths written so far in this batch.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether nothing was written in this batch yet.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Appends the batch and fsyncs; returns the local writer's new version.
    pub async fn flush(self) -> Result<u64, CoDriveError> {
        let version = self.batch.flush().await?;
        let mut view = self.view;
        if let ViewSlot::Lent(_, frontier) = &mut view {
            // The view now is the one at the local writer's new length: the batch added only
            // versions that supersede everything of their paths the view had.
            frontier.0.insert(self.co.own.key(), version);
        }
        let paths = &mut view.get_mut().paths;
        for (p, v) in self.written {
            // The new version saw every candidate of its path, so it supersedes them all.
            paths.insert(
                p,
                Resolved {
                    winner: v,
                    conflicts: Vec::new(),
                },
            );
        }
        Ok(version)
    }
}

#[derive(Debug)]
enum BatchSlot<'b, 'a> {
    Owned(Box<CoBatch<'a>>),
    Lent(&'b mut CoBatch<'a>),
}

/// A streaming file write to the co-drive, from [`CoBatch::writer`] or [`CoDrive::writer`].
#[derive(Debug)]
pub struct CoFileWriter<'b, 'a> {
    batch: BatchSlot<'b, 'a>,
    path: String,
    opts: PutOptions,
    blob: BlobWriter<'a>,
}

impl CoFileWriter<'_, '_> {
    /// Appends bytes to the file's content.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), CoDriveError> {
        self.blob.write(data).await.map_err(DriveError::from)?;
        Ok(())
    }

    /// Finishes the content and adds the entry and its version record to the batch. A writer
    /// from [`CoDrive::writer`] then flushes its own batch, so the file is written.
    pub async fn finish(self) -> Result<PathVersion, CoDriveError> {
        let blob = self.blob.finish().await.map_err(DriveError::from)?;
        let entry = Entry::file(blob, self.opts.executable, self.opts.metadata);
        match self.batch {
            BatchSlot::Lent(b) => b.add(self.path, Some(entry)).await,
            BatchSlot::Owned(mut b) => {
                let v = b.add(self.path, Some(entry)).await?;
                b.flush().await?;
                Ok(v)
            }
        }
    }
}

/// How much of a writer's log the view reads: the longest signed version held locally. A log
/// whose newest blocks have not all arrived (a peer's upgrade came first, or the transfer
/// stopped) is read at the last whole version before them instead of failing on a missing
/// block (never mid-batch: that would show a broken tree).
fn readable(d: &Drive) -> u64 {
    d.version().min(d.db().core().consistent_length())
}
