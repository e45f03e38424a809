//! The Hypercore replication wire format, pure: Protomux frames (channels opened, closed,
//! rejected; batches) and the ten messages of a `hypercore/alpha` channel, encoded and decoded
//! byte for byte as JavaScript does (`protomux`, `hypercore/lib/messages.js`).
//!
//! ```text
//! frame:    uint channel, then (channel 0) uint control type or (others) uint message type, payload
//! control:  0 batch: uint channel, then (uint length, [type, payload]) ... ; length 0: uint channel
//!           1 open: uint local id, string protocol, optional buffer id, handshake
//!           2 reject: uint remote id          3 close: uint local id
//! messages: 0 sync  1 request  2 cancel  3 data  4 no-data  5 want  6 unwant  7 bitfield
//!           8 range  9 extension
//! ```
//!
//! Decoding never panics and allocates at most in proportion to its input; a message whose
//! bytes end early is an error, bytes after a message's last field are ignored (as JavaScript
//! ignores them, so that newer peers can add fields).

use crate::compact::{self, Reader, Truncated};
use crate::merkle::{write_nodes, Node};

/// Why wire bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A value ends past the end of the input.
    #[error("truncated wire message")]
    Truncated,
    /// A control or message type we do not know.
    #[error("unknown {what} type {kind}")]
    UnknownType {
        /// Control or channel message.
        what: &'static str,
        /// The type.
        kind: u64,
    },
    /// A string that is not UTF-8.
    #[error("a wire string is not UTF-8")]
    Utf8,
    /// A field with an impossible value.
    #[error("invalid wire message: {0}")]
    Invalid(&'static str),
}

impl From<Truncated> for WireError {
    fn from(_: Truncated) -> Self {
        WireError::Truncated
    }
}

/// One item of a frame: a control message, or a message on a channel (type and payload, to
/// decode with [`Message::decode`] on a hypercore channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// The remote opens channel `id` for `protocol` (and `key`, for hypercore the discovery
    /// key); `handshake` is the protocol's own opening payload ([`Handshake`] for hypercore).
    Open {
        /// The remote's id for the channel.
        id: u64,
        /// The protocol name.
        protocol: String,
        /// The channel's key.
        key: Option<&'a [u8]>,
        /// The protocol's handshake bytes.
        handshake: &'a [u8],
    },
    /// The remote refuses our channel `id`.
    Reject {
        /// Our id for the channel.
        id: u64,
    },
    /// The remote closes its channel `id`.
    Close {
        /// The remote's id.
        id: u64,
    },
    /// A message on channel `channel`.
    Message {
        /// The sender's id for the channel.
        channel: u64,
        /// The message type.
        kind: u64,
        /// Its payload.
        payload: &'a [u8],
    },
}

/// Most items a batch may hold (a bound against hostile frames of empty entries).
const MAX_BATCH_ITEMS: usize = 1 << 16;

/// Decodes one frame (the bytes between two length prefixes of the stream).
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Item<'_>>, WireError> {
    let mut out = Vec::new();
    if frame.is_empty() {
        return Ok(out);
    }
    let mut r = Reader::new(frame);
    let channel = r.uint()?;
    decode_item(channel, &mut r, &mut out, true)?;
    Ok(out)
}

fn decode_item<'a>(
    channel: u64,
    r: &mut Reader<'a>,
    out: &mut Vec<Item<'a>>,
    batch_allowed: bool,
) -> Result<(), WireError> {
    let kind = r.uint()?;
    if channel != 0 {
        out.push(Item::Message {
            channel,
            kind,
            payload: r.rest(),
        });
        return Ok(());
    }
    match kind {
        0 if batch_allowed => {
            let mut channel = r.uint()?;
            while !r.rest().is_empty() {
                if out.len() >= MAX_BATCH_ITEMS {
                    return Err(WireError::Invalid("too many items in a batch"));
                }
                let len = r.length()?;
                if len == 0 {
                    channel = r.uint()?;
                    continue;
                }
                let mut sub = Reader::new(r.bytes(len)?);
                decode_item(channel, &mut sub, out, false)?;
            }
        }
        1 => {
            let id = r.uint()?;
            let protocol = std::str::from_utf8(r.buffer()?)
                .map_err(|_| WireError::Utf8)?
                .to_string();
            let key = r.buffer()?;
            out.push(Item::Open {
                id,
                protocol,
                key: (!key.is_empty()).then_some(key),
                handshake: r.rest(),
            });
        }
        2 => out.push(Item::Reject { id: r.uint()? }),
        3 => out.push(Item::Close { id: r.uint()? }),
        kind => {
            return Err(WireError::UnknownType {
                what: "control",
                kind,
            })
        }
    }
    Ok(())
}

