//! A store survives every stop and refuses what would fork or mislead (issue "Nothing lost,
//! nothing forged"). A store dropped without `close` is what a killed process leaves: every
//! write already reached the operating system, nothing else ran.

use co_hyperdrive::store::ProofRequest;
use co_hyperdrive::{Core, CoreError, Store, StoreError};
use cohd_format::wire::{RequestBlock, RequestUpgrade};

const N: u64 = 20;

fn block(i: u64) -> Vec<u8> {
    vec![i as u8; 50 + i as usize]
}

async fn writer() -> (Store, Core) {
    let s = Store::memory();
    let c = s.open_named("w").await.unwrap();
    for i in 0..N {
        c.append(&block(i)).await.unwrap();
    }
    (s, c)
}

/// Delivers the upgrade to `N` (no block), as a peer's first answer does.
async fn deliver_upgrade(from: &Core, to: &Core) {
    let p = from
        .create_proof(&ProofRequest {
            upgrade: Some(RequestUpgrade {
                start: 0,
                length: N,
            }),
            ..ProofRequest::default()
        })
        .await
        .unwrap()
        .unwrap();
    assert!(to.apply_proof(p).await.unwrap());
}

/// Delivers block `i` without an upgrade: the oplog entry the crate cannot decode.
async fn deliver(from: &Core, to: &Core, i: u64) {
    let nodes = to.missing_nodes(i).await;
    let p = from
        .create_proof(&ProofRequest {
            block: Some(RequestBlock { index: i, nodes }),
            ..ProofRequest::default()
        })
        .await
        .unwrap()
        .unwrap();
    assert!(to.apply_proof(p).await.unwrap());
}

/// An order that is neither sequential nor reversed.
fn order() -> Vec<u64> {
    (0..N).map(|i| (i * 7 + 3) % N).collect()
}

#[tokio::test]
async fn received_blocks_survive_a_stop_after_any_write() {
    let (_w, wc) = writer().await;
    let key = wc.key();
    let order = order();
    for stop_after in 0..=N as usize {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::create(dir.path()).unwrap();
            let c = s.open_key(key, true).await.unwrap();
            deliver_upgrade(&wc, &c).await;
            for &i in &order[..stop_after] {
                deliver(&wc, &c, i).await;
            }
            // Dropped without close or flush: a killed process.
        }
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_key(key, false).await.unwrap();
        assert_eq!(c.info().length, N, "stop after {stop_after}");
        for &i in &order[..stop_after] {
            assert!(c.has(i), "stop after {stop_after}: block {i} forgotten");
            assert_eq!(c.get_local(i).await.unwrap(), Some(block(i)));
        }
        for &i in &order[stop_after..] {
            assert!(!c.has(i));
        }
        // It goes on receiving, and survives another stop.
        for &i in &order[stop_after..] {
            deliver(&wc, &c, i).await;
        }
        drop((c, s));
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_key(key, false).await.unwrap();
        assert_eq!(c.info().contiguous_length, N, "stop after {stop_after}");
        for i in 0..N {
            assert_eq!(c.get_local(i).await.unwrap(), Some(block(i)));
        }
    }
}

#[tokio::test]
async fn own_appends_survive_a_stop_after_any_write() {
    for stop_after in 1..=9u64 {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::create(dir.path()).unwrap();
            let c = s.open_named("db").await.unwrap();
            for i in 0..stop_after {
                c.append(&block(i)).await.unwrap();
            }
        }
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        assert_eq!(c.info().length, stop_after);
        for i in 0..stop_after {
            assert_eq!(c.get_local(i).await.unwrap(), Some(block(i)));
        }
        c.append(b"after").await.unwrap();
        s.flush().unwrap();
        drop((c, s));
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        assert_eq!(c.get_local(stop_after).await.unwrap().unwrap(), b"after");
    }
}

fn core_dir(dir: &std::path::Path, c: &Core) -> std::path::PathBuf {
    dir.join("cores").join(c.key().to_hex())
}

fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

