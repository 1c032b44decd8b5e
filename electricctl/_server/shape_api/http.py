"""``GET /v1/shape``: Electric's HTTP Shape API, with our permissions.

What the clients need, and the status codes and bodies Electric uses, are from
../shared/reference/electric-http-shape-api.md (§1.2 parameters, §1.3 headers, §1.5 statuses,
§1.6 live mode and cursors, §4.4 caching). Unknown parameters are ignored, as Electric ignores them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from electricctl._auth.tokens import AuthError, Identity, verify
from electricctl._expr.parse import ExprError, bind_params
from electricctl._model.rows import RelationDef
from electricctl._model.table import TableRef
from electricctl._server.front import HttpRequest, HttpResponse, json_response
from electricctl._server.shape_api import messages, offsets
from electricctl._server.shape_api.manager import Refused, ShapeDef, ShapeInstance, ShapeManager
from electricctl._server.shape_api.offsets import BEFORE_ALL, Offset
from electricctl._shapes.compile import ShapeError, compile_where

FIRST_CHUNK_WAIT = 60.0
"""How long a first request waits for the snapshot's first chunk."""
CHUNK_BYTES = 4 << 20
"""About how much one response carries (the rest follows at the next offset)."""

EXPOSED = (
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,"
    "electric-internal-known-error,retry-after"
)
_CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z, the epoch of Electric's cursor (plug/utils.ex)
_PARAM = re.compile(r"^params\[(\d{1,3})\]$")


def cors_headers(request: HttpRequest) -> list[tuple[str, str]]:
    origin = request.headers.get("origin")
    out = [
        ("access-control-allow-origin", origin or "*"),
        ("access-control-expose-headers", EXPOSED),
        ("access-control-allow-methods", "GET, POST, HEAD, OPTIONS"),
    ]
    if origin:
        out.append(("vary", "Origin"))
    return out


def preflight(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        204,
        b"",
        [
            *cors_headers(request),
            ("access-control-allow-headers", "authorization, content-type, if-none-match, traceparent"),
            ("access-control-max-age", "86400"),
        ],
    )


def error(request: HttpRequest, status: int, message: str, errors: dict[str, list[str]] | None = None) -> HttpResponse:
    body: dict[str, Any] = {"message": message}
    if errors:
        body["errors"] = errors
    headers = [*cors_headers(request), ("cache-control", "no-store"), ("surrogate-control", "no-store")]
    if status == 401:
        headers.append(("www-authenticate", 'Bearer realm="electricctl"'))
    return json_response(status, body, headers)


def unavailable(request: HttpRequest, why: str) -> HttpResponse:
    """503 with ``retry-after`` (the clients back off at least that long, then retry)."""
    resp = error(request, 503, f"Service unavailable: {why}; retry")
    resp.headers.append(("retry-after", "1"))
    return resp


def invalid(request: HttpRequest, field: str, message: str) -> HttpResponse:
    return error(request, 400, "Invalid request", {field: [message]})


