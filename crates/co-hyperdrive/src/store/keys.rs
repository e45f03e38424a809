//! Deterministic key pairs for our own cores, derived as Corestore derives named cores:
//!
//! `seed = BLAKE2b-256(CORESTORE_NS ‖ ns ‖ utf8(name); key = primary)`, then the Ed25519 key pair
//! of that seed. `ns` is 32 zero bytes (Corestore's default namespace) and
//! `CORESTORE_NS = BLAKE2b-256(BLAKE2b-256("corestore") ‖ 0x00)`. A store that keeps only its
//! 32-byte primary secret can therefore recreate every writable core it ever made.

use blake2::digest::{consts::U32, FixedOutput, Mac, Update};
use blake2::{Blake2b, Blake2bMac, Digest};
use ed25519_dalek::SigningKey;

type Blake2b256 = Blake2b<U32>;

/// BLAKE2b-256 of the concatenated parts.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `namespace(name, n)[i]` of hypercore-crypto: `H(H(name) ‖ i)`.
pub(crate) fn namespace(name: &str, i: u8) -> [u8; 32] {
    hash(&[&hash(&[name.as_bytes()]), &[i]])
}

/// The seed of the key pair for core `name` under `primary`.
pub(crate) fn seed(primary: &[u8; 32], name: &str) -> [u8; 32] {
    let ns = [0u8; 32];
    // A 32-byte key is always a valid BLAKE2b key, so this cannot fail.
    let mut mac =
        <Blake2bMac<U32> as Mac>::new_from_slice(primary).unwrap_or_else(|_| unreachable!());
    Update::update(&mut mac, &namespace("corestore", 0));
    Update::update(&mut mac, &ns);
    Update::update(&mut mac, name.as_bytes());
    mac.finalize_fixed().into()
}

/// The signing key of core `name` under `primary`.
pub(crate) fn key_pair(primary: &[u8; 32], name: &str) -> SigningKey {
    SigningKey::from_bytes(&seed(primary, name))
}

/// Hypercore's discovery key: `BLAKE2b-256("hypercore"; key = core key)`.
pub fn discovery_key(key: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Blake2bMac<U32> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    Update::update(&mut mac, b"hypercore");
    mac.finalize_fixed().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_namespace_constant_matches_formats_doc() {
        // formats.md 3.4: DEFAULT_NAMESPACE = namespace('hypercore', 6)[4] = 4144eea5…47cb.
        let ns = hex::encode(namespace("hypercore", 4));
        assert!(ns.starts_with("4144eea5") && ns.ends_with("47cb"), "{ns}");
    }

    #[test]
    fn deterministic_and_name_separated() {
        let p = [7u8; 32];
        assert_eq!(key_pair(&p, "db").to_bytes(), key_pair(&p, "db").to_bytes());
        assert_ne!(
            key_pair(&p, "db").to_bytes(),
            key_pair(&p, "db2").to_bytes()
        );
        assert_ne!(
            key_pair(&p, "db").to_bytes(),
            key_pair(&[8u8; 32], "db").to_bytes()
        );
    }
}
