//! Protomux over a [`MessageStream`], for the one protocol we speak: `hypercore/alpha`, one
//! channel per core, keyed by the core's discovery key.
//!
//! As protomux does: each side names a channel by its own id (the smallest free one); we send
//! with ours and route by the remote's. A channel is paired once both sides opened it; messages
//! that arrive for a remote Open we have not answered yet wait for the pairing. A Reject names
//! the opener's id; a Close, the closer's. A remote Open must use an id at most one above every
//! id it used before (protomux's rule; it also bounds our id table).
//!
//! The Open of a hypercore channel carries a capability ([`wire::capability`]): proof that the
//! opener knows the core key, bound to this connection's handshake hash. A remote capability
//! that does not match closes the channel ([`MuxEvent::Closed`]), as JavaScript hypercore does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cohd_format::wire::{self, Handshake, Item, Message, WireError};
use tokio::sync::Notify;

use super::{Backlog, MessageSender, MessageStream, StreamInfo, TransportError};
use crate::store::keys::discovery_key;

/// Messages a channel may hold unread before the connection is ended as a flood.
pub const MAX_CHANNEL_QUEUE: usize = 16 * 1024;
/// Bytes of received messages the channels may hold unread before the mux stops reading (the
/// peer then waits on TCP); a message counts its payload and a fixed overhead.
pub const MAX_INBOUND_BYTES: usize = 16 << 20;
/// What a queued message costs beyond its payload (its place in the queue, its fields).
const MESSAGE_OVERHEAD: usize = 64;
/// Messages that may wait for the pairing of a remote Open.
const MAX_UNPAIRED_MESSAGES: usize = 1024;
/// Channels the remote may have open at once.
const MAX_REMOTE_CHANNELS: usize = 1 << 16;

/// Something that happened on the connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum MuxEvent {
    /// Both sides opened the channel of a core: it carries messages now.
    Channel(Channel),
    /// The remote opened a channel we have not: [`Mux::open`] it (we have the core), or
    /// [`Mux::reject`] it.
    RemoteOpen([u8; 32]),
    /// The remote refused a channel we opened.
    Rejected([u8; 32]),
    /// A paired or half-open channel closed: the remote closed it, or its capability was wrong.
    Closed([u8; 32]),
}

#[derive(Debug)]
struct LocalSlot {
    dk: [u8; 32],
    key: [u8; 32],
    remote: Option<u64>,
    inbox: Option<Arc<Inbox>>,
}

#[derive(Debug)]
struct RemoteSlot {
    dk: [u8; 32],
    capability: [u8; 32],
    local: Option<u64>,
    /// Messages (and their cost) that arrived before the pairing.
    waiting: Vec<(Message, usize)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Mux {
    stream: MessageStream,
    sender: MessageSender,
    info: StreamInfo,
    /// By our id - 1.
    local: Vec<Option<LocalSlot>>,
    /// By the remote's id - 1.
    remote: Vec<Option<RemoteSlot>>,
    /// Discovery key -> our id, for channels we opened.
    local_by_dk: HashMap<[u8; 32], u64>,
    /// Discovery key -> the remote's id, for its Opens not paired yet.
    unpaired: HashMap<[u8; 32], u64>,
    events: VecDeque<MuxEvent>,
    failed: Option<TransportError>,
    budget: Arc<Budget>,
}

/// Bytes of received messages not read yet, over all channels of a connection.
#[derive(Debug, Default)]
struct Budget {
    bytes: AtomicUsize,
    drained: Notify,
}

impl Budget {
    fn take(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn give(&self, n: usize) {
        let before = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if before > MAX_INBOUND_BYTES && before.saturating_sub(n) <= MAX_INBOUND_BYTES {
            self.drained.notify_waiters();
        }
    }

    /// Waits until the channels hold at most [`MAX_INBOUND_BYTES`].
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(Ordering::Relaxed) <= MAX_INBOUND_BYTES {
                return;
            }
            drained.await;
        }
    }
}

