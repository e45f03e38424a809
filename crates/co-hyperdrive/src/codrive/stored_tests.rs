//! Property test of the index kept on disk: after any sequence of writes by several writers
//! (each writing on a view that may be stale, so versions are concurrent), membership changes,
//! refreshes at any point and refreshes stopped midway (a crash between index writes), the
//! index shows exactly the full merge of the logs: the same writers, the same winners, the
//! same concurrent versions, the same version.

use proptest::prelude::*;

use super::stored::Crash;
use super::{Child, CoDrive, CoDriveError, Snapshot, View};
use crate::drive::PutOptions;
use crate::store::Store;

const WRITERS: usize = 3;
const PATHS: [&str; 5] = ["/a", "/b", "/a/x", "/a/y/z", "/c"];

#[derive(Debug, Clone)]
enum Act {
    /// Writer `w` writes (or deletes) a path on the view it last looked at.
    Write {
        w: usize,
        path: usize,
        delete: bool,
    },
    /// Writer `w` writes (or deletes, or deletes a folder) on the current view, through a
    /// batch that reads the index.
    WriteNow {
        w: usize,
        path: usize,
        how: u8,
    },
    /// Writer `w` looks at the co-drive again.
    Look {
        w: usize,
    },
    Auth {
        w: usize,
        target: usize,
    },
    Deauth {
        w: usize,
        target: usize,
    },
    /// A refresh of the index that stops after `after` commits.
    Crash {
        after: u64,
    },
    /// The index is refreshed and compared with the full merge.
    Check,
    /// Writer `w`'s rows are marked untrustworthy (a rebuild stopped midway).
    Distrust {
        w: usize,
    },
}

fn act() -> impl Strategy<Value = Act> {
    let w = 0..WRITERS;
    prop_oneof![
        8 => (w.clone(), 0..PATHS.len(), prop::bool::weighted(0.25))
            .prop_map(|(w, path, delete)| Act::Write { w, path, delete }),
        4 => (w.clone(), 0..PATHS.len(), 0u8..6)
            .prop_map(|(w, path, how)| Act::WriteNow { w, path, how }),
        3 => w.clone().prop_map(|w| Act::Look { w }),
        2 => (w.clone(), 0..WRITERS).prop_map(|(w, target)| Act::Auth { w, target }),
        1 => (w.clone(), 0..WRITERS).prop_map(|(w, target)| Act::Deauth { w, target }),
        2 => (0u64..16).prop_map(|after| Act::Crash { after }),
        2 => Just(Act::Check),
        1 => w.prop_map(|w| Act::Distrust { w }),
    ]
}

/// The index equals the full merge, for every read the index answers.
async fn check(co: &CoDrive) -> Result<(), CoDriveError> {
    let idx = co.indexed().await?;
    let full = co.snapshot().await?;
    assert_eq!(idx.version(), full.version());
    assert_eq!(idx.missing(), full.missing());
    let v = idx.view()?;
    assert_eq!(&v, full.view());
    for p in PATHS {
        assert_eq!(idx.resolved(p)?.as_ref(), full.view().paths.get(p));
        assert_eq!(idx.stat(p)?, full.stat(p)?);
    }
    for f in ["/", "/a", "/a/y", "/a/x", "/nothing"] {
        assert_eq!(idx.readdir(f)?, full.readdir(f), "readdir {f}");
        assert_eq!(idx.list(f)?, full.list(f), "list {f}");
        assert_eq!(
            idx.is_folder(f)?,
            !full.readdir(f).is_empty(),
            "is_folder {f}"
        );
        let mut children = Vec::new();
        idx.for_each_child(f, |c| {
            children.push(c);
            Ok::<_, CoDriveError>(())
        })?;
        assert_eq!(children, children_of(full.view(), f), "children {f}");
    }
    // What download and clear act on (a folder, a file, nothing).
    for p in ["/", "/a", PATHS[0], "/nothing"] {
        assert_eq!(idx.content_under(p)?, full.content_under(p)?, "content {p}");
    }
    Ok(())
}

