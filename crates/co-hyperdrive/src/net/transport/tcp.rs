//! A [`MessageStream`] over TCP: the handshake (bounded by its deadline), then one task that
//! reads and one that writes, joined so that either ending ends both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::framing::{write_frame, FrameReader, MAX_WIRE_FRAME};
use super::noise::{handshake, SecretCipher, SECRETSTREAM_OVERHEAD};
use super::{
    AbortOnDrop, Backlog, MessageStream, StreamEnd, TransportError, TransportOptions,
    INBOUND_MESSAGES,
};

/// Plaintext bytes gathered into one socket write (fewer syscalls for many small messages).
const WRITE_BATCH: usize = 256 * 1024;

pub(super) async fn establish(
    stream: TcpStream,
    initiator: bool,
    opts: &TransportOptions,
) -> Result<MessageStream, TransportError> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let max_frame = opts.max_frame.min(MAX_WIRE_FRAME);
    if max_frame <= SECRETSTREAM_OVERHEAD {
        return Err(TransportError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("max_frame of {} bytes is too small", opts.max_frame),
        )));
    }
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, max_frame);
    let shake = handshake(&mut reader, &mut wr, initiator, max_frame);
    let (cipher, info) = match opts.handshake_timeout() {
        Some(d) => timeout(d, shake)
            .await
            .map_err(|_| TransportError::NoHandshake(d))??,
        None => shake.await?,
    };
    let end = StreamEnd::default();
    let backlog = Backlog::default();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_MESSAGES);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let cipher = Arc::new(Mutex::new(cipher));
    let task = tokio::spawn({
        let end = end.clone();
        let backlog = backlog.clone();
        let opts = opts.clone();
        async move {
            let e = tokio::select! {
                e = read_loop(reader, &cipher, &in_tx, opts.idle_timeout) => e,
                e = write_loop(wr, &cipher, out_rx, &backlog, &opts) => e,
                () = end.wait() => TransportError::Closed,
            };
            // Recorded before `in_tx` goes: a reader that sees the stream end finds the reason.
            end.fail(e);
            drop(in_tx);
        }
    });
    let mut s = MessageStream::new(
        info,
        in_rx,
        out_tx,
        end,
        backlog,
        max_frame - SECRETSTREAM_OVERHEAD,
    );
    s._task = Some(AbortOnDrop(task.abort_handle()));
    Ok(s)
}

fn lock(c: &Mutex<SecretCipher>) -> std::sync::MutexGuard<'_, SecretCipher> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_loop(
    mut reader: FrameReader<OwnedReadHalf>,
    cipher: &Mutex<SecretCipher>,
    to_session: &mpsc::Sender<Vec<u8>>,
    idle: Option<Duration>,
) -> TransportError {
    loop {
        let frame = match idle {
            Some(d) => match timeout(d, reader.next()).await {
                Ok(f) => f,
                Err(_) => Err(TransportError::Timeout),
            },
            None => reader.next().await,
        };
        let mut m = match frame {
            Ok(m) => m,
            Err(e) => return e,
        };
        if let Err(e) = lock(cipher).open(&mut m) {
            return e;
        }
        if m.is_empty() {
            continue; // a keepalive
        }
        // Waits while the session is behind: the socket is then not read, and TCP pushes back.
        if to_session.send(m).await.is_err() {
            return TransportError::Closed;
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    cipher: &Mutex<SecretCipher>,
    mut from_session: mpsc::UnboundedReceiver<Vec<u8>>,
    backlog: &Backlog,
    opts: &TransportOptions,
) -> TransportError {
    let mut buf = Vec::new();
    loop {
        let first = match opts.keepalive {
            Some(k) => match timeout(k, from_session.recv()).await {
                Ok(m) => m,
                // An empty message: JS secret-stream drops it, and its receive timeout restarts.
                Err(_) => Some(Vec::new()),
            },
            None => from_session.recv().await,
        };
        let Some(mut m) = first else {
            return TransportError::Closed; // the session is gone
        };
        let mut plain = 0;
        loop {
            plain += m.len();
            if let Err(e) = lock(cipher).seal(&mut m) {
                return e;
            }
            write_frame(&mut buf, &m);
            if buf.len() >= WRITE_BATCH {
                break;
            }
            match from_session.try_recv() {
                Ok(next) => m = next,
                Err(_) => break,
            }
        }
        if let Err(e) = write_all(&mut wr, &buf, opts.idle_timeout).await {
            return e;
        }
        backlog.written(plain);
        buf.clear();
        // Idle connections do not keep a batch's worth of memory each.
        if buf.capacity() > WRITE_BATCH / 4 {
            buf = Vec::new();
        }
    }
}

/// Writes `buf`, failing with `Stalled` when the socket takes nothing for `stall`.
async fn write_all(
    wr: &mut OwnedWriteHalf,
    buf: &[u8],
    stall: Option<Duration>,
) -> Result<(), TransportError> {
    let mut pos = 0;
    while pos < buf.len() {
        let n = match stall {
            Some(d) => timeout(d, wr.write(&buf[pos..]))
                .await
                .map_err(|_| TransportError::Stalled(d))?,
            None => wr.write(&buf[pos..]).await,
        }?;
        if n == 0 {
            return Err(TransportError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        pos += n;
    }
    Ok(())
}
