//! The connection under `hypercore_protocol::Protocol`: TCP -> uint24le framing -> Noise XX +
//! secretstream (`hypercore_handshake::Cipher`) -> this wrapper -> Protocol.
//!
//! The wrapper implements `CipherTrait` itself so it can:
//! - normalize every inbound protomux frame (`wire::normalize_inbound`) and outbound Extension;
//! - report EOF / read errors as `Event::ErrStuff` (Cipher ignores them, so Protocol never ends);
//! - send secret-stream keepalives (an empty encrypted message) after `keepalive` of send silence.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Future, Sink, Stream};
use hypercore_handshake::state_machine::hc_specific::generate_keypair;
use hypercore_handshake::state_machine::SecStream;
use hypercore_handshake::{Cipher, CipherEvent, CipherTrait};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::framing::{EndSlot, Framed};
use crate::wire::{normalize_inbound, normalize_outbound, InboundNotes};

pub struct Conn {
    inner: Cipher,
    ended: EndSlot,
    pending: VecDeque<CipherEvent>,
    keepalive: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    pub notes: Arc<Mutex<InboundNotes>>,
    pub stats: Arc<Mutex<Stats>>,
    /// local channel id -> discovery key, from our outbound Open frames
    opened: std::collections::HashMap<u64, [u8; 32]>,
    /// discovery keys whose Open the remote rejected; the session must Command::Close them so a
    /// later Open from the remote surfaces again as Event::DiscoveryKey
    rejected_tx: tokio::sync::mpsc::UnboundedSender<[u8; 32]>,
    pub rejected_rx: Option<tokio::sync::mpsc::UnboundedReceiver<[u8; 32]>>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub keepalives_in: u64,
    pub keepalives_out: u64,
}

impl Conn {
    /// `is_initiator`: the side that dialed. Both use Noise XX with a fresh Ed25519 key pair here
    /// (a real node would keep a stable identity key pair: see notes, it can't for initiators).
    pub fn new(tcp: TcpStream, is_initiator: bool, keepalive: Option<Duration>) -> io::Result<Self> {
        let (io, ended): (Box<dyn hypercore_handshake::CipherIo<Error = io::Error>>, EndSlot) =
            if std::env::var_os("SPIKE_OLD_FRAMING").is_some() {
                // diagnostic: the crate-provided framing (stalls on partial reads, no EOF)
                use tokio_util::compat::TokioAsyncReadCompatExt;
                let _ = tcp.set_nodelay(true);
                (
                    Box::new(uint24le_framing::Uint24LELengthPrefixedFraming::new(tcp.compat())),
                    EndSlot::default(),
                )
            } else {
                let (framed, ended) = Framed::new(tcp);
                (Box::new(framed), ended)
            };
        let inner = if is_initiator {
            let ss = SecStream::new_initiator_xx(&[]).map_err(io::Error::other)?;
            Cipher::new(Some(io), ss.into())
        } else {
            let kp = generate_keypair().map_err(io::Error::other)?;
            let ss = SecStream::new_responder_xx(&kp, &[]).map_err(io::Error::other)?;
            Cipher::new(Some(io), ss.into())
        };
        let (rejected_tx, rejected_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            opened: Default::default(),
            rejected_tx,
            rejected_rx: Some(rejected_rx),
            inner,
            ended,
            pending: VecDeque::new(),
            keepalive,
            timer: Box::pin(tokio::time::sleep(keepalive.unwrap_or(Duration::from_secs(3600)))),
            notes: Arc::default(),
            stats: Arc::default(),
        })
    }

    fn reset_timer(&mut self) {
        if let Some(k) = self.keepalive {
            self.timer.as_mut().reset(Instant::now() + k);
        }
    }

    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        if self.keepalive.is_none() || self.inner.handshake_hash().is_none() {
            return;
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            // An empty plaintext message: on the wire uint24le(17) + 17 bytes (tag + MAC).
            if Pin::new(&mut self.inner).start_send(Vec::new()).is_ok() {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                self.stats.lock().unwrap().keepalives_out += 1;
            }
            self.reset_timer();
            let _ = self.timer.as_mut().poll(cx); // register the waker for the next deadline
        }
    }
}

impl Stream for Conn {
    type Item = CipherEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CipherEvent>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.pending.pop_front() {
                return Poll::Ready(Some(ev));
            }
            this.poll_keepalive(cx);
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(CipherEvent::Message(m))) => {
                    let mut st = this.stats.lock().unwrap();
                    st.frames_in += 1;
                    if m.is_empty() {
                        st.keepalives_in += 1;
                    }
                    drop(st);
                    if std::env::var_os("SPIKE_DUMP").is_some() {
                        eprintln!("[dump in ] {}", hex::encode(&m[..m.len().min(200)]));
                    }
                    if std::env::var_os("SPIKE_RAW").is_some() {
                        // diagnostic: hand JS frames to hypercore-protocol unchanged
                        this.pending.push_back(CipherEvent::Message(m));
                        continue;
                    }
                    let mut notes = this.notes.lock().unwrap();
                    let before = notes.rejected.len();
                    for f in normalize_inbound(&m, &mut notes) {
                        this.pending.push_back(CipherEvent::Message(f));
                    }
                    for id in notes.rejected[before..].to_vec() {
                        if let Some(dk) = this.opened.remove(&id) {
                            let _ = this.rejected_tx.send(dk);
                        }
                    }
                }
                Poll::Ready(Some(other)) => return Poll::Ready(Some(other)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if let Some(e) = this.ended.lock().unwrap().take() {
                        return Poll::Ready(Some(CipherEvent::ErrStuff(e)));
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
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> io::Result<()> {
        self.reset_timer();
        self.stats.lock().unwrap().frames_out += 1;
        if std::env::var_os("SPIKE_DUMP").is_some() {
            eprintln!("[dump out] {}", hex::encode(&item[..item.len().min(200)]));
        }
        if let Some((id, dk)) = crate::wire::parse_open(&item) {
            self.opened.insert(id, dk);
        }
        let item = if std::env::var_os("SPIKE_RAW").is_some() { item } else { normalize_outbound(item) };
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl CipherTrait for Conn {
    fn remote_public_key(&self) -> Option<[u8; 32]> {
        CipherTrait::remote_public_key(&self.inner)
    }
    fn local_public_key(&self) -> [u8; 32] {
        CipherTrait::local_public_key(&self.inner)
    }
    fn handshake_hash(&self) -> Option<Vec<u8>> {
        CipherTrait::handshake_hash(&self.inner)
    }
    fn is_initiator(&self) -> bool {
        CipherTrait::is_initiator(&self.inner)
    }
}
