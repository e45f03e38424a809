//! The write path: puts, deletes and atomic batches, reproducing JavaScript Hyperbee's bytes.
//!
//! JavaScript Hyperbee mutates one live object graph across all ops of a batch, and the bytes it
//! writes depend on the identity of its child-pointer records (they are renumbered in place when
//! a batch is flushed). We mirror that with an arena: [`Slot`]s are child pointers with identity,
//! [`TNode`]s the in-memory nodes. See `docs/hyperbee-algorithm.md` sections 5 to 8.

use std::sync::Arc;

use cohd_format::{BeeNode, Level, YoloIndex};
use tokio::sync::OwnedMutexGuard;

use super::read::{Blocks, MAX_DEPTH};
use super::{BeeError, Shared};
use crate::store::{Core, CoreError, Durability};

/// Keys per node at which a node splits (at rest a node holds at most 8).
const MAX_KEYS: usize = 9;
/// Fewest keys a non-root node may hold.
const MIN_KEYS: usize = 4;

type NodeId = usize;
type SlotId = usize;

#[derive(Debug, Clone)]
struct KeyRef {
    seq: u64,
    key: Arc<[u8]>,
}

/// A child pointer: where the child is stored, and the child once loaded.
#[derive(Debug)]
struct Slot {
    seq: u64,
    offset: u64,
    node: Option<NodeId>,
}

#[derive(Debug, Default)]
struct TNode {
    keys: Vec<KeyRef>,
    children: Vec<SlotId>,
    dirty: bool,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    index: Vec<Option<SlotId>>,
}

/// An atomic group of puts and deletes, appended to the core in one append on [`Batch::flush`].
/// Holds the bee's write lock; dropping it unflushed discards the ops.
#[derive(Debug)]
pub struct Batch {
    shared: Arc<Shared>,
    _guard: OwnedMutexGuard<()>,
    nodes: Vec<TNode>,
    slots: Vec<Slot>,
    /// Core length when the batch started (after the header, if we wrote it).
    base: u64,
    /// Root of the live tree after the last op (None: not loaded yet, or empty tree).
    root: Option<NodeId>,
    root_loaded: bool,
    entries: Vec<Pending>,
}

impl Batch {
    pub(crate) async fn new(shared: Arc<Shared>) -> Result<Self, BeeError> {
        let guard = shared.write_lock.clone().lock_owned().await;
        let base = shared.core.info().length;
        Ok(Self {
            shared,
            _guard: guard,
            nodes: Vec::new(),
            slots: Vec::new(),
            base,
            root: None,
            root_loaded: false,
            entries: Vec::new(),
        })
    }

    /// The version the next op sees: core length plus ops pending in this batch.
    pub fn version(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Number of blocks pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn blocks(&self) -> Blocks<'_> {
        Blocks {
            core: &self.shared.core,
            cache: &self.shared.cache,
            pending: &[],
            pending_base: self.base,
        }
    }

    /// Hyperbee writes its header at the first op on an empty core, as its own append.
    async fn ensure_header(&mut self) -> Result<(), BeeError> {
        if self.base == 0 && self.entries.is_empty() && self.shared.core.info().length == 0 {
            self.shared
                .core
                .append(&self.shared.header.encode())
                .await
                .map_err(core_err)?;
            self.base = 1;
        }
        Ok(())
    }

    async fn load_level(&mut self, seq: u64, offset: u64) -> Result<NodeId, BeeError> {
        if seq == 0 || seq >= self.base {
            return Err(BeeError::BadPointer {
                seq,
                reason: "child pointer outside the stored bee",
            });
        }
        let block = self.blocks().block(seq).await?;
        let level = usize::try_from(offset)
            .ok()
            .and_then(|o| block.index.levels.get(o))
            .ok_or(BeeError::BadPointer {
                seq,
                reason: "level offset out of range",
            })?;
        self.node_from_level(seq, level).await
    }

