//! Hypercore Merkle proofs, pure: what a peer sends to prove blocks and tree upgrades, made
//! from stored tree nodes ([`create`]) and checked against a trusted tree ([`verify`]),
//! node for node as JavaScript Hypercore does (`lib/merkle-tree.js`), seek proofs included (the
//! nodes that locate the block holding a byte offset).
//!
//! A block proof carries the sibling hashes from the block's leaf up to a node the reader
//! already trusts (the reader says how many it lacks: `nodes`), or up to a root of the upgraded
//! tree. An upgrade proof carries the roots of the tree at `start + length` that the reader
//! cannot compute, and `additional_nodes` take it on to the sender's full length.

use std::collections::HashMap;

use crate::merkle::{self, Node};

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The request asks for something the tree cannot prove (beyond its length, no upgrade
    /// range, too many nodes).
    #[error("invalid proof request: {0}")]
    BadRequest(&'static str),
    /// A node the proof needs is not stored.
    #[error("tree node {0} is not stored")]
    MissingNode(u64),
    /// The proof does not have the shape its request implies.
    #[error("malformed proof: expected node {expected}, got {got:?}")]
    Unexpected {
        /// The node the verification needed next.
        expected: u64,
        /// What the proof held there.
        got: Option<u64>,
    },
    /// Numbers too large to be a tree.
    #[error("proof out of range")]
    OutOfRange,
}

/// What a peer asks to be proven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// A block, with how many nodes above its leaf the requester lacks.
    pub block: Option<Indexed>,
    /// A tree node's hash (`index` is a flat-tree index), with the nodes it lacks.
    pub hash: Option<Indexed>,
    /// An upgrade from `start` (the requester's length) by `length` blocks.
    pub upgrade: Option<UpgradeRange>,
    /// The block holding byte `bytes` of the core (with `padding` bytes per block not
    /// counted, as encrypted cores pad their blocks).
    pub seek: Option<Seek>,
}

/// A byte offset to locate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seek {
    /// The byte offset.
    pub bytes: u64,
    /// Bytes per block not counted in `bytes`.
    pub padding: u64,
}

/// A block or node index and how many nodes above it are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    /// Block index (for a block) or flat index (for a hash).
    pub index: u64,
    /// Nodes above it the requester lacks.
    pub nodes: u64,
}

/// A range of an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRange {
    /// The requester's length.
    pub start: u64,
    /// Blocks it wants to learn about.
    pub length: u64,
}

/// The nodes of a proof (block values and signatures travel beside them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProofNodes {
    /// For the block or hash: the node path (for a hash, starting with the node itself).
    pub nodes: Option<Vec<Node>>,
    /// Roots and connecting nodes of the upgraded tree.
    pub upgrade: Option<Vec<Node>>,
    /// Nodes that take the upgrade on to the sender's length.
    pub additional: Vec<Node>,
    /// The seek path: the node located and its siblings up to where the other paths join.
    pub seek: Option<Vec<Node>>,
}

/// A source of stored tree nodes.
pub trait Nodes {
    /// The node at flat index `index`, if stored.
    fn node(&self, index: u64) -> Option<Node>;
}

impl Nodes for HashMap<u64, Node> {
    fn node(&self, index: u64) -> Option<Node> {
        self.get(&index).copied()
    }
}

/// Largest block count we reason about: keeps every flat index and span within u64.
const MAX_LENGTH: u64 = 1 << 61;

/// A flat-tree cursor (the JavaScript `flat-tree` iterator), for trees under [`MAX_LENGTH`].
#[derive(Debug, Clone, Copy)]
struct Ite {
    index: u64,
    offset: u64,
    factor: u64,
}

impl Ite {
    fn new(index: u64) -> Self {
        let mut i = Self {
            index: 0,
            offset: 0,
            factor: 2,
        };
        i.seek(index);
        i
    }

