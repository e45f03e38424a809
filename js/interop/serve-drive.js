#!/usr/bin/env node
'use strict'

// Creates a JavaScript drive (compat cores, key = Ed25519 public key, or with --line
// v13-default the manifest cores JavaScript makes by default), writes deterministic files and
// serves it on 127.0.0.1.
//
// usage: node js/interop/serve-drive.js [--line v11|v13] [--files N] [--port P]
//          [--storage DIR] [--exit-after-ms N] [--bootstrap HOST:PORT,...]
//
//   --line v11 (default): hyperdrive 11 / corestore 6 / hypercore 10, whose cores are compat
//     by default.
//   --line v13-default: hyperdrive 13 / corestore 7 / hypercore 11 as a JavaScript user gets it:
//     manifest cores (key = manifest hash), the blobs key derived from the db's manifest.
//   --line v13: hyperdrive 13 / corestore 7 / hypercore 11. Corestore 7 always makes manifest
//     cores for named cores, so this script builds the compat drive itself: a db core and a
//     blobs core opened with {key: keyPair.publicKey, keyPair} (hypercore 11 then treats them
//     as compat), and a Hyperbee header whose contentFeed names the blobs core, written before
//     Hyperdrive opens the db. Hyperdrive 13 then writes to it as usual.
//   --files N: N extra small files /files/fNNN.txt (default 3).
//   --port P: listen port (default 0, any free port).
//   --storage DIR: an empty or missing directory for the corestore (default: a new temporary
//     directory, deleted on exit).
//   --bootstrap HOST:PORT,...: also seed on this (private) HyperDHT with Hyperswarm, joining the
//     drive's discovery key as server and client, as JS apps do.
//   --exit-after-ms N: stop serving and exit 0 after N ms (default: serve until killed).
//
// stdout, each line flushed:
//   listening on 127.0.0.1:PORT
//   key <64 hex drive key>
//   {"files":{"/path":{"size":N,"sha256":"hex"},...},"line":"v11","key":"hex","blobs_key":"hex",
//    "db_length":N,"blobs_length":N}
// stderr: progress (connections, errors).

const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')
const { loadLine, parseArgs, sha256, printLine, pattern } = require('./common')

function log(...a) {
  console.error('[serve-drive]', ...a)
}

// The deterministic content: a > 1 MiB binary (not a multiple of the 64 KiB blob block size),
// nested paths, an empty file, a name with a space and non-ASCII characters, and N small files.
function contents(n) {
  const files = [
    ['/hello.txt', Buffer.from('hello from javascript\n')],
    ['/nested/deep/path/file.txt', Buffer.from('a file three folders down\n')],
    ['/big.bin', pattern(1536 * 1024 + 123, 1)],
    ['/empty.txt', Buffer.alloc(0)],
    ['/dir with space/\u00fcn\u00efc\u00f6d\u00e9.txt', Buffer.from('utf-8 path\n')]
  ]
  for (let i = 0; i < n; i++) {
    const name = `/files/f${String(i).padStart(3, '0')}.txt`
    files.push([name, pattern(100 + i * 37, 1000 + i)])
  }
  return files
}

