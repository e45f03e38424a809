//! The merged view of a [`CoDrive`]: every writer's records and files loaded from its log, and
//! merged by [`view`](super::view). Loads are cached per (writer, length) and the last view is
//! kept, so that when one writer grows only that writer is read again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use cohd_format::{path, sub, Entry, Key};

use super::frontier::Frontier;
use super::open::{CoDrive, CoDriveError};
use super::records;
use super::view::{self, Clock, MemberRecord, PathVersion, View, WriterData};
use crate::bee::{Bee, BeeEntry, Range};
use crate::drive::{Drive, DriveError};

/// Loaded writer logs by (writer, fork, length), with when each was last used: a writer that
/// truncates and appends back to the same length has other blocks at that length.
#[derive(Debug, Default)]
pub(super) struct Loads {
    tick: u64,
    by_length: BTreeMap<(Key, u64, u64), (Arc<WriterData>, u64)>,
}

/// Every writer's data, as merged into a view.
type Merged = BTreeMap<Key, Arc<WriterData>>;

/// Loaded lengths kept per writer.
const LOADS_PER_WRITER: usize = 2;

/// The last computed view, and the writers the store did not hold when it was computed. Blocks
/// never change once written, so while every writer's length is the frontier's and those
/// writers are still not held, the view is the same and reads need not reload every writer.
#[derive(Debug)]
pub(super) struct Cached {
    computed: Computed,
    unheld: BTreeSet<Key>,
    /// The writers' data the view was merged from (to merge only what changed next time).
    data: Merged,
    /// Each frontier writer's fork, read just after the view was computed (a fork that lands
    /// while computing shows at the writer's next change of length).
    forks: BTreeMap<Key, u64>,
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

impl CoDrive {
    /// [`load`](Self::load) through the cache of loaded lengths.
    async fn load_cached(&self, d: &Drive) -> Result<Arc<WriterData>, CoDriveError> {
        let at = (d.key(), d.db().core().fork(), d.version());
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
            let mine: Vec<(u64, (u64, u64))> = loads
                .by_length
                .range((at.0, 0, 0)..=(at.0, u64::MAX, u64::MAX))
                .map(|((_, f, l), (_, used))| (*used, (*f, *l)))
                .collect();
            if mine.len() <= LOADS_PER_WRITER {
                break;
            }
            if let Some((_, oldest)) = mine.into_iter().min() {
                loads.by_length.remove(&(at.0, oldest.0, oldest.1));
            }
        }
        Ok(data)
    }

