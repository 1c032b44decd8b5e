// Drives the real @electric-sql/client (ShapeStream + Shape) and a TanStack DB Electric collection
// (@tanstack/electric-db-collection) against a server speaking Electric's HTTP Shape API, for the
// tests in tests/compat (ShapeDriver in tests/compat/http/driver.py). Versions: package-lock.json.
//
// One command per line on stdin, one JSON answer per line on stdout: {"ok":true,...} or
// {"ok":false,"error":"...",...}. Every answer echoes the command's "n" (when it has one), so a
// caller can drop the late answer of a command it stopped waiting for. Commands run one at a
// time; a command that waits gives up after its "timeout" (ms, default 20000) and answers
// {"ok":false,"error":"timed out ..."}. Logs (the clients' warnings included) go to stderr.
//
// Values: rows are the clients' parsed values made JSON-safe: a bigint (int8) is written as an
// exact JSON integer, NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity", a Date as
// its ISO string. In commands, {"$bigint":"123"} is read as the bigint 123n (e.g. an int8 key).
//
// ShapeStream + Shape ("stream" ids):
//   {"cmd":"stream","id":"s1","url":"http://127.0.0.1:PORT/v1/shape",
//    "params":{"table":"items","where":"n > $1","params":{"1":"5"},"columns":["id","n"],"replica":"full","log":"changes_only"},
//    "token":"<jwt>","headers":{...},"offset":"-1"|"now"|"<lsn>_<op>","handle":"...",
//    "liveSse":false,"subscribe":true,"retry":false,"backoff":{"initialDelay":100,"maxDelay":1000},
//    "liveRequestTimeoutMs":45000}
//     -> {"ok":true,"offset":..,"handle":..,"rows":n} once the first up-to-date arrived, or
//        {"ok":false,"error":..,"status":..,"body":..} with the stream's error. params.log is the
//        stream's `log` option (the client sends it as log=). "retry": onError returns {} (the client
//        retries, with the current token) instead of stopping the stream.
//   {"cmd":"rows","id":"s1"}          -> {"ok":true,"rows":{"<electric key>":{...row}},"upToDate":bool,"offset":..,"handle":..}
//   {"cmd":"events","id":"s1","since":{"requests":0,"messages":0}}
//     -> {"ok":true,"events":{"requests":[{method,url,query,auth,status,offset,handle,cursor,schema (the header),
//        upToDate,cacheControl,error}...],"controls":[...],"counts":{"up-to-date":n,"must-refetch":n,...},
//        "messages":[change messages as received],"errors":[{name,message,status,body,url}],
//        "offset":..,"handle":..,"isUpToDate":..,"error":..,"warnings":[...]}}
//   {"cmd":"snapshot","id":"s1","subset":{"where":"id = $1","params":{"1":"2"},"limit":10,"offset":0,"orderBy":"id"},
//    "method":"GET"|"POST","via":"request"|"fetch"|"shape"}
//     -> {"ok":true,"metadata":{...},"data":[{key,value,headers}],"responseOffset":..,"responseHandle":..}
//        via defaults to "request" (stream.requestSnapshot: the rows join the Shape; changes_only
//        streams only) when the stream's log mode is changes_only, else "fetch" (stream.fetchSnapshot:
//        the rows are only returned); "shape" is Shape.requestSnapshot (re-run after a must-refetch).
//   {"cmd":"token","id":"s1"|"c1","token":"<jwt>"} -> the bearer token of later requests
//
// TanStack DB collection ("collection" ids; eager sync unless "syncMode" says otherwise):
//   {"cmd":"collection","id":"c1","url":".../v1/shape","params":{"table":"items"},"token":"<jwt>",
//    "writeUrl":"http://127.0.0.1:PORT/v1/transactions","table":"items","key":"id",
//    "updateBody":"full"|"changes","txidTimeout":10000,"syncMode":"eager","backoff":{...}}
//     -> {"ok":true,"size":n,"status":"ready"} once preload() resolved, or the error. onInsert,
//        onUpdate and onDelete POST {"mutations":[{"type","table","modified","original"}]} with the
//        bearer token to writeUrl and return {txid} from the JSON answer (TanStack then awaits that
//        txid in the stream); a non-2xx answer throws with its JSON body. "updateBody":"changes"
//        sends an update's `modified` as the key plus the changed columns only.
//   {"cmd":"insert","id":"c1","row":{...}} or "rows":[{...},...] (one transaction)
//   {"cmd":"update","id":"c1","key":1,"changes":{...}}
//   {"cmd":"delete","id":"c1","key":1} or "keys":[...]
//     -> {"ok":true,"tx":"t3","txid":<from the server>} once tx.isPersisted resolved (the server
//        committed and the txid came back in the stream), or {"ok":false,"error":..,"status":..,"body":..}
//        (TanStack has rolled the optimistic change back). "wait":false answers at once with "tx".
//   {"cmd":"tx","id":"c1","tx":"t3","wait":true} -> the state of a transaction (waits for it to settle)
//   {"cmd":"awaitTxId","id":"c1","txid":1234,"within":5000} -> {"ok":true} once the collection saw that
//        txid (in a change's headers.txids, or visible in a snapshot-end), else the timeout error
//   {"cmd":"rows","id":"c1","virtual":false} -> {"ok":true,"rows":[...],"status":..} ($synced/$origin with "virtual")
//   {"cmd":"events","id":"c1"} -> {"ok":true,"events":{"requests":[...],"writes":[{body,status,response}],"errors":[...]}}
//
// Both:
//   {"cmd":"close","id":"s1"} -> stops that stream or collection
//   {"cmd":"ping"}           -> {"ok":true}
//   {"cmd":"exit"}           -> closes everything, answers, exits 0
import readline from 'node:readline'
import { readFileSync } from 'node:fs'
import { ShapeStream, Shape, FetchError, isChangeMessage, isControlMessage } from '@electric-sql/client'
import { createCollection } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'

