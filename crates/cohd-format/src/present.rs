//! The `present` file of a core: which blocks beyond the contiguous prefix are stored.
//!
//! hypercore's own bitfield file cannot be reopened past 32,768 blocks (see the store), so the
//! store keeps the presence of sparse blocks (fetched on demand or by a folder download) itself:
//!
//! ```text
//! "cohd-present" 0x01
//! varint count
//! count x (varint gap, varint length)    gap: from the end of the previous range (or from 0)
//! ```
//!
//! Ranges are sorted, disjoint, non-adjacent and non-empty; anything else is refused (the store
//! then forgets the sparse blocks, which only costs fetching them again).

use std::ops::Range;

use crate::varint;

const MAGIC: &[u8] = b"cohd-present\x01";

/// Why a `present` file does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresentError {
    /// Not a present file, or another version.
    #[error("not a present file")]
    Magic,
    /// Ends inside a value, or has bytes after the last range.
    #[error("truncated or trailing bytes")]
    Length,
    /// An empty range, an overlap, or an index past u64.
    #[error("invalid range {0}")]
    Range(usize),
}

/// Encodes `ranges` (sorted, disjoint, non-empty; adjacent ones are merged).
pub fn encode(ranges: &[Range<u64>]) -> Vec<u8> {
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.iter().filter(|r| r.start < r.end) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r.clone()),
        }
    }
    let mut out = MAGIC.to_vec();
    varint::write(&mut out, merged.len() as u64);
    let mut prev = 0;
    for r in &merged {
        varint::write(&mut out, r.start - prev);
        varint::write(&mut out, r.end - r.start);
        prev = r.end;
    }
    out
}

/// Decodes a `present` file.
pub fn decode(buf: &[u8]) -> Result<Vec<Range<u64>>, PresentError> {
    let rest = buf.strip_prefix(MAGIC).ok_or(PresentError::Magic)?;
    let mut pos = 0;
    let count = varint::read(rest, &mut pos).ok_or(PresentError::Length)?;
    // Every range takes at least two bytes: a count beyond that is a lie, not an allocation.
    if count > (rest.len() / 2) as u64 {
        return Err(PresentError::Length);
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut prev = 0u64;
    for i in 0..count as usize {
        let gap = varint::read(rest, &mut pos).ok_or(PresentError::Length)?;
        let len = varint::read(rest, &mut pos).ok_or(PresentError::Length)?;
        // Adjacent ranges (gap 0 after the first) would have been merged.
        if len == 0 || (i > 0 && gap == 0) {
            return Err(PresentError::Range(i));
        }
        let start = prev.checked_add(gap).ok_or(PresentError::Range(i))?;
        let end = start.checked_add(len).ok_or(PresentError::Range(i))?;
        out.push(start..end);
        prev = end;
    }
    if pos != rest.len() {
        return Err(PresentError::Length);
    }
    Ok(out)
}

/// The blocks a bitmap marks (bit `i`: byte `i / 8`, bit `i % 8`, least significant first; the
/// layout of hypercore's bitfield pages), as sorted, disjoint, non-adjacent ranges.
pub fn from_bitmap(bytes: &[u8]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (at, &byte) in bytes.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            if byte & (1 << bit) != 0 {
                let i = at as u64 * 8 + bit;
                match out.last_mut() {
                    Some(r) if r.end == i => r.end = i + 1,
                    _ => out.push(i..i + 1),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bitmaps() {
        assert_eq!(
            super::from_bitmap(&[0b1000_0011, 0b0000_0001, 0, 0b1000_0000]),
            vec![0..2, 7..9, 31..32]
        );
        assert!(super::from_bitmap(&[0; 9]).is_empty());
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_merge() {
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        let r = vec![0..3, 5..6, 1000..70_000];
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        // adjacent and overlapping ranges merge; empty ones vanish
        assert_eq!(
            decode(&encode(&[2..4, 4..6, 5..9, 9..9, 12..13])).unwrap(),
            vec![2..9, 12..13]
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert_eq!(decode(b""), Err(PresentError::Magic));
        assert_eq!(decode(b"cohd-present\x02\x00"), Err(PresentError::Magic));
        let good = encode(&[3..5, 9..10]);
        for cut in MAGIC.len()..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            decode(&[good.clone(), vec![0]].concat()),
            Err(PresentError::Length)
        );
        let mut f = MAGIC.to_vec();
        f.extend([1, 4, 0]); // an empty range
        assert_eq!(decode(&f), Err(PresentError::Range(0)));
        let mut f = MAGIC.to_vec();
        f.extend([2, 0, 2, 0, 1]); // adjacent ranges
        assert_eq!(decode(&f), Err(PresentError::Range(1)));
        let mut f = MAGIC.to_vec();
        varint::write(&mut f, 1);
        varint::write(&mut f, u64::MAX);
        varint::write(&mut f, 2); // past u64
        assert_eq!(decode(&f), Err(PresentError::Range(0)));
        let mut f = MAGIC.to_vec();
        varint::write(&mut f, u64::MAX); // a count nothing backs
        assert_eq!(decode(&f), Err(PresentError::Length));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&[MAGIC, &bytes].concat());
        }

        #[test]
        fn round_trips_as_a_set(ranges in proptest::collection::vec((0u64..1000, 0u64..50), 0..20)) {
            let mut ranges: Vec<Range<u64>> = ranges.into_iter().map(|(s, l)| s..s + l).collect();
            ranges.sort_by_key(|r| r.start);
            let back = decode(&encode(&ranges)).unwrap();
            let set = |rs: &[Range<u64>]| rs.iter().flat_map(|r| r.clone()).collect::<std::collections::BTreeSet<u64>>();
            prop_assert_eq!(set(&back), set(&ranges));
            prop_assert!(back.windows(2).all(|w| w[0].end < w[1].start));
        }
    }
}