    /// Reads one writer's records and files from `d` (a checkout, so that every read sees the
    /// same length).
    pub(super) async fn load(&self, d: &Drive) -> Result<WriterData, CoDriveError> {
        let mut data = WriterData {
            members: members_of(d).await?,
            ..WriterData::default()
        };
        let mut versions = Versions::new(d);
        while let Some((p, v)) = versions.next().await? {
            data.versions.insert(p, vec![v]);
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
        let mut forks = BTreeMap::new();
        for (k, _) in computed.frontier.iter() {
            if let Some(d) = self.drive(*k).await? {
                forks.insert(*k, d.db().core().fork());
            }
        }
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
            computed: computed.clone(),
            unheld,
            data,
            forks,
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
                    let limited = self.load_cached(&d.at(*limit)?).await?;
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

    /// The view at version `at` (see [`CoDrive::checkout`]): the cached one if it is that
    /// version, else computed from the logs checked out there.
    pub(super) async fn compute_checkout(&self, at: &Frontier) -> Result<Computed, CoDriveError> {
        let current = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|c| c.computed.frontier == *at)
            .map(|c| c.computed.clone());
        match current {
            Some(c) => Ok(c),
            None => Ok(self.compute_at(Some(at), None).await?.0),
        }
    }

    /// The cached view, if no writer it was computed from has changed and no writer it lacked
    /// has appeared in the store.
    async fn cached(&self) -> Result<Option<Computed>, CoDriveError> {
        let (frontier, unheld, forks) = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match c.as_ref() {
                None => return Ok(None),
                Some(c) => (
                    c.computed.frontier.clone(),
                    c.unheld.clone(),
                    c.forks.clone(),
                ),
            }
        };
        for (k, len) in frontier.iter() {
            let d = self.drive(*k).await?;
            let now = d.as_ref().map_or(0, readable);
            // A writer that truncated and appended back to the same length has other blocks.
            let fork = d.map(|d| d.db().core().fork());
            if now != *len || fork != forks.get(k).copied() {
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
}

/// A writer's version record of a path: (seq, clock, deleted, time).
pub(super) type Record = (u64, Clock, bool, Option<u64>);

/// The version record of `p` stored at `seq` with `value`, if it counts: only normalized paths
/// (a record for `/a/../b` would show a path no file can have), and a malformed record is
/// ignored (not trusted, not fatal), as every peer ignores it.
pub(super) fn record_of(p: &str, seq: u64, value: &[u8]) -> Option<Record> {
    if p.len() < 2 || !p.starts_with('/') || p != path::resolve(p) {
        return None;
    }
    let (clock, deleted, time) = records::decode_version(value).ok()?;
    Some((seq, clock, deleted, time))
}

/// One writer's version of a path, from its record and its file entry (seq, entry) as its log
/// holds them at one length; `None` if the writer shows no version of it.
pub(super) fn writer_version(
    writer: Key,
    record: Option<Record>,
    file: Option<(u64, Entry)>,
) -> Option<PathVersion> {
    match (record, file) {
        // A file written without a record (plain Hyperdrive writes, or JavaScript peers), or
        // rewritten by one after the record: a version that has seen nothing but its own
        // writer's log.
        (None, Some((seq, entry))) => Some(plain(writer, seq, entry)),
        (Some((rseq, ..)), Some((seq, entry))) if seq > rseq => Some(plain(writer, seq, entry)),
        (Some((seq, clock, deleted, time)), file) => {
            let entry = match (deleted, file) {
                (true, _) => None,
                (false, Some((_, e))) => Some(e),
                // A record without its file: malformed, ignored.
                (false, None) => return None,
            };
            Some(PathVersion {
                writer,
                seq,
                clock,
                entry,
                time,
            })
        }
        (None, None) => None,
    }
}

fn plain(writer: Key, seq: u64, entry: Entry) -> PathVersion {
    PathVersion {
        writer,
        seq,
        clock: [(writer, seq)].into_iter().collect(),
        entry: Some(entry),
        time: None,
    }
}

/// How much of a writer's log the view reads: the longest signed version held locally. A log
/// whose newest blocks have not all arrived (a peer's upgrade came first, or the transfer
/// stopped) is read at the last whole version before them instead of failing on a missing
/// block (never mid-batch: that would show a broken tree).
pub(super) fn readable(d: &Drive) -> u64 {
    d.version().min(d.db().core().consistent_length())
}

/// A writer's membership records in `d` (a checkout), in write order. A malformed record is
/// ignored (not trusted, not fatal): other peers do the same.
pub(crate) async fn members_of(d: &Drive) -> Result<Vec<MemberRecord>, CoDriveError> {
    let mut out = Vec::new();
    for e in d
        .db()
        .range(&records::members())
        .await
        .map_err(DriveError::from)?
    {
        if let Ok((op, frontier)) = records::decode_member(&e.value) {
            out.push(MemberRecord {
                seq: e.seq,
                op,
                frontier,
            });
        }
    }
    out.sort_by_key(|m| m.seq);
    Ok(out)
}

/// Entries read per page of a writer's log ([`Versions`]): a few in tests, so that reads span
/// pages.
const PAGE: usize = if cfg!(test) { 8 } else { 4096 };

/// A writer's version of every path at a drive's version (`d`, a checkout), in path order, read
/// a page at a time from its version records and its file entries side by side: memory bounded,
/// each tree node read once. What the full merge loads ([`CoDrive::load`] collects it), and what
/// the index rebuilds a writer's rows from.
pub(super) struct Versions<'d> {
    d: &'d Drive,
    records: Pages<'d>,
    files: Pages<'d>,
}

impl<'d> Versions<'d> {
    pub(super) fn new(d: &'d Drive) -> Self {
        Self {
            d,
            records: Pages::new(d.db(), records::versions()),
            files: Pages::new(d.db(), Drive::files_range()),
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<(String, PathVersion)>, CoDriveError> {
        loop {
            self.records.fill().await?;
            self.files.fill().await?;
            // The smaller path next; both sides when they name the same one. (A key that names
            // no path sorts first, and is skipped below.)
            let r = self
                .records
                .front()
                .map(|e| records::version_path(&e.key).unwrap_or_default());
            let f = self
                .files
                .front()
                .map(|e| sub::decode(sub::FILES, &e.key).unwrap_or_default());
            let (take_r, take_f) = match (r, f) {
                (None, None) => return Ok(None),
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, true),
                (Some(a), Some(b)) => (a <= b, b <= a),
            };
            let record = if take_r { self.records.pop() } else { None };
            let file = if take_f { self.files.pop() } else { None };
            let record = record.and_then(|e| {
                let p = std::str::from_utf8(records::version_path(&e.key)?).ok()?;
                Some((p.to_string(), record_of(p, e.seq, &e.value)?))
            });
            // Another writer's malformed entries are ignored, as every peer ignores them.
            let file = file.and_then(|e| match self.d.valid_entry(e) {
                Ok(e) => Some(e),
                Err(err) => {
                    tracing::warn!(drive = %self.d.key(), "skipping a malformed entry: {err}");
                    None
                }
            });
            let p = match (&record, &file) {
                (Some((p, _)), _) => p.clone(),
                (None, Some(e)) => e.path.clone(),
                (None, None) => continue,
            };
            let file = file.map(|e| (e.seq, e.entry));
            if let Some(v) = writer_version(self.d.key(), record.map(|(_, r)| r), file) {
                return Ok(Some((p, v)));
            }
        }
    }
}

/// The entries of a range of a bee, read a page at a time.
struct Pages<'b> {
    bee: &'b Bee,
    range: Range,
    page: VecDeque<BeeEntry>,
    done: bool,
}

impl<'b> Pages<'b> {
    fn new(bee: &'b Bee, range: Range) -> Self {
        Self {
            bee,
            range,
            page: VecDeque::new(),
            done: false,
        }
    }

    /// Reads the next page if this one is used up.
    async fn fill(&mut self) -> Result<(), CoDriveError> {
        if self.page.is_empty() && !self.done {
            let mut r = self.range.clone();
            r.limit = Some(PAGE);
            let page = self.bee.range(&r).await.map_err(DriveError::from)?;
            self.done = page.len() < PAGE;
            if let Some(last) = page.last() {
                self.range.start = std::ops::Bound::Excluded(last.key.clone());
            }
            self.page = page.into();
        }
        Ok(())
    }

    fn front(&self) -> Option<&BeeEntry> {
        self.page.front()
    }

    fn pop(&mut self) -> Option<BeeEntry> {
        self.page.pop_front()
    }
}
