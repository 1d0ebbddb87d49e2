"""The protocol layer's request and reply values, independent of any web framework."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol
from dataclasses import dataclass, field
from typing import IO


class HeaderLookup(Protocol):
    """Case-insensitive request headers (Werkzeug's `Headers` is one)."""

    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class StreamRequest:
    """One HTTP request addressed to a stream path (without the URL prefix)."""

    method: str
    path: str
    url: str  # the absolute URL of the stream, without query
    headers: HeaderLookup
    args: Mapping[str, str]  # a query parameter given more than once: its first value
    body: IO[bytes]
    content_length: int | None
    repeated_args: frozenset[str] = frozenset()  # the query parameters given more than once


@dataclass
class Reply:
    """A response: status, headers and a body of bytes or a stream of byte chunks."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterator[bytes] = b""
