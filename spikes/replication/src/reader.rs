//! Reading a remote core (we download): the reverse direction, against a JS hypercore server.

use std::collections::HashMap;
use std::time::Duration;

use co_hyperdrive::Core;
use futures::StreamExt;
use hypercore_protocol::schema::{Request, Synchronize};
use hypercore_protocol::{discovery_key, Channel, Event, Message, Protocol};
use hypercore_schema::{RequestBlock, RequestUpgrade};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::conn::Conn;

const MAX_INFLIGHT: usize = 16;

pub async fn read_core(
    tcp: TcpStream,
    core: Core,
    expect_len: u64,
    keepalive: Option<Duration>,
) -> anyhow::Result<()> {
    let conn = Conn::new(tcp, true, keepalive)?;
    let stats = conn.stats.clone();
    let notes = conn.notes.clone();
    let mut protocol = Protocol::new(Box::new(conn));
    let key = core.key().0;
    let dk = discovery_key(&key);
    let (done_tx, mut done_rx) = oneshot::channel::<anyhow::Result<()>>();
    let mut done_tx = Some(done_tx);
    let res = loop {
        tokio::select! {
            ev = protocol.next() => {
                let Some(ev) = ev else { break Err(anyhow::anyhow!("protocol ended")) };
                match ev {
                    Err(e) => break Err(e.into()),
                    Ok(Event::Handshake(_)) => {
                        eprintln!("[rust] handshake done, opening channel");
                        protocol.open(key).await?;
                    }
                    Ok(Event::DiscoveryKey(d)) => eprintln!("[rust] remote offered {} (ignored, ours is {})", &hex::encode(d)[..8], &hex::encode(dk)[..8]),
                    Ok(Event::Channel(ch)) => {
                        let core = core.clone();
                        let tx = done_tx.take();
                        tokio::spawn(async move {
                            let r = read_channel(ch, core, expect_len).await;
                            if let Some(tx) = tx { let _ = tx.send(r); }
                        });
                    }
                    Ok(Event::Close(_)) => eprintln!("[rust] channel closed"),
                    Ok(_) => {}
                }
            }
            r = &mut done_rx => break r.unwrap_or_else(|_| Err(anyhow::anyhow!("reader task died"))),
        }
    };
    eprintln!(
        "[rust] reader ended; stats {:?}; notes {:?}",
        stats.lock().unwrap(),
        notes.lock().unwrap()
    );
    res
}

#[derive(Default)]
struct Peer {
    synced: bool,
    fork: u64,
    length: u64,
    remote_length: u64,
    can_upgrade: bool,
    has_contig: u64,
    upgrade_inflight: bool,
    inflight: HashMap<u64, u64>, // request id -> block index
    next_id: u64,
}

fn our_sync(core: &Core, p: &Peer) -> Message {
    let info = core.info();
    Message::Synchronize(Synchronize {
        fork: info.fork,
        length: info.length,
        remote_length: if p.fork == info.fork { p.length } else { 0 },
        can_upgrade: p.length <= info.length,
        uploading: true,
        downloading: true,
    })
}

async fn read_channel(mut ch: Channel, core: Core, expect_len: u64) -> anyhow::Result<()> {
    let rx = ch.take_receiver().expect("fresh channel");
    let mut p = Peer {
        next_id: 1,
        ..Default::default()
    };
    ch.send(our_sync(&core, &p)).await?;
    while let Ok(msg) = rx.recv().await {
        match msg {
            Message::Synchronize(s) => {
                eprintln!("[rust] <- sync len {} remote_len {} can_upgrade {}", s.length, s.remote_length, s.can_upgrade);
                let first = !p.synced;
                p.synced = true;
                p.fork = s.fork;
                p.length = s.length;
                p.remote_length = s.remote_length;
                p.can_upgrade = s.can_upgrade;
                if first || s.remote_length != core.info().length {
                    ch.send(our_sync(&core, &p)).await?;
                }
            }
            Message::Range(r) => {
                eprintln!("[rust] <- range {:?}", r);
                if !r.drop && r.start <= p.has_contig {
                    p.has_contig = p.has_contig.max(r.start + r.length);
                }
            }
            Message::Data(d) => {
                let was_upgrade = d.upgrade.is_some();
                let block = d.block.as_ref().map(|b| b.index);
                p.inflight.remove(&d.request);
                let ok = core.hypercore().verify_and_apply_proof(d.into_proof()).await?;
                if was_upgrade {
                    p.upgrade_inflight = false;
                    if std::env::var_os("SPIKE_PROBE_NODATA").is_some() {
                        // ask for a block the remote does not have: JS 11 answers NoData with a
                        // trailing flags/reason the crate cannot decode
                        let id = p.next_id;
                        p.next_id += 1;
                        let index = core.info().length + 10;
                        eprintln!("[rust] -> probe request for missing block {index} (id {id})");
                        ch.send(Message::Request(Request {
                            id, fork: 0,
                            block: Some(RequestBlock { index, nodes: 0 }),
                            hash: None, seek: None, upgrade: None, manifest: false, priority: 0,
                        })).await?;
                    }
                }
                eprintln!("[rust] <- data upgrade {was_upgrade} block {block:?} applied {ok}; now {:?}", core.info());
                if was_upgrade && ok {
                    // tell the remote our new length (JS does this after every upgrade), so its
                    // next Sync carries remote_length == our length and we can upgrade again
                    ch.send(our_sync(&core, &p)).await?;
                }
            }
            Message::NoData(n) => {
                eprintln!("[rust] <- no data for request {}", n.request);
                if p.inflight.remove(&n.request).is_none() {
                    p.upgrade_inflight = false;
                }
            }
            Message::Extension(e) => eprintln!("[rust] <- extension {:?}", e.name),
            other => eprintln!("[rust] <- {}", other.name()),
        }

        let info = core.info();
        // upgrade first (JS: _shouldUpgrade)
        if !p.upgrade_inflight && p.can_upgrade && p.length > info.length && p.remote_length == info.length {
            let id = p.next_id;
            p.next_id += 1;
            p.upgrade_inflight = true;
            eprintln!("[rust] -> request upgrade {}..{}", info.length, p.length);
            ch.send(Message::Request(Request {
                id,
                fork: p.fork,
                block: None,
                hash: None,
                seek: None,
                upgrade: Some(RequestUpgrade { start: info.length, length: p.length - info.length }),
                manifest: false,
                priority: 0,
            }))
            .await?;
        }
        // then blocks, pipelined
        let end = info.length.min(p.has_contig);
        let mut batch = Vec::new();
        let mut i = info.contiguous_length;
        while i < end && p.inflight.len() < MAX_INFLIGHT {
            if !core.hypercore().has(i) && !p.inflight.values().any(|&x| x == i) {
                let nodes = core.hypercore().missing_nodes(i).await?;
                let id = p.next_id;
                p.next_id += 1;
                p.inflight.insert(id, i);
                batch.push(Message::Request(Request {
                    id,
                    fork: info.fork,
                    block: Some(RequestBlock { index: i, nodes }),
                    hash: None,
                    seek: None,
                    upgrade: None,
                    manifest: false,
                    priority: 0,
                }));
            }
            i += 1;
        }
        if !batch.is_empty() {
            eprintln!("[rust] -> {} block requests", batch.len());
            ch.send_batch(&batch).await?;
        }
        if info.length >= expect_len && info.contiguous_length == info.length && info.length > 0 {
            return Ok(());
        }
    }
    anyhow::bail!("channel closed before the core was complete")
}
