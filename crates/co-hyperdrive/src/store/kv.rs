//! Where the store keeps its bytes: three ordered key spaces (block values, tree nodes, core
//! metadata) with atomic batches across them. On disk that is one fjall database (one journal,
//! one `fdatasync` per durable commit, a torn batch discarded whole on recovery: see
//! `docs/storage-spike.md`); in memory a `BTreeMap` per space, for tests and examples.
//!
//! On disk, blocks of [`FILE_MIN`] bytes or more ([`SYNCED_FILE_MIN`] in a batch its caller
//! syncs right after, [`Batch::synced`]) live in one append-only data file per core
//! (`data/<core hex>` in the database folder: its number or key, as its block keys begin) and the database holds where each one is
//! (`block-files` key space): they are written once, not to the journal and again to the
//! database's blob files (the spike measured 2.2× the bulk write rate). The file is written
//! before the batch that names its bytes commits; a batch marked [`Batch::own_blocks`] (our
//! signed appends) waits for the data to be synced first, so a power loss can never leave a
//! signature over blocks that are not on disk. Received blocks are not synced first: after a
//! power loss a location may name bytes that never reached the disk, and the block then fails
//! its leaf hash on first read, counts as missing and is fetched again. A crash between the file
//! write and the commit leaves bytes no record names, which are never read.
//!
//! Everything above this file sees only [`Kv`] and [`Space::Blocks`] keys (`core number (4)
//! ‖ index (8)`, or `core key (32) ‖ index (8)` for cores held before numbers: `log.rs`
//! `Prefix`); where a block's bytes are is decided here.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Blocks this large or larger go to the core's data file (blob blocks are 64 KiB); smaller
/// ones (Hyperbee nodes, small files) stay in the database, where a commit needs no extra sync.
pub(crate) const FILE_MIN: usize = 16 * 1024;

/// The same in a batch its caller syncs right after ([`Batch::synced`]): it pays a sync
/// anyway, so a small file's block (4 KiB or more) is written once, to the data file, instead of
/// to the journal and again to the database's blob files.
pub(crate) const SYNCED_FILE_MIN: usize = 4 * 1024;

/// At most this many bytes of small file blocks are gathered into one write.
const GATHER: usize = 1 << 20;

/// Index and filter blocks partitioned at every level (fjall partitions them only from level 3
/// on): a point read in a new process then loads a small partition of each, not a table's whole
/// index and filter (about 1 MiB each in a table of a million keys, read, checksummed and freed
/// again by every command on a big drive). Kept with the key space: applies to stores created
/// from here on.
fn partitioned(o: fjall::KeyspaceCreateOptions) -> fjall::KeyspaceCreateOptions {
    o.index_block_partitioning_policy(fjall::config::PartitioningPolicy::all(true))
        .filter_block_partitioning_policy(fjall::config::PartitioningPolicy::all(true))
}

/// The data files' folder in the database folder.
const DATA_DIR: &str = "data";

/// A key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Space {
    /// Block values, keyed by core and block index.
    Blocks,
    /// Merkle tree nodes, keyed by core and flat index.
    Nodes,
    /// Per-core headers and presence.
    Meta,
    /// The co-drive's persisted merged index (`codrive/stored.rs`): derived from the cores,
    /// so it may lag them and is brought forward from their blocks.
    Index,
}

const SPACES: [Space; 4] = [Space::Blocks, Space::Nodes, Space::Meta, Space::Index];

impl Space {
    fn name(self) -> &'static str {
        match self {
            Space::Blocks => "blocks",
            Space::Nodes => "nodes",
            Space::Meta => "meta",
            Space::Index => "codrive-index",
        }
    }
}

/// A storage failure (I/O, a damaged or poisoned database).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct KvError {
    pub(crate) message: String,
    /// What was read back does not hold together (a checksum, a truncated file): the record
    /// is damaged, unlike an I/O error that may pass.
    pub(crate) corrupt: bool,
}

impl KvError {
    #[cfg(test)]
    fn io(message: &str) -> Self {
        KvError {
            message: message.into(),
            corrupt: false,
        }
    }

    fn corrupt(message: String) -> Self {
        KvError {
            message: format!("storage: {message}"),
            corrupt: true,
        }
    }

    fn file(path: &Path, doing: &str, e: &std::io::Error) -> Self {
        KvError {
            message: format!("storage: {doing} {}: {e}", path.display()),
            corrupt: false,
        }
    }
}

impl From<fjall::Error> for KvError {
    fn from(e: fjall::Error) -> Self {
        let io = match &e {
            fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Some(e.kind()),
            _ => None,
        };
        let corrupt = !matches!(io, Some(k) if k != std::io::ErrorKind::UnexpectedEof
            && k != std::io::ErrorKind::InvalidData);
        KvError {
            message: format!("storage: {e}"),
            corrupt,
        }
    }
}

/// When a commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// At the next [`Kv::persist`] (a killed process loses nothing; a power loss may lose a
    /// suffix of whole commits).
    Buffered,
    /// Before the call that commits it returns: the caller persists right after the commit
    /// (its batch [`Batch::synced`]).
    Synced,
}

/// Key-value pairs, in key order.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A key or value a batch holds: the database's own byte string, so that committing hands it
/// over as it is. One of 20 bytes or less (every block and node key) is held inline: staging
/// it allocates nothing.
pub(crate) type Bytes = fjall::Slice;

/// A value a batch holds: as its writer made it, or already the database's (small values
/// built for it, such as tree nodes). A block bound for a data file is written from the
/// writer's bytes, never copied into the database's.
#[derive(Debug)]
pub(crate) enum Value {
    Owned(Vec<u8>),
    Db(Bytes),
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Value::Owned(v) => v,
            Value::Db(b) => b,
        }
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Owned(v)
    }
}

impl<const N: usize> From<[u8; N]> for Value {
    fn from(v: [u8; N]) -> Self {
        Value::Db(Bytes::from(v))
    }
}

impl Value {
    /// The bytes as a vector (moved when the writer's).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Value::Owned(v) => v,
            Value::Db(b) => b.to_vec(),
        }
    }
}

impl From<Value> for Bytes {
    fn from(v: Value) -> Self {
        match v {
            Value::Owned(v) => Bytes::from(v),
            Value::Db(b) => b,
        }
    }
}

/// One write of a batch: `None` deletes.
type Op = (Space, Bytes, Option<Value>);