#[tokio::test]
async fn a_damaged_header_slot_falls_back_to_the_other() {
    for (writes, slot) in [(9, 0u64), (9, 4096), (6, 0), (6, 4096)] {
        let dir = tempfile::tempdir().unwrap();
        let (key, cdir) = {
            let s = Store::create(dir.path()).unwrap();
            let c = s.open_named("db").await.unwrap();
            // Enough writes that the crate flushed its header to both slots.
            for i in 0..writes {
                c.append(&block(i)).await.unwrap();
            }
            s.flush().unwrap();
            (c.key(), core_dir(dir.path(), &c))
        };
        flip(&cdir.join("oplog"), slot + 40);
        for _ in 0..2 {
            // Whichever slot was hit, nothing signed is lost (the second open checks the
            // signature the first one may have made).
            let s = Store::open(dir.path()).unwrap();
            let c = s.open_named("db").await.unwrap();
            assert_eq!(c.info().length, writes, "{writes} writes, slot at {slot}");
            for i in 0..writes {
                assert_eq!(c.get_local(i).await.unwrap(), Some(block(i)));
            }
        }
        // A reader verifies what the store serves.
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        c.append(b"after").await.unwrap();
        let reader = Store::memory().open_key(key, true).await.unwrap();
        let p = c
            .create_proof(&ProofRequest {
                upgrade: Some(RequestUpgrade {
                    start: 0,
                    length: writes + 1,
                }),
                ..ProofRequest::default()
            })
            .await
            .unwrap()
            .unwrap();
        assert!(reader.apply_proof(p).await.unwrap());
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_data_file_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cdir) = {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        for i in 0..N {
            c.append(&block(i)).await.unwrap();
        }
        s.flush().unwrap();
        (c.key(), core_dir(dir.path(), &c))
    };
    // Block 3 starts after blocks 0..3.
    let at: u64 = (0..3).map(|i| block(i).len() as u64).sum::<u64>() + 10;
    flip(&cdir.join("data"), at);
    let s = Store::open(dir.path()).unwrap();
    let c = s.open_named("db").await.unwrap();
    assert_eq!(c.key(), key);
    assert_eq!(c.get_local(3).await.unwrap(), None);
    assert!(!c.has(3), "a damaged block counts as missing");
    assert!(matches!(
        c.get(3).await,
        Err(CoreError::Damaged { index: 3 })
    ));
    for i in (0..N).filter(|&i| i != 3) {
        assert_eq!(c.get_local(i).await.unwrap(), Some(block(i)), "block {i}");
    }
}

#[tokio::test]
async fn a_damaged_block_of_a_replicated_core_is_fetched_again() {
    let (_w, wc) = writer().await;
    let dir = tempfile::tempdir().unwrap();
    let cdir = {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_key(wc.key(), true).await.unwrap();
        deliver_upgrade(&wc, &c).await;
        for i in 0..N {
            deliver(&wc, &c, i).await;
        }
        s.flush().unwrap();
        core_dir(dir.path(), &c)
    };
    let at: u64 = (0..7).map(|i| block(i).len() as u64).sum::<u64>() + 1;
    flip(&cdir.join("data"), at);
    let s = Store::open(dir.path()).unwrap();
    let c = s.open_key(wc.key(), false).await.unwrap();
    assert_eq!(c.get_local(7).await.unwrap(), None);
    assert!(!c.has(7));
    // What a replication session does for a missing block.
    deliver(&wc, &c, 7).await;
    assert_eq!(c.get_local(7).await.unwrap(), Some(block(7)));
    s.flush().unwrap();
    drop((c, s));
    let s = Store::open(dir.path()).unwrap();
    let c = s.open_key(wc.key(), false).await.unwrap();
    assert_eq!(
        c.get_local(7).await.unwrap(),
        Some(block(7)),
        "repaired on disk"
    );
}

#[tokio::test]
async fn a_damaged_tree_file_is_refused_or_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cdir) = {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        for i in 0..16 {
            c.append(&block(i)).await.unwrap();
        }
        s.flush().unwrap();
        (c.key(), core_dir(dir.path(), &c))
    };
    // Node 2 (the leaf of block 1) is not a root of 16 blocks: block 0, whose proof goes
    // through it, fails to verify.
    flip(&cdir.join("tree"), 2 * 40 + 12);
    {
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        assert_eq!(c.get_local(0).await.unwrap(), None, "its proof uses node 2");
        assert_eq!(
            c.get_local(1).await.unwrap(),
            Some(block(1)),
            "hashed from its data"
        );
        assert_eq!(c.get_local(5).await.unwrap(), Some(block(5)));
    }
    // Node 15 is the root of 16 blocks: it no longer matches the signature.
    flip(&cdir.join("tree"), 15 * 40 + 12);
    let s = Store::open(dir.path()).unwrap();
    match s.open_named("db").await {
        Err(StoreError::Core { key: k, reason }) => {
            assert_eq!(k, key);
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("opened a core whose tree does not match its signature: {other:?}"),
    }
}

#[tokio::test]
async fn lost_core_files_are_refused_not_forked() {
    for what in ["core folder", "oplog", "cores"] {
        let dir = tempfile::tempdir().unwrap();
        let cdir = {
            let s = Store::create(dir.path()).unwrap();
            let c = s.open_named("db").await.unwrap();
            c.append(b"signed").await.unwrap();
            s.flush().unwrap();
            core_dir(dir.path(), &c)
        };
        match what {
            "core folder" => std::fs::remove_dir_all(&cdir).unwrap(),
            "oplog" => std::fs::remove_file(cdir.join("oplog")).unwrap(),
            _ => std::fs::remove_dir_all(dir.path().join("cores")).unwrap(),
        }
        let s = Store::open(dir.path()).unwrap();
        match s.open_named("db").await {
            Err(StoreError::LostBlocks { recorded: 1, .. }) => {}
            other => panic!("{what} deleted: {other:?}"),
        }
        assert!(
            !cdir.join("oplog").exists(),
            "{what} deleted: nothing may be re-created"
        );
    }
}

