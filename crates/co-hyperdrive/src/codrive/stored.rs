//! The merged index kept on disk, so that a read costs O(log n) whatever the drive's size
//! (design: `docs/index.md`).
//!
//! It lives in the store's `codrive-index` key space, per co-drive (keys start with the
//! primary's key):
//!
//! - `P W <writer>`: what the rows reflect of that writer ([`WriterMeta`]): the length its
//!   membership records were read at, the length its rows reflect (its whole readable log, or
//!   a removed writer's log up to its limit), its fork, and its membership records.
//! - `P R <path> 00 00 <writer>`: that writer's version of the path at that length (a path's
//!   bytes have `00` escaped as `00 ff`, so rows sort by path, then writer).
//!
//! A read resolves a path from its rows (one per writer that has a version of it), keeping the
//! writers that count (current ones, and removed ones, whose rows stop at their limit): the same
//! candidates and the same rule as the full merge in [`view`](super::view), so the same
//! winners and concurrent versions. The writer set is replayed from the stored membership
//! records, as the full merge does.
//!
//! The index is derived from the cores and never ahead of them: [`CoDrive::indexed`] first
//! brings every writer's rows to its length now, from the blocks between the length they
//! reflect and that one (a path touched there is looked up again at the new length: the same
//! lookup whether the writer grew, or its limit moved back). A refresh that stops midway (a
//! crash) leaves the range it was applying marked, and the next one applies it again; a writer
//! whose rows cannot be trusted (a new fork, a block that does not read) is rebuilt from its
//! log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;

use cohd_format::{path, sub, Entry, Key};
use serde::{Deserialize, Serialize};

use super::frontier::Frontier;
use super::index::{members_of, readable, record_of, writer_version, Versions};
use super::open::{is_valid_key, CoDrive, CoDriveError};
use super::records;
use super::snapshot::{CoEntry, ContentPlan};
use super::view::{self, MemberRecord, PathVersion, Resolved, View, WriterData};
use crate::bee::Bee;
use crate::blobs::BlobError;
use crate::drive::{Drive, DriveError};
use crate::store::{IndexPin, Store, StoreError};

/// Tag of the rows.
const ROWS: u8 = b'R';
/// Tag of the writers' metadata.
const WRITERS: u8 = b'W';
/// The layout's version: metadata of another version is rebuilt.
const FORMAT: u32 = 1;
/// Rows read from the database at a time.
const PAGE: usize = 1024;
/// Blocks applied (and rows written) per commit, which bounds a refresh's memory (tests: a few,
/// so that refreshes span several commits and stop between them).
const CHUNK: u64 = if cfg!(test) { 8 } else { 4096 };

/// One refresh at a time in a process: two would both write the same writer's rows.
fn refresh_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// What the rows of one writer reflect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WriterMeta {
    format: u32,
    fork: u64,
    /// The log length its membership records were read at.
    length: u64,
    /// The log length its rows reflect.
    counted: u64,
    /// Blocks whose paths' rows may reflect another length (a refresh stopped midway).
    pending: Option<(u64, u64)>,
    /// The rows may be anything (a rebuild stopped midway): drop them and rebuild.
    rebuilding: bool,
    /// Membership records: (seq, record as [`records::encode_member`] writes it).
    members: Vec<(u64, String)>,
}