// stdout carries the answers only: anything a library prints goes to stderr
const log = (...a) => process.stderr.write(a.map((x) => (typeof x === 'string' ? x : safeJson(x))).join(' ') + '\n')
const warnings = []
for (const level of ['log', 'info', 'debug']) console[level] = (...a) => console.error(...a)
const origWarn = console.warn
console.warn = (...a) => {
  warnings.push(String(a[0]).slice(0, 500))
  origWarn(...a)
}
process.on('unhandledRejection', (e) => log('[shape-driver] unhandled rejection:', String(e?.stack ?? e)))

// ---- JSON in and out -------------------------------------------------------------------------
const BIG = '\u0000bigint:'
function safeJson(value) {
  const text = JSON.stringify(value, (_k, v) => {
    if (typeof v === 'bigint') return BIG + v.toString()
    if (typeof v === 'number' && !Number.isFinite(v)) return String(v)
    if (v instanceof Map) return Object.fromEntries(v)
    if (v instanceof Set) return [...v]
    if (v instanceof Uint8Array) return Array.from(v)
    return v
  })
  return text === undefined ? 'null' : text.replace(/"\\u0000bigint:(-?\d+)"/g, '$1')
}
const revive = (_k, v) =>
  v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 1 && typeof v.$bigint === 'string'
    ? BigInt(v.$bigint)
    : v
const out = (obj) => process.stdout.write(safeJson(obj) + '\n')

function errorInfo(e) {
  if (!e) return null
  const info = { name: e.name ?? 'Error', message: String(e.message ?? e).slice(0, 2000) }
  if (e instanceof FetchError || typeof e.status === 'number') {
    info.status = e.status
    info.body = e.json ?? e.body ?? e.text ?? null
    if (e.url) info.url = e.url
    if (e.headers && typeof e.headers === 'object') info.headers = e.headers
  }
  if (e.cause && e.cause !== e) info.cause = String(e.cause?.message ?? e.cause)
  return info
}

