//! uint24le length-prefixed framing (the transport frame of secret-stream) over a byte stream.
//!
//! This replaces `uint24le_framing` 0.2.0, which stalls on frames over 64 KiB, returns `Pending`
//! without a registered waker after a partial read, and never reports EOF
//! (docs/replication-notes.md §7.3).
//!
//! `hypercore_handshake::Cipher` panics (`todo!`) on most `Err` items from its I/O stream and
//! ignores `None`, so this stream never yields an `Err`: when reading ends (EOF, an I/O error,
//! an oversized frame, the idle timeout) the reason is *recorded* in the shared [`EndSlot`] and
//! the stream ends. The connection wrapper (`conn.rs`) reports it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Future, Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::backlog::{Backlog, SOCKET_LIMIT};
use super::TransportError;

/// Largest payload a uint24le length can announce.
pub(crate) const MAX_WIRE_FRAME: usize = (1 << 24) - 1;

/// Length of the secretstream header frame: a 32-byte stream id and a 24-byte header.
pub(crate) const HEADER_FRAME_LEN: usize = 56;

/// Bytes asked from the socket per read when no large frame is pending.
const READ_CHUNK: usize = 64 * 1024;

/// Buffered outbound bytes above which `poll_ready` waits for the socket.
const WRITE_HIGH_WATER: usize = SOCKET_LIMIT;

/// Where the framing leaves the reason the connection ended; the first reason wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndSlot(Arc<Mutex<Option<TransportError>>>);

