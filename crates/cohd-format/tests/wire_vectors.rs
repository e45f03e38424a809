//! Our wire codec against JavaScript Hypercore's: every sample message in
//! `tests/vectors/wire.json` (encoded by `js/gen-wire-vectors.js` with the pinned hypercore)
//! encodes to the same bytes and decodes back. The file is regenerated on every run and must
//! not change (it fails, never skips, without node and `npm ci --prefix js`).

use std::path::PathBuf;
use std::process::Command;

use cohd_format::merkle::Node;
use cohd_format::wire::{
    DataBlock, DataNodes, DataUpgrade, Message, RequestBlock, RequestSeek, RequestUpgrade,
};
use serde_json::Value;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/wire.json")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn b(v: &Value, k: &str) -> bool {
    v[k].as_bool().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex")).expect("hex")
}

fn nodes(v: &Value) -> Vec<Node> {
    v.as_array()
        .expect("nodes")
        .iter()
        .map(|n| Node {
            index: u(n, "index"),
            size: u(n, "size"),
            hash: bytes(&n["hash"]).try_into().expect("32 bytes"),
        })
        .collect()
}

fn opt<T>(v: &Value, f: impl FnOnce(&Value) -> T) -> Option<T> {
    (!v.is_null()).then(|| f(v))
}

/// The message a JavaScript sample describes.
fn message(name: &str, f: &Value) -> Message {
    match name {
        "sync" => Message::Sync {
            fork: u(f, "fork"),
            length: u(f, "length"),
            remote_length: u(f, "remoteLength"),
            flags: u64::from(b(f, "canUpgrade"))
                | u64::from(b(f, "uploading")) << 1
                | u64::from(b(f, "downloading")) << 2
                | u64::from(b(f, "hasManifest")) << 3
                | u64::from(b(f, "allowPush")) << 4,
        },
        "request" => {
            let rb = |v: &Value| RequestBlock {
                index: u(v, "index"),
                nodes: u(v, "nodes"),
            };
            Message::Request {
                id: u(f, "id"),
                fork: u(f, "fork"),
                block: opt(&f["block"], rb),
                hash: opt(&f["hash"], rb),
                seek: opt(&f["seek"], |s| RequestSeek {
                    bytes: u(s, "bytes"),
                    padding: u(s, "padding"),
                }),
                upgrade: opt(&f["upgrade"], |s| RequestUpgrade {
                    start: u(s, "start"),
                    length: u(s, "length"),
                }),
                manifest: b(f, "manifest"),
                priority: u(f, "priority"),
            }
        }
        "cancel" => Message::Cancel {
            request: u(f, "request"),
        },
        "data" => Message::Data {
            request: u(f, "request"),
            fork: u(f, "fork"),
            block: opt(&f["block"], |v| DataBlock {
                index: u(v, "index"),
                value: bytes(&v["value"]),
                nodes: nodes(&v["nodes"]),
            }),
            hash: opt(&f["hash"], |v| DataNodes {
                index: u(v, "index"),
                nodes: nodes(&v["nodes"]),
            }),
            seek: opt(&f["seek"], |v| DataNodes {
                index: u(v, "bytes"),
                nodes: nodes(&v["nodes"]),
            }),
            upgrade: opt(&f["upgrade"], |v| DataUpgrade {
                start: u(v, "start"),
                length: u(v, "length"),
                nodes: nodes(&v["nodes"]),
                additional: nodes(&v["additionalNodes"]),
                signature: opt(&v["signature"], bytes),
            }),
            manifest: opt(&f["manifest"], bytes),
        },
        "noData" => Message::NoData {
            request: u(f, "request"),
            reason: u(f, "reason"),
        },
        "want" | "unwant" => {
            let (start, length, any) = (u(f, "start"), u(f, "length"), b(f, "any"));
            if name == "want" {
                Message::Want { start, length, any }
            } else {
                Message::Unwant { start, length, any }
            }
        }
        "bitfield" => Message::Bitfield {
            start: u(f, "start"),
            words: f["bitfield"]
                .as_array()
                .expect("words")
                .iter()
                .map(|w| w.as_u64().expect("word") as u32)
                .collect(),
        },
        "range" => Message::Range {
            drop: b(f, "drop"),
            start: u(f, "start"),
            length: u(f, "length"),
        },
        "extension" => Message::Extension {
            name: f["name"].as_str().expect("name").to_string(),
            message: bytes(&f["message"]),
        },
        other => panic!("unknown sample {other}"),
    }
}

#[test]
fn our_messages_are_javascripts() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(vectors()).expect("wire.json"))
        .expect("json");
    let cases = doc["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let want = message(name, &case["fields"]);
        let hex = bytes(&case["hex"]);
        assert_eq!(want.kind(), u(case, "kind"), "{name}");
        assert_eq!(want.encode(), hex, "{name}: {}", case["fields"]);
        assert_eq!(Message::decode(want.kind(), &hex), Ok(want), "{name}");
    }
    assert!(cases.len() >= 18);
}

#[test]
fn committed_wire_vectors_match_the_javascript_generator() {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../js");
    assert!(
        js.join("node_modules/hypercore").is_dir(),
        "JavaScript peers are not installed: run `npm ci --prefix js` (bash .ci/run does it)"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new("node")
        .arg(js.join("gen-wire-vectors.js"))
        .arg(out.path())
        .status()
        .expect("node must be installed to run the interop tests");
    assert!(status.success(), "gen-wire-vectors.js failed");
    let fresh = std::fs::read_to_string(out.path().join("wire.json")).expect("fresh");
    let committed = std::fs::read_to_string(vectors()).expect("committed");
    assert!(
        fresh == committed,
        "wire.json differs from what the pinned JavaScript hypercore generates"
    );
}
