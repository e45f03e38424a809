//! Decoded bee blocks, cached: a B-tree walk touches the same upper nodes on every lookup, and
//! decoding a block from the core is the dominant cost of a read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cohd_format::{BeeNode, YoloIndex};

/// A decoded data block of the bee.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) index: YoloIndex,
}

impl Block {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, cohd_format::DecodeError> {
        let node = BeeNode::decode(bytes)?;
        let index = YoloIndex::decode(&node.index)?;
        Ok(Self {
            key: node.key,
            value: node.value,
            index,
        })
    }
}

/// A bounded map of seq -> decoded block, for one fork of the core. Blocks never change within
/// a fork; when the owner truncates (a new fork, followed from a peer), the blocks past the
/// shared part may differ, so the map is emptied for the new fork. On overflow the map is simply
/// emptied too (cheap, and the hot upper levels refill at once).
#[derive(Debug, Default)]
pub(crate) struct BlockCache {
    map: Mutex<(u64, HashMap<u64, Arc<Block>>)>,
}

const CAPACITY: usize = 1 << 16;

impl BlockCache {
    /// Block `seq` of fork `fork`, if cached.
    pub(crate) fn get(&self, fork: u64, seq: u64) -> Option<Arc<Block>> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.0 != fork {
            return None;
        }
        m.1.get(&seq).cloned()
    }

    /// Caches block `seq`, read while the core was at fork `fork`.
    pub(crate) fn insert(&self, fork: u64, seq: u64, block: Arc<Block>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.0 != fork {
            // Only a newer fork replaces the cache (a read that began before the fork may
            // finish after it).
            if fork < m.0 {
                return;
            }
            *m = (fork, HashMap::new());
        }
        if m.1.len() >= CAPACITY {
            m.1.clear();
        }
        m.1.insert(seq, block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_fork_empties_the_cache() {
        let c = BlockCache::default();
        let block = Arc::new(Block {
            key: b"k".to_vec(),
            value: None,
            index: YoloIndex::default(),
        });
        c.insert(0, 5, block.clone());
        assert!(c.get(0, 5).is_some());
        assert!(c.get(1, 5).is_none(), "a block of fork 0 read as fork 1's");
        c.insert(1, 6, block.clone());
        assert!(c.get(1, 5).is_none() && c.get(0, 5).is_none());
        assert!(c.get(1, 6).is_some());
        // A late read of the old fork does not bring it back.
        c.insert(0, 7, block);
        assert!(c.get(0, 7).is_none() && c.get(1, 6).is_some());
    }
}
