// Serves a JS compat hypercore (key = ed25519 public key) on 127.0.0.1 for the Rust reader.
// usage: node serve-core.js PORT [--v10] [--live-ms N] [--timeout-ms N]
//   default hypercore 11; --v10: hypercore 10. Prints KEY=<hex> and LENGTH=<n> on stdout.
const JS = '/work/main/js/node_modules/'
const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')

const port = Number(process.argv[2])
const v10 = process.argv.includes('--v10')
const Hypercore = require(JS + (v10 ? 'hypercore10' : 'hypercore'))
const opt = (name, dflt) => {
  const i = process.argv.indexOf(name)
  return i > 0 ? Number(process.argv[i + 1]) : dflt
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spike-jscore-'))
  // hypercore 10 makes compat cores by default; hypercore 11 needs compat: true (its default is a
  // manifest-keyed core with a multisig signature, which the Rust crate cannot verify)
  const core = new Hypercore(dir, { compat: true })
  await core.ready()
  const big = Buffer.alloc(100000)
  for (let i = 0; i < big.length; i++) big[i] = i % 256
  await core.append([Buffer.from('hello'), Buffer.from('from'), Buffer.from('js'), big])
  const liveMs = opt('--live-ms', 0)

  const server = net.createServer((socket) => {
    console.error('[js] connection')
    const s = core.replicate(false) // we accepted: Noise responder
    socket.pipe(s).pipe(socket)
    s.on('error', (e) => console.error('[js] stream error', e.message))
    socket.on('error', (e) => console.error('[js] socket error', e.message))
    s.on('close', () => console.error('[js] stream closed'))
  })
  server.listen(port, '127.0.0.1', () => {
    console.log('KEY=' + core.key.toString('hex'))
    console.log('LENGTH=' + core.length)
  })
  if (liveMs) {
    setTimeout(async () => {
      await core.append(Buffer.from('live block'))
      console.error('[js] appended live block, length', core.length)
    }, liveMs)
  }
  setTimeout(() => { server.close(); core.close().then(() => process.exit(0)) }, opt('--timeout-ms', 30000))
}

main().catch((e) => { console.error(e); process.exit(1) })