// "fetch failed (ECONNREFUSED)": undici hides the reason in the cause (an AggregateError for a refused
// connection on both IPv4 and IPv6)
const networkError = (e) => {
  const cause = e?.cause
  const why = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message
  return why ? `${e?.message ?? e} (${why})` : String(e?.message ?? e)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_r, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// ---- recording the HTTP requests a client makes ------------------------------------------------
// The fetchClient the clients get: it adds the bearer token (the entry's current one, so "token"
// changes it for later requests) and records every attempt (retries included), with what the server
// answered (status, electric-* headers) or the network error.
function recordingFetch(entry) {
  return async (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.toString() : input.url
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined))
    if (entry.token) headers.set('authorization', `Bearer ${entry.token}`)
    const u = new URL(url)
    const rec = {
      at: Date.now(),
      method: init?.method ?? (input instanceof Request ? input.method : 'GET'),
      url,
      query: Object.fromEntries(u.searchParams),
      auth: headers.has('authorization'),
    }
    if (typeof init?.body === 'string') rec.body = init.body
    entry.requests.push(rec)
    try {
      const res = await fetch(input, { ...(init ?? {}), headers })
      rec.status = res.status
      const h = res.headers
      for (const [field, header] of [
        ['handle', 'electric-handle'],
        ['offset', 'electric-offset'],
        ['cursor', 'electric-cursor'],
        ['cacheControl', 'cache-control'],
      ]) {
        if (h.has(header)) rec[field] = h.get(header)
      }
      if (h.has('electric-schema')) rec.schema = h.get('electric-schema')
      rec.upToDate = h.has('electric-up-to-date')
      return res
    } catch (e) {
      rec.error = networkError(e)
      throw e
    }
  }
}

function backoffOptions(cmd) {
  // faster than the client's defaults (1 s doubling to 32 s), so a test sees a restarted server soon
  return { initialDelay: 100, maxDelay: 1000, multiplier: 2, ...(cmd.backoff ?? {}) }
}

// ---- ShapeStream + Shape -----------------------------------------------------------------------
const entries = new Map()

function need(cmd, kind) {
  const entry = entries.get(cmd.id)
  if (!entry) throw new Error(`no ${kind ?? 'stream or collection'} with id ${JSON.stringify(cmd.id)}`)
  if (kind && entry.kind !== kind) throw new Error(`${cmd.id} is a ${entry.kind}, not a ${kind}`)
  return entry
}

async function startStream(cmd) {
  if (entries.has(cmd.id)) throw new Error(`id ${cmd.id} is in use`)
  const { log: logMode, ...params } = cmd.params ?? {}
  const entry = {
    kind: 'stream',
    id: cmd.id,
    token: cmd.token,
    requests: [],
    messages: [],
    controls: [],
    counts: {},
    errors: [],
    aborter: new AbortController(),
  }
  let settle
  const firstUpToDate = new Promise((resolve, reject) => {
    settle = { resolve, reject }
  })
  const onError = (e) => {
    entry.errors.push(errorInfo(e))
    log(`[shape-driver] ${cmd.id}: ${e?.name}: ${String(e?.message ?? e).slice(0, 500)}`)
    if (!cmd.retry) settle.reject(e)
    return cmd.retry ? {} : undefined
  }
  const stream = new ShapeStream({
    url: cmd.url,
    params,
    ...(logMode ? { log: logMode } : {}),
    ...(cmd.offset !== undefined ? { offset: cmd.offset } : {}),
    ...(cmd.handle !== undefined ? { handle: cmd.handle } : {}),
    ...(cmd.liveSse ? { liveSse: true } : {}),
    ...(cmd.subscribe === false ? { subscribe: false } : {}),
    ...(cmd.liveRequestTimeoutMs !== undefined ? { liveRequestTimeoutMs: cmd.liveRequestTimeoutMs } : {}),
    ...(cmd.subsetMethod ? { subsetMethod: cmd.subsetMethod } : {}),
    ...(cmd.headers ? { headers: cmd.headers } : {}),
    signal: entry.aborter.signal,
    fetchClient: recordingFetch(entry),
    backoffOptions: backoffOptions(cmd),
    onError,
  })
  entry.stream = stream
  entry.unsubscribe = stream.subscribe(
    (msgs) => {
      for (const m of msgs) {
        if (isChangeMessage(m)) {
          entry.messages.push(m)
        } else if (isControlMessage(m)) {
          const c = m.headers.control
          entry.controls.push(c)
          entry.counts[c] = (entry.counts[c] ?? 0) + 1
          if (c === 'up-to-date') settle.resolve()
        } else {
          entry.messages.push(m) // move-in / move-out events
        }
      }
    },
    (e) => {
      // the stream's terminal error (after onError declined to retry)
      if (!entry.errors.length || entry.errors.at(-1).message !== String(e?.message ?? e)) entry.errors.push(errorInfo(e))
      settle.reject(e)
    }
  )
  entry.shape = new Shape(stream)
  entries.set(cmd.id, entry)
  try {
    await withTimeout(firstUpToDate, cmd.timeout ?? 20000, `the first up-to-date of ${cmd.id}`)
  } catch (e) {
    return { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, ...errorFields(e) }
  }
  return { ok: true, offset: stream.lastOffset, handle: stream.shapeHandle, rows: entry.shape.currentValue.size }
}

