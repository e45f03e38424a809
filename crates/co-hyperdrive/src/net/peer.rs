//! One core's replication with one remote peer, as a state machine: messages in, actions out.
//! No I/O here, so hostile input is tested without sockets (see the tests below).
//!
//! Serving follows what JavaScript Hypercore 11 expects (`docs/replication-notes.md` §3): on
//! open a `Sync` plus a `Range` of our contiguous prefix (a JS reader only asks peers that
//! announced blocks), `Range` again on `Want`, and `Sync` + `Range` after every local change.
//! Reading asks for an upgrade when the remote is longer and can prove it, then pipelines block
//! requests: every block (`download_all`) or only blocks a local read waits for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohd_format::wire::{Message, RequestBlock, RequestUpgrade};

use crate::store::{Proof, ProofRequest};

/// Block requests in flight per channel, at least ([`pipeline`]).
pub(crate) const PIPELINE: usize = 32;
/// And at most.
pub(crate) const MAX_PIPELINE: usize = 256;
/// The bytes of blocks a channel asks for at once, when it knows the core's block size.
const IN_FLIGHT_BYTES: u64 = 2 << 20;

/// How many block requests a channel keeps in flight for a core of `byte_length` bytes in
/// `length` blocks: as many as fit in [`IN_FLIGHT_BYTES`] of blocks that size. A Hyperbee's
/// blocks are a few hundred bytes: 32 of them in flight left both peers idle for most of
/// each round trip (a new peer of 16 writers x 1,000 files: 0.6 s -> 0.5 s at 256); a blobs
/// core's 64 KiB blocks keep 32, whose bytes already fill a round trip.
pub(crate) fn pipeline(length: u64, byte_length: u64) -> usize {
    match byte_length.checked_div(length) {
        Some(size) => usize::try_from(IN_FLIGHT_BYTES / size.max(1))
            .unwrap_or(MAX_PIPELINE)
            .clamp(PIPELINE, MAX_PIPELINE),
        None => PIPELINE,
    }
}
/// Inbound requests a peer may have queued before we call it a flood.
pub(crate) const MAX_QUEUED: usize = 4096;

/// Sync flags (JS `messages.js`): the sender can prove an upgrade to its length, uploads,
/// downloads.
const SYNC_CAN_UPGRADE: u64 = 1;
const SYNC_UPLOADING: u64 = 2;
const SYNC_DOWNLOADING: u64 = 4;
/// We can send the core's manifest (JavaScript asks for it only from peers that say so).
const SYNC_HAS_MANIFEST: u64 = 8;

/// What we know of our own core when handling a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) length: u64,
    pub(crate) contiguous: u64,
    pub(crate) fork: u64,
    pub(crate) writable: bool,
    /// We do not know the core's manifest yet: upgrades ask for it (a manifest core's
    /// signatures cannot be checked without it).
    pub(crate) needs_manifest: bool,
    /// Block requests to keep in flight ([`pipeline`]).
    pub(crate) pipeline: usize,
}

impl Local {
    /// Where `core` stands now.
    pub(crate) fn of(core: &crate::Core) -> Self {
        let i = core.info();
        Self {
            length: i.length,
            contiguous: i.contiguous_length,
            fork: i.fork,
            writable: i.writable,
            needs_manifest: !core.knows_manifest(),
            pipeline: pipeline(i.length, i.byte_length),
        }
    }
}

/// Something the session must do for this channel.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send these messages (one batch).
    Send(Vec<Message>),
    /// Build a proof for this request (its id, what it asks) and send Data, or NoData.
    Serve(u64, ProofRequest),
    /// Verify and apply this proof (a remote's Data), then call [`Peer::on_applied`].
    Apply(Proof),
    /// An extension message for the layer above (name already decompressed).
    Extension(String, Vec<u8>),
}

/// Why the remote misbehaved; the connection is closed with this reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// Data for a request we never made (or already answered).
    #[error("data for unknown request {0}")]
    UnknownRequest(u64),
    /// Data that does not answer what we asked.
    #[error("data does not match request {0}")]
    Mismatch(u64),
    /// A message that makes no sense here.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

/// Blocks of one core past its contiguous prefix that some channel asked for (in flight, or
/// received), with when: the core's other channels ask other peers for other blocks instead of
/// fetching the same ones twice. Forgotten once the prefix covers them; a claim older than
/// [`CLAIM_TTL`] can be taken over (its peer may never answer).
#[derive(Debug, Default)]
pub(crate) struct Claims(Mutex<ClaimSet>);

#[derive(Debug, Default)]
struct ClaimSet {
    by_block: BTreeMap<u64, Instant>,
    /// The highest contiguous prefix a channel reported: blocks below it are here, whatever
    /// older view of the core another channel still scans from.
    floor: u64,
    /// The fork the claims and the floor are of.
    fork: u64,
}

