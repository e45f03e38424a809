//! Discovery on HyperDHT, the network JavaScript Hyperswarm peers use, through `peeroxide`
//! (`docs/dht-notes.md`): a [`Discovery`] joins topics (a co-drive's hypercore discovery key, as
//! JS `swarm.join(drive.discoveryKey)`) and runs every connection it makes or accepts through the
//! [`Replicator`], on our own mux over peeroxide's secret stream
//! ([`transport::peer_connection`]).
//!
//! Two DHT nodes: a peeroxide swarm that announces our server topics and accepts connections,
//! and a client node of our own that looks topics up and dials whoever announced them. We dial
//! ourselves because peeroxide 1.7.3's swarm, as a client, gives up on a peer for good after one
//! failed attempt (`PeerInfo::set_waiting(true)` is never undone, so its scheduled retry and
//! every later lookup result are ignored) and looks topics up only every 10-12 minutes: a peer
//! that failed to reach us once, or started after our lookup, was never dialled again.
//!
//! What else we work around in peeroxide 1.7.3, from our side:
//! - It never probes whether it is reachable, so on a private network it stages a passive
//!   holepunch that a JS client (which found itself open) never answers. When every bootstrap
//!   node is loopback or private, or when told so, the server announces as reachable
//!   ([`DhtOptions::reachable`]): JS clients then dial its socket directly. The client node
//!   always counts as firewalled: it then dials a JS server by the same-host shortcut, where an
//!   open client would wait for a JS server to dial it back, which peeroxide never does.
//! - It drops connections when its 64-slot channel is full: the channel is drained at once,
//!   each connection handed to its own task.
//! - Its server never forgets a peer it accepted, and refuses that key ever after (having
//!   answered its handshake first, so the peer waits for a stream that never comes). We dial
//!   with a fresh key pair each time, so we are never that peer; for others (JS peers keep their
//!   key) the server swarm is replaced by a fresh one (same key pair, same topics) once an
//!   accepted connection ended; meanwhile the old swarm keeps its live connections but leaves its
//!   topics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use libudx::UdxRuntime;
use peeroxide::{JoinOpts, KeyPair, SwarmConfig, SwarmConnection, SwarmHandle};
use peeroxide_dht::hyperdht::{
    ConnectOpts, HyperDhtConfig, HyperDhtError, HyperDhtHandle, PeerConnection,
};
use peeroxide_dht::hyperdht_messages::FIREWALL_OPEN;
use peeroxide_dht::messages::Ipv4Peer;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::transport::{self, MessageStream, StreamEnd, TransportError, TransportOptions};
use super::Replicator;
use crate::store::keys;

/// How long starting the DHT (binding, bootstrapping) may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Live connections at most (both ways); more are refused.
const MAX_CONNECTIONS: usize = 64;

/// Dials under way at once. A killed peer's announcement outlives it, and each attempt to reach
/// one takes up to [`DIAL_TIMEOUT`]: live peers must not wait behind them.
const MAX_DIALS: usize = 16;

/// How long one dial (finding the peer's relays, handshake, holepunch) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lookups of our topics: at join, then at intervals from the least to the most, doubling, and
/// soon again after a connection ended (its peer may be back under a new key).
const LOOKUP_MIN: Duration = Duration::from_secs(2);
const LOOKUP_MAX: Duration = Duration::from_secs(60);
const LOOKUP_AFTER_END: Duration = Duration::from_millis(500);

/// Waits before dialling a peer again: after a connection to it ended, and after the first
/// failed attempt, doubling with each failure up to the last.
const REDIAL: Duration = Duration::from_millis(500);
const REDIAL_MAX: Duration = Duration::from_secs(30);

/// A peer found by no lookup for this long, and not connected, is forgotten.
const FORGET: Duration = Duration::from_secs(300);

