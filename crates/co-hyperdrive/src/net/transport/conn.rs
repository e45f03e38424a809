//! The stream under `hypercore_protocol::Protocol`:
//! TCP -> uint24le framing -> Noise XX + secretstream (`hypercore_handshake::Cipher`) -> [`Conn`]
//! -> `Protocol`.
//!
//! [`Conn`] implements `CipherTrait` itself so that it can
//! - normalize every inbound protomux frame and every outbound Extension (`wire.rs`);
//! - report the end of the connection (EOF, I/O errors, timeouts, oversized frames) as an error
//!   event: `Cipher` ignores them, so `Protocol` would otherwise never end;
//! - keep reporting that error on every later poll, so a `Protocol` polled again never hangs;
//! - bound the handshake by a deadline and send secret-stream keepalives (an empty encrypted
//!   message) after `keepalive` without sending;
//! - contain the panics `hypercore_handshake` has on some malformed input (a bad secretstream
//!   header, its unfinished-code panics): a panic inside the `Cipher` ends the connection with an error.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Future, Sink, Stream};
use hypercore_handshake::state_machine::PUBLIC_KEYLEN;
use hypercore_handshake::{Cipher, CipherEvent, CipherTrait};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, Sleep};

use super::backlog::Backlog;
use super::framing::EndSlot;
use super::wire::{self, Inbound};
use super::TransportError;

/// Bytes secretstream adds to each message: an encrypted tag byte and a 16-byte MAC.
pub(crate) const SECRETSTREAM_OVERHEAD: usize = 17;

/// Settings of one [`Conn`].
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
    pub(crate) keepalive: Option<Duration>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) max_frame: usize,
}

