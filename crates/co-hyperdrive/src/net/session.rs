//! Connections: drives a [`Mux`] per connection, one task per channel (core), the
//! [`Peer`](super::peer::Peer) state machine in each, and the actions it asks for.
//!
//! Every core the [`Replicator`] holds is offered on every connection, and every core a remote
//! opens that we hold is served back, so a peer that is not a writer still relays every writer
//! core it knows. Writes to one core (appends, applied proofs) are serialized by the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohd_format::wire::Message;
use cohd_format::Key;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

use super::peer::{Action, Claims, Local, Peer, PeerError, MAX_QUEUED};
use super::transport::{
    self, Backlog, Channel, MessageStream, Mux, MuxEvent, TransportError, TransportOptions,
};
use crate::store::keys::discovery_key;
use crate::store::{Core, Proof};

/// Why a connection ended or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The transport (TCP, Noise, framing) failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The remote broke the protocol; the connection was closed.
    #[error("peer misbehaved on core {core}: {reason}")]
    Peer {
        /// The core's key.
        core: Key,
        /// What it did.
        reason: String,
    },
    /// The protocol stream failed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a replicator behaves.
#[derive(Debug, Clone, Default)]
pub struct ReplicateOptions {
    /// Download every block of every core (else only what reads ask for, plus lengths).
    pub download_all: bool,
    /// Transport settings (keepalive, timeouts, frame size).
    pub transport: TransportOptions,
}

/// An extension message received from a peer.
#[derive(Debug, Clone)]
pub struct ExtensionMessage {
    /// The connection it came on (to reply on the same one).
    pub connection: u64,
    /// The remote's public key from the handshake.
    pub remote: [u8; 32],
    /// The core whose channel carried it.
    pub core: Key,
    /// Extension name.
    pub name: String,
    /// Raw payload.
    pub message: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Outgoing {
    connection: Option<u64>,
    dk: [u8; 32],
    name: String,
    message: Vec<u8>,
}

/// Per (connection, discovery key): whether the remote announced its state and we caught up
/// with it, the length it announced, and how many blocks from the start it holds.
type ChannelStatus = (bool, u64, u64);

/// What a channel task knows of its connection.
#[derive(Debug, Clone)]
struct ConnCtx {
    id: u64,
    /// The remote's public key from the handshake.
    remote: [u8; 32],
    backlog: Backlog,
}

/// Most Data messages taken from a channel's queue at once, their proofs applied together.
const APPLY_BATCH: usize = 128;

/// How often a channel waiting for a congested socket checks its queue for a flood.
const FLOOD_CHECK: Duration = Duration::from_millis(50);

/// What a channel sends while it handles the messages already queued is held and sent as one
/// frame (a protomux batch) once the queue is empty, or at these sizes: one encrypted frame
/// instead of one per message (a block and its request each cost a frame's sealing, opening
/// and wakeups otherwise).
const OUT_BATCH_MESSAGES: usize = 64;
const OUT_BATCH_BYTES: usize = 256 << 10;

/// Messages a channel holds to send as one frame (see [`OUT_BATCH_MESSAGES`]).
#[derive(Debug, Default)]
struct Outbox {
    messages: Vec<Message>,
    bytes: usize,
}

impl Outbox {
    /// Holds `m`; sends what is held if that reaches a batch's size.
    fn push(&mut self, ch: &Channel, m: Message) -> Result<(), Closed> {
        self.bytes += match &m {
            Message::Data { block: Some(b), .. } => b.value.len() + b.nodes.len() * 48 + 64,
            _ => 64,
        };
        self.messages.push(m);
        if self.messages.len() >= OUT_BATCH_MESSAGES || self.bytes >= OUT_BATCH_BYTES {
            self.flush(ch)?;
        }
        Ok(())
    }

