#!/usr/bin/env node
'use strict'

// Deterministic golden vectors for Hypercore's replication messages: each sample message
// encoded by the pinned JavaScript hypercore (`lib/messages.js`), so the Rust wire codec must
// produce and read the same bytes.
//
// Usage: node js/gen-wire-vectors.js [output-dir]
// Writes wire.json there (default: crates/cohd-format/tests/vectors).

const fs = require('fs')
const path = require('path')
const c = require('compact-encoding')
const m = require('hypercore/lib/messages.js')

const KINDS = ['sync', 'request', 'cancel', 'data', 'noData', 'want', 'unwant', 'bitfield', 'range', 'extension']

function buf (n, seed) {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 13 + seed) & 255
  return b
}

function node (index, size, seed) {
  return { index, size, hash: buf(32, seed) }
}

const manifest = {
  version: 1,
  hash: 'blake2b',
  allowPatch: false,
  quorum: 1,
  signers: [{ signature: 'ed25519', namespace: buf(32, 1), publicKey: buf(32, 2) }],
  prologue: null,
  linked: null,
  userData: null
}

const samples = [
  ['sync', { fork: 0, length: 12, remoteLength: 3, canUpgrade: true, uploading: true, downloading: true, hasManifest: false, allowPush: false }],
  ['sync', { fork: 2, length: 70000, remoteLength: 0, canUpgrade: false, uploading: false, downloading: false, hasManifest: true, allowPush: true }],
  ['request', { id: 1, fork: 0, block: { index: 5, nodes: 2 }, hash: null, seek: null, upgrade: null, manifest: false, priority: 0 }],
  ['request', { id: 300, fork: 1, block: null, hash: { index: 7, nodes: 1 }, seek: null, upgrade: { start: 3, length: 9 }, manifest: true, priority: 2 }],
  ['request', { id: 9, fork: 0, block: null, hash: null, seek: { bytes: 123456, padding: 0 }, upgrade: null, manifest: false, priority: 0 }],
  ['cancel', { request: 70000 }],
  ['data', { request: 1, fork: 0, block: { index: 5, value: buf(40, 3), nodes: [node(10, 40, 4), node(13, 120, 5)] }, hash: null, seek: null, upgrade: null, manifest: null }],
  ['data', { request: 2, fork: 0, block: null, hash: { index: 7, nodes: [node(7, 99, 6)] }, seek: null, upgrade: { start: 0, length: 12, nodes: [node(15, 1000, 7)], additionalNodes: [node(33, 5, 8)], signature: buf(64, 9) }, manifest: null }],
  ['data', { request: 3, fork: 0, block: null, hash: null, seek: { bytes: 500, nodes: [node(2, 3, 10)] }, upgrade: null, manifest: manifest }],
  ['noData', { request: 4, reason: 0 }],
  ['noData', { request: 5, reason: 2 }],
  ['want', { start: 0, length: 1024, any: false }],
  ['want', { start: 2048, length: 1024, any: true }],
  ['unwant', { start: 0, length: 1024, any: false }],
  ['bitfield', { start: 32768, bitfield: new Uint32Array([1, 0xffffffff, 0x80000000]) }],
  ['range', { drop: false, start: 10, length: 1 }],
  ['range', { drop: true, start: 0, length: 500 }],
  ['extension', { name: 'co-hyperdrive/auth/1', message: buf(5, 11) }]
]

function plain (v) {
  if (v === null || v === undefined) return null
  if (v instanceof Uint32Array) return Array.from(v)
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString('hex')
  if (Array.isArray(v)) return v.map(plain)
  if (typeof v === 'object') {
    const out = {}
    for (const [k, x] of Object.entries(v)) out[k] = plain(x)
    return out
  }
  return v
}

const out = path.resolve(process.argv[2] || path.join(__dirname, '../crates/cohd-format/tests/vectors'))
const cases = samples.map(([name, msg]) => {
  const enc = m.wire[name]
  const bytes = c.encode(enc, msg)
  const fields = plain(msg)
  if (name === 'data' && msg.manifest) fields.manifest = Buffer.from(c.encode(m.manifest, msg.manifest)).toString('hex')
  return { kind: KINDS.indexOf(name), name, fields, hex: Buffer.from(bytes).toString('hex') }
})
const doc = { generator: 'js/gen-wire-vectors.js', hypercore: require('hypercore/package.json').version }
const text = '{\n' + Object.entries(doc).map(([k, v]) => JSON.stringify(k) + ': ' + JSON.stringify(v)).join(',\n') +
  ',\n"cases": [\n' + cases.map((x) => JSON.stringify(x)).join(',\n') + '\n]\n}\n'
fs.mkdirSync(out, { recursive: true })
fs.writeFileSync(path.join(out, 'wire.json'), text)
