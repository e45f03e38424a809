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
//! 3. **Its oplog decoder reads the wrong flag bits**, and it folds entries into its header only
//!    on every fourth write. The store rewrites every core's oplog into the flushed form before
//!    the crate opens it (`recover.rs`), so a stop at any moment loses nothing.
//!
//! 4. **Sparse blocks** (fetched on demand or by a folder download, beyond the contiguous prefix)
//!    would be forgotten on reopen, the bitfield being in memory. The core records them itself
//!    ([`cohd_format::present`], the `present` file, written after the store's fsync) and reads
//!    them from the tree and data files like older blocks.
//!
//! 5. **Reads from disk are verified**: a block read from the files is checked up to the roots
//!    the owner signed (`verify.rs`). One that fails is damaged: it counts as missing (so
//!    replication fetches it again) and a read without peers fails with
//!    [`CoreError::Damaged`].
//!
//! `Core` also carries what replication needs: a watch of the length (poked after every local
//! append and every applied proof), a per-core write lock (hypercore's `verify_and_apply_proof`
//! must not interleave with another write) and a channel of wanted blocks for sparse reads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cohd_format::Key;
use hypercore::{Hypercore, HypercoreError};
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
    /// A block stored on disk does not match the signed tree, and no peer delivered it again.
    #[error("block {index} is damaged on disk (it does not match its signed hash) and no connected peer has it")]
    Damaged {
        /// The block.
        index: u64,
    },
    /// The store was closed: nothing more is written through this handle.
    #[error("the store was closed")]
    Closed,
    /// A download could not get a block: no replication session is attached, or no connected
    /// peer delivered it in time.
    #[error("block {index} is not available from any connected peer")]
    Unavailable {
        /// The first block that did not arrive.
        index: u64,
    },
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
    /// Where the record of sparse blocks lives (`present`).
    pub(crate) present: PathBuf,
    /// Checks blocks read from the files.
    pub(crate) verifier: super::verify::Verifier,
    /// `signed.log`: signed lengths received since the store last opened, 8 bytes each,
    /// appended as each upgrade is applied (it survives a killed process; see `recover.rs`).
    pub(crate) signed_log: std::sync::Mutex<Option<std::fs::File>>,
    /// The block after the last one read, and where it starts in the data file.
    pub(crate) next: std::sync::Mutex<Option<(u64, u64)>>,
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
    wants: broadcast::Sender<Wanted>,
    /// Serializes writes (hypercore's `verify_and_apply_proof` must not interleave with
    /// another write); true once the core is closed.
    writes: Mutex<bool>,
    /// Blocks whose stored copy failed verification (until they arrive again).
    damaged: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Lengths the owner signed that we know of: batch ends, where a bee reads consistently.
    signed: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Blocks held beyond what hypercore's in-memory bitfield may know after a reopen: start ->
    /// end of disjoint, non-adjacent ranges.
    present: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// Whether `present` changed since it was last written.
    present_dirty: std::sync::atomic::AtomicBool,
    /// Replicators holding this core: its channels may be opening on their connections.
    attached: std::sync::atomic::AtomicUsize,
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

use super::recover::NODE_SIZE;

impl Core {
    pub(crate) fn new(
        hc: Hypercore,
        files: Option<Arc<CoreFiles>>,
        present: Vec<Range<u64>>,
    ) -> Self {
        let (length, _) = watch::channel(hc.info().length);
        let (wants, _) = broadcast::channel(1024);
        let present = present.into_iter().map(|r| (r.start, r.end)).collect();
        let live = Arc::new(Live {
            length,
            wants,
            writes: Mutex::default(),
            damaged: std::sync::Mutex::default(),
            signed: std::sync::Mutex::default(),
            present: std::sync::Mutex::new(present),
            present_dirty: std::sync::atomic::AtomicBool::new(false),
            attached: std::sync::atomic::AtomicUsize::new(0),
        });
        Self { hc, files, live }
    }

