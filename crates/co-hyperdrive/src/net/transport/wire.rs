//! Protomux frame normalization between JavaScript peers and `hypercore-protocol` 0.7.2.
//!
//! Every decrypted secret-stream message is one protomux frame:
//!
//! ```text
//! uint channel(>0), uint type, payload         one channel message
//! 0, 0, uint channel, (uint len, bytes)*       a batch: len == 0 means "the next uint is the new
//!                                              channel"; channel 0 inside a batch carries a
//!                                              control message (type, body)
//! 0, 1, open  /  0, 2, uint id  /  0, 3, uint id     open / reject / close
//! (empty)                                       a keepalive
//! ```
//!
//! `hypercore-protocol` mis-parses several things JS sends (docs/replication-notes.md §7.1):
//! multi-channel batches, control messages inside a batch, messages with trailing fields it does
//! not know (JS 11 NoData reason, Want/Unwant `any`, Data `manifest`, Request seek `padding`),
//! Reject frames, and the Extension payload (JS: raw bytes to the end of the message; the crate:
//! a length-prefixed buffer). Its decoders also trust length prefixes when allocating.
//!
//! Inbound, [`Inbound::normalize`] checks one frame completely and turns it into single-message
//! frames the crate decodes exactly (nothing left over), and reports Rejects separately.
//! Outbound, [`normalize_outbound`] rewrites Extension messages so that `Extension.message` is
//! the raw wire payload in both directions.

use std::collections::HashMap;
use std::fmt;

/// The protomux protocol name of hypercore replication channels.
pub(crate) const PROTOCOL_NAME: &str = "hypercore/alpha";

/// How deep batches may nest (protomux allows a batch inside a batch; nobody sends that).
const MAX_BATCH_DEPTH: usize = 2;

/// Size of a tree node on the wire at least: `uint index, uint size, fixed32 hash`.
const MIN_NODE_LEN: usize = 34;

/// A frame the remote sent that cannot be decoded. It ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

/// A bounds-checked reader of compact-encoding values.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(err(format!(
                "truncated: needs {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A compact-encoding `uint`.
    fn uint(&mut self) -> Result<u64, WireError> {
        let first = self.take(1)?[0];
        Ok(match first {
            0..=0xfc => u64::from(first),
            0xfd => {
                let b = self.take(2)?;
                u64::from(u16::from_le_bytes([b[0], b[1]]))
            }
            0xfe => {
                let b = self.take(4)?;
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            0xff => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                u64::from_le_bytes(a)
            }
        })
    }

    /// A flags `uint` that `hypercore-protocol` reads as one raw byte.
    fn flags(&mut self) -> Result<u64, WireError> {
        let f = self.uint()?;
        if f >= 0xfd {
            return Err(err(format!("unsupported flags {f:#x}")));
        }
        Ok(f)
    }

    fn len(&mut self) -> Result<usize, WireError> {
        let n = self.uint()?;
        usize::try_from(n).map_err(|_| err(format!("length {n} does not fit in memory")))
    }

    /// A compact-encoding `buffer` / `string`: `uint len, bytes`.
    fn buffer(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.len()?;
        self.take(n)
    }

    /// An array of tree nodes. Walked, not allocated: the count comes from the remote.
    fn nodes(&mut self) -> Result<(), WireError> {
        let n = self.len()?;
        if n > self.buf.len() / MIN_NODE_LEN {
            return Err(err(format!(
                "{n} tree nodes announced in {} bytes",
                self.buf.len()
            )));
        }
        for _ in 0..n {
            self.uint()?;
            self.uint()?;
            self.take(32)?;
        }
        Ok(())
    }
}

/// A compact-encoding `uint`.
pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0xfd {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(0xfd);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(0xff);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn write_buffer(out: &mut Vec<u8>, b: &[u8]) {
    write_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// What one inbound frame turned into.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Normalized {
    /// Frames for `hypercore-protocol`, one message each, in order.
    pub(crate) frames: Vec<Vec<u8>>,
    /// Our local channel ids the remote rejected (`0, 2, id`).
    pub(crate) rejected: Vec<u64>,
}

/// Per-connection state of the inbound normalizer.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    /// Remote channel id -> the last extension name received on it (JS sends `""` for "the same
    /// name as last time"; see `Peer.onextension` in hypercore's replicator.js).
    last_ext: HashMap<u64, Vec<u8>>,
    /// Highest remote channel id opened so far. Like protomux, a new id may exceed it by one at
    /// most, which also bounds the id table `hypercore-protocol` sizes by the id.
    max_remote_id: u64,
}

