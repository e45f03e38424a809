//! Protomux frame normalization between JavaScript peers and `hypercore-protocol` 0.7.2.
//!
//! Every decrypted secret-stream message is one protomux frame:
//! - `uint channel(>0), uint type, payload`           one channel message
//! - `0, 0, uint channel, (uint len, bytes)*`           a batch; `len == 0` means "next uint is
//!                                                      the new channel"; channel 0 inside a batch
//!                                                      carries a control message `type, body`
//! - `0, 1, open` / `0, 2, uint id` (reject) / `0, 3, uint id` (close)
//!
//! `hypercore-protocol` mis-parses three things JS sends (see docs/replication-notes.md):
//! control messages inside a batch, batch entries whose message decodes shorter than `len`
//! (JS 11 NoData/Want/Unwant trailing fields, Data.manifest, Request.seek.padding), and the
//! Extension payload (JS: raw bytes to the end; Rust: a length-prefixed buffer). Reject kills it.
//!
//! Inbound, [`normalize_inbound`] turns one JS frame into several frames the crate decodes
//! exactly: single messages, re-encoded canonically. Outbound, [`normalize_outbound`] rewrites
//! Extension messages so `Extension.message` is the raw wire payload in both directions.

use compact_encoding::CompactEncoding;
use hypercore_protocol::schema::{
    Bitfield, Cancel, Data, NoData, Range, Synchronize, Unwant, Want,
};

pub fn read_uint(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    match first {
        0..=0xfc => Some((first as u64, rest)),
        0xfd if rest.len() >= 2 => Some((u16::from_le_bytes([rest[0], rest[1]]) as u64, &rest[2..])),
        0xfe if rest.len() >= 4 => Some((
            u32::from_le_bytes(rest[..4].try_into().unwrap()) as u64,
            &rest[4..],
        )),
        0xff if rest.len() >= 8 => Some((u64::from_le_bytes(rest[..8].try_into().unwrap()), &rest[8..])),
        _ => None,
    }
}

pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0xfd {
        out.push(v as u8);
    } else if v <= 0xffff {
        out.push(0xfd);
        out.extend((v as u16).to_le_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xfe);
        out.extend((v as u32).to_le_bytes());
    } else {
        out.push(0xff);
        out.extend(v.to_le_bytes());
    }
}

fn read_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = read_uint(b)?;
    let len = usize::try_from(len).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// What the inbound normalizer saw that the session may want to know.
#[derive(Debug, Default)]
pub struct InboundNotes {
    /// Local channel ids the remote rejected (`0, 2, id`): our Open for them will never complete.
    pub rejected: Vec<u64>,
    /// Messages dropped because they were malformed or of an unknown type.
    pub dropped: usize,
    /// Batches split, control messages found inside batches, messages whose canonical
    /// re-encoding differs from what JS sent (trailing fields trimmed, extension re-wrapped).
    pub batches: usize,
    pub control_in_batch: usize,
    pub rewritten: usize,
    pub rewritten_types: Vec<u64>,
}

/// Splits one decrypted JS frame into frames `hypercore-protocol` decodes exactly.
pub fn normalize_inbound(frame: &[u8], notes: &mut InboundNotes) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if frame.is_empty() {
        return out; // keepalive
    }
    let Some((ch, rest)) = read_uint(frame) else {
        notes.dropped += 1;
        return out;
    };
    if ch != 0 {
        single(ch, rest, &mut out, notes);
        return out;
    }
    control(rest, &mut out, notes);
    out
}

