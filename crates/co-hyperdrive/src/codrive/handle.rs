//! [`CoDrive`]: the merged view over the writers' drives a store holds, and writes that carry
//! the co-drive's records. Each writer writes only to its own drive.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cohd_format::{path, sub, Key};

use super::records::{self, RecordError, SUB};
use super::view::{self, Clock, MemberOp, MemberRecord, PathVersion, View, WriterData};
use crate::bee::Range;
use crate::drive::{Drive, DriveError};
use crate::store::Store;

/// Errors of co-drive operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoDriveError {
    /// The local writer is not in the writer set.
    #[error("not a writer of this co-drive: ask a writer to run `cohd authorize {0}`")]
    NotAWriter(Key),
    /// The key is not an Ed25519 public key, so no core can have it.
    #[error("{0} is not a valid writer key (not an Ed25519 public key)")]
    BadKey(Key),
    /// The primary cannot be removed.
    #[error("the primary writer cannot be deauthorized")]
    Primary,
    /// A drive operation failed.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// A record could not be encoded or decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A multi-writer drive: the primary's key names it; `own` is the local writer's drive.
#[derive(Debug)]
pub struct CoDrive {
    store: Store,
    primary: Key,
    own: Drive,
    drives: Mutex<BTreeMap<Key, Drive>>,
}

fn cohd_key(k: &str) -> Vec<u8> {
    sub::encode(SUB, k.as_bytes())
}

impl CoDrive {
    /// Creates (or reopens) a co-drive whose primary is this store's drive `own_name`.
    pub async fn create(store: &Store, own_name: &str) -> Result<Self, CoDriveError> {
        let own = Drive::open_own(store, own_name).await?;
        Ok(Self::with(store, own.key(), own))
    }

    /// Follows the co-drive `primary`, with this store's drive `own_name` as the local writer
    /// (a writer once somebody authorizes its key).
    pub async fn open(store: &Store, primary: Key, own_name: &str) -> Result<Self, CoDriveError> {
        let own = Drive::open_own(store, own_name).await?;
        Ok(Self::with(store, primary, own))
    }

    fn with(store: &Store, primary: Key, own: Drive) -> Self {
        Self {
            store: store.clone(),
            primary,
            own,
            drives: Mutex::default(),
        }
    }

    /// The co-drive's key (the primary writer's drive key).
    pub fn key(&self) -> Key {
        self.primary
    }

    /// The local writer's key: what another writer authorizes.
    pub fn local_key(&self) -> Key {
        self.own.key()
    }

    /// The local writer's drive.
    pub fn own(&self) -> &Drive {
        &self.own
    }

