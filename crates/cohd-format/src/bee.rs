//! Hyperbee's block messages (protobuf, as in hyperbee's `messages.js`).
//!
//! Block 0 of a bee is a [`BeeHeader`]; every later block is a [`BeeNode`] whose `index` field holds
//! an encoded [`YoloIndex`]: the B-tree nodes this block changed. Encoders write fields in field
//! number order and omit empty optional/packed fields, which is what JavaScript writes, so our
//! blocks are byte-identical. Decoders accept any field order and skip unknown fields.

use crate::varint;

/// Why bytes did not decode as a Hyperbee message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end in the middle of a field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A wire type protobuf does not define (3, 4, 6, 7).
    #[error("unsupported protobuf wire type {wire_type} in {message}")]
    WireType {
        /// The message being decoded.
        message: &'static str,
        /// The offending wire type.
        wire_type: u8,
    },
    /// A required field is absent.
    #[error("{message} lacks required field {field}")]
    Missing {
        /// The message being decoded.
        message: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// `children` of a level must come in (seq, offset) pairs.
    #[error("odd number of values in a level's children")]
    OddChildren,
}

/// The `protocol` string every Hyperbee header carries.
pub const PROTOCOL: &str = "hyperbee";

/// Block 0 of a Hyperbee.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BeeHeader {
    /// Always [`PROTOCOL`] for a bee we write.
    pub protocol: String,
    /// `None` when the header has no metadata field at all.
    pub metadata: Option<BeeMetadata>,
}

/// Header metadata; Hyperdrive keeps the blobs key of a compat drive in `content_feed`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BeeMetadata {
    /// The blobs core key (compat drives), or `None`.
    pub content_feed: Option<Vec<u8>>,
    /// Free-form user data.
    pub user_data: Option<Vec<u8>>,
}

/// One B-tree node in a [`YoloIndex`]: key seqs plus children as (seq, level offset).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Level {
    /// Seq of the block that holds each key, in key order.
    pub keys: Vec<u64>,
    /// Flattened pairs `(seq, offset)`: child `i` is `levels[offset]` of block `seq`.
    pub children: Vec<u64>,
}

/// The tree nodes stored with one block; `levels[0]` is the root as of that block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct YoloIndex {
    /// The levels (nodes) of this block.
    pub levels: Vec<Level>,
}

/// A Hyperbee data block: one put (with `value`) or delete (without).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BeeNode {
    /// Encoded [`YoloIndex`].
    pub index: Vec<u8>,
    /// Encoded key.
    pub key: Vec<u8>,
    /// Encoded value; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint::write(out, (field << 3) | 2);
    varint::write(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_packed(out: &mut Vec<u8>, field: u64, values: &[u64]) {
    if values.is_empty() {
        return;
    }
    let len: usize = values.iter().map(|v| varint::len(*v)).sum();
    varint::write(out, (field << 3) | 2);
    varint::write(out, len as u64);
    for v in values {
        varint::write(out, *v);
    }
}

/// A field as read off the wire.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates protobuf fields, failing cleanly on truncation or unknown wire types.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self {
            buf,
            pos: 0,
            message,
        }
    }

    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let t = self.message;
        let tag = varint::read(self.buf, &mut self.pos).ok_or(DecodeError::Truncated(t))?;
        let field = tag >> 3;
        let value = match (tag & 7) as u8 {
            0 => Field::Varint(
                varint::read(self.buf, &mut self.pos).ok_or(DecodeError::Truncated(t))?,
            ),
            1 => {
                self.skip(8)?;
                Field::Other
            }
            2 => {
                let len = varint::read(self.buf, &mut self.pos).ok_or(DecodeError::Truncated(t))?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(t))?;
                let start = self.pos;
                self.skip(len)?;
                Field::Bytes(&self.buf[start..self.pos])
            }
            5 => {
                self.skip(4)?;
                Field::Other
            }
            wire_type => {
                return Err(DecodeError::WireType {
                    message: t,
                    wire_type,
                })
            }
        };
        Ok(Some((field, value)))
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.message))?;
        self.pos = end;
        Ok(())
    }
}

fn read_packed(
    value: Field<'_>,
    into: &mut Vec<u64>,
    what: &'static str,
) -> Result<(), DecodeError> {
    match value {
        Field::Varint(v) => into.push(v),
        Field::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                into.push(varint::read(b, &mut pos).ok_or(DecodeError::Truncated(what))?);
            }
        }
        Field::Other => {}
    }
    Ok(())
}

impl BeeHeader {
    /// The header a Hyperdrive writes: protocol plus metadata (with `contentFeed` for compat drives).
    pub fn for_drive(content_feed: Option<[u8; 32]>) -> Self {
        Self {
            protocol: PROTOCOL.to_string(),
            metadata: Some(BeeMetadata {
                content_feed: content_feed.map(|k| k.to_vec()),
                user_data: None,
            }),
        }
    }

