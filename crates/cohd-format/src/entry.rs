//! Hyperdrive's file entry (UTF-8 JSON in the bee) and Hyperblobs' blob id.
//!
//! Field order matters for byte-compatible blocks: `executable, linkname, blob, metadata`, and
//! inside a blob id `blockOffset, byteOffset, blockLength, byteLength[, blockMap]`, as JavaScript
//! Hyperdrive writes them. Decoding is lenient about absent fields (JS `putEntry` may omit them).

use serde::{Deserialize, Serialize};

/// Where a file's bytes live in the blobs core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlobId {
    /// Index of the first block.
    pub block_offset: u64,
    /// Byte offset of the first block in the core.
    pub byte_offset: u64,
    /// Number of blocks.
    pub block_length: u64,
    /// Number of bytes.
    pub byte_length: u64,
    /// Set by Hyperblobs' dedup variant: blocks hold maps, not content. We read its flag but
    /// refuse to interpret such blobs (clear error instead of wrong bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_map: bool,
}

impl BlobId {
    /// Checks the internal consistency a well-formed blob id has.
    pub fn validate(&self) -> Result<(), EntryError> {
        if self.block_map {
            return Err(EntryError::BlockMap);
        }
        let blocks_ok = if self.byte_length == 0 {
            true
        } else {
            self.block_length >= 1 && self.block_length <= self.byte_length
        };
        if !blocks_ok
            || self.block_offset.checked_add(self.block_length).is_none()
            || self.byte_offset.checked_add(self.byte_length).is_none()
        {
            return Err(EntryError::BadBlob);
        }
        Ok(())
    }
}

/// A Hyperdrive entry: a file (with `blob`) or a symlink (with `linkname`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Entry {
    /// The executable bit.
    #[serde(default)]
    pub executable: bool,
    /// Symlink target, or `None` for a file.
    #[serde(default)]
    pub linkname: Option<String>,
    /// File content location, `None` for a symlink.
    #[serde(default)]
    pub blob: Option<BlobId>,
    /// Arbitrary user JSON.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Why an entry value is not a usable Hyperdrive entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Not JSON of the entry shape.
    #[error("entry is not valid Hyperdrive JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A blob id whose numbers cannot describe real blocks.
    #[error("entry has an inconsistent blob id")]
    BadBlob,
    /// Hyperblobs' dedup (blockMap) blobs are not supported.
    #[error("entry uses Hyperblobs blockMap blobs, which are not supported")]
    BlockMap,
}

impl Entry {
    /// A file entry.
    pub fn file(blob: BlobId, executable: bool, metadata: Option<serde_json::Value>) -> Self {
        Self {
            executable,
            linkname: None,
            blob: Some(blob),
            metadata,
        }
    }

    /// A symlink entry.
    pub fn symlink(target: String) -> Self {
        Self {
            executable: false,
            linkname: Some(target),
            blob: None,
            metadata: None,
        }
    }

    /// JSON bytes as JavaScript Hyperdrive writes them.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates JSON bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let e: Entry = serde_json::from_slice(bytes)?;
        if let Some(b) = &e.blob {
            b.validate()?;
        }
        Ok(e)
    }

    /// Size in bytes of the file content (0 for symlinks).
    pub fn size(&self) -> u64 {
        self.blob.map_or(0, |b| b.byte_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_field_order() {
        let e = Entry::file(
            BlobId {
                block_offset: 0,
                byte_offset: 0,
                block_length: 1,
                byte_length: 5,
                block_map: false,
            },
            false,
            None,
        );
        assert_eq!(
            String::from_utf8(e.encode()).unwrap(),
            r#"{"executable":false,"linkname":null,"blob":{"blockOffset":0,"byteOffset":0,"blockLength":1,"byteLength":5},"metadata":null}"#
        );
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn lenient_and_validating() {
        assert_eq!(Entry::decode(b"{}").unwrap(), Entry::default());
        assert!(Entry::decode(b"not json").is_err());
        assert!(Entry::decode(
            br#"{"blob":{"blockOffset":0,"byteOffset":0,"blockLength":0,"byteLength":9}}"#
        )
        .is_err());
        assert!(Entry::decode(br#"{"blob":{"blockOffset":18446744073709551615,"byteOffset":0,"blockLength":2,"byteLength":9}}"#).is_err());
    }
}
