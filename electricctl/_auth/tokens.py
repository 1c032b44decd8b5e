"""JWT verification for client connections (../shared/reference/electric-legacy.md §6), and development tokens.

secure: the signature is verified with the configured algorithm only (HS*, RS*, ES*), so an
``alg: none`` or algorithm-confusion token is refused; ``exp`` and ``iat`` are required and, like
``nbf``, checked; ``iss``/``aud`` are required and checked when configured. insecure: no signature
check, but the token must still be a well-formed JWT and time claims, if present, must hold.
Both modes require ``sub`` (or the legacy ``user_id``), read from ``namespace`` when set.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import jwt

from electricctl._config.model import AuthConfig

LEEWAY_SECONDS = 5


class AuthError(Exception):
    """The token was refused; the message says why (it is sent to the client)."""


class InvalidIdentity(AuthError):
    """The token verified, but the identity in it cannot be used (a ``sub`` with a NUL byte, say)."""


MAX_SUB_LENGTH = 256


def _has_nul(value: Any, depth: int = 0) -> bool:
    """Does any string in the claims hold a NUL byte (Postgres text cannot, so it could never match)?"""
    if depth > 32:
        return True  # claims nested this deep are refused as well
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    claims: dict[str, Any]
    expires_at: float | None


def _key(auth: AuthConfig) -> str | bytes:
    key = auth.jwt.key or ""
    if auth.jwt.alg.startswith("HS") and auth.jwt.key_is_base64:
        return base64.b64decode(key)
    return key


def verify(token: str, auth: AuthConfig, *, now: float | None = None) -> Identity:
    if not token:
        raise AuthError("no token")
    try:
        if auth.mode == "secure":
            claims = jwt.decode(
                token,
                _key(auth),
                algorithms=[auth.jwt.alg],
                audience=auth.jwt.audience,
                issuer=auth.jwt.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat"], "verify_aud": bool(auth.jwt.audience)},
            )
        else:
            claims = jwt.decode(token, options={"verify_signature": False, "verify_aud": False})
            current = time.time() if now is None else now
            exp, nbf = claims.get("exp"), claims.get("nbf")
            if isinstance(exp, int | float) and exp < current - LEEWAY_SECONDS:
                raise AuthError("token has expired")
            if isinstance(nbf, int | float) and nbf > current + LEEWAY_SECONDS:
                raise AuthError("token is not valid yet (nbf)")
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token has expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    source = claims
    if auth.jwt.namespace:
        nested = claims.get(auth.jwt.namespace)
        source = nested if isinstance(nested, dict) else {}
    sub = source.get("sub", claims.get("sub")) or source.get("user_id")
    if not isinstance(sub, str) or not sub:
        raise AuthError("token has no sub claim")
    if len(sub) > MAX_SUB_LENGTH or any(ord(ch) < 0x20 or ch == "\x7f" for ch in sub):
        raise InvalidIdentity(
            f"the token's sub must be at most {MAX_SUB_LENGTH} characters, with no control characters"
        )
    if _has_nul(source):
        raise InvalidIdentity("the token's claims must not contain NUL characters (or be nested more than 32 deep)")
    exp = claims.get("exp")
    return Identity(sub, dict(source), float(exp) if isinstance(exp, int | float) else None)


def mint(auth: AuthConfig, sub: str, claims: dict[str, Any] | None = None, ttl_seconds: int = 3600) -> str:
    """A development token signed with the configured key (insecure mode: unsigned)."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + ttl_seconds}
    if auth.jwt.issuer:
        payload["iss"] = auth.jwt.issuer
    if auth.jwt.audience:
        payload["aud"] = auth.jwt.audience
    custom = {"sub": sub, **(claims or {})}
    if auth.jwt.namespace:
        payload["sub"] = sub
        payload[auth.jwt.namespace] = custom
    else:
        payload.update(custom)
    if auth.mode != "secure":
        return jwt.encode(payload, key="", algorithm="none")
    if not auth.jwt.alg.startswith("HS"):
        raise AuthError(f"cannot mint {auth.jwt.alg} tokens: the config holds only the public key")
    return jwt.encode(payload, _key(auth), algorithm=auth.jwt.alg)
