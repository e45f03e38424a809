//! Hostile peers against a [`Replicator`], over 127.0.0.1.
//!
//! The "evil" side is our own connection layer: a [`Mux`] over a TCP [`MessageStream`] from
//! `net::transport` or (to send bytes a `Mux` would never encode, or to stop reading) over a
//! Noise session run by hand and turned into a `MessageStream` with [`MessageStream::new`], and
//! sends what a broken or malicious peer would. Each test checks that
//! - the offending connection ends, with its reason (the `JoinHandle` of [`Replicator::connect`],
//!   or the log line of a connection the replicator accepted);
//! - the local core holds nothing that did not verify;
//! - another, honest connection to the same replicator goes on replicating;
//! - nothing panicked anywhere: a panic hook records every panic, also the ones in detached
//!   tasks (which would not fail a test by themselves).
//!
//! Transport-level garbage (before the handshake, oversized and truncated frames, frames that do
//! not decrypt) is tested in `transport.rs`. Every wait is bounded.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use co_hyperdrive::discovery_key;
use co_hyperdrive::format::wire::{self, Handshake, Item, Message, RequestBlock, RequestUpgrade};
use co_hyperdrive::format::Key;
use co_hyperdrive::transport::{
    accept, connect, Backlog, Channel, MessageStream, Mux, MuxEvent, StreamEnd, StreamInfo,
    TransportError, TransportOptions,
};
use co_hyperdrive::{Core, Store};
use co_hyperdrive::{Proof, ProofRequest};
use co_hyperdrive::{ReplicateOptions, Replicator, SessionError};
use crypto_secretstream::Tag;
use hypercore_handshake::state_machine::SecStream;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

const WAIT: Duration = Duration::from_secs(20);
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

// ---- every panic and every log line of the process ----

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a panic hook that records every panic before printing it, and a
/// log subscriber that keeps the lines at INFO and above (what `Replicator::listen` logs when
/// it closes a connection).
fn watch_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("[{thread}] {info}"));
            previous(info);
        }));
        // hypercore logs return values at INFO: keep its warnings only.
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,hypercore=warn"))
            .try_init();
    });
}

/// Fails if anything panicked: in this test's thread, or in a runtime worker thread (which can
/// be any test's, as the tests run in parallel). A panic in another test's own thread fails that
/// test already, so it is not counted here.
fn assert_no_panics() {
    let me = std::thread::current().name().unwrap_or("?").to_string();
    let p: Vec<String> = PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|p| {
            p.starts_with(&format!("[{me}]"))
                || p.starts_with("[tokio-runtime-worker]")
                || p.starts_with("[?]")
        })
        .cloned()
        .collect();
    assert!(p.is_empty(), "panics: {p:#?}");
}

/// Log lines about the connection from `peer` (as the replicator saw it accept it).
fn logged_about(peer: SocketAddr) -> Vec<String> {
    let needle = format!("from={peer}");
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until the replicator logged why it closed the connection from `peer`.
async fn closed_reason(peer: SocketAddr) -> String {
    let wait = async {
        loop {
            if let Some(l) = logged_about(peer)
                .into_iter()
                .find(|l| l.contains("connection closed"))
            {
                return l;
            }
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no log line about closing the connection from {peer}"))
}

// ---- honest nodes ----

fn block(i: u64) -> Vec<u8> {
    format!("block {i} ").repeat(40).into_bytes()
}

/// A memory store with a writable core `name` of `n` blocks (the store must outlive the core).
async fn writer(name: &str, n: u64) -> (Store, Core) {
    let store = Store::memory();
    let core = store.open_named(name).await.unwrap();
    for i in 0..n {
        core.append(&block(i)).await.unwrap();
    }
    (store, core)
}

fn replicator(download_all: bool) -> Replicator {
    Replicator::new(ReplicateOptions {
        download_all,
        ..ReplicateOptions::default()
    })
}

/// A replicator serving `cores`, listening on 127.0.0.1.
async fn serving(cores: &[&Core]) -> (Replicator, SocketAddr) {
    let r = replicator(false);
    for c in cores {
        r.add_core((*c).clone());
    }
    let (addr, _) = r.listen(LOCAL).await.unwrap();
    (r, addr)
}

/// A memory store holding a read-only replica of `key` (empty) and a replicator for it.
async fn reader(key: Key) -> (Store, Core, Replicator) {
    let store = Store::memory();
    let core = store.open_key(key, true).await.unwrap();
    let r = replicator(true);
    r.add_core(core.clone());
    (store, core, r)
}

/// Waits (bounded) until `core` holds block `i`, and checks it is `want`.
async fn wait_block(core: &Core, i: u64, want: &[u8]) {
    let wait = async {
        loop {
            if let Some(b) = core.get_local(i).await.unwrap() {
                return b;
            }
            sleep(Duration::from_millis(20)).await;
        }
    };
    let got = timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("block {i} never arrived"));
    assert_eq!(got, want, "block {i}");
}

/// Checks every block `core` holds is the genuine one, and returns how many it holds.
async fn genuine_blocks(core: &Core, upto: u64) -> u64 {
    let mut n = 0;
    for i in 0..upto {
        if let Some(b) = core.get_local(i).await.unwrap() {
            assert_eq!(b, block(i), "block {i} is not the genuine one");
            n += 1;
        }
    }
    n
}

async fn connections(r: &Replicator, want: usize) {
    let mut rx = r.connections();
    timeout(WAIT, rx.wait_for(|n| *n == want))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "connections never became {want} (now {})",
                *r.connections().borrow()
            )
        })
        .unwrap();
}

/// The result of a `Replicator::connect` task, bounded.
async fn session_end(h: JoinHandle<Result<(), SessionError>>) -> Result<(), SessionError> {
    timeout(WAIT, h)
        .await
        .expect("the connection ends within the deadline")
        .expect("the connection task did not panic")
}

/// The reason of a `SessionError::Peer` for `core`.
fn peer_reason(r: Result<(), SessionError>, core: Key) -> String {
    match r {
        Err(SessionError::Peer { core: c, reason }) => {
            assert_eq!(c, core, "blamed core");
            reason
        }
        other => panic!("expected the peer to be blamed, got {other:?}"),
    }
}

// ---- the evil side: a `Mux` driven in its own task ----

/// What the evil side's driver does for the test.
enum Cmd {
    Open([u8; 32]),
    Close([u8; 32]),
}

struct Evil {
    events: mpsc::UnboundedReceiver<Result<MuxEvent, TransportError>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    /// Our end of the TCP connection (what the other side logs as `from`).
    local: SocketAddr,
    /// Becomes true when the connection ended.
    gone: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for Evil {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn drive(stream: MessageStream, local: SocketAddr) -> Evil {
    let mut mux = Mux::new(stream);
    let (tx, events) = mpsc::unbounded_channel();
    let (cmd, mut cmds) = mpsc::unbounded_channel();
    let (gone_tx, gone) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = mux.next() => {
                    let end = ev.is_err();
                    if tx.send(ev).is_err() || end {
                        break;
                    }
                }
                Some(c) = cmds.recv() => match c {
                    Cmd::Open(key) => {
                        let _ = mux.open(&key);
                    }
                    Cmd::Close(dk) => mux.close(&dk),
                },
            }
        }
        gone_tx.send_replace(true);
    });
    Evil {
        events,
        cmd,
        local,
        gone,
        task,
    }
}

