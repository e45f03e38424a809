//! What replication asks of a core, in the wire's own types ([`cohd_format::wire`]): the proof
//! answering a peer's request ([`Core::create_proof`]) and the one applied from a peer's data
//! ([`Core::apply_proof`]). The session only converts messages; every rule about which requests
//! can be answered lives here, beside the storage that answers them.
//!
//! Until our own Hypercore engine replaces the `hypercore` crate, proofs are converted to and
//! from the crate's schema here, and a block the crate's in-memory bitfield no longer knows
//! (written in an earlier session) is proven by a hash request for its leaf `2i`: the walk is
//! identical (same index, same `nodes` budget), and its node list is `[leaf 2i] ++ <the block
//! proof's nodes>` (docs/replication-notes.md §4.2).

use cohd_format::merkle::Node;
use cohd_format::wire::{
    DataBlock, DataNodes, DataUpgrade, RequestBlock, RequestSeek, RequestUpgrade,
};
use futures::FutureExt;
use hypercore::HypercoreError;

use super::core::{panic_message, Core, CoreError};

/// What a peer asks a core to prove: a wire `Request` without its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProofRequest {
    /// The fork the requester is on.
    pub fork: u64,
    /// A block, with how many nodes above its leaf the requester lacks.
    pub block: Option<RequestBlock>,
    /// A tree node's hash (flat index), with the nodes above it the requester lacks.
    pub hash: Option<RequestBlock>,
    /// A byte offset to locate.
    pub seek: Option<RequestSeek>,
    /// An upgrade from the requester's length.
    pub upgrade: Option<RequestUpgrade>,
    /// Whether the core's manifest is wanted.
    pub manifest: bool,
}

/// A proof: a wire `Data` without its request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// The fork it proves.
    pub fork: u64,
    /// A block with its proof.
    pub block: Option<DataBlock>,
    /// A node hash with its proof.
    pub hash: Option<DataNodes>,
    /// A seek proof.
    pub seek: Option<DataNodes>,
    /// A signed upgrade.
    pub upgrade: Option<DataUpgrade>,
    /// The core's manifest, encoded.
    pub manifest: Option<Vec<u8>>,
}

impl Core {
    /// The proof answering `req`, or `None` when we cannot give one (a block we do not hold,
    /// another fork, a request past our length or otherwise malformed): the session then says
    /// `NoData`. `Err` only for local storage failures. Never fetches from another peer.
    pub async fn create_proof(&self, req: &ProofRequest) -> Result<Option<Proof>, CoreError> {
        if !self.answerable(req) {
            return Ok(None);
        }
        // A block the crate's in-memory bitfield lacks would make it build the tree proof and
        // then give up: go to the leaf-hash walk directly.
        if let (Some(b), None) = (&req.block, &req.hash) {
            if !self.hypercore().has(b.index) {
                return self.block_proof_from_files(b, req).await;
            }
        }
        if let Some(p) = self.crate_proof(req.block, req.hash, req).await? {
            return Ok(Some(p));
        }
        match (&req.block, &req.hash) {
            (Some(b), None) => self.block_proof_from_files(b, req).await,
            _ => Ok(None),
        }
    }

    /// Whether `req` could be answered at all; requests the crate would reject (or overflow on)
    /// never reach it.
    fn answerable(&self, req: &ProofRequest) -> bool {
        let info = self.info();
        if req.fork != info.fork || req.seek.is_some() {
            return false;
        }
        if req.block.as_ref().is_some_and(|b| b.index >= info.length) {
            return false;
        }
        if req
            .hash
            .as_ref()
            .is_some_and(|h| h.index / 2 >= info.length)
        {
            return false;
        }
        if let Some(u) = &req.upgrade {
            if u.length == 0
                || u.start
                    .checked_add(u.length)
                    .is_none_or(|end| end > info.length)
            {
                return false;
            }
        }
        req.block.is_some() || req.hash.is_some() || req.upgrade.is_some()
    }

