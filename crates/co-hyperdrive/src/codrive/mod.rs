//! The co-drive: the merge of several writers' drives into one view.
//!
//! [`view`] is the pure heart: given what a peer holds of each writer's log (plain data, no I/O,
//! no clock), it computes the writer set and the merged files, so peers that hold the same data
//! show the same view whatever order it arrived in. [`records`] is how that data is kept in each
//! writer's db; [`CoDrive`] reads and writes it: a [`Snapshot`] reads the merged view computed
//! once, a [`CoBatch`] writes files with their records in one atomic append. A view is a function
//! of a [`Frontier`] (each writer's log length): [`CoDrive::version`] names the current one,
//! [`CoDrive::checkout`] shows the view at any past one, read-only, and a [`Watch`] reports each
//! new one. See `docs/codrive.md` for the semantics.

mod batch;
mod frontier;
pub(crate) mod index;
mod open;
pub mod records;
mod snapshot;
mod stored;
#[cfg(test)]
mod stored_tests;
pub mod view;
pub(crate) mod watch;

pub use batch::{CoBatch, CoFileWriter};
pub use frontier::{Frontier, FrontierError};
pub use open::{CoDrive, CoDriveError};
pub use snapshot::{Cleared, CoEntry, Snapshot};
pub use stored::{Child, Indexed};
pub use view::{PathVersion, View};
pub use watch::Watch;