/// Encodes one item as a frame of its own.
pub fn encode_item(item: &Item<'_>) -> Vec<u8> {
    let mut out = match item {
        // Two uints in front of the payload, allocated once.
        Item::Message { payload, .. } => Vec::with_capacity(18 + payload.len()),
        _ => Vec::new(),
    };
    match item {
        Item::Message {
            channel,
            kind,
            payload,
        } => {
            compact::write_uint(&mut out, *channel);
            compact::write_uint(&mut out, *kind);
            out.extend_from_slice(payload);
        }
        control => {
            out.push(0);
            out.extend_from_slice(&control_body(control));
        }
    }
    out
}

/// A control item without its channel (0): type and fields.
fn control_body(item: &Item<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match item {
        Item::Open {
            id,
            protocol,
            key,
            handshake,
        } => {
            out.push(1);
            compact::write_uint(&mut out, *id);
            compact::write_buffer(&mut out, protocol.as_bytes());
            compact::write_buffer(&mut out, key.unwrap_or_default());
            out.extend_from_slice(handshake);
        }
        Item::Reject { id } => {
            out.push(2);
            compact::write_uint(&mut out, *id);
        }
        Item::Close { id } => {
            out.push(3);
            compact::write_uint(&mut out, *id);
        }
        Item::Message { kind, payload, .. } => {
            compact::write_uint(&mut out, *kind);
            out.extend_from_slice(payload);
        }
    }
    out
}

/// Encodes several items as one batch frame (as Protomux corks them).
pub fn encode_batch(items: &[Item<'_>]) -> Vec<u8> {
    let channel_of = |i: &Item<'_>| match i {
        Item::Message { channel, .. } => *channel,
        _ => 0,
    };
    let mut out = vec![0, 0];
    let mut prev = items.first().map_or(0, channel_of);
    compact::write_uint(&mut out, prev);
    for item in items {
        let ch = channel_of(item);
        if ch != prev {
            out.push(0);
            compact::write_uint(&mut out, ch);
            prev = ch;
        }
        compact::write_buffer(&mut out, &control_body(item));
    }
    out
}

/// The payload of a hypercore channel's open: capability proof and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Whether the peer answers seek requests.
    pub seeks: bool,
    /// `caps.replicate(...)`: proves the peer knows the core key.
    pub capability: [u8; 32],
}

impl Handshake {
    /// Decodes a handshake.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let flags = r.uint()?;
        Ok(Self {
            seeks: flags & 1 != 0,
            capability: r.array()?,
        })
    }

    /// Encodes a handshake.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        compact::write_uint(&mut out, u64::from(self.seeks));
        out.extend_from_slice(&self.capability);
        out
    }
}

/// The protomux protocol name of hypercore replication channels.
pub const PROTOCOL: &str = "hypercore/alpha";

/// `caps.replicate(initiator, key, handshakeHash)` of JavaScript hypercore: BLAKE2b-256 of
/// `namespace("hypercore", 1 or 2) ‖ key`, keyed with the Noise handshake hash. A channel's
/// opener sends it with its own role; the receiver checks it with the opposite role, so it proves
/// knowledge of the core key bound to this very connection.
pub fn capability(initiator: bool, key: &[u8; 32], handshake_hash: &[u8; 64]) -> [u8; 32] {
    let ns = crate::manifest::namespace("hypercore", if initiator { 1 } else { 2 });
    let mut h = blake2b_simd::Params::new()
        .hash_length(32)
        .key(handshake_hash)
        .to_state();
    h.update(&ns);
    h.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_bytes());
    out
}

