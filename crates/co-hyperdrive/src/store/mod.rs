//! The store: one directory that holds a primary secret and every core we keep.
//!
//! Layout of a disk store:
//! ```text
//! DIR/primary-key          32 random bytes; our writable cores' key pairs derive from it
//! DIR/ledger               the cores we made: name, key, and a length they reached (JSON)
//! DIR/LOCK                 held (flock) by the one process that has the store open
//! DIR/db/                  every core: blocks, tree nodes, headers (one fjall database, kv.rs)
//! ```
//! Each core is our own Hypercore log (`log.rs`); every write of one is one atomic batch, made
//! durable by [`Store::flush`]. Stores made before the database (`DIR/cores/<hex key>/`, the
//! `hypercore` crate's files) are moved into it on first open (`legacy.rs`).
//! Cores are compat cores: the core key is the Ed25519 public key. Our own cores are opened by
//! name ([`Store::open_named`]); other peers' by key ([`Store::open_key`], read-only).
//!
//! Secrets stay private: the folders are created 0700 and every file 0600, and opening a store
//! whose primary key others can read logs a warning.
//!
//! **The ledger** keeps us from forking our own signed logs. A writable core that lost its
//! files (deleted, or restored from an old backup) would otherwise be re-created from block 0
//! under the same key: a second history signed by the same key, which peers holding the first
//! see as equivocation. The ledger records every core we create before its first write, and
//! after each flush the length its files durably reached; opening a named core whose files are
//! gone or shorter is refused, as is a primary key that no longer derives the recorded keys.

mod core;
pub mod keys;
mod kv;
mod ledger;
mod legacy;
mod log;
mod proofs;

pub use core::{Appended, Core, CoreError, Info};
pub use proofs::{Proof, ProofRequest};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cohd_format::manifest::Manifest;
use cohd_format::Key;
use ed25519_dalek::SigningKey;

pub(crate) use kv::Durability;
use kv::Kv;

/// How a new core of ours is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CoreFormat {
    /// The key is the hash of a manifest naming our signing key: what Hypercore 11 and
    /// JavaScript Hyperdrive 13 make by default.
    #[default]
    Manifest,
    /// The key is our Ed25519 public key: what Hypercore 10 peers (Hyperdrive 11) read.
    Compat,
}

