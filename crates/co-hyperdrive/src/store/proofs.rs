//! What replication asks of a core, in the wire's own types ([`cohd_format::wire`]): the proof
//! answering a peer's request ([`Core::create_proof`]) and the one applied from a peer's data
//! ([`Core::apply_proof`]). The session only converts messages; which requests get an answer
//! is decided here and in the log (`log.rs`), beside the storage that answers them.

use cohd_format::wire::{
    DataBlock, DataNodes, DataUpgrade, RequestBlock, RequestSeek, RequestUpgrade,
};

use super::core::{Core, CoreError};
use super::log::LogError;

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
        if let Some(b) = &req.block {
            if self.is_damaged(b.index) {
                return Ok(None);
            }
        }
        // The log reads the block itself, checked: a damaged one is fetched again, not served.
        // An upgrade to a length of ours not signed yet syncs the store first (`Log::
        // signature_of`): that runs on a blocking thread, not the runtime's.
        let made = if req.upgrade.is_some() && self.log().unsigned() {
            let (log, req) = (self.shared_log(), req.clone());
            tokio::task::spawn_blocking(move || log.create_proof(&req))
                .await
                .map_err(|e| CoreError::Storage(format!("signing stopped: {e}")))?
        } else {
            self.log().create_proof(req)
        };
        match made {
            Err(LogError::Damaged(index)) => {
                self.mark_damaged(index);
                Ok(None)
            }
            r => Ok(r?),
        }
    }

    /// Whether `req` could be answered at all.
    fn answerable(&self, req: &ProofRequest) -> bool {
        let info = self.info();
        if req.fork != info.fork {
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
        req.block.is_some()
            || req.hash.is_some()
            || req.upgrade.is_some()
            || req.seek.is_some()
            || req.manifest
    }

    /// How many nodes above block `index`'s leaf we lack (what a block request asks to be
    /// sent).
    pub async fn missing_nodes(&self, index: u64) -> u64 {
        self.log().missing_nodes(index)
    }

    /// [`missing_nodes`](Self::missing_nodes), counting the nodes `coming` names as held too
    /// (those that answers already asked for will bring).
    pub(crate) fn missing_nodes_beside(&self, index: u64, coming: impl Fn(u64) -> bool) -> u64 {
        self.log().missing_nodes_beside(index, coming)
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
