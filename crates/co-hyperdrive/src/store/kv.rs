//! Where the store keeps its bytes: three ordered key spaces (block values, tree nodes, core
//! metadata) with atomic batches across them. On disk that is one fjall database (one journal,
//! one `fdatasync` per durable commit, a torn batch discarded whole on recovery: see
//! `docs/storage-spike.md`); in memory a `BTreeMap` per space, for tests and examples.
//!
//! Everything above this file sees only [`Kv`]: blocks could move to append-only files later
//! without the core noticing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

/// A key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// Key-value pairs, in key order.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes that commit together.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// `None` deletes.
    ops: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub(crate) fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((space, key, Some(value)));
    }

    pub(crate) fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push((space, key, None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
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

pub(crate) struct Disk {
    db: fjall::Database,
    spaces: Vec<fjall::Keyspace>,
    /// Commits since the last durable persist (so that an idle flush costs nothing).
    dirty: Mutex<bool>,
}

impl Kv {
    pub(crate) fn memory() -> Self {
        Kv::Memory(RwLock::default())
    }

    /// Opens (creating) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, KvError> {
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
        Ok(Kv::Disk(Disk {
            db,
            spaces,
            dirty: Mutex::new(false),
        }))
    }

    pub(crate) fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Kv::Memory(m) => Ok(m
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(space, key.to_vec()))
                .cloned()),
            Kv::Disk(d) => Ok(d.space(space).get(key)?.map(|v| v.to_vec())),
            #[cfg(test)]
            Kv::Faulty(inner, f) => {
                if f.fail() {
                    return Err(KvError::io("injected read fault"));
                }
                inner.get(space, key)
            }
        }
    }

    /// At most `limit` entries with keys in `start..end`, in key order.
    pub(crate) fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, KvError> {
        if start >= end {
            return Ok(Vec::new());
        }
        match self {
            Kv::Memory(m) => Ok(m
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .range((space, start.to_vec())..(space, end.to_vec()))
                .take(limit)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()),
            Kv::Disk(d) => {
                let mut out = Vec::new();
                for g in d.space(space).range(start..end).take(limit) {
                    let (k, v) = g.into_inner()?;
                    out.push((k.to_vec(), v.to_vec()));
                }
                Ok(out)
            }
            #[cfg(test)]
            Kv::Faulty(inner, f) => {
                if f.fail() {
                    return Err(KvError::io("injected read fault"));
                }
                inner.scan(space, start, end, limit)
            }
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
                        Some(v) => m.insert((s, k), v),
                        None => m.remove(&(s, k)),
                    };
                }
                Ok(())
            }
            Kv::Disk(d) => {
                let mut b = d.db.batch().durability(Some(fjall::PersistMode::Buffer));
                for (s, k, v) in batch.ops {
                    match v {
                        Some(v) => b.insert(d.space(s), k, v),
                        None => b.remove(d.space(s), k),
                    }
                }
                b.commit()?;
                *d.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
                Ok(())
            }
            #[cfg(test)]
            Kv::Faulty(inner, f) => {
                if f.fail() {
                    return Err(KvError::io("injected commit fault"));
                }
                inner.commit(batch)
            }
        }
    }

    /// Makes every committed batch durable.
    pub(crate) fn persist(&self) -> Result<(), KvError> {
        match self {
            Kv::Memory(_) => Ok(()),
            #[cfg(test)]
            Kv::Faulty(..) => Ok(()),
            Kv::Disk(d) => {
                let mut dirty = d.dirty.lock().unwrap_or_else(|e| e.into_inner());
                if *dirty {
                    d.db.persist(fjall::PersistMode::SyncData)?;
                    *dirty = false;
                }
                Ok(())
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
