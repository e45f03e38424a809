//! Serving our cores (we are the writer, the remote reads): one task drives the Protocol, one
//! task per open channel answers that channel's messages in order (nothing is dropped: the
//! channel's inbound queue is unbounded, and we process requests one by one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use co_hyperdrive::Core;
use futures::StreamExt;
use hypercore_protocol::schema::{NoData, Range, Synchronize};
use hypercore_protocol::{discovery_key, Channel, Event, Message, Protocol};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::conn::Conn;
use crate::proof::{build_data, Built};

pub struct Served {
    pub cores: HashMap<[u8; 32], Core>, // by discovery key
}

impl Served {
    pub fn new(cores: Vec<Core>) -> Self {
        Self {
            cores: cores
                .into_iter()
                .map(|c| (discovery_key(&c.key().0), c))
                .collect(),
        }
    }
}

pub async fn serve_conn(
    tcp: TcpStream,
    served: Arc<Served>,
    changed: watch::Receiver<u64>,
    keepalive: Option<Duration>,
) -> anyhow::Result<()> {
    let mut conn = Conn::new(tcp, false, keepalive)?;
    let stats = conn.stats.clone();
    let notes = conn.notes.clone();
    let mut rejected = conn.rejected_rx.take().unwrap();
    let mut protocol = Protocol::new(Box::new(conn));
    let eager = std::env::var_os("SPIKE_EAGER_OPEN").is_some();
    let result = async {
        loop {
            let ev = tokio::select! {
                ev = protocol.next() => match ev { Some(ev) => ev, None => break },
                Some(dk) = rejected.recv() => {
                    eprintln!("[rust] remote rejected our open of {}; closing it locally", &hex::encode(dk)[..8]);
                    protocol.commands().close(dk).await?;
                    continue;
                }
            };
            match ev? {
                Event::Handshake(pk) => {
                    eprintln!("[rust] handshake done, remote {}", hex::encode(pk));
                    if eager {
                        for core in served.cores.values() {
                            protocol.open(core.key().0).await?;
                        }
                    }
                }
                Event::DiscoveryKey(dk) => match served.cores.get(&dk) {
                    Some(core) => {
                        eprintln!("[rust] remote opened {}, opening back", &hex::encode(dk)[..8]);
                        protocol.open(core.key().0).await?;
                    }
                    None => eprintln!("[rust] remote asked for unknown {}", &hex::encode(dk)[..8]),
                },
                Event::Channel(ch) => {
                    let core = served.cores[ch.discovery_key()].clone();
                    let changed = changed.clone();
                    tokio::spawn(async move {
                        let dk = hex::encode(&ch.discovery_key()[..4]);
                        if let Err(e) = serve_channel(ch, core, changed).await {
                            eprintln!("[rust] channel {dk} failed: {e:#}");
                        }
                    });
                }
                Event::Close(dk) => eprintln!("[rust] channel {} closed", &hex::encode(dk)[..8]),
                _ => {}
            }
        }
        anyhow::Ok(())
    }
    .await;
    eprintln!(
        "[rust] connection ended: {:?}; stats {:?}; notes {:?}",
        result.as_ref().err().map(|e| e.to_string()),
        stats.lock().unwrap(),
        notes.lock().unwrap()
    );
    Ok(())
}

#[derive(Default, Debug)]
struct Remote {
    synced: bool,
    fork: u64,
    length: u64,
    contiguous: u64,
    last_ext: String,
}

fn sync_msg(core: &Core, remote: &Remote) -> Message {
    let info = core.info();
    let same_fork = remote.fork == info.fork;
    Message::Synchronize(Synchronize {
        fork: info.fork,
        length: info.length,
        // what we know of the remote's length ("lengthAcked" on their side): must equal their
        // length or JS will not send an upgrade request
        remote_length: if same_fork { remote.length } else { 0 },
        // we can serve an upgrade from their length: our own log never forks, so any length
        // <= ours on our fork is a prefix of ours
        can_upgrade: same_fork && remote.length <= info.length,
        uploading: true,
        downloading: true,
    })
}

fn range_msg(core: &Core) -> Option<Message> {
    let c = core.info().contiguous_length;
    (c > 0).then(|| {
        Message::Range(Range {
            drop: false,
            start: 0,
            length: c,
        })
    })
}

