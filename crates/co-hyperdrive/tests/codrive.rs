//! The co-drive over real drives: writers sharing one store (as if fully replicated). Ports the
//! original's acceptance scenarios that need no network, compared as sets.

use co_hyperdrive::Store;
use co_hyperdrive::{CoDrive, CoDriveError};

fn names(v: &co_hyperdrive::View) -> Vec<String> {
    v.files().map(|(p, _)| p.clone()).collect()
}

#[tokio::test]
async fn authorize_write_overwrite_delete_revoke() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();

    // Write through the co-drive, read it back; records stay out of listings.
    a.put("/example.txt", b"Hello World!").await.unwrap();
    assert_eq!(
        a.get("/example.txt").await.unwrap().unwrap(),
        b"Hello World!"
    );
    assert_eq!(names(&a.view().await.unwrap()), vec!["/example.txt"]);
    assert_eq!(a.own().readdir("/").await.unwrap(), vec!["example.txt"]);

    // A non-writer cannot write, and is told how to become one.
    let err = b.put("/b.txt", b"x").await.unwrap_err();
    assert!(matches!(err, CoDriveError::NotAWriter(k) if k == b.local_key()));
    assert!(err.to_string().contains("cohd authorize"));

    // A malformed key is refused.
    let unset = co_hyperdrive::format::Key([0; 32]);
    assert!(matches!(
        a.authorize(unset).await,
        Err(CoDriveError::BadKey(_))
    ));

    // Authorized, its files join the view of every reader.
    a.authorize(b.local_key()).await.unwrap();
    b.put("/b.txt", b"from b").await.unwrap();
    assert_eq!(a.get("/b.txt").await.unwrap().unwrap(), b"from b");
    let v = a.view().await.unwrap();
    assert_eq!(v.writers.len(), 2);

    // B saw A's file when overwriting it: B's version wins, no conflict.
    b.put("/example.txt", b"New").await.unwrap();
    let v = a.view().await.unwrap();
    assert_eq!(a.get("/example.txt").await.unwrap().unwrap(), b"New");
    assert_eq!(v.conflicts().count(), 0);

    // B deletes a file only A has; A's later write (which saw the delete) revives it.
    a.put("/only-a", b"1").await.unwrap();
    assert!(b.del("/only-a").await.unwrap());
    assert_eq!(a.get("/only-a").await.unwrap(), None);
    assert!(!names(&a.view().await.unwrap()).contains(&"/only-a".to_string()));
    a.put("/only-a", b"2").await.unwrap();
    assert_eq!(b.get("/only-a").await.unwrap().unwrap(), b"2");

    // rm -r hides the folder as seen.
    b.put("/dir/x", b"x").await.unwrap();
    a.put("/dir/y", b"y").await.unwrap();
    assert_eq!(a.del_folder("/dir").await.unwrap(), 2);
    assert!(names(&b.view().await.unwrap())
        .iter()
        .all(|p| !p.starts_with("/dir/")));

    // The primary cannot be removed; B can be. B's seen writes stay, its later ones do not count.
    assert!(matches!(
        b.deauthorize(a.key()).await,
        Err(CoDriveError::Primary)
    ));
    a.deauthorize(b.local_key()).await.unwrap();
    assert_eq!(a.get("/b.txt").await.unwrap().unwrap(), b"from b");
    assert!(matches!(
        b.put("/late", b"x").await,
        Err(CoDriveError::NotAWriter(_))
    ));
    // Even written behind the co-drive's back (plain drive write), B's later file is ignored.
    b.own().put("/late", b"x").await.unwrap();
    assert_eq!(a.get("/late").await.unwrap(), None);

    // Re-authorized, B is a writer again.
    a.authorize(b.local_key()).await.unwrap();
    b.put("/back", b"again").await.unwrap();
    assert_eq!(a.get("/back").await.unwrap().unwrap(), b"again");
}

#[tokio::test]
async fn malformed_data_from_a_writer_is_ignored_not_fatal() {
    let store = Store::memory();
    let a = CoDrive::create(&store, "db").await.unwrap();
    let b = CoDrive::open(&store, a.key(), "w2").await.unwrap();
    a.authorize(b.local_key()).await.unwrap();
    b.put("/good", b"ok").await.unwrap();
    a.put("/a", b"a").await.unwrap();
    // Writer b's drive gets garbage under both subs, written behind the co-drive's back.
    let mut batch = b.own().batch().await.unwrap();
    batch.put_raw(b"files\0/bad", b"{not json").await.unwrap();
    batch
        .put_raw(b"cohd\0v/x/../y", br#"{"clock":{},"deleted":false}"#)
        .await
        .unwrap();
    batch
        .put_raw(b"cohd\0m/ffffffffffffffff", b"\xff\xfe")
        .await
        .unwrap();
    batch.flush().await.unwrap();
    let v = a.view().await.unwrap();
    assert_eq!(names(&v), vec!["/a", "/good"]);
    assert_eq!(a.get("/good").await.unwrap().unwrap(), b"ok");
}