    /// Protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.protocol.len());
        put_bytes(&mut out, 1, self.protocol.as_bytes());
        if let Some(m) = &self.metadata {
            let mut meta = Vec::new();
            if let Some(cf) = &m.content_feed {
                put_bytes(&mut meta, 1, cf);
            }
            if let Some(ud) = &m.user_data {
                put_bytes(&mut meta, 2, ud);
            }
            put_bytes(&mut out, 2, &meta);
        }
        out
    }

    /// Parses protobuf bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut protocol = None;
        let mut metadata = None;
        let mut fields = Fields::new(buf, "Header");
        while let Some((n, v)) = fields.next_field()? {
            match (n, v) {
                (1, Field::Bytes(b)) => {
                    protocol = Some(
                        String::from_utf8(b.to_vec())
                            .map_err(|_| DecodeError::Utf8("Header.protocol"))?,
                    )
                }
                (2, Field::Bytes(b)) => {
                    let mut m = BeeMetadata::default();
                    let mut mf = Fields::new(b, "Metadata");
                    while let Some((n, v)) = mf.next_field()? {
                        match (n, v) {
                            (1, Field::Bytes(b)) => m.content_feed = Some(b.to_vec()),
                            (2, Field::Bytes(b)) => m.user_data = Some(b.to_vec()),
                            _ => {}
                        }
                    }
                    metadata = Some(m);
                }
                _ => {}
            }
        }
        Ok(Self {
            protocol: protocol.ok_or(DecodeError::Missing {
                message: "Header",
                field: "protocol",
            })?,
            metadata,
        })
    }
}

impl YoloIndex {
    /// Protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.levels.len() * 16);
        let mut level_buf = Vec::new();
        for level in &self.levels {
            level_buf.clear();
            put_packed(&mut level_buf, 1, &level.keys);
            put_packed(&mut level_buf, 2, &level.children);
            put_bytes(&mut out, 1, &level_buf);
        }
        out
    }

    /// Parses protobuf bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut levels = Vec::new();
        let mut fields = Fields::new(buf, "YoloIndex");
        while let Some((n, v)) = fields.next_field()? {
            if let (1, Field::Bytes(b)) = (n, v) {
                let mut level = Level::default();
                let mut lf = Fields::new(b, "Level");
                while let Some((n, v)) = lf.next_field()? {
                    match n {
                        1 => read_packed(v, &mut level.keys, "Level.keys")?,
                        2 => read_packed(v, &mut level.children, "Level.children")?,
                        _ => {}
                    }
                }
                if level.children.len() % 2 != 0 {
                    return Err(DecodeError::OddChildren);
                }
                levels.push(level);
            }
        }
        Ok(Self { levels })
    }
}

impl BeeNode {
    /// Protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.index.len() + self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 12,
        );
        put_bytes(&mut out, 1, &self.index);
        put_bytes(&mut out, 2, &self.key);
        if let Some(v) = &self.value {
            put_bytes(&mut out, 3, v);
        }
        out
    }

    /// Parses protobuf bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (mut index, mut key, mut value) = (None, None, None);
        let mut fields = Fields::new(buf, "Node");
        while let Some((n, v)) = fields.next_field()? {
            match (n, v) {
                (1, Field::Bytes(b)) => index = Some(b.to_vec()),
                (2, Field::Bytes(b)) => key = Some(b.to_vec()),
                (3, Field::Bytes(b)) => value = Some(b.to_vec()),
                _ => {}
            }
        }
        Ok(Self {
            index: index.ok_or(DecodeError::Missing {
                message: "Node",
                field: "index",
            })?,
            key: key.ok_or(DecodeError::Missing {
                message: "Node",
                field: "key",
            })?,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drive_header_bytes() {
        let h = BeeHeader::for_drive(None);
        assert_eq!(h.encode(), b"\x0a\x08hyperbee\x12\x00".to_vec());
        assert_eq!(BeeHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn first_drive_block_matches_formats_doc() {
        // formats.md 3.2: block 1 of a drive starts `0a05 0a030a0101 | 12 10 files\0/hello.txt`.
        let index = YoloIndex {
            levels: vec![Level {
                keys: vec![1],
                children: vec![],
            }],
        };
        assert_eq!(index.encode(), vec![0x0a, 0x03, 0x0a, 0x01, 0x01]);
        let node = BeeNode {
            index: index.encode(),
            key: b"files\0/hello.txt".to_vec(),
            value: None,
        };
        let enc = node.encode();
        assert_eq!(&enc[..7], &[0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x01]);
        assert_eq!(&enc[7..9], &[0x12, 0x10]);
    }

    fn level() -> impl Strategy<Value = Level> {
        (
            proptest::collection::vec(any::<u64>(), 0..10),
            proptest::collection::vec(any::<u64>(), 0..5),
        )
            .prop_map(|(keys, c)| Level {
                keys,
                children: c.iter().flat_map(|v| [*v, v % 7]).collect(),
            })
    }

    proptest! {
        #[test]
        fn index_roundtrip(levels in proptest::collection::vec(level(), 0..6)) {
            let idx = YoloIndex { levels };
            prop_assert_eq!(YoloIndex::decode(&idx.encode()).unwrap(), idx);
        }

        #[test]
        fn node_roundtrip(index in proptest::collection::vec(any::<u8>(), 0..40),
                          key in proptest::collection::vec(any::<u8>(), 0..40),
                          value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))) {
            let n = BeeNode { index, key, value };
            prop_assert_eq!(BeeNode::decode(&n.encode()).unwrap(), n);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BeeNode::decode(&bytes);
            let _ = YoloIndex::decode(&bytes);
            let _ = BeeHeader::decode(&bytes);
        }
    }
}
