//! Unsigned LEB128 varints as used by protobuf and compact-encoding.

/// Appends `v` as a varint.
pub fn write(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`write()`] produces for `v`.
pub fn len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a varint at `*pos`, advancing it. `None` on truncation or a value over 64 bits.
pub fn read(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v in any::<u64>()) {
            let mut b = Vec::new();
            write(&mut b, v);
            prop_assert_eq!(b.len(), len(v));
            let mut pos = 0;
            prop_assert_eq!(read(&b, &mut pos), Some(v));
            prop_assert_eq!(pos, b.len());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut pos = 0;
            let _ = read(&bytes, &mut pos);
        }
    }

    #[test]
    fn rejects_overlong() {
        let b = [0xff; 11];
        assert_eq!(read(&b, &mut 0), None);
        assert_eq!(read(&[0x80], &mut 0), None);
    }
}
