//! serve, clone, sync, and `--peer` on other commands.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use co_hyperdrive::auth::{self, AuthPolicy};
use co_hyperdrive::dht::{self, DhtOptions, Discovery};
use co_hyperdrive::format::Key;
use co_hyperdrive::CoDrive;
use co_hyperdrive::PeerStatus;
use co_hyperdrive::Store;
use co_hyperdrive::{add_known_cores, catch_up, spawn_follow, Peers, ReplicateOptions, Replicator};

use crate::output::Out;
use crate::Cli;

/// How long clone/sync wait for a connected peer to show it has the co-drive.
const NO_DRIVE_WAIT: Duration = Duration::from_secs(8);
/// How long clone/sync wait for a peer to bring every core up to date.
const CATCH_UP: Duration = Duration::from_secs(60);
/// How long clone/sync/request-auth without --peer look for a peer on the DHT.
const DHT_FIND: Duration = Duration::from_secs(30);
/// After the first lookup of the topic, how long connections to what it found may take.
const DHT_CONNECT_GRACE: Duration = Duration::from_secs(10);

const FOLLOWED: &str = "co-drive";
/// Present when the store keeps every file's content (a mirror): a store's own co-drive, or one
/// cloned or synced with `--all`. Without it a clone stays sparse, serving included.
const MIRROR: &str = "mirror";

/// Whether the store at `dir` keeps all content: its own co-drive, or a clone made a mirror.
fn is_mirror(dir: &Path) -> Result<bool> {
    Ok(followed(dir)?.is_none() || dir.join(MIRROR).exists())
}

fn make_mirror(store: &Store) -> Result<()> {
    store
        .write_file(MIRROR, b"")
        .context("recording the store as a mirror")
}

