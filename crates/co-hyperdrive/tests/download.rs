//! `download(path)` over loopback TCP: a metadata-only clone fetches the content of one folder
//! (and nothing else), of one file, of everything; of a co-drive with concurrent versions; and
//! fails clearly without a peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use co_hyperdrive::format::{BlobId, Key};
use co_hyperdrive::BlobError;
use co_hyperdrive::{add_known_cores, catch_up, spawn_follow, ReplicateOptions, Replicator};
use co_hyperdrive::{CoDrive, CoDriveError};
use co_hyperdrive::{Downloaded, Drive, DriveError, Store};

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const WAIT: Duration = Duration::from_secs(20);

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// A co-drive with files in two folders, served on loopback (serving everything it holds).
async fn served() -> (Store, Key, SocketAddr, Replicator) {
    let store = Store::memory();
    let co = CoDrive::create(&store, "db").await.unwrap();
    co.put("/a/one.bin", &content(200 * 1024, 1)).await.unwrap(); // 4 blocks
    co.put("/a/sub/two.bin", &content(70 * 1024, 2))
        .await
        .unwrap(); // 2 blocks
    co.put("/b/three.bin", &content(150 * 1024, 3))
        .await
        .unwrap(); // 3 blocks
    co.put("/a.txt", b"next to /a, not in it").await.unwrap();
    let repl = Replicator::new(ReplicateOptions::default());
    add_known_cores(&store, &repl, co.key(), "db")
        .await
        .unwrap();
    let (addr, _) = repl.listen(LOCAL).await.unwrap();
    (store, co.key(), addr, repl)
}

/// A metadata-only follower of `key`, connected to `peer`.
async fn clone_of(
    key: Key,
    peer: SocketAddr,
) -> (
    Store,
    Replicator,
    tokio::task::JoinHandle<Result<(), co_hyperdrive::SessionError>>,
) {
    let store = Store::memory();
    let repl = Replicator::new(ReplicateOptions::default());
    add_known_cores(&store, &repl, key, "db").await.unwrap();
    let conn = repl.connect(peer).await.unwrap();
    assert!(catch_up(&store, &repl, key, "db", WAIT).await.unwrap());
    (store, repl, conn)
}

fn blocks(b: &BlobId) -> std::ops::Range<u64> {
    b.block_offset..b.block_offset + b.block_length
}