    fn seek(&mut self, index: u64) {
        self.index = index;
        if index & 1 == 1 {
            self.offset = merkle::offset(index);
            self.factor = 2u64 << merkle::depth(index).min(62);
        } else {
            self.offset = index / 2;
            self.factor = 2;
        }
    }

    fn is_left(&self) -> bool {
        self.offset & 1 == 0
    }

    fn contains(&self, index: u64) -> bool {
        let half = self.factor / 2;
        if index > self.index {
            index < self.index.saturating_add(half)
        } else if index < self.index {
            index.saturating_add(half) > self.index
        } else {
            true
        }
    }

    fn prev(&mut self) -> u64 {
        if self.offset == 0 {
            return self.index;
        }
        self.offset -= 1;
        self.index -= self.factor;
        self.index
    }

    fn next(&mut self) -> u64 {
        self.offset += 1;
        self.index += self.factor;
        self.index
    }

    fn sibling(&mut self) -> u64 {
        if self.is_left() {
            self.next()
        } else {
            self.prev()
        }
    }

    fn parent(&mut self) -> u64 {
        if self.offset & 1 == 1 {
            self.index -= self.factor / 2;
            self.offset = (self.offset - 1) / 2;
        } else {
            self.index += self.factor / 2;
            self.offset /= 2;
        }
        self.factor *= 2;
        self.index
    }

    fn left_child(&mut self) -> u64 {
        if self.factor == 2 {
            return self.index;
        }
        self.factor /= 2;
        self.index -= self.factor / 2;
        self.offset *= 2;
        self.index
    }

    fn next_tree(&mut self) -> u64 {
        self.index = self.index + self.factor / 2 + 1;
        self.offset = self.index / 2;
        self.factor = 2;
        self.index
    }

    /// Moves to the largest full root left of flat index `to`; false past it.
    fn full_root(&mut self, to: u64) -> bool {
        if to <= self.index || self.index & 1 == 1 {
            return false;
        }
        while to > self.index + self.factor + self.factor / 2 {
            self.index += self.factor / 2;
            self.factor *= 2;
            self.offset /= 2;
        }
        true
    }
}

/// The node a block or hash request is about.
struct Target {
    /// Whether the requester will get the block value (so the leaf itself is not sent).
    value: bool,
    index: u64,
    nodes: u64,
    /// The last block it covers.
    last_block: u64,
}

fn target(req: &Request) -> Option<Target> {
    if let Some(b) = req.block {
        return Some(Target {
            value: true,
            index: b.index.saturating_mul(2),
            nodes: b.nodes,
            last_block: b.index,
        });
    }
    req.hash.map(|h| Target {
        value: false,
        index: h.index,
        nodes: h.nodes,
        last_block: merkle::span(h.index).1.saturating_sub(1),
    })
}

fn get(tree: &impl Nodes, index: u64) -> Result<Node, ProofError> {
    tree.node(index).ok_or(ProofError::MissingNode(index))
}