/// Writes that commit together.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    ops: Vec<Op>,
    /// The blocks must be durable before the rest may be (see the module notes).
    own: bool,
    /// The caller persists right after this commit (see [`Batch::synced`]).
    synced: bool,
}

impl Batch {
    /// Marks the batch as our own signed append: its file blocks are synced before it commits.
    pub(crate) fn own_blocks(&mut self) {
        self.own = true;
    }

    /// Says that the caller makes this commit durable right after it ([`Kv::persist`], a
    /// sync it pays anyway): its blocks of [`SYNCED_FILE_MIN`] bytes or more go to the data
    /// files, synced before it commits. (The persist is the caller's, after it has taken the
    /// commit in: a persist that fails must not leave it thinking the commit did not happen.)
    pub(crate) fn synced(&mut self) {
        self.synced = true;
    }

    pub(crate) fn put(&mut self, space: Space, key: impl Into<Bytes>, value: impl Into<Value>) {
        self.ops.push((space, key.into(), Some(value.into())));
    }

    pub(crate) fn delete(&mut self, space: Space, key: impl Into<Bytes>) {
        self.ops.push((space, key.into(), None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds `other`'s writes (committed together with these).
    pub(crate) fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.own |= other.own;
        self.synced |= other.synced;
    }
}

/// The index fixed at one moment ([`Kv::pin_index`]): a snapshot of fjall's, or a copy of
/// the memory store's index (tests).
#[allow(clippy::large_enum_variant, clippy::type_complexity)]
pub(crate) enum Pin {
    Disk(fjall::Snapshot),
    Memory(Arc<BTreeMap<(Space, Vec<u8>), Vec<u8>>>),
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin")
    }
}

/// The store's bytes.
#[derive(Debug)]
#[allow(clippy::type_complexity)]
pub(crate) enum Kv {
    Memory(RwLock<BTreeMap<(Space, Vec<u8>), Vec<u8>>>),
    Disk(Disk),
    /// A memory store whose reads and commits fail on a seeded schedule (tests): a failed
    /// commit applies nothing, as the database's batches are atomic.
    #[cfg(test)]
    Faulty(Box<Kv>, Faults),
}

/// When a [`Kv::Faulty`] fails: one operation in `every`, on a seeded schedule; `off` turns
/// the faults off (what a restart after the fault sees).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) state: std::sync::atomic::AtomicU64,
    pub(crate) every: u64,
    pub(crate) off: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Faults {
    fn fail(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.off.load(Ordering::Relaxed) {
            return false;
        }
        // xorshift: deterministic for a seed.
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        x.is_multiple_of(self.every)
    }
}

/// Memtables holding this much in all are written out by a clean close ([`Kv::settle`]).
const SETTLE_ACTIVE: u64 = 4 << 20;
/// How long a clean close waits without any memtable being written out before it gives up.
const SETTLE_STALL: std::time::Duration = std::time::Duration::from_secs(2);
/// A journal this large is emptied by the next open once a clean close wrote everything in it
/// out to tables ([`Kv::settle`]): every open reads every record of the journal, at about
/// 1.7 us each even when it skips them (2 MiB: some 15,000 records).
const EMPTY_JOURNAL_MIN: u64 = 2 << 20;
/// In the database folder: the journal a clean close found fully written out to tables
/// (`<file name> <length>`), for the next open to empty.
const FLUSHED_MARK: &str = "journal-flushed";

pub(crate) struct Disk {
    db: fjall::Database,
    spaces: Vec<fjall::Keyspace>,
    /// Where each file block is: `Space::Blocks` key → offset (u64 LE) ‖ length (u32 LE) ‖
    /// xxh3-64 of its bytes (u64 LE).
    located: fjall::Keyspace,
    files: DataFiles,
    /// Commits since the last durable persist (so that an idle flush costs nothing).
    dirty: Mutex<bool>,
    /// The database folder.
    dir: PathBuf,
    /// Whether a [`FLUSHED_MARK`] of ours is on disk: the next commit removes it first. Held
    /// over every commit, so that a close cannot mark a journal a commit is writing to.
    marked: Mutex<bool>,
}

impl Kv {
    pub(crate) fn memory() -> Self {
        Kv::Memory(RwLock::default())
    }

    /// Opens (creating) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, KvError> {
        empty_flushed_journal(dir)?;
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .journal_compression(fjall::CompressionType::None)
            // Two cores on the machines we aim at: background work must not take both.
            .worker_threads(1)
            .max_journaling_size(128 * 1024 * 1024)
            .open()?;
        let mut spaces = Vec::new();
        for s in SPACES {
            let ks = db.keyspace(s.name(), || {
                let o = fjall::KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .max_memtable_size(match s {
                        // Blocks: fewer, larger flushes of the (separated) values.
                        Space::Blocks => 64 * 1024 * 1024,
                        _ => 16 * 1024 * 1024,
                    })
                    .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
                    .index_block_compression_policy(fjall::config::CompressionPolicy::disabled());
                let o = partitioned(o);
                match s {
                    // Block values are large and incompressible: kept apart from the keys.
                    Space::Blocks => o.with_kv_separation(Some(
                        fjall::KvSeparationOptions::default()
                            .compression(fjall::CompressionType::None),
                    )),
                    _ => o,
                }
            })?;
            spaces.push(ks);
        }
        let located = db.keyspace("block-files", || {
            partitioned(
                fjall::KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
                    .index_block_compression_policy(fjall::config::CompressionPolicy::disabled()),
            )
        })?;
        let data = dir.join(DATA_DIR);
        std::fs::create_dir_all(&data).map_err(|e| KvError::file(&data, "creating", &e))?;
        Ok(Kv::Disk(Disk {
            db,
            spaces,
            located,
            files: DataFiles {
                dir: data,
                open: Mutex::default(),
            },
            dirty: Mutex::new(false),
            dir: dir.to_path_buf(),
            marked: Mutex::new(false),
        }))
    }

