//! A Data message from a peer, checked against a tree we trust: verification never panics,
//! whatever the nodes, indices and lengths claim.
#![no_main]

use cohd_format::proof::{roots_of, tree_of, verify, Received, ReceivedUpgrade};
use cohd_format::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&have, payload)) = data.split_first() else {
        return;
    };
    let Ok(Message::Data {
        block,
        hash,
        seek,
        upgrade,
        ..
    }) = Message::decode(3, payload)
    else {
        return;
    };
    let blocks: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; usize::from(i) + 1]).collect();
    let tree = tree_of(&blocks);
    let length = u64::from(have % 14);
    let roots = roots_of(&tree, length).expect("roots of a known tree");
    let received = Received {
        block: block.as_ref().map(|b| (b.index, b.value.as_slice(), b.nodes.clone())),
        hash: hash.map(|h| (h.index, h.nodes)),
        seek: seek.map(|s| s.nodes),
        upgrade: upgrade.map(|u| ReceivedUpgrade {
            start: u.start,
            length: u.length,
            nodes: u.nodes,
            additional: u.additional,
        }),
    };
    let _ = verify(&roots, length, &received);
});
