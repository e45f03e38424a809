//! Hyperblobs: file contents cut into 64 KiB blocks appended to the blobs core.
//!
//! A blob is addressed by a [`BlobId`]: where it starts (block and byte offset) and how long it
//! is. Writes stream: a [`BlobWriter`] appends groups of blocks as they fill, so a large file
//! never sits in memory whole, and one append (one signature) covers many blocks.

use crate::store::{Core, CoreError};
use cohd_format::BlobId;

/// Hyperblobs' block size.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Blocks per append while streaming: one signature and one oplog entry per 1 MiB.
const BLOCKS_PER_APPEND: usize = 16;

/// Errors of the blobs layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The hypercore failed.
    #[error("blobs core: {0}")]
    Core(String),
    /// A block of the blob is not stored locally.
    #[error("blob block {0} is not available locally")]
    NotAvailable(u64),
    /// The blob id does not match the blocks in the core.
    #[error("blob id does not match the blobs core (block {0})")]
    Mismatch(u64),
    /// The blobs core is read-only.
    #[error("the blobs core is read-only")]
    NotWritable,
    /// A download could not get a block from any connected peer (or none is connected).
    #[error("blob block {0} is not available from any connected peer")]
    Unavailable(u64),
}

/// Downloads `ranges` (from [`block_ranges`]) of each blobs core in `plan`, calling
/// `progress(done, total)` in blocks over all of them (`total`: the blocks that were missing);
/// returns how many arrived.
pub async fn download_plan(
    plan: &[(&Blobs, Vec<std::ops::Range<u64>>)],
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<u64, BlobError> {
    let total = plan
        .iter()
        .map(|(b, ranges)| b.core().missing_blocks(ranges))
        .sum();
    let mut done = 0;
    progress(done, total);
    let mut blocks = 0;
    for (b, ranges) in plan {
        blocks += b
            .download_with(ranges, &mut |n| {
                done += n;
                progress(done, total);
            })
            .await?;
    }
    Ok(blocks)
}

/// The blocks of `ids`, in core order with overlaps merged: one pass over the core, each block
/// once.
pub fn block_ranges<'a>(ids: impl IntoIterator<Item = &'a BlobId>) -> Vec<std::ops::Range<u64>> {
    let mut ranges: Vec<std::ops::Range<u64>> = ids
        .into_iter()
        .map(|id| id.block_offset..id.block_offset.saturating_add(id.block_length))
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

fn core_err(e: CoreError) -> BlobError {
    match e {
        CoreError::NotWritable => BlobError::NotWritable,
        CoreError::Unavailable { index } => BlobError::Unavailable(index),
        e => BlobError::Core(e.to_string()),
    }
}

/// The blobs core of a drive.
#[derive(Debug, Clone)]
pub struct Blobs {
    core: Core,
}

impl Blobs {
    /// Wraps a core.
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// The core.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Starts a streaming write. Callers serialize writers (the drive holds its write lock):
    /// two interleaved writers would interleave blocks.
    pub fn writer(&self) -> BlobWriter<'_> {
        let info = self.core.info();
        BlobWriter {
            blobs: self,
            start_block: info.length,
            start_byte: info.byte_length,
            blocks: 0,
            bytes: 0,
            buf: Vec::new(),
            full: Vec::new(),
        }
    }

    /// Stages a whole blob for one later signed append ([`append_staged`](Self::append_staged))
    /// and returns its id at once (the caller holds the drive's write lock, so the positions
    /// after the core's length and what is staged are the blob's).
    pub fn stage(&self, staged: &mut StagedBlobs, data: &[u8]) -> BlobId {
        let info = self.core.info();
        let id = BlobId {
            block_offset: info.length + staged.blocks.len() as u64,
            byte_offset: info.byte_length + staged.bytes,
            block_length: data.len().div_ceil(BLOCK_SIZE) as u64,
            byte_length: data.len() as u64,
            block_map: false,
        };
        staged
            .blocks
            .extend(data.chunks(BLOCK_SIZE).map(<[u8]>::to_vec));
        staged.bytes += data.len() as u64;
        id
    }

    /// What is staged, taken out to be appended by the caller (with the entries naming it).
    pub fn take_staged(staged: &mut StagedBlobs) -> Vec<Vec<u8>> {
        std::mem::take(staged).blocks
    }

    /// Appends what is staged, in one signed append.
    pub async fn append_staged(&self, staged: &mut StagedBlobs) -> Result<(), BlobError> {
        if staged.blocks.is_empty() {
            return Ok(());
        }
        self.core
            .append_owned(std::mem::take(staged).blocks)
            .await
            .map_err(core_err)?;
        Ok(())
    }

    /// Writes a whole blob.
    pub async fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let mut w = self.writer();
        w.write(data).await?;
        w.finish().await
    }

    /// Fetches every block of `ids` that is not stored locally from connected peers (see
    /// [`Core::download`]); returns how many blocks arrived.
    pub async fn download<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a BlobId>,
    ) -> Result<u64, BlobError> {
        self.download_with(&block_ranges(ids), &mut |_| {}).await
    }

    /// [`download`](Self::download) of `ranges` from `block_ranges`, calling `arrived(n)` as
    /// blocks arrive.
    pub async fn download_with(
        &self,
        ranges: &[std::ops::Range<u64>],
        arrived: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, BlobError> {
        self.core
            .download_with(ranges.iter().cloned(), arrived)
            .await
            .map_err(core_err)
    }

    /// Drops the local copies of the blocks of `ids` (see [`Core::clear`]); returns how many
    /// were held.
    pub async fn clear<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a BlobId>,
    ) -> Result<u64, BlobError> {
        self.core.clear(&block_ranges(ids)).await.map_err(core_err)
    }

    /// Reads a whole blob.
    pub async fn get(&self, id: &BlobId) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::with_capacity(usize::try_from(id.byte_length).unwrap_or(0).min(1 << 30));
        self.read_range(id, 0, id.byte_length, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Streams bytes `start..start+len` of the blob (clamped to it) to `sink`, block by block.
    pub async fn read_range(
        &self,
        id: &BlobId,
        start: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<u64, BlobError> {
        let start = start.min(id.byte_length);
        let end = start.saturating_add(len).min(id.byte_length);
        let mut pos = 0u64; // byte position within the blob of the current block's start
        let mut written = 0;
        for i in 0..id.block_length {
            if pos >= end {
                break;
            }
            // A blob id from another writer may point past any core: refuse, do not overflow.
            let seq = id
                .block_offset
                .checked_add(i)
                .ok_or(BlobError::Mismatch(id.block_offset))?;
            // Blocks are 64 KiB except the last, so skip whole blocks before `start` unread.
            if i + 1 < id.block_length && pos + BLOCK_SIZE as u64 <= start {
                pos += BLOCK_SIZE as u64;
                continue;
            }
            let block = self
                .core
                .get(seq)
                .await
                .map_err(core_err)?
                .ok_or(BlobError::NotAvailable(seq))?;
            let bstart = pos;
            let bend = pos + block.len() as u64;
            if block.is_empty() || bend > id.byte_length {
                return Err(BlobError::Mismatch(seq));
            }
            let from = start.max(bstart) - bstart;
            let to = end.min(bend).saturating_sub(bstart);
            if from < to {
                sink(&block[from as usize..to as usize])?;
                written += to - from;
            }
            pos = bend;
        }
        if written != end - start {
            return Err(BlobError::Mismatch(id.block_offset));
        }
        Ok(written)
    }
}

/// Blobs staged by [`Blobs::stage`], not appended yet.
#[derive(Debug, Default)]
pub struct StagedBlobs {
    blocks: Vec<Vec<u8>>,
    bytes: u64,
}

impl StagedBlobs {
    /// Bytes staged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A streaming blob write; call [`BlobWriter::finish`] for the id.
#[derive(Debug)]
pub struct BlobWriter<'a> {
    blobs: &'a Blobs,
    start_block: u64,
    start_byte: u64,
    blocks: u64,
    bytes: u64,
    buf: Vec<u8>,
    full: Vec<Vec<u8>>,
}

impl BlobWriter<'_> {
    /// Adds bytes.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        while !data.is_empty() {
            let n = (BLOCK_SIZE - self.buf.len()).min(data.len());
            if self.buf.capacity() - self.buf.len() < n {
                // Doubling, never past a block: a small file's block is no larger than the
                // file (a 4 KiB put allocated a whole 64 KiB block, fresh pages and all). Once
                // a block has filled, the file is large: the next block is allocated whole.
                let large = self.blocks > 0 || !self.full.is_empty();
                let want = if large {
                    BLOCK_SIZE
                } else {
                    (self.buf.len() + n)
                        .max(self.buf.capacity() * 2)
                        .min(BLOCK_SIZE)
                };
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == BLOCK_SIZE {
                self.full.push(std::mem::take(&mut self.buf));
                if self.full.len() >= BLOCKS_PER_APPEND {
                    self.append_full().await?;
                }
            }
        }
        Ok(())
    }

    async fn append_full(&mut self) -> Result<(), BlobError> {
        if self.full.is_empty() {
            return Ok(());
        }
        let full = std::mem::take(&mut self.full);
        let (blocks, bytes) = (
            full.len() as u64,
            full.iter().map(|b| b.len() as u64).sum::<u64>(),
        );
        self.blobs.core.append_owned(full).await.map_err(core_err)?;
        self.blocks += blocks;
        self.bytes += bytes;
        Ok(())
    }

    /// Appends what is buffered and returns the blob's id.
    pub async fn finish(self) -> Result<BlobId, BlobError> {
        let blobs = self.blobs;
        let (id, pending) = self.finish_pending();
        if !pending.is_empty() {
            blobs.core.append_owned(pending).await.map_err(core_err)?;
        }
        Ok(id)
    }

    /// The blob's id, and its last blocks, not appended yet: the caller appends them, with
    /// the entry that names the blob ([`Core::append_together`]), so that a small file and its
    /// entry commit at once.
    pub fn finish_pending(mut self) -> (BlobId, Vec<Vec<u8>>) {
        if !self.buf.is_empty() {
            self.full.push(std::mem::take(&mut self.buf));
        }
        let pending = std::mem::take(&mut self.full);
        self.blocks += pending.len() as u64;
        self.bytes += pending.iter().map(|b| b.len() as u64).sum::<u64>();
        let id = BlobId {
            block_offset: self.start_block,
            byte_offset: self.start_byte,
            block_length: self.blocks,
            byte_length: self.bytes,
            block_map: false,
        };
        (id, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// A small file's block is allocated as large as what it holds (doubling while streamed),
    /// never a whole 64 KiB block; a large file's blocks after the first are allocated whole.
    #[tokio::test]
    async fn a_small_blob_allocates_a_small_block() {
        let store = Store::memory();
        let blobs = Blobs::new(store.open_named("blobs").await.unwrap());
        let mut w = blobs.writer();
        w.write(&[1; 4096]).await.unwrap();
        let (_, pending) = w.finish_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].len(), pending[0].capacity()), (4096, 4096));
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = blobs.writer();
        for chunk in data.chunks(1000) {
            w.write(chunk).await.unwrap();
        }
        let (id, pending) = w.finish_pending();
        assert_eq!(pending.concat(), data);
        assert_eq!(pending[0].capacity(), BLOCK_SIZE);
        // The second block of a large file: allocated whole at once, not grown.
        assert_eq!(pending[1].len(), 70_000 - BLOCK_SIZE);
        assert_eq!(pending[1].capacity(), BLOCK_SIZE);
        assert_eq!((id.block_length, id.byte_length), (2, 70_000));
    }

    #[tokio::test]
    async fn put_get_ranges() {
        let store = Store::memory();
        let blobs = Blobs::new(store.open_named("blobs").await.unwrap());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let a = blobs.put(b"hello").await.unwrap();
        let b = blobs.put(&data).await.unwrap();
        let e = blobs.put(b"").await.unwrap();
        assert_eq!((a.block_offset, a.block_length, a.byte_length), (0, 1, 5));
        assert_eq!((b.block_offset, b.byte_offset, b.block_length), (1, 5, 4));
        assert_eq!((e.block_offset, e.block_length, e.byte_length), (5, 0, 0));
        assert_eq!(blobs.get(&b).await.unwrap(), data);
        assert_eq!(blobs.get(&e).await.unwrap(), b"");
        for (s, l) in [
            (0, 10),
            (65_530, 20),
            (131_072, 70_000),
            (199_999, 5),
            (300_000, 1),
        ] {
            let mut got = Vec::new();
            blobs
                .read_range(&b, s, l, |c| {
                    got.extend_from_slice(c);
                    Ok(())
                })
                .await
                .unwrap();
            let s = (s as usize).min(data.len());
            let end = (s + l as usize).min(data.len());
            assert_eq!(got, &data[s..end]);
        }
        let bad = BlobId {
            byte_length: 999_999,
            ..b
        };
        assert!(blobs.get(&bad).await.is_err());
    }
}