    pub(crate) fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Kv::Memory(m) => Ok(m
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(space, key.to_vec()))
                .cloned()),
            Kv::Disk(d) => {
                if space == Space::Blocks {
                    if let Some(at) = d.located.get(key)? {
                        return d.read_located(key, &at).map(Some);
                    }
                }
                Ok(d.space(space).get(key)?.map(|v| v.to_vec()))
            }
            #[cfg(test)]
            Kv::Faulty(inner, f) => {
                if f.fail() {
                    return Err(KvError::io("injected read fault"));
                }
                inner.get(space, key)
            }
        }
    }

    /// A block (`Space::Blocks` key), and whether its bytes were checked against a checksum
    /// recorded when they were written (blocks in data files; the caller need not hash them).
    pub(crate) fn get_block(&self, key: &[u8]) -> Result<Option<(Vec<u8>, bool)>, KvError> {
        if let Kv::Disk(d) = self {
            if let Some(at) = d.located.get(key)? {
                return d.read_located(key, &at).map(|v| Some((v, true)));
            }
        }
        Ok(self.get(Space::Blocks, key)?.map(|v| (v, false)))
    }

    /// At most `limit` entries with keys in `start..end`, in key order.
    pub(crate) fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, KvError> {
        self.scan_at(None, space, start, end, limit)
    }

    /// The index key space as it stands now, for reads that must not see later commits
    /// ([`scan_at`](Self::scan_at)).
    pub(crate) fn pin_index(&self) -> Pin {
        match self {
            // (The index is the last space: this range is all of it.)
            Kv::Memory(m) => Pin::Memory(Arc::new(
                m.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .range((Space::Index, Vec::new())..)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            Kv::Disk(d) => Pin::Disk(d.db.snapshot()),
            #[cfg(test)]
            Kv::Faulty(inner, _) => inner.pin_index(),
        }
    }

    /// [`scan`](Self::scan) as the database stood when `pin` was taken (`None`: as it is).
    pub(crate) fn scan_at(
        &self,
        pin: Option<&Pin>,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, KvError> {
        use fjall::Readable;
        if start >= end {
            return Ok(Vec::new());
        }
        let memory = |m: &BTreeMap<(Space, Vec<u8>), Vec<u8>>| -> Pairs {
            m.range((space, start.to_vec())..(space, end.to_vec()))
                .take(limit)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        };
        match (self, pin) {
            (_, Some(Pin::Memory(m))) => Ok(memory(m)),
            (Kv::Memory(m), None) => Ok(memory(&m.read().unwrap_or_else(|e| e.into_inner()))),
            (Kv::Disk(d), pin) => {
                let ks = d.space(space);
                let range = match pin {
                    Some(Pin::Disk(snapshot)) => snapshot.range(ks, start..end),
                    _ => ks.range(start..end),
                };
                let mut out = Vec::new();
                for g in range.take(limit) {
                    let (k, v) = g.into_inner()?;
                    out.push((k.to_vec(), v.to_vec()));
                }
                Ok(out)
            }
            #[cfg(test)]
            (Kv::Faulty(inner, f), pin) => {
                if f.fail() {
                    return Err(KvError::io("injected read fault"));
                }
                inner.scan_at(pin, space, start, end, limit)
            }
            // Pins are taken from the store they read (`Store::index_pin`).
            (Kv::Memory(_), Some(Pin::Disk(_))) => Err(KvError {
                message: "storage: a snapshot of another store".into(),
                corrupt: false,
            }),
        }
    }

    /// Applies `batch` atomically (durable after the next [`persist`](Self::persist); a
    /// killed process keeps it, a power loss may lose a suffix of whole batches).
    pub(crate) fn commit(&self, batch: Batch) -> Result<(), KvError> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Kv::Memory(m) => {
                let mut m = m.write().unwrap_or_else(|e| e.into_inner());
                for (s, k, v) in batch.ops {
                    match v {
                        Some(v) => m.insert((s, k.to_vec()), v.into_vec()),
                        None => m.remove(&(s, k.to_vec())),
                    };
                }
                Ok(())
            }
            Kv::Disk(d) => d.commit(batch),
            #[cfg(test)]
            Kv::Faulty(inner, f) => {
                if f.fail() {
                    return Err(KvError::io("injected commit fault"));
                }
                inner.commit(batch)
            }
        }
    }

    /// Before a clean exit: lets the database finish writing out the memtables it has sealed,
    /// for at most `limit`. A sealed memtable lives only in its journal until written out, and
    /// the database drops unfinished work when it closes, so a process that exits first leaves
    /// it to the next open to read back in, and so on: after an import of 100,000 files every
    /// command took 1.7 s replaying three journals (138 MB) until one process stayed long
    /// enough. Waiting once here ends that.
    pub(crate) fn settle(&self, limit: std::time::Duration) {
        let Kv::Disk(d) = self else {
            return;
        };
        let deadline = std::time::Instant::now() + limit;
        let journal = journal_files(&d.dir).unwrap_or_default();
        let big = journal.iter().map(|(_, len)| len).sum::<u64>() >= EMPTY_JOURNAL_MIN;
        // Memtables still open are rebuilt by the next open from the journal, item by item
        // (after the index of 100,000 files x 16 writers was built, every command spent 0.6 s
        // on it): past a few MiB they are sealed too, to be written out below. With a big
        // journal every one is, so that the next open can empty the journal (below).
        if big || d.db.write_buffer_size() >= SETTLE_ACTIVE {
            for k in d.keyspaces() {
                // An error leaves the memtable to the journal, as before.
                let _ = k.rotate_memtable();
            }
        }
        let left = || d.unflushed();
        // Waits while the work goes on; gives up when none finishes for a while (a queued flush
        // no worker takes would otherwise hold every exit for the whole limit: seen once, a
        // `whoami` that took 10.5 s).
        let mut last = (left(), std::time::Instant::now());
        while last.0 > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let now = left();
            if now < last.0 {
                last = (now, std::time::Instant::now());
            } else if last.1.elapsed() >= SETTLE_STALL {
                return;
            }
            last.0 = now;
        }
        if big && last.0 == 0 {
            // Best effort: without the mark the next open replays the journal, as before.
            if let Err(e) = d.mark_flushed() {
                tracing::debug!("cannot mark the journal written out: {e}");
            }
        }
    }

    /// Makes every committed batch durable.
    pub(crate) fn persist(&self) -> Result<(), KvError> {
        match self {
            Kv::Memory(_) => Ok(()),
            #[cfg(test)]
            Kv::Faulty(..) => Ok(()),
            Kv::Disk(d) => d.persist(),
        }
    }
}

