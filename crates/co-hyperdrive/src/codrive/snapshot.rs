//! [`Snapshot`]: the merged view computed once, for lookups, listings and content reads; and
//! [`CoDrive::checkout`], the read-only view at a past version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cohd_format::{path, Entry, Key};

use super::batch::{CoBatch, ViewSlot};
use super::frontier::Frontier;
use super::open::{CoDrive, CoDriveError};
use super::view::{PathVersion, Resolved, View};
use crate::blobs::BlobError;
use crate::drive::{Downloaded, DriveError};
use crate::store::StoreError;

/// Symlink hops followed before giving up (as Hyperdrive does).
const MAX_LINK_HOPS: usize = 16;

impl CoDrive {
    /// Computes the view once, for any number of reads (and writes) from it.
    pub async fn snapshot(&self) -> Result<Snapshot<'_>, CoDriveError> {
        let c = self.compute().await?;
        Ok(Snapshot {
            co: self,
            view: c.view,
            missing: c.missing,
            frontier: c.frontier,
            checkout: false,
        })
    }

    /// The read-only view at version `at` (from [`CoDrive::version`], [`Snapshot::version`] or
    /// a watch): the merge of every writer's drive checked out at the length `at` names (a
    /// writer it does not name counts as empty). It is the view the co-drive showed at that
    /// version. Fails with [`CoDriveError::BeyondStore`] if `at` names more of a writer than the
    /// store holds; its [`Snapshot::batch`] fails with [`CoDriveError::Checkout`].
    pub async fn checkout(&self, at: &Frontier) -> Result<Snapshot<'_>, CoDriveError> {
        let c = self.compute_checkout(at).await?;
        Ok(Snapshot {
            co: self,
            view: c.view,
            missing: c.missing,
            frontier: c.frontier,
            checkout: true,
        })
    }
    /// The merged content of `name` (the winning version, symlinks followed), `None` if absent
    /// or deleted.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoDriveError> {
        path::normalize(name).map_err(DriveError::from)?;
        self.snapshot().await?.get(name).await
    }

    /// Fetches the content of every visible file under `path` in the merged view (see
    /// [`Snapshot::download`]).
    pub async fn download(&self, path: &str) -> Result<Downloaded, CoDriveError> {
        self.download_with(path, &mut |_, _| {}).await
    }

    /// [`download`](Self::download) with `progress(done, total)` in blocks, as they arrive.
    pub async fn download_with(
        &self,
        path: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, CoDriveError> {
        // From the index on disk: only the paths under `path` are read, not the whole view.
        let plan = self.indexed().await?.content_under(path)?;
        self.download_content(plan, progress).await
    }

    /// Drops the local copies of other writers' content under `path` (see
    /// [`Snapshot::clear`]).
    pub async fn clear(&self, path: &str) -> Result<Cleared, CoDriveError> {
        let plan = self.indexed().await?.content_under(path)?;
        self.clear_content(plan).await
    }

    /// Fetches every block of `plan` that the store lacks.
    async fn download_content(
        &self,
        plan: ContentPlan,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, CoDriveError> {
        let mut drives = Vec::with_capacity(plan.by_writer.len());
        for (w, ids) in plan.by_writer {
            let d = self
                .drive(w)
                .await?
                .ok_or(DriveError::Store(StoreError::UnknownCore(w)))?;
            drives.push((d, crate::blobs::block_ranges(&ids)));
        }
        let ranges: Vec<_> = drives.iter().map(|(d, r)| (d.blobs(), r.clone())).collect();
        let blocks = crate::blobs::download_plan(&ranges, progress)
            .await
            .map_err(DriveError::from)?;
        Ok(Downloaded {
            files: plan.files,
            blocks,
        })
    }

    /// Drops the local copies of `plan`'s content that other writers wrote.
    async fn clear_content(&self, mut plan: ContentPlan) -> Result<Cleared, CoDriveError> {
        let mut out = Cleared {
            kept_own: plan
                .by_writer
                .remove(&self.local_key())
                .map_or(0, |ids| ids.len()),
            ..Cleared::default()
        };
        for (w, ids) in plan.by_writer {
            let Some(d) = self.drive(w).await? else {
                continue;
            };
            out.files += ids.len();
            out.blocks += d.blobs().clear(&ids).await.map_err(DriveError::from)?;
        }
        Ok(out)
    }
}

/// The content of visible files (a download's or a clear's), concurrent versions included,
/// by writer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ContentPlan {
    /// Visible files that have content.
    files: usize,
    by_writer: BTreeMap<Key, Vec<cohd_format::BlobId>>,
}