impl Inbound {
    /// Checks one decrypted frame and splits it into frames `hypercore-protocol` decodes exactly.
    ///
    /// Empty frames (keepalives), unknown message types and Opens of other protocols are dropped,
    /// as protomux does. A malformed frame is an error: the whole frame is refused.
    pub(crate) fn normalize(&mut self, frame: &[u8]) -> Result<Normalized, WireError> {
        let mut out = Normalized::default();
        if frame.is_empty() {
            return Ok(out);
        }
        let mut r = Reader::new(frame);
        let ch = r.uint()?;
        if ch == 0 {
            self.control(r.rest(), 0, &mut out)?;
        } else {
            self.single(ch, r.rest(), &mut out)?;
        }
        Ok(out)
    }

    fn control(&mut self, msg: &[u8], depth: usize, out: &mut Normalized) -> Result<(), WireError> {
        let mut r = Reader::new(msg);
        let typ = r.uint()?;
        match typ {
            0 => self.batch(r, depth, out),
            1 => self.open(r, out),
            2 => {
                let id = r
                    .uint()
                    .map_err(|e| err(format!("malformed Reject: {e}")))?;
                out.rejected.push(id);
                Ok(())
            }
            3 => {
                let id = r.uint().map_err(|e| err(format!("malformed Close: {e}")))?;
                self.last_ext.remove(&id);
                let mut f = vec![0, 3];
                write_uint(&mut f, id);
                out.frames.push(f);
                Ok(())
            }
            other => {
                tracing::debug!(typ = other, "ignoring unknown protomux control message");
                Ok(())
            }
        }
    }

    fn batch(
        &mut self,
        mut r: Reader<'_>,
        depth: usize,
        out: &mut Normalized,
    ) -> Result<(), WireError> {
        if depth >= MAX_BATCH_DEPTH {
            return Err(err("batches nested too deeply"));
        }
        let bad = |e: WireError| err(format!("malformed batch: {e}"));
        let mut ch = r.uint().map_err(bad)?;
        while !r.is_empty() {
            let len = r.len().map_err(bad)?;
            if len == 0 {
                ch = r.uint().map_err(bad)?;
                continue;
            }
            let msg = r.take(len).map_err(bad)?;
            if ch == 0 {
                self.control(msg, depth + 1, out)?;
            } else {
                self.single(ch, msg, out)?;
            }
        }
        Ok(())
    }

    fn open(&mut self, mut r: Reader<'_>, out: &mut Normalized) -> Result<(), WireError> {
        let bad = |e: WireError| err(format!("malformed Open: {e}"));
        let id = r.uint().map_err(bad)?;
        let protocol = r.buffer().map_err(bad)?;
        // optionalBuffer: 0 (null) or a buffer
        let dk = r.buffer().map_err(bad)?;
        if id == 0 || id > self.max_remote_id.saturating_add(1) {
            return Err(err(format!(
                "Open with channel id {id}, after {} channels",
                self.max_remote_id
            )));
        }
        self.max_remote_id = self.max_remote_id.max(id);
        self.last_ext.remove(&id);
        if protocol != PROTOCOL_NAME.as_bytes() {
            tracing::debug!(
                protocol = %String::from_utf8_lossy(protocol),
                "ignoring an Open for another protocol"
            );
            return Ok(());
        }
        if dk.len() != 32 {
            return Err(err(format!("Open with a {}-byte discovery key", dk.len())));
        }
        if r.is_empty() {
            return Err(err("Open without a capability"));
        }
        // hypercore handshake: uint flags (seeks 1), fixed32 capability; later fields ignored
        let flags = r.uint().map_err(bad)?;
        let capability = r.take(32).map_err(bad)?;
        let mut f = vec![0, 1];
        write_uint(&mut f, id);
        write_buffer(&mut f, protocol);
        write_buffer(&mut f, dk);
        f.push((flags & 1) as u8); // the crate reads one raw flags byte
        f.extend_from_slice(capability);
        out.frames.push(f);
        Ok(())
    }

