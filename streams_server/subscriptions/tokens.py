"""Lease and callback tokens: compact HS256 JWTs scoped to one subscription wake (7.3, 12.9)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from .keys import b64url

TOKEN_LIFETIME_S = 24 * 3600
_HEADER = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())


@dataclass(frozen=True)
class TokenClaims:
    subscription_id: str
    generation: int
    wake_id: str


def mint(key: bytes, claims: TokenClaims, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    payload = {
        "sub": claims.subscription_id,
        "gen": claims.generation,
        "wake": claims.wake_id,
        "iat": issued,
        "exp": issued + TOKEN_LIFETIME_S,
    }
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{body}".encode("ascii")
    signature = b64url(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{_HEADER}.{body}.{signature}"


class InvalidToken(Exception):
    """A token refused; the message says why, in words for the worker that sent it."""


def verify(key: bytes, token: str, now: float | None = None) -> TokenClaims:
    """The claims of a valid, unexpired token signed with `key`; `InvalidToken` otherwise."""
    try:
        header, body, signature = token.split(".")
        expected = hmac.new(key, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(b64url(expected), signature):
            raise InvalidToken("the wake token is not one this server signed")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims = TokenClaims(str(payload["sub"]), int(payload["gen"]), str(payload["wake"]))
        expires = int(payload["exp"])
    except (ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise InvalidToken("the wake token is not one this server signed") from exc
    if expires < (time.time() if now is None else now):
        raise InvalidToken(f"the wake token has expired (a token lasts"
                           f" {TOKEN_LIFETIME_S // 3600} hours): claim again for a new one")
    return claims
