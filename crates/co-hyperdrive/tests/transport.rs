//! Loopback tests of `net::transport`: two Rust peers over 127.0.0.1, and a hand-driven raw peer
//! (Noise through `hypercore_handshake`'s sans-I/O API) that sends what a broken or hostile peer
//! would. Every wait is bounded.

use std::time::Duration;

use co_hyperdrive::net::transport::{
    accept, connect, Connection, TransportError, TransportOptions,
};
use co_hyperdrive::Store;
use futures::StreamExt;
use hypercore_handshake::state_machine::SecStream;
use hypercore_handshake::{Cipher, CipherEvent};
use hypercore_protocol::schema::{Extension, Synchronize};
use hypercore_protocol::{discovery_key, Channel, CommandTx, Event, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// What a driven connection reports.
#[derive(Debug)]
enum Ev {
    Protocol(Result<Event, TransportError>),
    Rejected([u8; 32]),
}

/// A `Protocol` polled in its own task; events come out of `events`.
struct Driven {
    events: mpsc::UnboundedReceiver<Ev>,
    cmd: CommandTx,
    public_key: [u8; 32],
    task: JoinHandle<()>,
}

fn drive(conn: Connection) -> Driven {
    let Connection {
        mut protocol,
        mut rejected,
        ..
    } = conn;
    let cmd = protocol.commands();
    let public_key = protocol.public_key();
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = protocol.next() => {
                    let Some(ev) = ev else {
                        let _ = tx.send(Ev::Protocol(Err(TransportError::Protocol("stream ended with None".into()))));
                        return;
                    };
                    let end = ev.is_err();
                    if tx.send(Ev::Protocol(ev.map_err(TransportError::from))).is_err() {
                        return;
                    }
                    if end {
                        // Polled again, an ended connection must not hang: an error comes again
                        // (possibly after events `Protocol` still had queued).
                        let mut again = Err(TransportError::Protocol("no error when polled again".into()));
                        for _ in 0..4 {
                            match timeout(Duration::from_secs(2), protocol.next()).await {
                                Ok(Some(Err(e))) => {
                                    again = Err(TransportError::from(e));
                                    break;
                                }
                                Ok(Some(Ok(_))) => {}
                                other => {
                                    again = Err(TransportError::Protocol(format!("polled again: {other:?}")));
                                    break;
                                }
                            }
                        }
                        let _ = tx.send(Ev::Protocol(again));
                        return;
                    }
                }
                Some(dk) = rejected.recv() => {
                    let _ = tx.send(Ev::Rejected(dk));
                }
            }
        }
    });
    Driven {
        events,
        cmd,
        public_key,
        task,
    }
}

impl Driven {
    async fn next(&mut self) -> Ev {
        timeout(WAIT, self.events.recv())
            .await
            .expect("event within the deadline")
            .expect("driver alive")
    }

