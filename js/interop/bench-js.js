#!/usr/bin/env node
'use strict'

// JS -> JS replication benchmark over loopback TCP, hyperdrive 13 / corestore 7 on both sides,
// the baseline for co-hyperdrive's `clone --all`.
//
// usage: node js/interop/bench-js.js [--mib N] [--file-mib M] [--timeout-ms T] [--apart]
//   --apart: the writer runs in a child Node process (this script with --serve-child), so each
//   peer has its own event loop and the two can use two cores.
//   The writer drive holds /first.txt (4 KiB, written first) and ceil(N / M) files
//   /bench/fNN.bin of M MiB each (default N = 100, M = 10: about 100 MiB). Both corestores are
//   on disk in new temporary directories, deleted at the end.
//
// Timing starts when the replica dials (the TCP socket is piped into its replication stream):
//   first_file_ms: until /first.txt is readable on the replica (handshake, db upgrade, the
//                  header, the entry and its blob);
//   ms:            until `drive.download('/')` is done: every db and blobs block is local.
// Afterwards every file is read back on the replica without network ({wait: false}) and
// compared with what was written (not timed).
//
// stdout: exactly one JSON line,
//   {"impl":"js","mib":N,"ms":N,"first_file_ms":N,"files":N,"mib_s":N}
// stderr: progress. Any failure exits 1.

const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const { spawn } = require('child_process')
const { parseArgs, withTimeout, printLine } = require('./common')

function log(...a) {
  console.error('[bench-js]', ...a)
}

function filled(n, seed) {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255
  return b
}

const now = () => Number(process.hrtime.bigint()) / 1e6

function benchFiles(args) {
  const files = [['/first.txt', filled(4096, 1)]]
  const count = Math.ceil(args.mib / args['file-mib'])
  for (let i = 0; i < count; i++) {
    files.push([`/bench/f${String(i).padStart(2, '0')}.bin`, filled(args['file-mib'] * 1024 * 1024, i + 2)])
  }
  return files
}

// Writes the drive into `dir` and serves it on 127.0.0.1; returns what the replica needs.
async function startWriter(dir, files) {
  const wstore = new Corestore(dir)
  const writer = new Hyperdrive(wstore)
  await writer.ready()
  let bytes = 0
  for (const [name, data] of files) {
    await writer.put(name, data)
    bytes += data.length
  }
  const wblobs = await writer.getBlobs()
  log(`writer: ${files.length} files, ${(bytes / 1048576).toFixed(2)} MiB, db length ${writer.core.length}, blobs length ${wblobs.core.length}`)

  const server = net.createServer((socket) => {
    const s = wstore.replicate(false)
    socket.pipe(s).pipe(socket)
    s.on('error', () => {})
    socket.on('error', () => {})
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    key: writer.key,
    port: server.address().port,
    dbLength: writer.core.length,
    blobsLength: wblobs.core.length,
    close: async () => {
      server.close()
      await writer.close()
    }
  }
}

// The child of --apart: writes, serves, prints one JSON line, runs until stdin closes.
async function serveChild(args) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-bench-js-repl-'))
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  const w = await startWriter(dir, benchFiles(args))
  await printLine(JSON.stringify({ key: w.key.toString('hex'), port: w.port, dbLength: w.dbLength, blobsLength: w.blobsLength }))
  process.stdin.resume()
  await new Promise((resolve) => process.stdin.on('close', resolve))
  await w.close()
}

// Starts the child of --apart and returns its writer description.
function writerChild(args) {
  const child = spawn(process.execPath, [__filename, '--serve-child', '--mib', String(args.mib), '--file-mib', String(args['file-mib'])], {
    stdio: ['pipe', 'pipe', 'inherit']
  })
  process.on('exit', () => child.kill())
  return new Promise((resolve, reject) => {
    let out = ''
    child.on('exit', (code) => reject(new Error(`the writer process exited (${code})`)))
    child.stdout.on('data', (d) => {
      out += d
      if (!out.includes('\n')) return
      const w = JSON.parse(out.split('\n')[0])
      resolve({
        key: Buffer.from(w.key, 'hex'),
        port: w.port,
        dbLength: w.dbLength,
        blobsLength: w.blobsLength,
        close: async () => child.stdin.end()
      })
    })
  })
}

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    flags: ['apart', 'serve-child'],
    numbers: ['mib', 'file-mib', 'timeout-ms'],
    defaults: { mib: 100, 'file-mib': 10, 'timeout-ms': 300000 }
  })
  if (!args.mib || !args['file-mib']) throw new Error('--mib and --file-mib must be positive')
  setTimeout(() => {
    process.stderr.write(`error: hard timeout after ${args['timeout-ms']} ms\n`)
    process.exit(1)
  }, args['timeout-ms']).unref()
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(1))
  if (args['serve-child']) return serveChild(args)

  const dirs = [0, 1].map(() => fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-bench-js-repl-')))
  process.on('exit', () => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })))

  // The writer: here, or in a child process.
  const files = benchFiles(args)
  const bytes = files.reduce((n, [, data]) => n + data.length, 0)
  const w = args.apart ? await writerChild(args) : await startWriter(dirs[0], files)

  // The replica.
  const rstore = new Corestore(dirs[1])
  const replica = new Hyperdrive(rstore, w.key)
  await replica.ready()
  let gotPeer
  const peer = new Promise((resolve) => {
    gotPeer = resolve
  })
  replica.core.on('peer-add', () => gotPeer())

  const t0 = now()
  const socket = net.connect(w.port, '127.0.0.1')
  const stream = rstore.replicate(true)
  socket.pipe(stream).pipe(socket)
  let finished = false
  stream.on('error', (e) => finished || log('replica stream error:', e.message))

  await withTimeout(peer, 30000, 'the writer opening the db core')
  await replica.core.update({ wait: true })
  const first = await replica.get('/first.txt')
  const firstMs = now() - t0
  if (!first || !first.equals(files[0][1])) throw new Error('/first.txt differs on the replica')
  log(`first file readable after ${firstMs.toFixed(1)} ms`)

  const dl = replica.download('/')
  await dl.done()
  const ms = now() - t0
  log(`download done after ${ms.toFixed(1)} ms`)

  // Check, without the network: every block is local and every file is what was written.
  const rblobs = await replica.getBlobs()
  if (replica.core.contiguousLength !== w.dbLength) throw new Error(`db: ${replica.core.contiguousLength} of ${w.dbLength} blocks local`)
  if (rblobs.core.contiguousLength !== w.blobsLength) throw new Error(`blobs: ${rblobs.core.contiguousLength} of ${w.blobsLength} blocks local`)
  for (const [name, data] of files) {
    const got = await replica.get(name, { wait: false })
    if (!got || !got.equals(data)) throw new Error(`${name} differs on the replica`)
  }
  log('replica verified')

  const mib = bytes / 1048576
  await printLine(
    JSON.stringify({
      impl: 'js',
      apart: !!args.apart,
      mib: Number(mib.toFixed(2)),
      ms: Number(ms.toFixed(1)),
      first_file_ms: Number(firstMs.toFixed(1)),
      files: files.length,
      mib_s: Number((mib / (ms / 1000)).toFixed(1))
    })
  )
  finished = true
  socket.destroy()
  await Promise.allSettled([replica.close(), w.close()])
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`)
    process.exit(1)
  }
)
