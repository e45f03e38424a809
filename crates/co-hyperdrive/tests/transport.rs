//! Loopback tests of `net::transport`: two Rust peers over 127.0.0.1, and a hand-driven raw peer
//! (Noise through `hypercore_handshake`'s sans-I/O API) that sends what a broken or hostile peer
//! would. Every wait is bounded.

use std::time::Duration;

use co_hyperdrive::discovery_key;
use co_hyperdrive::format::wire::{self, Handshake, Item, Message};
use co_hyperdrive::transport::{
    accept, connect, Channel, MessageStream, Mux, MuxEvent, TransportError, TransportOptions,
};
use co_hyperdrive::Store;
use crypto_secretstream::Tag;
use hypercore_handshake::state_machine::{Ready, SecStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A `Mux` in its own task: its events come out of `events`, opens go in through `open`.
struct Driven {
    events: mpsc::UnboundedReceiver<Result<MuxEvent, TransportError>>,
    open: mpsc::UnboundedSender<[u8; 32]>,
    public_key: [u8; 32],
    remote_key: [u8; 32],
    task: JoinHandle<()>,
}

fn drive(stream: MessageStream) -> Driven {
    let mut mux = Mux::new(stream);
    let public_key = mux.info().local_public_key;
    let remote_key = mux.info().remote_public_key;
    let (tx, events) = mpsc::unbounded_channel();
    let (open, mut opens) = mpsc::unbounded_channel::<[u8; 32]>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = mux.next() => {
                    let end = ev.is_err();
                    if tx.send(ev).is_err() {
                        return;
                    }
                    if end {
                        // Polled again, an ended connection does not hang: the error comes again.
                        let again = match timeout(Duration::from_secs(2), mux.next()).await {
                            Ok(Err(e)) => Err(e),
                            other => Err(TransportError::Protocol(format!("polled again: {other:?}"))),
                        };
                        let _ = tx.send(again);
                        return;
                    }
                }
                Some(key) = opens.recv() => mux.open(&key).unwrap(),
            }
        }
    });
    Driven {
        events,
        open,
        public_key,
        remote_key,
        task,
    }
}

impl Driven {
    async fn next(&mut self) -> Result<MuxEvent, TransportError> {
        timeout(WAIT, self.events.recv())
            .await
            .expect("event within the deadline")
            .expect("driver alive")
    }

    async fn event(&mut self) -> MuxEvent {
        match self.next().await {
            Ok(ev) => ev,
            Err(e) => panic!("expected an event, got {e}"),
        }
    }