def identity_of(request: HttpRequest, server: Any) -> Identity | HttpResponse:
    """The bearer token's identity, or a 401 saying what is wrong with it."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(request, 401, "Unauthorized: send the token as Authorization: Bearer <token>")
    try:
        return verify(token.strip(), server.config.auth)
    except AuthError as exc:
        return error(request, 401, f"Unauthorized: {exc}")


@dataclass(frozen=True, slots=True)
class ShapeParams:
    name: str
    where: str
    params: dict[int, str]
    columns: tuple[str, ...] | None
    full: bool
    changes_only: bool
    offset: Offset | None
    """None: ``now``."""
    handle: str | None
    live: bool
    cursor: str | None


def parse_params(request: HttpRequest) -> ShapeParams | HttpResponse:
    """The shape request's parameters, checked as Electric checks them (shapes/api/params.ex)."""
    get = request.param
    table = get("table")
    if not table:
        return invalid(request, "table", "can't be blank")
    raw_offset = get("offset")
    if raw_offset is None or raw_offset == "":
        return invalid(request, "offset", "can't be blank")
    offset: Offset | None
    if raw_offset == "now":
        offset = None
    else:
        try:
            offset = offsets.parse(raw_offset)
        except offsets.BadOffset as exc:
            return invalid(request, "offset", str(exc))
    live = get("live") == "true"
    handle = get("handle") or None
    if offset is None or offset == BEFORE_ALL:
        if live:
            return invalid(request, "live", "can't be true unless offset is a position in the log")
        handle = None  # ignored with -1 and now, as Electric does
    elif handle is None:
        return invalid(request, "handle", "can't be blank when offset != -1")
    replica = get("replica") or "default"
    if replica not in ("default", "full"):
        return invalid(request, "replica", "must be one of default, full")
    mode = get("log") or "full"
    if mode not in ("full", "changes_only"):
        return invalid(request, "log", "must be one of full, changes_only")
    params: dict[int, str] = {}
    for k, v in request.query:
        m = _PARAM.match(k)
        if m:
            params[int(m.group(1))] = v
    columns = None
    raw_columns = get("columns")
    if raw_columns:
        parsed = _columns(raw_columns)
        if parsed is None:
            return invalid(request, "columns", "must be a comma-separated list of column names")
        columns = parsed
    return ShapeParams(
        table, get("where") or "", params, columns, replica == "full", mode == "changes_only", offset, handle, live,
        get("cursor"),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Subset:
    where: str
    params: dict[int, str]
    order_by: str
    limit: int | None
    offset: int | None


def parse_subset(request: HttpRequest) -> Subset | HttpResponse | None:
    """A subset snapshot's parameters: ``subset__*`` in the query, or a POST's JSON body
    (``where``, ``params``, ``limit``, ``offset``, ``order_by``); None for a plain shape request."""
    if request.method == "POST":
        try:
            doc = json.loads(request.body or b"{}")
        except ValueError as exc:
            return invalid(request, "body", f"is not JSON: {exc}")
        if not isinstance(doc, dict):
            return invalid(request, "body", "must be a JSON object")
        raw: dict[str, Any] = doc
    else:
        raw = {k.removeprefix("subset__"): v for k, v in request.query if k.startswith("subset__")}
        if not raw:
            return None
        if isinstance(raw.get("params"), str):
            try:
                raw["params"] = json.loads(raw["params"])
            except ValueError:
                return invalid(request, "subset__params", "must be a JSON object")
    params_doc = raw.get("params") or {}
    if isinstance(params_doc, list):
        params_doc = {str(i + 1): v for i, v in enumerate(params_doc)}
    if not isinstance(params_doc, dict) or not all(str(k).isdigit() for k in params_doc):
        return invalid(request, "subset__params", "must map parameter numbers to values")
    values = {int(k): v if isinstance(v, str) else json.dumps(v) for k, v in params_doc.items()}
    numbers: dict[str, int | None] = {}
    for name in ("limit", "offset"):
        value = raw.get(name)
        if value in (None, ""):
            numbers[name] = None
            continue
        try:
            numbers[name] = int(value)
        except (TypeError, ValueError):
            return invalid(request, f"subset__{name}", "must be a whole number")
        if numbers[name] < 0 or numbers[name] > 1 << 31:  # type: ignore[operator]
            return invalid(request, f"subset__{name}", "is out of range")
    where = raw.get("where") or ""
    order = raw.get("order_by") or ""
    if not isinstance(where, str) or not isinstance(order, str):
        return invalid(request, "subset__where", "where and order_by must be strings")
    return Subset(where, values, order, numbers["limit"], numbers["offset"])


_ORDER_TERM = re.compile(
    r'^\s*(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))(?:\s+(asc|desc))?(?:\s+nulls\s+(first|last))?\s*$',
    re.IGNORECASE,
)


def order_by(text: str, rel: RelationDef, readable: frozenset[str] | None) -> sql.Composable | str:
    """``col [ASC|DESC] [NULLS FIRST|LAST], ...`` as SQL (identifiers quoted by psycopg), or why not:
    only the table's columns the user may filter on (ordering tells values too)."""
    terms: list[sql.Composable] = []
    names = {c.name for c in rel.columns}
    for part in text.split(","):
        m = _ORDER_TERM.match(part)
        if m is None:
            return f"cannot read {part.strip()[:60]!r}: give column [ASC|DESC] [NULLS FIRST|LAST], comma-separated"
        name = m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).lower()
        if name not in names:
            return f"unknown column {name!r}"
        if readable is not None and name not in readable:
            return f"column {name!r} is not readable with your grants"
        term: sql.Composable = sql.SQL("{}.{}").format(sql.Identifier("electric_row"), sql.Identifier(name))
        if m.group(3):
            term = sql.SQL("{} {}").format(term, sql.SQL(m.group(3).upper()))
        if m.group(4):
            term = sql.SQL("{} NULLS {}").format(term, sql.SQL(m.group(4).upper()))
        terms.append(term)
    return sql.SQL(", ").join(terms)


