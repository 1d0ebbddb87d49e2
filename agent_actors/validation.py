"""Checks of the settings both the supervisor command and the web app take."""

from __future__ import annotations

from urllib.parse import urlsplit

CONTROL_PREFIX = "__ds"  # the server's own paths (subscriptions, keys), not streams

# Upper bounds, far beyond any use: past about 9e9 s a thread's timed wait overflows, and
# an agent's coalescing window that long lost its answer's text.
MAX_IDLE_TIMEOUT_S = 7 * 24 * 3600
MAX_COALESCE_MS = 10_000
MAX_WORKER_NAME_CHARS = 256  # what the streams server takes in a claim


HTTP_URL = "an http:// or https:// URL with a valid host, in ASCII"  # what is_http_url takes


def is_http_url(value: str) -> bool:
    """An http:// or https:// URL (the scheme in any case) with a valid host, and a port
    that is a port if it has one; without a query or fragment, which paths appended to it
    would land in, or spaces. ASCII only: a request line carries nothing else, so a path
    must be percent-encoded and a host name written in its xn-- form."""
    if not is_visible_ascii(value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and _is_host(parts.hostname or "")
            and _ends_after_host(parts.netloc)
            and not parts.query and not parts.fragment and "?" not in value
            and "#" not in value)


def _is_host(host: str) -> bool:
    """A host name of dot-separated labels (a final dot allowed), or an IP address."""
    if ":" in host:  # an IPv6 literal, which urlsplit found between brackets
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return bool(host) and all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels)


def _ends_after_host(netloc: str) -> bool:
    """Nothing but a port after a bracketed host: urlsplit drops the rest (`[::1]x`)."""
    host_and_port = netloc.rpartition("@")[2]
    after = host_and_port.partition("]")[2] if host_and_port.startswith("[") else ""
    return not after or after.startswith(":")


def is_token(value: str) -> bool:
    """A credential that goes into an HTTP header as it is: visible ASCII, no spaces. (A
    newline read from a file, or a non-Latin-1 character, failed every request later, far
    from its cause.)"""
    return is_visible_ascii(value)


def is_visible_ascii(value: str) -> bool:
    """Not empty, and only visible ASCII characters: no spaces, tabs or line breaks."""
    return bool(value) and all("!" <= c <= "~" for c in value)


def is_stream_path(value: str) -> bool:
    """A stream path relative to the streams root, as `agents/wake`: no leading `/`, no
    empty, `.` or `..` segments (which browsers and servers resolve away), nothing
    unprintable."""
    segments = value.split("/")
    return (bool(value) and value.isprintable() and segments[0] != CONTROL_PREFIX
            and all(segment not in ("", ".", "..") for segment in segments))
