//! Versions of the co-drive: `version()` is a frontier (each writer's db length), `checkout` shows
//! the view at one read-only, and `watch` reports new ones from every writer, including writers
//! authorized after the watch began. Writers share one memory store (as if fully replicated).

use std::collections::BTreeMap;
use std::time::Duration;

use co_hyperdrive::format::Key;
use co_hyperdrive::Store;
use co_hyperdrive::{CoDrive, CoDriveError, Frontier, Snapshot, Watch};
use futures::StreamExt;

/// Every visible file of a snapshot with its content (symlinks followed; a dangling one is left
/// out).
async fn contents(s: &Snapshot<'_>) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in s.list("/") {
        if let Some(c) = s.get(&e.path).await.unwrap() {
            out.insert(e.path.clone(), c);
        }
    }
    out
}

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect()
}

#[tokio::test]
async fn checkout_shows_exactly_the_past_view() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    a.put("/a1", b"a1").await.unwrap();
    a.put("/shared", b"from a").await.unwrap();
    b.put("/b1", b"b1").await.unwrap();
    b.put("/shared", b"from b").await.unwrap();
    a.put("/dir/x", b"x").await.unwrap();
    a.symlink("/link", "/dir/x").await.unwrap();

    // The version names each writer's db length; every handle on the same data agrees.
    let old = a.version().await.unwrap();
    assert_eq!(old.get(&a.key()), a.own().version());
    assert_eq!(old.get(&b.local_key()), b.own().version());
    assert_eq!(old.iter().count(), 2);
    assert_eq!(b.version().await.unwrap(), old);
    let then = a.snapshot().await.unwrap();
    assert_eq!(then.version(), &old);
    let old_files = files(&[
        ("/a1", "a1"),
        ("/b1", "b1"),
        ("/dir/x", "x"),
        ("/link", "x"),
        ("/shared", "from b"),
    ]);
    assert_eq!(contents(&then).await, old_files);

    // Much happens after: overwrites, deletes, a new writer, a removal, a write behind the
    // co-drive's back.
    a.put("/shared", b"later").await.unwrap();
    assert!(b.del("/a1").await.unwrap());
    assert_eq!(a.del_folder("/dir").await.unwrap(), 1);
    b.put("/b2", b"b2").await.unwrap();
    let c = CoDrive::open(&store, a.key(), "w3").await.unwrap();
    a.authorize(c.local_key()).await.unwrap();
    c.put("/c1", b"c1").await.unwrap();
    c.put("/b1", b"c over b").await.unwrap();
    a.deauthorize(b.local_key()).await.unwrap();
    b.own().put("/late", b"ignored").await.unwrap();
    let now = a.snapshot().await.unwrap();
    assert_ne!(contents(&now).await, old_files);
    assert_ne!(now.version(), &old);
    assert!(now.version().includes(&old));

    // The checkout at the old version is that view, whichever handle takes it.
    for co in [&a, &b, &c] {
        let past = co.checkout(&old).await.unwrap();
        assert!(past.is_checkout());
        assert_eq!(past.version(), &old);
        assert_eq!(past.view(), then.view());
        assert!(past.missing().is_empty());
        assert_eq!(contents(&past).await, old_files);
        assert_eq!(past.readdir("/"), ["a1", "b1", "dir", "link", "shared"]);
        assert_eq!(past.get("/c1").await.unwrap(), None);
        assert_eq!(past.get("/b2").await.unwrap(), None);
        assert!(past.view().writers.contains_key(&b.local_key()));
        assert!(!past.view().writers.contains_key(&c.local_key()));
    }

    // Its text form parses back to the same version.
    let text = old.to_string();
    let parsed: Frontier = text.parse().unwrap();
    assert_eq!(parsed, old);
    assert_eq!(
        contents(&a.checkout(&parsed).await.unwrap()).await,
        old_files
    );

    // Checking out the current version gives the current view.
    let cur = a.version().await.unwrap();
    let same = a.checkout(&cur).await.unwrap();
    assert_eq!(same.view(), now.view());
    assert_eq!(contents(&same).await, contents(&now).await);
    // ... also when computed afresh by another handle.
    assert_eq!(c.checkout(&cur).await.unwrap().view(), now.view());
}

