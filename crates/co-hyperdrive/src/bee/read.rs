//! Reading a bee at one version: block access (with a pending overlay for batches), node
//! resolution with pointer validation, point lookups and ordered range cursors.

use std::ops::Bound;
use std::sync::Arc;

use crate::store::Core;

use super::cache::{Block, BlockCache};
use super::BeeError;

/// Where blocks come from: the core, plus blocks a batch has built but not yet appended.
#[derive(Debug, Clone)]
pub(crate) struct Blocks<'a> {
    pub(crate) core: &'a Core,
    pub(crate) cache: &'a BlockCache,
    /// Blocks at seqs `pending_base..pending_base + pending.len()`.
    pub(crate) pending: &'a [Arc<Block>],
    pub(crate) pending_base: u64,
}

impl Blocks<'_> {
    pub(crate) async fn block(&self, seq: u64) -> Result<Arc<Block>, BeeError> {
        if seq == 0 {
            return Err(BeeError::BadPointer {
                seq,
                reason: "points at the header block",
            });
        }
        if seq >= self.pending_base {
            return self
                .pending
                .get((seq - self.pending_base) as usize)
                .cloned()
                .ok_or(BeeError::BadPointer {
                    seq,
                    reason: "points past the end of the bee",
                });
        }
        let fork = self.core.fork();
        if let Some(b) = self.cache.get(fork, seq) {
            return Ok(b);
        }
        let bytes = self
            .core
            .get(seq)
            .await
            .map_err(|e| BeeError::Core(e.to_string()))?
            .ok_or(BeeError::NotAvailable(seq))?;
        let block =
            Arc::new(Block::decode(&bytes).map_err(|source| BeeError::Decode { seq, source })?);
        self.cache.insert(fork, seq, block.clone());
        Ok(block)
    }
}

/// A tree node as stored: a level of some block.
#[derive(Debug, Clone)]
pub(crate) struct NodeRef {
    pub(crate) seq: u64,
    pub(crate) offset: usize,
    pub(crate) block: Arc<Block>,
}

impl NodeRef {
    pub(crate) fn keys(&self) -> &[u64] {
        &self.block.index.levels[self.offset].keys
    }

    pub(crate) fn n_children(&self) -> usize {
        self.block.index.levels[self.offset].children.len() / 2
    }

    pub(crate) fn child_ptr(&self, i: usize) -> (u64, u64) {
        let c = &self.block.index.levels[self.offset].children;
        (c[2 * i], c[2 * i + 1])
    }
}

impl Blocks<'_> {
    /// The root node of the bee at `version` (core length), or `None` when the tree is empty.
    pub(crate) async fn root(&self, version: u64) -> Result<Option<NodeRef>, BeeError> {
        if version < 2 {
            return Ok(None);
        }
        let seq = version - 1;
        let block = self.block(seq).await?;
        if block.index.levels.is_empty() || block.index.levels[0].keys.is_empty() {
            return Ok(None);
        }
        self.check_level(seq, &block, 0)?;
        Ok(Some(NodeRef {
            seq,
            offset: 0,
            block,
        }))
    }

    /// Resolves child `i` of `node`. Pointers may go anywhere in the bee (batch compaction
    /// renumbers levels, so even a same-block child can sit at a lower offset); walks bound their
    /// depth by [`MAX_DEPTH`] so that hostile cycles end in an error.
    pub(crate) async fn child(&self, node: &NodeRef, i: usize) -> Result<NodeRef, BeeError> {
        let (seq, offset) = node.child_ptr(i);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let block = if seq == node.seq {
            node.block.clone()
        } else {
            self.block(seq).await?
        };
        self.check_level(seq, &block, offset)?;
        Ok(NodeRef { seq, offset, block })
    }

    fn check_level(&self, seq: u64, block: &Block, offset: usize) -> Result<(), BeeError> {
        let level = block.index.levels.get(offset).ok_or(BeeError::BadPointer {
            seq,
            reason: "level offset out of range",
        })?;
        let nc = level.children.len() / 2;
        if nc != 0 && nc != level.keys.len() + 1 {
            return Err(BeeError::BadPointer {
                seq,
                reason: "node has the wrong number of children",
            });
        }
        if level.keys.iter().any(|k| *k > seq || *k == 0) {
            return Err(BeeError::BadPointer {
                seq,
                reason: "key points past its block",
            });
        }
        Ok(())
    }

    /// Key bytes of the key stored at `seq`.
    pub(crate) async fn key(&self, seq: u64) -> Result<Arc<Block>, BeeError> {
        self.block(seq).await
    }

    /// Index of the first key in `node` that is >= `target` (and whether it is equal).
    pub(crate) async fn search(
        &self,
        node: &NodeRef,
        target: &[u8],
    ) -> Result<(usize, bool), BeeError> {
        let keys = node.keys();
        let (mut lo, mut hi) = (0, keys.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let kb = self.key(keys[mid]).await?;
            match kb.key.as_slice().cmp(target) {
                std::cmp::Ordering::Equal => return Ok((mid, true)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok((lo, false))
    }

    /// Point lookup: (seq, block) of `key` at `version`.
    pub(crate) async fn get(
        &self,
        version: u64,
        key: &[u8],
    ) -> Result<Option<(u64, Arc<Block>)>, BeeError> {
        let Some(mut node) = self.root(version).await? else {
            return Ok(None);
        };
        for _ in 0..MAX_DEPTH {
            let (i, found) = self.search(&node, key).await?;
            if found {
                let seq = node.keys()[i];
                return Ok(Some((seq, self.block(seq).await?)));
            }
            if node.n_children() == 0 {
                return Ok(None);
            }
            node = self.child(&node, i).await?;
        }
        Err(BeeError::BadPointer {
            seq: version - 1,
            reason: "tree deeper than any valid bee",
        })
    }
}

/// No valid bee is this deep (T=5 gives at least 5^depth keys).
pub(crate) const MAX_DEPTH: usize = 64;

/// A range over the bee; bounds are on encoded key bytes.
#[derive(Debug, Clone)]
pub struct Range {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
    /// Iterate from the largest key down.
    pub reverse: bool,
    /// Stop after this many entries.
    pub limit: Option<usize>,
}

impl Default for Range {
    fn default() -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit: None,
        }
    }
}