def _columns(text: str) -> tuple[str, ...] | None:
    """``a,"B c",d``: names, double quotes for those with capitals or punctuation."""
    out: list[str] = []
    for m in re.finditer(r'\s*(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))\s*(,|$)', text):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).lower())
        if m.group(3) == "":
            return tuple(out) if m.end() == len(text) else None
    return None


def next_cursor(client: str | None) -> str:
    """Electric's cursor: the next 20-second boundary since its epoch, in seconds; if that is not
    after the client's, the client's plus a random jump (so a cached live response is never reused)."""
    value = math.ceil((time.time() - _CURSOR_EPOCH) / 20) * 20
    try:
        given = int(client) if client else 0
    except ValueError:
        given = 0
    if value <= given:
        value = given + random.randint(1, 3600)  # noqa: S311 - a cache-buster, not a secret
    return str(value)


class ShapeApi:
    def __init__(self, server: Any, manager: ShapeManager) -> None:
        self.server = server
        self.manager = manager

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.method == "OPTIONS":
            return preflight(request)
        if request.method not in ("GET", "HEAD", "POST"):
            return error(request, 405, f"{request.method} is not allowed on /v1/shape")
        subset = parse_subset(request)
        if isinstance(subset, HttpResponse):
            return subset
        if subset is not None and request.param("offset") is None:
            request = dataclasses.replace(request, query=(*request.query, ("offset", "-1")))
        params = parse_params(request)
        if isinstance(params, HttpResponse):
            return params
        identity = identity_of(request, self.server)
        if isinstance(identity, HttpResponse):
            return identity
        if self.server.draining:
            return unavailable(request, "the server is restarting")
        try:
            inst = await self._instance(params, identity)
        except Refused as exc:
            return invalid(request, exc.field, str(exc)) if exc.status == 400 else error(request, exc.status, str(exc))
        if params.handle is not None and params.handle != inst.handle:
            return self._must_refetch(request, inst)
        if subset is not None:
            return await self._subset(request, params, inst, identity, subset)
        return await self._serve(request, params, inst)

    async def _subset(
        self, request: HttpRequest, params: ShapeParams, inst: ShapeInstance, identity: Identity, subset: Subset
    ) -> HttpResponse:
        """A subset snapshot: rows of the shape that also match ``subset``, read at a snapshot and
        returned whole with its xmin, xmax and xip list (TanStack DB's on-demand sync)."""
        engine = inst.engine
        deadline = time.monotonic() + FIRST_CHUNK_WAIT
        while engine is not None and not engine.shapes and not engine.tree_shapes and inst.rotated is None:
            if time.monotonic() > deadline:
                return unavailable(request, "the shape's data is still being read")
            await inst.log.wait(1.0)
        if engine is None or inst.rotated is not None:
            return self._rotated(request, inst)
        if engine.tree_shapes:
            return invalid(
                request, "subset__where", "subset snapshots of a shape with an include tree are not supported"
            )
        table = str(inst.definition.table)
        shape = next(iter(engine.shapes[table].all))
        rel = shape.relation
        access = engine.projection.access.get(table)
        readable = access.filterable(rel) if access is not None else None
        where = None
        if subset.where.strip():
            try:
                text = (
                    bind_params(subset.where, subset.params) if subset.params or "$" in subset.where else subset.where
                )
                where = compile_where(text, rel, identity.claims, readable=readable)
            except (ExprError, ShapeError) as exc:
                at = f" at position {exc.offset + 1}" if exc.offset is not None else ""
                return invalid(request, "subset__where", f"invalid where clause{at}: {exc.message}")
        order = order_by(subset.order_by, rel, readable) if subset.order_by else None
        if isinstance(order, str):
            return invalid(request, "subset__order_by", order)
        if (subset.limit is not None or subset.offset is not None) and order is None:
            return invalid(request, "subset__order_by", "is required with limit or offset")
        clauses = [w.sql for w in (shape.where, where) if w is not None]
        combined = sql.SQL(" AND ").join(sql.SQL("({})").format(c) for c in clauses) if clauses else None
        mark = random.randint(1, 2**31 - 1)  # noqa: S311 - tells this snapshot's rows apart, not a secret
        projection = messages.Projection(frozenset(params.columns) if params.columns is not None else None, params.full)
        snap = await self.server.snapshots.take(owner=identity.user_id)
        try:
            cur = await snap.conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text")
            row = await cur.fetchone()
            lsn = row[0] if row else "0"
            prel = engine.projection.relation(rel)
            data: list[bytes] = []
            async for rows in snap.rows(rel, combined, order_by=order, limit=subset.limit, offset=subset.offset):
                data.extend(projection.snapshot_row(prel, engine.projection.row(rel, r), mark) for r in rows)
            vis = snap.visibility
        finally:
            await snap.close()
        meta = {
            "xmin": str(vis.xmin),
            "xmax": str(vis.xmax),
            "xip_list": [str(x) for x in sorted(vis.xip)],
            "snapshot_mark": mark,
            "database_lsn": str(lsn),
        }
        body = b'{"metadata":' + json.dumps(meta).encode() + b',"data":[' + b",".join(data) + b"]}"
        headers = [
            *cors_headers(request),
            ("content-type", "application/json"),
            ("electric-handle", inst.handle),
            ("electric-offset", str(inst.log.end)),
            ("electric-schema", messages.schema_header(prel, params.columns)),
            ("electric-snapshot", "true"),
            ("cache-control", "no-cache"),
            ("vary", "Authorization"),
        ]
        return HttpResponse(200, body, headers)

    async def _instance(self, params: ShapeParams, identity: Identity) -> ShapeInstance:
        where = params.where
        if params.params or "$" in where:
            try:
                where = bind_params(where, params.params)
            except ExprError as exc:
                at = f" at position {exc.offset + 1}" if exc.offset is not None else ""
                raise Refused("where", f"invalid where clause{at}: {exc.message}") from None
        # a declared shape by its name, or a table (with an ad hoc where clause, if allowed)
        catalog = self.server.catalog
        rules = await catalog.shape_rules()
        declared = rules.declared.get(params.name)
        if declared is not None and not where.strip():
            table = TableRef.parse(declared["table"])
            where, includes = declared.get("where") or "", rules.includes(params.name)
        else:
            try:
                table = TableRef.parse(params.name)
            except ValueError as exc:
                raise Refused("table", f"invalid table name: {exc}") from None
            includes = ()
            if table not in await catalog.electrified_tables():
                raise Refused(
                    "table", f"table not found: no electrified table or declared shape is named {params.name!r}"
                )
        rel = await catalog.describe(table)
        if rel is None:
            raise Refused("table", f"table not found: {table}")
        if params.columns is not None:
            names = {c.name for c in rel.columns}
            unknown = [c for c in params.columns if c not in names]
            if unknown:
                raise Refused("columns", f"unknown column {unknown[0]!r} of {table}")
            missing = [c.name for c in rel.columns if c.primary_key and c.name not in params.columns]
            if missing:
                raise Refused("columns", f"must include the primary key column {missing[0]!r}")
        definition = ShapeDef(table, where, includes, params.columns, params.full, params.changes_only, params.name)
        policy, _ = await catalog.policy()
        user_specific = policy.enforced or "auth." in where or any("auth." in i.where for i in _walk(includes))
        return await self.manager.get(definition, identity, user_specific)

    def _must_refetch(self, request: HttpRequest, inst: ShapeInstance) -> HttpResponse:
        headers = [
            *cors_headers(request),
            ("electric-handle", inst.handle),
            (
                "cache-control",
                "private, max-age=60, must-revalidate" if inst.private else "public, max-age=60, must-revalidate",
            ),
            ("vary", "Authorization"),
            ("content-type", "application/json"),
        ]
        return HttpResponse(409, messages.MUST_REFETCH, headers)

    async def _serve(self, request: HttpRequest, params: ShapeParams, inst: ShapeInstance) -> HttpResponse:
        log = inst.log
        after = params.offset
        if after is not None and after > log.end and after.tx > 0:
            return invalid(request, "offset", "out of bounds for this shape")
        # wait for something to say: the snapshot's first rows, or (live) the next change
        since = BEFORE_ALL if after is None else after
        if not log.has_after(since):
            if not log.snapshot_done:
                deadline = time.monotonic() + FIRST_CHUNK_WAIT
                while not log.snapshot_done and not log.has_after(since) and inst.rotated is None:
                    if time.monotonic() > deadline:
                        return unavailable(request, "the shape's data is still being read")
                    await log.wait(1.0)
            elif params.live:
                await log.wait(self.server.options.long_poll_seconds)
        if inst.rotated is not None:
            return self._rotated(request, inst)
        if after is None:  # now: nothing of the past, the current end
            return self._respond(request, params, inst, [messages.up_to_date(self._seen())], log.end, True)
        # offset -1 gets the snapshot alone (Electric's -1 response, cacheable for long); the live
        # log follows at the offset it ends with
        body, last, at_end = log.read(after, CHUNK_BYTES, snapshot_only=after == BEFORE_ALL)
        done = at_end and log.snapshot_done and after != BEFORE_ALL
        if done:
            body.append(messages.up_to_date(self._seen()))
        return self._respond(request, params, inst, body, last, done)

    def _rotated(self, request: HttpRequest, inst: ShapeInstance) -> HttpResponse:
        """The log ended while the request was served: 409 (with the next handle when known)."""
        nxt = inst.successor
        if nxt is None:
            headers = [
                *cors_headers(request),
                ("cache-control", "public, max-age=1, must-revalidate"),
                ("content-type", "application/json"),
            ]
            return HttpResponse(409, messages.MUST_REFETCH, headers)
        return self._must_refetch(request, nxt)

    def _seen(self) -> int:
        return int(self.server.log.last_lsn)

    def _respond(
        self,
        request: HttpRequest,
        params: ShapeParams,
        inst: ShapeInstance,
        body: list[bytes],
        last: Offset,
        up_to_date: bool,
    ) -> HttpResponse:
        payload = b"[" + b",".join(body) + b"]"
        headers = [
            *cors_headers(request),
            ("content-type", "application/json"),
            ("electric-handle", inst.handle),
            ("electric-offset", str(last)),
            ("vary", "Authorization"),
        ]
        if params.live:
            headers.append(("electric-cursor", next_cursor(params.cursor)))
        else:
            relation = inst.relation
            if relation is not None and inst.engine is not None:
                relation = inst.engine.projection.relation(relation)
            headers.append(
                ("electric-schema", messages.schema_header(relation, params.columns) if relation is not None else "{}")
            )
        if up_to_date:
            headers.append(("electric-up-to-date", ""))
        headers.append(
            ("electric-has-data", "true" if any(not b.startswith(b'{"headers":{"control"') for b in body) else "false")
        )
        headers.append(("cache-control", _cache_control(params, inst)))
        etag = f'"{inst.handle}:{params.offset if params.offset is not None else "now"}:{last}"'
        headers.append(("etag", etag))
        if not params.live and request.headers.get("if-none-match") == etag:
            return HttpResponse(304, b"", headers)
        return HttpResponse(200, payload, headers)


def _cache_control(params: ShapeParams, inst: ShapeInstance) -> str:
    """Electric's cache lifetimes (response.ex), and ``private`` for a log of one user's rows: a
    shared cache must never give it to anyone else. A log every user shares may be kept by a shared
    cache, one copy per Authorization header (``Vary``), so a request with another token, or none,
    still reaches serve and its token check."""
    scope = "private" if inst.private else "public"
    if params.live:
        return f"{scope}, max-age=5, stale-while-revalidate=5"
    if params.offset == BEFORE_ALL:
        shared = ", s-maxage=3600" if scope == "public" else ""  # s-maxage speaks to shared caches only
        return f"{scope}, max-age=604800{shared}, stale-while-revalidate=2629746"
    return f"{scope}, max-age=60, stale-while-revalidate=300"


def _walk(includes: Any) -> list[Any]:
    out = []
    for inc in includes:
        out.append(inc)
        out.extend(_walk(inc.include))
    return out
