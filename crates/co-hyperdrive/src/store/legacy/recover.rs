//! Bringing a core's files into the flushed form before `hypercore` opens them, whatever
//! moment the last process stopped at, and checking that what they claim is signed.
//!
//! The crate writes every change as an oplog entry and folds entries into its header (and tree
//! nodes into the tree file) only on every fourth write. Its own entry decoder misreads every
//! entry that lacks one of the tree-node/upgrade/bitfield parts, it fails outright on a header
//! slot with a bad checksum, and it never pops a trailing partial entry. So a process stopped
//! between two flushes (any signal, `kill -9`, power loss) left a core it could not reopen.
//!
//! We never hand it entries: on open, [`recover`] reads the oplog with our own decoder
//! ([`cohd_format::oplog`]), replays its entries, writes their tree nodes to the tree file,
//! records sparse blocks in the `present` file, and writes the resulting header to both slots
//! before cutting the entries off. Every step is idempotent and ordered so that a crash at any
//! point leaves either the old header with its entries or the new header: replaying the same
//! entries again ends in the same state. A damaged header slot is replaced by the other one.
//!
//! Then [`verify_tree`] checks the header's tree against the owner's signature: every block
//! read later from the files is checked up to these roots (see `verify.rs`).

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use cohd_format::merkle::{self, Node};
use cohd_format::oplog::{self, TreeHead};
use cohd_format::Key;

use super::super::StoreError;

/// Size of one tree node in the tree file: u64 LE byte size, then the 32-byte hash.
pub(crate) const NODE_SIZE: u64 = 40;

/// What the store learns about a core's files before opening it.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The tree the header now holds.
    pub(crate) tree: TreeHead,
    /// Sparse blocks beyond the contiguous prefix.
    pub(crate) present: Vec<Range<u64>>,
    /// Lengths the core's owner signed that we know of (batch ends: a bee can be read there).
    pub(crate) signed: Vec<u64>,
}

/// Most signed lengths remembered per core (the newest are the ones that matter).
const SIGNED_KEPT: usize = 64;

/// Reads the `signed` file of a core and the lengths appended to `signed.log` since (u64 LE
/// each; a torn last one is ignored). A damaged file is forgotten: it is only a hint.
pub(crate) fn read_signed(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read(dir.join("signed"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<u64>>(&b).ok())
        .unwrap_or_default();
    if let Ok(log) = std::fs::read(dir.join("signed.log")) {
        out.extend(log.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        }));
    }
    out
}