impl EndSlot {
    /// Records `e` unless a reason is already there.
    pub(crate) fn record(&self, e: TransportError) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Takes the recorded reason.
    pub(crate) fn take(&self) -> Option<TransportError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Framing settings.
#[derive(Debug, Clone)]
pub(crate) struct FramingOptions {
    /// Largest frame accepted or sent (at most [`MAX_WIRE_FRAME`]).
    pub(crate) max_frame: usize,
    /// Reading ends with [`TransportError::Timeout`] when nothing arrives for this long, and
    /// writing with [`TransportError::Stalled`] when buffered bytes find no room in the socket
    /// for this long.
    pub(crate) idle_timeout: Option<Duration>,
    /// The 1-based number of the inbound frame that is the secretstream header (the 2nd for the
    /// Noise XX initiator, the 3rd for the responder). Its length is checked, because
    /// `hypercore_handshake` slices it without checking and would panic on a short one.
    pub(crate) header_frame: Option<u64>,
}

/// A uint24le-framed duplex stream of byte frames.
pub(crate) struct Framed<R, W> {
    rd: R,
    wr: W,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    opts: FramingOptions,
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// Runs while buffered bytes wait for the socket; reset by every write.
    stall_timer: Option<Pin<Box<Sleep>>>,
    backlog: Backlog,
    frames_in: u64,
    end: EndSlot,
    done: bool,
}

impl<R, W> std::fmt::Debug for Framed<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("buffered_in", &(self.rbuf.len() - self.rpos))
            .field("buffered_out", &(self.wbuf.len() - self.wpos))
            .field("frames_in", &self.frames_in)
            .field("done", &self.done)
            .finish()
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Framed<R, W> {
    /// Frames `rd`/`wr`. Must be called inside a tokio runtime (for the idle timer).
    pub(crate) fn new(
        rd: R,
        wr: W,
        mut opts: FramingOptions,
        end: EndSlot,
        backlog: Backlog,
    ) -> Self {
        opts.max_frame = opts.max_frame.min(MAX_WIRE_FRAME);
        let idle_timer = opts
            .idle_timeout
            .map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d)));
        Self {
            rd,
            wr,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            opts,
            idle_timer,
            stall_timer: None,
            backlog,
            frames_in: 0,
            end,
            done: false,
        }
    }

    fn finish(&mut self, e: TransportError) -> Poll<Option<io::Result<Vec<u8>>>> {
        tracing::debug!(reason = %e, "transport read side ended");
        self.done = true;
        self.end.record(e);
        self.rbuf = Vec::new();
        self.rpos = 0;
        Poll::Ready(None)
    }

    /// The next complete frame in the read buffer.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let avail = &self.rbuf[self.rpos..];
        if avail.len() < 3 {
            return Ok(None);
        }
        let len = usize::from(avail[0]) | usize::from(avail[1]) << 8 | usize::from(avail[2]) << 16;
        if len > self.opts.max_frame {
            return Err(TransportError::FrameTooLarge(len));
        }
        if avail.len() < 3 + len {
            return Ok(None);
        }
        let frame = avail[3..3 + len].to_vec();
        self.rpos += 3 + len;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        Ok(Some(frame))
    }

    /// How many more bytes the frame being received needs (at least a header's worth).
    fn wanted(&self) -> usize {
        let avail = &self.rbuf[self.rpos..];
        if avail.len() < 3 {
            return 3 - avail.len();
        }
        let len = usize::from(avail[0]) | usize::from(avail[1]) << 8 | usize::from(avail[2]) << 16;
        (3 + len).saturating_sub(avail.len())
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let start = self.wpos;
        let polled = self.write_some(cx);
        if self.wpos > start {
            self.stall_timer = None;
            self.backlog.socket_buffered(self.wbuf.len() - self.wpos);
        }
        match polled {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // The peer does not read: give up after the idle timeout rather than buffer
                // (upstream, the session stops sending while this buffer is full).
                if let Some(d) = self.opts.idle_timeout {
                    let t = self
                        .stall_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                    if t.as_mut().poll(cx).is_ready() {
                        let e = TransportError::Stalled(d);
                        tracing::debug!(reason = %e, "transport write side ended");
                        let copy = io::Error::new(io::ErrorKind::TimedOut, e.to_string());
                        self.end.record(e);
                        return Poll::Ready(Err(copy));
                    }
                }
                return Poll::Pending;
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        match Pin::new(&mut self.wr).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_failed(e))),
            other => other,
        }
    }

    /// Writes buffered bytes until the socket takes no more.
    fn write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.wr).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(self.write_failed(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection accepts no more data",
                    ))))
                }
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.write_failed(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Records a write error and returns a copy for the caller.
    fn write_failed(&self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.end.record(TransportError::Io(e));
        copy
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Stream for Framed<R, W> {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.take_frame() {
                Err(e) => return this.finish(e),
                Ok(Some(frame)) => {
                    this.frames_in += 1;
                    if Some(this.frames_in) == this.opts.header_frame
                        && frame.len() != HEADER_FRAME_LEN
                    {
                        return this.finish(TransportError::Handshake(format!(
                            "the secretstream header is {} bytes, not {HEADER_FRAME_LEN}",
                            frame.len()
                        )));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
            }
            if this.rpos > 0 {
                this.rbuf.drain(..this.rpos);
                this.rpos = 0;
            }
            let start = this.rbuf.len();
            let want = this.wanted().clamp(READ_CHUNK, 4 * READ_CHUNK);
            this.rbuf.resize(start + want, 0);
            let mut rb = ReadBuf::new(&mut this.rbuf[start..]);
            let polled = Pin::new(&mut this.rd).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.rbuf.truncate(start + n);
            match polled {
                Poll::Pending => {
                    if let Some(t) = this.idle_timer.as_mut() {
                        if t.as_mut().poll(cx).is_ready() {
                            return this.finish(TransportError::Timeout);
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return this.finish(TransportError::Io(e)),
                Poll::Ready(Ok(())) if n == 0 => {
                    let partial = this.rbuf.len();
                    let e = if partial == 0 {
                        TransportError::Closed
                    } else {
                        TransportError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the peer closed the connection inside a frame ({partial} bytes of it received)"),
                        ))
                    };
                    return this.finish(e);
                }
                Poll::Ready(Ok(())) => {
                    if let (Some(t), Some(d)) = (this.idle_timer.as_mut(), this.opts.idle_timeout) {
                        t.as_mut().reset(Instant::now() + d);
                    }
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Sink<Vec<u8>> for Framed<R, W> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Write what is buffered on every poll: `hypercore_protocol` flushes only right after
        // it sends, so bytes left over by a full socket would otherwise wait for the next
        // message (up to a keepalive interval).
        if self.wpos < self.wbuf.len() {
            match self.poll_write_out(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.wbuf.len() - self.wpos > WRITE_HIGH_WATER => {
                    return Poll::Pending
                }
                _ => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> io::Result<()> {
        let n = item.len();
        if n > self.opts.max_frame {
            self.end.record(TransportError::FrameTooLarge(n));
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                TransportError::FrameTooLarge(n),
            ));
        }
        if self.wpos > 0 && self.wpos >= self.wbuf.len() / 2 {
            let wpos = self.wpos;
            self.wbuf.drain(..wpos);
            self.wpos = 0;
        }
        self.wbuf
            .extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8]);
        self.wbuf.extend_from_slice(&item);
        self.backlog.socket_buffered(self.wbuf.len() - self.wpos);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_out(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_write_out(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.wr).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

    type TestFramed = Framed<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

    fn framed(io: DuplexStream, max_frame: usize, idle: Option<Duration>) -> (TestFramed, EndSlot) {
        let (rd, wr) = tokio::io::split(io);
        let end = EndSlot::default();
        let opts = FramingOptions {
            max_frame,
            idle_timeout: idle,
            header_frame: None,
        };
        (
            Framed::new(rd, wr, opts, end.clone(), Backlog::default()),
            end,
        )
    }

    async fn next(f: &mut TestFramed) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(5), f.next())
            .await
            .expect("framing must not hang")
            .map(|r| r.expect("the framing never yields Err"))
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_batched() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (mut f, end) = framed(a, 1 << 20, None);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        for frame in [&b"hello"[..], &big, b"", b"x"] {
            let n = frame.len();
            wire.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8]);
            wire.extend_from_slice(frame);
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
        assert_eq!(next(&mut f).await, None);
        assert!(matches!(end.take(), Some(TransportError::Closed)));
        assert_eq!(next(&mut f).await, None, "stays ended");
    }

    #[tokio::test]
    async fn oversized_inbound_frame_is_refused_without_buffering() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut f, end) = framed(a, 1000, None);
        b.write_all(&[0xe9, 0x03, 0x00, 1, 2, 3]).await.unwrap(); // 1001 bytes announced
        assert_eq!(next(&mut f).await, None);
        assert!(matches!(
            end.take(),
            Some(TransportError::FrameTooLarge(1001))
        ));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut f, end) = framed(a, 1000, None);
        b.write_all(&[10, 0, 0, 1, 2, 3]).await.unwrap();
        drop(b);
        assert_eq!(next(&mut f).await, None);
        match end.take() {
            Some(TransportError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("unexpected {other:?}"),
        }
        // EOF inside the 3-byte length
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut f, end) = framed(a, 1000, None);
        b.write_all(&[10, 0]).await.unwrap();
        drop(b);
        assert_eq!(next(&mut f).await, None);
        assert!(matches!(end.take(), Some(TransportError::Io(_))));
    }

    #[tokio::test]
    async fn idle_timeout_ends_reading() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut f, end) = framed(a, 1000, Some(Duration::from_millis(200)));
        // data keeps it alive ...
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.write_all(&[1, 0, 0, 7]).await.unwrap();
            assert_eq!(next(&mut f).await.unwrap(), vec![7]);
        }
        // ... silence ends it
        let t = Instant::now();
        assert_eq!(next(&mut f).await, None);
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(matches!(end.take(), Some(TransportError::Timeout)));
        drop(b);
    }

    #[tokio::test]
    async fn header_frame_length_is_checked() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (rd, wr) = tokio::io::split(a);
        let end = EndSlot::default();
        let opts = FramingOptions {
            max_frame: 1000,
            idle_timeout: None,
            header_frame: Some(2),
        };
        let mut f = Framed::new(rd, wr, opts, end.clone(), Backlog::default());
        b.write_all(&[2, 0, 0, 1, 2, 3, 0, 0, 1, 2, 3])
            .await
            .unwrap();
        assert_eq!(next(&mut f).await.unwrap(), vec![1, 2]);
        assert_eq!(next(&mut f).await, None);
        assert!(matches!(end.take(), Some(TransportError::Handshake(_))));
    }

    #[tokio::test]
    async fn sink_writes_frames_and_refuses_oversized() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut tx, _) = framed(a, 1000, None);
        let (mut rx, _) = framed(b, 1000, None);
        tx.send(b"abc".to_vec()).await.unwrap();
        tx.send(Vec::new()).await.unwrap();
        assert_eq!(next(&mut rx).await.unwrap(), b"abc");
        assert_eq!(next(&mut rx).await.unwrap(), b"");
        let e = tx.send(vec![0; 1001]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_stalls_the_writer() {
        // A 64 KiB pipe nobody reads: the framing buffers, reports it, and gives up after the
        // idle timeout with `Stalled`.
        let (a, _b) = tokio::io::duplex(1 << 16);
        let (rd, wr) = tokio::io::split(a);
        let end = EndSlot::default();
        let backlog = Backlog::default();
        let opts = FramingOptions {
            max_frame: 1 << 20,
            idle_timeout: Some(Duration::from_millis(200)),
            header_frame: None,
        };
        let mut f = Framed::new(rd, wr, opts, end.clone(), backlog.clone());
        let t = Instant::now();
        let mut sent = 0usize;
        let err = loop {
            let frame = vec![1u8; 100_000];
            match tokio::time::timeout(Duration::from_secs(10), f.send(frame)).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(e)) => break e,
                Err(_) => panic!("send neither finished nor failed"),
            }
            assert!(sent < 1000, "a writer nobody reads took {sent} frames");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(matches!(end.take(), Some(TransportError::Stalled(_))));
        assert!(backlog.socket_bytes() > 0);
    }

    #[tokio::test]
    async fn buffered_bytes_are_written_on_the_next_poll_ready() {
        use std::future::poll_fn;
        let (a, b) = tokio::io::duplex(1 << 10);
        let (mut tx, _) = framed(a, 1 << 20, None);
        let (mut rx, _) = framed(b, 1 << 20, None);
        // More than the pipe holds: the flush stays pending with bytes left over.
        Pin::new(&mut tx).start_send(vec![5; 4000]).unwrap();
        let flushed = poll_fn(|cx| Poll::Ready(Pin::new(&mut tx).poll_flush(cx))).await;
        assert!(flushed.is_pending());
        let reader = tokio::spawn(async move { next(&mut rx).await });
        // No flush, only readiness checks (what the protocol does when it has nothing to send).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() {
            assert!(
                Instant::now() < deadline,
                "buffered bytes were never written"
            );
            let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut tx).poll_ready(cx))).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(reader.await.unwrap().unwrap(), vec![5; 4000]);
    }
}
