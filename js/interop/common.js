'use strict'

// Shared helpers of the interop scripts (read-drive.js, serve-drive.js, bench-js.js).
// The Holepunch modules resolve from js/node_modules (install with `npm ci --prefix js`).

const crypto = require('crypto')

// The two pinned JavaScript lines: v13 = hyperdrive 13 / corestore 7 / hypercore 11,
// v11 = hyperdrive 11 / corestore 6 / hypercore 10 (npm aliases).
function loadLine(line) {
  if (line === 'v13') return { Corestore: require('corestore'), Hyperdrive: require('hyperdrive') }
  if (line === 'v11') return { Corestore: require('corestore6'), Hyperdrive: require('hyperdrive11') }
  throw new Error(`unknown --line ${JSON.stringify(line)} (v13 or v11)`)
}

// A tiny flag parser: --name value pairs; `flags` lists names that take no value.
function parseArgs(argv, { flags = [], numbers = [], defaults = {} } = {}) {
  const out = { ...defaults }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${JSON.stringify(a)}`)
    const name = a.slice(2)
    if (flags.includes(name)) {
      out[name] = true
      continue
    }
    if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
    const v = argv[++i]
    if (numbers.includes(name)) {
      const n = Number(v)
      if (!Number.isInteger(n) || n < 0) throw new Error(`${a}: not a non-negative integer: ${v}`)
      out[name] = n
    } else {
      out[name] = v
    }
  }
  return out
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

function withTimeout(promise, ms, what) {
  let t
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      t = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms)
    })
  ]).finally(() => clearTimeout(t))
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Writes one line to stdout and calls back once it is flushed (stdout may be a pipe).
function printLine(line) {
  return new Promise((resolve) => process.stdout.write(line + '\n', resolve))
}


// Deterministic test bytes: xorshift32 from a seed (no Math.random).
function pattern(len, seed) {
  const b = Buffer.alloc(len)
  let x = (seed * 2654435761 + 1) >>> 0 || 1
  for (let i = 0; i < len; i++) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    b[i] = x & 255
  }
  return b
}

module.exports = { loadLine, parseArgs, sha256, withTimeout, sleep, printLine, pattern }
