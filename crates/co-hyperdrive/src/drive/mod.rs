//! One writer's Hyperdrive: file entries in the `files` sub of a bee (the db core) and file
//! contents in a blobs core, in the real Hyperdrive formats.
//!
//! Drives are compat drives: the db core key is an Ed25519 public key, and the header's
//! `contentFeed` names the blobs core, which is how JavaScript Hyperdrive finds it. Our blobs core
//! is Corestore's compat name for it, `<db id>/blobs`, derived from the same primary secret.
//!
//! Durability: every write reaches the operating system before it returns, so it survives the
//! death of the process (`kill -9`). [`Drive::sync`] (called by batches' flush and by the CLI
//! before it exits) fsyncs, making it survive power loss too; single puts do not fsync, which is
//! what lets many small writes be fast.

mod batch;

use std::sync::Arc;

use cohd_format::bee::BeeHeader;
use cohd_format::{path, sub, BlobId, Entry, Key};
use tokio::sync::{watch, Mutex};

use crate::bee::{Bee, BeeError, Range};
use crate::blobs::{BlobError, BlobWriter, Blobs};
use crate::store::{CoreFormat, Store, StoreError};

pub use batch::DriveBatch;
pub(crate) use batch::STAGE_MAX;

/// Errors of drive operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The path is not a valid file name.
    #[error(transparent)]
    Path(#[from] path::PathError),
    /// No such file.
    #[error("no such file: {0}")]
    NotFound(String),
    /// The drive is read-only here (not ours, or a checkout).
    #[error(
        "the drive is read-only (it is not one of this store's writable drives, or a checkout)"
    )]
    ReadOnly,
    /// The path names a symlink where a file was needed, or a link loop.
    #[error("{0}")]
    Symlink(String),
    /// The core is not a Hyperdrive.
    #[error("not a Hyperdrive: {0}")]
    NotADrive(String),
    /// An entry in the db is not a valid Hyperdrive entry.
    #[error("corrupted entry for {path}: {reason}")]
    BadEntry {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The bee layer failed.
    #[error(transparent)]
    Bee(#[from] BeeError),
    /// The blobs layer failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a download fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// Files (with content) whose blocks are now all local.
    pub files: usize,
    /// Blocks that were fetched from peers (the rest were already here).
    pub blocks: u64,
}

/// A file entry with where it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveEntry {
    /// Normalized path.
    pub path: String,
    /// Seq of the db block that wrote it.
    pub seq: u64,
    /// The Hyperdrive entry.
    pub entry: Entry,
}

/// Options for a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Set the executable bit.
    pub executable: bool,
    /// User JSON metadata.
    pub metadata: Option<serde_json::Value>,
}

/// One change between two versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The path.
    pub path: String,
    /// Entry before (`None`: added).
    pub before: Option<DriveEntry>,
    /// Entry after (`None`: deleted).
    pub after: Option<DriveEntry>,
}

/// A Hyperdrive.
#[derive(Debug, Clone)]
pub struct Drive {
    key: Key,
    db: Bee,
    blobs: Blobs,
    store: Store,
    lock: Arc<Mutex<()>>,
    version_tx: Arc<watch::Sender<u64>>,
}

fn files_key(p: &str) -> Vec<u8> {
    sub::encode(sub::FILES, p.as_bytes())
}

/// Name of our blobs core for the db core `db`: Corestore's compat naming.
fn blobs_name(db: &Key) -> String {
    format!("{}/blobs", db.to_z32())
}

impl Drive {
    /// Opens (creating if new) this store's writable drive `name` (the CLI's is `db`); a new
    /// one is made as JavaScript Hyperdrive 13 makes it by default (manifest cores).
    pub async fn open_own(store: &Store, name: &str) -> Result<Self, DriveError> {
        Self::open_own_as(store, name, CoreFormat::default()).await
    }

