//! How much of what we send has not reached the socket yet, so that the session can stop
//! answering a peer that does not read.
//!
//! Nothing below the session pushes back: `hypercore_protocol`'s write queue and
//! `hypercore_handshake::Cipher`'s queues take every message whether or not the socket takes
//! bytes (docs/replication-notes.md). So the session counts the Data bytes it hands to the
//! protocol, the connection (`conn.rs`) subtracts them when the protocol passes them on, and the
//! framing reports how many bytes wait for the socket. The session answers requests only while
//! both are under their limits. The socket then bounds everything: at most one limit's worth sits
//! in the protocol, one in the cipher, and one in the framing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Data bytes queued in the protocol above which the session waits.
pub(crate) const PROTOCOL_LIMIT: usize = 4 << 20;

/// Framed bytes waiting for the socket above which the session waits (and above which the
/// framing itself stops taking frames).
pub(crate) const SOCKET_LIMIT: usize = 4 << 20;

/// Shared by the session, the connection and the framing of one connection.
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Bytes of Data messages given to the protocol and not yet seen by the connection.
    protocol: AtomicUsize,
    /// Bytes the framing holds for the socket.
    socket: AtomicUsize,
    changed: Notify,
}

impl Backlog {
    /// Bytes of Data messages handed to the protocol and not yet passed to the cipher.
    pub fn protocol_bytes(&self) -> usize {
        self.0.protocol.load(Ordering::Relaxed)
    }

    /// Bytes waiting in the framing for the socket.
    pub fn socket_bytes(&self) -> usize {
        self.0.socket.load(Ordering::Relaxed)
    }

    /// Whether the session should wait before sending more Data.
    pub fn congested(&self) -> bool {
        self.protocol_bytes() > PROTOCOL_LIMIT || self.socket_bytes() > SOCKET_LIMIT
    }

    /// Waits until [`congested`](Self::congested) is false. It waits for ever on a peer that
    /// never reads; the framing ends such a connection after its idle timeout.
    pub async fn ready(&self) {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.congested() {
                return;
            }
            changed.await;
        }
    }

    /// The session hands a Data message of `n` encoded bytes to the protocol.
    pub(crate) fn data_queued(&self, n: usize) {
        self.0.protocol.fetch_add(n, Ordering::Relaxed);
    }

    /// The protocol passed Data messages of `n` encoded bytes to the connection.
    pub(crate) fn data_passed(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .0
            .protocol
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if before > PROTOCOL_LIMIT {
            self.0.changed.notify_waiters();
        }
    }

    /// The framing now holds `n` bytes for the socket.
    pub(crate) fn socket_buffered(&self, n: usize) {
        let before = self.0.socket.swap(n, Ordering::Relaxed);
        if before > SOCKET_LIMIT && n <= SOCKET_LIMIT {
            self.0.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn ready_waits_for_both_limits() {
        let b = Backlog::default();
        b.ready().await;
        b.data_queued(PROTOCOL_LIMIT + 1);
        assert!(b.congested());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.socket_buffered(SOCKET_LIMIT + 1);
        b.data_passed(PROTOCOL_LIMIT + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the socket is still over its limit");
        b.socket_buffered(10);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Passing more than was queued (cannot happen; never underflows).
        b.data_passed(5);
        assert_eq!(b.protocol_bytes(), 0);
    }
}