fn fresh_slot<T>(slots: &mut Vec<Option<T>>) -> u64 {
    let i = slots.iter().position(Option::is_none).unwrap_or_else(|| {
        slots.push(None);
        slots.len() - 1
    });
    i as u64 + 1
}

fn slot<T>(slots: &mut [Option<T>], id: u64) -> Option<&mut Option<T>> {
    let i = usize::try_from(id.checked_sub(1)?).ok()?;
    slots.get_mut(i)
}

impl Mux {
    /// Channels over `stream`.
    pub fn new(stream: MessageStream) -> Self {
        Self {
            sender: stream.sender(),
            info: *stream.info(),
            stream,
            local: Vec::new(),
            remote: Vec::new(),
            local_by_dk: HashMap::new(),
            unpaired: HashMap::new(),
            events: VecDeque::new(),
            failed: None,
            budget: Arc::default(),
        }
    }

    /// What the handshake established.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The connection's backlog.
    pub fn backlog(&self) -> &Backlog {
        self.stream.backlog()
    }

    /// A sender of raw protomux frames on this connection (tests send what we never would).
    pub fn sender(&self) -> MessageSender {
        self.sender.clone()
    }

    /// Opens the channel of the core `key` (nothing when it is open or opening already).
    pub fn open(&mut self, key: &[u8; 32]) -> Result<(), TransportError> {
        let dk = discovery_key(key);
        if self.local_by_dk.contains_key(&dk) {
            return Ok(());
        }
        let id = fresh_slot(&mut self.local);
        let handshake = Handshake {
            // We answer seek requests (JavaScript then locates byte offsets with one request).
            seeks: true,
            capability: wire::capability(self.info.initiator, key, &self.info.handshake_hash),
        }
        .encode();
        self.sender.send(wire::encode_item(&Item::Open {
            id,
            protocol: wire::PROTOCOL.into(),
            key: Some(&dk),
            handshake: &handshake,
        }))?;
        if let Some(s) = slot(&mut self.local, id) {
            *s = Some(LocalSlot {
                dk,
                key: *key,
                remote: None,
                inbox: None,
            });
        }
        self.local_by_dk.insert(dk, id);
        if let Some(rid) = self.unpaired.remove(&dk) {
            self.pair(id, rid);
        }
        Ok(())
    }

    /// Refuses the remote's Open of `dk` (we do not have the core).
    pub fn reject(&mut self, dk: &[u8; 32]) {
        if let Some(rid) = self.unpaired.remove(dk) {
            if let Some(r) = slot(&mut self.remote, rid).and_then(Option::take) {
                self.budget.give(r.waiting.iter().map(|w| w.1).sum());
            }
            let _ = self
                .sender
                .send(wire::encode_item(&Item::Reject { id: rid }));
        }
    }

    /// Closes our channel of `dk`.
    pub fn close(&mut self, dk: &[u8; 32]) {
        let Some(id) = self.local_by_dk.remove(dk) else {
            return;
        };
        let _ = self.sender.send(wire::encode_item(&Item::Close { id }));
        if let Some(local) = slot(&mut self.local, id).and_then(Option::take) {
            if let Some(inbox) = local.inbox {
                inbox.close();
            }
            if let Some(s) = local.remote.and_then(|r| slot(&mut self.remote, r)) {
                *s = None;
            }
        }
    }

