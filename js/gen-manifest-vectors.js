#!/usr/bin/env node
'use strict'

// Deterministic generator of golden vectors for Hypercore 11 manifests (cohd-format's
// manifest module): encodings and hashes of manifests of every version, default signer
// manifests, signables, signatures (made by JS Verifier and by a real corestore core after
// appends) and a Hyperdrive 13 drive's db and blobs keys.
//
// Every run gives byte-identical output: key pairs come from fixed seeds, corestores use a
// fixed primary key, and Ed25519 signatures are deterministic.
//
// Writes crates/cohd-format/tests/vectors/manifest.json (or into the folder given).
// Usage: node js/gen-manifest-vectors.js [output-dir]

const fs = require('fs')
const os = require('os')
const path = require('path')
const b4a = require('b4a')
const c = require('compact-encoding')
const crypto = require('hypercore-crypto')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const Verifier = require('hypercore/lib/verifier')
const caps = require('hypercore/lib/caps')
const messages = require('hypercore/lib/messages')

const OUT_DIR = process.argv[2]
  ? path.resolve(process.argv[2])
  : path.join(__dirname, '..', 'crates', 'cohd-format', 'tests', 'vectors')

const VERSIONS = {
  hypercore: require('hypercore/package.json').version,
  hyperdrive: require('hyperdrive/package.json').version,
  corestore: require('corestore/package.json').version
}

const hex = (b) => b4a.toString(b, 'hex')

function filled(byte) {
  return b4a.alloc(32, byte)
}

function keyPair(n) {
  return crypto.keyPair(filled(n))
}

const KP = [1, 2, 3].map(keyPair)
const NS = filled(0xaa)

function signer(kp, namespace = caps.DEFAULT_NAMESPACE) {
  return { signature: 'ed25519', namespace, publicKey: kp.publicKey }
}

// A manifest object as JS decodes it, to JSON.
function manifestJson(m) {
  return {
    version: m.version,
    hash: m.hash,
    allowPatch: m.allowPatch,
    quorum: m.quorum,
    signers: m.signers.map((s) => ({
      signature: s.signature,
      namespace: hex(s.namespace),
      publicKey: hex(s.publicKey)
    })),
    prologue: m.prologue ? { hash: hex(m.prologue.hash), length: m.prologue.length } : null,
    linked: m.linked ? m.linked.map(hex) : null,
    userData: m.userData ? hex(m.userData) : null
  }
}

function manifestCase(name, m) {
  const encoding = Verifier.encodeManifest(m)
  const decoded = Verifier.decodeManifest(encoding)
  return {
    name,
    manifest: manifestJson(decoded),
    encoding: hex(encoding),
    hash: hex(Verifier.manifestHash(decoded))
  }
}

function base(version, extra) {
  return {
    version,
    hash: 'blake2b',
    allowPatch: false,
    quorum: 1,
    signers: [signer(KP[0])],
    prologue: null,
    linked: null,
    userData: null,
    ...extra
  }
}

function manifestCases() {
  const bigLen = 0x1_0000_0001 // a 9-byte uint
  return [
    manifestCase('v0-single-signer', base(0)),
    manifestCase('v0-single-signer-namespace', base(0, { signers: [signer(KP[1], NS)] })),
    manifestCase(
      'v0-multi',
      base(0, { allowPatch: true, quorum: 2, signers: KP.map((k) => signer(k)) })
    ),
    manifestCase('v0-quorum-0', base(0, { quorum: 0 })),
    manifestCase(
      'v0-prologue',
      base(0, { quorum: 0, signers: [], prologue: { hash: filled(7), length: 0 } })
    ),
    manifestCase('v1-default', Verifier.defaultSignerManifest(KP[0].publicKey)),
    manifestCase('v1-multi-patch', base(1, { allowPatch: true, quorum: 2, signers: KP.map((k) => signer(k)) })),
    manifestCase('v1-prologue', base(1, { prologue: { hash: filled(9), length: 300 } })),
    manifestCase(
      'v1-prologue-only',
      base(1, { quorum: 0, signers: [], prologue: { hash: filled(9), length: bigLen } })
    ),
    manifestCase('v2-linked', base(2, { linked: [filled(0x11), filled(0x22)] })),
    manifestCase('v2-user-data', base(2, { userData: b4a.from('hello manifest') })),
    manifestCase(
      'v2-everything',
      base(2, {
        allowPatch: true,
        quorum: 2,
        signers: [signer(KP[0]), signer(KP[1], NS)],
        prologue: { hash: filled(5), length: 1000 },
        linked: [filled(0x33)],
        userData: b4a.alloc(300, 0x44)
      })
    ),
    manifestCase('v2-empty-linked-and-user-data', base(2, { linked: [], userData: b4a.alloc(0) })),
    manifestCase('v3-single', base(3))
  ]
}