#[tokio::test]
async fn checkout_is_read_only() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    a.put("/f", b"1").await.unwrap();
    let v = a.version().await.unwrap();
    a.put("/f", b"2").await.unwrap();
    let mut past = a.checkout(&v).await.unwrap();
    assert!(past.is_writer());
    let err = past.batch().await.unwrap_err();
    assert!(matches!(err, CoDriveError::Checkout));
    assert!(err.to_string().contains("read-only"));
    assert_eq!(past.get("/f").await.unwrap().unwrap(), b"1");
    assert_eq!(a.get("/f").await.unwrap().unwrap(), b"2");
}

#[tokio::test]
async fn frontier_beyond_the_store_or_partial() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    let authorized = a.own().version();
    a.put("/a", b"a").await.unwrap();
    b.put("/b", b"b").await.unwrap();
    let v = a.version().await.unwrap();

    // More of a writer than the store holds.
    let held = a.own().version();
    let mut far = v.clone();
    far.0.insert(a.key(), held + 5);
    match a.checkout(&far).await {
        Err(CoDriveError::BeyondStore {
            writer,
            wanted,
            held: h,
        }) => {
            assert_eq!((writer, wanted, h), (a.key(), held + 5, held));
        }
        other => panic!("expected BeyondStore, got {other:?}"),
    }
    // A writer the store does not hold at all.
    let stranger = Store::memory().own_key("db", co_hyperdrive::CoreFormat::default());
    let mut unknown = v.clone();
    unknown.0.insert(stranger, 0);
    assert_eq!(
        a.checkout(&unknown).await.unwrap().view(),
        a.checkout(&v).await.unwrap().view()
    );
    let mut primary_unknown = Frontier::default();
    let other = CoDrive::open(&store, stranger, "w9").await.unwrap();
    primary_unknown.0.insert(stranger, 3);
    assert!(matches!(
        other.checkout(&primary_unknown).await,
        Err(CoDriveError::BeyondStore { held: 0, .. })
    ));

    // A writer the frontier does not name counts as empty; the view still names it, as missing.
    let mut only_a = v.clone();
    only_a.0.remove(&b.local_key());
    let s = a.checkout(&only_a).await.unwrap();
    assert_eq!(contents(&s).await, files(&[("/a", "a")]));
    assert!(s.view().writers.contains_key(&b.local_key()));
    assert!(s.missing().contains(&b.local_key()));
    // Named with 0: held, but nothing yet.
    let mut b_empty = only_a.clone();
    b_empty.0.insert(b.local_key(), 0);
    let s = a.checkout(&b_empty).await.unwrap();
    assert!(s.missing().is_empty());
    assert_eq!(contents(&s).await, files(&[("/a", "a")]));
    // The empty frontier: nothing at all, the primary missing.
    let s = a.checkout(&Frontier::default()).await.unwrap();
    assert!(s.list("/").is_empty());
    assert!(s.missing().contains(&a.key()));
    // A shorter length of a writer: its earlier state.
    let mut shorter = v.clone();
    shorter.0.insert(a.key(), authorized);
    assert_eq!(
        contents(&a.checkout(&shorter).await.unwrap()).await,
        files(&[("/b", "b")])
    );
}

#[tokio::test]
async fn snapshot_version_follows_its_own_batches() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    a.put("/x", b"x").await.unwrap();
    let mut s = a.snapshot().await.unwrap();
    let mut batch = s.batch().await.unwrap();
    batch
        .put("/y", b"y", co_hyperdrive::PutOptions::default())
        .await
        .unwrap();
    batch.flush().await.unwrap();
    let v = a.version().await.unwrap();
    assert_eq!(s.version(), &v);
    assert_eq!(a.checkout(&v).await.unwrap().view(), s.view());
}

/// The next version from the watch, failing the test after a while.
async fn next(w: &mut Watch<'_>) -> Frontier {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("the watch reported nothing")
        .unwrap()
}

