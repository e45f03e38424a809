//! Which cores a co-drive needs: the primary's db core, every writer's db core (current and
//! removed, as the records name them), and each db core's blobs core once its header names it.
//!
//! A [`Follow`] keeps one [`CoDrive`] open and listens to the db cores it knows, so it looks
//! again only when data arrives (or the local writer appends), and what it reads then is the
//! membership records alone (a few keys per writer), never the merged view of every file. A
//! writer's records are read once its log is whole here, at each new length: the db cores
//! are fetched whole, and reading a partial log would wait on peers for the blocks it lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cohd_format::Key;

use super::session::Replicator;
use crate::codrive::index::members_of;
use crate::codrive::view::{self, WriterData};
use crate::codrive::watch::Listeners;
use crate::codrive::{CoDrive, CoDriveError};
use crate::drive::DriveError;
use crate::store::{Core, Store, StoreError};

/// What a [`Follow`] knows of one writer.
#[derive(Debug)]
struct Tracked {
    db: Core,
    /// Its blobs core was found (the db's header names it) and added.
    blobs: Option<Key>,
    /// The (fork, length) its membership records were read at.
    read: Option<(u64, u64)>,
    /// The replicator has its db core (never taken out again): known here, the key is not
    /// hashed into a discovery key to ask, each time data arrives.
    replicated: bool,
}

/// Follows one co-drive for a [`Replicator`]: adds the cores the co-drive needs as records
/// and headers arrive. What `cohd clone`, `sync` and `serve` run.
#[derive(Debug)]
pub struct Follow {
    co: CoDrive,
    repl: Replicator,
    tracked: BTreeMap<Key, Tracked>,
    /// Keys no core can have (named by some record): never looked at again.
    invalid: BTreeSet<Key>,
    /// The membership records of every writer read so far.
    members: BTreeMap<Key, WriterData>,
    arrivals: Listeners,
}

impl Follow {
    /// Follows co-drive `primary` with this store's drive `own_name` as the local writer (as
    /// [`CoDrive::open`]). Nothing is added to `repl` before [`add_known`](Self::add_known).
    pub async fn open(
        store: &Store,
        repl: &Replicator,
        primary: Key,
        own_name: &str,
    ) -> Result<Self, CoDriveError> {
        Ok(Self {
            co: CoDrive::open(store, primary, own_name).await?,
            repl: repl.clone(),
            tracked: BTreeMap::new(),
            invalid: BTreeSet::new(),
            members: BTreeMap::new(),
            arrivals: Listeners::default(),
        })
    }

    /// The writers the records read so far make current or removed, and the primary.
    fn wanted(&self) -> BTreeSet<Key> {
        let (writers, removed) = view::writers(self.co.key(), &self.members);
        let mut out: BTreeSet<Key> = writers.into_keys().chain(removed.into_keys()).collect();
        out.insert(self.co.key());
        out
    }

    /// Adds to the replicator every core of the co-drive the store can name now; returns how
    /// many were new. Call again after data arrives ([`catch_up`](Self::catch_up) and
    /// [`run`](Self::run) do): new records name new writers, new headers new blobs cores.
    pub async fn add_known(&mut self) -> Result<usize, CoDriveError> {
        let mut added = 0;
        loop {
            // The local writer is listened to (and its records read) even before it is a
            // writer, but replicated only once it is one.
            let wanted = self.wanted();
            let mut read = false;
            for k in wanted.iter().copied().chain([self.co.local_key()]) {
                let replicate = wanted.contains(&k);
                added += self.track(k, replicate).await?;
                read |= self.read_members(k).await?;
            }
            // New records may name new writers: look until a pass reads none.
            if !read {
                return Ok(added);
            }
        }
    }

    /// Listens to writer `k`'s db core and, if `replicate`, replicates it and (once its header
    /// is here) its blobs core; returns how many cores were added to the replicator.
    async fn track(&mut self, k: Key, replicate: bool) -> Result<usize, CoDriveError> {
        if self.invalid.contains(&k) {
            return Ok(0);
        }
        if !self.tracked.contains_key(&k) {
            let db = match self.co.store().open_key(k, true).await {
                Ok(c) => c,
                Err(StoreError::Core { .. }) => {
                    // Not a key any core can have (a malformed record): nothing will come.
                    tracing::debug!(writer = %k, "a record names a key no core can have");
                    self.invalid.insert(k);
                    return Ok(0);
                }
                Err(e) => return Err(DriveError::from(e).into()),
            };
            self.arrivals.listen(k, &db);
            self.tracked.insert(
                k,
                Tracked {
                    db,
                    blobs: None,
                    read: None,
                    replicated: false,
                },
            );
        }
        if !replicate {
            return Ok(0);
        }
        let Some(t) = self.tracked.get_mut(&k) else {
            return Ok(0);
        };
        let mut added = 0;
        if !t.replicated && !self.repl.has_core(&k) {
            // Metadata: the merged view reads every entry, so db cores are fetched whole.
            self.repl.add_core_full(t.db.clone());
            added += 1;
        }
        t.replicated = true;
        // The header (block 0) names the blobs core; opening the drive before it is here would
        // wait on peers. A db core replicated sparsely (added by the caller) fetches only what is
        // read, so the header is asked for here, without waiting: it arrives as data does.
        if t.blobs.is_none() && !t.db.has(0) && t.db.info().length > 0 {
            t.db.want(0..1);
        }
        if t.blobs.is_none() && t.db.has(0) {
            if let Some(d) = self.co.drive(k).await? {
                let blobs = d.blobs().core().clone();
                if !self.repl.has_core(&blobs.key()) {
                    self.repl.add_core(blobs.clone());
                    added += 1;
                }
                t.blobs = Some(blobs.key());
            }
        }
        Ok(added)
    }

