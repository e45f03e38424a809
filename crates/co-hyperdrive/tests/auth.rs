//! Authorization requests over loopback TCP: allowed, denied, nobody able to decide, timed out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use co_hyperdrive::auth::{self, AuthError, AuthPolicy};
use co_hyperdrive::CoDrive;
use co_hyperdrive::Store;
use co_hyperdrive::{add_known_cores, catch_up, spawn_follow, ReplicateOptions, Replicator};

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

struct Node {
    /// Kept alive for the node's lifetime (the cores live in it).
    _store: Store,
    co: Arc<CoDrive>,
    repl: Replicator,
}

async fn writer_node(policy: Option<AuthPolicy>) -> (Node, SocketAddr) {
    let store = Store::memory();
    let co = Arc::new(CoDrive::create(&store, "db").await.unwrap());
    co.put("/from-a", b"a").await.unwrap();
    let repl = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    spawn_follow(
        store.clone(),
        repl.clone(),
        co.key(),
        "db".into(),
        Duration::from_millis(50),
    );
    add_known_cores(&store, &repl, co.key(), "db")
        .await
        .unwrap();
    let (addr, _) = repl.listen(LOCAL).await.unwrap();
    if let Some(p) = policy {
        let (r, c) = (repl.clone(), co.clone());
        tokio::spawn(async move { auth::answer_requests(r, &c, p).await });
    }
    (
        Node {
            _store: store,
            co,
            repl,
        },
        addr,
    )
}

async fn follower(
    primary: co_hyperdrive::format::Key,
    peer: SocketAddr,
    download_all: bool,
) -> Node {
    let store = Store::memory();
    let co = Arc::new(CoDrive::open(&store, primary, "db").await.unwrap());
    let repl = Replicator::new(ReplicateOptions {
        download_all,
        ..ReplicateOptions::default()
    });
    spawn_follow(
        store.clone(),
        repl.clone(),
        primary,
        "db".into(),
        Duration::from_millis(50),
    );
    repl.connect(peer).await.unwrap();
    assert!(
        catch_up(&store, &repl, primary, "db", Duration::from_secs(10))
            .await
            .unwrap()
    );
    Node {
        _store: store,
        co,
        repl,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_makes_a_writer_whose_files_reach_the_primary() {
    let (a, addr) = writer_node(Some(auth::allow_all())).await;
    let b = follower(a.co.key(), addr, false).await;
    assert!(b.co.put("/x", b"x").await.is_err(), "not a writer yet");
    auth::request_authorization(&b.repl, &b.co, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(b.co.snapshot().await.unwrap().is_writer());
    // B writes; A learns about B's cores from the record and fetches B's file.
    b.co.put("/from-b", b"b").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(got)) = a.co.get("/from-b").await {
            assert_eq!(got, b"b");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never saw B's file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.co.get("/from-a").await.unwrap().unwrap(), b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_timed_out_and_nobody_can_decide() {
    let (a, addr) = writer_node(Some(auth::allow_keys(vec![]))).await;
    let b = follower(a.co.key(), addr, false).await;
    assert_eq!(
        auth::request_authorization(&b.repl, &b.co, Duration::from_secs(10)).await,
        Err(AuthError::Denied)
    );

    // A writer whose policy never decides in time.
    let slow: AuthPolicy = Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            true
        })
    });
    let (s, addr) = writer_node(Some(slow)).await;
    let c = follower(s.co.key(), addr, false).await;
    let t = std::time::Instant::now();
    assert_eq!(
        auth::request_authorization(&c.repl, &c.co, Duration::from_millis(400)).await,
        Err(AuthError::Timeout(Duration::from_millis(400)))
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // A peer that is not a writer answers at once that it cannot decide.
    let (w, addr) = writer_node(None).await;
    // A relay keeps every block, so it can serve what peers behind it ask for.
    let relay = follower(w.co.key(), addr, true).await;
    let (raddr, _) = relay.repl.listen(LOCAL).await.unwrap();
    let (r, c) = (relay.repl.clone(), relay.co.clone());
    tokio::spawn(async move { auth::answer_requests(r, &c, auth::allow_all()).await });
    let d = follower(w.co.key(), raddr, false).await;
    let t = std::time::Instant::now();
    assert_eq!(
        auth::request_authorization(&d.repl, &d.co, Duration::from_secs(20)).await,
        Err(AuthError::NobodyCanDecide)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "known quickly");
    // And the relay serves the writer's files to a peer connected only to it.
    assert_eq!(d.co.get("/from-a").await.unwrap().unwrap(), b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_peers_is_an_error() {
    let (a, _addr) = writer_node(None).await;
    let store = Store::memory();
    let co = CoDrive::open(&store, a.co.key(), "db").await.unwrap();
    let repl = Replicator::new(ReplicateOptions::default());
    assert_eq!(
        auth::request_authorization(&repl, &co, Duration::from_secs(1)).await,
        Err(AuthError::NoPeers)
    );
}
