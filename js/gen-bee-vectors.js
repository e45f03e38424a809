#!/usr/bin/env node
'use strict'

// Deterministic generator of golden test vectors for co-hyperdrive.
//
// Writes two files (paths relative to the repository root):
//   crates/co-hyperdrive/tests/vectors/bee.json    Hyperbee 2.x block dumps
//   crates/co-hyperdrive/tests/vectors/drive.json  Hyperdrive 13 db-core dump
//
// Every run produces byte-identical output: random ops come from a seeded
// mulberry32 PRNG, and the drive's corestore uses a fixed primary key.
//
// Usage: node js/gen-bee-vectors.js [output-dir]

const fs = require('fs')
const os = require('os')
const path = require('path')
const b4a = require('b4a')
const Hypercore = require('hypercore')
const Hyperbee = require('hyperbee')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const PKG = require('./package.json')
const VERSIONS = {
  hyperbee: require('hyperbee/package.json').version,
  hypercore: require('hypercore/package.json').version,
  hyperdrive: require('hyperdrive/package.json').version,
  corestore: require('corestore/package.json').version,
  hyperblobs: require('hyperblobs/package.json').version
}

const OUT_DIR = process.argv[2]
  ? path.resolve(process.argv[2])
  : path.join(__dirname, '..', 'crates', 'co-hyperdrive', 'tests', 'vectors')

// ---------------------------------------------------------------------------
// PRNG: mulberry32 (32-bit state, returns floats in [0, 1)).

function mulberry32(seed) {
  let a = seed >>> 0
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function makeRng(seed) {
  const next = mulberry32(seed)
  const rng = {
    next,
    int(lo, hi) {
      // inclusive range
      return lo + Math.floor(next() * (hi - lo + 1))
    },
    pick(arr) {
      return arr[Math.floor(next() * arr.length)]
    },
    shuffle(arr) {
      const out = arr.slice()
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1))
        const t = out[i]
        out[i] = out[j]
        out[j] = t
      }
      return out
    },
    key(minLen = 1, maxLen = 12) {
      const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789/'
      const len = rng.int(minLen, maxLen)
      let s = ''
      for (let i = 0; i < len; i++) s += alphabet[Math.floor(next() * alphabet.length)]
      return b4a.from(s)
    },
    bytes(minLen = 1, maxLen = 24) {
      const len = rng.int(minLen, maxLen)
      const b = b4a.alloc(len)
      for (let i = 0; i < len; i++) b[i] = Math.floor(next() * 256)
      return b
    }
  }
  return rng
}

const hex = (b) => b4a.toString(b, 'hex')
const txt = (s) => b4a.from(s)

const put = (key, value) => ({ op: 'put', key, value })
const del = (key) => ({ op: 'del', key })

// ---------------------------------------------------------------------------
// Cases. Each returns a list of ops with Buffer keys/values.

function caseSequential() {
  const ops = []
  for (let i = 0; i < 100; i++) {
    ops.push(put(txt('k' + String(i).padStart(3, '0')), txt('v' + i)))
  }
  return ops
}

function caseReverse() {
  const ops = []
  for (let i = 99; i >= 0; i--) {
    ops.push(put(txt('k' + String(i).padStart(3, '0')), txt('v' + i)))
  }
  return ops
}

function caseRandom300(seed) {
  const rng = makeRng(seed)
  const ops = []
  const used = []
  for (let i = 0; i < 300; i++) {
    // ~15% of puts overwrite an earlier key (with a new random value)
    const key = used.length && rng.next() < 0.15 ? rng.pick(used) : rng.key(1, 12)
    used.push(key)
    ops.push(put(key, rng.bytes(1, 24)))
  }
  return ops
}

