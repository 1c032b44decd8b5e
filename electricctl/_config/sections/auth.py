"""The ``auth`` section: how serve verifies client tokens.

``secure`` mode (the default) needs a JWT key that fits its algorithm: any secret for HS*, a
PEM public key for RS*/ES*, and valid base64 when ``key_is_base64`` says so. ``insecure`` mode
accepts unsigned tokens and needs no key.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.model import AuthConfig, JwtConfig

KEY_MISSING = "secure mode needs auth.jwt.key (the HS secret or the RS/ES public key) to verify tokens"


def validate_auth(raw: dict[str, Any] | None, sink: DiagnosticSink) -> AuthConfig:
    """The auth settings, with defaults filled in; key problems are reported to ``sink``."""
    raw = raw or {}
    jwt_raw = raw.get("jwt") or {}
    jwt = JwtConfig(
        alg=jwt_raw.get("alg", "HS256"),
        key=jwt_raw.get("key") or None,
        key_is_base64=bool(jwt_raw.get("key_is_base64", False)),
        issuer=jwt_raw.get("issuer"),
        audience=jwt_raw.get("audience"),
        namespace=jwt_raw.get("namespace"),
    )
    mode = raw.get("mode", "secure")
    if mode == "secure":
        if not jwt.key:
            # only serve and token need the key (they refuse to start without it, with this finding);
            # validate, plan and apply do not: CI without secrets can run them
            sink.warn(
                "auth.jwt.key" if "jwt" in raw else "auth",
                KEY_MISSING,
                "auth.key_missing",
            )
        elif jwt.alg.startswith(("RS", "ES")) and "-----BEGIN" not in jwt.key:
            sink.error("auth.jwt.key", f"{jwt.alg} needs a PEM-encoded public key", "auth.key_format")
        elif jwt.key_is_base64:
            try:
                base64.b64decode(jwt.key, validate=True)
            except binascii.Error:
                sink.error("auth.jwt.key", "key_is_base64 is true but the key is not valid base64", "auth.key_format")
    return AuthConfig(mode=mode, jwt=jwt)