#[tokio::test]
async fn a_rolled_back_core_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let cdir = {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        c.append(b"one").await.unwrap();
        s.flush().unwrap();
        let cdir = core_dir(dir.path(), &c);
        for f in ["tree", "data", "oplog"] {
            std::fs::copy(cdir.join(f), backup.path().join(f)).unwrap();
        }
        c.append(b"two").await.unwrap();
        s.flush().unwrap();
        cdir
    };
    for f in ["tree", "data", "oplog"] {
        std::fs::copy(backup.path().join(f), cdir.join(f)).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    match s.open_named("db").await {
        Err(StoreError::LostBlocks {
            recorded: 2, found, ..
        }) => assert!(found.contains('1'), "{found}"),
        other => panic!("a rolled-back core opened: {other:?}"),
    }
}

#[tokio::test]
async fn a_changed_primary_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::create(dir.path()).unwrap();
        s.open_named("db").await.unwrap();
    }
    flip(&dir.path().join("primary-key"), 5);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::WrongPrimaryKey(_))
    ));
    // Nor may `create` start a new identity over the old cores.
    std::fs::remove_file(dir.path().join("primary-key")).unwrap();
    assert!(matches!(
        Store::create(dir.path()),
        Err(StoreError::Exists(_))
    ));
}

#[tokio::test]
async fn stores_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = Store::create(&path).unwrap();
    let c = s.open_named("db").await.unwrap();
    c.append(b"x").await.unwrap();
    s.flush().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    assert_eq!(mode(&path.join("primary-key")), 0o600);
    assert_eq!(mode(&path.join("ledger")), 0o600);
    assert_eq!(mode(&path.join("cores")), 0o700);
    let cdir = core_dir(&path, &c);
    assert_eq!(mode(&cdir), 0o700);
    for f in ["tree", "data", "oplog"] {
        assert_eq!(mode(&cdir.join(f)), 0o600, "{f}");
    }
}

#[test]
fn merkle_hashes_match_hypercore() {
    use cohd_format::merkle;
    use hypercore_schema::{Hash, Node};
    let a = b"hello".as_slice();
    let b = b"world!".as_slice();
    let la = Node::new(0, Hash::data(a).as_bytes().to_vec(), a.len() as u64);
    let lb = Node::new(2, Hash::data(b).as_bytes().to_vec(), b.len() as u64);
    assert_eq!(merkle::leaf_hash(a).as_slice(), la.hash.as_slice());
    let ours = |n: &Node| merkle::Node {
        index: n.index,
        size: n.length,
        hash: n.hash.clone().try_into().unwrap(),
    };
    let p = merkle::parent_node(&ours(&la), &ours(&lb));
    assert_eq!(p.hash.as_slice(), Hash::parent(&la, &lb).as_bytes());
    let root = Node::new(1, p.hash.to_vec(), p.size);
    let lc = Node::new(4, Hash::data(b"c").as_bytes().to_vec(), 1);
    assert_eq!(
        merkle::tree_hash(&[ours(&root), ours(&lc)]).as_slice(),
        Hash::tree(&[&root, &lc]).as_bytes()
    );
}

#[tokio::test]
async fn a_partly_received_core_reads_at_its_last_whole_signed_length() {
    let w = Store::memory();
    let wc = w.open_named("w").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upgrade_to = |length: u64, start: u64| {
        let wc = wc.clone();
        async move {
            wc.create_proof(&ProofRequest {
                upgrade: Some(RequestUpgrade {
                    start,
                    length: length - start,
                }),
                ..ProofRequest::default()
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    {
        let s = Store::create(dir.path()).unwrap();
        wc.append_batch((0..10).map(block).collect::<Vec<_>>())
            .await
            .unwrap();
        let c = s.open_key(wc.key(), true).await.unwrap();
        assert!(c.apply_proof(upgrade_to(10, 0).await).await.unwrap());
        for i in 0..10 {
            deliver(&wc, &c, i).await;
        }
        // The next batch is signed at 20; only its first half arrives before the stop.
        wc.append_batch((10..20).map(block).collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(c.apply_proof(upgrade_to(20, 10).await).await.unwrap());
        for i in 10..15 {
            deliver(&wc, &c, i).await;
        }
        assert_eq!(c.consistent_length(), 10);
    }
    let s = Store::open(dir.path()).unwrap();
    let c = s.open_key(wc.key(), false).await.unwrap();
    assert_eq!((c.info().length, c.readable_length()), (20, 15));
    assert_eq!(c.consistent_length(), 10, "never mid-batch");
    deliver(&wc, &c, 19).await;
    for i in 15..19 {
        deliver(&wc, &c, i).await;
    }
    assert_eq!(c.consistent_length(), 20);
}
