#!/usr/bin/env node
'use strict'

// Live-write latency between two connected JavaScript peers (hyperdrive 13 / corestore 7),
// the baseline for `cohd-bench --live`: the reader replicates over a loopback TCP socket and
// downloads everything; each write on the writer is timed until the reader reads it.
//
// With --bootstrap HOST:PORT,... the two peers instead find each other with Hyperswarm on that
// (private) HyperDHT, both joining the drive's discovery key as server and client, as JS apps
// do, and replicate over the UDX connection it makes (`cohd-bench --live-dht`).
//
// usage: node js/interop/bench-live.js [--writes N] [--size BYTES] [--bootstrap HOST:PORT,...]
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
  const storeB = new Corestore(dirB)
  const b = new Hyperdrive(storeB, a.key)
  await b.ready()
  let server = null
  let sock = null
  const swarms = []
  if (args.bootstrap) {
    const Hyperswarm = require('hyperswarm')
    const DHT = require('hyperdht')
    const bootstrap = args.bootstrap.split(',').map((x) => {
      const i = x.lastIndexOf(':')
      return { host: x.slice(0, i), port: Number(x.slice(i + 1)) }
    })
    for (const [store, drive] of [[storeA, a], [storeB, b]]) {
      // Bound to 127.0.0.1 as the testnet is: with the default 0.0.0.0, two JS peers on one
      // loopback testnet never connected (the server side never saw the connection).
      const swarm = new Hyperswarm({ dht: new DHT({ bootstrap, host: '127.0.0.1' }) })
      swarm.on('connection', (conn) => {
        conn.on('error', () => {})
        store.replicate(conn)
      })
      await swarm.join(drive.discoveryKey, { server: true, client: true }).flushed()
      swarms.push(swarm)
    }
  } else {
    // No Nagle delay on either side (as our peers do, and as UDX streams have none).
    server = net.createServer((s) => {
      s.setNoDelay(true)
      const stream = storeA.replicate(false)
      s.pipe(stream).pipe(s)
    })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    sock = net.connect(server.address().port, '127.0.0.1')
    sock.setNoDelay(true)
    const stream = storeB.replicate(true)
    sock.pipe(stream).pipe(sock)
  }
  if (b.core.peers.length === 0) {
    // Found on the DHT: the connection comes after the join.
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the peers did not connect within 30 s')), 30000)
      b.core.once('peer-add', () => { clearTimeout(t); resolve() })
    })
  }
  b.db.core.download({ start: 0, end: -1 })
  await b.core.update({ wait: true })
  if (!(await b.get('/warmup'))) throw new Error('the reader did not get /warmup')
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
        const done = () => { clearTimeout(timer); b.db.core.off('append', done); resolve() }
        const timer = setTimeout(done, 20)
        b.db.core.once('append', done)
      })
    }
    ms.push(now() - t)
  }
  process.stdout.write(JSON.stringify({ impl: 'js', ms }) + '\n')
  if (sock) sock.destroy()
  if (server) server.close()
  for (const swarm of swarms) {
    await swarm.destroy()
    await swarm.dht.destroy()
  }
  await b.close(); await a.close(); await storeB.close(); await storeA.close()
  fs.rmSync(dirA, { recursive: true, force: true })
  fs.rmSync(dirB, { recursive: true, force: true })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
