"""A shared HTTP cache that follows RFC 9111's rules for storing and reusing responses (what a CDN
or a caching proxy between clients and serve may do), to check serve's caching headers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


def directives(header: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            out[name.lower()] = value.strip('"') if value else None
    return out


@dataclass
class Stored:
    url: str
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class SharedCache:
    entries: list[Stored] = field(default_factory=list)
    hits: int = 0

    def storable(self, request_headers: dict[str, str], status: int, headers: dict[str, str]) -> bool:
        """RFC 9111 §3 (storing), for a shared cache."""
        cc = directives(headers.get("cache-control"))
        if status not in (200, 203, 204, 300, 301, 404, 405, 410, 414, 501) and "public" not in cc:
            return False
        if "no-store" in cc or "private" in cc:  # §5.2.2.3, §5.2.2.7: a shared cache must not store
            return False
        # §3.5: a request with Authorization only if the response explicitly allows it
        if "authorization" in request_headers and not ({"public", "s-maxage", "must-revalidate"} & cc.keys()):
            return False
        return "max-age" in cc or "s-maxage" in cc or "public" in cc

    def _fresh(self, entry: Stored) -> bool:
        cc = directives(entry.headers.get("cache-control"))
        lifetime = cc.get("s-maxage") or cc.get("max-age") or "0"  # §4.2.1: s-maxage first
        return time.time() - entry.at < float(lifetime)

    def _matches(self, entry: Stored, url: str, request_headers: dict[str, str]) -> bool:
        """§4: same URL, and the request's fields named by Vary equal the stored request's (§4.1)."""
        if entry.url != url:
            return False
        for name in (n.strip().lower() for n in entry.headers.get("vary", "").split(",") if n.strip()):
            if name == "*" or request_headers.get(name) != entry.request_headers.get(name):
                return False
        return True

    def get(self, url: str, request_headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, served from the cache)."""
        request_headers = {k.lower(): v for k, v in request_headers.items()}
        for entry in self.entries:
            if self._matches(entry, url, request_headers) and self._fresh(entry):
                self.hits += 1
                return entry.status, entry.headers, entry.body, True
        req = urllib.request.Request(url, headers=request_headers)
        try:
            with urllib.request.urlopen(req, timeout=40) as r:
                status, headers, body = r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
        if self.storable(request_headers, status, headers):
            self.entries.append(Stored(url, request_headers, status, headers, body, time.time()))
        return status, headers, body, False
