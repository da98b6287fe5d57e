// Download a torrent with a stock WebTorrent client (npm `webtorrent`), over
// TCP only, from the seeders named in the magnet link (`x.pe=host:port`).
//
//   node download.mjs MAGNET OUTDIR [--peer HOST:PORT]... [--timeout SECONDS]
//
// Everything that would reach beyond the given peers is off: uTP (slow on
// loopback), the DHT, trackers, local service discovery (multicast), web
// seeds, UPnP and NAT-PMP.  Prints progress lines; when the download is
// complete it prints "done ..." and then one "file <size> <path>" line per file
// written under OUTDIR (WebTorrent writes BEP 47 pad files too), and exits 0.
// On an error, or if the download is not complete within the timeout (120 s
// by default), it prints "error: ..." and exits 1 (2 for a usage error).
import fs from 'node:fs'
import path from 'node:path'
import process from 'node:process'

import WebTorrent from 'webtorrent'

function usage (message) {
  if (message) console.error(`error: ${message}`)
  console.error('usage: node download.mjs MAGNET OUTDIR [--peer HOST:PORT]... [--timeout SECONDS]')
  process.exit(2)
}

const positional = []
const peers = []
let timeoutSeconds = 120
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i]
  if (arg === '--peer') {
    if (i + 1 >= argv.length) usage('--peer needs HOST:PORT')
    peers.push(argv[++i])
  } else if (arg === '--timeout') {
    timeoutSeconds = Number(argv[++i])
    if (!(timeoutSeconds > 0)) usage('--timeout needs a positive number of seconds')
  } else if (arg.startsWith('--')) {
    usage(`unknown option ${arg}`)
  } else {
    positional.push(arg)
  }
}
if (positional.length !== 2) usage()
const [magnet, outDir] = positional
if (!magnet.startsWith('magnet:')) usage('the first argument must be a magnet link')
fs.mkdirSync(outDir, { recursive: true })

const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(2)
const log = (line) => console.log(`[${elapsed()} s] ${line}`)

const client = new WebTorrent({
  utp: false,
  dht: false,
  tracker: false,
  lsd: false,
  utPex: false,
  webSeeds: false,
  natUpnp: false,
  natPmp: false
})

let finished = false
function finish (code, message) {
  if (finished) return
  finished = true
  clearTimeout(timer)
  clearInterval(ticker)
  if (message) (code === 0 ? console.log : console.error)(message)
  // Destroying the client closes the files, so they are complete on disk when
  // the process exits.
  client.destroy(() => {
    if (code === 0) listFiles(outDir)
    process.exit(code)
  })
  // Bounded even if destroy never calls back.
  setTimeout(() => process.exit(code), 10000).unref()
}

function listFiles (root) {
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(full)
      else if (entry.isFile()) console.log(`file ${fs.statSync(full).size} ${path.relative(root, full)}`)
    }
  }
  walk(root)
}

const timer = setTimeout(() => {
  const t = client.torrents[0]
  const have = t ? `${t.downloaded} of ${t.length ?? '?'} bytes, ${t.numPeers} peer(s)` : 'no torrent'
  finish(1, `error: download not complete after ${timeoutSeconds} s (${have})`)
}, timeoutSeconds * 1000)

client.on('error', (err) => finish(1, `error: client: ${err.message || err}`))

log(`WebTorrent ${WebTorrent.VERSION}, node ${process.version}, TCP only`)
const torrent = client.add(magnet, { path: outDir })
for (const peer of peers) torrent.addPeer(peer)

torrent.on('error', (err) => finish(1, `error: torrent: ${err.message || err}`))
torrent.on('warning', (err) => log(`warning: ${err.message || err}`))
torrent.on('wire', (wire, addr) => log(`connected to ${addr} (${wire.type})`))
torrent.on('metadata', () => {
  log(`metadata: "${torrent.name}", ${torrent.files.length} file(s), ${torrent.length} bytes, ` +
      `${torrent.pieces.length} piece(s) of ${torrent.pieceLength} bytes, infohash ${torrent.infoHash}`)
})
torrent.on('done', () => {
  const seconds = (Date.now() - started) / 1000
  const mbps = torrent.length / 1e6 / seconds
  finish(0, `done: ${torrent.length} bytes in ${seconds.toFixed(2)} s (${mbps.toFixed(1)} MB/s)`)
})

const ticker = setInterval(() => {
  if (!torrent.ready) {
    log(`waiting for metadata (${torrent.numPeers} peer(s))`)
    return
  }
  log(`progress ${(torrent.progress * 100).toFixed(1)}%: ${torrent.downloaded} of ${torrent.length} bytes, ` +
      `${(torrent.downloadSpeed / 1e6).toFixed(1)} MB/s, ${torrent.numPeers} peer(s)`)
}, 1000)