    /// [`open_own`](Self::open_own), making a new drive in `format` (an existing drive keeps
    /// the format it was made in). Manifest drives are Hyperdrive 13's: the blobs core's
    /// manifest derives from the db core's, both are signed by the db core's key pair, and the
    /// header names no blobs core. Compat drives name their blobs core in the header.
    pub async fn open_own_as(
        store: &Store,
        name: &str,
        format: CoreFormat,
    ) -> Result<Self, DriveError> {
        let db_core = store.open_own(name, format).await?;
        let key = db_core.key();
        let derived = db_core
            .manifest()
            .and_then(|m| cohd_format::manifest::content_manifest(&m, &key.0));
        let (blobs_core, content_feed) = match derived {
            Some(m) => (
                store.open_own_derived(&blobs_name(&key), name, m).await?,
                None,
            ),
            None => {
                let c = store.open_named(&blobs_name(&key)).await?;
                let k = c.key().0;
                (c, Some(k))
            }
        };
        let db = Bee::new(db_core, BeeHeader::for_drive(content_feed));
        let drive = Self::assemble(store, key, db, Blobs::new(blobs_core));
        if let Some(h) = drive.db.read_header().await? {
            let cf = h.metadata.and_then(|m| m.content_feed);
            if cf.as_deref() != content_feed.as_ref().map(|k| &k[..]) {
                return Err(DriveError::NotADrive(
                    "header does not name this drive's blobs core".into(),
                ));
            }
        }
        Ok(drive)
    }