    fn single(&mut self, ch: u64, msg: &[u8], out: &mut Normalized) -> Result<(), WireError> {
        let mut r = Reader::new(msg);
        let typ = r.uint()?;
        let p = r.rest();
        let payload = match typ {
            0 => prefix(p, sync_len),
            1 => canon_request(p),
            2 => prefix(p, |r| r.uint().map(drop)),
            3 => prefix(p, data_len),
            4 => prefix(p, |r| r.uint().map(drop)), // NoData: JS 11 adds flags, reason
            5 | 6 => prefix(p, |r| r.uint().and_then(|_| r.uint()).map(drop)), // JS 11: any
            7 => prefix(p, bitfield_len),
            8 => prefix(p, range_len),
            9 => self.extension(ch, p),
            other => {
                tracing::debug!(channel = ch, typ = other, "ignoring unknown message type");
                return Ok(());
            }
        };
        let payload = payload
            .map_err(|e| err(format!("malformed {} on channel {ch}: {e}", type_name(typ))))?;
        let mut f = Vec::with_capacity(payload.len() + 4);
        write_uint(&mut f, ch);
        write_uint(&mut f, typ);
        f.extend_from_slice(&payload);
        out.frames.push(f);
        Ok(())
    }

    /// JS: `string name, raw message to the end`. The crate decodes a length-prefixed buffer, so
    /// the raw bytes are wrapped in one: the session then sees exactly what JS put on the wire.
    fn extension(&mut self, ch: u64, p: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut r = Reader::new(p);
        let mut name = r.buffer()?;
        if std::str::from_utf8(name).is_err() {
            return Err(err("extension name is not UTF-8"));
        }
        let raw = r.rest();
        if name.is_empty() {
            if let Some(last) = self.last_ext.get(&ch) {
                name = last;
            }
        }
        let mut v = Vec::with_capacity(name.len() + raw.len() + 10);
        write_buffer(&mut v, name);
        write_buffer(&mut v, raw);
        if !name.is_empty() {
            self.last_ext.insert(ch, name.to_vec());
        }
        Ok(v)
    }
}

fn type_name(typ: u64) -> &'static str {
    match typ {
        0 => "Synchronize",
        1 => "Request",
        2 => "Cancel",
        3 => "Data",
        4 => "NoData",
        5 => "Want",
        6 => "Unwant",
        7 => "Bitfield",
        8 => "Range",
        9 => "Extension",
        _ => "message",
    }
}

/// The part of `p` that `hypercore-protocol` decodes, as walked by `shape`; trailing fields it
/// does not know are cut off.
fn prefix(
    p: &[u8],
    shape: impl FnOnce(&mut Reader<'_>) -> Result<(), WireError>,
) -> Result<Vec<u8>, WireError> {
    let mut r = Reader::new(p);
    shape(&mut r)?;
    let used = p.len() - r.rest().len();
    Ok(p[..used].to_vec())
}

/// Synchronize: `flags, fork, length, remote_length` (JS flags 8 and 16 are ignored).
fn sync_len(r: &mut Reader<'_>) -> Result<(), WireError> {
    r.flags()?;
    for _ in 0..3 {
        r.uint()?;
    }
    Ok(())
}

/// Data: `flags, request, fork, block?, hash?, seek?, upgrade?` (JS `manifest`, flag 16, after
/// the upgrade is cut off).
fn data_len(r: &mut Reader<'_>) -> Result<(), WireError> {
    let flags = r.flags()?;
    r.uint()?; // request
    r.uint()?; // fork
    if flags & 1 != 0 {
        r.uint()?; // index
        r.buffer()?; // value
        r.nodes()?;
    }
    if flags & 2 != 0 {
        r.uint()?;
        r.nodes()?;
    }
    if flags & 4 != 0 {
        r.uint()?;
        r.nodes()?;
    }
    if flags & 8 != 0 {
        r.uint()?; // start
        r.uint()?; // length
        r.nodes()?;
        r.nodes()?; // additional nodes
        r.buffer()?; // signature
    }
    Ok(())
}

/// Bitfield: `start, uint32array`. The count is checked before the crate allocates for it.
fn bitfield_len(r: &mut Reader<'_>) -> Result<(), WireError> {
    r.uint()?;
    let n = r.len()?;
    let bytes = n
        .checked_mul(4)
        .ok_or_else(|| err(format!("bitfield of {n} words")))?;
    r.take(bytes)?;
    Ok(())
}

/// Range: `flags(drop 1, length==1 2), start, length unless flag 2`.
fn range_len(r: &mut Reader<'_>) -> Result<(), WireError> {
    let flags = r.flags()?;
    r.uint()?;
    if flags & 2 == 0 {
        r.uint()?;
    }
    Ok(())
}

/// Request without the JS 11 `seek.padding` (the crate's RequestSeek has only `bytes`).
fn canon_request(p: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = Reader::new(p);
    let flags = r.flags()?;
    let mut out = Vec::with_capacity(p.len());
    write_uint(&mut out, flags);
    let mut copy = |r: &mut Reader<'_>, keep: bool| -> Result<(), WireError> {
        let v = r.uint()?;
        if keep {
            write_uint(&mut out, v);
        }
        Ok(())
    };
    copy(&mut r, true)?; // id
    copy(&mut r, true)?; // fork
    if flags & 1 != 0 {
        copy(&mut r, true)?; // block index
        copy(&mut r, true)?; // block nodes
    }
    if flags & 2 != 0 {
        copy(&mut r, true)?; // hash index
        copy(&mut r, true)?; // hash nodes
    }
    if flags & 4 != 0 {
        copy(&mut r, true)?; // seek bytes
        copy(&mut r, false)?; // seek padding
    }
    if flags & 8 != 0 {
        copy(&mut r, true)?; // upgrade start
        copy(&mut r, true)?; // upgrade length
    }
    if flags & 32 != 0 {
        copy(&mut r, true)?; // priority
    }
    Ok(out)
}