const errorFields = (e) => {
  const info = errorInfo(e)
  const fields = {}
  if (info?.status !== undefined) fields.status = info.status
  if (info?.body !== undefined) fields.body = info.body
  if (info?.name) fields.name = info.name
  return fields
}

function since(list, n) {
  return n ? list.slice(n) : list
}

function streamEvents(entry, cmd) {
  const s = cmd.since ?? {}
  return {
    requests: since(entry.requests, s.requests),
    controls: since(entry.controls, s.controls),
    counts: entry.counts,
    messages: since(entry.messages, s.messages),
    errors: since(entry.errors, s.errors),
    offset: entry.stream.lastOffset,
    handle: entry.stream.shapeHandle,
    isUpToDate: entry.stream.isUpToDate,
    isConnected: entry.stream.isConnected(),
    lastSyncedAt: entry.stream.lastSyncedAt() ?? null,
    error: errorInfo(entry.stream.error) ?? errorInfo(entry.shape.error || null),
    warnings,
  }
}

async function snapshot(entry, cmd) {
  const sub = { ...(cmd.subset ?? {}) }
  if (sub.order_by !== undefined && sub.orderBy === undefined) {
    sub.orderBy = sub.order_by
    delete sub.order_by
  }
  if (cmd.method) sub.method = cmd.method
  const stream = entry.stream
  const via = cmd.via ?? (stream.mode === 'full' ? 'fetch' : 'request')
  const timeout = cmd.timeout ?? 20000
  try {
    if (via === 'shape') {
      await withTimeout(entry.shape.requestSnapshot(sub), timeout, 'Shape.requestSnapshot')
      return { ok: true, rows: entry.shape.currentValue.size }
    }
    if (via === 'request') {
      const r = await withTimeout(stream.requestSnapshot(sub), timeout, 'requestSnapshot')
      return { ok: true, metadata: r.metadata, data: r.data, offset: stream.lastOffset, handle: stream.shapeHandle }
    }
    if (via === 'fetch') {
      const r = await withTimeout(stream.fetchSnapshot(sub), timeout, 'fetchSnapshot')
      return { ok: true, ...r }
    }
    throw new Error(`unknown via ${via}`)
  } catch (e) {
    return { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, ...errorFields(e) }
  }
}

// ---- TanStack DB collection --------------------------------------------------------------------
class WriteError extends Error {
  constructor(status, body, message) {
    super(message)
    this.name = 'WriteError'
    this.status = status
    this.body = body
  }
}

function mutationBody(entry, transaction) {
  return {
    mutations: transaction.mutations.map((m) => {
      let modified = m.modified
      if (m.type === 'update' && entry.updateBody === 'changes') {
        modified = { [entry.key]: m.modified[entry.key], ...m.changes }
      }
      return { type: m.type, table: entry.table, modified, original: m.original }
    }),
  }
}

// What an app's backend call looks like with TanStack DB: send the transaction's mutations, get
// the Postgres txid back, and return it so that TanStack keeps the optimistic state until that
// txid arrives in the shape stream (awaitTxId).
async function persist(entry, transaction) {
  const body = mutationBody(entry, transaction)
  const write = { at: Date.now(), body }
  entry.writes.push(write)
  let res
  try {
    res = await fetch(entry.writeUrl, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(entry.token ? { authorization: `Bearer ${entry.token}` } : {}),
        ...(entry.writeHeaders ?? {}),
      },
      body: safeJson(body),
    })
  } catch (e) {
    write.error = networkError(e)
    throw new WriteError(0, null, `POST ${entry.writeUrl} failed: ${write.error}`)
  }
  const text = await res.text()
  let json = null
  try {
    json = text ? JSON.parse(text) : null
  } catch {
    json = null
  }
  write.status = res.status
  write.response = json ?? text
  if (!res.ok) {
    throw new WriteError(res.status, json ?? text, `POST ${entry.writeUrl} answered ${res.status}: ${text.slice(0, 1000)}`)
  }
  let txid = json?.txid
  if (typeof txid === 'string' && /^\d+$/.test(txid)) txid = Number(txid)
  if (Array.isArray(txid)) txid = txid.map((t) => (typeof t === 'string' ? Number(t) : t))
  const valid = (t) => typeof t === 'number' && Number.isInteger(t)
  if (!(Array.isArray(txid) ? txid.length && txid.every(valid) : valid(txid))) {
    throw new WriteError(res.status, json ?? text, `POST ${entry.writeUrl} answered without a numeric txid: ${text.slice(0, 1000)}`)
  }
  write.txid = txid
  return { txid, timeout: entry.txidTimeout }
}

