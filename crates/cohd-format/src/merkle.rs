//! Hypercore's Merkle tree, the pure part: flat-tree index arithmetic and the BLAKE2b hashes
//! of leaves, parents and the tree (its roots), with Hypercore's type prefixes, plus the
//! 80-byte message a compat core signs.
//!
//! Flat-tree numbering puts leaf `i` (block `i`) at index `2i`; a parent sits between its two
//! children; the depth of index `n` is the number of trailing one bits.

/// BLAKE2b-256 (the SIMD implementation: block hashes are the cost of every verified read).
fn hasher() -> blake2b_simd::State {
    blake2b_simd::Params::new().hash_length(32).to_state()
}

fn finish(h: &blake2b_simd::State) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_bytes());
    out
}

/// A tree node as stored: its flat index, the byte size it covers, its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Flat-tree index.
    pub index: u64,
    /// Bytes of data under the node.
    pub size: u64,
    /// BLAKE2b-256 of the node.
    pub hash: [u8; 32],
}

const LEAF_TYPE: u8 = 0;
const PARENT_TYPE: u8 = 1;
const ROOT_TYPE: u8 = 2;

/// `crypto.namespace('hypercore', 1)[0]` in JavaScript: the prefix of a signed tree.
pub const TREE_NAMESPACE: [u8; 32] = [
    0x9F, 0xAC, 0x70, 0xB5, 0x0C, 0xA1, 0x4E, 0xFC, 0x4E, 0x91, 0xC8, 0x33, 0xB2, 0x04, 0xE7, 0x5B,
    0x8B, 0x5A, 0xAD, 0x8B, 0x58, 0x81, 0xBF, 0xC0, 0xAD, 0xB5, 0xEF, 0x38, 0xA3, 0x27, 0x5B, 0x9C,
];

/// Hash of a block (a leaf).
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = hasher();
    h.update(&[LEAF_TYPE]);
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
    finish(&h)
}

/// [`leaf_hash`] of each of `blocks`, several at once: BLAKE2b is serial within one input, so
/// the CPU's SIMD lanes hash different blocks side by side (appends of many blocks).
pub fn leaf_hashes<A: AsRef<[u8]>>(blocks: &[A]) -> Vec<[u8; 32]> {
    let mut states: Vec<blake2b_simd::State> = blocks
        .iter()
        .map(|b| {
            let mut h = hasher();
            h.update(&[LEAF_TYPE]);
            h.update(&(b.as_ref().len() as u64).to_le_bytes());
            h
        })
        .collect();
    blake2b_simd::many::update_many(states.iter_mut().zip(blocks.iter().map(AsRef::as_ref)));
    states.iter().map(finish).collect()
}

/// Hash of the parent of `a` and `b` (in any order).
pub fn parent_hash(a: &Node, b: &Node) -> [u8; 32] {
    let (l, r) = if a.index <= b.index { (a, b) } else { (b, a) };
    let mut h = hasher();
    h.update(&[PARENT_TYPE]);
    h.update(&l.size.wrapping_add(r.size).to_le_bytes());
    h.update(&l.hash);
    h.update(&r.hash);
    finish(&h)
}

/// The parent node of `a` and `b` (siblings).
pub fn parent_node(a: &Node, b: &Node) -> Node {
    Node {
        index: parent(a.index),
        size: a.size.wrapping_add(b.size),
        hash: parent_hash(a, b),
    }
}

/// Hash of a tree given its roots, left to right (`crypto.tree`).
pub fn tree_hash(roots: &[Node]) -> [u8; 32] {
    let mut h = hasher();
    h.update(&[ROOT_TYPE]);
    for r in roots {
        h.update(&r.hash);
        h.update(&r.index.to_le_bytes());
        h.update(&r.size.to_le_bytes());
    }
    finish(&h)
}

/// What a compat core's owner signs for a tree of `length` blocks on `fork`.
pub fn signable(tree_hash: &[u8; 32], length: u64, fork: u64) -> [u8; 80] {
    let mut out = [0u8; 80];
    out[..32].copy_from_slice(&TREE_NAMESPACE);
    out[32..64].copy_from_slice(tree_hash);
    out[64..72].copy_from_slice(&length.to_le_bytes());
    out[72..].copy_from_slice(&fork.to_le_bytes());
    out
}

