#!/usr/bin/env node
'use strict'

// Reads a whole drive from a peer on 127.0.0.1 and describes every file.
//
// usage: node js/interop/read-drive.js (--port P | --bootstrap HOST:PORT,...) --key HEX
//          [--line v13|v11]
//          [--expect-file PATH [--wait-ms N]] [--timeout-ms N] [--storage DIR]
//
//   --line v13 (default): hyperdrive 13 / corestore 7 / hypercore 11;
//   --line v11: hyperdrive 11 / corestore 6 / hypercore 10.
//   The drive is opened by its key. Its blobs core is the one the db header's contentFeed
//   names (a compat drive such as co-hyperdrive's); a hyperdrive 13 drive without one derives
//   the blobs key from its manifest.
//   --expect-file PATH: stay connected until PATH exists in the drive (a live append by the
//   peer), for at most --wait-ms (default 15000), then describe the drive.
//   --timeout-ms: hard limit for the whole run (default 60000); on expiry it exits 1 saying
//   what it was waiting for.
//   --bootstrap HOST:PORT,...: instead of dialling --port, find the peer with Hyperswarm on this
//   (private) HyperDHT, joining the drive's discovery key as a client, as JS apps do.
//   --storage DIR: an empty or missing directory for the reader's corestore (kept); default a
//   new temporary directory, deleted on exit.
//   --range PATH:START:END: first, before anything else is downloaded, read bytes START..END
//   (END exclusive) of PATH with a read stream (Hyperblobs seeks to START: a seek request to
//   the peer), and add "range":{"size":N,"sha256":"hex"} to the output.
//
// stdout: exactly one JSON line on success,
//   {"files":{"/path":{"size":N,"sha256":"hex"},...},"line":"v13","key":"hex","version":N,
//    "db_length":N,"blobs_key":"hex","blobs_length":N,"ms":N}
//   Symlinks appear as {"linkname":"target"}; "executable":true is added when set.
// stderr: progress; failures print `error: ...` and exit 1.
// Only loopback: it always dials 127.0.0.1.

const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')
const { loadLine, parseArgs, sha256, withTimeout, sleep, printLine } = require('./common')

function log(...a) {
  console.error('[read-drive]', ...a)
}

