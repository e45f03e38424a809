//! compact-encoding, the byte layout of Hypercore's own structures (oplog, wire messages):
//! unsigned integers in 1, 3, 5 or 9 bytes, buffers as a length then the bytes.
//!
//! ```text
//! n < 0xfd        n                 (1 byte)
//! n <= 0xffff     0xfd, u16 LE      (3 bytes)
//! n <= 0xffffffff 0xfe, u32 LE      (5 bytes)
//! else            0xff, u64 LE      (9 bytes)
//! ```

/// Input ended inside a value, or a length does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("compact-encoding: truncated input")]
pub struct Truncated;

/// A cursor over compact-encoded bytes. Every read checks bounds: a short or hostile buffer
/// gives [`Truncated`], never a panic.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).ok_or(Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.bytes(1)?[0])
    }

    /// A fixed-width little-endian u32.
    pub fn u32_le(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A fixed-width little-endian u64.
    pub fn u64_le(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A variable-width unsigned integer.
    pub fn uint(&mut self) -> Result<u64, Truncated> {
        Ok(match self.u8()? {
            0xfd => u64::from(u16::from_le_bytes(self.array()?)),
            0xfe => u64::from(self.u32_le()?),
            0xff => self.u64_le()?,
            n => u64::from(n),
        })
    }

    /// A length read as a `uint` that must fit in the remaining input (so a hostile length
    /// never makes us allocate).
    pub fn length(&mut self) -> Result<usize, Truncated> {
        let n = self.uint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len() - self.pos)
            .ok_or(Truncated)
    }

    /// A length-prefixed buffer.
    pub fn buffer(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.length()?;
        self.bytes(n)
    }

    /// An array's element count, read as a `uint`, for elements of at least `min_size` bytes
    /// each (taken as at least 1): a count the remaining input cannot hold is [`Truncated`], so collecting that
    /// many elements never allocates more than the input justifies.
    pub fn count(&mut self, min_size: usize) -> Result<usize, Truncated> {
        let n = self.uint()?;
        let room = (self.buf.len() - self.pos) / min_size.max(1);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= room)
            .ok_or(Truncated)
    }

    /// A count-prefixed array of length-prefixed buffers (compact-encoding `array(string)`).
    pub fn buffers(&mut self) -> Result<Vec<&'a [u8]>, Truncated> {
        let n = self.length()?;
        (0..n).map(|_| self.buffer()).collect()
    }
}

/// Appends `n` as a variable-width unsigned integer.
pub fn write_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0xfd {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xfd);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(0xfe);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(0xff);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Appends a length-prefixed buffer.
pub fn write_buffer(out: &mut Vec<u8>, b: &[u8]) {
    write_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a count-prefixed array of length-prefixed buffers.
pub fn write_buffers<B: AsRef<[u8]>>(out: &mut Vec<u8>, items: &[B]) {
    write_uint(out, items.len() as u64);
    for b in items {
        write_buffer(out, b.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn widths() {
        for (n, len) in [
            (0, 1),
            (0xfc, 1),
            (0xfd, 3),
            (0xffff, 3),
            (0x10000, 5),
            (1 << 32, 9),
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, n);
            assert_eq!(out.len(), len, "{n}");
        }
    }

    #[test]
    fn counts_must_fit_the_input() {
        assert_eq!(Reader::new(&[2, 0, 0, 0, 0]).count(2), Ok(2));
        assert_eq!(Reader::new(&[2, 0, 0, 0]).count(3), Err(Truncated));
        assert_eq!(Reader::new(&[0]).count(0), Ok(0));
        assert_eq!(Reader::new(&[1]).count(0), Err(Truncated));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(r.buffer(), Err(Truncated));
        assert_eq!(Reader::new(&[0xfd, 1]).uint(), Err(Truncated));
        assert_eq!(Reader::new(&[]).u8(), Err(Truncated));
    }

    proptest! {
        #[test]
        fn round_trip(n in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            write_uint(&mut out, n);
            write_buffer(&mut out, &b);
            write_buffers(&mut out, &[&b, &b[..b.len() / 2]]);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.uint(), Ok(n));
            prop_assert_eq!(r.buffer(), Ok(&b[..]));
            prop_assert_eq!(r.buffers(), Ok(vec![&b[..], &b[..b.len() / 2]]));
            prop_assert!(r.rest().is_empty());
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&b);
            let _ = r.buffers();
            let _ = r.uint();
            let _ = r.count(65);
        }
    }
}
