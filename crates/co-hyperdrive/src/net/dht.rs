//! Discovery on HyperDHT, the network JavaScript Hyperswarm peers use, through `peeroxide`
//! (`docs/dht-notes.md`): a [`Discovery`] joins topics (a co-drive's hypercore discovery key, as
//! JS `swarm.join(drive.discoveryKey)`) and runs every connection it makes or accepts through the
//! [`Replicator`], on our own mux over peeroxide's secret stream
//! ([`transport::swarm_connection`]).
//!
//! What we work around in peeroxide 1.7.3, from our side:
//! - It never probes whether it is reachable, so on a private network it stages a passive
//!   holepunch that a JS client (which found itself open) never answers. When every bootstrap
//!   node is loopback or private, or when told so, we announce as reachable
//!   ([`DhtOptions::reachable`]): JS clients then dial our socket directly.
//! - It drops connections when its 64-slot channel is full: the channel is drained at once,
//!   each connection handed to its own task.
//! - It never forgets a closed connection, so it never connects again to a peer it once had (a
//!   restarted peer, which keeps its key). When a connection ends, the swarm is replaced by a
//!   fresh one (same key pair, same topics) once the others of its swarm ended too; meanwhile
//!   the old swarm keeps its live connections but leaves its topics.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peeroxide::{JoinOpts, KeyPair, SwarmConfig, SwarmConnection, SwarmHandle};
use peeroxide_dht::hyperdht::HyperDhtConfig;
use peeroxide_dht::hyperdht_messages::FIREWALL_OPEN;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::transport::{self, StreamEnd, TransportError, TransportOptions};
use super::Replicator;
use crate::store::keys;

/// Connection attempts a swarm runs at once (peeroxide's default is 3).
const MAX_PARALLEL_CONNECTS: usize = 16;

/// How long starting the DHT (binding, bootstrapping) may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why discovery could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The DHT node did not bootstrap in time (no bootstrap node answered).
    #[error("the DHT did not bootstrap within {0:?} (are the bootstrap nodes reachable?)")]
    Timeout(Duration),
    /// peeroxide failed.
    #[error("DHT: {0}")]
    Swarm(#[from] peeroxide::SwarmError),
    /// A bootstrap address is not `HOST:PORT`.
    #[error("bad bootstrap address {0:?} (HOST:PORT)")]
    BadBootstrap(String),
}

/// How to run discovery.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DhtOptions {
    /// Bootstrap nodes, `HOST:PORT`; empty: the public HyperDHT's.
    pub bootstrap: Vec<String>,
    /// Seed of our DHT key pair (see [`key_seed`]); `None`: a random one.
    pub seed: Option<[u8; 32]>,
    /// Announce as reachable (not firewalled), so that clients dial us directly. `None`: when
    /// every bootstrap node is on loopback or a private network (a private DHT, as in tests).
    pub reachable: Option<bool>,
}

impl DhtOptions {
    /// Options with these bootstrap nodes (empty: the public ones) and key seed.
    pub fn new(bootstrap: Vec<String>, seed: Option<[u8; 32]>) -> Self {
        Self {
            bootstrap,
            seed,
            reachable: None,
        }
    }
}

/// The seed of a store's DHT key pair, derived from its primary key as our cores' are, so that
/// the store keeps one identity on the DHT across runs. `None` for a memory store.
pub fn key_seed(store: &crate::Store) -> Option<[u8; 32]> {
    // The store's layout names this file; it keeps the secret to itself otherwise.
    let primary: [u8; 32] = std::fs::read(store.dir()?.join("primary-key"))
        .ok()?
        .try_into()
        .ok()?;
    Some(keys::seed(&primary, "cohd/hyperswarm"))
}

/// The DHT topic of a co-drive (or drive): the hypercore discovery key of its key, as JS
/// `swarm.join(drive.discoveryKey)`.
pub fn topic(key: &cohd_format::Key) -> [u8; 32] {
    keys::discovery_key(&key.0)
}

