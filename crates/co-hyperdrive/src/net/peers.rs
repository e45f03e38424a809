//! Peers kept connected: each address is dialled, and dialled again after a drop or a failed
//! attempt, with backoff (250 ms doubling to 30 s), for as long as the [`Peers`] lives. Host
//! names are resolved on every attempt, so a peer that moved is found again.
//!
//! What a peer is told, and what it sends, is the [`Replicator`]'s business: this module only
//! owns the connections' lifetimes and what is known of them ([`PeerStatus`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Replicator;

/// First wait after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is known of one kept peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The address as given (host name or IP, and port).
    pub addr: String,
    /// The address it resolved to last.
    pub resolved: Option<SocketAddr>,
    /// Whether a connection is up.
    pub connected: bool,
    /// When the current connection came up, or the last one ended.
    pub since: Option<SystemTime>,
    /// Why the last attempt or connection ended.
    pub last_error: Option<String>,
    /// Connections made so far.
    pub connections: u64,
    /// Attempts that failed so far.
    pub failures: u64,
}

#[derive(Debug)]
struct Kept {
    status: PeerStatus,
    task: JoinHandle<()>,
}

/// The peers a node keeps connected (see the module docs).
#[derive(Debug, Clone)]
pub struct Peers {
    repl: Replicator,
    kept: Arc<Mutex<BTreeMap<String, Kept>>>,
    changed: watch::Sender<u64>,
}

impl Drop for PeersGuard {
    fn drop(&mut self) {
        for k in self.0.lock().unwrap_or_else(|e| e.into_inner()).values() {
            k.task.abort();
        }
    }
}

/// Ends every dialling task when the last [`Peers`] handle goes.
#[derive(Debug)]
struct PeersGuard(Arc<Mutex<BTreeMap<String, Kept>>>);

impl Peers {
    /// Peers of `repl`.
    pub fn new(repl: Replicator) -> Self {
        Self {
            repl,
            kept: Arc::default(),
            changed: watch::channel(0).0,
        }
    }

    /// A guard that stops all dialling when dropped (hold it as long as the node runs).
    pub fn guard(&self) -> impl std::fmt::Debug + Send + Sync + 'static {
        PeersGuard(self.kept.clone())
    }

    /// Keeps `addr` (`HOST:PORT`) connected from now on; `false` if it was kept already.
    pub fn keep(&self, addr: &str) -> bool {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.contains_key(addr) {
            return false;
        }
        let me = self.clone();
        let a = addr.to_string();
        let task = tokio::spawn(async move { me.dial_forever(a).await });
        kept.insert(
            addr.to_string(),
            Kept {
                status: PeerStatus {
                    addr: addr.to_string(),
                    resolved: None,
                    connected: false,
                    since: None,
                    last_error: None,
                    connections: 0,
                    failures: 0,
                },
                task,
            },
        );
        true
    }

    /// Stops keeping `addr` (and ends its connection); `false` if it was not kept.
    pub fn forget(&self, addr: &str) -> bool {
        let gone = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
        if let Some(k) = &gone {
            k.task.abort();
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        gone.is_some()
    }

    /// Every kept peer.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|k| k.status.clone())
            .collect()
    }

    /// Changes whenever a kept peer connects, disconnects or fails an attempt.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits (at most `timeout`) until `addr` is connected, or an attempt to reach it failed:
    /// `Ok` once connected, else the reason of the failure (or of the timeout).
    pub async fn wait_connected(&self, addr: &str, timeout: Duration) -> Result<(), String> {
        let mut rx = self.subscribe();
        let Some(start) = self.state(addr) else {
            return Err(format!("{addr} is not a kept peer"));
        };
        let wait = async {
            loop {
                let Some(s) = self.state(addr) else {
                    return Err(format!("{addr} is not a kept peer"));
                };
                if s.connected || s.connections > start.connections {
                    return Ok(());
                }
                if s.failures > start.failures {
                    return Err(s.last_error.unwrap_or_else(|| "unreachable".into()));
                }
                if rx.changed().await.is_err() {
                    return Err("the node stopped".into());
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(format!("no connection to {addr} within {timeout:?}")))
    }

    fn state(&self, addr: &str) -> Option<PeerStatus> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .map(|k| k.status.clone())
    }

    fn update(&self, addr: &str, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(k) = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
        {
            f(&mut k.status);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn dial_forever(&self, addr: String) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.dial_once(&addr).await {
                Ok(()) => backoff = MIN_BACKOFF,
                Err(e) => {
                    tracing::debug!(%addr, "peer not reached: {e}");
                    self.update(&addr, |s| {
                        s.connected = false;
                        s.last_error = Some(e);
                        s.failures += 1;
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: resolve, connect, run the connection to its end. `Ok` when a connection
    /// was made (whatever ended it).
    async fn dial_once(&self, addr: &str) -> Result<(), String> {
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to no address"))?;
        self.update(addr, |s| s.resolved = Some(resolved));
        let conn = self
            .repl
            .connect(resolved)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tracing::info!(%addr, "connected to peer");
        self.update(addr, |s| {
            s.connected = true;
            s.since = Some(SystemTime::now());
            s.last_error = None;
            s.connections += 1;
        });
        let ended = match conn.await {
            Ok(Ok(())) => "connection closed".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(%addr, "peer connection ended: {ended}");
        self.update(addr, |s| {
            s.connected = false;
            s.since = Some(SystemTime::now());
            s.last_error = Some(ended);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ReplicateOptions;

    /// A replicator listening on `addr` in a runtime of its own: dropping the runtime ends
    /// every connection, as a stopped process would.
    fn server(addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bound = rt.block_on(async {
            let r = Replicator::new(ReplicateOptions::default());
            let (bound, _task) = r.listen(addr).await.unwrap();
            // The replicator lives as long as the runtime.
            std::mem::forget(r);
            bound
        });
        (rt, bound)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_peers_reconnect_after_their_server_restarts() {
        let (rt, addr) = tokio::task::spawn_blocking(|| server("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let client = Peers::new(Replicator::new(ReplicateOptions::default()));
        let _guard = client.guard();
        let a = addr.to_string();
        assert!(client.keep(&a));
        assert!(!client.keep(&a), "kept once");
        client
            .wait_connected(&a, Duration::from_secs(10))
            .await
            .unwrap();
        // The server goes away: the peer is seen disconnected, and dialled again.
        let mut rx = client.subscribe();
        tokio::task::spawn_blocking(move || drop(rt)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            while client.status()[0].connected {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the drop is seen");
        let (_rt, _) = tokio::task::spawn_blocking(move || server(addr))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !client.status()[0].connected {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("reconnected");
        assert!(client.status()[0].connections >= 2);
        tokio::task::spawn_blocking(move || drop(_rt))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn unreachable_and_unresolvable_peers_report_why() {
        let peers = Peers::new(Replicator::new(ReplicateOptions::default()));
        let _guard = peers.guard();
        // A port nothing listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        peers.keep(&addr);
        let e = peers
            .wait_connected(&addr, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        peers.keep("no-such-host.invalid:7000");
        let e = peers
            .wait_connected("no-such-host.invalid:7000", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(e.contains("resolve"), "{e}");
        assert!(peers.forget(&addr));
        assert!(!peers.forget(&addr));
        assert_eq!(peers.status().len(), 1);
    }
}