/// How long a claim keeps other channels from asking for its block.
const CLAIM_TTL: Duration = Duration::from_secs(10);

impl Claims {
    fn set(&self) -> std::sync::MutexGuard<'_, ClaimSet> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets claims below `contiguous` (those blocks are here).
    fn forget_below(&self, contiguous: u64) {
        let mut s = self.set();
        if contiguous > s.floor {
            s.floor = contiguous;
            let rest = s.by_block.split_off(&contiguous);
            s.by_block = rest;
        }
    }

    /// The core moved to a newer fork (it followed its owner's truncation): the blocks past
    /// what the trees share are gone, whatever any channel reported before.
    fn new_fork(&self, fork: u64, contiguous: u64) {
        let mut s = self.set();
        if fork > s.fork {
            s.fork = fork;
            s.floor = contiguous;
            s.by_block.clear();
        }
    }

    /// Claims block `i`; `false` if another channel has, recently (or, unless `wanted`, if
    /// it lies below the highest prefix a channel reported).
    fn claim(&self, i: u64, wanted: bool) -> bool {
        let now = Instant::now();
        let mut s = self.set();
        if i < s.floor && !wanted {
            return false;
        }
        match s.by_block.get(&i) {
            Some(at) if now.duration_since(*at) < CLAIM_TTL => false,
            _ => {
                s.by_block.insert(i, now);
                true
            }
        }
    }

    fn release(&self, blocks: impl IntoIterator<Item = u64>) {
        let mut s = self.set();
        for i in blocks {
            s.by_block.remove(&i);
        }
    }
}

/// How far past our contiguous prefix a channel that downloads everything looks for blocks no
/// other channel has claimed.
const CLAIM_SCAN: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inflight {
    Upgrade,
    Block(u64),
}

/// State of one channel.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    synced: bool,
    /// The remote's fork, length and whether it can prove an upgrade from our length.
    fork: u64,
    length: u64,
    remote_length: u64,
    can_upgrade: bool,
    /// The remote had no proof of its newer fork when asked (asked again after its next Sync).
    fork_refused: bool,
    /// Blocks the remote announced (`Range` from 0).
    has_contiguous: u64,
    download_all: bool,
    next_id: u64,
    inflight: HashMap<u64, Inflight>,
    requested: BTreeSet<u64>,
    /// Blocks a local read waits for that are not requested yet.
    wanted: BTreeSet<u64>,
    /// The core's claims (shared by its channels), and the blocks this channel claimed and has
    /// not received applied yet (released if it ends first).
    claims: Arc<Claims>,
    claimed: BTreeSet<u64>,
    /// Last extension name the remote sent (JS sends "" for "same as last time").
    last_ext: String,
    announced_length: u64,
    /// The fork we last told the remote we are on (a peer's truncation we follow changes it).
    announced_fork: u64,
    /// Contiguous blocks we last told the remote we hold.
    announced_contiguous: u64,
    /// Tree nodes the answers to our block requests in flight bring (flat index -> how many
    /// of them), and which each request brings: a block requested behind them asks only for
    /// the nodes above its leaf that neither we nor they hold (see [`Peer::expect`]).
    /// (Ordered maps: a few hundred small keys, cheaper than hashing them.)
    coming: BTreeMap<u64, u32>,
    coming_by_request: BTreeMap<u64, Vec<u64>>,
}

/// Announce a grown contiguous prefix at least every this many blocks (and when complete), so a
/// peer pushing to us (`cohd sync`) learns its blocks arrived without a message per block.
const RANGE_EVERY: u64 = 64;

impl Peer {
    pub(crate) fn new(download_all: bool, claims: Arc<Claims>) -> Self {
        let mut p = Self::default();
        p.download_all = download_all;
        p.claims = claims;
        p
    }

    /// The remote's length as last announced (0 before its first Sync).
    pub(crate) fn announced_remote_length(&self) -> u64 {
        self.length
    }

    fn sync(&self, local: &Local) -> Message {
        let same_fork = self.fork == local.fork;
        // Our log never forks: any length up to ours on our fork is a prefix we can prove.
        let can_upgrade = same_fork && self.length <= local.length;
        Message::Sync {
            fork: local.fork,
            length: local.length,
            remote_length: if same_fork { self.length } else { 0 },
            flags: u64::from(can_upgrade)
                | SYNC_UPLOADING
                | SYNC_DOWNLOADING
                | if local.needs_manifest {
                    0
                } else {
                    SYNC_HAS_MANIFEST
                },
        }
    }

    fn range(local: &Local) -> Option<Message> {
        (local.contiguous > 0).then_some(Message::Range {
            drop: false,
            start: 0,
            length: local.contiguous,
        })
    }