/// Makes the proof for `req` from a tree of `length` blocks.
pub fn create(tree: &impl Nodes, length: u64, req: &Request) -> Result<ProofNodes, ProofError> {
    if length >= MAX_LENGTH {
        return Err(ProofError::OutOfRange);
    }
    let head = 2 * length;
    let mut p = ProofNodes::default();
    if head == 0 {
        return Ok(p);
    }
    let (from, to) = match req.upgrade {
        Some(u) => {
            let from = u.start.checked_mul(2).ok_or(ProofError::OutOfRange)?;
            let to = u
                .length
                .checked_mul(2)
                .and_then(|l| l.checked_add(from))
                .ok_or(ProofError::OutOfRange)?;
            (from, to)
        }
        None => (0, head),
    };
    if from >= to || to > head {
        return Err(ProofError::BadRequest("upgrade outside the tree"));
    }
    let node = target(req);
    if let Some(n) = &node {
        if n.index >= head || n.last_block >= length {
            return Err(ProofError::BadRequest("block outside the tree"));
        }
    }
    let seek = req.seek;
    if let (Some(_), Some(_), Some(n)) = (seek, req.upgrade, &node) {
        if n.index >= from {
            return Err(ProofError::BadRequest(
                "a seek and a block or hash past the requester's length",
            ));
        }
    }
    let mut sub_tree = head;
    match (&node, req.upgrade) {
        (Some(n), u) if u.is_none_or(|u| n.last_block < u.start) => {
            sub_tree = nodes_to_root(n.index, n.nodes, to)?;
            let seek_root = match seek {
                Some(s) => seek_untrusted(tree, sub_tree, s)?,
                None => head,
            };
            block_and_seek_proof(tree, Some(n), seek.is_some(), seek_root, sub_tree, &mut p)?;
        }
        (n, Some(_)) if n.is_some() || seek.is_some() => {
            sub_tree = match (seek, n) {
                (Some(s), _) => seek_from_head(tree, to, s)?,
                (None, Some(n)) => n.index,
                (None, None) => unreachable!("guarded above"),
            };
        }
        _ => {}
    }
    if req.upgrade.is_some() {
        upgrade_proof(
            tree,
            node.as_ref(),
            seek.is_some(),
            from,
            to,
            sub_tree,
            &mut p,
        )?;
        if head > to {
            p.additional = additional_proof(tree, to, head)?;
        }
    }
    Ok(p)
}

/// The node `nodes` levels above `index`, refusing to reach a node that spans `head`.
fn nodes_to_root(index: u64, nodes: u64, head: u64) -> Result<u64, ProofError> {
    let mut ite = Ite::new(index);
    for _ in 0..nodes.min(64) {
        ite.parent();
        if ite.contains(head) {
            return Err(ProofError::BadRequest("more nodes than the tree has"));
        }
    }
    if nodes > 64 {
        return Err(ProofError::BadRequest("more nodes than the tree has"));
    }
    Ok(ite.index)
}

/// A node's size less its blocks' padding.
fn unpadded(n: &Node, padding: u64) -> u64 {
    let leaves = 1u64.checked_shl(merkle::depth(n.index)).unwrap_or(u64::MAX);
    n.size.saturating_sub(padding.saturating_mul(leaves))
}

/// The node holding byte `seek.bytes` of the tree of `head / 2` blocks (JavaScript
/// `seekFromHead`): through its full roots, then down the one that holds it.
fn seek_from_head(tree: &impl Nodes, head: u64, seek: Seek) -> Result<u64, ProofError> {
    let mut bytes = seek.bytes;
    for root in merkle::full_roots(head / 2) {
        let size = unpadded(&get(tree, root)?, seek.padding);
        if bytes == size {
            return Ok(root);
        }
        if bytes > size {
            bytes -= size;
            continue;
        }
        return seek_trusted(tree, root, bytes, seek.padding);
    }
    Ok(head)
}

/// Down from `root`, which holds byte `bytes` of its own span, to the node that starts there
/// or the leaf that holds it (JavaScript `seekTrustedTree`).
fn seek_trusted(
    tree: &impl Nodes,
    root: u64,
    mut bytes: u64,
    padding: u64,
) -> Result<u64, ProofError> {
    if bytes == 0 {
        return Ok(root);
    }
    let mut ite = Ite::new(root);
    while ite.index & 1 == 1 {
        match tree.node(ite.left_child()) {
            Some(l) => {
                let size = unpadded(&l, padding);
                if size == bytes {
                    return Ok(ite.index);
                }
                if size > bytes {
                    continue;
                }
                bytes -= size;
                ite.sibling();
            }
            None => {
                ite.parent();
                return Ok(ite.index);
            }
        }
    }
    Ok(ite.index)
}