// Every file of the drive, with its size and SHA-256, and the drive's lengths.
async function describe(args, drive, t0, setStage) {
  setStage('opening the blobs core named by the db header')
  const blobs = await drive.getBlobs()
  const files = {}
  for await (const e of drive.entries()) {
    const v = e.value || {}
    const d = {}
    setStage(`reading ${e.key}`)
    if (v.linkname) {
      d.linkname = v.linkname
    } else {
      const data = v.blob ? await drive.get(e.key) : Buffer.alloc(0)
      if (!data) throw new Error(`no content for ${e.key}`)
      if (v.blob && v.blob.byteLength !== data.length) {
        throw new Error(`${e.key}: entry says ${v.blob.byteLength} bytes, read ${data.length}`)
      }
      d.size = data.length
      d.sha256 = sha256(data)
    }
    if (v.executable) d.executable = true
    files[e.key] = d
  }
  const out = {
    files,
    line: args.line,
    key: drive.key.toString('hex'),
    version: drive.version,
    db_length: drive.core.length,
    blobs_key: blobs ? blobs.core.key.toString('hex') : null,
    blobs_length: blobs ? blobs.core.length : 0,
    ms: Date.now() - t0
  }
  log(`${Object.keys(files).length} entries in ${out.ms} ms`)
  return out
}

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    numbers: ['port', 'wait-ms', 'timeout-ms'],
    defaults: { line: 'v13', 'wait-ms': 15000, 'timeout-ms': 60000 }
  })
  if (!args.port && !args.bootstrap) throw new Error('--port or --bootstrap is required')
  if (!/^[0-9a-f]{64}$/i.test(args.key || '')) throw new Error('--key must be 64 hex characters')
  let stage = 'opening the local store'
  setTimeout(() => {
    process.stderr.write(`error: hard timeout after ${args['timeout-ms']} ms while ${stage} (drive ${args.key}, peer 127.0.0.1:${args.port})\n`)
    process.exit(1)
  }, args['timeout-ms'])
  const { Corestore, Hyperdrive } = loadLine(args.line)
  const t0 = Date.now()

  let dir = args.storage
  if (dir) {
    fs.mkdirSync(dir, { recursive: true })
    if (fs.readdirSync(dir).length) throw new Error(`--storage ${dir} is not empty`)
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-read-drive-'))
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  }
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(1))
  const store = new Corestore(dir)
  const drive = new Hyperdrive(store, Buffer.from(args.key, 'hex'))
  await drive.ready()
  // Count peers on the db core from the start: the channel may open before we look.
  let gotPeer
  const peer = new Promise((resolve) => {
    gotPeer = resolve
  })
  if (drive.core.peers.length > 0) gotPeer()
  drive.core.on('peer-add', () => gotPeer())

  let finished = false
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
    stage = 'looking up the drive on the DHT'
    swarm.join(drive.discoveryKey, { server: false, client: true })
    await swarm.flush()
    log('DHT lookup done, connections:', swarm.connections.size)
    stage = 'waiting for a peer found on the DHT to open the drive\'s db core'
    await peer
    stage = 'updating the db core to the peer\'s length'
    await drive.core.update({ wait: true })
    const out = await describe(args, drive, t0, (s) => { stage = s })
    finished = true
    await printLine(JSON.stringify(out))
    await swarm.destroy().catch(() => {})
    return
  }
  const socket = net.connect(args.port, '127.0.0.1')
  const stream = store.replicate(true) // we dialed: Noise initiator
  socket.pipe(stream).pipe(socket)
  socket.on('error', (e) => log('socket error:', e.message))
  stream.on('error', (e) => log('stream error:', e.message))
  socket.on('close', () => {
    if (finished) return
    log('connection closed')
    // Whatever is local can still be read; anything else would wait until the hard timeout.
    setTimeout(() => {
      if (finished) return
      process.stderr.write('error: the peer closed the connection before the read finished\n')
      process.exit(1)
    }, 3000).unref()
  })

  stage = 'waiting for the peer to open the drive\'s db core (wrong key, or the peer does not serve it?)'
  await peer
  stage = 'updating the db core to the peer\'s length'
  log('peer opened the db core')
  await drive.core.update({ wait: true })
  log('db length after update:', drive.core.length, 'version', drive.version)

  let range = null
  if (args.range) {
    const [file, start, end] = args.range.split(':')
    stage = `reading bytes ${start}..${end} of ${file}`
    const chunks = []
    const rs = drive.createReadStream(file, { start: Number(start), end: Number(end) - 1 })
    for await (const c of rs) chunks.push(c)
    const data = Buffer.concat(chunks)
    range = { size: data.length, sha256: sha256(data) }
    log(`read ${data.length} bytes of ${file} from ${start}`)
  }

  if (args['expect-file']) {
    const want = args['expect-file']
    stage = `waiting for ${want} to appear`
    const deadline = Date.now() + args['wait-ms']
    let appended = null
    drive.core.on('append', () => appended && appended())
    for (;;) {
      const e = await drive.entry(want)
      if (e) break
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`${want} did not appear within ${args['wait-ms']} ms (drive version ${drive.version})`)
      // Wake on an append (the peer's live Sync makes hypercore upgrade eagerly) or poll.
      await Promise.race([
        new Promise((resolve) => {
          appended = resolve
        }),
        sleep(Math.min(250, left))
      ])
      appended = null
      await withTimeout(drive.core.update({ wait: true }), Math.max(left, 1), 'update').catch(() => {})
    }
    log(`${want} appeared, version ${drive.version}`)
  }

  const out = await describe(args, drive, t0, (s) => {
    stage = s
  })
  if (range) out.range = range
  finished = true
  await printLine(JSON.stringify(out))
  socket.destroy()
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`)
    process.exit(1)
  }
)