    fn flush(&mut self, ch: &Channel) -> Result<(), Closed> {
        self.bytes = 0;
        if self.messages.is_empty() {
            return Ok(());
        }
        let r = ch.send_batch(&self.messages).map_err(|_| Closed);
        self.messages.clear();
        r
    }
}

/// The channel closed while we were sending.
#[derive(Debug)]
struct Closed;

/// Replication state shared by every connection.
#[derive(Debug, Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: ReplicateOptions,
    cores: Mutex<HashMap<[u8; 32], Core>>,
    /// Cores downloaded in full whatever `download_all` says (a co-drive's db cores: metadata).
    full: Mutex<std::collections::HashSet<[u8; 32]>>,
    added: broadcast::Sender<Core>,
    incoming_ext: broadcast::Sender<ExtensionMessage>,
    outgoing_ext: broadcast::Sender<Outgoing>,
    /// (connection, discovery key) -> (remote synced and caught up, remote length).
    /// Discovery key -> connection -> status (by core first: waits look up many cores).
    status: Mutex<HashMap<[u8; 32], HashMap<u64, ChannelStatus>>>,
    status_changed: watch::Sender<u64>,
    next_conn: AtomicU64,
    connections: watch::Sender<usize>,
    /// What each live connection has not written to its socket yet.
    backlogs: Mutex<HashMap<u64, Backlog>>,
    /// Per core (discovery key): blocks one of its channels asked for, so others do not.
    claims: Mutex<HashMap<[u8; 32], Arc<Claims>>>,
    /// Blocks sent to peers, and received from them (verified and applied).
    sent: AtomicU64,
    received: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for core in self
            .cores
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            core.detach();
        }
    }
}

/// One live connection's place in the shared state; dropping it (the connection ended, or its
/// task was aborted) takes the connection out.
struct Live {
    inner: Arc<Inner>,
    id: u64,
}

impl Live {
    fn new(inner: &Arc<Inner>, backlog: Backlog) -> Self {
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        inner.connections.send_modify(|n| *n += 1);
        inner
            .backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, backlog);
        Self {
            inner: inner.clone(),
            id,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let id = self.id;
        self.inner
            .connections
            .send_modify(|n| *n = n.saturating_sub(1));
        {
            // Both under the status lock: `set_status` checks liveness under it too, so a
            // channel task still running cannot put this connection's status back.
            let mut status = self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
            self.inner
                .backlogs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            status.retain(|_, by_conn| {
                by_conn.remove(&id);
                !by_conn.is_empty()
            });
        }
        self.inner.status_changed.send_modify(|n| *n += 1);
    }
}