/// Whether every bootstrap node is on loopback or a private network.
pub fn is_private_network(bootstrap: &[String]) -> bool {
    !bootstrap.is_empty()
        && bootstrap.iter().all(|b| {
            let Some((host, _port)) = b.rsplit_once(':') else {
                return false;
            };
            // peeroxide's `IP@NAME:PORT` form: the IP is the one used.
            let host = host.split('@').next().unwrap_or(host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host == "localhost" {
                return true;
            }
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => a.is_loopback() || a.is_private() || a.is_link_local(),
                Ok(IpAddr::V6(a)) => a.is_loopback(),
                Err(_) => false,
            }
        })
}

fn check_bootstrap(bootstrap: &[String]) -> Result<(), DhtError> {
    for b in bootstrap {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(DhtError::BadBootstrap(b.clone()));
        }
    }
    Ok(())
}

/// A topic joined, to join again on a fresh swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Joined {
    topic: [u8; 32],
    server: bool,
    client: bool,
}

/// One peeroxide swarm.
struct Generation {
    id: u64,
    handle: SwarmHandle,
    task: JoinHandle<()>,
    drain: JoinHandle<()>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("id", &self.id).finish()
    }
}

#[derive(Debug)]
struct State {
    current: Option<Generation>,
    /// Swarms replaced, kept while they have live connections.
    retired: Vec<Generation>,
    joined: Vec<Joined>,
    next_id: u64,
}

/// Discovery on HyperDHT (see the module docs). Dropping it leaves the DHT.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    repl: Replicator,
    opts: DhtOptions,
    transport: TransportOptions,
    key_pair: KeyPairDebug,
    state: tokio::sync::Mutex<State>,
    /// Connections made so far (both ways).
    made: watch::Sender<u64>,
    /// Live connections per swarm generation.
    live: Mutex<std::collections::HashMap<u64, usize>>,
    /// Every connection's end and task, to close them on [`Discovery::close`].
    conns: Mutex<Vec<(StreamEnd, JoinHandle<()>)>>,
    ended: mpsc::UnboundedSender<u64>,
    _supervisor: Mutex<Option<JoinHandle<()>>>,
}

struct KeyPairDebug(KeyPair);

impl std::fmt::Debug for KeyPairDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", hex::encode(self.0.public_key))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self
            ._supervisor
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
        let state = self.state.get_mut();
        for g in state
            .current
            .take()
            .into_iter()
            .chain(state.retired.drain(..))
        {
            g.drain.abort();
            g.task.abort();
        }
    }
}