    fn present(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.live.present.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the record of sparse blocks holds `index`.
    fn recorded(&self, index: u64) -> bool {
        self.present()
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &end)| index < end)
    }

    /// Records that `index` is stored.
    fn record(&self, index: u64) {
        let mut p = self.present();
        self.live
            .present_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut start = index;
        let mut end = index.saturating_add(1);
        if let Some((&s, &e)) = p.range(..=index).next_back() {
            if index < e {
                return;
            }
            if e == index {
                start = s;
            }
        }
        if let Some(e) = p.remove(&end) {
            end = e;
        }
        p.insert(start, end);
    }

    /// Forgets `index` (its stored copy does not check out).
    fn forget(&self, index: u64) {
        let mut p = self.present();
        self.live
            .present_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some((&s, &e)) = p.range(..=index).next_back() {
            if index < e {
                p.remove(&s);
                if s < index {
                    p.insert(s, index);
                }
                if index + 1 < e {
                    p.insert(index + 1, e);
                }
            }
        }
    }

    /// The record of sparse blocks (those beyond the contiguous prefix) to write, if it changed
    /// since it was last taken. Take it *before* making the core's files durable, and write it
    /// with [`write_present`](Self::write_present) after: a block recorded meanwhile waits for
    /// the next flush, so the file never names a block that is not durable.
    pub(crate) fn present_to_write(&self) -> Option<Vec<Range<u64>>> {
        let files = self.files.as_ref()?;
        if !self
            .live
            .present_dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let contiguous = self.hc.info().contiguous_length;
        let ranges: Vec<Range<u64>> = {
            let mut p = self.present();
            p.retain(|_, e| *e > contiguous);
            p.iter().map(|(&s, &e)| s.max(contiguous)..e).collect()
        };
        (!ranges.is_empty() || files.present.exists()).then_some(ranges)
    }

    /// What [`present_to_write`](Self::present_to_write) gave could not be written: take it
    /// again next time.
    pub(crate) fn present_unwritten(&self) {
        self.live
            .present_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes `ranges` (from [`present_to_write`](Self::present_to_write)) to the `present`
    /// file, atomically.
    pub(crate) fn write_present(&self, ranges: &[Range<u64>]) -> std::io::Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let written = super::recover::write_present(&files.present, ranges);
        if written.is_err() {
            self.live
                .present_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        written
    }

    fn poke(&self) {
        self.live.length.send_replace(self.hc.info().length);
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

    /// Whether a replication session listens for wanted blocks; when a replicator holds the
    /// core but none does yet, waits a moment for its channel to open.
    async fn session_attached(&self) -> bool {
        if self.live.wants.receiver_count() > 0 {
            return true;
        }
        if self
            .live
            .attached
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
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
        self.hc.info().length.saturating_add(DOWNLOAD_AHEAD)
    }

    /// Whether block `index` is stored locally (cheap: no read).
    pub fn has(&self, index: u64) -> bool {
        self.hc.has(index) || (self.on_disk(index) && !self.is_damaged(index))
    }

    /// The contiguous length, short of the first block found damaged (replication fetches
    /// everything from there that is not held).
    pub fn contiguous_held(&self) -> u64 {
        let c = self.hc.info().contiguous_length;
        match self.damaged().iter().next() {
            Some(&d) if d < c && !self.hc.has(d) => d,
            _ => c,
        }
    }

    /// Remembers lengths the owner signed (see [`consistent_length`](Self::consistent_length)).
    pub(crate) fn note_signed(&self, lengths: impl IntoIterator<Item = u64>) {
        let mut s = self.live.signed.lock().unwrap_or_else(|e| e.into_inner());
        s.extend(lengths);
        // Only the newest matter; keep the set small.
        while s.len() > 256 {
            s.pop_first();
        }
    }

    /// Appends a signed length to the core's `signed.log` (a hint: a failure is only logged).
    fn log_signed(&self, length: u64) {
        let Some(files) = &self.files else { return };
        let mut log = files.signed_log.lock().unwrap_or_else(|e| e.into_inner());
        let written = (|| {
            use std::io::Write;
            if log.is_none() {
                use std::os::unix::fs::OpenOptionsExt;
                let path = files.present.with_file_name("signed.log");
                *log = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(path)?,
                );
            }
            match log.as_mut() {
                Some(f) => f.write_all(&length.to_le_bytes()),
                None => Ok(()),
            }
        })();
        if let Err(e) = written {
            tracing::debug!(core = %self.key(), "cannot log a signed length: {e}");
        }
    }

    /// The longest prefix that reads as one consistent version without a peer: the whole core
    /// when every block is here, else the longest signed length whose blocks are all here
    /// (a writer signs whole batches, and a bee read mid-batch would show a broken tree), else
    /// the whole core (reads then fail on the missing blocks rather than show a wrong view).
    pub fn consistent_length(&self) -> u64 {
        let length = self.hc.info().length;
        let readable = self.readable_length();
        if readable >= length {
            return length;
        }
        let s = self.live.signed.lock().unwrap_or_else(|e| e.into_inner());
        s.range(..=readable).next_back().copied().unwrap_or(length)
    }

    /// Blocks `0..n` are all stored locally: what can be read without a peer. Past the
    /// crate's contiguous length too (it counts only blocks that arrived since it opened).
    pub fn readable_length(&self) -> u64 {
        let info = self.hc.info();
        let mut n = info.contiguous_length;
        while n < info.length {
            if self.hc.has(n) {
                n += 1;
                continue;
            }
            let end = self
                .present()
                .range(..=n)
                .next_back()
                .and_then(|(_, &e)| (n < e).then_some(e));
            match end {
                Some(e) => n = e.min(info.length),
                None => break,
            }
        }
        n
    }

    /// Whether block `index` was stored before this session (the crate's bitfield does not
    /// know it; the files hold it).
    fn on_disk(&self, index: u64) -> bool {
        index < self.hc.info().contiguous_length || self.recorded(index)
    }

    fn damaged(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.live.damaged.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_damaged(&self, index: u64) -> bool {
        let d = self.damaged();
        !d.is_empty() && d.contains(&index)
    }

    /// Fetches every block of `ranges` that is not stored locally from connected peers, and
    /// waits until all are here (blocks past our length too: the core may still be catching up
    /// with its peers; at most [`DOWNLOAD_AHEAD`] past it). Returns how many blocks arrived.
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
        let w = self.live.writes.lock().await;
        if *w {
            return Err(CoreError::Closed);
        }
        let block = proof.block.as_ref().map(|b| b.index);
        let upgrade = proof.upgrade.is_some();
        let proof = super::proofs::to_schema(proof);
        let ok = guard(self.hc.verify_and_apply_proof(proof)).await??;
        drop(w);
        if ok && upgrade {
            let length = self.hc.info().length;
            self.note_signed([length]);
            self.log_signed(length);
        }
        if ok {
            if let Some(index) = block {
                self.record(index);
            }
            self.poke();
        }
        Ok(ok)
    }

    /// Ends writes through this core (waiting for one in progress): the store then folds its
    /// files into their flushed form (see `Store::close`). Reads go on working.
    pub(crate) async fn close(&self) {
        *self.live.writes.lock().await = true;
    }

    /// The underlying hypercore (until our own engine replaces it).
    pub(crate) fn hypercore(&self) -> &Hypercore {
        &self.hc
    }

    /// Length, byte length, contiguous length, fork, writability.
    pub fn info(&self) -> Info {
        let i = self.hc.info();
        Info {
            length: i.length,
            byte_length: i.byte_length,
            contiguous_length: i.contiguous_length,
            fork: i.fork,
            writable: i.writeable,
        }
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
    pub async fn append(&self, data: &[u8]) -> Result<Appended, CoreError> {
        self.append_batch([data]).await
    }

    /// Appends blocks in one signed append.
    pub async fn append_batch<A: AsRef<[u8]>, B: AsRef<[A]>>(
        &self,
        batch: B,
    ) -> Result<Appended, CoreError> {
        let w = self.live.writes.lock().await;
        if *w {
            return Err(CoreError::Closed);
        }
        let out = guard(self.hc.append_batch(batch)).await??;
        drop(w);
        self.note_signed([out.length]);
        self.poke();
        Ok(Appended {
            length: out.length,
            byte_length: out.byte_length,
        })
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

    /// Block `index` if stored locally (and, when read from the files, verified).
    pub async fn get_local(&self, index: u64) -> Result<Option<Vec<u8>>, CoreError> {
        if let Some(b) = guard(self.hc.get(index)).await?? {
            return Ok(Some(b));
        }
        let Some(files) = &self.files else {
            return Ok(None);
        };
        if !self.on_disk(index) || self.is_damaged(index) {
            return Ok(None);
        }
        match files.read_verified(index).await {
            Ok(b) => Ok(Some(b)),
            Err(reason) => {
                // Counted as missing from now on, so that peers send it again.
                tracing::info!(core = %self.key(), index, "a stored block is damaged: {reason}");
                self.damaged().insert(index);
                self.forget(index);
                Ok(None)
            }
        }
    }
}

impl CoreFiles {
    async fn node_size(&self, flat: u64) -> Result<u64, String> {
        let bytes = self
            .tree
            .read(flat * NODE_SIZE, 8)
            .await
            .map_err(|e| format!("tree node {flat}: {e}"))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes);
        Ok(u64::from_le_bytes(b))
    }

    /// Block `index`, checked against the signed tree.
    async fn read_verified(&self, index: u64) -> Result<Vec<u8>, String> {
        let block = self.read_block(index).await?;
        match self.verifier.check(self.tree.file(), index, &block)? {
            true => Ok(block),
            false => Err("it does not match its signed hash".into()),
        }
    }

    async fn read_block(&self, index: u64) -> Result<Vec<u8>, String> {
        let leaf = index
            .checked_mul(2)
            .ok_or_else(|| "block index overflow".to_string())?;
        // Sequential reads: block i + 1 starts where block i ended.
        let next = *self.next.lock().unwrap_or_else(|e| e.into_inner());
        let offset = match next {
            Some((i, at)) if i == index => at,
            _ => {
                let mut offset = 0u64;
                for r in cohd_format::merkle::full_roots(index) {
                    offset = offset
                        .checked_add(self.node_size(r).await?)
                        .ok_or_else(|| "byte offset overflow".to_string())?;
                }
                offset
            }
        };
        let len = self.node_size(leaf).await?;
        let end = offset.checked_add(len).filter(|e| *e <= self.data.len());
        if end.is_none() || len > (1 << 30) {
            return Err(format!("block {index} lies outside the data file"));
        }
        let block = self
            .data
            .read(offset, len)
            .await
            .map_err(|e| format!("block {index}: {e}"))?;
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) =
            index.checked_add(1).zip(offset.checked_add(len));
        Ok(block)
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
