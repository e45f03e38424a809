//! The oplog of a Hypercore 10 core (as the `hypercore` crate writes it): two header slots,
//! then entries appended between header flushes. Decoded here correctly and completely, so the
//! store can recover a core from any stop (see `co-hyperdrive/src/store/recover.rs`).
//!
//! ```text
//! [0, 4096)     header slot 1     leader + header
//! [4096, 8192)  header slot 2     leader + header
//! [8192, ..)    entries           (leader + entry)*
//!
//! leader: crc32 (u32 LE) of the next 4 bytes and the data; u32 LE (len << 2 | partial << 1 | bit)
//! header: version 1, flags, key[32], manifest, key pair, userData, tree, hints
//! tree:   uint fork, uint length, buffer rootHash, buffer signature
//! hints:  array(buffer) reorgs, uint contiguousLength
//! entry:  u8 flags, then per flag: 1 userData, 2 tree nodes, 4 tree upgrade, 8 bitfield
//! ```
//!
//! The current header is the one in slot 1 when both slots carry the same bit, else slot 2
//! (the crate alternates). A slot whose checksum fails is damaged: the other one is used.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::compact::{self, Reader, Truncated};
use crate::merkle::Node;

/// Bytes of one header slot.
pub const SLOT_SIZE: usize = 4096;
/// Where entries start.
pub const ENTRIES_AT: usize = 2 * SLOT_SIZE;

/// Why an oplog cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OplogError {
    /// Neither header slot holds a readable header.
    #[error("both oplog header slots are damaged")]
    NoHeader,
    /// A header of a kind we do not read.
    #[error("unsupported oplog header: {0}")]
    Unsupported(&'static str),
}

/// The tree state a header (or an upgrade) records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// Fork id.
    pub fork: u64,
    /// Length in blocks.
    pub length: u64,
    /// Hash of the roots (empty when unknown).
    pub root_hash: Vec<u8>,
    /// The owner's signature of the tree (empty for an empty core).
    pub signature: Vec<u8>,
}

/// A decoded oplog header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The core key.
    pub key: [u8; 32],
    /// Version, flags, key, manifest and key pair, re-emitted as they were.
    head: Vec<u8>,
    /// Whether the header holds a secret key (the core is ours).
    pub writable: bool,
    /// userData entries.
    pub user_data: Vec<Vec<u8>>,
    /// The tree.
    pub tree: TreeHead,
    /// Reorg hints.
    pub reorgs: Vec<Vec<u8>>,
    /// Blocks `0..contiguous_length` are all stored.
    pub contiguous_length: u64,
}

/// A change to which blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitfieldUpdate {
    /// Cleared (true) or stored (false).
    pub drop: bool,
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub length: u64,
}

/// A tree upgrade recorded in an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Fork id.
    pub fork: u64,
    /// Blocks shared with the previous fork.
    pub ancestors: u64,
    /// New length.
    pub length: u64,
    /// Signature of the new tree.
    pub signature: Vec<u8>,
}

/// One oplog entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// userData (flag 1).
    pub user_data: Vec<Vec<u8>>,
    /// Tree nodes (flag 2).
    pub nodes: Vec<Node>,
    /// Tree upgrade (flag 4).
    pub upgrade: Option<Upgrade>,
    /// Bitfield change (flag 8).
    pub bitfield: Option<BitfieldUpdate>,
}

/// What an oplog file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oplog {
    /// The current header.
    pub header: Header,
    /// The tree length the other header slot holds (an earlier signed length), if readable.
    pub previous_length: Option<u64>,
    /// Whether a header slot was damaged (bad checksum or undecodable).
    pub damaged_slot: bool,
    /// Entries after the header, up to the first torn or damaged one.
    pub entries: Vec<Entry>,
    /// Whether anything follows the header slots (entries, or a torn write): the file is not in
    /// the flushed form the `hypercore` crate reads reliably.
    pub has_tail: bool,
}

enum Frame<'a> {
    /// Nothing written there (zero length or short).
    Empty,
    /// A checksum that does not match.
    Damaged,
    Data {
        data: &'a [u8],
        bit: bool,
        partial: bool,
    },
}

