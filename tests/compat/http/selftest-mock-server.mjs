// For selftest_mock.py only (not part of the suite): runs ../shared/compat/http-shape/mock-electric-server.mjs
// (path in MOCK_SERVER; the mock stays outside this repo) and, beside each mock, a stand-in for
// POST /v1/transactions that commits the mutations on that mock and answers {"txid": <its xid>}, so the
// TanStack write path of shape-driver.mjs can be exercised without electricctl.
// JSON lines on stdin/stdout:
//   {"cmd":"start","name":"a","opts":{...createMockServer options}} -> {"ok":true,"url":".../v1/shape","writeUrl":".../v1/transactions"}
//   {"cmd":"txn","name":"a","changes":[{"op":"update","id":"1","set":{"title":"x"}}]} -> {"ok":true,"lsn":..,"xid":..}
//   {"cmd":"seen","name":"a"} -> {"ok":true,"requests":[{method,path,query,authorization}],"writes":[{authorization,body,status}]}
//   {"cmd":"exit"}
import http from 'node:http'
import readline from 'node:readline'
import { pathToFileURL } from 'node:url'

// every request the mock receives, with its Authorization header (the mock itself keeps the query only)
const seenBy = new Map()
let current = null
const createServer = http.createServer
http.createServer = (handler) => {
  const seen = current
  return createServer((req, res) => {
    seen?.push({ method: req.method, path: req.url.split('?')[0], query: Object.fromEntries(new URL(req.url, 'http://x').searchParams), authorization: req.headers.authorization ?? null })
    handler(req, res)
  })
}
const { createMockServer } = await import(pathToFileURL(process.env.MOCK_SERVER).href)

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const mocks = new Map()
const text = (v) => (v === null || v === undefined ? null : typeof v === 'object' ? JSON.stringify(v) : String(v))

function writeServer(mock, writes) {
  const server = createServer((req, res) => {
    let raw = ''
    req.on('data', (d) => (raw += d))
    req.on('end', () => {
      const rec = { authorization: req.headers.authorization ?? null, body: raw }
      writes.push(rec)
      const answer = (status, body) => {
        rec.status = status
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      if (req.method !== 'POST' || req.url !== '/v1/transactions') return answer(404, { message: 'not found' })
      if (!req.headers.authorization?.startsWith('Bearer ')) return answer(401, { message: 'no bearer token' })
      const { mutations } = JSON.parse(raw)
      const changes = []
      for (const m of mutations) {
        if (m.table !== 'items') return answer(400, { message: 'unknown table', table: m.table, operation: m.type })
        if (m.modified?.title === 'forbidden') {
          return answer(403, { message: 'permission denied', table: m.table, operation: m.type, rule: 'selftest: no forbidden titles' })
        }
        if (m.type === 'insert') {
          const row = { id: null, title: null, done: null, big: null }
          for (const [k, v] of Object.entries(m.modified)) row[k] = text(v)
          changes.push({ op: 'insert', row })
        } else if (m.type === 'update') {
          const set = {}
          for (const [k, v] of Object.entries(m.modified)) if (k !== 'id' && text(v) !== text(m.original?.[k])) set[k] = text(v)
          changes.push({ op: 'update', id: text(m.modified.id), set })
        } else {
          changes.push({ op: 'delete', id: text(m.original?.id ?? m.modified?.id) })
        }
      }
      const { xid } = mock.appendTxn(changes)
      // a txid the stream never shows: TanStack must time out waiting for it
      const lost = mutations.some((m) => m.modified?.title === 'lost-txid')
      answer(200, { txid: lost ? xid + 100000 : xid })
    })
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  try {
    if (cmd.cmd === 'start') {
      const seen = []
      current = seen
      const mock = createMockServer(cmd.opts ?? {})
      current = null
      const url = await mock.listen()
      const writes = []
      const ws = await writeServer(mock, writes)
      mocks.set(cmd.name, { mock, seen, writes, ws })
      out({ ok: true, url, writeUrl: `http://127.0.0.1:${ws.address().port}/v1/transactions` })
    } else if (cmd.cmd === 'txn') {
      out({ ok: true, ...mocks.get(cmd.name).mock.appendTxn(cmd.changes) })
    } else if (cmd.cmd === 'seen') {
      const m = mocks.get(cmd.name)
      out({ ok: true, requests: m.seen, writes: m.writes })
    } else if (cmd.cmd === 'exit') {
      for (const m of mocks.values()) {
        m.ws.closeAllConnections?.()
        m.ws.close()
        await m.mock.close()
      }
      out({ ok: true })
      process.exit(0)
    } else {
      out({ ok: false, error: `unknown command ${cmd.cmd}` })
    }
  } catch (e) {
    out({ ok: false, error: String(e?.stack ?? e) })
  }
}
process.exit(0)
