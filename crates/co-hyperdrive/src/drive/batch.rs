//! Atomic drive batches: many entries, one db append (and one fsync).

use cohd_format::{path, Entry};
use tokio::sync::OwnedMutexGuard;

use super::{files_key, Drive, DriveEntry, DriveError, PutOptions};
use crate::bee::Batch;

/// A group of writes that lands in the db as one append. Blobs are written as the batch goes;
/// entries become visible together on [`DriveBatch::flush`].
#[derive(Debug)]
pub struct DriveBatch<'a> {
    drive: &'a Drive,
    bee: Batch,
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
        let blob = self.drive.blobs.put(data).await?;
        let entry = Entry::file(blob, opts.executable, opts.metadata);
        self.put_entry(path, entry).await
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
    pub async fn flush(self) -> Result<u64, DriveError> {
        let v = self.bee.flush().await?;
        self.drive.sync()?;
        self.drive.notify();
        Ok(v)
    }
}