fn frame(buf: &[u8]) -> Frame<'_> {
    // Never written: too short for a leader, or a zero leader.
    if buf.len() < 8 || buf[..8] == [0; 8] {
        return Frame::Empty;
    }
    let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let combined = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let len = (combined >> 2) as usize;
    if len == 0 || buf.len() - 8 < len {
        return Frame::Damaged;
    }
    if crc32fast::hash(&buf[4..8 + len]) != crc {
        return Frame::Damaged;
    }
    Frame::Data {
        data: &buf[8..8 + len],
        bit: combined & 1 == 1,
        partial: combined & 2 == 2,
    }
}

/// `data` behind a leader with `bit` (partial unset).
pub fn encode_frame(data: &[u8], bit: bool) -> Vec<u8> {
    let combined = ((data.len() as u32) << 2) | u32::from(bit);
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&combined.to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

impl Header {
    /// Decodes a header.
    pub fn decode(buf: &[u8]) -> Result<Self, OplogError> {
        let bad = |_: Truncated| OplogError::Unsupported("truncated header");
        let mut r = Reader::new(buf);
        let _version = r.u8().map_err(bad)?;
        let _flags = r.u8().map_err(bad)?;
        let key = r.array::<32>().map_err(bad)?;
        // The crate's manifest: version 0, hash 0 (blake2b), type 1 (signer), then one signer
        // (signature type 0, namespace, public key).
        let manifest = r.array::<3>().map_err(bad)?;
        if manifest != [0, 0, 1] {
            return Err(OplogError::Unsupported("manifest"));
        }
        r.bytes(1 + 32 + 32).map_err(bad)?;
        let public = r.buffer().map_err(bad)?;
        if public.len() != 32 {
            return Err(OplogError::Unsupported("public key length"));
        }
        let secret = r.buffer().map_err(bad)?;
        if !matches!(secret.len(), 0 | 64) {
            return Err(OplogError::Unsupported("secret key length"));
        }
        let head = buf[..r.position()].to_vec();
        let user_data = owned(r.buffers().map_err(bad)?);
        let tree = read_tree(&mut r).map_err(bad)?;
        let reorgs = owned(r.buffers().map_err(bad)?);
        let contiguous_length = r.uint().map_err(bad)?;
        Ok(Self {
            key,
            head,
            writable: !secret.is_empty(),
            user_data,
            tree,
            reorgs,
            contiguous_length,
        })
    }

    /// The secret half of the key pair, when the core is ours (not kept as a field, so that
    /// it never shows in debug output).
    pub fn secret_key(&self) -> Option<[u8; 32]> {
        let mut r = Reader::new(&self.head);
        r.bytes(2 + 32 + 3 + 65).ok()?;
        r.buffer().ok()?;
        r.buffer().ok()?.get(..32)?.try_into().ok()
    }

    /// Encodes the header (the inverse of [`decode`](Self::decode)).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        compact::write_buffers(&mut out, &self.user_data);
        compact::write_uint(&mut out, self.tree.fork);
        compact::write_uint(&mut out, self.tree.length);
        compact::write_buffer(&mut out, &self.tree.root_hash);
        compact::write_buffer(&mut out, &self.tree.signature);
        compact::write_buffers(&mut out, &self.reorgs);
        compact::write_uint(&mut out, self.contiguous_length);
        out
    }
}

fn owned(v: Vec<&[u8]>) -> Vec<Vec<u8>> {
    v.into_iter().map(<[u8]>::to_vec).collect()
}

fn read_tree(r: &mut Reader<'_>) -> Result<TreeHead, Truncated> {
    Ok(TreeHead {
        fork: r.uint()?,
        length: r.uint()?,
        root_hash: r.buffer()?.to_vec(),
        signature: r.buffer()?.to_vec(),
    })
}

impl Entry {
    /// Decodes an entry (every flag on its own, unlike the crate's decoder).
    pub fn decode(buf: &[u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        let mut e = Entry::default();
        if flags & 1 != 0 {
            e.user_data = owned(r.buffers()?);
        }
        if flags & 2 != 0 {
            e.nodes = crate::merkle::read_nodes(&mut r)?;
        }
        if flags & 4 != 0 {
            e.upgrade = Some(Upgrade {
                fork: r.uint()?,
                ancestors: r.uint()?,
                length: r.uint()?,
                signature: r.buffer()?.to_vec(),
            });
        }
        if flags & 8 != 0 {
            let drop = r.u8()? & 1 == 1;
            e.bitfield = Some(BitfieldUpdate {
                drop,
                start: r.uint()?,
                length: r.uint()?,
            });
        }
        Ok(e)
    }

    /// Encodes an entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8];
        if !self.user_data.is_empty() {
            out[0] |= 1;
            compact::write_buffers(&mut out, &self.user_data);
        }
        if !self.nodes.is_empty() {
            out[0] |= 2;
            crate::merkle::write_nodes(&mut out, &self.nodes);
        }
        if let Some(u) = &self.upgrade {
            out[0] |= 4;
            compact::write_uint(&mut out, u.fork);
            compact::write_uint(&mut out, u.ancestors);
            compact::write_uint(&mut out, u.length);
            compact::write_buffer(&mut out, &u.signature);
        }
        if let Some(b) = &self.bitfield {
            out[0] |= 8;
            out.push(u8::from(b.drop));
            compact::write_uint(&mut out, b.start);
            compact::write_uint(&mut out, b.length);
        }
        out
    }
}