    async fn node_from_level(&mut self, seq: u64, level: &Level) -> Result<NodeId, BeeError> {
        let nc = level.children.len() / 2;
        if nc != 0 && nc != level.keys.len() + 1 {
            return Err(BeeError::BadPointer {
                seq,
                reason: "node has the wrong number of children",
            });
        }
        let mut keys = Vec::with_capacity(level.keys.len());
        for &k in &level.keys {
            if k == 0 || k > seq {
                return Err(BeeError::BadPointer {
                    seq,
                    reason: "key points past its block",
                });
            }
            let kb = self.blocks().block(k).await?;
            keys.push(KeyRef {
                seq: k,
                key: Arc::from(kb.key.as_slice()),
            });
        }
        let mut children = Vec::with_capacity(nc);
        for pair in level.children.chunks_exact(2) {
            children.push(self.new_slot(pair[0], pair[1], None));
        }
        self.nodes.push(TNode {
            keys,
            children,
            dirty: false,
        });
        Ok(self.nodes.len() - 1)
    }

    fn new_slot(&mut self, seq: u64, offset: u64, node: Option<NodeId>) -> SlotId {
        self.slots.push(Slot { seq, offset, node });
        self.slots.len() - 1
    }

    fn new_node(&mut self, node: TNode) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The live root, loading it from the core for the first op of the batch.
    async fn live_root(&mut self) -> Result<Option<NodeId>, BeeError> {
        if !self.root_loaded {
            self.root_loaded = true;
            self.root = if self.base < 2 {
                None
            } else {
                let seq = self.base - 1;
                let block = self.blocks().block(seq).await?;
                match block.index.levels.first() {
                    Some(level) => Some(self.node_from_level(seq, &level.clone()).await?),
                    None => {
                        return Err(BeeError::BadPointer {
                            seq,
                            reason: "has no root level",
                        })
                    }
                }
            };
        }
        Ok(self.root)
    }

    async fn child(&mut self, node: NodeId, i: usize) -> Result<NodeId, BeeError> {
        let slot = *self.nodes[node]
            .children
            .get(i)
            .ok_or(BeeError::BadPointer {
                seq: 0,
                reason: "child index out of range",
            })?;
        if let Some(n) = self.slots[slot].node {
            return Ok(n);
        }
        let (seq, offset) = (self.slots[slot].seq, self.slots[slot].offset);
        let n = self.load_level(seq, offset).await?;
        self.slots[slot].node = Some(n);
        Ok(n)
    }

    fn search(&self, node: NodeId, key: &[u8]) -> (usize, bool) {
        let keys = &self.nodes[node].keys;
        match keys.binary_search_by(|k| (*k.key).cmp(key)) {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        }
    }

    fn is_leaf(&self, node: NodeId) -> bool {
        self.nodes[node].children.is_empty()
    }

