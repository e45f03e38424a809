//! Golden vectors from the pinned JavaScript Hypercore 11 / Hyperdrive 13
//! (`js/gen-manifest-vectors.js`): our manifest codec, keys, signables, signatures and blobs
//! keys must give exactly what JavaScript gives. The last test regenerates the file with
//! node and requires it unchanged; it fails, never skips, when node or the packages are
//! missing (`npm ci --prefix js`).

use std::path::PathBuf;
use std::process::Command;

use cohd_format::compact::Reader;
use cohd_format::manifest::{
    content_key, content_manifest, tree_signable, Manifest, ManifestError, Prologue, SignatureType,
    Signer, Verifier, BLOBS_NAMESPACE, DEFAULT_SIGNER_NAMESPACE, MANIFEST_NAMESPACE,
};
use cohd_format::merkle;
use serde_json::Value;

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn b32(v: &Value) -> [u8; 32] {
    bytes(v).try_into().unwrap()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// A manifest from the generator's JSON form of JavaScript's decoded object.
fn manifest(v: &Value) -> Manifest {
    assert_eq!(v["hash"], "blake2b");
    let mut m = Manifest::default_signer([0; 32]);
    m.version = num(&v["version"]) as u8;
    m.allow_patch = v["allowPatch"].as_bool().unwrap();
    m.quorum = num(&v["quorum"]);
    m.signers = v["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["signature"], "ed25519");
            let mut signer = Signer::ed25519(b32(&s["publicKey"]));
            signer.namespace = b32(&s["namespace"]);
            assert_eq!(signer.signature, SignatureType::Ed25519);
            signer
        })
        .collect();
    m.prologue = (!v["prologue"].is_null()).then(|| Prologue {
        hash: b32(&v["prologue"]["hash"]),
        length: num(&v["prologue"]["length"]),
    });
    m.linked = v["linked"].as_array().map(|a| a.iter().map(b32).collect());
    m.user_data = (!v["userData"].is_null()).then(|| bytes(&v["userData"]));
    m
}

/// Ed25519 key pairs the generator makes from seeds of one repeated byte.
fn signing_key(public_key: &[u8; 32]) -> Option<ed25519_dalek::SigningKey> {
    (1..=3)
        .map(|b| ed25519_dalek::SigningKey::from_bytes(&[b; 32]))
        .find(|k| k.verifying_key().as_bytes() == public_key)
}

#[test]
fn namespaces() {
    let v = vectors();
    let ns = &v["namespaces"];
    assert_eq!(b32(&ns["tree"]), merkle::TREE_NAMESPACE);
    assert_eq!(b32(&ns["manifest"]), MANIFEST_NAMESPACE);
    assert_eq!(b32(&ns["defaultSigner"]), DEFAULT_SIGNER_NAMESPACE);
    assert_eq!(b32(&ns["blobs"]), BLOBS_NAMESPACE);
}

#[test]
fn manifests_encode_decode_and_hash_as_javascript() {
    let v = vectors();
    let cases = v["manifests"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let m = manifest(&c["manifest"]);
        let enc = bytes(&c["encoding"]);
        assert_eq!(m.encode(), enc, "{name}: encoding");
        assert_eq!(Manifest::decode(&enc).as_ref(), Ok(&m), "{name}: decoding");
        assert_eq!(m.hash(), b32(&c["hash"]), "{name}: hash");
    }
}

#[test]
fn odd_inputs_decode_as_javascript_or_are_refused() {
    let v = vectors();
    for c in v["decode"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let input = bytes(&c["input"]);
        let ours = Manifest::decode(&input);
        if !c["error"].is_null() {
            assert!(
                ours.is_err(),
                "{name}: JavaScript refuses it, we decoded {ours:?}"
            );
            continue;
        }
        let theirs = manifest(&c["manifest"]);
        match name {
            // Deliberately stricter than JavaScript (see ManifestError).
            "v1-unknown-flag" => {
                assert_eq!(ours, Err(ManifestError::UnknownFlags(0x30)), "{name}")
            }
            "v1-trailing" => {
                assert_eq!(ours, Err(ManifestError::TrailingBytes(2)), "{name}");
                let m = Manifest::read(&mut Reader::new(&input)).unwrap();
                assert_eq!(m, theirs, "{name}: read");
            }
            _ => {
                let m = ours.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(m, theirs, "{name}");
                assert_eq!(m.hash(), b32(&c["hash"]), "{name}: hash");
            }
        }
    }
}