    /// The next event. Once the connection ended, why (every time). Cancel-safe.
    pub async fn next(&mut self) -> Result<MuxEvent, TransportError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if let Some(e) = &self.failed {
                return Err(e.duplicate());
            }
            // Channels that do not keep up stop the reading, not the memory.
            self.budget.room().await;
            match self.stream.recv().await {
                Ok(frame) => {
                    if let Err(e) = self.on_frame(&frame) {
                        self.fail(e);
                    }
                }
                Err(e) => self.fail(e),
            }
        }
    }

    fn fail(&mut self, e: TransportError) {
        self.stream.end().fail(e.duplicate());
        self.failed.get_or_insert(e);
        for l in self.local.iter().flatten() {
            if let Some(i) = &l.inbox {
                i.close();
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        let items = match wire::decode_frame(frame) {
            Ok(items) => items,
            // protomux ignores control types it does not know (a newer peer's).
            Err(WireError::UnknownType {
                what: "control",
                kind,
            }) => {
                tracing::debug!(kind, "ignoring an unknown protomux control message");
                return Ok(());
            }
            Err(e) => return Err(TransportError::Protocol(format!("malformed frame: {e}"))),
        };
        for item in items {
            match item {
                Item::Open {
                    id,
                    protocol,
                    key,
                    handshake,
                } => self.on_open(id, &protocol, key, handshake)?,
                Item::Reject { id } => self.on_reject(id),
                Item::Close { id } => self.on_close(id),
                Item::Message {
                    channel,
                    kind,
                    payload,
                } => self.on_message(channel, kind, payload)?,
            }
        }
        Ok(())
    }

    fn on_open(
        &mut self,
        id: u64,
        protocol: &str,
        key: Option<&[u8]>,
        handshake: &[u8],
    ) -> Result<(), TransportError> {
        let bad = |m: String| Err(TransportError::Protocol(m));
        let known = self.remote.len() as u64;
        if id == 0 || id > known + 1 {
            return bad(format!(
                "channel id {id} opened out of order ({known} used)"
            ));
        }
        if id > MAX_REMOTE_CHANNELS as u64 {
            return bad(format!("more than {MAX_REMOTE_CHANNELS} channels"));
        }
        if id == known + 1 {
            self.remote.push(None);
        }
        if slot(&mut self.remote, id).is_some_and(|s| s.is_some()) {
            return bad(format!("channel id {id} opened twice"));
        }
        let dk: Option<[u8; 32]> = key.and_then(|k| k.try_into().ok());
        let (Some(dk), true) = (dk, protocol == wire::PROTOCOL) else {
            tracing::debug!(protocol, "rejecting a channel of another protocol");
            let _ = self.sender.send(wire::encode_item(&Item::Reject { id }));
            return Ok(());
        };
        let hs = Handshake::decode(handshake)
            .map_err(|e| TransportError::Protocol(format!("malformed channel open: {e}")))?;
        let paired_already = self
            .local_by_dk
            .get(&dk)
            .and_then(|l| slot(&mut self.local, *l))
            .and_then(|s| s.as_ref())
            .is_some_and(|l| l.remote.is_some());
        if paired_already || self.unpaired.contains_key(&dk) {
            tracing::debug!("rejecting a second Open of the same core");
            let _ = self.sender.send(wire::encode_item(&Item::Reject { id }));
            return Ok(());
        }
        if let Some(s) = slot(&mut self.remote, id) {
            *s = Some(RemoteSlot {
                dk,
                capability: hs.capability,
                local: None,
                waiting: Vec::new(),
            });
        }
        match self.local_by_dk.get(&dk) {
            Some(&lid) => self.pair(lid, id),
            None => {
                self.unpaired.insert(dk, id);
                self.events.push_back(MuxEvent::RemoteOpen(dk));
            }
        }
        Ok(())
    }

    /// Pairs our channel `lid` with the remote's `rid`, if the remote proved it knows the key.
    fn pair(&mut self, lid: u64, rid: u64) {
        let (Some(Some(local)), Some(Some(remote))) = (
            slot(&mut self.local, lid).map(|s| s.as_ref()),
            slot(&mut self.remote, rid).map(|s| s.as_ref()),
        ) else {
            return;
        };
        let (dk, key) = (local.dk, local.key);
        let expected = wire::capability(!self.info.initiator, &key, &self.info.handshake_hash);
        if remote.capability != expected {
            tracing::debug!(
                channel = lid,
                "the remote's capability does not match; closing the channel"
            );
            self.close(&dk);
            if let Some(r) = slot(&mut self.remote, rid).and_then(Option::take) {
                self.budget.give(r.waiting.iter().map(|w| w.1).sum());
            }
            self.events.push_back(MuxEvent::Closed(dk));
            return;
        }
        let waiting = slot(&mut self.remote, rid)
            .and_then(Option::as_mut)
            .map(|r| {
                r.local = Some(lid);
                std::mem::take(&mut r.waiting)
            })
            .unwrap_or_default();
        let inbox = Arc::new(Inbox {
            budget: self.budget.clone(),
            ..Inbox::default()
        });
        for (m, cost) in waiting {
            inbox.push_counted(m, cost);
        }
        if let Some(Some(l)) = slot(&mut self.local, lid) {
            l.remote = Some(rid);
            l.inbox = Some(inbox.clone());
        }
        self.events.push_back(MuxEvent::Channel(Channel {
            dk,
            key,
            id: lid,
            sender: self.sender.clone(),
            inbox,
        }));
    }

    fn on_reject(&mut self, id: u64) {
        let unpaired = slot(&mut self.local, id)
            .and_then(|s| s.as_ref())
            .is_some_and(|l| l.remote.is_none());
        if !unpaired {
            tracing::debug!(channel = id, "Reject of a channel we did not open");
            return;
        }
        if let Some(l) = slot(&mut self.local, id).and_then(Option::take) {
            self.local_by_dk.remove(&l.dk);
            tracing::debug!(channel = id, "the remote rejected our Open");
            self.events.push_back(MuxEvent::Rejected(l.dk));
        }
    }

    fn on_close(&mut self, id: u64) {
        let Some(remote) = slot(&mut self.remote, id).and_then(Option::take) else {
            return;
        };
        match remote.local {
            None => {
                self.unpaired.remove(&remote.dk);
                self.budget.give(remote.waiting.iter().map(|w| w.1).sum());
            }
            Some(lid) => {
                if let Some(l) = slot(&mut self.local, lid).and_then(Option::take) {
                    self.local_by_dk.remove(&l.dk);
                    if let Some(i) = l.inbox {
                        i.close();
                    }
                }
                self.events.push_back(MuxEvent::Closed(remote.dk));
            }
        }
    }

    fn on_message(
        &mut self,
        channel: u64,
        kind: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let Some(Some(remote)) = slot(&mut self.remote, channel) else {
            tracing::debug!(channel, "message on a channel that is not open");
            return Ok(());
        };
        let msg = match Message::decode(kind, payload) {
            Ok(m) => m,
            // Types a newer peer may send; protomux ignores them too.
            Err(WireError::UnknownType { .. }) => return Ok(()),
            Err(e) => {
                return Err(TransportError::Protocol(format!(
                    "malformed message of type {kind}: {e}"
                )))
            }
        };
        let cost = payload.len() + MESSAGE_OVERHEAD;
        let Some(lid) = remote.local else {
            if remote.waiting.len() >= MAX_UNPAIRED_MESSAGES {
                return Err(TransportError::Flooded {
                    discovery_key: remote.dk,
                    limit: MAX_UNPAIRED_MESSAGES,
                });
            }
            self.budget.take(cost);
            remote.waiting.push((msg, cost));
            return Ok(());
        };
        let Some(Some(LocalSlot {
            inbox: Some(inbox),
            dk,
            ..
        })) = slot(&mut self.local, lid)
        else {
            return Ok(());
        };
        if inbox.push(msg, cost) > MAX_CHANNEL_QUEUE {
            return Err(TransportError::Flooded {
                discovery_key: *dk,
                limit: MAX_CHANNEL_QUEUE,
            });
        }
        Ok(())
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        for l in self.local.iter().flatten() {
            if let Some(i) = &l.inbox {
                i.close();
            }
        }
    }
}

/// A channel's inbound queue.
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<InboxState>,
    changed: Notify,
    budget: Arc<Budget>,
}