async function startCollection(cmd) {
  if (entries.has(cmd.id)) throw new Error(`id ${cmd.id} is in use`)
  const key = cmd.key ?? 'id'
  const entry = {
    kind: 'collection',
    id: cmd.id,
    token: cmd.token,
    requests: [],
    writes: [],
    errors: [],
    txs: new Map(),
    txCount: 0,
    key,
    table: cmd.table ?? cmd.params?.table,
    writeUrl: cmd.writeUrl,
    writeHeaders: cmd.writeHeaders,
    updateBody: cmd.updateBody ?? 'full',
    txidTimeout: cmd.txidTimeout ?? 10000,
  }
  let failed
  const failure = new Promise((_r, reject) => {
    failed = reject
  })
  failure.catch(() => {})
  const handler = (params) => {
    if (!entry.writeUrl) throw new Error(`collection ${cmd.id} has no writeUrl`)
    return persist(entry, params.transaction)
  }
  const collection = createCollection(
    electricCollectionOptions({
      id: cmd.id,
      ...(cmd.syncMode ? { syncMode: cmd.syncMode } : {}),
      shapeOptions: {
        url: cmd.url,
        params: cmd.params ?? {},
        ...(cmd.headers ? { headers: cmd.headers } : {}),
        fetchClient: recordingFetch(entry),
        backoffOptions: backoffOptions(cmd),
        ...(cmd.liveSse ? { liveSse: true } : {}),
        onError: (e) => {
          entry.errors.push(errorInfo(e))
          log(`[shape-driver] ${cmd.id}: ${e?.name}: ${String(e?.message ?? e).slice(0, 500)}`)
          if (!cmd.retry) failed(e)
          return cmd.retry ? {} : undefined
        },
      },
      getKey: (row) => row[key],
      onInsert: handler,
      onUpdate: handler,
      onDelete: handler,
    })
  )
  entry.collection = collection
  entries.set(cmd.id, entry)
  try {
    await withTimeout(Promise.race([collection.preload(), failure]), cmd.timeout ?? 20000, `collection ${cmd.id} to be ready`)
  } catch (e) {
    return { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, status: collection.status, ...errorFields(e) }
  }
  return { ok: true, size: collection.size, status: collection.status }
}

const VIRTUAL = ['$synced', '$origin', '$key', '$collectionId']
function collectionRows(entry, virtual) {
  return [...entry.collection.values()].map((row) => {
    const plain = { ...row }
    for (const v of VIRTUAL) if (!virtual) delete plain[v]
    if (virtual) for (const v of VIRTUAL) plain[v] = row[v]
    return plain
  })
}

function txState(entry, name) {
  const t = entry.txs.get(name)
  if (!t) throw new Error(`no transaction ${name} in ${entry.id ?? 'this collection'}`)
  const answer = { tx: name, state: t.tx.state, settled: t.settled }
  if (t.error) Object.assign(answer, { error: `${t.error.name}: ${t.error.message}`, ...errorFields(t.error) })
  if (t.write?.txid !== undefined) answer.txid = t.write.txid
  return answer
}