/// `(local channel id, discovery key)` of an outbound Open frame `0, 1, id, protocol, dk, ..`.
pub(crate) fn outbound_open(frame: &[u8]) -> Option<(u64, [u8; 32])> {
    let mut r = Reader::new(frame.strip_prefix(&[0u8, 1])?);
    let id = r.uint().ok()?;
    r.buffer().ok()?;
    let dk = r.buffer().ok()?;
    Some((id, dk.try_into().ok()?))
}

/// The local channel id of an outbound Close frame `0, 3, id`.
pub(crate) fn outbound_close(frame: &[u8]) -> Option<u64> {
    Reader::new(frame.strip_prefix(&[0u8, 3])?).uint().ok()
}

/// The protomux type of a Data message.
const DATA: u64 = 3;

/// The encoded size (type and payload, as `Message::encoded_size` counts it) of the Data
/// messages in an outbound frame produced by `hypercore-protocol`: a single message
/// `channel, type, ..` or a batch `0, 0, channel, (len, message | 0, channel)*`.
pub(crate) fn outbound_data_bytes(frame: &[u8]) -> usize {
    fn walk(frame: &[u8]) -> Option<usize> {
        let mut r = Reader::new(frame);
        if r.uint().ok()? != 0 {
            let msg = r.rest();
            return Some(if Reader::new(msg).uint().ok()? == DATA {
                msg.len()
            } else {
                0
            });
        }
        if r.uint().ok()? != 0 {
            return Some(0); // Open / Close
        }
        r.uint().ok()?;
        let mut total = 0;
        while !r.is_empty() {
            let len = r.len().ok()?;
            if len == 0 {
                r.uint().ok()?;
                continue;
            }
            let msg = r.take(len).ok()?;
            if Reader::new(msg).uint().ok()? == DATA {
                total += len;
            }
        }
        Some(total)
    }
    walk(frame).unwrap_or(0)
}

/// Rewrites the Extension messages of a frame produced by `hypercore-protocol` so that the
/// payload after the name is the raw message (no length prefix), as JS expects. Other frames, and
/// frames that do not parse (never produced by the crate), pass unchanged.
pub(crate) fn normalize_outbound(frame: Vec<u8>) -> Vec<u8> {
    match rewrite_outbound(&frame) {
        Some(f) => f,
        None => frame,
    }
}