/// Bytes a node takes at least in compact-encoding (one-byte index and size, the hash).
const NODE_MIN_SIZE: usize = 34;

/// Reads a count-prefixed array of nodes (`uint index, uint size, hash`), as the oplog, the
/// wire and multisignatures hold them. A count the input cannot hold is refused before any
/// allocation.
pub fn read_nodes(
    r: &mut crate::compact::Reader<'_>,
) -> Result<Vec<Node>, crate::compact::Truncated> {
    let n = r.count(NODE_MIN_SIZE)?;
    (0..n)
        .map(|_| {
            Ok(Node {
                index: r.uint()?,
                size: r.uint()?,
                hash: r.array()?,
            })
        })
        .collect()
}

/// Appends a count-prefixed array of nodes (the inverse of [`read_nodes`]).
pub fn write_nodes(out: &mut Vec<u8>, nodes: &[Node]) {
    crate::compact::write_uint(out, nodes.len() as u64);
    for n in nodes {
        crate::compact::write_uint(out, n.index);
        crate::compact::write_uint(out, n.size);
        out.extend_from_slice(&n.hash);
    }
}

/// Depth of flat index `i` (0 for leaves).
pub fn depth(i: u64) -> u32 {
    i.trailing_ones()
}

/// Offset of `i` within its depth (the `n`th node of that depth).
pub fn offset(i: u64) -> u64 {
    i.checked_shr(depth(i) + 1).unwrap_or(0)
}

/// The flat index of the `offset`th node at `depth`.
pub fn index(depth: u32, offset: u64) -> u64 {
    // (offset * 2 + 1) << depth, minus one: saturating, for hostile depths.
    offset
        .saturating_mul(2)
        .saturating_add(1)
        .checked_shl(depth)
        .map_or(u64::MAX, |v| v.saturating_sub(1))
}

/// Parent of `i`.
pub fn parent(i: u64) -> u64 {
    let d = depth(i);
    index(d + 1, offset(i) >> 1)
}

/// The other child of `i`'s parent.
pub fn sibling(i: u64) -> u64 {
    let d = depth(i);
    index(d, offset(i) ^ 1)
}

/// The roots of a tree of `length` blocks, left to right: full subtrees, largest first.
pub fn full_roots(length: u64) -> Vec<u64> {
    let mut roots = Vec::new();
    let mut left = 0u64; // leaves covered so far
    let mut rest = length;
    while rest > 0 {
        // The largest power of two not above `rest`.
        let span = 1u64 << (63 - rest.leading_zeros());
        let d = span.trailing_zeros();
        roots.push(index(d, left >> d));
        left += span;
        rest -= span;
    }
    roots
}

/// Leaves (blocks) under flat index `i`: first and one past the last.
pub fn span(i: u64) -> (u64, u64) {
    let d = depth(i);
    let first = offset(i).checked_shl(d).unwrap_or(u64::MAX);
    (
        first,
        first.saturating_add(1u64.checked_shl(d).unwrap_or(u64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hashes_are_each_leaf_hash() {
        let sizes = [
            0usize, 1, 118, 119, 120, 127, 128, 129, 1000, 65536, 65535, 3,
        ];
        let blocks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as u8).collect())
            .collect();
        for k in 0..=blocks.len() {
            let some = &blocks[..k];
            let many = leaf_hashes(some);
            let one: Vec<[u8; 32]> = some.iter().map(|b| leaf_hash(b)).collect();
            assert_eq!(many, one, "{k} blocks");
        }
    }

    #[test]
    fn arithmetic() {
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(0), 2);
        assert_eq!(sibling(1), 5);
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(1), vec![0]);
        assert_eq!(full_roots(3), vec![1, 4]);
        assert_eq!(full_roots(5), vec![3, 8]);
        assert_eq!(full_roots(7), vec![3, 9, 12]);
        assert_eq!(span(3), (0, 4));
        assert_eq!(span(9), (4, 6));
        assert_eq!(depth(u64::MAX), 64);
        let _ = parent(u64::MAX);
        let _ = sibling(u64::MAX);
    }

    #[test]
    fn roots_cover_the_tree() {
        for len in 0..300u64 {
            let mut at = 0;
            for r in full_roots(len) {
                let (a, b) = span(r);
                assert_eq!(a, at);
                at = b;
            }
            assert_eq!(at, len);
        }
    }
}