/// Versions from the watch until one satisfies `done`.
async fn until(w: &mut Watch<'_>, done: impl Fn(&Frontier) -> bool) -> Frontier {
    loop {
        let f = next(w).await;
        if done(&f) {
            return f;
        }
    }
}

#[tokio::test]
async fn watch_reports_every_writer_even_added_later() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    a.put("/start", b"s").await.unwrap();
    let mut w = a.watch().await.unwrap();
    assert_eq!(w.current(), &a.version().await.unwrap());

    // A local write.
    a.put("/a", b"a").await.unwrap();
    let f = next(&mut w).await;
    assert_eq!(f.get(&a.key()), a.own().version());
    assert_eq!(w.current(), &f);

    // B exists (its core is held) and is authorized after the watch began; its first write is
    // reported while the watch waits.
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    let f = until(&mut w, |f| f.get(&a.key()) == a.own().version()).await;
    assert_eq!(f.get(&b.local_key()), 0);
    let (f, ()) = tokio::join!(until(&mut w, |f| f.get(&b.local_key()) > 0), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.put("/b", b"b").await.unwrap();
    });
    assert_eq!(f.get(&b.local_key()), b.own().version());
    assert_eq!(
        a.checkout(&f).await.unwrap().get("/b").await.unwrap(),
        Some(b"b".to_vec())
    );

    // C is authorized before the store holds anything of it: the watch finds its core when it
    // appears, and reports its writes.
    let c_key = store.own_key("w3", co_hyperdrive::CoreFormat::default());
    a.authorize(c_key).await.unwrap();
    let f = until(&mut w, |f| f.get(&a.key()) == a.own().version()).await;
    assert!(!f.0.contains_key(&c_key));
    let (f, ()) = tokio::join!(until(&mut w, |f| f.get(&c_key) > 0), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = CoDrive::open(&store, a.key(), "w3").await.unwrap();
        c.put("/c", b"c").await.unwrap();
    });
    assert!(f.get(&c_key) > 0);
    // Later writes of C (now listened to) too.
    let c = CoDrive::open(&store, a.key(), "w3").await.unwrap();
    let before = f.get(&c_key);
    let (f, ()) = tokio::join!(until(&mut w, |f| f.get(&c_key) > before), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.put("/c2", b"c2").await.unwrap();
    });
    assert_eq!(f.get(&c_key), c.own().version());
}

#[tokio::test]
async fn watch_as_a_stream() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    let stream = a.watch().await.unwrap().into_stream();
    futures::pin_mut!(stream);
    let want: Key = b.local_key();
    let (got, ()) = tokio::join!(
        async {
            loop {
                let f = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("the watch reported nothing")
                    .expect("the stream never ends")
                    .unwrap();
                if f.get(&want) > 0 {
                    return f;
                }
            }
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.put("/b", b"b").await.unwrap();
        }
    );
    assert_eq!(got.get(&want), b.own().version());
}