fn evil_options() -> TransportOptions {
    TransportOptions {
        keepalive: None,
        ..TransportOptions::default()
    }
}

/// Listens for one connection, to be an evil server; `accepted` gives its side once it came.
async fn evil_server() -> (SocketAddr, JoinHandle<Evil>) {
    let l = TcpListener::bind(LOCAL).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let local = tcp.local_addr().unwrap();
        drive(accept(tcp, &evil_options()).await.unwrap(), local)
    });
    (addr, task)
}

async fn accepted(task: JoinHandle<Evil>) -> Evil {
    timeout(WAIT, task)
        .await
        .expect("accepted within the deadline")
        .unwrap()
}

/// Dials `addr`, to be an evil client.
async fn evil_client(addr: SocketAddr) -> Evil {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let local = tcp.local_addr().unwrap();
    drive(connect(tcp, &evil_options()).await.unwrap(), local)
}

impl Evil {
    async fn next(&mut self) -> Result<MuxEvent, TransportError> {
        timeout(WAIT, self.events.recv())
            .await
            .expect("evil event within the deadline")
            .expect("evil driver alive")
    }

    /// Opens the channel for `key` (the honest side offers it too).
    async fn channel(&mut self, key: Key) -> Channel {
        let dk = discovery_key(&key.0);
        let _ = self.cmd.send(Cmd::Open(key.0));
        loop {
            match self.next().await {
                Ok(MuxEvent::Channel(ch)) if *ch.discovery_key() == dk => return ch,
                Ok(_) => {}
                Err(e) => panic!("the evil connection ended before the channel opened: {e}"),
            }
        }
    }

    /// Waits (bounded) until the connection ended, and returns how.
    async fn ended(&mut self) -> TransportError {
        loop {
            if let Err(e) = self.next().await {
                return e;
            }
        }
    }

    /// Whether the connection ended already (without waiting).
    fn has_ended(&mut self) -> bool {
        while let Ok(ev) = self.events.try_recv() {
            if ev.is_err() {
                return true;
            }
        }
        self.task.is_finished()
    }
}

/// The next message on `ch`; `None` once the channel or the connection closed.
async fn recv(ch: &Channel, gone: &watch::Receiver<bool>) -> Option<Message> {
    let mut gone = gone.clone();
    let r = timeout(WAIT, async {
        tokio::select! {
            m = ch.recv() => m,
            _ = gone.wait_for(|g| *g) => None,
        }
    });
    r.await.expect("message within the deadline")
}

fn sync(length: u64, remote_length: u64) -> Message {
    Message::Sync {
        fork: 0,
        length,
        remote_length,
        flags: 7,
    }
}

fn range(length: u64) -> Message {
    Message::Range {
        drop: false,
        start: 0,
        length,
    }
}

/// A wire Request, as a struct the tests can build by parts.
#[derive(Debug, Clone, Default)]
struct Request {
    id: u64,
    fork: u64,
    block: Option<RequestBlock>,
    hash: Option<RequestBlock>,
    upgrade: Option<RequestUpgrade>,
}

impl Request {
    fn msg(&self) -> Message {
        Message::Request {
            id: self.id,
            fork: self.fork,
            block: self.block,
            hash: self.hash,
            seek: None,
            upgrade: self.upgrade,
            manifest: false,
            priority: 0,
        }
    }

    fn from_msg(m: &Message) -> Option<Request> {
        match m {
            Message::Request {
                id,
                fork,
                block,
                hash,
                upgrade,
                ..
            } => Some(Request {
                id: *id,
                fork: *fork,
                block: *block,
                hash: *hash,
                upgrade: *upgrade,
            }),
            _ => None,
        }
    }

    fn proof_request(&self) -> ProofRequest {
        ProofRequest {
            fork: self.fork,
            block: self.block,
            hash: self.hash,
            upgrade: self.upgrade,
            ..ProofRequest::default()
        }
    }
}

/// A wire Data: the request it answers and the proof.
#[derive(Debug, Clone)]
struct Data {
    request: u64,
    proof: Proof,
}

impl Data {
    fn msg(self) -> Message {
        let p = self.proof;
        Message::Data {
            request: self.request,
            fork: p.fork,
            block: p.block,
            hash: p.hash,
            seek: p.seek,
            upgrade: p.upgrade,
            manifest: p.manifest,
        }
    }

    fn from_msg(m: Message) -> Option<Data> {
        match m {
            Message::Data {
                request,
                fork,
                block,
                hash,
                seek,
                upgrade,
                manifest,
            } => Some(Data {
                request,
                proof: Proof {
                    fork,
                    block,
                    hash,
                    seek,
                    upgrade,
                    manifest,
                },
            }),
            _ => None,
        }
    }
}

fn no_data(request: u64) -> Message {
    Message::NoData { request, reason: 0 }
}

fn request(id: u64) -> Request {
    Request {
        id,
        ..Request::default()
    }
}

fn block_request(id: u64, index: u64, nodes: u64) -> Request {
    Request {
        block: Some(RequestBlock { index, nodes }),
        ..request(id)
    }
}

fn upgrade_request(id: u64, start: u64, length: u64) -> Request {
    Request {
        upgrade: Some(RequestUpgrade { start, length }),
        ..request(id)
    }
}

/// The genuine answer of writer `core` to `req`.
async fn genuine(core: &Core, req: &Request) -> Option<Data> {
    let proof = core.create_proof(&req.proof_request()).await.ok()??;
    Some(Data {
        request: req.id,
        proof,
    })
}

/// A peer's data as the store takes it.
fn as_proof(d: Data) -> Proof {
    d.proof
}

/// Plays a server of `core` (a real writer, so the proofs are genuine before `answer` spoils them)
/// on `ch`: announces all of it, then answers each request with `answer(genuine Data)`. Returns
/// the requests it saw once the channel ended.
fn evil_serve(
    evil: &Evil,
    ch: Channel,
    core: Core,
    mut answer: impl FnMut(Data) -> Vec<Message> + Send + 'static,
) -> JoinHandle<Vec<Request>> {
    let gone = evil.gone.clone();
    tokio::spawn(async move {
        let len = core.info().length;
        let mut seen = Vec::new();
        if ch.send_batch(&[sync(len, 0), range(len)]).is_err() {
            return seen;
        }
        while let Some(msg) = recv(&ch, &gone).await {
            if let Some(r) = Request::from_msg(&msg) {
                let Some(d) = genuine(&core, &r).await else {
                    continue;
                };
                seen.push(r);
                if ch.send_batch(&answer(d)).is_err() {
                    break;
                }
            }
        }
        seen
    })
}