/// A block index (or flat index, for hashes) and the nodes the requester lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestBlock {
    /// Index.
    pub index: u64,
    /// Nodes lacking.
    pub nodes: u64,
}

/// A seek request: the block holding byte `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestSeek {
    /// Byte offset.
    pub bytes: u64,
    /// Padding per block.
    pub padding: u64,
}

/// An upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestUpgrade {
    /// The requester's length.
    pub start: u64,
    /// Blocks wanted beyond it.
    pub length: u64,
}

/// A block in a data message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataBlock {
    /// Block index.
    pub index: u64,
    /// The block.
    pub value: Vec<u8>,
    /// Its proof nodes.
    pub nodes: Vec<Node>,
}

/// A hash (or seek) proof in a data message: the index (or byte offset) and its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataNodes {
    /// Flat index, or byte offset for a seek.
    pub index: u64,
    /// Proof nodes.
    pub nodes: Vec<Node>,
}

/// An upgrade proof in a data message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataUpgrade {
    /// The requester's length.
    pub start: u64,
    /// Blocks added.
    pub length: u64,
    /// Roots and connecting nodes.
    pub nodes: Vec<Node>,
    /// Nodes beyond `start + length`.
    pub additional: Vec<Node>,
    /// The signature of the upgraded tree.
    pub signature: Option<Vec<u8>>,
}

/// A message on a hypercore channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// 0: the sender's state of the core.
    Sync {
        /// Fork id.
        fork: u64,
        /// The sender's length.
        length: u64,
        /// The length the sender knows we have.
        remote_length: u64,
        /// Flags: 1 can upgrade, 2 uploading, 4 downloading, 8 has manifest, 16 allow push.
        flags: u64,
    },
    /// 1: a request.
    Request {
        /// Request id.
        id: u64,
        /// Fork id.
        fork: u64,
        /// A block.
        block: Option<RequestBlock>,
        /// A tree node's hash.
        hash: Option<RequestBlock>,
        /// A seek.
        seek: Option<RequestSeek>,
        /// An upgrade.
        upgrade: Option<RequestUpgrade>,
        /// Whether the manifest is wanted.
        manifest: bool,
        /// Priority (0 is normal).
        priority: u64,
    },
    /// 2: cancel a request.
    Cancel {
        /// Request id.
        request: u64,
    },
    /// 3: an answer with proofs.
    Data {
        /// The request it answers.
        request: u64,
        /// Fork id.
        fork: u64,
        /// A block.
        block: Option<DataBlock>,
        /// A hash proof.
        hash: Option<DataNodes>,
        /// A seek proof (`index` holds the byte offset).
        seek: Option<DataNodes>,
        /// An upgrade.
        upgrade: Option<DataUpgrade>,
        /// The core's manifest, encoded (see the manifest codec).
        manifest: Option<Vec<u8>>,
    },
    /// 4: the request cannot be answered.
    NoData {
        /// The request.
        request: u64,
        /// Why (0: unspecified).
        reason: u64,
    },
    /// 5: blocks the sender wants.
    Want {
        /// First block.
        start: u64,
        /// Count.
        length: u64,
        /// Whether any of them will do.
        any: bool,
    },
    /// 6: blocks no longer wanted.
    Unwant {
        /// First block.
        start: u64,
        /// Count.
        length: u64,
        /// Whether the want was "any".
        any: bool,
    },
    /// 7: a piece of the sender's bitfield.
    Bitfield {
        /// First block (a multiple of 32).
        start: u64,
        /// Bits, 32 blocks per word.
        words: Vec<u32>,
    },
    /// 8: the sender holds (or dropped) a range.
    Range {
        /// Dropped rather than held.
        drop: bool,
        /// First block.
        start: u64,
        /// Count.
        length: u64,
    },
    /// 9: a named extension message.
    Extension {
        /// Extension name.
        name: String,
        /// Its bytes.
        message: Vec<u8>,
    },
}

