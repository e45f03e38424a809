//! The connection under replication, in layers:
//!
//! ```text
//! TcpStream
//!  └ framing.rs    uint24le frames; EOF, frame size limit
//!    └ noise.rs    Noise XX + secretstream, as JS @hyperswarm/secret-stream
//!      └ tcp.rs    one I/O task: keepalives, idle and stall timeouts, handshake deadline
//!        = MessageStream   an encrypted, framed message stream (any transport can make one)
//!          └ mux.rs        Protomux channels of protocol "hypercore/alpha", capabilities
//!            └ Channel     cohd_format::wire::Message in and out, one per core
//! ```
//!
//! Over HyperDHT, `secret.rs` makes the same `MessageStream` from peeroxide's secret stream
//! (UDX, Noise IK done by the DHT); the mux above it is the same.
//!
//! [`MessageStream`] is the seam: the session runs on it, whatever carried the Noise handshake
//! (TCP, or a HyperDHT connection: [`swarm_connection`]).
//!
//! Memory is bounded in both directions. Inbound, the I/O task stops reading the socket while
//! [`INBOUND_MESSAGES`] decrypted messages wait, and the mux while its channels hold
//! [`MAX_INBOUND_BYTES`] unread; a channel holding more than [`MAX_CHANNEL_QUEUE`] messages is a
//! flood. Outbound, every queued byte is counted in the connection's [`Backlog`]; the session
//! answers requests only while it is under its limit, and a socket that takes nothing for the
//! idle timeout ends the connection ([`TransportError::Stalled`]).

mod backlog;
mod framing;
mod mux;
mod noise;
mod secret;
mod tcp;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

pub use backlog::Backlog;
pub use framing::{write_frame, FrameReader, MAX_WIRE_FRAME};
pub use mux::{Channel, Mux, MuxEvent, MAX_CHANNEL_QUEUE, MAX_INBOUND_BYTES};
pub use noise::{handshake, SecretCipher, SECRETSTREAM_OVERHEAD};
pub use secret::{peer_connection, swarm_connection};

/// Default keepalive interval (JS hypercore: `setKeepAlive(5000)`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
/// Default idle timeout: four keepalive intervals.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the Noise handshake (or the idle timeout, when shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest frame, in or out.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// Decrypted messages waiting for the session before the socket is no longer read.
pub const INBOUND_MESSAGES: usize = 64;

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Send an empty encrypted message when nothing was sent for this long, so that peers with a
    /// receive timeout (hyperswarm sets one) keep the connection. `None`: never.
    pub keepalive: Option<Duration>,
    /// End the connection with [`TransportError::Timeout`] when nothing is received for this
    /// long. It also bounds the Noise handshake (at most [`HANDSHAKE_TIMEOUT`]), and the peer's
    /// reading: when what we send finds no room in the socket for this long, the connection
    /// ends with [`TransportError::Stalled`]. `None`: wait forever.
    pub idle_timeout: Option<Duration>,
    /// Largest frame accepted or sent, in bytes (secretstream ciphertext, 17 bytes more than the
    /// protomux frame). A larger inbound frame ends the connection with
    /// [`TransportError::FrameTooLarge`] before it is buffered; so does a larger outbound one.
    /// Capped at 16 MiB - 1, the most a uint24le length can say.
    pub max_frame: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            keepalive: Some(DEFAULT_KEEPALIVE),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl TransportOptions {
    /// How long the handshake may take.
    pub fn handshake_timeout(&self) -> Option<Duration> {
        // A peer that means to talk answers at once: a silent port or another protocol is told
        // apart in seconds, not after the idle timeout.
        self.idle_timeout.map(|t| t.min(HANDSHAKE_TIMEOUT))
    }
}

/// Why a connection ended or could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket failed, or closed inside a frame.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    /// The Noise handshake failed (not a hypercore peer, or a broken one).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A frame (inbound or outbound) is larger than `max_frame`.
    #[error("frame of {0} bytes is larger than allowed")]
    FrameTooLarge(usize),
    /// Nothing received for `idle_timeout`.
    #[error("connection timed out")]
    Timeout,
    /// No Noise handshake within this long: the other end is not a Hypercore peer, or does not
    /// answer.
    #[error("no Hypercore handshake within {0:?} (not a Hypercore peer, or it does not answer)")]
    NoHandshake(Duration),
    /// What we sent found no room in the socket for this long (`idle_timeout`): the peer does
    /// not read.
    #[error("the peer has not read what we sent for {0:?}")]
    Stalled(Duration),
    /// The peer closed the connection (or we did).
    #[error("connection closed by the peer")]
    Closed,
    /// The peer sent something that does not decode or violates the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer sent more messages on one channel than we hold unread.
    #[error("flooded us with over {limit} queued messages")]
    Flooded {
        /// The channel's discovery key.
        discovery_key: [u8; 32],
        /// How many messages a channel may hold.
        limit: usize,
    },
}

