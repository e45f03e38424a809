//! co-hyperdrive: a multi-writer Hyperdrive.
//!
//! A [`CoDrive`] merges several writers' drives into one view: each writer appends only to its
//! own [`Drive`] (a Hyperdrive 13 drive: a Hyperbee index and a blobs core), and every peer that
//! holds the same blocks shows the same files, whatever order they arrived in. A [`Store`] keeps
//! the cores (in a directory, or in memory), a [`Replicator`] exchanges them with peers over the
//! Hypercore wire protocol.
//!
//! Reading: [`CoDrive::snapshot`] computes the merged view once, and the [`Snapshot`] answers
//! lookups, listings and content reads from it. Writing: [`CoDrive::batch`] starts a [`CoBatch`],
//! one atomic append to the local writer's drive.
//!
//! ```
//! use co_hyperdrive::{CoDrive, PutOptions, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), co_hyperdrive::CoDriveError> {
//! let store = Store::memory();
//! // The store's drive "db" is the primary writer: its key names the co-drive.
//! let co = CoDrive::create(&store, "db").await?;
//!
//! let mut batch = co.batch().await?;
//! batch.put("/notes/hello.txt", b"hello", PutOptions::default()).await?;
//! batch.symlink("/latest", "/notes/hello.txt").await?;
//! batch.flush().await?;
//!
//! let snapshot = co.snapshot().await?;
//! assert_eq!(snapshot.readdir("/"), ["latest", "notes"]);
//! assert_eq!(snapshot.get("/latest").await?.as_deref(), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! Layers, bottom up: [`format`](mod@format) (pure encodings), the store (cores in a directory), [`Bee`]
//! (Hyperbee B-tree), [`Blobs`] (Hyperblobs), [`Drive`] (one writer's Hyperdrive), [`CoDrive`]
//! (the merge, [`view`] being its pure heart) and replication ([`Replicator`], [`transport`],
//! [`auth`], [`dht`]). `examples/` shows two writers sharing a co-drive over TCP.

mod bee;
mod blobs;
mod codrive;
mod drive;
mod net;
mod store;

pub use cohd_format as format;

pub use bee::{Bee, BeeEntry, BeeError, Range};
pub use blobs::{BlobError, BlobWriter, Blobs};
pub use codrive::{
    records, view, Child, Cleared, CoBatch, CoDrive, CoDriveError, CoEntry, CoFileWriter, Frontier,
    FrontierError, Indexed, PathVersion, Snapshot, View, Watch,
};
pub use drive::{
    Change, Downloaded, Drive, DriveBatch, DriveEntry, DriveError, FileWriter, PutOptions,
};
pub use net::{
    add_known_cores, auth, catch_up, dht, spawn_follow, transport, ExtensionMessage, Follow,
    PeerError, PeerStatus, Peers, ReplicateOptions, Replicator, SessionError,
};
pub use store::keys::discovery_key;
pub use store::{
    Appended, Core, CoreError, CoreFormat, Info, Proof, ProofRequest, Store, StoreError,
};