/// What went wrong opening or using a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No store at this directory.
    #[error("no store at {0} (create one with `cohd init`)")]
    Missing(PathBuf),
    /// A store already exists where one was to be created.
    #[error("a store already exists at {0}")]
    Exists(PathBuf),
    /// Another process holds the store.
    #[error("the store at {0} is in use by another process")]
    Locked(PathBuf),
    /// The primary key file is not 32 bytes.
    #[error("corrupted store: {0} is not a 32-byte primary key")]
    BadPrimaryKey(PathBuf),
    /// The primary key no longer derives the keys of the cores this store made.
    #[error("corrupted store: {0} does not derive the keys of the cores this store made (damaged or replaced?); refusing to open it, so that no new identity takes its writes")]
    WrongPrimaryKey(PathBuf),
    /// The ledger is gone and one of our cores is missing: it may have held signed blocks.
    #[error("core {name} ({key}) is not in the store and the store's ledger is gone, so nothing says whether it held signed blocks; creating it again could fork its signed log. Restore the store folder from a backup, or make a new store elsewhere (`cohd --dir NEW init`)")]
    NoLedger {
        /// The core's name.
        name: String,
        /// The core.
        key: Key,
    },
    /// The ledger of our cores does not read.
    #[error("corrupted store: {path} does not read ({reason})")]
    BadLedger {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One of our writable cores lost signed blocks: writing to it would fork its log.
    #[error("core {name} ({key}) had {recorded} signed blocks, but {found}; writing to it now would fork its signed log. Restore the store folder from a backup, or make a new store elsewhere (`cohd --dir NEW init`)")]
    LostBlocks {
        /// The core's name.
        name: String,
        /// The core.
        key: Key,
        /// The length the ledger recorded.
        recorded: u64,
        /// What was found instead.
        found: String,
    },
    /// A core's records could not be read.
    #[error("core {key} is corrupted or unreadable: {reason}")]
    Core {
        /// The core.
        key: Key,
        /// What is wrong.
        reason: String,
    },
    /// The store's database failed.
    #[error("the store's database at {path}: {reason}")]
    Database {
        /// Its folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The store was closed.
    #[error("the store was closed")]
    Closed,
    /// A core asked for by key is not in the store.
    #[error("core {0} is not in this store")]
    UnknownCore(Key),
    /// Filesystem error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The co-drive index fixed at one moment ([`Store::index_pin`]).
#[derive(Debug)]
pub(crate) struct IndexPin(kv::Pin);

/// A handle on the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: Option<PathBuf>,
    primary: [u8; 32],
    cores: Mutex<HashMap<Key, Core>>,
    kv: Arc<Kv>,
    ledger: Mutex<ledger::Ledger>,
    /// The store was opened without a ledger (made before there was one, or it was lost):
    /// only cores that exist are adopted.
    no_ledger: bool,
    /// Set by [`Store::close`]: no core opens any more.
    closed: std::sync::atomic::AtomicBool,
    _lock: Option<std::fs::File>,
}

impl Store {
    /// A store that lives in memory only (tests, examples), with a random primary key.
    pub fn memory() -> Self {
        Self::memory_with_primary(rand::random())
    }

    /// A memory store with a given primary key (deterministic tests).
    pub fn memory_with_primary(primary: [u8; 32]) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: None,
                primary,
                cores: Mutex::default(),
                kv: Arc::new(Kv::memory()),
                ledger: Mutex::default(),
                no_ledger: false,
                closed: std::sync::atomic::AtomicBool::new(false),
                _lock: None,
            }),
        }
    }

    /// A memory store on `kv` (tests: a faulty one).
    #[cfg(test)]
    pub(crate) fn memory_on(kv: Arc<Kv>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: None,
                primary: [7; 32],
                cores: Mutex::default(),
                kv,
                ledger: Mutex::default(),
                no_ledger: false,
                closed: std::sync::atomic::AtomicBool::new(false),
                _lock: None,
            }),
        }
    }

    /// Creates a new disk store at `dir` (the directory may exist but must hold no store).
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        private_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let pk = dir.join("primary-key");
        // A store whose primary key was lost still has its ledger or cores: never start a new
        // identity over them.
        if pk.exists()
            || dir.join(ledger::FILE).exists()
            || has_entries(&dir.join("cores"))
            || has_entries(&dir.join(DB))
        {
            return Err(StoreError::Exists(dir));
        }
        let lock = Self::lock(&dir)?;
        let primary: [u8; 32] = rand::random();
        // Write to a temporary name and rename, so a crash never leaves a short key file.
        let tmp = dir.join("primary-key.tmp");
        private_file(&tmp, &primary).map_err(io("writing primary key"))?;
        std::fs::rename(&tmp, &pk).map_err(io("writing primary key"))?;
        let kv = open_db(&dir)?;
        let ledger = ledger::Ledger::default();
        ledger.save(&dir).map_err(io("writing the ledger"))?;
        Ok(Self::with_dir(dir, primary, lock, Some(ledger), kv))
    }

    /// Opens the existing disk store at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let pk = dir.join("primary-key");
        if !pk.is_file() {
            return Err(StoreError::Missing(dir));
        }
        let lock = Self::lock(&dir)?;
        warn_if_shared(&pk);
        let bytes = std::fs::read(&pk).map_err(io(format!("reading {}", pk.display())))?;
        let primary: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::BadPrimaryKey(pk.clone()))?;
        // A store made before the ledger existed gets one now; its cores are recorded as they
        // are opened.
        let ledger = ledger::Ledger::load(&dir)?;
        if !ledger.as_ref().is_none_or(|l| {
            l.matches(|name| keys::key_pair(&primary, name).verifying_key().to_bytes())
        }) {
            return Err(StoreError::WrongPrimaryKey(pk));
        }
        // A store made before the database: its cores move in first.
        if has_entries(&dir.join(legacy::CORES)) {
            legacy::migrate(&dir, &dir.join(DB), ledger.as_ref())?;
        }
        let kv = open_db(&dir)?;
        Ok(Self::with_dir(dir, primary, lock, ledger, kv))
    }

    fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("LOCK"))
            .map_err(io("opening lock file"))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(io("locking store")(e)),
        }
    }

    fn with_dir(
        dir: PathBuf,
        primary: [u8; 32],
        lock: std::fs::File,
        ledger: Option<ledger::Ledger>,
        kv: Kv,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: Some(dir),
                primary,
                cores: Mutex::default(),
                kv: Arc::new(kv),
                no_ledger: ledger.is_none(),
                ledger: Mutex::new(ledger.unwrap_or_default()),
                closed: std::sync::atomic::AtomicBool::new(false),
                _lock: Some(lock),
            }),
        }
    }

    /// Writes the file `name` in the store's folder, readable by us only and atomically (a
    /// temporary file, fsync, rename): for what a front end keeps beside the cores. `name` is a
    /// plain file name.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.inner.dir.as_ref().ok_or_else(|| StoreError::Io {
            context: format!("writing {name}"),
            source: std::io::Error::other("a memory store has no folder"),
        })?;
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(StoreError::Io {
                context: format!("writing {name:?}"),
                source: std::io::Error::other("not a plain file name"),
            });
        }
        let tmp = dir.join(format!("{name}.tmp"));
        private_file(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
            .map_err(io(format!("writing {}", dir.join(name).display())))
    }

    /// The directory of a disk store.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The key our writable core `name` has or would get in `format` (derived, see `keys`):
    /// the one recorded when the store made it already.
    pub fn own_key(&self, name: &str, format: CoreFormat) -> Key {
        if let Some(r) = self.ledger().entry(name) {
            return r.key;
        }
        let pk = keys::key_pair(&self.inner.primary, name)
            .verifying_key()
            .to_bytes();
        match format {
            CoreFormat::Compat => Key(pk),
            CoreFormat::Manifest => Key(Manifest::default_signer(pk).hash()),
        }
    }

    /// The key of our writable core `name` as [`open_named`](Self::open_named) opens it.
    pub fn named_key(&self, name: &str) -> Key {
        self.own_key(name, CoreFormat::Compat)
    }

    /// Opens (creating if new) our writable compat core `name` (one made earlier keeps the
    /// format it was made in). Refused when the ledger knows the core longer than it is (see
    /// the module docs).
    pub async fn open_named(&self, name: &str) -> Result<Core, StoreError> {
        self.open_own(name, CoreFormat::Compat).await
    }

    /// Opens (creating if new, in `format`) our writable core `name`, signed by the key pair
    /// `name` derives; a core made earlier keeps the format it was made in.
    pub async fn open_own(&self, name: &str, format: CoreFormat) -> Result<Core, StoreError> {
        let sk = keys::key_pair(&self.inner.primary, name);
        let pk = sk.verifying_key().to_bytes();
        let manifest = match self.ledger().entry(name) {
            Some(r) => r.manifest,
            None => match format {
                CoreFormat::Compat => None,
                CoreFormat::Manifest => Some(Manifest::default_signer(pk)),
            },
        };
        let key = Key(manifest.as_ref().map_or(pk, Manifest::hash));
        self.open_own_core(name, key, sk, manifest, None).await
    }

    /// Opens (creating if new) our writable manifest core `name`, signed by the key pair that
    /// `signer` derives, with `manifest` (a Hyperdrive 13 blobs core: its manifest derives from
    /// the db core's, and the db core's key pair signs it).
    pub async fn open_own_derived(
        &self,
        name: &str,
        signer: &str,
        manifest: Manifest,
    ) -> Result<Core, StoreError> {
        let sk = keys::key_pair(&self.inner.primary, signer);
        let key = Key(manifest.hash());
        self.open_own_core(name, key, sk, Some(manifest), Some(signer))
            .await
    }

    async fn open_own_core(
        &self,
        name: &str,
        key: Key,
        sk: SigningKey,
        manifest: Option<Manifest>,
        signer: Option<&str>,
    ) -> Result<Core, StoreError> {
        let recorded = self.ledger().entry(name).map(|r| (r.key, r.length));
        if let Some((k, _)) = recorded {
            if k != key {
                return Err(self.wrong_primary());
            }
        }
        let lost = |found: String| StoreError::LostBlocks {
            name: name.to_string(),
            key,
            recorded: recorded.map_or(0, |(_, n)| n),
            found,
        };
        let core = match recorded {
            // It must be there: re-creating it would start a second history.
            Some((_, n)) if n > 0 => match self.open_core(key, Some(sk), manifest, false).await {
                Err(StoreError::UnknownCore(_)) => {
                    return Err(lost("its files are gone".into()));
                }
                r => r?,
            },
            _ => {
                if recorded.is_none() && self.inner.dir.is_some() {
                    // Recorded before its first write, so that losing it is noticed.
                    let existing = self.has_core(&key);
                    if !existing && self.inner.no_ledger {
                        return Err(StoreError::NoLedger {
                            name: name.to_string(),
                            key,
                        });
                    }
                    self.record_core(name, key, manifest.as_ref(), signer)?;
                    if existing {
                        tracing::debug!(name, %key, "adopting a core made before the ledger");
                    }
                }
                self.open_core(key, Some(sk), manifest, true).await?
            }
        };
        let found = core.info().length;
        match recorded {
            Some((_, n)) if found < n => Err(lost(format!("its files hold only {found}"))),
            _ => Ok(core),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, ledger::Ledger> {
        self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrong_primary(&self) -> StoreError {
        StoreError::WrongPrimaryKey(
            self.inner
                .dir
                .as_ref()
                .map(|d| d.join("primary-key"))
                .unwrap_or_default(),
        )
    }

    /// Records core `name` in the ledger and writes it (disk stores).
    fn record_core(
        &self,
        name: &str,
        key: Key,
        manifest: Option<&Manifest>,
        signer: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(dir) = &self.inner.dir else {
            return Ok(());
        };
        let mut ledger = self.ledger();
        let mut next = ledger.clone();
        next.record_with(name, key, 0, manifest, signer);
        next.save(dir).map_err(io("writing the ledger"))?;
        *ledger = next;
        Ok(())
    }

    /// Opens a core by key, read-only unless it is one of ours. With `create` false, a core the
    /// store has never held is an error.
    /// The key is a compat core's Ed25519 public key or a manifest core's manifest hash: the
    /// manifest then comes with the first proof a peer sends.
    pub async fn open_key(&self, key: Key, create: bool) -> Result<Core, StoreError> {
        self.open_core(key, None, None, create).await
    }

    /// [`open_key`](Self::open_key) for a core whose manifest is known beforehand (a
    /// Hyperdrive 13 drive's blobs core, derived from its db core's manifest). Refused when
    /// `manifest` is not the one `key` commits to.
    pub async fn open_key_with_manifest(
        &self,
        key: Key,
        manifest: cohd_format::manifest::Manifest,
        create: bool,
    ) -> Result<Core, StoreError> {
        self.open_core(key, None, Some(manifest), create).await
    }

    /// Core `key`'s fork and consistent length ([`Core::consistent_length`]): from the core
    /// when it is open, else from its metadata records only (nothing read from its tree, no
    /// signature checked: see `Log::peek_consistent`). `None` when the store does not hold it.
    pub(crate) fn peek_consistent(&self, key: &Key) -> Result<Option<(u64, u64)>, StoreError> {
        let open = self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        if let Some(c) = open {
            return Ok(Some((c.info().fork, c.consistent_length())));
        }
        log::Log::peek_consistent(&self.inner.kv, *key).map_err(|e| StoreError::Core {
            key: *key,
            reason: e.to_string(),
        })
    }

    /// Whether the store holds core `key`.
    pub fn has_core(&self, key: &Key) -> bool {
        if self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
        {
            return true;
        }
        log::Log::exists(&self.inner.kv, *key).unwrap_or(false)
    }

    async fn open_core(
        &self,
        key: Key,
        secret: Option<SigningKey>,
        manifest: Option<cohd_format::manifest::Manifest>,
        create: bool,
    ) -> Result<Core, StoreError> {
        let open = self
            .inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(core) = open {
            if let Some(m) = manifest {
                core.log().learn_manifest(m).map_err(|e| StoreError::Core {
                    key,
                    reason: e.to_string(),
                })?;
            }
            return Ok(core);
        }
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // One of ours, opened by key: with its secret key, whichever way it is opened first
        // (our own lengths are signed when a peer asks for them, which needs it).
        let secret = secret.or_else(|| {
            let signer = self.ledger().signer_of(&key)?;
            Some(keys::key_pair(&self.inner.primary, &signer))
        });
        let log = log::Log::open(self.inner.kv.clone(), key, secret, manifest, create)
            .map_err(|e| StoreError::Core {
                key,
                reason: e.to_string(),
            })?
            .ok_or(StoreError::UnknownCore(key))?;
        let core = Core::new(log);
        let mut cores = self.inner.cores.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cores.entry(key).or_insert(core).clone())
    }

    /// Makes everything durable. Writes through cores opened before fail afterwards with
    /// [`CoreError::Closed`] (reads go on), and opening cores not open yet with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        let cores = self.open_cores();
        for c in &cores {
            c.close().await;
        }
        self.flush()?;
        let kv = self.inner.kv.clone();
        // Blocking (the database offers no future); bounded.
        let _ = tokio::task::spawn_blocking(move || kv.settle(SETTLE_LIMIT)).await;
        Ok(())
    }

    /// Every core the store has opened so far.
    pub fn open_cores(&self) -> Vec<Core> {
        self.inner
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Makes everything written so far durable (one sync of the database's journal).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.kv.persist().map_err(|e| StoreError::Database {
            path: self.inner.dir.clone().unwrap_or_default().join(DB),
            reason: e.to_string(),
        })?;
        // And the lengths our own cores durably reached.
        self.record_lengths()
    }

    /// A database failure, as the store reports it.
    fn db_error(&self, e: kv::KvError) -> StoreError {
        StoreError::Database {
            path: self.inner.dir.clone().unwrap_or_default().join(DB),
            reason: e.to_string(),
        }
    }

    /// At most `limit` entries of the co-drive index with keys in `start..end`, in key order,
    /// as the index stood when `pin` was taken (`None`: as it is).
    pub(crate) fn index_scan(
        &self,
        pin: Option<&IndexPin>,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<kv::Pairs, StoreError> {
        self.inner
            .kv
            .scan_at(pin.map(|p| &p.0), kv::Space::Index, start, end, limit)
            .map_err(|e| self.db_error(e))
    }

    /// The co-drive index as it stands now, for reads that must not see later writes
    /// ([`index_scan`](Self::index_scan) with it).
    pub(crate) fn index_pin(&self) -> IndexPin {
        IndexPin(self.inner.kv.pin_index())
    }

    /// Writes to the co-drive index, atomically (`None` deletes). Not made durable here: the
    /// index is derived from the cores, and one that lost writes is brought forward again.
    pub(crate) fn index_commit(
        &self,
        ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let mut b = kv::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(kv::Space::Index, k, v),
                None => b.delete(kv::Space::Index, k),
            }
        }
        self.inner.kv.commit(b).map_err(|e| self.db_error(e))
    }

    /// Raises the ledger's lengths to what our open cores hold (call after an fsync).
    fn record_lengths(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.inner.dir else {
            return Ok(());
        };
        let cores = self.inner.cores.lock().unwrap_or_else(|e| e.into_inner());
        let mut ledger = self.ledger();
        let mut next = ledger.clone();
        let grown = next.raise(|key| cores.get(key).map(|c| c.info().length));
        drop(cores);
        if grown {
            next.save(dir).map_err(io("writing the ledger"))?;
            *ledger = next;
        }
        Ok(())
    }
}