    /// Messages to send when the channel opens.
    pub(crate) fn on_open(&mut self, local: &Local) -> Vec<Message> {
        self.announced_length = local.length;
        self.announced_contiguous = local.contiguous;
        let mut out = vec![self.sync(local)];
        out.extend(Self::range(local));
        if !local.writable {
            // Ask for the remote's blocks; JS answers a Want with its Range.
            out.push(Message::Want {
                start: 0,
                length: u64::from(u32::MAX),
                any: false,
            });
        }
        out
    }

    /// Handles one message from the remote.
    pub(crate) fn on_message(
        &mut self,
        msg: Message,
        local: &Local,
    ) -> Result<Vec<Action>, PeerError> {
        let mut out = Vec::new();
        match msg {
            Message::Sync {
                fork,
                length,
                remote_length,
                flags,
            } => {
                let first = !self.synced;
                self.synced = true;
                self.fork = fork;
                self.length = length;
                self.remote_length = remote_length;
                self.can_upgrade = flags & SYNC_CAN_UPGRADE != 0;
                self.fork_refused = false;
                if first || remote_length != local.length {
                    out.push(Action::Send(vec![self.sync(local)]));
                }
                out.extend(self.requests(local));
            }
            Message::Request {
                id,
                fork,
                block,
                hash,
                seek,
                upgrade,
                manifest,
                ..
            } => out.push(Action::Serve(
                id,
                ProofRequest {
                    fork,
                    block,
                    hash,
                    seek,
                    upgrade,
                    manifest,
                },
            )),
            Message::Data {
                request,
                fork,
                block,
                hash,
                seek,
                upgrade,
                manifest,
            } => {
                let kind = self
                    .inflight
                    .remove(&request)
                    .ok_or(PeerError::UnknownRequest(request))?;
                let fits = match kind {
                    Inflight::Upgrade => upgrade.is_some(),
                    Inflight::Block(i) => block.as_ref().is_some_and(|b| b.index == i),
                };
                if !fits {
                    return Err(PeerError::Mismatch(request));
                }
                if let Inflight::Block(i) = kind {
                    // Applied next, before any request is made: its nodes count as ours then.
                    self.answered(request);
                    self.requested.remove(&i);
                    // Beyond the contiguous prefix nothing else forgets it, and a block still
                    // wanted after it arrived would be requested again.
                    self.wanted.remove(&i);
                }
                out.push(Action::Apply(Proof {
                    fork,
                    block,
                    hash,
                    seek,
                    upgrade,
                    manifest,
                }));
            }
            Message::NoData { request, .. } => {
                // The remote lacks it: forget the request; a wanted block stays wanted for a
                // later announcement (or another peer).
                self.answered(request);
                match self.inflight.remove(&request) {
                    Some(Inflight::Block(i)) => {
                        self.requested.remove(&i);
                        // Another peer may have it.
                        self.claimed.remove(&i);
                        self.claims.release([i]);
                        if i < self.has_contiguous {
                            self.has_contiguous = i;
                        }
                    }
                    Some(Inflight::Upgrade) if self.fork != local.fork => self.fork_refused = true,
                    Some(Inflight::Upgrade) => self.can_upgrade = false,
                    None => {}
                }
            }
            Message::Want { .. } => {
                out.extend(Self::range(local).map(|m| Action::Send(vec![m])));
            }
            Message::Range {
                drop,
                start,
                length,
            } => {
                if !drop && start == 0 {
                    self.has_contiguous = self.has_contiguous.max(length);
                }
                out.extend(self.requests(local));
            }
            Message::Extension { name, message } => {
                let name = if name.is_empty() {
                    self.last_ext.clone()
                } else {
                    name
                };
                self.last_ext.clone_from(&name);
                out.push(Action::Extension(name, message));
            }
            // Cancel, Unwant, Bitfield: nothing we need to act on.
            _ => {}
        }
        Ok(out)
    }

    /// After a Data was applied: re-sync if the length changed, and keep the pipeline full.
    pub(crate) fn on_applied(&mut self, local: &Local) -> Vec<Action> {
        // Received blocks are applied now: their claims stay (they are here, nobody needs to
        // fetch them) until the contiguous prefix covers them; this channel no longer answers
        // for them.
        let requested = &self.requested;
        self.claimed.retain(|i| requested.contains(i));
        self.claims.forget_below(local.contiguous);
        let mut out = Vec::new();
        if local.fork != self.announced_fork {
            // We followed the owner's truncation: say so, with what we hold of the new tree.
            out.push(Action::Send(self.announce(local)));
        } else if local.length != self.announced_length {
            self.announced_length = local.length;
            out.push(Action::Send(vec![self.sync(local)]));
        }
        out.extend(self.range_update(local));
        out.extend(self.requests(local));
        out
    }

