//! Checking blocks read from a core's files against the signed tree.
//!
//! A block read from disk is hashed and combined with its siblings from the tree file up to a
//! node already known good: a root checked against the owner's signature when the core was
//! opened (`recover::verify_tree`), or a node an earlier read proved. A flipped bit in the
//! data or tree file therefore never reaches a reader; the block counts as missing and is
//! fetched again from peers. Proven nodes are cached, so a sequential read hashes about one
//! extra node per block.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Mutex;

use cohd_format::merkle::{self, Node};

use super::recover::read_node;

/// Proven nodes kept at most (32 bytes each); the cache starts over when full.
const CACHE: usize = 1 << 16;

/// The signed tree of a core as it was opened.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// Blocks the signed roots cover.
    length: u64,
    roots: HashMap<u64, [u8; 32]>,
    proven: Mutex<HashMap<u64, [u8; 32]>>,
}

impl Verifier {
    /// A verifier for a tree of `length` blocks with these (signature-checked) roots.
    pub(crate) fn new(length: u64, roots: &[Node]) -> Self {
        Self {
            length,
            roots: roots.iter().map(|r| (r.index, r.hash)).collect(),
            proven: Mutex::default(),
        }
    }

    fn known(&self, n: &Node) -> Option<bool> {
        if let Some(h) = self.roots.get(&n.index) {
            return Some(*h == n.hash);
        }
        let proven = self.proven.lock().unwrap_or_else(|e| e.into_inner());
        proven.get(&n.index).map(|h| *h == n.hash)
    }

    /// Whether `block` is block `index` of the signed tree. Blocks past the signed length
    /// (appended or received since the core was opened) are checked against their leaf only.
    pub(crate) fn check(&self, tree: &File, index: u64, block: &[u8]) -> Result<bool, String> {
        let leaf = index
            .checked_mul(2)
            .ok_or_else(|| "block index overflows".to_string())?;
        let mut node = Node {
            index: leaf,
            size: block.len() as u64,
            hash: merkle::leaf_hash(block),
        };
        if index >= self.length {
            let stored = read_node(tree, leaf).map_err(|e| e.to_string())?;
            return Ok(stored.is_some_and(|s| s.hash == node.hash));
        }
        let mut path = Vec::new();
        // A tree of 2^64 blocks is 64 levels deep: the loop is bounded.
        for _ in 0..=64 {
            match self.known(&node) {
                Some(ok) => {
                    if ok {
                        let mut proven = self.proven.lock().unwrap_or_else(|e| e.into_inner());
                        if proven.len() + path.len() > CACHE {
                            proven.clear();
                        }
                        proven.extend(path.iter().map(|n: &Node| (n.index, n.hash)));
                    }
                    return Ok(ok);
                }
                None => {
                    let Some(sibling) =
                        read_node(tree, merkle::sibling(node.index)).map_err(|e| e.to_string())?
                    else {
                        return Ok(false);
                    };
                    let parent = merkle::parent_node(&node, &sibling);
                    path.push(node);
                    path.push(sibling);
                    node = parent;
                }
            }
        }
        Ok(false)
    }
}