// Byte strings JS decodes in a way worth pinning (non-canonical uints, unknown flags,
// trailing bytes) or refuses.
function decodeCases() {
  const pk = hex(KP[0].publicKey)
  const ns = hex(caps.DEFAULT_NAMESPACE)
  const inputs = [
    ['v1-wide-uints', 'fd0100' + 'fd0000' + '00' + 'fe01000000' + '01' + '00' + ns + pk],
    ['v1-unknown-flag', '01' + '30' + '00' + '01' + '01' + '00' + ns + pk],
    ['v1-trailing', '01' + '00' + '00' + '01' + '01' + '00' + ns + pk + 'ffff'],
    ['unknown-version', '04' + '00' + '00' + '01' + '01' + '00' + ns + pk],
    ['unknown-hash', '01' + '00' + '01' + '01' + '01' + '00' + ns + pk],
    ['unknown-signature', '01' + '00' + '00' + '01' + '01' + '01' + ns + pk],
    ['v0-unknown-type', '00' + '00' + '03'],
    ['truncated', '01' + '00' + '00' + '01' + '01' + '00' + ns],
    ['empty', '']
  ]
  return inputs.map(([name, input]) => {
    let manifest = null
    let hash = null
    let error = null
    try {
      const m = Verifier.decodeManifest(b4a.from(input, 'hex'))
      manifest = manifestJson(m)
      hash = hex(Verifier.manifestHash(m))
    } catch (err) {
      error = err.message
    }
    return { name, input, manifest, hash, error }
  })
}

function defaultSignerCases() {
  return [1, 2, 3, 200].map((seed) => {
    const kp = keyPair(seed)
    const m = Verifier.createManifest({ signers: [{ publicKey: kp.publicKey }] })
    const def = Verifier.defaultSignerManifest(kp.publicKey)
    if (!b4a.equals(Verifier.encodeManifest(m), Verifier.encodeManifest(def))) {
      throw new Error('createManifest and defaultSignerManifest disagree')
    }
    return {
      seed: hex(filled(seed)),
      publicKey: hex(kp.publicKey),
      secretKey: hex(kp.secretKey),
      encoding: hex(Verifier.encodeManifest(def)),
      key: hex(Verifier.manifestHash(def))
    }
  })
}

function fakeBatch(treeHash, length, fork) {
  return {
    length,
    fork,
    hash: () => treeHash,
    signable: (ns) => caps.treeSignable(ns, treeHash, length, fork),
    signableCompat: (noHeader) => caps.treeSignableCompat(treeHash, length, fork, noHeader)
  }
}

const TREES = [
  { treeHash: filled(0x01), length: 0, fork: 0 },
  { treeHash: filled(0x02), length: 5, fork: 1 },
  { treeHash: filled(0x03), length: 2 ** 40 + 3, fork: 70000 }
]

function signableCases() {
  const key = Verifier.manifestHash(Verifier.defaultSignerManifest(KP[0].publicKey))
  return TREES.map((t) => ({
    manifestHash: hex(key),
    treeHash: hex(t.treeHash),
    length: t.length,
    fork: t.fork,
    signable: hex(caps.treeSignable(key, t.treeHash, t.length, t.fork)),
    signableCompat: hex(caps.treeSignableCompat(t.treeHash, t.length, t.fork))
  }))
}