    /// Reads `key` as this batch would see it (pending ops included).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, BeeError> {
        let Some(mut node) = self.live_root().await? else {
            return Ok(None);
        };
        for _ in 0..MAX_DEPTH {
            let (i, found) = self.search(node, key);
            if found {
                let seq = self.nodes[node].keys[i].seq;
                if let Some(p) = self.entries.iter().find(|p| p.seq == seq) {
                    return Ok(Some(p.value.clone().unwrap_or_default()));
                }
                return Ok(Some(
                    self.blocks()
                        .block(seq)
                        .await?
                        .value
                        .clone()
                        .unwrap_or_default(),
                ));
            }
            if self.is_leaf(node) {
                return Ok(None);
            }
            node = self.child(node, i).await?;
        }
        Err(BeeError::BadPointer {
            seq: self.base,
            reason: "tree deeper than any valid bee",
        })
    }

    /// Puts `key`; returns the seq of its block.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, BeeError> {
        self.ensure_header().await?;
        let seq = self.version();
        let new = KeyRef {
            seq,
            key: Arc::from(key),
        };
        let mut root = match self.live_root().await? {
            Some(r) => r,
            None => self.new_node(TNode {
                dirty: true,
                ..TNode::default()
            }),
        };
        let mut path: Vec<NodeId> = Vec::new();
        let mut node = root;
        while !self.is_leaf(node) {
            if path.len() >= MAX_DEPTH {
                return Err(BeeError::BadPointer {
                    seq: self.base,
                    reason: "tree deeper than any valid bee",
                });
            }
            path.push(node);
            self.nodes[node].dirty = true;
            let (i, found) = self.search(node, key);
            if found {
                self.nodes[node].keys[i] = new;
                self.finish_op(root, seq, key, Some(value.to_vec()));
                return Ok(seq);
            }
            node = self.child(node, i).await?;
        }
        let (i, found) = self.search(node, key);
        self.nodes[node].dirty = true;
        if found {
            self.nodes[node].keys[i] = new;
        } else {
            self.nodes[node].keys.insert(i, new);
            while self.nodes[node].keys.len() >= MAX_KEYS {
                let (median, right) = self.split(node);
                match path.pop() {
                    Some(parent) => {
                        let (j, _) = self.search(parent, &median.key);
                        self.nodes[parent].keys.insert(j, median);
                        let slot = self.new_slot(0, 0, Some(right));
                        self.nodes[parent].children.insert(j + 1, slot);
                        node = parent;
                    }
                    None => {
                        let l = self.new_slot(0, 0, Some(node));
                        let r = self.new_slot(0, 0, Some(right));
                        root = self.new_node(TNode {
                            keys: vec![median],
                            children: vec![l, r],
                            dirty: true,
                        });
                        break;
                    }
                }
            }
        }
        self.finish_op(root, seq, key, Some(value.to_vec()));
        Ok(seq)
    }

    fn split(&mut self, node: NodeId) -> (KeyRef, NodeId) {
        let n = &mut self.nodes[node];
        let h = n.keys.len() / 2;
        let right_keys = n.keys.split_off(n.keys.len() - h);
        // The node had at least MAX_KEYS keys, so one remains to move up.
        let median = n.keys.pop().unwrap_or_else(|| unreachable!());
        let right_children = if n.children.is_empty() {
            Vec::new()
        } else {
            n.children.split_off(n.children.len() - (h + 1))
        };
        n.dirty = true;
        let right = self.new_node(TNode {
            keys: right_keys,
            children: right_children,
            dirty: true,
        });
        (median, right)
    }

    /// Deletes `key`; `false` when it is absent (nothing is written but, on an empty core, the
    /// header).
    pub async fn del(&mut self, key: &[u8]) -> Result<bool, BeeError> {
        self.ensure_header().await?;
        let Some(root) = self.live_root().await? else {
            return Ok(false);
        };
        let seq = self.version();
        let mut stack: Vec<NodeId> = Vec::new();
        let mut node = root;
        loop {
            if stack.len() >= MAX_DEPTH {
                return Err(BeeError::BadPointer {
                    seq: self.base,
                    reason: "tree deeper than any valid bee",
                });
            }
            stack.push(node);
            let (i, found) = self.search(node, key);
            if found {
                if self.is_leaf(node) {
                    self.nodes[node].keys.remove(i);
                } else {
                    self.replace_with_nearest_leaf_key(node, i, &mut stack)
                        .await?;
                }
                for &n in &stack {
                    self.nodes[n].dirty = true;
                }
                let root = self.rebalance(&mut stack).await?;
                self.finish_op(root, seq, key, None);
                return Ok(true);
            }
            if self.is_leaf(node) {
                return Ok(false);
            }
            node = self.child(node, i).await?;
        }
    }

    async fn edge_leaf(
        &mut self,
        mut node: NodeId,
        rightmost: bool,
        stack: Option<&mut Vec<NodeId>>,
    ) -> Result<NodeId, BeeError> {
        let mut pushed = Vec::new();
        pushed.push(node);
        while !self.is_leaf(node) {
            if pushed.len() >= MAX_DEPTH {
                return Err(BeeError::BadPointer {
                    seq: self.base,
                    reason: "tree deeper than any valid bee",
                });
            }
            let i = if rightmost {
                self.nodes[node].children.len() - 1
            } else {
                0
            };
            node = self.child(node, i).await?;
            pushed.push(node);
        }
        if let Some(s) = stack {
            s.extend(pushed);
        }
        Ok(node)
    }

    async fn replace_with_nearest_leaf_key(
        &mut self,
        node: NodeId,
        i: usize,
        stack: &mut Vec<NodeId>,
    ) -> Result<(), BeeError> {
        let l = self.child(node, i).await?;
        let r = self.child(node, i + 1).await?;
        let pred_leaf = self.edge_leaf(l, true, None).await?;
        let succ_leaf = self.edge_leaf(r, false, None).await?;
        let k = if self.nodes[pred_leaf].keys.len() < self.nodes[succ_leaf].keys.len() {
            let leaf = self.edge_leaf(r, false, Some(stack)).await?;
            self.nodes[leaf].keys.remove(0)
        } else {
            let leaf = self.edge_leaf(l, true, Some(stack)).await?;
            self.nodes[leaf].keys.pop().ok_or(BeeError::BadPointer {
                seq: self.base,
                reason: "empty leaf below an internal node",
            })?
        };
        self.nodes[node].keys[i] = k;
        Ok(())
    }

    async fn rebalance(&mut self, stack: &mut Vec<NodeId>) -> Result<NodeId, BeeError> {
        let root = stack[0];
        let base = self.base;
        let corrupt = move || BeeError::BadPointer {
            seq: base,
            reason: "unbalanced tree",
        };
        while stack.len() > 1 {
            let n = stack.pop().unwrap_or(root);
            let p = *stack.last().unwrap_or(&root);
            if self.nodes[n].keys.len() >= MIN_KEYS {
                return Ok(root);
            }
            let idx = self.nodes[p]
                .children
                .iter()
                .position(|s| self.slots[*s].node == Some(n))
                .ok_or_else(corrupt)?;
            let nchildren = self.nodes[p].children.len();
            let left = if idx > 0 {
                Some(self.child(p, idx - 1).await?)
            } else {
                None
            };
            let right = if idx + 1 < nchildren {
                Some(self.child(p, idx + 1).await?)
            } else {
                None
            };
            if let Some(left) = left.filter(|l| self.nodes[*l].keys.len() > MIN_KEYS) {
                self.nodes[left].dirty = true;
                let sep = self.nodes[p].keys[idx - 1].clone();
                self.nodes[n].keys.insert(0, sep);
                if !self.nodes[left].children.is_empty() {
                    let c = self.nodes[left]
                        .children
                        .pop()
                        .unwrap_or_else(|| unreachable!());
                    self.nodes[n].children.insert(0, c);
                }
                let up = self.nodes[left]
                    .keys
                    .pop()
                    .unwrap_or_else(|| unreachable!());
                self.nodes[p].keys[idx - 1] = up;
                return Ok(root);
            }
            if let Some(right) = right.filter(|r| self.nodes[*r].keys.len() > MIN_KEYS) {
                self.nodes[right].dirty = true;
                let sep = self.nodes[p].keys[idx].clone();
                self.nodes[n].keys.push(sep);
                if !self.nodes[right].children.is_empty() {
                    let c = self.nodes[right].children.remove(0);
                    self.nodes[n].children.push(c);
                }
                let up = self.nodes[right].keys.remove(0);
                self.nodes[p].keys[idx] = up;
                return Ok(root);
            }
            let (survivor, absorbed, k) = match (left, right) {
                (Some(l), _) => (l, n, idx - 1),
                (None, Some(r)) => (n, r, idx),
                (None, None) => return Err(corrupt()),
            };
            self.nodes[survivor].dirty = true;
            let sep = self.nodes[p].keys.remove(k);
            let akeys = std::mem::take(&mut self.nodes[absorbed].keys);
            let achildren = std::mem::take(&mut self.nodes[absorbed].children);
            self.nodes[survivor].keys.push(sep);
            self.nodes[survivor].keys.extend(akeys);
            self.nodes[survivor].children.extend(achildren);
            let freed = self.nodes[p].children.remove(k + 1);
            self.slots[freed].seq = 0;
        }
        if self.nodes[root].keys.is_empty() && !self.nodes[root].children.is_empty() {
            return self.child(root, 0).await;
        }
        Ok(root)
    }

    /// Records the op's block: walks dirty nodes depth-first from the root, pointing their slots
    /// at (this seq, level).
    fn finish_op(&mut self, root: NodeId, seq: u64, key: &[u8], value: Option<Vec<u8>>) {
        let mut index: Vec<Option<SlotId>> = Vec::new();
        self.visit(root, seq, &mut index);
        let slot = self.new_slot(seq, 0, Some(root));
        index[0] = Some(slot);
        self.root = Some(root);
        self.entries.push(Pending {
            seq,
            key: key.to_vec(),
            value,
            index,
        });
    }

    fn visit(&mut self, node: NodeId, seq: u64, index: &mut Vec<Option<SlotId>>) -> usize {
        let my = index.len();
        index.push(None);
        self.nodes[node].dirty = false;
        for ci in 0..self.nodes[node].children.len() {
            let s = self.nodes[node].children[ci];
            if let Some(child) = self.slots[s].node.filter(|c| self.nodes[*c].dirty) {
                self.slots[s].seq = seq;
                let off = self.visit(child, seq, index);
                self.slots[s].offset = off as u64;
                index[off] = Some(s);
            }
        }
        my
    }

    fn level_of(&self, slot: SlotId) -> Level {
        let Some(node) = self.slots[slot].node else {
            return Level::default();
        };
        let n = &self.nodes[node];
        Level {
            keys: n.keys.iter().map(|k| k.seq).collect(),
            children: n
                .children
                .iter()
                .flat_map(|c| [self.slots[*c].seq, self.slots[*c].offset])
                .collect(),
        }
    }

    /// Drops levels that a later op of the batch re-emitted, renumbering survivors in place
    /// (JavaScript's swap-remove compaction; later blocks' pointers see the new offsets).
    fn compact(&mut self, e: usize) {
        let s = self.entries[e].seq;
        let mut a = std::mem::take(&mut self.entries[e].index);
        if let Some(first) = a.first_mut() {
            *first = None;
        }
        let mut j = 0;
        while j < a.len() {
            match a[j] {
                Some(x) if self.slots[x].seq == s => {
                    self.slots[x].offset = j as u64;
                    j += 1;
                }
                _ => {
                    let last = a.pop().flatten();
                    if j < a.len() {
                        a[j] = last;
                    }
                }
            }
        }
        self.entries[e].index = a;
    }

    /// Encodes the pending blocks (for tests and for callers that append elsewhere).
    fn encode_all(&mut self) -> Vec<Vec<u8>> {
        let n = self.entries.len();
        let mut out = Vec::with_capacity(n);
        for e in 0..n {
            if e + 1 < n {
                self.compact(e);
            }
            let levels = self.entries[e]
                .index
                .iter()
                .map(|s| s.map_or_else(Level::default, |s| self.level_of(s)))
                .collect();
            let node = BeeNode {
                index: YoloIndex { levels }.encode(),
                key: std::mem::take(&mut self.entries[e].key),
                value: self.entries[e].value.take(),
            };
            out.push(node.encode());
        }
        out
    }

    /// Appends every pending block in one append; returns the new version.
    pub async fn flush(mut self) -> Result<u64, BeeError> {
        if self.entries.is_empty() {
            return Ok(self.shared.core.info().length);
        }
        let blocks = self.encode_all();
        let out = self
            .shared
            .core
            .append_owned(blocks)
            .await
            .map_err(core_err)?;
        Ok(out.length)
    }
}

