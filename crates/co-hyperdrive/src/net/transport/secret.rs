//! A [`MessageStream`] over a HyperDHT connection: peeroxide's [`SecretStream`] (Noise IK done by
//! the DHT, then secretstream over UDX) carries our Protomux frames, one message each, as JS
//! hyperswarm does. Only the encryption layer is theirs; the mux and the wire codec are ours.
//!
//! Unlike TCP there is no read-idle timeout: peeroxide swallows the empty keepalive messages,
//! so a quiet but live peer cannot be told from a dead one here. UDX's own retransmission
//! timeout ends dead streams; we still send keepalives, which JS peers' timeouts need.

use std::time::Duration;

use peeroxide_dht::hyperdht::PeerConnection;
use peeroxide_dht::secret_stream::{
    SecretStreamError, SecretStreamReadHalf, SecretStreamWriteHalf,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::noise::SECRETSTREAM_OVERHEAD;
use super::{
    AbortOnDrop, Backlog, MessageStream, StreamEnd, StreamInfo, TransportError, TransportOptions,
    INBOUND_MESSAGES, MAX_WIRE_FRAME,
};

/// How long a closing connection tries to tell the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs a connection a swarm made or accepted as a [`MessageStream`] (see
/// [`peer_connection`]; the rest of a `SwarmConnection`, its UDX runtime, is an empty handle).
pub fn swarm_connection(
    conn: peeroxide::SwarmConnection,
    local_public_key: [u8; 32],
    opts: &TransportOptions,
) -> MessageStream {
    peer_connection(conn.peer, local_public_key, opts)
}

/// Runs a HyperDHT connection as a [`MessageStream`]. The connection's socket, which the
/// stream needs but does not own, lives as long as the stream's task.
pub fn peer_connection(
    peer: PeerConnection,
    local_public_key: [u8; 32],
    opts: &TransportOptions,
) -> MessageStream {
    let info = StreamInfo {
        initiator: peer.stream.is_initiator(),
        handshake_hash: *peer.stream.handshake_hash(),
        remote_public_key: *peer.stream.remote_public_key(),
        local_public_key,
    };
    let max_message = opts
        .max_frame
        .min(MAX_WIRE_FRAME)
        .saturating_sub(SECRETSTREAM_OVERHEAD);
    let end = StreamEnd::default();
    let backlog = Backlog::default();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_MESSAGES);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn({
        let end = end.clone();
        let backlog = backlog.clone();
        let opts = opts.clone();
        async move {
            // The stream moves out; the rest of `peer` (its socket) stays until the end.
            let (rd, mut wr) = peer.stream.into_split();
            let e = tokio::select! {
                e = read_loop(rd, &in_tx, max_message) => e,
                e = write_loop(&mut wr, out_rx, &backlog, &opts) => e,
                () = end.wait() => TransportError::Closed,
            };
            let closed = matches!(e, TransportError::Closed);
            // Recorded before `in_tx` goes: a reader that sees the stream end finds the reason.
            end.fail(e);
            drop(in_tx);
            if closed {
                // A FIN, so the peer sees the end now rather than when its writes time out
                // (peeroxide keeps a peer it thinks connected from connecting again).
                let _ = timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
            }
        }
    });
    let mut s = MessageStream::new(info, in_rx, out_tx, end, backlog, max_message);
    s._task = Some(AbortOnDrop(task.abort_handle()));
    s
}

fn transport_error(e: SecretStreamError) -> TransportError {
    match e {
        SecretStreamError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            TransportError::Closed
        }
        SecretStreamError::Io(e) => TransportError::Io(e),
        SecretStreamError::MessageTooLarge { len } => TransportError::FrameTooLarge(len),
        other => TransportError::Protocol(other.to_string()),
    }
}

async fn read_loop<T: AsyncRead + Unpin + Send>(
    mut rd: SecretStreamReadHalf<ReadHalf<T>>,
    to_session: &mpsc::Sender<Vec<u8>>,
    max_message: usize,
) -> TransportError {
    loop {
        // Not wrapped in a timeout: peeroxide's read is not cancel-safe (a cancelled read loses
        // its partial frame). peeroxide allocates a frame on the peer's word, up to 16 MiB.
        let m = match rd.read().await {
            Ok(Some(m)) => m,
            Ok(None) => return TransportError::Closed,
            Err(e) => return transport_error(e),
        };
        if m.len() > max_message {
            return TransportError::FrameTooLarge(m.len() + SECRETSTREAM_OVERHEAD);
        }
        // Waits while the session is behind: UDX's window then pushes back on the peer.
        if to_session.send(m).await.is_err() {
            return TransportError::Closed;
        }
    }
}

async fn write_loop<T: AsyncWrite + Unpin + Send>(
    wr: &mut SecretStreamWriteHalf<WriteHalf<T>>,
    mut from_session: mpsc::UnboundedReceiver<Vec<u8>>,
    backlog: &Backlog,
    opts: &TransportOptions,
) -> TransportError {
    loop {
        let next = match opts.keepalive {
            Some(k) => match timeout(k, from_session.recv()).await {
                Ok(m) => m,
                // An empty message: the peer's secret stream drops it, its timeout restarts.
                Err(_) => Some(Vec::new()),
            },
            None => from_session.recv().await,
        };
        let Some(m) = next else {
            return TransportError::Closed; // the session is gone
        };
        let n = m.len();
        let write = wr.write(&m);
        let r = match opts.idle_timeout {
            Some(d) => match timeout(d, write).await {
                Ok(r) => r,
                Err(_) => return TransportError::Stalled(d),
            },
            None => write.await,
        };
        if let Err(e) = r {
            return transport_error(e);
        }
        backlog.written(n);
    }
}