fn encode_members(members: &[MemberRecord]) -> Vec<(u64, String)> {
    members
        .iter()
        .map(|m| {
            let bytes = records::encode_member(m.op, &m.frontier);
            (m.seq, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

fn decode_members(members: &[(u64, String)]) -> Vec<MemberRecord> {
    members
        .iter()
        .filter_map(|(seq, r)| {
            let (op, frontier) = records::decode_member(r.as_bytes()).ok()?;
            Some(MemberRecord {
                seq: *seq,
                op,
                frontier,
            })
        })
        .collect()
}

fn damaged(what: impl Into<String>) -> CoDriveError {
    CoDriveError::IndexDamaged(what.into())
}

fn store_err(e: StoreError) -> CoDriveError {
    CoDriveError::Drive(DriveError::Store(e))
}

/// Key layout.
fn tagged(primary: &Key, tag: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(34 + 64);
    k.extend_from_slice(&primary.0);
    k.push(tag);
    k
}

fn escape_into(out: &mut Vec<u8>, p: &[u8]) {
    for &b in p {
        if b == 0 {
            out.extend_from_slice(&[0, 0xff]);
        } else {
            out.push(b);
        }
    }
}

fn meta_key(primary: &Key, writer: &Key) -> Vec<u8> {
    let mut k = tagged(primary, WRITERS);
    k.extend_from_slice(&writer.0);
    k
}

/// The rows of `path`: `start..end`.
fn path_rows(primary: &Key, p: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = tagged(primary, ROWS);
    escape_into(&mut start, p.as_bytes());
    start.extend_from_slice(&[0, 0]);
    let mut end = start.clone();
    *end.last_mut().unwrap_or(&mut 0) = 1;
    (start, end)
}

fn row_key(primary: &Key, p: &str, writer: &Key) -> Vec<u8> {
    let mut k = path_rows(primary, p).0;
    k.extend_from_slice(&writer.0);
    k
}

/// Where the rows of paths from `p` on start.
fn seek_key(primary: &Key, p: &str) -> Vec<u8> {
    let mut k = tagged(primary, ROWS);
    escape_into(&mut k, p.as_bytes());
    k
}

/// Rows of every path under folder `f` (normalized, `""` for the root): paths from `f/` up to
/// `f0`.
fn folder_rows(primary: &Key, f: &str) -> (Vec<u8>, Vec<u8>) {
    (
        seek_key(primary, &format!("{f}/")),
        seek_key(primary, &format!("{f}0")),
    )
}

/// (path, writer) of a row key (without the primary and tag).
fn parse_row_key(k: &[u8]) -> Option<(String, Key)> {
    let mut p = Vec::new();
    let mut i = 0;
    loop {
        match (k.get(i)?, k.get(i + 1)) {
            (0, Some(0)) => break,
            (0, Some(0xff)) => {
                p.push(0);
                i += 2;
            }
            (0, _) => return None,
            (b, _) => {
                p.push(*b);
                i += 1;
            }
        }
    }
    let w: [u8; 32] = k.get(i + 2..)?.try_into().ok()?;
    Some((String::from_utf8(p).ok()?, Key(w)))
}

/// A row's value: seq, time, clock, entry.
fn encode_row(v: &PathVersion) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + v.clock.len() * 40);
    out.extend_from_slice(&v.seq.to_be_bytes());
    match v.time {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(v.clock.len() as u32).to_be_bytes());
    for (k, s) in &v.clock {
        out.extend_from_slice(&k.0);
        out.extend_from_slice(&s.to_be_bytes());
    }
    match &v.entry {
        Some(e) => {
            out.push(1);
            out.extend_from_slice(&e.encode());
        }
        None => out.push(0),
    }
    out
}

fn decode_row(writer: Key, b: &[u8]) -> Option<PathVersion> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    fn u64_of(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(take(b, 8)?.try_into().ok()?))
    }
    let mut b = b;
    let seq = u64_of(&mut b)?;
    let time = match take(&mut b, 1)?[0] {
        0 => None,
        _ => Some(u64_of(&mut b)?),
    };
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
    let mut clock = view::Clock::new();
    for _ in 0..n {
        let k: [u8; 32] = take(&mut b, 32)?.try_into().ok()?;
        clock.insert(Key(k), u64_of(&mut b)?);
    }
    let entry = match take(&mut b, 1)?[0] {
        0 => None,
        _ => Some(Entry::decode(b).ok()?),
    };
    Some(PathVersion {
        writer,
        seq,
        clock,
        entry,
        time,
    })
}

/// What a refresh found: the version the index now reflects and the writer set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexState {
    /// Every writer the records mention that the store holds, at its readable length.
    pub(crate) frontier: Frontier,
    pub(crate) writers: BTreeMap<Key, Option<u64>>,
    pub(crate) removed: BTreeMap<Key, u64>,
    /// Writers (current or removed) the store does not hold.
    pub(crate) missing: BTreeSet<Key>,
    /// Writers whose rows count: current or removed, and held.
    counted: BTreeSet<Key>,
}

/// How a refresh may stop (tests: a crash between index writes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crash {
    /// Index commits allowed before the "crash"; `u64::MAX`: none.
    pub(crate) after_commits: u64,
}

struct Commits<'c> {
    co: &'c CoDrive,
    left: u64,
}

impl Commits<'_> {
    fn commit(&mut self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), CoDriveError> {
        if self.left == 0 {
            return Err(damaged("simulated crash"));
        }
        self.left -= 1;
        self.co.store.index_commit(ops).map_err(store_err)
    }

    fn meta(&mut self, writer: &Key, m: &WriterMeta) -> Result<(), CoDriveError> {
        let v = serde_json::to_vec(m).map_err(|e| damaged(e.to_string()))?;
        self.commit(vec![(meta_key(&self.co.primary, writer), Some(v))])
    }
}