/// The co-drive key the store follows (written by `clone`).
pub(crate) fn followed(dir: &Path) -> Result<Option<Key>> {
    let p = dir.join(FOLLOWED);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(
            s.trim()
                .parse::<Key>()
                .with_context(|| format!("corrupted {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Resolves `HOST:PORT` (an IP address, or a host name looked up now).
pub(crate) async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve the peer address {addr:?} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

/// The DHT settings of `cli` for `store`: the private DHT of `--bootstrap`, the public one with
/// `--public-dht`, else (and with --no-dht) none.
///
/// Every run gets a fresh DHT key pair, `serve` too: peeroxide 1.7.3 silently refuses a key it
/// still counts as connected, and a peer killed without closing stays counted until its
/// connection times out, so a restarted peer with its old key would wait for that (and for our
/// swarm's replacement) before anyone accepted it again. Nothing of ours depends on the DHT key.
pub(crate) fn dht_options(cli: &Cli) -> Option<DhtOptions> {
    let wanted = !cli.bootstrap.is_empty() || cli.public_dht;
    (!cli.no_dht && wanted).then(|| DhtOptions::new(cli.bootstrap.clone(), None))
}

/// Why there is no DHT, and how to have one.
pub(crate) const NO_DHT_HINT: &str = "--bootstrap HOST:PORT,... for a private HyperDHT, or \
     --public-dht for the public one";

/// Looks up the co-drive's topic on the DHT as a client and waits (bounded) for a first
/// connection to someone who announced it.
async fn find_on_dht(repl: &Replicator, key: Key, opts: DhtOptions) -> Result<Discovery> {
    // A client only: no server swarm starts, and our dialling node always counts as
    // firewalled, which is what reaches JS servers (see `co_hyperdrive::dht`).
    let d = Discovery::start(repl, opts)
        .await
        .context("cannot start the DHT")?;
    d.join(dht::topic(&key), false, true).await?;
    let mut made = d.connections_made();
    let connected = made.wait_for(|n| *n > 0);
    // The lookup ends first when nobody announced the topic: a few seconds more for the
    // connections it started, then say so.
    let nobody = async {
        let _ = d.flush().await;
        tokio::time::sleep(DHT_CONNECT_GRACE).await;
    };
    tokio::select! {
        r = tokio::time::timeout(DHT_FIND, connected) => {
            if !matches!(r, Ok(Ok(_))) {
                bail!("found no peer of co-drive {key} on the DHT within {}s", DHT_FIND.as_secs());
            }
        }
        () = nobody => bail!(
            "found no peer of co-drive {key} on the DHT (nobody announces it, or nobody could \
             be reached; name one with --peer HOST:PORT)"
        ),
    }
    Ok(d)
}

/// A replicator following a co-drive, and the DHT discovery that found its peers.
pub(crate) struct Following {
    pub(crate) repl: Replicator,
    dht: Option<Discovery>,
}

impl Following {
    /// Closes the DHT connections, telling the peers (which then accept us again at once).
    async fn close(&self) {
        if let Some(d) = &self.dht {
            d.close().await;
        }
    }
}

/// Connects to every peer in `peers`, or with none to the peers found on the DHT, and waits
/// until the co-drive is caught up with them.
async fn follow(
    store: &Store,
    co: &CoDrive,
    peers: &[String],
    dht: Option<DhtOptions>,
    all: bool,
) -> Result<Following> {
    let repl = Replicator::new(ReplicateOptions {
        download_all: all,
        ..ReplicateOptions::default()
    });
    add_known_cores(store, &repl, co.key(), "db").await?;
    let (discovery, from) = match (peers.is_empty(), dht) {
        (false, _) => (None, peers.join(", ")),
        (true, Some(opts)) => (
            Some(find_on_dht(&repl, co.key(), opts).await?),
            "the peers found on the DHT".to_string(),
        ),
        (true, None) => {
            bail!("no peer to replicate with: add --peer HOST:PORT, or a DHT: {NO_DHT_HINT}")
        }
    };
    let mut conns = Vec::new();
    for peer in peers {
        resolve(peer).await?;
        // Every address a name has, in turn (`localhost` may be ::1 first, with the peer on
        // 127.0.0.1); the last one's error if none connects.
        let mut conn = None;
        let mut last = None;
        for addr in tokio::net::lookup_host(peer.as_str()).await? {
            match repl.connect(addr).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let conn = match (conn, last) {
            (Some(c), _) => c,
            (None, Some(e)) => return Err(e).with_context(|| format!("cannot connect to {peer}")),
            (None, None) => bail!("{peer} resolves to no address"),
        };
        conns.push((peer.clone(), conn));
    }
    // A progress bar on a terminal while blocks arrive (hidden otherwise).
    let bar = all.then(|| {
        let pb = crate::output::progress_blocks("download");
        let r = repl.clone();
        let p = pb.clone();
        let task = tokio::spawn(async move {
            loop {
                let (have, want) = r.progress();
                p.set_length(want);
                p.set_position(have);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (pb, task)
    });
    let _bar = BarGuard(bar);
    // Connections that all end first end the wait: the first one's reason, at once.
    let ended = async {
        if conns.is_empty() {
            // Found on the DHT: those connections are not ours to wait for.
            std::future::pending::<()>().await;
        }
        let mut why = None;
        for (peer, conn) in &mut conns {
            let reason = match conn.await {
                Ok(Err(e)) => connection_failed(peer, &e.to_string()),
                _ => format!("connection to {peer} closed before catching up"),
            };
            why.get_or_insert(reason);
        }
        why.unwrap_or_default()
    };
    // A peer that has the co-drive opens its channel at once: none after a few seconds means
    // no connected peer has it.
    let key = co.key();
    let absent = async {
        tokio::time::sleep(NO_DRIVE_WAIT).await;
        if repl.remote_length(&key).is_some() {
            std::future::pending::<()>().await;
        }
    };
    let caught_up = tokio::select! {
        c = catch_up(store, &repl, co.key(), "db", CATCH_UP) => c?,
        why = ended => bail!("{why}"),
        () = absent => bail!(
            "{from} does not have co-drive {key} (no channel for it within {}s)",
            NO_DRIVE_WAIT.as_secs()
        ),
    };
    if !caught_up {
        bail!(
            "{from} did not bring the co-drive up to date within {}s",
            CATCH_UP.as_secs()
        );
    }
    Ok(Following {
        repl,
        dht: discovery,
    })
}

/// Why a connection to `peer` ended, for people: a peer whose first bytes are no Hypercore
/// frame (an HTTP server, most often the `--http` address of a `serve`) is named as such.
fn connection_failed(peer: &str, error: &str) -> String {
    // The transport reads a 3-byte little-endian length first; "HTTP/1.1 400…" gives "HTT".
    let first = error
        .strip_prefix("frame of ")
        .and_then(|r| r.strip_suffix(" bytes is larger than allowed"))
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| n.to_le_bytes());
    match first {
        Some([b'H', b'T', b'T', 0]) => format!(
            "{peer} is not a Hypercore peer: it answered as an HTTP server (give the address \
             `cohd serve` prints as `listening on`, not its --http one)"
        ),
        Some(_) => format!(
            "{peer} is not a Hypercore peer: what it sent is not the Hypercore protocol ({error})"
        ),
        None if error.starts_with("handshake failed") => {
            format!("{peer} is not a Hypercore peer: {error}")
        }
        None => format!("connection to {peer} failed: {error}"),
    }
}

/// Clears a progress bar and stops its updater when dropped.
struct BarGuard(Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>);

impl Drop for BarGuard {
    fn drop(&mut self) {
        if let Some((pb, task)) = self.0.take() {
            task.abort();
            pb.finish_and_clear();
        }
    }
}

/// `cohd clone KEY [--peer ADDR] [--all]`.
pub(crate) async fn clone(cli: &Cli, key: &str, all: bool) -> Result<()> {
    let key: Key = key.parse()?;
    if cli.peer.is_empty() && dht_options(cli).is_none() {
        bail!("clone needs --peer HOST:PORT, or a DHT to find peers on: {NO_DHT_HINT}");
    }
    let before = followed(&cli.dir)?;
    // A folder of other things is not made a store: its files would sit among the store's.
    let is_store = cli.dir.join("primary-key").exists();
    if !is_store && std::fs::read_dir(&cli.dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} holds other files and is not a store: clone into a new or empty folder",
            cli.dir.display()
        );
    }
    let store = if is_store {
        let store = Store::open(&cli.dir)?;
        // A co-drive none of which arrived (a clone that failed, a mistyped key) gives way to
        // another; one that did stays this store's.
        if let Some(k) = before.filter(|k| *k != key) {
            let arrived = match store.open_key(k, false).await {
                Ok(core) => core.info().contiguous_length > 0,
                Err(co_hyperdrive::StoreError::UnknownCore(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if arrived {
                store.close().await?;
                bail!(
                    "the store at {} already follows {k}: clone {key} into another folder \
                     (`cohd --dir NEW clone ...`)",
                    cli.dir.display()
                );
            }
        }
        // Our drive is our writer in whichever co-drive the store follows: files written to
        // the store's own co-drive would show in the cloned one once we are authorized there.
        if before.is_none() {
            let own = co_hyperdrive::Drive::open_own(&store, "db").await?;
            if own.has_files().await? {
                store.close().await?;
                bail!(
                    "the store at {} holds files of its own co-drive ({}): clone {key} into a \
                     new folder (`cohd --dir NEW clone ...`), or they would be shared there \
                     once you are made a writer",
                    cli.dir.display(),
                    own.key()
                );
            }
        }
        store
    } else {
        Store::create(&cli.dir)?
    };
    store
        .write_file(FOLLOWED, format!("{key}\n").as_bytes())
        .context("recording the followed co-drive")?;
    let co = CoDrive::open(&store, key, "db").await?;
    if all {
        make_mirror(&store)?;
    }
    let r = follow(&store, &co, &cli.peer, dht_options(cli), all).await;
    let files = match &r {
        Ok(f) => {
            f.close().await;
            co.snapshot().await.map(|s| {
                (!s.missing().contains(&key)).then(|| {
                    // Files and links apart, as import and export count them.
                    let all = s.list("/");
                    let links = all
                        .iter()
                        .filter(|e| e.entry.blob.is_none() && e.entry.linkname.is_some())
                        .count();
                    (all.len() - links, links)
                })
            })
        }
        Err(_) => Ok(Some((0, 0))),
    };
    store.close().await?;
    r?;
    // Success only for a co-drive that arrived: a peer that went away early (or a DHT
    // connection that ended) must not make `clone` report an empty drive.
    let Some(files) = files? else {
        bail!(
            "no peer delivered co-drive {key}: the peers found did not have it, or went away \
             before sending it"
        );
    };
    let (files, links) = files;
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let links = match links {
        0 => String::new(),
        n => format!(" and {}", count(n, "link", "links")),
    };
    eprintln!("cloned {key}: {}{links}", count(files, "file", "files"));
    Ok(())
}

/// `cohd sync [--peer ADDR] [--all]`.
pub(crate) async fn sync(
    store: &Store,
    co: &CoDrive,
    peers: &[String],
    dht: Option<DhtOptions>,
    all: bool,
) -> Result<()> {
    let dir = store.dir().context("sync needs a store on disk")?;
    if all {
        make_mirror(store)?;
    }
    let f = follow(store, co, peers, dht, all || is_mirror(dir)?).await?;
    let to = if peers.is_empty() {
        "the peers found on the DHT".to_string()
    } else {
        peers.join(", ")
    };
    let r = deliver_own(&f.repl, co, &to).await;
    f.close().await;
    warn_if_removed(co).await;
    r?;
    // Said on success too: a silent exit reads as nothing done.
    let writers = super::files::read_indexed(co)
        .await
        .map_or(0, |i| i.writers().len());
    eprintln!(
        "synced co-drive {} with {to}: {} up to date",
        co.key(),
        if writers == 1 {
            "1 writer".to_string()
        } else {
            format!("{writers} writers")
        }
    );
    Ok(())
}

/// Says so when this store's writer was removed from the co-drive and wrote past what counts:
/// those writes are ignored by every peer, and nothing else would tell the user.
pub(crate) async fn warn_if_removed(co: &CoDrive) {
    let me = co.local_key();
    let Ok(snap) = co.snapshot().await else {
        return;
    };
    if let Some(&counted) = snap.view().removed.get(&me) {
        let length = co.own().db().core().info().length;
        if length > counted {
            eprintln!(
                "warning: this store's writer {me} was removed from co-drive {} by one of its \
                 writers: what it wrote after the removal is ignored by every peer (ask a \
                 writer to run `cohd authorize {me}` again)",
                co.key(),
            );
        }
    }
}

/// Waits until a connected peer holds every block of our own drive (what `sync` promises).
pub(crate) async fn deliver_own(repl: &Replicator, co: &CoDrive, peer: &str) -> Result<()> {
    // Our own writes: stay until the peer holds them (it downloads what we announce), so they
    // are delivered before we leave, not only announced.
    let own: Vec<_> = [
        co.own().db().core().clone(),
        co.own().blobs().core().clone(),
    ]
    .into_iter()
    .filter(|c| repl.has_core(&c.key()))
    .collect();
    if own.is_empty() {
        return Ok(());
    }
    // A peer that goes away has not received what it did not fetch: say so, at once.
    let mut conns = repl.connections();
    let gone = async {
        while *conns.borrow_and_update() > 0 {
            if conns.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        delivered = repl.wait_delivered(&own, CATCH_UP) => {
            if !delivered {
                eprintln!("warning: {peer} has not fetched all of this store's writes yet");
            }
        }
        () = gone => bail!("the connection to {peer} closed before it held all of this store's writes"),
    }
    Ok(())
}

/// Runs `command` while replicating with `peers` (metadata first; content on demand).
pub(crate) async fn with_peer(
    store: &Store,
    co: &CoDrive,
    peers: &[String],
    command: impl Future<Output = Result<()>>,
) -> Result<()> {
    let _following = follow(store, co, peers, None, false).await?;
    command.await
}

/// The authorization policy of `serve`: `--allow-all`, `--allow KEY...`, default deny. Each
/// decision is logged on stderr; a denial says how to approve the key after all.
pub(crate) fn policy(allow_all: bool, allow: &[String]) -> Result<AuthPolicy> {
    let decide = if allow_all {
        auth::allow_all()
    } else {
        let keys = allow
            .iter()
            .map(|k| k.parse::<Key>())
            .collect::<Result<Vec<_>, _>>()?;
        auth::allow_keys(keys)
    };
    Ok(Arc::new(move |key, remote| {
        let decided = decide(key, remote);
        Box::pin(async move {
            let allowed = decided.await;
            let from = &hex::encode(remote)[..8];
            if allowed {
                eprintln!("write access requested for {key} (peer {from}): granted");
            } else {
                eprintln!(
                    "write access requested for {key} (peer {from}): denied; to approve it, \
                     run `cohd authorize {key}` on this store (or serve with --allow {key})"
                );
            }
            allowed
        })
    }))
}

/// `cohd request-auth [--peer ADDR] [--timeout SECS]`.
pub(crate) async fn request_auth(
    store: &Store,
    co: &CoDrive,
    peers: &[String],
    dht: Option<DhtOptions>,
    timeout: u64,
) -> Result<()> {
    let f = follow(store, co, peers, dht, false).await?;
    let repl = &f.repl;
    let _follow = spawn_follow(
        store.clone(),
        repl.clone(),
        co.key(),
        "db".into(),
        Duration::from_millis(100),
    );
    let r = auth::request_authorization(repl, co, Duration::from_secs(timeout)).await;
    f.close().await;
    r.with_context(|| format!("authorization of {} was not granted", co.local_key()))?;
    eprintln!("{} is now a writer of {}", co.local_key(), co.key());
    Ok(())
}

impl super::forward::ServedCommands for Served {
    fn run<'a>(
        &'a self,
        cli: &'a Cli,
        store: &'a Store,
        co: &'a CoDrive,
        out: &'a mut Out,
    ) -> Option<futures::future::BoxFuture<'a, Result<()>>> {
        use crate::Command;
        match &cli.command {
            Command::Connect { addr } => Some(Box::pin(connect_served(self, addr, out))),
            Command::Status { json } => Some(Box::pin(status(self, store, co, *json, out))),
            Command::Sync { .. } if cli.drive.is_none() => {
                Some(Box::pin(sync_served(self, store, co, &cli.peer)))
            }
            _ => None,
        }
    }
}

/// What a running `serve` offers the commands forwarded to it.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) repl: Replicator,
    pub(crate) peers: Peers,
    pub(crate) addr: SocketAddr,
    /// Discovery on the DHT, once it started.
    pub(crate) dht: Arc<std::sync::OnceLock<Discovery>>,
}

/// The file that remembers where the store served last (its port stays the same).
const LISTEN: &str = "listen";
/// The file that remembers every peer the store's `serve` ever reached.
const PEERS: &str = "peers";

/// The peers remembered in the store at `dir`.
pub(crate) fn remembered(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join(PEERS))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_default()
}

fn remember(store: &Store, peers: &[String]) -> Result<()> {
    store
        .write_file(PEERS, &serde_json::to_vec(peers)?)
        .context("remembering peers")
}

/// Binds where the store served last (or `listen`), remembering the address for next time.
async fn bind(store: &Store, repl: &Replicator, listen: Option<SocketAddr>) -> Result<SocketAddr> {
    let dir = store.dir().context("serve needs a store on disk")?;
    let last: Option<SocketAddr> = std::fs::read_to_string(dir.join(LISTEN))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let want = listen.or(last).unwrap_or(([127, 0, 0, 1], 0).into());
    let addr = match repl.listen(want).await {
        Ok((addr, _task)) => addr,
        // The remembered port is taken: another one, said out loud (peers must be told).
        Err(e) if listen.is_none() && last.is_some() => {
            let any = SocketAddr::new(want.ip(), 0);
            let (addr, _task) = repl
                .listen(any)
                .await
                .with_context(|| format!("cannot listen on {any}"))?;
            eprintln!("warning: {want} is taken ({e}); listening on {addr} instead");
            addr
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {want}")),
    };
    store
        .write_file(LISTEN, format!("{addr}\n").as_bytes())
        .context("remembering the address")?;
    Ok(addr)
}

/// `cohd serve [--listen ADDR] [--http ADDR]`: serves until stopped; prints the addresses and
/// the key.
pub(crate) async fn serve(
    store: &Store,
    co: &Arc<CoDrive>,
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    peers: &[String],
    dht: Option<DhtOptions>,
    policy: AuthPolicy,
) -> Result<()> {
    let dir = store.dir().context("serve needs a store on disk")?;
    let repl = Replicator::new(ReplicateOptions {
        download_all: is_mirror(dir)?,
        ..ReplicateOptions::default()
    });
    add_known_cores(store, &repl, co.key(), "db").await?;
    // Our own drive too, once it is a writer (or to let others see it while it asks to be one).
    repl.add_core(co.own().db().core().clone());
    repl.add_core(co.own().blobs().core().clone());
    let addr = bind(store, &repl, listen).await?;
    // Every peer named now or reached before is kept connected.
    let kept = Peers::new(repl.clone());
    let _dialling = kept.guard();
    let mut known = remembered(dir);
    for p in peers {
        resolve(p).await?;
        if !known.contains(p) {
            known.push(p.clone());
        }
    }
    for p in &known {
        kept.keep(p);
    }
    let served = Served {
        repl: repl.clone(),
        peers: kept.clone(),
        addr,
        dht: Arc::default(),
    };
    // Other `cohd` commands on this store run in this process, sent over a local socket (see
    // `forward`); it is ready before the key is printed.
    let local = super::forward::LocalServer::bind(store);
    let web = match http {
        Some(a) => Some(crate::http::bind(a).await?),
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        writeln!(out, "key {}", co.key())?;
        if let Some(w) = &web {
            writeln!(out, "http on http://{}/", w.local_addr()?)?;
        }
        out.flush()?;
    }
    let web = async {
        match web {
            Some(l) => crate::http::run(l, co.clone()).await,
            None => std::future::pending().await,
        }
    };
    // New writers and blobs cores appear as records and headers arrive: look for them, answer
    // authorization requests, and make received data durable.
    let _follow = spawn_follow(
        store.clone(),
        repl.clone(),
        co.key(),
        "db".into(),
        Duration::from_millis(250),
    );
    // The fsyncs run off this task, which forwarded commands share: a large sync must not
    // stall a command streaming its client's stdin.
    let durable = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.flush())
                .await
                .context("syncing the store")??;
        }
    };
    // Peers reached once are remembered, so the next `serve` dials them again.
    let remembering = async {
        let mut changed = kept.subscribe();
        loop {
            let reached: Vec<String> = kept
                .status()
                .into_iter()
                .filter(|s| s.connections > 0)
                .map(|s| s.addr)
                .collect();
            let mut all = remembered(dir);
            let before = all.len();
            all.extend(
                reached
                    .into_iter()
                    .filter(|a| !all.contains(a))
                    .collect::<Vec<_>>(),
            );
            // Forgetting a peer is no reason to stop serving.
            if all.len() != before {
                if let Err(e) = remember(store, &all) {
                    eprintln!("warning: {e:#}");
                }
            }
            if changed.changed().await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::select! {
        () = auth::answer_requests(repl.clone(), co, policy) => Ok(()),
        r = durable => r,
        r = remembering => r,
        r = super::forward::run_server(local, store, co, &served) => r,
        r = web => r,
        () = on_dht(&repl, co.key(), dht, &served.dht) => Ok(()),
        // The caller flushes the store on the way out (any stop is safe; this one is clean).
        () = stop_requested() => Ok(()),
    }
}

/// `serve` on the DHT: announces the co-drive's topic and looks it up, replicating with
/// whoever it finds, for as long as it is polled. Without the DHT, or when it cannot start,
/// `serve` goes on with its other peers.
async fn on_dht(
    repl: &Replicator,
    key: Key,
    opts: Option<DhtOptions>,
    started: &std::sync::OnceLock<Discovery>,
) {
    if let Some(opts) = opts {
        let joined = async {
            let d = Discovery::start(repl, opts).await?;
            d.join(dht::topic(&key), true, true).await?;
            anyhow::Ok(d)
        };
        match joined.await {
            Ok(d) => {
                eprintln!(
                    "announcing co-drive {key} on the DHT as {}{}",
                    hex::encode(d.public_key()),
                    if d.reachable() { " (reachable)" } else { "" }
                );
                let _ = started.set(d.clone());
                // Kept until `serve` stops.
                std::future::pending::<()>().await;
                drop(d);
            }
            Err(e) => eprintln!("warning: no discovery on the DHT: {e:#}"),
        }
    } else {
        eprintln!("not on a HyperDHT ({NO_DHT_HINT}): peers from --peer and `cohd connect`");
    }
    std::future::pending().await
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without handlers the default action (exit) stays, which the store survives too.
        _ => std::future::pending().await,
    }
}

/// How long `connect` and a forwarded `sync` wait for a new peer's first connection.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// `cohd connect HOST:PORT`, run inside `serve`: keeps the peer and waits for it.
pub(crate) async fn connect_served(served: &Served, addr: &str, out: &mut Out) -> Result<()> {
    resolve(addr).await?;
    served.peers.keep(addr);
    match served.peers.wait_connected(addr, CONNECT_WAIT).await {
        Ok(()) => {
            writeln!(out, "connected to {addr}")?;
            Ok(())
        }
        Err(e) => bail!("{e} (`cohd serve` keeps trying)"),
    }
}

/// `cohd sync [--peer HOST:PORT...]`, run inside `serve`: the given peers are kept from now
/// on; waits until the co-drive is caught up with the connected peers and they hold our writes.
pub(crate) async fn sync_served(
    served: &Served,
    store: &Store,
    co: &CoDrive,
    peers: &[String],
) -> Result<()> {
    for p in peers {
        resolve(p).await?;
        let new = served.peers.keep(p);
        if let Err(e) = served.peers.wait_connected(p, CONNECT_WAIT).await {
            if !served
                .peers
                .status()
                .iter()
                .any(|s| s.addr == *p && s.connected)
            {
                // A peer this sync named and never reached is not kept.
                if new {
                    served.peers.forget(p);
                }
                bail!("{e}");
            }
        }
    }
    if *served.repl.connections().borrow() == 0 {
        bail!("`cohd serve` is not connected to any peer: add --peer HOST:PORT");
    }
    if !catch_up(store, &served.repl, co.key(), "db", CATCH_UP).await? {
        bail!(
            "the connected peers did not bring the co-drive up to date within {}s",
            CATCH_UP.as_secs()
        );
    }
    deliver_own(&served.repl, co, "the connected peers").await
}

/// Each writer's length here and the longest any connected peer announced.
async fn writer_lengths(
    store: &Store,
    co: &CoDrive,
    repl: Option<&Replicator>,
) -> Result<Vec<(Key, u64, Option<u64>)>> {
    let snap = co.snapshot().await?;
    let mut out = Vec::new();
    for k in snap.view().writers.keys() {
        let local = match store.open_key(*k, false).await {
            Ok(c) => c.info().length,
            Err(_) => 0,
        };
        out.push((*k, local, repl.and_then(|r| r.remote_length(k))));
    }
    Ok(out)
}

fn peer_json(s: &PeerStatus) -> serde_json::Value {
    serde_json::json!({
        "addr": s.addr,
        "resolved": s.resolved.map(|a| a.to_string()),
        "connected": s.connected,
        "since_secs": s.since.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()),
        "connections": s.connections,
        "last_error": s.last_error,
    })
}

/// `cohd status` inside `serve`.
pub(crate) async fn status(
    served: &Served,
    store: &Store,
    co: &CoDrive,
    json: bool,
    out: &mut Out,
) -> Result<()> {
    let peers = served.peers.status();
    let writers = writer_lengths(store, co, Some(&served.repl)).await?;
    let (sent, received) = served.repl.blocks_transferred();
    let connections = *served.repl.connections().borrow();
    let dht = served.dht.get().map(Discovery::status);
    if json {
        let w: Vec<_> = writers
            .iter()
            .map(|(k, local, remote)| {
                serde_json::json!({"key": k.to_hex(), "local": local, "remote": remote})
            })
            .collect();
        let v = serde_json::json!({
            "serving": served.addr.to_string(),
            "codrive": co.key().to_hex(),
            "connections": connections,
            "peers": peers.iter().map(peer_json).collect::<Vec<_>>(),
            "writers": w,
            "blocks_sent": sent,
            "blocks_received": received,
            "dht": dht.as_ref().map(|d| serde_json::json!({
                "public_key": hex::encode(d.public_key),
                "reachable": d.reachable,
                "accepted": d.accepted,
                "dialled": d.dialled,
                "known": d.known,
                "dialling": d.dialling,
            })),
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "serving {} on {}", co.key(), served.addr)?;
    writeln!(out, "connections: {connections}")?;
    if let Some(d) = &dht {
        writeln!(
            out,
            "dht: announcing as {}{}; {} accepted, {} dialled, {} announced keys known, {} dials \
             under way",
            hex::encode(d.public_key),
            if d.reachable { " (reachable)" } else { "" },
            d.accepted,
            d.dialled,
            d.known,
            d.dialling
        )?;
    }
    for p in &peers {
        let state = if p.connected {
            let secs = p
                .since
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs());
            format!("connected for {secs}s")
        } else {
            format!(
                "not connected ({}); retrying",
                p.last_error.as_deref().unwrap_or("not tried yet")
            )
        };
        writeln!(out, "peer {}: {state}", p.addr)?;
    }
    for (k, local, remote) in &writers {
        let lag = match remote {
            None => "no connected peer has it".to_string(),
            Some(r) if r > local => format!("{} blocks behind the peers", r - local),
            Some(r) if r < local => format!("peers are {} blocks behind", local - r),
            Some(_) => "up to date".to_string(),
        };
        writeln!(out, "writer {k}: {local} blocks, {lag}")?;
    }
    writeln!(out, "blocks sent: {sent}, received: {received}")?;
    Ok(())
}

/// `cohd status` with no `serve` running on the store.
pub(crate) async fn status_offline(
    store: &Store,
    co: &CoDrive,
    json: bool,
    out: &mut Out,
) -> Result<()> {
    let dir = store.dir().context("status needs a store on disk")?;
    let peers = remembered(dir);
    let writers = writer_lengths(store, co, None).await?;
    if json {
        let w: Vec<_> = writers
            .iter()
            .map(|(k, local, _)| serde_json::json!({"key": k.to_hex(), "local": local}))
            .collect();
        let v = serde_json::json!({
            "serving": null,
            "codrive": co.key().to_hex(),
            "remembered_peers": peers,
            "writers": w,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "not serving (start `cohd serve` to stay connected)")?;
    for p in &peers {
        writeln!(out, "remembered peer {p}")?;
    }
    for (k, local, _) in &writers {
        writeln!(out, "writer {k}: {local} blocks")?;
    }
    Ok(())
}
