"""Token verification in secure and insecure mode, for HS, RS and ES algorithms."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from electricctl._auth.tokens import AuthError, mint, verify
from electricctl._config.model import AuthConfig, JwtConfig

NOW = int(time.time())


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "user-1", "iat": NOW, "exp": NOW + 60, **extra}


def pem(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"])
def test_asymmetric_algorithms(alg: str) -> None:
    if alg.startswith("RS"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key({"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg])
    auth = AuthConfig("secure", JwtConfig(alg=alg, key=pem(key.public_key())))
    assert verify(jwt.encode(claims(), key, algorithm=alg), auth).user_id == "user-1"
    # a token signed with another key, or re-signed as HS256 with the public key (alg confusion), fails
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg.startswith("RS")
        else ec.generate_private_key(key.curve)
    )  # type: ignore[union-attr]
    with pytest.raises(AuthError):
        verify(jwt.encode(claims(), other, algorithm=alg), auth)
    # PyJWT refuses to sign HS256 with a PEM key, so forge the alg-confusion token by hand
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(b'{"sub":"x","iat":%d,"exp":%d}' % (NOW, NOW + 60)).rstrip(b"=")
    with pytest.raises(AuthError):
        verify((header + b"." + body + b".c2ln").decode(), auth)


def test_hs_with_issuer_audience_namespace_and_base64() -> None:
    secret = b"0123456789abcdef" * 4
    auth = AuthConfig(
        "secure",
        JwtConfig(
            alg="HS512",
            key=base64.b64encode(secret).decode(),
            key_is_base64=True,
            issuer="me",
            audience="app",
            namespace="https://example.com/claims",
        ),
    )
    token = jwt.encode(
        {
            "iat": NOW,
            "exp": NOW + 60,
            "iss": "me",
            "aud": "app",
            "https://example.com/claims": {"sub": "u9", "org": "x"},
        },
        secret,
        algorithm="HS512",
    )
    ident = verify(token, auth)
    assert ident.user_id == "u9" and ident.claims["org"] == "x"
    for bad in ({"iss": "you"}, {"aud": "other"}):
        payload = {"iat": NOW, "exp": NOW + 60, "iss": "me", "aud": "app", "sub": "u", **bad}
        with pytest.raises(AuthError):
            verify(jwt.encode(payload, secret, algorithm="HS512"), auth)
    assert verify(mint(auth, "minted", {"org": "y"}), auth).claims["org"] == "y"


def test_secure_mode_requires_exp_and_iat() -> None:
    auth = AuthConfig("secure", JwtConfig(key="k" * 32))
    with pytest.raises(AuthError, match="exp"):
        verify(jwt.encode({"sub": "u", "iat": NOW}, "k" * 32, algorithm="HS256"), auth)
    with pytest.raises(AuthError, match=r"not yet valid|nbf|iat"):
        verify(jwt.encode(claims(nbf=NOW + 3600), "k" * 32, algorithm="HS256"), auth)


def test_insecure_mode_skips_signatures_but_checks_time_and_sub() -> None:
    auth = AuthConfig("insecure")
    assert verify(jwt.encode({"sub": "u"}, key="", algorithm="none"), auth).user_id == "u"
    assert verify(jwt.encode({"user_id": "legacy"}, "w" * 32, algorithm="HS256"), auth).user_id == "legacy"
    with pytest.raises(AuthError, match="expired"):
        verify(jwt.encode({"sub": "u", "exp": NOW - 60}, key="", algorithm="none"), auth)
    with pytest.raises(AuthError, match="no sub"):
        verify(jwt.encode({"name": "x"}, key="", algorithm="none"), auth)
    with pytest.raises(AuthError):
        verify("", auth)