fn read_nodes(r: &mut Reader<'_>) -> Result<Vec<Node>, WireError> {
    Ok(crate::merkle::read_nodes(r)?)
}

fn request_block(r: &mut Reader<'_>) -> Result<RequestBlock, WireError> {
    Ok(RequestBlock {
        index: r.uint()?,
        nodes: r.uint()?,
    })
}

/// A trailing flags field: absent when the message ends (older peers).
fn optional_uint(r: &mut Reader<'_>) -> Result<u64, WireError> {
    if r.rest().is_empty() {
        Ok(0)
    } else {
        Ok(r.uint()?)
    }
}

impl Message {
    /// The message type on the channel.
    pub fn kind(&self) -> u64 {
        match self {
            Message::Sync { .. } => 0,
            Message::Request { .. } => 1,
            Message::Cancel { .. } => 2,
            Message::Data { .. } => 3,
            Message::NoData { .. } => 4,
            Message::Want { .. } => 5,
            Message::Unwant { .. } => 6,
            Message::Bitfield { .. } => 7,
            Message::Range { .. } => 8,
            Message::Extension { .. } => 9,
        }
    }

    /// Decodes a message of type `kind`.
    pub fn decode(kind: u64, payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let r = &mut r;
        Ok(match kind {
            0 => {
                let flags = r.uint()?;
                Message::Sync {
                    fork: r.uint()?,
                    length: r.uint()?,
                    remote_length: r.uint()?,
                    flags,
                }
            }
            1 => {
                let flags = r.uint()?;
                let id = r.uint()?;
                let fork = r.uint()?;
                let block = if flags & 1 != 0 {
                    Some(request_block(r)?)
                } else {
                    None
                };
                let hash = if flags & 2 != 0 {
                    Some(request_block(r)?)
                } else {
                    None
                };
                let seek = if flags & 4 != 0 {
                    Some(RequestSeek {
                        bytes: r.uint()?,
                        padding: r.uint()?,
                    })
                } else {
                    None
                };
                let upgrade = if flags & 8 != 0 {
                    Some(RequestUpgrade {
                        start: r.uint()?,
                        length: r.uint()?,
                    })
                } else {
                    None
                };
                let priority = if flags & 32 != 0 { r.uint()? } else { 0 };
                Message::Request {
                    id,
                    fork,
                    block,
                    hash,
                    seek,
                    upgrade,
                    manifest: flags & 16 != 0,
                    priority,
                }
            }
            2 => Message::Cancel { request: r.uint()? },
            3 => {
                let flags = r.uint()?;
                let request = r.uint()?;
                let fork = r.uint()?;
                let block = if flags & 1 != 0 {
                    Some(DataBlock {
                        index: r.uint()?,
                        value: r.buffer()?.to_vec(),
                        nodes: read_nodes(r)?,
                    })
                } else {
                    None
                };
                let mut data_nodes = |bit: u64| -> Result<Option<DataNodes>, WireError> {
                    if flags & bit == 0 {
                        return Ok(None);
                    }
                    Ok(Some(DataNodes {
                        index: r.uint()?,
                        nodes: read_nodes(r)?,
                    }))
                };
                let hash = data_nodes(2)?;
                let seek = data_nodes(4)?;
                let upgrade = if flags & 8 != 0 {
                    let start = r.uint()?;
                    let length = r.uint()?;
                    let nodes = read_nodes(r)?;
                    let additional = read_nodes(r)?;
                    let signature = r.buffer()?;
                    Some(DataUpgrade {
                        start,
                        length,
                        nodes,
                        additional,
                        signature: (!signature.is_empty()).then(|| signature.to_vec()),
                    })
                } else {
                    None
                };
                // The manifest is the last field: its own codec reads it.
                let manifest = (flags & 16 != 0).then(|| r.rest().to_vec());
                Message::Data {
                    request,
                    fork,
                    block,
                    hash,
                    seek,
                    upgrade,
                    manifest,
                }
            }
            4 => {
                let request = r.uint()?;
                let flags = optional_uint(r)?;
                Message::NoData {
                    request,
                    reason: if flags & 1 != 0 { r.uint()? } else { 0 },
                }
            }
            5 | 6 => {
                let start = r.uint()?;
                let length = r.uint()?;
                let any = optional_uint(r)? & 1 != 0;
                if kind == 5 {
                    Message::Want { start, length, any }
                } else {
                    Message::Unwant { start, length, any }
                }
            }
            7 => {
                let start = r.uint()?;
                let n = r.uint()?;
                let bytes = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_mul(4))
                    .ok_or(WireError::Truncated)?;
                let words = r
                    .bytes(bytes)?
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect();
                Message::Bitfield { start, words }
            }
            8 => {
                let flags = r.uint()?;
                let start = r.uint()?;
                let length = if flags & 2 != 0 { 1 } else { r.uint()? };
                Message::Range {
                    drop: flags & 1 != 0,
                    start,
                    length,
                }
            }
            9 => Message::Extension {
                name: std::str::from_utf8(r.buffer()?)
                    .map_err(|_| WireError::Utf8)?
                    .to_string(),
                message: r.rest().to_vec(),
            },
            kind => {
                return Err(WireError::UnknownType {
                    what: "hypercore message",
                    kind,
                })
            }
        })
    }

    /// Encodes the payload (see [`kind`](Self::kind) for its type).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        let o = &mut out;
        match self {
            Message::Sync {
                fork,
                length,
                remote_length,
                flags,
            } => {
                for v in [*flags, *fork, *length, *remote_length] {
                    compact::write_uint(o, v);
                }
            }
            Message::Request {
                id,
                fork,
                block,
                hash,
                seek,
                upgrade,
                manifest,
                priority,
            } => {
                let flags = u64::from(block.is_some())
                    | u64::from(hash.is_some()) << 1
                    | u64::from(seek.is_some()) << 2
                    | u64::from(upgrade.is_some()) << 3
                    | u64::from(*manifest) << 4
                    | u64::from(*priority != 0) << 5;
                for v in [flags, *id, *fork] {
                    compact::write_uint(o, v);
                }
                for b in [block, hash].into_iter().flatten() {
                    compact::write_uint(o, b.index);
                    compact::write_uint(o, b.nodes);
                }
                if let Some(s) = seek {
                    compact::write_uint(o, s.bytes);
                    compact::write_uint(o, s.padding);
                }
                if let Some(u) = upgrade {
                    compact::write_uint(o, u.start);
                    compact::write_uint(o, u.length);
                }
                if *priority != 0 {
                    compact::write_uint(o, *priority);
                }
            }
            Message::Cancel { request } => compact::write_uint(o, *request),
            Message::Data {
                request,
                fork,
                block,
                hash,
                seek,
                upgrade,
                manifest,
            } => {
                let flags = u64::from(block.is_some())
                    | u64::from(hash.is_some()) << 1
                    | u64::from(seek.is_some()) << 2
                    | u64::from(upgrade.is_some()) << 3
                    | u64::from(manifest.is_some()) << 4;
                for v in [flags, *request, *fork] {
                    compact::write_uint(o, v);
                }
                if let Some(b) = block {
                    compact::write_uint(o, b.index);
                    compact::write_buffer(o, &b.value);
                    write_nodes(o, &b.nodes);
                }
                for h in [hash, seek].into_iter().flatten() {
                    compact::write_uint(o, h.index);
                    write_nodes(o, &h.nodes);
                }
                if let Some(u) = upgrade {
                    compact::write_uint(o, u.start);
                    compact::write_uint(o, u.length);
                    write_nodes(o, &u.nodes);
                    write_nodes(o, &u.additional);
                    compact::write_buffer(o, u.signature.as_deref().unwrap_or_default());
                }
                if let Some(m) = manifest {
                    o.extend_from_slice(m);
                }
            }
            Message::NoData { request, reason } => {
                compact::write_uint(o, *request);
                compact::write_uint(o, u64::from(*reason != 0));
                if *reason != 0 {
                    compact::write_uint(o, *reason);
                }
            }
            Message::Want { start, length, any } | Message::Unwant { start, length, any } => {
                compact::write_uint(o, *start);
                compact::write_uint(o, *length);
                if *any {
                    compact::write_uint(o, 1);
                }
            }
            Message::Bitfield { start, words } => {
                compact::write_uint(o, *start);
                compact::write_uint(o, words.len() as u64);
                for w in words {
                    o.extend_from_slice(&w.to_le_bytes());
                }
            }
            Message::Range {
                drop,
                start,
                length,
            } => {
                compact::write_uint(o, u64::from(*drop) | u64::from(*length == 1) << 1);
                compact::write_uint(o, *start);
                if *length != 1 {
                    compact::write_uint(o, *length);
                }
            }
            Message::Extension { name, message } => {
                compact::write_buffer(o, name.as_bytes());
                o.extend_from_slice(message);
            }
        }
        out
    }
}