/// Writes the `signed` file (the newest [`SIGNED_KEPT`] lengths), atomically.
pub(crate) fn write_signed(
    dir: &Path,
    lengths: &std::collections::BTreeSet<u64>,
) -> std::io::Result<()> {
    let keep: Vec<u64> = lengths
        .iter()
        .rev()
        .take(SIGNED_KEPT)
        .rev()
        .copied()
        .collect();
    let tmp = dir.join("signed.tmp");
    super::super::private_file(
        &tmp,
        &serde_json::to_vec(&keep).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, dir.join("signed"))?;
    // What the log held is in the file now.
    match std::fs::remove_file(dir.join("signed.log")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn corrupt(key: Key, reason: impl Into<String>) -> StoreError {
    StoreError::Core {
        key,
        reason: reason.into(),
    }
}

fn io(ctx: &str, dir: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = format!("{ctx} in {}", dir.display());
    move |source| StoreError::Io { context, source }
}

/// Reads the `present` file of a core (a damaged one is forgotten: those blocks are fetched
/// again).
pub(crate) fn read_present(dir: &Path, key: Key) -> Result<Vec<Range<u64>>, StoreError> {
    let file = dir.join("present");
    match std::fs::read(&file) {
        Ok(b) => Ok(cohd_format::present::decode(&b).unwrap_or_else(|e| {
            tracing::warn!(%key, "ignoring {}: {e}", file.display());
            Vec::new()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("reading the present file", dir)(e)),
    }
}

/// Writes the `present` file atomically (temporary file, fsync, rename, fsync of the folder).
pub(crate) fn write_present(path: &Path, ranges: &[Range<u64>]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    super::super::private_file(&tmp, &cohd_format::present::encode(ranges))?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Brings the oplog in `dir` into the flushed form (see the module docs). `Ok(None)`: the core
/// has no header yet (never written).
pub(crate) fn recover(dir: &Path, key: Key) -> Result<Option<Recovered>, StoreError> {
    let path = dir.join("oplog");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading the oplog", dir)(e)),
    };
    let log = match oplog::read(&bytes) {
        Ok(Some(log)) => log,
        Ok(None) => return Ok(None),
        Err(e) => return Err(corrupt(key, format!("its oplog is damaged: {e}"))),
    };
    if log.header.key != key.0 {
        return Err(corrupt(key, "its oplog belongs to another core"));
    }
    // Every length we know the owner signed: earlier ones, both header slots, the entries'.
    let known = read_signed(dir);
    let mut signed: std::collections::BTreeSet<u64> = known.iter().copied().collect();
    signed.insert(log.header.tree.length);
    signed.extend(log.previous_length);
    signed.extend(
        log.entries
            .iter()
            .filter_map(|e| e.upgrade.as_ref().map(|u| u.length)),
    );
    signed.remove(&0);
    let logged = std::fs::metadata(dir.join("signed.log")).is_ok_and(|m| m.len() > 0);
    if logged || signed.iter().copied().ne(known.iter().copied()) {
        if let Err(e) = write_signed(dir, &signed) {
            tracing::debug!(%key, "cannot record signed lengths: {e}");
        }
    }
    let signed: Vec<u64> = signed.into_iter().collect();
    let recorded = read_present(dir, key)?;
    // And what the crate flushed to its bitfield (see `file::Bitmap`).
    let present = match std::fs::read(dir.join("bitfield")) {
        Ok(b) => union(&recorded, &cohd_format::present::from_bitmap(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => recorded.clone(),
        Err(e) => return Err(io("reading the bitfield", dir)(e)),
    };
    let (length, contiguous) = (log.header.tree.length, log.header.contiguous_length);
    // Blocks held right after the contiguous prefix (the crate counts only blocks it saw
    // arrive since it opened): the header's count is raised too.
    let extends = present
        .iter()
        .any(|r| r.start <= contiguous && contiguous < r.end && contiguous < length);
    if !log.has_tail && !log.damaged_slot && !extends {
        let present = present
            .into_iter()
            .filter_map(|r| {
                let r = r.start.max(contiguous)..r.end.min(length);
                (!r.is_empty()).then_some(r)
            })
            .collect();
        return Ok(Some(Recovered {
            tree: log.header.tree,
            present,
            signed,
        }));
    }
    if log.damaged_slot {
        tracing::warn!(%key, "one oplog header slot is damaged; using the other one");
    }
    let replayed = oplog::replay(&log.header, &log.entries, &present);

    // 1. Tree nodes and blocks the entries speak of become durable first.
    let tree = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("tree"))
        .map_err(io("opening the tree file", dir))?;
    // Every node of a tree of `length` blocks lies below 2 * length: anything else in a
    // (damaged or crafted) entry is not written, so it cannot grow the tree file without bound.
    let span = replayed.tree.length.saturating_mul(2);
    for n in replayed.nodes.iter().filter(|n| n.index < span) {
        let at = n
            .index
            .checked_mul(NODE_SIZE)
            .ok_or_else(|| corrupt(key, "a tree node index overflows"))?;
        let mut buf = [0u8; NODE_SIZE as usize];
        buf[..8].copy_from_slice(&n.size.to_le_bytes());
        buf[8..].copy_from_slice(&n.hash);
        tree.write_all_at(&buf, at)
            .map_err(io("writing the tree file", dir))?;
    }
    tree.sync_data().map_err(io("syncing the tree file", dir))?;
    if let Ok(data) = std::fs::File::open(dir.join("data")) {
        data.sync_data().map_err(io("syncing the data file", dir))?;
    }
    let mut head = replayed.tree.clone();
    let mut contiguous = replayed.contiguous_length;
    if head.root_hash.is_empty() && head.length > 0 {
        // Entries carry no root hash; the crate never reads it back, but keep it true.
        if let Ok(roots) = read_roots(&tree, head.length) {
            head.root_hash = merkle::tree_hash(&roots).to_vec();
        }
    }
    if let Some(signed) = resign(&tree, dir, key, &log.header, &head) {
        tracing::warn!(%key, from = head.length, to = signed.length, "the oplog header was behind the core's own tree; signed it again");
        contiguous = contiguous.max(signed.length);
        head = signed;
    }

    // 2. Sparse blocks, before the header that drops the entries naming them.
    if replayed.present != recorded {
        write_present(&dir.join("present"), &replayed.present)
            .map_err(io("writing the present file", dir))?;
    }

    // 3. The header, slot 1 then slot 2, then the entries go.
    let mut header = log.header.clone();
    header.tree = head.clone();
    header.contiguous_length = contiguous;
    let slot = oplog::flushed_slot(&header).map_err(|e| corrupt(key, e.to_string()))?;
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io("opening the oplog", dir))?;
    for at in [0, oplog::SLOT_SIZE as u64] {
        f.write_all_at(&slot, at)
            .and_then(|()| f.sync_data())
            .map_err(io("writing the oplog header", dir))?;
    }
    f.set_len(oplog::ENTRIES_AT as u64)
        .and_then(|()| f.sync_data())
        .map_err(io("truncating the oplog", dir))?;
    tracing::debug!(%key, entries = log.entries.len(), length = head.length, contiguous, "oplog recovered");
    let mut signed = signed;
    signed.push(head.length);
    Ok(Some(Recovered {
        tree: head,
        present: replayed.present,
        signed,
    }))
}

/// For one of our own cores whose header is older than its tree file (the newest header slot
/// was damaged after its entries were folded in): the tree of every block the tree file holds,
/// signed again. Our log is append-only, so its tree at a length is the one we signed before;
/// Ed25519 signatures are deterministic, so this is the very signature peers already hold,
/// not a new history.
fn resign(
    tree: &std::fs::File,
    dir: &Path,
    key: Key,
    header: &oplog::Header,
    head: &TreeHead,
) -> Option<TreeHead> {
    let secret = header.secret_key()?;
    let mut length = head.length;
    while read_node(tree, length.checked_mul(2)?).ok()?.is_some() {
        length += 1;
    }
    if length == head.length {
        return None;
    }
    let roots = read_roots(tree, length).ok()?;
    let bytes = roots.iter().try_fold(0u64, |a, r| a.checked_add(r.size))?;
    let data = std::fs::metadata(dir.join("data")).ok()?.len();
    if bytes > data {
        return None;
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
    if signing.verifying_key().to_bytes() != key.0 {
        return None;
    }
    use ed25519_dalek::Signer as _;
    let hash = merkle::tree_hash(&roots);
    let signature = signing.sign(&merkle::signable(&hash, length, head.fork));
    Some(TreeHead {
        fork: head.fork,
        length,
        root_hash: hash.to_vec(),
        signature: signature.to_bytes().to_vec(),
    })
}

/// The union of two sorted range lists, sorted and merged.
fn union(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a
        .iter()
        .chain(b)
        .filter(|r| !r.is_empty())
        .cloned()
        .collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// One node of the tree file; `None` where nothing was written (a hole reads as zeros).
pub(crate) fn read_node(tree: &std::fs::File, index: u64) -> std::io::Result<Option<Node>> {
    let mut buf = [0u8; NODE_SIZE as usize];
    let at = index
        .checked_mul(NODE_SIZE)
        .ok_or_else(|| std::io::Error::other("node index overflows"))?;
    match tree.read_exact_at(&mut buf, at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&buf[8..]);
    if hash == [0; 32] {
        return Ok(None);
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&buf[..8]);
    Ok(Some(Node {
        index,
        size: u64::from_le_bytes(size),
        hash,
    }))
}

/// The roots of a tree of `length` blocks, from the tree file.
pub(crate) fn read_roots(tree: &std::fs::File, length: u64) -> Result<Vec<Node>, String> {
    merkle::full_roots(length)
        .into_iter()
        .map(|i| match read_node(tree, i) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(format!("tree node {i} is missing")),
            Err(e) => Err(format!("tree node {i}: {e}")),
        })
        .collect()
}

/// Checks that the tree file's roots for `head` are what the core's owner signed (compat
/// cores: the key is the Ed25519 public key). Returns the roots.
pub(crate) fn verify_tree(
    tree: &std::fs::File,
    key: Key,
    head: &TreeHead,
) -> Result<Vec<Node>, String> {
    if head.length == 0 {
        return Ok(Vec::new());
    }
    let roots = read_roots(tree, head.length)?;
    let hash = merkle::tree_hash(&roots);
    let signature = ed25519_dalek::Signature::from_slice(&head.signature)
        .map_err(|_| "the tree has no valid signature".to_string())?;
    let public = ed25519_dalek::VerifyingKey::from_bytes(&key.0)
        .map_err(|_| "the key is not an Ed25519 public key".to_string())?;
    use ed25519_dalek::Verifier as _;
    public
        .verify(&merkle::signable(&hash, head.length, head.fork), &signature)
        .map_err(|_| {
            format!(
                "its tree of {} blocks does not match its signature (damaged tree file)",
                head.length
            )
        })?;
    Ok(roots)
}