/// [`seek_trusted`] for a `root` not known to hold the offset: checked against its span first
/// (JavaScript `seekUntrustedTree`).
fn seek_untrusted(tree: &impl Nodes, root: u64, seek: Seek) -> Result<u64, ProofError> {
    let (first, _) = merkle::span(root);
    let mut offset = 0u64;
    for r in merkle::full_roots(first) {
        offset = offset
            .checked_add(get(tree, r)?.size)
            .ok_or(ProofError::OutOfRange)?;
    }
    offset = offset.saturating_sub(seek.padding.saturating_mul(first));
    if offset > seek.bytes {
        return Err(ProofError::BadRequest(
            "the seek lies before the tree it names",
        ));
    }
    if offset == seek.bytes {
        return Ok(root);
    }
    let bytes = seek.bytes - offset;
    if unpadded(&get(tree, root)?, seek.padding) <= bytes {
        return Err(ProofError::BadRequest(
            "the seek lies past the tree it names",
        ));
    }
    seek_trusted(tree, root, bytes, seek.padding)
}

/// The seek path from `seek_root` up to `root`.
fn seek_proof(
    tree: &impl Nodes,
    seek_root: u64,
    root: u64,
    p: &mut ProofNodes,
) -> Result<(), ProofError> {
    let mut ite = Ite::new(seek_root);
    let mut out = vec![get(tree, ite.index)?];
    while ite.index != root {
        if out.len() > 64 {
            return Err(ProofError::BadRequest("no path to the root"));
        }
        ite.sibling();
        out.push(get(tree, ite.index)?);
        ite.parent();
    }
    p.seek = Some(out);
    Ok(())
}

/// The block or hash path up to `root`; with a seek, the branch holding `seek_root` is the
/// seek path instead of one node (JavaScript `blockAndSeekProof`).
fn block_and_seek_proof(
    tree: &impl Nodes,
    node: Option<&Target>,
    seek: bool,
    seek_root: u64,
    root: u64,
    p: &mut ProofNodes,
) -> Result<(), ProofError> {
    let Some(n) = node else {
        return seek_proof(tree, seek_root, root, p);
    };
    let mut ite = Ite::new(n.index);
    let mut out = Vec::new();
    if !n.value {
        out.push(get(tree, ite.index)?);
    }
    let mut steps = 0;
    while ite.index != root {
        steps += 1;
        if steps > 64 {
            return Err(ProofError::BadRequest("no path to the root"));
        }
        ite.sibling();
        if seek && ite.contains(seek_root) && ite.index != seek_root {
            seek_proof(tree, seek_root, ite.index, p)?;
        } else {
            out.push(get(tree, ite.index)?);
        }
        ite.parent();
    }
    p.nodes = Some(out);
    Ok(())
}

fn upgrade_proof(
    tree: &impl Nodes,
    node: Option<&Target>,
    seek: bool,
    from: u64,
    to: u64,
    sub_tree: u64,
    p: &mut ProofNodes,
) -> Result<(), ProofError> {
    let mut up: Option<Vec<Node>> = (from == 0).then(Vec::new);
    let mut ite = Ite::new(0);
    while ite.full_root(to) {
        'root: {
            // Roots the requester has already.
            if ite.index + ite.factor / 2 < from {
                break 'root;
            }
            // Connect the requester's tree to this root.
            if up.is_none() && ite.contains(from - 2) {
                let mut nodes = Vec::new();
                let root = ite.index;
                let target = from - 2;
                ite.seek(target);
                while ite.index != root {
                    ite.sibling();
                    if ite.index > target {
                        if (node.is_some() || seek)
                            && p.nodes.is_none()
                            && p.seek.is_none()
                            && ite.contains(sub_tree)
                        {
                            block_and_seek_proof(tree, node, seek, sub_tree, ite.index, p)?;
                        } else {
                            nodes.push(get(tree, ite.index)?);
                        }
                    }
                    ite.parent();
                }
                up = Some(nodes);
                break 'root;
            }
            let nodes = up.get_or_insert_with(Vec::new);
            // The block's (or seek's) path ends in this root: it stands in for the root.
            if (node.is_some() || seek)
                && p.nodes.is_none()
                && p.seek.is_none()
                && ite.contains(sub_tree)
            {
                block_and_seek_proof(tree, node, seek, sub_tree, ite.index, p)?;
                break 'root;
            }
            nodes.push(get(tree, ite.index)?);
        }
        ite.next_tree();
    }
    p.upgrade = Some(up.unwrap_or_default());
    Ok(())
}