    /// The proof for block `b.index` (with the upgrade part of `req`) from a hash proof of its
    /// leaf and the value [`Core::get_local`] reads.
    pub(crate) async fn block_proof_from_files(
        &self,
        b: &RequestBlock,
        req: &ProofRequest,
    ) -> Result<Option<Proof>, CoreError> {
        let Some(leaf) = b.index.checked_mul(2) else {
            return Ok(None);
        };
        let Some(value) = self.get_local(b.index).await? else {
            return Ok(None);
        };
        let hash_req = RequestBlock {
            index: leaf,
            nodes: b.nodes,
        };
        let Some(mut p) = self.crate_proof(None, Some(hash_req), req).await? else {
            return Ok(None);
        };
        let Some(h) = p.hash.take() else {
            return Err(CoreError::Hypercore("hash proof without hash".into()));
        };
        let Some((first, nodes)) = h.nodes.split_first() else {
            return Err(CoreError::Hypercore("hash proof without nodes".into()));
        };
        if first.index != leaf {
            return Err(CoreError::Hypercore(format!(
                "hash proof for {leaf} starts with node {}",
                first.index
            )));
        }
        p.block = Some(DataBlock {
            index: b.index,
            value,
            nodes: nodes.to_vec(),
        });
        Ok(Some(p))
    }