impl ContentPlan {
    pub(super) fn add(&mut self, e: CoEntry) {
        let winner = e.entry.blob.map(|b| (e.writer, b));
        self.files += usize::from(winner.is_some());
        let others = e
            .conflicts
            .into_iter()
            .filter_map(|v| Some((v.writer, v.entry?.blob?)));
        for (w, b) in winner.into_iter().chain(others) {
            self.by_writer.entry(w).or_default().push(b);
        }
    }
}

/// What [`Snapshot::clear`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Versions (of other writers) whose content was cleared.
    pub files: usize,
    /// Blocks that were held and are dropped now.
    pub blocks: u64,
    /// Versions the local writer wrote, kept.
    pub kept_own: usize,
}

/// The visible entry at `name` with symlinks followed, `entry` looking paths up (up to 16
/// hops; a relative target resolves against the link's path, as Hyperdrive does).
pub(super) fn follow_links(
    name: &str,
    entry: impl Fn(&str) -> Result<Option<CoEntry>, CoDriveError>,
) -> Result<Option<CoEntry>, CoDriveError> {
    let mut cur = path::normalize(name).map_err(DriveError::from)?;
    for _ in 0..MAX_LINK_HOPS {
        let Some(e) = entry(&cur)? else {
            return Ok(None);
        };
        if !e.is_symlink() {
            return Ok(Some(e));
        }
        let link = e.entry.linkname.unwrap_or_default();
        let target = if link.starts_with('/') {
            link
        } else {
            format!("{cur}/{link}")
        };
        cur = path::normalize(&target).map_err(DriveError::from)?;
    }
    Err(DriveError::Symlink(format!("too many levels of symbolic links: {name}")).into())
}

/// A visible file (or symlink) of the merged view: the winning version of its path.
#[derive(Debug, Clone, PartialEq)]
pub struct CoEntry {
    /// Normalized path.
    pub path: String,
    /// The writer whose version wins (its drive holds the entry and the content).
    pub writer: Key,
    /// Seq of the winning version in the writer's db core.
    pub seq: u64,
    /// When the winning version was written, by its writer's clock (see [`PathVersion`]).
    pub time: Option<u64>,
    /// The Hyperdrive entry.
    pub entry: Entry,
    /// Every concurrent version of the path (the winner included) when there is more than one;
    /// empty otherwise. A version with no entry is a concurrent delete.
    pub conflicts: Vec<PathVersion>,
}

impl CoEntry {
    pub(super) fn from_resolved(path: &str, r: &Resolved) -> Option<Self> {
        Some(Self {
            path: path.to_string(),
            writer: r.winner.writer,
            seq: r.winner.seq,
            time: r.winner.time,
            entry: r.winner.entry.clone()?,
            conflicts: r.conflicts.clone(),
        })
    }

    fn is_symlink(&self) -> bool {
        self.entry.linkname.is_some() && self.entry.blob.is_none()
    }
}

/// The merged view as computed once by [`CoDrive::snapshot`] (or, read-only, at a past version
/// by [`CoDrive::checkout`]): lookups and listings answer from memory, content reads go to the
/// winning writer's blobs. It sees the local writer's writes made through its own
/// [`Snapshot::batch`] once they are flushed, and nothing written after it was taken by any other
/// handle.
#[derive(Debug)]
pub struct Snapshot<'a> {
    co: &'a CoDrive,
    view: Arc<View>,
    missing: BTreeSet<Key>,
    frontier: Frontier,
    checkout: bool,
}

impl<'a> Snapshot<'a> {
    /// The merged view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether the local writer is in the writer set (may write, unless this is a checkout).
    pub fn is_writer(&self) -> bool {
        self.view.writers.contains_key(&self.co.own.key())
    }

    /// The version this view was computed from (for [`CoDrive::checkout`]). Flushing a batch of
    /// this snapshot moves the local writer's length to the one the batch made.
    pub fn version(&self) -> &Frontier {
        &self.frontier
    }

    /// Whether this is a read-only checkout from [`CoDrive::checkout`].
    pub fn is_checkout(&self) -> bool {
        self.checkout
    }

    /// Writers (current or removed, the primary included) whose drives the store does not hold:
    /// their files are not in this view yet.
    pub fn missing(&self) -> &BTreeSet<Key> {
        &self.missing
    }

    /// The visible entry at `name`, symlinks not followed; `None` if absent or deleted.
    pub fn entry(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        Ok(self
            .view
            .paths
            .get(&p)
            .and_then(|r| CoEntry::from_resolved(&p, r)))
    }

