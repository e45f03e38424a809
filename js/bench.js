#!/usr/bin/env node
'use strict'

// Benchmark of JavaScript Hyperdrive 13 on disk, the baseline for co-hyperdrive.
//
// Usage: node js/bench.js [storage-dir]
//   storage-dir: a fresh directory for the corestore (created if missing);
//                defaults to a new mkdtemp directory. It is deleted at the end.
//
// stdout: exactly one JSON line with the timings (float milliseconds).
// stderr: everything else.

const fs = require('fs')
const os = require('os')
const path = require('path')
const b4a = require('b4a')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const SMALL_COUNT = 1000
const SMALL_SIZE = 4096
const LARGE_COUNT = 10
const LARGE_SIZE = 10 * 1024 * 1024
const EXPECTED_ENTRIES = SMALL_COUNT * 2 + LARGE_COUNT

function log(...args) {
  console.error('[bench]', ...args)
}

function assert(cond, msg) {
  if (!cond) throw new Error('assertion failed: ' + msg)
}

function filled(n, seed) {
  const b = b4a.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255
  return b
}

async function timed(name, fn) {
  const start = process.hrtime.bigint()
  await fn()
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  log(`${name}: ${ms.toFixed(1)} ms`)
  return ms
}

async function main() {
  let dir
  if (process.argv[2]) {
    dir = path.resolve(process.argv[2])
    fs.mkdirSync(dir, { recursive: true })
    assert(fs.readdirSync(dir).length === 0, `storage dir ${dir} must be empty`)
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cohd-bench-js-'))
  }
  log('storage:', dir)

  let store = new Corestore(dir)
  let drive = new Hyperdrive(store)
  const result = { impl: 'js' }

  try {
    await drive.ready()

    const small = filled(SMALL_SIZE, 7)
    const large = filled(LARGE_SIZE, 11)

    result.put_small_seq_ms = await timed('put_small_seq', async () => {
      for (let i = 0; i < SMALL_COUNT; i++) {
        await drive.put(`/small/${i}.bin`, small)
      }
    })

    result.put_small_batch_ms = await timed('put_small_batch', async () => {
      const batch = drive.batch()
      for (let i = 0; i < SMALL_COUNT; i++) {
        await batch.put(`/batch/${i}.bin`, small)
      }
      await batch.flush()
    })

    result.put_large_ms = await timed('put_large', async () => {
      for (let i = 0; i < LARGE_COUNT; i++) {
        await drive.put(`/large/${i}.bin`, large)
      }
    })

    result.get_small_ms = await timed('get_small', async () => {
      for (let i = 0; i < SMALL_COUNT; i++) {
        const buf = await drive.get(`/small/${i}.bin`)
        assert(buf && buf.length === SMALL_SIZE, `/small/${i}.bin length`)
      }
    })

    result.get_large_ms = await timed('get_large', async () => {
      for (let i = 0; i < LARGE_COUNT; i++) {
        const buf = await drive.get(`/large/${i}.bin`)
        assert(buf && buf.length === LARGE_SIZE, `/large/${i}.bin length`)
      }
    })

    let entries = 0
    result.list_recursive_ms = await timed('list_recursive', async () => {
      for await (const entry of drive.list('/')) {
        if (entry) entries++
      }
    })
    assert(entries === EXPECTED_ENTRIES, `list found ${entries}, expected ${EXPECTED_ENTRIES}`)
    result.list_entries = entries

    log(`db core: ${drive.db.core.length} blocks, ${drive.db.core.byteLength} bytes;`,
      `blobs core: ${drive.blobs.core.length} blocks, ${drive.blobs.core.byteLength} bytes`)

    // Reads from a reopened store: every block comes from disk.
    await drive.close()
    await store.close()
    store = new Corestore(dir)
    drive = new Hyperdrive(store)
    await drive.ready()
    result.get_large_reopened_ms = await timed('get_large_reopened', async () => {
      for (let i = 0; i < LARGE_COUNT; i++) {
        const buf = await drive.get(`/large/${i}.bin`)
        assert(buf && buf.length === LARGE_SIZE, `/large/${i}.bin length after reopen`)
      }
    })
  } finally {
    await drive.close()
    await store.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }

  process.stdout.write(JSON.stringify(result) + '\n')
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
