#!/usr/bin/env node
'use strict'

// A JavaScript Hypercore 11 writer (Corestore 7, a default manifest core) that truncates its log
// while a peer replicates it: the reference for following another writer's fork.
//
// usage: node js/interop/truncate-core.js [--blocks N] [--keep K] [--add A] [--storage DIR]
//
// --storage DIR: where the corestore lives (default: a temporary directory, deleted on exit;
//   a killed process cannot delete it, so tests pass a directory of their own).
//
// Appends N blocks ("old i"), serves on 127.0.0.1, and prints:
//   listening on 127.0.0.1:PORT
//   key <64 hex>
// Then on the line "truncate" on stdin: truncates to K blocks (fork 1), appends A blocks
// ("new i" for i from K), and prints
//   truncated <fork> <length>
// Exits when stdin closes.

const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')
const readline = require('readline')
const Corestore = require('corestore')
const { parseArgs } = require('./common')

function log(...a) {
  console.error('[truncate-core]', ...a)
}

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    numbers: ['blocks', 'keep', 'add'],
    defaults: { blocks: 40, keep: 30, add: 5 }
  })
  const dir = args.storage || fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-truncate-'))
  const store = new Corestore(dir)
  const core = store.get({ name: 'truncated' })
  await core.ready()
  for (let i = 0; i < args.blocks; i++) await core.append(Buffer.from(`old ${i}`))

  const server = net.createServer((socket) => {
    const stream = store.replicate(false)
    socket.pipe(stream).pipe(socket)
    socket.on('error', (e) => log('socket error:', e.message))
    stream.on('error', (e) => log('stream error:', e.message))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  console.log(`listening on 127.0.0.1:${server.address().port}`)
  console.log(`key ${core.key.toString('hex')}`)

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.trim() !== 'truncate') continue
    await core.truncate(args.keep)
    for (let i = args.keep; i < args.keep + args.add; i++) await core.append(Buffer.from(`new ${i}`))
    console.log(`truncated ${core.fork} ${core.length}`)
  }
  server.close()
  await store.close()
  if (!args.storage) fs.rmSync(dir, { recursive: true, force: true })
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
