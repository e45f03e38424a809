//! Our own Hypercore: one core's signed, append-only log over the store's [`Kv`], made from the
//! pure tree and proof code of [`cohd_format`] (`merkle`, `proof`). No I/O of its own: every
//! change is one atomic [`Batch`] (blocks, tree nodes, header, presence), so a core on disk is
//! always at a state some write left it in, whatever moment the process stopped at.
//!
//! Records (`n`: the number the store gave the core, [`Prefix`]; cores held before numbers
//! have their 32-byte key there instead):
//! ```text
//! blocks  n ‖ index (u64 BE)          the block
//! nodes   n ‖ flat index (u64 BE)     size (u64 LE) ‖ BLAKE2b-256 hash
//! meta    key ‖ "n"                   the core's number (u32 BE)
//! meta    "core-of-number-" ‖ n       the key of the core with that number
//! meta    "next-core-number"          the number the next core gets (u32 BE)
//! meta    key ‖ "h"                   header: length, byte length, fork, signature, signed lengths
//! meta    key ‖ "p"                   blocks held, as ranges (cohd_format::present)
//! meta    key ‖ "m"                   the core's manifest, when it has one (compact encoding)
//! meta    key ‖ "e" ‖ end (u64 BE)    an append of ours of more than one block: its start (u64 LE)
//! ```
//! Signatures are checked the way the core's manifest says ([`manifest::Verifier`]): a core
//! without a stored manifest is a compat core (its key is its signer's Ed25519 key). A manifest
//! core's manifest arrives with the first proof a peer sends for it (or is known beforehand,
//! e.g. a Hyperdrive's derived blobs manifest) and is kept from then on.
//! A header is only ever written with the nodes it signs, so on open the roots are read and
//! checked against the owner's signature (our own appends leave their length unsigned until a
//! peer asks for it: `Log::signature_of`); a block is checked against its leaf on its first read (a
//! block in a data file: against the checksum written with it, when it was verified).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use cohd_format::manifest::{self, HashType, Manifest};
use cohd_format::merkle::{self, Node};
use cohd_format::proof::{self, Indexed, ProofError, Received, ReceivedUpgrade, UpgradeRange};
use cohd_format::wire::{DataBlock, DataNodes, DataUpgrade};
use cohd_format::Key;
use ed25519_dalek::SigningKey;

use super::kv::{Batch, Bytes, Durability, Kv, KvError, Space};
use super::proofs::{Proof, ProofRequest};

/// What can go wrong in a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LogError {
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The stored core does not hold together (damaged records).
    #[error("{0}")]
    Corrupted(String),
    /// A stored block does not match its leaf.
    #[error("block {0} does not match its signed hash")]
    Damaged(u64),
    /// Appends need the secret key.
    #[error("the core is read-only")]
    NotWritable,
    /// A peer's proof does not verify.
    #[error("{0}")]
    Invalid(String),
}

/// (length, byte length) after an append.
type Lengths = (u64, u64);

/// An append built but not committed yet.
struct Prepared {
    batch: Batch,
    next: State,
}

/// Most signed lengths remembered per core (the newest are the ones that matter).
const SIGNED_KEPT: usize = 64;

/// A core's state, as its header and presence record hold it.
#[derive(Debug, Clone, Default)]
struct State {
    length: u64,
    byte_length: u64,
    fork: u64,
    roots: Vec<Node>,
    signature: Vec<u8>,
    /// Blocks held: start -> end of disjoint, non-adjacent ranges.
    present: BTreeMap<u64, u64>,
    /// Lengths the owner signed that we saw (batch ends).
    signed: BTreeSet<u64>,
}

impl State {
    fn has(&self, index: u64) -> bool {
        self.present
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &end)| index < end)
    }

    fn contiguous(&self) -> u64 {
        match self.present.first_key_value() {
            Some((0, &end)) => end,
            _ => 0,
        }
    }

    fn add(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        // Merge with every range it touches or overlaps.
        let touching: Vec<(u64, u64)> = self
            .present
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.present.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.present.insert(start, end);
    }

    fn remove(&mut self, index: u64) {
        if let Some((&s, &e)) = self.present.range(..=index).next_back() {
            if index < e {
                self.present.remove(&s);
                if s < index {
                    self.present.insert(s, index);
                }
                if index + 1 < e {
                    self.present.insert(index + 1, e);
                }
            }
        }
    }

    fn ranges(&self) -> Vec<Range<u64>> {
        self.present.iter().map(|(&s, &e)| s..e).collect()
    }

    /// Forgets every index from `from` on; returns the ranges forgotten.
    fn cut(&mut self, from: u64) -> Vec<Range<u64>> {
        let mut gone = Vec::new();
        if let Some((&s, &e)) = self.present.range(..from).next_back() {
            if e > from {
                self.present.insert(s, from);
                gone.push(from..e);
            }
        }
        gone.extend(self.present.split_off(&from).into_iter().map(|(s, e)| s..e));
        gone
    }

    fn note_signed(&mut self, length: u64) {
        if length > 0 {
            self.signed.insert(length);
            while self.signed.len() > SIGNED_KEPT {
                self.signed.pop_first();
            }
        }
    }
}

/// One core's log.
#[derive(Debug)]
pub(crate) struct Log {
    kv: Arc<Kv>,
    key: Key,
    /// What its block and node records are keyed by.
    prefix: Prefix,
    secret: Option<SigningKey>,
    /// How signatures are checked and made: from the stored manifest, else compat.
    verifier: Mutex<Option<Arc<manifest::Verifier>>>,
    /// The compat verifier, built once (used while no manifest is known).
    compat: std::sync::OnceLock<Arc<manifest::Verifier>>,
    state: Mutex<State>,
    /// Blocks whose stored copy was hashed since the store opened (appended, received with a
    /// proof, or read and checked): later reads rely on the database's own checksums.
    checked: Mutex<State>,
}

/// The manifest of a compat core: one Ed25519 signer whose public key is the core key.
fn compat_manifest(key: &Key) -> Manifest {
    Manifest {
        version: 0,
        hash: HashType::Blake2b,
        allow_patch: false,
        quorum: 1,
        signers: vec![manifest::Signer::ed25519(key.0)],
        prologue: None,
        linked: None,
        user_data: None,
    }
}

/// Core `key`'s metadata record `tag` (header, presence, manifest, number).
fn meta_key(key: &Key, tag: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + tag.len());
    k.extend_from_slice(&key.0);
    k.extend_from_slice(tag);
    k
}

/// The record of our append that ended at `end` (see the module's records).
fn batch_key(key: &Key, end: u64) -> Vec<u8> {
    let mut k = meta_key(key, b"e");
    k.extend_from_slice(&end.to_be_bytes());
    k
}

/// The store's next core number (a metadata record no core's can be: those are 33 bytes).
const NEXT_NUMBER: &[u8] = b"next-core-number";

/// Held while a core is given its number, so that two cores never get the same one.
static NUMBERING: Mutex<()> = Mutex::new(());

/// What a core's block and tree node records are keyed by, before the index (u64 BE): the
/// number the store gave the core when it first held it (4 bytes, u32 BE), or, for cores
/// held before stores numbered them, the core's 32-byte key. A 12-byte key is held inside
/// the database's own key value (20 bytes or less: no allocation, no pointer to follow when
/// keys are compared), where a 40-byte key with the core's 32 bytes in front of every index
/// cost an allocation per record and a cache miss per comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Number(u32),
    Key(Key),
}

/// A block or node record key, on the stack (lookups need no allocation).
#[derive(Debug, Clone, Copy)]
struct RecordKey {
    bytes: [u8; 40],
    len: usize,
}

impl std::ops::Deref for RecordKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Prefix {
    /// The record key of block or node `index`.
    fn key(&self, index: u64) -> RecordKey {
        let mut bytes = [0u8; 40];
        let len = match self {
            Prefix::Number(n) => {
                bytes[..4].copy_from_slice(&n.to_be_bytes());
                4
            }
            Prefix::Key(k) => {
                bytes[..32].copy_from_slice(&k.0);
                32
            }
        };
        bytes[len..len + 8].copy_from_slice(&index.to_be_bytes());
        RecordKey {
            bytes,
            len: len + 8,
        }
    }

    /// The same, for a batch (a numbered core's is held inline: no allocation).
    fn record(&self, index: u64) -> Bytes {
        Bytes::from(&*self.key(index))
    }

    /// The index a record key of this core holds; `None` for any other key (of another core,
    /// or of the other layout: a range of 12-byte keys can hold 40-byte ones).
    fn index_of(&self, k: &[u8]) -> Option<u64> {
        let first = self.key(0);
        let len = first.len - 8;
        if k.len() != first.len || k[..len] != first[..len] {
            return None;
        }
        k[len..].try_into().ok().map(u64::from_be_bytes)
    }

    /// A key past every record key of this core.
    fn end(&self) -> Vec<u8> {
        let first = self.key(0);
        let mut end = first[..first.len - 8].to_vec();
        end.extend_from_slice(&[0xff; 9]);
        end
    }
}

/// What core `key`'s block and node records are keyed by: its number; for a core the store
/// held (`held`) before it numbered cores, its key. A core held by neither is numbered now
/// (committed at once: a core numbered and never written keeps its number for when it is).
fn prefix_of(kv: &Kv, key: &Key, held: bool) -> Result<Prefix, LogError> {
    let numbered = |kv: &Kv| -> Result<Option<Prefix>, LogError> {
        let Some(n) = kv.get(Space::Meta, &meta_key(key, b"n"))? else {
            return Ok(None);
        };
        let n = decode_number(&n, "the core's number")?;
        // Stores numbered before the reverse record have none: nothing to check there.
        match kv.get(Space::Meta, &number_key(n))? {
            Some(owner) if owner != key.0 => Err(LogError::Corrupted(format!(
                "its number {n} is recorded as another core's"
            ))),
            _ => Ok(Some(Prefix::Number(n))),
        }
    };
    if let Some(p) = numbered(kv)? {
        return Ok(p);
    }
    if held {
        return Ok(Prefix::Key(*key));
    }
    let _numbering = NUMBERING.lock().unwrap_or_else(|e| e.into_inner());
    // Another open of the same core may have numbered it meanwhile.
    if let Some(p) = numbered(kv)? {
        return Ok(p);
    }
    let n = match kv.get(Space::Meta, NEXT_NUMBER)? {
        Some(n) => decode_number(&n, "the store's next core number")?,
        None => 0,
    };
    // A number in use (damaged metadata) must never be handed out again: two cores would
    // share their records.
    if kv.get(Space::Meta, &number_key(n))?.is_some() {
        return Err(LogError::Corrupted(format!(
            "the store's next core number, {n}, is already a core's: its metadata is damaged"
        )));
    }
    let next = n.checked_add(1).ok_or_else(|| {
        LogError::Invalid("the store holds as many cores as it can number (2^32)".into())
    })?;
    let mut b = Batch::default();
    b.put(
        Space::Meta,
        NEXT_NUMBER.to_vec(),
        next.to_be_bytes().to_vec(),
    );
    b.put(Space::Meta, meta_key(key, b"n"), n.to_be_bytes().to_vec());
    b.put(Space::Meta, number_key(n), key.0.to_vec());
    kv.commit(b)?;
    Ok(Prefix::Number(n))
}

