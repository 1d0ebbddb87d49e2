"""The protocol layer's request and reply values, independent of any web framework."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO


@dataclass(frozen=True)
class StreamRequest:
    """One HTTP request addressed to a stream path (without the URL prefix)."""

    method: str
    path: str
    url: str  # the absolute URL of the stream, without query
    headers: Mapping[str, str]  # case-insensitive
    args: Mapping[str, str]
    body: BinaryIO
    content_length: int | None


@dataclass
class Reply:
    """A response: status, headers and a body of bytes or a stream of byte chunks."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterator[bytes] = b""
