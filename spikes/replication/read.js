// Reads a co-hyperdrive drive served by the Rust spike over loopback TCP.
// usage: node read.js PORT DRIVE_KEY_HEX [--v11] [--live] [--idle-ms N]
//   default: hyperdrive 13 + corestore 7 (hypercore 11); --v11: hyperdrive 11 + corestore 6 (hypercore 10)
//   --live: after reading, wait for /live.txt appended by the server while connected
//   --idle-ms N: stay connected N ms with no traffic first (keepalive check)
const JS = '/work/main/js/node_modules/'
const net = require('net')
const os = require('os')
const fs = require('fs')
const path = require('path')

const [port, keyHex] = process.argv.slice(2)
const v11 = process.argv.includes('--v11')
const live = process.argv.includes('--live')
const idleIdx = process.argv.indexOf('--idle-ms')
const idleMs = idleIdx > 0 ? Number(process.argv[idleIdx + 1]) : 0
const Corestore = require(JS + (v11 ? 'corestore6' : 'corestore'))
const Hyperdrive = require(JS + (v11 ? 'hyperdrive11' : 'hyperdrive'))

function bigContent() {
  const b = Buffer.alloc(200000)
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + 3) % 251
  return b
}

function withTimeout(p, ms, what) {
  let t
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error('timeout: ' + what)), ms) })
  ]).finally(() => clearTimeout(t))
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spike-js-'))
  const store = new Corestore(dir)
  // --late: open the drive first, replicate after (the usual hyperswarm pattern). Corestore then
  // corks and sends the Open of every open core in ONE protomux batch (control messages inside).
  const late = process.argv.includes('--late')
  let drive = null
  if (late) {
    drive = new Hyperdrive(store, Buffer.from(keyHex, 'hex'))
    await drive.ready()
  }
  const socket = net.connect(Number(port), '127.0.0.1')
  const stream = store.replicate(true) // we dialed: Noise initiator
  socket.pipe(stream).pipe(socket)
  const toIdx = process.argv.indexOf('--js-timeout-ms')
  if (toIdx > 0) stream.noiseStream.setTimeout(Number(process.argv[toIdx + 1])) // like hyperswarm: destroy when nothing arrives
  stream.on('error', (e) => console.error('[js] stream error', e.message))
  socket.on('error', (e) => console.error('[js] socket error', e.message))
  stream.on('close', () => console.error('[js] stream closed'))

  if (!drive) drive = new Hyperdrive(store, Buffer.from(keyHex, 'hex'))
  await withTimeout(drive.ready(), 10000, 'ready')
  console.error('[js] drive ready, db length', drive.db.core.length)
  await withTimeout(drive.db.core.update({ wait: true }), 10000, 'update')
  console.error('[js] after update, db length', drive.db.core.length)

  const names = []
  for await (const e of drive.list('/', { recursive: true })) names.push(e.key)
  console.log('FILES', JSON.stringify(names))

  const hello = await withTimeout(drive.get('/hello.txt'), 10000, 'get hello')
  console.log('HELLO', JSON.stringify(hello && hello.toString()))
  const readme = await withTimeout(drive.get('/docs/readme.md'), 10000, 'get readme')
  console.log('README', JSON.stringify(readme && readme.toString()))
  const big = await withTimeout(drive.get('/big.bin'), 20000, 'get big')
  const ok = big && Buffer.compare(big, bigContent()) === 0
  console.log('BIG', big ? big.length : null, ok ? 'MATCH' : 'MISMATCH')
  const blobs = await drive.getBlobs()
  console.log('BLOBS_KEY', blobs.core.key.toString('hex'), 'length', blobs.core.length)

  if (process.argv.includes('--huge')) {
    const t0 = Date.now()
    const huge = await withTimeout(drive.get('/huge.bin'), 120000, 'get huge')
    const ms = Date.now() - t0
    let ok = true
    for (let i = 0; i < huge.length; i += 4093) if (huge[i] !== i % 253) { ok = false; break }
    console.log('HUGE', huge.length, ok ? 'MATCH' : 'MISMATCH', ms + ' ms', (huge.length / 1048576 / (ms / 1000)).toFixed(1) + ' MiB/s')
  }

  if (process.argv.includes('--ext')) {
    // extension messages (hypercore message 9) both ways; utf-8 encoding = raw bytes, no prefix
    const got = []
    let resolve
    const done = new Promise((r) => { resolve = r })
    const ext = drive.db.core.registerExtension('spike', {
      encoding: 'utf-8',
      onmessage(msg) { got.push(msg); if (got.length === 2) resolve() }
    })
    ext.broadcast('ping one')
    ext.broadcast('ping two') // second send goes out with name '' (JS name compression)
    await withTimeout(done, 5000, 'extension replies').catch((e) => console.error('[js]', e.message))
    console.log('EXT', JSON.stringify(got))
  }

  if (idleMs > 0) {
    console.error('[js] idling', idleMs, 'ms')
    await new Promise((r) => setTimeout(r, idleMs))
    console.log('IDLE_OK', !stream.destroyed)
  }

  if (live) {
    const before = drive.version
    const t0 = Date.now()
    let got = null
    while (Date.now() - t0 < 15000) {
      // a live reader: either wait for the append event or poll; update({wait:true}) asks peers
      await withTimeout(drive.db.core.update({ wait: true }), 15000, 'live update').catch(() => {})
      got = await drive.get('/live.txt', { wait: false }).catch(() => null)
      if (!got && drive.version > before) got = await withTimeout(drive.get('/live.txt'), 5000, 'live get')
      if (got) break
      await new Promise((r) => setTimeout(r, 200))
    }
    console.log('LIVE', JSON.stringify(got && got.toString()), 'version', before, '->', drive.version)
  }

  await drive.close()
  socket.destroy()
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
}

main().then(
  () => process.exit(0),
  (e) => { console.error('[js] FAILED', e); process.exit(1) }
)