impl Message {
    /// At least the encoded size of a Data message (whose block is most of it), so its buffer
    /// is allocated once: growing it past the block would copy the block again.
    fn size_hint(&self) -> usize {
        // A node: two uints of at most 9 bytes and its hash; a count: at most 9.
        let nodes = |n: &[Node]| 9 + n.len() * 50;
        match self {
            Message::Data {
                block,
                hash,
                seek,
                upgrade,
                manifest,
                ..
            } => {
                let block = block
                    .as_ref()
                    .map_or(0, |b| 18 + b.value.len() + nodes(&b.nodes));
                let paths: usize = [hash, seek]
                    .into_iter()
                    .flatten()
                    .map(|h| 9 + nodes(&h.nodes))
                    .sum();
                let upgrade = upgrade.as_ref().map_or(0, |u| {
                    18 + nodes(&u.nodes)
                        + nodes(&u.additional)
                        + 9
                        + u.signature.as_ref().map_or(0, Vec::len)
                });
                27 + block + paths + upgrade + manifest.as_ref().map_or(0, Vec::len)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = Node> {
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(index, size, hash)| Node {
            index,
            size,
            hash,
        })
    }

    fn nodes() -> impl Strategy<Value = Vec<Node>> {
        proptest::collection::vec(node(), 0..4)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    fn message() -> impl Strategy<Value = Message> {
        let rb = || {
            proptest::option::of(
                (any::<u64>(), any::<u64>())
                    .prop_map(|(index, nodes)| RequestBlock { index, nodes }),
            )
        };
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>(), 0u64..32).prop_map(
                |(fork, length, remote_length, flags)| Message::Sync {
                    fork,
                    length,
                    remote_length,
                    flags
                }
            ),
            (
                any::<u64>(),
                any::<u64>(),
                rb(),
                rb(),
                proptest::option::of((any::<u64>(), any::<u64>())),
                proptest::option::of((any::<u64>(), any::<u64>())),
                any::<bool>(),
                any::<u64>()
            )
                .prop_map(
                    |(id, fork, block, hash, seek, upgrade, manifest, priority)| Message::Request {
                        id,
                        fork,
                        block,
                        hash,
                        seek: seek.map(|(bytes, padding)| RequestSeek { bytes, padding }),
                        upgrade: upgrade.map(|(start, length)| RequestUpgrade { start, length }),
                        manifest,
                        priority,
                    }
                ),
            any::<u64>().prop_map(|request| Message::Cancel { request }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of((any::<u64>(), bytes(), nodes())),
                proptest::option::of((any::<u64>(), nodes())),
                proptest::option::of((
                    any::<u64>(),
                    any::<u64>(),
                    nodes(),
                    nodes(),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 1..70))
                )),
                proptest::option::of(bytes())
            )
                .prop_map(|(request, fork, block, hash, upgrade, manifest)| {
                    Message::Data {
                        request,
                        fork,
                        block: block.map(|(index, value, nodes)| DataBlock {
                            index,
                            value,
                            nodes,
                        }),
                        hash: hash
                            .clone()
                            .map(|(index, nodes)| DataNodes { index, nodes }),
                        seek: hash.map(|(index, nodes)| DataNodes {
                            index: index / 2,
                            nodes,
                        }),
                        upgrade: upgrade.map(|(start, length, nodes, additional, signature)| {
                            DataUpgrade {
                                start,
                                length,
                                nodes,
                                additional,
                                signature,
                            }
                        }),
                        manifest,
                    }
                }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(request, reason)| Message::NoData { request, reason }),
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(start, length, any)| Message::Want { start, length, any }),
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(start, length, any)| Message::Unwant { start, length, any }),
            (any::<u64>(), proptest::collection::vec(any::<u32>(), 0..6))
                .prop_map(|(start, words)| Message::Bitfield { start, words }),
            (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(drop, start, length)| {
                Message::Range {
                    drop,
                    start,
                    length,
                }
            }),
            ("[a-z/]{0,12}", bytes())
                .prop_map(|(name, message)| Message::Extension { name, message }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(m in message()) {
            let bytes = m.encode();
            // A Data message's buffer was allocated once, at its full size.
            let data = matches!(m, Message::Data { .. });
            prop_assert!(!data || bytes.len() <= m.size_hint(), "size hint too small");
            prop_assert_eq!(Message::decode(m.kind(), &bytes), Ok(m));
        }

        #[test]
        fn frames_round_trip(ms in proptest::collection::vec((1u64..5, message()), 1..5)) {
            let payloads: Vec<(u64, u64, Vec<u8>)> = ms.iter().map(|(c, m)| (*c, m.kind(), m.encode())).collect();
            let items: Vec<Item<'_>> = payloads.iter().map(|(channel, kind, p)| Item::Message { channel: *channel, kind: *kind, payload: p }).collect();
            let mut all = items.clone();
            all.push(Item::Close { id: 3 });
            let batch = encode_batch(&all);
            prop_assert_eq!(decode_frame(&batch).unwrap(), all);
            for item in &items {
                let frame = encode_item(item);
                prop_assert_eq!(decode_frame(&frame).unwrap(), vec![item.clone()]);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(kind in 0u64..12, b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(kind, &b);
            let _ = decode_frame(&b);
            let _ = Handshake::decode(&b);
        }
    }

    #[test]
    fn capabilities_use_the_javascript_namespaces() {
        // caps.js: [TREE, REPLICATE_INITIATOR, REPLICATE_RESPONDER, ...] = namespace('hypercore', 6)
        let ns = |i| hex::encode(crate::manifest::namespace("hypercore", i));
        assert!(ns(1).starts_with("51812a2a359b5036"), "{}", ns(1));
        assert!(ns(2).starts_with("0438492d02970cc1"), "{}", ns(2));
        let (key, hash) = ([2u8; 32], [1u8; 64]);
        assert_ne!(
            capability(true, &key, &hash),
            capability(false, &key, &hash)
        );
        assert_ne!(
            capability(true, &key, &hash),
            capability(true, &key, &[3; 64])
        );
    }

    #[test]
    fn control_frames() {
        let open = Item::Open {
            id: 1,
            protocol: "hypercore/alpha".into(),
            key: Some(&[7; 32]),
            handshake: &[1, 9, 9],
        };
        let f = encode_item(&open);
        assert_eq!(&f[..3], &[0, 1, 1]);
        assert_eq!(decode_frame(&f).unwrap(), vec![open]);
        assert_eq!(
            decode_frame(&[0, 2, 5]).unwrap(),
            vec![Item::Reject { id: 5 }]
        );
        assert_eq!(
            decode_frame(&[0, 3, 5]).unwrap(),
            vec![Item::Close { id: 5 }]
        );
        assert!(matches!(
            decode_frame(&[0, 9]),
            Err(WireError::UnknownType { .. })
        ));
        assert_eq!(decode_frame(&[]).unwrap(), vec![]);
        let h = Handshake {
            seeks: true,
            capability: [3; 32],
        };
        assert_eq!(Handshake::decode(&h.encode()).unwrap(), h);
        // Nested batches are not a thing: a batch inside a batch is refused.
        assert!(decode_frame(&[0, 0, 0, 2, 0, 0]).is_err());
    }
}