/// Whether every block of the file at `path` (the drive's own version) is stored locally.
async fn local(d: &Drive, path: &str) -> bool {
    let e = d.entry(path).await.unwrap().unwrap();
    let b = e.entry.blob.unwrap();
    blocks(&b).all(|i| d.blobs().core().has(i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_a_file_then_everything() {
    let (_s, key, addr, _r) = served().await;
    let (store, _repl, _conn) = clone_of(key, addr).await;
    let d = Drive::open_key(&store, key).await.unwrap();
    // Metadata only so far.
    for p in ["/a/one.bin", "/a/sub/two.bin", "/b/three.bin", "/a.txt"] {
        assert!(!local(&d, p).await, "{p} came without asking");
    }

    let mut seen = Vec::new();
    let got = d
        .download_with("/a", &mut |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(
        got,
        Downloaded {
            files: 2,
            blocks: 6
        }
    );
    // Progress: from nothing to everything, never backwards, always of the same total.
    assert_eq!(seen.first(), Some(&(0, 6)));
    assert_eq!(seen.last(), Some(&(6, 6)));
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[1].1 == 6),
        "{seen:?}"
    );
    assert!(local(&d, "/a/one.bin").await && local(&d, "/a/sub/two.bin").await);
    assert!(!local(&d, "/b/three.bin").await, "outside the folder");
    assert!(
        !local(&d, "/a.txt").await,
        "a sibling file is not in the folder"
    );
    // The bytes read without the network.
    let e = d.entry("/a/one.bin").await.unwrap().unwrap();
    let mut bytes = Vec::new();
    for i in blocks(&e.entry.blob.unwrap()) {
        bytes.extend(d.blobs().core().get_local(i).await.unwrap().unwrap());
    }
    assert_eq!(bytes, content(200 * 1024, 1));
    // Again: nothing to fetch.
    assert_eq!(d.download("/a/").await.unwrap().blocks, 0);

    // One file.
    let got = d.download("/a.txt").await.unwrap();
    assert_eq!((got.files, got.blocks), (1, 1));
    assert!(!local(&d, "/b/three.bin").await);

    // Everything else.
    let got = d.download("/").await.unwrap();
    assert_eq!((got.files, got.blocks), (4, 3));
    assert!(local(&d, "/b/three.bin").await);
    assert_eq!(
        d.get("/b/three.bin").await.unwrap().unwrap(),
        content(150 * 1024, 3)
    );
    // A path with nothing under it.
    assert_eq!(d.download("/nothing").await.unwrap(), Downloaded::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_peer_the_error_says_so() {
    let (_s, key, addr, _r) = served().await;
    let (store, repl, conn) = clone_of(key, addr).await;
    conn.abort();
    // The aborted connection leaves the replicator (its drop guard).
    let gone = async {
        while *repl.connections().borrow() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, gone).await.unwrap();
    let d = Drive::open_key(&store, key).await.unwrap();
    let t = std::time::Instant::now();
    let err = d.download("/b").await.unwrap_err();
    assert!(
        matches!(err, DriveError::Blob(BlobError::Unavailable(_))),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("not available from any connected peer"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "known at once");
    assert!(!local(&d, "/b/three.bin").await);
    // Bad input is an error, not a silent no-op.
    assert!(matches!(
        d.download("/a\0b").await.unwrap_err(),
        DriveError::Path(_)
    ));
}

/// A node following the co-drive `primary` (every core downloaded in full), listening.
async fn full_node(store: Store, primary: Key) -> (Replicator, SocketAddr) {
    let repl = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    spawn_follow(
        store.clone(),
        repl.clone(),
        primary,
        "db".into(),
        Duration::from_millis(50),
    );
    add_known_cores(&store, &repl, primary, "db").await.unwrap();
    let (addr, _) = repl.listen(LOCAL).await.unwrap();
    (repl, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codrive_with_concurrent_versions() {
    // A (primary) authorizes B; B learns it, then both write /c without seeing each other.
    let sa = Store::memory();
    let a = Arc::new(CoDrive::create(&sa, "db").await.unwrap());
    let (_ra, addr_a) = full_node(sa.clone(), a.key()).await;
    let sb = Store::memory();
    let b = Arc::new(CoDrive::open(&sb, a.key(), "db").await.unwrap());
    a.authorize(b.local_key()).await.unwrap();
    let (rb, _) = full_node(sb.clone(), a.key()).await;
    let conn = rb.connect(addr_a).await.unwrap();
    assert!(catch_up(&sb, &rb, a.key(), "db", WAIT).await.unwrap());
    assert!(b.snapshot().await.unwrap().is_writer());
    conn.abort();
    a.put("/c.bin", &content(100 * 1024, 10)).await.unwrap();
    b.put("/c.bin", &content(90 * 1024, 11)).await.unwrap();
    b.put("/only-b.bin", &content(10, 12)).await.unwrap();
    // B's writes reach A.
    let _conn = rb.connect(addr_a).await.unwrap();
    let arrived = async {
        loop {
            let s = a.snapshot().await.unwrap();
            if s.stat("/only-b.bin").unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, arrived).await.unwrap();

    // C follows A, metadata only, and downloads everything: both versions of /c.bin.
    let (sc, _rc, _cc) = clone_of(a.key(), addr_a).await;
    let c = CoDrive::open(&sc, a.key(), "db").await.unwrap();
    let snap = c.snapshot().await.unwrap();
    let e = snap.stat("/c.bin").unwrap().unwrap();
    assert_eq!(e.conflicts.len(), 2, "the writes are concurrent");
    let mut last = (0, 0);
    let got = c
        .download_with("/", &mut |done, total| last = (done, total))
        .await
        .unwrap();
    assert_eq!(last, (5, 5), "progress over both writers' blobs");
    assert_eq!(got.files, 2);
    assert_eq!(got.blocks, 2 + 2 + 1);
    for v in &e.conflicts {
        let d = Drive::open_key(&sc, v.writer).await.unwrap();
        let blob = v.entry.clone().unwrap().blob.unwrap();
        assert!(
            blocks(&blob).all(|i| d.blobs().core().has(i)),
            "the version of {} is local",
            v.writer
        );
    }
    // A file path downloads that file; a path with a NUL is refused.
    assert_eq!(c.download("/only-b.bin").await.unwrap().blocks, 0);
    assert!(matches!(
        c.download("/x\0").await.unwrap_err(),
        CoDriveError::Drive(DriveError::Path(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_downloads_survive_a_reopen() {
    let (_s, key, addr, _r) = served().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::create(dir.path()).unwrap();
        let repl = Replicator::new(ReplicateOptions::default());
        add_known_cores(&store, &repl, key, "db").await.unwrap();
        let conn = repl.connect(addr).await.unwrap();
        assert!(catch_up(&store, &repl, key, "db", WAIT).await.unwrap());
        let d = Drive::open_key(&store, key).await.unwrap();
        // /b/three.bin's blocks follow /a's: not contiguous from the start.
        assert_eq!(d.download("/b").await.unwrap().blocks, 3);
        conn.abort();
        store.close().await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let d = Drive::open_key(&store, key).await.unwrap();
    assert!(local(&d, "/b/three.bin").await);
    assert!(!local(&d, "/a/one.bin").await);
    assert_eq!(
        d.get("/b/three.bin").await.unwrap().unwrap(),
        content(150 * 1024, 3)
    );
}

/// A read of a core a replicator holds, made before the connection that serves it is up (a
/// writer whose record just arrived): it waits a moment for the channel instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_the_channel_being_opened() {
    let src = Store::memory();
    let core = src.open_named("c").await.unwrap();
    for i in 0..3u8 {
        core.append(&[i; 10]).await.unwrap();
    }
    let server = Replicator::new(ReplicateOptions::default());
    server.add_core(core.clone());
    let (addr, _) = server.listen(LOCAL).await.unwrap();

    let dst = Store::memory();
    let copy = dst.open_key(core.key(), true).await.unwrap();
    let reader = Replicator::new(ReplicateOptions::default());
    reader.add_core(copy.clone());
    let read = tokio::spawn({
        let copy = copy.clone();
        async move { copy.get(1).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _conn = reader.connect(addr).await.unwrap();
    let got = tokio::time::timeout(WAIT, read)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(vec![1; 10]));

    // Held by no replicator: a missing block is missing at once.
    let alone = Store::memory().open_key(core.key(), true).await.unwrap();
    let t = std::time::Instant::now();
    assert_eq!(alone.get(0).await.unwrap(), None);
    assert!(t.elapsed() < Duration::from_millis(100));
}

/// A writer authorized while peers are connected is followed as the records arrive: both
/// followers retry only after an hour, so nothing but arrivals can make them look again (the
/// server's at its own append, the clone's when that append reaches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_authorized_later_is_followed_as_its_record_arrives() {
    const NEVER: Duration = Duration::from_secs(3600);
    let sa = Store::memory();
    let a = CoDrive::create(&sa, "db").await.unwrap();
    a.put("/a.txt", b"from a").await.unwrap();
    // B is a second drive of A's store: A's follower finds it through A's records alone.
    let b = CoDrive::open(&sa, a.key(), "b").await.unwrap();
    let ra = Replicator::new(ReplicateOptions::default());
    let _fa = spawn_follow(sa.clone(), ra.clone(), a.key(), "db".into(), NEVER);
    let (addr, _) = ra.listen(LOCAL).await.unwrap();
    let sc = Store::memory();
    let rc = Replicator::new(ReplicateOptions::default());
    let _fc = spawn_follow(sc.clone(), rc.clone(), a.key(), "db".into(), NEVER);
    let _conn = rc.connect(addr).await.unwrap();
    let c = CoDrive::open(&sc, a.key(), "db").await.unwrap();
    let shows = |path: &'static str| {
        let c = &c;
        async move {
            loop {
                if c.snapshot().await.unwrap().stat(path).unwrap().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(WAIT, shows("/a.txt")).await.unwrap();
    assert!(!rc.has_core(&b.local_key()), "B is no writer yet");
    a.authorize(b.local_key()).await.unwrap();
    b.put("/b.txt", b"from b").await.unwrap();
    tokio::time::timeout(WAIT, shows("/b.txt")).await.unwrap();
    assert_eq!(c.get("/b.txt").await.unwrap().unwrap(), b"from b");
}

/// A reader that adds the drive's db core itself, sparsely (fetching only what is read, as a
/// plain Hyperdrive reader does), then catches up: the blobs core is found from the header,
/// which is asked for rather than waited for, and catch-up ends only once it is known, so the
/// first read fetches its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_db_core_added_by_the_caller_still_finds_its_blobs() {
    let (_s, key, addr, _r) = served().await;
    let store = Store::memory();
    let repl = Replicator::new(ReplicateOptions::default());
    repl.add_core(store.open_key(key, true).await.unwrap());
    let _conn = repl.connect(addr).await.unwrap();
    assert!(catch_up(&store, &repl, key, "db", WAIT).await.unwrap());
    let d = Drive::open_key(&store, key).await.unwrap();
    assert!(
        repl.has_core(&d.blobs_key()),
        "the blobs core was not followed"
    );
    assert_eq!(
        d.get("/b/three.bin").await.unwrap().unwrap(),
        content(150 * 1024, 3)
    );
}