fn control(rest: &[u8], out: &mut Vec<Vec<u8>>, notes: &mut InboundNotes) {
    let Some((typ, body)) = read_uint(rest) else {
        notes.dropped += 1;
        return;
    };
    match typ {
        0 => {
            notes.batches += 1;
            let Some((mut ch, mut b)) = read_uint(body) else {
                notes.dropped += 1;
                return;
            };
            while !b.is_empty() {
                let Some((len, r)) = read_uint(b) else {
                    notes.dropped += 1;
                    return;
                };
                if len == 0 {
                    let Some((c, r)) = read_uint(r) else {
                        notes.dropped += 1;
                        return;
                    };
                    ch = c;
                    b = r;
                    continue;
                }
                let len = len as usize;
                if r.len() < len {
                    notes.dropped += 1;
                    return;
                }
                let (msg, r) = r.split_at(len);
                if ch == 0 {
                    notes.control_in_batch += 1;
                    control(msg, out, notes);
                } else {
                    single(ch, msg, out, notes);
                }
                b = r;
            }
        }
        1 | 3 => {
            let mut f = vec![0u8];
            write_uint(&mut f, typ);
            f.extend_from_slice(body);
            out.push(f);
        }
        2 => {
            if let Some((id, _)) = read_uint(body) {
                notes.rejected.push(id);
            }
        }
        _ => notes.dropped += 1,
    }
}

fn canon<T: CompactEncoding>(payload: &[u8]) -> Option<Vec<u8>> {
    let (v, _rest_ignored) = T::decode(payload).ok()?;
    Some(v.to_encoded_bytes().ok()?.into_vec())
}

/// Request with `seek.padding` (JS 11) dropped; Rust's RequestSeek has only `bytes`.
fn canon_request(p: &[u8]) -> Option<Vec<u8>> {
    let (flags, r) = read_uint(p)?;
    let (id, r) = read_uint(r)?;
    let (fork, mut r) = read_uint(r)?;
    let mut out = Vec::new();
    write_uint(&mut out, flags);
    write_uint(&mut out, id);
    write_uint(&mut out, fork);
    let copy = |n: usize, r: &mut &[u8], out: &mut Vec<u8>, keep: usize| -> Option<()> {
        for i in 0..n {
            let (v, rr) = read_uint(r)?;
            if i < keep {
                write_uint(out, v);
            }
            *r = rr;
        }
        Some(())
    };
    if flags & 1 != 0 {
        copy(2, &mut r, &mut out, 2)?; // block {index, nodes}
    }
    if flags & 2 != 0 {
        copy(2, &mut r, &mut out, 2)?; // hash {index, nodes}
    }
    if flags & 4 != 0 {
        copy(2, &mut r, &mut out, 1)?; // seek {bytes, padding} -> {bytes}
    }
    if flags & 8 != 0 {
        copy(2, &mut r, &mut out, 2)?; // upgrade {start, length}
    }
    if flags & 32 != 0 {
        copy(1, &mut r, &mut out, 1)?; // priority
    }
    Some(out)
}

fn single(ch: u64, msg: &[u8], out: &mut Vec<Vec<u8>>, notes: &mut InboundNotes) {
    let Some((typ, p)) = read_uint(msg) else {
        notes.dropped += 1;
        return;
    };
    let p_len = p.len();
    let payload = match typ {
        0 => canon::<Synchronize>(p),
        1 => canon_request(p),
        2 => canon::<Cancel>(p),
        3 => canon::<Data>(p),
        4 => canon::<NoData>(p),
        5 => canon::<Want>(p),
        6 => canon::<Unwant>(p),
        7 => canon::<Bitfield>(p),
        8 => canon::<Range>(p),
        9 => read_bytes(p).map(|(name, raw)| {
            // JS: string name, raw message to the end. Rust decodes a length-prefixed buffer,
            // so wrap the raw bytes: the session then sees exactly what JS put on the wire.
            let mut v = Vec::new();
            write_uint(&mut v, name.len() as u64);
            v.extend_from_slice(name);
            write_uint(&mut v, raw.len() as u64);
            v.extend_from_slice(raw);
            v
        }),
        _ => None,
    };
    match payload {
        Some(p) => {
            if p.as_slice() != &msg[msg.len() - p_len..] || typ == 9 {
                notes.rewritten += 1;
                if !notes.rewritten_types.contains(&typ) {
                    notes.rewritten_types.push(typ);
                }
            }
            let mut f = Vec::with_capacity(p.len() + 4);
            write_uint(&mut f, ch);
            write_uint(&mut f, typ);
            f.extend(p);
            out.push(f);
        }
        None => notes.dropped += 1,
    }
}

