//! Golden test: our bee writes the same block bytes as JavaScript Hyperbee 2.27.3 for the same
//! ops. The vectors come from `js/gen-bee-vectors.js` (run it to regenerate).

use co_hyperdrive::format::bee::BeeHeader;
use co_hyperdrive::Bee;
use co_hyperdrive::Store;
use serde_json::Value;

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

async fn apply(bee: &Bee, op: &Value) {
    match op["op"].as_str().unwrap() {
        "put" => {
            bee.put(&hex(&op["key"]), &hex(&op["value"])).await.unwrap();
        }
        "del" => {
            bee.del(&hex(&op["key"])).await.unwrap();
        }
        "batch" => {
            let mut b = bee.batch().await.unwrap();
            for o in op["ops"].as_array().unwrap() {
                match o["op"].as_str().unwrap() {
                    "put" => {
                        b.put(&hex(&o["key"]), &hex(&o["value"])).await.unwrap();
                    }
                    "del" => {
                        b.del(&hex(&o["key"])).await.unwrap();
                    }
                    other => panic!("unknown batch op {other}"),
                }
            }
            b.flush().await.unwrap();
        }
        other => panic!("unknown op {other}"),
    }
}

#[tokio::test]
async fn same_bytes_as_javascript_hyperbee() {
    let vectors: Value = serde_json::from_str(include_str!("vectors/bee.json")).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let store = Store::memory();
        let core = store.open_named(name).await.unwrap();
        let bee = Bee::new(
            core.clone(),
            BeeHeader {
                protocol: "hyperbee".into(),
                metadata: None,
            },
        );
        for op in case["ops"].as_array().unwrap() {
            apply(&bee, op).await;
        }
        let expected = case["blocks"].as_array().unwrap();
        assert_eq!(
            core.info().length as usize,
            expected.len(),
            "case {name}: block count"
        );
        for (i, want) in expected.iter().enumerate() {
            let got = core.get(i as u64).await.unwrap().unwrap();
            assert_eq!(
                hex::encode(&got),
                want.as_str().unwrap(),
                "case {name}: block {i}"
            );
        }
        // And the tree reads back what JavaScript says it holds.
        if let Some(entries) = case.get("final_entries").and_then(Value::as_array) {
            let all = bee.range(&Default::default()).await.unwrap();
            assert_eq!(all.len(), entries.len(), "case {name}: entry count");
            for (got, want) in all.iter().zip(entries) {
                assert_eq!(got.seq, want["seq"].as_u64().unwrap(), "case {name}");
                assert_eq!(got.key, hex(&want["key"]), "case {name}");
                assert_eq!(got.value, hex(&want["value"]), "case {name}");
            }
        }
    }
}
