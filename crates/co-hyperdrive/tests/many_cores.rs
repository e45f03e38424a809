//! One connection carrying more cores than `hypercore-protocol`'s command channel holds (1,000):
//! every core is opened and replicated, and nothing waits on a full channel.

use std::net::SocketAddr;
use std::time::Duration;

use co_hyperdrive::net::{ReplicateOptions, Replicator};
use co_hyperdrive::Store;

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const CORES: usize = 1_050;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_cores_than_the_command_channel_holds() {
    let src = Store::memory();
    let server = Replicator::new(ReplicateOptions::default());
    let mut keys = Vec::with_capacity(CORES);
    for i in 0..CORES {
        let c = src.open_named(&format!("c{i}")).await.unwrap();
        c.append(format!("block of core {i}").as_bytes())
            .await
            .unwrap();
        keys.push(c.key());
        server.add_core(c);
    }
    let (addr, _) = server.listen(LOCAL).await.unwrap();

    let dst = Store::memory();
    let client = Replicator::new(ReplicateOptions {
        download_all: true,
        ..ReplicateOptions::default()
    });
    let mut cores = Vec::with_capacity(CORES);
    for k in &keys {
        let c = dst.open_key(*k, true).await.unwrap();
        client.add_core(c.clone());
        cores.push(c);
    }
    let _conn = client.connect(addr).await.unwrap();
    assert!(
        client.wait_caught_up(&keys, Duration::from_secs(60)).await,
        "not every core caught up"
    );
    for (i, c) in cores.iter().enumerate() {
        let b = c.get_local(0).await.unwrap();
        assert_eq!(
            b,
            Some(format!("block of core {i}").into_bytes()),
            "core {i}"
        );
    }
}
