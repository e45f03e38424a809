//! A file-backed [`RandomAccess`] for hypercore's four storage files.
//!
//! `random-access-disk` fsyncs every write (about a thousand appends a second) and hops to the
//! blocking pool for each call. Ours writes with positional I/O straight into the page cache,
//! which already survives the death of the process, and fsyncs only when the store is flushed
//! (see `Store::flush`): durability against power loss is amortized over a batch or a command.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use random_access_storage::{BoxFuture, RandomAccess, RandomAccessError};

/// One storage file of one core.
#[derive(Debug)]
pub(crate) struct FileStorage {
    file: File,
    len: AtomicU64,
    dirty: AtomicBool,
}

impl FileStorage {
    pub(crate) fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(Self {
            file,
            len: AtomicU64::new(len),
            dirty: AtomicBool::new(false),
        }))
    }

    /// The file, for reads of our own (tree nodes).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// fsyncs the file if anything was written since the last sync.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    fn do_write(&self, offset: u64, data: &[u8]) -> Result<(), RandomAccessError> {
        self.file.write_all_at(data, offset)?;
        self.len
            .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn do_read(&self, offset: u64, length: u64) -> Result<Vec<u8>, RandomAccessError> {
        let len = self.len.load(Ordering::Acquire);
        let end = offset.checked_add(length);
        if end.is_none_or(|e| e > len) {
            return Err(RandomAccessError::OutOfBounds {
                offset,
                end,
                length: len,
            });
        }
        let n = usize::try_from(length).map_err(|_| RandomAccessError::OutOfBounds {
            offset,
            end,
            length: len,
        })?;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn do_del(&self, offset: u64, length: u64) -> Result<(), RandomAccessError> {
        let len = self.len.load(Ordering::Acquire);
        if offset >= len {
            return Ok(());
        }
        let end = offset.saturating_add(length).min(len);
        if end == len {
            return self.do_truncate(offset);
        }
        // Zero the range in bounded chunks; hypercore only deletes when clearing blocks.
        let zeros = vec![0u8; 64 * 1024];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn do_truncate(&self, length: u64) -> Result<(), RandomAccessError> {
        self.file.set_len(length)?;
        self.len.store(length, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }
}

impl RandomAccess for FileStorage {
    fn write(&self, offset: u64, data: &[u8]) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.do_write(offset, data)))
    }

    fn read(&self, offset: u64, length: u64) -> BoxFuture<Result<Vec<u8>, RandomAccessError>> {
        Box::pin(std::future::ready(self.do_read(offset, length)))
    }

    fn del(&self, offset: u64, length: u64) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.do_del(offset, length)))
    }

    fn truncate(&self, length: u64) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.do_truncate(length)))
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn sync_all(&self) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.sync().map_err(Into::into)))
    }
}

/// hypercore's bitfield file, kept our way. The crate's loader misreads files past one page
/// (see `core.rs`), so it is shown an empty file on open; what the crate flushes is OR-ed into
/// the file, and the store reads it itself (`recover.rs`) to know which blocks a core holds.
/// OR-ing only loses clears, which the store never makes; a block wrongly thought present
/// fails verification on read and is fetched again.
#[derive(Debug)]
pub(crate) struct Bitmap {
    file: Arc<FileStorage>,
}

impl Bitmap {
    pub(crate) fn new(file: Arc<FileStorage>) -> Self {
        Self { file }
    }

    fn or_write(&self, offset: u64, data: &[u8]) -> Result<(), RandomAccessError> {
        let len = self.file.len.load(Ordering::Acquire);
        let mut merged = data.to_vec();
        let have = len.saturating_sub(offset).min(data.len() as u64);
        if have > 0 {
            let old = self.file.do_read(offset, have)?;
            for (m, o) in merged.iter_mut().zip(old) {
                *m |= o;
            }
        }
        self.file.do_write(offset, &merged)
    }
}

impl RandomAccess for Bitmap {
    fn write(&self, offset: u64, data: &[u8]) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.or_write(offset, data)))
    }

    fn read(&self, offset: u64, length: u64) -> BoxFuture<Result<Vec<u8>, RandomAccessError>> {
        // The crate sees an empty file (len 0); nothing is there for it to read.
        Box::pin(std::future::ready(if length == 0 {
            Ok(Vec::new())
        } else {
            Err(RandomAccessError::OutOfBounds {
                offset,
                end: offset.checked_add(length),
                length: 0,
            })
        }))
    }

    fn del(&self, _offset: u64, _length: u64) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn truncate(&self, _length: u64) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn len(&self) -> u64 {
        0
    }

    fn sync_all(&self) -> BoxFuture<Result<(), RandomAccessError>> {
        Box::pin(std::future::ready(self.file.sync().map_err(Into::into)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStorage::open(&dir.path().join("x")).unwrap();
        f.write(10, b"hello").await.unwrap();
        assert_eq!(f.len(), 15);
        assert_eq!(f.read(10, 5).await.unwrap(), b"hello");
        assert_eq!(f.read(0, 10).await.unwrap(), vec![0; 10]);
        assert!(matches!(
            f.read(12, 5).await,
            Err(RandomAccessError::OutOfBounds { .. })
        ));
        assert!(f.read(u64::MAX, 2).await.is_err());
        f.del(10, 2).await.unwrap();
        assert_eq!(f.read(10, 5).await.unwrap(), b"\0\0llo");
        f.truncate(11).await.unwrap();
        assert_eq!(f.len(), 11);
        f.sync_all().await.unwrap();
        drop(f);
        let f = FileStorage::open(&dir.path().join("x")).unwrap();
        assert_eq!(f.len(), 11);
    }
}