/// The nodes taking a tree of `from / 2` blocks on to `to / 2`: an upgrade proof with no
/// block in it.
fn additional_proof(tree: &impl Nodes, from: u64, to: u64) -> Result<Vec<Node>, ProofError> {
    let mut p = ProofNodes::default();
    upgrade_proof(tree, None, false, from, to, to, &mut p)?;
    Ok(p.upgrade.unwrap_or_default())
}

/// A proof received from a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received<'a> {
    /// A block: its index, value and the nodes above its leaf.
    pub block: Option<(u64, &'a [u8], Vec<Node>)>,
    /// A node: its flat index and its path (starting with the node itself).
    pub hash: Option<(u64, Vec<Node>)>,
    /// A seek path (starting with the node located).
    pub seek: Option<Vec<Node>>,
    /// An upgrade.
    pub upgrade: Option<ReceivedUpgrade>,
}

/// The upgrade part of a received proof.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedUpgrade {
    /// The requester's length it starts from.
    pub start: u64,
    /// Blocks it adds.
    pub length: u64,
    /// Roots and connecting nodes.
    pub nodes: Vec<Node>,
    /// Nodes beyond `start + length`.
    pub additional: Vec<Node>,
}

/// What a verified proof establishes, given the trusted tree it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Every node the proof proves (to store once the whole proof is accepted).
    pub nodes: Vec<Node>,
    /// With an upgrade: the new roots and length (their signature is for the caller to check
    /// against [`merkle::tree_hash`] of these roots).
    pub upgraded: Option<(Vec<Node>, u64)>,
    /// A node the proof ends in that only the caller's stored tree can vouch for: it must equal
    /// the stored node at its index.
    pub check: Option<Node>,
}

/// Queue of proof nodes consumed in the order verification needs them.
struct Queue<'a> {
    nodes: &'a [Node],
    i: usize,
    extra: Option<Node>,
}

impl Queue<'_> {
    fn len(&self) -> usize {
        self.nodes.len() - self.i + usize::from(self.extra.is_some())
    }

    fn shift(&mut self, index: u64) -> Result<Node, ProofError> {
        if self.extra.is_some_and(|e| e.index == index) {
            return Ok(self.extra.take().expect("checked"));
        }
        let got = self.nodes.get(self.i);
        match got {
            Some(n) if n.index == index => {
                self.i += 1;
                Ok(*n)
            }
            _ => Err(ProofError::Unexpected {
                expected: index,
                got: got.map(|n| n.index),
            }),
        }
    }
}

