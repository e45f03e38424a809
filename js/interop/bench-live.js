#!/usr/bin/env node
'use strict'

// Live-write latency between two connected JavaScript peers (hyperdrive 13 / corestore 7),
// the baseline for `cohd-bench --live`: the reader replicates over a loopback TCP socket and
// downloads everything; each write on the writer is timed until the reader reads it.
//
// usage: node js/interop/bench-live.js [--writes N] [--size BYTES]
// stdout: {"impl":"js","ms":[...]}; stderr: progress.

const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const { parseArgs } = require('./common')

const now = () => Number(process.hrtime.bigint()) / 1e6

async function main () {
  const args = parseArgs(process.argv.slice(2), { numbers: ['writes', 'size'], defaults: { writes: 50, size: 1024 } })
  const dirA = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-live-a-'))
  const dirB = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-live-b-'))
  const storeA = new Corestore(dirA)
  const a = new Hyperdrive(storeA)
  await a.ready()
  await a.put('/warmup', Buffer.from('warm'))
  // No Nagle delay on either side (as our peers do, and as UDX streams on Hyperswarm have none).
  const server = net.createServer((sock) => {
    sock.setNoDelay(true)
    const stream = storeA.replicate(false)
    sock.pipe(stream).pipe(sock)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))

  const storeB = new Corestore(dirB)
  const b = new Hyperdrive(storeB, a.key)
  await b.ready()
  const sock = net.connect(server.address().port, '127.0.0.1')
  sock.setNoDelay(true)
  const stream = storeB.replicate(true)
  sock.pipe(stream).pipe(sock)
  b.db.core.download({ start: 0, end: -1 })
  await b.get('/warmup')
  // Content as it comes, as a serving peer does.
  if (b.blobs) b.blobs.core.download({ start: 0, end: -1 })

  const data = Buffer.alloc(args.size, 7)
  const ms = []
  for (let i = 0; i < args.writes; i++) {
    const p = `/live/${i}.bin`
    const t = now()
    await a.put(p, data)
    for (;;) {
      // Once the entry is there, its content is fetched (or already downloaded).
      const entry = await b.entry(p)
      const got = entry && await b.get(p)
      if (got && got.equals(data)) break
      if (now() - t > 10000) throw new Error(`${p} did not arrive within 10 s`)
      await new Promise((resolve) => {
        const done = () => { clearTimeout(timer); resolve() }
        const timer = setTimeout(done, 20)
        b.db.core.once('append', done)
      })
    }
    ms.push(now() - t)
  }
  process.stdout.write(JSON.stringify({ impl: 'js', ms }) + '\n')
  sock.destroy()
  server.close()
  await b.close(); await a.close(); await storeB.close(); await storeA.close()
  fs.rmSync(dirA, { recursive: true, force: true })
  fs.rmSync(dirB, { recursive: true, force: true })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