/// See the module documentation.
pub(crate) struct Conn {
    inner: Cipher,
    end: EndSlot,
    /// Normalized inbound frames not yet handed to `Protocol`.
    pending: VecDeque<Vec<u8>>,
    wire: Inbound,
    /// Our local channel id -> discovery key, from our outbound Opens (to resolve Rejects).
    opened: HashMap<u64, [u8; 32]>,
    rejected: UnboundedSender<[u8; 32]>,
    backlog: Backlog,
    opts: ConnOptions,
    keepalive_timer: Option<Pin<Box<Sleep>>>,
    handshake_timer: Option<Pin<Box<Sleep>>>,
    /// Once set, the connection is over: every poll reports this.
    failed: Option<TransportError>,
    /// Whether the remote public key was seen (see the end of `poll_next`).
    remote_known: bool,
    /// Whether the `Cipher` was seen ready (handshake and both headers done). It cannot tell
    /// after failing: its state is then `Invalid`.
    ready_seen: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("initiator", &CipherTrait::is_initiator(&self.inner))
            .field("ready", &self.inner.ready())
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Conn {
    /// Wraps a `Cipher` whose I/O is a `Framed` reporting into `end`. Needs a tokio runtime.
    pub(crate) fn new(
        inner: Cipher,
        end: EndSlot,
        opts: ConnOptions,
        rejected: UnboundedSender<[u8; 32]>,
        backlog: Backlog,
    ) -> Self {
        let keepalive_timer = opts
            .keepalive
            .map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d)));
        let handshake_timer = opts
            .handshake_timeout
            .map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d)));
        Self {
            inner,
            end,
            pending: VecDeque::new(),
            wire: Inbound::default(),
            opened: HashMap::new(),
            rejected,
            backlog,
            opts,
            keepalive_timer,
            handshake_timer,
            failed: None,
            remote_known: false,
            ready_seen: false,
        }
    }

    /// Ends the connection with `e` (unless it already ended) and returns the error to report.
    fn fail(&mut self, e: TransportError) -> io::Error {
        let e = self.failed.get_or_insert(e);
        e.duplicate().into_io()
    }

    /// The error to report for `e`, an error event or `Err` of the `Cipher`: what the framing
    /// recorded if anything (the `Cipher` loses the cause), else `e` classified by the stage.
    fn cipher_failed(&mut self, e: io::Error) -> io::Error {
        let err = self.end.take().unwrap_or_else(|| {
            if self.ready_seen {
                TransportError::Protocol(format!("cannot decrypt: {e}"))
            } else {
                TransportError::Handshake(e.to_string())
            }
        });
        self.fail(err)
    }

    fn cipher_panicked(&mut self, msg: String) -> io::Error {
        tracing::debug!(panic = %msg, "hypercore_handshake panicked; ending the connection");
        let err = self.end.take().unwrap_or_else(|| {
            if self.ready_seen {
                TransportError::Protocol(format!("secret-stream failed: {msg}"))
            } else {
                TransportError::Handshake(msg)
            }
        });
        self.fail(err)
    }

    /// Runs `f` on the `Cipher`, containing a panic.
    fn guarded<T>(&mut self, f: impl FnOnce(Pin<&mut Cipher>) -> T) -> Result<T, String> {
        self.ready_seen |= self.inner.ready();
        let inner = &mut self.inner;
        let out = catch_unwind(AssertUnwindSafe(|| f(Pin::new(inner))));
        if out.is_ok() {
            self.ready_seen |= self.inner.ready();
        }
        out.map_err(|p| panic_message(&*p))
    }

    /// Handshake deadline and keepalives.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        let handshaken = self.inner.handshake_hash().is_some();
        if handshaken {
            self.handshake_timer = None;
        } else if let Some(t) = self.handshake_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                let after = self.opts.handshake_timeout.unwrap_or_default();
                return Err(self.fail(TransportError::NoHandshake(after)));
            }
        }
        if !handshaken {
            return Ok(());
        }
        let (Some(every), Some(timer)) = (self.opts.keepalive, self.keepalive_timer.as_mut())
        else {
            return Ok(());
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        timer.as_mut().reset(Instant::now() + every);
        let _ = timer.as_mut().poll(cx); // registers the waker for the next deadline
                                         // An empty plaintext: on the wire uint24le(17) and 17 bytes of tag and MAC. JS
                                         // secret-stream drops it; protomux ignores empty frames anyway.
        match self.guarded(|c| {
            c.start_send(Vec::new())?;
            Ok::<_, io::Error>(())
        }) {
            Err(msg) => return Err(self.cipher_panicked(msg)),
            Ok(Err(e)) => return Err(self.cipher_failed(e)),
            Ok(Ok(())) => {}
        }
        tracing::trace!("keepalive sent");
        match self.guarded(|c| c.poll_flush(cx)) {
            Err(msg) => Err(self.cipher_panicked(msg)),
            Ok(Poll::Ready(Err(e))) => Err(self.cipher_failed(e)),
            Ok(_) => Ok(()),
        }
    }

    fn reset_keepalive(&mut self) {
        if let (Some(every), Some(timer)) = (self.opts.keepalive, self.keepalive_timer.as_mut()) {
            timer.as_mut().reset(Instant::now() + every);
        }
    }

    /// Normalizes one decrypted frame into `pending`.
    fn on_frame(&mut self, frame: &[u8]) -> Result<(), io::Error> {
        let n = self
            .wire
            .normalize(frame)
            .map_err(|e| self.fail(TransportError::Protocol(e.0)))?;
        self.pending.extend(n.frames);
        for id in n.rejected {
            match self.opened.remove(&id) {
                Some(dk) => {
                    tracing::debug!(channel = id, "the remote rejected our Open");
                    let _ = self.rejected.send(dk);
                }
                None => tracing::debug!(channel = id, "Reject of a channel we did not open"),
            }
        }
        Ok(())
    }
}

