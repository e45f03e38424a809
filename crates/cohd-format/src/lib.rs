//! Pure encodings for co-hyperdrive: bytes in, values out, and back. Nothing here does I/O,
//! so every codec can be tested with plain data and property tests.
//!
//! - [`varint`]: protobuf/compact-encoding unsigned varints.
//! - [`bee`]: Hyperbee's `Header`, `Node` and `YoloIndex` protobuf messages.
//! - [`entry`]: Hyperdrive's JSON file entry and Hyperblobs' blob id.
//! - [`path`]: Hyperdrive path normalization and folder ranges.
//! - [`key`]: 32-byte keys in hex or z-base-32.
//! - [`sub`]: Hyperbee sub-encoder key prefixes (`files\0...`).
//! - [`present`]: the store's record of sparse blocks a core holds.
//! - [`compact`]: compact-encoding, Hypercore's own byte layout.
//! - [`merkle`]: Hypercore's Merkle tree hashes and flat-tree arithmetic.
//! - [`manifest`]: Hypercore 11 manifests, core keys, signables, signatures, blobs keys.
//! - [`oplog`]: a core's oplog (headers and entries), decoded completely.
//! - [`proof`]: Hypercore Merkle proofs, made and verified.
//! - [`wire`]: Protomux frames and Hypercore replication messages.

pub mod auth;
pub mod bee;
pub mod compact;
pub mod entry;
pub mod key;
pub mod manifest;
pub mod merkle;
pub mod oplog;
pub mod path;
pub mod present;
pub mod proof;
pub mod sub;
pub mod varint;
pub mod wire;

pub use auth::{AuthKind, AuthMessage};
pub use bee::{BeeHeader, BeeNode, DecodeError, Level, YoloIndex};
pub use entry::{BlobId, Entry, EntryError};
pub use key::{Key, KeyError};
pub use path::{normalize, PathError};
