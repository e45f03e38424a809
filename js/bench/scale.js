'use strict'

// The JavaScript side of `cohd-bench --scale`: one Hyperdrive 13 holding N small files, built
// with batches, then each read in a process of its own (the Rust side times the whole process
// and its peak memory, as it does for `cohd`).
//
//   node js/bench/scale.js build --dir DIR --files N
//   node js/bench/scale.js stat|cat --dir DIR --path PATH
//   node js/bench/scale.js ls --dir DIR --path FOLDER
//   node js/bench/scale.js ls-r --dir DIR
//   node js/bench/scale.js import --dir DIR --from LOCAL
//
// `import` copies a local folder into the drive as a JavaScript program would with Hyperdrive's
// batch API (a batch per 10,000 files; Hyperdrive 13 has no folder import of its own): walk,
// read each file, put it.
//
// The layout is the Rust side's: file i is /dXXXXX/fIIIIIII.txt, 100 files a folder, its content
// `file i\n`.

const path = require('path')
const fs = require('fs')
const { parseArgs, printLine } = require(path.join(__dirname, '..', 'interop', 'common.js'))
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const PER_FOLDER = 100
const BATCH = 10000

function filePath(i) {
  return `/d${String(Math.floor(i / PER_FOLDER)).padStart(5, '0')}/f${String(i).padStart(7, '0')}.txt`
}

async function main() {
  const [op, ...rest] = process.argv.slice(2)
  const args = parseArgs(rest, { numbers: ['files'] })
  if (!args.dir) throw new Error('--dir is required')
  const store = new Corestore(args.dir)
  const drive = new Hyperdrive(store)
  await drive.ready()
  let out
  if (op === 'build') {
    const n = args.files
    for (let start = 0; start < n; start += BATCH) {
      const b = drive.batch()
      for (let i = start; i < Math.min(n, start + BATCH); i++) {
        await b.put(filePath(i), Buffer.from(`file ${i}\n`))
      }
      await b.flush()
    }
    out = String(drive.version)
  } else if (op === 'import') {
    if (!args.from) throw new Error('--from is required')
    let n = 0
    let b = drive.batch()
    const walk = async (dir, rel) => {
      for (const d of await fs.promises.readdir(dir, { withFileTypes: true })) {
        const p = path.join(dir, d.name)
        if (d.isDirectory()) {
          await walk(p, `${rel}/${d.name}`)
        } else if (d.isFile()) {
          await b.put(`${rel}/${d.name}`, await fs.promises.readFile(p))
          if (++n % BATCH === 0) {
            await b.flush()
            b = drive.batch()
          }
        }
      }
    }
    await walk(args.from, '')
    await b.flush()
    out = String(n)
  } else if (op === 'stat') {
    const e = await drive.entry(args.path)
    if (!e) throw new Error(`no such file: ${args.path}`)
    out = JSON.stringify({ seq: e.seq, size: e.value.blob.byteLength })
  } else if (op === 'cat') {
    const data = await drive.get(args.path)
    if (!data) throw new Error(`no such file: ${args.path}`)
    out = data.toString().trimEnd()
  } else if (op === 'ls') {
    let n = 0
    for await (const name of drive.readdir(args.path)) n += name.length > 0 ? 1 : 0
    out = String(n)
  } else if (op === 'ls-r') {
    let n = 0
    for await (const e of drive.list('/', { recursive: true })) n += e.key ? 1 : 0
    out = String(n)
  } else {
    throw new Error(`unknown op ${JSON.stringify(op)}`)
  }
  await drive.close()
  await store.close()
  await printLine(out)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
