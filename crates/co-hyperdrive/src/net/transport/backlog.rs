//! How much of what we queued for a peer has not reached its socket yet, so that the session
//! can stop answering a peer that does not read. Senders never wait (a message is queued at
//! once, in order); the session waits for [`Backlog::ready`] before it builds another answer,
//! so at most one limit's worth, plus small control messages, waits per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Queued bytes above which the session waits before answering more requests.
pub const BACKLOG_LIMIT: usize = 4 << 20;

/// Shared by the senders and the writer of one connection.
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    bytes: AtomicUsize,
    changed: Notify,
}

impl Backlog {
    /// Bytes queued and not yet written to the socket.
    pub fn bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Whether the session should wait before sending more Data.
    pub fn congested(&self) -> bool {
        self.bytes() > BACKLOG_LIMIT
    }

    /// Waits until [`congested`](Self::congested) is false. It waits for ever on a peer that
    /// never reads; the writer ends such a connection after its idle timeout.
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

    /// `n` bytes were queued.
    pub(crate) fn queued(&self, n: usize) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` queued bytes were written (or dropped with the connection).
    pub fn written(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .0
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if before > BACKLOG_LIMIT && before.saturating_sub(n) <= BACKLOG_LIMIT {
            self.0.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn ready_waits_for_the_limit() {
        let b = Backlog::default();
        b.ready().await;
        b.queued(BACKLOG_LIMIT + 10);
        assert!(b.congested());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.written(5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still over the limit");
        b.written(5);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Writing more than was queued cannot happen; it never underflows.
        b.written(BACKLOG_LIMIT + 5);
        assert_eq!(b.bytes(), 0);
    }
}
