"""Checks of the settings both the supervisor command and the web app take."""

from __future__ import annotations

from urllib.parse import urlsplit

CONTROL_PREFIX = "__ds"  # the server's own paths (subscriptions, keys), not streams


def is_http_url(value: str) -> bool:
    """An http:// or https:// URL with a host, and a port that is a port if it has one."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def is_stream_path(value: str) -> bool:
    """A stream path relative to the streams root, as `agents/wake`: no leading `/`, no
    empty, `.` or `..` segments (which browsers and servers resolve away), nothing
    unprintable."""
    segments = value.split("/")
    return (bool(value) and value.isprintable() and segments[0] != CONTROL_PREFIX
            and all(segment not in ("", ".", "..") for segment in segments))