#[test]
fn default_signer_manifests() {
    let v = vectors();
    for c in v["defaultSigners"].as_array().unwrap() {
        let seed = b32(&c["seed"]);
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pk = sk.verifying_key().to_bytes();
        assert_eq!(pk, b32(&c["publicKey"]));
        assert_eq!(&bytes(&c["secretKey"])[32..], &pk);
        let m = Manifest::default_signer(pk);
        assert_eq!(m.encode(), bytes(&c["encoding"]));
        assert_eq!(m.hash(), b32(&c["key"]));
    }
}

#[test]
fn signables() {
    let v = vectors();
    for c in v["signables"].as_array().unwrap() {
        let (key, tree) = (b32(&c["manifestHash"]), b32(&c["treeHash"]));
        let (length, fork) = (num(&c["length"]), num(&c["fork"]));
        assert_eq!(
            tree_signable(&key, &tree, length, fork).to_vec(),
            bytes(&c["signable"])
        );
        assert_eq!(
            merkle::signable(&tree, length, fork).to_vec(),
            bytes(&c["signableCompat"])
        );
    }
}

#[test]
fn signatures_verify_and_sign_as_javascript() {
    let v = vectors();
    let cases = v["signatures"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let key = b32(&c["key"]);
        let m = Manifest::decode(&bytes(&c["manifest"])).unwrap();
        let verifier = Verifier::new(key, m.clone()).unwrap();
        assert_eq!(
            verifier.is_compat(),
            c["compat"].as_bool().unwrap(),
            "{name}"
        );
        let tree = b32(&c["treeHash"]);
        let (length, fork) = (num(&c["length"]), num(&c["fork"]));
        let sig = bytes(&c["signature"]);
        assert_eq!(
            verifier.verify(&tree, length, fork, &sig),
            Ok(c["verifies"].as_bool().unwrap()),
            "{name}"
        );
        assert_eq!(
            verifier.verify(&tree, length + 1, fork, &sig),
            Ok(c["verifiesOneLonger"].as_bool().unwrap()),
            "{name}: one block longer"
        );
        if m.signers.len() == 1 {
            let sk = signing_key(&m.signers[0].public_key).unwrap();
            assert_eq!(
                verifier.sign(&sk, &tree, length, fork).unwrap(),
                sig,
                "{name}: our signature"
            );
        }
    }
}

#[test]
fn a_real_corestore_core() {
    let v = vectors();
    let c = &v["core"];
    let key = b32(&c["key"]);
    let m = Manifest::decode(&bytes(&c["manifest"])).unwrap();
    assert_eq!(m, Manifest::default_signer(b32(&c["publicKey"])));
    assert_eq!(m.hash(), key);
    let tree = b32(&c["treeHash"]);
    let (length, fork) = (num(&c["length"]), num(&c["fork"]));
    assert_eq!(length, 5);
    assert_eq!(
        tree_signable(&key, &tree, length, fork).to_vec(),
        bytes(&c["signable"])
    );
    let verifier = Verifier::new(key, m).unwrap();
    assert!(!verifier.is_compat());
    let sig = bytes(&c["signature"]);
    assert_eq!(verifier.verify(&tree, length, fork, &sig), Ok(true));
    assert_eq!(verifier.verify(&tree, length - 1, fork, &sig), Ok(false));
}

#[test]
fn hyperdrive_blobs_key() {
    let v = vectors();
    let d = &v["drive"];
    let key = b32(&d["key"]);
    let db = Manifest::decode(&bytes(&d["dbManifest"])).unwrap();
    assert_eq!(db.hash(), key);
    let blobs = content_manifest(&db, &key).unwrap();
    assert_eq!(blobs.encode(), bytes(&d["blobsManifest"]));
    assert_eq!(content_key(&db, &key), Some(b32(&d["blobsKey"])));
    assert_eq!(d["blobsKey"], d["blobsKeyFromStatic"]);
}

#[test]
fn committed_vectors_match_the_javascript_generator() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let js = root.join("js");
    assert!(
        js.join("node_modules/hypercore").is_dir() && js.join("node_modules/hyperdrive").is_dir(),
        "JavaScript peers are not installed: run `npm ci --prefix js` (bash .ci/run does it)"
    );
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .arg(js.join("gen-manifest-vectors.js"))
        .arg(out.path())
        .status()
        .expect("node must be installed to run the interop tests");
    assert!(status.success(), "gen-manifest-vectors.js failed");
    let fresh = std::fs::read_to_string(out.path().join("manifest.json")).unwrap();
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/manifest.json"),
    )
    .unwrap();
    assert!(
        fresh == committed,
        "manifest.json differs from what the pinned JavaScript packages generate"
    );
}
