#!/usr/bin/env node
'use strict'

// A private HyperDHT on 127.0.0.1 for the discovery tests: hyperdht's own testnet (a few open,
// persistent nodes), so peers that bootstrap from it never reach the public network.
//
// usage: node js/interop/dht-testnet.js [--nodes N]
//
// stdout, flushed: `bootstrap HOST:PORT[,HOST:PORT...]` once every node is bootstrapped.
// Runs until killed (SIGINT/SIGTERM close the nodes first) or its stdin closes.

const dgram = require('dgram')
const createTestnet = require('hyperdht/testnet')
const { parseArgs, printLine } = require('./common')

async function main() {
  const args = parseArgs(process.argv.slice(2), { numbers: ['nodes'], defaults: { nodes: 3 } })
  // hyperdht takes port 0 for "the default port" (49737): pick a free one, so that testnets of
  // tests running side by side do not collide; retry if another process takes it meanwhile.
  let testnet
  for (let attempt = 0; ; attempt++) {
    try {
      testnet = await createTestnet(Math.max(args.nodes, 1), { host: '127.0.0.1', port: await freePort() })
      break
    } catch (e) {
      if (attempt >= 4) throw e
    }
  }
  let closing = false
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      if (closing) return
      closing = true
      testnet.destroy().finally(() => process.exit(0))
      setTimeout(() => process.exit(0), 2000).unref()
    })
  }
  await printLine('bootstrap ' + testnet.bootstrap.map((b) => `${b.host}:${b.port}`).join(','))
  // Runs until killed, or until stdin closes: a test that dies leaves no testnet behind.
  process.stdin.on('end', () => process.exit(0))
  process.stdin.resume()
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4')
    s.once('error', reject)
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

main().catch((e) => {
  process.stderr.write(`error: ${e && e.stack ? e.stack : e}\n`)
  process.exit(1)
})