/// Reads an oplog file. `Ok(None)`: it holds no header at all (a core never written).
pub fn read(file: &[u8]) -> Result<Option<Oplog>, OplogError> {
    let slot = |i: usize| {
        let s = file.get(i * SLOT_SIZE..).unwrap_or_default();
        let s = &s[..s.len().min(SLOT_SIZE)];
        match frame(s) {
            Frame::Empty => (None, false),
            Frame::Damaged => (None, true),
            Frame::Data { data, bit, .. } => match Header::decode(data) {
                Ok(h) => (Some((h, bit)), false),
                Err(_) => (None, true),
            },
        }
    };
    let ((one, bad_one), (two, bad_two)) = (slot(0), slot(1));
    let damaged_slot = bad_one || bad_two;
    let (header, previous_length) = match (one, two) {
        (Some((h1, b1)), Some((h2, b2))) => {
            if b1 == b2 {
                let l = h2.tree.length;
                (h1, Some(l))
            } else {
                let l = h1.tree.length;
                (h2, Some(l))
            }
        }
        (Some((h, _)), None) | (None, Some((h, _))) => (h, None),
        (None, None) if damaged_slot => return Err(OplogError::NoHeader),
        (None, None) => return Ok(None),
    };
    let tail = file.get(ENTRIES_AT..).unwrap_or_default();
    let mut entries = Vec::new();
    let mut partial = Vec::new();
    let mut rest = tail;
    while let Frame::Data {
        data, partial: p, ..
    } = frame(rest)
    {
        let Ok(e) = Entry::decode(data) else { break };
        entries.push(e);
        partial.push(p);
        rest = &rest[8 + data.len()..];
    }
    // An atomic batch whose last entry never made it is dropped whole.
    while partial.last() == Some(&true) {
        partial.pop();
        entries.pop();
    }
    Ok(Some(Oplog {
        header,
        previous_length,
        damaged_slot,
        entries,
        has_tail: !tail.is_empty(),
    }))
}

/// Ranges of stored blocks: start -> end, disjoint and non-adjacent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn set(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Merge every range that touches or overlaps.
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    fn clear(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .0
            .range(..r.end)
            .rev()
            .take_while(|(_, &e)| e > r.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.0.remove(&s);
            if s < r.start {
                self.0.insert(s, r.start);
            }
            if e > r.end {
                self.0.insert(r.end, e);
            }
        }
    }
}

/// The state a header and its entries add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The tree after the last upgrade (its `root_hash` is cleared when an entry upgraded it:
    /// entries do not carry it).
    pub tree: TreeHead,
    /// Blocks `0..contiguous_length` are stored.
    pub contiguous_length: u64,
    /// Stored blocks beyond the contiguous prefix, sorted and disjoint.
    pub present: Vec<Range<u64>>,
    /// Tree nodes the entries carry (the last one for each index), sorted by index.
    pub nodes: Vec<Node>,
}

/// Applies `entries` to `header`, starting from the sparse blocks the store recorded
/// (`present`), as the crate would on open, but for every kind of entry.
pub fn replay(header: &Header, entries: &[Entry], present: &[Range<u64>]) -> Replayed {
    let mut tree = header.tree.clone();
    let mut stored = Ranges::default();
    stored.set(0..header.contiguous_length);
    for r in present {
        stored.set(r.clone());
    }
    let mut nodes = BTreeMap::new();
    for e in entries {
        for n in &e.nodes {
            nodes.insert(n.index, *n);
        }
        if let Some(b) = e.bitfield {
            let r = b.start..b.start.saturating_add(b.length);
            if b.drop {
                stored.clear(r);
            } else {
                stored.set(r);
            }
        }
        if let Some(u) = &e.upgrade {
            tree = TreeHead {
                fork: u.fork,
                length: u.length,
                root_hash: Vec::new(),
                signature: u.signature.clone(),
            };
        }
    }
    // Nothing past the tree's end counts as stored (a truncation may have cut it).
    stored.clear(tree.length..u64::MAX);
    let contiguous_length = stored.0.get(&0).copied().unwrap_or(0);
    let present = stored
        .0
        .iter()
        .filter(|(&s, _)| s > 0)
        .map(|(&s, &e)| s..e)
        .collect();
    Replayed {
        tree,
        contiguous_length,
        present,
        nodes: nodes.into_values().collect(),
    }
}