/// `(local channel id, discovery key)` of an outbound Open frame `0, 1, id, protocol, dk, ..`.
pub fn parse_open(frame: &[u8]) -> Option<(u64, [u8; 32])> {
    let rest = frame.strip_prefix(&[0u8, 1])?;
    let (id, rest) = read_uint(rest)?;
    let (_protocol, rest) = read_bytes(rest)?;
    let (dk, _) = read_bytes(rest)?;
    Some((id, dk.try_into().ok()?))
}

/// Rewrites Extension messages in a frame produced by `hypercore-protocol` so the payload after
/// the name is the raw message (no length prefix), as JS expects. Other frames pass unchanged.
pub fn normalize_outbound(frame: Vec<u8>) -> Vec<u8> {
    fn fix_msg(msg: &[u8]) -> Option<Vec<u8>> {
        let (typ, p) = read_uint(msg)?;
        if typ != 9 {
            return None;
        }
        let (name, r) = read_bytes(p)?;
        let (raw, _) = read_bytes(r)?;
        let mut v = Vec::new();
        write_uint(&mut v, 9);
        write_uint(&mut v, name.len() as u64);
        v.extend_from_slice(name);
        v.extend_from_slice(raw);
        Some(v)
    }
    let Some((ch, rest)) = read_uint(&frame) else {
        return frame;
    };
    if ch != 0 {
        return match fix_msg(rest) {
            Some(m) => {
                let mut f = Vec::new();
                write_uint(&mut f, ch);
                f.extend(m);
                f
            }
            None => frame,
        };
    }
    // batch from hypercore-protocol: 0, 0, channel, (len, msg)*, 0, channel, ...
    let Some((0, body)) = read_uint(rest) else {
        return frame;
    };
    let Some((first, mut b)) = read_uint(body) else {
        return frame;
    };
    let mut f = vec![0, 0];
    write_uint(&mut f, first);
    while !b.is_empty() {
        let Some((len, r)) = read_uint(b) else {
            return frame;
        };
        if len == 0 {
            let Some((c, r)) = read_uint(r) else {
                return frame;
            };
            f.push(0);
            write_uint(&mut f, c);
            b = r;
            continue;
        }
        if r.len() < len as usize {
            return frame;
        }
        let (msg, r) = r.split_at(len as usize);
        let m = fix_msg(msg).unwrap_or_else(|| msg.to_vec());
        write_uint(&mut f, m.len() as u64);
        f.extend(m);
        b = r;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_with_control_and_trailing_fields() {
        // batch: channel 1: NoData{request 5, flags 0}; switch to channel 0: close(2)
        let frame = [0u8, 0, 1, 3, 4, 5, 0, 0, 0, 2, 3, 2];
        let mut notes = InboundNotes::default();
        let out = normalize_inbound(&frame, &mut notes);
        assert_eq!(out, vec![vec![1, 4, 5], vec![0, 3, 2]]);
    }

    #[test]
    fn request_seek_padding_dropped() {
        // flags seek(4), id 7, fork 0, seek bytes 100 padding 0
        let frame = [1u8, 1, 4, 7, 0, 100, 0];
        let mut notes = InboundNotes::default();
        assert_eq!(normalize_inbound(&frame, &mut notes), vec![vec![1, 1, 4, 7, 0, 100]]);
    }

    #[test]
    fn extension_round_trip_is_raw() {
        let js = [1u8, 9, 2, b'h', b'b', 0xAA, 0xBB, 0xCC];
        let mut notes = InboundNotes::default();
        let rust = normalize_inbound(&js, &mut notes);
        assert_eq!(rust, vec![vec![1, 9, 2, b'h', b'b', 3, 0xAA, 0xBB, 0xCC]]);
        assert_eq!(normalize_outbound(rust[0].clone()), js.to_vec());
    }
}