// Signatures made by JS Verifier for manifests of each kind, with what JS says of them.
function signatureCases() {
  const kinds = [
    ['compat', base(0), KP[0].publicKey, [KP[0]]],
    ['v0-namespace', base(0, { signers: [signer(KP[1], NS)] }), null, [KP[1]]],
    ['v1-default', Verifier.defaultSignerManifest(KP[0].publicKey), null, [KP[0]]],
    ['v2-user-data', base(2, { userData: b4a.from('u') }), null, [KP[0]]],
    ['v1-quorum-2', base(1, { quorum: 2, signers: KP.map((k) => signer(k)) }), null, [KP[2], KP[0]]],
    ['v0-quorum-2', base(0, { quorum: 2, signers: KP.map((k) => signer(k)) }), null, [KP[1], KP[2]]]
  ]
  const out = []
  for (const [name, manifest, compatKey, signers] of kinds) {
    const m = Verifier.createManifest(manifest)
    const key = compatKey || Verifier.manifestHash(m)
    const v = new Verifier(key, m)
    for (const t of TREES.slice(1)) {
      const batch = fakeBatch(t.treeHash, t.length, t.fork)
      let signature
      if (signers.length === 1) {
        signature = v.sign(batch, signers[0])
      } else {
        const inputs = signers.map((kp) => {
          const index = m.signers.findIndex((s) => b4a.equals(s.publicKey, kp.publicKey))
          return { signer: index, signature: v.signers[index].sign(batch, kp), patch: 0, nodes: null }
        })
        signature = v.assemble(inputs)
      }
      const other = fakeBatch(t.treeHash, t.length + 1, t.fork)
      out.push({
        name,
        key: hex(key),
        compat: v.compat,
        manifest: hex(Verifier.encodeManifest(m)),
        treeHash: hex(t.treeHash),
        length: t.length,
        fork: t.fork,
        signature: hex(signature),
        verifies: v.verify(batch, signature),
        verifiesOneLonger: v.verify(other, signature)
      })
    }
  }
  return out
}

const PRIMARY_KEY = b4a.alloc(32)
for (let i = 0; i < 32; i++) PRIMARY_KEY[i] = 255 - i

async function realCore(tmp) {
  const store = new Corestore(path.join(tmp, 'core'), { primaryKey: PRIMARY_KEY, unsafe: true })
  try {
    const core = store.get({ name: 'manifest-vectors' })
    await core.ready()
    for (let i = 0; i < 5; i++) await core.append(b4a.from('block ' + i))
    const treeHash = await core.treeHash()
    const signature = core.state.signature
    return {
      name: 'manifest-vectors',
      primaryKey: hex(PRIMARY_KEY),
      publicKey: hex(core.keyPair.publicKey),
      key: hex(core.key),
      manifest: hex(Verifier.encodeManifest(core.manifest)),
      length: core.length,
      fork: core.fork,
      treeHash: hex(treeHash),
      signable: hex(await core.signable()),
      signature: hex(signature)
    }
  } finally {
    await store.close()
  }
}

async function drive(tmp) {
  const store = new Corestore(path.join(tmp, 'drive'), { primaryKey: PRIMARY_KEY, unsafe: true })
  try {
    const d = new Hyperdrive(store)
    await d.ready()
    await d.put('/hello.txt', b4a.from('hello'))
    const dbManifest = d.db.core.manifest
    return {
      primaryKey: hex(PRIMARY_KEY),
      key: hex(d.key),
      dbManifest: hex(Verifier.encodeManifest(dbManifest)),
      blobsKey: hex(d.contentKey),
      blobsManifest: hex(Verifier.encodeManifest(d.blobs.core.manifest)),
      blobsKeyFromStatic: hex(Hyperdrive.getContentKey(dbManifest, d.key))
    }
  } finally {
    await store.close()
  }
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-manifest-vectors-'))
  try {
    const [MANIFEST, DEFAULT_NAMESPACE] = [caps.MANIFEST, caps.DEFAULT_NAMESPACE]
    const out = {
      generator: 'js/gen-manifest-vectors.js',
      versions: VERSIONS,
      namespaces: {
        tree: hex(crypto.namespace('hypercore', 1)[0]),
        manifest: hex(MANIFEST),
        defaultSigner: hex(DEFAULT_NAMESPACE),
        blobs: hex(crypto.namespace('hyperdrive', 1)[0])
      },
      manifests: manifestCases(),
      decode: decodeCases(),
      defaultSigners: defaultSignerCases(),
      signables: signableCases(),
      signatures: signatureCases(),
      core: await realCore(tmp),
      drive: await drive(tmp)
    }
    // messages is loaded to pin the module the encodings come from
    if (!messages.manifest) throw new Error('hypercore/lib/messages has no manifest encoding')
    fs.mkdirSync(OUT_DIR, { recursive: true })
    fs.writeFileSync(path.join(OUT_DIR, 'manifest.json'), JSON.stringify(out, null, 1) + '\n')
    console.error('wrote', path.join(OUT_DIR, 'manifest.json'))
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