/// An oplog file holding `header` in both slots and no entries: the flushed form. Both slots
/// carry the same bit, so slot 1 is current; if a crash leaves only slot 1 rewritten, slot 1
/// and slot 2 may disagree, and whichever is taken, replaying the old entries (still in the
/// file until it is truncated) ends in the same state.
pub fn flushed_slot(header: &Header) -> Result<Vec<u8>, OplogError> {
    let framed = encode_frame(&header.encode(), false);
    if framed.len() > SLOT_SIZE {
        return Err(OplogError::Unsupported("header larger than its slot"));
    }
    let mut slot = framed;
    slot.resize(SLOT_SIZE, 0);
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(contiguous: u64, length: u64) -> Header {
        let mut head = vec![1, 6];
        head.extend_from_slice(&[7; 32]);
        head.extend_from_slice(&[0, 0, 1, 0]);
        head.extend_from_slice(&[1; 32]);
        head.extend_from_slice(&[7; 32]);
        compact::write_buffer(&mut head, &[7; 32]);
        compact::write_buffer(&mut head, &[]);
        let mut bytes = head;
        compact::write_buffers::<&[u8]>(&mut bytes, &[]);
        compact::write_uint(&mut bytes, 0);
        compact::write_uint(&mut bytes, length);
        compact::write_buffer(&mut bytes, &[]);
        compact::write_buffer(&mut bytes, &[5; 64]);
        compact::write_buffers::<&[u8]>(&mut bytes, &[]);
        compact::write_uint(&mut bytes, contiguous);
        Header::decode(&bytes).unwrap()
    }

    fn file(slots: [Option<(&Header, bool)>; 2], entries: &[(Entry, bool)]) -> Vec<u8> {
        let mut f = vec![0u8; ENTRIES_AT];
        for (i, s) in slots.iter().enumerate() {
            if let Some((h, bit)) = s {
                let b = encode_frame(&h.encode(), *bit);
                f[i * SLOT_SIZE..i * SLOT_SIZE + b.len()].copy_from_slice(&b);
            }
        }
        for (e, partial) in entries {
            let mut b = encode_frame(&e.encode(), false);
            if *partial {
                b[4] |= 2;
                let crc = crc32fast::hash(&b[4..]);
                b[..4].copy_from_slice(&crc.to_le_bytes());
            }
            f.extend_from_slice(&b);
        }
        f
    }

    fn block(i: u64) -> Entry {
        Entry {
            nodes: vec![Node {
                index: 2 * i,
                size: 1,
                hash: [i as u8; 32],
            }],
            bitfield: Some(BitfieldUpdate {
                drop: false,
                start: i,
                length: 1,
            }),
            ..Entry::default()
        }
    }

    #[test]
    fn header_round_trip() {
        let h = header(3, 9);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert!(!h.writable);
        assert_eq!(h.secret_key(), None);
    }

    #[test]
    fn received_blocks_without_upgrade_replay() {
        // The case the crate misreads: tree nodes + bitfield, no upgrade (flags 10).
        let h = header(0, 4);
        let f = file(
            [Some((&h, false)), None],
            &[(block(1), false), (block(0), false)],
        );
        let o = read(&f).unwrap().unwrap();
        assert_eq!(o.entries.len(), 2);
        assert!(o.has_tail && !o.damaged_slot);
        let sparse = [Range { start: 3, end: 4 }];
        let r = replay(&o.header, &o.entries, &sparse);
        assert_eq!(r.contiguous_length, 2);
        assert_eq!(r.present, vec![3..4]);
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.tree, h.tree);
    }

    #[test]
    fn slot_choice_and_damage() {
        let (old, new) = (header(1, 1), header(2, 2));
        // Bits differ: slot 2 is current.
        let f = file([Some((&old, true)), Some((&new, false))], &[]);
        assert_eq!(read(&f).unwrap().unwrap().header, new);
        // Bits equal: slot 1.
        let f = file([Some((&new, true)), Some((&old, true))], &[]);
        assert_eq!(read(&f).unwrap().unwrap().header, new);
        // A damaged slot: the other one, reported.
        let mut f = file([Some((&old, true)), Some((&new, false))], &[]);
        f[SLOT_SIZE + 20] ^= 1;
        let o = read(&f).unwrap().unwrap();
        assert_eq!((o.header, o.damaged_slot), (old, true));
        f[20] ^= 1;
        assert_eq!(read(&f), Err(OplogError::NoHeader));
        assert_eq!(read(&[0u8; ENTRIES_AT]), Ok(None));
        assert_eq!(read(&[]), Ok(None));
    }

    #[test]
    fn torn_and_partial_entries_are_dropped() {
        let h = header(0, 4);
        let mut f = file(
            [Some((&h, false)), None],
            &[(block(0), false), (block(1), true)],
        );
        let o = read(&f).unwrap().unwrap();
        assert_eq!(o.entries, vec![block(0)]);
        // A torn last entry (cut short) and garbage after the entries.
        let full = file(
            [Some((&h, false)), None],
            &[(block(0), false), (block(1), false)],
        );
        f = full[..full.len() - 3].to_vec();
        assert_eq!(read(&f).unwrap().unwrap().entries, vec![block(0)]);
        f = full.clone();
        f.extend_from_slice(&[9; 30]);
        assert_eq!(read(&f).unwrap().unwrap().entries.len(), 2);
    }

    #[test]
    fn upgrades_drops_and_truncation() {
        let h = header(2, 2);
        let up = Entry {
            upgrade: Some(Upgrade {
                fork: 0,
                ancestors: 0,
                length: 6,
                signature: vec![1; 64],
            }),
            ..block(5)
        };
        let drop = Entry {
            bitfield: Some(BitfieldUpdate {
                drop: true,
                start: 1,
                length: 1,
            }),
            ..Entry::default()
        };
        let r = replay(&h, &[up.clone(), block(2), drop], &[]);
        assert_eq!(r.tree.length, 6);
        assert!(r.tree.root_hash.is_empty());
        assert_eq!(r.contiguous_length, 1);
        assert_eq!(r.present, vec![2..3, 5..6]);
        let shrink = Entry {
            upgrade: Some(Upgrade {
                fork: 1,
                ancestors: 3,
                length: 3,
                signature: vec![2; 64],
            }),
            ..Entry::default()
        };
        let r = replay(&h, &[up, block(2), shrink], &[]);
        assert_eq!((r.tree.length, r.tree.fork), (3, 1));
        assert_eq!((r.contiguous_length, r.present.len()), (3, 0));
    }

    #[test]
    fn flushed_slot_reads_back() {
        let h = header(5, 5);
        let mut f = flushed_slot(&h).unwrap();
        f.extend(flushed_slot(&h).unwrap());
        let o = read(&f).unwrap().unwrap();
        assert_eq!((o.header, o.entries.len(), o.has_tail), (h, 0, false));
    }

    proptest! {
        #[test]
        fn reading_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), at in 0usize..9000) {
            let h = header(1, 2);
            let mut f = file([Some((&h, false)), None], &[(block(0), false)]);
            let at = at.min(f.len());
            f.splice(at..at, bytes.iter().copied());
            let _ = read(&f);
            let _ = Entry::decode(&bytes);
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn replay_matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0u64..40, 1u64..6), 0..30)) {
            let h = header(0, 40);
            let entries: Vec<Entry> = ops.iter().map(|&(drop, start, length)| Entry {
                bitfield: Some(BitfieldUpdate { drop, start, length }),
                ..Entry::default()
            }).collect();
            let r = replay(&h, &entries, &[]);
            let mut model = [false; 64];
            for &(drop, start, length) in &ops {
                for b in &mut model[start as usize..(start + length) as usize] {
                    *b = !drop;
                }
            }
            let model = &model[..40];
            let contiguous = model.iter().take_while(|&&b| b).count() as u64;
            prop_assert_eq!(r.contiguous_length, contiguous);
            let mut got = [false; 40];
            for b in &mut got[..contiguous as usize] { *b = true; }
            for p in &r.present {
                prop_assert!(p.start > contiguous && p.start < p.end);
                for b in &mut got[p.start as usize..p.end as usize] { *b = true; }
            }
            prop_assert_eq!(&got[..], model);
        }
    }
}