function casePutDelMix(seed) {
  const rng = makeRng(seed)
  const pool = []
  const seen = new Set()
  while (pool.length < 60) {
    const k = rng.key(1, 12)
    if (seen.has(hex(k))) continue
    seen.add(hex(k))
    pool.push(k)
  }
  const ops = []
  for (let i = 0; i < 400; i++) {
    const key = rng.pick(pool)
    if (rng.next() < 0.6) ops.push(put(key, rng.bytes(1, 24)))
    else ops.push(del(key))
  }
  return ops
}

function caseDeleteAll(seed) {
  const rng = makeRng(seed)
  const keys = []
  const seen = new Set()
  while (keys.length < 200) {
    const k = rng.key(1, 12)
    if (seen.has(hex(k))) continue
    seen.add(hex(k))
    keys.push(k)
  }
  const ops = keys.map((k) => put(k, rng.bytes(1, 24)))
  for (const k of rng.shuffle(keys)) ops.push(del(k))
  return ops
}

function caseBatch(seed) {
  const rng = makeRng(seed)
  const inner = []
  const batchKeys = []
  for (let i = 0; i < 50; i++) {
    const k = rng.key(1, 12)
    batchKeys.push(k)
    inner.push(put(k, rng.bytes(1, 24)))
  }
  // 8 dels of keys put earlier in the same batch, 2 dels of (almost surely) absent keys
  for (let i = 0; i < 8; i++) inner.push(del(rng.pick(batchKeys)))
  for (let i = 0; i < 2; i++) inner.push(del(rng.key(13, 16)))
  // interleave the dels with the puts deterministically
  const mixed = rng.shuffle(inner)
  const ops = [{ op: 'batch', ops: mixed }]
  for (let i = 0; i < 20; i++) ops.push(put(rng.key(1, 12), rng.bytes(1, 24)))
  return ops
}

function caseOverwriteSame() {
  const k = txt('same-key')
  return [
    put(k, txt('value-1')),
    put(k, txt('value-2')),
    put(k, txt('value-3')),
    put(k, txt('value-4')),
    put(k, txt('value-5')),
    put(k, txt('value-5'))
  ]
}

// Extra edge cases: empty values, binary key bytes, multi-byte varint lengths,
// deleting from an empty bee, a del of an absent key.
function caseEdge() {
  const ops = [del(txt('nothing-here'))] // del on a bee with no header yet
  ops.push(put(txt('empty-value'), b4a.alloc(0)))
  ops.push(put(b4a.from([0x00]), txt('zero-byte-key')))
  ops.push(put(b4a.from([0xff, 0xfe, 0x00, 0x01]), txt('high-bytes-key')))
  const long = b4a.alloc(300)
  for (let i = 0; i < long.length; i++) long[i] = (i * 31 + 7) & 255
  ops.push(put(txt('long-value'), long))
  ops.push(put(txt('a'.repeat(200)), txt('long-key')))
  ops.push(del(txt('absent')))
  ops.push(put(txt('empty-value'), b4a.alloc(0))) // same (empty) value again
  ops.push(put(txt('empty-value'), txt('now-non-empty')))
  ops.push(del(b4a.from([0x00])))
  ops.push(del(txt('empty-value')))
  return ops
}

const CASES = [
  { name: 'sequential-100', make: () => caseSequential() },
  { name: 'reverse-100', make: () => caseReverse() },
  { name: 'random-300', seed: 0x300, make: (s) => caseRandom300(s) },
  { name: 'put-del-mix', seed: 0x400, make: (s) => casePutDelMix(s) },
  { name: 'delete-all', seed: 0x200, make: (s) => caseDeleteAll(s) },
  { name: 'batch', seed: 0xba7c, make: (s) => caseBatch(s) },
  { name: 'overwrite-same', make: () => caseOverwriteSame() },
  { name: 'edge', make: () => caseEdge() }
]

// ---------------------------------------------------------------------------

function opToJson(o) {
  if (o.op === 'put') return { op: 'put', key: hex(o.key), value: hex(o.value) }
  if (o.op === 'del') return { op: 'del', key: hex(o.key) }
  return { op: 'batch', ops: o.ops.map(opToJson) }
}

