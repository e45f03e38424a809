//! Property test: the bee behaves like a `BTreeMap` under random puts, deletes and batches, and
//! every old version stays readable as it was.

use std::collections::BTreeMap;
use std::ops::Bound;

use co_hyperdrive::format::bee::BeeHeader;
use co_hyperdrive::Store;
use co_hyperdrive::{Bee, Range};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Batch(Vec<(bool, Vec<u8>, Vec<u8>)>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so keys collide and deletes hit.
    proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(0u8), Just(0xff)],
        0..4,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (key(), proptest::collection::vec(any::<u8>(), 0..6)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Del),
        1 => proptest::collection::vec((any::<bool>(), key(), proptest::collection::vec(any::<u8>(), 0..3)), 0..30).prop_map(Op::Batch),
    ]
}

fn bound(b: Option<(bool, Vec<u8>)>) -> Bound<Vec<u8>> {
    match b {
        None => Bound::Unbounded,
        Some((true, k)) => Bound::Included(k),
        Some((false, k)) => Bound::Excluded(k),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn bee_matches_btreemap(ops in proptest::collection::vec(op(), 1..120),
                            lo in proptest::option::of((any::<bool>(), key())),
                            hi in proptest::option::of((any::<bool>(), key())),
                            reverse in any::<bool>(), limit in proptest::option::of(0usize..10)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = Store::memory();
            let bee = Bee::new(store.open_named("m").await.unwrap(), BeeHeader { protocol: "hyperbee".into(), metadata: None });
            let mut model = BTreeMap::new();
            let mut history: Vec<(u64, Model)> = Vec::new();
            for op in &ops {
                match op {
                    Op::Put(k, v) => { bee.put(k, v).await.unwrap(); model.insert(k.clone(), v.clone()); }
                    Op::Del(k) => { let had = bee.del(k).await.unwrap(); prop_assert_eq!(had, model.remove(k).is_some()); }
                    Op::Batch(items) => {
                        let mut b = bee.batch().await.unwrap();
                        for (put, k, v) in items {
                            if *put { b.put(k, v).await.unwrap(); model.insert(k.clone(), v.clone()); }
                            else { let had = b.del(k).await.unwrap(); prop_assert_eq!(had, model.remove(k).is_some()); }
                            prop_assert_eq!(b.get(k).await.unwrap(), model.get(k).cloned());
                        }
                        b.flush().await.unwrap();
                    }
                }
                history.push((bee.version(), model.clone()));
            }
            for k in [b"a".to_vec(), b"ab".to_vec(), vec![], vec![0xff, 0]] {
                prop_assert_eq!(bee.get(&k).await.unwrap().map(|e| e.value), model.get(&k).cloned());
            }
            let range = Range { start: bound(lo.clone()), end: bound(hi.clone()), reverse, limit };
            let got: Vec<_> = bee.range(&range).await.unwrap().into_iter().map(|e| (e.key, e.value)).collect();
            let valid = match (&range.start, &range.end) {
                (Bound::Included(a), Bound::Included(b)) => a <= b,
                (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a < b,
                _ => true,
            };
            let mut want: Vec<_> = if valid {
                model.range((range.start.clone(), range.end.clone())).map(|(k, v)| (k.clone(), v.clone())).collect()
            } else { Vec::new() };
            if reverse { want.reverse(); }
            if let Some(l) = limit { want.truncate(l); }
            prop_assert_eq!(got, want);
            // Old versions read as they were (versions after a batch hold that batch's root).
            for (v, m) in history.iter().rev().take(5) {
                let snap = bee.checkout(*v).unwrap();
                let all: BTreeMap<_, _> = snap.range(&Range::default()).await.unwrap().into_iter().map(|e| (e.key, e.value)).collect();
                prop_assert_eq!(&all, m);
            }
            Ok(())
        })?;
    }
}
