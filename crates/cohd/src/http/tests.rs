//! The gateway's answers for the current version (read from the index on disk) on a co-drive
//! with concurrent versions, deletes, subfolders and symlinks: what they must be, and the same
//! as those for the same version asked with `?at=` (a checkout, merged in memory).

use std::sync::Arc;

use co_hyperdrive::format::Key;
use co_hyperdrive::{Child, CoDrive, PutOptions, Store};
use http_body_util::BodyExt;
use hyper::Request;

use super::shown::Shown;
use super::*;

/// A response, read whole (a failure as the status and text `respond` would send).
#[derive(Debug, PartialEq)]
struct Got {
    status: u16,
    location: Option<String>,
    disposition: Option<String>,
    etag: Option<String>,
    body: Vec<u8>,
}

async fn get(co: &Arc<CoDrive>, target: &str, json: bool) -> Got {
    let mut req = Request::builder().uri(target);
    if json {
        req = req.header(header::ACCEPT, "application/json");
    }
    let req = req.body(()).expect("request");
    let resp = match answer(co, &req).await {
        Ok(r) => r,
        Err(f) => {
            return Got {
                status: f.status.as_u16(),
                location: None,
                disposition: None,
                etag: None,
                body: f.msg.into_bytes(),
            }
        }
    };
    let h = |n| {
        resp.headers()
            .get(n)
            .map(|v: &HeaderValue| v.to_str().expect("ascii").to_string())
    };
    let (location, disposition, etag) = (
        h(header::LOCATION),
        h(header::CONTENT_DISPOSITION),
        h(header::ETAG),
    );
    Got {
        status: resp.status().as_u16(),
        location,
        disposition,
        etag,
        body: resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    }
}

/// Writers A (the primary) and B. `/docs/c.txt` written by both concurrently, `/docs/gone.txt`
/// edited by A while B deleted it, `/docs/old.txt` deleted, `/empty/` holding only a deleted
/// file, a subfolder with a deeper one, links to a folder and to a file. Returns (A, B's key).
async fn drive(store: &Store) -> (Arc<CoDrive>, Key) {
    let a = CoDrive::create(store, "a").await.expect("create");
    let b = CoDrive::open(store, a.key(), "b").await.expect("open");
    a.authorize(b.local_key()).await.expect("authorize");
    for (p, d) in [
        ("/docs/plain.txt", &b"no conflict"[..]),
        ("/docs/gone.txt", b"first"),
        ("/docs/old.txt", b"old"),
        ("/docs/sub/deep/x.txt", b"x"),
        ("/docs/sub/y.txt", b"y"),
        ("/docs/sub-file", b"z"),
        ("/empty/x", b"x"),
    ] {
        a.put(p, d).await.expect("put");
    }
    a.del("/docs/old.txt").await.expect("del");
    a.del("/empty/x").await.expect("del");
    a.symlink("/to-docs", "/docs").await.expect("symlink");
    a.symlink("/to-root", "..").await.expect("symlink");
    a.symlink("/latest", "/docs/plain.txt")
        .await
        .expect("symlink");
    // Both write on the view from before either's writes: concurrent versions.
    let mut sa = a.snapshot().await.expect("snapshot");
    let mut sb = b.snapshot().await.expect("snapshot");
    let mut w = sa.batch().await.expect("batch");
    let o = PutOptions::default();
    w.put("/docs/c.txt", b"A's version", o.clone())
        .await
        .expect("put");
    w.put("/docs/gone.txt", b"A's edit", o.clone())
        .await
        .expect("put");
    w.flush().await.expect("flush");
    let mut w = sb.batch().await.expect("batch");
    w.put("/docs/c.txt", b"B's version", o).await.expect("put");
    w.del("/docs/gone.txt").await.expect("del");
    w.flush().await.expect("flush");
    let kb = b.local_key();
    (Arc::new(a), kb)
}

/// The names and types of a JSON listing's rows.
fn rows(g: &Got) -> Vec<(String, String)> {
    let j: serde_json::Value = serde_json::from_slice(&g.body).expect("json listing");
    j["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().expect("text").to_string();
            (s("name"), s("type"))
        })
        .collect()
}