impl Disk {
    fn persist(&self) -> Result<(), KvError> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if *dirty {
            // Data first: a location must never be durable before its bytes are.
            self.files.sync()?;
            self.db.persist(fjall::PersistMode::SyncData)?;
            *dirty = false;
        }
        Ok(())
    }

    /// Every key space, the data files' locations included.
    fn keyspaces(&self) -> impl Iterator<Item = &fjall::Keyspace> {
        self.spaces.iter().chain([&self.located])
    }

    /// What is left to write out: queued flushes and sealed memtables.
    fn unflushed(&self) -> usize {
        self.db.outstanding_flushes()
            + self
                .keyspaces()
                .map(|k| k.sealed_memtable_count())
                .sum::<usize>()
    }

    /// Records that the one journal holds nothing the tables do not, for the next open to empty
    /// it ([`empty_flushed_journal`]): only when nothing is left in memory to write out, with
    /// commits held off (a commit after this removes the mark before it writes).
    fn mark_flushed(&self) -> Result<(), KvError> {
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        // Everything committed is in the journal's file, and synced.
        self.db.persist(fjall::PersistMode::SyncAll)?;
        if self.db.write_buffer_size() != 0 || self.unflushed() != 0 {
            return Ok(());
        }
        let journal = journal_files(&self.dir)?;
        let [(name, len)] = journal.as_slice() else {
            return Ok(());
        };
        let tmp = self.dir.join(format!("{FLUSHED_MARK}.tmp"));
        let write = || -> std::io::Result<()> {
            super::private_file(&tmp, format!("{name} {len}\n").as_bytes())?;
            std::fs::rename(&tmp, self.dir.join(FLUSHED_MARK))?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| KvError::file(&self.dir.join(FLUSHED_MARK), "writing", &e))?;
        *marked = true;
        Ok(())
    }
}

/// The journal files in the database folder `dir`: (file name, length), by name.
fn journal_files(dir: &Path) -> Result<Vec<(String, u64)>, KvError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| KvError::file(dir, "reading", &e))?;
    for e in rd {
        let e = e.map_err(|e| KvError::file(dir, "reading", &e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".jnl") {
            let len = e
                .metadata()
                .map_err(|err| KvError::file(&e.path(), "reading", &err))?
                .len();
            out.push((name, len));
        }
    }
    out.sort();
    Ok(out)
}

fn remove_mark(dir: &Path) -> Result<(), KvError> {
    let mark = dir.join(FLUSHED_MARK);
    match std::fs::remove_file(&mark) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KvError::file(&mark, "removing", &e)),
    }
    // Gone for good before the journal changes: a mark that came back after a power loss
    // would empty a journal holding what was written since.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KvError::file(dir, "syncing", &e))
}

/// Before the database opens: empties the journal a clean close marked as written out to
/// tables ([`Disk::mark_flushed`]), so that the open does not read its records one by one only
/// to skip them. The database rotates its journal only past 64 MB, and an open costs about
/// 1.7 us per record in it (after an import of 20,000 files every command took 0.4 s). Done only
/// when the mark names the one journal there, at the length it had: otherwise the mark goes
/// and the journal is replayed as usual.
fn empty_flushed_journal(dir: &Path) -> Result<(), KvError> {
    let mark = dir.join(FLUSHED_MARK);
    let text = match std::fs::read_to_string(&mark) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KvError::file(&mark, "reading", &e)),
    };
    let named = text
        .trim_end()
        .split_once(' ')
        .and_then(|(n, l)| Some((n.to_string(), l.parse::<u64>().ok()?)));
    if let Some(named) = named {
        if journal_files(dir)? == [named.clone()] {
            let path = dir.join(&named.0);
            let empty = || -> std::io::Result<()> {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(0)?;
                f.sync_all()
            };
            empty().map_err(|e| KvError::file(&path, "emptying", &e))?;
        }
    }
    remove_mark(dir)
}

/// The database gives every item of a batch the same sequence number, so two items for one key
/// would be ambiguous: keeps only the last op on each key. Most batches have none twice (an
/// append's keys are new and distinct), so a hash pass finds that without sorting them.
fn last_op_per_key(ops: Vec<Op>) -> Vec<Op> {
    let keep = {
        let mut last: HashMap<(Space, &[u8]), usize> = HashMap::with_capacity(ops.len());
        for (i, (s, k, _)) in ops.iter().enumerate() {
            last.insert((*s, &**k), i);
        }
        if last.len() == ops.len() {
            return ops;
        }
        let mut keep = vec![false; ops.len()];
        for &i in last.values() {
            keep[i] = true;
        }
        keep
    };
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, k)| k.then_some(op))
        .collect()
}

impl std::fmt::Debug for DataFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFiles").field("dir", &self.dir).finish()
    }
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").finish_non_exhaustive()
    }
}

impl Disk {
    fn space(&self, s: Space) -> &fjall::Keyspace {
        &self.spaces[s as usize]
    }

    fn commit(&self, batch: Batch) -> Result<(), KvError> {
        // The journal changes now: a mark saying it was written out goes first.
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        if *marked {
            remove_mark(&self.dir)?;
            *marked = false;
        }
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::Buffer));
        // Space freed by deleted file blocks, returned to the file system once the batch that
        // forgets them has committed.
        let mut freed = Vec::new();
        // File blocks by core, written after the loop in as few writes as they take.
        let mut to_files: BTreeMap<CoreName, Vec<(Bytes, Value)>> = BTreeMap::new();
        let file_min = if batch.synced {
            SYNCED_FILE_MIN
        } else {
            FILE_MIN
        };
        for (s, k, v) in last_op_per_key(batch.ops) {
            match v {
                Some(v) if s == Space::Blocks && v.len() >= file_min => {
                    if u32::try_from(v.len()).is_err() {
                        return Err(KvError {
                            message: format!("storage: a block of {} bytes is too large", v.len()),
                            corrupt: false,
                        });
                    }
                    // A copy stored before in the database (a store from before the data
                    // files, or another fork's block) goes.
                    if self.space(s).contains_key(&k)? {
                        b.remove(self.space(s), k.clone());
                    }
                    to_files.entry(core_of(&k)?).or_default().push((k, v));
                }
                Some(v) => {
                    if s == Space::Blocks && self.located.contains_key(&k)? {
                        b.remove(&self.located, k.clone());
                    }
                    b.insert(self.space(s), k, v)
                }
                None => {
                    if s == Space::Blocks {
                        if let Some(at) = self.located.get(&k)? {
                            let l = location(&k, &at)?;
                            freed.push((core_of(&k)?, (l.offset, l.len)));
                            b.remove(&self.located, k.clone());
                        }
                    }
                    b.remove(self.space(s), k)
                }
            }
        }
        for (core, blocks) in &to_files {
            let offsets = self
                .files
                .append_all(core, blocks.iter().map(|(_, v)| &**v))?;
            for ((k, v), offset) in blocks.iter().zip(offsets) {
                let mut at = Vec::with_capacity(20);
                at.extend_from_slice(&offset.to_le_bytes());
                // (Checked above to fit.)
                at.extend_from_slice(&(v.len() as u32).to_le_bytes());
                at.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(v).to_le_bytes());
                b.insert(&self.located, k.clone(), at);
            }
        }
        if batch.own || batch.synced {
            for core in to_files.keys() {
                self.files.sync_one(core)?;
            }
        }
        b.commit()?;
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        for (core, (offset, len)) in freed {
            self.files.punch(&core, offset, len);
        }
        Ok(())
    }

    /// A file block's bytes, checked against the checksum written with them: bytes that
    /// never reached the disk (a power loss) or changed there read as damaged.
    fn read_located(&self, key: &[u8], at: &[u8]) -> Result<Vec<u8>, KvError> {
        let l = location(key, at)?;
        let v = self.files.read(&core_of(key)?, l.offset, l.len)?;
        if xxhash_rust::xxh3::xxh3_64(&v) != l.sum {
            return Err(KvError::corrupt(format!(
                "block {} does not match its checksum in its data file",
                hex::encode(key)
            )));
        }
        Ok(v)
    }
}

