//! Atomic drive batches: many entries, one db append (and one fsync). Small files' blobs are
//! staged and committed with the entries in one store commit (one signature for many files).

use cohd_format::{path, BlobId, Entry};
use tokio::sync::OwnedMutexGuard;

use super::{files_key, Drive, DriveEntry, DriveError, PutOptions};
use crate::bee::Batch;
use crate::blobs::{Blobs, StagedBlobs};
use crate::store::Durability;

/// Files up to this size are staged in a batch rather than appended one by one.
pub(crate) const STAGE_MAX: usize = 1 << 20;
/// Staged bytes appended at once.
const STAGE_FLUSH: u64 = 8 << 20;

/// A group of writes that lands in the db as one append. Blobs are written as the batch goes;
/// entries become visible together on [`DriveBatch::flush`].
#[derive(Debug)]
pub struct DriveBatch<'a> {
    drive: &'a Drive,
    bee: Batch,
    staged: StagedBlobs,
    _guard: OwnedMutexGuard<()>,
}

impl<'a> DriveBatch<'a> {
    pub(super) async fn new(
        drive: &'a Drive,
        guard: OwnedMutexGuard<()>,
    ) -> Result<Self, DriveError> {
        Ok(Self {
            drive,
            bee: drive.db.batch().await?,
            staged: StagedBlobs::default(),
            _guard: guard,
        })
    }

    /// Writes a file.
    pub async fn put(&mut self, name: &str, data: &[u8]) -> Result<DriveEntry, DriveError> {
        self.put_with(name, data, PutOptions::default()).await
    }

    /// Writes a file with options.
    pub async fn put_with(
        &mut self,
        name: &str,
        data: &[u8],
        opts: PutOptions,
    ) -> Result<DriveEntry, DriveError> {
        let path = path::normalize(name)?;
        let blob = if data.len() <= STAGE_MAX {
            self.stage_blob(data).await?
        } else {
            // Staged blobs hold the positions before this one's.
            self.append_staged().await?;
            self.drive.blobs.put(data).await?
        };
        let entry = Entry::file(blob, opts.executable, opts.metadata);
        self.put_entry(path, entry).await
    }

    /// Stages a small file's content (at most [`STAGE_MAX`] bytes) to commit with the batch's
    /// entries; returns its id.
    pub(crate) async fn stage_blob(&mut self, data: &[u8]) -> Result<BlobId, DriveError> {
        let id = self.drive.blobs.stage(&mut self.staged, data);
        if self.staged.bytes() >= STAGE_FLUSH {
            self.drive.blobs.append_staged(&mut self.staged).await?;
        }
        Ok(id)
    }

    /// Appends what is staged now: a blob streamed into the blobs core must come after it.
    pub(crate) async fn append_staged(&mut self) -> Result<(), DriveError> {
        Ok(self.drive.blobs.append_staged(&mut self.staged).await?)
    }

    /// Writes a raw entry (its blob must already be in the blobs core).
    pub async fn put_entry(
        &mut self,
        path: String,
        entry: Entry,
    ) -> Result<DriveEntry, DriveError> {
        let seq = self.bee.put(&files_key(&path), &entry.encode()).await?;
        Ok(DriveEntry { path, seq, entry })
    }

    /// Writes a symlink.
    pub async fn symlink(&mut self, name: &str, target: &str) -> Result<DriveEntry, DriveError> {
        let path = path::normalize(name)?;
        self.put_entry(path, Entry::symlink(target.to_string()))
            .await
    }

    /// Deletes a file; `false` if it did not exist.
    pub async fn del(&mut self, name: &str) -> Result<bool, DriveError> {
        let path = path::normalize(name)?;
        Ok(self.bee.del(&files_key(&path)).await?)
    }

    /// The version the next write in this batch gets.
    pub fn version(&self) -> u64 {
        self.bee.version()
    }

    /// Puts a raw key (another sub of the db, e.g. the co-drive's records).
    pub async fn put_raw(&mut self, key: &[u8], value: &[u8]) -> Result<u64, DriveError> {
        Ok(self.bee.put(key, value).await?)
    }

    /// Appends the batch and fsyncs; returns the new version.
    pub async fn flush(mut self) -> Result<u64, DriveError> {
        // The staged blobs and the entries commit together (blobs staged past the batch's
        // limit went before, named by nothing until now).
        let staged = Blobs::take_staged(&mut self.staged);
        let v = self
            .bee
            .flush_together_with(self.drive.blobs.core(), staged, Durability::Synced)
            .await?;
        self.drive.sync()?;
        self.drive.notify();
        Ok(v)
    }
}