    async fn event(&mut self) -> Event {
        match self.next().await {
            Ev::Protocol(Ok(ev)) => ev,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The error the connection ended with; checks it is reported again when polled again.
    async fn end(&mut self) -> TransportError {
        let e = loop {
            match self.next().await {
                Ev::Protocol(Err(e)) => break e,
                Ev::Protocol(Ok(_)) | Ev::Rejected(_) => {}
            }
        };
        match self.next().await {
            Ev::Protocol(Err(again)) => assert_eq!(
                std::mem::discriminant(&again),
                std::mem::discriminant(&e),
                "{again} after {e}"
            ),
            other => panic!("after {e}: {other:?}"),
        }
        e
    }

    async fn handshake(&mut self) -> [u8; 32] {
        match self.event().await {
            Event::Handshake(pk) => pk,
            other => panic!("expected Handshake, got {other:?}"),
        }
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
    let a = connect(c, a).await.unwrap();
    let b = accept(s, b).await.unwrap();
    (drive(a), drive(b))
}

fn quiet() -> TransportOptions {
    TransportOptions {
        keepalive: None,
        ..TransportOptions::default()
    }
}

async fn channel_pair(a: &mut Driven, b: &mut Driven, key: [u8; 32]) -> (Channel, Channel) {
    a.cmd.open(key).await.unwrap();
    match b.event().await {
        Event::DiscoveryKey(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("expected DiscoveryKey, got {other:?}"),
    }
    b.cmd.open(key).await.unwrap();
    let ch_a = match a.event().await {
        Event::Channel(ch) => ch,
        other => panic!("expected Channel, got {other:?}"),
    };
    let ch_b = match b.event().await {
        Event::Channel(ch) => ch,
        other => panic!("expected Channel, got {other:?}"),
    };
    assert_eq!(ch_a.discovery_key(), ch_b.discovery_key());
    assert_eq!(ch_a.key(), &key);
    (ch_a, ch_b)
}

async fn recv(ch: &mut Channel) -> Message {
    timeout(WAIT, ch.next())
        .await
        .expect("message within the deadline")
        .expect("channel open")
}

fn ext(name: &str, message: &[u8]) -> Message {
    Message::Extension(Extension {
        name: name.into(),
        message: message.to_vec(),
    })
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
    assert_eq!(a.handshake().await, b.public_key);
    assert_eq!(b.handshake().await, a.public_key);
    let (ch_a, mut ch_b) = channel_pair(&mut a, &mut b, key).await;

    // raw extension bytes (not a length-prefixed buffer), a sync, and a frame far over 64 KiB
    let raw = b"\x00raw\xffbytes".to_vec();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sync = Message::Synchronize(Synchronize {
        fork: 0,
        length: 1,
        remote_length: 0,
        downloading: true,
        uploading: true,
        can_upgrade: true,
    });
    ch_a.send_batch(&[ext("test", &raw), sync.clone()])
        .await
        .unwrap();
    ch_a.send(ext("big", &big)).await.unwrap();
    match recv(&mut ch_b).await {
        Message::Extension(e) => assert_eq!((e.name.as_str(), e.message), ("test", raw)),
        other => panic!("{other:?}"),
    }
    assert_eq!(recv(&mut ch_b).await, sync);
    match recv(&mut ch_b).await {
        Message::Extension(e) => assert!(e.name == "big" && e.message == big),
        other => panic!("{other:?}"),
    }
    // and back
    let mut ch_a = ch_a;
    ch_b.send(ext("test", b"")).await.unwrap();
    match recv(&mut ch_a).await {
        Message::Extension(e) => assert_eq!((e.name.as_str(), e.message.len()), ("test", 0)),
        other => panic!("{other:?}"),
    }
    a.task.abort();
    b.task.abort();
}

#[tokio::test]
async fn peer_disconnect_ends_the_protocol() {
    let (mut a, mut b) = pair(&quiet(), &quiet()).await;
    a.handshake().await;
    b.handshake().await;
    a.task.abort();
    let e = b.end().await;
    assert!(
        matches!(e, TransportError::Closed | TransportError::Io(_)),
        "{e}"
    );

    // the same before the handshake: the dialer goes away at once
    let (c, s) = tcp_pair().await;
    drop(c);
    let mut b = drive(accept(s, &quiet()).await.unwrap());
    let e = b.end().await;
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
    let mut b = drive(accept(s, &idle).await.unwrap());
    let e = b.end().await;
    assert!(
        matches!(e, TransportError::NoHandshake(_) | TransportError::Timeout),
        "{e}"
    );
    assert!(t.elapsed() >= Duration::from_millis(250));
    drop(c);

    // after the handshake: the other side sends nothing and has no timeout of its own
    let silent = TransportOptions {
        keepalive: None,
        idle_timeout: None,
        ..TransportOptions::default()
    };
    let (mut a, mut b) = pair(&idle, &silent).await;
    a.handshake().await;
    b.handshake().await;
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
    a.handshake().await;
    b.handshake().await;
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
    let (ch_a, mut ch_b) = channel_pair(&mut a, &mut b, key).await;
    ch_a.send(ext("alive", b"yes")).await.unwrap();
    assert!(matches!(recv(&mut ch_b).await, Message::Extension(_)));
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
    a.handshake().await;
    b.handshake().await;
    let (ch_a, _ch_b) = channel_pair(&mut a, &mut b, key).await;
    ch_a.send(ext("big", &[7u8; 10_000])).await.unwrap();
    match b.end().await {
        TransportError::FrameTooLarge(n) => assert!(n > 10_000),
        e => panic!("{e}"),
    }
    // outbound: the dialer refuses to send one
    let (mut a, mut b) = pair(&small, &quiet()).await;
    a.handshake().await;
    b.handshake().await;
    let (ch_a, _ch_b) = channel_pair(&mut a, &mut b, key).await;
    ch_a.send(ext("big", &[7u8; 10_000])).await.unwrap();
    assert!(matches!(a.end().await, TransportError::FrameTooLarge(_)));
}

// ---- a raw peer, to send what a broken or hostile one would ----

async fn write_frame(tcp: &mut TcpStream, f: &[u8]) {
    let n = f.len();
    tcp.write_all(&[n as u8, (n >> 8) as u8, (n >> 16) as u8])
        .await
        .unwrap();
    tcp.write_all(f).await.unwrap();
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

/// Dials a driven acceptor and runs Noise XX by hand. With `header: Some(bytes)` those bytes
/// replace our secretstream header (and the handshake stops there).
async fn raw_peer(header: Option<Vec<u8>>, opts: &TransportOptions) -> (TcpStream, Cipher, Driven) {
    let (mut tcp, s) = tcp_pair().await;
    let server = drive(accept(s, opts).await.unwrap());
    let mut c = Cipher::new(None, SecStream::new_initiator_xx(&[]).unwrap().into());
    let msg1 = c.get_next_sendable_message().unwrap().unwrap();
    write_frame(&mut tcp, &msg1).await;
    let msg2 = read_frame(&mut tcp).await;
    c.receive_next(msg2);
    let msg3 = c.get_next_sendable_message().unwrap().unwrap();
    let our_header = c.get_next_sendable_message().unwrap().unwrap();
    assert_eq!(our_header.len(), 56);
    write_frame(&mut tcp, &msg3).await;
    if let Some(h) = header {
        write_frame(&mut tcp, &h).await;
        return (tcp, c, server);
    }
    write_frame(&mut tcp, &our_header).await;
    let their_header = read_frame(&mut tcp).await;
    c.receive_next(their_header);
    assert!(c.next_decrypted_message().unwrap().is_none());
    assert!(c.ready());
    (tcp, c, server)
}

async fn send_plain(tcp: &mut TcpStream, c: &mut Cipher, plain: Vec<u8>) {
    c.queue_msg(plain);
    while let Some(f) = c.get_next_sendable_message().unwrap() {
        write_frame(tcp, &f).await;
    }
}

async fn recv_plain(tcp: &mut TcpStream, c: &mut Cipher) -> Vec<u8> {
    loop {
        let f = read_frame(tcp).await;
        c.receive_next(f);
        match c.next_decrypted_message().unwrap() {
            Some(CipherEvent::Message(m)) if !m.is_empty() => return m,
            _ => {}
        }
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
    let mut b = drive(accept(s, &opts).await.unwrap());
    write_frame(&mut c, b"hello").await;
    assert!(matches!(b.end().await, TransportError::Handshake(_)));

    // an HTTP request: its first three bytes announce a 5.5 MB frame; then the client leaves
    let (mut c, s) = tcp_pair().await;
    let mut b = drive(accept(s, &opts).await.unwrap());
    c.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    drop(c);
    let e = b.end().await;
    assert!(matches!(e, TransportError::Io(_)), "{e}");

    // a length over max_frame, refused before the bytes arrive
    let (mut c, s) = tcp_pair().await;
    let mut b = drive(accept(s, &opts).await.unwrap());
    c.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
    assert!(matches!(
        b.end().await,
        TransportError::FrameTooLarge(0xff_ffff)
    ));
}

#[tokio::test]
async fn broken_secretstream_headers() {
    // wrong length: caught by the framing
    let (_tcp, _c, mut b) = raw_peer(Some(vec![1; 10]), &quiet()).await;
    assert!(matches!(b.end().await, TransportError::Handshake(_)));
    // right length, wrong stream id: hypercore_handshake panics, the panic is contained
    let (_tcp, _c, mut b) = raw_peer(Some(vec![1; 56]), &quiet()).await;
    match b.end().await {
        TransportError::Handshake(m) => assert!(m.contains("stream ID"), "{m}"),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn garbage_after_the_handshake() {
    // a protomux batch whose entry runs past the frame
    let (mut tcp, mut c, mut b) = raw_peer(None, &quiet()).await;
    b.handshake().await;
    send_plain(&mut tcp, &mut c, vec![0, 0, 1, 9, 4]).await;
    match b.end().await {
        TransportError::Protocol(m) => assert!(m.contains("batch"), "{m}"),
        e => panic!("{e}"),
    }

    // a frame that does not decrypt
    let (mut tcp, _c, mut b) = raw_peer(None, &quiet()).await;
    b.handshake().await;
    write_frame(&mut tcp, &[0x55; 40]).await;
    let e = b.end().await;
    assert!(matches!(e, TransportError::Protocol(_)), "{e:?}");

    // a frame shorter than a secretstream MAC
    let (mut tcp, _c, mut b) = raw_peer(None, &quiet()).await;
    b.handshake().await;
    write_frame(&mut tcp, &[1, 2, 3]).await;
    assert!(matches!(b.end().await, TransportError::Protocol(_)));

    // a well-formed frame and a keepalive are fine; then the peer goes away inside a frame
    let (mut tcp, mut c, mut b) = raw_peer(None, &quiet()).await;
    b.handshake().await;
    send_plain(&mut tcp, &mut c, Vec::new()).await;
    send_plain(&mut tcp, &mut c, vec![1, 2, 3]).await; // Cancel on a channel nobody opened
    tcp.write_all(&[100, 0, 0, 1, 2]).await.unwrap();
    drop(tcp);
    match b.end().await {
        TransportError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn rejected_opens_are_reported() {
    let key = core_key().await;
    let (mut tcp, mut c, mut b) = raw_peer(None, &quiet()).await;
    b.handshake().await;
    b.cmd.open(key).await.unwrap();
    let open = recv_plain(&mut tcp, &mut c).await;
    assert_eq!(&open[..2], &[0, 1], "an Open frame");
    let id = open[2];
    // JS rejects Opens for cores it does not have: 0, 2, id (here inside a batch)
    send_plain(&mut tcp, &mut c, vec![0, 0, 0, 2, 2, id]).await;
    match b.next().await {
        Ev::Rejected(dk) => assert_eq!(dk, discovery_key(&key)),
        other => panic!("{other:?}"),
    }
    b.task.abort();
}
