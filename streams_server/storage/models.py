"""Values the storage engine takes and returns: frozen, HTTP-free descriptions of streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Union


@dataclass(frozen=True)
class Expiry:
    """A stream's lifetime: a sliding TTL in seconds, an absolute deadline, or neither."""

    ttl_seconds: int | None = None
    expires_at_ms: int | None = None


@dataclass(frozen=True)
class ProducerRef:
    """The idempotent-producer triple of section 5.2.1."""

    producer_id: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class ForkSpec:
    """Where a new stream forks from (section 4.2), as the request named it."""

    source_path: str
    offset: int | None  # None: the source's tail
    sub_offset: int = 0


@dataclass(frozen=True)
class StreamInfo:
    """A snapshot of a stream's metadata."""

    stream_id: int
    path: str
    content_type: str
    tail: int
    closed: bool
    expiry: Expiry
    created_at_ms: int
    last_access_ms: int
    fork_source_path: str | None = None
    fork_offset: int | None = None
    fork_request_offset: int | None = None
    fork_sub_offset: int = 0

    @property
    def is_json(self) -> bool:
        return is_json_content_type(self.content_type)

    def updated(self, *, tail: int, closed: bool, last_access_ms: int) -> StreamInfo:
        """This snapshot after a write (every append makes two: half `dataclasses.replace`'s
        cost)."""
        return StreamInfo(self.stream_id, self.path, self.content_type, tail, closed,
                          self.expiry, self.created_at_ms, last_access_ms,
                          self.fork_source_path, self.fork_offset, self.fork_request_offset,
                          self.fork_sub_offset)


@dataclass(frozen=True)
class CreateResult:
    info: StreamInfo
    created: bool


@dataclass(frozen=True)
class AppendResult:
    """What an append did: `duplicate` means an idempotent retry already applied earlier."""

    info: StreamInfo
    duplicate: bool = False
    producer_epoch: int | None = None
    producer_seq: int | None = None


@dataclass(frozen=True)
class ReadResult:
    """Entries from `start` up to `next_position`; `up_to_date` if that is the tail."""

    info: StreamInfo
    start: int
    next_position: int
    entries: list[bytes] = field(default_factory=list)
    up_to_date: bool = True

    @property
    def closed_at_end(self) -> bool:
        """The reader has everything and the stream will never grow (EOF)."""
        return self.up_to_date and self.info.closed


def media_type(content_type: str) -> str:
    """`Application/JSON; charset=utf-8` → `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


def is_text_content_type(content_type: str) -> bool:
    return media_type(content_type).startswith("text/")


def is_json_content_type(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def utf8_cut(data: bytes) -> int:
    """Where to end a piece of `data` so that no UTF-8 character is split: `len(data)`, or
    the start of a multi-byte character whose last bytes are missing. SSE sends a text
    stream's entries as text, and half a character each side of an entry boundary would
    arrive as two replacement characters."""
    for back in range(1, min(4, len(data) + 1)):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its character started further back
        if 0xC0 <= byte < 0xF8:
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if length > back else len(data)
        return len(data)  # ASCII, or a byte UTF-8 never uses
    return len(data)  # complete, or not UTF-8 at all: nothing to keep whole


def split_entries(data: bytes, chunk_bytes: int, *, text: bool) -> list[bytes]:
    """`data` as entries of at most `chunk_bytes`; for text, ended between characters."""
    entries = []
    start = 0
    while start < len(data):
        end = min(start + chunk_bytes, len(data))
        if text and end < len(data):
            end = start + (utf8_cut(data[start:end]) or end - start)
        entries.append(data[start:end])
        start = end
    return entries


class SpooledChunks:
    """A body held in a (spooled) temporary file, yielded in chunks of bounded size.

    Lets an append of many megabytes reach the database without ever being whole in memory.
    `text`: chunks end between UTF-8 characters (see `utf8_cut`).
    """

    def __init__(self, file: IO[bytes], size: int, chunk_bytes: int, *, text: bool = False
                 ) -> None:
        self._file = file
        self.size = size
        self._chunk_bytes = chunk_bytes
        self._text = text

    def __bool__(self) -> bool:
        return self.size > 0

    def __iter__(self) -> Iterator[bytes]:
        self._file.seek(0)
        carried = b""  # the start of a character the previous chunk left out
        while chunk := carried + self._file.read(self._chunk_bytes - len(carried)):
            carried = b""
            if self._text and len(chunk) == self._chunk_bytes:
                cut = utf8_cut(chunk) or len(chunk)
                chunk, carried = chunk[:cut], chunk[cut:]
            yield chunk


Entries = Union[list[bytes], SpooledChunks]
