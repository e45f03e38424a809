//! Answers to a remote's `Request`: a `Data` message for any block [`Core::get`] returns.
//!
//! `Hypercore::create_proof` builds the tree part of a proof first, then reads the block value
//! through hypercore's own `get`, which only knows hypercore's *in-memory* bitfield. A core
//! reopened from disk starts with an empty one (see `store/core.rs`), so
//! `create_proof(block: Some(..))` returns `Ok(None)` for every block written in an earlier
//! session. The fallback asks for the same proof as a *hash* request for tree index `2*i`: the
//! walk is identical (same index, same `last_index`, same `nodes` budget), and its node list is
//! `[leaf 2i] ++ <the block proof's nodes>`. The nodes after the leaf, paired with the value
//! `Core::get` reads from the files, are the block proof (docs/replication-notes.md §4.2).

use futures::FutureExt;
use hypercore::HypercoreError;
use hypercore_protocol::schema::{Data, Request};
use hypercore_schema::{DataBlock, Proof, RequestBlock};

use crate::{Core, CoreError};

/// The answer to `req`, or `None` when we cannot give one (unknown block, other fork, a request
/// past our length): the caller then sends `NoData`. `Err` only for local storage failures.
pub(crate) async fn data_for(core: &Core, req: &Request) -> Result<Option<Data>, CoreError> {
    Ok(proof_for(core, req).await?.map(|p| Data {
        request: req.id,
        fork: p.fork,
        block: p.block,
        hash: p.hash,
        seek: p.seek,
        upgrade: p.upgrade,
    }))
}

/// Whether we could answer `req` at all; requests hypercore would reject (or overflow on) are
/// answered with `NoData` without asking it.
fn answerable(core: &Core, req: &Request) -> bool {
    let info = core.info();
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
    req.block.is_some() || req.hash.is_some() || req.seek.is_some() || req.upgrade.is_some()
}

async fn proof_for(core: &Core, req: &Request) -> Result<Option<Proof>, CoreError> {
    if !answerable(core, req) {
        return Ok(None);
    }
    // A block hypercore's in-memory bitfield lacks (written in an earlier session) would make
    // create_proof build the tree proof and then give up: go to the fallback directly.
    if let (Some(b), None) = (&req.block, &req.hash) {
        if !core.hypercore().has(b.index) {
            return fallback_block_proof(core, b, req).await;
        }
    }
    let direct = create_proof(
        core,
        req.block.clone(),
        req.hash.clone(),
        req.seek.clone(),
        req.upgrade.clone(),
    )
    .await?;
    if direct.is_some() {
        return Ok(direct);
    }
    match (&req.block, &req.hash) {
        (Some(b), None) => fallback_block_proof(core, b, req).await,
        _ => Ok(None),
    }
}

