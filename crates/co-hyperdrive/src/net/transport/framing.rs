//! uint24le length-prefixed frames over a byte stream: the transport frame of secret-stream (a
//! Noise message, the stream header, or one encrypted message).
//!
//! [`FrameReader::next`] is cancel-safe (its state lives in the reader), so callers bound it with
//! `tokio::time::timeout` for the idle timeout. A frame announced larger than the limit is
//! refused before anything of it is buffered.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::TransportError;

/// Largest payload a uint24le length can announce.
pub const MAX_WIRE_FRAME: usize = (1 << 24) - 1;

/// Bytes asked from the socket per read at least (fewer syscalls for small frames), and at most
/// (a large frame is buffered in steps, not allocated whole on the peer's word).
const READ_CHUNK: usize = 64 * 1024;

/// Appends `frame` with its length prefix to `out`. `frame` must be at most [`MAX_WIRE_FRAME`]
/// bytes (callers check their own, lower, limit first).
pub fn write_frame(out: &mut Vec<u8>, frame: &[u8]) {
    debug_assert!(frame.len() <= MAX_WIRE_FRAME);
    let n = frame.len();
    out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8]);
    out.extend_from_slice(frame);
}

/// Reads frames from `R`.
#[derive(Debug)]
pub struct FrameReader<R> {
    rd: R,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames of at most `max_frame` bytes (capped at [`MAX_WIRE_FRAME`]).
    pub fn new(rd: R, max_frame: usize) -> Self {
        Self {
            rd,
            buf: Vec::new(),
            pos: 0,
            max_frame: max_frame.min(MAX_WIRE_FRAME),
        }
    }

    /// Changes the frame limit (the handshake reads with a small one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(MAX_WIRE_FRAME);
    }

    fn announced(&self) -> Option<usize> {
        let b = self.buf.get(self.pos..self.pos + 3)?;
        Some(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }

    /// The next frame. `Closed` on EOF between frames, `Io(UnexpectedEof)` inside one,
    /// `FrameTooLarge` for a frame over the limit.
    pub async fn next(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            let need = match self.announced() {
                Some(len) if len > self.max_frame => {
                    return Err(TransportError::FrameTooLarge(len))
                }
                Some(len) if self.buf.len() - self.pos >= 3 + len => {
                    let start = self.pos + 3;
                    let frame = self.buf[start..start + len].to_vec();
                    self.pos = start + len;
                    return Ok(frame);
                }
                Some(len) => 3 + len - (self.buf.len() - self.pos),
                None => 3 - (self.buf.len() - self.pos),
            };
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            // The room a large frame needed is not kept for the small ones after it.
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                self.buf = Vec::new();
            }
            self.buf.reserve(need.clamp(READ_CHUNK, 4 * READ_CHUNK));
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(TransportError::Io)?;
            if n == 0 {
                let partial = self.buf.len();
                return Err(if partial == 0 {
                    TransportError::Closed
                } else {
                    TransportError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the peer closed the connection inside a frame ({partial} bytes of it received)"
                        ),
                    ))
                });
            }
        }
    }

    /// Gives back the reader and the bytes read past the last frame.
    pub fn into_parts(mut self) -> (R, Vec<u8>) {
        self.buf.drain(..self.pos);
        (self.rd, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    async fn next<R: AsyncRead + Unpin>(f: &mut FrameReader<R>) -> Result<Vec<u8>, TransportError> {
        tokio::time::timeout(Duration::from_secs(5), f.next())
            .await
            .expect("framing must not hang")
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_batched() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut f = FrameReader::new(a, 1 << 20);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        for frame in [&b"hello"[..], &big, b"", b"x"] {
            write_frame(&mut wire, frame);
        }
        let writer = tokio::spawn(async move {
            // one byte, then odd-sized pieces, with pauses so the reader sees partial frames
            b.write_all(&wire[..1]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            for piece in wire[1..].chunks(7_919) {
                b.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            b
        });
        assert_eq!(next(&mut f).await.unwrap(), b"hello");
        assert_eq!(next(&mut f).await.unwrap(), big);
        assert_eq!(next(&mut f).await.unwrap(), b"");
        assert_eq!(next(&mut f).await.unwrap(), b"x");
        drop(writer.await.unwrap()); // clean EOF between frames
        assert!(matches!(next(&mut f).await, Err(TransportError::Closed)));
        assert!(
            matches!(next(&mut f).await, Err(TransportError::Closed)),
            "stays ended"
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_without_buffering() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut f = FrameReader::new(a, 1000);
        b.write_all(&[0xe9, 0x03, 0x00, 1, 2, 3]).await.unwrap(); // 1001 bytes announced
        assert!(matches!(
            next(&mut f).await,
            Err(TransportError::FrameTooLarge(1001))
        ));
        assert!(f.buf.capacity() < 1 << 20);
        // The largest a uint24 can say, against the largest limit: refused too, not allocated.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut f = FrameReader::new(a, usize::MAX);
        b.write_all(&[0xff, 0xff, 0xff, 0]).await.unwrap();
        drop(b);
        assert!(matches!(next(&mut f).await, Err(TransportError::Io(_))));
        assert!(f.buf.capacity() <= 4 * READ_CHUNK + 64);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        for partial in [&[10u8, 0, 0, 1, 2, 3][..], &[10, 0]] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let mut f = FrameReader::new(a, 1000);
            b.write_all(partial).await.unwrap();
            drop(b);
            match next(&mut f).await {
                Err(TransportError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut f = FrameReader::new(a, 1000);
        b.write_all(&[4, 0, 0, 1, 2]).await.unwrap();
        // Half a frame, then a timeout: the next call still gets the whole frame.
        assert!(tokio::time::timeout(Duration::from_millis(50), f.next())
            .await
            .is_err());
        b.write_all(&[3, 4]).await.unwrap();
        assert_eq!(next(&mut f).await.unwrap(), vec![1, 2, 3, 4]);
    }
}
