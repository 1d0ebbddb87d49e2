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


def verify(key: bytes, token: str, now: float | None = None) -> TokenClaims | None:
    """The claims of a valid, unexpired token signed with `key`, else None."""
    try:
        header, body, signature = token.split(".")
        expected = hmac.new(key, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(b64url(expected), signature):
            return None
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if int(payload["exp"]) < (time.time() if now is None else now):
            return None
        return TokenClaims(str(payload["sub"]), int(payload["gen"]), str(payload["wake"]))
    except (ValueError, KeyError, TypeError, UnicodeError):
        return None
