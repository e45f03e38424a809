#!/usr/bin/env node
'use strict'

// A long-lived JavaScript Hyperswarm + Hyperdrive 13 peer on a (private) HyperDHT, driven line
// by line on stdin, for the live-network tests: a JS writer that `cohd` peers follow, or a JS
// peer that replicates a co-drive's writer drives beside `cohd serve` peers.
//
// usage: node js/interop/swarm-peer.js --bootstrap HOST:PORT,... (--create | --keys HEX,...)
//          [--server-only] [--storage DIR]
//
//   --create: a new drive as a JavaScript user gets it (manifest cores), written by this peer;
//     the topic is its discovery key.
//   --keys K1,K2,...: drives to replicate, everything and live (as a mirror); the topic is K1's
//     discovery key (a co-drive's key: its primary writer's drive).
//   --server-only: join the topic as a server only (announce, never look up): every connection
//     is one a peer dialled. Default: server and client, as JS apps do.
//   --storage DIR: the corestore directory (kept, reopened on the next run); default a new
//     temporary directory, deleted on exit.
//
// stdout: first `key HEX` (the created drive's, or K1) once the topic is announced; then one line
// per stdin command:
//   put PATH TEXT        -> ok                    (with --create; TEXT is the rest of the line)
//   wait PATH TEXT MS    -> ok | missing          whether some drive holds PATH with content TEXT
//                                                 within MS milliseconds
// stderr: progress. Exits on SIGINT/SIGTERM or when stdin closes.

const os = require('os')
const fs = require('fs')
const path = require('path')
const readline = require('readline')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const Hyperswarm = require('hyperswarm')
const { parseArgs, printLine, sleep, withTimeout } = require('./common')

function log(...a) {
  console.error('[swarm-peer]', ...a)
}

async function main() {
  const args = parseArgs(process.argv.slice(2), { flags: ['create', 'server-only'] })
  if (!args.bootstrap) throw new Error('--bootstrap is required')
  if (!args.create === !args.keys) throw new Error('one of --create and --keys is required')
  const keys = args.keys ? args.keys.split(',') : []
  for (const k of keys) if (!/^[0-9a-f]{64}$/i.test(k)) throw new Error(`bad key ${k}`)

  let dir = args.storage
  if (dir) {
    fs.mkdirSync(dir, { recursive: true })
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-swarm-peer-'))
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  }
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0))

  const store = new Corestore(dir)
  const drives = args.create
    ? [new Hyperdrive(store)]
    : keys.map((k) => new Hyperdrive(store.namespace(k), Buffer.from(k, 'hex')))
  await Promise.all(drives.map((d) => d.ready()))
  if (!args.create) {
    // A mirror: every block of every drive, as it comes.
    for (const d of drives) {
      d.core.download({ start: 0, end: -1 })
      d.getBlobs().then((b) => b && b.core.download({ start: 0, end: -1 }), () => {})
    }
  }

  const bootstrap = args.bootstrap.split(',').map((a) => {
    const i = a.lastIndexOf(':')
    return { host: a.slice(0, i), port: Number(a.slice(i + 1)) }
  })
  const swarm = new Hyperswarm({ bootstrap })
  swarm.on('connection', (conn, info) => {
    log('connection', info.publicKey.toString('hex').slice(0, 16), info.client ? '(we dialled)' : '(accepted)')
    conn.on('error', (e) => log('connection error:', e.message))
    store.replicate(conn)
  })
  const server = true
  const client = !args['server-only']
  await swarm.join(drives[0].discoveryKey, { server, client }).flushed()
  log('announced on the DHT', client ? '(and looking up)' : '(server only)')
  await printLine(`key ${drives[0].key.toString('hex')}`)

  // The content of PATH in some drive, or null (bounded: a missing block waits for a peer).
  async function read(p) {
    for (const d of drives) {
      await withTimeout(d.update(), 2000, 'update').catch(() => {})
      const e = await d.entry(p).catch(() => null)
      if (!e) continue
      const data = await withTimeout(d.get(p), 2000, 'get').catch(() => null)
      if (data) return data.toString()
    }
    return null
  }

  const rl = readline.createInterface({ input: process.stdin })
  rl.on('close', () => process.exit(0))
  for await (const line of rl) {
    const [cmd, p, ...rest] = line.split(' ')
    if (cmd === 'put' && args.create) {
      await drives[0].put(p, Buffer.from(rest.join(' ')))
      await printLine('ok')
    } else if (cmd === 'wait') {
      const ms = Number(rest.pop())
      const want = rest.join(' ')
      const deadline = Date.now() + ms
      let got = await read(p)
      while (got !== want && Date.now() < deadline) {
        await sleep(100)
        got = await read(p)
      }
      await printLine(got === want ? 'ok' : 'missing')
    } else {
      await printLine(`error: unknown command ${JSON.stringify(line)}`)
    }
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`)
  process.exit(1)
})