/// Accepted keys the swarm may hold before it refuses everyone: peeroxide counts every peer it
/// ever accepted (see the module docs), so its own limit (64) is not one of live connections;
/// ours is [`MAX_CONNECTIONS`].
const SWARM_MAX_PEERS: usize = 1 << 20;

/// What discovery is doing, for `cohd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhtStatus {
    /// The key we announce under.
    pub public_key: [u8; 32],
    /// Whether we announce as reachable.
    pub reachable: bool,
    /// Live connections we accepted.
    pub accepted: usize,
    /// Live connections we dialled.
    pub dialled: usize,
    /// Announced keys our lookups found (live peers, and records of peers gone).
    pub known: usize,
    /// Dials under way.
    pub dialling: usize,
}

/// Why discovery could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The DHT node did not bootstrap in time (no bootstrap node answered).
    #[error("the DHT did not bootstrap within {0:?} (are the bootstrap nodes reachable?)")]
    Timeout(Duration),
    /// peeroxide's swarm failed.
    #[error("DHT: {0}")]
    Swarm(#[from] peeroxide::SwarmError),
    /// peeroxide's DHT node failed.
    #[error("DHT: {0}")]
    Node(#[from] HyperDhtError),
    /// UDX failed.
    #[error("UDX: {0}")]
    Udx(#[from] libudx::UdxError),
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

/// One peeroxide swarm (the server side).
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

/// Our client node: lookups and dials.
struct ClientNode {
    dht: HyperDhtHandle,
    task: JoinHandle<Result<(), HyperDhtError>>,
    events: JoinHandle<()>,
}

/// A peer found on a topic we look up.
#[derive(Debug)]
struct Known {
    relays: Vec<Ipv4Peer>,
    seen: Instant,
    failures: u32,
    next_try: Instant,
    dialing: bool,
    connected: bool,
}

#[derive(Debug, Default)]
struct Dials {
    /// The topics we look up (kept here, not in [`State`], so that a lookup never waits for a
    /// swarm replacement).
    topics: Vec<[u8; 32]>,
    known: HashMap<[u8; 32], Known>,
    /// Lookup rounds started; a round looks up the client topics joined when it starts.
    started: u64,
    /// The round [`Discovery::flush`] waits for.
    flush_target: u64,
}

/// Where a connection came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Accepted by the server swarm of this generation.
    Accepted(u64),
    /// Dialled by us to the peer that announced this key.
    Dialed([u8; 32]),
}

/// Discovery on HyperDHT (see the module docs). Dropping it leaves the DHT.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    repl: Replicator,
    opts: DhtOptions,
    transport: TransportOptions,
    key_pair: KeyPair,
    state: tokio::sync::Mutex<State>,
    client: Mutex<Option<ClientNode>>,
    dials: Mutex<Dials>,
    /// Set by [`Discovery::close`]: a dial that succeeds later is dropped.
    closed: AtomicBool,
    /// Wakes the dial loop: a topic joined, a dial or a connection ended.
    wake: Arc<Notify>,
    /// Set with `wake` when the next lookup should come soon.
    lookup_soon: Arc<AtomicBool>,
    /// Lookup rounds finished.
    rounds: watch::Sender<u64>,
    /// Connections made so far (both ways).
    made: watch::Sender<u64>,
    /// Live connections per swarm generation.
    live: Mutex<HashMap<u64, usize>>,
    /// Every connection's end and task, to close them on [`Discovery::close`].
    conns: Mutex<Vec<(StreamEnd, JoinHandle<()>)>>,
    ended: mpsc::UnboundedSender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("public_key", &hex::encode(self.key_pair.public_key))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if let Some(c) = lock(&self.client).take() {
            c.events.abort();
            c.task.abort();
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

fn dht_config(bootstrap: &[String]) -> HyperDhtConfig {
    if bootstrap.is_empty() {
        HyperDhtConfig::with_public_bootstrap()
    } else {
        let mut c = HyperDhtConfig::default();
        c.dht.bootstrap = bootstrap.to_vec();
        c
    }
}

impl Discovery {
    /// Starts a DHT node (bounded by [`START_TIMEOUT`]); connections it makes or accepts
    /// replicate through `repl`. The server swarm starts with the first topic joined as a
    /// server.
    pub async fn start(repl: &Replicator, opts: DhtOptions) -> Result<Self, DhtError> {
        check_bootstrap(&opts.bootstrap)?;
        let key_pair = match opts.seed {
            Some(s) => KeyPair::from_seed(s),
            None => KeyPair::generate(),
        };
        let client = start_client(&opts.bootstrap).await?;
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let d = Discovery {
            inner: Arc::new(Inner {
                repl: repl.clone(),
                transport: repl.transport_options().clone(),
                opts,
                key_pair,
                state: tokio::sync::Mutex::new(State {
                    current: None,
                    retired: Vec::new(),
                    joined: Vec::new(),
                    next_id: 0,
                }),
                client: Mutex::new(Some(client)),
                dials: Mutex::default(),
                closed: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                lookup_soon: Arc::new(AtomicBool::new(false)),
                rounds: watch::channel(0).0,
                made: watch::channel(0).0,
                live: Mutex::default(),
                conns: Mutex::default(),
                ended,
                tasks: Mutex::default(),
            }),
        };
        let weak = Arc::downgrade(&d.inner);
        let supervisor = tokio::spawn(supervise(weak.clone(), ended_rx));
        let dialer = tokio::spawn(dial_loop(weak));
        lock(&d.inner.tasks).extend([supervisor, dialer]);
        Ok(d)
    }

    /// Our public key on the DHT (the server's; every dial uses a fresh one).
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.key_pair.public_key
    }

    /// Whether we announce as reachable.
    pub fn reachable(&self) -> bool {
        self.inner
            .opts
            .reachable
            .unwrap_or_else(|| is_private_network(&self.inner.opts.bootstrap))
    }

    /// Joins `topic`: as a server, we announce it and accept connections; as a client, we look
    /// it up and connect to whoever announced it (again after drops, with backoff).
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
        if server {
            match &state.current {
                Some(g) => {
                    let mut o = JoinOpts::default();
                    o.server = true;
                    o.client = false;
                    g.handle.join(topic, o).await?;
                }
                None => {
                    let g = self.spawn_generation(&mut state).await?;
                    state.current = Some(g);
                }
            }
        }
        drop(state);
        if client {
            let mut dials = lock(&self.inner.dials);
            if !dials.topics.contains(&topic) {
                dials.topics.push(topic);
            }
            dials.flush_target = dials.started + 1;
            drop(dials);
            self.inner.lookup_soon.store(true, Ordering::SeqCst);
            self.inner.wake.notify_one();
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
        let target = lock(&self.inner.dials).flush_target;
        let mut rounds = self.inner.rounds.subscribe();
        // The dial loop only ends with us.
        let _ = rounds.wait_for(|n| *n >= target).await;
        Ok(())
    }

    /// What discovery is doing now.
    pub fn status(&self) -> DhtStatus {
        let live = lock(&self.inner.live);
        let dialled = live.get(&DIALLED_SLOT).copied().unwrap_or(0);
        let accepted = live.values().sum::<usize>() - dialled;
        drop(live);
        let dials = lock(&self.inner.dials);
        DhtStatus {
            public_key: self.public_key(),
            reachable: self.reachable(),
            accepted,
            dialled,
            known: dials.known.len(),
            dialling: dials.known.values().filter(|k| k.dialing).count(),
        }
    }

    /// Connections made or accepted so far, watched.
    pub fn connections_made(&self) -> watch::Receiver<u64> {
        self.inner.made.subscribe()
    }

    /// Ends every connection (telling the peers), then leaves the DHT (unannounces).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        let conns = std::mem::take(&mut *lock(&self.inner.conns));
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
        let client = lock(&self.inner.client).take();
        if let Some(c) = client {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.dht.destroy()).await;
            c.events.abort();
            c.task.abort();
        }
    }

    async fn spawn_generation(&self, state: &mut State) -> Result<Generation, DhtError> {
        let opts = &self.inner.opts;
        let mut cfg = SwarmConfig::default();
        cfg.key_pair = Some(self.inner.key_pair.clone());
        cfg.max_peers = SWARM_MAX_PEERS;
        cfg.dht = dht_config(&opts.bootstrap);
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
        for j in state.joined.iter().filter(|j| j.server) {
            let mut o = JoinOpts::default();
            o.server = true;
            o.client = false;
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

/// Starts our client node: ephemeral, and firewalled as far as it knows (see the module docs).
async fn start_client(bootstrap: &[String]) -> Result<ClientNode, DhtError> {
    let runtime = UdxRuntime::new()?;
    let cfg = dht_config(bootstrap);
    let started = async {
        let (task, dht, mut server_rx) = peeroxide_dht::hyperdht::spawn(&runtime, cfg).await?;
        dht.bootstrapped().await?;
        // It serves no key; whatever comes is dropped.
        let events = tokio::spawn(async move { while server_rx.recv().await.is_some() {} });
        Ok::<_, DhtError>(ClientNode { dht, task, events })
    };
    tokio::time::timeout(START_TIMEOUT, started)
        .await
        .map_err(|_| DhtError::Timeout(START_TIMEOUT))?
}

/// Takes every connection off peeroxide's channel at once (it drops them when the channel is
/// full) and replicates on it.
async fn drain(inner: Weak<Inner>, id: u64, mut conns: mpsc::Receiver<SwarmConnection>) {
    while let Some(conn) = conns.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let remote = hex::encode(conn.remote_public_key());
        if live_total(&inner) >= MAX_CONNECTIONS {
            tracing::info!(%remote, "DHT connection refused: {MAX_CONNECTIONS} already");
            // Its end makes the swarm accept this key again after a replacement.
            let _ = inner.ended.send(id);
            continue;
        }
        let stream = transport::swarm_connection(conn, inner.key_pair.public_key, &inner.transport);
        run_connection(&inner, stream, remote, Origin::Accepted(id));
    }
}

fn live_total(inner: &Inner) -> usize {
    lock(&inner.live).values().sum()
}

/// Where dialled connections are counted among the generations' (none has this id).
const DIALLED_SLOT: u64 = u64::MAX;

/// Replicates on a connection in its own task, and accounts for its end.
fn run_connection(inner: &Arc<Inner>, stream: MessageStream, remote: String, origin: Origin) {
    inner.made.send_modify(|n| *n += 1);
    let slot = match origin {
        Origin::Accepted(id) => id,
        Origin::Dialed(_) => DIALLED_SLOT,
    };
    *lock(&inner.live).entry(slot).or_default() += 1;
    let repl = inner.repl.clone();
    let weak = Arc::downgrade(inner);
    let end = stream.end().clone();
    let task = tokio::spawn(async move {
        let how = match origin {
            Origin::Accepted(_) => "accepted",
            Origin::Dialed(_) => "dialled",
        };
        tracing::info!(%remote, how, "DHT connection");
        match repl.run_stream(stream).await {
            Ok(()) => tracing::debug!(%remote, "DHT connection closed"),
            Err(e) => tracing::info!(%remote, "DHT connection closed: {e}"),
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Some(n) = lock(&inner.live).get_mut(&slot) {
            *n = n.saturating_sub(1);
        }
        match origin {
            Origin::Accepted(id) => {
                let _ = inner.ended.send(id);
            }
            Origin::Dialed(pk) => {
                if let Some(k) = lock(&inner.dials).known.get_mut(&pk) {
                    k.connected = false;
                    k.failures = 0;
                    k.next_try = Instant::now() + REDIAL;
                }
            }
        }
        // Its peer may be back soon under a new key: look again.
        inner.lookup_soon.store(true, Ordering::SeqCst);
        inner.wake.notify_one();
    });
    let mut conns = lock(&inner.conns);
    conns.retain(|(_, t)| !t.is_finished());
    conns.push((end, task));
}

/// The wait before the next dial after `failures` failed ones, with up to a quarter more at
/// random so that peers restarted together do not dial in step.
fn redial_after(failures: u32) -> Duration {
    let base = REDIAL.saturating_mul(1 << failures.min(16)).min(REDIAL_MAX);
    let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1);
    base + Duration::from_millis(jitter)
}

/// Looks our client topics up, at the intervals of [`LOOKUP_MIN`], and dials whoever
/// announced them and is not connected, again after drops and failures.
async fn dial_loop(weak: Weak<Inner>) {
    let (wake, soon) = match weak.upgrade() {
        Some(i) => (i.wake.clone(), i.lookup_soon.clone()),
        None => return,
    };
    let mut interval = LOOKUP_MIN;
    let mut next_lookup: Option<Instant> = None;
    loop {
        if soon.swap(false, Ordering::SeqCst) {
            let at = Instant::now() + LOOKUP_AFTER_END;
            // A join looks up at once.
            let at = if next_lookup.is_none() {
                Instant::now()
            } else {
                at
            };
            next_lookup = Some(next_lookup.map_or(at, |n| n.min(at)));
            interval = LOOKUP_MIN;
        }
        let Some(inner) = weak.upgrade() else { return };
        let Some(dht) = lock(&inner.client).as_ref().map(|c| c.dht.clone()) else {
            return;
        };
        if next_lookup.is_some_and(|n| n <= Instant::now()) {
            lookup_round(&inner, &dht).await;
            next_lookup = Some(Instant::now() + interval);
            interval = (interval * 2).min(LOOKUP_MAX);
        }
        let next_dial = start_due_dials(&inner, &dht);
        drop(inner);
        let until = match (next_lookup, next_dial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match until {
            Some(t) => {
                tokio::select! {
                    () = tokio::time::sleep_until(t.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// One lookup of every client topic; records whoever announced them.
async fn lookup_round(inner: &Arc<Inner>, dht: &HyperDhtHandle) {
    let (round, topics) = {
        let mut dials = lock(&inner.dials);
        dials.started += 1;
        (dials.started, dials.topics.clone())
    };
    for topic in topics {
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, dht.lookup(topic)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!("DHT lookup failed: {e}");
                continue;
            }
            Err(_) => {
                tracing::debug!("DHT lookup timed out");
                continue;
            }
        };
        let now = Instant::now();
        let mut dials = lock(&inner.dials);
        for peer in found.into_iter().flat_map(|r| r.peers) {
            if peer.public_key == inner.key_pair.public_key {
                continue;
            }
            let k = dials.known.entry(peer.public_key).or_insert_with(|| {
                tracing::debug!(pk = %hex::encode(peer.public_key), "DHT peer found");
                Known {
                    relays: Vec::new(),
                    seen: now,
                    failures: 0,
                    next_try: now,
                    dialing: false,
                    connected: false,
                }
            });
            k.seen = now;
            if !peer.relay_addresses.is_empty() {
                k.relays = peer.relay_addresses;
            }
        }
        dials
            .known
            .retain(|_, k| k.connected || k.dialing || now.duration_since(k.seen) < FORGET);
    }
    inner.rounds.send_modify(|n| *n = (*n).max(round));
}

/// Starts the dials that are due; returns when the next one will be.
fn start_due_dials(inner: &Arc<Inner>, dht: &HyperDhtHandle) -> Option<Instant> {
    let now = Instant::now();
    let live = live_total(inner);
    let mut dials = lock(&inner.dials);
    let mut dialing = dials.known.values().filter(|k| k.dialing).count();
    let mut next = None::<Instant>;
    for (pk, k) in dials.known.iter_mut() {
        if k.dialing || k.connected {
            continue;
        }
        if k.next_try > now || dialing >= MAX_DIALS || live + dialing >= MAX_CONNECTIONS {
            // Full: a dial's end wakes the loop.
            if k.next_try > now {
                next = Some(next.map_or(k.next_try, |n| n.min(k.next_try)));
            }
            continue;
        }
        k.dialing = true;
        dialing += 1;
        let task = dial(Arc::downgrade(inner), dht.clone(), *pk, k.relays.clone());
        tokio::spawn(task);
    }
    next
}

/// One attempt to connect to the peer that announced `pk`, with a fresh key pair.
async fn dial(weak: Weak<Inner>, dht: HyperDhtHandle, pk: [u8; 32], relays: Vec<Ipv4Peer>) {
    let attempt = async {
        let runtime = UdxRuntime::new()?;
        let conn = dht
            .connect_with_options(
                &KeyPair::generate(),
                pk,
                &relays,
                &runtime,
                ConnectOpts::default(),
            )
            .await?;
        Ok::<PeerConnection, DhtError>(conn)
    };
    let r = tokio::time::timeout(DIAL_TIMEOUT, attempt).await;
    let Some(inner) = weak.upgrade() else { return };
    let remote = hex::encode(pk);
    {
        let mut dials = lock(&inner.dials);
        let Some(k) = dials.known.get_mut(&pk) else {
            return;
        };
        k.dialing = false;
        match &r {
            Ok(Ok(_)) => {
                k.connected = true;
                k.failures = 0;
            }
            Ok(Err(e)) => {
                tracing::debug!(%remote, "DHT dial failed: {e}");
                k.next_try = Instant::now() + redial_after(k.failures);
                k.failures = k.failures.saturating_add(1);
            }
            Err(_) => {
                tracing::debug!(%remote, "DHT dial timed out");
                k.next_try = Instant::now() + redial_after(k.failures);
                k.failures = k.failures.saturating_add(1);
            }
        }
    }
    if inner.closed.load(Ordering::SeqCst) {
        return; // the connection, if any, drops here
    }
    if let Ok(Ok(conn)) = r {
        let stream = transport::peer_connection(conn, inner.key_pair.public_key, &inner.transport);
        run_connection(&inner, stream, remote, Origin::Dialed(pk));
    }
    inner.wake.notify_one();
}

/// Least time between two swarm replacements (each one bootstraps again).
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// Replaces the server swarm after one of its accepted connections ended (see the module
/// docs), and drops retired swarms whose connections all ended.
async fn supervise(inner: Weak<Inner>, mut ended: mpsc::UnboundedReceiver<u64>) {
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
        let live = |id: u64| lock(&self.inner.live).get(&id).copied().unwrap_or(0);
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
        if state.current.is_none() {
            return Ok(());
        }
        let fresh = self.spawn_generation(&mut state).await?;
        if let Some(old) = state.current.replace(fresh) {
            // Its live connections stay; it no longer announces. It is kept even when idle,
            // until a later replacement (or close): a client that found its announcement just
            // before it left may be connecting to it right now, and destroying it would leave
            // that client with a connection nobody serves.
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

    #[test]
    fn redials_back_off_to_a_bound() {
        let most = REDIAL_MAX + REDIAL_MAX / 4;
        for failures in [0, 1, 2, 5, 10, 16, 17, u32::MAX] {
            let d = redial_after(failures);
            let base = REDIAL.saturating_mul(1 << failures.min(16)).min(REDIAL_MAX);
            assert!(d >= base && d <= base + base / 4, "{failures}: {d:?}");
            assert!(d <= most, "{failures}: {d:?}");
        }
        assert!(redial_after(0) < Duration::from_secs(1));
        assert!(redial_after(30) >= REDIAL_MAX);
    }
}