/// The record of which core has number `n` (a metadata key no core's can be: 19 bytes).
fn number_key(n: u32) -> Vec<u8> {
    [&b"core-of-number-"[..], &n.to_be_bytes()].concat()
}

/// A core number record (4 bytes, u32 BE): `what` says which, for the error.
fn decode_number(v: &[u8], what: &str) -> Result<u32, LogError> {
    v.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| LogError::Corrupted(format!("{what} is {} bytes, not 4", v.len())))
}

fn encode_node(n: &Node) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&n.size.to_le_bytes());
    v[8..].copy_from_slice(&n.hash);
    v
}

fn decode_node(index: u64, v: &[u8]) -> Result<Node, LogError> {
    if v.len() != 40 {
        return Err(LogError::Corrupted(format!(
            "tree node {index} is {} bytes, not 40",
            v.len()
        )));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&v[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[8..]);
    Ok(Node {
        index,
        size: u64::from_le_bytes(size),
        hash,
    })
}

/// Adds core `key`'s record of held blocks to `s` (within `s.length`).
fn read_present(kv: &Kv, key: &Key, s: &mut State) -> Result<(), LogError> {
    if let Some(p) = kv.get(Space::Meta, &meta_key(key, b"p"))? {
        let ranges = cohd_format::present::decode(&p)
            .map_err(|e| LogError::Corrupted(format!("the record of held blocks: {e}")))?;
        for r in ranges {
            s.add(r.start..r.end.min(s.length));
        }
    }
    Ok(())
}

/// Header format version 1.
const HEADER_V1: u8 = 1;
/// Version 2: version 1 followed by the tree's roots, so that an open need not read them from
/// the nodes (cold reads through the database's tables: most of what opening a core cost).
const HEADER_V2: u8 = 2;

/// The longest prefix of a log of `length` blocks that reads as one version without a peer,
/// given the blocks held from the start: all of it when all are held, else the longest signed
/// length they cover, else all of it (reads then fail on the missing blocks).
pub(crate) fn consistent(length: u64, held: u64, signed: &BTreeSet<u64>) -> u64 {
    let readable = held.min(length);
    if readable >= length {
        return length;
    }
    signed
        .range(..=readable)
        .next_back()
        .copied()
        .unwrap_or(length)
}

fn encode_header(s: &State) -> Vec<u8> {
    let mut v = Vec::with_capacity(100 + 8 * s.signed.len() + 48 * s.roots.len());
    v.push(HEADER_V2);
    v.extend_from_slice(&s.length.to_le_bytes());
    v.extend_from_slice(&s.byte_length.to_le_bytes());
    v.extend_from_slice(&s.fork.to_le_bytes());
    v.extend_from_slice(&(s.signature.len() as u32).to_le_bytes());
    v.extend_from_slice(&s.signature);
    v.extend_from_slice(&(s.signed.len() as u32).to_le_bytes());
    for l in &s.signed {
        v.extend_from_slice(&l.to_le_bytes());
    }
    v.extend_from_slice(&(s.roots.len() as u32).to_le_bytes());
    for r in &s.roots {
        v.extend_from_slice(&r.index.to_le_bytes());
        v.extend_from_slice(&r.size.to_le_bytes());
        v.extend_from_slice(&r.hash);
    }
    v
}

/// (length, byte length, fork, signature, signed lengths, roots: `None` in a version 1 header)
type Header = (u64, u64, u64, Vec<u8>, BTreeSet<u64>, Option<Vec<Node>>);

fn decode_header(b: &[u8]) -> Result<Header, String> {
    let mut r = b;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if r.len() < n {
            return Err("the core header is truncated".into());
        }
        let (a, rest) = r.split_at(n);
        r = rest;
        Ok(a)
    };
    let u64_of = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let u32_of = |b: &[u8]| {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        u32::from_le_bytes(a) as usize
    };
    let version = take(1)?[0];
    if version != HEADER_V1 && version != HEADER_V2 {
        return Err("the core header has an unknown version".into());
    }
    let length = u64_of(take(8)?);
    let byte_length = u64_of(take(8)?);
    let fork = u64_of(take(8)?);
    let n = u32_of(take(4)?);
    if n > 4096 {
        return Err("the core header has an oversized signature".into());
    }
    let signature = take(n)?.to_vec();
    let n = u32_of(take(4)?);
    if n > SIGNED_KEPT * 4 {
        return Err("the core header lists too many signed lengths".into());
    }
    let mut signed = BTreeSet::new();
    for _ in 0..n {
        signed.insert(u64_of(take(8)?));
    }
    let roots = if version == HEADER_V2 {
        let n = u32_of(take(4)?);
        // A tree of at most 2^64 blocks has at most 64 roots.
        if n > 64 {
            return Err("the core header lists too many roots".into());
        }
        let mut roots = Vec::with_capacity(n);
        for _ in 0..n {
            let index = u64_of(take(8)?);
            let size = u64_of(take(8)?);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(take(32)?);
            roots.push(Node { index, size, hash });
        }
        Some(roots)
    } else {
        None
    };
    if !take(0)?.is_empty() || !r.is_empty() {
        return Err("the core header has trailing bytes".into());
    }
    Ok((length, byte_length, fork, signature, signed, roots))
}

/// Tree nodes read through the store, with the nodes of a write in progress on top.
struct Tree<'a> {
    log: &'a Log,
    pending: &'a BTreeMap<u64, Node>,
    failed: std::cell::RefCell<Option<LogError>>,
}

impl proof::Nodes for Tree<'_> {
    fn node(&self, index: u64) -> Option<Node> {
        if let Some(n) = self.pending.get(&index) {
            return Some(*n);
        }
        match self.log.node(index) {
            Ok(n) => n,
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                None
            }
        }
    }
}

/// Writes a core moved in from elsewhere (a store of the `hypercore` crate's files): nodes and
/// blocks first, in batches, the header and presence last. A core without its header does not
/// exist, so a stop midway leaves nothing half-imported visible, and importing again writes
/// the same records.
pub(crate) struct Import<'a> {
    kv: &'a Kv,
    key: Key,
    prefix: Prefix,
    batch: Batch,
    bytes: usize,
}

impl std::fmt::Debug for Import<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import").field("key", &self.key).finish()
    }
}

/// Bytes an import batches before committing.
const IMPORT_BATCH: usize = 8 << 20;

impl<'a> Import<'a> {
    /// Numbers the core (an import stopped midway and run again keeps the number).
    pub(crate) fn new(kv: &'a Kv, key: Key) -> Result<Self, LogError> {
        Ok(Self {
            kv,
            key,
            prefix: prefix_of(kv, &key, false)?,
            batch: Batch::default(),
            bytes: 0,
        })
    }

    fn grew(&mut self, n: usize) -> Result<(), LogError> {
        self.bytes += n;
        if self.bytes >= IMPORT_BATCH {
            self.kv.commit(std::mem::take(&mut self.batch))?;
            self.bytes = 0;
        }
        Ok(())
    }

    pub(crate) fn node(&mut self, n: &Node) -> Result<(), LogError> {
        self.batch
            .put(Space::Nodes, self.prefix.record(n.index), encode_node(n));
        self.grew(80)
    }

    pub(crate) fn block(&mut self, index: u64, value: Vec<u8>) -> Result<(), LogError> {
        let n = value.len();
        self.batch
            .put(Space::Blocks, self.prefix.record(index), value);
        self.grew(n + 40)
    }

    /// Writes the header: the core exists from here on.
    pub(crate) fn finish(
        mut self,
        length: u64,
        fork: u64,
        signature: Vec<u8>,
        signed: &[u64],
        held: &[Range<u64>],
    ) -> Result<(), LogError> {
        let mut s = State {
            length,
            fork,
            signature,
            ..State::default()
        };
        for r in held {
            s.add(r.start..r.end.min(length));
        }
        for &l in signed {
            if l <= length {
                s.note_signed(l);
            }
        }
        self.kv.commit(std::mem::take(&mut self.batch))?;
        // The byte length follows from the roots, which are stored now.
        let mut byte_length = 0u64;
        for r in merkle::full_roots(length) {
            let v = self
                .kv
                .get(Space::Nodes, &self.prefix.record(r))?
                .ok_or_else(|| LogError::Corrupted(format!("tree root {r} is missing")))?;
            byte_length = byte_length.saturating_add(decode_node(r, &v)?.size);
        }
        s.byte_length = byte_length;
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&self.key, b"h"), encode_header(&s));
        b.put(
            Space::Meta,
            meta_key(&self.key, b"p"),
            cohd_format::present::encode(&s.ranges()),
        );
        self.kv.commit(b)?;
        Ok(())
    }
}

impl Log {
    /// Opens core `key` from `kv`; `None` if the store has never held it and `create` is
    /// false. `secret` makes it writable (it must be the core's signer); `manifest`, when the
    /// caller knows it, must be the one `key` commits to.
    pub(crate) fn open(
        kv: Arc<Kv>,
        key: Key,
        secret: Option<SigningKey>,
        manifest: Option<Manifest>,
        create: bool,
    ) -> Result<Option<Self>, LogError> {
        let stored = match kv.get(Space::Meta, &meta_key(&key, b"m"))? {
            Some(b) => Some(Manifest::decode(&b).map_err(|e| {
                LogError::Corrupted(format!("its stored manifest does not read: {e}"))
            })?),
            None => None,
        };
        let given = manifest.is_some() && stored.is_none();
        let verifier = match stored.or(manifest) {
            Some(m) => Some(manifest::Verifier::new(key.0, m).map_err(|e| {
                LogError::Corrupted(format!("its manifest does not fit its key: {e}"))
            })?),
            None => None,
        };
        if let Some(sk) = &secret {
            let public = sk.verifying_key().to_bytes();
            let signs = match &verifier {
                Some(v) => v.manifest().signers.iter().any(|s| s.public_key == public),
                None => public == key.0,
            };
            if !signs {
                return Err(LogError::Corrupted(
                    "the secret key is not this core's".into(),
                ));
            }
        }
        let header = kv.get(Space::Meta, &meta_key(&key, b"h"))?;
        if header.is_none() && !create {
            return Ok(None);
        }
        let prefix = prefix_of(&kv, &key, header.is_some())?;
        let log = Self {
            kv,
            key,
            prefix,
            secret,
            verifier: Mutex::new(verifier.map(Arc::new)),
            compat: std::sync::OnceLock::new(),
            state: Mutex::default(),
            checked: Mutex::default(),
        };
        if given || header.is_none() {
            // Recorded at once: the store holds the core (and knows its manifest) from now on.
            let mut b = Batch::default();
            if header.is_none() {
                b.put(
                    Space::Meta,
                    meta_key(&key, b"h"),
                    encode_header(&State::default()),
                );
            }
            if let Some(m) = log.manifest().filter(|_| given) {
                b.put(Space::Meta, meta_key(&key, b"m"), m.encode());
            }
            log.kv.commit(b)?;
        }
        let Some(header) = header else {
            return Ok(Some(log));
        };
        let (length, byte_length, fork, signature, signed, kept) =
            decode_header(&header).map_err(LogError::Corrupted)?;
        let mut state = State {
            length,
            byte_length,
            fork,
            signature,
            signed,
            ..State::default()
        };
        read_present(&log.kv, &key, &mut state)?;
        // The roots the header keeps, if they are this length's and carry its signature and
        // byte length; else (a version 1 header, or one that does not check) the root nodes.
        // No signature: a length our own appends left unsigned (only a core we hold the
        // secret key of may have one), whose roots are read from the nodes: appends build on
        // them, and the length is signed later (`signature_of`).
        let unsigned = length > 0 && state.signature.is_empty();
        if unsigned && log.secret.is_none() {
            return Err(LogError::Corrupted(format!(
                "length {length} is not signed yet, as only our own cores' lengths are: it \
                 opens only with its secret key (which the store's ledger names)"
            )));
        }
        let kept = kept.filter(|roots| {
            !unsigned
                && roots.iter().map(|r| r.index).eq(merkle::full_roots(length))
                && roots.iter().map(|r| r.size).sum::<u64>() == byte_length
                && (length == 0
                    || log
                        .check_signature(roots, length, fork, &state.signature)
                        .is_ok())
        });
        let (roots, checked) = match kept {
            Some(roots) => (roots, true),
            None => (log.stored_roots(length)?, false),
        };
        if length > 0 && !checked {
            if !unsigned {
                log.check_signature(&roots, length, fork, &state.signature)
                    .map_err(|e| LogError::Corrupted(format!("its tree: {e}")))?;
            }
            let bytes: u64 = roots.iter().map(|r| r.size).sum();
            if bytes != byte_length {
                return Err(LogError::Corrupted(
                    "its byte length does not match its tree".into(),
                ));
            }
        }
        state.roots = roots;
        *log.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(Some(log))
    }