/// A small deterministic generator (no wall clock, no OS randomness: reruns are identical).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn every_past_version_checks_out_as_it_was() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    let c = CoDrive::open(&store, a.key(), "w3").await.unwrap();
    let all = [&a, &b, &c];
    let names = ["/x", "/y", "/d/p", "/d/q", "/d/e/r"];
    let mut rng = Lcg(7);
    let mut history = Vec::new();
    for step in 0..80 {
        let who = all[rng.below(3) as usize];
        let name = names[rng.below(names.len() as u64) as usize];
        // Refusals (not a writer, nothing to delete) are part of the history too.
        let _ = match rng.below(8) {
            0..=2 => who
                .put(name, format!("{step}").as_bytes())
                .await
                .map(|_| ()),
            3 => who.del(name).await.map(|_| ()),
            4 => who.del_folder("/d").await.map(|_| ()),
            5 => {
                let target = all[1 + rng.below(2) as usize].local_key();
                who.authorize(target).await
            }
            6 => {
                let target = all[1 + rng.below(2) as usize].local_key();
                who.deauthorize(target).await
            }
            // Behind the co-drive's back: a plain drive write without a version record.
            _ => who
                .own()
                .put(name, b"plain")
                .await
                .map(|_| ())
                .map_err(Into::into),
        };
        let s = all[rng.below(3) as usize].snapshot().await.unwrap();
        history.push((s.version().clone(), s.view().clone(), contents(&s).await));
    }
    let distinct: std::collections::BTreeSet<_> = history.iter().map(|h| &h.0).collect();
    assert!(distinct.len() > 40, "the history barely moved");
    assert!(history.iter().any(|h| h.1.writers.len() == 3));
    assert!(history.iter().any(|h| !h.1.removed.is_empty()));
    assert!(history.iter().any(|h| h.1.conflicts().count() > 0));
    for (i, (version, view, files)) in history.iter().enumerate() {
        let co = all[i % 3];
        let past = co.checkout(version).await.unwrap();
        assert_eq!(past.view(), view, "step {i}");
        assert_eq!(&contents(&past).await, files, "step {i}");
        let again: Frontier = version.to_string().parse().unwrap();
        assert_eq!(co.checkout(&again).await.unwrap().view(), view, "step {i}");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A batch's writes become visible together and carry one time: a checkout by time shows all
/// of them or none, whichever millisecond it names (not a version inside the batch, where the
/// tree has none of it).
#[tokio::test]
async fn a_checkout_by_time_takes_a_batch_whole() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    a.put("/first", b"1").await.unwrap();
    let before = a.own().version();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let t0 = now_ms();
    let mut b = a.batch().await.unwrap();
    for p in ["/x", "/y", "/z"] {
        b.put(p, b"v", Default::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    b.flush().await.unwrap();
    let t1 = now_ms();
    let end = a.own().version();
    assert_eq!(end, before + 6);
    for t in t0 - 1..=t1 + 1 {
        let at = a.version_at_time(t).await.unwrap();
        let len = at.get(&a.key());
        assert!(len == before || len == end, "at {t}: {len}");
        let shown = contents(&a.checkout(&at).await.unwrap()).await;
        let batch = ["/x", "/y", "/z"]
            .iter()
            .filter(|p| shown.contains_key(**p))
            .count();
        assert_eq!(batch, if len == end { 3 } else { 0 }, "at {t}");
        assert!(shown.contains_key("/first"), "at {t}");
    }
    assert_eq!(a.version_at_time(t1).await.unwrap().get(&a.key()), end);
}

/// A removal record whose limit falls inside the removed writer's own batch (its remover had
/// received part of the batch, as older versions recorded): every handle, the removed
/// writer's own included (it knows where its batches end), reads that writer's log at the
/// limit alike, and none fails.
#[tokio::test]
async fn a_removal_limit_inside_the_removed_writers_batch_reads_everywhere() {
    use co_hyperdrive::records;
    use co_hyperdrive::view::{Clock, MemberOp};
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    b.put("/b1", b"b1").await.unwrap();
    let start = b.own().version();
    let mut batch = b.batch().await.unwrap();
    for p in ["/x", "/y", "/z"] {
        batch.put(p, b"v", Default::default()).await.unwrap();
    }
    batch.flush().await.unwrap();
    assert_eq!(b.own().version(), start + 6);
    let limit = start + 3;
    // Written by hand: `deauthorize` now records a length the writer committed.
    let mut raw = a.own().batch().await.unwrap();
    let frontier: Clock = [(b.local_key(), limit)].into_iter().collect();
    raw.put_raw(
        &records::member_key(0x100),
        &records::encode_member(MemberOp::Deauthorize(b.local_key()), &frontier),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    let seen_by_a = contents(&a.snapshot().await.unwrap()).await;
    let seen_by_b = contents(&b.snapshot().await.unwrap()).await;
    // (What the log shows at such a length is whatever its tree there holds: the same for
    // every reader, since it follows from the blocks alone.)
    assert_eq!(seen_by_a, seen_by_b);
    // The removed writer's listing from its index agrees too.
    let listed: Vec<String> = b
        .indexed()
        .await
        .unwrap()
        .list("/")
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(listed, seen_by_a.keys().cloned().collect::<Vec<_>>());
}
