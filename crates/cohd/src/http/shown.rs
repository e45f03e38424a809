//! The version a request reads: the current one from the index on disk (a lookup reads one
//! path's rows, a listing the folder's own rows, whatever the drive's size), or a past one
//! (`?at=`) from a checkout merged in memory. The gateway asks both the same questions.

use std::collections::BTreeSet;

use co_hyperdrive::format::{path, Key};
use co_hyperdrive::view::Resolved;
use co_hyperdrive::{Child, CoDriveError, CoEntry, Frontier, Indexed, Snapshot};

pub(super) enum Shown<'c> {
    Now(Indexed<'c>),
    At(Snapshot<'c>),
}

impl Shown<'_> {
    pub(super) fn version(&self) -> &Frontier {
        match self {
            Shown::Now(i) => i.version(),
            Shown::At(s) => s.version(),
        }
    }

    /// Writers the store does not hold.
    pub(super) fn missing(&self) -> &BTreeSet<Key> {
        match self {
            Shown::Now(i) => i.missing(),
            Shown::At(s) => s.missing(),
        }
    }

    /// Path `p`'s winner and concurrent versions (a delete included), `None` if no writer has a
    /// version of it (the root never has one).
    pub(super) fn resolved(&self, p: &str) -> Result<Option<Resolved>, CoDriveError> {
        Ok(match self {
            Shown::Now(_) if p == "/" => None,
            Shown::Now(i) => i.resolved(p)?,
            Shown::At(s) => s.view().paths.get(p).cloned(),
        })
    }

    /// The visible entry at `p`, symlinks not followed.
    pub(super) fn entry(&self, p: &str) -> Result<Option<CoEntry>, CoDriveError> {
        match self {
            Shown::Now(i) => i.entry(p),
            Shown::At(s) => s.entry(p),
        }
    }

    /// The visible entry at `p`, symlinks followed.
    pub(super) fn stat(&self, p: &str) -> Result<Option<CoEntry>, CoDriveError> {
        match self {
            Shown::Now(i) => i.stat(p),
            Shown::At(s) => s.stat(p),
        }
    }

    /// Whether `p` holds a visible file, at any depth.
    pub(super) fn is_folder(&self, p: &str) -> Result<bool, CoDriveError> {
        Ok(match self {
            Shown::Now(i) => i.is_folder(p)?,
            Shown::At(s) => !s.readdir(p).is_empty(),
        })
    }

    /// Calls `f` with what is directly in `folder`, in path order (see
    /// [`Indexed::for_each_child`]).
    pub(super) fn for_each_child(
        &self,
        folder: &str,
        mut f: impl FnMut(Child),
    ) -> Result<(), CoDriveError> {
        match self {
            Shown::Now(i) => i.for_each_child(folder, |c| {
                f(c);
                Ok::<_, CoDriveError>(())
            }),
            Shown::At(s) => {
                let fo = path::folder(folder);
                let mut last: Option<&str> = None;
                for (p, r) in s.view().paths.range(format!("{fo}/")..format!("{fo}0")) {
                    let rest = &p[fo.len() + 1..];
                    match rest.split_once('/') {
                        None => f(Child::File {
                            name: rest.to_string(),
                            resolved: r.clone(),
                        }),
                        // Paths are sorted, so a subfolder's paths are together; only visible
                        // files count.
                        Some((name, _)) => {
                            if r.winner.entry.is_some() && last != Some(name) {
                                last = Some(name);
                                f(Child::Folder {
                                    name: name.to_string(),
                                });
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
