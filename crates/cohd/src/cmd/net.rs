//! serve, clone, sync, and `--peer` on other commands.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use co_hyperdrive::codrive::CoDrive;
use co_hyperdrive::format::Key;
use co_hyperdrive::net::auth::{self, AuthPolicy};
use co_hyperdrive::net::{add_known_cores, catch_up, spawn_follow, ReplicateOptions, Replicator};
use co_hyperdrive::Store;

use crate::Cli;

/// How long clone/sync wait for a peer to bring every core up to date.
const CATCH_UP: Duration = Duration::from_secs(60);

const FOLLOWED: &str = "co-drive";

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

async fn connect(
    repl: &Replicator,
    peer: SocketAddr,
) -> Result<tokio::task::JoinHandle<Result<(), co_hyperdrive::net::SessionError>>> {
    repl.connect(peer)
        .await
        .with_context(|| format!("cannot connect to {peer}"))
}

async fn follow(store: &Store, co: &CoDrive, peer: SocketAddr, all: bool) -> Result<Replicator> {
    let repl = Replicator::new(ReplicateOptions {
        download_all: all,
        ..ReplicateOptions::default()
    });
    add_known_cores(store, &repl, co.key(), "db").await;
    let mut conn = connect(&repl, peer).await?;
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
    // A connection that ends first ends the wait: its reason, at once.
    let caught_up = tokio::select! {
        c = catch_up(store, &repl, co.key(), "db", CATCH_UP) => c,
        ended = &mut conn => match ended {
            Ok(Err(e)) => bail!("connection to {peer} failed: {e}"),
            _ => bail!("connection to {peer} closed before catching up"),
        },
    };
    if !caught_up {
        bail!(
            "{peer} did not bring the co-drive up to date within {}s",
            CATCH_UP.as_secs()
        );
    }
    Ok(repl)
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

/// `cohd clone KEY --peer ADDR [--all]`.
pub(crate) async fn clone(cli: &Cli, key: &str, all: bool) -> Result<()> {
    let key: Key = key.parse()?;
    let peer = cli.peer.context("clone needs --peer ADDR")?;
    if let Some(k) = followed(&cli.dir)? {
        if k != key {
            bail!("the store at {} already follows {k}", cli.dir.display());
        }
    }
    let store = if cli.dir.join("primary-key").exists() {
        Store::open(&cli.dir)?
    } else {
        Store::create(&cli.dir)?
    };
    std::fs::write(cli.dir.join(FOLLOWED), format!("{key}\n"))
        .context("recording the followed co-drive")?;
    let co = CoDrive::open(&store, key, "db").await?;
    let r = follow(&store, &co, peer, all).await;
    let files = match &r {
        Ok(_) => co.snapshot().await.map(|s| s.list("/").len()),
        Err(_) => Ok(0),
    };
    store.close().await?;
    r?;
    eprintln!("cloned {key}: {} files", files?);
    Ok(())
}

/// `cohd sync --peer ADDR [--all]`.
pub(crate) async fn sync(
    store: &Store,
    co: &CoDrive,
    peer: Option<SocketAddr>,
    all: bool,
) -> Result<()> {
    let peer = peer.context("sync needs --peer ADDR")?;
    let repl = follow(store, co, peer, all).await?;
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

/// Runs `command` while replicating with `peer` (metadata first; content on demand).
pub(crate) async fn with_peer(
    store: &Store,
    co: &CoDrive,
    peer: SocketAddr,
    command: impl Future<Output = Result<()>>,
) -> Result<()> {
    let _repl = follow(store, co, peer, false).await?;
    command.await
}

/// `cohd serve [--listen ADDR]`: serves until killed; prints the address and key.
/// The authorization policy of `serve`: `--allow-all`, `--allow KEY...`, default deny.
pub(crate) fn policy(allow_all: bool, allow: &[String]) -> Result<AuthPolicy> {
    if allow_all {
        return Ok(auth::allow_all());
    }
    let keys = allow
        .iter()
        .map(|k| k.parse::<Key>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(auth::allow_keys(keys))
}

/// `cohd request-auth --peer ADDR [--timeout SECS]`.
pub(crate) async fn request_auth(
    store: &Store,
    co: &CoDrive,
    peer: Option<SocketAddr>,
    timeout: u64,
) -> Result<()> {
    let peer = peer.context("request-auth needs --peer ADDR")?;
    let repl = follow(store, co, peer, false).await?;
    let _follow = spawn_follow(
        store.clone(),
        repl.clone(),
        co.key(),
        "db".into(),
        Duration::from_millis(100),
    );
    auth::request_authorization(&repl, co, Duration::from_secs(timeout))
        .await
        .with_context(|| format!("authorization of {} was not granted", co.local_key()))?;
    eprintln!("{} is now a writer of {}", co.local_key(), co.key());
    Ok(())
}

pub(crate) async fn serve(
    store: &Store,
    co: &CoDrive,
    listen: SocketAddr,
    policy: AuthPolicy,
) -> Result<()> {
    let repl = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    add_known_cores(store, &repl, co.key(), "db").await;
    // Our own drive too, once it is a writer (or to let others see it while it asks to be one).
    repl.add_core(co.own().db().core().clone());
    repl.add_core(co.own().blobs().core().clone());
    let (addr, _task) = repl
        .listen(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Other `cohd` commands on this store run in this process, sent over a local socket (see
    // `forward`); it is ready before the key is printed.
    let local = super::forward::LocalServer::bind(store);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        writeln!(out, "key {}", co.key())?;
        out.flush()?;
    }
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
    tokio::select! {
        () = auth::answer_requests(repl.clone(), co, policy) => Ok(()),
        r = durable => r,
        r = super::forward::run_server(local, store, co) => r,
        // The caller flushes the store on the way out (any stop is safe; this one is clean).
        () = stop_requested() => Ok(()),
    }
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