/// The block or hash path, hashed up to where it ends; `leaf`: the block's leaf hash if the
/// caller has it.
fn verify_path(
    proof: &Received<'_>,
    leaf: Option<[u8; 32]>,
    out: &mut Vec<Node>,
) -> Result<Option<Node>, ProofError> {
    // A seek path first: its top stands in for a node of the block's path.
    let mut seek_root = None;
    if let Some(seek) = proof.seek.as_deref().filter(|s| !s.is_empty()) {
        if seek.len() > 62 || seek[0].index >= 2 * MAX_LENGTH {
            return Err(ProofError::OutOfRange);
        }
        let mut ite = Ite::new(seek[0].index);
        let mut q = Queue {
            nodes: seek,
            i: 0,
            extra: None,
        };
        let mut root = q.shift(ite.index)?;
        out.push(root);
        while q.len() > 0 {
            let sibling = q.shift(ite.sibling())?;
            root = merkle::parent_node(&root, &sibling);
            ite.parent();
            out.push(sibling);
            out.push(root);
        }
        seek_root = Some(root);
    }
    let (index, leaf, nodes) = match (&proof.block, &proof.hash) {
        (Some((i, value, nodes)), _) => {
            let index = i
                .checked_mul(2)
                .filter(|&x| x < 2 * MAX_LENGTH)
                .ok_or(ProofError::OutOfRange)?;
            let leaf = Node {
                index,
                size: value.len() as u64,
                hash: leaf.unwrap_or_else(|| merkle::leaf_hash(value)),
            };
            (index, Some(leaf), nodes)
        }
        (None, Some((i, nodes))) => (*i, None, nodes),
        (None, None) => return Ok(seek_root),
    };
    // A tree under MAX_LENGTH blocks is at most 61 levels deep.
    if index >= 2 * MAX_LENGTH || nodes.len() > 61 {
        return Err(ProofError::OutOfRange);
    }
    let mut ite = Ite::new(index);
    let mut q = Queue {
        nodes,
        i: 0,
        extra: seek_root,
    };
    let mut root = match leaf {
        Some(l) => l,
        None => q.shift(ite.index)?,
    };
    out.push(root);
    while q.len() > 0 {
        let sibling = q.shift(ite.sibling())?;
        let parent = merkle::parent_node(&root, &sibling);
        ite.parent();
        root = parent;
        out.push(sibling);
        out.push(root);
    }
    Ok(Some(root))
}

/// The tree an upgrade builds on: the verifier's roots and length.
struct Batch {
    roots: Vec<Node>,
    length: u64,
    nodes: Vec<Node>,
}

impl Batch {
    fn append_root(&mut self, node: Node, ite: &mut Ite) {
        self.length = self.length.saturating_add(ite.factor / 2);
        self.roots.push(node);
        self.nodes.push(node);
        while self.roots.len() > 1 {
            let a = self.roots[self.roots.len() - 1];
            let b = self.roots[self.roots.len() - 2];
            if ite.sibling() != b.index {
                // Back, so that the cursor points at the last root.
                ite.sibling();
                break;
            }
            ite.parent();
            let p = merkle::parent_node(&a, &b);
            self.nodes.push(p);
            self.roots.truncate(self.roots.len() - 2);
            self.roots.push(p);
        }
    }
}

/// Checks a received proof against a trusted tree of `length` blocks with these `roots`.
pub fn verify(roots: &[Node], length: u64, proof: &Received<'_>) -> Result<Verified, ProofError> {
    verify_hashed(roots, length, proof, None)
}