/// What is directly in `folder` by the full merge: every resolved path in it, and each subfolder
/// that holds a visible file, at its first one.
fn children_of(v: &View, folder: &str) -> Vec<Child> {
    let f = crate::format::path::folder(folder);
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    for (p, r) in v.paths.range(format!("{f}/")..format!("{f}0")) {
        let rest = &p[f.len() + 1..];
        match rest.split_once('/') {
            None => out.push(Child::File {
                name: rest.to_string(),
                resolved: r.clone(),
            }),
            Some((name, _)) => {
                if r.winner.entry.is_some() && last.as_deref() != Some(name) {
                    last = Some(name.to_string());
                    out.push(Child::Folder {
                        name: name.to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Writes `p` through a batch on the index, and checks that the version's clock is what a batch
/// on the full merge would have given it: it supersedes exactly the versions the view shows.
async fn put_now(co: &CoDrive, p: &str, n: usize) -> Result<(), CoDriveError> {
    let full = co.view().await?;
    let mut b = co.batch().await?;
    let v = b
        .put(p, format!("now {n}").as_bytes(), PutOptions::default())
        .await?;
    b.flush().await?;
    let seen = match full.paths.get(p) {
        Some(r) if r.conflicts.is_empty() => vec![r.winner.clone()],
        Some(r) => r.conflicts.clone(),
        None => Vec::new(),
    };
    assert_eq!(
        v.clock,
        super::view::next_clock(co.local_key(), v.seq, seen.iter())
    );
    Ok(())
}

async fn run(acts: Vec<Act>, auth_all: bool) -> Result<(), CoDriveError> {
    let store = Store::memory();
    let primary = CoDrive::create(&store, "w0").await?;
    let mut cos = vec![primary];
    for w in 1..WRITERS {
        cos.push(CoDrive::open(&store, cos[0].key(), &format!("w{w}")).await?);
        if auth_all {
            cos[0].authorize(cos[w].local_key()).await?;
        }
    }
    let mut looked: Vec<Option<Snapshot<'_>>> = Vec::new();
    for co in &cos {
        looked.push(Some(co.snapshot().await?));
    }
    for (n, a) in acts.iter().enumerate() {
        match *a {
            Act::Write { w, path, delete } => {
                let Some(snap) = looked[w].as_mut() else {
                    continue;
                };
                let mut b = match snap.batch().await {
                    Ok(b) => b,
                    Err(CoDriveError::NotAWriter(_)) => continue,
                    Err(e) => return Err(e),
                };
                if delete {
                    b.del(PATHS[path]).await?;
                } else {
                    let data = format!("{w} {n}");
                    b.put(PATHS[path], data.as_bytes(), PutOptions::default())
                        .await?;
                }
                b.flush().await?;
            }
            Act::WriteNow { w, path, how } => {
                let p = PATHS[path];
                let r = match how {
                    0 => cos[w].del(p).await.map(|_| ()),
                    1 => cos[w].del_folder("/a").await.map(|_| ()),
                    _ => put_now(&cos[w], p, n).await,
                };
                match r {
                    Ok(()) | Err(CoDriveError::NotAWriter(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Act::Look { w } => {
                looked[w] = None;
                looked[w] = Some(cos[w].snapshot().await?);
            }
            Act::Auth { w, target } | Act::Deauth { w, target } => {
                let k = cos[target].local_key();
                let r = match a {
                    Act::Auth { .. } => cos[w].authorize(k).await,
                    _ => cos[w].deauthorize(k).await,
                };
                match r {
                    Ok(()) | Err(CoDriveError::NotAWriter(_) | CoDriveError::Primary) => {}
                    Err(e) => return Err(e),
                }
            }
            Act::Crash { after } => {
                match cos[0]
                    .refresh_index(Some(Crash {
                        after_commits: after,
                    }))
                    .await
                {
                    Ok(_) | Err(CoDriveError::IndexDamaged(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Act::Check => check(&cos[0]).await?,
            Act::Distrust { w } => cos[0].index_mark_rebuilding(cos[w].local_key())?,
        }
    }
    check(&cos[0]).await?;
    // Another handle (a new process) reads the same index.
    let again = CoDrive::open(&store, cos[0].key(), "w1").await?;
    check(&again).await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_index_is_the_full_merge(acts in proptest::collection::vec(act(), 1..60),
                                   auth_all in prop::bool::weighted(0.7)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(acts, auth_all)).unwrap();
    }
}

/// Appends a membership record to `co`'s own log as a peer that had seen only `frontier` would
/// have written it.
async fn raw_member(
    co: &CoDrive,
    op: super::view::MemberOp,
    frontier: &super::view::Clock,
) -> Result<(), CoDriveError> {
    use super::records;
    let n = co
        .own()
        .db()
        .range(&records::members())
        .await
        .map_err(crate::drive::DriveError::from)?
        .len() as u64;
    let mut b = co.own().batch().await?;
    b.put_raw(
        &records::member_key(n),
        &records::encode_member(op, frontier),
    )
    .await?;
    b.flush().await?;
    Ok(())
}

/// A removal by a writer that had seen less moves a writer's limit back below what the index
/// reflects; the refresh re-applying those blocks stops midway; the writer is authorized again
/// (its limit lifted) before the next refresh. The blocks the stopped refresh had rewritten must
/// be applied again: they are outside the range between the old and the new length.
async fn limit_moved_back_then_lifted(after: u64) -> Result<(), CoDriveError> {
    use super::view::MemberOp;
    let store = Store::memory();
    let a = CoDrive::create(&store, "a").await?;
    let b = CoDrive::open(&store, a.key(), "b").await?;
    a.authorize(b.local_key()).await?;
    for i in 0..12 {
        b.put(&format!("/f{i}"), b"x").await?;
    }
    check(&a).await?;
    // A removal that saw only b's first file (its header, a put and its record).
    let seen = [(a.key(), a.own().version()), (b.local_key(), 3)]
        .into_iter()
        .collect();
    raw_member(&a, MemberOp::Deauthorize(b.local_key()), &seen).await?;
    match a
        .refresh_index(Some(Crash {
            after_commits: after,
        }))
        .await
    {
        Ok(_) | Err(CoDriveError::IndexDamaged(_)) => {}
        Err(e) => return Err(e),
    }
    let now = [
        (a.key(), a.own().version()),
        (b.local_key(), b.own().version()),
    ]
    .into_iter()
    .collect();
    raw_member(&a, MemberOp::Authorize(b.local_key()), &now).await?;
    check(&a).await?;
    assert_eq!(a.indexed().await?.list("/")?.len(), 12);
    Ok(())
}

/// A removal by a writer that had seen less moves a writer's limit back below what the index
/// reflects; the refresh re-applying those blocks stops midway; the writer is authorized again
/// (its limit lifted) before the next refresh. The rows the stopped refresh had rewritten must be
/// applied again, though they lie outside the range between the old and the new length.
#[tokio::test]
async fn a_refresh_stopped_while_a_limit_moved_back_is_taken_up_again() {
    for after in 0..12 {
        limit_moved_back_then_lifted(after).await.unwrap();
    }
}

/// A writer new to the index is read in path order a page at a time (here 8 entries), the
/// version records and the file entries side by side: across pages, with paths that have only
/// a record (deleted), only a file (a plain Hyperdrive write) or a malformed entry, its rows
/// are what the full merge loads, and each is what a lookup of its path finds (the reading
/// by lookups the index applies a writer's new blocks with).
#[tokio::test]
async fn a_new_writer_is_read_a_page_at_a_time_as_the_full_merge_loads_it() {
    use cohd_format::sub;
    let store = Store::memory();
    let a = CoDrive::create(&store, "a").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "b").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    for i in 0..30 {
        b.put(&format!("/f{i:02}"), b"x").await.unwrap();
    }
    for i in (0..30).step_by(4) {
        b.del(&format!("/f{i:02}")).await.unwrap();
    }
    let mut raw = b.own().batch().await.unwrap();
    for i in 0..12 {
        raw.put(&format!("/plain{i:02}"), b"y").await.unwrap();
    }
    raw.put_raw(&sub::encode(sub::FILES, b"/f05x"), b"\xff\xff not an entry")
        .await
        .unwrap();
    raw.put_raw(&sub::encode(sub::FILES, b"relative"), b"")
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let d = b.own().clone();
    let loaded = a.load(&d).await.unwrap().versions;
    let mut read = Vec::new();
    let mut versions = super::index::Versions::new(&d);
    while let Some(v) = versions.next().await.unwrap() {
        read.push(v);
    }
    let expected: Vec<_> = loaded
        .into_iter()
        .flat_map(|(p, vs)| vs.into_iter().map(move |v| (p.clone(), v)))
        .collect();
    assert!(read.len() > 40, "{} versions", read.len());
    assert_eq!(read, expected);
    // Path by path, through lookups of the tree instead of a walk of it: the same versions,
    // and no path that has one left out.
    let paths = (0..30)
        .map(|i| format!("/f{i:02}"))
        .chain((0..12).map(|i| format!("/plain{i:02}")))
        .chain(["/f05x".to_string(), "relative".to_string()]);
    let mut looked_up = Vec::new();
    for p in paths {
        if let Some(v) = super::stored::version_at(d.db(), d.key(), &p)
            .await
            .unwrap()
        {
            looked_up.push((p, v));
        }
    }
    looked_up.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(read, looked_up);
    // And the index built from it (b is new to a's index) is the full merge.
    check(&a).await.unwrap();
    assert_eq!(a.indexed().await.unwrap().list("/").unwrap().len(), 22 + 12);
}

/// An `Indexed` reads the index as it stood when it was made: a refresh by another handle
/// meanwhile (here a second `CoDrive` of the same writer, which writes and refreshes) does not
/// show through, on disk (a database snapshot) as in memory.
#[tokio::test]
async fn an_indexed_reads_the_index_as_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    for store in [Store::memory(), Store::create(dir.path()).unwrap()] {
        let a = CoDrive::create(&store, "a").await.unwrap();
        for i in 0..5 {
            a.put(&format!("/d/f{i}"), b"old").await.unwrap();
        }
        let before = a.indexed().await.unwrap();
        let other = CoDrive::open(&store, a.key(), "a").await.unwrap();
        other.put("/d/new", b"new").await.unwrap();
        other.del("/d/f0").await.unwrap();
        let now = other.indexed().await.unwrap();
        assert!(now.stat("/d/new").unwrap().is_some());
        // The rows changed under it; it still reads the ones its version describes.
        assert!(before.stat("/d/new").unwrap().is_none());
        assert!(before.stat("/d/f0").unwrap().is_some());
        let names = |ix: &super::Indexed<'_>| -> Vec<String> {
            ix.list("/d").unwrap().into_iter().map(|e| e.path).collect()
        };
        assert_eq!(
            names(&before),
            ["/d/f0", "/d/f1", "/d/f2", "/d/f3", "/d/f4"]
        );
        assert_eq!(names(&now), ["/d/f1", "/d/f2", "/d/f3", "/d/f4", "/d/new"]);
        drop((before, now));
        store.close().await.unwrap();
    }
}
