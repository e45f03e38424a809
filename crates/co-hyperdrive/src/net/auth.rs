//! Authorization requests: a non-writer asks connected peers to make its key a writer, with the
//! [`cohd_format::auth::EXTENSION`] message on the primary's db core channel.
//!
//! A writer answers with the application's [`AuthPolicy`]: allowed, it writes the authorize
//! record and replies `Allow`; otherwise `Deny`. A peer that is not a writer replies
//! `CannotDecide`. Requests are rate-limited per connection. The requester's call returns only
//! once the authorizing record has reached it (its own view lists it as a writer).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohd_format::auth::{AuthKind, AuthMessage, EXTENSION};
use cohd_format::Key;
use tokio::sync::broadcast::error::RecvError;

use super::session::Replicator;
use crate::codrive::CoDrive;

/// Decides whether `writer` (asked for by the peer with public key `remote`) may write.
pub type AuthPolicy =
    Arc<dyn Fn(Key, [u8; 32]) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// A policy that allows everyone.
pub fn allow_all() -> AuthPolicy {
    Arc::new(|_, _| Box::pin(async { true }))
}

/// A policy that allows exactly these keys.
pub fn allow_keys(keys: Vec<Key>) -> AuthPolicy {
    Arc::new(move |k, _| {
        let ok = keys.contains(&k);
        Box::pin(async move { ok })
    })
}

/// Why a request for authorization did not make us a writer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No connected peer has the co-drive open.
    #[error("no connected peer has this co-drive open")]
    NoPeers,
    /// Every connected peer answered that it is not a writer.
    #[error("no connected peer is a writer that could decide")]
    NobodyCanDecide,
    /// A writer refused.
    #[error("a writer denied the request")]
    Denied,
    /// No decision in time.
    #[error("no writer answered within {0:?}")]
    Timeout(Duration),
}

/// Requests per connection per [`RATE_WINDOW`].
const RATE_LIMIT: u32 = 5;
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Answers authorization requests for `co` until the replicator is dropped. Run it in a task.
pub async fn answer_requests(repl: Replicator, co: &CoDrive, policy: AuthPolicy) {
    let mut rx = repl.extensions();
    let mut budget: HashMap<u64, (Instant, u32)> = HashMap::new();
    loop {
        let m = match rx.recv().await {
            Ok(m) => m,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if m.name != EXTENSION || m.core != co.key() {
            continue;
        }
        let Ok(msg) = AuthMessage::decode(&m.message) else {
            tracing::info!(
                connection = m.connection,
                "ignoring a malformed authorization message"
            );
            continue;
        };
        if msg.kind != AuthKind::Request {
            continue;
        }
        let now = Instant::now();
        let b = budget.entry(m.connection).or_insert((now, 0));
        if now.duration_since(b.0) > RATE_WINDOW {
            *b = (now, 0);
        }
        b.1 += 1;
        if b.1 > RATE_LIMIT {
            tracing::info!(
                connection = m.connection,
                "authorization requests over the rate limit: ignored"
            );
            continue;
        }
        let reply = |kind| {
            AuthMessage {
                kind,
                id: msg.id,
                key: msg.key,
            }
            .encode()
        };
        let is_writer = co.snapshot().await.map(|s| s.is_writer()).unwrap_or(false);
        let kind = if !is_writer {
            AuthKind::CannotDecide
        } else if policy(msg.key, m.remote).await {
            match co.authorize(msg.key).await {
                Ok(()) => AuthKind::Allow,
                Err(e) => {
                    tracing::info!("authorizing {} failed: {e}", msg.key);
                    AuthKind::Deny
                }
            }
        } else {
            AuthKind::Deny
        };
        tracing::info!(
            connection = m.connection,
            "authorization request for {}: {kind:?}",
            msg.key
        );
        repl.send_extension(Some(m.connection), co.key(), EXTENSION, reply(kind));
    }
}

/// Asks connected peers to make `co`'s local writer a writer; returns once the authorizing
/// record has arrived (the local view lists us), or why not.
pub async fn request_authorization(
    repl: &Replicator,
    co: &CoDrive,
    timeout: Duration,
) -> Result<(), AuthError> {
    let me = co.local_key();
    if co.snapshot().await.map(|s| s.is_writer()).unwrap_or(false) {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = repl.extensions();
    let id: u64 = rand::random();
    let asked = repl.channels_for(&co.key());
    if asked == 0 {
        return Err(AuthError::NoPeers);
    }
    repl.send_extension(
        None,
        co.key(),
        EXTENSION,
        AuthMessage {
            kind: AuthKind::Request,
            id,
            key: me,
        }
        .encode(),
    );
    let mut cannot = std::collections::HashSet::new();
    let answer = async {
        loop {
            let m = match rx.recv().await {
                Ok(m) => m,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Err(AuthError::NoPeers),
            };
            if m.name != EXTENSION || m.core != co.key() {
                continue;
            }
            let Ok(msg) = AuthMessage::decode(&m.message) else {
                continue;
            };
            if msg.id != id || msg.key != me {
                continue;
            }
            match msg.kind {
                AuthKind::Allow => return Ok(()),
                AuthKind::Deny => return Err(AuthError::Denied),
                AuthKind::CannotDecide => {
                    cannot.insert(m.connection);
                    if cannot.len() >= asked {
                        return Err(AuthError::NobodyCanDecide);
                    }
                }
                AuthKind::Request => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Err(_) => return Err(AuthError::Timeout(timeout)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    // Allowed: wait for the record itself to arrive through replication.
    let wait = async {
        loop {
            if co.snapshot().await.map(|s| s.is_writer()).unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout_at(deadline, wait)
        .await
        .map_err(|_| AuthError::Timeout(timeout))
}