/// [`verify`], given the block's leaf hash: [`merkle::leaf_hashes`] hashes the blocks of
/// several proofs at once (a receiver's bulk cost), and each proof is then checked alone.
/// `leaf` must be [`merkle::leaf_hash`] of the proof's block (`None`: hashed here).
pub fn verify_hashed(
    roots: &[Node],
    length: u64,
    proof: &Received<'_>,
    leaf: Option<[u8; 32]>,
) -> Result<Verified, ProofError> {
    debug_assert!(
        leaf.is_none() || proof.block.as_ref().map(|b| merkle::leaf_hash(b.1)) == leaf,
        "a leaf hash that is not the block's"
    );
    let mut nodes = Vec::new();
    let mut unverified = verify_path(proof, leaf, &mut nodes)?;
    let mut upgraded = None;
    if let Some(u) = &proof.upgrade {
        let end = u
            .start
            .checked_add(u.length)
            .filter(|&e| e < MAX_LENGTH && u.length > 0)
            .ok_or(ProofError::OutOfRange)?;
        if u.start != length {
            return Err(ProofError::BadRequest(
                "upgrade does not start at our length",
            ));
        }
        if u.nodes.len() + u.additional.len() > 256 {
            return Err(ProofError::OutOfRange);
        }
        let mut batch = Batch {
            roots: roots.to_vec(),
            length,
            nodes,
        };
        let mut q = Queue {
            nodes: &u.nodes,
            i: 0,
            extra: unverified,
        };
        let to = 2 * end;
        let mut grow = !batch.roots.is_empty();
        let mut i = 0;
        let mut ite = Ite::new(0);
        while ite.full_root(to) {
            'root: {
                if i < batch.roots.len() && batch.roots[i].index == ite.index {
                    i += 1;
                    break 'root;
                }
                if grow {
                    grow = false;
                    let root = ite.index;
                    if i < batch.roots.len() {
                        let last = batch.roots[batch.roots.len() - 1].index;
                        ite.seek(last);
                        let mut steps = 0;
                        while ite.index != root {
                            steps += 1;
                            if steps > 128 {
                                return Err(ProofError::OutOfRange);
                            }
                            let n = q.shift(ite.sibling())?;
                            batch.append_root(n, &mut ite);
                        }
                        break 'root;
                    }
                }
                let n = q.shift(ite.index)?;
                batch.append_root(n, &mut ite);
            }
            ite.next_tree();
        }
        let extra = &u.additional;
        let last = batch
            .roots
            .last()
            .ok_or(ProofError::BadRequest("an upgrade with no roots"))?
            .index;
        ite.seek(last);
        let mut k = 0;
        while k < extra.len() && extra[k].index == ite.sibling() {
            batch.append_root(extra[k], &mut ite);
            k += 1;
        }
        while k < extra.len() {
            let n = extra[k];
            k += 1;
            while n.index != ite.index {
                if ite.factor == 2 {
                    return Err(ProofError::Unexpected {
                        expected: ite.index,
                        got: Some(n.index),
                    });
                }
                ite.left_child();
            }
            batch.append_root(n, &mut ite);
            ite.sibling();
        }
        if q.extra.is_none() {
            unverified = None;
        }
        nodes = batch.nodes;
        upgraded = Some((batch.roots, batch.length));
    }
    Ok(Verified {
        nodes,
        upgraded,
        check: unverified,
    })
}

/// How many nodes from block `index`'s leaf upward a reader of a tree of `length` blocks
/// lacks, counting until the first node it holds (`has`) or the root that covers the block:
/// the `nodes` of its block request (JavaScript `missingNodes(2 * index)`). 0 when the block
/// lies beyond the tree.
pub fn missing_nodes(index: u64, length: u64, has: impl Fn(u64) -> bool) -> u64 {
    if index >= length || length >= MAX_LENGTH {
        return 0;
    }
    let head = 2 * length;
    let mut ite = Ite::new(2 * index);
    let mut count = 0;
    while !ite.contains(head) && !has(ite.index) {
        count += 1;
        ite.parent();
    }
    count
}

/// The nodes of a tree of these blocks (a plain model, for tests and tools).
pub fn tree_of<B: AsRef<[u8]>>(blocks: &[B]) -> HashMap<u64, Node> {
    let mut all = HashMap::new();
    let mut roots: Vec<Node> = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let leaf = Node {
            index: 2 * i as u64,
            size: b.as_ref().len() as u64,
            hash: merkle::leaf_hash(b.as_ref()),
        };
        all.insert(leaf.index, leaf);
        roots.push(leaf);
        while roots.len() > 1 {
            let a = roots[roots.len() - 2];
            let b = roots[roots.len() - 1];
            if merkle::depth(a.index) != merkle::depth(b.index) {
                break;
            }
            let p = merkle::parent_node(&a, &b);
            all.insert(p.index, p);
            roots.truncate(roots.len() - 2);
            roots.push(p);
        }
    }
    all
}

