//! The ledger: which writable cores this store made, and a length each durably reached (see
//! the store's module docs for why). A small JSON file, replaced atomically.
//!
//! ```json
//! {"version":1,"cores":{"db":{"key":"<hex>","length":12}}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use cohd_format::Key;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The ledger's file name in the store folder.
pub(crate) const FILE: &str = "ledger";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    key: String,
    length: u64,
}

/// The cores a store made, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Ledger {
    version: u32,
    cores: BTreeMap<String, Entry>,
}

fn parse_key(hex: &str) -> Option<Key> {
    hex.parse().ok()
}

impl Ledger {
    /// Reads the ledger of the store at `dir`; `None` when it has none (a store made before the
    /// ledger existed).
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let bad = |reason: String| StoreError::BadLedger {
            path: path.clone(),
            reason,
        };
        let ledger: Ledger = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if ledger.version != 1 {
            return Err(bad(format!("unknown version {}", ledger.version)));
        }
        if let Some((name, _)) = ledger
            .cores
            .iter()
            .find(|(_, e)| parse_key(&e.key).is_none())
        {
            return Err(bad(format!("core {name} has no valid key")));
        }
        Ok(Some(ledger))
    }

    /// Writes the ledger to `dir` atomically.
    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let mut me = self.clone();
        me.version = 1;
        let bytes = serde_json::to_vec(&me).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        super::private_file(&tmp, &bytes)?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Whether every recorded core's key is the one `derive` gives for its name.
    pub(crate) fn matches(&self, derive: impl Fn(&str) -> Key) -> bool {
        self.cores
            .iter()
            .all(|(name, e)| parse_key(&e.key) == Some(derive(name)))
    }

    /// The recorded key and length of core `name`.
    /// Our core `key`: its name and recorded length.
    pub(crate) fn by_key(&self, key: &Key) -> Option<(String, u64)> {
        self.cores
            .iter()
            .find(|(_, e)| parse_key(&e.key).is_some_and(|k| k == *key))
            .map(|(n, e)| (n.clone(), e.length))
    }

    pub(crate) fn recorded(&self, name: &str) -> Option<(Key, u64)> {
        let e = self.cores.get(name)?;
        Some((parse_key(&e.key)?, e.length))
    }

    /// Records core `name` (a length never goes down).
    pub(crate) fn record(&mut self, name: &str, key: Key, length: u64) {
        let e = self.cores.entry(name.to_string()).or_insert_with(|| Entry {
            key: key.to_hex(),
            length,
        });
        e.length = e.length.max(length);
    }

    /// Raises every core's length to what `length_of` says it holds now; whether any grew.
    pub(crate) fn raise(&mut self, length_of: impl Fn(&Key) -> Option<u64>) -> bool {
        let mut grown = false;
        for e in self.cores.values_mut() {
            let now = parse_key(&e.key).and_then(|k| length_of(&k));
            if let Some(n) = now.filter(|&n| n > e.length) {
                e.length = n;
                grown = true;
            }
        }
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Ledger::load(dir.path()).unwrap(), None);
        let mut l = Ledger::default();
        let k = Key([3; 32]);
        l.record("db", k, 0);
        assert!(l.raise(|key| (*key == k).then_some(5)));
        assert!(!l.raise(|_| Some(4)), "lengths never go down");
        l.save(dir.path()).unwrap();
        let back = Ledger::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.recorded("db"), Some((k, 5)));
        assert!(back.matches(|_| k));
        assert!(!back.matches(|_| Key([4; 32])));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(matches!(
            Ledger::load(dir.path()),
            Err(StoreError::BadLedger { .. })
        ));
    }
}