    /// Reads writer `k`'s membership records if its log is whole here at a length they were
    /// not read at; returns whether it read them.
    async fn read_members(&mut self, k: Key) -> Result<bool, CoDriveError> {
        let Some(t) = self.tracked.get_mut(&k) else {
            return Ok(false);
        };
        let info = t.db.info();
        let at = (info.fork, info.length);
        if info.length == 0 || t.read == Some(at) || t.db.contiguous_held() < info.length {
            return Ok(false);
        }
        let Some(d) = self.co.drive(k).await? else {
            return Ok(false);
        };
        // Pinned: blocks arriving meanwhile do not change what is read.
        let members = members_of(&d.at(info.length)?).await?;
        t.read = Some(at);
        self.members.insert(
            k,
            WriterData {
                members,
                ..WriterData::default()
            },
        );
        Ok(true)
    }

    /// Whether a replicated writer's db core has blocks but not yet the header that names its
    /// blobs core.
    fn headers_pending(&self) -> bool {
        self.tracked.iter().any(|(k, t)| {
            t.blobs.is_none()
                && (t.replicated || self.repl.has_core(k))
                && t.db.info().length > 0
                && !t.db.has(0)
        })
    }

    /// Every core this follower replicates.
    fn cores(&self) -> Vec<Key> {
        self.tracked
            .iter()
            .filter(|(k, t)| t.replicated || self.repl.has_core(k))
            .flat_map(|(k, t)| std::iter::once(*k).chain(t.blobs))
            .collect()
    }

    /// Follows the co-drive until every core it names is caught up with the connected peers
    /// (or `timeout` passes); returns whether it caught up.
    pub async fn catch_up(&mut self, timeout: Duration) -> Result<bool, CoDriveError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let repl = self.repl.clone();
        loop {
            self.add_known().await?;
            let keys = self.cores();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if self.headers_pending() {
                // A writer's blobs core is not known until its header arrives (asked for by
                // add_known): caught up before that is not caught up.
                if tokio::time::timeout(left, self.arrivals.changed(None))
                    .await
                    .is_err()
                {
                    return Ok(false);
                }
                continue;
            }
            // Whichever comes first: every core caught up, or data that may name new ones.
            tokio::select! {
                caught = repl.wait_caught_up(&keys, left) => {
                    if !caught {
                        return Ok(false);
                    }
                    // Caught up with what we knew; stop when that names no new core.
                    if self.add_known().await? == 0 && !self.headers_pending() {
                        return Ok(true);
                    }
                }
                () = self.arrivals.changed(None) => {}
            }
        }
    }

    /// Keeps adding the co-drive's cores as data arrives, until the future is dropped; an
    /// error is logged (once while it repeats) and the follower looks again after `retry`.
    pub async fn run(mut self, retry: Duration) {
        let mut last_error = None;
        loop {
            match self.add_known().await {
                Ok(_) => {
                    last_error = None;
                    self.arrivals.changed(None).await;
                }
                Err(e) => {
                    let e = e.to_string();
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(codrive = %self.co.key(), "following the co-drive: {e}");
                    }
                    last_error = Some(e);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

/// Adds to `repl` every core of co-drive `primary` that the store can name now; returns how
/// many were new (a one-off [`Follow::add_known`]).
pub async fn add_known_cores(
    store: &Store,
    repl: &Replicator,
    primary: Key,
    own_name: &str,
) -> Result<usize, CoDriveError> {
    Follow::open(store, repl, primary, own_name)
        .await?
        .add_known()
        .await
}

/// Follows co-drive `primary` until every core it names is caught up with the connected peers
/// (or `timeout` passes); returns whether it caught up (a one-off [`Follow::catch_up`]).
pub async fn catch_up(
    store: &Store,
    repl: &Replicator,
    primary: Key,
    own_name: &str,
    timeout: Duration,
) -> Result<bool, CoDriveError> {
    Follow::open(store, repl, primary, own_name)
        .await?
        .catch_up(timeout)
        .await
}

/// Keeps adding the co-drive's cores as records and headers arrive, until the returned task is
/// aborted: what `cohd serve` and long-lived peers run ([`Follow::run`]; errors are logged and
/// retried after `retry`).
pub fn spawn_follow(
    store: Store,
    repl: Replicator,
    primary: Key,
    own_name: String,
    retry: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let f = loop {
            match Follow::open(&store, &repl, primary, &own_name).await {
                Ok(f) => break f,
                Err(e) => {
                    tracing::warn!(codrive = %primary, "cannot open the co-drive to follow: {e}");
                    tokio::time::sleep(retry).await;
                }
            }
        };
        f.run(retry).await;
    })
}
