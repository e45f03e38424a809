//! [`Watch`]: the co-drive's new versions as writers' logs grow.
//!
//! It listens to the length of the db core of every writer the view names (current and removed,
//! and any other writer the records mention that the store holds), local appends and data from
//! peers alike. After each change it brings the index on disk forward (from the blocks appended
//! since, see [`stored`](super::stored): O(new blocks), not a merge of every file) and reads the
//! version and the writer set from it; it starts listening to writers the index now names, so a
//! writer authorized after the watch began is followed too. A writer the
//! view names whose core the store does not hold yet has nothing to listen to: while there is
//! one, the watch also looks again every [`POLL`].

use std::collections::BTreeMap;
use std::time::Duration;

use cohd_format::Key;
use futures::Stream;
use tokio::sync::watch;

use super::frontier::Frontier;
use super::open::{CoDrive, CoDriveError};
use super::stored::IndexState;
use crate::drive::DriveError;
use crate::store::{Core, StoreError};

/// How often a watch looks again while the view names a writer the store does not hold.
pub const POLL: Duration = Duration::from_millis(250);

/// New versions of a co-drive, from [`CoDrive::watch`]. Changes between two calls of
/// [`Watch::next`] are reported once, as the latest version.
#[derive(Debug)]
pub struct Watch<'a> {
    co: &'a CoDrive,
    subs: Listeners,
    /// Whether some writer the view names has no core to listen to.
    poll: bool,
    last: Frontier,
}

/// The lengths of a set of cores, listened to: [`Listeners::changed`] waits until any changes
/// (a local append or an applied proof). Shared by [`Watch`] and replication's follower.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    subs: BTreeMap<Key, watch::Receiver<u64>>,
}

impl Listeners {
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.subs.contains_key(key)
    }

    /// Listens to `core` (under `key`) from now on.
    pub(crate) fn listen(&mut self, key: Key, core: &Core) {
        self.subs.insert(key, core.subscribe());
    }

    /// Waits until a listened core changes, or `poll` passes (with no core to listen to,
    /// [`POLL`]). A core gone from the store is forgotten: the caller listens again to whatever
    /// holds that key now.
    pub(crate) async fn changed(&mut self, poll: Option<Duration>) {
        if self.subs.is_empty() {
            tokio::time::sleep(poll.unwrap_or(POLL)).await;
            return;
        }
        let keys: Vec<Key> = self.subs.keys().copied().collect();
        let any = futures::future::select_all(
            self.subs
                .values_mut()
                .map(|rx| Box::pin(rx.changed()))
                .collect::<Vec<_>>(),
        );
        let closed = match poll {
            Some(p) => match tokio::time::timeout(p, any).await {
                Ok((r, i, _)) => r.is_err().then_some(i),
                Err(_) => None,
            },
            None => {
                let (r, i, _) = any.await;
                r.is_err().then_some(i)
            }
        };
        if let Some(i) = closed {
            self.subs.remove(&keys[i]);
            tokio::time::sleep(POLL).await;
        }
    }
}

impl CoDrive {
    /// Watches the co-drive's version: [`Watch::next`] returns each new one. Its starting point
    /// is the version now ([`Watch::current`]).
    pub async fn watch(&self) -> Result<Watch<'_>, CoDriveError> {
        let mut w = Watch {
            co: self,
            subs: Listeners::default(),
            poll: false,
            last: Frontier::default(),
        };
        // Listen first, then read the version: a change in between is then seen by `next`.
        w.follow([self.key(), self.local_key()]).await?;
        let c = self.refresh_index(None).await?;
        w.learn(&c).await?;
        w.last = c.frontier;
        Ok(w)
    }
}

impl<'a> Watch<'a> {
    /// The last version reported (or, before the first, the one the watch started from).
    pub fn current(&self) -> &Frontier {
        &self.last
    }

    /// Waits until the version differs from the last one reported and returns it.
    pub async fn next(&mut self) -> Result<Frontier, CoDriveError> {
        loop {
            let c = self.co.refresh_index(None).await?;
            let added = self.learn(&c).await?;
            if c.frontier != self.last {
                self.last = c.frontier.clone();
                return Ok(c.frontier);
            }
            if added {
                // New writers' cores were not listened to while refreshing: look once more.
                continue;
            }
            self.wait().await;
        }
    }

    /// The new versions as a stream (it never ends; an error is one item, and the watch goes on).
    pub fn into_stream(self) -> impl Stream<Item = Result<Frontier, CoDriveError>> + 'a {
        futures::stream::unfold(self, |mut w| async move {
            let r = w.next().await;
            Some((r, w))
        })
    }

    /// Listens to every writer `c` names that is not listened to yet; returns whether any was
    /// added.
    async fn learn(&mut self, c: &IndexState) -> Result<bool, CoDriveError> {
        let keys: Vec<Key> = c
            .frontier
            .iter()
            .map(|(k, _)| *k)
            .chain(c.writers.keys().copied())
            .chain(c.removed.keys().copied())
            .collect();
        let (added, unheld) = self.follow(keys).await?;
        self.poll = unheld;
        Ok(added)
    }

    /// Listens to the cores of `keys` not listened to yet; returns whether any was added, and
    /// whether the store lacks some of them.
    async fn follow(
        &mut self,
        keys: impl IntoIterator<Item = Key>,
    ) -> Result<(bool, bool), CoDriveError> {
        let (mut added, mut unheld) = (false, false);
        for k in keys {
            if self.subs.contains(&k) {
                continue;
            }
            let core = match self.co.drive(k).await? {
                Some(d) => d.db().core().clone(),
                // Held but holding no drive yet: its core still grows when the drive arrives.
                None => match self.co.store().open_key(k, false).await {
                    Ok(core) => core,
                    Err(StoreError::UnknownCore(_)) => {
                        unheld = true;
                        continue;
                    }
                    // Not a key any core can have: nothing will ever arrive.
                    Err(StoreError::Core { .. }) => continue,
                    Err(e) => return Err(DriveError::from(e).into()),
                },
            };
            self.subs.listen(k, &core);
            added = true;
        }
        Ok((added, unheld))
    }

    /// Waits for any listened core to change (or for [`POLL`], when polling).
    async fn wait(&mut self) {
        self.subs.changed(self.poll.then_some(POLL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn merged(co: &CoDrive) -> bool {
        co.cache.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// A watch reads versions from the index, which it brings forward from the new blocks: it
    /// never merges every writer's files in memory (the full merge caches its view, so a watch
    /// that computed one leaves it behind), and what it reports is the full merge's version.
    #[tokio::test]
    async fn a_watch_reports_versions_from_the_index_without_a_full_merge() {
        let store = Store::memory();
        let a = CoDrive::create(&store, "a").await.unwrap();
        let b = CoDrive::open(&store, a.key(), "b").await.unwrap();
        a.authorize(b.local_key()).await.unwrap();
        a.put("/start", b"s").await.unwrap();
        // Whatever the writes above computed is forgotten.
        *a.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;

        let mut w = a.watch().await.unwrap();
        let before = b.own().version();
        let (f, ()) = tokio::join!(
            async {
                loop {
                    let f = tokio::time::timeout(Duration::from_secs(10), w.next())
                        .await
                        .expect("the watch reported nothing")
                        .unwrap();
                    if f.get(&b.local_key()) > before {
                        return f;
                    }
                }
            },
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.put("/b", b"b").await.unwrap();
            }
        );
        assert!(!merged(&a), "the watch computed the full merge");
        assert_eq!(f.get(&b.local_key()), b.own().version());
        assert_eq!(f, a.version().await.unwrap());
        assert!(merged(&a));
    }
}
