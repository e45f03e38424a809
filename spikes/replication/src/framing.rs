//! uint24le length-prefixed framing over a tokio TCP stream (the secret-stream transport frame).
//!
//! Replaces `uint24le_framing` 0.2.0, which (a) returns `Pending` without a registered waker after
//! a partial read, (b) never reports EOF, and (c) stops reading once its buffer is exactly full.
//! Here EOF and read errors are *recorded* in a shared slot and the stream ends (`None`), because
//! `hypercore_handshake::Cipher` panics (`todo!`) on most `Err` items and silently ignores `None`:
//! the connection wrapper (`conn.rs`) checks the slot and turns it into an error event.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Where the framing leaves the reason the read side ended.
pub type EndSlot = Arc<Mutex<Option<io::Error>>>;

const MAX_FRAME: usize = (1 << 24) - 1;

pub struct Framed {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: VecDeque<u8>,
    ended: EndSlot,
    done: bool,
}

impl Framed {
    pub fn new(tcp: TcpStream) -> (Self, EndSlot) {
        let _ = tcp.set_nodelay(true);
        let (rd, wr) = tcp.into_split();
        let ended: EndSlot = Arc::default();
        (
            Self {
                rd,
                wr,
                rbuf: Vec::new(),
                rpos: 0,
                wbuf: VecDeque::new(),
                ended: ended.clone(),
                done: false,
            },
            ended,
        )
    }

    fn end(&mut self, e: io::Error) -> Poll<Option<io::Result<Vec<u8>>>> {
        self.done = true;
        *self.ended.lock().unwrap() = Some(e);
        Poll::Ready(None)
    }

    fn take_frame(&mut self) -> Option<Vec<u8>> {
        let avail = &self.rbuf[self.rpos..];
        if avail.len() < 3 {
            return None;
        }
        let len = avail[0] as usize | (avail[1] as usize) << 8 | (avail[2] as usize) << 16;
        if avail.len() < 3 + len {
            return None;
        }
        let frame = avail[3..3 + len].to_vec();
        self.rpos += 3 + len;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > (1 << 20) {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        Some(frame)
    }
}

impl Stream for Framed {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(f) = this.take_frame() {
                return Poll::Ready(Some(Ok(f)));
            }
            let mut tmp = [0u8; 64 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.rd).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.end(e),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return this.end(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"))
                }
                Poll::Ready(Ok(())) => this.rbuf.extend_from_slice(rb.filled()),
            }
        }
    }
}

impl Framed {
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let (a, _) = self.wbuf.as_slices();
            match Pin::new(&mut self.wr).poll_write(cx, a) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "write 0")))
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.drain(..n);
                }
            }
        }
        Pin::new(&mut self.wr).poll_flush(cx)
    }
}

impl Sink<Vec<u8>> for Framed {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.len() > (4 << 20) {
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> io::Result<()> {
        if item.len() > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
        }
        let n = item.len();
        self.wbuf.extend([n as u8, (n >> 8) as u8, (n >> 16) as u8]);
        self.wbuf.extend(item);
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