impl Range {
    /// `gt a, lt b`.
    pub fn exclusive(a: Vec<u8>, b: Vec<u8>) -> Self {
        Self {
            start: Bound::Excluded(a),
            end: Bound::Excluded(b),
            ..Self::default()
        }
    }

    fn above_start(&self, k: &[u8]) -> bool {
        match &self.start {
            Bound::Unbounded => true,
            Bound::Included(s) => k >= s.as_slice(),
            Bound::Excluded(s) => k > s.as_slice(),
        }
    }

    fn below_end(&self, k: &[u8]) -> bool {
        match &self.end {
            Bound::Unbounded => true,
            Bound::Included(e) => k <= e.as_slice(),
            Bound::Excluded(e) => k < e.as_slice(),
        }
    }
}

/// One frame of an in-order walk: `pos` runs over 0..=2*keys; even = child pos/2, odd = key.
#[derive(Debug)]
struct Frame {
    node: NodeRef,
    pos: usize,
}

impl Blocks<'_> {
    /// Collects the entries of `range` at `version` as (key seq, block), in order.
    pub(crate) async fn range(
        &self,
        version: u64,
        range: &Range,
    ) -> Result<Vec<(u64, Arc<Block>)>, BeeError> {
        let mut out = Vec::new();
        let limit = range.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(out);
        }
        let Some(root) = self.root(version).await? else {
            return Ok(out);
        };
        let mut stack: Vec<Frame> = Vec::new();
        self.descend(root, range, &mut stack).await?;
        while let Some(top) = stack.last_mut() {
            let keys = top.node.keys().len();
            let end = 2 * keys + 1;
            if top.pos >= end {
                stack.pop();
                continue;
            }
            let pos = top.pos;
            top.pos += 1;
            let (is_key, idx) = if range.reverse {
                // Mirror: walk positions from the right.
                let m = end - 1 - pos;
                (m % 2 == 1, m / 2)
            } else {
                (pos % 2 == 1, pos / 2)
            };
            if is_key {
                let seq = top.node.keys()[idx];
                let block = self.block(seq).await?;
                let inside = if range.reverse {
                    range.above_start(&block.key)
                } else {
                    range.below_end(&block.key)
                };
                if !inside {
                    return Ok(out);
                }
                let other = if range.reverse {
                    range.below_end(&block.key)
                } else {
                    range.above_start(&block.key)
                };
                if other {
                    out.push((seq, block));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            } else if top.node.n_children() > 0 {
                let node = top.node.clone();
                let child = self.child(&node, idx).await?;
                if stack.len() >= MAX_DEPTH {
                    return Err(BeeError::BadPointer {
                        seq: node.seq,
                        reason: "tree deeper than any valid bee",
                    });
                }
                stack.push(Frame {
                    node: child,
                    pos: 0,
                });
            }
        }
        Ok(out)
    }

    /// Pushes frames from `node` down to the first position inside the range, skipping subtrees
    /// that lie wholly before it (after it, when reversed).
    async fn descend(
        &self,
        mut node: NodeRef,
        range: &Range,
        stack: &mut Vec<Frame>,
    ) -> Result<(), BeeError> {
        loop {
            let keys = node.keys().len();
            let bound = if range.reverse {
                &range.end
            } else {
                &range.start
            };
            // i = index of the first key that may be inside the range, in walk direction.
            let i = match bound {
                Bound::Unbounded => 0,
                Bound::Included(b) | Bound::Excluded(b) => {
                    let (i, found) = self.search(&node, b).await?;
                    if !range.reverse {
                        i
                    } else {
                        // Keys at index < i are < b; key i is == b if found. Count from the right.
                        let upto = if found && matches!(bound, Bound::Included(_)) {
                            i + 1
                        } else {
                            i
                        };
                        keys - upto
                    }
                }
            };
            // Start at the child before key i (walk order), which is position 2*i.
            let pos = 2 * i;
            let has_children = node.n_children() > 0;
            if !has_children {
                stack.push(Frame { node, pos: pos + 1 });
                return Ok(());
            }
            let child_idx = if range.reverse { keys - i } else { i };
            stack.push(Frame {
                node: node.clone(),
                pos: pos + 1,
            });
            if stack.len() >= MAX_DEPTH {
                return Err(BeeError::BadPointer {
                    seq: node.seq,
                    reason: "tree deeper than any valid bee",
                });
            }
            node = self.child(&node, child_idx).await?;
        }
    }
}
