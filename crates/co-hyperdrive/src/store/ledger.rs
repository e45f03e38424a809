//! The ledger: which writable cores this store made, and a length each durably reached (see
//! the store's module docs for why). A small JSON file, replaced atomically.
//!
//! ```json
//! {"version":1,"cores":{"db":{"key":"<hex>","length":12,"manifest":"<hex>"},
//!   "<z32>/blobs":{"key":"<hex>","length":40,"manifest":"<hex>","signer":"db"}}}
//! ```
//! A compat core's key is its signer's public key; a manifest core records its manifest (the
//! key is its hash). `signer` names the key pair that signs it when that is not its own name
//! (a Hyperdrive's blobs core is signed by its db core's key pair).

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
}

/// How one of our cores is keyed and signed, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) key: Key,
    pub(crate) length: u64,
    /// Its manifest (manifest cores).
    pub(crate) manifest: Option<cohd_format::manifest::Manifest>,
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

fn decode_manifest(h: &str) -> Option<cohd_format::manifest::Manifest> {
    cohd_format::manifest::Manifest::decode(&hex::decode(h).ok()?).ok()
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

    /// Whether every recorded core's key is the one the key pair `public` derives for its
    /// signer gives: the public key itself (compat), or the hash of a recorded manifest that
    /// the public key signs.
    pub(crate) fn matches(&self, public: impl Fn(&str) -> [u8; 32]) -> bool {
        self.cores.iter().all(|(name, e)| {
            let pk = public(e.signer.as_deref().unwrap_or(name));
            let Some(key) = parse_key(&e.key) else {
                return false;
            };
            match e.manifest.as_deref().map(decode_manifest) {
                None => key.0 == pk,
                Some(Some(m)) => m.hash() == key.0 && m.signers.iter().any(|s| s.public_key == pk),
                Some(None) => false,
            }
        })
    }

    /// Core `name` as recorded.
    pub(crate) fn entry(&self, name: &str) -> Option<Recorded> {
        let e = self.cores.get(name)?;
        Some(Recorded {
            key: parse_key(&e.key)?,
            length: e.length,
            manifest: e.manifest.as_deref().and_then(decode_manifest),
        })
    }

    /// Records core `name` with its manifest and signer (a length never goes down).
    pub(crate) fn record_with(
        &mut self,
        name: &str,
        key: Key,
        length: u64,
        manifest: Option<&cohd_format::manifest::Manifest>,
        signer: Option<&str>,
    ) {
        let e = self.cores.entry(name.to_string()).or_insert_with(|| Entry {
            key: key.to_hex(),
            length,
            manifest: manifest.map(|m| hex::encode(m.encode())),
            signer: signer.filter(|s| *s != name).map(str::to_string),
        });
        e.length = e.length.max(length);
    }

    /// Our core `key`: its name and recorded length.
    pub(crate) fn by_key(&self, key: &Key) -> Option<(String, u64)> {
        self.cores
            .iter()
            .find(|(_, e)| parse_key(&e.key).is_some_and(|k| k == *key))
            .map(|(n, e)| (n.clone(), e.length))
    }

    /// The name of the key pair that signs our core `key` (its own name, or its signer's).
    pub(crate) fn signer_of(&self, key: &Key) -> Option<String> {
        self.cores
            .iter()
            .find(|(_, e)| parse_key(&e.key).is_some_and(|k| k == *key))
            .map(|(n, e)| e.signer.clone().unwrap_or_else(|| n.clone()))
    }

    #[cfg(test)]
    pub(crate) fn recorded(&self, name: &str) -> Option<(Key, u64)> {
        let e = self.cores.get(name)?;
        Some((parse_key(&e.key)?, e.length))
    }

    /// Records compat core `name` (a length never goes down).
    #[cfg(test)]
    pub(crate) fn record(&mut self, name: &str, key: Key, length: u64) {
        self.record_with(name, key, length, None, None);
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
        assert!(back.matches(|_| k.0));
        assert!(!back.matches(|_| [4; 32]));
        // A manifest core signed by another name's key pair.
        let m = cohd_format::manifest::Manifest::default_signer([4; 32]);
        let mut l = back.clone();
        l.record_with("blobs", Key(m.hash()), 2, Some(&m), Some("db2"));
        assert!(l.matches(|n| if n == "db2" { [4; 32] } else { k.0 }));
        assert!(!l.matches(|_| k.0));
        l.save(dir.path()).unwrap();
        let back = Ledger::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.entry("blobs").unwrap().manifest, Some(m));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(matches!(
            Ledger::load(dir.path()),
            Err(StoreError::BadLedger { .. })
        ));
    }
}
