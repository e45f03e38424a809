//! [`CoBatch`]: writes to the co-drive that land in the local writer's drive as one atomic
//! append, each file entry with its version record; [`CoFileWriter`] streams a file's content.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cohd_format::{path, Entry};

use super::frontier::Frontier;
use super::open::{CoDrive, CoDriveError};
use super::records;
use super::stored::Indexed;
use super::view::{self, PathVersion, Resolved, View};
use crate::blobs::BlobWriter;
use crate::drive::{DriveBatch, DriveError, PutOptions, STAGE_MAX};

impl CoDrive {
    /// Starts an atomic batch of writes on the current view (read from the index on disk,
    /// path by path: no full merge); fails with [`CoDriveError::NotAWriter`] unless the local
    /// writer is a writer.
    pub async fn batch(&self) -> Result<CoBatch<'_>, CoDriveError> {
        let idx = self.indexed().await?;
        CoBatch::new(self, ViewSlot::Index(idx)).await
    }

    /// Starts a streaming write of one file; [`CoFileWriter::finish`] writes its entry and
    /// version record in one atomic append. The local writer's drive stays locked for writing
    /// until the writer finishes or is dropped.
    pub async fn writer(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> Result<CoFileWriter<'_, '_>, CoDriveError> {
        let path = path::normalize(name).map_err(DriveError::from)?;
        let batch = self.batch().await?;
        batch.prepare(&path).await?;
        Ok(CoFileWriter {
            batch: BatchSlot::Owned(Box::new(batch)),
            path,
            opts,
            content: Content::Small(Vec::new()),
        })
    }
    /// Writes a file (its version supersedes every version of the path we can see).
    pub async fn put(&self, name: &str, data: &[u8]) -> Result<(), CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        b.put(&p, data, PutOptions::default()).await?;
        b.flush().await?;
        Ok(())
    }

    /// Writes a symlink `name` -> `target` (a version of `name` like a file).
    pub async fn symlink(&self, name: &str, target: &str) -> Result<(), CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        b.symlink(&p, target).await?;
        b.flush().await?;
        Ok(())
    }

    /// Deletes a path (hiding every version we can see); `false` if nothing was visible.
    pub async fn del(&self, name: &str) -> Result<bool, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        let mut b = self.batch().await?;
        let found = b.del(&p).await?;
        if found {
            b.flush().await?;
        }
        Ok(found)
    }

    /// Deletes everything visible under `folder`.
    pub async fn del_folder(&self, folder: &str) -> Result<usize, CoDriveError> {
        let mut b = self.batch().await?;
        let n = b.del_folder(folder).await?;
        if n > 0 {
            b.flush().await?;
        }
        Ok(n)
    }
}

/// The view a batch writes on: the snapshot's it came from (which it updates), or the index on
/// disk.
#[derive(Debug)]
pub(super) enum ViewSlot<'a> {
    /// A snapshot's view and version.
    Lent(&'a mut Arc<View>, &'a mut Frontier),
    /// The index on disk, looked up path by path.
    Index(Indexed<'a>),
}

impl ViewSlot<'_> {
    fn is_writer(&self, k: &cohd_format::Key) -> bool {
        match self {
            Self::Lent(v, _) => v.writers.contains_key(k),
            Self::Index(i) => i.writers().contains_key(k),
        }
    }

    /// The resolution of normalized path `p`.
    fn resolved(&self, p: &str) -> Result<Option<Resolved>, CoDriveError> {
        match self {
            Self::Lent(v, _) => Ok(v.paths.get(p).cloned()),
            Self::Index(i) => i.resolved(p),
        }
    }

    /// Every path `f` (a normalized folder, `""` for the root) or under it that has a
    /// resolution, in path order.
    fn paths_under(&self, f: &str) -> Result<Vec<String>, CoDriveError> {
        let under = |p: &&String| path::is_under(p, f);
        match self {
            Self::Lent(v, _) => Ok(v
                .paths
                .range(f.to_string()..)
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(f))
                .filter(under)
                .cloned()
                .collect()),
            Self::Index(i) => {
                let mut out = Vec::new();
                if !f.is_empty() && i.resolved(f)?.is_some() {
                    out.push(f.to_string());
                }
                i.for_each_resolved(if f.is_empty() { "/" } else { f }, |p, _| {
                    out.push(p.to_string());
                    Ok::<_, CoDriveError>(())
                })?;
                Ok(out)
            }
        }
    }
}

