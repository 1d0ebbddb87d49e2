"""An incremental Server-Sent Events parser (the WHATWG event-stream format).

Fed raw byte chunks as they arrive, it yields complete events. Only what the Durable Streams
protocol uses is kept: the event name and the data lines joined with ``\\n``; ``id`` and
``retry`` fields and comments are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: ``event`` defaults to ``"message"`` as in the SSE spec."""

    event: str
    data: str


class SseParser:
    """Turns a byte stream into `SseEvent`s; keeps partial lines between `feed` calls."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SseEvent]:
        """Consume ``chunk`` and yield every event it completes."""
        self._buffer += chunk
        while True:
            line, found = self._next_line()
            if not found:
                return
            event = self._line(line)
            if event is not None:
                yield event

    def _next_line(self) -> tuple[str, bool]:
        buffer = self._buffer
        lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
        if lf == -1 and cr == -1:
            return "", False
        if cr == -1 or (lf != -1 and lf < cr):
            index, end = lf, lf + 1
        elif cr + 1 == len(buffer):
            return "", False  # a CR at the end may be the first half of a CRLF
        else:
            index = cr
            end = cr + 2 if buffer[cr + 1:cr + 2] == b"\n" else cr + 1
        self._buffer = buffer[end:]
        return buffer[:index].decode("utf-8", errors="replace"), True

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        name, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None  # the spec dispatches nothing for an event without data lines
        return SseEvent(name, "\n".join(data))


def parse_events(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """Parse a whole iterable of byte chunks (convenient for tests and short streams)."""
    parser = SseParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
