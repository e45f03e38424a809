//! The connection under replication: TCP, uint24le framing, Noise XX and secretstream, protomux
//! frames normalized for `hypercore-protocol`, keepalives and timeouts.
//!
//! ```text
//! TcpStream
//!  └ framing.rs                uint24le frames; EOF, errors, idle timeout, frame size limit
//!    └ hypercore_handshake::Cipher   Noise XX (Ed25519) + secretstream, as JS secret-stream
//!      └ conn.rs               normalizes frames (wire.rs), keepalives, handshake deadline,
//!                              reports the end of the connection, contains Cipher panics
//!        └ hypercore_protocol::Protocol   channels, capabilities, messages
//! ```
//!
//! [`connect`] and [`accept`] return as soon as the stream is wrapped; the Noise handshake then
//! runs while [`Connection::protocol`] is polled (its first event is `Event::Handshake`).
//! Details and the reasons for each layer: docs/replication-notes.md.
//!
//! # Using the `Protocol`
//!
//! - Poll it continuously (all I/O, timers and keepalives run inside its `poll_next`).
//! - When the connection ends (peer gone, timeout, malformed input, ...) it yields
//!   `Some(Err(io::Error))`; stop there. Polled again it does not hang: it yields an error again,
//!   possibly after an event it still had queued (e.g. a late `Event::Handshake`). It never
//!   yields `None`. `TransportError::from(io_error)` gives the typed reason back (errors of
//!   `hypercore-protocol` itself come back as `TransportError::Io`).
//! - The `Cipher` panics on a few malformed inputs; those panics are caught (`catch_unwind`), so
//!   the binary must not be built with `panic = "abort"`. The default panic hook still prints
//!   them to stderr.
//! - Open channels only after `Event::Handshake` (before it, the accepting side would send an
//!   Open without a capability).
//! - On a discovery key from [`Connection::rejected`], call `protocol.commands().close(dk)`, so
//!   that a later Open from the remote surfaces again as `Event::DiscoveryKey`.
//! - `Message::Extension::message` is the raw payload on the wire in both directions (JS
//!   `c.raw`), not a length-prefixed buffer, and inbound extension names are already
//!   decompressed (JS sends `""` for "the same name as the last one on this channel").
//! - The inbound Open of a channel id that is more than one above every id the remote used
//!   before, an unknown protocol's Open, and unknown message types are handled as protomux does
//!   (error, ignored, ignored).

mod backlog;
mod conn;
mod framing;
mod wire;

use std::io;
use std::time::Duration;

use hypercore_handshake::state_machine::hc_specific::generate_keypair;
use hypercore_handshake::state_machine::SecStream;
use hypercore_handshake::{Cipher, CipherIo};
use hypercore_protocol::Protocol;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

pub use backlog::Backlog;
use conn::{Conn, ConnOptions, SECRETSTREAM_OVERHEAD};
use framing::{EndSlot, Framed, FramingOptions, MAX_WIRE_FRAME};

/// Default keepalive interval (JS hypercore: `setKeepAlive(5000)`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
/// Default idle timeout: four keepalive intervals.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the Noise handshake (or the idle timeout, when shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest frame, in or out.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Send an empty encrypted message when nothing was sent for this long, so that peers with a
    /// receive timeout (hyperswarm sets one) keep the connection. `None`: never.
    pub keepalive: Option<Duration>,
    /// End the connection with [`TransportError::Timeout`] when nothing is received for this
    /// long. It also bounds the Noise handshake: without a completed handshake after this long
    /// the connection ends the same way; and the peer's reading: when what we send finds no
    /// room in the socket for this long, the connection ends with
    /// [`TransportError::Stalled`]. `None`: wait forever.
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
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer sent something that does not decode or violates the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TransportError {
    /// A copy, for reporting the same end of a connection more than once.
    pub(crate) fn duplicate(&self) -> TransportError {
        match self {
            TransportError::Io(e) => TransportError::Io(io::Error::new(e.kind(), e.to_string())),
            TransportError::Handshake(s) => TransportError::Handshake(s.clone()),
            TransportError::FrameTooLarge(n) => TransportError::FrameTooLarge(*n),
            TransportError::Timeout => TransportError::Timeout,
            TransportError::NoHandshake(d) => TransportError::NoHandshake(*d),
            TransportError::Stalled(d) => TransportError::Stalled(*d),
            TransportError::Closed => TransportError::Closed,
            TransportError::Protocol(s) => TransportError::Protocol(s.clone()),
        }
    }

    /// Wraps this error into an `io::Error` (which is what `Protocol` passes on); `From<io::Error>`
    /// unwraps it again.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            TransportError::Io(e) => e.kind(),
            TransportError::Timeout
            | TransportError::NoHandshake(_)
            | TransportError::Stalled(_) => io::ErrorKind::TimedOut,
            TransportError::Closed => io::ErrorKind::ConnectionAborted,
            TransportError::FrameTooLarge(_)
            | TransportError::Handshake(_)
            | TransportError::Protocol(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// The typed reason of an error the `Protocol` stream (or a `Channel`) returned: the
/// [`TransportError`] this transport reported, or `Io` for errors of `hypercore-protocol` itself.
impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|i| i.is::<TransportError>()) {
            return TransportError::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<TransportError>()) {
            Some(Ok(t)) => *t,
            Some(Err(other)) => TransportError::Io(io::Error::new(kind, other)),
            None => TransportError::Io(kind.into()),
        }
    }
}

