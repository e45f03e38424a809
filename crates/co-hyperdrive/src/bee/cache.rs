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

/// A bounded map of seq -> decoded block. Blocks are immutable once written, so entries never go
/// stale; on overflow the map is simply emptied (cheap, and the hot upper levels refill at once).
#[derive(Debug, Default)]
pub(crate) struct BlockCache {
    map: Mutex<HashMap<u64, Arc<Block>>>,
}

const CAPACITY: usize = 1 << 16;

impl BlockCache {
    pub(crate) fn get(&self, seq: u64) -> Option<Arc<Block>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .cloned()
    }

    pub(crate) fn insert(&self, seq: u64, block: Arc<Block>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert(seq, block);
    }
}
