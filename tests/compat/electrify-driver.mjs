// Drives the real electric-sql@0.12.1 client stack (electrify() over better-sqlite3) against an
// electricctl server, for tests/compat/test_npm_client.py. Environment: ELECTRIC_URL, ELECTRIC_TOKEN,
// SQLITE_FILE (':memory:' or a path, so a restarted driver resumes from its stored position).
// Reads one command per line on stdin and answers with one JSON line on stdout:
//   {"cmd":"subscribe","table":"items","where":"this.n > 1"}  -> {"ok":true,"key":...} once synced
//   {"cmd":"sync","table":"projects","where":{...},"include":{...}} -> {"ok":true,"key":...} once synced:
//                                           the DAL's db.<table>.sync(), include trees and all
//   {"cmd":"rows","table":"items"}       -> {"ok":true,"rows":[...]}
//   {"cmd":"query","sql":"..."}         -> {"ok":true,"rows":[...]} a read of the local database
//   {"cmd":"meta"}                       -> {"ok":true,"meta":{...}} (lsn, subscriptions)
//   {"cmd":"exec","sql":"...","args":[]} -> {"ok":true} a local write, as an app makes it
//                                           ("fk":false: with SQLite's foreign-key checks off)
//   {"cmd":"oplog"}                      -> {"ok":true,"n":<rows in _electric_oplog>} (0: all echoed)
//   {"cmd":"exit"}
import readline from 'node:readline'
import Database from 'better-sqlite3'
import * as z from 'zod'
import { electrify } from 'electric-sql/node'
import { DbSchema, Relation } from 'electric-sql/client/model'
import { makeMigration, parseMetadata, sqliteBuilder } from 'electric-sql/migrators/builder'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

// the DAL's description of the test tables (`electric-sql generate` writes it too): `items` unless
// ELECTRIC_TABLES (JSON: {table: [[column, sqlite type, pg type, field type], ...]}, primary key first)
// says otherwise
const ITEMS = [
  ['id', 'TEXT', 'text', 'TEXT'], ['n', 'INTEGER', 'int4', 'INT4'], ['flag', 'INTEGER', 'bool', 'BOOL'],
  ['data', 'BLOB', 'bytea', 'BYTEA'], ['at', 'TEXT', 'timestamptz', 'TIMESTAMPTZ'],
  ['doc', 'TEXT_JSON', 'jsonb', 'JSONB'], ['price', 'REAL', 'float8', 'FLOAT8'],
]
const TABLES = process.env.ELECTRIC_TABLES ? JSON.parse(process.env.ELECTRIC_TABLES) : { items: ITEMS }
// the app's bundled migrations: ELECTRIC_MIGRATIONS holds the metadata.json of each version from
// the server's /api/migrations zip, as `electric-sql generate` bundles them (tests/compat/conftest.py)
const migrations = JSON.parse(process.env.ELECTRIC_MIGRATIONS || '[]').map((m) => makeMigration(parseMetadata(m), sqliteBuilder))
const anyObj = z.object({ where: z.any().optional(), include: z.object({}).passthrough().optional(), select: z.object({}).passthrough().optional(), data: z.any().optional() })
// ELECTRIC_RELATIONS (JSON: {table: [[relationField, fromField, toField, relatedTable, relationName], ...]})
// describes the foreign keys as `electric-sql generate` would, for sync({include})
const RELATIONS = JSON.parse(process.env.ELECTRIC_RELATIONS || '{}')
const tables = Object.fromEntries(Object.entries(TABLES).map(([name, columns]) => [name, {
  fields: new Map(columns.map(([n, , , f]) => [n, f])),
  relations: (RELATIONS[name] || []).map((r) => new Relation(...r)),
  modelSchema: z.object({}).passthrough(),
  createSchema: anyObj, createManySchema: anyObj, findUniqueSchema: anyObj, findSchema: anyObj, updateSchema: anyObj,
  updateManySchema: anyObj, upsertSchema: anyObj, deleteSchema: anyObj, deleteManySchema: anyObj }]))
const schema = new DbSchema(tables, migrations, [])

const conn = new Database(process.env.SQLITE_FILE || ':memory:')
const electric = await electrify(conn, schema, { url: process.env.ELECTRIC_URL, debug: false })
await electric.connect(process.env.ELECTRIC_TOKEN)
out({ ok: true, ready: true })

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  try {
    if (cmd.cmd === 'subscribe') {
      const shape = await electric.satellite.subscribe([{ tablename: cmd.table, ...(cmd.where ? { where: cmd.where } : {}) }])
      await shape.synced
      out({ ok: true, key: shape.key })
    } else if (cmd.cmd === 'sync') {
      const shape = await electric.db[cmd.table].sync({ ...(cmd.where ? { where: cmd.where } : {}), ...(cmd.include ? { include: cmd.include } : {}) })
      await shape.synced
      out({ ok: true, key: shape.key })
    } else if (cmd.cmd === 'rows') {
      const key = TABLES[cmd.table] ? TABLES[cmd.table][0][0] : 'id'
      const rows = await electric.db.rawQuery({ sql: `SELECT * FROM "${cmd.table}" ORDER BY "${key}"` })
      out({ ok: true, rows: rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v instanceof Uint8Array ? Array.from(v) : v]))) })
    } else if (cmd.cmd === 'query') {
      out({ ok: true, rows: await electric.db.rawQuery({ sql: cmd.sql, args: cmd.args ?? [] }) })
    } else if (cmd.cmd === 'meta') {
      const meta = await electric.db.rawQuery({ sql: "SELECT key, value FROM _electric_meta WHERE key IN ('lsn', 'subscriptions', 'clientId')" })
      out({ ok: true, meta: Object.fromEntries(meta.map((m) => [m.key, m.value instanceof Uint8Array ? Buffer.from(m.value).toString() : m.value])) })
    } else if (cmd.cmd === 'exec') {
      // fk: false runs the write with SQLite's foreign-key checks off, as a client that bypasses
      // them could (the server must refuse what it may not write whatever the client checked)
      if (cmd.fk === false) await electric.adapter.run({ sql: 'PRAGMA foreign_keys = OFF' })
      try {
        await electric.adapter.run({ sql: cmd.sql, args: cmd.args ?? [] })
      } finally {
        if (cmd.fk === false) await electric.adapter.run({ sql: 'PRAGMA foreign_keys = ON' })
      }
      electric.notifier.potentiallyChanged()
      out({ ok: true })
    } else if (cmd.cmd === 'oplog') {
      const rows = await electric.db.rawQuery({ sql: 'SELECT count(*) AS n FROM _electric_oplog' })
      out({ ok: true, n: rows[0].n })
    } else if (cmd.cmd === 'exit') {
      await electric.close()
      out({ ok: true })
      process.exit(0)
    } else {
      out({ ok: false, error: `unknown command ${cmd.cmd}` })
    }
  } catch (e) {
    out({ ok: false, error: String(e?.message ?? e) })
  }
}
