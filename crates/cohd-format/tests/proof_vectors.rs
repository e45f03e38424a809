//! Our Merkle proofs against JavaScript Hypercore's: the same nodes for every request in
//! `tests/vectors/proofs.json` (made by `js/gen-proof-vectors.js` with the pinned hypercore),
//! and every one of its proofs verifies. The file is regenerated on every run and must not
//! change (it fails, never skips, without node and `npm ci --prefix js`).

use std::path::PathBuf;
use std::process::Command;

use cohd_format::merkle::Node;
use cohd_format::proof::{
    self, Indexed, ProofNodes, Received, ReceivedUpgrade, Request, Seek, UpgradeRange,
};
use serde_json::Value;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/proofs.json")
}

fn nodes(v: &Value) -> Option<Vec<Node>> {
    let list = v.as_array()?;
    Some(
        list.iter()
            .map(|n| Node {
                index: n["index"].as_u64().expect("index"),
                size: n["size"].as_u64().expect("size"),
                hash: hex::decode(n["hash"].as_str().expect("hash"))
                    .expect("hex")
                    .try_into()
                    .expect("32 bytes"),
            })
            .collect(),
    )
}

fn indexed(v: &Value) -> Option<Indexed> {
    Some(Indexed {
        index: v.get("index")?.as_u64()?,
        nodes: v.get("nodes")?.as_u64()?,
    })
}

#[test]
fn our_proofs_are_javascripts() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors()).expect("proofs.json"))
            .expect("json");
    let length = doc["length"].as_u64().expect("length");
    let blocks: Vec<Vec<u8>> = doc["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| hex::decode(b.as_str().expect("hex")).expect("hex"))
        .collect();
    let tree = proof::tree_of(&blocks);
    let mut checked = 0;
    for case in doc["cases"].as_array().expect("cases") {
        let r = &case["request"];
        let req = Request {
            block: indexed(&r["block"]),
            hash: indexed(&r["hash"]),
            upgrade: r.get("upgrade").map(|u| UpgradeRange {
                start: u["start"].as_u64().expect("start"),
                length: u["length"].as_u64().expect("length"),
            }),
            seek: r.get("seek").map(|s| Seek {
                bytes: s["bytes"].as_u64().expect("bytes"),
                padding: s["padding"].as_u64().expect("padding"),
            }),
        };
        let ours = proof::create(&tree, length, &req);
        if !case["error"].is_null() {
            assert!(ours.is_err(), "{r}: JavaScript refuses, we made {ours:?}");
            continue;
        }
        let p = &case["proof"];
        let theirs = ProofNodes {
            nodes: nodes(&p["nodes"]),
            upgrade: nodes(&p["upgrade"]),
            additional: nodes(&p["additional"]).unwrap_or_default(),
            seek: nodes(&p["seek"]),
        };
        assert_eq!(ours.as_ref(), Ok(&theirs), "{r}");

        // Their proof verifies against the tree the requester has.
        let start = req.upgrade.map_or(length, |u| u.start);
        let trusted = proof::roots_of(&tree, start).expect("roots");
        let received = Received {
            block: req.block.map(|b| {
                (
                    b.index,
                    blocks[b.index as usize].as_slice(),
                    theirs.nodes.clone().unwrap_or_default(),
                )
            }),
            hash: req
                .hash
                .map(|h| (h.index, theirs.nodes.clone().unwrap_or_default())),
            seek: theirs.seek.clone(),
            upgrade: req.upgrade.map(|u| ReceivedUpgrade {
                start: u.start,
                length: u.length,
                nodes: theirs.upgrade.clone().unwrap_or_default(),
                additional: theirs.additional.clone(),
            }),
        };
        let v = proof::verify(&trusted, start, &received).unwrap_or_else(|e| panic!("{r}: {e}"));
        if let Some((roots, len)) = &v.upgraded {
            assert_eq!(*len, length, "{r}");
            assert_eq!(
                *roots,
                proof::roots_of(&tree, length).expect("roots"),
                "{r}"
            );
        }
        if let Some(c) = v.check {
            assert_eq!(tree.get(&c.index), Some(&c), "{r}");
        }
        for n in &v.nodes {
            assert_eq!(tree.get(&n.index), Some(n), "{r}");
        }
        checked += 1;
    }
    assert!(checked > 200, "only {checked} proofs compared");
}

#[test]
fn committed_proof_vectors_match_the_javascript_generator() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let js = root.join("js");
    assert!(
        js.join("node_modules/hypercore").is_dir(),
        "JavaScript peers are not installed: run `npm ci --prefix js` (bash .ci/run does it)"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new("node")
        .arg(js.join("gen-proof-vectors.js"))
        .arg(out.path())
        .status()
        .expect("node must be installed to run the interop tests");
    assert!(status.success(), "gen-proof-vectors.js failed");
    let fresh = std::fs::read_to_string(out.path().join("proofs.json")).expect("fresh");
    let committed = std::fs::read_to_string(vectors()).expect("committed");
    assert!(
        fresh == committed,
        "proofs.json differs from what the pinned JavaScript hypercore generates"
    );
}
