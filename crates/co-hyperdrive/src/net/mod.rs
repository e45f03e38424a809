//! Replication over the Hypercore wire protocol (`docs/replication-notes.md`).
//!
//! - [`transport`]: TCP, framing, Noise XX, secretstream, keepalives and timeouts, then Protomux
//!   channels over any encrypted message stream (`cohd_format::wire` encodes the messages).
//! - `peer`: one core with one remote as a state machine (no I/O; hostile input is unit tested).
//! - [`Replicator`]: connections, channels, and the actions the state machines ask for.
//! - [`Follow`] ([`catch_up`], [`add_known_cores`], [`spawn_follow`]): which cores a co-drive
//!   needs, found as data arrives.
//! - [`Peers`]: addresses kept connected, dialled again with backoff.
//! - [`dht::Discovery`]: peers found on HyperDHT by topic, as JavaScript Hyperswarm finds them.

pub mod auth;
pub mod dht;
mod follow;
mod peer;
mod peers;
mod session;
pub mod transport;

pub use follow::{add_known_cores, catch_up, spawn_follow, Follow};
pub use peer::PeerError;
pub use peers::{PeerStatus, Peers};
pub use session::{ExtensionMessage, ReplicateOptions, Replicator, SessionError};