impl Discovery {
    /// Starts a DHT node (bounded by [`START_TIMEOUT`]); connections it makes or accepts
    /// replicate through `repl`.
    pub async fn start(repl: &Replicator, opts: DhtOptions) -> Result<Self, DhtError> {
        check_bootstrap(&opts.bootstrap)?;
        let key_pair = match opts.seed {
            Some(s) => KeyPair::from_seed(s),
            None => KeyPair::generate(),
        };
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let d = Discovery {
            inner: Arc::new(Inner {
                repl: repl.clone(),
                transport: repl.transport_options().clone(),
                opts,
                key_pair: KeyPairDebug(key_pair),
                state: tokio::sync::Mutex::new(State {
                    current: None,
                    retired: Vec::new(),
                    joined: Vec::new(),
                    next_id: 0,
                }),
                made: watch::channel(0).0,
                live: Mutex::default(),
                conns: Mutex::default(),
                ended,
                _supervisor: Mutex::new(None),
            }),
        };
        {
            let mut state = d.inner.state.lock().await;
            let g = d.spawn_generation(&mut state).await?;
            state.current = Some(g);
        }
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&d.inner), ended_rx));
        *d.inner
            ._supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(supervisor);
        Ok(d)
    }

    /// Our public key on the DHT.
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.key_pair.0.public_key
    }

    /// Whether we announce as reachable.
    pub fn reachable(&self) -> bool {
        self.inner
            .opts
            .reachable
            .unwrap_or_else(|| is_private_network(&self.inner.opts.bootstrap))
    }

    /// Joins `topic`: as a server, we announce it and accept connections; as a client, we look
    /// it up and connect to whoever announced it.
    pub async fn join(&self, topic: [u8; 32], server: bool, client: bool) -> Result<(), DhtError> {
        let mut state = self.inner.state.lock().await;
        let j = Joined {
            topic,
            server,
            client,
        };
        if !state.joined.contains(&j) {
            state.joined.push(j);
        }
        if let Some(g) = &state.current {
            let mut o = JoinOpts::default();
            o.server = server;
            o.client = client;
            g.handle.join(topic, o).await?;
        }
        Ok(())
    }

    /// Waits until every joined topic was announced and looked up once.
    pub async fn flush(&self) -> Result<(), DhtError> {
        let handle = {
            let state = self.inner.state.lock().await;
            state.current.as_ref().map(|g| g.handle.clone())
        };
        if let Some(h) = handle {
            h.flush().await?;
        }
        Ok(())
    }

    /// Connections made or accepted so far, watched.
    pub fn connections_made(&self) -> watch::Receiver<u64> {
        self.inner.made.subscribe()
    }

    /// Ends every connection (telling the peers, which peeroxide needs to accept us again
    /// soon), then leaves the DHT (unannounces).
    pub async fn close(&self) {
        let conns =
            std::mem::take(&mut *self.inner.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (end, _) in &conns {
            end.fail(TransportError::Closed);
        }
        for (_, task) in conns {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        let mut state = self.inner.state.lock().await;
        let gens: Vec<Generation> = state
            .current
            .take()
            .into_iter()
            .chain(state.retired.drain(..))
            .collect();
        drop(state);
        for g in gens {
            g.drain.abort();
            let _ = tokio::time::timeout(Duration::from_secs(2), g.handle.destroy()).await;
            g.task.abort();
        }
    }

    async fn spawn_generation(&self, state: &mut State) -> Result<Generation, DhtError> {
        let opts = &self.inner.opts;
        let mut cfg = SwarmConfig::default();
        cfg.key_pair = Some(self.inner.key_pair.0.clone());
        // A killed peer's announcement outlives it, and each attempt to reach one holds a
        // connect slot for ~20 s: with peeroxide's 3 slots, three stale records of restarted
        // peers kept a live one waiting that long.
        cfg.max_parallel = MAX_PARALLEL_CONNECTS;
        cfg.dht = if opts.bootstrap.is_empty() {
            HyperDhtConfig::with_public_bootstrap()
        } else {
            let mut c = HyperDhtConfig::default();
            c.dht.bootstrap = opts.bootstrap.clone();
            c
        };
        if self.reachable() {
            // The workaround of the module docs: clients dial us, no holepunch.
            cfg.dht.dht.firewalled = false;
            cfg.firewall = FIREWALL_OPEN;
        }
        let (task, handle, conns) = tokio::time::timeout(START_TIMEOUT, peeroxide::spawn(cfg))
            .await
            .map_err(|_| DhtError::Timeout(START_TIMEOUT))??;
        let id = state.next_id;
        state.next_id += 1;
        for j in &state.joined {
            let mut o = JoinOpts::default();
            o.server = j.server;
            o.client = j.client;
            handle.join(j.topic, o).await?;
        }
        let drain = tokio::spawn(drain(Arc::downgrade(&self.inner), id, conns));
        tracing::debug!(id, "DHT swarm started");
        Ok(Generation {
            id,
            handle,
            task,
            drain,
        })
    }
}

/// Takes every connection off peeroxide's channel at once (it drops them when the channel is
/// full) and replicates on it.
async fn drain(inner: std::sync::Weak<Inner>, id: u64, mut conns: mpsc::Receiver<SwarmConnection>) {
    while let Some(conn) = conns.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let remote = hex::encode(conn.remote_public_key());
        let stream =
            transport::swarm_connection(conn, inner.key_pair.0.public_key, &inner.transport);
        inner.made.send_modify(|n| *n += 1);
        *inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
        let repl = inner.repl.clone();
        let ended = inner.ended.clone();
        let weak = Arc::downgrade(&inner);
        let end = stream.end().clone();
        let task = tokio::spawn(async move {
            tracing::info!(%remote, "DHT connection");
            match repl.run_stream(stream).await {
                Ok(()) => tracing::debug!(%remote, "DHT connection closed"),
                Err(e) => tracing::info!(%remote, "DHT connection closed: {e}"),
            }
            if let Some(inner) = weak.upgrade() {
                if let Some(n) = inner
                    .live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&id)
                {
                    *n = n.saturating_sub(1);
                }
            }
            let _ = ended.send(id);
        });
        let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|(_, t)| !t.is_finished());
        conns.push((end, task));
    }
}

