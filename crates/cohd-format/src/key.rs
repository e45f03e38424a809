//! 32-byte keys, written as 64 hex digits or 52 z-base-32 characters.

use std::fmt;
use std::str::FromStr;

const Z32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// A core key (an Ed25519 public key for compat cores).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

/// Why a string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Neither 64 hex digits nor 52 z-base-32 characters.
    #[error("invalid key {0:?}: expected 64 hex digits or 52 z-base-32 characters")]
    Invalid(String),
}

impl Key {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// z-base-32, as Hypercore's `id`.
    pub fn to_z32(&self) -> String {
        let mut out = String::with_capacity(52);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for b in self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(Z32[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(Z32[((acc << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    fn from_z32(s: &str) -> Option<Self> {
        if s.len() != 52 {
            return None;
        }
        let mut out = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut i = 0;
        for c in s.bytes() {
            let v = Z32.iter().position(|z| *z == c)? as u32;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if i == 32 {
                    return None;
                }
                out[i] = (acc >> bits) as u8;
                i += 1;
            }
            acc &= (1 << bits) - 1;
        }
        // The last character carries 4 padding bits, which must be zero in a canonical encoding.
        (i == 32 && acc == 0).then_some(Key(out))
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.len() == 64 {
            let mut out = [0u8; 32];
            if hex::decode_to_slice(t, &mut out).is_ok() {
                return Ok(Key(out));
            }
        }
        Key::from_z32(t).ok_or_else(|| KeyError::Invalid(s.to_string()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrips(bytes in any::<[u8; 32]>()) {
            let k = Key(bytes);
            prop_assert_eq!(k.to_z32().len(), 52);
            prop_assert_eq!(k.to_z32().parse::<Key>().unwrap(), k);
            prop_assert_eq!(k.to_hex().parse::<Key>().unwrap(), k);
            prop_assert_eq!(k.to_hex().to_uppercase().parse::<Key>().unwrap(), k);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,70}") {
            let _ = s.parse::<Key>();
        }
    }

    #[test]
    fn rejects_bad() {
        assert!("xyz".parse::<Key>().is_err());
        assert!("g".repeat(64).parse::<Key>().is_err());
        assert!("y".repeat(51).parse::<Key>().is_err());
        // All-zero key in z-base-32 is all 'y'.
        assert_eq!("y".repeat(52).parse::<Key>().unwrap(), Key([0; 32]));
    }
}