impl TransportError {
    /// A copy, for reporting the same end of a connection more than once.
    pub fn duplicate(&self) -> TransportError {
        match self {
            TransportError::Io(e) => TransportError::Io(io::Error::new(e.kind(), e.to_string())),
            TransportError::Handshake(s) => TransportError::Handshake(s.clone()),
            TransportError::FrameTooLarge(n) => TransportError::FrameTooLarge(*n),
            TransportError::Timeout => TransportError::Timeout,
            TransportError::NoHandshake(d) => TransportError::NoHandshake(*d),
            TransportError::Stalled(d) => TransportError::Stalled(*d),
            TransportError::Closed => TransportError::Closed,
            TransportError::Protocol(s) => TransportError::Protocol(s.clone()),
            TransportError::Flooded {
                discovery_key,
                limit,
            } => TransportError::Flooded {
                discovery_key: *discovery_key,
                limit: *limit,
            },
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        TransportError::Io(e)
    }
}

/// What the handshake established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// Whether we started the handshake (dialled).
    pub initiator: bool,
    /// The Noise handshake hash: the same on both ends, unique to this connection.
    pub handshake_hash: [u8; 64],
    /// The remote's static public key.
    pub remote_public_key: [u8; 32],
    /// Ours.
    pub local_public_key: [u8; 32],
}

/// Where a stream's end and its reason are kept; the first reason wins. Shared by the stream,
/// its senders, and the task that carries it.
#[derive(Debug, Clone)]
pub struct StreamEnd(Arc<EndInner>);

#[derive(Debug)]
struct EndInner {
    reason: Mutex<Option<TransportError>>,
    ended: watch::Sender<bool>,
}

impl Default for StreamEnd {
    fn default() -> Self {
        Self(Arc::new(EndInner {
            reason: Mutex::new(None),
            ended: watch::channel(false).0,
        }))
    }
}

impl StreamEnd {
    /// Ends the stream with `e`, unless it ended already.
    pub fn fail(&self, e: TransportError) {
        let mut r = self.0.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            tracing::debug!(reason = %e, "connection ended");
            *r = Some(e);
        }
        drop(r);
        self.0.ended.send_replace(true);
    }

    /// Whether the stream ended.
    pub fn is_ended(&self) -> bool {
        *self.0.ended.borrow()
    }

    /// Why it ended (`Closed` when it has not, or for no given reason).
    pub fn reason(&self) -> TransportError {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(TransportError::Closed, TransportError::duplicate)
    }

    /// Waits until the stream ended.
    pub async fn wait(&self) {
        let mut rx = self.0.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }
}

/// Sends plaintext messages on a [`MessageStream`]; never waits (see [`Backlog`] for how the
/// session keeps the queue short).
#[derive(Debug, Clone)]
pub struct MessageSender {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    backlog: Backlog,
    end: StreamEnd,
    max_message: usize,
}

impl MessageSender {
    /// Queues one message. A message over the frame limit ends the connection
    /// ([`TransportError::FrameTooLarge`]).
    pub fn send(&self, message: Vec<u8>) -> Result<(), TransportError> {
        if self.end.is_ended() {
            return Err(self.end.reason());
        }
        let n = message.len();
        if n > self.max_message {
            let e = TransportError::FrameTooLarge(n + SECRETSTREAM_OVERHEAD);
            self.end.fail(e.duplicate());
            return Err(e);
        }
        self.backlog.queued(n);
        if self.tx.send(message).is_err() {
            self.backlog.written(n);
            return Err(self.end.reason());
        }
        Ok(())
    }

    /// The connection's backlog.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An established, encrypted stream of messages (each one a protomux frame). Dropping it ends
/// the connection.
#[derive(Debug)]
pub struct MessageStream {
    info: StreamInfo,
    inbound: mpsc::Receiver<Vec<u8>>,
    sender: MessageSender,
    end: StreamEnd,
    _task: Option<AbortOnDrop>,
}

impl MessageStream {
    /// A stream over some other transport: `inbound` yields decrypted messages (closing it ends
    /// the stream; the reason goes to `end`), `outbound` takes messages to encrypt and send (the
    /// carrier reports the bytes it wrote with [`Backlog::written`]). `max_message` is the
    /// largest plaintext message either way.
    pub fn new(
        info: StreamInfo,
        inbound: mpsc::Receiver<Vec<u8>>,
        outbound: mpsc::UnboundedSender<Vec<u8>>,
        end: StreamEnd,
        backlog: Backlog,
        max_message: usize,
    ) -> Self {
        Self {
            info,
            inbound,
            sender: MessageSender {
                tx: outbound,
                backlog,
                end: end.clone(),
                max_message,
            },
            end,
            _task: None,
        }
    }

    /// What the handshake established.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next message; once the stream ended, why (every time).
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        if self.end.is_ended() {
            return Err(self.end.reason());
        }
        match self.inbound.recv().await {
            Some(m) => Ok(m),
            None => Err(self.end.reason()),
        }
    }

    /// A sender for this stream.
    pub fn sender(&self) -> MessageSender {
        self.sender.clone()
    }

    /// The stream's end.
    pub fn end(&self) -> &StreamEnd {
        &self.end
    }

    /// The connection's backlog.
    pub fn backlog(&self) -> &Backlog {
        &self.sender.backlog
    }
}

/// Runs the handshake on a connection we dialled (Noise XX initiator, with a fresh key pair:
/// `hypercore_handshake` cannot give an XX initiator a chosen static key).
pub async fn connect(
    stream: TcpStream,
    opts: &TransportOptions,
) -> Result<MessageStream, TransportError> {
    tcp::establish(stream, true, opts).await
}

/// Runs the handshake on a connection we accepted (Noise XX responder, fresh key pair).
pub async fn accept(
    stream: TcpStream,
    opts: &TransportOptions,
) -> Result<MessageStream, TransportError> {
    tcp::establish(stream, false, opts).await
}