/// Least time between two swarm replacements (each one bootstraps again).
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// Replaces the swarm after one of its connections ended (see the module docs), and drops
/// retired swarms whose connections all ended.
async fn supervise(inner: std::sync::Weak<Inner>, mut ended: mpsc::UnboundedReceiver<u64>) {
    while ended.recv().await.is_some() {
        tokio::time::sleep(RESPAWN_DELAY).await;
        // Endings that came meanwhile are handled by this one replacement.
        while ended.try_recv().is_ok() {}
        let Some(inner) = inner.upgrade() else { return };
        let d = Discovery { inner };
        if let Err(e) = d.replace().await {
            tracing::warn!("cannot restart the DHT swarm: {e}");
        }
    }
}

/// How long a replaced swarm with no connection is kept (see [`Discovery::replace`]).
const RETIRED_GRACE: Duration = Duration::from_secs(10);

impl Discovery {
    /// Destroys the retired swarms with no connection left.
    async fn drop_idle_retired(&self) {
        let mut state = self.inner.state.lock().await;
        let live = |id: u64| {
            self.inner
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied()
                .unwrap_or(0)
        };
        let mut keep = Vec::new();
        for g in state.retired.drain(..) {
            if live(g.id) == 0 {
                g.drain.abort();
                let _ = tokio::time::timeout(Duration::from_secs(2), g.handle.destroy()).await;
                g.task.abort();
            } else {
                keep.push(g);
            }
        }
        state.retired = keep;
    }

    async fn replace(&self) -> Result<(), DhtError> {
        self.drop_idle_retired().await;
        let mut state = self.inner.state.lock().await;
        let fresh = self.spawn_generation(&mut state).await?;
        if let Some(old) = state.current.replace(fresh) {
            // Its live connections stay; it no longer announces or looks up. It is kept even
            // when idle, until a later replacement (or close): a client that found its
            // announcement just before it left may be connecting to it right now, and
            // destroying it would leave that client with a connection nobody serves.
            for j in &state.joined {
                let _ = old.handle.leave(j.topic).await;
            }
            state.retired.push(old);
        }
        drop(state);
        // A swarm with nothing left goes at the next replacement, or after this grace.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(RETIRED_GRACE).await;
            if let Some(inner) = weak.upgrade() {
                Discovery { inner }.drop_idle_retired().await;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_networks() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_private_network(&v(&["127.0.0.1:1234", "localhost:9"])));
        assert!(is_private_network(&v(&[
            "10.0.0.2:1",
            "192.168.1.1:2",
            "[::1]:3"
        ])));
        assert!(!is_private_network(&v(&[])));
        assert!(!is_private_network(&v(&[
            "127.0.0.1:1",
            "88.99.3.86:49737"
        ])));
        assert!(!is_private_network(&v(&[
            "88.99.3.86@node1.hyperdht.org:49737"
        ])));
        assert!(!is_private_network(&v(&["example.org:1"])));
        assert!(check_bootstrap(&v(&["127.0.0.1:1", "a@b:2"])).is_ok());
        for bad in ["127.0.0.1", ":1", "h:0", "h:x", "h:70000"] {
            assert!(check_bootstrap(&v(&[bad])).is_err(), "{bad}");
        }
    }
}
