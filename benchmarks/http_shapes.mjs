// The npm client @electric-sql/client (ShapeStream + Shape, as an app uses them) for benchmarks/http_shapes.py.
//
//   node benchmarks/http_shapes.mjs [node_modules dir]   (default: tests/compat/http/node_modules)
//
// One JSON command per line on stdin, one JSON answer per line on stdout ({"ok":true,...} or
// {"ok":false,"error":...}); commands run one at a time. Times are wall-clock milliseconds since the
// epoch (performance.timeOrigin + performance.now(): the machine's clock, as Python's time.time(),
// with sub-millisecond resolution), or durations in ms.
//
//   {"cmd":"streams","url":..,"params":{"table":"fanout"},"token":..,"count":250,"concurrency":50,
//    "watchKey":"\"public\".\"fanout\"/\"1\"","watchColumn":"v","timeout":120000}
//     -> starts `count` ShapeStreams, each with a Shape, `concurrency` at a time (the next starts when
//        one reached its first up-to-date); answers once all are up to date: {"ok":true,"ms":..}.
//        Each Shape's subscriber records, for every new value of watchColumn in the row watchKey,
//        when the Shape notified it (`seen`) and when the fetch of the response that carried it
//        resolved (`response`: its headers were in).
//   {"cmd":"inflight","timeout":..} -> once every stream has a request in flight (its live long
//        poll): {"ok":true,"inflight":n}
//   {"cmd":"arrivals","value":7,"timeout":..} -> waits until every stream saw value 7 (or the
//        timeout): {"ok":true,"seen":[ms|null,...],"response":[ms|null,...]}
//   {"cmd":"status"} -> {"ok":true,"streams":n,"upToDate":n,"inflight":n,"requests":n,"errors":n,"lastError":..}
//   {"cmd":"fetch","url":..,"params":..,"token":..,"timeout":..} -> one ShapeStream + Shape from
//        construction to the Shape's first value (its first up-to-date, every row parsed and in
//        its Map): {"ok":true,"ms":..,"rows":n,"requests":n,"schemas":[electric-schema of each response],
//        "sample":{the row of `sampleKey`, as the Shape holds it}}; then closed.
//   {"cmd":"exit"}
import readline from 'node:readline'
import { readFileSync } from 'node:fs'
import { resolve, dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const modules = resolve(process.argv[2] ?? join(here, '..', 'tests', 'compat', 'http', 'node_modules'))
// what `import '@electric-sql/client'` loads in node: the package's "import" export
const pkgDir = join(modules, '@electric-sql', 'client')
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'))
const entry = pkg.exports['.'].import.default
const { ShapeStream, Shape } = await import(pathToFileURL(join(pkgDir, entry)).href)

for (const level of ['log', 'info', 'debug', 'warn']) console[level] = (...a) => console.error(...a)
const out = (obj) =>
  process.stdout.write(JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n')
const wall = () => performance.timeOrigin + performance.now()
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function until(predicate, timeout, what) {
  const deadline = performance.now() + timeout
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`)
    await sleep(5)
  }
}

const headers = (token) => (token ? { Authorization: `Bearer ${token}` } : {})

// ---- many streams on one shape ------------------------------------------------------------------
const streams = []
const arrivals = new Map() // value -> {seen: Float64Array, response: Float64Array}
let errors = 0
let lastError = null

function arrivalsOf(value) {
  let a = arrivals.get(value)
  if (!a) {
    a = { seen: new Float64Array(streams.length).fill(NaN), response: new Float64Array(streams.length).fill(NaN) }
    arrivals.set(value, a)
  }
  return a
}

function startOne(cmd, index) {
  const s = { index, inflight: 0, requests: 0, responseAt: NaN, last: undefined, upToDate: false }
  const fetchClient = async (...args) => {
    s.inflight++
    s.requests++
    try {
      const res = await fetch(...args)
      s.responseAt = wall()
      return res
    } finally {
      s.inflight--
    }
  }
  s.stream = new ShapeStream({
    url: cmd.url,
    params: cmd.params,
    headers: headers(cmd.token),
    fetchClient,
    onError: (e) => {
      errors++
      lastError = `${e?.name ?? 'Error'}: ${String(e?.message ?? e).slice(0, 300)}`
      return {} // retry, as an app would
    },
  })
  s.shape = new Shape(s.stream)
  const first = new Promise((resolveFirst) => {
    s.shape.subscribe(({ value }) => {
      const now = wall()
      if (!s.upToDate) {
        s.upToDate = true
        s.last = value.get(cmd.watchKey)?.[cmd.watchColumn]
        resolveFirst()
        return
      }
      const v = value.get(cmd.watchKey)?.[cmd.watchColumn]
      if (v !== undefined && v !== s.last) {
        s.last = v
        const a = arrivalsOf(Number(v))
        a.seen[index] = now
        a.response[index] = s.responseAt
      }
    })
  })
  streams.push(s)
  return first
}

async function startStreams(cmd) {
  const t0 = performance.now()
  const base = streams.length
  let next = 0
  const worker = async () => {
    while (next < cmd.count) {
      const i = next++
      await startOne(cmd, base + i)
    }
  }
  await Promise.race([
    Promise.all(Array.from({ length: Math.min(cmd.concurrency ?? 50, cmd.count) }, worker)),
    sleep(cmd.timeout ?? 120000).then(() => {
      throw new Error(`timed out: ${streams.filter((s) => s.upToDate).length} of ${cmd.count} streams up to date`)
    }),
  ])
  return { ok: true, ms: performance.now() - t0 }
}

const inflight = () => streams.reduce((n, s) => n + (s.inflight > 0 ? 1 : 0), 0)

async function waitArrivals(cmd) {
  const a = arrivalsOf(cmd.value)
  const all = () => a.seen.every((t) => !Number.isNaN(t))
  try {
    await until(all, cmd.timeout ?? 60000, `every stream to see ${cmd.value}`)
  } catch {
    // answer with what arrived; the caller counts the missing ones
  }
  const list = (arr) => Array.from(arr, (t) => (Number.isNaN(t) ? null : t))
  return { ok: true, seen: list(a.seen), response: list(a.response) }
}

// ---- one initial fetch --------------------------------------------------------------------------
async function fetchOnce(cmd) {
  let requests = 0
  const schemas = [] // the electric-schema header of each response (the client keeps the first)
  const aborter = new AbortController()
  let failed
  const failure = new Promise((_r, reject) => (failed = reject))
  const t0 = performance.now()
  const stream = new ShapeStream({
    url: cmd.url,
    params: cmd.params,
    headers: headers(cmd.token),
    signal: aborter.signal,
    fetchClient: async (...args) => {
      requests++
      const res = await fetch(...args)
      schemas.push(res.headers.get('electric-schema'))
      return res
    },
    onError: (e) => failed(e), // no retry: a failure is reported
  })
  const shape = new Shape(stream)
  let value
  try {
    value = await Promise.race([
      shape.value,
      failure,
      sleep(cmd.timeout ?? 600000).then(() => {
        throw new Error(`timed out after ${cmd.timeout ?? 600000} ms`)
      }),
    ])
  } finally {
    aborter.abort()
    shape.unsubscribeAll()
  }
  const ms = performance.now() - t0
  const sample = cmd.sampleKey ? (value.get(cmd.sampleKey) ?? null) : null
  return { ok: true, ms, rows: value.size, requests, schemas, sample }
}

// ---- the command loop ---------------------------------------------------------------------------
async function run(cmd) {
  switch (cmd.cmd) {
    case 'streams':
      return startStreams(cmd)
    case 'inflight':
      await until(() => inflight() === streams.length, cmd.timeout ?? 30000, 'a request in flight on every stream')
      return { ok: true, inflight: inflight() }
    case 'arrivals':
      return waitArrivals(cmd)
    case 'status':
      return {
        ok: true,
        streams: streams.length,
        upToDate: streams.filter((s) => s.upToDate).length,
        inflight: inflight(),
        requests: streams.reduce((n, s) => n + s.requests, 0),
        errors,
        lastError,
      }
    case 'fetch':
      return fetchOnce(cmd)
    case 'exit':
      return { ok: true, exit: true }
    default:
      return { ok: false, error: `unknown command ${cmd.cmd}` }
  }
}

out({ ok: true, ready: true, version: pkg.version })
const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  let answer
  try {
    answer = await run(JSON.parse(line))
  } catch (e) {
    answer = { ok: false, error: `${e?.name ?? 'Error'}: ${e?.message ?? e}` }
  }
  out(answer)
  if (answer.exit) process.exit(0)
}
process.exit(0)
