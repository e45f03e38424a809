#!/usr/bin/env node
'use strict'

// Deterministic golden vectors for Hypercore Merkle proofs, made by the pinned JavaScript
// Hypercore: a core of fixed blocks, and for many requests (block, hash, upgrade, with and
// without additional nodes) the proof nodes it sends. The Rust proof code must make the same
// nodes and verify them.
//
// Usage: node js/gen-proof-vectors.js [output-dir]
// Writes proofs.json there (default: crates/cohd-format/tests/vectors).

const fs = require('fs')
const os = require('os')
const path = require('path')
const Hypercore = require('hypercore')
const { MerkleTree } = require('hypercore/lib/merkle-tree.js')

const LENGTH = 37

function block (i) {
  const b = Buffer.alloc((i * 7) % 23 + 1)
  for (let j = 0; j < b.length; j++) b[j] = (i * 31 + j * 7) & 255
  return b
}

function node (n) {
  return { index: n.index, size: n.size, hash: Buffer.from(n.hash).toString('hex') }
}

async function main () {
  const out = path.resolve(process.argv[2] || path.join(__dirname, '../crates/cohd-format/tests/vectors'))
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-proof-vectors-'))
  const core = new Hypercore(dir)
  await core.ready()
  for (let i = 0; i < LENGTH; i++) await core.append(block(i))

  const requests = []
  for (let i = 0; i < LENGTH; i += 3) {
    requests.push({ block: { index: i, nodes: MerkleTree.maxMissingNodes(2 * i, LENGTH) } })
  }
  for (const index of [1, 3, 5, 7, 9, 15, 19, 23, 31, 33, 35, 39, 43, 47, 55, 63]) {
    requests.push({ hash: { index, nodes: MerkleTree.maxMissingNodes(index, LENGTH) } })
  }
  for (const start of [0, 1, 2, 3, 5, 8, 12, 16, 20, 31, 32, 36]) {
    for (const end of [start + 1, Math.min(LENGTH, start + 5), 33, LENGTH]) {
      if (end <= start || end > LENGTH) continue
      const upgrade = { start, length: end - start }
      requests.push({ upgrade })
      for (const i of [0, start - 1, start, end - 1]) {
        if (i < 0 || i >= LENGTH) continue
        const nodes = i < start ? MerkleTree.maxMissingNodes(2 * i, start) : 0
        requests.push({ block: { index: i, nodes }, upgrade })
      }
    }
  }

  // Seeks: alone, with an upgrade from 0 or from a later length, with a block or hash below
  // the requester's length.
  let total = 0
  for (let i = 0; i < LENGTH; i++) total += block(i).length
  for (const bytes of [0, 1, 5, 12, 13, 100, 237, 400, total - 1, total, total + 5]) {
    const seek = { bytes, padding: 0 }
    requests.push({ seek })
    requests.push({ seek, upgrade: { start: 0, length: LENGTH } })
    requests.push({ seek, upgrade: { start: 20, length: LENGTH - 20 } })
    requests.push({ seek, block: { index: 3, nodes: MerkleTree.maxMissingNodes(6, LENGTH) } })
    requests.push({ seek, block: { index: 3, nodes: MerkleTree.maxMissingNodes(6, 20) }, upgrade: { start: 20, length: LENGTH - 20 } })
    requests.push({ seek, hash: { index: 9, nodes: MerkleTree.maxMissingNodes(9, LENGTH) } })
  }

  const cases = []
  for (const req of requests) {
    const copy = JSON.parse(JSON.stringify(req))
    let proof = null
    let error = null
    try {
      const rx = core.core.storage.read(core.state.fork)
      // As the replicator does: the proof is made (seeks read the tree first), then the
      // reads it queued are flushed.
      let p
      try {
        p = await MerkleTree.proof(core.state, rx, copy)
      } finally {
        rx.tryFlush()
      }
      const r = await p.settle()
      proof = {
        nodes: r.block ? r.block.nodes.map(node) : r.hash ? r.hash.nodes.map(node) : null,
        upgrade: r.upgrade ? r.upgrade.nodes.map(node) : null,
        additional: r.upgrade ? r.upgrade.additionalNodes.map(node) : [],
        seek: r.seek ? r.seek.nodes.map(node) : null
      }
    } catch (err) {
      error = err.code || err.message
    }
    cases.push({ request: req, proof, error })
  }

  const doc = {
    generator: 'js/gen-proof-vectors.js',
    hypercore: require('hypercore/package.json').version,
    length: LENGTH,
    blocks: Array.from({ length: LENGTH }, (_, i) => block(i).toString('hex')),
    cases
  }
  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  fs.mkdirSync(out, { recursive: true })
  // One case per line: small, and diffs stay readable.
  const text = '{\n' + Object.entries(doc).map(([k, v]) => k === 'cases'
    ? JSON.stringify(k) + ': [\n' + v.map((c) => JSON.stringify(c)).join(',\n') + '\n]'
    : JSON.stringify(k) + ': ' + JSON.stringify(v)).join(',\n') + '\n}\n'
  fs.writeFileSync(path.join(out, 'proofs.json'), text)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