async function dumpBlocks(core) {
  const blocks = []
  for (let i = 0; i < core.length; i++) blocks.push(hex(await core.get(i)))
  return blocks
}

async function finalEntries(bee) {
  const out = []
  for await (const { seq, key, value } of bee.createReadStream()) {
    out.push({ seq, key: hex(key), value: value === null ? null : hex(value) })
  }
  return out
}

async function runBeeCase(tmp, c) {
  const ops = c.make(c.seed)
  const dir = path.join(tmp, 'bee-' + c.name)
  const core = new Hypercore(dir)
  await core.ready()
  const bee = new Hyperbee(core, { keyEncoding: 'binary', valueEncoding: 'binary' })
  await bee.ready()

  const lengths = []
  for (const o of ops) {
    if (o.op === 'put') await bee.put(o.key, o.value)
    else if (o.op === 'del') await bee.del(o.key)
    else {
      const b = bee.batch()
      for (const i of o.ops) {
        if (i.op === 'put') await b.put(i.key, i.value)
        else await b.del(i.key)
      }
      await b.flush()
    }
    lengths.push(core.length)
  }

  const result = {
    name: c.name,
    seed: c.seed === undefined ? null : c.seed,
    ops: ops.map(opToJson),
    length_after: lengths,
    blocks: await dumpBlocks(core),
    tree_hash: core.length ? hex(await core.treeHash()) : null,
    byte_length: core.byteLength,
    final_entries: await finalEntries(bee)
  }

  await bee.close()
  await core.close()
  return result
}

// ---------------------------------------------------------------------------
// Drive vector.

const PATTERN_DOC = 'byte i of an N-byte file = (i * 31 + 7) & 255, i counted from 0 within each file'
function pattern(n) {
  const b = b4a.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 255
  return b
}

// Fixed corestore primary key so keys/manifests/signatures are reproducible.
const PRIMARY_KEY = b4a.alloc(32)
for (let i = 0; i < 32; i++) PRIMARY_KEY[i] = i