impl Replicator {
    /// A replicator with no cores yet.
    pub fn new(opts: ReplicateOptions) -> Self {
        let (added, _) = broadcast::channel(256);
        let (incoming_ext, _) = broadcast::channel(256);
        let (outgoing_ext, _) = broadcast::channel(256);
        let (status_changed, _) = watch::channel(0);
        let (connections, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                opts,
                cores: Mutex::default(),
                full: Mutex::default(),
                added,
                incoming_ext,
                outgoing_ext,
                status: Mutex::default(),
                status_changed,
                next_conn: AtomicU64::new(1),
                connections,
                backlogs: Mutex::default(),
                claims: Mutex::default(),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            }),
        }
    }

    /// The transport settings of every connection.
    pub fn transport_options(&self) -> &TransportOptions {
        &self.inner.opts.transport
    }

    /// Replicates `core` on every connection (current and future).
    pub fn add_core(&self, core: Core) {
        let dk = discovery_key(&core.key().0);
        let fresh = self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dk, core.clone())
            .is_none();
        if fresh {
            core.attach();
            let _ = self.inner.added.send(core);
        }
    }

    /// Replicates `core` and always downloads all of it (for small cores every read needs, such
    /// as a drive's db core, fetching block by block on demand would cost a round trip each).
    pub fn add_core_full(&self, core: Core) {
        self.inner
            .full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(discovery_key(&core.key().0));
        self.add_core(core);
    }

    /// Number of connections with an open channel for `core` whose remote announced its state.
    pub fn channels_for(&self, core: &Key) -> usize {
        self.remote_states(core).len()
    }

    /// Download progress over every replicated core: (blocks held from the start, blocks the
    /// connected peers announced), for progress bars.
    pub fn progress(&self) -> (u64, u64) {
        let cores: Vec<Core> = self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        cores.iter().fold((0, 0), |(have, want), c| {
            let i = c.info();
            let remote = self.remote_length(&c.key()).unwrap_or(0).max(i.length);
            (have + i.contiguous_length.min(remote), want + remote)
        })
    }

    /// Keys of every replicated core.
    pub fn core_keys(&self) -> Vec<Key> {
        self.inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.key())
            .collect()
    }

    /// Whether `key` is replicated.
    pub fn has_core(&self, key: &Key) -> bool {
        self.inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&discovery_key(&key.0))
    }

    /// Extension messages from every peer.
    pub fn extensions(&self) -> broadcast::Receiver<ExtensionMessage> {
        self.inner.incoming_ext.subscribe()
    }

    /// Sends an extension message on `core`'s channel: to one connection, or to all.
    pub fn send_extension(&self, connection: Option<u64>, core: Key, name: &str, message: Vec<u8>) {
        let _ = self.inner.outgoing_ext.send(Outgoing {
            connection,
            dk: discovery_key(&core.0),
            name: name.to_string(),
            message,
        });
    }

    /// Number of live connections, watched.
    pub fn connections(&self) -> watch::Receiver<usize> {
        self.inner.connections.subscribe()
    }

    /// Channels open for `core` whose remote has announced its state, with their lengths.
    fn remote_states(&self, core: &Key) -> Vec<ChannelStatus> {
        self.remote_states_dk(&discovery_key(&core.0))
    }

    fn remote_states_dk(&self, dk: &[u8; 32]) -> Vec<ChannelStatus> {
        let s = self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
        s.get(dk)
            .map(|by_conn| by_conn.values().copied().collect())
            .unwrap_or_default()
    }

    /// Waits until, for each core, some connected peer announced it and we have caught up with
    /// it (its length; every block with `download_all`). `false` on timeout.
    pub async fn wait_caught_up(&self, cores: &[Key], timeout: Duration) -> bool {
        // Hashed once: the check runs after every status change of every channel.
        let dks: Vec<[u8; 32]> = cores.iter().map(|k| discovery_key(&k.0)).collect();
        self.wait_status(timeout, || {
            dks.iter()
                .all(|dk| self.remote_states_dk(dk).iter().any(|(ok, _, _)| *ok))
        })
        .await
    }

    /// Waits until `check` holds, checking after every channel status change; `false` on
    /// timeout.
    async fn wait_status(&self, timeout: Duration, check: impl Fn() -> bool) -> bool {
        let mut rx = self.inner.status_changed.subscribe();
        let wait = async {
            loop {
                if check() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// The largest length any connected peer announced for `core`.
    pub fn remote_length(&self, core: &Key) -> Option<u64> {
        self.remote_states(core).iter().map(|(_, l, _)| *l).max()
    }

    /// Waits until, for each core, some connected peer holds every block we have (what `sync`
    /// waits for before leaving, so our writes are delivered, not only announced). `false` on
    /// timeout.
    pub async fn wait_delivered(&self, cores: &[Core], timeout: Duration) -> bool {
        let dks: Vec<[u8; 32]> = cores.iter().map(|c| discovery_key(&c.key().0)).collect();
        self.wait_status(timeout, || {
            cores.iter().zip(&dks).all(|(c, dk)| {
                let have = c.info().contiguous_length;
                have == 0 || self.remote_states_dk(dk).iter().any(|(_, _, r)| *r >= have)
            })
        })
        .await
    }

    /// Listens on `addr`; returns the bound address and the accept loop's task.
    pub async fn listen(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), SessionError> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, from)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    match me.run(tcp, false).await {
                        Ok(()) => tracing::debug!(%from, "connection closed"),
                        Err(e) => tracing::info!(%from, "connection closed: {e}"),
                    }
                });
            }
        });
        Ok((local, task))
    }

    /// Dials `addr` and replicates until the connection ends (spawned; returns its task).
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::task::JoinHandle<Result<(), SessionError>>, SessionError> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                )
            })??;
        let me = self.clone();
        Ok(tokio::spawn(async move { me.run(tcp, true).await }))
    }

    /// Runs one TCP connection to its end.
    pub async fn run(&self, tcp: TcpStream, initiator: bool) -> Result<(), SessionError> {
        let stream = if initiator {
            transport::connect(tcp, &self.inner.opts.transport).await?
        } else {
            transport::accept(tcp, &self.inner.opts.transport).await?
        };
        self.run_stream(stream).await
    }

    /// Runs replication over an established message stream (any transport) to its end.
    pub async fn run_stream(&self, stream: MessageStream) -> Result<(), SessionError> {
        let live = Live::new(&self.inner, stream.backlog().clone());
        self.drive(live.id, Mux::new(stream)).await
    }

    /// Blocks sent to peers and blocks received from them (verified and applied) so far, over
    /// every connection.
    pub fn blocks_transferred(&self) -> (u64, u64) {
        (
            self.inner.sent.load(Ordering::Relaxed),
            self.inner.received.load(Ordering::Relaxed),
        )
    }

    /// Bytes queued for peers and not yet written to their sockets, over every connection.
    /// A peer that reads slowly holds at most a few MiB here; one that stops reading is
    /// disconnected after the idle timeout.
    pub fn backlog_bytes(&self) -> usize {
        self.inner
            .backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Backlog::bytes)
            .sum()
    }

    async fn drive(&self, id: u64, mut mux: Mux) -> Result<(), SessionError> {
        let remote = mux.info().remote_public_key;
        let backlog = mux.backlog().clone();
        let mut added = self.inner.added.subscribe();
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel::<SessionError>();
        // Dropped with this future (the connection ended, or the caller aborted it): the
        // channel tasks end with it.
        let mut tasks = tokio::task::JoinSet::new();
        // Every core we hold is offered at once; a core is opened once, whichever of our offer
        // and the remote's Open comes first (the mux pairs them).
        let keys: Vec<[u8; 32]> = self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.key().0)
            .collect();
        for k in keys {
            mux.open(&k)?;
        }
        let result = loop {
            tokio::select! {
                ev = mux.next() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        // A channel task that failed ended the connection: report its reason,
                        // the real one, if it is there.
                        Err(e) => break Err(fail_rx.try_recv().unwrap_or_else(|_| self.blame(e))),
                    };
                    match ev {
                        MuxEvent::RemoteOpen(dk) => {
                            let key = self.inner.cores.lock().unwrap_or_else(|e| e.into_inner()).get(&dk).map(|c| c.key().0);
                            match key {
                                Some(k) => mux.open(&k)?,
                                None => mux.reject(&dk),
                            }
                        }
                        MuxEvent::Channel(ch) => {
                            let core = self.inner.cores.lock().unwrap_or_else(|e| e.into_inner()).get(ch.discovery_key()).cloned();
                            if let Some(core) = core {
                                let me = self.clone();
                                let fail = fail_tx.clone();
                                let ctx = ConnCtx { id, remote, backlog: backlog.clone() };
                                tasks.spawn(async move {
                                    if let Err(e) = me.channel(&ctx, ch, core).await {
                                        let _ = fail.send(e);
                                    }
                                });
                                while tasks.try_join_next().is_some() {}
                            }
                        }
                        MuxEvent::Rejected(_) => {}
                        MuxEvent::Closed(dk) => {
                            let mut s = self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(by_conn) = s.get_mut(&dk) {
                                by_conn.remove(&id);
                                if by_conn.is_empty() {
                                    s.remove(&dk);
                                }
                            }
                        }
                    }
                }
                core = added.recv() => {
                    if let Ok(core) = core {
                        mux.open(&core.key().0)?;
                    }
                }
                Some(e) = fail_rx.recv() => break Err(e),
            }
        };
        tasks.abort_all();
        result
    }

    /// A flood on a channel blames the peer for that core, as the channel's own check does.
    fn blame(&self, e: TransportError) -> SessionError {
        if let TransportError::Flooded { discovery_key, .. } = &e {
            let cores = self.inner.cores.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(core) = cores.get(discovery_key).map(Core::key) {
                return SessionError::Peer {
                    core,
                    reason: e.to_string(),
                };
            }
        }
        SessionError::Transport(e)
    }

    fn set_status(&self, conn: u64, dk: [u8; 32], status: ChannelStatus) {
        let mut s = self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
        let live = self
            .inner
            .backlogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&conn);
        if live && s.entry(dk).or_default().insert(conn, status) != Some(status) {
            drop(s);
            self.inner.status_changed.send_modify(|n| *n += 1);
        }
    }

    async fn channel(&self, conn: &ConnCtx, ch: Channel, core: Core) -> Result<(), SessionError> {
        let key = core.key();
        let dk = *ch.discovery_key();
        let fail = |reason: String| SessionError::Peer { core: key, reason };
        let full = self
            .inner
            .full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&dk);
        let claims = self
            .inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dk)
            .or_default()
            .clone();
        let mut peer = Peer::new(self.inner.opts.download_all || full, claims);
        let mut length = core.subscribe();
        let mut wants = core.wants();
        let mut ext = self.inner.outgoing_ext.subscribe();
        let open = peer.on_open(&Local::of(&core));
        if ch.send_batch(&open).is_err() {
            return Ok(()); // closed meanwhile, or the connection ended
        }
        let mut out = Outbox::default();
        loop {
            // A peer error found while taking queued Data: raised once the proofs before it
            // are applied, as if they had been taken one at a time.
            let mut deferred = None;
            let actions = tokio::select! {
                msg = ch.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    if ch.len() > MAX_QUEUED {
                        return Err(fail(format!("flooded us with over {MAX_QUEUED} queued messages")));
                    }
                    let data = matches!(msg, Message::Data { .. });
                    let mut actions = peer.on_message(msg, &Local::of(&core)).map_err(|e: PeerError| fail(e.to_string()))?;
                    // Data already queued behind it are taken too: `execute` verifies their
                    // proofs together (blocks hashed side by side, one commit).
                    let mut taken = 1;
                    while data && taken < APPLY_BATCH {
                        let Some(next) = ch.try_recv_if(|m| matches!(m, Message::Data { .. })) else {
                            break;
                        };
                        taken += 1;
                        match peer.on_message(next, &Local::of(&core)) {
                            Ok(more) => actions.extend(more),
                            Err(e) => {
                                deferred = Some(fail(e.to_string()));
                                break;
                            }
                        }
                    }
                    actions
                }
                r = length.changed() => {
                    if r.is_err() { return Ok(()) }
                    // Blocks another connection delivered are no longer wanted here.
                    peer.forget_held(|i| core.has(i));
                    peer.on_local_change(&Local::of(&core))
                }
                w = wants.recv() => match w {
                    Ok(rs) => {
                        let blocks = rs.iter().flat_map(|r| r.clone()).filter(|&i| !core.has(i));
                        peer.want(blocks, &Local::of(&core))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                    Err(_) => return Ok(()),
                },
                o = ext.recv() => match o {
                    Ok(o) if o.dk == dk && o.connection.is_none_or(|c| c == conn.id) => {
                        vec![Action::Send(vec![Message::Extension { name: o.name, message: o.message }])]
                    }
                    _ => Vec::new(),
                },
            };
            if ch.is_closed() {
                return Ok(());
            }
            match self
                .execute(conn, &ch, &core, &mut peer, &mut out, actions)
                .await
            {
                Err(Closed) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
            }
            if let Some(e) = deferred {
                return Err(e);
            }
            // A batch is one announcement (JS and `Peer::on_open` send Sync then Range together):
            // publish the status only once the messages that already arrived are handled.
            // Otherwise the moment between a Sync (the remote's length) and its Range (its
            // blocks) looks "caught up" to a reader that has the length but not the blocks (a
            // resumed download), and `wait_caught_up` returns before anything was requested.
            if !ch.is_empty() {
                continue;
            }
            if out.flush(&ch).is_err() {
                return Ok(());
            }
            let l = Local::of(&core);
            self.set_status(
                conn.id,
                dk,
                (
                    peer.caught_up(&l),
                    peer.announced_remote_length(),
                    peer.remote_contiguous(),
                ),
            );
        }
    }

    /// Runs actions; `Err(Closed)` when the channel closed under us (not an error of the peer).
    async fn execute(
        &self,
        conn: &ConnCtx,
        ch: &Channel,
        core: &Core,
        peer: &mut Peer,
        out: &mut Outbox,
        actions: Vec<Action>,
    ) -> Result<Result<(), SessionError>, Closed> {
        let key = core.key();
        let fail = |reason: String| SessionError::Peer { core: key, reason };
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(msgs) => {
                    for mut m in msgs {
                        if let Message::Request {
                            id, block: Some(b), ..
                        } = &mut m
                        {
                            // Nodes that answers in flight bring are not asked for again.
                            b.nodes = core.missing_nodes_beside(b.index, |n| peer.coming(n));
                            peer.expect(*id, b.index, b.nodes);
                        }
                        out.push(ch, m)?;
                    }
                }
                Action::Serve(id, req) => {
                    // A peer that does not read gets no more answers. Its requests wait in the
                    // channel meanwhile, and a flood of them still ends the connection.
                    if ch.len() > MAX_QUEUED {
                        return Ok(Err(fail(format!(
                            "flooded us with over {MAX_QUEUED} queued messages"
                        ))));
                    }
                    // The timer only when there is something to wait for: made per answer, it
                    // cost a few percent of a peer serving a download.
                    if conn.backlog.congested() {
                        // Held answers go before waiting: the peer may wait for them.
                        out.flush(ch)?;
                        let mut check = tokio::time::interval(FLOOD_CHECK);
                        loop {
                            if ch.len() > MAX_QUEUED {
                                return Ok(Err(fail(format!(
                                    "flooded us with over {MAX_QUEUED} queued messages"
                                ))));
                            }
                            tokio::select! {
                                () = conn.backlog.ready() => break,
                                _ = check.tick() => {}
                            }
                        }
                    }
                    let no_data = Message::NoData {
                        request: id,
                        reason: 0,
                    };
                    let reply = match core.create_proof(&req).await {
                        Ok(Some(p)) => {
                            if p.block.is_some() {
                                self.inner.sent.fetch_add(1, Ordering::Relaxed);
                            }
                            data_message(id, p)
                        }
                        Ok(None) => no_data,
                        Err(e) => {
                            // Our own core failing to sign would stop replicating.
                            tracing::warn!(%key, "cannot answer request {id}: {e}");
                            no_data
                        }
                    };
                    out.push(ch, reply)?;
                }
                Action::Apply(proof) => {
                    // The proofs queued right behind it are applied with it.
                    let mut proofs = vec![proof];
                    while let Some(Action::Apply(_)) = queue.front() {
                        if let Some(Action::Apply(p)) = queue.pop_front() {
                            proofs.push(p);
                        }
                    }
                    let blocks: Vec<Option<u64>> = proofs
                        .iter()
                        .map(|p| p.block.as_ref().map(|b| b.index))
                        .collect();
                    let (applied, outcome) = core.apply_proofs(proofs).await;
                    let mut received = 0;
                    for i in blocks[..applied.min(blocks.len())].iter().flatten() {
                        if core.has(*i) {
                            received += 1;
                        } else {
                            // A proof that stored nothing (see `Peer::expect`).
                            peer.not_stored(*i);
                        }
                    }
                    self.inner.received.fetch_add(received, Ordering::Relaxed);
                    match outcome {
                        Ok(true) => {}
                        Ok(false) => {
                            return Ok(Err(fail("sent a proof that does not fit our core".into())))
                        }
                        Err(e) => {
                            return Ok(Err(fail(format!("sent a proof that does not verify: {e}"))))
                        }
                    }
                    queue.extend(peer.on_applied(&Local::of(core)));
                }
                Action::Extension(name, message) => {
                    let _ = self.inner.incoming_ext.send(ExtensionMessage {
                        connection: conn.id,
                        remote: conn.remote,
                        core: key,
                        name,
                        message,
                    });
                }
            }
        }
        Ok(Ok(()))
    }
}

/// The Data message answering request `request` with `p` (a wire Data is a proof with an id).
fn data_message(request: u64, p: Proof) -> Message {
    Message::Data {
        request,
        fork: p.fork,
        block: p.block,
        hash: p.hash,
        seek: p.seek,
        upgrade: p.upgrade,
        manifest: p.manifest,
    }
}