    /// Opens a drive the store already holds, by db key (read-only unless it is ours).
    pub async fn open_key(store: &Store, key: Key) -> Result<Self, DriveError> {
        let db_core = store.open_key(key, false).await?;
        let db = Bee::new(db_core, BeeHeader::for_drive(None));
        let header = db
            .read_header()
            .await?
            .ok_or_else(|| DriveError::NotADrive("the db core is empty".into()))?;
        let blobs_core = match header.metadata.and_then(|m| m.content_feed) {
            Some(cf) => {
                let blobs_key: [u8; 32] =
                    cf.get(..32)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| {
                            DriveError::NotADrive("contentFeed is shorter than a key".into())
                        })?;
                store.open_key(Key(blobs_key), true).await?
            }
            // Hyperdrive 13 drives of manifest cores name no blobs core: its manifest (and so
            // its key) derives from the db core's (JS `generateContentManifest`).
            None => {
                let db_manifest = db.core().manifest().ok_or_else(|| {
                    DriveError::NotADrive(
                        "header names no blobs core (contentFeed), and the db core's manifest \
                         is not known to derive it"
                            .into(),
                    )
                })?;
                let m = cohd_format::manifest::content_manifest(&db_manifest, &key.0).ok_or_else(
                    || {
                        DriveError::NotADrive(
                            "header names no blobs core (contentFeed), and the db core's \
                             manifest derives none"
                                .into(),
                        )
                    },
                )?;
                store.open_key_with_manifest(Key(m.hash()), m, true).await?
            }
        };
        Ok(Self::assemble(store, key, db, Blobs::new(blobs_core)))
    }

    fn assemble(store: &Store, key: Key, db: Bee, blobs: Blobs) -> Self {
        // Whoever replicates the db core adds the blobs core once it can name it: a read of
        // content waits a moment for that instead of failing at once.
        blobs.core().follows(db.core());
        let (tx, _) = watch::channel(db.version());
        Self {
            key,
            db,
            blobs,
            store: store.clone(),
            lock: Arc::new(Mutex::new(())),
            version_tx: Arc::new(tx),
        }
    }

    /// The db core key: the drive's key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The blobs core key.
    pub fn blobs_key(&self) -> Key {
        self.blobs.core().key()
    }

    /// The db bee.
    pub fn db(&self) -> &Bee {
        &self.db
    }

    /// The blobs.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The version (db core length, or the checked-out version).
    pub fn version(&self) -> u64 {
        self.db.version()
    }

    /// Whether this handle can write.
    pub fn writable(&self) -> bool {
        self.db.writable()
    }

    /// A read-only view at `version`: a length a commit left the db at (a version inside one
    /// of our batches is refused, [`BeeError::InsideBatch`](crate::BeeError::InsideBatch)).
    pub fn checkout(&self, version: u64) -> Result<Self, DriveError> {
        Ok(Self {
            db: self.db.checkout(version)?,
            ..self.clone()
        })
    }

    /// A read-only view at any length up to the db's ([`Bee::at`]).
    pub(crate) fn at(&self, version: u64) -> Result<Self, DriveError> {
        Ok(Self {
            db: self.db.at(version)?,
            ..self.clone()
        })
    }

    /// Watches the version; it changes after every write through this drive.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    pub(crate) fn notify(&self) {
        self.version_tx.send_replace(self.db.version());
    }

    /// fsyncs everything written so far.
    pub fn sync(&self) -> Result<(), DriveError> {
        Ok(self.store.flush()?)
    }

    fn check_writable(&self) -> Result<(), DriveError> {
        if self.writable() {
            Ok(())
        } else {
            Err(DriveError::ReadOnly)
        }
    }

    /// Writes a file.
    pub async fn put(&self, name: &str, data: &[u8]) -> Result<DriveEntry, DriveError> {
        self.put_with(name, data, PutOptions::default()).await
    }

    /// Writes a file with options.
    pub async fn put_with(
        &self,
        name: &str,
        data: &[u8],
        opts: PutOptions,
    ) -> Result<DriveEntry, DriveError> {
        let mut w = self.writer(name, opts).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Starts a streaming file write; the drive is locked for writing until it finishes.
    pub async fn writer(&self, name: &str, opts: PutOptions) -> Result<FileWriter<'_>, DriveError> {
        self.check_writable()?;
        let path = path::normalize(name)?;
        let guard = self.lock.clone().lock_owned().await;
        // Walk the index to this path before any content is written: on a damaged db core the
        // put fails here, instead of after appending a blob that no entry will ever point at.
        // The nodes it reads are cached, so the put that follows reads them again for free.
        self.db.get(&files_key(&path)).await?;
        Ok(FileWriter {
            drive: self,
            path,
            opts,
            blob: self.blobs.writer(),
            _guard: guard,
        })
    }

    /// Writes a symlink.
    pub async fn symlink(&self, name: &str, target: &str) -> Result<DriveEntry, DriveError> {
        let mut b = self.batch().await?;
        let e = b.symlink(name, target).await?;
        b.flush().await?;
        Ok(e)
    }

    /// Deletes a file; `false` if it did not exist.
    pub async fn del(&self, name: &str) -> Result<bool, DriveError> {
        let mut b = self.batch().await?;
        let found = b.del(name).await?;
        b.flush().await?;
        Ok(found)
    }

    /// Starts an atomic batch of writes.
    pub async fn batch(&self) -> Result<DriveBatch<'_>, DriveError> {
        self.check_writable()?;
        let guard = self.lock.clone().lock_owned().await;
        DriveBatch::new(self, guard).await
    }

    /// The entry at `name` (symlinks not followed).
    pub async fn entry(&self, name: &str) -> Result<Option<DriveEntry>, DriveError> {
        let path = path::normalize(name)?;
        match self.db.get(&files_key(&path)).await? {
            None => Ok(None),
            Some(e) => Ok(Some(DriveEntry {
                entry: decode_entry(&path, &e.value)?,
                path,
                seq: e.seq,
            })),
        }
    }

    /// The entry at `name`, following symlinks (up to 16 hops, as Hyperdrive does).
    pub async fn stat(&self, name: &str) -> Result<Option<DriveEntry>, DriveError> {
        let mut cur = path::normalize(name)?;
        for _ in 0..16 {
            let Some(e) = self.entry(&cur).await? else {
                return Ok(None);
            };
            match &e.entry.linkname {
                Some(link) if e.entry.blob.is_none() => {
                    cur = path::normalize(&if link.starts_with('/') {
                        link.clone()
                    } else {
                        format!("{cur}/{link}")
                    })?;
                }
                _ => return Ok(Some(e)),
            }
        }
        Err(DriveError::Symlink(format!(
            "too many levels of symbolic links: {name}"
        )))
    }

    /// Whether a file or symlink exists at `name`.
    pub async fn exists(&self, name: &str) -> Result<bool, DriveError> {
        Ok(self.entry(name).await?.is_some())
    }

    /// The whole content of the file at `name` (symlinks followed); `None` if absent.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, DriveError> {
        let Some(e) = self.stat(name).await? else {
            return Ok(None);
        };
        match e.entry.blob {
            Some(blob) => Ok(Some(self.blobs.get(&blob).await?)),
            None => Err(DriveError::Symlink(format!(
                "{} is a dangling symlink",
                e.path
            ))),
        }
    }

    /// Streams bytes `start..start+len` of the file at `name` to `sink`; returns bytes sent.
    pub async fn read_range(
        &self,
        name: &str,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, DriveError> {
        let e = self
            .stat(name)
            .await?
            .ok_or_else(|| DriveError::NotFound(name.to_string()))?;
        let blob: BlobId = e
            .entry
            .blob
            .ok_or_else(|| DriveError::Symlink(format!("{} is a dangling symlink", e.path)))?;
        Ok(self.blobs.read_range(&blob, start, len, sink).await?)
    }

    /// Fetches the content of every file under `path` (a folder, recursively, or one file;
    /// `/` for the whole drive) from connected peers, so that it reads without the network.
    /// Needs a replication session with the core attached; fails with
    /// [`BlobError::Unavailable`] when no connected peer delivers a block.
    pub async fn download(&self, path: &str) -> Result<Downloaded, DriveError> {
        self.download_with(path, &mut |_, _| {}).await
    }

    /// [`download`](Self::download), calling `progress(done, total)` in blocks as they arrive
    /// (`total`: the blocks that were missing).
    pub async fn download_with(
        &self,
        path: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, DriveError> {
        let mut entries = self.list(path).await?;
        if let Some(p) = path::file_or_root(path)? {
            entries.extend(self.entry(&p).await?);
        }
        let blobs: Vec<BlobId> = entries.into_iter().filter_map(|e| e.entry.blob).collect();
        let plan = [(&self.blobs, crate::blobs::block_ranges(&blobs))];
        let blocks = crate::blobs::download_plan(&plan, progress).await?;
        Ok(Downloaded {
            files: blobs.len(),
            blocks,
        })
    }

    /// Whether the drive holds any file or link (one entry read, whatever its size).
    pub async fn has_files(&self) -> Result<bool, DriveError> {
        Ok(self.db.peek(&Self::files_range()).await?.is_some())
    }

    /// Every entry under `folder`, recursively, sorted by path.
    pub async fn list(&self, folder: &str) -> Result<Vec<DriveEntry>, DriveError> {
        let f = path::folder(folder);
        let range = Range::exclusive(files_key(&format!("{f}/")), files_key(&format!("{f}0")));
        self.db
            .range(&range)
            .await?
            .into_iter()
            .map(|e| self.to_drive_entry(e))
            .collect()
    }

    /// Like [`Drive::list`], but entries that are not valid Hyperdrive entries (another writer's
    /// malformed data) are skipped instead of failing the whole listing; returns how many were.
    pub async fn list_valid(&self, folder: &str) -> Result<(Vec<DriveEntry>, usize), DriveError> {
        let f = path::folder(folder);
        let range = Range::exclusive(files_key(&format!("{f}/")), files_key(&format!("{f}0")));
        let mut skipped = 0;
        let mut out = Vec::new();
        for e in self.db.range(&range).await? {
            match self.to_drive_entry(e) {
                Ok(e) => out.push(e),
                Err(err) => {
                    skipped += 1;
                    tracing::warn!(drive = %self.key, "skipping a malformed entry: {err}");
                }
            }
        }
        Ok((out, skipped))
    }

    /// The entries directly in `folder` (files and symlinks, not subfolders), sorted.
    pub async fn list_shallow(&self, folder: &str) -> Result<Vec<DriveEntry>, DriveError> {
        let mut out = Vec::new();
        self.shallow(folder, |name, e| {
            if let Some(e) = e {
                out.push(e);
            }
            let _ = name;
        })
        .await?;
        Ok(out)
    }

    /// Names directly in `folder` (files and subfolders), in byte order: Hyperdrive's `readdir`.
    pub async fn readdir(&self, folder: &str) -> Result<Vec<String>, DriveError> {
        let mut out = Vec::new();
        self.shallow(folder, |name, _| out.push(name)).await?;
        Ok(out)
    }

    /// Hyperdrive's shallow walk: peek the next key after `prev`, then skip that name's subtree.
    /// JavaScript skips a subtree with `gt folder/name0`, which also skips a sibling file named
    /// exactly `name0`; we resume at `gte folder/name0` so that file is listed.
    async fn shallow(
        &self,
        folder: &str,
        mut each: impl FnMut(String, Option<DriveEntry>),
    ) -> Result<(), DriveError> {
        use std::ops::Bound;
        let f = path::folder(folder);
        let mut start = Bound::Excluded(files_key(&format!("{f}/")));
        let end = Bound::Excluded(files_key(&format!("{f}0")));
        loop {
            let range = Range {
                start,
                end: end.clone(),
                ..Range::default()
            };
            let Some(e) = self.db.peek(&range).await? else {
                return Ok(());
            };
            let full = self.to_drive_entry(e)?;
            let rest = &full.path[f.len() + 1..];
            match rest.find('/') {
                None => {
                    start = Bound::Excluded(files_key(&format!("{f}/{rest}")));
                    each(rest.to_string(), Some(full));
                }
                Some(i) => {
                    let name = rest[..i].to_string();
                    start = Bound::Included(files_key(&format!("{f}/{name}0")));
                    each(name, None);
                }
            }
        }
    }

    /// The range of every file entry, as [`list_valid`](Self::list_valid) of `/` reads it.
    pub(crate) fn files_range() -> Range {
        Range::exclusive(files_key("/"), files_key("0"))
    }

    /// A file entry read from the db, checked as [`list_valid`](Self::list_valid) checks it.
    pub(crate) fn valid_entry(&self, e: crate::bee::BeeEntry) -> Result<DriveEntry, DriveError> {
        self.to_drive_entry(e)
    }

    fn to_drive_entry(&self, e: crate::bee::BeeEntry) -> Result<DriveEntry, DriveError> {
        let p = sub::decode(sub::FILES, &e.key)
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| DriveError::BadEntry {
                path: hex::encode(&e.key),
                reason: "key is not a UTF-8 file path".into(),
            })?
            .to_string();
        if !p.starts_with('/') {
            return Err(DriveError::BadEntry {
                path: p,
                reason: "path is not absolute".into(),
            });
        }
        Ok(DriveEntry {
            entry: decode_entry(&p, &e.value)?,
            path: p,
            seq: e.seq,
        })
    }

    /// What changed at or under `folder` (a folder, or one file's path) between versions
    /// `from` and `to` (sorted by path).
    pub async fn diff(&self, from: u64, to: u64, folder: &str) -> Result<Vec<Change>, DriveError> {
        let (from, to) = (self.checkout(from)?, self.checkout(to)?);
        let mut a = Vec::new();
        let mut b = Vec::new();
        // The path itself, when it names a file (it sorts before what lies below it).
        if !path::folder(folder).is_empty() {
            a.extend(from.entry(folder).await?);
            b.extend(to.entry(folder).await?);
        }
        a.extend(from.list(folder).await?);
        b.extend(to.list(folder).await?);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.path.cmp(&y.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    out.push(Change {
                        path: a[i].path.clone(),
                        before: Some(a[i].clone()),
                        after: None,
                    });
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(Change {
                        path: b[j].path.clone(),
                        before: None,
                        after: Some(b[j].clone()),
                    });
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if a[i].seq != b[j].seq {
                        out.push(Change {
                            path: a[i].path.clone(),
                            before: Some(a[i].clone()),
                            after: Some(b[j].clone()),
                        });
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(out)
    }
}

fn decode_entry(path: &str, value: &[u8]) -> Result<Entry, DriveError> {
    Entry::decode(value).map_err(|e| DriveError::BadEntry {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// A streaming file write started by [`Drive::writer`].
#[derive(Debug)]
pub struct FileWriter<'a> {
    drive: &'a Drive,
    path: String,
    opts: PutOptions,
    blob: BlobWriter<'a>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl FileWriter<'_> {
    /// Appends bytes to the file.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), DriveError> {
        Ok(self.blob.write(data).await?)
    }

    /// Finishes the blob and writes the entry.
    pub async fn finish(self) -> Result<DriveEntry, DriveError> {
        // The blob's last blocks and the entry commit together: a small file is there whole
        // or not at all. Earlier blocks of a large file went before, named by nothing yet.
        let (blob, pending) = self.blob.finish_pending();
        let entry = Entry::file(blob, self.opts.executable, self.opts.metadata);
        let seq = self
            .drive
            .db
            .put_together(
                &files_key(&self.path),
                &entry.encode(),
                self.drive.blobs.core(),
                pending,
            )
            .await?;
        self.drive.notify();
        Ok(DriveEntry {
            path: self.path,
            seq,
            entry,
        })
    }
}