    /// Replaces a stored block's bytes, as damage found after a reopen (tests).
    #[cfg(test)]
    pub(crate) fn overwrite_block(&self, index: u64, bytes: &[u8]) {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(index);
        let mut b = Batch::default();
        b.put(Space::Blocks, self.prefix.record(index), bytes.to_vec());
        self.kv.commit(b).unwrap();
    }

    /// The core's manifest, when known (stored, or given when it was opened).
    pub(crate) fn manifest(&self) -> Option<Manifest> {
        self.verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|v| v.manifest().clone())
    }

    /// Whether the core's manifest is known.
    pub(crate) fn knows_manifest(&self) -> bool {
        self.verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Learns the core's manifest (known from elsewhere, e.g. derived): kept if it is the one
    /// the key commits to and none is known yet.
    pub(crate) fn learn_manifest(&self, m: Manifest) -> Result<(), LogError> {
        let mut v = self.verifier.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_some() {
            return Ok(());
        }
        let verifier = manifest::Verifier::new(self.key.0, m)
            .map_err(|e| LogError::Invalid(format!("its manifest: {e}")))?;
        let mut b = Batch::default();
        b.put(
            Space::Meta,
            meta_key(&self.key, b"m"),
            verifier.manifest().encode(),
        );
        self.kv.commit(b)?;
        *v = Some(Arc::new(verifier));
        Ok(())
    }

    /// The verifier signatures are checked with: the manifest's, else compat.
    fn verifier(&self) -> Result<Arc<manifest::Verifier>, String> {
        if let Some(v) = self
            .verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(v.clone());
        }
        if let Some(v) = self.compat.get() {
            return Ok(v.clone());
        }
        let v = manifest::Verifier::new(self.key.0, compat_manifest(&self.key))
            .map_err(|e| format!("its manifest is not known: {e}"))?;
        Ok(self.compat.get_or_init(|| Arc::new(v)).clone())
    }

    /// Core `key`'s fork and the length [`Core::consistent_length`] would give once opened (no
    /// block found damaged yet), from its two metadata records only: no tree node is read and
    /// no signature checked. For callers that compare it with what they recorded of the core
    /// earlier, and open the core when it differs. `None` when the store does not hold it.
    ///
    /// [`Core::consistent_length`]: super::Core::consistent_length
    pub(crate) fn peek_consistent(kv: &Kv, key: Key) -> Result<Option<(u64, u64)>, LogError> {
        let Some(h) = kv.get(Space::Meta, &meta_key(&key, b"h"))? else {
            return Ok(None);
        };
        let (length, _, fork, _, signed, _) = decode_header(&h).map_err(LogError::Corrupted)?;
        let mut s = State {
            length,
            ..State::default()
        };
        read_present(kv, &key, &mut s)?;
        Ok(Some((fork, consistent(length, s.contiguous(), &signed))))
    }

    /// Whether `kv` holds core `key`.
    pub(crate) fn exists(kv: &Kv, key: Key) -> Result<bool, LogError> {
        Ok(kv.get(Space::Meta, &meta_key(&key, b"h"))?.is_some())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn key(&self) -> Key {
        self.key
    }

    pub(crate) fn writable(&self) -> bool {
        self.secret.is_some()
    }

    /// (length, byte length, contiguous length, fork)
    pub(crate) fn lengths(&self) -> (u64, u64, u64, u64) {
        let s = self.state();
        (s.length, s.byte_length, s.contiguous(), s.fork)
    }

    pub(crate) fn has(&self, index: u64) -> bool {
        self.state().has(index)
    }

    /// The append of ours that `length` falls strictly inside, as `start..end`: reading the
    /// log at such a length shows none of a batch's tree. `None` for every length of a core we
    /// did not append to (what a writer's batches were is not in its blocks).
    pub(crate) fn batch_around(&self, length: u64) -> Result<Option<Range<u64>>, LogError> {
        let from = batch_key(&self.key, length.saturating_add(1));
        let to = batch_key(&self.key, u64::MAX);
        let Some((k, v)) = self.kv.scan(Space::Meta, &from, &to, 1)?.into_iter().next() else {
            return Ok(None);
        };
        let end = k
            .get(33..)
            .and_then(|e| <[u8; 8]>::try_from(e).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| LogError::Corrupted("a batch record's key is not 41 bytes".into()))?;
        let start = <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| {
                LogError::Corrupted(format!("the record of batch {end} is not 8 bytes"))
            })?;
        Ok((start < length && length < end).then_some(start..end))
    }

    /// The roots of the tree at `length`, read from the stored nodes.
    fn stored_roots(&self, length: u64) -> Result<Vec<Node>, LogError> {
        merkle::full_roots(length)
            .into_iter()
            .map(|i| {
                self.node(i)?.ok_or_else(|| {
                    LogError::Corrupted(format!("tree root {i} of length {length} is missing"))
                })
            })
            .collect()
    }

    /// Whether the log's length is one of ours not signed yet (see `signature_of`).
    pub(crate) fn unsigned(&self) -> bool {
        let s = self.state();
        s.length > 0 && s.signature.is_empty()
    }

    /// [`consistent`] for this log, given the blocks `held` from the start.
    pub(crate) fn consistent_length(&self, held: u64) -> u64 {
        let s = self.state();
        consistent(s.length, held, &s.signed)
    }

    fn check_signature(
        &self,
        roots: &[Node],
        length: u64,
        fork: u64,
        signature: &[u8],
    ) -> Result<(), String> {
        self.check_with(&*self.verifier()?, roots, length, fork, signature)
    }

    fn check_with(
        &self,
        verifier: &manifest::Verifier,
        roots: &[Node],
        length: u64,
        fork: u64,
        signature: &[u8],
    ) -> Result<(), String> {
        match verifier.verify(&merkle::tree_hash(roots), length, fork, signature) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("the signature of length {length} does not verify")),
            Err(e) => Err(format!("the signature of length {length}: {e}")),
        }
    }

    fn node(&self, index: u64) -> Result<Option<Node>, LogError> {
        self.kv
            .get(Space::Nodes, &self.prefix.key(index))?
            .map(|v| decode_node(index, &v))
            .transpose()
    }

    fn is_checked(&self, index: u64) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has(index)
    }

    /// Block `index` if held, checked against its leaf.
    pub(crate) fn get(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        if !self.has(index) {
            return Ok(None);
        }
        let Some(leaf_index) = index.checked_mul(2) else {
            return Ok(None);
        };
        // A record the database cannot read back (a failed checksum) is as damaged as one
        // that does not match its leaf: a peer can deliver it again.
        let damaged = |e: KvError| {
            tracing::debug!(core = %self.key, index, "cannot read a block: {e}");
            if e.corrupt {
                LogError::Damaged(index)
            } else {
                LogError::Kv(e)
            }
        };
        let (block, summed) = match self
            .kv
            .get_block(&self.prefix.record(index))
            .map_err(damaged)?
        {
            Some((b, summed)) => (Some(b), summed),
            None => (None, false),
        };
        // Hashed against its leaf since the store opened (a fork or a clear forgets that):
        // the database's own checksums cover it now, and its leaf need not be read.
        if block.is_some() && self.is_checked(index) {
            return Ok(block);
        }
        let leaf = match self.node(leaf_index) {
            Ok(l) => l,
            Err(LogError::Kv(e)) => return Err(damaged(e)),
            Err(_) => return Err(LogError::Damaged(index)),
        };
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        match (block, leaf) {
            // Checked before (since open), or by the checksum written with the bytes when they
            // were verified against this leaf: not hashed again.
            (Some(b), Some(l)) if l.size == b.len() as u64 && (summed || checked.has(index)) => {
                Ok(Some(b))
            }
            (Some(b), Some(l)) if l.size == b.len() as u64 && l.hash == merkle::leaf_hash(&b) => {
                checked.add(index..index + 1);
                Ok(Some(b))
            }
            _ => Err(LogError::Damaged(index)),
        }
    }

    /// Stops counting `index` as held (its stored copy is damaged): replication fetches it
    /// again. Not recorded: the next write of the record, or the block's arrival, settles it.
    pub(crate) fn forget(&self, index: u64) {
        self.state().remove(index);
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(index);
    }

    /// Appends `blocks` in one signed batch; returns (length, byte length). The blocks are
    /// moved into the commit, not copied.
    pub(crate) fn append(&self, blocks: Vec<Vec<u8>>) -> Result<(u64, u64), LogError> {
        let prepared = self.prepare_append(blocks)?;
        let mut s = self.state();
        let Some(p) = prepared else {
            return Ok((s.length, s.byte_length));
        };
        self.kv.commit(p.batch)?;
        self.install(&mut s, p.next);
        Ok((s.length, s.byte_length))
    }

    /// Appends to two logs of one store in one batch: both or neither, whatever the moment
    /// the process stops (a file's blob blocks and the entry naming them). Returns each
    /// log's (length, byte length).
    pub(crate) fn append_together(
        &self,
        blocks: Vec<Vec<u8>>,
        other: &Log,
        other_blocks: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<(Lengths, Lengths), LogError> {
        if !Arc::ptr_eq(&self.kv, &other.kv) || self.key == other.key {
            return Err(LogError::Corrupted(
                "appends together need two logs of one store".into(),
            ));
        }
        let (a, b) = (
            self.prepare_append(blocks)?,
            other.prepare_append(other_blocks)?,
        );
        // Both states are held over the commit, always in key order.
        let (mut sa, mut sb) = if self.key.0 < other.key.0 {
            let sa = self.state();
            (sa, other.state())
        } else {
            let sb = other.state();
            (self.state(), sb)
        };
        let mut batch = Batch::default();
        if durability == Durability::Synced {
            batch.synced();
        }
        let a = a.map(|p| {
            batch.extend(p.batch);
            p.next
        });
        let b = b.map(|p| {
            batch.extend(p.batch);
            p.next
        });
        self.kv.commit(batch)?;
        if let Some(next) = a {
            self.install(&mut sa, next);
        }
        if let Some(next) = b {
            other.install(&mut sb, next);
        }
        let lengths = ((sa.length, sa.byte_length), (sb.length, sb.byte_length));
        drop((sa, sb));
        // Once the state is ours (a persist that fails leaves the appends in, and says so),
        // and with reads no longer held off.
        if durability == Durability::Synced {
            self.kv.persist()?;
        }
        Ok(lengths)
    }

    /// The batch of a signed append of `blocks`, and the state it leaves; `None` for no blocks.
    /// Our writes are serialized above (one writer per core), so the state read here is still
    /// the state when the batch commits.
    fn prepare_append(&self, blocks: Vec<Vec<u8>>) -> Result<Option<Prepared>, LogError> {
        if self.secret.is_none() {
            return Err(LogError::NotWritable);
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        let mut next = self.state().clone();
        let start = next.length;
        let mut b = Batch::default();
        let hashes = merkle::leaf_hashes(&blocks);
        for (block, hash) in blocks.into_iter().zip(hashes) {
            let size = block.len() as u64;
            let leaf = Node {
                index: 2 * next.length,
                size,
                hash,
            };
            b.put(Space::Blocks, self.prefix.record(next.length), block);
            b.put(
                Space::Nodes,
                self.prefix.record(leaf.index),
                encode_node(&leaf),
            );
            next.roots.push(leaf);
            // Siblings of equal depth merge into their parent.
            while next.roots.len() > 1 {
                let n = next.roots.len();
                let (a, c) = (next.roots[n - 2], next.roots[n - 1]);
                if merkle::depth(a.index) != merkle::depth(c.index) {
                    break;
                }
                let p = merkle::parent_node(&a, &c);
                b.put(Space::Nodes, self.prefix.record(p.index), encode_node(&p));
                next.roots.truncate(n - 2);
                next.roots.push(p);
            }
            next.length += 1;
            next.byte_length += size;
        }
        // Where a multi-block append (a batch) starts and ends: a version inside one is not
        // a version of what was written (a Hyperbee batch's inner blocks carry no root).
        if next.length - start > 1 {
            b.put(
                Space::Meta,
                batch_key(&self.key, next.length),
                start.to_le_bytes().to_vec(),
            );
        }
        // Signed when a peer first asks for this length (`signature_of`), not here: most
        // lengths a writer passes through are never sent, and signing was half a put's time.
        next.signature = Vec::new();
        next.add(start..next.length);
        next.note_signed(next.length);
        self.write_state(&mut b, &next, true);
        b.own_blocks();
        Ok(Some(Prepared { batch: b, next }))
    }

    /// The signature of our own `length` on `fork`, which our appends left unsigned: made
    /// now, once the length is durable, and kept in memory (while it is still the log's
    /// length). Ed25519 signatures are deterministic, so signing a length again after a
    /// restart gives the same bytes; and our tree at a length never changes once committed
    /// (appends only add; a truncation signs its new fork at once), so signing late cannot
    /// sign two trees at one length. The roots are read from the stored nodes: we never sign
    /// a tree we do not hold. The state is not locked meanwhile (reads and appends go on).
    fn signature_of(&self, length: u64, fork: u64) -> Result<Vec<u8>, LogError> {
        let secret = self.secret.as_ref().ok_or_else(|| {
            LogError::Corrupted(format!(
                "length {length} of our own core is not signed yet, and its secret key is not here"
            ))
        })?;
        // Durable before it is signed: a length that a power loss could still take back
        // would, once a peer holds its signature, let our next appends sign a second tree at
        // that length (a fork of our own log). A no-op when nothing was written since the
        // last sync.
        self.kv.persist()?;
        let roots = self.stored_roots(length)?;
        let signature = self
            .verifier()
            .map_err(LogError::Corrupted)?
            .sign(secret, &merkle::tree_hash(&roots), length, fork)
            .map_err(|e| LogError::Corrupted(format!("cannot sign: {e}")))?;
        let mut s = self.state();
        if s.length == length && s.fork == fork && s.signature.is_empty() {
            if s.roots != roots {
                return Err(LogError::Corrupted(format!(
                    "the roots of length {length} are not its stored tree's"
                )));
            }
            s.signature = signature.clone();
        }
        Ok(signature)
    }

    /// Makes a committed append's state the log's.
    fn install(&self, s: &mut MutexGuard<'_, State>, next: State) {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(s.length..next.length);
        **s = next;
    }

    fn write_state(&self, b: &mut Batch, s: &State, present: bool) {
        b.put(Space::Meta, meta_key(&self.key, b"h"), encode_header(s));
        if present {
            b.put(
                Space::Meta,
                meta_key(&self.key, b"p"),
                cohd_format::present::encode(&s.ranges()),
            );
        }
    }

    /// Drops the stored copies of the blocks of `ranges` (tree nodes and signatures stay, so
    /// they verify when they come again); returns how many were held. The database reclaims
    /// the space of large values as its blob files are collected.
    pub(crate) fn clear(&self, ranges: &[Range<u64>]) -> Result<u64, LogError> {
        let mut s = self.state();
        let mut next = s.clone();
        let mut b = Batch::default();
        let mut gone = Vec::new();
        for r in ranges {
            let held: Vec<(u64, u64)> = s
                .present
                .range(..r.end)
                .filter(|(_, &e)| e > r.start)
                .map(|(&a, &e)| (a.max(r.start), e.min(r.end)))
                .collect();
            for (a, e) in held {
                for i in a..e {
                    b.delete(Space::Blocks, self.prefix.record(i));
                    next.remove(i);
                    gone.push(i);
                }
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.write_state(&mut b, &next, true);
        self.kv.commit(b)?;
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        for &i in &gone {
            checked.remove(i);
        }
        *s = next;
        Ok(gone.len() as u64)
    }

    /// How many nodes above block `index`'s leaf we lack.
    pub(crate) fn missing_nodes(&self, index: u64) -> u64 {
        self.missing_nodes_beside(index, |_| false)
    }

    /// How many nodes above block `index`'s leaf we lack, short of those `coming` names.
    pub(crate) fn missing_nodes_beside(&self, index: u64, coming: impl Fn(u64) -> bool) -> u64 {
        let length = self.state().length;
        proof::missing_nodes(index, length, |i| {
            coming(i)
                || self
                    .kv
                    .get(Space::Nodes, &self.prefix.key(i))
                    .ok()
                    .flatten()
                    .is_some()
        })
    }

    /// The proof answering `req`, or `None` when we cannot give one (a block we do not hold,
    /// a node we lack, another fork, a request outside our tree).
    pub(crate) fn create_proof(&self, req: &ProofRequest) -> Result<Option<Proof>, LogError> {
        // Only what a proof needs of the state: a whole copy (its presence map, its signed
        // lengths) per request showed in profiles of a peer serving many blocks.
        let (fork, length, signature) = {
            let s = self.state();
            let sig = req.upgrade.map(|_| s.signature.clone());
            (s.fork, s.length, sig)
        };
        let signature = match signature {
            Some(sig) if sig.is_empty() && length > 0 => Some(self.signature_of(length, fork)?),
            sig => sig,
        };
        if req.fork != fork {
            return Ok(None);
        }
        let value = match &req.block {
            Some(b) => match self.get(b.index)? {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        let preq = proof::Request {
            block: req.block.map(|b| Indexed {
                index: b.index,
                nodes: b.nodes,
            }),
            hash: req.hash.map(|h| Indexed {
                index: h.index,
                nodes: h.nodes,
            }),
            upgrade: req.upgrade.map(|u| UpgradeRange {
                start: u.start,
                length: u.length,
            }),
            seek: req.seek.map(|s| proof::Seek {
                bytes: s.bytes,
                padding: s.padding,
            }),
        };
        if preq.block.is_none()
            && preq.hash.is_none()
            && preq.upgrade.is_none()
            && preq.seek.is_none()
        {
            if req.manifest {
                if let Some(m) = self.manifest() {
                    return Ok(Some(Proof {
                        fork,
                        manifest: Some(m.encode()),
                        ..Proof::default()
                    }));
                }
            }
            return Ok(None);
        }
        let pending = BTreeMap::new();
        let tree = Tree {
            log: self,
            pending: &pending,
            failed: Default::default(),
        };
        let nodes = match proof::create(&tree, length, &preq) {
            Ok(n) => n,
            Err(e) => {
                if let Some(e) = tree.failed.take() {
                    return Err(e);
                }
                tracing::debug!(core = %self.key, "cannot build the requested proof: {e}");
                return Ok(None);
            }
        };
        let mut p = Proof {
            fork,
            ..Proof::default()
        };
        if let (Some(b), Some(value)) = (req.block, value) {
            p.block = Some(DataBlock {
                index: b.index,
                value,
                nodes: nodes.nodes.clone().unwrap_or_default(),
            });
        } else if let Some(h) = req.hash {
            p.hash = Some(DataNodes {
                index: h.index,
                nodes: nodes.nodes.clone().unwrap_or_default(),
            });
        }
        if req.manifest {
            p.manifest = self
                .verifier
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|v| v.manifest().encode());
        }
        if let (Some(s), Some(nodes)) = (req.seek, nodes.seek.clone()) {
            p.seek = Some(DataNodes {
                index: s.bytes,
                nodes,
            });
        }
        if let Some(u) = req.upgrade {
            p.upgrade = Some(DataUpgrade {
                start: u.start,
                length: u.length,
                nodes: nodes.upgrade.unwrap_or_default(),
                additional: nodes.additional,
                signature: Some(signature.unwrap_or_default()),
            });
        }
        Ok(Some(p))
    }

    /// The manifest a proof brings when we did not know ours yet: it must be the one the key
    /// commits to.
    fn manifest_of(&self, p: &Proof) -> Result<Option<manifest::Verifier>, LogError> {
        let (Some(bytes), None) = (&p.manifest, self.manifest()) else {
            return Ok(None);
        };
        let invalid = |e: String| LogError::Invalid(format!("its manifest: {e}"));
        let m = Manifest::decode(bytes).map_err(|e| invalid(e.to_string()))?;
        manifest::Verifier::new(self.key.0, m)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    fn put_manifest(&self, b: &mut Batch, v: Option<&manifest::Verifier>) {
        if let Some(v) = v {
            b.put(
                Space::Meta,
                meta_key(&self.key, b"m"),
                v.manifest().encode(),
            );
        }
    }

    /// Our own log, cut back to `length` blocks: the next fork, the shorter tree signed again.
    /// Peers follow it ([`follow_fork`](Self::follow_fork)). Not offered above the store:
    /// a Hyperdrive never truncates, and the ledger would take it for lost blocks.
    #[cfg(test)]
    pub(crate) fn truncate(&self, length: u64) -> Result<(), LogError> {
        let secret = self.secret.as_ref().ok_or(LogError::NotWritable)?;
        let mut s = self.state();
        if length > s.length {
            return Err(LogError::Invalid(format!(
                "cannot truncate {} blocks to {length}",
                s.length
            )));
        }
        let roots = self.stored_roots(length)?;
        let fork = s.fork + 1;
        let signature = self
            .verifier()
            .map_err(LogError::Corrupted)?
            .sign(secret, &merkle::tree_hash(&roots), length, fork)
            .map_err(|e| LogError::Corrupted(format!("cannot sign: {e}")))?;
        self.reorg(&mut s, length, roots, fork, signature, None)
    }

    /// Moves to a peer's newer fork, proven by an upgrade from block 0: the new roots are
    /// checked against the owner's signature, and what the two trees share is kept. Shared is
    /// counted by whole roots of the new tree that equal our nodes (a root that differs drops
    /// every block under it, to be fetched again with proofs of the new tree): simpler than
    /// JavaScript's search for the exact point with hash requests, and as safe.
    fn follow_fork(&self, s: &mut MutexGuard<'_, State>, p: &Proof) -> Result<(), LogError> {
        let u = p
            .upgrade
            .as_ref()
            .ok_or_else(|| LogError::Invalid("no upgrade".into()))?;
        let received = Received {
            block: None,
            hash: None,
            seek: None,
            upgrade: Some(ReceivedUpgrade {
                start: 0,
                length: u.length,
                nodes: u.nodes.clone(),
                additional: u.additional.clone(),
            }),
        };
        let invalid = |e: ProofError| LogError::Invalid(format!("invalid fork proof: {e}"));
        let verified = proof::verify(&[], 0, &received).map_err(invalid)?;
        let (roots, length) = verified
            .upgraded
            .ok_or_else(|| LogError::Invalid("a fork proof without its upgrade".into()))?;
        let new_manifest = self.manifest_of(p)?;
        let verifier = match &new_manifest {
            Some(v) => Arc::new(v.clone()),
            None => self.verifier().map_err(LogError::Invalid)?,
        };
        let sig = u.signature.as_deref().unwrap_or_default();
        self.check_with(&verifier, &roots, length, p.fork, sig)
            .map_err(LogError::Invalid)?;
        let mut shared = 0;
        for r in &roots {
            let (_, end) = merkle::span(r.index);
            if end > s.length || self.node(r.index)? != Some(*r) {
                break;
            }
            shared = end;
        }
        tracing::info!(core = %self.key, fork = p.fork, length, shared, "the owner truncated its log: following its new fork");
        self.reorg(s, shared, roots, p.fork, sig.to_vec(), new_manifest)
    }

    /// One batch: drops the blocks and tree nodes past `shared` blocks, stores the new roots
    /// and the header of the new fork.
    fn reorg(
        &self,
        s: &mut MutexGuard<'_, State>,
        shared: u64,
        roots: Vec<Node>,
        fork: u64,
        signature: Vec<u8>,
        new_manifest: Option<manifest::Verifier>,
    ) -> Result<(), LogError> {
        let mut next = (**s).clone();
        let mut b = Batch::default();
        let new_roots: BTreeSet<u64> = roots.iter().map(|r| r.index).collect();
        // Only what is stored is visited (a signed length can be far beyond what we hold).
        for r in next.cut(shared) {
            for i in r {
                b.delete(Space::Blocks, self.prefix.record(i));
            }
        }
        // Every node whose leaves reach past `shared` belonged to the old tree only: the
        // ancestors of leaf `shared` that straddle it, and every stored node right of it.
        let leaf = shared.saturating_mul(2);
        let mut i = leaf;
        for _ in 0..64 {
            i = merkle::parent(i);
            let (first, end) = merkle::span(i);
            if first < shared && end > shared && !new_roots.contains(&i) {
                b.delete(Space::Nodes, self.prefix.record(i));
            }
        }
        let end = self.prefix.end();
        let mut from = self.prefix.key(leaf).to_vec();
        loop {
            let page = self.kv.scan(Space::Nodes, &from, &end, 1024)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            let n = page.len();
            for (k, _) in page {
                if self
                    .prefix
                    .index_of(&k)
                    .is_some_and(|i| !new_roots.contains(&i))
                {
                    b.delete(Space::Nodes, k);
                }
            }
            if n < 1024 {
                break;
            }
        }
        // Our batches that ended past the cut are gone with it.
        let gone = batch_key(&self.key, shared.saturating_add(1));
        for (k, _) in self.kv.scan(
            Space::Meta,
            &gone,
            &batch_key(&self.key, u64::MAX),
            usize::MAX,
        )? {
            b.delete(Space::Meta, k);
        }
        for r in &roots {
            b.put(Space::Nodes, self.prefix.record(r.index), encode_node(r));
        }
        next.length = roots
            .iter()
            .map(|r| merkle::span(r.index).1)
            .max()
            .unwrap_or(0);
        next.byte_length = roots.iter().map(|r| r.size).sum();
        next.roots = roots;
        next.fork = fork;
        next.signature = signature;
        next.signed.retain(|l| *l <= shared);
        next.note_signed(next.length);
        self.write_state(&mut b, &next, true);
        self.put_manifest(&mut b, new_manifest.as_ref());
        self.kv.commit(b)?;
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut(shared);
        **s = next;
        if let Some(v) = new_manifest {
            *self.verifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
        }
        Ok(())
    }

    /// One proof: [`apply_proofs`](Self::apply_proofs) of it alone.
    #[cfg(test)]
    pub(crate) fn apply_proof(&self, p: Proof) -> Result<bool, LogError> {
        self.apply_proofs(vec![p]).1
    }

    /// Verifies peers' proofs, in order, and stores what they prove, committed together: a
    /// receiver's blocks are hashed several at a time (SIMD lanes), and one batch records what
    /// several proofs prove (one header, one presence record). Each proof is still verified on
    /// its own, against the tree the ones before it left. `Ok(false)`: a proof is for another
    /// fork. An upgrade that starts below our length (we grew meanwhile, from another peer) is
    /// dropped, and the rest applied if it still fits. Stops at the first proof that does not
    /// fit (`Ok(false)`) or does not verify (`Err`), after committing the ones before it;
    /// returns how many were applied, and the last outcome.
    pub(crate) fn apply_proofs(&self, proofs: Vec<Proof>) -> (usize, Result<bool, LogError>) {
        let mut s = self.state();
        let leaves = {
            let values: Vec<&[u8]> = proofs
                .iter()
                .filter_map(|p| p.block.as_ref().map(|b| b.value.as_slice()))
                .collect();
            merkle::leaf_hashes(&values)
        };
        let mut leaves = leaves.into_iter();
        let mut applied = 0;
        let mut staged = Staged::new(&s);
        for p in proofs {
            let leaf = if p.block.is_some() {
                leaves.next()
            } else {
                None
            };
            // Following a fork rewrites the tree, and a first manifest changes how signatures
            // are checked: such a proof commits on its own, after what is staged.
            let alone = p.fork != s.fork || (p.manifest.is_some() && !self.knows_manifest());
            let outcome = if alone {
                let before = std::mem::replace(&mut staged, Staged::new(&s));
                if let Err(e) = self.commit_staged(&mut s, before) {
                    return (applied, Err(e));
                }
                let r = self.apply_alone(&mut s, p);
                staged = Staged::new(&s);
                r
            } else {
                self.stage(&mut staged, p, leaf)
            };
            match outcome {
                Ok(true) => applied += 1,
                stop => {
                    let n = applied - staged.count;
                    return match self.commit_staged(&mut s, staged) {
                        Ok(()) => (applied, stop),
                        Err(e) => (n, Err(e)),
                    };
                }
            }
        }
        let n = applied - staged.count;
        match self.commit_staged(&mut s, staged) {
            Ok(()) => (applied, Ok(true)),
            Err(e) => (n, Err(e)),
        }
    }

    /// A proof that changes the fork or brings the manifest, verified and committed alone.
    fn apply_alone(&self, s: &mut MutexGuard<'_, State>, p: Proof) -> Result<bool, LogError> {
        if p.fork != s.fork {
            // The owner truncated its log (a new fork): a whole new tree, from its first block.
            let from_start = p.upgrade.as_ref().is_some_and(|u| u.start == 0);
            if p.fork > s.fork && from_start && !self.writable() {
                self.follow_fork(s, &p)?;
                return Ok(true);
            }
            return Ok(false);
        }
        let new_manifest = self.manifest_of(&p)?;
        let mut staged = Staged::new(s);
        if !self.stage_with(&mut staged, p, None, new_manifest.as_ref())? {
            return Ok(false);
        }
        // A stale proof stores nothing, not even the manifest it brings.
        if !staged.changed {
            return Ok(true);
        }
        self.put_manifest(&mut staged.batch, new_manifest.as_ref());
        self.commit_staged(s, staged)?;
        if let Some(v) = new_manifest {
            *self.verifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
        }
        Ok(true)
    }

    fn stage(
        &self,
        staged: &mut Staged,
        p: Proof,
        leaf: Option<[u8; 32]>,
    ) -> Result<bool, LogError> {
        self.stage_with(staged, p, leaf, None)
    }

    /// Verifies `p` against the staged state and stages what it proves. `leaf`: the block's
    /// leaf hash, when hashed beforehand; `manifest`: the one `p` brings, to check it with.
    fn stage_with(
        &self,
        staged: &mut Staged,
        mut p: Proof,
        leaf: Option<[u8; 32]>,
        manifest: Option<&manifest::Verifier>,
    ) -> Result<bool, LogError> {
        let next = &mut staged.next;
        if let Some(u) = &p.upgrade {
            if u.start < next.length {
                p.upgrade = None;
            }
        }
        let received = Received {
            block: p.block.as_mut().map(|b| {
                let DataBlock {
                    index,
                    value,
                    nodes,
                } = b;
                (*index, value.as_slice(), std::mem::take(nodes))
            }),
            hash: p
                .hash
                .as_mut()
                .map(|h| (h.index, std::mem::take(&mut h.nodes))),
            seek: p.seek.as_mut().map(|s| std::mem::take(&mut s.nodes)),
            upgrade: p.upgrade.as_mut().map(|u| ReceivedUpgrade {
                start: u.start,
                length: u.length,
                nodes: std::mem::take(&mut u.nodes),
                additional: std::mem::take(&mut u.additional),
            }),
        };
        let invalid = |e: ProofError| LogError::Invalid(format!("invalid proof: {e}"));
        let verified =
            proof::verify_hashed(&next.roots, next.length, &received, leaf).map_err(invalid)?;
        drop(received);
        let mut upgraded = None;
        if let Some((roots, length)) = verified.upgraded {
            let u = p
                .upgrade
                .as_ref()
                .ok_or_else(|| LogError::Invalid("an upgrade without its signature".into()))?;
            let sig = u.signature.as_deref().unwrap_or_default();
            let verifier = match manifest {
                Some(v) => Arc::new(v.clone()),
                None => self.verifier().map_err(LogError::Invalid)?,
            };
            self.check_with(&verifier, &roots, length, p.fork, sig)
                .map_err(LogError::Invalid)?;
            upgraded = Some((roots, length, sig.to_vec()));
        }
        if let Some(c) = verified.check {
            let stored = match staged.nodes.get(&c.index) {
                Some(n) => Some(*n),
                None => self.node(c.index)?,
            };
            match stored {
                Some(stored) if stored == c => {}
                Some(_) => {
                    return Err(LogError::Invalid(format!(
                        "node {} does not match our tree",
                        c.index
                    )))
                }
                // Proven against a tree we no longer have (a stale answer): nothing to store.
                None if p.upgrade.is_none() => {
                    return Ok(true);
                }
                None => {
                    return Err(LogError::Invalid(format!(
                        "the proof ends at node {}, which we do not hold",
                        c.index
                    )))
                }
            }
        }
        let length = upgraded.as_ref().map_or(next.length, |u| u.1);
        if let Some(block) = &p.block {
            if block.index >= length {
                return Err(LogError::Invalid(format!(
                    "block {} lies past the signed length {}",
                    block.index, length
                )));
            }
        }
        // Checked in full: only now does the staged state change.
        if let Some((roots, length, sig)) = upgraded {
            next.byte_length = roots.iter().map(|r| r.size).sum();
            next.roots = roots;
            next.length = length;
            next.signature = sig;
            next.note_signed(length);
        }
        for n in &verified.nodes {
            staged
                .batch
                .put(Space::Nodes, self.prefix.record(n.index), encode_node(n));
            staged.nodes.insert(n.index, *n);
        }
        // The block's bytes move into the batch (blocks are the bulk of what replication copies).
        if let Some(block) = p.block.take() {
            next.add(block.index..block.index + 1);
            staged.blocks.push(block.index);
            staged
                .batch
                .put(Space::Blocks, self.prefix.record(block.index), block.value);
        }
        staged.changed = true;
        staged.count += 1;
        Ok(true)
    }

    /// Commits what `staged` holds (with its header and presence) and makes its state ours.
    fn commit_staged(&self, s: &mut MutexGuard<'_, State>, staged: Staged) -> Result<(), LogError> {
        if !staged.changed {
            return Ok(());
        }
        let Staged {
            next,
            mut batch,
            blocks,
            ..
        } = staged;
        self.write_state(&mut batch, &next, !blocks.is_empty());
        self.kv.commit(batch)?;
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        for i in blocks {
            checked.add(i..i + 1);
        }
        drop(checked);
        **s = next;
        Ok(())
    }
}

/// Proofs verified and not committed yet: the state they lead to, and their writes.
struct Staged {
    next: State,
    batch: Batch,
    /// The nodes staged (a later proof of the batch may end at one of them).
    nodes: BTreeMap<u64, Node>,
    /// The blocks staged.
    blocks: Vec<u64>,
    /// Proofs staged (including stale ones that store nothing).
    count: usize,
    /// Whether there is anything to commit.
    changed: bool,
}

impl Staged {
    fn new(s: &State) -> Self {
        Self {
            next: s.clone(),
            batch: Batch::default(),
            nodes: BTreeMap::new(),
            blocks: Vec::new(),
            count: 0,
            changed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohd_format::wire::{RequestBlock, RequestUpgrade};

    fn writer(kv: &Arc<Kv>, n: u64) -> Log {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let key = Key(sk.verifying_key().to_bytes());
        let log = Log::open(kv.clone(), key, Some(sk), None, true)
            .unwrap()
            .unwrap();
        for i in 0..n {
            log.append(vec![format!("block {i}").into_bytes()]).unwrap();
        }
        log
    }

    fn req(block: Option<(u64, u64)>, upgrade: Option<(u64, u64)>) -> ProofRequest {
        ProofRequest {
            block: block.map(|(index, nodes)| RequestBlock { index, nodes }),
            upgrade: upgrade.map(|(start, length)| RequestUpgrade { start, length }),
            ..ProofRequest::default()
        }
    }

    /// Replicates `w` into `r`: an upgrade (from 0 when `w` is on a newer fork), then each
    /// missing block with the nodes `r` lacks.
    fn replicate(w: &Log, r: &Log) {
        let (len, _, _, fork) = w.lengths();
        let (rlen, _, _, rfork) = r.lengths();
        if rfork < fork || rlen < len {
            let start = if rfork < fork { 0 } else { rlen };
            let p = w
                .create_proof(&ProofRequest {
                    fork,
                    ..req(None, Some((start, len - start)))
                })
                .unwrap()
                .unwrap();
            assert!(r.apply_proof(p).unwrap());
        }
        for i in 0..len {
            if r.has(i) {
                continue;
            }
            let p = w
                .create_proof(&ProofRequest {
                    fork,
                    ..req(Some((i, r.missing_nodes(i))), None)
                })
                .unwrap()
                .unwrap();
            assert!(r.apply_proof(p).unwrap(), "block {i}");
        }
    }

    #[test]
    fn a_truncated_writer_is_followed_keeping_what_the_trees_share() {
        for (n, keep, add) in [(13, 8, 3), (16, 8, 0), (16, 12, 9), (5, 0, 4), (9, 9, 1)] {
            let wkv = Arc::new(Kv::memory());
            let w = writer(&wkv, n);
            let rkv = Arc::new(Kv::memory());
            let r = Log::open(rkv.clone(), w.key(), None, None, true)
                .unwrap()
                .unwrap();
            replicate(&w, &r);
            assert_eq!(r.state().length, n);
            w.truncate(keep).unwrap();
            for i in keep..keep + add {
                w.append(vec![format!("new {i}").into_bytes()]).unwrap();
            }
            // A proof of the old fork no longer fits the writer; the writer's new one is
            // followed.
            let p = w
                .create_proof(&ProofRequest {
                    fork: 1,
                    ..req(None, Some((0, keep + add)))
                })
                .unwrap()
                .unwrap();
            assert!(r.apply_proof(p).unwrap());
            let s = r.state();
            assert_eq!((s.fork, s.length), (1, keep + add));
            // Whole roots of the new tree that equal ours are kept, the rest is gone.
            let shared = s.contiguous();
            assert!(shared <= keep, "{n} {keep} {add}: kept {shared}");
            drop(s);
            replicate(&w, &r);
            for i in 0..keep + add {
                let want = if i < keep {
                    format!("block {i}")
                } else {
                    format!("new {i}")
                };
                assert_eq!(
                    r.get(i).unwrap().unwrap(),
                    want.as_bytes(),
                    "{n} {keep} {add}: {i}"
                );
            }
            assert_eq!(r.get(keep + add).unwrap(), None);
            // What the reader holds reopens, signature and all.
            let again = Log::open(rkv, w.key(), None, None, true).unwrap().unwrap();
            assert_eq!(again.lengths(), (keep + add, w.lengths().1, keep + add, 1));
        }
    }

    #[test]
    fn a_fork_proof_with_a_forged_signature_changes_nothing() {
        let w = writer(&Arc::new(Kv::memory()), 10);
        let rkv = Arc::new(Kv::memory());
        let r = Log::open(rkv, w.key(), None, None, true).unwrap().unwrap();
        replicate(&w, &r);
        w.truncate(4).unwrap();
        let mut p = w
            .create_proof(&ProofRequest {
                fork: 1,
                ..req(None, Some((0, 4)))
            })
            .unwrap()
            .unwrap();
        if let Some(u) = &mut p.upgrade {
            if let Some(sig) = &mut u.signature {
                sig[0] ^= 1;
            }
        }
        let before = r.lengths();
        assert!(r.apply_proof(p).is_err());
        assert_eq!(r.lengths(), before);
        assert_eq!((before.0, before.2, before.3), (10, 10, 0));
        assert_eq!(r.get(9).unwrap().unwrap(), b"block 9");
    }

    #[test]
    fn appends_together_commit_both_or_neither() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let kv = Arc::new(Kv::Faulty(
            Box::new(Kv::memory()),
            super::super::kv::Faults {
                state: AtomicU64::new(1),
                every: 1,
                off: AtomicBool::new(true),
            },
        ));
        let open = |seed: u8| {
            let sk = SigningKey::from_bytes(&[seed; 32]);
            let key = Key(sk.verifying_key().to_bytes());
            Log::open(kv.clone(), key, Some(sk), None, true)
                .unwrap()
                .unwrap()
        };
        let (blobs, db) = (open(1), open(2));
        let (a, b) = blobs
            .append_together(
                vec![b"blob 0".to_vec(), b"blob 1".to_vec()],
                &db,
                vec![b"entry 0".to_vec()],
                Durability::Buffered,
            )
            .unwrap();
        assert_eq!((a.0, b.0), (2, 1));
        // A commit that fails leaves both logs as they were, in memory and in the store.
        let Kv::Faulty(_, f) = &*kv else {
            unreachable!()
        };
        f.off.store(false, Ordering::Relaxed);
        assert!(blobs
            .append_together(
                vec![b"blob 2".to_vec()],
                &db,
                vec![b"entry 1".to_vec()],
                Durability::Buffered
            )
            .is_err());
        f.off.store(true, Ordering::Relaxed);
        assert_eq!((blobs.lengths().0, db.lengths().0), (2, 1));
        for (log, n) in [(&blobs, 2), (&db, 1)] {
            let again = Log::open(kv.clone(), log.key(), log.secret.clone(), None, false)
                .unwrap()
                .unwrap();
            assert_eq!(again.lengths().0, n);
            assert!(again.get(n).unwrap().is_none());
        }
        // Then both go on from there.
        let (a, b) = blobs
            .append_together(
                vec![b"blob 2".to_vec()],
                &db,
                vec![b"entry 1".to_vec()],
                Durability::Buffered,
            )
            .unwrap();
        assert_eq!((a.0, b.0), (3, 2));
        assert_eq!(db.get(1).unwrap().unwrap(), b"entry 1");
        assert_eq!(blobs.get(2).unwrap().unwrap(), b"blob 2");
        // Two handles of one log, or logs of two stores, are refused.
        assert!(blobs
            .append_together(
                vec![b"x".to_vec()],
                &blobs,
                vec![b"y".to_vec()],
                Durability::Buffered
            )
            .is_err());
        let elsewhere = writer(&Arc::new(Kv::memory()), 0);
        assert!(blobs
            .append_together(
                vec![b"x".to_vec()],
                &elsewhere,
                vec![b"y".to_vec()],
                Durability::Buffered
            )
            .is_err());
    }

    /// The header keeps the tree's roots (version 2), and an open uses them: a core whose root
    /// nodes are gone still opens from them, with the same roots. A version 1 header (no roots)
    /// still opens, from the root nodes.
    #[test]
    fn the_header_keeps_the_roots() {
        // A reader's header: signed (our own appends leave theirs unsigned, see below).
        let w = writer(&Arc::new(Kv::memory()), 13);
        let kv = Arc::new(Kv::memory());
        let r = Log::open(kv.clone(), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        replicate(&w, &r);
        let w = r;
        let roots = w.state().roots.clone();
        let header = kv
            .get(Space::Meta, &meta_key(&w.key(), b"h"))
            .unwrap()
            .unwrap();
        let decoded = decode_header(&header).unwrap();
        assert_eq!(decoded.5.as_deref(), Some(&roots[..]));
        let (key, prefix) = (w.key(), w.prefix);
        drop(w);
        let reopen = || {
            Log::open(kv.clone(), key, None, None, true)
                .unwrap()
                .unwrap()
                .state()
                .roots
                .clone()
        };
        // A version 1 header: the same, without the roots.
        let v1_len = header.len() - 4 - 48 * roots.len();
        let mut v1 = header[..v1_len].to_vec();
        v1[0] = HEADER_V1;
        assert_eq!(decode_header(&v1).unwrap().5, None);
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&key, b"h"), v1);
        kv.commit(b).unwrap();
        assert_eq!(reopen(), roots);
        // Back to version 2, and the root nodes gone: the header's roots are used.
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&key, b"h"), header.clone());
        for r in &roots {
            b.delete(Space::Nodes, prefix.record(r.index));
        }
        kv.commit(b).unwrap();
        assert_eq!(reopen(), roots);
        // Roots that do not carry the signature are not trusted: the nodes are read, and
        // they are gone.
        let mut bad = header.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&key, b"h"), bad);
        kv.commit(b).unwrap();
        assert!(Log::open(kv.clone(), key, None, None, true).is_err());
    }

    /// An append leaves its length unsigned; the first proof a peer asks for signs it, the
    /// same bytes an eager signature would have been, after a reopen too. Roots in a header
    /// that do not match the stored tree are not used, and an unsigned header opened without
    /// its secret key is refused.
    #[test]
    fn an_append_is_signed_when_a_peer_asks() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 5);
        w.append(vec![b"a".to_vec(), b"bb".to_vec()]).unwrap();
        let stored = || {
            let h = kv
                .get(Space::Meta, &meta_key(&w.key(), b"h"))
                .unwrap()
                .unwrap();
            decode_header(&h).unwrap()
        };
        assert!(stored().3.is_empty(), "an append signs nothing");
        let sk = SigningKey::from_bytes(&[7; 32]);
        let roots = w.state().roots.clone();
        let eager = w
            .verifier()
            .unwrap()
            .sign(&sk, &merkle::tree_hash(&roots), 7, 0)
            .unwrap();
        let r = Log::open(Arc::new(Kv::memory()), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        let up = w.create_proof(&req(None, Some((0, 7)))).unwrap().unwrap();
        assert_eq!(
            up.upgrade.as_ref().unwrap().signature.as_ref(),
            Some(&eager)
        );
        assert!(r.apply_proof(up).unwrap());
        assert_eq!(r.lengths().0, 7);
        assert_eq!(r.state().signature, eager);

        // Reopened (the signature was never stored): signed again, to the same bytes.
        let again = Log::open(kv.clone(), w.key(), Some(sk.clone()), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(again.signature_of(7, 0).unwrap(), eager);
        assert_eq!(again.state().signature, eager);
        // Without the secret key an unsigned header is not one of ours: refused.
        assert!(matches!(
            Log::open(kv.clone(), w.key(), None, None, false),
            Err(LogError::Corrupted(_))
        ));

        // A root in the header that is not the stored node's: the log opens from the stored
        // nodes, so appends build on (and signatures sign) the tree it holds.
        let mut s = again.state().clone();
        s.signature.clear();
        s.roots[0].hash[0] ^= 1;
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&w.key(), b"h"), encode_header(&s));
        kv.commit(b).unwrap();
        let damaged = Log::open(kv.clone(), w.key(), Some(sk), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(damaged.state().roots, roots);
        let up = damaged
            .create_proof(&req(None, Some((0, 7))))
            .unwrap()
            .unwrap();
        assert_eq!(up.upgrade.unwrap().signature, Some(eager));
    }

    /// A multi-block append records where it starts and ends; single appends and cores we
    /// only received record nothing; a truncation forgets the batches it cuts.
    #[test]
    fn a_batch_is_known_by_its_ends() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 2);
        w.append((0..5).map(|i| vec![i]).collect()).unwrap(); // 2..7
        w.append(vec![b"one".to_vec()]).unwrap(); // 7..8
        w.append(vec![b"x".to_vec(), b"y".to_vec()]).unwrap(); // 8..10
        let around = |l: &Log, n| l.batch_around(n).unwrap();
        for n in 0..=12 {
            let want = match n {
                3..=6 => Some(2..7),
                9 => Some(8..10),
                _ => None,
            };
            assert_eq!(around(&w, n), want, "length {n}");
        }
        // Kept across a reopen.
        let again = Log::open(kv.clone(), w.key(), w.secret.clone(), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(around(&again, 4), Some(2..7));
        // A reader holds the same blocks and knows none of the writer's batches.
        let r = Log::open(Arc::new(Kv::memory()), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        replicate(&w, &r);
        assert_eq!(r.lengths().0, 10);
        assert!((0..=10).all(|n| around(&r, n).is_none()));
        // Cut inside the first batch: both batches are gone.
        w.truncate(4).unwrap();
        assert!((0..=10).all(|n| around(&w, n).is_none()));
        w.append(vec![b"p".to_vec(), b"q".to_vec(), b"r".to_vec()])
            .unwrap(); // 4..7
        assert_eq!(around(&w, 5), Some(4..7));
        assert_eq!(around(&w, 3), None);
    }

    #[test]
    fn append_reopen_and_replicate() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 13);
        w.append(vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()])
            .unwrap();
        assert_eq!(w.lengths().0, 16);
        // The tree equals the plain model's.
        let blocks: Vec<Vec<u8>> = (0..13)
            .map(|i| format!("block {i}").into_bytes())
            .chain([b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()])
            .collect();
        let model = proof::tree_of(&blocks);
        assert_eq!(
            w.state().roots,
            proof::roots_of(&model, 16).unwrap(),
            "roots"
        );
        let reopened = Log::open(kv.clone(), w.key(), w.secret.clone(), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(reopened.lengths(), w.lengths());
        assert!(reopened.writable());

        // A reader, in shuffled order, one block per proof after one upgrade.
        let rkv = Arc::new(Kv::memory());
        let r = Log::open(rkv.clone(), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        let up = w.create_proof(&req(None, Some((0, 16)))).unwrap().unwrap();
        assert!(r.apply_proof(up).unwrap());
        assert_eq!(r.lengths().0, 16);
        for i in [5u64, 0, 15, 7, 8, 1, 2, 3, 4, 6, 9, 10, 11, 12, 13, 14] {
            let nodes = r.missing_nodes(i);
            let p = w
                .create_proof(&req(Some((i, nodes)), None))
                .unwrap()
                .unwrap();
            assert!(r.apply_proof(p).unwrap(), "{i}");
            assert_eq!(r.get(i).unwrap().unwrap(), blocks[i as usize]);
        }
        assert_eq!(r.lengths().2, 16);
        // And a reopened reader holds it all.
        let r2 = Log::open(rkv, w.key(), None, None, false).unwrap().unwrap();
        assert_eq!(r2.lengths(), r.lengths());
        assert_eq!(r2.get(15).unwrap().unwrap(), b"ccc");
    }

    #[test]
    fn forged_and_stale_proofs() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 8);
        let r = Log::open(Arc::new(Kv::memory()), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        // A wrong signature.
        let mut up = w.create_proof(&req(None, Some((0, 8)))).unwrap().unwrap();
        up.upgrade.as_mut().unwrap().signature = Some(vec![1; 64]);
        assert!(r.apply_proof(up).is_err());
        assert_eq!(r.lengths().0, 0);
        // A changed block.
        let up = w.create_proof(&req(None, Some((0, 8)))).unwrap().unwrap();
        assert!(r.apply_proof(up.clone()).unwrap());
        let mut p = w
            .create_proof(&req(Some((3, r.missing_nodes(3))), None))
            .unwrap()
            .unwrap();
        p.block.as_mut().unwrap().value = b"forged".to_vec();
        assert!(r.apply_proof(p).is_err());
        assert!(!r.has(3));
        // The same upgrade again (stale): harmless.
        assert!(r.apply_proof(up).unwrap());
        assert_eq!(r.lengths().0, 8);
        // Another fork: does not fit.
        let mut p = w
            .create_proof(&req(Some((3, r.missing_nodes(3))), None))
            .unwrap()
            .unwrap();
        p.fork = 1;
        assert!(!r.apply_proof(p).unwrap());
    }

    /// The proofs a reader applying them one at a time gets: an upgrade to `w`'s length, then
    /// each block with the nodes the reader lacks at that moment (so a later proof may end at
    /// a node an earlier one brought).
    fn proofs_one_by_one(w: &Log) -> Vec<Proof> {
        let len = w.lengths().0;
        let r = Log::open(Arc::new(Kv::memory()), w.key(), None, None, true)
            .unwrap()
            .unwrap();
        let mut out = vec![w.create_proof(&req(None, Some((0, len)))).unwrap().unwrap()];
        assert!(r.apply_proof(out[0].clone()).unwrap());
        for i in 0..len {
            let p = w
                .create_proof(&req(Some((i, r.missing_nodes(i))), None))
                .unwrap()
                .unwrap();
            assert!(r.apply_proof(p.clone()).unwrap());
            out.push(p);
        }
        out
    }

    #[test]
    fn proofs_applied_together_are_each_checked() {
        let w = writer(&Arc::new(Kv::memory()), 21);
        let proofs = proofs_one_by_one(&w);
        let len = w.lengths().0;
        let reader = || {
            let kv = Arc::new(Kv::memory());
            let r = Log::open(kv.clone(), w.key(), None, None, true)
                .unwrap()
                .unwrap();
            (kv, r)
        };

        // All in one batch: the same core as one by one.
        let (kv, r) = reader();
        let (n, outcome) = r.apply_proofs(proofs.clone());
        assert_eq!((n, outcome.unwrap()), (proofs.len(), true));
        assert_eq!(r.lengths(), w.lengths());
        for i in 0..len {
            assert_eq!(r.get(i).unwrap(), w.get(i).unwrap(), "block {i}");
        }
        let reopened = Log::open(kv, w.key(), None, None, false).unwrap().unwrap();
        assert_eq!(reopened.lengths(), w.lengths());

        // One forged block in the batch (first, amid, last): the proofs before it are kept,
        // it and the ones after it are not, and fetching again completes the core.
        for forged in [1, 9, proofs.len() - 1] {
            let (kv, r) = reader();
            let mut batch = proofs.clone();
            batch[forged].block.as_mut().unwrap().value[0] ^= 1;
            let (n, outcome) = r.apply_proofs(batch);
            assert_eq!(n, forged);
            assert!(matches!(outcome, Err(LogError::Invalid(_))), "{outcome:?}");
            let bad = forged as u64 - 1;
            for i in 0..len {
                assert_eq!(r.has(i), i < bad, "block {i} with block {bad} forged");
            }
            let reopened = Log::open(kv, w.key(), None, None, false).unwrap().unwrap();
            assert_eq!(reopened.lengths(), r.lengths());
            replicate(&w, &r);
            for i in 0..len {
                assert_eq!(r.get(i).unwrap(), w.get(i).unwrap(), "block {i}");
            }
        }

        // A proof for another fork amid a batch stops it there too.
        let (_, r) = reader();
        let mut batch = proofs.clone();
        batch[4].fork = 1;
        let (n, outcome) = r.apply_proofs(batch);
        assert_eq!((n, outcome.unwrap()), (4, false));
        assert!(r.has(2) && !r.has(3));
    }

    #[test]
    fn a_core_is_keyed_by_its_number_and_one_held_before_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = |b: u8| SigningKey::from_bytes(&[b; 32]);
        let open = |kv: &Arc<Kv>, b: u8| {
            let sk = signer(b);
            let key = Key(sk.verifying_key().to_bytes());
            Log::open(kv.clone(), key, Some(sk), None, true)
                .unwrap()
                .unwrap()
        };
        let big = vec![3u8; crate::store::kv::FILE_MIN];
        let (key_b, long) = {
            let kv = Arc::new(Kv::open(dir.path()).unwrap());
            let (a, b) = (open(&kv, 1), open(&kv, 2));
            assert_eq!((a.prefix, b.prefix), (Prefix::Number(0), Prefix::Number(1)));
            a.append(vec![b"small".to_vec(), big.clone()]).unwrap();
            b.append(vec![b"b0".to_vec(), b"b1".to_vec()]).unwrap();
            // 12-byte keys: the number, then the index.
            let at = |n: u32, i: u64| [&n.to_be_bytes()[..], &i.to_be_bytes()].concat();
            assert_eq!(kv.get(Space::Blocks, &at(0, 0)).unwrap().unwrap(), b"small");
            assert_eq!(kv.get(Space::Blocks, &at(0, 1)).unwrap().unwrap(), big);
            assert_eq!(kv.get(Space::Blocks, &at(1, 1)).unwrap().unwrap(), b"b1");
            assert!(kv.get(Space::Nodes, &at(1, 2)).unwrap().is_some());
            // Core b as a store from before numbers holds it: under its key, no number.
            let long = Prefix::Key(b.key());
            let mut batch = Batch::default();
            for (space, end) in [(Space::Blocks, 2), (Space::Nodes, 3)] {
                for i in 0..end {
                    let v = kv.get(space, &at(1, i)).unwrap().unwrap();
                    batch.delete(space, at(1, i).to_vec());
                    batch.put(space, long.record(i), v);
                }
            }
            batch.delete(Space::Meta, meta_key(&b.key(), b"n"));
            kv.commit(batch).unwrap();
            kv.persist().unwrap();
            (b.key(), long)
        };
        let kv = Arc::new(Kv::open(dir.path()).unwrap());
        let (a, b) = (open(&kv, 1), open(&kv, 2));
        assert_eq!((a.prefix, b.prefix), (Prefix::Number(0), long));
        assert_eq!(b.key(), key_b);
        assert_eq!(a.get(0).unwrap().unwrap(), b"small");
        assert_eq!(a.get(1).unwrap().unwrap(), big);
        assert_eq!(b.get(1).unwrap().unwrap(), b"b1");
        // b goes on under its key; a new core gets the next number, not b's old one.
        b.append(vec![b"b2".to_vec()]).unwrap();
        assert_eq!(
            kv.get(Space::Blocks, &long.record(2)).unwrap().unwrap(),
            b"b2"
        );
        assert_eq!(open(&kv, 3).prefix, Prefix::Number(2));
        drop((a, b));
        let b = open(&kv, 2);
        assert_eq!(
            (b.lengths().0, b.get(2).unwrap().unwrap()),
            (3, b"b2".to_vec())
        );
    }

    #[test]
    fn a_number_is_never_handed_out_twice() {
        let kv = Arc::new(Kv::memory());
        let open = |b: u8| {
            let sk = SigningKey::from_bytes(&[b; 32]);
            let key = Key(sk.verifying_key().to_bytes());
            Log::open(kv.clone(), key, Some(sk), None, true).map(|l| l.unwrap().prefix)
        };
        assert_eq!(open(1).unwrap(), Prefix::Number(0));
        assert_eq!(open(2).unwrap(), Prefix::Number(1));
        // Damaged metadata: the counter back at a number in use. The next core is refused,
        // not given core 0's records.
        let mut b = Batch::default();
        b.put(
            Space::Meta,
            NEXT_NUMBER.to_vec(),
            0u32.to_be_bytes().to_vec(),
        );
        kv.commit(b).unwrap();
        let e = open(3).unwrap_err().to_string();
        assert!(e.contains("already a core's"), "{e}");
        // A core whose number record names another core's number is refused too.
        let k2 = Key(SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes());
        let mut b = Batch::default();
        b.put(
            Space::Meta,
            meta_key(&k2, b"n"),
            0u32.to_be_bytes().to_vec(),
        );
        kv.commit(b).unwrap();
        let e = open(2).unwrap_err().to_string();
        assert!(e.contains("another core's"), "{e}");
        // A counter record of the wrong size says which record it is.
        let mut b = Batch::default();
        b.put(Space::Meta, NEXT_NUMBER.to_vec(), vec![1, 2]);
        kv.commit(b).unwrap();
        let e = open(4).unwrap_err().to_string();
        assert!(e.contains("next core number is 2 bytes"), "{e}");
        assert_eq!(open(1).unwrap(), Prefix::Number(0));
    }

    #[test]
    fn a_numbered_core_reads_no_record_of_a_core_keyed_by_its_key() {
        // A 40-byte key whose first bytes are core 5's number sorts inside core 5's range.
        let short = Prefix::Number(5);
        let long = Prefix::Key(Key([
            0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16, 17, 18, 19, 20,
        ]));
        let theirs = long.record(1);
        assert!(*theirs > *short.record(0) && *theirs < *short.end());
        assert_eq!(short.index_of(&theirs), None);
        assert_eq!(short.index_of(&short.record(77)), Some(77));
        assert_eq!(long.index_of(&theirs), Some(1));
        assert_eq!(long.index_of(&short.record(1)), None);
        assert!(*long.end() > *long.record(u64::MAX));
        assert!(*short.end() > *short.record(u64::MAX));
    }

    #[test]
    fn a_damaged_block_is_an_error_not_data() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 3);
        let mut b = Batch::default();
        b.put(Space::Blocks, w.prefix.record(1), b"other".to_vec());
        kv.commit(b).unwrap();
        // The appender hashed its blocks and then relies on the database's checksums (which a
        // write behind its back like this one bypasses); the first read after an open checks
        // the stored copy against its leaf.
        let w = Log::open(kv.clone(), w.key(), w.secret.clone(), None, false)
            .unwrap()
            .unwrap();
        assert!(matches!(w.get(1), Err(LogError::Damaged(1))));
        assert!(w.create_proof(&req(Some((1, 0)), None)).is_err());
        w.forget(1);
        assert!(!w.has(1));
        assert_eq!(w.get(1).unwrap(), None);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let kv = Arc::new(Kv::memory());
        let w = writer(&kv, 3);
        for bad in [
            vec![],
            vec![2; 40],
            encode_header(&State::default())[..10].to_vec(),
        ] {
            let mut b = Batch::default();
            b.put(Space::Meta, meta_key(&w.key(), b"h"), bad);
            kv.commit(b).unwrap();
            assert!(Log::open(kv.clone(), w.key(), None, None, false).is_err());
        }
        // A header whose length the signature does not cover.
        let mut s = w.state().clone();
        s.length = 2;
        let mut b = Batch::default();
        b.put(Space::Meta, meta_key(&w.key(), b"h"), encode_header(&s));
        kv.commit(b).unwrap();
        assert!(Log::open(kv.clone(), w.key(), None, None, false).is_err());
    }

    #[test]
    fn manifest_cores_replicate_with_their_manifest() {
        let sk = SigningKey::from_bytes(&[9; 32]);
        let m = Manifest::default_signer(sk.verifying_key().to_bytes());
        let key = Key(m.hash());
        let kv = Arc::new(Kv::memory());
        let w = Log::open(kv.clone(), key, Some(sk.clone()), Some(m.clone()), true)
            .unwrap()
            .unwrap();
        for i in 0..5u8 {
            w.append(vec![vec![i; 10]]).unwrap();
        }
        // Its signature is a multisignature over the 112-byte signable, not compat.
        let sig = w.signature_of(5, 0).unwrap();
        assert!(sig.len() > 64);
        // Reopened without being told the manifest: it was stored.
        let again = Log::open(kv.clone(), key, Some(sk), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(again.manifest(), Some(m.clone()));
        again.append(vec![b"more".to_vec()]).unwrap();

        let rkv = Arc::new(Kv::memory());
        let r = Log::open(rkv.clone(), key, None, None, true)
            .unwrap()
            .unwrap();
        assert_eq!(r.manifest(), None);
        // Without the manifest the signature cannot be checked.
        let up = again
            .create_proof(&req(None, Some((0, 6))))
            .unwrap()
            .unwrap();
        assert!(up.manifest.is_none());
        assert!(r.apply_proof(up).is_err());
        // Asked for, it comes with the proof, is checked against the key and kept.
        let mut ask = req(None, Some((0, 6)));
        ask.manifest = true;
        let up = again.create_proof(&ask).unwrap().unwrap();
        let mut forged = up.clone();
        forged.manifest = Some(Manifest::default_signer([3; 32]).encode());
        assert!(r.apply_proof(forged).is_err(), "a manifest of another key");
        assert!(r.apply_proof(up).unwrap());
        assert_eq!(r.manifest(), Some(m.clone()));
        let p = again
            .create_proof(&req(Some((5, r.missing_nodes(5))), None))
            .unwrap()
            .unwrap();
        assert!(r.apply_proof(p).unwrap());
        assert_eq!(r.get(5).unwrap().unwrap(), b"more");
        let r2 = Log::open(rkv, key, None, None, false).unwrap().unwrap();
        assert_eq!((r2.manifest(), r2.lengths().0), (Some(m.clone()), 6));

        // A core whose manifest is known beforehand (a drive's derived blobs core).
        let blobs_m = manifest::content_manifest(&m, &key.0).unwrap();
        let bkey = Key(blobs_m.hash());
        let sk = SigningKey::from_bytes(&[9; 32]);
        let bw = Log::open(
            Arc::new(Kv::memory()),
            bkey,
            Some(sk),
            Some(blobs_m.clone()),
            true,
        )
        .unwrap()
        .unwrap();
        bw.append(vec![b"blob".to_vec()]).unwrap();
        let br = Log::open(Arc::new(Kv::memory()), bkey, None, Some(blobs_m), true)
            .unwrap()
            .unwrap();
        let up = bw
            .create_proof(&req(Some((0, 0)), Some((0, 1))))
            .unwrap()
            .unwrap();
        assert!(br.apply_proof(up).unwrap());
        assert_eq!(br.get(0).unwrap().unwrap(), b"blob");
        // A manifest that is not the key's is refused on open.
        assert!(Log::open(
            Arc::new(Kv::memory()),
            key,
            None,
            Some(Manifest::default_signer([1; 32])),
            true
        )
        .is_err());
    }

    #[test]
    fn presence_ranges_merge() {
        let mut s = State::default();
        s.add(5..7);
        s.add(0..2);
        s.add(2..5);
        assert_eq!(s.ranges(), vec![0..7]);
        s.add(10..12);
        s.remove(5);
        assert_eq!(s.ranges(), vec![0..5, 6..7, 10..12]);
        assert_eq!(s.contiguous(), 5);
        s.add(4..11);
        assert_eq!(s.ranges(), vec![0..12]);
    }
}