// ---- 1. an upgrade whose signature does not verify ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrade_signature_closes_only_that_connection() {
    watch_process();
    // The core the evil server pretends to serve (real, so only the signature is wrong) ...
    let (_s1, real) = writer("evil-copy", 4).await;
    // ... and another core, served honestly to the same replicator meanwhile.
    let (_s2, honest) = writer("honest", 3).await;
    let (_wr, honest_addr) = serving(&[&honest]).await;

    let rs = Store::memory();
    let target = rs.open_key(real.key(), true).await.unwrap();
    let other = rs.open_key(honest.key(), true).await.unwrap();
    let r = replicator(true);
    r.add_core(target.clone());
    r.add_core(other.clone());
    let honest_conn = r.connect(honest_addr).await.unwrap();
    assert!(r.wait_caught_up(&[honest.key()], WAIT).await);
    assert_eq!(genuine_blocks(&other, 3).await, 3);

    // Two evil servers: one flips a bit of the signature, one sends 10 bytes of garbage for it.
    type Spoil = fn(&mut Vec<u8>);
    let spoils: [(&str, Spoil); 2] = [
        ("flipped bit", |s| s[7] ^= 0x10),
        ("garbage", |s| *s = vec![0xa5; 10]),
    ];
    for (what, spoil) in spoils {
        let (addr, acc) = evil_server().await;
        let h = r.connect(addr).await.unwrap();
        let mut evil = accepted(acc).await;
        let ch = evil.channel(real.key()).await;
        let served = evil_serve(&evil, ch, real.clone(), move |mut d| {
            if let Some(sig) = d.proof.upgrade.as_mut().and_then(|u| u.signature.as_mut()) {
                spoil(sig);
            }
            vec![d.msg()]
        });
        let reason = peer_reason(session_end(h).await, real.key());
        assert!(reason.contains("proof"), "{what}: {reason}");
        evil.ended().await;
        let seen = timeout(WAIT, served).await.unwrap().unwrap();
        assert!(
            seen.len() == 1 && seen[0].upgrade.is_some(),
            "{what}: our reader asked for {seen:?}"
        );
        // Nothing of it was stored.
        let i = target.info();
        assert_eq!((i.length, i.contiguous_length), (0, 0), "{what}");
        assert_eq!(target.get_local(0).await.unwrap(), None);
    }

    // The honest connection is still up and still replicates.
    assert!(!honest_conn.is_finished());
    connections(&r, 1).await;
    honest.append(b"after the evil ones").await.unwrap();
    wait_block(&other, 3, b"after the evil ones").await;

    // And the spoiled core fetches from an honest peer as if nothing had happened.
    let (_wr1, real_addr) = serving(&[&real]).await;
    let _c = r.connect(real_addr).await.unwrap();
    assert!(r.wait_caught_up(&[real.key()], WAIT).await);
    assert_eq!(genuine_blocks(&target, 4).await, 4);
    assert!(!honest_conn.is_finished());
    assert_no_panics();
}

// ---- 2. a valid upgrade, then a block whose value was tampered with ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_block_is_not_stored() {
    watch_process();
    let (_s, real) = writer("tampered", 6).await;
    let (_rs, target, r) = reader(real.key()).await;
    let (addr, acc) = evil_server().await;
    let h = r.connect(addr).await.unwrap();
    let mut evil = accepted(acc).await;
    let ch = evil.channel(real.key()).await;
    // Blocks 0 and 1 are genuine, block 2 has one byte changed (same length), and so would the
    // later ones, but the connection is gone by then.
    let served = evil_serve(&evil, ch, real.clone(), |mut d| {
        if let Some(b) = &mut d.proof.block {
            if b.index >= 2 {
                b.value[3] ^= 1;
            }
        }
        vec![d.msg()]
    });
    let reason = peer_reason(session_end(h).await, real.key());
    assert!(reason.contains("does not verify"), "{reason}");
    evil.ended().await;
    let seen = timeout(WAIT, served).await.unwrap().unwrap();
    assert!(seen[0].upgrade.is_some() && seen.len() >= 4, "{seen:?}");

    // The valid upgrade and the genuine blocks are in, the tampered block is not.
    let i = target.info();
    assert_eq!((i.length, i.contiguous_length), (6, 2));
    assert_eq!(genuine_blocks(&target, 6).await, 2);
    assert_eq!(target.get_local(2).await.unwrap(), None);

    // An honest peer fills the gap.
    let (_wr, honest_addr) = serving(&[&real]).await;
    let _c = r.connect(honest_addr).await.unwrap();
    assert!(r.wait_caught_up(&[real.key()], WAIT).await);
    assert_eq!(genuine_blocks(&target, 6).await, 6);
    assert_no_panics();
}

// ---- 3. Data for another fork, for a request never sent, not matching the request ----