impl CoDrive {
    /// The merged view read from the index kept on disk, brought up to date with every
    /// writer's log first (see the module docs): lookups cost O(log n) and listings stream,
    /// whatever the drive's size. Every read of it sees the index as it stood when it was made
    /// (a snapshot of the database), whatever another [`CoDrive::indexed`] refreshes meanwhile;
    /// make a new one to see later writes (or [`CoDrive::snapshot`] for a view in memory, and
    /// to write).
    pub async fn indexed(&self) -> Result<Indexed<'_>, CoDriveError> {
        let _one = refresh_lock().lock().await;
        let state = self.refresh_index_locked(None).await?;
        // Taken before another refresh may write: every read of the `Indexed` sees the rows
        // `state` describes, whatever is refreshed meanwhile.
        let pin = self.store.index_pin();
        Ok(Indexed {
            co: self,
            state,
            pin,
        })
    }

    /// Calls `f` with each page of the index's entries in `start..end`, in key order (memory
    /// bounded by a page).
    fn scan_pages(
        &self,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), CoDriveError>,
    ) -> Result<(), CoDriveError> {
        let mut from = start.to_vec();
        loop {
            let page = self
                .store
                .index_scan(None, &from, end, PAGE)
                .map_err(store_err)?;
            let n = page.len();
            if let Some((k, _)) = page.last() {
                from = k.clone();
                from.push(0);
            }
            f(page)?;
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Every writer's metadata in the index.
    fn index_metas(&self) -> Result<BTreeMap<Key, WriterMeta>, CoDriveError> {
        let start = tagged(&self.primary, WRITERS);
        let end = tagged(&self.primary, WRITERS + 1);
        let mut out = BTreeMap::new();
        self.scan_pages(&start, &end, |page| {
            for (k, v) in page {
                let w: [u8; 32] = k
                    .get(start.len()..)
                    .and_then(|w| w.try_into().ok())
                    .ok_or_else(|| damaged("a writer's key"))?;
                // Metadata that does not read is rebuilt, like that of another format.
                if let Ok(m) = serde_json::from_slice::<WriterMeta>(&v) {
                    out.insert(Key(w), m);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Brings the index up to every writer's readable length (`crash`: tests stop it after
    /// some commits, as a crash would).
    pub(crate) async fn refresh_index(
        &self,
        crash: Option<Crash>,
    ) -> Result<IndexState, CoDriveError> {
        let _one = refresh_lock().lock().await;
        self.refresh_index_locked(crash).await
    }

    /// [`refresh_index`](Self::refresh_index), its caller holding the refresh lock.
    async fn refresh_index_locked(&self, crash: Option<Crash>) -> Result<IndexState, CoDriveError> {
        let mut commits = Commits {
            co: self,
            left: crash.map_or(u64::MAX, |c| c.after_commits),
        };
        let metas = self.index_metas()?;
        // The writers to read, as the full merge finds them: the primary, the local writer, and
        // every writer their records mention, transitively.
        let mut data: BTreeMap<Key, WriterData> = BTreeMap::new();
        let mut drives: BTreeMap<Key, (Drive, u64)> = BTreeMap::new();
        // Writers whose cores' metadata says the index has all of them: not opened (opening a
        // core reads its tree's roots and checks its signature; at 16 writers that was most of
        // what a `stat` of a big drive cost). Opened below only if their rows need work.
        let mut unopened: BTreeMap<Key, u64> = BTreeMap::new();
        let mut frontier = BTreeMap::new();
        let mut absent = BTreeSet::new();
        let mut todo = vec![self.primary, self.own.key()];
        while let Some(k) = todo.pop() {
            if data.contains_key(&k) || absent.contains(&k) {
                continue;
            }
            // Up to date as far as the core's metadata says: no need to open it.
            let unchanged = match metas.get(&k).filter(|m| {
                m.format == FORMAT && !m.rebuilding && m.pending.is_none() && is_valid_key(&k)
            }) {
                Some(m) => self
                    .store
                    .peek_consistent(&k)
                    .map_err(store_err)?
                    .filter(|&(fork, len)| (fork, len) == (m.fork, m.length))
                    .map(|(_, len)| (decode_members(&m.members), len)),
                None => None,
            };
            let (members, len) = match unchanged {
                Some((members, len)) => {
                    unopened.insert(k, len);
                    (members, len)
                }
                None => {
                    let Some(d) = self.drive(k).await? else {
                        // Held but empty: nothing to show, yet not missing.
                        if self.store.has_core(&k) {
                            frontier.insert(k, 0);
                        }
                        absent.insert(k);
                        continue;
                    };
                    let len = readable(&d);
                    let fork = d.db().core().info().fork;
                    let members = match metas.get(&k) {
                        Some(m) if m.format == FORMAT && m.fork == fork && m.length == len => {
                            decode_members(&m.members)
                        }
                        _ => members_of(&d.at(len)?).await?,
                    };
                    drives.insert(k, (d, len));
                    (members, len)
                }
            };
            frontier.insert(k, len);
            data.insert(
                k,
                WriterData {
                    members,
                    ..WriterData::default()
                },
            );
            todo.extend(
                view::mentioned(&data)
                    .into_iter()
                    .filter(|m| !data.contains_key(m) && !absent.contains(m)),
            );
        }
        let (writers, removed) = view::writers(self.primary, &data);
        for (k, len) in unopened {
            let target = removed.get(&k).map_or(len, |l| (*l).min(len));
            if metas.get(&k).is_some_and(|m| m.counted == target) {
                continue;
            }
            // A limit that changed since: the rows past it need work, through the drive.
            match self.drive(k).await? {
                Some(d) => {
                    drives.insert(k, (d, len));
                }
                None => return Err(damaged("a writer's drive the index has rows of")),
            }
        }
        for (k, (d, len)) in &drives {
            // A removed writer counts up to its limit.
            let target = removed.get(k).map_or(*len, |l| (*l).min(*len));
            let members = encode_members(&data[k].members);
            let from = metas.get(k).map_or(0, |m| m.counted);
            // A long catch-up reads the writer's blocks through a handle of its own, whose
            // block cache goes when it is done (the shared one keeps up to 65,536 decoded
            // blocks per writer: 1 GiB over 16 writers of 62,500 files).
            let fresh;
            let d = if from.abs_diff(target) > CHUNK {
                fresh = Drive::open_key(&self.store, *k).await?;
                &fresh
            } else {
                d
            };
            self.bring_forward(&mut commits, *k, d, *len, target, members, metas.get(k))
                .await?;
        }
        let mut missing = absent;
        missing.retain(|k| {
            (writers.contains_key(k) || removed.contains_key(k)) && !frontier.contains_key(k)
        });
        let counted = writers
            .keys()
            .chain(removed.keys())
            // Read, opened or not (held but empty ones are in the frontier, not here).
            .filter(|k| data.contains_key(k))
            .copied()
            .collect();
        Ok(IndexState {
            frontier: Frontier::from(frontier),
            writers,
            removed,
            missing,
            counted,
        })
    }

    /// Brings writer `k`'s rows to `target` (and its metadata to `len`).
    #[allow(clippy::too_many_arguments)]
    async fn bring_forward(
        &self,
        commits: &mut Commits<'_>,
        k: Key,
        d: &Drive,
        len: u64,
        target: u64,
        members: Vec<(u64, String)>,
        old: Option<&WriterMeta>,
    ) -> Result<(), CoDriveError> {
        let meta = WriterMeta {
            format: FORMAT,
            fork: d.db().core().info().fork,
            length: len,
            counted: target,
            pending: None,
            rebuilding: false,
            members,
        };
        // Rows of this format and fork, not left midway through a rebuild.
        let trusted = old.filter(|m| m.format == FORMAT && m.fork == meta.fork && !m.rebuilding);
        if let Some(m) = trusted.filter(|m| m.counted == target && m.pending.is_none()) {
            if *m != meta {
                commits.meta(&k, &meta)?;
            }
            return Ok(());
        }
        // Only between two lengths the writer committed (what it holds readable: signed batch
        // ends) do the rows change just where the blocks in between write. A removal's limit
        // can be any length, inside one of the writer's batches too, where its tree is not
        // one of its versions: a writer counted up to a limit, before or after, is rebuilt.
        if let Some(m) = trusted.filter(|m| m.counted == m.length && target == len) {
            // The paths whose rows may change: those the blocks between the two lengths touch
            // (and those a stopped refresh was applying).
            let (mut lo, mut hi) = (m.counted.min(target), m.counted.max(target));
            if let Some((a, b)) = m.pending {
                lo = lo.min(a);
                hi = hi.max(b);
            }
            match self
                .reapply(commits, k, d, (lo, hi), target, m, &meta)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if commits.left == 0 => return Err(e),
                // A block that does not read (never written whole, or hostile): rebuild.
                Err(e) => tracing::warn!(writer = %k, "rebuilding the index of a writer: {e}"),
            }
        }
        // A writer new to the index has no rows to drop: its versions are read in path order
        // (memory bounded, each tree node once), marked as rebuilding until done, so a stop
        // midway is taken up again.
        self.rebuild_writer(commits, k, d, target, old.is_some(), meta)
            .await
    }

    /// Applies blocks `range` of writer `k`: every path they touch gets its row at `target`.
    #[allow(clippy::too_many_arguments)]
    async fn reapply(
        &self,
        commits: &mut Commits<'_>,
        k: Key,
        d: &Drive,
        (lo, hi): (u64, u64),
        target: u64,
        old: &WriterMeta,
        meta: &WriterMeta,
    ) -> Result<(), CoDriveError> {
        commits.meta(
            &k,
            &WriterMeta {
                pending: Some((lo, hi)),
                ..old.clone()
            },
        )?;
        let at = d.db().at(target).map_err(DriveError::from)?;
        // Block 0 is the bee's header.
        let mut seq = lo.max(1);
        while seq < hi {
            let end = hi.min(seq.saturating_add(CHUNK));
            let mut touched = BTreeSet::new();
            for s in seq..end {
                let (key, _) = d.db().block_at(s).await.map_err(DriveError::from)?;
                let p = sub::decode(sub::FILES, &key).or_else(|| records::version_path(&key));
                if let Some(p) = p.and_then(|p| std::str::from_utf8(p).ok()) {
                    touched.insert(p.to_string());
                }
            }
            let mut ops = Vec::with_capacity(touched.len());
            for p in touched {
                let v = version_at(&at, k, &p).await?;
                ops.push((row_key(&self.primary, &p, &k), v.as_ref().map(encode_row)));
            }
            commits.commit(ops)?;
            seq = end;
        }
        commits.meta(&k, meta)
    }

    /// Drops writer `k`'s rows (`wipe`: it may have some) and writes them again from its log at
    /// `target`.
    async fn rebuild_writer(
        &self,
        commits: &mut Commits<'_>,
        k: Key,
        d: &Drive,
        target: u64,
        wipe: bool,
        meta: WriterMeta,
    ) -> Result<(), CoDriveError> {
        commits.meta(
            &k,
            &WriterMeta {
                rebuilding: true,
                ..meta.clone()
            },
        )?;
        if wipe {
            let (start, end) = (tagged(&self.primary, ROWS), tagged(&self.primary, ROWS + 1));
            self.scan_pages(&start, &end, |page| {
                let ops: Vec<_> = page
                    .into_iter()
                    .filter(|(key, _)| key.ends_with(&k.0))
                    .map(|(key, _)| (key, None))
                    .collect();
                if ops.is_empty() {
                    return Ok(());
                }
                commits.commit(ops)
            })?;
        }
        let at = d.at(target)?;
        let mut ops = Vec::new();
        let mut versions = Versions::new(&at);
        while let Some((p, v)) = versions.next().await? {
            ops.push((row_key(&self.primary, &p, &k), Some(encode_row(&v))));
            if ops.len() as u64 >= CHUNK {
                commits.commit(std::mem::take(&mut ops))?;
            }
        }
        if !ops.is_empty() {
            commits.commit(ops)?;
        }
        commits.meta(&k, &meta)
    }

    /// Marks writer `k`'s rows untrustworthy, as a rebuild stopped midway leaves them (tests).
    #[cfg(test)]
    pub(crate) fn index_mark_rebuilding(&self, k: Key) -> Result<(), CoDriveError> {
        if let Some(mut m) = self.index_metas()?.remove(&k) {
            m.rebuilding = true;
            // And a row of a path it never wrote, which the rebuild must drop.
            let stray = PathVersion {
                writer: k,
                seq: 1,
                clock: [(k, 1)].into_iter().collect(),
                entry: None,
                time: None,
            };
            self.store
                .index_commit(vec![(
                    row_key(&self.primary, "/stray", &k),
                    Some(encode_row(&stray)),
                )])
                .map_err(store_err)?;
            Commits { co: self, left: 1 }.meta(&k, &m)?;
        }
        Ok(())
    }
}

/// Writer `writer`'s version of `p` in its db at `at`'s length: what the full merge's load finds
/// for that path (the same record and file checks).
pub(super) async fn version_at(
    at: &Bee,
    writer: Key,
    p: &str,
) -> Result<Option<PathVersion>, CoDriveError> {
    let record = match at
        .get(&records::version_key(p))
        .await
        .map_err(DriveError::from)?
    {
        Some(e) => record_of(p, e.seq, &e.value),
        None => None,
    };
    let file = if p.len() > 1 && p.starts_with('/') {
        at.get(&sub::encode(sub::FILES, p.as_bytes()))
            .await
            .map_err(DriveError::from)?
            .and_then(|e| Some((e.seq, Entry::decode(&e.value).ok()?)))
    } else {
        None
    };
    Ok(writer_version(writer, record, file))
}

/// Rows in key order, grouped by path: a page at a time.
struct Groups<'c> {
    store: &'c Store,
    pin: &'c IndexPin,
    from: Vec<u8>,
    end: Vec<u8>,
    buf: VecDeque<(String, Key, Vec<u8>)>,
    done: bool,
}

impl<'c> Groups<'c> {
    fn new(ix: &'c Indexed<'c>, (from, end): (Vec<u8>, Vec<u8>)) -> Self {
        Self {
            store: &ix.co.store,
            pin: &ix.pin,
            from,
            end,
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> Result<(), CoDriveError> {
        let page = self
            .store
            .index_scan(Some(self.pin), &self.from, &self.end, PAGE)
            .map_err(store_err)?;
        self.done = page.len() < PAGE;
        for (k, v) in page {
            let (p, w) = k
                .get(33..)
                .and_then(parse_row_key)
                .ok_or_else(|| damaged("a row's key"))?;
            self.from = k;
            self.from.push(0);
            self.buf.push_back((p, w, v));
        }
        Ok(())
    }

    /// Skips to the rows from `to` on.
    fn seek(&mut self, to: Vec<u8>) {
        self.buf.clear();
        self.from = to;
        self.done = false;
    }

    /// The next path and its writers' versions.
    fn next(&mut self) -> Result<Option<(String, Vec<PathVersion>)>, CoDriveError> {
        if self.buf.is_empty() && !self.done {
            self.fill()?;
        }
        let Some(p) = self.buf.front().map(|r| r.0.clone()) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        loop {
            while self.buf.front().is_some_and(|r| r.0 == p) {
                let Some((_, w, v)) = self.buf.pop_front() else {
                    break;
                };
                out.push(decode_row(w, &v).ok_or_else(|| damaged(format!("the row of {p}")))?);
            }
            // The path's rows may go on in the next page.
            if self.buf.is_empty() && !self.done {
                self.fill()?;
                continue;
            }
            return Ok(Some((p, out)));
        }
    }
}

/// What is directly in a folder, from [`Indexed::for_each_child`].
// Handed to a callback one at a time, not kept in bulk: a box per file would cost more.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// A path directly in the folder that a writer that counts has a version of; its winner may
    /// be a delete (with concurrent versions, or not).
    File {
        /// The name in the folder.
        name: String,
        /// The path's winner and concurrent versions.
        resolved: Resolved,
    },
    /// A subfolder that holds a visible file, at any depth.
    Folder {
        /// The name in the folder.
        name: String,
    },
}

/// The merged view as the index on disk holds it, from [`CoDrive::indexed`]: lookups read one
/// path's rows, listings stream, and memory stays bounded whatever the drive's size.
#[derive(Debug)]
pub struct Indexed<'a> {
    co: &'a CoDrive,
    state: IndexState,
    /// The index as it stood when `state` was read: what every read here sees.
    pin: IndexPin,
}

impl Indexed<'_> {
    /// The version the index reflects (for [`CoDrive::checkout`]).
    pub fn version(&self) -> &Frontier {
        &self.state.frontier
    }

    /// Writers and their limits (see [`View::writers`]).
    pub fn writers(&self) -> &BTreeMap<Key, Option<u64>> {
        &self.state.writers
    }

    /// Removed writers and the length of their log that still counts.
    pub fn removed(&self) -> &BTreeMap<Key, u64> {
        &self.state.removed
    }

    /// Writers (current or removed) whose drives the store does not hold.
    pub fn missing(&self) -> &BTreeSet<Key> {
        &self.state.missing
    }

    /// Whether the local writer is in the writer set.
    pub fn is_writer(&self) -> bool {
        self.state.writers.contains_key(&self.co.local_key())
    }

    fn resolve(&self, versions: Vec<PathVersion>) -> Option<Resolved> {
        let cands: Vec<&PathVersion> = versions
            .iter()
            .filter(|v| self.state.counted.contains(&v.writer))
            .collect();
        (!cands.is_empty()).then(|| view::resolve(&cands))
    }

    /// The resolution of path `name` (tombstone winners included), `None` if no writer that
    /// counts has a version of it.
    pub fn resolved(&self, name: &str) -> Result<Option<Resolved>, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut g = Groups::new(self, path_rows(&self.co.primary, &p));
        Ok(match g.next()? {
            Some((q, vs)) if q == p => self.resolve(vs),
            _ => None,
        })
    }

    /// The visible entry at `name`, symlinks not followed; `None` if absent or deleted.
    pub fn entry(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        Ok(self
            .resolved(&p)?
            .and_then(|r| CoEntry::from_resolved(&p, &r)))
    }

    /// The visible entry at `name` with symlinks followed (as [`Snapshot::stat`]).
    ///
    /// [`Snapshot::stat`]: super::Snapshot::stat
    pub fn stat(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        super::snapshot::follow_links(name, |p| self.entry(p))
    }

    /// Calls `f` with every path under `folder` (recursively, in path order) that a writer
    /// that counts has a version of, deletes included.
    pub fn for_each_resolved<E: From<CoDriveError>>(
        &self,
        folder: &str,
        mut f: impl FnMut(&str, Resolved) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut g = Groups::new(self, folder_rows(&self.co.primary, &path::folder(folder)));
        while let Some((p, vs)) = g.next()? {
            if let Some(r) = self.resolve(vs) {
                f(&p, r)?;
            }
        }
        Ok(())
    }

    /// Calls `f` with every visible entry under `folder`, recursively, in path order.
    pub fn for_each_entry<E: From<CoDriveError>>(
        &self,
        folder: &str,
        mut f: impl FnMut(CoEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_each_resolved(folder, |p, r| match CoEntry::from_resolved(p, &r) {
            Some(e) => f(e),
            None => Ok(()),
        })
    }

    /// At most `limit` visible entries under `folder`, recursively, in path order, from the
    /// first path after `after` on (`None`: from the start): [`for_each_entry`] a page at a
    /// time, for a caller that writes between pages.
    ///
    /// [`for_each_entry`]: Self::for_each_entry
    pub fn entries_after(
        &self,
        folder: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CoEntry>, CoDriveError> {
        let (mut start, end) = folder_rows(&self.co.primary, &path::folder(folder));
        if let Some(a) = after {
            start = start.max(path_rows(&self.co.primary, a).1);
        }
        let mut g = Groups::new(self, (start, end));
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((p, vs)) = g.next()? else { break };
            if let Some(e) = self
                .resolve(vs)
                .and_then(|r| CoEntry::from_resolved(&p, &r))
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Every visible entry under `folder`, recursively, sorted by path (see
    /// [`for_each_entry`](Self::for_each_entry) to stream them).
    pub fn list(&self, folder: &str) -> Result<Vec<CoEntry>, CoDriveError> {
        let mut out = Vec::new();
        self.for_each_entry(folder, |e| {
            out.push(e);
            Ok::<_, CoDriveError>(())
        })?;
        Ok(out)
    }

    /// Calls `f` with what is directly in `folder`, in path order: each path in it that a writer
    /// that counts has a version of (deletes included), and each subfolder that holds a visible
    /// file, at the place of its first one. A subfolder's rows are read until its first visible
    /// file only, so the cost follows the folder's own size, not its subfolders'.
    pub fn for_each_child<E: From<CoDriveError>>(
        &self,
        folder: &str,
        mut f: impl FnMut(Child) -> Result<(), E>,
    ) -> Result<(), E> {
        let fo = path::folder(folder);
        let mut g = Groups::new(self, folder_rows(&self.co.primary, &fo));
        while let Some((p, vs)) = g.next()? {
            let Some(r) = self.resolve(vs) else {
                continue;
            };
            let rest = &p[fo.len() + 1..];
            match rest.split_once('/') {
                None => f(Child::File {
                    name: rest.to_string(),
                    resolved: r,
                })?,
                Some((name, _)) if r.winner.entry.is_some() => {
                    let name = name.to_string();
                    // Listed: skip the rest of the subfolder (`name/` < `name0`).
                    g.seek(seek_key(&self.co.primary, &format!("{fo}/{name}0")));
                    f(Child::Folder { name })?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Names directly in `folder`: its visible files and the subfolders that hold visible
    /// files, in path order (as [`Snapshot::readdir`]). A subfolder's rows are read until its
    /// first visible file only.
    ///
    /// [`Snapshot::readdir`]: super::Snapshot::readdir
    pub fn readdir(&self, folder: &str) -> Result<Vec<String>, CoDriveError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        self.for_each_child(folder, |c| {
            let name = match c {
                Child::File { name, resolved } if resolved.winner.entry.is_some() => name,
                Child::Folder { name } => name,
                Child::File { .. } => return Ok::<_, CoDriveError>(()),
            };
            // A file and a subfolder may share a name (two writers): named once.
            if seen.insert(name.clone()) {
                out.push(name);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether `folder` holds a visible file, at any depth (the root: whether the drive shows
    /// any). Reads rows until the first visible file.
    pub fn is_folder(&self, folder: &str) -> Result<bool, CoDriveError> {
        let mut g = Groups::new(self, folder_rows(&self.co.primary, &path::folder(folder)));
        while let Some((_, vs)) = g.next()? {
            if self.resolve(vs).is_some_and(|r| r.winner.entry.is_some()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The whole view, materialized (O(files): for callers that need all of it at once).
    pub fn view(&self) -> Result<View, CoDriveError> {
        let mut paths = BTreeMap::new();
        self.for_each_resolved("/", |p, r| {
            paths.insert(p.to_string(), r);
            Ok::<_, CoDriveError>(())
        })?;
        Ok(View {
            writers: self.state.writers.clone(),
            removed: self.state.removed.clone(),
            paths,
        })
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
        self.co.read_entry(&e, start, len, sink).await
    }

    /// The content of every visible file under `path` (a folder, recursively, or one file),
    /// concurrent versions included, for [`CoDrive::download`] and [`CoDrive::clear`].
    pub(super) fn content_under(&self, path: &str) -> Result<ContentPlan, CoDriveError> {
        let mut plan = ContentPlan::default();
        self.for_each_entry(path, |e| {
            plan.add(e);
            Ok::<_, CoDriveError>(())
        })?;
        if let Some(p) = path::file_or_root(path).map_err(DriveError::from)? {
            if let Some(e) = self.entry(&p)? {
                plan.add(e);
            }
        }
        Ok(plan)
    }

    /// Whether every block of the file at `name` (symlinks followed) is stored locally (see
    /// [`Snapshot::is_local`](super::Snapshot::is_local)).
    pub async fn is_local(&self, name: &str) -> Result<bool, CoDriveError> {
        match self.stat(name)? {
            Some(e) => self.co.entry_is_local(&e).await,
            None => Ok(false),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use cohd_format::BlobId;

    /// A reopened co-drive whose index has every writer reads it without opening the other
    /// writers' cores (their metadata records say the index is up to date); once one of them
    /// writes, its core is opened and its new rows counted.
    #[tokio::test]
    async fn an_up_to_date_index_opens_no_other_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (key, b_local) = {
            let store = Store::create(dir.path()).unwrap();
            let a = CoDrive::create(&store, "a").await.unwrap();
            let b = CoDrive::open(&store, a.key(), "b").await.unwrap();
            a.authorize(b.local_key()).await.unwrap();
            b.put("/from-b", b"b").await.unwrap();
            a.put("/from-a", b"a").await.unwrap();
            assert!(a
                .indexed()
                .await
                .unwrap()
                .stat("/from-b")
                .unwrap()
                .is_some());
            let keys = (a.key(), b.local_key());
            drop((a, b));
            store.close().await.unwrap();
            keys
        };
        let store = Store::open(dir.path()).unwrap();
        let a = CoDrive::open(&store, key, "a").await.unwrap();
        let i = a.indexed().await.unwrap();
        assert_eq!(
            i.stat("/from-b").unwrap().map(|e| e.writer),
            Some(b_local),
            "b's file, from the index"
        );
        assert!(i.writers().contains_key(&b_local));
        assert!(
            !store.open_cores().iter().any(|c| c.key() == b_local),
            "b's core was opened"
        );
        drop(i);
        // b writes: its core is read again.
        let b = CoDrive::open(&store, a.key(), "b").await.unwrap();
        b.put("/later", b"l").await.unwrap();
        let i = a.indexed().await.unwrap();
        assert!(i.stat("/later").unwrap().is_some());
        assert_eq!(i.version(), &a.version().await.unwrap());
    }

    #[test]
    fn row_keys_sort_by_path_and_read_back() {
        let pk = Key([9; 32]);
        let w = Key([3; 32]);
        let paths = ["/a", "/a\0b", "/a-b", "/a/b", "/a/b\0", "/a0", "/b"];
        let mut keys: Vec<Vec<u8>> = paths.iter().map(|p| row_key(&pk, p, &w)).collect();
        let sorted = keys.clone();
        keys.sort();
        assert_eq!(keys, sorted, "rows sort as their paths do");
        for p in paths {
            let k = row_key(&pk, p, &w);
            assert_eq!(parse_row_key(&k[33..]), Some((p.to_string(), w)));
            let (s, e) = path_rows(&pk, p);
            assert!(s <= k && k < e);
            // No other path's rows fall in this path's range.
            for q in paths.iter().filter(|q| **q != p) {
                let o = row_key(&pk, q, &w);
                assert!(!(s <= o && o < e), "{q:?} in the rows of {p:?}");
            }
        }
        let (s, e) = folder_rows(&pk, "/a");
        for p in paths {
            let k = row_key(&pk, p, &w);
            assert_eq!(s <= k && k < e, p.starts_with("/a/"), "{p:?}");
        }
        assert_eq!(parse_row_key(b"/a\0"), None);
        assert_eq!(parse_row_key(b"/a\0\0short"), None);
    }

    #[test]
    fn rows_round_trip() {
        let w = Key([3; 32]);
        let blob = BlobId {
            block_length: 2,
            byte_length: 9,
            ..BlobId::default()
        };
        for (entry, time) in [
            (Some(Entry::file(blob, true, None)), Some(1_765_000_000_000)),
            (Some(Entry::symlink("/x".into())), None),
            (None, Some(5)),
        ] {
            let v = PathVersion {
                writer: w,
                seq: 77,
                clock: [(w, 77), (Key([1; 32]), 3)].into_iter().collect(),
                entry,
                time,
            };
            let b = encode_row(&v);
            assert_eq!(decode_row(w, &b), Some(v));
            for cut in 0..b.len() {
                // A truncated row is damaged, not a panic (a cut in the entry may still decode
                // as another entry only if Entry::decode accepts it).
                let _ = decode_row(w, &b[..cut]);
            }
            assert_eq!(decode_row(w, &b[..8]), None);
        }
    }
}