async function runDrive(tmp) {
  const dir = path.join(tmp, 'drive')
  const store = new Corestore(dir, { primaryKey: PRIMARY_KEY, unsafe: true })
  const drive = new Hyperdrive(store)
  await drive.ready()

  const steps = [
    { desc: { op: 'put', path: '/hello.txt', content: { utf8: 'hello' } }, run: () => drive.put('/hello.txt', txt('hello')) },
    { desc: { op: 'put', path: '/a/b/c.txt', content: { pattern: 10000 } }, run: () => drive.put('/a/b/c.txt', pattern(10000)) },
    {
      desc: { op: 'put', path: '/exec.sh', content: { utf8: '#!/bin/sh' }, executable: true, metadata: { x: 1 } },
      run: () => drive.put('/exec.sh', txt('#!/bin/sh'), { executable: true, metadata: { x: 1 } })
    },
    { desc: { op: 'symlink', path: '/link', target: '/hello.txt' }, run: () => drive.symlink('/link', '/hello.txt') },
    { desc: { op: 'put', path: '/empty', content: { utf8: '' } }, run: () => drive.put('/empty', txt('')) },
    { desc: { op: 'del', path: '/exec.sh' }, run: () => drive.del('/exec.sh') },
    { desc: { op: 'put', path: '/big.bin', content: { pattern: 200000 } }, run: () => drive.put('/big.bin', pattern(200000)) }
  ]

  const ops = []
  for (const s of steps) {
    await s.run()
    const d = { ...s.desc }
    d.db_length_after = drive.db.core.length
    d.blobs_length_after = drive.blobs.core.length
    if (d.op !== 'del') {
      const e = await drive.entry(d.path)
      d.entry_after = { seq: e.seq, value: e.value }
    }
    ops.push(d)
  }

  const paths = ['/hello.txt', '/a/b/c.txt', '/exec.sh', '/link', '/empty', '/big.bin']
  const entries = {}
  const entrySeqs = {}
  for (const p of paths) {
    const e = await drive.entry(p)
    entries[p] = e ? e.value : null
    entrySeqs[p] = e ? e.seq : null
  }

  // sanity: contents round-trip
  for (const s of steps) {
    if (s.desc.op !== 'put' || s.desc.path === '/exec.sh') continue
    const want = s.desc.content.pattern !== undefined ? pattern(s.desc.content.pattern) : txt(s.desc.content.utf8)
    const got = await drive.get(s.desc.path)
    if (want.length === 0 ? got !== null && got.length !== 0 : !b4a.equals(got, want)) {
      throw new Error('content mismatch for ' + s.desc.path)
    }
  }

  const listed = []
  for await (const e of drive.list('/')) listed.push(e.key)
  const readdir = []
  for await (const n of drive.readdir('/')) readdir.push(n)

  const db = drive.db.core
  const blobs = drive.blobs.core
  const blobBlockLengths = []
  for (let i = 0; i < blobs.length; i++) blobBlockLengths.push((await blobs.get(i)).length)

  const header = await drive.db.getHeader()

  const result = {
    generator: 'js/gen-bee-vectors.js',
    hyperdrive: VERSIONS.hyperdrive,
    corestore: VERSIONS.corestore,
    hypercore: VERSIONS.hypercore,
    hyperbee: VERSIONS.hyperbee,
    hyperblobs: VERSIONS.hyperblobs,
    pattern: PATTERN_DOC,
    corestore_primary_key: hex(PRIMARY_KEY),
    db_key: hex(db.key),
    db_discovery_key: hex(db.discoveryKey),
    db_manifest: hex(db.getManifest({ raw: true })),
    blobs_key: hex(blobs.key),
    blobs_discovery_key: hex(blobs.discoveryKey),
    blobs_manifest: hex(blobs.getManifest({ raw: true })),
    db_header: { protocol: header.protocol, metadata: header.metadata },
    ops,
    db_blocks: await dumpBlocks(db),
    db_length: db.length,
    db_byte_length: db.byteLength,
    db_tree_hash: hex(await db.treeHash()),
    entries,
    entry_seqs: entrySeqs,
    list_recursive: listed,
    readdir_root: readdir,
    blobs_length: blobs.length,
    blobs_byte_length: blobs.byteLength,
    blobs_block_lengths: blobBlockLengths,
    blobs_tree_hash: hex(await blobs.treeHash())
  }

  await drive.close()
  await store.close()
  return result
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-vectors-'))
  try {
    const cases = []
    for (const c of CASES) {
      const r = await runBeeCase(tmp, c)
      console.error(`bee case ${r.name}: ${r.ops.length} ops -> ${r.blocks.length} blocks`)
      cases.push(r)
    }
    const bee = {
      generator: 'js/gen-bee-vectors.js',
      hyperbee: VERSIONS.hyperbee,
      hypercore: VERSIONS.hypercore,
      encoding: { key: 'binary', value: 'binary' },
      prng: 'mulberry32 (see js/gen-bee-vectors.js); ops are recorded so the PRNG need not be reproduced',
      cases
    }
    const drive = await runDrive(tmp)
    console.error(`drive: ${drive.db_blocks.length} db blocks, ${drive.blobs_length} blobs blocks`)

    fs.mkdirSync(OUT_DIR, { recursive: true })
    fs.writeFileSync(path.join(OUT_DIR, 'bee.json'), JSON.stringify(bee, null, 1) + '\n')
    fs.writeFileSync(path.join(OUT_DIR, 'drive.json'), JSON.stringify(drive, null, 1) + '\n')
    console.error('wrote', path.join(OUT_DIR, 'bee.json'), 'and drive.json', `(${PKG.name})`)
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