/// Runs one evil server of `real` against a fresh reader; returns the reason the reader gave and
/// its core.
async fn one_evil_session(
    real: &Core,
    answer: impl FnMut(Data) -> Vec<Message> + Send + 'static,
    unsolicited: Vec<Message>,
) -> (String, Core, Store) {
    let (rs, target, r) = reader(real.key()).await;
    let (addr, acc) = evil_server().await;
    let h = r.connect(addr).await.unwrap();
    let mut evil = accepted(acc).await;
    let ch = evil.channel(real.key()).await;
    if !unsolicited.is_empty() {
        ch.send_batch(&unsolicited).unwrap();
    }
    let served = evil_serve(&evil, ch, real.clone(), answer);
    let reason = peer_reason(session_end(h).await, real.key());
    evil.ended().await;
    timeout(WAIT, served).await.unwrap().unwrap();
    assert_eq!(*r.connections().borrow(), 0);
    (reason, target, rs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_fork_and_unasked_data_close_the_connection() {
    watch_process();
    let (_s, real) = writer("forks", 5).await;

    // A genuine upgrade proof, labelled with another fork.
    let (reason, target, _rs) = one_evil_session(
        &real,
        |mut d| {
            d.proof.fork = 1;
            vec![d.msg()]
        },
        vec![],
    )
    .await;
    // Another fork from block 0 is taken for the owner's truncation, and its signature (made
    // for fork 0) does not verify.
    assert!(reason.contains("does not verify"), "{reason}");
    assert_eq!(target.info().length, 0);

    // A genuine block (with its upgrade) that nobody asked for: sent before any request.
    let unasked = genuine(
        &real,
        &Request {
            upgrade: Some(RequestUpgrade {
                start: 0,
                length: 5,
            }),
            ..block_request(4242, 0, 0)
        },
    )
    .await
    .unwrap();
    let (reason, target, _rs) =
        one_evil_session(&real, |d| vec![d.msg()], vec![unasked.msg()]).await;
    assert!(reason.contains("unknown request 4242"), "{reason}");
    assert_eq!(target.info().length, 0);
    assert_eq!(target.get_local(0).await.unwrap(), None);

    // The same answer twice: the second one answers a request that is no longer pending.
    let (reason, target, _rs) =
        one_evil_session(&real, |d| vec![d.clone().msg(), d.msg()], vec![]).await;
    assert!(reason.contains("unknown request"), "{reason}");
    // (the first copy was a valid upgrade and is kept; no block came)
    assert_eq!(target.info().length, 5);
    assert_eq!(genuine_blocks(&target, 5).await, 0);

    // An upgrade request answered with a block (genuine, but not what was asked).
    let blk = genuine(&real, &block_request(0, 1, 0)).await.unwrap();
    let (reason, target, _rs) = one_evil_session(
        &real,
        move |d| {
            vec![Data {
                request: d.request,
                ..blk.clone()
            }
            .msg()]
        },
        vec![],
    )
    .await;
    assert!(reason.contains("does not match request"), "{reason}");
    assert_eq!(target.info().length, 0);
    assert_no_panics();
}

// ---- 4. requests for what we do not have ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_we_cannot_answer_get_nodata_and_the_connection_stays() {
    watch_process();
    let (_s, real) = writer("served", 5).await;
    let (wr, addr) = serving(&[&real]).await;
    let mut evil = evil_client(addr).await;
    let ch = evil.channel(real.key()).await;

    let unanswerable = vec![
        block_request(1, 10_000, 0),     // a block past our length
        upgrade_request(2, 0, 6),        // an upgrade past our length
        upgrade_request(3, 5, 1),        // ... starting at it
        upgrade_request(4, u64::MAX, 2), // ... overflowing
        upgrade_request(5, 2, 0),        // an empty upgrade
        Request {
            fork: 3,
            ..block_request(6, 0, 0)
        }, // another fork
        block_request(7, u64::MAX, 0),   // 2 * index overflows
        block_request(8, 0, u64::MAX),   // an absurd node budget
        Request {
            hash: Some(RequestBlock {
                index: u64::MAX,
                nodes: 0,
            }),
            ..request(9)
        }, // a tree node past the end
        request(10),                     // nothing asked at all
    ];
    let n = unanswerable.len() as u64;
    let msgs: Vec<Message> = unanswerable.iter().map(Request::msg).collect();
    ch.send_batch(&msgs).unwrap();
    // Then a valid request, on the same connection.
    let valid = Request {
        upgrade: Some(RequestUpgrade {
            start: 0,
            length: 5,
        }),
        ..block_request(n + 1, 0, 0)
    };
    ch.send(&valid.msg()).unwrap();

    let mut nodata = Vec::new();
    let data = loop {
        match recv(&ch, &evil.gone).await.expect("the channel stays open") {
            Message::NoData { request, .. } => nodata.push(request),
            m @ Message::Data { .. } => break Data::from_msg(m).unwrap(),
            _ => {} // Sync, Range
        }
    };
    assert_eq!(
        nodata,
        (1..=n).collect::<Vec<_>>(),
        "a NoData for each, in order"
    );
    assert_eq!(data.request, n + 1);

    // The answer verifies, on a core of our own.
    let (_rs, mine, _r) = reader(real.key()).await;
    assert!(mine.apply_proof(as_proof(data)).await.unwrap());
    assert_eq!(mine.info().length, 5);
    assert_eq!(mine.get_local(0).await.unwrap(), Some(block(0)));
    // And another block after that, with the node budget a reader computes.
    let nodes = mine.missing_nodes(3).await;
    ch.send(&block_request(99, 3, nodes).msg()).unwrap();
    let d = loop {
        if let Some(d) = Data::from_msg(recv(&ch, &evil.gone).await.expect("open")) {
            break d;
        }
    };
    assert!(mine.apply_proof(as_proof(d)).await.unwrap());
    assert_eq!(mine.get_local(3).await.unwrap(), Some(block(3)));

    // The connection is up on both ends, and the replicator did not complain about it.
    assert!(!evil.has_ended());
    assert_eq!(*wr.connections().borrow(), 1);
    let lines = logged_about(evil.local);
    assert!(
        lines.iter().all(|l| !l.contains("connection closed")),
        "{lines:?}"
    );
    assert_no_panics();
}

// ---- 5. a flood of requests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_flood_is_survived() {
    watch_process();
    const FLOOD: u64 = 50_000;
    let (_s, real) = writer("flooded", 16).await;
    let r = replicator(false);
    r.add_core(real.clone());
    let (r_addr, _) = r.listen(LOCAL).await.unwrap();

    // An honest reader, connected before the flood.
    let (_hs, h1_core, h1) = reader(real.key()).await;
    let (h1_addr, _) = h1.listen(LOCAL).await.unwrap();
    let honest = r.connect(h1_addr).await.unwrap();
    assert!(h1.wait_caught_up(&[real.key()], WAIT).await);
    assert_eq!(genuine_blocks(&h1_core, 16).await, 16);

    // The evil server floods the replicator with requests and counts the answers.
    let (addr, acc) = evil_server().await;
    let flooded = r.connect(addr).await.unwrap();
    let mut evil = accepted(acc).await;
    let ch = Arc::new(evil.channel(real.key()).await);
    let rx = ch.clone();
    let answers = Arc::new(AtomicUsize::new(0));
    let counter = {
        let answers = answers.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if matches!(m, Message::Data { .. } | Message::NoData { .. }) {
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for chunk in 0..FLOOD / 500 {
            let batch: Vec<Message> = (0..500)
                .map(|k| {
                    let id = chunk * 500 + k + 1;
                    block_request(id, id % 16, 0).msg()
                })
                .collect();
            match ch.send_batch(&batch) {
                Ok(()) => sent += 500,
                Err(_) => break, // the replicator closed the connection
            }
            tokio::task::yield_now().await;
        }
        sent
    });

    // During the flood, the honest connection keeps replicating.
    real.append(b"during the flood").await.unwrap();
    wait_block(&h1_core, 16, b"during the flood").await;

    // The flood ends either with the connection closed (with a reason) or with every request
    // answered; within a bounded time either way.
    let sent = timeout(WAIT, sender).await.unwrap().unwrap();
    let outcome = timeout(Duration::from_secs(60), async {
        loop {
            if flooded.is_finished() {
                return "closed";
            }
            if answers.load(Ordering::Relaxed) as u64 >= FLOOD {
                return "answered";
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the flood neither answered nor closed within 60 s");
    let answered = answers.load(Ordering::Relaxed);
    if outcome == "closed" {
        let reason = peer_reason(session_end(flooded).await, real.key());
        assert!(reason.contains("flood"), "{reason}");
        evil.ended().await;
    } else {
        assert_eq!(sent, FLOOD);
        assert!(!evil.has_ended());
        flooded.abort();
    }
    eprintln!("flood of {FLOOD}: {sent} sent, {answered} answered, connection {outcome}");
    counter.abort();

    // A busy but well-behaved peer: 6,000 requests (more than the flood limit in all) in bursts
    // of 1,000, each burst read before the next. Every one is answered, the connection stays.
    let (addr, acc) = evil_server().await;
    let busy = r.connect(addr).await.unwrap();
    let mut evil = accepted(acc).await;
    let ch = evil.channel(real.key()).await;
    let mut answered = 0u64;
    for burst in 0..6u64 {
        let batch: Vec<Message> = (0..1000)
            .map(|k| {
                let id = burst * 1000 + k + 1;
                block_request(id, id % 16, 0).msg()
            })
            .collect();
        ch.send_batch(&batch).unwrap();
        while answered < (burst + 1) * 1000 {
            match recv(&ch, &evil.gone).await.expect("still connected") {
                Message::Data { block, .. } => {
                    assert!(block.is_some());
                    answered += 1;
                }
                Message::NoData { request, .. } => panic!("NoData for {request}"),
                _ => {}
            }
        }
    }
    assert!(!busy.is_finished() && !evil.has_ended());
    busy.abort();
    drop(evil);

    // After it: the honest connection still replicates, and new ones are served.
    assert!(!honest.is_finished());
    real.append(b"after the flood").await.unwrap();
    wait_block(&h1_core, 17, b"after the flood").await;
    let (_h2s, h2_core, h2) = reader(real.key()).await;
    let _c = h2.connect(r_addr).await.unwrap();
    assert!(h2.wait_caught_up(&[real.key()], WAIT).await);
    assert_eq!(genuine_blocks(&h2_core, 16).await, 16);
    wait_block(&h2_core, 17, b"after the flood").await;
    assert_no_panics();
}

// ---- a tapped peer: a `Mux` over a Noise session run by hand ----
//
// With it, the evil side opens channels properly (capabilities and all) and can then send
// plaintext frames a `Mux` would never encode, raw bytes under the encryption, or stop reading
// the socket while it goes on writing. The hand-run session is turned into a `MessageStream`
// with `MessageStream::new`, as another transport would.

async fn write_frame(wr: &mut (impl AsyncWriteExt + Unpin), f: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(f.len() + 3);
    co_hyperdrive::transport::write_frame(&mut buf, f);
    wr.write_all(&buf).await
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let mut h = [0u8; 3];
    rd.read_exact(&mut h).await?;
    let n = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut f = vec![0; n];
    rd.read_exact(&mut f).await?;
    Ok(f)
}

struct Tapped {
    evil: Evil,
    /// Plaintext frames to send as they are (encrypted and framed), past the `Mux`.
    inject: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes to write to the socket as they are (no encryption, no framing).
    wire: mpsc::UnboundedSender<Vec<u8>>,
    /// Copies of the plaintext frames the `Mux` sent.
    sent: mpsc::UnboundedReceiver<Vec<u8>>,
    /// While true, nothing is read from the socket.
    stall: watch::Sender<bool>,
    /// Becomes true once reading the socket ended (the other side closed it, or it failed).
    closed: watch::Receiver<bool>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Tapped {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Dials `addr`, runs Noise XX and secretstream by hand, and puts a `Mux` on top.
async fn tapped_client(addr: SocketAddr) -> Tapped {
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let local = tcp.local_addr().unwrap();
    let handshake = async {
        let c = SecStream::new_initiator_xx(&[]).unwrap();
        let local_key = c.get_local_public_key();
        let (c, msg1) = c.write_msg(None).unwrap();
        write_frame(&mut tcp, &msg1).await?;
        let (c, _) = c.read_msg(&read_frame(&mut tcp).await?).unwrap();
        let remote_key = c.get_remote_static().unwrap();
        let (c, msg3) = c.write_msg().unwrap();
        let (c, header) = c.write_msg().unwrap();
        write_frame(&mut tcp, &msg3).await?;
        write_frame(&mut tcp, &header).await?;
        let info = StreamInfo {
            initiator: true,
            handshake_hash: c.handshake_hash().try_into().unwrap(),
            remote_public_key: remote_key,
            local_public_key: local_key,
        };
        let c = c.read_msg(&read_frame(&mut tcp).await?).unwrap();
        io::Result::Ok((c, info))
    };
    let (mut c, info) = timeout(WAIT, handshake).await.unwrap().unwrap();

    let (inbound_tx, inbound) = mpsc::channel(64);
    let (outbound, mut outbound_rx) = mpsc::unbounded_channel();
    let end = StreamEnd::default();
    let stream = MessageStream::new(info, inbound, outbound, end, Backlog::default(), 1 << 20);
    let (inject, mut inject_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (wire, mut wire_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (sent_tx, sent) = mpsc::unbounded_channel();
    let (stall, mut stall_rx) = watch::channel(false);
    let (closed_tx, closed) = watch::channel(false);
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel();
    let (mut rd, mut wr) = tcp.into_split();

    let reader = tokio::spawn(async move {
        loop {
            if stall_rx.wait_for(|s| !*s).await.is_err() {
                return;
            }
            match read_frame(&mut rd).await {
                Ok(f) => {
                    if frames_tx.send(f).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    closed_tx.send_replace(true);
                    return;
                }
            }
        }
    });
    let pump = tokio::spawn(async move {
        loop {
            let r = tokio::select! {
                f = frames_rx.recv() => {
                    // None: the socket closed; dropping `inbound_tx` ends the `Mux`.
                    let Some(mut f) = f else { return };
                    if c.pull(&mut f, &[]).is_err() {
                        return;
                    }
                    if !f.is_empty() && inbound_tx.send(f).await.is_err() {
                        return;
                    }
                    Ok(())
                }
                p = outbound_rx.recv() => {
                    let Some(mut p) = p else { return };
                    let _ = sent_tx.send(p.clone());
                    c.push(&mut p, &[], Tag::Message).unwrap();
                    write_frame(&mut wr, &p).await
                }
                p = inject_rx.recv() => {
                    let Some(mut p) = p else { return };
                    c.push(&mut p, &[], Tag::Message).unwrap();
                    write_frame(&mut wr, &p).await
                }
                b = wire_rx.recv() => {
                    let Some(b) = b else { return };
                    wr.write_all(&b).await
                }
            };
            if r.is_err() {
                return;
            }
        }
    });
    Tapped {
        evil: drive(stream, local),
        inject,
        wire,
        sent,
        stall,
        closed,
        tasks: [reader, pump],
    }
}

impl Tapped {
    /// Our wire id of the channel the `Mux` opened for `key` (from the Open frame it sent).
    fn channel_id(&mut self, key: Key) -> u8 {
        let dk = discovery_key(&key.0);
        while let Ok(f) = self.sent.try_recv() {
            if f.starts_with(&[0, 1]) && f.windows(32).any(|w| w == dk) {
                assert!(f[2] < 0x80, "a one-byte channel id");
                return f[2];
            }
        }
        panic!("no Open sent for the channel");
    }

    /// Waits up to `d` for the other side to close the socket.
    async fn closed_within(&self, d: Duration) -> bool {
        let mut closed = self.closed.clone();
        let r = timeout(d, closed.wait_for(|c| *c)).await.is_ok();
        r
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

// ---- 5b. a flood from a peer that does not read ----

/// A peer that asks for big blocks and never reads the answers (it keeps its socket open and
/// keeps writing, so the receive timeout does not fire). Each 10-byte request makes the
/// replicator build a 60 KiB answer. Senders never wait, so the session itself stops answering
/// while too much waits for the socket (`transport::Backlog`), and the writer ends a connection
/// whose socket takes nothing for the idle timeout (`TransportError::Stalled`). Before that fix, 4,000 requests grew the process
/// by ~300 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_from_a_peer_that_does_not_read() {
    watch_process();
    const BIG: usize = 60 * 1024;
    const N: u64 = 4000;
    // Everything queued for the stalled peer: a few MiB by design (4,000 answers are 240 MiB).
    const QUEUED_LIMIT: usize = 16 << 20;
    // The whole test process (other tests run meanwhile): generous, far below 240 MiB.
    const RSS_LIMIT: u64 = 128 << 20;
    let store = Store::memory();
    let real = store.open_named("big").await.unwrap();
    for i in 0..8u8 {
        real.append(&vec![i; BIG]).await.unwrap();
    }
    // A short idle timeout so the stalled connection ends within the test; the honest reader
    // sends keepalives every 5 s, well inside it.
    let r = Replicator::new(ReplicateOptions {
        download_all: false,
        transport: TransportOptions {
            idle_timeout: Some(Duration::from_secs(8)),
            ..TransportOptions::default()
        },
    });
    r.add_core(real.clone());
    let (addr, _) = r.listen(LOCAL).await.unwrap();
    let (_hs, h_core, h) = reader(real.key()).await;
    let honest = h.connect(addr).await.unwrap();
    assert!(h.wait_caught_up(&[real.key()], WAIT).await);
    connections(&r, 1).await;
    // What the senders count as queued and what the writer counts as written agree: an honest
    // transfer leaves nothing behind (once the writer is past its last write: the reader may
    // see the bytes a moment before).
    let drained = async {
        while r.backlog_bytes() != 0 {
            sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, drained)
        .await
        .unwrap_or_else(|_| panic!("{} bytes stay counted", r.backlog_bytes()));

    let mut t = tapped_client(addr).await;
    let ch = t.evil.channel(real.key()).await;
    connections(&r, 2).await;
    t.stall.send_replace(true);
    let before = rss();
    // Bursts of 500, well under the flood limit, paced so the replicator keeps up.
    for burst in 0..N / 500 {
        let batch: Vec<Message> = (0..500)
            .map(|k| {
                let id = burst * 500 + k + 1;
                block_request(id, id % 8, 0).msg()
            })
            .collect();
        ch.send_batch(&batch).unwrap();
        sleep(Duration::from_millis(20)).await;
    }
    let (mut grown, mut queued) = (0, 0);
    let closed = timeout(Duration::from_secs(30), async {
        loop {
            grown = grown.max(rss().saturating_sub(before));
            queued = queued.max(r.backlog_bytes());
            if *r.connections().borrow() == 1 {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    eprintln!(
        "{N} requests for 60 KiB blocks, not read: closed {}, at most {} KiB queued, grown {} MB",
        closed.is_ok(),
        queued >> 10,
        grown >> 20
    );
    assert!(
        closed.is_ok(),
        "a peer that reads nothing was not disconnected"
    );
    assert!(
        queued > 0,
        "nothing was ever queued: the test did not load the replicator"
    );
    assert!(
        queued <= QUEUED_LIMIT,
        "{queued} bytes queued for a peer that does not read"
    );
    assert!(
        grown <= RSS_LIMIT,
        "the process grew by {} MB for {N} requests nobody reads",
        grown >> 20
    );
    assert_eq!(
        r.backlog_bytes(),
        0,
        "the closed connection's backlog is gone"
    );
    drop(t);
    // The honest connection goes on.
    assert!(!honest.is_finished());
    real.append(b"x").await.unwrap();
    wait_block(&h_core, 8, b"x").await;
    assert_no_panics();
}

/// A replicator with one core of eight 60 KiB blocks, listening, and a 20 s idle timeout.
async fn big_server() -> (Store, Core, Replicator, SocketAddr) {
    let store = Store::memory();
    let real = store.open_named("big").await.unwrap();
    for i in 0..8u8 {
        real.append(&vec![i; 60 * 1024]).await.unwrap();
    }
    let r = replicator(false);
    r.add_core(real.clone());
    let (addr, _) = r.listen(LOCAL).await.unwrap();
    (store, real, r, addr)
}

/// Sends paced requests for big blocks, not reading, until the replicator waits for the socket.
async fn congest(r: &Replicator, ch: &Channel, next_id: &mut u64) {
    let start = std::time::Instant::now();
    while r.backlog_bytes() < (4 << 20) {
        assert!(
            start.elapsed() < WAIT,
            "the replicator never waited for the socket"
        );
        let batch: Vec<Message> = (0..100)
            .map(|_| {
                *next_id += 1;
                block_request(*next_id, *next_id % 8, 0).msg()
            })
            .collect();
        ch.send_batch(&batch).unwrap();
        sleep(Duration::from_millis(20)).await;
    }
}

/// A peer that stops reading and then floods requests: the requests pile up while the session
/// waits for the socket, and the flood limit still ends the connection, long before the idle
/// timeout would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_while_congested_is_still_a_flood() {
    watch_process();
    let (_s, _core, r, addr) = big_server().await;
    let mut t = tapped_client(addr).await;
    let ch = t.evil.channel(_core.key()).await;
    connections(&r, 1).await;
    t.stall.send_replace(true);
    let mut id = 0;
    congest(&r, &ch, &mut id).await;
    let start = std::time::Instant::now();
    let flood = async {
        while *r.connections().borrow() != 0 {
            let batch: Vec<Message> = (0..500)
                .map(|_| {
                    id += 1;
                    block_request(id, id % 8, 0).msg()
                })
                .collect();
            if ch.send_batch(&batch).is_err() {
                continue;
            }
            sleep(Duration::from_millis(5)).await;
        }
    };
    timeout(Duration::from_secs(15), flood)
        .await
        .expect("a flood while congested was not stopped");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "ended by the flood limit, not the idle timeout"
    );
    assert_eq!(r.backlog_bytes(), 0);
    assert_no_panics();
}

/// The remote closes its channel while the session waits for the socket, then reads again:
/// the answers never sent leave nothing counted behind, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_channel_while_congested_leaves_no_backlog() {
    watch_process();
    let (_s, core, r, addr) = big_server().await;
    let mut t = tapped_client(addr).await;
    let ch = t.evil.channel(core.key()).await;
    connections(&r, 1).await;
    t.stall.send_replace(true);
    let mut id = 0;
    congest(&r, &ch, &mut id).await;
    let _ = t.evil.cmd.send(Cmd::Close(*ch.discovery_key()));
    sleep(Duration::from_millis(200)).await;
    t.stall.send_replace(false);
    let drained = async {
        while r.backlog_bytes() != 0 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, drained)
        .await
        .unwrap_or_else(|_| panic!("{} bytes stay counted", r.backlog_bytes()));
    assert_eq!(*r.connections().borrow(), 1, "the connection goes on");
    assert_no_panics();
}

// ---- 6. garbage after the handshake, on an open channel ----

/// What to send: plaintext frames (encrypted as usual), or raw bytes on the socket.
enum Garbage {
    Plain(Vec<u8>),
    Wire(Vec<u8>),
}

/// A compact-encoding uint.
fn uint(n: u64) -> Vec<u8> {
    match n {
        0..=0xfc => vec![n as u8],
        0xfd..=0xffff => [vec![0xfd], (n as u16).to_le_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![0xfe], (n as u32).to_le_bytes().to_vec()].concat(),
        _ => [vec![0xff], n.to_le_bytes().to_vec()].concat(),
    }
}

/// Garbage the replicator must answer by closing the connection: named `!...`. The others may
/// also be ignored (protomux ignores unknown message types, channels and control messages; a
/// random Request is a request).
fn garbage_cases(
    ch: u8,
    key: Key,
    data: &[u8],
    rng: &mut rand::rngs::StdRng,
) -> Vec<(String, Garbage)> {
    use Garbage::{Plain, Wire};
    let dk = discovery_key(&key.0);
    let open = |id: u64, dk: [u8; 32], cap: [u8; 32]| {
        let handshake = Handshake {
            seeks: false,
            capability: cap,
        }
        .encode();
        wire::encode_item(&Item::Open {
            id,
            protocol: wire::PROTOCOL.into(),
            key: Some(&dk),
            handshake: &handshake,
        })
    };
    let mut random = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.gen()).collect() };
    let mut cases = vec![
        (
            "!a frame that does not decrypt".into(),
            Wire([vec![40, 0, 0], random(40)].concat()),
        ),
        (
            "!a frame length over the limit".into(),
            Wire(vec![0xff, 0xff, 0xff]),
        ),
        (
            "!a Data cut in half".into(),
            Plain([&[ch][..], &data[..data.len() / 2]].concat()),
        ),
        (
            "!a Data one byte short".into(),
            Plain([&[ch][..], &data[..data.len() - 1]].concat()),
        ),
        (
            "!a Data whose value claims 4 GiB".into(),
            Plain([vec![ch, 3, 1, 1, 0, 0], uint(0xffff_ffff), b"xyz".to_vec()].concat()),
        ),
        (
            "!a Data whose node list claims 2^62 nodes".into(),
            Plain([vec![ch, 3, 1, 1, 0, 0, 1, b'x'], uint(1 << 62), random(8)].concat()),
        ),
        (
            "!a Data upgrade whose signature claims 2^40 bytes".into(),
            Plain([vec![ch, 3, 8, 1, 0, 0, 4, 0, 0], uint(1 << 40)].concat()),
        ),
        (
            "!a Bitfield of 2^40 words".into(),
            Plain([vec![ch, 7, 0], uint(1 << 40)].concat()),
        ),
        (
            "!an Extension whose name claims 4 GiB".into(),
            Plain([vec![ch, 9], uint(0xffff_ffff)].concat()),
        ),
        (
            "an unknown message type".into(),
            Plain(vec![ch, 42, 1, 2, 3]),
        ),
        (
            "a message type of u64::MAX".into(),
            Plain([vec![ch], uint(u64::MAX)].concat()),
        ),
        (
            "a channel id of u64::MAX".into(),
            Plain([uint(u64::MAX), vec![1, 0, 1, 0]].concat()),
        ),
        (
            "a message on a channel never opened".into(),
            Plain(vec![51, 1, 1, 1, 0, 0, 0]),
        ),
        ("!an empty channel message".into(), Plain(vec![ch])),
        (
            "a Close of a channel never opened".into(),
            Plain(vec![0, 3, 51]),
        ),
        ("an unknown control message".into(), Plain(vec![0, 9, 1, 2])),
        (
            "an Open with a wrong capability".into(),
            Plain(open(2, rand::random(), [7; 32])),
        ),
        (
            "!an Open of our core again, wrong capability".into(),
            Plain(open(u64::from(ch), dk, [7; 32])),
        ),
        (
            "!an Open of a channel id of 2^40".into(),
            Plain(open(1 << 40, dk, [7; 32])),
        ),
        (
            "!a batch entry running past the frame".into(),
            Plain(vec![0, 0, ch, 50, 1, 2]),
        ),
        (
            "!a batch of garbage".into(),
            Plain([vec![0, 0, ch], random(30)].concat()),
        ),
        (
            "a batch switching to a channel never opened".into(),
            Plain(vec![0, 0, ch, 2, 5, 0, 0, 51, 2, 5, 0]),
        ),
        // well-formed, in the JS encoding (seek with padding), for a byte past the end
        (
            "a seek past the end".into(),
            Plain([vec![ch, 1, 4, 1, 0], uint(u64::MAX), vec![0]].concat()),
        ),
    ];
    // Random payloads for every message type.
    for i in 0..40u64 {
        let typ = i % 10;
        let len = random(1)[0] as usize % 48;
        cases.push((
            format!("random type {typ} payload #{i}"),
            Plain([vec![ch, typ as u8], random(len)].concat()),
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_only_that_connection() {
    watch_process();
    let seed: u64 = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("HOSTILE_SEED={seed}");
    let (_s, real) = writer("garbage", 4).await;
    let (r, addr) = serving(&[&real]).await;
    let (_hs, h_core, h) = reader(real.key()).await;
    let honest = h.connect(addr).await.unwrap();
    assert!(h.wait_caught_up(&[real.key()], WAIT).await);
    let full = Request {
        upgrade: Some(RequestUpgrade {
            start: 0,
            length: 4,
        }),
        ..block_request(1, 0, 0)
    };
    // A channel message without its channel: type 3 (Data), then the payload.
    let data = [vec![3], genuine(&real, &full).await.unwrap().msg().encode()].concat();

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // (the channel id is the same on every fresh connection; checked below)
    let cases = garbage_cases(1, real.key(), &data, &mut rng);
    let mut tasks = Vec::new();
    for (name, garbage) in cases {
        let real = real.clone();
        let full = full.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = tapped_client(addr).await;
            let ch = t.evil.channel(real.key()).await;
            assert_eq!(t.channel_id(real.key()), 1);
            match garbage {
                Garbage::Plain(p) => t.inject.send(p).unwrap(),
                Garbage::Wire(b) => t.wire.send(b).unwrap(),
            }
            if t.closed_within(Duration::from_secs(2)).await {
                let line = closed_reason(t.evil.local).await;
                let reason = line.split("connection closed: ").nth(1).unwrap_or(&line);
                let reason = reason.split(" from=").next().unwrap_or(reason);
                return (name, format!("closed: {reason}"));
            }
            assert!(!name.starts_with('!'), "{name}: the connection stays open");
            // Still open: then it must still work (the garbage was ignored, not half-taken).
            ch.send(&full.msg()).unwrap();
            let gone = t.evil.gone.clone();
            loop {
                let Some(m) = recv(&ch, &gone).await else {
                    panic!("{name}: closed after the garbage, late");
                };
                if let Some(d) = Data::from_msg(m).filter(|d| d.request == full.id) {
                    let (_rs, mine, _r) = reader(real.key()).await;
                    assert!(mine.apply_proof(as_proof(d)).await.unwrap());
                    return (name, "ignored; the connection still serves".into());
                }
            }
        }));
    }
    let mut report = Vec::new();
    for t in tasks {
        report.push(
            timeout(WAIT * 2, t)
                .await
                .expect("case within the deadline")
                .expect("case"),
        );
    }
    for (name, outcome) in &report {
        eprintln!("{name:50} -> {outcome}");
    }
    // Every evil connection is gone (closed by the replicator, or dropped by the case), the
    // honest one stays and replicates.
    connections(&r, 1).await;
    assert!(!honest.is_finished());
    real.append(b"after the garbage").await.unwrap();
    wait_block(&h_core, 4, b"after the garbage").await;
    assert_no_panics();
}

// ---- well-formed messages with absurd values, from an evil server to a reader ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_values_do_not_overflow_or_store_anything() {
    watch_process();
    let (_s, real) = writer("absurd", 5).await;
    let (_rs, target, r) = reader(real.key()).await;
    let (addr, acc) = evil_server().await;
    let h = r.connect(addr).await.unwrap();
    let mut evil = accepted(acc).await;
    let ch = evil.channel(real.key()).await;
    let max = u64::MAX;
    ch.send_batch(&[
        Message::Sync {
            fork: 0,
            length: max,
            remote_length: 0,
            flags: 7,
        },
        Message::Range {
            drop: false,
            start: 0,
            length: max,
        },
        Message::Range {
            drop: true,
            start: max,
            length: max,
        },
        Message::Bitfield {
            start: max,
            words: vec![u32::MAX; 8],
        },
        Message::Want {
            start: max,
            length: max,
            any: true,
        },
        Message::Unwant {
            start: max,
            length: max,
            any: false,
        },
        Message::Cancel { request: max },
        no_data(max),
        Message::Extension {
            name: String::new(),
            message: vec![],
        },
    ])
    .unwrap();
    // Our reader asks for an upgrade to u64::MAX blocks; it gets NoData.
    let up = loop {
        if let Some(req) = Request::from_msg(&recv(&ch, &evil.gone).await.expect("still connected"))
        {
            break req;
        }
    };
    let u = up.upgrade.expect("an upgrade request");
    assert_eq!((u.start, u.length), (0, max));
    ch.send(&no_data(up.id)).unwrap();
    // Another fork with a huge length: taken for a truncation by the owner, its proof from
    // block 0 is asked for once (as JavaScript does); without one, nothing changes and no
    // request follows.
    ch.send(&Message::Sync {
        fork: max,
        length: max,
        remote_length: 0,
        flags: 7,
    })
    .unwrap();
    let fork_proof = loop {
        if let Some(req) = Request::from_msg(&recv(&ch, &evil.gone).await.expect("still connected"))
        {
            break req;
        }
    };
    let u = fork_proof.upgrade.expect("an upgrade request");
    assert_eq!((fork_proof.fork, u.start, u.length), (max, 0, max));
    ch.send(&no_data(fork_proof.id)).unwrap();
    let quiet = timeout(Duration::from_millis(500), async {
        loop {
            match recv(&ch, &evil.gone).await {
                Some(m @ Message::Request { .. }) => return Some(m),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    assert!(!matches!(quiet, Ok(Some(_))), "requested {quiet:?}");
    assert!(
        !h.is_finished(),
        "absurd but well-formed values are no reason to leave"
    );
    assert_eq!(target.info().length, 0);
    drop(ch);
    drop(evil);
    assert!(session_end(h).await.is_err());

    // An honest server then works as usual.
    let (_wr, honest) = serving(&[&real]).await;
    let _c = r.connect(honest).await.unwrap();
    assert!(r.wait_caught_up(&[real.key()], WAIT).await);
    assert_eq!(genuine_blocks(&target, 5).await, 5);
    assert_no_panics();
}

// ---- 4b. a request for a block a sparse replica lacks ----

/// The next Data or NoData on `ch`.
async fn next_answer(ch: &Channel, evil: &Evil) -> Message {
    loop {
        let m = recv(ch, &evil.gone).await.expect("still connected");
        if matches!(m, Message::Data { .. } | Message::NoData { .. }) {
            return m;
        }
    }
}

/// A replica that has a core's length but not all its blocks, asked for one it lacks, should
/// answer NoData at once (as JS does), not fetch the block from its other peers on the remote's
/// behalf, nor hold the channel while it waits for one.
///
/// KNOWN BUG, hence ignored: `net/proof.rs` `fallback_block_proof` reads the value with
/// `Core::get`, which, when a replication session is attached, asks the connected peers for a
/// missing block and waits up to 15 s. So (a) with an honest peer connected, the replica
/// downloads and stores the block because a remote asked for it, and (b) with none, the
/// remote's channel is stuck for 15 s per such request (its other messages wait). The fix is
/// `core.get_local(b.index)` there (the local part of `Core::get`, disk reads included); it is
/// outside the files this test's author was to change. JS peers never ask for a block we did
/// not announce, so only a broken or hostile peer gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_a_block_a_sparse_replica_lacks() {
    watch_process();
    let (_s, real) = writer("sparse", 5).await;
    let upgrade = genuine(&real, &upgrade_request(1, 0, 5)).await.unwrap();

    // (b) a replica with the length (from a genuine upgrade proof) and no block, no other peer
    let (_ss, sparse, s) = reader(real.key()).await;
    assert!(sparse.apply_proof(as_proof(upgrade.clone())).await.unwrap());
    let (saddr, _) = s.listen(LOCAL).await.unwrap();
    let mut evil = evil_client(saddr).await;
    let ch = evil.channel(real.key()).await;
    let t0 = tokio::time::Instant::now();
    ch.send(&block_request(1, 3, 0).msg()).unwrap();
    let answer = next_answer(&ch, &evil).await;
    let took = t0.elapsed();
    assert!(matches!(answer, Message::NoData { .. }), "{answer:?}");
    assert!(took < Duration::from_secs(2), "NoData after {took:?}");
    drop(evil);

    // (a) the same with an honest peer connected that has the block (not `download_all`: the
    // replica stays sparse)
    let ss = Store::memory();
    let sparse = ss.open_key(real.key(), true).await.unwrap();
    let s = replicator(false);
    s.add_core(sparse.clone());
    assert!(sparse.apply_proof(as_proof(upgrade)).await.unwrap());
    let (_wr, waddr) = serving(&[&real]).await;
    let _w = s.connect(waddr).await.unwrap();
    assert!(s.wait_caught_up(&[real.key()], WAIT).await);
    let (saddr, _) = s.listen(LOCAL).await.unwrap();
    let mut evil = evil_client(saddr).await;
    let ch = evil.channel(real.key()).await;
    ch.send(&block_request(1, 3, 0).msg()).unwrap();
    let answer = next_answer(&ch, &evil).await;
    assert!(matches!(answer, Message::NoData { .. }), "{answer:?}");
    assert_eq!(
        sparse.get_local(3).await.unwrap(),
        None,
        "the replica fetched a block because a remote asked for it"
    );
    assert_no_panics();
}