impl Stream for Conn {
    type Item = CipherEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CipherEvent>> {
        let this = &mut *self;
        if let Some(e) = &this.failed {
            return Poll::Ready(Some(CipherEvent::ErrStuff(e.duplicate().into_io())));
        }
        loop {
            if let Some(m) = this.pending.pop_front() {
                return Poll::Ready(Some(CipherEvent::Message(m)));
            }
            if let Err(e) = this.poll_timers(cx) {
                return Poll::Ready(Some(CipherEvent::ErrStuff(e)));
            }
            let polled = match this.guarded(|c| c.poll_next(cx)) {
                Ok(p) => p,
                Err(msg) => {
                    return Poll::Ready(Some(CipherEvent::ErrStuff(this.cipher_panicked(msg))))
                }
            };
            match polled {
                Poll::Ready(Some(CipherEvent::Message(m))) => {
                    if let Err(e) = this.on_frame(&m) {
                        return Poll::Ready(Some(CipherEvent::ErrStuff(e)));
                    }
                }
                // Protocol ignores handshake payloads, and it never sends one.
                Poll::Ready(Some(CipherEvent::HandshakePayload(_))) => {}
                Poll::Ready(Some(CipherEvent::ErrStuff(e))) => {
                    return Poll::Ready(Some(CipherEvent::ErrStuff(this.cipher_failed(e))))
                }
                Poll::Ready(None) => {
                    let e = this.end.take().unwrap_or(TransportError::Closed);
                    return Poll::Ready(Some(CipherEvent::ErrStuff(this.fail(e))));
                }
                Poll::Pending => {
                    // The framing ends its stream without waking anyone: look for the reason.
                    if let Some(e) = this.end.take() {
                        return Poll::Ready(Some(CipherEvent::ErrStuff(this.fail(e))));
                    }
                    // `Protocol` checks for a finished handshake only at the start of its
                    // `poll_next`: when the handshake finished during this poll, have it polled
                    // again, or the accepting side never emits `Event::Handshake` until some
                    // other wake-up.
                    if !this.remote_known && this.inner.get_remote_static().is_some() {
                        this.remote_known = true;
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Sink<Vec<u8>> for Conn {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(e.duplicate().into_io()));
        }
        match this.guarded(|c| c.poll_ready(cx)) {
            Err(msg) => Poll::Ready(Err(this.cipher_panicked(msg))),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(this.cipher_failed(e))),
            Ok(other) => other,
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> io::Result<()> {
        let this = &mut *self;
        if let Some(e) = &this.failed {
            return Err(e.duplicate().into_io());
        }
        if let Some((id, dk)) = wire::outbound_open(&item) {
            this.opened.insert(id, dk);
        } else if let Some(id) = wire::outbound_close(&item) {
            this.opened.remove(&id);
        } else {
            this.backlog.data_passed(wire::outbound_data_bytes(&item));
        }
        let item = wire::normalize_outbound(item);
        let size = item.len() + SECRETSTREAM_OVERHEAD;
        if size > this.opts.max_frame {
            return Err(this.fail(TransportError::FrameTooLarge(size)));
        }
        this.reset_keepalive();
        match this.guarded(|c| c.start_send(item)) {
            Err(msg) => Err(this.cipher_panicked(msg)),
            Ok(Err(e)) => Err(this.cipher_failed(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(e.duplicate().into_io()));
        }
        match this.guarded(|c| c.poll_flush(cx)) {
            Err(msg) => Poll::Ready(Err(this.cipher_panicked(msg))),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(this.cipher_failed(e))),
            Ok(other) => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match this.guarded(|c| c.poll_close(cx)) {
            Err(msg) => Poll::Ready(Err(this.cipher_panicked(msg))),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(this.cipher_failed(e))),
            Ok(other) => other,
        }
    }
}

impl CipherTrait for Conn {
    fn remote_public_key(&self) -> Option<[u8; PUBLIC_KEYLEN]> {
        CipherTrait::remote_public_key(&self.inner)
    }
    fn local_public_key(&self) -> [u8; PUBLIC_KEYLEN] {
        CipherTrait::local_public_key(&self.inner)
    }
    fn handshake_hash(&self) -> Option<Vec<u8>> {
        CipherTrait::handshake_hash(&self.inner)
    }
    fn is_initiator(&self) -> bool {
        CipherTrait::is_initiator(&self.inner)
    }
}