#[derive(Debug, Default)]
struct InboxState {
    /// Messages and what each costs of the budget.
    messages: VecDeque<(Message, usize)>,
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `m`, which costs `cost` of the budget; returns how many wait now. A closed
    /// channel drops it.
    fn push(&self, m: Message, cost: usize) -> usize {
        self.budget.take(cost);
        self.push_counted(m, cost)
    }

    /// [`push`](Self::push) for a message already counted.
    fn push_counted(&self, m: Message, cost: usize) -> usize {
        let n = {
            let mut s = self.lock();
            if s.closed {
                drop(s);
                self.budget.give(cost);
                return 0;
            }
            s.messages.push_back((m, cost));
            s.messages.len()
        };
        self.changed.notify_one();
        n
    }

    fn pop(&self) -> Result<Message, bool> {
        let popped = self.lock().messages.pop_front();
        match popped {
            Some((m, cost)) => {
                self.budget.give(cost);
                Ok(m)
            }
            None => Err(self.lock().closed),
        }
    }

    /// Closes the channel's queue; what it held is dropped.
    fn close(&self) {
        let freed: usize = {
            let mut s = self.lock();
            s.closed = true;
            s.messages.drain(..).map(|(_, c)| c).sum()
        };
        self.budget.give(freed);
        self.changed.notify_one();
    }
}

