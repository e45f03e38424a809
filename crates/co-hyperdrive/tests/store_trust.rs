//! A store survives every stop and refuses what would fork or mislead (issue "Nothing lost,
//! nothing forged"). A store dropped without `close` is what a killed process leaves: every
//! write already reached the operating system, nothing else ran.

use co_hyperdrive::ProofRequest;
use co_hyperdrive::{Core, Store, StoreError};
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

/// Every file under `dir`.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// A flipped byte anywhere in the store's database never shows as data: every read gives the
/// block that was written, or nothing (or an error), and opening never panics.
#[tokio::test]
async fn a_flipped_byte_anywhere_in_the_database_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let big = |i: u64| vec![i as u8; 3000 + i as usize];
    {
        let s = Store::create(&path).unwrap();
        let c = s.open_named("db").await.unwrap();
        for i in 0..N {
            c.append(&block(i)).await.unwrap();
        }
        let b = s.open_named("blobs").await.unwrap();
        b.append_batch((0..8).map(big).collect::<Vec<_>>())
            .await
            .unwrap();
        s.close().await.unwrap();
    }
    let mut checked = 0;
    for f in files(&path.join("db")) {
        let len = std::fs::metadata(&f).unwrap().len();
        if len == 0 || f.file_name().is_some_and(|n| n == "lock") {
            continue;
        }
        for at in [0, len / 3, len / 2, len - 1] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(&path, copy.path());
            let rel = f.strip_prefix(&path).unwrap();
            flip(&copy.path().join(rel), at);
            let Ok(s) = Store::open(copy.path()) else {
                continue;
            };
            for (name, n, want) in [
                ("db", N, &block as &dyn Fn(u64) -> Vec<u8>),
                ("blobs", 8, &big),
            ] {
                let Ok(c) = s.open_named(name).await else {
                    continue;
                };
                for i in 0..n {
                    if let Ok(Some(got)) = c.get_local(i).await {
                        assert_eq!(got, want(i), "{} at {at}: {name} block {i}", rel.display());
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} damaged copies checked");
}

#[tokio::test]
async fn a_lost_database_is_refused_not_forked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        c.append(b"signed").await.unwrap();
        s.flush().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let s = Store::open(dir.path()).unwrap();
    match s.open_named("db").await {
        Err(StoreError::LostBlocks { recorded: 1, .. }) => {}
        other => panic!("database deleted: {other:?}"),
    }
    // Nothing was re-created: the next open refuses just the same.
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert!(matches!(
        s.open_named("db").await,
        Err(StoreError::LostBlocks { recorded: 1, .. })
    ));
}

#[tokio::test]
async fn a_rolled_back_core_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    {
        let s = Store::create(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        c.append(b"one").await.unwrap();
        s.close().await.unwrap();
    }
    copy_dir(&dir.path().join("db"), &backup.path().join("db"));
    {
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        c.append(b"two").await.unwrap();
        s.close().await.unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    copy_dir(&backup.path().join("db"), &dir.path().join("db"));
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
    assert_eq!(mode(&path.join("db")), 0o700);
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