    /// Our Sync and Range, remembered as said; on a new fork (a truncation we followed) the
    /// blocks claimed on the old one are forgotten.
    fn announce(&mut self, local: &Local) -> Vec<Message> {
        if local.fork != self.announced_fork {
            self.claims.new_fork(local.fork, local.contiguous);
            self.claimed.clear();
        }
        self.announced_length = local.length;
        self.announced_fork = local.fork;
        self.announced_contiguous = local.contiguous;
        let mut msgs = vec![self.sync(local)];
        msgs.extend(Self::range(local));
        msgs
    }

    /// A `Range` when our contiguous prefix grew enough (or became complete) since we said.
    fn range_update(&mut self, local: &Local) -> Option<Action> {
        let grown = local.contiguous.saturating_sub(self.announced_contiguous);
        if grown == 0 || (grown < RANGE_EVERY && local.contiguous < local.length) {
            return None;
        }
        self.announced_contiguous = local.contiguous;
        Self::range(local).map(|m| Action::Send(vec![m]))
    }

    /// After our core changed locally (an append, or data from another peer).
    pub(crate) fn on_local_change(&mut self, local: &Local) -> Vec<Action> {
        if local.length == self.announced_length && local.fork == self.announced_fork {
            let mut out: Vec<Action> = self.range_update(local).into_iter().collect();
            out.extend(self.requests(local));
            return out;
        }
        let mut out = vec![Action::Send(self.announce(local))];
        out.extend(self.requests(local));
        out
    }

    /// Local reads or downloads wait for `blocks` (those below our contiguous length are here).
    pub(crate) fn want(
        &mut self,
        blocks: impl IntoIterator<Item = u64>,
        local: &Local,
    ) -> Vec<Action> {
        self.wanted
            .extend(blocks.into_iter().filter(|&i| i >= local.contiguous));
        self.requests(local)
    }

    /// Forgets wanted blocks that are stored now (another connection delivered them), from
    /// the lowest up, until twice a pipeline's worth of still-missing ones is seen: those are
    /// the next to be requested, and the walk stays short however much is wanted.
    pub(crate) fn forget_held(&mut self, held: impl Fn(u64) -> bool) {
        let mut missing = 0;
        let mut gone = Vec::new();
        for &i in &self.wanted {
            if missing >= MAX_PIPELINE * 2 {
                break;
            }
            if !self.requested.contains(&i) && held(i) {
                gone.push(i);
            } else {
                missing += 1;
            }
        }
        for i in gone {
            self.wanted.remove(&i);
        }
    }

    /// Whether the answer to a block request in flight brings tree node `node`.
    pub(crate) fn coming(&self, node: u64) -> bool {
        self.coming.contains_key(&node)
    }

    /// Block request `id` (for block `index`) was sent asking for `nodes` nodes above its
    /// leaf: its answer brings the leaf, the `nodes` siblings on the way up and the parents
    /// they make. Requests sent behind it count those as held, so a pipeline of neighbouring
    /// blocks does not carry the same upper nodes once per block (each block's proof would
    /// otherwise reach from its leaf to the lowest node stored when it was asked for). Should
    /// that answer not arrive, or arrive after theirs, their proofs end at a node we do not
    /// hold and store nothing; the session then lets those blocks be asked for again
    /// ([`Peer::not_stored`]).
    pub(crate) fn expect(&mut self, id: u64, index: u64, nodes: u64) {
        let Some(mut n) = index.checked_mul(2) else {
            return;
        };
        // A tree has at most 64 levels; `nodes` comes from our own count.
        let mut brings = Vec::with_capacity(2 * nodes.min(64) as usize + 1);
        brings.push(n);
        for _ in 0..nodes.min(64) {
            brings.push(cohd_format::merkle::sibling(n));
            n = cohd_format::merkle::parent(n);
            brings.push(n);
        }
        for &b in &brings {
            *self.coming.entry(b).or_default() += 1;
        }
        if let Some(old) = self.coming_by_request.insert(id, brings) {
            self.forget_coming(old);
        }
    }

    /// Request `id` was answered (or refused): what it brings is stored, or not coming.
    fn answered(&mut self, id: u64) {
        if let Some(brings) = self.coming_by_request.remove(&id) {
            self.forget_coming(brings);
        }
    }