/// A wrapped connection.
#[derive(Debug)]
pub struct Connection {
    /// The replication protocol; see the module documentation for how to drive it.
    pub protocol: Protocol,
    /// Discovery keys of channels we opened and the remote rejected (it does not have or want
    /// the core).
    pub rejected: UnboundedReceiver<[u8; 32]>,
    /// What we sent that has not reached the socket. Nothing under the `Protocol` pushes back,
    /// so the session reports the Data messages it sends (crate-internal) and waits for
    /// [`Backlog::ready`] before sending more.
    pub backlog: Backlog,
}

/// Wraps a connection we dialed: we are the Noise XX initiator (with a fresh key pair: an XX
/// initiator cannot present a chosen static key with `hypercore_handshake`).
pub async fn connect(
    stream: TcpStream,
    opts: &TransportOptions,
) -> Result<Connection, TransportError> {
    wrap(stream, true, opts)
}

/// Wraps a connection we accepted: we are the Noise XX responder, with a fresh key pair.
pub async fn accept(
    stream: TcpStream,
    opts: &TransportOptions,
) -> Result<Connection, TransportError> {
    wrap(stream, false, opts)
}

fn wrap(
    stream: TcpStream,
    initiator: bool,
    opts: &TransportOptions,
) -> Result<Connection, TransportError> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let (rd, wr) = stream.into_split();
    let max_frame = opts.max_frame.min(MAX_WIRE_FRAME);
    if max_frame <= SECRETSTREAM_OVERHEAD {
        return Err(TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("max_frame of {} bytes is too small", opts.max_frame),
        )));
    }
    let end = EndSlot::default();
    let backlog = Backlog::default();
    let framing = FramingOptions {
        max_frame,
        idle_timeout: opts.idle_timeout,
        header_frame: Some(if initiator { 2 } else { 3 }),
    };
    let io: Box<dyn CipherIo<Error = io::Error>> =
        Box::new(Framed::new(rd, wr, framing, end.clone(), backlog.clone()));
    let handshake = |e: hypercore_handshake::Error| TransportError::Handshake(e.to_string());
    let cipher = if initiator {
        Cipher::new(
            Some(io),
            SecStream::new_initiator_xx(&[]).map_err(handshake)?.into(),
        )
    } else {
        let keypair = generate_keypair().map_err(|e| TransportError::Handshake(e.to_string()))?;
        Cipher::new(
            Some(io),
            SecStream::new_responder_xx(&keypair, &[])
                .map_err(handshake)?
                .into(),
        )
    };
    let (tx, rejected) = tokio::sync::mpsc::unbounded_channel();
    let conn = Conn::new(
        cipher,
        end,
        ConnOptions {
            keepalive: opts.keepalive,
            // A peer that means to talk answers at once: a silent port or another protocol is
            // told apart in seconds, not after the idle timeout.
            handshake_timeout: opts.idle_timeout.map(|t| t.min(HANDSHAKE_TIMEOUT)),
            max_frame,
        },
        tx,
        backlog.clone(),
    );
    Ok(Connection {
        protocol: Protocol::new(Box::new(conn)),
        rejected,
        backlog,
    })
}