/// One core's channel on one connection. Sending never waits (see [`Backlog`]).
#[derive(Debug)]
pub struct Channel {
    dk: [u8; 32],
    key: [u8; 32],
    id: u64,
    sender: MessageSender,
    inbox: Arc<Inbox>,
}

impl Channel {
    /// The core's discovery key.
    pub fn discovery_key(&self) -> &[u8; 32] {
        &self.dk
    }

    /// The core's key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Our id of the channel on the wire.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends one message.
    pub fn send(&self, m: &Message) -> Result<(), TransportError> {
        self.send_batch(std::slice::from_ref(m))
    }

    /// Sends messages in one frame (a protomux batch when more than one).
    pub fn send_batch(&self, ms: &[Message]) -> Result<(), TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        let payloads: Vec<(u64, Vec<u8>)> = ms.iter().map(|m| (m.kind(), m.encode())).collect();
        let items: Vec<Item<'_>> = payloads
            .iter()
            .map(|(kind, p)| Item::Message {
                channel: self.id,
                kind: *kind,
                payload: p,
            })
            .collect();
        match items.as_slice() {
            [] => Ok(()),
            [one] => self.sender.send(wire::encode_item(one)),
            many => self.sender.send(wire::encode_batch(many)),
        }
    }

    /// The next message; `None` once the channel or the connection closed.
    pub async fn recv(&self) -> Option<Message> {
        loop {
            let changed = self.inbox.changed.notified();
            match self.inbox.pop() {
                Ok(m) => return Some(m),
                Err(true) => return None,
                Err(false) => changed.await,
            }
        }
    }

    /// The next message if one waits and `take` wants it (else it stays first in line).
    pub fn try_recv_if(&self, take: impl FnOnce(&Message) -> bool) -> Option<Message> {
        let popped = {
            let mut s = self.inbox.lock();
            match s.messages.front() {
                Some((m, _)) if take(m) => s.messages.pop_front(),
                _ => None,
            }
        };
        popped.map(|(m, cost)| {
            self.inbox.budget.give(cost);
            m
        })
    }

    /// Messages received and not read yet.
    pub fn len(&self) -> usize {
        self.inbox.lock().messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the channel closed (the remote closed it, or the connection ended).
    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
    }
}

impl Drop for Channel {
    /// Nobody reads the channel any more: what arrives for it is dropped, not kept.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::transport::{Backlog, StreamEnd};
    use std::time::Duration;
    use tokio::sync::mpsc;

    const HASH: [u8; 64] = [1; 64];