    fn forget_coming(&mut self, brings: Vec<u64>) {
        for b in brings {
            if let std::collections::btree_map::Entry::Occupied(mut e) = self.coming.entry(b) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Block `index` arrived but its proof stored nothing (it ended at a node an earlier
    /// answer was to bring, and that answer did not come first): it is asked for again, by
    /// this channel or another.
    pub(crate) fn not_stored(&mut self, index: u64) {
        if !self.requested.contains(&index) {
            self.claimed.remove(&index);
            self.claims.release([index]);
            // Its arrival forgot the want: a channel that does not download everything would
            // otherwise never ask for it again.
            self.wanted.insert(index);
        }
    }

    /// How many blocks from the start the remote announced it holds.
    pub(crate) fn remote_contiguous(&self) -> u64 {
        self.has_contiguous
    }

    /// Whether everything the remote announced is here (and no request is pending).
    pub(crate) fn caught_up(&self, local: &Local) -> bool {
        self.synced
            && self.inflight.is_empty()
            && (local.writable || self.fork <= local.fork)
            && (local.writable || !self.can_upgrade || self.length <= local.length)
            && (!self.download_all || local.contiguous >= self.length.min(self.has_contiguous))
    }

    /// New requests: an upgrade when the remote is ahead, then blocks up to the pipeline size.
    fn requests(&mut self, local: &Local) -> Vec<Action> {
        let mut msgs = Vec::new();
        let upgrading = self.inflight.values().any(|k| *k == Inflight::Upgrade);
        if !local.writable
            && !upgrading
            && self.synced
            && !self.fork_refused
            && self.fork > local.fork
            && self.length > 0
        {
            // The owner truncated its log: ask for its new tree whole, from block 0, on its
            // fork (the core follows it, keeping what the trees share).
            let id = self.id();
            self.inflight.insert(id, Inflight::Upgrade);
            return vec![Action::Send(vec![Message::Request {
                id,
                fork: self.fork,
                block: None,
                hash: None,
                seek: None,
                upgrade: Some(RequestUpgrade {
                    start: 0,
                    length: self.length,
                }),
                manifest: local.needs_manifest,
                priority: 0,
            }])];
        }
        if self.fork != local.fork {
            // Its blocks are of another tree than ours: nothing to ask for until one follows.
            return Vec::new();
        }
        if !local.writable
            && !upgrading
            && self.synced
            && self.can_upgrade
            && self.fork == local.fork
            && self.length > local.length
            && self.remote_length == local.length
        {
            let id = self.id();
            self.inflight.insert(id, Inflight::Upgrade);
            msgs.push(Message::Request {
                id,
                fork: local.fork,
                block: None,
                hash: None,
                seek: None,
                upgrade: Some(RequestUpgrade {
                    start: local.length,
                    length: self.length - local.length,
                }),
                manifest: local.needs_manifest,
                priority: 0,
            });
        }
        let available = self.has_contiguous.min(local.length);
        self.wanted.retain(|i| *i >= local.contiguous);
        let wanted: Vec<u64> = self
            .wanted
            .iter()
            .copied()
            .filter(|i| *i < available)
            .collect();
        // Everything: from our prefix on, past blocks other channels claimed, up to a bound.
        let scan = if self.download_all {
            local.contiguous..available.min(local.contiguous.saturating_add(CLAIM_SCAN))
        } else {
            0..0
        };
        let explicit = wanted.len();
        for (n, i) in wanted.into_iter().chain(scan).enumerate() {
            if self.inflight.len() >= local.pipeline {
                break;
            }
            // A block a read waits for is fetched even below another channel's prefix: it
            // may be one found damaged on disk.
            if self.requested.contains(&i)
                || self.claimed.contains(&i)
                || !self.claims.claim(i, n < explicit)
            {
                continue;
            }
            self.claimed.insert(i);
            let id = self.id();
            self.inflight.insert(id, Inflight::Block(i));
            self.requested.insert(i);
            // `nodes` is filled in by the session (hypercore's missing_nodes needs the core).
            msgs.push(Message::Request {
                id,
                fork: local.fork,
                block: Some(RequestBlock { index: i, nodes: 0 }),
                hash: None,
                seek: None,
                upgrade: None,
                manifest: false,
                priority: 0,
            });
        }
        if msgs.is_empty() {
            Vec::new()
        } else {
            vec![Action::Send(msgs)]
        }
    }

    fn id(&mut self) -> u64 {
        // Ids only need to be unique among our requests in flight.
        self.next_id = self.next_id.wrapping_add(1);
        while self.inflight.contains_key(&self.next_id) || self.next_id == 0 {
            self.next_id = self.next_id.wrapping_add(1);
        }
        self.next_id
    }
}

impl Drop for Peer {
    /// A channel that ends lets go of its claims: other channels fetch those blocks.
    fn drop(&mut self) {
        self.claims.release(std::mem::take(&mut self.claimed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohd_format::wire::{DataBlock, DataUpgrade};

    fn sent(actions: &[Action]) -> Vec<&Message> {
        actions
            .iter()
            .filter_map(|a| {
                if let Action::Send(m) = a {
                    Some(m)
                } else {
                    None
                }
            })
            .flatten()
            .collect()
    }

    /// Data answering request `request` with a one-byte block `index`.
    fn block_data(request: u64, index: u64) -> Message {
        Message::Data {
            request,
            fork: 0,
            block: Some(DataBlock {
                index,
                value: vec![1],
                nodes: vec![],
            }),
            hash: None,
            seek: None,
            upgrade: None,
            manifest: None,
        }
    }

    fn sync(length: u64, remote_length: u64) -> Message {
        Message::Sync {
            fork: 0,
            length,
            remote_length,
            flags: 7,
        }
    }

    #[test]
    fn writer_announces_and_serves() {
        let local = Local {
            length: 5,
            contiguous: 5,
            fork: 0,
            writable: true,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let mut p = Peer::new(false, Arc::default());
        let open = p.on_open(&local);
        assert!(matches!(open[0], Message::Sync { length: 5, .. }));
        assert!(matches!(
            open[1],
            Message::Range {
                start: 0,
                length: 5,
                ..
            }
        ));
        let a = p.on_message(sync(0, 0), &local).unwrap();
        assert_eq!(sent(&a).len(), 1, "first sync is answered");
        let req = Message::Request {
            id: 1,
            fork: 0,
            block: Some(RequestBlock { index: 2, nodes: 2 }),
            hash: None,
            seek: None,
            upgrade: None,
            manifest: false,
            priority: 0,
        };
        let a = p.on_message(req, &local).unwrap();
        assert!(
            matches!(&a[0], Action::Serve(1, r) if r.block == Some(RequestBlock { index: 2, nodes: 2 }))
        );
        // A writer never asks to upgrade its own core.
        let a = p.on_message(sync(9, 5), &local).unwrap();
        assert!(sent(&a)
            .iter()
            .all(|m| !matches!(m, Message::Request { .. })));
    }

    #[test]
    fn reader_upgrades_then_downloads_in_a_pipeline() {
        let mut local = Local {
            length: 0,
            contiguous: 0,
            fork: 0,
            writable: false,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let mut p = Peer::new(true, Arc::default());
        p.on_open(&local);
        let a = p.on_message(sync(100, 0), &local).unwrap();
        let reqs: Vec<_> = sent(&a)
            .into_iter()
            .filter_map(|m| {
                if let Message::Request { id, upgrade, .. } = m {
                    Some((*id, *upgrade))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(reqs.len(), 1);
        let up = reqs[0].1.unwrap();
        assert_eq!((up.start, up.length), (0, 100));
        // Data for it applies; then blocks are requested once the remote announced them.
        let d = Message::Data {
            request: reqs[0].0,
            fork: 0,
            block: None,
            hash: None,
            seek: None,
            upgrade: Some(DataUpgrade {
                start: 0,
                length: 100,
                nodes: vec![],
                additional: vec![],
                signature: None,
            }),
            manifest: None,
        };
        let a = p.on_message(d, &local).unwrap();
        assert!(matches!(a[0], Action::Apply(_)));
        local.length = 100;
        let a = p.on_applied(&local);
        assert!(sent(&a)
            .iter()
            .any(|m| matches!(m, Message::Sync { length: 100, .. })));
        let a = p
            .on_message(
                Message::Range {
                    drop: false,
                    start: 0,
                    length: 100,
                },
                &local,
            )
            .unwrap();
        let n = sent(&a)
            .iter()
            .filter(|m| matches!(m, Message::Request { block: Some(_), .. }))
            .count();
        assert_eq!(n, PIPELINE);
        assert!(!p.caught_up(&local));
        // Told the blocks are small, the channel keeps more in flight.
        local.pipeline = 80;
        let n = sent(&p.on_applied(&local))
            .iter()
            .filter(|m| matches!(m, Message::Request { block: Some(_), .. }))
            .count();
        assert_eq!(n, 80 - PIPELINE);
    }

    #[test]
    fn the_pipeline_holds_a_bounded_number_of_bytes() {
        // Unknown sizes, and 64 KiB blob blocks: the least.
        assert_eq!(pipeline(0, 0), PIPELINE);
        assert_eq!(pipeline(100, 100 * 65536), PIPELINE);
        // Hyperbee nodes of ~300 bytes: the most; 16 KiB blocks in between.
        assert_eq!(pipeline(1000, 300_000), MAX_PIPELINE);
        assert_eq!(pipeline(10, 10 * 16384), 128);
        // A hostile byte length cannot overflow it.
        assert_eq!(pipeline(1, u64::MAX), PIPELINE);
        assert_eq!(pipeline(u64::MAX, 0), MAX_PIPELINE);
    }

    #[test]
    fn hostile_data_is_refused() {
        let local = Local {
            length: 10,
            contiguous: 0,
            fork: 0,
            writable: false,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let mut p = Peer::new(false, Arc::default());
        let d = block_data(77, 0);
        assert_eq!(
            p.on_message(d, &local).unwrap_err(),
            PeerError::UnknownRequest(77)
        );
        // A block other than the one asked for.
        p.on_message(sync(10, 10), &local).unwrap();
        p.on_message(
            Message::Range {
                drop: false,
                start: 0,
                length: 10,
            },
            &local,
        )
        .unwrap();
        let a = p.want([3], &local);
        let id = sent(&a)
            .iter()
            .find_map(|m| {
                if let Message::Request { id, .. } = m {
                    Some(*id)
                } else {
                    None
                }
            })
            .unwrap();
        let d = block_data(id, 4);
        assert_eq!(
            p.on_message(d, &local).unwrap_err(),
            PeerError::Mismatch(id)
        );
        // NoData frees the request; nothing panics on unknown ids.
        p.on_message(
            Message::NoData {
                request: 12345,
                reason: 0,
            },
            &local,
        )
        .unwrap();
    }

    #[test]
    fn extension_names_are_decompressed() {
        let local = Local::default();
        let mut p = Peer::new(false, Arc::default());
        let a = p
            .on_message(
                Message::Extension {
                    name: "x".into(),
                    message: vec![1],
                },
                &local,
            )
            .unwrap();
        assert!(matches!(&a[0], Action::Extension(n, m) if n == "x" && m == &vec![1]));
        let a = p
            .on_message(
                Message::Extension {
                    name: String::new(),
                    message: vec![2],
                },
                &local,
            )
            .unwrap();
        assert!(matches!(&a[0], Action::Extension(n, _) if n == "x"));
    }

    fn requested_blocks(actions: &[Action]) -> Vec<(u64, u64)> {
        sent(actions)
            .iter()
            .filter_map(|m| match m {
                Message::Request {
                    id, block: Some(b), ..
                } => Some((*id, b.index)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_sparse_block_is_requested_once() {
        // A sparse reader: nothing contiguous, the remote holds all 100 blocks.
        let local = Local {
            length: 100,
            contiguous: 0,
            fork: 0,
            writable: false,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let mut p = Peer::new(false, Arc::default());
        p.on_open(&local);
        p.on_message(sync(100, 100), &local).unwrap();
        p.on_message(
            Message::Range {
                drop: false,
                start: 0,
                length: 100,
            },
            &local,
        )
        .unwrap();
        let reqs = requested_blocks(&p.want(50..53, &local));
        assert_eq!(
            reqs.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![50, 51, 52]
        );
        // Asking again while they are in flight sends nothing new.
        assert!(requested_blocks(&p.want(50..53, &local)).is_empty());
        for (id, index) in reqs {
            let d = block_data(id, index);
            p.on_message(d, &local).unwrap();
            // Still not contiguous: the arrived block must not be asked for again.
            let again = requested_blocks(&p.on_applied(&local));
            assert!(again.is_empty(), "block {index} requested again: {again:?}");
        }
        assert!(p.caught_up(&local));
    }

    #[test]
    fn blocks_another_connection_delivered_are_not_requested() {
        let local = Local {
            length: 1000,
            contiguous: 0,
            fork: 0,
            writable: false,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let mut p = Peer::new(false, Arc::default());
        p.on_open(&local);
        // The remote has not announced its blocks yet: wants wait.
        p.want(0..1000, &local);
        // Another connection delivered the even blocks below 500.
        p.forget_held(|i| i < 500 && i % 2 == 0);
        p.on_message(sync(1000, 1000), &local).unwrap();
        let a = p
            .on_message(
                Message::Range {
                    drop: false,
                    start: 0,
                    length: 1000,
                },
                &local,
            )
            .unwrap();
        let asked: Vec<u64> = requested_blocks(&a).into_iter().map(|r| r.1).collect();
        assert_eq!(asked.len(), PIPELINE);
        assert!(asked.iter().all(|i| i % 2 == 1), "{asked:?}");
    }

    #[test]
    fn channels_of_a_core_share_their_claims() {
        let local = Local {
            length: 200,
            contiguous: 0,
            fork: 0,
            writable: false,
            needs_manifest: false,
            pipeline: PIPELINE,
        };
        let claims = Arc::new(Claims::default());
        let synced = |p: &mut Peer| {
            p.on_open(&local);
            p.on_message(sync(200, 200), &local).unwrap();
            let a = p
                .on_message(
                    Message::Range {
                        drop: false,
                        start: 0,
                        length: 200,
                    },
                    &local,
                )
                .unwrap();
            requested_blocks(&a)
        };
        let mut p1 = Peer::new(true, claims.clone());
        let mut p2 = Peer::new(true, claims.clone());
        let r1 = synced(&mut p1);
        let r2 = synced(&mut p2);
        let blocks = |r: &[(u64, u64)]| r.iter().map(|x| x.1).collect::<Vec<_>>();
        assert_eq!(blocks(&r1), (0..32).collect::<Vec<_>>());
        assert_eq!(blocks(&r2), (32..64).collect::<Vec<_>>(), "other blocks");
        // p1's peer lacks block 5: p2 takes it over as soon as it has room.
        let id5 = r1[5].0;
        p1.on_message(
            Message::NoData {
                request: id5,
                reason: 0,
            },
            &local,
        )
        .unwrap();
        let d = block_data(r2[0].0, 32);
        p2.on_message(d, &local).unwrap();
        assert_eq!(blocks(&requested_blocks(&p2.on_applied(&local))), vec![5]);
        // p1 ends: the blocks it claimed are free again; p2 asks for them as it gets room.
        drop(p1);
        assert!(claims.claim(0, false) && claims.claim(31, false));
        // Block 32 arrived (held, past the prefix): still claimed, nobody fetches it again.
        assert!(!claims.claim(32, false));
    }

    /// What the session does with a block request: asks for the nodes neither we nor the
    /// answers in flight hold.
    fn fill_nodes(p: &mut Peer, core: &crate::Core, actions: &[Action]) -> Vec<(u64, u64, u64)> {
        requested_blocks(actions)
            .into_iter()
            .map(|(id, index)| {
                let nodes = core.missing_nodes_beside(index, |n| p.coming(n));
                p.expect(id, index, nodes);
                (id, index, nodes)
            })
            .collect()
    }

    /// Downloads a writer's 256 blocks the way the session does, a pipeline at a time, the
    /// answers of each window applied in order (or, `reversed`, last first); returns the tree
    /// nodes the answers carried, and how many answers stored nothing.
    async fn pipelined_download(reversed: bool, download_all: bool) -> (u64, u64) {
        use crate::store::ProofRequest;
        use cohd_format::wire::{RequestBlock, RequestUpgrade};
        let w_store = crate::Store::memory();
        let writer = w_store.open_named("w").await.unwrap();
        for i in 0..256u32 {
            writer.append(&i.to_le_bytes()).await.unwrap();
        }
        let r_store = crate::Store::memory();
        let reader = r_store.open_key(writer.key(), true).await.unwrap();
        let up = ProofRequest {
            upgrade: Some(RequestUpgrade {
                start: 0,
                length: 256,
            }),
            ..ProofRequest::default()
        };
        let proof = writer.create_proof(&up).await.unwrap().unwrap();
        assert!(reader.apply_proof(proof).await.unwrap());
        let mut p = Peer::new(download_all, Arc::default());
        p.on_open(&Local::of(&reader));
        p.on_message(sync(256, 256), &Local::of(&reader)).unwrap();
        let mut actions = p
            .on_message(
                Message::Range {
                    drop: false,
                    start: 0,
                    length: 256,
                },
                &Local::of(&reader),
            )
            .unwrap();
        if !download_all {
            // A sparse reader: the blocks are wanted one by one (as reads want them).
            actions.extend(p.want(0..256, &Local::of(&reader)));
        }
        let (mut carried, mut stale) = (0, 0);
        for _round in 0..64 {
            let mut reqs = fill_nodes(&mut p, &reader, &actions);
            if reqs.is_empty() {
                break;
            }
            if reversed {
                reqs.reverse();
            }
            let mut proofs = Vec::new();
            let mut indices = Vec::new();
            for (id, index, nodes) in reqs {
                let req = ProofRequest {
                    block: Some(RequestBlock { index, nodes }),
                    ..ProofRequest::default()
                };
                let pr = writer.create_proof(&req).await.unwrap().unwrap();
                let b = pr.block.clone().unwrap();
                carried += b.nodes.len() as u64;
                let data = Message::Data {
                    request: id,
                    fork: 0,
                    block: Some(b),
                    hash: None,
                    seek: None,
                    upgrade: None,
                    manifest: None,
                };
                for a in p.on_message(data, &Local::of(&reader)).unwrap() {
                    if let Action::Apply(pr) = a {
                        proofs.push(pr);
                    }
                }
                indices.push(index);
            }
            let (applied, outcome) = reader.apply_proofs(proofs).await;
            assert!(outcome.unwrap(), "every proof verifies or is stale");
            assert_eq!(applied, indices.len());
            for i in indices {
                if !reader.has(i) {
                    stale += 1;
                    p.not_stored(i);
                }
            }
            assert!(p.coming.is_empty() && p.coming_by_request.is_empty());
            actions = p.on_applied(&Local::of(&reader));
        }
        assert_eq!(reader.contiguous_held(), 256, "every block arrived");
        assert!(p.caught_up(&Local::of(&reader)));
        (carried, stale)
    }

    #[tokio::test]
    async fn pipelined_requests_do_not_ask_twice_for_the_same_nodes() {
        let (carried, stale) = pipelined_download(false, true).await;
        // Each node below the root arrives once: 255 siblings for 256 leaves. (Asked for
        // without the answers in flight, a window of 32 carried about 6 per block.)
        assert!(carried <= 255, "{carried} nodes for 256 blocks");
        assert_eq!(stale, 0);
        // Answers that arrive before the ones they rely on store nothing, and their blocks
        // are asked for again: the download still completes.
        let (_, stale) = pipelined_download(true, true).await;
        assert!(stale > 0);
        // So too for a reader that wants blocks rather than everything.
        let (_, stale) = pipelined_download(true, false).await;
        assert!(stale > 0);
    }
}
