//! Building a Data message for any block `Core::get` can return.
//!
//! `Hypercore::create_proof` computes the tree nodes first, then reads the block value through
//! its own `get`, which consults hypercore's *in-memory* bitfield. After a reopen that bitfield is
//! empty (co-hyperdrive never loads it), so `create_proof(block: Some(..))` returns `Ok(None)`
//! for every block written in an earlier session. The fallback asks for the same proof as a
//! *hash* request for tree index `2*i` (identical walk: same index, same `last_index`, same
//! `nodes` budget), whose node list is `[leaf 2i] ++ <block proof nodes>`, and pairs the nodes
//! after the leaf with the value `Core::get` reads from the files.

use co_hyperdrive::Core;
use hypercore_protocol::schema::{Data, Request};
use hypercore_schema::{DataBlock, Proof, RequestBlock};

pub enum Built {
    Data(Data),
    NoData,
}

pub async fn build_data(core: &Core, req: &Request) -> anyhow::Result<Built> {
    let proof = proof_for(core, req).await?;
    Ok(match proof {
        Some(p) => Built::Data(Data {
            request: req.id,
            fork: p.fork,
            block: p.block,
            hash: p.hash,
            seek: p.seek,
            upgrade: p.upgrade,
        }),
        None => Built::NoData,
    })
}

pub async fn proof_for(core: &Core, req: &Request) -> anyhow::Result<Option<Proof>> {
    let hc = core.hypercore();
    if req.fork != hc.info().fork {
        return Ok(None);
    }
    let direct = hc
        .create_proof(req.block.clone(), req.hash.clone(), req.seek.clone(), req.upgrade.clone())
        .await?;
    if direct.is_some() {
        return Ok(direct);
    }
    let Some(b) = &req.block else {
        return Ok(None);
    };
    fallback_block_proof(core, b, req).await
}

pub async fn fallback_block_proof(
    core: &Core,
    b: &RequestBlock,
    req: &Request,
) -> anyhow::Result<Option<Proof>> {
    let Some(value) = core.get(b.index).await? else {
        return Ok(None);
    };
    let hash_req = RequestBlock {
        index: 2 * b.index,
        nodes: b.nodes,
    };
    let Some(mut p) = core
        .hypercore()
        .create_proof(None, Some(hash_req), req.seek.clone(), req.upgrade.clone())
        .await?
    else {
        return Ok(None);
    };
    let h = p.hash.take().ok_or_else(|| anyhow::anyhow!("hash proof without hash"))?;
    anyhow::ensure!(
        h.nodes.first().map(|n| n.index) == Some(2 * b.index),
        "hash proof does not start with the leaf"
    );
    p.block = Some(DataBlock {
        index: b.index,
        value,
        nodes: h.nodes[1..].to_vec(),
    });
    Ok(Some(p))
}
