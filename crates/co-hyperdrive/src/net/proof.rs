//! Between the protocol crate's messages and the store's proofs: a remote's `Request` answered
//! with [`Core::create_proof`], a remote's `Data` turned into a [`Proof`] for
//! [`Core::apply_proof`]. Conversion only; which requests get an answer is the store's rule.
//! Public for the hostile-peer tests only; it goes with the protocol crate.

use cohd_format::merkle::Node;
use cohd_format::wire;
use hypercore_protocol::schema::{Data, Request};
use hypercore_schema::{DataBlock, DataHash, DataSeek, DataUpgrade};

use crate::store::{Proof, ProofRequest};
use crate::{Core, CoreError};

/// The answer to `req`, or `None` when we cannot give one (the caller then sends `NoData`).
/// `Err` only for local storage failures.
pub async fn data_for(core: &Core, req: &Request) -> Result<Option<Data>, CoreError> {
    let Some(p) = core.create_proof(&request(req)).await? else {
        return Ok(None);
    };
    let nodes = |ns: &[Node]| -> Vec<hypercore_schema::Node> {
        ns.iter()
            .map(|n| hypercore_schema::Node::new(n.index, n.hash.to_vec(), n.size))
            .collect()
    };
    Ok(Some(Data {
        request: req.id,
        fork: p.fork,
        block: p.block.map(|b| DataBlock {
            index: b.index,
            nodes: nodes(&b.nodes),
            value: b.value,
        }),
        hash: p.hash.map(|h| DataHash {
            index: h.index,
            nodes: nodes(&h.nodes),
        }),
        seek: p.seek.map(|s| DataSeek {
            bytes: s.index,
            nodes: nodes(&s.nodes),
        }),
        upgrade: p.upgrade.map(|u| DataUpgrade {
            start: u.start,
            length: u.length,
            nodes: nodes(&u.nodes),
            additional_nodes: nodes(&u.additional),
            signature: u.signature.unwrap_or_default(),
        }),
    }))
}

/// A remote's request in the store's terms.
pub fn request(req: &Request) -> ProofRequest {
    let rb = |b: &hypercore_schema::RequestBlock| wire::RequestBlock {
        index: b.index,
        nodes: b.nodes,
    };
    ProofRequest {
        fork: req.fork,
        block: req.block.as_ref().map(rb),
        hash: req.hash.as_ref().map(rb),
        seek: req.seek.as_ref().map(|s| wire::RequestSeek {
            bytes: s.bytes,
            padding: 0,
        }),
        upgrade: req.upgrade.as_ref().map(|u| wire::RequestUpgrade {
            start: u.start,
            length: u.length,
        }),
        manifest: req.manifest,
    }
}

/// A remote's data as a proof; `Err` names a node without a 32-byte hash.
pub fn proof(d: Data) -> Result<Proof, String> {
    let nodes = |ns: Vec<hypercore_schema::Node>| -> Result<Vec<Node>, String> {
        ns.into_iter()
            .map(|n| {
                let hash = n.hash.as_slice().try_into().map_err(|_| {
                    format!("tree node {} has a hash that is not 32 bytes", n.index)
                })?;
                Ok(Node {
                    index: n.index,
                    size: n.length,
                    hash,
                })
            })
            .collect()
    };
    Ok(Proof {
        fork: d.fork,
        block: d
            .block
            .map(|b| {
                Ok::<_, String>(wire::DataBlock {
                    index: b.index,
                    nodes: nodes(b.nodes)?,
                    value: b.value,
                })
            })
            .transpose()?,
        hash: d
            .hash
            .map(|h| {
                Ok::<_, String>(wire::DataNodes {
                    index: h.index,
                    nodes: nodes(h.nodes)?,
                })
            })
            .transpose()?,
        seek: d
            .seek
            .map(|s| {
                Ok::<_, String>(wire::DataNodes {
                    index: s.bytes,
                    nodes: nodes(s.nodes)?,
                })
            })
            .transpose()?,
        upgrade: d
            .upgrade
            .map(|u| {
                Ok::<_, String>(wire::DataUpgrade {
                    start: u.start,
                    length: u.length,
                    nodes: nodes(u.nodes)?,
                    additional: nodes(u.additional_nodes)?,
                    signature: Some(u.signature),
                })
            })
            .transpose()?,
        manifest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn data_converts_both_ways() {
        let store = Store::memory();
        let core = store.open_named("t").await.unwrap();
        for i in 0..5u32 {
            core.append(format!("block {i}").as_bytes()).await.unwrap();
        }
        let req = Request {
            id: 3,
            fork: 0,
            block: Some(hypercore_schema::RequestBlock { index: 2, nodes: 0 }),
            hash: None,
            seek: None,
            upgrade: Some(hypercore_schema::RequestUpgrade {
                start: 0,
                length: 5,
            }),
            manifest: false,
            priority: 0,
        };
        let d = data_for(&core, &req).await.unwrap().unwrap();
        assert_eq!(d.request, 3);
        let p = proof(d).unwrap();
        assert_eq!(Some(p), core.create_proof(&request(&req)).await.unwrap());

        let reader_store = Store::memory();
        let reader = reader_store.open_key(core.key(), true).await.unwrap();
        let d = data_for(&core, &req).await.unwrap().unwrap();
        assert!(reader.apply_proof(proof(d).unwrap()).await.unwrap());
        assert_eq!(reader.get_local(2).await.unwrap().unwrap(), b"block 2");
    }

    #[test]
    fn short_hashes_are_refused() {
        let d = Data {
            request: 1,
            fork: 0,
            block: Some(DataBlock {
                index: 0,
                value: vec![1],
                nodes: vec![hypercore_schema::Node::new(2, vec![7; 31], 1)],
            }),
            hash: None,
            seek: None,
            upgrade: None,
        };
        assert!(proof(d).unwrap_err().contains("not 32 bytes"));
    }
}