/// The roots of a tree of `length` blocks from its nodes.
pub fn roots_of(tree: &impl Nodes, length: u64) -> Result<Vec<Node>, ProofError> {
    merkle::full_roots(length)
        .into_iter()
        .map(|i| get(tree, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blocks(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; i % 7 + 1]).collect()
    }

    /// How many nodes above the leaf of `index` a reader at `have` blocks lacks (all of them
    /// below the root that covers it at `len`).
    fn missing(index: u64, have: u64, len: u64) -> u64 {
        let mut ite = Ite::new(2 * index);
        let mut n = 0;
        let head = 2 * len;
        let _ = have;
        loop {
            let top = merkle::full_roots(len).contains(&ite.index);
            if top {
                return n;
            }
            ite.parent();
            if ite.contains(head) {
                return n;
            }
            n += 1;
        }
    }

    #[test]
    fn block_and_upgrade_round_trip() {
        let b = blocks(13);
        let tree = tree_of(&b);
        for have in 0..13u64 {
            for want in (have + 1)..=13 {
                let trusted = roots_of(&tree, have).unwrap();
                let i = want - 1;
                let req = Request {
                    block: Some(Indexed {
                        index: i,
                        nodes: missing(i, have, want),
                    }),
                    upgrade: Some(UpgradeRange {
                        start: have,
                        length: want - have,
                    }),
                    ..Request::default()
                };
                let p = create(&tree, 13, &req).unwrap();
                let got = Received {
                    block: Some((i, &b[i as usize], p.nodes.clone().unwrap())),
                    hash: None,
                    seek: None,
                    upgrade: Some(ReceivedUpgrade {
                        start: have,
                        length: want - have,
                        nodes: p.upgrade.clone().unwrap(),
                        additional: p.additional.clone(),
                    }),
                };
                let v = verify(&trusted, have, &got).unwrap();
                let (roots, len) = v.upgraded.unwrap();
                assert_eq!(len, 13, "have {have} want {want}");
                assert_eq!(roots, roots_of(&tree, 13).unwrap());
                if let Some(c) = v.check {
                    assert_eq!(tree.get(&c.index), Some(&c));
                }
                for n in &v.nodes {
                    assert_eq!(tree.get(&n.index), Some(n), "have {have} want {want}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn blocks_verify_against_the_trusted_tree(len in 1u64..70, pick in any::<u64>(), tamper in any::<bool>()) {
            let b = blocks(len as usize);
            let tree = tree_of(&b);
            let roots = roots_of(&tree, len).unwrap();
            let i = pick % len;
            let req = Request { block: Some(Indexed { index: i, nodes: missing(i, len, len) }), ..Request::default() };
            let p = create(&tree, len, &req).unwrap();
            let mut value = b[i as usize].clone();
            if tamper { value.push(1); }
            let got = Received { block: Some((i, &value, p.nodes.unwrap())), ..Received::default() };
            let v = verify(&roots, len, &got).unwrap();
            let c = v.check.unwrap();
            prop_assert_eq!(tree.get(&c.index) == Some(&c), !tamper);
        }

        #[test]
        fn hostile_proofs_never_panic(
            idx in any::<u64>(), start in any::<u64>(), length in any::<u64>(),
            raw in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
        ) {
            let nodes: Vec<Node> = raw.iter().map(|&(index, size)| Node { index, size, hash: [1; 32] }).collect();
            let got = Received {
                block: Some((idx, b"x", nodes.clone())),
                hash: None,
                seek: Some(nodes.clone()),
                upgrade: Some(ReceivedUpgrade { start, length, nodes: nodes.clone(), additional: nodes.clone() }),
            };
            let tree = tree_of(&blocks(5));
            let roots = roots_of(&tree, 5).unwrap();
            let _ = verify(&roots, 5, &got);
            let _ = verify(&roots, start, &got);
            let req = Request { block: Some(Indexed { index: idx % 8, nodes: length % 70 }), hash: None, upgrade: Some(UpgradeRange { start: start % 8, length: length % 8 }), seek: Some(Seek { bytes: start % 64, padding: 0 }) };
            let _ = create(&tree, 5, &req);
            let wild = Request {
                block: None,
                hash: Some(Indexed { index: idx, nodes: length }),
                upgrade: Some(UpgradeRange { start, length }),
                seek: Some(Seek { bytes: idx, padding: length }),
            };
            let _ = create(&tree, 5, &wild);
            let _ = create(&tree, idx, &wild);
        }
    }
}