async fn serve_channel(
    mut ch: Channel,
    core: Core,
    mut changed: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    let dk = hex::encode(&ch.discovery_key()[..4]);
    let rx = ch.take_receiver().expect("fresh channel");
    let mut remote = Remote::default();
    let mut announced = core.info().length;
    let mut live = true;

    // What JS does in Peer.onopen: sync, then a Range for the contiguous prefix. Without the
    // Range a JS reader never requests a block (it only asks peers that "have" it).
    let mut first = vec![sync_msg(&core, &remote)];
    first.extend(range_msg(&core));
    ch.send_batch(&first).await?;

    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Ok(msg) = msg else { break };
                match msg {
                    Message::Synchronize(s) => {
                        let first_sync = !remote.synced;
                        remote.synced = true;
                        remote.fork = s.fork;
                        remote.length = s.length;
                        eprintln!("[rust {dk}] <- sync len {} remote_len {} can_upgrade {}", s.length, s.remote_length, s.can_upgrade);
                        if first_sync || s.remote_length != core.info().length {
                            ch.send(sync_msg(&core, &remote)).await?;
                        }
                    }
                    Message::Request(r) => {
                        eprintln!(
                            "[rust {dk}] <- request id {} block {:?} hash {:?} upgrade {:?}",
                            r.id, r.block.as_ref().map(|b| (b.index, b.nodes)),
                            r.hash.as_ref().map(|b| (b.index, b.nodes)),
                            r.upgrade.as_ref().map(|u| (u.start, u.length))
                        );
                        match build_data(&core, &r).await {
                            Ok(Built::Data(d)) => {
                                if std::env::var_os("SPIKE_BATCH_REPLIES").is_some() {
                                    // diagnostic: reply in a protomux batch (JS then corks its
                                    // own replies, and may batch control messages with them)
                                    let mut m = vec![Message::Data(d)];
                                    m.extend(range_msg(&core));
                                    ch.send_batch(&m).await?
                                } else {
                                    ch.send(Message::Data(d)).await?
                                }
                            }
                            Ok(Built::NoData) => ch.send(Message::NoData(NoData { request: r.id })).await?,
                            Err(e) => {
                                eprintln!("[rust {dk}] bad request {}: {e:#}", r.id);
                                ch.send(Message::NoData(NoData { request: r.id })).await?
                            }
                        }
                    }
                    Message::Want(w) => {
                        eprintln!("[rust {dk}] <- want {}+{}", w.start, w.length);
                        if let Some(m) = range_msg(&core) { ch.send(m).await?; }
                    }
                    Message::Range(r) => {
                        if r.start == 0 && !r.drop { remote.contiguous = remote.contiguous.max(r.length); }
                        eprintln!("[rust {dk}] <- range {:?}", r);
                    }
                    Message::Extension(e) => {
                        let name = if e.name.is_empty() { remote.last_ext.clone() } else { e.name.clone() };
                        remote.last_ext = name.clone();
                        eprintln!("[rust {dk}] <- extension {name:?} {} raw bytes", e.message.len());
                        if name == "spike" {
                            // the raw payload JS put on the wire (its extension encoding applied)
                            let mut reply = b"pong: ".to_vec();
                            reply.extend_from_slice(&e.message);
                            ch.send(Message::Extension(hypercore_protocol::schema::Extension {
                                name: "spike".into(),
                                message: reply,
                            }))
                            .await?;
                        }
                    }
                    Message::Close(_) => break,
                    other => eprintln!("[rust {dk}] <- {}", other.name()),
                }
            }
            r = changed.changed(), if live => {
                if r.is_err() { live = false; continue; }
                let len = core.info().length;
                if len > announced {
                    announced = len;
                    // live append: a sync with the new length (JS requests the upgrade) and a
                    // Range so JS knows we hold the new blocks
                    let mut m = vec![sync_msg(&core, &remote)];
                    m.extend(range_msg(&core));
                    eprintln!("[rust {dk}] -> live sync len {len}");
                    ch.send_batch(&m).await?;
                }
            }
        }
    }
    eprintln!("[rust {dk}] channel loop done");
    Ok(())
}