    /// The visible entry at `name` with symlinks followed through the merged view (up to 16
    /// hops; a relative target resolves against the link's path, as Hyperdrive does).
    pub fn stat(&self, name: &str) -> Result<Option<CoEntry>, CoDriveError> {
        follow_links(name, |p| self.entry(p))
    }

    /// Every visible entry under `folder`, recursively, sorted by path.
    pub fn list(&self, folder: &str) -> Vec<CoEntry> {
        let f = path::folder(folder);
        self.view
            .paths
            .range(format!("{f}/")..format!("{f}0"))
            .filter_map(|(p, r)| CoEntry::from_resolved(p, r))
            .collect()
    }

    /// Names directly in `folder`: its visible files and the subfolders that hold visible files,
    /// in path order (like [`Drive::readdir`](crate::Drive::readdir)).
    pub fn readdir(&self, folder: &str) -> Vec<String> {
        let f = path::folder(folder);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (p, r) in self.view.paths.range(format!("{f}/")..format!("{f}0")) {
            if r.winner.entry.is_none() {
                continue;
            }
            let rest = &p[f.len() + 1..];
            let name = rest.split('/').next().unwrap_or(rest);
            if seen.insert(name) {
                out.push(name.to_string());
            }
        }
        out
    }

    /// Streams bytes `start..start+len` of the file at `name` (symlinks followed) from the
    /// winning writer's blobs to `sink`; returns the bytes sent.
    pub async fn read_range(
        &self,
        name: &str,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, CoDriveError> {
        let e = self
            .stat(name)?
            .ok_or_else(|| DriveError::NotFound(name.to_string()))?;
        self.co.read_entry(&e, start, len, sink).await
    }

    /// Whether every block of the file at `name` (symlinks followed) is stored locally, so that
    /// reading it needs no peer (a read of a missing block waits for connected peers). `false`
    /// if there is no such file, or its writer's drive is not held.
    pub async fn is_local(&self, name: &str) -> Result<bool, CoDriveError> {
        match self.stat(name)? {
            Some(e) => self.co.entry_is_local(&e).await,
            None => Ok(false),
        }
    }

    /// The content of every visible file under `path` (a folder, recursively, or one file; `/`
    /// for everything), concurrent versions included.
    pub(super) fn content_under(&self, path: &str) -> Result<ContentPlan, CoDriveError> {
        let mut plan = ContentPlan::default();
        self.list(path).into_iter().for_each(|e| plan.add(e));
        if let Some(p) = path::file_or_root(path).map_err(DriveError::from)? {
            self.entry(&p)?.into_iter().for_each(|e| plan.add(e));
        }
        Ok(plan)
    }

    /// Fetches from connected peers the content of every visible file under `path` (a folder,
    /// recursively, or one file; `/` for everything), every concurrent version of a conflicted
    /// path included, so that it all reads without the network. Fails with
    /// [`BlobError::Unavailable`] (inside [`DriveError::Blob`]) when no connected peer
    /// delivers a block.
    pub async fn download(&self, path: &str) -> Result<Downloaded, CoDriveError> {
        self.download_with(path, &mut |_, _| {}).await
    }

    /// [`download`](Self::download), calling `progress(done, total)` in blocks as they arrive
    /// (`total`: the blocks that were missing, over every writer's blobs).
    pub async fn download_with(
        &self,
        path: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, CoDriveError> {
        let plan = self.content_under(path)?;
        self.co.download_content(plan, progress).await
    }

    /// Drops the local copies of the content of every visible file under `path` (as
    /// [`download`](Self::download) names them, concurrent versions included) that other
    /// writers wrote: it is fetched again when read with a peer connected. The local writer's
    /// own content is kept (no peer may hold it).
    pub async fn clear(&self, path: &str) -> Result<Cleared, CoDriveError> {
        let plan = self.content_under(path)?;
        self.co.clear_content(plan).await
    }

    /// The whole content of the file at `name` (symlinks followed); `None` if absent.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoDriveError> {
        if self.stat(name)?.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.read_range(name, 0, u64::MAX, |c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .await?;
        Ok(Some(out))
    }

    /// Starts an atomic batch of writes whose versions supersede what this snapshot shows; fails
    /// with [`CoDriveError::NotAWriter`] unless the local writer is a writer. Once flushed, the
    /// snapshot shows the batch's writes. A checkout fails with [`CoDriveError::Checkout`].
    pub async fn batch(&mut self) -> Result<CoBatch<'_>, CoDriveError> {
        if self.checkout {
            return Err(CoDriveError::Checkout);
        }
        CoBatch::new(self.co, ViewSlot::Lent(&mut self.view, &mut self.frontier)).await
    }
}
