//! The co-drive's records, kept in each writer's db under the `cohd` sub (invisible to file
//! listings, which read the `files` sub): UTF-8 JSON like Hyperdrive's own entries.
//!
//! - `cohd\0m/<16 hex digits>`: a membership record `{"op","key","frontier"}`, one per change,
//!   never overwritten.
//! - `cohd\0v<path>`: the version vector of the writer's latest version of `path`
//!   `{"clock","deleted","time"}`, written in the same batch as the file entry (or its
//!   deletion). `time` (ms since the Unix epoch, the writer's clock) is shown to people and
//!   never orders versions; records written before it existed have none.

use std::collections::BTreeMap;

use cohd_format::{sub, Key};
use serde::{Deserialize, Serialize};

use super::view::{Clock, MemberOp};
use crate::bee::Range;

/// The sub the co-drive's records live in.
const SUB: &str = "cohd";

fn db_key(k: &str) -> Vec<u8> {
    sub::encode(SUB, k.as_bytes())
}

/// The db key of membership record number `n`.
pub fn member_key(n: u64) -> Vec<u8> {
    db_key(&format!("m/{n:016x}"))
}

/// The db key of the version record of normalized `path`.
pub fn version_key(path: &str) -> Vec<u8> {
    db_key(&format!("v{path}"))
}

/// The path a version record's db key names; `None` if `key` is no version record's.
pub fn version_path(key: &[u8]) -> Option<&[u8]> {
    sub::decode(SUB, key)?.strip_prefix(b"v")
}

/// Every membership record (in record order: the number is fixed-width hex).
pub(crate) fn members() -> Range {
    Range::exclusive(db_key("m/"), db_key("m0"))
}

/// Every version record (paths start with `/`).
pub(crate) fn versions() -> Range {
    Range::exclusive(db_key("v/"), db_key("v0"))
}

#[derive(Serialize, Deserialize)]
struct MemberJson {
    op: String,
    key: String,
    frontier: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct VersionJson {
    clock: BTreeMap<String, u64>,
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<u64>,
}

/// Why a record does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not the JSON shape.
    #[error("malformed co-drive record: {0}")]
    Json(#[from] serde_json::Error),
    /// A key inside is not a key.
    #[error("malformed co-drive record: {0}")]
    Key(#[from] cohd_format::KeyError),
    /// Unknown membership op.
    #[error("unknown membership op {0:?}")]
    Op(String),
}

fn clock_to_json(c: &Clock) -> BTreeMap<String, u64> {
    c.iter().map(|(k, v)| (k.to_hex(), *v)).collect()
}

fn clock_from_json(c: BTreeMap<String, u64>) -> Result<Clock, RecordError> {
    c.into_iter()
        .map(|(k, v)| Ok((k.parse::<Key>()?, v)))
        .collect()
}

/// Encodes a membership record.
pub fn encode_member(op: MemberOp, frontier: &Clock) -> Vec<u8> {
    let (name, key) = match op {
        MemberOp::Authorize(k) => ("authorize", k),
        MemberOp::Deauthorize(k) => ("deauthorize", k),
    };
    serde_json::to_vec(&MemberJson {
        op: name.into(),
        key: key.to_hex(),
        frontier: clock_to_json(frontier),
    })
    .unwrap_or_default()
}

/// Decodes a membership record.
pub fn decode_member(bytes: &[u8]) -> Result<(MemberOp, Clock), RecordError> {
    let m: MemberJson = serde_json::from_slice(bytes)?;
    let key: Key = m.key.parse()?;
    let op = match m.op.as_str() {
        "authorize" => MemberOp::Authorize(key),
        "deauthorize" => MemberOp::Deauthorize(key),
        other => return Err(RecordError::Op(other.to_string())),
    };
    Ok((op, clock_from_json(m.frontier)?))
}

/// Encodes a version record.
pub fn encode_version(clock: &Clock, deleted: bool, time: Option<u64>) -> Vec<u8> {
    serde_json::to_vec(&VersionJson {
        clock: clock_to_json(clock),
        deleted,
        time,
    })
    .unwrap_or_default()
}

/// A decoded version record: its clock, whether it is a delete, and when it was written.
pub type VersionRecord = (Clock, bool, Option<u64>);

/// Decodes a version record.
pub fn decode_version(bytes: &[u8]) -> Result<VersionRecord, RecordError> {
    let v: VersionJson = serde_json::from_slice(bytes)?;
    Ok((clock_from_json(v.clock)?, v.deleted, v.time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let c: Clock = [(Key([1; 32]), 5), (Key([2; 32]), 9)].into_iter().collect();
        assert_eq!(
            decode_member(&encode_member(MemberOp::Deauthorize(Key([3; 32])), &c)).unwrap(),
            (MemberOp::Deauthorize(Key([3; 32])), c.clone())
        );
        assert_eq!(
            decode_version(&encode_version(&c, true, Some(1_765_000_000_123))).unwrap(),
            (c.clone(), true, Some(1_765_000_000_123))
        );
        // Records written before times existed still read.
        let old = br#"{"clock":{},"deleted":false}"#;
        assert_eq!(decode_version(old).unwrap(), (Clock::new(), false, None));
        assert!(!String::from_utf8(encode_version(&c, false, None))
            .unwrap()
            .contains("time"));
        assert!(decode_member(b"{}").is_err());
        assert!(decode_member(br#"{"op":"x","key":"00","frontier":{}}"#).is_err());
        assert!(decode_version(br#"{"clock":{"nothex":1},"deleted":false}"#).is_err());
        assert!(decode_version(b"\xff").is_err());
    }
}