/// Writes to the co-drive that land in the local writer's drive as one atomic append: each file
/// entry (or deletion) together with its version record. It holds that drive's write lock until
/// flushed or dropped; dropped unflushed, it writes no entries (streamed content stays unused in
/// the blobs core).
#[derive(Debug)]
pub struct CoBatch<'a> {
    co: &'a CoDrive,
    view: ViewSlot<'a>,
    batch: DriveBatch<'a>,
    /// The versions written in this batch, shown by the view once flushed.
    written: BTreeMap<String, PathVersion>,
    /// Our clock when the batch began (ms since the Unix epoch; `None` before 1970), in every
    /// version record it writes: its writes become visible together, so a checkout by time
    /// ([`CoDrive::version_at_time`]) takes all of them or none.
    time: Option<u64>,
}

impl<'a> CoBatch<'a> {
    pub(super) async fn new(co: &'a CoDrive, view: ViewSlot<'a>) -> Result<Self, CoDriveError> {
        if !view.is_writer(&co.own.key()) {
            return Err(CoDriveError::NotAWriter(co.own.key()));
        }
        Ok(Self {
            co,
            view,
            batch: co.own.batch().await?,
            written: BTreeMap::new(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
        })
    }

    /// The version of `p` this batch supersedes: its own latest, else the view's winner.
    fn current(&self, p: &str) -> Result<Option<PathVersion>, CoDriveError> {
        if let Some(v) = self.written.get(p) {
            return Ok(Some(v.clone()));
        }
        Ok(self.view.resolved(p)?.map(|r| r.winner))
    }

    /// Every version of `p` a new version must supersede (all concurrent ones).
    fn seen(&self, p: &str) -> Result<Vec<PathVersion>, CoDriveError> {
        if let Some(v) = self.written.get(p) {
            return Ok(vec![v.clone()]);
        }
        Ok(match self.view.resolved(p)? {
            Some(r) if r.conflicts.is_empty() => vec![r.winner],
            Some(r) => r.conflicts,
            None => Vec::new(),
        })
    }

    /// Walks the index to both keys a write of `p` touches before any content is written: on a
    /// damaged db the write fails here, not after appending a blob no entry will point at.
    async fn prepare(&self, p: &str) -> Result<(), CoDriveError> {
        self.co.own.entry(p).await?;
        self.co
            .own
            .db()
            .get(&records::version_key(p))
            .await
            .map_err(DriveError::from)?;
        Ok(())
    }

    /// Adds a version of normalized path `p` (`None`: a delete) with its version record.
    async fn add(&mut self, p: String, entry: Option<Entry>) -> Result<PathVersion, CoDriveError> {
        match &entry {
            Some(e) => {
                self.batch.put_entry(p.clone(), e.clone()).await?;
            }
            None => {
                self.batch.del(&p).await?;
            }
        }
        let seq = self.batch.version();
        let clock = view::next_clock(self.co.own.key(), seq, self.seen(&p)?.iter());
        let time = self.time;
        self.batch
            .put_raw(
                &records::version_key(&p),
                &records::encode_version(&clock, entry.is_none(), time),
            )
            .await?;
        let v = PathVersion {
            writer: self.co.own.key(),
            seq,
            clock,
            entry,
            time,
        };
        self.written.insert(p, v.clone());
        Ok(v)
    }

    /// Writes a whole file (stream large ones with [`CoBatch::writer`]).
    pub async fn put(
        &mut self,
        name: &str,
        data: &[u8],
        opts: PutOptions,
    ) -> Result<PathVersion, CoDriveError> {
        let mut w = self.writer(name, opts).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Starts a streaming write of the file `name`; its entry joins this batch on
    /// [`CoFileWriter::finish`].
    pub async fn writer(
        &mut self,
        name: &str,
        opts: PutOptions,
    ) -> Result<CoFileWriter<'_, 'a>, CoDriveError> {
        let path = path::normalize(name).map_err(DriveError::from)?;
        self.prepare(&path).await?;
        Ok(CoFileWriter {
            batch: BatchSlot::Lent(self),
            path,
            opts,
            content: Content::Small(Vec::new()),
        })
    }

    /// Writes a symlink `name` -> `target`.
    pub async fn symlink(&mut self, name: &str, target: &str) -> Result<PathVersion, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        self.add(p, Some(Entry::symlink(target.to_string()))).await
    }

    /// Deletes `name` (hiding every version of it we can see); `false` if nothing was visible.
    pub async fn del(&mut self, name: &str) -> Result<bool, CoDriveError> {
        let p = path::normalize(name).map_err(DriveError::from)?;
        if self.current(&p)?.is_none_or(|v| v.entry.is_none()) {
            return Ok(false);
        }
        self.add(p, None).await?;
        Ok(true)
    }

    /// Deletes every visible path under `folder` (and `folder` itself if it is a file); returns
    /// how many.
    pub async fn del_folder(&mut self, folder: &str) -> Result<usize, CoDriveError> {
        let f = path::folder(folder);
        let under = |p: &&String| path::is_under(p, &f);
        let mut candidates: BTreeSet<String> = self.view.paths_under(&f)?.into_iter().collect();
        candidates.extend(self.written.keys().filter(under).cloned());
        let mut n = 0;
        for p in candidates {
            if self.current(&p)?.is_some_and(|v| v.entry.is_some()) {
                self.add(p, None).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Paths written so far in this batch.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether nothing was written in this batch yet.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Appends the batch and fsyncs; returns the local writer's new version.
    pub async fn flush(self) -> Result<u64, CoDriveError> {
        let version = self.batch.flush().await?;
        // The index is brought forward from the appended blocks by its next read.
        let ViewSlot::Lent(view, frontier) = self.view else {
            return Ok(version);
        };
        // The view now is the one at the local writer's new length: the batch added only
        // versions that supersede everything of their paths the view had.
        frontier.0.insert(self.co.own.key(), version);
        // Copy-on-write: the cached view shared with other snapshots is not changed.
        let paths = &mut Arc::make_mut(view).paths;
        for (p, v) in self.written {
            // The new version saw every candidate of its path, so it supersedes them all.
            paths.insert(
                p,
                Resolved {
                    winner: v,
                    conflicts: Vec::new(),
                },
            );
        }
        Ok(version)
    }
}

#[derive(Debug)]
enum BatchSlot<'b, 'a> {
    Owned(Box<CoBatch<'a>>),
    Lent(&'b mut CoBatch<'a>),
}

impl<'a> BatchSlot<'_, 'a> {
    fn get(&mut self) -> &mut CoBatch<'a> {
        match self {
            Self::Owned(b) => b,
            Self::Lent(b) => b,
        }
    }
}

/// A file's content as it is written: held until it outgrows what a batch stages (so a small
/// file's blocks commit with its entry, one signature for the batch), then streamed.
#[derive(Debug)]
enum Content<'a> {
    Small(Vec<u8>),
    Streamed(BlobWriter<'a>),
}

/// A streaming file write to the co-drive, from [`CoBatch::writer`] or [`CoDrive::writer`].
#[derive(Debug)]
pub struct CoFileWriter<'b, 'a> {
    batch: BatchSlot<'b, 'a>,
    path: String,
    opts: PutOptions,
    content: Content<'a>,
}

impl CoFileWriter<'_, '_> {
    /// Appends bytes to the file's content.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), CoDriveError> {
        if let Content::Small(buf) = &mut self.content {
            if buf.len() + data.len() <= STAGE_MAX {
                buf.extend_from_slice(data);
                return Ok(());
            }
            // Too big to stage: what the batch staged takes its positions first, then this
            // file's blocks stream into the blobs core.
            let b = self.batch.get();
            b.batch.append_staged().await?;
            let co = b.co;
            let mut w = co.own.blobs().writer();
            w.write(buf).await.map_err(DriveError::from)?;
            self.content = Content::Streamed(w);
        }
        if let Content::Streamed(w) = &mut self.content {
            w.write(data).await.map_err(DriveError::from)?;
        }
        Ok(())
    }

    /// Finishes the content and adds the entry and its version record to the batch. A writer
    /// from [`CoDrive::writer`] then flushes its own batch, so the file is written.
    pub async fn finish(mut self) -> Result<PathVersion, CoDriveError> {
        let blob = match self.content {
            Content::Small(buf) => self.batch.get().batch.stage_blob(&buf).await?,
            Content::Streamed(w) => w.finish().await.map_err(DriveError::from)?,
        };
        let entry = Entry::file(blob, self.opts.executable, self.opts.metadata);
        match self.batch {
            BatchSlot::Lent(b) => b.add(self.path, Some(entry)).await,
            BatchSlot::Owned(mut b) => {
                let v = b.add(self.path, Some(entry)).await?;
                b.flush().await?;
                Ok(v)
            }
        }
    }
}
