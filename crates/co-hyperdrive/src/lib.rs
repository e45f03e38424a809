//! co-hyperdrive: a multi-writer Hyperdrive.
//!
//! Layers, bottom up: [`cohd_format`] (pure encodings), [`store`] (cores in a directory),
//! [`bee`] (Hyperbee B-tree), [`blobs`] (Hyperblobs), [`drive`] (one writer's Hyperdrive).

pub mod bee;
pub mod blobs;
pub mod codrive;
pub mod drive;
pub mod net;
pub mod store;

pub use cohd_format as format;
pub use drive::{Downloaded, Drive, DriveEntry, DriveError, PutOptions};
pub use store::{Core, CoreError, CoreFormat, Store, StoreError};