// A hyperdrive 13 drive whose db and blobs cores are compat cores.
async function compatDrive13(store, Hyperdrive) {
  const Hyperbee = require('hyperbee')
  const { Header } = require('hyperbee/lib/messages')
  const dbKp = await store.createKeyPair('interop-db')
  const blobsKp = await store.createKeyPair('interop-blobs')
  const db = store.get({ key: dbKp.publicKey, keyPair: dbKp })
  const blobs = store.get({ key: blobsKp.publicKey, keyPair: blobsKp })
  await Promise.all([db.ready(), blobs.ready()])
  if (!db.core.compat || !blobs.core.compat) throw new Error('corestore 7 did not make compat cores')
  // Hyperdrive reads the blobs key from the header (block 0) when it exists; Hyperbee would
  // only write the header on the first put, after Hyperdrive made its own (manifest) blobs core.
  await db.append(Header.encode({ protocol: 'hyperbee', metadata: { contentFeed: blobs.key } }))
  await blobs.close()
  const bee = new Hyperbee(db, { keyEncoding: 'utf-8', valueEncoding: 'json', metadata: { contentFeed: null } })
  const drive = new Hyperdrive(store, { _db: bee })
  await drive.ready()
  const b = await drive.getBlobs()
  if (!b.core.key.equals(blobsKp.publicKey) || !b.core.writable) throw new Error('hyperdrive 13 did not pick up the compat blobs core')
  return drive
}

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    numbers: ['files', 'port', 'exit-after-ms'],
    defaults: { line: 'v11', files: 3, port: 0 }
  })
  const manifestCores = args.line === 'v13-default'
  const { Corestore, Hyperdrive } = loadLine(manifestCores ? 'v13' : args.line)

  let dir = args.storage
  if (dir) {
    fs.mkdirSync(dir, { recursive: true })
    if (fs.readdirSync(dir).length) throw new Error(`--storage ${dir} is not empty`)
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-serve-drive-'))
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  }
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0))

  const store = new Corestore(dir)
  let drive
  if (args.line === 'v13') {
    drive = await compatDrive13(store, Hyperdrive)
  } else if (manifestCores) {
    drive = new Hyperdrive(store)
    await drive.ready()
  } else {
    drive = new Hyperdrive(store)
    await drive.ready()
  }

  const files = {}
  for (const [name, data] of contents(args.files)) {
    await drive.put(name, data)
    files[name] = { size: data.length, sha256: sha256(data) }
  }
  // Read back what was written: the description must be what the drive holds.
  for (const [name, d] of Object.entries(files)) {
    const got = await drive.get(name)
    if (!got || sha256(got) !== d.sha256) throw new Error(`read-back mismatch for ${name}`)
  }
  const blobs = await drive.getBlobs()
  const compat = drive.core.core.compat && blobs.core.core.compat
  if (compat === manifestCores) throw new Error(manifestCores ? 'the drive cores are compat' : 'the drive cores are not compat')

  const server = net.createServer((socket) => {
    const who = `${socket.remoteAddress}:${socket.remotePort}`
    log('connection from', who)
    const stream = store.replicate(false) // we accepted: Noise responder
    socket.pipe(stream).pipe(socket)
    socket.on('error', (e) => log(who, 'socket error:', e.message))
    stream.on('error', (e) => log(who, 'stream error:', e.message))
    socket.on('close', () => log(who, 'closed'))
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(args.port, '127.0.0.1', resolve)
  })
  const port = server.address().port
  if (args.bootstrap) {
    const Hyperswarm = require('hyperswarm')
    const bootstrap = args.bootstrap.split(',').map((a) => {
      const i = a.lastIndexOf(':')
      return { host: a.slice(0, i), port: Number(a.slice(i + 1)) }
    })
    const swarm = new Hyperswarm({ bootstrap })
    swarm.on('connection', (conn, info) => {
      log('swarm connection', info.publicKey.toString('hex'))
      conn.on('error', (e) => log('swarm connection error:', e.message))
      store.replicate(conn)
    })
    // Announced before the key is printed: a peer told the key finds us at once.
    await swarm.join(drive.discoveryKey, { server: true, client: true }).flushed()
    log('announced on the DHT')
  }
  await printLine(`listening on 127.0.0.1:${port}`)
  await printLine(`key ${drive.key.toString('hex')}`)
  await printLine(
    JSON.stringify({
      files,
      line: args.line,
      key: drive.key.toString('hex'),
      blobs_key: blobs.core.key.toString('hex'),
      db_length: drive.core.length,
      blobs_length: blobs.core.length
    })
  )
  log(`serving ${Object.keys(files).length} files, db length ${drive.core.length}, blobs length ${blobs.core.length}`)

  if (args['exit-after-ms'] !== undefined) {
    setTimeout(() => process.exit(0), args['exit-after-ms'])
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`)
  process.exit(1)
})
