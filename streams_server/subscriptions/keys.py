"""The server's secrets: the Ed25519 webhook signing key and the HMAC key for lease tokens.

Both are created on first use and kept in the data directory (mode 0600), so webhook
receivers keep verifying and outstanding tokens stay valid across restarts. An in-memory
server gets fresh keys each start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNING_KEY_FILE = "webhook_signing_key.pem"
TOKEN_KEY_FILE = "subscription_token.key"
TOKEN_KEY_BYTES = 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _write_secret(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DamagedKeyFile(ValueError):
    """A key file of the data directory cannot be used."""


class ServerKeys:
    """Loads or creates the signing and token keys under `key_dir` (None: in memory)."""

    def __init__(self, key_dir: str | None) -> None:
        self.signing_key = self._load_signing_key(key_dir)
        self.token_key = self._load_token_key(key_dir)
        raw = self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_x = b64url(raw)
        # RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
        thumbprint_input = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": self.public_x}, separators=(",", ":")
        )
        self.kid = "ds_" + b64url(hashlib.sha256(thumbprint_input.encode()).digest())[:22]

    @staticmethod
    def _load_signing_key(key_dir: str | None) -> Ed25519PrivateKey:
        if key_dir is None:
            return Ed25519PrivateKey.generate()
        path = os.path.join(key_dir, SIGNING_KEY_FILE)
        if os.path.exists(path):
            with open(path, "rb") as f:
                try:
                    key = serialization.load_pem_private_key(f.read(), password=None)
                except (ValueError, TypeError) as exc:
                    raise DamagedKeyFile(f"{path} is not a PEM private key: {exc}") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise DamagedKeyFile(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
            return key
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_secret(path, pem)
        return key

    @staticmethod
    def _load_token_key(key_dir: str | None) -> bytes:
        if key_dir is None:
            return secrets.token_bytes(TOKEN_KEY_BYTES)
        path = os.path.join(key_dir, TOKEN_KEY_FILE)
        if os.path.exists(path):
            with open(path, "rb") as f:
                key = f.read()
            if len(key) != TOKEN_KEY_BYTES:  # the server writes 32 random bytes, nothing else
                raise DamagedKeyFile(f"{path} holds {len(key)} bytes, not a key of "
                                     f"{TOKEN_KEY_BYTES}: lease tokens signed with it would be"
                                     " guessable (delete it to have a new one made)")
            return key
        key = secrets.token_bytes(TOKEN_KEY_BYTES)
        _write_secret(path, key)
        return key

    def jwks(self) -> dict[str, object]:
        """The public signing key as a JWK Set (section 6.5)."""
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                    "x": self.public_x,
                }
            ]
        }

    def sign_webhook(self, timestamp: int, body: bytes) -> str:
        """The `Webhook-Signature` header value over `<timestamp>.<raw body>` (7.1)."""
        signature = self.signing_key.sign(str(timestamp).encode("ascii") + b"." + body)
        return f"t={timestamp},kid={self.kid},ed25519={b64url(signature)}"