/// The proof for block `b.index` (with the seek and upgrade parts of `req`) built from a hash
/// proof and the value [`Core::get`] returns.
pub(crate) async fn fallback_block_proof(
    core: &Core,
    b: &RequestBlock,
    req: &Request,
) -> Result<Option<Proof>, CoreError> {
    let Some(leaf) = b.index.checked_mul(2) else {
        return Ok(None);
    };
    // Only what we hold: serving must never turn into fetching from another peer.
    let Some(value) = core.get_local(b.index).await? else {
        return Ok(None);
    };
    let hash_req = RequestBlock {
        index: leaf,
        nodes: b.nodes,
    };
    let Some(mut p) = create_proof(
        core,
        None,
        Some(hash_req),
        req.seek.clone(),
        req.upgrade.clone(),
    )
    .await?
    else {
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

/// `Hypercore::create_proof` with requests it refuses mapped to `None` and panics contained.
async fn create_proof(
    core: &Core,
    block: Option<RequestBlock>,
    hash: Option<RequestBlock>,
    seek: Option<hypercore_schema::RequestSeek>,
    upgrade: Option<hypercore_schema::RequestUpgrade>,
) -> Result<Option<Proof>, CoreError> {
    let fut = core.hypercore().create_proof(block, hash, seek, upgrade);
    let out = std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            CoreError::Corrupted(format!("hypercore failed: {msg}"))
        })?;
    match out {
        Ok(p) => Ok(p),
        Err(e @ (HypercoreError::BadArgument { .. } | HypercoreError::InvalidOperation { .. })) => {
            tracing::debug!("cannot build the requested proof: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use compact_encoding::CompactEncoding;
    use hypercore_schema::RequestUpgrade;

    fn request(index: u64, nodes: u64, upgrade: Option<(u64, u64)>) -> Request {
        Request {
            id: 7,
            fork: 0,
            block: Some(RequestBlock { index, nodes }),
            hash: None,
            seek: None,
            upgrade: upgrade.map(|(start, length)| RequestUpgrade { start, length }),
            manifest: false,
            priority: 0,
        }
    }

    fn bytes(d: &Data) -> Vec<u8> {
        d.to_encoded_bytes().unwrap().to_vec()
    }

    fn as_data(req: &Request, p: Proof) -> Data {
        Data {
            request: req.id,
            fork: p.fork,
            block: p.block,
            hash: p.hash,
            seek: p.seek,
            upgrade: p.upgrade,
        }
    }

    #[tokio::test]
    async fn fallback_equals_create_proof() {
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
                    let direct = core
                        .hypercore()
                        .create_proof(req.block.clone(), None, None, req.upgrade.clone())
                        .await;
                    let Ok(direct) = direct else {
                        // hypercore refuses it (e.g. a node budget past the root): so do we
                        assert!(data_for(&core, &req).await.unwrap().is_none());
                        refused += 1;
                        continue;
                    };
                    let direct = direct.expect("a memory core has every block");
                    let fb = fallback_block_proof(&core, req.block.as_ref().unwrap(), &req)
                        .await
                        .unwrap()
                        .expect("fallback proof");
                    assert_eq!(
                        bytes(&as_data(&req, direct.clone())),
                        bytes(&as_data(&req, fb)),
                        "block {index} nodes {nodes} upgrade {upgrade:?}"
                    );
                    let d = data_for(&core, &req).await.unwrap().unwrap();
                    assert_eq!(bytes(&d), bytes(&as_data(&req, direct)));
                    checked += 1;
                }
            }
        }
        assert_eq!(checked + refused, 23 * 4 * 3);
        assert!(checked > 200, "only {checked} proofs compared");
    }

    #[tokio::test]
    async fn reopened_disk_core_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let blocks: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let (key, before) = {
            let store = Store::create(&path).unwrap();
            let core = store.open_named("served").await.unwrap();
            for b in &blocks {
                core.append(b).await.unwrap();
            }
            let req = request(5, 0, Some((0, 9)));
            let before = data_for(&core, &req).await.unwrap().unwrap();
            store.flush().unwrap();
            (core.key(), bytes(&before))
        };
        let store = Store::open(&path).unwrap();
        let core = store.open_named("served").await.unwrap();
        assert_eq!(core.key(), key);
        assert_eq!(core.info().contiguous_length, 9);
        // hypercore itself cannot see the block any more ...
        let req = request(5, 0, Some((0, 9)));
        let direct = core
            .hypercore()
            .create_proof(req.block.clone(), None, None, req.upgrade.clone())
            .await
            .unwrap();
        assert!(
            direct.is_none(),
            "create_proof sees the block: the fallback is untested"
        );
        // ... data_for still answers, with the very proof of the earlier session
        let d = data_for(&core, &req).await.unwrap().expect("served");
        assert_eq!(bytes(&d), before);

        // and a reader verifies every block of it
        let reader_store = Store::memory();
        let reader = reader_store.open_key(key, true).await.unwrap();
        let up = Request {
            block: None,
            ..request(0, 0, Some((0, 9)))
        };
        let d = data_for(&core, &up).await.unwrap().unwrap();
        assert!(reader
            .hypercore()
            .verify_and_apply_proof(d.into_proof())
            .await
            .unwrap());
        for (i, b) in blocks.iter().enumerate() {
            let i = i as u64;
            let nodes = reader.hypercore().missing_nodes(i).await.unwrap();
            let d = data_for(&core, &request(i, nodes, None))
                .await
                .unwrap()
                .unwrap();
            assert!(reader
                .hypercore()
                .verify_and_apply_proof(d.into_proof())
                .await
                .unwrap());
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
            Request {
                fork: 1,
                ..request(0, 0, None)
            }, // other fork
            Request {
                block: None,
                ..request(0, 0, None)
            }, // asks for nothing
            request(0, u64::MAX, None),         // absurd node budget
        ];
        for req in none {
            assert!(data_for(&core, &req).await.unwrap().is_none(), "{req:?}");
        }
    }
}