/// Creates `path` (and missing parents) readable by us only.
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Writes `bytes` to a new file at `path`, readable by us only, and fsyncs it.
pub(crate) fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Whether a folder exists and holds anything.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Warns when others may read a secret file.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by other users (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

/// The database's folder in a store.
const DB: &str = "db";
/// How long a clean close waits for the database to write out its sealed memtables
/// ([`Kv::settle`]): 64 MiB at disk speed, with room for a slow disk.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens (creating, private) the store's database.
fn open_db(dir: &Path) -> Result<Kv, StoreError> {
    let path = dir.join(DB);
    private_dir(&path).map_err(io(format!("creating {}", path.display())))?;
    Kv::open(&path).map_err(|e| StoreError::Database {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disk_store_reopens_cores() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let s = Store::create(dir.path()).unwrap();
            assert!(matches!(
                Store::open(dir.path()),
                Err(StoreError::Locked(_))
            ));
            let c = s.open_named("db").await.unwrap();
            c.append(b"one").await.unwrap();
            c.append_batch([b"two", b"333"]).await.unwrap();
            s.flush().unwrap();
            assert_eq!(s.named_key("db"), c.key());
            s.named_key("db")
        };
        assert!(matches!(
            Store::create(dir.path()),
            Err(StoreError::Exists(_))
        ));
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("db").await.unwrap();
        assert_eq!(c.info().length, 3);
        assert_eq!(c.get(2).await.unwrap().unwrap(), b"333");
        assert!(c.info().writable);
        assert!(s.has_core(&key));
        let other = Key([9; 32]);
        assert!(matches!(
            s.open_key(other, false).await,
            Err(StoreError::UnknownCore(_)) | Err(StoreError::Core { .. })
        ));
    }

    #[tokio::test]
    async fn cores_past_one_bitfield_page_reopen_and_read() {
        // (The `hypercore` crate's bitfield loader could not reopen more than 32,768 blocks.)
        let dir = tempfile::tempdir().unwrap();
        let n: u64 = 40_000;
        {
            let s = Store::create(dir.path()).unwrap();
            let c = s.open_named("big").await.unwrap();
            let blocks: Vec<Vec<u8>> = (0..n)
                .map(|i| i.to_le_bytes()[..(i % 7 + 1) as usize].to_vec())
                .collect();
            for chunk in blocks.chunks(10_000) {
                c.append_batch(chunk).await.unwrap();
            }
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let c = s.open_named("big").await.unwrap();
        assert_eq!((c.info().length, c.info().contiguous_length), (n, n));
        for i in [0, 1, 32_767, 32_768, 35_001, n - 1] {
            let want = i.to_le_bytes()[..(i % 7 + 1) as usize].to_vec();
            assert_eq!(c.get(i).await.unwrap(), Some(want), "block {i}");
        }
        assert_eq!(c.get(n).await.unwrap(), None);
        c.append(b"after").await.unwrap();
        assert_eq!(c.get(n).await.unwrap().unwrap(), b"after");
        assert_eq!(c.info().contiguous_length, n + 1);
    }

    #[tokio::test]
    async fn a_damaged_block_of_a_replicated_core_is_fetched_again() {
        use cohd_format::wire::{RequestBlock, RequestUpgrade};
        let w = Store::memory().open_named("w").await.unwrap();
        for i in 0..10u8 {
            w.append(&[i; 100]).await.unwrap();
        }
        let r = Store::memory().open_key(w.key(), true).await.unwrap();
        let deliver = |i: u64| {
            let (w, r) = (w.clone(), r.clone());
            async move {
                let req = ProofRequest {
                    block: Some(RequestBlock {
                        index: i,
                        nodes: r.missing_nodes(i).await,
                    }),
                    upgrade: (r.info().length == 0).then_some(RequestUpgrade {
                        start: 0,
                        length: 10,
                    }),
                    ..ProofRequest::default()
                };
                let p = w.create_proof(&req).await.unwrap().unwrap();
                assert!(r.apply_proof(p).await.unwrap());
            }
        };
        for i in 0..10 {
            deliver(i).await;
        }
        r.log().overwrite_block(7, &[0; 100]);
        assert_eq!(r.get_local(7).await.unwrap(), None);
        assert!(!r.has(7), "a damaged block counts as missing");
        assert_eq!(r.contiguous_held(), 7);
        assert!(matches!(
            r.get(7).await,
            Err(CoreError::Damaged { index: 7 })
        ));
        // Nor is it served.
        let req = ProofRequest {
            block: Some(cohd_format::wire::RequestBlock { index: 7, nodes: 0 }),
            ..ProofRequest::default()
        };
        assert_eq!(r.create_proof(&req).await.unwrap(), None);
        // What a replication session does for a missing block.
        deliver(7).await;
        assert_eq!(r.get_local(7).await.unwrap(), Some(vec![7; 100]));
        assert_eq!(r.info().contiguous_length, 10);
    }

    /// A storage backend that fails one read or commit in 25, on a seeded schedule: every
    /// failure is an error (no panic), and a restart (the same records, no faults) opens with
    /// every acknowledged write, and reads every file as one of the writes made to it.
    #[tokio::test]
    async fn storage_faults_lose_no_acknowledged_write() {
        use crate::Drive;
        use std::collections::BTreeMap;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let (mut failures, mut acked_puts) = (0, 0);
        for seed in 1..=30u64 {
            let faults = kv::Faults {
                state: AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
                every: 25,
                off: AtomicBool::new(false),
            };
            let kv = Arc::new(Kv::Faulty(Box::new(Kv::memory()), faults));
            let store = Store::memory_on(kv.clone());
            let mut drive = None;
            for _ in 0..100 {
                if let Ok(d) = Drive::open_own(&store, "db").await {
                    drive = Some(d);
                    break;
                }
                failures += 1;
            }
            let drive = drive.expect("the drive opens once the faults let it");
            // For each path: the last acknowledged content, and every content tried.
            let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut tried: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
            let mut x = seed;
            for i in 0..25u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let path = format!("/f{}", x % 7);
                let len = (x >> 33) % 150_000;
                let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (i as u8)).collect();
                tried.entry(path.clone()).or_default().push(data.clone());
                match drive.put(&path, &data).await {
                    Ok(_) => {
                        acked.insert(path, data);
                        acked_puts += 1;
                    }
                    Err(e) => {
                        failures += 1;
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
            let Kv::Faulty(_, f) = &*kv else {
                unreachable!()
            };
            f.off.store(true, Ordering::Relaxed);
            // The drive that saw the faults goes on reading right, and so does a restart.
            let restarted = Store::memory_on(kv.clone());
            let again = Drive::open_own(&restarted, "db").await.expect("reopens");
            for (d, (p, want)) in [&drive, &again]
                .into_iter()
                .flat_map(|d| acked.iter().map(move |a| (d, a)))
            {
                let got = d
                    .get(p)
                    .await
                    .expect("reads")
                    .expect("an acknowledged file");
                assert!(
                    tried[p].contains(&got),
                    "seed {seed}: {p} holds content never written to it"
                );
                // Later unacknowledged writes may have landed; the acknowledged one is the
                // newest of those that can be shown otherwise.
                if tried[p].last() == Some(want) {
                    assert_eq!(&got, want, "seed {seed}: {p}");
                }
            }
        }
        assert!(failures > 30, "only {failures} injected failures surfaced");
        assert!(acked_puts > 200, "only {acked_puts} puts went through");
    }

    #[tokio::test]
    async fn missing_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(dir.path().join("nope")),
            Err(StoreError::Missing(_))
        ));
    }
}