    /// A writer's drive, if the store holds it.
    async fn drive(&self, key: Key) -> Option<Drive> {
        if key == self.own.key() {
            return Some(self.own.clone());
        }
        if let Some(d) = self
            .drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Some(d.clone());
        }
        let d = Drive::open_key(&self.store, key).await.ok()?;
        self.drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, d.clone());
        Some(d)
    }

    /// Reads one writer's records and files (at `limit`, when given).
    async fn load(&self, drive: &Drive, limit: Option<u64>) -> Result<WriterData, CoDriveError> {
        let d = match limit {
            Some(l) if l < drive.version() => drive.checkout(l)?,
            _ => drive.clone(),
        };
        let writer = drive.key();
        let mut data = WriterData::default();
        let members = Range::exclusive(cohd_key("m/"), cohd_key("m0"));
        for e in d.db().range(&members).await.map_err(DriveError::from)? {
            // A malformed record is ignored (not trusted, not fatal): other peers do the same.
            if let Ok((op, frontier)) = records::decode_member(&e.value) {
                data.members.push(MemberRecord {
                    seq: e.seq,
                    op,
                    frontier,
                });
            }
        }
        data.members.sort_by_key(|m| m.seq);
        let mut clocks: BTreeMap<String, (u64, Clock, bool)> = BTreeMap::new();
        let versions = Range::exclusive(cohd_key("v/"), cohd_key("v0"));
        for e in d.db().range(&versions).await.map_err(DriveError::from)? {
            let Some(p) = sub::decode(SUB, &e.key).and_then(|k| std::str::from_utf8(&k[1..]).ok())
            else {
                continue;
            };
            if let Ok((clock, deleted)) = records::decode_version(&e.value) {
                clocks.insert(p.to_string(), (e.seq, clock, deleted));
            }
        }
        let files: BTreeMap<String, _> = d
            .list("/")
            .await?
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        for (p, (seq, clock, deleted)) in &clocks {
            let file = files.get(p);
            if file.is_some_and(|f| f.seq > *seq) {
                continue; // rewritten by a plain drive write after the record: handled below
            }
            let entry = match (deleted, file) {
                (true, _) => None,
                (false, Some(f)) => Some(f.entry.clone()),
                (false, None) => continue, // a record without its file: malformed, ignored
            };
            data.versions
                .entry(p.clone())
                .or_default()
                .push(PathVersion {
                    writer,
                    seq: *seq,
                    clock: clock.clone(),
                    entry,
                });
        }
        // Files written without a record (plain Hyperdrive writes, or JavaScript peers): a version
        // that has seen nothing but its own writer's log.
        for (p, f) in files {
            if clocks.get(&p).is_none_or(|(seq, _, _)| f.seq > *seq) {
                let clock: Clock = [(writer, f.seq)].into_iter().collect();
                data.versions.insert(
                    p,
                    vec![PathVersion {
                        writer,
                        seq: f.seq,
                        clock,
                        entry: Some(f.entry),
                    }],
                );
            }
        }
        Ok(data)
    }

    /// Loads every writer the store holds that the records mention, and computes the view.
    pub async fn view(&self) -> Result<View, CoDriveError> {
        let mut data: BTreeMap<Key, WriterData> = BTreeMap::new();
        let mut todo = vec![self.primary, self.own.key()];
        while let Some(k) = todo.pop() {
            if data.contains_key(&k) {
                continue;
            }
            let Some(d) = self.drive(k).await else {
                continue;
            };
            let wd = self.load(&d, None).await?;
            data.insert(k, wd);
            todo.extend(
                view::mentioned(&data)
                    .into_iter()
                    .filter(|m| !data.contains_key(m)),
            );
        }
        let v = view::view(self.primary, &data);
        // Removed writers count only up to their limit: reload those from a checkout there.
        let mut changed = false;
        for (k, limit) in &v.removed {
            if let Some(d) = self.drive(*k).await {
                if *limit < d.version() {
                    let limited = self.load(&d, Some(*limit)).await?;
                    if let Some(w) = data.get_mut(k) {
                        w.versions = limited.versions;
                        changed = true;
                    }
                }
            }
        }
        Ok(if changed {
            view::view(self.primary, &data)
        } else {
            v
        })
    }

    async fn writable_view(&self) -> Result<View, CoDriveError> {
        let v = self.view().await?;
        if !v.writers.contains_key(&self.own.key()) {
            return Err(CoDriveError::NotAWriter(self.own.key()));
        }
        Ok(v)
    }

    fn seen(v: &View, p: &str) -> Vec<PathVersion> {
        v.paths
            .get(p)
            .map(|r| {
                if r.conflicts.is_empty() {
                    vec![r.winner.clone()]
                } else {
                    r.conflicts.clone()
                }
            })
            .unwrap_or_default()
    }

    /// Writes a file (its version supersedes every version of the path we can see).
    pub async fn put(&self, name: &str, data: &[u8]) -> Result<(), CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let v = self.writable_view().await?;
        let mut b = self.own.batch().await?;
        b.put(&p, data).await?;
        let clock = view::next_clock(self.own.key(), b.version(), Self::seen(&v, &p).iter());
        b.put_raw(
            &cohd_key(&records::version_key(&p)),
            &records::encode_version(&clock, false),
        )
        .await?;
        b.flush().await?;
        Ok(())
    }

    /// Deletes a path (hiding every version we can see); `false` if nothing was visible.
    pub async fn del(&self, name: &str) -> Result<bool, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let v = self.writable_view().await?;
        self.tombstones(&v, std::slice::from_ref(&p)).await
    }

    /// Deletes everything visible under `folder`.
    pub async fn del_folder(&self, folder: &str) -> Result<usize, CoDriveError> {
        let v = self.writable_view().await?;
        let f = path::folder(folder);
        let paths: Vec<String> = v
            .files()
            .map(|(p, _)| p.clone())
            .filter(|p| path::is_under(p, &f))
            .collect();
        self.tombstones(&v, &paths).await?;
        Ok(paths.len())
    }

    async fn tombstones(&self, v: &View, paths: &[String]) -> Result<bool, CoDriveError> {
        let visible: Vec<&String> = paths
            .iter()
            .filter(|p| v.paths.get(*p).is_some_and(|r| r.winner.entry.is_some()))
            .collect();
        if visible.is_empty() {
            return Ok(false);
        }
        let mut b = self.own.batch().await?;
        for p in visible {
            b.del(p).await?;
            let clock = view::next_clock(self.own.key(), b.version(), Self::seen(v, p).iter());
            b.put_raw(
                &cohd_key(&records::version_key(p)),
                &records::encode_version(&clock, true),
            )
            .await?;
        }
        b.flush().await?;
        Ok(true)
    }

    async fn member(&self, op: MemberOp) -> Result<(), CoDriveError> {
        let (MemberOp::Authorize(target) | MemberOp::Deauthorize(target)) = op;
        if ed25519_dalek::VerifyingKey::from_bytes(&target.0).is_err() {
            return Err(CoDriveError::BadKey(target));
        }
        let v = self.writable_view().await?;
        if matches!(op, MemberOp::Deauthorize(k) if k == self.primary) {
            return Err(CoDriveError::Primary);
        }
        let mut frontier = Clock::new();
        for k in v.writers.keys().chain(v.removed.keys()) {
            if let Some(d) = self.drive(*k).await {
                frontier.insert(*k, d.db().core().info().contiguous_length);
            }
        }
        let members = Range::exclusive(cohd_key("m/"), cohd_key("m0"));
        let n = self
            .own
            .db()
            .range(&members)
            .await
            .map_err(DriveError::from)?
            .len() as u64;
        let mut b = self.own.batch().await?;
        frontier.insert(self.own.key(), b.version());
        b.put_raw(
            &cohd_key(&records::member_key(n)),
            &records::encode_member(op, &frontier),
        )
        .await?;
        b.flush().await?;
        Ok(())
    }

    /// Makes `key` a writer.
    pub async fn authorize(&self, key: Key) -> Result<(), CoDriveError> {
        self.member(MemberOp::Authorize(key)).await
    }

    /// Removes writer `key`; its writes we have seen stay, later ones are ignored everywhere.
    pub async fn deauthorize(&self, key: Key) -> Result<(), CoDriveError> {
        self.member(MemberOp::Deauthorize(key)).await
    }

    /// The merged content of `name` (the winning version), `None` if absent or deleted.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let v = self.view().await?;
        let Some(r) = v.paths.get(&p) else {
            return Ok(None);
        };
        let Some(entry) = &r.winner.entry else {
            return Ok(None);
        };
        let Some(blob) = entry.blob else {
            return Ok(None);
        };
        let Some(d) = self.drive(r.winner.writer).await else {
            return Ok(None);
        };
        Ok(Some(d.blobs().get(&blob).await.map_err(DriveError::from)?))
    }
}