    /// The error the connection ended with; checks it is reported again when polled again.
    async fn end(&mut self) -> TransportError {
        let e = loop {
            if let Err(e) = self.next().await {
                break e;
            }
        };
        match self.next().await {
            Err(again) => assert_eq!(
                std::mem::discriminant(&again),
                std::mem::discriminant(&e),
                "{again} after {e}"
            ),
            Ok(ev) => panic!("after {e}: {ev:?}"),
        }
        e
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// (dialer, acceptor)
async fn pair(a: &TransportOptions, b: &TransportOptions) -> (Driven, Driven) {
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(connect(c, a), accept(s, b));
    (drive(a.unwrap()), drive(b.unwrap()))
}

fn quiet() -> TransportOptions {
    TransportOptions {
        keepalive: None,
        ..TransportOptions::default()
    }
}

async fn channel_pair(a: &mut Driven, b: &mut Driven, key: [u8; 32]) -> (Channel, Channel) {
    a.open.send(key).unwrap();
    match b.event().await {
        MuxEvent::RemoteOpen(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("expected RemoteOpen, got {other:?}"),
    }
    b.open.send(key).unwrap();
    let ch_a = match a.event().await {
        MuxEvent::Channel(ch) => ch,
        other => panic!("expected Channel, got {other:?}"),
    };
    let ch_b = match b.event().await {
        MuxEvent::Channel(ch) => ch,
        other => panic!("expected Channel, got {other:?}"),
    };
    assert_eq!(ch_a.discovery_key(), ch_b.discovery_key());
    assert_eq!(ch_a.key(), &key);
    (ch_a, ch_b)
}

async fn recv(ch: &Channel) -> Message {
    timeout(WAIT, ch.recv())
        .await
        .expect("message within the deadline")
        .expect("channel open")
}

fn ext(name: &str, message: &[u8]) -> Message {
    Message::Extension {
        name: name.into(),
        message: message.to_vec(),
    }
}

async fn core_key() -> [u8; 32] {
    let store = Store::memory();
    let core = store.open_named("shared").await.unwrap();
    core.append(b"block 0").await.unwrap();
    core.key().0
}

#[tokio::test]
async fn handshake_channel_and_messages() {
    let key = core_key().await;
    let (mut a, mut b) = pair(&TransportOptions::default(), &TransportOptions::default()).await;
    assert_eq!(a.remote_key, b.public_key);
    assert_eq!(b.remote_key, a.public_key);
    let (ch_a, ch_b) = channel_pair(&mut a, &mut b, key).await;

    // raw extension bytes (not a length-prefixed buffer), a sync, and a frame far over 64 KiB
    let raw = b"\x00raw\xffbytes".to_vec();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sync = Message::Sync {
        fork: 0,
        length: 1,
        remote_length: 0,
        flags: 7,
    };
    ch_a.send_batch(&[ext("test", &raw), sync.clone()]).unwrap();
    ch_a.send(&ext("big", &big)).unwrap();
    assert_eq!(recv(&ch_b).await, ext("test", &raw));
    assert_eq!(recv(&ch_b).await, sync);
    assert_eq!(recv(&ch_b).await, ext("big", &big));
    // and back
    ch_b.send(&ext("test", b"")).unwrap();
    assert_eq!(recv(&ch_a).await, ext("test", b""));
    a.task.abort();
    b.task.abort();
}

#[tokio::test]
async fn peer_disconnect_ends_the_connection() {
    let (a, mut b) = pair(&quiet(), &quiet()).await;
    a.task.abort();
    let e = b.end().await;
    assert!(
        matches!(e, TransportError::Closed | TransportError::Io(_)),
        "{e}"
    );

    // the same before the handshake: the dialer goes away at once
    let (c, s) = tcp_pair().await;
    drop(c);
    let e = accept(s, &quiet()).await.unwrap_err();
    assert!(
        matches!(e, TransportError::Closed | TransportError::Io(_)),
        "{e}"
    );
}

#[tokio::test]
async fn idle_timeout_fires_on_silence() {
    let idle = TransportOptions {
        keepalive: None,
        idle_timeout: Some(Duration::from_millis(300)),
        ..TransportOptions::default()
    };
    // a TCP peer that never starts the handshake
    let (c, s) = tcp_pair().await;
    let t = Instant::now();
    let e = accept(s, &idle).await.unwrap_err();
    assert!(matches!(e, TransportError::NoHandshake(_)), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(250));
    drop(c);

    // after the handshake: the other side sends nothing and has no timeout of its own
    let silent = TransportOptions {
        keepalive: None,
        idle_timeout: None,
        ..TransportOptions::default()
    };
    let (mut a, mut b) = pair(&idle, &silent).await;
    let t = Instant::now();
    assert!(matches!(a.end().await, TransportError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(200));
    // b then sees the dialer go away
    let e = b.end().await;
    assert!(
        matches!(e, TransportError::Closed | TransportError::Io(_)),
        "{e}"
    );
}

#[tokio::test]
async fn keepalive_keeps_an_idle_connection() {
    let opts = TransportOptions {
        keepalive: Some(Duration::from_millis(100)),
        idle_timeout: Some(Duration::from_millis(400)),
        ..TransportOptions::default()
    };
    let key = core_key().await;
    let (mut a, mut b) = pair(&opts, &opts).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a.events.try_recv().is_err(),
        "the dialer reported something"
    );
    assert!(
        b.events.try_recv().is_err(),
        "the acceptor reported something"
    );
    // still usable
    let (ch_a, ch_b) = channel_pair(&mut a, &mut b, key).await;
    ch_a.send(&ext("alive", b"yes")).unwrap();
    assert!(matches!(recv(&ch_b).await, Message::Extension { .. }));
    a.task.abort();
    b.task.abort();
}

#[tokio::test]
async fn oversized_frames_end_the_connection() {
    let key = core_key().await;
    let small = TransportOptions {
        max_frame: 4096,
        ..quiet()
    };
    // inbound: the acceptor refuses a frame over its limit
    let (mut a, mut b) = pair(&quiet(), &small).await;
    let (ch_a, _ch_b) = channel_pair(&mut a, &mut b, key).await;
    ch_a.send(&ext("big", &[7u8; 10_000])).unwrap();
    match b.end().await {
        TransportError::FrameTooLarge(n) => assert!(n > 10_000),
        e => panic!("{e}"),
    }
    // outbound: the dialer refuses to send one, and the connection ends
    let (mut a, mut b) = pair(&small, &quiet()).await;
    let (ch_a, _ch_b) = channel_pair(&mut a, &mut b, key).await;
    assert!(matches!(
        ch_a.send(&ext("big", &[7u8; 10_000])),
        Err(TransportError::FrameTooLarge(_))
    ));
    assert!(matches!(a.end().await, TransportError::FrameTooLarge(_)));
}

// ---- a raw peer, to send what a broken or hostile one would ----

async fn write_frame(tcp: &mut TcpStream, f: &[u8]) {
    let mut out = Vec::new();
    co_hyperdrive::transport::write_frame(&mut out, f);
    tcp.write_all(&out).await.unwrap();
}

async fn read_frame(tcp: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 3];
    timeout(WAIT, tcp.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    let n = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut f = vec![0; n];
    timeout(WAIT, tcp.read_exact(&mut f))
        .await
        .unwrap()
        .unwrap();
    f
}

/// The raw peer's side of the session.
struct Raw {
    tcp: TcpStream,
    cipher: SecStream<Ready>,
    handshake_hash: [u8; 64],
}

/// Dials an acceptor and runs Noise XX by hand. With `header: Some(bytes)` those bytes replace
/// our secretstream header, and the acceptor's result is returned instead.
async fn raw_handshake(
    header: Option<Vec<u8>>,
    opts: &TransportOptions,
) -> Result<(Raw, Driven), TransportError> {
    let (mut tcp, s) = tcp_pair().await;
    let server = tokio::spawn({
        let opts = opts.clone();
        async move { accept(s, &opts).await }
    });
    let c = SecStream::new_initiator_xx(&[]).unwrap();
    let (c, msg1) = c.write_msg(None).unwrap();
    write_frame(&mut tcp, &msg1).await;
    let msg2 = read_frame(&mut tcp).await;
    let (c, _) = c.read_msg(&msg2).unwrap();
    let (c, msg3) = c.write_msg().unwrap();
    let (c, our_header) = c.write_msg().unwrap();
    assert_eq!(our_header.len(), 56);
    write_frame(&mut tcp, &msg3).await;
    let bad_header = header.is_some();
    write_frame(&mut tcp, &header.unwrap_or(our_header)).await;
    let server = timeout(WAIT, server).await.unwrap().unwrap();
    if bad_header {
        return Err(server.unwrap_err());
    }
    let server = drive(server?);
    let their_header = read_frame(&mut tcp).await;
    let handshake_hash = c.handshake_hash().try_into().unwrap();
    let cipher = c.read_msg(&their_header).unwrap();
    Ok((
        Raw {
            tcp,
            cipher,
            handshake_hash,
        },
        server,
    ))
}

async fn raw_peer(opts: &TransportOptions) -> (Raw, Driven) {
    raw_handshake(None, opts).await.unwrap()
}

impl Raw {
    async fn send_plain(&mut self, mut plain: Vec<u8>) {
        self.cipher.push(&mut plain, &[], Tag::Message).unwrap();
        write_frame(&mut self.tcp, &plain).await;
    }

    async fn recv_plain(&mut self) -> Vec<u8> {
        loop {
            let mut f = read_frame(&mut self.tcp).await;
            self.cipher.pull(&mut f, &[]).unwrap();
            if !f.is_empty() {
                return f;
            }
        }
    }

    /// An Open of channel `id` for `key`, with the capability a genuine initiator would send.
    fn open(&self, id: u64, key: &[u8; 32], capability: Option<[u8; 32]>) -> Vec<u8> {
        let dk = discovery_key(key);
        let hs = Handshake {
            seeks: false,
            capability: capability
                .unwrap_or_else(|| wire::capability(true, key, &self.handshake_hash)),
        }
        .encode();
        wire::encode_item(&Item::Open {
            id,
            protocol: wire::PROTOCOL.into(),
            key: Some(&dk),
            handshake: &hs,
        })
    }
}

#[tokio::test]
async fn garbage_before_the_handshake() {
    let opts = TransportOptions {
        idle_timeout: Some(Duration::from_secs(3)),
        ..quiet()
    };
    // a frame that is no Noise message
    let (mut c, s) = tcp_pair().await;
    write_frame(&mut c, b"hello").await;
    let e = accept(s, &opts).await.unwrap_err();
    assert!(matches!(e, TransportError::Handshake(_)), "{e}");

    // an HTTP request: its first three bytes announce a 5.5 MB frame, far over what a handshake
    // message may be
    let (mut c, s) = tcp_pair().await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    drop(c);
    let e = accept(s, &opts).await.unwrap_err();
    assert!(matches!(e, TransportError::FrameTooLarge(_)), "{e}");

    // a length over max_frame, refused before the bytes arrive
    let (mut c, s) = tcp_pair().await;
    c.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
    let e = accept(s, &opts).await.unwrap_err();
    assert!(matches!(e, TransportError::FrameTooLarge(0xff_ffff)), "{e}");
}

#[tokio::test]
async fn broken_secretstream_headers() {
    // wrong length
    let e = raw_handshake(Some(vec![1; 10]), &quiet())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, TransportError::Handshake(_)), "{e}");
    // right length, wrong stream id (`hypercore_handshake` would panic on it: checked before)
    match raw_handshake(Some(vec![1; 56]), &quiet())
        .await
        .err()
        .unwrap()
    {
        TransportError::Handshake(m) => assert!(m.contains("stream id"), "{m}"),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn garbage_after_the_handshake() {
    // a protomux batch whose entry runs past the frame
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    raw.send_plain(vec![0, 0, 1, 9, 4]).await;
    match b.end().await {
        TransportError::Protocol(m) => assert!(m.contains("malformed frame"), "{m}"),
        e => panic!("{e}"),
    }

    // a frame that does not decrypt
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    write_frame(&mut raw.tcp, &[0x55; 40]).await;
    let e = b.end().await;
    assert!(matches!(e, TransportError::Protocol(_)), "{e:?}");

    // a frame shorter than a secretstream MAC
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    write_frame(&mut raw.tcp, &[1, 2, 3]).await;
    assert!(matches!(b.end().await, TransportError::Protocol(_)));

    // a well-formed frame and a keepalive are fine; then the peer goes away inside a frame
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    raw.send_plain(Vec::new()).await;
    raw.send_plain(vec![1, 2, 3]).await; // Cancel on a channel nobody opened
    raw.tcp.write_all(&[100, 0, 0, 1, 2]).await.unwrap();
    drop(raw);
    match b.end().await {
        TransportError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn rejected_opens_are_reported() {
    let key = core_key().await;
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    b.open.send(key).unwrap();
    let open = raw.recv_plain().await;
    assert_eq!(&open[..2], &[0, 1], "an Open frame");
    let id = open[2];
    // JS rejects Opens for cores it does not have: 0, 2, id (here inside a batch)
    raw.send_plain(vec![0, 0, 0, 2, 2, id]).await;
    match b.event().await {
        MuxEvent::Rejected(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("{other:?}"),
    }
    b.task.abort();
}

#[tokio::test]
async fn a_wrong_capability_closes_the_channel() {
    let key = core_key().await;
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    b.open.send(key).unwrap();
    let open = raw.recv_plain().await;
    let id = open[2];
    // Our Open answers theirs with a capability for another connection.
    raw.send_plain(raw.open(1, &key, Some([9; 32]))).await;
    match b.event().await {
        MuxEvent::Closed(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        raw.recv_plain().await,
        vec![0, 3, id],
        "a Close of their channel"
    );
    // The connection stays, and a genuine capability opens the channel.
    b.open.send(key).unwrap();
    let open = raw.recv_plain().await;
    assert_eq!(&open[..2], &[0, 1]);
    raw.send_plain(raw.open(1, &key, None)).await;
    let ch = match b.event().await {
        MuxEvent::Channel(ch) => ch,
        other => panic!("{other:?}"),
    };
    // Messages sent before the pairing are not lost (JS sends Sync right after its Open).
    raw.send_plain(wire::encode_item(&Item::Message {
        channel: 1,
        kind: 8,
        payload: &Message::Range {
            drop: false,
            start: 0,
            length: 3,
        }
        .encode(),
    }))
    .await;
    assert!(matches!(recv(&ch).await, Message::Range { length: 3, .. }));
    b.task.abort();
}

#[tokio::test]
async fn remote_opens_wait_for_ours_with_their_messages() {
    let key = core_key().await;
    let (mut raw, mut b) = raw_peer(&quiet()).await;
    // Open, Sync and an unknown message type in one batch, before the other side opened.
    let sync = Message::Sync {
        fork: 0,
        length: 1,
        remote_length: 0,
        flags: 7,
    };
    let open = raw.open(1, &key, None);
    let sync_bytes = sync.encode();
    let batch = wire::encode_batch(&[
        Item::Open {
            id: 1,
            protocol: wire::PROTOCOL.into(),
            key: Some(&discovery_key(&key)),
            handshake: &open[3 + wire::PROTOCOL.len() + 1 + 33..],
        },
        Item::Message {
            channel: 1,
            kind: 0,
            payload: &sync_bytes,
        },
        Item::Message {
            channel: 1,
            kind: 77,
            payload: b"from the future",
        },
    ]);
    raw.send_plain(batch).await;
    match b.event().await {
        MuxEvent::RemoteOpen(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("{other:?}"),
    }
    b.open.send(key).unwrap();
    let ch = match b.event().await {
        MuxEvent::Channel(ch) => ch,
        other => panic!("{other:?}"),
    };
    assert_eq!(recv(&ch).await, sync);
    // An Open whose id skips ahead breaks protomux's rule: the connection ends.
    raw.send_plain(raw.open(9, &key, None)).await;
    match b.end().await {
        TransportError::Protocol(m) => assert!(m.contains("out of order"), "{m}"),
        e => panic!("{e}"),
    }
}
