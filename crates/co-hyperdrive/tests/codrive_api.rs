//! The co-drive's read and streaming-write API ([`Snapshot`], [`CoBatch`], [`CoFileWriter`]) with
//! two writers sharing one memory store (as if fully replicated).

use co_hyperdrive::{CoDrive, CoDriveError, CoEntry, Snapshot};
use co_hyperdrive::{DriveError, PutOptions, Store};

/// Deterministic bytes that are not all alike.
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn paths(entries: &[CoEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

async fn read(s: &Snapshot<'_>, name: &str, start: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = s
        .read_range(name, start, len, |c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

#[tokio::test]
async fn snapshot_reads_and_streaming_writes_across_writers() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();

    // Not a writer yet: no batch, no writer, and nothing is written.
    let mut s = b.snapshot().await.unwrap();
    assert!(!s.is_writer());
    assert!(s.missing().is_empty());
    assert!(matches!(s.batch().await, Err(CoDriveError::NotAWriter(k)) if k == b.local_key()));
    assert!(matches!(
        b.writer("/x", PutOptions::default()).await,
        Err(CoDriveError::NotAWriter(_))
    ));
    assert_eq!(b.own().version(), 0);
    a.authorize(b.local_key()).await.unwrap();

    // A streamed file (several 1 MiB appends and a tail): its entry and version record land in
    // one append of two blocks.
    let data = bytes(3 * 1024 * 1024 + 123);
    let v0 = a.own().version();
    let opts = PutOptions {
        executable: true,
        metadata: Some(serde_json::json!({"by": "a"})),
    };
    let mut w = a.writer("/big.bin", opts).await.unwrap();
    for chunk in data.chunks(100_000) {
        w.write(chunk).await.unwrap();
    }
    let written = w.finish().await.unwrap();
    assert_eq!(a.own().version(), v0 + 2);
    assert_eq!((written.writer, written.seq), (a.local_key(), v0 + 1));

    // B reads it from A's blobs: entry, ranges, the whole.
    let s = b.snapshot().await.unwrap();
    let e = s.entry("/big.bin").unwrap().unwrap();
    assert_eq!((e.writer, e.seq), (a.local_key(), written.seq));
    assert_eq!(e.entry.size(), data.len() as u64);
    assert!(e.entry.executable);
    assert_eq!(e.entry.metadata, Some(serde_json::json!({"by": "a"})));
    assert!(e.conflicts.is_empty());
    assert_eq!(
        read(&s, "/big.bin", 1_000_000, 2_000_000).await,
        &data[1_000_000..3_000_000]
    );
    assert_eq!(
        read(&s, "/big.bin", 3 * 1024 * 1024, 1000).await,
        &data[3 * 1024 * 1024..]
    );
    assert_eq!(s.get("/big.bin").await.unwrap().unwrap(), data);
    assert!(s.entry("/nope").unwrap().is_none());
    assert!(matches!(
        s.read_range("/nope", 0, 1, |_| Ok(())).await,
        Err(CoDriveError::Drive(DriveError::NotFound(_)))
    ));
    assert!(matches!(
        s.entry("/"),
        Err(CoDriveError::Drive(DriveError::Path(_)))
    ));

    // B writes a batch through its snapshot: files, a streamed file and links, one append; the
    // snapshot shows them once flushed, exactly as a fresh view does.
    let mut s = b.snapshot().await.unwrap();
    assert_eq!(b.own().version(), 0, "B has written nothing yet");
    let mut batch = s.batch().await.unwrap();
    batch
        .put("/docs/a.md", b"a", PutOptions::default())
        .await
        .unwrap();
    let mut w = batch
        .writer("docs/sub/../sub/b.md", PutOptions::default())
        .await
        .unwrap();
    w.write(b"b").await.unwrap();
    w.finish().await.unwrap();
    batch.symlink("/latest", "/big.bin").await.unwrap();
    batch.symlink("/latest2", "/latest").await.unwrap();
    assert_eq!(batch.len(), 4);
    // Before the flush only the bee header is there (Hyperbee appends it at the first op on an
    // empty core); the flush appends four entries and their four version records.
    assert_eq!(b.own().version(), 1);
    batch.flush().await.unwrap();
    assert_eq!(b.own().version(), 1 + 8);
    assert_eq!(
        paths(&s.list("/")),
        [
            "/big.bin",
            "/docs/a.md",
            "/docs/sub/b.md",
            "/latest",
            "/latest2"
        ]
    );
    assert_eq!(paths(&s.list("/docs")), ["/docs/a.md", "/docs/sub/b.md"]);
    assert!(s.list("/nope").is_empty());
    assert_eq!(s.readdir("/"), ["big.bin", "docs", "latest", "latest2"]);
    assert_eq!(s.readdir("/docs"), ["a.md", "sub"]);
    assert!(s.readdir("/docs/a.md").is_empty());
    assert_eq!(s.view(), a.snapshot().await.unwrap().view());

    // Symlinks: B's links lead to A's file through the merged view; `entry` shows the link.
    let link = s.entry("/latest2").unwrap().unwrap();
    assert_eq!(
        (link.writer, link.entry.linkname.as_deref()),
        (b.local_key(), Some("/latest"))
    );
    let target = s.stat("/latest2").unwrap().unwrap();
    assert_eq!(
        (target.path.as_str(), target.writer),
        ("/big.bin", a.local_key())
    );
    assert_eq!(s.get("/latest2").await.unwrap().unwrap(), data);
    a.symlink("/loop1", "/loop2").await.unwrap();
    a.symlink("/loop2", "/loop1").await.unwrap();
    a.symlink("/dangling", "/nowhere").await.unwrap();
    let s = b.snapshot().await.unwrap();
    assert!(matches!(
        s.stat("/loop1"),
        Err(CoDriveError::Drive(DriveError::Symlink(_)))
    ));
    assert!(s.stat("/dangling").unwrap().is_none());
    assert!(s.entry("/dangling").unwrap().is_some());
    assert_eq!(b.get("/dangling").await.unwrap(), None);

    // Writes through two snapshots that have not seen each other's conflict; the entry lists
    // both versions and every reader agrees on the winner.
    let mut sa = a.snapshot().await.unwrap();
    let mut sb = b.snapshot().await.unwrap();
    let mut ba = sa.batch().await.unwrap();
    ba.put("/c", b"from a", PutOptions::default())
        .await
        .unwrap();
    ba.flush().await.unwrap();
    let mut bb = sb.batch().await.unwrap();
    bb.put("/c", b"from b", PutOptions::default())
        .await
        .unwrap();
    bb.flush().await.unwrap();
    let s = a.snapshot().await.unwrap();
    let c = s.entry("/c").unwrap().unwrap();
    assert_eq!(c.conflicts.len(), 2);
    assert!(c
        .conflicts
        .iter()
        .any(|v| (v.writer, v.seq) == (c.writer, c.seq)));
    let winner = s.get("/c").await.unwrap().unwrap();
    assert_eq!(
        winner,
        if c.writer == a.local_key() {
            &b"from a"[..]
        } else {
            &b"from b"[..]
        }
    );
    assert_eq!(b.snapshot().await.unwrap().view(), s.view());

    // B's delete saw both versions: the path is gone, no conflict left.
    assert!(b.del("/c").await.unwrap());
    let s = a.snapshot().await.unwrap();
    assert!(s.entry("/c").unwrap().is_none());
    assert_eq!(s.view().conflicts().count(), 0);

    // A deletes B's folder in a batch; inside the batch, its own writes count.
    let mut s = a.snapshot().await.unwrap();
    let mut batch = s.batch().await.unwrap();
    batch
        .put("/docs/new", b"n", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(batch.del_folder("/docs").await.unwrap(), 3);
    assert!(!batch.del("/docs/new").await.unwrap());
    batch.flush().await.unwrap();
    assert!(s.list("/docs").is_empty());
    assert!(!s.readdir("/").contains(&"docs".to_string()));
    assert_eq!(s.view(), b.snapshot().await.unwrap().view());

    // A batch dropped unflushed writes no entry.
    let v = a.own().version();
    {
        let mut s = a.snapshot().await.unwrap();
        let mut batch = s.batch().await.unwrap();
        batch
            .put("/dropped", b"d", PutOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(a.own().version(), v);
    assert_eq!(a.get("/dropped").await.unwrap(), None);
}

#[tokio::test]
async fn missing_writers_are_reported() {
    // A co-drive whose primary this store does not hold: nothing to read, and not a writer.
    let store = Store::memory();
    let other = Store::memory();
    let primary = CoDrive::create(&other, "db").await.unwrap().key();
    let co = CoDrive::open(&store, primary, "db").await.unwrap();
    let mut s = co.snapshot().await.unwrap();
    assert!(s.missing().contains(&primary));
    assert!(s.list("/").is_empty());
    assert!(matches!(s.batch().await, Err(CoDriveError::NotAWriter(_))));
    // An authorized writer whose drive is not here yet is missing too.
    let a = CoDrive::create(&store, "db2").await.unwrap();
    a.authorize(co.local_key()).await.unwrap();
    a.authorize(primary).await.unwrap();
    let s = a.snapshot().await.unwrap();
    assert_eq!(s.missing().iter().collect::<Vec<_>>(), [&primary]);
    assert_eq!(s.view().writers.len(), 3);
}

/// Small files written through a batch wait for the batch: their blocks commit with their
/// entries (one signed append for many files); a big file streamed between them goes after
/// what is staged, and every file reads back whole.
#[tokio::test]
async fn small_files_in_a_batch_commit_with_their_entries() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let blobs = || a.own().blobs().core().info().length;
    let before = blobs();
    let big = bytes(1024 * 1024 + 70_000);
    {
        let mut b = a.batch().await.unwrap();
        for i in 0..5 {
            b.put(&format!("/s{i}"), &bytes(100 + i), PutOptions::default())
                .await
                .unwrap();
        }
        // Staged, not appended: a batch dropped now leaves no blocks behind.
        assert_eq!(blobs(), before);
        let mut w = b.writer("/big", PutOptions::default()).await.unwrap();
        for chunk in big.chunks(300_000) {
            w.write(chunk).await.unwrap();
        }
        w.finish().await.unwrap();
        b.put("/after", b"tail", PutOptions::default())
            .await
            .unwrap();
        b.flush().await.unwrap();
    }
    // Five small blocks, the big file's 18 blocks of 64 KiB (1 MiB + 70,000 bytes), one more.
    assert_eq!(blobs(), before + 5 + 18 + 1);
    let s = a.snapshot().await.unwrap();
    for i in 0..5 {
        assert_eq!(
            s.get(&format!("/s{i}")).await.unwrap().unwrap(),
            bytes(100 + i)
        );
    }
    assert_eq!(s.get("/big").await.unwrap().unwrap(), big);
    assert_eq!(s.get("/after").await.unwrap().unwrap(), b"tail");

    // A batch dropped before its flush appends nothing for its small files.
    let before = blobs();
    {
        let mut b = a.batch().await.unwrap();
        b.put("/dropped", b"never", PutOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(blobs(), before);
    assert!(a
        .snapshot()
        .await
        .unwrap()
        .get("/dropped")
        .await
        .unwrap()
        .is_none());
}