fn rewrite_outbound(frame: &[u8]) -> Option<Vec<u8>> {
    /// `9, name, buffer message` -> `9, name, raw message`; `None` for other types.
    fn fix_msg(msg: &[u8]) -> Option<Vec<u8>> {
        let mut r = Reader::new(msg);
        if r.uint().ok()? != 9 {
            return None;
        }
        let name = r.buffer().ok()?;
        let raw = r.buffer().ok()?;
        let mut v = Vec::with_capacity(msg.len());
        write_uint(&mut v, 9);
        write_buffer(&mut v, name);
        v.extend_from_slice(raw);
        Some(v)
    }
    let mut r = Reader::new(frame);
    let ch = r.uint().ok()?;
    if ch != 0 {
        let m = fix_msg(r.rest())?;
        let mut f = Vec::with_capacity(frame.len());
        write_uint(&mut f, ch);
        f.extend(m);
        return Some(f);
    }
    // a batch from hypercore-protocol: 0, 0, channel, (len, msg)*, with 0, channel switches
    if r.uint().ok()? != 0 {
        return None; // Open / Close
    }
    let first = r.uint().ok()?;
    let mut f = vec![0, 0];
    write_uint(&mut f, first);
    let mut changed = false;
    while !r.is_empty() {
        let len = r.len().ok()?;
        if len == 0 {
            let c = r.uint().ok()?;
            f.push(0);
            write_uint(&mut f, c);
            continue;
        }
        let msg = r.take(len).ok()?;
        match fix_msg(msg) {
            Some(m) => {
                changed = true;
                write_uint(&mut f, m.len() as u64);
                f.extend(m);
            }
            None => {
                write_uint(&mut f, len as u64);
                f.extend_from_slice(msg);
            }
        }
    }
    changed.then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_encoding::CompactEncoding;
    use hypercore_protocol::schema::{
        Bitfield, Data, Extension, NoData, Range, Request, Synchronize, Want,
    };

    fn norm(frame: &[u8]) -> Result<Normalized, WireError> {
        Inbound::default().normalize(frame)
    }

    fn frames(frame: &[u8]) -> Vec<Vec<u8>> {
        norm(frame).expect("valid frame").frames
    }

    /// Decodes a normalized single-message payload with the crate's own decoder and checks that
    /// nothing is left over (leftovers are what breaks `hypercore-protocol`).
    fn decodes_exactly<T: CompactEncoding + std::fmt::Debug>(payload: &[u8]) -> T {
        let (v, rest) = T::decode(payload).expect("crate decodes it");
        assert!(rest.is_empty(), "left over: {rest:?} after {v:?}");
        v
    }

    #[test]
    fn keepalive_is_dropped() {
        assert_eq!(norm(&[]).unwrap(), Normalized::default());
    }

    #[test]
    fn single_message_passes_unchanged() {
        // channel 1, Synchronize{flags 7, fork 0, length 4, remote_length 0}
        let f = [1u8, 0, 7, 0, 4, 0];
        assert_eq!(frames(&f), vec![f.to_vec()]);
        let s: Synchronize = decodes_exactly(&f[2..]);
        assert_eq!(
            (s.length, s.can_upgrade, s.uploading, s.downloading),
            (4, true, true, true)
        );
    }

    #[test]
    fn multi_channel_batch_is_split() {
        // batch starting on channel 1: Want{0, 8}; switch to channel 2: Range{flags 0, 0, 4},
        // NoData{3}; back to channel 1: Cancel{9}
        let f = [
            0u8, 0, 1, 3, 5, 0, 8, 0, 2, 4, 8, 0, 0, 4, 2, 4, 3, 0, 1, 2, 2, 9,
        ];
        let out = frames(&f);
        assert_eq!(
            out,
            vec![
                vec![1, 5, 0, 8],
                vec![2, 8, 0, 0, 4],
                vec![2, 4, 3],
                vec![1, 2, 9]
            ]
        );
        let w: Want = decodes_exactly(&out[0][2..]);
        assert_eq!((w.start, w.length), (0, 8));
        let r: Range = decodes_exactly(&out[1][2..]);
        assert_eq!((r.drop, r.start, r.length), (false, 0, 4));
    }

    #[test]
    fn control_message_inside_batch() {
        // batch on channel 1: NoData{request 5, flags 0}; switch to channel 0: Close(2);
        // switch to channel 0 again: an Open of channel 1 (corestore corks its Opens this way)
        let mut open = vec![1u8, 1];
        write_buffer(&mut open, PROTOCOL_NAME.as_bytes());
        write_buffer(&mut open, &[7u8; 32]);
        open.push(1); // handshake flags: seeks
        open.extend_from_slice(&[9u8; 32]); // capability
        let mut f = vec![0u8, 0, 1, 3, 4, 5, 0, 0, 0, 2, 3, 2];
        write_uint(&mut f, open.len() as u64);
        f.extend_from_slice(&open);
        let out = frames(&f);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], vec![1, 4, 5]);
        assert_eq!(out[1], vec![0, 3, 2]);
        let mut want_open = vec![0u8];
        want_open.extend_from_slice(&open);
        assert_eq!(out[2], want_open);
    }

    #[test]
    fn nodata_trailing_reason_is_cut() {
        // JS 11: request 5, flags 1 (has reason), reason 2
        let out = frames(&[3u8, 4, 5, 1, 2]);
        assert_eq!(out, vec![vec![3, 4, 5]]);
        let n: NoData = decodes_exactly(&out[0][2..]);
        assert_eq!(n.request, 5);
        // JS 10: request only
        assert_eq!(frames(&[3u8, 4, 5]), vec![vec![3, 4, 5]]);
    }

    #[test]
    fn want_any_flag_is_cut() {
        assert_eq!(
            frames(&[1u8, 5, 0, 0xfd, 0, 1, 1]),
            vec![vec![1, 5, 0, 0xfd, 0, 1]]
        );
    }

    #[test]
    fn reject_is_reported_not_forwarded() {
        let n = norm(&[0u8, 2, 3]).unwrap();
        assert!(n.frames.is_empty());
        assert_eq!(n.rejected, vec![3]);
        // inside a batch, next to a channel message
        let n = norm(&[0u8, 0, 0, 2, 2, 4, 0, 1, 2, 2, 1]).unwrap();
        assert_eq!(n.rejected, vec![4]);
        assert_eq!(n.frames, vec![vec![1, 2, 1]]);
    }

    #[test]
    fn request_seek_padding_dropped() {
        // flags seek(4), id 7, fork 0, seek bytes 100, padding 0
        let out = frames(&[1u8, 1, 4, 7, 0, 100, 0]);
        assert_eq!(out, vec![vec![1, 1, 4, 7, 0, 100]]);
        let r: Request = decodes_exactly(&out[0][2..]);
        assert_eq!(r.seek.map(|s| s.bytes), Some(100));
    }

    #[test]
    fn request_block_upgrade_priority_kept() {
        // flags block|upgrade|priority, id 1, fork 0, block {3, 2}, upgrade {0, 4}, priority 1
        let f = [1u8, 1, 1 | 8 | 32, 1, 0, 3, 2, 0, 4, 1];
        let out = frames(&f);
        assert_eq!(out, vec![f.to_vec()]);
        let r: Request = decodes_exactly(&out[0][2..]);
        assert_eq!(r.block.map(|b| (b.index, b.nodes)), Some((3, 2)));
        assert_eq!(r.upgrade.map(|u| (u.start, u.length)), Some((0, 4)));
        assert_eq!(r.priority, 1);
    }

    #[test]
    fn data_manifest_is_cut() {
        // flags block|manifest(16), request 1, fork 0, block {index 0, value "hi", 1 node},
        // then a manifest the crate does not know
        let mut f = vec![1u8, 3, 1 | 16, 1, 0, 0, 2, b'h', b'i', 1, 2, 2];
        f.extend_from_slice(&[0xaa; 32]);
        let canonical = f.clone();
        f.extend_from_slice(&[0, 1, 2, 3]);
        let out = frames(&f);
        assert_eq!(out, vec![canonical]);
        let d: Data = decodes_exactly(&out[0][2..]);
        let b = d.block.unwrap();
        assert_eq!((b.value.as_slice(), b.nodes.len()), (&b"hi"[..], 1));
    }

    #[test]
    fn bitfield_passes_and_huge_counts_are_refused() {
        let f = [1u8, 7, 0, 2, 1, 0, 0, 0, 2, 0, 0, 0];
        let out = frames(&f);
        let b: Bitfield = decodes_exactly(&out[0][2..]);
        assert_eq!(b.bitfield, vec![1, 2]);
        // a count of 2^62 words would make the crate allocate before it checks
        let mut f = vec![1u8, 7, 0, 0xff];
        f.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(norm(&f).is_err());
        // the same for tree nodes in a Data message
        let mut f = vec![1u8, 3, 2, 1, 0, 5, 0xfe];
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(norm(&f).is_err());
    }

    #[test]
    fn extension_raw_bytes_both_directions() {
        // JS: channel 1, Extension "hb", raw 0xAA 0xBB 0xCC
        let js = [1u8, 9, 2, b'h', b'b', 0xAA, 0xBB, 0xCC];
        let rust = frames(&js);
        assert_eq!(rust, vec![vec![1, 9, 2, b'h', b'b', 3, 0xAA, 0xBB, 0xCC]]);
        let e: Extension = decodes_exactly(&rust[0][2..]);
        assert_eq!(
            (e.name.as_str(), e.message.as_slice()),
            ("hb", &[0xAA, 0xBB, 0xCC][..])
        );
        // and back: what the crate encodes for that Extension is what JS sent
        assert_eq!(normalize_outbound(rust[0].clone()), js.to_vec());
        // an empty raw message
        let js = [1u8, 9, 1, b'x'];
        assert_eq!(frames(&js), vec![vec![1, 9, 1, b'x', 0]]);
        assert_eq!(normalize_outbound(vec![1, 9, 1, b'x', 0]), js.to_vec());
    }

    #[test]
    fn outbound_data_bytes_match_encoded_size() {
        use hypercore_protocol::Message;
        use hypercore_schema::DataBlock;
        let data = |request: u64, len: usize| {
            Message::Data(Data {
                request,
                fork: 0,
                block: Some(DataBlock {
                    index: request,
                    value: vec![7; len],
                    nodes: vec![],
                }),
                hash: None,
                seek: None,
                upgrade: None,
            })
        };
        let bytes = |m: &Message| m.to_encoded_bytes().unwrap().to_vec();
        let size = |m: &Message| m.encoded_size().unwrap();
        let (a, b, c) = (data(1, 300), data(2, 70_000), data(3, 0));
        let other = Message::NoData(NoData { request: 9 });
        // one message alone, as the crate frames it: channel, type, payload
        let mut one = Vec::new();
        write_uint(&mut one, 300);
        one.extend(bytes(&a));
        assert_eq!(outbound_data_bytes(&one), size(&a));
        // a batch over two channels with a message that is not Data:
        // 0, 0, channel, (len, message)*, 0, next channel, ...
        let mut batch = vec![0u8, 0, 1];
        for (switch, m) in [(None, &a), (Some(2), &other), (None, &b), (Some(1), &c)] {
            if let Some(ch) = switch {
                batch.push(0);
                write_uint(&mut batch, ch);
            }
            write_buffer(&mut batch, &bytes(m));
        }
        assert_eq!(outbound_data_bytes(&batch), size(&a) + size(&b) + size(&c));
        let mut none = vec![1u8];
        none.extend(bytes(&other));
        assert_eq!(outbound_data_bytes(&none), 0);
        // Open / Close and frames that do not parse count nothing
        assert_eq!(outbound_data_bytes(&[0, 3, 1]), 0);
        assert_eq!(outbound_data_bytes(&[]), 0);
        assert_eq!(outbound_data_bytes(&[0, 0, 1, 90, 3]), 0);
    }

    #[test]
    fn outbound_batch_extension_rewritten() {
        // crate batch: channel 1: Extension "a" [5, 6]; switch to channel 2: NoData 3
        let f = vec![0u8, 0, 1, 6, 9, 1, b'a', 2, 5, 6, 0, 2, 2, 4, 3];
        assert_eq!(
            normalize_outbound(f),
            vec![0u8, 0, 1, 5, 9, 1, b'a', 5, 6, 0, 2, 2, 4, 3]
        );
        // frames without extensions are untouched
        let f = vec![0u8, 0, 1, 2, 4, 3, 2, 4, 4];
        assert_eq!(normalize_outbound(f.clone()), f);
        assert_eq!(normalize_outbound(vec![0, 3, 1]), vec![0, 3, 1]);
    }

    #[test]
    fn extension_name_decompressed_per_channel() {
        let mut inb = Inbound::default();
        let a = inb
            .normalize(&[1u8, 9, 4, b'p', b'i', b'n', b'g', b'1'])
            .unwrap();
        assert_eq!(
            a.frames,
            vec![vec![1, 9, 4, b'p', b'i', b'n', b'g', 1, b'1']]
        );
        // "" means "ping" on channel 1 ...
        let b = inb.normalize(&[1u8, 9, 0, b'2']).unwrap();
        assert_eq!(
            b.frames,
            vec![vec![1, 9, 4, b'p', b'i', b'n', b'g', 1, b'2']]
        );
        // ... but nothing on channel 2
        let c = inb.normalize(&[2u8, 9, 0, b'3']).unwrap();
        assert_eq!(c.frames, vec![vec![2, 9, 0, 1, b'3']]);
        // a Close forgets it
        inb.normalize(&[0u8, 3, 1]).unwrap();
        let d = inb.normalize(&[1u8, 9, 0, b'4']).unwrap();
        assert_eq!(d.frames, vec![vec![1, 9, 0, 1, b'4']]);
    }

    #[test]
    fn unknown_types_are_ignored() {
        assert!(frames(&[1u8, 10, 1, 2, 3]).is_empty()); // reorgHint-like future message
        assert!(frames(&[0u8, 7, 1]).is_empty()); // unknown control message
    }

    #[test]
    fn open_ids_grow_by_one_and_other_protocols_are_ignored() {
        let open = |id: u8, protocol: &str| {
            let mut f = vec![0u8, 1, id];
            write_buffer(&mut f, protocol.as_bytes());
            write_buffer(&mut f, &[1u8; 32]);
            f.push(0);
            f.extend_from_slice(&[2u8; 32]);
            f
        };
        let mut inb = Inbound::default();
        assert_eq!(
            inb.normalize(&open(1, PROTOCOL_NAME)).unwrap().frames.len(),
            1
        );
        assert!(inb
            .normalize(&open(2, "other/proto"))
            .unwrap()
            .frames
            .is_empty());
        assert_eq!(
            inb.normalize(&open(3, PROTOCOL_NAME)).unwrap().frames.len(),
            1
        );
        assert_eq!(
            inb.normalize(&open(1, PROTOCOL_NAME)).unwrap().frames.len(),
            1
        ); // reuse
        assert!(inb.normalize(&open(9, PROTOCOL_NAME)).is_err()); // skips ids
        assert!(inb.normalize(&open(0, PROTOCOL_NAME)).is_err());
        // an Open without capability or with a short discovery key
        let mut f = vec![0u8, 1, 4];
        write_buffer(&mut f, PROTOCOL_NAME.as_bytes());
        write_buffer(&mut f, &[1u8; 32]);
        assert!(inb.normalize(&f).is_err());
        let mut f = vec![0u8, 1, 4];
        write_buffer(&mut f, PROTOCOL_NAME.as_bytes());
        write_buffer(&mut f, &[1u8; 31]);
        f.push(0);
        f.extend_from_slice(&[2u8; 32]);
        assert!(inb.normalize(&f).is_err());
        // trailing handshake fields are cut
        let mut f = open(4, PROTOCOL_NAME);
        let canonical = f[1..].to_vec();
        f.extend_from_slice(&[5, 5]);
        let out = inb.normalize(&f).unwrap().frames;
        assert_eq!(out[0][1..], canonical[..]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bad in [
            &[1u8][..],                   // channel, no type
            &[1, 0, 7, 0],                // truncated Synchronize
            &[1, 3, 1, 1, 0, 0, 9, 1],    // Data value longer than the frame
            &[0, 0, 1, 5, 4, 1],          // batch entry longer than the batch
            &[0, 0, 1, 2, 4],             // same, at the end
            &[0, 2],                      // Reject without id
            &[0, 3],                      // Close without id
            &[1, 9, 5, b'a'],             // extension name runs past the end
            &[1, 9, 2, 0xff, 0xfe, 1],    // extension name not UTF-8
            &[1, 0, 0xfd, 0, 1, 0, 0, 0], // flags the crate would read as one byte
            &[0xff, 1],                   // truncated channel uint
        ] {
            assert!(norm(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn nested_batches_are_bounded() {
        // batch(ch 0: batch(ch 0: batch(...))) nested deeper than allowed
        let mut inner = vec![0u8, 0, 1, 2, 2, 1]; // control type 0 body: channel 1, Cancel 1
        for _ in 0..4 {
            let mut outer = vec![0u8, 0, 0];
            write_uint(&mut outer, inner.len() as u64 - 1);
            outer.extend_from_slice(&inner[1..]);
            inner = outer;
        }
        assert!(norm(&inner).is_err());
        // one level of nesting is fine
        let f = [0u8, 0, 0, 5, 0, 1, 2, 2, 1];
        assert_eq!(frames(&f), vec![vec![1, 2, 1]]);
    }

    #[test]
    fn outbound_open_and_close_are_parsed() {
        let mut f = vec![0u8, 1, 3];
        write_buffer(&mut f, PROTOCOL_NAME.as_bytes());
        write_buffer(&mut f, &[4u8; 32]);
        assert_eq!(outbound_open(&f), Some((3, [4u8; 32])));
        assert_eq!(outbound_close(&[0, 3, 3]), Some(3));
        assert_eq!(outbound_open(&[1, 0, 0]), None);
    }
}
