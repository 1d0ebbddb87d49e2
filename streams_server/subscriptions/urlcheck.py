"""Webhook URL validation against server-side request forgery (sections 6.2 and 12.8).

Production URLs must be `https` to a public host. The one exception is local development,
where the server allows it (`local_ok`): `http` or `https` to `localhost` or `127.0.0.x`.
Private, loopback, link-local, metadata and other non-public targets are refused, both when
the URL is given (IP literals and reserved names) and again when a delivery resolves the
host name, which then connects to the address it checked (so DNS cannot smuggle them in,
not even with an answer that changes between that look-up and the connection).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from ..errors import BadRequest

_LOCAL_NAMES = {"localhost", "localhost.localdomain"}
_BLOCKED_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan")
_NUMERIC_LABELS = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _rejected(reason: str) -> BadRequest:
    return BadRequest(f"webhook URL rejected: {reason}", code="WEBHOOK_URL_REJECTED")


def is_development_host(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and str(address).startswith("127.0.0.")


def _public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _public_address(address.ipv4_mapped)
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def validate_webhook_url(url: str, *, local_ok: bool = False) -> str:
    """The URL if it is an acceptable webhook target, else `400 WEBHOOK_URL_REJECTED`;
    `local_ok` takes localhost and 127.0.0.x too (development)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise _rejected("the URL must be a string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        # A fully qualified name's trailing dot names the same host ("localhost.").
        host = (parts.hostname or "").lower().removesuffix(".")
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise _rejected(f"malformed URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _rejected("only http(s) URLs with a host are allowed")
    if parts.username or parts.password:
        raise _rejected("credentials in the URL are not allowed")
    if is_development_host(host):
        if local_ok:
            return url
        raise _rejected(f"{host} is this machine: webhooks to localhost and 127.0.0.x are for"
                        " development, and this server is not set to allow them"
                        " (--allow-local-webhooks; CHAT_ALLOW_LOCAL_WEBHOOKS in the web app)")
    if parts.scheme != "https":
        raise _rejected("webhooks must use https (http only to localhost or 127.0.0.x, where"
                        " the server allows them)")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = _shorthand_ipv4(host)
    if address is None:
        if not _is_host_name(host):
            raise _rejected(f"{host!r} is not a host name")
        if host.endswith(_BLOCKED_SUFFIXES) or "." not in host:
            raise _rejected(f"{host!r} names a local network host")
        return url
    if not _public_address(address):
        raise _rejected(f"{host} is a private, loopback, link-local or reserved address")
    return url


def _shorthand_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in a form `ip_address` does not read but resolvers do (``10.1``,
    ``0x7f.1``, ``2130706433``), so that it is checked now rather than at delivery."""
    if not _NUMERIC_LABELS.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_host_name(host: str) -> bool:
    """Letters, digits and hyphens in dot-separated labels (international names as IDNA)."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return _HOST_NAME.fullmatch(ascii_host) is not None


def resolve_public_address(url: str, *, local_ok: bool = False) -> str | None:
    """At delivery time: the address to connect to, once every address the host resolves to
    is found public; a public-looking name that resolves to a local address is refused (and
    a local one, made while the server allowed them, unless it still does). None for a
    development host the server allows: it is connected to by its name."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if is_development_host(host) and local_ok:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not _public_address(address):
            raise _rejected(f"{host} resolves to the non-public address {address}")
    if not infos:
        raise _rejected(f"{host} resolves to no address")
    return str(infos[0][4][0])