#[tokio::test]
async fn the_current_version_answers_from_the_index() {
    let store = Store::memory();
    let (a, kb) = drive(&store).await;
    let ka = a.key();
    let n = |s: &str, t: &str| (s.to_string(), t.to_string());
    // Read from the index on disk, not merged in memory; a past version from a checkout.
    assert!(matches!(shown(&a, None).await, Ok(Shown::Now(_))));
    let at = a.version().await.expect("version").to_string();
    assert!(matches!(shown(&a, Some(&at)).await, Ok(Shown::At(_))));

    // A folder's listing: its files, a conflicted delete, each subfolder once; no plain delete.
    let g = get(&a, "/docs/", true).await;
    assert_eq!(g.status, 200, "{}", String::from_utf8_lossy(&g.body));
    let gone = if a.get("/docs/gone.txt").await.expect("get").is_some() {
        "file"
    } else {
        "deleted"
    };
    assert_eq!(
        rows(&g),
        [
            n("c.txt", "file"),
            n("gone.txt", gone),
            n("plain.txt", "file"),
            // `sub-file` sorts before `sub/…`: rows come in path order.
            n("sub-file", "file"),
            n("sub", "folder"),
        ]
    );
    let j: serde_json::Value = serde_json::from_slice(&g.body).expect("json");
    assert_eq!(
        j["entries"][0]["conflicts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        rows(&get(&a, "/", true).await),
        [
            n("docs", "folder"),
            n("latest", "symlink"),
            n("to-docs", "symlink"),
            n("to-root", "symlink")
        ]
    );
    assert_eq!(
        rows(&get(&a, "/docs/sub/", true).await),
        [n("deep", "folder"), n("y.txt", "file")]
    );

    // Each writer's version of a conflicted path; the loser's saved under its conflict name.
    let winner = a.get("/docs/c.txt").await.expect("get").expect("c.txt");
    for (k, text) in [(ka, &b"A's version"[..]), (kb, b"B's version")] {
        let g = get(
            &a,
            &format!("/docs/c.txt?writer={}", &k.to_hex()[..8]),
            false,
        )
        .await;
        assert_eq!((g.status, g.body.as_slice()), (200, text));
        assert_eq!(g.disposition.is_some(), winner != text, "{g:?}");
    }
    // A version that is a delete, and a writer with no version.
    let (editor, deleter) = (ka.to_hex(), kb.to_hex());
    let g = get(&a, &format!("/docs/gone.txt?writer={deleter}"), false).await;
    assert_eq!(g.status, 404);
    assert!(
        String::from_utf8_lossy(&g.body).contains("deleted by"),
        "{g:?}"
    );
    let g = get(&a, &format!("/docs/gone.txt?writer={editor}"), false).await;
    assert_eq!((g.status, g.body.as_slice()), (200, &b"A's edit"[..]));
    assert_eq!(
        get(&a, &format!("/docs/plain.txt?writer={deleter}"), false)
            .await
            .status,
        404
    );
    assert_eq!(
        get(&a, &format!("/nothing?writer={editor}"), false)
            .await
            .status,
        404
    );
    assert_eq!(
        get(&a, &format!("/?writer={editor}"), false).await.status,
        404
    );

    // Missing paths, deleted ones, a folder of deleted files only; redirects.
    for t in [
        "/nothing",
        "/nothing/",
        "/docs/old.txt",
        "/docs/old.txt/",
        "/empty",
        "/empty/",
    ] {
        assert_eq!(get(&a, t, false).await.status, 404, "{t}");
    }
    let g = get(&a, "/docs/sub", false).await;
    assert_eq!((g.status, g.location.as_deref()), (301, Some("/docs/sub/")));
    let g = get(&a, "/docs/plain.txt/", false).await;
    assert_eq!(
        (g.status, g.location.as_deref()),
        (301, Some("/docs/plain.txt"))
    );
    let g = get(&a, "/to-docs", false).await;
    assert_eq!((g.status, g.location.as_deref()), (302, Some("/docs/")));
    // A link to the root names no file.
    assert_eq!(get(&a, "/to-root", false).await.status, 404);
    let g = get(&a, "/latest", false).await;
    assert_eq!((g.status, g.body.as_slice()), (200, &b"no conflict"[..]));
}

/// Every answer for the current version is the one for the same version asked with `?at=`
/// (listings but for the links that keep `at`), and the two views show every folder alike.
#[tokio::test]
async fn the_index_answers_as_a_checkout_of_the_same_version() {
    let store = Store::memory();
    let (a, kb) = drive(&store).await;
    let idx = Shown::Now(a.indexed().await.expect("indexed"));
    let version = idx.version().clone();
    let past = Shown::At(a.checkout(&version).await.expect("checkout"));
    let folders = [
        "/",
        "/docs",
        "/docs/sub",
        "/docs/sub/deep",
        "/empty",
        "/docs/c.txt",
        "/no",
    ];
    for f in folders {
        let mut now = Vec::new();
        let mut then: Vec<Child> = Vec::new();
        idx.for_each_child(f, |c| now.push(c)).expect("children");
        past.for_each_child(f, |c| then.push(c)).expect("children");
        assert_eq!(now, then, "{f}");
        let (i, p) = (idx.is_folder(f), past.is_folder(f));
        assert_eq!(i.expect("index"), p.expect("checkout"), "{f}");
    }
    let at = version.to_string();
    let mut targets: Vec<String> = [
        "/docs/c.txt",
        "/docs/gone.txt",
        "/docs/plain.txt",
        "/docs/old.txt",
        "/docs/sub",
        "/docs/plain.txt/",
        "/to-docs",
        "/latest",
        "/to-root",
        "/empty/",
        "/nothing",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    for w in [a.key(), kb] {
        for p in [
            "/docs/c.txt",
            "/docs/gone.txt",
            "/docs/plain.txt",
            "/nothing",
        ] {
            targets.push(format!("{p}?writer={w}"));
        }
    }
    for t in targets {
        let now = get(&a, &t, false).await;
        let sep = if t.contains('?') { '&' } else { '?' };
        let mut then = get(&a, &format!("{t}{sep}at={at}"), false).await;
        // A redirect keeps the query it came with.
        then.location = then
            .location
            .map(|l| l.replace(&format!("{sep}at={at}"), ""));
        assert_eq!(now, then, "{t}");
    }
    for f in ["/", "/docs/", "/docs/sub/"] {
        let (now, then) = (
            get(&a, f, true).await,
            get(&a, &format!("{f}?at={at}"), true).await,
        );
        let j = |g: &Got| serde_json::from_slice::<serde_json::Value>(&g.body).expect("json");
        let (now, then) = (j(&now), j(&then));
        assert_eq!(now["entries"], then["entries"], "{f}");
        assert_eq!(now["version"], then["version"], "{f}");
    }
}
