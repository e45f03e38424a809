//! [`Frontier`]: a version of the co-drive, as the length of every writer's db core its view was
//! computed from.
//!
//! Blocks never change once written, so a frontier names one merged view forever: checking out
//! every writer's drive at its length and merging gives that view again
//! ([`CoDrive::checkout`](super::CoDrive::checkout)). Its text form is `KEY:LEN` pairs joined by
//! commas, keys as 64 hex digits in key order; parsing also takes z-base-32 keys.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use cohd_format::Key;

/// A version of the co-drive: writer key -> length of its db core. A writer it does not name
/// counts as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontier(pub BTreeMap<Key, u64>);

impl Frontier {
    /// The length of `writer`'s db core in this version (0 if the frontier does not name it).
    pub fn get(&self, writer: &Key) -> u64 {
        self.0.get(writer).copied().unwrap_or(0)
    }

    /// Whether this version has everything `other` has: every writer at least as long.
    pub fn includes(&self, other: &Frontier) -> bool {
        other.0.iter().all(|(k, l)| self.get(k) >= *l)
    }

    /// The writers and lengths, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &u64)> {
        self.0.iter()
    }
}

impl From<BTreeMap<Key, u64>> for Frontier {
    fn from(m: BTreeMap<Key, u64>) -> Self {
        Self(m)
    }
}

impl FromIterator<(Key, u64)> for Frontier {
    fn from_iter<I: IntoIterator<Item = (Key, u64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for Frontier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, l)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{l}", k.to_hex())?;
        }
        Ok(())
    }
}

/// Why a string is not a [`Frontier`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontierError {
    /// A pair is not `KEY:LEN`.
    #[error("not a version: {0:?} is not KEY:LENGTH")]
    Pair(String),
    /// The key is neither 64 hex digits nor 52 z-base-32 characters.
    #[error("not a version: {0:?} is not a writer key (64 hex or z-base-32)")]
    Key(String),
    /// The length is not a number.
    #[error("not a version: {0:?} is not a length")]
    Length(String),
    /// A writer appears twice.
    #[error("not a version: writer {0} appears twice")]
    Duplicate(Key),
}

impl FromStr for Frontier {
    type Err = FrontierError;

    /// Parses `KEY:LEN,KEY:LEN…` (whitespace around items ignored; the empty string is the
    /// empty frontier).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, l) = item
                .split_once(':')
                .ok_or_else(|| FrontierError::Pair(item.to_string()))?;
            let key: Key = k
                .trim()
                .parse()
                .map_err(|_| FrontierError::Key(k.trim().to_string()))?;
            let len: u64 = l
                .trim()
                .parse()
                .map_err(|_| FrontierError::Length(l.trim().to_string()))?;
            if out.insert(key, len).is_some() {
                return Err(FrontierError::Duplicate(key));
            }
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let f: Frontier = [(Key([2; 32]), 7), (Key([1; 32]), 0)].into_iter().collect();
        let s = f.to_string();
        assert_eq!(
            s,
            format!("{}:0,{}:7", Key([1; 32]).to_hex(), Key([2; 32]).to_hex())
        );
        assert_eq!(s.parse::<Frontier>().unwrap(), f);
        let z = format!(" {}:0 , {}:7 ", Key([1; 32]).to_z32(), Key([2; 32]));
        assert_eq!(z.parse::<Frontier>().unwrap(), f);
        assert_eq!("".parse::<Frontier>().unwrap(), Frontier::default());
        assert_eq!(Frontier::default().to_string(), "");
    }

    #[test]
    fn bad_text() {
        let k = Key([1; 32]).to_hex();
        assert!(matches!(
            "x".parse::<Frontier>(),
            Err(FrontierError::Pair(_))
        ));
        assert!(matches!(
            "abc:1".parse::<Frontier>(),
            Err(FrontierError::Key(_))
        ));
        assert!(matches!(
            format!("{k}:-1").parse::<Frontier>(),
            Err(FrontierError::Length(_))
        ));
        assert!(matches!(
            format!("{k}:1,{k}:2").parse::<Frontier>(),
            Err(FrontierError::Duplicate(_))
        ));
    }

    #[test]
    fn includes() {
        let a: Frontier = [(Key([1; 32]), 3)].into_iter().collect();
        let b: Frontier = [(Key([1; 32]), 2), (Key([2; 32]), 0)].into_iter().collect();
        assert!(a.includes(&b));
        assert!(!b.includes(&a));
        assert!(a.includes(&Frontier::default()));
    }
}