async function mutate(entry, cmd) {
  const c = entry.collection
  const before = entry.writes.length
  let tx
  try {
    if (cmd.cmd === 'insert') tx = c.insert(cmd.rows ?? cmd.row)
    else if (cmd.cmd === 'update') {
      tx = c.update(cmd.keys ?? cmd.key, (draft) => {
        if (Array.isArray(draft)) draft.forEach((d) => Object.assign(d, cmd.changes))
        else Object.assign(draft, cmd.changes)
      })
    } else tx = c.delete(cmd.keys ?? cmd.key)
  } catch (e) {
    // refused by TanStack before any request (duplicate key, unknown key...)
    return { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}`, ...errorFields(e), local: true }
  }
  const name = `t${++entry.txCount}`
  const t = { tx, settled: false }
  entry.txs.set(name, t)
  t.done = tx.isPersisted.promise.then(
    () => {
      t.settled = true
    },
    (e) => {
      t.settled = true
      t.error = e
    }
  )
  // the write this transaction made (mutationFn runs right away for a direct collection write)
  const findWrite = () => {
    if (!t.write && entry.writes.length > before) t.write = entry.writes[before]
  }
  if (cmd.wait === false) {
    await sleep(0)
    findWrite()
    return { ok: true, ...txState(entry, name) }
  }
  try {
    await withTimeout(t.done, cmd.timeout ?? 20000, `transaction ${name} to be persisted`)
  } catch (e) {
    findWrite()
    return { ok: false, ...txState(entry, name), error: String(e.message) }
  }
  findWrite()
  const answer = txState(entry, name)
  return { ok: !t.error, ...answer }
}

// ---- the command loop ----------------------------------------------------------------------------
async function closeEntry(id) {
  const entry = entries.get(id)
  if (!entry) return
  entries.delete(id)
  if (entry.kind === 'stream') {
    entry.aborter.abort()
    entry.unsubscribe?.()
    entry.shape.unsubscribeAll()
  } else {
    await entry.collection.cleanup().catch((e) => log(`[shape-driver] cleanup of ${id}:`, String(e)))
  }
}

async function run(cmd) {
  switch (cmd.cmd) {
    case 'ping':
      return { ok: true }
    case 'stream':
      return startStream(cmd)
    case 'collection':
      return startCollection(cmd)
    case 'rows': {
      const entry = need(cmd)
      if (entry.kind === 'stream') {
        return {
          ok: true,
          rows: Object.fromEntries(entry.shape.currentValue),
          upToDate: entry.stream.isUpToDate,
          offset: entry.stream.lastOffset,
          handle: entry.stream.shapeHandle,
        }
      }
      return { ok: true, rows: collectionRows(entry, cmd.virtual), status: entry.collection.status }
    }
    case 'events': {
      const entry = need(cmd)
      if (entry.kind === 'stream') return { ok: true, events: streamEvents(entry, cmd) }
      const s = cmd.since ?? {}
      return {
        ok: true,
        events: {
          requests: since(entry.requests, s.requests),
          writes: since(entry.writes, s.writes),
          errors: since(entry.errors, s.errors),
          status: entry.collection.status,
          warnings,
        },
      }
    }
    case 'snapshot':
      return snapshot(need(cmd, 'stream'), cmd)
    case 'token':
      need(cmd).token = cmd.token
      return { ok: true }
    case 'insert':
    case 'update':
    case 'delete':
      return mutate(need(cmd, 'collection'), cmd)
    case 'tx': {
      const entry = need(cmd, 'collection')
      const t = entry.txs.get(cmd.tx)
      if (t && cmd.wait) {
        try {
          await withTimeout(t.done, cmd.timeout ?? 20000, `transaction ${cmd.tx} to settle`)
        } catch (e) {
          return { ok: false, ...txState(entry, cmd.tx), error: String(e.message) }
        }
      }
      return { ok: true, ...txState(entry, cmd.tx) }
    }
    case 'awaitTxId': {
      const entry = need(cmd, 'collection')
      try {
        await entry.collection.utils.awaitTxId(cmd.txid, cmd.within ?? cmd.timeout ?? 5000)
      } catch (e) {
        return { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}` }
      }
      return { ok: true }
    }
    case 'close':
      await closeEntry(cmd.id)
      return { ok: true }
    case 'exit':
      for (const id of [...entries.keys()]) await closeEntry(id)
      return { ok: true, exit: true }
    default:
      return { ok: false, error: `unknown command ${cmd.cmd}` }
  }
}

const version = (pkg) => {
  try {
    return JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version
  } catch {
    return null
  }
}
out({
  ok: true,
  ready: true,
  versions: Object.fromEntries(
    ['@electric-sql/client', '@tanstack/db', '@tanstack/electric-db-collection'].map((p) => [p, version(p)])
  ),
})

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  let cmd
  let answer
  try {
    cmd = JSON.parse(line, revive)
    answer = await run(cmd)
  } catch (e) {
    answer = { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}` }
  }
  if (cmd?.n !== undefined) answer.n = cmd.n
  out(answer)
  if (answer.exit) process.exit(0)
}
for (const id of [...entries.keys()]) await closeEntry(id)
process.exit(0)