impl Batch {
    /// [`flush`](Self::flush), committed together with `other_blocks` appended to `other`
    /// (another core of the store): after any stop both appends are there, or neither.
    pub async fn flush_together(
        self,
        other: &Core,
        other_blocks: Vec<Vec<u8>>,
    ) -> Result<u64, BeeError> {
        self.flush_together_with(other, other_blocks, Durability::Buffered)
            .await
    }

    /// [`flush_together`](Self::flush_together), durable when it returns if `durability` says
    /// so.
    pub(crate) async fn flush_together_with(
        mut self,
        other: &Core,
        other_blocks: Vec<Vec<u8>>,
        durability: Durability,
    ) -> Result<u64, BeeError> {
        if self.entries.is_empty() {
            if !other_blocks.is_empty() {
                other.append_owned(other_blocks).await.map_err(core_err)?;
            }
            return Ok(self.shared.core.info().length);
        }
        let blocks = self.encode_all();
        let (out, _) = self
            .shared
            .core
            .append_together_with(blocks, other, other_blocks, durability)
            .await
            .map_err(core_err)?;
        Ok(out.length)
    }
}

fn core_err(e: CoreError) -> BeeError {
    match e {
        CoreError::NotWritable => BeeError::NotWritable,
        e => BeeError::Core(e.to_string()),
    }
}