/// Which core's data file a block key's block is in: the key without its index (the core's
/// number, 4 bytes, or its key, 32 bytes: see `log.rs` `Prefix`).
fn core_of(key: &[u8]) -> Result<CoreName, KvError> {
    match key.len() {
        12 | 40 => Ok(key[..key.len() - 8].to_vec()),
        n => Err(KvError::corrupt(format!("a block key of {n} bytes"))),
    }
}

/// A core as its data file is named (`data/<hex>`): its number or its key.
type CoreName = Vec<u8>;

/// Where a file block is, and the checksum of its bytes.
struct Location {
    offset: u64,
    len: usize,
    sum: u64,
}

fn location(key: &[u8], at: &[u8]) -> Result<Location, KvError> {
    let u64_at = |i: usize| {
        at.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let len = at
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    match (at.len(), u64_at(0), len, u64_at(12)) {
        (20, Some(offset), Some(len), Some(sum)) => Ok(Location {
            offset,
            len: len as usize,
            sum,
        }),
        _ => Err(KvError::corrupt(format!(
            "the location of block {} is {} bytes, not 20",
            hex::encode(key),
            at.len()
        ))),
    }
}

/// The cores' data files, opened when first used.
struct DataFiles {
    dir: PathBuf,
    open: Mutex<HashMap<CoreName, Arc<DataFile>>>,
}

/// One core's data file: where the next block goes, and whether it was written since the
/// last sync.
#[derive(Debug)]
struct DataFile {
    file: File,
    path: PathBuf,
    end: Mutex<(u64, bool)>,
}

impl DataFiles {
    fn get(&self, core: &[u8]) -> Result<Arc<DataFile>, KvError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(core) {
            return Ok(f.clone());
        }
        let path = self.dir.join(hex::encode(core));
        let new = !path.exists();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| KvError::file(&path, "opening", &e))?;
        if new {
            // The file's name must be as durable as the blocks synced into it: a power loss
            // could otherwise take the whole file while records naming its bytes survive.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| KvError::file(&self.dir, "syncing", &e))?;
        }
        // Bytes past what any record names (a write whose batch never committed) are left
        // where they are: new blocks go after them.
        let end = file
            .metadata()
            .map_err(|e| KvError::file(&path, "reading the size of", &e))?
            .len();
        let f = Arc::new(DataFile {
            file,
            path,
            end: Mutex::new((end, false)),
        });
        open.insert(core.to_vec(), f.clone());
        Ok(f)
    }

    /// Writes `blocks` one after another at the end of the core's file; returns where each
    /// starts. Small blocks are gathered into writes of up to [`GATHER`] bytes: a batch of
    /// small files would otherwise cost a system call each.
    fn append_all<'b>(
        &self,
        core: &[u8],
        blocks: impl Iterator<Item = &'b [u8]>,
    ) -> Result<Vec<u64>, KvError> {
        let f = self.get(core)?;
        let mut end = f.end.lock().unwrap_or_else(|e| e.into_inner());
        let write = |data: &[u8], at: u64| {
            f.file
                .write_all_at(data, at)
                .map_err(|e| KvError::file(&f.path, "writing", &e))
        };
        let (mut offsets, mut gathered) = (Vec::new(), Vec::new());
        // Where `gathered` goes, and where the next block does.
        let (mut gathered_at, mut next) = (end.0, end.0);
        for data in blocks {
            if !gathered.is_empty() && gathered.len() + data.len() > GATHER {
                write(&gathered, gathered_at)?;
                gathered.clear();
            }
            if gathered.is_empty() {
                gathered_at = next;
            }
            if data.len() >= GATHER {
                write(data, next)?;
            } else {
                gathered.extend_from_slice(data);
            }
            offsets.push(next);
            next += data.len() as u64;
        }
        if !gathered.is_empty() {
            write(&gathered, gathered_at)?;
        }
        *end = (next, end.1 || next != end.0);
        Ok(offsets)
    }

    fn read(&self, core: &[u8], offset: u64, len: usize) -> Result<Vec<u8>, KvError> {
        let f = self.get(core)?;
        // A damaged location must not make us allocate what the file does not hold.
        if len > FILE_MIN * 1024 {
            let size = f
                .file
                .metadata()
                .map_err(|e| KvError::file(&f.path, "reading the size of", &e))?
                .len();
            if offset.saturating_add(len as u64) > size {
                return Err(KvError::corrupt(format!(
                    "{} ends before its block at {offset}",
                    f.path.display()
                )));
            }
        }
        let mut v = vec![0; len];
        match f.file.read_exact_at(&mut v, offset) {
            Ok(()) => Ok(v),
            // The file ends before the block: it never reached the disk (a power loss).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(KvError::corrupt(
                format!("{} ends before its block at {offset}", f.path.display()),
            )),
            Err(e) => Err(KvError::file(&f.path, "reading", &e)),
        }
    }

    fn sync_one(&self, core: &[u8]) -> Result<(), KvError> {
        let f = self.get(core)?;
        let mut end = f.end.lock().unwrap_or_else(|e| e.into_inner());
        if end.1 {
            f.file
                .sync_data()
                .map_err(|e| KvError::file(&f.path, "syncing", &e))?;
            end.1 = false;
        }
        Ok(())
    }

    /// Syncs every file written since its last sync.
    fn sync(&self) -> Result<(), KvError> {
        let cores: Vec<CoreName> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for core in cores {
            self.sync_one(&core)?;
        }
        Ok(())
    }

    /// Gives a cleared block's space back to the file system where it can (best effort: a
    /// failure only leaves the bytes in place, unnamed).
    fn punch(&self, core: &[u8], offset: u64, len: usize) {
        let Ok(f) = self.get(core) else { return };
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if let Err(e) = fallocate(&f.file, flags, offset, len as u64) {
                tracing::debug!(path = %f.path.display(), "cannot free a cleared block: {e}");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (f, offset, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean close writes out the memtables (sealed ones, and open ones past a few MiB): the
    /// next open finds them in tables instead of rebuilding them from the journal (and sealing
    /// them again, and dropping the work again when it exits early).
    #[test]
    fn settle_writes_out_sealed_memtables() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = Kv::open(dir.path()).unwrap();
            // 20 MiB in a space whose memtables hold 16 MiB: one is sealed.
            for i in 0u32..20 {
                let mut b = Batch::default();
                for j in 0u32..256 {
                    let key = [i.to_be_bytes(), j.to_be_bytes()].concat();
                    b.put(Space::Index, key, vec![(i + j) as u8; 4096]);
                }
                kv.commit(b).unwrap();
            }
            kv.persist().unwrap();
            kv.settle(std::time::Duration::from_secs(30));
            let Kv::Disk(d) = &kv else { unreachable!() };
            assert_eq!(d.space(Space::Index).sealed_memtable_count(), 0);
        }
        let kv = Kv::open(dir.path()).unwrap();
        let Kv::Disk(d) = &kv else { unreachable!() };
        // Nothing is read back into memory: the memtable still open at close (4 MiB, past
        // SETTLE_ACTIVE) was written out too.
        assert!(
            d.db.write_buffer_size() < 1 << 20,
            "{} bytes read back from the journal",
            d.db.write_buffer_size()
        );
        let key = [7u32.to_be_bytes(), 9u32.to_be_bytes()].concat();
        assert_eq!(
            kv.get(Space::Index, &key).unwrap().unwrap(),
            vec![16u8; 4096]
        );
    }

    /// Record `j` of batch `i` of [`fill`]: where it goes.
    fn record(i: u32, j: u32) -> (Space, Vec<u8>) {
        let space = [Space::Nodes, Space::Index, Space::Meta][j as usize % 3];
        (space, [i.to_be_bytes(), j.to_be_bytes()].concat())
    }

    /// Writes `n` batches of 100 records of 1 KiB into three spaces (3 MiB for 10).
    fn fill(kv: &Kv, n: u32, tag: u8) {
        for i in 0..n {
            let mut b = Batch::default();
            for j in 0u32..100 {
                let (space, key) = record(i, j);
                b.put(space, key, vec![tag; 1024]);
            }
            kv.commit(b).unwrap();
        }
        kv.persist().unwrap();
    }

    fn filled(kv: &Kv, n: u32, tag: u8) -> bool {
        (0..n).all(|i| {
            (0u32..100).all(|j| {
                let (space, key) = record(i, j);
                kv.get(space, &key).unwrap() == Some(vec![tag; 1024])
            })
        })
    }

    fn journal_bytes(dir: &Path) -> u64 {
        journal_files(dir).unwrap().iter().map(|(_, l)| l).sum()
    }

    /// A clean close that writes every memtable out marks the journal, and the next open
    /// empties it instead of reading it record by record; what it held is all still there, and
    /// later writes win over it (sequence numbers go on from the tables).
    #[test]
    fn the_open_after_a_clean_close_empties_a_written_out_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = Kv::open(dir.path()).unwrap();
            fill(&kv, 30, 1);
            kv.settle(std::time::Duration::from_secs(30));
            assert!(dir.path().join(FLUSHED_MARK).exists(), "no mark");
        }
        {
            let kv = Kv::open(dir.path()).unwrap();
            assert!(!dir.path().join(FLUSHED_MARK).exists());
            assert_eq!(journal_bytes(dir.path()), 0, "the journal was not emptied");
            assert!(filled(&kv, 30, 1));
            // Overwrites, closed without settling: the journal is replayed as before.
            fill(&kv, 1, 2);
        }
        let kv = Kv::open(dir.path()).unwrap();
        assert!(filled(&kv, 1, 2), "an older value won over a newer one");
        let key = [3u32.to_be_bytes(), 4u32.to_be_bytes()].concat();
        assert_eq!(kv.get(Space::Index, &key).unwrap(), Some(vec![1; 1024]));
        // A small journal is left alone: no mark.
        kv.settle(std::time::Duration::from_secs(30));
        assert!(!dir.path().join(FLUSHED_MARK).exists());
    }

    /// A commit after the mark removes it first: the next open replays the journal, and the
    /// write is there.
    #[test]
    fn a_commit_after_the_mark_keeps_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = Kv::open(dir.path()).unwrap();
            fill(&kv, 30, 1);
            kv.settle(std::time::Duration::from_secs(30));
            assert!(dir.path().join(FLUSHED_MARK).exists(), "no mark");
            let mut b = Batch::default();
            b.put(Space::Meta, b"after".to_vec(), b"the mark".to_vec());
            kv.commit(b).unwrap();
            assert!(!dir.path().join(FLUSHED_MARK).exists(), "the mark stayed");
            kv.persist().unwrap();
        }
        let kv = Kv::open(dir.path()).unwrap();
        assert_eq!(
            kv.get(Space::Meta, b"after").unwrap().as_deref(),
            Some(&b"the mark"[..])
        );
        assert!(filled(&kv, 30, 1));
        assert!(journal_bytes(dir.path()) > 0);
    }

    /// A mark that does not name the journal there, at its length, empties nothing.
    #[test]
    fn a_mark_that_does_not_fit_the_journal_empties_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = Kv::open(dir.path()).unwrap();
            fill(&kv, 30, 1);
            kv.settle(std::time::Duration::from_secs(30));
        }
        let (name, len) = journal_files(dir.path()).unwrap().remove(0);
        for wrong in [
            format!("{name} {}", len + 1),
            "9.jnl 5".into(),
            "garbage".into(),
        ] {
            std::fs::write(dir.path().join(FLUSHED_MARK), &wrong).unwrap();
            drop(Kv::open(dir.path()).unwrap());
            assert!(!dir.path().join(FLUSHED_MARK).exists());
            assert!(
                journal_bytes(dir.path()) > 0,
                "emptied by the mark {wrong:?}"
            );
        }
        assert!(filled(&Kv::open(dir.path()).unwrap(), 30, 1));
    }

    /// Two ops on one key in a batch: the last one is what the store holds, in memory, on disk
    /// and after reopening (the database would apply them in an order of its own).
    #[test]
    fn the_last_op_on_a_key_in_a_batch_wins() {
        let dir = tempfile::tempdir().unwrap();
        let check = |kv: &Kv| {
            assert_eq!(kv.get(Space::Meta, b"k1").unwrap().unwrap(), b"second");
            assert_eq!(kv.get(Space::Meta, b"k2").unwrap().unwrap(), b"back");
            assert_eq!(kv.get(Space::Meta, b"k3").unwrap(), None);
            // The same key in another space is another record.
            assert_eq!(kv.get(Space::Nodes, b"k1").unwrap().unwrap(), b"node");
            // A block kept in a data file, then replaced by a small one kept in the database.
            let (block, _) = kv.get_block(&block_key(9, 5)).unwrap().unwrap();
            assert!(
                block == b"small",
                "the block of {} bytes is held",
                block.len()
            );
        };
        let batch = || {
            let mut b = Batch::default();
            b.put(Space::Meta, b"k2".to_vec(), b"old".to_vec());
            b.put(Space::Meta, b"k3".to_vec(), b"gone".to_vec());
            b.put(Space::Nodes, b"k1".to_vec(), b"node".to_vec());
            b.put(Space::Meta, b"k1".to_vec(), b"first".to_vec());
            b.delete(Space::Meta, b"k2".to_vec());
            b.put(Space::Meta, b"k1".to_vec(), b"second".to_vec());
            b.put(Space::Meta, b"k2".to_vec(), b"back".to_vec());
            b.delete(Space::Meta, b"k3".to_vec());
            b.put(Space::Blocks, block_key(9, 5), vec![1; FILE_MIN * 2]);
            b.put(Space::Blocks, block_key(9, 5), b"small".to_vec());
            b
        };
        let memory = Kv::memory();
        memory.commit(batch()).unwrap();
        check(&memory);
        {
            let kv = Kv::open(dir.path()).unwrap();
            kv.commit(batch()).unwrap();
            check(&kv);
            kv.persist().unwrap();
        }
        check(&Kv::open(dir.path()).unwrap());
    }

    fn exercise(kv: &Kv) {
        let mut b = Batch::default();
        b.put(Space::Meta, b"a1".to_vec(), b"x".to_vec());
        b.put(Space::Meta, b"a2".to_vec(), b"y".to_vec());
        b.put(Space::Meta, b"b1".to_vec(), b"z".to_vec());
        b.put(Space::Nodes, b"a3".to_vec(), b"n".to_vec());
        b.put(Space::Blocks, b"a1".to_vec(), vec![7; 5000]);
        kv.commit(b).unwrap();
        assert_eq!(kv.get(Space::Meta, b"a1").unwrap().unwrap(), b"x");
        assert_eq!(
            kv.get(Space::Blocks, b"a1").unwrap().unwrap(),
            vec![7; 5000]
        );
        let mut b = Batch::default();
        b.put(Space::Meta, b"a1".to_vec(), b"x2".to_vec());
        kv.commit(b).unwrap();
        assert_eq!(kv.get(Space::Meta, b"a1").unwrap().unwrap(), b"x2");
        assert_eq!(kv.get(Space::Nodes, b"a1").unwrap(), None);
        // Blocks of every size, replaced and deleted.
        let (big, other) = (block_key(1, 0), block_key(2, 5));
        let mut b = Batch::default();
        b.put(Space::Blocks, big.clone(), pattern(FILE_MIN, 1));
        b.put(Space::Blocks, other.clone(), pattern(64 * 1024, 2));
        b.put(Space::Blocks, block_key(1, 1), pattern(FILE_MIN - 1, 3));
        b.own_blocks();
        kv.commit(b).unwrap();
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(1, 2), pattern(FILE_MIN + 1, 4));
        b.delete(Space::Blocks, other.clone());
        kv.commit(b).unwrap();
        assert_eq!(kv.get(Space::Blocks, &other).unwrap(), None);
        // A block stored small, then large (another fork's block at the same index), and back.
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(3, 0), pattern(10, 5));
        kv.commit(b).unwrap();
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(3, 0), pattern(FILE_MIN * 2, 6));
        kv.commit(b).unwrap();
        assert!(kv.get(Space::Blocks, &block_key(3, 0)).unwrap() == Some(pattern(FILE_MIN * 2, 6)));
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(3, 1), pattern(FILE_MIN * 2, 7));
        b.put(Space::Blocks, block_key(3, 1), pattern(20, 8));
        kv.commit(b).unwrap();
        let mut b = Batch::default();
        for k in [b"i1", b"i3", b"i2", b"j0"] {
            b.put(Space::Index, k.to_vec(), k.to_vec());
        }
        kv.commit(b).unwrap();
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(kv.scan(Space::Index, b"i", b"j", 10).unwrap()),
            vec![b"i1".to_vec(), b"i2".to_vec(), b"i3".to_vec()]
        );
        assert_eq!(
            keys(kv.scan(Space::Index, b"i2", b"z", 2).unwrap()).len(),
            2
        );
        // Other spaces are not seen.
        assert!(kv.scan(Space::Meta, b"i", b"j", 10).unwrap().is_empty());
        kv.persist().unwrap();
        check_blocks(kv);
    }

    fn check_blocks(kv: &Kv) {
        let get = |c, i| kv.get(Space::Blocks, &block_key(c, i)).unwrap();
        assert!(get(1, 0) == Some(pattern(FILE_MIN, 1)));
        assert!(get(1, 1) == Some(pattern(FILE_MIN - 1, 3)));
        assert!(get(1, 2) == Some(pattern(FILE_MIN + 1, 4)));
        assert!(get(2, 5).is_none());
        assert!(get(3, 0) == Some(pattern(FILE_MIN * 2, 6)));
        assert!(get(3, 1) == Some(pattern(20, 8)));
    }

    fn block_key(core: u8, index: u64) -> Vec<u8> {
        let mut k = vec![core; 32];
        k.extend_from_slice(&index.to_be_bytes());
        k
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn memory_and_disk_agree() {
        exercise(&Kv::memory());
        let dir = tempfile::tempdir().unwrap();
        exercise(&Kv::open(dir.path()).unwrap());
        let kv = Kv::open(dir.path()).unwrap();
        assert_eq!(kv.get(Space::Meta, b"a1").unwrap().unwrap(), b"x2");
        assert_eq!(
            kv.get(Space::Blocks, b"a1").unwrap().unwrap(),
            vec![7; 5000]
        );
        check_blocks(&kv);
        // Large blocks are in the data files, not in the database's journal.
        let data = dir.path().join(DATA_DIR);
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 3);
    }

    #[test]
    fn a_data_file_cut_short_reads_as_damaged_and_bytes_no_record_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(1, 0), pattern(FILE_MIN, 1));
        b.put(Space::Blocks, block_key(1, 1), pattern(FILE_MIN, 2));
        kv.commit(b).unwrap();
        kv.persist().unwrap();
        drop(kv);
        let file = dir.path().join(DATA_DIR).join(hex::encode([1u8; 32]));
        let f = File::options().write(true).open(&file).unwrap();
        f.set_len(FILE_MIN as u64 + 10).unwrap();
        drop(f);
        let kv = Kv::open(dir.path()).unwrap();
        assert!(kv.get(Space::Blocks, &block_key(1, 0)).unwrap() == Some(pattern(FILE_MIN, 1)));
        let e = kv.get(Space::Blocks, &block_key(1, 1)).unwrap_err();
        assert!(e.corrupt, "{e}");
        // Written again (a peer's copy), the block goes after the cut bytes.
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(1, 1), pattern(FILE_MIN, 2));
        kv.commit(b).unwrap();
        assert!(kv.get(Space::Blocks, &block_key(1, 1)).unwrap() == Some(pattern(FILE_MIN, 2)));
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            2 * FILE_MIN as u64 + 10
        );
    }

    #[test]
    fn a_changed_byte_in_a_data_file_reads_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(Space::Blocks, block_key(1, 0), pattern(FILE_MIN, 1));
        b.put(Space::Blocks, block_key(1, 1), pattern(FILE_MIN, 2));
        kv.commit(b).unwrap();
        let (v, summed) = kv.get_block(&block_key(1, 1)).unwrap().unwrap();
        assert!(summed && v == pattern(FILE_MIN, 2));
        let file = dir.path().join(DATA_DIR).join(hex::encode([1u8; 32]));
        let f = File::options().write(true).open(&file).unwrap();
        f.write_all_at(&[0xff], FILE_MIN as u64 + 77).unwrap();
        let e = kv.get_block(&block_key(1, 1)).unwrap_err();
        assert!(e.corrupt, "{e}");
        assert!(kv.get_block(&block_key(1, 0)).unwrap().unwrap().1);
    }

    #[test]
    fn a_synced_batch_writes_small_file_blocks_once_in_gathered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = |core: u8| dir.path().join(DATA_DIR).join(hex::encode([core; 32]));
        // Sizes around both thresholds and the gathering limit, one larger than it in the
        // middle, over two cores.
        let mut sizes: Vec<usize> = vec![SYNCED_FILE_MIN - 1, SYNCED_FILE_MIN, 5000, FILE_MIN];
        sizes.extend(std::iter::repeat_n(70_000, 20));
        sizes.push(GATHER + 3);
        sizes.extend(std::iter::repeat_n(SYNCED_FILE_MIN + 7, 300));
        let blocks: Vec<(Vec<u8>, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                (
                    block_key(1 + (i % 2) as u8, i as u64),
                    pattern(len, i as u8),
                )
            })
            .collect();
        {
            let kv = Kv::open(dir.path()).unwrap();
            // Not synced: a block under FILE_MIN stays in the database.
            let mut b = Batch::default();
            b.put(Space::Blocks, block_key(3, 0), pattern(SYNCED_FILE_MIN, 9));
            kv.commit(b).unwrap();
            assert!(!file(3).exists());
            let mut b = Batch::default();
            for (k, v) in &blocks {
                b.put(Space::Blocks, k.clone(), v.clone());
            }
            b.synced();
            kv.commit(b).unwrap();
            // The data files are synced as the commit returns (the persist after it, the
            // caller's, then makes the journal that names them durable).
            for core in [1u8, 2] {
                let f = d(&kv).files.get(&[core; 32]).unwrap();
                assert!(
                    !f.end.lock().unwrap().1,
                    "core {core}'s data file not synced"
                );
            }
            kv.persist().unwrap();
            assert!(!*d(&kv).dirty.lock().unwrap());
            for (k, v) in &blocks {
                assert!(
                    kv.get(Space::Blocks, k).unwrap().as_ref() == Some(v),
                    "{k:?}"
                );
            }
        }
        let kv = Kv::open(dir.path()).unwrap();
        for (k, v) in &blocks {
            let (got, in_file) = kv.get_block(k).unwrap().unwrap();
            assert!(got == *v, "{k:?}");
            assert_eq!(in_file, v.len() >= SYNCED_FILE_MIN, "{} bytes", v.len());
        }
        // Each file holds its blocks and nothing else.
        let held = |core: u8| -> u64 {
            blocks
                .iter()
                .filter(|(k, v)| k[0] == core && v.len() >= SYNCED_FILE_MIN)
                .map(|(_, v)| v.len() as u64)
                .sum()
        };
        for core in [1, 2] {
            assert_eq!(std::fs::metadata(file(core)).unwrap().len(), held(core));
        }
    }

    fn d(kv: &Kv) -> &Disk {
        let Kv::Disk(d) = kv else { unreachable!() };
        d
    }

    #[test]
    fn a_deleted_file_block_gives_its_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(dir.path()).unwrap();
        let mut b = Batch::default();
        for i in 0..64 {
            b.put(Space::Blocks, block_key(1, i), pattern(64 * 1024, i as u8));
        }
        kv.commit(b).unwrap();
        kv.persist().unwrap();
        let file = dir.path().join(DATA_DIR).join(hex::encode([1u8; 32]));
        let used = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&file).unwrap().blocks() * 512
        };
        let before = used();
        assert!(before >= 4 * 1024 * 1024, "{before}");
        let mut b = Batch::default();
        for i in 0..64 {
            b.delete(Space::Blocks, block_key(1, i));
        }
        kv.commit(b).unwrap();
        assert!(used() < before / 2, "{} of {before}", used());
        assert_eq!(kv.get(Space::Blocks, &block_key(1, 3)).unwrap(), None);
    }
}