    /// The crate's `create_proof`, with requests it refuses mapped to `None`.
    async fn crate_proof(
        &self,
        block: Option<RequestBlock>,
        hash: Option<RequestBlock>,
        req: &ProofRequest,
    ) -> Result<Option<Proof>, CoreError> {
        let rb = |b: RequestBlock| hypercore_schema::RequestBlock {
            index: b.index,
            nodes: b.nodes,
        };
        let upgrade = req
            .upgrade
            .as_ref()
            .map(|u| hypercore_schema::RequestUpgrade {
                start: u.start,
                length: u.length,
            });
        let fut = self
            .hypercore()
            .create_proof(block.map(rb), hash.map(rb), None, upgrade);
        let out = std::panic::AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .map_err(|p| CoreError::Corrupted(panic_message(&*p)))?;
        match out {
            Ok(Some(p)) => from_schema(p).map(Some),
            Ok(None) => Ok(None),
            Err(
                e @ (HypercoreError::BadArgument { .. } | HypercoreError::InvalidOperation { .. }),
            ) => {
                tracing::debug!("cannot build the requested proof: {e}");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How many nodes above block `index`'s leaf we lack (what a block request asks to be
    /// sent).
    pub async fn missing_nodes(&self, index: u64) -> u64 {
        let fut = self.hypercore().missing_nodes(index);
        match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(n)) => n,
            _ => 0,
        }
    }
}

fn node_from_schema(n: &hypercore_schema::Node) -> Result<Node, CoreError> {
    let hash: [u8; 32] =
        n.hash.as_slice().try_into().map_err(|_| {
            CoreError::Corrupted(format!("tree node {} has no 32-byte hash", n.index))
        })?;
    Ok(Node {
        index: n.index,
        size: n.length,
        hash,
    })
}

fn nodes_from_schema(ns: &[hypercore_schema::Node]) -> Result<Vec<Node>, CoreError> {
    ns.iter().map(node_from_schema).collect()
}

fn node_to_schema(n: &Node) -> hypercore_schema::Node {
    hypercore_schema::Node::new(n.index, n.hash.to_vec(), n.size)
}

fn nodes_to_schema(ns: &[Node]) -> Vec<hypercore_schema::Node> {
    ns.iter().map(node_to_schema).collect()
}

fn from_schema(p: hypercore_schema::Proof) -> Result<Proof, CoreError> {
    Ok(Proof {
        fork: p.fork,
        block: p
            .block
            .map(|b| {
                Ok::<_, CoreError>(DataBlock {
                    index: b.index,
                    nodes: nodes_from_schema(&b.nodes)?,
                    value: b.value,
                })
            })
            .transpose()?,
        hash: p
            .hash
            .map(|h| {
                Ok::<_, CoreError>(DataNodes {
                    index: h.index,
                    nodes: nodes_from_schema(&h.nodes)?,
                })
            })
            .transpose()?,
        seek: None,
        upgrade: p
            .upgrade
            .map(|u| {
                Ok::<_, CoreError>(DataUpgrade {
                    start: u.start,
                    length: u.length,
                    nodes: nodes_from_schema(&u.nodes)?,
                    additional: nodes_from_schema(&u.additional_nodes)?,
                    signature: Some(u.signature),
                })
            })
            .transpose()?,
        manifest: None,
    })
}

/// The crate's form of a proof from a peer.
pub(crate) fn to_schema(p: Proof) -> hypercore_schema::Proof {
    hypercore_schema::Proof {
        fork: p.fork,
        block: p.block.map(|b| hypercore_schema::DataBlock {
            index: b.index,
            nodes: nodes_to_schema(&b.nodes),
            value: b.value,
        }),
        hash: p.hash.map(|h| hypercore_schema::DataHash {
            index: h.index,
            nodes: nodes_to_schema(&h.nodes),
        }),
        seek: p.seek.map(|s| hypercore_schema::DataSeek {
            bytes: s.index,
            nodes: nodes_to_schema(&s.nodes),
        }),
        upgrade: p.upgrade.map(|u| hypercore_schema::DataUpgrade {
            start: u.start,
            length: u.length,
            nodes: nodes_to_schema(&u.nodes),
            additional_nodes: nodes_to_schema(&u.additional),
            signature: u.signature.unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn request(index: u64, nodes: u64, upgrade: Option<(u64, u64)>) -> ProofRequest {
        ProofRequest {
            block: Some(RequestBlock { index, nodes }),
            upgrade: upgrade.map(|(start, length)| RequestUpgrade { start, length }),
            ..ProofRequest::default()
        }
    }

    #[tokio::test]
    async fn proofs_from_files_equal_the_direct_ones() {
        let store = Store::memory();
        let core = store.open_named("t").await.unwrap();
        for i in 0..23u32 {
            core.append(format!("block {i}").as_bytes()).await.unwrap();
        }
        let len = core.info().length;
        let (mut checked, mut refused) = (0, 0);
        for index in 0..len {
            for nodes in [0u64, 1, 3, 8] {
                for upgrade in [None, Some((0, len)), Some((index / 2, len - index / 2))] {
                    let req = request(index, nodes, upgrade);
                    let direct = core.crate_proof(req.block, None, &req).await.unwrap();
                    let Some(direct) = direct else {
                        // refused (e.g. a node budget past the root): so is the answer
                        assert!(core.create_proof(&req).await.unwrap().is_none());
                        refused += 1;
                        continue;
                    };
                    let from_files = core
                        .block_proof_from_files(req.block.as_ref().unwrap(), &req)
                        .await
                        .unwrap()
                        .expect("proof from the files");
                    assert_eq!(direct, from_files, "{index} {nodes} {upgrade:?}");
                    assert_eq!(Some(direct), core.create_proof(&req).await.unwrap());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked + refused, 23 * 4 * 3);
        assert!(checked > 200, "only {checked} proofs compared");
    }

    #[tokio::test]
    async fn reopened_disk_core_is_served_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let blocks: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let req = request(5, 0, Some((0, 9)));
        let (key, before) = {
            let store = Store::create(&path).unwrap();
            let core = store.open_named("served").await.unwrap();
            for b in &blocks {
                core.append(b).await.unwrap();
            }
            let before = core.create_proof(&req).await.unwrap().unwrap();
            store.flush().unwrap();
            (core.key(), before)
        };
        let store = Store::open(&path).unwrap();
        let core = store.open_named("served").await.unwrap();
        assert_eq!(core.key(), key);
        assert_eq!(core.info().contiguous_length, 9);
        // the very proof of the earlier session
        assert_eq!(core.create_proof(&req).await.unwrap(), Some(before));

        // and a reader verifies every block of it
        let reader_store = Store::memory();
        let reader = reader_store.open_key(key, true).await.unwrap();
        let up = ProofRequest {
            upgrade: Some(RequestUpgrade {
                start: 0,
                length: 9,
            }),
            ..ProofRequest::default()
        };
        let p = core.create_proof(&up).await.unwrap().unwrap();
        assert!(reader.apply_proof(p).await.unwrap());
        for (i, b) in blocks.iter().enumerate() {
            let i = i as u64;
            let nodes = reader.missing_nodes(i).await;
            let p = core
                .create_proof(&request(i, nodes, None))
                .await
                .unwrap()
                .unwrap();
            assert!(reader.apply_proof(p).await.unwrap());
            assert_eq!(reader.get(i).await.unwrap().as_ref(), Some(b));
        }
    }

    #[tokio::test]
    async fn unanswerable_requests_are_none() {
        let store = Store::memory();
        let core = store.open_named("t").await.unwrap();
        for i in 0..4u32 {
            core.append(format!("block {i}").as_bytes()).await.unwrap();
        }
        let none = [
            request(4, 0, None),                // past the end
            request(u64::MAX, 0, None),         // would overflow 2*i
            request(0, 0, Some((0, 5))),        // upgrade past the end
            request(0, 0, Some((u64::MAX, 2))), // upgrade overflow
            request(0, 0, Some((2, 0))),        // empty upgrade
            ProofRequest {
                fork: 1,
                ..request(0, 0, None)
            }, // other fork
            ProofRequest::default(),            // asks for nothing
            request(0, u64::MAX, None),         // absurd node budget
        ];
        for req in none {
            assert!(core.create_proof(&req).await.unwrap().is_none(), "{req:?}");
        }
    }
}