    /// A mux over an in-memory stream: frames go in through the sender.
    fn mux() -> (Mux, mpsc::Sender<Vec<u8>>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let info = StreamInfo {
            initiator: true,
            handshake_hash: HASH,
            remote_public_key: [0; 32],
            local_public_key: [0; 32],
        };
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let s = MessageStream::new(
            info,
            in_rx,
            out_tx,
            StreamEnd::default(),
            Backlog::default(),
            1 << 24,
        );
        (Mux::new(s), in_tx, out_rx)
    }

    /// Opens `key` on both sides (the remote with a genuine capability) and returns our channel.
    async fn paired(m: &mut Mux, tx: &mpsc::Sender<Vec<u8>>, key: [u8; 32]) -> Channel {
        m.open(&key).unwrap();
        let hs = Handshake {
            seeks: false,
            capability: wire::capability(false, &key, &HASH),
        }
        .encode();
        let dk = discovery_key(&key);
        tx.send(wire::encode_item(&Item::Open {
            id: 1,
            protocol: wire::PROTOCOL.into(),
            key: Some(&dk),
            handshake: &hs,
        }))
        .await
        .unwrap();
        match m.next().await.unwrap() {
            MuxEvent::Channel(ch) => ch,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_channel_nobody_reads_stops_the_reading_not_the_memory() {
        let (mut m, tx, _out) = mux();
        let ch = paired(&mut m, &tx, [5; 32]).await;
        let big = Message::Extension {
            name: "x".into(),
            message: vec![0; 1 << 20],
        }
        .encode();
        let frame = wire::encode_item(&Item::Message {
            channel: 1,
            kind: 9,
            payload: &big,
        });
        let feeder = tokio::spawn(async move {
            for _ in 0..40 {
                tx.send(frame.clone()).await.unwrap();
            }
            tx
        });
        // Nobody reads: the mux takes about its budget's worth, then stops reading.
        let _ = tokio::time::timeout(Duration::from_millis(300), m.next()).await;
        let held = ch.len();
        assert!((15..=16).contains(&held), "{held} MiB held");
        assert!(!feeder.is_finished(), "the peer waits");
        // Reading makes room again, and every message arrives.
        let mut got = 0;
        let read = async {
            while got < 40 {
                assert_eq!(ch.recv().await.unwrap(), Message::decode(9, &big).unwrap());
                got += 1;
            }
        };
        tokio::select! {
            () = read => {}
            r = m.next() => panic!("{r:?}"),
        }
        assert_eq!(m.budget.bytes.load(Ordering::Relaxed), 0);
        // A channel dropped unread frees what it held, and what comes later is dropped.
        let tx = feeder.await.unwrap();
        drop(ch);
        assert_eq!(m.budget.bytes.load(Ordering::Relaxed), 0);
        tx.send(wire::encode_item(&Item::Message {
            channel: 1,
            kind: 9,
            payload: &big,
        }))
        .await
        .unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(100), m.next()).await;
        assert_eq!(m.budget.bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_flood_names_its_channel() {
        let (mut m, tx, _out) = mux();
        let key = [6; 32];
        let ch = paired(&mut m, &tx, key).await;
        let cancels: Vec<Vec<u8>> = (0..1000u64)
            .map(|request| Message::Cancel { request }.encode())
            .collect();
        let items: Vec<Item<'_>> = cancels
            .iter()
            .map(|p| Item::Message {
                channel: 1,
                kind: 2,
                payload: p,
            })
            .collect();
        let batch = wire::encode_batch(&items);
        tokio::spawn(async move {
            for _ in 0..=MAX_CHANNEL_QUEUE / 1000 {
                if tx.send(batch.clone()).await.is_err() {
                    return;
                }
            }
        });
        let e = loop {
            if let Err(e) = m.next().await {
                break e;
            }
        };
        match e {
            TransportError::Flooded {
                discovery_key: dk,
                limit,
            } => {
                assert_eq!((dk, limit), (discovery_key(&key), MAX_CHANNEL_QUEUE));
            }
            e => panic!("{e}"),
        }
        // The channel sees the end.
        assert_eq!(ch.recv().await, None);
    }
}
